//! The repository: how backups are laid out in storage, their ids, and their manifests.
//!
//! `docs/FORMAT.md` is the specification; this module is its implementation. In short:
//!
//! ```text
//! <policy>/backups/<id>/dump.pgdump.zst.age          pg_dump -Fc archive
//! <policy>/backups/<id>/globals.sql.zst.age          roles, memberships, tablespaces
//! <policy>/backups/<id>/verification.json.zst.age    per-table row counts (encrypted)
//! <policy>/backups/<id>/base.tar.zst.age            pg_basebackup tar (physical)
//! <policy>/backups/<id>/backup_manifest.json         the server's manifest, plaintext,
//!                                                    without checksums (PostgreSQL 17+)
//! <policy>/backups/<id>/manifest.json                plaintext metadata, written last
//! ```
//!
//! A backup exists when its manifest exists: data objects are written first and the
//! manifest last, so a crash never leaves a listed backup without its data.

pub mod chain;
pub mod estimate;
pub mod filter;
pub mod lease;
pub mod leftovers;
pub mod new_backup;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pipeline::ObjectDigest;
use crate::policy::Policy;
use crate::storage::Storage;

/// The manifest format of logical backups (unchanged since version 1, so older readers
/// keep reading them).
pub const FORMAT_VERSION: u32 = 1;
/// The manifest format of full physical backups: version 2 adds `kind = "physical"` and
/// the `physical` member (docs/FORMAT.md §15).
pub const PHYSICAL_FORMAT_VERSION: u32 = 2;
/// The manifest format of incremental physical backups: version 3 adds
/// `physical.incremental` (docs/FORMAT.md §17). A reader that knows only version 2 must
/// refuse such a backup rather than restore its incremental files as if they were whole.
pub const INCREMENTAL_FORMAT_VERSION: u32 = 3;
/// The manifest format of a backup whose objects `keys rotate` rewrapped: version 4 lets
/// an object carry header and payload digests instead of the whole object's
/// (docs/FORMAT.md §21). A reader of version 3 would find `stored_sha256` missing.
pub const ROTATED_FORMAT_VERSION: u32 = 4;
/// The manifest versions this pgvault reads: every version it has ever written.
/// [`parse_manifest`] refuses the others.
pub const READ_FORMAT_VERSIONS: std::ops::RangeInclusive<u32> =
    FORMAT_VERSION..=ROTATED_FORMAT_VERSION;
/// The manifest versions this pgvault writes: [`FORMAT_VERSION`] for logical backups,
/// [`PHYSICAL_FORMAT_VERSION`] for full base backups, [`INCREMENTAL_FORMAT_VERSION`] for
/// incremental ones, [`ROTATED_FORMAT_VERSION`] once `keys rotate` rewrapped it (a backup
/// is written in the oldest version that can describe it).
pub const WRITTEN_FORMAT_VERSIONS: [u32; 4] = [
    FORMAT_VERSION,
    PHYSICAL_FORMAT_VERSION,
    INCREMENTAL_FORMAT_VERSION,
    ROTATED_FORMAT_VERSION,
];

/// Name of the manifest object inside a backup's directory.
pub const MANIFEST: &str = "manifest.json";

/// The folder of a policy's run leases (`<policy>/runs/`, see [`lease`]).
pub const RUNS_DIR: &str = "runs";
/// The folder of a policy's stream chunks (`<policy>/wal-stream/`, docs/FORMAT.md §19).
pub const STREAM_DIR: &str = "wal-stream";

/// Prefixes of a policy's scratch objects: what pgvault itself deletes when a run ends
/// or a segment is complete (run leases, stream chunks). They are never locked
/// (`[repository] object_lock`), so that deleting them cannot fail on a lock; everything
/// else a policy stores (backups, WAL, gap records, reports) is.
pub fn scratch_prefixes(policy: &str) -> Vec<String> {
    vec![
        format!("{policy}/{RUNS_DIR}/"),
        format!("{policy}/{STREAM_DIR}/"),
    ]
}

