//! Restore tests ("drills"): restore a backup somewhere harmless, prove the data is
//! there and sound, measure RTO and RPO against the policy's objectives, and keep a
//! report compliance can trust.
//!
//! A drill runs in phases, each timed and recorded in the report:
//!
//! 1. `setup`: start an ephemeral cluster, or check the staging server (never the
//!    policy's own source unless allowed). Not part of the RTO: in a real recovery the
//!    server already exists.
//! 2. `verify`: download the dump, check every digest and age authentication,
//!    decompress it to a spool file, and read its table of contents.
//! 3. `restore`: the same verified path as `pgvault restore` (scratch database,
//!    pg_restore with `--exit-on-error`, exact row counts against the backup's snapshot,
//!    rename into place).
//! 4. `checks`: indexes valid, sequences present, amcheck, the policy's SQL checks.
//! 5. `cleanup`: drop the staging database (unless kept) or remove the cluster.
//!
//! The RTO is the sum of phases 2–4: the time from starting a restore to a verified,
//! usable database. The RPO is the worst gap between consecutive successful backups
//! over the window, counting the gap from the newest backup to the drill
//! (see [`rpo`]). The verdict is PASS only if every phase and check passed and both
//! measurements meet their objectives.

pub mod checks;
pub mod point_in_time;
pub mod render;
pub mod report;
pub mod rpo;
pub mod store;

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use rand::seq::SliceRandom;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::keys::Identities;
use crate::logical::restore::{self, RestoreOptions};
use crate::pipeline::Progress;
use crate::policy::{DrillPick, DrillTargetConfig, Policy, RestoreTestConfig};
use crate::postgres::{self, quote_ident, ConnTarget};
use crate::repository::{new_backup_id, object, BackupKind, BackupManifest, Repository};
use crate::server::{EphemeralCluster, ServerBinaries};
use report::{
    human_seconds, sha256_hex, ChainLink, CheckResult, DrillReport, DrillTarget, ObjectiveResult,
    Phase, RenderDigests, RpoResult, Status, TestedBackup, ToolVersions, Verdict,
    REPORT_FORMAT_VERSION,
};

/// What to drill and how.
pub struct DrillRequest<'a> {
    /// The policy whose backups are tested.
    pub policy: &'a Policy,
    /// Its `[restore_test]` settings (defaults when the section is absent).
    pub config: &'a RestoreTestConfig,
    /// A key able to decrypt the backups.
    pub identities: &'a Identities,
    /// A specific backup (id or prefix) instead of the configured pick.
    pub backup: Option<String>,
    /// Keep the restored staging database afterwards.
    pub keep: bool,
    /// Byte progress of the download, for a progress bar.
    pub progress: Arc<Progress>,
}

/// A finished drill: the stored report and its renders.
pub struct DrillOutcome {
    /// The report (as stored, JSON).
    pub report: DrillReport,
    /// Its JSON bytes as stored.
    pub json: Vec<u8>,
    /// The Markdown render.
    pub markdown: String,
    /// The HTML render.
    pub html: String,
}

/// The phases, checks and failures recorded so far.
#[derive(Default)]
pub(crate) struct Record {
    phases: Vec<Phase>,
    checks: Vec<CheckResult>,
    failures: Vec<String>,
}

/// The phases of a drill, in order. The report stores their names as text
/// ([`Phase::name`]), so reports written by older versions keep reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PhaseName {
    /// Preparing the target (an ephemeral cluster, a scratch database, a data directory).
    Setup,
    /// Downloading and verifying the backup's bytes.
    Verify,
    /// Restoring it.
    Restore,
    /// Checking the restored data.
    Checks,
    /// Removing what the drill created.
    Cleanup,
}

impl PhaseName {
    /// Every phase that counts, in order (cleanup is not part of a recovery).
    const ALL: [PhaseName; 4] = [
        PhaseName::Setup,
        PhaseName::Verify,
        PhaseName::Restore,
        PhaseName::Checks,
    ];

