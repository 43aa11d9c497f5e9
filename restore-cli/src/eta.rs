//! Percent done and time left of a run whose size is estimated beforehand (a backup
//! expects about as many bytes as the previous one of its kind): pure arithmetic, for
//! the progress display on a terminal.

use std::time::Duration;

use pgvault_core::units::{human_age, human_bytes};

/// How far a run is, against the bytes it is expected to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Estimate {
    /// Percent done, 0 to 99: a run is done when it says so, not when it reaches an
    /// estimate, and may read more than expected.
    pub(crate) percent: u8,
    /// Time left at the average rate so far; `None` before the first byte and once past
    /// the expected size (then nothing says how much is left).
    pub(crate) remaining: Option<Duration>,
}

/// The estimate after `done` of `expected` bytes in `elapsed`; `None` when nothing is
/// expected (no estimate, or an estimate of zero bytes).
pub(crate) fn estimate(done: u64, expected: u64, elapsed: Duration) -> Option<Estimate> {
    if expected == 0 {
        return None;
    }
    let percent = (u128::from(done) * 100 / u128::from(expected)).min(99) as u8;
    let remaining = if done == 0 || done >= expected || elapsed.is_zero() {
        None
    } else {
        let rate = done as f64 / elapsed.as_secs_f64();
        Duration::try_from_secs_f64((expected - done) as f64 / rate).ok()
    };
    Some(Estimate { percent, remaining })
}

/// What the progress line shows before the byte counts: `42% of ~1.2 GiB, 3m left`, or
/// `past the ~1.2 GiB expected`; `None` without an estimate.
pub(crate) fn describe(done: u64, expected: Option<u64>, elapsed: Duration) -> Option<String> {
    let expected = expected?;
    let e = estimate(done, expected, elapsed)?;
    Some(if done >= expected {
        format!("past the ~{} expected", human_bytes(expected))
    } else {
        match e.remaining {
            Some(left) => format!(
                "{}% of ~{}, {} left",
                e.percent,
                human_bytes(expected),
                human_age(i64::try_from(left.as_secs()).unwrap_or(i64::MAX))
            ),
            None => format!("{}% of ~{}", e.percent, human_bytes(expected)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn percent_and_time_left_follow_the_average_rate() {
        // A quarter in 10 s: three quarters left take 30 s.
        assert_eq!(
            estimate(250, 1000, 10 * SECOND),
            Some(Estimate {
                percent: 25,
                remaining: Some(30 * SECOND)
            })
        );
        // Percent rounds down: 99.9% is not done.
        assert_eq!(estimate(999, 1000, SECOND).map(|e| e.percent), Some(99));
        assert_eq!(estimate(1, 3, SECOND).map(|e| e.percent), Some(33));
    }

    #[test]
    fn nothing_read_yet_gives_no_time_left() {
        assert_eq!(
            estimate(0, 1000, 5 * SECOND),
            Some(Estimate {
                percent: 0,
                remaining: None
            })
        );
        assert_eq!(estimate(10, 1000, Duration::ZERO).unwrap().remaining, None);
    }

    #[test]
    fn past_the_estimate_stays_below_100_percent_without_a_time() {
        for done in [1000, 5000] {
            assert_eq!(
                estimate(done, 1000, SECOND),
                Some(Estimate {
                    percent: 99,
                    remaining: None
                })
            );
        }
    }

    #[test]
    fn no_estimate_means_no_percent() {
        assert_eq!(estimate(10, 0, SECOND), None);
        assert_eq!(describe(10, None, SECOND), None);
        assert_eq!(describe(10, Some(0), SECOND), None);
    }

    #[test]
    fn extreme_values_neither_overflow_nor_panic() {
        let e = estimate(1, u64::MAX, Duration::from_secs(u64::MAX / 4)).unwrap();
        assert_eq!(e.percent, 0);
        assert_eq!(e.remaining, None, "too long to represent");
        assert_eq!(
            estimate(u64::MAX - 1, u64::MAX, SECOND).unwrap().percent,
            99
        );
    }

    #[test]
    fn the_line_reads_as_a_sentence() {
        let mib = 1024 * 1024;
        assert_eq!(
            describe(256 * mib, Some(1024 * mib), 60 * SECOND).as_deref(),
            Some("25% of ~1.0 GiB, 3m left")
        );
        assert_eq!(
            describe(0, Some(1024 * mib), SECOND).as_deref(),
            Some("0% of ~1.0 GiB")
        );
        assert_eq!(
            describe(2048 * mib, Some(1024 * mib), SECOND).as_deref(),
            Some("past the ~1.0 GiB expected")
        );
    }
}
