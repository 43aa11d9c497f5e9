//! Leftovers of crashed runs. A backup killed with `kill -9` leaves an open multipart
//! upload, stored objects and its run lease; `prune`, the next backup of the policy and
//! the agent at start-up recognise the dead lease (its process is gone) and remove them
//! at once, not after `orphan_min_age`. A restore killed with `kill -9` leaves its
//! scratch database: the next restore refuses naming it, and `check` names it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};

use pgvault_integration::{
    agent_bin, files_under, free_port, http_get, make_slow_to_dump, pgvault, run, run_ok,
    slow_down_compression, text, wait_until, Fixture, PgCluster,
};

fn kill_9(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = child.wait();
}

fn open_uploads(f: &Fixture) -> usize {
    files_under(&f.repo.join(".uploads"))
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "key"))
        .count()
}

fn backup_ids(f: &Fixture) -> Vec<String> {
    let mut list = pgvault(None);
    list.args(["list", "--json", "--policy"]).arg(&f.policy);
    let listed: serde_json::Value = serde_json::from_str(&run_ok(list)).unwrap();
    listed
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect()
}

/// Make the policy's backups fast (level 3) or slow enough to be killed mid-upload.
fn set_speed(f: &Fixture, slow: bool) {
    let text = std::fs::read_to_string(&f.policy).unwrap();
    let text = text.replace("level = 19\nthreads = 1", "level = 3");
    std::fs::write(&f.policy, text).unwrap();
    if slow {
        slow_down_compression(&f.policy);
    }
}

/// A fixture with a slow-to-dump database, and a backup killed with `kill -9` once its
/// multipart upload is open. Returns the fixture and the killed run's backup id.
fn killed_backup(extra_policy: &str) -> Option<(Fixture, String)> {
    let f = Fixture::start("", extra_policy)?;
    let id = kill_a_backup_mid_upload(&f);
    Some((f, id))
}

/// Fill the fixture's database, start a slow backup, `kill -9` it once its multipart
/// upload is open, and return its backup id (checking what it left behind).
fn kill_a_backup_mid_upload(f: &Fixture) -> String {
    make_slow_to_dump(&f.source, "app", 300_000);
    set_speed(f, true);
    let mut child = pgvault(None)
        .args(["backup", "--policy"])
        .arg(&f.policy)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the dump upload to open", 120, || open_uploads(f) == 1);
    kill_9(&mut child);
    let runs = files_under(&f.repo.join("app/runs"));
    assert_eq!(runs.len(), 1, "the killed run's lease: {runs:?}");
    let id = runs[0].file_stem().unwrap().to_string_lossy().to_string();
    assert_eq!(open_uploads(f), 1, "the killed run left its upload open");
    assert!(
        !files_under(&f.repo.join("app/backups").join(&id)).is_empty(),
        "the killed run stored objects before the dump"
    );
    id
}

fn assert_clean(f: &Fixture, killed: &str) {
    assert_eq!(open_uploads(f), 0, "an upload is still open");
    assert!(
        files_under(&f.repo.join("app/backups").join(killed)).is_empty(),
        "the killed run's objects are still there"
    );
    assert!(
        files_under(&f.repo.join("app/runs")).is_empty(),
        "a lease is left: {:?}",
        files_under(&f.repo.join("app/runs"))
    );
}

#[test]
fn prune_removes_a_killed_backups_leftovers_at_once() {
    // orphan_min_age stays at its default (24h): only the dead lease allows this.
    let Some((f, id)) = killed_backup("[retention]\nkeep_last = 3\n") else {
        return;
    };
    let mut dry = pgvault(None);
    dry.args(["prune", "--dry-run", "--policy"]).arg(&f.policy);
    let out = run_ok(dry);
    assert!(
        out.lines().any(|l| l.starts_with(&format!("orphan {id}"))
            && l.contains("crashed run: its process")
            && l.ends_with("REMOVE")),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("stale upload")
            && l.contains(&id)
            && l.contains("crashed run")
            && l.ends_with("ABORT")),
        "{out}"
    );
    let mut prune = pgvault(None);
    prune.args(["prune", "--policy"]).arg(&f.policy);
    let out = run_ok(prune);
    assert!(
        out.contains("removed 1 orphan(s), aborted 1 stale upload(s)"),
        "{out}"
    );
    assert_clean(&f, &id);
}

