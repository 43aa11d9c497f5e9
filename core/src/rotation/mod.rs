//! Key rotation: change who can decrypt a repository without taking new backups.
//!
//! Every encrypted object is an age file whose header wraps the object's file key to each
//! recipient. `pgvault keys rotate` opens each header with an identity the operator still
//! holds, wraps the same file key to the new set of recipients and replaces the header in
//! place ([`object::replace_header`]): the payload bytes stay as stored, so a rotation moves
//! a few MiB per large object instead of the repository.
//!
//! Order and crash safety, per backup:
//! 1. the new header of each object is computed and recorded in the manifest as
//!    `rotating_to` (readers accept either header from then on; the whole-object digest
//!    gives way to the header and payload digests, format version 4);
//! 2. each object is replaced (atomically, by one request or one multipart upload);
//! 3. the manifest records the new headers and recipients.
//!
//! A rerun after an interruption finds objects already carrying their `rotating_to`
//! header and leaves them; the others get a fresh header. WAL and stream chunks have no
//! manifest: the digests of the headers written are journalled in the rotation's record
//! before the objects change, so a rerun recognises them even when the identity used can
//! no longer open them. The record, kept at `<policy>/keys/rotations/<id>.json`, is also
//! the audit trail: when, by which key, which recipients were added and removed.

pub mod object;

use std::collections::BTreeSet;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::keys::header::{self, AgeHeader};
use crate::keys::{fingerprint, Identities, Recipients};
use crate::pipeline;
use crate::repository::lease::RunLease;
use crate::repository::{BackupKind, BackupManifest, Repository, ROTATED_FORMAT_VERSION};
use object::Moved;

/// Prefix of the rotation records of a policy.
pub fn records_prefix(repo: &Repository) -> String {
    format!("{}/keys/rotations/", repo.policy())
}

/// WAL objects handled between two saves of the record's journal.
const WAL_BATCH: usize = 64;
/// WAL objects rewritten at once.
const WAL_PARALLEL: usize = 8;

/// Whether a rotation is under way or done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RotationState {
    /// Started and not finished (running, or interrupted: rerun the command).
    Running,
    /// Every backup and WAL object was handled.
    Finished,
}

/// The audit record of one key rotation, stored in the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationRecord {
    /// Time-ordered id (same shape as backup ids).
    pub id: String,
    /// The policy.
    pub policy: String,
    /// Running or finished.
    pub state: RotationState,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// The host that ran it.
    pub host: String,
    /// The operating-system user that ran it.
    pub user: String,
    /// The pgvault that ran it.
    pub tool_version: String,
    /// Fingerprints of the identity file's keys: who authorised the change.
    pub by: Vec<String>,
    /// Recipients the backups were encrypted to before (fingerprints, union over backups).
    pub recipients_before: Vec<String>,
    /// Recipients every object is encrypted to afterwards, in policy order.
    pub recipients_after: Vec<String>,
    /// Fingerprints added.
    pub added: Vec<String>,
    /// Fingerprints removed.
    pub removed: Vec<String>,
    /// Backups rewrapped so far.
    pub backups_rewrapped: u64,
    /// WAL files and stream chunks rewrapped so far.
    pub wal_rewrapped: u64,
    /// Bytes read and written through pgvault so far.
    pub bytes_moved: u64,
    /// Bytes stored in the objects handled so far.
    pub stored_bytes: u64,
    /// sha256 of every WAL header written: how a rerun recognises finished WAL objects.
    #[serde(default)]
    pub wal_headers: BTreeSet<String>,
    /// Backups the identities given could not open: they keep their recipients (for
    /// example encrypted only to a lost key).
    #[serde(default)]
    pub backups_left: Vec<String>,
    /// WAL files and stream chunks the identities given could not open.
    #[serde(default)]
    pub wal_left: u64,
}

/// What the operator asked for.
pub struct RotateRequest<'a> {
    /// Opens the current headers.
    pub identities: &'a Identities,
    /// The policy's recipients.
    pub policy_recipients: &'a Recipients,
    /// Public keys to add (`age1…`).
    pub add: &'a [String],
    /// Keys to remove: `age1…` or their fingerprints.
    pub remove: &'a [String],
}

