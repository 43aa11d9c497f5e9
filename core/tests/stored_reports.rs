//! Reports stored by an earlier pgvault must still read and verify.
//!
//! A policy's reports are kept for years as `<policy>/reports/<id>.{json,md,html}`, and
//! each JSON records the sha256 of its two renders and of the previous report's JSON.
//! `tests/fixtures/reports-v<format_version>/` holds a small chain exactly as pgvault
//! wrote it for that format version. The bytes are frozen: never rewrite them, add a new
//! directory when the format version changes. This test points a filesystem repository
//! at each of them and checks that every JSON still parses and the hash chain is intact,
//! so a change to the report types, the JSON, the store or the chain check that would
//! orphan old reports fails here. A new format version gets its own directory, written
//! once with `store::write` from the report fixtures in `tests/support/`.

#![allow(clippy::unwrap_used)] // a broken fixture should panic the test

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pgvault_core::drill::store;
use pgvault_core::repository::Repository;
use pgvault_core::storage::FilesystemStorage;

/// The policy the fixture chains belong to.
const POLICY: &str = "orders-prod";

/// The root of the fixture repository of one report format version.
fn fixture_root(format_version: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/reports-v{format_version}"))
}

/// A repository of [`POLICY`] on a filesystem root.
fn repository(root: PathBuf) -> Repository {
    Repository::new(Arc::new(FilesystemStorage::new(root).unwrap()), POLICY)
}

#[tokio::test]
async fn reports_of_format_v1_still_parse_and_verify() {
    let repo = repository(fixture_root(1));
    let stored = store::read_all(&repo).await.unwrap();
    let ids: Vec<&str> = stored.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        ["20240501T120000Z-0a1b2c3d", "20240502T120000Z-deadbeef"],
        "the fixture chain is two reports"
    );
    for report in &stored {
        assert!(report.markdown.is_some() && report.html.is_some());
        let parsed = store::parse_report(&report.id, &report.json).unwrap();
        assert_eq!(parsed.format_version, 1);
        assert_eq!(parsed.id, report.id);
        assert_eq!(parsed.policy, POLICY);
    }
    let findings = store::verify_chain(&stored);
    assert_eq!(findings.len(), 2);
    for finding in &findings {
        assert!(
            finding.problems.is_empty(),
            "{}: {:?}",
            finding.id,
            finding.problems
        );
    }
    // The second report links to the first, and the first is the start of the chain.
    let second = store::parse_report(&stored[1].id, &stored[1].json).unwrap();
    assert_eq!(
        second.previous.map(|l| l.id).as_deref(),
        Some(stored[0].id.as_str())
    );
    let (latest, _) = store::load(&repo, "latest").await.unwrap();
    assert_eq!(latest.id, stored[1].id);
}

#[tokio::test]
async fn an_altered_fixture_report_is_caught() {
    // The chain check on the fixture is not vacuous: one changed byte is named.
    let mut stored = store::read_all(&repository(fixture_root(1))).await.unwrap();
    let json = String::from_utf8(stored[0].json.clone()).unwrap();
    stored[0].json = json.replacen("\"PASS\"", "\"FAIL\"", 1).into_bytes();
    let findings = store::verify_chain(&stored);
    assert!(findings[0].problems.is_empty(), "{:?}", findings[0]);
    assert!(
        findings[1].problems.iter().any(|p| p.contains("altered")),
        "{:?}",
        findings[1]
    );
}
