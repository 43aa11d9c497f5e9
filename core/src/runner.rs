//! Scheduled runs of one policy, as the agent performs them: wait for the slot, take the
//! policy's lock, back up with retries, apply retention, copy to the copies with
//! `copy_after_backup` (and prune them by their rules), and record the outcome.
//!
//! **One run per slot, across agents.** Several agents may run the same policies for high
//! availability. Before a run, an agent takes a PostgreSQL advisory lock on the source
//! database (`pg_try_advisory_lock`, keyed by the policy name) and, holding it, checks the
//! repository: if a backup already started at or after the slot, another agent took this
//! slot and the run is skipped. The lock is released when the run ends (or its connection
//! drops), so a crashed agent never blocks the others.
//!
//! **Shutdown.** When `shutdown` is cancelled, no new run starts; a running backup gets
//! `grace` to finish, then it is cancelled (its upload aborted, no manifest written).

use std::sync::{Arc, Mutex};

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Duration, Utc};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::drill::{self, report::DrillReport, report::Verdict};
use crate::error::{Error, Result};
use crate::keys::Identities;
use crate::logical::backup;
use crate::notify::{Event, EventKind};
use crate::pipeline::Progress;
use crate::policy::{Policy, ScheduleConfig};
use crate::postgres::ConnTarget;
use crate::repository::BackupKind;
use crate::repository::Repository;
use crate::retention::prune;
use crate::schedule;

/// What the agent knows about one policy, for health and metrics.
#[derive(Debug, Clone, Default)]
pub struct PolicyStatus {
    /// Policy name.
    pub policy: String,
    /// When the last run started.
    pub last_attempt: Option<DateTime<Utc>>,
    /// Whether the last run succeeded (None before the first run).
    pub last_attempt_ok: Option<bool>,
    /// When the last successful backup finished.
    pub last_success: Option<DateTime<Utc>>,
    /// Data time of the newest successful backup (for the backup age, i.e. RPO now).
    pub newest_backup_at: Option<DateTime<Utc>>,
    /// Duration of the last successful backup, seconds.
    pub last_duration_seconds: f64,
    /// Raw bytes of the last successful backup.
    pub last_raw_bytes: u64,
    /// Stored bytes of the last successful backup.
    pub last_stored_bytes: u64,
    /// Backups in the repository after the last retention pass (or listing).
    pub backups_kept: u64,
    /// Failed runs since the agent started.
    pub failures_total: u64,
    /// Backups deleted by retention since the agent started.
    pub retention_deletions_total: u64,
    /// Whether the last retention pass was stopped by the stale guard.
    pub retention_stale: bool,
    /// The last error, one line.
    pub last_error: Option<String>,
    /// When the last physical base backup finished.
    pub last_physical_success: Option<DateTime<Utc>>,
    /// Whether the last scheduled physical backup succeeded.
    pub last_physical_ok: Option<bool>,
    /// Seconds since the source last archived a WAL segment (PITR's RPO now).
    pub wal_archive_lag_seconds: Option<f64>,
    /// Physical base backups whose WAL is not continuous in the archive.
    pub wal_archive_gaps: Option<u64>,
    /// Whether the source's archiver's last attempt failed.
    pub wal_archiver_failing: Option<bool>,
    /// Gap records in the repository: WAL ranges dropped by a full spool.
    pub wal_gap_records: Option<u64>,
    /// Segments this host's spool dropped whose gap is not yet recorded.
    pub wal_dropped_unrecorded: Option<u64>,
    /// Bytes waiting in this host's archive spool (asynchronous archiving).
    pub wal_spool_backlog_bytes: Option<u64>,
    /// Whether this agent's WAL stream receives now (streaming mode).
    pub wal_stream_up: Option<bool>,
    /// Bytes the source has flushed that the repository does not hold (streaming mode).
    pub wal_stream_lag_bytes: Option<u64>,
    /// Problems `check` would report about the stream (streaming mode).
    pub wal_stream_problems: Option<u64>,
    /// When the last restore test started.
    pub last_drill_at: Option<DateTime<Utc>>,
    /// Whether it passed.
    pub last_drill_passed: Option<bool>,
    /// Its measured RTO, seconds.
    pub last_drill_rto_seconds: Option<f64>,
    /// Its measured RPO, seconds.
    pub last_drill_rpo_seconds: Option<f64>,
    /// Failed restore tests since the agent started.
    pub drill_failures_total: u64,
    /// How often the policy's runs are due, and its objectives (from the policy).
    pub cadence: crate::policy::Cadence,
    /// The agent's copies after backups, per `[[repository.copies]]` name (those with
    /// `copy_after_backup`).
    pub copies: std::collections::BTreeMap<String, CopyStatus>,
}

