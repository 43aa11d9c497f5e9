//! Copies: filling a policy's other repositories (`[[repository.copies]]`) from its
//! primary, for 3-2-1 backups, and measuring how far each copy lags.
//!
//! A copy is an ordinary repository of the same format (docs/FORMAT.md): everything in
//! it is what the primary holds, byte for byte, so every reader (`list`, `verify`,
//! `restore`, `wal-fetch`, drills) reads it with `--from-copy NAME`. [`copy`] copies:
//!
//! - the WAL archive (`wal/`, history files included), gap records (`wal-gaps/`) and
//!   stream chunks of growing segments (`wal-stream/`): first, so that a base backup
//!   that appears in the copy finds its WAL there;
//! - backups, oldest first (an incremental's ancestors before it), each with its objects
//!   and the plaintext server manifest copy, **the manifest last**, under a run lease in
//!   the copy: a backup appears in the copy complete or not at all (FORMAT §8, §16);
//! - restore-test reports (`reports/`), each report's JSON after its renders.
//!
//! Run leases and scratch objects of the primary are never copied. Stored bytes are
//! copied as they are: no key is needed. Each object is verified at both ends
//! ([`object::transfer`]): the bytes read from the source must match the manifest's
//! `stored_size`/`stored_sha256` (for objects without a record, such as WAL files, the
//! bytes read are the reference), and the bytes read back from the copy must match.
//!
//! **What a copy should hold** is decided by the copy's own retention
//! ([`crate::policy::Policy::retention_of_copy`]): the same planner `prune` uses, run
//! over the backups of both repositories, so a backup the copy's rules give up is not
//! copied again after `prune --copy` deleted it, and neither is WAL that no base backup
//! the copy keeps needs.
//!
//! **Idempotent and resumable.** An object already in the copy with the right size is
//! not copied again. A backup whose manifest is not yet in the copy (an interrupted
//! copy) has its objects' digests read back before they count as present; with
//! `verify_existing`, every object already in the copy is read back and checked, and
//! one that does not match is copied again (`repaired`).

pub mod lag;
pub mod object;

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, ErrorKind, Result};
use crate::physical::wal::{self, ArchivedWal};
use crate::policy::{CopyConfig, Policy, RetentionConfig};
use crate::repository::chain::chain_of;
use crate::repository::lease::RunLease;
use crate::repository::{BackupManifest, Catalog, Repository, MANIFEST};
use crate::retention::prune::plan_backups;
use object::{StoredDigest, Transfer};

/// Which backups to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every backup the copy's retention keeps that the copy does not hold.
    AllMissing,
    /// One backup (an id, a unique prefix of one, or `latest`), with its ancestors.
    Backup(String),
}

/// What `pgvault copy` is asked to do.
#[derive(Debug, Clone)]
pub struct CopyRequest {
    /// Which backups.
    pub selection: Selection,
    /// Read back every object already in the copy and copy again those whose digest
    /// does not match (without it, objects of complete backups are checked by size).
    pub verify_existing: bool,
}

/// What a copy did, for people (`pgvault copy`) and for `--json` (docs/CLI-JSON.md).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CopyReport {
    /// The copy's name.
    pub copy: String,
    /// Where the copy lives (`s3://bucket/prefix`, `file:///dir`).
    pub location: String,
    /// Backups that appeared in the copy, oldest first.
    pub backups_copied: Vec<String>,
    /// Backups the copy already held, complete.
    pub backups_present: usize,
    /// Backups the copy held with an object missing or damaged, now whole again.
    pub backups_repaired: Vec<String>,
    /// Backups of the primary the copy's retention does not keep, so not copied.
    pub left_out: Vec<String>,
    /// Backups of the primary whose manifests cannot be read, so not copied.
    pub damaged_in_source: Vec<String>,
    /// Archived WAL files copied (segments, history, backup and partial files).
    pub wal_files_copied: usize,
    /// Gap records, stream chunks and restore-test report files copied.
    pub other_objects_copied: usize,
    /// Objects the copy held with the wrong size or digest, copied again.
    pub objects_repaired: usize,
    /// Stored bytes written to the copy.
    pub bytes_copied: u64,
    /// What could not be copied, one line each (damaged source objects, conflicts).
    pub failures: Vec<String>,
}

