//! `pgvault`: the operator CLI. It parses arguments, loads the policy, calls
//! `pgvault-core`, and turns results into output and exit codes. Logic lives in core.

mod args;
mod eta;
mod help_files;
mod key_rotation;
mod output;
mod version;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use args::{
    ArchiveAction, ArchiveMode, BackupKindArg, Cli, Command, PitrArgs, ReportFormat, ReportsAction,
    StorageAction,
};
use clap::Parser;
use pgvault_core::error::ErrorKind;
use pgvault_core::keys::Identities;
use pgvault_core::logical::{backup, restore, verify};
use pgvault_core::physical::{basebackup, pitr, wal};
use pgvault_core::pipeline::Progress;
use pgvault_core::policy::Policy;
use pgvault_core::repository::estimate;
use pgvault_core::repository::filter::BackupFilter;
use pgvault_core::repository::Repository;
use pgvault_core::retention::prune;
use pgvault_core::stop_signal::{unless_cancelled, StopStage};
use pgvault_core::{drill, storage};
use tokio_util::sync::CancellationToken;

/// Exit code when a verification or restore check failed (as opposed to an error).
pub(crate) const EXIT_CHECK_FAILED: u8 = 2;
/// Exit code when something could not be read or done (the verdict is unknown).
const EXIT_UNREADABLE: u8 = 1;
/// Exit code after Ctrl-C or SIGTERM.
const EXIT_CANCELLED: u8 = 130;
/// Exit code of `wal-fetch` when a file could not be read (as opposed to not being in
/// the archive): above 125, so PostgreSQL stops recovery instead of ending it early.
const EXIT_STOP_RECOVERY: u8 = 126;

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "pgvault_core=warn,pgvault=warn",
        1 => "pgvault_core=info,pgvault=info",
        _ => "pgvault_core=debug,pgvault=debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGVAULT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(pgvault_core::colour_on_stderr())
        .with_target(false)
        .init();
}

/// Cancel the token on Ctrl-C or SIGTERM; a second signal exits at once.
fn cancel_on_signals(token: CancellationToken) {
    pgvault_core::stop_signal::cancel_on_signals(token, i32::from(EXIT_CANCELLED), |stage| {
        match stage {
            StopStage::Cancelling => eprintln!(
                "pgvault: stopping: cancelling the running operation (again to stop at once)"
            ),
            StopStage::Now => eprintln!("pgvault: stopping now, without clean-up"),
        }
    });
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let cancel = CancellationToken::new();
    cancel_on_signals(cancel.clone());
    match run(cli.command, &cancel).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => match core_kind(&e) {
            Some(ErrorKind::Corruption) => {
                eprintln!("pgvault: verification FAILED: {}", output::one_line(&e));
                ExitCode::from(EXIT_CHECK_FAILED)
            }
            Some(ErrorKind::Cancelled) => {
                eprintln!("pgvault: {}", output::one_line(&e));
                ExitCode::from(EXIT_CANCELLED)
            }
            _ => {
                eprintln!("pgvault: {}", output::one_line(&e));
                ExitCode::FAILURE
            }
        },
    }
}

/// The core error behind `e`, when there is one.
fn core_error(e: &anyhow::Error) -> Option<&pgvault_core::Error> {
    e.chain()
        .find_map(|c| c.downcast_ref::<pgvault_core::Error>())
}

/// The kind of the core error behind `e`, when there is one.
fn core_kind(e: &anyhow::Error) -> Option<ErrorKind> {
    core_error(e).map(pgvault_core::Error::kind)
}

fn load_policy(path: &std::path::Path) -> Result<Policy> {
    // The core error already names the file, line and column.
    Ok(Policy::load(path)?)
}

async fn open_repository(policy: &Policy) -> Result<Repository> {
    open_repository_from(policy, None).await
}

/// The policy's primary repository, or its copy `from_copy` (`--from-copy NAME`).
async fn open_repository_from(policy: &Policy, from_copy: Option<&str>) -> Result<Repository> {
    Repository::open_from(policy, from_copy)
        .await
        .with_context(|| match from_copy {
            Some(copy) => format!("cannot open copy {copy} of policy {}", policy.name),
            None => format!("cannot open the repository of policy {}", policy.name),
        })
}

/// The longest the progress display waits for a backup's size estimate.
const ESTIMATE_TIMEOUT: Duration = Duration::from_secs(10);

