//! Where reports live (`<policy>/reports/<id>.{json,md,html}`) and how their hash chain
//! is checked.
//!
//! The renders are written first and the JSON last, so a report exists when its JSON
//! does, like a backup and its manifest. Every JSON records the sha256 of the previous
//! report's JSON as stored, and of its own two renders; [`verify_chain`] recomputes them.

use bytes::Bytes;

use super::report::{sha256_hex, DrillReport, REPORT_FORMAT_VERSION};
use crate::error::{Error, Result};
use crate::repository::Repository;

/// Prefix of a policy's reports.
pub fn reports_prefix(repo: &Repository) -> String {
    format!("{}/reports/", repo.policy())
}

/// Key of one file of a report (`json`, `md` or `html`).
pub fn report_key(repo: &Repository, id: &str, extension: &str) -> String {
    format!("{}{id}.{extension}", reports_prefix(repo))
}

/// Ids of the stored reports (those with a JSON), oldest first.
pub async fn list_ids(repo: &Repository) -> Result<Vec<String>> {
    let prefix = reports_prefix(repo);
    let mut ids: Vec<String> = repo
        .storage()
        .list(&prefix)
        .await?
        .into_iter()
        .filter_map(|o| {
            o.key
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(".json"))
                .map(str::to_string)
        })
        .collect();
    ids.sort();
    Ok(ids)
}

/// Parse a report's JSON, checking its format version.
pub fn parse_report(id: &str, bytes: &[u8]) -> Result<DrillReport> {
    let report: DrillReport = serde_json::from_slice(bytes).map_err(|e| Error::Integrity {
        object: format!("report {id}"),
        message: format!("not a valid report: {e}"),
    })?;
    if report.format_version > REPORT_FORMAT_VERSION {
        return Err(Error::Invalid(format!(
            "report {id} has format_version {}, newer than this pgvault understands ({REPORT_FORMAT_VERSION}); upgrade pgvault",
            report.format_version
        )));
    }
    Ok(report)
}

/// Load one report (its JSON bytes and the parsed report). `id` may be a unique prefix
/// or `latest`.
pub async fn load(repo: &Repository, selector: &str) -> Result<(DrillReport, Vec<u8>)> {
    let ids = list_ids(repo).await?;
    let matches: Vec<&String> = if selector == "latest" {
        ids.last().into_iter().collect()
    } else {
        ids.iter().filter(|id| id.starts_with(selector)).collect()
    };
    let id = match matches.as_slice() {
        [one] => (*one).clone(),
        [] => {
            return Err(Error::Invalid(format!(
                "no restore-test report {selector:?} for policy {}; see `pgvault reports list`",
                repo.policy()
            )))
        }
        many => {
            return Err(Error::Invalid(format!(
                "report id prefix {selector:?} matches {} reports; give more of the id",
                many.len()
            )))
        }
    };
    let bytes = repo.storage().get(&report_key(repo, &id, "json")).await?;
    Ok((parse_report(&id, &bytes)?, bytes.to_vec()))
}

/// Store a report: the renders first, the JSON (which records their digests) last.
pub async fn write(
    repo: &Repository,
    report: &DrillReport,
    markdown: &str,
    html: &str,
) -> Result<()> {
    let storage = repo.storage();
    storage
        .put(
            &report_key(repo, &report.id, "md"),
            Bytes::from(markdown.to_string()),
        )
        .await?;
    storage
        .put(
            &report_key(repo, &report.id, "html"),
            Bytes::from(html.to_string()),
        )
        .await?;
    storage
        .put(
            &report_key(repo, &report.id, "json"),
            Bytes::from(report.to_json()),
        )
        .await
}

/// One stored report as the chain check sees it.
pub struct StoredReport {
    /// Report id.
    pub id: String,
    /// Its JSON bytes.
    pub json: Vec<u8>,
    /// Its Markdown bytes (None: missing).
    pub markdown: Option<Vec<u8>>,
    /// Its HTML bytes (None: missing).
    pub html: Option<Vec<u8>>,
}

/// The chain check's finding about one report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainFinding {
    /// The report.
    pub id: String,
    /// Problems found (empty: intact).
    pub problems: Vec<String>,
}

