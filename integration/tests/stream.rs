//! Streaming mode (`[archive] mode = "stream"`): the agent streams WAL over a
//! replication slot with `pg_receivewal` and stores completed segments and the growing
//! one, with no `archive_command` at all. A crash of the source loses only the last
//! seconds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use chrono::{DateTime, Utc};
use pgvault_integration::cluster::PgCluster;
use pgvault_integration::{
    agent_bin, free_port, keygen, pgvault, run, run_ok, text, wait_until, S3Server, TestKey,
};

/// A source with archiving off, and an agent streaming it into a fresh S3 prefix.
struct Streaming {
    server: S3Server,
    source: PgCluster,
    work: tempfile::TempDir,
    key: TestKey,
    policy: PathBuf,
    spool: PathBuf,
    agent: Option<Child>,
}

impl Streaming {
    fn start() -> Option<Streaming> {
        Self::start_with("")
    }

    fn start_with(extra_policy: &str) -> Option<Streaming> {
        let server = S3Server::from_env()?;
        let source = PgCluster::start()?;
        let work = pgvault_integration::server_reachable_tempdir("pgvault-test-stream-");
        let key = keygen(work.path(), "ops");
        let spool = work.path().join("spool");
        let (_, _, policy) = pgvault_integration::s3_policy(
            &server,
            work.path(),
            &source.url("postgres"),
            &key.recipient,
            &format!(
                "[archive]\nmode = \"stream\"\nspool_dir = \"{}\"\npartial_interval = \"1s\"\n[schedule]\nbackup = \"0 3 * * *\"\n{extra_policy}",
                spool.display()
            ),
        );
        pgvault_integration::give_to_server_user(false, &[&key.identity, &policy]);
        source.configure_and_restart(&[
            ("max_slot_wal_keep_size", "1GB"),
            ("track_commit_timestamp", "on"),
        ]);
        source.psql(
            "postgres",
            "create table ev (id serial primary key, note text)",
        );
        let mut streaming = Streaming {
            server,
            source,
            work,
            key,
            policy,
            spool,
            agent: None,
        };
        streaming.start_agent();
        Some(streaming)
    }

    fn start_agent(&mut self) {
        let mut cmd = Command::new(agent_bin());
        for (name, value) in pgvault(Some(&self.server)).get_envs() {
            if let Some(value) = value {
                cmd.env(name, value);
            }
        }
        let child = cmd
            .arg("--policy")
            .arg(&self.policy)
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.agent = Some(child);
        wait_until("the agent's WAL stream to connect", 60, || {
            self.source.psql(
                "postgres",
                "select count(*) from pg_stat_replication where application_name = 'pgvault_stream_pgvault_app'",
            ) == "1"
        });
    }

