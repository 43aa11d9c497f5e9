//! Stream chunks: the growing WAL segment of a streaming policy (`[archive] mode =
//! "stream"`), stored as it grows so that the RPO of a crash is seconds, not a segment.
//!
//! A completed segment is stored in the WAL archive like any other
//! ([`super::archive::push`]). The segment `pg_receivewal` is still writing is stored
//! as byte ranges, each an object of its own:
//!
//! ```text
//! <policy>/wal-stream/<timeline>/<segment>.<start>-<end>.<segment size>.<sha256>.zst.age
//! ```
//!
//! `start`, `end` (exclusive) and the segment size are 8 hex digits; the digest is of
//! the range's plaintext. The range is in the name, so one name always means one
//! content (bytes of WAL below the source's flush position never change), and the
//! archive's idempotency rule holds unchanged. The chunks live outside `wal/` so no
//! reader of the archive mistakes them for a segment; they are deleted once the
//! completed segment is stored.
//!
//! Recovery asks for segments by name; for the newest segment of a timeline, when the
//! archive does not hold it, [`assemble`] joins its chunks from byte 0, checks every
//! digest, and pads with zeros to the segment size. Replay stops at the zeros, as at the
//! end of any WAL.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::keys::Identities;
use crate::pipeline;
use crate::repository::Repository;

use super::name::{WalFileKind, WalFileName};

/// Suffix of every chunk object.
const OBJECT_SUFFIX: &str = ".zst.age";

/// Prefix of the policy's stream chunks.
pub fn stream_prefix(repo: &Repository) -> String {
    format!("{}/{}/", repo.policy(), crate::repository::STREAM_DIR)
}

/// One stored byte range of a growing segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The segment it belongs to.
    pub segment: WalFileName,
    /// First byte (offset in the segment).
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// The segment size of the cluster (the size the segment is padded to).
    pub segment_size: u64,
    /// sha256 of the range's plaintext.
    pub sha256: String,
    /// Its object key.
    pub key: String,
    /// Stored bytes.
    pub stored_size: u64,
    /// When the storage says it was written.
    pub stored_at: Option<DateTime<Utc>>,
}

/// The key of the chunk `[start, end)` of `segment` with plaintext digest `sha256`.
pub fn chunk_key(
    repo: &Repository,
    segment: &WalFileName,
    (start, end): (u64, u64),
    segment_size: u64,
    sha256: &str,
) -> String {
    format!(
        "{}{:08X}/{}.{start:08X}-{end:08X}.{segment_size:08X}.{sha256}{OBJECT_SUFFIX}",
        stream_prefix(repo),
        segment.timeline,
        segment.name
    )
}

fn hex_u64(text: &str) -> Option<u64> {
    (text.len() == 8)
        .then(|| u64::from_str_radix(text, 16).ok())
        .flatten()
}

/// Parse a chunk's key (under `prefix`); `None` for anything else.
fn parse_chunk(prefix: &str, object: &crate::storage::ObjectInfo) -> Option<Chunk> {
    let rest = object.key.strip_prefix(prefix)?;
    let (_tl, file) = rest.split_once('/')?;
    let base = file.strip_suffix(OBJECT_SUFFIX)?;
    let mut parts = base.split('.');
    let (name, range, size, sha) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let (start, end, segment_size) = (hex_u64(start)?, hex_u64(end)?, hex_u64(size)?);
    let segment = WalFileName::parse(name).ok()?;
    (segment.kind == WalFileKind::Segment && start < end && end <= segment_size).then(|| Chunk {
        segment,
        start,
        end,
        segment_size,
        sha256: sha.into(),
        key: object.key.clone(),
        stored_size: object.size,
        stored_at: object.modified,
    })
}

/// Every chunk stored under `prefix` (the whole policy's, or one segment's).
async fn list_under(repo: &Repository, prefix: &str) -> Result<Vec<Chunk>> {
    let all = stream_prefix(repo);
    Ok(repo
        .storage()
        .list(prefix)
        .await?
        .into_iter()
        .filter_map(|o| parse_chunk(&all, &o))
        .collect())
}

fn segment_prefix(repo: &Repository, segment: &WalFileName) -> String {
    format!(
        "{}{:08X}/{}.",
        stream_prefix(repo),
        segment.timeline,
        segment.name
    )
}

/// The part of a growing segment the repository holds from its first byte on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPartial {
    /// The segment.
    pub segment: WalFileName,
    /// The segment size it is padded to.
    pub segment_size: u64,
    /// Bytes held contiguously from byte 0 (0: its start is missing).
    pub covered: u64,
    /// The chunks that cover them, in order.
    pub chunks: Vec<Chunk>,
    /// When the newest of those chunks was stored: no WAL in the range is newer.
    pub stored_at: Option<DateTime<Utc>>,
}

impl StreamPartial {
    /// Stored bytes of the chunks used.
    pub fn stored_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.stored_size).sum()
    }
}

