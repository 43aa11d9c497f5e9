//! Finding and running PostgreSQL's own programs: which installation serves a backup
//! (client tools of the server's major or newer for dumps; server binaries of the same
//! or a newer major for throwaway clusters, of exactly the backup's major for a physical
//! copy), throwaway clusters, free ports, and the OS user a server runs as.
//!
//! Discovery is written once: both kinds of installation are probed in the same
//! places (the configured `bin_dir`, else Debian/RHEL locations and PATH) and chosen by
//! the same rules.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

pub mod ephemeral;
pub mod host;
pub mod process;

pub use ephemeral::EphemeralCluster;
pub use process::{run_tool, stderr_tail, ChildKiller, ChildReader};

/// Which programs an installation must hold to be found.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// `pg_dump` and friends: dumps, restores, base backups.
    Client,
    /// `initdb`, `pg_ctl` and `postgres`: clusters pgvault starts itself.
    Server,
}

/// One probed bin directory: where it is, its major and its version line.
#[derive(Debug, Clone)]
struct Installation {
    dir: PathBuf,
    major: u32,
    version_line: String,
}

/// The `--version` line of a program, when it runs and succeeds.
async fn version_line(program: &Path) -> Option<String> {
    let out = tokio::process::Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Probe one directory for an installation of `kind`. Symlinks (Debian's `/usr/bin`
/// wrappers) are followed so the directory found holds the real programs.
async fn probe(dir: &Path, kind: Kind) -> Option<Installation> {
    let exists = |path: PathBuf| async move { tokio::fs::try_exists(path).await.unwrap_or(false) };
    let (version_line, dir) = match kind {
        Kind::Client => {
            let line = version_line(&dir.join("pg_dump")).await?;
            let real = tokio::fs::canonicalize(dir.join("pg_dump")).await.ok()?;
            let real_dir = real.parent()?.to_path_buf();
            let dir = if exists(real_dir.join("pg_restore")).await {
                real_dir
            } else {
                dir.to_path_buf()
            };
            (line, dir)
        }
        Kind::Server => {
            if !exists(dir.join("initdb")).await || !exists(dir.join("pg_ctl")).await {
                return None;
            }
            let real = tokio::fs::canonicalize(dir.join("initdb")).await.ok()?;
            let dir = real.parent()?.to_path_buf();
            (version_line(&dir.join("postgres")).await?, dir)
        }
    };
    Some(Installation {
        major: parse_major(&version_line)?,
        version_line,
        dir,
    })
}

/// The installations of `kind` in `bin_dir` (or the standard places), lowest major
/// first, and a list of them for messages (`none` when there are none).
async fn installations(bin_dir: Option<&Path>, kind: Kind) -> (Vec<Installation>, String) {
    let candidates = match bin_dir {
        Some(dir) => vec![dir.to_path_buf()],
        None => candidate_dirs(),
    };
    let mut found: Vec<Installation> = Vec::new();
    for dir in &candidates {
        found.extend(probe(dir, kind).await);
    }
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

/// The installation of `major`, else the lowest newer one: a newer client dumps an
/// older server, and a newer server loads an older dump; an older one may not.
fn same_or_newer<T: From<Installation>>(found: Vec<Installation>, major: u32) -> Option<T> {
    let index = found
        .iter()
        .position(|i| i.major == major)
        .or_else(|| found.iter().position(|i| i.major > major))?;
    found.into_iter().nth(index).map(T::from)
}

impl From<Installation> for PgTools {
    fn from(i: Installation) -> PgTools {
        PgTools {
            dir: i.dir,
            major: i.major,
            version_line: i.version_line,
        }
    }
}

impl From<Installation> for ServerBinaries {
    fn from(i: Installation) -> ServerBinaries {
        ServerBinaries {
            dir: i.dir,
            major: i.major,
            version_line: i.version_line,
        }
    }
}

/// The PostgreSQL client programs of one installation.
#[derive(Debug, Clone)]
pub struct PgTools {
    dir: PathBuf,
    /// Major version of the tools (e.g. 15).
    pub major: u32,
    /// The full `pg_dump --version` line.
    pub version_line: String,
}

impl PgTools {
    /// Find client tools able to dump or restore a server of major version `server_major`:
    /// the configured `bin_dir`, else the same major in standard locations, else the
    /// lowest newer one. PATH is searched too.
    pub async fn discover(bin_dir: Option<&Path>, server_major: u32) -> Result<PgTools> {
        if let Some(dir) = bin_dir {
            let tools = probe(dir, Kind::Client).await.ok_or_else(|| Error::ToolNotFound {
                message: format!(
                    "no working pg_dump in bin_dir {}; point [source] bin_dir at a PostgreSQL bin directory",
                    dir.display()
                ),
            })?;
            if tools.major < server_major {
                return Err(Error::ToolNotFound {
                    message: format!(
                        "pg_dump in {} is version {}, older than the server ({server_major}); use tools of version {server_major} or newer",
                        dir.display(),
                        tools.major
                    ),
                });
            }
            return Ok(tools.into());
        }
        let (found, seen) = installations(None, Kind::Client).await;
        same_or_newer(found, server_major).ok_or_else(|| Error::ToolNotFound {
            message: format!(
                "no PostgreSQL client tools of version {server_major} or newer found (found: {seen}); install postgresql-client-{server_major} or set [source] bin_dir"
            ),
        })
    }

    /// Path of a tool in this installation.
    pub fn tool(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The directory holding the tools.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

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
    pub async fn discover(bin_dir: Option<&Path>, backup_major: u32) -> Result<ServerBinaries> {
        let (found, seen) = installations(bin_dir, Kind::Server).await;
        same_or_newer(found, backup_major).ok_or_else(|| Error::ToolNotFound {
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
    pub async fn discover_exact(bin_dir: Option<&Path>, major: u32) -> Result<ServerBinaries> {
        let (found, seen) = installations(bin_dir, Kind::Server).await;
        found
            .into_iter()
            .find(|b| b.major == major)
            .map(ServerBinaries::from)
            .ok_or_else(|| Error::ToolNotFound {
                message: format!(
                    "the base backup is from PostgreSQL {major}, and only PostgreSQL {major} can start it; no PostgreSQL {major} server binaries (initdb, pg_ctl, postgres){} (found: {seen}). Install them (Debian/Ubuntu: apt-get install postgresql-{major}; RHEL: dnf install postgresql{major}-server) or point the policy's [source] bin_dir at their bin directory",
                    bin_dir
                        .map(|d| format!(" in {}", d.display()))
                        .unwrap_or_else(|| " in the standard locations or on PATH".into())
                ),
            })
    }

    /// The path of one program of this installation (`pg_combinebackup`, `pg_ctl`…).
    pub fn program(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A command running a server program of this installation as `user` (through
    /// `runuser`, when pgvault runs as root) or as the current user.
    pub fn command_as(&self, name: &str, user: Option<&str>) -> Command {
        match user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(self.program(name));
                c
            }
            None => Command::new(self.program(name)),
        }
    }
}

/// Directories that may hold a PostgreSQL installation's programs: Debian and RHEL
/// locations, `/usr/local/pgsql`, then PATH.
fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for pattern_root in ["/usr/lib/postgresql", "/usr/local/pgsql"] {
        if let Ok(entries) = std::fs::read_dir(pattern_root) {
            for e in entries.flatten() {
                dirs.push(e.path().join("bin"));
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/usr") {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("pgsql-") {
                dirs.push(e.path().join("bin"));
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs
}

/// The major version in a `pg_dump (PostgreSQL) 15.18 (Debian …)` line.
pub fn parse_major(version_line: &str) -> Option<u32> {
    let version = version_line
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
    version
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
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

    #[tokio::test]
    async fn an_older_server_than_the_backup_is_refused_by_name() {
        let bin = fake_bin(13);
        let err = ServerBinaries::discover(Some(bin.path()), 16)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the backup is from PostgreSQL 16")
                && err.contains("found: 13 in")
                && err.contains("install postgresql-16 or set [restore_test] bin_dir"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_physical_copy_needs_exactly_its_major() {
        let bin = fake_bin(16);
        let err = ServerBinaries::discover_exact(Some(bin.path()), 15)
            .await
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
                .await
                .unwrap()
                .major,
            16
        );
    }

    #[tokio::test]
    async fn the_same_or_a_newer_server_is_accepted() {
        let bin = fake_bin(16);
        assert_eq!(
            ServerBinaries::discover(Some(bin.path()), 16)
                .await
                .unwrap()
                .major,
            16
        );
        assert_eq!(
            ServerBinaries::discover(Some(bin.path()), 14)
                .await
                .unwrap()
                .major,
            16
        );
    }

    #[test]
    fn majors_parse() {
        assert_eq!(
            parse_major("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(parse_major("pg_dump (PostgreSQL) 17beta1"), Some(17));
    }
}
