//! The README's worked example, `examples/release-policy.toml`, run as written against
//! the fake Artifactory by the real binary, on a clock set to a Saturday: tested and
//! scanned → staging; approved → prod, not on the weekend, unless a release manager
//! overrides the freeze. The audit trail it prints is the one the README shows.

use std::process::{Command, Output};

use chrono::{Datelike, Duration, TimeZone, Timelike, Utc, Weekday};
use serde_json::Value;

use crate::fake_artifactory::FakeArtifactory;
use crate::harness::{CI_SECRET, ChildApp, OPS_TOKEN, VIEWER_TOKEN, free_port};

const EXAMPLE: &str = include_str!("../../examples/release-policy.toml");
const README: &str = include_str!("../../README.md");
const ALICE: &str = "alice-token-value";
const DIGEST: &str = "sha256:4c2f1a9e0b7d3e5f6a8c9b1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f";

/// Seconds from now to the next Saturday 10:00 in Paris (09:00 UTC in winter, 08:00
/// in summer), for libfaketime's offset.
fn to_saturday_morning() -> i64 {
    let paris = chrono_tz::Europe::Paris;
    let now = Utc::now().with_timezone(&paris);
    let mut day = now.date_naive() + Duration::days(1);
    while day.weekday() != Weekday::Sat {
        day += Duration::days(1);
    }
    let target = paris
        .from_local_datetime(&day.and_hms_opt(10, 0, 0).unwrap())
        .unwrap();
    (target.with_timezone(&Utc) - Utc::now()).num_seconds()
}

fn libfaketime() -> std::path::PathBuf {
    std::fs::read_dir("/usr/lib")
        .unwrap()
        .flatten()
        .map(|d| d.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists())
        .expect("Debian's faketime is needed (apt-get install faketime)")
}

/// `gantry` as an operator runs it against the server.
fn cli(base: &str, token: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .env("GANTRY_URL", base)
        .env("GANTRY_TOKEN", token)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_release_policy_runs_as_described() {
    assert!(
        README.contains(EXAMPLE),
        "the README shows examples/release-policy.toml as it is"
    );
    let fake = FakeArtifactory::start().await;
    fake.put("docker-dev", "team-a/api", "1.4.2", DIGEST);
    let dir = tempfile::tempdir().unwrap();
    let config = EXAMPLE
        .replace("https://acme.jfrog.io", &fake.uri())
        .replace(
            "sqlite:///var/lib/gantry/gantry.db",
            &format!("sqlite://{}", dir.path().join("gantry.db").display()),
        );
    let path = dir.path().join("gantry.toml");
    std::fs::write(&path, config).unwrap();
    let offset = format!("+{}", to_saturday_morning());
    let lib = libfaketime();
    let app = ChildApp::start_with_env(
        &path,
        free_port(),
        &[],
        &[
            ("LD_PRELOAD", lib.to_str().unwrap()),
            ("FAKETIME", &offset),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
            ("CI_SECRET", CI_SECRET),
            ("SCANNER_SECRET", CI_SECRET),
            ("ALICE_TOKEN", ALICE),
            ("OPS_TOKEN", OPS_TOKEN),
            ("VIEWER_TOKEN", VIEWER_TOKEN),
            ("JFROG_TOKEN", "jfrog-access-token"),
        ],
    )
    .await;
    let client = &app.client;
    let base = client.base.clone();

    // CI: tests passed for team-a/api:1.4.2. The scan has not come yet: it waits.
    let tested = format!(
        r#"{{"event":"tests-passed","repo":"docker-dev","image":"team-a/api","tag":"1.4.2","digest":"{DIGEST}"}}"#
    );
    let v: Value = client
        .send("ci", tested.as_bytes())
        .await
        .json()
        .await
        .unwrap();
    let staging = v["jobs"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(client.job(&staging).await["state"], "waiting");

    // The scanner: no criticals in that digest. Staging is promoted at once, and
    // gantry's own `gantry.promoted` starts the prod stage, which the protection holds
    // for a release manager.
    let scanned =
        format!(r#"{{"event":"scan.completed","digest":"{DIGEST}","summary":{{"critical":0}}}}"#);
    client.send("scanner", scanned.as_bytes()).await;
    assert_eq!(client.wait_final(&staging).await["state"], "succeeded");
    let prod = loop {
        let listed: Value = client
            .get("/api/v1/jobs?rule=staging-to-prod", Some(OPS_TOKEN))
            .await
            .json()
            .await
            .unwrap();
        if let Some(id) = listed["jobs"][0]["id"].as_str() {
            break id.to_string();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let job = client
        .wait_for(&prod, |j| j["state"] == "awaiting_approval")
        .await;
    assert_eq!(job["approval"]["protections"], serde_json::json!(["prod"]));

    // Alice approves; it is Saturday, so the weekend freeze holds it until Monday
    // 08:00 in Paris, without an attempt.
    let approved = cli(
        &base,
        ALICE,
        &["jobs", "approve", &prod, "--comment", "CAB-2291"],
    );
    assert!(stdout(&approved).contains("queued"));
    let job = client.wait_for(&prod, |j| j["state"] == "frozen").await;
    assert_eq!(job["frozen"]["by"], serde_json::json!(["weekend"]));
    let until = chrono::DateTime::parse_from_rfc3339(job["frozen"]["until"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono_tz::Europe::Paris);
    assert_eq!(
        (until.weekday(), until.hour(), until.minute()),
        (Weekday::Mon, 8, 0)
    );
    assert_eq!(fake.effects_on("docker-prod", "team-a/api", "1.4.2"), 0);

    // An incident fix cannot wait for Monday: alice overrides the freeze for this
    // one job, with a reason on the record.
    let overridden = cli(
        &base,
        ALICE,
        &[
            "jobs",
            "override-freeze",
            &prod,
            "--comment",
            "INC-4711: fix must ship today",
        ],
    );
    stdout(&overridden);
    assert_eq!(client.wait_final(&prod).await["state"], "succeeded");
    assert_eq!(fake.effects_on("docker-prod", "team-a/api", "1.4.2"), 1);
    assert_eq!(
        fake.digest("docker-prod", "team-a/api", "1.4.2").as_deref(),
        Some(DIGEST)
    );

    let trail = stdout(&cli(&base, OPS_TOKEN, &["audit", "list"]));
    println!("{trail}");
    let kinds: Vec<&str> = trail
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(
        kinds,
        [
            "event.received",
            "job.waiting",
            "event.received",
            "gate.condition_met",
            // The staging promotion's own event and the prod job it starts are
            // committed with the attempt's result, before its records.
            "event.received",
            "job.awaiting_approval",
            "job.attempt",
            "job.succeeded",
            "job.approved",
            "job.frozen",
            "job.freeze_overridden",
            "event.received",
            "job.attempt",
            "job.succeeded",
        ],
        "{trail}"
    );
    let verified = stdout(&cli(&base, OPS_TOKEN, &["audit", "verify"]));
    assert!(verified.starts_with("ok:"), "{verified}");
}
