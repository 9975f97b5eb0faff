//! The `oci` target against real registries (Debian's `docker-registry`): mounts
//! within a registry, streams between two, indexes with their children, moves,
//! idempotent re-runs, bearer token auth, registry notifications end to end, and
//! bounded memory for a 200 MB layer.

use std::time::{Duration, Instant};

use serde_json::Value;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::harness::{ChildApp, REGISTRY_TOKEN, TestApp, free_port, spawn_app, write_config};
use crate::registry::{Auth, RegistryOptions, RegistryProc, TokenServer, notifications, ulid_like};

fn targets(reg: &str, other: Option<&str>) -> String {
    let mut t = format!("[[targets]]\nname = \"reg\"\nkind = \"oci\"\nurl = \"{reg}\"\n");
    if let Some(o) = other {
        t.push_str(&format!(
            "\n[[targets]]\nname = \"other\"\nkind = \"oci\"\nurl = \"{o}\"\n"
        ));
    }
    t
}

const RULES: &str = r#"
[[rules]]
name = "to-staging"
source = "ci"
event = "test-passed"
match = { repo = "dev" }
action = { type = "promote", target = "reg", to_repo = "staging" }

[[rules]]
name = "move"
source = "ci"
event = "move"
action = { type = "promote", target = "reg", to_repo = "moved", copy = false }
"#;

const CROSS: &str = r#"
[[rules]]
name = "to-other"
source = "ci"
event = "ship"
action = { type = "promote", target = "reg", to_target = "other", to_repo = "prod" }
"#;

async fn promote(app: &TestApp, event: &str, tag: &str, digest: &str) -> Value {
    let body = format!(
        r#"{{"event":"{event}","repo":"dev","image":"app","tag":"{tag}","digest":"{digest}","run":"{}"}}"#,
        ulid_like()
    );
    let answer: Value = app.send("ci", body.as_bytes()).await.json().await.unwrap();
    let id = answer["jobs"][0]["id"].as_str().expect("a job").to_string();
    app.wait_final(&id).await
}

async fn wait_until<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn same_registry_promotions_mount_keep_digests_and_rerun_as_noop() {
    let notified = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&notified)
        .await;
    let reg = RegistryProc::start(RegistryOptions {
        notify: Some((format!("{}/events", notified.uri()), "Bearer n".into())),
        ..RegistryOptions::default()
    })
    .await;
    let app = spawn_app(&format!("{}\n{RULES}", targets(&reg.base, None))).await;

    let layers = vec![
        format!("layer one {}", ulid_like()).into_bytes(),
        format!("layer two {}", ulid_like()).into_bytes(),
    ];
    let image = reg.push_image("dev/app", "1.0.0", &layers, None).await;
    let (index, children) = reg.push_index("dev/app", "2.0.0").await;

    let job = promote(&app, "test-passed", "1.0.0", &image).await;
    assert_eq!(
        (job["state"].as_str(), job["outcome"].as_str()),
        (Some("succeeded"), Some("promoted")),
        "{job:#}"
    );
    assert_eq!(
        reg.manifest_digest("staging/app", "1.0.0", None)
            .await
            .as_deref(),
        Some(image.as_str())
    );
    let job = promote(&app, "test-passed", "2.0.0", &index).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(
        reg.manifest_digest("staging/app", "2.0.0", None)
            .await
            .as_deref(),
        Some(index.as_str())
    );
    for child in &children {
        assert_eq!(
            reg.manifest_digest("staging/app", child, None)
                .await
                .as_deref(),
            Some(child.as_str())
        );
    }

    // No blob bytes were uploaded to staging: every blob arrived by mount.
    wait_until("the manifest push notifications for staging", || async {
        notifications(&notified)
            .await
            .iter()
            .filter(|e| {
                e["action"] == "push"
                    && e["target"]["repository"] == "staging/app"
                    && e["target"]["tag"].is_string()
            })
            .count()
            == 2
    })
    .await;
    let events = notifications(&notified).await;
    let staging: Vec<&Value> = events
        .iter()
        .filter(|e| e["target"]["repository"] == "staging/app")
        .collect();
    let blob_pushes = staging
        .iter()
        .filter(|e| {
            // Blob events carry application/octet-stream; manifests and indexes
            // carry their own types.
            e["action"] == "push" && e["target"]["mediaType"] == "application/octet-stream"
        })
        .count();
    assert_eq!(blob_pushes, 0, "blob bytes were re-uploaded: {staging:#?}");
    // config + 2 layers, and per child of the index a config and a layer.
    let mounts = staging.iter().filter(|e| e["action"] == "mount").count();
    assert_eq!(mounts, 3 + 2 * 2, "{staging:#?}");

    // A second run finds the work done.
    let again = promote(&app, "test-passed", "1.0.0", &image).await;
    assert_eq!(again["outcome"], "noop");
    let again = promote(&app, "test-passed", "2.0.0", &index).await;
    assert_eq!(again["outcome"], "noop");

    // The tested digest or nothing: a re-pushed tag is refused.
    let moved = reg
        .push_image("dev/app", "1.0.0", &[b"another build".to_vec()], None)
        .await;
    let refused = promote(&app, "test-passed", "1.0.0", &image).await;
    assert_eq!(refused["last_error"]["code"], "digest_mismatch");
    assert!(
        refused["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains(&moved)
    );
    app.stop().await;
}

