//! Physical base backups: `pg_basebackup` of the whole cluster as one tar stream
//! (`-Ft -D - -X none`, fast checkpoint) through the same sha256 → zstd → age pipeline,
//! for point-in-time recovery together with the archived WAL (see [`crate::physical::wal`]).
//!
//! The WAL the backup needs is not in the tar (`-X none`): it comes from the archive, so
//! the source must archive with `pgvault wal-push` (see `pgvault archive setup`). The
//! backup's start and end LSN, timeline and WAL segment size go into the manifest, so a
//! restore can plan which segments it needs before it downloads anything.
//!
//! On PostgreSQL 17 and newer a backup can be incremental ([`BaseBackupKind`]): taken
//! against the newest base backup's stored `backup_manifest` (see
//! [`crate::physical::incremental`]), falling back to a full one or refusing when no
//! backup can be its parent.

use std::io::{Read, Write};
use std::sync::Arc;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::physical::incremental::{self, ParentChoice};
use crate::physical::wal::{self, parse_lsn};
use crate::pipeline::{self, Progress};
use crate::policy::{ArchiveMode, IncrementalFallback, Policy};
use crate::repository::new_backup::{
    build_manifest, discard_objects, encode_settings, SourceSession,
};
use crate::repository::{self, object, BackupKind, BackupManifest, ChainLink, PhysicalInfo};
use crate::server::ChildReader;
use crate::stop_signal::unless_cancelled;

/// File name of a physical backup's tar object.
pub(crate) const BASE_FILE: &str = "base.tar.zst.age";

/// Passes a stream through while a copy goes to a thread that reads the tar entries and
/// keeps `backup_manifest`: its `WAL-Ranges` are the backup's start and end LSN (with
/// `-D -`, pg_basebackup reports them nowhere else).
struct ManifestSniffer<R> {
    inner: R,
    copy: Option<std::io::PipeWriter>,
}

impl<R: Read> Read for ManifestSniffer<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 {
            self.copy = None; // end of input for the parser
        } else if let Some(copy) = self.copy.as_mut() {
            if copy.write_all(&buf[..n]).is_err() {
                self.copy = None;
            }
        }
        Ok(n)
    }
}

/// Read a tar stream to its end, returning the content of `backup_manifest`.
fn read_manifest_entry(reader: std::io::PipeReader) -> Option<String> {
    let mut archive = tar::Archive::new(reader);
    let mut found = None;
    if let Ok(entries) = archive.entries() {
        for entry in entries {
            let Ok(mut entry) = entry else { break };
            let is_manifest = entry
                .path()
                .map(|p| p.as_os_str() == "backup_manifest")
                .unwrap_or(false);
            if is_manifest {
                let mut text = String::new();
                if entry.read_to_string(&mut text).is_ok() {
                    found = Some(text);
                }
            }
        }
    }
    // Drain what follows the archive so the writer never blocks.
    let _ = std::io::copy(&mut archive.into_inner(), &mut std::io::sink());
    found
}

/// The start LSN, its timeline and the end LSN from a backup manifest's `WAL-Ranges`.
fn positions(manifest: &str) -> Option<(u64, u32, u64)> {
    let value: serde_json::Value = serde_json::from_str(manifest).ok()?;
    let ranges = value.get("WAL-Ranges")?.as_array()?;
    let first = ranges.first()?;
    let last = ranges.last()?;
    let timeline = u32::try_from(first.get("Timeline")?.as_u64()?).ok()?;
    let start = parse_lsn(first.get("Start-LSN")?.as_str()?).ok()?;
    let end = parse_lsn(last.get("End-LSN")?.as_str()?).ok()?;
    Some((start, timeline, end))
}

/// Which base backup to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseBackupKind {
    /// A whole copy of the cluster.
    Full,
    /// Only what changed since the newest base backup (PostgreSQL 17 and newer); falls
    /// back to a full one, or refuses, as `[backup] incremental_fallback` says.
    Incremental,
}