impl CopyReport {
    /// Whether everything the copy should hold was copied.
    pub fn complete(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Where to copy to: the copy's repository, its retention and transfer settings.
pub struct CopyTarget<'a> {
    /// The copy's name.
    pub name: &'a str,
    /// Its repository.
    pub repo: &'a Repository,
    /// The rules that decide what it keeps (`None`: everything).
    pub retention: Option<&'a RetentionConfig>,
    /// Part size and parallelism of its uploads.
    pub transfer: Transfer,
}

/// Open `policy`'s primary and its copy `copy`, and [`copy`] into it.
pub async fn copy_to(
    policy: &Policy,
    copy_config: &CopyConfig,
    request: &CopyRequest,
    cancel: &CancellationToken,
) -> Result<CopyReport> {
    let source = Repository::open(policy).await?;
    let target = Repository::open_copy(policy, &copy_config.name).await?;
    copy(
        &source,
        &CopyTarget {
            name: &copy_config.name,
            repo: &target,
            retention: policy.retention_of_copy(copy_config),
            transfer: transfer_of(copy_config),
        },
        request,
        cancel,
    )
    .await
}

/// Where a copy lives, as its policy says it (`s3://bucket/prefix`, `file:///dir`), for
/// messages about a copy whose storage may not even open.
pub fn location_of(copy_config: &CopyConfig) -> String {
    match &copy_config.repository.storage.location {
        crate::storage::Location::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
        crate::storage::Location::Filesystem { root } => format!("file://{}", root.display()),
    }
}

/// The transfer settings of a copy: its `part_size` and `parts_in_flight`.
pub fn transfer_of(copy_config: &CopyConfig) -> Transfer {
    Transfer {
        part_size: copy_config.repository.part_size,
        parts_in_flight: copy_config.repository.parts_in_flight,
    }
}

/// What a copy should hold of the source's backups.
pub(crate) struct Wanted {
    /// Readable backups of the source the copy's rules keep, oldest first.
    pub(crate) backups: Vec<BackupManifest>,
    /// Backups of the source the copy's rules give up.
    pub(crate) left_out: Vec<String>,
    /// (start LSN, segment size) of every physical backup the copy keeps (of either
    /// repository): WAL older than all of them is not copied.
    pub(crate) starts: Vec<(u64, u64)>,
}

/// Plan what the copy should hold: the copy's retention over the backups of both
/// repositories (what `prune --copy` would keep after the copy), restricted to those
/// the source has. Without retention, everything.
pub(crate) fn wanted(
    source: &Catalog,
    target: &Catalog,
    retention: Option<&RetentionConfig>,
    now: DateTime<Utc>,
) -> Result<Wanted> {
    let in_source: HashSet<&str> = source.backups.iter().map(|m| m.id.as_str()).collect();
    let mut union: Vec<BackupManifest> = source.backups.clone();
    union.extend(
        target
            .backups
            .iter()
            .filter(|m| !in_source.contains(m.id.as_str()))
            .cloned(),
    );
    let kept: HashSet<String> = match retention {
        None => union.iter().map(|m| m.id.clone()).collect(),
        Some(config) => plan_backups(&union, &std::collections::HashMap::new(), config, now)?
            .entries
            .into_iter()
            .filter(|e| e.keep())
            .map(|e| e.backup.id)
            .collect(),
    };
    let mut backups: Vec<BackupManifest> = source
        .backups
        .iter()
        .filter(|m| kept.contains(&m.id))
        .cloned()
        .collect();
    backups.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
    let left_out = source
        .backups
        .iter()
        .filter(|m| !kept.contains(&m.id))
        .map(|m| m.id.clone())
        .collect();
    let starts = union
        .iter()
        .filter(|m| kept.contains(&m.id))
        .filter_map(|m| m.physical.as_ref())
        .map(|p| Ok((wal::parse_lsn(&p.start_lsn)?, p.wal_segment_size)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Wanted {
        backups,
        left_out,
        starts,
    })
}

/// The archived WAL files of `archive` a copy keeping base backups that start at
/// `starts` needs (all of them when it keeps no base backup), as retention sees it.
pub(crate) fn wal_wanted<'a>(
    archive: &'a [ArchivedWal],
    starts: &[(u64, u64)],
) -> Vec<&'a ArchivedWal> {
    let gone: HashSet<&str> = wal::wal_not_needed(archive, starts)
        .into_iter()
        .map(|a| a.key.as_str())
        .collect();
    archive
        .iter()
        .filter(|a| !gone.contains(a.key.as_str()))
        .collect()
}

