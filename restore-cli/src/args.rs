//! The command line, as typed values: every closed set of values is a `ValueEnum`, and
//! a point-in-time restore's arguments ([`PitrArgs`]) are kept apart from a logical
//! restore's ([`LogicalRestoreArgs`]). `main` dispatches each command into core.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};
use pgvault_core::physical::pitr;
use pgvault_core::repository::BackupKind;

/// The `pgvault` command line.
#[derive(Parser)]
#[command(
    name = "pgvault",
    version,
    long_version = crate::version::long_version(),
    about = "Encrypted, verified PostgreSQL backups and restores"
)]
pub(crate) struct Cli {
    /// More detail in logs (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    #[command(subcommand)]
    pub(crate) command: Command,
}

// Parsed once per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub(crate) enum Command {
    /// Take a logical backup of the policy's database.
    Backup {
        /// Policy file.
        #[arg(long)]
        policy: PathBuf,
        /// `logical` (pg_dump of the database) or `physical` (pg_basebackup of the
        /// cluster, for point-in-time recovery with archived WAL).
        #[arg(long, value_enum, default_value_t = BackupKindArg::Logical)]
        kind: BackupKindArg,
        /// With `--kind physical`: copy only what changed since the newest base backup
        /// (PostgreSQL 17 and newer, `summarize_wal = on`). Without a usable parent it
        /// takes a full backup or refuses, as `[backup] incremental_fallback` says.
        #[arg(long)]
        incremental: bool,
        /// Print the manifest and peak memory as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// archive_command: store one WAL file (`%p`) in the policy's archive. Exits 0 only
    /// once it is durably stored; the same file again is success, different content
    /// under the same name is refused.
    WalPush {
        /// Policy file.
        #[arg(long)]
        policy: PathBuf,
        /// The WAL file (`%p`).
        path: PathBuf,
    },
    /// The background pusher of `[archive] mode = "async"`: stores what the spool holds
    /// and exits once it stays empty. `wal-push` starts it; there is no need to run it
    /// by hand.
    #[command(hide = true)]
    WalPusher {
        /// Policy file.
        #[arg(long)]
        policy: PathBuf,
    },
    /// The long-lived prefetcher of recovery: keeps the WAL segments after the last one
    /// `wal-fetch` was asked for downloaded in DIR. `wal-fetch` starts it.
    #[command(hide = true)]
    WalPrefetcher {
        /// Policy file.
        #[arg(long)]
        policy: PathBuf,
        /// age identity file able to decrypt the archive.
        #[arg(long)]
        identity: PathBuf,
        /// Segments to keep ready ahead of recovery.
        #[arg(long, default_value_t = 8)]
        window: usize,
        /// Read this copy (`[[repository.copies]]` name) instead of the primary.
        #[arg(long, value_name = "NAME")]
        from_copy: Option<String>,
        /// The prefetch directory (`pg_wal/.pgvault-prefetch`).
        dir: PathBuf,
    },
    /// restore_command: fetch one WAL file (`%f`) to `%p`, verified, atomically. Exits 1
    /// when the archive does not have it, so recovery ends there; 126 when it could not
    /// be read (storage down, wrong key, damaged), so recovery stops with an error
    /// instead of ending early.
    WalFetch {
        /// Policy file.
        #[arg(long)]
        policy: PathBuf,
        /// age identity file able to decrypt the archive.
        #[arg(long)]
        identity: PathBuf,
        /// Segments a long-lived prefetcher keeps downloaded ahead of recovery (0: none).
        #[arg(long, default_value_t = 8)]
        prefetch: usize,
        /// Fetch from this copy (`[[repository.copies]]` name) instead of the primary.
        #[arg(long, value_name = "NAME")]
        from_copy: Option<String>,
        /// The WAL file name (`%f`).
        name: String,
        /// Where PostgreSQL wants it (`%p`).
        dest: PathBuf,
    },
    /// Validate the policy, probe its database and repository, and report WAL continuity
    /// from every physical base backup and the archiver's lag (the RPO of PITR now), and
    /// how far each copy (`[[repository.copies]]`) lags. Exit 2 when a gap is found,
    /// archiving is failing, or a copy is unreadable or further behind than its max_lag.
    Check {
        /// Policy file.
        #[arg(long)]
        policy: PathBuf,
    },
    /// Render the disaster-recovery plan of one or more policies: objectives against the
    /// latest restore tests' measurements, RTO per phase, last verified, overdue drills,
    /// and the procedure per scenario.
    DrPlan {
        /// Policy file (repeatable: one data set each).
        #[arg(long, required = true)]
        policy: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = PlanFormat::Md)]
        format: PlanFormat,
        /// Write the plan to this file instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// WAL archiving settings of the source server.
    Archive {
        #[command(subcommand)]
        action: ArchiveAction,
    },
    /// List backups, newest first.
    List {
        /// Policy file.
        #[arg(long)]
        policy: PathBuf,
        /// Print JSON instead of a table (docs/CLI-JSON.md).
        #[arg(long)]
        json: bool,
        /// Only backups of this kind (a damaged backup, whose kind cannot be read, is
        /// always listed).
        #[arg(long, value_enum)]
        kind: Option<BackupKindArg>,
        /// Only backups started at or after this time, e.g. "2026-11-24 13:04:59+00"
        /// (UTC when no offset is given).
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        since: Option<DateTime<Utc>>,
        /// Only backups started at or before this time.
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        until: Option<DateTime<Utc>>,
        /// List this copy (`[[repository.copies]]` name) instead of the primary.
        #[arg(long, value_name = "NAME")]
        from_copy: Option<String>,
    },
    /// Check a backup's stored bytes (and, with an identity, its contents).
    Verify {
        /// Policy file.
        #[arg(long)]
        policy: PathBuf,
        /// Backup id (or a unique prefix), or "latest".
        #[arg(default_value = "latest")]
        backup: String,
        /// age identity file: also decrypt, decompress and read the dump's table of contents.
        #[arg(long)]
        identity: Option<PathBuf>,
        /// Verify the backup in this copy (`[[repository.copies]]` name) instead of the
        /// primary.
        #[arg(long, value_name = "NAME")]
        from_copy: Option<String>,
        /// Print the checks and every object's lock as JSON on stdout (docs/CLI-JSON.md).
        #[arg(long)]
        json: bool,
    },
    /// Apply the policy's [retention]: delete backups no rule keeps, clean up leftovers.
    Prune {
        /// Policy file.
        #[arg(long)]
        policy: PathBuf,
        /// Print each backup with KEEP/DELETE and the rules that keep it; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Prune this copy (`[[repository.copies]]` name) by its own rules
        /// (`[repository.copies.retention]`, else `[retention]`) instead of the primary.
        #[arg(long, value_name = "NAME")]
        copy: Option<String>,
    },
    /// Copy backups and WAL to the policy's copies (`[[repository.copies]]`), verified at
    /// both ends: what restores and point-in-time restores need (WAL archive, gap
    /// records, stream chunks, restore-test reports), each backup's manifest last.
    /// Copying again copies only what is missing. Exit 2 when something could not be
    /// copied (a damaged source object, a conflicting file in the copy).
    Copy {
        /// Policy file.
        #[arg(long)]
        policy: PathBuf,
        /// Copy this backup (id, unique prefix or "latest") and the backups it builds on.
        #[arg(
            required_unless_present = "all_missing",
            conflicts_with = "all_missing"
        )]
        backup: Option<String>,
        /// Copy every backup the copy's retention keeps that the copy lacks.
        #[arg(long)]
        all_missing: bool,
        /// Only this copy (default: every copy of the policy).
        #[arg(long, value_name = "NAME")]
        to: Option<String>,
        /// Also read back every object already in the copy, and copy again those whose
        /// digest does not match (without it, objects of complete backups are checked by
        /// size).
        #[arg(long)]
        verify: bool,
        /// Print what was copied as JSON (docs/CLI-JSON.md).
        #[arg(long)]
        json: bool,
    },
    /// Prepare the repository's storage.
    Storage {
        #[command(subcommand)]
        action: StorageAction,
    },
    /// Change the age recipients of every backup and WAL file without taking new
    /// backups, and show the audit trail of such changes.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Generate an age key pair: the identity (private key) goes to FILE, the recipient
    /// (public key, for the policy) is printed.
    Keygen {
        /// Where to write the identity; refuses to overwrite an existing file.
        #[arg(long)]
        output: PathBuf,
    },
    /// Print a shell completion script, e.g. `pgvault completions bash >
    /// /etc/bash_completion.d/pgvault`.
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages: pgvault.1 and one per subcommand (pgvault-backup.1, …).
    Man {
        /// Directory to write them into (created when missing).
        #[arg(long)]
        output: PathBuf,
    },
    /// Restore a backup somewhere harmless, check it, and measure RTO and RPO against the
    /// policy's [restore_test] objectives. Writes a report; exit 0 on PASS, 2 on FAIL.
    RestoreTest {
        /// Policy file.
        #[arg(long)]
        policy: PathBuf,
        /// age identity file (default: [restore_test] identity_file).
        #[arg(long)]
        identity: Option<PathBuf>,
        /// Test this backup (id or unique prefix) instead of the configured pick.
        #[arg(long)]
        backup: Option<String>,
        /// Also write the report's JSON, Markdown and HTML to this directory.
        #[arg(long)]
        report_dir: Option<PathBuf>,
        /// Keep the restored database on the staging server.
        #[arg(long)]
        keep: bool,
        /// Print the report JSON instead of a summary.
        #[arg(long)]
        json: bool,
        /// Restore from this copy (`[[repository.copies]]` name), proving it restores;
        /// the report is stored in the primary (default: [restore_test] from_copy).
        #[arg(long, value_name = "NAME")]
        from_copy: Option<String>,
    },
    /// Restore-test reports: list, show, verify their hash chain.
    Reports {
        #[command(subcommand)]
        action: ReportsAction,
    },
    /// Restore a backup into a database, verified, without touching the target on failure.
    Restore {
        /// Policy file.
        #[arg(long)]
        policy: PathBuf,
        /// Backup id (or a unique prefix), or "latest".
        #[arg(default_value = "latest")]
        backup: String,
        /// Target database URL, e.g. postgres://postgres@127.0.0.1:5432/app_restored
        /// (logical restore).
        #[arg(long, conflicts_with = "pgdata", required_unless_present = "pgdata")]
        target: Option<String>,
        #[command(flatten)]
        pitr: PitrArgs,
        /// age identity file able to decrypt the backup.
        #[arg(long)]
        identity: PathBuf,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Replace a target database that has user tables.
        #[arg(long)]
        force: bool,
        /// Restore from this copy (`[[repository.copies]]` name) instead of the primary;
        /// a point-in-time restore then fetches WAL from the copy too.
        #[arg(long, value_name = "NAME")]
        from_copy: Option<String>,
        #[command(flatten)]
        logical: LogicalRestoreArgs,
    },
}

