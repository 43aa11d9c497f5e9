//! How far a copy lags behind its primary: what `pgvault check` shows for each
//! `[[repository.copies]]`, and the agent's copy metrics.
//!
//! The lag is judged on backups: the backups of the primary the copy should hold (by the
//! copy's retention, as [`super::copy`] decides) but does not, and how long ago the
//! oldest of them finished. Past the copy's `max_lag`, the copy is behind. WAL is shown
//! beside it (the newest segment in each repository, the files the copy lacks and since
//! when): a copy filled once a day always lacks up to a day of WAL, which is its RPO for
//! point-in-time restores, not a failure.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{wal_wanted, wanted, CopyTarget};
use crate::error::Result;
use crate::physical::wal::{self, WalFileKind};
use crate::policy::{CopyConfig, Policy};
use crate::repository::{BackupKind, Repository};

/// A backup of the primary that its copy lacks.
#[derive(Debug, Clone, Serialize)]
pub struct MissingBackup {
    /// The backup id.
    pub id: String,
    /// Logical or physical.
    pub kind: BackupKind,
    /// When it was finished in the primary.
    pub finished_at: DateTime<Utc>,
}

/// How far one copy is behind.
#[derive(Debug, Clone)]
pub struct CopyLag {
    /// The copy's name.
    pub copy: String,
    /// Where it lives.
    pub location: String,
    /// Readable backups in the copy.
    pub backups_in_copy: usize,
    /// Backups the copy should hold and does not, newest first.
    pub missing: Vec<MissingBackup>,
    /// Time since the oldest missing backup finished (zero when none is missing).
    pub lag: chrono::Duration,
    /// The copy's `max_lag`.
    pub max_lag: chrono::Duration,
    /// The newest archived WAL segment in the primary.
    pub newest_wal_primary: Option<String>,
    /// The newest archived WAL segment in the copy.
    pub newest_wal_copy: Option<String>,
    /// Archived WAL files the copy should hold and does not.
    pub missing_wal: usize,
    /// Time since the oldest of them was archived in the primary.
    pub wal_lag: Option<chrono::Duration>,
}

impl CopyLag {
    /// Whether the copy is further behind than its `max_lag`.
    pub fn behind(&self) -> bool {
        self.lag > self.max_lag
    }

    /// Age of the newest missing backup.
    pub fn newest_missing_age(&self, now: DateTime<Utc>) -> Option<chrono::Duration> {
        self.missing.first().map(|m| now - m.finished_at)
    }
}

/// Open `policy`'s primary and its copy, and measure the copy's [`lag`].
pub async fn lag_of(policy: &Policy, copy: &CopyConfig, now: DateTime<Utc>) -> Result<CopyLag> {
    let source = Repository::open(policy).await?;
    let target = Repository::open_copy(policy, &copy.name).await?;
    lag(
        &source,
        &CopyTarget {
            name: &copy.name,
            repo: &target,
            retention: policy.retention_of_copy(copy),
            transfer: super::transfer_of(copy),
        },
        copy.max_lag,
        now,
    )
    .await
}

/// Compare `target` with `source` at `now`. Reads listings and manifests only.
pub async fn lag(
    source: &Repository,
    target: &CopyTarget<'_>,
    max_lag: chrono::Duration,
    now: DateTime<Utc>,
) -> Result<CopyLag> {
    let source_catalog = source.catalog().await?;
    let target_catalog = target.repo.catalog().await?;
    let plan = wanted(&source_catalog, &target_catalog, target.retention, now)?;
    let held: std::collections::HashSet<&str> = target_catalog
        .backups
        .iter()
        .map(|m| m.id.as_str())
        .collect();
    let mut missing: Vec<MissingBackup> = plan
        .backups
        .iter()
        .filter(|m| !held.contains(m.id.as_str()))
        .map(|m| MissingBackup {
            id: m.id.clone(),
            kind: m.kind,
            finished_at: m.finished_at,
        })
        .collect();
    missing.sort_by(|a, b| b.finished_at.cmp(&a.finished_at).then(b.id.cmp(&a.id)));
    let lag = missing
        .iter()
        .map(|m| now - m.finished_at)
        .max()
        .unwrap_or_else(chrono::Duration::zero)
        .max(chrono::Duration::zero());

    let source_wal = wal::list_archive(source).await?;
    let target_wal = wal::list_archive(target.repo).await?;
    let newest = |archive: &[wal::ArchivedWal]| {
        archive
            .iter()
            .rev()
            .find(|a| a.file.kind == WalFileKind::Segment)
            .map(|a| a.file.name.clone())
    };
    let in_copy: std::collections::HashSet<&str> =
        target_wal.iter().map(|a| a.key.as_str()).collect();
    let missing_wal: Vec<&wal::ArchivedWal> = wal_wanted(&source_wal, &plan.starts)
        .into_iter()
        .filter(|a| !in_copy.contains(a.key.as_str()))
        .collect();
    let wal_lag = missing_wal
        .iter()
        .filter_map(|a| a.archived_at)
        .min()
        .map(|t| (now - t).max(chrono::Duration::zero()));
    Ok(CopyLag {
        copy: target.name.to_string(),
        location: target.repo.storage().describe(),
        backups_in_copy: target_catalog.backups.len(),
        missing,
        lag,
        max_lag,
        newest_wal_primary: newest(&source_wal),
        newest_wal_copy: newest(&target_wal),
        missing_wal: missing_wal.len(),
        wal_lag,
    })
}
