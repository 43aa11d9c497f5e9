//! Copying one stored object from a repository to another, verified at both ends.
//!
//! The bytes are copied as they are stored (encrypted objects stay encrypted: no key is
//! needed), streamed through the [`Storage`] trait in parts, so this works between any
//! two backends (S3 to S3 across endpoints, S3 to a directory) with bounded memory:
//! about `2 × parts_in_flight × part_size`. While reading the source, the stored bytes
//! are hashed; the destination object is completed only when their size and sha256 are
//! what the caller expects (the manifest's record, for a backup's objects). Then the
//! destination is read back and must give the same digest.

use std::sync::Arc;

use futures::StreamExt;
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::pipeline::part_size_for;
use crate::stop_signal::unless_cancelled;
use crate::storage::{Storage, Upload};

/// Size and sha256 (hex) of an object's stored bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDigest {
    /// Bytes.
    pub size: u64,
    /// sha256 of those bytes, lowercase hex.
    pub sha256: String,
}

/// How objects are moved: the destination's part size and parallelism.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    /// Size of the first parts of a multipart upload (and of each ranged read); see
    /// [`part_size_for`].
    pub part_size: u64,
    /// Reads and part uploads in flight.
    pub parts_in_flight: usize,
}

/// Longest wait for the abort of a failed multipart upload.
const ABORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The byte ranges (part number, offset, length) an object of `size` bytes is cut into.
fn ranges(size: u64, base: u64) -> Vec<(u32, u64, u64)> {
    let mut out = Vec::new();
    let (mut offset, mut number) = (0u64, 1u32);
    while offset < size {
        let len = part_size_for(base, number).min(size - offset);
        out.push((number, offset, len));
        offset += len;
        number += 1;
    }
    out
}

/// Ranged reads of one object, `parts_in_flight` ahead, handed out in order.
struct Ahead<'a> {
    storage: &'a dyn Storage,
    key: &'a str,
    todo: std::vec::IntoIter<(u32, u64, u64)>,
    reading: futures::stream::FuturesOrdered<ReadPart<'a>>,
}

/// One ranged read in flight, with its part number.
type ReadPart<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = (u32, Result<bytes::Bytes>)> + Send + 'a>>;

impl<'a> Ahead<'a> {
    fn new(
        storage: &'a dyn Storage,
        key: &'a str,
        ranges: Vec<(u32, u64, u64)>,
        transfer: Transfer,
    ) -> Self {
        let mut ahead = Ahead {
            storage,
            key,
            todo: ranges.into_iter(),
            reading: futures::stream::FuturesOrdered::new(),
        };
        for _ in 0..transfer.parts_in_flight.max(1) {
            ahead.start_next();
        }
        ahead
    }

    fn start_next(&mut self) {
        if let Some((number, offset, len)) = self.todo.next() {
            let (storage, key) = (self.storage, self.key);
            self.reading.push_back(Box::pin(async move {
                (number, storage.get_range(key, offset, len).await)
            }));
        }
    }

    /// The next part in order: its number and bytes.
    async fn next(&mut self) -> Option<(u32, Result<bytes::Bytes>)> {
        let done = self.reading.next().await?;
        self.start_next();
        Some(done)
    }
}

