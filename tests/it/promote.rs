//! From a signed event to the exact request Artifactory receives.

use serde_json::{Value, json};
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::harness::{JFROG_TOKEN, fixture, posts, spawn_app};

const TESTED_TO_STAGING: &str = r#"
[[rules]]
name = "tested-to-staging"
source = "ci"
event = "test-passed"
match = { repo = "docker-dev", image = "re:^team-a/(?P<app>[^/]+)$", tag = "semver:>=1.0.0" }
action = { type = "promote", target = "jfrog", to_repo = "docker-staging", to_image = "release/{{app}}", to_tag = "{{tag}}-staged" }
"#;

fn promote_path(repo: &str) -> String {
    format!("/artifactory/api/docker/{repo}/v2/promote")
}

async fn accepted_job(resp: reqwest::Response) -> String {
    assert_eq!(resp.status(), 202);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["duplicate"], false);
    let jobs = v["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{v}");
    jobs[0]["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn generic_event_promotes_with_templates_and_named_groups() {
    let app = spawn_app(TESTED_TO_STAGING).await;
    Mock::given(method("POST"))
        .and(path(promote_path("docker-dev")))
        .and(header(
            "Authorization",
            format!("Bearer {JFROG_TOKEN}").as_str(),
        ))
        .and(header("Content-Type", "application/json"))
        .and(body_json(json!({
            "targetRepo": "docker-staging",
            "dockerRepository": "team-a/api",
            "targetDockerRepository": "release/api",
            "tag": "1.4.2",
            "targetTag": "1.4.2-staged",
            "copy": true
        })))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&app.upstream)
        .await;

    let body = br#"{"event":"test-passed","repo":"docker-dev","image":"team-a/api","tag":"1.4.2","digest":"sha256:0123"}"#;
    let id = accepted_job(app.send("ci", body).await).await;
    let job = app.wait_final(&id).await;

    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["outcome"], "promoted");
    assert_eq!(job["rule"], "tested-to-staging");
    assert_eq!(job["target"], "jfrog");
    assert_eq!(job["chain_depth"], 0);
    assert_eq!(job["parent_job_id"], Value::Null);
    assert_eq!(job["last_error"], Value::Null);
    assert_eq!(
        job["action"],
        json!({
            "type": "promote",
            "from": {"repo": "docker-dev", "image": "team-a/api", "tag": "1.4.2", "digest": "sha256:0123"},
            "to": {"repo": "docker-staging", "image": "release/api", "tag": "1.4.2-staged", "digest": "sha256:0123"},
            "copy": true,
            "dry_run": false
        })
    );
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["n"], 1);
    assert_eq!(attempts[0]["upstream_status"], 200);
    assert_eq!(attempts[0]["error"], Value::Null);

    // Every step is on the record, in order.
    let kinds: Vec<String> = app
        .audit(&format!("job={id}"))
        .await
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["job.created", "job.attempt", "job.succeeded"]);
    let received = app.audit("kind=event.received").await;
    assert_eq!(
        received.len(),
        2,
        "the webhook and the promotion's own event"
    );
    assert_eq!(received[0]["actor"], "ci");
    assert_eq!(received[0]["image"], "team-a/api");
    assert_eq!(received[0]["digest"], "sha256:0123");
    assert_eq!(received[1]["actor"], "gantry");
    assert_eq!(
        (
            received[1]["repo"].as_str(),
            received[1]["image"].as_str(),
            received[1]["tag"].as_str()
        ),
        (
            Some("docker-staging"),
            Some("release/api"),
            Some("1.4.2-staged")
        )
    );
    app.stop().await;
}