/// A new backup id: UTC start time to the second plus 8 random hex digits, so ids sort by
/// time and two agents starting in the same second still differ.
pub fn new_backup_id(started: DateTime<Utc>) -> String {
    let mut random = [0u8; 4];
    rand::thread_rng().fill_bytes(&mut random);
    format!(
        "{}-{}",
        started.format("%Y%m%dT%H%M%SZ"),
        hex::encode(random)
    )
}

/// What kind of backup a manifest describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    /// A `pg_dump` of one database.
    Logical,
    /// A `pg_basebackup` of the whole cluster, restored with archived WAL.
    Physical,
}

impl std::fmt::Display for BackupKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackupKind::Logical => "logical",
            BackupKind::Physical => "physical",
        })
    }
}

/// Where a physical base backup starts and ends in the WAL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhysicalInfo {
    /// The backup's start LSN (`0/2000028`): replay begins here.
    pub start_lsn: String,
    /// Its end LSN: the copy is consistent once replay passes it.
    pub stop_lsn: String,
    /// The timeline at the start.
    pub timeline: u32,
    /// `wal_segment_size` of the cluster, bytes.
    pub wal_segment_size: u64,
    /// The WAL segment holding the start LSN.
    pub start_wal: String,
    /// The WAL segment holding the end LSN.
    pub stop_wal: String,
    /// The server's `backup_manifest`, stored beside the backup in plaintext with the
    /// file checksums removed, so the next incremental can name this backup as its
    /// parent without a decryption key (PostgreSQL 17 and newer; docs/FORMAT.md §17).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_manifest: Option<PlainObject>,
    /// Set on an incremental backup: the backup it depends on and its place in the chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<ChainLink>,
    /// Why an incremental was asked for but a full backup was taken instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
}

/// An object stored without encryption, with the digest that a reader checks before it
/// trusts the content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlainObject {
    /// Key relative to the repository root.
    pub key: String,
    /// Bytes stored.
    pub size: u64,
    /// sha256 of those bytes, hex.
    pub sha256: String,
}

/// Where an incremental backup sits in its chain: restoring it needs every ancestor up
/// to the full backup at the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainLink {
    /// The backup this one was taken against (full or incremental).
    pub parent: String,
    /// The full backup that starts the chain.
    pub root: String,
    /// 1 for the first incremental after the full, 2 for the next, and so on.
    pub depth: u32,
    /// Stored bytes of the whole chain up to and including this backup.
    pub chain_stored_bytes: u64,
}

/// Compression settings recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompressionInfo {
    /// Always `zstd`.
    pub algorithm: String,
    /// The zstd level used.
    pub level: i32,
}

/// Encryption settings recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionInfo {
    /// Always `age`.
    pub algorithm: String,
    /// Fingerprints of the recipients (see [`crate::keys::fingerprint`]).
    pub recipients: Vec<String>,
}

/// One stored object of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredObject {
    /// Key relative to the repository root.
    pub key: String,
    /// Sizes and digests.
    #[serde(flatten)]
    pub digest: ObjectDigest,
}

/// The plaintext manifest of a backup: what listing, planning and keyless verification
/// need, and nothing derived from the data itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupManifest {
    /// Format version; readers refuse versions they do not know.
    pub format_version: u32,
    /// The backup id.
    pub id: String,
    /// The policy that took it.
    pub policy: String,
    /// Logical (pg_dump) backup.
    pub kind: BackupKind,
    /// When the backup started.
    pub started_at: DateTime<Utc>,
    /// When the snapshot the data reflects was taken (the restore point).
    pub consistent_at: DateTime<Utc>,
    /// When the last object was stored.
    pub finished_at: DateTime<Utc>,
    /// The database dumped.
    pub database: String,
    /// Its encoding, used when creating the restore database.
    pub database_encoding: String,
    /// `server_version` of the source.
    pub server_version: String,
    /// `server_version_num` of the source.
    pub server_version_num: i32,
    /// `pg_control_system().system_identifier` of the source cluster.
    pub system_identifier: String,
    /// The pgvault that wrote the backup.
    pub tool_version: String,
    /// `pg_dump --version` of the dump tool.
    pub dump_tool_version: String,
    /// zstd settings.
    pub compression: CompressionInfo,
    /// age settings.
    pub encryption: EncryptionInfo,
    /// The stored objects by role: `dump`, `globals`, `verification` (logical) or
    /// `base` (physical).
    pub objects: BTreeMap<String, StoredObject>,
    /// WAL positions of a physical backup (absent for logical ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical: Option<PhysicalInfo>,
}

