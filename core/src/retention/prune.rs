//! Carrying out retention on a repository: deleting the backups a [`RetentionPlan`]
//! gives up, and cleaning up what crashed runs left behind.
//!
//! Deletion removes a backup's manifest first, so the backup stops existing atomically;
//! its data objects go next. A prune interrupted half-way leaves only orphans (data
//! without a manifest), never a listed backup without its data.
//!
//! What crashed runs left is found and removed by [`crate::repository::leftovers`].
//!
//! **Object Lock.** With `[repository] object_lock`, the plan reads the locks of every
//! stored version (`Storage::versions`): a backup with a locked object is kept (`locked
//! until …`), and so are locked leftovers, WAL and gap records, so prune never issues a
//! delete that would fail. A backup whose locks have ended is deleted as a whole:
//! its locks are read again just before, then the manifest's versions go first and the
//! rest after, every version, so the bytes are freed at once (docs/DESIGN-NOTES.md).

use chrono::{DateTime, Utc};
use futures::StreamExt;

use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::policy::RetentionConfig;
use crate::repository::leftovers::{leftovers, remove_leftovers, Leftovers, Orphan, StaleUpload};
use crate::repository::{BackupKind, BackupManifest, Repository, MANIFEST};
use crate::retention::{self, BackupRef, LockedUntil, RetentionPlan};
use crate::stop_signal::unless_cancelled;
use crate::storage::{lock_in_effect, ObjectLock};

/// What a prune will do (or did).
#[derive(Debug, Clone)]
pub struct PrunePlan {
    /// KEEP/DELETE per backup with reasons.
    pub retention: RetentionPlan,
    /// Orphan directories to remove.
    pub orphans: Vec<Orphan>,
    /// Pending uploads to abort.
    pub stale_uploads: Vec<StaleUpload>,
    /// Lease objects of runs that are over.
    pub dead_leases: Vec<String>,
    /// Orphans and uploads left alone because their run may still be going.
    pub recent_leftovers: usize,
    /// Archived WAL files no retained base backup needs (see [`crate::physical::wal::wal_not_needed`]).
    pub wal_to_delete: Vec<String>,
    /// Gap records no retained base backup replays through.
    pub gaps_to_delete: Vec<String>,
    /// Leftovers, WAL files and gap records that may go but are still locked
    /// (`object_lock`): what, and the lock. They go in a later prune.
    pub locked: Vec<(String, String)>,
}

/// Locks read at once while planning.
const LOCK_READS_IN_FLIGHT: usize = 8;

/// The lock in effect at `now` on each of `prefixes` (`None`: it may go), in order.
async fn locks_of(
    repo: &Repository,
    prefixes: Vec<String>,
    now: DateTime<Utc>,
) -> Result<Vec<(String, Option<ObjectLock>)>> {
    if !repo.storage().locks_objects() {
        return Ok(prefixes.into_iter().map(|p| (p, None)).collect());
    }
    let read: Vec<Result<(String, Option<ObjectLock>)>> = futures::stream::iter(prefixes)
        .map(|prefix| async move {
            let lock = lock_in_effect(repo.storage(), &prefix, now).await?;
            Ok((prefix, lock))
        })
        .buffered(LOCK_READS_IN_FLIGHT)
        .collect()
        .await;
    read.into_iter().collect()
}

/// A lock in effect, as the planner sees it.
fn locked_until(lock: &ObjectLock) -> LockedUntil {
    match (lock.legal_hold, lock.retain_until) {
        (false, Some(until)) => LockedUntil::Date(until),
        _ => LockedUntil::LegalHold,
    }
}

