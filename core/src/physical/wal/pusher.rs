//! Asynchronous archiving: what `archive_command` does in async mode
//! ([`archive_async`]), and the background pusher that empties the spool into the
//! repository ([`run_pusher`]).
//!
//! One pusher runs per spool, holding `pusher.lock`; `archive_command` starts one
//! (detached, in its own process group) whenever none holds the lock, so a pusher that
//! was killed is replaced at the next segment. The pusher stores several files at once
//! through the same idempotent [`super::push`] as synchronous archiving, removes each
//! spool copy only after it is stored, turns drop markers into gap records
//! ([`super::gaps`]), and exits when the spool has been empty for a while.

use std::path::Path;
use std::time::Duration;

use backon::BackoffBuilder;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::policy::{ArchiveMode, Policy};
use crate::repository::new_backup::encode_settings;
use crate::repository::Repository;

use super::archive::push;
use super::gaps;
use super::name::DEFAULT_SEGMENT_SIZE;
use super::spool::{HandOver, PusherStatus, Spool};

/// How long the pusher waits with nothing to do before it exits.
const IDLE_EXIT: Duration = Duration::from_secs(30);
/// How often an idle pusher looks at the spool.
const IDLE_POLL: Duration = Duration::from_millis(100);

fn spool_of(policy: &Policy) -> Result<Spool> {
    let dir = policy
        .archive
        .spool_dir
        .as_deref()
        .filter(|_| policy.archive.mode == ArchiveMode::Async)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "policy {} does not archive asynchronously ([archive] mode = \"async\" with a spool_dir)",
                policy.name
            ))
        })?;
    Spool::open(dir)
}

/// `archive_command` in async mode: hand the file over to the spool (durably), make
/// sure a pusher runs, and say what happened. An error means PostgreSQL must keep the
/// file and try again.
pub async fn archive_async(policy: &Policy, path: &Path) -> Result<HandOver> {
    let spool = spool_of(policy)?;
    let config = policy.archive.clone();
    let handed = {
        let spool = spool.clone();
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || spool.hand_over(&path, &config))
            .await
            .map_err(|e| Error::Internal(format!("the spool hand-over failed: {e}")))?
    };
    // Also when the spool refused the file: a pusher is what makes room.
    if let Err(e) = ensure_pusher(&spool, &policy.path) {
        tracing::warn!(error = %e, "cannot start the WAL pusher");
        if handed.is_ok() {
            // Accepted, but nothing would store it: tell PostgreSQL to retry.
            return Err(e);
        }
    }
    handed
}

/// Whether a pusher holds the spool's lock.
pub fn pusher_running(spool: &Spool) -> bool {
    match lock(spool) {
        Ok(Some(_held)) => false,
        Ok(None) => true,
        Err(_) => false,
    }
}

/// Try to take the spool's pusher lock: `None` when another process holds it.
fn lock(spool: &Spool) -> Result<Option<nix::fcntl::Flock<std::fs::File>>> {
    let path = spool.lock_path();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(held) => Ok(Some(held)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(Error::io(
            format!("cannot lock {}", path.display()),
            std::io::Error::from(errno),
        )),
    }
}

/// Start a pusher for the spool unless one runs: `pgvault wal-pusher --policy POLICY`,
/// detached, its output appended to `<spool>/pusher.log`.
pub fn ensure_pusher(spool: &Spool, policy_path: &Path) -> Result<()> {
    if pusher_running(spool) {
        return Ok(());
    }
    let program = super::settings::pgvault_program()?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(spool.dir().join("pusher.log"))
        .map_err(|e| Error::io("cannot open the pusher log", e))?;
    let err = log
        .try_clone()
        .map_err(|e| Error::io("cannot open the pusher log", e))?;
    use std::os::unix::process::CommandExt;
    std::process::Command::new(&program)
        .arg("wal-pusher")
        .arg("--policy")
        .arg(policy_path)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| Error::io(format!("cannot start {} wal-pusher", program.display()), e))?;
    Ok(())
}

/// How a pusher run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PusherExit {
    /// Another pusher holds the spool.
    AlreadyRunning,
    /// The spool stayed empty for a while; this many files were stored.
    Idle {
        /// Files stored.
        stored: usize,
    },
}

