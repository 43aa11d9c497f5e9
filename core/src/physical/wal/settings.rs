//! How the server is told to archive and fetch WAL through pgvault: the
//! `archive_command` and `restore_command` lines (with their words quoted for the
//! shell, and `%` doubled where PostgreSQL would read it as a placeholder), and
//! `ALTER SYSTEM` of the archive settings.

use std::path::{Path, PathBuf};

use crate::error::{safe_echo, Error, Result};

/// One word of a command line the server runs (`archive_command`, `restore_command`):
/// quoted for the shell, with every `%` doubled, because PostgreSQL replaces `%p`, `%f`,
/// `%r` and `%%` in the line before the shell sees it. A path with a space, a quote or a
/// `%` in it reaches pgvault unchanged; a NUL byte cannot be passed at all.
pub fn command_word(word: &str) -> Result<String> {
    let quoted = shlex::try_quote(word).map_err(|_| {
        Error::Invalid(format!(
            "{} contains a NUL byte, which no command line can carry",
            safe_echo(word)
        ))
    })?;
    Ok(quoted.replace('%', "%%"))
}

/// The server settings that archive a cluster's WAL into a policy with `pgvault`.
pub fn archive_settings(
    pgvault: &Path,
    policy: &Path,
    timeout_seconds: u32,
) -> Result<Vec<(&'static str, String)>> {
    Ok(vec![
        ("wal_level", "replica".into()),
        ("archive_mode", "on".into()),
        (
            "archive_command",
            format!(
                "{} wal-push --policy {} %p",
                command_word(&pgvault.display().to_string())?,
                command_word(&policy.display().to_string())?
            ),
        ),
        ("archive_timeout", timeout_seconds.to_string()),
    ])
}

/// Bound suggested for `max_slot_wal_keep_size` when the server has none: how much WAL
/// the source keeps for a stalled stream before it gives up the slot (and pgvault
/// records a gap) instead of filling its disk.
pub const SUGGESTED_SLOT_KEEP: &str = "10GB";

/// The server settings streaming mode (`[archive] mode = "stream"`) needs: replication
/// connections (`wal_level = replica`; `max_wal_senders` defaults to 10) and a bound on
/// the WAL a replication slot may hold. No `archive_command`.
pub fn stream_settings() -> Vec<(&'static str, String)> {
    vec![
        ("wal_level", "replica".into()),
        ("max_slot_wal_keep_size", SUGGESTED_SLOT_KEEP.into()),
    ]
}

/// The settings incremental base backups need on a server of `major`: `summarize_wal`
/// from PostgreSQL 17 on (it needs no restart), nothing before.
pub fn summary_settings(major: u32) -> Vec<(&'static str, String)> {
    if major >= crate::physical::incremental::INCREMENTAL_MIN_MAJOR {
        vec![("summarize_wal", "on".into())]
    } else {
        Vec::new()
    }
}

/// One setting changed by [`apply_archive_settings`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedSetting {
    /// The setting.
    pub name: String,
    /// Its value before.
    pub before: String,
    /// Its new value.
    pub after: String,
    /// Whether the change takes effect only after a server restart.
    pub needs_restart: bool,
}

/// `ALTER SYSTEM SET` each setting on the server and reload; report which changed and
/// which need a restart (`wal_level`, `archive_mode`).
pub async fn apply_archive_settings(
    client: &tokio_postgres::Client,
    settings: &[(&'static str, String)],
) -> Result<Vec<AppliedSetting>> {
    let mut applied = Vec::new();
    for (name, value) in settings {
        let row = client
            .query_one(
                "select setting, context from pg_settings where name = $1",
                &[name],
            )
            .await
            .map_err(|e| Error::pg(format!("cannot read {name}"), e))?;
        let before: String = row.get(0);
        let context: String = row.get(1);
        client
            .batch_execute(&format!(
                "alter system set {name} = {}",
                crate::postgres::quote_literal(value)
            ))
            .await
            .map_err(|e| {
                Error::pg(
                    format!("cannot set {name} (ALTER SYSTEM needs a superuser)"),
                    e,
                )
            })?;
        applied.push(AppliedSetting {
            name: (*name).to_string(),
            needs_restart: context == "postmaster" && before != *value,
            before,
            after: value.clone(),
        });
    }
    client
        .batch_execute("select pg_reload_conf()")
        .await
        .map_err(|e| Error::pg("cannot reload the configuration", e))?;
    Ok(applied)
}

/// The absolute path of the `pgvault` program for `restore_command`, so the server
/// never depends on its own PATH: the running executable itself, whatever it is named,
/// or, when the agent (`pgvault-agent`) runs a drill, the `pgvault` CLI installed beside
/// it. A missing CLI is an error that says where it is expected.
pub fn pgvault_program() -> Result<PathBuf> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::io("cannot find the running pgvault executable", e))?;
    let is_agent = exe
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("pgvault-agent"));
    if !is_agent {
        return Ok(exe);
    }
    let cli = exe.with_file_name("pgvault");
    if cli.is_file() {
        Ok(cli)
    } else {
        Err(Error::ToolNotFound {
            message: format!(
                "a point-in-time drill runs `pgvault wal-fetch` as the restored server's restore_command, but {} does not exist; install the pgvault CLI beside pgvault-agent",
                cli.display()
            ),
        })
    }
}

