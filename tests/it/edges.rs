//! Hygiene at the edges (SPEC §13), the parts outside the targets: bounded listings,
//! refusals that cannot grow the store, long made-up source names, pooled
//! connections a server closed, admin commands that cannot hang, and the lease.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry::config::{PostgresUrl, StoreUrl};
use gantry::domain::{Event, Subject, new_id, now_millis};
use gantry::store::{EventFilter, IngestPolicy, NewEvent, Store};
use serde_json::{Value, json};

use crate::harness::spawn_app;
use crate::stores::{Open, PgSchema};

const POLICY: IngestPolicy = IngestPolicy {
    dedupe_window: Duration::from_secs(86_400),
    max_chain_depth: 5,
};

/// A store of either engine, and what keeps its database alive.
struct Opened {
    store: Arc<dyn Store>,
    _db: Box<dyn std::any::Any + Send>,
}

impl Open for Opened {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = gantry::store::open(&StoreUrl::Sqlite(dir.path().join("g.db")))
            .await
            .unwrap();
        Opened {
            store,
            _db: Box::new(dir),
        }
    }

    async fn postgres() -> Option<Self> {
        let schema = PgSchema::create().await?;
        let url = StoreUrl::Postgres(PostgresUrl::parse(&schema.url()).unwrap());
        let store = gantry::store::open(&url).await.unwrap();
        Some(Opened {
            store,
            _db: Box::new(schema),
        })
    }
}

on_each_store!(Opened: a_page_of_events_is_bounded_by_bytes_and_pages_on,);

fn big_event(n: usize, pad: usize) -> NewEvent {
    NewEvent {
        event: Event {
            id: new_id(),
            source: "ci".into(),
            kind: "test-passed".into(),
            delivery_id: new_id(),
            received_at: now_millis(),
            subject: Subject::default(),
            payload: json!({ "n": n, "pad": "x".repeat(pad) }),
            parent_job_id: None,
            chain_depth: 0,
            claims: None,
        },
        jobs: Vec::new(),
        evidence: Vec::new(),
        notes: Vec::new(),
    }
}

/// 40 events of 1 MiB: a page of 1000 holds at most 8 MiB of them (7 whole events
/// plus the one that crosses the bound), and the cursor leads through all 40.
async fn a_page_of_events_is_bounded_by_bytes_and_pages_on(o: Opened) {
    const EVENTS: usize = 40;
    for n in 0..EVENTS {
        o.store
            .ingest(vec![big_event(n, 1 << 20)], POLICY)
            .await
            .unwrap();
    }
    let mut before = None;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = o
            .store
            .events(EventFilter {
                before: before.clone(),
                limit: 1000,
                ..EventFilter::default()
            })
            .await
            .unwrap();
        pages += 1;
        assert!(
            page.items.len() <= 8,
            "a page of {} events of 1 MiB",
            page.items.len()
        );
        seen.extend(
            page.items
                .iter()
                .map(|e| e.event.payload["n"].as_u64().unwrap()),
        );
        match page.next {
            Some(next) => before = Some(next),
            None => break,
        }
        assert!(pages <= EVENTS, "the cursor does not advance");
    }
    let newest_first: Vec<u64> = (0..EVENTS as u64).rev().collect();
    assert_eq!(seen, newest_first);
    assert!(pages >= 5, "{pages} pages");
    // One event larger than the bound still comes back alone.
    o.store
        .ingest(vec![big_event(99, 9 << 20)], POLICY)
        .await
        .unwrap();
    let page = o
        .store
        .events(EventFilter {
            limit: 1000,
            ..EventFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].event.payload["n"], 99);
    assert!(page.next.is_some());
}

/// A server restart (here: every session of the store's terminated by the server)
/// leaves the pool holding closed connections; the next request gets a fresh one
/// instead of an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_pooled_connections_closed_by_the_server_are_replaced() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let url = StoreUrl::Postgres(PostgresUrl::parse(&schema.url()).unwrap());
    let store = gantry::store::open(&url).await.unwrap();
    // Several connections in the pool, each used once.
    let reads: Vec<_> = (0..4)
        .map(|_| {
            let s = store.clone();
            tokio::spawn(async move {
                s.events(EventFilter {
                    limit: 1,
                    ..EventFilter::default()
                })
                .await
            })
        })
        .collect();
    for r in reads {
        r.await.unwrap().unwrap();
    }
    // And the connections the group-commit lanes keep from ingest to ingest.
    let ingest = |n: usize| {
        let store = store.clone();
        async move { store.ingest(vec![big_event(n, 10)], POLICY).await }
    };
    ingest(0).await.unwrap();
    let admin = schema.connect().await;
    let killed: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE application_name = $1 AND pid <> pg_backend_pid()
               AND query NOT ILIKE '%LISTEN%'",
            &[&schema.name()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed >= 1, "no pooled session to terminate");
    for i in 0..8 {
        store
            .events(EventFilter {
                limit: 1,
                ..EventFilter::default()
            })
            .await
            .unwrap_or_else(|e| panic!("request {i} after the sessions were closed: {e}"));
        ingest(i + 1)
            .await
            .unwrap_or_else(|e| panic!("ingest {i} after the sessions were closed: {e}"));
    }
}

