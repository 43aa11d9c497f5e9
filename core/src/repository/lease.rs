//! Run leases: how a crashed backup's leftovers are told apart from a running backup's
//! objects, so they can be removed at once instead of after `orphan_min_age`.
//!
//! Before a backup stores anything, it writes a lease object,
//! `<policy>/runs/<backup id>.json`, naming the host (and its boot), the process and when
//! it started, and it refreshes the lease's heartbeat every [`HEARTBEAT_EVERY`] while it
//! runs. The lease is deleted when the run ends, after the manifest (success) or after
//! the clean-up of its objects (failure). So the objects of a backup without a manifest
//! belong to:
//!
//! - a **running** backup when its lease is alive: on this host, its process is still
//!   the same process (pid and start time); on another host, its heartbeat is recent;
//! - a **crashed** run when its lease is dead: on this host (same boot) its process is
//!   gone, or anywhere its heartbeat is older than [`LEASE_EXPIRY`];
//! - an older pgvault, or a run whose lease write never happened, when there is no
//!   lease: only the age rule (`orphan_min_age`) may remove those.
//!
//! Credentials that may not delete (an agent whose retention runs elsewhere) cannot
//! delete the lease: the run then stores it once more with `released_at` set, which
//! ends it just as well, and `pgvault prune` deletes it later. Leases are scratch
//! objects: never locked by `[repository] object_lock`.
//!
//! A crashed run's objects and multipart uploads are removed by the next backup of the
//! policy, by the agent at start-up and by `pgvault prune` ([`crate::retention::prune`]). Before
//! deleting, the absence of the manifest is checked again after the lease was read: a
//! run writes its manifest before it drops its lease, so a run that finished in between
//! is never touched.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::repository::{BackupKind, Repository};

/// What the lease id of a key rotation starts with (`crate::rotation`): its lease sits
/// beside the backups' leases, and while it is alive the rotation's uploads are not stale.
pub const ROTATION_LEASE_PREFIX: &str = "rotation-";

/// How often a running backup refreshes its lease.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(30);
/// A lease not refreshed for this long belongs to a run that is gone.
pub const LEASE_EXPIRY: chrono::Duration = chrono::Duration::seconds(180);

