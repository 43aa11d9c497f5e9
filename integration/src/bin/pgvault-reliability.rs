//! `pgvault-reliability`: the reliability matrix of docs/RELIABILITY.md, measured.
//!
//! For each operation (backup, restore, verify, wal-push) and each fault mode of the
//! fault proxy (and all of them mixed), it runs the operation N times through the proxy
//! in front of a real S3 server and classifies every run:
//!
//! - **succeeded**: exit 0, and the result checks out with the network healthy (a backup
//!   deep-verifies, a restore equals the source, pushed WAL fetches byte for byte);
//! - **failed cleanly**: a non-zero exit with one error line, no manifest, no multipart
//!   upload left open, no leftover object or database;
//! - **corrupt**: exit 0 but the result is wrong, or `verify` called healthy bytes
//!   corrupt (exit 2);
//! - **left open**: a failure that left an upload, an object or a database behind;
//! - **hangs**: still running after the hang limit (then killed).
//!
//! Run it through `scripts/reliability.sh`, which starts Garage and builds everything.
//! It prints the matrix as a Markdown table.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use pgvault_integration::fault_proxy::{FaultConfig, FaultMode, FaultProxy};
use pgvault_integration::{keygen, pgvault, write_policy, PgCluster, RepoSpec, S3Server, TestKey};

/// Command line of `pgvault-reliability`.
#[derive(Parser)]
#[command(about = "Measure pgvault's behaviour under S3 faults: the reliability matrix")]
struct Args {
    /// Runs per operation and fault mode.
    #[arg(long, default_value_t = 5)]
    runs: u32,
    /// Probability that a request gets a fault.
    #[arg(long, default_value_t = 0.2)]
    rate: f64,
    /// First seed; run i of a cell uses seed + i.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A run still going after this many seconds counts as a hang and is killed.
    #[arg(long, default_value_t = 300)]
    hang_after: u64,
    /// Operations to measure (default: all).
    #[arg(long, value_delimiter = ',')]
    operations: Vec<String>,
}

/// How one run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Succeeded,
    FailedCleanly,
    Corrupt,
    LeftOpen,
    Hang,
}

/// One row of the matrix.
#[derive(Default)]
struct Cell {
    runs: u32,
    succeeded: u32,
    failed_cleanly: u32,
    corrupt: u32,
    left_open: u32,
    hangs: u32,
    faults: u64,
}

impl Cell {
    fn add(&mut self, outcome: Outcome) {
        self.runs += 1;
        match outcome {
            Outcome::Succeeded => self.succeeded += 1,
            Outcome::FailedCleanly => self.failed_cleanly += 1,
            Outcome::Corrupt => self.corrupt += 1,
            Outcome::LeftOpen => self.left_open += 1,
            Outcome::Hang => self.hangs += 1,
        }
    }
}

/// Timeouts short enough that stalls resolve in seconds.
const REPOSITORY: &str = "part_size = \"5MiB\"\nconnect_timeout = \"2s\"\nfirst_byte_timeout = \"3s\"\nstall_timeout = \"3s\"\nretry_time = \"60s\"\n";

/// The world every cell shares: the source database and the key.
struct World {
    server: S3Server,
    source: PgCluster,
    work: tempfile::TempDir,
    key: TestKey,
    runtime: tokio::runtime::Runtime,
}

/// One cell's repository behind its own proxy.
struct Place {
    bucket: String,
    prefix: String,
    proxy: FaultProxy,
    policy: PathBuf,
}

impl World {
    fn place(&self, name: &str, config: FaultConfig) -> Result<Place> {
        let (bucket, prefix) = self.runtime.block_on(self.server.fresh_location());
        let proxy = FaultProxy::start_in_background(&self.server.endpoint, config)
            .context("starting the fault proxy")?;
        let mut via = self.server.clone();
        via.endpoint = proxy.endpoint();
        let dir = self.work.path().join(name);
        std::fs::create_dir_all(&dir)?;
        let policy = write_policy(
            &dir,
            "app",
            &self.source.url("app"),
            &RepoSpec::S3 {
                server: &via,
                bucket: &bucket,
                prefix: &prefix,
            },
            &self.key.recipient,
            "",
        );
        let text = std::fs::read_to_string(&policy)?;
        std::fs::write(
            &policy,
            text.replace("[repository]\n", &format!("[repository]\n{REPOSITORY}")),
        )?;
        Ok(Place {
            bucket,
            prefix,
            proxy,
            policy,
        })
    }

