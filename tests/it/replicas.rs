//! Three `gantry serve` replicas on one PostgreSQL database (SPEC §7): signed events
//! spread across them, one replica SIGKILLed half-way. Senders do what a real one
//! does when a replica does not answer: send the same body to the next. Every event
//! is promoted exactly once, and the audit chain written by all three verifies.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::crash::{event, fake_config, fake_with_events, jobs_in};
use crate::harness::{ChildApp, Client, VIEWER_TOKEN, free_port};
use crate::stores::{Open, TestStore};

const EVENTS: usize = 1000;
const REPLICAS: usize = 3;
const SENDERS: usize = 16;

/// Attempts lost with a killed replica and taken over by another (`lease_expired`).
async fn taken_over(client: &Client) -> usize {
    let (mut n, mut after) = (0, 0);
    loop {
        let query = format!("kind=job.attempt&limit=1000&after={after}");
        let records = client.audit(&query).await;
        n += records
            .iter()
            .filter(|r| {
                r["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("lease_expired")
            })
            .count();
        match records.last() {
            Some(last) if records.len() == 1000 => after = last["seq"].as_i64().unwrap(),
            _ => return n,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_the_work_and_lose_nothing_when_one_is_killed() {
    let Some(store) = TestStore::postgres().await else {
        return;
    };
    let started = Instant::now();
    let fake = fake_with_events(EVENTS, Duration::from_millis(5)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = fake_config(&store, dir.path(), &fake, "2s", "");

    // Started together: their migrations take turns on the advisory lock.
    let mut apps = futures_util::future::join_all(
        (0..REPLICAS).map(|_| ChildApp::start(&config, free_port())),
    )
    .await;
    let clients: Arc<Vec<Client>> = Arc::new(
        apps.iter()
            .map(|a| Client::new(a.client.base.clone()))
            .collect(),
    );
    let victim = apps.remove(0);

    // Event i goes to replica i % 3; when that one does not accept it (refused,
    // reset, 503), the same body goes to the next. 202 is a new event, 200 one the
    // killed replica had committed before it could answer.
    let next = Arc::new(AtomicUsize::new(0));
    let answers = Arc::new(Mutex::new(Vec::<(usize, u16, usize)>::new()));
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        let (clients, next, answers) = (clients.clone(), next.clone(), answers.clone());
        senders.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= EVENTS {
                    return;
                }
                let body = event(i);
                let deadline = Instant::now() + Duration::from_secs(20);
                'sent: loop {
                    for k in 0..REPLICAS {
                        let r = (i + k) % REPLICAS;
                        if let Ok(status @ (200 | 202)) = clients[r].try_send("ci", &body).await {
                            answers.lock().unwrap().push((i, status, r));
                            break 'sent;
                        }
                    }
                    assert!(Instant::now() < deadline, "event {i} was never accepted");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    let killer = {
        let answers = answers.clone();
        tokio::spawn(async move {
            crate::harness::eventually("half of the answers", Duration::from_secs(60), || {
                answers.lock().unwrap().len() >= EVENTS / 2
            })
            .await;
            victim.kill();
            answers.lock().unwrap().len()
        })
    };
    for s in senders {
        s.await.unwrap();
    }
    let killed_at = killer.await.unwrap();
    let answers = answers.lock().unwrap().clone();
    let sent_in = started.elapsed();

    let survivor = &clients[1];
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let mut open = 0;
        for state in ["queued", "running", "retrying"] {
            open += jobs_in(survivor, state).await.len();
        }
        if open == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{open} jobs still open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    assert_eq!(answers.len(), EVENTS, "every event got an answer");
    let per_replica = |r: usize| {
        answers
            .iter()
            .filter(|(_, status, at)| *status == 202 && *at == r)
            .count()
    };
    for r in 0..REPLICAS {
        assert!(per_replica(r) > 0, "replica {r} accepted nothing");
    }
    assert_eq!(jobs_in(survivor, "failed").await.len(), 0);
    let succeeded = jobs_in(&clients[2], "succeeded").await.len();
    assert_eq!(succeeded, EVENTS);
    for i in 0..EVENTS {
        let effects = fake.effects_on("staging", "app", &format!("1.0.{i}"));
        assert_eq!(effects, 1, "event {i} was promoted {effects} times");
    }
    assert_eq!(fake.effects(), EVENTS);

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["audit", "verify", "--url", &survivor.base, "--token"])
        .arg(VIEWER_TOKEN)
        .env_clear()
        .output()
        .await
        .unwrap();
    let verdict = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{verdict}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let total = started.elapsed();
    assert!(total < Duration::from_secs(60), "took {total:?}");
    println!(
        "{EVENTS} events over {REPLICAS} replicas, replica 0 killed after {killed_at} answers; \
         accepted (202) per replica {:?}, answered 200 as already stored {}; \
         {succeeded} jobs succeeded ({} taken over from the killed replica), {} promotions; \
         sent in {sent_in:?}, all done in {total:?}; audit: {}",
        (0..REPLICAS).map(per_replica).collect::<Vec<_>>(),
        answers.iter().filter(|(_, s, _)| *s == 200).count(),
        taken_over(survivor).await,
        fake.effects(),
        verdict.trim()
    );
}
