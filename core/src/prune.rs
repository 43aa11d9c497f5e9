//! Carrying out retention on a repository: deleting the backups a [`RetentionPlan`]
//! gives up, and cleaning up what crashed runs left behind.
//!
//! Deletion removes a backup's manifest first, so the backup stops existing atomically;
//! its data objects go next. A prune interrupted half-way leaves only orphans (data
//! without a manifest), never a listed backup without its data. Orphans and pending
//! multipart uploads are removed only when older than the policy's `orphan_min_age`,
//! so a backup that is still running is never touched.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDateTime, Utc};

use crate::error::Result;
use crate::policy::RetentionConfig;
use crate::repository::{BackupKind, Repository, MANIFEST};
use crate::retention::{self, BackupRef, RetentionPlan};
use crate::storage::PendingUpload;

/// A backup directory without a manifest.
#[derive(Debug, Clone)]
pub struct Orphan {
    /// The backup id (directory name).
    pub id: String,
    /// Its objects.
    pub keys: Vec<String>,
    /// When it was started, from the id.
    pub started: Option<DateTime<Utc>>,
}

/// What a prune will do (or did).
#[derive(Debug, Clone)]
pub struct PrunePlan {
    /// KEEP/DELETE per backup with reasons.
    pub retention: RetentionPlan,
    /// Orphan directories old enough to remove.
    pub orphans: Vec<Orphan>,
    /// Pending uploads old enough to abort.
    pub stale_uploads: Vec<PendingUpload>,
    /// Orphans and uploads left alone because they are recent (maybe a running backup).
    pub recent_leftovers: usize,
    /// Archived WAL files no retained base backup needs (see [`crate::wal::wal_not_needed`]).
    pub wal_to_delete: Vec<String>,
}

/// The start time encoded in a backup id (`YYYYMMDDTHHMMSSZ-…`).
pub fn id_time(id: &str) -> Option<DateTime<Utc>> {
    let stamp = id.split('-').next()?;
    NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|t| t.and_utc())
}

/// Plan a prune of `repo` at `now`. Reads the repository; changes nothing.
pub async fn plan(
    repo: &Repository,
    config: &RetentionConfig,
    now: DateTime<Utc>,
) -> Result<PrunePlan> {
    let manifests = repo.list_backups().await?;
    // Logical and physical backups serve different restores: the rules apply to each
    // kind on its own, so nightly dumps never push out the last base backup.
    let mut retention = RetentionPlan {
        entries: Vec::new(),
        stale: None,
    };
    for kind in [BackupKind::Logical, BackupKind::Physical] {
        let refs: Vec<BackupRef> = manifests
            .iter()
            .filter(|m| m.kind == kind)
            .map(|m| BackupRef {
                id: m.id.clone(),
                time: m.started_at,
            })
            .collect();
        if refs.is_empty() {
            continue;
        }
        let part = retention::plan(&refs, &config.rules, now, config.max_age)?;
        retention.entries.extend(part.entries);
        if let Some(stale) = part.stale {
            let text = format!("{kind} backups: {stale}");
            retention.stale = Some(match retention.stale.take() {
                Some(before) => format!("{before}; {text}"),
                None => text,
            });
        }
    }
    retention.entries.sort_by(|a, b| {
        b.backup
            .time
            .cmp(&a.backup.time)
            .then(b.backup.id.cmp(&a.backup.id))
    });

    let prefix = repo.backups_prefix();
    let mut dirs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for object in repo.storage().list(&prefix).await? {
        let rest = object.key.strip_prefix(&prefix).unwrap_or(&object.key);
        if let Some((id, _)) = rest.split_once('/') {
            dirs.entry(id.to_string())
                .or_default()
                .push(object.key.clone());
        }
    }
    let cutoff = now - config.orphan_min_age;
    let mut recent_leftovers = 0;
    let mut orphans = Vec::new();
    for (id, keys) in dirs {
        if keys.iter().any(|k| k.ends_with(&format!("/{MANIFEST}"))) {
            continue;
        }
        let started = id_time(&id);
        if started.is_some_and(|t| t < cutoff) {
            orphans.push(Orphan { id, keys, started });
        } else {
            recent_leftovers += 1;
        }
    }
    let mut stale_uploads = Vec::new();
    for upload in repo.storage().pending_uploads(&prefix).await? {
        if upload.started.is_some_and(|t| t < cutoff) {
            stale_uploads.push(upload);
        } else {
            recent_leftovers += 1;
        }
    }
    let deleted: Vec<&str> = retention
        .to_delete()
        .iter()
        .map(|b| b.id.as_str())
        .collect();
    let mut retained_starts = Vec::new();
    for m in &manifests {
        if let (Some(p), false) = (&m.physical, deleted.contains(&m.id.as_str())) {
            retained_starts.push((crate::wal::parse_lsn(&p.start_lsn)?, p.wal_segment_size));
        }
    }
    let wal_to_delete = if retained_starts.is_empty() {
        Vec::new()
    } else {
        let archive = crate::wal::list_archive(repo).await?;
        crate::wal::wal_not_needed(&archive, &retained_starts)
            .into_iter()
            .map(|a| a.key.clone())
            .collect()
    };
    Ok(PrunePlan {
        retention,
        orphans,
        stale_uploads,
        recent_leftovers,
        wal_to_delete,
    })
}

/// What an executed prune removed.
#[derive(Debug, Clone, Default)]
pub struct PruneOutcome {
    /// Backups deleted.
    pub deleted_backups: Vec<String>,
    /// Orphan directories removed.
    pub removed_orphans: usize,
    /// Pending uploads aborted.
    pub aborted_uploads: usize,
    /// Archived WAL files deleted.
    pub deleted_wal: usize,
}

/// Carry out a plan: delete each given-up backup (manifest first), then orphans,
/// stale uploads, and WAL no retained base backup needs.
pub async fn execute(repo: &Repository, plan: &PrunePlan) -> Result<PruneOutcome> {
    let mut outcome = PruneOutcome::default();
    for backup in plan.retention.to_delete() {
        repo.storage()
            .delete(&repo.object_key(&backup.id, MANIFEST))
            .await?;
        for object in repo
            .storage()
            .list(&repo.object_key(&backup.id, ""))
            .await?
        {
            repo.storage().delete(&object.key).await?;
        }
        tracing::info!(backup = %backup.id, "backup deleted by retention");
        outcome.deleted_backups.push(backup.id.clone());
    }
    for orphan in &plan.orphans {
        for key in &orphan.keys {
            repo.storage().delete(key).await?;
        }
        outcome.removed_orphans += 1;
    }
    for upload in &plan.stale_uploads {
        repo.storage().abort_pending(upload).await?;
        outcome.aborted_uploads += 1;
    }
    // WAL last: it was planned against the backups kept above.
    for key in &plan.wal_to_delete {
        repo.storage().delete(key).await?;
        outcome.deleted_wal += 1;
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_start_time() {
        let t = id_time("20261128T031500Z-3f9a1c00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-28T03:15:00+00:00");
        assert!(id_time("garbage").is_none());
    }
}
