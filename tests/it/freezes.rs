//! Freeze windows (SPEC §9): a job a freeze covers waits `frozen`, reaching no
//! upstream and spending no attempt, and runs once the freeze ends.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use futures_util::FutureExt;
use serde_json::Value;

use crate::harness::{OPS_TOKEN, VIEWER_TOKEN, posts, spawn_app};

/// One event, two jobs: to `docker-prod` (which the freeze covers) and to
/// `docker-qa` (which it does not). The freeze is active from a minute ago until
/// `seconds` from now.
fn rules_with_freeze(seconds: i64) -> String {
    let at = |s: i64| {
        (Utc::now() + chrono::Duration::seconds(s)).to_rfc3339_opts(SecondsFormat::Secs, true)
    };
    format!(
        r#"
[[rules]]
name = "to-prod"
source = "ci"
event = "test-passed"
action = {{ type = "promote", target = "jfrog", to_repo = "docker-prod" }}

[[rules]]
name = "to-qa"
source = "ci"
event = "test-passed"
action = {{ type = "promote", target = "jfrog", to_repo = "docker-qa" }}

[[freezes]]
name = "release-day"
to_repos = ["docker-prod*"]
targets = ["jfrog"]
from = "{}"
until = "{}"
"#,
        at(-60),
        at(seconds)
    )
}

const BODY: &[u8] =
    br#"{"event":"test-passed","repo":"docker-dev","image":"app","tag":"1.0.0","digest":"sha256:0123"}"#;

/// The ids of the jobs to prod and to qa.
async fn jobs_of(resp: reqwest::Response) -> (String, String) {
    assert_eq!(resp.status(), 202);
    let v: Value = resp.json().await.unwrap();
    let id = |rule: &str| {
        v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["rule"] == rule)
            .and_then(|j| j["id"].as_str())
            .unwrap_or_else(|| panic!("no job of {rule} in {v}"))
            .to_string()
    };
    (id("to-prod"), id("to-qa"))
}

