//! Gates across processes (SPEC §9): evidence arriving at two replicas at the same
//! moment moves a waiting job exactly once, and a waiting job survives `kill -9`.
//! Real `gantry serve` processes on PostgreSQL (and SQLite for the restart).

use serde_json::Value;

use crate::fake_artifactory::FakeArtifactory;
use crate::gates::SCANNER;
use crate::harness::{ChildApp, Client, free_port, write_config_on};
use crate::stores::{Open, TestStore};

on_each_store!(TestStore: a_waiting_job_survives_kill_9_and_completes_after_the_restart,);

/// The gated rule (with [`SCANNER`] before it).
const GATED: &str = r#"
[[rules]]
name = "to-staging"
source = "ci"
event = "test-passed"
action = { type = "promote", target = "jfrog", to_repo = "staging" }
gate = { within = "1h", require = [
  { name = "scan-clean", source = "scanner", event = "scan.completed" },
  { name = "e2e", source = "ci", event = "e2e-passed" },
] }
"#;

fn digest(i: usize) -> String {
    format!("sha256:{i:064x}")
}

fn trigger(i: usize) -> Vec<u8> {
    format!(
        r#"{{"event":"test-passed","repo":"dev","image":"app","tag":"1.0.{i}","digest":"{}"}}"#,
        digest(i)
    )
    .into_bytes()
}

fn scan(i: usize) -> Vec<u8> {
    format!(r#"{{"event":"scan.completed","digest":"{}"}}"#, digest(i)).into_bytes()
}

fn e2e(i: usize) -> Vec<u8> {
    format!(r#"{{"event":"e2e-passed","digest":"{}"}}"#, digest(i)).into_bytes()
}

async fn accepted(client: &Client, source: &str, body: &[u8]) -> Value {
    let r = client.send(source, body).await;
    assert_eq!(r.status(), 202);
    r.json().await.unwrap()
}

/// Two replicas, many artifacts. For each: the two conditions arrive at once, one at
/// each replica, while the job waits; or the trigger arrives at one replica at the
/// same moment as the last condition at the other. Either way the job runs, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_at_two_replicas_at_once_promotes_exactly_once() {
    const ARTIFACTS: usize = 40;
    let Some(store) = TestStore::postgres().await else {
        return;
    };
    let fake = FakeArtifactory::start().await;
    for i in 0..ARTIFACTS {
        fake.put("dev", "app", &format!("1.0.{i}"), &digest(i));
    }
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_on(
        dir.path(),
        &fake.uri(),
        &format!("{SCANNER}{GATED}"),
        "5s",
        &store.url(dir.path()),
    );
    let (a, b) = tokio::join!(
        ChildApp::start(&config, free_port()),
        ChildApp::start(&config, free_port())
    );
    let (a, b) = (&a.client, &b.client);

    let mut jobs = Vec::new();
    for i in 0..ARTIFACTS {
        if i % 2 == 0 {
            let v = accepted(a, "ci", &trigger(i)).await;
            jobs.push(v["jobs"][0]["id"].as_str().unwrap().to_string());
            let (scan, e2e) = (scan(i), e2e(i));
            tokio::join!(accepted(a, "scanner", &scan), accepted(b, "ci", &e2e));
        } else {
            accepted(b, "scanner", &scan(i)).await;
            let (trigger, e2e) = (trigger(i), e2e(i));
            let (v, _) = tokio::join!(accepted(a, "ci", &trigger), accepted(b, "ci", &e2e));
            jobs.push(v["jobs"][0]["id"].as_str().unwrap().to_string());
        }
    }
    for id in &jobs {
        let job = a.wait_final(id).await;
        assert_eq!(job["state"], "succeeded", "{job:#}");
        assert!(
            job["gate"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["met"] == true)
        );
        let met = a.audit(&format!("job={id}&kind=gate.condition_met")).await;
        assert_eq!(met.len(), 2, "each condition met once: {met:#?}");
    }
    assert_eq!(fake.promote_calls(), ARTIFACTS);
    assert_eq!(fake.effects(), ARTIFACTS);
    let verify: Value = a
        .get("/api/v1/audit/verify", Some(crate::harness::VIEWER_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(verify["ok"], true, "{verify:#}");
}

async fn a_waiting_job_survives_kill_9_and_completes_after_the_restart(store: TestStore) {
    let fake = FakeArtifactory::start().await;
    fake.put("dev", "app", "1.0.0", &digest(0));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_on(
        dir.path(),
        &fake.uri(),
        &format!("{SCANNER}{GATED}"),
        "2s",
        &store.url(dir.path()),
    );
    let first = ChildApp::start(&config, free_port()).await;
    let v = accepted(&first.client, "ci", &trigger(0)).await;
    let id = v["jobs"][0]["id"].as_str().unwrap().to_string();
    accepted(&first.client, "scanner", &scan(0)).await;
    assert_eq!(first.client.job(&id).await["state"], "waiting");
    first.kill();

    let second = ChildApp::start(&config, free_port()).await;
    let job = second.client.job(&id).await;
    assert_eq!(job["state"], "waiting", "{job:#}");
    assert_eq!(job["gate"]["conditions"][0]["met"], true);
    accepted(&second.client, "ci", &e2e(0)).await;
    let job = second.client.wait_final(&id).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(fake.promote_calls(), 1);
}

/// A reload (here: a restart on the new config) that removes the rule of a waiting
/// or awaiting job cancels it (`rule_removed`); a job whose rule stays is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_rule_cancels_its_waiting_and_awaiting_jobs() {
    let fake = FakeArtifactory::start().await;
    let dir = tempfile::tempdir().unwrap();
    let approved = r#"
[[rules]]
name = "approved"
source = "ci"
event = "release"
action = { type = "promote", target = "jfrog", to_repo = "prod" }
approval = { count = 1 }
"#;
    let store = TestStore::Sqlite.url(dir.path());
    let both = format!("{SCANNER}{GATED}{approved}");
    let config = write_config_on(dir.path(), &fake.uri(), &both, "2s", &store);
    let first = ChildApp::start(&config, free_port()).await;
    let v = accepted(&first.client, "ci", &trigger(0)).await;
    let waiting = v["jobs"][0]["id"].as_str().unwrap().to_string();
    let body = br#"{"event":"release","repo":"dev","image":"app","tag":"1.0.0"}"#;
    let v = accepted(&first.client, "ci", body).await;
    let awaiting = v["jobs"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        first.client.job(&awaiting).await["state"],
        "awaiting_approval"
    );
    first.kill();

    // The gated rule goes; the approved one stays.
    let config = write_config_on(
        dir.path(),
        &fake.uri(),
        &format!("{SCANNER}{approved}"),
        "2s",
        &store,
    );
    let second = ChildApp::start(&config, free_port()).await;
    let job = second.client.job(&waiting).await;
    assert_eq!(job["state"], "cancelled", "{job:#}");
    assert_eq!(job["last_error"]["code"], "rule_removed");
    let records = second
        .client
        .audit(&format!("job={waiting}&kind=job.cancelled"))
        .await;
    assert_eq!(records[0]["actor"], "gantry");
    assert_eq!(
        second.client.job(&awaiting).await["state"],
        "awaiting_approval"
    );
}
