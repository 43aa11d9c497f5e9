//! Verified restores of logical backups, planned first.
//!
//! A restore never writes into the target database directly. It restores into a scratch
//! database on the target server (`<target>_pgvault_<suffix>`), and only when the stream
//! verified (every digest and age authentication passed, `pg_restore` reported no error)
//! and every table's row count equals the count in the backup's snapshot is the scratch
//! database renamed into place. Any failure drops the scratch database, so the target
//! is exactly as it was. Globals (roles) are applied before the dump, because the dump's
//! objects are owned by them; roles that already exist are left untouched.
//!
//! [`plan`] computes what would happen and changes nothing (`--dry-run` prints it);
//! [`execute`] carries a plan out.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;

use crate::error::{Error, Result};
use crate::keys::Identities;
use crate::logical::backup::VerificationSidecar;
use crate::logical::globals::{self, GlobalStatement};
use crate::pipeline::{self, Decode, Progress};
use crate::postgres::{self, quote_ident, quote_literal, ConnTarget, TableCount};
use crate::repository::{object, BackupKind, BackupManifest, Repository};
use crate::server::{self, PgTools};
use crate::units::{human_age, human_bytes};

/// What the restore will do with the target database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetAction {
    /// The database does not exist: it will be created.
    Create,
    /// It exists without user tables: it will be replaced.
    ReplaceEmpty,
    /// It exists with user tables and `--force` was given: it will be replaced.
    Replace {
        /// User tables it has now.
        tables: i64,
    },
    /// It exists with user tables and `--force` was not given: refused.
    Refuse {
        /// User tables it has now.
        tables: i64,
    },
}

/// Options of a restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Replace a target that has user tables.
    pub force: bool,
    /// `pg_restore -j`; above 1 the decrypted dump is spooled to a temp file first.
    pub jobs: u32,
    /// Directory for the spool file (default: the system temp directory).
    pub spool_dir: Option<PathBuf>,
    /// Spool the verified plaintext to a temp file before restoring even with one job,
    /// so nothing reaches the target before the whole stream verified.
    pub spool: bool,
    /// Directory of PostgreSQL client tools, when not discovered automatically.
    pub bin_dir: Option<PathBuf>,
    /// Concurrent ranged GETs while downloading.
    pub download_parallelism: usize,
}

/// A restore, fully decided but not started.
pub struct RestorePlan {
    /// The backup to restore.
    pub manifest: BackupManifest,
    /// The target database.
    pub target: ConnTarget,
    /// Its name.
    pub target_database: String,
    /// Server version of the target.
    pub target_server_version: String,
    /// What happens to the target database.
    pub action: TargetAction,
    /// Roles in the backup that the target lacks and will be created.
    pub roles_to_create: Vec<String>,
    /// Roles in the backup that exist on the target and will be left as they are.
    pub roles_existing: Vec<String>,
    /// Tablespace statements that will be skipped.
    pub tablespaces_skipped: usize,
    /// The scratch database restored into before the swap.
    pub scratch_database: String,
    /// Scratch databases of earlier restores into the same target that are still on
    /// the server (a restore killed with `kill -9`, or one running now), with the
    /// sessions each has. The restore refuses to run while there are any.
    pub leftovers: Vec<(String, i64)>,
    /// pg_restore jobs.
    pub jobs: u32,
    tools: PgTools,
    statements: Vec<GlobalStatement>,
    sidecar: VerificationSidecar,
    options: RestoreOptions,
}

impl RestorePlan {
    /// Whether this plan must not run: the target has user tables and `--force` was not
    /// given, or an interrupted restore left scratch databases beside it. Every way of
    /// carrying a plan out (a restore, a drill) checks it first, before anything is
    /// downloaded or changed.
    pub fn refusal(&self) -> Result<()> {
        if let TargetAction::Refuse { tables } = self.action {
            return Err(Error::TargetNotEmpty {
                database: self.target_database.clone(),
                tables,
            });
        }
        if !self.leftovers.is_empty() {
            return Err(leftovers_error(&self.target_database, &self.leftovers));
        }
        Ok(())
    }

