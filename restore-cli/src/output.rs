//! What the CLI prints: tables, summaries, progress, and one-line errors.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use pgvault_core::drill::report::{human_seconds, DrillReport, ObjectiveResult, Status};
use pgvault_core::logical::restore::{RestoreReport, TableCheck};
use pgvault_core::logical::verify::{Finding, VerifyReport};
use pgvault_core::pipeline::Progress;
use pgvault_core::repository::{BackupManifest, DamagedBackup};
use pgvault_core::units::human_bytes;

/// An error and its causes on one line, each cause once.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ").replace('\n', " ")
}

fn ratio(raw: u64, stored: u64) -> String {
    if stored == 0 {
        "-".into()
    } else {
        format!("{:.2}", raw as f64 / stored as f64)
    }
}

/// Peak resident memory of this process (VmHWM), in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The one-line result of a backup.
pub fn backup_summary(m: &BackupManifest, elapsed: Duration, peak_rss_kib: Option<u64>) -> String {
    let chain = match (m.chain_link(), m.physical.as_ref()) {
        (Some(link), _) => format!(
            "\nincremental {} on {} (chain from full {}: {} stored in all)",
            link.depth,
            link.parent,
            link.root,
            human_bytes(link.chain_stored_bytes)
        ),
        (None, Some(p)) => match &p.fallback_reason {
            Some(reason) => {
                format!("\nfull base backup: an incremental was asked for, but {reason}")
            }
            None => String::new(),
        },
        (None, None) => String::new(),
    };
    format!(
        "backup {} of {} complete: {} dump → {} stored (ratio {}) in {:.1}s, peak RSS {}{chain}",
        m.id,
        m.database,
        human_bytes(m.raw_size()),
        human_bytes(m.stored_size()),
        ratio(m.raw_size(), m.stored_size()),
        elapsed.as_secs_f64(),
        peak_rss_kib
            .map(|k| human_bytes(k * 1024))
            .unwrap_or_else(|| "unknown".into())
    )
}

