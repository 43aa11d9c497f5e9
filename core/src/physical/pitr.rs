//! Point-in-time recovery: a physical base backup plus archived WAL, replayed to a
//! time, LSN, transaction id, named restore point, or the end of the archive.
//!
//! [`plan`] decides everything before a byte is written: the newest base backup that
//! ends before the target, the timeline to follow (through `.history` files), and every
//! WAL segment replay needs from the backup's start. A missing segment refuses the
//! restore and names the segment. [`execute`] extracts the base backup (every digest and
//! age authentication checked), writes `recovery.signal` and the recovery settings with
//! `restore_command` pointing at `pgvault wal-fetch`, and optionally starts the server
//! and waits until recovery reaches the target.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::keys::Identities;
use crate::physical::wal::{self, parse_lsn, ArchivedWal, WalFileKind};
use crate::pipeline::{self, Decode, Progress};
use crate::repository::{object, BackupKind, BackupManifest, PhysicalInfo, Repository};
use crate::stop_signal::unless_cancelled;
use crate::units::human_bytes;

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// Just before the first transaction committed after this time.
    Time(DateTime<Utc>),
    /// At this LSN.
    Lsn(u64),
    /// After this transaction id.
    Xid(String),
    /// At this named restore point (`pg_create_restore_point`).
    Name(String),
    /// The end of the archived WAL.
    Latest,
}

impl fmt::Display for RecoveryTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoveryTarget::Time(t) => write!(f, "time {}", t.format("%Y-%m-%d %H:%M:%S%.6f UTC")),
            RecoveryTarget::Lsn(l) => write!(f, "LSN {}", wal::format_lsn(*l)),
            RecoveryTarget::Xid(x) => write!(f, "transaction {x}"),
            RecoveryTarget::Name(n) => write!(f, "restore point {n:?}"),
            RecoveryTarget::Latest => f.write_str("the end of the archived WAL"),
        }
    }
}

/// Which timeline recovery follows (`recovery_target_timeline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimelineChoice {
    /// The newest timeline descending from the base backup's (PostgreSQL's default).
    Latest,
    /// The base backup's own timeline: ignores later promotions, e.g. of restored copies.
    Current,
    /// This timeline (it must descend from the base backup's).
    Id(u32),
}

impl TimelineChoice {
    /// Parse `latest`, `current` or a timeline number.
    pub fn parse(text: &str) -> Result<TimelineChoice> {
        match text {
            "latest" => Ok(TimelineChoice::Latest),
            "current" => Ok(TimelineChoice::Current),
            n => n.parse().map(TimelineChoice::Id).map_err(|_| {
                Error::Invalid(format!(
                    "--target-timeline {n:?} is not latest, current or a timeline number"
                ))
            }),
        }
    }
}

/// What the server does when recovery reaches the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryAction {
    /// End recovery and accept writes (a new timeline begins).
    Promote,
    /// Stay in recovery, paused, for inspection.
    Pause,
    /// Stop the server.
    Shutdown,
}

impl RecoveryAction {
    fn setting(self) -> &'static str {
        match self {
            RecoveryAction::Promote => "promote",
            RecoveryAction::Pause => "pause",
            RecoveryAction::Shutdown => "shutdown",
        }
    }
}

/// A point-in-time restore, decided but not started.
pub struct PitrPlan {
    /// The base backup replay starts from (for an incremental, the newest member of
    /// its chain).
    pub base: BackupManifest,
    /// Every backup the data directory is built from: the full at the root first, the
    /// base last (just the base when it is a full backup).
    pub chain: Vec<BackupManifest>,
    /// Where a chain's members are extracted before `pg_combinebackup` joins them:
    /// beside the data directory, on its filesystem (`None` for a full backup).
    pub staging: Option<PathBuf>,
    /// Most disk the restore uses at once, bytes: the extracted members plus the
    /// combined data directory (an upper bound).
    pub disk_needed: u64,
    /// Free bytes on the data directory's filesystem now (when it can be read).
    pub disk_free: Option<u64>,
    /// A WAL gap after the target: replay must stop before it.
    pub gap_ahead: Option<wal::gaps::GapRecord>,
    /// Its WAL positions.
    pub physical: PhysicalInfo,
    /// Where recovery stops.
    pub target: RecoveryTarget,
    /// The timeline recovery ends on.
    pub timeline: u32,
    /// How that timeline was chosen.
    pub timeline_choice: TimelineChoice,
    /// Segments replay needs, in order (all present in the archive).
    pub segments: Vec<String>,
    /// Their stored bytes.
    pub segments_stored_bytes: u64,
    /// The newest archived segment on the path.
    pub newest_segment: Option<String>,
    /// When that segment is a streaming policy's growing one: the LSN its stored bytes
    /// end at (replay ends there at the latest).
    pub streamed_end: Option<u64>,
    /// The data directory to restore into.
    pub pgdata: PathBuf,
    /// Entries in it now (0: absent or empty).
    pub pgdata_entries: usize,
}

