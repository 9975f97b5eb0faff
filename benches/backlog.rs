//! Backlog (benchmark 10 of bench/README.md, SPEC §14): leasing costs the same
//! however many jobs are queued, and a target that comes back after an outage is
//! drained at its `max_concurrency`. On SQLite and, when a server answers, on
//! PostgreSQL.
//!
//! - Lease: `BACKLOG` + 200 jobs are queued through the store's own ingest (batches
//!   of 1 000 events, a job each, as a target's outage leaves them), then 200 leases
//!   are timed one by one, so the backlog goes from `BACKLOG` + 200 down to
//!   `BACKLOG`; the same with 100 instead of `BACKLOG`. Prints p50 and p90 of each
//!   and the ratio.
//! - Drain: `DRAIN` jobs are queued the same way for a fake Artifactory that answers
//!   each call after 1 ms; then `gantry serve` starts with 16 workers and the target's
//!   `max_concurrency = 16`, and the rate from the first promote call to the last is
//!   the drain rate. Every job must make exactly one call. Printed beside the fake's
//!   own capacity: 16 callers sending the same promote call for 2 s.
//!
//! bench/backlog.sh runs it; `SMOKE=1` makes both figures small; `ENGINES`
//! (`sqlite postgres`) picks the stores.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gantry::config::{PostgresUrl, StoreUrl};
use gantry::domain::{Action, Event, ImageRef, NewJob, Op, Subject, new_id, now_millis};
use gantry::store::{IngestPolicy, NewEvent, Store};

#[allow(dead_code, reason = "the tests' fake; this bench uses a part of it")]
#[path = "../tests/it/fake_artifactory.rs"]
mod fake_artifactory;
#[allow(
    dead_code,
    unused_macros,
    reason = "the tests' stores; this bench uses a part"
)]
#[path = "../tests/it/stores.rs"]
mod stores;
mod support;

use fake_artifactory::FakeArtifactory;
use support::{env_or, ms, percentile};

const SECRET: &str = "bench-backlog-secret-0123456789";
const POLICY: IngestPolicy = IngestPolicy {
    dedupe_window: Duration::from_secs(86_400),
    max_chain_depth: 5,
};
/// Leases timed per backlog size.
const LEASES: usize = 200;
/// The workers, and the target's `max_concurrency`, of the drain (`support::promote_config`).
const CONCURRENCY: usize = 16;

/// Where a store lives for one measurement: a SQLite file, or a PostgreSQL schema
/// dropped at the end.
enum Db {
    Sqlite(tempfile::TempDir),
    Postgres(stores::PgSchema),
}

impl Db {
    async fn new(engine: &str) -> Db {
        match engine {
            "sqlite" => Db::Sqlite(tempfile::tempdir().expect("temp dir")),
            _ => Db::Postgres(
                stores::PgSchema::create()
                    .await
                    .expect("a PostgreSQL server (GANTRY_TEST_PG)"),
            ),
        }
    }

    /// The URL a config names it by.
    fn url(&self) -> String {
        match self {
            Db::Sqlite(dir) => format!("sqlite://{}", dir.path().join("gantry.db").display()),
            Db::Postgres(schema) => schema.url(),
        }
    }

    async fn open(&self) -> Arc<dyn Store> {
        let url = match self {
            Db::Sqlite(dir) => StoreUrl::Sqlite(dir.path().join("gantry.db")),
            Db::Postgres(schema) => StoreUrl::Postgres(
                PostgresUrl::parse(&schema.url()).expect("the schema's URL parses"),
            ),
        };
        gantry::store::open(&url).await.expect("open the store")
    }
}

/// The tag of the `i`-th queued job.
fn tag(i: usize) -> String {
    format!("1.0.{i}")
}

/// An event from `ci` for `team-a/api:{tag}` with the job the ingest benchmark's rule
/// makes of it: promote to `docker-staging` on `jfrog`.
fn queued(i: usize) -> NewEvent {
    let image = |repo: &str| ImageRef {
        repo: repo.into(),
        image: "team-a/api".into(),
        tag: tag(i),
        digest: None,
    };
    NewEvent {
        event: Event {
            id: new_id(),
            source: "ci".into(),
            kind: "test-passed".into(),
            delivery_id: new_id(),
            received_at: now_millis(),
            subject: Subject {
                repo: Some("docker-dev".into()),
                image: Some("team-a/api".into()),
                tag: Some(tag(i)),
                ..Subject::default()
            },
            payload: serde_json::json!({"event": "test-passed", "tag": tag(i)}),
            parent_job_id: None,
            chain_depth: 0,
            claims: None,
        },
        jobs: vec![NewJob {
            id: new_id(),
            rule: "tested-to-staging".into(),
            target: "jfrog".into(),
            action: Ok(Action {
                op: Op::Promote {
                    from: image("docker-dev"),
                    to: image("docker-staging"),
                    copy: true,
                    to_target: None,
                },
                dry_run: false,
            }),
            approval: None,
            initiator: None,
            gate: None,
            soak_until: None,
            trace_parent: None,
        }],
        evidence: Vec::new(),
        notes: Vec::new(),
    }
}