    fn open_uploads(&self, place: &Place) -> usize {
        self.runtime.block_on(
            self.server
                .open_multipart_uploads(&place.bucket, &place.prefix),
        )
    }

    fn keys(&self, place: &Place) -> Vec<String> {
        self.runtime
            .block_on(self.server.list_keys(&place.bucket, &place.prefix))
    }
}

/// Run `cmd`, killing it after `limit`; `None` when it had to be killed.
fn run_bounded(mut cmd: Command, limit: Duration) -> Result<Option<Output>> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting pgvault")?;
    let started = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            return Ok(Some(child.wait_with_output()?));
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn cli(world: &World, place: &Place, args: &[&str]) -> Command {
    let mut cmd = pgvault(Some(&world.server));
    cmd.args(args).arg("--policy").arg(&place.policy);
    cmd
}

/// Whether a failed command said why in exactly one line (printed, for the record).
fn one_error_line(out: &Output) -> bool {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("pgvault:"))
        .collect();
    for line in &lines {
        eprintln!("    failed: {line}");
    }
    lines.len() == 1
}

fn manifests(keys: &[String]) -> usize {
    keys.iter()
        .filter(|k| k.ends_with("/manifest.json"))
        .count()
}

fn backup_run(world: &World, place: &Place, limit: Duration) -> Result<Outcome> {
    let before = world.keys(place);
    let Some(out) = run_bounded(cli(world, place, &["backup"]), limit)? else {
        return Ok(Outcome::Hang);
    };
    let after = world.keys(place);
    if out.status.success() {
        place.proxy.set_rate(0.0);
        let identity = world.key.identity.to_string_lossy().to_string();
        let verified = cli(world, place, &["verify", "--identity", &identity]).output()?;
        return Ok(if verified.status.success() {
            Outcome::Succeeded
        } else {
            Outcome::Corrupt
        });
    }
    let clean = one_error_line(&out)
        && manifests(&after) == manifests(&before)
        && after.len() == before.len()
        && world.open_uploads(place) == 0;
    Ok(if clean {
        Outcome::FailedCleanly
    } else {
        Outcome::LeftOpen
    })
}

fn restore_run(world: &World, place: &Place, n: u32, limit: Duration) -> Result<Outcome> {
    let db = format!("restored_{n}");
    let target = world.source.url(&db);
    let identity = world.key.identity.to_string_lossy().to_string();
    let cmd = cli(
        world,
        place,
        &["restore", "--identity", &identity, "--target", &target],
    );
    let Some(out) = run_bounded(cmd, limit)? else {
        return Ok(Outcome::Hang);
    };
    let databases = world.source.databases();
    if out.status.success() {
        let same = world.source.dump_text("app") == world.source.dump_text(&db);
        world
            .source
            .psql("postgres", &format!("drop database {db}"));
        return Ok(if same {
            Outcome::Succeeded
        } else {
            Outcome::Corrupt
        });
    }
    let leftover = databases
        .iter()
        .any(|d| d == &db || d.starts_with(&format!("{db}_pgvault_")));
    Ok(if one_error_line(&out) && !leftover {
        Outcome::FailedCleanly
    } else {
        Outcome::LeftOpen
    })
}

fn verify_run(world: &World, place: &Place, limit: Duration) -> Result<Outcome> {
    let identity = world.key.identity.to_string_lossy().to_string();
    let Some(out) = run_bounded(
        cli(world, place, &["verify", "--identity", &identity]),
        limit,
    )?
    else {
        return Ok(Outcome::Hang);
    };
    Ok(match out.status.code() {
        Some(0) => Outcome::Succeeded,
        // The backup is sound (it verified before the faults): exit 2 would be a false
        // corruption verdict.
        Some(2) => Outcome::Corrupt,
        _ => Outcome::FailedCleanly,
    })
}

