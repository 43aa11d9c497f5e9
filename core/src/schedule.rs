//! Backup schedules: cron expressions in a time zone, with start jitter and catch-up.
//!
//! Both the standard 5-field form (`0 2 * * *`, day-of-week 0–7 with 0 and 7 = Sunday)
//! and the `cron` crate's 6/7-field form with seconds (`*/5 * * * * *`) are accepted.
//! Everything here is a pure function of its inputs (`now` included), so the agent's
//! decisions are testable without waiting for a clock.

use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    expression: String,
    cron: cron::Schedule,
    timezone: Tz,
}

const DAY_NAMES: [&str; 8] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"];

/// Standard cron numbers days of the week 0–7 (0 and 7 are Sunday); the `cron` crate
/// numbers them 1–7 from Sunday. Names mean the same in both, so numbers become names.
fn day_of_week_names(field: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut digits = String::new();
    let mut after_slash = false;
    let flush = |digits: &mut String, out: &mut String, after_slash: bool| -> Result<(), String> {
        if digits.is_empty() {
            return Ok(());
        }
        if after_slash {
            out.push_str(digits);
        } else {
            let n: usize = digits
                .parse()
                .map_err(|_| format!("bad day of week {digits:?}"))?;
            let name = DAY_NAMES
                .get(n)
                .ok_or_else(|| format!("day of week {n} is out of range 0-7"))?;
            out.push_str(name);
        }
        digits.clear();
        Ok(())
    };
    for c in field.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        flush(&mut digits, &mut out, after_slash)?;
        after_slash = c == '/';
        out.push(c);
    }
    flush(&mut digits, &mut out, after_slash)?;
    Ok(out)
}

/// Why a schedule does not parse, by the value to blame, so a policy error points at
/// the time zone or at the expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleError {
    /// The cron expression is wrong.
    Expression(String),
    /// The time zone is unknown.
    TimeZone(String),
}

impl std::fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScheduleError::Expression(m) | ScheduleError::TimeZone(m) => f.write_str(m),
        }
    }
}

impl Schedule {
    /// Parse `expression` in `timezone` (an IANA name such as `Europe/Berlin`; `UTC` if None).
    pub fn parse(expression: &str, timezone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let fields: Vec<&str> = expression.split_whitespace().collect();
        let normalized = match fields.len() {
            5 => format!(
                "0 {} {} {} {} {}",
                fields[0],
                fields[1],
                fields[2],
                fields[3],
                day_of_week_names(fields[4]).map_err(ScheduleError::Expression)?
            ),
            6 | 7 => fields.join(" "),
            n => {
                return Err(ScheduleError::Expression(format!(
                    "cron expression {expression:?} has {n} fields; use 5 (minute hour day month weekday) or 6/7 with seconds first"
                )))
            }
        };
        let cron = cron::Schedule::from_str(&normalized).map_err(|e| {
            ScheduleError::Expression(format!("invalid cron expression {expression:?}: {e}"))
        })?;
        let timezone = match timezone {
            None => Tz::UTC,
            Some(name) => name
                .parse::<Tz>()
                .map_err(|_| ScheduleError::TimeZone(format!("unknown time zone {name:?}; use an IANA name such as \"Europe/Berlin\" or \"UTC\"")))?,
        };
        Ok(Schedule {
            expression: expression.to_string(),
            cron,
            timezone,
        })
    }

    /// The expression as written in the policy.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The first scheduled time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .after(&t.with_timezone(&self.timezone))
            .next()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The latest scheduled time at or before `t` (searching back up to about 400 days).
    /// The window grows from a minute, so frequent schedules cost a few steps, not millions.
    pub fn previous_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let tz_t = t.with_timezone(&self.timezone);
        let mut window = Duration::minutes(1);
        while window <= Duration::days(800) {
            let found = self
                .cron
                .after(&(tz_t - window))
                .take_while(|d| *d <= tz_t)
                .last();
            if let Some(d) = found {
                return Some(d.with_timezone(&Utc));
            }
            window = window * 2;
        }
        None
    }

    /// Whether a backup is owed now: the last successful one (if any) predates the most
    /// recent scheduled slot. A policy that never succeeded is always owed a backup.
    pub fn catch_up_due(&self, last_success: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        match (last_success, self.previous_at_or_before(now)) {
            (None, _) => true,
            (Some(last), Some(slot)) => last < slot,
            (Some(_), None) => false,
        }
    }

    /// The longest gap between consecutive slots over the next `samples` slots: how old
    /// the newest backup may normally get.
    pub fn period(&self, from: DateTime<Utc>, samples: usize) -> Option<Duration> {
        let times: Vec<DateTime<Utc>> = self
            .cron
            .after(&from.with_timezone(&self.timezone))
            .take(samples.max(2))
            .map(|d| d.with_timezone(&Utc))
            .collect();
        times.windows(2).map(|w| w[1] - w[0]).max()
    }
}

