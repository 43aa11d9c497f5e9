//! Markdown and HTML renders of a drill report, for the people who read them.
//!
//! The JSON report is what machines and the hash chain rely on; compliance reviewers,
//! incident responders and operators read these two renders instead. Both are pure
//! functions of the [`DrillReport`]: no clock, no environment, no I/O. The same report
//! always renders to the same bytes, so the render digests recorded in the JSON stay
//! checkable. The HTML page is one self-contained file (inline CSS and SVG, no scripts,
//! nothing fetched from anywhere) so it opens offline years later and prints as it looks.
//!
//! The text is laid out by compiled templates in `core/templates`: `report.md`,
//! `report.html` and `trend.svg` (the charts, included by the page). This module only
//! turns a report into what they show: labelled fields, table rows and sentences
//! (`ReportView`) and the chart geometry (the `trend` submodule).
//!
//! Every piece of text that comes from the report (check names, SQL output, failure
//! reasons, policy names) is escaped for the format it lands in by the templates'
//! escapers (the `escape` submodule): a check named `<script>` shows up as text, and a
//! `|` in a value cannot break a Markdown table.

pub(crate) mod escape;
mod trend;

use askama::Template;
use chrono::{DateTime, Utc};

use super::report::{
    human_seconds, ChainLink, CheckResult, DrillReport, DrillTarget, HistoryPoint, ObjectiveResult,
    Phase, RpoResult, Status, TestedBackup, ToolVersions, Verdict,
};
use crate::units::human_bytes;
use escape::{escape_html, escape_markdown};
use trend::{trend_charts, TrendChart};

/// Shown where a value is absent.
const ABSENT: &str = "—";

// ---------------------------------------------------------------------------------------
// Public entry points
// ---------------------------------------------------------------------------------------

/// The report as Markdown: readable as plain text, and renders as tables on any
/// CommonMark/GFM viewer. Stored beside the JSON as `<id>.md`.
pub fn markdown(report: &DrillReport) -> String {
    let view = ReportView::new(report);
    MarkdownReport { report: &view }
        .render()
        .unwrap_or_else(|e| markdown_fallback(report, &e))
}

/// The report as one self-contained HTML5 page: a verdict banner, the failure reasons,
/// RTO/RPO against their objectives with a trend chart, and every detail of the drill.
/// Inline CSS and SVG only, so it reads offline and prints well. Stored as `<id>.html`.
pub fn html(report: &DrillReport) -> String {
    let view = ReportView::new(report);
    HtmlReport {
        report: &view,
        charts: trend_charts(report),
    }
    .render()
    .unwrap_or_else(|e| html_fallback(report, &e))
}

/// `templates/report.md` with its view.
#[derive(Template)]
#[template(path = "report.md")]
struct MarkdownReport<'a> {
    /// What the report shows.
    report: &'a ReportView<'a>,
}

/// `templates/report.html` (and the `trend.svg` it includes) with its view.
#[derive(Template)]
#[template(path = "report.html")]
struct HtmlReport<'a> {
    /// What the report shows.
    report: &'a ReportView<'a>,
    /// The RTO and RPO trend charts.
    charts: Vec<TrendChart>,
}

// Rendering a template into a String cannot fail on I/O, and nothing these templates
// print can fail either: every value is a string, a number or a `Display` that never
// errs, the filters below never return an error, and no runtime values are used. An
// error would therefore be a bug in this module. It must not panic a drill halfway (the
// JSON is the record and is stored regardless), and it must not pass unnoticed, so it is
// logged and the render becomes a short page that says so; its digest is recorded like
// any other, so the chain still verifies.

/// The Markdown stored when the template failed: the verdict and a pointer to the JSON.
fn markdown_fallback(report: &DrillReport, error: &askama::Error) -> String {
    tracing::error!(report = %report.id, "cannot render the Markdown report: {error}");
    format!(
        "# Restore drill: {} — {}\n\nThis Markdown render failed ({}). The JSON report \
         stored beside this file is complete.\n",
        escape_markdown(&report.policy),
        report.verdict,
        escape_markdown(&error.to_string())
    )
}

/// The HTML page stored when the template failed: the verdict and a pointer to the JSON.
fn html_fallback(report: &DrillReport, error: &askama::Error) -> String {
    tracing::error!(report = %report.id, "cannot render the HTML report: {error}");
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{} · restore drill of {}</title>\n</head>\n<body>\n<h1>{}</h1>\n\
         <p>This HTML render failed ({}). The JSON report stored beside this page is \
         complete.</p>\n</body>\n</html>\n",
        report.verdict,
        escape_html(&report.policy),
        report.verdict,
        escape_html(&error.to_string())
    )
}

