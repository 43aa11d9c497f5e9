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

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use backon::BackoffBuilder;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::policy::Policy;
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
    // Any mode: a policy switched back to sync still drains what its spool holds.
    let dir = policy.archive.spool_dir.as_deref().ok_or_else(|| {
        Error::Invalid(format!(
            "policy {} has no [archive] spool_dir (asynchronous archiving is off)",
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

/// Whether a pusher runs for the spool (from the pid it recorded; takes no lock).
pub fn pusher_running(spool: &Spool) -> bool {
    spool.live_pusher_pid().is_some()
}

/// Try to take the spool's pusher lock: `None` when another process holds it.
fn lock(spool: &Spool) -> Result<Option<nix::fcntl::Flock<std::fs::File>>> {
    crate::server::process::try_lock_exclusive(&spool.lock_path())
}

/// Start a pusher for the spool unless one runs: `pgvault wal-pusher --policy POLICY`,
/// detached, its output appended to `<spool>/pusher.log`.
pub fn ensure_pusher(spool: &Spool, policy_path: &Path) -> Result<()> {
    // Probing takes the lock for an instant; a pusher starting in that instant retries.
    if lock(spool)?.is_none() {
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
    let mut cmd = std::process::Command::new(&program);
    cmd.arg("wal-pusher")
        .arg("--policy")
        .arg(policy_path)
        .stdout(log)
        .stderr(err);
    crate::server::process::spawn_detached(cmd, &format!("{} wal-pusher", program.display()))
}

/// Take the pusher lock, retrying briefly: a status reader or `ensure_pusher` may hold
/// it for an instant.
async fn lock_with_patience(spool: &Spool) -> Result<Option<nix::fcntl::Flock<std::fs::File>>> {
    for _ in 0..10 {
        if let Some(held) = lock(spool)? {
            return Ok(Some(held));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(None)
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
    let Some(held) = lock_with_patience(&spool).await? else {
        return Ok(PusherExit::AlreadyRunning);
    };
    let record_pid = |held: &nix::fcntl::Flock<std::fs::File>| {
        use std::io::Write;
        let mut file: &std::fs::File = held;
        let _ = file.set_len(0);
        let _ = writeln!(file, "{}", std::process::id());
    };
    record_pid(&held);
    let mut held = Some(held);
    spool.remove_partials()?;
    let repo = Repository::open(policy).await?;
    let settings = encode_settings(policy);
    let parallel = policy.archive.push_parallel;
    let mut status = spool.status();
    let mut stored = 0usize;
    let mut idle_since = tokio::time::Instant::now();
    // Each file backs off on its own: one that keeps failing (a conflict, say) must not
    // hold back the others.
    let delay = |failures: u32| {
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(30))
            .without_max_times()
            .build()
            .nth(failures as usize)
            .unwrap_or(Duration::from_secs(30))
    };
    let mut failures: HashMap<String, u32> = HashMap::new();
    let mut retry_at: HashMap<String, tokio::time::Instant> = HashMap::new();
    let gap_key = String::from(".gaps");
    loop {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let now = tokio::time::Instant::now();
        let mut worked = false;

        // Dropped segments first: a gap must reach the repository as soon as it can.
        let dropped = spool.dropped()?;
        if !dropped.is_empty() && retry_at.get(&gap_key).is_none_or(|at| now >= *at) {
            worked = true;
            match record_gaps(&repo, policy, &spool, &dropped).await {
                Ok(()) => {
                    failures.remove(&gap_key);
                    retry_at.remove(&gap_key);
                    if failures.is_empty() {
                        status.last_error = None;
                    }
                }
                Err(e) => {
                    let n = failures.entry(gap_key.clone()).or_insert(0);
                    retry_at.insert(gap_key.clone(), now + delay(*n));
                    *n += 1;
                    status.last_error = Some(format!("cannot record a WAL gap: {e}"));
                    status.last_error_at = Some(chrono::Utc::now());
                }
            }
        }

        let all = spool.queued()?;
        retry_at.retain(|name, _| name == &gap_key || all.iter().any(|q| &q.name == name));
        failures.retain(|name, _| name == &gap_key || all.iter().any(|q| &q.name == name));
        let ready: Vec<_> = all
            .iter()
            .filter(|q| retry_at.get(&q.name).is_none_or(|at| now >= *at))
            .take(parallel * 4)
            .cloned()
            .collect();
        if ready.is_empty() {
            if worked {
                spool.write_status(&status)?;
            }
            let nothing_left = all.is_empty() && dropped.is_empty();
            if nothing_left && idle_since.elapsed() >= IDLE_EXIT {
                // Let go, then look once more: a file handed over while this pusher
                // was deciding to leave found the lock held and started nobody.
                drop(held.take());
                if spool.queued()?.is_empty() && spool.dropped()?.is_empty() {
                    return Ok(PusherExit::Idle { stored });
                }
                match lock(&spool)? {
                    Some(again) => {
                        record_pid(&again);
                        held = Some(again);
                        idle_since = tokio::time::Instant::now();
                        continue;
                    }
                    None => return Ok(PusherExit::Idle { stored }),
                }
            }
            if !nothing_left {
                idle_since = now;
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err(Error::Cancelled),
                _ = tokio::time::sleep(IDLE_POLL) => {}
            }
            continue;
        }
        idle_since = now;
        let results: Vec<(String, Result<()>)> = futures::stream::iter(ready)
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
        let mut all_ok = true;
        for (name, result) in results {
            match result {
                Ok(()) => {
                    spool.remove_queued(&name)?;
                    failures.remove(&name);
                    retry_at.remove(&name);
                    stored += 1;
                    status.last_stored = Some(name);
                    status.last_stored_at = Some(chrono::Utc::now());
                }
                Err(Error::Cancelled) => return Err(Error::Cancelled),
                Err(e) => {
                    all_ok = false;
                    let n = failures.entry(name.clone()).or_insert(0);
                    retry_at.insert(name.clone(), tokio::time::Instant::now() + delay(*n));
                    *n += 1;
                    tracing::warn!(file = %name, error = %e, attempts = *n, "the WAL pusher will retry this file");
                    status.last_error = Some(format!("cannot store {name}: {e}"));
                    status.last_error_at = Some(chrono::Utc::now());
                }
            }
        }
        if all_ok && failures.is_empty() {
            status.last_error = None;
        }
        spool.write_status(&status)?;
    }
}

/// Record the spool's dropped segments as gap records, one per contiguous run, and
/// forget their markers. A segment the repository holds after all (stored, then handed
/// over again after a crash and dropped) is no gap.
async fn record_gaps(
    repo: &Repository,
    policy: &Policy,
    spool: &Spool,
    dropped: &[String],
) -> Result<()> {
    let mut really = Vec::new();
    let mut stored_anyway = Vec::new();
    for name in dropped {
        if super::archive::is_archived(repo, name).await? {
            stored_anyway.push(name.clone());
        } else {
            really.push(name.clone());
        }
    }
    spool.forget_dropped(&stored_anyway)?;
    let size = spool.dropped_segment_size().unwrap_or(DEFAULT_SEGMENT_SIZE);
    for (first, last, count) in gaps::runs(&really, size) {
        let reason = format!(
            "[archive] queue_full = \"drop\": the spool {} held queue_max {}",
            spool.dir().display(),
            crate::units::human_bytes(policy.archive.queue_max)
        );
        let dropped_at = spool.dropped_at(&first).unwrap_or_else(chrono::Utc::now);
        let record = gaps::record_gap(repo, &first, &last, count, dropped_at, &reason).await?;
        tracing::error!(gap = %record, "WAL gap recorded: point-in-time recovery cannot cross it");
        let names: Vec<String> = really
            .iter()
            .filter(|n| record.covers(n))
            .cloned()
            .collect();
        spool.forget_dropped(&names)?;
    }
    Ok(())
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
    /// Why the spool could not be read (another OS user's 0700 directory, say).
    pub unreadable: Option<String>,
}

/// Read a policy's spool, when it has one on this host (in any mode: a policy switched
/// back to sync may still hold files). Creates nothing; a spool this user cannot read is
/// reported as such.
pub fn spool_state(policy: &Policy) -> Result<Option<SpoolState>> {
    let Some(dir) = policy.archive.spool_dir.as_deref() else {
        return Ok(None);
    };
    if !dir.exists() {
        return Ok(None);
    }
    let spool = Spool::existing(dir);
    let read = spool
        .queued()
        .and_then(|queued| Ok((queued, spool.dropped()?)));
    Ok(Some(match read {
        Ok((queued, dropped)) => SpoolState {
            backlog_bytes: queued.iter().map(|q| q.size).sum(),
            backlog_files: queued.len(),
            dropped_unrecorded: dropped.len(),
            status: spool.status(),
            pusher_running: pusher_running(&spool),
            unreadable: None,
        },
        Err(e) => SpoolState {
            backlog_bytes: 0,
            backlog_files: 0,
            dropped_unrecorded: 0,
            status: PusherStatus::default(),
            pusher_running: false,
            unreadable: Some(e.to_string()),
        },
    }))
}
