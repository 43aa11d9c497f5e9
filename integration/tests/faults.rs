//! The S3 contract under faults: pgvault talks to Garage through the fault-injection
//! proxy (`pgvault_integration::fault_proxy`), which resets connections mid-body,
//! answers 503 and 500, truncates bodies, stalls and delays, chosen per request by a
//! seeded generator. Each run must either succeed with a backup that deep-verifies, or
//! fail cleanly: no manifest, no multipart upload left open, no leftover object, a
//! one-line reason. Open uploads and objects are counted on Garage directly, right after
//! each run, so a leak cannot hide behind Garage's clean-up of superseded uploads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use pgvault_integration::fault_proxy::{FaultConfig, FaultMode, FaultProxy};
use pgvault_integration::{
    keygen, pgvault, run, text, wait_until, write_policy, PgCluster, RepoSpec, S3Server, TestKey,
};

/// Short timeouts, so that stalls resolve in seconds; retries as in production.
const FAST_TIMEOUTS: &str =
    "part_size = \"5MiB\"\nconnect_timeout = \"2s\"\nfirst_byte_timeout = \"3s\"\nstall_timeout = \"3s\"\nretry_time = \"60s\"\n";

/// One test's world: a source with ~12 MiB of incompressible rows, a fresh bucket on
/// Garage, a proxy in front of it, and a policy whose repository goes through the proxy.
struct Faulty {
    server: S3Server,
    bucket: String,
    prefix: String,
    proxy: FaultProxy,
    source: PgCluster,
    work: tempfile::TempDir,
    key: TestKey,
    policy: PathBuf,
    runtime: tokio::runtime::Runtime,
}

impl Faulty {
    /// `rows` rows of 1 KiB random bytes; faults as `config` says; `repository` lines
    /// added to the policy's `[repository]`.
    fn start(rows: u32, config: FaultConfig, repository: &str) -> Option<Faulty> {
        let server = S3Server::from_env()?;
        let source = PgCluster::start()?;
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (bucket, prefix) = runtime.block_on(server.fresh_location());
        let proxy = FaultProxy::start_in_background(&server.endpoint, config).unwrap();
        source.psql("postgres", "create database app");
        source.psql_script(
            "app",
            &format!(
                "create extension pgcrypto;\n\
                 create table blob (id int primary key, b bytea);\n\
                 insert into blob select g, gen_random_bytes(1024) from generate_series(1, {rows}) g;\n\
                 create table small (id serial primary key, note text);\n\
                 insert into small (note) values ('a'), ('b'), ('c');\n"
            ),
        );
        let work = tempfile::tempdir().unwrap();
        let key = keygen(work.path(), "ops");
        let mut via_proxy = server.clone();
        via_proxy.endpoint = proxy.endpoint();
        let policy = write_policy(
            work.path(),
            "app",
            &source.url("app"),
            &RepoSpec::S3 {
                server: &via_proxy,
                bucket: &bucket,
                prefix: &prefix,
            },
            &key.recipient,
            "",
        );
        let text = std::fs::read_to_string(&policy).unwrap();
        std::fs::write(
            &policy,
            text.replace("[repository]\n", &format!("[repository]\n{repository}")),
        )
        .unwrap();
        Some(Faulty {
            server,
            bucket,
            prefix,
            proxy,
            source,
            work,
            key,
            policy,
            runtime,
        })
    }

    fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = pgvault(Some(&self.server));
        cmd.args(args).arg("--policy").arg(&self.policy);
        cmd
    }

    fn identity(&self) -> &str {
        self.key.identity.to_str().unwrap()
    }

    /// Open multipart uploads and object keys under the test's prefix, read from Garage
    /// itself (not through the proxy).
    fn open_uploads(&self) -> usize {
        self.runtime.block_on(
            self.server
                .open_multipart_uploads(&self.bucket, &self.prefix),
        )
    }

    fn keys(&self) -> Vec<String> {
        self.runtime
            .block_on(self.server.list_keys(&self.bucket, &self.prefix))
    }

    fn manifests(&self) -> usize {
        self.keys()
            .iter()
            .filter(|k| k.ends_with("/manifest.json"))
            .count()
    }

    /// Restore the latest backup into `db` on the source server and compare it with `app`.
    fn restore_and_compare(&self, db: &str) {
        let target = self.source.url(db);
        let out = run(self.cli(&[
            "restore",
            "--identity",
            self.identity(),
            "--target",
            &target,
        ]));
        assert!(
            out.status.success(),
            "restore failed under faults ({}): {}",
            self.proxy.stats(),
            text(&out)
        );
        pgvault_integration::assert_same_text(
            &self.source.dump_text("app"),
            &self.source.dump_text(db),
            "source and restored dumps",
        );
    }
}

