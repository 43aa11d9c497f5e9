//! The S3 backend (AWS or any S3-compatible server such as Garage or MinIO).
//!
//! Credentials come from the standard AWS chain (`aws-config`): environment, profile,
//! web identity, instance metadata. A custom `endpoint` switches to path-style addressing,
//! which S3-compatible servers expect. Transient failures are retried by the SDK's
//! standard retry policy; each multipart part is a buffered `Bytes`, so it can be resent.

use std::sync::Mutex;

use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::{check_key, ObjectInfo, PendingUpload, Storage, Upload};
use crate::error::{Error, Result};

/// A repository in an S3 bucket under a key prefix.
pub struct S3Storage {
    client: Client,
    bucket: String,
    prefix: String,
}

fn sdk_err<E>(operation: &'static str, key: &str, err: SdkError<E, HttpResponse>) -> Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    if status == Some(404) {
        return Error::ObjectNotFound { key: key.into() };
    }
    let retryable = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        _ => status.map(|s| s >= 500 || s == 429).unwrap_or(false),
    };
    Error::Storage {
        operation,
        key: key.into(),
        message: format!("{}", DisplayErrorContext(&err)),
        retryable,
    }
}

/// Read a GET response body to the end; a connection lost mid-body is retryable.
async fn collect_body(body: ByteStream, key: &str) -> Result<Bytes> {
    let data = body.collect().await.map_err(|e| Error::Storage {
        operation: "get",
        key: key.into(),
        message: e.to_string(),
        retryable: true,
    })?;
    Ok(data.into_bytes())
}

impl S3Storage {
    /// Connect to `bucket` with the standard AWS credential chain.
    pub async fn connect(
        bucket: &str,
        prefix: &str,
        endpoint: Option<&str>,
        region: Option<&str>,
    ) -> Result<Self> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = region {
            loader = loader.region(aws_config::Region::new(region.to_string()));
        }
        let shared = loader.load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared)
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(5));
        if shared.region().is_none() {
            builder = builder.region(aws_config::Region::new("us-east-1"));
        }
        if let Some(endpoint) = endpoint {
            builder = builder.endpoint_url(endpoint).force_path_style(true);
        }
        Ok(S3Storage {
            client: Client::from_conf(builder.build()),
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        })
    }

    fn full_key(&self, key: &str) -> Result<String> {
        check_key(key)?;
        Ok(if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{}", self.prefix, key)
        })
    }

    fn relative(&self, full: &str) -> String {
        if self.prefix.is_empty() {
            full.to_string()
        } else {
            full.strip_prefix(&format!("{}/", self.prefix))
                .unwrap_or(full)
                .to_string()
        }
    }

    fn full_prefix(&self, prefix: &str) -> String {
        if self.prefix.is_empty() {
            prefix.to_string()
        } else {
            format!("{}/{}", self.prefix, prefix)
        }
    }
}

/// Lifecycle settings `pgvault storage init` applies to a policy's part of a bucket.
#[derive(Debug, Clone)]
pub struct LifecycleSettings {
    /// Abort multipart uploads this many days after they started.
    pub abort_incomplete_after_days: i32,
    /// Move backup objects to `storage_class` this many days after they were written.
    pub transition: Option<(i32, String)>,
}

impl S3Storage {
    /// Apply lifecycle rules for `policy` (idempotent): rules pgvault set before for this
    /// policy are replaced, every other rule of the bucket is kept. Returns the rules set.
    pub async fn apply_lifecycle(
        &self,
        policy: &str,
        settings: &LifecycleSettings,
    ) -> Result<Vec<String>> {
        use aws_sdk_s3::types::{
            AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, ExpirationStatus,
            LifecycleRule, LifecycleRuleFilter, Transition, TransitionStorageClass,
        };
        let rule_prefix = format!("pgvault-{policy}-");
        let existing = match self
            .client
            .get_bucket_lifecycle_configuration()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(out) => out.rules().to_vec(),
            Err(e) => match sdk_err("get lifecycle", &self.bucket, e) {
                // No configuration yet.
                Error::ObjectNotFound { .. } => Vec::new(),
                other => return Err(other),
            },
        };
        let mut rules: Vec<LifecycleRule> = existing
            .into_iter()
            .filter(|r| !r.id().is_some_and(|id| id.starts_with(&rule_prefix)))
            .collect();
        let build_err = |e: aws_sdk_s3::error::BuildError| {
            Error::Invalid(format!("invalid lifecycle rule: {e}"))
        };
        let mut described = Vec::new();
        let policy_prefix = self.full_prefix(&format!("{policy}/"));
        rules.push(
            LifecycleRule::builder()
                .id(format!("{rule_prefix}abort-incomplete-uploads"))
                .status(ExpirationStatus::Enabled)
                .filter(
                    LifecycleRuleFilter::builder()
                        .prefix(&policy_prefix)
                        .build(),
                )
                .abort_incomplete_multipart_upload(
                    AbortIncompleteMultipartUpload::builder()
                        .days_after_initiation(settings.abort_incomplete_after_days)
                        .build(),
                )
                .build()
                .map_err(build_err)?,
        );
        described.push(format!(
            "{rule_prefix}abort-incomplete-uploads: abort multipart uploads under {policy_prefix} after {} day(s)",
            settings.abort_incomplete_after_days
        ));
        if let Some((days, class)) = &settings.transition {
            let backups_prefix = self.full_prefix(&format!("{policy}/backups/"));
            rules.push(
                LifecycleRule::builder()
                    .id(format!("{rule_prefix}transition"))
                    .status(ExpirationStatus::Enabled)
                    .filter(
                        LifecycleRuleFilter::builder()
                            .prefix(&backups_prefix)
                            .build(),
                    )
                    .transitions(
                        Transition::builder()
                            .days(*days)
                            .storage_class(TransitionStorageClass::from(class.as_str()))
                            .build(),
                    )
                    .build()
                    .map_err(build_err)?,
            );
            described.push(format!(
                "{rule_prefix}transition: move objects under {backups_prefix} to {class} after {days} day(s)"
            ));
        }
        self.client
            .put_bucket_lifecycle_configuration()
            .bucket(&self.bucket)
            .lifecycle_configuration(
                BucketLifecycleConfiguration::builder()
                    .set_rules(Some(rules))
                    .build()
                    .map_err(build_err)?,
            )
            .send()
            .await
            .map_err(|e| sdk_err("put lifecycle", &self.bucket, e))?;
        Ok(described)
    }

    /// Ids of the bucket's lifecycle rules (for checks and tests).
    pub async fn lifecycle_rule_ids(&self) -> Result<Vec<String>> {
        match self
            .client
            .get_bucket_lifecycle_configuration()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(out) => Ok(out
                .rules()
                .iter()
                .filter_map(|r| r.id().map(str::to_string))
                .collect()),
            Err(e) => match sdk_err("get lifecycle", &self.bucket, e) {
                Error::ObjectNotFound { .. } => Ok(Vec::new()),
                other => Err(other),
            },
        }
    }
}