    /// Whether the dump is downloaded and verified into a temp file before pg_restore
    /// starts (parallel restores and drills), rather than streamed into it.
    pub fn spools(&self) -> bool {
        self.jobs > 1 || self.options.spool
    }

    /// The PostgreSQL client tools the restore uses.
    pub fn tools(&self) -> &PgTools {
        &self.tools
    }

    /// Every table the backup recorded, with its row count at the dump's snapshot.
    pub fn recorded_tables(&self) -> &[TableCount] {
        &self.sidecar.tables
    }
}

/// One table's check after a restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCheck {
    /// `schema.table`.
    pub table: String,
    /// Rows in the backup's snapshot (None: the table is not in the backup).
    pub expected: Option<i64>,
    /// Rows after the restore (None: the table is missing).
    pub actual: Option<i64>,
}

impl TableCheck {
    /// Whether the counts agree.
    pub fn passed(&self) -> bool {
        self.expected.is_some() && self.expected == self.actual
    }
}

/// The outcome of an executed restore.
pub struct RestoreReport {
    /// The backup restored.
    pub backup_id: String,
    /// The target database.
    pub target_database: String,
    /// Per-table row-count checks against the verification sidecar.
    pub tables: Vec<TableCheck>,
    /// Whether the restored database was swapped into place (only when all checks passed).
    pub swapped_in: bool,
    /// Warnings from applying globals.
    pub warnings: Vec<String>,
    /// Seconds spent downloading, decrypting and restoring.
    pub restore_seconds: f64,
    /// Seconds spent on post-restore checks.
    pub check_seconds: f64,
}

impl RestoreReport {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.swapped_in && self.tables.iter().all(TableCheck::passed)
    }
}

/// Decide what a restore of `selector` (an id or `latest`) into `target_url` would do.
/// Reads the repository and the target server; writes nothing.
pub async fn plan(
    repo: &Repository,
    selector: &str,
    target_url: &str,
    identities: &Identities,
    options: RestoreOptions,
) -> Result<RestorePlan> {
    let target = ConnTarget::parse(target_url)?;
    plan_into(repo, selector, target, identities, options).await
}

/// [`plan`] with an already parsed target (drills build theirs).
pub async fn plan_into(
    repo: &Repository,
    selector: &str,
    target: ConnTarget,
    identities: &Identities,
    options: RestoreOptions,
) -> Result<RestorePlan> {
    let manifest = repo.resolve(selector, Some(BackupKind::Logical)).await?;
    if !identities.matches_any(&manifest.encryption.recipients) {
        return Err(Error::WrongKey {
            identity_file: identities.path().to_path_buf(),
            recipients: manifest.encryption.recipients.clone(),
        });
    }
    let target_database = target.database();
    if target_database.is_empty() {
        return Err(Error::Invalid(format!(
            "--target {target} must name the database to restore into, e.g. postgres://host:5432/app_restored"
        )));
    }
    if target_database.len() > 40 {
        return Err(Error::Invalid(format!(
            "target database name {target_database:?} is longer than 40 bytes; pgvault needs room for its scratch-name suffix"
        )));
    }
    let admin = target.with_database("postgres").connect().await?;
    let server = postgres::server_info(&admin).await?;
    let source_major = (manifest.server_version_num / 10000) as u32;
    let tools =
        PgTools::discover(options.bin_dir.as_deref(), server.major().max(source_major)).await?;

    let exists = admin
        .query_opt(
            "select 1 from pg_database where datname = $1",
            &[&target_database],
        )
        .await
        .map_err(|e| Error::pg("cannot look up the target database", e))?
        .is_some();
    let action = if exists {
        let client = target.connect().await?;
        let tables: i64 = client
            .query_one(
                "select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace \
                 where c.relkind in ('r', 'p') and n.nspname not in ('pg_catalog', 'information_schema') \
                 and n.nspname not like 'pg\\_toast%'",
                &[],
            )
            .await
            .map_err(|e| Error::pg(format!("cannot count tables in {target_database}"), e))?
            .get(0);
        match (tables, options.force) {
            (0, _) => TargetAction::ReplaceEmpty,
            (n, true) => TargetAction::Replace { tables: n },
            (n, false) => TargetAction::Refuse { tables: n },
        }
    } else {
        TargetAction::Create
    };

    let recipients = &manifest.encryption.recipients;
    let globals_obj = manifest.object(object::GLOBALS)?;
    let globals_sql = pipeline::download_bytes(
        repo.storage(),
        &globals_obj.key,
        &globals_obj.digest,
        identities,
        recipients,
    )
    .await?;
    let statements = globals::parse(&String::from_utf8_lossy(&globals_sql));
    let existing = existing_roles(&admin).await?;
    let (roles_existing, roles_to_create): (Vec<String>, Vec<String>) = globals::roles(&statements)
        .into_iter()
        .partition(|r| existing.contains(r));
    let tablespaces_skipped = statements
        .iter()
        .filter(|s| matches!(s, GlobalStatement::Tablespace { .. }))
        .count();

    let verification = manifest.object(object::VERIFICATION)?;
    let sidecar_bytes = pipeline::download_bytes(
        repo.storage(),
        &verification.key,
        &verification.digest,
        identities,
        recipients,
    )
    .await?;
    let sidecar: VerificationSidecar =
        serde_json::from_slice(&sidecar_bytes).map_err(|e| Error::Integrity {
            object: verification.key.clone(),
            message: format!("the verification sidecar is not valid JSON: {e}"),
        })?;

    let leftovers = scratch_leftovers(&admin, &target_database).await?;
    let suffix = manifest
        .id
        .rsplit('-')
        .next()
        .unwrap_or("restore")
        .to_string();
    Ok(RestorePlan {
        leftovers,
        scratch_database: format!("{target_database}_pgvault_{suffix}"),
        target_server_version: server.version,
        jobs: options.jobs.max(1),
        manifest,
        target,
        target_database,
        action,
        roles_to_create,
        roles_existing,
        tablespaces_skipped,
        tools,
        statements,
        sidecar,
        options,
    })
}

