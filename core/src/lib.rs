//! `pgvault-core`: every capability of pgvault, as a library the binaries stay thin over.
//!
//! The modules follow the concepts of the system, in layers that import only
//! downwards (the table is in `docs/ARCHITECTURE.md`, and `tests/layers.rs` checks it):
//!
//! - the operations: [`logical`] (dumps, restores, verify), [`physical`] (base backups,
//!   WAL, point-in-time restores), [`retention`] (plans and prune), [`copy`] (filling
//!   a policy's second repositories and measuring their lag), [`drill`] (restore
//!   tests and their reports), and [`runner`] (what the agent runs on a schedule);
//! - [`repository`]: the on-storage layout, manifests, leases and leftovers, and
//!   [`repository::Repository::open`], the one place storage is opened;
//! - [`policy`]: the TOML policy file, parsed strictly and validated into typed values;
//! - [`pipeline`]: the byte stream stages (sha256 → zstd → age → sha256 and the mirror);
//! - the infrastructure: [`storage`] (S3 and filesystem backends, knowing nothing of
//!   policies), [`server`] (finding and running PostgreSQL's programs), [`postgres`]
//!   (connections and queries), [`keys`], [`schedule`], [`notify`];
//! - [`stop_signal`]: Ctrl-C and SIGTERM, handled alike by every binary;
//! - the ground floor: [`error`] and [`units`].
//!
//! Errors are typed ([`Error`]) and carry which backup, object or table they concern.

pub mod copy;
pub mod dr_plan;
pub mod drill;
pub mod error;
pub mod keys;
pub mod logical;
pub mod notify;
pub mod physical;
pub mod pipeline;
pub mod policy;
pub mod postgres;
pub mod repository;
pub mod retention;
pub mod rotation;
pub mod runner;
pub mod schedule;
pub mod server;
pub mod status;
pub mod stop_signal;
pub mod storage;
pub mod units;

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
