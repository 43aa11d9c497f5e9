//! Typed errors for everything `pgvault-core` does.
//!
//! Error policy:
//! - Every variant says *what* failed and carries the context a user needs to act:
//!   which policy file and position, which backup, which stored object, which table.
//! - Messages are one or two lines. Where the user can fix the cause, the message says how.
//! - Secrets never appear in a message: URLs are shown with their password removed.
//! - [`Error::is_retryable`] classifies transient failures (network, throttling) apart from
//!   permanent ones (bad policy, corrupt object, wrong key), so callers can retry sensibly.
//! - Only the binaries use `anyhow`; the library returns these.

use std::path::PathBuf;

/// The result type of `pgvault-core`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in pgvault, with the context to act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The policy file is malformed or invalid at a known position.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Policy {
        /// The policy file.
        path: PathBuf,
        /// 1-based line of the offending value.
        line: usize,
        /// 1-based column of the offending value.
        column: usize,
        /// What is wrong and how to fix it.
        message: String,
    },

    /// A local file (policy, identity, recipients file, spool) could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What pgvault was doing, naming the file.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The storage backend failed an operation on an object.
    #[error("storage {operation} of {key} failed: {message}")]
    Storage {
        /// The operation: put, get, list, delete, upload part, ...
        operation: &'static str,
        /// The object key (or prefix) involved.
        key: String,
        /// The backend's description of the failure.
        message: String,
        /// Whether trying again may succeed (network, throttling, 5xx).
        retryable: bool,
    },

    /// An object the repository needs does not exist.
    #[error("object {key} does not exist in the repository")]
    ObjectNotFound {
        /// The missing object.
        key: String,
    },

    /// A WAL file is not in the archive (normal at the end of recovery).
    #[error("WAL file {name} is not in the archive of policy {policy}")]
    WalNotFound {
        /// The WAL file name.
        name: String,
        /// The policy.
        policy: String,
    },

    /// The archive already holds different content under a WAL file's name.
    #[error("WAL file {name} is already archived with different content ({existing}); refusing to overwrite it. Two clusters may be archiving into policy {policy}: give each its own policy")]
    WalConflict {
        /// The WAL file name.
        name: String,
        /// The object already stored.
        existing: String,
        /// The policy.
        policy: String,
    },

    /// The named backup has no manifest in the repository.
    #[error("backup {id} not found in policy {policy}; run `pgvault list --policy …` to see the backups")]
    BackupNotFound {
        /// The policy searched.
        policy: String,
        /// The id asked for.
        id: String,
    },

    /// The policy has no backups at all.
    #[error("policy {policy} has no backups yet; run `pgvault backup --policy …` first")]
    NoBackups {
        /// The policy searched.
        policy: String,
    },

    /// A manifest could not be parsed or has an unsupported format version.
    #[error("manifest {key} is unreadable: {message}")]
    Manifest {
        /// The manifest object.
        key: String,
        /// Why it cannot be used.
        message: String,
    },

    /// Stored or decoded bytes do not match what the manifest recorded.
    #[error("integrity check failed for {object}: {message}")]
    Integrity {
        /// The stored object whose bytes are wrong.
        object: String,
        /// Which check failed (size, digest) with expected and actual values.
        message: String,
    },

    /// Decryption failed: the ciphertext is corrupt or was tampered with.
    #[error(
        "decryption of {object} failed (the stored bytes are corrupt or were altered): {message}"
    )]
    Decrypt {
        /// The stored object.
        object: String,
        /// The age library's description.
        message: String,
    },

    /// None of the identities given can decrypt the backup.
    #[error("this backup was not encrypted to any key in {} (recipients: {})", identity_file.display(), recipients.join(", "))]
    WrongKey {
        /// The identity file the user gave.
        identity_file: PathBuf,
        /// Fingerprints of the recipients the backup was encrypted to.
        recipients: Vec<String>,
    },

    /// An age identity file could not be used.
    #[error("identity file {}: {message}", path.display())]
    Identity {
        /// The identity file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// A PostgreSQL query or connection failed.
    #[error("{context}: {source}")]
    Postgres {
        /// What pgvault was doing, naming the database or table.
        context: String,
        /// The driver error.
        #[source]
        source: tokio_postgres::Error,
    },

    /// A PostgreSQL client tool (pg_dump, pg_restore, …) failed.
    #[error("{tool} failed: {message}")]
    Tool {
        /// The tool's name.
        tool: String,
        /// Its exit status and the last lines of its stderr.
        message: String,
    },

    /// No suitable PostgreSQL client tool was found.
    #[error("{message}")]
    ToolNotFound {
        /// What was needed, where it was searched and how to install it.
        message: String,
    },

    /// The restore target already holds user tables and `--force` was not given.
    #[error("target database {database} already has {tables} user table(s); refusing to replace it. Re-run with --force to replace it, or choose another --target")]
    TargetNotEmpty {
        /// The target database.
        database: String,
        /// How many user tables it has.
        tables: i64,
    },

    /// The restore target has sessions connected, so it cannot be swapped.
    #[error("target database {database} has {sessions} other session(s) connected; disconnect them and retry (the restored copy was not swapped in)")]
    TargetBusy {
        /// The target database.
        database: String,
        /// How many sessions are connected.
        sessions: i64,
    },

    /// The local disk lacks room for a spool file.
    #[error("not enough free space in {} for the {needed} byte decrypted dump ({available} bytes free); use --spool-dir to pick another disk or restore with --jobs 1 (streaming, no spool)", path.display())]
    NoSpace {
        /// The spool directory.
        path: PathBuf,
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        available: u64,
    },

    /// The operation was cancelled (Ctrl-C, SIGTERM); partial work was cleaned up.
    #[error("cancelled; partial work was cleaned up")]
    Cancelled,

    /// A request is invalid in a way the user can fix (bad argument, bad URL, …).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// Whether retrying the failed operation may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Storage { retryable, .. } => *retryable,
            Error::Postgres { source, .. } => source.is_closed() || source.as_db_error().is_none(),
            _ => false,
        }
    }

    /// Build an [`Error::Io`] with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Build an [`Error::Postgres`] with context.
    pub fn pg(context: impl Into<String>, source: tokio_postgres::Error) -> Self {
        Error::Postgres {
            context: context.into(),
            source,
        }
    }
}
