//! Object Lock: the retention a store keeps on stored object versions, so that nobody,
//! pgvault's own credentials included, can delete or overwrite them before a date.
//!
//! pgvault asks for it with a policy's `[repository] object_lock`; the S3 backend then
//! sends the retention with every object it stores (docs/FORMAT.md §10.1), except under
//! the prefixes of scratch objects pgvault deletes itself (run leases, stream chunks),
//! which [`crate::repository::Repository::open`] names. The filesystem backend has no
//! locks: a policy that asks for them on a filesystem is refused when it is parsed.
//!
//! The types here are what every layer above sees: what a policy asks for
//! ([`ObjectLockSettings`]), what the store reports on one object version
//! ([`ObjectLock`], [`StoredVersion`]), and whether a bucket can hold locks at all
//! ([`LockSupport`]).

use chrono::{DateTime, Utc};

/// The two retention modes of S3 Object Lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LockMode {
    /// Users with `s3:BypassGovernanceRetention` may shorten or remove the retention.
    Governance,
    /// Nobody can shorten or remove the retention, not even the account's root user.
    Compliance,
}

impl LockMode {
    /// The word S3 uses (`GOVERNANCE`, `COMPLIANCE`).
    pub fn as_s3(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }

    /// The mode S3 names with `word`, in any case.
    pub fn from_s3(word: &str) -> Option<LockMode> {
        match word.to_ascii_uppercase().as_str() {
            "GOVERNANCE" => Some(LockMode::Governance),
            "COMPLIANCE" => Some(LockMode::Compliance),
            _ => None,
        }
    }
}

impl std::fmt::Display for LockMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LockMode::Governance => "governance",
            LockMode::Compliance => "compliance",
        })
    }
}

/// The retention a policy asks pgvault to put on what it stores
/// (`[repository] object_lock = { mode = "…", days = N }`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectLockSettings {
    /// Governance or compliance.
    pub mode: LockMode,
    /// Days from the time an object is stored until its retention ends.
    pub days: u32,
    /// Key prefixes (relative to the repository root) of scratch objects that pgvault
    /// deletes itself, which are never locked. The policy leaves this empty;
    /// [`crate::repository::Repository::open`] fills it from the repository layout.
    pub unlocked_prefixes: Vec<String>,
}

impl ObjectLockSettings {
    /// Whether an object stored at `key` now gets a retention.
    pub fn locks(&self, key: &str) -> bool {
        !self.unlocked_prefixes.iter().any(|p| key.starts_with(p))
    }

    /// When the retention of an object stored at `now` ends: `days` later, rounded up
    /// to the second (S3 keeps whole seconds).
    pub fn retain_until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let until = now + chrono::Duration::days(i64::from(self.days));
        let whole = until.timestamp() + i64::from(until.timestamp_subsec_nanos() > 0);
        DateTime::<Utc>::from_timestamp(whole, 0).unwrap_or(until)
    }
}

/// What keeps one stored object version from being deleted, as the store reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectLock {
    /// The retention mode, when the version has a retention.
    pub mode: Option<LockMode>,
    /// When its retention ends.
    pub retain_until: Option<DateTime<Utc>>,
    /// A legal hold: no deletion until it is removed, whatever the date.
    pub legal_hold: bool,
}

impl ObjectLock {
    /// Whether it stops a delete at `now`.
    pub fn in_effect(&self, now: DateTime<Utc>) -> bool {
        self.legal_hold || self.retain_until.is_some_and(|until| until > now)
    }

    /// The lock in words: `compliance until 2026-12-30 03:00:00 UTC`, `legal hold`, …
    pub fn describe(&self) -> String {
        let retention = match (self.mode, self.retain_until) {
            (Some(mode), Some(until)) => Some(format!(
                "{mode} until {}",
                until.format("%Y-%m-%d %H:%M:%S UTC")
            )),
            (None, Some(until)) => Some(format!("until {}", until.format("%Y-%m-%d %H:%M:%S UTC"))),
            _ => None,
        };
        match (retention, self.legal_hold) {
            (Some(r), true) => format!("{r}, legal hold"),
            (Some(r), false) => r,
            (None, true) => "legal hold".into(),
            (None, false) => "none".into(),
        }
    }
}

/// One stored version of an object: what a delete must remove to free its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVersion {
    /// Key relative to the repository root.
    pub key: String,
    /// The store's version id; `None` on a store without versions (the object itself).
    pub version_id: Option<String>,
    /// A delete marker (a versioned store's record of a plain delete) holds no bytes.
    pub delete_marker: bool,
    /// Its retention lock, when it has one.
    pub lock: Option<ObjectLock>,
}

/// Whether a bucket can hold what `object_lock` asks for, and what is missing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LockSupport {
    /// What the bucket lacks, one sentence each (empty: it can hold locks).
    pub missing: Vec<String>,
    /// The bucket's default retention, in words, when it has one.
    pub default_retention: Option<String>,
}

impl LockSupport {
    /// Whether nothing is missing.
    pub fn ready(&self) -> bool {
        self.missing.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_prefixes_are_not_locked_and_dates_round_up() {
        let settings = ObjectLockSettings {
            mode: LockMode::Compliance,
            days: 30,
            unlocked_prefixes: vec!["app/runs/".into(), "app/wal-stream/".into()],
        };
        assert!(settings.locks("app/backups/x/manifest.json"));
        assert!(settings.locks("app/wal/00000001/x"));
        assert!(!settings.locks("app/runs/x.json"));
        assert!(!settings.locks("app/wal-stream/00000001/x"));
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:00.250Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            settings.retain_until(now).to_rfc3339(),
            "2026-01-31T00:00:01+00:00"
        );
    }

    #[test]
    fn a_lock_is_in_effect_until_its_date_or_while_held() {
        let now = Utc::now();
        let lock = |until: Option<i64>, hold: bool| ObjectLock {
            mode: until.map(|_| LockMode::Governance),
            retain_until: until.map(|s| now + chrono::Duration::seconds(s)),
            legal_hold: hold,
        };
        assert!(lock(Some(60), false).in_effect(now));
        assert!(!lock(Some(-60), false).in_effect(now));
        assert!(lock(Some(-60), true).in_effect(now));
        assert!(!lock(None, false).in_effect(now));
        assert_eq!(lock(None, true).describe(), "legal hold");
        assert!(lock(Some(60), false)
            .describe()
            .starts_with("governance until "));
    }
}