/// Choose the base backup for `target` among `backups` (any order): the newest one
/// whose end lies before the target.
pub fn choose_base<'a>(
    backups: &'a [BackupManifest],
    target: &RecoveryTarget,
) -> Result<&'a BackupManifest> {
    let mut physical: Vec<&BackupManifest> = backups
        .iter()
        .filter(|m| m.kind == BackupKind::Physical && m.physical.is_some())
        .collect();
    physical.sort_by_key(|m| std::cmp::Reverse(m.consistent_at));
    let stop = |m: &BackupManifest| {
        m.physical
            .as_ref()
            .and_then(|p| parse_lsn(&p.stop_lsn).ok())
            .unwrap_or(u64::MAX)
    };
    let chosen = match target {
        RecoveryTarget::Time(t) => physical.iter().find(|m| m.consistent_at <= *t),
        RecoveryTarget::Lsn(l) => physical.iter().find(|m| stop(m) <= *l),
        _ => physical.first(),
    };
    chosen.copied().ok_or_else(|| {
        let oldest = physical
            .last()
            .map(|m| {
                format!(
                    "; the oldest base backup, {}, ends at {}",
                    m.id,
                    m.consistent_at.format("%Y-%m-%d %H:%M:%S UTC")
                )
            })
            .unwrap_or_else(|| "; take one with `pgvault backup --kind physical`".into());
        Error::Invalid(format!(
            "no physical base backup ends before {target}{oldest}"
        ))
    })
}

/// The staging directory of a chain restore into `pgdata`: a sibling, so extraction and
/// `pg_combinebackup` stay on one filesystem (hard links and `copy_file_range` work).
fn staging_dir(pgdata: &Path, base_id: &str) -> PathBuf {
    let name = pgdata
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pgdata".into());
    pgdata.with_file_name(format!(".{name}.pgvault-staging-{base_id}"))
}

/// Free bytes for an unprivileged writer on the filesystem that holds `path` (or its
/// nearest existing ancestor).
fn free_bytes(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let stat = nix::sys::statvfs::statvfs(existing).ok()?;
    Some(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

fn entries_in(dir: &Path) -> Result<usize> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Ok(entries.count()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Error::io(format!("cannot read {}", dir.display()), e)),
    }
}