/// Filters the templates call by name.
mod filters {
    use std::borrow::Borrow;
    use std::fmt::Display;

    use askama::filters::Safe;

    use super::escape::escape_markdown_block;

    /// Markdown that starts a paragraph or list item: escaped, and unable to turn into a
    /// heading, list or quote. Marked safe so the template's escaper does not escape it
    /// twice.
    #[askama::filter_fn]
    pub(super) fn md_block(
        value: impl Display,
        _: &dyn askama::Values,
    ) -> askama::Result<Safe<String>> {
        Ok(Safe(escape_markdown_block(&value.to_string())))
    }

    /// A chart position to one decimal, as SVG attributes carry them.
    #[askama::filter_fn]
    pub(super) fn coord(value: impl Borrow<f64>, _: &dyn askama::Values) -> askama::Result<String> {
        Ok(format!("{:.1}", value.borrow()))
    }
}

// ---------------------------------------------------------------------------------------
// What both renders show
// ---------------------------------------------------------------------------------------

/// A report as the templates see it: every figure, date and sentence already in words,
/// as plain (unescaped) text; the templates' escapers make it safe.
struct ReportView<'a> {
    /// Report id.
    id: &'a str,
    /// The policy tested.
    policy: &'a str,
    /// PASS or FAIL.
    verdict: Verdict,
    /// CSS class of the banner: `pass` or `fail`.
    verdict_class: &'static str,
    /// Report format version, for the footer.
    format_version: u32,
    /// When the drill started, to the second.
    started: String,
    /// The day it started, for the page title.
    started_date: String,
    /// Verdict, RTO and RPO on one line.
    summary: String,
    /// Id, policy, when, how long.
    drill_fields: Vec<Field>,
    /// Why it failed (empty on PASS).
    failures: Vec<String>,
    /// The backup restored (absent when none could be chosen).
    backup_fields: Option<Vec<Field>>,
    /// Where it was restored (absent when the target could not be set up).
    target_fields: Option<Vec<Field>>,
    /// Program versions.
    tool_fields: Vec<Field>,
    /// The timed phases.
    phases: Vec<PhaseRow>,
    /// How many checks passed, failed, were skipped or not reached.
    check_tally: String,
    /// Every check.
    checks: Vec<CheckRow>,
    /// RTO and RPO against their objectives, in that order.
    figures: [FigureView; 2],
    /// What the RTO measures.
    rto_explanation: String,
    /// What the RPO measures.
    rpo_explanation: &'static str,
    /// How the RPO came about (absent when it was not measured).
    rpo_fields: Option<Vec<Field>>,
    /// The previous reports of this policy.
    history: Vec<HistoryRow>,
    /// The link to the previous report as fields (absent for the first report).
    chain_fields: Option<Vec<Field>>,
    /// The link to the previous report in one sentence.
    chain_text: String,
}