/// What a rotation did.
#[derive(Debug, Clone)]
pub struct RotationOutcome {
    /// The record as stored at the end.
    pub record: RotationRecord,
    /// Backups already encrypted to the new recipients (earlier run).
    pub backups_already: u64,
    /// WAL objects already rewrapped by this rotation (earlier run).
    pub wal_already: u64,
    /// WAL objects the identity cannot open: written to other keys (e.g. after the policy
    /// changed); left as they are.
    pub wal_not_opened: Vec<String>,
    /// Backups the identity cannot open, with the reason: left as they are.
    pub backups_not_opened: Vec<(String, String)>,
    /// Backups and WAL objects whose rewrapping failed, with the reason: the rotation
    /// stays unfinished, and running it again resumes it.
    pub failed: Vec<(String, String)>,
    /// The new recipients, when they differ from the policy's: the policy must be changed
    /// too, or new backups keep the old keys.
    pub policy_differs: bool,
}

/// The recipients after the change: the policy's, plus `add`, minus `remove`.
pub fn target_recipients(request: &RotateRequest<'_>) -> Result<Recipients> {
    let mut target = Recipients::default();
    let mut seen = BTreeSet::new();
    let removed: BTreeSet<String> = request
        .remove
        .iter()
        .map(|r| {
            if r.starts_with("sha256:") {
                r.clone()
            } else {
                fingerprint(r)
            }
        })
        .collect();
    let mut candidates: Vec<String> = request.policy_recipients.keys_text();
    candidates.extend(request.add.iter().map(|k| k.trim().to_string()));
    for key in candidates {
        let fp = fingerprint(&key);
        if removed.contains(&fp) || !seen.insert(fp) {
            continue;
        }
        target.add(&key).map_err(Error::Invalid)?;
    }
    if target.is_empty() {
        return Err(Error::Invalid(
            "after the change no recipient would be left: every backup would be unreadable. Add a key with --add".into(),
        ));
    }
    Ok(target)
}

/// Every rotation record of the policy, oldest first.
pub async fn list_records(repo: &Repository) -> Result<Vec<RotationRecord>> {
    let mut records = Vec::new();
    for info in repo.storage().list(&records_prefix(repo)).await? {
        if !info.key.ends_with(".json") {
            continue;
        }
        let bytes = repo.storage().get(&info.key).await?;
        let record: RotationRecord =
            serde_json::from_slice(&bytes).map_err(|e| Error::Manifest {
                key: info.key.clone(),
                message: format!("not a rotation record: {e}"),
            })?;
        records.push(record);
    }
    records.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(records)
}

async fn save(repo: &Repository, record: &RotationRecord) -> Result<()> {
    let json = serde_json::to_vec_pretty(record)
        .map_err(|e| Error::Internal(format!("cannot encode the rotation record: {e}")))?;
    repo.storage()
        .put(
            &format!("{}{}.json", records_prefix(repo), record.id),
            Bytes::from(json),
        )
        .await
}

