//! `pgvault keys rotate` and `pgvault keys history`: argument handling and output around
//! [`pgvault_core::rotation`].

use anyhow::{Context, Result};
use pgvault_core::keys::Identities;
use pgvault_core::rotation::{self, RotateRequest, RotationRecord};
use pgvault_core::units::human_bytes;

use crate::args::KeysAction;
use crate::output::human_table;
use crate::{load_policy, open_repository, EXIT_CHECK_FAILED};

/// Run one `keys` subcommand; returns the exit code.
pub(crate) async fn run(action: KeysAction) -> Result<u8> {
    match action {
        KeysAction::Rotate {
            policy,
            identity,
            add,
            remove,
            json,
        } => {
            let policy_path = policy;
            let policy = load_policy(&policy_path)?;
            let identities = Identities::load(&identity)?;
            let repo = open_repository(&policy).await?;
            let request = RotateRequest {
                identities: &identities,
                policy_recipients: &policy.recipients,
                add: &add,
                remove: &remove,
            };
            let target = rotation::target_recipients(&request)?;
            let outcome = rotation::rotate(&repo, &request)
                .await
                .with_context(|| format!("cannot rotate the keys of policy {}", policy.name))?;
            let record = &outcome.record;
            if json {
                let value = serde_json::json!({
                    "record": record,
                    "backups_already_rotated": outcome.backups_already,
                    "backups_not_opened": outcome.backups_not_opened.iter().map(|(id, why)| serde_json::json!({"backup": id, "error": why})).collect::<Vec<_>>(),
                    "wal_already_rotated": outcome.wal_already,
                    "wal_not_opened": outcome.wal_not_opened,
                    "failed": outcome.failed.iter().map(|(id, why)| serde_json::json!({"backup": id, "error": why})).collect::<Vec<_>>(),
                    "policy_recipients_differ": outcome.policy_differs,
                });
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                println!(
                    "rotation {}: {} backup(s) and {} WAL file(s) rewrapped to {}; {} already done",
                    record.id,
                    record.backups_rewrapped,
                    record.wal_rewrapped,
                    record.recipients_after.join(", "),
                    outcome.backups_already + outcome.wal_already
                );
                let share = if record.stored_bytes == 0 {
                    0.0
                } else {
                    100.0 * record.bytes_moved as f64 / record.stored_bytes as f64
                };
                println!(
                    "moved {} through pgvault for {} stored ({share:.2}%); the rest was copied inside the store",
                    human_bytes(record.bytes_moved),
                    human_bytes(record.stored_bytes)
                );
                if !record.added.is_empty() {
                    println!("added:   {}", record.added.join(", "));
                }
                if !record.removed.is_empty() {
                    println!("removed: {}", record.removed.join(", "));
                }
            }
            if !outcome.wal_not_opened.is_empty() {
                eprintln!(
                    "pgvault: {} WAL file(s) are not encrypted to {} and keep their recipients (archived with other keys, e.g. after the policy changed), first: {}",
                    outcome.wal_not_opened.len(),
                    identity.display(),
                    outcome.wal_not_opened[0]
                );
            }
            if outcome.policy_differs {
                eprintln!(
                    "pgvault: the policy still encrypts new backups to {}: set [encryption] recipients to these keys, or new backups and WAL keep the old ones:",
                    policy.recipients.fingerprints().join(", ")
                );
                for key in target.keys_text() {
                    eprintln!("  \"{key}\",");
                }
            }
            if !policy.copies.is_empty() && outcome.failed.is_empty() {
                eprintln!(
                    "pgvault: the copies ({}) still hold the old headers: run `pgvault copy --policy {} --all-missing --verify` to give them the rewrapped objects",
                    policy

                        .copies
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    policy_path.display()
                );
            }
            for (id, why) in &outcome.backups_not_opened {
                eprintln!("pgvault: backup {id} was not rewrapped: {why}; it keeps its recipients");
            }
            for (what, why) in &outcome.failed {
                eprintln!("pgvault: {what} was not rewrapped: {why}");
            }
            if outcome.failed.is_empty() {
                // Finished; what the identity could not open keeps needing its old keys.
                Ok(
                    if outcome.backups_not_opened.is_empty() && outcome.wal_not_opened.is_empty() {
                        0
                    } else {
                        EXIT_CHECK_FAILED
                    },
                )
            } else {
                eprintln!(
                    "pgvault: rotation {} is unfinished; fix the above and run the same command again to finish it",
                    record.id
                );
                Ok(EXIT_CHECK_FAILED)
            }
        }
        KeysAction::History { policy, json } => {
            let policy = load_policy(&policy)?;
            let repo = open_repository(&policy).await?;
            let records = rotation::list_records(&repo)
                .await
                .context("cannot read the key rotation records")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&records)?);
            } else if records.is_empty() {
                println!("no key rotation recorded for policy {}", policy.name);
            } else {
                print!("{}", history_table(&records));
            }
            Ok(0)
        }
    }
}

fn history_table(records: &[RotationRecord]) -> String {
    let rows = records
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                serde_json::to_value(r.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                r.started_at.format("%Y-%m-%d %H:%M:%SZ").to_string(),
                r.by.join(","),
                if r.added.is_empty() {
                    "-".into()
                } else {
                    r.added.join(",")
                },
                if r.removed.is_empty() {
                    "-".into()
                } else {
                    r.removed.join(",")
                },
                (r.backups_rewrapped + r.wal_rewrapped).to_string(),
            ]
        })
        .collect();
    human_table(
        &[
            "ID", "STATE", "STARTED", "BY", "ADDED", "REMOVED", "OBJECTS",
        ],
        rows,
        &[6],
    )
}
