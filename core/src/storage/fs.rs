//! The local-filesystem backend: the embedded default, and the same format as S3.
//!
//! Objects are files under the root. Uploads are written to `.uploads/<id>` (parts are
//! appended in order as they arrive; out-of-order parts wait in memory, at most the
//! parts in flight) and renamed into place on completion after an fsync, so an object
//! appears atomically and a crash leaves only a pending upload.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use rand::RngCore;

use super::{check_key, ObjectInfo, PendingUpload, Storage, Upload};
use crate::error::{Error, Result};

const UPLOADS_DIR: &str = ".uploads";

/// A repository in a local directory.
pub struct FilesystemStorage {
    root: PathBuf,
}

impl FilesystemStorage {
    /// Use `root` as the repository root (created on first write).
    pub fn new(root: PathBuf) -> Result<Self> {
        Ok(FilesystemStorage { root })
    }

    fn path_of(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

fn storage_err(operation: &'static str, key: &str, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound && operation == "get" {
        return Error::ObjectNotFound { key: key.into() };
    }
    Error::Storage {
        operation,
        key: key.into(),
        message: e.to_string(),
        retryable: false,
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("storage worker failed: {e}")))?
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Write `data` to `path` atomically: temp file, fsync, rename, fsync the directory.
fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

#[async_trait]
impl Storage for FilesystemStorage {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let path = self.path_of(key)?;
        let key = key.to_string();
        blocking(move || write_atomically(&path, &data).map_err(|e| storage_err("put", &key, e)))
            .await
    }

