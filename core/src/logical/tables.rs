//! Restoring some tables or schemas of a logical backup into a database that otherwise
//! stays as it is: `restore --table schema.name`, `--schema name`, `--exclude-table`.
//!
//! The backup is restored whole, verified, into a scratch database beside the target
//! (the same path as a full restore, row counts checked against the backup's record).
//! The selected tables are then copied into the target with `pg_dump --table` from the
//! scratch database, so each comes with what `pg_dump` dumps with a table: its
//! indexes, constraints, triggers, rules, policies, the sequences it owns, defaults,
//! comments and grants. A foreign key whose referenced table is neither restored nor
//! present in the target is dropped in the scratch database first, and reported as
//! skipped: it could not be created. Everything is applied in one transaction
//! (`psql --single-transaction`): all selected tables arrive, or none.
//!
//! A table already present in the target is left alone and reported, unless `--force`
//! replaces it (`DROP TABLE` in the same transaction; a table that others depend on
//! makes the whole transaction fail with PostgreSQL's reason, and nothing changes). The
//! row counts of exactly the restored tables are checked in the target afterwards.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::io::Write;
use std::process::Stdio;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::keys::Identities;
use crate::pipeline::Progress;
use crate::postgres::{quote_ident, ConnTarget};
use crate::repository::{object, Repository};
use crate::server;

use super::restore::{RestoreOptions, RestorePlan, TableCheck};

/// A table's schema and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QualifiedName {
    /// Schema.
    pub schema: String,
    /// Table.
    pub table: String,
}

impl QualifiedName {
    /// Parse `schema.table`, or `table` in `public`. Names are taken as written (no
    /// case folding): `"Orders"` in the database is `Orders` here.
    pub fn parse(text: &str) -> Result<QualifiedName> {
        let (schema, table) = match text.split_once('.') {
            Some((s, t)) => (s, t),
            None => ("public", text),
        };
        if schema.is_empty() || table.is_empty() || table.contains('.') {
            return Err(Error::Invalid(format!(
                "{} is not a table name: use schema.table, e.g. public.orders",
                crate::error::safe_echo(text)
            )));
        }
        Ok(QualifiedName {
            schema: schema.into(),
            table: table.into(),
        })
    }

    /// The name quoted for SQL and for `pg_dump --table` (an exact match).
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// Which tables of a backup to restore.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableSelection {
    /// `--table`.
    pub tables: Vec<QualifiedName>,
    /// `--schema`.
    pub schemas: Vec<String>,
    /// `--exclude-table`.
    pub exclude: Vec<QualifiedName>,
}

impl TableSelection {
    /// The selection the options ask for; `None` when none was given (a full restore).
    pub fn from_options(
        tables: &[String],
        schemas: &[String],
        exclude: &[String],
    ) -> Result<Option<TableSelection>> {
        if tables.is_empty() && schemas.is_empty() && exclude.is_empty() {
            return Ok(None);
        }
        let parse = |names: &[String]| {
            names
                .iter()
                .map(|n| QualifiedName::parse(n))
                .collect::<Result<Vec<_>>>()
        };
        Ok(Some(TableSelection {
            tables: parse(tables)?,
            schemas: schemas.to_vec(),
            exclude: parse(exclude)?,
        }))
    }

    /// Whether `name` is selected: named by `--table` or in a `--schema` (everything,
    /// when only exclusions were given), and not excluded.
    pub fn selects(&self, name: &QualifiedName) -> bool {
        if self.exclude.contains(name) {
            return false;
        }
        (self.tables.is_empty() && self.schemas.is_empty())
            || self.tables.contains(name)
            || self.schemas.contains(&name.schema)
    }
}

/// A foreign key of a restored table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    /// The table it is on.
    pub table: QualifiedName,
    /// Its name.
    pub name: String,
    /// The table it references.
    pub references: QualifiedName,
    /// Whether it is restored (the referenced table is restored or in the target).
    pub kept: bool,
}

/// A table restore, decided but not started.
pub struct TablesPlan {
    /// The restore of the whole backup into the scratch database.
    pub base: RestorePlan,
    /// What was asked for.
    pub selection: TableSelection,
    /// The selected tables with the rows the backup recorded.
    pub selected: Vec<(QualifiedName, i64)>,
    /// Names of `--table` and `--schema` the backup does not hold.
    pub unmatched: Vec<String>,
    /// Selected tables that already exist in the target.
    pub present: Vec<QualifiedName>,
    /// Every table the target has now (what a restored foreign key may reference).
    pub target_tables: HashSet<QualifiedName>,
    /// Whether present tables are replaced.
    pub force: bool,
    /// Whether the target database exists.
    pub target_exists: bool,
    /// Foreign keys of the restored tables (filled by [`foreign_keys_in_dump`] for a
    /// dry run; execution reads them from the scratch database).
    pub foreign_keys: Vec<ForeignKey>,
}

