//! Group commit (SPEC §14): ingests arriving together share a transaction, and one
//! that fails fails alone — the others are committed and answered 202, on both
//! stores.

use serde_json::Value;

use crate::harness::{VIEWER_TOKEN, spawn_app_on};
use crate::registry::ulid_like;
use crate::stores::TestStore;

const RULES: &str = r#"
[[rules]]
name = "to-staging"
source = "ci"
event = "test-passed"
action = { type = "promote", target = "jfrog", to_repo = "staging" }
"#;

fn body(tag: &str) -> Vec<u8> {
    format!(
        r#"{{"event":"test-passed","repo":"dev","image":"app","tag":"{tag}","run":"{}"}}"#,
        ulid_like()
    )
    .into_bytes()
}

async fn one_failing_ingest_in_a_group_fails_alone(store: TestStore) {
    let app = spawn_app_on(RULES, &store).await;
    // The store refuses an event tagged `poison`; on PostgreSQL an event tagged
    // `slow` holds its group's transaction a moment, so that the requests sent
    // meanwhile gather into the next groups.
    match &store {
        TestStore::Sqlite => {
            let db = rusqlite::Connection::open(app.db_path()).unwrap();
            db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
            db.execute_batch(
                "CREATE TRIGGER poison BEFORE INSERT ON events WHEN NEW.tag = 'poison'
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
                     BEGIN
                       IF NEW.tag = 'poison' THEN RAISE EXCEPTION 'poisoned'; END IF;
                       IF NEW.tag = 'slow' THEN PERFORM pg_sleep(0.3); END IF;
                       RETURN NEW;
                     END $$;
                     CREATE TRIGGER poison BEFORE INSERT ON {s}.events
                     FOR EACH ROW EXECUTE FUNCTION {s}.poison();"
                ))
                .await
                .unwrap();
        }
    }
    let slow = {
        let client = app.client.clone();
        tokio::spawn(async move { client.send("ci", &body("slow")).await.status() })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    // One delivery twice among them (a sender's quick retry): the same body.
    let twice = body("twice");
    let mut sent = Vec::new();
    for i in 0..42 {
        let client = app.client.clone();
        let (tag, sent_body) = match i {
            20 => ("poison".to_string(), body("poison")),
            10 | 30 => ("twice".to_string(), twice.clone()),
            _ => (format!("1.0.{i}"), body(&format!("1.0.{i}"))),
        };
        sent.push(tokio::spawn(async move {
            let r = client.send("ci", &sent_body).await;
            let status = r.status().as_u16();
            let answer: Value = r.json().await.unwrap_or(Value::Null);
            (tag, status, answer)
        }));
    }
    let mut answers = Vec::new();
    for s in sent {
        answers.push(s.await.unwrap());
    }
    assert_eq!(slow.await.unwrap(), 202);
    for (tag, status, _) in &answers {
        let expected = match tag.as_str() {
            "poison" => vec![503],
            "twice" => vec![200, 202],
            _ => vec![202],
        };
        assert!(expected.contains(status), "{tag}: {status}");
    }
    // The delivery sent twice: stored once, both answers name its event and job.
    let twice: Vec<&Value> = answers
        .iter()
        .filter(|(tag, ..)| tag == "twice")
        .map(|(.., answer)| answer)
        .collect();
    assert_eq!(twice[0]["event_id"], twice[1]["event_id"]);
    assert_eq!(twice[0]["jobs"], twice[1]["jobs"]);
    assert_eq!(
        twice[0]["jobs"].as_array().map(Vec::len),
        Some(1),
        "{twice:?}"
    );
    assert_ne!(twice[0]["duplicate"], twice[1]["duplicate"]);
    // Every accepted event is stored with its job, the refused one is not, and the
    // trail is one unbroken chain.
    let events: Value = app
        .get("/api/v1/events?limit=100", Some(VIEWER_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    let tags: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["tag"].as_str().unwrap_or_default())
        .collect();
    // 40 new events besides the slow one; the poisoned one is not stored.
    assert_eq!(tags.len(), 41, "{tags:?}");
    assert!(!tags.contains(&"poison"));
    let created = app.audit("kind=job.created&limit=100").await;
    assert_eq!(created.len(), 41);
    let verdict: Value = app
        .get("/api/v1/audit/verify", Some(VIEWER_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(verdict["ok"], true, "{verdict:#}");
}

on_each_store!(TestStore: one_failing_ingest_in_a_group_fails_alone);