fn wal_push_run(world: &World, place: &Place, n: u32, limit: Duration) -> Result<Outcome> {
    let dir = world.work.path().join(format!("wal-{}-{n}", place.bucket));
    std::fs::create_dir_all(&dir)?;
    let mut pushed = Vec::new();
    for i in 0..3u32 {
        let name = format!("00000001{:08X}{:08X}", n, i + 1);
        let data: Vec<u8> = (0..(1 << 20)).map(|_| rand::random::<u8>()).collect();
        let path = dir.join(&name);
        std::fs::write(&path, &data)?;
        let Some(out) = run_bounded(
            cli(world, place, &["wal-push", &path.to_string_lossy()]),
            limit,
        )?
        else {
            return Ok(Outcome::Hang);
        };
        if !out.status.success() {
            return Ok(if one_error_line(&out) && world.open_uploads(place) == 0 {
                Outcome::FailedCleanly
            } else {
                Outcome::LeftOpen
            });
        }
        pushed.push((name, data));
    }
    place.proxy.set_rate(0.0);
    let identity = world.key.identity.to_string_lossy().to_string();
    for (name, data) in &pushed {
        let dest = dir.join(format!("{name}.fetched"));
        let out = cli(
            world,
            place,
            &[
                "wal-fetch",
                "--prefetch",
                "0",
                "--identity",
                &identity,
                name,
                &dest.to_string_lossy(),
            ],
        )
        .output()?;
        if !out.status.success() || std::fs::read(&dest)? != *data {
            return Ok(Outcome::Corrupt);
        }
    }
    Ok(Outcome::Succeeded)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let operations: Vec<String> = if args.operations.is_empty() {
        ["backup", "restore", "verify", "wal-push"]
            .map(String::from)
            .to_vec()
    } else {
        args.operations.clone()
    };
    let Some(server) = S3Server::from_env() else {
        bail!("no S3 server: run this through scripts/reliability.sh");
    };
    let Some(source) = PgCluster::start() else {
        bail!("no PostgreSQL server binaries found");
    };
    source.psql("postgres", "create database app");
    source.psql_script(
        "app",
        "create extension pgcrypto;\n\
         create table blob (id int primary key, b bytea);\n\
         insert into blob select g, gen_random_bytes(1024) from generate_series(1, 8000) g;\n\
         create table small (id serial primary key, note text);\n\
         insert into small (note) select 'n' || g from generate_series(1, 100) g;\n",
    );
    let work = tempfile::tempdir()?;
    let key = keygen(work.path(), "ops");
    let world = World {
        server,
        source,
        work,
        key,
        runtime: tokio::runtime::Runtime::new()?,
    };
    let limit = Duration::from_secs(args.hang_after);
    let mut modes: Vec<(String, Vec<FaultMode>)> = FaultMode::ALL
        .iter()
        .map(|m| (m.name().to_string(), vec![*m]))
        .collect();
    modes.push(("all mixed".into(), FaultMode::ALL.to_vec()));

    let mut rows = Vec::new();
    for operation in &operations {
        for (name, set) in &modes {
            let mut cell = Cell::default();
            let started = Instant::now();
            for run in 0..args.runs {
                let seed = args.seed + u64::from(run);
                let config = FaultConfig::new(seed, args.rate, set);
                let place = world.place(&format!("{operation}-{name}-{run}"), config)?;
                // Restore and verify need a sound backup first, taken without faults.
                if operation == "restore" || operation == "verify" {
                    place.proxy.set_rate(0.0);
                    let out = cli(&world, &place, &["backup"]).output()?;
                    if !out.status.success() {
                        bail!(
                            "the fault-free backup failed: {}",
                            String::from_utf8_lossy(&out.stderr)
                        );
                    }
                    place.proxy.set_rate(args.rate);
                }
                let outcome = match operation.as_str() {
                    "backup" => backup_run(&world, &place, limit)?,
                    "restore" => restore_run(&world, &place, run, limit)?,
                    "verify" => verify_run(&world, &place, limit)?,
                    "wal-push" => wal_push_run(&world, &place, run, limit)?,
                    other => bail!("unknown operation {other:?}"),
                };
                cell.faults += place.proxy.stats().total_faults();
                cell.add(outcome);
            }
            eprintln!(
                "{operation:<9} {name:<10} {} runs in {:.0}s: {} ok, {} failed cleanly, {} corrupt, {} left open, {} hangs ({} faults)",
                cell.runs,
                started.elapsed().as_secs_f64(),
                cell.succeeded,
                cell.failed_cleanly,
                cell.corrupt,
                cell.left_open,
                cell.hangs,
                cell.faults
            );
            rows.push((operation.clone(), name.clone(), cell));
        }
    }
    println!(
        "| operation | fault mode | runs | faults injected | succeeded | failed cleanly | corrupt | left open | hangs |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (operation, name, c) in &rows {
        println!(
            "| {operation} | {name} | {} | {} | {} | {} | {} | {} | {} |",
            c.runs, c.faults, c.succeeded, c.failed_cleanly, c.corrupt, c.left_open, c.hangs
        );
    }
    let bad: u32 = rows
        .iter()
        .map(|(_, _, c)| c.corrupt + c.left_open + c.hangs)
        .sum();
    if bad > 0 {
        bail!("{bad} run(s) were corrupt, left something open or hung");
    }
    Ok(())
}
