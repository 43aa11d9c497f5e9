//! TLS end to end, against real PostgreSQL servers that accept only TLS over TCP
//! (`hostssl` lines only in `pg_hba.conf`, certificates from [`pgvault_integration::pki`]):
//! logical backup, verify and restore with `sslmode=require` and `verify-full`; `check`
//! reaching the source's archiver; a restore test into a TLS-only staging server; a
//! point-in-time restore from physical base backups taken over TLS; client-certificate
//! login; the `PGSSL*` environment fallback; and the one-line errors for a wrong CA, a
//! missing client certificate and `sslmode=disable`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pgvault_integration::cluster::{is_root, ClusterOptions, PgCluster};
use pgvault_integration::pki::{Pki, CLIENT_USER};
use pgvault_integration::{
    assert_same_text, free_port, keygen, pgvault, pgvault_bin, run, run_ok, text, write_policy,
    RepoSpec, TestKey,
};

const DATA: &str = "
create table customers (id bigserial primary key, name text not null);
create table orders (id bigserial primary key, customer_id bigint references customers,
  total numeric(12,2));
create index on orders (customer_id);
insert into customers (name) select 'customer ' || g from generate_series(1, 100) g;
insert into orders (customer_id, total) select 1 + g % 100, g from generate_series(1, 1000) g;
";

/// Start a cluster that accepts TCP connections only over TLS, with `pki`'s server
/// certificate and CA (for client certificates), logging every connection, and with
/// `extra_conf` appended to `postgresql.conf`.
fn tls_only_cluster(pki: &Pki, extra_conf: &str) -> Option<PgCluster> {
    let pki = pki.clone();
    let extra_conf = extra_conf.to_string();
    PgCluster::start_with(ClusterOptions {
        bin_dir: None,
        configure: Some(Box::new(move |data: &Path| {
            for (from, to) in [
                (&pki.server_cert, "server.crt"),
                (&pki.server_key, "server.key"),
                (&pki.ca, "ca.crt"),
            ] {
                std::fs::copy(from, data.join(to)).unwrap();
            }
            let conf = data.join("postgresql.conf");
            let mut text = std::fs::read_to_string(&conf).unwrap();
            text.push_str(
                "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
                 ssl_ca_file = 'ca.crt'\nlog_connections = on\n",
            );
            text.push_str(&extra_conf);
            std::fs::write(&conf, text).unwrap();
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\n\
                 hostssl all postgres 127.0.0.1/32 trust\n\
                 hostssl all certuser 127.0.0.1/32 cert\n\
                 hostssl replication postgres 127.0.0.1/32 trust\n",
            )
            .unwrap();
        })),
    })
}

/// One test's world: certificates, a TLS-only source whose database `app` holds `DATA`,
/// an age key and a filesystem repository, all in a directory the server's OS user can
/// enter.
struct World {
    work: tempfile::TempDir,
    pki: Pki,
    source: PgCluster,
    key: TestKey,
    repo: PathBuf,
}

impl World {
    fn start(extra_conf: &str) -> Option<World> {
        let work = pgvault_integration::server_reachable_tempdir("pgvault-test-tls-");
        let pki = Pki::generate(work.path());
        let source = tls_only_cluster(&pki, extra_conf)?;
        source.psql("postgres", "create database app");
        source.psql_script("app", DATA);
        let key = keygen(work.path(), "ops");
        let repo = work.path().join("repo");
        Some(World {
            work,
            pki,
            source,
            key,
            repo,
        })
    }

    /// `postgres://USER@127.0.0.1:PORT/DB?QUERY` on the source (no `?` for an empty query).
    fn url(&self, user: &str, db: &str, query: &str) -> String {
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        format!(
            "postgres://{user}@127.0.0.1:{}/{db}{query}",
            self.source.port
        )
    }

    /// `sslmode=verify-full&sslrootcert=<the CA>`.
    fn verify_full(&self) -> String {
        format!("sslmode=verify-full&sslrootcert={}", self.pki.ca.display())
    }

    /// Write policy `name` for `source_url` into the world's repository.
    fn policy(&self, name: &str, source_url: &str, extra: &str) -> PathBuf {
        write_policy(
            self.work.path(),
            name,
            source_url,
            &RepoSpec::Filesystem(&self.repo),
            &self.key.recipient,
            extra,
        )
    }

    fn cli(&self, policy: &Path, args: &[&str]) -> Command {
        let mut cmd = pgvault(None);
        cmd.args(args).arg("--policy").arg(policy);
        cmd
    }

    fn identity(&self) -> &str {
        self.key.identity.to_str().unwrap()
    }

