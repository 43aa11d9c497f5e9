//! Point-in-time restore drills (`[restore_test] kind = "pitr"`): restore the cluster to a
//! random moment between the oldest base backup and the newest archived WAL, and prove
//! the moment was reached.
//!
//! The proof needs nothing written into the source: when PostgreSQL stops at a
//! `recovery_target_time` it logs the first commit it did *not* apply (`recovery
//! stopping before commit of transaction …, time T1`) and the last one it did (`last
//! completed transaction was at log time T0`). The drill passes this check only when
//! `T0 <= target < T1`: every transaction up to the target is there and none after it.
//!
//! Phases: `setup` (server binaries, a private data directory), `verify` (plan: base
//! backup and continuous WAL; extract with every digest checked), `restore` (start the
//! server and replay to the target), `checks` (the proof), `cleanup` (stop, remove).
//! The RPO of point-in-time recovery is the archive lag: the time since the source last
//! archived a segment.

use std::time::Instant;

use chrono::{DateTime, Utc};
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::report::{
    CheckResult, DrillTarget, ObjectiveResult, RpoResult, Status, TestedBackup, ToolVersions,
};
use super::{seconds_of, tested_backup, DrillRequest, PhaseName, Record};
use crate::error::{Error, Result};
use crate::physical::pitr::{self, PitrOptions, RecoveryAction, RecoveryTarget};
use crate::repository::{BackupKind, BackupManifest, Repository};

/// A log line's timestamp after `marker` (`… time 2026-11-28 06:37:39.220544+00`).
fn time_after(line: &str, marker: &str) -> Option<DateTime<Utc>> {
    let rest = line.split(marker).nth(1)?.trim();
    pitr::parse_target_time(rest.trim_end_matches(|c: char| !c.is_ascii_digit())).ok()
}

/// The proof that replay stopped exactly at `target`, from the server's log lines.
pub fn prove_target(target: DateTime<Utc>, reached: &[String]) -> CheckResult {
    let stopped = reached
        .iter()
        .find(|l| l.contains("recovery stopping before commit"))
        .and_then(|l| time_after(l, ", time "));
    let last = reached
        .iter()
        .find(|l| l.contains("last completed transaction was at log time"))
        .and_then(|l| time_after(l, "log time "));
    // PostgreSQL logs the last completed transaction only when replay applied one. When
    // it stopped before the first commit after the target without applying any, no
    // commit lay between the base backup and the target: the base backup itself is the
    // state at the target, which proves it as well.
    let passed = match (last, stopped) {
        (Some(l), Some(s)) => l <= target && target < s,
        (None, Some(s)) => target < s,
        _ => false,
    };
    let show = |t: Option<DateTime<Utc>>| {
        t.map(|t| t.format("%H:%M:%S%.6f").to_string())
            .unwrap_or_else(|| "not logged".into())
    };
    let show_last = match (last, stopped) {
        (None, Some(_)) => "none (no commit replayed before the target)".to_string(),
        _ => show(last),
    };
    CheckResult {
        kind: "builtin".into(),
        name: "recovery stopped exactly at the target".into(),
        expected: format!(
            "last applied commit <= {} < first skipped commit",
            target.format("%H:%M:%S%.6f")
        ),
        actual: format!("last applied {show_last}, first skipped {}", show(stopped)),
        status: if passed {
            Status::Passed
        } else {
            Status::Failed
        },
    }
}

