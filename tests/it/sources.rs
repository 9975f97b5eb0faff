//! Every sender gantry supports, end to end: signed by `gantry sign`, verified over
//! HTTP, normalized, deduplicated.

use serde_json::Value;

use crate::harness::{MORE_SOURCES, REGISTRY_TOKEN, VIEWER_TOKEN, cli_sign, fixture, spawn_app};

async fn post(
    app: &crate::harness::TestApp,
    source: &str,
    body: &[u8],
    headers: &[(String, String)],
) -> (u16, Value) {
    let refs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let r = app.post_hook(source, body, &refs).await;
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn every_scheme_verifies_what_gantry_sign_printed_and_dedupes_replays() {
    let app = spawn_app(MORE_SOURCES).await;
    // (source, body, headers beyond the signature, the event type it becomes)
    type Case<'a> = (&'a str, &'a [u8], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 6] = [
        ("ci", br#"{"event":"test-passed","tag":"1"}"#, &[], "test-passed"),
        ("artifactory", &fixture("artifactory-build-promoted.json"), &[], "build.promoted"),
        (
            "github",
            br#"{"action":"published","release":{"tag_name":"v2.0.0"},"repository":{"name":"api"}}"#,
            &[("X-GitHub-Event", "release")],
            "release.published",
        ),
        ("sw", br#"{"event":"deployed","tag":"7"}"#, &[], "deployed"),
        ("registry", &fixture("registry-manifest-push.json"), &[], "registry.push"),
        (
            "gitlab",
            br#"{"object_kind":"tag_push","ref":"v3","project":{"path_with_namespace":"g/app"}}"#,
            &[("X-Gitlab-Event", "Tag Push Hook"), ("X-Gitlab-Event-UUID", "uuid-1")],
            "Tag Push Hook",
        ),
    ];
    for (source, body, extra, kind) in cases {
        let mut headers = cli_sign(&app.config, source, body);
        assert!(!headers.is_empty(), "{source}");
        headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let (status, answer) = post(&app, source, body, &headers).await;
        assert_eq!(status, 202, "{source}: {answer}");
        let event_id = answer["event_id"].as_str().unwrap().to_string();
        let (status, replay) = post(&app, source, body, &headers).await;
        assert_eq!(status, 200, "{source} replay: {replay}");
        assert_eq!(replay["duplicate"], true);
        assert_eq!(replay["event_id"], event_id.as_str());
        let received = app.audit("kind=event.received&limit=1000").await;
        let record = received
            .iter()
            .find(|r| r["event_id"] == event_id.as_str())
            .unwrap();
        assert_eq!(record["actor"], source);
        assert!(
            record["message"].as_str().unwrap().starts_with(kind),
            "{record}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_registry_envelope_stores_each_event_and_promotes_only_tagged_manifests() {
    let app = spawn_app(&format!(
        r#"{MORE_SOURCES}
[[rules]]
name = "dev-to-staging"
source = "registry"
event = "registry.push"
match = {{ repo = "dev" }}
action = {{ type = "promote", target = "jfrog", to_repo = "staging" }}
"#
    ))
    .await;
    let body = br#"{"events":[
        {"id":"ev-1","action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","repository":"dev/app","tag":"1.0.0","digest":"sha256:aa"}},
        {"id":"ev-2","action":"push","target":{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","repository":"dev/app","digest":"sha256:bb"}},
        {"id":"ev-3","action":"pull","target":{"repository":"dev/app","tag":"1.0.0","digest":"sha256:aa"}}
    ]}"#;
    let auth = [(
        "Authorization".to_string(),
        format!("Bearer {REGISTRY_TOKEN}"),
    )];
    let (status, answer) = post(&app, "registry", body, &auth).await;
    assert_eq!(status, 202, "{answer}");
    let events = answer["events"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(answer["event_id"], events[0]["event_id"]);
    let jobs: Vec<&Value> = events.iter().map(|e| &e["jobs"]).collect();
    assert_eq!(jobs[0].as_array().unwrap().len(), 1);
    assert_eq!(jobs[1], &serde_json::json!([]));
    assert_eq!(jobs[2], &serde_json::json!([]));
    assert_eq!(answer["jobs"].as_array().unwrap().len(), 1);

    // The registry retries the same envelope: nothing new is stored.
    let (status, replay) = post(&app, "registry", body, &auth).await;
    assert_eq!(status, 200);
    assert!(
        replay["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["duplicate"] == true)
    );
    // A new envelope holding one old and one new event is partly new: 202.
    let mixed = br#"{"events":[
        {"id":"ev-3","action":"pull","target":{"repository":"dev/app","tag":"1.0.0"}},
        {"id":"ev-4","action":"push","target":{"repository":"dev/app","tag":"1.0.1","digest":"sha256:cc"}}]}"#;
    let (status, answer) = post(&app, "registry", mixed, &auth).await;
    assert_eq!(status, 202);
    assert_eq!(answer["events"][0]["duplicate"], true);
    assert_eq!(answer["events"][1]["duplicate"], false);

    let received = app.audit("kind=event.received").await;
    assert_eq!(received.len(), 4);
    let jobs: Value = app
        .get("/api/v1/jobs", Some(VIEWER_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn check_flags_a_source_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.toml");
    std::fs::write(
        &path,
        r#"
[[sources]]
name = "sw"
format = "generic"
verify = { scheme = "standard-webhooks", secrets = [] }
"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: sources[sw].verify.secrets: lists no secret"),
        "{stderr}"
    );
}
