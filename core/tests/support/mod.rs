//! Drill reports built in code, shared by the render golden tests and the stored-report
//! fixture test. Each one exercises a different shape of report, so together they cover
//! every branch of the Markdown and HTML renders: a passing logical drill with history
//! (the trend charts), a failing one, a point-in-time drill, one with every optional part
//! absent, and one whose text needs escaping everywhere it lands.
//!
//! Changing a fixture changes its golden files: re-bless them (see `report_golden.rs`)
//! and review the diff.

use chrono::{DateTime, Utc};
use pgvault_core::drill::report::{
    ChainLink, CheckResult, DrillReport, DrillTarget, HistoryPoint, ObjectiveResult, Phase,
    RenderDigests, RpoResult, Status, TestedBackup, ToolVersions, Verdict, REPORT_FORMAT_VERSION,
};

/// Every fixture with the name its golden files carry, in a fixed order.
pub fn fixtures() -> Vec<(&'static str, DrillReport)> {
    vec![
        ("logical-pass", logical_pass()),
        ("logical-fail", logical_fail()),
        ("pitr-pass", pitr_pass()),
        ("bare-fail", bare_fail()),
        ("staging-first", staging_first()),
        ("escaping", escaping()),
    ]
}

fn at(text: &str) -> DateTime<Utc> {
    text.parse().unwrap()
}

fn phase(name: &str, status: Status, seconds: Option<f64>, rto: bool, detail: &str) -> Phase {
    Phase {
        name: name.into(),
        status,
        seconds,
        counts_for_rto: rto,
        detail: detail.into(),
    }
}

fn check(kind: &str, name: &str, expected: &str, actual: &str, status: Status) -> CheckResult {
    CheckResult {
        kind: kind.into(),
        name: name.into(),
        expected: expected.into(),
        actual: actual.into(),
        status,
    }
}

fn point(id: &str, verdict: Verdict, rto: Option<f64>, rpo: Option<f64>) -> HistoryPoint {
    // Ids start with the drill time, as real ones do.
    let when = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &id[0..4],
        &id[4..6],
        &id[6..8],
        &id[9..11],
        &id[11..13],
        &id[13..15]
    );
    HistoryPoint {
        id: id.into(),
        started_at: at(&when),
        verdict,
        rto_seconds: rto,
        rpo_seconds: rpo,
    }
}

fn tools() -> ToolVersions {
    ToolVersions {
        pgvault: "pgvault 0.1.0".into(),
        pg_restore: "pg_restore (PostgreSQL) 16.2".into(),
        host: "drill-runner-1".into(),
    }
}

fn logical_backup() -> TestedBackup {
    TestedBackup {
        id: "20240501T020000Z-ffee0011".into(),
        picked: "latest".into(),
        database: "orders".into(),
        server_version: "16.2".into(),
        started_at: at("2024-05-01T02:00:00Z"),
        consistent_at: at("2024-05-01T02:00:05Z"),
        stored_bytes: 1_288_490_188,
        dump_bytes: 4_294_967_296,
        dump_stored_sha256: "5d41402abc4b2a76b9719d911017c592".repeat(2),
        dump_plain_sha256: "7d793037a0760186574b0282f2f435e7".repeat(2),
        from_copy: None,
    }
}

fn ephemeral_target() -> DrillTarget {
    DrillTarget {
        kind: "ephemeral".into(),
        server: "127.0.0.1:54329".into(),
        database: "orders_drill".into(),
        server_version: "PostgreSQL 16.2 on x86_64-pc-linux-gnu".into(),
        kept: false,
    }
}

