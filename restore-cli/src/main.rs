//! `pgvault`: the operator CLI. It parses arguments, loads the policy, calls
//! `pgvault-core`, and turns results into output and exit codes. Logic lives in core.

mod output;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use pgvault_core::keys::Identities;
use pgvault_core::pipeline::Progress;
use pgvault_core::policy::Policy;
use pgvault_core::repository::Repository;
use pgvault_core::{backup, drill, prune, restore, storage, verify};
use tokio_util::sync::CancellationToken;

/// Exit code when a verification or restore check failed (as opposed to an error).
const EXIT_CHECK_FAILED: u8 = 2;
/// Exit code after Ctrl-C or SIGTERM.
const EXIT_CANCELLED: u8 = 130;

#[derive(Parser)]
#[command(
    name = "pgvault",
    version,
    about = "Encrypted, verified PostgreSQL backups and restores"
)]
struct Cli {
    /// More detail in logs (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Take a logical backup of the policy's database.
    Backup {
        /// Policy file.
        #[arg(long)]
        policy: PathBuf,
        /// Print the manifest and peak memory as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// List backups, newest first.
    List {
        /// Policy file.
        #[arg(long)]
        policy: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
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
    },
    /// Apply the policy's [retention]: delete backups no rule keeps, clean up leftovers.
    Prune {
        /// Policy file.
        #[arg(long)]
        policy: PathBuf,
        /// Print each backup with KEEP/DELETE and the rules that keep it; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Prepare the repository's storage.
    Storage {
        #[command(subcommand)]
        action: StorageAction,
    },
    /// Generate an age key pair: the identity (private key) goes to FILE, the recipient
    /// (public key, for the policy) is printed.
    Keygen {
        /// Where to write the identity; refuses to overwrite an existing file.
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
        /// Target database URL, e.g. postgres://postgres@127.0.0.1:5432/app_restored.
        #[arg(long)]
        target: String,
        /// age identity file able to decrypt the backup.
        #[arg(long)]
        identity: PathBuf,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Replace a target database that has user tables.
        #[arg(long)]
        force: bool,
        /// pg_restore parallel jobs; above 1 the decrypted dump is spooled to a temp file.
        #[arg(long, default_value_t = 1)]
        jobs: u32,
        /// Directory for the spool file used with --jobs > 1.
        #[arg(long)]
        spool_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ReportsAction {
    /// List the policy's restore-test reports, oldest first.
    List {
        /// Policy file.
        #[arg(long)]
        policy: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
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
        #[arg(long, value_parser = ["md", "json", "html"], default_value = "md")]
        format: String,
    },
    /// Check the reports' hash chain: no report altered, deleted or reordered.
    Verify {
        /// Policy file.
        #[arg(long)]
        policy: PathBuf,
    },
}

#[derive(Subcommand)]
enum StorageAction {
    /// Apply lifecycle rules to the bucket (abort stale multipart uploads; optional
    /// transition to a colder storage class). Idempotent; other rules are kept.
    Init {
        /// Policy file.
        #[arg(long)]
        policy: PathBuf,
    },
}

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
        .with_target(false)
        .init();
}

/// Cancel the token on Ctrl-C or SIGTERM.
fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("pgvault: stopping: cancelling the running operation");
        token.cancel();
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
        Err(e) => {
            eprintln!("pgvault: {}", output::one_line(&e));
            let cancelled = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<pgvault_core::Error>(),
                    Some(pgvault_core::Error::Cancelled)
                )
            });
            if cancelled {
                ExitCode::from(EXIT_CANCELLED)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn load_policy(path: &std::path::Path) -> Result<Policy> {
    // The core error already names the file, line and column.
    Ok(Policy::load(path)?)
}

async fn open_repository(policy: &Policy) -> Result<Repository> {
    let storage = storage::open(&policy.repository)
        .await
        .with_context(|| format!("cannot open the repository of policy {}", policy.name))?;
    Ok(Repository::new(storage, &policy.name))
}

async fn run(command: Command, cancel: &CancellationToken) -> Result<u8> {
    match command {
        Command::Backup { policy, json } => {
            let policy = load_policy(&policy)?;
            let progress = Arc::new(Progress::default());
            let display = output::ProgressDisplay::start(progress.clone(), "backing up");
            let started = Instant::now();
            let result = backup::run_logical_backup(&policy, progress, cancel).await;
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
        Command::Prune { policy, dry_run } => {
            let policy = load_policy(&policy)?;
            let retention = policy.retention.clone().with_context(|| {
                format!(
                    "policy {} has no [retention] section; add keep rules (e.g. keep_daily = 7) to prune",
                    policy.name
                )
            })?;
            let repo = open_repository(&policy).await?;
            let plan = prune::plan(&repo, &retention, chrono::Utc::now()).await?;
            print!("{}", output::prune_plan(&plan));
            if dry_run {
                println!("dry run: nothing was deleted");
                return Ok(0);
            }
            let done = prune::execute(&repo, &plan)
                .await
                .context("prune failed part-way; re-run it to finish")?;
            println!(
                "deleted {} backup(s), removed {} orphan(s), aborted {} stale upload(s)",
                done.deleted_backups.len(),
                done.removed_orphans,
                done.aborted_uploads
            );
            Ok(0)
        }
        Command::Storage {
            action: StorageAction::Init { policy },
        } => {
            let policy = load_policy(&policy)?;
            let set = storage::init(&policy.repository, &policy.name)
                .await
                .with_context(|| format!("cannot set up the storage of policy {}", policy.name))?;
            for line in set {
                println!("set {line}");
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
        } => {
            let policy = load_policy(&policy)?;
            let config = policy
                .restore_test
                .clone()
                .unwrap_or_else(drill::default_config);
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
        Command::Keygen { output } => {
            let recipient = pgvault_core::keys::generate_identity_file(&output)?;
            eprintln!(
                "identity written to {} (keep it secret, keep it safe)",
                output.display()
            );
            println!("{recipient}");
            Ok(0)
        }
        Command::List { policy, json } => {
            let policy = load_policy(&policy)?;
            let repo = open_repository(&policy).await?;
            let backups = repo.list_backups().await.context("cannot list backups")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&backups)?);
            } else {
                print!("{}", output::backup_table(&backups));
            }
            Ok(0)
        }
        Command::Verify {
            policy,
            backup,
            identity,
        } => {
            let policy = load_policy(&policy)?;
            let repo = open_repository(&policy).await?;
            let identities = identity.as_deref().map(Identities::load).transpose()?;
            let manifest = repo.resolve(&backup).await?;
            let report = verify::verify_backup(
                &repo,
                &manifest,
                identities.as_ref(),
                policy.source.bin_dir.as_deref(),
            )
            .await?;
            print!("{}", output::verify_summary(&report));
            Ok(if report.passed() {
                0
            } else {
                EXIT_CHECK_FAILED
            })
        }
        Command::Restore {
            policy,
            backup,
            target,
            identity,
            dry_run,
            force,
            jobs,
            spool_dir,
        } => {
            let policy = load_policy(&policy)?;
            let repo = open_repository(&policy).await?;
            let identities = Identities::load(&identity)?;
            let options = restore::RestoreOptions {
                force,
                jobs,
                spool_dir,
                spool: false,
                bin_dir: policy.source.bin_dir.clone(),
                download_parallelism: policy.repository.parts_in_flight,
            };
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
        ReportsAction::List { policy, json } => {
            let policy = load_policy(&policy)?;
            let repo = open_repository(&policy).await?;
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
        ReportsAction::Show { policy, id, format } => {
            let policy = load_policy(&policy)?;
            let repo = open_repository(&policy).await?;
            let (report, json) = drill::store::load(&repo, &id).await?;
            match format.as_str() {
                "json" => print!("{}", String::from_utf8_lossy(&json)),
                ext => {
                    let key = drill::store::report_key(&repo, &report.id, ext);
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
        ReportsAction::Verify { policy } => {
            let policy = load_policy(&policy)?;
            let repo = open_repository(&policy).await?;
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
