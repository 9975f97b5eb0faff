//! SPEC §13 at the target side, played by an attacker: signed events whose values try
//! to leave their repository, upstreams that send credentials' worth of redirects,
//! realms and upload locations to other hosts, a move on a digest that other tags
//! share, and answers too large to hold.

use serde_json::{Value, json};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::harness::{TestApp, spawn_app};
use crate::oci::{STAGING_TAG, one_blob_image, staging_tag};
use crate::registry::{IMAGE, RegistryOptions, RegistryProc, ulid_like};

const OCI_RULES: &str = r#"
[[rules]]
name = "to-staging"
source = "ci"
event = "ship"
action = { type = "promote", target = "reg", to_repo = "staging" }

[[rules]]
name = "move"
source = "ci"
event = "move"
action = { type = "promote", target = "reg", to_repo = "moved", copy = false }
"#;

const ARTIFACTORY_RULES: &str = r#"
[[rules]]
name = "docker"
source = "ci"
event = "docker"
action = { type = "promote", target = "jfrog", to_repo = "docker-prod" }

[[rules]]
name = "npm"
source = "ci"
event = "npm"
action = { type = "copy", target = "jfrog", to_repo = "npm-release" }

[[rules]]
name = "build"
source = "ci"
event = "build"
action = { type = "build-promote", target = "jfrog", to_repo = "libs-release", status = "released" }

[[rules]]
name = "bundle"
source = "ci"
event = "bundle"
action = { type = "release-bundle-promote", target = "jfrog", environment = "PROD" }
"#;

/// An oci target `reg` at `url` with basic credentials, and the OCI rules.
fn oci_config(url: &str) -> String {
    format!(
        "[[targets]]\nname = \"reg\"\nkind = \"oci\"\nurl = \"{url}\"\nusername = \"robot\"\npassword = \"s3cret\"\n{OCI_RULES}"
    )
}

/// Sends a signed `ci` event and waits for its one job to end.
async fn job_for(app: &TestApp, event: Value) -> Value {
    let answer: Value = app
        .send("ci", event.to_string().as_bytes())
        .await
        .json()
        .await
        .expect("a JSON answer");
    let id = answer["jobs"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("one job for {event}: {answer:#}"))
        .to_string();
    app.wait_final(&id).await
}

/// The job failed at its first attempt with `code`, permanently.
fn assert_failed_once(job: &Value, code: &str) {
    assert_eq!(job["state"], "failed", "{job:#}");
    assert_eq!(job["last_error"]["code"], code, "{job:#}");
    assert_eq!(job["attempts"].as_array().map(Vec::len), Some(1), "{job:#}");
}

/// Requests `server` received that carried an Authorization header.
async fn authorized(server: &MockServer) -> Vec<Request> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.headers.contains_key("authorization"))
        .collect()
}

/// `http://localhost:{port}` of a wiremock server: another host than the
/// `127.0.0.1` the registry is configured with.
fn other_host(server: &MockServer) -> String {
    format!("http://localhost:{}", server.address().port())
}

#[tokio::test]
async fn an_image_name_climbing_out_of_its_repository_deletes_nothing() {
    let reg = RegistryProc::start(RegistryOptions::default()).await;
    let victim = reg
        .push_image(
            "other",
            "1",
            &[format!("victim {}", ulid_like()).into_bytes()],
            None,
        )
        .await;
    let app = spawn_app(&format!(
        "[[targets]]\nname = \"reg\"\nkind = \"oci\"\nurl = \"{}\"\n{OCI_RULES}",
        reg.base
    ))
    .await;
    // dev/app/../../other is `other` once a URL parser has resolved it, for the
    // source and for the destination moved/app/../../other alike: a move that finds
    // its "copy" done and deletes its "source".
    let job = job_for(
        &app,
        json!({"event": "move", "repo": "dev", "image": "app/../../other", "tag": "1"}),
    )
    .await;
    assert_eq!(
        reg.manifest_digest("other", "1", None).await.as_deref(),
        Some(victim.as_str()),
        "the other repository's tag is still there"
    );
    assert_failed_once(&job, "invalid_reference");
    app.stop().await;
}