impl<'a> ReportView<'a> {
    /// Everything the renders show of `report`.
    fn new(report: &'a DrillReport) -> ReportView<'a> {
        let no_rpo = ObjectiveResult::new(None, None);
        let rpo = report.rpo.as_ref().map_or(&no_rpo, |r| &r.objective);
        ReportView {
            id: &report.id,
            policy: &report.policy,
            verdict: report.verdict,
            verdict_class: verdict_class(report.verdict),
            format_version: report.format_version,
            started: timestamp(&report.started_at),
            started_date: report.started_at.format("%Y-%m-%d").to_string(),
            summary: summary_line(report),
            drill_fields: drill_fields(report),
            failures: failure_reasons(report),
            backup_fields: report.backup.as_ref().map(backup_fields),
            target_fields: report.target.as_ref().map(target_fields),
            tool_fields: tool_fields(&report.tools),
            phases: report.phases.iter().map(PhaseRow::new).collect(),
            check_tally: check_tally(&report.checks),
            checks: report.checks.iter().map(CheckRow::new).collect(),
            figures: [
                FigureView::new("RTO", "RTO — time to restore", &report.rto),
                FigureView::new("RPO", "RPO — data at risk", rpo),
            ],
            rto_explanation: rto_explanation(&report.phases),
            rpo_explanation: RPO_EXPLANATION,
            rpo_fields: report.rpo.as_ref().map(rpo_fields),
            history: report.history.iter().map(HistoryRow::new).collect(),
            chain_fields: report.previous.as_ref().map(chain_fields),
            chain_text: chain_text(report.previous.as_ref()),
        }
    }
}

/// One labelled value of a key/value table.
struct Field {
    /// What the value is.
    label: &'static str,
    /// The value, as plain text.
    value: String,
    /// Identifiers and digests, set in monospace.
    code: bool,
}

impl Field {
    /// Whether Markdown shows the value as a code span: an identifier or digest that
    /// fits in one (not empty, no backtick, pipe or control character). Anything else
    /// is escaped like plain text.
    fn code_span(&self) -> bool {
        self.code
            && !self.value.is_empty()
            && !self
                .value
                .contains(|c: char| c == '`' || c == '|' || c.is_control())
    }
}

/// A plain field.
fn field(label: &'static str, value: impl Into<String>) -> Field {
    Field {
        label,
        value: value.into(),
        code: false,
    }
}

/// A field holding an identifier or a digest.
fn code_field(label: &'static str, value: impl Into<String>) -> Field {
    Field {
        label,
        value: value.into(),
        code: true,
    }
}

/// A row of the phases table.
struct PhaseRow {
    /// CSS class by status.
    class: &'static str,
    /// `setup`, `verify`, …
    name: String,
    /// How it ended.
    status: Status,
    /// Wall time, human and raw.
    seconds: String,
    /// "yes" or "no".
    counts_for_rto: &'static str,
    /// What it did, or why it failed.
    detail: String,
}

impl PhaseRow {
    /// The row of `phase`.
    fn new(phase: &Phase) -> PhaseRow {
        PhaseRow {
            class: status_class(phase.status),
            name: phase.name.clone(),
            status: phase.status,
            seconds: optional_duration(phase.seconds),
            counts_for_rto: yes_no(phase.counts_for_rto),
            detail: phase.detail.clone(),
        }
    }
}

/// A row of the checks table.
struct CheckRow {
    /// CSS class by status.
    class: &'static str,
    /// `builtin`, `amcheck` or `sql`.
    kind: String,
    /// What is checked.
    name: String,
    /// The expectation.
    expected: String,
    /// What was found.
    actual: String,
    /// How it ended.
    status: Status,
}

impl CheckRow {
    /// The row of `check`.
    fn new(check: &CheckResult) -> CheckRow {
        CheckRow {
            class: status_class(check.status),
            kind: check.kind.clone(),
            name: check.name.clone(),
            expected: check.expected.clone(),
            actual: check.actual.clone(),
            status: check.status,
        }
    }
}

/// A row of the history table.
struct HistoryRow {
    /// CSS class by verdict (FAIL rows are tinted).
    class: &'static str,
    /// Report id.
    id: String,
    /// When that drill started.
    date: String,
    /// Its verdict.
    verdict: Verdict,
    /// Its RTO, human form.
    rto: String,
    /// Its RPO, human form.
    rpo: String,
}

impl HistoryRow {
    /// The row of an earlier report.
    fn new(point: &HistoryPoint) -> HistoryRow {
        HistoryRow {
            class: match point.verdict {
                Verdict::Pass => "verdict-pass",
                Verdict::Fail => "verdict-fail",
            },
            id: point.id.clone(),
            date: timestamp(&point.started_at),
            verdict: point.verdict,
            rto: optional_human(point.rto_seconds),
            rpo: optional_human(point.rpo_seconds),
        }
    }
}

/// RTO or RPO against its objective: a row of the Markdown table, a card of the page.
struct FigureView {
    /// "RTO" or "RPO".
    name: &'static str,
    /// The card's title.
    label: &'static str,
    /// Measured, human and raw ("1m 23s (83.2 s)"), or [`ABSENT`].
    measured: String,
    /// Measured, human form only, for the card.
    measured_human: String,
    /// The objective, human and raw, or "none set".
    objective: String,
    /// The objective, human form only, for the card.
    objective_human: String,
    /// "met", "not met", …
    met: &'static str,
    /// CSS class of the badge: `met`, `not-met` or `na`.
    badge_class: &'static str,
    /// The raw seconds under the card.
    raw: String,
}

impl FigureView {
    /// The figure `name` (card title `label`) of `result`.
    fn new(name: &'static str, label: &'static str, result: &ObjectiveResult) -> FigureView {
        let raw = match (result.measured_seconds, result.objective_seconds) {
            (Some(m), Some(o)) => {
                format!("{} measured, objective {}", raw_seconds(m), raw_seconds(o))
            }
            (Some(m), None) => format!("{} measured", raw_seconds(m)),
            (None, Some(o)) => format!("objective {}", raw_seconds(o)),
            (None, None) => String::new(),
        };
        FigureView {
            name,
            label,
            measured: optional_duration(result.measured_seconds),
            measured_human: optional_human(result.measured_seconds),
            objective: objective_text(result.objective_seconds),
            objective_human: optional_human(result.objective_seconds),
            met: met_word(result),
            badge_class: match result.met {
                Some(true) => "met",
                Some(false) => "not-met",
                None => "na",
            },
            raw,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Words and figures (plain, unescaped)
// ---------------------------------------------------------------------------------------

/// The recorded seconds, for readers who want the exact figure: "83.2 s", "14700 s".
fn raw_seconds(seconds: f64) -> String {
    if seconds.abs() < 100.0 {
        format!("{seconds:.1} s")
    } else {
        format!("{seconds:.0} s")
    }
}

/// Human and raw together: "1m 23s (83.2 s)".
fn human_with_raw(seconds: f64) -> String {
    format!("{} ({})", human_seconds(seconds), raw_seconds(seconds))
}

/// An optional duration with its raw seconds, or [`ABSENT`].
fn optional_duration(seconds: Option<f64>) -> String {
    seconds.map_or_else(|| ABSENT.to_string(), human_with_raw)
}

/// An optional duration in human form only, or [`ABSENT`] (for compact tables).
fn optional_human(seconds: Option<f64>) -> String {
    seconds.map_or_else(|| ABSENT.to_string(), human_seconds)
}

/// A timestamp as reviewers expect it: UTC, to the second, unambiguous.
fn timestamp(at: &DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// An optional timestamp, or [`ABSENT`].
fn optional_timestamp(at: Option<&DateTime<Utc>>) -> String {
    at.map_or_else(|| ABSENT.to_string(), timestamp)
}

/// A byte count for people with the exact figure beside it.
fn bytes_text(n: u64) -> String {
    format!("{} ({n} bytes)", human_bytes(n))
}

/// "yes" or "no".
fn yes_no(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "no"
    }
}

/// How long the whole drill took, seconds (setup and cleanup included).
fn drill_seconds(report: &DrillReport) -> f64 {
    (report.finished_at - report.started_at).num_milliseconds() as f64 / 1000.0
}

/// Whether a figure met its objective, in words.
fn met_word(result: &ObjectiveResult) -> &'static str {
    match (
        result.met,
        result.measured_seconds,
        result.objective_seconds,
    ) {
        (Some(true), _, _) => "met",
        (Some(false), _, _) => "not met",
        (None, None, _) => "not measured",
        (None, Some(_), None) => "no objective",
        (None, Some(_), Some(_)) => "not compared",
    }
}

/// An objective in words: "15m 00s (900 s)" or "none set".
fn objective_text(objective: Option<f64>) -> String {
    objective.map_or_else(|| "none set".to_string(), human_with_raw)
}

/// One figure for the summary line: "1m 23s vs objective 15m 00s (met)".
fn figure_summary(result: &ObjectiveResult) -> String {
    let Some(measured) = result.measured_seconds else {
        return "not measured".to_string();
    };
    match result.objective_seconds {
        Some(objective) => format!(
            "{} vs objective {} ({})",
            human_seconds(measured),
            human_seconds(objective),
            met_word(result)
        ),
        None => format!("{} (no objective set)", human_seconds(measured)),
    }
}

/// The RPO figure for the summary line.
fn rpo_summary(rpo: Option<&RpoResult>) -> String {
    rpo.map_or_else(
        || "not measured".to_string(),
        |r| figure_summary(&r.objective),
    )
}

/// Verdict, RTO and RPO on one line: what a reader needs before anything else.
fn summary_line(report: &DrillReport) -> String {
    format!(
        "{} · RTO {} · RPO {}",
        report.verdict,
        figure_summary(&report.rto),
        rpo_summary(report.rpo.as_ref())
    )
}

/// The phases that make up the RTO, e.g. "verify + restore + checks".
fn rto_phase_names(phases: &[Phase]) -> String {
    let names: Vec<&str> = phases
        .iter()
        .filter(|p| p.counts_for_rto)
        .map(|p| p.name.as_str())
        .collect();
    if names.is_empty() {
        "no phase".to_string()
    } else {
        names.join(" + ")
    }
}

/// What the RTO measures, in one sentence.
fn rto_explanation(phases: &[Phase]) -> String {
    format!(
        "RTO is the time from the start of the restore to proven data: the sum of {}. \
         Setting up a throwaway server and cleaning up are recorded but not counted.",
        rto_phase_names(phases)
    )
}

/// What the RPO measures, in one sentence.
const RPO_EXPLANATION: &str = "RPO is the most data the policy's backups could have lost: \
     the largest gap between consecutive successful backups in the window, counting the gap \
     from the newest backup to the drill.";

/// A count of checks by outcome: "12 checks: 11 passed, 1 failed, 0 skipped, 0 not reached".
fn check_tally(checks: &[CheckResult]) -> String {
    let count = |status: Status| checks.iter().filter(|c| c.status == status).count();
    format!(
        "{} checks: {} passed, {} failed, {} skipped, {} not reached",
        checks.len(),
        count(Status::Passed),
        count(Status::Failed),
        count(Status::Skipped),
        count(Status::NotReached)
    )
}

/// The failure reasons to show: the recorded ones, or a note when a FAIL has none.
fn failure_reasons(report: &DrillReport) -> Vec<String> {
    if !report.failures.is_empty() {
        return report.failures.clone();
    }
    match report.verdict {
        Verdict::Fail => vec!["No reason was recorded.".to_string()],
        Verdict::Pass => Vec::new(),
    }
}

/// The link to the previous report in one sentence.
fn chain_text(previous: Option<&ChainLink>) -> String {
    match previous {
        Some(link) => format!(
            "Previous report: {}, whose JSON has sha256 {}.",
            link.id, link.sha256
        ),
        None => "This is the first report of this policy: there is no previous report to link to."
            .to_string(),
    }
}

/// CSS class of a verdict.
fn verdict_class(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Pass => "pass",
        Verdict::Fail => "fail",
    }
}

/// CSS class of a phase or check row by status.
fn status_class(status: Status) -> &'static str {
    match status {
        Status::Passed => "st-passed",
        Status::Failed => "st-failed",
        Status::Skipped => "st-skipped",
        Status::NotReached => "st-not-reached",
    }
}

/// The drill itself: id, policy, when, how long.
fn drill_fields(report: &DrillReport) -> Vec<Field> {
    vec![
        code_field("Report id", &report.id),
        field("Policy", &report.policy),
        field("Drill started", timestamp(&report.started_at)),
        field("Drill finished", timestamp(&report.finished_at)),
        field("Drill took", human_with_raw(drill_seconds(report))),
    ]
}

/// The backup that was restored.
fn backup_fields(backup: &TestedBackup) -> Vec<Field> {
    let mut fields = vec![
        code_field("Backup id", &backup.id),
        field("Picked", &backup.picked),
    ];
    // Only a drill against a copy says where it read from: the primary is the default.
    if let Some(copy) = &backup.from_copy {
        fields.push(field("Read from", format!("copy {copy}")));
    }
    fields.extend([
        field("Database", &backup.database),
        field("Server version", &backup.server_version),
        field("Backup started", timestamp(&backup.started_at)),
        field("Consistent as of", timestamp(&backup.consistent_at)),
        field("Stored size", bytes_text(backup.stored_bytes)),
        field("Dump size (plaintext)", bytes_text(backup.dump_bytes)),
        code_field("Stored sha256", &backup.dump_stored_sha256),
        code_field("Plaintext sha256", &backup.dump_plain_sha256),
    ]);
    fields
}

/// Where the backup was restored.
fn target_fields(target: &DrillTarget) -> Vec<Field> {
    let kept = if target.kept {
        "yes (the restored database was kept)"
    } else {
        "no (the restored database was dropped)"
    };
    vec![
        field("Kind", &target.kind),
        field("Server", &target.server),
        field("Database", &target.database),
        field("Server version", &target.server_version),
        field("Kept", kept),
    ]
}

/// The programs that took part.
fn tool_fields(tools: &ToolVersions) -> Vec<Field> {
    vec![
        field("pgvault", &tools.pgvault),
        field("pg_restore", &tools.pg_restore),
        field("Host", &tools.host),
    ]
}

/// How the RPO came about.
fn rpo_fields(rpo: &RpoResult) -> Vec<Field> {
    vec![
        field("Data age at drill", human_with_raw(rpo.data_age_seconds)),
        field("Worst gap (the RPO)", human_with_raw(rpo.worst_gap_seconds)),
        field(
            "Worst gap from",
            optional_timestamp(rpo.worst_gap_from.as_ref()),
        ),
        field(
            "Worst gap to",
            optional_timestamp(rpo.worst_gap_to.as_ref()),
        ),
        field("Window", human_with_raw(rpo.window_seconds)),
        field("Backups in window", rpo.backups_in_window.to_string()),
    ]
}

/// The link to the previous report, as fields.
fn chain_fields(link: &ChainLink) -> Vec<Field> {
    vec![
        code_field("Previous report", &link.id),
        code_field("Its JSON sha256", &link.sha256),
    ]
}

#[cfg(test)]
mod tests {
    use super::trend::FAIL_COLOR;
    use super::*;
    use crate::drill::report::{RenderDigests, REPORT_FORMAT_VERSION};

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn phase(name: &str, status: Status, seconds: Option<f64>, rto: bool) -> Phase {
        Phase {
            name: name.into(),
            status,
            seconds,
            counts_for_rto: rto,
            detail: format!("{name} done"),
        }
    }

