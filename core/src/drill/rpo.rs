//! The RPO a policy's backups achieve: the largest stretch of time whose changes no
//! backup holds, over a window before the drill.
//!
//! Given the consistent points of the successful backups, the gaps are the distances
//! between consecutive points and from the newest point to the drill itself. The newest
//! point before the window is included as an anchor, so a gap that straddles the
//! window's start is counted whole.

use chrono::{DateTime, Duration, Utc};

/// The worst gap and where it lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpoMeasurement {
    /// Length of the largest gap.
    pub worst_gap: Duration,
    /// Its start (a backup's consistent point).
    pub from: DateTime<Utc>,
    /// Its end (the next backup's consistent point, or `now`).
    pub to: DateTime<Utc>,
    /// Backups whose consistent point lies in the window.
    pub backups_in_window: usize,
}

/// Measure the RPO at `now` over `window` from the backups' consistent points (any
/// order). `None` when there is no backup at or before `now`.
pub fn measure(
    points: &[DateTime<Utc>],
    now: DateTime<Utc>,
    window: Duration,
) -> Option<RpoMeasurement> {
    let start = now - window;
    let mut sorted: Vec<DateTime<Utc>> = points.iter().copied().filter(|p| *p <= now).collect();
    sorted.sort();
    sorted.dedup();
    let first_in_window = sorted.partition_point(|p| *p < start);
    let anchor = first_in_window.saturating_sub(1);
    let considered = &sorted[anchor..];
    let mut ends: Vec<DateTime<Utc>> = considered.iter().skip(1).copied().collect();
    ends.push(now);
    let (from, to) = considered
        .iter()
        .zip(ends)
        .map(|(a, b)| (*a, b))
        .max_by_key(|(a, b)| *b - *a)?;
    Some(RpoMeasurement {
        worst_gap: to - from,
        from,
        to,
        backups_in_window: sorted.len() - first_in_window,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn t(h: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap() + Duration::hours(h)
    }

    #[test]
    fn the_largest_gap_wins() {
        let m = measure(&[t(0), t(24), t(30), t(54)], t(60), Duration::days(30)).unwrap();
        assert_eq!(m.worst_gap, Duration::hours(24));
        // Of equal gaps, the most recent is reported.
        assert_eq!((m.from, m.to), (t(30), t(54)));
        assert_eq!(m.backups_in_window, 4);
    }

    #[test]
    fn the_gap_to_now_counts() {
        let m = measure(&[t(30), t(0)], t(100), Duration::days(30)).unwrap();
        assert_eq!(m.worst_gap, Duration::hours(70));
        assert_eq!(m.to, t(100));
    }

    #[test]
    fn a_gap_straddling_the_window_start_counts_whole() {
        let m = measure(&[t(0), t(50), t(52)], t(53), Duration::hours(10)).unwrap();
        assert_eq!(m.worst_gap, Duration::hours(50));
        assert_eq!(m.backups_in_window, 2);
    }

    #[test]
    fn no_backup_no_measurement() {
        assert!(measure(&[], t(0), Duration::days(1)).is_none());
        assert!(measure(&[t(5)], t(1), Duration::days(1)).is_none());
    }

    proptest! {
        #[test]
        fn worst_gap_bounds_every_gap(hours in proptest::collection::vec(0i64..1000, 1..30), now in 1000i64..1200) {
            let points: Vec<_> = hours.iter().map(|h| t(*h)).collect();
            let m = measure(&points, t(now), Duration::days(365)).unwrap();
            let mut sorted = hours.clone();
            sorted.sort();
            sorted.push(now);
            for pair in sorted.windows(2) {
                prop_assert!(Duration::hours(pair[1] - pair[0]) <= m.worst_gap);
            }
            prop_assert!(sorted.windows(2).any(|p| Duration::hours(p[1] - p[0]) == m.worst_gap));
        }
    }
}
