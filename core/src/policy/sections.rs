//! One conversion per policy section, from its raw TOML shape ([`super::raw`]) to the
//! typed value the rest of pgvault uses. Each error carries the span of the value it
//! is about ([`Misplaced`]); [`super::Policy::parse`] turns the span into the file's
//! line and column. Sections that name files resolve them against the policy file's
//! directory ([`InDir`]).

use std::ops::Range;
use std::path::Path;

use toml::Spanned;

use super::raw::{
    RawArchive, RawBackup, RawCompression, RawEncryption, RawNotify, RawObjectLock, RawRepository,
    RawRestoreTest, RawRetention, RawSchedule, RawSource,
};
use super::{
    expand_env, parse_repository_url, retention, validate_postgres_url, ArchiveConfig, ArchiveMode,
    BackupOptions, CompressionConfig, DrillKind, DrillPick, DrillTargetConfig, IncrementalFallback,
    QueueFull, RepositoryConfig, RestoreTestConfig, RetentionConfig, ScheduleConfig, SourceConfig,
    SqlCheck, DEFAULT_ARCHIVE_WAIT, DEFAULT_PARTS_IN_FLIGHT, DEFAULT_PART_SIZE, MIN_PART_SIZE,
    RANDOM_PICK_WITHIN,
};
use crate::keys::Recipients;
use crate::schedule::{Schedule, ScheduleError};
use crate::storage::{
    LifecycleSettings, Location, LockMode, ObjectLockSettings, RequestSettings, StorageSettings,
};

/// A mistake in a policy, with the span of the value it is about (the whole section's
/// when no single value is to blame).
#[derive(Debug)]
pub(super) struct Misplaced {
    /// Byte range in the policy text.
    pub(super) span: Option<Range<usize>>,
    /// What is wrong and how to fix it.
    pub(super) message: String,
}

/// What a section conversion returns.
pub(super) type Found<T> = std::result::Result<T, Misplaced>;

/// A mistake at `span`.
pub(super) fn at(span: Option<Range<usize>>, message: String) -> Misplaced {
    Misplaced { span, message }
}

/// A raw section with the directory its relative paths are resolved against.
pub(super) struct InDir<'a, T> {
    /// The section as written.
    pub(super) raw: T,
    /// The policy file's directory.
    pub(super) dir: &'a Path,
}

/// One of a closed set of words (`key` names the setting in the error).
fn choice<T: Copy>(key: &str, value: &Spanned<String>, options: &[(&str, T)]) -> Found<T> {
    options
        .iter()
        .find(|(word, _)| *word == value.get_ref().as_str())
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let words: Vec<String> = options.iter().map(|(w, _)| format!("\"{w}\"")).collect();
            at(
                Some(value.span()),
                format!(
                    "{key} must be {}, not {:?}",
                    words.join(" or "),
                    value.get_ref()
                ),
            )
        })
}

/// A span of time the policy may give (`7d`, `36h`), with `prefix` before any error.
fn optional_span(prefix: &str, value: &Option<Spanned<String>>) -> Found<Option<chrono::Duration>> {
    value
        .as_ref()
        .map(|s| {
            crate::units::parse_span(s.get_ref()).map_err(|m| {
                at(
                    Some(s.span()),
                    if prefix.is_empty() {
                        m
                    } else {
                        format!("{prefix} {m}")
                    },
                )
            })
        })
        .transpose()
}

/// A schedule's error at the value it is about: the time zone or the expression.
fn schedule_error(
    error: ScheduleError,
    section: &str,
    expression: &Spanned<String>,
    timezone: Option<&Spanned<String>>,
) -> Misplaced {
    let span = match error {
        ScheduleError::TimeZone(_) => timezone.map(|t| t.span()),
        ScheduleError::Expression(_) => Some(expression.span()),
    };
    at(span, format!("{section} {error}"))
}

impl TryFrom<InDir<'_, RawSource>> for SourceConfig {
    type Error = Misplaced;

    fn try_from(InDir { raw, dir }: InDir<'_, RawSource>) -> Found<SourceConfig> {
        let source_url = expand_env(raw.url.get_ref()).map_err(|m| at(Some(raw.url.span()), m))?;
        validate_postgres_url(&source_url, "source url")
            .map_err(|m| at(Some(raw.url.span()), m))?;

        let bin_dir = raw.bin_dir.as_ref().map(|b| dir.join(b.get_ref()));

        Ok(SourceConfig {
            url: source_url,
            bin_dir,
        })
    }
}