/// Databases named `<target>_pgvault_…` on the server (scratch databases of restores
/// into `target`, and their `_old` copies), with how many sessions each has.
pub async fn scratch_leftovers(
    admin: &tokio_postgres::Client,
    target: &str,
) -> Result<Vec<(String, i64)>> {
    let rows = admin
        .query(
            "select d.datname::text, (select count(*) from pg_stat_activity a where a.datname = d.datname) \
             from pg_database d where left(d.datname, length($1) + 9) = $1 || '_pgvault_' order by 1",
            &[&target],
        )
        .await
        .map_err(|e| Error::pg("cannot look for leftover scratch databases", e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// A scratch database an interrupted restore or drill left on a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftoverDatabase {
    /// `host:port` of the server.
    pub server: String,
    /// The database.
    pub name: String,
    /// Sessions connected to it now (more than none: maybe still in use).
    pub sessions: i64,
}

/// Scratch databases of restores (`…_pgvault_<8 hex>[_old]`) and drills
/// (`pgvault_drill_<8 hex>`) on the server of `url`, for `pgvault check`.
pub async fn leftover_databases(url: &str) -> Result<Vec<LeftoverDatabase>> {
    let target = ConnTarget::parse(url)?;
    let admin = target.connect().await?;
    let rows = admin
        .query(
            "select d.datname::text, (select count(*) from pg_stat_activity a where a.datname = d.datname) \
             from pg_database d where d.datname ~ '_pgvault_[0-9a-f]{8}(_old)?$' \
             or d.datname ~ '^pgvault_drill_[0-9a-f]{8}$' order by 1",
            &[],
        )
        .await
        .map_err(|e| Error::pg("cannot look for leftover scratch databases", e))?;
    Ok(rows
        .iter()
        .map(|r| LeftoverDatabase {
            server: target.server(),
            name: r.get(0),
            sessions: r.get(1),
        })
        .collect())
}

/// The refusal when earlier restores' scratch databases are on the target server.
fn leftovers_error(target: &str, leftovers: &[(String, i64)]) -> Error {
    let busy: Vec<&(String, i64)> = leftovers.iter().filter(|(_, n)| *n > 0).collect();
    if let Some((name, sessions)) = busy.first() {
        return Error::Invalid(format!(
            "another restore into {target} seems to be running: its scratch database {name} has {sessions} session(s); wait for it, or stop it and drop {name}"
        ));
    }
    let names: Vec<&str> = leftovers.iter().map(|(n, _)| n.as_str()).collect();
    let drops: Vec<String> = names
        .iter()
        .map(|n| format!("DROP DATABASE {};", quote_ident(n)))
        .collect();
    Error::Invalid(format!(
        "an interrupted restore into {target} left {} on the server (no session uses it); check nothing needs it, drop it ({}) and run the restore again",
        names.join(", "),
        drops.join(" ")
    ))
}

impl fmt::Display for RestorePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.manifest;
        let age = (Utc::now() - m.consistent_at).num_seconds();
        writeln!(f, "Restore plan")?;
        writeln!(
            f,
            "  backup:      {} ({} of database {}, PostgreSQL {})",
            m.id, m.policy, m.database, m.server_version
        )?;
        writeln!(
            f,
            "  taken:       {} (data as of {}, {} ago)",
            m.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
            m.consistent_at.format("%Y-%m-%d %H:%M:%S UTC"),
            human_age(age)
        )?;
        writeln!(
            f,
            "  size:        {} stored, {} dump, {} tables",
            human_bytes(m.stored_size()),
            human_bytes(
                m.object(object::DUMP)
                    .map(|o| o.digest.raw_size)
                    .unwrap_or(0)
            ),
            self.sidecar.tables.len()
        )?;
        writeln!(
            f,
            "  target:      {} (server {})",
            self.target, self.target_server_version
        )?;
        let action = match &self.action {
            TargetAction::Create => format!("create database {}", self.target_database),
            TargetAction::ReplaceEmpty => format!(
                "replace database {} (it exists and has no user tables)",
                self.target_database
            ),
            TargetAction::Replace { tables } => format!(
                "REPLACE database {} and its {tables} user table(s) (--force); the old database is dropped after the restore verifies",
                self.target_database
            ),
            TargetAction::Refuse { tables } => format!(
                "REFUSED: database {} has {tables} user table(s); re-run with --force to replace it",
                self.target_database
            ),
        };
        writeln!(f, "  action:      {action}")?;
        for (name, sessions) in &self.leftovers {
            writeln!(
                f,
                "  LEFTOVER:    database {name} from an earlier restore into {} ({sessions} session(s)); the restore refuses to run until it is gone",
                self.target_database
            )?;
        }
        writeln!(
            f,
            "  roles:       create {}; keep existing {}",
            list_or_none(&self.roles_to_create),
            list_or_none(&self.roles_existing)
        )?;
        if self.tablespaces_skipped > 0 {
            writeln!(
                f,
                "  tablespaces: {} statement(s) skipped (locations are host paths); objects go to the default tablespace",
                self.tablespaces_skipped
            )?;
        }
        writeln!(
            f,
            "  method:      restore into scratch database {} with pg_restore {}{}, verify, then rename into place",
            self.scratch_database,
            if self.jobs > 1 { format!("-j {}", self.jobs) } else { "(streamed)".into() },
            if self.jobs > 1 {
                format!(" (spools {} decrypted to a temp file)", human_bytes(self.manifest.object(object::DUMP).map(|o| o.digest.raw_size).unwrap_or(0)))
            } else {
                String::new()
            }
        )
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

/// Carry out a plan. Returns a report whose [`RestoreReport::passed`] says whether the
/// restored database verified and was swapped into place.
///
/// When the plan spools (see [`RestorePlan::spools`]), the whole dump is downloaded and
/// verified before anything on the target server changes.
///
/// `cancel` (Ctrl-C) is honoured until the swap starts: the scratch database is dropped
/// and the target is untouched. The swap itself (two renames) is never interrupted.
pub async fn execute(
    repo: &Repository,
    plan: RestorePlan,
    identities: &Identities,
    progress: Arc<Progress>,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<RestoreReport> {
    plan.refusal()?;
    let spool = if plan.spools() {
        let spooled = tokio::select! {
            r = spool_dump(repo, &plan, identities, progress.clone()) => r?,
            _ = cancel.cancelled() => return Err(Error::Cancelled),
        };
        Some(spooled)
    } else {
        None
    };
    execute_prepared(repo, plan, spool.as_ref(), identities, progress, cancel).await
}

/// Carry out a plan whose dump, when it spools, was already fetched by [`spool_dump`].
/// Drills use this to time the download and the restore as separate phases.
pub async fn execute_prepared(
    repo: &Repository,
    plan: RestorePlan,
    spool: Option<&SpooledDump>,
    identities: &Identities,
    progress: Arc<Progress>,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<RestoreReport> {
    plan.refusal()?;
    let (admin, mut report) = restore_to_scratch(
        repo,
        &plan,
        spool,
        identities,
        Globals::All,
        progress,
        cancel,
    )
    .await?;
    if !report.tables.iter().all(TableCheck::passed) {
        drop_scratch(&admin, &plan.scratch_database).await;
        return Ok(report);
    }
    if cancel.is_cancelled() {
        drop_scratch(&admin, &plan.scratch_database).await;
        return Err(Error::Cancelled);
    }
    if let Err(e) = swap_into_place(&admin, &plan).await {
        drop_scratch(&admin, &plan.scratch_database).await;
        return Err(e);
    }
    report.swapped_in = true;
    Ok(report)
}

/// Apply the globals, restore the dump into the plan's scratch database and count its
/// rows against the backup's record. On success the scratch database stays (whatever
/// the counts say) for the caller to swap in, copy from, or drop; on error it is gone.
/// Returns a connection to the server's `postgres` database with the report.
pub(crate) async fn restore_to_scratch(
    repo: &Repository,
    plan: &RestorePlan,
    spool: Option<&SpooledDump>,
    identities: &Identities,
    globals: Globals,
    progress: Arc<Progress>,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<(tokio_postgres::Client, RestoreReport)> {
    let admin = plan.target.with_database("postgres").connect().await?;
    let warnings = apply_globals(&admin, &plan.statements, globals).await?;

    let scratch = plan.scratch_database.clone();
    admin
        .batch_execute(&format!(
            "drop database if exists {}",
            quote_ident(&scratch)
        ))
        .await
        .map_err(|e| Error::pg(format!("cannot drop stale scratch database {scratch}"), e))?;
    admin
        .batch_execute(&format!(
            "create database {} template template0 encoding {}",
            quote_ident(&scratch),
            quote_literal(&plan.manifest.database_encoding)
        ))
        .await
        .map_err(|e| Error::pg(format!("cannot create scratch database {scratch}"), e))?;

    let started = Instant::now();
    let restored = tokio::select! {
        r = restore_dump(repo, plan, spool, identities, progress) => r,
        _ = cancel.cancelled() => Err(Error::Cancelled),
    };
    let restore_seconds = started.elapsed().as_secs_f64();
    if let Err(e) = restored {
        drop_scratch(&admin, &scratch).await;
        return Err(e);
    }

    let check_started = Instant::now();
    let tables = match compare_counts(plan, &scratch).await {
        Ok(t) => t,
        Err(e) => {
            drop_scratch(&admin, &scratch).await;
            return Err(e);
        }
    };
    let check_seconds = check_started.elapsed().as_secs_f64();
    let report = RestoreReport {
        backup_id: plan.manifest.id.clone(),
        target_database: plan.target_database.clone(),
        tables,
        swapped_in: false,
        warnings,
        restore_seconds,
        check_seconds,
    };
    Ok((admin, report))
}

/// Drop a scratch database, logging (not failing) when it cannot be dropped.
pub(crate) async fn drop_scratch(admin: &tokio_postgres::Client, scratch: &str) {
    let sql = format!(
        "drop database if exists {} with (force)",
        quote_ident(scratch)
    );
    if let Err(e) = admin.batch_execute(&sql).await {
        tracing::warn!(database = scratch, error = %e, "could not drop the scratch database; drop it by hand");
    }
}

async fn existing_roles(admin: &tokio_postgres::Client) -> Result<Vec<String>> {
    Ok(admin
        .query("select rolname::text from pg_roles", &[])
        .await
        .map_err(|e| Error::pg("cannot list roles on the target server", e))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Which of the backup's globals a restore applies to the target server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Globals {
    /// Missing roles and every other statement (memberships, settings): a whole
    /// database is being restored.
    All,
    /// Only the roles the server lacks (so owners and grants in restored objects
    /// resolve); memberships and settings of existing roles are left alone. A table
    /// restore into a live server must not re-grant what was revoked since the backup.
    MissingRolesOnly,
}

async fn apply_globals(
    admin: &tokio_postgres::Client,
    statements: &[GlobalStatement],
    globals: Globals,
) -> Result<Vec<String>> {
    let existing = existing_roles(admin).await?;
    let mut warnings = Vec::new();
    for statement in statements {
        let sql = match statement {
            GlobalStatement::Role { role, .. } if existing.contains(role) => continue,
            GlobalStatement::Tablespace { .. } => continue,
            GlobalStatement::Other { .. } if globals == Globals::MissingRolesOnly => continue,
            GlobalStatement::Role { sql, .. } | GlobalStatement::Other { sql } => sql,
        };
        if let Err(e) = admin.batch_execute(sql).await {
            let msg = e
                .as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_else(|| e.to_string());
            warnings.push(format!(
                "globals: {}: {msg}",
                sql.lines().next().unwrap_or_default()
            ));
        }
    }
    Ok(warnings)
}

/// Download, verify and feed the dump to pg_restore in the scratch database.
async fn restore_dump(
    repo: &Repository,
    plan: &RestorePlan,
    spool: Option<&SpooledDump>,
    identities: &Identities,
    progress: Arc<Progress>,
) -> Result<()> {
    let dump = plan.manifest.object(object::DUMP)?;
    let scratch_target = plan.target.with_database(&plan.scratch_database);
    let parallel = plan.options.download_parallelism.max(1);
    let recipients = &plan.manifest.encryption.recipients;
    let mut cmd = scratch_target.command(&plan.tools.tool("pg_restore"));
    cmd.args(["--exit-on-error", "--no-password"]);

    if spool.is_none() && plan.jobs <= 1 {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::io("cannot start pg_restore", e))?;
        let stdin = child.stdin.take().ok_or_else(|| Error::Tool {
            tool: "pg_restore".into(),
            message: "no stdin pipe".into(),
        })?;
        let stderr = child.stderr.take();
        let stderr_thread = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut s) = stderr {
                let _ = std::io::Read::read_to_string(&mut s, &mut text);
            }
            text
        });
        let streamed = pipeline::download_stream(
            repo.storage(),
            &dump.key,
            &dump.digest,
            Decode::Full(identities),
            recipients,
            stdin,
            parallel,
            progress,
        )
        .await;
        match streamed {
            Ok(stdin) => drop(stdin),
            Err(e) => {
                // A write error usually means pg_restore stopped: its stderr says why.
                let stream_failed = !matches!(e, Error::Io { .. });
                if stream_failed {
                    let _ = child.kill();
                }
                let (status, stderr) = tokio::task::spawn_blocking(move || {
                    (child.wait().ok(), stderr_thread.join().unwrap_or_default())
                })
                .await
                .map_err(|e| Error::Internal(format!("pg_restore waiter failed: {e}")))?;
                if !stream_failed {
                    if let Some(status) = status.filter(|s| !s.success()) {
                        return Err(Error::Tool {
                            tool: "pg_restore".into(),
                            message: format!("{status}: {}", server::stderr_tail(&stderr)),
                        });
                    }
                }
                return Err(e);
            }
        }
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .map_err(|e| Error::Invalid(format!("pg_restore waiter failed: {e}")))?
            .map_err(|e| Error::io("waiting for pg_restore", e))?;
        let stderr = stderr_thread.join().unwrap_or_default();
        if !status.success() {
            return Err(Error::Tool {
                tool: "pg_restore".into(),
                message: format!("{status}: {}", server::stderr_tail(&stderr)),
            });
        }
        return Ok(());
    }

    let spool = spool
        .ok_or_else(|| Error::Invalid("a parallel restore needs the dump spooled first".into()))?;
    cmd.arg(format!("--jobs={}", plan.jobs))
        .arg(spool.path.as_os_str());
    tokio::task::spawn_blocking(move || server::run_tool("pg_restore", cmd))
        .await
        .map_err(|e| Error::Invalid(format!("pg_restore worker failed: {e}")))??;
    Ok(())
}

/// The decrypted, verified dump in a temporary file (removed when dropped), for
/// `pg_restore -j` and for drills that time download and restore separately.
pub struct SpooledDump {
    path: tempfile::TempPath,
    /// Seconds spent downloading, authenticating, decompressing and writing it.
    pub seconds: f64,
    /// Plaintext bytes.
    pub bytes: u64,
}

impl SpooledDump {
    /// Where the plaintext dump is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Download the plan's dump, verify every digest and age authentication, and write the
/// plaintext to a temporary file in the spool directory. Checks free space first.
pub async fn spool_dump(
    repo: &Repository,
    plan: &RestorePlan,
    identities: &Identities,
    progress: Arc<Progress>,
) -> Result<SpooledDump> {
    let started = Instant::now();
    let dump = plan.manifest.object(object::DUMP)?;
    let spool_dir = plan
        .options
        .spool_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir);
    let needed = dump.digest.raw_size;
    let available = free_space(&spool_dir)?;
    if available < needed.saturating_add(64 * 1024 * 1024) {
        return Err(Error::NoSpace {
            path: spool_dir,
            needed,
            available,
        });
    }
    let spool = tempfile::Builder::new()
        .prefix("pgvault-restore-")
        .suffix(".pgdump")
        .tempfile_in(&spool_dir)
        .map_err(|e| {
            Error::io(
                format!("cannot create a spool file in {}", spool_dir.display()),
                e,
            )
        })?;
    let (file, path) = spool.into_parts();
    let writer = std::io::BufWriter::with_capacity(1024 * 1024, file);
    let written = pipeline::download_stream(
        repo.storage(),
        &dump.key,
        &dump.digest,
        Decode::Full(identities),
        &plan.manifest.encryption.recipients,
        writer,
        plan.options.download_parallelism.max(1),
        progress,
    )
    .await;
    let mut writer = match written {
        Ok(w) => w,
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::StorageFull => {
            return Err(Error::NoSpace {
                path: spool_dir,
                needed,
                available: free_space(path.parent().unwrap_or(Path::new("/"))).unwrap_or(0),
            })
        }
        Err(e) => return Err(e),
    };
    writer
        .flush()
        .map_err(|e| Error::io(format!("writing spool file {}", path.display()), e))?;
    drop(writer);
    Ok(SpooledDump {
        path,
        seconds: started.elapsed().as_secs_f64(),
        bytes: needed,
    })
}

/// The table of contents (`pg_restore --list`) of a spooled dump.
pub async fn spooled_toc(plan: &RestorePlan, spool: &SpooledDump) -> Result<String> {
    let mut cmd = toc_command(&plan.tools);
    cmd.arg(spool.path());
    let out = tokio::task::spawn_blocking(move || server::run_tool("pg_restore", cmd))
        .await
        .map_err(|e| Error::Invalid(format!("pg_restore --list worker failed: {e}")))??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn free_space(dir: &Path) -> Result<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).map_err(|e| {
        Error::io(
            format!("cannot check free space in {}", dir.display()),
            std::io::Error::from(e),
        )
    })?;
    Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

async fn compare_counts(plan: &RestorePlan, scratch: &str) -> Result<Vec<TableCheck>> {
    let client = plan.target.with_database(scratch).connect().await?;
    let actual = postgres::table_row_counts(&client).await?;
    Ok(match_counts(&plan.sidecar.tables, &actual))
}

/// Pair the row counts the backup recorded with those of the restored database: every
/// recorded table in its order, then the tables only the restore has. Linear in the
/// number of tables (a database may have tens of thousands).
fn match_counts(expected: &[TableCount], actual: &[TableCount]) -> Vec<TableCheck> {
    let key = |t: &TableCount| (t.schema.clone(), t.table.clone());
    let actual_rows: HashMap<(String, String), i64> =
        actual.iter().map(|a| (key(a), a.rows)).collect();
    let recorded: HashSet<(String, String)> = expected.iter().map(key).collect();
    let mut checks: Vec<TableCheck> = expected
        .iter()
        .map(|t| TableCheck {
            table: format!("{}.{}", t.schema, t.table),
            expected: Some(t.rows),
            actual: actual_rows.get(&key(t)).copied(),
        })
        .collect();
    checks.extend(
        actual
            .iter()
            .filter(|a| !recorded.contains(&key(a)))
            .map(|a| TableCheck {
                table: format!("{}.{}", a.schema, a.table),
                expected: None,
                actual: Some(a.rows),
            }),
    );
    checks
}

/// Rename the verified scratch database into place, keeping the old one until the
/// new one is in place.
async fn swap_into_place(admin: &tokio_postgres::Client, plan: &RestorePlan) -> Result<()> {
    let target = &plan.target_database;
    let scratch = &plan.scratch_database;
    let exists = admin
        .query_opt(
            "select pg_get_userbyid(datdba)::text from pg_database where datname = $1",
            &[target],
        )
        .await
        .map_err(|e| Error::pg("cannot look up the target database", e))?;
    let Some(row) = exists else {
        return admin
            .batch_execute(&format!(
                "alter database {} rename to {}",
                quote_ident(scratch),
                quote_ident(target)
            ))
            .await
            .map_err(|e| Error::pg(format!("cannot rename {scratch} to {target}"), e));
    };
    let owner: String = row.get(0);
    let sessions: i64 = admin
        .query_one(
            "select count(*) from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()",
            &[target],
        )
        .await
        .map_err(|e| Error::pg("cannot count sessions on the target database", e))?
        .get(0);
    if sessions > 0 {
        return Err(Error::TargetBusy {
            database: target.clone(),
            sessions,
        });
    }
    let old = format!("{scratch}_old");
    admin
        .batch_execute(&format!(
            "alter database {} owner to {}; alter database {} rename to {}",
            quote_ident(scratch),
            quote_ident(&owner),
            quote_ident(target),
            quote_ident(&old)
        ))
        .await
        .map_err(|e| Error::pg(format!("cannot move the old {target} aside"), e))?;
    if let Err(e) = admin
        .batch_execute(&format!(
            "alter database {} rename to {}",
            quote_ident(scratch),
            quote_ident(target)
        ))
        .await
    {
        let _ = admin
            .batch_execute(&format!(
                "alter database {} rename to {}",
                quote_ident(&old),
                quote_ident(target)
            ))
            .await;
        return Err(Error::pg(format!("cannot rename {scratch} to {target}"), e));
    }
    admin
        .batch_execute(&format!("drop database {}", quote_ident(&old)))
        .await
        .map_err(|e| {
            Error::pg(
                format!(
                    "restored {target}, but could not drop the old copy {old}; drop it by hand"
                ),
                e,
            )
        })?;
    Ok(())
}

/// Start pg_restore --list on stdin, for verification of a dump's table of contents.
pub(crate) fn toc_command(tools: &PgTools) -> Command {
    let mut cmd = Command::new(tools.tool("pg_restore"));
    cmd.arg("--list");
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(schema: &str, table: &str, rows: i64) -> TableCount {
        TableCount {
            schema: schema.into(),
            table: table.into(),
            rows,
        }
    }

    #[test]
    fn counts_pair_up_by_schema_and_table() {
        let expected = [
            count("public", "a", 1),
            count("public", "b", 2),
            count("s", "a", 3),
        ];
        let actual = [
            count("s", "a", 3),
            count("public", "a", 1),
            count("public", "c", 9),
        ];
        let checks = match_counts(&expected, &actual);
        let seen: Vec<(&str, Option<i64>, Option<i64>)> = checks
            .iter()
            .map(|c| (c.table.as_str(), c.expected, c.actual))
            .collect();
        assert_eq!(
            seen,
            [
                ("public.a", Some(1), Some(1)),
                ("public.b", Some(2), None),
                ("s.a", Some(3), Some(3)),
                ("public.c", None, Some(9)),
            ]
        );
    }

    #[test]
    fn twenty_thousand_tables_pair_up() {
        let tables: Vec<TableCount> = (0..20_000)
            .map(|i| count("public", &format!("t{i}"), i))
            .collect();
        let mut restored = tables.clone();
        restored.reverse();
        let checks = match_counts(&tables, &restored);
        assert_eq!(checks.len(), 20_000);
        assert!(checks.iter().all(|c| c.expected == c.actual));
    }
}
