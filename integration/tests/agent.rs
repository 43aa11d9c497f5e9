//! The agent on real schedules: it takes backups on an every-few-seconds schedule, prunes
//! to the policy, reports success and then failure in its metrics, shares slots with a
//! second agent without doubling backups, and shuts down cleanly on SIGTERM mid-upload.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a harness failure should panic the test

use std::path::Path;
use std::process::{Child, Command, Stdio};

use pgvault_integration::{
    agent_bin, dump_is_copying_bulk, free_port, http_get, keygen, make_slow_to_dump, metric,
    no_dump_running, pgvault, run_ok, slow_down_compression, wait_until, write_policy, Fixture,
    PgCluster, RepoSpec,
};

fn start_agent(policy: &Path, port: u16, extra: &[&str]) -> Child {
    Command::new(agent_bin())
        .arg("--policy")
        .arg(policy)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn terminate(child: Child) -> std::process::Output {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    child.wait_with_output().unwrap()
}

fn listed(policy: &Path) -> Vec<serde_json::Value> {
    let mut list = pgvault(None);
    list.args(["list", "--json", "--policy"]).arg(policy);
    serde_json::from_str::<serde_json::Value>(&run_ok(list))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn scheduled_backups_are_pruned_and_metrics_show_success_then_failure() {
    let Some(f) = Fixture::start(
        "create table t as select g from generate_series(1, 1000) g",
        "[schedule]\nbackup = \"*/2 * * * * *\"\nretries = 0\n[retention]\nkeep_last = 2\n",
    ) else {
        return;
    };
    // Partial moves keep the rest of the fixture (its directory) alive to the end.
    let (source, policy) = (f.source, f.policy);
    let port = free_port();
    let agent = start_agent(&policy, port, &[]);
    wait_until("the agent to be ready", 30, || {
        http_get(port, "/readyz").is_some()
    });
    assert_eq!(http_get(port, "/healthz").as_deref(), Some("ok\n"));
    wait_until("retention to delete a backup", 120, || {
        http_get(port, "/metrics")
            .and_then(|m| metric(&m, "pgvault_retention_deletions_total", "app"))
            .is_some_and(|n| n >= 1.0)
    });
    let scrape = http_get(port, "/metrics").unwrap();
    assert_eq!(
        metric(&scrape, "pgvault_last_attempt_success", "app"),
        Some(1.0),
        "{scrape}"
    );
    assert!(metric(&scrape, "pgvault_last_raw_bytes", "app").unwrap() > 0.0);
    assert!(metric(&scrape, "pgvault_backup_age_seconds", "app").unwrap() < 60.0);
    assert_eq!(
        metric(&scrape, "pgvault_backup_failures_total", "app"),
        Some(0.0)
    );
    // The yardsticks of the alert rules (docker/monitoring): a slot every 2 s, no
    // jitter or retries.
    assert_eq!(
        metric(&scrape, "pgvault_backup_expected_interval_seconds", "app"),
        Some(2.0),
        "{scrape}"
    );
    assert_eq!(
        metric(&scrape, "pgvault_backup_grace_seconds", "app"),
        Some(0.0)
    );
    assert!(
        listed(&policy).len() <= 3,
        "retention did not keep the repository near keep_last = 2"
    );

    // The source goes away: the next run fails and the metrics say so.
    drop(source);
    wait_until("a failed run in the metrics", 60, || {
        http_get(port, "/metrics")
            .and_then(|m| metric(&m, "pgvault_backup_failures_total", "app"))
            .is_some_and(|n| n >= 1.0)
    });
    let scrape = http_get(port, "/metrics").unwrap();
    assert_eq!(
        metric(&scrape, "pgvault_last_attempt_success", "app"),
        Some(0.0),
        "{scrape}"
    );
    assert!(metric(&scrape, "pgvault_last_success_timestamp_seconds", "app").is_some());
    let out = terminate(agent);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn two_agents_take_exactly_one_backup_per_slot() {
    let Some(f) = Fixture::start(
        "create table t as select g from generate_series(1, 1000) g",
        "[schedule]\nbackup = \"*/3 * * * * *\"\nretries = 0\n",
    ) else {
        return;
    };
    // Partial moves keep the rest of the fixture (its directory) alive to the end.
    let (_source, policy) = (f.source, f.policy);
    let (p1, p2) = (free_port(), free_port());
    let a = start_agent(&policy, p1, &[]);
    let b = start_agent(&policy, p2, &[]);
    wait_until("five backups", 120, || listed(&policy).len() >= 5);
    let (oa, ob) = (terminate(a), terminate(b));
    assert!(oa.status.success() && ob.status.success());
    let mut slots: Vec<i64> = listed(&policy)
        .iter()
        .map(|m| {
            let started =
                chrono::DateTime::parse_from_rfc3339(m["started_at"].as_str().unwrap()).unwrap();
            started.timestamp().div_euclid(3)
        })
        .collect();
    let total = slots.len();
    slots.sort();
    slots.dedup();
    assert_eq!(slots.len(), total, "two backups in one 3-second slot");
    let skipped = String::from_utf8_lossy(&oa.stderr)
        .matches("skipping")
        .count()
        + String::from_utf8_lossy(&ob.stderr)
            .matches("skipping")
            .count();
    assert!(
        skipped >= 1,
        "neither agent ever yielded a slot to the other"
    );
}

/// A policy whose first (catch-up) backup is slow, an agent running it with `grace`, and
/// the point where pg_dump is in the middle of copying the big table.
fn agent_mid_dump(rows: u32, grace: &str) -> Option<(Fixture, Child)> {
    let f = Fixture::start("", "[schedule]\nbackup = \"0 3 * * *\"\n")?;
    make_slow_to_dump(&f.source, "app", rows);
    slow_down_compression(&f.policy);
    // No backup exists yet, so the agent catches up at start.
    let agent = start_agent(&f.policy, free_port(), &["--grace", grace]);
    wait_until("pg_dump to copy the bulk table", 120, || {
        dump_is_copying_bulk(&f.source)
    });
    Some((f, agent))
}

#[test]
fn sigterm_during_an_upload_aborts_it_and_exits_cleanly() {
    let Some((f, agent)) = agent_mid_dump(300_000, "0s") else {
        return;
    };
    let out = terminate(agent);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(listed(&f.policy).is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(f.repo.join(".uploads"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "open upload left behind");
    wait_until("pg_dump to stop", 30, || no_dump_running(&f.source));
}

#[test]
fn a_failed_backup_reaches_the_webhook_in_json_and_slack_form() {
    let work = tempfile::tempdir().unwrap();
    let key = keygen(work.path(), "ops");
    let repo = work.path().join("repo");
    for format in ["json", "slack"] {
        let receiver = pgvault_integration::WebhookReceiver::start();
        // Nothing listens on the source port: every run fails.
        let policy = write_policy(
            work.path(),
            &format!("down-{format}"),
            &format!("postgres://postgres@127.0.0.1:{}/app", free_port()),
            &RepoSpec::Filesystem(&repo),
            &key.recipient,
            &format!(
                "[schedule]\nbackup = \"0 3 * * *\"\nretries = 1\nretry_backoff = \"1s\"\n[notify]\nwebhook = \"http://127.0.0.1:{}/hook\"\nformat = \"{format}\"\n",
                receiver.port
            ),
        );
        // No backup exists, so the agent catches up at start, fails, and notifies.
        let agent = start_agent(&policy, free_port(), &[]);
        let body = receiver.next_body(60).expect("no notification arrived");
        let out = terminate(agent);
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{log}");
        assert_eq!(
            log.matches("retrying").count(),
            1,
            "one retry before the failure is reported: {log}"
        );
        assert!(
            !log.contains("/hook"),
            "the webhook URL leaked into the log: {log}"
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if format == "json" {
            assert_eq!(v["event"], "backup_failed", "{body}");
            assert_eq!(v["policy"], "down-json", "{body}");
            assert!(
                v["error"].as_str().unwrap().contains("cannot connect"),
                "{body}"
            );
        } else {
            let text = v["text"].as_str().unwrap();
            assert!(
                text.contains("down-slack") && text.contains("FAILED"),
                "{body}"
            );
        }
    }
}

#[test]
fn once_mode_backs_up_applies_retention_and_exits() {
    let Some(source) = PgCluster::start() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    source.psql("postgres", "create database app");
    let key = keygen(work.path(), "ops");
    let repo = work.path().join("repo");
    let policy = write_policy(
        work.path(),
        "app",
        &source.url("app"),
        &RepoSpec::Filesystem(&repo),
        &key.recipient,
        "[retention]\nkeep_last = 1\n",
    );
    for _ in 0..2 {
        let out = Command::new(agent_bin())
            .args(["--once", "--log-format", "json", "--policy"])
            .arg(&policy)
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{log}");
        assert!(
            log.lines()
                .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
            "not JSON logs: {log}"
        );
    }
    assert_eq!(
        listed(&policy).len(),
        1,
        "retention keep_last = 1 after two --once runs"
    );
}

#[test]
fn sigterm_lets_a_running_upload_finish_within_the_grace_period() {
    let Some((f, agent)) = agent_mid_dump(150_000, "10m") else {
        return;
    };
    let out = terminate(agent);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        listed(&f.policy).len(),
        1,
        "the running backup did not complete within the grace period"
    );
}

#[test]
fn scheduled_restore_test_notifies_a_fail_and_exports_its_figures() {
    let drill_dir = pgvault_integration::server_reachable_tempdir("pgvault-test-drill-");
    let receiver = pgvault_integration::WebhookReceiver::start();
    let Some(f) = Fixture::start(
        "create table t as select g from generate_series(1, 1000) g",
        "",
    ) else {
        return;
    };
    let mut backup = pgvault(None);
    backup.args(["backup", "--policy"]).arg(&f.policy);
    run_ok(backup);
    // A drill every 3 seconds whose SQL check cannot pass.
    let mut text = std::fs::read_to_string(&f.policy).unwrap();
    text.push_str(&format!(
        "[restore_test]\nschedule = \"*/3 * * * * *\"\nidentity_file = \"{}\"\nwork_dir = \"{}\"\n\
         [[restore_test.checks]]\nname = \"a thousand and one rows\"\nsql = \"select count(*) from t\"\nexpect = \"= 1001\"\n\
         [notify]\nwebhook = \"http://127.0.0.1:{}/hook\"\n",
        f.key.identity.display(),
        drill_dir.path().display(),
        receiver.port
    ));
    std::fs::write(&f.policy, text).unwrap();

    let port = free_port();
    let agent = start_agent(&f.policy, port, &[]);
    let body = receiver
        .next_body(90)
        .expect("no restore-test notification arrived");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["event"], "restore_test_failed", "{body}");
    assert!(
        v["failures"]
            .to_string()
            .contains("a thousand and one rows"),
        "{body}"
    );
    let report = v["report"].as_str().unwrap().to_string();
    wait_until("the restore-test metrics", 30, || {
        http_get(port, "/metrics")
            .and_then(|m| metric(&m, "pgvault_restore_test_success", "app"))
            .is_some()
    });
    let scrape = http_get(port, "/metrics").unwrap();
    let out = terminate(agent);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        metric(&scrape, "pgvault_restore_test_success", "app"),
        Some(0.0),
        "{scrape}"
    );
    assert!(metric(&scrape, "pgvault_restore_test_rto_seconds", "app").unwrap() > 0.0);
    assert!(metric(&scrape, "pgvault_restore_test_rpo_seconds", "app").unwrap() > 0.0);
    assert!(metric(&scrape, "pgvault_restore_test_failures_total", "app").unwrap() >= 1.0);
    // The notified report is stored and the chain holds.
    assert!(f.repo.join(format!("app/reports/{report}.html")).is_file());
    let mut verify = pgvault(None);
    verify
        .args(["reports", "verify", "--policy"])
        .arg(&f.policy);
    assert!(run_ok(verify).contains("report chain intact"));
}

#[test]
fn a_permanent_error_is_not_retried_and_the_log_has_the_servers_words() {
    let Some(f) = Fixture::start(
        "",
        "[schedule]\nbackup = \"0 3 * * *\"\nretries = 2\nretry_backoff = \"30s\"\n",
    ) else {
        return;
    };
    // The policy names a database that does not exist.
    let text = std::fs::read_to_string(&f.policy).unwrap();
    std::fs::write(&f.policy, text.replace("/app\"", "/nosuchdb\"")).unwrap();
    let out = Command::new(agent_bin())
        .args(["--once", "--log-format", "json", "--policy"])
        .arg(&f.policy)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("FATAL: database \\\"nosuchdb\\\" does not exist"),
        "the server's words are missing: {log}"
    );
    assert!(
        !log.contains("retrying"),
        "a permanent error was retried: {log}"
    );
    assert!(log.contains("permanent"), "{log}");
    assert!(!log.contains('\u{1b}'), "ANSI escapes in a log: {log:?}");
}