#[tokio::test]
async fn artifactory_docker_pushed_is_moved_with_the_namespaced_image() {
    let app = spawn_app(
        r#"
[[rules]]
name = "pushed-to-qa"
source = "artifactory"
event = "docker.pushed"
match = { repo = "docker-myorg-local", image = "myorg-tcd/*" }
action = { type = "promote", target = "jfrog", to_repo = "docker-myorg-qa", copy = false }
"#,
    )
    .await;
    Mock::given(method("POST"))
        .and(path(promote_path("docker-myorg-local")))
        .and(header(
            "Authorization",
            format!("Bearer {JFROG_TOKEN}").as_str(),
        ))
        .and(body_json(json!({
            "targetRepo": "docker-myorg-qa",
            "dockerRepository": "myorg-tcd/myorg-tcd-frontend",
            "targetDockerRepository": "myorg-tcd/myorg-tcd-frontend",
            "tag": "1.2.9",
            "targetTag": "1.2.9",
            "copy": false
        })))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&app.upstream)
        .await;

    let id = accepted_job(
        app.send("artifactory", &fixture("artifactory-docker-pushed.json"))
            .await,
    )
    .await;
    let job = app.wait_final(&id).await;
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["action"]["copy"], false);
    assert_eq!(
        job["action"]["from"]["digest"],
        "sha256:b416d974092956b84d9f333ec6efcd579533a0ee07195de6257c315a67a32202"
    );
    app.stop().await;
}