/// A passing logical drill with four earlier reports (one FAIL, one without an RTO, one
/// without an RPO), so both trend charts have lines, gaps, red points and "n/a".
fn logical_pass() -> DrillReport {
    DrillReport {
        format_version: REPORT_FORMAT_VERSION,
        id: "20240501T120000Z-0a1b2c3d".into(),
        policy: "orders-prod".into(),
        started_at: at("2024-05-01T12:00:00Z"),
        finished_at: at("2024-05-01T12:02:10.250Z"),
        verdict: Verdict::Pass,
        failures: vec![],
        backup: Some(logical_backup()),
        target: Some(ephemeral_target()),
        tools: tools(),
        phases: vec![
            phase(
                "setup",
                Status::Passed,
                Some(4.0),
                false,
                "initdb and start",
            ),
            phase(
                "verify",
                Status::Passed,
                Some(20.5),
                true,
                "3 objects, every digest checked",
            ),
            phase(
                "restore",
                Status::Passed,
                Some(55.2),
                true,
                "pg_restore, 12 tables counted",
            ),
            phase("checks", Status::Passed, Some(7.5), true, "14 checks"),
            phase(
                "cleanup",
                Status::Passed,
                Some(1.0),
                false,
                "cluster removed",
            ),
        ],
        checks: vec![
            check(
                "builtin",
                "stream digests and age authentication",
                "all match",
                "3 objects",
                Status::Passed,
            ),
            check(
                "builtin",
                "row count public.orders",
                "= 1000",
                "1000",
                Status::Passed,
            ),
            check(
                "builtin",
                "indexes valid",
                "0 invalid",
                "0 invalid",
                Status::Passed,
            ),
            check(
                "amcheck",
                "amcheck",
                "installed",
                "not installed",
                Status::Skipped,
            ),
            check("sql", "recent orders", "> 0", "42", Status::Passed),
        ],
        rto: ObjectiveResult::new(Some(83.2), Some(900.0)),
        rpo: Some(RpoResult {
            objective: ObjectiveResult::new(Some(14_700.0), Some(86_400.0)),
            data_age_seconds: 35_995.0,
            worst_gap_seconds: 14_700.0,
            worst_gap_from: Some(at("2024-04-30T14:00:00Z")),
            worst_gap_to: Some(at("2024-04-30T18:05:00Z")),
            window_seconds: 7.0 * 86_400.0,
            backups_in_window: 28,
        }),
        history: vec![
            point(
                "20240401T120000Z-11111111",
                Verdict::Pass,
                Some(70.0),
                Some(12_000.0),
            ),
            point(
                "20240408T120000Z-22222222",
                Verdict::Fail,
                Some(1_200.0),
                None,
            ),
            point(
                "20240415T120000Z-33333333",
                Verdict::Pass,
                None,
                Some(15_000.0),
            ),
            point(
                "20240422T120000Z-44444444",
                Verdict::Pass,
                Some(9.75),
                Some(3_600.0),
            ),
        ],
        previous: Some(ChainLink {
            id: "20240422T120000Z-44444444".into(),
            sha256: "c3ab8ff13720e8ad9047dd39466b3c8974e592c2fa383d4a3960714caef0c4f2".into(),
        }),
        renders: RenderDigests::default(),
    }
}

/// A failing logical drill: a failed row count, a check not reached, the cleanup not
/// reached, RTO over its objective, no RPO measured.
fn logical_fail() -> DrillReport {
    let mut report = logical_pass();
    report.id = "20240502T120000Z-deadbeef".into();
    report.started_at = at("2024-05-02T12:00:00Z");
    report.finished_at = at("2024-05-02T12:26:03Z");
    report.verdict = Verdict::Fail;
    report.failures = vec![
        "check row count public.orders: expected = 1000, found 999".into(),
        "RTO 25m 00s exceeds objective 15m 00s".into(),
        "RPO cannot be measured: the policy has no successful logical backup".into(),
    ];
    report.phases[2] = phase(
        "restore",
        Status::Passed,
        Some(1_440.0),
        true,
        "pg_restore, 12 tables counted",
    );
    report.phases[3] = phase("checks", Status::Failed, Some(30.0), true, "1 check failed");
    report.phases[4] = phase("cleanup", Status::NotReached, None, false, "");
    report.checks[1] = check(
        "builtin",
        "row count public.orders",
        "= 1000",
        "999",
        Status::Failed,
    );
    report.checks.push(check(
        "sql",
        "invoices balanced",
        "= 0",
        "",
        Status::NotReached,
    ));
    report.rto = ObjectiveResult::new(Some(1_500.0), Some(900.0));
    report.rpo = None;
    let mut history = logical_pass().history;
    history.push(logical_pass().history_point());
    report.history = history;
    report.previous = Some(ChainLink {
        id: "20240501T120000Z-0a1b2c3d".into(),
        sha256: "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824".into(),
    });
    report
}