/// What a lease object records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The backup id the run writes.
    pub id: String,
    /// Logical or physical.
    pub kind: BackupKind,
    /// The host name.
    pub host: String,
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`): pids mean something only
    /// within one boot of one host.
    pub boot_id: String,
    /// The process id.
    pub pid: u32,
    /// The process's start time in clock ticks since boot, so a reused pid is not taken
    /// for the run.
    pub process_start: u64,
    /// When the run started.
    pub started_at: DateTime<Utc>,
    /// When the run last said it was alive.
    pub heartbeat_at: DateTime<Utc>,
    /// The pgvault that runs it.
    pub tool_version: String,
    /// When the run ended, for a lease its run could not delete (no delete permission):
    /// such a lease is dead whatever its heartbeat says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at: Option<DateTime<Utc>>,
}

/// Whether the run behind a backup directory is still running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// Its lease is alive: leave its objects alone.
    Running,
    /// Its lease is dead: its leftovers can go now. The text says why.
    Crashed(String),
    /// There is no lease: only the age rule applies.
    Unknown,
}

/// The lease of a running backup. Dropping it stops the heartbeat; [`RunLease::release`]
/// also deletes the lease object.
pub struct RunLease {
    repo: Repository,
    key: String,
    record: LeaseRecord,
    heartbeat: tokio::task::JoinHandle<()>,
}

/// The key of the lease of backup `id`.
pub fn lease_key(repo: &Repository, id: &str) -> String {
    format!("{}{id}.json", leases_prefix(repo))
}

/// The prefix of a policy's leases.
pub fn leases_prefix(repo: &Repository) -> String {
    format!("{}/{}/", repo.policy(), super::RUNS_DIR)
}

impl RunLease {
    /// Write the lease of backup `id` and start its heartbeat. Call it before the run
    /// stores anything.
    pub async fn acquire(repo: &Repository, id: &str, kind: BackupKind) -> Result<RunLease> {
        let now = Utc::now();
        let (boot_id, pid, process_start) = this_process();
        let record = LeaseRecord {
            id: id.to_string(),
            kind,
            host: crate::notify::host_name(),
            boot_id,
            pid,
            process_start,
            started_at: now,
            heartbeat_at: now,
            tool_version: crate::TOOL_VERSION.to_string(),
            released_at: None,
        };
        let key = lease_key(repo, id);
        repo.storage().put(&key, encode(&record)?).await?;
        let heartbeat = {
            let repo = repo.clone();
            let key = key.clone();
            let mut record = record.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(HEARTBEAT_EVERY).await;
                    record.heartbeat_at = Utc::now();
                    let written = match encode(&record) {
                        Ok(bytes) => repo.storage().put(&key, bytes).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = written {
                        tracing::warn!(key = %key, error = %e, "could not refresh the run's lease");
                    }
                }
            })
        };
        Ok(RunLease {
            repo: repo.clone(),
            key,
            record,
            heartbeat,
        })
    }

    /// Stop the heartbeat and delete the lease (the run is over). Credentials without
    /// delete permission store the lease once more, marked released, instead. A lease
    /// that can be neither deleted nor marked is dead anyway once its heartbeat stops
    /// (on another host) or its process ends; it is only logged.
    pub async fn release(mut self) {
        self.heartbeat.abort();
        let e = match self.repo.storage().delete(&self.key).await {
            Ok(()) => return,
            Err(e) => e,
        };
        if e.is_access_denied() {
            let now = Utc::now();
            self.record.heartbeat_at = now;
            self.record.released_at = Some(now);
            let marked = match encode(&self.record) {
                Ok(bytes) => self.repo.storage().put(&self.key, bytes).await,
                Err(e) => Err(e),
            };
            match marked {
                Ok(()) => {
                    tracing::debug!(key = %self.key, "no permission to delete the run's lease; marked it released for `pgvault prune` to delete")
                }
                Err(e) => {
                    tracing::warn!(key = %self.key, error = %e, "could not delete the run's lease nor mark it released; it expires on its own")
                }
            }
            return;
        }
        tracing::warn!(key = %self.key, error = %e, "could not delete the run's lease; it expires on its own");
    }
}

impl Drop for RunLease {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

fn encode(record: &LeaseRecord) -> Result<Bytes> {
    serde_json::to_vec_pretty(record)
        .map(Bytes::from)
        .map_err(|e| Error::Internal(format!("cannot encode a run lease: {e}")))
}

/// Every lease of the policy, by backup id. A lease that cannot be read counts as no
/// lease (only the age rule then applies to its run's objects).
pub async fn read_leases(repo: &Repository) -> Result<HashMap<String, LeaseRecord>> {
    let mut leases = HashMap::new();
    for object in repo.storage().list(&leases_prefix(repo)).await? {
        let bytes = match repo.storage().get(&object.key).await {
            Ok(b) => b,
            Err(Error::ObjectNotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        match serde_json::from_slice::<LeaseRecord>(&bytes) {
            Ok(record) => {
                leases.insert(record.id.clone(), record);
            }
            Err(e) => {
                tracing::warn!(key = %object.key, error = %e, "unreadable run lease ignored")
            }
        }
    }
    Ok(leases)
}

/// Whether the run holding `lease` is alive at `now`.
pub fn liveness(lease: Option<&LeaseRecord>, now: DateTime<Utc>) -> Liveness {
    let Some(lease) = lease else {
        return Liveness::Unknown;
    };
    if let Some(released) = lease.released_at {
        return Liveness::Crashed(format!(
            "its run on {} ended at {} (its lease could not be deleted)",
            lease.host,
            released.format("%Y-%m-%d %H:%M:%S UTC")
        ));
    }
    let (boot_id, _, _) = this_process();
    if lease.host == crate::notify::host_name() && !boot_id.is_empty() && lease.boot_id == boot_id {
        return match process_start(lease.pid) {
            Some(start) if start == lease.process_start => Liveness::Running,
            _ => Liveness::Crashed(format!("its process {} on this host is gone", lease.pid)),
        };
    }
    let silent = now - lease.heartbeat_at;
    if silent > LEASE_EXPIRY {
        Liveness::Crashed(format!(
            "its lease from {} was last refreshed {}s ago",
            lease.host,
            silent.num_seconds()
        ))
    } else {
        Liveness::Running
    }
}

/// This host's boot id, this process's pid and its start time.
fn this_process() -> (String, u32, u64) {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let pid = std::process::id();
    (boot_id, pid, process_start(pid).unwrap_or(0))
}

/// A process's start time (field 22 of `/proc/PID/stat`), or `None` when it is gone.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: count from the
    // last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(host: &str, boot_id: &str, pid: u32, start: u64, age_s: i64) -> LeaseRecord {
        let now = Utc::now();
        LeaseRecord {
            id: "20261203T000000Z-00000000".into(),
            kind: BackupKind::Logical,
            host: host.into(),
            boot_id: boot_id.into(),
            pid,
            process_start: start,
            started_at: now,
            heartbeat_at: now - chrono::Duration::seconds(age_s),
            tool_version: crate::TOOL_VERSION.into(),
            released_at: None,
        }
    }

    #[test]
    fn this_process_is_alive_and_a_gone_one_is_not() {
        let (boot, pid, start) = this_process();
        let host = crate::notify::host_name();
        let now = Utc::now();
        assert_eq!(
            liveness(Some(&record(&host, &boot, pid, start, 0)), now),
            Liveness::Running
        );
        // Same pid, another start time: a reused pid.
        assert!(matches!(
            liveness(Some(&record(&host, &boot, pid, start + 1, 0)), now),
            Liveness::Crashed(_)
        ));
        // Another host: the heartbeat decides.
        assert_eq!(
            liveness(Some(&record("elsewhere", "b", 1, 1, 30)), now),
            Liveness::Running
        );
        assert!(matches!(
            liveness(Some(&record("elsewhere", "b", 1, 1, 600)), now),
            Liveness::Crashed(_)
        ));
        assert_eq!(liveness(None, now), Liveness::Unknown);
        // A lease its run marked released is dead, even with a fresh heartbeat.
        let mut released = record(&host, &boot, pid, start, 0);
        released.released_at = Some(now);
        assert!(matches!(
            liveness(Some(&released), now),
            Liveness::Crashed(_)
        ));
    }

    #[test]
    fn process_start_reads_past_odd_command_names() {
        let (_, pid, start) = this_process();
        assert!(start > 0);
        assert_eq!(process_start(pid), Some(start));
        assert_eq!(process_start(u32::MAX), None);
    }
}
