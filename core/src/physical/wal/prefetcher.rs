//! The long-lived WAL prefetcher of recovery: `restore_command` (`pgvault wal-fetch`)
//! runs once per file, and without help each run would pay a round trip to the object
//! store before replay can go on. The first `wal-fetch` starts a prefetcher (detached,
//! one per directory, holding `prefetcher.lock`) that keeps the `window` segments after
//! the last one recovery asked for downloaded, verified, in `pg_wal/.pgvault-prefetch/`.
//! A `wal-fetch` whose file is there renames it into place without touching the network.
//!
//! Each `wal-fetch` writes the file it was asked for to `.wanted`; the prefetcher reads it,
//! drops files recovery has passed, fetches what the window lacks, and exits (removing its
//! files) once recovery has asked for nothing for a minute or the directory is gone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::keys::Identities;
use crate::repository::Repository;

use super::archive::{download_to, PREFETCH_DIR};
use super::name::{segment_name, WalFileKind, WalFileName};

/// How long the prefetcher runs without a request before it exits.
const IDLE_EXIT: Duration = Duration::from_secs(60);
/// How long a segment the archive did not have is not asked for again.
const ABSENT_RETRY: Duration = Duration::from_secs(2);
/// How often an idle prefetcher looks for a new request.
const POLL: Duration = Duration::from_millis(20);
/// The file holding recovery's last request: `<name> <segment size>`.
const WANTED: &str = ".wanted";

/// The prefetch directory beside `dest` (what `restore_command` passes as `%p`), as an
/// absolute path.
pub fn prefetch_dir(dest: &Path) -> Result<PathBuf> {
    let parent = dest
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let parent = std::fs::canonicalize(parent)
        .map_err(|e| Error::io(format!("cannot resolve {}", parent.display()), e))?;
    Ok(parent.join(PREFETCH_DIR))
}

/// The file where each `wal-fetch` served by the prefetcher leaves a line, so a restore
/// can say how much of the replay it carried.
const SERVED: &str = ".served";

/// Move the prefetched `name` to `dest` if the prefetcher has it; `false` otherwise.
pub fn take_prefetched(dir: &Path, name: &str, dest: &Path) -> Result<bool> {
    let waiting = dir.join(name);
    match std::fs::rename(&waiting, dest) {
        Ok(()) => {
            use std::io::Write;
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(SERVED))
                .and_then(|mut f| writeln!(f, "{name}"));
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(
            format!("cannot move prefetched {name} into place"),
            e,
        )),
    }
}

/// How many WAL files the prefetcher served to recovery in the data directory `pgdata`.
pub fn served_count(pgdata: &Path) -> usize {
    std::fs::read_to_string(pgdata.join("pg_wal").join(PREFETCH_DIR).join(SERVED))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Tell the prefetcher that recovery asked for `name` (of `segment_size` bytes), under
/// the policy at `policy` (a prefetcher serving another policy's archive gives up).
pub fn note_wanted(dir: &Path, name: &str, segment_size: u64, policy: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let tmp = dir.join(".wanted.partial");
    let policy = std::fs::canonicalize(policy).unwrap_or_else(|_| policy.to_path_buf());
    std::fs::write(
        &tmp,
        format!("{name} {segment_size} {}\n", policy.display()),
    )
    .and_then(|()| std::fs::rename(&tmp, dir.join(WANTED)))
    .map_err(|e| Error::io("cannot note the requested WAL file for the prefetcher", e))
}

/// Recovery's last request: the file, the segment size, and the policy it came under.
fn read_wanted(dir: &Path) -> Option<(WalFileName, u64, PathBuf)> {
    let text = std::fs::read_to_string(dir.join(WANTED)).ok()?;
    let mut words = text.trim().splitn(3, ' ');
    let name = WalFileName::parse(words.next()?).ok()?;
    let size = words.next()?.parse().ok()?;
    Some((name, size, PathBuf::from(words.next()?)))
}

fn lock(dir: &Path) -> Result<Option<nix::fcntl::Flock<std::fs::File>>> {
    crate::server::process::try_lock_exclusive(&dir.join("prefetcher.lock"))
}

/// Start a prefetcher for `dir` unless one runs: `pgvault wal-prefetcher`, detached,
/// reading the policy's copy `from_copy` when recovery reads one.
pub fn ensure_prefetcher(
    dir: &Path,
    policy: &Path,
    identity: &Path,
    window: usize,
    from_copy: Option<&str>,
) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    if lock(dir)?.is_none() {
        return Ok(());
    }
    let program = super::settings::pgvault_program()?;
    let absolute = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let mut cmd = std::process::Command::new(&program);
    cmd.arg("wal-prefetcher")
        .arg("--policy")
        .arg(absolute(policy))
        .arg("--identity")
        .arg(absolute(identity))
        .arg("--window")
        .arg(window.to_string());
    if let Some(name) = from_copy {
        cmd.arg("--from-copy").arg(name);
    }
    cmd.arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    crate::server::process::spawn_detached(cmd, &format!("{} wal-prefetcher", program.display()))
}