/// Object roles inside a logical backup.
pub mod object {
    /// The `pg_dump -Fc` archive.
    pub const DUMP: &str = "dump";
    /// The cluster globals (`pg_dumpall --globals-only`).
    pub const GLOBALS: &str = "globals";
    /// The verification sidecar (row counts).
    pub const VERIFICATION: &str = "verification";
    /// The `pg_basebackup` tar of a physical backup.
    pub const BASE: &str = "base";
}

impl BackupManifest {
    /// The stored object of a role, or a manifest error naming it.
    pub fn object(&self, role: &str) -> Result<&StoredObject> {
        self.objects.get(role).ok_or_else(|| Error::Manifest {
            key: format!("backup {}", self.id),
            message: format!("it lists no {role} object"),
        })
    }

    /// Stored bytes of all objects (with the plaintext copy of the server's
    /// `backup_manifest`, when there is one).
    pub fn stored_size(&self) -> u64 {
        let copy = self
            .physical
            .as_ref()
            .and_then(|p| p.server_manifest.as_ref())
            .map_or(0, |o| o.size);
        self.objects
            .values()
            .map(|o| o.digest.stored_size)
            .sum::<u64>()
            + copy
    }

    /// The chain link of an incremental physical backup; `None` for full and logical
    /// backups.
    pub fn chain_link(&self) -> Option<&ChainLink> {
        self.physical.as_ref().and_then(|p| p.incremental.as_ref())
    }

    /// Raw bytes of the dump.
    pub fn raw_size(&self) -> u64 {
        self.objects.values().map(|o| o.digest.raw_size).sum()
    }

    /// Seconds from start to finish.
    pub fn duration_seconds(&self) -> f64 {
        (self.finished_at - self.started_at).num_milliseconds() as f64 / 1000.0
    }
}

/// A backup whose manifest exists but cannot be parsed: listed as DAMAGED, never
/// deleted by retention, and verified as a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedBackup {
    /// The backup id (its directory).
    pub id: String,
    /// The manifest's key.
    pub key: String,
    /// Why it cannot be read.
    pub reason: String,
}

/// What a repository holds for a policy: readable backups and damaged ones.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Backups whose manifests read, newest first.
    pub backups: Vec<BackupManifest>,
    /// Backups whose manifests cannot be parsed.
    pub damaged: Vec<DamagedBackup>,
}

/// One policy's view of a repository.
#[derive(Clone)]
pub struct Repository {
    storage: Arc<dyn Storage>,
    policy: String,
}

impl Repository {
    /// The repository of `policy` on a storage already open (a test's, or one shared by
    /// several views).
    pub fn new(storage: Arc<dyn Storage>, policy: &str) -> Self {
        Repository {
            storage,
            policy: policy.to_string(),
        }
    }

    /// Open the repository a policy names: the one place pgvault opens storage, so every
    /// command reaches the same bucket or directory with the same request settings.
    ///
    /// With `object_lock`, the storage is told which prefixes hold scratch objects
    /// ([`scratch_prefixes`]): those are stored without a lock.
    pub async fn open(policy: &Policy) -> Result<Self> {
        Repository::open_at(&policy.repository.storage, &policy.name).await
    }

    /// Open `settings` for `policy`: scratch objects (leases, stream chunks) stay
    /// unlocked when the location asks for Object Lock.
    async fn open_at(settings: &crate::storage::StorageSettings, policy: &str) -> Result<Self> {
        let mut settings = settings.clone();
        if let Some(lock) = settings.object_lock.as_mut() {
            lock.unlocked_prefixes = scratch_prefixes(policy);
        }
        let storage = crate::storage::open(&settings).await?;
        Ok(Repository::new(storage, policy))
    }

