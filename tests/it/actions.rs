//! Every Artifactory action's exact request (path, query, headers, body) and its
//! documented error answers, against wiremock.

use serde_json::{Value, json};
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, Request, ResponseTemplate};

use crate::harness::{JFROG_TOKEN, TestApp, spawn_app};

const BEARER: &str = "Bearer jfrog-access-token";

/// A CI event naming the sample build (the one in the Artifactory fixtures).
const BUILD_PASSED: &[u8] =
    br#"{"event":"build-passed","build":{"name":"sample_build_name","number":"1"}}"#;

const RULES: &str = r#"
[[rules]]
name = "build-released"
source = "ci"
event = "build-passed"
action = { type = "build-promote", target = "jfrog", from_repo = "libs-staging", to_repo = "libs-release", status = "released", comment = "promoted by {{source}}", copy = true, dependencies = true, properties = { "release.by" = "gantry", "release.build" = ["{{build_name}}", "{{build_number}}"] } }

[[rules]]
name = "npm-copy"
source = "ci"
event = "npm-tested"
action = { type = "copy", target = "jfrog", to_repo = "npm-release", to_path = "{{path}}" }

[[rules]]
name = "maven-move"
source = "ci"
event = "maven-tested"
action = { type = "move", target = "jfrog", to_repo = "maven-release" }

[[rules]]
name = "bundle-to-prod"
source = "ci"
event = "bundle-approved"
action = { type = "release-bundle-promote", target = "jfrog", environment = "PROD", signing_key = "release-key", included_repositories = ["docker-prod", "npm-prod"] }

[[rules]]
name = "rehearse-copy"
source = "ci"
event = "rehearse"
dry_run = true
action = { type = "copy", target = "jfrog", to_repo = "generic-release" }

[[rules]]
name = "rehearse-docker"
source = "ci"
event = "rehearse-docker"
dry_run = true
action = { type = "promote", target = "jfrog", to_repo = "docker-prod" }
"#;

async fn job_for(app: &TestApp, source: &str, body: &[u8]) -> Value {
    let answer: Value = app.send(source, body).await.json().await.unwrap();
    let id = answer["jobs"][0]["id"]
        .as_str()
        .expect("one job")
        .to_string();
    app.wait_final(&id).await
}

/// The final state of the job an approved release bundle version produced.
async fn bundle_job(app: &TestApp, bundle: &str, version: &str) -> Value {
    let body = json!({"event": "bundle-approved", "build": {"name": bundle, "number": version}});
    job_for(app, "ci", body.to_string().as_bytes()).await
}

/// Asserts the job failed, with `text` in its last error's message.
fn assert_failed_with(job: &Value, text: &str) {
    assert_eq!(job["state"], "failed", "{job:#}");
    let message = job["last_error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(text), "{message}");
}

fn posts(requests: &[Request]) -> Vec<&Request> {
    requests
        .iter()
        .filter(|r| r.method == wiremock::http::Method::POST)
        .collect()
}

#[tokio::test]
async fn build_promote_sends_the_documented_request() {
    let app = spawn_app(RULES).await;
    Mock::given(method("POST"))
        .and(path("/artifactory/api/build/promote/sample_build_name/1"))
        .and(header("Authorization", BEARER))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"messages": []})))
        .expect(1)
        .mount(&app.upstream)
        .await;
    let job = job_for(&app, "ci", BUILD_PASSED).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(job["outcome"], "promoted");
    assert_eq!(job["action"]["type"], "build-promote");
    let received = app.upstream.received_requests().await.unwrap();
    let promote = posts(&received)[0];
    let body: Value = serde_json::from_slice(&promote.body).unwrap();
    let timestamp = body["timestamp"].as_str().unwrap().to_string();
    assert!(
        chrono::DateTime::parse_from_str(&timestamp, "%Y-%m-%dT%H:%M:%S%.3f%z").is_ok(),
        "{timestamp}"
    );
    assert_eq!(
        body,
        json!({
            "status": "released",
            "comment": "promoted by ci",
            "ciUser": "gantry",
            "timestamp": timestamp,
            "dryRun": false,
            "sourceRepo": "libs-staging",
            "targetRepo": "libs-release",
            "copy": true,
            "artifacts": true,
            "dependencies": true,
            "properties": {"release.build": ["sample_build_name", "1"], "release.by": ["gantry"]},
            "failFast": true
        })
    );
    // The build info was read first, to find an earlier identical promotion.
    assert!(
        received
            .iter()
            .any(|r| r.method == wiremock::http::Method::GET
                && r.url.path() == "/artifactory/api/build/sample_build_name/1")
    );
    app.stop().await;
}