/// Keep the `window` segments after recovery's last request in `dir` until recovery
/// stops asking (or `cancel`). Returns how many segments it downloaded.
#[allow(clippy::too_many_arguments)]
pub async fn run_prefetcher(
    repo: &Repository,
    policy: &Path,
    identities: &Identities,
    recipients: &[String],
    dir: &Path,
    window: usize,
    cancel: &CancellationToken,
) -> Result<usize> {
    let Some(_held) = lock(dir)? else {
        return Ok(0);
    };
    let policy = std::fs::canonicalize(policy).unwrap_or_else(|_| policy.to_path_buf());
    // The directory this prefetcher serves: a new restore into the same place makes a
    // new one, and this prefetcher must not serve it.
    let inode = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok()
    };
    let own = inode(dir);
    let mut fetched = 0usize;
    let mut absent: HashMap<String, Instant> = HashMap::new();
    let mut last_wanted: Option<String> = None;
    let mut last_request = Instant::now();
    loop {
        if cancel.is_cancelled() || inode(dir) != own || last_request.elapsed() >= IDLE_EXIT {
            break;
        }
        let Some((wanted, size, asked_under)) = read_wanted(dir) else {
            tokio::time::sleep(POLL).await;
            continue;
        };
        if asked_under != policy {
            break;
        }
        if last_wanted.as_deref() != Some(wanted.name.as_str()) {
            last_wanted = Some(wanted.name.clone());
            last_request = Instant::now();
        }
        let (WalFileKind::Segment, Some(segno)) = (wanted.kind, wanted.segno_for(size)) else {
            tokio::time::sleep(POLL).await;
            continue;
        };
        // Files recovery has passed (or skipped) are of no further use.
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.len() == 24 && !name.starts_with('.') && name <= wanted.name {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        absent.retain(|_, at| at.elapsed() < ABSENT_RETRY);
        let missing: Vec<String> = (1..=window as u64)
            .map(|i| segment_name(wanted.timeline, segno + i, size))
            .filter(|n| !dir.join(n).exists() && !absent.contains_key(n))
            .collect();
        if missing.is_empty() {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(POLL) => {}
            }
            continue;
        }
        let results: Vec<(String, Result<()>)> = futures::stream::iter(missing)
            .map(|name| async move {
                let outcome =
                    download_to(repo, &name, &dir.join(&name), identities, recipients).await;
                (name, outcome)
            })
            .buffer_unordered(window.max(1))
            .collect()
            .await;
        for (name, outcome) in results {
            match outcome {
                Ok(()) => fetched += 1,
                Err(Error::WalNotFound { .. }) => {
                    absent.insert(name, Instant::now());
                }
                Err(e) => {
                    tracing::warn!(segment = %name, error = %e, "cannot prefetch a WAL segment; recovery will fetch it itself");
                    absent.insert(name, Instant::now());
                }
            }
        }
    }
    if inode(dir) != own {
        return Ok(fetched);
    }
    // What was not used is removed: recovery is over or has moved elsewhere.
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.len() == 24 || name.starts_with(".pgvault-fetch-") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(fetched)
}
