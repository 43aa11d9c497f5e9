//! Verification of stored backups, with or without keys.
//!
//! - Without an identity (what an auditor can do): every object's stored bytes are read
//!   back and their size and SHA-256 compared with the manifest.
//! - With an identity: additionally each object is decrypted (age authenticates every
//!   64 KiB chunk), decompressed, its plaintext size and SHA-256 compared, the dump's
//!   table of contents read by `pg_restore --list`, and the sidecar parsed.
//!
//! Either way, the report names each stored object's lock (S3 Object Lock: mode and end
//! of retention, legal hold), the manifest's included, so an auditor can show that the
//! backup cannot be deleted or altered before then. A lock is a fact to report, not a
//! check: an expired lock on an old backup is normal.

use std::io::{self, Read, Write};
use std::process::{ChildStdin, Stdio};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::keys::Identities;
use crate::logical::backup::VerificationSidecar;
use crate::pipeline::{self, Decode, Progress};
use crate::repository::{object, BackupManifest, Repository, MANIFEST};
use crate::server::{self, PgTools};
use crate::storage::ObjectLock;

/// The result of checking one object.
#[derive(Debug)]
pub struct ObjectCheck {
    /// The object's role (`dump`, `globals`, `verification`).
    pub role: String,
    /// Its key.
    pub key: String,
    /// What was checked and found, or the error.
    pub outcome: std::result::Result<String, Error>,
}

/// The result of verifying a backup.
#[derive(Debug)]
pub struct VerifyReport {
    /// The backup checked.
    pub backup_id: String,
    /// Whether the plaintext was checked too (an identity was given).
    pub deep: bool,
    /// Fingerprints of the recipients its objects are encrypted to (changed by
    /// `keys rotate`): which keys can restore it.
    pub recipients: Vec<String>,
    /// One entry per object.
    pub objects: Vec<ObjectCheck>,
    /// The lock of every stored object of the backup, its manifest first.
    pub locks: Vec<LockCheck>,
}

/// The lock of one stored object, as the store reports it.
#[derive(Debug)]
pub struct LockCheck {
    /// The object's key.
    pub key: String,
    /// Its lock (`None`: not locked), or why it could not be read.
    pub lock: std::result::Result<Option<ObjectLock>, Error>,
}

/// What a check of one object found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finding {
    /// Every check passed.
    Good,
    /// The bytes are wrong or missing: a digest, a size or an age authentication failed,
    /// or the object is gone. The backup is damaged.
    Bad,
    /// The object could not be read (storage or network failure after retries, a tool
    /// missing): nothing is known about its bytes.
    Unknown,
}

impl ObjectCheck {
    /// What this check found.
    pub fn finding(&self) -> Finding {
        match &self.outcome {
            Ok(_) => Finding::Good,
            Err(e) => finding_of(e),
        }
    }
}

/// Whether an error means damaged bytes (never a network failure).
pub fn finding_of(e: &Error) -> Finding {
    if e.kind() == crate::error::ErrorKind::Corruption
        || matches!(e.root(), Error::ObjectNotFound { .. })
    {
        Finding::Bad
    } else {
        Finding::Unknown
    }
}

impl VerifyReport {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.objects.iter().all(|o| o.outcome.is_ok())
    }

    /// Whether some object's bytes are wrong or missing: the backup is damaged.
    pub fn damaged(&self) -> bool {
        self.objects.iter().any(|o| o.finding() == Finding::Bad)
    }

    /// Whether some object could not be read, so the verdict is unknown.
    pub fn incomplete(&self) -> bool {
        self.objects.iter().any(|o| o.finding() == Finding::Unknown)
    }
}

/// Writes into a tool's stdin until the tool stops reading, then discards the rest (so
/// the digest check still sees every byte). `pg_restore --list` stops after the TOC.
struct UntilClosed {
    stdin: Option<ChildStdin>,
}

