//! Retention planning: which backups to keep and which to delete, and why.
//!
//! The planner is a pure function of the backups, the rules and `now`, so it can be
//! shown before anything is deleted (`pgvault prune --dry-run`) and tested exhaustively.
//! Its rules follow restic's `forget`:
//!
//! - `keep_last = N`: the N newest backups;
//! - `keep_hourly/daily/weekly/monthly/yearly = N`: the newest backup of each of the N
//!   newest hours/days/ISO weeks/months/years that have backups (UTC);
//! - `keep_within = "7d"`: every backup taken within that span before the newest backup
//!   (measured from the newest backup, not from now, so a stopped schedule cannot age
//!   the last good backups out).
//!
//! A backup kept by any rule is kept, and so is every backup it depends on: an
//! incremental base backup keeps its parent, the parent its own, up to the full at the
//! root of the chain (`chain`). The rules count restore points, whole or incremental.
//! A backup whose stored objects are still locked (`[repository] object_lock`) is kept
//! until the lock ends (`locked until …`), and keeps its chain like any kept backup:
//! deleting it would fail, or leave it half deleted.
//! Two guards come first:
//! - the newest backup is always kept;
//! - when the newest backup is older than `max_age` (the schedule is broken), nothing is
//!   deleted at all, and the plan says so.

pub mod prune;

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Datelike, Duration, Timelike, Utc};

use crate::error::{Error, Result};
pub use crate::policy::retention::RetentionRules;

/// Why a backup is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeepReason {
    /// It is the newest backup.
    Newest,
    /// The newest backup is older than the maximum age: nothing is deleted.
    StaleGuard,
    /// `keep_last`.
    Last,
    /// `keep_hourly`.
    Hourly,
    /// `keep_daily`.
    Daily,
    /// `keep_weekly`.
    Weekly,
    /// `keep_monthly`.
    Monthly,
    /// `keep_yearly`.
    Yearly,
    /// `keep_within`.
    Within,
    /// A kept incremental backup depends on it.
    Chain,
    /// A stored object of it is locked (Object Lock) until then: it cannot be deleted.
    Locked(LockedUntil),
}

/// Until when a backup cannot be deleted: the end of the latest retention on its
/// objects, or a legal hold (no date).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LockedUntil {
    /// The retention of its last-locked object ends then.
    Date(DateTime<Utc>),
    /// An object is under a legal hold, which has no end date.
    LegalHold,
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeepReason::Newest => "newest",
            KeepReason::StaleGuard => "stale-guard",
            KeepReason::Last => "last",
            KeepReason::Hourly => "hourly",
            KeepReason::Daily => "daily",
            KeepReason::Weekly => "weekly",
            KeepReason::Monthly => "monthly",
            KeepReason::Yearly => "yearly",
            KeepReason::Within => "within",
            KeepReason::Chain => "chain",
            KeepReason::Locked(LockedUntil::Date(until)) => {
                return write!(f, "locked until {}", until.format("%Y-%m-%d %H:%M:%S UTC"))
            }
            KeepReason::Locked(LockedUntil::LegalHold) => "locked (legal hold)",
        })
    }
}

/// A backup as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRef {
    /// The backup id.
    pub id: String,
    /// When it was taken.
    pub time: DateTime<Utc>,
    /// The backup it depends on (an incremental's parent).
    pub parent: Option<String>,
    /// Set when its objects are locked now (`object_lock`): it is kept until then.
    pub locked: Option<LockedUntil>,
}

/// The planner's decision for one backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanEntry {
    /// The backup.
    pub backup: BackupRef,
    /// Every rule that keeps it; empty means delete.
    pub reasons: BTreeSet<KeepReason>,
}

impl PlanEntry {
    /// Whether the backup is kept.
    pub fn keep(&self) -> bool {
        !self.reasons.is_empty()
    }
}

