//! Every failure path of backup and restore: corrupted objects, wrong keys, a dump that
//! dies mid-stream, Ctrl-C, a non-empty target, and invalid policy files.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a harness failure should panic the test

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgvault_integration::{
    dump_is_copying_bulk, keygen, make_slow_to_dump, no_dump_running, pgvault, run, run_ok,
    slow_down_compression, text, wait_until, write_policy, Fixture, PgCluster, RepoSpec, S3Server,
};

/// A source with a small database and a filesystem repository policy.
fn setup(extra_policy: &str) -> Option<Fixture> {
    Fixture::start(
        "create table t (id int primary key, v text); insert into t select g, md5(g::text) from generate_series(1, 5000) g;",
        extra_policy,
    )
}

fn backup(s: &Fixture) {
    let mut cmd = pgvault(None);
    cmd.arg("backup").arg("--policy").arg(&s.policy);
    run_ok(cmd);
}

fn dump_file(s: &Fixture) -> std::path::PathBuf {
    let backups = s.repo.join("app/backups");
    let id = std::fs::read_dir(&backups)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    backups.join(id).join("dump.pgdump.zst.age")
}

fn flip_byte(path: &Path, at: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = (at as usize).min(bytes.len() - 1);
    bytes[i] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

fn restore_cmd(s: &Fixture, target: &str, identity: &Path) -> Command {
    let mut cmd = pgvault(None);
    cmd.args(["restore", "latest", "--target", target, "--identity"])
        .arg(identity)
        .arg("--policy")
        .arg(&s.policy);
    cmd
}

fn scratch_databases(c: &PgCluster) -> Vec<String> {
    c.databases()
        .into_iter()
        .filter(|d| d.contains("_pgvault_"))
        .collect()
}

#[test]
fn flipped_byte_fails_verify_naming_the_object_and_restore_leaves_target_unchanged() {
    let Some(s) = setup("") else { return };
    backup(&s);
    let dump = dump_file(&s);
    let size = std::fs::metadata(&dump).unwrap().len();
    flip_byte(&dump, size / 2);

    let mut verify = pgvault(None);
    verify.args(["verify", "latest", "--policy"]).arg(&s.policy);
    let out = run(verify);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("FAIL  dump")
            && t.contains("dump.pgdump.zst.age")
            && t.contains("stored sha256"),
        "{t}"
    );
    assert!(t.contains("OK    globals"), "{t}");

    let mut deep = pgvault(None);
    deep.args(["verify", "latest", "--identity"])
        .arg(&s.key.identity)
        .arg("--policy")
        .arg(&s.policy);
    let out = run(deep);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("FAIL  dump")
            && t.contains("decryption of")
            && t.contains("dump.pgdump.zst.age"),
        "{t}"
    );

    // The target holds data that must survive the failed restore.
    s.source.psql("postgres", "create database target");
    s.source.psql(
        "target",
        "create table precious (x int); insert into precious values (1), (2), (3)",
    );
    let mut restore = restore_cmd(&s, &s.source.url("target"), &s.key.identity);
    restore.arg("--force");
    let out = run(restore);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("the target database was not changed") && t.contains("dump.pgdump.zst.age"),
        "{t}"
    );
    assert_eq!(
        s.source.psql(
            "target",
            "select string_agg(x::text, ',' order by x) from precious"
        ),
        "1,2,3"
    );
    assert_eq!(scratch_databases(&s.source), Vec::<String>::new());
}

#[test]
fn corrupt_age_header_is_reported_as_corruption_not_as_a_wrong_key() {
    let Some(s) = setup("") else { return };
    backup(&s);
    flip_byte(&dump_file(&s), 60);
    let mut deep = pgvault(None);
    deep.args(["verify", "latest", "--identity"])
        .arg(&s.key.identity)
        .arg("--policy")
        .arg(&s.policy);
    let out = run(deep);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("FAIL  dump"), "{t}");
    assert!(!t.contains("not encrypted to any key"), "{t}");
}

