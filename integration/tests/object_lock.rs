//! Immutable backups with S3 Object Lock (`[repository] object_lock`), against an S3
//! server that implements it (moto in server mode, started by `scripts/test.sh`; Garage
//! has no Object Lock):
//!
//! - every object kind pgvault stores (manifest, data stored in one request and in
//!   parts, WAL, reports) carries the retention, read back with HeadObject; leases are
//!   not locked and leave nothing behind;
//! - locked backups survive `pgvault prune` (KEEP, "locked until …") and deletes with
//!   the agent's credentials (a versioned delete is refused, a plain one only adds a
//!   delete marker);
//! - `verify` (text and JSON) names each object's lock and its end;
//! - once the locks end, prune deletes a backup whole, manifest first, every version;
//!   while one object is still locked, it deletes nothing of it;
//! - `storage init` and `check` name what a bucket without lock or versioning lacks;
//! - a filesystem repository with `object_lock` is refused;
//! - an agent whose credentials may not delete (`prune_after_backup = false`) backs up,
//!   marks its leases released, and leaves deleting to `prune` (on Garage, behind a
//!   proxy that refuses every DELETE);
//! - docs/SECURITY.md's IAM policies are JSON and give each role what it needs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a harness failure should panic the test

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aws_sdk_s3::primitives::DateTime as S3DateTime;
use aws_sdk_s3::types::{ObjectLockRetention, ObjectLockRetentionMode};
use aws_sdk_s3::Client;
use bytes::Bytes;
use chrono::{Duration, Utc};
use pgvault_core::policy::Policy;
use pgvault_core::repository::{scratch_prefixes, Repository};
use pgvault_core::retention::prune;
use pgvault_core::storage::{
    ObjectInfo, ObjectLock, PendingUpload, Storage, StoredVersion, Upload,
};
use pgvault_integration::{
    keygen, make_slow_to_dump, pgvault, run, run_ok, server_reachable_tempdir, text, write_policy,
    PgCluster, RepoSpec, S3Server,
};
use serde_json::Value;

const LOCK: &str = "object_lock = { mode = \"governance\", days = 1 }";

/// A policy `app` for `source` in `bucket` of `server`, with `repository` lines added to
/// its `[repository]` section and `extra` sections appended.
fn lock_policy(
    server: &S3Server,
    dir: &Path,
    source: &str,
    bucket: &str,
    recipient: &str,
    repository: &str,
    extra: &str,
) -> PathBuf {
    let policy = write_policy(
        dir,
        "app",
        source,
        &RepoSpec::S3 {
            server,
            bucket,
            prefix: "",
        },
        recipient,
        extra,
    );
    let text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(
        &policy,
        text.replacen("[encryption]", &format!("{repository}\n[encryption]"), 1),
    )
    .unwrap();
    policy
}

fn backup(server: &S3Server, policy: &Path) {
    let mut cmd = pgvault(Some(server));
    cmd.args(["backup", "--policy"]).arg(policy);
    run_ok(cmd);
}

/// Backup ids, newest first.
fn listed_ids(server: &S3Server, policy: &Path) -> Vec<String> {
    let mut list = pgvault(Some(server));
    list.args(["list", "--json", "--policy"]).arg(policy);
    let v: Value = serde_json::from_str(&run_ok(list)).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

/// (key, version id) of every version, and of every delete marker, under `prefix`.
async fn versions(
    client: &Client,
    bucket: &str,
    prefix: &str,
) -> (Vec<(String, String)>, Vec<(String, String)>) {
    let out = client
        .list_object_versions()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .unwrap();
    assert_ne!(
        out.is_truncated(),
        Some(true),
        "more versions than one page"
    );
    let pair = |k: Option<&str>, v: Option<&str>| (k.unwrap().to_string(), v.unwrap().to_string());
    (
        out.versions()
            .iter()
            .map(|v| pair(v.key(), v.version_id()))
            .collect(),
        out.delete_markers()
            .iter()
            .map(|m| pair(m.key(), m.version_id()))
            .collect(),
    )
}

/// Set the retention of one version, shortening it past governance with the bypass.
async fn set_retention(client: &Client, bucket: &str, key: &str, version: &str, until: i64) {
    client
        .put_object_retention()
        .bucket(bucket)
        .key(key)
        .version_id(version)
        .bypass_governance_retention(true)
        .retention(
            ObjectLockRetention::builder()
                .mode(ObjectLockRetentionMode::Governance)
                .retain_until_date(S3DateTime::from_secs(until))
                .build(),
        )
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "put_object_retention {key}: {}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            )
        });
}

