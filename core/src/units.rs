//! Sizes and durations as people write and read them: the spans a policy or a flag
//! gives (`7d`, `36h`), and byte counts and ages in messages and listings.

use chrono::Duration;

/// Parse spans such as `7d`, `36h`, `2w`, `90m`, `1d12h`: numbers with the units `s`,
/// `m` (minutes), `h`, `d` and `w`, added up. The arithmetic is `humantime`'s, so a span
/// too long to represent (`9999999999999w`) is an error, never a panic.
pub fn parse_span(value: &str) -> std::result::Result<Duration, String> {
    let v = value.trim();
    if v.is_empty() {
        return Err("empty duration; use e.g. \"7d\", \"36h\" or \"2w\"".into());
    }
    // humantime knows more units (ms, months, years…); a policy keeps to five whose
    // length never varies, so "7y" or "5ms" is a mistake to report, not to guess.
    let mut unit = String::new();
    for c in v.chars().chain(std::iter::once('0')) {
        if c.is_ascii_digit() {
            if !unit.is_empty() && !matches!(unit.as_str(), "s" | "m" | "h" | "d" | "w") {
                return Err(format!(
                    "unknown unit {unit:?} in {value:?}; use s, m, h, d or w"
                ));
            }
            unit.clear();
        } else {
            unit.push(c);
        }
    }
    if v.ends_with(|c: char| c.is_ascii_digit()) {
        let digits: String = v.chars().rev().take_while(char::is_ascii_digit).collect();
        let digits: String = digits.chars().rev().collect();
        return Err(format!("{value:?} lacks a unit; write e.g. \"{digits}d\""));
    }
    let span = humantime::parse_duration(v).map_err(|e| match e {
        humantime::DurationError::NumberOverflow => {
            format!("{value:?} is longer than any duration pgvault can hold")
        }
        _ => format!("{value:?} is not a duration such as \"7d\" or \"36h\""),
    })?;
    Duration::from_std(span)
        .ok()
        .filter(|d| *d <= MAX_SPAN)
        .ok_or_else(|| {
            format!("{value:?} is longer than any duration pgvault can hold (at most 100 years)")
        })
}

/// The longest span a policy or flag may give: 100 years. Spans are subtracted from
/// dates (`now - keep_within`), and a century keeps that far inside the calendar.
pub const MAX_SPAN: Duration = Duration::days(36_500);

/// Parse sizes such as `8MiB`, `512KiB`, `1g`, `5242880` (bytes). Units are binary
/// (KiB, MiB, GiB; `k`, `m`, `g` alike). `MB`, `KB` and `GB` are refused: they mean
/// powers of ten to some readers and of two to others, and a part size must not be a
/// guess.
pub fn parse_byte_size(value: &str) -> std::result::Result<u64, String> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{value:?} is not a size such as \"8MiB\""))?;
    let unit = unit.trim();
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" | "mb" | "gb" => {
            let binary = format!("{}iB", &unit[..1].to_ascii_uppercase());
            return Err(format!(
                "{value:?} is ambiguous ({unit} means 1000s to some and 1024s to others); write {num}{binary}"
            ));
        }
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {value:?}; use KiB, MiB or GiB"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{value:?} is too large"))
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

/// A configured duration as a policy would write it (`5m`, `1h 30m`), for messages.
pub fn human_duration(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
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
    fn huge_spans_are_errors_not_panics() {
        for huge in [
            "9999999999999w",
            "100000000d",
            "99999999999999999999s",
            "36501d",
        ] {
            let err = parse_span(huge).unwrap_err();
            assert!(err.contains("longer than any duration"), "{huge}: {err}");
        }
        assert!(parse_span("5ms")
            .unwrap_err()
            .contains("unknown unit \"ms\""));
        assert_eq!(parse_span("90m").unwrap(), Duration::minutes(90));
        assert_eq!(parse_span("2w").unwrap(), Duration::weeks(2));
        assert_eq!(parse_span("36500d").unwrap(), MAX_SPAN);
    }

    #[test]
    fn sizes_are_binary_and_mb_is_refused() {
        assert_eq!(parse_byte_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_byte_size("512 KiB").unwrap(), 512 << 10);
        assert_eq!(parse_byte_size("5242880").unwrap(), 5_242_880);
        let err = parse_byte_size("16MB").unwrap_err();
        assert!(err.contains("write 16MiB"), "{err}");
        assert!(parse_byte_size("99999999999999999GiB").is_err());
    }

    #[test]
    fn spans_parse() {
        assert_eq!(parse_span("7d").unwrap(), Duration::days(7));
        assert_eq!(parse_span("1d12h").unwrap(), Duration::hours(36));
        assert!(parse_span("7").is_err());
        assert!(parse_span("7y").is_err());
    }
}
