//! The `/metrics` endpoint: every policy's status in Prometheus text format.
//!
//! The registry is built from the shared statuses at each scrape, so the figures are
//! always the current ones (the backup age in particular grows between backups).

use std::sync::atomic::AtomicU64;

use chrono::Utc;
use pgvault_core::runner::SharedStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabel {
    policy: String,
}

type GaugeF = Family<PolicyLabel, Gauge<f64, AtomicU64>>;
type CounterU = Family<PolicyLabel, Counter<u64>>;

/// A policy and one of its copies (`[[repository.copies]]`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CopyLabel {
    policy: String,
    copy: String,
}

type CopyGauge = Family<CopyLabel, Gauge<f64, AtomicU64>>;

/// Render the statuses as Prometheus text.
pub fn render(statuses: &[SharedStatus]) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("pgvault");
    let gauge = |registry: &mut Registry, name: &str, help: &str| {
        let family = GaugeF::default();
        registry.register(name, help, family.clone());
        family
    };
    let last_success = gauge(
        &mut registry,
        "last_success_timestamp_seconds",
        "When the last successful backup finished (Unix time)",
    );
    let last_attempt = gauge(
        &mut registry,
        "last_attempt_timestamp_seconds",
        "When the last backup run started (Unix time)",
    );
    let last_ok = gauge(
        &mut registry,
        "last_attempt_success",
        "1 if the last backup run succeeded, 0 if it failed",
    );
    let duration = gauge(
        &mut registry,
        "last_duration_seconds",
        "Duration of the last successful backup",
    );
    let raw = gauge(
        &mut registry,
        "last_raw_bytes",
        "Uncompressed size of the last successful backup",
    );
    let stored = gauge(
        &mut registry,
        "last_stored_bytes",
        "Stored (compressed, encrypted) size of the last successful backup",
    );
    let age = gauge(
        &mut registry,
        "backup_age_seconds",
        "Seconds since the data time of the newest successful backup (the logical RPO now)",
    );
    let kept = gauge(&mut registry, "backups_kept", "Backups in the repository");
    let stale = gauge(
        &mut registry,
        "retention_stale",
        "1 if retention deleted nothing because the newest backup is too old",
    );
    let failures = CounterU::default();
    registry.register(
        "backup_failures",
        "Failed backup runs since the agent started",
        failures.clone(),
    );
    let deletions = CounterU::default();
    registry.register(
        "retention_deletions",
        "Backups deleted by retention since the agent started",
        deletions.clone(),
    );

    let physical_success = gauge(
        &mut registry,
        "physical_last_success_timestamp_seconds",
        "When the last physical base backup finished (Unix time)",
    );
    let physical_ok = gauge(
        &mut registry,
        "physical_last_attempt_success",
        "1 if the last scheduled physical backup succeeded, 0 if it failed",
    );
    let archive_lag = gauge(
        &mut registry,
        "wal_archive_lag_seconds",
        "Seconds since the source last archived a WAL segment (the RPO of point-in-time recovery now)",
    );
    let archive_gaps = gauge(
        &mut registry,
        "wal_archive_gaps",
        "Physical base backups whose WAL is not continuous in the archive",
    );
    let archiver_failing = gauge(
        &mut registry,
        "wal_archiver_failing",
        "1 if the source's last archive attempt failed",
    );
    let gap_records = gauge(
        &mut registry,
        "wal_gap_records",
        "WAL ranges dropped by a full archive spool (queue_full = \"drop\") and recorded in the repository: point-in-time recovery cannot cross them",
    );
    let dropped_unrecorded = gauge(
        &mut registry,
        "wal_dropped_unrecorded",
        "Segments this host's archive spool dropped whose gap is not yet recorded in the repository",
    );
    let spool_backlog = gauge(
        &mut registry,
        "wal_spool_backlog_bytes",
        "Bytes of WAL waiting in this host's archive spool (asynchronous archiving)",
    );
    let stream_up = gauge(
        &mut registry,
        "wal_stream_up",
        "1 if this agent's WAL stream receives now (streaming mode)",
    );
    let stream_lag = gauge(
        &mut registry,
        "wal_stream_lag_bytes",
        "Bytes of WAL the source has flushed that the repository does not hold (streaming mode)",
    );
    let stream_problems = gauge(
        &mut registry,
        "wal_stream_problems",
        "Problems with the WAL stream (behind, stopped, slot unbounded, unreserved or lost); 0 when healthy",
    );
    let expected_interval = gauge(
        &mut registry,
        "backup_expected_interval_seconds",
        "Longest gap between consecutive slots of the backup schedule ([schedule] backup)",
    );
    let backup_grace = gauge(
        &mut registry,
        "backup_grace_seconds",
        "How late a scheduled backup may finish past its slot, besides its own duration: jitter plus the waits between retries",
    );
    let rpo_objective = gauge(
        &mut registry,
        "rpo_objective_seconds",
        "RPO objective of the policy ([restore_test] rpo_objective)",
    );
    let drill_interval = gauge(
        &mut registry,
        "restore_test_interval_seconds",
        "Longest gap between consecutive slots of the restore-test schedule ([restore_test] schedule)",
    );
    let drill_at = gauge(
        &mut registry,
        "restore_test_last_timestamp_seconds",
        "When the last restore test started (Unix time)",
    );
    let drill_ok = gauge(
        &mut registry,
        "restore_test_success",
        "1 if the last restore test passed, 0 if it failed",
    );
    let drill_rto = gauge(
        &mut registry,
        "restore_test_rto_seconds",
        "RTO measured by the last restore test",
    );
    let drill_rpo = gauge(
        &mut registry,
        "restore_test_rpo_seconds",
        "RPO measured by the last restore test (worst gap between backups)",
    );
    let drill_failures = CounterU::default();
    registry.register(
        "restore_test_failures",
        "Failed restore tests since the agent started",
        drill_failures.clone(),
    );

    let copy_gauge = |registry: &mut Registry, name: &str, help: &str| {
        let family = CopyGauge::default();
        registry.register(name, help, family.clone());
        family
    };
    let copy_success = copy_gauge(
        &mut registry,
        "copy_last_success_timestamp_seconds",
        "When the last copy after a backup to this copy finished with everything copied (Unix time)",
    );
    let copy_attempt = copy_gauge(
        &mut registry,
        "copy_last_attempt_timestamp_seconds",
        "When the last copy after a backup to this copy started (Unix time)",
    );
    let copy_lag = copy_gauge(
        &mut registry,
        "copy_lag_seconds",
        "How long ago the oldest backup this copy lacks finished, as of the last copy (0: none lacking)",
    );
    let copy_missing = copy_gauge(
        &mut registry,
        "copy_missing_backups",
        "Backups of the primary this copy lacks, as of the last copy",
    );
    let copy_failures = Family::<CopyLabel, Counter<u64>>::default();
    registry.register(
        "copy_failures",
        "Failed copies to this copy since the agent started (the backups themselves succeeded)",
        copy_failures.clone(),
    );

    let now = Utc::now();
    for status in statuses {
        let Ok(s) = status.lock() else { continue };
        let label = PolicyLabel {
            policy: s.policy.clone(),
        };
        if let Some(t) = s.last_success {
            last_success
                .get_or_create(&label)
                .set(t.timestamp_millis() as f64 / 1000.0);
        }
        if let Some(t) = s.last_attempt {
            last_attempt
                .get_or_create(&label)
                .set(t.timestamp_millis() as f64 / 1000.0);
        }
        if let Some(ok) = s.last_attempt_ok {
            last_ok
                .get_or_create(&label)
                .set(if ok { 1.0 } else { 0.0 });
        }
        if let Some(t) = s.newest_backup_at {
            age.get_or_create(&label)
                .set((now - t).num_milliseconds() as f64 / 1000.0);
        }
        duration.get_or_create(&label).set(s.last_duration_seconds);
        raw.get_or_create(&label).set(s.last_raw_bytes as f64);
        stored.get_or_create(&label).set(s.last_stored_bytes as f64);
        kept.get_or_create(&label).set(s.backups_kept as f64);
        stale
            .get_or_create(&label)
            .set(if s.retention_stale { 1.0 } else { 0.0 });
        failures.get_or_create(&label).inc_by(s.failures_total);
        if let Some(t) = s.last_physical_success {
            physical_success
                .get_or_create(&label)
                .set(t.timestamp_millis() as f64 / 1000.0);
        }
        if let Some(ok) = s.last_physical_ok {
            physical_ok
                .get_or_create(&label)
                .set(if ok { 1.0 } else { 0.0 });
        }
        if let Some(v) = s.wal_archive_lag_seconds {
            archive_lag.get_or_create(&label).set(v);
        }
        if let Some(v) = s.wal_archive_gaps {
            archive_gaps.get_or_create(&label).set(v as f64);
        }
        if let Some(v) = s.wal_archiver_failing {
            archiver_failing
                .get_or_create(&label)
                .set(if v { 1.0 } else { 0.0 });
        }
        if let Some(v) = s.wal_gap_records {
            gap_records.get_or_create(&label).set(v as f64);
        }
        if let Some(v) = s.wal_dropped_unrecorded {
            dropped_unrecorded.get_or_create(&label).set(v as f64);
        }
        if let Some(v) = s.wal_spool_backlog_bytes {
            spool_backlog.get_or_create(&label).set(v as f64);
        }
        let seconds = |d: chrono::Duration| d.num_milliseconds() as f64 / 1000.0;
        if let Some(d) = s.cadence.backup_interval {
            expected_interval.get_or_create(&label).set(seconds(d));
            backup_grace
                .get_or_create(&label)
                .set(seconds(s.cadence.grace));
        }
        if let Some(d) = s.cadence.rpo_objective {
            rpo_objective.get_or_create(&label).set(seconds(d));
        }
        if let Some(d) = s.cadence.restore_test_interval {
            drill_interval.get_or_create(&label).set(seconds(d));
        }
        if let Some(v) = s.wal_stream_up {
            stream_up
                .get_or_create(&label)
                .set(if v { 1.0 } else { 0.0 });
        }
        if let Some(v) = s.wal_stream_lag_bytes {
            stream_lag.get_or_create(&label).set(v as f64);
        }
        if let Some(v) = s.wal_stream_problems {
            stream_problems.get_or_create(&label).set(v as f64);
        }
        if let Some(t) = s.last_drill_at {
            drill_at
                .get_or_create(&label)
                .set(t.timestamp_millis() as f64 / 1000.0);
        }
        if let Some(ok) = s.last_drill_passed {
            drill_ok
                .get_or_create(&label)
                .set(if ok { 1.0 } else { 0.0 });
        }
        if let Some(v) = s.last_drill_rto_seconds {
            drill_rto.get_or_create(&label).set(v);
        }
        if let Some(v) = s.last_drill_rpo_seconds {
            drill_rpo.get_or_create(&label).set(v);
        }
        if s.last_drill_at.is_some() {
            drill_failures
                .get_or_create(&label)
                .inc_by(s.drill_failures_total);
        }
        deletions
            .get_or_create(&label)
            .inc_by(s.retention_deletions_total);
        for (copy, c) in &s.copies {
            let label = CopyLabel {
                policy: s.policy.clone(),
                copy: copy.clone(),
            };
            if let Some(t) = c.last_success {
                copy_success
                    .get_or_create(&label)
                    .set(t.timestamp_millis() as f64 / 1000.0);
            }
            if let Some(t) = c.last_attempt {
                copy_attempt
                    .get_or_create(&label)
                    .set(t.timestamp_millis() as f64 / 1000.0);
            }
            if let Some(v) = c.lag_seconds {
                copy_lag.get_or_create(&label).set(v);
            }
            if let Some(v) = c.missing_backups {
                copy_missing.get_or_create(&label).set(v as f64);
            }
            copy_failures.get_or_create(&label).inc_by(c.failures_total);
        }
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}
