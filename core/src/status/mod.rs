//! The status page and its JSON API: what ops, incident responders and compliance see at
//! a glance about each policy, without reading logs or running commands.
//!
//! [`overview`] gathers, for one policy, what the agent knows live (its last run, its
//! errors, the WAL lag it watches) and what the repository holds (the newest backup of
//! each kind, retention, the restore-test reports and their hash chain), and judges each
//! against the policy's [`Cadence`]: a traffic light per line, the worst of them for
//! the policy. [`render`] turns overviews into self-contained HTML (no scripts, nothing
//! fetched); the same structures serialise to the JSON API (docs/API.md).
//!
//! Nothing here shows a secret: the source URL is never included, and every error text
//! passes through [`shown`], which masks URL passwords and age secret keys.

pub mod access;
pub mod render;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::drill::report::Verdict;
use crate::drill::store;
use crate::policy::{Cadence, Policy};
use crate::repository::{BackupKind, BackupManifest, Repository};
use crate::retention::{self, BackupRef};
use crate::runner::PolicyStatus;

/// Restore-test reports shown in the trend.
pub const TREND_LENGTH: usize = 12;

/// How a line of the page is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Light {
    /// Nothing to judge against (no schedule, no objective).
    Grey,
    /// As expected.
    Green,
    /// Late or close to an objective: look at it today.
    Amber,
    /// Past what the policy allows, or failed: act now.
    Red,
}

impl Light {
    /// An age against the interval it may normally reach: green up to the interval plus
    /// `grace`, amber up to twice the interval plus `grace`, red beyond; grey with no
    /// interval.
    pub fn of_age(age: Duration, interval: Option<Duration>, grace: Duration) -> Light {
        match interval {
            None => Light::Grey,
            Some(i) if age <= i + grace => Light::Green,
            Some(i) if age <= i * 2 + grace => Light::Amber,
            Some(_) => Light::Red,
        }
    }

    /// A measured figure against its objective (seconds): green within it, red past
    /// it, grey without an objective or a measurement.
    pub fn of_objective(measured: Option<f64>, objective: Option<f64>) -> Light {
        match (measured, objective) {
            (Some(m), Some(o)) if m <= o => Light::Green,
            (Some(_), Some(_)) => Light::Red,
            _ => Light::Grey,
        }
    }

    /// The word shown beside the colour (colour is never the only signal).
    pub fn word(self) -> &'static str {
        match self {
            Light::Grey => "n/a",
            Light::Green => "OK",
            Light::Amber => "LATE",
            Light::Red => "ALERT",
        }
    }
}

/// Everything the page shows, for every policy the agent runs.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// When it was gathered.
    pub generated_at: DateTime<Utc>,
    /// The worst light of all policies.
    pub light: Light,
    /// One overview per policy, in the agent's order.
    pub policies: Vec<PolicyOverview>,
}

impl StatusReport {
    /// Wrap `policies` gathered at `now`.
    pub fn new(policies: Vec<PolicyOverview>, now: DateTime<Utc>) -> StatusReport {
        StatusReport {
            generated_at: now,
            light: policies
                .iter()
                .map(|p| p.light)
                .max()
                .unwrap_or(Light::Grey),
            policies,
        }
    }
}

/// One policy at a glance.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyOverview {
    /// The policy's name.
    pub name: String,
    /// The worst light of its lines.
    pub light: Light,
    /// The newest backup of each kind the policy schedules or holds.
    pub backups: Vec<BackupOverview>,
    /// The next scheduled runs, soonest first.
    pub next_runs: Vec<NextRun>,
    /// The RPO right now.
    pub rpo: RpoOverview,
    /// The newest restore test.
    pub restore_test: Option<RestoreTestOverview>,
    /// The last restore tests, oldest first (at most [`TREND_LENGTH`]).
    pub trend: Vec<TrendPoint>,
    /// What retention keeps and what goes next.
    pub retention: Option<RetentionOverview>,
    /// The restore-test reports' hash chain.
    pub report_chain: ChainOverview,
    /// Every stored report, newest first.
    pub reports: Vec<ReportLink>,
    /// The agent's own last run of this policy.
    pub agent: AgentOverview,
    /// What could not be read (the repository unreachable, say).
    pub problems: Vec<String>,
}