/// A deterministic jitter in `[0, max)` for `policy` and `slot`, so a fleet spreads out
/// while one agent's delay for a slot stays the same across restarts.
pub fn jitter(policy: &str, slot: DateTime<Utc>, max: Duration) -> Duration {
    use sha2::{Digest, Sha256};
    let ms = max.num_milliseconds();
    if ms <= 0 {
        return Duration::zero();
    }
    let digest = Sha256::digest(format!("{policy}@{}", slot.timestamp()).as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    Duration::milliseconds((u64::from_le_bytes(first) % ms as u64) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn five_field_expressions_run_at_minute_zero_seconds() {
        let s = Schedule::parse("0 2 * * *", None).unwrap();
        assert_eq!(
            s.next_after(at("2026-11-28T01:00:00Z")).unwrap(),
            at("2026-11-28T02:00:00Z")
        );
        assert_eq!(
            s.next_after(at("2026-11-28T02:00:00Z")).unwrap(),
            at("2026-11-29T02:00:00Z")
        );
    }

    #[test]
    fn numeric_weekdays_follow_standard_cron() {
        // 2026-11-28 is a Saturday; "1-5" is Monday to Friday, 0 and 7 are Sunday.
        let weekdays = Schedule::parse("30 4 * * 1-5", None).unwrap();
        assert_eq!(
            weekdays.next_after(at("2026-11-28T00:00:00Z")).unwrap(),
            at("2026-11-30T04:30:00Z")
        );
        for sunday in ["0 3 * * 0", "0 3 * * 7", "0 3 * * SUN"] {
            let s = Schedule::parse(sunday, None).unwrap();
            assert_eq!(
                s.next_after(at("2026-11-28T00:00:00Z")).unwrap(),
                at("2026-11-29T03:00:00Z"),
                "{sunday}"
            );
        }
    }

    #[test]
    fn seconds_form_and_timezones() {
        let s = Schedule::parse("*/5 * * * * *", None).unwrap();
        assert_eq!(
            s.next_after(at("2026-11-28T00:00:01Z")).unwrap(),
            at("2026-11-28T00:00:05Z")
        );
        let berlin = Schedule::parse("0 2 * * *", Some("Europe/Berlin")).unwrap();
        assert_eq!(
            berlin.next_after(at("2026-11-28T00:00:00Z")).unwrap(),
            at("2026-11-28T01:00:00Z")
        );
    }

    #[test]
    fn invalid_expressions_and_zones_are_named() {
        assert!(Schedule::parse("0 2 * *", None)
            .unwrap_err()
            .to_string()
            .contains("has 4 fields"));
        assert!(Schedule::parse("0 25 * * *", None)
            .unwrap_err()
            .to_string()
            .contains("invalid cron expression"));
        assert!(Schedule::parse("0 2 * * 9", None)
            .unwrap_err()
            .to_string()
            .contains("out of range"));
        assert!(Schedule::parse("0 2 * * *", Some("Mars/Base"))
            .unwrap_err()
            .to_string()
            .contains("unknown time zone"));
    }

    #[test]
    fn catch_up_when_the_last_success_predates_the_last_slot() {
        let s = Schedule::parse("0 2 * * *", None).unwrap();
        let now = at("2026-11-28T09:00:00Z");
        assert!(s.catch_up_due(None, now));
        assert!(s.catch_up_due(Some(at("2026-11-27T02:00:05Z")), now));
        assert!(!s.catch_up_due(Some(at("2026-11-28T02:00:05Z")), now));
        assert_eq!(s.period(now, 5), Some(Duration::days(1)));
        let every_2s = Schedule::parse("*/2 * * * * *", None).unwrap();
        assert_eq!(
            every_2s.previous_at_or_before(at("2026-11-28T09:00:03Z")),
            Some(at("2026-11-28T09:00:02Z"))
        );
        let yearly = Schedule::parse("0 0 1 1 *", None).unwrap();
        assert_eq!(
            yearly.previous_at_or_before(now),
            Some(at("2026-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn jitter_is_bounded_and_stable() {
        let slot = at("2026-11-28T02:00:00Z");
        let j = jitter("app", slot, Duration::minutes(5));
        assert!(j >= Duration::zero() && j < Duration::minutes(5));
        assert_eq!(j, jitter("app", slot, Duration::minutes(5)));
        assert_eq!(jitter("app", slot, Duration::zero()), Duration::zero());
    }
}
