//! Golden files for the Markdown and HTML renders of drill reports.
//!
//! Each stored report records the sha256 of its renders, and reviewers compare reports
//! across months, so a render must not change by accident: not a space, not an escape.
//! This test renders the fixtures of `support/mod.rs` and compares them byte for byte with
//! `tests/golden/<fixture>.{md,html}`.
//!
//! When a change to the renders is intended, run the test with `PGVAULT_BLESS=1` to
//! rewrite the golden files, then review the diff like any other change.

#![allow(clippy::unwrap_used)] // a broken fixture or golden file should panic the test

mod support;

use std::path::{Path, PathBuf};

use pgvault_core::drill::render;

/// Where the golden files live.
fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Whether to rewrite the golden files instead of comparing.
fn blessing() -> bool {
    std::env::var_os("PGVAULT_BLESS").is_some_and(|v| v == "1")
}

/// Where two texts first differ, with a few lines of context, for the failure message.
fn first_difference(expected: &str, actual: &str) -> String {
    let (e, a): (Vec<&str>, Vec<&str>) = (
        expected.split_inclusive('\n').collect(),
        actual.split_inclusive('\n').collect(),
    );
    let line = e
        .iter()
        .zip(&a)
        .position(|(x, y)| x != y)
        .unwrap_or(e.len().min(a.len()));
    let show = |lines: &[&str]| {
        lines
            .iter()
            .skip(line.saturating_sub(2))
            .take(5)
            .map(|l| format!("    {l:?}\n"))
            .collect::<String>()
    };
    format!(
        "first difference at line {} ({} lines expected, {} rendered)\n  expected:\n{}  rendered:\n{}",
        line + 1,
        e.len(),
        a.len(),
        show(&e),
        show(&a)
    )
}

#[test]
fn renders_match_golden_files() {
    let dir = golden_dir();
    let mut mismatches = Vec::new();
    for (name, report) in support::fixtures() {
        for (extension, rendered) in [
            ("md", render::markdown(&report)),
            ("html", render::html(&report)),
        ] {
            let path = dir.join(format!("{name}.{extension}"));
            if blessing() {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &rendered).unwrap();
                continue;
            }
            match std::fs::read_to_string(&path) {
                Ok(expected) if expected == rendered => {}
                Ok(expected) => mismatches.push(format!(
                    "{name}.{extension}: {}",
                    first_difference(&expected, &rendered)
                )),
                Err(e) => mismatches.push(format!("{name}.{extension}: cannot read: {e}")),
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "renders differ from tests/golden (PGVAULT_BLESS=1 rewrites them):\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn every_golden_file_has_a_fixture() {
    let names: Vec<String> = support::fixtures()
        .iter()
        .flat_map(|(name, _)| [format!("{name}.md"), format!("{name}.html")])
        .collect();
    // Missing altogether: `renders_match_golden_files` says so (or is creating it).
    let Ok(entries) = std::fs::read_dir(golden_dir()) else {
        return;
    };
    for entry in entries {
        let file = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            names.contains(&file),
            "tests/golden/{file} belongs to no fixture; remove it"
        );
    }
}

#[test]
fn renders_are_deterministic() {
    for (name, report) in support::fixtures() {
        assert_eq!(
            render::markdown(&report),
            render::markdown(&report),
            "{name}"
        );
        assert_eq!(render::html(&report), render::html(&report), "{name}");
    }
}
