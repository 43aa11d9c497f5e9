//! The byte pipeline every backup and restore runs through, in both directions.
//!
//! ```text
//! upload:   source → sha256(raw) → zstd → age → sha256(stored) → parts → bounded queue → Upload (N in flight)
//! download: ranged GETs (N in flight) → bounded queue → sha256(stored) → age → zstd → sha256(raw) → sink
//! ```
//!
//! zstd, age and sha256 are synchronous and CPU-heavy, so they run on a blocking thread;
//! the async side only moves buffers. The queue between them is bounded, so a slow
//! bucket slows the source and memory stays at about
//! `part_size × (parts_in_flight + 2)` plus codec windows, whatever the object's size.
//!
//! Digests and sizes are computed while streaming ([`ObjectDigest`]), recorded in the
//! manifest, and checked again on every read. Encoders are finished explicitly: an
//! unfinished age stream would silently lose its last chunk.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::keys::{Identities, Recipients};
use crate::stop_signal::unless_cancelled;
use crate::storage::{Storage, Upload};

/// Sizes and SHA-256 digests of one stored object, before (raw) and after (stored)
/// compression and encryption. Recorded in the manifest; checked on every read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectDigest {
    /// Bytes the source produced (e.g. the pg_dump archive).
    pub raw_size: u64,
    /// SHA-256 of those bytes, lowercase hex.
    pub raw_sha256: String,
    /// Bytes stored in the repository (zstd, then age).
    pub stored_size: u64,
    /// SHA-256 of the stored bytes, lowercase hex: what keyless verification checks.
    /// Absent after `keys rotate` rewrote the object's age header: the whole object's
    /// digest cannot be recomputed without reading its payload, so readers then check
    /// [`ObjectDigest::age_header`] and [`ObjectDigest::payload_sha256`] (FORMAT.md §21).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_sha256: Option<String>,
    /// Size and SHA-256 of the age header at the start of the stored bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_header: Option<HeaderDigest>,
    /// SHA-256 of the stored bytes after the age header (nonce and encrypted payload),
    /// which a key rotation never changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_sha256: Option<String>,
    /// Set while `keys rotate` replaces this object: the new header it is writing. A
    /// reader accepts the object with either header (the payload is the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotating_to: Option<HeaderDigest>,
}

/// Size and digest of an object's age header: the part a key rotation rewrites.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderDigest {
    /// Bytes of the header, i.e. the payload's offset.
    pub size: u64,
    /// SHA-256 of the header bytes, lowercase hex.
    pub sha256: String,
}

impl ObjectDigest {
    /// Bytes after the age header, when the header's size is recorded.
    pub fn payload_size(&self) -> Option<u64> {
        self.age_header
            .as_ref()
            .map(|h| self.stored_size.saturating_sub(h.size))
    }

    /// The stored sizes a reader accepts: the recorded one and, during a key rotation,
    /// the size with the new header.
    pub fn accepted_sizes(&self) -> Vec<u64> {
        let mut sizes = vec![self.stored_size];
        if let (Some(new), Some(payload)) = (&self.rotating_to, self.payload_size()) {
            sizes.push(new.size + payload);
        }
        sizes
    }

    /// The digest a report or listing shows for the stored bytes: the whole object's, or
    /// after a key rotation the payload's (marked as such).
    pub fn stored_digest_label(&self) -> String {
        match (&self.stored_sha256, &self.payload_sha256) {
            (Some(whole), _) => whole.clone(),
            (None, Some(payload)) => format!("payload {payload}"),
            (None, None) => String::new(),
        }
    }
}

/// How the upload direction compresses and cuts parts.
#[derive(Debug, Clone, Copy)]
pub struct EncodeSettings {
    /// zstd level.
    pub level: i32,
    /// zstd worker threads (0: one per CPU).
    pub threads: u32,
    /// Size of the first parts; see [`part_size_for`].
    pub part_size: u64,
    /// Parts uploaded concurrently.
    pub parts_in_flight: usize,
}

