//! Policy files: what to back up, where to, and with which keys.
//!
//! A policy is TOML parsed with `deny_unknown_fields`, then validated into typed values
//! ([`Policy`]) before anything runs. Every mistake is reported as
//! `file:line:column: message`, so an operator can jump straight to it.
//! Secrets are referenced, never inlined: `${ENV_VAR}` in the source URL is expanded from
//! the environment at load time.

pub mod copies;
pub mod expectation;
mod raw;
pub mod retention;
mod sections;

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use raw::RawPolicy;
use sections::{InDir, Misplaced};

use crate::error::{Error, Result};
use crate::keys::Recipients;
use crate::storage::{Location, StorageSettings};

pub use copies::CopyConfig;

/// Default size of one multipart upload part: small enough to keep memory bounded. The
/// first 2000 parts (about 15.6 GiB) use it, then parts double in size every 2000 parts
/// (see [`crate::pipeline::part_size_for`]), allowing objects of about 484 GiB.
pub const DEFAULT_PART_SIZE: u64 = 8 * 1024 * 1024;
/// Default number of parts uploaded concurrently.
pub const DEFAULT_PARTS_IN_FLIGHT: usize = 4;
/// S3's smallest allowed part (all but the last).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

/// A validated policy: everything a backup or restore needs to know.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The file the policy was read from (for messages).
    pub path: PathBuf,
    /// The policy id; also the repository sub-prefix its backups live under.
    pub name: String,
    /// The database to back up.
    pub source: SourceConfig,
    /// Where backups are stored.
    pub repository: RepositoryConfig,
    /// Public keys backups are encrypted to.
    pub recipients: Recipients,
    /// zstd settings.
    pub compression: CompressionConfig,
    /// Logical backup options.
    pub backup: BackupOptions,
    /// How WAL reaches the repository (`[archive]`).
    pub archive: ArchiveConfig,
    /// Retention rules, when the policy has a `[retention]` section.
    pub retention: Option<RetentionConfig>,
    /// When the agent runs backups, when the policy has a `[schedule]` section.
    pub schedule: Option<ScheduleConfig>,
    /// Where the agent sends events, when the policy has a `[notify]` section.
    pub notify: Option<crate::notify::NotifyConfig>,
    /// Restore tests, when the policy has a `[restore_test]` section.
    pub restore_test: Option<RestoreTestConfig>,
    /// Other repositories the backups are copied to (`[[repository.copies]]`).
    pub copies: Vec<CopyConfig>,
}

/// Where a restore test restores to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrillTargetConfig {
    /// A throwaway cluster started for the drill and removed afterwards.
    Ephemeral,
    /// A scratch database on this server (URL of a maintenance database, `${ENV}`
    /// expanded); dropped afterwards unless kept.
    Staging(String),
}

/// What a restore test restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrillKind {
    /// A logical backup, into a database.
    Logical,
    /// A physical base backup plus archived WAL, to a random point in time.
    Pitr,
}

/// How far back `pick = "random"` looks when `within` is not set.
const RANDOM_PICK_WITHIN: chrono::Duration = chrono::Duration::days(30);

/// Which backup a restore test restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrillPick {
    /// The newest backup.
    Latest,
    /// A random backup whose data is younger than this.
    Random(chrono::Duration),
}

/// One of the policy's own checks of restored data.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlCheck {
    /// The name reports use.
    pub name: String,
    /// The query, run read-only in the restored database.
    pub sql: String,
    /// What its result must be.
    pub expect: crate::policy::expectation::Expectation,
}

/// The `[restore_test]` section: the drill the agent runs on schedule and
/// `pgvault restore-test` runs on demand.
#[derive(Debug, Clone)]
pub struct RestoreTestConfig {
    /// Logical or point-in-time.
    pub kind: DrillKind,
    /// When the agent runs the drill (none: only on demand).
    pub schedule: Option<crate::schedule::Schedule>,
    /// Where to restore.
    pub target: DrillTargetConfig,
    /// Which backup.
    pub pick: DrillPick,
    /// The RTO objective from the DR plan.
    pub rto_objective: Option<chrono::Duration>,
    /// The RPO objective from the DR plan.
    pub rpo_objective: Option<chrono::Duration>,
    /// How far back the RPO looks for gaps between backups (default 30 days).
    pub rpo_window: chrono::Duration,
    /// The age identity the agent decrypts with (the CLI's `--identity` overrides it).
    pub identity_file: Option<PathBuf>,
    /// Directory of the PostgreSQL server binaries for ephemeral clusters.
    pub bin_dir: Option<PathBuf>,
    /// Where ephemeral clusters and the spooled dump live (default: the temp directory).
    pub work_dir: Option<PathBuf>,
    /// Allow a staging URL that points at the policy's own source server.
    pub allow_source_server: bool,
    /// pg_restore parallel jobs.
    pub jobs: u32,
    /// Run amcheck on B-tree indexes when the extension is available.
    pub amcheck: bool,
    /// Longest a single SQL check may run.
    pub check_timeout: chrono::Duration,
    /// The policy's SQL checks.
    pub checks: Vec<SqlCheck>,
    /// Restore from this copy (`[[repository.copies]]` name) instead of the primary
    /// repository, to prove the copy restores; the report is stored in the primary.
    pub from_copy: Option<String>,
}