    /// Open the policy's copy named `name` (`[[repository.copies]]`): a repository of the
    /// same format in another place, read and written like the primary.
    pub async fn open_copy(policy: &Policy, name: &str) -> Result<Self> {
        let copy = policy.copy(name)?;
        Repository::open_at(&copy.repository.storage, &policy.name).await
    }

    /// The primary repository, or the copy `from_copy` names (what `--from-copy` picks).
    pub async fn open_from(policy: &Policy, from_copy: Option<&str>) -> Result<Self> {
        match from_copy {
            Some(name) => Repository::open_copy(policy, name).await,
            None => Repository::open(policy).await,
        }
    }

    /// The underlying storage.
    pub fn storage(&self) -> &dyn Storage {
        self.storage.as_ref()
    }

    /// The policy name.
    pub fn policy(&self) -> &str {
        &self.policy
    }

    /// Prefix of this policy's WAL archive (`<policy>/wal/`, one folder per timeline).
    pub fn wal_prefix(&self) -> String {
        format!("{}/wal/", self.policy)
    }

    /// Prefix of all of this policy's backups.
    pub fn backups_prefix(&self) -> String {
        format!("{}/backups/", self.policy)
    }

    /// Key of a named object in a backup's directory.
    pub fn object_key(&self, id: &str, file: &str) -> String {
        format!("{}/backups/{id}/{file}", self.policy)
    }

    /// Store the manifest: the act that makes a backup exist.
    pub async fn write_manifest(&self, manifest: &BackupManifest) -> Result<()> {
        let json = serde_json::to_vec_pretty(manifest)
            .map_err(|e| Error::Invalid(format!("cannot encode manifest: {e}")))?;
        self.storage
            .put(&self.object_key(&manifest.id, MANIFEST), Bytes::from(json))
            .await
    }

    /// Load one backup's manifest.
    pub async fn load_manifest(&self, id: &str) -> Result<BackupManifest> {
        let key = self.object_key(id, MANIFEST);
        let bytes = match self.storage.get(&key).await {
            Ok(b) => b,
            Err(Error::ObjectNotFound { .. }) => {
                return Err(Error::BackupNotFound {
                    policy: self.policy.clone(),
                    id: id.to_string(),
                })
            }
            Err(e) => return Err(e),
        };
        parse_manifest(&key, &bytes)
    }

    /// All backups of the policy whose manifests can be read, newest first. A damaged
    /// manifest is left out (see [`Repository::catalog`]): one unreadable backup must
    /// not stop the others from being listed, restored or retained.
    pub async fn list_backups(&self) -> Result<Vec<BackupManifest>> {
        Ok(self.catalog().await?.backups)
    }