    /// The phases whose time is the RTO: what a real recovery would spend.
    const RTO: [PhaseName; 3] = [PhaseName::Verify, PhaseName::Restore, PhaseName::Checks];

    /// The name as stored in reports.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PhaseName::Setup => "setup",
            PhaseName::Verify => "verify",
            PhaseName::Restore => "restore",
            PhaseName::Checks => "checks",
            PhaseName::Cleanup => "cleanup",
        }
    }
}

impl Record {
    pub(crate) fn phase(
        &mut self,
        name: PhaseName,
        status: Status,
        seconds: Option<f64>,
        detail: String,
    ) {
        let counts_for_rto = PhaseName::RTO.contains(&name);
        let name = name.as_str();
        if status == Status::Failed {
            self.failures.push(format!("{name}: {detail}"));
        }
        self.phases.push(Phase {
            name: name.into(),
            status,
            seconds,
            counts_for_rto,
            detail,
        });
    }

    /// Setup failed: nothing else ran.
    pub(crate) fn setup_failed(&mut self, seconds: Option<f64>, detail: String) {
        self.phase(PhaseName::Setup, Status::Failed, seconds, detail);
        self.not_reached(&[PhaseName::Verify, PhaseName::Restore, PhaseName::Checks]);
    }

    /// The drill stopped on an error before it finished: the first phase not yet
    /// recorded fails with the error's words, the later ones were not reached. A drill
    /// that cannot finish still leaves a report that says why.
    pub(crate) fn interrupted(&mut self, error: &Error) {
        let Some(at) = PhaseName::ALL.iter().position(|p| {
            !self
                .phases
                .iter()
                .any(|recorded| recorded.name == p.as_str())
        }) else {
            self.failures.push(format!("the drill stopped: {error}"));
            return;
        };
        self.phase(
            PhaseName::ALL[at],
            Status::Failed,
            None,
            failure_detail(error).1,
        );
        self.not_reached(&PhaseName::ALL[at + 1..]);
    }

    pub(crate) fn not_reached(&mut self, names: &[PhaseName]) {
        for name in names {
            self.phase(
                *name,
                Status::NotReached,
                None,
                "an earlier phase failed".into(),
            );
        }
    }

    pub(crate) fn check(&mut self, check: CheckResult) {
        if check.status == Status::Failed {
            self.failures.push(format!(
                "check {:?}: expected {}, got {}",
                check.name, check.expected, check.actual
            ));
        }
        self.checks.push(check);
    }

    /// A check whose failure is its phase's failure: listed, not reported twice.
    fn check_of_phase(&mut self, check: CheckResult) {
        self.checks.push(check);
    }

    fn seconds_of(&self, name: PhaseName) -> Option<f64> {
        self.phases
            .iter()
            .find(|p| p.name == name.as_str() && p.status != Status::NotReached)
            .and_then(|p| p.seconds)
    }
}