/// A point-in-time drill: a physical base backup replayed to a time in an ephemeral
/// cluster, proven by the server's log.
fn pitr_pass() -> DrillReport {
    DrillReport {
        format_version: REPORT_FORMAT_VERSION,
        id: "20240610T030000Z-9f8e7d6c".into(),
        policy: "ledger".into(),
        started_at: at("2024-06-10T03:00:00Z"),
        finished_at: at("2024-06-10T03:07:41.5Z"),
        verdict: Verdict::Pass,
        failures: vec![],
        backup: Some(TestedBackup {
            id: "20240609T220000Z-0badf00d".into(),
            picked: "newest base backup before 2024-06-10 01:23:45 UTC".into(),
            database: "(whole cluster)".into(),
            server_version: "17.0".into(),
            started_at: at("2024-06-09T22:00:00Z"),
            consistent_at: at("2024-06-09T22:04:12Z"),
            stored_bytes: 52_428_800,
            dump_bytes: 209_715_200,
            dump_stored_sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                .into(),
            dump_plain_sha256: "a665a45920422f9d417e4867efdc4fb8a04a1f3fff1fa07e998e86f7f7a27ae3"
                .into(),
            from_copy: None,
        }),
        target: Some(DrillTarget {
            kind: "ephemeral".into(),
            server: "127.0.0.1:55432".into(),
            database: "(whole cluster)".into(),
            server_version: "17.0".into(),
            kept: false,
        }),
        tools: ToolVersions {
            pgvault: "pgvault 0.1.0".into(),
            pg_restore: "pg_basebackup archive of pg_basebackup (PostgreSQL) 17.0".into(),
            host: "drill-runner-2".into(),
        },
        phases: vec![
            phase(
                "setup",
                Status::Passed,
                Some(0.04),
                false,
                "data directory drill-ledger/pgdata, target time 2024-06-10 01:23:45.123456 UTC",
            ),
            phase(
                "verify",
                Status::Passed,
                Some(312.7),
                true,
                "base backup 20240609T220000Z-0badf00d extracted with every digest checked; 17 WAL segment(s) planned",
            ),
            phase(
                "restore",
                Status::Passed,
                Some(96.0),
                true,
                "replayed WAL to 01:23:45.123456 and promoted",
            ),
            phase("checks", Status::Passed, Some(0.3), true, "2 checks"),
            phase(
                "cleanup",
                Status::Passed,
                Some(2.25),
                false,
                "cluster removed",
            ),
        ],
        checks: vec![
            check(
                "builtin",
                "WAL continuous from the base backup to the target",
                "17 segment(s) archived",
                "17 segment(s) present",
                Status::Passed,
            ),
            check(
                "builtin",
                "recovery stopped exactly at the target",
                "last applied commit <= 01:23:45.123456 < first skipped commit",
                "last applied 01:23:45.100000, first skipped 01:23:45.200000",
                Status::Passed,
            ),
        ],
        rto: ObjectiveResult::new(Some(409.0), Some(3_600.0)),
        rpo: Some(RpoResult {
            objective: ObjectiveResult::new(Some(61.0), Some(300.0)),
            data_age_seconds: 5_775.0,
            worst_gap_seconds: 61.0,
            worst_gap_from: Some(at("2024-06-10T01:00:00Z")),
            worst_gap_to: Some(at("2024-06-10T01:01:01Z")),
            window_seconds: 86_400.0,
            backups_in_window: 1_440,
        }),
        history: vec![point(
            "20240603T030000Z-5a5a5a5a",
            Verdict::Pass,
            Some(395.5),
            Some(58.0),
        )],
        previous: Some(ChainLink {
            id: "20240603T030000Z-5a5a5a5a".into(),
            sha256: "486ea46224d1bb4fb680f34f7c9ad96a8f24ec88be73ea8e5a6c65260e9cb8a7".into(),
        }),
        renders: RenderDigests::default(),
    }
}

