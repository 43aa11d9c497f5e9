//! Throwaway PostgreSQL clusters for tests: `initdb` in a temporary directory, a free
//! loopback port, trust authentication, superuser `postgres`. Each test owns its
//! clusters, so tests run in parallel. The cluster stops when the value is dropped.
//!
//! PostgreSQL refuses to run as root; as root the server runs as the `postgres` OS user.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::s3server::servers_required;

/// A running PostgreSQL cluster owned by one test.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// The TCP port on 127.0.0.1.
    pub port: u16,
}

/// Whether the tests run as root (then servers run as the `postgres` OS user).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The directory of the PostgreSQL server binaries (`initdb`, `pg_ctl`), if installed.
pub fn server_bin_dir() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").exists() && dir.join("pg_ctl").exists() {
                let real = std::fs::canonicalize(dir.join("initdb")).ok()?;
                return real.parent().map(Path::to_path_buf);
            }
        }
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|d| d.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn check(what: &str, out: std::io::Result<Output>) -> Output {
    let out = out.unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A change made to a data directory between `initdb` and the first start.
pub type ConfigureDataDir = Box<dyn Fn(&Path)>;

/// How a test wants its cluster: which installation, and what to change in the data
/// directory between `initdb` and the first start (certificates, `pg_hba.conf`,
/// settings).
#[derive(Default)]
pub struct ClusterOptions {
    /// The installation's `bin` directory (default: [`server_bin_dir`]).
    pub bin_dir: Option<PathBuf>,
    /// Called with the data directory after `initdb`, before the server starts. Files
    /// it writes are handed to the server's OS user afterwards.
    pub configure: Option<ConfigureDataDir>,
}

impl PgCluster {
    /// Start a new cluster, or `None` (test skipped) when PostgreSQL is not installed
    /// and `PGVAULT_TEST_REQUIRE_SERVERS` is not set.
    pub fn start() -> Option<PgCluster> {
        Self::start_with(ClusterOptions::default())
    }

    /// Start a new cluster as `options` say, or `None` as [`PgCluster::start`].
    pub fn start_with(options: ClusterOptions) -> Option<PgCluster> {
        let Some(bin) = options.bin_dir.clone().or_else(server_bin_dir) else {
            assert!(
                !servers_required(),
                "PostgreSQL server binaries (initdb) not found, and PGVAULT_TEST_REQUIRE_SERVERS=1; run scripts/test.sh"
            );
            eprintln!("skipped: PostgreSQL server binaries not found (run scripts/test.sh)");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("pgvault-test-pg-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
        let root = is_root();
        if root {
            check(
                "chown",
                Command::new("chown")
                    .arg("postgres:")
                    .arg(dir.path())
                    .output(),
            );
        }
        let data = dir.path().join("data");
        check(
            "initdb",
            Self::as_pg(root, &bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                ])
                .output(),
        );
        if let Some(configure) = &options.configure {
            configure(&data);
            if root {
                check(
                    "chown",
                    Command::new("chown")
                        .args(["-R", "postgres:"])
                        .arg(&data)
                        .output(),
                );
            }
        }
        // A port taken between probing and binding makes pg_ctl fail: try a few.
        for attempt in 0..5 {
            let port = free_port();
            let out = Self::as_pg(root, &bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.path().join("server.log"))
                .arg("-w")
                .arg("-o")
                .arg(format!(
                    "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off -c max_connections=50",
                    dir.path().display()
                ))
                .arg("start")
                .output()
                .unwrap_or_else(|e| panic!("cannot run pg_ctl: {e}"));
            if out.status.success() {
                return Some(PgCluster { dir, bin, port });
            }
            if attempt == 4 {
                let log =
                    std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
                panic!(
                    "pg_ctl start failed: {}\n{log}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        None
    }

    fn as_pg(root: bool, program: &Path) -> Command {
        if root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    /// `postgres://postgres@127.0.0.1:PORT/DB`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The cluster's directory (data dir, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The installation's `bin` directory (server and client programs).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// A client tool of this installation (psql, pg_dump, …).
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// Run SQL with psql (ON_ERROR_STOP), returning unaligned tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.psql_on_port(self.port, db, sql)
    }

    /// [`PgCluster::psql`] against another server on loopback `port` (a copy a test
    /// restored), with this installation's psql.
    pub fn psql_on_port(&self, port: u16, db: &str, sql: &str) -> String {
        let out = check(
            &format!("psql on {db} at port {port}"),
            Command::new(self.tool("psql"))
                .args([
                    "-X",
                    "-q",
                    "-At",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                ])
                .arg("-p")
                .arg(port.to_string())
                .arg("-d")
                .arg(db)
                .arg("-c")
                .arg(sql)
                .output(),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Run a multi-statement SQL script with psql.
    pub fn psql_script(&self, db: &str, script: &str) {
        let path = self
            .dir
            .path()
            .join(format!("script-{}.sql", rand::random::<u32>()));
        std::fs::write(&path, script).unwrap_or_else(|e| panic!("cannot write script: {e}"));
        check(
            &format!("psql script on {db}"),
            Command::new(self.tool("psql"))
                .args([
                    "-X",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                ])
                .arg("-p")
                .arg(self.port.to_string())
                .arg("-d")
                .arg(db)
                .arg("-f")
                .arg(&path)
                .output(),
        );
    }

    /// Plain-text `pg_dump` of a database, for comparing schema and data.
    pub fn dump_text(&self, db: &str) -> String {
        let out = check(
            &format!("pg_dump of {db}"),
            Command::new(self.tool("pg_dump"))
                .args(["-h", "127.0.0.1", "-U", "postgres", "--no-sync"])
                .arg("-p")
                .arg(self.port.to_string())
                .arg(db)
                .output(),
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            // Header lines and the per-run \restrict keys differ between any two dumps.
            .filter(|l| {
                !l.starts_with("-- Dumped from")
                    && !l.starts_with("-- Dumped by")
                    && !l.starts_with("\\restrict")
                    && !l.starts_with("\\unrestrict")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Set server parameters with `ALTER SYSTEM` and restart the server so they apply.
    pub fn configure_and_restart(&self, settings: &[(&str, &str)]) {
        for (name, value) in settings {
            self.psql(
                "postgres",
                &format!("alter system set {name} = '{}'", value.replace('\'', "''")),
            );
        }
        check(
            "pg_ctl restart",
            Self::as_pg(is_root(), &self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-m", "fast", "-w", "restart"])
                .arg("-l")
                .arg(self.dir.path().join("server.log"))
                .output(),
        );
    }

    /// Crash the server: `kill -KILL` its postmaster (the first line of
    /// `postmaster.pid`), as a power loss or an OOM kill would.
    pub fn kill_postmaster(&self) {
        let pid_file = self.dir.path().join("data").join("postmaster.pid");
        let text = std::fs::read_to_string(&pid_file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", pid_file.display()));
        let pid = text.lines().next().unwrap_or_default().trim().to_string();
        check(
            "kill -KILL of the postmaster",
            Command::new("kill").args(["-KILL", &pid]).output(),
        );
    }

    /// Stop a server running on another data directory (one a test restored), if any.
    pub fn stop_data_dir(&self, data: &Path) {
        let _ = Self::as_pg(is_root(), &self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }

    /// Names of all databases.
    pub fn databases(&self) -> Vec<String> {
        self.psql("postgres", "select datname from pg_database order by 1")
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = Self::as_pg(is_root(), &self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}