/// Decide a point-in-time restore into `pgdata`. Reads the repository (and the
/// `.history` files, hence the identity); writes nothing.
pub async fn plan(
    repo: &Repository,
    target: RecoveryTarget,
    timeline_choice: TimelineChoice,
    pgdata: &Path,
    identities: &Identities,
) -> Result<PitrPlan> {
    let backups = repo.list_backups().await?;
    let base = choose_base(&backups, &target)?.clone();
    let chain = crate::repository::chain::chain_of(&base, &backups)?;
    let staging = (chain.len() > 1).then(|| staging_dir(pgdata, &base.id));
    let raw: u64 = chain.iter().map(BackupManifest::raw_size).sum();
    let disk_needed = if chain.len() > 1 { 2 * raw } else { raw };
    let disk_free = free_bytes(pgdata);
    let physical = base.physical.clone().ok_or_else(|| Error::Manifest {
        key: base.id.clone(),
        message: "a physical backup without WAL positions".into(),
    })?;
    let seg_size = physical.wal_segment_size;
    let start_lsn = parse_lsn(&physical.start_lsn)?;
    let stop_lsn = parse_lsn(&physical.stop_lsn)?;
    let mut archive = wal::list_archive(repo).await?;
    // A streaming policy's growing segment ends the archive on its timeline.
    let tails = wal::stream::usable_tails(&archive, wal::stream::list_partials(repo).await?);
    archive.extend(tails.iter().map(|(entry, _)| entry.clone()));

    // Follow the newest timeline that descends from the backup's (as
    // recovery_target_timeline = 'latest' does), or the one asked for.
    let mut timeline = physical.timeline;
    let mut switches = Vec::new();
    let mut histories: Vec<&ArchivedWal> = archive
        .iter()
        .filter(|a| a.file.kind == WalFileKind::History && a.file.timeline > physical.timeline)
        .filter(|a| match timeline_choice {
            TimelineChoice::Latest => true,
            TimelineChoice::Current => false,
            TimelineChoice::Id(n) => a.file.timeline == n,
        })
        .collect();
    if let TimelineChoice::Id(n) = timeline_choice {
        if n != physical.timeline && histories.is_empty() {
            return Err(Error::Invalid(format!(
                "timeline {n} has no history file in the archive; it does not descend from base backup {} (timeline {})",
                base.id, physical.timeline
            )));
        }
    }
    histories.sort_by_key(|a| std::cmp::Reverse(a.file.timeline));
    for history in histories {
        let stored = repo.storage().get(&history.key).await?;
        let (plain, _) = pipeline::decode_bytes(
            stored,
            &history.key,
            identities,
            &base.encryption.recipients,
        )
        .await?;
        let parsed = wal::parse_history(&String::from_utf8_lossy(&plain))?;
        let descends = parsed
            .iter()
            .any(|s| s.timeline == physical.timeline && s.switch_lsn >= start_lsn);
        if descends {
            timeline = history.file.timeline;
            switches = parsed;
            break;
        }
    }

    let segments: std::collections::HashMap<&str, &ArchivedWal> = archive
        .iter()
        .filter(|a| a.file.kind == WalFileKind::Segment)
        .map(|a| (a.file.name.as_str(), a))
        .collect();
    let present = |name: &str| segments.get(name).copied();
    let newest_on_timeline = archive
        .iter()
        .filter(|a| a.file.kind == WalFileKind::Segment && a.file.timeline == timeline)
        .filter_map(|a| a.file.segno_for(seg_size))
        .max();
    let end_lsn = match &target {
        RecoveryTarget::Lsn(l) => *l,
        _ => newest_on_timeline
            .map(|segno| (segno + 1) * seg_size - 1)
            .unwrap_or(stop_lsn)
            .max(stop_lsn),
    };
    let needed = wal::needed_segments(
        physical.timeline,
        start_lsn,
        &switches,
        timeline,
        end_lsn,
        seg_size,
    );
    let mut needed = needed;
    let mut gap_ahead = None;
    let missing_first = needed.iter().position(|n| present(n).is_none());
    if let Some(position) = missing_first {
        // A dropped range is named as what it is, not as an unexplained hole. A time
        // target before the first drop needs nothing from the gap on: replay stops
        // there (and PostgreSQL stops with an error if the target lies further on).
        let gaps = wal::gaps::list_gaps(repo).await?;
        if let Some(gap) = gaps.iter().find(|g| g.covers(&needed[position])) {
            match &target {
                RecoveryTarget::Time(t) if *t < gap.dropped_at => {
                    needed.truncate(position);
                    gap_ahead = Some(gap.clone());
                }
                _ => {
                    return Err(Error::Invalid(format!(
                        "replay from base backup {} to {target} would cross a WAL gap: {gap}. Choose a time before {} or a base backup taken after {}",
                        base.id,
                        gap.dropped_at.format("%Y-%m-%d %H:%M:%S UTC"),
                        gap.last
                    )))
                }
            }
        }
    }
    if target == RecoveryTarget::Latest && gap_ahead.is_none() {
        // "The end of the archive" must not quietly mean "the last WAL before a drop".
        let last = needed.last().cloned().unwrap_or_default();
        let gaps = wal::gaps::list_gaps(repo).await?;
        if let Some(gap) = gaps
            .iter()
            .find(|g| g.timeline == timeline && g.first.as_str() > last.as_str())
        {
            return Err(Error::Invalid(format!(
                "--to-latest would end at {last}, before a WAL gap: {gap}. The newest WAL is gone; to accept that, restore with --to-time before {}",
                gap.dropped_at.format("%Y-%m-%d %H:%M:%S UTC")
            )));
        }
    }
    let missing: Vec<&String> = needed.iter().filter(|n| present(n).is_none()).collect();
    if let Some(first) = missing.first() {
        let stop_segment = wal::segment_name(physical.timeline, stop_lsn / seg_size, seg_size);
        let why = if needed.iter().position(|n| n == *first)
            <= needed.iter().position(|n| *n == stop_segment)
        {
            format!("the base backup {} cannot become consistent without it (it ends in {stop_segment})", base.id)
        } else {
            format!(
                "replay from base backup {} cannot pass it to reach {target}",
                base.id
            )
        };
        return Err(Error::Invalid(format!(
            "WAL segment {first} is missing from the archive ({} of {} needed segments missing); {why}. Check archiving with `pgvault check`",
            missing.len(),
            needed.len()
        )));
    }
    if let RecoveryTarget::Time(t) = &target {
        // No WAL is newer than the time it was stored: a target after the newest
        // segment's arrival cannot be reached, and recovery would end short of it.
        let newest = needed
            .iter()
            .filter_map(|n| present(n))
            .filter_map(|a| a.archived_at.map(|at| (at, a.file.name.clone())))
            .max();
        if let Some((archived_at, segment)) = newest {
            if *t > archived_at {
                let hint = if timeline != physical.timeline {
                    format!(
                        "; replay follows timeline {timeline}, which branched off timeline {} (a promoted copy archiving into this policy?): to stay on the base backup's timeline, use --target-timeline current",
                        physical.timeline
                    )
                } else {
                    "; pick a time up to it, or use --to-latest".into()
                };
                return Err(Error::Invalid(format!(
                    "--to-time {} is after the end of the archived WAL on this path: its newest segment, {segment}, was stored at {}, so nothing later can be reached. The newest reachable time is at most {}{hint}",
                    t.format("%Y-%m-%d %H:%M:%S UTC"),
                    archived_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    archived_at.format("%Y-%m-%d %H:%M:%S UTC"),
                )));
            }
        }
    }
    let segments_stored_bytes = needed
        .iter()
        .filter_map(|n| present(n))
        .map(|a| a.stored_size)
        .sum();
    let newest_segment = needed.last().cloned();
    let streamed_end = tails
        .iter()
        .find(|(entry, _)| Some(&entry.file.name) == newest_segment.as_ref())
        .map(|(_, end)| *end);
    Ok(PitrPlan {
        streamed_end,
        gap_ahead,
        chain,
        staging,
        disk_needed,
        disk_free,
        pgdata_entries: entries_in(pgdata)?,
        pgdata: pgdata.to_path_buf(),
        timeline_choice,
        base,
        physical,
        target,
        timeline,
        segments: needed,
        segments_stored_bytes,
        newest_segment,
    })
}

