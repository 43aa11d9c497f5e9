//! An HTTP/1.1 proxy that injects faults between an S3 client and a real S3 server.
//!
//! pgvault must survive a flaky object store: throttling, server errors, connections reset
//! or cut in the middle of a download, servers that stop answering. Garage never does any
//! of that on loopback, so tests and benchmark scripts put a [`FaultProxy`] in front of it
//! and point the S3 client at [`FaultProxy::endpoint`] instead.
//!
//! For each request the proxy draws from a seeded generator: with probability
//! [`FaultConfig::rate`] the request gets one fault, picked uniformly among the enabled
//! [`FaultMode`]s; otherwise it is forwarded untouched. Bytes are forwarded verbatim (the
//! `Host` header too, because SigV4 signs it), over one fresh upstream connection per request.
//! Client connections are kept alive across requests. The sequence of decisions depends only
//! on the seed and the order in which requests arrive, so a single-connection test run is
//! reproducible; with concurrent connections the order, and so the assignment, may vary.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use socket2::SockRef;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Longest message head (request or status line plus headers) the proxy accepts.
const MAX_HEAD: u64 = 64 * 1024;
/// Longest chunk-size or trailer line in a chunked body.
const MAX_LINE: u64 = 8 * 1024;
/// Read buffer size of each side of a proxied connection.
const BUFFER: usize = 64 * 1024;
/// How long an `Expect: 100-continue` request waits for the upstream's answer before its
/// body is sent anyway (what curl does).
const CONTINUE_WAIT: Duration = Duration::from_secs(1);

/// One kind of fault; the names (`Display`/`FromStr`) are the ones scripts pass to
/// `pgvault-fault-proxy --modes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultMode {
    /// `latency`: forward normally after a random 50–500 ms delay.
    Latency,
    /// `503`: answer `503 Service Unavailable` with S3's `SlowDown` error, without forwarding.
    SlowDown,
    /// `500`: answer `500 Internal Server Error` with S3's `InternalError`, without forwarding.
    InternalError,
    /// `reset`: forward, send the response head and a random prefix of the body, then
    /// reset the TCP connection (RST).
    Reset,
    /// `truncate`: like `reset`, but close cleanly (FIN): the client gets a short body.
    Truncate,
    /// `stall`: read the request and never answer.
    Stall,
    /// `stall-body`: forward, send the head and part of the body, then send nothing more.
    StallBody,
    /// `403`: answer `403 Forbidden` with S3's `AccessDenied`, without forwarding: the
    /// store refusing credentials that lack a permission (e.g. deletes, with
    /// [`FaultConfig::with_methods`]). Not a fault a run survives by retrying, so it is not
    /// in [`FaultMode::ALL`]: tests name it.
    Forbidden,
}

impl FaultMode {
    /// Every mode, in the order used by [`FaultStats`].
    pub const ALL: [FaultMode; 7] = [
        FaultMode::Latency,
        FaultMode::SlowDown,
        FaultMode::InternalError,
        FaultMode::Reset,
        FaultMode::Truncate,
        FaultMode::Stall,
        FaultMode::StallBody,
    ];

    /// The name scripts use for this mode.
    pub fn name(self) -> &'static str {
        match self {
            FaultMode::Latency => "latency",
            FaultMode::SlowDown => "503",
            FaultMode::InternalError => "500",
            FaultMode::Reset => "reset",
            FaultMode::Truncate => "truncate",
            FaultMode::Stall => "stall",
            FaultMode::StallBody => "stall-body",
            FaultMode::Forbidden => "403",
        }
    }
}

impl fmt::Display for FaultMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FaultMode {
    type Err = String;

    fn from_str(s: &str) -> Result<FaultMode, String> {
        let s = s.trim();
        FaultMode::ALL
            .into_iter()
            .chain([FaultMode::Forbidden])
            .find(|mode| mode.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<&str> = FaultMode::ALL.iter().map(|m| m.name()).collect();
                format!(
                    "unknown fault mode {s:?} (expected one of {})",
                    names.join(", ")
                )
            })
    }
}

/// What a [`FaultProxy`] breaks, and how often.
#[derive(Debug, Clone)]
pub struct FaultConfig {
    /// Seed of the generator that decides each request's fate.
    pub seed: u64,
    /// Probability, 0.0 to 1.0, that a request gets a fault.
    pub rate: f64,
    /// Modes to pick from (uniformly); empty means no faults at all.
    pub modes: Vec<FaultMode>,
    /// When set, only requests with one of these methods (e.g. `GET`) get faults.
    pub methods: Option<Vec<String>>,
    /// When set, only requests whose target (path and query) contains one of these
    /// strings get faults, e.g. `dump.pgdump` to break one object's reads.
    pub paths: Option<Vec<String>>,
    /// Delay added to every request, faulted or not: the round trip of a real region
    /// (e.g. 40 ms) for benchmarks.
    pub latency: Duration,
}

