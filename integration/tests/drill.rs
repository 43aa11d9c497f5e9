//! Restore tests end to end: `pgvault restore-test` against real PostgreSQL clusters
//! (ephemeral ones it starts itself, and a staging server), and the report chain.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Output;

use pgvault_integration::cluster::PgCluster;
use pgvault_integration::{pgvault, run, run_ok, text, Fixture};
use serde_json::Value;

const DATA: &str = "
create table customers (id bigserial primary key, name text not null);
create table orders (id bigserial primary key, customer_id bigint references customers,
  created_at timestamptz default now(), total numeric(12,2));
create index on orders (created_at);
insert into customers (name) select 'customer ' || g from generate_series(1, 200) g;
insert into orders (customer_id, total) select 1 + g % 200, g from generate_series(1, 2000) g;
";

const CHECKS: &str = r#"
[[restore_test.checks]]
name = "recent orders exist"
sql = "select count(*) from orders where created_at > now() - interval '2 days'"
expect = "> 0"
[[restore_test.checks]]
name = "every order has a customer"
sql = "select o.id from orders o left join customers c on c.id = o.customer_id where c.id is null"
expect = "no rows"
"#;

/// A directory the server's OS user can enter, for ephemeral clusters and spool files.
fn drill_work_dir() -> tempfile::TempDir {
    pgvault_integration::server_reachable_tempdir("pgvault-test-drill-")
}

/// A fixture whose policy has a `[restore_test]` section (`settings` plus `CHECKS`),
/// with one backup taken.
fn fixture(settings: &str, work: &Path, checks: &str) -> Option<Fixture> {
    let extra = format!(
        "[restore_test]\nwork_dir = \"{}\"\nrpo_objective = \"24h\"\n{settings}\n{checks}",
        work.display()
    );
    let fx = Fixture::start(DATA, &extra)?;
    let mut backup = pgvault(None);
    backup.args(["backup", "--policy"]).arg(&fx.policy);
    run_ok(backup);
    Some(fx)
}

/// `pgvault restore-test --json`: the exit status, the report and stderr.
fn restore_test(fx: &Fixture, extra: &[&str]) -> (Output, Value) {
    let mut cmd = pgvault(None);
    cmd.args(["restore-test", "--json", "--policy"])
        .arg(&fx.policy)
        .arg("--identity")
        .arg(&fx.key.identity)
        .args(extra);
    let out = run(cmd);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("restore-test printed no report ({e}):\n{}", text(&out)));
    (out, report)
}

