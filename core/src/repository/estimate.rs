//! How many raw bytes a backup about to start will stream, so that a progress display can
//! show a percentage and an ETA: the raw size of the newest backup of the same kind in the
//! repository, or on the first run the size of what is backed up (`pg_database_size`).
//!
//! It is an estimate and only ever used for display: a database grows, and a dump holds
//! no index (so `pg_database_size` overstates a first logical dump). A failure to estimate
//! is never a failure of the backup.

use super::{object, BackupKind, BackupManifest, Repository};
use crate::error::{Error, Result};
use crate::policy::Policy;
use crate::postgres::ConnTarget;

/// The kind of backup about to start, as far as its size goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextBackup {
    /// A `pg_dump` of the policy's database.
    Logical,
    /// A full base backup of the cluster.
    FullBase,
    /// An incremental base backup: only what changed since its parent.
    IncrementalBase,
}

impl NextBackup {
    /// Whether `backup` is of this kind.
    fn matches(self, backup: &BackupManifest) -> bool {
        match self {
            NextBackup::Logical => backup.kind == BackupKind::Logical,
            NextBackup::FullBase => {
                backup.kind == BackupKind::Physical && backup.chain_link().is_none()
            }
            NextBackup::IncrementalBase => backup.chain_link().is_some(),
        }
    }

    /// The object whose bytes a backup's [`crate::pipeline::Progress`] counts.
    fn streamed_object(self) -> &'static str {
        match self {
            NextBackup::Logical => object::DUMP,
            NextBackup::FullBase | NextBackup::IncrementalBase => object::BASE,
        }
    }
}

/// The raw size of the streamed object (the dump, or the base backup's tar) of the newest
/// backup of kind `next` among `backups`; `None` when there is none.
pub fn previous_raw_size(backups: &[BackupManifest], next: NextBackup) -> Option<u64> {
    backups
        .iter()
        .filter(|m| next.matches(m))
        .max_by_key(|m| m.started_at)
        .and_then(|m| m.objects.get(next.streamed_object()))
        .map(|o| o.digest.raw_size)
}

/// The raw bytes a backup of kind `next` of `policy` is expected to stream: the newest
/// backup of that kind in `repo`, else the database's size (the cluster's, for a base
/// backup: every database the source role may connect to). `None` for a first
/// incremental, whose size nothing predicts.
pub async fn expected_raw_bytes(
    repo: &Repository,
    policy: &Policy,
    next: NextBackup,
) -> Result<Option<u64>> {
    let catalog = repo.catalog().await?;
    if let Some(size) = previous_raw_size(&catalog.backups, next) {
        return Ok(Some(size));
    }
    let query = match next {
        NextBackup::Logical => "select pg_database_size(current_database())",
        NextBackup::FullBase => {
            "select sum(pg_database_size(oid))::bigint from pg_database where has_database_privilege(oid, 'CONNECT')"
        }
        NextBackup::IncrementalBase => return Ok(None),
    };
    let client = ConnTarget::parse(&policy.source.url)?.connect().await?;
    let size: Option<i64> = client
        .query_one(query, &[])
        .await
        .map_err(|e| Error::pg("cannot read the database size", e))?
        .get(0);
    Ok(size.and_then(|s| u64::try_from(s).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest of `kind` (`logical`, `full` or `incremental`) started at `minute`
    /// past noon, whose streamed object has `raw` bytes.
    fn backup(kind: &str, minute: u32, raw: u64) -> BackupManifest {
        let (version, kind_name, role, physical) = match kind {
            "logical" => (1, "logical", "dump", String::new()),
            _ => {
                let incremental = if kind == "incremental" {
                    r#","incremental":{"parent":"p","root":"p","depth":1,"chain_stored_bytes":9}"#
                } else {
                    ""
                };
                (
                    if incremental.is_empty() { 2 } else { 3 },
                    "physical",
                    "base",
                    format!(
                        r#","physical":{{"start_lsn":"0/2000028","stop_lsn":"0/2000100","timeline":1,"wal_segment_size":16777216,"start_wal":"000000010000000000000002","stop_wal":"000000010000000000000002"{incremental}}}"#
                    ),
                )
            }
        };
        let t = format!("2026-11-24T12:{minute:02}:00Z");
        let json = format!(
            r#"{{"format_version":{version},"id":"20261124T12{minute:02}00Z-00000000","policy":"app","kind":"{kind_name}","started_at":"{t}","consistent_at":"{t}","finished_at":"{t}","database":"app","database_encoding":"UTF8","server_version":"17.2","server_version_num":170002,"system_identifier":"1","tool_version":"pgvault 0.1.0","dump_tool_version":"pg_dump 17.2","compression":{{"algorithm":"zstd","level":3}},"encryption":{{"algorithm":"age","recipients":["sha256:00"]}},"objects":{{"{role}":{{"key":"k","raw_size":{raw},"raw_sha256":"00","stored_size":1,"stored_sha256":"00"}},"globals":{{"key":"g","raw_size":7000,"raw_sha256":"00","stored_size":1,"stored_sha256":"00"}}}}{physical}}}"#
        );
        super::super::parse_manifest("m.json", json.as_bytes()).unwrap()
    }

    #[test]
    fn the_newest_backup_of_the_same_kind_gives_the_estimate() {
        let backups = vec![
            backup("incremental", 40, 30),
            backup("full", 30, 3000),
            backup("logical", 20, 200),
            backup("logical", 10, 100),
            backup("full", 5, 2500),
        ];
        assert_eq!(
            previous_raw_size(&backups, NextBackup::Logical),
            Some(200),
            "the dump alone, the newest logical backup"
        );
        assert_eq!(
            previous_raw_size(&backups, NextBackup::FullBase),
            Some(3000)
        );
        assert_eq!(
            previous_raw_size(&backups, NextBackup::IncrementalBase),
            Some(30)
        );
        // Order in the slice does not matter: the newest by start time wins.
        let reversed: Vec<_> = backups.into_iter().rev().collect();
        assert_eq!(previous_raw_size(&reversed, NextBackup::Logical), Some(200));
    }

    #[test]
    fn no_backup_of_the_kind_gives_no_estimate() {
        let backups = vec![backup("logical", 10, 100)];
        assert_eq!(previous_raw_size(&backups, NextBackup::FullBase), None);
        assert_eq!(
            previous_raw_size(&backups, NextBackup::IncrementalBase),
            None
        );
        assert_eq!(previous_raw_size(&[], NextBackup::Logical), None);
    }
}
