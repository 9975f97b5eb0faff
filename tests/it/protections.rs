//! Protections (SPEC §9): approval and soak attached to a destination, required of
//! every job promoting there whatever rule made it, through the HTTP API against a
//! fake Artifactory.

use std::process::Stdio;

use serde_json::{Value, json};

use crate::harness::{ChildApp, TestApp, free_port, posts, spawn_app, write_config};

const TOKENS: &str = r#"
[[admin.tokens]]
name = "sam"
token = "sam-token-value"
role = "operate"
groups = ["security"]

[[admin.tokens]]
name = "rita"
token = "rita-token-value"
role = "operate"
groups = ["release-managers"]
"#;
const SAM: &str = "sam-token-value";
const RITA: &str = "rita-token-value";

const PROD: &str = r#"
[[protections]]
name = "prod"
targets = ["jfrog"]
to_repos = ["docker-prod*"]
approval = { groups = ["security"], timeout = "72h" }
"#;

/// Two rules, to prod and to staging, neither with an approval of its own.
fn rules(prod_rule_extra: &str) -> String {
    format!(
        r#"
[[rules]]
name = "to-prod"
source = "ci"
event = "release"
action = {{ type = "promote", target = "jfrog", to_repo = "docker-prod" }}
{prod_rule_extra}

[[rules]]
name = "to-staging"
source = "ci"
event = "test-passed"
action = {{ type = "promote", target = "jfrog", to_repo = "docker-staging" }}
{TOKENS}"#
    )
}

async fn send(app: &crate::harness::Client, event: &str) -> String {
    let body = format!(r#"{{"event":"{event}","repo":"dev","image":"app","tag":"1.0.0"}}"#);
    let v: Value = app.send("ci", body.as_bytes()).await.json().await.unwrap();
    v["jobs"][0]["id"].as_str().unwrap().to_string()
}

async fn approve(app: &TestApp, id: &str, token: &str) -> (u16, Value) {
    let r = app
        .post_json(&format!("/api/v1/jobs/{id}/approve"), token, &json!({}))
        .await;
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn a_protection_holds_a_rule_that_has_no_approval_of_its_own() {
    let app = spawn_app(&format!("{}{PROD}", rules(""))).await;
    app.upstream_answers(200).await;
    let prod = send(&app, "release").await;
    let staging = send(&app, "test-passed").await;
    assert_eq!(app.wait_final(&staging).await["state"], "succeeded");
    let job = app.job(&prod).await;
    assert_eq!(job["state"], "awaiting_approval", "{job:#}");
    assert_eq!(job["approval"]["protections"], json!(["prod"]));
    assert_eq!(job["approval"]["groups"], json!(["security"]));
    // Only the protection's approvers may approve.
    let (status, body) = approve(&app, &prod, RITA).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("not_an_approver"))
    );
    let (status, _) = approve(&app, &prod, SAM).await;
    assert_eq!(status, 200);
    assert_eq!(app.wait_final(&prod).await["state"], "succeeded");
    assert_eq!(posts(&app.upstream).await, 2);
    app.stop().await;
}

#[tokio::test]
async fn a_protected_rule_needs_its_own_approval_and_the_protections() {
    let own = r#"approval = { groups = ["release-managers"] }"#;
    let app = spawn_app(&format!("{}{PROD}", rules(own))).await;
    app.upstream_answers(200).await;
    let id = send(&app, "release").await;
    let (status, job) = approve(&app, &id, RITA).await;
    assert_eq!(status, 200);
    assert_eq!(
        job["state"], "awaiting_approval",
        "the rule's approval alone is not enough: {job:#}"
    );
    let (status, job) = approve(&app, &id, SAM).await;
    assert_eq!(status, 200);
    assert_eq!(job["state"], "queued", "{job:#}");
    let approvals: Vec<(&str, &str)> = job["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["by"].as_str().unwrap(), a["as"].as_str().unwrap()))
        .collect();
    assert_eq!(
        approvals,
        [("rita", "release-managers"), ("sam", "security")]
    );
    assert_eq!(app.wait_final(&id).await["state"], "succeeded");
    app.stop().await;
}

#[tokio::test]
async fn a_protections_soak_holds_every_job_to_its_destination() {
    let soak = r#"
[[protections]]
name = "prod-soak"
to_repos = ["docker-prod"]
soak = "1s"
"#;
    let app = spawn_app(&format!("{}{soak}", rules(""))).await;
    app.upstream_answers(200).await;
    let id = send(&app, "release").await;
    let job = app.job(&id).await;
    assert_eq!(job["state"], "queued");
    assert!(job["soak_until"].is_string(), "{job:#}");
    let job = app.wait_final(&id).await;
    let waited = crate::harness::soaked_ms(&job);
    assert!(waited >= 1000, "started {waited} ms after its trigger");
    app.stop().await;
}

/// A protection added by a reload (here: a restart on the new config) holds a job
/// planned before it that has not run yet; jobs that ran are not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protection_added_later_holds_jobs_not_yet_run() {
    let upstream = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(200))
        .mount(&upstream)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &upstream.uri(), &rules(""), "30s");
    let first = ChildApp::start_with(&config, free_port(), &["--no-workers"], Stdio::null()).await;
    let id = send(&first.client, "release").await;
    assert_eq!(first.client.job(&id).await["state"], "queued");
    drop(first);

    let config = write_config(
        dir.path(),
        &upstream.uri(),
        &format!("{}{PROD}", rules("")),
        "30s",
    );
    let second = ChildApp::start(&config, free_port()).await;
    let job = second
        .client
        .wait_for(&id, |j| j["state"] == "awaiting_approval")
        .await;
    assert_eq!(job["approval"]["protections"], json!(["prod"]));
    assert!(job["attempts"].as_array().unwrap().is_empty(), "{job:#}");
    let held = second
        .client
        .audit(&format!("job={id}&kind=job.awaiting_approval"))
        .await;
    assert_eq!(held.len(), 1);
    assert!(
        held[0]["message"]
            .as_str()
            .unwrap()
            .contains("protection prod"),
        "{held:#?}"
    );
    assert_eq!(posts(&upstream).await, 0);
    let r = second
        .client
        .post_json(&format!("/api/v1/jobs/{id}/approve"), SAM, &json!({}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(second.client.wait_final(&id).await["state"], "succeeded");
    assert_eq!(posts(&upstream).await, 1);
}

/// `simulate` shows the approval a protection adds and the freezes covering the
/// destination (SPEC §9).
#[tokio::test]
async fn simulate_shows_the_protections_and_freezes_that_would_apply() {
    let freeze = r#"
[[freezes]]
name = "year-end"
to_repos = ["docker-prod"]
from = "2026-12-20T00:00:00Z"
until = "2027-01-04T00:00:00Z"
"#;
    let app = spawn_app(&format!("{}{PROD}{freeze}", rules(""))).await;
    let body = json!({"event": "release", "repo": "dev", "image": "app", "tag": "1.0.0"});
    let r = app
        .post_json(
            "/api/v1/simulate",
            SAM,
            &json!({"source": "ci", "body": body}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let promotion = &v["events"][0]["promotions"][0];
    assert_eq!(promotion["rule"], "to-prod");
    assert_eq!(promotion["approval"]["protections"], json!(["prod"]));
    assert_eq!(promotion["freezes"], json!(["year-end"]));
    app.stop().await;
}
