//! The agent's status page, in a real browser: headless Chromium loads it from an agent
//! running two policies, one whose last restore test failed. The rendered DOM must show
//! each policy's verdicts and colours, every link on it must resolve, no secret may
//! appear, and a screenshot is kept as a test artifact. Access rules are checked over
//! plain HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use pgvault_integration::{
    agent_bin, free_port, http_get, http_request, pgvault, run, run_ok, text, wait_until,
    write_policy, Fixture, RepoSpec,
};

/// A password the source's trust authentication ignores: it must never be shown.
const SECRET: &str = "hunter2-not-for-pages";

fn chromium() -> Option<PathBuf> {
    let found = std::env::var_os("PGVAULT_TEST_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| {
            ["chromium", "chromium-browser", "google-chrome"]
                .into_iter()
                .find(|name| {
                    Command::new(name)
                        .arg("--version")
                        .output()
                        .is_ok_and(|o| o.status.success())
                })
                .map(PathBuf::from)
        });
    if found.is_none() {
        assert!(
            !pgvault_integration::s3server::servers_required(),
            "no Chromium: scripts/test.sh installs it (PGVAULT_TEST_CHROMIUM)"
        );
        eprintln!("skipped: no Chromium (run scripts/test.sh)");
    }
    found
}

/// Run headless Chromium on `url` with `args` (e.g. `--dump-dom`); its stdout.
fn browse(browser: &Path, profile: &Path, url: &str, args: &[&str]) -> String {
    let out = Command::new(browser)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn start_agent(policies: &[&Path], listen: &str, extra: &[&str]) -> Child {
    let mut cmd = Command::new(agent_bin());
    for p in policies {
        cmd.arg("--policy").arg(p);
    }
    cmd.args(["--listen", listen])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

fn restore_test(policy: &Path, identity: &Path) -> i32 {
    let mut cmd = pgvault(None);
    cmd.args(["restore-test", "--policy"])
        .arg(policy)
        .arg("--identity")
        .arg(identity);
    run(cmd).status.code().unwrap_or(-1)
}

#[test]
fn the_status_page_shows_verdicts_and_colours_in_a_real_browser_and_its_links_resolve() {
    let Some(browser) = chromium() else {
        return;
    };
    let drills = pgvault_integration::server_reachable_tempdir("pgvault-test-status-");
    let drill_settings = |expect: &str| {
        format!(
            "[schedule]\nbackup = \"0 3 * * *\"\n[retention]\nkeep_last = 1\n[restore_test]\nwork_dir = \"{}\"\nrto_objective = \"1h\"\nrpo_objective = \"24h\"\n[[restore_test.checks]]\nname = \"the answer\"\nsql = \"select 42\"\nexpect = \"{expect}\"\n",
            drills.path().display()
        )
    };
    let Some(f) = Fixture::start(
        "create table orders as select g as id from generate_series(1, 100) g",
        &drill_settings("= 42"),
    ) else {
        return;
    };
    let billing = write_policy(
        f.work.path(),
        "billing",
        &f.source
            .url("app")
            .replacen("postgres@", &format!("postgres:{SECRET}@"), 1),
        &RepoSpec::Filesystem(&f.work.path().join("repo-billing")),
        &f.key.recipient,
        &drill_settings("= 41"),
    );
    for policy in [&f.policy, &billing] {
        let mut backup = pgvault(None);
        backup.args(["backup", "--policy"]).arg(policy);
        run_ok(backup);
        let mut again = pgvault(None);
        again.args(["backup", "--policy"]).arg(policy);
        run_ok(again);
    }
    assert_eq!(restore_test(&f.policy, &f.key.identity), 0);
    assert_eq!(
        restore_test(&billing, &f.key.identity),
        2,
        "the billing drill fails"
    );

    let port = free_port();
    let agent = start_agent(&[&f.policy, &billing], &format!("127.0.0.1:{port}"), &[]);
    wait_until("the agent to serve", 30, || {
        http_get(port, "/readyz").is_some()
    });

    // The JSON API: both policies, the failed drill, the lights.
    let api: serde_json::Value =
        serde_json::from_str(&http_get(port, "/api/v1/status").unwrap()).unwrap();
    let names: Vec<&str> = api["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["app", "billing"], "{api:#}");
    assert_eq!(
        api["policies"][0]["restore_test"]["verdict"], "PASS",
        "{api:#}"
    );
    assert_eq!(api["policies"][0]["light"], "green", "{api:#}");
    assert_eq!(
        api["policies"][1]["restore_test"]["verdict"], "FAIL",
        "{api:#}"
    );
    assert_eq!(api["policies"][1]["light"], "red", "{api:#}");
    assert_eq!(api["light"], "red");
    // keep_last = 1 with two backups: the next backup pushes both out.
    assert_eq!(
        api["policies"][0]["retention"]["next_to_expire"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "{api:#}"
    );
    assert_eq!(api["policies"][0]["retention"]["kept"], 2, "{api:#}");
    let one: serde_json::Value =
        serde_json::from_str(&http_get(port, "/api/v1/policies/billing").unwrap()).unwrap();
    assert_eq!(one["name"], "billing");
    assert_eq!(
        http_request(port, "/api/v1/policies/nope", &[]).map(|r| r.0),
        Some(404)
    );

    // The page as a browser renders it.
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    let dom = browse(&browser, profile.path(), &url, &["--dump-dom"]);
    assert!(
        dom.contains(r#"data-policy="app" data-light="green""#),
        "app is green: {dom}"
    );
    assert!(
        dom.contains(r#"data-policy="billing" data-light="red""#),
        "billing is red: {dom}"
    );
    assert!(dom.contains(r#"data-verdict="PASS""#), "{dom}");
    assert!(dom.contains(r#"data-verdict="FAIL""#), "{dom}");
    assert!(
        dom.contains("the answer"),
        "the failed check is named: {dom}"
    );
    assert!(!dom.contains(SECRET), "a password reached the page");
    assert!(!http_get(port, "/api/v1/status").unwrap().contains(SECRET));
    // Every link on the page resolves.
    let links: Vec<&str> = dom
        .split("href=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert!(
        links.iter().filter(|l| l.starts_with("/reports/")).count() >= 6,
        "links to both reports in three formats: {links:?}"
    );
    for link in &links {
        let path = link.replace("&amp;", "&");
        let (status, body) = http_request(port, &path, &[]).unwrap();
        assert_eq!(status, 200, "{link} does not resolve");
        assert!(!body.is_empty(), "{link} is empty");
    }
    let one_policy = browse(
        &browser,
        profile.path(),
        &format!("http://127.0.0.1:{port}/policies/billing"),
        &["--dump-dom"],
    );
    assert!(one_policy.contains(r#"data-policy="billing""#));
    assert!(!one_policy.contains(r#"data-policy="app""#));

    // A screenshot for people to look at (kept under target/test-artifacts).
    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    browse(
        &browser,
        profile.path(),
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,2600",
        ],
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG screenshot");
    stop(agent);
}

#[test]
fn off_loopback_the_page_needs_credentials_and_health_stays_open() {
    let Some(f) = Fixture::start("", "[schedule]\nbackup = \"0 3 * * *\"\n") else {
        return;
    };
    // No credentials on a public address: refused at start, saying what to do.
    let refused = start_agent(&[&f.policy], &format!("0.0.0.0:{}", free_port()), &[])
        .wait_with_output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--auth-token-file"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let token = f.work.path().join("status-token");
    std::fs::write(&token, "s3cure-status-token\n").unwrap();
    let port = free_port();
    let agent = start_agent(
        &[&f.policy],
        &format!("0.0.0.0:{port}"),
        &["--auth-token-file", token.to_str().unwrap()],
    );
    wait_until("the agent to serve", 30, || {
        http_get(port, "/readyz").is_some()
    });
    assert_eq!(http_request(port, "/", &[]).map(|r| r.0), Some(401));
    assert_eq!(
        http_request(
            port,
            "/api/v1/status",
            &[("Authorization", "Bearer wrong-token-here")]
        )
        .map(|r| r.0),
        Some(401)
    );
    let (status, body) = http_request(
        port,
        "/api/v1/status",
        &[("Authorization", "Bearer s3cure-status-token")],
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"name\": \"app\""), "{body}");
    assert_eq!(http_request(port, "/healthz", &[]).map(|r| r.0), Some(200));
    stop(agent);
}