/// A retention plan, newest backup first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPlan {
    /// One entry per backup, newest first.
    pub entries: Vec<PlanEntry>,
    /// Set when the stale guard stopped all deletion, with the reason.
    pub stale: Option<String>,
}

impl RetentionPlan {
    /// The backups to delete, oldest first.
    pub fn to_delete(&self) -> Vec<&BackupRef> {
        self.entries
            .iter()
            .rev()
            .filter(|e| !e.keep())
            .map(|e| &e.backup)
            .collect()
    }
}

/// The calendar bucket (hour, day, ISO week, month, year) a backup time falls in.
type BucketOf = fn(&DateTime<Utc>) -> (i32, u32, u32, u32);

/// Plan retention for `backups` (any order) under `rules` at time `now`. `max_age` is
/// how old the newest backup may be before the stale guard stops all deletion.
pub fn plan(
    backups: &[BackupRef],
    rules: &RetentionRules,
    now: DateTime<Utc>,
    max_age: Option<Duration>,
) -> Result<RetentionPlan> {
    if rules.is_empty() {
        return Err(Error::Invalid(
            "the [retention] section has no keep rule; set at least one of keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_within".into(),
        ));
    }
    let mut sorted: Vec<BackupRef> = backups.to_vec();
    sorted.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.id.cmp(&a.id)));
    let mut entries: Vec<PlanEntry> = sorted
        .into_iter()
        .map(|backup| PlanEntry {
            backup,
            reasons: BTreeSet::new(),
        })
        .collect();
    let Some(newest_time) = entries.first().map(|e| e.backup.time) else {
        return Ok(RetentionPlan {
            entries,
            stale: None,
        });
    };
    entries[0].reasons.insert(KeepReason::Newest);

    if let Some(n) = rules.keep_last {
        for e in entries.iter_mut().take(n as usize) {
            e.reasons.insert(KeepReason::Last);
        }
    }
    let buckets: [(Option<u32>, KeepReason, BucketOf); 5] = [
        (rules.keep_hourly, KeepReason::Hourly, |t| {
            (t.year(), t.ordinal(), t.hour(), 0)
        }),
        (rules.keep_daily, KeepReason::Daily, |t| {
            (t.year(), t.ordinal(), 0, 0)
        }),
        (rules.keep_weekly, KeepReason::Weekly, |t| {
            let w = t.iso_week();
            (w.year(), w.week(), 0, 0)
        }),
        (rules.keep_monthly, KeepReason::Monthly, |t| {
            (t.year(), t.month(), 0, 0)
        }),
        (rules.keep_yearly, KeepReason::Yearly, |t| {
            (t.year(), 0, 0, 0)
        }),
    ];
    for (count, reason, bucket_of) in buckets {
        let Some(n) = count else { continue };
        let mut taken = 0u32;
        let mut last_bucket = None;
        for e in entries.iter_mut() {
            if taken >= n {
                break;
            }
            let bucket = bucket_of(&e.backup.time);
            if last_bucket != Some(bucket) {
                e.reasons.insert(reason);
                taken += 1;
                last_bucket = Some(bucket);
            }
        }
    }
    if let Some(span) = rules.keep_within {
        for e in entries.iter_mut() {
            if newest_time - e.backup.time <= span {
                e.reasons.insert(KeepReason::Within);
            }
        }
    }

    for e in entries.iter_mut() {
        if let Some(until) = e.backup.locked {
            e.reasons.insert(KeepReason::Locked(until));
        }
    }

    // Every kept backup keeps its ancestors, whatever order their times put them in.
    let index: std::collections::HashMap<String, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.backup.id.clone(), i))
        .collect();
    let mut pending: Vec<usize> = (0..entries.len()).filter(|&i| entries[i].keep()).collect();
    while let Some(i) = pending.pop() {
        let parent = entries[i].backup.parent.as_ref().and_then(|p| index.get(p));
        if let Some(&p) = parent {
            if entries[p].reasons.insert(KeepReason::Chain) && entries[p].reasons.len() == 1 {
                pending.push(p);
            }
        }
    }

    let mut stale = None;
    if let Some(max_age) = max_age {
        let age = now - newest_time;
        if age > max_age {
            stale = Some(format!(
                "the newest backup is {}h old, more than the allowed {}h: the schedule looks broken, so nothing is deleted",
                age.num_hours(),
                max_age.num_hours()
            ));
            for e in entries.iter_mut() {
                e.reasons.insert(KeepReason::StaleGuard);
            }
        }
    }
    Ok(RetentionPlan { entries, stale })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn daily_backups(days: i64) -> Vec<BackupRef> {
        (0..days)
            .map(|d| BackupRef {
                id: format!("b{d:03}"),
                time: at("2026-01-01T02:00:00Z") + Duration::days(d),
                parent: None,
                locked: None,
            })
            .collect()
    }

    fn kept(plan: &RetentionPlan) -> Vec<String> {
        plan.entries
            .iter()
            .filter(|e| e.keep())
            .map(|e| e.backup.id.clone())
            .collect()
    }

    #[test]
    fn empty_rules_are_refused() {
        let err = plan(
            &daily_backups(3),
            &RetentionRules::default(),
            at("2026-02-01T00:00:00Z"),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("no keep rule"), "{err}");
    }

    #[test]
    fn table_cases() {
        let now = at("2026-03-01T03:00:00Z");
        let backups = daily_backups(60); // 2026-01-01 .. 2026-03-01
        let cases: Vec<(RetentionRules, Vec<&str>)> = vec![
            (
                RetentionRules {
                    keep_last: Some(2),
                    ..Default::default()
                },
                vec!["b059", "b058"],
            ),
            (
                RetentionRules {
                    keep_daily: Some(3),
                    ..Default::default()
                },
                vec!["b059", "b058", "b057"],
            ),
            (
                RetentionRules {
                    keep_monthly: Some(3),
                    ..Default::default()
                },
                // newest of March (b059 = 03-01), February (b058 = 02-28), January (b030 = 01-31)
                vec!["b059", "b058", "b030"],
            ),
            (
                RetentionRules {
                    keep_within: Some(Duration::days(2)),
                    ..Default::default()
                },
                vec!["b059", "b058", "b057"],
            ),
            (
                RetentionRules {
                    keep_last: Some(1),
                    keep_weekly: Some(2),
                    ..Default::default()
                },
                // 03-01 is a Sunday (ISO week 9 ends), 02-22 is the previous Sunday
                vec!["b059", "b052"],
            ),
        ];
        for (rules, expected) in cases {
            let p = plan(&backups, &rules, now, None).unwrap();
            assert_eq!(kept(&p), expected, "{rules:?}");
            assert!(p.stale.is_none());
        }
    }

    #[test]
    fn reasons_name_every_rule_that_keeps_a_backup() {
        let rules = RetentionRules {
            keep_last: Some(1),
            keep_daily: Some(1),
            ..Default::default()
        };
        let p = plan(&daily_backups(3), &rules, at("2026-01-04T00:00:00Z"), None).unwrap();
        let reasons: Vec<String> = p.entries[0].reasons.iter().map(|r| r.to_string()).collect();
        assert_eq!(reasons, vec!["newest", "last", "daily"]);
        assert_eq!(
            p.to_delete()
                .iter()
                .map(|b| b.id.as_str())
                .collect::<Vec<_>>(),
            vec!["b000", "b001"]
        );
    }

    #[test]
    fn an_incremental_keeps_its_chain_down_to_the_full() {
        let mut backups = daily_backups(5);
        // b000 full, b001 full, b002 on b001, b003 on b002, b004 on b003.
        for (i, backup) in backups.iter_mut().enumerate().skip(2) {
            backup.parent = Some(format!("b{:03}", i - 1));
        }
        let rules = RetentionRules {
            keep_last: Some(1),
            ..Default::default()
        };
        let p = plan(&backups, &rules, at("2026-01-06T00:00:00Z"), None).unwrap();
        assert_eq!(kept(&p), vec!["b004", "b003", "b002", "b001"]);
        let reasons = |id: &str| {
            p.entries
                .iter()
                .find(|e| e.backup.id == id)
                .map(|e| e.reasons.iter().copied().collect::<Vec<_>>())
                .unwrap()
        };
        assert_eq!(reasons("b003"), vec![KeepReason::Chain]);
        assert_eq!(reasons("b001"), vec![KeepReason::Chain]);
        assert_eq!(
            p.to_delete()
                .iter()
                .map(|b| b.id.as_str())
                .collect::<Vec<_>>(),
            vec!["b000"]
        );
    }

    #[test]
    fn a_locked_backup_is_kept_with_its_chain_until_the_lock_ends() {
        let mut backups = daily_backups(4);
        // b002 is an incremental on b001; b002 is still locked, b000 is locked by a hold.
        backups[2].parent = Some("b001".into());
        let until = at("2026-02-01T00:00:00Z");
        backups[2].locked = Some(LockedUntil::Date(until));
        backups[0].locked = Some(LockedUntil::LegalHold);
        let rules = RetentionRules {
            keep_last: Some(1),
            ..Default::default()
        };
        let p = plan(&backups, &rules, at("2026-01-05T00:00:00Z"), None).unwrap();
        assert_eq!(kept(&p), vec!["b003", "b002", "b001", "b000"]);
        let reasons = |id: &str| {
            p.entries
                .iter()
                .find(|e| e.backup.id == id)
                .map(|e| e.reasons.iter().map(|r| r.to_string()).collect::<Vec<_>>())
                .unwrap()
        };
        assert_eq!(
            reasons("b002"),
            vec!["locked until 2026-02-01 00:00:00 UTC"]
        );
        assert_eq!(reasons("b001"), vec!["chain"]);
        assert_eq!(reasons("b000"), vec!["locked (legal hold)"]);
        assert!(p.to_delete().is_empty());
    }

    #[test]
    fn a_stale_newest_backup_stops_all_deletion() {
        let rules = RetentionRules {
            keep_last: Some(1),
            ..Default::default()
        };
        let p = plan(
            &daily_backups(10),
            &rules,
            at("2026-02-01T00:00:00Z"),
            Some(Duration::days(2)),
        )
        .unwrap();
        assert!(p.stale.is_some());
        assert!(p.to_delete().is_empty());
    }
}

