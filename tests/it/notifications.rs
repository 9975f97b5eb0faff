//! Notifications out (SPEC §10), on both stores: signed webhooks checked by the
//! official Standard Webhooks library, receivers that are down, refuse or are gone,
//! a crash between commit and delivery, a change that rolls back, Slack's body, and
//! a secret URL that never shows.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::harness::{
    ChildApp, OPS_TOKEN, TestApp, VIEWER_TOKEN, eventually, free_port, spawn_app_on,
    write_config_on,
};
use crate::stores::TestStore;

/// The rotation case: gantry signs with both, the receiver knows only the new one.
const OLD_WHSEC: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const NEW_WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

const RULE: &str = r#"
[[rules]]
name = "to-staging"
source = "ci"
event = "test-passed"
action = { type = "promote", target = "jfrog", to_repo = "staging" }
"#;

fn event(repo: &str, tag: &str) -> Vec<u8> {
    format!(
        r#"{{"event":"test-passed","repo":"{repo}","image":"app","tag":"{tag}","digest":"sha256:{tag}"}}"#
    )
    .into_bytes()
}

/// Sends an event; the id of the one job it made.
async fn job_of(app: &crate::harness::Client, repo: &str, tag: &str) -> String {
    let r = app.send("ci", &event(repo, tag)).await;
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    v["jobs"][0]["id"].as_str().expect("a job").to_string()
}

async fn notifications(app: &crate::harness::Client, query: &str) -> Vec<Value> {
    let r = app
        .get(
            &format!("/api/v1/notifications?{query}"),
            Some(VIEWER_TOKEN),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["notifications"].as_array().unwrap().clone()
}

/// Polls the notifications API until `done` holds for the list `query` names.
async fn until(
    app: &crate::harness::Client,
    query: &str,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let list = notifications(app, query).await;
        if done(&list) {
            return list;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {list:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The official library's verdicts, one JSON line per request received.
struct PyReceiver {
    port: u16,
    seen: Arc<Mutex<Vec<Value>>>,
    _child: tokio::process::Child,
}

impl PyReceiver {
    async fn start(secret: &str) -> PyReceiver {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/receivers/standard_webhooks.py"
        );
        let mut child = tokio::process::Command::new("python3")
            .arg(script)
            .arg(secret)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs the receiver (pip install standardwebhooks)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the receiver starts")
            .unwrap()
            .expect("the receiver prints its port (is `standardwebhooks` installed?)");
        let port = first.strip_prefix("port ").unwrap().parse().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock()
                    .unwrap()
                    .push(serde_json::from_str(&line).unwrap());
            }
        });
        PyReceiver {
            port,
            seen,
            _child: child,
        }
    }

    fn seen(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }
}

on_each_store!(TestStore:
    a_promotion_that_succeeds_and_one_that_fails_each_send_one_verified_notification,
    receivers_down_refusing_or_gone,
    a_notification_committed_before_a_crash_is_delivered_after_the_restart,
    a_change_that_rolls_back_sends_nothing,
    a_secret_sink_url_never_shows,
    a_sink_removed_from_the_config_drops_its_pending_notifications,
);

