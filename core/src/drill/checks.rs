//! Checks of a restored database beyond row counts: every index valid, every sequence
//! of the dump present, B-tree indexes consistent with their tables (amcheck), and the
//! policy's own SQL checks. Each returns a [`CheckResult`] with what was expected and
//! what was found; a check that cannot run is a failure, not a silent pass.

use tokio_postgres::{Client, SimpleQueryMessage};

use super::report::{CheckResult, Status};
use crate::policy::SqlCheck;
use crate::postgres::quote_literal;

const USER_SCHEMAS: &str =
    "n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg\\_toast%'";

fn result(kind: &str, name: &str, expected: &str, actual: String, passed: bool) -> CheckResult {
    CheckResult {
        kind: kind.into(),
        name: name.into(),
        expected: expected.into(),
        actual,
        status: if passed {
            Status::Passed
        } else {
            Status::Failed
        },
    }
}

fn db_error(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

fn name_list(names: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut text = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}

/// Every index of a user table is valid and ready (a failed `CREATE INDEX` during the
/// restore would leave one invalid).
pub async fn indexes_valid(client: &Client) -> CheckResult {
    let name = "indexes valid";
    let sql = format!(
        "select count(*), coalesce(array_agg(n.nspname || '.' || c.relname order by 1) \
         filter (where not (i.indisvalid and i.indisready)), '{{}}') \
         from pg_index i join pg_class c on c.oid = i.indexrelid \
         join pg_namespace n on n.oid = c.relnamespace where {USER_SCHEMAS}"
    );
    match client.query_one(&sql, &[]).await {
        Ok(row) => {
            let total: i64 = row.get(0);
            let invalid: Vec<String> = row.get(1);
            if invalid.is_empty() {
                result(
                    "builtin",
                    name,
                    "0 invalid",
                    format!("{total} index(es), all valid"),
                    true,
                )
            } else {
                result(
                    "builtin",
                    name,
                    "0 invalid",
                    format!("{} invalid: {}", invalid.len(), name_list(&invalid)),
                    false,
                )
            }
        }
        Err(e) => result(
            "builtin",
            name,
            "0 invalid",
            format!("query failed: {}", db_error(&e)),
            false,
        ),
    }
}

/// `schema.name` of every sequence in a dump's table of contents (`pg_restore --list`).
pub fn toc_sequences(toc: &str) -> Vec<String> {
    let mut out: Vec<String> = toc
        .lines()
        .filter(|l| !l.trim_start().starts_with(';'))
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            match words.as_slice() {
                [_, _, _, "SEQUENCE", schema, name, ..] if !matches!(*schema, "SET" | "OWNED") => {
                    Some(format!("{schema}.{name}"))
                }
                _ => None,
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Every sequence in the dump exists in the restored database.
pub async fn sequences_present(client: &Client, expected: &[String]) -> CheckResult {
    let name = "sequences present";
    let want = format!("{} from the dump", expected.len());
    let sql = format!(
        "select n.nspname || '.' || c.relname from pg_class c \
         join pg_namespace n on n.oid = c.relnamespace where c.relkind = 'S' and {USER_SCHEMAS}"
    );
    match client.query(&sql, &[]).await {
        Ok(rows) => {
            let present: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            let missing: Vec<String> = expected
                .iter()
                .filter(|s| !present.contains(s))
                .cloned()
                .collect();
            if missing.is_empty() {
                result(
                    "builtin",
                    name,
                    &want,
                    format!("{} present", present.len()),
                    true,
                )
            } else {
                result(
                    "builtin",
                    name,
                    &want,
                    format!("{} missing: {}", missing.len(), name_list(&missing)),
                    false,
                )
            }
        }
        Err(e) => result(
            "builtin",
            name,
            &want,
            format!("query failed: {}", db_error(&e)),
            false,
        ),
    }
}

/// `bt_index_check(index, heapallindexed => true)` on every valid B-tree index of a
/// table (relkind `i`; a partitioned table's index, relkind `I`, has no storage of its
/// own and is checked through its partitions' indexes): the index is structurally sound
/// and holds every row of its table. Skipped (not failed) when the server lacks the
/// amcheck extension or the role may not create it.
///
/// Only amcheck's corruption errors (SQLSTATE class XX: `index_corrupted`,
/// `data_corrupted`) fail the check. Any other error on an index ("not supported", no
/// permission, a lock timeout) says nothing about the data: that index is reported in a
/// separate skipped result with the reason, never as inconsistent.
pub async fn amcheck(client: &Client) -> Vec<CheckResult> {
    let name = "amcheck B-tree indexes";
    let expected = "every index consistent with its table";
    let skipped = |why: String| CheckResult {
        kind: "amcheck".into(),
        name: name.into(),
        expected: expected.into(),
        actual: why,
        status: Status::Skipped,
    };
    let available = client
        .query_opt(
            "select 1 from pg_available_extensions where name = 'amcheck'",
            &[],
        )
        .await;
    match available {
        Ok(Some(_)) => {}
        Ok(None) => {
            return vec![skipped(
                "the amcheck extension is not installed on this server".into(),
            )]
        }
        Err(e) => {
            return vec![skipped(format!(
                "cannot look up extensions: {}",
                db_error(&e)
            ))]
        }
    }
    if let Err(e) = client
        .batch_execute("create extension if not exists amcheck")
        .await
    {
        return vec![skipped(format!(
            "cannot create the amcheck extension: {}",
            db_error(&e)
        ))];
    }
    let sql = format!(
        "select c.oid, n.nspname || '.' || c.relname from pg_index i \
         join pg_class c on c.oid = i.indexrelid join pg_namespace n on n.oid = c.relnamespace \
         join pg_am a on a.oid = c.relam \
         where a.amname = 'btree' and c.relkind = 'i' and i.indisvalid and i.indisready \
         and c.relpersistence <> 't' and {USER_SCHEMAS} \
         order by 2"
    );
    let indexes = match client.query(&sql, &[]).await {
        Ok(rows) => rows,
        Err(e) => {
            return vec![skipped(format!("cannot list indexes: {}", db_error(&e)))];
        }
    };
    let mut corrupt = Vec::new();
    let mut unchecked = Vec::new();
    for row in &indexes {
        let oid: u32 = row.get(0);
        let index: String = row.get(1);
        let check = format!("select bt_index_check({oid}::oid::regclass, true)");
        if let Err(e) = client.batch_execute(&check).await {
            let is_corruption = e.code().is_some_and(|c| c.code().starts_with("XX"));
            if is_corruption {
                corrupt.push(format!("{index} ({})", db_error(&e)));
            } else {
                unchecked.push(format!("{index} ({})", db_error(&e)));
            }
        }
    }
    let checked = indexes.len() - unchecked.len();
    let mut results = vec![if corrupt.is_empty() {
        result(
            "amcheck",
            name,
            expected,
            format!("{checked} index(es) checked, all consistent"),
            true,
        )
    } else {
        result(
            "amcheck",
            name,
            expected,
            format!("{} inconsistent: {}", corrupt.len(), name_list(&corrupt)),
            false,
        )
    }];
    if !unchecked.is_empty() {
        results.push(CheckResult {
            kind: "amcheck".into(),
            name: "amcheck: indexes not checked".into(),
            expected: "amcheck can check every index".into(),
            actual: format!(
                "{} not checked (not corruption): {}",
                unchecked.len(),
                name_list(&unchecked)
            ),
            status: Status::Skipped,
        });
    }
    results
}

/// Run one of the policy's SQL checks, read-only and under `timeout_ms`, and compare
/// the first column of the first row (or the row count) with its expectation.
pub async fn sql_check(client: &Client, check: &SqlCheck, timeout_ms: i64) -> CheckResult {
    let expected = check.expect.to_string();
    let outcome = run_read_only(client, &check.sql, timeout_ms).await;
    let _ = client.batch_execute("rollback").await;
    match outcome {
        Ok((first, rows)) => {
            let (passed, actual) = check
                .expect
                .evaluate(first.as_ref().map(|v| v.as_deref()), rows);
            result("sql", &check.name, &expected, actual, passed)
        }
        Err(message) => result(
            "sql",
            &check.name,
            &expected,
            format!("error: {message}"),
            false,
        ),
    }
}

type FirstValue = Option<Option<String>>;

async fn run_read_only(
    client: &Client,
    sql: &str,
    timeout_ms: i64,
) -> Result<(FirstValue, usize), String> {
    client
        .batch_execute(&format!(
            "begin transaction read only; set local statement_timeout = {}",
            quote_literal(&timeout_ms.max(1).to_string())
        ))
        .await
        .map_err(|e| db_error(&e))?;
    let messages = client.simple_query(sql).await.map_err(|e| db_error(&e))?;
    let mut first: FirstValue = None;
    let mut rows = 0usize;
    for message in &messages {
        match message {
            SimpleQueryMessage::Row(row) => {
                if first.is_none() {
                    first = Some(row.get(0).map(str::to_string));
                }
                rows += 1;
            }
            // Only the first statement's result counts.
            SimpleQueryMessage::CommandComplete(_) => break,
            _ => {}
        }
    }
    Ok((first, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_are_read_from_the_toc() {
        let toc = ";\n; Archive created at 2026-11-28\n;\n\
            215; 1259 16390 SEQUENCE public orders_id_seq app\n\
            3380; 0 0 SEQUENCE OWNED BY public orders_id_seq app\n\
            3390; 0 0 SEQUENCE SET public orders_id_seq app\n\
            216; 1259 16391 TABLE public orders app\n\
            217; 1259 16392 SEQUENCE sales invoice_no app\n";
        assert_eq!(
            toc_sequences(toc),
            vec![
                "public.orders_id_seq".to_string(),
                "sales.invoice_no".to_string()
            ]
        );
    }

    #[test]
    fn long_name_lists_are_shortened() {
        let names: Vec<String> = (0..12).map(|i| format!("t{i}")).collect();
        assert!(name_list(&names).ends_with("t9 and 2 more"));
    }
}