fn phase<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no phase {name} in {report:#}"))
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {report:#}"))
}

fn reports_dir(fx: &Fixture) -> PathBuf {
    fx.repo.join("app").join("reports")
}

#[test]
fn ephemeral_drill_passes_and_writes_three_report_files() {
    let work = drill_work_dir();
    let Some(fx) = fixture("rto_objective = \"1h\"", work.path(), CHECKS) else {
        return;
    };
    let copies = fx.work.path().join("copies");
    let (out, report) = restore_test(&fx, &["--report-dir", copies.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}\n{report:#}", text(&out));
    assert_eq!(report["verdict"], "PASS");
    assert_eq!(report["target"]["kind"], "ephemeral");
    for name in ["setup", "verify", "restore", "checks", "cleanup"] {
        assert_eq!(
            phase(&report, name)["status"],
            "passed",
            "{name}: {report:#}"
        );
    }
    assert_eq!(
        check(&report, "row count public.orders")["expected"],
        "= 2000"
    );
    assert_eq!(check(&report, "row count public.orders")["actual"], "2000");
    assert_eq!(check(&report, "recent orders exist")["actual"], "2000");
    assert_eq!(
        check(&report, "every order has a customer")["actual"],
        "0 row(s)"
    );
    assert_eq!(check(&report, "sequences present")["actual"], "2 present");
    assert_eq!(check(&report, "amcheck B-tree indexes")["status"], "passed");
    let rto = report["rto"]["measured_seconds"].as_f64().unwrap();
    let phases: f64 = ["verify", "restore", "checks"]
        .iter()
        .map(|p| phase(&report, p)["seconds"].as_f64().unwrap())
        .sum();
    assert!(
        (rto - phases).abs() < 1e-6,
        "RTO {rto} is not the sum of its phases {phases}"
    );
    assert_eq!(report["rto"]["met"], true);
    assert_eq!(report["rpo"]["met"], true);
    assert_eq!(report["rpo"]["backups_in_window"], 1);

    let id = report["id"].as_str().unwrap();
    for ext in ["json", "md", "html"] {
        let stored = reports_dir(&fx).join(format!("{id}.{ext}"));
        assert!(stored.is_file(), "{} missing", stored.display());
        assert!(
            copies.join(format!("app-{id}.{ext}")).is_file(),
            "copy of {ext} missing"
        );
    }
    let html = std::fs::read_to_string(reports_dir(&fx).join(format!("{id}.html"))).unwrap();
    assert!(html.contains("PASS") && html.contains("<svg"), "{html}");
    // The ephemeral cluster and the spool file are gone.
    let left: Vec<_> = std::fs::read_dir(work.path()).unwrap().flatten().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn staging_drill_cleans_up_its_scratch_database_and_refuses_the_source() {
    let work = drill_work_dir();
    let Some(staging) = PgCluster::start() else {
        return;
    };
    let settings = format!("target = \"{}\"", staging.url("postgres"));
    let Some(fx) = fixture(&settings, work.path(), CHECKS) else {
        return;
    };
    let before = staging.databases();
    let (out, report) = restore_test(&fx, &[]);
    assert_eq!(out.status.code(), Some(0), "{}\n{report:#}", text(&out));
    assert_eq!(report["target"]["kind"], "staging");
    let db = report["target"]["database"].as_str().unwrap();
    assert!(db.starts_with("pgvault_drill_"), "{db}");
    assert_eq!(
        staging.databases(),
        before,
        "the drill left a database behind"
    );

    // --keep leaves the restored database for inspection.
    let (out, report) = restore_test(&fx, &["--keep"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let kept = report["target"]["database"].as_str().unwrap();
    assert_eq!(staging.psql(kept, "select count(*) from orders"), "2000");

    // The source server is refused as a staging target, and left untouched.
    let own = std::fs::read_to_string(&fx.policy)
        .unwrap()
        .replace(&staging.url("postgres"), &fx.source.url("postgres"));
    std::fs::write(&fx.policy, own).unwrap();
    let source_before = fx.source.databases();
    let (out, report) = restore_test(&fx, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(phase(&report, "setup")["status"], "failed");
    assert!(
        phase(&report, "setup")["detail"]
            .as_str()
            .unwrap()
            .contains("is the policy's source server"),
        "{report:#}"
    );
    assert_eq!(phase(&report, "restore")["status"], "not_reached");
    assert_eq!(fx.source.databases(), source_before);
}

#[test]
fn failing_sql_check_fails_the_drill_and_names_the_check() {
    let work = drill_work_dir();
    let checks = format!(
        "{CHECKS}[[restore_test.checks]]\nname = \"exactly 999 customers\"\nsql = \"select count(*) from customers\"\nexpect = \"= 999\"\n"
    );
    let Some(fx) = fixture("pick = \"random\"\nwithin = \"7d\"", work.path(), &checks) else {
        return;
    };
    let (out, report) = restore_test(&fx, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(report["verdict"], "FAIL");
    assert_eq!(report["backup"]["picked"], "random within 7d");
    let failed = check(&report, "exactly 999 customers");
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["actual"], "200");
    assert_eq!(check(&report, "recent orders exist")["status"], "passed");
    let failures = report["failures"].to_string();
    assert!(failures.contains("exactly 999 customers"), "{failures}");
    assert_eq!(phase(&report, "checks")["status"], "failed");
    // The human summary names it too.
    let mut cmd = pgvault(None);
    cmd.args(["restore-test", "--policy"])
        .arg(&fx.policy)
        .arg("--identity")
        .arg(&fx.key.identity);
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("FAILED exactly 999 customers: expected = 999, got 200"),
        "{}",
        text(&out)
    );
}

#[test]
fn impossible_rto_objective_fails_with_the_measured_figure() {
    let work = drill_work_dir();
    let Some(fx) = fixture("rto_objective = \"0s\"", work.path(), CHECKS) else {
        return;
    };
    let (out, report) = restore_test(&fx, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(report["verdict"], "FAIL");
    assert_eq!(report["rto"]["met"], false);
    let measured = report["rto"]["measured_seconds"].as_f64().unwrap();
    assert!(measured > 0.0);
    let failures: Vec<String> = report["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].starts_with("RTO ")
            && failures[0].contains(&format!("({measured:.2}s) exceeds the objective")),
        "{failures:?}"
    );
    // Every check still passed: only the objective failed.
    assert!(report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["status"] == "passed"));
}

#[test]
fn corrupted_backup_fails_at_verification_without_restoring() {
    let work = drill_work_dir();
    let Some(fx) = fixture("", work.path(), CHECKS) else {
        return;
    };
    let backups = fx.repo.join("app").join("backups");
    let id = std::fs::read_dir(&backups)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let dump = id.join("dump.pgdump.zst.age");
    let mut bytes = std::fs::read(&dump).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&dump, bytes).unwrap();

    let (out, report) = restore_test(&fx, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(report["verdict"], "FAIL");
    assert_eq!(phase(&report, "verify")["status"], "failed");
    assert_eq!(phase(&report, "restore")["status"], "not_reached");
    assert_eq!(phase(&report, "checks")["status"], "not_reached");
    assert_eq!(phase(&report, "cleanup")["status"], "passed");
    assert_eq!(
        check(&report, "stream digests and age authentication")["status"],
        "failed"
    );
    assert!(report["rto"]["measured_seconds"].is_null());
    assert!(
        report["failures"][0]
            .as_str()
            .unwrap()
            .starts_with("verify: "),
        "{report:#}"
    );
    let left: Vec<_> = std::fs::read_dir(work.path()).unwrap().flatten().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn tampering_with_an_older_report_breaks_the_chain_and_names_it() {
    let work = drill_work_dir();
    let Some(fx) = fixture("", work.path(), CHECKS) else {
        return;
    };
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (out, report) = restore_test(&fx, &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        ids.push(report["id"].as_str().unwrap().to_string());
    }
    let (_, last) = restore_test(&fx, &[]);
    // Each report links to the one before and carries the trend of all earlier ones.
    assert_eq!(last["previous"]["id"], ids[2].as_str());
    assert_eq!(last["history"].as_array().unwrap().len(), 3);
    ids.push(last["id"].as_str().unwrap().to_string());

    let verify = |fx: &Fixture| {
        let mut cmd = pgvault(None);
        cmd.args(["reports", "verify", "--policy"]).arg(&fx.policy);
        run(cmd)
    };
    let out = verify(&fx);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("report chain intact: 4 report(s)"),
        "{}",
        text(&out)
    );

    let mut list = pgvault(None);
    list.args(["reports", "list", "--json", "--policy"])
        .arg(&fx.policy);
    let listed: Value = serde_json::from_str(&run_ok(list)).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 4);
    let mut show = pgvault(None);
    show.args(["reports", "show", "--policy"])
        .arg(&fx.policy)
        .arg(&ids[1]);
    assert!(run_ok(show).contains(&ids[1]));

    // Turn an old FAIL into a PASS... or here, a PASS into a FAIL: any edit is caught.
    let older = reports_dir(&fx).join(format!("{}.json", ids[1]));
    let edited = std::fs::read_to_string(&older)
        .unwrap()
        .replacen("\"PASS\"", "\"FAIL\"", 1);
    std::fs::write(&older, edited).unwrap();
    let out = verify(&fx);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains(&format!("FAIL  {}: report {} was altered", ids[2], ids[1])),
        "{said}"
    );

    // Deleting a report is caught too, by the report after it.
    std::fs::remove_file(reports_dir(&fx).join(format!("{}.json", ids[0]))).unwrap();
    let said = text(&verify(&fx));
    assert!(
        said.contains(&format!("the report before it, {}, is missing", ids[0])),
        "{said}"
    );
}

#[test]
fn drill_reports_live_in_an_s3_repository_too() {
    let Some(server) = pgvault_integration::S3Server::from_env() else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (bucket, prefix) = runtime.block_on(server.fresh_location());
    let work = drill_work_dir();
    let Some(source) = PgCluster::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let key = pgvault_integration::keygen(dir.path(), "ops");
    source.psql("postgres", "create database app");
    source.psql_script("app", DATA);
    let policy = pgvault_integration::write_policy(
        dir.path(),
        "app",
        &source.url("app"),
        &pgvault_integration::RepoSpec::S3 {
            server: &server,
            bucket: &bucket,
            prefix: &prefix,
        },
        &key.recipient,
        &format!(
            "[restore_test]\nwork_dir = \"{}\"\n{CHECKS}",
            work.path().display()
        ),
    );
    let cli = |args: &[&str]| {
        let mut cmd = pgvault(Some(&server));
        cmd.args(args).arg("--policy").arg(&policy);
        cmd
    };
    run_ok(cli(&["backup"]));
    for _ in 0..2 {
        let mut drill = cli(&["restore-test"]);
        drill.arg("--identity").arg(&key.identity);
        let out = run(drill);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let verify = run(cli(&["reports", "verify"]));
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    assert!(
        text(&verify).contains("report chain intact: 2 report(s)"),
        "{}",
        text(&verify)
    );
    let keys = runtime.block_on(server.list_keys(&bucket, &prefix));
    let reports: Vec<_> = keys.iter().filter(|k| k.contains("app/reports/")).collect();
    assert_eq!(reports.len(), 6, "{keys:?}");
}

#[test]
fn the_dr_plan_shows_objectives_against_the_latest_drill_and_names_what_is_missing() {
    let work = drill_work_dir();
    let Some(fx) = fixture("rto_objective = \"1h\"", work.path(), CHECKS) else {
        return;
    };
    // Before any drill: nothing measured, nothing verified.
    let mut plan = pgvault(None);
    plan.args(["dr-plan", "--policy"]).arg(&fx.policy);
    let before = run_ok(plan);
    assert!(
        before.contains("| app | 1h 00m | not measured | not measured |"),
        "{before}"
    );
    assert!(before.contains("| never | none |"), "{before}");
    assert!(before.contains("Attention"), "{before}");

    let (out, report) = restore_test(&fx, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let measured = report["rto"]["measured_seconds"].as_f64().unwrap();
    let file = work.path().join("plan.html");
    let mut plan = pgvault(None);
    plan.args(["dr-plan", "--format", "html", "--output"])
        .arg(&file)
        .arg("--policy")
        .arg(&fx.policy);
    run_ok(plan);
    let html = std::fs::read_to_string(&file).unwrap();
    assert!(html.contains("<td class=\"met\">met</td>"), "{html}");
    assert!(
        html.contains(&pgvault_core::drill::report::human_seconds(measured)),
        "the measured RTO is in the plan: {html}"
    );
    assert!(html.contains("docs/runbooks/restore-to-a-point-in-time.md"));
    // Per phase of the latest drill.
    assert!(html.contains("<td>restore</td>"), "{html}");
}