/// The newest backup of one kind.
#[derive(Debug, Clone, Serialize)]
pub struct BackupOverview {
    /// `logical` or `physical`.
    pub kind: String,
    /// Its id (`None`: no backup of this kind yet).
    pub id: Option<String>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Seconds since its data time (the point it restores to).
    pub age_seconds: Option<f64>,
    /// How old it may normally get: the schedule's interval.
    pub expected_interval_seconds: Option<f64>,
    /// Its age against the schedule.
    pub light: Light,
}

/// A scheduled run still to come.
#[derive(Debug, Clone, Serialize)]
pub struct NextRun {
    /// What runs.
    pub what: String,
    /// When (the slot; the agent may add jitter).
    pub at: DateTime<Utc>,
}

/// The RPO right now: how much would be lost if the source died this moment.
#[derive(Debug, Clone, Serialize)]
pub struct RpoOverview {
    /// Seconds since the newest backup's data time.
    pub backup_age_seconds: Option<f64>,
    /// Seconds of WAL not yet stored, for point-in-time recovery (archive lag or
    /// stream lag, as the agent last measured it).
    pub wal_lag_seconds: Option<f64>,
    /// The policy's RPO objective.
    pub objective_seconds: Option<f64>,
    /// The RPO now: the WAL lag where point-in-time recovery is set up, else the
    /// backup age.
    pub now_seconds: Option<f64>,
    /// The RPO now against the objective.
    pub light: Light,
}

/// The newest restore test.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreTestOverview {
    /// Its report id.
    pub id: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// `PASS` or `FAIL`.
    pub verdict: String,
    /// Why it failed.
    pub failures: Vec<String>,
    /// Measured RTO, seconds.
    pub rto_seconds: Option<f64>,
    /// The RTO objective.
    pub rto_objective_seconds: Option<f64>,
    /// Measured RPO, seconds.
    pub rpo_seconds: Option<f64>,
    /// The RPO objective.
    pub rpo_objective_seconds: Option<f64>,
    /// Whether the next one is overdue (older than the drill schedule allows).
    pub overdue: bool,
    /// Verdict and age together.
    pub light: Light,
}

/// One restore test of the trend.
#[derive(Debug, Clone, Serialize)]
pub struct TrendPoint {
    /// Report id.
    pub id: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// `PASS` or `FAIL`.
    pub verdict: String,
    /// Measured RTO, seconds.
    pub rto_seconds: Option<f64>,
    /// Measured RPO, seconds.
    pub rpo_seconds: Option<f64>,
}

/// Retention at a glance.
#[derive(Debug, Clone, Serialize)]
pub struct RetentionOverview {
    /// Backups in the repository.
    pub kept: usize,
    /// The backups the next scheduled backup would push out, if it succeeds.
    pub next_to_expire: Vec<String>,
    /// When that backup is due.
    pub expires_at: Option<DateTime<Utc>>,
    /// Why retention deletes nothing now (the stale guard), if it does not.
    pub stale: Option<String>,
}

/// The hash chain of the restore-test reports.
#[derive(Debug, Clone, Serialize)]
pub struct ChainOverview {
    /// Reports in the chain.
    pub reports: usize,
    /// Whether every link and digest checks.
    pub intact: bool,
    /// What does not check, per report.
    pub problems: Vec<String>,
}

/// A stored restore-test report.
#[derive(Debug, Clone, Serialize)]
pub struct ReportLink {
    /// Report id.
    pub id: String,
    /// When the test started.
    pub started_at: Option<DateTime<Utc>>,
    /// `PASS` or `FAIL` (`?` when the report cannot be read).
    pub verdict: String,
    /// The formats stored: `html`, `json`, `md`.
    pub formats: Vec<String>,
}

/// The agent's last run of the policy.
#[derive(Debug, Clone, Serialize)]
pub struct AgentOverview {
    /// When the last run started.
    pub last_attempt: Option<DateTime<Utc>>,
    /// Whether it succeeded.
    pub last_attempt_ok: Option<bool>,
    /// Its error, one line, secrets masked.
    pub last_error: Option<String>,
    /// Failed runs since the agent started.
    pub failures_total: u64,
}

