//! A source cluster archiving WAL through `pgvault wal-push` into a fresh S3 location,
//! for the point-in-time recovery tests (integration/tests/pitr.rs, copies.rs).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cluster::PgCluster;
use crate::{free_port, keygen, pgvault, run, S3Server, TestKey};

/// A source cluster archiving into a fresh S3 prefix, with one table of events.
pub struct Archiving {
    /// The S3 server.
    pub server: S3Server,
    /// The policy's bucket.
    pub bucket: String,
    /// Its prefix in the bucket (may be empty).
    pub prefix: String,
    /// The source cluster, archiving into the policy.
    pub source: PgCluster,
    /// The test's directory (key, policy, restored data directories), which the server's
    /// OS user can enter.
    pub work: tempfile::TempDir,
    /// The policy's key.
    pub key: TestKey,
    /// The policy file.
    pub policy: PathBuf,
    /// A runtime for the S3 client.
    pub runtime: tokio::runtime::Runtime,
}

impl Archiving {
    /// Start with a policy of no extra sections; `None` when the servers are missing and
    /// not required.
    pub fn start() -> Option<Archiving> {
        Self::start_with("")
    }

    /// Start with `extra_policy` appended to the policy.
    pub fn start_with(extra_policy: &str) -> Option<Archiving> {
        let server = S3Server::from_env()?;
        let runtime =
            tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("tokio runtime: {e}"));
        let source = PgCluster::start()?;
        // The server's OS user runs archive_command and restore_command: it must read
        // the policy and the key, and restored data directories live here too.
        let work = crate::server_reachable_tempdir("pgvault-test-pitr-");
        let key = keygen(work.path(), "ops");
        let (bucket, prefix, policy) = crate::s3_policy(
            &server,
            work.path(),
            &source.url("postgres"),
            &key.recipient,
            extra_policy,
        );
        crate::give_to_server_user(false, &[&key.identity, &policy]);
        let archive_command = crate::s3_archive_command(&server, &policy);
        source.configure_and_restart(&[
            ("wal_level", "replica"),
            ("archive_mode", "on"),
            ("archive_command", &archive_command),
        ]);
        source.psql(
            "postgres",
            "create table ev (id serial primary key, at timestamptz default clock_timestamp(), note text)",
        );
        Some(Archiving {
            server,
            bucket,
            prefix,
            source,
            work,
            key,
            policy,
            runtime,
        })
    }

    /// `pgvault ARGS --policy POLICY` with the server's credentials.
    pub fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = pgvault(Some(&self.server));
        cmd.args(args).arg("--policy").arg(&self.policy);
        cmd
    }

    /// The identity file, as a string argument.
    pub fn identity(&self) -> &str {
        self.key
            .identity
            .to_str()
            .unwrap_or_else(|| panic!("{} is not UTF-8", self.key.identity.display()))
    }

    /// Insert one event with `note`.
    pub fn insert(&self, note: &str) {
        self.source.psql(
            "postgres",
            &format!("insert into ev (note) values ('{note}')"),
        );
    }

    /// Close the current segment and wait until the archiver has stored it.
    pub fn switch_and_archive(&self) {
        let segment = self
            .source
            .psql("postgres", "select pg_walfile_name(pg_switch_wal())");
        crate::wait_until("the archiver to store the switched segment", 60, || {
            self.source.psql(
                "postgres",
                &format!("select coalesce(last_archived_wal >= '{segment}', false) from pg_stat_archiver"),
            ) == "t"
        });
    }

    /// `pgvault restore --pgdata DIR --start` with `target`; returns the output and the
    /// port the restored server listens on.
    pub fn restore(&self, dir: &Path, target: &[&str]) -> (std::process::Output, u16) {
        let port = free_port();
        let port_text = port.to_string();
        let mut args = vec!["restore", "--identity", self.identity(), "--pgdata"];
        args.push(
            dir.to_str()
                .unwrap_or_else(|| panic!("{} is not UTF-8", dir.display())),
        );
        args.extend_from_slice(target);
        args.extend_from_slice(&["--start", "--port", &port_text]);
        (run(self.cli(&args)), port)
    }

    /// The notes of the events on the server at `port`, in order.
    pub fn notes_at(&self, port: u16) -> Vec<String> {
        self.source
            .psql_on_port(port, "postgres", "select note from ev order by id")
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The keys of the policy's archived WAL in the bucket.
    pub fn wal_keys(&self) -> Vec<String> {
        self.runtime
            .block_on(self.server.list_keys(&self.bucket, &self.prefix))
            .into_iter()
            .filter(|k| k.contains("app/wal/"))
            .collect()
    }
}

/// A restored data directory whose server is stopped when the test ends.
pub struct Restored<'a> {
    /// The cluster whose binaries stop it.
    pub source: &'a PgCluster,
    /// The data directory.
    pub dir: PathBuf,
}

impl Drop for Restored<'_> {
    fn drop(&mut self) {
        self.source.stop_data_dir(&self.dir);
    }
}
