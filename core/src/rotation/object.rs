//! One stored object's header replaced in place: the new header and the first part
//! travel, the rest of the payload is copied inside the store.

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::keys::header::{AgeHeader, HEADER_SEARCH_LIMIT};
use crate::pipeline::HeaderDigest;
use crate::storage::{Storage, MAX_PART_SIZE, MIN_PART_SIZE};

/// First read of an object's start: headers pgvault writes are a few hundred bytes.
const FIRST_READ: u64 = 4096;

/// Bytes read and written through pgvault for one object.
#[derive(Debug, Default, Clone, Copy)]
pub struct Moved {
    /// Downloaded.
    pub read: u64,
    /// Uploaded.
    pub written: u64,
}

impl Moved {
    /// Both directions.
    pub fn total(&self) -> u64 {
        self.read + self.written
    }

    /// Add another object's counts.
    pub fn add(&mut self, other: Moved) {
        self.read += other.read;
        self.written += other.written;
    }
}

/// The age header an object starts with now, read from its first bytes.
/// (The object's size may differ from a manifest's: an interrupted rotation may have
/// replaced its header already.) Returns the header and the bytes read.
pub async fn read_header(storage: &dyn Storage, key: &str) -> Result<(AgeHeader, u64)> {
    let first = storage.get_range(key, 0, FIRST_READ).await?;
    let mut read = first.len() as u64;
    let prefix =
        if crate::keys::header::header_len(&first).is_some() || (first.len() as u64) < FIRST_READ {
            first
        } else {
            let more = storage.get_range(key, 0, HEADER_SEARCH_LIMIT).await?;
            read += more.len() as u64;
            more
        };
    Ok((AgeHeader::parse(key, &prefix)?, read))
}

/// The digest of a header as the manifest records it.
pub fn digest_of(header: &[u8]) -> HeaderDigest {
    HeaderDigest {
        size: header.len() as u64,
        sha256: hex::encode(Sha256::digest(header)),
    }
}

