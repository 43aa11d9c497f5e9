//! What every backup does to add itself to the repository, whatever its kind: open
//! the source and the repository (`SourceSession`), run under a lease so a crash is
//! told apart from a running backup ([`super::lease`]), write the manifest last
//! (`build_manifest`), and remove the objects of a backup that failed
//! (`discard_objects`).

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::lease::RunLease;
use super::{
    new_backup_id, BackupKind, BackupManifest, CompressionInfo, EncryptionInfo, Repository,
    StoredObject, FORMAT_VERSION,
};
use crate::error::{Error, Result};
use crate::keys::Recipients;
use crate::pipeline::{self, EncodeSettings};
use crate::policy::Policy;
use crate::postgres::{self, ConnTarget};
use crate::server::PgTools;

/// Encode settings of a policy.
pub fn encode_settings(policy: &Policy) -> EncodeSettings {
    EncodeSettings {
        level: policy.compression.level,
        threads: policy.compression.threads,
        part_size: policy.repository.part_size,
        parts_in_flight: policy.repository.parts_in_flight,
    }
}

/// What every backup starts from: the policy's repository, a connection to its source,
/// the server's identity, and client tools matching its version.
pub(crate) struct SourceSession {
    pub(crate) repo: Repository,
    pub(crate) source: ConnTarget,
    pub(crate) client: tokio_postgres::Client,
    pub(crate) info: postgres::ServerInfo,
    pub(crate) tools: PgTools,
}

impl SourceSession {
    /// Run backup `body` of `kind` as a new backup id under its run lease (see
    /// [`under_lease`]); `body` gets the session, the id and the start time.
    pub(crate) async fn run<F, Fut>(
        self,
        kind: BackupKind,
        cancel: &CancellationToken,
        body: F,
    ) -> Result<BackupManifest>
    where
        F: FnOnce(SourceSession, String, chrono::DateTime<Utc>) -> Fut,
        Fut: std::future::Future<Output = Result<BackupManifest>>,
    {
        let started_at = Utc::now();
        let id = new_backup_id(started_at);
        let repo = self.repo.clone();
        let backup = body(self, id.clone(), started_at);
        under_lease(&repo, &id, kind, cancel, backup).await
    }

    /// Open the repository, connect to the source and find its tools.
    pub(crate) async fn open(policy: &Policy) -> Result<SourceSession> {
        let repo = Repository::open(policy).await?;
        let source = ConnTarget::parse(&policy.source.url)?;
        let client = source.connect().await?;
        let info = postgres::server_info(&client).await?;
        let tools = PgTools::discover(policy.source.bin_dir.as_deref(), info.major()).await?;
        Ok(SourceSession {
            repo,
            source,
            client,
            info,
            tools,
        })
    }
}

/// Run `backup` (which stores backup `id` of `kind`) under a lease: the lease is written
/// first, a crashed earlier run's leftovers are removed (they are someone else's only
/// while their lease lives), and the lease is released however the backup ends.
///
/// `cancel` reaches the lease write and the clean-up, so a store that stalls there cannot
/// hold a cancelled run; the backup itself honours `cancel` on its own.
pub(crate) async fn under_lease<T>(
    repo: &Repository,
    id: &str,
    kind: BackupKind,
    cancel: &CancellationToken,
    backup: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let lease = tokio::select! {
        biased;
        _ = cancel.cancelled() => return Err(Error::Cancelled),
        lease = RunLease::acquire(repo, id, kind) => lease?,
    };
    tokio::select! {
        biased;
        _ = cancel.cancelled() => {}
        _ = super::leftovers::remove_crashed_runs(repo) => {}
    }
    let result = backup.await;
    lease.release().await;
    result
}

/// The manifest of a backup whose objects are stored (logical by default; physical
/// backups adjust kind, database and WAL positions).
#[allow(clippy::too_many_arguments)]
pub(crate) fn build_manifest(
    policy: &Policy,
    recipients: &Recipients,
    id: &str,
    started_at: chrono::DateTime<Utc>,
    consistent_at: chrono::DateTime<Utc>,
    info: &postgres::ServerInfo,
    tools: &PgTools,
    objects: Vec<(&str, String, pipeline::ObjectDigest)>,
) -> BackupManifest {
    BackupManifest {
        format_version: FORMAT_VERSION,
        id: id.to_string(),
        policy: policy.name.clone(),
        kind: BackupKind::Logical,
        started_at,
        consistent_at,
        finished_at: Utc::now(),
        database: info.database.clone(),
        database_encoding: info.encoding.clone(),
        server_version: info.version.clone(),
        server_version_num: info.version_num,
        system_identifier: info.system_identifier.clone(),
        tool_version: crate::TOOL_VERSION.to_string(),
        dump_tool_version: tools.version_line.clone(),
        compression: CompressionInfo {
            algorithm: "zstd".into(),
            level: policy.compression.level,
        },
        encryption: EncryptionInfo {
            algorithm: "age".into(),
            recipients: recipients.fingerprints(),
        },
        objects: objects
            .into_iter()
            .map(|(role, key, digest)| (role.to_string(), StoredObject { key, digest }))
            .collect(),
        physical: None,
    }
}

/// Best-effort removal of a failed backup's objects (its manifest was never written).
/// Locked objects, or credentials that may not delete, leave them to `pgvault prune`.
pub(crate) async fn discard_objects(repo: &Repository, id: &str) {
    let prefix = repo.object_key(id, "");
    match repo.storage().list(&prefix).await {
        Ok(objects) => {
            for o in objects {
                match repo.storage().delete(&o.key).await {
                    Ok(()) => {}
                    // Locked (`object_lock`) or no delete permission: a leftover for
                    // `pgvault prune`, once its lock ends.
                    Err(e @ (Error::ObjectLocked { .. } | Error::AccessDenied { .. })) => {
                        tracing::info!(backup = id, error = %e, "the failed backup's objects stay until `pgvault prune` may remove them");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(key = %o.key, error = %e, "could not remove an object of the failed backup")
                    }
                }
            }
        }
        Err(e) => {
            tracing::warn!(backup = id, error = %e, "could not list the failed backup's objects")
        }
    }
}
