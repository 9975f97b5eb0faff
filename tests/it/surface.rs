//! The operator surface: the OpenAPI document covers every route, every admin route
//! wants a token of the right role, the events, rules and simulate endpoints answer,
//! and a metrics scrape counts what happened.

use serde_json::Value;
use wiremock::matchers::method;
use wiremock::{Mock, ResponseTemplate};

use crate::harness::{OPS_TOKEN, VIEWER_TOKEN, spawn_app};

const RULES: &str = r#"
[[rules]]
name = "to-staging"
source = "ci"
event = "test-passed"
match = { tag = "semver:>=1.0.0" }
action = { type = "promote", target = "jfrog", to_repo = "staging" }
"#;

#[tokio::test]
async fn the_openapi_document_covers_every_route() {
    let app = spawn_app("").await;
    let doc: Value = app.get("/openapi.json", None).await.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (method, path) in gantry::api::ENDPOINTS {
        assert!(
            paths.get(*path).and_then(|p| p.get(*method)).is_some(),
            "{method} {path} is routed but not in /openapi.json"
        );
        // And it really is routed: not the catch-all 404.
        let r = reqwest::Client::new()
            .request(
                method.to_uppercase().parse().unwrap(),
                format!("{}{}", app.base, path),
            )
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_ne!(body["error"]["code"], "not_found", "{method} {path}");
    }
    let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(
        documented,
        gantry::api::ENDPOINTS.len(),
        "the document lists no route that is not mounted"
    );
    assert!(doc["components"]["securitySchemes"]["token"].is_object());
    app.stop().await;
}