/// The drill a policy without a `[restore_test]` section gets on demand (and what each
/// setting the section leaves out falls back to): the latest logical backup restored
/// into an ephemeral cluster, amcheck on, no objectives.
impl Default for RestoreTestConfig {
    fn default() -> Self {
        RestoreTestConfig {
            kind: DrillKind::Logical,
            schedule: None,
            target: DrillTargetConfig::Ephemeral,
            pick: DrillPick::Latest,
            rto_objective: None,
            rpo_objective: None,
            rpo_window: chrono::Duration::days(30),
            identity_file: None,
            bin_dir: None,
            work_dir: None,
            allow_source_server: false,
            jobs: 2,
            amcheck: true,
            check_timeout: chrono::Duration::minutes(10),
            checks: Vec::new(),
            from_copy: None,
        }
    }
}

/// The `[schedule]` section: when the agent backs the policy up.
#[derive(Debug, Clone)]
pub struct ScheduleConfig {
    /// The (logical) backup schedule.
    pub backup: crate::schedule::Schedule,
    /// The physical base backup schedule, for point-in-time recovery.
    pub physical: Option<crate::schedule::Schedule>,
    /// The incremental base backup schedule, between the full ones (PostgreSQL 17+).
    pub physical_incremental: Option<crate::schedule::Schedule>,
    /// Upper bound of the random start delay of each run.
    pub jitter: chrono::Duration,
    /// Attempts after the first failure before a run is reported failed.
    pub retries: u32,
    /// Delay before the first retry; doubles on each further retry.
    pub retry_backoff: chrono::Duration,
}

impl ScheduleConfig {
    /// How late a scheduled run may finish past its slot, besides its own duration: the
    /// jitter plus every wait between retries (`retry_backoff` doubling `retries` times).
    pub fn grace(&self) -> chrono::Duration {
        let waits = (0..self.retries.min(16)).fold(chrono::Duration::zero(), |sum, attempt| {
            sum + self.retry_backoff * 2i32.saturating_pow(attempt)
        });
        self.jitter + waits
    }
}

/// The yardsticks a policy is watched against (alerts, metrics, the status page): how
/// often its backups and restore tests are due, and its objectives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cadence {
    /// Longest gap between two slots of `[schedule] backup` (over the next few).
    pub backup_interval: Option<chrono::Duration>,
    /// Longest gap between two slots of `[schedule] physical`.
    pub physical_interval: Option<chrono::Duration>,
    /// How late a run may finish past its slot ([`ScheduleConfig::grace`]).
    pub grace: chrono::Duration,
    /// Longest gap between two slots of `[restore_test] schedule`.
    pub restore_test_interval: Option<chrono::Duration>,
    /// `[restore_test] rpo_objective`.
    pub rpo_objective: Option<chrono::Duration>,
    /// `[restore_test] rto_objective`.
    pub rto_objective: Option<chrono::Duration>,
}

/// Slots sampled to find a schedule's longest gap (a week of daily slots, say).
const CADENCE_SAMPLES: usize = 8;

/// The `[retention]` section: keep rules, the stale guard and orphan clean-up.
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// The keep rules.
    pub rules: retention::RetentionRules,
    /// If the newest backup is older than this, retention deletes nothing.
    pub max_age: Option<chrono::Duration>,
    /// Orphans and pending uploads younger than this are left alone (a backup may be
    /// running); default 24h.
    pub orphan_min_age: chrono::Duration,
    /// Whether the agent applies retention after each backup (default). `false` when
    /// `pgvault prune` runs elsewhere, with credentials that may delete, so that the
    /// agent's need none (docs/SECURITY.md).
    pub prune_after_backup: bool,
}

/// The source database of a policy.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// libpq connection URL, `${ENV}` expanded; may contain a password (never logged).
    pub url: String,
    /// Directory with `pg_dump` and friends, when not discovered automatically.
    pub bin_dir: Option<PathBuf>,
}

/// The repository section of a policy.
#[derive(Debug, Clone)]
pub struct RepositoryConfig {
    /// Where the repository lives and how its storage is reached.
    pub storage: StorageSettings,
    /// Size of each multipart part in bytes.
    pub part_size: u64,
    /// Parts uploaded concurrently.
    pub parts_in_flight: usize,
}

/// zstd settings.
#[derive(Debug, Clone, Copy)]
pub struct CompressionConfig {
    /// zstd level, 1..=22.
    pub level: i32,
    /// zstd worker threads; 0 means one per CPU.
    pub threads: u32,
}

/// Options of logical backups.
#[derive(Debug, Clone, Copy, Default)]
pub struct BackupOptions {
    /// Keep role password hashes in the globals object (off by default).
    pub include_role_passwords: bool,
    /// How long a base backup may wait for the server to archive its end segment
    /// before it is abandoned (default 5 minutes): with archiving broken, the server
    /// would otherwise wait forever.
    pub archive_wait: std::time::Duration,
    /// What an incremental base backup does when it has no usable parent.
    pub incremental_fallback: IncrementalFallback,
}