impl TryFrom<InDir<'_, RawRepository>> for RepositoryConfig {
    type Error = Misplaced;

    fn try_from(InDir { raw, dir }: InDir<'_, RawRepository>) -> Found<RepositoryConfig> {
        let location = parse_repository_url(raw.url.get_ref(), dir)
            .map_err(|m| at(Some(raw.url.span()), m))?;
        if let Some(endpoint) = &raw.endpoint {
            let ok = url::Url::parse(endpoint.get_ref())
                .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                .unwrap_or(false);
            if !ok {
                return Err(at(
                    Some(endpoint.span()),
                    format!(
                        "endpoint {:?} is not an http(s) URL such as \"http://127.0.0.1:3900\"",
                        endpoint.get_ref()
                    ),
                ));
            }
        }
        let part_size = match &raw.part_size {
            None => DEFAULT_PART_SIZE,
            Some(s) => {
                let bytes = crate::units::parse_byte_size(s.get_ref())
                    .map_err(|m| at(Some(s.span()), m))?;
                if bytes < MIN_PART_SIZE {
                    return Err(at(
                        Some(s.span()),
                        "part_size must be at least 5MiB (the S3 minimum part size)".into(),
                    ));
                }
                bytes
            }
        };
        let parts_in_flight = match &raw.parts_in_flight {
            None => DEFAULT_PARTS_IN_FLIGHT,
            Some(n) if (1..=64).contains(n.get_ref()) => *n.get_ref(),
            Some(n) => {
                return Err(at(
                    Some(n.span()),
                    "parts_in_flight must be between 1 and 64".into(),
                ))
            }
        };

        let positive_days = |v: &Option<Spanned<i32>>| -> Found<Option<i32>> {
            match v {
                Some(d) if *d.get_ref() < 1 => {
                    Err(at(Some(d.span()), "days must be at least 1".into()))
                }
                Some(d) => Ok(Some(*d.get_ref())),
                None => Ok(None),
            }
        };
        let lifecycle = LifecycleSettings {
            abort_incomplete_after_days: positive_days(&raw.abort_incomplete_after_days)?
                .unwrap_or(7),
            transition: positive_days(&raw.transition_after_days)?.map(|d| {
                (
                    d,
                    raw.transition_storage_class
                        .clone()
                        .unwrap_or_else(|| "STANDARD_IA".into()),
                )
            }),
        };
        let requests = {
            let defaults = RequestSettings::default();
            let timeout = |v: &Option<Spanned<String>>,
                           default: std::time::Duration|
             -> Found<std::time::Duration> {
                let Some(d) = optional_span("", v)? else {
                    return Ok(default);
                };
                match d.to_std() {
                    Ok(d) if !d.is_zero() => Ok(d),
                    _ => Err(at(
                        v.as_ref().map(|s| s.span()),
                        "a timeout must be at least 1s".into(),
                    )),
                }
            };
            let max_attempts = match &raw.max_attempts {
                None => defaults.max_attempts,
                Some(n) if (1..=100).contains(n.get_ref()) => *n.get_ref(),
                Some(n) => {
                    return Err(at(
                        Some(n.span()),
                        "max_attempts must be between 1 (no retries) and 100".into(),
                    ))
                }
            };
            RequestSettings {
                connect_timeout: timeout(&raw.connect_timeout, defaults.connect_timeout)?,
                first_byte_timeout: timeout(&raw.first_byte_timeout, defaults.first_byte_timeout)?,
                stall_timeout: timeout(&raw.stall_timeout, defaults.stall_timeout)?,
                max_attempts,
                retry_time: timeout(&raw.retry_time, defaults.retry_time)?,
            }
        };
        let object_lock = match &raw.object_lock {
            None => None,
            Some(lock) => Some(object_lock(lock, &location)?),
        };
        Ok(RepositoryConfig {
            storage: StorageSettings {
                location,
                endpoint: raw.endpoint.map(|e| e.into_inner()),
                region: raw.region,
                lifecycle,
                requests,
                object_lock,
            },
            part_size,
            parts_in_flight,
        })
    }
}

