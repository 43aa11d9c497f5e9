//! Peak memory of a backup does not grow with the database: a database ten times larger
//! is backed up within a small constant of the smaller one's peak RSS.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a harness failure should panic the test

use pgvault_integration::{keygen, pgvault, run_ok, write_policy, PgCluster, RepoSpec};

/// Peak RSS (KiB) of `pgvault backup` of `db`, as the process itself reports it (VmHWM).
fn backup_peak_rss_kib(
    cluster: &PgCluster,
    db: &str,
    work: &std::path::Path,
    recipient: &str,
) -> (u64, u64) {
    let repo = work.join(format!("repo-{db}"));
    // Small parts and few in flight, so both backups fill every buffer they may use.
    let policy = write_policy(
        work,
        db,
        &cluster.url(db),
        &RepoSpec::Filesystem(&repo),
        recipient,
        "",
    );
    let text = std::fs::read_to_string(&policy).unwrap().replace(
        "[encryption]",
        "part_size = \"5MiB\"\nparts_in_flight = 2\n[encryption]",
    );
    std::fs::write(&policy, text).unwrap();
    let mut cmd = pgvault(None);
    cmd.args(["backup", "--json", "--policy"]).arg(&policy);
    let out: serde_json::Value = serde_json::from_str(&run_ok(cmd)).unwrap();
    let raw = out["manifest"]["objects"]["dump"]["raw_size"]
        .as_u64()
        .unwrap();
    (out["peak_rss_kib"].as_u64().unwrap(), raw)
}

#[test]
fn peak_rss_does_not_grow_with_database_size() {
    let Some(cluster) = PgCluster::start() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let key = keygen(work.path(), "ops");
    for (db, rows) in [("small", 100_000), ("large", 1_000_000)] {
        cluster.psql("postgres", &format!("create database {db}"));
        cluster.psql_script(
            db,
            &format!(
                "create table t (id int primary key, a text, doc jsonb); \
                 insert into t select g, md5(random()::text) || md5(g::text), jsonb_build_object('n', g, 'r', random()) \
                 from generate_series(1, {rows}) g;"
            ),
        );
    }
    let (small_rss, small_raw) =
        backup_peak_rss_kib(&cluster, "small", work.path(), &key.recipient);
    let (large_rss, large_raw) =
        backup_peak_rss_kib(&cluster, "large", work.path(), &key.recipient);
    eprintln!("small: {small_raw} B dump, peak RSS {small_rss} KiB; large: {large_raw} B dump, peak RSS {large_rss} KiB");
    assert!(
        large_raw >= 9 * small_raw,
        "the large database is not ~10x the small one"
    );
    // Buffers are bounded by part_size × (parts_in_flight + 2) = 20 MiB; allow 16 MiB of slack.
    assert!(
        large_rss <= small_rss + 16 * 1024,
        "peak RSS grew with the database: {small_rss} KiB for {small_raw} B, {large_rss} KiB for {large_raw} B"
    );
    assert!(
        large_rss <= 100 * 1024,
        "peak RSS {large_rss} KiB is above 100 MiB"
    );
}