/// The `[archive]` section: how `pgvault wal-push` hands WAL to the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveConfig {
    /// Synchronous (each segment stored before `archive_command` returns) or
    /// asynchronous (handed to a local spool, stored by a background pusher).
    pub mode: ArchiveMode,
    /// The spool of asynchronous mode (required there): segments wait in it, durably,
    /// until the pusher has stored them.
    pub spool_dir: Option<PathBuf>,
    /// Most WAL bytes waiting in the spool (asynchronous mode).
    pub queue_max: u64,
    /// What happens to a segment that does not fit in `queue_max`.
    pub queue_full: QueueFull,
    /// Segments the pusher stores at once.
    pub push_parallel: usize,
    /// The replication slot of streaming mode (`None`: `pgvault_<policy>`, see
    /// [`Policy::stream_slot`]).
    pub slot: Option<String>,
    /// How often streaming mode stores the growing segment: the RPO of a crash of the
    /// source, within the stream's lag.
    pub partial_interval: std::time::Duration,
    /// How far the stream may fall behind the source before `check` fails and alarms
    /// fire.
    pub stream_max_lag: std::time::Duration,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            mode: ArchiveMode::Sync,
            spool_dir: None,
            queue_max: DEFAULT_QUEUE_MAX,
            queue_full: QueueFull::Keep,
            push_parallel: DEFAULT_PUSH_PARALLEL,
            slot: None,
            partial_interval: DEFAULT_PARTIAL_INTERVAL,
            stream_max_lag: DEFAULT_STREAM_MAX_LAG,
        }
    }
}

/// Default of `[archive] partial_interval`.
pub const DEFAULT_PARTIAL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// Default of `[archive] stream_max_lag`.
pub const DEFAULT_STREAM_MAX_LAG: std::time::Duration = std::time::Duration::from_secs(60);

/// Default of `[archive] queue_max`: 4 GiB, 256 segments of 16 MiB.
pub const DEFAULT_QUEUE_MAX: u64 = 4 << 30;
/// Default of `[archive] push_parallel`.
pub const DEFAULT_PUSH_PARALLEL: usize = 8;

/// `[archive] mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveMode {
    /// `archive_command` returns once the segment is stored in the repository.
    Sync,
    /// `archive_command` returns once the segment is durably in the local spool; a
    /// background pusher stores it.
    Async,
    /// No `archive_command`: the agent streams WAL over a replication slot
    /// (`pg_receivewal`) and stores completed segments and the growing one.
    Stream,
}

/// `[archive] queue_full`: what a full spool does to the next segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueFull {
    /// Refuse it: PostgreSQL keeps it in pg_wal and retries, and alerts fire.
    Keep,
    /// Accept it without storing it, to save the primary's disk, and record the dropped
    /// range as a gap in the repository.
    Drop,
}

/// `[backup] incremental_fallback`: what `backup --kind physical --incremental` does when
/// no backup can be its parent (none yet, another timeline, WAL summaries missing…).
/// Either way the reason is logged and, for a fallback, recorded in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncrementalFallback {
    /// Take a full base backup instead (the default: a backup is always taken).
    #[default]
    Full,
    /// Fail the run, so that a schedule of small incrementals never turns into
    /// unexpected full-sized uploads.
    Refuse,
}

/// Default of `[backup] archive_wait`.
pub const DEFAULT_ARCHIVE_WAIT: std::time::Duration = std::time::Duration::from_secs(5 * 60);

impl Policy {
    /// The replication slot streaming mode uses: `[archive] slot`, or `pgvault_` and the
    /// policy name in the characters slot names allow (lower-case letters, digits, `_`;
    /// at most 63).
    pub fn stream_slot(&self) -> String {
        if let Some(slot) = &self.archive.slot {
            return slot.clone();
        }
        let name: String = self
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("pgvault_{name}").chars().take(63).collect()
    }

    /// The policy's [`Cadence`] as of `now`.
    pub fn cadence(&self, now: DateTime<Utc>) -> Cadence {
        let schedule = self.schedule.as_ref();
        let drill = self.restore_test.as_ref();
        Cadence {
            backup_interval: schedule.and_then(|s| s.backup.period(now, CADENCE_SAMPLES)),
            physical_interval: schedule
                .and_then(|s| s.physical.as_ref())
                .and_then(|p| p.period(now, CADENCE_SAMPLES)),
            grace: schedule.map_or_else(chrono::Duration::zero, ScheduleConfig::grace),
            restore_test_interval: drill
                .and_then(|d| d.schedule.as_ref())
                .and_then(|s| s.period(now, CADENCE_SAMPLES)),
            rpo_objective: drill.and_then(|d| d.rpo_objective),
            rto_objective: drill.and_then(|d| d.rto_objective),
        }
    }