/// The one stderr line of a failed command, checked to carry no library Debug output.
fn one_line_error(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("pgvault:"))
        .collect();
    assert_eq!(lines.len(), 1, "one error line expected: {stderr}");
    let line = lines[0].to_string();
    for debug in ["{ ", "Error {", "kind:", "source:", "DispatchFailure"] {
        assert!(!line.contains(debug), "Debug output in the error: {line}");
    }
    line
}

#[test]
fn backup_verify_and_restore_hold_through_every_fault_mode() {
    let modes = [
        FaultMode::Reset,
        FaultMode::SlowDown,
        FaultMode::InternalError,
        FaultMode::Truncate,
        FaultMode::Stall,
        FaultMode::StallBody,
        FaultMode::Latency,
    ];
    let Some(f) = Faulty::start(12_000, FaultConfig::new(9, 0.3, &modes), FAST_TIMEOUTS) else {
        return;
    };
    let backup = run(f.cli(&["backup"]));
    assert!(
        backup.status.success(),
        "backup failed under faults ({}): {}",
        f.proxy.stats(),
        text(&backup)
    );
    assert_eq!(f.manifests(), 1);
    assert_eq!(f.open_uploads(), 0, "a multipart upload was left open");
    let verify = run(f.cli(&["verify", "--identity", f.identity()]));
    assert_eq!(
        verify.status.code(),
        Some(0),
        "deep verify under faults ({}): {}",
        f.proxy.stats(),
        text(&verify)
    );
    f.restore_and_compare("restored");
    let stats = f.proxy.stats();
    let kinds = modes.iter().filter(|m| stats.count(**m) > 0).count();
    assert!(
        stats.total_faults() >= 6 && kinds >= 3,
        "too few faults to mean anything: {stats}"
    );
}

#[test]
fn downloads_resume_after_resets_truncations_and_stalled_bodies() {
    let config = FaultConfig::new(
        21,
        0.35,
        &[FaultMode::Reset, FaultMode::Truncate, FaultMode::StallBody],
    )
    .with_methods(&["GET"]);
    let Some(f) = Faulty::start(16_000, config, FAST_TIMEOUTS) else {
        return;
    };
    // Take the backup without faults, then break downloads only.
    f.proxy.set_rate(0.0);
    assert!(run(f.cli(&["backup"])).status.success());
    f.proxy.set_rate(0.35);
    f.restore_and_compare("restored");
    let stats = f.proxy.stats();
    assert!(
        stats.count(FaultMode::Reset) + stats.count(FaultMode::Truncate) > 0,
        "no body was cut: {stats}"
    );
}

#[test]
fn a_backup_that_cannot_store_its_data_fails_cleanly() {
    // Every upload of data fails; listing, deleting and aborting still work, so the
    // failed run can and must clean up after itself.
    let config = FaultConfig::new(3, 1.0, &[FaultMode::InternalError]).with_methods(&["PUT"]);
    let Some(f) = Faulty::start(8_000, config, &format!("{FAST_TIMEOUTS}max_attempts = 3\n"))
    else {
        return;
    };
    let out = run(f.cli(&["backup"]));
    assert!(!out.status.success(), "{}", text(&out));
    let line = one_line_error(&out);
    assert!(
        line.contains("S3 answered 500") && line.contains("InternalError"),
        "{line}"
    );
    assert!(line.contains(&format!("s3://{}/", f.bucket)), "{line}");
    assert_eq!(f.open_uploads(), 0, "a multipart upload was left open");
    assert!(f.keys().is_empty(), "objects left behind: {:?}", f.keys());
    let list = run(f.cli(&["list"]));
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "no backups");
}

/// A backup whose dump cannot be read: every read of it breaks off (reset), while
/// listing, the manifest and the small objects read fine.
fn unreadable_dump(seed: u64) -> Option<Faulty> {
    let config = FaultConfig::new(seed, 1.0, &[FaultMode::Reset])
        .with_methods(&["GET"])
        .with_paths(&["dump.pgdump"]);
    let f = Faulty::start(2_000, config, &format!("{FAST_TIMEOUTS}max_attempts = 2\n"))?;
    assert!(run(f.cli(&["backup"])).status.success());
    Some(f)
}