/// The raw bytes a backup of `policy` is expected to stream ([`estimate`]), for the
/// progress display's percent and time left. Never an error: without an estimate the
/// display shows bytes and rate.
async fn expected_backup_size(policy: Policy, next: estimate::NextBackup) -> Option<u64> {
    let expected = async {
        let repo = Repository::open(&policy).await?;
        estimate::expected_raw_bytes(&repo, &policy, next).await
    };
    match tokio::time::timeout(ESTIMATE_TIMEOUT, expected).await {
        Ok(Ok(size)) => size,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "cannot estimate the backup's size");
            None
        }
        Err(_) => {
            tracing::debug!("estimating the backup's size took too long");
            None
        }
    }
}

async fn run(command: Command, cancel: &CancellationToken) -> Result<u8> {
    match command {
        Command::Backup {
            policy,
            kind,
            incremental,
            json,
        } => {
            if incremental && kind != BackupKindArg::Physical {
                anyhow::bail!("--incremental applies to base backups: add --kind physical");
            }
            let policy = load_policy(&policy)?;
            let next = match (kind, incremental) {
                (BackupKindArg::Logical, _) => estimate::NextBackup::Logical,
                (BackupKindArg::Physical, false) => estimate::NextBackup::FullBase,
                (BackupKindArg::Physical, true) => estimate::NextBackup::IncrementalBase,
            };
            let progress = Arc::new(Progress::default());
            let display = output::ProgressDisplay::start_expecting(
                progress.clone(),
                "backing up",
                expected_backup_size(policy.clone(), next),
            );
            let started = Instant::now();
            let result = if kind == BackupKindArg::Physical {
                let base_kind = if incremental {
                    basebackup::BaseBackupKind::Incremental
                } else {
                    basebackup::BaseBackupKind::Full
                };
                basebackup::run_physical_backup(&policy, base_kind, progress, cancel).await
            } else {
                backup::run_logical_backup(&policy, progress, cancel).await
            };
            display.finish();
            let manifest =
                result.with_context(|| format!("backup of policy {} failed", policy.name))?;
            let peak_rss_kib = output::peak_rss_kib();
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "manifest": manifest, "peak_rss_kib": peak_rss_kib })
                );
            } else {
                println!(
                    "{}",
                    output::backup_summary(&manifest, started.elapsed(), peak_rss_kib)
                );
            }
            Ok(0)
        }
        Command::Prune {
            policy,
            dry_run,
            copy,
        } => {
            let policy = load_policy(&policy)?;
            let retention = match copy.as_deref() {
                None => policy.retention.clone(),
                Some(name) => policy.retention_of_copy(policy.copy(name)?).cloned(),
            };
            let retention = retention.with_context(|| {
                format!(
                    "policy {} has no [retention] section{}; add keep rules (e.g. keep_daily = 7) to prune",
                    policy.name,
                    if copy.is_some() { " and the copy no [repository.copies.retention]" } else { "" }
                )
            })?;
            let repo = open_repository_from(&policy, copy.as_deref()).await?;
            if let Some(name) = &copy {
                println!("copy {name} ({}):", repo.storage().describe());
            }
            let plan = unless_cancelled(cancel, prune::plan(&repo, &retention, chrono::Utc::now()))
                .await?;
            print!("{}", output::prune_plan(&plan));
            if dry_run {
                println!("dry run: nothing was deleted");
                return Ok(0);
            }
            let done = prune::execute(&repo, &plan, cancel)
                .await
                .context("prune failed part-way; re-run it to finish")?;
            for (what, lock) in &done.still_locked {
                println!("{what}: locked ({lock}) since the plan: kept");
            }
            println!(
                "deleted {} backup(s), removed {} orphan(s), aborted {} stale upload(s), deleted {} WAL file(s)",
                done.deleted_backups.len(),
                done.removed_orphans,
                done.aborted_uploads,
                done.deleted_wal
            );
            Ok(0)
        }
        Command::Copy {
            policy,
            backup,
            all_missing,
            to,
            verify,
            json,
        } => {
            let policy = load_policy(&policy)?;
            run_copy(&policy, backup, all_missing, to, verify, json, cancel).await
        }
        Command::Storage {
            action: StorageAction::Init { policy, copy },
        } => {
            let policy = load_policy(&policy)?;
            let settings = match copy.as_deref() {
                None => &policy.repository.storage,
                Some(name) => &policy.copy(name)?.repository.storage,
            };
            let set = storage::init(settings, &policy.name)
                .await
                .with_context(|| format!("cannot set up the storage of policy {}", policy.name))?;
            for line in set {
                if line.starts_with("object lock:") {
                    println!("{line}");
                } else {
                    println!("set {line}");
                }
            }
            Ok(0)
        }
        Command::RestoreTest {
            policy,
            identity,
            backup,
            report_dir,
            keep,
            json,
            from_copy,
        } => {
            let policy = load_policy(&policy)?;
            let mut config = policy.restore_test.clone().unwrap_or_default();
            if let Some(name) = from_copy {
                policy.copy(&name)?;
                config.from_copy = Some(name);
            }
            let identity = identity
                .or_else(|| config.identity_file.clone())
                .with_context(|| {
                    format!(
                        "policy {} has no [restore_test] identity_file; pass --identity FILE",
                        policy.name
                    )
                })?;
            let identities = Identities::load(&identity)?;
            let repo = open_repository(&policy).await?;
            let progress = Arc::new(Progress::default());
            let display = output::ProgressDisplay::start(progress.clone(), "restore test");
            let result = drill::run(
                &repo,
                drill::DrillRequest {
                    policy: &policy,
                    config: &config,
                    identities: &identities,
                    backup,
                    keep,
                    progress,
                },
                cancel,
            )
            .await;
            display.finish();
            let outcome = result.context("restore test did not complete")?;
            if let Some(dir) = &report_dir {
                write_report_files(dir, &outcome)?;
            }
            if json {
                print!("{}", String::from_utf8_lossy(&outcome.json));
            } else {
                print!(
                    "{}",
                    output::drill_summary(
                        &outcome.report,
                        &drill::store::report_key(&repo, &outcome.report.id, "html"),
                        report_dir.as_deref()
                    )
                );
            }
            Ok(match outcome.report.verdict {
                drill::report::Verdict::Pass => 0,
                drill::report::Verdict::Fail => EXIT_CHECK_FAILED,
            })
        }
        Command::Reports { action } => run_reports(action).await,
        Command::DrPlan {
            policy,
            format,
            output,
        } => {
            let policies = policy
                .iter()
                .map(|p| load_policy(p))
                .collect::<Result<Vec<_>>>()?;
            let plan = pgvault_core::dr_plan::build(&policies, chrono::Utc::now()).await;
            let text = pgvault_core::dr_plan::render(&plan, format.into());
            match output {
                Some(path) => std::fs::write(&path, text)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => print!("{text}"),
            }
            Ok(0)
        }
        Command::Check { policy } => {
            let policy = load_policy(&policy)?;
            let repo = open_repository(&policy).await?;
            let found = pgvault_core::physical::archive_check::check(&repo, &policy)
                .await
                .with_context(|| format!("cannot read the repository of policy {}", policy.name))?;
            let now = chrono::Utc::now();
            print!("{}", output::archive_check(&policy.name, &found, now));
            // How far each copy lags.
            let mut copies_healthy = true;
            for copy in &policy.copies {
                match pgvault_core::copy::lag::lag_of(&policy, copy, now).await {
                    Ok(lag) => {
                        copies_healthy &= !lag.behind();
                        print!("{}", output::copy_lag(&lag, now));
                    }
                    Err(e) => {
                        copies_healthy = false;
                        println!(
                            "  FAIL  copy {} ({}): cannot read it: {e}",
                            copy.name,
                            pgvault_core::copy::location_of(copy)
                        );
                    }
                }
            }
            // Whether the bucket can hold the locks [repository] object_lock asks for.
            let mut locks_ok = true;
            match storage::check_object_lock(&policy.repository.storage).await {
                Ok(None) => {}
                Ok(Some(support)) if support.ready() => {
                    println!("object lock: the bucket has Object Lock and versioning enabled")
                }
                Ok(Some(support)) => {
                    locks_ok = false;
                    println!(
                        "object lock: PROBLEM: {}",
                        output::one_line(&anyhow::Error::from(storage::lock_unsupported(
                            &repo.storage().describe(),
                            &support
                        )))
                    );
                }
                Err(e) => {
                    locks_ok = false;
                    println!(
                        "object lock: PROBLEM: cannot tell whether the bucket can hold locks: {}",
                        output::one_line(&anyhow::Error::from(e))
                    );
                }
            }
            // Scratch databases that interrupted restores or drills left behind, on the
            // servers the policy names.
            for url in policy.servers() {
                match restore::leftover_databases(url).await {
                    Ok(found) => print!("{}", output::leftover_databases(&found)),
                    Err(e) => tracing::debug!(error = %e, "cannot look for leftover databases"),
                }
            }
            Ok(if found.healthy() && copies_healthy && locks_ok {
                0
            } else {
                EXIT_CHECK_FAILED
            })
        }
        Command::WalPush { policy, path } => {
            let policy = load_policy(&policy)?;
            if policy.archive.mode == pgvault_core::policy::ArchiveMode::Async {
                let handed = wal::pusher::archive_async(&policy, &path)
                    .await
                    .with_context(|| format!("cannot archive {}", path.display()))?;
                if let wal::spool::HandOver::Dropped { backlog } = handed {
                    eprintln!(
                        "pgvault: WARNING: {} was DROPPED, not archived: the spool holds {} (queue_max {}, queue_full = \"drop\"); the gap is recorded and point-in-time recovery cannot cross it",
                        path.display(),
                        pgvault_core::units::human_bytes(backlog),
                        pgvault_core::units::human_bytes(policy.archive.queue_max)
                    );
                }
                return Ok(0);
            }
            // A spool left by asynchronous mode is still drained after a switch to sync.
            if let Some(dir) = policy.archive.spool_dir.as_deref().filter(|d| d.is_dir()) {
                let spool = wal::spool::Spool::existing(dir);
                let waiting = spool.queued().is_ok_and(|q| !q.is_empty())
                    || spool.dropped().is_ok_and(|d| !d.is_empty());
                if waiting {
                    if let Err(e) = wal::pusher::ensure_pusher(&spool, &policy.path) {
                        tracing::warn!(error = %e, "cannot start the WAL pusher for the old spool");
                    }
                }
            }
            let repo = open_repository(&policy).await?;
            let outcome = wal::push(
                &repo,
                &path,
                &policy.recipients,
                pgvault_core::repository::new_backup::encode_settings(&policy),
                cancel,
            )
            .await
            .with_context(|| format!("cannot archive {}", path.display()))?;
            if let wal::PushOutcome::AlreadyArchived(key) = outcome {
                eprintln!("pgvault: {} was already archived as {key}", path.display());
            }
            Ok(0)
        }
        Command::WalPrefetcher {
            policy,
            identity,
            window,
            from_copy,
            dir,
        } => {
            let policy_path = policy;
            let policy = load_policy(&policy_path)?;
            let identities = Identities::load(&identity)?;
            let repo = open_repository_from(&policy, from_copy.as_deref()).await?;
            let recipients = policy.recipients.fingerprints();
            let fetched = wal::prefetcher::run_prefetcher(
                &repo,
                &policy_path,
                &identities,
                &recipients,
                &dir,
                window,
                cancel,
            )
            .await?;
            tracing::info!(fetched, "recovery stopped asking; the prefetcher exits");
            Ok(0)
        }
        Command::WalPusher { policy } => {
            let policy = load_policy(&policy)?;
            match wal::pusher::run_pusher(&policy, cancel).await? {
                wal::pusher::PusherExit::AlreadyRunning => {
                    tracing::debug!("another pusher empties this spool")
                }
                wal::pusher::PusherExit::Idle { stored } => {
                    tracing::info!(stored, "the spool is empty; the pusher exits")
                }
            }
            Ok(0)
        }
        Command::WalFetch {
            policy,
            identity,
            prefetch,
            from_copy,
            name,
            dest,
        } => {
            let fetched = async {
                // The prefetcher's copy first: no policy, key or network needed.
                let dir = wal::prefetcher::prefetch_dir(&dest)?;
                let served = prefetch > 0 && wal::prefetcher::take_prefetched(&dir, &name, &dest)?;
                let size = if served {
                    std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0)
                } else {
                    let policy = load_policy(&policy)?;
                    let identities = Identities::load(&identity)?;
                    let repo = open_repository_from(&policy, from_copy.as_deref()).await?;
                    let recipients = policy.recipients.fingerprints();
                    wal::fetch(&repo, &name, &dest, &identities, &recipients, cancel).await?
                };
                if prefetch > 0 {
                    let noted = wal::prefetcher::note_wanted(&dir, &name, size, &policy).and_then(|()| {
                        wal::prefetcher::ensure_prefetcher(
                            &dir,
                            &policy,
                            &identity,
                            prefetch,
                            from_copy.as_deref(),
                        )
                    });
                    if let Err(e) = noted {
                        tracing::warn!(error = %e, "cannot run the WAL prefetcher; recovery fetches each file itself");
                    }
                }
                anyhow::Ok(())
            }
            .await;
            // PostgreSQL reads any exit code up to 125 as "not in the archive" and ends
            // recovery there: right for a file the archive does not have, silent data
            // loss for one it could not read. Those stop recovery instead.
            match fetched {
                Ok(()) => Ok(0),
                Err(e) if core_kind(&e).is_some_and(|k| k == ErrorKind::Cancelled) => Err(e),
                Err(e)
                    if matches!(
                        core_error(&e),
                        Some(pgvault_core::Error::WalNotFound { .. })
                    ) =>
                {
                    Err(e)
                }
                Err(e) => {
                    eprintln!(
                        "pgvault: {}; recovery stops here rather than end early (exit {EXIT_STOP_RECOVERY})",
                        output::one_line(&e)
                    );
                    Ok(EXIT_STOP_RECOVERY)
                }
            }
        }
        Command::Archive {
            action:
                ArchiveAction::Setup {
                    policy: policy_path,
                    apply,
                    timeout,
                },
        } => {
            let policy = load_policy(&policy_path)?;
            let exe = std::env::current_exe().context("cannot find the pgvault executable")?;
            let policy_abs = std::fs::canonicalize(&policy_path)
                .with_context(|| format!("cannot resolve {}", policy_path.display()))?;
            let streaming = policy.archive.mode == pgvault_core::policy::ArchiveMode::Stream;
            let settings = if streaming {
                wal::stream_settings()
            } else {
                wal::archive_settings(&exe, &policy_abs, timeout)?
            };
            if !apply {
                if streaming {
                    println!("# settings to stream WAL into policy {} over replication slot {} (apply with --apply, or put them in postgresql.conf):", policy.name, policy.stream_slot());
                    println!("# max_slot_wal_keep_size: the most WAL the source keeps for a stalled stream; past it the slot is lost and pgvault records a gap, instead of the disk filling up");
                } else {
                    println!("# settings to archive WAL into policy {} (apply with --apply, or put them in postgresql.conf):", policy.name);
                }
                for (name, value) in &settings {
                    println!("{name} = {}", pgvault_core::postgres::quote_literal(value));
                }
                if streaming {
                    println!("# the source role needs the REPLICATION attribute, and pg_hba.conf a line for replication connections from the agent's host, e.g.:");
                    println!("#   host  replication  <role>  <agent address>/32  scram-sha-256");
                }
                println!(
                    "# PostgreSQL 17 and newer, for incremental base backups (no restart needed):"
                );
                for (name, value) in wal::summary_settings(u32::MAX) {
                    println!("{name} = {}", pgvault_core::postgres::quote_literal(&value));
                }
                return Ok(0);
            }
            let source = pgvault_core::postgres::ConnTarget::parse(&policy.source.url)?;
            let client = source.connect().await?;
            let info = pgvault_core::postgres::server_info(&client).await?;
            let mut settings = settings;
            settings.extend(wal::summary_settings(info.major()));
            if streaming {
                // An existing bound is the operator's choice; only "unlimited" is replaced.
                let keep: String = client
                    .query_one("select current_setting('max_slot_wal_keep_size')", &[])
                    .await
                    .context("cannot read max_slot_wal_keep_size")?
                    .get(0);
                if keep != "-1" {
                    settings.retain(|(name, _)| *name != "max_slot_wal_keep_size");
                }
            }
            let applied = wal::apply_archive_settings(&client, &settings).await?;
            let mut restart = false;
            for a in &applied {
                println!(
                    "{:<16} {} -> {}{}",
                    a.name,
                    a.before,
                    a.after,
                    if a.needs_restart {
                        "  (restart needed)"
                    } else {
                        ""
                    }
                );
                restart |= a.needs_restart;
            }
            if restart {
                println!("restart the server for wal_level/archive_mode to take effect");
            }
            if streaming {
                println!(
                    "streaming: the agent creates replication slot {} and runs pg_receivewal; `pgvault check` shows the stream",
                    policy.stream_slot()
                );
            }
            Ok(0)
        }
        Command::Keys { action } => key_rotation::run(action).await,
        Command::Keygen { output } => {
            let recipient = pgvault_core::keys::generate_identity_file(&output)?;
            eprintln!(
                "identity written to {} (keep it secret, keep it safe)",
                output.display()
            );
            println!("{recipient}");
            Ok(0)
        }
        Command::Completions { shell } => {
            let mut script = Vec::new();
            help_files::completions(shell, &mut script);
            std::io::Write::write_all(&mut std::io::stdout().lock(), &script)
                .context("cannot write the completion script")?;
            Ok(0)
        }
        Command::Man { output } => {
            for page in help_files::man_pages(&output)? {
                println!("{}", page.display());
            }
            Ok(0)
        }
        Command::List {
            policy,
            json,
            kind,
            since,
            until,
            from_copy,
        } => {
            if let (Some(since), Some(until)) = (since, until) {
                anyhow::ensure!(
                    since <= until,
                    "--since {since} is after --until {until}, so no backup can match; swap them"
                );
            }
            let filter = BackupFilter {
                kind: kind.map(Into::into),
                since,
                until,
            };
            let policy = load_policy(&policy)?;
            let repo = open_repository_from(&policy, from_copy.as_deref()).await?;
            let catalog = filter.apply(repo.catalog().await.context("cannot list backups")?);
            if json {
                let mut entries: Vec<serde_json::Value> = catalog
                    .backups
                    .iter()
                    .map(serde_json::to_value)
                    .collect::<std::result::Result<_, _>>()?;
                entries.extend(catalog.damaged.iter().map(|d| {
                    serde_json::json!({ "id": d.id, "damaged": true, "manifest": d.key, "reason": d.reason })
                }));
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                print!(
                    "{}",
                    output::backup_table(&catalog.backups, &catalog.damaged)
                );
            }
            Ok(0)
        }
        Command::Verify {
            policy,
            backup,
            identity,
            from_copy,
            json,
        } => {
            let policy = load_policy(&policy)?;
            let repo = open_repository_from(&policy, from_copy.as_deref()).await?;
            let identities = identity.as_deref().map(Identities::load).transpose()?;
            let manifest = repo.resolve(&backup, None).await?;
            let report = verify::verify_backup(
                &repo,
                &manifest,
                identities.as_ref(),
                policy.source.bin_dir.as_deref(),
                cancel,
            )
            .await?;
            if json {
                println!("{}", output::verify_json(&report, chrono::Utc::now()));
            } else {
                print!("{}", output::verify_summary(&report, chrono::Utc::now()));
            }
            Ok(if report.damaged() {
                EXIT_CHECK_FAILED
            } else if report.incomplete() {
                EXIT_UNREADABLE
            } else {
                0
            })
        }
        Command::Restore {
            policy: policy_path,
            backup,
            target,
            pitr,
            identity,
            dry_run,
            force,
            from_copy,
            logical,
        } => {
            let policy = load_policy(&policy_path)?;
            if pitr.pgdata.is_some() {
                return run_pitr(
                    &policy,
                    (&policy_path, from_copy.as_deref()),
                    &identity,
                    pitr,
                    force,
                    dry_run,
                    cancel,
                )
                .await;
            }
            let target = target.context("--target or --pgdata is required")?;
            let repo = open_repository_from(&policy, from_copy.as_deref()).await?;
            let identities = Identities::load(&identity)?;
            let options = restore::RestoreOptions {
                force,
                jobs: logical.jobs,
                spool_dir: logical.spool_dir,
                spool: false,
                bin_dir: policy.source.bin_dir.clone(),
                download_parallelism: policy.repository.parts_in_flight,
            };
            let selection = pgvault_core::logical::tables::TableSelection::from_options(
                &logical.tables,
                &logical.schemas,
                &logical.exclude_tables,
            )?;
            if let Some(selection) = selection {
                return run_table_restore(
                    &repo,
                    (&backup, &target),
                    &identities,
                    options,
                    selection,
                    dry_run,
                    cancel,
                )
                .await;
            }
            let plan = restore::plan(&repo, &backup, &target, &identities, options).await?;
            print!("{plan}");
            if dry_run {
                println!("dry run: nothing was changed");
                return Ok(0);
            }
            let progress = Arc::new(Progress::default());
            let display = output::ProgressDisplay::start(progress.clone(), "restoring");
            let started = Instant::now();
            let result = restore::execute(&repo, plan, &identities, progress, cancel).await;
            display.finish();
            let report = result.context("restore failed; the target database was not changed")?;
            print!("{}", output::restore_summary(&report, started.elapsed()));
            Ok(if report.passed() {
                0
            } else {
                EXIT_CHECK_FAILED
            })
        }
    }
}

