//! Real OCI registries for tests: Debian's `docker-registry` (Docker Distribution
//! 2.8) on loopback ports with temporary storage and deletes enabled, images built
//! here as OCI blobs and pushed over the registry API, and a small token server for
//! the bearer challenge flow.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use wiremock::{MockServer, Request, Respond, ResponseTemplate};

use crate::harness::free_port;

pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const IMAGE: &str = "application/vnd.oci.image.manifest.v1+json";

pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// How a registry authenticates.
pub enum Auth {
    None,
    /// The registry's `token` auth: a realm served by a [`TokenServer`].
    Token {
        realm: String,
        cert: PathBuf,
    },
}

pub struct RegistryOptions {
    pub auth: Auth,
    /// A port chosen in advance (when gantry's config must name it first).
    pub port: Option<u16>,
    /// Where to post notifications, and the Authorization header to send.
    pub notify: Option<(String, String)>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            auth: Auth::None,
            port: None,
            notify: None,
        }
    }
}

pub const SERVICE: &str = "gantry-test-registry";
pub const ISSUER: &str = "gantry-test-issuer";

pub struct RegistryProc {
    pub base: String,
    _dir: TempDir,
    child: Child,
    http: reqwest::Client,
}

impl Drop for RegistryProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RegistryProc {
    pub async fn start(options: RegistryOptions) -> RegistryProc {
        let dir = tempfile::tempdir().unwrap();
        let port = options.port.unwrap_or_else(free_port);
        let mut config = format!(
            "version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
  secret: gantry-tests
",
            dir.path().join("storage").display()
        );
        if let Auth::Token { realm, cert } = &options.auth {
            config.push_str(&format!(
                "auth:
  token:
    realm: {realm}
    service: {SERVICE}
    issuer: {ISSUER}
    rootcertbundle: {}
",
                cert.display()
            ));
        }
        if let Some((url, authorization)) = &options.notify {
            config.push_str(&format!(
                "notifications:
  endpoints:
    - name: gantry
      url: {url}
      headers:
        Authorization: [\"{authorization}\"]
      timeout: 2s
      threshold: 1
      backoff: 100ms
"
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("docker-registry (Debian package docker-registry) is installed");
        let registry = RegistryProc {
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
            child,
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = reqwest::get(format!("{}/v2/", registry.base)).await
                && matches!(r.status().as_u16(), 200 | 401)
            {
                return registry;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start: {}",
                registry.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("registry.log")).unwrap_or_default()
    }

    fn request(
        &self,
        method: reqwest::Method,
        url: String,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let req = self.http.request(method, url);
        match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Pushes a blob (monolithic upload) and returns its digest.
    pub async fn push_blob(&self, repo: &str, bytes: Vec<u8>, token: Option<&str>) -> String {
        let digest = digest_of(&bytes);
        let r = self
            .request(
                reqwest::Method::POST,
                format!("{}/v2/{repo}/blobs/uploads/", self.base),
                token,
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
        let location = r.headers()["location"].to_str().unwrap().to_string();
        let mut url = reqwest::Url::parse(&self.base)
            .unwrap()
            .join(&location)
            .unwrap();
        url.query_pairs_mut().append_pair("digest", &digest);
        let r = self
            .request(reqwest::Method::PUT, url.to_string(), token)
            .header("Content-Type", "application/octet-stream")
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        digest
    }

    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
        token: Option<&str>,
    ) -> String {
        let r = self
            .request(
                reqwest::Method::PUT,
                format!("{}/v2/{repo}/manifests/{reference}", self.base),
                token,
            )
            .header("Content-Type", media_type)
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        digest_of(bytes)
    }

    /// A single-platform image of one config and `layers`; returns the manifest digest.
    pub async fn push_image(
        &self,
        repo: &str,
        tag: &str,
        layers: &[Vec<u8>],
        token: Option<&str>,
    ) -> String {
        let (bytes, _) = self.image_manifest(repo, "amd64", layers, token).await;
        self.push_manifest(repo, tag, IMAGE, &bytes, token).await
    }

    async fn image_manifest(
        &self,
        repo: &str,
        arch: &str,
        layers: &[Vec<u8>],
        token: Option<&str>,
    ) -> (Vec<u8>, usize) {
        let config = serde_json::to_vec(&json!({
            "architecture": arch, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| digest_of(l)).collect::<Vec<_>>()}
        }))
        .unwrap();
        let config_size = config.len();
        let config_digest = self.push_blob(repo, config, token).await;
        let mut descriptors = Vec::new();
        for layer in layers {
            let size = layer.len();
            let digest = self.push_blob(repo, layer.clone(), token).await;
            descriptors.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size}));
        }
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": IMAGE,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
            "layers": descriptors
        }))
        .unwrap();
        let size = manifest.len();
        (manifest, size)
    }

    /// A two-platform index (amd64 and arm64 images, each with its own layer);
    /// returns the index digest and the child digests.
    pub async fn push_index(&self, repo: &str, tag: &str) -> (String, Vec<String>) {
        let mut children = Vec::new();
        let mut descriptors = Vec::new();
        for arch in ["amd64", "arm64"] {
            let layer = format!("layer for {arch} {}", ulid_like()).into_bytes();
            let (bytes, size) = self.image_manifest(repo, arch, &[layer], None).await;
            let digest = self
                .push_manifest(repo, &digest_of(&bytes), IMAGE, &bytes, None)
                .await;
            descriptors.push(json!({"mediaType": IMAGE, "digest": digest, "size": size,
                "platform": {"architecture": arch, "os": "linux"}}));
            children.push(digest);
        }
        let index = serde_json::to_vec(
            &json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": descriptors}),
        )
        .unwrap();
        (
            self.push_manifest(repo, tag, INDEX, &index, None).await,
            children,
        )
    }

    /// What a tag or digest resolves to, or `None` when the registry has no such manifest.
    pub async fn manifest_digest(
        &self,
        repo: &str,
        reference: &str,
        token: Option<&str>,
    ) -> Option<String> {
        let r = self
            .request(
                reqwest::Method::GET,
                format!("{}/v2/{repo}/manifests/{reference}", self.base),
                token,
            )
            .header("Accept", format!("{INDEX}, {IMAGE}"))
            .send()
            .await
            .unwrap();
        if r.status() == 404 {
            return None;
        }
        assert_eq!(r.status(), 200);
        Some(digest_of(&r.bytes().await.unwrap()))
    }
}