#[async_trait]
impl Storage for S3Storage {
    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let full = self.full_key(key)?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| sdk_err("put", &full, e))?;
        Ok(())
    }

    async fn begin_upload(&self, key: &str) -> Result<Box<dyn Upload>> {
        let full = self.full_key(key)?;
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| sdk_err("begin upload", &full, e))?;
        let upload_id = out
            .upload_id()
            .map(str::to_string)
            .ok_or_else(|| Error::Storage {
                operation: "begin upload",
                key: full.clone(),
                message: "the server returned no upload id".into(),
                retryable: false,
            })?;
        Ok(Box::new(S3Upload {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: full,
            upload_id,
            etags: Mutex::new(Vec::new()),
        }))
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes> {
        let full = self.full_key(key)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .range(format!("bytes={}-{}", offset, offset + len - 1))
            .send()
            .await
            .map_err(|e| sdk_err("get", &full, e))?;
        collect_body(out.body, &full).await
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let full = self.full_key(key)?;
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| sdk_err("get", &full, e))?;
        collect_body(out.body, &full).await
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        let full = self.full_key(key)?;
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(out) => Ok(Some(out.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) => match sdk_err("stat", &full, e) {
                Error::ObjectNotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let full_prefix = self.full_prefix(prefix);
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full_prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_err("list", &full_prefix, e))?;
            for obj in page.contents() {
                if let Some(k) = obj.key() {
                    out.push(ObjectInfo {
                        key: self.relative(k),
                        size: obj.size().unwrap_or(0).max(0) as u64,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let full = self.full_key(key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| sdk_err("delete", &full, e))?;
        Ok(())
    }

    async fn abort_pending(&self, upload: &PendingUpload) -> Result<()> {
        let full = self.full_key(&upload.key)?;
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&full)
            .upload_id(&upload.upload_id)
            .send()
            .await
            .map_err(|e| sdk_err("abort upload", &full, e))?;
        Ok(())
    }

    async fn pending_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        let full_prefix = self.full_prefix(prefix);
        let mut out = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut id_marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(&full_prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(|e| sdk_err("list uploads", &full_prefix, e))?;
            for u in page.uploads() {
                out.push(PendingUpload {
                    key: self.relative(u.key().unwrap_or_default()),
                    upload_id: u.upload_id().unwrap_or_default().to_string(),
                    started: u
                        .initiated()
                        .and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos())),
                });
            }
            if page.is_truncated() == Some(true) {
                key_marker = page.next_key_marker().map(str::to_string);
                id_marker = page.next_upload_id_marker().map(str::to_string);
                if key_marker.is_none() {
                    break;
                }
            } else {
                break;
            }
        }
        Ok(out)
    }
}

struct S3Upload {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    etags: Mutex<Vec<(u32, String)>>,
}

#[async_trait]
impl Upload for S3Upload {
    async fn put_part(&self, number: u32, data: Bytes) -> Result<()> {
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(number as i32)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| sdk_err("upload part", &self.key, e))?;
        let etag = out.e_tag().unwrap_or_default().to_string();
        self.etags
            .lock()
            .map_err(|_| Error::Invalid("upload state poisoned".into()))?
            .push((number, etag));
        Ok(())
    }

    async fn complete(&self, parts: u32) -> Result<()> {
        let mut etags = self
            .etags
            .lock()
            .map_err(|_| Error::Invalid("upload state poisoned".into()))?
            .clone();
        etags.sort_by_key(|(n, _)| *n);
        if etags.len() != parts as usize {
            return Err(Error::Storage {
                operation: "complete upload",
                key: self.key.clone(),
                message: format!("expected {parts} parts, {} were uploaded", etags.len()),
                retryable: false,
            });
        }
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(
                etags
                    .into_iter()
                    .map(|(n, e)| {
                        CompletedPart::builder()
                            .part_number(n as i32)
                            .e_tag(e)
                            .build()
                    })
                    .collect(),
            ))
            .build();
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(completed)
            .send()
            .await
            .map_err(|e| sdk_err("complete upload", &self.key, e))?;
        Ok(())
    }

    async fn abort(&self) -> Result<()> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .send()
            .await
            .map_err(|e| sdk_err("abort upload", &self.key, e))?;
        Ok(())
    }
}
