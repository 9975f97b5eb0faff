//! The `oidc` scheme (SPEC §16) against an issuer the test runs: its discovery
//! document and JWKS served by wiremock on a loopback port, its tokens signed here
//! with keys made here. The attacks first, each refused with 401; then the tokens
//! that pass, their claims stored with the event on both stores, matched by rules,
//! and a replay being a duplicate.

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::harness::{Client, TestApp, VIEWER_TOKEN, spawn_app};
use crate::stores::TestStore;

pub const AUDIENCE: &str = "gantry";
pub const BODY: &[u8] = br#"{"event":"build.done","repo":"dev","image":"api","tag":"1.0.0"}"#;

/// A signing key of the test's issuer.
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    /// The DER of the public key, for the attacks that misuse it.
    pub public_der: Vec<u8>,
}

/// PEM armour around DER, in 64-column lines.
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = BASE64.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

impl TestKey {
    pub fn rs256(kid: &str) -> TestKey {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let private: Pkcs8V1Der = pair.as_der().unwrap();
        let public: PublicKeyX509Der = pair.public_key().as_der().unwrap();
        TestKey {
            kid: kid.into(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_pem(pem("PRIVATE KEY", private.as_ref()).as_bytes())
                .unwrap(),
            public_der: public.as_ref().to_vec(),
        }
    }

    pub fn es256(kid: &str) -> TestKey {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        TestKey {
            kid: kid.into(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(pair.to_pkcs8v1().unwrap().as_ref()),
            public_der: pair.public_key().as_ref().to_vec(),
        }
    }

    pub fn eddsa(kid: &str) -> TestKey {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8v1(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        TestKey {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            public_der: pair.public_key().as_ref().to_vec(),
        }
    }

    /// The public half, as the issuer's JWKS lists it.
    pub fn jwk(&self) -> Value {
        let mut jwk = Jwk::from_encoding_key(&self.encoding, self.alg).unwrap();
        jwk.common.key_id = Some(self.kid.clone());
        serde_json::to_value(jwk).unwrap()
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

/// `header.claims.signature`, each part as JWS writes it (base64url, no padding).
pub fn raw_token(header: &Value, claims: &Value, signature: &[u8]) -> String {
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(signature)
    )
}

/// An OIDC issuer on a loopback port: discovery document and JWKS.
pub struct Issuer {
    pub server: MockServer,
}

impl Issuer {
    /// An issuer publishing `keys`.
    pub async fn start(keys: &[&TestKey]) -> Issuer {
        let jwks = json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() });
        Issuer::serving(ResponseTemplate::new(200).set_body_json(jwks)).await
    }

    /// An issuer whose JWKS endpoint answers `jwks`.
    pub async fn serving(jwks: ResponseTemplate) -> Issuer {
        let server = MockServer::start().await;
        let uri = server.uri();
        Mock::given(method("GET"))
            .and(path("/.well-known/openid-configuration"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "issuer": uri,
                "jwks_uri": format!("{uri}/jwks"),
                "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
            })))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/jwks"))
            .respond_with(jwks)
            .mount(&server)
            .await;
        Issuer { server }
    }

    pub fn url(&self) -> String {
        self.server.uri()
    }

    /// Claims as GitHub Actions would mint them for `acme/api` on main, valid now.
    pub fn claims(&self) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({
            "iss": self.url(),
            "aud": AUDIENCE,
            "sub": "repo:acme/api:ref:refs/heads/main",
            "repository": "acme/api",
            "ref": "refs/heads/main",
            "run_id": 42,
            "jti": ulid::Ulid::generate().to_string(),
            "iat": now,
            "nbf": now,
            "exp": now + 300,
        })
    }

    /// How many times gantry fetched the JWKS.
    pub async fn jwks_fetches(&self) -> usize {
        self.server
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|r| r.url.path() == "/jwks")
            .count()
    }
}

/// The `gha` source trusting `issuer`, and rules that match on its claims.
pub fn source_and_rules(issuer: &str) -> String {
    format!(
        r#"
[[sources]]
name = "gha"
format = "generic"
verify = {{ scheme = "oidc", issuer = "{issuer}", audience = "{AUDIENCE}", claims = {{ "/repository" = "acme/*", "/ref" = "refs/heads/main" }} }}

[[rules]]
name = "api-from-acme-api"
source = "gha"
event = "build.done"
claims = {{ "/repository" = "acme/api", "/run_id" = "42" }}
action = {{ type = "promote", target = "jfrog", to_repo = "staging" }}

[[rules]]
name = "web-from-acme-web"
source = "gha"
event = "build.done"
claims = {{ "/repository" = "acme/web" }}
action = {{ type = "promote", target = "jfrog", to_repo = "staging-web" }}
"#
    )
}