/// Join one segment's chunks (any order, overlaps allowed) into the longest run from
/// byte 0: at each position the chunk that reaches furthest is taken.
fn contiguous(mut chunks: Vec<Chunk>) -> (u64, Vec<Chunk>) {
    chunks.sort_by_key(|c| (c.start, std::cmp::Reverse(c.end)));
    let mut covered = 0u64;
    let mut path = Vec::new();
    loop {
        let next = chunks
            .iter()
            .filter(|c| c.start <= covered && c.end > covered)
            .max_by_key(|c| c.end)
            .cloned();
        match next {
            Some(c) => {
                covered = c.end;
                path.push(c);
            }
            None => return (covered, path),
        }
    }
}

/// Group `chunks` by segment into what each segment holds from byte 0.
pub fn partials(chunks: Vec<Chunk>) -> Vec<StreamPartial> {
    let mut by_segment: BTreeMap<(u32, String), Vec<Chunk>> = BTreeMap::new();
    for c in chunks {
        by_segment
            .entry((c.segment.timeline, c.segment.name.clone()))
            .or_default()
            .push(c);
    }
    by_segment
        .into_values()
        .filter_map(|chunks| {
            let first = chunks.first()?.clone();
            let (covered, path) = contiguous(chunks);
            Some(StreamPartial {
                segment: first.segment,
                segment_size: first.segment_size,
                covered,
                stored_at: path.iter().filter_map(|c| c.stored_at).max(),
                chunks: path,
            })
        })
        .collect()
}

/// Every growing segment the repository holds chunks of, by timeline and name.
pub async fn list_partials(repo: &Repository) -> Result<Vec<StreamPartial>> {
    Ok(partials(list_under(repo, &stream_prefix(repo)).await?))
}

/// Every stored chunk as an archive entry (its segment's name, its own key), for WAL
/// retention: a chunk goes when its segment is no longer needed, like the segment.
pub async fn chunks_for_retention(repo: &Repository) -> Result<Vec<super::archive::ArchivedWal>> {
    Ok(list_under(repo, &stream_prefix(repo))
        .await?
        .into_iter()
        .map(|c| super::archive::ArchivedWal {
            file: c.segment,
            key: c.key,
            sha256: c.sha256,
            stored_size: c.stored_size,
            archived_at: c.stored_at,
        })
        .collect())
}

/// What the repository holds of growing segment `segment` (`None`: no chunk).
pub async fn find_partial(
    repo: &Repository,
    segment: &WalFileName,
) -> Result<Option<StreamPartial>> {
    let chunks = list_under(repo, &segment_prefix(repo, segment)).await?;
    Ok(partials(chunks)
        .into_iter()
        .find(|p| p.segment.name == segment.name))
}

/// The growing segments recovery can be served (see [`super::archive::fetch`]): those
/// the archive does not hold, with bytes from their start, and no completed segment
/// after them on their timeline. Each comes as an archive entry (its stored bytes, the
/// time of its newest chunk) with the LSN its stored bytes end at.
pub fn usable_tails(
    archive: &[super::archive::ArchivedWal],
    partials: Vec<StreamPartial>,
) -> Vec<(super::archive::ArchivedWal, u64)> {
    partials
        .into_iter()
        .filter(|p| p.covered > 0)
        .filter(|p| {
            !archive.iter().any(|a| {
                a.file.kind == WalFileKind::Segment
                    && a.file.timeline == p.segment.timeline
                    && a.file.name >= p.segment.name
            })
        })
        .filter_map(|p| {
            let end = p.segment.segno_for(p.segment_size)? * p.segment_size + p.covered;
            let entry = super::archive::ArchivedWal {
                file: p.segment.clone(),
                key: p.chunks.last()?.key.clone(),
                sha256: String::new(),
                stored_size: p.stored_bytes(),
                archived_at: p.stored_at,
            };
            Some((entry, end))
        })
        .collect()
}

/// Store bytes `[start, start + data.len())` of growing segment `segment`, encrypted to
/// `policy`'s recipients.
pub async fn store_chunk(
    repo: &Repository,
    policy: &crate::policy::Policy,
    segment: &WalFileName,
    (start, data): (u64, Vec<u8>),
    segment_size: u64,
    cancel: &CancellationToken,
) -> Result<String> {
    use sha2::Digest;
    let end = start + data.len() as u64;
    let sha256 = hex::encode(sha2::Sha256::digest(&data));
    let key = chunk_key(repo, segment, (start, end), segment_size, &sha256);
    let settings = crate::repository::new_backup::encode_settings(policy);
    pipeline::upload_bytes(
        repo.storage(),
        &key,
        data,
        &policy.recipients,
        settings,
        cancel,
    )
    .await?;
    Ok(key)
}

