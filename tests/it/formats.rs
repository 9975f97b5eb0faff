//! The registry formats of SPEC §16 over HTTP: Harbor (Default and CloudEvents), Quay,
//! Docker Hub, ACR and any CloudEvents sender, each stored as the events its body
//! names, with their jobs, deduplicated; bodies naming too many artifacts are refused
//! whole; `simulate` reads every format.

use serde_json::{Value, json};

use crate::harness::{
    TestApp, VIEWER_TOKEN, cli_sign, fixture, spawn_app, spawn_app_on, spawn_app_with_env,
};
use crate::stores::TestStore;

/// One source per format. Quay and Docker Hub cannot sign: their secret is in the URL.
const SOURCES: &str = r#"
[[sources]]
name = "harbor"
format = "harbor"
verify = { scheme = "token", header = "Authorization", secrets = ["harbor-auth-header"] }

[[sources]]
name = "quay"
format = "quay"
verify = { scheme = "url-token", secrets = ["quay-token"] }

[[sources]]
name = "dockerhub"
format = "dockerhub"
verify = { scheme = "url-token", secrets = ["hub-token"] }

[[sources]]
name = "acr"
format = "acr"
verify = { scheme = "token", header = "X-Gantry-Token", secrets = ["acr-token"] }

[[sources]]
name = "events"
format = "cloudevents"
verify = { scheme = "token", header = "Authorization", secrets = ["ce-token"] }
fields = { repo = "/repository/namespace", image = "/repository/name", tag = "/resources/0/tag", digest = "/resources/0/digest" }

[[rules]]
name = "pushed-to-staging"
source = ["harbor", "quay", "dockerhub", "acr", "events"]
event = ["harbor.push_artifact", "harbor.artifact.pushed", "quay.repo_push", "dockerhub.push", "acr.push", "dev.ci.*"]
match = { repo = ["team-a", "acme"] }          # not staging: registries echo promotions
action = { type = "promote", target = "jfrog", to_repo = "staging" }
"#;

const HARBOR_DIGEST: &str =
    "sha256:6a1f1b3b2c5d7e9f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6071";
const ACR_DIGEST: &str = "sha256:80f0d5c8786bb9e621a45ece0db56d11cdc624ad20da9fe62e9d25490f331d7d";

async fn post(app: &TestApp, source: &str, body: &[u8], headers: &[(&str, &str)]) -> (u16, Value) {
    let mut all = cli_sign(&app.config, source, body);
    // A `url-token` source's secret goes in the query of the URL `gantry sign` prints.
    let query = all
        .iter()
        .find(|(k, _)| k == "URL")
        .and_then(|(_, url)| url.split_once('?'))
        .map(|(_, q)| q.to_string());
    all.retain(|(k, _)| k != "URL");
    all.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let refs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let hook = match query {
        Some(q) => format!("{source}?{q}"),
        None => source.to_string(),
    };
    let r = app.post_hook(&hook, body, &refs).await;
    (r.status().as_u16(), r.json().await.unwrap())
}

/// The event ids a receipt names, one per event of the body.
fn event_ids(answer: &Value) -> Vec<String> {
    match answer["events"].as_array() {
        Some(events) => events
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_string())
            .collect(),
        None => vec![answer["event_id"].as_str().unwrap().to_string()],
    }
}

/// Type, subject and delivery id of a stored event.
async fn stored(app: &TestApp, id: &str) -> Value {
    let e: Value = app
        .get(&format!("/api/v1/events/{id}"), Some(VIEWER_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    json!([
        e["type"],
        e["repo"],
        e["image"],
        e["tag"],
        e["digest"],
        e["delivery_id"],
        e["jobs"].as_array().unwrap().len()
    ])
}

fn hash(body: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(body)))
}

on_each_store!(TestStore: every_registry_format_is_stored_with_its_jobs_and_replays_are_duplicates);