/// Run a drill and store its report in the repository. Returns an error only when no
/// report could be stored or the drill was cancelled; everything else that goes wrong
/// is a FAIL recorded in the report.
pub async fn run(
    repo: &Repository,
    request: DrillRequest<'_>,
    cancel: &CancellationToken,
) -> Result<DrillOutcome> {
    let started_at = Utc::now();
    let mut record = Record::default();
    let config = request.config;

    let mut tools = ToolVersions {
        pgvault: crate::TOOL_VERSION.to_string(),
        pg_restore: String::new(),
        host: crate::notify::host_name(),
    };
    // The backups come from the copy `from_copy` names, when set (proving that the
    // copy restores); the report goes to `repo`, the policy's report store, either way.
    let source = match &config.from_copy {
        Some(name) => Repository::open_copy(request.policy, name).await,
        None => Ok(repo.clone()),
    };
    let drilled = match source {
        Err(e) => Err(e.within(format!(
            "cannot open copy {}",
            config.from_copy.as_deref().unwrap_or_default()
        ))),
        Ok(source) => match config.kind {
            crate::policy::DrillKind::Pitr => {
                point_in_time::drill(
                    &source,
                    &request,
                    started_at,
                    &mut record,
                    &mut tools,
                    cancel,
                )
                .await
            }
            crate::policy::DrillKind::Logical => {
                logical_drill(
                    &source,
                    &request,
                    started_at,
                    &mut record,
                    &mut tools,
                    cancel,
                )
                .await
            }
        },
    };
    let drilled = drilled.map(|(tested, target, rpo)| {
        let tested = tested.map(|t| TestedBackup {
            from_copy: config.from_copy.clone(),
            ..t
        });
        (tested, target, rpo)
    });
    let (tested, target_info, rpo) = match drilled {
        Ok(found) => found,
        Err(Error::Cancelled) => return Err(Error::Cancelled),
        Err(e) => {
            record.interrupted(&e);
            (None, None, None)
        }
    };

    let reached_all = PhaseName::RTO
        .iter()
        .all(|p| record.seconds_of(*p).is_some());
    let rto_measured = reached_all.then(|| {
        PhaseName::RTO
            .iter()
            .filter_map(|p| record.seconds_of(*p))
            .sum::<f64>()
    });
    let rto = ObjectiveResult::new(rto_measured, config.rto_objective.map(seconds_of));
    if let (Some(false), Some(m), Some(o)) = (rto.met, rto.measured_seconds, rto.objective_seconds)
    {
        record.failures.push(format!(
            "RTO {} ({m:.2}s) exceeds the objective {} ({o:.0}s)",
            human_seconds(m),
            human_seconds(o)
        ));
    }
    match &rpo {
        Some(r) => {
            if let (Some(false), Some(m), Some(o)) = (
                r.objective.met,
                r.objective.measured_seconds,
                r.objective.objective_seconds,
            ) {
                record.failures.push(format!(
                    "RPO {} ({m:.0}s) exceeds the objective {} ({o:.0}s): no backup between {} and {}",
                    human_seconds(m),
                    human_seconds(o),
                    r.worst_gap_from.map(|t| t.to_rfc3339()).unwrap_or_default(),
                    r.worst_gap_to.map(|t| t.to_rfc3339()).unwrap_or_default()
                ));
            }
        }
        None => record
            .failures
            .push("RPO cannot be measured: the policy has no successful logical backup".into()),
    }

    let (history, previous) = store_history(repo).await?;
    let mut report = DrillReport {
        format_version: REPORT_FORMAT_VERSION,
        id: new_backup_id(started_at),
        policy: request.policy.name.clone(),
        started_at,
        finished_at: Utc::now(),
        verdict: if record.failures.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        failures: record.failures,
        backup: tested,
        target: target_info,
        tools,
        phases: record.phases,
        checks: record.checks,
        rto,
        rpo,
        history,
        previous,
        renders: RenderDigests::default(),
    };
    let markdown = render::markdown(&report);
    let html = render::html(&report);
    report.renders = RenderDigests {
        markdown_sha256: sha256_hex(markdown.as_bytes()),
        html_sha256: sha256_hex(html.as_bytes()),
    };
    store::write(repo, &report, &markdown, &html).await?;
    Ok(DrillOutcome {
        json: report.to_json(),
        report,
        markdown,
        html,
    })
}

/// The logical drill: pick a dump, restore it, check it.
async fn logical_drill(
    repo: &Repository,
    request: &DrillRequest<'_>,
    started_at: chrono::DateTime<Utc>,
    record: &mut Record,
    tools: &mut ToolVersions,
    cancel: &CancellationToken,
) -> Result<(Option<TestedBackup>, Option<DrillTarget>, Option<RpoResult>)> {
    let backups: Vec<BackupManifest> = match repo.list_backups().await {
        Ok(all) => all
            .into_iter()
            .filter(|m| m.kind == BackupKind::Logical)
            .collect(),
        Err(e) => {
            record.failures.push(format!("cannot list backups: {e}"));
            Vec::new()
        }
    };
    let rpo = measure_rpo(&backups, started_at, request.config);
    match pick_backup(&backups, request, started_at) {
        Err(message) => {
            record.setup_failed(None, message);
            Ok((None, None, rpo))
        }
        Ok((manifest, how)) => {
            let tested = tested_backup(&manifest, how);
            let target = restore_and_check(repo, request, &manifest, record, tools, cancel).await?;
            Ok((Some(tested), target, rpo))
        }
    }
}