    /// Every backup of the policy: those whose manifests read, newest first, and those
    /// whose manifests exist but cannot be parsed. A manifest that cannot be *fetched*
    /// (a storage failure) is an error, never "damaged".
    pub async fn catalog(&self) -> Result<Catalog> {
        let objects = self.storage.list(&self.backups_prefix()).await?;
        let keys: Vec<String> = objects
            .into_iter()
            .map(|o| o.key)
            .filter(|k| k.ends_with(&format!("/{MANIFEST}")))
            .collect();
        let storage = self.storage.clone();
        let read: Vec<(String, Result<BackupManifest>)> = futures::stream::iter(keys)
            .map(|key| {
                let storage = storage.clone();
                async move {
                    let parsed = match storage.get(&key).await {
                        Ok(bytes) => parse_manifest(&key, &bytes),
                        Err(e) => Err(e),
                    };
                    (key, parsed)
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        let mut catalog = Catalog::default();
        for (key, parsed) in read {
            match parsed {
                Ok(m) => catalog.backups.push(m),
                Err(Error::Manifest { message, .. }) => {
                    let id = key
                        .strip_prefix(&self.backups_prefix())
                        .and_then(|rest| rest.split('/').next())
                        .unwrap_or(&key)
                        .to_string();
                    tracing::warn!(backup = %id, key = %key, reason = %message, "backup manifest is damaged; the backup is listed as DAMAGED and left alone");
                    catalog.damaged.push(DamagedBackup {
                        id,
                        key,
                        reason: message,
                    });
                }
                Err(e) => return Err(e),
            }
        }
        catalog
            .backups
            .sort_by(|a, b| b.started_at.cmp(&a.started_at).then(b.id.cmp(&a.id)));
        catalog.damaged.sort_by(|a, b| b.id.cmp(&a.id));
        Ok(catalog)
    }

    /// Resolve `latest` or an id (a unique prefix of one is accepted) to a manifest, of
    /// the given kind when one is named.
    pub async fn resolve(
        &self,
        selector: &str,
        kind: Option<BackupKind>,
    ) -> Result<BackupManifest> {
        let catalog = self.catalog().await?;
        let all: Vec<BackupManifest> = catalog
            .backups
            .into_iter()
            .filter(|m| kind.is_none_or(|k| m.kind == k))
            .collect();
        // A damaged backup asked for by id is named as damaged, not as missing.
        if selector != "latest" && !all.iter().any(|m| m.id.starts_with(selector)) {
            if let Some(d) = catalog.damaged.iter().find(|d| d.id.starts_with(selector)) {
                return Err(Error::Manifest {
                    key: d.key.clone(),
                    message: d.reason.clone(),
                });
            }
        }
        let kind_text = kind.map(|k| format!(" ({k})")).unwrap_or_default();
        if selector == "latest" {
            return all.into_iter().next().ok_or_else(|| Error::NoBackups {
                policy: format!("{}{kind_text}", self.policy),
            });
        }
        let matches: Vec<BackupManifest> = all
            .into_iter()
            .filter(|m| m.id.starts_with(selector))
            .collect();
        match matches.len() {
            0 => Err(Error::BackupNotFound {
                policy: self.policy.clone(),
                id: format!("{selector}{kind_text}"),
            }),
            1 => Ok(matches.into_iter().next().ok_or_else(|| Error::NoBackups {
                policy: self.policy.clone(),
            })?),
            n => Err(Error::Invalid(format!(
                "backup id prefix {selector:?} matches {n} backups; give more of the id"
            ))),
        }
    }
}

/// Parse and check a manifest's format version.
pub fn parse_manifest(key: &str, bytes: &[u8]) -> Result<BackupManifest> {
    #[derive(Deserialize)]
    struct Version {
        format_version: u32,
    }
    let version: Version = serde_json::from_slice(bytes).map_err(|e| Error::Manifest {
        key: key.into(),
        message: e.to_string(),
    })?;
    if !READ_FORMAT_VERSIONS.contains(&version.format_version) {
        return Err(Error::Manifest {
            key: key.into(),
            message: format!(
                "format_version {} is not supported by {} (it reads versions {FORMAT_VERSION} to {ROTATED_FORMAT_VERSION}); upgrade pgvault",
                version.format_version,
                crate::TOOL_VERSION
            ),
        });
    }
    let manifest: BackupManifest = serde_json::from_slice(bytes).map_err(|e| Error::Manifest {
        key: key.into(),
        message: e.to_string(),
    })?;
    if manifest.chain_link().is_some() && manifest.format_version < INCREMENTAL_FORMAT_VERSION {
        // A reader of version 2 would restore its incremental files as whole ones.
        return Err(Error::Manifest {
            key: key.into(),
            message: format!(
                "an incremental backup must have format_version {INCREMENTAL_FORMAT_VERSION}, not {}",
                manifest.format_version
            ),
        });
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_are_unique() {
        let t1 = DateTime::parse_from_rfc3339("2026-11-28T03:15:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let t2 = DateTime::parse_from_rfc3339("2026-11-28T03:15:01Z")
            .unwrap()
            .with_timezone(&Utc);
        let a = new_backup_id(t1);
        let b = new_backup_id(t1);
        let c = new_backup_id(t2);
        assert!(a.starts_with("20261128T031500Z-"));
        assert_ne!(a, b);
        assert!(a < c && b < c);
    }

    #[test]
    fn unknown_format_version_is_refused() {
        let err = parse_manifest("m.json", br#"{"format_version": 99}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("format_version 99 is not supported"), "{err}");
    }
}