#[tokio::test]
async fn every_admin_route_wants_a_token_of_the_right_role() {
    let app = spawn_app("").await;
    let admin: Vec<&(&str, &str)> = gantry::api::ENDPOINTS
        .iter()
        .filter(|(_, p)| p.starts_with("/api/"))
        .collect();
    assert_eq!(admin.len(), 22);
    let client = reqwest::Client::new();
    for (method, path) in admin {
        let path = path
            .replace("{id}", "01J0000000000000000000000")
            .replace("{name}", "no-such-name");
        // The operator verbs that take a comment.
        let verdict = path.ends_with("/approve")
            || path.ends_with("/reject")
            || path.ends_with("/override-freeze");
        let call = |token: Option<&str>| {
            let mut req = client.request(
                method.to_uppercase().parse().unwrap(),
                format!("{}{path}", app.base),
            );
            if verdict {
                req = req.json(&serde_json::json!({"comment": "x"}));
            } else if *method == "post" {
                req = req.json(&serde_json::json!({"source": "ci", "body": {"event": "x"}}));
            }
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            req.send()
        };
        for token in [None, Some("not-a-token")] {
            let r = call(token).await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path} with {token:?}");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "unauthorized");
        }
        let freezes = path.starts_with("/api/v1/freezes") && *method != "get";
        let operate = path.ends_with("/retry")
            || path.ends_with("/cancel")
            || path.ends_with("/enable")
            || path.ends_with("/reload")
            || verdict
            || freezes;
        let as_viewer = call(Some(VIEWER_TOKEN)).await.unwrap().status().as_u16();
        let as_ops = call(Some(OPS_TOKEN)).await.unwrap().status().as_u16();
        if operate {
            assert_eq!(as_viewer, 403, "{method} {path}");
            // Past auth: no such job or freeze, or (starting a freeze) not a freeze,
            // or (a reload) no config file to re-read in this in-process app.
            let past_auth = if (*method == "post" && freezes) || path.ends_with("/reload") {
                400
            } else {
                404
            };
            assert_eq!(as_ops, past_auth, "{method} {path}: past auth");
        } else {
            assert!(
                as_viewer != 401 && as_viewer != 403,
                "{method} {path}: {as_viewer}"
            );
            assert_eq!(as_viewer, as_ops, "{method} {path}");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn events_rules_and_simulate() {
    let app = spawn_app(RULES).await;
    app.upstream_answers(200).await;
    let body =
        br#"{"event":"test-passed","repo":"dev","image":"app","tag":"1.2.0","digest":"sha256:ab"}"#;
    let answer: Value = app.send("ci", body).await.json().await.unwrap();
    let event_id = answer["event_id"].as_str().unwrap();
    let job_id = answer["jobs"][0]["id"].as_str().unwrap();
    app.wait_final(job_id).await;
    assert_eq!(
        app.send("ci", br#"{"event":"build-started"}"#)
            .await
            .status(),
        202
    );

    let events: Value = app
        .get("/api/v1/events?source=ci", Some(VIEWER_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    let listed = events["events"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{events:#}");
    assert_eq!(listed[0]["type"], "build-started", "newest first");
    assert_eq!(listed[1]["id"], event_id);
    assert_eq!(
        listed[1]["jobs"],
        serde_json::json!([{"id": job_id, "rule": "to-staging", "state": "succeeded"}])
    );
    let one: Value = app
        .get(&format!("/api/v1/events/{event_id}"), Some(VIEWER_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (one["tag"].as_str(), one["digest"].as_str()),
        (Some("1.2.0"), Some("sha256:ab"))
    );
    assert_eq!(one["payload"]["image"], "app");
    let internal: Value = app
        .get(
            "/api/v1/events?source=gantry&type=gantry.promoted",
            Some(VIEWER_TOKEN),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(internal["events"][0]["parent_job_id"], job_id);
    let paged: Value = app
        .get("/api/v1/events?limit=1", Some(VIEWER_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(paged["events"].as_array().unwrap().len(), 1);
    assert!(paged["next"].is_string());
    assert_eq!(
        app.get("/api/v1/events/nope", Some(VIEWER_TOKEN))
            .await
            .status(),
        404
    );

    let rules: Value = app
        .get("/api/v1/rules", Some(VIEWER_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    let rule = &rules["rules"][0];
    assert_eq!(rule["name"], "to-staging");
    assert_eq!(rule["match"]["tag"], "semver:>=1.0.0");
    assert_eq!(rule["action"]["to_repo"], "staging");
    assert_eq!(rule["retry"]["max_attempts"], 4);
    assert_eq!(rule["needs"], serde_json::json!(["image", "tag"]));

    let sim: Value = reqwest::Client::new()
        .post(format!("{}/api/v1/simulate", app.base))
        .bearer_auth(VIEWER_TOKEN)
        .json(&serde_json::json!({"source": "ci", "body": {"event": "test-passed", "repo": "dev", "image": "app", "tag": "2.0.0"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let p = &sim["events"][0]["promotions"][0];
    assert_eq!(p["rule"], "to-staging");
    assert_eq!(
        p["action"]["to"],
        serde_json::json!({"repo": "staging", "image": "app", "tag": "2.0.0"})
    );
    // Simulation stores nothing.
    let events: Value = app
        .get("/api/v1/events", Some(VIEWER_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(events["events"].as_array().unwrap().len(), 3);
    app.stop().await;
}

/// The value of one sample line of a scrape, by its name and labels as printed.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
}

#[tokio::test]
async fn a_scrape_counts_what_happened() {
    let app = spawn_app(RULES).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&app.upstream)
        .await;
    app.upstream_answers(200).await;
    // 3 accepted (2 with a job), 1 duplicate, 2 rejected, 1 from an unknown source.
    let mut jobs = Vec::new();
    for tag in ["1.0.0", "1.1.0", "0.1.0"] {
        let body = format!(r#"{{"event":"test-passed","repo":"dev","image":"app","tag":"{tag}"}}"#);
        let answer: Value = app.send("ci", body.as_bytes()).await.json().await.unwrap();
        jobs.extend(
            answer["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_str().unwrap().to_string()),
        );
    }
    let again = br#"{"event":"test-passed","repo":"dev","image":"app","tag":"1.0.0"}"#;
    assert_eq!(app.send("ci", again).await.status(), 200);
    assert_eq!(
        app.post_hook("ci", b"{}", &[("X-Signature", "sha256=00")])
            .await
            .status(),
        401
    );
    assert_eq!(app.send("ci", b"{").await.status(), 400);
    assert_eq!(app.send("no-such-source", b"{}").await.status(), 404);
    assert_eq!(jobs.len(), 2);
    for id in &jobs {
        assert_eq!(app.wait_final(id).await["state"], "succeeded");
    }

    let scrape = app.get("/metrics", None).await.text().await.unwrap();
    let value = |series: &str| {
        sample(&scrape, series).unwrap_or_else(|| panic!("no {series} in\n{scrape}"))
    };
    assert_eq!(
        value(r#"gantry_events_received_total{source="ci",result="accepted"}"#),
        3.0
    );
    assert_eq!(
        value(r#"gantry_events_received_total{source="ci",result="duplicate"}"#),
        1.0
    );
    assert_eq!(
        value(r#"gantry_events_received_total{source="ci",result="rejected"}"#),
        2.0
    );
    assert_eq!(
        value(r#"gantry_events_received_total{source="unknown",result="rejected"}"#),
        1.0
    );
    assert_eq!(
        value(r#"gantry_attempts_total{target="jfrog",outcome="upstream_unavailable"}"#),
        1.0
    );
    assert_eq!(
        value(r#"gantry_attempts_total{target="jfrog",outcome="promoted"}"#),
        2.0
    );
    assert_eq!(
        value(r#"gantry_upstream_duration_seconds_count{target="jfrog"}"#),
        3.0
    );
    assert_eq!(value(r#"gantry_jobs{state="succeeded"}"#), 2.0);
    assert_eq!(value(r#"gantry_jobs{state="queued"}"#), 0.0);
    assert_eq!(value("gantry_queue_depth"), 0.0);
    assert_eq!(value("gantry_queue_oldest_age_seconds"), 0.0);
    assert_eq!(value(r#"gantry_circuit_open{target="jfrog"}"#), 0.0);
    app.stop().await;
}
