//! Gates (SPEC §9): a promotion that waits for more evidence about the same artifact,
//! through the HTTP API against a fake Artifactory, with the promote calls counted.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{OPS_TOKEN, TestApp, posts, spawn_app};

/// A scanner, signed like `ci`.
pub const SCANNER: &str = r#"
[[sources]]
name = "scanner"
format = "generic"
verify = { scheme = "hmac-sha256", header = "X-Signature", prefix = "sha256=", secrets = ["env:TEST_CI_SECRET"] }
"#;

/// The SPEC's example gate: tests passed (the trigger), a clean scan and e2e, within
/// `within`; a scan with criticals blocks.
fn gated(within: &str, extra: &str) -> String {
    format!(
        r#"{SCANNER}
[[rules]]
name = "to-staging"
source = "ci"
event = "test-passed"
action = {{ type = "promote", target = "jfrog", to_repo = "staging" }}
gate = {{ correlate = ["digest"], within = "{within}", require = [
  {{ name = "scan-clean", source = "scanner", event = "scan.completed", when = {{ "/summary/critical" = "0" }} }},
  {{ name = "criticals", source = "scanner", event = "scan.completed", when = {{ "/summary/critical" = "!0" }}, block = true }},
  {{ name = "e2e", source = "ci", event = "e2e-passed" }},
] }}
{extra}
"#
    )
}

const DIGEST: &str = "sha256:aaaa";

fn trigger_body(tag: &str, digest: &str) -> Vec<u8> {
    format!(
        r#"{{"event":"test-passed","repo":"dev","image":"app","tag":"{tag}","digest":"{digest}"}}"#
    )
    .into_bytes()
}

fn scan_body(digest: &str, critical: u32) -> Vec<u8> {
    format!(
        r#"{{"event":"scan.completed","digest":"{digest}","summary":{{"critical":{critical}}}}}"#
    )
    .into_bytes()
}