    /// How many connections the source logged as authorised for `user` from
    /// `application` over TLS.
    fn tls_sessions(&self, user: &str, application: &str) -> usize {
        let log = std::fs::read_to_string(self.source.dir().join("server.log")).unwrap();
        let wanted = format!("user={user} ");
        let tls = format!("application_name={application} SSL enabled (protocol=TLSv1.");
        log.lines()
            .filter(|l| l.contains("connection authorized: ") && l.contains(&wanted))
            .filter(|l| l.contains(&tls))
            .count()
    }
}

/// Assert that a command failed with exit status 1 and exactly one line on stderr, free of
/// `Debug` renderings, and return that line.
fn one_line_failure(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(out.status.code(), Some(1), "{}", text(out));
    assert_eq!(stderr.lines().count(), 1, "not one line:\n{stderr}");
    for debug in ["{ ", "kind:", "Error {", "Custom {"] {
        assert!(
            !stderr.contains(debug),
            "Debug output ({debug:?}): {stderr}"
        );
    }
    stderr
}

/// Assert that no backup manifest of policy `name` exists in `repo`.
fn no_backups(repo: &Path, name: &str) {
    let dir = repo.join(name).join("backups");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "backups written: {left:?}");
}

#[test]
fn logical_backup_verify_restore_and_check_over_require_and_verify_full() {
    let Some(w) = World::start("") else {
        return;
    };
    let original = w.source.dump_text("app");
    for (name, query) in [
        ("require", "sslmode=require".to_string()),
        ("full", w.verify_full()),
    ] {
        let policy = w.policy(name, &w.url("postgres", "app", &query), "");
        // pgvault itself and the client tools it runs all log in over TLS (counted before
        // the harness's own pg_dump below).
        let sessions =
            || ["pgvault", "pg_dump", "pg_restore"].map(|c| w.tls_sessions("postgres", c));
        let [pgvault_before, dump_before, restore_before] = sessions();
        run_ok(w.cli(&policy, &["backup"]));
        let verified = run(w.cli(&policy, &["verify", "latest", "--identity", w.identity()]));
        assert_eq!(verified.status.code(), Some(0), "{}", text(&verified));

        let db = format!("restored_{name}");
        let target = w.url("postgres", &db, &query);
        run_ok(w.cli(
            &policy,
            &[
                "restore",
                "latest",
                "--target",
                &target,
                "--identity",
                w.identity(),
            ],
        ));
        let [pgvault_after, dump_after, restore_after] = sessions();
        assert!(
            pgvault_after > pgvault_before,
            "pgvault: no TLS session logged"
        );
        assert!(dump_after > dump_before, "pg_dump: no TLS session logged");
        assert!(
            restore_after > restore_before,
            "pg_restore: no TLS session logged"
        );
        assert_eq!(w.source.psql(&db, "select count(*) from orders"), "1000");
        assert_eq!(
            w.source.psql(&db, "select sum(total) from orders"),
            "500500.00"
        );
        assert_same_text(&original, &w.source.dump_text(&db), "source and restore");
    }

    // check, without physical backups: the repository is fine and the source's archiver
    // is read over verify-full (it is not archiving, so nothing is failing): exit 0.
    let policy = w.work.path().join("full.toml");
    let checked = run(w.cli(&policy, &["check"]));
    let out = text(&checked);
    assert_eq!(checked.status.code(), Some(0), "{out}");
    assert!(out.contains("no physical base backups"), "{out}");
    assert!(
        out.contains("OK    source archiver: last archived"),
        "{out}"
    );
    assert!(!out.contains("cannot read it"), "{out}");
}

#[test]
fn restore_test_into_a_tls_only_staging_server_passes() {
    let Some(w) = World::start("") else {
        return;
    };
    let Some(staging) = tls_only_cluster(&w.pki, "") else {
        return;
    };
    let drill_dir = pgvault_integration::server_reachable_tempdir("pgvault-test-tls-drill-");
    let target = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?{}",
        staging.port,
        w.verify_full()
    );
    let policy = w.policy(
        "app",
        &w.url("postgres", "app", &w.verify_full()),
        &format!(
            "[restore_test]\ntarget = \"{target}\"\nwork_dir = \"{}\"\nrto_objective = \"1h\"\nrpo_objective = \"24h\"\n\
             [[restore_test.checks]]\nname = \"every order is there\"\nsql = \"select count(*) from orders\"\nexpect = \"= 1000\"\n",
            drill_dir.path().display()
        ),
    );
    run_ok(w.cli(&policy, &["backup"]));
    let before = staging.databases();
    let out = run(w.cli(
        &policy,
        &["restore-test", "--json", "--identity", w.identity()],
    ));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("restore-test printed no report ({e}):\n{}", text(&out)));
    assert_eq!(out.status.code(), Some(0), "{}\n{report:#}", text(&out));
    assert_eq!(report["verdict"], "PASS", "{report:#}");
    assert_eq!(report["target"]["kind"], "staging", "{report:#}");
    let check = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "every order is there")
        .unwrap_or_else(|| panic!("no SQL check in {report:#}"));
    assert_eq!(check["status"], "passed", "{check}");
    assert_eq!(check["actual"], "1000", "{check}");
    // The scratch database was dropped again.
    assert_eq!(staging.databases(), before);
}

