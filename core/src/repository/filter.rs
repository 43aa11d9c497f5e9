//! Which backups a listing shows (`pgvault list --kind/--since/--until`): by kind and by
//! start time, inclusive at both ends.
//!
//! A damaged backup (its manifest exists but cannot be read) has no readable kind, so a
//! kind never hides it: it needs attention whatever one looks for. Its start time is the
//! one its id carries, to the second; an id without one keeps it in every window.

use chrono::{DateTime, Utc};

use super::leftovers::id_time;
use super::{BackupKind, BackupManifest, Catalog, DamagedBackup};

/// A selection of backups; the default keeps every backup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackupFilter {
    /// Only backups of this kind.
    pub kind: Option<BackupKind>,
    /// Only backups that started at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only backups that started at or before this time.
    pub until: Option<DateTime<Utc>>,
}

impl BackupFilter {
    /// Whether `time` lies in the window `since..=until`.
    fn in_window(&self, time: DateTime<Utc>) -> bool {
        self.since.is_none_or(|since| time >= since) && self.until.is_none_or(|until| time <= until)
    }

    /// Whether the filter keeps `backup`, judged by its kind and `started_at`.
    pub fn keeps(&self, backup: &BackupManifest) -> bool {
        self.kind.is_none_or(|kind| backup.kind == kind) && self.in_window(backup.started_at)
    }

    /// Whether the filter keeps a damaged backup: whatever the kind, and by the start
    /// time in its id.
    pub fn keeps_damaged(&self, damaged: &DamagedBackup) -> bool {
        id_time(&damaged.id).is_none_or(|started| self.in_window(started))
    }

    /// `catalog` with only the backups the filter keeps, in the same order.
    pub fn apply(&self, catalog: Catalog) -> Catalog {
        Catalog {
            backups: catalog
                .backups
                .into_iter()
                .filter(|m| self.keeps(m))
                .collect(),
            damaged: catalog
                .damaged
                .into_iter()
                .filter(|d| self.keeps_damaged(d))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::parse_manifest;
    use chrono::TimeZone;

    /// A manifest of `kind` that started at 12:00 plus `minutes`, on 2026-11-24.
    fn backup(kind: BackupKind, minutes: u32) -> BackupManifest {
        let started = Utc.with_ymd_and_hms(2026, 11, 24, 12, minutes, 0).unwrap();
        let version = match kind {
            BackupKind::Logical => 1,
            BackupKind::Physical => 2,
        };
        let physical = match kind {
            BackupKind::Logical => String::new(),
            BackupKind::Physical => r#","physical":{"start_lsn":"0/2000028","stop_lsn":"0/2000100","timeline":1,"wal_segment_size":16777216,"start_wal":"000000010000000000000002","stop_wal":"000000010000000000000002"}"#.to_string(),
        };
        let json = format!(
            r#"{{"format_version":{version},"id":"{id}-00000000","policy":"app","kind":"{kind}","started_at":"{t}","consistent_at":"{t}","finished_at":"{t}","database":"app","database_encoding":"UTF8","server_version":"17.2","server_version_num":170002,"system_identifier":"1","tool_version":"pgvault 0.1.0","dump_tool_version":"pg_dump 17.2","compression":{{"algorithm":"zstd","level":3}},"encryption":{{"algorithm":"age","recipients":["sha256:00"]}},"objects":{{}}{physical}}}"#,
            id = started.format("%Y%m%dT%H%M%SZ"),
            t = started.to_rfc3339(),
        );
        parse_manifest("m.json", json.as_bytes()).unwrap()
    }

    fn at(minutes: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 12, minutes, 0).unwrap()
    }

    fn damaged(id: &str) -> DamagedBackup {
        DamagedBackup {
            id: id.into(),
            key: format!("app/backups/{id}/manifest.json"),
            reason: "not JSON".into(),
        }
    }

    fn kept(filter: BackupFilter) -> Vec<String> {
        let catalog = Catalog {
            backups: vec![
                backup(BackupKind::Physical, 30),
                backup(BackupKind::Logical, 20),
                backup(BackupKind::Logical, 10),
            ],
            damaged: vec![damaged("20261124T121500Z-0badf00d"), damaged("garbage")],
        };
        let kept = filter.apply(catalog);
        kept.backups
            .iter()
            .map(|m| m.started_at.format("%M").to_string())
            .chain(kept.damaged.iter().map(|d| d.id.clone()))
            .collect()
    }

    #[test]
    fn the_default_filter_keeps_everything() {
        assert_eq!(
            kept(BackupFilter::default()),
            ["30", "20", "10", "20261124T121500Z-0badf00d", "garbage"]
        );
    }

    #[test]
    fn a_kind_keeps_its_backups_and_every_damaged_one() {
        let logical = BackupFilter {
            kind: Some(BackupKind::Logical),
            ..Default::default()
        };
        assert_eq!(
            kept(logical),
            ["20", "10", "20261124T121500Z-0badf00d", "garbage"]
        );
        let physical = BackupFilter {
            kind: Some(BackupKind::Physical),
            ..Default::default()
        };
        assert_eq!(
            kept(physical),
            ["30", "20261124T121500Z-0badf00d", "garbage"]
        );
    }

    #[test]
    fn the_time_window_is_inclusive_and_judges_damaged_backups_by_their_id() {
        let window = |since: Option<u32>, until: Option<u32>| BackupFilter {
            since: since.map(at),
            until: until.map(at),
            ..Default::default()
        };
        assert_eq!(kept(window(Some(20), None)), ["30", "20", "garbage"]);
        assert_eq!(
            kept(window(None, Some(20))),
            ["20", "10", "20261124T121500Z-0badf00d", "garbage"]
        );
        assert_eq!(
            kept(window(Some(11), Some(29))),
            ["20", "20261124T121500Z-0badf00d", "garbage"]
        );
        assert_eq!(kept(window(Some(31), None)), ["garbage"]);
        let both = BackupFilter {
            kind: Some(BackupKind::Logical),
            since: Some(at(15)),
            until: None,
        };
        assert_eq!(kept(both), ["20", "20261124T121500Z-0badf00d", "garbage"]);
    }
}
