//! Restore-test reports: what a drill found, in a form compliance can keep.
//!
//! A report is one JSON document ([`DrillReport`], `format_version` 1) plus two renders
//! of it for people (Markdown and a self-contained HTML page). All three are stored in
//! the repository under `<policy>/reports/<id>.{json,md,html}`. The JSON records the
//! sha256 of the two renders and of the previous report's JSON, so the history of a
//! policy's reports is a hash chain: an altered or deleted report breaks it, and
//! [`super::store::verify_chain`] names where.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Version of the report JSON; bumped on incompatible changes.
pub const REPORT_FORMAT_VERSION: u32 = 1;
/// The report versions this pgvault reads: from the first one to the one it writes. A
/// newer report is refused (`drill::store`), never misread.
pub const REPORT_READ_FORMAT_VERSIONS: std::ops::RangeInclusive<u32> = 1..=REPORT_FORMAT_VERSION;

/// The outcome of a drill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    /// Every check passed and every objective was met.
    Pass,
    /// Something failed; [`DrillReport::failures`] says what.
    Fail,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
        })
    }
}

/// The backup a drill restored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestedBackup {
    /// Backup id.
    pub id: String,
    /// How it was chosen: `latest`, `random within 30d`, or `requested`.
    pub picked: String,
    /// The source database.
    pub database: String,
    /// Server version of the source.
    pub server_version: String,
    /// When the backup started.
    pub started_at: DateTime<Utc>,
    /// The point in time the data is consistent as of.
    pub consistent_at: DateTime<Utc>,
    /// Bytes stored in the repository (all objects).
    pub stored_bytes: u64,
    /// Plaintext bytes of the dump.
    pub dump_bytes: u64,
    /// sha256 of the stored (encrypted) dump object.
    pub dump_stored_sha256: String,
    /// sha256 of the plaintext dump.
    pub dump_plain_sha256: String,
    /// The copy (`[[repository.copies]]` name) the backup was read from; absent when it
    /// came from the primary repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_copy: Option<String>,
}

/// Where a drill restored to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillTarget {
    /// `ephemeral` (a throwaway cluster) or `staging` (a scratch database on a server).
    pub kind: String,
    /// `host:port` of the server (no credentials).
    pub server: String,
    /// The database restored into.
    pub database: String,
    /// `version()` of that server.
    pub server_version: String,
    /// Whether the restored database was kept after the drill (`--keep`).
    pub kept: bool,
}

/// Versions of the programs that took part, for reproducibility.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolVersions {
    /// pgvault itself.
    pub pgvault: String,
    /// `pg_restore --version`.
    pub pg_restore: String,
    /// Where the drill ran (host name).
    pub host: String,
}

/// How a phase or check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// It ran and succeeded.
    Passed,
    /// It ran and failed.
    Failed,
    /// It did not apply (e.g. amcheck not installed); not a failure.
    Skipped,
    /// An earlier failure stopped the drill before it.
    NotReached,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Passed => "passed",
            Status::Failed => "FAILED",
            Status::Skipped => "skipped",
            Status::NotReached => "not reached",
        })
    }
}

/// One timed phase of the drill. `verify` (download, authenticate, decompress),
/// `restore` (pg_restore and row counts) and `checks` make up the RTO; `setup`
/// (starting an ephemeral cluster) and `cleanup` are recorded but not counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// `setup`, `verify`, `restore`, `checks` or `cleanup`.
    pub name: String,
    /// How it ended.
    pub status: Status,
    /// Wall time, seconds (absent when not reached).
    pub seconds: Option<f64>,
    /// Whether it counts towards the RTO.
    pub counts_for_rto: bool,
    /// One line: what it did, or why it failed.
    pub detail: String,
}

/// One check with what was expected and what was found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// `builtin`, `amcheck` or `sql`.
    pub kind: String,
    /// What is checked, e.g. `row count public.orders` or the policy check's name.
    pub name: String,
    /// The expectation, e.g. `= 1000` or `> 0`.
    pub expected: String,
    /// What was found.
    pub actual: String,
    /// How it ended.
    pub status: Status,
}

/// A measured figure against its objective.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectiveResult {
    /// The measured value, seconds (absent when the drill did not get far enough).
    pub measured_seconds: Option<f64>,
    /// The objective from the policy, seconds (absent when none is set).
    pub objective_seconds: Option<f64>,
    /// Whether the measurement meets the objective (absent when either is absent).
    pub met: Option<bool>,
}