fn e2e_body(digest: &str) -> Vec<u8> {
    format!(r#"{{"event":"e2e-passed","digest":"{digest}"}}"#).into_bytes()
}

async fn app(within: &str, extra: &str) -> TestApp {
    let app = spawn_app(&gated(within, extra)).await;
    app.upstream_answers(200).await;
    app
}

/// Sends a body; its answer.
async fn send(app: &TestApp, source: &str, body: &[u8]) -> Value {
    let r = app.send(source, body).await;
    assert!(matches!(r.status().as_u16(), 200 | 202), "{}", r.status());
    r.json().await.unwrap()
}

/// Sends the trigger; the id of the job it made.
async fn trigger(app: &TestApp, tag: &str, digest: &str) -> String {
    let v = send(app, "ci", &trigger_body(tag, digest)).await;
    v["jobs"][0]["id"].as_str().expect("a job").to_string()
}

async fn kinds(app: &TestApp, id: &str) -> Vec<String> {
    app.audit(&format!("job={id}"))
        .await
        .iter()
        .map(|r| r["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn met(job: &Value) -> Vec<(String, bool)> {
    job["gate"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_string(), c["met"] == true))
        .collect()
}

/// Gives the workers time to run a job that were due, so that "nothing was sent"
/// is not merely "not yet" (a waiting job wakes no worker to poll for).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_gate_met_after_its_trigger_promotes_once() {
    let app = app("1h", "").await;
    let id = trigger(&app, "1.0.0", DIGEST).await;
    let job = app.job(&id).await;
    assert_eq!(job["state"], "waiting", "{job:#}");
    assert_eq!(job["gate"]["correlate"], json!({"digest": DIGEST}));
    assert_eq!(
        met(&job),
        [
            ("scan-clean".to_string(), false),
            ("e2e".to_string(), false)
        ]
    );
    assert!(job["gate"]["expires_at"].is_string());

    let scan = send(&app, "scanner", &scan_body(DIGEST, 0)).await;
    let job = app.job(&id).await;
    assert_eq!(job["state"], "waiting");
    assert_eq!(
        met(&job),
        [("scan-clean".to_string(), true), ("e2e".to_string(), false)]
    );
    assert_eq!(job["gate"]["conditions"][0]["event_id"], scan["event_id"]);
    settle().await;
    assert_eq!(posts(&app.upstream).await, 0, "a waiting job is not run");

    send(&app, "ci", &e2e_body(DIGEST)).await;
    let job = app.wait_final(&id).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(posts(&app.upstream).await, 1);
    assert_eq!(
        kinds(&app, &id).await,
        [
            "job.waiting",
            "gate.condition_met",
            "gate.condition_met",
            "job.attempt",
            "job.succeeded"
        ]
    );
    let records = app
        .audit(&format!("job={id}&kind=gate.condition_met"))
        .await;
    assert_eq!(records[0]["event_id"], scan["event_id"]);
    assert_eq!(records[0]["actor"], "scanner");
    assert!(
        records[1]["message"]
            .as_str()
            .unwrap()
            .contains("condition e2e met"),
        "{records:#?}"
    );
    // A condition arriving after its job moved on changes nothing.
    send(&app, "ci", &e2e_body(DIGEST)).await;
    assert_eq!(kinds(&app, &id).await.len(), 5);
    app.stop().await;
}

#[tokio::test]
async fn evidence_before_the_trigger_lets_it_go_straight_on() {
    let app = app("1h", "").await;
    let scan = send(&app, "scanner", &scan_body(DIGEST, 0)).await;
    assert_eq!(scan["jobs"], json!([]));
    let e2e = send(&app, "ci", &e2e_body(DIGEST)).await;
    let id = trigger(&app, "1.0.0", DIGEST).await;
    let job = app.wait_final(&id).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(posts(&app.upstream).await, 1);
    assert_eq!(job["gate"]["conditions"][0]["event_id"], scan["event_id"]);
    assert_eq!(job["gate"]["conditions"][1]["event_id"], e2e["event_id"]);
    assert_eq!(
        kinds(&app, &id).await,
        [
            "job.created",
            "gate.condition_met",
            "gate.condition_met",
            "job.attempt",
            "job.succeeded"
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn evidence_for_another_digest_or_matching_no_when_changes_nothing() {
    let app = app("1h", "").await;
    let id = trigger(&app, "1.0.0", DIGEST).await;
    // Another artifact's evidence; a scan no `when` of a required condition takes
    // (it blocks only the other digest); e2e twice, the second a duplicate delivery.
    send(&app, "scanner", &scan_body("sha256:bbbb", 0)).await;
    send(&app, "scanner", &scan_body("sha256:bbbb", 2)).await;
    send(&app, "ci", &e2e_body(DIGEST)).await;
    let again = send(&app, "ci", &e2e_body(DIGEST)).await;
    assert!(
        app.audit("kind=event.duplicate")
            .await
            .iter()
            .any(|r| r["event_id"] == again["event_id"])
    );
    let job = app.job(&id).await;
    assert_eq!(job["state"], "waiting");
    assert_eq!(
        met(&job),
        [("scan-clean".to_string(), false), ("e2e".to_string(), true)]
    );
    assert_eq!(
        app.audit(&format!("job={id}&kind=gate.condition_met"))
            .await
            .len(),
        1,
        "counted once"
    );
    // Events are all on the record.
    assert_eq!(app.audit("kind=event.received").await.len(), 4);
    settle().await;
    assert_eq!(posts(&app.upstream).await, 0);
    app.stop().await;
}

#[tokio::test]
async fn negative_evidence_fails_a_waiting_job_and_a_new_trigger_at_once() {
    let app = app("1h", "").await;
    let id = trigger(&app, "1.0.0", DIGEST).await;
    send(&app, "ci", &e2e_body(DIGEST)).await;
    let scan = send(&app, "scanner", &scan_body(DIGEST, 3)).await;
    let job = app.job(&id).await;
    assert_eq!(job["state"], "failed", "{job:#}");
    assert_eq!(job["last_error"]["code"], "gate_blocked");
    let blocked = app.audit(&format!("job={id}&kind=gate.blocked")).await;
    assert_eq!(blocked.len(), 1);
    assert_eq!(blocked[0]["event_id"], scan["event_id"]);
    assert!(
        blocked[0]["message"]
            .as_str()
            .unwrap()
            .contains("criticals")
    );

    // The criticals are already known when the next trigger for the digest comes.
    let again = trigger(&app, "1.0.1", DIGEST).await;
    let job = app.job(&again).await;
    assert_eq!(job["state"], "failed");
    assert_eq!(job["last_error"]["code"], "gate_blocked");
    assert_eq!(kinds(&app, &again).await, ["gate.blocked"]);
    settle().await;
    assert_eq!(posts(&app.upstream).await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_waiting_job_expires_when_its_window_ends_and_a_retry_waits_again() {
    let app = app("1s", "").await;
    let id = trigger(&app, "1.0.0", DIGEST).await;
    send(&app, "scanner", &scan_body(DIGEST, 0)).await;
    let job = app.wait_for(&id, |j| j["state"] == "expired").await;
    assert_eq!(
        met(&job),
        [("scan-clean".to_string(), true), ("e2e".to_string(), false)]
    );
    assert_eq!(
        kinds(&app, &id).await,
        ["job.waiting", "gate.condition_met", "job.expired"]
    );
    // Evidence after the window changes nothing.
    send(&app, "ci", &e2e_body(DIGEST)).await;
    assert_eq!(app.job(&id).await["state"], "expired");

    // A retry revives it into waiting, what was met kept, for a new window; the
    // e2e evidence that came meanwhile is for new triggers, and arrives again here.
    let r = app
        .post(&format!("/api/v1/jobs/{id}/retry"), Some(OPS_TOKEN))
        .await;
    assert_eq!(r.status(), 200);
    let job = app.job(&id).await;
    assert_eq!(job["state"], "waiting", "{job:#}");
    let body = r#"{"event":"e2e-passed","digest":"sha256:aaaa","run":2}"#;
    send(&app, "ci", body.as_bytes()).await;
    let job = app.wait_final(&id).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(posts(&app.upstream).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn evidence_older_than_the_window_does_not_count() {
    let app = app("1s", "").await;
    send(&app, "scanner", &scan_body(DIGEST, 0)).await;
    send(&app, "ci", &e2e_body(DIGEST)).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let id = trigger(&app, "1.0.0", DIGEST).await;
    let job = app.job(&id).await;
    assert_eq!(job["state"], "waiting", "{job:#}");
    assert_eq!(
        met(&job),
        [
            ("scan-clean".to_string(), false),
            ("e2e".to_string(), false)
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn a_second_trigger_for_the_same_artifact_while_one_waits_is_a_duplicate() {
    let app = app("1h", "").await;
    let first = trigger(&app, "1.0.0", DIGEST).await;
    let v = send(&app, "ci", &trigger_body("1.0.0-again", DIGEST)).await;
    assert_eq!(v["jobs"], json!([]));
    let dup = app.audit("kind=job.duplicate").await;
    assert_eq!(dup.len(), 1);
    assert_eq!(dup[0]["job_id"], first);
    // Another digest is another artifact: a job of its own.
    let other = trigger(&app, "2.0.0", "sha256:cccc").await;
    assert_ne!(other, first);
    assert_eq!(app.job(&other).await["state"], "waiting");
    app.stop().await;
}

#[tokio::test]
async fn a_trigger_without_the_correlated_field_fails_at_once() {
    let app = app("1h", "").await;
    let body = br#"{"event":"test-passed","repo":"dev","image":"app","tag":"1.0.0"}"#;
    let v = send(&app, "ci", body).await;
    let id = v["jobs"][0]["id"].as_str().unwrap();
    let job = app.job(id).await;
    assert_eq!(job["state"], "failed");
    assert_eq!(job["last_error"]["code"], "gate_uncorrelated");
    app.stop().await;
}

#[tokio::test]
async fn a_soak_timer_holds_the_job_until_its_trigger_is_old_enough() {
    let rules = r#"
[[rules]]
name = "soaked"
source = "ci"
event = "test-passed"
action = { type = "promote", target = "jfrog", to_repo = "prod" }
gate = { soak = "1s" }
"#;
    let app = spawn_app(rules).await;
    app.upstream_answers(200).await;
    let id = trigger(&app, "1.0.0", DIGEST).await;
    let job = app.job(&id).await;
    assert_eq!(job["state"], "queued", "{job:#}");
    assert!(job["soak_until"].is_string());
    let job = app.wait_final(&id).await;
    assert_eq!(job["state"], "succeeded");
    let waited = crate::harness::soaked_ms(&job);
    assert!(
        waited >= 1000,
        "the attempt started {waited} ms after the trigger"
    );
    assert_eq!(posts(&app.upstream).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_gate_met_then_waits_for_approval() {
    let app = app("1h", "approval = { count = 1 }").await;
    send(&app, "scanner", &scan_body(DIGEST, 0)).await;
    let id = trigger(&app, "1.0.0", DIGEST).await;
    assert_eq!(app.job(&id).await["state"], "waiting");
    send(&app, "ci", &e2e_body(DIGEST)).await;
    let job = app.job(&id).await;
    assert_eq!(job["state"], "awaiting_approval", "{job:#}");
    settle().await;
    assert_eq!(posts(&app.upstream).await, 0);
    let r = app
        .post_json(&format!("/api/v1/jobs/{id}/approve"), OPS_TOKEN, &json!({}))
        .await;
    assert_eq!(r.status(), 200);
    let job = app.wait_final(&id).await;
    assert_eq!(job["state"], "succeeded");
    assert_eq!(
        kinds(&app, &id).await,
        [
            "job.waiting",
            "gate.condition_met",
            "gate.condition_met",
            "job.awaiting_approval",
            "job.approved",
            "job.attempt",
            "job.succeeded"
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn waiting_jobs_are_listed_by_state_and_counted_in_metrics() {
    let app = app("1h", "").await;
    let id = trigger(&app, "1.0.0", DIGEST).await;
    let listed: Value = app
        .get("/api/v1/jobs?state=waiting", Some(OPS_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["jobs"][0]["id"], id.as_str());
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains(r#"gantry_jobs{state="waiting"} 1"#),
        "{metrics}"
    );
    let r = app
        .post(&format!("/api/v1/jobs/{id}/cancel"), Some(OPS_TOKEN))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(app.job(&id).await["state"], "cancelled");
    app.stop().await;
}

#[tokio::test]
async fn simulate_shows_the_gate_a_trigger_opens_and_what_evidence_is_for() {
    let app = app("1h", "").await;
    let simulate = |source: &str, body: Vec<u8>| {
        let body: Value = serde_json::from_slice(&body).unwrap();
        json!({"source": source, "body": body})
    };
    let r = app
        .post_json(
            "/api/v1/simulate",
            OPS_TOKEN,
            &simulate("ci", trigger_body("1.0.0", DIGEST)),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let gate = &v["events"][0]["promotions"][0]["gate"];
    assert_eq!(gate["correlate"], json!({"digest": DIGEST}));
    assert_eq!(gate["conditions"][1]["name"], "e2e");
    let r = app
        .post_json(
            "/api/v1/simulate",
            OPS_TOKEN,
            &simulate("scanner", scan_body(DIGEST, 2)),
        )
        .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["events"][0]["evidence"],
        json!([{"rule": "to-staging", "condition": "criticals", "block": true, "key": format!("[\"{DIGEST}\"]")}])
    );
    app.stop().await;
}

/// A gated rule as a chain's later stage: gantry's own `gantry.promoted` from
/// staging is the trigger, a scanner's event about the same digest the condition.
#[tokio::test]
async fn a_gated_rule_is_a_later_stage_of_a_chain() {
    let fake = crate::fake_artifactory::FakeArtifactory::start().await;
    fake.put("docker-dev", "app", "1.0.0", DIGEST);
    let rules = format!(
        r#"{SCANNER}
[[targets]]
name = "fake"
kind = "artifactory"
url = "{}"

[[rules]]
name = "tested-to-staging"
source = "ci"
event = "test-passed"
match = {{ repo = "docker-dev" }}
action = {{ type = "promote", target = "fake", to_repo = "docker-staging" }}

[[rules]]
name = "staging-to-prod"
source = "gantry"
event = "gantry.promoted"
match = {{ repo = "docker-staging" }}
action = {{ type = "promote", target = "fake", to_repo = "docker-prod" }}
gate = {{ within = "1h", require = [
  {{ name = "scan-clean", source = "scanner", event = "scan.completed" }},
] }}
"#,
        fake.uri()
    );
    let app = spawn_app(&rules).await;
    let body = format!(
        r#"{{"event":"test-passed","repo":"docker-dev","image":"app","tag":"1.0.0","digest":"{DIGEST}"}}"#
    );
    let v = send(&app, "ci", body.as_bytes()).await;
    let first = v["jobs"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(app.wait_final(&first).await["state"], "succeeded");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let second = loop {
        let r = app.get("/api/v1/jobs?rule=staging-to-prod", Some(OPS_TOKEN));
        let listed: Value = r.await.json().await.unwrap();
        if let Some(id) = listed["jobs"][0]["id"].as_str() {
            break id.to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no second stage");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let job = app.job(&second).await;
    assert_eq!(job["state"], "waiting", "{job:#}");
    assert_eq!(job["chain_depth"], 1);
    send(&app, "scanner", &scan_body(DIGEST, 0)).await;
    let job = app.wait_final(&second).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(fake.effects_on("docker-prod", "app", "1.0.0"), 1);
    app.stop().await;
}
