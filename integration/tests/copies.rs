//! A policy's second repository (`[[repository.copies]]`) end to end: copies in a second
//! Garage bucket and in a directory, that restore (logically and to a point in time)
//! after the primary bucket is deleted; `check` showing the lag; copying twice copying
//! nothing; damage in the copy found and repaired; the copy's own retention; and the
//! agent copying after each backup, with a failing copy that leaves backups good.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};

use aws_sdk_s3::primitives::ByteStream;
use pgvault_integration::archiving::{Archiving, Restored};
use pgvault_integration::{
    agent_bin, free_port, http_get, keygen, pgvault, run, run_ok, s3_policy, text, wait_until,
    Fixture, PgCluster, S3Server, WebhookReceiver,
};

/// The `[[repository.copies]]` entry of a copy named `name` in `bucket`/`prefix` of
/// `server`, with `extra` keys.
fn s3_copy(server: &S3Server, name: &str, (bucket, prefix): (&str, &str), extra: &str) -> String {
    format!(
        "[[repository.copies]]\nname = \"{name}\"\nurl = \"s3://{bucket}/{prefix}\"\nendpoint = \"{}\"\nregion = \"{}\"\n{extra}",
        server.endpoint, server.region
    )
}

/// Delete every object under `bucket`/`prefix` through the S3 API, then the bucket itself
/// (unless the tests run in one fixed bucket of an external server).
fn delete_location(
    server: &S3Server,
    runtime: &tokio::runtime::Runtime,
    bucket: &str,
    prefix: &str,
) {
    runtime.block_on(async {
        let client = server.client().await;
        for key in server.list_keys(bucket, prefix).await {
            client
                .delete_object()
                .bucket(bucket)
                .key(&key)
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "delete {key}: {}",
                        aws_sdk_s3::error::DisplayErrorContext(&e)
                    )
                });
        }
        assert!(server.list_keys(bucket, prefix).await.is_empty());
        if server.fixed_bucket.is_none() {
            client
                .delete_bucket()
                .bucket(bucket)
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "delete bucket {bucket}: {}",
                        aws_sdk_s3::error::DisplayErrorContext(&e)
                    )
                });
        }
    });
}

/// Replace the object `key` of `bucket` with `data`.
fn overwrite(
    server: &S3Server,
    runtime: &tokio::runtime::Runtime,
    bucket: &str,
    key: &str,
    data: Vec<u8>,
) {
    runtime.block_on(async {
        server
            .client()
            .await
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(data))
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!("put {key}: {}", aws_sdk_s3::error::DisplayErrorContext(&e))
            });
    });
}