impl fmt::Display for PitrPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let base_size = self.base.stored_size();
        writeln!(f, "Point-in-time restore plan")?;
        writeln!(f, "  target:      {}", self.target)?;
        writeln!(
            f,
            "  base backup: {} (ended {}, WAL {} .. {}, timeline {}, {} stored)",
            self.base.id,
            self.base.consistent_at.format("%Y-%m-%d %H:%M:%S UTC"),
            self.physical.start_lsn,
            self.physical.stop_lsn,
            self.physical.timeline,
            human_bytes(base_size)
        )?;
        writeln!(
            f,
            "  WAL:         {} segment(s), {} .. {}, {} stored, continuous{}",
            self.segments.len(),
            self.segments.first().map(String::as_str).unwrap_or("-"),
            self.newest_segment.as_deref().unwrap_or("-"),
            human_bytes(self.segments_stored_bytes),
            if self.timeline != self.physical.timeline {
                format!(
                    " across timelines {} -> {}",
                    self.physical.timeline, self.timeline
                )
            } else {
                String::new()
            }
        )?;
        if let Some(end) = self.streamed_end {
            writeln!(
                f,
                "  stream:      {} is the growing segment of the WAL stream, stored up to {}: replay ends there at the latest",
                self.newest_segment.as_deref().unwrap_or("-"),
                wal::format_lsn(end)
            )?;
        }
        if let Some(gap) = &self.gap_ahead {
            writeln!(
                f,
                "  WAL GAP:     after the target: {gap}. Replay stops at the gap: if the last commit before it is older than the target, PostgreSQL stops with \"recovery ended before configured recovery target was reached\" and nothing is promoted"
            )?;
        }
        if self.chain.len() > 1 {
            let members: Vec<&str> = self.chain.iter().map(|m| m.id.as_str()).collect();
            writeln!(
                f,
                "  chain:       full {} + {} incremental(s), joined with pg_combinebackup: {}",
                members[0],
                members.len() - 1,
                members.join(" -> ")
            )?;
        }
        let chain_size: u64 = self.chain.iter().map(BackupManifest::stored_size).sum();
        writeln!(
            f,
            "  download:    about {} ({} + WAL)",
            human_bytes(chain_size.max(base_size) + self.segments_stored_bytes),
            if self.chain.len() > 1 {
                "every backup of the chain"
            } else {
                "base backup"
            }
        )?;
        let free = match self.disk_free {
            Some(free) if free < self.disk_needed => {
                format!("{} free: NOT ENOUGH", human_bytes(free))
            }
            Some(free) => format!("{} free", human_bytes(free)),
            None => "free space unknown".into(),
        };
        match &self.staging {
            Some(staging) => writeln!(
                f,
                "  disk:        up to {} at once: the members extracted in {} (removed afterwards) and the combined data directory; {free}",
                human_bytes(self.disk_needed),
                staging.display()
            )?,
            None => writeln!(
                f,
                "  disk:        about {} in the data directory; {free}",
                human_bytes(self.disk_needed)
            )?,
        }
        writeln!(
            f,
            "  data dir:    {} ({})",
            self.pgdata.display(),
            if self.pgdata_entries == 0 {
                "empty or absent".to_string()
            } else {
                format!(
                    "NOT EMPTY: {} entries; --force replaces them",
                    self.pgdata_entries
                )
            }
        )
    }
}

/// Options of [`execute`].
pub struct PitrOptions {
    /// Replace a non-empty data directory.
    pub force: bool,
    /// What the server does at the target.
    pub action: RecoveryAction,
    /// The `restore_command` to write (a `pgvault wal-fetch …` line).
    pub restore_command: String,
    /// Start the server and wait for recovery to reach the target.
    pub start: bool,
    /// Port to start it on (default: its configuration's).
    pub port: Option<u16>,
    /// Server binaries directory for `--start` (default: discovered).
    pub bin_dir: Option<PathBuf>,
    /// Parallel ranged GETs for the base backup.
    pub download_parallelism: usize,
    /// Keep the backup's archive settings (the restored server archives into the
    /// policy after promotion, on a new timeline); false turns archiving off, for copies
    /// that must not write to the production archive.
    pub keep_archiving: bool,
    /// Extra `-c name=value` settings for `--start` (drills pin the server to loopback).
    pub server_settings: Vec<String>,
}

