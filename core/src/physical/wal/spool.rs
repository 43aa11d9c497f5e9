//! The local spool of asynchronous archiving (`[archive] mode = "async"`).
//!
//! `archive_command` ([`hand_over`]) copies the segment into the spool and returns once
//! the copy is durable (file and directory fsynced), so PostgreSQL's archiver never
//! waits for the object store; a background pusher ([`super::pusher`]) stores what the
//! spool holds, several segments at a time, and removes each copy only once it is
//! stored. Whatever PostgreSQL has been told is archived is therefore either in the
//! repository or durably in the spool, at every instant: a crash of the pusher, of
//! `archive_command` or of the host loses nothing (a copy that was not yet durable was
//! never acknowledged, and PostgreSQL hands it over again).
//!
//! The spool is bounded by `queue_max`. A segment that does not fit is refused
//! (`queue_full = "keep"`: PostgreSQL keeps it and retries, and `check` and the metrics
//! say archiving is stuck) or accepted without being stored (`"drop"`: the primary's
//! disk is saved, and a marker is written so the pusher records the dropped range as a
//! gap in the repository, see [`super::gaps`]).
//!
//! ```text
//! <spool>/queue/<WAL file name>      copies waiting for the pusher (complete, fsynced)
//! <spool>/queue/.<name>.<pid>.partial  a copy being written (never pushed)
//! <spool>/dropped/<segment name>     segments accepted without storing (drop mode);
//!                                    the marker holds the segment size
//! <spool>/pusher.lock                locked by the running pusher; holds its pid
//! <spool>/status.json                the pusher's last success and last error
//! ```

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::policy::{ArchiveConfig, QueueFull};

use super::name::{WalFileKind, WalFileName};

/// A spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

/// What happened to a WAL file handed to the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandOver {
    /// Copied into the spool, durably.
    Queued,
    /// The spool already held it (PostgreSQL handed it over again after a crash).
    AlreadyQueued,
    /// Accepted without being stored: the spool was full and `queue_full = "drop"`.
    Dropped {
        /// Bytes waiting in the spool.
        backlog: u64,
    },
}

/// The pusher's last results, for `wal-push`, `check` and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PusherStatus {
    /// The last file stored.
    pub last_stored: Option<String>,
    /// When.
    pub last_stored_at: Option<DateTime<Utc>>,
    /// The last error, when the last attempt failed.
    pub last_error: Option<String>,
    /// When it happened.
    pub last_error_at: Option<DateTime<Utc>>,
}

/// A file waiting in the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// The WAL file name.
    pub name: String,
    /// Its path in the spool.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
}

impl Spool {
    /// The spool at `dir`, created (mode 0700) with its subdirectories when missing.
    pub fn open(dir: &Path) -> Result<Spool> {
        for sub in [dir.to_path_buf(), dir.join("queue"), dir.join("dropped")] {
            if !sub.is_dir() {
                std::fs::create_dir_all(&sub).map_err(|e| {
                    Error::io(
                        format!("cannot create the spool directory {}", sub.display()),
                        e,
                    )
                })?;
                set_private(&sub)?;
            }
        }
        Ok(Spool {
            dir: dir.to_path_buf(),
        })
    }

    /// The spool at `dir` as it is, creating nothing (for status readers, which may run
    /// as another OS user than the archiver).
    pub fn existing(dir: &Path) -> Spool {
        Spool {
            dir: dir.to_path_buf(),
        }
    }