impl TablesPlan {
    /// The tables that will be created in the target.
    pub fn to_restore(&self) -> Vec<&QualifiedName> {
        self.selected
            .iter()
            .map(|(n, _)| n)
            .filter(|n| self.force || !self.present.contains(n))
            .collect()
    }

    /// Why this plan must not run.
    pub fn refusal(&self) -> Result<()> {
        if !self.unmatched.is_empty() {
            return Err(Error::Invalid(format!(
                "backup {} holds no {}; `pgvault verify --identity … {}` lists its tables",
                self.base.manifest.id,
                self.unmatched.join(", "),
                self.base.manifest.id
            )));
        }
        if self.selected.is_empty() {
            return Err(Error::Invalid(format!(
                "the selection matches no table of backup {}",
                self.base.manifest.id
            )));
        }
        if !self.base.leftovers.is_empty() {
            return self.base.refusal();
        }
        Ok(())
    }
}

/// Plan restoring `selection` from backup `selector` into `target_url`.
pub async fn plan(
    repo: &Repository,
    selector: &str,
    target_url: &str,
    identities: &Identities,
    mut options: RestoreOptions,
    selection: TableSelection,
) -> Result<TablesPlan> {
    let force = options.force;
    // The scratch database is always new; what happens to the target is decided here.
    options.force = true;
    let target = ConnTarget::parse(target_url)?;
    let base =
        super::restore::plan_into(repo, selector, target.clone(), identities, options).await?;
    let recorded = base.recorded_tables();
    let selected: Vec<(QualifiedName, i64)> = recorded
        .iter()
        .map(|t| {
            (
                QualifiedName {
                    schema: t.schema.clone(),
                    table: t.table.clone(),
                },
                t.rows,
            )
        })
        .filter(|(n, _)| selection.selects(n))
        .collect();
    let mut unmatched: Vec<String> = selection
        .tables
        .iter()
        .filter(|t| {
            !recorded
                .iter()
                .any(|r| r.schema == t.schema && r.table == t.table)
        })
        .map(|t| format!("table {t}"))
        .collect();
    unmatched.extend(
        selection
            .schemas
            .iter()
            .filter(|s| !recorded.iter().any(|r| &r.schema == *s))
            .map(|s| format!("schema {s} (or no table in it)")),
    );
    let admin = target.with_database("postgres").connect().await?;
    let target_exists = admin
        .query_opt(
            "select 1 from pg_database where datname = $1",
            &[&base.target_database],
        )
        .await
        .map_err(|e| Error::pg("cannot look up the target database", e))?
        .is_some();
    let target_tables = if target_exists {
        existing_tables(&target).await?
    } else {
        HashSet::new()
    };
    let present = selected
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| target_tables.contains(n))
        .collect();
    Ok(TablesPlan {
        base,
        selection,
        selected,
        unmatched,
        present,
        target_tables,
        force,
        target_exists,
        foreign_keys: Vec::new(),
    })
}

async fn existing_tables(target: &ConnTarget) -> Result<HashSet<QualifiedName>> {
    let client = target.connect().await?;
    Ok(client
        .query(
            "select n.nspname::text, c.relname::text from pg_class c join pg_namespace n on n.oid = c.relnamespace \
             where c.relkind in ('r', 'p') and n.nspname not in ('pg_catalog', 'information_schema')",
            &[],
        )
        .await
        .map_err(|e| Error::pg("cannot list the target's tables", e))?
        .iter()
        .map(|r| QualifiedName {
            schema: r.get(0),
            table: r.get(1),
        })
        .collect())
}