/// Live byte counters, shared with a progress display.
#[derive(Debug, Default)]
pub struct Progress {
    /// Uncompressed bytes passed through so far.
    pub raw_bytes: AtomicU64,
    /// Stored (compressed and encrypted) bytes passed through so far.
    pub stored_bytes: AtomicU64,
}

/// Size of part `number`: the base size for the first 2000 parts, then doubling every
/// 2000 parts, so S3's 10 000-part limit allows objects of 62× the first 2000 parts
/// (about 484 GiB with 8 MiB parts) while small and medium backups keep small buffers.
pub fn part_size_for(base: u64, number: u32) -> u64 {
    let doublings = (number.saturating_sub(1) / 2000).min(4);
    base << doublings
}

/// S3's limit on parts per upload.
const MAX_PARTS: u32 = 10_000;
/// Size of one ranged GET on the download side.
const READ_CHUNK: u64 = 8 * 1024 * 1024;
/// zstd multithreaded job size: bounds the compressor's buffers at about
/// `(workers + 2) × ZSTD_JOB_SIZE` whatever the level.
const ZSTD_JOB_SIZE: u32 = 2 * 1024 * 1024;
/// Size of reads from the source.
const SOURCE_READ: usize = 256 * 1024;

struct Tally {
    hasher: Sha256,
    bytes: u64,
}

/// The digests of a stored byte stream: of the whole, and split at the end of its age
/// header (the header's and the payload's), computed in the same pass.
struct StoredTally {
    whole: Tally,
    /// The first bytes, kept until the header's end is among them.
    head: Vec<u8>,
    header: Option<HeaderDigest>,
    payload: Sha256,
    /// The header did not end within [`crate::keys::header::HEADER_SEARCH_LIMIT`].
    no_header: bool,
}

/// What a [`StoredTally`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StoredDigests {
    size: u64,
    sha256: String,
    header: Option<HeaderDigest>,
    payload_sha256: Option<String>,
}

impl StoredTally {
    fn new() -> Self {
        StoredTally {
            whole: Tally::new(),
            head: Vec::new(),
            header: None,
            payload: Sha256::new(),
            no_header: false,
        }
    }

    fn update(&mut self, data: &[u8]) {
        self.whole.update(data);
        if self.header.is_some() {
            self.payload.update(data);
            return;
        }
        if self.no_header {
            return;
        }
        self.head.extend_from_slice(data);
        if let Some(len) = crate::keys::header::header_len(&self.head) {
            self.header = Some(HeaderDigest {
                size: len as u64,
                sha256: hex::encode(Sha256::digest(&self.head[..len])),
            });
            self.payload.update(&self.head[len..]);
            self.head = Vec::new();
        } else if self.head.len() as u64 > crate::keys::header::HEADER_SEARCH_LIMIT {
            self.no_header = true;
            self.head = Vec::new();
        }
    }

    fn finish(&self) -> StoredDigests {
        let (size, sha256) = self.whole.clone_finish();
        StoredDigests {
            size,
            sha256,
            header: self.header.clone(),
            payload_sha256: self
                .header
                .as_ref()
                .map(|_| hex::encode(self.payload.clone().finalize())),
        }
    }
}

impl Tally {
    fn new() -> Self {
        Tally {
            hasher: Sha256::new(),
            bytes: 0,
        }
    }
    fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.bytes += data.len() as u64;
    }
    fn finish(self) -> (u64, String) {
        (self.bytes, hex::encode(self.hasher.finalize()))
    }
}

/// A writer that hashes and counts what passes through it.
struct HashingWriter<W> {
    inner: W,
    tally: StoredTally,
    counter: Option<Arc<Progress>>,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.tally.update(&buf[..n]);
        if let Some(p) = &self.counter {
            p.stored_bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Cuts the stored byte stream into parts and hands them to the uploader through a
/// bounded channel; blocks (backpressure) while the uploader is busy.
struct PartSink {
    tx: mpsc::Sender<Bytes>,
    base: u64,
    buf: Vec<u8>,
    next_part: u32,
}

impl PartSink {
    fn send(&mut self) -> io::Result<()> {
        if self.next_part > MAX_PARTS {
            return Err(io::Error::other(
                "the object would exceed 10000 upload parts; raise repository.part_size",
            ));
        }
        let part = std::mem::take(&mut self.buf);
        self.next_part += 1;
        self.tx
            .blocking_send(Bytes::from(part))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))?;
        self.buf = Vec::with_capacity(part_size_for(self.base, self.next_part) as usize);
        Ok(())
    }
}

