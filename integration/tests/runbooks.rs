//! Runbooks that cannot rot: every block of `docs/runbooks/*.md` marked `sh runnable` is
//! run, page by page, against a real environment (PostgreSQL archiving into Garage, a
//! policy with a point-in-time restore test and a copy in a second bucket, a logical and
//! a physical backup), exactly
//! as the page's README promises. A command the tool no longer accepts, or a check that
//! no longer holds, fails the page's test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use pgvault_integration::cluster::{is_root, PgCluster};
use pgvault_integration::{free_port, keygen, pgvault, pgvault_bin, run_ok, text, S3Server};

fn runbooks_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/runbooks")
}

/// The page's `sh runnable` blocks, joined in order.
fn runnable_blocks(page: &str) -> String {
    let text = std::fs::read_to_string(runbooks_dir().join(page)).unwrap();
    let mut script = String::new();
    let mut inside = false;
    for line in text.lines() {
        if !inside && line.trim_end() == "```sh runnable" {
            inside = true;
        } else if inside && line.trim_end() == "```" {
            inside = false;
            script.push('\n');
        } else if inside {
            script.push_str(line);
            script.push('\n');
        }
    }
    assert!(!inside, "{page}: a runnable block is not closed");
    script
}

/// The environment docs/runbooks/README.md describes, owned by one test.
struct Environment {
    server: S3Server,
    source: PgCluster,
    work: tempfile::TempDir,
    policy: PathBuf,
    identity: PathBuf,
    target_time: String,
    bin: tempfile::TempDir,
}

impl Environment {
    fn start() -> Option<Environment> {
        let server = S3Server::from_env()?;
        let source = PgCluster::start()?;
        let work = pgvault_integration::server_reachable_tempdir("pgvault-test-runbook-");
        let drills = work.path().join("drills");
        std::fs::create_dir(&drills).unwrap();
        let key = keygen(work.path(), "ops");
        // The copy `dr` in a second bucket (docs/runbooks/README.md: `COPY`).
        let (copy_bucket, copy_prefix) = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(server.fresh_location());
        let (_, _, policy) = pgvault_integration::s3_policy(
            &server,
            work.path(),
            &source.url("postgres"),
            &key.recipient,
            &format!(
                "[[repository.copies]]\nname = \"dr\"\nurl = \"s3://{copy_bucket}/{copy_prefix}\"\nendpoint = \"{}\"\nregion = \"{}\"\n[retention]\nkeep_last = 5\n[restore_test]\nkind = \"pitr\"\nrto_objective = \"10m\"\nwork_dir = \"{}\"\n",
                server.endpoint,
                server.region,
                drills.display()
            ),
        );
        let scratch = work.path().join("scratch");
        std::fs::create_dir(&scratch).unwrap();
        pgvault_integration::give_to_server_user(true, &[work.path()]);
        source.configure_and_restart(&[
            ("wal_level", "replica"),
            ("archive_mode", "on"),
            (
                "archive_command",
                &pgvault_integration::s3_archive_command(&server, &policy),
            ),
        ]);
        source.psql(
            "postgres",
            "create table orders (id serial primary key, note text); insert into orders (note) select 'n' || g from generate_series(1, 50) g",
        );
        let cli = |args: &[&str]| {
            let mut cmd = pgvault(Some(&server));
            cmd.args(args).arg("--policy").arg(&policy);
            cmd
        };
        run_ok(cli(&["backup"]));
        run_ok(cli(&["backup", "--kind", "physical"]));
        // An incident responder's target: after the base backup, between two commits.
        source.psql(
            "postgres",
            "insert into orders (note) values ('before the target')",
        );
        let target_time = source.psql(
            "postgres",
            "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
        );
        source.psql(
            "postgres",
            "insert into orders (note) values ('after the target')",
        );
        // The programs a page runs: pgvault, and PostgreSQL's client tools; pg_ctl as the
        // server's OS user, as the pages say to run it.
        let bin = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(pgvault_bin(), bin.path().join("pgvault")).unwrap();
        for tool in ["psql", "pg_dump"] {
            std::os::unix::fs::symlink(source.tool(tool), bin.path().join(tool)).unwrap();
        }
        let pg_ctl = bin.path().join("pg_ctl");
        let body = if is_root() {
            format!(
                "#!/bin/sh\nexec runuser -u postgres -- {} \"$@\"\n",
                source.tool("pg_ctl").display()
            )
        } else {
            format!(
                "#!/bin/sh\nexec {} \"$@\"\n",
                source.tool("pg_ctl").display()
            )
        };
        std::fs::write(&pg_ctl, body).unwrap();
        std::fs::set_permissions(&pg_ctl, std::fs::Permissions::from_mode(0o755)).unwrap();
        Some(Environment {
            server,
            source,
            policy,
            identity: key.identity,
            target_time,
            bin,
            work,
        })
    }

