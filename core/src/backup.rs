//! Logical backups: `pg_dump` of one database, its cluster globals, and the row counts
//! of every table taken in the same snapshot, streamed into the repository.
//!
//! Order of work, so that a failure at any point leaves no listed backup:
//! 1. open a `REPEATABLE READ` transaction on the source and export its snapshot;
//! 2. store the globals (`pg_dumpall --globals-only`, without password hashes unless asked);
//! 3. stream `pg_dump -Fc -Z0 --snapshot=…` through the pipeline while counting every
//!    table's rows in the exported snapshot on the first connection;
//! 4. store the verification sidecar (row counts, encrypted);
//! 5. write the manifest: the backup now exists.

use std::sync::Arc;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::keys::Recipients;
use crate::lease::RunLease;
use crate::pipeline::{self, EncodeSettings, Progress};
use crate::policy::Policy;
use crate::postgres::{self, ConnTarget, TableCount};
use crate::repository::{
    self, object, BackupKind, BackupManifest, CompressionInfo, EncryptionInfo, Repository,
    StoredObject, FORMAT_VERSION,
};
use crate::server::{self, ChildReader, PgTools};

/// The encrypted verification sidecar: what the data looked like at the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationSidecar {
    /// Sidecar format version (same numbering as manifests).
    pub format_version: u32,
    /// The database counted.
    pub database: String,
    /// Exact row counts of every user table, taken in the dump's snapshot.
    pub tables: Vec<TableCount>,
}

/// File names of a logical backup's objects.
pub(crate) const DUMP_FILE: &str = "dump.pgdump.zst.age";
pub(crate) const GLOBALS_FILE: &str = "globals.sql.zst.age";
pub(crate) const VERIFICATION_FILE: &str = "verification.json.zst.age";

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
        let id = repository::new_backup_id(started_at);
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
        let tools = PgTools::discover(policy.source.bin_dir.as_deref(), info.major())?;
        Ok(SourceSession {
            repo,
            source,
            client,
            info,
            tools,
        })
    }
}