#[tokio::test]
async fn build_names_and_numbers_are_path_escaped() {
    let app = spawn_app(RULES).await;
    Mock::given(method("POST"))
        .and(path(
            "/artifactory/api/build/promote/team%2Fapp%20ci/12%2F3",
        ))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&app.upstream)
        .await;
    let body = br#"{"event":"build-passed","build":{"name":"team/app ci","number":"12/3"}}"#;
    let job = job_for(&app, "ci", body).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    app.stop().await;
}

#[tokio::test]
async fn a_build_promote_answered_200_with_an_error_message_fails() {
    let app = spawn_app(RULES).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"messages": [
            {"level": "WARNING", "message": "No artifacts found in sourceRepo"},
            {"level": "ERROR", "message": "Failed to copy libs-staging:app-1.jar: target exists"}
        ]})))
        .expect(1)
        .mount(&app.upstream)
        .await;
    let job = job_for(&app, "ci", BUILD_PASSED).await;
    assert_eq!(job["state"], "failed");
    assert_eq!(job["attempts"].as_array().unwrap().len(), 1, "not retried");
    assert_eq!(job["attempts"][0]["upstream_status"], 200);
    assert_eq!(job["last_error"]["code"], "upstream_rejected");
    let message = job["last_error"]["message"].as_str().unwrap();
    assert!(
        message.contains("target exists") && !message.contains("No artifacts"),
        "{message}"
    );
    let id = job["id"].as_str().unwrap();
    let failed = app.audit(&format!("job={id}&kind=job.failed")).await;
    assert!(
        failed[0]["message"]
            .as_str()
            .unwrap()
            .contains("Failed to copy libs-staging:app-1.jar")
    );
    app.stop().await;
}

#[tokio::test]
async fn an_earlier_identical_build_promotion_is_a_noop() {
    let app = spawn_app(RULES).await;
    Mock::given(method("GET"))
        .and(path("/artifactory/api/build/sample_build_name/1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"buildInfo": {
            "name": "sample_build_name", "number": "1",
            "statuses": [{"status": "released", "repository": "libs-release", "timestamp": "2026-11-28T10:00:00.000+0000"}]
        }})))
        .mount(&app.upstream)
        .await;
    let job = job_for(&app, "ci", BUILD_PASSED).await;
    assert_eq!(
        (job["state"].as_str(), job["outcome"].as_str()),
        (Some("succeeded"), Some("noop"))
    );
    assert!(posts(&app.upstream.received_requests().await.unwrap()).is_empty());
    app.stop().await;
}