/// Rewrap every backup and WAL object of `repo` to the recipients `request` names.
/// Resumes an interrupted rotation to the same recipients; refuses to start while one to
/// other recipients is unfinished.
pub async fn rotate(repo: &Repository, request: &RotateRequest<'_>) -> Result<RotationOutcome> {
    let target = target_recipients(request)?;
    let target_fps = target.fingerprints();
    let catalog = repo.catalog().await?;
    let mut before: Vec<String> = Vec::new();
    for m in &catalog.backups {
        for fp in &m.encryption.recipients {
            if !before.contains(fp) {
                before.push(fp.clone());
            }
        }
    }
    let known: Vec<String> = before
        .iter()
        .cloned()
        .chain(request.policy_recipients.fingerprints())
        .chain(request.add.iter().map(|k| fingerprint(k)))
        .collect();
    for value in request.remove {
        let fp = if value.starts_with("sha256:") {
            value.clone()
        } else {
            fingerprint(value)
        };
        if !known.contains(&fp) {
            return Err(Error::Invalid(format!(
                "--remove {value} ({fp}) is not a recipient of the policy or of any backup: check the key; nothing was changed"
            )));
        }
    }
    let records = list_records(repo).await?;
    let leases = crate::repository::lease::read_leases(repo).await?;
    let mut record = match records
        .iter()
        .rev()
        .find(|r| r.state == RotationState::Running)
    {
        Some(running)
            if crate::repository::lease::liveness(leases.get(&lease_id(&running.id)), Utc::now())
                == crate::repository::lease::Liveness::Running =>
        {
            return Err(Error::Invalid(format!(
                "key rotation {} is running now (started {} on {}); wait for it to finish",
                running.id,
                running.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
                running.host
            )))
        }
        Some(running) if running.recipients_after == target_fps => {
            tracing::info!(id = %running.id, "resuming the unfinished key rotation");
            let mut resumed = running.clone();
            for fp in request.identities.fingerprints() {
                if !resumed.by.contains(&fp) {
                    resumed.by.push(fp);
                }
            }
            resumed
        }
        Some(running) => {
            return Err(Error::Invalid(format!(
                "key rotation {} to {} is unfinished; run `pgvault keys rotate` again with the same --add/--remove to finish it before starting another",
                running.id,
                running.recipients_after.join(", ")
            )))
        }
        None => {
            let started_at = Utc::now();
            // WAL rewrapped by the last finished rotation to the same keys is done.
            let wal_headers = records
                .iter()
                .rev()
                .find(|r| r.recipients_after == target_fps)
                .map(|r| r.wal_headers.clone())
                .unwrap_or_default();
            RotationRecord {
                id: crate::repository::new_backup_id(started_at),
                policy: repo.policy().to_string(),
                state: RotationState::Running,
                started_at,
                finished_at: None,
                host: crate::notify::host_name(),
                user: std::env::var("USER").unwrap_or_default(),
                tool_version: crate::TOOL_VERSION.to_string(),
                by: request.identities.fingerprints(),
                added: target_fps
                    .iter()
                    .filter(|f| !before.contains(f))
                    .cloned()
                    .collect(),
                removed: before
                    .iter()
                    .filter(|f| !target_fps.contains(f))
                    .cloned()
                    .collect(),
                recipients_before: before.clone(),
                recipients_after: target_fps.clone(),
                backups_rewrapped: 0,
                wal_rewrapped: 0,
                bytes_moved: 0,
                stored_bytes: 0,
                wal_headers,
                backups_left: Vec::new(),
                wal_left: 0,
            }
        }
    };
    record.backups_left.clear();
    record.wal_left = 0;
    // While this lease lives, another rotation refuses to start and prune leaves the
    // rotation's uploads alone.
    let lease = RunLease::acquire(repo, &lease_id(&record.id), BackupKind::Logical).await?;
    let result = rotate_under_lease(repo, request, &target, &catalog, &records, &mut record).await;
    lease.release().await;
    let mut outcome = result?;
    outcome.record = record;
    Ok(outcome)
}

/// The lease id of rotation `id`, under `<policy>/runs/` with the backups' leases.
pub fn lease_id(id: &str) -> String {
    format!("{}{id}", crate::repository::lease::ROTATION_LEASE_PREFIX)
}

async fn rotate_under_lease(
    repo: &Repository,
    request: &RotateRequest<'_>,
    target: &Recipients,
    catalog: &crate::repository::Catalog,
    records: &[RotationRecord],
    record: &mut RotationRecord,
) -> Result<RotationOutcome> {
    let target_fps = target.fingerprints();

    let mut outcome = RotationOutcome {
        record: record.clone(),
        backups_already: 0,
        wal_already: 0,
        wal_not_opened: Vec::new(),
        backups_not_opened: Vec::new(),
        failed: Vec::new(),
        policy_differs: request.policy_recipients.fingerprints() != target_fps,
    };
    // Oldest first: the order a reader of the record expects.
    let mut backups = catalog.backups.clone();
    backups.reverse();
    for manifest in backups {
        let done = manifest.encryption.recipients == target_fps
            && manifest
                .objects
                .values()
                .all(|o| o.digest.rotating_to.is_none());
        if done {
            outcome.backups_already += 1;
            continue;
        }
        let id = manifest.id.clone();
        let plan = match plan_backup(repo, manifest, request.identities, target).await {
            Ok(plan) => plan,
            Err(e @ Error::WrongKey { .. }) => {
                record.backups_left.push(id.clone());
                outcome.backups_not_opened.push((id, e.to_string()));
                continue;
            }
            Err(e) if gone(repo, &id, &e).await => continue,
            Err(e) => {
                outcome.failed.push((id, e.to_string()));
                continue;
            }
        };
        // The record exists before the first object changes.
        save(repo, record).await?;
        match execute_backup(repo, plan, target).await {
            Ok((moved, stored)) => {
                record.backups_rewrapped += 1;
                record.bytes_moved += moved.total();
                record.stored_bytes += stored;
                save(repo, record).await?;
            }
            Err(e) if gone(repo, &id, &e).await => {}
            Err(e) => outcome.failed.push((id, e.to_string())),
        }
    }

    rotate_wal(repo, request.identities, target, record, &mut outcome).await?;

    let nothing_done = record.backups_rewrapped == 0 && record.wal_rewrapped == 0;
    let fresh = !records.iter().any(|r| r.id == record.id);
    if outcome.failed.is_empty() {
        record.state = RotationState::Finished;
        record.finished_at = Some(Utc::now());
    }
    // A run that changed nothing (nothing left to do, or nothing it could open) leaves no
    // record: the audit trail lists changes.
    if !(nothing_done && fresh && outcome.failed.is_empty()) {
        save(repo, record).await?;
    }
    Ok(outcome)
}