impl FaultConfig {
    /// Faults of `modes` on a fraction `rate` of all requests.
    pub fn new(seed: u64, rate: f64, modes: &[FaultMode]) -> FaultConfig {
        FaultConfig {
            seed,
            rate,
            modes: modes.to_vec(),
            methods: None,
            paths: None,
            latency: Duration::ZERO,
        }
    }

    /// Add `latency` to every request.
    pub fn with_latency(mut self, latency: Duration) -> FaultConfig {
        self.latency = latency;
        self
    }

    /// Only fault requests whose target contains one of `paths`.
    pub fn with_paths(mut self, paths: &[&str]) -> FaultConfig {
        self.paths = Some(paths.iter().map(|p| p.to_string()).collect());
        self
    }

    /// Only fault requests with these methods, e.g. `&["GET"]` to break only downloads.
    pub fn with_methods(mut self, methods: &[&str]) -> FaultConfig {
        self.methods = Some(methods.iter().map(|m| m.to_string()).collect());
        self
    }
}

/// What the proxy has done so far, so a test can check that faults really happened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Requests received from clients (faulted or not).
    pub requests: u64,
    /// Faults injected, per enabled mode (enabled modes are present even at zero).
    pub faults: BTreeMap<FaultMode, u64>,
    /// Bytes forwarded to the server (request heads and bodies): what a client uploads.
    pub bytes_to_server: u64,
    /// Bytes forwarded back to clients (response heads and bodies): what a client
    /// downloads.
    pub bytes_to_clients: u64,
}

impl FaultStats {
    /// Faults of `mode` injected so far.
    pub fn count(&self, mode: FaultMode) -> u64 {
        self.faults.get(&mode).copied().unwrap_or(0)
    }

    /// Faults of all modes injected so far.
    pub fn total_faults(&self) -> u64 {
        self.faults.values().sum()
    }
}

impl fmt::Display for FaultStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "requests={} faults={}",
            self.requests,
            self.total_faults()
        )?;
        for (mode, count) in &self.faults {
            write!(f, " {mode}={count}")?;
        }
        write!(
            f,
            " bytes_to_server={} bytes_to_clients={}",
            self.bytes_to_server, self.bytes_to_clients
        )
    }
}

/// The fate of one request.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Decision {
    fault: Option<FaultMode>,
    /// Delay for [`FaultMode::Latency`].
    delay: Duration,
    /// Fraction, in [0, 1), of the response that cutting modes send before breaking.
    cut: f64,
}

/// The seeded generator and the counters, behind one mutex.
struct Chooser {
    rng: StdRng,
    rate: f64,
    modes: Vec<FaultMode>,
    methods: Option<Vec<String>>,
    paths: Option<Vec<String>>,
    stats: FaultStats,
}

impl Chooser {
    fn new(config: &FaultConfig) -> Chooser {
        Chooser {
            rng: StdRng::seed_from_u64(config.seed),
            rate: config.rate,
            modes: config.modes.clone(),
            methods: config.methods.clone(),
            paths: config.paths.clone(),
            stats: FaultStats {
                bytes_to_server: 0,
                bytes_to_clients: 0,
                requests: 0,
                faults: config.modes.iter().map(|&mode| (mode, 0)).collect(),
            },
        }
    }

    fn decide(&mut self, method: &str, target: &str) -> Decision {
        // Every request draws the same four numbers, so request i's fate depends only on the
        // seed and i, whatever the method filter and the rate.
        let roll: f64 = self.rng.gen();
        let pick = self.rng.gen_range(0..self.modes.len().max(1));
        let delay = Duration::from_millis(self.rng.gen_range(50..=500));
        let cut: f64 = self.rng.gen();
        self.stats.requests += 1;
        let eligible = self
            .methods
            .as_ref()
            .is_none_or(|methods| methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
            && self
                .paths
                .as_ref()
                .is_none_or(|paths| paths.iter().any(|p| target.contains(p.as_str())));
        let fault = if eligible && roll < self.rate {
            self.modes.get(pick).copied()
        } else {
            None
        };
        if let Some(mode) = fault {
            *self.stats.faults.entry(mode).or_insert(0) += 1;
        }
        Decision { fault, delay, cut }
    }
}

/// State shared by all connections of one proxy.
struct Shared {
    upstream: SocketAddr,
    chooser: Mutex<Chooser>,
    /// Added to every request ([`FaultConfig::latency`]).
    latency: Duration,
    /// While set, the store is unreachable: connections are closed at once.
    down: AtomicBool,
    /// Bytes forwarded to the upstream.
    bytes_up: AtomicU64,
    /// Bytes forwarded to clients.
    bytes_down: AtomicU64,
}

/// A writer that counts the bytes written through it, for [`FaultStats`]' byte totals.
struct Counted<'a, W> {
    inner: &'a mut W,
    count: &'a AtomicU64,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Counted<'_, W> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut *this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &polled {
            this.count.fetch_add(*n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}

impl Shared {
    fn chooser(&self) -> std::sync::MutexGuard<'_, Chooser> {
        self.chooser.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running fault-injection proxy; dropping it stops it and closes its connections.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy on `127.0.0.1:<free port>` in front of `upstream`
    /// (`http://host:port` or `host:port`), spawned on the current tokio runtime.
    pub async fn start(upstream: &str, config: FaultConfig) -> io::Result<FaultProxy> {
        FaultProxy::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), upstream, config).await
    }

