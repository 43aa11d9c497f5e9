//! What runs that ended without a manifest left in the repository, and removing it.
//!
//! Leftovers (objects without a manifest, pending multipart uploads) are removed when
//! the run that made them is known to be over: its run lease is dead (see [`lease`]:
//! its process is gone, or its heartbeat stopped), which is decided at once; or, for a
//! run without a lease, when they are older than the policy's `orphan_min_age` (only
//! `pgvault prune` applies that rule). A backup that is still running is never touched.
//! Every backup of a policy and the agent at start-up remove crashed runs' leftovers
//! ([`remove_crashed_runs`]).
//!
//! With `[repository] object_lock`, a crashed run's stored objects are locked like every
//! backup object: they stay, listed with their lock, until it ends. Credentials that may
//! not delete (an agent whose retention runs elsewhere) leave the leftovers to
//! `pgvault prune`; aborting stale uploads needs no delete permission and is done first.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDateTime, Utc};

use super::lease::{self, Liveness};
use super::{Repository, MANIFEST};
use crate::error::Result;
use crate::storage::{lock_in_effect, PendingUpload};

/// A backup directory without a manifest.
#[derive(Debug, Clone)]
pub struct Orphan {
    /// The backup id (directory name).
    pub id: String,
    /// Its objects.
    pub keys: Vec<String>,
    /// When it was started, from the id.
    pub started: Option<DateTime<Utc>>,
    /// Why it can go: the crashed run, or its age.
    pub reason: String,
}

/// A multipart upload that will never be completed, and why.
#[derive(Debug, Clone)]
pub struct StaleUpload {
    /// The upload.
    pub upload: PendingUpload,
    /// Why it can be aborted: the crashed run, or its age.
    pub reason: String,
}

/// What runs that ended without a manifest left behind, and may be removed now.
#[derive(Debug, Clone, Default)]
pub struct Leftovers {
    /// Orphan directories to remove.
    pub orphans: Vec<Orphan>,
    /// Pending uploads to abort.
    pub stale_uploads: Vec<StaleUpload>,
    /// Lease objects of runs that are over.
    pub dead_leases: Vec<String>,
    /// Orphans and uploads left alone: their run may still be going (a live lease, or
    /// no lease and younger than `orphan_min_age`).
    pub recent: usize,
    /// Leftovers that may go but are still locked (`object_lock`): what, and the lock.
    pub locked: Vec<(String, String)>,
}

/// Find what ended runs left behind. A dead lease makes its run's leftovers removable at
/// once; without a lease, only leftovers older than `orphan_min_age` are (none when it
/// is `None`: the next backup and the agent remove only crashed runs' leftovers).
pub async fn leftovers(
    repo: &Repository,
    now: DateTime<Utc>,
    orphan_min_age: Option<chrono::Duration>,
) -> Result<Leftovers> {
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
    // Leases are read after the objects. A run writes its manifest before it drops its
    // lease, and each orphan's manifest is looked for again before it is deleted, so a
    // run that finishes meanwhile is never touched.
    let leases = lease::read_leases(repo).await?;
    let removable = |id: &str| -> Option<String> {
        match lease::liveness(leases.get(id), now) {
            Liveness::Running => None,
            Liveness::Crashed(why) => Some(format!("crashed run: {why}")),
            Liveness::Unknown => {
                let min_age = orphan_min_age?;
                id_time(id)
                    .filter(|t| *t < now - min_age)
                    .map(|_| "older than orphan_min_age".to_string())
            }
        }
    };
    let mut found = Leftovers::default();
    for (id, keys) in dirs {
        if keys.iter().any(|k| k.ends_with(&format!("/{MANIFEST}"))) {
            continue;
        }
        match removable(&id) {
            Some(reason) => {
                let dir = repo.object_key(&id, "");
                if let Some(lock) = lock_in_effect(repo.storage(), &dir, now).await? {
                    found.locked.push((format!("orphan {id}"), lock.describe()));
                    continue;
                }
                found.orphans.push(Orphan {
                    started: id_time(&id),
                    id,
                    keys,
                    reason,
                })
            }
            None => found.recent += 1,
        }
    }
    // A key rotation replaces the objects of finished backups through multipart
    // uploads (`crate::rotation`): while one runs, no upload under backups/ is stale.
    let rotating = leases.iter().any(|(id, lease)| {
        id.starts_with(lease::ROTATION_LEASE_PREFIX)
            && lease::liveness(Some(lease), now) == Liveness::Running
    });
    for upload in repo.storage().pending_uploads(&prefix).await? {
        let rest = upload.key.strip_prefix(&prefix).unwrap_or(&upload.key);
        let id = rest.split('/').next().unwrap_or_default().to_string();
        if rotating {
            found.recent += 1;
            continue;
        }
        match removable(&id) {
            Some(reason) => found.stale_uploads.push(StaleUpload { upload, reason }),
            None => found.recent += 1,
        }
    }
    // WAL uploads carry no lease: the age rule only.
    if let Some(min_age) = orphan_min_age {
        for upload in repo.storage().pending_uploads(&repo.wal_prefix()).await? {
            if upload.started.is_some_and(|t| t < now - min_age) {
                found.stale_uploads.push(StaleUpload {
                    upload,
                    reason: "older than orphan_min_age".into(),
                });
            } else {
                found.recent += 1;
            }
        }
    }
    for (id, lease) in &leases {
        if let Liveness::Crashed(_) = lease::liveness(Some(lease), now) {
            let key = lease::lease_key(repo, id);
            // Leases are stored unlocked; a bucket's default retention may lock them.
            match lock_in_effect(repo.storage(), &key, now).await? {
                Some(lock) => found.locked.push((format!("lease {key}"), lock.describe())),
                None => found.dead_leases.push(key),
            }
        }
    }
    Ok(found)
}

