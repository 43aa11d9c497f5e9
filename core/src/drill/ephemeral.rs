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

use crate::error::{Error, Result};
use crate::postgres::{self, parse_major};

/// The server programs (`initdb`, `pg_ctl`, `postgres`) of one installation.
#[derive(Debug, Clone)]
pub struct ServerBinaries {
    dir: PathBuf,
    /// Major version.
    pub major: u32,
    /// The `postgres --version` line.
    pub version_line: String,
}

impl ServerBinaries {
    /// Find server binaries able to restore a backup of major version `backup_major`:
    /// `bin_dir` when configured, else the same major in standard locations or PATH,
    /// else the lowest newer one. Older servers are refused: pg_restore cannot load a
    /// dump into an older major version reliably.
    pub fn discover(bin_dir: Option<&Path>, backup_major: u32) -> Result<ServerBinaries> {
        let (found, seen) = installations(bin_dir);
        found
            .iter()
            .find(|b| b.major == backup_major)
            .or_else(|| found.iter().find(|b| b.major > backup_major))
            .cloned()
            .ok_or_else(|| Error::ToolNotFound {
                message: format!(
                    "the backup is from PostgreSQL {backup_major}; an ephemeral drill needs server binaries (initdb, pg_ctl) of version {backup_major} or newer{} (found: {seen}); install postgresql-{backup_major} or set [restore_test] bin_dir",
                    bin_dir.map(|d| format!(" in {}", d.display())).unwrap_or_default()
                ),
            })
    }

    /// Find server binaries of exactly `major`, to start a physical copy of a cluster of
    /// that major (a data directory starts only under its own major). `bin_dir` when
    /// given (the policy's `[source] bin_dir`), else the standard locations and PATH. The
    /// error names the major, what was found, and how to install it.
    pub fn discover_exact(bin_dir: Option<&Path>, major: u32) -> Result<ServerBinaries> {
        let (found, seen) = installations(bin_dir);
        found
            .into_iter()
            .find(|b| b.major == major)
            .ok_or_else(|| Error::ToolNotFound {
                message: format!(
                    "the base backup is from PostgreSQL {major}, and only PostgreSQL {major} can start it; no PostgreSQL {major} server binaries (initdb, pg_ctl, postgres){} (found: {seen}). Install them (Debian/Ubuntu: apt-get install postgresql-{major}; RHEL: dnf install postgresql{major}-server) or point the policy's [source] bin_dir at their bin directory",
                    bin_dir
                        .map(|d| format!(" in {}", d.display()))
                        .unwrap_or_else(|| " in the standard locations or on PATH".into())
                ),
            })
    }

    fn tool(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A command running a server program of this installation as `user` (through
    /// `runuser`, when pgvault runs as root) or as the current user.
    pub fn command_as(&self, name: &str, user: Option<&str>) -> Command {
        match user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(self.tool(name));
                c
            }
            None => Command::new(self.tool(name)),
        }
    }
}

/// The server installations in `bin_dir` (or the standard places), lowest major first,
/// and a list of them for messages.
fn installations(bin_dir: Option<&Path>) -> (Vec<ServerBinaries>, String) {
    let candidates = match bin_dir {
        Some(dir) => vec![dir.to_path_buf()],
        None => postgres::candidate_dirs(),
    };
    let mut found: Vec<ServerBinaries> = candidates.iter().filter_map(|d| probe(d)).collect();
    found.sort_by_key(|b| b.major);
    found.dedup_by(|a, b| a.dir == b.dir);
    let seen = if found.is_empty() {
        "none".to_string()
    } else {
        found
            .iter()
            .map(|b| format!("{} in {}", b.major, b.dir.display()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    (found, seen)
}

fn probe(dir: &Path) -> Option<ServerBinaries> {
    if !dir.join("initdb").exists() || !dir.join("pg_ctl").exists() {
        return None;
    }
    let real = std::fs::canonicalize(dir.join("initdb")).ok()?;
    let dir = real.parent()?.to_path_buf();
    let out = Command::new(dir.join("postgres"))
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Some(ServerBinaries {
        major: parse_major(&line)?,
        version_line: line,
        dir,
    })
}

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
        postgres::run_tool("initdb", initdb)?;
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
            match postgres::run_tool("pg_ctl", start) {
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
                postgres::stderr_tail(&log)
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
        postgres::run_tool("pg_ctl", stop).map(|_| ())
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

/// The OS user the server must run as: `None` for the current user, `postgres` when
/// running as root (the directory is handed to it).
pub(crate) fn server_user(dir: &Path) -> Result<Option<String>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let exists = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .is_some();
    if !exists {
        return Err(Error::Invalid(
            "PostgreSQL refuses to run as root and there is no 'postgres' OS user to run the ephemeral cluster as; run pgvault as another user or create one".into(),
        ));
    }
    chown_to(dir, Some("postgres"))?;
    Ok(Some("postgres".into()))
}

pub(crate) fn chown_to(path: &Path, user: Option<&str>) -> Result<()> {
    let Some(user) = user else { return Ok(()) };
    let account = nix::unistd::User::from_name(user)
        .ok()
        .flatten()
        .ok_or_else(|| Error::Invalid(format!("OS user {user} not found")))?;
    nix::unistd::chown(path, Some(account.uid), Some(account.gid)).map_err(|e| {
        Error::io(
            format!("cannot hand {} to user {user}", path.display()),
            std::io::Error::from(e),
        )
    })
}

/// A free TCP port on loopback.
pub(crate) fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::io("cannot find a free port for the ephemeral cluster", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A bin directory whose `postgres --version` claims `major`.
    fn fake_bin(major: u32) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for tool in ["initdb", "pg_ctl", "postgres"] {
            let path = dir.path().join(tool);
            std::fs::write(
                &path,
                format!("#!/bin/sh\necho 'postgres (PostgreSQL) {major}.3'\n"),
            )
            .unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        dir
    }

    #[test]
    fn an_older_server_than_the_backup_is_refused_by_name() {
        let bin = fake_bin(13);
        let err = ServerBinaries::discover(Some(bin.path()), 16)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the backup is from PostgreSQL 16")
                && err.contains("found: 13 in")
                && err.contains("install postgresql-16 or set [restore_test] bin_dir"),
            "{err}"
        );
    }

    #[test]
    fn a_physical_copy_needs_exactly_its_major() {
        let bin = fake_bin(16);
        let err = ServerBinaries::discover_exact(Some(bin.path()), 15)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the base backup is from PostgreSQL 15")
                && err.contains("found: 16 in")
                && err.contains("apt-get install postgresql-15")
                && err.contains("[source] bin_dir")
                && !err.contains("[restore_test]"),
            "{err}"
        );
        assert_eq!(
            ServerBinaries::discover_exact(Some(bin.path()), 16)
                .unwrap()
                .major,
            16
        );
    }

    #[test]
    fn the_same_or_a_newer_server_is_accepted() {
        let bin = fake_bin(16);
        assert_eq!(
            ServerBinaries::discover(Some(bin.path()), 16)
                .unwrap()
                .major,
            16
        );
        assert_eq!(
            ServerBinaries::discover(Some(bin.path()), 14)
                .unwrap()
                .major,
            16
        );
    }
}