#[tokio::test]
async fn hostile_oci_references_send_nothing_to_the_registry() {
    let reg = MockServer::start().await;
    let app = spawn_app(&oci_config(&reg.uri())).await;
    let long_tag = "t".repeat(129);
    let cases = [
        json!({"event": "move", "repo": "dev", "image": "app/../../other", "tag": "1"}),
        json!({"event": "move", "repo": "dev", "image": "app", "tag": "../../../other/app/manifests/1"}),
        json!({"event": "move", "repo": "dev", "image": "app", "tag": "%2e%2e"}),
        json!({"event": "move", "repo": "dev", "image": "App", "tag": "1"}),
        json!({"event": "move", "repo": "dev", "image": "app", "tag": long_tag}),
        json!({"event": "ship", "repo": "dev", "image": "app", "tag": "1", "digest": "sha256:../../x"}),
        json!({"event": "ship", "repo": "dev", "image": "app", "tag": "1", "digest": "sha256:ABC"}),
    ];
    for event in cases {
        let job = job_for(&app, event.clone()).await;
        assert_failed_once(&job, "invalid_reference");
    }
    let received = reg.received_requests().await.unwrap_or_default();
    assert_eq!(received.len(), 0, "{received:#?}");
    app.stop().await;
}

#[tokio::test]
async fn hostile_artifactory_values_send_nothing() {
    let app = spawn_app(ARTIFACTORY_RULES).await;
    let cases = [
        json!({"event": "docker", "repo": "docker-dev", "image": "app/../../x", "tag": "1"}),
        json!({"event": "docker", "repo": "..", "image": "app", "tag": "1"}),
        json!({"event": "docker", "repo": "docker-dev", "image": "app", "tag": ".."}),
        json!({"event": "npm", "repo": "npm-dev", "path": "a/../../../api/security/users"}),
        json!({"event": "npm", "repo": "npm-dev", "path": "a//b.tgz"}),
        json!({"event": "npm", "repo": ".", "path": "a/b.tgz"}),
        json!({"event": "build", "build": {"name": "..", "number": "1"}}),
        json!({"event": "build", "build": {"name": "app", "number": "."}}),
        json!({"event": "bundle", "build": {"name": "app", "number": ".."}}),
    ];
    for event in cases {
        let job = job_for(&app, event.clone()).await;
        assert_failed_once(&job, "invalid_reference");
    }
    let received = app.upstream.received_requests().await.unwrap_or_default();
    assert_eq!(received.len(), 0, "{received:#?}");
    app.stop().await;
}

#[tokio::test]
async fn an_upload_location_on_another_origin_gets_no_credentials() {
    let (reg, digest, blob) = one_blob_image().await;
    let storage = MockServer::start().await;
    staging_tag(&reg, 1, Some(&digest)).await;
    Mock::given(method("HEAD"))
        .and(path(format!("/v2/staging/app/blobs/{blob}")))
        .respond_with(ResponseTemplate::new(404))
        .mount(&reg)
        .await;
    // An S3-style upload: the Location carries its own signature.
    Mock::given(method("POST"))
        .and(path("/v2/staging/app/blobs/uploads/"))
        .respond_with(ResponseTemplate::new(202).insert_header(
            "Location",
            format!("{}/upload/1?X-Amz-Signature=abc", other_host(&storage)),
        ))
        .mount(&reg)
        .await;
    Mock::given(method("PUT"))
        .and(path(STAGING_TAG))
        .respond_with(ResponseTemplate::new(201).insert_header("Docker-Content-Digest", &digest))
        .mount(&reg)
        .await;
    Mock::given(method("PUT"))
        .and(path("/upload/1"))
        .respond_with(ResponseTemplate::new(201))
        .expect(1)
        .mount(&storage)
        .await;
    let app = spawn_app(&oci_config(&reg.uri())).await;
    let job = job_for(
        &app,
        json!({"event": "ship", "repo": "dev", "image": "app", "tag": "1.0.0", "digest": digest}),
    )
    .await;
    assert_eq!(
        (job["state"].as_str(), job["outcome"].as_str()),
        (Some("succeeded"), Some("promoted")),
        "{job:#}"
    );
    assert_eq!(authorized(&storage).await.len(), 0, "credentials leaked");
    let to_registry = reg.received_requests().await.unwrap_or_default();
    assert_eq!(
        authorized(&reg).await.len(),
        to_registry.len(),
        "the registry itself gets its credentials"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_token_realm_over_http_on_another_host_gets_no_basic_credentials() {
    let reg = MockServer::start().await;
    let tokens = MockServer::start().await;
    let challenge = format!(
        r#"Bearer realm="{}/token",service="reg",scope="repository:dev/app:pull""#,
        other_host(&tokens)
    );
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(401).insert_header("WWW-Authenticate", challenge))
        .mount(&reg)
        .await;
    Mock::given(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"token": "t"})))
        .mount(&tokens)
        .await;
    let app = spawn_app(&oci_config(&reg.uri())).await;
    let job = job_for(
        &app,
        json!({"event": "ship", "repo": "dev", "image": "app", "tag": "1"}),
    )
    .await;
    assert_failed_once(&job, "upstream_rejected");
    let asked = tokens.received_requests().await.unwrap_or_default();
    assert_eq!(asked.len(), 1, "{asked:#?}");
    assert_eq!(authorized(&tokens).await.len(), 0, "credentials leaked");
    app.stop().await;
}