    async fn begin_upload(&self, key: &str) -> Result<Box<dyn Upload>> {
        let final_path = self.path_of(key)?;
        let uploads = self.root.join(UPLOADS_DIR);
        let mut id = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut id);
        let upload_id = hex::encode(id);
        let key_owned = key.to_string();
        let state = blocking(move || {
            std::fs::create_dir_all(&uploads)
                .map_err(|e| storage_err("begin upload", &key_owned, e))?;
            // The upload file records its target key in a sidecar so pending uploads can be listed.
            let data_path = uploads.join(format!("{upload_id}.data"));
            let file =
                File::create(&data_path).map_err(|e| storage_err("begin upload", &key_owned, e))?;
            std::fs::write(
                uploads.join(format!("{upload_id}.key")),
                key_owned.as_bytes(),
            )
            .map_err(|e| storage_err("begin upload", &key_owned, e))?;
            Ok(FsUploadState {
                file: Some(file),
                next: 1,
                waiting: BTreeMap::new(),
                data_path,
                key_path: uploads.join(format!("{upload_id}.key")),
            })
        })
        .await?;
        Ok(Box::new(FsUpload {
            key: key.to_string(),
            final_path,
            root: self.root.clone(),
            state: Arc::new(Mutex::new(state)),
        }))
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes> {
        let path = self.path_of(key)?;
        let key = key.to_string();
        blocking(move || {
            use std::os::unix::fs::FileExt;
            let file = File::open(&path).map_err(|e| storage_err("get", &key, e))?;
            let size = file
                .metadata()
                .map_err(|e| storage_err("get", &key, e))?
                .len();
            let end = size.min(offset.saturating_add(len));
            let mut buf = vec![0u8; end.saturating_sub(offset) as usize];
            file.read_exact_at(&mut buf, offset)
                .map_err(|e| storage_err("get", &key, e))?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let path = self.path_of(key)?;
        let key = key.to_string();
        blocking(move || {
            std::fs::read(&path)
                .map(Bytes::from)
                .map_err(|e| storage_err("get", &key, e))
        })
        .await
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        let path = self.path_of(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(storage_err("stat", key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        blocking(move || {
            let mut out = Vec::new();
            let mut stack = vec![root.clone()];
            while let Some(dir) = stack.pop() {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(storage_err("list", &prefix, e)),
                };
                for entry in entries {
                    let entry = entry.map_err(|e| storage_err("list", &prefix, e))?;
                    let path = entry.path();
                    let rel = match path.strip_prefix(&root) {
                        Ok(r) => r.to_string_lossy().to_string(),
                        Err(_) => continue,
                    };
                    if rel == UPLOADS_DIR || rel.contains("/.tmp") || rel.starts_with(".tmp") {
                        continue;
                    }
                    let meta = entry
                        .metadata()
                        .map_err(|e| storage_err("list", &prefix, e))?;
                    if meta.is_dir() {
                        // Descend only where the prefix can still match.
                        let as_dir = format!("{rel}/");
                        if as_dir.starts_with(&prefix) || prefix.starts_with(&as_dir) {
                            stack.push(path);
                        }
                    } else if rel.starts_with(&prefix) {
                        out.push(ObjectInfo {
                            key: rel,
                            size: meta.len(),
                            modified: meta.modified().ok().map(DateTime::<Utc>::from),
                        });
                    }
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path_of(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(storage_err("delete", key, e)),
        }
    }

    async fn abort_pending(&self, upload: &PendingUpload) -> Result<()> {
        if upload.upload_id.is_empty()
            || upload.upload_id.contains('/')
            || upload.upload_id.contains("..")
        {
            return Err(Error::Invalid(format!(
                "invalid upload id {:?}",
                upload.upload_id
            )));
        }
        self.remove_upload_files(&upload.upload_id)
    }

    async fn pending_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        let dir = self.root.join(UPLOADS_DIR);
        let prefix = prefix.to_string();
        blocking(move || {
            let mut out = Vec::new();
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                Err(e) => return Err(storage_err("list uploads", &prefix, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| storage_err("list uploads", &prefix, e))?;
                let name = entry.file_name().to_string_lossy().to_string();
                let Some(upload_id) = name.strip_suffix(".key") else {
                    continue;
                };
                let key = std::fs::read_to_string(entry.path()).unwrap_or_default();
                if !key.starts_with(&prefix) {
                    continue;
                }
                let started = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .map(DateTime::<Utc>::from);
                out.push(PendingUpload {
                    key,
                    upload_id: upload_id.to_string(),
                    started,
                });
            }
            Ok(out)
        })
        .await
    }
}

impl FilesystemStorage {
    fn remove_upload_files(&self, upload_id: &str) -> Result<()> {
        let dir = self.root.join(UPLOADS_DIR);
        for ext in ["data", "key"] {
            match std::fs::remove_file(dir.join(format!("{upload_id}.{ext}"))) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(storage_err("abort upload", upload_id, e)),
            }
        }
        Ok(())
    }
}

struct FsUploadState {
    file: Option<File>,
    next: u32,
    waiting: BTreeMap<u32, Bytes>,
    data_path: PathBuf,
    key_path: PathBuf,
}

struct FsUpload {
    key: String,
    final_path: PathBuf,
    /// The repository root, to find a copied part's source.
    root: PathBuf,
    state: Arc<Mutex<FsUploadState>>,
}

fn lock_err(key: &str) -> Error {
    Error::Storage {
        operation: "upload part",
        key: key.into(),
        message: "upload state poisoned by an earlier failure".into(),
        retryable: false,
    }
}

#[async_trait]
impl Upload for FsUpload {
    async fn put_part(&self, number: u32, data: Bytes) -> Result<()> {
        let state = self.state.clone();
        let key = self.key.clone();
        blocking(move || {
            let mut st = state.lock().map_err(|_| lock_err(&key))?;
            st.waiting.insert(number, data);
            loop {
                let next = st.next;
                let Some(part) = st.waiting.remove(&next) else {
                    break;
                };
                let file = st.file.as_mut().ok_or_else(|| lock_err(&key))?;
                file.write_all(&part)
                    .map_err(|e| storage_err("upload part", &key, e))?;
                st.next += 1;
            }
            Ok(())
        })
        .await
    }

    async fn copy_part(&self, number: u32, source: &str, offset: u64, len: u64) -> Result<()> {
        let source_path = FilesystemStorage {
            root: self.root.clone(),
        }
        .path_of(source)?;
        let state = self.state.clone();
        let key = self.key.clone();
        let source = source.to_string();
        blocking(move || {
            use std::io::{Read, Seek, SeekFrom};
            let mut st = state.lock().map_err(|_| lock_err(&key))?;
            if st.next != number || !st.waiting.is_empty() {
                return Err(Error::Internal(format!(
                    "copying part {number} of {key}: the filesystem backend takes parts in order (next is {})",
                    st.next
                )));
            }
            let mut from = File::open(&source_path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Error::ObjectNotFound {
                        key: source.clone(),
                    }
                } else {
                    storage_err("copy part", &source, e)
                }
            })?;
            from.seek(SeekFrom::Start(offset))
                .map_err(|e| storage_err("copy part", &source, e))?;
            let file = st.file.as_mut().ok_or_else(|| lock_err(&key))?;
            let copied = std::io::copy(&mut from.take(len), file)
                .map_err(|e| storage_err("copy part", &key, e))?;
            if copied != len {
                return Err(Error::Storage {
                    operation: "copy part",
                    key: source,
                    message: format!("the object ended after {copied} of {len} bytes"),
                    retryable: false,
                });
            }
            st.next += 1;
            Ok(())
        })
        .await
    }

    async fn complete(&self, parts: u32) -> Result<()> {
        let state = self.state.clone();
        let key = self.key.clone();
        let final_path = self.final_path.clone();
        blocking(move || {
            let mut st = state.lock().map_err(|_| lock_err(&key))?;
            if st.next != parts + 1 || !st.waiting.is_empty() {
                return Err(Error::Storage {
                    operation: "complete upload",
                    key,
                    message: format!("expected {parts} parts, have {} in order", st.next - 1),
                    retryable: false,
                });
            }
            let file = st.file.take().ok_or_else(|| lock_err(&key))?;
            file.sync_all()
                .map_err(|e| storage_err("complete upload", &key, e))?;
            drop(file);
            let dir = final_path.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir).map_err(|e| storage_err("complete upload", &key, e))?;
            std::fs::rename(&st.data_path, &final_path)
                .map_err(|e| storage_err("complete upload", &key, e))?;
            sync_dir(dir).map_err(|e| storage_err("complete upload", &key, e))?;
            let _ = std::fs::remove_file(&st.key_path);
            Ok(())
        })
        .await
    }

    async fn abort(&self) -> Result<()> {
        let state = self.state.clone();
        let key = self.key.clone();
        blocking(move || {
            let mut st = state.lock().map_err(|_| lock_err(&key))?;
            st.file = None;
            for path in [&st.data_path, &st.key_path] {
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(storage_err("abort upload", &key, e)),
                }
            }
            Ok(())
        })
        .await
    }
}
