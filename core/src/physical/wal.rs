//! WAL archiving: `archive_command` and `restore_command` for point-in-time recovery.
//!
//! Each WAL file (segment, `.history`, `.backup`, `.partial`) is stored through the same
//! zstd → age pipeline as backups, under
//! `<policy>/wal/<timeline>/<file name>.<sha256 of the plaintext>.zst.age`. The digest in
//! the key makes archiving idempotent without a key to decrypt: pushing the same file
//! again finds it and succeeds; a different file under the same name is refused and the
//! archived one is never overwritten. Fetching checks the digest after decrypting.
//!
//! [`push`] returns only after the object is durably stored, so PostgreSQL recycles a
//! segment only once it is safe. [`fetch`] writes atomically (temp file + rename) and
//! prefetches the next segments in parallel so replay is not bound by round trips.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::keys::{Identities, Recipients};
use crate::pipeline::{self, EncodeSettings};
use crate::repository::Repository;

/// Suffix of every archived WAL object.
const OBJECT_SUFFIX: &str = ".zst.age";
/// Directory (beside the requested file) where prefetched segments wait.
pub const PREFETCH_DIR: &str = ".pgvault-prefetch";
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

/// Parse an LSN such as `0/3000028`.
pub fn parse_lsn(text: &str) -> Result<u64> {
    let (hi, lo) = text
        .trim()
        .split_once('/')
        .ok_or_else(|| Error::Invalid(format!("{text:?} is not an LSN such as 0/3000028")))?;
    let hi = u64::from_str_radix(hi, 16)
        .map_err(|_| Error::Invalid(format!("{text:?} is not an LSN")))?;
    let lo = u64::from_str_radix(lo, 16)
        .map_err(|_| Error::Invalid(format!("{text:?} is not an LSN")))?;
    Ok((hi << 32) | lo)
}

/// Format an LSN as PostgreSQL does.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

fn object_prefix(repo: &Repository, file: &WalFileName) -> String {
    format!("{}{:08X}/{}.", repo.wal_prefix(), file.timeline, file.name)
}

/// One archived WAL file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedWal {
    /// The parsed name.
    pub file: WalFileName,
    /// Its object key.
    pub key: String,
    /// sha256 of the plaintext (from the key).
    pub sha256: String,
    /// Stored bytes.
    pub stored_size: u64,
    /// When the storage says it was written: no WAL in it is newer than this.
    pub archived_at: Option<chrono::DateTime<chrono::Utc>>,
}

fn parse_key(prefix: &str, object: &crate::storage::ObjectInfo) -> Option<ArchivedWal> {
    let (key, size) = (object.key.as_str(), object.size);
    let rest = key.strip_prefix(prefix)?;
    let (_tl, file) = rest.split_once('/')?;
    let base = file.strip_suffix(OBJECT_SUFFIX)?;
    let (name, sha) = base.rsplit_once('.')?;
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(ArchivedWal {
        file: WalFileName::parse(name).ok()?,
        key: key.into(),
        sha256: sha.into(),
        stored_size: size,
        archived_at: object.modified,
    })
}

/// Every archived WAL file of the policy, sorted by timeline and name.
pub async fn list_archive(repo: &Repository) -> Result<Vec<ArchivedWal>> {
    let prefix = repo.wal_prefix();
    let mut all: Vec<ArchivedWal> = repo
        .storage()
        .list(&prefix)
        .await?
        .into_iter()
        .filter_map(|o| parse_key(&prefix, &o))
        .collect();
    all.sort_by(|a, b| (a.file.timeline, &a.file.name).cmp(&(b.file.timeline, &b.file.name)));
    Ok(all)
}

async fn find(repo: &Repository, file: &WalFileName) -> Result<Vec<ArchivedWal>> {
    let prefix = repo.wal_prefix();
    Ok(repo
        .storage()
        .list(&object_prefix(repo, file))
        .await?
        .into_iter()
        .filter_map(|o| parse_key(&prefix, &o))
        .filter(|a| a.file.name == file.name)
        .collect())
}

/// How a push ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// Stored now, under this key.
    Stored(String),
    /// The identical file was already archived (a retry after a crash, say).
    AlreadyArchived(String),
}