/// Run the point-in-time drill. Returns what the report needs besides the record.
pub(crate) async fn drill(
    repo: &Repository,
    request: &DrillRequest<'_>,
    started_at: DateTime<Utc>,
    record: &mut Record,
    tools: &mut ToolVersions,
    cancel: &CancellationToken,
) -> Result<(Option<TestedBackup>, Option<DrillTarget>, Option<RpoResult>)> {
    let config = request.config;
    let physical: Vec<BackupManifest> = repo
        .list_backups()
        .await?
        .into_iter()
        .filter(|m| m.kind == BackupKind::Physical)
        .collect();
    let check = crate::physical::archive_check::check(repo, request.policy)
        .await
        .ok();
    let archiver = check.as_ref().and_then(|c| c.archiver.clone().ok());
    let mut last_archived = archiver.as_ref().and_then(|a| a.last_archived_at);
    // With streaming, the RPO is the stream's lag, not the time since a segment was
    // archived (the server archives nothing).
    if let Some(stream) = check.as_ref().and_then(|c| c.stream.as_ref()) {
        last_archived = stream
            .rpo_seconds(started_at)
            .map(|rpo| started_at - chrono::Duration::milliseconds((rpo * 1000.0) as i64));
    }
    let rpo = last_archived.map(|t| {
        let lag = seconds_of(started_at - t);
        RpoResult {
            objective: ObjectiveResult::new(Some(lag), config.rpo_objective.map(seconds_of)),
            data_age_seconds: lag,
            worst_gap_seconds: lag,
            worst_gap_from: Some(t),
            worst_gap_to: Some(started_at),
            window_seconds: 0.0,
            backups_in_window: physical.len(),
        }
    });
    // `pick = "latest"` tests the newest base backup (with its chain, when it is an
    // incremental): the target lies after it. `random` draws from the whole archive.
    let window_start = match config.pick {
        crate::policy::DrillPick::Latest => physical.iter().map(|m| m.consistent_at).max(),
        crate::policy::DrillPick::Random(_) => physical.iter().map(|m| m.consistent_at).min(),
    };
    let Some(oldest) = window_start else {
        record.setup_failed(
            None,
            format!(
                "policy {} has no physical base backup to test",
                request.policy.name
            ),
        );
        return Ok((None, None, rpo));
    };
    // A target needs a commit after it in the archive, or recovery ends before reaching
    // it. The drill makes one (an empty transaction), closes its WAL segment and waits
    // until it is archived (a drill against a copy then copies the WAL the copy lacks);
    // without access to the source it falls back to the newest archived segment's time.
    let anchor = match config.from_copy.as_deref() {
        None => anchor_commit(repo, &request.policy.source.url).await,
        Some(copy) => anchor_in_copy(request.policy, copy, cancel).await,
    };
    if let Err(e) = &anchor {
        tracing::warn!(error = %e, "cannot write an anchor commit on the source; the drill's target may lie past the archived WAL");
    }
    let newest = anchor
        .ok()
        .or(last_archived)
        .unwrap_or(started_at)
        .max(oldest);
    let span_ms = (newest - oldest).num_milliseconds().max(0);
    let target = oldest + chrono::Duration::milliseconds(rand::thread_rng().gen_range(0..=span_ms));

    let setup_started = Instant::now();
    let work = match work_dir(config.work_dir.as_deref()) {
        Ok(w) => w,
        Err(e) => {
            record.setup_failed(Some(setup_started.elapsed().as_secs_f64()), e.to_string());
            return Ok((None, None, rpo));
        }
    };
    let pgdata = work.path().join("data");
    let port = crate::server::host::free_port()?;
    record.phase(
        PhaseName::Setup,
        Status::Passed,
        Some(setup_started.elapsed().as_secs_f64()),
        format!(
            "data directory {}, target time {}",
            pgdata.display(),
            target.format("%Y-%m-%d %H:%M:%S%.6f UTC")
        ),
    );

    let verify_started = Instant::now();
    // The base backup's own timeline: the drill tests the source's history, not a
    // timeline some restored copy started.
    let planned = pitr::plan(
        repo,
        RecoveryTarget::Time(target),
        pitr::TimelineChoice::Current,
        &pgdata,
        request.identities,
    )
    .await;
    let plan = match planned {
        Ok(p) => p,
        Err(e) => {
            record.phase(
                PhaseName::Verify,
                Status::Failed,
                Some(verify_started.elapsed().as_secs_f64()),
                super::failure_detail(&e).1,
            );
            record.not_reached(&[PhaseName::Restore, PhaseName::Checks]);
            return Ok((None, None, rpo));
        }
    };
    let tested = tested_backup(
        &plan.base,
        format!(
            "newest base backup before {}",
            target.format("%Y-%m-%d %H:%M:%S UTC")
        ),
    );
    let restore_command = match crate::physical::wal::restore_command_from(
        &request.policy.path,
        request.identities.path(),
        4,
        config.from_copy.as_deref(),
    ) {
        Ok(command) => command,
        Err(e) => {
            record.phase(
                PhaseName::Verify,
                Status::Failed,
                Some(verify_started.elapsed().as_secs_f64()),
                e.to_string(),
            );
            record.not_reached(&[PhaseName::Restore, PhaseName::Checks]);
            return Ok((Some(tested), None, rpo));
        }
    };
    let options = PitrOptions {
        force: false,
        action: RecoveryAction::Promote,
        restore_command,
        start: true,
        port: Some(port),
        bin_dir: config.bin_dir.clone(),
        download_parallelism: request.policy.repository.parts_in_flight,
        keep_archiving: false,
        server_settings: vec![
            "listen_addresses=127.0.0.1".into(),
            format!("unix_socket_directories={}", work.path().display()),
        ],
    };
    let target_info = DrillTarget {
        kind: "ephemeral".into(),
        server: format!("127.0.0.1:{port}"),
        database: "(whole cluster)".into(),
        server_version: plan.base.server_version.clone(),
        kept: false,
    };
    tools.pg_restore = format!("pg_basebackup archive of {}", plan.base.dump_tool_version);
    let executed = tokio::select! {
        r = pitr::execute(repo, &plan, request.identities, &options, request.progress.clone(), cancel) => r,
        _ = cancel.cancelled() => Err(Error::Cancelled),
    };
    let verify_wall = verify_started.elapsed().as_secs_f64();
    let major = (plan.base.server_version_num / 10000) as u32;
    let outcome = match executed {
        Err(Error::Cancelled) => {
            let _ = pitr::stop_server(&pgdata, major, config.bin_dir.as_deref()).await;
            return Err(Error::Cancelled);
        }
        Err(e) => {
            // Extraction and replay run in one call: the log tells how far it got.
            let replaying = pgdata.join("recovery.signal").exists();
            if replaying {
                record.phase(
                    PhaseName::Verify,
                    Status::Passed,
                    None,
                    "base backup extracted and verified".into(),
                );
                record.phase(
                    PhaseName::Restore,
                    Status::Failed,
                    Some(verify_wall),
                    e.to_string(),
                );
            } else {
                record.phase(
                    PhaseName::Verify,
                    Status::Failed,
                    Some(verify_wall),
                    super::failure_detail(&e).1,
                );
                record.not_reached(&[PhaseName::Restore]);
            }
            record.not_reached(&[PhaseName::Checks]);
            None
        }
        Ok(report) => {
            record.check(CheckResult {
                kind: "builtin".into(),
                name: "WAL continuous from the base backup to the target".into(),
                expected: format!("{} segment(s) archived", plan.segments.len()),
                actual: format!("{} segment(s) present", plan.segments.len()),
                status: Status::Passed,
            });
            record.phase(
                PhaseName::Verify,
                Status::Passed,
                Some(verify_wall - report.replay_seconds.unwrap_or(0.0)),
                format!(
                    "base backup {}{} extracted with every digest checked; {} WAL segment(s) planned",
                    plan.base.id,
                    if plan.chain.len() > 1 {
                        format!(
                            " (an incremental: its chain of {} backups from full {}, joined with pg_combinebackup)",
                            plan.chain.len(),
                            plan.chain[0].id
                        )
                    } else {
                        String::new()
                    },
                    plan.segments.len()
                ),
            );
            record.phase(
                PhaseName::Restore,
                Status::Passed,
                report.replay_seconds,
                format!(
                    "replayed WAL to {} and promoted",
                    target.format("%H:%M:%S%.6f")
                ),
            );
            Some(report)
        }
    };
    if let Some(report) = outcome {
        let checks_started = Instant::now();
        let proof = prove_target(target, &report.reached);
        let passed = proof.status == Status::Passed;
        record.check(proof);
        record.phase(
            PhaseName::Checks,
            if passed {
                Status::Passed
            } else {
                Status::Failed
            },
            Some(checks_started.elapsed().as_secs_f64()),
            if passed {
                "the target was reached exactly".into()
            } else {
                "the server log does not prove the target".into()
            },
        );
    }
    let cleanup_started = Instant::now();
    let stopped = pitr::stop_server(&pgdata, major, config.bin_dir.as_deref()).await;
    drop(work);
    match stopped {
        Ok(()) => record.phase(
            PhaseName::Cleanup,
            Status::Passed,
            Some(cleanup_started.elapsed().as_secs_f64()),
            "server stopped, data directory removed".into(),
        ),
        Err(e) if !pgdata.exists() => record.phase(
            PhaseName::Cleanup,
            Status::Passed,
            Some(cleanup_started.elapsed().as_secs_f64()),
            format!("data directory removed ({e})"),
        ),
        Err(e) => record.phase(
            PhaseName::Cleanup,
            Status::Failed,
            Some(cleanup_started.elapsed().as_secs_f64()),
            e.to_string(),
        ),
    }
    Ok((Some(tested), Some(target_info), rpo))
}