    fn check(name: &str, expected: &str, actual: &str, status: Status) -> CheckResult {
        CheckResult {
            kind: "builtin".into(),
            name: name.into(),
            expected: expected.into(),
            actual: actual.into(),
            status,
        }
    }

    fn point(
        id: &str,
        when: &str,
        verdict: Verdict,
        rto: Option<f64>,
        rpo: Option<f64>,
    ) -> HistoryPoint {
        HistoryPoint {
            id: id.into(),
            started_at: at(when),
            verdict,
            rto_seconds: rto,
            rpo_seconds: rpo,
        }
    }

    const SCRIPT_NAME: &str = "<script>alert(1)</script>";

    fn sample_pass() -> DrillReport {
        DrillReport {
            format_version: REPORT_FORMAT_VERSION,
            id: "20240501T120000Z-0a1b2c3d".into(),
            policy: "orders-prod".into(),
            started_at: at("2024-05-01T12:00:00Z"),
            finished_at: at("2024-05-01T12:02:10Z"),
            verdict: Verdict::Pass,
            failures: vec![],
            backup: Some(TestedBackup {
                id: "20240501T020000Z-ffee0011".into(),
                picked: "latest".into(),
                database: "orders".into(),
                server_version: "16.2".into(),
                started_at: at("2024-05-01T02:00:00Z"),
                consistent_at: at("2024-05-01T02:00:05Z"),
                stored_bytes: 1_288_490_188,
                dump_bytes: 4_294_967_296,
                dump_stored_sha256: "a".repeat(64),
                dump_plain_sha256: "b".repeat(64),
                from_copy: None,
            }),
            target: Some(DrillTarget {
                kind: "ephemeral".into(),
                server: "127.0.0.1:54329".into(),
                database: "orders_drill".into(),
                server_version: "PostgreSQL 16.2".into(),
                kept: false,
            }),
            tools: ToolVersions {
                pgvault: "0.1.0".into(),
                pg_restore: "pg_restore (PostgreSQL) 16.2".into(),
                host: "drill-runner-1".into(),
            },
            phases: vec![
                phase("setup", Status::Passed, Some(4.0), false),
                phase("verify", Status::Passed, Some(20.5), true),
                phase("restore", Status::Passed, Some(55.2), true),
                phase("checks", Status::Passed, Some(7.5), true),
                phase("cleanup", Status::Passed, Some(1.0), false),
            ],
            checks: vec![
                check("row count public.orders", "= 1000", "1000", Status::Passed),
                check("rows | count", "> 0", "12\n13", Status::Passed),
                check(SCRIPT_NAME, "= 'x'", "x", Status::Passed),
                check("amcheck", "installed", "not installed", Status::Skipped),
            ],
            rto: ObjectiveResult::new(Some(83.2), Some(900.0)),
            rpo: Some(RpoResult {
                objective: ObjectiveResult::new(Some(14_700.0), Some(86_400.0)),
                data_age_seconds: 35_995.0,
                worst_gap_seconds: 14_700.0,
                worst_gap_from: Some(at("2024-04-30T14:00:00Z")),
                worst_gap_to: Some(at("2024-04-30T18:05:00Z")),
                window_seconds: 7.0 * 86_400.0,
                backups_in_window: 28,
            }),
            history: vec![
                point(
                    "20240401T120000Z-1",
                    "2024-04-01T12:00:00Z",
                    Verdict::Pass,
                    Some(70.0),
                    Some(12_000.0),
                ),
                point(
                    "20240408T120000Z-2",
                    "2024-04-08T12:00:00Z",
                    Verdict::Fail,
                    Some(1_200.0),
                    None,
                ),
                point(
                    "20240415T120000Z-3",
                    "2024-04-15T12:00:00Z",
                    Verdict::Pass,
                    None,
                    Some(15_000.0),
                ),
            ],
            previous: Some(ChainLink {
                id: "20240415T120000Z-3".into(),
                sha256: "c".repeat(64),
            }),
            renders: RenderDigests::default(),
        }
    }

