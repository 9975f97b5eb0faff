//! Freeze windows (SPEC §9): a job a freeze covers waits `frozen`, reaching no
//! upstream and spending no attempt, and runs once the freeze ends.

use std::process::Stdio;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use futures_util::FutureExt;
use serde_json::Value;

use crate::fake_artifactory::FakeArtifactory;
use crate::harness::{
    ChildApp, Client, OPS_TOKEN, VIEWER_TOKEN, free_port, posts, spawn_app, write_config_on,
};
use crate::stores::TestStore;

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

// Freeze overrides (SPEC §9): `POST /api/v1/jobs/{id}/override-freeze` lets one frozen
// job run despite the freezes holding it.

const ALICE: &str = "alice-token-value";
const EVE: &str = "eve-token-value";

/// alice (`operate`, in `release-managers`) may override `release-day`; eve
/// (`operate`, in `dev`) may not.
const OVERRIDERS: &str = r#"
[[admin.tokens]]
name = "alice"
token = "alice-token-value"
role = "operate"
groups = ["release-managers"]

[[admin.tokens]]
name = "eve"
token = "eve-token-value"
role = "operate"
groups = ["dev"]
"#;

/// [`rules_with_freeze`] with `release-day` overridable by `release-managers` only,
/// and the tokens of [`OVERRIDERS`].
fn guarded_rules(seconds: i64) -> String {
    format!(
        "{}override_groups = [\"release-managers\"]\n{OVERRIDERS}",
        rules_with_freeze(seconds)
    )
}

/// Posts `body` (with `content_type`) to a job's override-freeze as `token`: the
/// status and the answer (`null` when it is not JSON).
async fn override_raw(
    app: &Client,
    id: &str,
    token: &str,
    content_type: &str,
    body: &str,
) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/jobs/{id}/override-freeze", app.base))
        .bearer_auth(token)
        .header("Content-Type", content_type)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn override_freeze(app: &Client, id: &str, token: &str, body: Value) -> (u16, Value) {
    override_raw(app, id, token, "application/json", &body.to_string()).await
}

/// The status and error code of a refusal.
fn refusal((status, body): (u16, Value)) -> (u16, String) {
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (status, code)
}

on_each_store!(TestStore: an_operator_overrides_a_config_freeze_for_one_job);