/// `[repository] object_lock = { mode = "governance" | "compliance", days = N }`: only
/// an S3 repository can hold locks.
fn object_lock(lock: &Spanned<RawObjectLock>, location: &Location) -> Found<ObjectLockSettings> {
    if let Location::Filesystem { root } = location {
        return Err(at(
            Some(lock.span()),
            format!(
                "object_lock needs an S3 repository: a filesystem ({}) cannot keep objects from being deleted; remove object_lock or store the repository in an S3 bucket with Object Lock enabled",
                root.display()
            ),
        ));
    }
    let raw = lock.get_ref();
    let mode = choice(
        "[repository] object_lock mode",
        &raw.mode,
        &[
            ("governance", LockMode::Governance),
            ("compliance", LockMode::Compliance),
        ],
    )?;
    let days = u32::try_from(*raw.days.get_ref())
        .ok()
        .filter(|d| (1..=36500).contains(d))
        .ok_or_else(|| {
            at(
                Some(raw.days.span()),
                "[repository] object_lock days must be between 1 and 36500".into(),
            )
        })?;
    Ok(ObjectLockSettings {
        mode,
        days,
        unlocked_prefixes: Vec::new(),
    })
}

impl TryFrom<InDir<'_, Spanned<RawEncryption>>> for Recipients {
    type Error = Misplaced;

    fn try_from(InDir { raw, dir }: InDir<'_, Spanned<RawEncryption>>) -> Found<Recipients> {
        let enc_span = raw.span();
        let enc = raw.into_inner();
        let mut recipient_lines: Vec<(String, Range<usize>)> = enc
            .recipients
            .iter()
            .map(|r| (r.get_ref().clone(), r.span()))
            .collect();
        if let Some(file) = &enc.recipients_file {
            let file_path = dir.join(file.get_ref());
            let content = std::fs::read_to_string(&file_path).map_err(|e| {
                at(
                    Some(file.span()),
                    format!("cannot read recipients_file {}: {e}", file_path.display()),
                )
            })?;
            for line in content.lines() {
                let line = line.trim();
                if !line.is_empty() && !line.starts_with('#') {
                    recipient_lines.push((line.to_string(), file.span()));
                }
            }
        }
        if recipient_lines.is_empty() {
            return Err(at(
            Some(enc_span),
            "[encryption] needs at least one age recipient: set recipients = [\"age1…\"] or recipients_file = \"…\" (generate a key pair with age-keygen)".into(),
        ));
        }
        let mut recipients = Recipients::default();
        for (value, span) in recipient_lines {
            recipients.add(&value).map_err(|m| at(Some(span), m))?;
        }

        Ok(recipients)
    }
}

impl TryFrom<RawBackup> for BackupOptions {
    type Error = Misplaced;

    fn try_from(raw: RawBackup) -> Found<BackupOptions> {
        let archive_wait = match optional_span("[backup] archive_wait", &raw.archive_wait)? {
            None => DEFAULT_ARCHIVE_WAIT,
            Some(wait) => wait
                .to_std()
                .ok()
                .filter(|w| (10..=24 * 3600).contains(&w.as_secs()))
                .ok_or_else(|| {
                    at(
                        raw.archive_wait.as_ref().map(|s| s.span()),
                        "[backup] archive_wait must be between 10s and 24h".into(),
                    )
                })?,
        };
        let incremental_fallback = match &raw.incremental_fallback {
            None => IncrementalFallback::Full,
            Some(value) => choice(
                "[backup] incremental_fallback",
                value,
                &[
                    ("full", IncrementalFallback::Full),
                    ("refuse", IncrementalFallback::Refuse),
                ],
            )?,
        };
        Ok(BackupOptions {
            include_role_passwords: raw.include_role_passwords,
            archive_wait,
            incremental_fallback,
        })
    }
}