/// A drill that failed before anything was chosen: no backup, no target, no phase, no
/// check, no RTO, no RPO, no history, no previous report, and no reason recorded.
fn bare_fail() -> DrillReport {
    DrillReport {
        format_version: REPORT_FORMAT_VERSION,
        id: "20240701T000000Z-00000000".into(),
        policy: "empty".into(),
        started_at: at("2024-07-01T00:00:00Z"),
        finished_at: at("2024-07-01T00:00:00.4Z"),
        verdict: Verdict::Fail,
        failures: vec![],
        backup: None,
        target: None,
        tools: ToolVersions {
            pgvault: "pgvault 0.1.0".into(),
            pg_restore: String::new(),
            host: String::new(),
        },
        phases: vec![],
        checks: vec![],
        rto: ObjectiveResult::new(None, None),
        rpo: None,
        history: vec![],
        previous: None,
        renders: RenderDigests::default(),
    }
}

/// The first drill of a policy into a kept staging database: no history (one point per
/// chart, in the middle), no objectives, phases without a time.
fn staging_first() -> DrillReport {
    DrillReport {
        format_version: REPORT_FORMAT_VERSION,
        id: "20240801T090000Z-abcdef01".into(),
        policy: "crm".into(),
        started_at: at("2024-08-01T09:00:00Z"),
        finished_at: at("2024-08-01T09:00:59Z"),
        verdict: Verdict::Pass,
        failures: vec![],
        backup: Some(TestedBackup {
            id: "20240731T230000Z-12345678".into(),
            picked: "random within 30d".into(),
            database: "crm".into(),
            server_version: "14.11".into(),
            started_at: at("2024-07-31T23:00:00Z"),
            consistent_at: at("2024-07-31T23:00:01Z"),
            stored_bytes: 0,
            dump_bytes: 999,
            dump_stored_sha256: "0".repeat(64),
            dump_plain_sha256: "f".repeat(64),
            from_copy: None,
        }),
        target: Some(DrillTarget {
            kind: "staging".into(),
            server: "db-staging.internal:5432".into(),
            database: "pgvault_drill_crm".into(),
            server_version: "PostgreSQL 14.11".into(),
            kept: true,
        }),
        tools: tools(),
        phases: vec![
            phase(
                "setup",
                Status::Skipped,
                None,
                false,
                "staging server reachable",
            ),
            phase("verify", Status::Passed, Some(3.0), true, "2 objects"),
            phase("restore", Status::Passed, Some(41.9), true, "4 tables"),
            phase("checks", Status::Passed, Some(0.0), true, "no SQL checks"),
            phase("cleanup", Status::Skipped, None, false, "kept (--keep)"),
        ],
        checks: vec![check(
            "builtin",
            "row count public.accounts",
            "= 7",
            "7",
            Status::Passed,
        )],
        rto: ObjectiveResult::new(Some(44.9), None),
        rpo: Some(RpoResult {
            objective: ObjectiveResult::new(Some(200_000.0), None),
            data_age_seconds: 36_000.0,
            worst_gap_seconds: 200_000.0,
            worst_gap_from: None,
            worst_gap_to: None,
            window_seconds: 30.0 * 86_400.0,
            backups_in_window: 0,
        }),
        history: vec![],
        previous: None,
        renders: RenderDigests::default(),
    }
}