/// A restored data directory whose server is stopped when the test ends.
struct Restored<'a> {
    source: &'a PgCluster,
    dir: PathBuf,
}

impl Drop for Restored<'_> {
    fn drop(&mut self) {
        self.source.stop_data_dir(&self.dir);
    }
}

#[test]
fn point_in_time_restore_from_base_backups_taken_over_require_and_verify_full() {
    // archive_command reads the policy written below (before any segment is complete).
    let policy_dir = pgvault_integration::server_reachable_tempdir("pgvault-test-tls-pitr-");
    let archiving_policy = policy_dir.path().join("full.toml");
    let Some(w) = World::start(&format!(
        "wal_level = replica\narchive_mode = on\narchive_command = '{} wal-push --policy {} %p'\n",
        pgvault_bin().display(),
        archiving_policy.display()
    )) else {
        return;
    };
    let require = w.policy("app", &w.url("postgres", "postgres", "sslmode=require"), "");
    let full = policy_dir.path().join("full.toml");
    std::fs::write(
        &full,
        std::fs::read_to_string(&require)
            .unwrap()
            .replace("sslmode=require", &w.verify_full()),
    )
    .unwrap();
    // wal-push runs as the server's OS user: it writes WAL and uploads into the
    // repository; the restored servers' wal-fetch reads the key.
    std::fs::create_dir_all(w.repo.join(".uploads")).unwrap();
    std::fs::create_dir_all(w.repo.join("app/wal")).unwrap();
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:"])
            .arg(&w.repo)
            .arg(&w.key.identity)
            .status()
            .unwrap();
        assert!(status.success());
    }
    let psql = |sql: &str| w.source.psql("postgres", sql);
    psql("create table ev (id serial primary key, note text)");
    let insert = |note: &str| psql(&format!("insert into ev (note) values ('{note}')"));
    let backup = |policy: &Path| -> String {
        let out = run_ok(w.cli(policy, &["backup", "--kind", "physical", "--json"]));
        let manifest: serde_json::Value = serde_json::from_str(&out).unwrap();
        manifest["manifest"]["id"].as_str().unwrap().to_string()
    };

    insert("before the backups");
    let first = backup(&require);
    insert("a");
    let after_a = psql("select clock_timestamp()");
    let second = backup(&full);
    insert("b");
    let after_b = psql("select clock_timestamp()");
    insert("c");
    let segment = psql("select pg_walfile_name(pg_switch_wal())");
    pgvault_integration::wait_until("the archiver to store the switched segment", 60, || {
        psql(&format!(
            "select coalesce(last_archived_wal >= '{segment}', false) from pg_stat_archiver"
        )) == "t"
    });

    let checked = run(w.cli(&full, &["check"]));
    let out = text(&checked);
    assert_eq!(checked.status.code(), Some(0), "{out}");
    for id in [&first, &second] {
        assert!(out.contains(&format!("OK    base backup {id}")), "{out}");
    }
    assert!(out.contains("OK    source archiver"), "{out}");

    // Both targets are on timeline 1, the base backups' own: a restored copy that
    // promotes may archive a new timeline into the policy, which `latest` would follow.
    for (policy, target, base, rows) in [
        (&require, &after_a, &first, &["before the backups", "a"][..]),
        (
            &full,
            &after_b,
            &second,
            &["before the backups", "a", "b"][..],
        ),
    ] {
        let dir = w
            .work
            .path()
            .join(format!("restored-{}", if base == &first { 1 } else { 2 }));
        let _guard = Restored {
            source: &w.source,
            dir: dir.clone(),
        };
        let port = free_port().to_string();
        let out = run(w.cli(
            policy,
            &[
                "restore",
                "--identity",
                w.identity(),
                "--pgdata",
                dir.to_str().unwrap(),
                "--to-time",
                target,
                "--target-timeline",
                "current",
                "--archive-mode",
                "off",
                "--start",
                "--port",
                &port,
            ],
        ));
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains(&format!("base backup: {base}")),
            "{}",
            text(&out)
        );
        let port: u16 = port.parse().unwrap();
        let notes = w
            .source
            .psql_on_port(port, "postgres", "select note from ev order by id");
        assert_eq!(notes.lines().collect::<Vec<_>>(), rows);
        // The restored server kept the source's TLS configuration.
        assert_eq!(
            w.source.psql_on_port(
                port,
                "postgres",
                "select ssl from pg_stat_ssl where pid = pg_backend_pid()"
            ),
            "t"
        );
    }
}