/// A restore of some tables: `restore --target … --table/--schema/--exclude-table`.
async fn run_table_restore(
    repo: &pgvault_core::repository::Repository,
    (backup, target): (&str, &str),
    identities: &Identities,
    options: restore::RestoreOptions,
    selection: pgvault_core::logical::tables::TableSelection,
    dry_run: bool,
    cancel: &CancellationToken,
) -> Result<u8> {
    use pgvault_core::logical::tables;
    let mut plan = tables::plan(repo, backup, target, identities, options, selection).await?;
    if dry_run {
        // The foreign keys come from the dump itself (read and verified, nothing written).
        if plan.refusal().is_ok() {
            tables::foreign_keys_in_dump(repo, &mut plan, identities)
                .await
                .context("cannot read the backup's foreign keys")?;
        }
        print!("{plan}");
        plan.refusal()?;
        println!("dry run: nothing was changed");
        return Ok(0);
    }
    print!("{plan}");
    let progress = Arc::new(Progress::default());
    let display = output::ProgressDisplay::start(progress.clone(), "restoring");
    let started = Instant::now();
    let result = tables::execute(repo, plan, identities, progress, cancel).await;
    display.finish();
    let report = result.context("table restore failed; the target database was not changed")?;
    print!("{}", output::tables_summary(&report, started.elapsed()));
    Ok(if report.passed() {
        0
    } else {
        EXIT_CHECK_FAILED
    })
}