#[tokio::test(flavor = "multi_thread")]
async fn every_object_kind_is_locked_and_survives_prune_and_deletes() {
    let Some(server) = S3Server::lock_from_env() else {
        return;
    };
    let Some(source) = PgCluster::start() else {
        return;
    };
    source.psql("postgres", "create database app");
    // About 15 MB of hex text: the dump is stored in parts of 5 MiB.
    make_slow_to_dump(&source, "app", 150_000);
    let work = server_reachable_tempdir("pgvault-test-lock-");
    let key = keygen(work.path(), "ops");
    let bucket = server.fresh_locked_bucket().await;
    let policy = lock_policy(
        &server,
        work.path(),
        &source.url("app"),
        &bucket,
        &key.recipient,
        &format!("{LOCK}\npart_size = \"5MiB\""),
        &format!(
            "[retention]\nkeep_last = 1\n[restore_test]\nwork_dir = \"{}\"\nrpo_objective = \"24h\"\n",
            work.path().display()
        ),
    );

    // storage init checks the bucket, then sets the lifecycle rules.
    let mut init = pgvault(Some(&server));
    init.args(["storage", "init", "--policy"]).arg(&policy);
    let out = run_ok(init);
    assert!(
        out.contains("object lock: bucket") && out.contains("governance mode for 1 day(s)"),
        "{out}"
    );
    assert!(out.contains("set pgvault-app-noncurrent-versions"), "{out}");

    // Every kind of object: two backups, a WAL file, a restore-test report.
    backup(&server, &policy);
    backup(&server, &policy);
    let wal = work.path().join("000000010000000000000001");
    std::fs::write(&wal, vec![7u8; 8192]).unwrap();
    let mut push = pgvault(Some(&server));
    push.args(["wal-push", "--policy"]).arg(&policy).arg(&wal);
    run_ok(push);
    let mut drill = pgvault(Some(&server));
    drill
        .args(["restore-test", "--policy"])
        .arg(&policy)
        .arg("--identity")
        .arg(&key.identity);
    let out = run(drill);
    assert!(out.status.success(), "restore-test: {}", text(&out));

    let client = server.client().await;
    let keys = server.list_keys(&bucket, "").await;
    let now = Utc::now();
    for (kind, wanted) in [
        ("manifest", "/manifest.json"),
        ("dump", "/dump.pgdump.zst.age"),
        ("globals", "/globals.sql.zst.age"),
        ("verification sidecar", "/verification.json.zst.age"),
        ("WAL", "app/wal/00000001/000000010000000000000001."),
        ("report JSON", ".json"),
        ("report HTML", ".html"),
        ("report Markdown", ".md"),
    ] {
        let count = keys
            .iter()
            .filter(|k| {
                k.contains(wanted) && (kind.starts_with("report") == k.starts_with("app/reports/"))
            })
            .count();
        assert!(count > 0, "no {kind} object among {keys:?}");
    }
    for key in &keys {
        assert!(!key.starts_with("app/runs/"), "a lease was left: {key}");
        let head = client
            .head_object()
            .bucket(&bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        assert_eq!(
            head.object_lock_mode().map(|m| m.as_str()),
            Some("GOVERNANCE"),
            "{key} is not locked"
        );
        let until = head.object_lock_retain_until_date().unwrap();
        let until = chrono::DateTime::from_timestamp(until.secs(), 0).unwrap();
        assert!(
            until > now + Duration::hours(23) && until < now + Duration::hours(25),
            "{key} is locked until {until}"
        );
        if key.ends_with("/dump.pgdump.zst.age") {
            // A multipart ETag ends with the number of parts: the lock was set on an
            // object stored in parts (PutObjectRetention after completion).
            assert!(
                head.e_tag().unwrap().contains('-'),
                "{key} was not stored in parts"
            );
        }
    }
    // Leases are not locked: deleting them left no version and no delete marker.
    let (lease_versions, lease_markers) = versions(&client, &bucket, "app/runs/").await;
    assert!(
        lease_versions.is_empty() && lease_markers.is_empty(),
        "{lease_versions:?} {lease_markers:?}"
    );

    // Retention keeps the locked older backup, and deletes nothing.
    let ids = listed_ids(&server, &policy);
    assert_eq!(ids.len(), 2);
    let older = &ids[1];
    let mut dry = pgvault(Some(&server));
    dry.args(["prune", "--dry-run", "--policy"]).arg(&policy);
    let out = run_ok(dry);
    assert!(
        out.lines().any(|l| l.starts_with(older.as_str())
            && l.contains("KEEP")
            && l.contains("locked until")),
        "{out}"
    );
    let before = versions(&client, &bucket, "app/").await;
    let mut prune = pgvault(Some(&server));
    prune.args(["prune", "--policy"]).arg(&policy);
    let out = run_ok(prune);
    assert!(out.contains("deleted 0 backup(s)"), "{out}");
    assert_eq!(listed_ids(&server, &policy), ids);
    assert_eq!(
        versions(&client, &bucket, "app/").await,
        before,
        "prune changed something"
    );

    // The agent's credentials cannot delete a locked version; a plain delete only hides it.
    let globals = format!("app/backups/{older}/globals.sql.zst.age");
    let head = client
        .head_object()
        .bucket(&bucket)
        .key(&globals)
        .send()
        .await
        .unwrap();
    let version = head.version_id().unwrap().to_string();
    let refused = client
        .delete_object()
        .bucket(&bucket)
        .key(&globals)
        .version_id(&version)
        .send()
        .await;
    let code = refused
        .as_ref()
        .err()
        .and_then(|e| e.as_service_error())
        .and_then(aws_sdk_s3::error::ProvideErrorMetadata::code);
    assert_eq!(
        code,
        Some("AccessDenied"),
        "a locked version was deleted: {refused:?}"
    );
    let marker = client
        .delete_object()
        .bucket(&bucket)
        .key(&globals)
        .send()
        .await
        .unwrap();
    assert_eq!(marker.delete_marker(), Some(true));
    let kept = client
        .get_object()
        .bucket(&bucket)
        .key(&globals)
        .version_id(&version)
        .send()
        .await
        .unwrap();
    let bytes = kept.body.collect().await.unwrap().into_bytes();
    assert_eq!(bytes.len() as i64, head.content_length().unwrap());
    // Removing the delete marker brings the object back.
    client
        .delete_object()
        .bucket(&bucket)
        .key(&globals)
        .version_id(marker.version_id().unwrap())
        .send()
        .await
        .unwrap();

    // verify names each object's lock: text and JSON.
    let mut verify = pgvault(Some(&server));
    verify.args(["verify", older, "--policy"]).arg(&policy);
    let out = run_ok(verify);
    assert!(out.contains("verification PASSED"), "{out}");
    assert!(
        out.contains("immutable: all 4 object(s) are locked"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "LOCKED  app/backups/{older}/manifest.json — governance until "
        )),
        "{out}"
    );
    let mut verify = pgvault(Some(&server));
    verify
        .args(["verify", "--json", older, "--policy"])
        .arg(&policy);
    let report: Value = serde_json::from_str(&run_ok(verify)).unwrap();
    assert_eq!(report["verdict"], "passed", "{report:#}");
    let locks = report["locks"].as_array().unwrap();
    assert_eq!(locks.len(), 4, "{report:#}");
    assert_eq!(
        locks[0]["key"],
        format!("app/backups/{older}/manifest.json")
    );
    for lock in locks {
        assert_eq!(lock["state"], "locked", "{lock:#}");
        assert_eq!(lock["mode"], "governance", "{lock:#}");
        assert_eq!(lock["legal_hold"], false, "{lock:#}");
        let until =
            chrono::DateTime::parse_from_rfc3339(lock["retain_until"].as_str().unwrap()).unwrap();
        assert!(until > now + Duration::hours(23), "{lock:#}");
    }

    // check says the bucket can hold the locks.
    let mut check = pgvault(Some(&server));
    check.args(["check", "--policy"]).arg(&policy);
    let out = run(check);
    assert!(
        text(&out).contains("object lock: the bucket has Object Lock and versioning enabled"),
        "{}",
        text(&out)
    );
}