/// Whether an error concerns one item (a damaged or missing object, a conflict), so
/// the copy goes on with the others; anything else (storage down, cancelled) stops it.
fn concerns_one_item(e: &Error) -> bool {
    e.kind() == ErrorKind::Corruption
        || matches!(
            e.root(),
            Error::ObjectNotFound { .. } | Error::WalConflict { .. }
        )
}

/// Everything one copy run works with.
struct Run<'a> {
    source: &'a Repository,
    target: &'a CopyTarget<'a>,
    verify_existing: bool,
    cancel: &'a CancellationToken,
}

/// How one object stood, and what was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Synced {
    /// The copy held it already.
    Present,
    /// It was missing and is now copied.
    Copied,
    /// The copy held it with the wrong size or digest; copied again.
    Repaired,
}

impl Run<'_> {
    /// Make the copy hold `key` as the source does. `recorded` is the digest a manifest
    /// records for it (else the source's bytes are the reference); `target_size` is its
    /// size in the copy (`None`: absent); `check_digest` reads back an object of the
    /// right size before it counts as present. Adds the bytes written to `bytes`.
    async fn sync(
        &self,
        key: &str,
        source_size: u64,
        recorded: Option<&StoredDigest>,
        target_size: Option<u64>,
        check_digest: bool,
        bytes: &mut u64,
    ) -> Result<Synced> {
        let (from, to) = (self.source.storage(), self.target.repo.storage());
        let transfer = self.target.transfer;
        let outcome = match target_size {
            None => Synced::Copied,
            Some(size) if size != source_size => Synced::Repaired,
            Some(_) if !check_digest => return Ok(Synced::Present),
            Some(size) => {
                let reference = match recorded {
                    Some(digest) => digest.clone(),
                    None => object::digest_of(from, key, source_size, transfer).await?,
                };
                if object::digest_of(to, key, size, transfer).await? == reference {
                    return Ok(Synced::Present);
                }
                tracing::warn!(copy = %self.target.name, key, "the copy holds a damaged object; copying it again");
                Synced::Repaired
            }
        };
        *bytes +=
            object::transfer(from, to, key, source_size, recorded, transfer, self.cancel).await?;
        Ok(outcome)
    }

    /// Sizes of every object under `prefix` in the copy.
    async fn target_sizes(&self, prefix: &str) -> Result<HashMap<String, u64>> {
        Ok(self
            .target
            .repo
            .storage()
            .list(prefix)
            .await?
            .into_iter()
            .map(|o| (o.key, o.size))
            .collect())
    }

    /// Copy one backup: its objects (missing or damaged ones), then its manifest, under
    /// a lease in the copy. Returns how the backup stood.
    async fn backup(
        &self,
        manifest: &BackupManifest,
        target_sizes: &HashMap<String, u64>,
        report: &mut CopyReport,
    ) -> Result<Synced> {
        let (source, target) = (self.source, self.target.repo);
        let manifest_key = source.object_key(&manifest.id, MANIFEST);
        let source_bytes = source.storage().get(&manifest_key).await?;
        let target_bytes = match target.storage().get(&manifest_key).await {
            Ok(bytes) => Some(bytes),
            Err(Error::ObjectNotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        let complete = target_bytes.as_ref() == Some(&source_bytes);
        // Objects rewrapped by a key rotation have no whole-object digest: the bytes read
        // from the primary are the reference, and the copy is checked afterwards against
        // the manifest's header and payload digests.
        let mut objects: Vec<(String, StoredDigest)> = Vec::new();
        let mut split_checked: Vec<(String, u64)> = Vec::new();
        for o in manifest.objects.values() {
            match &o.digest.stored_sha256 {
                Some(sha256) => objects.push((
                    o.key.clone(),
                    StoredDigest {
                        size: o.digest.stored_size,
                        sha256: sha256.clone(),
                    },
                )),
                None => split_checked.push((o.key.clone(), o.digest.stored_size)),
            }
        }
        if let Some(plain) = manifest
            .physical
            .as_ref()
            .and_then(|p| p.server_manifest.as_ref())
        {
            objects.push((
                plain.key.clone(),
                StoredDigest {
                    size: plain.size,
                    sha256: plain.sha256.clone(),
                },
            ));
        }
        let sizes_match = objects
            .iter()
            .map(|(key, digest)| (key, digest.size))
            .chain(split_checked.iter().map(|(key, size)| (key, *size)))
            .all(|(key, size)| target_sizes.get(key) == Some(&size));
        if complete && sizes_match && !self.verify_existing {
            return Ok(Synced::Present);
        }
        // The lease is taken before the first write, so the copy's own clean-up
        // (`prune --copy`) leaves a copy in progress alone.
        let lease = RunLease::acquire(target, &manifest.id, manifest.kind).await?;
        let mut repaired = false;
        let result = async {
            for (key, digest) in &objects {
                // Objects of a backup not yet complete in the copy (an interrupted copy)
                // are read back before they count; those of a complete one by size,
                // unless asked to verify.
                let check = !complete || self.verify_existing;
                let mut bytes = 0;
                let synced = self
                    .sync(
                        key,
                        digest.size,
                        Some(digest),
                        target_sizes.get(key).copied(),
                        check,
                        &mut bytes,
                    )
                    .await;
                report.bytes_copied += bytes;
                if synced? == Synced::Repaired {
                    report.objects_repaired += 1;
                    repaired = true;
                }
            }
            for (key, size) in &split_checked {
                let check = !complete || self.verify_existing;
                let mut bytes = 0;
                let synced = self
                    .sync(
                        key,
                        *size,
                        None,
                        target_sizes.get(key).copied(),
                        check,
                        &mut bytes,
                    )
                    .await;
                report.bytes_copied += bytes;
                if synced? == Synced::Repaired {
                    report.objects_repaired += 1;
                    repaired = true;
                }
                if check {
                    let expected = manifest
                        .objects
                        .values()
                        .find(|o| &o.key == key)
                        .map(|o| &o.digest)
                        .ok_or_else(|| Error::Internal(format!("{key} left the manifest")))?;
                    crate::pipeline::download_stream(
                        target.storage(),
                        key,
                        expected,
                        crate::pipeline::Decode::StoredOnly,
                        &[],
                        std::io::sink(),
                        2,
                        std::sync::Arc::new(crate::pipeline::Progress::default()),
                    )
                    .await
                    .map_err(|e| {
                        e.within(format!("checking {key} in the copy {}", self.target.name))
                    })?;
                }
            }
            if !complete {
                // The manifest last, as the primary's writer did: the act that makes the
                // backup exist in the copy. Its bytes are the primary's, unchanged.
                target
                    .storage()
                    .put(&manifest_key, source_bytes.clone())
                    .await?;
                let back = target.storage().get(&manifest_key).await?;
                if back != source_bytes {
                    return Err(Error::Integrity {
                        object: format!("{manifest_key} in {}", target.storage().describe()),
                        message: "the manifest read back from the copy differs from the primary's"
                            .into(),
                    });
                }
                report.bytes_copied += source_bytes.len() as u64;
            }
            Ok(())
        }
        .await;
        lease.release().await;
        result?;
        Ok(if !complete {
            Synced::Copied
        } else if repaired {
            Synced::Repaired
        } else {
            Synced::Present
        })
    }

    /// Copy the WAL archive files the copy needs (see [`wal_wanted`]), several at once.
    async fn wal(&self, starts: &[(u64, u64)], report: &mut CopyReport) -> Result<()> {
        let source_archive = wal::list_archive(self.source).await?;
        let target_archive = wal::list_archive(self.target.repo).await?;
        let in_target: HashMap<&str, u64> = target_archive
            .iter()
            .map(|a| (a.key.as_str(), a.stored_size))
            .collect();
        let mut by_name: HashMap<(u32, &str), &ArchivedWal> = HashMap::new();
        for a in &target_archive {
            by_name.insert((a.file.timeline, a.file.name.as_str()), a);
        }
        let mut todo = Vec::new();
        for a in wal_wanted(&source_archive, starts) {
            let present = in_target.get(a.key.as_str()).copied();
            if present.is_none() {
                if let Some(other) = by_name.get(&(a.file.timeline, a.file.name.as_str())) {
                    // The copy holds a different file under this name: never overwrite
                    // (FORMAT §15.2), and say so.
                    report.failures.push(format!(
                        "WAL file {}: the copy holds another file under this name ({}); not copied",
                        a.file.name, other.key
                    ));
                    continue;
                }
            }
            if present == Some(a.stored_size) && !self.verify_existing {
                continue;
            }
            todo.push((a, present));
        }
        // Several files at once: most are small, and each is a round trip or two.
        let parallel = self.target.transfer.parts_in_flight.max(1);
        let mut results: Vec<(&ArchivedWal, u64, Result<Synced>)> = Vec::new();
        for batch in todo.chunks(parallel) {
            let mut running = futures::stream::FuturesUnordered::new();
            for (a, present) in batch {
                running.push(self.wal_file(a, *present));
            }
            while let Some(done) = running.next().await {
                results.push(done);
            }
        }
        for (a, bytes, synced) in results {
            report.bytes_copied += bytes;
            match synced {
                Ok(Synced::Present) => {}
                Ok(Synced::Copied) => report.wal_files_copied += 1,
                Ok(Synced::Repaired) => {
                    report.wal_files_copied += 1;
                    report.objects_repaired += 1;
                }
                Err(e) if concerns_one_item(&e) => report
                    .failures
                    .push(format!("WAL file {}: {e}", a.file.name)),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Copy one archived WAL file (see [`Run::sync`]); returns it with the bytes written.
    async fn wal_file<'w>(
        &self,
        a: &'w ArchivedWal,
        present: Option<u64>,
    ) -> (&'w ArchivedWal, u64, Result<Synced>) {
        let mut bytes = 0;
        let synced = self
            .sync(&a.key, a.stored_size, None, present, true, &mut bytes)
            .await;
        (a, bytes, synced)
    }

    /// Copy `keys` (with their source sizes) in order, each one like a WAL file; a
    /// failed one is recorded under `what` and stops the rest of its `group`.
    async fn plain_objects(
        &self,
        what: &str,
        groups: Vec<Vec<(String, u64)>>,
        target_sizes: &HashMap<String, u64>,
        report: &mut CopyReport,
    ) -> Result<()> {
        for group in groups {
            for (key, size) in group {
                let mut bytes = 0;
                let synced = self
                    .sync(
                        &key,
                        size,
                        None,
                        target_sizes.get(&key).copied(),
                        self.verify_existing,
                        &mut bytes,
                    )
                    .await;
                report.bytes_copied += bytes;
                match synced {
                    Ok(Synced::Present) => {}
                    Ok(Synced::Copied) => report.other_objects_copied += 1,
                    Ok(Synced::Repaired) => {
                        report.other_objects_copied += 1;
                        report.objects_repaired += 1;
                    }
                    Err(e) if concerns_one_item(&e) => {
                        report.failures.push(format!("{what} {key}: {e}"));
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Gap records (`wal-gaps/`) the copy needs, and chunks of growing segments
    /// (`wal-stream/`) the primary's archive does not yet hold whole; then chunks in the
    /// copy whose segment the copy now holds whole are deleted, as the receiver does in
    /// the primary.
    async fn gaps_and_stream(&self, starts: &[(u64, u64)], report: &mut CopyReport) -> Result<()> {
        let (source, target) = (self.source, self.target.repo);
        let gaps = wal::gaps::list_gaps(source).await?;
        let gone: HashSet<&str> = wal::gaps::gaps_not_needed(&gaps, starts)
            .into_iter()
            .map(|g| g.key.as_str())
            .collect();
        let gap_sizes: HashMap<String, u64> = source
            .storage()
            .list(&format!("{}/wal-gaps/", source.policy()))
            .await?
            .into_iter()
            .map(|o| (o.key, o.size))
            .collect();
        let gap_groups = gaps
            .iter()
            .filter(|g| !gone.contains(g.key.as_str()))
            .filter_map(|g| {
                gap_sizes
                    .get(&g.key)
                    .map(|size| vec![(g.key.clone(), *size)])
            })
            .collect();
        let target_gaps = self
            .target_sizes(&format!("{}/wal-gaps/", target.policy()))
            .await?;
        self.plain_objects("gap record", gap_groups, &target_gaps, report)
            .await?;

        let archived: HashSet<(u32, String)> = wal::list_archive(source)
            .await?
            .into_iter()
            .map(|a| (a.file.timeline, a.file.name))
            .collect();
        let chunks = wal::stream::chunks_for_retention(source).await?;
        let chunk_groups = wal_wanted(&chunks, starts)
            .into_iter()
            .filter(|c| !archived.contains(&(c.file.timeline, c.file.name.clone())))
            .map(|c| vec![(c.key.clone(), c.stored_size)])
            .collect();
        let target_chunks = self
            .target_sizes(&wal::stream::stream_prefix(target))
            .await?;
        self.plain_objects("stream chunk", chunk_groups, &target_chunks, report)
            .await?;

        let whole: HashSet<(u32, String)> = wal::list_archive(target)
            .await?
            .into_iter()
            .map(|a| (a.file.timeline, a.file.name))
            .collect();
        for chunk in wal::stream::chunks_for_retention(target).await? {
            if whole.contains(&(chunk.file.timeline, chunk.file.name.clone())) {
                target.storage().delete(&chunk.key).await?;
            }
        }
        Ok(())
    }

    /// Restore-test reports, oldest first, each report's JSON after its renders (a
    /// report exists when its JSON does, FORMAT §14); the hash chain is kept because
    /// the bytes are.
    async fn reports(&self, report: &mut CopyReport) -> Result<()> {
        let prefix = format!("{}/reports/", self.source.policy());
        let mut by_id: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        for o in self.source.storage().list(&prefix).await? {
            let Some((id, _extension)) = o
                .key
                .strip_prefix(&prefix)
                .and_then(|rest| rest.rsplit_once('.'))
            else {
                continue;
            };
            by_id
                .entry(id.to_string())
                .or_default()
                .push((o.key.clone(), o.size));
        }
        for files in by_id.values_mut() {
            files.sort_by_key(|(key, _)| key.ends_with(".json"));
        }
        let target_sizes = self
            .target_sizes(&format!("{}/reports/", self.target.repo.policy()))
            .await?;
        self.plain_objects(
            "report file",
            by_id.into_values().collect(),
            &target_sizes,
            report,
        )
        .await
    }
}

/// Copy only the WAL the copy lacks (the archive, gap records, stream chunks), not
/// backups or reports: what a point-in-time drill against the copy needs to reach the
/// anchor commit it just made on the source.
pub async fn copy_wal(
    source: &Repository,
    target: &CopyTarget<'_>,
    cancel: &CancellationToken,
) -> Result<CopyReport> {
    let mut report = CopyReport {
        copy: target.name.to_string(),
        location: target.repo.storage().describe(),
        ..CopyReport::default()
    };
    let run = Run {
        source,
        target,
        verify_existing: false,
        cancel,
    };
    let plan = wanted(
        &source.catalog().await?,
        &target.repo.catalog().await?,
        target.retention,
        Utc::now(),
    )?;
    crate::stop_signal::unless_cancelled(cancel, async {
        run.wal(&plan.starts, &mut report).await?;
        run.gaps_and_stream(&plan.starts, &mut report).await
    })
    .await?;
    Ok(report)
}

/// Copy `source` into `target` as `request` says; see the module documentation for
/// what, in which order, and how it is verified. Items that cannot be copied because
/// their source is damaged (or the copy holds a conflicting file) are listed in
/// [`CopyReport::failures`] and the rest is copied; a storage failure or `cancel` stops
/// the copy with an error (run it again to resume).
pub async fn copy(
    source: &Repository,
    target: &CopyTarget<'_>,
    request: &CopyRequest,
    cancel: &CancellationToken,
) -> Result<CopyReport> {
    let mut report = CopyReport {
        copy: target.name.to_string(),
        location: target.repo.storage().describe(),
        ..CopyReport::default()
    };
    let run = Run {
        source,
        target,
        verify_existing: request.verify_existing,
        cancel,
    };
    // Backups are listed before the WAL, so the WAL copied below covers every listed
    // base backup (a base backup's manifest is written after its WAL is archived).
    let source_catalog = source.catalog().await?;
    let target_catalog = target.repo.catalog().await?;
    report.damaged_in_source = source_catalog
        .damaged
        .iter()
        .map(|d| d.id.clone())
        .collect();
    let mut plan = wanted(
        &source_catalog,
        &target_catalog,
        target.retention,
        Utc::now(),
    )?;
    let backups = match &request.selection {
        Selection::AllMissing => {
            report.left_out = plan.left_out.clone();
            std::mem::take(&mut plan.backups)
        }
        Selection::Backup(selector) => {
            let chosen = source.resolve(selector, None).await?;
            let mut known = source_catalog.backups.clone();
            known.extend(target_catalog.backups.iter().cloned());
            let in_source: HashSet<&str> = source_catalog
                .backups
                .iter()
                .map(|m| m.id.as_str())
                .collect();
            let chain: Vec<BackupManifest> = chain_of(&chosen, &known)?
                .into_iter()
                .filter(|m| in_source.contains(m.id.as_str()))
                .collect();
            for m in &chain {
                if let Some(p) = &m.physical {
                    plan.starts
                        .push((wal::parse_lsn(&p.start_lsn)?, p.wal_segment_size));
                }
            }
            chain
        }
    };
    crate::stop_signal::unless_cancelled(cancel, async {
        run.wal(&plan.starts, &mut report).await?;
        run.gaps_and_stream(&plan.starts, &mut report).await?;
        let target_sizes = run.target_sizes(&target.repo.backups_prefix()).await?;
        for manifest in &backups {
            if manifest
                .objects
                .values()
                .any(|o| o.digest.rotating_to.is_some())
            {
                // Its objects may carry either header until the rotation is done; copying
                // now could pair a new header with the old recorded size.
                report.failures.push(format!(
                    "backup {}: a key rotation is rewriting it in the primary; it is copied on a later run",
                    manifest.id
                ));
                continue;
            }
            match run.backup(manifest, &target_sizes, &mut report).await {
                Ok(Synced::Copied) => {
                    tracing::info!(copy = %target.name, backup = %manifest.id, "backup copied");
                    report.backups_copied.push(manifest.id.clone());
                }
                Ok(Synced::Repaired) => report.backups_repaired.push(manifest.id.clone()),
                Ok(Synced::Present) => report.backups_present += 1,
                Err(e) if concerns_one_item(&e) => {
                    report.failures.push(format!("backup {}: {e}", manifest.id))
                }
                Err(e) => return Err(e),
            }
        }
        run.reports(&mut report).await
    })
    .await?;
    Ok(report)
}

#[cfg(test)]
mod tests;
