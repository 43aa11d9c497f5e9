//! `pgvault keys rotate` against Garage: every backup and WAL file moves from key A to
//! key B without its payload changing, an interrupted rotation resumes, and the audit
//! record says who changed what.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use pgvault_integration::fault_proxy::{FaultConfig, FaultMode, FaultProxy};
use pgvault_integration::{
    keygen, pgvault, run, run_ok, text, write_policy, PgCluster, RepoSpec, S3Server, TestKey,
};
use sha2::{Digest, Sha256};

/// Fast failure under the injected faults (two attempts, short waits).
const REPOSITORY: &str = "part_size = \"5MiB\"\nmax_attempts = 2\nretry_time = \"2s\"\n";

struct World {
    server: S3Server,
    bucket: String,
    prefix: String,
    proxy: FaultProxy,
    source: PgCluster,
    target: PgCluster,
    work: tempfile::TempDir,
    a: TestKey,
    b: TestKey,
    policy: PathBuf,
    runtime: tokio::runtime::Runtime,
}

impl World {
    fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = pgvault(Some(&self.server));
        cmd.args(args).arg("--policy").arg(&self.policy);
        cmd
    }

    fn object(&self, key: &str) -> Vec<u8> {
        self.runtime.block_on(async {
            let client = self.server.client().await;
            let out = client
                .get_object()
                .bucket(&self.bucket)
                .key(format!("{}/{key}", self.prefix))
                .send()
                .await
                .unwrap();
            out.body.collect().await.unwrap().into_bytes().to_vec()
        })
    }

    fn manifest(&self, id: &str) -> serde_json::Value {
        serde_json::from_slice(&self.object(&format!("app/backups/{id}/manifest.json"))).unwrap()
    }

    fn backup_ids(&self) -> Vec<String> {
        let out = run_ok(self.cli(&["list", "--json"]));
        let list: serde_json::Value = serde_json::from_str(&out).unwrap();
        let backups = list.get("backups").unwrap_or(&list);
        backups
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_string())
            .collect()
    }

    fn wal_keys(&self) -> Vec<String> {
        self.runtime
            .block_on(self.server.list_keys(&self.bucket, &self.prefix))
            .into_iter()
            .filter(|k| k.contains("/wal/"))
            .map(|k| {
                k.trim_start_matches(&format!("{}/", self.prefix))
                    .to_string()
            })
            .collect()
    }
}

/// sha256 of an object's bytes after its age header.
fn payload_sha(stored: &[u8]) -> String {
    let text = stored.windows(4).position(|w| w == b"\n---").unwrap();
    let end = text + 4 + 1 + 43 + 1;
    hex::encode(Sha256::digest(&stored[end..]))
}

fn fingerprint(recipient: &str) -> String {
    pgvault_core::keys::fingerprint(recipient)
}