impl Write for PartSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let cap = part_size_for(self.base, self.next_part) as usize;
        let room = cap - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == cap {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Encode `source` to the stored format, cutting parts into `tx`. Returns the digests.
fn encode(
    mut source: impl Read,
    source_name: &str,
    recipients: &Recipients,
    settings: EncodeSettings,
    tx: mpsc::Sender<Bytes>,
    progress: Arc<Progress>,
) -> Result<ObjectDigest> {
    let upload_stopped = || Error::Storage {
        operation: "upload",
        key: String::new(),
        message: "the upload stopped".into(),
        retryable: false,
    };
    let codec = |e: io::Error| {
        if e.kind() == io::ErrorKind::BrokenPipe {
            upload_stopped()
        } else {
            Error::io("encoding the backup stream", e)
        }
    };
    let sink = PartSink {
        tx,
        base: settings.part_size,
        buf: Vec::with_capacity(settings.part_size as usize),
        next_part: 1,
    };
    let stored = HashingWriter {
        inner: sink,
        tally: StoredTally::new(),
        counter: Some(progress.clone()),
    };
    let age_writer = recipients.encryptor()?.wrap_output(stored).map_err(codec)?;
    let mut zstd_writer =
        zstd::stream::write::Encoder::new(age_writer, settings.level).map_err(codec)?;
    let threads = if settings.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1)
    } else {
        settings.threads
    };
    if threads > 1 {
        zstd_writer.multithread(threads).map_err(codec)?;
        // Each worker buffers a whole job; a fixed job size keeps that memory bounded and
        // reached early, instead of growing with the level's window (up to 4× of it).
        zstd_writer
            .set_parameter(zstd::zstd_safe::CParameter::JobSize(ZSTD_JOB_SIZE))
            .map_err(codec)?;
    }
    let mut raw = Tally::new();
    let mut buf = vec![0u8; SOURCE_READ];
    loop {
        let n = match source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::Tool {
                    tool: source_name.to_string(),
                    message: e.to_string(),
                })
            }
        };
        raw.update(&buf[..n]);
        progress.raw_bytes.fetch_add(n as u64, Ordering::Relaxed);
        zstd_writer.write_all(&buf[..n]).map_err(codec)?;
    }
    let age_writer = zstd_writer.finish().map_err(codec)?;
    let stored = age_writer.finish().map_err(codec)?;
    let digests = stored.tally.finish();
    let mut sink = stored.inner;
    // The rest as the last part; an empty rest only when it is the only part.
    if !sink.buf.is_empty() || sink.next_part == 1 {
        sink.send().map_err(codec)?;
    }
    let (raw_size, raw_sha256) = raw.finish();
    Ok(ObjectDigest {
        raw_size,
        raw_sha256,
        stored_size: digests.size,
        stored_sha256: Some(digests.sha256),
        age_header: digests.header,
        payload_sha256: digests.payload_sha256,
        rotating_to: None,
    })
}