/// Archive the WAL file at `path` (what `archive_command` passes as `%p`).
pub async fn push(
    repo: &Repository,
    path: &Path,
    recipients: &Recipients,
    settings: EncodeSettings,
    cancel: &CancellationToken,
) -> Result<PushOutcome> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::Invalid(format!("{} has no file name", path.display())))?;
    let file = WalFileName::parse(name)?;
    let data = tokio::fs::read(path)
        .await
        .map_err(|e| Error::io(format!("cannot read WAL file {}", path.display()), e))?;
    let sha256 = hex::encode(Sha256::digest(&data));
    let existing = find(repo, &file).await?;
    if let Some(same) = existing.iter().find(|a| a.sha256 == sha256) {
        return Ok(PushOutcome::AlreadyArchived(same.key.clone()));
    }
    if let Some(other) = existing.first() {
        return Err(Error::WalConflict {
            name: file.name,
            existing: other.key.clone(),
            policy: repo.policy().into(),
        });
    }
    let key = format!("{}{sha256}{OBJECT_SUFFIX}", object_prefix(repo, &file));
    pipeline::upload_bytes(repo.storage(), &key, data, recipients, settings, cancel).await?;
    Ok(PushOutcome::Stored(key))
}

/// Download, authenticate, decompress and digest-check one archived file.
async fn download(
    repo: &Repository,
    archived: &ArchivedWal,
    identities: &Identities,
    recipients: &[String],
) -> Result<Vec<u8>> {
    let stored: Bytes = repo.storage().get(&archived.key).await?;
    let (plain, sha256) =
        pipeline::decode_bytes(stored, &archived.key, identities, recipients).await?;
    if sha256 != archived.sha256 {
        return Err(Error::Integrity {
            object: archived.key.clone(),
            message: format!(
                "plaintext sha256 is {sha256}, the archive records {}",
                archived.sha256
            ),
        });
    }
    Ok(plain)
}

async fn locate(repo: &Repository, file: &WalFileName) -> Result<ArchivedWal> {
    let mut found = find(repo, file).await?;
    match found.len() {
        0 => Err(Error::WalNotFound {
            name: file.name.clone(),
            policy: repo.policy().into(),
        }),
        1 => Ok(found.remove(0)),
        _ => Err(Error::WalConflict {
            name: file.name.clone(),
            existing: found
                .iter()
                .map(|a| a.key.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            policy: repo.policy().into(),
        }),
    }
}

fn write_atomically(dest: &Path, data: &[u8]) -> Result<()> {
    let dir = dest
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".pgvault-fetch-")
        .tempfile_in(dir)
        .map_err(|e| Error::io(format!("cannot create a temp file in {}", dir.display()), e))?;
    std::io::Write::write_all(&mut tmp, data)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| Error::io(format!("cannot write {}", dest.display()), e))?;
    tmp.persist(dest)
        .map_err(|e| Error::io(format!("cannot rename into {}", dest.display()), e.error))?;
    Ok(())
}

/// How a fetch was served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOutcome {
    /// Whether the file came from an earlier prefetch.
    pub from_prefetch: bool,
    /// Segments prefetched by this call.
    pub prefetched: usize,
}

/// Restore the archived WAL file `name` to `dest` (what `restore_command` passes as
/// `%f` and `%p`). A missing file is [`Error::WalNotFound`], so recovery ends where the
/// archive ends. With `prefetch > 0`, the next segments of the same timeline are
/// downloaded in parallel into [`PREFETCH_DIR`] beside `dest` for the calls to come.
pub async fn fetch(
    repo: &Repository,
    name: &str,
    dest: &Path,
    identities: &Identities,
    recipients: &[String],
    prefetch: usize,
) -> Result<FetchOutcome> {
    let file = WalFileName::parse(name)?;
    let prefetch_dir = dest
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join(PREFETCH_DIR);
    let waiting = prefetch_dir.join(&file.name);
    if waiting.is_file() {
        std::fs::rename(&waiting, dest).map_err(|e| {
            Error::io(
                format!("cannot move prefetched {} into place", file.name),
                e,
            )
        })?;
        return Ok(FetchOutcome {
            from_prefetch: true,
            prefetched: 0,
        });
    }
    let archived = locate(repo, &file).await?;
    let data = download(repo, &archived, identities, recipients).await?;
    write_atomically(dest, &data)?;
    let mut prefetched = 0;
    if file.kind == WalFileKind::Segment && prefetch > 0 && !data.is_empty() {
        let size = data.len() as u64;
        prefetched = prefetch_after(
            repo,
            &file,
            size,
            &prefetch_dir,
            identities,
            recipients,
            prefetch,
        )
        .await;
    }
    Ok(FetchOutcome {
        from_prefetch: false,
        prefetched,
    })
}