/// `pgvault copy … --json` for the policy: the report of each copy.
fn copy_json(cli: impl Fn(&[&str]) -> Command, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["copy", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str::<serde_json::Value>(&run_ok(cli(&all)))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn ids(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_copy_in_a_second_bucket_restores_after_the_first_bucket_is_deleted() {
    let Some(server) = S3Server::from_env() else {
        return;
    };
    let Some(source) = PgCluster::start() else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let work = tempfile::tempdir().unwrap();
    source.psql("postgres", "create database app");
    source.psql_script(
        "app",
        "create table orders (id int primary key, note text); insert into orders select g, 'order ' || g from generate_series(1, 500) g;",
    );
    let key = keygen(work.path(), "ops");
    let (copy_bucket, copy_prefix) = runtime.block_on(server.fresh_location());
    let (bucket, prefix, policy) = s3_policy(
        &server,
        work.path(),
        &source.url("app"),
        &key.recipient,
        &s3_copy(&server, "dr", (&copy_bucket, &copy_prefix), ""),
    );
    let cli = |args: &[&str]| {
        let mut cmd = pgvault(Some(&server));
        cmd.args(args).arg("--policy").arg(&policy);
        cmd
    };
    let identity = key.identity.to_str().unwrap();
    run_ok(cli(&["backup"]));

    // Before the copy, check shows the backup the copy lacks (within max_lag: no failure).
    let before = run(cli(&["check"]));
    let shown = text(&before);
    assert!(before.status.success(), "{shown}");
    assert!(
        shown.contains("LAG   copy dr") && shown.contains("1 backup(s) missing"),
        "{shown}"
    );

    let copied = copy_json(cli, &["--all-missing"]);
    assert_eq!(copied.len(), 1);
    assert_eq!(copied[0]["copy"], "dr");
    assert_eq!(ids(&copied[0]["backups_copied"]).len(), 1);
    assert!(copied[0]["bytes_copied"].as_u64().unwrap() > 0);
    assert_eq!(copied[0]["failures"], serde_json::json!([]));
    let after = run(cli(&["check"]));
    let shown = text(&after);
    assert!(after.status.success(), "{shown}");
    assert!(
        shown.contains("OK    copy dr") && shown.contains("1 backup(s), none missing"),
        "{shown}"
    );

    // A second run copies nothing.
    let again = copy_json(cli, &["--all-missing"]);
    assert_eq!(ids(&again[0]["backups_copied"]), Vec::<String>::new());
    assert_eq!(again[0]["backups_present"], 1);
    assert_eq!(again[0]["bytes_copied"], 0);

    // A drill against the copy proves it restores; its report is stored in the primary,
    // says where the backup came from, and is copied like the rest.
    let drill = run(cli(&[
        "restore-test",
        "--from-copy",
        "dr",
        "--identity",
        identity,
        "--json",
    ]));
    assert!(drill.status.success(), "{}", text(&drill));
    let report: serde_json::Value = serde_json::from_slice(&drill.stdout).unwrap();
    assert_eq!(report["verdict"], "PASS", "{report}");
    assert_eq!(report["backup"]["from_copy"], "dr");
    let reports = copy_json(cli, &["latest", "--to", "dr"]);
    assert_eq!(reports[0]["other_objects_copied"], 3, "{}", reports[0]);

    // Damage in the copy: a dump of another size is found by the next copy (from the
    // listing) and copied again; one of the same size only with --verify.
    let listed: serde_json::Value =
        serde_json::from_str(&run_ok(cli(&["list", "--json", "--from-copy", "dr"]))).unwrap();
    let dump = &listed[0]["objects"]["dump"];
    let dump_key = format!("{copy_prefix}{}", dump["key"].as_str().unwrap());
    let dump_size = dump["stored_size"].as_u64().unwrap() as usize;
    overwrite(
        &server,
        &runtime,
        &copy_bucket,
        &dump_key,
        b"garbage".to_vec(),
    );
    let damaged = run(cli(&["verify", "--from-copy", "dr", "latest"]));
    assert_eq!(damaged.status.code(), Some(2), "{}", text(&damaged));
    let repaired = copy_json(cli, &["--all-missing"]);
    assert_eq!(
        ids(&repaired[0]["backups_repaired"]).len(),
        1,
        "{}",
        repaired[0]
    );
    assert_eq!(repaired[0]["objects_repaired"], 1);
    run_ok(cli(&["verify", "--from-copy", "dr", "latest"]));
    overwrite(
        &server,
        &runtime,
        &copy_bucket,
        &dump_key,
        vec![0u8; dump_size],
    );
    let by_size = copy_json(cli, &["--all-missing"]);
    assert_eq!(ids(&by_size[0]["backups_repaired"]).len(), 0);
    let verified = copy_json(cli, &["--all-missing", "--verify"]);
    assert_eq!(
        ids(&verified[0]["backups_repaired"]).len(),
        1,
        "{}",
        verified[0]
    );
    run_ok(cli(&["verify", "--from-copy", "dr", "latest"]));

    // The primary goes away, objects and bucket.
    delete_location(&server, &runtime, &bucket, &prefix);
    let gone = run(cli(&["list", "--json"]));
    assert!(
        !gone.status.success() || String::from_utf8_lossy(&gone.stdout).trim() == "[]",
        "{}",
        text(&gone)
    );
    let from_copy = run_ok(cli(&["list", "--from-copy", "dr"]));
    assert!(
        from_copy.contains(listed[0]["id"].as_str().unwrap()),
        "{from_copy}"
    );
    let restored = run_ok(cli(&[
        "restore",
        "--from-copy",
        "dr",
        "latest",
        "--target",
        &source.url("app_restored"),
        "--identity",
        identity,
    ]));
    assert!(restored.contains("restore PASSED"), "{restored}");
    let sql = "select count(*) || ' ' || sum(id) from orders";
    assert_eq!(source.psql("app_restored", sql), source.psql("app", sql));
    run_ok(cli(&["reports", "verify", "--from-copy", "dr"]));
}

#[test]
fn a_copy_keeping_fewer_backups_prunes_only_itself_and_never_gets_them_back() {
    let Some(server) = S3Server::from_env() else {
        return;
    };
    let Some(source) = PgCluster::start() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    source.psql("postgres", "create database app");
    source.psql(
        "app",
        "create table t as select g from generate_series(1, 100) g",
    );
    let key = keygen(work.path(), "ops");
    // The primary in Garage, the copy in a directory: copies cross backends.
    let vault = work.path().join("vault");
    let (_, _, policy) = s3_policy(
        &server,
        work.path(),
        &source.url("app"),
        &key.recipient,
        &format!(
            "[[repository.copies]]\nname = \"vault\"\nurl = \"file://{}\"\n[repository.copies.retention]\nkeep_last = 1\n[retention]\nkeep_last = 5\n",
            vault.display()
        ),
    );
    let cli = |args: &[&str]| {
        let mut cmd = pgvault(Some(&server));
        cmd.args(args).arg("--policy").arg(&policy);
        cmd
    };
    let listed = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["list", "--json"];
        all.extend_from_slice(args);
        serde_json::from_str::<serde_json::Value>(&run_ok(cli(&all)))
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    run_ok(cli(&["backup"]));
    let first = listed(&[]);
    assert_eq!(
        ids(&copy_json(cli, &["--all-missing"])[0]["backups_copied"]),
        first
    );
    // Backup ids are to the second: the next backup gets its own.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    run_ok(cli(&["backup"]));
    let both = listed(&[]);
    assert_eq!(both.len(), 2);
    let copied = copy_json(cli, &["--all-missing"]);
    assert_eq!(ids(&copied[0]["backups_copied"]), vec![both[0].clone()]);

    let plan = run_ok(cli(&["prune", "--copy", "vault", "--dry-run"]));
    assert!(
        plan.contains(&first[0]) && plan.contains("DELETE"),
        "{plan}"
    );
    run_ok(cli(&["prune", "--copy", "vault"]));
    assert_eq!(listed(&["--from-copy", "vault"]), vec![both[0].clone()]);
    assert_eq!(
        listed(&[]),
        both,
        "pruning the copy must not touch the primary"
    );

    // The copy's rules gave the old backup up: copying again does not bring it back.
    let again = copy_json(cli, &["--all-missing"]);
    assert_eq!(ids(&again[0]["backups_copied"]), Vec::<String>::new());
    assert_eq!(ids(&again[0]["left_out"]), vec![first[0].clone()]);
    assert_eq!(listed(&["--from-copy", "vault"]), vec![both[0].clone()]);
    let verify = run_ok(cli(&["verify", "--from-copy", "vault", "latest"]));
    assert!(verify.contains("PASSED"), "{verify}");
}

#[test]
fn a_base_backup_and_wal_copied_restore_to_a_point_in_time_from_the_copy_alone() {
    let Some(server) = S3Server::from_env() else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (copy_bucket, copy_prefix) = runtime.block_on(server.fresh_location());
    let Some(a) = Archiving::start_with(&s3_copy(&server, "dr", (&copy_bucket, &copy_prefix), ""))
    else {
        return;
    };
    run_ok(a.cli(&["backup", "--kind", "physical"]));
    a.insert("before the target");
    let target_time = a.source.psql(
        "postgres",
        "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    );
    a.insert("after the target");
    a.switch_and_archive();

    let out = run_ok(a.cli(&["copy", "--all-missing", "--json"]));
    let copied: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ids(&copied[0]["backups_copied"]).len(), 1, "{out}");
    let wal_files = copied[0]["wal_files_copied"].as_u64().unwrap();
    assert!(wal_files >= 2, "{out}");
    let check = run_ok(a.cli(&["check"]));
    assert!(check.contains("OK    copy dr"), "{check}");

    // Only the copy is left: the base backup and every WAL file come from it, the
    // latter through the restored server's `wal-fetch --from-copy dr`.
    delete_location(&a.server, &a.runtime, &a.bucket, &a.prefix);
    let dir = a.work.path().join("from-copy");
    let _guard = Restored {
        source: &a.source,
        dir: dir.clone(),
    };
    let (out, port) = a.restore(
        &dir,
        &[
            "--from-copy",
            "dr",
            "--to-time",
            &target_time,
            "--target-action",
            "pause",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(a.notes_at(port), vec!["before the target".to_string()]);
    let settings = std::fs::read_to_string(dir.join("postgresql.auto.conf")).unwrap();
    assert!(settings.contains("--from-copy dr"), "{settings}");
}

/// The value of `name{policy="app",copy="…"}` in a scrape.
fn copy_metric(scrape: &str, name: &str, copy: &str) -> Option<f64> {
    let prefix = format!("{name}{{policy=\"app\",copy=\"{copy}\"}} ");
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn the_agent_copies_after_each_backup_and_a_failing_copy_leaves_backups_good() {
    let hook = WebhookReceiver::start();
    let Some(f) = Fixture::start(
        "create table t as select g from generate_series(1, 1000) g",
        "",
    ) else {
        return;
    };
    let vault = f.work.path().join("vault");
    // A copy that cannot be written: its directory would be inside a file.
    let blocked = f.work.path().join("a-file");
    std::fs::write(&blocked, "not a directory").unwrap();
    let text_of_policy = std::fs::read_to_string(&f.policy).unwrap();
    let copies = format!(
        "[[repository.copies]]\nname = \"vault\"\nurl = \"file://{}\"\ncopy_after_backup = true\n[[repository.copies]]\nname = \"broken\"\nurl = \"file://{}/copy\"\ncopy_after_backup = true\n[schedule]\nbackup = \"*/2 * * * * *\"\nretries = 0\n[notify]\nwebhook = \"http://127.0.0.1:{}/hook\"\n",
        vault.display(),
        blocked.display(),
        hook.port
    );
    std::fs::write(&f.policy, format!("{text_of_policy}{copies}")).unwrap();
    let port = free_port();
    let agent = Command::new(agent_bin())
        .arg("--policy")
        .arg(&f.policy)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("a copy to vault and a failed copy to broken", 120, || {
        http_get(port, "/metrics").is_some_and(|m| {
            copy_metric(&m, "pgvault_copy_last_success_timestamp_seconds", "vault").is_some()
                && copy_metric(&m, "pgvault_copy_failures_total", "broken")
                    .is_some_and(|n| n >= 1.0)
        })
    });
    let scrape = http_get(port, "/metrics").unwrap();
    assert_eq!(
        pgvault_integration::metric(&scrape, "pgvault_last_attempt_success", "app"),
        Some(1.0),
        "a failed copy must not fail the backup:\n{scrape}"
    );
    assert_eq!(
        copy_metric(&scrape, "pgvault_copy_failures_total", "vault"),
        Some(0.0)
    );
    assert_eq!(
        copy_metric(&scrape, "pgvault_copy_lag_seconds", "vault"),
        Some(0.0)
    );
    let event = (0..20)
        .filter_map(|_| hook.next_body(30))
        .find(|body| body.contains("copy_failed"))
        .expect("a copy_failed event");
    let event: serde_json::Value = serde_json::from_str(&event).unwrap();
    assert_eq!(event["copy"], "broken");
    assert!(
        event["error"].as_str().unwrap().contains("a-file"),
        "{event}"
    );
    let status = Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = agent.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let in_vault = run_ok({
        let mut cmd = pgvault(None);
        cmd.args(["list", "--json", "--from-copy", "vault", "--policy"])
            .arg(&f.policy);
        cmd
    });
    let in_vault: serde_json::Value = serde_json::from_str(&in_vault).unwrap();
    assert!(!in_vault.as_array().unwrap().is_empty());
    assert!(Path::new(&vault).join("app/backups").is_dir());
}