/// Read a whole object in ranges and return its size and sha256. `size` is what the
/// listing (or a manifest) says; a read that ends early or runs long is an integrity
/// error naming the object and its storage.
pub async fn digest_of(
    storage: &dyn Storage,
    key: &str,
    size: u64,
    transfer: Transfer,
) -> Result<StoredDigest> {
    let mut hasher = Sha256::new();
    let mut read = 0u64;
    let mut chunks = Ahead::new(storage, key, ranges(size, transfer.part_size), transfer);
    while let Some((_, chunk)) = chunks.next().await {
        let bytes = chunk?;
        read += bytes.len() as u64;
        hasher.update(&bytes);
    }
    if read != size {
        return Err(Error::Integrity {
            object: format!("{key} in {}", storage.describe()),
            message: format!("reading it gave {read} bytes, its size is {size}"),
        });
    }
    Ok(StoredDigest {
        size,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// Copy `key` (`size` stored bytes) from `source` to `target`, and check it: the bytes
/// read from the source must match `expected` when given (else whatever they are is the
/// reference), and the bytes read back from the target must match the source's. A
/// mismatch at the source leaves the target untouched. Returns the bytes copied.
pub async fn transfer(
    source: &dyn Storage,
    target: &dyn Storage,
    key: &str,
    size: u64,
    expected: Option<&StoredDigest>,
    transfer: Transfer,
    cancel: &CancellationToken,
) -> Result<u64> {
    let read =
        unless_cancelled(cancel, write(source, target, key, size, expected, transfer)).await?;
    let back = unless_cancelled(cancel, digest_of(target, key, size, transfer)).await?;
    if back != read {
        return Err(Error::Integrity {
            object: format!("{key} in {}", target.describe()),
            message: format!(
                "read back after copying: {} bytes with sha256 {}, the source's are {} bytes with sha256 {}",
                back.size, back.sha256, read.size, read.sha256
            ),
        });
    }
    Ok(size)
}

/// Stream `key` from `source` into `target` and return the digest of what was read;
/// the object appears at the target only when that digest is the expected one.
async fn write(
    source: &dyn Storage,
    target: &dyn Storage,
    key: &str,
    size: u64,
    expected: Option<&StoredDigest>,
    transfer: Transfer,
) -> Result<StoredDigest> {
    let parts = ranges(size, transfer.part_size);
    let source_name = || format!("{key} in {}", source.describe());
    let check = |read: StoredDigest| -> Result<StoredDigest> {
        match expected {
            Some(want) if *want != read => Err(Error::Integrity {
                object: source_name(),
                message: format!(
                    "the source holds {} bytes with sha256 {}, the record says {} bytes with sha256 {}: the source is damaged, so it was not copied",
                    read.size, read.sha256, want.size, want.sha256
                ),
            }),
            _ => Ok(read),
        }
    };
    if parts.len() <= 1 {
        // One request each way for an object that fits in one part (most WAL files,
        // manifests, reports).
        let data = if size == 0 {
            bytes::Bytes::new()
        } else {
            source.get_range(key, 0, size).await?
        };
        let read = check(StoredDigest {
            size: data.len() as u64,
            sha256: hex::encode(Sha256::digest(&data)),
        })?;
        if read.size != size {
            return Err(Error::Integrity {
                object: source_name(),
                message: format!("reading it gave {} bytes, its size is {size}", read.size),
            });
        }
        target.put(key, data).await?;
        return Ok(read);
    }
    let upload: Arc<dyn Upload> = Arc::from(target.begin_upload(key).await?);
    let written = write_parts(source, key, &parts, upload.clone(), transfer).await;
    let outcome = match written.and_then(|(read, count)| check(read).map(|read| (read, count))) {
        Ok((read, count)) if read.size == size => upload.complete(count).await.map(|()| read),
        Ok((read, _)) => Err(Error::Integrity {
            object: source_name(),
            message: format!("reading it gave {} bytes, its size is {size}", read.size),
        }),
        Err(e) => Err(e),
    };
    if outcome.is_err() {
        match tokio::time::timeout(ABORT_TIMEOUT, upload.abort()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(key, error = %e, "could not abort the copy's multipart upload; `pgvault prune --copy` or the bucket's lifecycle rule will")
            }
            Err(_) => tracing::warn!(key, "aborting the copy's multipart upload timed out"),
        }
    }
    outcome
}

/// Read `parts` of `key` in order (several in flight), hash them, and store each as a
/// part of `upload` (several in flight). Returns the digest and the number of parts.
async fn write_parts(
    source: &dyn Storage,
    key: &str,
    parts: &[(u32, u64, u64)],
    upload: Arc<dyn Upload>,
    transfer: Transfer,
) -> Result<(StoredDigest, u32)> {
    let in_flight = transfer.parts_in_flight.max(1);
    let mut hasher = Sha256::new();
    let mut read = 0u64;
    let mut reads = Ahead::new(source, key, parts.to_vec(), transfer);
    // Parts are stored on tasks of their own, so uploads go on while the next parts are
    // read; at most `in_flight` of them at once.
    let mut stores = tokio::task::JoinSet::new();
    let joined = |done: std::result::Result<Result<()>, tokio::task::JoinError>| {
        done.map_err(|e| Error::Internal(format!("a part upload task failed: {e}")))?
    };
    while let Some((number, next)) = reads.next().await {
        let bytes = next?;
        read += bytes.len() as u64;
        hasher.update(&bytes);
        while stores.len() >= in_flight {
            if let Some(done) = stores.join_next().await {
                joined(done)?;
            }
        }
        let upload = upload.clone();
        stores.spawn(async move { upload.put_part(number, bytes).await });
    }
    while let Some(done) = stores.join_next().await {
        joined(done)?;
    }
    Ok((
        StoredDigest {
            size: read,
            sha256: hex::encode(hasher.finalize()),
        },
        parts.len() as u32,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_object_once_in_growing_parts() {
        assert!(ranges(0, 8).is_empty());
        assert_eq!(ranges(5, 8), vec![(1, 0, 5)]);
        assert_eq!(ranges(16, 8), vec![(1, 0, 8), (2, 8, 8)]);
        // After 2000 parts, parts double (as the backup writer cuts them).
        let many = ranges(2000 * 8 + 20, 8);
        assert_eq!(many.len(), 2002);
        assert_eq!(many[2000], (2001, 16000, 16));
        assert_eq!(many[2001], (2002, 16016, 4));
    }

    #[tokio::test]
    async fn a_copy_is_verified_and_a_damaged_source_is_not_copied() {
        let dir = tempfile::tempdir().unwrap();
        let source = crate::storage::FilesystemStorage::new(dir.path().join("a")).unwrap();
        let target = crate::storage::FilesystemStorage::new(dir.path().join("b")).unwrap();
        let cancel = CancellationToken::new();
        let small = Transfer {
            part_size: 1024,
            parts_in_flight: 3,
        };
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        source.put("p/x", data.clone().into()).await.unwrap();
        let expected = StoredDigest {
            size: data.len() as u64,
            sha256: hex::encode(Sha256::digest(&data)),
        };
        let copied = transfer(
            &source,
            &target,
            "p/x",
            10_000,
            Some(&expected),
            small,
            &cancel,
        )
        .await
        .unwrap();
        assert_eq!(copied, 10_000);
        assert_eq!(target.get("p/x").await.unwrap().to_vec(), data);

        // A source that does not hold what its record says is refused, and nothing
        // appears at the target.
        let wrong = StoredDigest {
            size: 10_000,
            sha256: "0".repeat(64),
        };
        for part_size in [1024, 1 << 20] {
            let err = transfer(
                &source,
                &target,
                "p/x",
                10_000,
                Some(&wrong),
                Transfer {
                    part_size,
                    parts_in_flight: 2,
                },
                &cancel,
            )
            .await
            .unwrap_err();
            assert!(err.to_string().contains("the source is damaged"), "{err}");
        }
        source.put("p/y", data.into()).await.unwrap();
        assert!(transfer(
            &source,
            &target,
            "p/y",
            10_000,
            Some(&wrong),
            small,
            &cancel
        )
        .await
        .is_err());
        assert_eq!(target.size("p/y").await.unwrap(), None);
        assert!(target.pending_uploads("").await.unwrap().is_empty());
    }
}