/// Mask what must never reach a page: URL passwords (and `secret`, the policy's own
/// source password, wherever it appears) and age secret keys.
pub fn shown(text: &str, secret: Option<&str>) -> String {
    // The policy's own password first, as written and percent-encoded, before anything
    // can cut a word short and leave a prefix of it.
    let mut text = text.to_string();
    if let Some(secret) = secret.filter(|s| s.len() >= 3) {
        let encoded =
            percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        text = text.replace(secret, "****").replace(&encoded, "****");
    }
    let masked: Vec<String> = text
        .split(' ')
        .map(|word| {
            // A URL may come wrapped in quotes or brackets.
            let trimmed = word.trim_matches(|c: char| "\"'()[]{}<>,;".contains(c));
            if trimmed.contains("://") && trimmed.contains('@') {
                word.replace(trimmed, &crate::postgres::redact(trimmed))
            } else {
                word.to_string()
            }
        })
        .collect();
    crate::error::safe_echo(&masked.join(" "))
}

fn seconds(d: Duration) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

/// Gather the overview of `policy` at `now`, from the agent's `live` status and the
/// repository. A repository that cannot be read is a problem on the page, not an error.
pub async fn overview(policy: &Policy, live: &PolicyStatus, now: DateTime<Utc>) -> PolicyOverview {
    let secret = url::Url::parse(&policy.source.url)
        .ok()
        .and_then(|u| u.password().map(crate::postgres::percent_decode));
    let secret = secret.as_deref();
    let cadence = policy.cadence(now);
    let mut problems = Vec::new();
    let repo = match Repository::open(policy).await {
        Ok(r) => Some(r),
        Err(e) => {
            problems.push(format!(
                "cannot open the repository: {}",
                shown(&e.to_string(), secret)
            ));
            None
        }
    };
    let manifests = match &repo {
        Some(r) => match r.list_backups().await {
            Ok(m) => m,
            Err(e) => {
                problems.push(format!(
                    "cannot list backups: {}",
                    shown(&e.to_string(), secret)
                ));
                Vec::new()
            }
        },
        None => Vec::new(),
    };
    let stored = match &repo {
        Some(r) => match store::read_all(r).await {
            Ok(s) => s,
            Err(e) => {
                problems.push(format!(
                    "cannot read the restore-test reports: {}",
                    shown(&e.to_string(), secret)
                ));
                Vec::new()
            }
        },
        None => Vec::new(),
    };

    let backups = backup_lines(policy, &manifests, &cadence, now);
    let next_runs = next_runs(policy, now);
    let rpo = rpo_now(policy, live, &manifests, &cadence, now);
    let reports: Vec<(
        String,
        Option<crate::drill::report::DrillReport>,
        Vec<String>,
    )> = stored
        .iter()
        .map(|s| {
            let mut formats = vec!["json".to_string()];
            if s.markdown.is_some() {
                formats.push("md".into());
            }
            if s.html.is_some() {
                formats.push("html".into());
            }
            (
                s.id.clone(),
                store::parse_report(&s.id, &s.json).ok(),
                formats,
            )
        })
        .collect();
    let restore_test = reports
        .iter()
        .rev()
        .find_map(|(_, r, _)| r.as_ref())
        .map(|r| restore_test_line(r, &cadence, now, secret));
    let trend: Vec<TrendPoint> = reports
        .iter()
        .filter_map(|(_, r, _)| r.as_ref())
        .map(|r| TrendPoint {
            id: r.id.clone(),
            started_at: r.started_at,
            verdict: verdict_word(r.verdict).into(),
            rto_seconds: r.rto.measured_seconds,
            rpo_seconds: r.rpo.as_ref().and_then(|p| p.objective.measured_seconds),
        })
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .take(TREND_LENGTH)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let findings = store::verify_chain(&stored);
    let chain_problems: Vec<String> = findings
        .iter()
        .filter(|f| !f.problems.is_empty())
        .map(|f| format!("{}: {}", f.id, f.problems.join("; ")))
        .collect();
    let report_chain = ChainOverview {
        reports: stored.len(),
        intact: chain_problems.is_empty(),
        problems: chain_problems,
    };
    let report_links = reports
        .iter()
        .rev()
        .map(|(id, r, formats)| ReportLink {
            id: id.clone(),
            started_at: r.as_ref().map(|r| r.started_at),
            verdict: r.as_ref().map_or("?", |r| verdict_word(r.verdict)).into(),
            formats: formats.clone(),
        })
        .collect();
    let retention = retention_line(policy, &manifests, now);
    let agent = AgentOverview {
        last_attempt: live.last_attempt,
        last_attempt_ok: live.last_attempt_ok,
        last_error: live.last_error.as_deref().map(|e| shown(e, secret)),
        failures_total: live.failures_total,
    };
    let mut light = backups
        .iter()
        .map(|b| b.light)
        .chain(std::iter::once(rpo.light))
        .chain(restore_test.as_ref().map(|t| t.light))
        .max()
        .unwrap_or(Light::Grey);
    // A scheduled restore test that never ran proves nothing: as late as it gets.
    let never_tested = restore_test.is_none() && cadence.restore_test_interval.is_some();
    if !problems.is_empty()
        || !report_chain.intact
        || agent.last_attempt_ok == Some(false)
        || never_tested
    {
        light = light.max(Light::Red);
    }
    PolicyOverview {
        name: policy.name.clone(),
        light,
        backups,
        next_runs,
        rpo,
        restore_test,
        trend,
        retention,
        report_chain,
        reports: report_links,
        agent,
        problems,
    }
}

