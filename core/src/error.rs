//! Typed errors for everything `pgvault-core` does.
//!
//! Error policy (after rustic_core's `error.rs`):
//! - Every variant says *what* failed and carries the context a user needs to act:
//!   which policy file and position, which backup, which stored object, which table.
//! - Messages are one line. Where the user can fix the cause, the message says how.
//!   A library's `Debug` output never reaches a message: SDK and driver errors are
//!   turned into a sentence where they enter pgvault (see [`describe_pg`] and the S3
//!   backend), naming the operation, the object or host, and the cause.
//! - Secrets never appear in a message: URLs are shown with their password removed,
//!   and echoed policy values are shortened and checked for secret keys.
//! - Every error has a [`ErrorKind`] (who can fix it) and knows whether it is
//!   [permanent](Error::is_permanent): the agent and the storage layer retry only
//!   temporary failures (network, throttling, a server that is starting up), never a
//!   bad policy, a missing database, a rejected password or corrupt bytes.
//! - [`Error::Context`] adds what pgvault was doing (the policy, the backup) around an
//!   error without changing its kind.
//! - Only the binaries use `anyhow`; the library returns these.

use std::path::PathBuf;

/// The result type of `pgvault-core`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Who can act on an error: it decides the wording of a report, and whether an
/// operator, a database administrator or the storage team is the one to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Something the user gave is wrong: a policy, an argument, a key, a target.
    UserInput,
    /// A PostgreSQL server (the source, a restore target, a staging server) or its
    /// client tools failed or refused.
    Database,
    /// The repository's storage failed or could not be reached.
    Repository,
    /// Stored bytes are not what was written: a digest, a size, an age authentication
    /// or a manifest does not check out.
    Corruption,
    /// The operation was cancelled (Ctrl-C, SIGTERM, shutdown).
    Cancelled,
    /// A fault inside pgvault (a worker thread that died); a bug to report.
    Internal,
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorKind::UserInput => "user input",
            ErrorKind::Database => "database",
            ErrorKind::Repository => "repository",
            ErrorKind::Corruption => "corruption",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Internal => "internal",
        })
    }
}

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

    /// The storage backend failed an operation on an object, after its retries.
    #[error("{operation} {key}: {message}")]
    Storage {
        /// The operation: put, get, list, delete, upload part, ...
        operation: &'static str,
        /// Where: the object (`s3://bucket/key`, a path) or the prefix involved.
        key: String,
        /// The cause in one line: the S3 error code or the network cause.
        message: String,
        /// Whether trying again later may succeed (network, throttling, 5xx).
        retryable: bool,
    },

    /// The store refused an operation for lack of permission (S3 `AccessDenied`): the
    /// credentials do not allow it, or the object version is locked (Object Lock).
    #[error("{operation} {key}: {message}")]
    AccessDenied {
        /// The operation: put, delete, …
        operation: &'static str,
        /// Where: the object (`s3://bucket/key`) or the bucket.
        key: String,
        /// The cause in one line, with what to do.
        message: String,
    },

    /// An object cannot be deleted yet: a stored version of it is under an Object Lock
    /// retention or legal hold (docs/FORMAT.md §10.1). Nothing of it was deleted.
    #[error("{key} cannot be deleted yet: it is locked ({lock})")]
    ObjectLocked {
        /// The object, relative to the repository root.
        key: String,
        /// The lock in words (`compliance until …`, `legal hold`).
        lock: String,
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

    /// A PostgreSQL query or connection failed. The driver error is kept for its
    /// SQLSTATE but shown only as [`describe_pg`]'s one line.
    #[error("{context}: {}", describe_pg(cause))]
    Postgres {
        /// What pgvault was doing, naming the server, database or table.
        context: String,
        /// The driver error.
        cause: tokio_postgres::Error,
    },

    /// A connection to PostgreSQL could not be set up before any query ran (TLS
    /// settings, certificates, an unreachable host), already described in one line.
    #[error("{context}: {message}")]
    Connect {
        /// Which server, as `host:port`.
        context: String,
        /// What went wrong and what to do.
        message: String,
        /// Whether trying again later may succeed (refused, timed out).
        temporary: bool,
    },

    /// A PostgreSQL client tool (pg_dump, pg_restore, …) failed.
    #[error("{tool} failed: {message}")]
    Tool {
        /// The tool's name.
        tool: String,
        /// Its exit status, its first error line and the last lines of its stderr.
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

    /// A fault inside pgvault, such as a worker thread that panicked.
    #[error("internal error: {0}")]
    Internal(String),

    /// What pgvault was doing when `source` happened (the policy, the backup).
    #[error("{context}: {source}")]
    Context {
        /// What pgvault was doing.
        context: String,
        /// The error.
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// Who can act on this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Policy { .. }
            | Error::Io { .. }
            | Error::BackupNotFound { .. }
            | Error::NoBackups { .. }
            | Error::WrongKey { .. }
            | Error::Identity { .. }
            | Error::ToolNotFound { .. }
            | Error::TargetNotEmpty { .. }
            | Error::TargetBusy { .. }
            | Error::NoSpace { .. }
            | Error::Invalid(_) => ErrorKind::UserInput,
            Error::Postgres { .. } | Error::Connect { .. } | Error::Tool { .. } => {
                ErrorKind::Database
            }
            Error::Storage { .. }
            | Error::AccessDenied { .. }
            | Error::ObjectLocked { .. }
            | Error::ObjectNotFound { .. }
            | Error::WalNotFound { .. }
            | Error::WalConflict { .. } => ErrorKind::Repository,
            Error::Manifest { .. } | Error::Integrity { .. } | Error::Decrypt { .. } => {
                ErrorKind::Corruption
            }
            Error::Cancelled => ErrorKind::Cancelled,
            Error::Internal(_) => ErrorKind::Internal,
            Error::Context { source, .. } => source.kind(),
        }
    }

    /// Whether trying the same thing again later cannot succeed. Temporary errors are
    /// network failures, throttling, server errors and a server that is starting up or
    /// has too many clients; everything else is permanent.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::Storage { retryable, .. } => !retryable,
            Error::Postgres { cause, .. } => !pg_is_temporary(cause),
            Error::Connect { temporary, .. } => !temporary,
            Error::Tool { message, .. } => !tool_failure_is_temporary(message),
            Error::Context { source, .. } => source.is_permanent(),
            _ => true,
        }
    }

    /// Whether retrying the failed operation may succeed (the opposite of
    /// [`Error::is_permanent`]).
    pub fn is_retryable(&self) -> bool {
        !self.is_permanent()
    }

    /// The innermost error, below every [`Error::Context`].
    pub fn root(&self) -> &Error {
        match self {
            Error::Context { source, .. } => source.root(),
            other => other,
        }
    }

    /// Whether the store refused for lack of permission ([`Error::AccessDenied`]):
    /// credentials without delete rights (an agent whose retention runs elsewhere) or a
    /// locked object version.
    pub fn is_access_denied(&self) -> bool {
        matches!(self.root(), Error::AccessDenied { .. })
    }

    /// Build an [`Error::Io`] with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Build an [`Error::Postgres`] with context.
    pub fn pg(context: impl Into<String>, cause: tokio_postgres::Error) -> Self {
        Error::Postgres {
            context: context.into(),
            cause,
        }
    }

    /// Say what pgvault was doing around this error (kind and permanence are kept).
    pub fn within(self, context: impl Into<String>) -> Self {
        Error::Context {
            context: context.into(),
            source: Box::new(self),
        }
    }
}

