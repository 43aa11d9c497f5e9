//! `[[repository.copies]]`: the other repositories a policy's backups are copied to (a
//! second bucket, region or endpoint, or a directory), for 3-2-1 backups.
//!
//! A copy is written like `[repository]` (its location, endpoint, region and request
//! settings, read by the same conversion), plus a `name` that commands and metrics use,
//! and the copy's own `copy_after_backup`, `max_lag` and optional
//! `[repository.copies.retention]`. Credentials come from the environment, as for the
//! primary. A copy is an ordinary repository of the same format: `pgvault copy` fills it,
//! and every reading command can read it with `--from-copy NAME`.

use toml::Spanned;

use super::raw::RawRepository;
use super::sections::{at, Found, InDir, Misplaced};
use super::{RepositoryConfig, RetentionConfig};
use crate::storage::Location;

/// How far a copy may fall behind its primary before `pgvault check` fails, when the
/// copy sets no `max_lag`: a day, one missed nightly copy.
pub const DEFAULT_COPY_MAX_LAG: chrono::Duration = chrono::Duration::days(1);

/// One `[[repository.copies]]` entry, validated.
#[derive(Debug, Clone)]
pub struct CopyConfig {
    /// The copy's name (`--to`, `--from-copy`, metric labels).
    pub name: String,
    /// Where it lives and how its storage is reached, as `[repository]` says it for the
    /// primary.
    pub repository: RepositoryConfig,
    /// The copy's own keep rules; `None`: the policy's `[retention]`
    /// (see [`super::Policy::retention_of_copy`]).
    pub retention: Option<RetentionConfig>,
    /// Whether the agent copies new backups (and WAL) here after each backup.
    pub copy_after_backup: bool,
    /// How far the copy may lag behind the primary before `check` fails.
    pub max_lag: chrono::Duration,
}

/// Take the `[[repository.copies]]` out of the primary's section, refusing the keys
/// only a copy has.
pub(super) fn take_copies(raw: &mut RawRepository) -> Found<Vec<Spanned<RawRepository>>> {
    let misplaced = |key: &str, span| {
        Err(at(
            Some(span),
            format!("{key} is a key of [[repository.copies]], not of [repository]"),
        ))
    };
    if let Some(name) = &raw.name {
        return misplaced("name", name.span());
    }
    if let Some(flag) = &raw.copy_after_backup {
        return misplaced("copy_after_backup", flag.span());
    }
    if let Some(lag) = &raw.max_lag {
        return misplaced("max_lag", lag.span());
    }
    if let Some(retention) = &raw.retention {
        return Err(at(
            Some(retention.span()),
            "[repository.retention] does not exist: the policy's rules are [retention]; a copy's own rules are [repository.copies.retention]".into(),
        ));
    }
    Ok(std::mem::take(&mut raw.copies))
}

/// Validate every copy: its name, its repository (the `[repository]` conversion), its
/// own keys; names are unique, and no copy is the primary or another copy.
pub(super) fn parse_copies(
    raw: Vec<Spanned<RawRepository>>,
    dir: &std::path::Path,
    primary: &RepositoryConfig,
) -> Found<Vec<CopyConfig>> {
    let mut copies: Vec<CopyConfig> = Vec::new();
    for entry in raw {
        let span = entry.span();
        let mut raw = entry.into_inner();
        let name = raw.name.take().ok_or_else(|| {
            at(
                Some(span.clone()),
                "[[repository.copies]] needs a name (e.g. name = \"dr\"): commands and metrics name the copy by it".into(),
            )
        })?;
        let name_span = name.span();
        let name = name.into_inner();
        let name_ok = (1..=63).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(at(
                Some(name_span),
                format!("copy name {name:?} must be 1 to 63 letters, digits, '-' or '_'"),
            ));
        }
        if copies.iter().any(|c| c.name == name) {
            return Err(at(
                Some(name_span),
                format!("two copies are named {name:?}; names identify copies"),
            ));
        }
        if let Some(nested) = raw.copies.first() {
            return Err(at(
                Some(nested.span()),
                format!("copy {name:?} cannot have copies of its own: declare every copy under [repository]"),
            ));
        }
        let copy_after_backup = raw.copy_after_backup.take().is_some_and(|f| *f.get_ref());
        let max_lag = match raw.max_lag.take() {
            None => DEFAULT_COPY_MAX_LAG,
            Some(lag) => {
                let parsed = crate::units::parse_span(lag.get_ref())
                    .map_err(|m| at(Some(lag.span()), format!("copy {name:?} max_lag: {m}")))?;
                if parsed < chrono::Duration::minutes(1) {
                    return Err(at(
                        Some(lag.span()),
                        format!("copy {name:?} max_lag must be at least 1m"),
                    ));
                }
                parsed
            }
        };
        let retention = raw
            .retention
            .take()
            .map(RetentionConfig::try_from)
            .transpose()
            .map_err(|m| Misplaced {
                message: format!(
                    "[repository.copies.retention] of copy {name:?}: {}",
                    m.message
                ),
                ..m
            })?;
        let repository = RepositoryConfig::try_from(InDir { raw, dir })?;
        let same_place = |other: &RepositoryConfig| {
            other.storage.location == repository.storage.location
                && (matches!(repository.storage.location, Location::Filesystem { .. })
                    || other.storage.endpoint == repository.storage.endpoint)
        };
        if same_place(primary) {
            return Err(at(
                Some(span),
                format!("copy {name:?} is the primary repository itself: give it another bucket, prefix, endpoint or directory"),
            ));
        }
        if let Some(twin) = copies.iter().find(|c| same_place(&c.repository)) {
            return Err(at(
                Some(span),
                format!(
                    "copies {:?} and {name:?} are the same repository",
                    twin.name
                ),
            ));
        }
        copies.push(CopyConfig {
            name,
            repository,
            retention,
            copy_after_backup,
            max_lag,
        });
    }
    Ok(copies)
}