/// Download the `count` segments after `file` into `dir`; best effort (a missing or
/// failing one is simply fetched normally later). Returns how many were stored.
async fn prefetch_after(
    repo: &Repository,
    file: &WalFileName,
    segment_size: u64,
    dir: &Path,
    identities: &Identities,
    recipients: &[String],
    count: usize,
) -> usize {
    let Some(segno) = file.segno_for(segment_size) else {
        return 0;
    };
    if std::fs::create_dir_all(dir).is_err() {
        return 0;
    }
    let names: Vec<String> = (1..=count as u64)
        .map(|i| segment_name(file.timeline, segno + i, segment_size))
        .filter(|n| !dir.join(n).exists())
        .collect();
    let dir: Arc<PathBuf> = Arc::new(dir.to_path_buf());
    futures::stream::iter(names)
        .map(|name| {
            let dir = dir.clone();
            async move {
                let file = WalFileName::parse(&name).ok()?;
                let archived = locate(repo, &file).await.ok()?;
                let data = download(repo, &archived, identities, recipients)
                    .await
                    .ok()?;
                write_atomically(&dir.join(&name), &data).ok()
            }
        })
        .buffer_unordered(count.max(1))
        .filter(|r| futures::future::ready(r.is_some()))
        .count()
        .await
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

/// WAL retention: the archived files no retained base backup needs. LSNs are shared by
/// all timelines, so a file whose segment ends before the oldest retained backup's
/// start LSN is needed by none of them. `.history` files are always kept (they are tiny
/// and recovery needs them to follow timelines). With no retained base backup nothing
/// is deleted: the WAL may be waiting for the first one.
pub fn wal_not_needed<'a>(
    archive: &'a [ArchivedWal],
    retained_starts: &[(u64, u64)],
) -> Vec<&'a ArchivedWal> {
    let Some(oldest_start) = retained_starts
        .iter()
        .map(|(lsn, size)| lsn / size.max(&1) * size)
        .min()
    else {
        return Vec::new();
    };
    let segment_size = retained_starts
        .iter()
        .map(|(_, size)| *size)
        .max()
        .unwrap_or(DEFAULT_SEGMENT_SIZE);
    archive
        .iter()
        .filter(|a| a.file.kind != WalFileKind::History)
        .filter(|a| {
            a.file
                .segno_for(segment_size)
                .is_some_and(|segno| (segno + 1) * segment_size <= oldest_start)
        })
        .collect()
}

/// Quote a word for the shell that runs `archive_command` / `restore_command`.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-:=@%+,".contains(&b))
    {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// The server settings that archive a cluster's WAL into a policy with `pgvault`.
pub fn archive_settings(
    pgvault: &Path,
    policy: &Path,
    timeout_seconds: u32,
) -> Vec<(&'static str, String)> {
    vec![
        ("wal_level", "replica".into()),
        ("archive_mode", "on".into()),
        (
            "archive_command",
            format!(
                "{} wal-push --policy {} %p",
                shell_quote(&pgvault.display().to_string()),
                shell_quote(&policy.display().to_string())
            ),
        ),
        ("archive_timeout", timeout_seconds.to_string()),
    ]
}

/// One setting changed by [`apply_archive_settings`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedSetting {
    /// The setting.
    pub name: String,
    /// Its value before.
    pub before: String,
    /// Its new value.
    pub after: String,
    /// Whether the change takes effect only after a server restart.
    pub needs_restart: bool,
}

