//! Everyday CLI polish, end to end through the built binary: `list --kind/--since/--until`
//! over a repository holding a logical and a physical backup, in the table and in
//! `--json`; shell completions, man pages and `--version`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a harness failure should panic the test

use std::path::Path;

use chrono::SecondsFormat;
use pgvault_integration::{pgvault, run, run_ok, text, Fixture};

/// `pgvault list --json` with `args`: the ids listed, in order.
fn listed(policy: &Path, args: &[&str]) -> Vec<String> {
    let mut cmd = pgvault(None);
    cmd.args(["list", "--json", "--policy"])
        .arg(policy)
        .args(args);
    let out = run_ok(cmd);
    let entries: serde_json::Value = serde_json::from_str(&out).unwrap();
    entries
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {out}"))
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

/// Take a backup with `args` and return its id.
fn backup(policy: &Path, args: &[&str]) -> String {
    let mut cmd = pgvault(None);
    cmd.args(["backup", "--json", "--policy"])
        .arg(policy)
        .args(args);
    let out: serde_json::Value = serde_json::from_str(&run_ok(cmd)).unwrap();
    out["manifest"]["id"].as_str().unwrap().to_string()
}

#[test]
fn list_selects_by_kind_and_start_time_in_the_table_and_in_json() {
    let Some(f) = Fixture::start(
        "create table t as select g from generate_series(1, 1000) g",
        "",
    ) else {
        return;
    };
    // A physical backup refuses to start without archiving. This test only lists
    // backups, so the archiver may as well throw the WAL away.
    f.source
        .configure_and_restart(&[("archive_mode", "on"), ("archive_command", "true")]);

    let logical = backup(&f.policy, &[]);
    let between = chrono::Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
    let physical = backup(&f.policy, &["--kind", "physical"]);

    assert_eq!(
        listed(&f.policy, &[]),
        [physical.as_str(), logical.as_str()],
        "newest first"
    );
    assert_eq!(
        listed(&f.policy, &["--kind", "logical"]),
        [logical.as_str()]
    );
    assert_eq!(
        listed(&f.policy, &["--kind", "physical"]),
        [physical.as_str()]
    );
    assert_eq!(
        listed(&f.policy, &["--since", &between]),
        [physical.as_str()]
    );
    assert_eq!(
        listed(&f.policy, &["--until", &between]),
        [logical.as_str()]
    );
    assert!(listed(&f.policy, &["--since", &between, "--kind", "logical"]).is_empty());
    // The CLI's other time syntax (as `restore --to-time` takes it), UTC without offset.
    assert_eq!(
        listed(&f.policy, &["--since", "2000-01-01 00:00:00"]),
        [physical.as_str(), logical.as_str()]
    );

    // The table keeps to the same selection.
    let mut table = pgvault(None);
    table
        .args(["list", "--kind", "physical", "--policy"])
        .arg(&f.policy);
    let table = run_ok(table);
    assert!(table.contains(&physical), "{table}");
    assert!(!table.contains(&logical), "{table}");
    let mut none = pgvault(None);
    none.args(["list", "--until", "2000-01-01T00:00:00Z", "--policy"])
        .arg(&f.policy);
    assert_eq!(run_ok(none), "no backups\n");

    // Mistakes are one line each, and print nothing on stdout.
    let mut swapped = pgvault(None);
    swapped
        .args([
            "list",
            "--json",
            "--since",
            &between,
            "--until",
            "2000-01-01 00:00:00",
        ])
        .arg("--policy")
        .arg(&f.policy);
    let out = run(swapped);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(text(&out).contains("is after --until"), "{}", text(&out));
    let mut garbled = pgvault(None);
    garbled
        .args(["list", "--since", "yesterday", "--policy"])
        .arg(&f.policy);
    let out = run(garbled);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("not a time such as"), "{}", text(&out));
}

#[test]
fn completions_man_pages_and_version_come_from_the_command_line() {
    let mut bash = pgvault(None);
    bash.args(["completions", "bash"]);
    let script = run_ok(bash);
    for subcommand in ["backup", "list", "verify", "restore", "restore-test", "man"] {
        assert!(
            script.contains(&format!("pgvault,{subcommand})")),
            "bash completes no {subcommand}"
        );
    }
    assert!(
        script.contains("--since"),
        "list's options are not completed"
    );
    for shell in ["zsh", "fish"] {
        let mut cmd = pgvault(None);
        cmd.args(["completions", shell]);
        assert!(run_ok(cmd).contains("restore-test"), "{shell}");
    }

    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man1");
    let mut cmd = pgvault(None);
    cmd.args(["man", "--output"]).arg(&man);
    let written = run_ok(cmd);
    for page in [
        "pgvault.1",
        "pgvault-backup.1",
        "pgvault-list.1",
        "pgvault-reports-show.1",
    ] {
        assert!(man.join(page).is_file(), "no {page}: {written}");
    }
    let list = std::fs::read_to_string(man.join("pgvault-list.1")).unwrap();
    for option in ["policy", "json", "kind", "since", "until"] {
        assert!(
            list.contains(&format!("\\-\\-{option}")),
            "{option}: {list}"
        );
    }

    let mut version = pgvault(None);
    version.arg("--version");
    let version = run_ok(version);
    assert!(version.starts_with("pgvault "), "{version}");
    assert!(version.contains("manifests: reads "), "{version}");
    assert!(
        version.contains("restore-test reports: reads "),
        "{version}"
    );
}