/// What the agent knows about copying a policy's backups to one of its copies.
#[derive(Debug, Clone, Default)]
pub struct CopyStatus {
    /// When the last copy after a backup started.
    pub last_attempt: Option<DateTime<Utc>>,
    /// When the last one that copied everything finished.
    pub last_success: Option<DateTime<Utc>>,
    /// Copies that failed since the agent started.
    pub failures_total: u64,
    /// The last failure, one line.
    pub last_error: Option<String>,
    /// How long ago the oldest backup the copy lacks finished (0: none lacking), as of
    /// the last copy.
    pub lag_seconds: Option<f64>,
    /// Backups the copy lacked after the last copy.
    pub missing_backups: Option<u64>,
}

/// Shared, updatable status of a policy.
pub type SharedStatus = Arc<Mutex<PolicyStatus>>;

/// How one run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// A backup was taken (its id).
    BackedUp(String),
    /// Another agent holds the policy's lock or already took this slot.
    Skipped(String),
    /// Every attempt failed (the last error).
    Failed(String),
    /// Shutdown interrupted the run.
    Cancelled,
}

fn lock_key_for(purpose: &str, policy: &str) -> i64 {
    let digest = Sha256::digest(format!("{purpose}:{policy}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_le_bytes(bytes)
}

fn update(status: &SharedStatus, f: impl FnOnce(&mut PolicyStatus)) {
    if let Ok(mut s) = status.lock() {
        f(&mut s);
    }
}

/// Read the repository once to seed the status (newest backup, count).
pub async fn seed_status(policy: &Policy, status: &SharedStatus) -> Result<Option<DateTime<Utc>>> {
    let repo = Repository::open(policy).await?;
    let backups = repo.list_backups().await?;
    let newest = backups.first().map(|m| (m.finished_at, m.consistent_at));
    update(status, |s| {
        s.backups_kept = backups.len() as u64;
        if let Some((finished, consistent)) = newest {
            s.last_success.get_or_insert(finished);
            s.newest_backup_at = Some(consistent);
        }
    });
    Ok(backups.first().map(|m| m.started_at))
}

/// What a scheduled run takes: a logical backup, or a full or incremental base backup
/// (each on its own schedule, `[schedule] backup`, `physical`, `physical_incremental`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// `pg_dump` of the database.
    Logical,
    /// A full base backup.
    Physical,
    /// An incremental base backup against the newest base backup.
    PhysicalIncremental,
}

impl RunKind {
    /// The kind of backup the run stores.
    pub fn backup_kind(self) -> BackupKind {
        match self {
            RunKind::Logical => BackupKind::Logical,
            RunKind::Physical | RunKind::PhysicalIncremental => BackupKind::Physical,
        }
    }

    /// Whether backup `m` was taken by a run of this kind (a full slot is not covered by
    /// a later incremental, an incremental slot is covered by any base backup).
    fn covers(self, m: &crate::repository::BackupManifest) -> bool {
        match self {
            RunKind::Logical => m.kind == BackupKind::Logical,
            RunKind::Physical => m.kind == BackupKind::Physical && m.chain_link().is_none(),
            RunKind::PhysicalIncremental => m.kind == BackupKind::Physical,
        }
    }
}

impl std::fmt::Display for RunKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunKind::Logical => "logical",
            RunKind::Physical => "physical",
            RunKind::PhysicalIncremental => "physical incremental",
        })
    }
}