/// The outcome of [`execute`].
#[derive(Debug, Clone, Default)]
pub struct PitrReport {
    /// Seconds downloading, verifying and extracting the base backup.
    pub extract_seconds: f64,
    /// Seconds from server start to the target (with `--start`).
    pub replay_seconds: Option<f64>,
    /// What the server logged about where recovery stopped.
    pub reached: Vec<String>,
    /// Where the server's log is.
    pub log: Option<PathBuf>,
    /// WAL files recovery got from the prefetcher, without a round trip (with `--start`).
    pub prefetched: usize,
}

/// Carry out a plan: extract, configure recovery, optionally start and wait.
///
/// `cancel` stops the extraction (the data directory is emptied again) or the wait for
/// recovery (the server is stopped); the answer is then [`Error::Cancelled`].
pub async fn execute(
    repo: &Repository,
    plan: &PitrPlan,
    identities: &Identities,
    options: &PitrOptions,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<PitrReport> {
    let pgdata = &plan.pgdata;
    if pgdata.join("postmaster.pid").exists() {
        return Err(Error::Invalid(format!(
            "{} has a postmaster.pid: a server may be running there; stop it first",
            pgdata.display()
        )));
    }
    if options.start || plan.staging.is_some() {
        // Before anything is written: only the backup's own major can start the copy,
        // and join the members of a chain.
        let major = (plan.base.server_version_num / 10000) as u32;
        let bin = crate::server::ServerBinaries::discover_exact(options.bin_dir.as_deref(), major)
            .await?;
        let combine = bin.program("pg_combinebackup");
        if plan.staging.is_some() && !combine.exists() {
            return Err(Error::ToolNotFound {
                message: format!(
                    "restoring an incremental chain needs pg_combinebackup of PostgreSQL {major}, and {} does not exist",
                    combine.display()
                ),
            });
        }
    }
    let entries = entries_in(pgdata)?;
    if entries > 0 && !options.force {
        return Err(Error::Invalid(format!(
            "data directory {} is not empty ({entries} entries); re-run with --force to replace its contents",
            pgdata.display()
        )));
    }
    if entries > 0 {
        clear_dir(pgdata)?;
    }
    std::fs::create_dir_all(pgdata)
        .map_err(|e| Error::io(format!("cannot create {}", pgdata.display()), e))?;
    set_mode(pgdata, 0o700)?;

    let started = Instant::now();
    let built = match &plan.staging {
        None => {
            extract_backup(
                repo, &plan.base, pgdata, identities, options, progress, cancel,
            )
            .await
        }
        Some(staging) => {
            let built =
                build_from_chain(repo, plan, staging, identities, options, progress, cancel).await;
            if let Err(e) = std::fs::remove_dir_all(staging) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(dir = %staging.display(), error = %e, "cannot remove the staging directory of the chain restore; remove it by hand");
                }
            }
            built
        }
    };
    if let Err(e) = built {
        let _ = clear_dir(pgdata);
        return Err(e);
    }
    let extract_seconds = started.elapsed().as_secs_f64();
    write_recovery_settings(plan, options)?;
    let owner = crate::server::host::server_user(pgdata)?;
    if owner.is_some() {
        chown_tree(pgdata, owner.as_deref())?;
    }
    let mut report = PitrReport {
        extract_seconds,
        ..Default::default()
    };
    if options.start {
        let replay_started = Instant::now();
        let (reached, log) = start_and_wait(plan, options, owner.as_deref(), cancel).await?;
        report.replay_seconds = Some(replay_started.elapsed().as_secs_f64());
        report.reached = reached;
        report.log = Some(log);
        report.prefetched = wal::prefetcher::served_count(pgdata);
    }
    Ok(report)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("cannot set the mode of {}", path.display()), e))
}

fn clear_dir(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::io(format!("cannot read {}", dir.display()), e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let removed = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| Error::io(format!("cannot remove {}", path.display()), e))?;
    }
    Ok(())
}

fn chown_tree(root: &Path, user: Option<&str>) -> Result<()> {
    crate::server::host::chown_to(root, user)?;
    if root.is_dir() && !root.is_symlink() {
        let entries = std::fs::read_dir(root)
            .map_err(|e| Error::io(format!("cannot read {}", root.display()), e))?;
        for entry in entries.flatten() {
            chown_tree(&entry.path(), user)?;
        }
    }
    Ok(())
}