/// Delete every chunk of `segment` (once the completed segment is stored).
pub async fn forget_chunks(repo: &Repository, segment: &WalFileName) -> Result<usize> {
    let chunks = list_under(repo, &segment_prefix(repo, segment)).await?;
    for c in &chunks {
        repo.storage().delete(&c.key).await?;
    }
    Ok(chunks.len())
}

/// Download and check every chunk of `partial` and join them into the segment, padded
/// with zeros to its full size.
pub async fn assemble(
    repo: &Repository,
    partial: &StreamPartial,
    identities: &Identities,
    recipients: &[String],
) -> Result<Vec<u8>> {
    if partial.covered == 0 {
        return Err(Error::WalNotFound {
            name: partial.segment.name.clone(),
            policy: repo.policy().into(),
        });
    }
    let mut segment = Vec::with_capacity(partial.segment_size as usize);
    for chunk in &partial.chunks {
        let stored: Bytes = repo.storage().get(&chunk.key).await?;
        let (plain, sha256) =
            pipeline::decode_bytes(stored, &chunk.key, identities, recipients).await?;
        if sha256 != chunk.sha256 || plain.len() as u64 != chunk.end - chunk.start {
            return Err(Error::Integrity {
                object: chunk.key.clone(),
                message: format!(
                    "the chunk holds {} bytes with sha256 {sha256}; its name says {} bytes with sha256 {}",
                    plain.len(),
                    chunk.end - chunk.start,
                    chunk.sha256
                ),
            });
        }
        // Chunks may overlap (a receiver restarted mid-segment): keep what is new.
        let skip = (segment.len() as u64).saturating_sub(chunk.start) as usize;
        segment.extend_from_slice(plain.get(skip..).unwrap_or_default());
    }
    segment.resize(partial.segment_size as usize, 0);
    Ok(segment)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SIZE: u64 = 16 << 20;

    fn chunk(start: u64, end: u64) -> Chunk {
        Chunk {
            segment: WalFileName::parse("000000010000000000000003").unwrap(),
            start,
            end,
            segment_size: SIZE,
            sha256: "0".repeat(64),
            key: format!("k{start}-{end}"),
            stored_size: end - start,
            stored_at: None,
        }
    }

    #[test]
    fn chunk_keys_parse_back_and_foreign_keys_do_not() {
        let object = |key: &str| crate::storage::ObjectInfo {
            key: key.into(),
            size: 10,
            modified: None,
        };
        let sha = "ab".repeat(32);
        let key = format!(
            "p/wal-stream/00000001/000000010000000000000003.00000000-00002000.01000000.{sha}.zst.age"
        );
        let parsed = parse_chunk("p/wal-stream/", &object(&key)).unwrap();
        assert_eq!(
            (parsed.start, parsed.end, parsed.segment_size),
            (0, 0x2000, SIZE)
        );
        assert_eq!(parsed.segment.name, "000000010000000000000003");
        for bad in [
            format!("p/wal-stream/00000001/000000010000000000000003.00002000-00002000.01000000.{sha}.zst.age"),
            format!("p/wal-stream/00000001/000000010000000000000003.00000000-02000000.01000000.{sha}.zst.age"),
            format!("p/wal-stream/00000001/00000001.history.00000000-00002000.01000000.{sha}.zst.age"),
            format!("p/wal-stream/00000001/000000010000000000000003.0-2000.01000000.{sha}.zst.age"),
            "p/wal-stream/00000001/000000010000000000000003.00000000-00002000.01000000.zz.zst.age".into(),
        ] {
            assert_eq!(parse_chunk("p/wal-stream/", &object(&bad)), None, "{bad}");
        }
    }

    #[test]
    fn a_hole_ends_the_contiguous_part() {
        let (covered, path) = contiguous(vec![chunk(0, 100), chunk(200, 300)]);
        assert_eq!(covered, 100);
        assert_eq!(path.len(), 1);
        let (covered, _) = contiguous(vec![chunk(100, 300)]);
        assert_eq!(covered, 0, "a missing start covers nothing");
    }

    proptest! {
        /// However a segment's first `len` bytes were cut into chunks, with duplicates
        /// and overlaps from restarts, the chunks cover exactly `len` bytes in order.
        #[test]
        fn any_chunking_covers_the_written_bytes(
            cuts in proptest::collection::vec(1u64..4096, 1..20),
            overlaps in proptest::collection::vec((0u64..4096, 1u64..4096), 0..6),
        ) {
            let mut chunks = Vec::new();
            let mut at = 0;
            for c in &cuts {
                chunks.push(chunk(at, at + c));
                at += c;
            }
            for (s, l) in &overlaps {
                let start = s % at;
                chunks.push(chunk(start, (start + l).min(at)));
            }
            let (covered, path) = contiguous(chunks);
            prop_assert_eq!(covered, at);
            let mut position = 0;
            for c in &path {
                prop_assert!(c.start <= position && c.end > position);
                position = c.end;
            }
        }
    }
}