impl Write for UntilClosed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(stdin) = &mut self.stdin {
            match stdin.write_all(buf) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => self.stdin = None,
                Err(e) => return Err(e),
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Stream the verified plaintext of the dump `stored` into `cmd`'s stdin (`tool` names
/// it in errors) and return its exit status, stdout and stderr. The digest check sees
/// every byte even when the tool stops reading early.
pub(crate) async fn stream_dump_into(
    repo: &Repository,
    stored: &crate::repository::StoredObject,
    identities: &Identities,
    recipients: &[String],
    mut cmd: std::process::Command,
    tool: &str,
) -> Result<(std::process::ExitStatus, String, String)> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("cannot start {tool}"), e))?;
    let stdin = child.stdin.take();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_thread = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_string(&mut text);
        }
        text
    });
    let err_thread = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_string(&mut text);
        }
        text
    });
    let streamed = pipeline::download_stream(
        repo.storage(),
        &stored.key,
        &stored.digest,
        Decode::Full(identities),
        recipients,
        UntilClosed { stdin },
        4,
        Arc::new(Progress::default()),
    )
    .await;
    if streamed.is_err() {
        let _ = child.kill();
    }
    let sink = streamed?;
    drop(sink);
    // The child and its reader threads end on their own now that its input is closed;
    // waiting for them blocks, so it happens on a blocking thread.
    let tool = tool.to_string();
    let (status, out, errors) = tokio::task::spawn_blocking(move || {
        let status = child.wait();
        let out = out_thread.join().unwrap_or_default();
        let errors = err_thread.join().unwrap_or_default();
        (status, out, errors)
    })
    .await
    .map_err(|e| Error::Internal(format!("{tool} waiter failed: {e}")))?;
    let status = status.map_err(|e| Error::io(format!("waiting for {tool}"), e))?;
    Ok((status, out, errors))
}

/// Verify `manifest`'s objects. A failing object does not stop the others from being
/// checked; the report names each one. `cancel` stops the check (nothing is written, so
/// there is nothing to undo) and the answer is [`Error::Cancelled`], not a verdict.
pub async fn verify_backup(
    repo: &Repository,
    manifest: &BackupManifest,
    identities: Option<&Identities>,
    bin_dir: Option<&std::path::Path>,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<VerifyReport> {
    if let Some(ids) = identities {
        if !ids.matches_any(&manifest.encryption.recipients) {
            return Err(Error::WrongKey {
                identity_file: ids.path().to_path_buf(),
                recipients: manifest.encryption.recipients.clone(),
            });
        }
    }
    let recipients = &manifest.encryption.recipients;
    let mut objects = Vec::new();
    for (role, stored) in &manifest.objects {
        let check = async {
            let outcome = match identities {
                None => pipeline::download_stream(
                    repo.storage(),
                    &stored.key,
                    &stored.digest,
                    Decode::StoredOnly,
                    recipients,
                    io::sink(),
                    4,
                    Arc::new(Progress::default()),
                )
                .await
                .map(|_| {
                    if stored.digest.stored_sha256.is_some() {
                        format!("{} stored bytes, sha256 matches", stored.digest.stored_size)
                    } else {
                        format!(
                            "{} stored bytes, header and payload sha256 match (rewrapped by a key rotation)",
                            stored.digest.stored_size
                        )
                    }
                }),
                Some(ids) if role == object::DUMP => {
                    let source_major = (manifest.server_version_num / 10000) as u32;
                    deep_check_dump(repo, stored, ids, recipients, bin_dir, source_major).await
                }
                Some(ids) if role == object::BASE => pipeline::download_stream(
                    repo.storage(),
                    &stored.key,
                    &stored.digest,
                    Decode::Full(ids),
                    recipients,
                    io::sink(),
                    4,
                    Arc::new(Progress::default()),
                )
                .await
                .map(|_| {
                    format!(
                        "decrypts and verifies ({} bytes of base backup tar)",
                        stored.digest.raw_size
                    )
                }),
                Some(ids) => {
                    match pipeline::download_bytes(
                        repo.storage(),
                        &stored.key,
                        &stored.digest,
                        ids,
                        recipients,
                    )
                    .await
                    {
                        Ok(bytes) if role == object::VERIFICATION => {
                            serde_json::from_slice::<VerificationSidecar>(&bytes)
                                .map(|s| {
                                    format!(
                                        "decrypts and verifies; row counts of {} tables",
                                        s.tables.len()
                                    )
                                })
                                .map_err(|e| Error::Integrity {
                                    object: stored.key.clone(),
                                    message: format!("the sidecar is not valid JSON: {e}"),
                                })
                        }
                        Ok(bytes) => Ok(format!(
                            "decrypts and verifies; {} bytes of SQL",
                            bytes.len()
                        )),
                        Err(e) => Err(e),
                    }
                }
            };
            outcome
        };
        let outcome = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(Error::Cancelled),
            outcome = check => outcome,
        };
        if let Err(Error::WrongKey { .. }) = &outcome {
            // Same keys for every object: report once, as the command's error.
            return Err(outcome.err().unwrap_or(Error::Cancelled));
        }
        objects.push(ObjectCheck {
            role: role.clone(),
            key: stored.key.clone(),
            outcome,
        });
    }
    objects.extend(physical_extras(repo, manifest).await);
    let mut keys = vec![repo.object_key(&manifest.id, MANIFEST)];
    keys.extend(manifest.objects.values().map(|o| o.key.clone()));
    if let Some(copy) = manifest
        .physical
        .as_ref()
        .and_then(|p| p.server_manifest.as_ref())
    {
        keys.push(copy.key.clone());
    }
    let mut locks = Vec::new();
    for key in keys {
        let lock = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(Error::Cancelled),
            lock = repo.storage().lock_of(&key) => lock,
        };
        locks.push(LockCheck { key, lock });
    }
    Ok(VerifyReport {
        backup_id: manifest.id.clone(),
        deep: identities.is_some(),
        recipients: manifest.encryption.recipients.clone(),
        objects,
        locks,
    })
}