#[test]
fn wrong_identity_gives_a_clear_error_and_writes_nothing() {
    let Some(s) = setup("") else { return };
    backup(&s);
    let other = keygen(s.work.path(), "someone-else");
    let before = s.source.databases();
    let out = run(restore_cmd(&s, &s.source.url("restored"), &other.identity));
    let t = text(&out);
    assert!(!out.status.success());
    assert!(
        t.contains(&format!(
            "this backup was not encrypted to any key in {}",
            other.identity.display()
        )),
        "{t}"
    );
    assert!(t.contains("(recipients: sha256:"), "{t}");
    assert_eq!(t.trim().lines().count(), 1, "one line expected: {t}");
    assert_eq!(s.source.databases(), before, "a database was created");

    let mut deep = pgvault(None);
    deep.args(["verify", "latest", "--identity"])
        .arg(&other.identity)
        .arg("--policy")
        .arg(&s.policy);
    let out = run(deep);
    assert!(
        text(&out).contains("was not encrypted to any key"),
        "{}",
        text(&out)
    );
    assert!(!out.status.success());
}

#[test]
fn non_empty_target_is_refused_without_force_and_left_unchanged() {
    let Some(s) = setup("") else { return };
    backup(&s);
    s.source.psql("postgres", "create database target");
    s.source.psql(
        "target",
        "create table mine (x int); insert into mine values (42)",
    );

    let mut dry = restore_cmd(&s, &s.source.url("target"), &s.key.identity);
    dry.arg("--dry-run");
    let out = run_ok(dry);
    assert!(
        out.contains("REFUSED: database target has 1 user table(s)"),
        "{out}"
    );
    assert!(out.contains("dry run: nothing was changed"), "{out}");

    let out = run(restore_cmd(&s, &s.source.url("target"), &s.key.identity));
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("already has 1 user table(s)") && t.contains("--force"),
        "{t}"
    );
    assert_eq!(s.source.psql("target", "select x from mine"), "42");
    assert_eq!(
        s.source.psql(
            "target",
            "select count(*) from pg_tables where tablename = 't'"
        ),
        "0"
    );

    // With --force the target is replaced by the verified restore.
    let mut forced = restore_cmd(&s, &s.source.url("target"), &s.key.identity);
    forced.arg("--force");
    let out = run_ok(forced);
    assert!(out.contains("restore PASSED"), "{out}");
    assert_eq!(s.source.psql("target", "select count(*) from t"), "5000");
    assert_eq!(
        s.source.psql(
            "target",
            "select count(*) from pg_tables where tablename = 'mine'"
        ),
        "0"
    );
    assert_eq!(scratch_databases(&s.source), Vec::<String>::new());
}

#[test]
fn parallel_restore_spools_and_verifies() {
    let Some(s) = setup("") else { return };
    backup(&s);
    let spool = tempfile::tempdir().unwrap();
    let mut cmd = restore_cmd(&s, &s.source.url("parallel"), &s.key.identity);
    cmd.args(["--jobs", "2", "--spool-dir"]).arg(spool.path());
    let out = run_ok(cmd);
    assert!(
        out.contains("pg_restore -j 2") && out.contains("restore PASSED"),
        "{out}"
    );
    assert_eq!(s.source.psql("parallel", "select count(*) from t"), "5000");
    assert_eq!(
        std::fs::read_dir(spool.path()).unwrap().count(),
        0,
        "spool file left behind"
    );
}

/// Wait until the dump upload is open and pg_dump is copying the big table: level-19
/// single-threaded compression keeps it blocked there for many seconds.
fn wait_for_copy_in_progress(s: &Fixture) {
    wait_until("the dump upload to open", 120, || {
        std::fs::read_dir(s.repo.join(".uploads"))
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".data"))
            })
            .unwrap_or(false)
    });
    wait_until("pg_dump to copy the bulk table", 120, || {
        dump_is_copying_bulk(&s.source)
    });
}