    /// The copy named `name` (`[[repository.copies]]`), or an error that lists the
    /// policy's copies.
    pub fn copy(&self, name: &str) -> Result<&CopyConfig> {
        self.copies.iter().find(|c| c.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.copies.iter().map(|c| c.name.as_str()).collect();
            Error::Invalid(if names.is_empty() {
                format!(
                    "policy {} has no copy named {name:?}: it declares no [[repository.copies]]",
                    self.name
                )
            } else {
                format!(
                    "policy {} has no copy named {name:?}; its copies: {}",
                    self.name,
                    names.join(", ")
                )
            })
        })
    }

    /// The keep rules of `copy`: its own `[repository.copies.retention]`, else the
    /// policy's `[retention]` (`None`: nothing is pruned from the copy).
    pub fn retention_of_copy<'a>(&'a self, copy: &'a CopyConfig) -> Option<&'a RetentionConfig> {
        copy.retention.as_ref().or(self.retention.as_ref())
    }

    /// Read and validate a policy file.
    pub fn load(path: &Path) -> Result<Policy> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("cannot read policy file {}", path.display()), e))?;
        Policy::parse(path, &text)
    }

    /// The PostgreSQL servers the policy names, as URLs: its source, and its restore
    /// test's staging server when it has one. `check` looks on each for scratch databases
    /// that interrupted restores or drills left behind.
    pub fn servers(&self) -> Vec<&str> {
        let mut servers = vec![self.source.url.as_str()];
        if let Some(RestoreTestConfig {
            target: DrillTargetConfig::Staging(url),
            ..
        }) = &self.restore_test
        {
            servers.push(url);
        }
        servers
    }

    /// Parse and validate policy text; `path` is used for messages and relative paths.
    /// Each section is converted on its own (see `policy/sections.rs`); a mistake is reported at
    /// its line and column.
    pub fn parse(path: &Path, text: &str) -> Result<Policy> {
        let located = |m: Misplaced| -> Error {
            let (line, column) = line_column(text, m.span.map(|s| s.start).unwrap_or(0));
            Error::Policy {
                path: path.to_path_buf(),
                line,
                column,
                message: crate::error::safe_echo(&m.message),
            }
        };
        let raw: RawPolicy = toml::from_str(text)
            .map_err(|e| located(sections::at(e.span(), e.message().trim().to_string())))?;
        let dir = path.parent().unwrap_or(Path::new("."));

        let name = raw.name.get_ref().trim().to_string();
        let name_ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if !name_ok || name.starts_with('.') {
            return Err(located(sections::at(
                Some(raw.name.span()),
                format!("policy name {name:?} must be non-empty and use only letters, digits, '-', '_' and '.' (it becomes a repository prefix)"),
            )));
        }
        let source = SourceConfig::try_from(InDir {
            raw: raw.source,
            dir,
        })
        .map_err(located)?;
        let mut raw_repository = raw.repository;
        let raw_copies = copies::take_copies(&mut raw_repository).map_err(located)?;
        let repository = RepositoryConfig::try_from(InDir {
            raw: raw_repository,
            dir,
        })
        .map_err(located)?;
        let mut copies = copies::parse_copies(raw_copies, dir, &repository).map_err(located)?;
        if let Some(name) = raw.restore_test.as_ref().and_then(|r| r.from_copy.as_ref()) {
            if !copies.iter().any(|c| c.name == *name.get_ref()) {
                return Err(located(sections::at(
                    Some(name.span()),
                    format!(
                        "[restore_test] from_copy {:?} names no [[repository.copies]] of this policy",
                        name.get_ref()
                    ),
                )));
            }
        }
        let recipients = Recipients::try_from(InDir {
            raw: raw.encryption,
            dir,
        })
        .map_err(located)?;
        let compression = CompressionConfig::try_from(raw.compression).map_err(located)?;
        let backup = BackupOptions::try_from(raw.backup).map_err(located)?;
        let archive = ArchiveConfig::try_from(InDir {
            raw: raw.archive,
            dir,
        })
        .map_err(located)?;
        let mut retention = raw
            .retention
            .map(RetentionConfig::try_from)
            .transpose()
            .map_err(located)?;
        let schedule = raw
            .schedule
            .map(ScheduleConfig::try_from)
            .transpose()
            .map_err(located)?;
        let notify = raw
            .notify
            .map(crate::notify::NotifyConfig::try_from)
            .transpose()
            .map_err(located)?;
        let restore_test = raw
            .restore_test
            .map(|raw| RestoreTestConfig::try_from(InDir { raw, dir }))
            .transpose()
            .map_err(located)?;

        // A scheduled policy's stale guard defaults to twice its schedule's period: when
        // the newest backup is older than that, the schedule is broken and retention
        // must not age out the last good backups.
        if let (Some(r), Some(sch)) = (retention.as_mut(), schedule.as_ref()) {
            if r.max_age.is_none() {
                r.max_age = sch.backup.period(chrono::Utc::now(), 8).map(|p| p * 2);
            }
        }
        // A copy's own rules get the same stale guard: a copy that stopped being filled
        // must not age out its last good backups either.
        for r in copies.iter_mut().filter_map(|c| c.retention.as_mut()) {
            if let (None, Some(sch)) = (r.max_age, schedule.as_ref()) {
                r.max_age = sch.backup.period(chrono::Utc::now(), 8).map(|p| p * 2);
            }
        }

        Ok(Policy {
            restore_test,
            notify,
            schedule,
            retention,
            path: path.to_path_buf(),
            name,
            source,
            repository,
            recipients,
            compression,
            backup,
            archive,
            copies,
        })
    }
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map(|nl| before[nl + 1..].chars().count() + 1)
        .unwrap_or_else(|| before.chars().count() + 1);
    (line, column)
}

