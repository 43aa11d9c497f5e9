//! The stream receiver of `[archive] mode = "stream"`: the agent runs `pg_receivewal`
//! against a replication slot and stores what it receives, so point-in-time recovery
//! works where `archive_command` cannot be set, with an RPO of seconds.
//!
//! ```text
//! <spool_dir>/stream/              pg_receivewal --directory (segments, <seg>.partial)
//! <spool_dir>/receiver.lock        held by the one receiver of this spool (flock)
//! <spool_dir>/stream-status.json   what the receiver stored and how far behind it is
//! ```
//!
//! Every `[archive] partial_interval` the receiver:
//! - stores each completed segment and `.history` file through the WAL archive
//!   ([`super::archive::push`], the keys and idempotency of `archive_command`), then
//!   deletes its stream chunks and the local copy (the newest file always stays, for
//!   `pg_receivewal` to resume from);
//! - stores the new bytes of the growing segment as a chunk ([`super::stream`]), up to
//!   the position `pg_receivewal` reported flushed to the server (`--synchronous`), so
//!   no chunk holds a half-written page;
//! - samples the source's flush position and clock, and from them computes the RPO: the
//!   time since the newest moment whose WAL is entirely stored.
//!
//! When `pg_receivewal` exits (the source crashed, a network cut) every byte it wrote is
//! final, and the receiver stores all of it before it restarts the stream with backoff.
//! A slot the source invalidated (`wal_status = 'lost'`, `max_slot_wal_keep_size`
//! exceeded) is recreated; when `pg_receivewal` then finds the WAL it needs removed, the
//! receiver writes a gap record ([`super::gaps`]) from the end of the stored stream to
//! the new slot's start, and streams on from there, so the gap is named and never silent.
//! A `pg_receivewal` left running by a killed agent is stopped before anything in the
//! directory is read as final.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::policy::Policy;
use crate::postgres::ConnTarget;
use crate::repository::new_backup::encode_settings;
use crate::repository::Repository;
use crate::server::PgTools;

use super::name::{format_lsn, parse_lsn, segment_name, WalFileKind, WalFileName};

/// What the receiver reports about itself, in `<spool_dir>/stream-status.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamStatus {
    /// The receiver's process (the agent).
    pub pid: u32,
    /// The replication slot.
    pub slot: String,
    /// Whether `pg_receivewal` runs now.
    pub receiving: bool,
    /// When the current (or last) `pg_receivewal` started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it last exited.
    pub exited_at: Option<DateTime<Utc>>,
    /// When everything it wrote before its last exit was stored.
    pub stored_after_exit_at: Option<DateTime<Utc>>,
    /// The end of the WAL stored without a hole (LSN).
    pub stored_lsn: Option<String>,
    /// The source's flush position at the last sample.
    pub source_flush_lsn: Option<String>,
    /// Bytes of WAL the source has flushed and the repository does not hold.
    pub lag_bytes: Option<u64>,
    /// The newest moment whose WAL is entirely stored (source clock).
    pub covered_at: Option<DateTime<Utc>>,
    /// The RPO now: seconds since `covered_at` (a lower bound while `covered_at` is
    /// unknown).
    pub rpo_seconds: Option<f64>,
    /// Times the stream was restarted since the receiver started.
    pub restarts: u64,
    /// The last error, one line.
    pub last_error: Option<String>,
    /// When this status was written.
    pub updated_at: Option<DateTime<Utc>>,
}

/// The directory `pg_receivewal` writes into.
pub fn stream_dir(spool: &Path) -> PathBuf {
    spool.join("stream")
}

fn status_path(spool: &Path) -> PathBuf {
    spool.join("stream-status.json")
}