/// Adds [`Error::within`] to results, so a step can name what it was doing.
pub trait ResultExt<T> {
    /// Wrap an error in what pgvault was doing (computed only on error).
    fn within<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T>;
}

impl<T> ResultExt<T> for Result<T> {
    fn within<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| e.within(context()))
    }
}

/// The longest run of non-blank characters an error message repeats from the input.
const ECHO_LIMIT: usize = 100;

/// Make a message that repeats user input safe to print: an age secret key is never
/// shown, and any run of non-blank characters longer than `ECHO_LIMIT` (a pasted
/// blob, a 10 MB key) is cut to its start with the length it had.
pub fn safe_echo(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(1024));
    let mut rest = message;
    while !rest.is_empty() {
        let blank = rest
            .find(|c: char| !c.is_whitespace())
            .unwrap_or(rest.len());
        out.push_str(&rest[..blank]);
        rest = &rest[blank..];
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let word = &rest[..end];
        rest = &rest[end..];
        if let Some(at) = word.find("AGE-SECRET-KEY-") {
            out.push_str(&word[..at]);
            out.push_str("AGE-SECRET-KEY-…(secret, not shown)");
            continue;
        }
        let chars = word.chars().count();
        if chars > ECHO_LIMIT {
            out.extend(word.chars().take(ECHO_LIMIT));
            out.push_str(&format!("…({chars} characters)"));
        } else {
            out.push_str(word);
        }
    }
    out
}