#[derive(Subcommand)]
pub(crate) enum ArchiveAction {
    /// Print (or with --apply, set via ALTER SYSTEM) wal_level, archive_mode,
    /// archive_command and archive_timeout for archiving into the policy.
    Setup {
        /// Policy file.
        #[arg(long)]
        policy: PathBuf,
        /// Apply the settings to the source server (needs a superuser) and reload.
        #[arg(long)]
        apply: bool,
        /// archive_timeout in seconds: the longest a quiet server waits to archive (the RPO bound).
        #[arg(long, default_value_t = 60)]
        timeout: u32,
    },
}

#[derive(Subcommand)]
pub(crate) enum KeysAction {
    /// Rewrap the age header of every object in the repository to the policy's
    /// recipients plus --add minus --remove. Payloads stay as stored (on S3 they are
    /// copied inside the store); an interrupted rotation resumes when run again.
    Rotate {
        /// Policy file.
        #[arg(long)]
        policy: PathBuf,
        /// An identity file that opens the current headers.
        #[arg(long)]
        identity: PathBuf,
        /// A public key (age1…) to encrypt to from now on; repeatable.
        #[arg(long, value_name = "AGE1…")]
        add: Vec<String>,
        /// A public key (age1…) or its fingerprint (sha256:…) to stop encrypting to;
        /// repeatable.
        #[arg(long, value_name = "AGE1…|FINGERPRINT")]
        remove: Vec<String>,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the key rotations recorded in the repository: when, by which key, what was
    /// added and removed.
    History {
        /// Policy file.
        #[arg(long)]
        policy: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum ReportsAction {
    /// List the policy's restore-test reports, oldest first.
    List {
        /// Policy file.
        #[arg(long)]
        policy: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Read the reports copied to this copy (`[[repository.copies]]` name).
        #[arg(long, value_name = "NAME")]
        from_copy: Option<String>,
    },
    /// Print one report (Markdown by default).
    Show {
        /// Policy file.
        #[arg(long)]
        policy: PathBuf,
        /// Report id (or a unique prefix), or "latest".
        #[arg(default_value = "latest")]
        id: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ReportFormat::Md)]
        format: ReportFormat,
        /// Read the reports copied to this copy (`[[repository.copies]]` name).
        #[arg(long, value_name = "NAME")]
        from_copy: Option<String>,
    },
    /// Check the reports' hash chain: no report altered, deleted or reordered.
    Verify {
        /// Policy file.
        #[arg(long)]
        policy: PathBuf,
        /// Check the reports copied to this copy (`[[repository.copies]]` name).
        #[arg(long, value_name = "NAME")]
        from_copy: Option<String>,
    },
}

#[derive(Subcommand)]
pub(crate) enum StorageAction {
    /// Apply lifecycle rules to the bucket (abort stale multipart uploads; optional
    /// transition to a colder storage class). Idempotent; other rules are kept. With
    /// [repository] object_lock, first check that the bucket has Object Lock and
    /// versioning enabled (fails, naming what is missing).
    Init {
        /// Policy file.
        #[arg(long)]
        policy: PathBuf,
        /// Prepare this copy's storage (`[[repository.copies]]` name) instead of the
        /// primary's.
        #[arg(long, value_name = "NAME")]
        copy: Option<String>,
    },
}

/// The arguments of a point-in-time restore (`restore --pgdata`), apart from the
/// logical restore's: where the data directory goes, the recovery target and what the
/// restored server does. Each conflicts with `--target` (rather than requiring
/// `--pgdata`, which clap does not enforce once `--target` is given), so a logical
/// restore never silently ignores a recovery target.
#[derive(Args)]
pub(crate) struct PitrArgs {
    /// Data directory for a point-in-time restore from a physical base backup and
    /// archived WAL (with one of --to-time, --to-lsn, --to-xid, --to-name, --to-latest).
    #[arg(long, required_unless_present = "target")]
    pub(crate) pgdata: Option<PathBuf>,
    /// Recover to this time, e.g. "2026-11-24 13:04:59+00".
    #[arg(long, conflicts_with = "target", group = "point")]
    pub(crate) to_time: Option<String>,
    /// Recover to this LSN, e.g. 0/3000028.
    #[arg(long, conflicts_with = "target", group = "point")]
    pub(crate) to_lsn: Option<String>,
    /// Recover to just after this transaction id.
    #[arg(long, conflicts_with = "target", group = "point")]
    pub(crate) to_xid: Option<String>,
    /// Recover to this named restore point.
    #[arg(long, conflicts_with = "target", group = "point")]
    pub(crate) to_name: Option<String>,
    /// Recover to the end of the archived WAL.
    #[arg(long, conflicts_with = "target", group = "point")]
    pub(crate) to_latest: bool,
    /// Timeline to recover along: latest (PostgreSQL's default: follows promotions,
    /// including those of restored copies that archive into the policy), current
    /// (the base backup's), or a number.
    #[arg(long, default_value = "latest", conflicts_with = "target")]
    pub(crate) target_timeline: String,
    /// What the server does at the target.
    #[arg(long, value_enum, default_value_t = TargetAction::Promote, conflicts_with = "target")]
    pub(crate) target_action: TargetAction,
    /// Start the server and wait until recovery reaches the target.
    #[arg(long, conflicts_with = "target")]
    pub(crate) start: bool,
    /// Port to start the restored server on (with --start).
    #[arg(long, requires = "start")]
    pub(crate) port: Option<u16>,
    /// WAL segments a long-lived prefetcher keeps downloaded ahead of recovery (0: none).
    #[arg(long, default_value_t = 8, conflicts_with = "target")]
    pub(crate) prefetch: usize,
    /// Whether the restored server archives WAL.
    #[arg(long, value_enum, default_value_t = ArchiveMode::Preserve, conflicts_with = "target")]
    pub(crate) archive_mode: ArchiveMode,
}

/// The arguments only a logical restore (`restore --target`) takes.
#[derive(Args)]
pub(crate) struct LogicalRestoreArgs {
    /// Restore only this table (schema.name, or name in public), with its indexes,
    /// constraints, triggers, owned sequences and grants, into the target as it is.
    /// Repeatable.
    #[arg(long = "table", value_name = "SCHEMA.NAME", conflicts_with = "pgdata")]
    pub(crate) tables: Vec<String>,
    /// Restore only the tables of this schema. Repeatable.
    #[arg(long = "schema", value_name = "NAME", conflicts_with = "pgdata")]
    pub(crate) schemas: Vec<String>,
    /// Leave this table out (with --table/--schema, or alone: every other table).
    /// Repeatable.
    #[arg(
        long = "exclude-table",
        value_name = "SCHEMA.NAME",
        conflicts_with = "pgdata"
    )]
    pub(crate) exclude_tables: Vec<String>,
    /// pg_restore parallel jobs; above 1 the decrypted dump is spooled to a temp file.
    #[arg(long, default_value_t = 1)]
    pub(crate) jobs: u32,
    /// Directory for the spool file used with --jobs > 1.
    #[arg(long)]
    pub(crate) spool_dir: Option<PathBuf>,
}