    /// Like [`FaultProxy::start`], listening on `listen` (for `pgvault-fault-proxy --listen`).
    pub async fn start_on(
        listen: SocketAddr,
        upstream: &str,
        config: FaultConfig,
    ) -> io::Result<FaultProxy> {
        let (listener, shared) = bind(listen, upstream, &config).await?;
        let addr = listener.local_addr()?;
        let (shutdown, stop) = watch::channel(false);
        tokio::spawn(accept_loop(listener, shared.clone(), stop));
        Ok(FaultProxy {
            addr,
            shared,
            shutdown,
            thread: None,
        })
    }

    /// Starts a proxy on its own thread and tokio runtime, for synchronous tests (or async
    /// tests that must not depend on their runtime's scheduling). Dropping the handle stops
    /// the proxy and joins the thread.
    pub fn start_in_background(upstream: &str, config: FaultConfig) -> io::Result<FaultProxy> {
        let upstream = upstream.to_string();
        let (shutdown, mut stop) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("fault-proxy".to_string())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                // The proxy runs on this thread's runtime until the caller's handle is
                // dropped; then dropping `inner` and the runtime ends every connection.
                runtime.block_on(async {
                    match FaultProxy::start(&upstream, config).await {
                        Ok(inner) => {
                            if ready_tx
                                .send(Ok((inner.addr, inner.shared.clone())))
                                .is_ok()
                            {
                                let _ = stop.wait_for(|stopped| *stopped).await;
                            }
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })?;
        let (addr, shared) = ready_rx
            .recv()
            .map_err(|_| io::Error::other("the fault proxy thread died while starting"))??;
        Ok(FaultProxy {
            addr,
            shared,
            shutdown,
            thread: Some(thread),
        })
    }

    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL to give the S3 client: `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests seen and faults injected so far.
    pub fn stats(&self) -> FaultStats {
        let mut stats = self.shared.chooser().stats.clone();
        stats.bytes_to_server = self.shared.bytes_up.load(Ordering::Relaxed);
        stats.bytes_to_clients = self.shared.bytes_down.load(Ordering::Relaxed);
        stats
    }

    /// Changes the fault rate from now on; `0.0` lets a test inspect the bucket afterwards
    /// through the same endpoint.
    pub fn set_rate(&self, rate: f64) {
        self.shared.chooser().rate = rate;
    }

    /// Makes the store unreachable (`true`: every connection, new or open, is closed
    /// without an answer) or reachable again, as an outage of the region would.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Resolves the upstream and binds the listener.
async fn bind(
    listen: SocketAddr,
    upstream: &str,
    config: &FaultConfig,
) -> io::Result<(TcpListener, Arc<Shared>)> {
    let host_port = upstream_host_port(upstream)?;
    let upstream = tokio::net::lookup_host(host_port)
        .await?
        .next()
        .ok_or_else(|| invalid(format!("upstream {host_port} resolves to no address")))?;
    let listener = TcpListener::bind(listen).await?;
    let shared = Arc::new(Shared {
        upstream,
        chooser: Mutex::new(Chooser::new(config)),
        latency: config.latency,
        down: AtomicBool::new(false),
        bytes_up: AtomicU64::new(0),
        bytes_down: AtomicU64::new(0),
    });
    Ok((listener, shared))
}

/// `host:port` out of `http://host:port[/]` or `host:port`.
fn upstream_host_port(url: &str) -> io::Result<&str> {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or(url)
        .trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') {
        return Err(invalid(format!(
            "upstream {url:?} is not http://host:port (the proxy speaks plain HTTP only)"
        )));
    }
    Ok(rest)
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Accepts clients until shutdown; each connection is served by its own task, which also
/// ends (closing the connection) at shutdown.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let shared = shared.clone();
                let mut stop = stop.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve_client(stream, &shared) => {}
                        _ = stop.wait_for(|stopped| *stopped) => {}
                    }
                });
            }
            // Out of file descriptors or similar: back off rather than spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// One side of a proxied exchange: a socket with a read buffer (writes go straight through).
type Conn = BufReader<TcpStream>;

/// Serves requests on one client connection until it closes, an I/O error happens on
/// either side (the connection is then dropped, as a real server would), or a fault ends it.
async fn serve_client(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    let mut client = BufReader::with_capacity(BUFFER, stream);
    while !shared.down.load(Ordering::SeqCst) {
        if !matches!(serve_request(&mut client, shared).await, Ok(true)) {
            break;
        }
    }
}

