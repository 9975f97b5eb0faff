//! End-to-end latency (benchmark 2 of bench/README.md): from a webhook's 202 to the
//! promote request arriving at a fast fake Artifactory, at a steady event rate.
//!
//! It starts the release `gantry serve` on a fresh SQLite file, sends signed events
//! open-loop (one every 1/rate s, not waiting for answers), and reads each promote
//! call's arrival time at the fake. Every event must produce exactly one promote
//! call. `E2E_RATE` (default 500) and `E2E_SECONDS` (default 20) set the load;
//! bench/e2e.sh runs it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};
use tokio::sync::mpsc;

#[allow(dead_code, reason = "the tests' fake; this bench uses a part of it")]
#[path = "../tests/it/fake_artifactory.rs"]
mod fake_artifactory;
mod support;

use support::{env_or, ms, percentile};

const SECRET: &str = "bench-e2e-secret-0123456789";

#[tokio::main]
async fn main() {
    let rate: u64 = env_or("E2E_RATE", 500);
    let seconds: u64 = env_or("E2E_SECONDS", 20);
    let total = rate * seconds;

    let fake = fake_artifactory::FakeArtifactory::start().await;
    for i in 0..total {
        fake.put("docker-dev", "team-a/api", &format!("1.0.{i}"), "sha256:aa");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let port = support::free_port();
    let db = format!("sqlite://{}", dir.path().join("gantry.db").display());
    let config = support::promote_config(dir.path(), port, &db, &fake.uri());
    let (mut gantry, base) = support::serve(&config, port, &[("BENCH_SECRET", SECRET)]).await;
    let client = reqwest::Client::new();

    // Open loop: a tick per event; each send runs on its own task.
    let (acks, mut acked) = mpsc::unbounded_channel();
    let mut ticks = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    let started = Instant::now();
    for i in 0..total {
        ticks.tick().await;
        let body = serde_json::json!({
            "event": "test-passed", "repo": "docker-dev", "image": "team-a/api",
            "tag": format!("1.0.{i}"),
        })
        .to_string();
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
        mac.update(body.as_bytes());
        let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        let (client, url, acks) = (client.clone(), format!("{base}/hooks/ci"), acks.clone());
        tokio::spawn(async move {
            let sent = Instant::now();
            let response = client
                .post(url)
                .header("X-Signature", signature)
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await;
            let status = response.map(|r| r.status().as_u16()).unwrap_or(0);
            let _ = acks.send((format!("1.0.{i}"), sent, Instant::now(), status));
        });
    }
    drop(acks);
    let sending = started.elapsed();
    let mut answered = HashMap::new();
    let mut ack_latency = Vec::new();
    while let Some((tag, sent, at, status)) = acked.recv().await {
        assert_eq!(status, 202, "event {tag} was not accepted");
        ack_latency.push(at - sent);
        answered.insert(tag, at);
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    while fake.arrivals().len() < total as usize {
        assert!(
            Instant::now() < deadline,
            "only {} of {total} promotions arrived",
            fake.arrivals().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let arrivals = fake.arrivals();
    assert_eq!(arrivals.len(), total as usize, "one promote call per event");
    let mut e2e: Vec<Duration> = arrivals
        .iter()
        .map(|(tag, at)| at.saturating_duration_since(answered[tag]))
        .collect();
    e2e.sort();
    ack_latency.sort();
    if std::env::var_os("E2E_METRICS").is_some() {
        let metrics = client.get(format!("{base}/metrics")).send().await;
        if let Ok(text) = metrics.and_then(|r| r.error_for_status()) {
            println!("{}", text.text().await.unwrap_or_default());
        }
    }
    let _ = gantry.kill().await;

    println!(
        "e2e: {total} events at {rate}/s (sent in {:.2} s), each promoted once",
        sending.as_secs_f64()
    );
    println!(
        "e2e: webhook answered   p50 {}  p99 {}",
        ms(percentile(&ack_latency, 0.5)),
        ms(percentile(&ack_latency, 0.99))
    );
    println!(
        "e2e: 202 -> promote     p50 {}  p99 {}  max {}",
        ms(percentile(&e2e, 0.5)),
        ms(percentile(&e2e, 0.99)),
        ms(e2e[e2e.len() - 1])
    );
}
