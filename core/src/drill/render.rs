//! Markdown and HTML renders of a drill report, for the people who read them.
//!
//! The JSON report is what machines and the hash chain rely on; compliance reviewers,
//! incident responders and operators read these two renders instead. Both are pure
//! functions of the [`DrillReport`]: no clock, no environment, no I/O. The same report
//! always renders to the same bytes, so the render digests recorded in the JSON stay
//! checkable. The HTML page is one self-contained file (inline CSS and SVG, no scripts,
//! nothing fetched from anywhere) so it opens offline years later and prints as it looks.
//!
//! Every piece of text that comes from the report (check names, SQL output, failure
//! reasons, policy names) is escaped for the format it lands in: a check named
//! `<script>` shows up as text, and a `|` in a value cannot break a Markdown table.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::report::{
    human_seconds, ChainLink, CheckResult, DrillReport, DrillTarget, HistoryPoint, ObjectiveResult,
    Phase, RpoResult, Status, TestedBackup, ToolVersions, Verdict,
};
use crate::units::human_bytes;

/// Shown where a value is absent.
const ABSENT: &str = "—";

// ---------------------------------------------------------------------------------------
// Public entry points
// ---------------------------------------------------------------------------------------

/// The report as Markdown: readable as plain text, and renders as tables on any
/// CommonMark/GFM viewer. Stored beside the JSON as `<id>.md`.
pub fn markdown(report: &DrillReport) -> String {
    let mut out = String::with_capacity(8 * 1024);
    md_header(&mut out, report);
    md_failures(&mut out, report);
    md_backup(&mut out, report.backup.as_ref());
    md_target(&mut out, report.target.as_ref(), &report.tools);
    md_phases(&mut out, &report.phases);
    md_checks(&mut out, &report.checks);
    md_objectives(&mut out, report);
    md_history(&mut out, &report.history);
    md_chain(&mut out, report.previous.as_ref());
    md_footer(&mut out, report);
    out
}

/// The report as one self-contained HTML5 page: a verdict banner, the failure reasons,
/// RTO/RPO against their objectives with a trend chart, and every detail of the drill.
/// Inline CSS and SVG only, so it reads offline and prints well. Stored as `<id>.html`.
pub fn html(report: &DrillReport) -> String {
    let mut out = String::with_capacity(32 * 1024);
    html_head(&mut out, report);
    out.push_str("<body>\n");
    html_banner(&mut out, report);
    html_failures(&mut out, report);
    html_objectives(&mut out, report);
    html_backup(&mut out, report.backup.as_ref());
    html_target(&mut out, report.target.as_ref(), &report.tools);
    html_phases(&mut out, &report.phases);
    html_checks(&mut out, &report.checks);
    html_history(&mut out, &report.history);
    html_chain(&mut out, report.previous.as_ref());
    html_footer(&mut out, report);
    out.push_str("</body>\n</html>\n");
    out
}

// ---------------------------------------------------------------------------------------
// Text shared by both renders (plain, unescaped)
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

/// A count of checks by outcome: "12 checks: 11 passed, 1 FAILED, 0 skipped, 0 not reached".
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

/// The text of the chain section.
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