/// The `restore_command` that fetches WAL from `policy`'s archive: this pgvault (by
/// absolute path, see [`pgvault_program`]) running `wal-fetch` with the policy and
/// identity files by absolute path, prefetching `prefetch` segments ahead.
pub fn restore_command(policy: &Path, identity: &Path, prefetch: usize) -> Result<String> {
    restore_command_from(policy, identity, prefetch, None)
}

/// [`restore_command`] reading the WAL of the policy's copy `from_copy` instead of the
/// primary's (`wal-fetch --from-copy NAME`): a point-in-time restore from a copy must
/// replay the copy's WAL too.
pub fn restore_command_from(
    policy: &Path,
    identity: &Path,
    prefetch: usize,
    from_copy: Option<&str>,
) -> Result<String> {
    let absolute = |p: &Path| {
        std::fs::canonicalize(p)
            .map_err(|e| Error::io(format!("cannot resolve {}", p.display()), e))
    };
    let copy = match from_copy {
        Some(name) => format!(" --from-copy {}", command_word(name)?),
        None => String::new(),
    };
    Ok(format!(
        "{} wal-fetch --policy {} --identity {}{copy} --prefetch {prefetch} %f %p",
        command_word(&pgvault_program()?.display().to_string())?,
        command_word(&absolute(policy)?.display().to_string())?,
        command_word(&absolute(identity)?.display().to_string())?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    /// What the shell hands the program for a command line the server runs: PostgreSQL
    /// first turns `%%` into `%`, then `sh -c` parses the line.
    fn as_the_server_runs_it(line: &str) -> Vec<u8> {
        let line = line.replace("%%", "%");
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf '%s' {line}"))
            .output()
            .unwrap()
            .stdout
    }

    #[test]
    fn command_words_reach_the_program_unchanged() {
        for word in [
            "/usr/bin/pgvault",
            "/etc/my policy.toml",
            "it's",
            "/tmp/100%p done",
            "/a/$HOME/`id`/\\\"x\"",
            "",
        ] {
            let quoted = command_word(word).unwrap();
            assert_eq!(
                as_the_server_runs_it(&quoted),
                word.as_bytes(),
                "{word:?} as {quoted}"
            );
        }
        assert_eq!(
            command_word("/usr/bin/pgvault").unwrap(),
            "/usr/bin/pgvault"
        );
        assert!(command_word("nul\0byte").is_err());
    }

    #[test]
    fn archive_command_pushes_with_the_policy() {
        let settings =
            archive_settings(Path::new("/bin/pgvault"), Path::new("/etc/p.toml"), 60).unwrap();
        assert_eq!(
            settings[2].1,
            "/bin/pgvault wal-push --policy /etc/p.toml %p"
        );
        let settings =
            archive_settings(Path::new("/bin/pgvault"), Path::new("/etc/50%.toml"), 60).unwrap();
        assert_eq!(
            settings[2].1,
            "/bin/pgvault wal-push --policy '/etc/50%%.toml' %p"
        );
    }

    #[test]
    fn restore_command_names_this_executable_by_absolute_path() {
        let dir = tempfile::tempdir().unwrap();
        let (policy, key) = (dir.path().join("p.toml"), dir.path().join("k.txt"));
        std::fs::write(&policy, "").unwrap();
        std::fs::write(&key, "").unwrap();
        let command = restore_command(&policy, &key, 4).unwrap();
        // The test binary's own name is nothing like "pgvault".
        let exe = std::env::current_exe().unwrap();
        assert!(exe.is_absolute());
        assert!(
            command.starts_with(&format!(
                "{} wal-fetch --policy ",
                command_word(&exe.display().to_string()).unwrap()
            )),
            "{command}"
        );
        assert!(command.ends_with("--prefetch 4 %f %p"), "{command}");
    }
}
