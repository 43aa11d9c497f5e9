//! The disaster-recovery plan, from measured data: for each data set (policy), its RTO
//! and RPO objectives against what the latest restore tests measured, RTO per phase, when
//! a restore was last verified, and which drills are overdue; then, per scenario, the
//! procedure to follow, linking the runbooks (docs/runbooks).
//!
//! The plan is what compliance files and what an incident responder opens first. It is
//! built only from the policies and their repositories' restore-test reports: a figure
//! that no drill measured is shown as not measured, never estimated. The layout follows
//! docs/DR-PLAN.md (the template a team can also fill by hand); the renders are compiled
//! templates, `core/templates/dr_plan.md` and `dr_plan.html`.

use askama::Template;
use chrono::{DateTime, Duration, Utc};

use crate::drill::report::{human_seconds, DrillReport, Verdict};
use crate::drill::store;
use crate::error::Result;
use crate::policy::Policy;
use crate::repository::Repository;

/// One data set of the plan.
#[derive(Debug, Clone)]
pub struct DataSet {
    /// The policy's name.
    pub name: String,
    /// What it backs up (kinds and schedules), one line.
    pub coverage: String,
    /// RTO objective, seconds.
    pub rto_objective: Option<f64>,
    /// RTO of the latest restore test, seconds.
    pub rto_measured: Option<f64>,
    /// RPO objective, seconds.
    pub rpo_objective: Option<f64>,
    /// RPO of the latest restore test, seconds.
    pub rpo_measured: Option<f64>,
    /// The latest restore test: id, start and verdict.
    pub latest: Option<(String, DateTime<Utc>, Verdict)>,
    /// When a restore last passed.
    pub last_verified: Option<DateTime<Utc>>,
    /// Wall time per phase of the latest test: name, seconds, counts for RTO.
    pub phases: Vec<(String, Option<f64>, bool)>,
    /// Why the latest drill is overdue (none: not overdue, or no drill schedule).
    pub overdue: Option<String>,
    /// What could not be read.
    pub problems: Vec<String>,
}

/// The whole plan.
#[derive(Debug, Clone)]
pub struct DrPlan {
    /// When it was generated.
    pub generated_at: DateTime<Utc>,
    /// Its data sets, in the order given.
    pub data_sets: Vec<DataSet>,
}

/// Output format of `pgvault dr-plan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Markdown, for a wiki or a repository.
    Markdown,
    /// One self-contained HTML page, to print or file.
    Html,
}

/// Build the plan for `policies` at `now`. A repository that cannot be read is a problem
/// listed in the plan, not an error: the plan must still say what is known.
pub async fn build(policies: &[Policy], now: DateTime<Utc>) -> DrPlan {
    let mut data_sets = Vec::new();
    for policy in policies {
        data_sets.push(data_set(policy, now).await);
    }
    DrPlan {
        generated_at: now,
        data_sets,
    }
}

async fn reports_of(policy: &Policy) -> Result<Vec<DrillReport>> {
    let repo = Repository::open(policy).await?;
    let mut reports = Vec::new();
    for stored in store::read_all(&repo).await? {
        if let Ok(r) = store::parse_report(&stored.id, &stored.json) {
            reports.push(r);
        }
    }
    reports.sort_by_key(|r| r.started_at);
    Ok(reports)
}

fn seconds(d: Duration) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

async fn data_set(policy: &Policy, now: DateTime<Utc>) -> DataSet {
    let cadence = policy.cadence(now);
    let mut problems = Vec::new();
    let reports = match reports_of(policy).await {
        Ok(r) => r,
        Err(e) => {
            problems.push(format!(
                "cannot read the restore-test reports: {}",
                crate::status::shown(&e.to_string(), None)
            ));
            Vec::new()
        }
    };
    let latest = reports.last();
    let last_verified = reports
        .iter()
        .rev()
        .find(|r| r.verdict == Verdict::Pass)
        .map(|r| r.started_at);
    let overdue = match (cadence.restore_test_interval, latest) {
        (Some(_), None) => Some("no restore test has run yet".to_string()),
        (Some(interval), Some(r)) if now - r.started_at > interval + cadence.grace => {
            Some(format!(
                "the latest ran {} ago; the schedule runs one every {}",
                human_seconds(seconds(now - r.started_at)),
                human_seconds(seconds(interval))
            ))
        }
        (None, None) => Some("no restore test has run, and none is scheduled".into()),
        _ => None,
    };
    let mut coverage = Vec::new();
    if let Some(s) = &policy.schedule {
        coverage.push(format!("logical backups `{}`", s.backup.expression()));
        if let Some(p) = &s.physical {
            coverage.push(format!(
                "base backups `{}` with WAL for point-in-time recovery",
                p.expression()
            ));
        }
        if let Some(p) = &s.physical_incremental {
            coverage.push(format!("incremental base backups `{}`", p.expression()));
        }
    } else {
        coverage.push("backups taken by hand or by an outside scheduler".into());
    }
    if let Some(expr) = policy
        .restore_test
        .as_ref()
        .and_then(|r| r.schedule.as_ref())
    {
        coverage.push(format!("restore tests `{}`", expr.expression()));
    }
    DataSet {
        name: policy.name.clone(),
        coverage: coverage.join("; "),
        rto_objective: cadence.rto_objective.map(seconds),
        rto_measured: latest.and_then(|r| r.rto.measured_seconds),
        rpo_objective: cadence.rpo_objective.map(seconds),
        rpo_measured: latest
            .and_then(|r| r.rpo.as_ref())
            .and_then(|p| p.objective.measured_seconds),
        latest: latest.map(|r| (r.id.clone(), r.started_at, r.verdict)),
        last_verified,
        phases: latest
            .map(|r| {
                r.phases
                    .iter()
                    .map(|p| (p.name.clone(), p.seconds, p.counts_for_rto))
                    .collect()
            })
            .unwrap_or_default(),
        overdue,
        problems,
    }
}