async fn a_promotion_that_succeeds_and_one_that_fails_each_send_one_verified_notification(
    store: TestStore,
) {
    let receiver = PyReceiver::start(NEW_WHSEC).await;
    let config = format!(
        r#"{RULE}
[[notifications]]
name = "audit-sink"
format = "standard-webhooks"
url = "http://127.0.0.1:{port}/hooks/gantry"
secrets = ["{OLD_WHSEC}", "{NEW_WHSEC}"]
on = ["job.succeeded", "job.failed"]
"#,
        port = receiver.port
    );
    let app = spawn_app_on(&config, &store).await;
    for (repo, status) in [("dev-ok", 200), ("dev-bad", 400)] {
        Mock::given(method("POST"))
            .and(path(format!("/artifactory/api/docker/{repo}/v2/promote")))
            .respond_with(ResponseTemplate::new(status))
            .mount(&app.upstream)
            .await;
    }
    let good = job_of(&app, "dev-ok", "1").await;
    let bad = job_of(&app, "dev-bad", "2").await;

    let delivered = until(&app, "state=delivered", "two deliveries", |l| l.len() == 2).await;
    eventually(
        "the receiver's two verdicts",
        Duration::from_secs(10),
        || receiver.seen().len() >= 2,
    )
    .await;
    // Nothing else comes: exactly one notification for each job.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = receiver.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    for s in &seen {
        assert_eq!(s["verified"], true, "the official library refused: {s}");
    }
    let by_type = |t: &str| {
        seen.iter()
            .find(|s| s["payload"]["type"] == t)
            .unwrap_or_else(|| panic!("no {t} in {seen:#?}"))
            .clone()
    };
    let ok = by_type("job.succeeded");
    assert_eq!(ok["payload"]["data"]["job"]["id"], good.as_str());
    assert_eq!(ok["payload"]["data"]["job"]["state"], "succeeded");
    assert_eq!(ok["payload"]["data"]["job"]["outcome"], "promoted");
    let failed = by_type("job.failed");
    assert_eq!(failed["payload"]["data"]["job"]["id"], bad.as_str());
    assert_eq!(failed["payload"]["data"]["job"]["state"], "failed");
    assert!(failed["payload"]["sequence"].as_i64().unwrap() > 0);
    chrono::DateTime::parse_from_rfc3339(failed["payload"]["timestamp"].as_str().unwrap()).unwrap();

    // The API tells the same story: the ids the receiver saw, one try each.
    let mut ids: Vec<&str> = delivered
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    let mut seen_ids: Vec<&str> = seen.iter().map(|s| s["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    seen_ids.sort_unstable();
    assert_eq!(ids, seen_ids);
    for n in &delivered {
        assert_eq!(n["sink"], "audit-sink");
        assert_eq!(n["tries"], 1);
        assert_eq!(n["next_try_at"], Value::Null);
    }
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains(r#"gantry_notifications_total{name="audit-sink",outcome="delivered"} 2"#),
        "{metrics}"
    );
    app.stop().await;
}

/// A wiremock receiver (on `listener`, or a port of its own), answering every POST
/// with `status`.
async fn receiver(listener: Option<std::net::TcpListener>, status: u16) -> MockServer {
    let server = match listener {
        Some(l) => MockServer::builder().listener(l).start().await,
        None => MockServer::start().await,
    };
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(status))
        .mount(&server)
        .await;
    server
}

async fn requests(server: &MockServer) -> Vec<wiremock::Request> {
    server.received_requests().await.unwrap_or_default()
}

fn webhook_id(r: &wiremock::Request) -> String {
    r.headers
        .get("webhook-id")
        .expect("a webhook-id")
        .to_str()
        .unwrap()
        .to_string()
}

