//! Promotions under fault: every injected failure ends with the image promoted
//! exactly once (effects counted at the fake) and the job succeeded; a moved source
//! tag fails the job; a circuit breaker holds jobs instead of burning attempts.

use std::time::Duration;

use serde_json::Value;

use crate::fake_artifactory::{FakeArtifactory, Fault};
use crate::harness::{TestApp, spawn_app};

const DIGEST: &str = "sha256:aaaa";

/// A config with the fake as target `fake` (300 ms timeout) and one rule.
fn rules(fake: &FakeArtifactory, copy: bool, extra_target: &str, retry: &str) -> String {
    format!(
        r#"
[[targets]]
name = "fake"
kind = "artifactory"
url = "{}"
timeout = "300ms"
{extra_target}

[[rules]]
name = "dev-to-staging"
source = "ci"
event = "test-passed"
action = {{ type = "promote", target = "fake", to_repo = "staging", copy = {copy} }}
{retry}
"#,
        fake.uri()
    )
}

async fn app_with_fake(copy: bool) -> (TestApp, FakeArtifactory) {
    let fake = FakeArtifactory::start().await;
    fake.put("dev", "app", "1.0.0", DIGEST);
    let app = spawn_app(&rules(&fake, copy, "", "retry = { max_backoff = \"2s\" }")).await;
    (app, fake)
}

async fn promote(app: &TestApp, tag: &str, digest: &str) -> Value {
    let body = format!(
        r#"{{"event":"test-passed","repo":"dev","image":"app","tag":"{tag}","digest":"{digest}"}}"#
    );
    let answer: Value = app.send("ci", body.as_bytes()).await.json().await.unwrap();
    let id = answer["jobs"][0]["id"].as_str().unwrap().to_string();
    app.wait_final(&id).await
}