/// Serves one request; `Ok(true)` when the connection can carry another one.
async fn serve_request(client: &mut Conn, shared: &Shared) -> io::Result<bool> {
    let Some(request) = read_head(client).await? else {
        return Ok(false);
    };
    let method = request.start.first().cloned().unwrap_or_default();
    let request_body = request.request_body()?;
    let target = request.start.get(1).cloned().unwrap_or_default();
    if shared.down.load(Ordering::SeqCst) {
        return Ok(false);
    }
    if !shared.latency.is_zero() {
        tokio::time::sleep(shared.latency).await;
    }
    let decision = shared.chooser().decide(&method, &target);
    match decision.fault {
        Some(FaultMode::Stall) => {
            hold(client).await;
            return Ok(false);
        }
        Some(mode @ (FaultMode::SlowDown | FaultMode::InternalError | FaultMode::Forbidden)) => {
            return answer_error(client, &request, request_body, mode).await;
        }
        Some(FaultMode::Latency) => tokio::time::sleep(decision.delay).await,
        _ => {}
    }

    let stream = TcpStream::connect(shared.upstream).await?;
    let _ = stream.set_nodelay(true);
    let mut upstream = BufReader::with_capacity(BUFFER, stream);
    upstream.write_all(&request.raw).await?;
    let (up, down) = (&shared.bytes_up, &shared.bytes_down);
    up.fetch_add(request.raw.len() as u64, Ordering::Relaxed);
    let mut body_sent = false;
    if request.expects_continue() && request_body != Body::Empty {
        // Let the upstream's `100 Continue` (or early final answer) through before the body;
        // if it says nothing for a while, send the body anyway.
        if let Ok(ready) = tokio::time::timeout(CONTINUE_WAIT, upstream.fill_buf()).await {
            ready?;
        } else {
            copy_body(
                client,
                request_body,
                &mut Counted {
                    inner: &mut upstream,
                    count: up,
                },
            )
            .await?;
            body_sent = true;
        }
    } else {
        copy_body(
            client,
            request_body,
            &mut Counted {
                inner: &mut upstream,
                count: up,
            },
        )
        .await?;
        body_sent = true;
    }
    // Interim 1xx answers go to the client as they come; the body follows a `100 Continue`.
    let response = loop {
        let head = read_head(&mut upstream)
            .await?
            .ok_or_else(|| invalid("upstream closed without answering"))?;
        let status = head.status()?;
        if !(100..200).contains(&status) || status == 101 {
            break head;
        }
        client.write_all(&head.raw).await?;
        if status == 100 && !body_sent {
            copy_body(
                client,
                request_body,
                &mut Counted {
                    inner: &mut upstream,
                    count: up,
                },
            )
            .await?;
            body_sent = true;
        }
    };
    let response_body = response.response_body(&method)?;

    if let Some(mode @ (FaultMode::Reset | FaultMode::Truncate | FaultMode::StallBody)) =
        decision.fault
    {
        let mut body = Vec::new();
        copy_body(&mut upstream, response_body, &mut body).await?;
        // A prefix of the body; of the head when there is no body, so that the client
        // always sees a broken response.
        if body.is_empty() {
            client
                .write_all(&response.raw[..cut_at(response.raw.len(), decision.cut)])
                .await?;
        } else {
            client.write_all(&response.raw).await?;
            client
                .write_all(&body[..cut_at(body.len(), decision.cut)])
                .await?;
        }
        client.flush().await?;
        match mode {
            // SO_LINGER 0: closing the socket (when the caller drops it) sends RST.
            FaultMode::Reset => SockRef::from(client.get_ref()).set_linger(Some(Duration::ZERO))?,
            FaultMode::Truncate => {
                client.shutdown().await?;
                hold(client).await;
            }
            _ => hold(client).await,
        }
        return Ok(false);
    }

    client.write_all(&response.raw).await?;
    down.fetch_add(response.raw.len() as u64, Ordering::Relaxed);
    copy_body(
        &mut upstream,
        response_body,
        &mut Counted {
            inner: client,
            count: down,
        },
    )
    .await?;
    client.flush().await?;
    if !body_sent {
        // Refused before the body: the client may or may not send it, so end the connection,
        // gently, so that it reads the answer before it sees the close.
        client.shutdown().await?;
        hold(client).await;
        return Ok(false);
    }
    Ok(!request.closes() && !response.closes() && response_body != Body::UntilClose)
}

/// How many of `len` bytes a cutting fault sends: a fraction `cut` of them, always fewer
/// than all of them (zero when there are none).
fn cut_at(len: usize, cut: f64) -> usize {
    ((len as f64 * cut) as usize).min(len.saturating_sub(1))
}

/// Answers with an S3 error for the `503`/`500`/`403` modes, without contacting the upstream.
async fn answer_error(
    client: &mut Conn,
    request: &Head,
    body: Body,
    mode: FaultMode,
) -> io::Result<bool> {
    let (status, code, message) = if mode == FaultMode::SlowDown {
        (
            "503 Service Unavailable",
            "SlowDown",
            "Please reduce your request rate.",
        )
    } else if mode == FaultMode::Forbidden {
        ("403 Forbidden", "AccessDenied", "Access Denied")
    } else {
        (
            "500 Internal Server Error",
            "InternalError",
            "We encountered an internal error. Please try again.",
        )
    };
    // A client waiting for `100 Continue` will not send its body: answer, then close.
    let waiting = request.expects_continue() && body != Body::Empty;
    if !waiting {
        copy_body(client, body, &mut tokio::io::sink()).await?;
    }
    let close = waiting || request.closes();
    let xml = format!("<Error><Code>{code}</Code><Message>{message}</Message></Error>");
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n{}\r\n",
        xml.len(),
        if close { "Connection: close\r\n" } else { "" }
    );
    client.write_all(head.as_bytes()).await?;
    if !request.is_head() {
        client.write_all(xml.as_bytes()).await?;
    }
    client.flush().await?;
    if close {
        client.shutdown().await?;
        hold(client).await;
    }
    Ok(!close)
}