#[tokio::test]
async fn promotes_an_index_between_two_registries() {
    let a = RegistryProc::start(RegistryOptions::default()).await;
    let b = RegistryProc::start(RegistryOptions::default()).await;
    let app = spawn_app(&format!(
        "{}\n{RULES}\n{CROSS}",
        targets(&a.base, Some(&b.base))
    ))
    .await;
    let (index, children) = a.push_index("dev/app", "3.0.0").await;
    let job = promote(&app, "ship", "3.0.0", &index).await;
    assert_eq!(
        (job["state"].as_str(), job["outcome"].as_str()),
        (Some("succeeded"), Some("promoted")),
        "{job:#}"
    );
    assert_eq!(
        b.manifest_digest("prod/app", "3.0.0", None)
            .await
            .as_deref(),
        Some(index.as_str())
    );
    for child in &children {
        assert_eq!(
            b.manifest_digest("prod/app", child, None).await.as_deref(),
            Some(child.as_str())
        );
    }
    let again = promote(&app, "ship", "3.0.0", &index).await;
    assert_eq!(again["outcome"], "noop");
    app.stop().await;
}

#[tokio::test]
async fn a_move_removes_the_source_tag() {
    let reg = RegistryProc::start(RegistryOptions::default()).await;
    let app = spawn_app(&format!("{}\n{RULES}", targets(&reg.base, None))).await;
    let image = reg
        .push_image(
            "dev/app",
            "4.0.0",
            &[format!("move me {}", ulid_like()).into_bytes()],
            None,
        )
        .await;
    let job = promote(&app, "move", "4.0.0", &image).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(
        reg.manifest_digest("moved/app", "4.0.0", None)
            .await
            .as_deref(),
        Some(image.as_str())
    );
    assert_eq!(
        reg.manifest_digest("dev/app", "4.0.0", None).await,
        None,
        "the source tag is gone"
    );
    // Retried after the move, the job sees it done.
    let again = promote(&app, "move", "4.0.0", &image).await;
    assert_eq!(again["outcome"], "noop", "{again:#}");
    app.stop().await;
}

#[tokio::test]
async fn a_bearer_token_protected_registry() {
    let tokens = TokenServer::start("robot", "s3cret").await;
    let reg = RegistryProc::start(RegistryOptions {
        auth: Auth::Token {
            realm: tokens.realm(),
            cert: tokens.cert.clone(),
        },
        ..RegistryOptions::default()
    })
    .await;
    let anonymous = reqwest::get(format!("{}/v2/", reg.base)).await.unwrap();
    assert_eq!(anonymous.status(), 401, "the registry wants a token");
    let push = tokens.token_for("robot", "s3cret", "dev/app").await;
    let image = reg
        .push_image(
            "dev/app",
            "5.0.0",
            &[format!("secret layer {}", ulid_like()).into_bytes()],
            Some(&push),
        )
        .await;

    let app = spawn_app(&format!(
        "[[targets]]\nname = \"reg\"\nkind = \"oci\"\nurl = \"{}\"\nusername = \"robot\"\npassword = \"s3cret\"\n{RULES}",
        reg.base
    ))
    .await;
    let job = promote(&app, "test-passed", "5.0.0", &image).await;
    assert_eq!(job["state"], "succeeded", "{job:#}\n{}", reg.log());
    let read = tokens.token_for("robot", "s3cret", "staging/app").await;
    assert_eq!(
        reg.manifest_digest("staging/app", "5.0.0", Some(&read))
            .await
            .as_deref(),
        Some(image.as_str())
    );
    // Tokens are cached: one per scope, not one per request.
    let issued = tokens.server.received_requests().await.unwrap().len();
    assert!(issued <= 8, "{issued} token requests");
    app.stop().await;
}