pub(crate) fn seconds_of(d: chrono::Duration) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

fn measure_rpo(
    backups: &[BackupManifest],
    now: chrono::DateTime<Utc>,
    config: &RestoreTestConfig,
) -> Option<RpoResult> {
    let points: Vec<_> = backups.iter().map(|m| m.consistent_at).collect();
    let m = rpo::measure(&points, now, config.rpo_window)?;
    let newest = backups.iter().map(|b| b.consistent_at).max()?;
    Some(RpoResult {
        objective: ObjectiveResult::new(
            Some(seconds_of(m.worst_gap)),
            config.rpo_objective.map(seconds_of),
        ),
        data_age_seconds: seconds_of(now - newest),
        worst_gap_seconds: seconds_of(m.worst_gap),
        worst_gap_from: Some(m.from),
        worst_gap_to: Some(m.to),
        window_seconds: seconds_of(config.rpo_window),
        backups_in_window: m.backups_in_window,
    })
}

fn pick_backup(
    backups: &[BackupManifest],
    request: &DrillRequest<'_>,
    now: chrono::DateTime<Utc>,
) -> std::result::Result<(BackupManifest, String), String> {
    if let Some(selector) = &request.backup {
        let found: Vec<&BackupManifest> = backups
            .iter()
            .filter(|m| m.id.starts_with(selector.as_str()))
            .collect();
        return match found.as_slice() {
            [one] => Ok(((*one).clone(), "requested".into())),
            [] => Err(format!(
                "no logical backup {selector:?} in policy {}",
                request.policy.name
            )),
            many => Err(format!(
                "backup id prefix {selector:?} matches {} backups",
                many.len()
            )),
        };
    }
    match request.config.pick {
        DrillPick::Latest => backups
            .first()
            .cloned()
            .map(|m| (m, "latest".to_string()))
            .ok_or_else(|| {
                format!(
                    "policy {} has no logical backup to test",
                    request.policy.name
                )
            }),
        DrillPick::Random(within) => {
            let recent: Vec<&BackupManifest> = backups
                .iter()
                .filter(|m| m.consistent_at >= now - within)
                .collect();
            recent
                .choose(&mut rand::thread_rng())
                .map(|m| ((*m).clone(), format!("random within {}", span_text(within))))
                .ok_or_else(|| {
                    format!(
                        "policy {} has no logical backup from the last {} to test",
                        request.policy.name,
                        span_text(within)
                    )
                })
        }
    }
}