/// A table for people: columns as wide as their widest cell (so a long database or
/// policy name never shifts the columns after it), two spaces between columns, no
/// borders, the columns in `right` aligned right, no trailing blanks. Each line starts
/// with the first column, so `grep ID` and `awk '{print $1}'` keep working.
pub(crate) fn human_table(headers: &[&str], rows: Vec<Vec<String>>, right: &[usize]) -> String {
    let mut table = comfy_table::Table::new();
    table
        .load_style(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(headers.to_vec());
    for row in rows {
        table.add_row(row);
    }
    let last = headers.len().saturating_sub(1);
    for (index, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, if index == last { 0 } else { 2 }));
        if right.contains(&index) {
            column.set_cell_alignment(comfy_table::CellAlignment::Right);
        }
    }
    let mut out = String::new();
    for line in table.lines() {
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// A backup's place in a chain, for `list`: `-` for logical backups, `full`, or
/// `+N on PARENT` for the Nth incremental after a full.
fn chain_cell(m: &BackupManifest) -> String {
    match (m.chain_link(), m.physical.is_some()) {
        (Some(link), _) => format!("+{} on {}", link.depth, link.parent),
        (None, true) => "full".into(),
        (None, false) => "-".into(),
    }
}

/// The `list` table.
pub fn backup_table(backups: &[BackupManifest], damaged: &[DamagedBackup]) -> String {
    if backups.is_empty() && damaged.is_empty() {
        return "no backups\n".into();
    }
    let rows = backups
        .iter()
        .map(|m| {
            vec![
                m.id.clone(),
                m.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                m.finished_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                m.database.clone(),
                chain_cell(m),
                m.server_version
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                human_bytes(m.raw_size()),
                human_bytes(m.stored_size()),
                ratio(m.raw_size(), m.stored_size()),
                format!("{:.1}s", m.duration_seconds()),
                m.encryption.recipients.join(","),
            ]
        })
        .collect();
    let mut out = human_table(
        &[
            "ID",
            "STARTED (UTC)",
            "FINISHED (UTC)",
            "DATABASE",
            "CHAIN",
            "SERVER",
            "RAW",
            "STORED",
            "RATIO",
            "DURATION",
            "RECIPIENTS",
        ],
        rows,
        &[6, 7, 8, 9],
    );
    for d in damaged {
        let _ = writeln!(out, "{}  DAMAGED: {}", d.id, d.reason);
    }
    out
}

/// The `prune` plan: every backup with KEEP/DELETE and its reasons, then leftovers.
pub fn prune_plan(plan: &pgvault_core::retention::prune::PrunePlan) -> String {
    let mut out = String::new();
    if let Some(stale) = &plan.retention.stale {
        let _ = writeln!(out, "warning: {stale}");
    }
    let rows = plan
        .retention
        .entries
        .iter()
        .map(|e| {
            let reasons: Vec<String> = e.reasons.iter().map(|r| r.to_string()).collect();
            vec![
                e.backup.id.clone(),
                e.backup.time.format("%Y-%m-%d %H:%M:%S").to_string(),
                match &e.backup.parent {
                    Some(parent) => format!("on {parent}"),
                    None => "-".into(),
                },
                if e.keep() { "KEEP" } else { "DELETE" }.to_string(),
                if reasons.is_empty() {
                    "-".to_string()
                } else {
                    reasons.join(", ")
                },
            ]
        })
        .collect();
    out.push_str(&human_table(
        &["ID", "STARTED (UTC)", "CHAIN", "ACTION", "REASONS"],
        rows,
        &[],
    ));
    for o in &plan.orphans {
        let _ = writeln!(
            out,
            "orphan {} ({} object(s) without a manifest; {}): REMOVE",
            o.id,
            o.keys.len(),
            o.reason
        );
    }
    for u in &plan.stale_uploads {
        let _ = writeln!(
            out,
            "stale upload {} ({}; {}): ABORT",
            u.upload.key, u.upload.upload_id, u.reason
        );
    }
    if plan.recent_leftovers > 0 {
        let _ = writeln!(
            out,
            "{} leftover(s) left alone (a backup may be running: its lease is alive, or it has none and is younger than orphan_min_age)",
            plan.recent_leftovers
        );
    }
    let (locked_wal, locked_other): (Vec<_>, Vec<_>) = plan
        .locked
        .iter()
        .partition(|(what, _)| what.starts_with("WAL "));
    for (what, lock) in locked_other {
        let _ = writeln!(out, "{what}: locked ({lock}): KEEP until the lock ends");
    }
    if let Some((_, last)) = locked_wal.last() {
        let _ = writeln!(
            out,
            "WAL: {} archived file(s) no longer needed but still locked (the newest: {last}): KEEP until their locks end",
            locked_wal.len()
        );
    }
    if !plan.gaps_to_delete.is_empty() {
        let _ = writeln!(
            out,
            "WAL gaps: {} record(s) before the oldest retained base backup: DELETE",
            plan.gaps_to_delete.len()
        );
    }
    if !plan.wal_to_delete.is_empty() {
        let _ = writeln!(
            out,
            "WAL: {} archived file(s) older than the oldest retained base backup: DELETE ({} .. {})",
            plan.wal_to_delete.len(),
            plan.wal_to_delete.first().and_then(|k| k.rsplit('/').next()).unwrap_or("-"),
            plan.wal_to_delete.last().and_then(|k| k.rsplit('/').next()).unwrap_or("-"),
        );
    }
    out
}

/// What one object's lock amounts to at `now`: `locked`, `expired`, `none` or `error`.
fn lock_state(
    lock: &Result<Option<pgvault_core::storage::ObjectLock>, pgvault_core::Error>,
    now: chrono::DateTime<chrono::Utc>,
) -> &'static str {
    match lock {
        Err(_) => "error",
        Ok(None) => "none",
        Ok(Some(l)) if l.in_effect(now) => "locked",
        Ok(Some(_)) => "expired",
    }
}

/// The verdict of a verify report, as `verify --json` words it.
fn verify_verdict(report: &VerifyReport) -> &'static str {
    if report.damaged() {
        "failed"
    } else if report.incomplete() {
        "incomplete"
    } else {
        "passed"
    }
}

