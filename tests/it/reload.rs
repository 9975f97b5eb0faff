//! Live reload (SPEC §12) of the real binary: SIGHUP and `POST /api/v1/config/reload`
//! swap the config in with no restart and no refused request; an invalid config
//! changes nothing and says why; a rotated secret counts from the next request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use wiremock::MockServer;

use crate::harness::{
    ChildApp, Client, OPS_TOKEN, VIEWER_TOKEN, free_port, hmac_hex, write_config,
};

const TO_STAGING: &str = r#"
[[rules]]
name = "to-staging"
source = "ci"
event = "test-passed"
match = { repo = "dev" }
action = { type = "promote", target = "jfrog", to_repo = "staging" }
"#;

const TO_PROD: &str = r#"
[[rules]]
name = "to-prod"
source = "ci"
event = "test-passed"
match = { repo = "qa" }
action = { type = "promote", target = "jfrog", to_repo = "prod" }
"#;

fn event(repo: &str, n: usize) -> Vec<u8> {
    format!(r#"{{"event":"test-passed","repo":"{repo}","image":"app","tag":"1.{n}"}}"#).into_bytes()
}

async fn config_state(client: &Client) -> Value {
    let r = client.get("/api/v1/config", Some(VIEWER_TOKEN)).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn audit(client: &Client, kind: &str) -> Vec<Value> {
    let v: Value = client
        .get(&format!("/api/v1/audit?kind={kind}"), Some(VIEWER_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    v["records"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_added_by_sighup_matches_the_next_event_while_a_sender_keeps_posting() {
    let upstream = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &upstream.uri(), TO_STAGING, "30s");
    let app = ChildApp::start(&path, free_port()).await;
    let before = config_state(&app.client).await;
    assert_eq!(before["generation"], 1);
    assert!(before["hash"].as_str().unwrap().starts_with("sha256:"));

    // A sender posting throughout the swap: every answer must be 202.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let sender = {
        let (stop, sent) = (stop.clone(), sent.clone());
        let client = Client::new(app.client.base.clone());
        tokio::spawn(async move {
            let mut refused = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let status = client.send("ci", &event("dev", n)).await.status().as_u16();
                if status != 202 {
                    refused.push(status);
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            refused
        })
    };
    let wait_for = |k: usize| {
        let sent = sent.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while sent.load(Ordering::Relaxed) < k {
                assert!(Instant::now() < deadline, "the sender stalled");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    wait_for(20).await;
    // Not yet a rule for qa.
    let r: Value = app
        .client
        .send("ci", &event("qa", 0))
        .await
        .json()
        .await
        .unwrap();
    assert!(r["jobs"].as_array().unwrap().is_empty(), "{r}");

    write_config(
        dir.path(),
        &upstream.uri(),
        &format!("{TO_STAGING}{TO_PROD}"),
        "30s",
    );
    let at_hup = sent.load(Ordering::Relaxed);
    app.hangup();
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let now = config_state(&app.client).await;
        if now["generation"] == 2 {
            break now;
        }
        assert!(Instant::now() < deadline, "no reload: {now}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_ne!(after["hash"], before["hash"]);
    assert_eq!(after["ignored_until_restart"], serde_json::json!([]));
    wait_for(at_hup + 20).await;
    stop.store(true, Ordering::Relaxed);
    let refused = sender.await.unwrap();
    assert!(refused.is_empty(), "refused during the swap: {refused:?}");
    assert!(sent.load(Ordering::Relaxed) >= at_hup + 20);

    // The next event matches the new rule.
    let r: Value = app
        .client
        .send("ci", &event("qa", 1))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["jobs"][0]["rule"], "to-prod", "{r}");
    let reloaded = audit(&app.client, "config.reloaded").await;
    assert_eq!(reloaded.len(), 1);
    assert_eq!(reloaded[0]["actor"], "sighup");
    let hash = after["hash"].as_str().unwrap();
    assert!(
        reloaded[0]["message"].as_str().unwrap().contains(hash),
        "{reloaded:?}"
    );
    let metrics = app.client.get("/metrics", None).await.text().await.unwrap();
    assert!(metrics.contains("gantry_config_generation 2"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_changes_nothing_and_the_answer_lists_every_problem() {
    let upstream = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &upstream.uri(), TO_STAGING, "30s");
    let app = ChildApp::start(&path, free_port()).await;
    let before = config_state(&app.client).await;
    let broken = r#"
[[rules]]
name = "to-nowhere"
source = "ci"
event = "test-passed"
action = { type = "promote", target = "no-such-target", to_repo = "prod" }

[[rules]]
name = "from-nowhere"
source = "no-such-source"
event = "test-passed"
action = { type = "promote", target = "jfrog", to_repo = "prod" }
"#;
    write_config(
        dir.path(),
        &upstream.uri(),
        &format!("{TO_STAGING}{broken}"),
        "30s",
    );
    // A read token may not reload.
    let r = app
        .client
        .post("/api/v1/config/reload", Some(VIEWER_TOKEN))
        .await;
    assert_eq!(r.status(), 403);
    let r = app
        .client
        .post("/api/v1/config/reload", Some(OPS_TOKEN))
        .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_config");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("rules[to-nowhere]") && message.contains("no-such-target"),
        "{message}"
    );
    assert!(
        message.contains("rules[from-nowhere]") && message.contains("no-such-source"),
        "{message}"
    );
    // Nothing changed: the same generation, and the old rules still match.
    assert_eq!(config_state(&app.client).await, before);
    let r: Value = app
        .client
        .send("ci", &event("dev", 1))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["jobs"][0]["rule"], "to-staging");
    let failed = audit(&app.client, "config.reload_failed").await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["actor"], "ops");
    assert!(
        failed[0]["message"]
            .as_str()
            .unwrap()
            .contains("no-such-target")
    );
    // Restart-only settings are named, and keep their running values.
    write_config(dir.path(), &upstream.uri(), TO_STAGING, "45s");
    let r = app
        .client
        .post("/api/v1/config/reload", Some(OPS_TOKEN))
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["generation"], 2);
    assert_eq!(
        v["ignored_until_restart"],
        serde_json::json!(["worker.lease"])
    );
    assert_eq!(
        config_state(&app.client).await["ignored_until_restart"],
        serde_json::json!(["worker.lease"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_source_secret_counts_from_the_next_request() {
    let upstream = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("deploy.secret");
    std::fs::write(&secret, "first-secret").unwrap();
    let source = format!(
        r#"
[[sources]]
name = "deploy"
format = "generic"
verify = {{ scheme = "hmac-sha256", header = "X-Signature", prefix = "sha256=", secrets = ["file:{}"] }}
"#,
        secret.display()
    );
    let path = write_config(dir.path(), &upstream.uri(), &source, "30s");
    let app = ChildApp::start(&path, free_port()).await;
    let post = |key: &'static str, n: usize| {
        let client = &app.client;
        async move {
            let body = event("dev", n);
            let sig = format!("sha256={}", hmac_hex(key, &body));
            client
                .post_hook("deploy", &body, &[("X-Signature", &sig)])
                .await
                .status()
                .as_u16()
        }
    };
    assert_eq!(post("first-secret", 1).await, 202);
    assert_eq!(post("second-secret", 2).await, 401);
    std::fs::write(&secret, "second-secret").unwrap();
    let r = app
        .client
        .post("/api/v1/config/reload", Some(OPS_TOKEN))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(post("second-secret", 3).await, 202);
    assert_eq!(post("first-secret", 4).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_removed_by_a_reload_leaves_its_awaiting_job_visible_and_approvable() {
    let upstream = MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(200))
        .mount(&upstream)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let gated = format!("{TO_PROD}approval = {{ count = 1 }}\n");
    let path = write_config(dir.path(), &upstream.uri(), &gated, "30s");
    let app = ChildApp::start(&path, free_port()).await;
    let r: Value = app
        .client
        .send("ci", &event("qa", 1))
        .await
        .json()
        .await
        .unwrap();
    let id = r["jobs"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(app.client.job(&id).await["state"], "awaiting_approval");

    write_config(dir.path(), &upstream.uri(), TO_STAGING, "30s");
    let r = app
        .client
        .post("/api/v1/config/reload", Some(OPS_TOKEN))
        .await;
    assert_eq!(r.status(), 200);
    // Still there, still awaiting: a reload cancels nothing.
    assert_eq!(app.client.job(&id).await["state"], "awaiting_approval");
    let r = app
        .client
        .post_json(
            &format!("/api/v1/jobs/{id}/approve"),
            OPS_TOKEN,
            &serde_json::json!({"comment": "after the reload"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let done = app.client.wait_final(&id).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["action"]["to"]["repo"], "prod");
    let promotes: Vec<_> = upstream
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.method.as_str() == "POST")
        .collect();
    assert_eq!(promotes.len(), 1, "promoted once");
    assert!(
        promotes[0]
            .url
            .path()
            .ends_with("/api/docker/qa/v2/promote"),
        "with the action it was planned with: {}",
        promotes[0].url
    );
}