#[tokio::test]
async fn copy_and_move_send_the_documented_requests() {
    let app = spawn_app(RULES).await;
    Mock::given(method("POST"))
        .and(path("/artifactory/api/copy/npm-dev/@acme/ui/-/ui-1.2.0.tgz"))
        .and(query_param("to", "/npm-release/@acme/ui/-/ui-1.2.0.tgz"))
        .and(query_param("failFast", "1"))
        .and(header("Authorization", BEARER))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"messages": [
            {"level": "INFO", "message": "copying npm-dev:@acme/ui/-/ui-1.2.0.tgz to npm-release:@acme/ui/-/ui-1.2.0.tgz completed successfully, 1 artifacts and 0 folders were copied"}
        ]})))
        .expect(1)
        .mount(&app.upstream)
        .await;
    Mock::given(method("POST"))
        .and(path(
            "/artifactory/api/move/maven-dev/org/acme/app/1.0/app-1.0.jar",
        ))
        .and(query_param(
            "to",
            "/maven-release/org/acme/app/1.0/app-1.0.jar",
        ))
        .and(query_param("failFast", "1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"messages": []})))
        .expect(1)
        .mount(&app.upstream)
        .await;
    let npm = job_for(
        &app,
        "ci",
        br#"{"event":"npm-tested","repo":"npm-dev","path":"@acme/ui/-/ui-1.2.0.tgz"}"#,
    )
    .await;
    assert_eq!(npm["state"], "succeeded", "{npm:#}");
    assert_eq!(npm["action"]["type"], "copy");
    assert_eq!(
        npm["action"]["to"],
        json!({"repo": "npm-release", "path": "@acme/ui/-/ui-1.2.0.tgz"})
    );
    let maven = job_for(
        &app,
        "ci",
        br#"{"event":"maven-tested","repo":"maven-dev","path":"org/acme/app/1.0/app-1.0.jar"}"#,
    )
    .await;
    assert_eq!(maven["state"], "succeeded", "{maven:#}");
    assert_eq!(maven["action"]["type"], "move");
    // Neither sent a dry run.
    let received = app.upstream.received_requests().await.unwrap();
    assert!(
        posts(&received)
            .iter()
            .all(|r| !r.url.query().unwrap_or("").contains("dry"))
    );
    app.stop().await;
}

#[tokio::test]
async fn copy_failures_keep_artifactorys_own_words() {
    let app = spawn_app(RULES).await;
    Mock::given(method("POST"))
        .and(path("/artifactory/api/copy/npm-dev/a.tgz"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"messages": [
            {"level": "ERROR", "message": "Cannot copy npm-dev:a.tgz: target npm-release is not a local repository"}
        ]})))
        .mount(&app.upstream)
        .await;
    Mock::given(method("POST"))
        .and(path("/artifactory/api/copy/npm-dev/b.tgz"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"errors": [
            {"status": 404, "message": "Could not find item npm-dev:b.tgz"}
        ]})))
        .mount(&app.upstream)
        .await;
    Mock::given(method("POST"))
        .and(path("/artifactory/api/copy/npm-dev/c.tgz"))
        .respond_with(ResponseTemplate::new(403).set_body_json(json!({"errors": [
            {"status": 403, "message": "User deployer lacks DEPLOY on npm-release"}
        ]})))
        .mount(&app.upstream)
        .await;
    for (file, status, words) in [
        ("a.tgz", 200, "is not a local repository"),
        ("b.tgz", 404, "Could not find item npm-dev:b.tgz"),
        ("c.tgz", 403, "lacks DEPLOY on npm-release"),
    ] {
        let body = format!(r#"{{"event":"npm-tested","repo":"npm-dev","path":"{file}"}}"#);
        let job = job_for(&app, "ci", body.as_bytes()).await;
        assert_eq!(job["state"], "failed", "{file}");
        assert_eq!(
            job["attempts"].as_array().unwrap().len(),
            1,
            "{file}: not retried"
        );
        assert_eq!(job["attempts"][0]["upstream_status"], status);
        assert_eq!(job["last_error"]["code"], "upstream_rejected");
        let message = job["last_error"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{file}: {message}");
    }
    app.stop().await;
}

#[tokio::test]
async fn an_async_release_bundle_promotion_is_polled_to_completion() {
    let app = spawn_app(RULES).await;
    Mock::given(method("POST"))
        .and(path(
            "/lifecycle/api/v2/promotion/records/Commons-Bundle/1.0.0",
        ))
        .and(query_param("async", "true"))
        .and(header("X-JFrog-Signing-Key-Name", "release-key"))
        .and(header(
            "Authorization",
            format!("Bearer {JFROG_TOKEN}").as_str(),
        ))
        .and(body_json(
            json!({"environment": "PROD", "included_repository_keys": ["docker-prod", "npm-prod"]}),
        ))
        .respond_with(ResponseTemplate::new(202).set_body_json(json!({
            "repository_key": "release-bundles-v2", "release_bundle_name": "Commons-Bundle",
            "release_bundle_version": "1.0.0", "environment": "PROD",
            "created": "2026-11-28T12:00:00.000Z", "created_millis": 1795867200000i64
        })))
        .expect(1)
        .mount(&app.upstream)
        .await;
    let status = "/lifecycle/api/v2/promotion/statuses/Commons-Bundle/1.0.0/1795867200000";
    Mock::given(method("GET"))
        .and(path(status))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"status": "PROCESSING"})))
        .up_to_n_times(2)
        .with_priority(1)
        .expect(2)
        .mount(&app.upstream)
        .await;
    Mock::given(method("GET"))
        .and(path(status))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"status": "COMPLETED"})))
        .expect(1)
        .mount(&app.upstream)
        .await;
    let job = bundle_job(&app, "Commons-Bundle", "1.0.0").await;
    assert_eq!(
        (job["state"].as_str(), job["outcome"].as_str()),
        (Some("succeeded"), Some("promoted")),
        "{job:#}"
    );
    assert_eq!(job["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(job["attempts"][0]["upstream_status"], 202);
    app.stop().await;
}

#[tokio::test]
async fn a_release_bundle_promotion_created_synchronously_needs_no_polling() {
    let app = spawn_app(RULES).await;
    Mock::given(method("POST"))
        .and(path("/lifecycle/api/v2/promotion/records/b/2"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"environment": "PROD"})))
        .expect(1)
        .mount(&app.upstream)
        .await;
    let job = bundle_job(&app, "b", "2").await;
    assert_eq!(job["state"], "succeeded");
    let received = app.upstream.received_requests().await.unwrap();
    assert!(
        received
            .iter()
            .all(|r| !r.url.path().contains("/statuses/"))
    );
    app.stop().await;
}