/// Stream `source` through sha256 → zstd → age → sha256 into the object at `key`.
///
/// The object appears only if the source ended cleanly (a source that reports an error at
/// its end, like a failed `pg_dump`, fails the upload) and every part was stored. An
/// object smaller than one part is stored with one request; a larger one goes through a
/// multipart upload, begun when its first part is full. On any failure or on `cancel`
/// (which reaches every wait, the last parts and the completion included), the multipart
/// upload is aborted before this returns.
#[allow(clippy::too_many_arguments)]
pub async fn upload_stream<R: Read + Send + 'static>(
    storage: &dyn Storage,
    key: &str,
    source: R,
    source_name: &str,
    recipients: &Recipients,
    settings: EncodeSettings,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<ObjectDigest> {
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let recipients = recipients.clone();
    let name = source_name.to_string();
    let encoder = tokio::task::spawn_blocking(move || {
        encode(source, &name, &recipients, settings, tx, progress)
    });
    let mut upload: Option<Arc<dyn Upload>> = None;
    let result = drive_upload(storage, key, &mut upload, rx, encoder, settings, cancel).await;
    match result {
        Ok(digest) => Ok(digest),
        Err(e) => {
            if let Some(upload) = upload {
                // Bounded: a stalled store must not hold a cancelled run past its grace.
                match tokio::time::timeout(ABORT_TIMEOUT, upload.abort()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(abort_err)) => {
                        tracing::warn!(key, error = %abort_err, "could not abort the multipart upload; the next backup or `pgvault prune` will")
                    }
                    Err(_) => {
                        tracing::warn!(key, "aborting the multipart upload timed out; the next backup or `pgvault prune` will abort it")
                    }
                }
            }
            Err(match e {
                Error::Storage {
                    operation,
                    key: k,
                    message,
                    retryable,
                } if k.is_empty() => Error::Storage {
                    operation,
                    key: key.to_string(),
                    message,
                    retryable,
                },
                other => other,
            })
        }
    }
}

/// Longest wait for the abort of a failed multipart upload.
const ABORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Upload one part; one function, so that every part's future has the same type.
async fn store_part(upload: Arc<dyn Upload>, number: u32, data: Bytes) -> Result<()> {
    upload.put_part(number, data).await
}

async fn drive_upload(
    storage: &dyn Storage,
    key: &str,
    upload: &mut Option<Arc<dyn Upload>>,
    mut rx: mpsc::Receiver<Bytes>,
    mut encoder: tokio::task::JoinHandle<Result<ObjectDigest>>,
    settings: EncodeSettings,
    cancel: &CancellationToken,
) -> Result<ObjectDigest> {
    let (part_size, parts_in_flight) = (settings.part_size, settings.parts_in_flight);
    let mut parts = 0u32;
    // A one-part object (shorter than a part) is stored with a single request; anything
    // larger opens a multipart upload as soon as its first full part is ready.
    let mut first: Option<Bytes> = None;
    let mut running = futures::stream::FuturesUnordered::new();
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(Error::Cancelled),
            Some(done) = running.next(), if !running.is_empty() => {
                let r: Result<()> = done;
                r?;
            }
            part = rx.recv(), if running.len() < parts_in_flight => {
                let Some(bytes) = part else { break };
                parts += 1;
                // The encoder sends a part shorter than the part size only at the end: a
                // short first part is the whole object.
                if parts == 1 && (bytes.len() as u64) < part_size_for(part_size, 1) {
                    first = Some(bytes);
                    continue;
                }
                let target = match upload {
                    Some(u) => u.clone(),
                    None => {
                        let begun: Arc<dyn Upload> =
                            Arc::from(unless_cancelled(cancel, storage.begin_upload(key)).await?);
                        *upload = Some(begun.clone());
                        begun
                    }
                };
                running.push(store_part(target, parts, bytes));
            }
        }
    }
    // The encoder closed the channel: wait for it to report how the source ended, while
    // the last parts finish uploading.
    let digest = loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(Error::Cancelled),
            Some(done) = running.next(), if !running.is_empty() => {
                let r: Result<()> = done;
                r?;
            }
            joined = &mut encoder => {
                break joined.map_err(|e| Error::Internal(format!("encoder thread failed: {e}")))??;
            }
        }
    };
    unless_cancelled(cancel, async {
        while let Some(done) = running.next().await {
            done?;
        }
        Ok(())
    })
    .await?;
    match upload {
        Some(u) => unless_cancelled(cancel, u.complete(parts)).await?,
        None => {
            let data = first.take().unwrap_or_default();
            unless_cancelled(cancel, storage.put(key, data)).await?
        }
    }
    Ok(digest)
}