#[test]
fn verify_calls_an_unreadable_backup_unknown_not_corrupt() {
    let Some(f) = unreadable_dump(5) else {
        return;
    };
    for deep in [false, true] {
        let mut args = vec!["verify"];
        if deep {
            args.extend(["--identity", f.identity()]);
        }
        let out = run(f.cli(&args));
        let t = text(&out);
        assert_eq!(out.status.code(), Some(1), "{t}");
        assert!(t.contains("ERROR dump"), "{t}");
        assert!(t.contains("could not read"), "{t}");
        assert!(t.contains("verification INCOMPLETE"), "{t}");
        assert!(!t.contains("FAIL"), "{t}");
        assert!(t.contains("OK    globals"), "{t}");
    }
    assert!(f.proxy.stats().count(FaultMode::Reset) >= 4);
    // The same backup with the network healthy verifies: nothing was wrong with it.
    f.proxy.set_rate(0.0);
    let out = run(f.cli(&["verify", "--identity", f.identity()]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn wal_push_and_fetch_hold_through_faults() {
    let modes = [
        FaultMode::Reset,
        FaultMode::SlowDown,
        FaultMode::InternalError,
        FaultMode::Truncate,
        FaultMode::Stall,
    ];
    let Some(f) = Faulty::start(1, FaultConfig::new(13, 0.25, &modes), FAST_TIMEOUTS) else {
        return;
    };
    let wal = f.work.path().join("pg_wal");
    std::fs::create_dir(&wal).unwrap();
    let mut names = Vec::new();
    for n in 1..=6u32 {
        let name = format!("00000001000000000000{n:04X}");
        let data: Vec<u8> = (0..(1 << 20)).map(|_| rand::random::<u8>()).collect();
        std::fs::write(wal.join(&name), &data).unwrap();
        names.push((name, data));
    }
    for (name, _) in &names {
        let path = wal.join(name);
        let out = run(f.cli(&["wal-push", path.to_str().unwrap()]));
        assert!(
            out.status.success(),
            "wal-push of {name} under faults ({}): {}",
            f.proxy.stats(),
            text(&out)
        );
    }
    assert_eq!(f.open_uploads(), 0);
    let fetched_dir = f.work.path().join("fetched");
    std::fs::create_dir(&fetched_dir).unwrap();
    for (name, data) in &names {
        let dest = fetched_dir.join(name);
        let out = run(f.cli(&[
            "wal-fetch",
            "--prefetch",
            "0",
            "--identity",
            f.identity(),
            name,
            dest.to_str().unwrap(),
        ]));
        assert!(out.status.success(), "wal-fetch of {name}: {}", text(&out));
        assert!(std::fs::read(&dest).unwrap() == *data, "{name} differs");
    }
    assert!(f.proxy.stats().total_faults() > 0, "{}", f.proxy.stats());
}

#[test]
fn sigterm_during_a_stalled_upload_aborts_it_at_once() {
    // The dump's parts stall forever (well past the test): only cancellation can end
    // the run, and the open multipart upload must still be aborted.
    let config = FaultConfig::new(1, 1.0, &[FaultMode::Stall])
        .with_methods(&["PUT"])
        .with_paths(&["dump.pgdump"]);
    let Some(f) = Faulty::start(
        8_000,
        config,
        "part_size = \"5MiB\"\nfirst_byte_timeout = \"10m\"\nstall_timeout = \"10m\"\n",
    ) else {
        return;
    };
    let child = f
        .cli(&["backup"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = terminate_when_stalled(&f, child);
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(text(&out).contains("cancelled"), "{}", text(&out));
    assert_eq!(f.open_uploads(), 0, "the stalled upload was not aborted");
    assert_eq!(f.manifests(), 0);
    assert!(f.keys().is_empty(), "objects left behind: {:?}", f.keys());
}

/// Long stalls: only a signal can end a stalled request in these tests.
const NO_TIMEOUTS: &str = "first_byte_timeout = \"10m\"\nstall_timeout = \"10m\"\n";

/// Send SIGTERM to `child` once the proxy holds one of its requests stalled, and return
/// its output; it must exit on its own (the bound is a safety net, not a timing).
fn terminate_when_stalled(f: &Faulty, child: std::process::Child) -> Output {
    wait_until("a request to stall", 120, || {
        f.proxy.stats().count(FaultMode::Stall) >= 1
    });
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut child = child;
    wait_until("pgvault to stop after SIGTERM", 60, || {
        child.try_wait().unwrap().is_some()
    });
    child.wait_with_output().unwrap()
}

#[test]
fn sigterm_stops_a_stalled_deep_verify_without_a_verdict() {
    let config = FaultConfig::new(2, 0.0, &[FaultMode::Stall])
        .with_methods(&["GET"])
        .with_paths(&["dump.pgdump"]);
    let Some(f) = Faulty::start(2_000, config, NO_TIMEOUTS) else {
        return;
    };
    let out = run(f.cli(&["backup"]));
    assert!(out.status.success(), "{}", text(&out));
    f.proxy.set_rate(1.0);
    let child = f
        .cli(&["verify", "--identity", f.identity()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = terminate_when_stalled(&f, child);
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(!text(&out).contains("FAILED"), "{}", text(&out));
}

#[test]
fn sigterm_stops_a_stalled_wal_fetch_before_it_writes() {
    let config = FaultConfig::new(3, 0.0, &[FaultMode::Stall])
        .with_methods(&["GET"])
        .with_paths(&[".zst.age"]);
    let Some(f) = Faulty::start(1, config, NO_TIMEOUTS) else {
        return;
    };
    let name = "000000010000000000000001";
    let segment = f.work.path().join(name);
    std::fs::write(&segment, vec![7u8; 1 << 20]).unwrap();
    let out = run(f.cli(&["wal-push", segment.to_str().unwrap()]));
    assert!(out.status.success(), "{}", text(&out));
    f.proxy.set_rate(1.0);
    let dest = f.work.path().join("fetched");
    let child = f
        .cli(&[
            "wal-fetch",
            "--identity",
            f.identity(),
            name,
            dest.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = terminate_when_stalled(&f, child);
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(!dest.exists(), "a cancelled fetch wrote {}", dest.display());
}

#[test]
fn sigterm_stops_a_stalled_prune_and_a_rerun_finishes() {
    let config = FaultConfig::new(4, 0.0, &[FaultMode::Stall]).with_methods(&["DELETE"]);
    let Some(f) = Faulty::start(1, config, NO_TIMEOUTS) else {
        return;
    };
    let text_of = std::fs::read_to_string(&f.policy).unwrap();
    std::fs::write(&f.policy, format!("{text_of}[retention]\nkeep_last = 1\n")).unwrap();
    for _ in 0..2 {
        let out = run(f.cli(&["backup"]));
        assert!(out.status.success(), "{}", text(&out));
    }
    f.proxy.set_rate(1.0);
    let child = f
        .cli(&["prune"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = terminate_when_stalled(&f, child);
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    f.proxy.set_rate(0.0);
    let out = run(f.cli(&["prune"]));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(f.manifests(), 1);
    assert_eq!(f.open_uploads(), 0);
}

#[test]
fn wal_fetch_stops_recovery_when_it_cannot_read_and_ends_it_only_when_the_archive_ends() {
    let config = FaultConfig::new(5, 0.0, &[FaultMode::InternalError]).with_methods(&["GET"]);
    let Some(f) = Faulty::start(1, config, "max_attempts = 1\n") else {
        return;
    };
    let name = "000000010000000000000001";
    let segment = f.work.path().join(name);
    std::fs::write(&segment, vec![3u8; 1 << 20]).unwrap();
    let out = run(f.cli(&["wal-push", segment.to_str().unwrap()]));
    assert!(out.status.success(), "{}", text(&out));
    let fetch = |name: &str| {
        let dest = f.work.path().join(format!("fetched-{name}"));
        let out = run(f.cli(&[
            "wal-fetch",
            "--prefetch",
            "0",
            "--identity",
            f.identity(),
            name,
            dest.to_str().unwrap(),
        ]));
        (out, dest)
    };
    // Not in the archive: 1, PostgreSQL's "end of archive".
    let (out, dest) = fetch("000000010000000000000002");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(!dest.exists());
    // In the archive but unreadable: above 125, so recovery stops with an error.
    f.proxy.set_rate(1.0);
    let (out, dest) = fetch(name);
    assert_eq!(out.status.code(), Some(126), "{}", text(&out));
    assert!(text(&out).contains("recovery stops here"), "{}", text(&out));
    assert!(!dest.exists());
    f.proxy.set_rate(0.0);
    let (out, dest) = fetch(name);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(dest).unwrap(), vec![3u8; 1 << 20]);
}

/// A policy for `repository_url` at `endpoint`, with one attempt per request.
fn error_policy(dir: &Path, endpoint: &str, repository_url: &str, key: &TestKey) -> PathBuf {
    let path = dir.join("errors.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"app\"\n[source]\nurl = \"postgres://postgres@127.0.0.1:1/app\"\n\
             [repository]\nurl = \"{repository_url}\"\nendpoint = \"{endpoint}\"\nregion = \"garage\"\n\
             max_attempts = 1\nconnect_timeout = \"2s\"\n\
             [encryption]\nrecipients = [\"{}\"]\n",
            key.recipient
        ),
    )
    .unwrap();
    path
}

#[test]
fn s3_errors_are_one_line_naming_the_bucket_host_and_cause() {
    let Some(server) = S3Server::from_env() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let key = keygen(work.path(), "ops");
    let list = |policy: &Path, configure: &dyn Fn(&mut Command)| {
        let mut cmd = pgvault(Some(&server));
        configure(&mut cmd);
        cmd.args(["list", "--policy"]).arg(policy);
        let out = run(cmd);
        assert!(!out.status.success(), "{}", text(&out));
        one_line_error(&out)
    };

    let missing = error_policy(
        work.path(),
        &server.endpoint,
        "s3://pgvault-no-such-bucket/x",
        &key,
    );
    let line = list(&missing, &|_| {});
    assert!(
        line.contains(&format!(
            "bucket \"pgvault-no-such-bucket\" does not exist at {}",
            server.endpoint
        )),
        "{line}"
    );

    let line = list(&missing, &|c| {
        c.env("AWS_SECRET_ACCESS_KEY", "not-the-secret");
    });
    assert!(line.contains("rejected the credentials"), "{line}");

    let line = list(&missing, &|c| {
        c.env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env("HOME", "/nonexistent");
    });
    assert!(
        line.contains(
            "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
        ),
        "{line}"
    );

    let port = pgvault_integration::free_port();
    let refused = error_policy(
        work.path(),
        &format!("http://127.0.0.1:{port}"),
        "s3://pgvault-any-bucket/x",
        &key,
    );
    let line = list(&refused, &|_| {});
    assert!(
        line.contains(&format!(
            "cannot reach S3 endpoint http://127.0.0.1:{port}: connection refused"
        )),
        "{line}"
    );
}

#[test]
fn a_drill_that_cannot_read_the_backup_says_so_and_never_calls_it_corrupt() {
    let Some(f) = unreadable_dump(8) else {
        return;
    };
    let work = pgvault_integration::server_reachable_tempdir("pgvault-test-drill-faults-");
    let text_before = std::fs::read_to_string(&f.policy).unwrap();
    std::fs::write(
        &f.policy,
        format!(
            "{text_before}[restore_test]\nwork_dir = \"{}\"\n",
            work.path().display()
        ),
    )
    .unwrap();
    let out = run(f.cli(&["restore-test", "--identity", f.identity(), "--json"]));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["verdict"], "FAIL", "{report:#}");
    let failures = report["failures"].to_string();
    assert!(
        failures.contains("could not read the backup") && failures.contains("not corruption"),
        "{failures}"
    );
    let digest = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "stream digests and age authentication")
        .unwrap();
    assert_eq!(digest["status"], "skipped", "{digest:#}");
}

#[test]
fn the_agent_and_prune_hold_through_mixed_faults() {
    let modes = [
        FaultMode::Reset,
        FaultMode::SlowDown,
        FaultMode::InternalError,
        FaultMode::Truncate,
        FaultMode::Stall,
    ];
    let Some(f) = Faulty::start(4_000, FaultConfig::new(17, 0.25, &modes), FAST_TIMEOUTS) else {
        return;
    };
    let text_before = std::fs::read_to_string(&f.policy).unwrap();
    std::fs::write(
        &f.policy,
        format!("{text_before}[schedule]\nbackup = \"0 3 * * *\"\n[retention]\nkeep_last = 2\n"),
    )
    .unwrap();
    for _ in 0..3 {
        let mut agent = Command::new(pgvault_integration::agent_bin());
        agent
            .env("AWS_ACCESS_KEY_ID", &f.server.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &f.server.secret_access_key)
            .env("AWS_REGION", &f.server.region)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .args(["--once", "--policy"])
            .arg(&f.policy);
        let out = run(agent);
        assert!(
            out.status.success(),
            "agent under faults ({}): {}",
            f.proxy.stats(),
            text(&out)
        );
    }
    let out = run(f.cli(&["prune"]));
    assert!(out.status.success(), "prune under faults: {}", text(&out));
    assert!(f.proxy.stats().total_faults() > 0, "{}", f.proxy.stats());
    // With the network healthy: exactly the two newest remain, whole, nothing open.
    f.proxy.set_rate(0.0);
    assert_eq!(f.manifests(), 2);
    assert_eq!(f.open_uploads(), 0);
    let verify = run(f.cli(&["verify", "--identity", f.identity()]));
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    let keys = f.keys();
    assert!(
        keys.iter().all(|k| !k.contains("/runs/")),
        "a lease was left: {keys:?}"
    );
}

/// The contract through one fault mode alone: backup, deep verify, restore and
/// wal-push/fetch all succeed, and with the network healthy everything checks out.
fn contract_holds_through(mode: FaultMode, seed: u64) {
    // Each stall costs a timeout (3 s): fewer of them keep the test short.
    let rate = match mode {
        FaultMode::Stall | FaultMode::StallBody => 0.12,
        _ => 0.3,
    };
    let Some(f) = Faulty::start(6_000, FaultConfig::new(seed, rate, &[mode]), FAST_TIMEOUTS) else {
        return;
    };
    let backup = run(f.cli(&["backup"]));
    assert!(
        backup.status.success(),
        "backup through {mode} ({}): {}",
        f.proxy.stats(),
        text(&backup)
    );
    let verify = run(f.cli(&["verify", "--identity", f.identity()]));
    assert_eq!(
        verify.status.code(),
        Some(0),
        "verify through {mode}: {}",
        text(&verify)
    );
    f.restore_and_compare("restored");
    let wal = f.work.path().join("pg_wal");
    std::fs::create_dir(&wal).unwrap();
    let name = "000000010000000000000001";
    let data: Vec<u8> = (0..(1 << 20)).map(|_| rand::random::<u8>()).collect();
    std::fs::write(wal.join(name), &data).unwrap();
    let push = run(f.cli(&["wal-push", wal.join(name).to_str().unwrap()]));
    assert!(
        push.status.success(),
        "wal-push through {mode}: {}",
        text(&push)
    );
    let dest = f.work.path().join("fetched");
    let fetch = run(f.cli(&[
        "wal-fetch",
        "--prefetch",
        "0",
        "--identity",
        f.identity(),
        name,
        dest.to_str().unwrap(),
    ]));
    assert!(
        fetch.status.success(),
        "wal-fetch through {mode}: {}",
        text(&fetch)
    );
    assert!(std::fs::read(&dest).unwrap() == data);
    assert!(
        f.proxy.stats().count(mode) > 0,
        "no {mode} fault happened: {}",
        f.proxy.stats()
    );
    f.proxy.set_rate(0.0);
    assert_eq!(f.open_uploads(), 0);
    assert_eq!(f.manifests(), 1);
}

#[test]
fn the_contract_holds_through_latency() {
    contract_holds_through(FaultMode::Latency, 101);
}

#[test]
fn the_contract_holds_through_503_slow_down() {
    contract_holds_through(FaultMode::SlowDown, 102);
}

#[test]
fn the_contract_holds_through_500_internal_error() {
    contract_holds_through(FaultMode::InternalError, 103);
}

#[test]
fn the_contract_holds_through_resets_mid_body() {
    contract_holds_through(FaultMode::Reset, 104);
}

#[test]
fn the_contract_holds_through_truncated_bodies() {
    contract_holds_through(FaultMode::Truncate, 105);
}

#[test]
fn the_contract_holds_through_stalled_requests() {
    contract_holds_through(FaultMode::Stall, 106);
}

#[test]
fn the_contract_holds_through_stalled_bodies() {
    contract_holds_through(FaultMode::StallBody, 107);
}
