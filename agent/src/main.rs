//! `pgvault-agent`: runs pgvault policies' backups on their schedules, with health and
//! Prometheus metrics over HTTP.
//!
//! - Scheduled mode (default): every policy with a `[schedule]` runs on its cron
//!   expression (catching up a missed slot at start), retention runs after each success,
//!   and `--listen` serves the read-only status page (`/`, `/policies/NAME`, its JSON at
//!   `/api/v1/…` and the reports it links), `/healthz`, `/readyz` and `/metrics`.
//! - Restore tests: a policy with a `[restore_test] schedule` also runs its drill on
//!   that schedule, notifies the verdict and exports it as metrics.
//! - `--once`: one backup (and retention) of every policy now, then exit — for cron or a
//!   Kubernetes CronJob.
//!
//! The scheduling logic lives in `pgvault_core::runner` and `pgvault_core::schedule`;
//! this binary wires it to signals, HTTP and logs. For backups and retention it needs
//! only the policies' public keys (recipients); a policy with a scheduled restore test
//! also makes it read that test's `identity_file`, a private key, at each drill.

mod metrics;
mod pages;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use axum::http::StatusCode;
use axum::routing::get;
use clap::Parser;
use pgvault_core::policy::Policy;
use pgvault_core::runner::{self, PolicyStatus, RunKind, RunOutcome, SharedStatus};
use pgvault_core::stop_signal::StopStage;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "pgvault-agent",
    version,
    about = "Runs pgvault policies' backups on schedule"
)]
struct Args {
    /// A policy file (repeatable).
    #[arg(long = "policy")]
    policies: Vec<PathBuf>,
    /// A directory whose *.toml files are policies.
    #[arg(long = "policies")]
    policy_dir: Option<PathBuf>,
    /// Run every policy's backup (and retention) once now and exit.
    #[arg(long)]
    once: bool,
    /// Address of the status page, health and metrics endpoint. Any address but
    /// loopback needs --auth-token-file, --basic-auth-file or --insecure-open.
    #[arg(long, default_value = "127.0.0.1:9187")]
    listen: SocketAddr,
    /// A file holding the bearer token the status page and its API require.
    #[arg(long, conflicts_with = "basic_auth_file")]
    auth_token_file: Option<PathBuf>,
    /// A file holding `user:password` for HTTP basic authentication of the status page.
    #[arg(long)]
    basic_auth_file: Option<PathBuf>,
    /// Serve the status page without credentials on a non-loopback --listen address
    /// (only where the network already restricts who connects).
    #[arg(long)]
    insecure_open: bool,
    /// How long a running upload may continue after SIGTERM before it is aborted.
    #[arg(long, default_value = "5m")]
    grace: String,
    /// How often policies with a physical schedule check their WAL archive
    /// (continuity, archiver lag) for the metrics.
    #[arg(long, default_value = "1m")]
    archive_check_every: String,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// `--log-format`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
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

fn status_of(policy: &Policy) -> SharedStatus {
    Arc::new(Mutex::new(PolicyStatus {
        policy: policy.name.clone(),
        cadence: policy.cadence(chrono::Utc::now()),
        // Every copy the agent fills is in the metrics from the start (0 failures),
        // so an alert on its failures or age has a series before the first copy.
        copies: policy
            .copies
            .iter()
            .filter(|c| c.copy_after_backup)
            .map(|c| (c.name.clone(), Default::default()))
            .collect(),
        ..Default::default()
    }))
}

async fn run_once_all(
    policies: Vec<Policy>,
    shutdown: CancellationToken,
    grace: chrono::Duration,
) -> bool {
    let mut all_ok = true;
    for policy in &policies {
        if shutdown.is_cancelled() {
            return false;
        }
        let status = status_of(policy);
        let mut kinds = vec![RunKind::Logical];
        if policy
            .schedule
            .as_ref()
            .is_some_and(|s| s.physical.is_some())
        {
            kinds.push(RunKind::Physical);
        }
        for kind in kinds {
            match runner::run_once(policy, kind, chrono::Utc::now(), &status, &shutdown, grace)
                .await
            {
                RunOutcome::BackedUp(id) => {
                    tracing::info!(policy = %policy.name, backup = %id, %kind, "backup succeeded")
                }
                RunOutcome::Skipped(why) => {
                    tracing::info!(policy = %policy.name, %kind, "skipped: {why}")
                }
                RunOutcome::Failed(_) | RunOutcome::Cancelled => all_ok = false,
            }
        }
    }
    all_ok
}

async fn serve(
    listen: SocketAddr,
    pages: pages::Pages,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) -> Result<()> {
    let statuses: Vec<SharedStatus> = pages.policies.iter().map(|(_, s)| s.clone()).collect();
    // Health, readiness and metrics stay open for probes and scrapers (they carry no
    // secrets); the page, its API and the reports are behind the access rule.
    let app = pages::routes(pages)
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready.load(Ordering::Relaxed) {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let statuses = statuses.clone();
                async move {
                    match metrics::render(&statuses) {
                        Ok(text) => (StatusCode::OK, text),
                        Err(_) => (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "cannot encode metrics\n".to_string(),
                        ),
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(address = %listen, "serving the status page at /, /api/v1/status, /healthz, /readyz and /metrics");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("HTTP server failed")
}

async fn run(args: Args, shutdown: CancellationToken) -> Result<bool> {
    let grace = pgvault_core::units::parse_span(&args.grace)
        .map_err(|m| anyhow::anyhow!("--grace: {m}"))?;
    let archive_every = pgvault_core::units::parse_span(&args.archive_check_every)
        .map_err(|m| anyhow::anyhow!("--archive-check-every: {m}"))?
        .to_std()
        .unwrap_or(std::time::Duration::from_secs(60))
        .max(std::time::Duration::from_secs(1));
    // Validate every policy before running any, so a typo fails fast and whole.
    let policies = policy_files(&args)?
        .iter()
        .map(|p| Policy::load(p).map_err(anyhow::Error::from))
        .collect::<Result<Vec<Policy>>>()?;
    if args.once {
        return Ok(run_once_all(policies, shutdown, grace).await);
    }
    let has_drill_schedule = |p: &Policy| {
        p.restore_test
            .as_ref()
            .is_some_and(|r| r.schedule.is_some())
    };
    let scheduled: Vec<Policy> = policies
        .into_iter()
        .filter(|p| p.schedule.is_some() || has_drill_schedule(p))
        .collect();
    if scheduled.is_empty() {
        bail!("no policy has a [schedule] section or a [restore_test] schedule; add one (e.g. backup = \"0 2 * * *\") or run with --once");
    }
    let access = pgvault_core::status::access::Access::configure(
        args.listen,
        args.auth_token_file.as_deref(),
        args.basic_auth_file.as_deref(),
        args.insecure_open,
    )?;
    let statuses: Vec<SharedStatus> = scheduled.iter().map(status_of).collect();
    let ready = Arc::new(AtomicBool::new(false));
    let pages = pages::Pages {
        policies: Arc::new(
            scheduled
                .iter()
                .cloned()
                .zip(statuses.iter().cloned())
                .collect(),
        ),
        access: Arc::new(access),
    };
    let server = tokio::spawn(serve(args.listen, pages, ready.clone(), shutdown.clone()));
    let mut tasks = tokio::task::JoinSet::new();
    for policy in &scheduled {
        let policy = policy.clone();
        tasks.spawn(async move { runner::remove_crashed_runs(&policy).await });
    }
    for (policy, status) in scheduled.into_iter().zip(statuses) {
        tracing::info!(policy = %policy.name, schedule = policy.schedule.as_ref().map(|s| s.backup.expression()).unwrap_or_default(), "scheduled");
        if let Some(expr) = policy
            .restore_test
            .as_ref()
            .and_then(|r| r.schedule.as_ref())
        {
            tracing::info!(policy = %policy.name, schedule = expr.expression(), "restore test scheduled");
            tasks.spawn(runner::run_drill_schedule(
                policy.clone(),
                status.clone(),
                shutdown.clone(),
            ));
        }
        let streaming = policy.archive.mode == pgvault_core::policy::ArchiveMode::Stream;
        if streaming {
            tracing::info!(policy = %policy.name, slot = %policy.stream_slot(), "WAL streaming");
            tasks.spawn(runner::run_stream(policy.clone(), shutdown.clone()));
        }
        let physical_scheduled = policy
            .schedule
            .as_ref()
            .is_some_and(|s| s.physical.is_some());
        if streaming && !physical_scheduled {
            tasks.spawn(runner::run_archive_watch(
                policy.clone(),
                status.clone(),
                shutdown.clone(),
                archive_every,
            ));
        }
        if policy
            .schedule
            .as_ref()
            .is_some_and(|s| s.physical.is_some())
        {
            tasks.spawn(runner::run_archive_watch(
                policy.clone(),
                status.clone(),
                shutdown.clone(),
                archive_every,
            ));
            tasks.spawn(runner::run_schedule(
                policy.clone(),
                RunKind::Physical,
                status.clone(),
                shutdown.clone(),
                grace,
            ));
        }
        if policy
            .schedule
            .as_ref()
            .is_some_and(|s| s.physical_incremental.is_some())
        {
            tasks.spawn(runner::run_schedule(
                policy.clone(),
                RunKind::PhysicalIncremental,
                status.clone(),
                shutdown.clone(),
                grace,
            ));
        }
        tasks.spawn(runner::run_schedule(
            policy,
            RunKind::Logical,
            status,
            shutdown.clone(),
            grace,
        ));
    }
    ready.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    server.abort();
    Ok(true)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGVAULT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(pgvault_core::colour_on_stderr());
    if args.log_format == LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
    let shutdown = CancellationToken::new();
    // A second signal stops at once; what a cut-off run left is removed by the next
    // start (run leases).
    pgvault_core::stop_signal::cancel_on_signals(shutdown.clone(), 1, |stage| {
        match stage {
        StopStage::Cancelling => tracing::warn!(
            "stopping: no new runs; a running backup may finish within the grace period (signal again to stop at once)"
        ),
        StopStage::Now => tracing::warn!("stopping now, without waiting for running work"),
    }
    });
    match run(args, shutdown).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("pgvault-agent: {e:#}");
            ExitCode::from(2)
        }
    }
}
