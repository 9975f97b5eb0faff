//! The admin API: tokens and roles, job listings, operator actions.

use serde_json::Value;
use wiremock::matchers::method;
use wiremock::{Mock, ResponseTemplate};

use crate::harness::{OPS_TOKEN, VIEWER_TOKEN, spawn_app};

const RULE: &str = r#"
[[rules]]
name = "r"
source = "ci"
event = "test-passed"
action = { type = "promote", target = "jfrog", to_repo = "staging" }
"#;

async fn send_one(app: &crate::harness::TestApp, tag: &str) -> String {
    let body = format!(r#"{{"event":"test-passed","repo":"dev","image":"app","tag":"{tag}"}}"#);
    let v: Value = app.send("ci", body.as_bytes()).await.json().await.unwrap();
    v["jobs"][0]["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn admin_routes_need_a_token_and_the_right_role() {
    let app = spawn_app(RULE).await;
    let reads = ["/api/v1/jobs", "/api/v1/jobs/x", "/api/v1/audit"];
    for path in reads {
        assert_eq!(app.get(path, None).await.status(), 401, "{path}");
        assert_eq!(app.get(path, Some("wrong")).await.status(), 401, "{path}");
        let body: Value = app.get(path, None).await.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    assert_eq!(
        app.get("/api/v1/jobs", Some(VIEWER_TOKEN)).await.status(),
        200
    );
    assert_eq!(app.get("/api/v1/jobs", Some(OPS_TOKEN)).await.status(), 200);
    for path in ["/api/v1/jobs/x/retry", "/api/v1/jobs/x/cancel"] {
        assert_eq!(app.post(path, None).await.status(), 401, "{path}");
        let r = app.post(path, Some(VIEWER_TOKEN)).await;
        assert_eq!(r.status(), 403, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "forbidden");
        assert_eq!(
            app.post(path, Some(OPS_TOKEN)).await.status(),
            404,
            "{path}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn an_operator_retry_revives_a_failed_job_and_keeps_its_history() {
    let app = spawn_app(RULE).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(403).set_body_string("forbidden by permission target"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&app.upstream)
        .await;
    app.upstream_answers(200).await;
    let id = send_one(&app, "1.0.0").await;
    assert_eq!(app.wait_final(&id).await["state"], "failed");

    let r = app
        .post(&format!("/api/v1/jobs/{id}/retry"), Some(OPS_TOKEN))
        .await;
    assert_eq!(r.status(), 200);
    let job = app.wait_final(&id).await;
    assert_eq!(job["state"], "succeeded");
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["upstream_status"], 403);
    assert_eq!(attempts[1]["n"], 2);
    assert_eq!(attempts[1]["upstream_status"], 200);

    let retried = app.audit(&format!("job={id}&kind=job.retried")).await;
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0]["actor"], "ops");

    // A succeeded job can be neither retried nor cancelled.
    for action in ["retry", "cancel"] {
        let r = app
            .post(&format!("/api/v1/jobs/{id}/{action}"), Some(OPS_TOKEN))
            .await;
        assert_eq!(r.status(), 409);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_state");
    }
    app.stop().await;
}

#[tokio::test]
async fn jobs_are_listed_newest_first_filtered_and_paged() {
    let app = spawn_app(RULE).await;
    app.upstream_answers(400).await;
    let mut ids = Vec::new();
    for tag in ["1", "2", "3"] {
        let id = send_one(&app, tag).await;
        app.wait_final(&id).await;
        ids.push(id);
    }
    let page: Value = app
        .get(
            "/api/v1/jobs?limit=2&state=failed&rule=r",
            Some(VIEWER_TOKEN),
        )
        .await
        .json()
        .await
        .unwrap();
    let listed: Vec<&str> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [ids[2].as_str(), ids[1].as_str()]);
    let next = page["next"].as_str().unwrap();
    let page: Value = app
        .get(
            &format!("/api/v1/jobs?limit=2&after={next}"),
            Some(VIEWER_TOKEN),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["jobs"][0]["id"], ids[0].as_str());
    assert_eq!(page["next"], Value::Null);

    let none: Value = app
        .get("/api/v1/jobs?state=succeeded", Some(VIEWER_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(none["jobs"], serde_json::json!([]));
    let bad = app.get("/api/v1/jobs?state=done", Some(VIEWER_TOKEN)).await;
    assert_eq!(bad.status(), 400);
    app.stop().await;
}

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app("").await;
    assert_eq!(app.get("/healthz", None).await.status(), 200);
    assert_eq!(app.get("/readyz", None).await.status(), 200);
    let r = app.get("/nowhere", None).await;
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    app.stop().await;
}