/// What a physical backup has besides its objects: the plaintext copy of the server's
/// manifest (its digest), and for an incremental, the chain a restore needs. Neither
/// needs a key.
async fn physical_extras(repo: &Repository, manifest: &BackupManifest) -> Vec<ObjectCheck> {
    let mut checks = Vec::new();
    let Some(physical) = &manifest.physical else {
        return checks;
    };
    if let Some(copy) = &physical.server_manifest {
        let outcome = crate::repository::chain::fetch_server_manifest(repo, manifest)
            .await
            .map(|bytes| format!("{} plaintext bytes, sha256 matches", bytes.len()));
        checks.push(ObjectCheck {
            role: "server_manifest".into(),
            key: copy.key.clone(),
            outcome,
        });
    }
    if manifest.chain_link().is_some() {
        let outcome = match repo.list_backups().await {
            Ok(all) => crate::repository::chain::chain_of(manifest, &all)
                .map(|chain| {
                    format!(
                        "every ancestor is present: {} backups from full {}",
                        chain.len(),
                        chain[0].id
                    )
                })
                .map_err(|e| Error::Integrity {
                    object: format!("the chain of backup {}", manifest.id),
                    message: e.to_string(),
                }),
            Err(e) => Err(e),
        };
        checks.push(ObjectCheck {
            role: "chain".into(),
            key: format!("backup {}", manifest.id),
            outcome,
        });
    }
    checks
}

async fn deep_check_dump(
    repo: &Repository,
    stored: &crate::repository::StoredObject,
    identities: &Identities,
    recipients: &[String],
    bin_dir: Option<&std::path::Path>,
    source_major: u32,
) -> Result<String> {
    let tools = PgTools::discover(bin_dir, source_major).await?;
    let cmd = crate::logical::restore::toc_command(&tools);
    let (status, listing, errors) = stream_dump_into(
        repo,
        stored,
        identities,
        recipients,
        cmd,
        "pg_restore --list",
    )
    .await?;
    if !status.success() {
        return Err(Error::Integrity {
            object: stored.key.clone(),
            message: format!(
                "the plaintext verifies but pg_restore --list cannot read it: {}",
                server::stderr_tail(&errors)
            ),
        });
    }
    let entries = listing
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with(';'))
        .count();
    Ok(format!(
        "decrypts and verifies ({} bytes); pg_restore --list reads {entries} TOC entries",
        stored.digest.raw_size
    ))
}
