//! Point-in-time recovery end to end: a real PostgreSQL archiving through
//! `pgvault wal-push` into Garage, physical base backups, and restores to a time, an LSN,
//! a named restore point and the end of the archive across a timeline switch.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use pgvault_integration::archiving::{Archiving, Restored};
use pgvault_integration::cluster::PgCluster;
use pgvault_integration::{
    free_port, keygen, pgvault, pgvault_bin, run, run_ok, text, write_policy, RepoSpec, TestKey,
};

/// A source cluster and a policy with a filesystem repository, in a directory the
/// server's OS user can enter (for tests where the server runs pgvault itself).
struct LocalPolicy {
    source: PgCluster,
    work: tempfile::TempDir,
    key: TestKey,
    repo: PathBuf,
    policy: PathBuf,
}

impl LocalPolicy {
    fn start(prefix: &str) -> Option<LocalPolicy> {
        let source = PgCluster::start()?;
        let work = pgvault_integration::server_reachable_tempdir(prefix);
        let key = keygen(work.path(), "ops");
        let repo = work.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        let policy = write_policy(
            work.path(),
            "app",
            &source.url("postgres"),
            &RepoSpec::Filesystem(&repo),
            &key.recipient,
            "",
        );
        Some(LocalPolicy {
            source,
            work,
            key,
            repo,
            policy,
        })
    }
}

#[test]
fn recovery_replays_through_the_long_lived_prefetcher() {
    let Some(a) = Archiving::start() else {
        return;
    };
    run_ok(a.cli(&["backup", "--kind", "physical"]));
    for i in 0..12 {
        a.insert(&format!("row {i}"));
        a.switch_and_archive();
    }
    let dir = a.work.path().join("latest");
    let _guard = Restored {
        source: &a.source,
        dir: dir.clone(),
    };
    let (out, port) = a.restore(&dir, &["--to-latest"]);
    assert!(out.status.success(), "{}", text(&out));
    let served: usize = text(&out)
        .split(" WAL file(s) from the prefetcher")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no prefetcher count in {}", text(&out)));
    assert!(served >= 1, "{}", text(&out));
    let expected: Vec<String> = (0..12).map(|i| format!("row {i}")).collect();
    assert_eq!(a.notes_at(port), expected);
}