/// Decrypt and decompress a small stored object held in memory (a WAL segment) on a
/// blocking thread. Returns the plaintext and its sha256 (hex); the caller compares the
/// digest with what it expects.
pub async fn decode_bytes(
    stored: Bytes,
    object: &str,
    identities: &Identities,
    recipients: &[String],
) -> Result<(Vec<u8>, String)> {
    let object = object.to_string();
    let identities = identities.clone();
    let recipients = recipients.to_vec();
    let decoded = tokio::task::spawn_blocking(move || {
        decode(
            io::Cursor::new(stored),
            &object,
            &Decode::Full(&identities),
            &recipients,
            Vec::new(),
            Arc::new(Progress::default()),
        )
    })
    .await
    .map_err(|e| Error::Internal(format!("decoder thread failed: {e}")))??;
    let (_, sha256) = decoded.raw.unwrap_or_default();
    Ok((decoded.sink, sha256))
}

/// Which decoding a download performs.
pub enum Decode<'a> {
    /// Check the stored bytes only (no key needed); the sink receives the stored bytes.
    StoredOnly,
    /// Decrypt with these identities and decompress; the sink receives the raw bytes.
    Full(&'a Identities),
}

/// Reads bytes arriving through a bounded channel, for the blocking decoder thread.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
    tally: Arc<Mutex<StoredTally>>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.current = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let chunk = self.current.split_to(n);
        if let Ok(mut t) = self.tally.lock() {
            t.update(&chunk);
        }
        Ok(n)
    }
}

/// A reader that hashes and counts what passes through it.
struct HashingReader<R> {
    inner: R,
    tally: Tally,
    progress: Arc<Progress>,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.tally.update(&buf[..n]);
        self.progress
            .raw_bytes
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// What the decoder thread reports besides the sink.
struct Decoded<W> {
    sink: W,
    raw: Option<(u64, String)>,
}

fn decode<R: Read, W: Write>(
    reader: R,
    object: &str,
    decode: &Decode<'_>,
    recipients: &[String],
    mut sink: W,
    progress: Arc<Progress>,
) -> Result<Decoded<W>> {
    let sink_err = |e: io::Error| Error::io(format!("writing the decoded stream of {object}"), e);
    match decode {
        Decode::StoredOnly => {
            let mut reader = reader;
            io::copy(&mut reader, &mut sink).map_err(|e| Error::Storage {
                operation: "get",
                key: object.into(),
                message: e.to_string(),
                retryable: true,
            })?;
            Ok(Decoded { sink, raw: None })
        }
        Decode::Full(identities) => {
            let decrypt_err = |e: &dyn std::fmt::Display| Error::Decrypt {
                object: object.into(),
                message: e.to_string(),
            };
            let decryptor = age::Decryptor::new(reader).map_err(|e| decrypt_err(&e))?;
            let stream = match decryptor.decrypt(identities.as_dyn()) {
                Ok(s) => s,
                Err(age::DecryptError::NoMatchingKeys) => {
                    if identities.matches_any(recipients) {
                        return Err(Error::Decrypt {
                            object: object.into(),
                            message: "the header does not open with a key this backup was encrypted to, so it is corrupt".into(),
                        });
                    }
                    return Err(Error::WrongKey {
                        identity_file: identities.path().to_path_buf(),
                        recipients: recipients.to_vec(),
                    });
                }
                Err(e) => return Err(decrypt_err(&e)),
            };
            let zstd_reader =
                zstd::stream::read::Decoder::new(stream).map_err(|e| decrypt_err(&e))?;
            let mut raw = HashingReader {
                inner: zstd_reader,
                tally: Tally::new(),
                progress,
            };
            let mut buf = vec![0u8; SOURCE_READ];
            loop {
                let n = match raw.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // age reports authentication failures as InvalidData; zstd reports
                        // corrupt frames as other errors: both mean the bytes are wrong.
                        return Err(decrypt_err(&e));
                    }
                };
                sink.write_all(&buf[..n]).map_err(sink_err)?;
            }
            sink.flush().map_err(sink_err)?;
            Ok(Decoded {
                sink,
                raw: Some(raw.tally.finish()),
            })
        }
    }
}