fn verdict_word(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "PASS",
        Verdict::Fail => "FAIL",
    }
}

fn newest(manifests: &[BackupManifest], kind: BackupKind) -> Option<&BackupManifest> {
    manifests
        .iter()
        .filter(|m| m.kind == kind)
        .max_by_key(|m| m.consistent_at)
}

fn backup_lines(
    policy: &Policy,
    manifests: &[BackupManifest],
    cadence: &Cadence,
    now: DateTime<Utc>,
) -> Vec<BackupOverview> {
    let physical_scheduled = cadence.physical_interval.is_some();
    let mut lines = Vec::new();
    for (kind, interval) in [
        (BackupKind::Logical, cadence.backup_interval),
        (BackupKind::Physical, cadence.physical_interval),
    ] {
        let found = newest(manifests, kind);
        if found.is_none() && kind == BackupKind::Physical && !physical_scheduled {
            continue;
        }
        let age = found.map(|m| now - m.consistent_at);
        // A backup is listed when it finishes: its own duration is part of the grace.
        let took = found.map_or_else(Duration::zero, |m| m.finished_at - m.started_at);
        let light = match age {
            Some(age) => Light::of_age(age, interval, cadence.grace + took),
            // Scheduled and never taken: as late as it gets.
            None if interval.is_some() && policy.schedule.is_some() => Light::Red,
            None => Light::Grey,
        };
        lines.push(BackupOverview {
            kind: kind.to_string(),
            id: found.map(|m| m.id.clone()),
            finished_at: found.map(|m| m.finished_at),
            age_seconds: age.map(seconds),
            expected_interval_seconds: interval.map(seconds),
            light,
        });
    }
    lines
}

fn next_runs(policy: &Policy, now: DateTime<Utc>) -> Vec<NextRun> {
    let mut runs = Vec::new();
    if let Some(s) = &policy.schedule {
        let mut add = |what: &str, schedule: Option<&crate::schedule::Schedule>| {
            if let Some(at) = schedule.and_then(|s| s.next_after(now)) {
                runs.push(NextRun {
                    what: what.into(),
                    at,
                });
            }
        };
        add("logical backup", Some(&s.backup));
        add("base backup", s.physical.as_ref());
        add("incremental base backup", s.physical_incremental.as_ref());
    }
    if let Some(at) = policy
        .restore_test
        .as_ref()
        .and_then(|r| r.schedule.as_ref())
        .and_then(|s| s.next_after(now))
    {
        runs.push(NextRun {
            what: "restore test".into(),
            at,
        });
    }
    runs.sort_by_key(|r| r.at);
    runs
}

fn rpo_now(
    policy: &Policy,
    live: &PolicyStatus,
    manifests: &[BackupManifest],
    cadence: &Cadence,
    now: DateTime<Utc>,
) -> RpoOverview {
    let backup_age = manifests
        .iter()
        .map(|m| m.consistent_at)
        .max()
        .map(|t| seconds(now - t));
    let pitr = policy
        .schedule
        .as_ref()
        .is_some_and(|s| s.physical.is_some())
        || policy.archive.mode == crate::policy::ArchiveMode::Stream;
    let wal_lag = live.wal_archive_lag_seconds.filter(|_| pitr);
    let objective = cadence.rpo_objective.map(seconds);
    let now_seconds = wal_lag.or(backup_age);
    RpoOverview {
        backup_age_seconds: backup_age,
        wal_lag_seconds: wal_lag,
        objective_seconds: objective,
        now_seconds,
        light: Light::of_objective(now_seconds, objective),
    }
}