    fn sample_fail() -> DrillReport {
        let mut report = sample_pass();
        report.id = "20240502T120000Z-deadbeef".into();
        report.verdict = Verdict::Fail;
        report.failures = vec![
            "check row count public.orders: expected = 1000, found 999".into(),
            "RTO 25m 00s exceeds objective 15m 00s".into(),
        ];
        report.phases[3] = phase("checks", Status::Failed, Some(30.0), true);
        report.phases[4] = phase("cleanup", Status::NotReached, None, false);
        report.checks[0] = check("row count public.orders", "= 1000", "999", Status::Failed);
        report.checks.push(check(
            "sql: invoices balanced",
            "= 0",
            "",
            Status::NotReached,
        ));
        report.rto = ObjectiveResult::new(Some(1_500.0), Some(900.0));
        report.rpo = None;
        report.previous = None;
        report
    }

    /// The `<svg>…</svg>` fragments of a page.
    fn svgs(page: &str) -> Vec<&str> {
        page.split("<svg")
            .skip(1)
            .map(|rest| rest.split("</svg>").next().unwrap())
            .collect()
    }

    #[test]
    fn html_shows_verdict_and_every_check_name_escaped() {
        for report in [sample_pass(), sample_fail()] {
            let page = html(&report);
            assert!(page.starts_with("<!DOCTYPE html>"));
            let verdict = report.verdict.to_string();
            assert!(page.contains(&format!("<div class=\"verdict\">{verdict}</div>")));
            for c in &report.checks {
                assert!(
                    page.contains(&escape_html(&c.name)),
                    "missing check {}",
                    c.name
                );
            }
            assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
            assert!(!page.contains(SCRIPT_NAME));
        }
    }