/// Stream the object at `key` back through the pipeline into `sink`, checking every
/// digest and size against `expected`. Returns the sink once everything matched.
///
/// The sink sees bytes before the final digest check (that is what streaming means):
/// callers that act on the bytes (e.g. `pg_restore`) must treat their work as
/// provisional until this returns `Ok`.
#[allow(clippy::too_many_arguments)]
pub async fn download_stream<W: Write + Send + 'static>(
    storage: &dyn Storage,
    key: &str,
    expected: &ObjectDigest,
    decode_mode: Decode<'_>,
    recipients: &[String],
    sink: W,
    parallel: usize,
    progress: Arc<Progress>,
) -> Result<W> {
    let unreadable = |e: Error| e.within(format!("could not read {key} from the repository"));
    let size = match storage.size(key).await.map_err(unreadable)? {
        None => return Err(Error::ObjectNotFound { key: key.into() }),
        Some(size) if !expected.accepted_sizes().contains(&size) => {
            return Err(Error::Integrity {
                object: key.into(),
                message: format!(
                    "stored size is {size} bytes, the manifest records {}",
                    expected.stored_size
                ),
            })
        }
        Some(size) => size,
    };
    let (tx, rx) = mpsc::channel::<Bytes>(2);
    let tally = Arc::new(Mutex::new(StoredTally::new()));
    let reader = ChannelReader {
        rx,
        current: Bytes::new(),
        tally: tally.clone(),
    };
    let object = key.to_string();
    let recipients = recipients.to_vec();
    // The decoder thread needs owned identities; `Decode` borrows them.
    let identities = match &decode_mode {
        Decode::StoredOnly => None,
        Decode::Full(ids) => Some((*ids).clone()),
    };
    let decode_progress = progress.clone();
    let decoder = tokio::task::spawn_blocking(move || {
        let mode = match &identities {
            None => Decode::StoredOnly,
            Some(ids) => Decode::Full(ids),
        };
        decode(reader, &object, &mode, &recipients, sink, decode_progress)
    });

    let ranges: Vec<(u64, u64)> = (0..size.div_ceil(READ_CHUNK))
        .map(|i| (i * READ_CHUNK, READ_CHUNK.min(size - i * READ_CHUNK)))
        .collect();
    let mut fetches = futures::stream::iter(ranges)
        .map(|(offset, len)| storage.get_range(key, offset, len))
        .buffered(parallel.max(1));
    let mut fetch_error = None;
    while let Some(chunk) = fetches.next().await {
        match chunk {
            Ok(bytes) => {
                progress
                    .stored_bytes
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                if tx.send(bytes).await.is_err() {
                    break; // the decoder stopped; its error explains why
                }
            }
            Err(e) => {
                fetch_error = Some(unreadable(e));
                break;
            }
        }
    }
    drop(tx);
    drop(fetches);
    let decoded = decoder
        .await
        .map_err(|e| Error::Internal(format!("decoder thread failed: {e}")));
    if let Some(e) = fetch_error {
        return Err(e);
    }
    let decoded = decoded??;

    let stored = tally
        .lock()
        .map_err(|_| Error::Invalid("digest state poisoned".into()))?
        .finish();
    check_stored(key, &stored, expected)?;
    if let Some((raw_size, raw_sha)) = decoded.raw {
        check(
            key,
            "decoded size",
            raw_size.to_string(),
            expected.raw_size.to_string(),
        )?;
        check(key, "decoded sha256", raw_sha, expected.raw_sha256.clone())?;
    }
    Ok(decoded.sink)
}

impl Tally {
    fn clone_finish(&self) -> (u64, String) {
        (self.bytes, hex::encode(self.hasher.clone().finalize()))
    }
}

