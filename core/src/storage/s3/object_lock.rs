//! Object Lock on S3: reading an object version's retention, listing a prefix's
//! versions with their locks, deleting every version of a key (never a locked one), setting
//! the retention of a completed upload, and checking that a bucket can hold locks.
//!
//! Locks are read with `HeadObject` (its `x-amz-object-lock-*` headers), which every store
//! that implements Object Lock answers; S3 returns those headers only to credentials
//! with `s3:GetObjectRetention` and `s3:GetObjectLegalHold` (docs/SECURITY.md).

use chrono::Utc;
use futures::StreamExt;

use super::{from_s3_time, s3_time, S3Storage};
use crate::error::{Error, Result};
use crate::storage::lock::{LockMode, LockSupport, ObjectLock, StoredVersion};

/// HEAD requests in flight while reading the locks of a listing's versions.
const HEADS_IN_FLIGHT: usize = 16;

impl S3Storage {
    /// The lock of object `full` (a version of it, or the current one), from its
    /// headers; `None` when it has none.
    pub(super) async fn head_lock(
        &self,
        full: &str,
        version_id: Option<&str>,
    ) -> Result<Option<ObjectLock>> {
        self.retrying("stat", &self.url(full), move || async move {
            let out = self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(full)
                .set_version_id(version_id.map(str::to_string))
                .send()
                .await
                .map_err(|e| self.sdk_err("stat", full, e))?;
            let lock = ObjectLock {
                mode: out
                    .object_lock_mode()
                    .and_then(|m| LockMode::from_s3(m.as_str())),
                retain_until: out.object_lock_retain_until_date().and_then(from_s3_time),
                legal_hold: out
                    .object_lock_legal_hold_status()
                    .is_some_and(|h| h.as_str().eq_ignore_ascii_case("ON")),
            };
            Ok((lock.retain_until.is_some() || lock.legal_hold).then_some(lock))
        })
        .await
    }