fn millis(t: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(t.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

/// Runs one promotion through `faults` and checks the exactly-once outcome.
async fn survives(faults: Vec<Fault>, copy: bool) -> Value {
    let (app, fake) = app_with_fake(copy).await;
    fake.fail_next(faults);
    let job = promote(&app, "1.0.0", DIGEST).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(fake.effects_on("staging", "app", "1.0.0"), 1, "{job:#}");
    assert_eq!(fake.effects(), 1);
    assert_eq!(
        fake.digest("staging", "app", "1.0.0").as_deref(),
        Some(DIGEST)
    );
    assert_eq!(fake.digest("dev", "app", "1.0.0").is_some(), copy);
    app.stop().await;
    job
}

fn attempts(job: &Value) -> &Vec<Value> {
    job["attempts"].as_array().unwrap()
}

async fn answered_then_succeeded(status: u16, headers: Vec<(&'static str, String)>) -> Value {
    let job = survives(vec![Fault::Status(status, headers)], true).await;
    assert_eq!(job["outcome"], "promoted");
    let a = attempts(&job);
    assert_eq!(a.len(), 2, "{job:#}");
    assert_eq!(a[0]["upstream_status"], status);
    assert_eq!(a[1]["upstream_status"], 200);
    job
}

#[tokio::test]
async fn a_500_is_retried() {
    answered_then_succeeded(500, vec![]).await;
}

#[tokio::test]
async fn a_502_is_retried() {
    answered_then_succeeded(502, vec![]).await;
}

#[tokio::test]
async fn a_429_is_retried() {
    answered_then_succeeded(429, vec![]).await;
}

#[tokio::test]
async fn a_503_with_retry_after_waits_as_asked() {
    let job = answered_then_succeeded(503, vec![("Retry-After", "1".into())]).await;
    let a = attempts(&job);
    let gap = millis(&a[1]["started_at"]) - millis(&a[0]["started_at"]);
    assert!(
        gap >= 1000,
        "the retry came {gap} ms after, not after Retry-After: 1"
    );
}

#[tokio::test]
async fn a_timeout_is_retried_after_the_targets_timeout() {
    let job = survives(vec![Fault::Hang], true).await;
    let a = attempts(&job);
    assert_eq!(a.len(), 2);
    assert_eq!(a[0]["error"]["code"], "timeout");
    let first_ended = millis(&a[0]["started_at"]) + a[0]["duration_ms"].as_i64().unwrap();
    let gap = millis(&a[1]["started_at"]) - first_ended;
    assert!(gap >= 300, "re-checked {gap} ms after an ambiguous timeout");
}

#[tokio::test]
async fn a_reset_before_the_effect_is_retried() {
    let job = survives(vec![Fault::Reset], true).await;
    assert_eq!(attempts(&job)[0]["error"]["code"], "network_error");
    assert_eq!(job["outcome"], "promoted");
}

#[tokio::test]
async fn an_effect_whose_response_was_lost_is_not_repeated() {
    let job = survives(vec![Fault::EffectThenHang], true).await;
    let a = attempts(&job);
    assert_eq!(a.len(), 2);
    assert_eq!(a[0]["error"]["code"], "timeout");
    assert_eq!(
        job["outcome"], "noop",
        "the second attempt saw the promotion done"
    );
}

#[tokio::test]
async fn an_effect_followed_by_a_reset_is_not_repeated() {
    let job = survives(vec![Fault::EffectThenReset], true).await;
    assert_eq!(attempts(&job)[0]["error"]["code"], "network_error");
    assert_eq!(job["outcome"], "noop");
}

#[tokio::test]
async fn a_move_whose_response_was_lost_is_not_repeated() {
    let job = survives(vec![Fault::EffectThenHang], false).await;
    assert_eq!(job["outcome"], "noop");
}

#[tokio::test]
async fn a_target_already_holding_the_image_is_a_noop_without_a_promote_call() {
    let (app, fake) = app_with_fake(true).await;
    fake.put("staging", "app", "1.0.0", DIGEST);
    let job = promote(&app, "1.0.0", DIGEST).await;
    assert_eq!(
        (job["state"].as_str(), job["outcome"].as_str()),
        (Some("succeeded"), Some("noop"))
    );
    assert_eq!(fake.promote_calls(), 0);
    app.stop().await;
}

#[tokio::test]
async fn a_source_tag_that_moved_since_the_event_fails_with_digest_mismatch() {
    let (app, fake) = app_with_fake(true).await;
    // The tag was re-pushed between the event and the attempt.
    fake.put("dev", "app", "1.0.0", "sha256:bbbb");
    let job = promote(&app, "1.0.0", DIGEST).await;
    assert_eq!(job["state"], "failed");
    assert_eq!(attempts(&job).len(), 1, "digest_mismatch is permanent");
    assert_eq!(job["last_error"]["code"], "digest_mismatch");
    let message = job["last_error"]["message"].as_str().unwrap();
    assert!(
        message.contains("sha256:aaaa") && message.contains("sha256:bbbb"),
        "{message}"
    );
    assert_eq!(fake.promote_calls(), 0);
    assert_eq!(fake.digest("staging", "app", "1.0.0"), None);
    let id = job["id"].as_str().unwrap();
    let failed = app.audit(&format!("job={id}&kind=job.failed")).await;
    let record = failed[0]["message"].as_str().unwrap();
    assert!(
        record.contains("digest_mismatch")
            && record.contains("sha256:aaaa")
            && record.contains("sha256:bbbb")
    );
    app.stop().await;
}

#[tokio::test]
async fn an_open_circuit_holds_jobs_instead_of_spending_their_attempts() {
    let fake = FakeArtifactory::start().await;
    for i in 0..5 {
        fake.put("dev", "app", &format!("1.0.{i}"), &format!("sha256:{i}"));
    }
    let app = spawn_app(&rules(
        &fake,
        true,
        "max_concurrency = 1\ncircuit_breaker = { failures = 2, cool_down = \"400ms\" }",
        "retry = { max_attempts = 2 }",
    ))
    .await;
    // Two failures open the circuit; without it the three queued jobs would run into
    // the outage too.
    fake.fail_next([Fault::Status(503, vec![]), Fault::Status(503, vec![])]);
    let mut ids = Vec::new();
    for i in 0..5 {
        let body = format!(
            r#"{{"event":"test-passed","repo":"dev","image":"app","tag":"1.0.{i}","digest":"sha256:{i}"}}"#
        );
        let answer: Value = app.send("ci", body.as_bytes()).await.json().await.unwrap();
        ids.push(answer["jobs"][0]["id"].as_str().unwrap().to_string());
    }
    let mut spent = Vec::new();
    for id in &ids {
        let job = app.wait_final(id).await;
        assert_eq!(job["state"], "succeeded", "{job:#}");
        spent.push(attempts(&job).len());
    }
    spent.sort();
    assert_eq!(
        spent,
        [1, 1, 1, 2, 2],
        "only the two failed attempts were spent"
    );
    assert_eq!(fake.promote_calls(), 7);
    assert_eq!(fake.effects(), 5);

    let opened = app.audit("kind=target.circuit_opened").await;
    let closed = app.audit("kind=target.circuit_closed").await;
    assert_eq!((opened.len(), closed.len()), (1, 1));
    assert_eq!(opened[0]["target"], "fake");
    let held = millis(&closed[0]["at"]) - millis(&opened[0]["at"]);
    assert!(held >= 400, "the circuit closed {held} ms after opening");
    app.stop().await;
}

#[tokio::test]
async fn a_hung_upstream_does_not_stall_other_targets() {
    let slow = FakeArtifactory::start().await;
    let fast = FakeArtifactory::start().await;
    slow.put("dev", "app", "1.0.0", DIGEST);
    fast.put("dev", "other", "1.0.0", DIGEST);
    slow.set_delay(Duration::from_secs(5));
    let app = spawn_app(&format!(
        r#"
[[targets]]
name = "slow"
kind = "artifactory"
url = "{}"
timeout = "10s"

[[targets]]
name = "fast"
kind = "artifactory"
url = "{}"

[[rules]]
name = "to-slow"
source = "ci"
event = "test-passed"
match = {{ image = "app" }}
action = {{ type = "promote", target = "slow", to_repo = "staging" }}

[[rules]]
name = "to-fast"
source = "ci"
event = "test-passed"
match = {{ image = "other" }}
action = {{ type = "promote", target = "fast", to_repo = "staging" }}
"#,
        slow.uri(),
        fast.uri()
    ))
    .await;
    let body = br#"{"event":"test-passed","repo":"dev","image":"app","tag":"1.0.0"}"#;
    let answer: Value = app.send("ci", body).await.json().await.unwrap();
    let slow_job = answer["jobs"][0]["id"].as_str().unwrap().to_string();
    app.wait_for(&slow_job, |j| j["state"] == "running").await;
    let body = br#"{"event":"test-passed","repo":"dev","image":"other","tag":"1.0.0"}"#;
    let answer: Value = app.send("ci", body).await.json().await.unwrap();
    let job = app
        .wait_final(answer["jobs"][0]["id"].as_str().unwrap())
        .await;
    assert_eq!(job["state"], "succeeded");
    assert_eq!(
        app.job(&slow_job).await["state"],
        "running",
        "the slow one is still at it"
    );
    assert_eq!(app.wait_final(&slow_job).await["state"], "succeeded");
    app.stop().await;
}
