//! Gap records: WAL that was acknowledged to PostgreSQL without being stored, because
//! the spool was full and the policy said `queue_full = "drop"`. A gap must never be
//! silent: each dropped range is written to the repository as a plaintext record, and
//! `check`, point-in-time plans, the metrics and the webhook read it.
//!
//! ```text
//! <policy>/wal-gaps/<timeline, 8 hex digits>/<first segment>-<last segment>.json
//! ```
//!
//! The records live beside the WAL archive, not in it, so a reader of the archive never
//! mistakes one for a WAL file.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::repository::Repository;

use super::name::{WalFileKind, WalFileName};

/// One range of WAL segments that was dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapRecord {
    /// The timeline of the dropped segments.
    pub timeline: u32,
    /// The first segment dropped.
    pub first: String,
    /// The last segment dropped (the same as `first` for one segment).
    pub last: String,
    /// How many segments.
    pub segments: u64,
    /// When the first of them was dropped. No commit at or after this time is in a
    /// segment before `first`, so a time target at or after it certainly crosses the
    /// gap; one before it may still need WAL from `first` (an archiver running behind
    /// hands a segment over after it was written), which PostgreSQL reports by stopping
    /// with "recovery ended before configured recovery target was reached".
    pub dropped_at: DateTime<Utc>,
    /// When the record was written.
    pub recorded_at: DateTime<Utc>,
    /// The host whose spool dropped them.
    pub host: String,
    /// Why.
    pub reason: String,
    /// The record's key (filled in when read).
    #[serde(default, skip_serializing)]
    pub key: String,
}

impl GapRecord {
    /// Whether segment `name` (same timeline) lies in the gap.
    pub fn covers(&self, name: &str) -> bool {
        name.get(..8) == self.first.get(..8)
            && name >= self.first.as_str()
            && name <= self.last.as_str()
    }
}

impl std::fmt::Display for GapRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "WAL {} .. {} ({} segment(s)) dropped on {} from {} ({})",
            self.first,
            self.last,
            self.segments,
            self.host,
            self.dropped_at.format("%Y-%m-%d %H:%M:%S UTC"),
            self.reason
        )
    }
}

fn gaps_prefix(repo: &Repository) -> String {
    format!("{}/wal-gaps/", repo.policy())
}

/// Group dropped segment names into contiguous runs per timeline: (first, last, count).
pub fn runs(names: &[String], segment_size: u64) -> Vec<(String, String, u64)> {
    let mut parsed: Vec<(u32, u64, &String)> = names
        .iter()
        .filter_map(|n| {
            let file = WalFileName::parse(n).ok()?;
            (file.kind == WalFileKind::Segment)
                .then(|| Some((file.timeline, file.segno_for(segment_size)?, n)))
                .flatten()
        })
        .collect();
    parsed.sort();
    let mut out: Vec<(String, String, u64)> = Vec::new();
    let mut previous: Option<(u32, u64)> = None;
    for (timeline, segno, name) in parsed {
        match (previous, out.last_mut()) {
            (Some((t, s)), Some(run)) if t == timeline && s + 1 == segno => {
                run.1 = name.clone();
                run.2 += 1;
            }
            _ => out.push((name.clone(), name.clone(), 1)),
        }
        previous = Some((timeline, segno));
    }
    out
}

/// Store a gap record for `first ..= last` (idempotent: the key is the range).
pub async fn record_gap(
    repo: &Repository,
    first: &str,
    last: &str,
    segments: u64,
    dropped_at: DateTime<Utc>,
    reason: &str,
) -> Result<GapRecord> {
    let timeline = WalFileName::parse(first)?.timeline;
    let record = GapRecord {
        timeline,
        first: first.into(),
        last: last.into(),
        segments,
        dropped_at,
        recorded_at: Utc::now(),
        host: crate::notify::host_name(),
        reason: reason.into(),
        key: format!("{}{timeline:08X}/{first}-{last}.json", gaps_prefix(repo)),
    };
    let json = serde_json::to_vec_pretty(&record)
        .map_err(|e| Error::Internal(format!("cannot encode a gap record: {e}")))?;
    repo.storage().put(&record.key, Bytes::from(json)).await?;
    Ok(record)
}