fn start() -> Option<World> {
    let server = S3Server::from_env()?;
    let source = PgCluster::start()?;
    let target = PgCluster::start()?;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (bucket, prefix) = runtime.block_on(server.fresh_location());
    // Faults only on the PUTs of globals objects, switched on when the test says.
    let config = FaultConfig::new(7, 0.0, &[FaultMode::InternalError])
        .with_methods(&["PUT"])
        .with_paths(&["globals.sql"]);
    let proxy = FaultProxy::start_in_background(&server.endpoint, config).unwrap();
    source.psql("postgres", "create database app");
    // 24 MiB of incompressible rows: the dump's payload is far above one 5 MiB part, so
    // its rotation copies the rest inside the store.
    source.psql_script(
        "app",
        "create extension pgcrypto;\n\
         create table blob (id int primary key, b bytea);\n\
         insert into blob select g, gen_random_bytes(1024) from generate_series(1, 24000) g;\n",
    );
    let work = tempfile::tempdir().unwrap();
    let a = keygen(work.path(), "a");
    let b = keygen(work.path(), "b");
    let mut via_proxy = server.clone();
    via_proxy.endpoint = proxy.endpoint();
    let policy = write_policy(
        work.path(),
        "app",
        &source.url("app"),
        &RepoSpec::S3 {
            server: &via_proxy,
            bucket: &bucket,
            prefix: &prefix,
        },
        &a.recipient,
        "",
    );
    let policy_text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(
        &policy,
        policy_text.replace("[repository]\n", &format!("[repository]\n{REPOSITORY}")),
    )
    .unwrap();
    Some(World {
        server,
        bucket,
        prefix,
        proxy,
        source,
        target,
        work,
        a,
        b,
        policy,
        runtime,
    })
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn rotation_moves_backups_and_wal_to_the_new_key_keeps_payloads_and_resumes() {
    let Some(w) = start() else { return };
    for _ in 0..2 {
        run_ok(w.cli(&["backup"]));
    }
    let ids = w.backup_ids();
    assert_eq!(ids.len(), 2);
    // Two WAL files, pushed as archive_command would.
    let wal_dir = w.work.path().join("pg_wal");
    std::fs::create_dir(&wal_dir).unwrap();
    let mut wal = Vec::new();
    for n in 1..=2u32 {
        let name = format!("00000001000000000000{n:04X}");
        let data: Vec<u8> = (0..(1 << 20)).map(|_| rand::random::<u8>()).collect();
        std::fs::write(wal_dir.join(&name), &data).unwrap();
        run_ok(w.cli(&["wal-push", path(&wal_dir.join(&name))]));
        wal.push((name, data));
    }
    let wal_keys = w.wal_keys();
    assert_eq!(wal_keys.len(), 2, "{wal_keys:?}");

    // What the payloads are before.
    let mut before = Vec::new();
    for id in &ids {
        let manifest = w.manifest(id);
        for (role, object) in manifest["objects"].as_object().unwrap() {
            let key = object["key"].as_str().unwrap().to_string();
            let stored = w.object(&key);
            assert_eq!(
                object["payload_sha256"].as_str(),
                Some(payload_sha(&stored).as_str()),
                "{id} {role}: new backups record their payload digest"
            );
            before.push((key, payload_sha(&stored)));
        }
    }
    let wal_before: Vec<String> = wal_keys.iter().map(|k| payload_sha(&w.object(k))).collect();

    let rotate = |identity: &TestKey| {
        w.cli(&[
            "keys",
            "rotate",
            "--identity",
            path(&identity.identity),
            "--add",
            &w.b.recipient,
            "--remove",
            &w.a.recipient,
        ])
    };

    // A key that opens nothing: nothing changes, and the command says why.
    let out = run(rotate(&w.b));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("was not rewrapped"), "{}", text(&out));
    for id in &ids {
        assert_eq!(
            w.manifest(id)["encryption"]["recipients"][0].as_str(),
            Some(fingerprint(&w.a.recipient).as_str())
        );
    }

    // A --remove that names no recipient is refused before anything changes.
    let stranger = keygen(w.work.path(), "stranger");
    let out = run(w.cli(&[
        "keys",
        "rotate",
        "--identity",
        path(&w.a.identity),
        "--remove",
        &stranger.recipient,
    ]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("is not a recipient"), "{}", text(&out));

    // Interrupted: every store of a globals object fails.
    w.proxy.set_rate(1.0);
    let out = run(rotate(&w.a));
    w.proxy.set_rate(0.0);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("is unfinished"), "{}", text(&out));
    // Mid-rotation, each backup verifies: its dump carries the new header, its globals
    // the old one, and the manifest accepts both.
    let mid = w.manifest(&ids[0]);
    assert!(
        mid["objects"]["globals"]["rotating_to"].is_object(),
        "{mid}"
    );
    for id in &ids {
        let out = run_ok(w.cli(&["verify", id]));
        assert!(out.contains("verification PASSED"), "{out}");
    }

    // Resumed: the same rotation finishes.
    let out = run_ok(rotate(&w.a));
    assert!(out.contains("already done"), "{out}");
    let history: serde_json::Value =
        serde_json::from_str(&run_ok(w.cli(&["keys", "history", "--json"]))).unwrap();
    let records = history.as_array().unwrap();
    assert_eq!(records.len(), 1, "one rotation, resumed: {history}");
    let record = &records[0];
    assert_eq!(record["state"], "finished");
    assert_eq!(record["added"][0], fingerprint(&w.b.recipient).as_str());
    assert_eq!(record["removed"][0], fingerprint(&w.a.recipient).as_str());
    assert!(record["by"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!(fingerprint(&w.a.recipient))));
    assert_eq!(record["wal_rewrapped"], 2);
    // The payloads stayed in the store: far fewer bytes moved than are stored.
    let (moved, stored) = (
        record["bytes_moved"].as_u64().unwrap(),
        record["stored_bytes"].as_u64().unwrap(),
    );
    assert!(stored > 40 << 20, "{record}");
    assert!(moved < stored / 2, "moved {moved} of {stored}");

    // Payloads unchanged, byte for byte.
    for (key, sha) in &before {
        assert_eq!(&payload_sha(&w.object(key)), sha, "{key}");
    }
    for (key, sha) in wal_keys.iter().zip(&wal_before) {
        assert_eq!(&payload_sha(&w.object(key)), sha, "{key}");
    }
    for id in &ids {
        let m = w.manifest(id);
        assert_eq!(m["format_version"], 4);
        assert_eq!(
            m["encryption"]["recipients"],
            serde_json::json!([fingerprint(&w.b.recipient)])
        );
        assert!(m["objects"]["dump"].get("stored_sha256").is_none(), "{m}");
        assert!(m["objects"]["dump"].get("rotating_to").is_none(), "{m}");
        // Restores with B, not with A.
        let out = run_ok(w.cli(&["verify", id, "--identity", path(&w.b.identity)]));
        assert!(out.contains("verification PASSED"), "{out}");
        assert!(
            out.contains(&fingerprint(&w.b.recipient)),
            "verify names the recipients: {out}"
        );
        let out = run(w.cli(&["verify", id, "--identity", path(&w.a.identity)]));
        assert!(!out.status.success(), "A still opens {id}: {}", text(&out));
    }
    let listing = run_ok(w.cli(&["list"]));
    assert!(listing.contains(&fingerprint(&w.b.recipient)), "{listing}");

    let out = run_ok(w.cli(&[
        "restore",
        "latest",
        "--target",
        &w.target.url("app"),
        "--identity",
        path(&w.b.identity),
    ]));
    assert!(out.contains("restore PASSED"), "{out}");
    assert_eq!(
        w.target.psql("app", "select count(*) from blob").trim(),
        "24000"
    );

    let fetched = w.work.path().join("fetched");
    std::fs::create_dir(&fetched).unwrap();
    for (name, data) in &wal {
        let dest = fetched.join(name);
        let args = |key: &TestKey| {
            w.cli(&[
                "wal-fetch",
                "--prefetch",
                "0",
                "--identity",
                path(&key.identity),
                name,
                path(&dest),
            ])
        };
        run_ok(args(&w.b));
        assert!(std::fs::read(&dest).unwrap() == *data, "{name} differs");
        std::fs::remove_file(&dest).unwrap();
        assert!(!run(args(&w.a)).status.success(), "A still opens {name}");
    }

    // Again: nothing left to do, nothing moved.
    let out = run_ok(rotate(&w.a));
    assert!(out.contains("0 backup(s)"), "{out}");
    drop(w.source);
}
