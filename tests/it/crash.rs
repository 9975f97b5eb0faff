//! A worker killed mid-attempt: its job is taken over once the lease expires.

use std::time::Duration;

use serde_json::Value;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::harness::{ChildApp, free_port, write_config};

#[tokio::test]
async fn a_job_whose_worker_died_is_retaken_after_its_lease_expires() {
    let upstream = MockServer::start().await;
    // The first promote hangs long enough for the process to be killed under it.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(30)))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&upstream)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&upstream)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &upstream.uri(),
        r#"
[[rules]]
name = "r"
source = "ci"
event = "test-passed"
action = { type = "promote", target = "jfrog", to_repo = "staging" }
"#,
        "1s",
    );

    let first = ChildApp::start(&config, free_port()).await;
    let body = br#"{"event":"test-passed","repo":"dev","image":"app","tag":"1.0.0"}"#;
    let answer: Value = first.client.send("ci", body).await.json().await.unwrap();
    let id = answer["jobs"][0]["id"].as_str().unwrap().to_string();
    first
        .client
        .wait_for(&id, |j| j["state"] == "running")
        .await;
    // Wait until the request is at the upstream, then kill the process under it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while upstream.received_requests().await.unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill();

    let second = ChildApp::start(&config, free_port()).await;
    let job = second.client.wait_final(&id).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{job:#}");
    assert_eq!(attempts[0]["error"]["code"], "lease_expired");
    assert_eq!(attempts[1]["n"], 2);
    assert_eq!(attempts[1]["upstream_status"], 200);
    assert_eq!(upstream.received_requests().await.unwrap().len(), 2);
}