/// Extract every member of the plan's chain, verified, into its own directory under
/// `staging`, then join them into the data directory with `pg_combinebackup` (hard
/// links on PostgreSQL 18, `copy_file_range` on 17, when staging and data directory share
/// a filesystem; a plain copy otherwise, and whenever the faster mode fails).
async fn build_from_chain(
    repo: &Repository,
    plan: &PitrPlan,
    staging: &Path,
    identities: &Identities,
    options: &PitrOptions,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<()> {
    if staging.exists() {
        tracing::warn!(dir = %staging.display(), "removing the staging directory an earlier chain restore left");
        std::fs::remove_dir_all(staging)
            .map_err(|e| Error::io(format!("cannot remove {}", staging.display()), e))?;
    }
    std::fs::create_dir_all(staging)
        .map_err(|e| Error::io(format!("cannot create {}", staging.display()), e))?;
    set_mode(staging, 0o700)?;
    let mut members = Vec::new();
    for (index, member) in plan.chain.iter().enumerate() {
        let dir = staging.join(format!("{index:03}-{}", member.id));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        set_mode(&dir, 0o700)?;
        tracing::info!(backup = %member.id, dir = %dir.display(), "extracting a member of the chain");
        extract_backup(
            repo,
            member,
            &dir,
            identities,
            options,
            progress.clone(),
            cancel,
        )
        .await?;
        members.push(dir);
    }
    let major = (plan.base.server_version_num / 10000) as u32;
    let bin =
        crate::server::ServerBinaries::discover_exact(options.bin_dir.as_deref(), major).await?;
    // Hard links and shared extents need one filesystem: a data directory that is a
    // mount point of its own gets a plain copy.
    let same_filesystem = {
        use std::os::unix::fs::MetadataExt;
        let device = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
        device(staging).is_some() && device(staging) == device(&plan.pgdata)
    };
    let modes: &[Option<&str>] = match (same_filesystem, major >= 18) {
        (true, true) => &[Some("--link"), None],
        (true, false) => &[Some("--copy-file-range"), None],
        (false, _) => &[None],
    };
    for (attempt, mode) in modes.iter().enumerate() {
        let mut cmd = tokio::process::Command::new(bin.program("pg_combinebackup"));
        cmd.args(&members).arg("--output").arg(&plan.pgdata);
        if let Some(mode) = mode {
            cmd.arg(mode);
        }
        cmd.kill_on_drop(true);
        let output = unless_cancelled(cancel, async {
            cmd.output().await.map_err(|e| {
                Error::io(
                    format!("cannot run {}", bin.program("pg_combinebackup").display()),
                    e,
                )
            })
        })
        .await?;
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        if attempt + 1 < modes.len() {
            tracing::warn!(mode = mode.unwrap_or("copy"), error = %stderr, "pg_combinebackup failed in this mode; trying a plain copy");
            clear_dir(&plan.pgdata)?;
            continue;
        }
        return Err(Error::Tool {
            tool: "pg_combinebackup".into(),
            message: format!("{} ({})", stderr, output.status),
        });
    }
    Ok(())
}

/// Stream one backup's tar through the verifying decoder into a tar extractor at `dest`.
async fn extract_backup(
    repo: &Repository,
    backup: &BackupManifest,
    dest: &Path,
    identities: &Identities,
    options: &PitrOptions,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<()> {
    let base = backup.object(object::BASE)?;
    let (reader, writer) = std::io::pipe().map_err(|e| Error::io("cannot create a pipe", e))?;
    let dest = dest.to_path_buf();
    let extractor = tokio::task::spawn_blocking(move || {
        let mut archive = tar::Archive::new(reader);
        archive.set_preserve_permissions(true);
        archive.set_overwrite(true);
        archive.unpack(&dest).map_err(|e| {
            Error::io(
                format!("cannot extract the base backup into {}", dest.display()),
                e,
            )
        })
    });
    // On cancel the download is dropped, and with it the writer: the extractor's input
    // ends and it returns.
    let streamed = unless_cancelled(
        cancel,
        pipeline::download_stream(
            repo.storage(),
            &base.key,
            &base.digest,
            Decode::Full(identities),
            &backup.encryption.recipients,
            writer,
            options.download_parallelism.max(1),
            progress,
        ),
    )
    .await;
    // Dropping the writer ends the extractor's input either way.
    let streamed = streamed.map(drop);
    let extracted = extractor
        .await
        .map_err(|e| Error::Internal(format!("extractor thread failed: {e}")))?;
    streamed?;
    extracted
}

/// `recovery.signal` and the recovery settings, appended to `postgresql.auto.conf`
/// (which the server reads last, so they win).
fn write_recovery_settings(plan: &PitrPlan, options: &PitrOptions) -> Result<()> {
    let pgdata = &plan.pgdata;
    for stale in ["postmaster.pid", "postmaster.opts", "standby.signal"] {
        let _ = std::fs::remove_file(pgdata.join(stale));
    }
    std::fs::create_dir_all(pgdata.join("pg_wal/archive_status"))
        .map_err(|e| Error::io("cannot create pg_wal", e))?;
    let quote = crate::postgres::quote_literal;
    let mut lines = vec![
        String::new(),
        format!(
            "# Added by pgvault restore at {}: recovery from base backup {}",
            Utc::now().format("%Y-%m-%d %H:%M:%S UTC"),
            plan.base.id
        ),
        format!("restore_command = {}", quote(&options.restore_command)),
        format!(
            "recovery_target_timeline = {}",
            // The timeline the plan chose, never 'latest': the server would take the
            // newest history file in the archive even when it does not descend from
            // this backup (a promoted copy archiving into the policy) and stop.
            quote(&plan.timeline.to_string())
        ),
    ];
    match &plan.target {
        RecoveryTarget::Time(t) => lines.push(format!(
            "recovery_target_time = {}",
            quote(&t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string())
        )),
        RecoveryTarget::Lsn(l) => lines.push(format!(
            "recovery_target_lsn = {}",
            quote(&wal::format_lsn(*l))
        )),
        RecoveryTarget::Xid(x) => lines.push(format!("recovery_target_xid = {}", quote(x))),
        RecoveryTarget::Name(n) => lines.push(format!("recovery_target_name = {}", quote(n))),
        RecoveryTarget::Latest => {}
    }
    if plan.target != RecoveryTarget::Latest {
        lines.push(format!(
            "recovery_target_action = {}",
            quote(options.action.setting())
        ));
    }
    if !options.keep_archiving {
        // A copy for inspection or a drill must never write its new timeline into the
        // production archive.
        lines.push("archive_mode = 'off'".into());
    }
    lines.push(String::new());
    let auto = pgdata.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
    text.push_str(&lines.join("\n"));
    std::fs::write(&auto, text)
        .map_err(|e| Error::io(format!("cannot write {}", auto.display()), e))?;
    std::fs::write(pgdata.join("recovery.signal"), b"")
        .map_err(|e| Error::io("cannot write recovery.signal", e))?;
    Ok(())
}

/// Start the server on the restored directory and wait until its log says recovery
/// reached the target (or failed). Returns the log lines that say where it stopped.
///
/// The log is followed line by line; a server that logs nothing for
/// [`RECOVERY_SILENCE_LIMIT`] is stopped and reported, and `cancel` stops it at once.
async fn start_and_wait(
    plan: &PitrPlan,
    options: &PitrOptions,
    owner: Option<&str>,
    cancel: &CancellationToken,
) -> Result<(Vec<String>, PathBuf)> {
    let major = (plan.base.server_version_num / 10000) as u32;
    let bin =
        crate::server::ServerBinaries::discover_exact(options.bin_dir.as_deref(), major).await?;
    let log = plan.pgdata.join("pgvault-recovery.log");
    let mut cmd = bin.command_as("pg_ctl", owner);
    cmd.arg("-D")
        .arg(&plan.pgdata)
        .arg("-l")
        .arg(&log)
        .arg("start");
    let mut server_options: Vec<String> = options
        .server_settings
        .iter()
        .map(|s| format!("-c {s}"))
        .collect();
    if let Some(port) = options.port {
        server_options.push(format!("-p {port}"));
    }
    if !server_options.is_empty() {
        cmd.arg("-o").arg(server_options.join(" "));
    }
    let pg_ctl = tokio::task::spawn_blocking(move || crate::server::run_tool("pg_ctl", cmd));
    let started = pg_ctl
        .await
        .map_err(|e| Error::Invalid(format!("pg_ctl worker failed: {e}")))?;
    if let Err(e) = started {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let fatal = text
            .lines()
            .find(|l| l.contains("FATAL:"))
            .map(|l| l.trim().to_string())
            .unwrap_or_else(|| e.to_string());
        let hint = if fatal.contains("recovery ended before")
            && plan.timeline != plan.physical.timeline
        {
            format!(
                " (replay followed timeline {}, which may have no transaction after the target: try --target-timeline current)",
                plan.timeline
            )
        } else {
            String::new()
        };
        return Err(Error::Invalid(format!(
            "recovery failed: {fatal}{hint}; the server log is {}",
            log.display()
        )));
    }
    let done = match options.action {
        _ if plan.target == RecoveryTarget::Latest => {
            "database system is ready to accept connections"
        }
        RecoveryAction::Promote => "database system is ready to accept connections",
        RecoveryAction::Pause => "pausing at the end of recovery",
        RecoveryAction::Shutdown => "database system is shut down",
    };
    let mut follower = LogFollower::new(log.clone());
    let mut reached = Vec::new();
    let mut last_heard = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                let _ = stop_server(&plan.pgdata, major, options.bin_dir.as_deref()).await;
                return Err(Error::Cancelled);
            }
            _ = tick.tick() => {}
        }
        let lines = follower.new_lines().await;
        if !lines.is_empty() {
            last_heard = Instant::now();
        }
        let mut shut_down = false;
        for line in &lines {
            if line.contains("FATAL:")
                && (line.contains("recovery ended before") || line.contains("recovery target"))
            {
                return Err(Error::Invalid(format!(
                    "recovery failed: {}; the server log is {}",
                    line.trim(),
                    log.display()
                )));
            }
            if REACHED_LINES.iter().any(|r| line.contains(r)) {
                reached.push(line.trim().to_string());
            }
            if line.contains(done) {
                return Ok((reached, log));
            }
            shut_down |= line.contains("database system is shut down");
        }
        // A postmaster that died without logging (killed) leaves no shutdown line.
        let running = tokio::fs::try_exists(plan.pgdata.join("postmaster.pid"))
            .await
            .unwrap_or(false);
        if shut_down || !running {
            return Err(Error::Invalid(format!(
                "the server stopped before recovery reached the target; see {}",
                log.display()
            )));
        }
        if last_heard.elapsed() > RECOVERY_SILENCE_LIMIT {
            let _ = stop_server(&plan.pgdata, major, options.bin_dir.as_deref()).await;
            return Err(Error::Invalid(format!(
                "the recovering server logged nothing for {} minutes (each fetched WAL file logs a line), so it was stopped; see {}",
                RECOVERY_SILENCE_LIMIT.as_secs() / 60,
                log.display()
            )));
        }
    }
}