/// Read every report of the policy for [`verify_chain`].
pub async fn read_all(repo: &Repository) -> Result<Vec<StoredReport>> {
    let mut out = Vec::new();
    for id in list_ids(repo).await? {
        let get = |ext: &'static str| {
            let key = report_key(repo, &id, ext);
            async move {
                match repo.storage().get(&key).await {
                    Ok(b) => Ok(Some(b.to_vec())),
                    Err(Error::ObjectNotFound { .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            }
        };
        let json = get("json").await?.unwrap_or_default();
        out.push(StoredReport {
            markdown: get("md").await?,
            html: get("html").await?,
            json,
            id,
        });
    }
    Ok(out)
}

/// Check the hash chain of `reports` (oldest first). Each report must parse, carry
/// its own id, match the digests of its renders, and link to the report before it by
/// id and by the sha256 of that report's JSON. A link to an id that is not stored means
/// a report was deleted; a digest mismatch names the report that was altered.
pub fn verify_chain(reports: &[StoredReport]) -> Vec<ChainFinding> {
    let mut findings = Vec::new();
    for (i, stored) in reports.iter().enumerate() {
        let mut problems = Vec::new();
        match parse_report(&stored.id, &stored.json) {
            Err(e) => problems.push(format!("its JSON cannot be read: {e}")),
            Ok(report) => {
                if report.id != stored.id {
                    problems.push(format!(
                        "it is stored as {} but says it is {}",
                        stored.id, report.id
                    ));
                }
                for (what, bytes, recorded) in [
                    (
                        "Markdown",
                        &stored.markdown,
                        &report.renders.markdown_sha256,
                    ),
                    ("HTML", &stored.html, &report.renders.html_sha256),
                ] {
                    match bytes {
                        None => problems.push(format!("its {what} file is missing")),
                        Some(b) if sha256_hex(b) != *recorded => problems.push(format!(
                            "its {what} file was altered (sha256 {}, recorded {recorded})",
                            sha256_hex(b)
                        )),
                        Some(_) => {}
                    }
                }
                let before = i.checked_sub(1).map(|j| &reports[j]);
                match (&report.previous, before) {
                    (None, None) => {}
                    (None, Some(b)) => problems.push(format!(
                        "it records no previous report, but {} comes before it",
                        b.id
                    )),
                    (Some(link), None) => problems.push(format!(
                        "the report before it, {}, is missing (deleted?)",
                        link.id
                    )),
                    (Some(link), Some(b)) if link.id != b.id => {
                        if reports.iter().any(|r| r.id == link.id) {
                            problems.push(format!(
                                "it links to {} but {} comes before it (reports out of order or forked)",
                                link.id, b.id
                            ));
                        } else {
                            problems.push(format!(
                                "the report before it, {}, is missing (deleted?)",
                                link.id
                            ));
                        }
                    }
                    (Some(link), Some(b)) => {
                        let actual = sha256_hex(&b.json);
                        if actual != link.sha256 {
                            problems.push(format!(
                                "report {} was altered after it was written: its sha256 is {actual}, this report recorded {}",
                                b.id, link.sha256
                            ));
                        }
                    }
                }
            }
        }
        findings.push(ChainFinding {
            id: stored.id.clone(),
            problems,
        });
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::super::report::*;
    use super::*;
    use chrono::{TimeZone, Utc};

    fn report(id: &str, previous: Option<ChainLink>) -> DrillReport {
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        DrillReport {
            format_version: REPORT_FORMAT_VERSION,
            id: id.into(),
            policy: "app".into(),
            started_at: t,
            finished_at: t,
            verdict: Verdict::Pass,
            failures: vec![],
            backup: None,
            target: None,
            tools: ToolVersions {
                pgvault: "pgvault test".into(),
                pg_restore: "pg_restore 15".into(),
                host: "h".into(),
            },
            phases: vec![],
            checks: vec![],
            rto: ObjectiveResult::new(Some(1.0), None),
            rpo: None,
            history: vec![],
            previous,
            renders: RenderDigests {
                markdown_sha256: sha256_hex(format!("md {id}").as_bytes()),
                html_sha256: sha256_hex(format!("html {id}").as_bytes()),
            },
        }
    }

    fn chain(n: usize) -> Vec<StoredReport> {
        let mut out: Vec<StoredReport> = Vec::new();
        for i in 0..n {
            let id = format!("2026010{i}T000000Z-0000000{i}");
            let previous = out.last().map(|p| ChainLink {
                id: p.id.clone(),
                sha256: sha256_hex(&p.json),
            });
            out.push(StoredReport {
                json: report(&id, previous).to_json(),
                markdown: Some(format!("md {id}").into_bytes()),
                html: Some(format!("html {id}").into_bytes()),
                id,
            });
        }
        out
    }

    fn problems(reports: &[StoredReport]) -> Vec<(String, String)> {
        verify_chain(reports)
            .into_iter()
            .flat_map(|f| f.problems.into_iter().map(move |p| (f.id.clone(), p)))
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert!(problems(&chain(4)).is_empty());
    }

    #[test]
    fn an_altered_report_is_named() {
        let mut reports = chain(4);
        let text = String::from_utf8(reports[1].json.clone()).unwrap();
        reports[1].json = text.replace("\"PASS\"", "\"FAIL\"").into_bytes();
        let found = problems(&reports);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, reports[2].id);
        assert!(found[0]
            .1
            .contains(&format!("report {} was altered", reports[1].id)));
    }

    #[test]
    fn a_deleted_report_is_named() {
        let mut reports = chain(4);
        let gone = reports.remove(1).id;
        let found = problems(&reports);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].1.contains(&format!("{gone}, is missing")),
            "{found:?}"
        );
        let mut reports = chain(3);
        let first = reports.remove(0).id;
        let found = problems(&reports);
        assert!(
            found[0].1.contains(&format!("{first}, is missing")),
            "{found:?}"
        );
    }

    #[test]
    fn an_altered_render_is_named() {
        let mut reports = chain(2);
        reports[0].html = Some(b"<p>all good</p>".to_vec());
        reports[1].markdown = None;
        let found = problems(&reports);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].1.contains("HTML file was altered"));
        assert!(found[1].1.contains("Markdown file is missing"));
    }
}
