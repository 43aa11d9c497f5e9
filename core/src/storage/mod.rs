//! Where repository objects live: one trait, [`Storage`], with an S3 backend and a
//! local-filesystem backend that store the same format.
//!
//! Contracts every backend keeps (checked by the conformance tests in `integration/`):
//! - keys are `/`-separated paths relative to the repository root;
//! - [`Storage::put`] and [`Upload::complete`] make an object appear atomically and
//!   durably: a reader sees the whole object or none of it;
//! - an [`Upload`] that is aborted, or never completed, leaves no visible object; until
//!   aborted it is listed by [`Storage::pending_uploads`];
//! - parts of an upload may arrive out of order and concurrently; part numbers start at 1;
//! - a missing object is [`Error::ObjectNotFound`], never an empty one.

mod fs;
mod s3;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};

pub use fs::FilesystemStorage;
pub use s3::{LifecycleSettings, S3Storage};

use crate::error::{Error, Result};

/// Where a repository lives: the only part of a policy a backend needs to know, with
/// [`StorageSettings`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An S3 (or S3-compatible) bucket and key prefix.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix inside the bucket, without leading or trailing `/` (may be empty).
        prefix: String,
    },
    /// A directory on a local filesystem (the embedded default).
    Filesystem {
        /// The repository root directory.
        root: PathBuf,
    },
}

/// Everything needed to open a repository's storage, validated from a policy's
/// `[repository]` section. Storage knows nothing of policies: the policy hands it this.
#[derive(Debug, Clone)]
pub struct StorageSettings {
    /// Bucket/prefix or directory.
    pub location: Location,
    /// Custom S3 endpoint (MinIO, Garage, …); implies path-style addressing.
    pub endpoint: Option<String>,
    /// S3 region; when absent the AWS chain decides.
    pub region: Option<String>,
    /// Lifecycle rules `pgvault storage init` applies (S3 only).
    pub lifecycle: LifecycleSettings,
    /// Timeouts and retries of every storage request (S3 only).
    pub requests: RequestSettings,
}

/// One stored object, as listing reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the repository root.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// When it was last written, when the backend knows (S3 `LastModified`, file mtime).
    pub modified: Option<DateTime<Utc>>,
}

/// Timeouts and retries of every storage request, set in a policy's `[repository]`.
///
/// Each request gets `connect_timeout` to connect and `first_byte_timeout` from sending
/// it (its body included) to the first byte of the answer; a response body that moves
/// no byte for `stall_timeout` is broken. A failed request that may succeed later is
/// retried, with exponential backoff and jitter, up to `max_attempts` attempts and
/// `retry_time` of waiting in all; then the operation fails with its last error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSettings {
    /// Longest wait to open a connection.
    pub connect_timeout: std::time::Duration,
    /// Longest wait from sending a request to the first byte of its answer.
    pub first_byte_timeout: std::time::Duration,
    /// Longest time a transfer may move no data.
    pub stall_timeout: std::time::Duration,
    /// Attempts per request, the first one included.
    pub max_attempts: u32,
    /// Longest total time spent waiting between attempts of one request.
    pub retry_time: std::time::Duration,
}

impl Default for RequestSettings {
    fn default() -> Self {
        RequestSettings {
            connect_timeout: std::time::Duration::from_secs(10),
            first_byte_timeout: std::time::Duration::from_secs(120),
            stall_timeout: std::time::Duration::from_secs(60),
            max_attempts: 10,
            retry_time: std::time::Duration::from_secs(300),
        }
    }
}

/// The smallest part S3 accepts, except for an upload's last part.
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

/// The largest part S3 accepts (also for a part copied with `UploadPartCopy`).
pub const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;

/// A multipart upload that was started and neither completed nor aborted.
#[derive(Debug, Clone)]
pub struct PendingUpload {
    /// The key the upload would create.
    pub key: String,
    /// Backend-specific upload id.
    pub upload_id: String,
    /// When it was started, when the backend knows.
    pub started: Option<DateTime<Utc>>,
}