/// The `verify --json` document (docs/CLI-JSON.md).
pub fn verify_json(report: &VerifyReport, now: chrono::DateTime<chrono::Utc>) -> String {
    use serde_json::{json, Map, Value};
    let objects: Vec<Value> = report
        .objects
        .iter()
        .map(|o| {
            let (result, detail) = match (&o.outcome, o.finding()) {
                (Ok(detail), _) => ("ok", detail.clone()),
                (Err(e), Finding::Unknown) => ("error", e.to_string()),
                (Err(e), _) => ("failed", e.to_string()),
            };
            json!({ "role": o.role, "key": o.key, "result": result, "detail": detail })
        })
        .collect();
    let locks: Vec<Value> = report
        .locks
        .iter()
        .map(|l| {
            let mut entry = Map::new();
            entry.insert("key".into(), json!(l.key));
            entry.insert("state".into(), json!(lock_state(&l.lock, now)));
            match &l.lock {
                Ok(Some(lock)) => {
                    if let Some(mode) = lock.mode {
                        entry.insert("mode".into(), json!(mode.to_string()));
                    }
                    if let Some(until) = lock.retain_until {
                        entry.insert(
                            "retain_until".into(),
                            json!(until.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
                        );
                    }
                    entry.insert("legal_hold".into(), json!(lock.legal_hold));
                }
                Ok(None) => {
                    entry.insert("legal_hold".into(), json!(false));
                }
                Err(e) => {
                    entry.insert("error".into(), json!(e.to_string()));
                }
            }
            Value::Object(entry)
        })
        .collect();
    let document = json!({
        "backup": report.backup_id,
        "deep": report.deep,
        "verdict": verify_verdict(report),
        "objects": objects,
        "locks": locks,
    });
    serde_json::to_string_pretty(&document).unwrap_or_default()
}

/// The `verify` locks section: each object's lock, and whether all are locked now.
fn lock_lines(out: &mut String, report: &VerifyReport, now: chrono::DateTime<chrono::Utc>) {
    if report.locks.iter().all(|l| matches!(l.lock, Ok(None))) {
        let _ = writeln!(
            out,
            "object locks: none (no object has a retention or legal hold)"
        );
        return;
    }
    let _ = writeln!(out, "object locks:");
    for l in &report.locks {
        let (word, detail) = match &l.lock {
            Err(e) => ("ERROR", e.to_string()),
            Ok(None) => ("NONE", "no retention, no legal hold".to_string()),
            Ok(Some(lock)) => (
                if lock.in_effect(now) {
                    "LOCKED"
                } else {
                    "EXPIRED"
                },
                lock.describe(),
            ),
        };
        let _ = writeln!(out, "  {word:<7} {} — {detail}", l.key);
    }
    let locked: Vec<_> = report
        .locks
        .iter()
        .filter_map(|l| l.lock.as_ref().ok().and_then(|o| o.as_ref()))
        .filter(|l| l.in_effect(now))
        .collect();
    if !report.locks.is_empty() && locked.len() == report.locks.len() {
        let earliest = locked
            .iter()
            .filter(|l| !l.legal_hold)
            .filter_map(|l| l.retain_until)
            .min();
        let _ = writeln!(
            out,
            "immutable: all {} object(s) are locked{}",
            locked.len(),
            earliest
                .map(|t| format!(
                    ", the first lock ends {}",
                    t.format("%Y-%m-%d %H:%M:%S UTC")
                ))
                .unwrap_or_default()
        );
    } else {
        let _ = writeln!(
            out,
            "not immutable: {} of {} object(s) are locked now",
            locked.len(),
            report.locks.len()
        );
    }
}

/// The `verify` result.
pub fn verify_summary(report: &VerifyReport, now: chrono::DateTime<chrono::Utc>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "verify {} ({}):",
        report.backup_id,
        if report.deep {
            "stored bytes and contents"
        } else {
            "stored bytes only; pass --identity to check contents"
        }
    );
    let _ = writeln!(out, "  encrypted to {}", report.recipients.join(", "));
    for o in &report.objects {
        match (&o.outcome, o.finding()) {
            (Ok(detail), _) => {
                let _ = writeln!(out, "  OK    {:<13} {} — {detail}", o.role, o.key);
            }
            (Err(e), Finding::Unknown) => {
                let _ = writeln!(out, "  ERROR {:<13} {} — {e}", o.role, o.key);
            }
            (Err(e), _) => {
                let _ = writeln!(out, "  FAIL  {:<13} {} — {e}", o.role, o.key);
            }
        }
    }
    lock_lines(&mut out, report, now);
    let unknown = report
        .objects
        .iter()
        .filter(|o| o.finding() == Finding::Unknown)
        .count();
    let verdict = if report.damaged() {
        "verification FAILED".to_string()
    } else if unknown > 0 {
        format!("verification INCOMPLETE: could not read {unknown} object(s), so the backup's verdict is unknown; this is not a sign of corruption: retry when the repository is reachable")
    } else {
        "verification PASSED".to_string()
    };
    let _ = writeln!(out, "{verdict}");
    out
}