    /// Run `page`'s runnable blocks with `bash -euo pipefail`.
    fn run_page(&self, page: &str) {
        let script = runnable_blocks(page);
        assert!(!script.trim().is_empty(), "{page} has no runnable block");
        let scratch = self.work.path().join("scratch");
        let path = format!(
            "{}:{}",
            self.bin.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .envs(
                pgvault(Some(&self.server))
                    .get_envs()
                    .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
            )
            .env("PATH", path)
            .env("POLICY", &self.policy)
            .env("IDENTITY", &self.identity)
            .env("SOURCE_URL", self.source.url("postgres"))
            .env("WORK", &scratch)
            .env("PORT", free_port().to_string())
            .env("TARGET_TIME", &self.target_time)
            .env("COPY", "dr")
            .current_dir(self.work.path())
            .output()
            .unwrap();
        // A server a page left running is stopped, whatever happened.
        self.source.stop_data_dir(&scratch.join("restored"));
        assert!(
            out.status.success(),
            "{page}: a runnable block failed ({}):\n{}",
            out.status,
            text(&out)
        );
    }
}

fn page_test(page: &str) {
    let Some(env) = Environment::start() else {
        return;
    };
    env.run_page(page);
}

#[test]
fn runbook_first_time_setup() {
    page_test("first-time-setup.md");
}

#[test]
fn runbook_nightly_backup_failed() {
    page_test("nightly-backup-failed.md");
}

#[test]
fn runbook_restore_to_a_point_in_time() {
    page_test("restore-to-a-point-in-time.md");
}

#[test]
fn runbook_restore_a_table() {
    page_test("restore-a-table.md");
}

#[test]
fn runbook_restore_test_failed() {
    page_test("restore-test-failed.md");
}

#[test]
fn runbook_wal_archive() {
    page_test("wal-archive.md");
}

#[test]
fn runbook_keys() {
    page_test("keys.md");
}

#[test]
fn runbook_bucket_or_region_outage() {
    page_test("bucket-or-region-outage.md");
}

#[test]
fn runbook_upgrade_pgvault() {
    page_test("upgrade-pgvault.md");
}

#[test]
fn runbook_restore_from_the_second_region() {
    page_test("restore-from-the-second-region.md");
}

/// Every page with runnable blocks has a test above, and every runbook the alert rules
/// and the DR plan link to exists.
#[test]
fn every_runbook_is_tested_and_every_link_to_one_resolves() {
    let tested = [
        "first-time-setup.md",
        "nightly-backup-failed.md",
        "restore-to-a-point-in-time.md",
        "restore-a-table.md",
        "restore-test-failed.md",
        "wal-archive.md",
        "keys.md",
        "bucket-or-region-outage.md",
        "upgrade-pgvault.md",
        "restore-from-the-second-region.md",
    ];
    for entry in std::fs::read_dir(runbooks_dir()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") && !runnable_blocks(&name).trim().is_empty() {
            assert!(
                tested.contains(&name.as_str()),
                "{name} has runnable blocks and no test"
            );
        }
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for linking in [
        "docker/monitoring/alerts.yml",
        "core/templates/dr_plan.md",
        "docs/DR-PLAN.md",
    ] {
        let text = std::fs::read_to_string(root.join(linking)).unwrap();
        for (i, _) in text.match_indices("docs/runbooks/") {
            let page: String = text[i + "docs/runbooks/".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
                .collect();
            let page = page.trim_end_matches('.');
            assert!(
                Path::new(&runbooks_dir()).join(page).is_file(),
                "{linking} links to docs/runbooks/{page}, which does not exist"
            );
        }
    }
}