async fn receivers_down_refusing_or_gone(store: TestStore) {
    // `down` has nothing listening yet; `flaky` refuses twice; `gone` answers 410.
    let down_port = free_port();
    let flaky = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_string("not yet"))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&flaky)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&flaky)
        .await;
    let gone = receiver(None, 410).await;
    let sink = |name: &str, url: &str, every: &str| {
        format!(
            r#"
[[notifications]]
name = "{name}"
format = "generic"
url = "{url}/hook"
on = ["job.created"]
retry = {{ schedule = ["{every}", "{every}", "{every}", "{every}", "{every}", "{every}", "{every}", "{every}", "{every}", "{every}"] }}
"#
        )
    };
    let config = [
        RULE.to_string(),
        sink("down", &format!("http://127.0.0.1:{down_port}"), "300ms"),
        sink("flaky", &flaky.uri(), "50ms"),
        sink("gone", &gone.uri(), "50ms"),
    ]
    .concat();
    let app = spawn_app_on(&config, &store).await;
    app.upstream_answers(200).await;
    let first = job_of(&app, "dev", "1").await;

    // A 400 is retried like any failure, with the same id, until it is delivered.
    let flaky_done = until(&app, "sink=flaky&state=delivered", "flaky delivered", |l| {
        l.len() == 1
    })
    .await;
    assert_eq!(flaky_done[0]["tries"], 3);
    assert_eq!(flaky_done[0]["job_id"], first.as_str());
    let tries = requests(&flaky).await;
    assert_eq!(tries.len(), 3);
    assert!(
        tries
            .iter()
            .all(|r| webhook_id(r) == flaky_done[0]["id"].as_str().unwrap())
    );

    // 410 disables the sink, on the record; nothing more is sent to it.
    until(&app, "sink=gone", "gone tried", |l| {
        l.len() == 1 && l[0]["tries"] == 1
    })
    .await;
    let disabled = app.audit("kind=notification.sink_disabled").await;
    assert_eq!(disabled.len(), 1, "{disabled:#?}");
    assert!(disabled[0]["message"].as_str().unwrap().contains("gone"));
    let sinks: Value = app
        .get("/api/v1/notifications/sinks", Some(VIEWER_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    let gone_state = sinks["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "gone")
        .unwrap()
        .clone();
    assert_eq!(gone_state["disabled"], true);
    job_of(&app, "dev", "2").await;
    until(
        &app,
        "sink=gone&state=pending",
        "a second notification for gone",
        |l| l.len() == 2,
    )
    .await;

    // The receiver that was down comes up: delivered, with the id of every try.
    let down = until(&app, "sink=down", "down tried twice", |l| {
        l.iter().any(|n| n["tries"].as_u64().unwrap() >= 2)
    })
    .await;
    let refused = down.iter().find(|n| n["job_id"] == first.as_str()).unwrap();
    assert!(
        refused["last_error"]
            .as_str()
            .unwrap()
            .starts_with("cannot connect"),
        "{refused}"
    );
    let listener = std::net::TcpListener::bind(("127.0.0.1", down_port)).unwrap();
    let down_server = receiver(Some(listener), 200).await;
    until(&app, "sink=down&state=delivered", "down delivered", |l| {
        l.len() == 2
    })
    .await;
    let got = requests(&down_server).await;
    assert_eq!(got.len(), 2, "one request per notification once it is up");
    assert!(
        got.iter()
            .any(|r| webhook_id(r) == refused["id"].as_str().unwrap())
    );

    // Still nothing more to `gone` while it is disabled.
    assert_eq!(requests(&gone).await.len(), 1);
    gone.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&gone)
        .await;
    let viewer = app
        .post(
            "/api/v1/notifications/sinks/gone/enable",
            Some(VIEWER_TOKEN),
        )
        .await;
    assert_eq!(viewer.status(), 403, "enabling takes operate");
    let r = app
        .post("/api/v1/notifications/sinks/gone/enable", Some(OPS_TOKEN))
        .await;
    assert_eq!(r.status(), 200);
    until(
        &app,
        "sink=gone&state=delivered",
        "gone delivered once enabled",
        |l| l.len() == 2,
    )
    .await;
    assert_eq!(requests(&gone).await.len(), 2);
    let enabled = app.audit("kind=notification.sink_enabled").await;
    assert_eq!(enabled.len(), 1);
    assert_eq!(enabled[0]["actor"], "ops");
    assert_eq!(
        app.post("/api/v1/notifications/sinks/nope/enable", Some(OPS_TOKEN))
            .await
            .status(),
        404
    );
    app.stop().await;
}

/// A receiver that takes the first request and never answers it (the delivery is
/// in flight when gantry is killed), then answers 204; it reports each request's
/// `webhook-id` as it arrives.
async fn hang_then_answer() -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut first = true;
        let mut held = Vec::new();
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = Vec::new();
            // Headers and the body (Content-Length) in full.
            loop {
                let n = socket.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (name, value) = l.split_once(':')?;
                            name.eq_ignore_ascii_case("content-length")
                                .then(|| value.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if got.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            let text = String::from_utf8_lossy(&got).to_string();
            let id = text
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("webhook-id")
                        .then(|| value.to_string())
                })
                .unwrap_or_default();
            let _ = tx.send(id.trim().to_string());
            if first {
                first = false;
                held.push(socket);
                continue;
            }
            let _ = socket
                .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                .await;
        }
    });
    (port, rx)
}