/// Every gap record of the policy, oldest range first. A record that cannot be parsed
/// is an error: a gap must never be overlooked.
pub async fn list_gaps(repo: &Repository) -> Result<Vec<GapRecord>> {
    let mut gaps = Vec::new();
    for object in repo.storage().list(&gaps_prefix(repo)).await? {
        let bytes = repo.storage().get(&object.key).await?;
        let mut record: GapRecord =
            serde_json::from_slice(&bytes).map_err(|e| Error::Manifest {
                key: object.key.clone(),
                message: format!("the gap record cannot be read: {e}"),
            })?;
        record.key = object.key;
        gaps.push(record);
    }
    gaps.sort_by(|a, b| (a.timeline, &a.first).cmp(&(b.timeline, &b.first)));
    Ok(gaps)
}

/// Gap records no retained base backup replays through: their last segment ends at or
/// before the oldest retained start LSN. `retained_starts` holds (start LSN, segment
/// size) of every retained physical backup; with none, nothing is given up.
pub fn gaps_not_needed<'a>(
    gaps: &'a [GapRecord],
    retained_starts: &[(u64, u64)],
) -> Vec<&'a GapRecord> {
    let Some(&(oldest, size)) = retained_starts.iter().min() else {
        return Vec::new();
    };
    gaps.iter()
        .filter(|g| {
            WalFileName::parse(&g.last)
                .ok()
                .and_then(|f| f.segno_for(size))
                .is_some_and(|segno| (segno + 1) * size <= oldest)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_segments_group_into_contiguous_runs() {
        let names: Vec<String> = [
            "000000010000000000000009",
            "00000001000000000000000A",
            "00000001000000000000000B",
            "00000001000000000000000D",
            "000000020000000000000010",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let runs = runs(&names, 16 << 20);
        assert_eq!(
            runs,
            vec![
                (
                    "000000010000000000000009".into(),
                    "00000001000000000000000B".into(),
                    3
                ),
                (
                    "00000001000000000000000D".into(),
                    "00000001000000000000000D".into(),
                    1
                ),
                (
                    "000000020000000000000010".into(),
                    "000000020000000000000010".into(),
                    1
                ),
            ]
        );
    }

    #[test]
    fn a_gap_is_given_up_once_no_retained_backup_replays_through_it() {
        let gap = |first: &str, last: &str| GapRecord {
            timeline: 1,
            first: first.into(),
            last: last.into(),
            segments: 1,
            dropped_at: Utc::now(),
            recorded_at: Utc::now(),
            host: String::new(),
            reason: String::new(),
            key: format!("{first}-{last}"),
        };
        let gaps = vec![
            gap("000000010000000000000003", "000000010000000000000004"),
            gap("000000010000000000000009", "000000010000000000000009"),
        ];
        let size = 16u64 << 20;
        // The oldest retained backup starts in segment 5: the first gap is behind it.
        let kept = gaps_not_needed(&gaps, &[(5 * size + 40, size), (10 * size, size)]);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].first, "000000010000000000000003");
        assert!(gaps_not_needed(&gaps, &[]).is_empty());
    }

    #[test]
    fn a_gap_covers_its_range_on_its_timeline_only() {
        let gap = GapRecord {
            timeline: 1,
            first: "000000010000000000000009".into(),
            last: "00000001000000000000000B".into(),
            segments: 3,
            dropped_at: Utc::now(),
            recorded_at: Utc::now(),
            host: "h".into(),
            reason: "r".into(),
            key: String::new(),
        };
        assert!(gap.covers("00000001000000000000000A"));
        assert!(!gap.covers("00000001000000000000000C"));
        assert!(!gap.covers("00000002000000000000000A"));
    }
}