    /// Every version and delete marker under relative `prefix`, each version with its
    /// lock (one HEAD per version).
    pub(super) async fn locked_versions(&self, prefix: &str) -> Result<Vec<StoredVersion>> {
        let full_prefix = self.full_prefix(prefix);
        let mut found: Vec<(String, String, bool)> = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut id_marker: Option<String> = None;
        loop {
            let (prefix_ref, key_ref, id_ref) = (&full_prefix, &key_marker, &id_marker);
            let page = self
                .retrying(
                    "list versions",
                    &self.url(&full_prefix),
                    move || async move {
                        self.client
                            .list_object_versions()
                            .bucket(&self.bucket)
                            .prefix(prefix_ref)
                            .set_key_marker(key_ref.clone())
                            .set_version_id_marker(id_ref.clone())
                            .send()
                            .await
                            .map_err(|e| self.sdk_err("list versions", prefix_ref, e).into())
                    },
                )
                .await?;
            for v in page.versions() {
                if let (Some(key), Some(id)) = (v.key(), v.version_id()) {
                    found.push((key.to_string(), id.to_string(), false));
                }
            }
            for m in page.delete_markers() {
                if let (Some(key), Some(id)) = (m.key(), m.version_id()) {
                    found.push((key.to_string(), id.to_string(), true));
                }
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_version_id_marker().map(str::to_string);
            if key_marker.is_none() {
                break;
            }
        }
        let read: Vec<Result<Option<StoredVersion>>> = futures::stream::iter(found)
            .map(|(full, id, delete_marker)| async move {
                let lock = if delete_marker {
                    None
                } else {
                    match self.head_lock(&full, Some(&id)).await {
                        Ok(lock) => lock,
                        // Deleted since the listing: nothing left to protect.
                        Err(Error::ObjectNotFound { .. }) => return Ok(None),
                        Err(e) => return Err(e),
                    }
                };
                Ok(Some(StoredVersion {
                    key: self.relative(&full),
                    version_id: Some(id),
                    delete_marker,
                    lock,
                }))
            })
            .buffered(HEADS_IN_FLIGHT)
            .collect()
            .await;
        let mut versions = Vec::new();
        for v in read {
            versions.extend(v?);
        }
        versions.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(versions)
    }

    /// Delete every version and delete marker of relative `key`, so its bytes are
    /// gone; when a version is still locked, delete nothing and say until when.
    pub(super) async fn delete_every_version(&self, key: &str) -> Result<()> {
        crate::storage::check_key(key)?;
        let now = Utc::now();
        let versions: Vec<StoredVersion> = self
            .locked_versions(key)
            .await?
            .into_iter()
            .filter(|v| v.key == key)
            .collect();
        if let Some(lock) = versions
            .iter()
            .filter_map(|v| v.lock.as_ref())
            .find(|l| l.in_effect(now))
        {
            return Err(Error::ObjectLocked {
                key: key.to_string(),
                lock: lock.describe(),
            });
        }
        for v in &versions {
            if let Some(id) = &v.version_id {
                self.delete_one_version(key, id).await?;
            }
        }
        Ok(())
    }

    /// Delete one version of relative `key`; a version already gone is deleted.
    pub(super) async fn delete_one_version(&self, key: &str, version_id: &str) -> Result<()> {
        let full = self.full_key(key)?;
        let full_ref = &full;
        self.retrying("delete", &self.url(&full), move || async move {
            match self
                .client
                .delete_object()
                .bucket(&self.bucket)
                .key(full_ref)
                .version_id(version_id)
                .send()
                .await
            {
                Ok(_) => Ok(()),
                Err(e) => match e.as_service_error().and_then(|s| {
                    aws_sdk_s3::error::ProvideErrorMetadata::code(s).map(str::to_string)
                }) {
                    Some(code) if code == "NoSuchVersion" || code == "NoSuchKey" => Ok(()),
                    _ => Err(self.sdk_err("delete", full_ref, e).into()),
                },
            }
        })
        .await
    }

    /// Put retention `(mode, until)` on object `full` (its version `version_id`, or the
    /// current one).
    pub(super) async fn set_retention(
        &self,
        full: &str,
        version_id: Option<&str>,
        (mode, until): (LockMode, chrono::DateTime<Utc>),
    ) -> Result<()> {
        use aws_sdk_s3::types::{ObjectLockRetention, ObjectLockRetentionMode};
        let retention = ObjectLockRetention::builder()
            .mode(ObjectLockRetentionMode::from(mode.as_s3()))
            .retain_until_date(s3_time(until))
            .build();
        let retention_ref = &retention;
        self.retrying("lock", &self.url(full), move || async move {
            self.client
                .put_object_retention()
                .bucket(&self.bucket)
                .key(full)
                .set_version_id(version_id.map(str::to_string))
                .retention(retention_ref.clone())
                .send()
                .await
                .map_err(|e| self.sdk_err("lock", full, e))?;
            Ok(())
        })
        .await
    }

    /// Whether the bucket can hold locks: Object Lock enabled (which S3 allows only on
    /// versioned buckets) and versioning enabled; and its default retention, if any.
    pub async fn lock_support(&self) -> Result<LockSupport> {
        let mut support = LockSupport::default();
        let bucket = format!("s3://{}", self.bucket);
        let versioning = self
            .retrying("get versioning of", &bucket, move || async move {
                self.client
                    .get_bucket_versioning()
                    .bucket(&self.bucket)
                    .send()
                    .await
                    .map_err(|e| self.sdk_err("get versioning of", "", e).into())
            })
            .await;
        match versioning {
            Ok(out) => {
                let status = out.status().map(|s| s.as_str().to_string());
                if status.as_deref() != Some("Enabled") {
                    support.missing.push(format!(
                        "versioning is {} (it must be Enabled)",
                        status.map_or("not enabled".to_string(), |s| format!("{s:?}"))
                    ));
                }
            }
            Err(e) if e.is_access_denied() => return Err(e),
            Err(e) => support
                .missing
                .push(format!("the store does not report versioning ({e})")),
        }
        let configuration = self
            .client
            .get_object_lock_configuration()
            .bucket(&self.bucket)
            .send()
            .await;
        match configuration {
            Ok(out) => {
                let config = out.object_lock_configuration();
                let enabled = config
                    .and_then(|c| c.object_lock_enabled())
                    .is_some_and(|e| e.as_str() == "Enabled");
                if !enabled {
                    support
                        .missing
                        .push("Object Lock is not enabled on the bucket".into());
                }
                if let Some(d) = config
                    .and_then(|c| c.rule())
                    .and_then(|r| r.default_retention())
                {
                    let mode = d
                        .mode()
                        .map(|m| m.as_str().to_lowercase())
                        .unwrap_or_default();
                    let span = match (d.days(), d.years()) {
                        (Some(days), _) => format!("{days} day(s)"),
                        (None, Some(years)) => format!("{years} year(s)"),
                        (None, None) => String::new(),
                    };
                    support.default_retention = Some(format!("{mode} for {span}"));
                }
            }
            Err(e) => {
                let code = e
                    .as_service_error()
                    .and_then(aws_sdk_s3::error::ProvideErrorMetadata::code)
                    .map(str::to_string);
                match self.sdk_err("get object lock configuration of", "", e) {
                    denied @ Error::AccessDenied { .. } => return Err(denied),
                    _ if code.as_deref() == Some("ObjectLockConfigurationNotFoundError") => {
                        support.missing.push(
                            "Object Lock is not enabled on the bucket (it can only be enabled on a versioned bucket; on AWS when the bucket is created, or later with PutObjectLockConfiguration)".into(),
                        )
                    }
                    other => support
                        .missing
                        .push(format!("the store does not support Object Lock ({other})")),
                }
            }
        }
        Ok(support)
    }
}