#[tokio::test]
async fn a_config_freeze_holds_a_covered_job_until_it_ends_and_lets_others_run() {
    let app = spawn_app(&rules_with_freeze(3)).await;
    app.upstream_answers(200).await;
    let (prod, qa) = jobs_of(app.send("ci", BODY).await).await;

    // The job to another repo runs at once; the one to prod waits, unattempted.
    assert_eq!(app.wait_final(&qa).await["state"], "succeeded");
    let frozen = app.wait_for(&prod, |j| j["state"] == "frozen").await;
    assert_eq!(frozen["attempts"].as_array().unwrap().len(), 0);
    assert_eq!(posts(&app.upstream).await, 1);
    let listed: Value = app
        .get("/api/v1/jobs?state=frozen", Some(OPS_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["jobs"][0]["id"], prod.as_str(), "{listed}");
    let held = &app.audit("kind=job.frozen").await[0];
    assert_eq!(held["job_id"], prod.as_str());
    assert!(
        held["message"]
            .as_str()
            .unwrap()
            .contains("frozen by release-day until"),
        "{held}"
    );

    // After the end it runs, on its first attempt.
    let done = app.wait_final(&prod).await;
    assert_eq!(done["state"], "succeeded");
    assert_eq!(done["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(posts(&app.upstream).await, 2);
    assert_eq!(
        app.audit("kind=job.unfrozen").await[0]["job_id"],
        prod.as_str()
    );
    app.stop().await;
}

#[tokio::test]
async fn a_frozen_job_can_be_cancelled() {
    let app = spawn_app(&rules_with_freeze(600)).await;
    app.upstream_answers(200).await;
    let (prod, _) = jobs_of(app.send("ci", BODY).await).await;
    app.wait_for(&prod, |j| j["state"] == "frozen").await;
    let r = app
        .post(&format!("/api/v1/jobs/{prod}/cancel"), Some(OPS_TOKEN))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(app.job(&prod).await["state"], "cancelled");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(posts(&app.upstream).await, 1);
    app.stop().await;
}

/// Rules without a config freeze: the freeze comes from an operator.
fn rules_only() -> String {
    let with = rules_with_freeze(1);
    with[..with.find("[[freezes]]").unwrap()].to_string()
}

#[tokio::test]
async fn a_runtime_freeze_started_and_ended_through_the_api_holds_then_releases_jobs() {
    let app = spawn_app(&rules_only()).await;
    app.upstream_answers(200).await;
    let http = reqwest::Client::new();
    let start = |body: Value| {
        http.post(format!("{}/api/v1/freezes", app.base))
            .bearer_auth(OPS_TOKEN)
            .json(&body)
            .send()
            .map(Result::unwrap)
    };
    let until = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let past = (Utc::now() - chrono::Duration::hours(1)).to_rfc3339();

    // Freezes always end, in the future.
    let r = start(serde_json::json!({"name": "hotfix", "to_repos": ["docker-prod"]})).await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "until_required"
    );
    let r = start(serde_json::json!({"name": "hotfix", "until": past})).await;
    assert_eq!(r.status(), 400);

    let body = serde_json::json!({"name": "hotfix", "to_repos": ["docker-prod"],
        "targets": ["jfrog"], "until": until, "reason": "incident 42"});
    assert_eq!(start(body.clone()).await.status(), 201);
    assert_eq!(start(body).await.status(), 409);
    let listed: Value = app
        .get("/api/v1/freezes", Some(VIEWER_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["freezes"][0]["name"], "hotfix", "{listed}");
    assert_eq!(listed["freezes"][0]["source"], "runtime");
    assert_eq!(listed["freezes"][0]["active"], true);
    let started = &app.audit("kind=freeze.started").await[0];
    assert_eq!(started["actor"], "ops");
    assert!(
        started["message"].as_str().unwrap().contains("incident 42"),
        "{started}"
    );

    let (prod, qa) = jobs_of(app.send("ci", BODY).await).await;
    assert_eq!(app.wait_final(&qa).await["state"], "succeeded");
    app.wait_for(&prod, |j| j["state"] == "frozen").await;

    // Ended early: the held job runs at once.
    let end = |name: &str| {
        http.delete(format!("{}/api/v1/freezes/{name}", app.base))
            .bearer_auth(OPS_TOKEN)
            .send()
            .map(Result::unwrap)
    };
    assert_eq!(end("hotfix").await.status(), 204);
    assert_eq!(end("hotfix").await.status(), 404);
    assert_eq!(app.wait_final(&prod).await["state"], "succeeded");
    assert_eq!(app.audit("kind=freeze.ended").await[0]["actor"], "ops");
    let listed: Value = app
        .get("/api/v1/freezes", Some(VIEWER_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["freezes"], serde_json::json!([]));
    app.stop().await;
}

#[tokio::test]
async fn config_freezes_are_listed_with_their_window() {
    let app = spawn_app(&rules_with_freeze(600)).await;
    let listed: Value = app
        .get("/api/v1/freezes", Some(VIEWER_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    let f = &listed["freezes"][0];
    assert_eq!(
        (&f["name"], &f["source"], &f["active"]),
        (&"release-day".into(), &"config".into(), &true.into())
    );
    assert_eq!(f["to_repos"], serde_json::json!(["docker-prod*"]));
    app.stop().await;
}

#[tokio::test]
async fn the_cli_starts_lists_and_ends_a_runtime_freeze() {
    use crate::cli::admin;
    let app = spawn_app(&rules_only()).await;
    app.upstream_answers(200).await;
    let start = [
        "freeze",
        "start",
        "hotfix",
        "--to-repo",
        "docker-prod",
        "--target",
        "jfrog",
        "--for",
        "2h",
        "--reason",
        "incident 42",
    ];
    let (code, stdout, stderr) = admin(&app.base, OPS_TOKEN, &start).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("freeze hotfix until "), "{stdout}");
    // Freezes always end.
    let endless = ["freeze", "start", "forever", "--reason", "r"];
    let (code, _, stderr) = admin(&app.base, OPS_TOKEN, &endless).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--for"), "{stderr}");

    let (prod, qa) = jobs_of(app.send("ci", BODY).await).await;
    assert_eq!(app.wait_final(&qa).await["state"], "succeeded");
    app.wait_for(&prod, |j| j["state"] == "frozen").await;
    let (code, stdout, _) = admin(&app.base, VIEWER_TOKEN, &["freeze", "list"]).await;
    assert_eq!(code, 0);
    assert!(
        stdout.contains("hotfix") && stdout.contains("incident 42"),
        "{stdout}"
    );
    let (code, stdout, _) = admin(
        &app.base,
        VIEWER_TOKEN,
        &["freeze", "list", "--output", "json"],
    )
    .await;
    assert_eq!(code, 0);
    let listed: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(listed["source"], "runtime");

    let (code, stdout, stderr) = admin(&app.base, OPS_TOKEN, &["freeze", "end", "hotfix"]).await;
    assert_eq!(
        (code, stdout.trim()),
        (0, "freeze hotfix ended"),
        "{stderr}"
    );
    assert_eq!(app.wait_final(&prod).await["state"], "succeeded");
    app.stop().await;
}

#[tokio::test]
async fn a_frozen_job_survives_a_restart_and_runs_after_the_end() {
    use crate::harness::{ChildApp, free_port, write_config};
    let upstream = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(200))
        .mount(&upstream)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &upstream.uri(), &rules_with_freeze(6), "30s");

    let first = ChildApp::start(&config, free_port()).await;
    let (prod, qa) = jobs_of(first.client.send("ci", BODY).await).await;
    first.client.wait_final(&qa).await;
    first
        .client
        .wait_for(&prod, |j| j["state"] == "frozen")
        .await;
    first.terminate(Duration::from_secs(10)).await;

    // The SQLite file reopened by a new process: still frozen, then run at the end.
    let second = ChildApp::start(&config, free_port()).await;
    assert_eq!(second.client.job(&prod).await["state"], "frozen");
    let done = second.client.wait_final(&prod).await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(done["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(posts(&upstream).await, 2);
    second.terminate(Duration::from_secs(10)).await;
}
