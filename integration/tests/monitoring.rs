//! The monitoring kit in `docker/monitoring`: the Prometheus alert rules are valid, their
//! unit tests (series that fire each alert, and ones that must not) pass, every alert is
//! exercised by them, and every metric they read is one the agent exports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// promtool from `PGVAULT_TEST_PROMTOOL` (set by scripts/test.sh) or PATH; `None` (skip)
/// outside a run that requires every tool.
fn promtool() -> Option<PathBuf> {
    let configured = std::env::var_os("PGVAULT_TEST_PROMTOOL").map(PathBuf::from);
    let found = configured.or_else(|| {
        Command::new("promtool")
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| PathBuf::from("promtool"))
    });
    if found.is_none() {
        assert!(
            !pgvault_integration::s3server::servers_required(),
            "promtool not found: scripts/test.sh installs it (PGVAULT_TEST_PROMTOOL)"
        );
        eprintln!("skipped: no promtool (run scripts/test.sh)");
    }
    found
}

fn run_promtool(args: &[&str]) -> String {
    let tool = promtool().unwrap();
    let out = Command::new(&tool)
        .args(args)
        .current_dir(repo_file("docker/monitoring"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_alert_rules_are_valid_and_their_unit_tests_pass() {
    if promtool().is_none() {
        return;
    }
    let checked = run_promtool(&["check", "rules", "alerts.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = run_promtool(&["test", "rules", "alerts.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn every_alert_is_tested_and_reads_only_metrics_the_agent_exports() {
    let rules = std::fs::read_to_string(repo_file("docker/monitoring/alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(repo_file("docker/monitoring/alerts.test.yml")).unwrap();
    let exported = std::fs::read_to_string(repo_file("agent/src/metrics.rs")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(str::trim)
        .collect();
    assert!(alerts.len() >= 6, "{alerts:?}");
    for alert in &alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "alert {alert} has no unit test in alerts.test.yml"
        );
    }
    let mut metrics: Vec<String> = Vec::new();
    for (i, _) in rules.match_indices("pgvault_") {
        let name: String = rules[i + "pgvault_".len()..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        // Counters are exported with a _total suffix on the registered name.
        let base = name.strip_suffix("_total").unwrap_or(&name).to_string();
        if !metrics.contains(&base) {
            metrics.push(base);
        }
    }
    assert!(!metrics.is_empty());
    for metric in metrics {
        assert!(
            exported.contains(&format!("\"{metric}\"")),
            "alerts.yml reads pgvault_{metric}, which agent/src/metrics.rs does not export"
        );
    }
}