/// Expand `${NAME}` references from the environment; an unset variable is an error.
pub fn expand_env(value: &str) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unterminated ${…} reference".to_string())?;
        let name = &after[..end];
        let resolved = std::env::var(name)
            .map_err(|_| format!("environment variable {name} referenced here is not set"))?;
        out.push_str(&resolved);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Check a PostgreSQL URL; `what` names it in the message ("source url", "the URL").
fn validate_postgres_url(value: &str, what: &str) -> std::result::Result<(), String> {
    let parsed = url::Url::parse(value).map_err(|e| {
        format!("{what} is not a valid URL ({e}); expected postgres://user@host:5432/dbname")
    })?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(format!(
            "{what} must start with postgres:// or postgresql://, not {}://",
            parsed.scheme()
        ));
    }
    let db = parsed.path().trim_start_matches('/');
    if db.is_empty() {
        return Err(format!(
            "{what} must name the database to back up, e.g. postgres://backup@db:5432/app"
        ));
    }
    Ok(())
}

/// Parse a repository URL: `s3://bucket/prefix` or `file:///abs/path` (or a relative
/// `file://./dir`, resolved against the policy file's directory).
pub fn parse_repository_url(value: &str, base_dir: &Path) -> std::result::Result<Location, String> {
    if let Some(rest) = value.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !bucket_ok {
            return Err(format!(
                "repository url {value:?}: {bucket:?} is not a valid S3 bucket name (3-63 lowercase letters, digits, '-' or '.')"
            ));
        }
        return Ok(Location::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        });
    }
    if let Some(rest) = value.strip_prefix("file://") {
        if rest.is_empty() {
            return Err(
                "repository url file:// needs a directory, e.g. file:///var/lib/pgvault/repo"
                    .into(),
            );
        }
        let path = Path::new(rest);
        let root = if path.is_absolute() {
            path.to_path_buf()
        } else {
            base_dir.join(path)
        };
        return Ok(Location::Filesystem { root });
    }
    Err(format!(
        "repository url {value:?} must start with s3:// (a bucket) or file:// (a local directory)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";

    fn parse(text: &str) -> Result<Policy> {
        Policy::parse(Path::new("p.toml"), text)
    }

    fn minimal(extra_repo: &str) -> String {
        format!(
            "name = \"app\"\n[source]\nurl = \"postgres://u@h:5432/app\"\n[repository]\nurl = \"s3://bucket/pre/fix\"\n{extra_repo}[encryption]\nrecipients = [\"{KEY}\"]\n"
        )
    }

    #[test]
    fn parses_minimal_policy_with_defaults() {
        let p = parse(&minimal("")).unwrap();
        assert_eq!(p.name, "app");
        assert_eq!(
            p.repository.storage.location,
            Location::S3 {
                bucket: "bucket".into(),
                prefix: "pre/fix".into()
            }
        );
        assert_eq!(p.repository.part_size, DEFAULT_PART_SIZE);
        assert_eq!(p.compression.level, 3);
        assert_eq!(p.recipients.len(), 1);
    }

    #[test]
    fn archive_and_incremental_settings_parse_and_wrong_words_are_placed() {
        let text = format!(
            "{}[backup]\nincremental_fallback = \"refuse\"\n[archive]\nmode = \"async\"\nspool_dir = \"/var/spool/pgvault\"\nqueue_max = \"1GiB\"\nqueue_full = \"drop\"\npush_parallel = 4\n",
            minimal("")
        );
        let p = parse(&text).unwrap();
        assert_eq!(p.backup.incremental_fallback, IncrementalFallback::Refuse);
        assert_eq!(p.archive.mode, ArchiveMode::Async);
        assert_eq!(
            p.archive.spool_dir.as_deref(),
            Some(Path::new("/var/spool/pgvault"))
        );
        assert_eq!(p.archive.queue_max, 1 << 30);
        assert_eq!(p.archive.queue_full, QueueFull::Drop);
        assert_eq!(p.archive.push_parallel, 4);
        assert_eq!(
            parse(&minimal("")).unwrap().archive,
            ArchiveConfig::default()
        );

        let err = parse(&format!(
            "{}[archive]\nqueue_full = \"discard\"\n",
            minimal("")
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(
                "p.toml:9:14: [archive] queue_full must be \"keep\" or \"drop\", not \"discard\""
            ),
            "{err}"
        );
        let err = parse(&format!("{}[archive]\nmode = \"async\"\n", minimal("")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs spool_dir"), "{err}");
        let err = parse(&format!(
            "{}[schedule]\nbackup = \"0 2 * * *\"\nphysical_incremental = \"0 * * * *\"\n",
            minimal("")
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("needs [schedule] physical too"), "{err}");
    }

    #[test]
    fn cadence_reads_the_schedules_grace_and_objectives() {
        let p = parse(&format!(
            "{}[schedule]\nbackup = \"0 2 * * *\"\njitter = \"10m\"\nretries = 2\nretry_backoff = \"1m\"\n[restore_test]\nschedule = \"0 4 1 * *\"\nidentity_file = \"key.txt\"\nrpo_objective = \"24h\"\n",
            minimal("")
        ))
        .unwrap();
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-07T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let c = p.cadence(now);
        assert_eq!(c.backup_interval, Some(chrono::Duration::days(1)));
        // 10 minutes of jitter, then waits of 1 and 2 minutes before the two retries.
        assert_eq!(c.grace, chrono::Duration::minutes(13));
        assert_eq!(c.rpo_objective, Some(chrono::Duration::hours(24)));
        assert_eq!(c.restore_test_interval, Some(chrono::Duration::days(31)));
        assert_eq!(c.physical_interval, None);
        assert_eq!(
            parse(&minimal("")).unwrap().cadence(now),
            Cadence::default()
        );
    }

    #[test]
    fn object_lock_parses_and_is_refused_where_it_cannot_hold() {
        use crate::storage::LockMode;
        let p = parse(&minimal(
            "object_lock = { mode = \"compliance\", days = 30 }\n",
        ))
        .unwrap();
        let lock = p.repository.storage.object_lock.unwrap();
        assert_eq!((lock.mode, lock.days), (LockMode::Compliance, 30));
        assert!(lock.unlocked_prefixes.is_empty());
        assert!(parse(&minimal(""))
            .unwrap()
            .repository
            .storage
            .object_lock
            .is_none());
        for (repo, expected) in [
            (
                "object_lock = { mode = \"strict\", days = 30 }\n",
                "object_lock mode must be \"governance\" or \"compliance\"",
            ),
            (
                "object_lock = { mode = \"governance\", days = 0 }\n",
                "days must be between 1 and 36500",
            ),
            (
                "object_lock = { mode = \"governance\" }\n",
                "missing field `days`",
            ),
            (
                "object_lock = { mode = \"governance\", days = 1, years = 1 }\n",
                "unknown field `years`",
            ),
        ] {
            let err = parse(&minimal(repo)).unwrap_err().to_string();
            assert!(err.contains(expected), "{repo}: {err}");
        }
        let fs = minimal("object_lock = { mode = \"governance\", days = 7 }\n")
            .replace("s3://bucket/pre/fix", "file:///var/lib/pgvault");
        let err = parse(&fs).unwrap_err().to_string();
        assert!(err.starts_with("p.toml:6:"), "{err}");
        assert!(err.contains("object_lock needs an S3 repository"), "{err}");
    }

    #[test]
    fn the_agent_prunes_after_each_backup_unless_told_not_to() {
        let p = parse(&format!("{}[retention]\nkeep_last = 3\n", minimal(""))).unwrap();
        assert!(p.retention.unwrap().prune_after_backup);
        let p = parse(&format!(
            "{}[retention]\nkeep_last = 3\nprune_after_backup = false\n",
            minimal("")
        ))
        .unwrap();
        assert!(!p.retention.unwrap().prune_after_backup);
    }

    #[test]
    fn stream_settings_parse_with_defaults_and_bounds() {
        let p = parse(&format!(
            "{}[archive]\nmode = \"stream\"\nspool_dir = \"/var/spool/pgvault\"\n",
            minimal("")
        ))
        .unwrap();
        assert_eq!(p.archive.mode, ArchiveMode::Stream);
        assert_eq!(p.archive.partial_interval, DEFAULT_PARTIAL_INTERVAL);
        assert_eq!(p.archive.stream_max_lag, DEFAULT_STREAM_MAX_LAG);
        assert_eq!(
            p.stream_slot(),
            format!("pgvault_{}", p.name.replace('-', "_"))
        );
        let p = parse(&format!(
            "{}[archive]\nmode = \"stream\"\nspool_dir = \"s\"\nslot = \"app_db_1\"\npartial_interval = \"5s\"\nstream_max_lag = \"2m\"\n",
            minimal("")
        ))
        .unwrap();
        assert_eq!(p.stream_slot(), "app_db_1");
        assert_eq!(p.archive.partial_interval.as_secs(), 5);
        assert_eq!(p.archive.stream_max_lag.as_secs(), 120);
        for (extra, expected) in [
            ("", "needs spool_dir"),
            (
                "spool_dir = \"s\"\nslot = \"App-DB\"\n",
                "[archive] slot must be",
            ),
            (
                "spool_dir = \"s\"\npartial_interval = \"1h\"\n",
                "partial_interval must be between 1s and 10m",
            ),
        ] {
            let err = parse(&format!(
                "{}[archive]\nmode = \"stream\"\n{extra}",
                minimal("")
            ))
            .unwrap_err()
            .to_string();
            assert!(err.contains(expected), "{extra}: {err}");
        }
    }

    #[test]
    fn copies_parse_like_the_repository_with_their_own_keys() {
        let text = format!(
            "{}[[repository.copies]]\nname = \"dr\"\nurl = \"s3://dr-bucket/pre\"\nregion = \"eu-central-1\"\nendpoint = \"http://127.0.0.1:3900\"\npart_size = \"16MiB\"\ncopy_after_backup = true\nmax_lag = \"6h\"\n[repository.copies.retention]\nkeep_last = 2\n[[repository.copies]]\nname = \"offline\"\nurl = \"file://./vault\"\n[retention]\nkeep_daily = 7\n[restore_test]\nfrom_copy = \"dr\"\n",
            minimal("")
        );
        let p = parse(&text).unwrap();
        assert_eq!(p.copies.len(), 2);
        let dr = p.copy("dr").unwrap();
        assert_eq!(
            dr.repository.storage.location,
            Location::S3 {
                bucket: "dr-bucket".into(),
                prefix: "pre".into()
            }
        );
        assert_eq!(dr.repository.part_size, 16 << 20);
        assert!(dr.copy_after_backup);
        assert_eq!(dr.max_lag, chrono::Duration::hours(6));
        assert_eq!(p.retention_of_copy(dr).unwrap().rules.keep_last, Some(2));
        let offline = p.copy("offline").unwrap();
        assert_eq!(
            offline.repository.storage.location,
            Location::Filesystem {
                root: Path::new("./vault").to_path_buf()
            }
        );
        assert!(!offline.copy_after_backup);
        assert_eq!(offline.max_lag, copies::DEFAULT_COPY_MAX_LAG);
        // Without rules of its own, a copy follows the policy's.
        assert_eq!(
            p.retention_of_copy(offline).unwrap().rules.keep_daily,
            Some(7)
        );
        assert_eq!(p.restore_test.unwrap().from_copy.as_deref(), Some("dr"));
        let primary_only = parse(&minimal("")).unwrap();
        let err = primary_only.copy("nope").unwrap_err().to_string();
        assert!(err.contains("declares no [[repository.copies]]"), "{err}");
    }

    #[test]
    fn copy_mistakes_are_placed() {
        let copy = |body: &str| {
            parse(&format!("{}[[repository.copies]]\n{body}", minimal("")))
                .unwrap_err()
                .to_string()
        };
        for (body, expected) in [
            ("url = \"s3://other\"\n", "needs a name"),
            ("name = \"a b\"\nurl = \"s3://other\"\n", "must be 1 to 63 letters"),
            ("name = \"dr\"\nurl = \"s3://bucket/pre/fix\"\n", "is the primary repository itself"),
            ("name = \"dr\"\nurl = \"ftp://x\"\n", "must start with s3://"),
            ("name = \"dr\"\nurl = \"s3://other\"\ncolour = 1\n", "unknown field `colour`"),
            ("name = \"dr\"\nurl = \"s3://other\"\nmax_lag = \"10s\"\n", "max_lag must be at least 1m"),
            (
                "name = \"dr\"\nurl = \"s3://other\"\n[[repository.copies]]\nname = \"dr\"\nurl = \"s3://third\"\n",
                "two copies are named \"dr\"",
            ),
            (
                "name = \"dr\"\nurl = \"s3://other\"\n[[repository.copies]]\nname = \"dr2\"\nurl = \"s3://other\"\n",
                "are the same repository",
            ),
            (
                "name = \"dr\"\nurl = \"s3://other\"\n[repository.copies.retention]\nmax_age = \"2d\"\n",
                "[repository.copies.retention] of copy \"dr\": [retention] needs at least one keep rule",
            ),
        ] {
            let err = copy(body);
            assert!(err.contains(expected), "{body}: {err}");
            assert!(err.starts_with("p.toml:"), "{body}: {err}");
        }
        // The same bucket on another endpoint is another repository.
        assert!(parse(&format!(
            "{}[[repository.copies]]\nname = \"dr\"\nurl = \"s3://bucket/pre/fix\"\nendpoint = \"http://10.0.0.1:3900\"\n",
            minimal("")
        ))
        .is_ok());
        let err = parse(&minimal("copy_after_backup = true\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("p.toml:6:21: copy_after_backup is a key of [[repository.copies]]"),
            "{err}"
        );
        let err = parse(&format!(
            "{}[restore_test]\nfrom_copy = \"dr\"\n",
            minimal("")
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("from_copy \"dr\" names no [[repository.copies]]"),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_is_reported_with_line_and_column() {
        let err = parse(&minimal("colour = \"blue\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("p.toml:6:1: unknown field `colour`"),
            "{err}"
        );
    }

    #[test]
    fn bad_repository_url_points_at_the_value() {
        let text = minimal("").replace("s3://bucket/pre/fix", "ftp://x");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("p.toml:5:7:"), "{err}");
        assert!(err.contains("must start with s3://"), "{err}");
    }

    #[test]
    fn missing_recipients_is_an_error() {
        let text = minimal("").replace(&format!("recipients = [\"{KEY}\"]\n"), "");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("needs at least one age recipient"), "{err}");
        assert!(err.starts_with("p.toml:6:"), "{err}");
    }

    #[test]
    fn invalid_recipient_is_named() {
        let text = minimal("").replace(KEY, "age1notakey");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("p.toml:7:15:"), "{err}");
        assert!(err.contains("age1notakey"), "{err}");
    }

    #[test]
    fn env_references_expand_and_unset_ones_fail() {
        std::env::set_var("PGVAULT_POLICY_TEST_PW", "s3cret");
        assert_eq!(
            expand_env("postgres://u:${PGVAULT_POLICY_TEST_PW}@h/db").unwrap(),
            "postgres://u:s3cret@h/db"
        );
        assert!(expand_env("${PGVAULT_POLICY_TEST_UNSET_VAR}").is_err());
    }

    #[test]
    fn schedule_errors_name_the_field() {
        let text = format!("{}[schedule]\nbackup = \"0 2 * *\"\n", minimal(""));
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("p.toml:9:10: [schedule] cron expression"),
            "{err}"
        );
        let text = format!(
            "{}[schedule]\nbackup = \"0 2 * * *\"\ntimezone = \"Mars\"\n",
            minimal("")
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("p.toml:10:12: [schedule] unknown time zone"),
            "{err}"
        );
        // The same rule for a restore test's schedule, and for a time zone that looks
        // like an expression mistake: the span follows the kind of error, not its words.
        let text = format!(
            "{}[restore_test]\nschedule = \"0 2 * * *\"\ntimezone = \"time zone\"\nidentity_file = \"k\"\n",
            minimal("")
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("p.toml:10:12: [restore_test] unknown time zone"),
            "{err}"
        );
        let text = format!(
            "{}[schedule]\nbackup = \"0 2 * * *\"\njitter = \"5m\"\n",
            minimal("")
        );
        let p = parse(&text).unwrap();
        assert_eq!(p.schedule.unwrap().jitter, chrono::Duration::minutes(5));
    }

    #[test]
    fn restore_test_section_parses_and_errors_point_at_values() {
        let section = "[restore_test]\nschedule = \"0 4 1 * *\"\nidentity_file = \"key.txt\"\npick = \"random\"\nwithin = \"30d\"\nrto_objective = \"1h\"\nrpo_objective = \"24h\"\n[[restore_test.checks]]\nname = \"orders\"\nsql = \"select count(*) from orders\"\nexpect = \"> 0\"\n";
        let p = parse(&format!("{}{section}", minimal(""))).unwrap();
        let rt = p.restore_test.unwrap();
        assert_eq!(rt.target, DrillTargetConfig::Ephemeral);
        assert_eq!(rt.pick, DrillPick::Random(chrono::Duration::days(30)));
        assert_eq!(rt.rto_objective, Some(chrono::Duration::hours(1)));
        assert_eq!(rt.checks.len(), 1);
        assert_eq!(rt.checks[0].expect.to_string(), "> 0");

        let bad = format!("{}{}", minimal(""), section.replace("> 0", "lots"));
        let err = parse(&bad).unwrap_err().to_string();
        assert!(err.starts_with("p.toml:18:10: expect \"lots\""), "{err}");

        let no_key = format!(
            "{}{}",
            minimal(""),
            section.replace("identity_file = \"key.txt\"\n", "")
        );
        let err = parse(&no_key).unwrap_err().to_string();
        assert!(
            err.starts_with("p.toml:9:12:") && err.contains("identity_file"),
            "{err}"
        );

        let staging = format!("{}[restore_test]\ntarget = \"mysql://x/y\"\n", minimal(""));
        let err = parse(&staging).unwrap_err().to_string();
        assert!(
            err.starts_with("p.toml:9:10: [restore_test] target"),
            "{err}"
        );
    }

    #[test]
    fn echoed_values_are_shortened_and_secrets_hidden() {
        let long = "k".repeat(10_000);
        let err = parse(&minimal(&format!("{long} = 1\n")))
            .unwrap_err()
            .to_string();
        assert!(err.len() < 1000, "{} bytes: {}", err.len(), &err[..300]);
        assert!(err.contains("k…(10003 characters)"), "{err}");
        let secret = "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ";
        let err = parse(&minimal("").replace(KEY, secret))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("QQQQQQQQ"), "{err}");
        assert!(err.contains("secret key"), "{err}");
    }

    #[test]
    fn request_settings_have_defaults_and_bounds() {
        let p = parse(&minimal("stall_timeout = \"5s\"\nmax_attempts = 3\n")).unwrap();
        assert_eq!(
            p.repository.storage.requests.stall_timeout,
            std::time::Duration::from_secs(5)
        );
        assert_eq!(p.repository.storage.requests.max_attempts, 3);
        assert_eq!(
            p.repository.storage.requests.connect_timeout,
            crate::storage::RequestSettings::default().connect_timeout
        );
        let err = parse(&minimal("max_attempts = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_attempts must be between 1"), "{err}");
        let err = parse(&minimal("connect_timeout = \"0s\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 1s"), "{err}");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(crate::units::parse_byte_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(crate::units::parse_byte_size("1g").unwrap(), 1 << 30);
        assert!(crate::units::parse_byte_size("8 parsecs").is_err());
    }

    #[test]
    fn huge_spans_are_reported_with_their_place_not_a_panic() {
        for section in [
            "[retention]\nkeep_within = \"9999999999999w\"\n",
            "[retention]\nkeep_last = 3\norphan_min_age = \"100000000d\"\n",
            "[restore_test]\npick = \"random\"\nwithin = \"100000000d\"\n",
        ] {
            let text = format!("{}{section}", minimal(""));
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains("longer than any duration"), "{section}: {err}");
            assert!(err.contains("p.toml:"), "{section}: {err}");
        }
    }

    #[test]
    fn small_part_size_is_refused() {
        let err = parse(&minimal("part_size = \"1MiB\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 5MiB"), "{err}");
    }
}
