//! A worker killed mid-attempt: its job is taken over once the lease expires. Every
//! test runs on SQLite and on PostgreSQL.

use std::time::Duration;

use serde_json::Value;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::fake_artifactory::FakeArtifactory;
use crate::harness::{ChildApp, VIEWER_TOKEN, free_port, posts, write_config_on};
use crate::stores::TestStore;

on_each_store!(
    TestStore:
    a_job_whose_worker_died_is_retaken_after_its_lease_expires,
    sigterm_lets_the_running_attempt_finish_and_leaves_the_queue_for_the_next_start,
    an_attempt_cut_off_by_the_grace_period_is_released_and_not_repeated,
    killed_mid_stream_every_accepted_event_is_promoted_exactly_once,
);

async fn a_job_whose_worker_died_is_retaken_after_its_lease_expires(store: TestStore) {
    let upstream = MockServer::start().await;
    // The first promote hangs long enough for the process to be killed under it.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(30)))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&upstream)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&upstream)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_on(
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
        &store.url(dir.path()),
    );

    let first = ChildApp::start(&config, free_port()).await;
    let body = br#"{"event":"test-passed","repo":"dev","image":"app","tag":"1.0.0"}"#;
    let answer: Value = first.client.send("ci", body).await.json().await.unwrap();
    let id = answer["jobs"][0]["id"].as_str().unwrap().to_string();
    first
        .client
        .wait_for(&id, |j| j["state"] == "running")
        .await;
    // Wait until the request is at the upstream, then kill the process under it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while posts(&upstream).await == 0 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill();

    let second = ChildApp::start(&config, free_port()).await;
    let job = second.client.wait_final(&id).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{job:#}");
    assert_eq!(attempts[0]["error"]["code"], "lease_expired");
    assert_eq!(attempts[1]["n"], 2);
    assert_eq!(attempts[1]["upstream_status"], 200);
    assert_eq!(posts(&upstream).await, 2);
}

/// A config on the fake Artifactory and `store`; `extra` goes into `[worker]`-free
/// TOML after it.
pub fn fake_config(
    store: &TestStore,
    dir: &std::path::Path,
    fake: &FakeArtifactory,
    lease: &str,
    extra: &str,
) -> std::path::PathBuf {
    write_config_on(
        dir,
        &fake.uri(),
        &format!(
            r#"
[[rules]]
name = "dev-to-staging"
source = "ci"
event = "test-passed"
action = {{ type = "promote", target = "jfrog", to_repo = "staging" }}
{extra}
"#
        ),
        lease,
        &store.url(dir),
    )
}

pub fn event(i: usize) -> Vec<u8> {
    format!(
        r#"{{"event":"test-passed","repo":"dev","image":"app","tag":"1.0.{i}","digest":"sha256:{i:064x}"}}"#
    )
    .into_bytes()
}

/// Every job in `state`, paging through the listing.
pub async fn jobs_in(client: &crate::harness::Client, state: &str) -> Vec<Value> {
    let (mut jobs, mut after) = (Vec::new(), String::new());
    loop {
        let r: Value = client
            .get(
                &format!("/api/v1/jobs?state={state}&limit=1000{after}"),
                Some(VIEWER_TOKEN),
            )
            .await
            .json()
            .await
            .unwrap();
        jobs.extend(r["jobs"].as_array().unwrap().iter().cloned());
        match r["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => return jobs,
        }
    }
}

async fn sigterm_lets_the_running_attempt_finish_and_leaves_the_queue_for_the_next_start(
    store: TestStore,
) {
    let fake = FakeArtifactory::start().await;
    for i in 0..3 {
        fake.put(
            "dev",
            "app",
            &format!("1.0.{i}"),
            &format!("sha256:{i:064x}"),
        );
    }
    fake.set_delay(Duration::from_millis(1500));
    let dir = tempfile::tempdir().unwrap();
    let config = fake_config(&store, dir.path(), &fake, "30s", "");
    let port = free_port();
    // One worker: one attempt runs, the other jobs wait in the queue.
    let first =
        ChildApp::start_with_env(&config, port, &[], &[("GANTRY__WORKER__CONCURRENCY", "1")]).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let answer: Value = first
            .client
            .send("ci", &event(i))
            .await
            .json()
            .await
            .unwrap();
        ids.push(answer["jobs"][0]["id"].as_str().unwrap().to_string());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fake.promote_calls() == 0 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = first.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}");
    assert_eq!(
        fake.effects(),
        1,
        "the running attempt completed before the exit"
    );

    // Look at the store without running any worker.
    let inspect = ChildApp::start_with(
        &config,
        free_port(),
        &["--no-workers"],
        std::process::Stdio::null(),
    )
    .await;
    let done = inspect.client.job(&ids[0]).await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    for id in &ids[1..] {
        let job = inspect.client.job(id).await;
        assert_eq!(job["state"], "queued", "{job:#}");
        assert_eq!(job["attempts"], serde_json::json!([]));
    }
    inspect.kill();

    fake.set_delay(Duration::ZERO);
    let second = ChildApp::start(&config, port).await;
    for id in &ids {
        assert_eq!(second.client.wait_final(id).await["state"], "succeeded");
    }
    assert_eq!(fake.effects(), 3);
}

