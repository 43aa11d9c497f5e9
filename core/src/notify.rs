//! Notifications: a webhook receives a JSON event when a backup fails (always), and on
//! success or retention deletions when the policy asks for them. `format = "slack"`
//! posts Slack-compatible `{"text": …}` instead.
//!
//! Delivery never fails a backup: errors are retried with backoff, then logged.
//! Event payloads carry ids, times and error messages, never secrets (URLs are redacted).

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use serde::Serialize;

/// Payload shape sent to the webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyFormat {
    /// The [`Event`] as JSON.
    Json,
    /// `{"text": "…"}` for Slack incoming webhooks (and compatible chat tools).
    Slack,
}

/// The `[notify]` section of a policy.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// Where events are POSTed (`${ENV}` expanded; treated as a secret).
    pub webhook: String,
    /// Payload shape.
    pub format: NotifyFormat,
    /// Also notify successful backups.
    pub on_success: bool,
    /// Also notify retention deletions.
    pub on_retention: bool,
    /// Delivery attempts after the first failure.
    pub retries: u32,
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A scheduled backup failed after all retries.
    BackupFailed,
    /// A backup succeeded.
    BackupSucceeded,
    /// Retention deleted backups.
    RetentionDeleted,
    /// A scheduled restore test passed.
    RestoreTestPassed,
    /// A scheduled restore test failed (or could not run).
    RestoreTestFailed,
    /// WAL was dropped by a full archive spool (`queue_full = "drop"`): point-in-time
    /// recovery cannot cross the gap. `error` describes it.
    WalGap,
    /// The WAL stream of a streaming policy is behind, stopped or its slot is about to
    /// be lost: nothing is gone yet, but the RPO is past its bound. `error` says what.
    WalStreamBehind,
    /// Copying to a second repository (`[[repository.copies]]`, `copy_after_backup`)
    /// failed; the backup itself succeeded. `copy` names the copy, `error` says why.
    CopyFailed,
}

/// One notification.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// What happened.
    pub event: EventKind,
    /// The policy.
    pub policy: String,
    /// When.
    pub time: DateTime<Utc>,
    /// The backup concerned, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// The error, for failures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Backups deleted, for retention events.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deleted: Vec<String>,
    /// The restore-test report, for restore-test events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
    /// Why a restore test failed, one line each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
    /// The machine that sent it.
    pub host: String,
    /// The copy (`[[repository.copies]]` name), for copy events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy: Option<String>,
}

impl Event {
    /// A new event of `kind` for `policy`, now, from this host.
    pub fn new(kind: EventKind, policy: &str) -> Event {
        Event {
            event: kind,
            policy: policy.to_string(),
            time: Utc::now(),
            backup: None,
            error: None,
            deleted: Vec::new(),
            report: None,
            failures: Vec::new(),
            host: host_name(),
            copy: None,
        }
    }

    fn slack_text(&self) -> String {
        match self.event {
            EventKind::BackupFailed => format!(
                ":rotating_light: pgvault backup of *{}* FAILED on {}: {}",
                self.policy,
                self.host,
                self.error.as_deref().unwrap_or("unknown error")
            ),
            EventKind::BackupSucceeded => format!(
                ":white_check_mark: pgvault backup of *{}* succeeded: {}",
                self.policy,
                self.backup.as_deref().unwrap_or("-")
            ),
            EventKind::RestoreTestPassed => format!(
                ":white_check_mark: pgvault restore test of *{}* PASSED (report {})",
                self.policy,
                self.report.as_deref().unwrap_or("-")
            ),
            EventKind::RestoreTestFailed => format!(
                ":rotating_light: pgvault restore test of *{}* FAILED on {}: {} (report {})",
                self.policy,
                self.host,
                if self.failures.is_empty() {
                    self.error.clone().unwrap_or_else(|| "unknown error".into())
                } else {
                    self.failures.join("; ")
                },
                self.report.as_deref().unwrap_or("-")
            ),
            EventKind::RetentionDeleted => format!(
                ":wastebasket: pgvault retention of *{}*{} deleted {} backup(s): {}",
                self.policy,
                self.copy
                    .as_deref()
                    .map(|c| format!(" (copy {c})"))
                    .unwrap_or_default(),
                self.deleted.len(),
                self.deleted.join(", ")
            ),
            EventKind::WalGap => format!(
                ":rotating_light: pgvault WAL GAP in *{}*: {}; point-in-time recovery cannot cross it: take a new base backup",
                self.policy,
                self.error.as_deref().unwrap_or("a range was dropped")
            ),
            EventKind::WalStreamBehind => format!(
                ":rotating_light: pgvault WAL stream of *{}* on {} is BEHIND: {}",
                self.policy,
                self.host,
                self.error.as_deref().unwrap_or("unknown")
            ),
            EventKind::CopyFailed => format!(
                ":rotating_light: pgvault copy of *{}* to {} FAILED on {}: {} (the backup itself is stored)",
                self.policy,
                self.copy.as_deref().unwrap_or("its copy"),
                self.host,
                self.error.as_deref().unwrap_or("unknown error")
            ),
        }
    }
}

