//! Sizes and durations as people write and read them: the spans a policy or a flag
//! gives (`7d`, `36h`), and byte counts and ages in messages and listings.

use chrono::Duration;

/// Parse spans such as `7d`, `36h`, `2w`, `90m`, `1d12h`.
pub fn parse_span(value: &str) -> std::result::Result<Duration, String> {
    let v = value.trim();
    if v.is_empty() {
        return Err("empty duration; use e.g. \"7d\", \"36h\" or \"2w\"".into());
    }
    let mut total = Duration::zero();
    let mut digits = String::new();
    for c in v.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: i64 = digits
            .parse()
            .map_err(|_| format!("{value:?} is not a duration such as \"7d\" or \"36h\""))?;
        digits.clear();
        total += match c {
            's' => Duration::seconds(n),
            'm' => Duration::minutes(n),
            'h' => Duration::hours(n),
            'd' => Duration::days(n),
            'w' => Duration::weeks(n),
            other => {
                return Err(format!(
                    "unknown unit {other:?} in {value:?}; use s, m, h, d or w"
                ))
            }
        };
    }
    if !digits.is_empty() {
        return Err(format!("{value:?} lacks a unit; write e.g. \"{digits}d\""));
    }
    Ok(total)
}

/// Byte counts for people: `512 B`, `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A duration in the largest sensible units, for "backup age" lines.
pub fn human_age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_parse() {
        assert_eq!(parse_span("7d").unwrap(), Duration::days(7));
        assert_eq!(parse_span("1d12h").unwrap(), Duration::hours(36));
        assert!(parse_span("7").is_err());
        assert!(parse_span("7y").is_err());
    }
}