/// A point-in-time restore: `restore --pgdata`, from the primary or the copy named.
async fn run_pitr(
    policy: &Policy,
    (policy_path, from_copy): (&std::path::Path, Option<&str>),
    identity: &std::path::Path,
    args: PitrArgs,
    force: bool,
    dry_run: bool,
    cancel: &CancellationToken,
) -> Result<u8> {
    let Some(pgdata) = args.pgdata else {
        anyhow::bail!("a point-in-time restore needs --pgdata");
    };
    let point = match (args.to_time, args.to_lsn, args.to_xid, args.to_name, args.to_latest) {
        (Some(t), ..) => pitr::RecoveryTarget::Time(pitr::parse_target_time(&t)?),
        (_, Some(l), ..) => pitr::RecoveryTarget::Lsn(wal::parse_lsn(&l)?),
        (_, _, Some(x), ..) => pitr::RecoveryTarget::Xid(x),
        (_, _, _, Some(n), _) => pitr::RecoveryTarget::Name(n),
        (.., true) => pitr::RecoveryTarget::Latest,
        _ => anyhow::bail!(
            "a point-in-time restore needs one of --to-time, --to-lsn, --to-xid, --to-name or --to-latest"
        ),
    };
    let timeline = pitr::TimelineChoice::parse(&args.target_timeline)?;
    let options = pitr::PitrOptions {
        force,
        action: args.target_action.into(),
        restore_command: wal::restore_command_from(
            policy_path,
            identity,
            args.prefetch,
            from_copy,
        )?,
        start: args.start,
        port: args.port,
        bin_dir: policy.source.bin_dir.clone(),
        download_parallelism: policy.repository.parts_in_flight,
        keep_archiving: args.archive_mode == ArchiveMode::Preserve,
        server_settings: Vec::new(),
    };
    let pgdata = pgdata.as_path();
    let identities = Identities::load(identity)?;
    let repo = open_repository_from(policy, from_copy).await?;
    let plan = pitr::plan(&repo, point, timeline, pgdata, &identities)
        .await
        .context("cannot plan the point-in-time restore")?;
    print!("{plan}");
    if dry_run {
        println!("dry run: nothing was written");
        return Ok(0);
    }
    let progress = Arc::new(Progress::default());
    let display = output::ProgressDisplay::start(progress.clone(), "restoring base backup");
    let result = pitr::execute(&repo, &plan, &identities, &options, progress, cancel).await;
    display.finish();
    let report = result.context("point-in-time restore failed")?;
    println!(
        "base backup {} extracted into {} in {:.1}s; recovery.signal and restore_command written",
        plan.base.id,
        pgdata.display(),
        report.extract_seconds
    );
    match report.replay_seconds {
        Some(seconds) => {
            println!(
                "recovery reached the target in {seconds:.1}s, {} WAL file(s) from the prefetcher (server log: {})",
                report.prefetched,
                report
                    .log
                    .as_ref()
                    .map(|l| l.display().to_string())
                    .unwrap_or_default()
            );
            for line in &report.reached {
                println!("  {line}");
            }
        }
        None => println!(
            "start the server on {} to replay WAL to {} (or re-run with --start)",
            pgdata.display(),
            plan.target
        ),
    }
    Ok(0)
}

