//! Harness for pgvault's end-to-end tests: real PostgreSQL clusters ([`cluster`]), a real
//! S3-compatible server ([`s3server`]), and the built `pgvault` binary.
//!
//! `scripts/test.sh` builds the binaries before running the tests and exports
//! `PGVAULT_TEST_REQUIRE_SERVERS=1`, so that in CI a missing server fails instead of skipping.

pub mod archiving;
pub mod cluster;
pub mod fault_proxy;
pub mod majors;
pub mod pki;
pub mod s3server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use cluster::PgCluster;
pub use s3server::S3Server;

/// The built `pgvault` binary (`PGVAULT_BIN`, else `target/debug/pgvault`).
pub fn pgvault_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PGVAULT_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/pgvault");
    assert!(
        bin.exists(),
        "{} does not exist: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// An age key pair generated for one test.
pub struct TestKey {
    /// The identity file.
    pub identity: PathBuf,
    /// The recipient (`age1…`).
    pub recipient: String,
}

/// Generate a key pair in `dir` with `pgvault keygen`.
pub fn keygen(dir: &Path, name: &str) -> TestKey {
    let identity = dir.join(format!("{name}.key"));
    let out = Command::new(pgvault_bin())
        .arg("keygen")
        .arg("--output")
        .arg(&identity)
        .output()
        .unwrap_or_else(|e| panic!("cannot run pgvault keygen: {e}"));
    assert!(
        out.status.success(),
        "keygen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    TestKey {
        identity,
        recipient: String::from_utf8_lossy(&out.stdout).trim().to_string(),
    }
}

/// Where a test's repository lives.
pub enum RepoSpec<'a> {
    /// A directory.
    Filesystem(&'a Path),
    /// A bucket and prefix on the test S3 server.
    S3 {
        /// The server.
        server: &'a S3Server,
        /// The bucket.
        bucket: &'a str,
        /// Key prefix (may be empty).
        prefix: &'a str,
    },
}

/// Write a policy file for `source_url` and return its path.
pub fn write_policy(
    dir: &Path,
    name: &str,
    source_url: &str,
    repo: &RepoSpec,
    recipient: &str,
    extra: &str,
) -> PathBuf {
    let repository = match repo {
        RepoSpec::Filesystem(path) => format!("url = \"file://{}\"\n", path.display()),
        RepoSpec::S3 {
            server,
            bucket,
            prefix,
        } => format!(
            "url = \"s3://{bucket}/{prefix}\"\nendpoint = \"{}\"\nregion = \"{}\"\n",
            server.endpoint, server.region
        ),
    };
    let text = format!(
        "name = \"{name}\"\n[source]\nurl = \"{source_url}\"\n[repository]\n{repository}[encryption]\nrecipients = [\"{recipient}\"]\n[compression]\nlevel = 3\n{extra}"
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write policy: {e}"));
    path
}

/// A policy named `app` for `source_url`, in a fresh bucket and prefix of `server` that
/// no other test uses, written in `dir` with `extra` appended. Returns the bucket, the
/// prefix and the policy file.
pub fn s3_policy(
    server: &S3Server,
    dir: &Path,
    source_url: &str,
    recipient: &str,
    extra: &str,
) -> (String, String, PathBuf) {
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("tokio runtime: {e}"));
    let (bucket, prefix) = runtime.block_on(server.fresh_location());
    let policy = write_policy(
        dir,
        "app",
        source_url,
        &RepoSpec::S3 {
            server,
            bucket: &bucket,
            prefix: &prefix,
        },
        recipient,
        extra,
    );
    (bucket, prefix, policy)
}

/// A `pgvault` command with S3 credentials of `server` (if any) in its environment.
pub fn pgvault(server: Option<&S3Server>) -> Command {
    let mut cmd = Command::new(pgvault_bin());
    cmd.env_remove("AWS_PROFILE");
    if let Some(s) = server {
        cmd.env("AWS_ACCESS_KEY_ID", &s.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &s.secret_access_key)
            .env("AWS_REGION", &s.region)
            .env("AWS_EC2_METADATA_DISABLED", "true");
    }
    cmd
}

/// An `archive_command` running `pgvault wal-push` for `policy` with `server`'s S3
/// credentials (the server's own environment has none).
pub fn s3_archive_command(server: &S3Server, policy: &Path) -> String {
    format!(
        "env AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY={} AWS_REGION={} AWS_EC2_METADATA_DISABLED=true {} wal-push --policy {} %p",
        server.access_key_id,
        server.secret_access_key,
        server.region,
        pgvault_bin().display(),
        policy.display()
    )
}

/// Run a command and return its output (never panics on a non-zero exit).
pub fn run(mut cmd: Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Run a command that must succeed; returns stdout.
pub fn run_ok(cmd: Command) -> String {
    let desc = format!("{cmd:?}");
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{desc} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// stdout and stderr of an output, for assertions on messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Assert two long texts are equal, reporting the first differing line instead of both texts.
pub fn assert_same_text(a: &str, b: &str, what: &str) {
    if a == b {
        return;
    }
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let n = la
        .iter()
        .zip(&lb)
        .position(|(x, y)| x != y)
        .unwrap_or(la.len().min(lb.len()));
    panic!(
        "{what} differ at line {}:\n  left:  {:?}\n  right: {:?}\n({} vs {} lines)",
        n + 1,
        la.get(n),
        lb.get(n),
        la.len(),
        lb.len()
    );
}

/// The built `pgvault-agent` binary, next to `pgvault`.
pub fn agent_bin() -> PathBuf {
    pgvault_bin().with_file_name("pgvault-agent")
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// `GET path` on 127.0.0.1:port with extra `headers`: the status code and the body
/// (chunked bodies are returned as sent).
pub fn http_request(port: u16, path: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{extra}\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// `GET path` on 127.0.0.1:port; the body when the server answered 200.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// The value of a Prometheus sample `name{policy="…"}` in a scrape.
pub fn metric(scrape: &str, name: &str, policy: &str) -> Option<f64> {
    let prefix = format!("{name}{{policy=\"{policy}\"}} ");
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// Poll `condition` every 50 ms until it holds, failing after `seconds`.
pub fn wait_until(what: &str, seconds: u64, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A one-shot-per-request HTTP receiver on loopback that records request bodies: a
/// stand-in webhook endpoint for notification tests.
pub struct WebhookReceiver {
    /// Its port.
    pub port: u16,
    bodies: std::sync::mpsc::Receiver<String>,
}

impl WebhookReceiver {
    /// Start receiving on a free port (answers 200 to every request).
    pub fn start() -> WebhookReceiver {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let (tx, bodies) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; length];
                if reader.read_exact(&mut body).is_ok() {
                    let _ = tx.send(String::from_utf8_lossy(&body).to_string());
                }
                let mut stream = reader.into_inner();
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        WebhookReceiver { port, bodies }
    }

    /// The next body received, waiting up to `seconds`.
    pub fn next_body(&self, seconds: u64) -> Option<String> {
        self.bodies
            .recv_timeout(std::time::Duration::from_secs(seconds))
            .ok()
    }
}

/// Fill `db` with a `bulk` table big and random enough that, with
/// [`slow_down_compression`], its dump stays in the middle of `COPY public.bulk` for many
/// seconds: the window failure-path tests act in.
pub fn make_slow_to_dump(cluster: &PgCluster, db: &str, rows: u32) {
    cluster.psql_script(
        db,
        &format!(
            "create table bulk (id int, a text, b text); \
             insert into bulk select g, md5(random()::text) || md5(random()::text), md5(random()::text) \
             from generate_series(1, {rows}) g;"
        ),
    );
}

/// Make a policy written by [`write_policy`] compress at zstd level 19 on one thread.
pub fn slow_down_compression(policy: &Path) {
    let text = std::fs::read_to_string(policy).unwrap_or_else(|e| panic!("read policy: {e}"));
    std::fs::write(policy, text.replace("level = 3", "level = 19\nthreads = 1"))
        .unwrap_or_else(|e| panic!("write policy: {e}"));
}

/// Whether a `pg_dump` session on `cluster` is copying the `bulk` table right now.
pub fn dump_is_copying_bulk(cluster: &PgCluster) -> bool {
    cluster.psql(
        "postgres",
        "select count(*) from pg_stat_activity where application_name = 'pg_dump' and query like 'COPY public.bulk%'",
    ) == "1"
}

/// Whether no `pg_dump` session is left on `cluster`.
pub fn no_dump_running(cluster: &PgCluster) -> bool {
    cluster.psql(
        "postgres",
        "select count(*) from pg_stat_activity where application_name = 'pg_dump'",
    ) == "0"
}

/// Every file under `dir`, recursively (empty when `dir` does not exist): what a
/// filesystem repository holds, for tests that check nothing is left behind.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A new temporary directory (mode 0755) the PostgreSQL server's OS user can enter: for
/// ephemeral clusters, spool files, and anything `archive_command` must read.
pub fn server_reachable_tempdir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap_or_else(|e| panic!("temp dir: {e}"));
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap_or_else(|e| panic!("chmod {}: {e}", dir.path().display()));
    dir
}

/// One test's world: a source cluster whose database `app` holds the test's data, an age
/// key, a filesystem repository, and a policy `app` tying them together.
pub struct Fixture {
    /// The source cluster.
    pub source: PgCluster,
    /// The test's scratch directory (keys, policies, repository).
    pub work: tempfile::TempDir,
    /// The key the policy encrypts to.
    pub key: TestKey,
    /// The repository directory.
    pub repo: PathBuf,
    /// The policy file.
    pub policy: PathBuf,
}

impl Fixture {
    /// Set up `app` with `sql` and write a policy with `extra_policy` appended; `None`
    /// (test skipped) when PostgreSQL is not installed and servers are not required.
    pub fn start(sql: &str, extra_policy: &str) -> Option<Fixture> {
        let source = PgCluster::start()?;
        let work = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        source.psql("postgres", "create database app");
        if !sql.is_empty() {
            source.psql_script("app", sql);
        }
        let key = keygen(work.path(), "ops");
        let repo = work.path().join("repo");
        let policy = write_policy(
            work.path(),
            "app",
            &source.url("app"),
            &RepoSpec::Filesystem(&repo),
            &key.recipient,
            extra_policy,
        );
        Some(Fixture {
            source,
            work,
            key,
            repo,
            policy,
        })
    }
}

/// Give `paths` (with `-R`, whole trees) to the server's OS user when the tests run as
/// root, so that `archive_command`, `restore_command` and restored servers, which run as
/// `postgres`, can read and write them. Nothing to do otherwise.
pub fn give_to_server_user(recursive: bool, paths: &[&Path]) {
    if !cluster::is_root() {
        return;
    }
    let mut chown = Command::new("chown");
    if recursive {
        chown.arg("-R");
    }
    let status = chown
        .arg("postgres:")
        .args(paths)
        .status()
        .unwrap_or_else(|e| panic!("cannot run chown: {e}"));
    assert!(status.success(), "chown postgres: {paths:?} failed");
}