async fn an_attempt_cut_off_by_the_grace_period_is_released_and_not_repeated(store: TestStore) {
    let fake = FakeArtifactory::start().await;
    fake.put("dev", "app", "1.0.0", &format!("sha256:{:064x}", 0));
    // The upstream takes 1 s to act; the process gives it 200 ms.
    fake.set_delay(Duration::from_secs(1));
    let dir = tempfile::tempdir().unwrap();
    let config = fake_config(&store, dir.path(), &fake, "30s", "");
    let first = ChildApp::start_with_env(
        &config,
        free_port(),
        &[],
        &[("GANTRY__SERVER__SHUTDOWN_GRACE", "200ms")],
    )
    .await;
    let answer: Value = first
        .client
        .send("ci", &event(0))
        .await
        .json()
        .await
        .unwrap();
    let id = answer["jobs"][0]["id"].as_str().unwrap().to_string();
    crate::harness::eventually("the first promote call", Duration::from_secs(10), || {
        fake.promote_calls() > 0
    })
    .await;
    assert!(first.terminate(Duration::from_secs(5)).await.success());

    let second = ChildApp::start(&config, free_port()).await;
    let job = second.client.wait_final(&id).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["error"]["code"], "interrupted");
    assert_eq!(
        job["outcome"], "noop",
        "the interrupted promote took effect; it was not repeated"
    );
    assert_eq!(fake.effects(), 1);
}

/// A fake Artifactory holding the source tag of each of the first `n` [`event`]s,
/// answering after `delay`.
pub async fn fake_with_events(n: usize, delay: Duration) -> FakeArtifactory {
    let fake = FakeArtifactory::start().await;
    for i in 0..n {
        fake.put(
            "dev",
            "app",
            &format!("1.0.{i}"),
            &format!("sha256:{i:064x}"),
        );
    }
    fake.set_delay(delay);
    fake
}

async fn killed_mid_stream_every_accepted_event_is_promoted_exactly_once(store: TestStore) {
    const EVENTS: usize = 600;
    let fake = fake_with_events(EVENTS, Duration::from_millis(20)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = fake_config(&store, dir.path(), &fake, "2s", "");
    let port = free_port();
    let first = ChildApp::start(&config, port).await;
    let client = std::sync::Arc::new(crate::harness::Client::new(first.client.base.clone()));

    // 16 senders share the events; the process is killed once 300 were accepted.
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (killed_tx, killed_rx) = tokio::sync::oneshot::channel::<()>();
    let mut senders = Vec::new();
    for _ in 0..16 {
        let (client, next, accepted) = (client.clone(), next.clone(), accepted.clone());
        senders.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= EVENTS {
                    return;
                }
                if let Ok(status) = client.try_send("ci", &event(i)).await
                    && status == 202
                {
                    accepted.lock().unwrap().push(i);
                }
            }
        }));
    }
    let watcher = {
        let accepted = accepted.clone();
        tokio::spawn(async move {
            crate::harness::eventually("300 accepted events", Duration::from_secs(60), || {
                accepted.lock().unwrap().len() >= 300
            })
            .await;
            first.kill();
            let _ = killed_tx.send(());
        })
    };
    for s in senders {
        s.await.unwrap();
    }
    watcher.await.unwrap();
    killed_rx.await.unwrap();
    let accepted: Vec<usize> = accepted.lock().unwrap().clone();
    assert!(
        accepted.len() >= 300 && accepted.len() < EVENTS,
        "{} accepted",
        accepted.len()
    );

    let second = ChildApp::start(&config, port).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut open = 0;
        for state in ["queued", "running", "retrying"] {
            open += jobs_in(&second.client, state).await.len();
        }
        if open == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{open} jobs still open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(jobs_in(&second.client, "failed").await.is_empty());
    for i in 0..EVENTS {
        let effects = fake.effects_on("staging", "app", &format!("1.0.{i}"));
        if accepted.contains(&i) {
            assert_eq!(
                effects, 1,
                "accepted event {i} was promoted {effects} times"
            );
        } else {
            assert!(
                effects <= 1,
                "unanswered event {i} was promoted {effects} times"
            );
        }
    }
    let succeeded = jobs_in(&second.client, "succeeded").await.len();
    assert!(succeeded >= accepted.len());
    println!(
        "{} of {EVENTS} events accepted before SIGKILL; {succeeded} jobs succeeded; {} promotions made",
        accepted.len(),
        fake.effects()
    );
}