#[tokio::test]
async fn a_failed_async_release_bundle_promotion_fails_the_job_with_its_messages() {
    let app = spawn_app(RULES).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(202).set_body_json(json!({"created_millis": 7})))
        .expect(1)
        .mount(&app.upstream)
        .await;
    Mock::given(method("GET"))
        .and(path("/lifecycle/api/v2/promotion/statuses/b/3/7"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"status": "FAILED", "messages": [
            {"source": "System", "text": "Target artifact already exists: npm-prod/a.tgz", "created": "2026-11-28T12:00:00.000Z"}
        ]})))
        .mount(&app.upstream)
        .await;
    let job = bundle_job(&app, "b", "3").await;
    assert_failed_with(&job, "Target artifact already exists: npm-prod/a.tgz");
    app.stop().await;
}

#[tokio::test]
async fn release_bundle_errors_and_earlier_promotions() {
    let app = spawn_app(RULES).await;
    // Version 4 was promoted to PROD before: a noop. Version 5 is being promoted:
    // wait for that promotion instead of starting another.
    Mock::given(method("GET"))
        .and(path("/lifecycle/api/v2/promotion/records/b/4"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"promotions": [
                {"status": "FAILED", "environment": "PROD", "created_millis": 1},
                {"status": "COMPLETED", "environment": "PROD", "created_millis": 2}
            ]})),
        )
        .mount(&app.upstream)
        .await;
    Mock::given(method("GET"))
        .and(path("/lifecycle/api/v2/promotion/records/b/5"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"promotions": [
                {"status": "PROCESSING", "environment": "PROD", "created_millis": 9}
            ]})),
        )
        .mount(&app.upstream)
        .await;
    Mock::given(method("GET"))
        .and(path("/lifecycle/api/v2/promotion/statuses/b/5/9"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"status": "COMPLETED"})))
        .mount(&app.upstream)
        .await;
    Mock::given(method("POST"))
        .and(path("/lifecycle/api/v2/promotion/records/b/6"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"errors": [
            {"message": "Release Bundle version b/6 has not been signed"}
        ]})))
        .mount(&app.upstream)
        .await;
    let noop = bundle_job(&app, "b", "4").await;
    assert_eq!(noop["outcome"], "noop", "{noop:#}");
    let waited = bundle_job(&app, "b", "5").await;
    assert_eq!(
        (waited["state"].as_str(), waited["outcome"].as_str()),
        (Some("succeeded"), Some("promoted"))
    );
    let refused = bundle_job(&app, "b", "6").await;
    assert_failed_with(&refused, "has not been signed");
    assert_eq!(
        posts(&app.upstream.received_requests().await.unwrap()).len(),
        1,
        "only version 6 was posted"
    );
    app.stop().await;
}

#[tokio::test]
async fn dry_runs_ask_the_upstream_to_rehearse_or_do_not_ask_at_all() {
    let app = spawn_app(RULES).await;
    Mock::given(method("POST"))
        .and(path("/artifactory/api/copy/generic-dev/notes.txt"))
        .and(query_param("to", "/generic-release/notes.txt"))
        .and(query_param("dry", "1"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"messages": [{"level": "INFO", "message": "dry run ok"}]})),
        )
        .expect(1)
        .mount(&app.upstream)
        .await;
    let copy = job_for(
        &app,
        "ci",
        br#"{"event":"rehearse","repo":"generic-dev","path":"notes.txt"}"#,
    )
    .await;
    assert_eq!(
        (copy["state"].as_str(), copy["outcome"].as_str()),
        (Some("succeeded"), Some("dry_run")),
        "{copy:#}"
    );
    assert_eq!(copy["action"]["dry_run"], true);
    // The docker promote API has no dry-run switch: nothing is posted at all.
    let docker = job_for(
        &app,
        "ci",
        br#"{"event":"rehearse-docker","repo":"docker-dev","image":"app","tag":"1"}"#,
    )
    .await;
    assert_eq!(docker["outcome"], "dry_run");
    let received = app.upstream.received_requests().await.unwrap();
    assert_eq!(
        posts(&received).len(),
        1,
        "only the copy rehearsal was posted"
    );
    // A rehearsal starts no chain.
    let internal = app.audit("kind=event.received").await;
    assert!(
        internal.iter().all(|r| r["actor"] != "gantry"),
        "{internal:#?}"
    );
    app.stop().await;
}