/// reqwest strips Authorization on a redirect to another origin; checked here
/// because every registry call relies on it.
#[tokio::test]
async fn a_redirect_to_another_origin_carries_no_credentials() {
    let reg = MockServer::start().await;
    let elsewhere = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v2/dev/app/manifests/1"))
        .respond_with(
            ResponseTemplate::new(307)
                .insert_header("Location", format!("{}/m", other_host(&elsewhere))),
        )
        .mount(&reg)
        .await;
    let app = spawn_app(&oci_config(&reg.uri())).await;
    let job = job_for(
        &app,
        json!({"event": "ship", "repo": "dev", "image": "app", "tag": "1"}),
    )
    .await;
    assert_failed_once(&job, "upstream_rejected");
    assert_eq!(
        elsewhere.received_requests().await.map(|r| r.len()),
        Some(1)
    );
    assert_eq!(authorized(&elsewhere).await.len(), 0, "credentials leaked");
    assert!(!authorized(&reg).await.is_empty());
    app.stop().await;
}

/// The manifest bytes `repo:reference` holds.
async fn manifest_bytes(reg: &RegistryProc, repo: &str, reference: &str) -> Vec<u8> {
    let r = reqwest::Client::new()
        .get(format!("{}/v2/{repo}/manifests/{reference}", reg.base))
        .header("Accept", IMAGE)
        .send()
        .await
        .expect("the registry answers");
    assert_eq!(r.status(), 200);
    r.bytes().await.expect("a body").to_vec()
}

#[tokio::test]
async fn a_move_keeps_a_source_tag_that_shares_its_digest() {
    let reg = RegistryProc::start(RegistryOptions::default()).await;
    let layers = [format!("shared {}", ulid_like()).into_bytes()];
    let image = reg.push_image("dev/app", "6.0.0", &layers, None).await;
    let bytes = manifest_bytes(&reg, "dev/app", "6.0.0").await;
    reg.push_manifest("dev/app", "stable", IMAGE, &bytes, None)
        .await;
    let app = spawn_app(&format!(
        "[[targets]]\nname = \"reg\"\nkind = \"oci\"\nurl = \"{}\"\n{OCI_RULES}",
        reg.base
    ))
    .await;
    let event =
        json!({"event": "move", "repo": "dev", "image": "app", "tag": "6.0.0", "digest": image});
    let job = job_for(&app, event).await;
    for (repo, tag) in [
        ("dev/app", "stable"),
        ("dev/app", "6.0.0"),
        ("moved/app", "6.0.0"),
    ] {
        assert_eq!(
            reg.manifest_digest(repo, tag, None).await.as_deref(),
            Some(image.as_str()),
            "{repo}:{tag}"
        );
    }
    assert_failed_once(&job, "move_incomplete");
    let message = job["last_error"]["message"].as_str().unwrap_or_default();
    for part in ["moved/app:6.0.0", "dev/app:6.0.0", "stable", image.as_str()] {
        assert!(message.contains(part), "{part} in {message}");
    }
    // The only tag on its digest is moved as before.
    let alone = reg
        .push_image(
            "dev/app",
            "7.0.0",
            &[format!("alone {}", ulid_like()).into_bytes()],
            None,
        )
        .await;
    let event =
        json!({"event": "move", "repo": "dev", "image": "app", "tag": "7.0.0", "digest": alone});
    let job = job_for(&app, event).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(reg.manifest_digest("dev/app", "7.0.0", None).await, None);
    assert_eq!(
        reg.manifest_digest("dev/app", "stable", None)
            .await
            .as_deref(),
        Some(image.as_str())
    );
    app.stop().await;
}