/// Log lines that say where recovery stopped, reported to the user.
const REACHED_LINES: &[&str] = &[
    "recovery stopping",
    "redo done at",
    "last completed transaction",
    "selected new timeline",
    "consistent recovery state reached",
];

/// How long a recovering server may log nothing before pgvault gives up on it: every
/// WAL file it fetches logs a line, so this silence means it hangs, however long the
/// whole recovery takes.
const RECOVERY_SILENCE_LIMIT: Duration = Duration::from_secs(15 * 60);

/// Reads the lines a server appends to its log, each once: the file is read from where
/// the last call stopped, not again from its start.
struct LogFollower {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl LogFollower {
    fn new(path: PathBuf) -> LogFollower {
        LogFollower {
            path,
            offset: 0,
            partial: String::new(),
        }
    }

    /// The complete lines written since the last call (none while the file is absent).
    async fn new_lines(&mut self) -> Vec<String> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let Ok(mut file) = tokio::fs::File::open(&self.path).await else {
            return Vec::new();
        };
        let mut bytes = Vec::new();
        if file
            .seek(std::io::SeekFrom::Start(self.offset))
            .await
            .is_err()
            || file.read_to_end(&mut bytes).await.is_err()
        {
            return Vec::new();
        }
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let Some(end) = self.partial.rfind('\n') else {
            return Vec::new();
        };
        let complete: String = self.partial.drain(..=end).collect();
        complete.lines().map(str::to_string).collect()
    }
}