    fn stop_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = pgvault(Some(&self.server));
        cmd.args(args).arg("--policy").arg(&self.policy);
        cmd
    }

    fn status(&self) -> serde_json::Value {
        std::fs::read(self.spool.join("stream-status.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null)
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        self.stop_agent();
    }
}

fn time_field(status: &serde_json::Value, field: &str) -> Option<DateTime<Utc>> {
    status[field].as_str()?.parse().ok()
}

fn restore_ids(s: &Streaming, dir: &Path, target: &str) -> Vec<i64> {
    let port = free_port().to_string();
    let out = run(s.cli(&[
        "restore",
        "--identity",
        s.key.identity.to_str().unwrap(),
        "--pgdata",
        dir.to_str().unwrap(),
        "--to-time",
        target,
        "--start",
        "--port",
        &port,
    ]));
    assert!(out.status.success(), "restore failed: {}", text(&out));
    assert!(
        text(&out).contains("growing segment of the WAL stream"),
        "the plan names the streamed tail: {}",
        text(&out)
    );
    let ids = s
        .source
        .psql_on_port(
            port.parse().unwrap(),
            "postgres",
            "select id from ev order by id",
        )
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    s.source.stop_data_dir(dir);
    ids
}

#[test]
fn pitr_to_five_seconds_before_a_crash_of_the_source_restores_every_commit_before_it() {
    let Some(mut s) = Streaming::start() else {
        return;
    };
    // A base backup in streaming mode waits until its WAL is stored.
    run_ok(s.cli(&["backup", "--kind", "physical"]));
    let check = run(s.cli(&["check"]));
    assert!(
        check.status.success() && text(&check).contains("WAL stream (slot pgvault_app)"),
        "check of a healthy stream: {}",
        text(&check)
    );

    // One commit every 50 ms, for longer than the test waits.
    let mut writer = Command::new(s.source.tool("psql"));
    writer
        .args(["-X", "-q", "-d", &s.source.url("postgres"), "-c"])
        .arg("do $$ begin for i in 1..1200 loop insert into ev (note) values ('n' || i); commit; perform pg_sleep(0.05); end loop; end $$")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut writer = writer.spawn().unwrap();
    wait_until("20 seconds of commits", 90, || {
        s.source.psql(
            "postgres",
            "select coalesce(max(pg_xact_commit_timestamp(xmin)) - min(pg_xact_commit_timestamp(xmin)) > interval '20 seconds', false) from ev",
        ) == "t"
    });
    // What was committed, and when, just before the crash.
    let rows = s.source.psql(
        "postgres",
        "select id || ' ' || to_char(pg_xact_commit_timestamp(xmin) at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') from ev order by id",
    );
    let crash_at: DateTime<Utc> = s
        .source
        .psql(
            "postgres",
            "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
        )
        .parse()
        .unwrap();
    s.source.kill_postmaster();
    let _ = writer.kill();
    let _ = writer.wait();

    let target = crash_at - chrono::Duration::seconds(5);
    let expected: Vec<i64> = rows
        .lines()
        .filter_map(|l| {
            let (id, at) = l.split_once(' ')?;
            let at = chrono::NaiveDateTime::parse_from_str(at, "%Y-%m-%d %H:%M:%S%.f")
                .ok()?
                .and_utc();
            (at <= target).then(|| id.parse().unwrap())
        })
        .collect();
    assert!(
        expected.len() > 100,
        "the writer committed {} rows before the target",
        expected.len()
    );

    // The receiver stores everything pg_receivewal wrote once the stream breaks.
    wait_until("the receiver to store the stream's last bytes", 60, || {
        time_field(&s.status(), "stored_after_exit_at").is_some_and(|t| t > crash_at)
    });
    s.stop_agent();

    let dir = s.work.path().join("restored");
    let ids = restore_ids(
        &s,
        &dir,
        &target.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
    );
    assert_eq!(
        ids.len(),
        expected.len(),
        "restored {} rows, {} were committed by {target}",
        ids.len(),
        expected.len()
    );
    assert_eq!(ids, expected);
}

#[test]
fn a_lost_slot_is_named_by_check_recorded_as_a_gap_and_plans_refuse_to_cross_it() {
    let Some(mut s) = Streaming::start() else {
        return;
    };
    s.source
        .configure_and_restart(&[("max_slot_wal_keep_size", "32MB")]);
    wait_until("the stream to reconnect after the restart", 60, || {
        s.source.psql(
            "postgres",
            "select count(*) from pg_stat_replication where application_name = 'pgvault_stream_pgvault_app'",
        ) == "1"
    });
    run_ok(s.cli(&["backup", "--kind", "physical"]));
    s.stop_agent();
    // With the stream stopped, the source writes past the slot's bound and removes the
    // WAL the slot held.
    wait_until("the slot to be lost", 120, || {
        s.source.psql(
            "postgres",
            "insert into ev (note) select 'x' from generate_series(1, 1000); select pg_switch_wal(); checkpoint",
        );
        s.source.psql(
            "postgres",
            "select wal_status from pg_replication_slots where slot_name = 'pgvault_app'",
        ) == "lost"
    });
    let check = run(s.cli(&["check"]));
    assert_eq!(check.status.code(), Some(2), "{}", text(&check));
    assert!(
        text(&check).contains("replication slot pgvault_app is LOST"),
        "{}",
        text(&check)
    );

    // The agent recreates the slot, finds the WAL gone, records the gap and streams on
    // from the new slot's start.
    s.start_agent();
    wait_until("check to name the recorded gap", 60, || {
        text(&run(s.cli(&["check"]))).contains("GAP   WAL")
    });
    let check = run(s.cli(&["check"]));
    assert_eq!(check.status.code(), Some(2), "{}", text(&check));
    assert!(
        text(&check).contains("slot pgvault_app was lost"),
        "the record says why: {}",
        text(&check)
    );
    let dir = s.work.path().join("restored");
    let plan = run(s.cli(&[
        "restore",
        "--identity",
        s.key.identity.to_str().unwrap(),
        "--pgdata",
        dir.to_str().unwrap(),
        "--to-latest",
        "--dry-run",
    ]));
    assert!(!plan.status.success(), "{}", text(&plan));
    assert!(
        text(&plan).contains("WAL gap") && text(&plan).contains("slot pgvault_app was lost"),
        "the plan refuses by naming the gap: {}",
        text(&plan)
    );
}

#[test]
fn a_point_in_time_drill_of_a_streaming_policy_passes_and_measures_the_stream_lag_as_rpo() {
    let drill_dir = pgvault_integration::server_reachable_tempdir("pgvault-test-drill-");
    let Some(s) = Streaming::start_with(&format!(
        "[restore_test]\nkind = \"pitr\"\nrto_objective = \"10m\"\nrpo_objective = \"1m\"\nwork_dir = \"{}\"\n",
        drill_dir.path().display()
    )) else {
        return;
    };
    run_ok(s.cli(&["backup", "--kind", "physical"]));
    s.source.psql(
        "postgres",
        "insert into ev (note) select 'row' from generate_series(1, 3)",
    );
    let out = run(s.cli(&[
        "restore-test",
        "--json",
        "--identity",
        s.key.identity.to_str().unwrap(),
    ]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no report ({e}): {}", text(&out)));
    assert_eq!(out.status.code(), Some(0), "{}\n{report:#}", text(&out));
    assert_eq!(report["verdict"], "PASS", "{report:#}");
    // Archiving is off: the only RPO there is comes from the stream's lag.
    let rpo = report["rpo"]["measured_seconds"].as_f64();
    assert!(
        rpo.is_some_and(|r| r < 60.0),
        "the stream's lag is the drill's RPO: {report:#}"
    );
}
