//! The S3 backend (AWS or any S3-compatible server such as Garage, MinIO, Ceph or R2).
//!
//! Credentials come from the standard AWS chain (`aws-config`): environment, profile,
//! web identity, instance metadata; they are resolved once when the storage is opened,
//! so "no credentials" is one clear line before any transfer starts. A custom
//! `endpoint` switches to path-style addressing, which S3-compatible servers expect.
//!
//! **Nothing waits forever, and a flaky network does not fail a run.** Every request
//! has a connect timeout and a first-byte timeout, and every response body a stall
//! timeout between chunks ([`RequestSettings`]). Temporary failures (throttling, 5xx,
//! resets, timeouts, cut-off bodies) are retried here, with exponential backoff and
//! jitter (`backon`) within a bounded total time; permanent ones (403, a missing bucket,
//! 400) are not. The SDK's own retries are off so that this one policy, which knows
//! pgvault's error kinds, decides. A download that breaks mid-body continues with a
//! ranged GET from the last byte received (pinned to the first response's ETag), so
//! the reader sees one unbroken stream.
//!
//! **Idempotency of retried writes.** A request can succeed on the server while its
//! answer is lost; the retry must then not fail. A `CompleteMultipartUpload` retried
//! after such a loss finds the upload gone (`NoSuchUpload`) and checks that the object
//! is there with the expected size; an abort retried the same way is done; a
//! `CreateMultipartUpload` that had to be retried may have left a twin upload, so the
//! twins of that key are aborted when the upload ends.
//!
//! **Checksums.** Newer AWS SDKs add CRC32 trailers (`aws-chunked` bodies) and demand
//! response checksums by default, which several S3-compatible stores reject or lack.
//! pgvault sends and checks checksums only where the S3 API requires them
//! (`when_required`); its own SHA-256 digests in the manifest cover every stored byte
//! end to end (docs/FORMAT.md §10.1).
//!
//! **Object Lock.** With a policy's `object_lock`, every object outside the unlocked
//! (scratch) prefixes is stored with its retention: `PutObject` carries the
//! `x-amz-object-lock-*` headers, and so does `CreateMultipartUpload`, and a completed
//! multipart upload gets the same retention again with `PutObjectRetention` on its new
//! version (some stores ignore the headers of an upload in parts). Uploads then carry
//! `Content-MD5`, which S3 demands of locked writes. A delete removes every version of
//! the key, after checking that none is locked (`object_lock.rs`).
//!
//! Errors are one line naming the operation, the `s3://bucket/key` and the cause: the S3
//! error code or the network cause, never the SDK's `Debug` output.