async fn every_registry_format_is_stored_with_its_jobs_and_replays_are_duplicates(
    store: TestStore,
) {
    let app = spawn_app_on(SOURCES, &store).await;
    let harbor = fixture("harbor-push-artifact.json");
    let harbor_ce = fixture("harbor-push-artifact-cloudevents.json");
    let quay = fixture("quay-repo-push.json");
    let hub = fixture("dockerhub-push.json");
    let acr = fixture("acr-push.json");
    let data = br#"{"repository":{"name":"api","namespace":"team-a"},"resources":[{"tag":"1.5.0","digest":"sha256:15"}]}"#;
    let binary = [
        ("ce-specversion", "1.0"),
        ("ce-id", "run-9"),
        ("ce-source", "https://ci.example/p/7"),
        ("ce-type", "dev.ci.tests.passed"),
    ];
    let structured = [("Content-Type", "application/cloudevents+json")];
    type Case<'a> = (&'a str, &'a [u8], &'a [(&'a str, &'a str)], Vec<Value>);
    let cases: Vec<Case> = vec![
        (
            "harbor",
            &harbor,
            &[],
            vec![json!([
                "harbor.push_artifact",
                "team-a",
                "api",
                "1.4.2",
                HARBOR_DIGEST,
                format!("{}#0", hash(&harbor)),
                1
            ])],
        ),
        (
            "harbor",
            &harbor_ce,
            &structured,
            vec![json!([
                "harbor.artifact.pushed",
                "team-a",
                "api",
                "1.4.3",
                HARBOR_DIGEST,
                "4b1f7c0e-2f2d-4c43-9f3e-7d2a0c5e9b11",
                1
            ])],
        ),
        (
            "quay",
            &quay,
            &[],
            vec![
                json!([
                    "quay.repo_push",
                    "team-a",
                    "web",
                    "2.0.0",
                    null,
                    format!("{}#2.0.0", hash(&quay)),
                    1
                ]),
                json!([
                    "quay.repo_push",
                    "team-a",
                    "web",
                    "latest",
                    null,
                    format!("{}#latest", hash(&quay)),
                    1
                ]),
            ],
        ),
        (
            "dockerhub",
            &hub,
            &[],
            vec![json!([
                "dockerhub.push",
                "acme",
                "worker",
                "3.1.0",
                null,
                hash(&hub),
                1
            ])],
        ),
        (
            "acr",
            &acr,
            &[],
            vec![json!([
                "acr.push",
                "team-a",
                "cache",
                "5.0.0",
                ACR_DIGEST,
                "cb8c3971-9adc-488b-a1b2-43cbb4974ff5",
                1
            ])],
        ),
        (
            "events",
            &harbor_ce,
            &structured,
            vec![json!([
                "harbor.artifact.pushed",
                "team-a",
                "api",
                "1.4.3",
                HARBOR_DIGEST,
                "/projects/3/webhook/policies/7 4b1f7c0e-2f2d-4c43-9f3e-7d2a0c5e9b11",
                1
            ])],
        ),
        (
            "events",
            data,
            &binary,
            vec![json!([
                "dev.ci.tests.passed",
                "team-a",
                "api",
                "1.5.0",
                "sha256:15",
                "https://ci.example/p/7 run-9",
                1
            ])],
        ),
    ];
    let mut jobs = 0;
    for (source, body, headers, expected) in &cases {
        let (status, answer) = post(&app, source, body, headers).await;
        assert_eq!(status, 202, "{source}: {answer}");
        let ids = event_ids(&answer);
        let mut seen = Vec::new();
        for id in &ids {
            seen.push(stored(&app, id).await);
        }
        assert_eq!(&seen, expected, "{source}");
        jobs += answer["jobs"].as_array().unwrap().len();

        let (status, replay) = post(&app, source, body, headers).await;
        assert_eq!(status, 200, "{source} replay: {replay}");
        assert_eq!(replay["duplicate"], true);
        assert_eq!(event_ids(&replay), ids);
    }
    assert_eq!(jobs, 8);
    let received = app.audit("kind=event.received&limit=1000").await;
    assert_eq!(received.len(), 8);
    app.stop().await;
}

