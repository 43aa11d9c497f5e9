//! `pgvault check`: is point-in-time recovery possible right now?
//!
//! For every physical base backup, the WAL from its start to the newest archived
//! segment on its timeline must be continuous in the repository; and the source's
//! archiver must be keeping up (`pg_stat_archiver`): the time since the last archived
//! segment is the RPO of point-in-time recovery at this moment. Runs without a key.

use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::physical::wal::gaps::GapRecord;
use crate::physical::wal::pusher::SpoolState;
use crate::physical::wal::{self, parse_lsn, ArchivedWal, WalFileKind};
use crate::policy::Policy;
use crate::postgres::ConnTarget;
use crate::repository::{BackupKind, Repository};

/// WAL continuity from one base backup.
#[derive(Debug, Clone)]
pub struct BackupContinuity {
    /// The base backup.
    pub backup: String,
    /// Its timeline.
    pub timeline: u32,
    /// The segment replay starts with.
    pub from: String,
    /// The newest archived segment of that timeline.
    pub to: Option<String>,
    /// Segments from `from` to `to`.
    pub segments: usize,
    /// Segments in that range not in the archive.
    pub missing: Vec<String>,
}

/// The source's archiver, from `pg_stat_archiver`.
#[derive(Debug, Clone)]
pub struct ArchiverStatus {
    /// The last segment archived successfully.
    pub last_archived_wal: Option<String>,
    /// When.
    pub last_archived_at: Option<DateTime<Utc>>,
    /// Failed attempts since the statistics were reset.
    pub failed_count: i64,
    /// The last segment that failed.
    pub last_failed_wal: Option<String>,
    /// When.
    pub last_failed_at: Option<DateTime<Utc>>,
    /// The segment the server is writing now.
    pub current_wal: String,
    /// `summarize_wal`, which incremental base backups need (`None` before
    /// PostgreSQL 17, which has no such setting).
    pub summarize_wal: Option<bool>,
}

impl ArchiverStatus {
    /// Whether the last attempt failed (a failure newer than the last success).
    pub fn failing(&self) -> bool {
        match (self.last_failed_at, self.last_archived_at) {
            (Some(failed), Some(ok)) => failed > ok,
            (Some(_), None) => true,
            _ => false,
        }
    }
}

/// Everything `pgvault check` found.
#[derive(Debug, Clone)]
pub struct ArchiveCheck {
    /// Archived WAL files (all kinds).
    pub files: usize,
    /// Timelines present.
    pub timelines: Vec<u32>,
    /// Continuity per physical backup, newest first.
    pub backups: Vec<BackupContinuity>,
    /// The source's archiver, or why it could not be read.
    pub archiver: std::result::Result<ArchiverStatus, String>,
    /// Whether the policy schedules incremental base backups (then `summarize_wal` must
    /// be on).
    pub incrementals_scheduled: bool,
    /// Ranges of WAL dropped by a full spool (`queue_full = "drop"`), recorded in the
    /// repository.
    pub gaps: Vec<GapRecord>,
    /// The local spool of asynchronous archiving, when it is on this host.
    pub spool: Option<SpoolState>,
    /// The WAL stream, for a policy with `[archive] mode = "stream"`.
    pub stream: Option<StreamCheck>,
}

/// The WAL stream of a streaming policy: its slot on the source, the source's bound on
/// what the slot may hold, and what the receiver reports.
#[derive(Debug, Clone)]
pub struct StreamCheck {
    /// The replication slot's name.
    pub slot: String,
    /// Its row in `pg_replication_slots`, or why it could not be read (`Ok(None)`: no
    /// such slot).
    pub slot_row: std::result::Result<Option<SlotState>, String>,
    /// `max_slot_wal_keep_size` in bytes (`-1`: unlimited, which lets a stalled stream
    /// fill the source's disk), when it could be read.
    pub max_slot_wal_keep_size: Option<i64>,
    /// The receiver's status file on this host (`None`: no receiver ran here).
    pub receiver: Option<crate::physical::wal::receiver::StreamStatus>,
    /// Whether a receiver holds this host's spool now.
    pub receiver_running: bool,
    /// The newest stored stream chunk's time: the RPO's lower bound where no receiver
    /// status is at hand.
    pub newest_chunk_at: Option<DateTime<Utc>>,
    /// The policy's bound on the stream's RPO.
    pub max_lag: std::time::Duration,
}

/// A replication slot as the source shows it.
#[derive(Debug, Clone)]
pub struct SlotState {
    /// `reserved`, `extended`, `unreserved` (WAL goes at the next checkpoint) or `lost`.
    pub wal_status: String,
    /// Whether a receiver streams from it now.
    pub active: bool,
    /// Bytes the source may still write before the slot is lost (`None`: unbounded).
    pub safe_wal_size: Option<i64>,
}