    /// The pid recorded by the pusher that holds (or last held) the lock, when that
    /// process is alive. Reads only: taking the lock to probe would make a pusher that
    /// starts at that moment give up.
    pub fn live_pusher_pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.lock_path())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // The pid may have been reused (after a reboot, say): it must be a pusher.
        let command = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        String::from_utf8_lossy(&command)
            .contains("wal-pusher")
            .then_some(pid)
    }

    /// The spool's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn queue_dir(&self) -> PathBuf {
        self.dir.join("queue")
    }

    fn dropped_dir(&self) -> PathBuf {
        self.dir.join("dropped")
    }

    /// The lock file the running pusher holds.
    pub fn lock_path(&self) -> PathBuf {
        self.dir.join("pusher.lock")
    }

    fn status_path(&self) -> PathBuf {
        self.dir.join("status.json")
    }

    /// Files waiting to be stored, oldest name first (partial copies left out).
    pub fn queued(&self) -> Result<Vec<Queued>> {
        let mut queued = Vec::new();
        for entry in read_dir(&self.queue_dir())? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            queued.push(Queued {
                path: entry.path(),
                name,
                size,
            });
        }
        queued.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(queued)
    }

    /// Bytes waiting to be stored.
    pub fn backlog(&self) -> Result<u64> {
        Ok(self.queued()?.iter().map(|q| q.size).sum())
    }

    /// Segments accepted without being stored whose gap is not yet recorded in the
    /// repository, oldest first.
    pub fn dropped(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = read_dir(&self.dropped_dir())?
            .into_iter()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        Ok(names)
    }

    /// When segment `name` was dropped (its marker's modification time).
    pub fn dropped_at(&self, name: &str) -> Option<DateTime<Utc>> {
        let modified = std::fs::metadata(self.dropped_dir().join(name))
            .ok()?
            .modified()
            .ok()?;
        Some(DateTime::<Utc>::from(modified))
    }

    /// The WAL segment size the drop markers recorded.
    pub fn dropped_segment_size(&self) -> Option<u64> {
        let first = self.dropped().ok()?.into_iter().next()?;
        std::fs::read_to_string(self.dropped_dir().join(first))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Forget drop markers once their gap is recorded in the repository.
    pub fn forget_dropped(&self, names: &[String]) -> Result<()> {
        for name in names {
            remove_if_present(&self.dropped_dir().join(name))?;
        }
        sync_dir(&self.dropped_dir())
    }

    /// Remove a stored file from the queue.
    pub fn remove_queued(&self, name: &str) -> Result<()> {
        remove_if_present(&self.queue_dir().join(name))
    }

    /// Take the WAL file at `path` (what `archive_command` passes as `%p`) into the
    /// spool, or, when it does not fit in `queue_max`, refuse it or record it as
    /// dropped, as the policy says. Returns only once the outcome is durable.
    pub fn hand_over(&self, path: &Path, config: &ArchiveConfig) -> Result<HandOver> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::Invalid(format!("{} has no file name", path.display())))?;
        let file = WalFileName::parse(name)?;
        let size = std::fs::metadata(path)
            .map_err(|e| Error::io(format!("cannot read WAL file {}", path.display()), e))?
            .len();
        let queued = self.queue_dir().join(name);
        // Handed over before (PostgreSQL retries after a crash): make sure what is
        // there is durable before acknowledging it again.
        // (Gone meanwhile means the pusher stored it or recorded its gap: just as good.)
        if std::fs::metadata(&queued).is_ok_and(|m| m.len() == size) {
            sync_file_if_present(&queued)?;
            sync_dir(&self.queue_dir())?;
            return Ok(HandOver::AlreadyQueued);
        }
        let marker = self.dropped_dir().join(name);
        if marker.exists() {
            sync_file_if_present(&marker)?;
            sync_dir(&self.dropped_dir())?;
            return Ok(HandOver::Dropped {
                backlog: self.backlog()?,
            });
        }
        let backlog = self.backlog()?;
        // Only segments count against the limit and only segments are ever dropped:
        // history and backup-label files are tiny and recovery cannot do without them.
        if file.kind == WalFileKind::Segment && backlog + size > config.queue_max {
            match config.queue_full {
                QueueFull::Keep => {
                    let status = self.status();
                    return Err(Error::Invalid(format!(
                        "the archive spool {} is full ({} waiting, queue_max {}): {name} stays in pg_wal until the pusher stores older segments{}",
                        self.dir.display(),
                        crate::units::human_bytes(backlog),
                        crate::units::human_bytes(config.queue_max),
                        status
                            .last_error
                            .map(|e| format!("; the pusher's last error: {e}"))
                            .unwrap_or_default()
                    )));
                }
                QueueFull::Drop => {
                    // The marker holds the segment size, for the gap record's ranges.
                    let marker = self.dropped_dir().join(name);
                    write_durably(&marker, size.to_string().as_bytes())?;
                    return Ok(HandOver::Dropped { backlog });
                }
            }
        }
        // The writer's pid in the name: a pusher starting meanwhile removes only the
        // partial copies of writers that are gone.
        let partial = self
            .queue_dir()
            .join(format!(".{name}.{}.partial", std::process::id()));
        let copied = (|| -> std::io::Result<()> {
            let mut from = File::open(path)?;
            let mut to = File::create(&partial)?;
            std::io::copy(&mut from, &mut to)?;
            to.sync_all()
        })();
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&partial);
            return Err(Error::io(
                format!(
                    "cannot copy {} into the spool {}",
                    path.display(),
                    self.dir.display()
                ),
                e,
            ));
        }
        std::fs::rename(&partial, &queued)
            .map_err(|e| Error::io(format!("cannot move {name} into the spool queue"), e))?;
        sync_dir(&self.queue_dir())?;
        Ok(HandOver::Queued)
    }

    /// The pusher's last results (empty when it never wrote any).
    pub fn status(&self) -> PusherStatus {
        std::fs::read(self.status_path())
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Record the pusher's results (atomically: a reader sees the old or the new).
    pub fn write_status(&self, status: &PusherStatus) -> Result<()> {
        let json = serde_json::to_vec_pretty(status)
            .map_err(|e| Error::Internal(format!("cannot encode the pusher status: {e}")))?;
        let tmp = self.dir.join(".status.json.partial");
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, self.status_path()))
            .map_err(|e| Error::io("cannot write the pusher status", e))
    }

    /// Remove copies that writers which are gone left half-written.
    pub fn remove_partials(&self) -> Result<()> {
        for entry in read_dir(&self.queue_dir())? {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Only pgvault's own copies start with a dot: `<segment>.partial` is a real
            // WAL file (a promoted standby's last segment) waiting to be stored.
            let Some(stem) = name
                .strip_prefix('.')
                .and_then(|n| n.strip_suffix(".partial"))
            else {
                continue;
            };
            let writer_alive = stem
                .rsplit('.')
                .next()
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
            if !writer_alive {
                remove_if_present(&entry.path())?;
            }
        }
        Ok(())
    }
}

