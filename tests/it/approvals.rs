//! Human approvals (SPEC §9): a job whose rule has `approval` waits for people before
//! it runs, through the HTTP API, with the promote calls upstream counted.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{
    ChildApp, OPS_TOKEN, TestApp, VIEWER_TOKEN, free_port, posts, spawn_app, write_config,
};

const ALICE: &str = "alice-token-value";
const BOB: &str = "bob-token-value";
const EVE: &str = "eve-token-value";

/// Approvers in `release-managers` (alice, bob) and an operator outside it (eve).
const TOKENS: &str = r#"
[[admin.tokens]]
name = "alice"
token = "alice-token-value"
role = "operate"
groups = ["release-managers"]

[[admin.tokens]]
name = "bob"
token = "bob-token-value"
role = "operate"
groups = ["release-managers", "security"]

[[admin.tokens]]
name = "eve"
token = "eve-token-value"
role = "operate"
groups = ["dev"]
"#;

fn rules(approval: &str) -> String {
    format!(
        r#"
[[rules]]
name = "r"
source = "ci"
event = "test-passed"
initiator = "/sender"
action = {{ type = "promote", target = "jfrog", to_repo = "staging" }}
approval = {approval}
{TOKENS}"#
    )
}

async fn app_with(approval: &str) -> TestApp {
    let app = spawn_app(&rules(approval)).await;
    app.upstream_answers(200).await;
    app
}

/// Sends one trigger event set off by `sender`; the job's id.
async fn trigger(app: &TestApp, sender: &str) -> String {
    trigger_tag(app, sender, "1.0.0").await
}

/// Like [`trigger`], for `tag` (another tag is another delivery, not a duplicate).
async fn trigger_tag(app: &TestApp, sender: &str, tag: &str) -> String {
    let body = format!(
        r#"{{"event":"test-passed","repo":"dev","image":"app","tag":"{tag}","sender":"{sender}"}}"#
    );
    let v: Value = app.send("ci", body.as_bytes()).await.json().await.unwrap();
    v["jobs"][0]["id"].as_str().unwrap().to_string()
}