/// Replace the object at `key` (`size` bytes, starting with a header of `old_header_len`
/// bytes) by `new_header` followed by the same payload, then check what is stored.
///
/// A payload of at most [`MIN_PART_SIZE`] is read and stored again with one request. A
/// larger one goes through a multipart upload to the same key: part 1 is the new header
/// and the payload's first [`MIN_PART_SIZE`] bytes (S3's smallest part), the rest is
/// copied by the store from the object itself (`UploadPartCopy`), so it never travels.
/// The object changes only when the upload completes, atomically; a failure before that
/// aborts the upload and leaves the object as it was.
pub async fn replace_header(
    storage: &dyn Storage,
    key: &str,
    size: u64,
    old_header_len: u64,
    new_header: &[u8],
) -> Result<Moved> {
    let payload_len = size
        .checked_sub(old_header_len)
        .ok_or_else(|| Error::Integrity {
            object: key.into(),
            message: format!("the object is {size} bytes, shorter than its age header"),
        })?;
    let mut moved = Moved::default();
    let head_len = payload_len.min(MIN_PART_SIZE);
    let head = if head_len == 0 {
        Bytes::new()
    } else {
        storage.get_range(key, old_header_len, head_len).await?
    };
    moved.read += head.len() as u64;
    if head.len() as u64 != head_len {
        return Err(Error::Integrity {
            object: key.into(),
            message: format!(
                "read {} of the payload's first {head_len} bytes",
                head.len()
            ),
        });
    }
    let mut first = BytesMut::with_capacity(new_header.len() + head.len());
    first.extend_from_slice(new_header);
    first.extend_from_slice(&head);
    let first = first.freeze();
    moved.written += first.len() as u64;
    if payload_len <= MIN_PART_SIZE {
        storage.put(key, first.clone()).await?;
    } else {
        let upload = storage.begin_upload(key).await?;
        let result = async {
            upload.put_part(1, first.clone()).await?;
            let mut offset = old_header_len + head_len;
            let mut number = 1;
            while offset < size {
                let len = (size - offset).min(MAX_PART_SIZE);
                number += 1;
                upload.copy_part(number, key, offset, len).await?;
                offset += len;
            }
            upload.complete(number).await
        }
        .await;
        if let Err(e) = result {
            if let Err(abort) = upload.abort().await {
                tracing::warn!(key, error = %abort, "could not abort the rotation's upload; `pgvault prune` will");
            }
            return Err(e);
        }
    }
    // What is stored now: the expected size, the new header, then the old payload's start.
    let new_size = new_header.len() as u64 + payload_len;
    match storage.size(key).await? {
        Some(s) if s == new_size => {}
        other => {
            return Err(Error::Integrity {
                object: key.into(),
                message: format!(
                    "after rewriting its header the object is {} bytes, expected {new_size}",
                    other.map_or("missing".to_string(), |s| s.to_string())
                ),
            })
        }
    }
    let check_len = (new_header.len() as u64 + head_len.min(4096)).min(new_size);
    let stored_start = storage.get_range(key, 0, check_len).await?;
    moved.read += stored_start.len() as u64;
    if stored_start[..] != first[..check_len as usize] {
        return Err(Error::Integrity {
            object: key.into(),
            message: "after rewriting its header the object does not start with the new header and the old payload".into(),
        });
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Identities;
    use crate::pipeline::{self, Decode, EncodeSettings, Progress};
    use crate::storage::FilesystemStorage;
    use std::sync::Arc;

    /// On the filesystem backend (parts copied in order from the file itself), a large
    /// object gets a new header, keeps its payload, and reads back through the pipeline
    /// with the new key while its manifest entry still names the old header as well.
    #[tokio::test]
    async fn a_large_object_gets_a_new_header_and_reads_back_with_the_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let (id_a, r_a) = crate::keys::test_key_pair(dir.path(), "a");
        let (id_b, r_b) = crate::keys::test_key_pair(dir.path(), "b");
        let storage = FilesystemStorage::new(dir.path().join("repo")).unwrap();
        let raw: Vec<u8> = (0..12 << 20).map(|_| rand::random::<u8>()).collect();
        let settings = EncodeSettings {
            level: 1,
            threads: 1,
            part_size: 5 << 20,
            parts_in_flight: 2,
        };
        let key = "p/backups/x/dump.pgdump.zst.age";
        let digest = pipeline::upload_stream(
            &storage,
            key,
            std::io::Cursor::new(raw.clone()),
            "test",
            &r_a,
            settings,
            Arc::new(Progress::default()),
            &tokio_util::sync::CancellationToken::new(),
        )
        .await
        .unwrap();
        let old = digest.age_header.clone().unwrap();
        let (header, _) = read_header(&storage, key).await.unwrap();
        assert_eq!(digest_of(header.bytes()), old);
        let file_key = header.open(key, &id_a).unwrap().unwrap();
        let new_header = crate::keys::header::wrap(&file_key, &r_b).unwrap();
        let moved = replace_header(&storage, key, digest.stored_size, header.len(), &new_header)
            .await
            .unwrap();
        assert!(
            moved.written < 6 << 20,
            "only the first part is written: {moved:?}"
        );

        // Mid-rotation manifest entry: either header is accepted.
        let mut rotating = digest.clone();
        rotating.stored_sha256 = None;
        rotating.rotating_to = Some(digest_of(&new_header));
        let read = |expected: pipeline::ObjectDigest, ids: Identities| {
            let storage = &storage;
            async move {
                pipeline::download_stream(
                    storage,
                    key,
                    &expected,
                    Decode::Full(&ids),
                    &[],
                    Vec::new(),
                    2,
                    Arc::new(Progress::default()),
                )
                .await
            }
        };
        assert_eq!(read(rotating.clone(), id_b.clone()).await.unwrap(), raw);
        assert!(read(rotating.clone(), id_a.clone()).await.is_err());
        // The finished entry: new header and size, same payload digest.
        let mut finished = rotating;
        let payload = finished.payload_size().unwrap();
        finished.age_header = finished.rotating_to.take();
        finished.stored_size = new_header.len() as u64 + payload;
        assert_eq!(read(finished.clone(), id_b.clone()).await.unwrap(), raw);
        // A payload byte changed is caught by the payload digest.
        let path = dir.path().join("repo").join(key);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = pipeline::download_stream(
            &storage,
            key,
            &finished,
            Decode::StoredOnly,
            &[],
            std::io::sink(),
            2,
            Arc::new(Progress::default()),
        )
        .await
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("payload sha256"), "{err}");
    }
}