async fn a_notification_committed_before_a_crash_is_delivered_after_the_restart(store: TestStore) {
    let upstream = receiver(None, 200).await;
    let (port, mut ids) = hang_then_answer().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = format!(
        r#"{RULE}
[[notifications]]
name = "sink"
format = "standard-webhooks"
url = "http://127.0.0.1:{port}/hook"
secrets = ["{NEW_WHSEC}"]
on = ["job.created"]
timeout = "1s"
"#
    );
    let config = write_config_on(
        dir.path(),
        &upstream.uri(),
        &rules,
        "30s",
        &store.url(dir.path()),
    );
    let app = ChildApp::start(&config, free_port()).await;
    job_of(&app.client, "dev", "1").await;
    let first = tokio::time::timeout(Duration::from_secs(10), ids.recv())
        .await
        .expect("the delivery reaches the receiver")
        .unwrap();
    // In flight, not recorded: gone with the process.
    app.kill();

    let app = ChildApp::start(&config, free_port()).await;
    let again = tokio::time::timeout(Duration::from_secs(15), ids.recv())
        .await
        .expect("delivered after the restart")
        .unwrap();
    assert_eq!(again, first, "the same webhook-id on the next try");
    let delivered = until(&app.client, "state=delivered", "delivered", |l| {
        l.len() == 1
    })
    .await;
    assert_eq!(delivered[0]["id"], first.as_str());
    assert_eq!(delivered[0]["tries"], 2);
}