/// Keeps a connection open, sending nothing, until the client closes it (or the proxy
/// shuts down, which drops this task); whatever the client sends is read and discarded.
async fn hold(client: &mut Conn) {
    let mut buf = vec![0u8; 4096];
    while let Ok(n) = client.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// How a message body is delimited (RFC 9112 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Empty,
    Length(u64),
    Chunked,
    /// Response without length: the body ends when the upstream closes.
    UntilClose,
}

/// A parsed message head; `raw` is what is forwarded.
#[derive(Debug)]
struct Head {
    raw: Vec<u8>,
    /// Request line (method, target, version) or status line (version, status, reason).
    start: Vec<String>,
    /// Header names in lower case, values trimmed.
    headers: Vec<(String, String)>,
}

impl Head {
    fn parse(raw: Vec<u8>) -> io::Result<Head> {
        let text = String::from_utf8_lossy(&raw).into_owned();
        let mut lines = text.lines();
        let start = lines
            .next()
            .unwrap_or_default()
            .splitn(3, ' ')
            .map(str::to_string)
            .collect();
        let mut headers = Vec::new();
        for line in lines.filter(|line| !line.is_empty()) {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| invalid(format!("malformed header line {line:?}")))?;
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        Ok(Head {
            raw,
            start,
            headers,
        })
    }

    /// True when a comma-separated header `name` lists `token`.
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, value)| value.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn content_length(&self) -> io::Result<Option<u64>> {
        let mut length = None;
        for (_, value) in self.headers.iter().filter(|(n, _)| n == "content-length") {
            let n = value
                .parse::<u64>()
                .map_err(|_| invalid(format!("bad Content-Length {value:?}")))?;
            if length.is_some_and(|l| l != n) {
                return Err(invalid("conflicting Content-Length headers"));
            }
            length = Some(n);
        }
        Ok(length)
    }

    fn status(&self) -> io::Result<u16> {
        self.start
            .get(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid(format!("bad status line {:?}", self.start)))
    }

    fn is_head(&self) -> bool {
        self.start
            .first()
            .is_some_and(|m| m.eq_ignore_ascii_case("HEAD"))
    }

    fn closes(&self) -> bool {
        self.has_token("connection", "close")
    }

    fn expects_continue(&self) -> bool {
        self.has_token("expect", "100-continue")
    }

    fn request_body(&self) -> io::Result<Body> {
        Ok(if self.has_token("transfer-encoding", "chunked") {
            Body::Chunked
        } else {
            self.content_length()?.map_or(Body::Empty, Body::Length)
        })
    }

    fn response_body(&self, request_method: &str) -> io::Result<Body> {
        let status = self.status()?;
        Ok(
            if request_method.eq_ignore_ascii_case("HEAD")
                || (100..200).contains(&status)
                || status == 204
                || status == 304
            {
                Body::Empty
            } else if self.has_token("transfer-encoding", "chunked") {
                Body::Chunked
            } else {
                self.content_length()?
                    .map_or(Body::UntilClose, Body::Length)
            },
        )
    }
}

/// Reads a message head; `None` on a clean end of stream before it.
async fn read_head<R: AsyncBufRead + Unpin>(from: &mut R) -> io::Result<Option<Head>> {
    let mut raw = Vec::new();
    loop {
        let start = raw.len();
        let room = MAX_HEAD.saturating_sub(start as u64);
        let n = (&mut *from).take(room).read_until(b'\n', &mut raw).await?;
        if n == 0 && raw.is_empty() {
            return Ok(None);
        }
        if !raw.ends_with(b"\n") {
            return Err(invalid("message head truncated or too long"));
        }
        if matches!(&raw[start..], b"\r\n" | b"\n") {
            if start == 0 {
                raw.clear(); // stray empty line before a message (RFC 9112 §2.2)
                continue;
            }
            return Head::parse(raw).map(Some);
        }
    }
}

/// Copies one body, framed as `body`, verbatim (chunk framing included).
async fn copy_body<R, W>(from: &mut R, body: Body, to: &mut W) -> io::Result<()>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match body {
        Body::Empty => Ok(()),
        Body::Length(n) => copy_exact(from, n, to).await,
        Body::UntilClose => tokio::io::copy_buf(from, to).await.map(drop),
        Body::Chunked => {
            let mut line = Vec::new();
            loop {
                read_line(from, &mut line).await?;
                to.write_all(&line).await?;
                let text = String::from_utf8_lossy(&line);
                let digits = text.split(|c: char| c == ';' || c.is_whitespace()).next();
                let size = u64::from_str_radix(digits.unwrap_or_default(), 16)
                    .map_err(|_| invalid(format!("bad chunk size line {text:?}")))?;
                if size == 0 {
                    break;
                }
                copy_exact(from, size + 2, to).await?; // data and its CRLF
            }
            // Trailer fields, up to an empty line.
            loop {
                read_line(from, &mut line).await?;
                to.write_all(&line).await?;
                if line == b"\r\n" || line == b"\n" {
                    return Ok(());
                }
            }
        }
    }
}