#[tokio::test]
async fn a_source_tag_already_gone_is_not_deleted_by_digest() {
    let (reg, digest) = copied_and_tag_delete_answers(404).await;
    Mock::given(method("DELETE"))
        .and(path_regex("^/v2/dev/app/manifests/sha256:"))
        .respond_with(ResponseTemplate::new(202))
        .expect(0)
        .mount(&reg)
        .await;
    let app =
        spawn_app(&oci_config(&reg.uri()).replace("to_repo = \"moved\"", "to_repo = \"staging\""))
            .await;
    let job = job_for(
        &app,
        json!({"event": "move", "repo": "dev", "image": "app", "tag": "1.0.0", "digest": digest}),
    )
    .await;
    assert_eq!(
        (job["state"].as_str(), job["outcome"].as_str()),
        (Some("succeeded"), Some("promoted")),
        "{job:#}"
    );
    assert_eq!(deletes_by_digest(&reg).await, 0, "deleted by digest");
    app.stop().await;
}

#[tokio::test]
async fn a_manifest_past_4_mib_is_not_read() {
    let reg = MockServer::start().await;
    let manifest = format!(
        r#"{{"schemaVersion":2,"layers":[],"pad":"{}"}}"#,
        "x".repeat(5 << 20)
    );
    Mock::given(method("GET"))
        .and(path("/v2/dev/app/manifests/1"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("Content-Type", IMAGE)
                .set_body_string(manifest.clone()),
        )
        .mount(&reg)
        .await;
    let app = spawn_app(&oci_config(&reg.uri())).await;
    let digest = crate::registry::digest_of(manifest.as_bytes());
    let job = job_for(
        &app,
        json!({"event": "ship", "repo": "dev", "image": "app", "tag": "1", "digest": digest}),
    )
    .await;
    assert_failed_once(&job, "response_too_large");
    let message = job["last_error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("4 MiB"), "{message}");
    app.stop().await;
}

/// `npm-dev/a/b.tgz` exists with a checksum; `npm-release/a/b.tgz` does not.
async fn npm_source(app: &TestApp) {
    Mock::given(method("GET"))
        .and(path("/artifactory/api/storage/npm-dev/a/b.tgz"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"checksums": {"sha256": "ab"}})),
        )
        .mount(&app.upstream)
        .await;
    Mock::given(method("GET"))
        .and(path("/artifactory/api/storage/npm-release/a/b.tgz"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&app.upstream)
        .await;
}

#[tokio::test]
async fn an_artifactory_answer_past_1_mib_is_not_read() {
    let app = spawn_app(ARTIFACTORY_RULES).await;
    let huge = json!({"checksums": {"sha256": "ab"}, "pad": "x".repeat(2 << 20)});
    Mock::given(method("GET"))
        .and(path("/artifactory/api/storage/npm-dev/a/b.tgz"))
        .respond_with(ResponseTemplate::new(200).set_body_json(huge))
        .mount(&app.upstream)
        .await;
    let job = job_for(
        &app,
        json!({"event": "npm", "repo": "npm-dev", "path": "a/b.tgz"}),
    )
    .await;
    assert_failed_once(&job, "response_too_large");
    let message = job["last_error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("1 MiB"), "{message}");
    assert_eq!(crate::harness::posts(&app.upstream).await, 0);
    app.stop().await;
}

/// An error body is read up to 64 KiB and the rest dropped: a text past that bound
/// never reaches the job's error.
#[tokio::test]
async fn an_error_body_is_kept_only_to_64_kib() {
    let app = spawn_app(ARTIFACTORY_RULES).await;
    npm_source(&app).await;
    let body = format!("{}MARKER-PAST-THE-BOUND", " ".repeat(10 << 20));
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_string(body))
        .expect(1)
        .mount(&app.upstream)
        .await;
    let job = job_for(
        &app,
        json!({"event": "npm", "repo": "npm-dev", "path": "a/b.tgz"}),
    )
    .await;
    assert_failed_once(&job, "upstream_rejected");
    let message = job["last_error"]["message"].as_str().unwrap_or_default();
    assert!(!message.contains("MARKER"), "{message}");
    assert_eq!(job["attempts"][0]["upstream_status"], 400);
    app.stop().await;
}

/// A one-blob registry whose staging tag already holds the image (the copy is
/// done) and which answers a DELETE of `dev/app:1.0.0` by tag with `status`.
/// Returns the server and the image's digest.
async fn copied_and_tag_delete_answers(status: u16) -> (MockServer, String) {
    let (reg, digest, _) = one_blob_image().await;
    Mock::given(method("HEAD"))
        .and(path(STAGING_TAG))
        .respond_with(ResponseTemplate::new(200).insert_header("Docker-Content-Digest", &digest))
        .mount(&reg)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/v2/dev/app/manifests/1.0.0"))
        .respond_with(ResponseTemplate::new(status))
        .with_priority(1)
        .mount(&reg)
        .await;
    (reg, digest)
}

/// A registry that refuses to delete a tag alone (405) and lists `dev/app`'s tags
/// on two linked pages: `1.0.0` and `a`, then `stable`, which points at `stable`'s
/// digest, or at `1.0.0`'s when `None`. Returns the server and `1.0.0`'s digest.
async fn paged_registry(stable: Option<&str>) -> (MockServer, String) {
    use wiremock::matchers::query_param;
    let (reg, digest) = copied_and_tag_delete_answers(405).await;
    let stable = stable.map_or_else(|| digest.clone(), str::to_string);
    Mock::given(method("GET"))
        .and(path("/v2/dev/app/tags/list"))
        .and(query_param("last", "a"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"name": "dev/app", "tags": ["stable"]})),
        )
        .with_priority(1)
        .mount(&reg)
        .await;
    Mock::given(method("GET"))
        .and(path("/v2/dev/app/tags/list"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("Link", r#"</v2/dev/app/tags/list?n=2&last=a>; rel="next""#)
                .set_body_json(json!({"name": "dev/app", "tags": ["1.0.0", "a"]})),
        )
        .mount(&reg)
        .await;
    for (tag, points_at) in [("a", format!("sha256:{:0>64}", "a")), ("stable", stable)] {
        Mock::given(method("HEAD"))
            .and(path(format!("/v2/dev/app/manifests/{tag}")))
            .respond_with(
                ResponseTemplate::new(200).insert_header("Docker-Content-Digest", points_at),
            )
            .mount(&reg)
            .await;
    }
    Mock::given(method("DELETE"))
        .and(path_regex("^/v2/dev/app/manifests/sha256:"))
        .respond_with(ResponseTemplate::new(202))
        .mount(&reg)
        .await;
    (reg, digest)
}

async fn deletes_by_digest(reg: &MockServer) -> usize {
    reg.received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.method.as_str() == "DELETE" && r.url.path().contains("sha256:"))
        .count()
}

/// Every page of the tag list is read before a digest is deleted.
#[tokio::test]
async fn a_tag_on_a_later_page_keeps_the_digest() {
    let moving = json!({"event": "move", "repo": "dev", "image": "app", "tag": "1.0.0"});
    let config = |reg: &MockServer| {
        oci_config(&reg.uri()).replace("to_repo = \"moved\"", "to_repo = \"staging\"")
    };

    let (reg, digest) = paged_registry(None).await;
    let app = spawn_app(&config(&reg)).await;
    let job = job_for(&app, moving.clone()).await;
    assert_failed_once(&job, "move_incomplete");
    let message = job["last_error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("stable") && message.contains(&digest),
        "{message}"
    );
    assert_eq!(deletes_by_digest(&reg).await, 0);
    app.stop().await;

    let (reg, _) = paged_registry(Some(&format!("sha256:{:0>64}", "b"))).await;
    let app = spawn_app(&config(&reg)).await;
    let job = job_for(&app, moving).await;
    assert_eq!(
        (job["state"].as_str(), job["outcome"].as_str()),
        (Some("succeeded"), Some("promoted")),
        "{job:#}"
    );
    assert_eq!(deletes_by_digest(&reg).await, 1);
    app.stop().await;
}