#[cfg(test)]
mod properties {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn backups_from(hours: &[i64]) -> Vec<BackupRef> {
        let base = DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        hours
            .iter()
            .enumerate()
            .map(|(i, h)| BackupRef {
                id: format!("id{i:04}"),
                time: base + Duration::hours(*h),
                parent: None,
                locked: None,
            })
            .collect()
    }

    /// Backups at `hours`, where backup `i` is an incremental of the nearest earlier
    /// backup when `incremental[i]` (the first one is always a full).
    fn chains_from(hours: &[i64], incremental: &[bool]) -> Vec<BackupRef> {
        let mut backups = backups_from(hours);
        backups.sort_by(|a, b| a.time.cmp(&b.time).then_with(|| a.id.cmp(&b.id)));
        for i in 1..backups.len() {
            if incremental.get(i).copied().unwrap_or(false) {
                backups[i].parent = Some(backups[i - 1].id.clone());
            }
        }
        backups
    }

    proptest! {
        #[test]
        fn plans_keep_what_every_rule_promises(
            hours in prop::collection::vec(0i64..(3 * 365 * 24), 1..80),
            last in prop::option::of(0u32..8),
            daily in prop::option::of(0u32..8),
            monthly in prop::option::of(0u32..6),
            within in prop::option::of(0i64..400),
        ) {
            let backups = backups_from(&hours);
            let rules = RetentionRules {
                keep_last: Some(last.unwrap_or(0)),
                keep_daily: daily,
                keep_monthly: monthly,
                keep_within: within.map(Duration::hours),
                ..Default::default()
            };
            let now = backups.iter().map(|b| b.time).max().unwrap() + Duration::hours(1);
            let p = plan(&backups, &rules, now, None).unwrap();
            let keep: BTreeMap<&str, bool> = p.entries.iter().map(|e| (e.backup.id.as_str(), e.keep())).collect();
            prop_assert_eq!(keep.len(), backups.len());

            // Newest first; the newest is always kept.
            let mut sorted = backups.clone();
            sorted.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.id.cmp(&a.id)));
            prop_assert!(keep[sorted[0].id.as_str()]);