/// Remove what crashed runs left (dead leases only; the age rule is `prune`'s). Called
/// by every backup under its own lease and by the agent at start-up; failures are
/// logged, never fatal: the leftovers wait for the next pass.
pub async fn remove_crashed_runs(repo: &Repository) {
    let found = match leftovers(repo, Utc::now(), None).await {
        Ok(found) => found,
        // Credentials that may not read locks (an agent whose retention runs elsewhere).
        Err(e) if e.is_access_denied() => {
            tracing::info!(policy = %repo.policy(), error = %e, "no permission to look into a crashed run's leftovers; `pgvault prune` removes them");
            return;
        }
        Err(e) => {
            tracing::warn!(policy = %repo.policy(), error = %e, "cannot look for a crashed run's leftovers");
            return;
        }
    };
    if found.orphans.is_empty() && found.stale_uploads.is_empty() && found.dead_leases.is_empty() {
        return;
    }
    match remove_leftovers(repo, &found).await {
        Ok((orphans, uploads)) => {
            for o in &found.orphans {
                tracing::info!(policy = %repo.policy(), backup = %o.id, reason = %o.reason, "removed a crashed run's objects");
            }
            tracing::info!(policy = %repo.policy(), orphans, uploads, "crashed runs cleaned up");
        }
        Err(e) if e.is_access_denied() => {
            tracing::info!(policy = %repo.policy(), error = %e, "no permission to delete a crashed run's leftovers; `pgvault prune` removes them")
        }
        Err(e) => {
            tracing::warn!(policy = %repo.policy(), error = %e, "cannot remove a crashed run's leftovers")
        }
    }
}

/// Remove `found`: stale uploads first (aborting needs no delete permission), then each
/// orphan after checking again that its manifest is still absent, then dead leases.
/// Returns (orphans removed, uploads aborted).
pub(crate) async fn remove_leftovers(
    repo: &Repository,
    found: &Leftovers,
) -> Result<(usize, usize)> {
    let mut uploads = 0;
    for stale in &found.stale_uploads {
        repo.storage().abort_pending(&stale.upload).await?;
        uploads += 1;
    }
    let mut orphans = 0;
    for orphan in &found.orphans {
        let manifest = repo.object_key(&orphan.id, MANIFEST);
        if repo.storage().size(&manifest).await?.is_some() {
            continue; // it finished after all
        }
        for key in &orphan.keys {
            repo.storage().delete(key).await?;
        }
        orphans += 1;
    }
    for key in &found.dead_leases {
        repo.storage().delete(key).await?;
    }
    Ok((orphans, uploads))
}

/// The start time encoded in a backup id (`YYYYMMDDTHHMMSSZ-…`).
pub fn id_time(id: &str) -> Option<DateTime<Utc>> {
    let stamp = id.split('-').next()?;
    NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|t| t.and_utc())
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