async fn verdict(app: &TestApp, id: &str, action: &str, token: &str, body: Value) -> (u16, Value) {
    let r = app
        .post_json(&format!("/api/v1/jobs/{id}/{action}"), token, &body)
        .await;
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn one_approval_lets_the_job_run_once() {
    let app = app_with(r#"{ count = 1 }"#).await;
    let id = trigger(&app, "carol").await;
    let job = app.job(&id).await;
    assert_eq!(job["state"], "awaiting_approval");
    assert_eq!(job["approval"]["count"], 1);
    assert_eq!(job["approvals"], json!([]));
    // An awaiting job is not due: nothing reaches the upstream.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(posts(&app.upstream).await, 0);

    let (status, job) = verdict(&app, &id, "approve", OPS_TOKEN, json!({"comment": "ok"})).await;
    assert_eq!(status, 200, "{job:#}");
    assert_eq!(job["approvals"][0]["by"], "ops");
    assert_eq!(job["approvals"][0]["verdict"], "approved");
    assert_eq!(job["approvals"][0]["comment"], "ok");
    let job = app.wait_final(&id).await;
    assert_eq!(job["state"], "succeeded");
    assert_eq!(posts(&app.upstream).await, 1);
    assert_eq!(
        app.kinds(&id).await,
        [
            "job.awaiting_approval",
            "job.approved",
            "job.attempt",
            "job.succeeded"
        ]
    );
    let approved = app.audit(&format!("job={id}&kind=job.approved")).await;
    assert_eq!(approved[0]["actor"], "ops");
    assert_eq!(approved[0]["message"], "ok");
    let listed: Value = app
        .get("/api/v1/jobs?state=succeeded", Some(VIEWER_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["jobs"][0]["approvals"][0]["by"], "ops");
    app.stop().await;
}

#[tokio::test]
async fn two_distinct_approvers_are_needed_and_one_twice_counts_once() {
    let app = app_with(r#"{ count = 2, groups = ["release-managers"] }"#).await;
    let id = trigger(&app, "carol").await;
    let (status, job) = verdict(&app, &id, "approve", ALICE, json!({})).await;
    assert_eq!(
        (status, job["state"].as_str()),
        (200, Some("awaiting_approval"))
    );
    let (status, job) = verdict(&app, &id, "approve", ALICE, json!({})).await;
    assert_eq!(
        (status, job["state"].as_str()),
        (200, Some("awaiting_approval"))
    );
    assert_eq!(job["approvals"].as_array().unwrap().len(), 1);
    let listed: Value = app
        .get("/api/v1/jobs?state=awaiting_approval", Some(VIEWER_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["jobs"][0]["id"], id.as_str());
    assert_eq!(posts(&app.upstream).await, 0);

    let (status, job) = verdict(&app, &id, "approve", BOB, json!({"as": "release-managers"})).await;
    assert_eq!(status, 200, "{job:#}");
    assert_eq!(job["approvals"][1]["as"], "release-managers");
    assert_eq!(app.wait_final(&id).await["state"], "succeeded");
    assert_eq!(posts(&app.upstream).await, 1);
    let approved = app.audit(&format!("job={id}&kind=job.approved")).await;
    assert_eq!(approved.len(), 1);
    assert_eq!(approved[0]["actor"], "bob");
    app.stop().await;
}

#[tokio::test]
async fn who_may_approve_is_checked() {
    let app = app_with(r#"{ groups = ["release-managers"] }"#).await;
    let id = trigger(&app, "carol").await;
    let (status, body) = verdict(&app, &id, "approve", VIEWER_TOKEN, json!({})).await;
    assert_eq!((status, &body["error"]["code"]), (403, &json!("forbidden")));
    let (status, body) = verdict(&app, &id, "approve", EVE, json!({})).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (403, &json!("not_an_approver"))
    );
    let (status, body) = verdict(&app, &id, "approve", ALICE, json!({"as": "security"})).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (403, &json!("not_an_approver"))
    );
    let (status, body) = verdict(&app, &id, "approve", ALICE, json!({"nope": 1})).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("invalid_body"))
    );
    assert_eq!(app.job(&id).await["state"], "awaiting_approval");
    assert_eq!(app.job(&id).await["approvals"], json!([]));

    // A job whose rule needs no approval takes none.
    let app2 = spawn_app(
        r#"
[[rules]]
name = "plain"
source = "ci"
event = "test-passed"
action = { type = "promote", target = "jfrog", to_repo = "staging" }
"#,
    )
    .await;
    let queued = trigger(&app2, "carol").await;
    let (status, body) = verdict(&app2, &queued, "approve", OPS_TOKEN, json!({})).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("invalid_state"))
    );
    let (status, _) = verdict(&app2, "nope", "approve", OPS_TOKEN, json!({})).await;
    assert_eq!(status, 404);
    app2.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn the_initiator_may_not_approve_unless_the_rule_allows_it() {
    let app = app_with(r#"{ count = 1 }"#).await;
    let id = trigger(&app, "alice").await;
    let (status, body) = verdict(&app, &id, "approve", ALICE, json!({})).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (403, &json!("self_approval"))
    );
    assert_eq!(app.job(&id).await["approval"]["initiator"], "alice");
    app.stop().await;

    let app = app_with(r#"{ count = 1, allow_self = true }"#).await;
    let id = trigger(&app, "alice").await;
    let (status, _) = verdict(&app, &id, "approve", ALICE, json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(app.wait_final(&id).await["state"], "succeeded");
    assert_eq!(posts(&app.upstream).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_rejection_needs_a_comment_and_a_retry_waits_for_approval_again() {
    let app = app_with(r#"{ count = 1 }"#).await;
    let id = trigger(&app, "carol").await;
    let (status, body) = verdict(&app, &id, "reject", ALICE, json!({})).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("comment_required"))
    );
    let (status, job) = verdict(&app, &id, "reject", ALICE, json!({"comment": "not now"})).await;
    assert_eq!((status, job["state"].as_str()), (200, Some("rejected")));
    let rejected = app.audit(&format!("job={id}&kind=job.rejected")).await;
    assert_eq!(rejected[0]["actor"], "alice");
    assert_eq!(rejected[0]["message"], "not now");
    let (status, _) = verdict(&app, &id, "approve", BOB, json!({})).await;
    assert_eq!(status, 409);

    // The operator who revives it becomes its initiator.
    let r = app
        .post(&format!("/api/v1/jobs/{id}/retry"), Some(OPS_TOKEN))
        .await;
    assert_eq!(r.status(), 200);
    let job = app.job(&id).await;
    assert_eq!(job["state"], "awaiting_approval");
    assert_eq!(job["approval"]["initiator"], "ops");
    let (status, body) = verdict(&app, &id, "approve", OPS_TOKEN, json!({})).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (403, &json!("self_approval"))
    );
    // Alice's rejection belonged to the previous round.
    let (status, job) = verdict(&app, &id, "approve", ALICE, json!({})).await;
    assert_eq!(status, 200, "{job:#}");
    assert_eq!(job["approvals"].as_array().unwrap().len(), 2);
    assert_eq!(app.wait_final(&id).await["state"], "succeeded");
    assert_eq!(posts(&app.upstream).await, 1);
    assert_eq!(
        app.kinds(&id).await,
        [
            "job.awaiting_approval",
            "job.rejected",
            "job.retried",
            "job.approved",
            "job.attempt",
            "job.succeeded"
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn an_approval_not_given_in_time_expires_the_job() {
    let app = app_with(r#"{ count = 1, timeout = "300ms" }"#).await;
    let id = trigger(&app, "carol").await;
    let job = app
        .wait_for(&id, |j| j["state"] != "awaiting_approval")
        .await;
    assert_eq!(job["state"], "expired");
    assert_eq!(posts(&app.upstream).await, 0);
    let expired = app.audit(&format!("job={id}&kind=job.expired")).await;
    assert_eq!(expired.len(), 1);
    let (status, body) = verdict(&app, &id, "approve", ALICE, json!({})).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("invalid_state"))
    );
    // A cancel of an awaiting job is an operator's to make, and retry revives both.
    let r = app
        .post(&format!("/api/v1/jobs/{id}/retry"), Some(OPS_TOKEN))
        .await;
    assert_eq!(r.status(), 200);
    let r = app
        .post(&format!("/api/v1/jobs/{id}/cancel"), Some(OPS_TOKEN))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(app.job(&id).await["state"], "cancelled");
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains(r#"gantry_jobs{state="awaiting_approval"} 0"#),
        "{metrics}"
    );
    app.stop().await;
}

/// An awaiting job is in the store, not in the process: it survives a restart on the
/// same SQLite file and runs once approved there.
#[tokio::test]
async fn an_awaiting_job_survives_a_restart() {
    let upstream = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(200))
        .mount(&upstream)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &upstream.uri(), &rules("{ count = 1 }"), "1s");
    let first = ChildApp::start(&config, free_port()).await;
    let body = br#"{"event":"test-passed","repo":"dev","image":"app","tag":"1.0.0"}"#;
    let answer: Value = first.client.send("ci", body).await.json().await.unwrap();
    let id = answer["jobs"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(first.client.job(&id).await["state"], "awaiting_approval");
    first.kill();

    let second = ChildApp::start(&config, free_port()).await;
    assert_eq!(second.client.job(&id).await["state"], "awaiting_approval");
    let r = second
        .client
        .post_json(&format!("/api/v1/jobs/{id}/approve"), BOB, &json!({}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(second.client.wait_final(&id).await["state"], "succeeded");
    assert_eq!(posts(&upstream).await, 1);
}

#[tokio::test]
async fn the_cli_approves_and_rejects() {
    use crate::cli::admin;

    let app = app_with(r#"{ count = 1 }"#).await;
    let first = trigger(&app, "carol").await;
    let (code, _, stderr) = admin(&app.base, ALICE, &["jobs", "reject", &first]).await;
    assert_eq!(code, 2, "--comment is required: {stderr}");
    let args = ["jobs", "reject", &first, "--comment", "bad build"];
    let (code, stdout, stderr) = admin(&app.base, ALICE, &args).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, format!("job {first} is rejected\n"));

    let second = trigger_tag(&app, "carol", "2.0.0").await;
    let args = ["jobs", "approve", &second, "--as", "security"];
    let (code, _, stderr) = admin(&app.base, ALICE, &args).await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("403") && stderr.contains("not_an_approver"),
        "{stderr}"
    );
    let args = [
        "jobs",
        "approve",
        &second,
        "--as",
        "security",
        "--comment",
        "ok",
    ];
    let (code, stdout, stderr) = admin(&app.base, BOB, &args).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, format!("job {second} is queued\n"));
    let job = app.wait_final(&second).await;
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["approvals"][0]["as"], "security");
    assert_eq!(posts(&app.upstream).await, 1);
    app.stop().await;
}

/// `all_of`: a security and a release-manager approval, each approver counted once,
/// for the group it approves as; bob, in both groups, must say which.
#[tokio::test]
async fn per_group_quorums_need_every_group() {
    let quorums = r#"{ all_of = [{ groups = ["security"] }, { groups = ["release-managers"] }] }"#;
    let app = app_with(quorums).await;
    let id = trigger(&app, "carol").await;
    let (status, body) = verdict(&app, &id, "approve", BOB, json!({})).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("as_required"))
    );
    let (status, job) = verdict(&app, &id, "approve", BOB, json!({"as": "security"})).await;
    assert_eq!(
        (status, job["state"].as_str()),
        (200, Some("awaiting_approval"))
    );
    let again = json!({"as": "release-managers"});
    let (status, job) = verdict(&app, &id, "approve", BOB, again).await;
    assert_eq!(
        (status, job["state"].as_str()),
        (200, Some("awaiting_approval"))
    );
    assert_eq!(job["approvals"].as_array().unwrap().len(), 1);
    let (status, body) = verdict(&app, &id, "approve", EVE, json!({})).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (403, &json!("not_an_approver"))
    );
    let (status, job) = verdict(&app, &id, "approve", ALICE, json!({})).await;
    assert_eq!(status, 200, "{job:#}");
    assert_eq!(job["approvals"][1]["as"], "release-managers");
    assert_eq!(app.wait_final(&id).await["state"], "succeeded");
    assert_eq!(posts(&app.upstream).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn simulate_shows_the_approval_a_job_would_await() {
    let app = app_with(r#"{ count = 2, groups = ["release-managers"], timeout = "1h" }"#).await;
    let body = json!({"source": "ci", "body": {"event": "test-passed", "repo": "dev", "image": "app", "tag": "1.0.0"}});
    let r = app.post_json("/api/v1/simulate", VIEWER_TOKEN, &body).await;
    assert_eq!(r.status(), 200);
    let sim: Value = r.json().await.unwrap();
    let approval = &sim["events"][0]["promotions"][0]["approval"];
    assert_eq!(approval["count"], 2);
    assert_eq!(approval["groups"], json!(["release-managers"]));
    assert_eq!(approval["timeout_ms"], 3_600_000);
    assert_eq!(posts(&app.upstream).await, 0);
    app.stop().await;
}
