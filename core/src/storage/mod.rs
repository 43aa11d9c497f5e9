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
//! - a missing object is [`Error::ObjectNotFound`], never an empty one;
//! - a storage that locks objects ([`Storage::locks_objects`]: S3 with a policy's
//!   `object_lock`) stores each object with its retention, except under the unlocked
//!   prefixes of [`ObjectLockSettings`], and its [`Storage::delete`] removes every
//!   version of the key (so the bytes are really gone) or, when one is still locked,
//!   nothing ([`Error::ObjectLocked`]).

mod fs;
pub mod lock;
mod s3;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};

pub use fs::FilesystemStorage;
pub use lock::{LockMode, LockSupport, ObjectLock, ObjectLockSettings, StoredVersion};
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
    /// The retention to put on every object pgvault must keep (S3 only; see [`lock`]).
    pub object_lock: Option<ObjectLockSettings>,
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

    /// Whether this storage puts a retention lock on what it stores (a policy's
    /// `object_lock` on S3). Then [`Storage::versions`] reports each version's lock and
    /// [`Storage::delete`] removes every version of a key.
    fn locks_objects(&self) -> bool {
        false
    }

    /// The retention lock on the current version of `key` as the store reports it, for
    /// reports (`verify`); `None` when it has none, or on a backend without locks.
    async fn lock_of(&self, key: &str) -> Result<Option<ObjectLock>> {
        let _ = key;
        Ok(None)
    }

    /// Every stored version of the objects under `prefix`, with its lock: what deleting
    /// them must remove, and whether it may yet. A storage that does not lock objects
    /// reports each listed object once, unversioned and unlocked (one listing).
    async fn versions(&self, prefix: &str) -> Result<Vec<StoredVersion>> {
        Ok(self
            .list(prefix)
            .await?
            .into_iter()
            .map(|o| StoredVersion {
                key: o.key,
                version_id: None,
                delete_marker: false,
                lock: None,
            })
            .collect())
    }

    /// Delete one version found by [`Storage::versions`] (an unversioned one: the
    /// object); a version already gone is deleted.
    async fn delete_version(&self, version: &StoredVersion) -> Result<()> {
        self.delete(&version.key).await
    }
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
            .await?
            .with_object_lock(config.object_lock.clone()),
        )),
    }
}

/// Prepare a policy's repository: on S3, check that the bucket can hold the locks the
/// policy asks for (Object Lock and versioning enabled; an error names what is missing
/// and nothing is changed), then apply the lifecycle rules (abort incomplete uploads,
/// optional transition to a colder class, and with locks the expiry of versions that
/// stopped being current). Returns what was found and set, one line each.
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
            .await?
            .with_object_lock(config.object_lock.clone());
            let mut lines = Vec::new();
            if let Some(lock) = &config.object_lock {
                let support = s3.lock_support().await?;
                if !support.ready() {
                    return Err(lock_unsupported(&s3.describe(), &support));
                }
                lines.push(format!(
                    "object lock: bucket {bucket} has Object Lock and versioning enabled; pgvault locks what it stores in {} mode for {} day(s){}",
                    lock.mode,
                    lock.days,
                    support
                        .default_retention
                        .map(|d| format!(" (the bucket's default retention, {d}, applies to objects stored without one)"))
                        .unwrap_or_default()
                ));
            }
            lines.extend(s3.apply_lifecycle(policy, &config.lifecycle).await?);
            Ok(lines)
        }
    }
}

/// Whether the storage `config` names can hold the locks its policy asks for: `None`
/// when the policy asks for none; otherwise what the bucket lacks (`pgvault check`).
pub async fn check_object_lock(config: &StorageSettings) -> Result<Option<LockSupport>> {
    let (Some(_), Location::S3 { bucket, prefix }) = (&config.object_lock, &config.location) else {
        return Ok(None);
    };
    let s3 = S3Storage::connect(
        bucket,
        prefix,
        config.endpoint.as_deref(),
        config.region.as_deref(),
        &config.requests,
    )
    .await?;
    s3.lock_support().await.map(Some)
}

/// The error of a bucket that cannot hold the locks a policy asks for.
pub fn lock_unsupported(location: &str, support: &LockSupport) -> Error {
    Error::Invalid(format!(
        "{location} cannot hold the object locks [repository] object_lock asks for: {}",
        support.missing.join("; ")
    ))
}

/// What keeps the objects under `prefix` from being deleted at `now`: of the locks in
/// effect on their stored versions, a legal hold, else the one that ends last. `None`
/// when everything may go, and always on a storage that does not lock objects (it is
/// not asked: no request).
pub async fn lock_in_effect(
    storage: &dyn Storage,
    prefix: &str,
    now: DateTime<Utc>,
) -> Result<Option<ObjectLock>> {
    if !storage.locks_objects() {
        return Ok(None);
    }
    let versions = storage.versions(prefix).await?;
    Ok(versions
        .into_iter()
        .filter_map(|v| v.lock)
        .filter(|l| l.in_effect(now))
        .max_by_key(|l| (l.legal_hold, l.retain_until)))
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
