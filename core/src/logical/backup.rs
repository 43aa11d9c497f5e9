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
use crate::pipeline::{self, Progress};
use crate::policy::Policy;
use crate::postgres::{self, ConnTarget, TableCount};
use crate::repository::new_backup::{
    build_manifest, discard_objects, encode_settings, SourceSession,
};
use crate::repository::{object, BackupKind, BackupManifest, FORMAT_VERSION};
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