/// One line per table: its row count in the backup's snapshot against the restore's.
fn count_lines(out: &mut String, tables: &[TableCheck]) {
    let show = |v: Option<i64>| v.map(|n| n.to_string()).unwrap_or_else(|| "missing".into());
    for t in tables {
        let _ = writeln!(
            out,
            "  {}  {:<40} expected {:>10}  restored {:>10}",
            if t.passed() { "OK  " } else { "FAIL" },
            t.table,
            show(t.expected),
            show(t.actual)
        );
    }
}

/// The `restore` result with the row-count comparison.
pub fn restore_summary(report: &RestoreReport, elapsed: Duration) -> String {
    let mut out = String::new();
    for w in &report.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    let _ = writeln!(out, "row counts against the backup's snapshot:");
    count_lines(&mut out, &report.tables);
    let failed = report.tables.iter().filter(|t| !t.passed()).count();
    if report.passed() {
        let _ = writeln!(
            out,
            "restore PASSED: backup {} restored into {}; {} table(s) verified in {:.1}s (restore {:.1}s, checks {:.1}s)",
            report.backup_id,
            report.target_database,
            report.tables.len(),
            elapsed.as_secs_f64(),
            report.restore_seconds,
            report.check_seconds
        );
    } else {
        let _ = writeln!(
            out,
            "restore FAILED: {failed} table(s) differ from the backup's snapshot; {} was left unchanged",
            report.target_database
        );
    }
    out
}

/// What `restore --table/--schema` prints when it is done.
pub fn tables_summary(
    report: &pgvault_core::logical::tables::TablesReport,
    elapsed: Duration,
) -> String {
    let mut out = String::new();
    for w in &report.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    for table in &report.left_present {
        let _ = writeln!(
            out,
            "  SKIP  {table}: present in {}, left as it is (--force replaces it)",
            report.target_database
        );
    }
    for fk in report.foreign_keys.iter().filter(|fk| !fk.kept) {
        let _ = writeln!(
            out,
            "  SKIP  foreign key {} on {} -> {}: the referenced table is neither restored nor in {}",
            fk.name, fk.table, fk.references, report.target_database
        );
    }
    let _ = writeln!(
        out,
        "row counts of the restored tables against the backup's snapshot:"
    );
    count_lines(&mut out, &report.restored);
    if report.passed() {
        let _ = writeln!(
            out,
            "table restore PASSED: {} table(s) of backup {} restored into {} in {:.1}s",
            report.restored.len(),
            report.backup_id,
            report.target_database,
            elapsed.as_secs_f64()
        );
    } else {
        let _ = writeln!(
            out,
            "table restore FAILED: the restored tables' rows differ from the backup's snapshot in {}",
            report.target_database
        );
    }
    out
}

/// Progress on a terminal (a spinner with bytes, rate and ratio, and percent and time
/// left when the size is expected), or a log line every [`crate::LOG_PROGRESS_EVERY`]
/// otherwise.
pub struct ProgressDisplay {
    stop: tokio_util::sync::CancellationToken,
    bar: Option<ProgressBar>,
    estimating: Option<tokio::task::AbortHandle>,
}

impl ProgressDisplay {
    /// Start showing `progress`.
    pub fn start(progress: Arc<Progress>, verb: &'static str) -> Self {
        Self::start_expecting(progress, verb, std::future::ready(None))
    }

