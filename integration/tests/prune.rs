//! Retention on a real repository: the dry run shows KEEP/DELETE with reasons and deletes
//! nothing; the prune deletes exactly what the plan said, manifest first, and cleans up
//! old orphans and stale uploads while leaving recent ones (a running backup) alone.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a harness failure should panic the test

use std::path::Path;
use std::process::Command;

use pgvault_integration::{
    keygen, pgvault, run, run_ok, text, write_policy, Fixture, PgCluster, RepoSpec, S3Server,
};

fn listed_ids(server: Option<&S3Server>, policy: &Path) -> Vec<String> {
    let mut list = pgvault(server);
    list.args(["list", "--json", "--policy"]).arg(policy);
    let v: serde_json::Value = serde_json::from_str(&run_ok(list)).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

fn backup(server: Option<&S3Server>, policy: &Path) {
    let mut cmd = pgvault(server);
    cmd.args(["backup", "--policy"]).arg(policy);
    run_ok(cmd);
}

#[test]
fn prune_follows_the_plan_and_cleans_up_old_leftovers_only() {
    let Some(f) = Fixture::start(
        "create table t as select g from generate_series(1, 100) g",
        "[retention]\nkeep_last = 2\norphan_min_age = \"1h\"\n",
    ) else {
        return;
    };
    let (repo, policy) = (f.repo.clone(), f.policy.clone());
    for _ in 0..4 {
        backup(None, &policy);
    }
    let before = listed_ids(None, &policy);
    assert_eq!(before.len(), 4);

    // Leftovers: an old orphan, a recent orphan (maybe a running backup), an old upload.
    let backups = repo.join("app/backups");
    let old_orphan = backups.join("20200101T000000Z-deadbeef");
    std::fs::create_dir_all(&old_orphan).unwrap();
    std::fs::write(old_orphan.join("dump.pgdump.zst.age"), b"partial").unwrap();
    let recent_id = format!("{}-cafecafe", chrono::Utc::now().format("%Y%m%dT%H%M%SZ"));
    std::fs::create_dir_all(backups.join(&recent_id)).unwrap();
    std::fs::write(
        backups.join(&recent_id).join("globals.sql.zst.age"),
        b"in progress",
    )
    .unwrap();
    let uploads = repo.join(".uploads");
    std::fs::create_dir_all(&uploads).unwrap();
    std::fs::write(
        uploads.join("0123456789abcdef.key"),
        "app/backups/20200101T000000Z-deadbeef/dump.pgdump.zst.age",
    )
    .unwrap();
    std::fs::write(uploads.join("0123456789abcdef.data"), b"partial").unwrap();
    let touched = Command::new("touch")
        .args(["-d", "2 days ago"])
        .arg(uploads.join("0123456789abcdef.key"))
        .status()
        .unwrap();
    assert!(touched.success());

    let mut dry = pgvault(None);
    dry.args(["prune", "--dry-run", "--policy"]).arg(&policy);
    let out = run_ok(dry);
    for id in &before[..2] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(id.as_str()) && l.contains("KEEP") && l.contains("last")),
            "{out}"
        );
    }
    for id in &before[2..] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(id.as_str()) && l.contains("DELETE")),
            "{out}"
        );
    }
    assert!(out.contains("newest, last"), "{out}");
    assert!(
        out.contains("orphan 20200101T000000Z-deadbeef") && out.contains("stale upload"),
        "{out}"
    );
    assert!(out.contains("1 leftover(s) left alone"), "{out}");
    assert!(out.contains("dry run: nothing was deleted"), "{out}");
    assert_eq!(listed_ids(None, &policy), before);
    assert!(old_orphan.join("dump.pgdump.zst.age").exists());

    let mut prune = pgvault(None);
    prune.args(["prune", "--policy"]).arg(&policy);
    let out = run_ok(prune);
    assert!(
        out.contains("deleted 2 backup(s), removed 1 orphan(s), aborted 1 stale upload(s)"),
        "{out}"
    );
    assert_eq!(listed_ids(None, &policy), before[..2].to_vec());
    for id in &before[2..] {
        assert_eq!(
            pgvault_integration::files_under(&backups.join(id)).len(),
            0,
            "objects of deleted backup {id} remain"
        );
    }
    assert_eq!(pgvault_integration::files_under(&old_orphan).len(), 0);
    assert_eq!(
        pgvault_integration::files_under(&backups.join(&recent_id)).len(),
        1,
        "a recent leftover was removed"
    );
    assert_eq!(pgvault_integration::files_under(&uploads).len(), 0);

    // The kept backups are intact.
    let mut verify = pgvault(None);
    verify.args(["verify", &before[1], "--policy"]).arg(&policy);
    assert!(run_ok(verify).contains("verification PASSED"));
}

#[test]
fn prune_without_retention_rules_is_refused() {
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
    let mut prune = pgvault(None);
    prune.args(["prune", "--policy"]).arg(&policy);
    let out = run(prune);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("has no [retention] section"),
        "{}",
        text(&out)
    );

    let empty = write_policy(
        work.path(),
        "empty",
        "postgres://u@127.0.0.1:1/app",
        &RepoSpec::Filesystem(&repo),
        &key.recipient,
        "[retention]\nmax_age = \"2d\"\n",
    );
    let mut prune = pgvault(None);
    prune.args(["prune", "--policy"]).arg(&empty);
    let out = run(prune);
    assert!(
        text(&out).contains("[retention] needs at least one keep rule"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_on_s3_deletes_manifest_and_data() {
    let Some(server) = S3Server::from_env() else {
        return;
    };
    let Some(source) = PgCluster::start() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    source.psql("postgres", "create database app");
    let key = keygen(work.path(), "ops");
    let (bucket, prefix) = server.fresh_location().await;
    let spec = RepoSpec::S3 {
        server: &server,
        bucket: &bucket,
        prefix: &prefix,
    };
    let policy = write_policy(
        work.path(),
        "app",
        &source.url("app"),
        &spec,
        &key.recipient,
        "[retention]\nkeep_last = 1\n",
    );
    for _ in 0..3 {
        backup(Some(&server), &policy);
    }
    let before = listed_ids(Some(&server), &policy);
    let mut prune = pgvault(Some(&server));
    prune.args(["prune", "--policy"]).arg(&policy);
    assert!(run_ok(prune).contains("deleted 2 backup(s)"));
    assert_eq!(listed_ids(Some(&server), &policy), before[..1].to_vec());
    let keys = server.list_keys(&bucket, &prefix).await;
    assert_eq!(
        keys.len(),
        4,
        "one backup = 3 data objects + manifest: {keys:?}"
    );
    assert!(keys.iter().all(|k| k.contains(&before[0])), "{keys:?}");
}