/// One labelled value of a key/value table.
struct Field {
    /// What the value is.
    label: &'static str,
    /// The value, as plain text.
    value: String,
    /// Identifiers and digests, set in monospace.
    code: bool,
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
    vec![
        code_field("Backup id", &backup.id),
        field("Picked", &backup.picked),
        field("Database", &backup.database),
        field("Server version", &backup.server_version),
        field("Backup started", timestamp(&backup.started_at)),
        field("Consistent as of", timestamp(&backup.consistent_at)),
        field("Stored size", bytes_text(backup.stored_bytes)),
        field("Dump size (plaintext)", bytes_text(backup.dump_bytes)),
        code_field("Stored sha256", &backup.dump_stored_sha256),
        code_field("Plaintext sha256", &backup.dump_plain_sha256),
    ]
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

/// A phase as table cells: phase, status, seconds, counts for RTO, detail.
fn phase_cells(phase: &Phase) -> Vec<String> {
    vec![
        phase.name.clone(),
        phase.status.to_string(),
        optional_duration(phase.seconds),
        yes_no(phase.counts_for_rto).to_string(),
        phase.detail.clone(),
    ]
}

/// A check as table cells: kind, name, expected, actual, status.
fn check_cells(check: &CheckResult) -> Vec<String> {
    vec![
        check.kind.clone(),
        check.name.clone(),
        check.expected.clone(),
        check.actual.clone(),
        check.status.to_string(),
    ]
}

/// A previous report as table cells: id, date, verdict, RTO, RPO.
fn history_cells(point: &HistoryPoint) -> Vec<String> {
    vec![
        point.id.clone(),
        timestamp(&point.started_at),
        point.verdict.to_string(),
        optional_human(point.rto_seconds),
        optional_human(point.rpo_seconds),
    ]
}

/// A figure against its objective as table cells: figure, measured, objective, met.
fn objective_cells(name: &str, result: &ObjectiveResult) -> Vec<String> {
    vec![
        name.to_string(),
        optional_duration(result.measured_seconds),
        objective_text(result.objective_seconds),
        met_word(result).to_string(),
    ]
}

/// The RTO and RPO rows of the objectives table.
fn objective_rows(report: &DrillReport) -> Vec<Vec<String>> {
    let rpo = report
        .rpo
        .as_ref()
        .map_or_else(|| ObjectiveResult::new(None, None), |r| r.objective.clone());
    vec![
        objective_cells("RTO", &report.rto),
        objective_cells("RPO", &rpo),
    ]
}

// ---------------------------------------------------------------------------------------
// Markdown
// ---------------------------------------------------------------------------------------

/// Text made safe for a Markdown table cell or list item: `|` and other markup
/// characters are backslash-escaped, `<` cannot open raw HTML, and line breaks become
/// `<br>` so a multi-line value stays inside its cell.
fn escape_markdown(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push_str("<br>");
            }
            '\n' => out.push_str("<br>"),
            '\\' | '|' | '`' | '*' | '<' | '[' | '~' => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// Text made safe to start a paragraph or list item: like [`escape_markdown`], and a
/// leading `#`, `-`, `+` or `>` cannot turn it into a heading, list or quote.
fn escape_markdown_block(text: &str) -> String {
    let escaped = escape_markdown(text);
    if escaped.starts_with(['#', '-', '+', '>']) {
        format!("\\{escaped}")
    } else {
        escaped
    }
}

/// A field's value for Markdown: identifiers and digests in a code span when that is safe.
fn md_value(field: &Field) -> String {
    let plain_token = !field.value.is_empty()
        && !field
            .value
            .contains(|c: char| c == '`' || c == '|' || c.is_control());
    if field.code && plain_token {
        format!("`{}`", field.value)
    } else {
        escape_markdown(&field.value)
    }
}

/// A section heading.
fn md_heading(out: &mut String, title: &str) {
    let _ = writeln!(out, "## {title}\n");
}

/// A paragraph of plain text.
fn md_paragraph(out: &mut String, text: &str) {
    let _ = writeln!(out, "{}\n", escape_markdown_block(text));
}

/// A two-column key/value table.
fn md_fields(out: &mut String, fields: &[Field]) {
    out.push_str("| Field | Value |\n|---|---|\n");
    for f in fields {
        let _ = writeln!(out, "| {} | {} |", f.label, md_value(f));
    }
    out.push('\n');
}

/// A table with a header row; every cell is escaped.
fn md_table(out: &mut String, headers: &[&str], rows: &[Vec<String>]) {
    let _ = writeln!(out, "| {} |", headers.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(headers.len()));
    for row in rows {
        let cells: Vec<String> = row.iter().map(|c| escape_markdown(c)).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out.push('\n');
}

/// Title, summary line and the drill's own facts.
fn md_header(out: &mut String, report: &DrillReport) {
    let _ = writeln!(
        out,
        "# Restore drill: {} — {}\n\n**{}**\n",
        escape_markdown(&report.policy),
        report.verdict,
        escape_markdown(&summary_line(report))
    );
    md_fields(out, &drill_fields(report));
}

/// Why the drill failed, one reason per item.
fn md_failures(out: &mut String, report: &DrillReport) {
    let reasons = failure_reasons(report);
    if reasons.is_empty() {
        return;
    }
    md_heading(out, "Why it failed");
    for reason in &reasons {
        let _ = writeln!(out, "- {}", escape_markdown_block(reason));
    }
    out.push('\n');
}

/// The backup restored.
fn md_backup(out: &mut String, backup: Option<&TestedBackup>) {
    md_heading(out, "Backup tested");
    match backup {
        Some(b) => md_fields(out, &backup_fields(b)),
        None => md_paragraph(out, "No backup could be chosen."),
    }
}

/// The restore target and the program versions.
fn md_target(out: &mut String, target: Option<&DrillTarget>, tools: &ToolVersions) {
    md_heading(out, "Restored to");
    match target {
        Some(t) => md_fields(out, &target_fields(t)),
        None => md_paragraph(out, "The restore target could not be set up."),
    }
    md_heading(out, "Tool versions");
    md_fields(out, &tool_fields(tools));
}

/// The timed phases.
fn md_phases(out: &mut String, phases: &[Phase]) {
    md_heading(out, "Phases");
    if phases.is_empty() {
        md_paragraph(out, "No phase ran.");
        return;
    }
    let rows: Vec<Vec<String>> = phases.iter().map(phase_cells).collect();
    md_table(
        out,
        &["Phase", "Status", "Seconds", "Counts for RTO", "Detail"],
        &rows,
    );
}

/// Every check with what was expected and found.
fn md_checks(out: &mut String, checks: &[CheckResult]) {
    md_heading(out, "Checks");
    md_paragraph(out, &check_tally(checks));
    if checks.is_empty() {
        return;
    }
    let rows: Vec<Vec<String>> = checks.iter().map(check_cells).collect();
    md_table(
        out,
        &["Kind", "Name", "Expected", "Actual", "Status"],
        &rows,
    );
}

/// RTO and RPO against their objectives, and how the RPO came about.
fn md_objectives(out: &mut String, report: &DrillReport) {
    md_heading(out, "RTO and RPO");
    md_table(
        out,
        &["Figure", "Measured", "Objective", "Met"],
        &objective_rows(report),
    );
    md_paragraph(out, &rto_explanation(&report.phases));
    match &report.rpo {
        Some(rpo) => {
            md_paragraph(out, RPO_EXPLANATION);
            md_fields(out, &rpo_fields(rpo));
        }
        None => md_paragraph(out, "The RPO was not measured in this drill."),
    }
}

/// The previous reports of this policy.
fn md_history(out: &mut String, history: &[HistoryPoint]) {
    md_heading(out, "History");
    if history.is_empty() {
        md_paragraph(out, "No previous reports.");
        return;
    }
    let rows: Vec<Vec<String>> = history.iter().map(history_cells).collect();
    md_table(out, &["Report", "Date", "Verdict", "RTO", "RPO"], &rows);
}

/// The link to the previous report.
fn md_chain(out: &mut String, previous: Option<&ChainLink>) {
    md_heading(out, "Chain");
    md_paragraph(out, &chain_text(previous));
}

/// Format version and where the digests live.
fn md_footer(out: &mut String, report: &DrillReport) {
    let _ = writeln!(
        out,
        "_pgvault drill report format {}. The JSON stored beside this file records its \
         sha256 and the previous report's._",
        report.format_version
    );
}

// ---------------------------------------------------------------------------------------
// HTML
// ---------------------------------------------------------------------------------------

/// Text made safe for HTML content and attribute values.
fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// The page's only styles. System fonts, print colors kept, rows never split.
const STYLE: &str = r#"
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1000px; padding: 24px; color: #1f2328; background: #fff;
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
h2 { font-size: 19px; margin: 28px 0 10px; padding-bottom: 4px; border-bottom: 1px solid #d0d7de; }
p { margin: 8px 0; }
code { font: 12.5px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace;
  overflow-wrap: anywhere; }
.banner { display: flex; flex-wrap: wrap; align-items: center; gap: 12px 28px; padding: 20px 26px;
  border-radius: 8px; color: #fff; }
.banner.pass { background: #1a7f37; }
.banner.fail { background: #cf222e; }
.banner .verdict { font-size: 60px; font-weight: 800; letter-spacing: 3px; line-height: 1; }
.banner .policy { font-size: 24px; font-weight: 700; }
.banner .when, .banner .id { opacity: .95; }
.summary { font-size: 17px; font-weight: 600; margin: 16px 0; }
.failures { margin: 16px 0; padding: 10px 18px; border: 2px solid #cf222e; border-radius: 6px;
  background: #ffebe9; }
.failures h2 { margin: 4px 0 6px; border: 0; color: #a40e26; }
.failures li { white-space: pre-wrap; overflow-wrap: anywhere; margin: 3px 0; }
table { width: 100%; border-collapse: collapse; font-size: 14px; margin: 6px 0 10px; }
th, td { border: 1px solid #d0d7de; padding: 5px 8px; text-align: left; vertical-align: top; }
td { white-space: pre-wrap; overflow-wrap: anywhere; }
th { background: #f6f8fa; }
table.fields th { width: 28%; font-weight: 600; }
thead { display: table-header-group; }
.status { font-weight: 700; white-space: nowrap; }
tr.st-passed .status { color: #116329; }
tr.st-failed { background: #ffebe9; }
tr.st-failed .status { color: #a40e26; }
tr.st-skipped { background: #f6f8fa; color: #57606a; }
tr.st-not-reached { background: #fff8c5; color: #57606a; font-style: italic; }
tr.verdict-fail { background: #ffebe9; }
.cards { display: flex; flex-wrap: wrap; gap: 16px; margin: 10px 0; }
.card { flex: 1 1 300px; padding: 12px 16px; border: 1px solid #d0d7de; border-radius: 6px; }
.card .label { font-size: 13px; font-weight: 700; letter-spacing: .5px; text-transform: uppercase;
  color: #57606a; }
.card .value { font-size: 30px; font-weight: 800; }
.card .raw { color: #57606a; font-size: 13px; }
.badge { display: inline-block; padding: 1px 9px; border: 1px solid; border-radius: 10px;
  font-size: 13px; font-weight: 700; }
.badge.met { background: #dafbe1; color: #116329; border-color: #1a7f37; }
.badge.not-met { background: #ffebe9; color: #a40e26; border-color: #cf222e; }
.badge.na { background: #f6f8fa; color: #57606a; border-color: #d0d7de; }
.note { color: #57606a; font-size: 13px; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
figure.chart { flex: 1 1 380px; margin: 0; }
figure.chart svg { width: 100%; max-width: 520px; height: auto; }
figcaption { color: #57606a; font-size: 12.5px; }
footer { margin-top: 32px; color: #57606a; font-size: 12px; }
@media print {
  body { max-width: none; padding: 0; font-size: 10.5pt; }
  .banner, .failures, tr, .badge, .card, svg { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  tr, .card, figure.chart, .failures { break-inside: avoid; }
  h2 { break-after: avoid; }
}
"#;

/// Doctype, metadata, title and the inline style sheet.
fn html_head(out: &mut String, report: &DrillReport) {
    let title = format!(
        "{} · restore drill of {} · {}",
        report.verdict,
        report.policy,
        report.started_at.format("%Y-%m-%d")
    );
    let _ = writeln!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>",
        escape_html(&title)
    );
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

/// The big green or red banner: verdict, policy, drill date, report id.
fn html_banner(out: &mut String, report: &DrillReport) {
    let _ = writeln!(
        out,
        "<header class=\"banner {}\">\n<div class=\"verdict\">{}</div>\n<div>\
         <div class=\"policy\">Policy {}</div>\
         <div class=\"when\">Restore drill of {}</div>\
         <div class=\"id\">Report {}</div></div>\n</header>",
        verdict_class(report.verdict),
        report.verdict,
        escape_html(&report.policy),
        escape_html(&timestamp(&report.started_at)),
        escape_html(&report.id)
    );
    let _ = writeln!(
        out,
        "<p class=\"summary\">{}</p>",
        escape_html(&summary_line(report))
    );
}

/// Why the drill failed, right under the banner.
fn html_failures(out: &mut String, report: &DrillReport) {
    let reasons = failure_reasons(report);
    if reasons.is_empty() {
        return;
    }
    out.push_str("<section class=\"failures\">\n<h2>Why it failed</h2>\n<ul>\n");
    for reason in &reasons {
        let _ = writeln!(out, "<li>{}</li>", escape_html(reason));
    }
    out.push_str("</ul>\n</section>\n");
}

/// Opens a section with its heading.
fn html_section(out: &mut String, title: &str) {
    let _ = writeln!(out, "<section>\n<h2>{}</h2>", escape_html(title));
}

/// A paragraph of plain text with a CSS class.
fn html_paragraph(out: &mut String, class: &str, text: &str) {
    let _ = writeln!(out, "<p class=\"{class}\">{}</p>", escape_html(text));
}

/// A two-column key/value table.
fn html_fields(out: &mut String, fields: &[Field]) {
    out.push_str("<table class=\"fields\">\n<tbody>\n");
    for f in fields {
        let value = if f.code {
            format!("<code>{}</code>", escape_html(&f.value))
        } else {
            escape_html(&f.value)
        };
        let _ = writeln!(
            out,
            "<tr><th scope=\"row\">{}</th><td>{value}</td></tr>",
            escape_html(f.label)
        );
    }
    out.push_str("</tbody>\n</table>\n");
}

/// A table row: a CSS class and its cells as plain text.
struct HtmlRow {
    /// CSS class of the row (may be empty).
    class: &'static str,
    /// Plain-text cells.
    cells: Vec<String>,
}

/// A table with a header row; every cell is escaped. The cell at `status_column` gets
/// the `status` class so the row's color can emphasise it.
fn html_table(out: &mut String, headers: &[&str], rows: &[HtmlRow], status_column: Option<usize>) {
    out.push_str("<table>\n<thead><tr>");
    for h in headers {
        let _ = write!(out, "<th scope=\"col\">{}</th>", escape_html(h));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in rows {
        let _ = write!(out, "<tr class=\"{}\">", row.class);
        for (i, cell) in row.cells.iter().enumerate() {
            let class = if Some(i) == status_column {
                " class=\"status\""
            } else {
                ""
            };
            let _ = write!(out, "<td{class}>{}</td>", escape_html(cell));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n");
}

/// The met / not met badge of a figure.
fn met_badge(result: &ObjectiveResult) -> String {
    let class = match result.met {
        Some(true) => "met",
        Some(false) => "not-met",
        None => "na",
    };
    format!(
        "<span class=\"badge {class}\">{}</span>",
        escape_html(met_word(result))
    )
}

/// One big figure: measured value, objective and badge, raw seconds underneath.
fn html_figure_card(out: &mut String, label: &str, result: &ObjectiveResult) {
    let measured = optional_human(result.measured_seconds);
    let raw = match (result.measured_seconds, result.objective_seconds) {
        (Some(m), Some(o)) => format!("{} measured, objective {}", raw_seconds(m), raw_seconds(o)),
        (Some(m), None) => format!("{} measured", raw_seconds(m)),
        (None, Some(o)) => format!("objective {}", raw_seconds(o)),
        (None, None) => String::new(),
    };
    let _ = writeln!(
        out,
        "<div class=\"card\"><div class=\"label\">{}</div><div class=\"value\">{}</div>\
         <div>objective {} {}</div><div class=\"raw\">{}</div></div>",
        escape_html(label),
        escape_html(&measured),
        escape_html(&optional_human(result.objective_seconds)),
        met_badge(result),
        escape_html(&raw)
    );
}

/// RTO and RPO as figures with badges, the RPO details and the trend charts.
fn html_objectives(out: &mut String, report: &DrillReport) {
    html_section(out, "RTO and RPO");
    out.push_str("<div class=\"cards\">\n");
    html_figure_card(out, "RTO — time to restore", &report.rto);
    let rpo = report
        .rpo
        .as_ref()
        .map_or_else(|| ObjectiveResult::new(None, None), |r| r.objective.clone());
    html_figure_card(out, "RPO — data at risk", &rpo);
    out.push_str("</div>\n");
    html_paragraph(out, "note", &rto_explanation(&report.phases));
    match &report.rpo {
        Some(r) => {
            html_paragraph(out, "note", RPO_EXPLANATION);
            html_fields(out, &rpo_fields(r));
        }
        None => html_paragraph(out, "note", "The RPO was not measured in this drill."),
    }
    html_trend(out, report);
    out.push_str("</section>\n");
}

/// The backup restored.
fn html_backup(out: &mut String, backup: Option<&TestedBackup>) {
    html_section(out, "Backup tested");
    match backup {
        Some(b) => html_fields(out, &backup_fields(b)),
        None => html_paragraph(out, "note", "No backup could be chosen."),
    }
    out.push_str("</section>\n");
}

/// The restore target and the program versions.
fn html_target(out: &mut String, target: Option<&DrillTarget>, tools: &ToolVersions) {
    html_section(out, "Restored to");
    match target {
        Some(t) => html_fields(out, &target_fields(t)),
        None => html_paragraph(out, "note", "The restore target could not be set up."),
    }
    out.push_str("</section>\n");
    html_section(out, "Tool versions");
    html_fields(out, &tool_fields(tools));
    out.push_str("</section>\n");
}

/// The timed phases, rows colored by status.
fn html_phases(out: &mut String, phases: &[Phase]) {
    html_section(out, "Phases");
    let rows: Vec<HtmlRow> = phases
        .iter()
        .map(|p| HtmlRow {
            class: status_class(p.status),
            cells: phase_cells(p),
        })
        .collect();
    if rows.is_empty() {
        html_paragraph(out, "note", "No phase ran.");
    } else {
        let headers = ["Phase", "Status", "Seconds", "Counts for RTO", "Detail"];
        html_table(out, &headers, &rows, Some(1));
    }
    out.push_str("</section>\n");
}

/// Every check, rows colored by status.
fn html_checks(out: &mut String, checks: &[CheckResult]) {
    html_section(out, "Checks");
    html_paragraph(out, "note", &check_tally(checks));
    let rows: Vec<HtmlRow> = checks
        .iter()
        .map(|c| HtmlRow {
            class: status_class(c.status),
            cells: check_cells(c),
        })
        .collect();
    if !rows.is_empty() {
        let headers = ["Kind", "Name", "Expected", "Actual", "Status"];
        html_table(out, &headers, &rows, Some(4));
    }
    out.push_str("</section>\n");
}

/// The previous reports of this policy, FAIL rows tinted.
fn html_history(out: &mut String, history: &[HistoryPoint]) {
    html_section(out, "History");
    let rows: Vec<HtmlRow> = history
        .iter()
        .map(|h| HtmlRow {
            class: match h.verdict {
                Verdict::Pass => "verdict-pass",
                Verdict::Fail => "verdict-fail",
            },
            cells: history_cells(h),
        })
        .collect();
    if rows.is_empty() {
        html_paragraph(out, "note", "No previous reports.");
    } else {
        let headers = ["Report", "Date", "Verdict", "RTO", "RPO"];
        html_table(out, &headers, &rows, None);
    }
    out.push_str("</section>\n");
}

/// The link to the previous report.
fn html_chain(out: &mut String, previous: Option<&ChainLink>) {
    html_section(out, "Chain");
    match previous {
        Some(link) => html_fields(
            out,
            &[
                code_field("Previous report", &link.id),
                code_field("Its JSON sha256", &link.sha256),
            ],
        ),
        None => html_paragraph(out, "", &chain_text(None)),
    }
    out.push_str("</section>\n");
}

/// Format version and where the digests live.
fn html_footer(out: &mut String, report: &DrillReport) {
    let text = format!(
        "pgvault drill report format {} · report {}. The JSON stored beside this page \
         records this page's sha256 and the previous report's.",
        report.format_version, report.id
    );
    let _ = writeln!(out, "<footer>{}</footer>", escape_html(&text));
}

// ---------------------------------------------------------------------------------------
// Trend charts (inline SVG)
// ---------------------------------------------------------------------------------------

/// Width of one chart, in SVG user units.
const CHART_W: f64 = 420.0;
/// Height of one chart.
const CHART_H: f64 = 240.0;
/// Left edge of the plot area (room for the y labels).
const PLOT_LEFT: f64 = 54.0;
/// Right edge of the plot area.
const PLOT_RIGHT: f64 = CHART_W - 20.0;
/// Top edge of the plot area (room for the title).
const PLOT_TOP: f64 = 34.0;
/// Bottom edge of the plot area (room for the date labels).
const PLOT_BOTTOM: f64 = CHART_H - 46.0;
/// Gap between the y axis and the first point, and the last point and the right edge.
const X_INSET: f64 = 24.0;
/// At most this many date labels under a chart.
const MAX_X_LABELS: usize = 8;
/// Color of FAIL points.
const FAIL_COLOR: &str = "#cf222e";
/// Color of the objective line.
const OBJECTIVE_COLOR: &str = "#9a6700";

/// Human-friendly y-axis steps, seconds: 1s … 30d.
const NICE_STEPS: [f64; 23] = [
    1.0,
    2.0,
    5.0,
    10.0,
    15.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    900.0,
    1_800.0,
    3_600.0,
    7_200.0,
    10_800.0,
    21_600.0,
    43_200.0,
    86_400.0,
    172_800.0,
    432_000.0,
    604_800.0,
    1_209_600.0,
    2_592_000.0,
];

/// The unit of one chart's y labels, chosen once per axis so labels compare at a glance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AxisUnit {
    /// "45s"
    Seconds,
    /// "12m"
    Minutes,
    /// "3h"
    Hours,
    /// "2d"
    Days,
}

impl AxisUnit {
    /// The unit that suits an axis going up to `top` seconds.
    fn for_span(top: f64) -> AxisUnit {
        if top <= 120.0 {
            AxisUnit::Seconds
        } else if top <= 7_200.0 {
            AxisUnit::Minutes
        } else if top <= 172_800.0 {
            AxisUnit::Hours
        } else {
            AxisUnit::Days
        }
    }

    /// Seconds in one unit.
    fn seconds(self) -> f64 {
        match self {
            AxisUnit::Seconds => 1.0,
            AxisUnit::Minutes => 60.0,
            AxisUnit::Hours => 3_600.0,
            AxisUnit::Days => 86_400.0,
        }
    }

    /// The label suffix.
    fn suffix(self) -> &'static str {
        match self {
            AxisUnit::Seconds => "s",
            AxisUnit::Minutes => "m",
            AxisUnit::Hours => "h",
            AxisUnit::Days => "d",
        }
    }
}

/// A y-axis label: "0", "45s", "12m", "1.5h", "2d".
fn axis_label(seconds: f64, unit: AxisUnit) -> String {
    if seconds.abs() < f64::EPSILON {
        return "0".to_string();
    }
    let x = seconds / unit.seconds();
    if (x - x.round()).abs() < 0.05 {
        format!("{:.0}{}", x.round(), unit.suffix())
    } else {
        format!("{x:.1}{}", unit.suffix())
    }
}

/// The y axis of one chart: from 0 to `top` seconds in ticks of `step`.
#[derive(Debug, Clone, Copy)]
struct YScale {
    /// The value at the top of the plot.
    top: f64,
    /// Distance between grid lines.
    step: f64,
    /// Unit of the labels.
    unit: AxisUnit,
}

impl YScale {
    /// A scale with a little headroom over `max`, in at most five friendly steps.
    fn fit(max: f64) -> YScale {
        let wanted = if max.is_finite() && max > 0.0 {
            max * 1.08
        } else {
            60.0
        };
        let step = NICE_STEPS
            .iter()
            .copied()
            .find(|s| wanted / s <= 5.0)
            .unwrap_or_else(|| (wanted / 5.0 / 86_400.0).ceil() * 86_400.0);
        let top = (wanted / step).ceil() * step;
        YScale {
            top,
            step,
            unit: AxisUnit::for_span(top),
        }
    }

    /// The grid values, 0 to top inclusive.
    fn ticks(&self) -> Vec<f64> {
        let n = (self.top / self.step).round() as usize;
        (0..=n).map(|i| i as f64 * self.step).collect()
    }

    /// Vertical position of `seconds`.
    fn y(&self, seconds: f64) -> f64 {
        let fraction = (seconds / self.top).clamp(0.0, 1.0);
        PLOT_BOTTOM - fraction * (PLOT_BOTTOM - PLOT_TOP)
    }
}

/// Horizontal position of the `index`-th of `count` drills (one drill sits in the middle).
fn x_position(index: usize, count: usize) -> f64 {
    if count <= 1 {
        return (PLOT_LEFT + PLOT_RIGHT) / 2.0;
    }
    let span = PLOT_RIGHT - PLOT_LEFT - 2.0 * X_INSET;
    PLOT_LEFT + X_INSET + index as f64 * span / (count - 1) as f64
}

/// One measured figure across drills.
struct Series<'a> {
    /// "RTO" or "RPO".
    name: &'a str,
    /// Line and point color.
    color: &'a str,
    /// The objective, seconds, if the policy sets one.
    objective: Option<f64>,
    /// One value per drill, in drill order (absent when not measured).
    values: Vec<Option<f64>>,
}

impl Series<'_> {
    /// The largest value or objective: what the y axis must reach.
    fn max(&self) -> f64 {
        self.values
            .iter()
            .flatten()
            .copied()
            .chain(self.objective)
            .fold(0.0, f64::max)
    }
}

/// A finite, non-negative value, or nothing.
fn plottable(value: Option<f64>) -> Option<f64> {
    value.filter(|v| v.is_finite()).map(|v| v.max(0.0))
}

/// Every drill of the policy, this one included, in start-time order.
fn trend_points(report: &DrillReport) -> Vec<HistoryPoint> {
    let mut points = report.history.clone();
    points.push(report.history_point());
    points.sort_by_key(|p| p.started_at);
    points
}

/// The RTO and RPO charts side by side.
fn html_trend(out: &mut String, report: &DrillReport) {
    let points = trend_points(report);
    let rto = Series {
        name: "RTO",
        color: "#0969da",
        objective: plottable(report.rto.objective_seconds),
        values: points.iter().map(|p| plottable(p.rto_seconds)).collect(),
    };
    let rpo = Series {
        name: "RPO",
        color: "#8250df",
        objective: plottable(
            report
                .rpo
                .as_ref()
                .and_then(|r| r.objective.objective_seconds),
        ),
        values: points.iter().map(|p| plottable(p.rpo_seconds)).collect(),
    };
    out.push_str("<h3>Trend</h3>\n<div class=\"charts\">\n");
    for series in [&rto, &rpo] {
        let _ = writeln!(
            out,
            "<figure class=\"chart\">{}<figcaption>{}</figcaption></figure>",
            trend_chart(&points, series, &report.id),
            escape_html(&chart_caption(&points, series))
        );
    }
    out.push_str("</div>\n");
}

/// What a chart shows, for its caption.
fn chart_caption(points: &[HistoryPoint], series: &Series) -> String {
    let range = match (points.first(), points.last()) {
        (Some(first), Some(last)) if points.len() > 1 => format!(
            "{} drills from {} to {}",
            points.len(),
            first.started_at.format("%Y-%m-%d"),
            last.started_at.format("%Y-%m-%d")
        ),
        (Some(only), _) => format!("1 drill on {}", only.started_at.format("%Y-%m-%d")),
        _ => "no drills".to_string(),
    };
    let objective = series.objective.map_or_else(
        || "No objective set.".to_string(),
        |o| format!("Dashed line: objective {}.", human_seconds(o)),
    );
    format!(
        "Measured {} of {range}. Red: FAIL. Ringed: this drill. {objective}",
        series.name
    )
}

/// One chart: grid, axes, objective line, the series and its points, date labels.
fn trend_chart(points: &[HistoryPoint], series: &Series, current_id: &str) -> String {
    let scale = YScale::fit(series.max());
    let mut svg = String::with_capacity(4 * 1024);
    svg_open(&mut svg, series);
    svg_grid(&mut svg, &scale);
    svg_axes(&mut svg);
    if let Some(objective) = series.objective {
        svg_objective(&mut svg, &scale, objective);
    }
    svg_lines(&mut svg, &scale, series);
    svg_markers(&mut svg, &scale, points, series, current_id);
    svg_x_labels(&mut svg, points, current_id);
    if series.values.iter().all(Option::is_none) {
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#57606a\">not measured</text>",
            (PLOT_LEFT + PLOT_RIGHT) / 2.0,
            (PLOT_TOP + PLOT_BOTTOM) / 2.0
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The `<svg>` element with its accessible title and the chart title.
fn svg_open(svg: &mut String, series: &Series) {
    let title = format!("{} per drill", series.name);
    let _ = writeln!(
        svg,
        "<svg viewBox=\"0 0 {CHART_W} {CHART_H}\" width=\"{CHART_W}\" height=\"{CHART_H}\" \
         role=\"img\" aria-label=\"{t}\" font-family=\"system-ui, sans-serif\" font-size=\"11\">\
         <title>{t}</title>",
        t = escape_html(&title)
    );
    let _ = writeln!(
        svg,
        "<text x=\"{PLOT_LEFT}\" y=\"18\" font-size=\"13\" font-weight=\"700\" fill=\"#1f2328\">{}</text>",
        escape_html(&title)
    );
}

/// Horizontal grid lines with their duration labels.
fn svg_grid(svg: &mut String, scale: &YScale) {
    for tick in scale.ticks() {
        let y = scale.y(tick);
        let _ = writeln!(
            svg,
            "<line x1=\"{PLOT_LEFT}\" y1=\"{y:.1}\" x2=\"{PLOT_RIGHT}\" y2=\"{y:.1}\" stroke=\"#eaeef2\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#57606a\">{}</text>",
            PLOT_LEFT - 6.0,
            y + 4.0,
            escape_html(&axis_label(tick, scale.unit))
        );
    }
}

/// The y and x axes.
fn svg_axes(svg: &mut String) {
    let _ = writeln!(
        svg,
        "<path d=\"M{PLOT_LEFT} {PLOT_TOP} V{PLOT_BOTTOM} H{PLOT_RIGHT}\" fill=\"none\" stroke=\"#8c959f\"/>"
    );
}

/// The objective as a dashed horizontal line, labelled.
fn svg_objective(svg: &mut String, scale: &YScale, objective: f64) {
    let y = scale.y(objective);
    let _ = writeln!(
        svg,
        "<line class=\"objective\" x1=\"{PLOT_LEFT}\" y1=\"{y:.1}\" x2=\"{PLOT_RIGHT}\" y2=\"{y:.1}\" \
         stroke=\"{OBJECTIVE_COLOR}\" stroke-width=\"1.5\" stroke-dasharray=\"6 4\"/>\
         <text x=\"{PLOT_RIGHT}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"{OBJECTIVE_COLOR}\" \
         stroke=\"#ffffff\" stroke-width=\"3\" paint-order=\"stroke\">objective {}</text>",
        y - 4.0,
        escape_html(&human_seconds(objective))
    );
}

/// The series as lines joining consecutive measured drills; a drill without a value
/// breaks the line rather than inventing one.
fn svg_lines(svg: &mut String, scale: &YScale, series: &Series) {
    let count = series.values.len();
    let mut segment: Vec<String> = Vec::new();
    for (i, value) in series.values.iter().enumerate() {
        match value {
            Some(v) => segment.push(format!("{:.1},{:.1}", x_position(i, count), scale.y(*v))),
            None => svg_polyline(svg, &mut segment, series.color),
        }
    }
    svg_polyline(svg, &mut segment, series.color);
}

/// Draws and empties a run of points when it has at least two.
fn svg_polyline(svg: &mut String, segment: &mut Vec<String>, color: &str) {
    if segment.len() >= 2 {
        let _ = writeln!(
            svg,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>",
            segment.join(" ")
        );
    }
    segment.clear();
}

/// A tooltip for one drill's point.
fn point_tooltip(point: &HistoryPoint, series: &Series, value: Option<f64>) -> String {
    format!(
        "{} · {} · {} · {} {}",
        point.id,
        timestamp(&point.started_at),
        point.verdict,
        series.name,
        optional_human(value)
    )
}

/// One dot per measured drill (red for FAIL, ringed for this drill), and "n/a" where a
/// drill has no value.
fn svg_markers(
    svg: &mut String,
    scale: &YScale,
    points: &[HistoryPoint],
    series: &Series,
    current_id: &str,
) {
    let count = points.len();
    for (i, (point, value)) in points.iter().zip(&series.values).enumerate() {
        let x = x_position(i, count);
        let fill = match point.verdict {
            Verdict::Pass => series.color,
            Verdict::Fail => FAIL_COLOR,
        };
        let tooltip = escape_html(&point_tooltip(point, series, *value));
        let (radius, ring, ring_width) = if point.id == current_id {
            (6.0, "#1f2328", 2.0)
        } else {
            (4.0, "#ffffff", 1.0)
        };
        match value {
            Some(v) => {
                let _ = writeln!(
                    svg,
                    "<circle cx=\"{x:.1}\" cy=\"{:.1}\" r=\"{radius}\" fill=\"{fill}\" stroke=\"{ring}\" \
                     stroke-width=\"{ring_width}\"><title>{tooltip}</title></circle>",
                    scale.y(*v)
                );
            }
            None => {
                let _ = writeln!(
                    svg,
                    "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"{}\"><title>{tooltip}</title>n/a</text>",
                    PLOT_BOTTOM - 5.0,
                    if point.verdict == Verdict::Fail { FAIL_COLOR } else { "#8c959f" }
                );
            }
        }
    }
}

/// Dates under the points (thinned to at most [`MAX_X_LABELS`], always keeping the
/// newest), and "this drill" under the current one.
fn svg_x_labels(svg: &mut String, points: &[HistoryPoint], current_id: &str) {
    let count = points.len();
    let stride = count.div_ceil(MAX_X_LABELS).max(1);
    for (i, point) in points.iter().enumerate() {
        let x = x_position(i, count);
        let is_current = point.id == current_id;
        if is_current || (count - 1 - i).is_multiple_of(stride) {
            let _ = writeln!(
                svg,
                "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#57606a\">{}</text>",
                PLOT_BOTTOM + 16.0,
                escape_html(&point.started_at.format("%m-%d").to_string())
            );
        }
        if is_current {
            let _ = writeln!(
                svg,
                "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-weight=\"700\" fill=\"#1f2328\">this drill</text>",
                PLOT_BOTTOM + 30.0
            );
        }
    }
}

#[cfg(test)]
mod tests {
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
            assert!(chart.contains(&format!("cx=\"{:.1}\"", (PLOT_LEFT + PLOT_RIGHT) / 2.0)));
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
    fn escapes() {
        assert_eq!(
            escape_html("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(escape_markdown("a|b\r\nc\nd"), "a\\|b<br>c<br>d");
        assert_eq!(
            escape_markdown_block("# not a heading"),
            "\\# not a heading"
        );
        assert_eq!(escape_markdown("> 0"), "> 0");
        assert_eq!(escape_markdown("count(*) [x]"), "count(\\*) \\[x]");
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
    fn axis_scale_and_labels() {
        assert_eq!(axis_label(45.0, AxisUnit::Seconds), "45s");
        assert_eq!(axis_label(720.0, AxisUnit::Minutes), "12m");
        assert_eq!(axis_label(10_800.0, AxisUnit::Hours), "3h");
        assert_eq!(axis_label(172_800.0, AxisUnit::Days), "2d");
        assert_eq!(axis_label(5_400.0, AxisUnit::Hours), "1.5h");
        assert_eq!(axis_label(0.0, AxisUnit::Hours), "0");

        let scale = YScale::fit(83.2);
        assert!(scale.top >= 83.2 && scale.ticks().len() <= 6);
        assert_eq!(scale.unit, AxisUnit::Seconds);
        let scale = YScale::fit(1_200.0);
        assert_eq!(
            (scale.step, scale.top, scale.unit),
            (300.0, 1_500.0, AxisUnit::Minutes)
        );
        let scale = YScale::fit(86_400.0);
        assert_eq!(scale.unit, AxisUnit::Hours);
        assert!(scale.y(86_400.0) > PLOT_TOP);
        let empty = YScale::fit(0.0);
        assert_eq!((empty.top, empty.unit), (60.0, AxisUnit::Seconds));
        assert!(YScale::fit(1.0e9).ticks().len() <= 6);
    }
}