async fn a_change_that_rolls_back_sends_nothing(store: TestStore) {
    let receiver = receiver(None, 204).await;
    let config = format!(
        r#"{RULE}
[[notifications]]
name = "sink"
format = "generic"
url = "{}/hook"
on = ["event.received", "job.created"]
"#,
        receiver.uri()
    );
    // The upstream answers nothing (404): no promotion, so no `gantry.promoted`
    // event adds notifications of its own.
    let app = spawn_app_on(&config, &store).await;
    // The database refuses the transaction of a `poison` event: on SQLite when its
    // notification is written, on PostgreSQL at its commit (a deferred trigger), so
    // both the notification and the event were written and then rolled back.
    match &store {
        TestStore::Sqlite => {
            let db = rusqlite::Connection::open(app.db_path()).unwrap();
            db.busy_timeout(Duration::from_secs(10)).unwrap();
            db.execute_batch(
                "CREATE TRIGGER poison AFTER INSERT ON notifications
                 WHEN (SELECT tag FROM audit WHERE seq = NEW.sequence) = 'poison'
                 BEGIN SELECT RAISE(ABORT, 'poisoned'); END;",
            )
            .unwrap();
        }
        TestStore::Postgres(schema) => {
            let s = schema.name();
            schema
                .connect()
                .await
                .batch_execute(&format!(
                    "CREATE FUNCTION {s}.poison() RETURNS trigger LANGUAGE plpgsql AS $$
                     BEGIN IF (SELECT tag FROM {s}.audit WHERE seq = NEW.sequence) = 'poison'
                     THEN RAISE EXCEPTION 'poisoned'; END IF;
                     RETURN NEW; END $$;
                     CREATE CONSTRAINT TRIGGER poison AFTER INSERT ON {s}.notifications
                     DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {s}.poison();"
                ))
                .await
                .unwrap();
        }
    }
    let r = app.send("ci", &event("dev", "poison")).await;
    assert_eq!(r.status(), 503, "the change did not commit");
    job_of(&app, "dev", "fine").await;
    until(&app, "state=delivered", "the good event's two", |l| {
        l.len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = requests(&receiver).await;
    let bodies: Vec<String> = got
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).to_string())
        .collect();
    assert_eq!(got.len(), 2, "{bodies:#?}");
    assert!(
        got.iter()
            .all(|r| !String::from_utf8_lossy(&r.body).contains("poison"))
    );
    assert_eq!(notifications(&app, "").await.len(), 2);
    let events: Value = app
        .get("/api/v1/events", Some(VIEWER_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(events["events"].as_array().unwrap().len(), 1, "{events:#?}");
    app.stop().await;
}

/// A Slack-style URL whose last segment is its credential.
const SECRET: &str = "XyZzy-s3cr3t-Th4t-Must-N0t-Sh0w";

async fn a_secret_sink_url_never_shows(store: TestStore) {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let upstream = receiver(None, 200).await;
    let rules = format!(
        r#"{RULE}
[[notifications]]
name = "release-channel"
format = "slack"
url = "env:TEST_SLACK_URL"
on = ["job.created"]
retry = {{ schedule = ["20ms", "20ms"] }}
"#
    );
    let config = write_config_on(
        dir.path(),
        &upstream.uri(),
        &rules,
        "30s",
        &store.url(dir.path()),
    );
    let log_path = dir.path().join("gantry.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let url = format!("http://127.0.0.1:{port}/services/T000/B000/{SECRET}");
    let vars = [
        ("TEST_SLACK_URL", url.as_str()),
        ("GANTRY__SERVER__PUBLIC_URL", "https://gantry.example"),
    ];
    let app = ChildApp::spawn_logged_with(&config, free_port(), &vars, log).await;
    job_of(&app.client, "dev", "1").await;
    let failed = until(&app.client, "state=failed", "given up", |l| l.len() == 1).await;
    assert_eq!(failed[0]["tries"], 3);

    let mut everything = String::new();
    for path in [
        "/api/v1/notifications".to_string(),
        "/api/v1/notifications/sinks".to_string(),
        "/api/v1/audit?limit=1000".to_string(),
        format!(
            "/api/v1/notifications/{}/retry",
            failed[0]["id"].as_str().unwrap()
        ),
    ] {
        let r = if path.ends_with("/retry") {
            app.client.post(&path, Some(OPS_TOKEN)).await
        } else {
            app.client.get(&path, Some(VIEWER_TOKEN)).await
        };
        assert!(r.status().is_success(), "{path}: {}", r.status());
        everything.push_str(&r.text().await.unwrap());
    }
    everything.push_str(&app.client.get("/metrics", None).await.text().await.unwrap());
    // The retry is on the record, and the notification is given up again.
    until(&app.client, "state=failed", "given up again", |l| {
        l.len() == 1 && l[0]["tries"] == 3
    })
    .await;
    let audit = app
        .client
        .get("/api/v1/audit?limit=1000", Some(VIEWER_TOKEN))
        .await;
    let audit = audit.text().await.unwrap();
    assert!(audit.contains("notification.failed"), "{audit}");
    assert!(audit.contains("notification.retried"), "{audit}");
    everything.push_str(&audit);
    drop(app);
    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        logs.contains("notification not delivered"),
        "the tries were logged: {logs}"
    );
    assert!(
        !everything.contains(SECRET),
        "the API, audit or metrics showed the secret"
    );
    assert!(!logs.contains(SECRET), "the logs showed the secret");
    assert!(
        !logs.contains("/services/"),
        "the logs showed the URL's path"
    );

    // `gantry check` on a URL that is not one says so without quoting it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["check", "--config"])
        .arg(&config)
        .envs(crate::harness::env())
        .env("TEST_SLACK_URL", format!("not a url {SECRET}"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("notifications[release-channel].url"),
        "{said}"
    );
    assert!(!said.contains(SECRET), "{said}");
}

#[tokio::test]
async fn slack_gets_one_line_and_blocks_as_its_incoming_webhooks_take_them() {
    let slack = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .mount(&slack)
        .await;
    let config = format!(
        r#"{RULE}
[[notifications]]
name = "release-channel"
format = "slack"
url = "{}/services/T/B/x"
on = ["job.failed"]
rules = ["to-staging"]
"#,
        slack.uri()
    );
    let app: TestApp = crate::harness::spawn_app_with_env(
        &config,
        &[("GANTRY__SERVER__PUBLIC_URL", "https://gantry.example/")],
    )
    .await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(403).set_body_string(
                r#"{"errors":[{"status":403,"message":"<!channel> & co denied"}]}"#,
            ),
        )
        .mount(&app.upstream)
        .await;
    let id = job_of(&app, "dev", "1.4.2").await;
    until(&app, "state=delivered", "delivered", |l| l.len() == 1).await;
    let got = requests(&slack).await;
    assert_eq!(got.len(), 1);
    assert!(got[0].headers.get("webhook-signature").is_none());
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    // Slack's incoming webhooks: `text` (the notification line) and `blocks`
    // (section and context blocks with mrkdwn text objects, at most 3000 characters).
    let text = body["text"].as_str().unwrap();
    assert!(
        text.starts_with(
            "❌ Promotion failed: dev/app:1.4.2@sha256:1.4.2 → staging/app:1.4.2@sha256:1.4.2 \
             (rule to-staging): upstream_rejected: upstream answered 403 Forbidden: "
        ),
        "{text}"
    );
    assert!(
        text.contains("&lt;!channel&gt; &amp; co denied"),
        "escaped: {text}"
    );
    assert!(!text.contains("<!channel>"));
    assert!(
        text.ends_with(&format!("<https://gantry.example/ui/jobs/{id}|view job>")),
        "{text}"
    );
    let blocks = body["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "section");
    assert_eq!(blocks[0]["text"]["type"], "mrkdwn");
    assert_eq!(blocks[0]["text"]["text"], text);
    assert_eq!(blocks[1]["type"], "context");
    assert_eq!(blocks[1]["elements"][0]["type"], "mrkdwn");
    for b in blocks {
        let t = b["text"]["text"]
            .as_str()
            .or(b["elements"][0]["text"].as_str())
            .unwrap();
        assert!(t.chars().count() <= 3000);
    }
    app.stop().await;
}

#[test]
fn check_refuses_what_would_never_work() {
    let dir = tempfile::tempdir().unwrap();
    let rules = format!(
        r#"{RULE}
[[notifications]]
name = "a"
format = "standard-webhooks"
url = "https://sink.example/hooks"
on = ["job.faild"]

[[notifications]]
name = "b"
format = "standard-webhooks"
url = "ftp://sink.example/hooks"
secrets = ["not-a-whsec"]
on = ["notification.failed"]
rules = ["nope"]

[[notifications]]
name = "c"
format = "slack"
url = "https://hooks.example/x"
secrets = ["{NEW_WHSEC}"]
on = ["job.*"]
retry = {{ schedule = ["0s", "2d", "soon"] }}
"#
    );
    let config = write_config_on(
        dir.path(),
        "http://127.0.0.1:1",
        &rules,
        "30s",
        "sqlite://x.db",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["check", "--config"])
        .arg(&config)
        .envs(crate::harness::env())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let said =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    for expected in [
        "notifications[a].on: `job.faild` matches no audit kind",
        "notifications[a].secrets: a standard-webhooks sink signs every delivery",
        "notifications[b].url: is not an absolute http(s) URL",
        "notifications[b].secrets[0]: is not a `whsec_` Standard Webhooks secret",
        "notifications[b].on: `notification.failed` records a notification's own fate",
        "notifications[b].rules: no rule is named `nope`",
        "notifications[c].secrets: only standard-webhooks sinks are signed",
        "notifications[c].retry.schedule[0]: a delay must be longer than zero",
        "notifications[c].retry.schedule[1]: a delay is at most 24h",
        "notifications[c].retry.schedule[2]: `soon` is not a duration",
    ] {
        assert!(said.contains(expected), "missing `{expected}` in:\n{said}");
    }
    assert!(
        !said.contains("sink.example/hooks"),
        "a URL is a secret: {said}"
    );
}

async fn a_sink_removed_from_the_config_drops_its_pending_notifications(store: TestStore) {
    let upstream = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = store.url(dir.path());
    // Nothing listens on port 9: the notification stays pending, retried an hour on.
    let with_sink = format!(
        r#"{RULE}
[[notifications]]
name = "old"
format = "generic"
url = "http://127.0.0.1:9/hook"
on = ["job.created"]
retry = {{ schedule = ["1h"] }}
"#
    );
    let config = write_config_on(dir.path(), &upstream.uri(), &with_sink, "30s", &url);
    let app = ChildApp::start(&config, free_port()).await;
    job_of(&app.client, "dev", "1").await;
    until(&app.client, "sink=old&state=pending", "tried once", |l| {
        l.len() == 1 && l[0]["tries"] == 1
    })
    .await;
    app.terminate(Duration::from_secs(10)).await;

    let config = write_config_on(dir.path(), &upstream.uri(), RULE, "30s", &url);
    let app = ChildApp::start(&config, free_port()).await;
    let dropped = notifications(&app.client, "state=dropped").await;
    assert_eq!(dropped.len(), 1, "{dropped:#?}");
    assert_eq!(dropped[0]["sink"], "old");
    assert!(notifications(&app.client, "state=pending").await.is_empty());
    let records = app.client.audit("kind=notification.dropped").await;
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["actor"], "config");
    assert!(
        records[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("1 pending notifications to sink old")
    );
}

#[tokio::test]
async fn a_redirect_is_retried_and_never_followed() {
    let elsewhere = receiver(None, 204).await;
    let moved = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(307)
                .insert_header("location", format!("{}/hook", elsewhere.uri())),
        )
        .mount(&moved)
        .await;
    let config = format!(
        r#"{RULE}
[[notifications]]
name = "moved"
format = "standard-webhooks"
url = "{}/hook"
secrets = ["{NEW_WHSEC}"]
on = ["job.created"]
retry = {{ schedule = ["20ms", "20ms"] }}
"#,
        moved.uri()
    );
    let app = crate::harness::spawn_app(&config).await;
    job_of(&app, "dev", "1").await;
    let failed = until(&app, "state=failed", "given up", |l| l.len() == 1).await;
    assert_eq!(failed[0]["tries"], 3);
    assert_eq!(failed[0]["last_status"], 307);
    assert_eq!(requests(&moved).await.len(), 3);
    assert!(
        requests(&elsewhere).await.is_empty(),
        "the redirect was followed"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_cli_lists_and_retries_notifications_and_enables_sinks() {
    use crate::cli::admin;
    let gone = receiver(None, 410).await;
    let config = format!(
        r#"{RULE}
[[notifications]]
name = "gone"
format = "generic"
url = "{}/hook"
on = ["job.created"]
"#,
        gone.uri()
    );
    let app = crate::harness::spawn_app(&config).await;
    let job = job_of(&app, "dev", "1").await;
    until(&app, "sink=gone", "tried", |l| {
        l.len() == 1 && l[0]["tries"] == 1
    })
    .await;

    let (code, stdout, stderr) = admin(
        &app.base,
        VIEWER_TOKEN,
        &[
            "notifications",
            "list",
            "--sink",
            "gone",
            "--output",
            "json",
        ],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["job_id"], job.as_str());
    let id = lines[0]["id"].as_str().unwrap();
    let (code, stdout, _) = admin(&app.base, VIEWER_TOKEN, &["notifications", "list"]).await;
    assert_eq!(code, 0);
    assert!(stdout.starts_with("ID "), "{stdout}");
    assert!(
        stdout.contains(id) && stdout.contains("410 Gone"),
        "{stdout}"
    );

    let (code, stdout, _) = admin(&app.base, VIEWER_TOKEN, &["notifications", "sinks"]).await;
    assert_eq!(code, 0);
    let row = stdout.lines().find(|l| l.starts_with("gone ")).unwrap();
    assert!(
        row.contains("generic") && !row.trim_end().ends_with('-'),
        "disabled: {stdout}"
    );

    // Only a failed notification is retried; the API's refusal is the CLI's.
    let (code, _, stderr) = admin(&app.base, OPS_TOKEN, &["notifications", "retry", id]).await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("409") && stderr.contains("invalid_state"),
        "{stderr}"
    );
    let (code, _, stderr) = admin(
        &app.base,
        VIEWER_TOKEN,
        &["notifications", "enable", "gone"],
    )
    .await;
    assert_eq!(code, 1);
    assert!(stderr.contains("403"), "{stderr}");
    gone.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&gone)
        .await;
    let (code, stdout, _) = admin(&app.base, OPS_TOKEN, &["notifications", "enable", "gone"]).await;
    assert_eq!(code, 0);
    assert_eq!(stdout.trim(), "sink gone is enabled");
    until(&app, "state=delivered", "delivered once enabled", |l| {
        l.len() == 1
    })
    .await;
    app.stop().await;
}