/// Take a logical backup of the policy's source database.
///
/// `progress` is updated while the dump streams; `cancel` aborts the backup cleanly
/// (the upload is aborted and no manifest is written).
pub async fn run_logical_backup(
    policy: &Policy,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<BackupManifest> {
    let session = SourceSession::open(policy).await?;
    session
        .run(
            BackupKind::Logical,
            cancel,
            |session, id, started_at| async move {
                logical_backup(policy, session, &id, started_at, progress, cancel).await
            },
        )
        .await
}

/// The logical backup `id`, run under its lease: the body of [`run_logical_backup`].
async fn logical_backup(
    policy: &Policy,
    session: SourceSession,
    id: &str,
    started_at: chrono::DateTime<Utc>,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<BackupManifest> {
    let SourceSession {
        repo,
        source,
        client,
        info,
        tools,
    } = session;
    tracing::info!(policy = %policy.name, backup = %id, database = %info.database, server = %info.version, "backup started");

    client
        .batch_execute("begin isolation level repeatable read, read only")
        .await
        .map_err(|e| Error::pg("cannot open the snapshot transaction", e))?;
    let row = client
        .query_one("select pg_export_snapshot(), now()", &[])
        .await
        .map_err(|e| Error::pg("cannot export a snapshot (pg_export_snapshot)", e))?;
    let snapshot: String = row.get(0);
    let consistent_at: chrono::DateTime<Utc> = row.get(1);

    let settings = encode_settings(policy);
    let recipients = &policy.recipients;

    // Everything stored before the manifest is removed again if a later step fails, so a
    // failed backup leaves no objects behind (the manifest is never written in that case).
    let stored = async {
        // Globals first: small, and a failure here costs nothing.
        let globals_sql =
            dump_globals(&tools, &source, policy.backup.include_role_passwords).await?;
        let globals_key = repo.object_key(id, GLOBALS_FILE);
        let globals = pipeline::upload_bytes(
            repo.storage(),
            &globals_key,
            globals_sql,
            recipients,
            settings,
            cancel,
        )
        .await?;

        // The dump and the row counts, concurrently, in the same snapshot.
        let mut cmd = source.command(&tools.tool("pg_dump"));
        cmd.args(["--format=custom", "--compress=0", "--no-password"])
            .arg(format!("--snapshot={snapshot}"));
        let (reader, killer) = ChildReader::spawn("pg_dump", cmd)?;
        let dump_key = repo.object_key(id, DUMP_FILE);
        let dump_upload = pipeline::upload_stream(
            repo.storage(),
            &dump_key,
            reader,
            "pg_dump",
            recipients,
            settings,
            progress,
            cancel,
        );
        let counting = postgres::table_row_counts(&client);
        let (dump, counts) = tokio::join!(dump_upload, counting);
        if dump.is_err() {
            killer.kill();
        }
        let (dump, counts) = (dump?, counts?);
        client
            .batch_execute("commit")
            .await
            .map_err(|e| Error::pg("cannot close the snapshot transaction", e))?;

        let sidecar = VerificationSidecar {
            format_version: FORMAT_VERSION,
            database: info.database.clone(),
            tables: counts,
        };
        let sidecar_json = serde_json::to_vec(&sidecar)
            .map_err(|e| Error::Invalid(format!("cannot encode the verification sidecar: {e}")))?;
        let verification_key = repo.object_key(id, VERIFICATION_FILE);
        let verification = pipeline::upload_bytes(
            repo.storage(),
            &verification_key,
            sidecar_json,
            recipients,
            settings,
            cancel,
        )
        .await?;
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        Ok((
            [
                (object::DUMP, dump_key, dump),
                (object::GLOBALS, globals_key, globals),
                (object::VERIFICATION, verification_key, verification),
            ],
            sidecar.tables.len(),
        ))
    }
    .await;
    let (objects, table_count) = match stored {
        Ok(done) => done,
        Err(e) => {
            discard_objects(&repo, id).await;
            return Err(e);
        }
    };

    let manifest = build_manifest(
        policy,
        recipients,
        id,
        started_at,
        consistent_at,
        &info,
        &tools,
        objects.into(),
    );
    repo.write_manifest(&manifest).await?;
    tracing::info!(
        policy = %policy.name,
        backup = %id,
        raw_bytes = manifest.raw_size(),
        stored_bytes = manifest.stored_size(),
        tables = table_count,
        "backup complete"
    );
    Ok(manifest)
}

/// Run `backup` (which stores backup `id` of `kind`) under a lease: the lease is written
/// first, a crashed earlier run's leftovers are removed (they are someone else's only
/// while their lease lives), and the lease is released however the backup ends.
///
/// `cancel` reaches the lease write and the clean-up, so a store that stalls there cannot
/// hold a cancelled run; the backup itself honours `cancel` on its own.
async fn under_lease<T>(
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
        _ = crate::prune::remove_crashed_runs(repo) => {}
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
pub(crate) async fn discard_objects(repo: &Repository, id: &str) {
    let prefix = repo.object_key(id, "");
    match repo.storage().list(&prefix).await {
        Ok(objects) => {
            for o in objects {
                if let Err(e) = repo.storage().delete(&o.key).await {
                    tracing::warn!(key = %o.key, error = %e, "could not remove an object of the failed backup");
                }
            }
        }
        Err(e) => {
            tracing::warn!(backup = id, error = %e, "could not list the failed backup's objects")
        }
    }
}

/// `pg_dumpall --globals-only`, without role passwords unless asked.
async fn dump_globals(
    tools: &PgTools,
    source: &ConnTarget,
    include_passwords: bool,
) -> Result<Vec<u8>> {
    let mut cmd = source.command(&tools.tool("pg_dumpall"));
    cmd.args(["--globals-only", "--no-password"]);
    if !include_passwords {
        cmd.arg("--no-role-passwords");
    }
    tokio::task::spawn_blocking(move || server::run_tool("pg_dumpall", cmd))
        .await
        .map_err(|e| Error::Invalid(format!("pg_dumpall worker failed: {e}")))?
}