#[tokio::test]
async fn a_registry_push_is_promoted_end_to_end_through_its_notifications() {
    let port = free_port();
    let app = spawn_app(&format!(
        r#"{}
[[sources]]
name = "registry"
format = "registry"
verify = {{ scheme = "token", header = "Authorization", secrets = ["env:TEST_REGISTRY_TOKEN"] }}

[[rules]]
name = "dev-to-staging"
source = "registry"
event = "registry.push"
match = {{ repo = "dev" }}
action = {{ type = "promote", target = "reg", to_repo = "staging" }}
"#,
        targets(&format!("http://127.0.0.1:{port}"), None)
    ))
    .await;
    let reg = RegistryProc::start(RegistryOptions {
        port: Some(port),
        notify: Some((
            format!("{}/hooks/registry", app.base),
            format!("Bearer {REGISTRY_TOKEN}"),
        )),
        ..RegistryOptions::default()
    })
    .await;
    // Only the registry is touched from here on.
    let image = reg
        .push_image(
            "dev/app",
            "1.0.0",
            &[format!("e2e {}", ulid_like()).into_bytes()],
            None,
        )
        .await;
    wait_until("staging/app:1.0.0", || async {
        reg.manifest_digest("staging/app", "1.0.0", None)
            .await
            .is_some()
    })
    .await;
    assert_eq!(
        reg.manifest_digest("staging/app", "1.0.0", None)
            .await
            .as_deref(),
        Some(image.as_str())
    );
    app.stop().await;
}

/// Peak resident memory of a process, from /proc (kB → MB).
fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024.0
}

#[tokio::test]
async fn a_200_mb_layer_streams_between_registries_in_bounded_memory() {
    let a = RegistryProc::start(RegistryOptions::default()).await;
    let b = RegistryProc::start(RegistryOptions::default()).await;
    // 200 MB of incompressible bytes.
    let mut layer = vec![0u8; 200 * 1024 * 1024];
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for chunk in layer.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let image = a.push_image("dev/big", "1.0.0", &[layer], None).await;

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "http://127.0.0.1:1",
        &format!(
            "{}\n{}",
            targets(&a.base, Some(&b.base))
                .replace("kind = \"oci\"", "kind = \"oci\"\ntimeout = \"120s\""),
            CROSS
        ),
        "30s",
    );
    let gantry = ChildApp::start(&config, free_port()).await;
    let before = peak_rss_mb(gantry.pid());
    let body = format!(
        r#"{{"event":"ship","repo":"dev","image":"big","tag":"1.0.0","digest":"{image}"}}"#
    );
    let started = Instant::now();
    let answer: Value = gantry
        .client
        .send("ci", body.as_bytes())
        .await
        .json()
        .await
        .unwrap();
    let job = gantry
        .client
        .wait_final(answer["jobs"][0]["id"].as_str().unwrap())
        .await;
    let took = started.elapsed();
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(
        b.manifest_digest("prod/big", "1.0.0", None)
            .await
            .as_deref(),
        Some(image.as_str())
    );
    let peak = peak_rss_mb(gantry.pid());
    println!(
        "200 MB layer promoted across registries in {took:.1?}; gantry peak RSS {before:.1} MB before, {peak:.1} MB after"
    );
    assert!(peak < 100.0, "peak RSS {peak:.1} MB");
}

/// A registry (wiremock) whose `dev/app:1.0.0` is an image of one blob, its config.
/// Returns the server, the manifest's digest and the blob's.
pub async fn one_blob_image() -> (MockServer, String, String) {
    use sha2::Digest;
    use wiremock::matchers::path;
    let reg = MockServer::start().await;
    let config = b"{}".to_vec();
    let blob = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&config)));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": blob, "size": config.len()},
        "layers": [],
    })
    .to_string();
    let digest = format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(manifest.as_bytes()))
    );
    let manifest_response = ResponseTemplate::new(200)
        .insert_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .insert_header("Docker-Content-Digest", digest.as_str())
        .set_body_bytes(manifest.into_bytes());
    Mock::given(path("/v2/dev/app/manifests/1.0.0"))
        .respond_with(manifest_response)
        .mount(&reg)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/v2/dev/app/blobs/{blob}")))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(config))
        .mount(&reg)
        .await;
    (reg, digest, blob)
}

