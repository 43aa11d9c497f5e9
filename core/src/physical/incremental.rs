//! Incremental base backups (PostgreSQL 17 and newer): choosing the parent, and the
//! copy of the server's `backup_manifest` the next incremental is taken against.
//!
//! `pg_basebackup --incremental=FILE` needs the parent's `backup_manifest`. pgvault keeps
//! it beside every physical backup taken on PostgreSQL 17 or newer, in plaintext with
//! the per-file checksums removed ([`redact_server_manifest`]): the server reads only
//! the paths, sizes, WAL ranges and system identifier, and a writer of backups holds
//! only age recipients, never an identity that could decrypt an encrypted copy. What the
//! copy reveals (relation file names and sizes) is in docs/FORMAT.md §17. Reading the
//! copy back and resolving chains is the repository's ([`crate::repository::chain`]).

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::repository::chain::{chain_of, server_manifest_of};
use crate::repository::{BackupKind, BackupManifest};

/// The first PostgreSQL major with incremental base backups.
pub const INCREMENTAL_MIN_MAJOR: u32 = 17;

/// Rewrite a server `backup_manifest` without the file checksums, in the server's own
/// layout (one file per line, the last line holding `Manifest-Checksum`, the sha256 of
/// everything before it), so PostgreSQL accepts it back for `--incremental`.
pub fn redact_server_manifest(text: &str) -> Result<String> {
    let bad = |message: String| Error::Tool {
        tool: "pg_basebackup".into(),
        message: format!("its backup_manifest cannot be read: {message}"),
    };
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let version = value
        .get("PostgreSQL-Backup-Manifest-Version")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| bad("no PostgreSQL-Backup-Manifest-Version".into()))?;
    let files = value
        .get("Files")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| bad("no Files".into()))?;
    let ranges = value
        .get("WAL-Ranges")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| bad("no WAL-Ranges".into()))?;
    let mut out = format!("{{ \"PostgreSQL-Backup-Manifest-Version\": {version},\n");
    if let Some(system) = value.get("System-Identifier") {
        out.push_str(&format!("\"System-Identifier\": {system},\n"));
    }
    out.push_str("\"Files\": [");
    for (index, file) in files.iter().enumerate() {
        let mut fields = Vec::new();
        for name in ["Path", "Encoded-Path", "Size", "Last-Modified"] {
            if let Some(field) = file.get(name) {
                fields.push(format!("\"{name}\": {field}"));
            }
        }
        if fields.len() < 3 {
            return Err(bad(format!("file entry {index} lacks a path or size")));
        }
        out.push_str(if index == 0 { "\n" } else { ",\n" });
        out.push_str(&format!("{{ {} }}", fields.join(", ")));
    }
    out.push_str(" ],\n\"WAL-Ranges\": [");
    for (index, range) in ranges.iter().enumerate() {
        let mut fields = Vec::new();
        for name in ["Timeline", "Start-LSN", "End-LSN"] {
            let field = range
                .get(name)
                .ok_or_else(|| bad(format!("WAL range {index} lacks {name}")))?;
            fields.push(format!("\"{name}\": {field}"));
        }
        out.push_str(if index == 0 { "\n" } else { ",\n" });
        out.push_str(&format!("{{ {} }}", fields.join(", ")));
    }
    out.push_str(" ],\n");
    let checksum = hex::encode(Sha256::digest(out.as_bytes()));
    out.push_str(&format!("\"Manifest-Checksum\": \"{checksum}\"}}\n"));
    Ok(out)
}

/// The parent an incremental backup is taken against, or why there is none.
pub(crate) enum ParentChoice {
    /// The newest base backup, usable as the parent.
    Parent(Box<BackupManifest>),
    /// Why no backup can be the parent: an incremental falls back to a full backup or
    /// is refused (`[backup] incremental_fallback`).
    None(String),
}