/// `ALTER SYSTEM SET` each setting on the server and reload; report which changed and
/// which need a restart (`wal_level`, `archive_mode`).
pub async fn apply_archive_settings(
    client: &tokio_postgres::Client,
    settings: &[(&'static str, String)],
) -> Result<Vec<AppliedSetting>> {
    let mut applied = Vec::new();
    for (name, value) in settings {
        let row = client
            .query_one(
                "select setting, context from pg_settings where name = $1",
                &[name],
            )
            .await
            .map_err(|e| Error::pg(format!("cannot read {name}"), e))?;
        let before: String = row.get(0);
        let context: String = row.get(1);
        client
            .batch_execute(&format!(
                "alter system set {name} = {}",
                crate::postgres::quote_literal(value)
            ))
            .await
            .map_err(|e| {
                Error::pg(
                    format!("cannot set {name} (ALTER SYSTEM needs a superuser)"),
                    e,
                )
            })?;
        applied.push(AppliedSetting {
            name: (*name).to_string(),
            needs_restart: context == "postmaster" && before != *value,
            before,
            after: value.clone(),
        });
    }
    client
        .batch_execute("select pg_reload_conf()")
        .await
        .map_err(|e| Error::pg("cannot reload the configuration", e))?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = DEFAULT_SEGMENT_SIZE;

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_quote("/usr/bin/pgvault"), "/usr/bin/pgvault");
        assert_eq!(shell_quote("/etc/my policy.toml"), "'/etc/my policy.toml'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        let settings = archive_settings(Path::new("/bin/pgvault"), Path::new("/etc/p.toml"), 60);
        assert_eq!(
            settings[2].1,
            "/bin/pgvault wal-push --policy /etc/p.toml %p"
        );
    }

    fn archived(name: &str) -> ArchivedWal {
        ArchivedWal {
            file: WalFileName::parse(name).unwrap(),
            key: format!("app/wal/x/{name}"),
            sha256: "0".repeat(64),
            stored_size: 1,
            archived_at: None,
        }
    }

    #[test]
    fn wal_older_than_the_oldest_base_backup_goes_history_stays() {
        let archive: Vec<ArchivedWal> = [
            "00000001.history",
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000002.00000028.backup",
            "000000010000000000000003",
            "000000020000000000000003",
            "00000002.history",
        ]
        .into_iter()
        .map(archived)
        .collect();
        // The oldest retained backup starts inside segment 3.
        let gone: Vec<&str> = wal_not_needed(&archive, &[(0x3000028, SEG), (0x9000000, SEG)])
            .into_iter()
            .map(|a| a.file.name.as_str())
            .collect();
        assert_eq!(
            gone,
            [
                "000000010000000000000001",
                "000000010000000000000002",
                "000000010000000000000002.00000028.backup"
            ]
        );
        assert!(wal_not_needed(&archive, &[]).is_empty());
    }

    proptest::proptest! {
        #[test]
        fn retention_keeps_every_segment_a_retained_backup_needs(
            starts in proptest::collection::vec(0u64..200, 0..5),
            segments in proptest::collection::btree_set(0u64..220, 0..60),
            timeline in 1u32..4,
        ) {
            let archive: Vec<ArchivedWal> = segments
                .iter()
                .map(|s| archived(&segment_name(timeline, *s, SEG)))
                .collect();
            let retained: Vec<(u64, u64)> = starts.iter().map(|s| (s * SEG + 0x28, SEG)).collect();
            let gone = wal_not_needed(&archive, &retained);
            for a in &archive {
                let segno = a.file.segno_for(SEG).unwrap();
                let deleted = gone.iter().any(|g| g.file.name == a.file.name);
                // Needed by some retained backup (replay from its start on): never deleted.
                let needed = starts.iter().any(|s| segno >= *s);
                proptest::prop_assert!(!(deleted && needed), "{} deleted but needed", a.file.name);
                // Older than every retained backup: deleted.
                if !starts.is_empty() && !needed {
                    proptest::prop_assert!(deleted, "{} kept but not needed", a.file.name);
                }
            }
        }
    }

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
    }

    #[test]
    fn keys_parse_back() {
        let sha = "a".repeat(64);
        let key = format!("app/wal/00000001/000000010000000000000003.{sha}.zst.age");
        let info = |key: &str| crate::storage::ObjectInfo {
            key: key.into(),
            size: 10,
            modified: None,
        };
        let a = parse_key("app/wal/", &info(&key)).unwrap();
        assert_eq!(a.file.name, "000000010000000000000003");
        assert_eq!(a.sha256, sha);
        assert!(parse_key("app/wal/", &info("app/wal/00000001/junk")).is_none());
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