impl TryFrom<InDir<'_, RawArchive>> for ArchiveConfig {
    type Error = Misplaced;

    fn try_from(section: InDir<'_, RawArchive>) -> Found<ArchiveConfig> {
        let InDir { raw, dir } = section;
        let mut config = ArchiveConfig::default();
        if let Some(mode) = &raw.mode {
            config.mode = choice(
                "[archive] mode",
                mode,
                &[
                    ("sync", ArchiveMode::Sync),
                    ("async", ArchiveMode::Async),
                    ("stream", ArchiveMode::Stream),
                ],
            )?;
        }
        config.spool_dir = raw.spool_dir.as_ref().map(|d| dir.join(d.get_ref()));
        if config.mode == ArchiveMode::Async && config.spool_dir.is_none() {
            return Err(at(
                raw.mode.as_ref().map(|m| m.span()),
                "[archive] mode = \"async\" needs spool_dir: a directory the server's OS user can write, on a disk with room for queue_max".into(),
            ));
        }
        if config.mode == ArchiveMode::Stream && config.spool_dir.is_none() {
            return Err(at(
                raw.mode.as_ref().map(|m| m.span()),
                "[archive] mode = \"stream\" needs spool_dir: a directory on the agent's host where pg_receivewal writes WAL until it is stored".into(),
            ));
        }
        if let Some(slot) = &raw.slot {
            let name = slot.get_ref();
            let valid = !name.is_empty()
                && name.len() <= 63
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !valid {
                return Err(at(
                    Some(slot.span()),
                    "[archive] slot must be 1 to 63 lower-case letters, digits or underscores (PostgreSQL's rule for slot names)".into(),
                ));
            }
            config.slot = Some(name.clone());
        }
        let bounded = |key: &str,
                       value: &Option<Spanned<String>>,
                       range: std::ops::RangeInclusive<u64>,
                       words: &str|
         -> Found<Option<std::time::Duration>> {
            let Some(span) = optional_span(key, value)? else {
                return Ok(None);
            };
            span.to_std()
                .ok()
                .filter(|d| range.contains(&(d.as_millis() as u64)))
                .map(Some)
                .ok_or_else(|| {
                    at(
                        value.as_ref().map(|v| v.span()),
                        format!("{key} must be between {words}"),
                    )
                })
        };
        if let Some(d) = bounded(
            "[archive] partial_interval",
            &raw.partial_interval,
            1_000..=600_000,
            "1s and 10m",
        )? {
            config.partial_interval = d;
        }
        if let Some(d) = bounded(
            "[archive] stream_max_lag",
            &raw.stream_max_lag,
            1_000..=86_400_000,
            "1s and 24h",
        )? {
            config.stream_max_lag = d;
        }
        if let Some(max) = &raw.queue_max {
            config.queue_max = crate::units::parse_byte_size(max.get_ref())
                .map_err(|m| at(Some(max.span()), format!("[archive] queue_max: {m}")))?;
            if config.queue_max < 16 << 20 {
                return Err(at(
                    Some(max.span()),
                    "[archive] queue_max must be at least 16MiB (one WAL segment)".into(),
                ));
            }
        }
        if let Some(full) = &raw.queue_full {
            config.queue_full = choice(
                "[archive] queue_full",
                full,
                &[("keep", QueueFull::Keep), ("drop", QueueFull::Drop)],
            )?;
        }
        if let Some(n) = &raw.push_parallel {
            if !(1..=64).contains(n.get_ref()) {
                return Err(at(
                    Some(n.span()),
                    "[archive] push_parallel must be between 1 and 64".into(),
                ));
            }
            config.push_parallel = *n.get_ref() as usize;
        }
        Ok(config)
    }
}

impl TryFrom<RawCompression> for CompressionConfig {
    type Error = Misplaced;

    fn try_from(raw: RawCompression) -> Found<CompressionConfig> {
        let level = match &raw.level {
            None => 3,
            Some(l) if (1..=22).contains(l.get_ref()) => *l.get_ref(),
            Some(l) => {
                return Err(at(
                    Some(l.span()),
                    "compression level must be between 1 and 22 (3 is a good default)".into(),
                ))
            }
        };

        Ok(CompressionConfig {
            level,
            threads: raw.threads.unwrap_or(0),
        })
    }
}

impl TryFrom<Spanned<RawRetention>> for RetentionConfig {
    type Error = Misplaced;

    fn try_from(r: Spanned<RawRetention>) -> Found<RetentionConfig> {
        let span = r.span();
        let r = r.into_inner();
        let parse = |v: &Option<Spanned<String>>| optional_span("", v);
        let rules = retention::RetentionRules {
            keep_last: r.keep_last,
            keep_hourly: r.keep_hourly,
            keep_daily: r.keep_daily,
            keep_weekly: r.keep_weekly,
            keep_monthly: r.keep_monthly,
            keep_yearly: r.keep_yearly,
            keep_within: parse(&r.keep_within)?,
        };
        if rules == retention::RetentionRules::default() {
            return Err(at(
                Some(span),
                "[retention] needs at least one keep rule (keep_last, keep_daily, …, keep_within)"
                    .into(),
            ));
        }
        Ok(RetentionConfig {
            rules,
            max_age: parse(&r.max_age)?,
            orphan_min_age: parse(&r.orphan_min_age)?
                .unwrap_or_else(|| chrono::Duration::hours(24)),
            prune_after_backup: r.prune_after_backup.unwrap_or(true),
        })
    }
}