impl ObjectiveResult {
    /// Compare `measured` with `objective` (both seconds).
    pub fn new(measured: Option<f64>, objective: Option<f64>) -> ObjectiveResult {
        let met = match (measured, objective) {
            (Some(m), Some(o)) => Some(m <= o),
            _ => None,
        };
        ObjectiveResult {
            measured_seconds: measured,
            objective_seconds: objective,
            met,
        }
    }
}

/// The RPO of a drill: how much data the policy's backups could lose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpoResult {
    /// The RPO (worst gap) against the objective.
    #[serde(flatten)]
    pub objective: ObjectiveResult,
    /// Age of the restored data: drill start minus the backup's consistent point.
    pub data_age_seconds: f64,
    /// The largest gap between consecutive successful backups in the window, counting
    /// the gap from the newest backup to the drill; this is the measured RPO.
    pub worst_gap_seconds: f64,
    /// Where the worst gap starts (a backup's consistent point).
    pub worst_gap_from: Option<DateTime<Utc>>,
    /// Where it ends (the next backup's consistent point, or the drill time).
    pub worst_gap_to: Option<DateTime<Utc>>,
    /// The window looked at, seconds before the drill.
    pub window_seconds: f64,
    /// Successful backups in the window.
    pub backups_in_window: usize,
}

/// An earlier report's figures, for the trend chart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryPoint {
    /// Report id.
    pub id: String,
    /// When that drill started.
    pub started_at: DateTime<Utc>,
    /// Its verdict.
    pub verdict: Verdict,
    /// Its measured RTO, seconds.
    pub rto_seconds: Option<f64>,
    /// Its measured RPO, seconds.
    pub rpo_seconds: Option<f64>,
}

/// The link to the previous report in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainLink {
    /// The previous report's id.
    pub id: String,
    /// sha256 (hex) of the previous report's JSON bytes as stored.
    pub sha256: String,
}

/// Digests of the Markdown and HTML renders of this report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RenderDigests {
    /// sha256 (hex) of the `.md` file.
    pub markdown_sha256: String,
    /// sha256 (hex) of the `.html` file.
    pub html_sha256: String,
}

/// A restore-test report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillReport {
    /// [`REPORT_FORMAT_VERSION`].
    pub format_version: u32,
    /// Report id: `YYYYMMDDTHHMMSSZ-<8 hex>`, sortable by time.
    pub id: String,
    /// The policy tested.
    pub policy: String,
    /// When the drill started.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
    /// PASS or FAIL.
    pub verdict: Verdict,
    /// One line per reason for a FAIL (empty on PASS).
    pub failures: Vec<String>,
    /// The backup restored (absent when none could be chosen).
    pub backup: Option<TestedBackup>,
    /// Where it was restored (absent when the target could not be set up).
    pub target: Option<DrillTarget>,
    /// Program versions.
    pub tools: ToolVersions,
    /// Timed phases, in order.
    pub phases: Vec<Phase>,
    /// Every check, in order.
    pub checks: Vec<CheckResult>,
    /// RTO: the sum of the phases that count for it, against the objective.
    pub rto: ObjectiveResult,
    /// RPO against the objective.
    pub rpo: Option<RpoResult>,
    /// Earlier reports of this policy (oldest first), for the trend chart.
    pub history: Vec<HistoryPoint>,
    /// The previous report (absent for the first one).
    pub previous: Option<ChainLink>,
    /// Digests of the renders stored beside this JSON.
    pub renders: RenderDigests,
}

impl DrillReport {
    /// The report as pretty JSON bytes, as stored.
    pub fn to_json(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// This report as a point of the trend chart.
    pub fn history_point(&self) -> HistoryPoint {
        HistoryPoint {
            id: self.id.clone(),
            started_at: self.started_at,
            verdict: self.verdict,
            rto_seconds: self.rto.measured_seconds,
            rpo_seconds: self.rpo.as_ref().and_then(|r| r.objective.measured_seconds),
        }
    }
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `seconds` the way people say durations: "4.2s", "45s", "1m 23s", "4h 05m", "2d 03h".
pub fn human_seconds(seconds: f64) -> String {
    if !seconds.is_finite() {
        return "n/a".to_string();
    }
    if seconds < 0.0 {
        return format!("-{}", human_seconds(-seconds));
    }
    if seconds < 10.0 {
        return format!("{seconds:.1}s");
    }
    let total = seconds.round() as u64;
    let (days, hours) = (total / 86_400, total / 3_600 % 24);
    let (minutes, secs) = (total / 60 % 60, total % 60);
    if total < 60 {
        format!("{secs}s")
    } else if total < 3_600 {
        format!("{minutes}m {secs:02}s")
    } else if total < 86_400 {
        format!("{hours}h {minutes:02}m")
    } else {
        format!("{days}d {hours:02}h")
    }
}