/// Perform the run for `slot`: lock, dedupe, back up (of `kind`) with retries, retention.
pub async fn run_once(
    policy: &Policy,
    kind: RunKind,
    slot: DateTime<Utc>,
    status: &SharedStatus,
    shutdown: &CancellationToken,
    grace: Duration,
) -> RunOutcome {
    let retries = policy.schedule.as_ref().map(|s| s.retries).unwrap_or(0);
    let first_backoff = policy
        .schedule
        .as_ref()
        .map(|s| s.retry_backoff)
        .unwrap_or_else(|| Duration::seconds(30))
        .to_std()
        .unwrap_or_default();
    update(status, |s| s.last_attempt = Some(Utc::now()));
    // Temporary errors are retried with a doubling wait; shutdown ends the wait and
    // starts no new attempt.
    let attempt = || async {
        if shutdown.is_cancelled() {
            return Err(Error::Cancelled);
        }
        attempt_run(policy, kind, slot, status, shutdown, grace).await
    };
    let backoff = ExponentialBuilder::default()
        .with_min_delay(first_backoff)
        .with_factor(2.0)
        .without_max_delay()
        .with_max_times(retries as usize);
    let stop = shutdown.clone();
    let result = attempt
        .retry(backoff)
        .sleep(move |wait| {
            let stop = stop.clone();
            async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        })
        .when(|e: &Error| e.is_retryable() && !shutdown.is_cancelled())
        .notify(|e: &Error, wait: std::time::Duration| {
            tracing::warn!(policy = %policy.name, error = %e, kind = %e.kind(), retry_in_s = wait.as_secs(), "backup attempt failed with a temporary error; retrying");
        })
        .await;
    match result {
        Ok(outcome) => outcome,
        Err(Error::Cancelled) => RunOutcome::Cancelled,
        Err(e) => {
            let message = e.to_string();
            let why = if e.is_permanent() {
                "backup failed (a permanent error: not retried)"
            } else {
                "backup failed after its retries"
            };
            tracing::error!(policy = %policy.name, %kind, error = %message, error_kind = %e.kind(), "{why}");
            update(status, |s| {
                match kind.backup_kind() {
                    BackupKind::Logical => s.last_attempt_ok = Some(false),
                    BackupKind::Physical => s.last_physical_ok = Some(false),
                }
                s.failures_total += 1;
                s.last_error = Some(message.clone());
            });
            if let Some(notify) = &policy.notify {
                let mut event = Event::new(EventKind::BackupFailed, &policy.name);
                event.error = Some(format!("{kind} backup: {message}"));
                crate::notify::send(notify, &event).await;
            }
            RunOutcome::Failed(message)
        }
    }
}