/// The real binary on each store, against the fake Artifactory: a job frozen by a
/// config freeze active now shows the freeze and its end; an override is refused
/// without a comment, to a token outside the freeze's `override_groups`, to a `read`
/// token and on a job that is not frozen; a proper one runs the job once, on the
/// record with the operator and the comment.
async fn an_operator_overrides_a_config_freeze_for_one_job(store: TestStore) {
    let fake = FakeArtifactory::start().await;
    fake.put("docker-dev", "app", "1.0.0", "sha256:0123");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_on(
        dir.path(),
        &fake.uri(),
        &guarded_rules(3600),
        "30s",
        &store.url(dir.path()),
    );

    // Without workers nothing freezes a job: a queued job has no freeze to override.
    let http_only =
        ChildApp::start_with(&config, free_port(), &["--no-workers"], Stdio::null()).await;
    let (prod, qa) = jobs_of(http_only.client.send("ci", BODY).await).await;
    assert_eq!(http_only.client.job(&prod).await["state"], "queued");
    let hotfix = serde_json::json!({"comment": "hotfix"});
    let answer = override_freeze(&http_only.client, &prod, ALICE, hotfix.clone()).await;
    assert_eq!(refusal(answer), (409, "invalid_state".into()));
    http_only.terminate(Duration::from_secs(10)).await;

    let app = ChildApp::start(&config, free_port()).await;
    let c = &app.client;
    assert_eq!(c.wait_final(&qa).await["state"], "succeeded");
    let job = c.wait_for(&prod, |j| j["state"] == "frozen").await;
    assert_eq!(
        job["frozen"]["by"],
        serde_json::json!(["release-day"]),
        "{job:#}"
    );
    let listed: Value = c
        .get("/api/v1/freezes", Some(VIEWER_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(job["frozen"]["until"], listed["freezes"][0]["ends_at"]);
    assert!(job.get("freeze_override").is_none(), "{job:#}");
    let frozen: Value = c
        .get("/api/v1/jobs?state=frozen", Some(VIEWER_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(frozen["jobs"][0]["frozen"], job["frozen"]);

    let refused = |token: &'static str, body: Value| {
        let prod = prod.clone();
        async move { refusal(override_freeze(c, &prod, token, body).await) }
    };
    let comment_required = (400, "comment_required".to_string());
    assert_eq!(
        refused(ALICE, serde_json::json!({})).await,
        comment_required
    );
    let blank = serde_json::json!({"comment": "  "});
    assert_eq!(refused(ALICE, blank).await, comment_required);
    let unknown_field = serde_json::json!({"comment": "x", "why": "y"});
    assert_eq!(
        refused(ALICE, unknown_field).await,
        (400, "invalid_body".into())
    );
    let not_json = override_raw(c, &prod, ALICE, "text/plain", "hotfix").await;
    assert_eq!(not_json.0, 415);
    assert_eq!(
        refused(EVE, hotfix.clone()).await,
        (403, "not_an_overrider".into())
    );
    assert_eq!(
        refused(VIEWER_TOKEN, hotfix.clone()).await,
        (403, "forbidden".into())
    );
    let answer = override_freeze(c, "01J0000000000000000000000", ALICE, hotfix.clone()).await;
    assert_eq!(refusal(answer), (404, "job_not_found".into()));
    let answer = override_freeze(c, &qa, ALICE, hotfix.clone()).await;
    assert_eq!(refusal(answer), (409, "invalid_state".into()));
    assert_eq!(c.job(&prod).await["state"], "frozen");
    assert_eq!(
        fake.promote_calls(),
        1,
        "only the job to qa reached the target"
    );

    let why = serde_json::json!({"comment": "customer outage: ship the fix"});
    let (status, job) = override_freeze(c, &prod, ALICE, why).await;
    assert_eq!(status, 200, "{job:#}");
    assert_eq!(job["state"], "queued");
    assert!(job.get("frozen").is_none(), "{job:#}");
    let o = &job["freeze_override"];
    assert_eq!(
        (&o["by"], &o["comment"]),
        (&"alice".into(), &"customer outage: ship the fix".into())
    );
    assert_eq!(o["freezes"], serde_json::json!(["release-day"]));

    let done = c.wait_final(&prod).await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(done["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(done["freeze_override"], job["freeze_override"]);
    assert_eq!(fake.promote_calls(), 2);
    assert_eq!(fake.effects_on("docker-prod", "app", "1.0.0"), 1);
    assert_eq!(
        c.kinds(&prod).await,
        [
            "job.created",
            "job.frozen",
            "job.freeze_overridden",
            "job.attempt",
            "job.succeeded"
        ]
    );
    let record = &c.audit("kind=job.freeze_overridden").await[0];
    assert_eq!(
        (&record["actor"], &record["job_id"]),
        (&"alice".into(), &prod.as_str().into())
    );
    assert_eq!(
        record["message"],
        "overrode release-day: customer outage: ship the fix"
    );
    let answer = override_freeze(c, &prod, ALICE, hotfix).await;
    assert_eq!(refusal(answer), (409, "invalid_state".into()));
    app.terminate(Duration::from_secs(10)).await;
}

/// The override lets the job through the freezes it was shown, not through one
/// started after them: a run-time freeze started while the job was frozen holds it
/// again at once (the overridden config freeze, still active, no longer named), and
/// overriding that one too lets it run.
#[tokio::test]
async fn an_override_does_not_let_a_job_through_a_freeze_started_after_it() {
    let app = spawn_app(&guarded_rules(600)).await;
    app.upstream_answers(200).await;
    let (prod, qa) = jobs_of(app.send("ci", BODY).await).await;
    app.wait_final(&qa).await;
    let job = app.wait_for(&prod, |j| j["state"] == "frozen").await;
    assert_eq!(job["frozen"]["by"], serde_json::json!(["release-day"]));

    let until = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let freeze = serde_json::json!({"name": "hotfix", "to_repos": ["docker-prod"],
        "until": until, "reason": "incident 42"});
    let r = app.post_json("/api/v1/freezes", OPS_TOKEN, &freeze).await;
    assert_eq!(r.status(), 201);
    let first = serde_json::json!({"comment": "release-day does not apply"});
    assert_eq!(override_freeze(&app, &prod, ALICE, first).await.0, 200);
    let job = app
        .wait_for(&prod, |j| {
            j["frozen"]["by"] == serde_json::json!(["hotfix"])
        })
        .await;
    assert_eq!(
        job["frozen"]["by"],
        serde_json::json!(["hotfix"]),
        "{job:#}"
    );
    assert_eq!(job["attempts"].as_array().unwrap().len(), 0);
    assert_eq!(posts(&app.upstream).await, 1);

    // A run-time freeze has no override groups: eve may override it.
    let second = serde_json::json!({"comment": "hotfix is for the other service"});
    let (status, job) = override_freeze(&app, &prod, EVE, second).await;
    assert_eq!(status, 200, "{job:#}");
    assert_eq!(job["freeze_override"]["by"], "eve");
    assert_eq!(
        job["freeze_override"]["freezes"],
        serde_json::json!(["release-day", "hotfix"])
    );
    assert_eq!(app.wait_final(&prod).await["state"], "succeeded");
    assert_eq!(posts(&app.upstream).await, 2);
    assert_eq!(
        app.kinds(&prod).await,
        [
            "job.created",
            "job.frozen",
            "job.freeze_overridden",
            "job.frozen",
            "job.freeze_overridden",
            "job.attempt",
            "job.succeeded"
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn the_cli_shows_and_overrides_a_frozen_job() {
    use crate::cli::admin;
    let app = spawn_app(&guarded_rules(600)).await;
    app.upstream_answers(200).await;
    let (prod, qa) = jobs_of(app.send("ci", BODY).await).await;
    app.wait_final(&qa).await;
    app.wait_for(&prod, |j| j["state"] == "frozen").await;
    let (code, stdout, stderr) = admin(&app.base, VIEWER_TOKEN, &["jobs", "show", &prod]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("frozen    by release-day until "),
        "{stdout}"
    );

    let (code, _, stderr) = admin(&app.base, ALICE, &["jobs", "override-freeze", &prod]).await;
    assert_eq!(code, 2, "--comment is required: {stderr}");
    let args = ["jobs", "override-freeze", &prod, "--comment", "hotfix"];
    let (code, _, stderr) = admin(&app.base, EVE, &args).await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("403") && stderr.contains("not_an_overrider"),
        "{stderr}"
    );
    let (code, stdout, stderr) = admin(&app.base, ALICE, &args).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, format!("job {prod} is queued\n"));
    assert_eq!(app.wait_final(&prod).await["state"], "succeeded");
    assert_eq!(posts(&app.upstream).await, 2);
    let (code, stdout, _) = admin(&app.base, VIEWER_TOKEN, &["jobs", "show", &prod]).await;
    assert_eq!(code, 0);
    assert!(
        stdout.contains("override  of release-day by alice at ") && stdout.contains(": hotfix\n"),
        "{stdout}"
    );
    assert!(!stdout.contains("frozen    by"), "{stdout}");
    let (code, _, stderr) = admin(&app.base, ALICE, &args).await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("409") && stderr.contains("invalid_state"),
        "{stderr}"
    );
    app.stop().await;
}
