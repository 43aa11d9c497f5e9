//! Throwaway PostgreSQL clusters for drills with `target = "ephemeral"`.
//!
//! `initdb` in a private temporary directory, a free loopback port, password
//! authentication with a random password, and settings for a fast scratch restore
//! (`fsync=off`, `full_page_writes=off`, `wal_level=minimal`, a large
//! `maintenance_work_mem`): nothing in it needs to survive a crash. The cluster is
//! stopped and its directory removed when the value is dropped, whatever happened.
//!
//! PostgreSQL refuses to run as root; when pgvault runs as root, the server runs as the
//! `postgres` OS user.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rand::Rng;

use super::host::{chown_to, free_port, server_user};
use super::process::{run_tool, stderr_tail};
use super::ServerBinaries;
use crate::error::{Error, Result};

/// A running throwaway cluster. Dropping it stops the server and removes its files.
pub struct EphemeralCluster {
    dir: tempfile::TempDir,
    bin: ServerBinaries,
    run_as: Option<String>,
    port: u16,
    password: String,
    stopped: bool,
}

/// Server settings for a restore that never has to survive a crash.
const SCRATCH_SETTINGS: &[&str] = &[
    "fsync=off",
    "full_page_writes=off",
    "synchronous_commit=off",
    "wal_level=minimal",
    "max_wal_senders=0",
    "archive_mode=off",
    "autovacuum=off",
    "max_wal_size=4GB",
    "checkpoint_timeout=1h",
    "maintenance_work_mem=512MB",
    "shared_buffers=256MB",
    "max_connections=40",
];

impl EphemeralCluster {
    /// `initdb` and start a cluster in a new directory under `work_dir` (default: the
    /// temp directory). Blocking: call it from a blocking thread.
    pub fn start(bin: ServerBinaries, work_dir: Option<&Path>) -> Result<EphemeralCluster> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("pgvault-drill-");
        let dir = match work_dir {
            Some(w) => builder.tempdir_in(w),
            None => builder.tempdir(),
        }
        .map_err(|e| Error::io("cannot create a directory for the ephemeral cluster", e))?;
        let run_as = server_user(dir.path())?;
        let password: String = rand::thread_rng()
            .sample_iter(rand::distributions::Alphanumeric)
            .take(32)
            .map(char::from)
            .collect();
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{password}\n"))
            .map_err(|e| Error::io("cannot write the ephemeral cluster's password file", e))?;
        chown_to(&pwfile, run_as.as_deref())?;
        let mut cluster = EphemeralCluster {
            dir,
            bin,
            run_as,
            port: 0,
            password,
            stopped: true,
        };
        let data = cluster.data_dir();
        let mut initdb = cluster.command("initdb");
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=scram-sha-256", "--encoding=UTF8"])
            .args(["--locale=C", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()));
        run_tool("initdb", initdb)?;
        let _ = std::fs::remove_file(&pwfile);

        // A port taken between probing and binding makes pg_ctl fail: try a few.
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            let mut options = format!(
                "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
                cluster.dir.path().display()
            );
            for setting in SCRATCH_SETTINGS {
                options.push_str(" -c ");
                options.push_str(setting);
            }
            let mut start = cluster.command("pg_ctl");
            start
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(cluster.log_path())
                .args(["-w", "-t", "120", "-o"])
                .arg(options)
                .arg("start");
            match run_tool("pg_ctl", start) {
                Ok(_) => {
                    cluster.port = port;
                    cluster.stopped = false;
                    return Ok(cluster);
                }
                Err(e) => last_error = e.to_string(),
            }
        }
        let log = std::fs::read_to_string(cluster.log_path()).unwrap_or_default();
        Err(Error::Tool {
            tool: "pg_ctl".into(),
            message: format!(
                "the ephemeral cluster did not start: {last_error}; server log: {}",
                stderr_tail(&log)
            ),
        })
    }

    /// Connection URL of a database in the cluster (contains the password).
    ///
    /// The cluster listens on loopback only and has no certificate: the URL says
    /// `sslmode=disable`, so a `PGSSLMODE` meant for production servers (inherited by
    /// pgvault and by `pg_restore`) cannot make the drill demand TLS from it.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/{database}?sslmode=disable",
            self.password, self.port
        )
    }

    /// `127.0.0.1:<port>`, for reports.
    pub fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server's version line.
    pub fn version_line(&self) -> &str {
        &self.bin.version_line
    }

    /// Stop the server now (fast shutdown) and remove its files.
    pub fn stop(mut self) -> Result<()> {
        self.stop_server()
    }

    fn stop_server(&mut self) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let mut stop = self.command("pg_ctl");
        stop.arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"]);
        run_tool("pg_ctl", stop).map(|_| ())
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn command(&self, tool: &str) -> Command {
        let mut cmd = self.bin.command_as(tool, self.run_as.as_deref());
        cmd.current_dir(self.dir.path()).stdin(Stdio::null());
        cmd
    }
}

impl Drop for EphemeralCluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop_server() {
            tracing::warn!(error = %e, "could not stop the ephemeral cluster");
        }
    }
}