async fn attempt_run(
    policy: &Policy,
    kind: RunKind,
    slot: DateTime<Utc>,
    status: &SharedStatus,
    shutdown: &CancellationToken,
    grace: Duration,
) -> Result<RunOutcome> {
    let source = ConnTarget::parse(&policy.source.url)?;
    let lock_conn = source.connect().await?;
    // Full and incremental base backups share a lock: one at a time per policy.
    let purpose = match kind.backup_kind() {
        BackupKind::Logical => "pgvault",
        BackupKind::Physical => "pgvault-physical",
    };
    let locked: bool = lock_conn
        .query_one(
            "select pg_try_advisory_lock($1)",
            &[&lock_key_for(purpose, &policy.name)],
        )
        .await
        .map_err(|e| Error::pg("cannot take the policy's advisory lock", e))?
        .get(0);
    if !locked {
        let why = "another agent is running this policy".to_string();
        tracing::info!(policy = %policy.name, "{why}; skipping this slot");
        return Ok(RunOutcome::Skipped(why));
    }
    let repo = Repository::open(policy).await?;
    let newest_of_kind = repo
        .list_backups()
        .await?
        .into_iter()
        .find(|m| kind.covers(m));
    if let Some(newest) = newest_of_kind {
        if newest.started_at >= slot {
            let why = format!("backup {} already covers this slot", newest.id);
            tracing::info!(policy = %policy.name, "{why}; skipping");
            return Ok(RunOutcome::Skipped(why));
        }
    }

    // The backup gets its own token: shutdown cancels it only after the grace period.
    let backup_cancel = CancellationToken::new();
    let watcher = {
        let shutdown = shutdown.clone();
        let backup_cancel = backup_cancel.clone();
        let grace = grace.to_std().unwrap_or_default();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
            backup_cancel.cancel();
        })
    };
    let progress = Arc::new(Progress::default());
    use crate::physical::basebackup::{run_physical_backup, BaseBackupKind};
    let result = match kind {
        RunKind::Logical => backup::run_logical_backup(policy, progress, &backup_cancel).await,
        RunKind::Physical => {
            run_physical_backup(policy, BaseBackupKind::Full, progress, &backup_cancel).await
        }
        RunKind::PhysicalIncremental => {
            run_physical_backup(
                policy,
                BaseBackupKind::Incremental,
                progress,
                &backup_cancel,
            )
            .await
        }
    };
    watcher.abort();
    let manifest = result?;
    update(status, |s| {
        s.last_error = None;
        if kind.backup_kind() == BackupKind::Physical {
            s.last_physical_ok = Some(true);
            s.last_physical_success = Some(manifest.finished_at);
            return;
        }
        s.last_attempt_ok = Some(true);
        s.last_success = Some(manifest.finished_at);
        s.newest_backup_at = Some(manifest.consistent_at);
        s.last_duration_seconds = manifest.duration_seconds();
        s.last_raw_bytes = manifest.raw_size();
        s.last_stored_bytes = manifest.stored_size();
    });
    if let Some(notify) = &policy.notify {
        let mut event = Event::new(EventKind::BackupSucceeded, &policy.name);
        event.backup = Some(manifest.id.clone());
        crate::notify::send(notify, &event).await;
    }
    // With `prune_after_backup = false`, `pgvault prune` runs elsewhere with credentials
    // that may delete; the agent's need not (docs/SECURITY.md).
    if let Some(retention) = policy.retention.as_ref().filter(|r| r.prune_after_backup) {
        let plan = prune::plan(&repo, retention, Utc::now()).await?;
        if let Some(stale) = &plan.retention.stale {
            tracing::warn!(policy = %policy.name, "{stale}");
        }
        let done = prune::execute(&repo, &plan, &backup_cancel).await?;
        if let (Some(notify), false) = (&policy.notify, done.deleted_backups.is_empty()) {
            let mut event = Event::new(EventKind::RetentionDeleted, &policy.name);
            event.deleted = done.deleted_backups.clone();
            crate::notify::send(notify, &event).await;
        }
        update(status, |s| {
            s.retention_deletions_total += done.deleted_backups.len() as u64;
            s.retention_stale = plan.retention.stale.is_some();
            s.backups_kept = plan
                .retention
                .entries
                .len()
                .saturating_sub(done.deleted_backups.len()) as u64;
        });
    } else {
        update(status, |s| s.backups_kept += 1);
    }
    copy_after_backup(policy, &repo, status, &backup_cancel).await;
    drop(lock_conn);
    Ok(RunOutcome::BackedUp(manifest.id))
}

/// After a backup: copy what each copy with `copy_after_backup` lacks, prune the copy by
/// its own rules, and record the outcome. A failed copy never fails the backup: it is
/// logged, counted in the status (metrics) and sent as a `copy_failed` event.
async fn copy_after_backup(
    policy: &Policy,
    source: &Repository,
    status: &SharedStatus,
    cancel: &CancellationToken,
) {
    for config in policy.copies.iter().filter(|c| c.copy_after_backup) {
        let name = config.name.clone();
        update(status, |s| {
            s.copies.entry(name.clone()).or_default().last_attempt = Some(Utc::now());
        });
        let outcome = copy_and_prune(policy, config, source, cancel)
            .await
            .map_err(|e| match e {
                Error::Cancelled => e,
                e => e.within(format!(
                    "copy {name} at {}",
                    crate::copy::location_of(config)
                )),
            });
        let failure = match &outcome {
            Err(Error::Cancelled) => return,
            Err(e) => Some(e.to_string()),
            Ok((report, _)) if !report.complete() => Some(format!(
                "{} item(s) could not be copied: {}",
                report.failures.len(),
                report.failures.join("; ")
            )),
            Ok(_) => None,
        };
        if let Ok((report, lag)) = &outcome {
            tracing::info!(policy = %policy.name, copy = %name, backups = report.backups_copied.len(), wal_files = report.wal_files_copied, bytes = report.bytes_copied, missing = lag.missing.len(), "copied to the policy's copy");
            update(status, |s| {
                let c = s.copies.entry(name.clone()).or_default();
                c.lag_seconds = Some(lag.lag.num_milliseconds() as f64 / 1000.0);
                c.missing_backups = Some(lag.missing.len() as u64);
            });
        }
        match failure {
            None => update(status, |s| {
                let c = s.copies.entry(name.clone()).or_default();
                c.last_success = Some(Utc::now());
                c.last_error = None;
            }),
            Some(message) => {
                tracing::error!(policy = %policy.name, copy = %name, error = %message, "copying to the policy's copy failed; the backup itself is stored");
                update(status, |s| {
                    let c = s.copies.entry(name.clone()).or_default();
                    c.failures_total += 1;
                    c.last_error = Some(message.clone());
                });
                if let Some(notify) = &policy.notify {
                    let mut event = Event::new(EventKind::CopyFailed, &policy.name);
                    event.copy = Some(name.clone());
                    event.error = Some(message);
                    crate::notify::send(notify, &event).await;
                }
            }
        }
    }
}