/// Compare what was read with the manifest: the size, then the whole object's digest
/// and, when recorded, the header's and the payload's. An object rotated by
/// `keys rotate` has only the split digests; one of the two forms must be there.
fn check_stored(key: &str, stored: &StoredDigests, expected: &ObjectDigest) -> Result<()> {
    // During a rotation the object may already carry its new header.
    let rotated = match (&expected.rotating_to, &stored.header) {
        (Some(new), Some(found)) if *new == *found => Some(new),
        _ => None,
    };
    if rotated.is_none() {
        check(
            key,
            "stored size",
            stored.size.to_string(),
            expected.stored_size.to_string(),
        )?;
        if let Some(whole) = &expected.stored_sha256 {
            check(key, "stored sha256", stored.sha256.clone(), whole.clone())?;
        }
    }
    match (
        rotated.or(expected.age_header.as_ref()),
        &expected.payload_sha256,
    ) {
        (Some(header), Some(payload)) => {
            let found = stored.header.as_ref().ok_or_else(|| Error::Integrity {
                object: key.into(),
                message: "the stored bytes do not start with an age header".into(),
            })?;
            check(
                key,
                "age header size",
                found.size.to_string(),
                header.size.to_string(),
            )?;
            if let Some(payload_size) = expected.payload_size() {
                check(
                    key,
                    "payload size",
                    (stored.size - found.size.min(stored.size)).to_string(),
                    payload_size.to_string(),
                )?;
            }
            check(
                key,
                "age header sha256",
                found.sha256.clone(),
                header.sha256.clone(),
            )?;
            check(
                key,
                "payload sha256",
                stored.payload_sha256.clone().unwrap_or_default(),
                payload.clone(),
            )?;
        }
        _ if expected.stored_sha256.is_none() => {
            return Err(Error::Manifest {
                key: key.into(),
                message: "the object has neither a stored sha256 nor header and payload digests"
                    .into(),
            })
        }
        _ => {}
    }
    Ok(())
}

fn check(object: &str, what: &str, actual: String, expected: String) -> Result<()> {
    if actual != expected {
        return Err(Error::Integrity {
            object: object.into(),
            message: format!("{what} is {actual}, the manifest records {expected}"),
        });
    }
    Ok(())
}

/// Encrypt a small in-memory object and store it with one upload (sidecars, globals).
pub async fn upload_bytes(
    storage: &dyn Storage,
    key: &str,
    data: Vec<u8>,
    recipients: &Recipients,
    settings: EncodeSettings,
    cancel: &CancellationToken,
) -> Result<ObjectDigest> {
    upload_stream(
        storage,
        key,
        io::Cursor::new(data),
        key,
        recipients,
        settings,
        Arc::new(Progress::default()),
        cancel,
    )
    .await
}

/// Download, verify and decrypt a small object into memory.
pub async fn download_bytes(
    storage: &dyn Storage,
    key: &str,
    expected: &ObjectDigest,
    identities: &Identities,
    recipients: &[String],
) -> Result<Vec<u8>> {
    download_stream(
        storage,
        key,
        expected,
        Decode::Full(identities),
        recipients,
        Vec::new(),
        2,
        Arc::new(Progress::default()),
    )
    .await
}

/// A sink that only digests what it is given (the stored bytes of a keyless read).
struct DigestSink(StoredTally);

impl Write for DigestSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Read an object once, checking it against `expected`, and return its age header's and
/// payload's digests: what a manifest written before they were recorded lacks when
/// `keys rotate` rewrites the header.
pub async fn split_digests(
    storage: &dyn Storage,
    key: &str,
    expected: &ObjectDigest,
) -> Result<(HeaderDigest, String)> {
    let sink = download_stream(
        storage,
        key,
        expected,
        Decode::StoredOnly,
        &[],
        DigestSink(StoredTally::new()),
        4,
        Arc::new(Progress::default()),
    )
    .await?;
    let digests = sink.0.finish();
    match (digests.header, digests.payload_sha256) {
        (Some(header), Some(payload)) => Ok((header, payload)),
        _ => Err(Error::Integrity {
            object: key.into(),
            message: "the stored bytes do not start with an age header".into(),
        }),
    }
}