/// Queues `n` jobs, 1 000 to an ingest.
async fn fill(store: &dyn Store, n: usize) {
    let mut i = 0;
    while i < n {
        let batch: Vec<NewEvent> = (i..n.min(i + 1000)).map(queued).collect();
        i += batch.len();
        store.ingest(batch, POLICY).await.expect("queue jobs");
    }
}

/// Each of [`LEASES`] leases' time, sorted, from a backlog of `backlog` + LEASES.
async fn lease_times(engine: &str, backlog: usize) -> Vec<Duration> {
    let db = Db::new(engine).await;
    let store = db.open().await;
    fill(store.as_ref(), backlog + LEASES).await;
    let mut times = Vec::with_capacity(LEASES);
    for _ in 0..LEASES {
        let started = Instant::now();
        let leased = store
            .lease_job("bench", Duration::from_secs(600))
            .await
            .expect("lease");
        times.push(started.elapsed());
        assert!(leased.is_some(), "a queued job to lease");
    }
    times.sort();
    times
}

/// Calls per second the fake answers with [`CONCURRENCY`] callers for 2 s.
async fn fake_capacity(fake: &FakeArtifactory) -> f64 {
    let client = reqwest::Client::new();
    let url = format!(
        "{}/artifactory/api/docker/docker-dev/v2/promote",
        fake.uri()
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let until = started + Duration::from_secs(2);
    let callers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (client, url, calls) = (client.clone(), url.clone(), calls.clone());
            tokio::spawn(async move {
                let body = serde_json::json!({"targetRepo": "docker-staging",
                    "dockerRepository": "team-a/api", "tag": tag(0), "copy": true});
                while Instant::now() < until {
                    let answer = client.post(&url).json(&body).send().await;
                    assert!(answer.is_ok_and(|r| r.status().is_success()));
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for c in callers {
        c.await.expect("caller");
    }
    calls.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// A fake Artifactory answering after 1 ms, holding the first `n` tags. A fresh
/// one for each drain: gantry skips a promotion the destination already holds.
async fn slow_fake(n: usize) -> FakeArtifactory {
    let fake = FakeArtifactory::start().await;
    fake.set_delay(Duration::from_millis(1));
    for i in 0..n {
        fake.put("docker-dev", "team-a/api", &tag(i), "sha256:aa");
    }
    fake
}

/// Jobs per second `gantry serve` drains a backlog of `n` at a fake.
async fn drain(engine: &str, n: usize) -> f64 {
    let db = Db::new(engine).await;
    fill(db.open().await.as_ref(), n).await;
    let fake = slow_fake(n).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let port = support::free_port();
    let config = support::promote_config(dir.path(), port, &db.url(), &fake.uri());
    let (mut gantry, _) = support::serve(&config, port, &[("BENCH_SECRET", SECRET)]).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    while fake.promote_calls() < n {
        assert!(Instant::now() < deadline, "the backlog did not drain");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A moment for a second call, which there must not be.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = gantry.kill().await;
    let arrivals = fake.arrivals();
    assert_eq!(arrivals.len(), n, "one promote call per job");
    let took = arrivals[n - 1].1 - arrivals[0].1;
    (n - 1) as f64 / took.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let smoke = env_or("SMOKE", 0) == 1;
    let backlog: usize = env_or("BACKLOG", if smoke { 5_000 } else { 100_000 });
    let drained: usize = env_or("DRAIN", if smoke { 1_000 } else { 20_000 });
    let capacity = fake_capacity(&slow_fake(1).await).await;
    let engines = std::env::var("ENGINES").unwrap_or_else(|_| "sqlite postgres".into());
    for engine in engines.split_whitespace() {
        let small = lease_times(engine, 100).await;
        let large = lease_times(engine, backlog).await;
        let p50 = |t: &[Duration]| percentile(t, 0.5);
        println!(
            "backlog: {engine:8} lease with 100 queued p50 {} p90 {}; with {backlog} queued p50 {} p90 {}: {:.2}x",
            ms(p50(&small)),
            ms(percentile(&small, 0.9)),
            ms(p50(&large)),
            ms(percentile(&large, 0.9)),
            p50(&large).as_secs_f64() / p50(&small).as_secs_f64()
        );
        let rate = drain(engine, drained).await;
        println!(
            "backlog: {engine:8} drained {drained} jobs at {rate:.0}/s; the fake answers {capacity:.0} calls/s with {CONCURRENCY} callers ({:.2}x)",
            rate / capacity
        );
    }
}
