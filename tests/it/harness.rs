//! Starts gantry for a test: in-process on a random port with a temporary SQLite file,
//! or as a child process of the real binary; a wiremock server plays Artifactory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gantry::app::{self, Mode, Running, Service};
use gantry::config::{self, ConfigPath};
use hmac::{KeyInit, Mac};
use serde_json::Value;
use tempfile::TempDir;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// `server.max_body_bytes` in the test config.
pub const MAX_BODY: usize = 65536;
pub const CI_SECRET: &str = "ci-secret-current";
pub const CI_SECRET_OLD: &str = "ci-secret-previous";
pub const JFROG_SECRET: &str = "jfrog-webhook-secret";
pub const JFROG_TOKEN: &str = "jfrog-access-token";
pub const OPS_TOKEN: &str = "ops-token-value";
pub const VIEWER_TOKEN: &str = "viewer-token-value";
pub const GH_SECRET: &str = "github-webhook-secret";
pub const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const REGISTRY_TOKEN: &str = "registry-notify-token";
pub const GITLAB_TOKEN: &str = "gitlab-hook-token";

/// Sources for every other scheme and format, to append to a test's config.
pub const MORE_SOURCES: &str = r#"
[[sources]]
name = "github"
format = "github"
verify = { scheme = "github", secrets = ["env:TEST_GH_SECRET"] }
fields = { tag = "/release/tag_name", image = "/repository/name" }

[[sources]]
name = "sw"
format = "generic"
verify = { scheme = "standard-webhooks", secrets = ["env:TEST_SW_SECRET"], tolerance = "5m" }

[[sources]]
name = "registry"
format = "registry"
verify = { scheme = "token", header = "Authorization", secrets = ["env:TEST_REGISTRY_TOKEN"] }

[[sources]]
name = "gitlab"
format = "generic"
verify = { scheme = "token", header = "X-Gitlab-Token", secrets = ["env:TEST_GITLAB_TOKEN"] }
type_header = "X-Gitlab-Event"
delivery_header = "X-Gitlab-Event-UUID"
fields = { tag = "/ref", image = "/project/path_with_namespace" }
"#;

/// The config every test starts from; `{upstream}`, `{store}` and `{lease}` are
/// filled in, and the test appends its own rules.
const BASE: &str = r#"
[server]
listen = "127.0.0.1:0"
max_body_bytes = 65536
shutdown_grace = "5s"

[store]
url = "{store}"

[defaults.retry]
max_attempts = 4
initial_backoff = "10ms"
max_backoff = "50ms"

[worker]
lease = "{lease}"
concurrency = 4
poll_interval = "200ms"

[[admin.tokens]]
name = "ops"
token = "env:TEST_OPS_TOKEN"
role = "operate"

[[admin.tokens]]
name = "viewer"
token = "env:TEST_VIEWER_TOKEN"
role = "read"

[[sources]]
name = "ci"
format = "generic"
verify = { scheme = "hmac-sha256", header = "X-Signature", prefix = "sha256=", secrets = ["env:TEST_CI_SECRET", "env:TEST_CI_SECRET_OLD"] }

[[sources]]
name = "artifactory"
format = "artifactory"
verify = { scheme = "hmac-sha256", header = "X-JFrog-Event-Auth", secrets = ["env:TEST_JFROG_SECRET"] }

[[targets]]
name = "jfrog"
kind = "artifactory"
url = "{upstream}"
token = "env:TEST_JFROG_TOKEN"
timeout = "5s"
"#;

