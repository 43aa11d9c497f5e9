//! WAL file names and positions: segment names and numbers for any segment size, LSNs,
//! and timeline history files, with the segments a recovery needs across timeline
//! switches. Pure functions, no I/O.

use crate::error::{Error, Result};

/// The default WAL segment size; the real one is learned from fetched segments.
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

/// What a WAL file name denotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalFileKind {
    /// A WAL segment: `TTTTTTTTXXXXXXXXYYYYYYYY`.
    Segment,
    /// A timeline history file: `TTTTTTTT.history`.
    History,
    /// A backup history file: `<segment>.XXXXXXXX.backup`.
    BackupHistory,
    /// A partial segment left by a promotion: `<segment>.partial`.
    Partial,
}

/// A parsed WAL file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalFileName {
    /// The name as PostgreSQL writes it.
    pub name: String,
    /// Its kind.
    pub kind: WalFileKind,
    /// The timeline.
    pub timeline: u32,
    /// The segment number within the timeline (absent for history files).
    pub segno: Option<u64>,
}

fn hex_u32(s: &str) -> Option<u32> {
    (s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u32::from_str_radix(s, 16).ok())
        .flatten()
}

impl WalFileName {
    /// Parse a WAL file name. Segment numbers are counted in 16 MiB units of the
    /// `XXXXXXXX` / `YYYYYYYY` halves (`segno = log * 0x100 + seg` for 16 MiB segments);
    /// [`WalFileName::segno_for`] converts for other sizes.
    pub fn parse(name: &str) -> Result<WalFileName> {
        let bad = || {
            Error::Invalid(format!(
                "{name:?} is not a WAL file name (expected e.g. 000000010000000000000003, 00000002.history)"
            ))
        };
        if let Some(tl) = name.strip_suffix(".history") {
            return Ok(WalFileName {
                name: name.into(),
                kind: WalFileKind::History,
                timeline: hex_u32(tl).ok_or_else(bad)?,
                segno: None,
            });
        }
        let (segment, kind) = if let Some(s) = name.strip_suffix(".partial") {
            (s, WalFileKind::Partial)
        } else if let Some(s) = name.strip_suffix(".backup") {
            let (seg, offset) = s.split_once('.').ok_or_else(bad)?;
            hex_u32(offset).ok_or_else(bad)?;
            (seg, WalFileKind::BackupHistory)
        } else {
            (name, WalFileKind::Segment)
        };
        if segment.len() != 24 {
            return Err(bad());
        }
        let timeline = hex_u32(&segment[..8]).ok_or_else(bad)?;
        let log = hex_u32(&segment[8..16]).ok_or_else(bad)?;
        let seg = hex_u32(&segment[16..]).ok_or_else(bad)?;
        Ok(WalFileName {
            name: name.into(),
            kind,
            timeline,
            segno: Some(u64::from(log) * 0x1_0000_0000 + u64::from(seg)),
        })
    }

    /// The segment number for `segment_size`-byte segments.
    pub fn segno_for(&self, segment_size: u64) -> Option<u64> {
        let per_log = segments_per_log(segment_size);
        self.segno
            .map(|raw| (raw / 0x1_0000_0000) * per_log + (raw % 0x1_0000_0000))
    }
}

/// Segments per `XXXXXXXX` unit: 0x1_0000_0000 bytes divided by the segment size.
pub fn segments_per_log(segment_size: u64) -> u64 {
    0x1_0000_0000 / segment_size.max(1)
}

/// The file name of segment `segno` on `timeline`.
pub fn segment_name(timeline: u32, segno: u64, segment_size: u64) -> String {
    let per_log = segments_per_log(segment_size);
    format!(
        "{timeline:08X}{:08X}{:08X}",
        segno / per_log,
        segno % per_log
    )
}

/// Parse an LSN such as `0/3000028`: two hexadecimal halves of at most 32 bits each,
/// as PostgreSQL writes them. A half out of range is refused, not wrapped.
pub fn parse_lsn(text: &str) -> Result<u64> {
    let bad = || Error::Invalid(format!("{text:?} is not an LSN such as 0/3000028"));
    let (hi, lo) = text.trim().split_once('/').ok_or_else(bad)?;
    let half = |h: &str| {
        if h.is_empty() || h.len() > 8 {
            return Err(bad());
        }
        u32::from_str_radix(h, 16).map_err(|_| bad())
    };
    Ok((u64::from(half(hi)?) << 32) | u64::from(half(lo)?))
}

/// Format an LSN as PostgreSQL does.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// A timeline switch from a `.history` file: `timeline` ended at `switch_lsn`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineSwitch {
    /// The parent timeline.
    pub timeline: u32,
    /// Where the parent ended and the child began.
    pub switch_lsn: u64,
}

/// Parse a `.history` file: lines `<parent tli>\t<switch lsn>\t<reason>`.
pub fn parse_history(text: &str) -> Result<Vec<TimelineSwitch>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut parts = l.split_whitespace();
            let tli = parts
                .next()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| Error::Invalid(format!("bad timeline history line {l:?}")))?;
            let lsn = parse_lsn(parts.next().unwrap_or_default())?;
            Ok(TimelineSwitch {
                timeline: tli,
                switch_lsn: lsn,
            })
        })
        .collect()
}

