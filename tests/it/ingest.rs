//! What `POST /hooks/{source}` answers, and what it stores.

use serde_json::Value;

use crate::harness::{CI_SECRET, CI_SECRET_OLD, VIEWER_TOKEN, hmac_hex, spawn_app};

const MATCHERS: &str = r#"
[[rules]]
name = "stable"
source = "ci"
event = "test-*"
match = { tag = "semver:>=1.0.0, <2" }
action = { type = "promote", target = "jfrog", to_repo = "stable" }

[[rules]]
name = "not-rc-not-team-b"
source = ["ci"]
event = ["test-passed", "scan-passed"]
match = { tag = "!*-rc*", image = "!team-b/*" }
action = { type = "promote", target = "jfrog", to_repo = "qa" }

[[rules]]
name = "main-branch"
event = "test-passed"
when = { "/attributes/branch" = ["main", "re:^release/"] }
action = { type = "promote", target = "jfrog", to_repo = "main" }
"#;

async fn json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

fn rules_of(answer: &Value) -> Vec<String> {
    answer["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["rule"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn semver_negation_lists_and_when_conditions_select_rules() {
    let app = spawn_app(MATCHERS).await;
    let cases = [
        (
            r#"{"event":"test-passed","repo":"dev","image":"team-a/x","tag":"1.4.2"}"#,
            vec!["stable", "not-rc-not-team-b"],
        ),
        (
            r#"{"event":"test-passed","repo":"dev","image":"team-a/x","tag":"0.9.0"}"#,
            vec!["not-rc-not-team-b"],
        ),
        (
            r#"{"event":"test-passed","repo":"dev","image":"team-a/x","tag":"2.0.0-rc1"}"#,
            vec![],
        ),
        (
            r#"{"event":"test-passed","repo":"dev","image":"team-b/x","tag":"1.0.0"}"#,
            vec!["stable"],
        ),
        (
            r#"{"event":"test-passed","repo":"dev","image":"team-a/x","tag":"v1.2.0"}"#,
            vec!["stable", "not-rc-not-team-b"],
        ),
        (
            r#"{"event":"scan-passed","repo":"dev","image":"team-a/x","tag":"1.2.0"}"#,
            vec!["not-rc-not-team-b"],
        ),
        (
            r#"{"event":"test-passed","repo":"dev","image":"team-b/x","tag":"9","attributes":{"branch":"main"}}"#,
            vec!["main-branch"],
        ),
        (
            r#"{"event":"test-passed","repo":"dev","image":"team-b/x","tag":"9","attributes":{"branch":"release/2"}}"#,
            vec!["main-branch"],
        ),
        (
            r#"{"event":"test-passed","repo":"dev","image":"team-b/x","tag":"9","attributes":{"branch":"feature"}}"#,
            vec![],
        ),
        // A missing field never matches, even a negated matcher.
        (r#"{"event":"test-passed","repo":"dev","tag":"9"}"#, vec![]),
    ];
    for (body, expected) in cases {
        let (status, answer) = json(app.send("ci", body.as_bytes()).await).await;
        assert_eq!(status, 202, "{body}: {answer}");
        assert_eq!(rules_of(&answer), expected, "{body}");
    }
    app.stop().await;
}

#[tokio::test]
async fn no_match_is_accepted_and_stored_with_no_jobs() {
    let app = spawn_app(MATCHERS).await;
    let (status, answer) = json(
        app.send("ci", br#"{"event":"build-started","tag":"1.0.0"}"#)
            .await,
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(answer["jobs"], serde_json::json!([]));
    assert_eq!(answer["duplicate"], false);
    let event_id = answer["event_id"].as_str().unwrap();
    let received = app.audit("kind=event.received").await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0]["event_id"], event_id);
    assert!(app.audit("kind=job.created").await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_duplicate_delivery_is_answered_200_and_stored_once() {
    let app = spawn_app(MATCHERS).await;
    let body = br#"{"event":"test-passed","repo":"dev","image":"team-a/x","tag":"1.4.2"}"#;
    let (first_status, first) = json(app.send("ci", body).await).await;
    let (second_status, second) = json(app.send("ci", body).await).await;
    assert_eq!((first_status, second_status), (202, 200));
    assert_eq!(second["duplicate"], true);
    assert_eq!(second["event_id"], first["event_id"]);
    assert_eq!(second["jobs"], first["jobs"]);

    let jobs: Value = app
        .get("/api/v1/jobs", Some(VIEWER_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 2);
    assert_eq!(app.audit("kind=event.received").await.len(), 1);
    assert_eq!(app.audit("kind=event.duplicate").await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_rotated_out_secret_still_verifies_while_listed() {
    let app = spawn_app("").await;
    let body = br#"{"event":"x"}"#;
    let sig = format!("sha256={}", hmac_hex(CI_SECRET_OLD, body));
    let resp = app.post_hook("ci", body, &[("X-Signature", &sig)]).await;
    assert_eq!(resp.status(), 202);
    // Upper-case hex is the same bytes.
    let body = br#"{"event":"y"}"#;
    let sig = format!("sha256={}", hmac_hex(CI_SECRET, body).to_uppercase());
    let resp = app.post_hook("ci", body, &[("X-Signature", &sig)]).await;
    assert_eq!(resp.status(), 202);
    app.stop().await;
}

#[tokio::test]
async fn registry_media_types_count_as_json() {
    let app = spawn_app("").await;
    let body = br#"{"event":"x"}"#;
    let sig = format!("sha256={}", hmac_hex(CI_SECRET, body));
    let resp = reqwest::Client::new()
        .post(format!("{}/hooks/ci", app.base))
        .header(
            "Content-Type",
            "application/vnd.docker.distribution.events.v1+json",
        )
        .header("X-Signature", sig)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    app.stop().await;
}

#[tokio::test]
async fn hostile_signed_bodies_never_cause_a_server_error() {
    let app = spawn_app(MATCHERS).await;
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let pieces: [&[u8]; 12] = [
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"event\"",
        b":",
        b",",
        b"\"test-passed\"",
        b"1e999",
        b"\"\\u0000\"",
        b"null",
        b"\xff\xfe",
    ];
    for _ in 0..300 {
        let len = (next() % 40) as usize;
        let body: Vec<u8> = (0..len)
            .flat_map(|_| pieces[(next() % pieces.len() as u64) as usize].to_vec())
            .collect();
        let status = app.send("ci", &body).await.status().as_u16();
        assert!(
            matches!(status, 200 | 202 | 400 | 413),
            "{status} for {body:?}"
        );
    }
    app.stop().await;
}