impl TryFrom<RawSchedule> for ScheduleConfig {
    type Error = Misplaced;

    fn try_from(sch: RawSchedule) -> Found<ScheduleConfig> {
        let timezone = sch.timezone.as_ref().map(|t| t.get_ref().as_str());
        let backup = Schedule::parse(sch.backup.get_ref(), timezone)
            .map_err(|e| schedule_error(e, "[schedule]", &sch.backup, sch.timezone.as_ref()))?;
        let span_of = |v: &Option<Spanned<String>>, default: chrono::Duration| {
            optional_span("", v).map(|d| d.unwrap_or(default))
        };
        let physical = sch
            .physical
            .as_ref()
            .map(|expr| {
                Schedule::parse(expr.get_ref(), timezone).map_err(|e| {
                    schedule_error(e, "[schedule] physical:", expr, sch.timezone.as_ref())
                })
            })
            .transpose()?;
        let physical_incremental = sch
            .physical_incremental
            .as_ref()
            .map(|expr| {
                Schedule::parse(expr.get_ref(), timezone).map_err(|e| {
                    schedule_error(
                        e,
                        "[schedule] physical_incremental:",
                        expr,
                        sch.timezone.as_ref(),
                    )
                })
            })
            .transpose()?;
        if let (Some(expr), None) = (&sch.physical_incremental, &physical) {
            return Err(at(
                Some(expr.span()),
                "[schedule] physical_incremental needs [schedule] physical too: incrementals build on full base backups".into(),
            ));
        }
        Ok(ScheduleConfig {
            backup,
            physical,
            physical_incremental,
            jitter: span_of(&sch.jitter, chrono::Duration::zero())?,
            retries: sch.retries.unwrap_or(2),
            retry_backoff: span_of(&sch.retry_backoff, chrono::Duration::seconds(30))?,
        })
    }
}

impl TryFrom<RawNotify> for crate::notify::NotifyConfig {
    type Error = Misplaced;

    fn try_from(n: RawNotify) -> Found<crate::notify::NotifyConfig> {
        let webhook = expand_env(n.webhook.get_ref()).map_err(|m| at(Some(n.webhook.span()), m))?;
        let ok = url::Url::parse(&webhook)
            .map(|u| matches!(u.scheme(), "http" | "https"))
            .unwrap_or(false);
        if !ok {
            return Err(at(
                Some(n.webhook.span()),
                "[notify] webhook must be an http(s) URL".into(),
            ));
        }
        let format = match n.format.as_ref().map(|f| f.get_ref().as_str()) {
            None | Some("json") => crate::notify::NotifyFormat::Json,
            Some("slack") => crate::notify::NotifyFormat::Slack,
            Some(other) => {
                return Err(at(
                    n.format.as_ref().map(|f| f.span()),
                    format!("[notify] format {other:?} is not \"json\" or \"slack\""),
                ))
            }
        };
        Ok(crate::notify::NotifyConfig {
            webhook,
            format,
            on_success: n.on_success,
            on_retention: n.on_retention,
            retries: n.retries.unwrap_or(3),
        })
    }
}

