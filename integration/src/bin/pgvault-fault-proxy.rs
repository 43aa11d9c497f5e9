//! `pgvault-fault-proxy`: the fault-injection proxy of the test harness as a standalone
//! process, so that benchmark and soak scripts can put a flaky network in front of an S3
//! server (see `pgvault_integration::fault_proxy`).
//!
//! It prints `listening on 127.0.0.1:PORT` on stdout once ready, runs until SIGTERM or
//! Ctrl-C, then prints the request and per-mode fault counts on stderr. SIGUSR1 makes the
//! store unreachable (every connection is closed) until SIGUSR2, for outage tests.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use pgvault_integration::fault_proxy::{FaultConfig, FaultMode, FaultProxy};
use tokio::signal::unix::{signal, SignalKind};

/// Command line of `pgvault-fault-proxy`.
#[derive(Parser)]
#[command(about = "HTTP proxy that injects seeded, reproducible faults in front of an S3 server")]
struct Args {
    /// Address to listen on (port 0 picks a free port; the chosen one is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// S3 server to forward to, e.g. http://127.0.0.1:3900.
    #[arg(long)]
    upstream: String,
    /// Seed of the generator that decides which requests get faults.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Probability, 0.0 to 1.0, that a request gets a fault.
    #[arg(long, default_value_t = 0.15)]
    rate: f64,
    /// Comma-separated fault modes (default: all): latency, 503, 500, reset, truncate, stall,
    /// stall-body.
    #[arg(long, value_delimiter = ',')]
    modes: Vec<FaultMode>,
    /// Comma-separated HTTP methods that may get faults, e.g. GET (default: all).
    #[arg(long, value_delimiter = ',')]
    methods: Vec<String>,
    /// Comma-separated strings; only requests whose path contains one get faults
    /// (default: all paths).
    #[arg(long, value_delimiter = ',')]
    paths: Vec<String>,
    /// Milliseconds added to every request, as a real region's round trip would.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = FaultConfig {
        seed: args.seed,
        rate: args.rate,
        modes: if args.modes.is_empty() {
            FaultMode::ALL.to_vec()
        } else {
            args.modes
        },
        methods: (!args.methods.is_empty()).then_some(args.methods),
        paths: (!args.paths.is_empty()).then_some(args.paths),
        latency: std::time::Duration::from_millis(args.latency_ms),
    };
    let proxy = FaultProxy::start_on(args.listen, &args.upstream, config)
        .await
        .with_context(|| format!("starting the fault proxy in front of {}", args.upstream))?;
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {}", proxy.addr())?;
        stdout.flush()?;
    }
    let mut down = signal(SignalKind::user_defined1()).context("installing a SIGUSR1 handler")?;
    let mut up = signal(SignalKind::user_defined2()).context("installing a SIGUSR2 handler")?;
    loop {
        tokio::select! {
            interrupted = tokio::signal::ctrl_c() => {
                interrupted.context("waiting for Ctrl-C")?;
                break;
            }
            _ = terminate.recv() => break,
            _ = down.recv() => {
                proxy.set_down(true);
                eprintln!("store down");
            }
            _ = up.recv() => {
                proxy.set_down(false);
                eprintln!("store up");
            }
        }
    }
    eprintln!("{}", proxy.stats());
    Ok(())
}
