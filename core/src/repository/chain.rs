//! Chains of incremental physical backups and the plaintext server manifests they are
//! taken against (docs/FORMAT.md §17): what a reader of the repository needs to restore
//! or verify an incremental, whatever took it.
//!
//! An incremental is only as good as its chain: [`chain_of`] resolves a backup to every
//! ancestor up to the full at the root, and names the first one that is missing.

use sha2::{Digest, Sha256};

use super::{BackupKind, BackupManifest, PlainObject, Repository};
use crate::error::{Error, Result};

/// File name of the plaintext copy of the server's `backup_manifest` in a backup's
/// directory.
pub const SERVER_MANIFEST_FILE: &str = "backup_manifest.json";

/// Fetch a backup's copy of the server manifest, checked against the digest its
/// pgvault manifest records.
pub async fn fetch_server_manifest(repo: &Repository, backup: &BackupManifest) -> Result<Vec<u8>> {
    let copy = server_manifest_of(backup).ok_or_else(|| Error::Manifest {
        key: format!("backup {}", backup.id),
        message: "it has no stored backup_manifest".into(),
    })?;
    let bytes = repo.storage().get(&copy.key).await?;
    let digest = hex::encode(Sha256::digest(&bytes));
    if digest != copy.sha256 || bytes.len() as u64 != copy.size {
        return Err(Error::Integrity {
            object: copy.key.clone(),
            message: format!(
                "the stored backup_manifest of backup {} does not match its recorded sha256 (expected {}, got {digest})",
                backup.id, copy.sha256
            ),
        });
    }
    Ok(bytes.to_vec())
}

/// The record of a plaintext copy stored under `key`.
pub fn plain_object(key: String, bytes: &[u8]) -> PlainObject {
    PlainObject {
        key,
        size: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(bytes)),
    }
}

pub(crate) fn server_manifest_of(backup: &BackupManifest) -> Option<&PlainObject> {
    backup
        .physical
        .as_ref()
        .and_then(|p| p.server_manifest.as_ref())
}

/// Every backup a restore of `backup` needs, the full at the root first and `backup`
/// last. Refuses, naming it, when an ancestor is missing or from another cluster.
pub fn chain_of(backup: &BackupManifest, all: &[BackupManifest]) -> Result<Vec<BackupManifest>> {
    let mut chain = vec![backup.clone()];
    while let Some(link) = chain.last().and_then(BackupManifest::chain_link) {
        let child = chain.last().map(|m| m.id.clone()).unwrap_or_default();
        let parent = all
            .iter()
            .find(|m| m.id == link.parent && m.kind == BackupKind::Physical)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "backup {child} is an incremental that needs its parent {}, which is not in the repository (deleted, or its manifest is damaged): the chain from {} is broken. Restore from another chain (`pgvault list` shows them), and take a new full base backup",
                    link.parent, link.root
                ))
            })?;
        if parent.system_identifier != backup.system_identifier {
            return Err(Error::Invalid(format!(
                "backup {child} names {} as its parent, but that backup is of another cluster (system identifier {}, not {})",
                parent.id, parent.system_identifier, backup.system_identifier
            )));
        }
        if chain.len() > 10_000 {
            return Err(Error::Invalid(format!(
                "the chain of backup {} loops through {}",
                backup.id, parent.id
            )));
        }
        chain.push(parent.clone());
    }
    chain.reverse();
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::{parse_manifest, ChainLink, PhysicalInfo};

    /// A physical backup `id` of cluster `system`, incremental on `parent` when given.
    fn physical(id: &str, system: &str, parent: Option<(&str, &str, u32)>) -> BackupManifest {
        let mut m = parse_manifest(
            "fixture",
            include_bytes!(
                "../../tests/fixtures/repository-v1/shop/backups/20261203T204756Z-bfa94f82/manifest.json"
            ),
        )
        .unwrap();
        m.id = id.into();
        m.kind = BackupKind::Physical;
        m.system_identifier = system.into();
        m.physical = Some(PhysicalInfo {
            start_lsn: "0/2000028".into(),
            stop_lsn: "0/2000100".into(),
            timeline: 1,
            wal_segment_size: 16 << 20,
            start_wal: "000000010000000000000002".into(),
            stop_wal: "000000010000000000000002".into(),
            server_manifest: None,
            incremental: parent.map(|(parent, root, depth)| ChainLink {
                parent: parent.into(),
                root: root.into(),
                depth,
                chain_stored_bytes: 0,
            }),
            fallback_reason: None,
        });
        m
    }

    #[test]
    fn a_chain_runs_from_the_full_to_the_backup_and_names_a_missing_parent() {
        let full = physical("f", "1", None);
        let one = physical("i1", "1", Some(("f", "f", 1)));
        let two = physical("i2", "1", Some(("i1", "f", 2)));
        let all = vec![two.clone(), full.clone(), one.clone()];
        let ids = |chain: Vec<BackupManifest>| chain.into_iter().map(|m| m.id).collect::<Vec<_>>();
        assert_eq!(ids(chain_of(&two, &all).unwrap()), vec!["f", "i1", "i2"]);
        assert_eq!(ids(chain_of(&full, &all).unwrap()), vec!["f"]);

        let broken = vec![two.clone(), full.clone()];
        let err = chain_of(&two, &broken).unwrap_err().to_string();
        assert!(
            err.contains("needs its parent i1, which is not in the repository"),
            "{err}"
        );

        let stranger = vec![two.clone(), physical("i1", "2", Some(("f", "f", 1))), full];
        let err = chain_of(&two, &stranger).unwrap_err().to_string();
        assert!(err.contains("of another cluster"), "{err}");
    }
}
