//! The status page as HTML: one self-contained page (inline CSS, no scripts, nothing
//! fetched), so it works offline, behind a proxy and printed. The layout is
//! `core/templates/status.html`; this module only turns [`StatusReport`]s into the
//! words, links and colours it shows. Every value is HTML-escaped by the template.
//!
//! Colour is never the only signal: every light also carries its word (OK, LATE, ALERT)
//! and a `data-light` attribute, which the browser test reads.

use askama::Template;
use chrono::{DateTime, Utc};

use super::{Light, PolicyOverview, StatusReport};
use crate::drill::report::human_seconds;

/// Shown where a value is absent.
const ABSENT: &str = "—";

/// The page for every policy (`single = false`) or one (`true`).
pub fn page(report: &StatusReport, single: bool) -> String {
    let view = PageView {
        title: if single {
            report
                .policies
                .first()
                .map(|p| format!("{} · pgvault status", p.name))
                .unwrap_or_else(|| "pgvault status".into())
        } else {
            "pgvault status".into()
        },
        light: report.light.into(),
        generated: when(report.generated_at),
        single,
        policies: report.policies.iter().map(PolicyView::new).collect(),
    };
    view.render().unwrap_or_else(|e| {
        tracing::error!("cannot render the status page: {e}");
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>pgvault status</title></head><body><p>The status page cannot be rendered ({}); /api/v1/status has the same data.</p></body></html>\n",
            crate::drill::render::escape::escape_html(&e.to_string())
        )
    })
}

/// A path segment, percent-encoded.
pub fn segment(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The URL of a stored report in `format` (`html`, `json`, `md`).
pub fn report_href(policy: &str, id: &str, format: &str) -> String {
    format!("/reports/{}/{}.{format}", segment(policy), segment(id))
}

fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn maybe_when(t: Option<DateTime<Utc>>) -> String {
    t.map(when).unwrap_or_else(|| ABSENT.into())
}

fn secs(s: Option<f64>) -> String {
    s.map(human_seconds).unwrap_or_else(|| ABSENT.into())
}

/// A light as the template shows it.
struct LightView {
    /// CSS class and `data-light`: grey, green, amber, red.
    class: &'static str,
    /// The word beside it.
    word: &'static str,
}

impl From<Light> for LightView {
    fn from(light: Light) -> LightView {
        LightView {
            class: match light {
                Light::Grey => "grey",
                Light::Green => "green",
                Light::Amber => "amber",
                Light::Red => "red",
            },
            word: light.word(),
        }
    }
}

/// `templates/status.html` with its view.
#[derive(Template)]
#[template(path = "status.html")]
struct PageView {
    title: String,
    light: LightView,
    generated: String,
    single: bool,
    policies: Vec<PolicyView>,
}

struct BackupView {
    kind: String,
    id: String,
    finished: String,
    age: String,
    expected: String,
    light: LightView,
}

struct TestView {
    id: String,
    href: String,
    verdict: String,
    started: String,
    rto: String,
    rto_objective: String,
    rpo: String,
    rpo_objective: String,
    overdue: bool,
    failures: Vec<String>,
    light: LightView,
}

struct TrendView {
    href: String,
    verdict: String,
    started: String,
    rto: String,
    rpo: String,
}

struct LinkView {
    id: String,
    started: String,
    verdict: String,
    links: Vec<(String, String)>,
}

struct PolicyView {
    name: String,
    href: String,
    light: LightView,
    problems: Vec<String>,
    backups: Vec<BackupView>,
    next_runs: Vec<(String, String)>,
    rpo_now: String,
    rpo_objective: String,
    backup_age: String,
    wal_lag: String,
    rpo_light: LightView,
    test: Option<TestView>,
    trend: Vec<TrendView>,
    kept: String,
    next_to_expire: String,
    retention_stale: Option<String>,
    chain_reports: usize,
    chain_intact: bool,
    chain_problems: Vec<String>,
    reports: Vec<LinkView>,
    last_run: String,
    last_error: Option<String>,
    failures_total: u64,
}

impl PolicyView {
    fn new(p: &PolicyOverview) -> PolicyView {
        let retention = p.retention.as_ref();
        PolicyView {
            name: p.name.clone(),
            href: format!("/policies/{}", segment(&p.name)),
            light: p.light.into(),
            problems: p.problems.clone(),
            backups: p
                .backups
                .iter()
                .map(|b| BackupView {
                    kind: b.kind.clone(),
                    id: b.id.clone().unwrap_or_else(|| "none yet".into()),
                    finished: maybe_when(b.finished_at),
                    age: secs(b.age_seconds),
                    expected: b
                        .expected_interval_seconds
                        .map(|s| format!("every {}", human_seconds(s)))
                        .unwrap_or_else(|| "not scheduled".into()),
                    light: b.light.into(),
                })
                .collect(),
            next_runs: p
                .next_runs
                .iter()
                .map(|r| (r.what.clone(), when(r.at)))
                .collect(),
            rpo_now: secs(p.rpo.now_seconds),
            rpo_objective: secs(p.rpo.objective_seconds),
            backup_age: secs(p.rpo.backup_age_seconds),
            wal_lag: secs(p.rpo.wal_lag_seconds),
            rpo_light: p.rpo.light.into(),
            test: p.restore_test.as_ref().map(|t| TestView {
                href: report_href(&p.name, &t.id, "html"),
                id: t.id.clone(),
                verdict: t.verdict.clone(),
                started: when(t.started_at),
                rto: secs(t.rto_seconds),
                rto_objective: secs(t.rto_objective_seconds),
                rpo: secs(t.rpo_seconds),
                rpo_objective: secs(t.rpo_objective_seconds),
                overdue: t.overdue,
                failures: t.failures.clone(),
                light: t.light.into(),
            }),
            trend: p
                .trend
                .iter()
                .map(|t| TrendView {
                    href: report_href(&p.name, &t.id, "html"),
                    verdict: t.verdict.clone(),
                    started: t.started_at.format("%Y-%m-%d").to_string(),
                    rto: secs(t.rto_seconds),
                    rpo: secs(t.rpo_seconds),
                })
                .collect(),
            kept: retention
                .map(|r| r.kept.to_string())
                .unwrap_or_else(|| "no [retention]".into()),
            next_to_expire: match retention {
                Some(r) if !r.next_to_expire.is_empty() => format!(
                    "{} at {}",
                    r.next_to_expire.join(", "),
                    maybe_when(r.expires_at)
                ),
                Some(_) => "nothing at the next backup".into(),
                None => ABSENT.into(),
            },
            retention_stale: retention.and_then(|r| r.stale.clone()),
            chain_reports: p.report_chain.reports,
            chain_intact: p.report_chain.intact,
            chain_problems: p.report_chain.problems.clone(),
            reports: p
                .reports
                .iter()
                .map(|r| LinkView {
                    id: r.id.clone(),
                    started: maybe_when(r.started_at),
                    verdict: r.verdict.clone(),
                    links: r
                        .formats
                        .iter()
                        .map(|f| (f.to_uppercase(), report_href(&p.name, &r.id, f)))
                        .collect(),
                })
                .collect(),
            last_run: match (p.agent.last_attempt, p.agent.last_attempt_ok) {
                (Some(at), Some(true)) => format!("{}: succeeded", when(at)),
                (Some(at), Some(false)) => format!("{}: FAILED", when(at)),
                (Some(at), None) => format!("{}: running", when(at)),
                (None, _) => "none since the agent started".into(),
            },
            last_error: p.agent.last_error.clone(),
            failures_total: p.agent.failures_total,
        }
    }
}