pub const STAGING_TAG: &str = "/v2/staging/app/manifests/1.0.0";

/// The destination tag answers 404 `absent` times, then (unless `None`) `digest`.
pub async fn staging_tag(reg: &MockServer, absent: u64, digest: Option<&str>) {
    use wiremock::matchers::path;
    Mock::given(method("HEAD"))
        .and(path(STAGING_TAG))
        .respond_with(ResponseTemplate::new(404))
        .up_to_n_times(absent)
        .with_priority(1)
        .mount(reg)
        .await;
    if let Some(digest) = digest {
        Mock::given(method("HEAD"))
            .and(path(STAGING_TAG))
            .respond_with(ResponseTemplate::new(200).insert_header("Docker-Content-Digest", digest))
            .mount(reg)
            .await;
    }
}

/// [`one_blob_image`], where `staging/app` lacks the blob, offers no mount (202) and
/// refuses the upload with 400 DIGEST_INVALID, as Docker Distribution does to one of
/// two simultaneous uploads of a blob. With `blob_appears`, the other upload landed:
/// the blob is there right after.
async fn racing_registry(blob_appears: bool) -> (MockServer, String) {
    use wiremock::matchers::{path, query_param};
    let (reg, digest, blob) = one_blob_image().await;
    staging_tag(&reg, 1, blob_appears.then_some(digest.as_str())).await;
    let staging_blob = format!("/v2/staging/app/blobs/{blob}");
    Mock::given(method("HEAD"))
        .and(path(staging_blob.as_str()))
        .respond_with(ResponseTemplate::new(404))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&reg)
        .await;
    Mock::given(method("HEAD"))
        .and(path(staging_blob.as_str()))
        .respond_with(ResponseTemplate::new(if blob_appears { 200 } else { 404 }))
        .mount(&reg)
        .await;
    Mock::given(method("POST"))
        .and(path("/v2/staging/app/blobs/uploads/"))
        .and(query_param("mount", blob.as_str()))
        .respond_with(ResponseTemplate::new(202).insert_header("Location", "/upload/1"))
        .mount(&reg)
        .await;
    Mock::given(method("PUT"))
        .and(path("/upload/1"))
        .respond_with(ResponseTemplate::new(400).set_body_string(
            r#"{"errors":[{"code":"DIGEST_INVALID","message":"provided digest did not match uploaded content"}]}"#,
        ))
        .mount(&reg)
        .await;
    Mock::given(method("PUT"))
        .and(path(STAGING_TAG))
        .respond_with(ResponseTemplate::new(201))
        .mount(&reg)
        .await;
    (reg, digest)
}

/// [`one_blob_image`], where `staging/app` has the blob and refuses the first
/// manifest PUT with 400 and the registry error `code`, then accepts it.
async fn manifest_refused_once(code: &str) -> (MockServer, String) {
    use wiremock::matchers::path;
    let (reg, digest, blob) = one_blob_image().await;
    staging_tag(&reg, 2, Some(&digest)).await;
    Mock::given(method("HEAD"))
        .and(path(format!("/v2/staging/app/blobs/{blob}")))
        .respond_with(ResponseTemplate::new(200))
        .mount(&reg)
        .await;
    let refusal = format!(r#"{{"errors":[{{"code":"{code}","message":"refused"}}]}}"#);
    Mock::given(method("PUT"))
        .and(path(STAGING_TAG))
        .respond_with(ResponseTemplate::new(400).set_body_string(refusal))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&reg)
        .await;
    Mock::given(method("PUT"))
        .and(path(STAGING_TAG))
        .respond_with(ResponseTemplate::new(201))
        .mount(&reg)
        .await;
    (reg, digest)
}

async fn manifest_puts(reg: &MockServer) -> usize {
    let requests = reg.received_requests().await.unwrap_or_default();
    requests
        .iter()
        .filter(|r| r.method.as_str() == "PUT" && r.url.path().contains("/manifests/"))
        .count()
}