/// Copy into one copy, then prune it by its rules; returns what the copy did and how far
/// the copy lags afterwards.
async fn copy_and_prune(
    policy: &Policy,
    config: &crate::policy::CopyConfig,
    source: &Repository,
    cancel: &CancellationToken,
) -> Result<(crate::copy::CopyReport, crate::copy::lag::CopyLag)> {
    let target = Repository::open_copy(policy, &config.name).await?;
    let copy_target = crate::copy::CopyTarget {
        name: &config.name,
        repo: &target,
        retention: policy.retention_of_copy(config),
        transfer: crate::copy::transfer_of(config),
    };
    let request = crate::copy::CopyRequest {
        selection: crate::copy::Selection::AllMissing,
        verify_existing: false,
    };
    let report = crate::copy::copy(source, &copy_target, &request, cancel).await?;
    if let Some(retention) = copy_target.retention {
        let plan = prune::plan(&target, retention, Utc::now()).await?;
        let done = prune::execute(&target, &plan, cancel).await?;
        if let (Some(notify), false) = (&policy.notify, done.deleted_backups.is_empty()) {
            let mut event = Event::new(EventKind::RetentionDeleted, &policy.name);
            event.copy = Some(config.name.clone());
            event.deleted = done.deleted_backups;
            crate::notify::send(notify, &event).await;
        }
    }
    let lag = crate::copy::lag::lag(source, &copy_target, config.max_lag, Utc::now()).await?;
    Ok((report, lag))
}