#[test]
fn the_next_backup_removes_a_killed_backups_leftovers() {
    let Some((f, id)) = killed_backup("") else {
        return;
    };
    set_speed(&f, false);
    run_ok({
        let mut b = pgvault(None);
        b.args(["backup", "--policy"]).arg(&f.policy);
        b
    });
    assert_clean(&f, &id);
    let ids = backup_ids(&f);
    assert_eq!(ids.len(), 1);
    assert_ne!(ids[0], id);
}

#[test]
fn the_agent_removes_a_killed_backups_leftovers_at_start_up() {
    let Some(f) = Fixture::start(
        "create table t as select 1",
        "[schedule]\nbackup = \"0 3 * * *\"\n",
    ) else {
        return;
    };
    // A recent backup, so the agent has nothing to catch up at start.
    run_ok({
        let mut b = pgvault(None);
        b.args(["backup", "--policy"]).arg(&f.policy);
        b
    });
    let killed = kill_a_backup_mid_upload(&f);
    set_speed(&f, false);
    let port = free_port();
    let agent = Command::new(agent_bin())
        .arg("--policy")
        .arg(&f.policy)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the agent to be ready", 30, || {
        http_get(port, "/readyz").is_some()
    });
    wait_until("the agent to remove the leftovers", 60, || {
        open_uploads(&f) == 0 && files_under(&f.repo.join("app/runs")).is_empty()
    });
    let status = Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = agent.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_clean(&f, &killed);
    assert_eq!(
        backup_ids(&f).len(),
        1,
        "the agent took no backup of its own"
    );
}

/// Databases whose names say they are restore scratch databases.
fn scratch_databases(c: &PgCluster) -> Vec<String> {
    c.databases()
        .into_iter()
        .filter(|d| d.contains("_pgvault_"))
        .collect()
}

#[test]
fn a_killed_restore_is_named_by_the_next_restore_and_by_check() {
    let Some(f) = Fixture::start("", "") else {
        return;
    };
    make_slow_to_dump(&f.source, "app", 300_000);
    run_ok({
        let mut b = pgvault(None);
        b.args(["backup", "--policy"]).arg(&f.policy);
        b
    });
    let target = f.source.url("restored");
    let restore = |target: &str| {
        let mut cmd = pgvault(None);
        cmd.args(["restore", "--policy"])
            .arg(&f.policy)
            .arg("--identity")
            .arg(&f.key.identity)
            .args(["--target", target]);
        cmd
    };
    let mut child = restore(&target)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the restore's scratch database", 60, || {
        !scratch_databases(&f.source).is_empty()
    });
    kill_9(&mut child);
    let left = scratch_databases(&f.source);
    assert_eq!(left.len(), 1, "{left:?}");
    // pg_restore ends once its input is gone; then the database is idle.
    wait_until("pg_restore to end", 60, || {
        f.source.psql(
            "postgres",
            &format!(
                "select count(*) from pg_stat_activity where datname = '{}'",
                left[0]
            ),
        ) == "0"
    });

    let out = run(restore(&target));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains(&format!(
            "an interrupted restore into restored left {}",
            left[0]
        )) && t.contains("DROP DATABASE"),
        "{t}"
    );
    assert!(
        !f.source.databases().contains(&"restored".to_string()),
        "the refused restore created the target"
    );

    let mut check = pgvault(None);
    check.args(["check", "--policy"]).arg(&f.policy);
    let out = run(check);
    let t = text(&out);
    assert!(
        t.lines().any(|l| l.contains("WARN  leftover database")
            && l.contains(&left[0])
            && l.contains("interrupted restore")),
        "{t}"
    );

    // Once it is dropped, the restore runs.
    f.source
        .psql("postgres", &format!("drop database \"{}\"", left[0]));
    run_ok(restore(&target));
    assert!(scratch_databases(&f.source).is_empty());
}