/// `pgvault copy`: copy to every copy of the policy, or the one `--to` names.
async fn run_copy(
    policy: &Policy,
    backup: Option<String>,
    all_missing: bool,
    to: Option<String>,
    verify: bool,
    json: bool,
    cancel: &CancellationToken,
) -> Result<u8> {
    use pgvault_core::copy;
    let copies: Vec<&pgvault_core::policy::CopyConfig> = match to.as_deref() {
        Some(name) => vec![policy.copy(name)?],
        None => policy.copies.iter().collect(),
    };
    if copies.is_empty() {
        anyhow::bail!(
            "policy {} has no [[repository.copies]]; declare one (a name and a url) to copy to",
            policy.name
        );
    }
    let request = copy::CopyRequest {
        selection: match (backup, all_missing) {
            (Some(selector), false) => copy::Selection::Backup(selector),
            _ => copy::Selection::AllMissing,
        },
        verify_existing: verify,
    };
    let mut reports = Vec::new();
    let mut stopped = false;
    for config in copies {
        // One unreachable copy does not keep the others from being filled.
        let report = match copy::copy_to(policy, config, &request, cancel).await {
            Ok(report) => report,
            Err(pgvault_core::Error::Cancelled) => {
                return Err(pgvault_core::Error::Cancelled.into())
            }
            Err(e) => {
                stopped = true;
                eprintln!(
                    "pgvault: copy to {} at {} stopped: {e}; run it again to resume (what was copied stays)",
                    config.name,
                    copy::location_of(config)
                );
                continue;
            }
        };
        if !json {
            print!("{}", output::copy_summary(&report));
        }
        reports.push(report);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(if stopped {
        EXIT_UNREADABLE
    } else if reports.iter().all(copy::CopyReport::complete) {
        0
    } else {
        EXIT_CHECK_FAILED
    })
}

fn write_report_files(dir: &std::path::Path, outcome: &drill::DrillOutcome) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create report directory {}", dir.display()))?;
    let id = &outcome.report.id;
    for (ext, bytes) in [
        ("json", outcome.json.as_slice()),
        ("md", outcome.markdown.as_bytes()),
        ("html", outcome.html.as_bytes()),
    ] {
        let path = dir.join(format!("{}-{id}.{ext}", outcome.report.policy));
        std::fs::write(&path, bytes)
            .with_context(|| format!("cannot write report file {}", path.display()))?;
    }
    Ok(())
}

