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
use pgvault_core::{backup, prune, restore, storage, verify};
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

/// Interval of progress log lines when stderr is not a terminal.
pub(crate) const LOG_PROGRESS_EVERY: Duration = Duration::from_secs(30);
