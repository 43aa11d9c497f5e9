//! `pgvault-agent`: runs the backups of one or more pgvault policies.
//!
//! This release runs with `--once`: one backup of every policy, then exit — what cron
//! or a Kubernetes CronJob needs. Each policy is independent: one failing does not stop
//! the others, and the exit code is non-zero when any failed. The agent holds only the
//! policies' public keys, so it can write backups but never read them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;
use pgvault_core::pipeline::Progress;
use pgvault_core::policy::Policy;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "pgvault-agent",
    version,
    about = "Runs pgvault policies' backups"
)]
struct Args {
    /// A policy file (repeatable).
    #[arg(long = "policy")]
    policies: Vec<PathBuf>,
    /// A directory whose *.toml files are policies.
    #[arg(long = "policies")]
    policy_dir: Option<PathBuf>,
    /// Run every policy's backup once now and exit.
    #[arg(long)]
    once: bool,
    /// Log format.
    #[arg(long, value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
}

fn policy_files(args: &Args) -> Result<Vec<PathBuf>> {
    let mut files = args.policies.clone();
    if let Some(dir) = &args.policy_dir {
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read policy directory {}", dir.display()))?;
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        found.sort();
        files.extend(found);
    }
    if files.is_empty() {
        bail!("no policies: pass --policy FILE or --policies DIR");
    }
    Ok(files)
}

async fn run(args: Args, cancel: CancellationToken) -> Result<bool> {
    if !args.once {
        bail!("scheduled operation is not available yet; run with --once (one backup of each policy, for cron or a CronJob)");
    }
    // Validate every policy before running any, so a typo fails fast and whole.
    let policies = policy_files(&args)?
        .iter()
        .map(|p| Policy::load(p).map_err(anyhow::Error::from))
        .collect::<Result<Vec<Policy>>>()?;
    let mut all_ok = true;
    for policy in &policies {
        if cancel.is_cancelled() {
            break;
        }
        let progress = Arc::new(Progress::default());
        match pgvault_core::backup::run_logical_backup(policy, progress, &cancel).await {
            Ok(m) => tracing::info!(
                policy = %policy.name,
                backup = %m.id,
                raw_bytes = m.raw_size(),
                stored_bytes = m.stored_size(),
                seconds = m.duration_seconds(),
                "backup succeeded"
            ),
            Err(e) => {
                all_ok = false;
                tracing::error!(policy = %policy.name, error = %e, "backup failed");
            }
        }
    }
    Ok(all_ok)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGVAULT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    tokio::spawn(async move {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::warn!("stopping: aborting the running backup");
            token.cancel();
        }
    });
    match run(args, cancel).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("pgvault-agent: {e:#}");
            ExitCode::from(2)
        }
    }
}