/// A repository's object store.
#[async_trait]
pub trait Storage: Send + Sync {
    /// A human-readable location (`s3://bucket/prefix`, `file:///dir`) for messages.
    fn describe(&self) -> String;

    /// Store a small object in one request, atomically replacing any previous one.
    async fn put(&self, key: &str, data: Bytes) -> Result<()>;

    /// Start a multipart upload to `key`; nothing is visible until it completes.
    async fn begin_upload(&self, key: &str) -> Result<Box<dyn Upload>>;

    /// Read `len` bytes at `offset` (fewer at the end of the object).
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes>;

    /// Read a whole (small) object.
    async fn get(&self, key: &str) -> Result<Bytes>;

    /// The object's size, or `None` when it does not exist.
    async fn size(&self, key: &str) -> Result<Option<u64>>;

    /// All objects whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;

    /// Delete an object; deleting a missing object succeeds.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Multipart uploads under `prefix` that were started and not finished.
    async fn pending_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>>;

    /// Abort a pending upload found by [`Storage::pending_uploads`] (clean-up of crashed runs).
    async fn abort_pending(&self, upload: &PendingUpload) -> Result<()>;
}

/// An in-progress multipart upload. Dropping it without [`Upload::complete`] or
/// [`Upload::abort`] leaves a pending upload for the clean-up pass.
#[async_trait]
pub trait Upload: Send + Sync {
    /// Store part `number` (1-based). Parts may arrive concurrently and out of order.
    async fn put_part(&self, number: u32, data: Bytes) -> Result<()>;

    /// Store part `number` as bytes `offset..offset + len` of the object `source` as it is
    /// now, copied inside the store (S3 `UploadPartCopy`): the bytes do not travel through
    /// pgvault. `source` may be the key this upload replaces. On S3 every part but the
    /// last must be at least [`MIN_PART_SIZE`]; the filesystem backend takes parts in
    /// order only.
    async fn copy_part(&self, number: u32, source: &str, offset: u64, len: u64) -> Result<()>;

    /// Make the object visible from parts `1..=parts`.
    async fn complete(&self, parts: u32) -> Result<()>;

    /// Discard every part; the object never appears.
    async fn abort(&self) -> Result<()>;
}

/// Open the storage `config` names. [`crate::repository::Repository::open`] is how the
/// rest of pgvault reaches it.
pub async fn open(config: &StorageSettings) -> Result<Arc<dyn Storage>> {
    match &config.location {
        Location::Filesystem { root } => Ok(Arc::new(FilesystemStorage::new(root.clone())?)),
        Location::S3 { bucket, prefix } => Ok(Arc::new(
            S3Storage::connect(
                bucket,
                prefix,
                config.endpoint.as_deref(),
                config.region.as_deref(),
                &config.requests,
            )
            .await?,
        )),
    }
}

/// Prepare a policy's repository: on S3, apply the lifecycle rules (abort incomplete
/// uploads, optional transition to a colder class). Returns what was set, one line each.
pub async fn init(config: &StorageSettings, policy: &str) -> Result<Vec<String>> {
    match &config.location {
        Location::Filesystem { root } => Ok(vec![format!(
            "{}: a filesystem repository has no lifecycle rules; `pgvault prune` removes stale uploads",
            root.display()
        )]),
        Location::S3 { bucket, prefix } => {
            let s3 = S3Storage::connect(
                bucket,
                prefix,
                config.endpoint.as_deref(),
                config.region.as_deref(),
                &config.requests,
            )
            .await?;
            s3.apply_lifecycle(policy, &config.lifecycle).await
        }
    }
}

/// Reject keys that could escape the repository root.
pub(crate) fn check_key(key: &str) -> Result<()> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(Error::Invalid(format!("invalid object key {key:?}")));
    }
    Ok(())
}
