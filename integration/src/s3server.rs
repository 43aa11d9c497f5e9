//! The S3-compatible server the end-to-end tests run against.
//!
//! The server is never started from here: `scripts/test.sh` starts a single-node Garage
//! (`scripts/garage.sh`) and exports its address and keys, or the person running the
//! suite points it at an external server (MinIO, AWS) with the same variables:
//!
//! | variable | meaning |
//! |---|---|
//! | `PGVAULT_TEST_S3_ENDPOINT` | URL of the S3 API, e.g. `http://127.0.0.1:3900`; unset = no server |
//! | `PGVAULT_TEST_S3_REGION` | signing region (default `us-east-1`; Garage from `garage.sh` uses `garage`) |
//! | `PGVAULT_TEST_S3_ACCESS_KEY_ID`, `PGVAULT_TEST_S3_SECRET_ACCESS_KEY` | static credentials |
//! | `PGVAULT_TEST_S3_BUCKET` | optional: use this existing bucket (one unique prefix per test) instead of creating a bucket per test |
//! | `PGVAULT_TEST_REQUIRE_SERVERS` | `1` = a missing server is a test failure, never a skip (CI) |
//!
//! Tests call [`S3Server::from_env`] and return early when it gives `None`; with
//! `PGVAULT_TEST_REQUIRE_SERVERS=1` it panics instead, so CI cannot pass by skipping.
//!
//! Garage has no Object Lock, so the lock tests (`integration/tests/object_lock.rs`) run
//! against a second server that implements it: `scripts/test.sh` starts moto in server
//! mode (`scripts/moto.sh`) and exports it as `PGVAULT_TEST_LOCK_S3_ENDPOINT`,
//! `_REGION`, `_ACCESS_KEY_ID` and `_SECRET_ACCESS_KEY`; [`S3Server::lock_from_env`]
//! reads them, with the same rule about missing servers. Each lock test creates its own
//! buckets ([`S3Server::fresh_locked_bucket`]).

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::Client;
use rand::Rng;

/// Variable naming the S3 endpoint; when unset, S3 tests skip (or fail, see
/// [`REQUIRE_SERVERS_VAR`]).
pub const ENDPOINT_VAR: &str = "PGVAULT_TEST_S3_ENDPOINT";
/// Variable naming the signing region.
pub const REGION_VAR: &str = "PGVAULT_TEST_S3_REGION";
/// Variable holding the access key id.
pub const ACCESS_KEY_ID_VAR: &str = "PGVAULT_TEST_S3_ACCESS_KEY_ID";
/// Variable holding the secret access key.
pub const SECRET_ACCESS_KEY_VAR: &str = "PGVAULT_TEST_S3_SECRET_ACCESS_KEY";
/// Variable naming an existing bucket to use instead of creating one per test.
pub const BUCKET_VAR: &str = "PGVAULT_TEST_S3_BUCKET";
/// Variable that, set to `1`, turns a missing test server into a failure.
pub const REQUIRE_SERVERS_VAR: &str = "PGVAULT_TEST_REQUIRE_SERVERS";

/// Variable naming the S3 endpoint that implements Object Lock (moto in server mode).
pub const LOCK_ENDPOINT_VAR: &str = "PGVAULT_TEST_LOCK_S3_ENDPOINT";
/// Its signing region.
pub const LOCK_REGION_VAR: &str = "PGVAULT_TEST_LOCK_S3_REGION";
/// Its access key id.
pub const LOCK_ACCESS_KEY_ID_VAR: &str = "PGVAULT_TEST_LOCK_S3_ACCESS_KEY_ID";
/// Its secret access key.
pub const LOCK_SECRET_ACCESS_KEY_VAR: &str = "PGVAULT_TEST_LOCK_S3_SECRET_ACCESS_KEY";

/// Region used when [`REGION_VAR`] is unset.
pub const DEFAULT_REGION: &str = "us-east-1";

/// Connection details of the S3-compatible server the tests use.
#[derive(Debug, Clone)]
pub struct S3Server {
    /// URL of the S3 API, e.g. `http://127.0.0.1:3900`.
    pub endpoint: String,
    /// Signing region.
    pub region: String,
    /// Access key id of the test credentials.
    pub access_key_id: String,
    /// Secret access key of the test credentials.
    pub secret_access_key: String,
    /// Fixed bucket when an external server was named with `PGVAULT_TEST_S3_BUCKET`.
    pub fixed_bucket: Option<String>,
}

/// The environment variables that name one test server.
struct ServerVars {
    endpoint: &'static str,
    region: &'static str,
    access_key_id: &'static str,
    secret_access_key: &'static str,
    /// The variable naming a fixed bucket, for servers that may be shared.
    bucket: Option<&'static str>,
}