/// Refused requests: the first per source and reason is on the record at once, the
/// rest of the period as one record with their count; unknown sources, whatever
/// their names, share one key; the metrics count each.
#[tokio::test]
async fn refusals_are_summarised_on_the_record_and_counted_in_metrics() {
    let app = spawn_app("[audit]\nrejections_every = \"1s\"\n").await;
    let client = reqwest::Client::new();
    const EACH: usize = 60;
    for i in 0..EACH {
        let bad = client
            .post(format!("{}/hooks/ci", app.base))
            .header("Content-Type", "application/json")
            .header("X-Signature", "sha256=00")
            .body(format!(r#"{{"event":"x","i":{i}}}"#))
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 401);
        let name = format!("made-up-{i}-{}", "y".repeat(4000));
        let unknown = client
            .post(format!("{}/hooks/{name}", app.base))
            .header("Content-Type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(unknown.status(), 404);
        let body: Value = unknown.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.len() < 100,
            "answer echoes the whole name: {} bytes",
            message.len()
        );
    }
    // Right away: one record per key, for the first refusal.
    let now = app.audit("kind=event.rejected&limit=1000").await;
    assert_eq!(now.len(), 2, "{now:#?}");
    // Within the period's end: the rest, counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    let records = loop {
        let r = app.audit("kind=event.rejected&limit=1000").await;
        if r.len() >= 4 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(records.len(), 4, "{records:#?}");
    let total = |actor: &dyn Fn(&str) -> bool| -> u64 {
        records
            .iter()
            .filter(|r| actor(r["actor"].as_str().unwrap()))
            .map(|r| r["count"].as_u64().unwrap_or(1))
            .sum()
    };
    assert_eq!(total(&|a| a == "ci"), EACH as u64);
    assert_eq!(total(&|a| a.starts_with("made-up-")), EACH as u64);
    for r in &records {
        let actor = r["actor"].as_str().unwrap();
        assert!(actor.len() <= 64 + 3, "actor of {} bytes", actor.len());
        assert!(r["message"].as_str().unwrap().len() < 400);
    }
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    for (label, n) in [("ci", EACH), ("unknown", EACH)] {
        let line =
            format!(r#"gantry_events_received_total{{source="{label}",result="rejected"}} {n}"#);
        assert!(metrics.contains(&line), "{line} not in metrics");
    }
    // A good request is still accepted and recorded as usual.
    let ok = app.send("ci", br#"{"event":"x"}"#).await;
    assert_eq!(ok.status(), 202);
    app.stop().await;
}

/// An admin command against a server that accepts and never answers gives up
/// after `--timeout` with exit 1, instead of hanging the script that ran it.
#[tokio::test]
async fn an_admin_command_gives_up_after_its_timeout() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    // Accepts and holds every connection, answering nothing.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let started = Instant::now();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["jobs", "list", "--timeout", "1s", "--token", "t", "--url"])
        .arg(format!("http://{addr}"))
        .env_clear()
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), out)
        .await
        .expect("the command hung")
        .unwrap();
    let took = started.elapsed();
    holder.abort();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach gantry"), "{stderr}");
}

/// A 4 KB made-up source name reaches no log line whole: the request span's path
/// and the refusal's message are cut.
#[tokio::test]
async fn a_long_unknown_source_name_is_cut_in_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let config = crate::harness::write_config(dir.path(), "http://127.0.0.1:1", "", "30s");
    let log_path = dir.path().join("gantry.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let app =
        crate::harness::ChildApp::start_logged(&config, crate::harness::free_port(), log).await;
    let name = format!("n{}", "z".repeat(4096));
    let status = reqwest::Client::new()
        .post(format!("{}/hooks/{name}", app.client.base))
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404);
    assert!(app.terminate(Duration::from_secs(10)).await.success());
    let logged = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        logged.contains("nzzz"),
        "the request is not in the log at all"
    );
    let longest = logged
        .lines()
        .flat_map(|l| l.split(|c: char| c != 'z'))
        .map(str::len)
        .max()
        .unwrap_or(0);
    assert!(
        longest <= 64,
        "a run of {longest} bytes of the name in the log"
    );
}