/// A storage that records every delete, to check the order prune deletes in.
struct Recording {
    inner: Arc<dyn Storage>,
    deleted: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl Storage for Recording {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn put(&self, key: &str, data: Bytes) -> pgvault_core::Result<()> {
        self.inner.put(key, data).await
    }
    async fn begin_upload(&self, key: &str) -> pgvault_core::Result<Box<dyn Upload>> {
        self.inner.begin_upload(key).await
    }
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> pgvault_core::Result<Bytes> {
        self.inner.get_range(key, offset, len).await
    }
    async fn get(&self, key: &str) -> pgvault_core::Result<Bytes> {
        self.inner.get(key).await
    }
    async fn size(&self, key: &str) -> pgvault_core::Result<Option<u64>> {
        self.inner.size(key).await
    }
    async fn list(&self, prefix: &str) -> pgvault_core::Result<Vec<ObjectInfo>> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> pgvault_core::Result<()> {
        self.deleted.lock().unwrap().push(key.to_string());
        self.inner.delete(key).await
    }
    async fn pending_uploads(&self, prefix: &str) -> pgvault_core::Result<Vec<PendingUpload>> {
        self.inner.pending_uploads(prefix).await
    }
    async fn abort_pending(&self, upload: &PendingUpload) -> pgvault_core::Result<()> {
        self.inner.abort_pending(upload).await
    }
    fn locks_objects(&self) -> bool {
        self.inner.locks_objects()
    }
    async fn lock_of(&self, key: &str) -> pgvault_core::Result<Option<ObjectLock>> {
        self.inner.lock_of(key).await
    }
    async fn versions(&self, prefix: &str) -> pgvault_core::Result<Vec<StoredVersion>> {
        self.inner.versions(prefix).await
    }
    async fn delete_version(&self, version: &StoredVersion) -> pgvault_core::Result<()> {
        self.deleted.lock().unwrap().push(version.key.clone());
        self.inner.delete_version(version).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_backup_is_deleted_whole_manifest_first_and_a_partly_locked_one_not_at_all() {
    let Some(server) = S3Server::lock_from_env() else {
        return;
    };
    let Some(source) = PgCluster::start() else {
        return;
    };
    source.psql("postgres", "create database app");
    source.psql_script(
        "app",
        "create table t as select g from generate_series(1, 1000) g",
    );
    let work = tempfile::tempdir().unwrap();
    let key = keygen(work.path(), "ops");
    let bucket = server.fresh_locked_bucket().await;
    let policy = lock_policy(
        &server,
        work.path(),
        &source.url("app"),
        &bucket,
        &key.recipient,
        LOCK,
        "[retention]\nkeep_last = 1\n",
    );
    backup(&server, &policy);
    backup(&server, &policy);
    let ids = listed_ids(&server, &policy);
    let (newer, older) = (&ids[0], &ids[1]);
    let older_dir = format!("app/backups/{older}/");
    let client = server.client().await;
    let (older_versions, _) = versions(&client, &bucket, &older_dir).await;
    assert_eq!(older_versions.len(), 4, "{older_versions:?}");

    // Every lock of the older backup has ended but the dump's: prune keeps it whole.
    let past = (Utc::now() - Duration::minutes(5)).timestamp();
    for (key, version) in &older_versions {
        if !key.ends_with("/dump.pgdump.zst.age") {
            set_retention(&client, &bucket, key, version, past).await;
        }
    }
    let mut prune = pgvault(Some(&server));
    prune.args(["prune", "--policy"]).arg(&policy);
    let out = run_ok(prune);
    assert!(
        out.lines().any(|l| l.starts_with(older.as_str())
            && l.contains("KEEP")
            && l.contains("locked until")),
        "{out}"
    );
    assert!(out.contains("deleted 0 backup(s)"), "{out}");
    assert_eq!(
        versions(&client, &bucket, &older_dir).await,
        (older_versions.clone(), Vec::new()),
        "a partly locked backup was touched"
    );

    // Once the dump's lock has ended too, the backup goes whole, manifest first, every
    // version: nothing of it is left to pay for.
    for (key, version) in &older_versions {
        if key.ends_with("/dump.pgdump.zst.age") {
            set_retention(&client, &bucket, key, version, past).await;
        }
    }
    std::env::set_var("AWS_ACCESS_KEY_ID", &server.access_key_id);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", &server.secret_access_key);
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let loaded = Policy::load(&policy).unwrap();
    let mut settings = loaded.repository.storage.clone();
    if let Some(lock) = settings.object_lock.as_mut() {
        lock.unlocked_prefixes = scratch_prefixes("app");
    }
    let recording = Arc::new(Recording {
        inner: pgvault_core::storage::open(&settings).await.unwrap(),
        deleted: Mutex::new(Vec::new()),
    });
    let repo = Repository::new(recording.clone(), "app");
    let retention = loaded.retention.clone().unwrap();
    let plan = prune::plan(&repo, &retention, Utc::now()).await.unwrap();
    let doomed: Vec<&str> = plan
        .retention
        .to_delete()
        .iter()
        .map(|b| b.id.as_str())
        .collect();
    assert_eq!(doomed, vec![older.as_str()]);
    let done = prune::execute(&repo, &plan, &tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(done.deleted_backups, vec![older.clone()]);
    let deleted = recording.deleted.lock().unwrap().clone();
    assert_eq!(
        deleted.first().map(String::as_str),
        Some(format!("{older_dir}manifest.json").as_str()),
        "{deleted:?}"
    );
    assert_eq!(
        versions(&client, &bucket, &older_dir).await,
        (Vec::new(), Vec::new()),
        "versions or delete markers of the deleted backup remain"
    );
    assert_eq!(listed_ids(&server, &policy), vec![newer.clone()]);
    let mut verify = pgvault(Some(&server));
    verify.args(["verify", newer, "--policy"]).arg(&policy);
    assert!(run_ok(verify).contains("verification PASSED"));
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_init_and_check_name_what_a_bucket_lacks() {
    let Some(server) = S3Server::lock_from_env() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let key = keygen(work.path(), "ops");
    let (bucket, _) = server.fresh_location().await;
    let policy = lock_policy(
        &server,
        work.path(),
        "postgres://u@127.0.0.1:1/app",
        &bucket,
        &key.recipient,
        LOCK,
        "",
    );
    let init = || {
        let mut init = pgvault(Some(&server));
        init.args(["storage", "init", "--policy"]).arg(&policy);
        run(init)
    };
    let out = init();
    assert!(!out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("cannot hold the object locks [repository] object_lock asks for")
            && said.contains("versioning is not enabled")
            && said.contains("Object Lock is not enabled on the bucket"),
        "{said}"
    );
    // Nothing was changed: no lifecycle rule was set.
    let client = server.client().await;
    assert!(client
        .get_bucket_lifecycle_configuration()
        .bucket(&bucket)
        .send()
        .await
        .is_err());

    // Versioning alone is not enough, and the message now names only the lock.
    client
        .put_bucket_versioning()
        .bucket(&bucket)
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let out = init();
    assert!(!out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("Object Lock is not enabled"), "{said}");
    assert!(!said.contains("versioning is"), "{said}");

    let mut check = pgvault(Some(&server));
    check.args(["check", "--policy"]).arg(&policy);
    let out = run(check);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("object lock: PROBLEM")
            && text(&out).contains("Object Lock is not enabled"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_filesystem_repository_with_object_lock_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let key = keygen(work.path(), "ops");
    let repo = work.path().join("repo");
    let policy = write_policy(
        work.path(),
        "app",
        "postgres://u@127.0.0.1:1/app",
        &RepoSpec::Filesystem(&repo),
        &key.recipient,
        "",
    );
    let text_before = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(
        &policy,
        text_before.replacen("[encryption]", &format!("{LOCK}\n[encryption]"), 1),
    )
    .unwrap();
    let mut list = pgvault(None);
    list.args(["list", "--policy"]).arg(&policy);
    let out = run(list);
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains("app.toml:") && said.contains("object_lock needs an S3 repository"),
        "{said}"
    );
}

/// The IAM policy (the first JSON block) of each role's section in docs/SECURITY.md.
fn iam_policies() -> Vec<(String, Value)> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/SECURITY.md"))
            .unwrap();
    let mut found = Vec::new();
    for section in doc.split("\n### ").skip(1) {
        let title = section.lines().next().unwrap().to_string();
        if let Some(start) = section.find("```json\n") {
            let body = &section[start + "```json\n".len()..];
            let end = body.find("\n```").unwrap();
            let policy: Value = serde_json::from_str(&body[..end])
                .unwrap_or_else(|e| panic!("the policy of {title:?} is not JSON: {e}"));
            found.push((title, policy));
        }
    }
    found
}

/// The actions a policy allows.
fn allowed(policy: &Value) -> Vec<String> {
    policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["Effect"] == "Allow")
        .flat_map(|s| s["Action"].as_array().unwrap().clone())
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_security_guide_gives_each_role_a_valid_least_privilege_policy() {
    let policies = iam_policies();
    let find = |prefix: &str| {
        policies
            .iter()
            .find(|(title, _)| title.starts_with(prefix))
            .map(|(_, p)| allowed(p))
            .unwrap_or_else(|| panic!("no IAM policy for {prefix}"))
    };
    for (title, policy) in &policies {
        assert_eq!(policy["Version"], "2012-10-17", "{title}");
        for action in allowed(policy) {
            assert!(action.starts_with("s3:"), "{title}: {action}");
        }
    }
    // The agent and wal-push write and may lock, but never delete or lift a lock.
    for role in ["The agent", "`wal-push`"] {
        let actions = find(role);
        assert!(
            actions.contains(&"s3:PutObject".to_string()),
            "{role}: {actions:?}"
        );
        assert!(
            actions.contains(&"s3:PutObjectRetention".to_string()),
            "{role}"
        );
        assert!(
            !actions
                .iter()
                .any(|a| a.contains("Delete") || a.contains("Bypass")),
            "{role} may delete: {actions:?}"
        );
    }
    // prune deletes every version, after reading the locks.
    let prune = find("`prune`");
    for needed in [
        "s3:ListBucketVersions",
        "s3:GetObjectVersion",
        "s3:GetObjectRetention",
        "s3:GetObjectLegalHold",
        "s3:DeleteObjectVersion",
    ] {
        assert!(prune.contains(&needed.to_string()), "prune lacks {needed}");
    }
    assert!(!prune.iter().any(|a| a.contains("Bypass")));
    // The auditor only reads, locks included.
    let auditor = find("Auditor");
    assert!(auditor.contains(&"s3:GetObjectRetention".to_string()));
    assert!(
        auditor
            .iter()
            .all(|a| a.starts_with("s3:Get") || a.starts_with("s3:List")),
        "{auditor:?}"
    );
}

/// `pgvault-agent --once` for `policy` with `server`'s credentials.
fn agent_once(server: &S3Server, policy: &Path) -> std::process::Output {
    std::process::Command::new(pgvault_integration::agent_bin())
        .args(["--once", "--policy"])
        .arg(policy)
        .env_remove("AWS_PROFILE")
        .env("AWS_ACCESS_KEY_ID", &server.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &server.secret_access_key)
        .env("AWS_REGION", &server.region)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("PGVAULT_LOG", "pgvault_core=info")
        .output()
        .unwrap()
}

#[test]
fn an_agent_that_may_not_delete_backs_up_and_leaves_deleting_to_prune() {
    use pgvault_integration::fault_proxy::{FaultConfig, FaultMode, FaultProxy};
    let Some(server) = S3Server::from_env() else {
        return;
    };
    let Some(source) = PgCluster::start() else {
        return;
    };
    source.psql("postgres", "create database app");
    let work = tempfile::tempdir().unwrap();
    let key = keygen(work.path(), "ops");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (bucket, prefix) = runtime.block_on(server.fresh_location());
    // The agent's credentials may not delete: every DELETE is refused (403 AccessDenied).
    let proxy = FaultProxy::start_in_background(
        &server.endpoint,
        FaultConfig::new(1, 1.0, &[FaultMode::Forbidden]).with_methods(&["DELETE"]),
    )
    .unwrap();
    let denied = S3Server {
        endpoint: proxy.endpoint(),
        ..server.clone()
    };
    let retention = "[retention]\nkeep_last = 1\nprune_after_backup = false\n";
    let policy_in = |dir: &str, via: &S3Server| {
        let dir = work.path().join(dir);
        std::fs::create_dir_all(&dir).unwrap();
        write_policy(
            &dir,
            "app",
            &source.url("app"),
            &RepoSpec::S3 {
                server: via,
                bucket: &bucket,
                prefix: &prefix,
            },
            &key.recipient,
            retention,
        )
    };
    let agent_policy = policy_in("agent", &denied);
    let prune_policy = policy_in("prune", &server);

    for _ in 0..2 {
        let out = agent_once(&denied, &agent_policy);
        assert!(out.status.success(), "{}", text(&out));
    }
    // Both backups are there: the agent did not prune, and no delete it tried failed a run.
    assert_eq!(listed_ids(&server, &prune_policy).len(), 2);
    assert!(
        proxy.stats().count(FaultMode::Forbidden) >= 2,
        "the agent never tried to delete its lease: {}",
        proxy.stats()
    );
    // Each run marked its lease released instead of deleting it.
    let leases = runtime.block_on(server.list_keys(&bucket, &format!("{prefix}app/runs/")));
    assert_eq!(leases.len(), 2, "{leases:?}");
    let client = runtime.block_on(server.client());
    for lease in &leases {
        let body = runtime.block_on(async {
            let out = client
                .get_object()
                .bucket(&bucket)
                .key(lease)
                .send()
                .await
                .unwrap();
            out.body.collect().await.unwrap().into_bytes()
        });
        let record: Value = serde_json::from_slice(&body).unwrap();
        assert!(record["released_at"].is_string(), "{record:#}");
    }

    // prune, with credentials that may delete, applies retention and removes the leases.
    let mut prune = pgvault(Some(&server));
    prune.args(["prune", "--policy"]).arg(&prune_policy);
    let out = run_ok(prune);
    assert!(out.contains("deleted 1 backup(s)"), "{out}");
    assert_eq!(listed_ids(&server, &prune_policy).len(), 1);
    assert!(runtime
        .block_on(server.list_keys(&bucket, &format!("{prefix}app/runs/")))
        .is_empty());
}