/// Run `policy`'s backups of `kind` on their schedule until `shutdown`: catch up first if
/// a slot was missed, then wait for each slot (plus jitter) and run it.
pub async fn run_schedule(
    policy: Policy,
    kind: RunKind,
    status: SharedStatus,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let Some(config): Option<ScheduleConfig> = policy.schedule.clone() else {
        return;
    };
    let schedule = match kind {
        RunKind::Logical => config.backup.clone(),
        RunKind::Physical => match config.physical.clone() {
            Some(s) => s,
            None => return,
        },
        RunKind::PhysicalIncremental => match config.physical_incremental.clone() {
            Some(s) => s,
            None => return,
        },
    };
    let last = match seed_status(&policy, &status).await {
        Ok(_) => newest_started(&policy, kind).await,
        Err(e) => {
            tracing::warn!(policy = %policy.name, error = %e, "cannot read the repository at start");
            None
        }
    };
    let now = Utc::now();
    if schedule.catch_up_due(last, now) && !shutdown.is_cancelled() {
        let slot = schedule.previous_at_or_before(now).unwrap_or(now);
        tracing::info!(policy = %policy.name, %kind, "the last scheduled backup was missed; running now");
        if run_once(&policy, kind, slot, &status, &shutdown, grace).await == RunOutcome::Cancelled {
            return;
        }
    }
    loop {
        let Some(slot) = schedule.next_after(Utc::now()) else {
            tracing::warn!(policy = %policy.name, %kind, "the schedule has no future slot; stopping");
            return;
        };
        let start = slot + schedule::jitter(&policy.name, slot, config.jitter);
        let wait = (start - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        if run_once(&policy, kind, slot, &status, &shutdown, grace).await == RunOutcome::Cancelled {
            return;
        }
    }
}

/// Remove what this policy's crashed runs left in the repository (see
/// [`crate::repository::lease`]); the agent does it at start-up. Failures are logged.
pub async fn remove_crashed_runs(policy: &Policy) {
    match Repository::open(policy).await {
        Ok(repo) => crate::repository::leftovers::remove_crashed_runs(&repo).await,
        Err(e) => {
            tracing::warn!(policy = %policy.name, error = %e, "cannot open the repository to look for a crashed run's leftovers")
        }
    }
}

/// Start time of the newest backup a run of `kind` takes (None when none or unreadable).
async fn newest_started(policy: &Policy, kind: RunKind) -> Option<DateTime<Utc>> {
    let repo = Repository::open(policy).await.ok()?;
    repo.list_backups()
        .await
        .ok()?
        .into_iter()
        .find(|m| kind.covers(m))
        .map(|m| m.started_at)
}

/// Check the policy's WAL archive every `every` until `shutdown` (see
/// [`crate::physical::archive_check`]) and record continuity and lag for the metrics.
pub async fn run_archive_watch(
    policy: Policy,
    status: SharedStatus,
    shutdown: CancellationToken,
    every: std::time::Duration,
) {
    let mut announced: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut stream_alarm = false;
    loop {
        match Repository::open(&policy).await {
            Ok(repo) => match crate::physical::archive_check::check(&repo, &policy).await {
                Ok(found) => {
                    for gap in &found.gaps {
                        if announced.insert(gap.key.clone()) {
                            tracing::error!(policy = %policy.name, gap = %gap, "WAL gap: point-in-time recovery cannot cross it");
                            if let Some(notify) = &policy.notify {
                                let mut event = Event::new(EventKind::WalGap, &policy.name);
                                event.error = Some(gap.to_string());
                                crate::notify::send(notify, &event).await;
                            }
                        }
                    }
                    let unrecorded = found.spool.as_ref().map_or(0, |s| s.dropped_unrecorded);
                    // A pusher killed after the last segment would otherwise wait for
                    // the next archive_command: the agent restarts it.
                    if let (Some(spool), Some(dir)) =
                        (&found.spool, policy.archive.spool_dir.as_deref())
                    {
                        // ensure_pusher probes the lock itself: a stale pid in the lock
                        // file cannot make the agent believe a pusher runs.
                        let waiting = spool.backlog_files > 0 || spool.dropped_unrecorded > 0;
                        if waiting {
                            tracing::info!(policy = %policy.name, files = spool.backlog_files, "the archive spool has a backlog and no pusher; starting one");
                            let started =
                                crate::physical::wal::spool::Spool::open(dir).and_then(|s| {
                                    crate::physical::wal::pusher::ensure_pusher(&s, &policy.path)
                                });
                            if let Err(e) = started {
                                tracing::warn!(policy = %policy.name, error = %e, "cannot start the WAL pusher");
                            }
                        }
                    }
                    let gaps = found
                        .backups
                        .iter()
                        .filter(|b| !b.missing.is_empty())
                        .count();
                    if gaps > 0 {
                        tracing::warn!(policy = %policy.name, gaps, "WAL archive has gaps: point-in-time recovery from some base backups stops early");
                    }
                    // A stream that is behind, stopped or about to lose its slot raises
                    // the alarm once per episode.
                    let stream_problems = found
                        .stream
                        .as_ref()
                        .map(|st| st.problems(Utc::now()))
                        .unwrap_or_default();
                    if stream_problems.is_empty() {
                        stream_alarm = false;
                    } else if !stream_alarm {
                        stream_alarm = true;
                        let text = stream_problems.join("; ");
                        tracing::error!(policy = %policy.name, problems = %text, "WAL stream is behind: point-in-time recovery is losing its RPO");
                        if let Some(notify) = &policy.notify {
                            let mut event = Event::new(EventKind::WalStreamBehind, &policy.name);
                            event.error = Some(text);
                            crate::notify::send(notify, &event).await;
                        }
                    }
                    update(&status, |s| {
                        if let Some(st) = &found.stream {
                            s.wal_stream_up = Some(
                                st.receiver.as_ref().is_some_and(|r| r.receiving)
                                    && st.receiver_running,
                            );
                            s.wal_stream_lag_bytes = st.receiver.as_ref().and_then(|r| r.lag_bytes);
                            s.wal_stream_problems = Some(stream_problems.len() as u64);
                            s.wal_archive_lag_seconds = st.rpo_seconds(Utc::now());
                        }
                        s.wal_archive_gaps = Some(gaps as u64);
                        s.wal_gap_records = Some(found.gaps.len() as u64);
                        s.wal_dropped_unrecorded = Some(unrecorded as u64);
                        s.wal_spool_backlog_bytes = found.spool.as_ref().map(|sp| sp.backlog_bytes);
                        match &found.archiver {
                            _ if found.stream.is_some() => {}
                            Ok(a) => {
                                s.wal_archiver_failing = Some(a.failing());
                                s.wal_archive_lag_seconds = a
                                    .last_archived_at
                                    .map(|t| (Utc::now() - t).num_milliseconds() as f64 / 1000.0);
                            }
                            Err(_) => s.wal_archiver_failing = None,
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(policy = %policy.name, error = %e, "cannot check the WAL archive")
                }
            },
            Err(e) => {
                tracing::warn!(policy = %policy.name, error = %e, "cannot open the repository to check the WAL archive")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Stream the policy's WAL (`[archive] mode = "stream"`) until `shutdown`: see
/// [`crate::physical::wal::receiver`]. A receiver that cannot start (the repository
/// unreachable at boot, say) is retried every 30 seconds.
pub async fn run_stream(policy: Policy, shutdown: CancellationToken) {
    loop {
        match crate::physical::wal::receiver::run_receiver(&policy, &shutdown).await {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(policy = %policy.name, error = %e, "the WAL stream cannot start; retrying in 30 s")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => {}
        }
    }
}

/// Record a finished drill in the status.
fn record_drill(status: &SharedStatus, report: &DrillReport) {
    update(status, |s| {
        s.last_drill_at = Some(report.started_at);
        s.last_drill_passed = Some(report.verdict == Verdict::Pass);
        s.last_drill_rto_seconds = report.rto.measured_seconds;
        s.last_drill_rpo_seconds = report
            .rpo
            .as_ref()
            .and_then(|r| r.objective.measured_seconds);
    });
}

/// How a scheduled restore test ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrillOutcomeKind {
    /// It ran: the verdict, the report id and why it failed (empty on PASS).
    Ran(Verdict, String, Vec<String>),
    /// Another agent ran (or is running) this slot.
    Skipped(String),
    /// It could not run or store a report (the error).
    Failed(String),
    /// Shutdown interrupted it.
    Cancelled,
}

/// Run the policy's restore test for `slot`, notify the verdict, record it.
pub async fn run_drill_once(
    policy: &Policy,
    slot: DateTime<Utc>,
    status: &SharedStatus,
    shutdown: &CancellationToken,
) -> DrillOutcomeKind {
    let result = attempt_drill(policy, slot, status, shutdown).await;
    let (event, outcome) = match result {
        Ok(DrillOutcomeKind::Ran(verdict, id, failures)) => {
            let kind = if verdict == Verdict::Pass {
                EventKind::RestoreTestPassed
            } else {
                EventKind::RestoreTestFailed
            };
            (Some(kind), DrillOutcomeKind::Ran(verdict, id, failures))
        }
        Ok(other) => (None, other),
        Err(Error::Cancelled) => (None, DrillOutcomeKind::Cancelled),
        Err(e) => (
            Some(EventKind::RestoreTestFailed),
            DrillOutcomeKind::Failed(e.to_string()),
        ),
    };
    match &outcome {
        DrillOutcomeKind::Ran(Verdict::Fail, id, _) => {
            tracing::error!(policy = %policy.name, report = %id, "restore test FAILED")
        }
        DrillOutcomeKind::Ran(Verdict::Pass, id, _) => {
            tracing::info!(policy = %policy.name, report = %id, "restore test passed")
        }
        DrillOutcomeKind::Failed(e) => {
            tracing::error!(policy = %policy.name, error = %e, "restore test could not run")
        }
        DrillOutcomeKind::Skipped(why) => tracing::info!(policy = %policy.name, "{why}"),
        DrillOutcomeKind::Cancelled => {}
    }
    if matches!(
        outcome,
        DrillOutcomeKind::Failed(_) | DrillOutcomeKind::Ran(Verdict::Fail, _, _)
    ) {
        update(status, |s| {
            s.drill_failures_total += 1;
            if let DrillOutcomeKind::Failed(_) = outcome {
                s.last_drill_at = Some(Utc::now());
                s.last_drill_passed = Some(false);
            }
        });
    }
    if let (Some(kind), Some(notify)) = (event, &policy.notify) {
        let mut event = Event::new(kind, &policy.name);
        match &outcome {
            DrillOutcomeKind::Ran(_, id, failures) => {
                event.report = Some(id.clone());
                event.failures = failures.clone();
            }
            DrillOutcomeKind::Failed(e) => event.error = Some(e.clone()),
            _ => {}
        }
        crate::notify::send(notify, &event).await;
    }
    outcome
}

async fn attempt_drill(
    policy: &Policy,
    slot: DateTime<Utc>,
    status: &SharedStatus,
    shutdown: &CancellationToken,
) -> Result<DrillOutcomeKind> {
    let config = policy
        .restore_test
        .as_ref()
        .ok_or_else(|| Error::Invalid(format!("policy {} has no [restore_test]", policy.name)))?;
    let identity = config.identity_file.as_ref().ok_or_else(|| {
        Error::Invalid(format!(
            "policy {} has no [restore_test] identity_file",
            policy.name
        ))
    })?;
    let identities = Identities::load(identity)?;
    // The lock keeps two agents from drilling the same slot; a drill still runs when the
    // source is down (that is when restores matter most).
    let source = ConnTarget::parse(&policy.source.url)?;
    let lock_conn = match source.connect().await {
        Ok(conn) => Some(conn),
        Err(e) => {
            tracing::warn!(policy = %policy.name, error = %e, "source unreachable; running the restore test without the cross-agent lock");
            None
        }
    };
    if let Some(conn) = &lock_conn {
        let locked: bool = conn
            .query_one(
                "select pg_try_advisory_lock($1)",
                &[&lock_key_for("pgvault-drill", &policy.name)],
            )
            .await
            .map_err(|e| Error::pg("cannot take the restore test's advisory lock", e))?
            .get(0);
        if !locked {
            return Ok(DrillOutcomeKind::Skipped(
                "another agent is running this policy's restore test".into(),
            ));
        }
    }
    let repo = Repository::open(policy).await?;
    if let Some(last) = drill::store::list_ids(&repo).await?.last() {
        let (report, _) = drill::store::load(&repo, last).await?;
        if report.started_at >= slot {
            return Ok(DrillOutcomeKind::Skipped(format!(
                "restore test {} already covers this slot",
                report.id
            )));
        }
    }
    let outcome = drill::run(
        &repo,
        drill::DrillRequest {
            policy,
            config,
            identities: &identities,
            backup: None,
            keep: false,
            progress: Arc::new(Progress::default()),
        },
        shutdown,
    )
    .await?;
    record_drill(status, &outcome.report);
    drop(lock_conn);
    Ok(DrillOutcomeKind::Ran(
        outcome.report.verdict,
        outcome.report.id,
        outcome.report.failures,
    ))
}

/// Run the policy's restore test on `[restore_test] schedule` until `shutdown`. The
/// status is seeded from the newest stored report, so metrics survive restarts.
pub async fn run_drill_schedule(policy: Policy, status: SharedStatus, shutdown: CancellationToken) {
    let Some(schedule) = policy
        .restore_test
        .as_ref()
        .and_then(|r| r.schedule.clone())
    else {
        return;
    };
    match Repository::open(&policy).await {
        Ok(repo) => {
            if let Ok((report, _)) = drill::store::load(&repo, "latest").await {
                record_drill(&status, &report);
            }
        }
        Err(e) => {
            tracing::warn!(policy = %policy.name, error = %e, "cannot read restore-test reports at start")
        }
    }
    loop {
        let Some(slot) = schedule.next_after(Utc::now()) else {
            tracing::warn!(policy = %policy.name, "the restore-test schedule has no future slot; stopping");
            return;
        };
        let wait = (slot - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        if run_drill_once(&policy, slot, &status, &shutdown).await == DrillOutcomeKind::Cancelled {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_differ_per_policy_and_are_stable() {
        assert_eq!(
            lock_key_for("pgvault", "app"),
            lock_key_for("pgvault", "app")
        );
        assert_ne!(
            lock_key_for("pgvault", "app"),
            lock_key_for("pgvault", "app2")
        );
        assert_ne!(
            lock_key_for("pgvault", "app"),
            lock_key_for("pgvault-physical", "app")
        );
    }
}
