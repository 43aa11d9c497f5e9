//! PostgreSQL installations of several major versions, for tests that run once per major.
//!
//! `scripts/test.sh` installs them (`scripts/pg-majors.sh`) and exports
//! `PGVAULT_TEST_PG_BIN_DIRS=14=/path/bin:15=/usr/lib/postgresql/15/bin:…`: one
//! `MAJOR=BIN_DIR` entry per major, separated by `:`. A test asks [`bin_dir`] for its
//! major and starts clusters of it with [`start_cluster`]. When the variable is unset or
//! lacks the major the test is skipped, unless `PGVAULT_TEST_REQUIRE_SERVERS=1` (CI), in
//! which case it fails.

use std::path::PathBuf;
use std::process::Command;

use crate::cluster::{ClusterOptions, PgCluster};
use crate::s3server::{servers_required, REQUIRE_SERVERS_VAR};

/// Variable listing the installations: `MAJOR=BIN_DIR` entries separated by `:`.
pub const BIN_DIRS_VAR: &str = "PGVAULT_TEST_PG_BIN_DIRS";

/// Parse a [`BIN_DIRS_VAR`] value into (major, bin dir) pairs, in the order given.
/// Empty entries are ignored; a malformed entry or a major named twice panics (the
/// variable is set by scripts, so a mistake there is a harness bug).
pub fn parse(spec: &str) -> Vec<(u32, PathBuf)> {
    let mut dirs: Vec<(u32, PathBuf)> = Vec::new();
    for entry in spec.split(':').map(str::trim).filter(|e| !e.is_empty()) {
        let (major, dir) = entry.split_once('=').unwrap_or_else(|| {
            panic!("{BIN_DIRS_VAR}: entry {entry:?} is not MAJOR=BIN_DIR (in {spec:?})")
        });
        let major: u32 = major.trim().parse().unwrap_or_else(|e| {
            panic!("{BIN_DIRS_VAR}: {major:?} in {entry:?} is not a major version: {e}")
        });
        let dir = dir.trim();
        assert!(
            !dir.is_empty(),
            "{BIN_DIRS_VAR}: entry {entry:?} names no directory"
        );
        assert!(
            !dirs.iter().any(|(m, _)| *m == major),
            "{BIN_DIRS_VAR}: major {major} is named twice (in {spec:?})"
        );
        dirs.push((major, PathBuf::from(dir)));
    }
    dirs
}

/// The installations [`BIN_DIRS_VAR`] lists, or `None` when it is unset or empty.
pub fn bin_dirs() -> Option<Vec<(u32, PathBuf)>> {
    let spec = std::env::var(BIN_DIRS_VAR)
        .ok()
        .filter(|v| !v.trim().is_empty())?;
    Some(parse(&spec))
}

/// The `bin` directory of PostgreSQL `major`, checked to hold that major's `postgres`.
///
/// `None` (test skipped, with a message) when [`BIN_DIRS_VAR`] is unset or does not
/// list `major`; panics instead when `PGVAULT_TEST_REQUIRE_SERVERS=1`, so that CI cannot
/// pass by skipping. Panics when the directory holds another major or no working server.
pub fn bin_dir(major: u32) -> Option<PathBuf> {
    let dirs = bin_dirs();
    let Some(dir) = dirs
        .as_deref()
        .and_then(|d| d.iter().find(|(m, _)| *m == major))
        .map(|(_, dir)| dir.clone())
    else {
        let why = match &dirs {
            None => format!("{BIN_DIRS_VAR} is not set"),
            Some(_) => format!("{BIN_DIRS_VAR} does not list PostgreSQL {major}"),
        };
        assert!(
            !servers_required(),
            "{why}, and {REQUIRE_SERVERS_VAR}=1: run scripts/test.sh (it installs PostgreSQL 14-18 and sets {BIN_DIRS_VAR})"
        );
        eprintln!("skipped: {why} (run scripts/test.sh)");
        return None;
    };
    let postgres = dir.join("postgres");
    let out = Command::new(&postgres)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("{BIN_DIRS_VAR}: cannot run {}: {e}", postgres.display()));
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // "postgres (PostgreSQL) 17.11" or "postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"
    let found = version
        .split(") ")
        .nth(1)
        .and_then(|v| v.split(['.', ' ']).next())
        .and_then(|v| v.parse::<u32>().ok());
    assert!(
        out.status.success() && found == Some(major),
        "{BIN_DIRS_VAR}: {} is not PostgreSQL {major} (it says {version:?})",
        postgres.display()
    );
    Some(dir)
}

/// Start a cluster of the installation in `dir` (a directory [`bin_dir`] returned).
pub fn start_cluster(dir: &std::path::Path) -> PgCluster {
    PgCluster::start_with(ClusterOptions {
        bin_dir: Some(dir.to_path_buf()),
        configure: None,
    })
    .unwrap_or_else(|| panic!("no cluster started from {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_majors_and_directories_in_order() {
        assert_eq!(
            parse("14=/opt/pg14/bin:15=/usr/lib/postgresql/15/bin::18 = /x y/bin:"),
            vec![
                (14, PathBuf::from("/opt/pg14/bin")),
                (15, PathBuf::from("/usr/lib/postgresql/15/bin")),
                (18, PathBuf::from("/x y/bin")),
            ]
        );
        assert!(parse("").is_empty());
    }

    #[test]
    #[should_panic(expected = "is not MAJOR=BIN_DIR")]
    fn refuses_an_entry_without_a_major() {
        parse("/usr/lib/postgresql/15/bin");
    }

    #[test]
    #[should_panic(expected = "named twice")]
    fn refuses_a_major_named_twice() {
        parse("16=/a:16=/b");
    }
}