/// Commit an empty transaction on the source, switch WAL and wait (up to 5 minutes)
/// until the segment is in the repository (whatever the archive mode: the server's
/// "archived" means "in the spool" with asynchronous archiving, and nothing with
/// streaming). Returns a time just before that commit.
async fn anchor_commit(repo: &Repository, source_url: &str) -> Result<DateTime<Utc>> {
    let client = crate::postgres::ConnTarget::parse(source_url)?
        .connect()
        .await?;
    let before: DateTime<Utc> = client
        .query_one("select clock_timestamp()", &[])
        .await
        .map_err(|e| Error::pg("cannot read the source's clock", e))?
        .get(0);
    client
        .batch_execute("begin; select txid_current(); commit")
        .await
        .map_err(|e| Error::pg("cannot commit the drill's anchor transaction", e))?;
    let segment: String = client
        .query_one("select pg_walfile_name(pg_switch_wal())", &[])
        .await
        .map_err(|e| {
            Error::pg(
                "cannot switch WAL (pg_switch_wal needs a superuser or a grant)",
                e,
            )
        })?
        .get(0);
    let deadline = Instant::now() + std::time::Duration::from_secs(300);
    loop {
        if crate::physical::wal::archive::is_archived(repo, &segment).await? {
            return Ok(before);
        }
        if Instant::now() > deadline {
            return Err(Error::Invalid(format!(
                "WAL segment {segment} was not stored in the repository within 5 minutes"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// The anchor commit of a drill against the copy `copy`: made on the source and awaited
/// in the primary repository like any anchor, then the WAL the copy lacks is copied to
/// it (as `pgvault copy` would), so that the target lies inside the copy's WAL. The
/// backup and every WAL file are still read from the copy.
async fn anchor_in_copy(
    policy: &crate::policy::Policy,
    copy: &str,
    cancel: &CancellationToken,
) -> Result<DateTime<Utc>> {
    let primary = Repository::open(policy).await?;
    let before = anchor_commit(&primary, &policy.source.url).await?;
    let config = policy.copy(copy)?;
    let target = Repository::open_copy(policy, copy).await?;
    let copied = crate::copy::copy_wal(
        &primary,
        &crate::copy::CopyTarget {
            name: copy,
            repo: &target,
            retention: policy.retention_of_copy(config),
            transfer: crate::copy::transfer_of(config),
        },
        cancel,
    )
    .await?;
    if let Some(failure) = copied.failures.first() {
        return Err(Error::Invalid(format!(
            "cannot bring copy {copy}'s WAL up to the drill's anchor: {failure}"
        )));
    }
    Ok(before)
}

fn work_dir(parent: Option<&std::path::Path>) -> Result<tempfile::TempDir> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("pgvault-pitr-drill-");
    let dir = match parent {
        Some(p) => builder.tempdir_in(p),
        None => builder.tempdir(),
    }
    .map_err(|e| Error::io("cannot create the drill's data directory", e))?;
    crate::server::host::server_user(dir.path())?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn lines(stop: &str, last: &str) -> Vec<String> {
        vec![
            format!("2026-11-28 06:37:49.708 UTC [1] LOG:  recovery stopping before commit of transaction 738, time {stop}"),
            format!("2026-11-28 06:37:49.708 UTC [1] LOG:  last completed transaction was at log time {last}"),
        ]
    }

    #[test]
    fn the_target_is_proven_only_between_the_two_commits() {
        let target = Utc.with_ymd_and_hms(2026, 11, 28, 6, 37, 38).unwrap();
        let ok = prove_target(
            target,
            &lines(
                "2026-11-28 06:37:39.220544+00",
                "2026-11-28 06:37:37.119025+00",
            ),
        );
        assert_eq!(ok.status, Status::Passed, "{ok:?}");
        let late = prove_target(
            target,
            &lines("2026-11-28 06:37:39.2+00", "2026-11-28 06:37:38.5+00"),
        );
        assert_eq!(late.status, Status::Failed);
        let silent = prove_target(target, &[]);
        assert_eq!(silent.status, Status::Failed);
        assert!(silent.actual.contains("not logged"));
        // Stopped at the first commit after the target without replaying one: the base
        // backup is the state at the target (a target just after the backup).
        let stop_only = vec![lines("2026-11-28 06:37:39.2+00", "x")[0].clone()];
        let proved = prove_target(target, &stop_only);
        assert_eq!(proved.status, Status::Passed, "{proved:?}");
        assert!(
            proved.actual.contains("none (no commit replayed"),
            "{proved:?}"
        );
        let early = prove_target(target, &[lines("2026-11-28 06:37:37.9+00", "x")[0].clone()]);
        assert_eq!(early.status, Status::Failed);
    }
}