impl StreamCheck {
    /// What is wrong with the stream, one line each; empty when it is healthy.
    pub fn problems(&self, now: DateTime<Utc>) -> Vec<String> {
        let mut problems = Vec::new();
        match &self.slot_row {
            Err(e) => problems.push(format!("cannot read slot {}: {e}", self.slot)),
            Ok(None) => problems.push(format!(
                "replication slot {} does not exist on the source: the agent creates it when the stream starts",
                self.slot
            )),
            Ok(Some(s)) if s.wal_status == "lost" => problems.push(format!(
                "replication slot {} is LOST: the source removed WAL the stream had not received; the agent records the gap and recreates the slot",
                self.slot
            )),
            Ok(Some(s)) => {
                if s.wal_status == "unreserved" {
                    problems.push(format!(
                        "replication slot {} is past max_slot_wal_keep_size: WAL it needs goes at the next checkpoint",
                        self.slot
                    ));
                }
                if !s.active {
                    problems.push(format!(
                        "no receiver streams from slot {}: is the agent running?",
                        self.slot
                    ));
                }
            }
        }
        if self.max_slot_wal_keep_size == Some(-1) {
            problems.push("max_slot_wal_keep_size is -1 (unlimited): a stalled stream would fill the source's disk; set a bound, e.g. ALTER SYSTEM SET max_slot_wal_keep_size = '50GB'".into());
        }
        if let Some(r) = &self.receiver {
            let stale_start = r
                .started_at
                .is_some_and(|t| (now - t).to_std().is_ok_and(|d| d > self.max_lag));
            if r.rpo_seconds.is_none() && stale_start {
                problems.push(format!(
                    "the receiver has stored nothing it can measure since it started{}",
                    r.last_error
                        .as_deref()
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                ));
            }
        }
        // Without the receiver's status (checked from another host) the RPO is only a
        // lower bound that grows on an idle database: shown, never an alarm.
        if let Some(rpo) = self.receiver.as_ref().and(self.rpo_seconds(now)) {
            if rpo > self.max_lag.as_secs_f64() {
                problems.push(format!(
                    "the stream is {rpo:.0} s behind the source (stream_max_lag {})",
                    crate::units::human_duration(self.max_lag)
                ));
            }
        }
        problems
    }

    /// The RPO of point-in-time recovery now: the receiver's figure, aged by the time
    /// since it wrote it; else the age of the newest stored chunk (a lower bound).
    pub fn rpo_seconds(&self, now: DateTime<Utc>) -> Option<f64> {
        let seconds = |d: chrono::Duration| d.num_milliseconds().max(0) as f64 / 1000.0;
        match &self.receiver {
            Some(r) => {
                let rpo = r.rpo_seconds?;
                // A receiver that stopped writing its status is not keeping up.
                let silent = r.updated_at.map_or(0.0, |at| seconds(now - at));
                Some(if silent > 5.0 { rpo + silent } else { rpo })
            }
            None => self.newest_chunk_at.map(|at| seconds(now - at)),
        }
    }
}

impl ArchiveCheck {
    /// Whether everything is in order: no gap (missing or dropped), no drop waiting to
    /// be recorded, archiver not failing, and WAL summaries on where incremental backups
    /// are scheduled.
    pub fn healthy(&self) -> bool {
        let streaming = self.stream.is_some();
        self.backups.iter().all(|b| b.missing.is_empty())
            && self
                .stream
                .as_ref()
                .is_none_or(|s| s.problems(Utc::now()).is_empty())
            && self.gaps.is_empty()
            && self
                .spool
                .as_ref()
                .is_none_or(|s| s.dropped_unrecorded == 0)
            && self
                .archiver
                .as_ref()
                .map(|a| {
                    (streaming || !a.failing())
                        && (!self.incrementals_scheduled || a.summarize_wal == Some(true))
                })
                .unwrap_or(false)
    }
}