/// A config in `dir` with one promote rule against `upstream`, on `schema`, with a
/// lease of one second.
fn one_rule_on(
    dir: &tempfile::TempDir,
    upstream: &wiremock::MockServer,
    schema: &PgSchema,
) -> std::path::PathBuf {
    crate::harness::write_config_on(
        dir.path(),
        &upstream.uri(),
        r#"
[[rules]]
name = "r"
source = "ci"
event = "test-passed"
action = { type = "promote", target = "jfrog", to_repo = "staging" }
"#,
        "1s",
        &schema.url(),
    )
}

/// Two replicas whose clocks disagree by an hour: the one ahead must not take over
/// a job the other still holds and renews, because leases are judged by the
/// store's clock (SPEC §13). Needs Debian's `faketime`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_clock_runs_ahead_does_not_take_over_a_held_lease() {
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3)))
        .mount(&upstream)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let config = one_rule_on(&dir, &upstream, &schema);
    let holder = crate::harness::ChildApp::start(&config, crate::harness::free_port()).await;
    let body = br#"{"event":"test-passed","repo":"dev","image":"app","tag":"1.0.0"}"#;
    let answer: Value = holder.client.send("ci", body).await.json().await.unwrap();
    let id = answer["jobs"][0]["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while crate::harness::posts(&upstream).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the promote never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The promote is at the upstream for 3 s, three leases; a workers-only replica an hour ahead
    // starts beside it.
    // libfaketime preloaded into gantry itself (not the `faketime` wrapper, whose
    // child would outlive the kill at the end of the test).
    let libfaketime = std::fs::read_dir("/usr/lib")
        .unwrap()
        .flatten()
        .map(|d| d.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists())
        .expect("Debian's faketime is needed (apt-get install faketime)");
    let ahead = tokio::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["serve", "--workers-only", "--config"])
        .arg(&config)
        .envs(crate::harness::env())
        .env("LD_PRELOAD", libfaketime)
        .env("FAKETIME", "+1h")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let job = holder.client.wait_final(&id).await;
    // Still running, then stopped for good: it cannot have exited on its own.
    let mut ahead = ahead;
    assert!(
        ahead.try_wait().unwrap().is_none(),
        "the replica ahead exited"
    );
    ahead.kill().await.unwrap();
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(
        job["attempts"].as_array().unwrap().len(),
        1,
        "the job was taken over: {job:#}"
    );
    assert_eq!(crate::harness::posts(&upstream).await, 1, "promoted twice");
}

/// A worker that learns its lease is lost makes no upstream call after that: here
/// the replica holding the job is paused past its lease while it waits for a
/// read, another replica takes the job over, and when the first one resumes its
/// renewal says the job is no longer its own, so it never sends the promote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_lost_its_lease_makes_no_further_call() {
    use wiremock::matchers::{method, path_regex};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let upstream = MockServer::start().await;
    // Reading the source tag takes 4 s; everything else answers at once.
    Mock::given(method("HEAD"))
        .and(path_regex("/api/docker/dev/"))
        .respond_with(ResponseTemplate::new(404).set_delay(Duration::from_secs(4)))
        .mount(&upstream)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&upstream)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let config = one_rule_on(&dir, &upstream, &schema);
    let first = crate::harness::ChildApp::start(&config, crate::harness::free_port()).await;
    let body = br#"{"event":"test-passed","repo":"dev","image":"app","tag":"1.0.0"}"#;
    let answer: Value = first.client.send("ci", body).await.json().await.unwrap();
    let id = answer["jobs"][0]["id"].as_str().unwrap().to_string();
    let heads = || async {
        upstream
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|r| r.method.as_str() == "HEAD")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while heads().await == 0 {
        assert!(Instant::now() < deadline, "the source read never came");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &first.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    };
    signal("-STOP");
    // The second replica takes the job over once the paused one's lease expires.
    let second = crate::harness::ChildApp::start(&config, crate::harness::free_port()).await;
    second
        .client
        .wait_for(&id, |j| {
            j["attempts"].as_array().is_some_and(|a| a.len() == 1)
        })
        .await;
    signal("-CONT");
    let job = second.client.wait_final(&id).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(
        job["attempts"][0]["error"]["code"], "lease_expired",
        "{job:#}"
    );
    // Time for the first replica's read to come back, and its promote if it sent one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        crate::harness::posts(&upstream).await,
        1,
        "promoted by both replicas"
    );
}