/// Whether `error` on backup `id` only means that the backup was deleted meanwhile (by
/// retention): then it is skipped, not failed.
async fn gone(repo: &Repository, id: &str, error: &Error) -> bool {
    matches!(
        error,
        Error::ObjectNotFound { .. } | Error::BackupNotFound { .. }
    ) && matches!(
        repo.load_manifest(id).await,
        Err(Error::BackupNotFound { .. })
    )
}

/// What step 1 of one backup decided: the manifest with `rotating_to` set, and the
/// objects still to replace (key, old header length, new header).
struct BackupPlan {
    manifest: BackupManifest,
    pending: Vec<(String, u64, Vec<u8>)>,
    moved: Moved,
}

/// Read and open every object's header and compute the new ones; nothing is written.
/// [`Error::WrongKey`] when the identities open none of them.
async fn plan_backup(
    repo: &Repository,
    mut manifest: BackupManifest,
    identities: &Identities,
    target: &Recipients,
) -> Result<BackupPlan> {
    let mut moved = Moved::default();
    let mut pending: Vec<(String, u64, Vec<u8>)> = Vec::new();
    let backup_recipients = manifest.encryption.recipients.clone();
    for stored in manifest.objects.values_mut() {
        let digest = &mut stored.digest;
        let (current, read) = object::read_header(repo.storage(), &stored.key).await?;
        moved.read += read;
        let found = object::digest_of(current.bytes());
        if digest.rotating_to.as_ref() == Some(&found) {
            continue; // replaced by an earlier, interrupted run
        }
        if digest.age_header.is_none() || digest.payload_sha256.is_none() {
            // Written before header and payload digests were recorded: read it once.
            let (header, payload) =
                pipeline::split_digests(repo.storage(), &stored.key, digest).await?;
            moved.read += digest.stored_size;
            digest.age_header = Some(header);
            digest.payload_sha256 = Some(payload);
        }
        if digest.age_header.as_ref() != Some(&found) {
            return Err(Error::Integrity {
                object: stored.key.clone(),
                message: format!(
                    "its age header ({}) is neither the one the manifest records nor the one a rotation was writing",
                    found.sha256
                ),
            });
        }
        let Some(file_key) = current.open(&stored.key, identities)? else {
            return Err(Error::WrongKey {
                identity_file: identities.path().to_path_buf(),
                recipients: backup_recipients.clone(),
            });
        };
        let new_header = header::wrap(&file_key, target)?;
        digest.rotating_to = Some(object::digest_of(&new_header));
        digest.stored_sha256 = None;
        pending.push((stored.key.clone(), current.len(), new_header));
    }
    manifest.format_version = manifest.format_version.max(ROTATED_FORMAT_VERSION);
    Ok(BackupPlan {
        manifest,
        pending,
        moved,
    })
}

/// Write a manifest only while the backup still exists: a backup that retention deleted
/// meanwhile must not come back as a manifest without its objects.
async fn write_if_present(repo: &Repository, manifest: &BackupManifest) -> Result<()> {
    let key = repo.object_key(&manifest.id, crate::repository::MANIFEST);
    if repo.storage().size(&key).await?.is_none() {
        return Err(Error::BackupNotFound {
            policy: repo.policy().to_string(),
            id: manifest.id.clone(),
        });
    }
    repo.write_manifest(manifest).await
}