impl TryFrom<InDir<'_, RawRestoreTest>> for RestoreTestConfig {
    type Error = Misplaced;

    fn try_from(InDir { raw: rt, dir }: InDir<'_, RawRestoreTest>) -> Found<RestoreTestConfig> {
        let defaults = RestoreTestConfig::default();
        let span = |v: &Option<Spanned<String>>| optional_span("[restore_test]", v);
        let schedule =
            match &rt.schedule {
                None => None,
                Some(expr) => {
                    let tz = rt.timezone.as_ref().map(|t| t.get_ref().as_str());
                    Some(Schedule::parse(expr.get_ref(), tz).map_err(|e| {
                        schedule_error(e, "[restore_test]", expr, rt.timezone.as_ref())
                    })?)
                }
            };
        let target = match rt.target.as_ref().map(|t| (t.get_ref().trim(), t.span())) {
            None => defaults.target.clone(),
            Some(("ephemeral", _)) => DrillTargetConfig::Ephemeral,
            Some((url, sp)) => {
                let url = expand_env(url).map_err(|m| at(Some(sp.clone()), m))?;
                validate_postgres_url(&url, "the URL").map_err(|m| {
                at(
                    Some(sp.clone()),
                    format!("[restore_test] target must be \"ephemeral\" or a staging server URL: {m}"),
                )
            })?;
                DrillTargetConfig::Staging(url)
            }
        };
        let kind = match rt.kind.as_ref().map(|k| (k.get_ref().as_str(), k.span())) {
            None | Some(("logical", _)) => DrillKind::Logical,
            Some(("pitr", sp)) => {
                if target != DrillTargetConfig::Ephemeral {
                    return Err(at(
                    Some(sp),
                    "[restore_test] kind = \"pitr\" restores a whole cluster: it needs target = \"ephemeral\"".into(),
                ));
                }
                DrillKind::Pitr
            }
            Some((other, sp)) => {
                return Err(at(
                    Some(sp),
                    format!("[restore_test] kind {other:?} is not \"logical\" or \"pitr\""),
                ))
            }
        };
        let within = span(&rt.within)?;
        let pick = match rt.pick.as_ref().map(|p| (p.get_ref().as_str(), p.span())) {
            None => defaults.pick,
            Some(("latest", _)) => DrillPick::Latest,
            Some(("random", _)) => DrillPick::Random(within.unwrap_or(RANDOM_PICK_WITHIN)),
            Some((other, sp)) => {
                return Err(at(
                    Some(sp),
                    format!("[restore_test] pick {other:?} is not \"latest\" or \"random\""),
                ))
            }
        };
        let jobs = match &rt.jobs {
            None => defaults.jobs,
            Some(j) if (1..=64).contains(j.get_ref()) => *j.get_ref(),
            Some(j) => {
                return Err(at(
                    Some(j.span()),
                    "[restore_test] jobs must be between 1 and 64".into(),
                ))
            }
        };
        let mut checks = Vec::new();
        for c in &rt.checks {
            let name = c.name.get_ref().trim().to_string();
            if name.is_empty() {
                return Err(at(
                    Some(c.name.span()),
                    "[[restore_test.checks]] name must not be empty".into(),
                ));
            }
            if checks.iter().any(|k: &SqlCheck| k.name == name) {
                return Err(at(
                Some(c.name.span()),
                format!("[[restore_test.checks]] two checks are named {name:?}; names identify checks in reports"),
            ));
            }
            if c.sql.get_ref().trim().is_empty() {
                return Err(at(
                    Some(c.sql.span()),
                    format!("[[restore_test.checks]] {name:?} has an empty sql"),
                ));
            }
            let expect = crate::policy::expectation::Expectation::parse(c.expect.get_ref())
                .map_err(|m| at(Some(c.expect.span()), m))?;
            checks.push(SqlCheck {
                name,
                sql: c.sql.get_ref().clone(),
                expect,
            });
        }
        let path_of = |v: &Option<Spanned<String>>| v.as_ref().map(|p| dir.join(p.get_ref()));
        if let (Some(expr), None) = (&rt.schedule, &rt.identity_file) {
            return Err(at(
            Some(expr.span()),
            "[restore_test] a scheduled drill needs identity_file: the agent must decrypt the backup it restores".into(),
        ));
        }
        Ok(RestoreTestConfig {
            kind,
            schedule,
            target,
            pick,
            rto_objective: span(&rt.rto_objective)?,
            rpo_objective: span(&rt.rpo_objective)?,
            rpo_window: span(&rt.rpo_window)?.unwrap_or(defaults.rpo_window),
            identity_file: path_of(&rt.identity_file),
            bin_dir: path_of(&rt.bin_dir),
            work_dir: path_of(&rt.work_dir),
            allow_source_server: rt.allow_source_server,
            jobs,
            amcheck: rt.amcheck.unwrap_or(defaults.amcheck),
            check_timeout: span(&rt.check_timeout)?.unwrap_or(defaults.check_timeout),
            checks,
            from_copy: rt.from_copy.map(Spanned::into_inner),
        })
    }
}