mod object_lock;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{
    ProvideCredentials, RequestChecksumCalculation, ResponseChecksumValidation,
    StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::lock::{ObjectLock, ObjectLockSettings, StoredVersion};
use super::{check_key, ObjectInfo, PendingUpload, RequestSettings, Storage, Upload};
use crate::error::{describe_io, Error, Result};

/// A repository in an S3 bucket under a key prefix.
pub struct S3Storage {
    client: Client,
    bucket: String,
    prefix: String,
    /// Where requests go, for messages: the custom endpoint or "AWS S3".
    endpoint: String,
    settings: RequestSettings,
    /// The retention put on what is stored, when the policy asks for one.
    object_lock: Option<ObjectLockSettings>,
}

/// What one failed attempt tells the retry loop.
struct Attempt {
    error: Error,
    /// Bytes of a response body received before it broke (downloads resume after them).
    progressed: bool,
}

impl From<Error> for Attempt {
    fn from(error: Error) -> Self {
        Attempt {
            error,
            progressed: false,
        }
    }
}

impl S3Storage {
    /// Connect to `bucket` with the standard AWS credential chain and `settings` for
    /// timeouts and retries. Fails when no credentials can be found.
    pub async fn connect(
        bucket: &str,
        prefix: &str,
        endpoint: Option<&str>,
        region: Option<&str>,
        settings: &RequestSettings,
    ) -> Result<Self> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = region {
            loader = loader.region(aws_config::Region::new(region.to_string()));
        }
        let shared = loader.load().await;
        let where_ = format!("s3://{bucket}");
        match shared.credentials_provider() {
            None => return Err(no_credentials(&where_)),
            Some(provider) => {
                if let Err(e) = provider.provide_credentials().await {
                    use aws_credential_types::provider::error::CredentialsError;
                    return Err(match e {
                        CredentialsError::CredentialsNotLoaded(_) => no_credentials(&where_),
                        other => Error::Storage {
                            operation: "load credentials for",
                            key: where_,
                            message: format!(
                                "the AWS credential chain failed: {}",
                                error_chain(&other)
                            ),
                            retryable: true,
                        },
                    });
                }
            }
        }
        let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .connect_timeout(settings.connect_timeout)
            .read_timeout(settings.first_byte_timeout)
            .build();
        let mut builder = aws_sdk_s3::config::Builder::from(&shared)
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(timeouts)
            .stalled_stream_protection(
                StalledStreamProtectionConfig::enabled()
                    .grace_period(settings.stall_timeout)
                    .build(),
            )
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
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
            endpoint: endpoint.unwrap_or("AWS S3").to_string(),
            settings: settings.clone(),
            object_lock: None,
        })
    }

    /// Put `lock`'s retention on every object stored from now on (outside its unlocked
    /// prefixes), and delete every version of a key on delete.
    pub fn with_object_lock(mut self, lock: Option<ObjectLockSettings>) -> Self {
        self.object_lock = lock;
        self
    }

    /// The retention (mode, end) an object stored now at relative `key` gets.
    fn retention_for(&self, key: &str) -> Option<(super::LockMode, DateTime<Utc>)> {
        self.object_lock
            .as_ref()
            .filter(|lock| lock.locks(key))
            .map(|lock| (lock.mode, lock.retain_until(Utc::now())))
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

    /// `s3://bucket/key`, for messages.
    fn url(&self, full_key: &str) -> String {
        format!("s3://{}/{full_key}", self.bucket)
    }

    /// The retry schedule: exponential from 200 ms, capped at 10 s per wait, with
    /// jitter, at most `max_attempts` attempts and `retry_time` of waiting in all.
    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(10))
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(self.settings.max_attempts.saturating_sub(1) as usize)
            .with_total_delay(Some(self.settings.retry_time))
    }

    /// Run `attempt` until it succeeds, fails permanently, or the retry budget is spent.
    /// An attempt that made progress (a download that received bytes before breaking)
    /// starts the budget afresh: only attempts that get nowhere count.
    async fn retrying<T, F, Fut>(
        &self,
        operation: &'static str,
        key: &str,
        mut attempt: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, Attempt>>,
    {
        let mut delays = self.backoff().build();
        let started = Instant::now();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let failed = match attempt().await {
                Ok(value) => return Ok(value),
                Err(failed) => failed,
            };
            if failed.error.is_permanent() {
                return Err(failed.error);
            }
            if failed.progressed {
                delays = self.backoff().build();
            }
            match delays.next() {
                Some(delay) => {
                    tracing::debug!(operation, key, attempt = attempts, error = %failed.error, retry_in_ms = delay.as_millis() as u64, "S3 request failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                None => {
                    return Err(match failed.error {
                        Error::Storage {
                            operation,
                            key,
                            message,
                            ..
                        } => Error::Storage {
                            operation,
                            key,
                            message: format!(
                                "{message} (gave up after {attempts} attempt(s) in {:.0}s)",
                                started.elapsed().as_secs_f64()
                            ),
                            retryable: true,
                        },
                        other => other,
                    })
                }
            }
        }
    }

    /// Turn an SDK error into one line naming the operation, the object and the cause.
    fn sdk_err<E>(
        &self,
        operation: &'static str,
        full_key: &str,
        err: SdkError<E, HttpResponse>,
    ) -> Error
    where
        E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
    {
        let key = self.url(full_key);
        let storage = |message: String, retryable: bool| Error::Storage {
            operation,
            key: key.clone(),
            message,
            retryable,
        };
        let timeouts = format!(
            "connect timeout {}s, first-byte timeout {}s",
            self.settings.connect_timeout.as_secs_f64(),
            self.settings.first_byte_timeout.as_secs_f64()
        );
        match &err {
            SdkError::ServiceError(service) => {
                let status = service.raw().status().as_u16();
                let code = service.err().code().unwrap_or_default().to_string();
                let said = service
                    .err()
                    .message()
                    .map(|m| m.split_whitespace().collect::<Vec<_>>().join(" "))
                    .filter(|m| !m.is_empty());
                let with_code = |text: &str| match (code.is_empty(), &said) {
                    (true, _) => format!("{text} (HTTP {status})"),
                    (false, Some(m)) => format!("{text} ({code}: {})", crate::error::safe_echo(m)),
                    (false, None) => format!("{text} ({code})"),
                };
                match (status, code.as_str()) {
                    (_, "NoSuchBucket") => storage(
                        format!(
                            "bucket {:?} does not exist at {} (NoSuchBucket); create it or fix [repository] url",
                            self.bucket, self.endpoint
                        ),
                        false,
                    ),
                    (404, "NoSuchKey") | (404, "") | (404, "NotFound") => {
                        Error::ObjectNotFound { key }
                    }
                    (404, "NoSuchLifecycleConfiguration") => Error::ObjectNotFound { key },
                    (404, "NoSuchUpload") => storage(
                        "the multipart upload no longer exists (NoSuchUpload)".into(),
                        false,
                    ),
                    (_, "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "InvalidToken" | "ExpiredToken") => storage(
                        format!("S3 at {} rejected the credentials ({code}); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the profile", self.endpoint),
                        false,
                    ),
                    // Garage answers a bad signature or an unknown key id with AccessDenied
                    // and says so in the message.
                    (403, _)
                        if said.as_deref().is_some_and(|m| {
                            let m = m.to_ascii_lowercase();
                            m.contains("signature") || m.contains("no such key") || m.contains("access key")
                        }) =>
                    {
                        storage(
                            with_code(&format!("S3 at {} rejected the credentials; check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the profile", self.endpoint)),
                            false,
                        )
                    }
                    (403, _) => Error::AccessDenied {
                        operation,
                        key: key.clone(),
                        message: with_code(&format!(
                            "access denied by S3 at {}; the credentials may lack the permission for this operation, or the object is locked",
                            self.endpoint
                        )),
                    },
                    (501, _) | (_, "NotImplemented") => storage(
                        with_code(&format!("S3 at {} does not implement this operation", self.endpoint)),
                        false,
                    ),
                    (301, _) | (_, "PermanentRedirect" | "AuthorizationHeaderMalformed") => storage(
                        with_code("the bucket is in another region; set [repository] region"),
                        false,
                    ),
                    (408 | 429 | 500..=599, _) => storage(
                        with_code(&format!("S3 answered {status}")),
                        true,
                    ),
                    (_, "RequestTimeout" | "SlowDown" | "InternalError" | "ServiceUnavailable") => {
                        storage(with_code(&format!("S3 answered {status}")), true)
                    }
                    _ => storage(with_code("S3 refused the request"), false),
                }
            }
            SdkError::TimeoutError(_) => storage(format!("timed out ({timeouts})"), true),
            SdkError::DispatchFailure(dispatch) => {
                let chain = error_chain(&err);
                if chain.contains("credentials") || chain.contains("Credentials") {
                    return no_credentials(&key);
                }
                match dispatch.as_connector_error() {
                    Some(c) if c.is_timeout() => storage(
                        format!(
                            "cannot reach S3 endpoint {}: timed out ({timeouts})",
                            self.endpoint
                        ),
                        true,
                    ),
                    Some(c) if c.is_io() => storage(
                        format!(
                            "cannot reach S3 endpoint {}: {}",
                            self.endpoint,
                            io_cause(&err).unwrap_or(chain)
                        ),
                        true,
                    ),
                    Some(c) if c.is_user() => {
                        storage(format!("the request could not be sent: {chain}"), false)
                    }
                    _ => storage(
                        format!(
                            "the request to {} failed: {}",
                            self.endpoint,
                            io_cause(&err).unwrap_or(chain)
                        ),
                        true,
                    ),
                }
            }
            SdkError::ResponseError(_) => storage(
                format!(
                    "the response was cut off or malformed: {}",
                    error_chain(&err)
                ),
                true,
            ),
            SdkError::ConstructionFailure(_) => storage(
                format!("the request could not be built: {}", error_chain(&err)),
                false,
            ),
            _ => storage(error_chain(&err), true),
        }
    }

    /// Read `range` (`offset`, `len`) of an object, or all of it, resuming after a
    /// broken body from the last byte received. A response that ends before its
    /// Content-Length is a broken body too.
    async fn read(&self, full: &str, range: Option<(u64, u64)>) -> Result<Bytes> {
        let received = Mutex::new(Vec::<u8>::new());
        let etag: Mutex<Option<String>> = Mutex::new(None);
        // How many bytes the whole read is, once known.
        let wanted: Mutex<Option<u64>> = Mutex::new(range.map(|(_, len)| len));
        let lock_err = || Error::Internal("download state poisoned".into());
        let (received_ref, etag_ref, wanted_ref) = (&received, &etag, &wanted);
        self.retrying("get", &self.url(full), move || async move {
            let (received, etag, wanted) = (received_ref, etag_ref, wanted_ref);
            let have = received.lock().map_err(|_| lock_err())?.len() as u64;
            let start = range.map(|(offset, _)| offset).unwrap_or(0) + have;
            let header = match (range, have) {
                (Some((offset, len)), _) => Some(format!("bytes={start}-{}", offset + len - 1)),
                (None, 0) => None,
                (None, _) => Some(format!("bytes={start}-")),
            };
            let mut request = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(full)
                .set_range(header);
            if let Some(tag) = etag.lock().map_err(|_| lock_err())?.clone() {
                request = request.if_match(tag);
            }
            let out = request
                .send()
                .await
                .map_err(|e| self.sdk_err("get", full, e))?;
            {
                let mut tag = etag.lock().map_err(|_| lock_err())?;
                if tag.is_none() {
                    *tag = out.e_tag().map(str::to_string);
                }
                let mut wanted = wanted.lock().map_err(|_| lock_err())?;
                let length = out.content_length().unwrap_or(0).max(0) as u64;
                match (range, *wanted) {
                    // A range past the object's end comes back shorter.
                    (Some(_), Some(w)) => *wanted = Some(w.min(have + length)),
                    (None, None) => *wanted = Some(length),
                    _ => {}
                }
            }
            let mut body = out.body;
            let mut progressed = false;
            loop {
                match tokio::time::timeout(self.settings.stall_timeout, body.next()).await {
                    Err(_) => {
                        return Err(Attempt {
                            error: Error::Storage {
                                operation: "get",
                                key: self.url(full),
                                message: format!(
                                    "the download stalled: no data for {}s (stall timeout)",
                                    self.settings.stall_timeout.as_secs_f64()
                                ),
                                retryable: true,
                            },
                            progressed,
                        })
                    }
                    Ok(None) => break,
                    Ok(Some(Ok(chunk))) => {
                        progressed |= !chunk.is_empty();
                        received
                            .lock()
                            .map_err(|_| lock_err())?
                            .extend_from_slice(&chunk);
                    }
                    Ok(Some(Err(e))) => {
                        return Err(Attempt {
                            error: Error::Storage {
                                operation: "get",
                                key: self.url(full),
                                message: format!(
                                    "the download broke off: {}",
                                    io_cause(&e).unwrap_or_else(|| error_chain(&e))
                                ),
                                retryable: true,
                            },
                            progressed,
                        })
                    }
                }
            }
            let have = received.lock().map_err(|_| lock_err())?.len() as u64;
            let want = wanted.lock().map_err(|_| lock_err())?.unwrap_or(have);
            if have < want {
                return Err(Attempt {
                    error: Error::Storage {
                        operation: "get",
                        key: self.url(full),
                        message: format!("the response ended after {have} of {want} bytes"),
                        retryable: true,
                    },
                    progressed,
                });
            }
            Ok(())
        })
        .await?;
        let data = received.into_inner().map_err(|_| lock_err())?;
        Ok(Bytes::from(data))
    }
}

