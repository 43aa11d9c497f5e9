//! Asynchronous archiving (`[archive] mode = "async"`) against a real PostgreSQL and
//! Garage: `archive_command` hands segments to a local spool and a background pusher
//! stores them.
//!
//! - `kill -9` of the pusher at random points, 20 times, while the server switches
//!   segments: every segment PostgreSQL marked archived reaches the repository, and WAL
//!   is continuous from the base backup to the last one.
//! - With the object store down and a spool of two segments, `queue_full = "drop"`
//!   acknowledges the next segments without storing them; once the store is back the
//!   gap is recorded, `check` exits 2 naming it, and point-in-time plans refuse to cross
//!   it while a target before it still plans.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use pgvault_integration::fault_proxy::{FaultConfig, FaultProxy};
use pgvault_integration::{
    keygen, pgvault, run, run_ok, text, wait_until, write_policy, PgCluster, RepoSpec, S3Server,
    TestKey,
};
use rand::Rng;

/// A source archiving asynchronously into a fresh S3 prefix (through a fault proxy).
struct AsyncArchiving {
    server: S3Server,
    proxy: FaultProxy,
    source: PgCluster,
    work: tempfile::TempDir,
    key: TestKey,
    policy: PathBuf,
    spool: PathBuf,
}

impl AsyncArchiving {
    fn start(archive: &str) -> Option<AsyncArchiving> {
        let server = S3Server::from_env()?;
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (bucket, prefix) = runtime.block_on(server.fresh_location());
        let source = PgCluster::start()?;
        let proxy =
            FaultProxy::start_in_background(&server.endpoint, FaultConfig::new(1, 0.0, &[]))
                .unwrap();
        let work = pgvault_integration::server_reachable_tempdir("pgvault-test-async-");
        let key = keygen(work.path(), "ops");
        let spool = work.path().join("spool");
        let mut via_proxy = server.clone();
        via_proxy.endpoint = proxy.endpoint();
        let policy = write_policy(
            work.path(),
            "app",
            &source.url("postgres"),
            &RepoSpec::S3 {
                server: &via_proxy,
                bucket: &bucket,
                prefix: &prefix,
            },
            &key.recipient,
            &format!(
                "[archive]\nmode = \"async\"\nspool_dir = \"{}\"\n{archive}",
                spool.display()
            ),
        );
        // Requests fail fast while the store is down, so the pusher's own retries show.
        let text = std::fs::read_to_string(&policy).unwrap();
        std::fs::write(
            &policy,
            text.replace(
                "[repository]\n",
                "[repository]\nconnect_timeout = \"2s\"\nretry_time = \"5s\"\n",
            ),
        )
        .unwrap();
        std::fs::create_dir_all(&spool).unwrap();
        pgvault_integration::give_to_server_user(true, &[work.path()]);
        let archive_command = pgvault_integration::s3_archive_command(&server, &policy);
        source.configure_and_restart(&[
            ("wal_level", "replica"),
            ("archive_mode", "on"),
            ("archive_command", &archive_command),
        ]);
        source.psql(
            "postgres",
            "create table ev (id serial primary key, at timestamptz default clock_timestamp(), note text)",
        );
        Some(AsyncArchiving {
            server,
            proxy,
            source,
            work,
            key,
            policy,
            spool,
        })
    }

    fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = pgvault(Some(&self.server));
        cmd.args(args).arg("--policy").arg(&self.policy);
        cmd
    }

    /// Write a row, close the segment, and wait until PostgreSQL has archived it (for
    /// async mode: handed it to the spool). Returns the segment's name.
    fn switch_and_archive(&self, note: &str) -> String {
        self.source.psql(
            "postgres",
            &format!("insert into ev (note) values ('{note}')"),
        );
        let segment = self
            .source
            .psql("postgres", "select pg_walfile_name(pg_switch_wal())");
        wait_until("PostgreSQL to archive the switched segment", 60, || {
            self.source.psql(
                "postgres",
                &format!("select coalesce(last_archived_wal >= '{segment}', false) from pg_stat_archiver"),
            ) == "t"
        });
        segment
    }

    fn files_in(&self, sub: &str) -> Vec<String> {
        std::fs::read_dir(self.spool.join(sub))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Kill every pusher of this policy with SIGKILL; returns how many there were.
    fn kill_pushers(&self) -> usize {
        let pattern = format!("wal-pusher --policy {}", self.policy.display());
        let found = Command::new("pgrep")
            .args(["-f", &pattern])
            .output()
            .unwrap();
        let pids: Vec<String> = String::from_utf8_lossy(&found.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        for pid in &pids {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
        pids.len()
    }
}

impl Drop for AsyncArchiving {
    fn drop(&mut self) {
        self.kill_pushers();
    }
}

#[test]
fn killing_the_pusher_at_random_points_loses_nothing_postgresql_marked_archived() {
    let Some(a) = AsyncArchiving::start("push_parallel = 4\n") else {
        return;
    };
    run_ok(a.cli(&["backup", "--kind", "physical"]));
    let mut rng = rand::thread_rng();
    let mut killed = 0;
    let mut last = String::new();
    for run in 0..20 {
        for i in 0..3 {
            last = a.switch_and_archive(&format!("run {run} segment {i}"));
        }
        // A random moment in the pusher's work: right away, mid-upload, or later.
        std::thread::sleep(std::time::Duration::from_millis(rng.gen_range(0..250)));
        killed += a.kill_pushers();
    }
    assert!(killed >= 5, "the pusher was killed only {killed} times");
    // The next segment's archive_command starts a pusher, which stores the backlog.
    last = a.switch_and_archive("after the kills").max(last);
    wait_until("the spool to drain", 120, || a.files_in("queue").is_empty());
    let out = run(a.cli(&["check"]));
    let report = text(&out);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(report.contains(&format!("to {last}")), "{report}");
    assert!(report.contains("WAL continuous"), "{report}");
}

#[test]
fn drop_mode_records_the_gap_and_plans_refuse_to_cross_it() {
    // Three segments: a base backup's burst fits, so nothing is dropped before the outage.
    let Some(a) = AsyncArchiving::start("queue_max = \"48MiB\"\nqueue_full = \"drop\"\n") else {
        return;
    };
    run_ok(a.cli(&["backup", "--kind", "physical"]));
    wait_until("the spool to drain", 60, || a.files_in("queue").is_empty());
    assert!(
        a.files_in("dropped").is_empty(),
        "dropped before the outage"
    );
    a.switch_and_archive("before");
    wait_until("the spool to drain", 60, || a.files_in("queue").is_empty());
    let before = a.source.psql("postgres", "select clock_timestamp()");
    a.switch_and_archive("still before");
    wait_until("the spool to drain", 60, || a.files_in("queue").is_empty());

    a.proxy.set_down(true);
    let mut switched = Vec::new();
    for i in 0..5 {
        switched.push(a.switch_and_archive(&format!("during the outage {i}")));
    }
    // Three segments fit in the spool; the two after them were dropped.
    let mut dropped = a.files_in("dropped");
    dropped.sort();
    assert_eq!(
        dropped,
        switched[3..].to_vec(),
        "queued: {:?}",
        a.files_in("queue")
    );

    a.proxy.set_down(false);
    wait_until(
        "the pusher to drain the spool and record the gap",
        120,
        || a.files_in("queue").is_empty() && a.files_in("dropped").is_empty(),
    );
    let out = run(a.cli(&["check"]));
    let report = text(&out);
    assert_eq!(out.status.code(), Some(2), "{report}");
    assert!(
        report.contains(&format!(
            "GAP   WAL {} .. {} (2 segment(s)) dropped",
            switched[3], switched[4]
        )),
        "{report}"
    );
    let identity = a.key.identity.to_str().unwrap();
    let pgdata = a.work.path().join("restored");
    // With nothing archived after the gap, "latest" would be the WAL before it.
    let out = run(a.cli(&[
        "restore",
        "--identity",
        identity,
        "--pgdata",
        pgdata.to_str().unwrap(),
        "--to-latest",
        "--dry-run",
    ]));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "before a WAL gap: WAL {} .. {}",
            switched[3], switched[4]
        )),
        "{}",
        text(&out)
    );
    // Archiving goes on after the outage; replay to its end would cross the gap.
    let after = a.switch_and_archive("after the outage");
    wait_until("the spool to drain", 60, || a.files_in("queue").is_empty());
    assert!(after > switched[4]);
    let out = run(a.cli(&["check"]));
    let report = text(&out);
    assert_eq!(out.status.code(), Some(2), "{report}");
    assert!(
        report.contains(&format!(
            "GAP   WAL {} .. {} (2 segment(s)) dropped",
            switched[3], switched[4]
        )),
        "{report}"
    );

    let out = run(a.cli(&[
        "restore",
        "--identity",
        identity,
        "--pgdata",
        pgdata.to_str().unwrap(),
        "--to-latest",
        "--dry-run",
    ]));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "would cross a WAL gap: WAL {} .. {}",
            switched[3], switched[4]
        )),
        "{}",
        text(&out)
    );
    let out = run(a.cli(&[
        "restore",
        "--identity",
        identity,
        "--pgdata",
        pgdata.to_str().unwrap(),
        "--to-time",
        &before,
        "--dry-run",
    ]));
    assert!(out.status.success(), "{}", text(&out));
}