/// The value of `name`, or `None` when it is unset or empty.
fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// True when the environment demands real servers (`PGVAULT_TEST_REQUIRE_SERVERS=1`).
pub fn servers_required() -> bool {
    matches!(
        var(REQUIRE_SERVERS_VAR).as_deref().map(str::trim),
        Some("1") | Some("true") | Some("yes")
    )
}

impl S3Server {
    /// From env vars `PGVAULT_TEST_S3_ENDPOINT`, `_REGION` (default `us-east-1`),
    /// `_ACCESS_KEY_ID`, `_SECRET_ACCESS_KEY`, optional `_BUCKET`.
    ///
    /// Returns `None` when the endpoint is not set, unless `PGVAULT_TEST_REQUIRE_SERVERS=1`,
    /// in which case it panics with a clear message (CI must never skip). Panics when the
    /// endpoint is set but the credentials are not: that is a broken setup, not a skip.
    pub fn from_env() -> Option<S3Server> {
        S3Server::from_vars(
            &ServerVars {
                endpoint: ENDPOINT_VAR,
                region: REGION_VAR,
                access_key_id: ACCESS_KEY_ID_VAR,
                secret_access_key: SECRET_ACCESS_KEY_VAR,
                bucket: Some(BUCKET_VAR),
            },
            "an S3 server",
            "Garage",
        )
    }

    /// The S3 server that implements Object Lock, from `PGVAULT_TEST_LOCK_S3_ENDPOINT`,
    /// `_REGION` (default `us-east-1`), `_ACCESS_KEY_ID` and `_SECRET_ACCESS_KEY`.
    ///
    /// `None` when the endpoint is not set, unless `PGVAULT_TEST_REQUIRE_SERVERS=1`: then
    /// it panics, so CI cannot pass by skipping the lock tests.
    pub fn lock_from_env() -> Option<S3Server> {
        S3Server::from_vars(
            &ServerVars {
                endpoint: LOCK_ENDPOINT_VAR,
                region: LOCK_REGION_VAR,
                access_key_id: LOCK_ACCESS_KEY_ID_VAR,
                secret_access_key: LOCK_SECRET_ACCESS_KEY_VAR,
                bucket: None,
            },
            "an S3 server with Object Lock",
            "moto",
        )
    }

    /// The server `vars` name; `what` it is and which server `scripts/test.sh` `starts`
    /// for it, for the messages. `None` when the endpoint is not set, unless
    /// `PGVAULT_TEST_REQUIRE_SERVERS=1`: then it panics, so CI cannot pass by skipping.
    /// Panics when the endpoint is set but the credentials are not: that is a broken
    /// setup, not a skip.
    fn from_vars(vars: &ServerVars, what: &str, starts: &str) -> Option<S3Server> {
        let Some(endpoint) = var(vars.endpoint) else {
            if servers_required() {
                panic!(
                    "{REQUIRE_SERVERS_VAR}=1 but {} is not set: this test needs {what}. Run the \
                     suite with scripts/test.sh (it starts {starts}), or set {}, {} and {}.",
                    vars.endpoint, vars.endpoint, vars.access_key_id, vars.secret_access_key
                );
            }
            eprintln!(
                "skipping: {} is not set (run scripts/test.sh to start a {starts} server)",
                vars.endpoint
            );
            return None;
        };
        let required = |name: &str| {
            var(name).unwrap_or_else(|| {
                panic!(
                    "{} is set to {endpoint} but {name} is not set",
                    vars.endpoint
                )
            })
        };
        Some(S3Server {
            access_key_id: required(vars.access_key_id),
            secret_access_key: required(vars.secret_access_key),
            region: var(vars.region).unwrap_or_else(|| DEFAULT_REGION.to_string()),
            fixed_bucket: vars.bucket.and_then(var),
            endpoint,
        })
    }