    /// Start showing `progress`. On a terminal, `expected` runs in the background and,
    /// once it gives the raw bytes the run is expected to read, the line also shows the
    /// percent done and the time left ([`crate::eta`]); elsewhere it never runs, and logs
    /// keep to bytes and rate.
    pub fn start_expecting(
        progress: Arc<Progress>,
        verb: &'static str,
        expected: impl std::future::Future<Output = Option<u64>> + Send + 'static,
    ) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar
        });
        let mut pending = bar.is_some().then(|| tokio::spawn(expected));
        let estimating = pending.as_ref().map(tokio::task::JoinHandle::abort_handle);
        let bar_task = bar.clone();
        let stop_task = stop.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut expected_bytes = None;
            let tick = if bar_task.is_some() {
                Duration::from_millis(200)
            } else {
                crate::LOG_PROGRESS_EVERY
            };
            let mut interval = tokio::time::interval(tick);
            interval.tick().await;
            loop {
                tokio::select! {
                    _ = stop_task.cancelled() => break,
                    _ = interval.tick() => {}
                }
                if pending
                    .as_ref()
                    .is_some_and(tokio::task::JoinHandle::is_finished)
                {
                    if let Some(estimate) = pending.take() {
                        expected_bytes = estimate.await.ok().flatten();
                    }
                }
                let raw = progress.raw_bytes.load(Ordering::Relaxed);
                let stored = progress.stored_bytes.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64().max(0.001);
                let eta = crate::eta::describe(raw, expected_bytes, started.elapsed())
                    .map(|e| format!("{e}; "))
                    .unwrap_or_default();
                let msg = format!(
                    "{verb}: {eta}{} read, {}/s, {} stored, ratio {}",
                    human_bytes(raw),
                    human_bytes((raw as f64 / secs) as u64),
                    human_bytes(stored),
                    ratio(raw, stored)
                );
                match &bar_task {
                    Some(bar) => bar.set_message(msg),
                    None => tracing::info!("{msg}"),
                }
            }
        });
        ProgressDisplay {
            stop,
            bar,
            estimating,
        }
    }

    /// Stop and clear the display.
    pub fn finish(self) {
        self.stop.cancel();
        if let Some(estimating) = self.estimating {
            estimating.abort();
        }
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

fn objective_line(what: &str, o: &ObjectiveResult) -> String {
    let measured = o
        .measured_seconds
        .map(human_seconds)
        .unwrap_or_else(|| "not measured".into());
    match (o.objective_seconds, o.met) {
        (Some(obj), Some(true)) => {
            format!("{what} {measured} (objective {}: met)", human_seconds(obj))
        }
        (Some(obj), _) => format!(
            "{what} {measured} (objective {}: NOT MET)",
            human_seconds(obj)
        ),
        (None, _) => format!("{what} {measured} (no objective set)"),
    }
}

/// What `restore-test` prints: the verdict, why, the phases, failed checks, RTO/RPO and
/// where the report is.
pub fn drill_summary(report: &DrillReport, stored_key: &str, report_dir: Option<&Path>) -> String {
    let mut out = String::new();
    let backup = report
        .backup
        .as_ref()
        .map(|b| format!("backup {} ({})", b.id, b.picked))
        .unwrap_or_else(|| "no backup".into());
    let target = report
        .target
        .as_ref()
        .map(|t| format!("{} {} database {}", t.kind, t.server, t.database))
        .unwrap_or_else(|| "no target".into());
    let _ = writeln!(
        out,
        "restore test {} of policy {}: {}",
        report.id, report.policy, report.verdict
    );
    let _ = writeln!(out, "  {backup} restored to {target}");
    for p in &report.phases {
        let _ = writeln!(
            out,
            "  {:<8} {:<12} {:>10}  {}",
            p.name,
            p.status.to_string(),
            p.seconds.map(human_seconds).unwrap_or_else(|| "-".into()),
            p.detail
        );
    }
    let passed = report
        .checks
        .iter()
        .filter(|c| c.status == Status::Passed)
        .count();
    let _ = writeln!(out, "  checks: {passed} of {} passed", report.checks.len());
    for c in report.checks.iter().filter(|c| c.status != Status::Passed) {
        let _ = writeln!(
            out,
            "    {} {}: expected {}, got {}",
            c.status, c.name, c.expected, c.actual
        );
    }
    let _ = writeln!(out, "  {}", objective_line("RTO", &report.rto));
    match &report.rpo {
        Some(r) => {
            let _ = writeln!(
                out,
                "  {} (restored data age {})",
                objective_line("RPO", &r.objective),
                human_seconds(r.data_age_seconds)
            );
        }
        None => {
            let _ = writeln!(out, "  RPO not measured");
        }
    }
    for f in &report.failures {
        let _ = writeln!(out, "  FAIL: {f}");
    }
    let _ = writeln!(out, "  report: {stored_key} (and .json, .md)");
    if let Some(dir) = report_dir {
        let _ = writeln!(out, "  copies in {}", dir.display());
    }
    out
}

/// One report in `reports list --json`.
pub fn report_list_entry(r: &DrillReport) -> serde_json::Value {
    serde_json::json!({
        "id": r.id,
        "started_at": r.started_at,
        "verdict": r.verdict,
        "backup": r.backup.as_ref().map(|b| b.id.clone()),
        "target": r.target.as_ref().map(|t| t.kind.clone()),
        "rto_seconds": r.rto.measured_seconds,
        "rto_met": r.rto.met,
        "rpo_seconds": r.rpo.as_ref().and_then(|p| p.objective.measured_seconds),
        "rpo_met": r.rpo.as_ref().and_then(|p| p.objective.met),
        "failures": r.failures,
    })
}

/// The `reports list` table.
pub fn report_table(reports: &[DrillReport]) -> String {
    if reports.is_empty() {
        return "no restore-test reports\n".into();
    }
    let rows = reports
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                r.verdict.to_string(),
                r.backup
                    .as_ref()
                    .map(|b| b.id.clone())
                    .unwrap_or_else(|| "-".into()),
                r.target
                    .as_ref()
                    .map(|t| t.kind.clone())
                    .unwrap_or_else(|| "-".into()),
                r.rto
                    .measured_seconds
                    .map(human_seconds)
                    .unwrap_or_else(|| "-".into()),
                r.rpo
                    .as_ref()
                    .and_then(|p| p.objective.measured_seconds)
                    .map(human_seconds)
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    human_table(
        &[
            "ID",
            "STARTED (UTC)",
            "VERDICT",
            "BACKUP",
            "TARGET",
            "RTO",
            "RPO",
        ],
        rows,
        &[5, 6],
    )
}

/// What `pgvault check` prints.
pub fn archive_check(
    policy: &str,
    found: &pgvault_core::physical::archive_check::ArchiveCheck,
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "policy {policy}: repository reachable; {} archived WAL file(s) on timeline(s) {}",
        found.files,
        if found.timelines.is_empty() {
            "none".to_string()
        } else {
            found
                .timelines
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    if found.backups.is_empty() {
        let _ = writeln!(
            out,
            "  no physical base backups (take one with `pgvault backup --kind physical`)"
        );
    }
    for b in &found.backups {
        if b.missing.is_empty() {
            let _ = writeln!(
                out,
                "  OK    base backup {}: WAL continuous from {} to {} ({} segments)",
                b.backup,
                b.from,
                b.to.as_deref().unwrap_or("-"),
                b.segments
            );
        } else {
            let _ = writeln!(
                out,
                "  GAP   base backup {}: {} of {} segments missing, first {}; point-in-time recovery from it stops there",
                b.backup,
                b.missing.len(),
                b.segments,
                b.missing[0]
            );
        }
    }
    for gap in &found.gaps {
        let _ = writeln!(
            out,
            "  GAP   {gap}: point-in-time recovery cannot cross it; take a new base backup (record {})",
            gap.key
        );
    }
    if let Some(spool) = found.spool.as_ref().filter(|s| s.unreadable.is_some()) {
        let _ = writeln!(
            out,
            "  WARN  archive spool: cannot read it as this user: {}",
            spool.unreadable.as_deref().unwrap_or_default()
        );
    }
    if let Some(spool) = found.spool.as_ref().filter(|s| s.unreadable.is_none()) {
        let _ = writeln!(
            out,
            "  {} archive spool: {} file(s), {} waiting; pusher {}; last stored {}{}",
            if spool.status.last_error.is_some() {
                "WARN "
            } else {
                "OK   "
            },
            spool.backlog_files,
            human_bytes(spool.backlog_bytes),
            if spool.pusher_running {
                "running"
            } else {
                "idle"
            },
            spool.status.last_stored.as_deref().unwrap_or("nothing yet"),
            spool
                .status
                .last_error
                .as_deref()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default()
        );
        if spool.dropped_unrecorded > 0 {
            let _ = writeln!(
                out,
                "  GAP   {} segment(s) DROPPED by this host's spool (queue_full = \"drop\"), not yet recorded in the repository: point-in-time recovery cannot cross them",
                spool.dropped_unrecorded
            );
        }
    }
    if let Some(stream) = &found.stream {
        stream_lines(&mut out, stream, now);
    }
    match &found.archiver {
        Ok(a) if found.stream.is_some() => {
            if a.summarize_wal == Some(false) && found.incrementals_scheduled {
                let _ = writeln!(
                    out,
                    "  FAIL  summarize_wal is off, and the policy schedules incremental base backups: `pgvault archive setup --apply` turns it on (no restart)"
                );
            }
        }
        Ok(a) => {
            let lag = a
                .last_archived_at
                .map(|t| human_seconds((now - t).num_milliseconds() as f64 / 1000.0))
                .unwrap_or_else(|| "never".into());
            let _ = writeln!(
                out,
                "  {} source archiver: last archived {} ({lag} ago), writing {}, {} failure(s){}",
                if a.failing() { "FAIL " } else { "OK   " },
                a.last_archived_wal.as_deref().unwrap_or("nothing yet"),
                if a.current_wal.is_empty() {
                    "-"
                } else {
                    &a.current_wal
                },
                a.failed_count,
                match (&a.last_failed_wal, a.failing()) {
                    (Some(w), true) =>
                        format!("; the last attempt failed on {w}: see the server log"),
                    _ => String::new(),
                }
            );
            let _ = match (a.summarize_wal, found.incrementals_scheduled) {
                (Some(true), _) => writeln!(
                    out,
                    "  OK    summarize_wal is on: incremental base backups can be taken"
                ),
                (Some(false), true) => writeln!(
                    out,
                    "  FAIL  summarize_wal is off, and the policy schedules incremental base backups: they fall back to full ones or fail; `pgvault archive setup --apply` turns it on (no restart)"
                ),
                (Some(false), false) => writeln!(
                    out,
                    "  INFO  summarize_wal is off: incremental base backups are not possible until it is on (`pgvault archive setup --apply`)"
                ),
                (None, true) => writeln!(
                    out,
                    "  FAIL  the policy schedules incremental base backups, which need PostgreSQL {} or newer",
                    pgvault_core::physical::incremental::INCREMENTAL_MIN_MAJOR
                ),
                (None, false) => Ok(()),
            };
        }
        Err(e) => {
            let _ = writeln!(out, "  FAIL  source archiver: cannot read it: {e}");
        }
    }
    out
}

/// `check`'s lines about the WAL stream of a streaming policy.
fn stream_lines(
    out: &mut String,
    stream: &pgvault_core::physical::archive_check::StreamCheck,
    now: chrono::DateTime<chrono::Utc>,
) {
    let problems = stream.problems(now);
    let rpo = stream
        .rpo_seconds(now)
        .map(human_seconds)
        .unwrap_or_else(|| "unknown".into());
    let bound = if stream.receiver.is_some() {
        ""
    } else {
        " (at least: no receiver status on this host)"
    };
    let receiver = match &stream.receiver {
        Some(r) => format!(
            "receiver {}, stored up to {}, {} behind the source{}",
            if r.receiving && stream.receiver_running {
                "streaming"
            } else {
                "STOPPED"
            },
            r.stored_lsn.as_deref().unwrap_or("nothing yet"),
            r.lag_bytes.map(human_bytes).unwrap_or_else(|| "?".into()),
            r.last_error
                .as_deref()
                .filter(|_| !r.receiving)
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default()
        ),
        None => "no receiver has run on this host".into(),
    };
    let _ = writeln!(
        out,
        "  {} WAL stream (slot {}): RPO {rpo}{bound}; {receiver}",
        if problems.is_empty() {
            "OK   "
        } else {
            "FAIL "
        },
        stream.slot
    );
    if let Ok(Some(slot)) = &stream.slot_row {
        let _ = writeln!(
            out,
            "  {} slot {}: wal_status {}, {}; max_slot_wal_keep_size {}",
            if slot.wal_status == "lost" || slot.wal_status == "unreserved" {
                "FAIL "
            } else {
                "OK   "
            },
            stream.slot,
            slot.wal_status,
            slot.safe_wal_size
                .map(|b| format!(
                    "{} more WAL before it is lost",
                    human_bytes(b.max(0) as u64)
                ))
                .unwrap_or_else(|| "no bound".into()),
            match stream.max_slot_wal_keep_size {
                Some(-1) => "-1 (UNBOUNDED)".to_string(),
                Some(b) => human_bytes(b.max(0) as u64),
                None => "?".into(),
            }
        );
    }
    for problem in problems {
        let _ = writeln!(out, "  FAIL  {problem}");
    }
}

/// `check`'s lines for scratch databases left by interrupted restores or drills.
pub fn leftover_databases(found: &[pgvault_core::logical::restore::LeftoverDatabase]) -> String {
    let mut out = String::new();
    for d in found {
        let _ = writeln!(
            out,
            "  WARN  leftover database {} on {} from an interrupted restore or drill ({} session(s)); drop it when nothing uses it: DROP DATABASE {};",
            d.name,
            d.server,
            d.sessions,
            pgvault_core::postgres::quote_ident(&d.name)
        );
    }
    out
}

/// What `pgvault copy` did for one copy: one line of totals, then what was left out and
/// what failed.
pub fn copy_summary(report: &pgvault_core::copy::CopyReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "copy {} ({}): {} backup(s) copied, {} already there{}; {} WAL file(s) and {} other object(s) copied; {} written",
        report.copy,
        report.location,
        report.backups_copied.len(),
        report.backups_present,
        if report.backups_repaired.is_empty() {
            String::new()
        } else {
            format!(", {} repaired", report.backups_repaired.len())
        },
        report.wal_files_copied,
        report.other_objects_copied,
        human_bytes(report.bytes_copied)
    );
    for id in &report.backups_copied {
        let _ = writeln!(out, "  copied    {id}");
    }
    for id in &report.backups_repaired {
        let _ = writeln!(
            out,
            "  repaired  {id} (the copy held an object missing or damaged)"
        );
    }
    if report.objects_repaired > 0 {
        let _ = writeln!(
            out,
            "  {} object(s) in the copy had the wrong size or digest and were copied again",
            report.objects_repaired
        );
    }
    if !report.left_out.is_empty() {
        let _ = writeln!(
            out,
            "  not copied: {} backup(s) the copy's retention does not keep",
            report.left_out.len()
        );
    }
    for id in &report.damaged_in_source {
        let _ = writeln!(
            out,
            "  WARN  backup {id}: its manifest in the primary is damaged; not copied"
        );
    }
    for failure in &report.failures {
        let _ = writeln!(out, "  FAIL  {failure}");
    }
    out
}

/// One copy's line in `pgvault check`: up to date, lagging within `max_lag`, or behind.
pub fn copy_lag(
    lag: &pgvault_core::copy::lag::CopyLag,
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    let seconds = |d: chrono::Duration| human_seconds(d.num_milliseconds() as f64 / 1000.0);
    let mut out = String::new();
    let wal = format!(
        "WAL: primary at {}, copy at {}{}",
        lag.newest_wal_primary.as_deref().unwrap_or("none"),
        lag.newest_wal_copy.as_deref().unwrap_or("none"),
        match (lag.missing_wal, lag.wal_lag) {
            (0, _) => String::new(),
            (n, Some(age)) => format!(
                ", {n} file(s) missing, the oldest archived {} ago",
                seconds(age)
            ),
            (n, None) => format!(", {n} file(s) missing"),
        }
    );
    let status = if lag.behind() {
        "FAIL "
    } else if lag.missing.is_empty() {
        "OK   "
    } else {
        "LAG  "
    };
    let backups = match lag.newest_missing_age(now) {
        None => format!("{} backup(s), none missing", lag.backups_in_copy),
        Some(newest) => format!(
            "{} backup(s) missing (the newest finished {} ago); behind by {}, max_lag {}",
            lag.missing.len(),
            seconds(newest),
            seconds(lag.lag),
            seconds(lag.max_lag)
        ),
    };
    let _ = writeln!(
        out,
        "  {status} copy {} ({}): {backups}; {wal}",
        lag.copy, lag.location
    );
    if lag.behind() {
        let _ = writeln!(
            out,
            "        run `pgvault copy --all-missing --to {}`, and look at why the agent's copies fail",
            lag.copy
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_grow_with_their_widest_cell() {
        let rows = vec![
            vec!["a".to_string(), "x".repeat(40), "1.0 KiB".to_string()],
            vec!["bb".to_string(), "y".to_string(), "12.5 MiB".to_string()],
        ];
        let out = human_table(&["ID", "DATABASE", "SIZE"], rows, &[2]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[1].starts_with("a   "), "{out}");
        assert!(lines.iter().all(|l| !l.ends_with(' ')), "{out}");
        // The long name pushes the next column out instead of running into it, and the
        // sizes line up on the right.
        let size_end = lines[1].len();
        assert!(lines.iter().all(|l| l.len() == size_end), "{out}");
        assert!(lines[1].contains(&format!("{}  ", "x".repeat(40))), "{out}");
    }

    #[test]
    fn causes_are_joined_once() {
        let e = anyhow::anyhow!("inner problem").context("outer step");
        assert_eq!(one_line(&e), "outer step: inner problem");
    }

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
        assert_eq!(pgvault_core::units::human_age(90), "90s");
    }
}