    #[test]
    fn html_is_self_contained() {
        for report in [sample_pass(), sample_fail()] {
            let page = html(&report);
            assert!(page.contains("<svg"));
            assert!(page.contains("<style>"));
            for forbidden in [
                "http://",
                "https://",
                "<script",
                "src=",
                "href=",
                "url(",
                "@import",
                "@font-face",
            ] {
                assert!(
                    !page.to_lowercase().contains(forbidden),
                    "found {forbidden}"
                );
            }
        }
    }

    #[test]
    fn html_banner_and_badges_follow_verdict() {
        let pass = html(&sample_pass());
        assert!(pass.contains("<header class=\"banner pass\">"));
        assert!(pass.contains("Policy orders-prod"));
        assert!(pass.contains("Restore drill of 2024-05-01 12:00:00 UTC"));
        assert!(pass.contains("<span class=\"badge met\">met</span>"));
        assert!(!pass.contains("class=\"failures\""));

        let fail = html(&sample_fail());
        assert!(fail.contains("<header class=\"banner fail\">"));
        assert!(fail.contains("class=\"failures\""));
        assert!(fail.contains("expected = 1000, found 999"));
        assert!(fail.contains("<span class=\"badge not-met\">not met</span>"));
        assert!(fail
            .contains("<tr class=\"st-failed\"><td>builtin</td><td>row count public.orders</td>"));
        assert!(fail.contains("<tr class=\"st-not-reached\"><td>cleanup</td>"));
        assert!(fail.contains("The RPO was not measured in this drill."));
    }

