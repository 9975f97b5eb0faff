//! SPEC §13 at the target side, played by an attacker: signed events whose values try
//! to leave their place in an upstream URL, and answers too large to hold.

use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::harness::{TestApp, spawn_app};

const ARTIFACTORY_RULES: &str = r#"
[[rules]]
name = "docker"
source = "ci"
event = "docker"
action = { type = "promote", target = "jfrog", to_repo = "docker-prod" }

[[rules]]
name = "npm"
source = "ci"
event = "npm"
action = { type = "copy", target = "jfrog", to_repo = "npm-release" }

[[rules]]
name = "build"
source = "ci"
event = "build"
action = { type = "build-promote", target = "jfrog", to_repo = "libs-release", status = "released" }

[[rules]]
name = "bundle"
source = "ci"
event = "bundle"
action = { type = "release-bundle-promote", target = "jfrog", environment = "PROD" }
"#;

/// Sends a signed `ci` event and waits for its one job to end.
async fn job_for(app: &TestApp, event: Value) -> Value {
    let answer: Value = app
        .send("ci", event.to_string().as_bytes())
        .await
        .json()
        .await
        .expect("a JSON answer");
    let id = answer["jobs"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("one job for {event}: {answer:#}"))
        .to_string();
    app.wait_final(&id).await
}

/// The job failed at its first attempt with `code`, permanently.
fn assert_failed_once(job: &Value, code: &str) {
    assert_eq!(job["state"], "failed", "{job:#}");
    assert_eq!(job["last_error"]["code"], code, "{job:#}");
    assert_eq!(job["attempts"].as_array().map(Vec::len), Some(1), "{job:#}");
}

#[tokio::test]
async fn hostile_artifactory_values_send_nothing() {
    let app = spawn_app(ARTIFACTORY_RULES).await;
    let cases = [
        json!({"event": "docker", "repo": "docker-dev", "image": "app/../../x", "tag": "1"}),
        json!({"event": "docker", "repo": "..", "image": "app", "tag": "1"}),
        json!({"event": "docker", "repo": "docker-dev", "image": "app", "tag": ".."}),
        json!({"event": "npm", "repo": "npm-dev", "path": "a/../../../api/security/users"}),
        json!({"event": "npm", "repo": "npm-dev", "path": "a//b.tgz"}),
        json!({"event": "npm", "repo": ".", "path": "a/b.tgz"}),
        json!({"event": "build", "build": {"name": "..", "number": "1"}}),
        json!({"event": "build", "build": {"name": "app", "number": "."}}),
        json!({"event": "bundle", "build": {"name": "app", "number": ".."}}),
    ];
    for event in cases {
        let job = job_for(&app, event.clone()).await;
        assert_failed_once(&job, "invalid_reference");
    }
    let received = app.upstream.received_requests().await.unwrap_or_default();
    assert_eq!(received.len(), 0, "{received:#?}");
    app.stop().await;
}

/// `npm-dev/a/b.tgz` exists with a checksum; `npm-release/a/b.tgz` does not.
async fn npm_source(app: &TestApp) {
    Mock::given(method("GET"))
        .and(path("/artifactory/api/storage/npm-dev/a/b.tgz"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"checksums": {"sha256": "ab"}})),
        )
        .mount(&app.upstream)
        .await;
    Mock::given(method("GET"))
        .and(path("/artifactory/api/storage/npm-release/a/b.tgz"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&app.upstream)
        .await;
}

#[tokio::test]
async fn an_artifactory_answer_past_1_mib_is_not_read() {
    let app = spawn_app(ARTIFACTORY_RULES).await;
    let huge = json!({"checksums": {"sha256": "ab"}, "pad": "x".repeat(2 << 20)});
    Mock::given(method("GET"))
        .and(path("/artifactory/api/storage/npm-dev/a/b.tgz"))
        .respond_with(ResponseTemplate::new(200).set_body_json(huge))
        .mount(&app.upstream)
        .await;
    let job = job_for(
        &app,
        json!({"event": "npm", "repo": "npm-dev", "path": "a/b.tgz"}),
    )
    .await;
    assert_failed_once(&job, "response_too_large");
    let message = job["last_error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("1 MiB"), "{message}");
    assert_eq!(crate::harness::posts(&app.upstream).await, 0);
    app.stop().await;
}

/// An error body is read up to 64 KiB and the rest dropped: a text past that bound
/// never reaches the job's error.
#[tokio::test]
async fn an_error_body_is_kept_only_to_64_kib() {
    let app = spawn_app(ARTIFACTORY_RULES).await;
    npm_source(&app).await;
    let body = format!("{}MARKER-PAST-THE-BOUND", " ".repeat(10 << 20));
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_string(body))
        .expect(1)
        .mount(&app.upstream)
        .await;
    let job = job_for(
        &app,
        json!({"event": "npm", "repo": "npm-dev", "path": "a/b.tgz"}),
    )
    .await;
    assert_failed_once(&job, "upstream_rejected");
    let message = job["last_error"]["message"].as_str().unwrap_or_default();
    assert!(!message.contains("MARKER"), "{message}");
    assert_eq!(job["attempts"][0]["upstream_status"], 400);
    app.stop().await;
}