/// `Content-MD5` of a request body: S3 demands it (or a checksum) of every write that
/// carries a retention.
fn content_md5(data: &[u8]) -> String {
    use base64::Engine;
    use md5::Digest;
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(data))
}

/// A time as the SDK takes it (whole seconds).
fn s3_time(t: DateTime<Utc>) -> aws_sdk_s3::primitives::DateTime {
    aws_sdk_s3::primitives::DateTime::from_secs(t.timestamp())
}

/// A time the SDK returned.
fn from_s3_time(t: &aws_sdk_s3::primitives::DateTime) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos())
}

fn no_credentials(key: &str) -> Error {
    Error::Storage {
        operation: "connect to",
        key: key.to_string(),
        message: "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE (or run where instance or web-identity credentials exist)".into(),
        retryable: false,
    }
}

/// The messages of an error and its sources, joined, deduplicated, on one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        let text = err.to_string();
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = err.source();
    }
    parts.join(": ")
}

/// The innermost io error's cause in words (`connection refused`), if there is one.
fn io_cause(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut found = None;
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            found = Some(describe_io(io));
        }
        current = err.source();
    }
    found
}

/// Days after which `storage init`'s rule deletes a version that stopped being current
/// (with `object_lock`: versions deleted or replaced by anyone but pgvault).
pub const NONCURRENT_VERSION_DAYS: i32 = 7;

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
            LifecycleExpiration, LifecycleRule, LifecycleRuleFilter, NoncurrentVersionExpiration,
            Transition, TransitionStorageClass,
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
            Err(e) => match self.sdk_err("get lifecycle", "", e) {
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
        if self.object_lock.is_some() {
            // pgvault deletes every version itself; versions made noncurrent by anyone
            // else (a plain delete, an overwrite) would otherwise be kept, and paid
            // for, forever. The store keeps a locked version until its lock ends.
            rules.push(
                LifecycleRule::builder()
                    .id(format!("{rule_prefix}noncurrent-versions"))
                    .status(ExpirationStatus::Enabled)
                    .filter(
                        LifecycleRuleFilter::builder()
                            .prefix(&policy_prefix)
                            .build(),
                    )
                    .noncurrent_version_expiration(
                        NoncurrentVersionExpiration::builder()
                            .noncurrent_days(NONCURRENT_VERSION_DAYS)
                            .build(),
                    )
                    .expiration(
                        LifecycleExpiration::builder()
                            .expired_object_delete_marker(true)
                            .build(),
                    )
                    .build()
                    .map_err(build_err)?,
            );
            described.push(format!(
                "{rule_prefix}noncurrent-versions: delete versions under {policy_prefix} {NONCURRENT_VERSION_DAYS} day(s) after they stop being current (once unlocked), and delete markers left alone"
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
            .map_err(|e| self.sdk_err("put lifecycle", "", e))?;
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
            Err(e) => match self.sdk_err("get lifecycle", "", e) {
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
        let retention = self.retention_for(key);
        let md5 = retention.map(|_| content_md5(&data));
        let (full_ref, data_ref, md5_ref) = (&full, &data, &md5);
        self.retrying("put", &self.url(&full), move || async move {
            let mut request = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(full_ref)
                .body(ByteStream::from(data_ref.clone()))
                .set_content_md5(md5_ref.clone());
            if let Some((mode, until)) = retention {
                request = request
                    .object_lock_mode(aws_sdk_s3::types::ObjectLockMode::from(mode.as_s3()))
                    .object_lock_retain_until_date(s3_time(until));
            }
            request
                .send()
                .await
                .map_err(|e| self.sdk_err("put", full_ref, e))?;
            Ok(())
        })
        .await
    }

    async fn begin_upload(&self, key: &str) -> Result<Box<dyn Upload>> {
        let full = self.full_key(key)?;
        let retention = self.retention_for(key);
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let (full_ref, attempts_ref) = (&full, &attempts);
        let upload_id = self
            .retrying("begin upload", &self.url(&full), move || async move {
                attempts_ref.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut request = self
                    .client
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(full_ref);
                if let Some((mode, until)) = retention {
                    request = request
                        .object_lock_mode(aws_sdk_s3::types::ObjectLockMode::from(mode.as_s3()))
                        .object_lock_retain_until_date(s3_time(until));
                }
                let out = request
                    .send()
                    .await
                    .map_err(|e| self.sdk_err("begin upload", full_ref, e))?;
                out.upload_id().map(str::to_string).ok_or_else(|| {
                    Attempt::from(Error::Storage {
                        operation: "begin upload",
                        key: self.url(full_ref),
                        message: "the server returned no upload id".into(),
                        retryable: true,
                    })
                })
            })
            .await?;
        Ok(Box::new(S3Upload {
            storage: S3Storage {
                client: self.client.clone(),
                bucket: self.bucket.clone(),
                prefix: self.prefix.clone(),
                endpoint: self.endpoint.clone(),
                settings: self.settings.clone(),
                object_lock: self.object_lock.clone(),
            },
            key: full,
            upload_id,
            twins_possible: attempts.into_inner() > 1,
            retention,
            parts: Mutex::new(Vec::new()),
        }))
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes> {
        let full = self.full_key(key)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        self.read(&full, Some((offset, len))).await
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let full = self.full_key(key)?;
        self.read(&full, None).await
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        let full = self.full_key(key)?;
        let found = self.head_size(&full).await?;
        if found.is_none() {
            // HEAD answers a bare 404 for a missing bucket too: tell the two apart.
            self.check_bucket().await?;
        }
        Ok(found)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let full_prefix = self.full_prefix(prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let (prefix_ref, token_ref) = (&full_prefix, &token);
            let page = self
                .retrying("list", &self.url(&full_prefix), move || async move {
                    self.client
                        .list_objects_v2()
                        .bucket(&self.bucket)
                        .prefix(prefix_ref)
                        .set_continuation_token(token_ref.clone())
                        .send()
                        .await
                        .map_err(|e| Attempt::from(self.sdk_err("list", prefix_ref, e)))
                })
                .await?;
            for obj in page.contents() {
                if let Some(k) = obj.key() {
                    out.push(ObjectInfo {
                        key: self.relative(k),
                        size: obj.size().unwrap_or(0).max(0) as u64,
                        modified: obj.last_modified().and_then(|t| {
                            DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos())
                        }),
                    });
                }
            }
            match (page.is_truncated(), page.next_continuation_token()) {
                (Some(true), Some(next)) => token = Some(next.to_string()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        if self.object_lock.is_some() {
            return self.delete_every_version(key).await;
        }
        let full = self.full_key(key)?;
        let full_ref = &full;
        self.retrying("delete", &self.url(&full), move || async move {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(full_ref)
                .send()
                .await
                .map_err(|e| self.sdk_err("delete", full_ref, e))?;
            Ok(())
        })
        .await
    }

    async fn abort_pending(&self, upload: &PendingUpload) -> Result<()> {
        let full = self.full_key(&upload.key)?;
        self.abort_upload(&full, &upload.upload_id).await
    }

    async fn pending_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        let full_prefix = self.full_prefix(prefix);
        let mut out = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut id_marker: Option<String> = None;
        loop {
            let (prefix_ref, key_ref, id_ref) = (&full_prefix, &key_marker, &id_marker);
            let page = self
                .retrying(
                    "list uploads",
                    &self.url(&full_prefix),
                    move || async move {
                        self.client
                            .list_multipart_uploads()
                            .bucket(&self.bucket)
                            .prefix(prefix_ref)
                            .set_key_marker(key_ref.clone())
                            .set_upload_id_marker(id_ref.clone())
                            .send()
                            .await
                            .map_err(|e| Attempt::from(self.sdk_err("list uploads", prefix_ref, e)))
                    },
                )
                .await?;
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

    fn locks_objects(&self) -> bool {
        self.object_lock.is_some()
    }

    async fn lock_of(&self, key: &str) -> Result<Option<ObjectLock>> {
        let full = self.full_key(key)?;
        self.head_lock(&full, None).await
    }

    async fn versions(&self, prefix: &str) -> Result<Vec<StoredVersion>> {
        if self.object_lock.is_none() {
            // No versions to look at: one listing, as the trait's default does.
            return Ok(self
                .list(prefix)
                .await?
                .into_iter()
                .map(|o| StoredVersion {
                    key: o.key,
                    version_id: None,
                    delete_marker: false,
                    lock: None,
                })
                .collect());
        }
        self.locked_versions(prefix).await
    }

    async fn delete_version(&self, version: &StoredVersion) -> Result<()> {
        match &version.version_id {
            Some(id) => self.delete_one_version(&version.key, id).await,
            None => self.delete(&version.key).await,
        }
    }
}

impl S3Storage {
    /// The size of the object at `full`, `None` when there is none (with retries).
    async fn head_size(&self, full: &str) -> Result<Option<u64>> {
        self.retrying("stat", &self.url(full), move || async move {
            match self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(full)
                .send()
                .await
            {
                Ok(out) => Ok(Some(out.content_length().unwrap_or(0).max(0) as u64)),
                Err(e) => match self.sdk_err("stat", full, e) {
                    Error::ObjectNotFound { .. } => Ok(None),
                    other => Err(other.into()),
                },
            }
        })
        .await
    }

    /// Whether the bucket exists (a bare 404 on HEAD does not say which is missing).
    async fn check_bucket(&self) -> Result<()> {
        self.retrying("stat", &format!("s3://{}", self.bucket), move || async move {
            match self.client.head_bucket().bucket(&self.bucket).send().await {
                Ok(_) => Ok(()),
                Err(e) => match self.sdk_err("stat", "", e) {
                    Error::ObjectNotFound { .. } => Err(Attempt::from(Error::Storage {
                        operation: "stat",
                        key: format!("s3://{}", self.bucket),
                        message: format!(
                            "bucket {:?} does not exist at {} (NoSuchBucket); create it or fix [repository] url",
                            self.bucket, self.endpoint
                        ),
                        retryable: false,
                    })),
                    other => Err(other.into()),
                },
            }
        })
        .await
    }

    /// Abort an upload; an upload already gone (an abort whose answer was lost) is done.
    async fn abort_upload(&self, full: &str, upload_id: &str) -> Result<()> {
        self.retrying("abort upload", &self.url(full), move || async move {
            match self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(upload_id)
                .send()
                .await
            {
                Ok(_) => Ok(()),
                Err(e) => match e.as_service_error().and_then(|s| s.code()) {
                    Some("NoSuchUpload") => Ok(()),
                    _ => Err(self.sdk_err("abort upload", full, e).into()),
                },
            }
        })
        .await
    }

    /// Abort every other pending upload of `full`: twins left by a retried
    /// `CreateMultipartUpload` whose first answer was lost.
    async fn abort_twins(&self, full: &str, keep: &str) {
        let relative = self.relative(full);
        match self.pending_uploads(&relative).await {
            Ok(uploads) => {
                for twin in uploads
                    .iter()
                    .filter(|u| u.key == relative && u.upload_id != keep)
                {
                    if let Err(e) = self.abort_upload(full, &twin.upload_id).await {
                        tracing::warn!(key = full, error = %e, "could not abort a duplicate multipart upload; `pgvault prune` will");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(key = full, error = %e, "could not look for duplicate multipart uploads")
            }
        }
    }
}

/// What `x-amz-copy-source` escapes in a key: everything but unreserved characters and `/`.
const COPY_SOURCE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

struct S3Upload {
    storage: S3Storage,
    key: String,
    upload_id: String,
    /// The create request was retried, so the server may hold a twin upload.
    twins_possible: bool,
    /// The retention the object gets (asked for at create, set again on completion).
    retention: Option<(super::LockMode, DateTime<Utc>)>,
    /// (part number, etag, size) of every stored part.
    parts: Mutex<Vec<(u32, String, u64)>>,
}

#[async_trait]
impl Upload for S3Upload {
    async fn put_part(&self, number: u32, data: Bytes) -> Result<()> {
        let s = &self.storage;
        let md5 = self.retention.map(|_| content_md5(&data));
        let (data_ref, md5_ref) = (&data, &md5);
        let etag = s
            .retrying("upload part", &s.url(&self.key), move || async move {
                let out = s
                    .client
                    .upload_part()
                    .bucket(&s.bucket)
                    .key(&self.key)
                    .upload_id(&self.upload_id)
                    .part_number(number as i32)
                    .body(ByteStream::from(data_ref.clone()))
                    .set_content_md5(md5_ref.clone())
                    .send()
                    .await
                    .map_err(|e| s.sdk_err("upload part", &self.key, e))?;
                Ok(out.e_tag().unwrap_or_default().to_string())
            })
            .await?;
        self.parts
            .lock()
            .map_err(|_| Error::Internal("upload state poisoned".into()))?
            .push((number, etag, data.len() as u64));
        Ok(())
    }

    async fn copy_part(&self, number: u32, source: &str, offset: u64, len: u64) -> Result<()> {
        let s = &self.storage;
        if len == 0 {
            return Err(Error::Internal(format!(
                "copying an empty range of {source} into {}",
                s.url(&self.key)
            )));
        }
        let full_source = s.full_key(source)?;
        // The copy source is "bucket/key", URL-encoded except for the separators.
        let copy_source = format!(
            "{}/{}",
            s.bucket,
            percent_encoding::utf8_percent_encode(&full_source, COPY_SOURCE).collect::<String>()
        );
        let range = format!("bytes={}-{}", offset, offset + len - 1);
        let (copy_source, range) = (&copy_source, &range);
        let etag = s
            .retrying("copy part", &s.url(&self.key), move || async move {
                let out = s
                    .client
                    .upload_part_copy()
                    .bucket(&s.bucket)
                    .key(&self.key)
                    .upload_id(&self.upload_id)
                    .part_number(number as i32)
                    .copy_source(copy_source)
                    .copy_source_range(range)
                    .send()
                    .await
                    .map_err(|e| s.sdk_err("copy part", &self.key, e))?;
                Ok(out
                    .copy_part_result()
                    .and_then(|r| r.e_tag())
                    .unwrap_or_default()
                    .to_string())
            })
            .await?;
        self.parts
            .lock()
            .map_err(|_| Error::Internal("upload state poisoned".into()))?
            .push((number, etag, len));
        Ok(())
    }

    async fn complete(&self, parts: u32) -> Result<()> {
        let s = &self.storage;
        let mut stored = self
            .parts
            .lock()
            .map_err(|_| Error::Internal("upload state poisoned".into()))?
            .clone();
        stored.sort_by_key(|(n, _, _)| *n);
        if stored.len() != parts as usize {
            return Err(Error::Internal(format!(
                "completing {}: expected {parts} parts, {} were uploaded",
                s.url(&self.key),
                stored.len()
            )));
        }
        let total: u64 = stored.iter().map(|(_, _, size)| size).sum();
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(
                stored
                    .iter()
                    .map(|(n, e, _)| {
                        CompletedPart::builder()
                            .part_number(*n as i32)
                            .e_tag(e)
                            .build()
                    })
                    .collect(),
            ))
            .build();
        let tries = std::sync::atomic::AtomicU32::new(0);
        let (completed_ref, tries_ref) = (&completed, &tries);
        let version = s
            .retrying("complete upload", &s.url(&self.key), move || async move {
                let first = tries_ref.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0;
                match s
                    .client
                    .complete_multipart_upload()
                    .bucket(&s.bucket)
                    .key(&self.key)
                    .upload_id(&self.upload_id)
                    .multipart_upload(completed_ref.clone())
                    .send()
                    .await
                {
                    Ok(out) => Ok(out.version_id().map(str::to_string)),
                    Err(e) => {
                        let gone =
                            e.as_service_error().and_then(|x| x.code()) == Some("NoSuchUpload");
                        if gone && !first {
                            // An earlier attempt completed it and its answer was lost.
                            if s.head_size(&self.key).await? == Some(total) {
                                return Ok(None);
                            }
                        }
                        Err(s.sdk_err("complete upload", &self.key, e).into())
                    }
                }
            })
            .await?;
        if self.twins_possible {
            s.abort_twins(&self.key, &self.upload_id).await;
        }
        if let Some(retention) = self.retention {
            // Not every store applies the headers of CreateMultipartUpload; setting the
            // same retention on the new version works on all of them.
            s.set_retention(&self.key, version.as_deref(), retention)
                .await?;
        }
        Ok(())
    }

    async fn abort(&self) -> Result<()> {
        let s = &self.storage;
        let result = s.abort_upload(&self.key, &self.upload_id).await;
        if self.twins_possible {
            s.abort_twins(&self.key, &self.upload_id).await;
        }
        result
    }
}