/// One line for a tokio-postgres error, never its `Debug`: the server's own words for
/// errors the server sent (`FATAL: database "x" does not exist`), the network cause for
/// connection failures (`connection refused`), and the TLS cause for handshakes.
pub fn describe_pg(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut line = format!("{}: {}", db.severity(), db.message());
        if let Some(detail) = db.detail() {
            line.push_str(&format!(" ({})", one_line(detail)));
        }
        if let Some(hint) = db.hint() {
            line.push_str(&format!("; hint: {}", one_line(hint)));
        }
        return line;
    }
    if e.is_closed() {
        return "the server closed the connection".into();
    }
    // Walk the causes for the innermost readable one: an io error names the network
    // cause, a TLS error the certificate problem.
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    let mut innermost = None;
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return describe_io(io);
        }
        innermost = Some(c);
        cause = c.source();
    }
    let top = e.to_string();
    match innermost {
        Some(inner) => format!("{}: {}", top, one_line(&inner.to_string())),
        None => top,
    }
}

/// The network cause of an io error in a few words (`connection refused`).
pub fn describe_io(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused".into(),
        K::ConnectionReset => "connection reset by peer".into(),
        K::ConnectionAborted => "connection aborted".into(),
        K::TimedOut => "timed out".into(),
        K::UnexpectedEof => "the connection closed unexpectedly".into(),
        K::BrokenPipe => "the connection broke (broken pipe)".into(),
        K::AddrNotAvailable => "address not available".into(),
        K::NotFound => format!("not found ({})", one_line(&e.to_string())),
        _ => one_line(&e.to_string()),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether a tokio-postgres error may go away on its own: the connection broke, or the
/// server is starting, shutting down, or has no free connection slot.
pub(crate) fn pg_is_temporary(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => {
            let code = code.code();
            // 08: connection exception; 53: insufficient resources (too many
            // connections, out of memory or disk); 57P01-57P05: admin shutdown, crash
            // shutdown, cannot connect now, database dropped (not 57P04), idle timeout.
            code.starts_with("08")
                || code.starts_with("53")
                || matches!(
                    code,
                    "57P01" | "57P02" | "57P03" | "57P05" | "40001" | "40P01"
                )
        }
        None => e.as_db_error().is_none(),
    }
}

/// Whether a client tool's failure (its stderr, as libpq words it) is a connection
/// problem that may go away, rather than a refusal that will not.
fn tool_failure_is_temporary(message: &str) -> bool {
    const TEMPORARY: &[&str] = &[
        "could not connect to server",
        "connection to server",
        "server closed the connection unexpectedly",
        "Connection refused",
        "Connection reset",
        "timeout expired",
        "the database system is starting up",
        "the database system is shutting down",
        "the database system is in recovery mode",
        "too many clients already",
        "remaining connection slots are reserved",
    ];
    // A refusal the server states plainly is permanent even if it arrives on the way
    // to connecting ("connection to server … failed: FATAL: password authentication
    // failed").
    const PERMANENT: &[&str] = &[
        "password authentication failed",
        "does not exist",
        "no pg_hba.conf entry",
        "permission denied",
        "certificate",
        "SSL",
    ];
    TEMPORARY.iter().any(|t| message.contains(t)) && !PERMANENT.iter().any(|p| message.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_permanence_follow_the_variant() {
        let bad_policy = Error::Invalid("x".into());
        assert_eq!(bad_policy.kind(), ErrorKind::UserInput);
        assert!(bad_policy.is_permanent());
        let throttled = Error::Storage {
            operation: "put",
            key: "s3://b/k".into(),
            message: "SlowDown".into(),
            retryable: true,
        };
        assert_eq!(throttled.kind(), ErrorKind::Repository);
        assert!(!throttled.is_permanent());
        let wrapped = throttled.within("backup 1 of policy app");
        assert_eq!(wrapped.kind(), ErrorKind::Repository);
        assert!(!wrapped.is_permanent());
        assert!(wrapped
            .to_string()
            .starts_with("backup 1 of policy app: put s3://b/k: SlowDown"));
        let corrupt = Error::Integrity {
            object: "o".into(),
            message: "m".into(),
        };
        assert_eq!(corrupt.within("verify").kind(), ErrorKind::Corruption);
    }

    #[test]
    fn tool_failures_are_temporary_only_for_connection_trouble() {
        let temporary = |m: &str| {
            !Error::Tool {
                tool: "pg_dump".into(),
                message: m.into(),
            }
            .is_permanent()
        };
        assert!(temporary("exit status: 1: pg_dump: error: connection to server at \"db\" (10.0.0.5), port 5432 failed: Connection refused"));
        assert!(temporary(
            "exit status: 1: pg_dump: error: server closed the connection unexpectedly"
        ));
        assert!(!temporary("exit status: 1: pg_dump: error: connection to server at \"db\" failed: FATAL:  database \"x\" does not exist"));
        assert!(!temporary(
            "exit status: 1: pg_dump: error: query failed: ERROR:  permission denied for table t"
        ));
    }

    #[test]
    fn io_causes_read_as_words() {
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(describe_io(&e), "connection refused");
    }
}