/// Plan a prune of `repo` at `now`. Reads the repository; changes nothing.
pub async fn plan(
    repo: &Repository,
    config: &RetentionConfig,
    now: DateTime<Utc>,
) -> Result<PrunePlan> {
    let manifests = repo.list_backups().await?;
    let locks: std::collections::HashMap<String, LockedUntil> = locks_of(
        repo,
        manifests
            .iter()
            .map(|m| repo.object_key(&m.id, ""))
            .collect(),
        now,
    )
    .await?
    .into_iter()
    .filter_map(|(dir, lock)| lock.map(|l| (dir, locked_until(&l))))
    .collect();
    let by_id: std::collections::HashMap<String, LockedUntil> = manifests
        .iter()
        .filter_map(|m| {
            locks
                .get(&repo.object_key(&m.id, ""))
                .map(|l| (m.id.clone(), *l))
        })
        .collect();
    let retention = plan_backups(&manifests, &by_id, config, now)?;

    let found = leftovers(repo, now, Some(config.orphan_min_age)).await?;
    let deleted: Vec<&str> = retention
        .to_delete()
        .iter()
        .map(|b| b.id.as_str())
        .collect();
    let mut retained_starts = Vec::new();
    for m in &manifests {
        if let (Some(p), false) = (&m.physical, deleted.contains(&m.id.as_str())) {
            retained_starts.push((
                crate::physical::wal::parse_lsn(&p.start_lsn)?,
                p.wal_segment_size,
            ));
        }
    }
    let (mut wal_to_delete, mut gaps_to_delete) = if retained_starts.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        let mut archive = crate::physical::wal::list_archive(repo).await?;
        archive.extend(crate::physical::wal::stream::chunks_for_retention(repo).await?);
        let gaps = crate::physical::wal::gaps::list_gaps(repo).await?;
        (
            crate::physical::wal::wal_not_needed(&archive, &retained_starts)
                .into_iter()
                .map(|a| a.key.clone())
                .collect(),
            crate::physical::wal::gaps::gaps_not_needed(&gaps, &retained_starts)
                .into_iter()
                .map(|g| g.key.clone())
                .collect(),
        )
    };
    let mut locked = found.locked;
    for (keys, what) in [
        (&mut wal_to_delete, "WAL"),
        (&mut gaps_to_delete, "gap record"),
    ] {
        let mut free = Vec::new();
        for (key, lock) in locks_of(repo, std::mem::take(keys), now).await? {
            match lock {
                Some(lock) => locked.push((format!("{what} {key}"), lock.describe())),
                None => free.push(key),
            }
        }
        *keys = free;
    }
    Ok(PrunePlan {
        retention,
        orphans: found.orphans,
        stale_uploads: found.stale_uploads,
        dead_leases: found.dead_leases,
        recent_leftovers: found.recent,
        wal_to_delete,
        gaps_to_delete,
        locked,
    })
}

/// The retention plan of `manifests` (a repository's readable backups) under `config`
/// at `now`: the planner applied to each backup kind on its own. Pure; [`plan`] uses it
/// for a repository, and `pgvault copy` for the backups a copy would keep.
pub fn plan_backups(
    manifests: &[BackupManifest],
    locks: &std::collections::HashMap<String, LockedUntil>,
    config: &RetentionConfig,
    now: DateTime<Utc>,
) -> Result<RetentionPlan> {
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
                parent: m.chain_link().map(|l| l.parent.clone()),
                locked: locks.get(&m.id).copied(),
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
    Ok(retention)
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
    /// Backups, WAL files and gap records left because they were locked again (or
    /// still) when their turn came: what, and the lock.
    pub still_locked: Vec<(String, String)>,
}

/// Carry out a plan: delete each given-up backup (manifest first), then orphans,
/// stale uploads, and WAL no retained base backup needs.
///
/// `cancel` stops it at once. Every step can be cut anywhere: a backup's manifest goes
/// before its data, so what remains is either a whole backup or an orphan the next
/// prune removes, and running the prune again finishes the work.
pub async fn execute(
    repo: &Repository,
    plan: &PrunePlan,
    cancel: &CancellationToken,
) -> Result<PruneOutcome> {
    unless_cancelled(cancel, async {
        let mut outcome = PruneOutcome::default();
        // Newest first: the planner gives up an incremental's parent only with the
        // incremental, so deleting children before parents leaves every remaining chain
        // whole however far an interrupted prune got.
        for backup in plan.retention.to_delete().into_iter().rev() {
            let dir = repo.object_key(&backup.id, "");
            // A lock may have been extended since the plan: a backup goes as a whole or
            // not at all.
            if let Some(lock) = lock_in_effect(repo.storage(), &dir, Utc::now()).await? {
                tracing::warn!(backup = %backup.id, lock = %lock.describe(), "backup locked since the plan; kept");
                outcome
                    .still_locked
                    .push((format!("backup {}", backup.id), lock.describe()));
                continue;
            }
            repo.storage()
                .delete(&repo.object_key(&backup.id, MANIFEST))
                .await?;
            for version in repo.storage().versions(&dir).await? {
                repo.storage().delete_version(&version).await?;
            }
            tracing::info!(backup = %backup.id, "backup deleted by retention");
            outcome.deleted_backups.push(backup.id.clone());
        }
        let (orphans, uploads) = remove_leftovers(
            repo,
            &Leftovers {
                orphans: plan.orphans.clone(),
                stale_uploads: plan.stale_uploads.clone(),
                dead_leases: plan.dead_leases.clone(),
                recent: plan.recent_leftovers,
                locked: Vec::new(),
            },
        )
        .await?;
        outcome.removed_orphans += orphans;
        outcome.aborted_uploads += uploads;
        // WAL last: it was planned against the backups kept above.
        for key in &plan.wal_to_delete {
            match repo.storage().delete(key).await {
                Ok(()) => outcome.deleted_wal += 1,
                Err(Error::ObjectLocked { key, lock }) => {
                    outcome.still_locked.push((format!("WAL {key}"), lock))
                }
                Err(e) => return Err(e),
            }
        }
        for key in &plan.gaps_to_delete {
            match repo.storage().delete(key).await {
                Ok(()) => {}
                Err(Error::ObjectLocked { key, lock }) => {
                    outcome.still_locked.push((format!("gap record {key}"), lock))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(outcome)
    })
    .await
}