#[test]
fn restore_to_a_time_an_lsn_and_a_named_point_gives_exactly_the_rows_before_it() {
    let Some(a) = Archiving::start() else {
        return;
    };
    a.insert("before backup");
    run_ok(a.cli(&["backup", "--kind", "physical"]));
    a.insert("a");
    let lsn_after_a = a
        .source
        .psql("postgres", "select pg_current_wal_insert_lsn()");
    let time_after_a = a.source.psql("postgres", "select clock_timestamp()");
    let xid_of_b = a.source.psql(
        "postgres",
        "with i as (insert into ev (note) values ('b') returning 1) select txid_current() from i",
    );
    a.source
        .psql("postgres", "select pg_create_restore_point('after b')");
    a.insert("c");
    a.switch_and_archive();

    let dir = a.work.path().join("to-time");
    let _guard = Restored {
        source: &a.source,
        dir: dir.clone(),
    };
    let (out, port) = a.restore(&dir, &["--to-time", &time_after_a]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("recovery stopping before commit"),
        "{}",
        text(&out)
    );
    assert_eq!(a.notes_at(port), ["before backup", "a"]);

    let dir = a.work.path().join("to-lsn");
    let _guard = Restored {
        source: &a.source,
        dir: dir.clone(),
    };
    let (out, port) = a.restore(
        &dir,
        &["--to-lsn", &lsn_after_a, "--target-action", "pause"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(a.notes_at(port), ["before backup", "a"]);
    // Paused in recovery, for inspection.
    let paused = a
        .source
        .psql_on_port(port, "postgres", "select pg_get_wal_replay_pause_state()");
    assert_eq!(paused, "paused");

    let dir = a.work.path().join("to-name");
    let _guard = Restored {
        source: &a.source,
        dir: dir.clone(),
    };
    // An inspection copy that must not archive into the policy.
    let (out, port) = a.restore(&dir, &["--to-name", "after b", "--archive-mode", "off"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(a.notes_at(port), ["before backup", "a", "b"]);
    // Promoted, and not archiving: its new timeline never reaches the policy's archive.
    assert_eq!(
        a.source.psql_on_port(port, "postgres", "show archive_mode"),
        "off"
    );

    // "b" committed on timeline 1 after the first restore's promotion branched off:
    // follow the base backup's own timeline to reach it.
    let dir = a.work.path().join("to-xid");
    let _guard = Restored {
        source: &a.source,
        dir: dir.clone(),
    };
    let (out, port) = a.restore(
        &dir,
        &[
            "--to-xid",
            &xid_of_b,
            "--target-timeline",
            "current",
            "--archive-mode",
            "off",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(a.notes_at(port), ["before backup", "a", "b"]);

    // A non-empty data directory is refused without --force.
    let (out, _) = a.restore(&dir, &["--to-latest"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--force"), "{}", text(&out));

    // A time after the end of the archived WAL is refused, naming the newest reachable
    // time, before anything is written.
    let future = a.work.path().join("to-2099");
    let (out, _) = a.restore(
        &future,
        &[
            "--to-time",
            "2099-01-01 00:00:00+00",
            "--target-timeline",
            "current",
        ],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("is after the end of the archived WAL")
            && t.contains("The newest reachable time is at most"),
        "{t}"
    );
    assert!(
        !future.exists(),
        "the refused restore wrote {}",
        future.display()
    );
}

#[test]
fn restore_follows_a_timeline_switch_to_the_end_of_the_archive() {
    let Some(a) = Archiving::start() else {
        return;
    };
    a.insert("before backup");
    run_ok(a.cli(&["backup", "--kind", "physical"]));
    a.insert("a");
    let time_after_a = a.source.psql("postgres", "select clock_timestamp()");
    a.insert("b");
    a.switch_and_archive();

    // Restore to "a" and promote: timeline 2 begins and archives into the same policy.
    let promoted = a.work.path().join("promoted");
    let _first = Restored {
        source: &a.source,
        dir: promoted.clone(),
    };
    let (out, port) = a.restore(&promoted, &["--to-time", &time_after_a]);
    assert!(out.status.success(), "{}", text(&out));
    let psql = |sql: &str| a.source.psql_on_port(port, "postgres", sql);
    psql("insert into ev (note) values ('on timeline 2')");
    let segment = psql("select pg_walfile_name(pg_switch_wal())");
    pgvault_integration::wait_until("timeline 2 to be archived", 60, || {
        psql(&format!(
            "select coalesce(last_archived_wal >= '{segment}', false) from pg_stat_archiver"
        )) == "t"
    });
    assert!(
        a.wal_keys()
            .iter()
            .any(|k| k.contains("/00000002.history.")),
        "{:?}",
        a.wal_keys()
    );

    let latest = a.work.path().join("latest");
    let _second = Restored {
        source: &a.source,
        dir: latest.clone(),
    };
    let plan = run_ok(a.cli(&[
        "restore",
        "--identity",
        a.identity(),
        "--pgdata",
        latest.to_str().unwrap(),
        "--to-latest",
        "--dry-run",
    ]));
    assert!(plan.contains("across timelines 1 -> 2"), "{plan}");
    assert!(!latest.exists(), "a dry run wrote {}", latest.display());
    let (out, port) = a.restore(&latest, &["--to-latest"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(a.notes_at(port), ["before backup", "a", "on timeline 2"]);
}

#[test]
fn a_missing_wal_segment_refuses_the_plan_and_names_it() {
    let Some(a) = Archiving::start() else {
        return;
    };
    run_ok(a.cli(&["backup", "--kind", "physical"]));
    for i in 0..3 {
        a.insert(&format!("row {i}"));
        a.switch_and_archive();
    }
    let mut segments: Vec<String> = a
        .wal_keys()
        .into_iter()
        .filter(|k| {
            let name = k.rsplit('/').next().unwrap();
            name.len() > 24 && name.as_bytes()[24] == b'.' && !name.contains(".backup.")
        })
        .collect();
    segments.sort();
    let healthy = run(a.cli(&["check"]));
    assert_eq!(healthy.status.code(), Some(0), "{}", text(&healthy));
    assert!(
        text(&healthy).contains("OK    base backup"),
        "{}",
        text(&healthy)
    );
    // Drop a segment in the middle of what replay needs.
    let victim = segments[segments.len() - 2].clone();
    let name = victim.rsplit('/').next().unwrap()[..24].to_string();
    let client = a.runtime.block_on(a.server.client());
    a.runtime
        .block_on(client.delete_object().bucket(&a.bucket).key(&victim).send())
        .unwrap();

    let checked = run(a.cli(&["check"]));
    assert_eq!(checked.status.code(), Some(2), "{}", text(&checked));
    assert!(
        text(&checked).contains("1 of") && text(&checked).contains(&format!("first {name}")),
        "{}",
        text(&checked)
    );
    let never = a.work.path().join("never");
    let out = run(a.cli(&[
        "restore",
        "--identity",
        a.identity(),
        "--pgdata",
        never.to_str().unwrap(),
        "--to-latest",
        "--dry-run",
    ]));
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&format!("WAL segment {name} is missing from the archive")),
        "{}",
        text(&out)
    );
}

#[test]
fn wal_push_is_idempotent_refuses_different_content_and_fetch_is_served_by_the_prefetcher() {
    let work = tempfile::tempdir().unwrap();
    let key = keygen(work.path(), "ops");
    let repo = work.path().join("repo");
    let policy = write_policy(
        work.path(),
        "app",
        "postgres://postgres@127.0.0.1:1/postgres",
        &RepoSpec::Filesystem(&repo),
        &key.recipient,
        "",
    );
    let wal_dir = work.path().join("pg_wal");
    std::fs::create_dir(&wal_dir).unwrap();
    let segment = |n: u32, fill: u8| {
        let path = wal_dir.join(format!("0000000100000000000000{n:02X}"));
        let body: Vec<u8> = (0..16 * 1024 * 1024u32)
            .map(|i| (i % 251) as u8 ^ fill)
            .collect();
        std::fs::write(&path, body).unwrap();
        path
    };
    let push = |path: &Path| {
        let mut cmd = pgvault(None);
        cmd.args(["wal-push", "--policy"]).arg(&policy).arg(path);
        run(cmd)
    };
    let first = segment(0x10, 0);
    let original = std::fs::read(&first).unwrap();
    assert!(push(&first).status.success());
    let again = push(&first);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("already archived"),
        "{}",
        text(&again)
    );

    std::fs::write(&first, vec![7u8; 16 * 1024 * 1024]).unwrap();
    let conflict = push(&first);
    assert_eq!(conflict.status.code(), Some(1), "{}", text(&conflict));
    assert!(
        text(&conflict).contains("different content"),
        "{}",
        text(&conflict)
    );

    for n in [0x11, 0x12, 0x13] {
        assert!(push(&segment(n, n as u8)).status.success());
    }
    let restore_dir = work.path().join("restored_wal");
    std::fs::create_dir(&restore_dir).unwrap();
    let fetch = |name: &str, prefetch: &str| {
        let mut cmd = pgvault(None);
        cmd.args(["wal-fetch", "--policy"])
            .arg(&policy)
            .arg("--identity")
            .arg(&key.identity)
            .args(["--prefetch", prefetch, name])
            .arg(restore_dir.join("RECOVERYXLOG"));
        run(cmd)
    };
    let out = fetch("000000010000000000000010", "2");
    assert!(out.status.success(), "{}", text(&out));
    // The original content, not the refused one.
    assert_eq!(
        std::fs::read(restore_dir.join("RECOVERYXLOG")).unwrap(),
        original
    );
    // The prefetcher started by that call keeps the next two segments ready.
    let prefetched = restore_dir.join(".pgvault-prefetch");
    let ready = || {
        let mut waiting: Vec<String> = std::fs::read_dir(&prefetched)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.') && n.len() == 24)
            .collect();
        waiting.sort();
        waiting
    };
    pgvault_integration::wait_until("the prefetcher to fetch two segments ahead", 30, || {
        ready() == ["000000010000000000000011", "000000010000000000000012"]
    });
    // Served from the prefetcher: the repository is not even reachable now.
    let away = work.path().join("repo-away");
    std::fs::rename(&repo, &away).unwrap();
    let out = fetch("000000010000000000000011", "2");
    std::fs::rename(&away, &repo).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!prefetched.join("000000010000000000000011").exists());
    assert_eq!(
        std::fs::read(restore_dir.join("RECOVERYXLOG")).unwrap(),
        std::fs::read(wal_dir.join("000000010000000000000011")).unwrap()
    );
    // Nothing half-written is left beside the target.
    let leftovers: Vec<_> = std::fs::read_dir(&restore_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "RECOVERYXLOG" && n != ".pgvault-prefetch")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let missing = fetch("000000010000000000000099", "0");
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing).contains("is not in the archive"),
        "{}",
        text(&missing)
    );
}

#[test]
fn retention_deletes_wal_no_retained_base_backup_needs() {
    let Some(a) = Archiving::start_with("[retention]\nkeep_last = 1\n") else {
        return;
    };
    run_ok(a.cli(&["backup", "--kind", "physical"]));
    for i in 0..2 {
        a.insert(&format!("row {i}"));
        a.switch_and_archive();
    }
    let second = run_ok(a.cli(&["backup", "--kind", "physical", "--json"]));
    let manifest: serde_json::Value = serde_json::from_str(&second).unwrap();
    let start_wal = manifest["manifest"]["physical"]["start_wal"]
        .as_str()
        .unwrap()
        .to_string();
    a.insert("after the second backup");
    a.switch_and_archive();
    let segment_of = |k: &String| k.rsplit('/').next().unwrap()[..24].to_string();
    let before: Vec<String> = a.wal_keys().iter().map(segment_of).collect();
    assert!(before.iter().any(|s| *s < start_wal), "{before:?}");

    let out = run_ok(a.cli(&["prune"]));
    assert!(out.contains("deleted 1 backup(s)"), "{out}");
    let after: Vec<String> = a.wal_keys().iter().map(segment_of).collect();
    assert!(
        after
            .iter()
            .all(|s| *s >= start_wal || s.ends_with("history")),
        "{after:?}"
    );
    assert!(after.contains(&start_wal), "{after:?}");
    // What is left still restores.
    let dir = a.work.path().join("after-prune");
    let _guard = Restored {
        source: &a.source,
        dir: dir.clone(),
    };
    let (out, port) = a.restore(&dir, &["--to-latest", "--archive-mode", "off"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        a.notes_at(port),
        ["row 0", "row 1", "after the second backup"]
    );
}

#[test]
fn the_agent_takes_physical_backups_on_their_own_schedule() {
    let Some(a) =
        Archiving::start_with("[schedule]\nbackup = \"0 3 * * *\"\nphysical = \"*/3 * * * * *\"\n")
    else {
        return;
    };
    let port = free_port();
    let mut agent = Command::new(pgvault_integration::agent_bin());
    agent
        .arg("--policy")
        .arg(&a.policy)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--archive-check-every", "1s"])
        .env("AWS_ACCESS_KEY_ID", &a.server.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &a.server.secret_access_key)
        .env("AWS_REGION", &a.server.region)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let child = agent.spawn().unwrap();
    pgvault_integration::wait_until("a scheduled physical backup", 90, || {
        pgvault_integration::http_get(port, "/metrics").and_then(|m| {
            pgvault_integration::metric(&m, "pgvault_physical_last_attempt_success", "app")
        }) == Some(1.0)
    });
    pgvault_integration::wait_until("the archive lag metric", 30, || {
        pgvault_integration::http_get(port, "/metrics")
            .and_then(|m| pgvault_integration::metric(&m, "pgvault_wal_archive_lag_seconds", "app"))
            .is_some()
    });
    let scrape = pgvault_integration::http_get(port, "/metrics").unwrap();
    assert_eq!(
        pgvault_integration::metric(&scrape, "pgvault_wal_archiver_failing", "app"),
        Some(0.0),
        "{scrape}"
    );
    assert_eq!(
        pgvault_integration::metric(&scrape, "pgvault_wal_archive_gaps", "app"),
        Some(0.0),
        "{scrape}"
    );
    assert!(
        pgvault_integration::metric(&scrape, "pgvault_wal_archive_lag_seconds", "app").is_some(),
        "{scrape}"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value =
        serde_json::from_str(&run_ok(a.cli(&["list", "--json"]))).unwrap();
    let kinds: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"physical"), "{kinds:?}");
    // The missed logical slot was caught up at start, on its own schedule.
    assert!(kinds.contains(&"logical"), "{kinds:?}");
}

#[test]
fn killing_wal_push_mid_upload_makes_postgres_retry_and_the_archive_ends_complete() {
    let Some(LocalPolicy {
        source,
        work,
        key,
        repo,
        policy,
    }) = LocalPolicy::start("pgvault-test-kill-")
    else {
        return;
    };
    // Slow compression keeps each upload open long enough to be killed inside it; a
    // segment of random bytes does not shrink below the (smallest) part size, so it is
    // stored through a multipart upload rather than one request.
    pgvault_integration::slow_down_compression(&policy);
    let text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(
        &policy,
        text.replace("[repository]\n", "[repository]\npart_size = \"5MiB\"\n"),
    )
    .unwrap();
    let marker = work.path().join("killed-once");
    let script = work.path().join("archive.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             if [ ! -e {marker} ]; then\n\
               touch {marker}\n\
               {bin} wal-push --policy {policy} \"$1\" &\n\
               pid=$!\n\
               until ls {repo}/.uploads/*.key >/dev/null 2>&1; do\n\
                 kill -0 $pid 2>/dev/null || exit 1\n\
                 sleep 0.05\n\
               done\n\
               kill -9 $pid\n\
               echo killed > {marker}\n\
               exit 1\n\
             fi\n\
             exec {bin} wal-push --policy {policy} \"$1\"\n",
            marker = marker.display(),
            bin = pgvault_bin().display(),
            policy = policy.display(),
            repo = repo.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    pgvault_integration::give_to_server_user(true, &[work.path()]);
    source.configure_and_restart(&[
        ("wal_level", "replica"),
        ("archive_mode", "on"),
        ("archive_command", &format!("{} %p", script.display())),
    ]);
    // Segments completed before archiving was on are never archived.
    let first_archived = source.psql("postgres", "select pg_walfile_name(pg_current_wal_lsn())");
    source.psql("postgres", "create extension pgcrypto");
    source.psql(
        "postgres",
        "create table t as select gen_random_bytes(1000) b from generate_series(1, 20000) g",
    );
    let segment = source.psql("postgres", "select pg_walfile_name(pg_switch_wal())");
    pgvault_integration::wait_until(
        "the archiver to store the segment after a retry",
        120,
        || {
            source.psql(
            "postgres",
            &format!("select coalesce(last_archived_wal >= '{segment}', false) from pg_stat_archiver"),
        ) == "t"
        },
    );
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap().trim(),
        "killed",
        "wal-push was not killed mid-upload"
    );
    assert!(
        source
            .psql("postgres", "select failed_count from pg_stat_archiver")
            .parse::<i64>()
            .unwrap()
            >= 1
    );
    // Every segment up to the switched one is archived exactly once and fetches verified.
    let wal_dir = repo.join("app/wal/00000001");
    let names: Vec<String> = std::fs::read_dir(&wal_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy()[..24].to_string())
        .collect();
    let first = u32::from_str_radix(&first_archived[16..], 16).unwrap();
    let last = u32::from_str_radix(&segment[16..], 16).unwrap();
    for n in first..=last {
        let name = format!("{}{:08X}", &segment[..16], n);
        assert_eq!(
            names.iter().filter(|x| **x == name).count(),
            1,
            "{name} in {names:?}"
        );
        let dest = work.path().join("fetched");
        let mut fetch = pgvault(None);
        fetch
            .args(["wal-fetch", "--prefetch", "0", "--policy"])
            .arg(&policy)
            .arg("--identity")
            .arg(&key.identity)
            .arg(&name)
            .arg(&dest);
        run_ok(fetch);
    }
}

#[test]
fn a_point_in_time_restore_test_proves_it_reached_a_random_target() {
    let drill_dir = pgvault_integration::server_reachable_tempdir("pgvault-test-drill-");
    let Some(a) = Archiving::start_with(&format!(
        "[restore_test]\nkind = \"pitr\"\nrto_objective = \"10m\"\nwork_dir = \"{}\"\n",
        drill_dir.path().display()
    )) else {
        return;
    };
    run_ok(a.cli(&["backup", "--kind", "physical"]));
    for i in 0..3 {
        a.insert(&format!("row {i}"));
    }
    a.switch_and_archive();
    let out = run(a.cli(&["restore-test", "--json", "--identity", a.identity()]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no report ({e}): {}", text(&out)));
    assert_eq!(out.status.code(), Some(0), "{}\n{report:#}", text(&out));
    assert_eq!(report["verdict"], "PASS");
    let proof = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "recovery stopped exactly at the target")
        .unwrap();
    assert_eq!(proof["status"], "passed", "{proof}");
    for phase in report["phases"].as_array().unwrap() {
        assert_eq!(phase["status"], "passed", "{phase}");
    }
    assert!(report["rto"]["measured_seconds"].as_f64().unwrap() > 0.0);
    assert!(
        report["rpo"]["measured_seconds"].as_f64().is_some(),
        "{report:#}"
    );
    // The drill's server is gone and its data directory removed.
    let left: Vec<_> = std::fs::read_dir(drill_dir.path())
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn physical_backups_refuse_extra_tablespaces_by_name_and_need_archiving() {
    let Some(LocalPolicy {
        source,
        work,
        key: _key,
        repo,
        policy,
    }) = LocalPolicy::start("pgvault-test-ts-")
    else {
        return;
    };
    let backup = || {
        let mut cmd = pgvault(None);
        cmd.args(["backup", "--kind", "physical", "--policy"])
            .arg(&policy);
        run(cmd)
    };
    let out = backup();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("archive_mode is off"), "{}", text(&out));

    let mut setup = pgvault(None);
    setup
        .args(["archive", "setup", "--apply", "--policy"])
        .arg(&policy);
    let applied = run_ok(setup);
    assert!(
        applied.contains("archive_mode     off -> on  (restart needed)"),
        "{applied}"
    );
    source.configure_and_restart(&[]);
    let command = source.psql("postgres", "show archive_command");
    assert!(
        command.contains(" wal-push --policy ") && command.ends_with(" %p"),
        "{command}"
    );
    source.configure_and_restart(&[("archive_command", "/bin/true")]);
    let location = work.path().join("fast_disk");
    std::fs::create_dir(&location).unwrap();
    pgvault_integration::give_to_server_user(false, &[&location]);
    source.psql(
        "postgres",
        &format!(
            "create tablespace fast_disk location '{}'",
            location.display()
        ),
    );
    let out = backup();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("tablespaces outside the data directory (fast_disk)"),
        "{}",
        text(&out)
    );
    assert!(
        !repo.join("app/backups").exists()
            || std::fs::read_dir(repo.join("app/backups"))
                .unwrap()
                .next()
                .is_none()
    );
}

#[test]
fn archive_and_restore_commands_name_the_running_executable_whatever_its_name() {
    let Some(LocalPolicy {
        source: _source,
        work,
        policy,
        ..
    }) = LocalPolicy::start("pgvault-test-renamed-")
    else {
        return;
    };
    let renamed = work.path().join("pgvault-1.2.3");
    std::fs::copy(pgvault_bin(), &renamed).unwrap();
    let out = run_ok({
        let mut cmd = Command::new(&renamed);
        cmd.args(["archive", "setup", "--policy"]).arg(&policy);
        cmd
    });
    let line = out
        .lines()
        .find(|l| l.starts_with("archive_command"))
        .unwrap_or_else(|| panic!("no archive_command in {out}"));
    let exe = std::fs::canonicalize(&renamed).unwrap();
    assert!(
        line.contains(&format!("{} wal-push --policy", exe.display())),
        "{line}"
    );
}

/// With archiving broken, the server waits forever for a base backup's end segment;
/// pgvault gives up after `[backup] archive_wait`, ends the server side of the backup
/// and leaves nothing behind. Once the archiver has failed, the next base backup is
/// refused before it starts.
#[test]
fn a_base_backup_never_waits_forever_for_broken_archiving() {
    let Some(source) = PgCluster::start() else {
        return;
    };
    source.configure_and_restart(&[("archive_mode", "on"), ("archive_command", "/bin/false")]);
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    let key = keygen(work.path(), "ops");
    let policy = write_policy(
        work.path(),
        "app",
        &source.url("postgres"),
        &RepoSpec::Filesystem(&repo),
        &key.recipient,
        "[backup]\narchive_wait = \"10s\"\n",
    );
    let backup = || {
        let mut cmd = pgvault(None);
        cmd.args(["backup", "--kind", "physical", "--policy"])
            .arg(&policy);
        run(cmd)
    };
    let out = backup();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("base backup abandoned"),
        "{}",
        text(&out)
    );
    assert!(
        pgvault_integration::files_under(&repo.join("app/backups")).is_empty(),
        "the abandoned backup left objects"
    );
    let waiting = || {
        source.psql(
            "postgres",
            "select count(*) from pg_stat_activity where wait_event = 'BackupWaitWalArchive'",
        )
    };
    pgvault_integration::wait_until("the walsender to end", 30, || waiting().trim() == "0");

    let out = backup();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("archiving is failing on the source"),
        "{}",
        text(&out)
    );
}