#[tokio::test]
async fn api_key_and_basic_auth_reach_the_upstream() {
    let app = spawn_app(
        r#"
[[targets]]
name = "jfrog-key"
kind = "artifactory"
url = "{upstream}"
api_key = "the-api-key"

[[targets]]
name = "jfrog-basic"
kind = "artifactory"
url = "{upstream}/"
username = "deployer"
password = "pa55"

[[rules]]
name = "by-key"
source = "ci"
event = "key"
action = { type = "promote", target = "jfrog-key", to_repo = "k" }

[[rules]]
name = "by-basic"
source = "ci"
event = "basic"
action = { type = "promote", target = "jfrog-basic", to_repo = "b" }
"#,
    )
    .await;
    Mock::given(method("POST"))
        .and(path(promote_path("dev")))
        .and(header("X-JFrog-Art-Api", "the-api-key"))
        .and(body_json(
            json!({"targetRepo": "k", "dockerRepository": "app",
            "targetDockerRepository": "app", "tag": "1", "targetTag": "1", "copy": true}),
        ))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&app.upstream)
        .await;
    Mock::given(method("POST"))
        .and(path(promote_path("dev")))
        // base64("deployer:pa55")
        .and(header("Authorization", "Basic ZGVwbG95ZXI6cGE1NQ=="))
        .and(body_json(
            json!({"targetRepo": "b", "dockerRepository": "app",
            "targetDockerRepository": "app", "tag": "1", "targetTag": "1", "copy": true}),
        ))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&app.upstream)
        .await;
    for kind in ["key", "basic"] {
        let body = format!(r#"{{"event":"{kind}","repo":"dev","image":"app","tag":"1"}}"#);
        let id = accepted_job(app.send("ci", body.as_bytes()).await).await;
        assert_eq!(app.wait_final(&id).await["state"], "succeeded");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_server_error_is_retried_until_it_succeeds() {
    let app = spawn_app(TESTED_TO_STAGING).await;
    Mock::given(method("POST"))
        .and(path(promote_path("docker-dev")))
        .respond_with(ResponseTemplate::new(500).set_body_string("database is locked"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&app.upstream)
        .await;
    Mock::given(method("POST"))
        .and(path(promote_path("docker-dev")))
        .respond_with(ResponseTemplate::new(200))
        .mount(&app.upstream)
        .await;

    let body = br#"{"event":"test-passed","repo":"docker-dev","image":"team-a/api","tag":"1.0.0"}"#;
    let id = accepted_job(app.send("ci", body).await).await;
    let job = app.wait_final(&id).await;
    assert_eq!(job["state"], "succeeded");
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{job:#}");
    assert_eq!(attempts[0]["upstream_status"], 500);
    assert_eq!(attempts[0]["error"]["code"], "upstream_unavailable");
    assert!(
        attempts[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("database is locked")
    );
    assert_eq!(attempts[1]["upstream_status"], 200);
    assert_eq!(posts(&app.upstream).await, 2);

    let kinds: Vec<String> = app
        .audit(&format!("job={id}"))
        .await
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        [
            "job.created",
            "job.attempt",
            "job.retrying",
            "job.attempt",
            "job.succeeded"
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn a_client_error_fails_at_once_with_the_upstream_message() {
    let app = spawn_app(TESTED_TO_STAGING).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({
            "errors": [{"status": 404, "message": "Unable to find tag file at 'team-a/api/1.0.0/manifest.json'"}]
        })))
        .expect(1)
        .mount(&app.upstream)
        .await;
    let body = br#"{"event":"test-passed","repo":"docker-dev","image":"team-a/api","tag":"1.0.0"}"#;
    let id = accepted_job(app.send("ci", body).await).await;
    let job = app.wait_final(&id).await;
    assert_eq!(job["state"], "failed");
    assert_eq!(job["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(job["last_error"]["code"], "upstream_rejected");
    let message = job["last_error"]["message"].as_str().unwrap();
    assert!(message.contains("404"), "{message}");
    assert!(message.contains("Unable to find tag file"), "{message}");

    let failed = app.audit(&format!("job={id}&kind=job.failed")).await;
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0]["message"]
            .as_str()
            .unwrap()
            .contains("Unable to find tag file")
    );
    let attempt = app.audit(&format!("job={id}&kind=job.attempt")).await;
    assert_eq!(attempt[0]["upstream_status"], 404);
    app.stop().await;
}

#[tokio::test]
async fn retryable_failures_stop_at_max_attempts() {
    let app = spawn_app(TESTED_TO_STAGING).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .expect(4)
        .mount(&app.upstream)
        .await;
    let body = br#"{"event":"test-passed","repo":"docker-dev","image":"team-a/api","tag":"1.0.0"}"#;
    let id = accepted_job(app.send("ci", body).await).await;
    let job = app.wait_final(&id).await;
    assert_eq!(job["state"], "failed");
    assert_eq!(job["attempts"].as_array().unwrap().len(), 4);
    assert_eq!(job["last_error"]["code"], "upstream_unavailable");
    assert!(
        job["last_error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("gave up after 4 attempts")
    );
    app.stop().await;
}

#[tokio::test]
async fn an_undefined_template_value_fails_the_job_without_calling_upstream() {
    let app = spawn_app(
        r#"
[[rules]]
name = "by-digest"
source = "ci"
event = "test-passed"
action = { type = "promote", target = "jfrog", to_repo = "prod", to_tag = "{{digest}}" }
"#,
    )
    .await;
    let body = br#"{"event":"test-passed","repo":"dev","image":"app","tag":"1.0.0"}"#;
    let id = accepted_job(app.send("ci", body).await).await;
    let job = app.job(&id).await;
    assert_eq!(job["state"], "failed");
    assert_eq!(job["action"], Value::Null);
    assert_eq!(job["last_error"]["code"], "template_error");
    assert_eq!(job["last_error"]["message"], "the event has no digest");
    assert!(app.upstream.received_requests().await.unwrap().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_github_release_promotes_from_the_rules_from_repo() {
    use crate::harness::{GH_SECRET, MORE_SOURCES, hmac_hex};
    let app = spawn_app(&format!(
        r#"{MORE_SOURCES}
[[rules]]
name = "released"
source = "github"
event = "release.published"
match = {{ tag = "semver:>=1.0.0" }}
action = {{ type = "promote", target = "jfrog", from_repo = "docker-staging", to_repo = "docker-prod", to_image = "acme/{{{{image}}}}" }}
"#
    ))
    .await;
    Mock::given(method("POST"))
        .and(path(promote_path("docker-staging")))
        .and(body_json(json!({
            "targetRepo": "docker-prod",
            "dockerRepository": "api",
            "targetDockerRepository": "acme/api",
            "tag": "v1.2.0",
            "targetTag": "v1.2.0",
            "copy": true
        })))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&app.upstream)
        .await;
    let body =
        br#"{"action":"published","release":{"tag_name":"v1.2.0"},"repository":{"name":"api"}}"#;
    let sig = format!("sha256={}", hmac_hex(GH_SECRET, body));
    let resp = app
        .post_hook(
            "github",
            body,
            &[
                ("X-Hub-Signature-256", &sig),
                ("X-GitHub-Event", "release"),
                ("X-GitHub-Delivery", "d-1"),
            ],
        )
        .await;
    let id = accepted_job(resp).await;
    assert_eq!(app.wait_final(&id).await["state"], "succeeded");
    app.stop().await;
}