/// Replaces `line` with the next line of `from` (with its line ending).
async fn read_line<R: AsyncBufRead + Unpin>(from: &mut R, line: &mut Vec<u8>) -> io::Result<()> {
    line.clear();
    (&mut *from).take(MAX_LINE).read_until(b'\n', line).await?;
    if line.ends_with(b"\n") {
        Ok(())
    } else {
        Err(invalid("chunked body truncated or line too long"))
    }
}

/// Copies exactly `n` bytes; fewer is an error.
async fn copy_exact<R, W>(from: &mut R, n: u64, to: &mut W) -> io::Result<()>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let copied = tokio::io::copy_buf(&mut (&mut *from).take(n), to).await?;
    if copied < n {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("body ended after {copied} of {n} bytes"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    const BIG: usize = 1 << 20;
    const CHUNKED: &[u8] = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n";
    const WAIT: Duration = Duration::from_secs(1);

    fn big_body() -> Vec<u8> {
        (0..BIG).map(|i| (i % 251) as u8).collect()
    }

    /// A tiny upstream: PUT answers the received body length (after `100 Continue` when
    /// asked), `/chunked` answers chunked, `/empty` 204, anything else 1 MiB (headers only
    /// for HEAD). Returns its address and the number of requests it received.
    async fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(upstream_connection(stream, counter.clone()));
            }
        });
        (addr, seen)
    }

    async fn upstream_connection(stream: TcpStream, seen: Arc<AtomicUsize>) -> io::Result<()> {
        let mut conn = BufReader::new(stream);
        while let Some(request) = read_head(&mut conn).await? {
            seen.fetch_add(1, Ordering::SeqCst);
            match (request.start[0].as_str(), request.start[1].as_str()) {
                ("PUT", _) => {
                    if request.expects_continue() {
                        conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
                    }
                    let mut body = Vec::new();
                    copy_body(&mut conn, request.request_body()?, &mut body).await?;
                    let len = body.len().to_string();
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{len}",
                        len.len()
                    );
                    conn.write_all(answer.as_bytes()).await?;
                }
                (_, "/chunked") => {
                    conn.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                        .await?;
                    conn.write_all(CHUNKED).await?;
                }
                (_, "/empty") => conn.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await?,
                (method, _) => {
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n");
                    conn.write_all(head.as_bytes()).await?;
                    if method != "HEAD" {
                        conn.write_all(&big_body()).await?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn start_proxy(config: FaultConfig) -> (FaultProxy, Arc<AtomicUsize>) {
        let (up, seen) = upstream().await;
        let proxy = FaultProxy::start(&format!("http://{up}/"), config)
            .await
            .unwrap();
        (proxy, seen)
    }

    async fn connect(proxy: &FaultProxy) -> Conn {
        BufReader::new(TcpStream::connect(proxy.addr()).await.unwrap())
    }

    /// Status and raw body (chunk framing included) of one response.
    async fn send(
        conn: &mut Conn,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> io::Result<(u16, Vec<u8>)> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: s3.test\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).await?;
        conn.write_all(body).await?;
        reply(conn, method).await
    }

    async fn reply(conn: &mut Conn, method: &str) -> io::Result<(u16, Vec<u8>)> {
        let head = read_head(conn).await?.ok_or(io::ErrorKind::UnexpectedEof)?;
        let mut body = Vec::new();
        copy_body(conn, head.response_body(method)?, &mut body).await?;
        Ok((head.status()?, body))
    }

    #[tokio::test]
    async fn passes_everything_through_on_one_keep_alive_connection() {
        let (proxy, seen) = start_proxy(FaultConfig::new(1, 0.0, &FaultMode::ALL)).await;
        let mut conn = connect(&proxy).await;
        assert_eq!(
            send(&mut conn, "GET", "/big", b"").await.unwrap(),
            (200, big_body())
        );
        let upload = vec![7u8; 100_000];
        assert_eq!(
            send(&mut conn, "PUT", "/up", &upload).await.unwrap(),
            (200, b"100000".to_vec())
        );
        assert_eq!(
            send(&mut conn, "HEAD", "/big", b"").await.unwrap(),
            (200, vec![])
        );
        assert_eq!(
            send(&mut conn, "GET", "/chunked", b"").await.unwrap(),
            (200, CHUNKED.to_vec())
        );
        assert_eq!(
            send(&mut conn, "GET", "/empty", b"").await.unwrap(),
            (204, vec![])
        );

        // Chunked upload, then an upload that waits for the upstream's 100 Continue.
        conn.write_all(b"PUT /up HTTP/1.1\r\nHost: s3.test\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        conn.write_all(CHUNKED).await.unwrap();
        let expected = CHUNKED.len().to_string().into_bytes();
        assert_eq!(reply(&mut conn, "PUT").await.unwrap(), (200, expected));
        conn.write_all(b"PUT /up HTTP/1.1\r\nHost: s3.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n").await.unwrap();
        let interim = read_head(&mut conn).await.unwrap().unwrap();
        assert_eq!(interim.status().unwrap(), 100);
        conn.write_all(b"abcde").await.unwrap();
        assert_eq!(reply(&mut conn, "PUT").await.unwrap(), (200, b"5".to_vec()));

        assert_eq!(seen.load(Ordering::SeqCst), 7);
        let stats = proxy.stats();
        assert_eq!((stats.requests, stats.total_faults()), (7, 0));
        // Every body byte is counted once in its direction, plus the heads.
        let up_bodies = (100_000 + CHUNKED.len() + 5) as u64;
        let down_bodies = (BIG + CHUNKED.len()) as u64;
        assert!(
            (up_bodies..up_bodies + 2_000).contains(&stats.bytes_to_server),
            "{stats}"
        );
        assert!(
            (down_bodies..down_bodies + 2_000).contains(&stats.bytes_to_clients),
            "{stats}"
        );
    }

    #[tokio::test]
    async fn a_fixed_latency_delays_every_request_and_down_closes_connections() {
        let latency = Duration::from_millis(40);
        let (proxy, seen) = start_proxy(FaultConfig::new(9, 0.0, &[]).with_latency(latency)).await;
        let mut conn = connect(&proxy).await;
        let started = Instant::now();
        for _ in 0..3 {
            assert_eq!(send(&mut conn, "GET", "/empty", b"").await.unwrap().0, 204);
        }
        // Sleeping never ends early, so three requests take at least three delays.
        assert!(started.elapsed() >= latency * 3);

        proxy.set_down(true);
        assert!(send(&mut conn, "GET", "/empty", b"").await.is_err());
        let mut fresh = connect(&proxy).await;
        assert!(send(&mut fresh, "GET", "/empty", b"").await.is_err());
        assert_eq!(
            seen.load(Ordering::SeqCst),
            3,
            "nothing reaches the store while down"
        );
        proxy.set_down(false);
        let mut again = connect(&proxy).await;
        assert_eq!(send(&mut again, "GET", "/empty", b"").await.unwrap().0, 204);
    }

    #[tokio::test]
    async fn error_modes_answer_without_forwarding_and_keep_the_connection() {
        let (proxy, seen) = start_proxy(FaultConfig::new(2, 1.0, &[FaultMode::SlowDown])).await;
        let mut conn = connect(&proxy).await;
        let (status, body) = send(&mut conn, "PUT", "/up", &[1u8; 50_000]).await.unwrap();
        assert_eq!(status, 503);
        assert!(String::from_utf8(body)
            .unwrap()
            .contains("<Code>SlowDown</Code>"));
        assert_eq!(
            send(&mut conn, "HEAD", "/big", b"").await.unwrap(),
            (503, vec![])
        );
        assert_eq!(send(&mut conn, "GET", "/big", b"").await.unwrap().0, 503);
        assert_eq!(seen.load(Ordering::SeqCst), 0);
        assert_eq!(proxy.stats().count(FaultMode::SlowDown), 3);
        proxy.set_rate(0.0);
        assert_eq!(
            send(&mut conn, "GET", "/big", b"").await.unwrap(),
            (200, big_body())
        );

        let (proxy, _) = start_proxy(FaultConfig::new(3, 1.0, &[FaultMode::InternalError])).await;
        let mut conn = connect(&proxy).await;
        let (status, body) = send(&mut conn, "GET", "/big", b"").await.unwrap();
        assert_eq!(status, 500);
        assert!(String::from_utf8(body)
            .unwrap()
            .contains("<Code>InternalError</Code>"));
    }

    #[tokio::test]
    async fn reset_resets_and_truncate_cuts_the_body() {
        let (proxy, _) = start_proxy(FaultConfig::new(4, 1.0, &[FaultMode::Reset])).await;
        let mut conn = connect(&proxy).await;
        conn.write_all(b"GET /big HTTP/1.1\r\nHost: s3.test\r\n\r\n")
            .await
            .unwrap();
        let mut received = Vec::new();
        let error = conn.read_to_end(&mut received).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
        assert!(received.len() < BIG);
        assert_eq!(proxy.stats().count(FaultMode::Reset), 1);

        let (proxy, _) = start_proxy(FaultConfig::new(5, 1.0, &[FaultMode::Truncate])).await;
        let mut conn = connect(&proxy).await;
        conn.write_all(b"GET /big HTTP/1.1\r\nHost: s3.test\r\n\r\n")
            .await
            .unwrap();
        let head = read_head(&mut conn).await.unwrap().unwrap();
        assert_eq!(head.response_body("GET").unwrap(), Body::Length(BIG as u64));
        let mut received = Vec::new();
        conn.read_to_end(&mut received).await.unwrap();
        assert!(received.len() < BIG);
        assert_eq!(received[..], big_body()[..received.len()]);
    }

    #[tokio::test]
    async fn stalls_hold_the_connection_until_shutdown() {
        let (proxy, seen) = start_proxy(FaultConfig::new(6, 1.0, &[FaultMode::Stall])).await;
        let mut conn = connect(&proxy).await;
        conn.write_all(b"GET /big HTTP/1.1\r\nHost: s3.test\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        assert!(tokio::time::timeout(WAIT, conn.read(&mut buf))
            .await
            .is_err());
        assert_eq!(seen.load(Ordering::SeqCst), 0);
        drop(proxy);
        let closed = tokio::time::timeout(WAIT * 5, conn.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(closed, Ok(0) | Err(_)));

        let (proxy, _) = start_proxy(FaultConfig::new(7, 1.0, &[FaultMode::StallBody])).await;
        let mut conn = connect(&proxy).await;
        conn.write_all(b"GET /big HTTP/1.1\r\nHost: s3.test\r\n\r\n")
            .await
            .unwrap();
        let head = read_head(&mut conn).await.unwrap().unwrap();
        assert_eq!(head.status().unwrap(), 200);
        let mut received = Vec::new();
        assert!(tokio::time::timeout(WAIT, conn.read_to_end(&mut received))
            .await
            .is_err());
        assert!(received.len() < BIG);
    }

    #[tokio::test]
    async fn latency_delays_but_delivers() {
        let (proxy, _) = start_proxy(FaultConfig::new(8, 1.0, &[FaultMode::Latency])).await;
        let mut conn = connect(&proxy).await;
        let started = Instant::now();
        assert_eq!(
            send(&mut conn, "GET", "/big", b"").await.unwrap(),
            (200, big_body())
        );
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(proxy.stats().count(FaultMode::Latency), 1);
    }

    #[tokio::test]
    async fn method_filter_spares_other_methods() {
        let config = FaultConfig::new(9, 1.0, &[FaultMode::SlowDown]).with_methods(&["get"]);
        let (proxy, _) = start_proxy(config).await;
        let mut conn = connect(&proxy).await;
        assert_eq!(
            send(&mut conn, "PUT", "/up", b"xyz").await.unwrap(),
            (200, b"3".to_vec())
        );
        assert_eq!(send(&mut conn, "GET", "/big", b"").await.unwrap().0, 503);
        let stats = proxy.stats();
        assert_eq!((stats.requests, stats.count(FaultMode::SlowDown)), (2, 1));
        // The refused GET never reached the server: only the PUT's bytes are counted.
        assert!(
            stats
                .to_string()
                .starts_with("requests=2 faults=1 503=1 bytes_to_server="),
            "{stats}"
        );
        assert!(
            stats.bytes_to_server > 3 && stats.bytes_to_clients > 1,
            "{stats}"
        );
    }

    #[test]
    fn decisions_are_deterministic_for_a_seed() {
        let config = FaultConfig::new(42, 0.5, &FaultMode::ALL);
        let run = |config: &FaultConfig| {
            let mut chooser = Chooser::new(config);
            (0..200)
                .map(|_| chooser.decide("GET", "/"))
                .collect::<Vec<_>>()
        };
        let first = run(&config);
        assert_eq!(first, run(&config));
        assert_ne!(first, run(&FaultConfig::new(43, 0.5, &FaultMode::ALL)));
        let faults = first.iter().filter(|d| d.fault.is_some()).count();
        assert!(
            (50..150).contains(&faults),
            "{faults} faults in 200 at rate 0.5"
        );
        for mode in FaultMode::ALL {
            assert!(
                first.iter().any(|d| d.fault == Some(mode)),
                "{mode} never drawn"
            );
        }
    }

    #[test]
    fn modes_and_upstreams_parse() {
        for mode in FaultMode::ALL {
            assert_eq!(mode.to_string().parse::<FaultMode>(), Ok(mode));
        }
        assert!("explode".parse::<FaultMode>().is_err());
        assert_eq!(
            upstream_host_port("http://127.0.0.1:3900/").unwrap(),
            "127.0.0.1:3900"
        );
        assert_eq!(
            upstream_host_port("localhost:3900").unwrap(),
            "localhost:3900"
        );
        assert!(upstream_host_port("https://s3.amazonaws.com").is_err());
    }

    #[test]
    fn background_proxy_serves_synchronous_tests() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (up, _) = runtime.block_on(upstream());
        let proxy =
            FaultProxy::start_in_background(&up.to_string(), FaultConfig::new(10, 0.0, &[]))
                .unwrap();
        assert_eq!(proxy.endpoint(), format!("http://{}", proxy.addr()));
        let reply = runtime.block_on(async {
            let mut conn = connect(&proxy).await;
            send(&mut conn, "GET", "/big", b"").await.unwrap()
        });
        assert_eq!(reply, (200, big_body()));
        let addr = proxy.addr();
        drop(proxy);
        assert!(std::net::TcpStream::connect(addr).is_err());
    }
}