/// Read the foreign keys of the plan's selected tables from the dump itself (its
/// post-data section, streamed and verified, nothing written), for a dry run.
pub async fn foreign_keys_in_dump(
    repo: &Repository,
    plan: &mut TablesPlan,
    identities: &Identities,
) -> Result<()> {
    let dump = plan.base.manifest.object(object::DUMP)?.clone();
    let mut cmd = std::process::Command::new(plan.base.tools().tool("pg_restore"));
    cmd.args(["--section=post-data", "--file=-"]);
    let (status, sql, errors) = super::verify::stream_dump_into(
        repo,
        &dump,
        identities,
        &plan.base.manifest.encryption.recipients,
        cmd,
        "pg_restore --section=post-data",
    )
    .await?;
    if !status.success() {
        return Err(Error::Tool {
            tool: "pg_restore".into(),
            message: server::stderr_tail(&errors),
        });
    }
    let restoring: HashSet<QualifiedName> = plan.to_restore().into_iter().cloned().collect();
    let in_target = &plan.target_tables;
    plan.foreign_keys = parse_foreign_keys(&sql)
        .into_iter()
        .filter(|(table, _, _)| restoring.contains(table))
        .map(|(table, name, references)| ForeignKey {
            kept: restoring.contains(&references) || in_target.contains(&references),
            table,
            name,
            references,
        })
        .collect();
    Ok(())
}

/// Unquote one identifier as pg_dump writes it (`"Weird ""name"""` or `plain`).
fn unquote(ident: &str) -> String {
    match ident.strip_prefix('"').and_then(|i| i.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => ident.to_string(),
    }
}

/// Split `schema.table` as pg_dump writes it (each part possibly quoted).
fn split_qualified(text: &str) -> Option<QualifiedName> {
    let mut in_quotes = false;
    for (i, c) in text.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            '.' if !in_quotes => {
                return Some(QualifiedName {
                    schema: unquote(&text[..i]),
                    table: unquote(&text[i + 1..]),
                })
            }
            _ => {}
        }
    }
    None
}

/// The foreign keys in pg_dump's post-data SQL: statements of the form
/// `ALTER TABLE ONLY s.t ADD CONSTRAINT c FOREIGN KEY (…) REFERENCES s2.t2(…)`.
fn parse_foreign_keys(sql: &str) -> Vec<(QualifiedName, String, QualifiedName)> {
    let mut found = Vec::new();
    for statement in sql.split(";\n") {
        let text = statement.split_whitespace().collect::<Vec<_>>().join(" ");
        let Some(rest) = text
            .find("ALTER TABLE ")
            .map(|i| &text[i + "ALTER TABLE ".len()..])
        else {
            continue;
        };
        let rest = rest.strip_prefix("ONLY ").unwrap_or(rest);
        let Some((table, rest)) = rest.split_once(" ADD CONSTRAINT ") else {
            continue;
        };
        let Some((name, rest)) = rest.split_once(" FOREIGN KEY ") else {
            continue;
        };
        let Some((_, rest)) = rest.split_once(" REFERENCES ") else {
            continue;
        };
        let referenced = rest.split('(').next().unwrap_or_default().trim();
        if let (Some(table), Some(referenced)) =
            (split_qualified(table.trim()), split_qualified(referenced))
        {
            found.push((table, unquote(name.trim()), referenced));
        }
    }
    found
}

/// What a table restore did.
#[derive(Debug, Clone)]
pub struct TablesReport {
    /// The backup.
    pub backup_id: String,
    /// The target database.
    pub target_database: String,
    /// Row-count checks of exactly the restored tables, in the target.
    pub restored: Vec<TableCheck>,
    /// Selected tables left alone because the target has them (no `--force`).
    pub left_present: Vec<QualifiedName>,
    /// Foreign keys of restored tables, and whether each was restored.
    pub foreign_keys: Vec<ForeignKey>,
    /// Warnings (globals).
    pub warnings: Vec<String>,
}

impl TablesReport {
    /// Whether every restored table has the rows the backup recorded.
    pub fn passed(&self) -> bool {
        self.restored.iter().all(TableCheck::passed)
    }
}