/// Empty the policy's spool into its repository until it stays empty (or `cancel`).
pub async fn run_pusher(policy: &Policy, cancel: &CancellationToken) -> Result<PusherExit> {
    let spool = spool_of(policy)?;
    let Some(held) = lock(&spool)? else {
        return Ok(PusherExit::AlreadyRunning);
    };
    {
        use std::io::Write;
        let mut file: &std::fs::File = &held;
        let _ = file.set_len(0);
        let _ = writeln!(file, "{}", std::process::id());
    }
    spool.remove_partials()?;
    let repo = Repository::open(policy).await?;
    let settings = encode_settings(policy);
    let parallel = policy.archive.push_parallel;
    let mut status = spool.status();
    let mut stored = 0usize;
    let mut idle_since = tokio::time::Instant::now();
    let backoff = || {
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(30))
            .without_max_times()
            .build()
    };
    let mut delays = backoff();
    loop {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let mut failed: Option<String> = None;

        // Dropped segments first: a gap must reach the repository as soon as it can.
        let dropped = spool.dropped()?;
        if !dropped.is_empty() {
            let size = spool.dropped_segment_size().unwrap_or(DEFAULT_SEGMENT_SIZE);
            for (first, last, count) in gaps::runs(&dropped, size) {
                let reason = format!(
                    "[archive] queue_full = \"drop\": the spool {} held queue_max {}",
                    spool.dir().display(),
                    crate::units::human_bytes(policy.archive.queue_max)
                );
                let dropped_at = spool.dropped_at(&first).unwrap_or_else(chrono::Utc::now);
                match gaps::record_gap(&repo, &first, &last, count, dropped_at, &reason).await {
                    Ok(record) => {
                        tracing::error!(gap = %record, "WAL gap recorded: point-in-time recovery cannot cross it");
                        let names: Vec<String> = dropped
                            .iter()
                            .filter(|n| record.covers(n))
                            .cloned()
                            .collect();
                        spool.forget_dropped(&names)?;
                    }
                    Err(e) => failed = Some(format!("cannot record a WAL gap: {e}")),
                }
            }
        }

        let queued = spool.queued()?;
        if queued.is_empty() && failed.is_none() {
            if idle_since.elapsed() >= IDLE_EXIT {
                return Ok(PusherExit::Idle { stored });
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err(Error::Cancelled),
                _ = tokio::time::sleep(IDLE_POLL) => {}
            }
            continue;
        }
        idle_since = tokio::time::Instant::now();
        let batch: Vec<_> = queued.into_iter().take(parallel * 4).collect();
        let results: Vec<(String, Result<()>)> = futures::stream::iter(batch)
            .map(|q| {
                let repo = &repo;

                async move {
                    let pushed = push(repo, &q.path, &policy.recipients, settings, cancel).await;
                    (q.name, pushed.map(drop))
                }
            })
            .buffer_unordered(parallel)
            .collect()
            .await;
        for (name, result) in results {
            match result {
                Ok(()) => {
                    spool.remove_queued(&name)?;
                    stored += 1;
                    status.last_stored = Some(name);
                    status.last_stored_at = Some(chrono::Utc::now());
                }
                Err(Error::Cancelled) => return Err(Error::Cancelled),
                Err(e) => failed = Some(format!("cannot store {name}: {e}")),
            }
        }
        match failed {
            None => {
                status.last_error = None;
                delays = backoff();
                spool.write_status(&status)?;
            }
            Some(message) => {
                tracing::warn!(error = %message, "the WAL pusher will retry");
                status.last_error = Some(message);
                status.last_error_at = Some(chrono::Utc::now());
                spool.write_status(&status)?;
                let wait = delays.next().unwrap_or(Duration::from_secs(30));
                tokio::select! {
                    _ = cancel.cancelled() => return Err(Error::Cancelled),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// A spool as `check` and the metrics see it.
#[derive(Debug, Clone)]
pub struct SpoolState {
    /// Bytes waiting to be stored.
    pub backlog_bytes: u64,
    /// Files waiting to be stored.
    pub backlog_files: usize,
    /// Dropped segments whose gap is not yet recorded in the repository.
    pub dropped_unrecorded: usize,
    /// The pusher's last results.
    pub status: PusherStatus,
    /// Whether a pusher runs now.
    pub pusher_running: bool,
}

/// Read a policy's spool, when it archives asynchronously and the spool is on this host.
pub fn spool_state(policy: &Policy) -> Result<Option<SpoolState>> {
    let Some(dir) = policy.archive.spool_dir.as_deref() else {
        return Ok(None);
    };
    if policy.archive.mode != ArchiveMode::Async || !dir.is_dir() {
        return Ok(None);
    }
    let spool = Spool::open(dir)?;
    let queued = spool.queued()?;
    Ok(Some(SpoolState {
        backlog_bytes: queued.iter().map(|q| q.size).sum(),
        backlog_files: queued.len(),
        dropped_unrecorded: spool.dropped()?.len(),
        status: spool.status(),
        pusher_running: pusher_running(&spool),
    }))
}