    /// A new bucket `pgvault-lock-<random hex>` with Object Lock (and so versioning)
    /// enabled, for one test.
    pub async fn fresh_locked_bucket(&self) -> String {
        let name = format!("pgvault-lock-{:016x}", rand::thread_rng().gen::<u64>());
        let client = self.client().await;
        let mut request = client
            .create_bucket()
            .bucket(&name)
            .object_lock_enabled_for_bucket(true);
        if self.region != DEFAULT_REGION {
            request = request.create_bucket_configuration(
                aws_sdk_s3::types::CreateBucketConfiguration::builder()
                    .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(
                        self.region.as_str(),
                    ))
                    .build(),
            );
        }
        if let Err(e) = request.send().await {
            panic!(
                "creating locked test bucket {name} at {}: {}",
                self.endpoint,
                aws_sdk_s3::error::DisplayErrorContext(&e)
            );
        }
        name
    }

    /// An aws-sdk-s3 client for this server (path-style, static credentials, custom
    /// endpoint). Nothing is read from the ambient AWS configuration (profiles, `AWS_*`).
    pub async fn client(&self) -> Client {
        let credentials = Credentials::new(
            &self.access_key_id,
            &self.secret_access_key,
            None,
            None,
            "pgvault-test",
        );
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(Region::new(self.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(true)
            .build();
        Client::from_conf(config)
    }

    /// A fresh, unique place for one test: creates a new bucket named
    /// `pgvault-test-<random hex>` (or, with a fixed bucket, returns that bucket and a
    /// unique prefix `pgvault-test-<random hex>/`). Returns `(bucket, prefix)` where
    /// prefix may be `""`.
    pub async fn fresh_location(&self) -> (String, String) {
        let name = format!("pgvault-test-{:016x}", rand::thread_rng().gen::<u64>());
        if let Some(bucket) = &self.fixed_bucket {
            return (bucket.clone(), format!("{name}/"));
        }
        let client = self.client().await;
        let mut request = client.create_bucket().bucket(&name);
        // Outside us-east-1, AWS wants the region restated in the request body.
        if self.region != DEFAULT_REGION {
            request = request.create_bucket_configuration(
                aws_sdk_s3::types::CreateBucketConfiguration::builder()
                    .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(
                        self.region.as_str(),
                    ))
                    .build(),
            );
        }
        if let Err(e) = request.send().await {
            panic!(
                "creating test bucket {name} at {}: {}",
                self.endpoint,
                aws_sdk_s3::error::DisplayErrorContext(&e)
            );
        }
        (name, String::new())
    }

    /// Number of in-progress multipart uploads under bucket/prefix (ListMultipartUploads).
    pub async fn open_multipart_uploads(&self, bucket: &str, prefix: &str) -> usize {
        let client = self.client().await;
        let mut count = 0;
        let mut key_marker: Option<String> = None;
        let mut upload_id_marker: Option<String> = None;
        loop {
            let page = client
                .list_multipart_uploads()
                .bucket(bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(upload_id_marker.take())
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "listing multipart uploads in {bucket}/{prefix}: {}",
                        aws_sdk_s3::error::DisplayErrorContext(&e)
                    )
                });
            count += page.uploads().len();
            if page.is_truncated() != Some(true) {
                return count;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            upload_id_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && upload_id_marker.is_none() {
                panic!("ListMultipartUploads on {bucket}/{prefix} is truncated without a marker");
            }
        }
    }

    /// Keys of all objects under bucket/prefix, in the server's (lexicographic) order.
    pub async fn list_keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let client = self.client().await;
        let mut keys = Vec::new();
        let mut pages = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.unwrap_or_else(|e| {
                panic!(
                    "listing objects in {bucket}/{prefix}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                )
            });
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|object| object.key().map(str::to_string)),
            );
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_s3::primitives::ByteStream;

    #[tokio::test]
    async fn fresh_location_is_empty_and_lists_what_is_written() {
        let Some(server) = S3Server::from_env() else {
            return;
        };
        let (bucket, prefix) = server.fresh_location().await;
        assert!(server.list_keys(&bucket, &prefix).await.is_empty());
        assert_eq!(server.open_multipart_uploads(&bucket, &prefix).await, 0);

        let client = server.client().await;
        let key = format!("{prefix}hello.txt");
        if let Err(e) = client
            .put_object()
            .bucket(&bucket)
            .key(&key)
            .body(ByteStream::from_static(b"hello"))
            .send()
            .await
        {
            panic!("put_object: {}", aws_sdk_s3::error::DisplayErrorContext(&e));
        }
        assert_eq!(server.list_keys(&bucket, &prefix).await, vec![key]);

        let upload = match client
            .create_multipart_upload()
            .bucket(&bucket)
            .key(format!("{prefix}big.bin"))
            .send()
            .await
        {
            Ok(upload) => upload,
            Err(e) => panic!(
                "create_multipart_upload: {}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            ),
        };
        assert_eq!(server.open_multipart_uploads(&bucket, &prefix).await, 1);
        if let Err(e) = client
            .abort_multipart_upload()
            .bucket(&bucket)
            .key(format!("{prefix}big.bin"))
            .upload_id(upload.upload_id().unwrap_or_default())
            .send()
            .await
        {
            panic!(
                "abort_multipart_upload: {}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            );
        }
        assert_eq!(server.open_multipart_uploads(&bucket, &prefix).await, 0);
    }

    #[tokio::test]
    async fn fresh_locations_are_distinct() {
        let Some(server) = S3Server::from_env() else {
            return;
        };
        let a = server.fresh_location().await;
        let b = server.fresh_location().await;
        assert_ne!(a, b);
    }
}
