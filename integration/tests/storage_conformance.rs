//! One conformance suite for every storage backend: the filesystem and S3 (Garage, or
//! the external server the environment names) must keep the same contracts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a harness failure should panic the test

use bytes::Bytes;
use pgvault_core::storage::{FilesystemStorage, S3Storage, Storage};
use pgvault_core::Error;
use pgvault_integration::S3Server;

async fn conformance(storage: &dyn Storage) {
    // Small objects: put, get, size, ranges, replace, missing objects.
    storage
        .put("p/a/one", Bytes::from_static(b"hello world"))
        .await
        .unwrap();
    assert_eq!(
        storage.get("p/a/one").await.unwrap(),
        Bytes::from_static(b"hello world")
    );
    assert_eq!(storage.size("p/a/one").await.unwrap(), Some(11));
    assert_eq!(
        storage.get_range("p/a/one", 6, 5).await.unwrap(),
        Bytes::from_static(b"world")
    );
    assert_eq!(
        storage.get_range("p/a/one", 6, 100).await.unwrap(),
        Bytes::from_static(b"world")
    );
    storage
        .put("p/a/one", Bytes::from_static(b"replaced"))
        .await
        .unwrap();
    assert_eq!(
        storage.get("p/a/one").await.unwrap(),
        Bytes::from_static(b"replaced")
    );
    assert!(matches!(
        storage.get("p/missing").await,
        Err(Error::ObjectNotFound { .. })
    ));
    assert_eq!(storage.size("p/missing").await.unwrap(), None);
    assert!(storage.put("../escape", Bytes::new()).await.is_err());

    // Multipart: parts out of order, invisible until complete, listed as pending meanwhile.
    let part = |b: u8| Bytes::from(vec![b; 5 * 1024 * 1024]);
    let upload = storage.begin_upload("p/b/big").await.unwrap();
    upload.put_part(2, part(2)).await.unwrap();
    upload.put_part(1, part(1)).await.unwrap();
    upload
        .put_part(3, Bytes::from_static(b"tail"))
        .await
        .unwrap();
    assert_eq!(
        storage.size("p/b/big").await.unwrap(),
        None,
        "visible before completion"
    );
    let pending = storage.pending_uploads("p/").await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].key, "p/b/big");
    upload.complete(3).await.unwrap();
    assert_eq!(
        storage.size("p/b/big").await.unwrap(),
        Some(10 * 1024 * 1024 + 4)
    );
    let boundary = storage
        .get_range("p/b/big", 5 * 1024 * 1024 - 2, 4)
        .await
        .unwrap();
    assert_eq!(&boundary[..], &[1, 1, 2, 2]);
    let end = storage
        .get_range("p/b/big", 10 * 1024 * 1024, 4)
        .await
        .unwrap();
    assert_eq!(&end[..], b"tail");
    assert!(storage.pending_uploads("p/").await.unwrap().is_empty());

    // An aborted upload leaves nothing.
    let upload = storage.begin_upload("p/b/aborted").await.unwrap();
    upload.put_part(1, part(9)).await.unwrap();
    upload.abort().await.unwrap();
    assert_eq!(storage.size("p/b/aborted").await.unwrap(), None);
    assert!(storage.pending_uploads("p/").await.unwrap().is_empty());

    // Listing is by prefix, in key order, with sizes; delete is idempotent.
    let keys: Vec<(String, u64)> = storage
        .list("p/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("p/a/one".to_string(), 8),
            ("p/b/big".to_string(), 10 * 1024 * 1024 + 4)
        ]
    );
    assert_eq!(storage.list("p/a").await.unwrap().len(), 1);
    assert!(storage.list("q/").await.unwrap().is_empty());
    storage.delete("p/a/one").await.unwrap();
    storage.delete("p/a/one").await.unwrap();
    assert_eq!(storage.list("p/").await.unwrap().len(), 1);
}

#[tokio::test]
async fn filesystem_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FilesystemStorage::new(dir.path().join("repo")).unwrap();
    conformance(&storage).await;
}

#[tokio::test]
async fn s3_backend_conforms() {
    let Some(server) = S3Server::from_env() else {
        return;
    };
    let (bucket, prefix) = server.fresh_location().await;
    std::env::set_var("AWS_ACCESS_KEY_ID", &server.access_key_id);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", &server.secret_access_key);
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let storage = S3Storage::connect(
        &bucket,
        &prefix,
        Some(&server.endpoint),
        Some(&server.region),
        &Default::default(),
    )
    .await
    .unwrap();
    conformance(&storage).await;
    assert_eq!(server.open_multipart_uploads(&bucket, &prefix).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_init_applies_lifecycle_rules_idempotently() {
    use pgvault_integration::{keygen, pgvault, run_ok, write_policy, RepoSpec};
    let Some(server) = S3Server::from_env() else {
        return;
    };
    let (bucket, prefix) = server.fresh_location().await;
    let work = tempfile::tempdir().unwrap();
    let key = keygen(work.path(), "ops");
    let spec = RepoSpec::S3 {
        server: &server,
        bucket: &bucket,
        prefix: &prefix,
    };
    let policy = write_policy(
        work.path(),
        "app",
        "postgres://u@127.0.0.1:1/app",
        &spec,
        &key.recipient,
        "",
    );
    for _ in 0..2 {
        let mut init = pgvault(Some(&server));
        init.args(["storage", "init", "--policy"]).arg(&policy);
        let out = run_ok(init);
        assert!(
            out.contains("set pgvault-app-abort-incomplete-uploads: abort multipart uploads")
                && out.contains("after 7 day(s)"),
            "{out}"
        );
    }
    std::env::set_var("AWS_ACCESS_KEY_ID", &server.access_key_id);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", &server.secret_access_key);
    let storage = S3Storage::connect(
        &bucket,
        &prefix,
        Some(&server.endpoint),
        Some(&server.region),
        &Default::default(),
    )
    .await
    .unwrap();
    let ids = storage.lifecycle_rule_ids().await.unwrap();
    assert_eq!(
        ids,
        vec!["pgvault-app-abort-incomplete-uploads".to_string()],
        "{ids:?}"
    );

    let repo = work.path().join("repo");
    let fs_policy = write_policy(
        work.path(),
        "local",
        "postgres://u@127.0.0.1:1/app",
        &RepoSpec::Filesystem(&repo),
        &key.recipient,
        "",
    );
    let mut init = pgvault(None);
    init.args(["storage", "init", "--policy"]).arg(&fs_policy);
    assert!(run_ok(init).contains("no lifecycle rules"));
}