/// This machine's host name, for events and reports (empty when unknown).
pub fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Whether `config` wants events of `kind`.
pub fn wanted(config: &NotifyConfig, kind: EventKind) -> bool {
    match kind {
        EventKind::BackupFailed
        | EventKind::RestoreTestFailed
        | EventKind::WalGap
        | EventKind::WalStreamBehind
        | EventKind::CopyFailed => true,
        EventKind::RestoreTestPassed => config.on_success,
        EventKind::BackupSucceeded => config.on_success,
        EventKind::RetentionDeleted => config.on_retention,
    }
}

/// Deliver `event` if the policy wants it; retries with backoff, logs the outcome, and
/// never returns an error.
pub async fn send(config: &NotifyConfig, event: &Event) {
    if !wanted(config, event.event) {
        return;
    }
    let body = match config.format {
        NotifyFormat::Json => serde_json::to_vec(event),
        NotifyFormat::Slack => {
            serde_json::to_vec(&serde_json::json!({ "text": event.slack_text() }))
        }
    };
    let Ok(body) = body else { return };
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot create the notification client");
            return;
        }
    };
    let deliver = || async {
        let response = client
            .post(&config.webhook)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            // The error text can contain the URL; the webhook URL is a secret.
            .map_err(|e| Undelivered::Network {
                timeout: e.is_timeout(),
                connect: e.is_connect(),
            })?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(Undelivered::Refused(response.status()))
        }
    };
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_factor(2.0)
        .without_max_delay()
        .with_max_times(config.retries as usize);
    let delivered = deliver
        .retry(backoff)
        .notify(|failure: &Undelivered, retry_in: Duration| {
            tracing::warn!(policy = %event.policy, %failure, retry_in_ms = retry_in.as_millis() as u64, "notification not delivered; retrying")
        })
        .await;
    match delivered {
        Ok(()) => tracing::debug!(policy = %event.policy, "notification delivered"),
        Err(failure) => {
            tracing::error!(policy = %event.policy, %failure, "notification not delivered after retries")
        }
    }
}

/// Why one delivery attempt failed, without the webhook URL (a secret).
#[derive(Debug)]
enum Undelivered {
    /// No answer: the connection or the request failed.
    Network { timeout: bool, connect: bool },
    /// The webhook answered with an error status.
    Refused(reqwest::StatusCode),
}

impl std::fmt::Display for Undelivered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Undelivered::Network { timeout: true, .. } => {
                write!(f, "the webhook did not answer in time")
            }
            Undelivered::Network { connect: true, .. } => {
                write!(f, "cannot connect to the webhook")
            }
            Undelivered::Network { .. } => write!(f, "the request to the webhook failed"),
            Undelivered::Refused(status) => write!(f, "the webhook answered {status}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_without_empty_fields() {
        let mut e = Event::new(EventKind::BackupFailed, "app");
        e.error = Some("pg_dump exit 1".into());
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "backup_failed");
        assert_eq!(v["policy"], "app");
        assert!(v.get("deleted").is_none() && v.get("backup").is_none());
        assert!(e.slack_text().contains("FAILED") && e.slack_text().contains("pg_dump exit 1"));
    }

    #[test]
    fn failures_are_always_wanted() {
        let config = NotifyConfig {
            webhook: "http://x".into(),
            format: NotifyFormat::Json,
            on_success: false,
            on_retention: false,
            retries: 0,
        };
        assert!(wanted(&config, EventKind::BackupFailed));
        assert!(!wanted(&config, EventKind::BackupSucceeded));
        assert!(!wanted(&config, EventKind::RetentionDeleted));
    }
}
