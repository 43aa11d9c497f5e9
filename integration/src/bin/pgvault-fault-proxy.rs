//! `pgvault-fault-proxy`: the fault-injection proxy of the test harness as a standalone
//! process, so that benchmark and soak scripts can put a flaky network in front of an S3
//! server (see `pgvault_integration::fault_proxy`).
//!
//! It prints `listening on 127.0.0.1:PORT` on stdout once ready, runs until SIGTERM or
//! Ctrl-C, then prints the request and per-mode fault counts on stderr. SIGUSR1 makes the
//! store unreachable (every connection is closed) until SIGUSR2, for outage tests.
//! With `--tls-listen` it also accepts HTTPS (a throwaway certificate written to
//! `--tls-dir`) and forwards it to the proxy, for S3 clients that speak only HTTPS, such
//! as pgBackRest in the side-by-side benchmarks; it then prints `tls listening on …` too.

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
    /// Also accept HTTPS here, forwarded to the proxy (port 0 picks a free port).
    #[arg(long, requires = "tls_dir")]
    tls_listen: Option<SocketAddr>,
    /// Where the HTTPS certificate (a test CA and a leaf for localhost and 127.0.0.1) is
    /// written.
    #[arg(long)]
    tls_dir: Option<std::path::PathBuf>,
}

/// Accept HTTPS on `listen` and pipe each connection, decrypted, to the proxy at `proxy`.
async fn serve_tls(
    listen: SocketAddr,
    dir: &std::path::Path,
    proxy: SocketAddr,
) -> anyhow::Result<SocketAddr> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let pki = pgvault_integration::pki::Pki::generate(dir);
    let chain = CertificateDer::pem_file_iter(&pki.server_cert)
        .context("reading the server certificate")?
        .collect::<Result<Vec<_>, _>>()
        .context("reading the server certificate")?;
    let key = PrivateKeyDer::from_pem_file(&pki.server_key).context("reading the server key")?;
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("choosing TLS versions")?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .context("loading the server certificate")?;
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(proxy).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    Ok(addr)
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
    let tls = match (args.tls_listen, &args.tls_dir) {
        (Some(listen), Some(dir)) => Some(serve_tls(listen, dir, proxy.addr()).await?),
        _ => None,
    };
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {}", proxy.addr())?;
        if let Some(addr) = tls {
            writeln!(stdout, "tls listening on {addr}")?;
        }
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