/// A policy span as written in policies: `30d`, `36h`, `90m`.
fn span_text(d: chrono::Duration) -> String {
    let s = d.num_seconds();
    match s {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

pub(crate) fn tested_backup(m: &BackupManifest, picked: String) -> TestedBackup {
    let dump = m
        .object(object::DUMP)
        .or_else(|_| m.object(object::BASE))
        .ok();
    TestedBackup {
        id: m.id.clone(),
        picked,
        database: m.database.clone(),
        server_version: m.server_version.clone(),
        started_at: m.started_at,
        consistent_at: m.consistent_at,
        stored_bytes: m.stored_size(),
        dump_bytes: dump.map(|o| o.digest.raw_size).unwrap_or(0),
        dump_stored_sha256: dump
            .map(|o| o.digest.stored_digest_label())
            .unwrap_or_default(),
        from_copy: None,
        dump_plain_sha256: dump
            .map(|o| o.digest.raw_sha256.clone())
            .unwrap_or_default(),
    }
}

/// The server a drill restores into, set up and later torn down.
struct PreparedTarget {
    /// The database to restore into, on that server.
    restore_into: ConnTarget,
    info: DrillTarget,
    cluster: Option<EphemeralCluster>,
}

async fn setup_target(
    request: &DrillRequest<'_>,
    manifest: &BackupManifest,
    drill_suffix: &str,
) -> Result<PreparedTarget> {
    let config = request.config;
    match &config.target {
        DrillTargetConfig::Ephemeral => {
            if request.keep {
                return Err(Error::Invalid(
                    "--keep needs a staging target; an ephemeral cluster is always removed".into(),
                ));
            }
            let major = (manifest.server_version_num / 10000) as u32;
            let bin = ServerBinaries::discover(config.bin_dir.as_deref(), major).await?;
            let work_dir = config.work_dir.clone();
            let cluster = tokio::task::spawn_blocking(move || {
                EphemeralCluster::start(bin, work_dir.as_deref())
            })
            .await
            .map_err(|e| Error::Invalid(format!("ephemeral cluster setup failed: {e}")))??;
            let database = if manifest.database.len() <= 40 {
                manifest.database.clone()
            } else {
                format!("pgvault_drill_{drill_suffix}")
            };
            let restore_into = ConnTarget::parse(&cluster.url(&database))?;
            Ok(PreparedTarget {
                info: DrillTarget {
                    kind: "ephemeral".into(),
                    server: cluster.server(),
                    database,
                    server_version: cluster.version_line().to_string(),
                    kept: false,
                },
                restore_into,
                cluster: Some(cluster),
            })
        }
        DrillTargetConfig::Staging(url) => {
            let staging = ConnTarget::parse(url)?;
            let admin = staging.connect().await?;
            let server = postgres::server_info(&admin).await?;
            if server.system_identifier == manifest.system_identifier && !config.allow_source_server
            {
                return Err(Error::Invalid(format!(
                    "the staging server {} is the policy's source server (system identifier {}); refusing to restore there — point [restore_test] target at a staging server, or set allow_source_server = true",
                    staging.server(),
                    server.system_identifier
                )));
            }
            let database = format!("pgvault_drill_{drill_suffix}");
            Ok(PreparedTarget {
                restore_into: staging.with_database(&database),
                info: DrillTarget {
                    kind: "staging".into(),
                    server: staging.server(),
                    database,
                    server_version: server.version,
                    kept: request.keep,
                },
                cluster: None,
            })
        }
    }
}

/// Phases 1–5 for one backup. Returns where it was restored (None when setup failed).
async fn restore_and_check(
    repo: &Repository,
    request: &DrillRequest<'_>,
    manifest: &BackupManifest,
    record: &mut Record,
    tools: &mut ToolVersions,
    cancel: &CancellationToken,
) -> Result<Option<DrillTarget>> {
    let suffix = format!("{:08x}", rand::random::<u32>());
    let setup_started = Instant::now();
    let target = tokio::select! {
        t = setup_target(request, manifest, &suffix) => t,
        _ = cancel.cancelled() => return Err(Error::Cancelled),
    };
    let target = match target {
        Ok(t) => {
            record.phase(
                PhaseName::Setup,
                Status::Passed,
                Some(setup_started.elapsed().as_secs_f64()),
                match &t.cluster {
                    Some(_) => format!("started an ephemeral cluster on {}", t.info.server),
                    None => format!(
                        "staging server {} checked; drill database {}",
                        t.info.server, t.info.database
                    ),
                },
            );
            t
        }
        Err(e) => {
            record.setup_failed(Some(setup_started.elapsed().as_secs_f64()), e.to_string());
            return Ok(None);
        }
    };

    let outcome = restore_phases(repo, request, manifest, &target, record, tools, cancel).await;

    let cleanup_started = Instant::now();
    let info = target.info.clone();
    let cleanup = cleanup_target(target, request.keep).await;
    let seconds = Some(cleanup_started.elapsed().as_secs_f64());
    match cleanup {
        Ok(detail) => record.phase(PhaseName::Cleanup, Status::Passed, seconds, detail),
        Err(e) => record.phase(PhaseName::Cleanup, Status::Failed, seconds, e.to_string()),
    }
    outcome?;
    Ok(Some(info))
}

async fn cleanup_target(target: PreparedTarget, keep: bool) -> Result<String> {
    if let Some(cluster) = target.cluster {
        tokio::task::spawn_blocking(move || cluster.stop())
            .await
            .map_err(|e| Error::Invalid(format!("stopping the ephemeral cluster failed: {e}")))??;
        return Ok("ephemeral cluster stopped and removed".into());
    }
    let db = &target.info.database;
    if keep {
        return Ok(format!(
            "kept database {db} on {} (--keep)",
            target.info.server
        ));
    }
    let admin = target
        .restore_into
        .with_database("postgres")
        .connect()
        .await?;
    admin
        .batch_execute(&format!(
            "drop database if exists {} with (force)",
            quote_ident(db)
        ))
        .await
        .map_err(|e| {
            Error::pg(
                format!("cannot drop the drill database {db}; drop it by hand"),
                e,
            )
        })?;
    Ok(format!("dropped database {db} on {}", target.info.server))
}

/// Phases 2–4. An `Err` is only a cancellation; failures are recorded.
async fn restore_phases(
    repo: &Repository,
    request: &DrillRequest<'_>,
    manifest: &BackupManifest,
    target: &PreparedTarget,
    record: &mut Record,
    tools: &mut ToolVersions,
    cancel: &CancellationToken,
) -> Result<()> {
    let config = request.config;
    let client_bin_dir = match (&config.target, &config.bin_dir) {
        (DrillTargetConfig::Ephemeral, Some(dir)) => Some(dir.clone()),
        _ => request.policy.source.bin_dir.clone(),
    };
    let options = RestoreOptions {
        force: false,
        jobs: config.jobs,
        spool_dir: config.work_dir.clone(),
        spool: true,
        bin_dir: client_bin_dir,
        download_parallelism: request.policy.repository.parts_in_flight,
    };

    // Phase 2: verify.
    let verify_started = Instant::now();
    let digest_check = |status: Status, actual: String| CheckResult {
        kind: "builtin".into(),
        name: "stream digests and age authentication".into(),
        expected: format!(
            "stored sha256 {}, plaintext sha256 {}",
            short(
                &manifest
                    .object(object::DUMP)
                    .map(|o| o.digest.stored_digest_label())
                    .unwrap_or_default()
            ),
            short(
                &manifest
                    .object(object::DUMP)
                    .map(|o| o.digest.raw_sha256.clone())
                    .unwrap_or_default()
            )
        ),
        actual,
        status,
    };
    let verified = tokio::select! {
        v = verify_phase(repo, request, manifest, target, options) => v,
        _ = cancel.cancelled() => return Err(Error::Cancelled),
    };
    let verify_seconds = Some(verify_started.elapsed().as_secs_f64());
    let (plan, spool, toc) = match verified {
        Ok(v) => v,
        Err(e) => {
            let (status, detail) = failure_detail(&e);
            record.check_of_phase(digest_check(status, detail.clone()));
            record.phase(PhaseName::Verify, Status::Failed, verify_seconds, detail);
            record.not_reached(&[PhaseName::Restore, PhaseName::Checks]);
            return Ok(());
        }
    };
    tools.pg_restore = pg_restore_version(&plan).await;
    record.check(digest_check(
        Status::Passed,
        format!(
            "all matched; {} authenticated and decompressed",
            crate::units::human_bytes(spool.bytes)
        ),
    ));
    record.phase(
        PhaseName::Verify,
        Status::Passed,
        verify_seconds,
        format!(
            "downloaded {}, authenticated, decompressed {} to a spool file",
            crate::units::human_bytes(
                manifest
                    .object(object::DUMP)
                    .map(|o| o.digest.stored_size)
                    .unwrap_or(0)
            ),
            crate::units::human_bytes(spool.bytes)
        ),
    );

    // Phase 3: restore.
    let restore_started = Instant::now();
    let restored = restore::execute_prepared(
        repo,
        plan,
        Some(&spool),
        request.identities,
        request.progress.clone(),
        cancel,
    )
    .await;
    drop(spool);
    let restore_seconds = Some(restore_started.elapsed().as_secs_f64());
    let pg_restore_check = |status: Status, actual: String| CheckResult {
        kind: "builtin".into(),
        name: "pg_restore reported no errors".into(),
        expected: "exit 0, no errors".into(),
        actual,
        status,
    };
    let report = match restored {
        Err(Error::Cancelled) => return Err(Error::Cancelled),
        Err(e) => {
            record.check_of_phase(pg_restore_check(Status::Failed, e.to_string()));
            record.phase(
                PhaseName::Restore,
                Status::Failed,
                restore_seconds,
                e.to_string(),
            );
            record.not_reached(&[PhaseName::Checks]);
            return Ok(());
        }
        Ok(r) => r,
    };
    record.check(pg_restore_check(Status::Passed, "exit 0, no errors".into()));
    for t in &report.tables {
        record.check(CheckResult {
            kind: "builtin".into(),
            name: format!("row count {}", t.table),
            expected: t
                .expected
                .map(|n| format!("= {n}"))
                .unwrap_or_else(|| "(table not in the backup)".into()),
            actual: t
                .actual
                .map(|n| n.to_string())
                .unwrap_or_else(|| "table missing".into()),
            status: if t.passed() {
                Status::Passed
            } else {
                Status::Failed
            },
        });
    }
    if !report.passed() {
        let bad = report.tables.iter().filter(|t| !t.passed()).count();
        record.phase(
            PhaseName::Restore,
            Status::Failed,
            restore_seconds,
            format!(
                "{bad} table(s) differ from the backup's snapshot; the restored copy was dropped"
            ),
        );
        record.not_reached(&[PhaseName::Checks]);
        return Ok(());
    }
    record.phase(
        PhaseName::Restore,
        Status::Passed,
        restore_seconds,
        format!(
            "pg_restore -j {} into {}; {} table(s) with exact row counts",
            config.jobs,
            target.info.database,
            report.tables.len()
        ),
    );

    // Phase 4: checks.
    let checks_started = Instant::now();
    let checked = tokio::select! {
        c = check_phase(config, target, &toc) => c,
        _ = cancel.cancelled() => return Err(Error::Cancelled),
    };
    let checks_seconds = Some(checks_started.elapsed().as_secs_f64());
    match checked {
        Ok(results) => {
            let failed = results
                .iter()
                .filter(|c| c.status == Status::Failed)
                .count();
            let total = results.len();
            for c in results {
                record.check(c);
            }
            if failed == 0 {
                record.phase(
                    PhaseName::Checks,
                    Status::Passed,
                    checks_seconds,
                    format!("{total} check(s) ran"),
                );
            } else {
                // The failures are listed per check; the phase only counts them.
                record.phases.push(Phase {
                    name: PhaseName::Checks.as_str().into(),
                    status: Status::Failed,
                    seconds: checks_seconds,
                    counts_for_rto: true,
                    detail: format!("{failed} of {total} check(s) failed"),
                });
            }
        }
        Err(e) => record.phase(
            PhaseName::Checks,
            Status::Failed,
            checks_seconds,
            e.to_string(),
        ),
    }
    Ok(())
}

/// How a report states a failure to get or check the backup's bytes: damaged bytes
/// fail the digest check; a read that failed (storage, network) leaves it not run, in
/// words that cannot be mistaken for corruption.
pub(crate) fn failure_detail(e: &Error) -> (Status, String) {
    match crate::logical::verify::finding_of(e) {
        crate::logical::verify::Finding::Bad => (Status::Failed, e.to_string()),
        _ if e.kind() == crate::error::ErrorKind::Repository => (
            Status::Skipped,
            format!("could not read the backup from the repository, so its integrity is unknown (a storage or network failure, not corruption): {e}"),
        ),
        _ => (Status::Skipped, format!("could not check the backup: {e}")),
    }
}

fn short(hex: &str) -> String {
    hex.chars().take(16).collect::<String>() + "…"
}

async fn pg_restore_version(plan: &restore::RestorePlan) -> String {
    tokio::process::Command::new(plan.tools().tool("pg_restore"))
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

async fn verify_phase(
    repo: &Repository,
    request: &DrillRequest<'_>,
    manifest: &BackupManifest,
    target: &PreparedTarget,
    options: RestoreOptions,
) -> Result<(restore::RestorePlan, restore::SpooledDump, String)> {
    let plan = restore::plan_into(
        repo,
        &manifest.id,
        target.restore_into.clone(),
        request.identities,
        options,
    )
    .await?;
    plan.refusal()?;
    let spool =
        restore::spool_dump(repo, &plan, request.identities, request.progress.clone()).await?;
    let toc = restore::spooled_toc(&plan, &spool).await?;
    Ok((plan, spool, toc))
}

async fn check_phase(
    config: &RestoreTestConfig,
    target: &PreparedTarget,
    toc: &str,
) -> Result<Vec<CheckResult>> {
    let client = target.restore_into.connect().await?;
    let mut results = vec![
        checks::indexes_valid(&client).await,
        checks::sequences_present(&client, &checks::toc_sequences(toc)).await,
    ];
    if config.amcheck {
        results.extend(checks::amcheck(&client).await);
    }
    let timeout_ms = config.check_timeout.num_milliseconds();
    for check in &config.checks {
        results.push(checks::sql_check(&client, check, timeout_ms).await);
    }
    Ok(results)
}

/// The trend of earlier reports and the link to the newest one.
async fn store_history(
    repo: &Repository,
) -> Result<(Vec<report::HistoryPoint>, Option<ChainLink>)> {
    let ids = store::list_ids(repo).await?;
    let mut history = Vec::new();
    let mut previous = None;
    for id in &ids {
        let bytes = repo
            .storage()
            .get(&store::report_key(repo, id, "json"))
            .await?;
        if let Ok(r) = store::parse_report(id, &bytes) {
            history.push(r.history_point());
        }
        previous = Some(ChainLink {
            id: id.clone(),
            sha256: sha256_hex(&bytes),
        });
    }
    Ok((history, previous))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A point-in-time drill whose repository cannot be listed (a manifest that is
    /// listed but cannot be read) still stores a FAIL report that says why.
    #[tokio::test]
    async fn a_drill_that_cannot_finish_still_stores_its_report() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        std::fs::create_dir_all(root.join("app/backups/20261201T000000Z-00000000")).unwrap();
        std::os::unix::fs::symlink(
            dir.path().join("nowhere"),
            root.join("app/backups/20261201T000000Z-00000000/manifest.json"),
        )
        .unwrap();
        let key = dir.path().join("key.txt");
        let recipient = crate::keys::generate_identity_file(&key).unwrap();
        let text = format!(
            "name = \"app\"\n[source]\nurl = \"postgres://u@127.0.0.1:1/app\"\n[repository]\nurl = \"file://{}\"\n[encryption]\nrecipients = [\"{recipient}\"]\n[restore_test]\nkind = \"pitr\"\n",
            root.display()
        );
        let policy = Policy::parse(&dir.path().join("p.toml"), &text).unwrap();
        let config = policy.restore_test.clone().unwrap();
        let identities = Identities::load(&key).unwrap();
        let repo = Repository::open(&policy).await.unwrap();
        let request = DrillRequest {
            policy: &policy,
            config: &config,
            identities: &identities,
            backup: None,
            keep: false,
            progress: Arc::new(Progress::default()),
        };
        let outcome = run(&repo, request, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(outcome.report.verdict, Verdict::Fail);
        let setup = &outcome.report.phases[0];
        assert_eq!(
            (setup.name.as_str(), setup.status),
            ("setup", Status::Failed)
        );
        assert!(setup.detail.contains("manifest.json"), "{}", setup.detail);
        assert!(outcome
            .report
            .phases
            .iter()
            .skip(1)
            .all(|p| p.status == Status::NotReached));
        let stored = store::list_ids(&repo).await.unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0], outcome.report.id);
    }
}