/// The WAL segments recovery needs, in order, from `start_lsn` on `start_timeline` to
/// `end` on the last timeline of `path` (`path`: the switches leading from the start
/// timeline to the target timeline, oldest first, then the target timeline itself).
pub fn needed_segments(
    start_timeline: u32,
    start_lsn: u64,
    switches: &[TimelineSwitch],
    target_timeline: u32,
    end_lsn: u64,
    segment_size: u64,
) -> Vec<String> {
    let mut names = Vec::new();
    let mut from = start_lsn / segment_size;
    for switch in switches
        .iter()
        .filter(|s| s.timeline >= start_timeline && s.timeline < target_timeline)
    {
        if end_lsn <= switch.switch_lsn {
            // Replay ends before this switch: the parent timeline's copy suffices.
            for segno in from..=end_lsn / segment_size {
                names.push(segment_name(switch.timeline, segno, segment_size));
            }
            return names;
        }
        let last = switch.switch_lsn / segment_size;
        for segno in from..=last {
            names.push(segment_name(switch.timeline, segno, segment_size));
        }
        // The child timeline starts with its own copy of the switch segment.
        from = last;
    }
    for segno in from..=end_lsn / segment_size {
        names.push(segment_name(target_timeline, segno, segment_size));
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = DEFAULT_SEGMENT_SIZE;
    #[test]
    fn names_parse_and_round_trip() {
        let f = WalFileName::parse("0000000200000001000000FF").unwrap();
        assert_eq!((f.kind, f.timeline), (WalFileKind::Segment, 2));
        let segno = f.segno_for(SEG).unwrap();
        assert_eq!(segno, 0x100 + 0xFF);
        assert_eq!(segment_name(2, segno, SEG), "0000000200000001000000FF");
        assert_eq!(segment_name(2, segno + 1, SEG), "000000020000000200000000");
        assert_eq!(
            WalFileName::parse("00000003.history").unwrap().kind,
            WalFileKind::History
        );
        assert_eq!(
            WalFileName::parse("000000010000000000000002.00000028.backup")
                .unwrap()
                .kind,
            WalFileKind::BackupHistory
        );
        assert_eq!(
            WalFileName::parse("000000010000000000000005.partial")
                .unwrap()
                .kind,
            WalFileKind::Partial
        );
        for bad in [
            "",
            "xyz",
            "00000001000000000000000",
            "0000000100000000000000GG",
            "1.history",
        ] {
            assert!(WalFileName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn other_segment_sizes_count_differently() {
        // 64 MiB segments: 64 per log unit.
        let f = WalFileName::parse("00000001000000010000003F").unwrap();
        assert_eq!(f.segno_for(64 << 20), Some(64 + 63));
        assert_eq!(
            segment_name(1, 64 + 64, 64 << 20),
            "000000010000000200000000"
        );
    }

    #[test]
    fn lsns_parse_and_format() {
        assert_eq!(parse_lsn("0/3000028").unwrap(), 0x3000028);
        assert_eq!(parse_lsn("1/0").unwrap(), 1 << 32);
        assert_eq!(format_lsn(0x1_0300_0028), "1/3000028");
        assert!(parse_lsn("3000028").is_err());
        // Each half is 32 bits: out-of-range halves are refused, not wrapped.
        assert!(parse_lsn("1/100000000").is_err());
        assert!(parse_lsn("100000000/0").is_err());
        assert!(parse_lsn("FFFFFFFF/FFFFFFFF").is_ok());
        assert!(parse_lsn("/0").is_err());
        assert!(parse_lsn("-1/0").is_err());
    }

    #[test]
    fn history_files_parse() {
        let h = parse_history(
            "1\t0/3000198\tno recovery target specified\n\n2\t0/5000000\tat restore point \"x\"\n",
        )
        .unwrap();
        assert_eq!(
            h,
            vec![
                TimelineSwitch {
                    timeline: 1,
                    switch_lsn: 0x3000198
                },
                TimelineSwitch {
                    timeline: 2,
                    switch_lsn: 0x5000000
                },
            ]
        );
    }

    #[test]
    fn needed_segments_follow_timeline_switches() {
        let switches = parse_history("1\t0/3000198\treason\n").unwrap();
        let names = needed_segments(1, 0x2000028, &switches, 2, 0x4000100, SEG);
        assert_eq!(
            names,
            vec![
                "000000010000000000000002",
                "000000010000000000000003",
                "000000020000000000000003",
                "000000020000000000000004",
            ]
        );
        // A target before the switch stays on the parent timeline.
        let before = needed_segments(1, 0x2000028, &switches, 2, 0x3000100, SEG);
        assert_eq!(
            before,
            vec!["000000010000000000000002", "000000010000000000000003"]
        );
        let straight = needed_segments(1, 0x2000028, &[], 1, 0x2FFFFFF, SEG);
        assert_eq!(straight, vec!["000000010000000000000002"]);
    }
}