fn read_dir(dir: &Path) -> Result<Vec<std::fs::DirEntry>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Ok(entries.flatten().collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io(format!("cannot read {}", dir.display()), e)),
    }
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("cannot remove {}", path.display()), e)),
    }
}

fn set_private(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io(format!("cannot set the mode of {}", dir.display()), e))
}

/// Write `bytes` to `path` and make both the file and its name durable.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let written = (|| -> std::io::Result<()> {
        let mut file = File::create(path)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    written.map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// fsync a file's content; a file removed meanwhile is no error.
fn sync_file_if_present(path: &Path) -> Result<()> {
    match File::open(path).and_then(|f| f.sync_all()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("cannot sync {}", path.display()), e)),
    }
}

/// fsync a directory, so the names created or removed in it survive a crash.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("cannot sync the directory {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(queue_max: u64, queue_full: QueueFull) -> ArchiveConfig {
        ArchiveConfig {
            queue_max,
            queue_full,
            ..ArchiveConfig::default()
        }
    }

    fn segment(dir: &Path, name: &str, size: usize) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, vec![7u8; size]).unwrap();
        path
    }

    #[test]
    fn a_handed_over_segment_is_queued_once_and_a_full_spool_keeps_or_drops() {
        let pg_wal = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool")).unwrap();
        let one = segment(pg_wal.path(), "000000010000000000000001", 1000);
        let two = segment(pg_wal.path(), "000000010000000000000002", 1000);
        let history = segment(pg_wal.path(), "00000002.history", 50);

        let keep = config(1500, QueueFull::Keep);
        assert_eq!(spool.hand_over(&one, &keep).unwrap(), HandOver::Queued);
        assert_eq!(
            spool.hand_over(&one, &keep).unwrap(),
            HandOver::AlreadyQueued
        );
        let err = spool.hand_over(&two, &keep).unwrap_err().to_string();
        assert!(err.contains("is full"), "{err}");
        // History files always fit.
        assert_eq!(spool.hand_over(&history, &keep).unwrap(), HandOver::Queued);
        let names: Vec<String> = spool
            .queued()
            .unwrap()
            .into_iter()
            .map(|q| q.name)
            .collect();
        assert_eq!(names, vec!["000000010000000000000001", "00000002.history"]);

        let drop = config(1500, QueueFull::Drop);
        assert_eq!(
            spool.hand_over(&two, &drop).unwrap(),
            HandOver::Dropped { backlog: 1050 }
        );
        // Handed over again after a crash: still dropped, never queued late.
        assert!(matches!(
            spool.hand_over(&two, &drop).unwrap(),
            HandOver::Dropped { .. }
        ));
        assert_eq!(spool.dropped().unwrap(), vec!["000000010000000000000002"]);
        spool.forget_dropped(&spool.dropped().unwrap()).unwrap();
        assert!(spool.dropped().unwrap().is_empty());

        spool.remove_queued("000000010000000000000001").unwrap();
        assert_eq!(spool.backlog().unwrap(), 50);
    }

    #[test]
    fn a_starting_pusher_removes_only_partial_copies_whose_writer_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let queue = dir.path().join("queue");
        let live = queue.join(format!(
            ".000000010000000000000001.{}.partial",
            std::process::id()
        ));
        let dead = queue.join(".000000010000000000000002.4294967295.partial");
        // A promoted standby's last segment, handed over for archiving: real WAL.
        let wal = queue.join("000000010000000000000003.partial");
        std::fs::write(&live, b"x").unwrap();
        std::fs::write(&dead, b"x").unwrap();
        std::fs::write(&wal, b"x").unwrap();
        spool.remove_partials().unwrap();
        assert!(live.exists());
        assert!(!dead.exists());
        assert!(wal.exists());
        let names: Vec<String> = spool
            .queued()
            .unwrap()
            .into_iter()
            .map(|q| q.name)
            .collect();
        assert_eq!(names, vec!["000000010000000000000003.partial"]);
    }
}