    #[test]
    fn chart_has_history_plus_current_points_and_red_fails() {
        let page = html(&sample_pass());
        let charts = svgs(&page);
        assert_eq!(charts.len(), 2);
        // RTO: 4 drills, one without a value; RPO: 4 drills, one without a value.
        assert_eq!(charts[0].matches("<circle").count(), 3);
        assert_eq!(charts[1].matches("<circle").count(), 3);
        assert!(charts[0].contains(&format!("fill=\"{FAIL_COLOR}\"")));
        assert!(charts[0].contains(">n/a</text>"));
        assert!(charts[0].contains("this drill"));
    }

    #[test]
    fn objective_line_appears_only_when_set() {
        let report = sample_pass();
        let page = html(&report);
        for chart in svgs(&page) {
            assert!(chart.contains("stroke-dasharray"));
        }
        assert!(page.contains("objective 15m 00s"));
        assert!(page.contains("objective 1d 00h"));
        let md = markdown(&report);
        assert!(md.contains("RTO 1m 23s vs objective 15m 00s (met)"));
        assert!(md.contains("RPO 4h 05m vs objective 1d 00h (met)"));

        let mut none = sample_pass();
        none.rto = ObjectiveResult::new(Some(83.2), None);
        none.rpo = None;
        let page = html(&none);
        for chart in svgs(&page) {
            assert!(!chart.contains("stroke-dasharray"));
        }
        assert!(markdown(&none).contains("RTO 1m 23s (no objective set)"));
    }

    #[test]
    fn empty_history_renders_one_point_per_chart() {
        let mut report = sample_pass();
        report.history.clear();
        let page = html(&report);
        let charts = svgs(&page);
        assert_eq!(charts.len(), 2);
        for chart in charts {
            assert_eq!(chart.matches("<circle").count(), 1);
            assert!(!chart.contains("<polyline"));
            // The middle of the plot area.
            assert!(chart.contains("cx=\"227.0\""));
        }
        assert!(page.contains("1 drill on 2024-05-01"));
    }