fn restore_test_line(
    report: &crate::drill::report::DrillReport,
    cadence: &Cadence,
    now: DateTime<Utc>,
    secret: Option<&str>,
) -> RestoreTestOverview {
    let age_light = Light::of_age(
        now - report.started_at,
        cadence.restore_test_interval,
        cadence.grace + (report.finished_at - report.started_at),
    );
    let overdue = age_light >= Light::Amber;
    let verdict_light = match report.verdict {
        Verdict::Pass => Light::Green,
        Verdict::Fail => Light::Red,
    };
    RestoreTestOverview {
        id: report.id.clone(),
        started_at: report.started_at,
        verdict: verdict_word(report.verdict).into(),
        failures: report.failures.iter().map(|f| shown(f, secret)).collect(),
        rto_seconds: report.rto.measured_seconds,
        rto_objective_seconds: report.rto.objective_seconds,
        rpo_seconds: report
            .rpo
            .as_ref()
            .and_then(|p| p.objective.measured_seconds),
        rpo_objective_seconds: report
            .rpo
            .as_ref()
            .and_then(|p| p.objective.objective_seconds),
        overdue,
        light: verdict_light.max(age_light),
    }
}

fn retention_line(
    policy: &Policy,
    manifests: &[BackupManifest],
    now: DateTime<Utc>,
) -> Option<RetentionOverview> {
    let config = policy.retention.as_ref()?;
    let next = policy
        .schedule
        .as_ref()
        .and_then(|s| s.backup.next_after(now));
    let refs: Vec<BackupRef> = manifests
        .iter()
        .filter(|m| m.kind == BackupKind::Logical)
        .map(|m| BackupRef {
            id: m.id.clone(),
            time: m.started_at,
            parent: None,
            locked: None,
        })
        .collect();
    // The stale guard as retention sees it now, from the real backups.
    let stale = if refs.is_empty() {
        None
    } else {
        retention::plan(&refs, &config.rules, now, config.max_age)
            .ok()
            .and_then(|p| p.stale)
    };
    // What the next logical backup pushes out: plan retention as if it had succeeded.
    let mut next_to_expire = Vec::new();
    if let Some(at) = next {
        let mut with_next = refs.clone();
        with_next.push(BackupRef {
            id: "(next backup)".into(),
            time: at,
            parent: None,
            locked: None,
        });
        if let Ok(plan) = retention::plan(&with_next, &config.rules, at, config.max_age) {
            next_to_expire = plan.to_delete().iter().map(|b| b.id.clone()).collect();
        }
    }
    Some(RetentionOverview {
        kept: manifests.len(),
        expires_at: next.filter(|_| !next_to_expire.is_empty()),
        next_to_expire,
        stale,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_objectives_get_their_lights() {
        let day = Duration::days(1);
        let grace = Duration::minutes(30);
        assert_eq!(
            Light::of_age(Duration::hours(20), Some(day), grace),
            Light::Green
        );
        assert_eq!(
            Light::of_age(day + Duration::minutes(20), Some(day), grace),
            Light::Green
        );
        assert_eq!(
            Light::of_age(Duration::hours(30), Some(day), grace),
            Light::Amber
        );
        assert_eq!(
            Light::of_age(Duration::hours(50), Some(day), grace),
            Light::Red
        );
        assert_eq!(Light::of_age(Duration::hours(50), None, grace), Light::Grey);
        assert_eq!(Light::of_objective(Some(10.0), Some(60.0)), Light::Green);
        assert_eq!(Light::of_objective(Some(61.0), Some(60.0)), Light::Red);
        assert_eq!(Light::of_objective(Some(61.0), None), Light::Grey);
        assert_eq!(
            [Light::Green, Light::Red, Light::Amber].into_iter().max(),
            Some(Light::Red)
        );
    }

    #[test]
    fn secrets_never_reach_the_page() {
        let text = "cannot connect to postgres://app:s3cr%21t@db:5432/app: refused; password s3cr!t; key AGE-SECRET-KEY-1QQQQ; (\"postgres://u:other-pass@h/db\")";
        let out = shown(text, Some("s3cr!t"));
        assert!(!out.contains("s3cr"), "{out}");
        assert!(!out.contains("AGE-SECRET-KEY-1QQQQ"), "{out}");
        assert!(!out.contains("other-pass"), "{out}");
        assert!(out.contains("postgres://app:****@db:5432/app:"), "{out}");
        let long = format!("{}{}", "x".repeat(98), "s3cr!t-and-more");
        assert!(
            !shown(&long, Some("s3cr!t")).contains("s3cr"),
            "a cut word keeps no prefix"
        );
    }
}