/// Take a physical base backup of the policy's source cluster.
pub async fn run_physical_backup(
    policy: &Policy,
    kind: BaseBackupKind,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<BackupManifest> {
    let session = SourceSession::open(policy).await?;
    session
        .run(
            BackupKind::Physical,
            cancel,
            |session, id, started_at| async move {
                physical_backup(policy, kind, session, &id, started_at, progress, cancel).await
            },
        )
        .await
}

/// Decide the parent of an incremental, or `None` for a full backup (with the reason
/// an incremental fell back, when one was asked for).
async fn parent_for(
    policy: &Policy,
    kind: BaseBackupKind,
    session: &SourceSession,
) -> Result<(Option<BackupManifest>, Option<String>)> {
    if kind == BaseBackupKind::Full {
        return Ok((None, None));
    }
    let info = &session.info;
    if info.major() < incremental::INCREMENTAL_MIN_MAJOR {
        return Err(Error::Invalid(format!(
            "incremental base backups need PostgreSQL {} or newer; the source is {} (take full base backups: drop --incremental, or [schedule] physical_incremental)",
            incremental::INCREMENTAL_MIN_MAJOR,
            info.version
        )));
    }
    let backups = session.repo.list_backups().await?;
    match incremental::choose_parent(&session.client, info, &backups).await? {
        ParentChoice::Parent(parent) => Ok((Some(*parent), None)),
        ParentChoice::None(reason) => match policy.backup.incremental_fallback {
            IncrementalFallback::Full => {
                tracing::warn!(policy = %policy.name, reason = %reason, "incremental base backup not possible; taking a full one ([backup] incremental_fallback = \"full\")");
                Ok((None, Some(reason)))
            }
            IncrementalFallback::Refuse => Err(Error::Invalid(format!(
                "incremental base backup refused: {reason} ([backup] incremental_fallback = \"refuse\"; set it to \"full\" to take a full backup instead)"
            ))),
        },
    }
}

/// The physical backup `id`, run under its lease: the body of [`run_physical_backup`].
#[allow(clippy::too_many_arguments)]
async fn physical_backup(
    policy: &Policy,
    kind: BaseBackupKind,
    session: SourceSession,
    id: &str,
    started_at: chrono::DateTime<Utc>,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<BackupManifest> {
    if session.info.version_num < 130000 {
        return Err(Error::Invalid(format!(
            "physical backups need PostgreSQL 13 or newer (the source is {}); use a logical backup",
            session.info.version
        )));
    }
    let (parent, fallback_reason) = parent_for(policy, kind, &session).await?;
    let SourceSession {
        repo,
        source,
        client,
        info,
        tools,
    } = session;
    let tablespaces: Vec<String> = client
        .query(
            "select spcname::text from pg_tablespace where spcname not in ('pg_default', 'pg_global') order by 1",
            &[],
        )
        .await
        .map_err(|e| Error::pg("cannot list tablespaces", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !tablespaces.is_empty() {
        return Err(Error::Invalid(format!(
            "the cluster has tablespaces outside the data directory ({}); physical backups of them are not supported yet — use a logical backup for this policy",
            tablespaces.join(", ")
        )));
    }
    if policy.archive.mode == ArchiveMode::Stream {
        refuse_without_stream(&client, &policy.stream_slot()).await?;
    } else {
        let archive_mode: String = client
            .query_one("select current_setting('archive_mode')", &[])
            .await
            .map_err(|e| Error::pg("cannot read archive_mode", e))?
            .get(0);
        if archive_mode == "off" {
            return Err(Error::Invalid(
                "archive_mode is off on the source: a physical backup is useless without its archived WAL; run `pgvault archive setup --policy … --apply` and restart the server".into(),
            ));
        }
        refuse_while_archiving_fails(&client).await?;
    }
    let segment_size = crate::postgres::wal_segment_size(&client).await?;

    // The parent's server manifest, for `--incremental`; the file lives until the end.
    let parent_manifest = match &parent {
        Some(parent) => {
            let bytes = crate::repository::chain::fetch_server_manifest(&repo, parent).await?;
            let mut file = tempfile::NamedTempFile::new()
                .map_err(|e| Error::io("cannot create a temporary file", e))?;
            file.write_all(&bytes)
                .and_then(|()| file.flush())
                .map_err(|e| Error::io("cannot write the parent's backup_manifest", e))?;
            Some(file)
        }
        None => None,
    };
    tracing::info!(policy = %policy.name, backup = %id, server = %info.version, parent = parent.as_ref().map(|p| p.id.as_str()).unwrap_or("none"), "physical backup started");
    let mut cmd = source.command(&tools.tool("pg_basebackup"));
    if let Some(file) = &parent_manifest {
        cmd.arg(format!("--incremental={}", file.path().display()));
    }
    cmd.args([
        "--pgdata=-",
        "--format=tar",
        "--wal-method=none",
        "--checkpoint=fast",
        "--verbose",
        "--no-password",
    ]);
    // The name lets the watch below find this backup's walsender on the server.
    let application = format!("pgvault_bb_{id}");
    cmd.env("PGAPPNAME", &application);
    let (reader, killer) = ChildReader::spawn("pg_basebackup", cmd)?;
    let (pipe_reader, pipe_writer) =
        std::io::pipe().map_err(|e| Error::io("cannot create a pipe", e))?;
    let sniffer = std::thread::spawn(move || read_manifest_entry(pipe_reader));
    let source = ManifestSniffer {
        inner: reader,
        copy: Some(pipe_writer),
    };
    let key = repo.object_key(id, BASE_FILE);
    // The upload stops on the caller's cancel, or when the server has waited too long
    // for its end segment to be archived (then the upload is aborted like a cancel).
    let uploaded = {
        let stop = cancel.child_token();
        let upload = pipeline::upload_stream(
            repo.storage(),
            &key,
            source,
            "pg_basebackup",
            &policy.recipients,
            encode_settings(policy),
            progress,
            &stop,
        );
        tokio::pin!(upload);
        tokio::select! {
            uploaded = &mut upload => uploaded,
            abandoned = watch_archive_wait(&client, &application, policy.backup.archive_wait) => {
                killer.kill();
                stop.cancel();
                let _ = upload.await;
                Err(abandoned)
            }
        }
    };
    let digest = match uploaded {
        Ok(d) => d,
        Err(e) => {
            discard_objects(&repo, id).await;
            return Err(e);
        }
    };
    let backup_manifest = tokio::task::spawn_blocking(move || sniffer.join().ok().flatten())
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    let Some((start_lsn, timeline, stop_lsn)) = positions(&backup_manifest) else {
        discard_objects(&repo, id).await;
        return Err(Error::Tool {
            tool: "pg_basebackup".into(),
            message: "the backup stream has no backup_manifest with WAL-Ranges (PostgreSQL 13 or newer is needed for physical backups)".into(),
        });
    };
    // Close the end segment now, so the archive holds everything the backup needs
    // without waiting for archive_timeout. Needs the right to call pg_switch_wal().
    let consistent_at: chrono::DateTime<Utc> = match client
        .query_one("select now() from (select pg_switch_wal()) s", &[])
        .await
    {
        Ok(row) => row.get(0),
        Err(e) => {
            tracing::warn!(error = %e, "cannot switch WAL after the backup; its end segment is archived when it fills or at archive_timeout");
            Utc::now()
        }
    };

    // With asynchronous archiving the server's wait ended when the spool took the end
    // segment, and with streaming the server does not wait at all: the backup is listed
    // only once its WAL is really in the repository.
    if matches!(
        policy.archive.mode,
        ArchiveMode::Async | ArchiveMode::Stream
    ) {
        let stored = wait_until_stored(
            &repo,
            policy,
            timeline,
            (start_lsn, stop_lsn),
            segment_size,
            cancel,
        )
        .await;
        if let Err(e) = stored {
            discard_objects(&repo, id).await;
            return Err(e);
        }
    }

    // Keep the server's manifest for the next incremental (PostgreSQL 17 and newer).
    let server_manifest = if info.major() >= incremental::INCREMENTAL_MIN_MAJOR {
        let stored = async {
            let redacted = incremental::redact_server_manifest(&backup_manifest)?;
            let key = repo.object_key(id, crate::repository::chain::SERVER_MANIFEST_FILE);
            let record = crate::repository::chain::plain_object(key.clone(), redacted.as_bytes());
            repo.storage()
                .put(&key, bytes::Bytes::from(redacted.into_bytes()))
                .await?;
            Ok::<_, Error>(record)
        }
        .await;
        match stored {
            Ok(record) => Some(record),
            Err(e) => {
                discard_objects(&repo, id).await;
                return Err(e);
            }
        }
    } else {
        None
    };
    drop(parent_manifest);

    let mut manifest = build_manifest(
        policy,
        &policy.recipients,
        id,
        started_at,
        consistent_at,
        &info,
        &tools,
        vec![(object::BASE, key, digest)],
    );
    manifest.format_version = repository::PHYSICAL_FORMAT_VERSION;
    manifest.kind = BackupKind::Physical;
    manifest.database = "(all databases)".into();
    manifest.database_encoding = String::new();
    manifest.physical = Some(PhysicalInfo {
        start_lsn: wal::format_lsn(start_lsn),
        stop_lsn: wal::format_lsn(stop_lsn),
        timeline,
        wal_segment_size: segment_size,
        start_wal: wal::segment_name(timeline, start_lsn / segment_size, segment_size),
        stop_wal: wal::segment_name(timeline, stop_lsn / segment_size, segment_size),
        server_manifest,
        incremental: None,
        fallback_reason,
    });
    if let Some(parent) = &parent {
        let own = manifest.stored_size();
        let link = match parent.chain_link() {
            Some(up) => ChainLink {
                parent: parent.id.clone(),
                root: up.root.clone(),
                depth: up.depth + 1,
                chain_stored_bytes: up.chain_stored_bytes + own,
            },
            None => ChainLink {
                parent: parent.id.clone(),
                root: parent.id.clone(),
                depth: 1,
                chain_stored_bytes: parent.stored_size() + own,
            },
        };
        manifest.format_version = repository::INCREMENTAL_FORMAT_VERSION;
        if let Some(p) = manifest.physical.as_mut() {
            p.incremental = Some(link);
        }
    }
    repo.write_manifest(&manifest).await?;
    tracing::info!(policy = %policy.name, backup = %id, start = %wal::format_lsn(start_lsn), stop = %wal::format_lsn(stop_lsn), parent = parent.as_ref().map(|p| p.id.as_str()).unwrap_or("none"), "physical backup complete");
    Ok(manifest)
}

/// Wait until every WAL segment from `start` to `stop` is in the repository, for
/// asynchronous archiving, where PostgreSQL's "archived" means "in the spool". Fails
/// when one was dropped (a full spool in drop mode) or after `[backup] archive_wait`.
async fn wait_until_stored(
    repo: &crate::repository::Repository,
    policy: &Policy,
    timeline: u32,
    (start, stop): (u64, u64),
    segment_size: u64,
    cancel: &CancellationToken,
) -> Result<()> {
    let mut pending: Vec<String> = (start / segment_size..=stop / segment_size)
        .map(|segno| wal::segment_name(timeline, segno, segment_size))
        .collect();
    let started = tokio::time::Instant::now();
    let spool = policy
        .archive
        .spool_dir
        .as_deref()
        .map(crate::physical::wal::spool::Spool::existing);
    loop {
        // The spool answers for what it still holds; only files it no longer holds are
        // looked up in the repository (one LIST each, once: stored files stay stored).
        let queued: std::collections::HashSet<String> = spool
            .as_ref()
            .and_then(|s| s.queued().ok())
            .map(|q| q.into_iter().map(|q| q.name).collect())
            .unwrap_or_default();
        let dropped: Vec<String> = spool
            .as_ref()
            .and_then(|s| s.dropped().ok())
            .unwrap_or_default();
        let mut still = Vec::new();
        for name in pending {
            let stored = !queued.contains(&name)
                && !dropped.contains(&name)
                && unless_cancelled(cancel, wal::archive::is_archived(repo, &name)).await?;
            if !stored {
                still.push(name);
            }
        }
        pending = still;
        let Some(first) = pending.first().cloned() else {
            return Ok(());
        };
        let timed_out = started.elapsed() >= policy.backup.archive_wait;
        let dropped_here = dropped.iter().any(|n| pending.contains(n));
        // Gap records are read only when a drop is suspected: no marker left locally
        // (recorded already) and nothing queued, or at the end of the wait.
        let suspect = dropped_here || timed_out || !pending.iter().any(|n| queued.contains(n));
        let recorded = if suspect {
            unless_cancelled(cancel, wal::gaps::list_gaps(repo))
                .await?
                .into_iter()
                .find(|g| pending.iter().any(|n| g.covers(n)))
        } else {
            None
        };
        if dropped_here || recorded.is_some() {
            return Err(Error::Invalid(format!(
                "base backup abandoned: WAL it needs was dropped by the archive spool (queue_full = \"drop\"){}; it could never be restored",
                recorded.map(|g| format!(": {g}")).unwrap_or_default()
            )));
        }
        if timed_out {
            let last_error = spool
                .as_ref()
                .and_then(|s| s.status().last_error)
                .map(|e| format!("; the pusher's last error: {e}"))
                .unwrap_or_default();
            return Err(Error::Invalid(format!(
                "base backup abandoned: its WAL segment {first} was not stored within {} ([backup] archive_wait){last_error}",
                crate::units::human_duration(policy.backup.archive_wait)
            )));
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(Error::Cancelled),
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
        }
    }
}

/// With streaming, the backup's WAL reaches the repository only through the slot: refuse
/// to start when no receiver streams from it, instead of waiting `archive_wait` for WAL
/// that nobody stores.
async fn refuse_without_stream(client: &tokio_postgres::Client, slot: &str) -> Result<()> {
    let active: Option<bool> = client
        .query_opt(
            "select active from pg_replication_slots where slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| Error::pg("cannot read pg_replication_slots", e))?
        .map(|r| r.get(0));
    match active {
        Some(true) => Ok(()),
        Some(false) => Err(Error::Invalid(format!(
            "no receiver streams from replication slot {slot}: the base backup's WAL would never be stored; start the agent, which runs the stream ([archive] mode = \"stream\"), and see `pgvault check`"
        ))),
        None => Err(Error::Invalid(format!(
            "replication slot {slot} does not exist on the source: the agent creates it when it starts streaming ([archive] mode = \"stream\"); start the agent first"
        ))),
    }
}

/// How long archiving may have been failing before a base backup refuses to start.
const RECENT_ARCHIVE_FAILURE: &str = "10 minutes";

/// Refuse to start when the archiver's last attempt failed recently and nothing was
/// archived since: the backup would end waiting for its end segment to be archived.
async fn refuse_while_archiving_fails(client: &tokio_postgres::Client) -> Result<()> {
    let row = client
        .query_one(
            &format!(
                "select coalesce(last_failed_wal, ''), \
                        coalesce(to_char(last_failed_time at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS'), ''), \
                        coalesce(to_char(last_archived_time at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS'), 'never'), \
                        coalesce(last_failed_time > coalesce(last_archived_time, '-infinity') \
                                 and last_failed_time > now() - interval '{RECENT_ARCHIVE_FAILURE}', false) \
                 from pg_stat_archiver"
            ),
            &[],
        )
        .await
        .map_err(|e| Error::pg("cannot read pg_stat_archiver", e))?;
    let failing: bool = row.get(3);
    if !failing {
        return Ok(());
    }
    let (segment, failed_at, last_success): (String, String, String) =
        (row.get(0), row.get(1), row.get(2));
    Err(Error::Invalid(format!(
        "archiving is failing on the source (segment {segment} failed at {failed_at} UTC, last success {last_success}): a base backup would wait for its end segment to be archived; fix archive_command (see `pgvault check`) and retry"
    )))
}

/// Watch the server side of the running base backup (its walsender, named
/// `application`). When it waits for WAL archiving (`BackupWaitWalArchive`) longer than
/// `limit`, end it with `pg_terminate_backend` (killing the client alone leaves it
/// waiting) and return why. Never returns while the backup makes progress.
async fn watch_archive_wait(
    client: &tokio_postgres::Client,
    application: &str,
    limit: std::time::Duration,
) -> Error {
    let mut waiting_since: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        tick.tick().await;
        let row = client
            .query_opt(
                "select pid, coalesce(wait_event, '') from pg_stat_activity \
                 where application_name = $1 and backend_type = 'walsender'",
                &[&application],
            )
            .await;
        let (pid, event): (i32, String) = match row {
            Ok(Some(row)) => (row.get(0), row.get(1)),
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "cannot watch the base backup's walsender");
                continue;
            }
        };
        if event != "BackupWaitWalArchive" {
            waiting_since = None;
            continue;
        }
        let since = *waiting_since.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() < limit {
            continue;
        }
        let terminated = client
            .query_one("select pg_terminate_backend($1)", &[&pid])
            .await
            .map(|row| row.get::<_, bool>(0))
            .unwrap_or(false);
        let still = if terminated {
            ""
        } else {
            " (pgvault may not end its walsender, which keeps waiting until archiving works again: grant pg_signal_backend to the backup role)"
        };
        return Error::Invalid(format!(
            "base backup abandoned: the server waited {} for its end segment to be archived; archiving is failing (see `pgvault check`), and the partial backup was removed{still}",
            crate::units::human_duration(limit)
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_positions_are_read_from_the_backup_manifest() {
        let manifest = r#"{ "PostgreSQL-Backup-Manifest-Version": 1,
            "Files": [],
            "WAL-Ranges": [ { "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" } ],
            "Manifest-Checksum": "x" }"#;
        assert_eq!(positions(manifest), Some((0x2000028, 1, 0x2000100)));
        assert_eq!(positions("{}"), None);
    }

    #[test]
    fn the_sniffer_passes_bytes_through_and_finds_the_manifest() {
        let mut tar_bytes = Vec::new();
        {
            let mut builder = tar::Builder::new(&mut tar_bytes);
            for (name, body) in [("PG_VERSION", "15\n"), ("backup_manifest", "{\"x\": 1}")] {
                let mut header = tar::Header::new_gnu();
                header.set_size(body.len() as u64);
                header.set_mode(0o600);
                header.set_cksum();
                builder
                    .append_data(&mut header, name, body.as_bytes())
                    .unwrap();
            }
            builder.finish().unwrap();
        }
        let (r, w) = std::io::pipe().unwrap();
        let parser = std::thread::spawn(move || read_manifest_entry(r));
        let mut sniffer = ManifestSniffer {
            inner: std::io::Cursor::new(tar_bytes.clone()),
            copy: Some(w),
        };
        let mut out = Vec::new();
        sniffer.read_to_end(&mut out).unwrap();
        drop(sniffer);
        assert_eq!(out, tar_bytes);
        assert_eq!(parser.join().unwrap().as_deref(), Some("{\"x\": 1}"));
    }
}