/// Carry out `plan`: restore the backup into the scratch database, verify it, copy the
/// selected tables into the target in one transaction, check their rows there, and
/// drop the scratch database.
pub async fn execute(
    repo: &Repository,
    plan: TablesPlan,
    identities: &Identities,
    progress: Arc<Progress>,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<TablesReport> {
    plan.refusal()?;
    let base = &plan.base;
    let spool = if base.spools() {
        Some(super::restore::spool_dump(repo, base, identities, progress.clone()).await?)
    } else {
        None
    };
    let (admin, report) = super::restore::restore_to_scratch(
        repo,
        base,
        spool.as_ref(),
        identities,
        super::restore::Globals::MissingRolesOnly,
        progress,
        cancel,
    )
    .await?;
    let scratch = base.scratch_database.clone();
    // Past this point the target changes: a cancel stops here, the scratch goes.
    let copied = if cancel.is_cancelled() {
        Err(Error::Cancelled)
    } else {
        copy_tables(&plan, &report, &admin).await
    };
    super::restore::drop_scratch(&admin, &scratch).await;
    let (restored, foreign_keys) = copied?;
    Ok(TablesReport {
        backup_id: base.manifest.id.clone(),
        target_database: base.target_database.clone(),
        restored,
        left_present: if plan.force {
            Vec::new()
        } else {
            plan.present.clone()
        },
        foreign_keys,
        warnings: report.warnings,
    })
}

/// Copy the plan's tables from the verified scratch database into the target, in one
/// transaction that also checks each table's row count before it commits.
async fn copy_tables(
    plan: &TablesPlan,
    scratch_report: &super::restore::RestoreReport,
    admin: &tokio_postgres::Client,
) -> Result<(Vec<TableCheck>, Vec<ForeignKey>)> {
    let base = &plan.base;
    if let Some(bad) = scratch_report.tables.iter().find(|t| !t.passed()) {
        return Err(Error::Integrity {
            object: format!("backup {}", base.manifest.id),
            message: format!(
                "restored into a scratch database, table {} has {:?} rows where the backup recorded {:?}; nothing was copied into {}",
                bad.table, bad.actual, bad.expected, base.target_database
            ),
        });
    }
    let restoring: Vec<QualifiedName> = plan.to_restore().into_iter().cloned().collect();
    if restoring.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let scratch = base.target.with_database(&base.scratch_database);
    let client = scratch.connect().await?;
    // Foreign keys of the restored tables; those that cannot hold in the target are
    // dropped in the scratch database, so pg_dump does not emit them.
    let present: HashSet<&QualifiedName> = plan.present.iter().collect();
    let restoring_set: HashSet<&QualifiedName> = restoring.iter().collect();
    let mut foreign_keys = Vec::new();
    for row in client
        .query(
            "select n1.nspname::text, t1.relname::text, c.conname::text, n2.nspname::text, t2.relname::text \
             from pg_constraint c \
             join pg_class t1 on t1.oid = c.conrelid join pg_namespace n1 on n1.oid = t1.relnamespace \
             join pg_class t2 on t2.oid = c.confrelid join pg_namespace n2 on n2.oid = t2.relnamespace \
             where c.contype = 'f' order by 1, 2, 3",
            &[],
        )
        .await
        .map_err(|e| Error::pg("cannot read the foreign keys of the restored backup", e))?
    {
        let table = QualifiedName {
            schema: row.get(0),
            table: row.get(1),
        };
        if !restoring_set.contains(&table) {
            continue;
        }
        let references = QualifiedName {
            schema: row.get(3),
            table: row.get(4),
        };
        let kept =
            restoring_set.contains(&references) || plan.target_tables.contains(&references);
        let name: String = row.get(2);
        if !kept {
            client
                .batch_execute(&format!(
                    "alter table only {} drop constraint {}",
                    table.quoted(),
                    quote_ident(&name)
                ))
                .await
                .map_err(|e| Error::pg(format!("cannot set aside foreign key {name}"), e))?;
        }
        foreign_keys.push(ForeignKey {
            table,
            name,
            references,
            kept,
        });
    }
    // The transaction is pgvault's own (BEGIN here, COMMIT in the footer): if the input
    // ends early (pg_dump failed, pgvault was killed), psql exits without COMMIT and the
    // server rolls everything back.
    let mut header =
        String::from("\\set ON_ERROR_STOP 1\nbegin;\nset client_min_messages = warning;\n");
    if plan.force {
        for table in restoring.iter().filter(|t| present.contains(t)) {
            header.push_str(&format!("drop table {};\n", table.quoted()));
        }
    }
    let schemas: BTreeSet<&str> = restoring.iter().map(|t| t.schema.as_str()).collect();
    for schema in schemas {
        header.push_str(&format!(
            "create schema if not exists {};\n",
            quote_ident(schema)
        ));
    }
    let mut footer = String::from("\n");
    for table in &restoring {
        let expected = plan
            .selected
            .iter()
            .find(|(n, _)| n == table)
            .map(|(_, rows)| *rows)
            .unwrap_or(-1);
        footer.push_str(&format!(
            "do $pgvault$ begin if (select count(*) from {t}) <> {expected} then raise exception 'table % has % rows, the backup recorded {expected}: nothing is committed', {name}, (select count(*) from {t}); end if; end $pgvault$;\n",
            t = table.quoted(),
            name = crate::postgres::quote_literal(&table.to_string()),
        ));
    }
    footer.push_str("commit;\n");
    let created = if plan.target_exists {
        false
    } else {
        admin
            .batch_execute(&format!(
                "create database {} template template0 encoding {}",
                quote_ident(&base.target_database),
                crate::postgres::quote_literal(&base.manifest.database_encoding)
            ))
            .await
            .map_err(|e| {
                Error::pg(
                    format!("cannot create the target database {}", base.target_database),
                    e,
                )
            })?;
        true
    };
    let mut dump = scratch.command(&base.tools().tool("pg_dump"));
    dump.args(["--no-password", "--format=plain"]);
    for table in &restoring {
        dump.arg(format!("--table={}", table.quoted()));
    }
    let mut apply = base.target.command(&base.tools().tool("psql"));
    apply.args(["--no-password", "--no-psqlrc", "--quiet", "--file=-"]);
    let copied = tokio::task::spawn_blocking(move || {
        dump_into(dump, apply, header.into_bytes(), footer.into_bytes())
    })
    .await
    .map_err(|e| Error::Internal(format!("pg_dump | psql worker failed: {e}")))?;
    if let Err(e) = copied {
        if created {
            super::restore::drop_scratch(admin, &base.target_database).await;
        }
        return Err(e);
    }
    let target = base.target.connect().await?;
    let mut checks = Vec::new();
    for table in &restoring {
        let expected = plan
            .selected
            .iter()
            .find(|(n, _)| n == table)
            .map(|(_, rows)| *rows);
        let actual: i64 = target
            .query_one(&format!("select count(*) from {}", table.quoted()), &[])
            .await
            .map_err(|e| Error::pg(format!("cannot count the rows of {table}"), e))?
            .get(0);
        checks.push(TableCheck {
            table: table.to_string(),
            expected,
            actual: Some(actual),
        });
    }
    Ok((checks, foreign_keys))
}

/// Stream `dump`'s output into `apply`'s input between `header` and `footer`, without
/// holding it in memory. The footer (which commits) is sent only when `dump` succeeded;
/// otherwise a line that fails is, so `apply` rolls back. Both tools' stderr are read on
/// threads of their own.
fn dump_into(
    mut dump: std::process::Command,
    mut apply: std::process::Command,
    header: Vec<u8>,
    footer: Vec<u8>,
) -> Result<()> {
    use std::io::Read;
    dump.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    apply
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut dumper = dump
        .spawn()
        .map_err(|e| Error::io("cannot start pg_dump", e))?;
    let mut applier = match apply.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = dumper.kill();
            let _ = dumper.wait();
            return Err(Error::io("cannot start psql", e));
        }
    };
    let read_all = |pipe: Option<std::process::ChildStderr>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut text);
            }
            text
        })
    };
    let dump_errors = read_all(dumper.stderr.take());
    let apply_errors = read_all(applier.stderr.take());
    let mut output = dumper.stdout.take();
    let mut input = applier.stdin.take();
    let streamed = (|| -> std::io::Result<()> {
        let (Some(out), Some(inp)) = (output.as_mut(), input.as_mut()) else {
            return Err(std::io::Error::other("no pipe"));
        };
        inp.write_all(&header)?;
        std::io::copy(out, inp)?;
        Ok(())
    })();
    drop(output);
    let dumped = dumper
        .wait()
        .map_err(|e| Error::io("waiting for pg_dump", e))?;
    if let Some(inp) = input.as_mut() {
        let end: &[u8] = if streamed.is_ok() && dumped.success() {
            &footer
        } else {
            b"\n\\.\nselect pgvault_copy_was_interrupted;\n"
        };
        let _ = inp.write_all(end);
    }
    drop(input);
    let applied = applier
        .wait()
        .map_err(|e| Error::io("waiting for psql", e))?;
    let dump_errors = dump_errors.join().unwrap_or_default();
    let apply_errors = apply_errors.join().unwrap_or_default();
    if !dumped.success() {
        return Err(Error::Tool {
            tool: "pg_dump".into(),
            message: format!(
                "{dumped}: {}; the transaction was rolled back and the target is unchanged",
                server::stderr_tail(&dump_errors)
            ),
        });
    }
    if !applied.success() {
        return Err(Error::Tool {
            tool: "psql".into(),
            message: format!(
                "{applied}: {}; the transaction was rolled back and the target is unchanged",
                server::stderr_tail(&apply_errors)
            ),
        });
    }
    Ok(())
}