/// The receiver's last status in `spool` (`None` when there is none or it is
/// unreadable).
pub fn read_status(spool: &Path) -> Option<StreamStatus> {
    let text = std::fs::read(status_path(spool)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Whether a receiver holds `spool`'s lock now.
pub fn receiver_running(spool: &Path) -> bool {
    matches!(
        crate::server::process::try_lock_exclusive(&spool.join("receiver.lock")),
        Ok(None)
    )
}

/// Longest pause between two attempts to (re)start the stream.
const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(60);
/// Samples of the source's flush position kept for the RPO (at 1 s, a day).
const MAX_SAMPLES: usize = 86_400;
/// Longest a sample of the source may take (a stalled network must not stall storing).
const SAMPLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// What pg_receivewal says when the server no longer has the WAL it asks for.
const WAL_REMOVED: &str = "has already been removed";

/// Run the receiver of `policy` until `cancel`: stream, store, restart with backoff.
/// While another receiver holds the spool, it waits.
pub async fn run_receiver(policy: &Policy, cancel: &CancellationToken) -> Result<()> {
    let spool = policy.archive.spool_dir.clone().ok_or_else(|| {
        Error::Invalid(format!(
            "policy {}: [archive] mode = \"stream\" needs spool_dir",
            policy.name
        ))
    })?;
    let dir = stream_dir(&spool);
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    // One receiver per spool: another agent on this host (or a probe by `check`) may
    // hold the lock; this one waits for it.
    let mut warned = false;
    let _lock = loop {
        if let Some(held) =
            crate::server::process::try_lock_exclusive(&spool.join("receiver.lock"))?
        {
            break held;
        }
        if !warned {
            tracing::warn!(policy = %policy.name, spool = %spool.display(), "another process streams into this spool; waiting for it to stop");
            warned = true;
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
        }
    };
    // A pg_receivewal left by a killed agent may still write into the directory, and
    // the first pass reads every file there as final: it is stopped first.
    stop_orphan(&spool, &dir).await;
    let repo = Repository::open(policy).await?;
    let previous = read_status(&spool).unwrap_or_default();
    let mut receiver = Receiver {
        policy,
        repo,
        spool,
        dir,
        slot: policy.stream_slot(),
        segment_size: None,
        status: StreamStatus {
            pid: std::process::id(),
            slot: policy.stream_slot(),
            covered_at: previous.covered_at,
            ..StreamStatus::default()
        },
        samples: VecDeque::new(),
        chunk_ends: HashMap::new(),
        kept: HashSet::new(),
        conflicts: HashSet::new(),
        stored_lsn: None,
    };
    let mut backoff = std::time::Duration::from_secs(1);
    loop {
        let started = tokio::time::Instant::now();
        if let Err(e) = receiver.session(cancel).await {
            tracing::warn!(policy = %policy.name, slot = %receiver.slot, error = %e, "WAL stream stopped");
            receiver.status.last_error = Some(e.to_string());
        }
        receiver.status.receiving = false;
        receiver.record_sample(None);
        receiver.write_status();
        if cancel.is_cancelled() {
            return Ok(());
        }
        if started.elapsed() > MAX_BACKOFF {
            backoff = std::time::Duration::from_secs(1);
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        receiver.status.restarts += 1;
    }
}

fn pid_path(spool: &Path) -> PathBuf {
    spool.join("pg_receivewal.pid")
}

/// Stop the `pg_receivewal` a previous receiver of this spool started, if it still runs
/// (an agent killed with SIGKILL leaves its child behind): SIGTERM, then SIGKILL after
/// ten seconds. A pid that now belongs to another program is left alone.
async fn stop_orphan(spool: &Path, dir: &Path) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let Some(pid) = std::fs::read_to_string(pid_path(spool))
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
    else {
        return;
    };
    let ours = |pid: i32| {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
            let line = String::from_utf8_lossy(&c).replace('\0', " ");
            line.contains("pg_receivewal") && line.contains(&dir.display().to_string())
        })
    };
    if !ours(pid) {
        let _ = std::fs::remove_file(pid_path(spool));
        return;
    }
    tracing::warn!(
        pid,
        "stopping the pg_receivewal a previous agent left running"
    );
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    for _ in 0..100 {
        if !ours(pid) {
            let _ = std::fs::remove_file(pid_path(spool));
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    for _ in 0..50 {
        if !ours(pid) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_file(pid_path(spool));
}

/// One sample of the source.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: DateTime<Utc>,
    flush: u64,
    /// The timeline the source writes.
    timeline: u32,
    /// What `pg_receivewal` reported flushed (from `pg_stat_replication`).
    received: Option<u64>,
}

/// A replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone)]
struct SlotRow {
    wal_status: String,
    active_pid: Option<i32>,
}

/// How far the growing segment may be stored.
#[derive(Debug, Clone, Copy)]
enum Written {
    /// `pg_receivewal` runs: up to the position it reported flushed on the timeline the
    /// source writes (`None`: unknown, store nothing of the growing segment).
    UpTo(Option<(u64, u32)>),
    /// `pg_receivewal` has exited: everything in the file is final.
    All,
}

struct Receiver<'a> {
    policy: &'a Policy,
    repo: Repository,
    spool: PathBuf,
    dir: PathBuf,
    slot: String,
    segment_size: Option<u64>,
    status: StreamStatus,
    samples: VecDeque<Sample>,
    /// Growing segment name → bytes stored from its start.
    chunk_ends: HashMap<String, u64>,
    /// Files stored that stay in the directory (history files, the newest segment).
    kept: HashSet<String>,
    /// Files the archive holds with other content: never overwritten, never deleted here.
    conflicts: HashSet<String>,
    /// The end of the WAL stored without a hole, when known.
    stored_lsn: Option<u64>,
}

impl Receiver<'_> {
    fn write_status(&mut self) {
        self.status.updated_at = Some(Utc::now());
        self.status.stored_lsn = self.stored_lsn.map(format_lsn);
        let path = status_path(&self.spool);
        let tmp = path.with_extension("json.tmp");
        let written = serde_json::to_vec_pretty(&self.status)
            .map_err(std::io::Error::other)
            .and_then(|json| std::fs::write(&tmp, json))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the stream status");
        }
    }

    /// Connect, check the slot, run `pg_receivewal` and store what it writes until it
    /// exits or `cancel`.
    async fn session(&mut self, cancel: &CancellationToken) -> Result<()> {
        // What a previous run left in the directory is final: store it first.
        self.store_pass(Written::All, cancel).await?;
        let target = ConnTarget::parse(&self.policy.source.url)?;
        let client = target.connect().await?;
        let info = crate::postgres::server_info(&client).await?;
        if info.version_num < 130000 {
            return Err(Error::Invalid(format!(
                "streaming WAL needs PostgreSQL 13 or newer (the source is {})",
                info.version
            )));
        }
        self.segment_size = Some(crate::postgres::wal_segment_size(&client).await?);
        let tools = PgTools::discover(self.policy.source.bin_dir.as_deref(), info.major()).await?;
        match slot_row(&client, &self.slot).await? {
            None => create_slot(&client, &self.slot).await?,
            Some(row) if row.wal_status == "lost" => {
                // The source gave the slot up. Whether WAL is really gone shows when
                // pg_receivewal asks for it (see `wal_gone`).
                tracing::error!(policy = %self.policy.name, slot = %self.slot, "the replication slot was lost (max_slot_wal_keep_size exceeded); recreating it");
                client
                    .execute("select pg_drop_replication_slot($1)", &[&self.slot])
                    .await
                    .map_err(|e| {
                        Error::pg(format!("cannot drop the lost slot {}", self.slot), e)
                    })?;
                create_slot(&client, &self.slot).await?;
            }
            Some(SlotRow {
                active_pid: Some(pid),
                ..
            }) => {
                return Err(Error::Invalid(format!(
                    "replication slot {} is in use by server process {pid}: another receiver streams this policy",
                    self.slot
                )))
            }
            Some(_) => {}
        }
        let mut cmd = target.command(&tools.tool("pg_receivewal"));
        cmd.arg(format!("--directory={}", self.dir.display()))
            .arg(format!("--slot={}", self.slot))
            .args([
                "--no-loop",
                "--no-password",
                "--synchronous",
                "--status-interval=1",
            ])
            .env("PGAPPNAME", format!("pgvault_stream_{}", self.slot))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::io("cannot start pg_receivewal", e))?;
        if let Some(pid) = child.id() {
            let _ = std::fs::write(pid_path(&self.spool), pid.to_string());
        }
        let stderr = Arc::new(Mutex::new(VecDeque::<String>::new()));
        if let Some(pipe) = child.stderr.take() {
            let lines = stderr.clone();
            tokio::spawn(async move {
                let mut reader = tokio::io::BufReader::new(pipe).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    tracing::debug!(line = %line, "pg_receivewal");
                    if let Ok(mut kept) = lines.lock() {
                        kept.push_back(line);
                        if kept.len() > 20 {
                            kept.pop_front();
                        }
                    }
                }
            });
        }
        tracing::info!(policy = %self.policy.name, slot = %self.slot, "WAL stream started");
        self.status.receiving = true;
        self.status.started_at = Some(Utc::now());
        self.write_status();
        let mut sampler = Some(client);
        let mut tick = tokio::time::interval(self.policy.archive.partial_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let exit = loop {
            tokio::select! {
                exit = child.wait() => break exit,
                _ = cancel.cancelled() => {
                    let _ = child.start_kill();
                    break child.wait().await;
                }
                _ = tick.tick() => {
                    let sample = self.sample(&target, &mut sampler).await;
                    let bound = sample.and_then(|s| s.received.map(|r| (r, s.timeline)));
                    if let Err(e) = self.store_pass(Written::UpTo(bound), cancel).await {
                        tracing::warn!(policy = %self.policy.name, error = %e, "cannot store streamed WAL; retrying");
                        self.status.last_error = Some(e.to_string());
                    }
                    self.record_sample(sample);
                    self.write_status();
                }
            }
        };
        let _ = std::fs::remove_file(pid_path(&self.spool));
        self.status.receiving = false;
        self.status.exited_at = Some(Utc::now());
        self.write_status();
        // Everything pg_receivewal wrote is final now: store all of it. A cancel
        // (shutdown) still gets this pass.
        self.store_pass(Written::All, &CancellationToken::new())
            .await?;
        self.status.stored_after_exit_at = Some(Utc::now());
        self.record_sample(None);
        self.write_status();
        if cancel.is_cancelled() {
            return Ok(());
        }
        let said: Vec<String> = stderr
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default();
        if said.iter().any(|l| l.contains(WAL_REMOVED)) {
            if let Some(client) = &sampler {
                self.wal_gone(client).await?;
            }
        }
        Err(Error::Tool {
            tool: "pg_receivewal".into(),
            message: format!(
                "{}: {}",
                exit.map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string()),
                crate::server::process::stderr_tail(&said.join("\n"))
            ),
        })
    }

    /// Sample the source (at most [`SAMPLE_TIMEOUT`]), reconnecting after a failure.
    async fn sample(
        &mut self,
        target: &ConnTarget,
        client: &mut Option<tokio_postgres::Client>,
    ) -> Option<Sample> {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            *client = tokio::time::timeout(SAMPLE_TIMEOUT, target.connect())
                .await
                .ok()
                .and_then(|c| c.ok());
        }
        let c = client.as_ref()?;
        match tokio::time::timeout(SAMPLE_TIMEOUT, sample(c, &self.slot)).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot sample the source");
                *client = None;
                None
            }
            Err(_) => {
                *client = None;
                None
            }
        }
    }

    /// Store what the directory holds: completed segments and history files through
    /// the archive, the growing segment's new bytes as a chunk (up to `written`).
    async fn store_pass(&mut self, written: Written, cancel: &CancellationToken) -> Result<()> {
        let mut files: Vec<(WalFileName, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(&self.dir)
            .map_err(|e| Error::io(format!("cannot read {}", self.dir.display()), e))?
        {
            let entry = entry.map_err(|e| Error::io("cannot read the stream directory", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Ok(file) = WalFileName::parse(&name) {
                files.push((file, entry.path()));
            }
        }
        // The growing segment is the newest `.partial` (highest segment, then timeline).
        let order = |f: &WalFileName| (f.segno.unwrap_or(0), f.timeline);
        let growing = files
            .iter()
            .filter(|(f, _)| f.kind == WalFileKind::Partial)
            .max_by_key(|(f, _)| order(f))
            .map(|(f, p)| (f.clone(), p.clone()));
        let newest_complete = files
            .iter()
            .filter(|(f, _)| f.kind == WalFileKind::Segment)
            .map(|(f, _)| order(f))
            .max();
        let settings = encode_settings(self.policy);
        files.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        for (file, path) in &files {
            let is_growing = growing.as_ref().is_some_and(|(g, _)| g.name == file.name);
            let kind = file.kind;
            if is_growing
                || kind == WalFileKind::BackupHistory
                || self.conflicts.contains(&file.name)
            {
                continue;
            }
            if !self.kept.contains(&file.name) {
                match super::archive::push(
                    &self.repo,
                    path,
                    &self.policy.recipients,
                    settings,
                    cancel,
                )
                .await
                {
                    Ok(_) => {}
                    Err(Error::WalConflict { name, existing, .. }) => {
                        // Another writer (an archive_command before a switch to streaming,
                        // a promoted copy) stored different bytes under the name: keep
                        // ours locally and say so, never overwrite.
                        tracing::warn!(file = %name, existing = %existing, "the archive holds a different file under this name; the streamed copy stays in the spool");
                        self.conflicts.insert(file.name.clone());
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                if kind == WalFileKind::Segment {
                    let length = std::fs::metadata(path).map_or(0, |m| m.len());
                    let segment_end = self
                        .segment_size
                        .or_else(|| is_segment_size(length).then_some(length))
                        .and_then(|size| file.segno_for(size).map(|n| (n + 1) * size));
                    self.advance(segment_end);
                    match super::stream::forget_chunks(&self.repo, file).await {
                        Ok(_) => {}
                        // Credentials that may not delete (retention runs elsewhere):
                        // `pgvault prune` deletes the chunks with their segment.
                        Err(e)
                            if e.is_access_denied()
                                || matches!(e.root(), Error::ObjectLocked { .. }) =>
                        {
                            tracing::debug!(file = %file.name, error = %e, "stream chunks stay for `pgvault prune`")
                        }
                        Err(e) => return Err(e),
                    }
                    self.chunk_ends.remove(&file.name);
                }
            }
            // The newest file stays for pg_receivewal to resume from, until a newer one
            // exists; history files stay (it reads them at a timeline switch).
            let keep = kind == WalFileKind::History
                || (growing.is_none() && Some(order(file)) == newest_complete);
            if keep {
                self.kept.insert(file.name.clone());
            } else {
                self.kept.remove(&file.name);
                if let Err(e) = std::fs::remove_file(path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove a stored WAL file from the stream directory");
                }
            }
        }
        let Some((file, path)) = growing else {
            return Ok(());
        };
        let segment = WalFileName::parse(file.name.trim_end_matches(".partial"))?;
        let data = tokio::fs::read(&path)
            .await
            .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
        // pg_receivewal creates the file at the full segment size: before the source has
        // been asked (it may be down after a crash), that size is the segment size.
        let size = match self.segment_size {
            Some(size) => size,
            None if is_segment_size(data.len() as u64) => data.len() as u64,
            None => return Ok(()),
        };
        let Some(segno) = segment.segno_for(size) else {
            return Ok(());
        };
        let base = segno * size;
        let limit = match written {
            // Every byte is final; trailing zeros are the file's pre-filling, not WAL.
            Written::All => data.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1) as u64,
            // Bytes below the position pg_receivewal reported flushed were written and
            // fsynced before it said so: final, whatever a racing read sees beyond.
            Written::UpTo(Some((flushed, timeline))) if timeline == segment.timeline => {
                flushed.saturating_sub(base).min(data.len() as u64)
            }
            Written::UpTo(_) => 0,
        };
        let stored_end = match self.chunk_ends.get(&segment.name) {
            Some(end) => *end,
            None => {
                let found = super::stream::find_partial(&self.repo, &segment).await?;
                found.map_or(0, |p| p.covered)
            }
        };
        self.chunk_ends.insert(segment.name.clone(), stored_end);
        if limit > stored_end {
            let range = data[stored_end as usize..limit as usize].to_vec();
            super::stream::store_chunk(
                &self.repo,
                self.policy,
                &segment,
                (stored_end, range),
                size,
                cancel,
            )
            .await?;
            self.chunk_ends.insert(segment.name.clone(), limit);
        }
        let end = *self.chunk_ends.get(&segment.name).unwrap_or(&0);
        if end > 0 {
            self.advance(Some(base + end));
        }
        Ok(())
    }

    fn advance(&mut self, lsn: Option<u64>) {
        if let Some(lsn) = lsn {
            self.stored_lsn = Some(self.stored_lsn.map_or(lsn, |s| s.max(lsn)));
        }
    }

    /// Add `sample` and recompute the lag and the RPO (ageing it when `None`).
    fn record_sample(&mut self, sample: Option<Sample>) {
        if let Some(s) = sample {
            self.samples.push_back(s);
            if self.samples.len() > MAX_SAMPLES {
                self.samples.pop_front();
            }
            self.status.source_flush_lsn = Some(format_lsn(s.flush));
        }
        let Some(stored) = self.stored_lsn else {
            return;
        };
        if let Some(rpo) = rpo_now(&mut self.samples, stored, Utc::now()) {
            self.status.lag_bytes = Some(rpo.lag_bytes);
            if rpo.covered_at.is_some() {
                self.status.covered_at = rpo.covered_at;
            }
            self.status.rpo_seconds = Some(rpo.seconds);
        }
    }

    /// pg_receivewal asked for WAL the source has removed (a lost or recreated slot):
    /// what lies between the stored stream and the slot's start is gone. Record it as a
    /// gap, and restart the directory at the slot's start: a zero-filled `.partial` there
    /// makes pg_receivewal of every major resume exactly at it (an empty directory would
    /// start at the server's current position before PostgreSQL 15, leaving a hole no
    /// record names).
    async fn wal_gone(&mut self, client: &tokio_postgres::Client) -> Result<()> {
        let size = self
            .segment_size
            .unwrap_or(super::name::DEFAULT_SEGMENT_SIZE);
        let row = client
            .query_one(
                "select restart_lsn::text, substr(pg_walfile_name(pg_current_wal_flush_lsn()), 1, 8) \
                 from pg_replication_slots where slot_name = $1",
                &[&self.slot],
            )
            .await
            .map_err(|e| Error::pg("cannot read the replication slot", e))?;
        let restart = parse_lsn(&row.get::<_, Option<String>>(0).unwrap_or_default())?;
        let timeline = u32::from_str_radix(&row.get::<_, String>(1), 16)
            .map_err(|e| Error::Internal(format!("a timeline that is not hex: {e}")))?;
        let stored = match self.stored_lsn {
            Some(lsn) => Some((lsn, None)),
            None => stored_position(&self.repo, timeline, size).await?,
        };
        let reason = format!(
            "replication slot {} was lost or recreated: the source removed WAL the stream had not received (max_slot_wal_keep_size exceeded, or the slot dropped)",
            self.slot
        );
        match stored {
            Some((stored, stored_at)) if stored / size < restart / size => {
                let (first, last) = (stored / size, restart / size - 1);
                // No commit after the newest moment known stored lies before `first`.
                let when = self
                    .status
                    .covered_at
                    .or(stored_at)
                    .unwrap_or_else(Utc::now);
                let record = super::gaps::record_gap(
                    &self.repo,
                    &segment_name(timeline, first, size),
                    &segment_name(timeline, last, size),
                    last - first + 1,
                    when,
                    &reason,
                )
                .await?;
                tracing::error!(policy = %self.policy.name, gap = %record, "WAL is gone; the gap is recorded");
            }
            _ => {
                tracing::error!(policy = %self.policy.name, "{reason}; nothing stored lies before the slot's start, so no gap is recorded")
            }
        }
        // Every file was stored by the pass after pg_receivewal exited.
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        let start = format!("{}.partial", segment_name(timeline, restart / size, size));
        let file = std::fs::File::create(self.dir.join(&start))
            .and_then(|f| f.set_len(size).map(|()| f))
            .and_then(|f| f.sync_all());
        file.map_err(|e| Error::io(format!("cannot create {start} in the stream directory"), e))?;
        self.chunk_ends.clear();
        self.kept.clear();
        self.stored_lsn = Some(restart - restart % size);
        self.samples.clear();
        self.status.covered_at = None;
        self.status.last_error = Some(reason);
        Ok(())
    }
}

/// The stream's lag and RPO at one moment.
#[derive(Debug, Clone, PartialEq)]
struct Rpo {
    /// Bytes flushed by the source (at the newest sample) and not stored.
    lag_bytes: u64,
    /// The newest sampled moment whose WAL is entirely stored, when a sample shows it.
    covered_at: Option<DateTime<Utc>>,
    /// Seconds since then (at least the oldest uncovered sample's age).
    seconds: f64,
}

/// The RPO at `now` given the source's flush positions over time (`samples`, oldest
/// first) and the stored end `stored`. Samples older than the newest covered one are
/// dropped: they can never matter again.
fn rpo_now(samples: &mut VecDeque<Sample>, stored: u64, now: DateTime<Utc>) -> Option<Rpo> {
    if let Some(i) = samples.iter().rposition(|s| s.flush <= stored) {
        samples.drain(..i);
    }
    let first = samples.front().copied()?;
    let newest = samples.back().copied().unwrap_or(first);
    let covered = first.flush <= stored;
    Some(Rpo {
        lag_bytes: newest.flush.saturating_sub(stored),
        covered_at: covered.then_some(first.at),
        seconds: seconds(now - first.at),
    })
}

/// Whether `bytes` is a WAL segment size PostgreSQL allows (a power of two, 1 MiB to
/// 1 GiB).
fn is_segment_size(bytes: u64) -> bool {
    bytes.is_power_of_two() && ((1 << 20)..=(1 << 30)).contains(&bytes)
}

fn seconds(d: chrono::Duration) -> f64 {
    d.num_milliseconds().max(0) as f64 / 1000.0
}

async fn sample(client: &tokio_postgres::Client, slot: &str) -> Result<Sample> {
    // The flush position pg_receivewal reported is found through the slot, not the
    // application name (a URL's application_name, or truncation to 63 bytes, changes it).
    let row = client
        .query_one(
            "select clock_timestamp(), pg_current_wal_flush_lsn()::text, \
             substr(pg_walfile_name(pg_current_wal_flush_lsn()), 1, 8), \
             (select r.flush_lsn::text from pg_replication_slots s \
              join pg_stat_replication r on r.pid = s.active_pid where s.slot_name = $1)",
            &[&slot],
        )
        .await
        .map_err(|e| Error::pg("cannot read the source's WAL position", e))?;
    Ok(Sample {
        at: row.get(0),
        flush: parse_lsn(&row.get::<_, String>(1))?,
        timeline: u32::from_str_radix(&row.get::<_, String>(2), 16)
            .map_err(|e| Error::Internal(format!("a timeline that is not hex: {e}")))?,
        received: row
            .get::<_, Option<String>>(3)
            .map(|l| parse_lsn(&l))
            .transpose()?,
    })
}

async fn slot_row(client: &tokio_postgres::Client, slot: &str) -> Result<Option<SlotRow>> {
    let row = client
        .query_opt(
            "select coalesce(wal_status, ''), active_pid from pg_replication_slots where slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| Error::pg("cannot read pg_replication_slots", e))?;
    Ok(row.map(|r| SlotRow {
        wal_status: r.get(0),
        active_pid: r.get(1),
    }))
}

/// Create the physical slot, reserving WAL at once (another agent may have created it
/// meanwhile: that is fine).
async fn create_slot(client: &tokio_postgres::Client, slot: &str) -> Result<()> {
    let created = client
        .execute(
            "select pg_create_physical_replication_slot($1, true)",
            &[&slot],
        )
        .await;
    match created {
        Ok(_) => {
            tracing::info!(slot, "replication slot created");
            Ok(())
        }
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => Ok(()),
        Err(e) => Err(Error::pg(
            format!(
                "cannot create replication slot {slot} (the role needs the REPLICATION attribute)"
            ),
            e,
        )),
    }
}

/// The end of the newest WAL stored on `timeline` (complete segments and chunks), with
/// when it was stored.
async fn stored_position(
    repo: &Repository,
    timeline: u32,
    size: u64,
) -> Result<Option<(u64, Option<DateTime<Utc>>)>> {
    let complete = super::archive::list_archive(repo)
        .await?
        .into_iter()
        .filter(|a| a.file.kind == WalFileKind::Segment && a.file.timeline == timeline)
        .filter_map(|a| {
            a.file
                .segno_for(size)
                .map(|n| ((n + 1) * size, a.archived_at))
        })
        .max_by_key(|(end, _)| *end);
    let partial = super::stream::list_partials(repo)
        .await?
        .into_iter()
        .filter(|p| p.segment.timeline == timeline && p.covered > 0)
        .filter_map(|p| {
            p.segment
                .segno_for(size)
                .map(|n| (n * size + p.covered, p.stored_at))
        })
        .max_by_key(|(end, _)| *end);
    Ok(match (complete, partial) {
        (Some(c), Some(p)) => Some(if p.0 > c.0 { p } else { c }),
        (c, p) => c.or(p),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(second: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 7, 0, 0, 0).unwrap() + chrono::Duration::seconds(second)
    }

    fn samples(points: &[(i64, u64)]) -> VecDeque<Sample> {
        points
            .iter()
            .map(|(s, flush)| Sample {
                at: at(*s),
                flush: *flush,
                timeline: 1,
                received: None,
            })
            .collect()
    }

    #[test]
    fn the_rpo_is_the_age_of_the_newest_moment_entirely_stored() {
        // The source flushed 100, 200, 300 at seconds 0, 1, 2; 200 is stored.
        let mut s = samples(&[(0, 100), (1, 200), (2, 300)]);
        let rpo = rpo_now(&mut s, 200, at(5)).unwrap();
        assert_eq!(rpo.covered_at, Some(at(1)));
        assert_eq!(rpo.seconds, 4.0);
        assert_eq!(rpo.lag_bytes, 100);
        assert_eq!(s.len(), 2, "the sample before the covered one is dropped");
        // Everything stored: the RPO is the age of the newest sample, the lag 0.
        let rpo = rpo_now(&mut s, 300, at(3)).unwrap();
        assert_eq!(
            (rpo.covered_at, rpo.seconds, rpo.lag_bytes),
            (Some(at(2)), 1.0, 0)
        );
    }

    #[test]
    fn with_nothing_covered_the_rpo_is_at_least_the_oldest_sample_age() {
        let mut s = samples(&[(10, 500), (11, 600)]);
        let rpo = rpo_now(&mut s, 400, at(40)).unwrap();
        assert_eq!(rpo.covered_at, None);
        assert_eq!(rpo.seconds, 30.0);
        assert_eq!(rpo.lag_bytes, 200);
        assert_eq!(rpo_now(&mut VecDeque::new(), 400, at(40)), None);
    }
}