/// Render `plan` in `format`.
pub fn render(plan: &DrPlan, format: Format) -> String {
    let view = PlanView::new(plan);
    let rendered = match format {
        Format::Markdown => MarkdownPlan { plan: &view }.render(),
        Format::Html => HtmlPlan { plan: &view }.render(),
    };
    rendered.unwrap_or_else(|e| {
        tracing::error!("cannot render the DR plan: {e}");
        format!("The DR plan cannot be rendered: {e}\n")
    })
}

/// `templates/dr_plan.md`.
#[derive(Template)]
#[template(path = "dr_plan.md")]
struct MarkdownPlan<'a> {
    plan: &'a PlanView,
}

/// `templates/dr_plan.html`.
#[derive(Template)]
#[template(path = "dr_plan.html")]
struct HtmlPlan<'a> {
    plan: &'a PlanView,
}

/// The plan as the templates show it: every value a string.
struct PlanView {
    generated: String,
    all_met: bool,
    rows: Vec<RowView>,
}

struct RowView {
    name: String,
    coverage: String,
    rto_objective: String,
    rto_measured: String,
    rto_met: &'static str,
    rpo_objective: String,
    rpo_measured: String,
    rpo_met: &'static str,
    latest: String,
    last_verified: String,
    overdue: Option<String>,
    phases: Vec<(String, String, &'static str)>,
    problems: Vec<String>,
}

fn met(measured: Option<f64>, objective: Option<f64>) -> &'static str {
    match (measured, objective) {
        (Some(m), Some(o)) if m <= o => "met",
        (Some(_), Some(_)) => "MISSED",
        (None, Some(_)) => "not measured",
        _ => "no objective",
    }
}

fn secs(value: Option<f64>, absent: &str) -> String {
    value.map(human_seconds).unwrap_or_else(|| absent.into())
}

fn day(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

impl PlanView {
    fn new(plan: &DrPlan) -> PlanView {
        let rows: Vec<RowView> = plan
            .data_sets
            .iter()
            .map(|d| RowView {
                name: d.name.clone(),
                coverage: d.coverage.clone(),
                rto_objective: secs(d.rto_objective, "none set"),
                rto_measured: secs(d.rto_measured, "not measured"),
                rto_met: met(d.rto_measured, d.rto_objective),
                rpo_objective: secs(d.rpo_objective, "none set"),
                rpo_measured: secs(d.rpo_measured, "not measured"),
                rpo_met: met(d.rpo_measured, d.rpo_objective),
                latest: d
                    .latest
                    .as_ref()
                    .map(|(id, at, verdict)| format!("{verdict} on {} ({id})", day(*at)))
                    .unwrap_or_else(|| "none".into()),
                last_verified: d.last_verified.map(day).unwrap_or_else(|| "never".into()),
                overdue: d.overdue.clone(),
                phases: d
                    .phases
                    .iter()
                    .map(|(name, s, counts)| {
                        (
                            name.clone(),
                            secs(*s, "not reached"),
                            if *counts { "yes" } else { "no" },
                        )
                    })
                    .collect(),
                problems: d.problems.clone(),
            })
            .collect();
        let all_met = plan.data_sets.iter().zip(&rows).all(|(d, r)| {
            matches!(d.latest, Some((_, _, Verdict::Pass)))
                && r.rto_met == "met"
                && r.rpo_met == "met"
                && r.overdue.is_none()
                && r.problems.is_empty()
        });
        PlanView {
            generated: day(plan.generated_at),
            all_met,
            rows,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> DrPlan {
        let at = DateTime::parse_from_rfc3339("2026-12-01T04:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        DrPlan {
            generated_at: at,
            data_sets: vec![
                DataSet {
                    name: "orders".into(),
                    coverage: "logical backups `0 2 * * *`".into(),
                    rto_objective: Some(3600.0),
                    rto_measured: Some(1200.0),
                    rpo_objective: Some(86400.0),
                    rpo_measured: Some(90000.0),
                    latest: Some(("r1".into(), at, Verdict::Fail)),
                    last_verified: None,
                    phases: vec![("restore".into(), Some(1100.0), true)],
                    overdue: None,
                    problems: vec![],
                },
                DataSet {
                    name: "<billing>".into(),
                    coverage: String::new(),
                    rto_objective: None,
                    rto_measured: None,
                    rpo_objective: None,
                    rpo_measured: None,
                    latest: None,
                    last_verified: None,
                    phases: vec![],
                    overdue: Some("no restore test has run yet".into()),
                    problems: vec![],
                },
            ],
        }
    }

    #[test]
    fn the_plan_says_what_was_measured_and_what_was_missed() {
        let md = render(&plan(), Format::Markdown);
        assert!(
            md.contains("| orders | 1h 00m | 20m 00s | met | 1d 00h | 1d 01h | MISSED |"),
            "{md}"
        );
        assert!(md.contains("not measured"), "{md}");
        assert!(md.contains("no restore test has run yet"), "{md}");
        assert!(
            md.contains("runbooks/restore-to-a-point-in-time.md"),
            "{md}"
        );
        let html = render(&plan(), Format::Html);
        assert!(
            html.contains("&lt;billing&gt;"),
            "names are escaped: {html}"
        );
        assert!(html.contains("MISSED"), "{html}");
    }
}