fn assert_no_backup_and_no_upload(s: &Fixture) {
    let mut list = pgvault(None);
    list.args(["list", "--policy"]).arg(&s.policy);
    assert_eq!(run_ok(list).trim(), "no backups");
    let leftovers: Vec<_> = std::fs::read_dir(s.repo.join(".uploads"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "open uploads left behind: {leftovers:?}"
    );
    let objects = pgvault_integration::files_under(&s.repo.join("app/backups"));
    assert!(
        objects.is_empty(),
        "objects of the failed backup left behind: {objects:?}"
    );
}

/// A `pgvault backup` of a slow-to-dump database, returned once pg_dump is mid-COPY and
/// the dump upload is open.
fn backup_mid_dump() -> Option<(Fixture, std::process::Child)> {
    let s = setup("")?;
    make_slow_to_dump(&s.source, "app", 300_000);
    slow_down_compression(&s.policy);
    let mut cmd = pgvault(None);
    cmd.arg("backup")
        .arg("--policy")
        .arg(&s.policy)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    wait_for_copy_in_progress(&s);
    Some((s, child))
}

#[test]
fn pg_dump_killed_mid_stream_leaves_no_backup_and_no_open_upload() {
    let Some((s, child)) = backup_mid_dump() else {
        return;
    };
    // Kill pg_dump's server session while dump bytes are being stored.
    let killed = s.source.psql(
        "postgres",
        "select count(pg_terminate_backend(pid)) from pg_stat_activity where application_name = 'pg_dump'",
    );
    assert_eq!(killed, "1", "pg_dump was not running");
    let out = child.wait_with_output().unwrap();
    let t = text(&out);
    assert!(
        !out.status.success(),
        "backup succeeded although pg_dump died: {t}"
    );
    assert!(t.contains("pg_dump"), "{t}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim().lines().count(),
        1,
        "one line expected: {t}"
    );
    assert_no_backup_and_no_upload(&s);
}

#[test]
fn sigint_mid_upload_aborts_cleanly() {
    let Some((s, child)) = backup_mid_dump() else {
        return;
    };
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(text(&out).contains("cancelled"), "{}", text(&out));
    assert_no_backup_and_no_upload(&s);
    // No pg_dump is left running against the source.
    wait_until("pg_dump to disappear", 30, || no_dump_running(&s.source));
}

#[tokio::test(flavor = "multi_thread")]
async fn source_dropped_mid_stream_on_s3_aborts_the_multipart_upload() {
    let Some(server) = S3Server::from_env() else {
        return;
    };
    let Some(source) = PgCluster::start() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    source.psql("postgres", "create database app");
    make_slow_to_dump(&source, "app", 300_000);
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
        "",
    );
    slow_down_compression(&policy);

    let mut cmd = pgvault(Some(&server));
    cmd.arg("backup")
        .arg("--policy")
        .arg(&policy)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    // The dump upload is open once pg_dump's COPY is running.
    loop {
        if dump_is_copying_bulk(&source)
            && server.open_multipart_uploads(&bucket, &prefix).await == 1
        {
            break;
        }
        assert!(Instant::now() < deadline, "pg_dump never started copying");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    source.psql(
        "postgres",
        "select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'pg_dump'",
    );
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(
        server.open_multipart_uploads(&bucket, &prefix).await,
        0,
        "multipart upload left open"
    );
    let keys = server.list_keys(&bucket, &prefix).await;
    assert!(
        keys.is_empty(),
        "objects of the failed backup left behind: {keys:?}"
    );
    let mut list = pgvault(Some(&server));
    list.args(["list", "--policy"]).arg(&policy);
    assert_eq!(run_ok(list).trim(), "no backups");
}

#[test]
fn invalid_policy_files_name_line_and_column() {
    let work = tempfile::tempdir().unwrap();
    let key = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
    let good = format!(
        "name = \"app\"\n[source]\nurl = \"postgres://u@h/app\"\n[repository]\nurl = \"file:///tmp/x\"\n[encryption]\nrecipients = [\"{key}\"]\n"
    );
    let cases = [
        (
            "unknown-key",
            good.replace("[encryption]", "colour = \"blue\"\n[encryption]"),
            ":6:1: unknown field `colour`",
        ),
        (
            "bad-url",
            good.replace("file:///tmp/x", "ftp://nowhere"),
            ":5:7: repository url \"ftp://nowhere\" must start with s3://",
        ),
        (
            "bad-source",
            good.replace("postgres://u@h/app", "mysql://u@h/app"),
            ":3:7: source url must start with postgres://",
        ),
        (
            "no-recipients",
            good.replace(&format!("recipients = [\"{key}\"]\n"), ""),
            ":6:1: [encryption] needs at least one age recipient",
        ),
        (
            "bad-recipient",
            good.replace(key, "age1bogus"),
            ":7:15: \"age1bogus\" is not an age public key",
        ),
    ];
    for (name, content, expected) in cases {
        let path = work.path().join(format!("{name}.toml"));
        std::fs::write(&path, content).unwrap();
        let mut cmd = pgvault(None);
        cmd.args(["list", "--policy"]).arg(&path);
        let out = run(cmd);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{name}");
        assert!(
            stderr.contains(&format!("{}{expected}", path.display())),
            "{name}: expected {expected:?} in {stderr:?}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{name}: {stderr}");
    }
}

#[test]
fn sigint_during_a_restore_drops_the_scratch_database_and_leaves_no_target() {
    let Some(s) = setup("") else { return };
    make_slow_to_dump(&s.source, "app", 300_000);
    backup(&s);
    let mut cmd = restore_cmd(&s, &s.source.url("restored"), &s.key.identity);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    wait_until("pg_restore to load the bulk table", 120, || {
        s.source.psql(
            "postgres",
            "select count(*) from pg_stat_activity where application_name = 'pg_restore' and query like 'COPY public.bulk%'",
        ) == "1"
    });
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(
        text(&out).contains("the target database was not changed"),
        "{}",
        text(&out)
    );
    assert_eq!(scratch_databases(&s.source), Vec::<String>::new());
    assert!(!s.source.databases().contains(&"restored".to_string()));
}

#[test]
fn a_damaged_manifest_is_listed_and_fails_verify_but_blocks_nothing_else() {
    let Some(s) = setup("[retention]\nkeep_last = 1\n") else {
        return;
    };
    backup(&s);
    let damaged = std::fs::read_dir(s.repo.join("app/backups"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name()
        .to_string_lossy()
        .to_string();
    std::fs::write(
        s.repo
            .join("app/backups")
            .join(&damaged)
            .join("manifest.json"),
        b"{ this is not a manifest",
    )
    .unwrap();
    backup(&s);

    let mut list = pgvault(None);
    list.args(["list", "--policy"]).arg(&s.policy);
    let out = run_ok(list);
    assert!(
        out.lines()
            .any(|l| l.starts_with(&damaged) && l.contains("DAMAGED:")),
        "{out}"
    );
    assert_eq!(
        out.lines().count(),
        3,
        "header, good backup, damaged one: {out}"
    );

    // The good backup verifies and restores.
    let mut verify = pgvault(None);
    verify
        .args(["verify", "latest", "--identity"])
        .arg(&s.key.identity)
        .arg("--policy")
        .arg(&s.policy);
    assert_eq!(run(verify).status.code(), Some(0));
    let target = s.source.url("restored");
    let out = run_ok(restore_cmd(&s, &target, &s.key.identity));
    assert!(out.contains("restore PASSED"), "{out}");

    // The damaged one fails verification, naming its manifest.
    let mut verify = pgvault(None);
    verify.args(["verify", &damaged, "--policy"]).arg(&s.policy);
    let out = run(verify);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("manifest") && t.contains("unreadable"), "{t}");

    // Retention keeps the last good one and never deletes what it cannot read.
    let mut prune = pgvault(None);
    prune.args(["prune", "--policy"]).arg(&s.policy);
    run_ok(prune);
    assert!(s
        .repo
        .join("app/backups")
        .join(&damaged)
        .join("manifest.json")
        .exists());
}

#[test]
fn an_exposed_identity_file_is_warned_about_in_plain_text() {
    let Some(s) = setup("") else {
        return;
    };
    backup(&s);
    std::fs::set_permissions(
        &s.key.identity,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let mut verify = pgvault(None);
    verify
        .args(["verify", "latest", "--identity"])
        .arg(&s.key.identity)
        .arg("--policy")
        .arg(&s.policy);
    let out = run(verify);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is readable by group or others (mode 0644)")
            && stderr.contains("chmod 600"),
        "{stderr}"
    );
    // stderr is a pipe here: no colour codes.
    assert!(!stderr.contains('\u{1b}'), "ANSI escapes in {stderr:?}");
}