#[tokio::test]
async fn a_refused_blob_upload_is_retried() {
    let (reg, digest) = racing_registry(false).await;
    let app = spawn_app(&format!("{}\n{RULES}", targets(&reg.uri(), None))).await;
    let body = format!(
        r#"{{"event":"test-passed","repo":"dev","image":"app","tag":"1.0.0","digest":"{digest}"}}"#
    );
    let answer: Value = app.send("ci", body.as_bytes()).await.json().await.unwrap();
    let id = answer["jobs"][0]["id"].as_str().expect("a job").to_string();
    let job = app.wait_final(&id).await;
    // Every attempt (the test config allows 4) tried the upload again.
    assert_eq!(job["state"], "failed", "{job:#}");
    let attempts = job["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 4, "{job:#}");
    assert!(
        attempts
            .iter()
            .all(|a| a["error"]["code"] == "upstream_rejected"),
        "{job:#}"
    );
    assert_eq!(manifest_puts(&reg).await, 0, "no manifest without its blob");
}

#[tokio::test]
async fn a_refused_blob_upload_is_fine_when_the_blob_is_there() {
    let (reg, digest) = racing_registry(true).await;
    let app = spawn_app(&format!("{}\n{RULES}", targets(&reg.uri(), None))).await;
    let job = promote(&app, "test-passed", "1.0.0", &digest).await;
    assert_eq!(
        (job["state"].as_str(), job["outcome"].as_str()),
        (Some("succeeded"), Some("promoted")),
        "{job:#}"
    );
    assert_eq!(job["attempts"].as_array().map(Vec::len), Some(1), "{job:#}");
    assert_eq!(manifest_puts(&reg).await, 1);
}

/// A manifest refused because the registry cannot see a blob yet (one mounted by a
/// concurrent promotion) is put again by the next attempt; any other 400 is final.
#[tokio::test]
async fn a_manifest_refused_for_an_unseen_blob_is_retried() {
    for (code, state, attempts) in [
        ("MANIFEST_BLOB_UNKNOWN", "succeeded", 2),
        ("BLOB_UNKNOWN", "succeeded", 2),
        ("MANIFEST_INVALID", "failed", 1),
    ] {
        let (reg, digest) = manifest_refused_once(code).await;
        let app = spawn_app(&format!("{}\n{RULES}", targets(&reg.uri(), None))).await;
        let job = promote(&app, "test-passed", "1.0.0", &digest).await;
        let tried = job["attempts"].as_array().map(Vec::len);
        assert_eq!(
            (job["state"].as_str(), tried),
            (Some(state), Some(attempts)),
            "{code}: {job:#}"
        );
        assert_eq!(job["attempts"][0]["error"]["code"], "upstream_rejected");
        assert_eq!(manifest_puts(&reg).await, attempts, "{code}");
    }
}

/// A copy is verified: the digest the registry says it stored under the tag (or, when
/// its answer names none, the tag's digest read back) must be the source's.
#[tokio::test]
async fn a_copy_the_registry_did_not_store_as_sent_is_not_a_success() {
    use wiremock::matchers::path;
    let other = format!("sha256:{:0>64}", "e");
    for answered in [Some(other.as_str()), None] {
        let (reg, digest, blob) = one_blob_image().await;
        staging_tag(&reg, u64::MAX, None).await;
        Mock::given(method("HEAD"))
            .and(path(format!("/v2/staging/app/blobs/{blob}")))
            .respond_with(ResponseTemplate::new(200))
            .mount(&reg)
            .await;
        let mut stored = ResponseTemplate::new(201);
        if let Some(d) = answered {
            stored = stored.insert_header("Docker-Content-Digest", d);
        }
        Mock::given(method("PUT"))
            .and(path(STAGING_TAG))
            .respond_with(stored)
            .mount(&reg)
            .await;
        let app = spawn_app(&format!("{}\n{RULES}", targets(&reg.uri(), None))).await;
        let job = promote(&app, "test-passed", "1.0.0", &digest).await;
        assert_eq!(job["state"], "failed", "{job:#}");
        let message = job["attempts"][0]["error"]["message"]
            .as_str()
            .unwrap_or("");
        let points_at = answered.unwrap_or("nothing");
        assert!(
            message.contains(&format!("points at {points_at}, not {digest}")),
            "{message}"
        );
        assert_eq!(job["attempts"].as_array().map(Vec::len), Some(4));
    }
}