    #[test]
    fn fail_without_rpo_or_history_still_renders() {
        let mut report = sample_fail();
        report.history.clear();
        report.backup = None;
        report.target = None;
        let page = html(&report);
        let charts = svgs(&page);
        assert_eq!(charts[0].matches("<circle").count(), 1);
        assert!(charts[0].contains(&format!("fill=\"{FAIL_COLOR}\"")));
        assert_eq!(charts[1].matches("<circle").count(), 0);
        assert!(charts[1].contains("not measured"));
        assert!(page.contains("No backup could be chosen."));
        let md = markdown(&report);
        assert!(md.contains("No backup could be chosen."));
        assert!(md.contains("The RPO was not measured in this drill."));
    }

    #[test]
    fn markdown_has_all_sections_and_escapes_cells() {
        let md = markdown(&sample_pass());
        assert!(md.starts_with("# Restore drill: orders-prod — PASS\n"));
        for heading in [
            "## Backup tested",
            "## Restored to",
            "## Tool versions",
            "## Phases",
            "## Checks",
            "## RTO and RPO",
            "## History",
            "## Chain",
        ] {
            assert!(md.contains(heading), "missing {heading}");
        }
        assert!(!md.contains("## Why it failed"));
        assert!(md.contains("| builtin | rows \\| count | > 0 | 12<br>13 | passed |"));
        assert!(md.contains("\\<script>alert(1)\\</script>"));
        assert!(md.contains("| Stored sha256 | `aaaa"));
        assert!(md.contains("1.2 GiB (1288490188 bytes)"));
        assert!(
            md.contains("| 20240408T120000Z-2 | 2024-04-08 12:00:00 UTC | FAIL | 20m 00s | — |")
        );
        assert!(md.contains(&format!(
            "Previous report: 20240415T120000Z-3, whose JSON has sha256 {}.",
            "c".repeat(64)
        )));
        // Every table row has the same number of unescaped pipes as its header.
        for line in md
            .lines()
            .filter(|l| l.starts_with("| Kind | Name") || l.starts_with("| builtin"))
        {
            assert_eq!(line.replace("\\|", "").matches('|').count(), 6, "{line}");
        }
    }

    #[test]
    fn markdown_fail_lists_reasons_and_first_report() {
        let md = markdown(&sample_fail());
        assert!(md.starts_with("# Restore drill: orders-prod — FAIL\n"));
        assert!(md.contains(
            "## Why it failed\n\n- check row count public.orders: expected = 1000, found 999\n"
        ));
        assert!(md.contains("| cleanup | not reached | — | no | cleanup done |"));
        assert!(md.contains("| builtin | row count public.orders | = 1000 | 999 | FAILED |"));
        assert!(md.contains("first report of this policy"));
        assert!(md.contains("RPO not measured"));
    }

    #[test]
    fn renders_are_deterministic() {
        let report = sample_fail();
        assert_eq!(html(&report), html(&report));
        assert_eq!(markdown(&report), markdown(&report));
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_seconds(4.25), "4.2s");
        assert_eq!(human_seconds(45.0), "45s");
        assert_eq!(human_seconds(59.6), "1m 00s");
        assert_eq!(human_seconds(83.0), "1m 23s");
        assert_eq!(human_seconds(14_700.0), "4h 05m");
        assert_eq!(human_seconds(2.0 * 86_400.0 + 3.0 * 3_600.0), "2d 03h");
        assert_eq!(human_seconds(f64::NAN), "n/a");
        assert_eq!(human_seconds(-90.0), "-1m 30s");
        assert_eq!(human_with_raw(83.2), "1m 23s (83.2 s)");
        assert_eq!(human_with_raw(14_700.0), "4h 05m (14700 s)");
    }

    #[test]
    fn fallbacks_escape_and_point_to_the_json() {
        let mut report = sample_fail();
        report.policy = SCRIPT_NAME.into();
        let error = askama::Error::custom(format!("broken {SCRIPT_NAME} | *x*"));
        let md = markdown_fallback(&report, &error);
        assert!(md.starts_with("# Restore drill: \\<script>alert(1)\\</script> — FAIL\n"));
        assert!(md.contains("broken \\<script>alert(1)\\</script> \\| \\*x\\*"));
        assert!(md.contains("The JSON report stored beside this file is complete."));
        let page = html_fallback(&report, &error);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(!page.contains(SCRIPT_NAME));
        assert!(page.contains("broken &lt;script&gt;alert(1)&lt;/script&gt; | *x*"));
        assert!(page.contains("The JSON report stored beside this page is complete."));
    }
}