/// Stop a server started by [`execute`] (immediate shutdown: drills throw it away).
pub async fn stop_server(pgdata: &Path, major: u32, bin_dir: Option<&Path>) -> Result<()> {
    let bin = crate::server::ServerBinaries::discover_exact(bin_dir, major).await?;
    let owner = if nix::unistd::geteuid().is_root() {
        Some("postgres")
    } else {
        None
    };
    let mut cmd = bin.command_as("pg_ctl", owner);
    cmd.arg("-D")
        .arg(pgdata)
        .args(["-m", "immediate", "-w", "stop"]);
    tokio::task::spawn_blocking(move || crate::server::run_tool("pg_ctl", cmd))
        .await
        .map_err(|e| Error::Internal(format!("pg_ctl worker failed: {e}")))?
        .map(|_| ())
}

/// Parse `--to-time`: RFC 3339 or `YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM]]` (UTC when no
/// offset is given).
pub fn parse_target_time(text: &str) -> Result<DateTime<Utc>> {
    let t = text.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%#z"] {
        if let Ok(dt) = DateTime::parse_from_str(t, format) {
            return Ok(dt.with_timezone(&Utc));
        }
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M:%S"] {
        if let Ok(naive) = chrono::NaiveDateTime::parse_from_str(t, format) {
            return Ok(naive.and_utc());
        }
    }
    Err(Error::Invalid(format!(
        "--to-time {t:?} is not a time such as \"2026-11-24 13:04:59+00\""
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn target_times_parse_with_and_without_offsets() {
        let want = Utc.with_ymd_and_hms(2026, 11, 24, 13, 4, 59).unwrap();
        assert_eq!(parse_target_time("2026-11-24 13:04:59+00").unwrap(), want);
        assert_eq!(
            parse_target_time("2026-11-24 14:04:59+01:00").unwrap(),
            want
        );
        assert_eq!(parse_target_time("2026-11-24T13:04:59Z").unwrap(), want);
        assert_eq!(parse_target_time("2026-11-24 13:04:59").unwrap(), want);
        assert!(parse_target_time("yesterday").is_err());
    }
}
