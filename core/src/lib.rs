//! `pgvault-core`: every capability of pgvault, as a library the binaries stay thin over.
//!
//! The modules follow the concepts of the system (see `docs/FORMAT.md` and the design):
//!
//! - [`policy`]: the TOML policy file, parsed strictly and validated into typed values;
//! - [`storage`]: the [`storage::Storage`] trait with S3 and filesystem backends;
//! - [`pipeline`]: the byte stream stages (sha256 → zstd → age → sha256 and the mirror);
//! - [`keys`]: age recipients and identities, and the fingerprints the manifest records;
//! - [`repository`]: the on-storage layout, backup ids and manifests;
//! - [`postgres`]: tool discovery, child processes and queries against PostgreSQL;
//! - [`backup`], [`restore`], [`verify`]: the operations users run.
//!
//! Errors are typed ([`Error`]) and carry which backup, object or table they concern.

pub mod archive_check;
pub mod backup;
pub mod basebackup;
pub mod drill;
pub mod error;
pub mod globals;
pub mod keys;
pub mod lease;
pub mod notify;
pub mod pipeline;
pub mod pitr;
pub mod policy;
pub mod postgres;
pub mod prune;
pub mod repository;
pub mod restore;
pub mod retention;
pub mod runner;
pub mod schedule;
pub mod server;
pub mod storage;
pub mod verify;
pub mod wal;

pub use error::{Error, Result};

/// Whether log lines on stderr may carry ANSI colour: only on a terminal, and never
/// when `NO_COLOR` is set (<https://no-color.org>). A log file or a journal gets plain
/// text.
pub fn colour_on_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The version string recorded in manifests, so a backup names the tool that wrote it.
pub const TOOL_VERSION: &str = concat!("pgvault ", env!("CARGO_PKG_VERSION"));