/// A short unique suffix, so that each test's layers are new blobs.
pub fn ulid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// A token server for the registry's `token` auth: checks basic credentials and
/// signs a JWT (ES256, certificate in `x5c`) granting every scope asked for.
pub struct TokenServer {
    pub server: MockServer,
    pub cert: PathBuf,
    _dir: TempDir,
}

struct IssueTokens {
    key_pem: String,
    cert_der_b64: String,
    user: String,
    password: String,
}

impl Respond for IssueTokens {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        use base64::Engine as _;
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", self.user, self.password))
        );
        let authorized = request
            .headers
            .get("authorization")
            .is_some_and(|v| v.to_str().unwrap_or("") == expected);
        if !authorized {
            return ResponseTemplate::new(401).set_body_json(json!({"details": "bad credentials"}));
        }
        let access: Vec<Value> = request
            .url
            .query_pairs()
            .filter(|(k, _)| k == "scope")
            .map(|(_, scope)| {
                let parts: Vec<&str> = scope.split(':').collect();
                json!({"type": parts[0], "name": parts[1], "actions": parts[2].split(',').collect::<Vec<_>>()})
            })
            .collect();
        let now = chrono::Utc::now().timestamp();
        let claims = json!({
            "iss": ISSUER, "sub": self.user, "aud": SERVICE,
            "exp": now + 300, "nbf": now - 5, "iat": now,
            "jti": ulid_like(), "access": access
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.x5c = Some(vec![self.cert_der_b64.clone()]);
        let key = jsonwebtoken::EncodingKey::from_ec_pem(self.key_pem.as_bytes()).unwrap();
        let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        ResponseTemplate::new(200).set_body_json(json!({"token": token, "expires_in": 300}))
    }
}

impl TokenServer {
    pub async fn start(user: &str, password: &str) -> TokenServer {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["gantry-test-issuer".to_string()]).unwrap();
        let cert_path = dir.path().join("root.pem");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        let server = MockServer::start().await;
        wiremock::Mock::given(wiremock::matchers::path("/token"))
            .respond_with(IssueTokens {
                key_pem: signing_key.serialize_pem(),
                cert_der_b64: base64::engine::general_purpose::STANDARD.encode(cert.der()),
                user: user.to_string(),
                password: password.to_string(),
            })
            .mount(&server)
            .await;
        TokenServer {
            server,
            cert: cert_path,
            _dir: dir,
        }
    }

    pub fn realm(&self) -> String {
        format!("{}/token", self.server.uri())
    }

    /// A token for pushing test images directly.
    pub async fn token_for(&self, user: &str, password: &str, repo: &str) -> String {
        let r: Value = reqwest::Client::new()
            .get(self.realm())
            .basic_auth(user, Some(password))
            .query(&[
                ("service", SERVICE),
                ("scope", &format!("repository:{repo}:pull,push")),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["token"].as_str().unwrap().to_string()
    }
}

/// The registry notifications received so far (each envelope's events).
pub async fn notifications(server: &MockServer) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
        .flat_map(|v| v["events"].as_array().cloned().unwrap_or_default())
        .collect()
}