pub fn env() -> HashMap<String, String> {
    [
        ("TEST_OPS_TOKEN", OPS_TOKEN),
        ("TEST_VIEWER_TOKEN", VIEWER_TOKEN),
        ("TEST_CI_SECRET", CI_SECRET),
        ("TEST_CI_SECRET_OLD", CI_SECRET_OLD),
        ("TEST_JFROG_SECRET", JFROG_SECRET),
        ("TEST_JFROG_TOKEN", JFROG_TOKEN),
        ("TEST_GH_SECRET", GH_SECRET),
        ("TEST_SW_SECRET", SW_SECRET),
        ("TEST_REGISTRY_TOKEN", REGISTRY_TOKEN),
        ("TEST_GITLAB_TOKEN", GITLAB_TOKEN),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

pub fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Writes a config for `upstream` and a database in `dir`, with `rules` appended.
pub fn write_config(dir: &Path, upstream: &str, rules: &str, lease: &str) -> PathBuf {
    let store = crate::stores::TestStore::Sqlite.url(dir);
    write_config_on(dir, upstream, rules, lease, &store)
}

/// Like [`write_config`], on the store `store_url` names.
pub fn write_config_on(
    dir: &Path,
    upstream: &str,
    rules: &str,
    lease: &str,
    store_url: &str,
) -> PathBuf {
    let toml = format!("{BASE}\n{rules}")
        .replace("{upstream}", upstream)
        .replace("{store}", store_url)
        .replace("{lease}", lease);
    let path = dir.join("gantry.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// An HTTP client for a running gantry.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: String) -> Self {
        Client {
            base,
            http: reqwest::Client::new(),
        }
    }

    /// Posts a body to `/hooks/{source}` signed as that source expects.
    pub async fn send(&self, source: &str, body: &[u8]) -> reqwest::Response {
        let (header, value) = match source {
            "artifactory" => ("X-JFrog-Event-Auth", hmac_hex(JFROG_SECRET, body)),
            _ => (
                "X-Signature",
                format!("sha256={}", hmac_hex(CI_SECRET, body)),
            ),
        };
        self.post_hook(source, body, &[(header, &value)]).await
    }

    /// Like `send`, but a failed connection is an error, not a panic (for crash tests).
    pub async fn try_send(&self, source: &str, body: &[u8]) -> Result<u16, reqwest::Error> {
        let sig = format!("sha256={}", hmac_hex(CI_SECRET, body));
        self.http
            .post(format!("{}/hooks/{source}", self.base))
            .header("Content-Type", "application/json")
            .header("X-Signature", sig)
            .body(body.to_vec())
            .send()
            .await
            .map(|r| r.status().as_u16())
    }

    pub async fn post_hook(
        &self,
        source: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("{}/hooks/{source}", self.base))
            .body(body.to_vec());
        // JSON unless the test sends its own type (CloudEvents' structured mode).
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("Content-Type"))
        {
            req = req.header("Content-Type", "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap()
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap()
    }

    pub async fn post(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self.http.post(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap()
    }

    /// POSTs a JSON body with a token (operator actions that take one).
    pub async fn post_json(&self, path: &str, token: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn job(&self, id: &str) -> Value {
        let r = self
            .get(&format!("/api/v1/jobs/{id}"), Some(VIEWER_TOKEN))
            .await;
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    /// Polls a job until it reaches a final state, or fails the test at the deadline.
    pub async fn wait_final(&self, id: &str) -> Value {
        self.wait_for(id, |j| {
            matches!(
                j["state"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            )
        })
        .await
    }

    pub async fn wait_for(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let job = self.job(id).await;
            if done(&job) {
                return job;
            }
            assert!(Instant::now() < deadline, "job never got there: {job:#}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The audit kinds of one job's records, in order.
    pub async fn kinds(&self, job: &str) -> Vec<String> {
        self.audit(&format!("job={job}"))
            .await
            .iter()
            .map(|r| r["kind"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    pub async fn audit(&self, query: &str) -> Vec<Value> {
        let r = self
            .get(&format!("/api/v1/audit?{query}"), Some(VIEWER_TOKEN))
            .await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        v["records"].as_array().unwrap().clone()
    }
}

/// gantry running in this test process.
pub struct TestApp {
    pub client: Client,
    pub upstream: MockServer,
    /// The config file the app runs on (for driving the CLI against it).
    pub config: PathBuf,
    _dir: TempDir,
    running: Option<Running>,
}

impl std::ops::Deref for TestApp {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

pub async fn spawn_app(rules: &str) -> TestApp {
    spawn_app_with_env(rules, &[]).await
}

/// Like [`spawn_app`], with extra environment (`GANTRY__…` overrides of the base
/// config's settings).
pub async fn spawn_app_with_env(rules: &str, extra: &[(&str, &str)]) -> TestApp {
    spawn(rules, extra, &crate::stores::TestStore::Sqlite).await
}

/// Like [`spawn_app`], on `store` (PostgreSQL for the tests that run on both).
pub async fn spawn_app_on(rules: &str, store: &crate::stores::TestStore) -> TestApp {
    spawn(rules, &[], store).await
}

async fn spawn(rules: &str, extra: &[(&str, &str)], store: &crate::stores::TestStore) -> TestApp {
    let upstream = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config_on(
        dir.path(),
        &upstream.uri(),
        rules,
        "30s",
        &store.url(dir.path()),
    );
    let mut env = env();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let loaded = config::load(&ConfigPath::Explicit(path.clone()), &env).unwrap();
    let service = Service::compile(loaded.config).unwrap();
    let running = app::start(service, Mode::All).await.unwrap();
    let addr = running.addr.unwrap();
    TestApp {
        client: Client::new(format!("http://{addr}")),
        upstream,
        config: path,
        _dir: dir,
        running: Some(running),
    }
}

impl TestApp {
    /// Makes the fake upstream answer every POST with `status`.
    pub async fn upstream_answers(&self, status: u16) {
        Mock::given(wiremock::matchers::method("POST"))
            .respond_with(ResponseTemplate::new(status))
            .mount(&self.upstream)
            .await;
    }

    /// The SQLite file the app runs on, for tests that tamper with it.
    pub fn db_path(&self) -> PathBuf {
        self._dir.path().join("gantry.db")
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }
}

/// gantry as a child process of the real binary, for crash tests.
pub struct ChildApp {
    pub client: Client,
    child: Child,
}

impl ChildApp {
    pub async fn start(config: &Path, port: u16) -> ChildApp {
        ChildApp::start_with(config, port, &[], Stdio::null()).await
    }

    /// Starts with the process's debug logs (stderr, JSON lines) going to `log`.
    pub async fn start_logged(config: &Path, port: u16, log: impl Into<Stdio>) -> ChildApp {
        ChildApp::spawn(config, port, &[], &[("RUST_LOG", "debug")], log.into()).await
    }

    /// Starts with extra environment and the debug logs going to `log`.
    pub async fn spawn_logged_with(
        config: &Path,
        port: u16,
        vars: &[(&str, &str)],
        log: impl Into<Stdio>,
    ) -> ChildApp {
        let mut vars = vars.to_vec();
        vars.push(("RUST_LOG", "debug"));
        ChildApp::spawn(config, port, &[], &vars, log.into()).await
    }

    /// Starts `gantry serve` with extra arguments (`--no-workers`).
    pub async fn start_with(
        config: &Path,
        port: u16,
        args: &[&str],
        log: impl Into<Stdio>,
    ) -> ChildApp {
        ChildApp::spawn(config, port, args, &[], log.into()).await
    }

    /// Starts with extra environment (`GANTRY__…` overrides).
    pub async fn start_with_env(
        config: &Path,
        port: u16,
        args: &[&str],
        vars: &[(&str, &str)],
    ) -> ChildApp {
        ChildApp::spawn(config, port, args, vars, Stdio::null()).await
    }

    async fn spawn(
        config: &Path,
        port: u16,
        args: &[&str],
        vars: &[(&str, &str)],
        log: Stdio,
    ) -> ChildApp {
        let child = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["serve", "--config"])
            .arg(config)
            .args(args)
            .envs(vars.iter().copied())
            .envs(env())
            .env("GANTRY__SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        // Owned at once, so that Drop kills it whatever happens next.
        let app = ChildApp {
            client: Client::new(format!("http://127.0.0.1:{port}")),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(r) = reqwest::get(format!("{}/readyz", app.client.base)).await
                && r.status() == 200
            {
                return app;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("gantry did not become ready");
    }

    /// SIGHUP: reload the config.
    pub fn hangup(&self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// SIGTERM, then waits (up to `within`) for the process to exit on its own.
    pub async fn terminate(mut self, within: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "gantry did not exit after SIGTERM"
            );
            // Not a thread sleep: the test's runtime also runs the fake upstream.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to release anything.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ChildApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long after its creation (its trigger) a job's first attempt started: what a
/// soak timer held it for.
pub fn soaked_ms(job: &Value) -> i64 {
    let at = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
            .unwrap()
            .timestamp_millis()
    };
    at(&job["attempts"][0]["started_at"]) - at(&job["created_at"])
}

/// How many promote calls (POSTs) a wiremock upstream received; the reads gantry
/// makes to check the target first are not counted.
pub async fn posts(server: &MockServer) -> usize {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.method == wiremock::http::Method::POST)
        .count()
}

/// A free loopback port (bound and released; good enough for a test).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `gantry sign` for `source` over `body` against a config and returns the
/// headers it printed.
pub fn cli_sign(config: &Path, source: &str, body: &[u8]) -> Vec<(String, String)> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.json");
    std::fs::write(&file, body).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["sign", "--source", source, "--config"])
        .arg(config)
        .arg("--event")
        .arg(&file)
        .envs(env())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(": ").unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

/// Polls `check` until it holds, failing the test (naming `what`) after `within`:
/// a test that waits always has a deadline.
pub async fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
