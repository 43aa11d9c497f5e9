//! Every example in `policies/` parses and validates, so the examples never rot.

#![allow(clippy::unwrap_used)] // a failing example should panic the test

use std::path::Path;

use pgvault_core::policy::Policy;
use pgvault_core::storage::Location;

#[test]
fn every_example_policy_parses() {
    std::env::set_var("PGVAULT_APP_PASSWORD", "example-only");
    std::env::set_var("PGVAULT_WEBHOOK_URL", "https://hooks.example.invalid/T000");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let mut parsed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let policy = Policy::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(!policy.recipients.is_empty());
            parsed += 1;
        }
    }
    assert!(
        parsed >= 2,
        "expected the example policies in {}",
        dir.display()
    );
    // The deployment example too.
    std::env::set_var("PGVAULT_DB_PASSWORD", "example-only");
    let docker = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker/example-policy.toml");
    let policy = Policy::load(&docker).unwrap_or_else(|e| panic!("{e}"));
    assert!(policy.schedule.is_some());
    let prod = Policy::load(&dir.join("app-prod-s3.toml")).unwrap();
    assert_eq!(prod.recipients.len(), 2);
    assert!(prod.source.url.contains("example-only"));
    assert!(prod.schedule.is_some() && prod.retention.is_some() && prod.notify.is_some());
    assert!(prod.schedule.as_ref().unwrap().physical.is_some());
    let drill = prod.restore_test.clone().unwrap();
    assert!(drill.schedule.is_some() && drill.identity_file.is_some());
    assert_eq!(drill.checks.len(), 2);
    assert_eq!(drill.rto_objective, Some(chrono::Duration::hours(1)));
    // The stale guard defaults to twice the daily schedule.
    assert_eq!(
        prod.retention.unwrap().max_age,
        Some(chrono::Duration::days(2))
    );
    assert!(
        matches!(prod.repository.storage.location, Location::S3 { ref bucket, .. } if bucket == "acme-pg-backups")
    );
    // 3-2-1: a copy in another region after each backup, and an offline one.
    let copies = Policy::load(&dir.join("app-prod-copies.toml")).unwrap();
    let dr = copies.copy("dr").unwrap();
    assert!(dr.copy_after_backup);
    assert!(
        matches!(dr.repository.storage.location, Location::S3 { ref bucket, .. } if bucket == "acme-pg-backups-dr")
    );
    assert_eq!(
        copies.retention_of_copy(dr).unwrap().rules.keep_daily,
        Some(14)
    );
    let vault = copies.copy("vault").unwrap();
    assert!(!vault.copy_after_backup);
    assert_eq!(
        copies.retention_of_copy(vault).unwrap().rules.keep_daily,
        Some(7)
    );
    assert_eq!(
        copies.restore_test.unwrap().from_copy.as_deref(),
        Some("dr")
    );
    let lock = prod.repository.storage.object_lock.clone().unwrap();
    assert_eq!(
        (lock.mode, lock.days),
        (pgvault_core::storage::LockMode::Compliance, 30)
    );
}