/// Check the policy's archive, its gap records, its local spool and its source's
/// archiver.
pub async fn check(repo: &Repository, policy: &Policy) -> Result<ArchiveCheck> {
    let source_url = policy.source.url.as_str();
    let incrementals_scheduled = policy
        .schedule
        .as_ref()
        .is_some_and(|s| s.physical_incremental.is_some());
    let archive = wal::list_archive(repo).await?;
    let mut timelines: Vec<u32> = archive.iter().map(|a| a.file.timeline).collect();
    timelines.dedup();
    let mut backups = Vec::new();
    for m in repo.list_backups().await? {
        let (BackupKind::Physical, Some(p)) = (m.kind, m.physical.as_ref()) else {
            continue;
        };
        backups.push(continuity(&m.id, p, &archive)?);
    }
    let archiver = match archiver_status(source_url).await {
        Ok(a) => Ok(a),
        Err(e) => Err(e.to_string()),
    };
    Ok(ArchiveCheck {
        files: archive.len(),
        timelines,
        backups,
        archiver,
        incrementals_scheduled,
        gaps: wal::gaps::list_gaps(repo).await?,
        spool: wal::pusher::spool_state(policy)?,
        stream: match policy.archive.mode {
            crate::policy::ArchiveMode::Stream => Some(stream_check(repo, policy).await?),
            _ => None,
        },
    })
}

async fn stream_check(repo: &Repository, policy: &Policy) -> Result<StreamCheck> {
    let slot = policy.stream_slot();
    let spool = policy.archive.spool_dir.as_deref();
    let source = async {
        let client = ConnTarget::parse(&policy.source.url)?.connect().await?;
        let row = client
            .query_opt(
                "select coalesce(wal_status, ''), active, safe_wal_size from pg_replication_slots where slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| crate::error::Error::pg("cannot read pg_replication_slots", e))?;
        let keep: Option<i64> = client
            .query_one(
                "select case when setting = '-1' then -1 else setting::bigint * 1024 * 1024 end from pg_settings where name = 'max_slot_wal_keep_size'",
                &[],
            )
            .await
            .ok()
            .map(|r| r.get(0));
        Ok::<_, crate::error::Error>((
            row.map(|r| SlotState {
                wal_status: r.get(0),
                active: r.get(1),
                safe_wal_size: r.get(2),
            }),
            keep,
        ))
    }
    .await;
    let (slot_row, max_slot_wal_keep_size) = match source {
        Ok((row, keep)) => (Ok(row), keep),
        Err(e) => (Err(e.to_string()), None),
    };
    Ok(StreamCheck {
        slot,
        slot_row,
        max_slot_wal_keep_size,
        receiver: spool.and_then(wal::receiver::read_status),
        receiver_running: spool.is_some_and(wal::receiver::receiver_running),
        newest_chunk_at: wal::stream::list_partials(repo)
            .await?
            .iter()
            .filter_map(|p| p.stored_at)
            .max(),
        max_lag: policy.archive.stream_max_lag,
    })
}

fn continuity(
    id: &str,
    p: &crate::repository::PhysicalInfo,
    archive: &[ArchivedWal],
) -> Result<BackupContinuity> {
    let size = p.wal_segment_size;
    let start = parse_lsn(&p.start_lsn)? / size;
    let on_timeline: std::collections::HashSet<u64> = archive
        .iter()
        .filter(|a| a.file.kind == WalFileKind::Segment && a.file.timeline == p.timeline)
        .filter_map(|a| a.file.segno_for(size))
        .collect();
    let newest = on_timeline.iter().copied().max().filter(|n| *n >= start);
    let stop = parse_lsn(&p.stop_lsn)? / size;
    let end = newest.unwrap_or(stop).max(stop);
    let missing = (start..=end)
        .filter(|segno| !on_timeline.contains(segno))
        .map(|segno| wal::segment_name(p.timeline, segno, size))
        .collect();
    Ok(BackupContinuity {
        backup: id.into(),
        timeline: p.timeline,
        from: p.start_wal.clone(),
        to: newest.map(|n| wal::segment_name(p.timeline, n, size)),
        segments: (end - start + 1) as usize,
        missing,
    })
}

async fn archiver_status(source_url: &str) -> Result<ArchiverStatus> {
    let client = ConnTarget::parse(source_url)?.connect().await?;
    let row = client
        .query_one(
            "select last_archived_wal, last_archived_time, failed_count, last_failed_wal, last_failed_time, \
             case when pg_is_in_recovery() then '' else pg_walfile_name(pg_current_wal_lsn()) end, \
             current_setting('summarize_wal', true) \
             from pg_stat_archiver",
            &[],
        )
        .await
        .map_err(|e| crate::error::Error::pg("cannot read pg_stat_archiver", e))?;
    Ok(ArchiverStatus {
        last_archived_wal: row.get(0),
        last_archived_at: row.get(1),
        failed_count: row.get(2),
        last_failed_wal: row.get(3),
        last_failed_at: row.get(4),
        current_wal: row.get(5),
        summarize_wal: row.get::<_, Option<String>>(6).map(|v| v == "on"),
    })
}