            // keep_last: the N newest.
            for b in sorted.iter().take(last.unwrap_or(0) as usize) {
                prop_assert!(keep[b.id.as_str()]);
            }
            // keep_daily: the newest backup of each of the N newest days.
            if let Some(n) = daily {
                let mut seen = Vec::new();
                for b in &sorted {
                    let day = b.time.date_naive();
                    if !seen.contains(&day) {
                        if seen.len() == n as usize { break; }
                        seen.push(day);
                        prop_assert!(keep[b.id.as_str()], "daily {} not kept", b.id);
                    }
                }
            }
            // keep_within: everything within the span of the newest.
            if let Some(h) = within {
                for b in &sorted {
                    if sorted[0].time - b.time <= Duration::hours(h) {
                        prop_assert!(keep[b.id.as_str()]);
                    }
                }
            }
            // Deterministic, and independent of input order.
            let mut reversed = backups.clone();
            reversed.reverse();
            prop_assert_eq!(plan(&reversed, &rules, now, None).unwrap(), p.clone());
            prop_assert_eq!(plan(&backups, &rules, now, None).unwrap(), p);
        }

        #[test]
        fn a_kept_backup_keeps_its_whole_chain(
            hours in prop::collection::vec(0i64..(90 * 24), 1..60),
            incremental in prop::collection::vec(any::<bool>(), 60),
            last in 0u32..6,
            hourly in prop::option::of(0u32..6),
        ) {
            let backups = chains_from(&hours, &incremental);
            let rules = RetentionRules { keep_last: Some(last), keep_hourly: hourly, ..Default::default() };
            let now = backups.iter().map(|b| b.time).max().unwrap();
            let p = plan(&backups, &rules, now, None).unwrap();
            let kept: BTreeMap<&str, bool> = p.entries.iter().map(|e| (e.backup.id.as_str(), e.keep())).collect();
            for b in &backups {
                if let (true, Some(parent)) = (kept[b.id.as_str()], &b.parent) {
                    prop_assert!(kept[parent.as_str()], "{} kept but its parent {} is not", b.id, parent);
                }
            }
            // Only ancestors of kept backups are kept for the chain's sake.
            for e in &p.entries {
                if e.reasons.iter().eq([KeepReason::Chain].iter()) {
                    prop_assert!(backups.iter().any(|b| b.parent.as_deref() == Some(e.backup.id.as_str()) && kept[b.id.as_str()]));
                }
            }
        }

        #[test]
        fn a_stale_schedule_never_deletes(
            hours in prop::collection::vec(0i64..1000, 1..40),
            last in 0u32..5,
        ) {
            let backups = backups_from(&hours);
            let newest = backups.iter().map(|b| b.time).max().unwrap();
            let rules = RetentionRules { keep_last: Some(last), ..Default::default() };
            let p = plan(&backups, &rules, newest + Duration::days(10), Some(Duration::days(2))).unwrap();
            prop_assert!(p.to_delete().is_empty());
            prop_assert!(p.stale.is_some());
        }
    }
}