/// `backup --kind`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub(crate) enum BackupKindArg {
    /// pg_dump of the policy's database.
    Logical,
    /// pg_basebackup of the cluster, for point-in-time recovery with archived WAL.
    Physical,
}

impl From<BackupKindArg> for BackupKind {
    fn from(kind: BackupKindArg) -> Self {
        match kind {
            BackupKindArg::Logical => BackupKind::Logical,
            BackupKindArg::Physical => BackupKind::Physical,
        }
    }
}

/// `list --since`/`--until`: a time as `restore --to-time` takes it.
fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    pitr::parse_target_time(text).map_err(|_| {
        "not a time such as \"2026-11-24 13:04:59+00\" or 2026-11-24T13:04:59Z (UTC when no offset is given)".to_string()
    })
}

/// `restore --target-action`: what the server does when recovery reaches the target.
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub(crate) enum TargetAction {
    /// End recovery and accept writes (a new timeline begins).
    Promote,
    /// Stay in recovery, paused, for inspection.
    Pause,
    /// Stop the server.
    Shutdown,
}

impl From<TargetAction> for pitr::RecoveryAction {
    fn from(action: TargetAction) -> Self {
        match action {
            TargetAction::Promote => pitr::RecoveryAction::Promote,
            TargetAction::Pause => pitr::RecoveryAction::Pause,
            TargetAction::Shutdown => pitr::RecoveryAction::Shutdown,
        }
    }
}

