//! The shape of a policy file as TOML, before validation: every value keeps its span
//! so a mistake is reported at its line and column. `deny_unknown_fields` turns a typo
//! in a key into an error rather than a silently ignored setting.

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) name: Spanned<String>,
    pub(super) source: RawSource,
    pub(super) repository: RawRepository,
    pub(super) encryption: Spanned<RawEncryption>,
    #[serde(default)]
    pub(super) compression: RawCompression,
    #[serde(default)]
    pub(super) backup: RawBackup,
    #[serde(default)]
    pub(super) archive: RawArchive,
    pub(super) retention: Option<Spanned<RawRetention>>,
    pub(super) schedule: Option<RawSchedule>,
    pub(super) notify: Option<RawNotify>,
    pub(super) restore_test: Option<RawRestoreTest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRestoreTest {
    pub(super) kind: Option<Spanned<String>>,
    pub(super) schedule: Option<Spanned<String>>,
    pub(super) timezone: Option<Spanned<String>>,
    pub(super) target: Option<Spanned<String>>,
    pub(super) pick: Option<Spanned<String>>,
    pub(super) within: Option<Spanned<String>>,
    pub(super) rto_objective: Option<Spanned<String>>,
    pub(super) rpo_objective: Option<Spanned<String>>,
    pub(super) rpo_window: Option<Spanned<String>>,
    pub(super) identity_file: Option<Spanned<String>>,
    pub(super) bin_dir: Option<Spanned<String>>,
    pub(super) work_dir: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) allow_source_server: bool,
    pub(super) jobs: Option<Spanned<u32>>,
    pub(super) amcheck: Option<bool>,
    pub(super) check_timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) checks: Vec<RawSqlCheck>,
    pub(super) from_copy: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSqlCheck {
    pub(super) name: Spanned<String>,
    pub(super) sql: Spanned<String>,
    pub(super) expect: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    pub(super) webhook: Spanned<String>,
    pub(super) format: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) on_success: bool,
    #[serde(default)]
    pub(super) on_retention: bool,
    pub(super) retries: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSchedule {
    pub(super) backup: Spanned<String>,
    pub(super) physical: Option<Spanned<String>>,
    pub(super) physical_incremental: Option<Spanned<String>>,
    pub(super) timezone: Option<Spanned<String>>,
    pub(super) jitter: Option<Spanned<String>>,
    pub(super) retries: Option<u32>,
    pub(super) retry_backoff: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetention {
    pub(super) keep_last: Option<u32>,
    pub(super) keep_hourly: Option<u32>,
    pub(super) keep_daily: Option<u32>,
    pub(super) keep_weekly: Option<u32>,
    pub(super) keep_monthly: Option<u32>,
    pub(super) keep_yearly: Option<u32>,
    pub(super) keep_within: Option<Spanned<String>>,
    pub(super) max_age: Option<Spanned<String>>,
    pub(super) orphan_min_age: Option<Spanned<String>>,
    pub(super) prune_after_backup: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub(super) url: Spanned<String>,
    pub(super) bin_dir: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRepository {
    pub(super) url: Spanned<String>,
    pub(super) endpoint: Option<Spanned<String>>,
    pub(super) region: Option<String>,
    pub(super) part_size: Option<Spanned<String>>,
    pub(super) parts_in_flight: Option<Spanned<usize>>,
    pub(super) abort_incomplete_after_days: Option<Spanned<i32>>,
    pub(super) transition_after_days: Option<Spanned<i32>>,
    pub(super) transition_storage_class: Option<String>,
    pub(super) connect_timeout: Option<Spanned<String>>,
    pub(super) first_byte_timeout: Option<Spanned<String>>,
    pub(super) stall_timeout: Option<Spanned<String>>,
    pub(super) max_attempts: Option<Spanned<u32>>,
    pub(super) retry_time: Option<Spanned<String>>,
    // Keys of a `[[repository.copies]]` entry only (see `policy/copies.rs`): a copy is
    // written like `[repository]`, plus these.
    pub(super) name: Option<Spanned<String>>,
    pub(super) copy_after_backup: Option<Spanned<bool>>,
    pub(super) max_lag: Option<Spanned<String>>,
    pub(super) retention: Option<Spanned<RawRetention>>,
    // `[repository]` only: its `[[repository.copies]]`.
    #[serde(default)]
    pub(super) copies: Vec<Spanned<RawRepository>>,
    pub(super) object_lock: Option<Spanned<RawObjectLock>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawObjectLock {
    pub(super) mode: Spanned<String>,
    pub(super) days: Spanned<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEncryption {
    #[serde(default)]
    pub(super) recipients: Vec<Spanned<String>>,
    pub(super) recipients_file: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCompression {
    pub(super) level: Option<Spanned<i32>>,
    pub(super) threads: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackup {
    #[serde(default)]
    pub(super) include_role_passwords: bool,
    pub(super) archive_wait: Option<Spanned<String>>,
    pub(super) incremental_fallback: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawArchive {
    pub(super) mode: Option<Spanned<String>>,
    pub(super) spool_dir: Option<Spanned<String>>,
    pub(super) queue_max: Option<Spanned<String>>,
    pub(super) queue_full: Option<Spanned<String>>,
    pub(super) push_parallel: Option<Spanned<u32>>,
    pub(super) slot: Option<Spanned<String>>,
    pub(super) partial_interval: Option<Spanned<String>>,
    pub(super) stream_max_lag: Option<Spanned<String>>,
}