/// A Harbor body of 10,000 resources and a Quay body of 10,000 tags: past
/// `server.max_body_bytes` they are refused before parsing; within it, past the
/// 1000 events one body may become, they are refused whole. Nothing is stored.
/// 1000 tags are stored in one transaction and answered in one receipt.
#[tokio::test]
async fn bodies_naming_thousands_of_artifacts_are_refused_whole() {
    let resources = |n: usize| {
        (0..n)
            .map(|i| format!(r#"{{"tag":"1.0.{i}","digest":"sha256:{i:064x}"}}"#))
            .collect::<Vec<_>>()
            .join(",")
    };
    let harbor = format!(
        r#"{{"type":"PUSH_ARTIFACT","event_data":{{"resources":[{}],"repository":{{"name":"api","namespace":"team-a"}}}}}}"#,
        resources(10_000)
    );
    let tags = |n: usize| {
        (0..n)
            .map(|i| format!(r#""1.0.{i}""#))
            .collect::<Vec<_>>()
            .join(",")
    };
    let quay = |n| {
        format!(
            r#"{{"name":"web","namespace":"team-a","updated_tags":[{}]}}"#,
            tags(n)
        )
    };

    // The test config's 64 KiB: neither body is read.
    let app = spawn_app(SOURCES).await;
    for (source, body) in [("harbor", &harbor), ("quay", &quay(10_000))] {
        let (status, answer) = post(&app, source, body.as_bytes(), &[]).await;
        assert_eq!(
            (status, &answer["error"]["code"]),
            (413, &json!("payload_too_large")),
            "{source}"
        );
    }
    app.stop().await;

    // 4 MiB: both are read, and refused for what they would become.
    let app = spawn_app_with_env(SOURCES, &[("GANTRY__SERVER__MAX_BODY_BYTES", "4194304")]).await;
    for (source, body, list) in [
        ("harbor", &harbor, "resources"),
        ("quay", &quay(10_000), "updated_tags"),
    ] {
        let (status, answer) = post(&app, source, body.as_bytes(), &[]).await;
        assert_eq!(status, 413, "{source}: {answer}");
        assert_eq!(answer["error"]["code"], "too_many_events");
        assert_eq!(
            answer["error"]["message"],
            format!(
                "the body lists 10000 entries in `{list}`; one body becomes at most 1000 events"
            )
        );
    }
    assert!(app.audit("kind=event.received").await.is_empty());

    let (status, answer) = post(&app, "quay", quay(1000).as_bytes(), &[]).await;
    assert_eq!(status, 202, "{answer}");
    let events = answer["events"].as_array().unwrap();
    assert_eq!(events.len(), 1000);
    assert!(
        events
            .iter()
            .all(|e| e["duplicate"] == false && e["jobs"].as_array().unwrap().len() == 1)
    );
    assert_eq!(answer["jobs"].as_array().unwrap().len(), 1000);
    assert_eq!(
        app.audit("kind=event.received&limit=1000").await.len(),
        1000
    );
    app.stop().await;
}

#[tokio::test]
async fn simulate_reads_every_new_format() {
    let app = spawn_app(SOURCES).await;
    let body = |name: &str| serde_json::from_slice::<Value>(&fixture(name)).unwrap();
    let cases = [
        (
            "harbor",
            body("harbor-push-artifact.json"),
            json!({}),
            vec!["1.4.2"],
        ),
        (
            "harbor",
            body("harbor-push-artifact-cloudevents.json"),
            json!({}),
            vec!["1.4.3"],
        ),
        (
            "quay",
            body("quay-repo-push.json"),
            json!({}),
            vec!["2.0.0", "latest"],
        ),
        (
            "quay",
            json!({"name": "web", "namespace": "team-a", "updated_tags": {"3.0.0": "b1c2"}}),
            json!({}),
            vec!["3.0.0"],
        ),
        (
            "dockerhub",
            body("dockerhub-push.json"),
            json!({}),
            vec!["3.1.0"],
        ),
        ("acr", body("acr-push.json"), json!({}), vec!["5.0.0"]),
        (
            "events",
            json!({"repository": {"name": "api", "namespace": "team-a"}, "resources": [{"tag": "1.6.0"}]}),
            json!({"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/ci", "ce-type": "dev.ci.tests.passed"}),
            vec!["1.6.0"],
        ),
    ];
    for (source, body, headers, tags) in cases {
        let request = json!({"source": source, "body": body, "headers": headers});
        let r = app
            .post_json("/api/v1/simulate", VIEWER_TOKEN, &request)
            .await;
        assert_eq!(r.status(), 200, "{source}");
        let answer: Value = r.json().await.unwrap();
        let events = answer["events"].as_array().unwrap();
        let seen: Vec<(&str, &str)> = events
            .iter()
            .map(|e| {
                let promotion = &e["promotions"][0]["action"];
                assert_eq!(promotion["to"]["repo"], "staging", "{source}: {e}");
                (
                    e["event"]["tag"].as_str().unwrap(),
                    promotion["to"]["tag"].as_str().unwrap(),
                )
            })
            .collect();
        let expected: Vec<(&str, &str)> = tags.iter().map(|t| (*t, *t)).collect();
        assert_eq!(seen, expected, "{source}");
    }
    let bad = json!({"source": "quay", "body": {"name": "web"}});
    let r = app.post_json("/api/v1/simulate", VIEWER_TOKEN, &bad).await;
    assert_eq!(r.status(), 400);
    app.stop().await;
}

#[test]
fn check_knows_what_each_new_format_carries_and_reads() {
    let config = |extra: &str| {
        format!(
            r#"
[[sources]]
name = "harbor"
format = "harbor"
verify = {{ scheme = "token", header = "Authorization", secrets = ["env:SET_SECRET"] }}

[[sources]]
name = "quay"
format = "quay"
verify = {{ scheme = "token", header = "X-Token", secrets = ["env:SET_SECRET"] }}

[[targets]]
name = "harbor"
kind = "oci"
url = "http://127.0.0.1:1"
{extra}"#
        )
    };
    let (code, stderr) = crate::cli::check(&config(""));
    assert_eq!(code, 0, "{stderr}");

    // A push to Harbor comes back from Harbor as a push: a rule on any of its
    // repositories feeds itself.
    let (code, stderr) = crate::cli::check(&config(
        r#"
[[rules]]
name = "retag"
source = "harbor"
event = "harbor.push_artifact"
action = { type = "promote", target = "harbor", to_repo = "team-a", to_tag = "{{tag}}-ok" }
"#,
    ));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("rules[retag]: promotions can loop: retag → retag"),
        "{stderr}"
    );

    // Quay names no digest, so a gate cannot correlate its events by one.
    let (code, stderr) = crate::cli::check(&config(
        r#"
[[rules]]
name = "gated"
source = "harbor"
match = { repo = "dev" }
gate = { within = "1h", require = [{ name = "pushed", source = "quay" }] }
action = { type = "promote", target = "harbor", to_repo = "prod" }
"#,
    ));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("source `quay` sends events that never carry `digest`"),
        "{stderr}"
    );

    // Only pointer-mapped formats take `fields`; a CloudEvent's delivery is its own.
    let (code, stderr) = crate::cli::check(&format!(
        "{}\n{}",
        config("").replace(
            "format = \"quay\"\n",
            "format = \"quay\"\nfields = { tag = \"/x\" }\n"
        ),
        r#"
[[sources]]
name = "events"
format = "cloudevents"
verify = { scheme = "token", header = "Authorization", secrets = ["env:SET_SECRET"] }
fields = { tag = "/release" }
delivery_header = "X-Id"
"#
    ));
    assert_eq!(code, 2);
    assert!(
        stderr.contains(
            "sources[quay].fields: applies only to the generic, github and cloudevents formats"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "sources[events].delivery_header: applies only to the generic and github formats"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("sources[events].fields"), "{stderr}");
}
