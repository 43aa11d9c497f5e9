//! Copies between two filesystem repositories: what is copied, in which state a copy
//! is left, and what is found when either side is damaged.

use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::policy::retention::RetentionRules;
use crate::storage::{FilesystemStorage, Storage};

/// A primary and a copy in one temporary directory.
struct World {
    _dir: tempfile::TempDir,
    source: Repository,
    target: Repository,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str| -> Arc<dyn Storage> {
        Arc::new(FilesystemStorage::new(dir.path().join(name)).unwrap())
    };
    World {
        source: Repository::new(open("primary"), "app"),
        target: Repository::new(open("copy"), "app"),
        _dir: dir,
    }
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Store a logical backup started at `hh:mm` on 2026-12-01 whose dump is `dump`: its
/// objects, then its manifest. Returns its id.
async fn backup(repo: &Repository, hhmm: &str, dump: &[u8]) -> String {
    let id = format!("20261201T{hhmm}00Z-0000{hhmm}");
    let t = format!("2026-12-01T{}:{}:00Z", &hhmm[..2], &hhmm[2..]);
    let mut objects = String::new();
    for (role, file, data) in [
        ("dump", "dump.pgdump.zst.age", dump),
        ("globals", "globals.sql.zst.age", b"roles" as &[u8]),
    ] {
        let key = repo.object_key(&id, file);
        repo.storage()
            .put(&key, Bytes::copy_from_slice(data))
            .await
            .unwrap();
        if !objects.is_empty() {
            objects.push(',');
        }
        objects.push_str(&format!(
            r#""{role}":{{"key":"{key}","raw_size":1,"raw_sha256":"00","stored_size":{},"stored_sha256":"{}"}}"#,
            data.len(),
            sha(data)
        ));
    }
    let json = format!(
        r#"{{"format_version":1,"id":"{id}","policy":"app","kind":"logical","started_at":"{t}","consistent_at":"{t}","finished_at":"{t}","database":"app","database_encoding":"UTF8","server_version":"17.2","server_version_num":170002,"system_identifier":"1","tool_version":"pgvault 0.1.0","dump_tool_version":"pg_dump 17.2","compression":{{"algorithm":"zstd","level":3}},"encryption":{{"algorithm":"age","recipients":["sha256:00"]}},"objects":{{{objects}}}}}"#
    );
    repo.storage()
        .put(&repo.object_key(&id, MANIFEST), Bytes::from(json))
        .await
        .unwrap();
    id
}

/// Store an archived WAL file named `name` with `data` as its stored bytes.
async fn wal_file(repo: &Repository, name: &str, data: &[u8]) -> String {
    let key = format!(
        "app/wal/{}/{name}.{}.zst.age",
        &name[..8],
        sha(name.as_bytes())
    );
    repo.storage()
        .put(&key, Bytes::copy_from_slice(data))
        .await
        .unwrap();
    key
}

fn all_missing() -> CopyRequest {
    CopyRequest {
        selection: Selection::AllMissing,
        verify_existing: false,
    }
}

async fn run(w: &World, retention: Option<&RetentionConfig>, request: &CopyRequest) -> CopyReport {
    copy(
        &w.source,
        &CopyTarget {
            name: "dr",
            repo: &w.target,
            retention,
            transfer: Transfer {
                part_size: 16,
                parts_in_flight: 3,
            },
        },
        request,
        &CancellationToken::new(),
    )
    .await
    .unwrap()
}

async fn keys(repo: &Repository) -> Vec<String> {
    repo.storage()
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect()
}

#[tokio::test]
async fn everything_a_restore_needs_is_copied_once_and_leases_are_not() {
    let w = world();
    let old = backup(&w.source, "0100", &[7u8; 100]).await;
    let new = backup(&w.source, "0200", b"a dump").await;
    wal_file(&w.source, "000000010000000000000001", &[1u8; 40]).await;
    wal_file(
        &w.source,
        "00000002.history",
        b"1\t0/3000000\tno recovery target",
    )
    .await;
    for ext in ["md", "html", "json"] {
        w.source
            .storage()
            .put(
                &format!("app/reports/20261201T030000Z-00000001.{ext}"),
                Bytes::from(ext),
            )
            .await
            .unwrap();
    }
    w.source
        .storage()
        .put("app/runs/20261201T040000Z-00000002.json", Bytes::from("{}"))
        .await
        .unwrap();

    let report = run(&w, None, &all_missing()).await;
    assert_eq!(report.backups_copied, vec![old.clone(), new.clone()]);
    assert_eq!(report.wal_files_copied, 2);
    assert_eq!(report.other_objects_copied, 3);
    assert!(report.complete(), "{:?}", report.failures);
    let mut source_keys = keys(&w.source).await;
    source_keys.retain(|k| !k.starts_with("app/runs/"));
    assert_eq!(keys(&w.target).await, source_keys);
    for key in &source_keys {
        assert_eq!(
            w.source.storage().get(key).await.unwrap(),
            w.target.storage().get(key).await.unwrap(),
            "{key}"
        );
    }
    assert_eq!(w.target.list_backups().await.unwrap().len(), 2);

    // Idempotent: a second run copies nothing.
    let again = run(&w, None, &all_missing()).await;
    assert!(again.backups_copied.is_empty());
    assert_eq!(again.backups_present, 2);
    assert_eq!(
        (
            again.wal_files_copied,
            again.other_objects_copied,
            again.bytes_copied
        ),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn damaged_objects_in_the_copy_are_found_and_copied_again() {
    let w = world();
    let id = backup(&w.source, "0100", &[9u8; 64]).await;
    run(&w, None, &all_missing()).await;
    let dump = w.target.object_key(&id, "dump.pgdump.zst.age");

    // Another size: the default run sees it from the listing.
    w.target
        .storage()
        .put(&dump, Bytes::from("short"))
        .await
        .unwrap();
    let report = run(&w, None, &all_missing()).await;
    assert_eq!(report.backups_repaired, vec![id.clone()]);
    assert_eq!(report.objects_repaired, 1);
    assert_eq!(
        w.target.storage().get(&dump).await.unwrap().to_vec(),
        vec![9u8; 64]
    );

    // The same size: only reading it back finds it (--verify).
    w.target
        .storage()
        .put(&dump, Bytes::from(vec![0u8; 64]))
        .await
        .unwrap();
    assert!(run(&w, None, &all_missing())
        .await
        .backups_repaired
        .is_empty());
    let verify = CopyRequest {
        selection: Selection::AllMissing,
        verify_existing: true,
    };
    let report = run(&w, None, &verify).await;
    assert_eq!(report.backups_repaired, vec![id]);
    assert_eq!(
        w.target.storage().get(&dump).await.unwrap().to_vec(),
        vec![9u8; 64]
    );
    assert!(run(&w, None, &verify).await.backups_repaired.is_empty());
}

#[tokio::test]
async fn an_interrupted_copy_resumes_and_checks_what_it_left() {
    let w = world();
    let id = backup(&w.source, "0100", &[5u8; 50]).await;
    // An earlier run stored the dump (wrongly, same size) and stopped before the
    // manifest: the backup is not in the copy yet.
    let dump = w.source.object_key(&id, "dump.pgdump.zst.age");
    w.target
        .storage()
        .put(&dump, Bytes::from(vec![0u8; 50]))
        .await
        .unwrap();
    assert!(w.target.list_backups().await.unwrap().is_empty());
    let report = run(&w, None, &all_missing()).await;
    assert_eq!(report.backups_copied, vec![id.clone()]);
    assert_eq!(report.objects_repaired, 1);
    assert_eq!(
        w.target.storage().get(&dump).await.unwrap().to_vec(),
        vec![5u8; 50]
    );
    // The run's lease in the copy is gone with the run.
    assert!(keys(&w.target).await.iter().all(|k| !k.contains("/runs/")));
}

#[tokio::test]
async fn a_damaged_source_is_reported_and_the_rest_is_copied() {
    let w = world();
    let bad = backup(&w.source, "0100", &[1u8; 30]).await;
    let good = backup(&w.source, "0200", &[2u8; 30]).await;
    w.source
        .storage()
        .put(
            &w.source.object_key(&bad, "dump.pgdump.zst.age"),
            Bytes::from(vec![3u8; 30]),
        )
        .await
        .unwrap();
    let report = run(&w, None, &all_missing()).await;
    assert_eq!(report.backups_copied, vec![good]);
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    assert!(
        report.failures[0].contains(&bad) && report.failures[0].contains("the source is damaged"),
        "{:?}",
        report.failures
    );
    assert!(!report.complete());
    let listed: Vec<String> = w
        .target
        .list_backups()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert!(
        !listed.contains(&bad),
        "a damaged backup must not appear complete"
    );
}

#[tokio::test]
async fn the_copys_retention_decides_what_it_gets_and_lag_counts_only_that() {
    let w = world();
    let old = backup(&w.source, "0100", b"old").await;
    let new = backup(&w.source, "0200", b"new").await;
    let keep_one = RetentionConfig {
        rules: RetentionRules {
            keep_last: Some(1),
            ..RetentionRules::default()
        },
        max_age: None,
        orphan_min_age: chrono::Duration::hours(24),
        prune_after_backup: true,
    };
    let target = CopyTarget {
        name: "dr",
        repo: &w.target,
        retention: Some(&keep_one),
        transfer: Transfer {
            part_size: 1024,
            parts_in_flight: 2,
        },
    };
    let now = Utc::now();
    let before = lag::lag(&w.source, &target, chrono::Duration::days(1), now)
        .await
        .unwrap();
    assert_eq!(before.missing.len(), 1);
    assert_eq!(before.missing[0].id, new);
    assert!(before.behind(), "the backup finished long before now");

    let report = run(&w, Some(&keep_one), &all_missing()).await;
    assert_eq!(report.backups_copied, vec![new.clone()]);
    assert_eq!(report.left_out, vec![old.clone()]);
    let after = lag::lag(&w.source, &target, chrono::Duration::days(1), now)
        .await
        .unwrap();
    assert!(after.missing.is_empty() && !after.behind());
    assert_eq!(after.lag, chrono::Duration::zero());

    // Asked for by id, a backup the rules give up is copied all the same.
    let report = run(
        &w,
        Some(&keep_one),
        &CopyRequest {
            selection: Selection::Backup(old.clone()),
            verify_existing: false,
        },
    )
    .await;
    assert_eq!(report.backups_copied, vec![old]);
}
