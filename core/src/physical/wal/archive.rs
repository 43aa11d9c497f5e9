//! The WAL archive: storing each WAL file the server hands over ([`push`]), fetching
//! one back for recovery ([`fetch`]), listing the archive, and WAL retention
//! ([`wal_not_needed`]).
//!
//! Each WAL file (segment, `.history`, `.backup`, `.partial`) is stored through the same
//! zstd → age pipeline as backups, under
//! `<policy>/wal/<timeline>/<file name>.<sha256 of the plaintext>.zst.age`. The digest in
//! the key makes archiving idempotent without a key to decrypt: pushing the same file
//! again finds it and succeeds; a different file under the same name is refused and the
//! archived one is never overwritten. Fetching checks the digest after decrypting.
//!
//! [`push`] returns only after the object is durably stored, so PostgreSQL recycles a
//! segment only once it is safe. [`fetch`] writes atomically (temp file + rename); the
//! segments after it come from the long-lived prefetcher ([`super::prefetcher`]).

use std::path::Path;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::keys::{Identities, Recipients};
use crate::pipeline::{self, EncodeSettings};
use crate::repository::Repository;
use crate::stop_signal::unless_cancelled;

use super::name::{WalFileKind, WalFileName, DEFAULT_SEGMENT_SIZE};

/// Suffix of every archived WAL object.
const OBJECT_SUFFIX: &str = ".zst.age";
/// Directory (beside the requested file) where prefetched segments wait.
pub const PREFETCH_DIR: &str = ".pgvault-prefetch";
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

/// Whether the archive holds a file named `name` (whatever its content).
pub async fn is_archived(repo: &Repository, name: &str) -> Result<bool> {
    Ok(!find(repo, &WalFileName::parse(name)?).await?.is_empty())
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

/// Restore the archived WAL file `name` to `dest` (what `restore_command` passes as
/// `%f` and `%p`), verified, atomically. A missing file is [`Error::WalNotFound`], so
/// recovery ends where the archive ends. `cancel` stops it before `dest` is written:
/// recovery then sees a failed fetch. (The segments after it are the prefetcher's, see
/// [`super::prefetcher`].)
pub async fn fetch(
    repo: &Repository,
    name: &str,
    dest: &Path,
    identities: &Identities,
    recipients: &[String],
    cancel: &CancellationToken,
) -> Result<u64> {
    unless_cancelled(cancel, async {
        match download_to(repo, name, dest, identities, recipients).await {
            Err(Error::WalNotFound { .. }) => {
                let data = growing_segment(repo, name, identities, recipients).await?;
                write_atomically(dest, &data)
            }
            other => other,
        }
    })
    .await?;
    Ok(std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0))
}

/// The segment `name` as a streaming policy stored it while it grew (see
/// [`super::stream`]), zero-padded. Only the newest segment of its timeline is served
/// so: an older one missing from the archive is a hole, and serving its beginning would
/// end recovery early without a word. The prefetcher never calls this: a growing
/// segment must be read when recovery asks for it, not before.
async fn growing_segment(
    repo: &Repository,
    name: &str,
    identities: &Identities,
    recipients: &[String],
) -> Result<Vec<u8>> {
    let file = WalFileName::parse(name)?;
    let not_found = || Error::WalNotFound {
        name: name.into(),
        policy: repo.policy().into(),
    };
    if file.kind != WalFileKind::Segment {
        return Err(not_found());
    }
    let Some(partial) = super::stream::find_partial(repo, &file).await? else {
        return Err(not_found());
    };
    let prefix = repo.wal_prefix();
    let later = repo
        .storage()
        .list(&format!("{prefix}{:08X}/", file.timeline))
        .await?
        .iter()
        .filter_map(|o| parse_key(&prefix, o))
        .any(|a| a.file.kind == WalFileKind::Segment && a.file.name > file.name);
    if later {
        return Err(not_found());
    }
    super::stream::assemble(repo, &partial, identities, recipients).await
}

/// Locate, download, verify and atomically write the archived file `name` to `dest`.
pub(crate) async fn download_to(
    repo: &Repository,
    name: &str,
    dest: &Path,
    identities: &Identities,
    recipients: &[String],
) -> Result<()> {
    let file = WalFileName::parse(name)?;
    let archived = locate(repo, &file).await?;
    let data = download(repo, &archived, identities, recipients).await?;
    write_atomically(dest, &data)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::physical::wal::name::segment_name;

    const SEG: u64 = DEFAULT_SEGMENT_SIZE;
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
}