pub async fn post(client: &Client, body: &[u8], authorization: &str) -> (u16, Value) {
    let r = client
        .post_hook("gha", body, &[("Authorization", authorization)])
        .await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// An app trusting `issuer`, and a sender presenting `token`.
async fn app_for(issuer: &Issuer) -> TestApp {
    spawn_app(&source_and_rules(&issuer.url())).await
}

/// Sends `token`, expects a 401 whose answer does not repeat it, and returns the
/// answer's message.
async fn refused(app: &TestApp, token: &str) -> String {
    let (status, answer) = post(app, BODY, &format!("Bearer {token}")).await;
    assert_eq!(status, 401, "{answer}");
    let text = answer.to_string();
    assert!(
        !text.contains(token),
        "the answer repeats the token: {text}"
    );
    for part in token.split('.').filter(|p| p.len() > 8) {
        assert!(!text.contains(part), "the answer quotes the token: {text}");
    }
    answer["error"]["message"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_token_signed_by_a_key_the_issuer_does_not_publish_is_refused() {
    let published = TestKey::es256("k1");
    let issuer = Issuer::start(&[&published]).await;
    let app = app_for(&issuer).await;
    // Another key under an unknown kid, and another key claiming the published kid.
    let stranger = TestKey::es256("k2");
    let message = refused(&app, &stranger.sign(&issuer.claims())).await;
    assert!(
        message.contains("key the issuer does not publish"),
        "{message}"
    );
    let impostor = TestKey::es256("k1");
    let message = refused(&app, &impostor.sign(&issuer.claims())).await;
    assert!(message.contains("does not verify"), "{message}");
    app.stop().await;
}

#[tokio::test]
async fn an_unsigned_alg_none_token_is_refused() {
    let key = TestKey::es256("k1");
    let issuer = Issuer::start(&[&key]).await;
    let app = app_for(&issuer).await;
    for alg in ["none", "None", "NONE"] {
        let header = json!({ "alg": alg, "typ": "JWT", "kid": "k1" });
        let token = raw_token(&header, &issuer.claims(), b"");
        // With and without the trailing dot of an empty signature.
        refused(&app, &token).await;
        refused(&app, token.trim_end_matches('.')).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn an_hs256_token_keyed_with_the_rsa_public_key_is_refused() {
    let key = TestKey::rs256("k1");
    let issuer = Issuer::start(&[&key]).await;
    let app = app_for(&issuer).await;
    let jwk = key.jwk();
    let modulus = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(jwk["n"].as_str().unwrap())
        .unwrap();
    let public_forms = [
        pem("PUBLIC KEY", &key.public_der).into_bytes(),
        key.public_der.clone(),
        modulus,
        jwk.to_string().into_bytes(),
    ];
    for secret in public_forms {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let token = jsonwebtoken::encode(
            &header,
            &issuer.claims(),
            &EncodingKey::from_secret(&secret).unwrap(),
        )
        .unwrap();
        let message = refused(&app, &token).await;
        assert!(message.contains("HS256"), "{message}");
    }
    app.stop().await;
}

#[tokio::test]
async fn an_expired_token_is_refused_past_the_leeway() {
    let key = TestKey::es256("k1");
    let issuer = Issuer::start(&[&key]).await;
    let app = app_for(&issuer).await;
    let now = chrono::Utc::now().timestamp();
    let mut claims = issuer.claims();
    claims["iat"] = json!(now - 600);
    claims["nbf"] = json!(now - 600);
    claims["exp"] = json!(now - 120);
    let message = refused(&app, &key.sign(&claims)).await;
    assert!(message.contains("expired"), "{message}");
    // Within the default leeway of 60 s, a token just expired still counts.
    claims["exp"] = json!(now - 20);
    let (status, answer) = post(&app, BODY, &format!("Bearer {}", key.sign(&claims))).await;
    assert_eq!(status, 202, "{answer}");
    // Not valid yet, or issued in the future.
    for name in ["nbf", "iat"] {
        let mut claims = issuer.claims();
        claims[name] = json!(now + 600);
        let message = refused(&app, &key.sign(&claims)).await;
        assert!(message.contains(name), "{message}");
    }
    // Without `exp` a bearer token would be good forever.
    let mut claims = issuer.claims();
    claims.as_object_mut().unwrap().remove("exp");
    let message = refused(&app, &key.sign(&claims)).await;
    assert!(message.contains("`exp`"), "{message}");
    app.stop().await;
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused() {
    let key = TestKey::rs256("k1");
    let issuer = Issuer::start(&[&key]).await;
    let app = app_for(&issuer).await;
    for aud in [json!("sigstore"), json!(["sigstore", "other"]), json!("")] {
        let mut claims = issuer.claims();
        claims["aud"] = aud;
        let message = refused(&app, &key.sign(&claims)).await;
        assert!(message.contains("audience"), "{message}");
    }
    let mut claims = issuer.claims();
    claims.as_object_mut().unwrap().remove("aud");
    let message = refused(&app, &key.sign(&claims)).await;
    assert!(message.contains("`aud`"), "{message}");
    // A list that holds the audience is fine (RFC 7519 §4.1.3).
    let mut claims = issuer.claims();
    claims["aud"] = json!(["other", AUDIENCE]);
    let (status, answer) = post(&app, BODY, &format!("Bearer {}", key.sign(&claims))).await;
    assert_eq!(status, 202, "{answer}");
    app.stop().await;
}

#[tokio::test]
async fn a_token_from_another_issuer_is_refused() {
    let key = TestKey::eddsa("k1");
    let issuer = Issuer::start(&[&key]).await;
    let app = app_for(&issuer).await;
    let other = format!("{}/", issuer.url());
    for iss in [
        json!("https://token.actions.githubusercontent.com"),
        json!(other),
    ] {
        let mut claims = issuer.claims();
        claims["iss"] = iss;
        let message = refused(&app, &key.sign(&claims)).await;
        assert!(message.contains("another issuer"), "{message}");
    }
    let mut claims = issuer.claims();
    claims.as_object_mut().unwrap().remove("iss");
    refused(&app, &key.sign(&claims)).await;
    app.stop().await;
}

#[tokio::test]
async fn a_claim_that_does_not_match_is_refused() {
    let key = TestKey::es256("k1");
    let issuer = Issuer::start(&[&key]).await;
    let app = app_for(&issuer).await;
    let cases = [
        ("/repository", json!("evil/api")),
        ("/repository", json!("acme/api/../x")),
        ("/ref", json!("refs/heads/feature")),
        ("/ref", json!(null)),
        ("/ref", json!(["refs/heads/main"])),
    ];
    for (pointer, value) in cases {
        let mut claims = issuer.claims();
        *claims.pointer_mut(pointer).unwrap() = value;
        let message = refused(&app, &key.sign(&claims)).await;
        assert!(message.contains(pointer), "{message}");
    }
    let mut claims = issuer.claims();
    claims.as_object_mut().unwrap().remove("ref");
    refused(&app, &key.sign(&claims)).await;
    app.stop().await;
}

#[tokio::test]
async fn malformed_or_missing_bearer_tokens_are_refused() {
    let key = TestKey::es256("k1");
    let issuer = Issuer::start(&[&key]).await;
    let app = app_for(&issuer).await;
    let token = key.sign(&issuer.claims());
    let (a, b) = token.rsplit_once('.').unwrap();
    let flipped = format!("{a}.{}", b.chars().rev().collect::<String>());
    for authorization in [
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwdw==",
        "Bearer not-a-jwt",
        "Bearer a.b.c",
        "Bearer ....",
        &format!("Bearer {flipped}"),
        &format!("Bearer {token}.extra"),
        &format!("Token {token}"),
    ] {
        let (status, answer) = post(&app, BODY, authorization).await;
        assert_eq!(status, 401, "{authorization}: {answer}");
    }
    let r = app.post_hook("gha", BODY, &[]).await;
    assert_eq!(r.status(), 401);
    // The token is fine; the sender just spelt the scheme in lowercase.
    let (status, answer) = post(&app, BODY, &format!("bearer {token}")).await;
    assert_eq!(status, 202, "{answer}");
    app.stop().await;
}

#[tokio::test]
async fn an_issuer_whose_keys_cannot_be_fetched_refuses_with_401_and_a_metric() {
    // The discovery document names a JWKS on a port where nothing listens.
    let server = MockServer::start().await;
    let dead = crate::harness::free_port();
    Mock::given(path("/.well-known/openid-configuration"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "issuer": server.uri(),
            "jwks_uri": format!("http://127.0.0.1:{dead}/jwks"),
        })))
        .mount(&server)
        .await;
    let issuer = Issuer { server };
    let app = app_for(&issuer).await;
    let key = TestKey::es256("k1");
    for _ in 0..2 {
        let message = refused(&app, &key.sign(&issuer.claims())).await;
        assert!(
            message.contains("signing keys are unavailable")
                && message.contains("/jwks could not be fetched (Connection refused"),
            "{message}"
        );
    }
    let (_, answer) = post(
        &app,
        BODY,
        &format!("Bearer {}", key.sign(&issuer.claims())),
    )
    .await;
    assert_eq!(answer["error"]["code"], "keys_unavailable", "{answer}");
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains(r#"gantry_oidc_keys_unavailable_total{source="gha"} 3"#),
        "{metrics}"
    );
    app.stop().await;

    // A JWKS endpoint that answers 503 is as good as down.
    let issuer = Issuer::serving(ResponseTemplate::new(503)).await;
    let app = app_for(&issuer).await;
    let message = refused(&app, &key.sign(&issuer.claims())).await;
    assert!(message.contains("503"), "{message}");
    app.stop().await;
}

#[tokio::test]
async fn a_50_mb_jwks_is_refused_past_its_bound() {
    let key = TestKey::es256("k1");
    let padding = " ".repeat(50 << 20);
    let huge = format!(r#"{{"keys":[{}]{padding}}}"#, key.jwk());
    let issuer =
        Issuer::serving(ResponseTemplate::new(200).set_body_raw(huge, "application/json")).await;
    let app = app_for(&issuer).await;
    let message = refused(&app, &key.sign(&issuer.claims())).await;
    assert!(message.contains("larger than 1 MiB"), "{message}");
    // The server is still there, and answers.
    assert_eq!(app.get("/healthz", None).await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn unknown_key_ids_make_gantry_fetch_the_keys_at_most_once_a_minute() {
    let key = TestKey::es256("k1");
    let issuer = Issuer::start(&[&key]).await;
    let app = app_for(&issuer).await;
    let (status, answer) = post(
        &app,
        BODY,
        &format!("Bearer {}", key.sign(&issuer.claims())),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    for n in 0..5 {
        let stranger = TestKey::es256(&format!("rotated-{n}"));
        refused(&app, &stranger.sign(&issuer.claims())).await;
    }
    assert_eq!(issuer.jwks_fetches().await, 1);
    app.stop().await;
}

/// An app on `store` (both engines), for the tests whose result is in the store.
struct StoredApp {
    client: Client,
    running: Option<gantry::app::Running>,
    _dir: tempfile::TempDir,
    _store: TestStore,
}

impl StoredApp {
    async fn start(store: TestStore, rules: &str) -> StoredApp {
        let upstream = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200))
            .mount(&upstream)
            .await;
        let dir = tempfile::tempdir().unwrap();
        let path = crate::harness::write_config_on(
            dir.path(),
            &upstream.uri(),
            rules,
            "30s",
            &store.url(dir.path()),
        );
        let loaded = gantry::config::load(
            &gantry::config::ConfigPath::Explicit(path),
            &crate::harness::env(),
        )
        .unwrap();
        let service = gantry::app::Service::compile(loaded.config).unwrap();
        let running = gantry::app::start(service, gantry::app::Mode::HttpOnly)
            .await
            .unwrap();
        StoredApp {
            client: Client::new(format!("http://{}", running.addr.unwrap())),
            running: Some(running),
            _dir: dir,
            _store: store,
        }
    }

    async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }
}

on_each_store!(TestStore: rs256_es256_and_eddsa_tokens_pass_and_their_claims_are_stored_and_matched,);

async fn rs256_es256_and_eddsa_tokens_pass_and_their_claims_are_stored_and_matched(
    store: TestStore,
) {
    let keys = [
        TestKey::rs256("rsa"),
        TestKey::es256("ec"),
        TestKey::eddsa("ed"),
    ];
    let issuer = Issuer::start(&keys.iter().collect::<Vec<_>>()).await;
    let app = StoredApp::start(store, &source_and_rules(&issuer.url())).await;
    let c = &app.client;
    for key in &keys {
        let token = key.sign(&issuer.claims());
        let (status, answer) = post(c, BODY, &format!("Bearer {token}")).await;
        assert_eq!(status, 202, "{:?}: {answer}", key.alg);
        // Only the rule whose claims the token has matched.
        let rules: Vec<&str> = answer["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["rule"].as_str().unwrap())
            .collect();
        assert_eq!(rules, ["api-from-acme-api"], "{answer}");
        let event_id = answer["event_id"].as_str().unwrap();

        // The same request again is the same delivery.
        let (status, replay) = post(c, BODY, &format!("Bearer {token}")).await;
        assert_eq!(
            (status, &replay["duplicate"]),
            (200, &json!(true)),
            "{replay}"
        );
        assert_eq!(replay["event_id"], event_id);
        // Another body under the same token is another delivery.
        let other = br#"{"event":"build.done","repo":"dev","image":"api","tag":"1.0.1"}"#;
        let (status, _) = post(c, other, &format!("Bearer {token}")).await;
        assert_eq!(status, 202);

        let event: Value = c
            .get(&format!("/api/v1/events/{event_id}"), Some(VIEWER_TOKEN))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(event["claims"]["repository"], "acme/api", "{event}");
        assert_eq!(event["claims"]["aud"], AUDIENCE);
        assert_eq!(event["claims"]["run_id"], 42);
        assert!(
            event["delivery_id"]
                .as_str()
                .unwrap()
                .starts_with("jti-sha256:"),
            "{event}"
        );
    }
    // Events from other schemes carry no claims.
    let r = c.send("ci", br#"{"event":"test-passed","tag":"1"}"#).await;
    assert_eq!(r.status(), 202);
    let listed: Value = c
        .get("/api/v1/events?source=ci", Some(VIEWER_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert!(listed["events"][0].get("claims").is_none(), "{listed}");
    app.stop().await;
}

#[tokio::test]
async fn a_delivery_header_names_the_delivery_instead_of_the_token() {
    let key = TestKey::es256("k1");
    let issuer = Issuer::start(&[&key]).await;
    let app = spawn_app(&format!(
        r#"
[[sources]]
name = "gha"
format = "generic"
delivery_header = "X-Delivery"
verify = {{ scheme = "oidc", issuer = "{}", audience = "{AUDIENCE}" }}
"#,
        issuer.url()
    ))
    .await;
    let token = format!("Bearer {}", key.sign(&issuer.claims()));
    let send = |delivery: &'static str| {
        let token = token.clone();
        let c = &app.client;
        async move {
            let r = c
                .post_hook(
                    "gha",
                    BODY,
                    &[("Authorization", &token), ("X-Delivery", delivery)],
                )
                .await;
            let status = r.status().as_u16();
            let answer: Value = r.json().await.unwrap();
            (status, answer)
        }
    };
    let (first, a) = send("d-1").await;
    let (second, b) = send("d-2").await;
    let (again, c) = send("d-1").await;
    assert_eq!((first, second, again), (202, 202, 200), "{a} {b} {c}");
    assert_eq!(a["event_id"], c["event_id"]);
    app.stop().await;
}

#[test]
fn check_validates_the_oidc_options() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("g.toml");
    std::fs::write(
        &config,
        r#"
[[sources]]
name = "gha"
format = "generic"
verify = { scheme = "oidc", issuer = "http://issuer.example.com", claims = { "repository" = "acme/*", "/ref" = "re:(" }, leeway = "1h", secrets = ["x"] }

[[sources]]
name = "hub"
format = "generic"
verify = { scheme = "url-token", header = "X-Token", secrets = ["env:HUB"], audience = "gantry" }
"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["--config"])
        .arg(&config)
        .arg("check")
        .env_clear()
        .env("HUB", "hub-secret")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for expected in [
        "sources[gha].verify.issuer: must be https",
        "sources[gha].verify.audience: is required",
        "sources[gha].verify.claims.repository: is not a JSON pointer",
        "sources[gha].verify.leeway: is more than 5m",
        "sources[gha].verify.secrets: an oidc source",
        "sources[hub].verify.header: this scheme reads no header",
        "sources[hub].verify.audience: applies only to the oidc scheme",
    ] {
        assert!(
            stderr.contains(expected),
            "missing `{expected}` in:\n{stderr}"
        );
    }

    // The options right, a claim matcher that does not compile is named too.
    std::fs::write(
        &config,
        r#"
[[sources]]
name = "gha"
format = "generic"
verify = { scheme = "oidc", issuer = "https://token.actions.githubusercontent.com", audience = "gantry", claims = { "/ref" = "re:(" } }
"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["--config"])
        .arg(&config)
        .arg("check")
        .env_clear()
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("sources[gha].verify") && stderr.contains("claims./ref: invalid regex"),
        "{stderr}"
    );
}