impl fmt::Display for TablesPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Table restore plan")?;
        writeln!(
            f,
            "  backup:    {} ({} of {})",
            self.base.manifest.id,
            self.base.manifest.database,
            self.base
                .manifest
                .consistent_at
                .format("%Y-%m-%d %H:%M:%S UTC")
        )?;
        writeln!(
            f,
            "  target:    {} on {}{}",
            self.base.target_database,
            self.base.target.server(),
            if self.target_exists {
                ""
            } else {
                " (does not exist: it will be created)"
            }
        )?;
        writeln!(
            f,
            "  method:    the whole backup is restored and verified in scratch database {}, then the tables are copied in one transaction with their indexes, constraints, triggers, owned sequences, comments and grants",
            self.base.scratch_database
        )?;
        if !self.base.roles_to_create.is_empty() {
            writeln!(
                f,
                "  roles:     create {} (missing on the target server; existing roles and their memberships are left as they are)",
                self.base.roles_to_create.join(", ")
            )?;
        }
        for unmatched in &self.unmatched {
            writeln!(f, "  NOT FOUND: {unmatched} is not in the backup")?;
        }
        for (name, rows) in &self.selected {
            let present = self.present.contains(name);
            let what = match (present, self.force) {
                (false, _) => "restore".to_string(),
                (true, true) => "REPLACE (present in the target; --force)".to_string(),
                (true, false) => "skip: present in the target (--force replaces it)".to_string(),
            };
            writeln!(f, "  table:     {name} ({rows} rows): {what}")?;
        }
        for fk in &self.foreign_keys {
            writeln!(
                f,
                "  foreign key {} on {} -> {}: {}",
                fk.name,
                fk.table,
                fk.references,
                if fk.kept {
                    "restored"
                } else {
                    "SKIPPED (the referenced table is neither restored nor in the target)"
                }
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> QualifiedName {
        QualifiedName::parse(s).unwrap()
    }

    #[test]
    fn selections_combine_tables_schemas_and_exclusions() {
        let sel = TableSelection::from_options(
            &["public.orders".into(), "items".into()],
            &["billing".into()],
            &["billing.audit".into()],
        )
        .unwrap()
        .unwrap();
        assert!(sel.selects(&q("public.orders")));
        assert!(sel.selects(&q("public.items")));
        assert!(sel.selects(&q("billing.invoices")));
        assert!(!sel.selects(&q("billing.audit")));
        assert!(!sel.selects(&q("public.customers")));
        let only_exclude = TableSelection::from_options(&[], &[], &["public.big".into()])
            .unwrap()
            .unwrap();
        assert!(only_exclude.selects(&q("public.small")));
        assert!(!only_exclude.selects(&q("public.big")));
        assert_eq!(TableSelection::from_options(&[], &[], &[]).unwrap(), None);
        assert!(QualifiedName::parse("a.b.c").is_err());
        assert!(QualifiedName::parse(".x").is_err());
    }

    #[test]
    fn foreign_keys_are_read_from_pg_dump_sql() {
        let sql = "--\n-- Name: orders orders_customer_id_fkey; Type: FK CONSTRAINT\n--\n\nALTER TABLE ONLY public.orders\n    ADD CONSTRAINT orders_customer_id_fkey FOREIGN KEY (customer_id) REFERENCES public.customers(id);\n\n\
            ALTER TABLE ONLY \"Sales\".\"Line Items\"\n    ADD CONSTRAINT \"fk \"\"x\"\"\" FOREIGN KEY (order_id) REFERENCES public.orders(id) ON DELETE CASCADE;\n\n\
            ALTER TABLE ONLY public.orders\n    ADD CONSTRAINT orders_pkey PRIMARY KEY (id);\n";
        let fks = parse_foreign_keys(sql);
        assert_eq!(
            fks,
            vec![
                (
                    q("public.orders"),
                    "orders_customer_id_fkey".into(),
                    q("public.customers")
                ),
                (
                    QualifiedName {
                        schema: "Sales".into(),
                        table: "Line Items".into()
                    },
                    "fk \"x\"".into(),
                    q("public.orders")
                ),
            ]
        );
    }
}