/// Choose the parent of an incremental of the source `client` describes: the newest
/// physical backup of the policy, if its chain is whole, it is of this cluster, major
/// and timeline, it has its server manifest, and the server still has the WAL summaries
/// from its start.
pub(crate) async fn choose_parent(
    client: &tokio_postgres::Client,
    info: &crate::postgres::ServerInfo,
    backups: &[BackupManifest],
) -> Result<ParentChoice> {
    let newest = backups
        .iter()
        .filter(|m| m.kind == BackupKind::Physical && m.physical.is_some())
        .max_by(|a, b| a.consistent_at.cmp(&b.consistent_at).then(a.id.cmp(&b.id)));
    let Some(parent) = newest else {
        return Ok(ParentChoice::None(
            "the policy has no base backup yet".into(),
        ));
    };
    let id = &parent.id;
    if parent.system_identifier != info.system_identifier {
        return Ok(ParentChoice::None(format!(
            "the newest base backup, {id}, is of another cluster (system identifier {}, the source's is {})",
            parent.system_identifier, info.system_identifier
        )));
    }
    if parent.server_version_num / 10000 != info.version_num / 10000 {
        return Ok(ParentChoice::None(format!(
            "the newest base backup, {id}, is of PostgreSQL {}, the source is now {}",
            parent.server_version_num / 10000,
            info.version_num / 10000
        )));
    }
    if server_manifest_of(parent).is_none() {
        return Ok(ParentChoice::None(format!(
            "the newest base backup, {id}, has no stored backup_manifest (it was taken before PostgreSQL {INCREMENTAL_MIN_MAJOR} or by an older pgvault)"
        )));
    }
    if let Err(e) = chain_of(parent, backups) {
        return Ok(ParentChoice::None(format!(
            "the chain of the newest base backup, {id}, is broken: {e}"
        )));
    }
    let Some(physical) = parent.physical.as_ref() else {
        return Ok(ParentChoice::None(format!("{id} has no WAL positions")));
    };
    let summarize: String = client
        .query_one("select current_setting('summarize_wal')", &[])
        .await
        .map_err(|e| Error::pg("cannot read summarize_wal", e))?
        .get(0);
    if summarize != "on" {
        return Ok(ParentChoice::None(
            "summarize_wal is off on the source (run `pgvault archive setup --policy … --apply`; it needs no restart)".into(),
        ));
    }
    let timeline: i32 = client
        .query_one("select timeline_id from pg_control_checkpoint()", &[])
        .await
        .map_err(|e| Error::pg("cannot read the source's timeline", e))?
        .get(0);
    if timeline as u32 != physical.timeline {
        return Ok(ParentChoice::None(format!(
            "the source is on timeline {timeline}, the newest base backup, {id}, on timeline {}",
            physical.timeline
        )));
    }
    // Covered when a kept summary starts at or before the parent's start (the server
    // checks the rest of the range itself), or when the summarizer has not passed that
    // point yet and will summarize it. Not covered when the summaries from there were
    // removed (wal_summary_keep_time) or summarize_wal was turned on later.
    let covered: bool = client
        .query_one(
            "select exists (select 1 from pg_available_wal_summaries() \
                            where tli = $1 and start_lsn <= $2::text::pg_lsn) \
                    or exists (select 1 from pg_get_wal_summarizer_state() \
                               where summarized_tli = $1 and summarized_lsn <= $2::text::pg_lsn)",
            &[&i64::from(physical.timeline), &physical.start_lsn],
        )
        .await
        .map_err(|e| Error::pg("cannot list the server's WAL summaries", e))?
        .get(0);
    if !covered {
        return Ok(ParentChoice::None(format!(
            "the server has no WAL summary covering {} on timeline {}, where {id} started (summaries exist only since summarize_wal was turned on, and for wal_summary_keep_time)",
            physical.start_lsn, physical.timeline
        )));
    }
    Ok(ParentChoice::Parent(Box::new(parent.clone())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER_MANIFEST: &str = r#"{ "PostgreSQL-Backup-Manifest-Version": 2,
"System-Identifier": 7441350405123456789,
"Files": [
{ "Path": "backup_label", "Size": 227, "Last-Modified": "2026-12-06 21:00:00 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "a1b2c3d4" },
{ "Path": "base/5/16384", "Size": 8192, "Last-Modified": "2026-12-06 20:59:00 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "0badf00d" },
{ "Encoded-Path": "6e6f6e2d75746638ff", "Size": 0, "Last-Modified": "2026-12-06 20:59:00 GMT" }
],
"WAL-Ranges": [
{ "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" }
],
"Manifest-Checksum": "ignored"}
"#;

    #[test]
    fn a_redacted_manifest_keeps_what_the_server_reads_and_is_signed_again() {
        let redacted = redact_server_manifest(SERVER_MANIFEST).unwrap();
        assert!(!redacted.contains("Checksum-Algorithm"), "{redacted}");
        assert!(!redacted.contains("a1b2c3d4"), "{redacted}");
        let value: serde_json::Value = serde_json::from_str(&redacted).unwrap();
        assert_eq!(
            value["System-Identifier"].as_u64(),
            Some(7441350405123456789)
        );
        assert_eq!(value["Files"].as_array().unwrap().len(), 3);
        assert_eq!(value["Files"][1]["Path"], "base/5/16384");
        assert_eq!(value["Files"][1]["Size"], 8192);
        assert_eq!(value["Files"][2]["Encoded-Path"], "6e6f6e2d75746638ff");
        assert_eq!(value["WAL-Ranges"][0]["Start-LSN"], "0/2000028");
        // The server's rule: the sha256 of everything up to the last line.
        let body_end = redacted[..redacted.len() - 1].rfind('\n').unwrap() + 1;
        let expected = hex::encode(Sha256::digest(&redacted.as_bytes()[..body_end]));
        assert_eq!(value["Manifest-Checksum"], expected.as_str());
        assert!(redacted.ends_with("}\n"));
        assert!(redact_server_manifest("{}").is_err());
    }
}