/// `restore --archive-mode`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub(crate) enum ArchiveMode {
    /// The restored server keeps the backup's archive settings: after promotion it
    /// archives into the policy on a new timeline, as a new primary should.
    Preserve,
    /// No archiving, for inspection copies.
    Off,
}

/// `dr-plan --format`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub(crate) enum PlanFormat {
    /// Markdown, for a wiki or a repository.
    Md,
    /// One self-contained HTML page, to print or file.
    Html,
}

impl From<PlanFormat> for pgvault_core::dr_plan::Format {
    fn from(format: PlanFormat) -> Self {
        match format {
            PlanFormat::Md => pgvault_core::dr_plan::Format::Markdown,
            PlanFormat::Html => pgvault_core::dr_plan::Format::Html,
        }
    }
}

/// `reports show --format`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub(crate) enum ReportFormat {
    /// The Markdown render.
    Md,
    /// The report's JSON, as stored (with its digests).
    Json,
    /// The HTML render.
    Html,
}

impl ReportFormat {
    /// The extension of the stored file.
    pub(crate) fn extension(self) -> &'static str {
        match self {
            ReportFormat::Md => "md",
            ReportFormat::Json => "json",
            ReportFormat::Html => "html",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn closed_sets_parse_into_their_types() {
        let cli = Cli::try_parse_from([
            "pgvault",
            "restore",
            "--policy",
            "p.toml",
            "--identity",
            "k",
            "--pgdata",
            "d",
            "--to-latest",
            "--target-action",
            "pause",
            "--archive-mode",
            "off",
        ])
        .unwrap();
        let Command::Restore { pitr, target, .. } = cli.command else {
            panic!("not a restore");
        };
        assert_eq!(target, None);
        assert_eq!(pitr.target_action, TargetAction::Pause);
        assert_eq!(pitr.archive_mode, ArchiveMode::Off);
        assert!(matches!(
            pitr::RecoveryAction::from(pitr.target_action),
            pitr::RecoveryAction::Pause
        ));
        assert!(Cli::try_parse_from([
            "pgvault",
            "restore",
            "--policy",
            "p.toml",
            "--identity",
            "k",
            "--pgdata",
            "d",
            "--to-latest",
            "--target-action",
            "explode",
        ])
        .is_err());
        // A recovery target with --target is refused, never silently ignored.
        assert!(Cli::try_parse_from([
            "pgvault",
            "restore",
            "--policy",
            "p.toml",
            "--identity",
            "k",
            "--target",
            "postgres://h/db",
            "--to-latest",
        ])
        .is_err());
        let cli = Cli::try_parse_from(["pgvault", "backup", "--policy", "p.toml"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Backup {
                kind: BackupKindArg::Logical,
                ..
            }
        ));
    }
}