/// Text that must be escaped wherever it lands: HTML and SVG markup, Markdown table
/// pipes, emphasis, code spans, headings and line breaks; plus odd figures (not-a-number,
/// negative, days, an objective compared by no one) and a long history whose date labels
/// are thinned.
fn escaping() -> DrillReport {
    let script = "<script>alert(\"x\" & 'y')</script>";
    let mut history = Vec::new();
    for day in 1..=11u32 {
        let verdict = if day % 4 == 0 {
            Verdict::Fail
        } else {
            Verdict::Pass
        };
        let rto = match day {
            3 => None,
            5 => Some(f64::NAN),
            6 => Some(-5.0),
            _ => Some(f64::from(day) * 3_600.0),
        };
        let rpo = match day {
            2 => None,
            _ => Some(f64::from(day) * 86_400.0 + 0.5),
        };
        history.push(point(
            &format!("202409{day:02}T000000Z-`{day}`|<b>"),
            verdict,
            rto,
            rpo,
        ));
    }
    DrillReport {
        format_version: REPORT_FORMAT_VERSION,
        id: "20240920T000000Z-`<&>`".into(),
        policy: "<script>|*bold*|`tick`&amp;".into(),
        started_at: at("2024-09-20T00:00:00Z"),
        finished_at: at("2024-09-19T23:59:58Z"),
        verdict: Verdict::Fail,
        failures: vec![
            "# not a heading".into(),
            "- not a list\nsecond line | pipe".into(),
            "> not a quote\r\nand a CRLF".into(),
            script.into(),
            "+ plus *star* _under_ [link](x) ~strike~ back\\slash".into(),
        ],
        backup: Some(TestedBackup {
            id: "id with `backtick`".into(),
            picked: "requested".into(),
            database: "db|with|pipes".into(),
            server_version: "16 <beta>".into(),
            started_at: at("2024-09-19T00:00:00Z"),
            consistent_at: at("2024-09-19T00:00:00Z"),
            stored_bytes: u64::MAX,
            dump_bytes: 1,
            dump_stored_sha256: String::new(),
            dump_plain_sha256: "line\nbreak".into(),
            from_copy: None,
        }),
        target: Some(DrillTarget {
            kind: "staging".into(),
            server: "[::1]:5432".into(),
            database: "a\"quoted\" 'db'".into(),
            server_version: "PostgreSQL 16 & more".into(),
            kept: false,
        }),
        tools: ToolVersions {
            pgvault: "pgvault 0.1.0 <dev>".into(),
            pg_restore: "pg_restore | 16".into(),
            host: "host*name".into(),
        },
        phases: vec![
            phase(
                "setup <1>",
                Status::Passed,
                Some(f64::NAN),
                false,
                "line one\nline two",
            ),
            phase("verify|x", Status::Failed, Some(-3.5), true, script),
            phase(
                "restore",
                Status::NotReached,
                Some(250_000.0),
                true,
                "`pg_restore` *not* run",
            ),
        ],
        checks: vec![
            check("sql", script, "= '<b>'", "<b>", Status::Failed),
            check(
                "sql",
                "table \"a|b\"\nsecond line",
                "> 0 & < 10",
                "count(*) [x] ~y~",
                Status::Passed,
            ),
            check("amcheck", "`idx`", "\\", "a\r\nb\rc", Status::Skipped),
            check("builtin", "# heading?", "-", "", Status::NotReached),
        ],
        rto: ObjectiveResult {
            measured_seconds: Some(250_000.0),
            objective_seconds: Some(172_800.0),
            met: None,
        },
        rpo: Some(RpoResult {
            objective: ObjectiveResult::new(Some(f64::INFINITY), Some(3.0 * 86_400.0)),
            data_age_seconds: -1.25,
            worst_gap_seconds: f64::INFINITY,
            worst_gap_from: Some(at("2024-09-10T00:00:00Z")),
            worst_gap_to: None,
            window_seconds: 0.0,
            backups_in_window: 0,
        }),
        history,
        previous: Some(ChainLink {
            id: "202409<11>".into(),
            sha256: "not|hex<>".into(),
        }),
        renders: RenderDigests::default(),
    }
}