async fn run_reports(action: ReportsAction) -> Result<u8> {
    match action {
        ReportsAction::List {
            policy,
            json,
            from_copy,
        } => {
            let policy = load_policy(&policy)?;
            let repo = open_repository_from(&policy, from_copy.as_deref()).await?;
            let mut reports = Vec::new();
            for id in drill::store::list_ids(&repo).await? {
                let (report, _) = drill::store::load(&repo, &id).await?;
                reports.push(report);
            }
            if json {
                let list: Vec<_> = reports.iter().map(output::report_list_entry).collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", output::report_table(&reports));
            }
            Ok(0)
        }
        ReportsAction::Show {
            policy,
            id,
            format,
            from_copy,
        } => {
            let policy = load_policy(&policy)?;
            let repo = open_repository_from(&policy, from_copy.as_deref()).await?;
            let (report, json) = drill::store::load(&repo, &id).await?;
            match format {
                ReportFormat::Json => print!("{}", String::from_utf8_lossy(&json)),
                ReportFormat::Md | ReportFormat::Html => {
                    let key = drill::store::report_key(&repo, &report.id, format.extension());
                    let bytes = repo
                        .storage()
                        .get(&key)
                        .await
                        .with_context(|| format!("cannot read {key}"))?;
                    print!("{}", String::from_utf8_lossy(&bytes));
                }
            }
            Ok(0)
        }
        ReportsAction::Verify { policy, from_copy } => {
            let policy = load_policy(&policy)?;
            let repo = open_repository_from(&policy, from_copy.as_deref()).await?;
            let stored = drill::store::read_all(&repo).await?;
            let findings = drill::store::verify_chain(&stored);
            let mut broken = 0;
            for f in &findings {
                if f.problems.is_empty() {
                    println!("OK    {}", f.id);
                } else {
                    broken += 1;
                    for p in &f.problems {
                        println!("FAIL  {}: {p}", f.id);
                    }
                }
            }
            if broken == 0 {
                println!(
                    "report chain intact: {} report(s) of policy {}",
                    findings.len(),
                    policy.name
                );
                Ok(0)
            } else {
                println!(
                    "report chain BROKEN at {broken} report(s) of policy {}",
                    policy.name
                );
                Ok(EXIT_CHECK_FAILED)
            }
        }
    }
}

/// Interval of progress log lines when stderr is not a terminal.
pub(crate) const LOG_PROGRESS_EVERY: Duration = Duration::from_secs(30);