/// Steps 1 to 3 of one backup (see the module documentation) from its plan. Returns the
/// bytes moved and the bytes stored in its objects.
async fn execute_backup(
    repo: &Repository,
    plan: BackupPlan,
    target: &Recipients,
) -> Result<(Moved, u64)> {
    let BackupPlan {
        mut manifest,
        pending,
        mut moved,
    } = plan;
    write_if_present(repo, &manifest).await?;
    for (key, old_len, new_header) in &pending {
        let size = manifest
            .objects
            .values()
            .find(|o| &o.key == key)
            .map(|o| o.digest.stored_size)
            .unwrap_or_default();
        moved.add(object::replace_header(repo.storage(), key, size, *old_len, new_header).await?);
    }

    let mut stored_bytes = 0;
    for stored in manifest.objects.values_mut() {
        let digest = &mut stored.digest;
        if let (Some(new), Some(payload)) = (digest.rotating_to.take(), digest.payload_size()) {
            digest.stored_size = new.size + payload;
            digest.age_header = Some(new);
        }
        stored_bytes += digest.stored_size;
    }
    manifest.encryption.recipients = target.fingerprints();
    write_if_present(repo, &manifest).await?;
    Ok((moved, stored_bytes))
}

/// One WAL object's plan: its key and size, its current header, and the new header.
struct WalPlan {
    key: String,
    size: u64,
    old_len: u64,
    new_header: Vec<u8>,
}

/// Rewrap the WAL archive and the stream chunks, in batches whose new header digests are
/// journalled in the record before the objects change.
async fn rotate_wal(
    repo: &Repository,
    identities: &Identities,
    target: &Recipients,
    record: &mut RotationRecord,
    outcome: &mut RotationOutcome,
) -> Result<()> {
    let mut objects = Vec::new();
    for prefix in [
        repo.wal_prefix(),
        crate::physical::wal::stream::stream_prefix(repo),
    ] {
        objects.extend(
            repo.storage()
                .list(&prefix)
                .await?
                .into_iter()
                .filter(|o| o.key.ends_with(".age")),
        );
    }
    for batch in objects.chunks(WAL_BATCH) {
        let mut plans = Vec::new();
        for info in batch {
            let (current, read): (AgeHeader, u64) =
                match object::read_header(repo.storage(), &info.key).await {
                    Ok(h) => h,
                    Err(Error::ObjectNotFound { .. }) => continue, // pruned meanwhile
                    Err(e) if e.is_retryable() => return Err(e),
                    Err(e) => {
                        // One damaged file must not stop the others.
                        outcome.failed.push((info.key.clone(), e.to_string()));
                        continue;
                    }
                };
            record.bytes_moved += read;
            if record.wal_headers.contains(&current.sha256()) {
                outcome.wal_already += 1;
                continue;
            }
            let file_key = match current.open(&info.key, identities) {
                Ok(Some(file_key)) => file_key,
                Ok(None) => {
                    record.wal_left += 1;
                    outcome.wal_not_opened.push(info.key.clone());
                    continue;
                }
                Err(e) => {
                    outcome.failed.push((info.key.clone(), e.to_string()));
                    continue;
                }
            };
            let new_header = header::wrap(&file_key, target)?;
            record
                .wal_headers
                .insert(object::digest_of(&new_header).sha256);
            plans.push(WalPlan {
                key: info.key.clone(),
                size: info.size,
                old_len: current.len(),
                new_header,
            });
        }
        if plans.is_empty() {
            continue;
        }
        save(repo, record).await?;
        let results: Vec<(&str, Result<(u64, Moved)>)> = futures::stream::iter(plans.iter())
            .map(|p| async move {
                let moved = object::replace_header(
                    repo.storage(),
                    &p.key,
                    p.size,
                    p.old_len,
                    &p.new_header,
                )
                .await;
                let stored = p.size - p.old_len + p.new_header.len() as u64;
                (p.key.as_str(), moved.map(|m| (stored, m)))
            })
            .buffer_unordered(WAL_PARALLEL)
            .collect()
            .await;
        for (key, result) in results {
            match result {
                Ok((stored, moved)) => {
                    record.wal_rewrapped += 1;
                    record.bytes_moved += moved.total();
                    record.stored_bytes += stored;
                }
                Err(Error::ObjectNotFound { .. }) => {}
                Err(e) => outcome.failed.push((key.to_string(), e.to_string())),
            }
        }
        save(repo, record).await?;
    }
    Ok(())
}
