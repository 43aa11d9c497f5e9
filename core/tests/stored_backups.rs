//! Backups written by an earlier pgvault must still list, verify and decrypt.
//!
//! `tests/fixtures/repository-v<format_version>/` holds a small filesystem repository
//! exactly as pgvault wrote it for that manifest format version (policy `shop`, a
//! logical backup of two tables), with the test identity it was encrypted to. The
//! bytes are frozen: never rewrite them, add a new directory when the format changes.
//! A change to the manifest, the layout, the digests or the zstd+age stream that would
//! orphan old backups fails here.

#![allow(clippy::unwrap_used)] // a broken fixture should panic the test

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pgvault_core::keys::Identities;
use pgvault_core::logical::backup::VerificationSidecar;
use pgvault_core::logical::verify::verify_backup;
use pgvault_core::pipeline::{self, Decode, Progress};
use pgvault_core::repository::{object, BackupKind, Repository};
use pgvault_core::storage::FilesystemStorage;
use tokio_util::sync::CancellationToken;

/// A copy of the fixture of `format_version` (the storage may add its own working
/// directories, which must not land in the source tree).
fn fixture(format_version: u32) -> (tempfile::TempDir, PathBuf) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/repository-v{format_version}"));
    let copy = tempfile::tempdir().unwrap();
    copy_tree(&source, copy.path());
    let identity = copy.path().join("identity.txt");
    (copy, identity)
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test]
async fn a_logical_backup_of_format_v1_still_lists_verifies_and_decrypts() {
    let (dir, identity) = fixture(1);
    let repo = Repository::new(
        Arc::new(FilesystemStorage::new(dir.path().to_path_buf()).unwrap()),
        "shop",
    );
    let catalog = repo.catalog().await.unwrap();
    assert!(catalog.damaged.is_empty());
    assert_eq!(catalog.backups.len(), 1);
    let manifest = &catalog.backups[0];
    assert_eq!(manifest.id, "20261203T204756Z-bfa94f82");
    assert_eq!(manifest.kind, BackupKind::Logical);
    assert_eq!(manifest.database, "shop");

    // Keyless: every stored object against its manifest digest.
    let keyless = verify_backup(&repo, manifest, None, None, &CancellationToken::new())
        .await
        .unwrap();
    assert!(!keyless.damaged() && !keyless.incomplete());
    assert_eq!(keyless.objects.len(), 3);

    // With the key: the dump decrypts and decompresses to its recorded plaintext digest,
    // and the sidecar still parses with the counts the backup took.
    let identities = Identities::load(&identity).unwrap();
    let recipients = &manifest.encryption.recipients;
    let dump = manifest.object(object::DUMP).unwrap();
    pipeline::download_stream(
        repo.storage(),
        &dump.key,
        &dump.digest,
        Decode::Full(&identities),
        recipients,
        std::io::sink(),
        2,
        Arc::new(Progress::default()),
    )
    .await
    .unwrap();
    let sidecar = manifest.object(object::VERIFICATION).unwrap();
    let bytes = pipeline::download_bytes(
        repo.storage(),
        &sidecar.key,
        &sidecar.digest,
        &identities,
        recipients,
    )
    .await
    .unwrap();
    let sidecar: VerificationSidecar = serde_json::from_slice(&bytes).unwrap();
    let counts: Vec<(String, i64)> = sidecar
        .tables
        .iter()
        .map(|t| (t.table.clone(), t.rows))
        .collect();
    assert_eq!(
        counts,
        [("customers".to_string(), 25), ("orders".to_string(), 40)]
    );
}