#[test]
fn a_wrong_ca_and_sslmode_disable_fail_with_one_line() {
    let Some(w) = World::start("") else {
        return;
    };
    let wrong = format!(
        "sslmode=verify-full&sslrootcert={}",
        w.pki.wrong_ca.display()
    );
    let policy = w.policy("wrong", &w.url("postgres", "app", &wrong), "");
    let line = one_line_failure(&run(w.cli(&policy, &["backup"])));
    assert!(
        line.contains(&format!(
            "the server's certificate is not signed by a CA in {} (unknown issuer)",
            w.pki.wrong_ca.display()
        )),
        "{line}"
    );
    assert!(
        line.contains(&format!("127.0.0.1:{}", w.source.port)),
        "{line}"
    );
    no_backups(&w.repo, "wrong");

    // check reports the same reason on its archiver line, and fails.
    let checked = run(w.cli(&policy, &["check"]));
    let out = text(&checked);
    assert_eq!(checked.status.code(), Some(2), "{out}");
    let archiver = out
        .lines()
        .find(|l| l.contains("source archiver"))
        .unwrap_or_else(|| panic!("no archiver line: {out}"));
    assert!(
        archiver.contains("FAIL  source archiver: cannot read it:")
            && archiver.contains("(unknown issuer)"),
        "{archiver}"
    );

    let policy = w.policy("plain", &w.url("postgres", "app", "sslmode=disable"), "");
    let line = one_line_failure(&run(w.cli(&policy, &["backup"])));
    assert!(
        line.contains("no encryption")
            && line.contains(
                "the server accepts only TLS connections here but sslmode=disable: use sslmode=require or stronger"
            ),
        "{line}"
    );
    no_backups(&w.repo, "plain");
}

#[test]
fn client_certificate_login_works_and_is_required() {
    let Some(w) = World::start("") else {
        return;
    };
    w.source.psql(
        "postgres",
        &format!("create role {CLIENT_USER} login superuser"),
    );
    let with_cert = format!(
        "{}&sslcert={}&sslkey={}",
        w.verify_full(),
        w.pki.client_cert.display(),
        w.pki.client_key.display()
    );
    let policy = w.policy("cert", &w.url(CLIENT_USER, "app", &with_cert), "");
    run_ok(w.cli(&policy, &["backup"]));
    // Both pgvault and pg_dump logged in with the certificate.
    assert!(w.tls_sessions(CLIENT_USER, "pgvault") > 0);
    assert!(w.tls_sessions(CLIENT_USER, "pg_dump") > 0);
    let target = w.url(CLIENT_USER, "restored", &with_cert);
    run_ok(w.cli(
        &policy,
        &[
            "restore",
            "latest",
            "--target",
            &target,
            "--identity",
            w.identity(),
        ],
    ));
    assert_eq!(
        w.source.psql("restored", "select count(*) from orders"),
        "1000"
    );

    let policy = w.policy("nocert", &w.url(CLIENT_USER, "app", &w.verify_full()), "");
    let line = one_line_failure(&run(w.cli(&policy, &["backup"])));
    assert!(
        line.contains("requires a valid client certificate")
            && line.contains("give a client certificate with sslcert and sslkey"),
        "{line}"
    );
    no_backups(&w.repo, "nocert");
}

#[test]
fn pgssl_environment_variables_apply_to_a_plain_url() {
    let Some(w) = World::start("") else {
        return;
    };
    let policy = w.policy("env", &w.url("postgres", "app", ""), "");
    let backup = |root: &Path| {
        let mut cmd = w.cli(&policy, &["backup"]);
        cmd.env("PGSSLMODE", "verify-full")
            .env("PGSSLROOTCERT", root);
        run(cmd)
    };
    let out = backup(&w.pki.ca);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let listed: serde_json::Value =
        serde_json::from_str(&run_ok(w.cli(&policy, &["list", "--json"]))).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed:#}");

    // The variables are really in force: the wrong CA from the environment is refused.
    let line = one_line_failure(&backup(&w.pki.wrong_ca));
    assert!(
        line.contains(&format!(
            "not signed by a CA in {} (unknown issuer)",
            w.pki.wrong_ca.display()
        )),
        "{line}"
    );
    // A URL parameter wins over its variable, as in libpq.
    let url_wins = w.policy(
        "env-url",
        &w.url(
            "postgres",
            "app",
            &format!("sslrootcert={}", w.pki.ca.display()),
        ),
        "",
    );
    let mut cmd = w.cli(&url_wins, &["backup"]);
    cmd.env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", &w.pki.wrong_ca);
    run_ok(cmd);
}
