//! The audit trail: tamper with the SQLite file directly and `gantry audit verify`
//! names the first broken record; pruning keeps the chain verifiable; every filter
//! and the paging of `GET /api/v1/audit`.

use serde_json::Value;

use crate::harness::{TestApp, VIEWER_TOKEN, spawn_app};

const RULE: &str = r#"
[[rules]]
name = "r"
source = "ci"
event = "test-passed"
action = { type = "promote", target = "jfrog", to_repo = "staging" }

[[rules]]
name = "other"
source = "ci"
event = "scan-passed"
action = { type = "promote", target = "jfrog", to_repo = "scanned" }
"#;

/// An app with a trail of a few dozen records: promotions that succeed and fail.
async fn app_with_trail() -> TestApp {
    let app = spawn_app(RULE).await;
    app.upstream_answers(200).await;
    for (event, tag) in [
        ("test-passed", "1"),
        ("test-passed", "2"),
        ("scan-passed", "3"),
    ] {
        let body = format!(r#"{{"event":"{event}","repo":"dev","image":"app","tag":"{tag}"}}"#);
        let answer: Value = app.send("ci", body.as_bytes()).await.json().await.unwrap();
        app.wait_final(answer["jobs"][0]["id"].as_str().unwrap())
            .await;
    }
    assert_eq!(app.send("nope", b"{}").await.status(), 404);
    app
}

async fn verify(app: &TestApp) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args([
            "audit",
            "verify",
            "--url",
            &app.base,
            "--token",
            VIEWER_TOKEN,
        ])
        .env_clear()
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tamper(app: &TestApp, sql: &str) {
    let conn = rusqlite::Connection::open(app.db_path()).unwrap();
    conn.execute_batch(sql).unwrap();
}

#[tokio::test]
async fn an_untouched_trail_verifies() {
    let app = app_with_trail().await;
    let (code, stdout, stderr) = verify(&app).await;
    assert_eq!(code, 0, "{stderr}");
    let n = app.audit("limit=1000").await.len();
    assert!(n >= 16, "{n} records");
    assert!(
        stdout.starts_with(&format!("ok: {n} records verified; head seq {n} hash ")),
        "{stdout}"
    );
    let v: Value = app
        .get("/api/v1/audit/verify", Some(VIEWER_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (v["ok"].as_bool(), v["records"].as_u64()),
        (Some(true), Some(n as u64))
    );
    app.stop().await;
}

#[tokio::test]
async fn an_edited_field_is_found() {
    let app = app_with_trail().await;
    tamper(
        &app,
        "UPDATE audit SET message = 'nothing to see' WHERE seq = 7",
    );
    let (code, _, stderr) = verify(&app).await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("broken at seq 7") && stderr.contains("edited"),
        "{stderr}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_deleted_record_is_found() {
    let app = app_with_trail().await;
    tamper(&app, "DELETE FROM audit WHERE seq = 5");
    let (code, _, stderr) = verify(&app).await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("broken at seq 5") && stderr.contains("missing"),
        "{stderr}"
    );
    app.stop().await;
}

#[tokio::test]
async fn two_swapped_records_are_found() {
    let app = app_with_trail().await;
    // Exchange every column of records 9 and 10 but their sequence numbers.
    tamper(
        &app,
        "UPDATE audit SET seq = -9 WHERE seq = 9;
         UPDATE audit SET seq = 9 WHERE seq = 10;
         UPDATE audit SET seq = 10 WHERE seq = -9;",
    );
    let (code, _, stderr) = verify(&app).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("broken at seq 9"), "{stderr}");
    app.stop().await;
}

#[tokio::test]
async fn an_inserted_record_is_found() {
    let app = app_with_trail().await;
    // Shift the tail up by one and slip a forged record into the gap at 12, its
    // prev_hash copied from the real record 12 so it looks in place.
    tamper(
        &app,
        "UPDATE audit SET seq = -seq WHERE seq >= 12;
         UPDATE audit SET seq = -seq + 1 WHERE seq <= -12;
         INSERT INTO audit (seq, at, kind, actor, prev_hash, hash, message)
           SELECT 12, at, 'job.succeeded', 'intruder', prev_hash, hash, 'promoted by hand'
           FROM audit WHERE seq = 13;",
    );
    let (code, _, stderr) = verify(&app).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("broken at seq 12"), "{stderr}");
    app.stop().await;
}

#[tokio::test]
async fn an_unreadable_record_breaks_the_chain_rather_than_the_server() {
    let app = app_with_trail().await;
    tamper(&app, "UPDATE audit SET kind = 'job.vanished' WHERE seq = 3");
    let (code, _, stderr) = verify(&app).await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("broken at seq 3") && stderr.contains("unknown kind"),
        "{stderr}"
    );
    app.stop().await;
}

#[tokio::test]
async fn pruning_cuts_the_chain_at_a_checkpoint_that_still_verifies() {
    use gantry::audit::AuditEntry;
    use gantry::store::{SqliteStore, Store};

    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("g.db")).await.unwrap();
    let day = 86_400_000;
    let now = gantry::domain::now_millis();
    for i in 0..10 {
        let mut e = AuditEntry::rejections("ci", &format!("record {i}"), 1);
        e.at = now - (10 - i) * day;
        store.append_audit(e).await.unwrap();
    }
    // Keep the last 4 days: records 1–6 go, a checkpoint (11) names record 6's hash.
    let pruned = store.prune(Some(now - 4 * day - 1), now).await.unwrap();
    assert_eq!(pruned.audit_records, 6);
    let verdict = store.verify_audit().await.unwrap();
    assert!(verdict.ok, "{verdict:?}");
    assert_eq!((verdict.records, verdict.head_seq), (5, Some(11)));
    let rows = store.audit_chain(0, 100).await.unwrap();
    assert_eq!(rows.first().map(|r| r.seq), Some(7));

    // The checkpoint is in the chain: forging it breaks verification.
    let conn = rusqlite::Connection::open(dir.path().join("g.db")).unwrap();
    conn.execute(
        "UPDATE audit SET message = replace(message, 'through seq 6', 'through seq 5') WHERE seq = 11",
        [],
    )
    .unwrap();
    let verdict = store.verify_audit().await.unwrap();
    assert!(!verdict.ok);
    // And records removed without a checkpoint are noticed.
    conn.execute("DELETE FROM audit WHERE seq = 11", [])
        .unwrap();
    conn.execute("DELETE FROM audit WHERE seq = 7", []).unwrap();
    let verdict = store.verify_audit().await.unwrap();
    assert_eq!(verdict.first_broken, Some(1), "{verdict:?}");
}

#[tokio::test]
async fn every_filter_and_the_paging_of_the_audit_api() {
    let app = app_with_trail().await;
    let all = app.audit("limit=1000").await;
    let seqs = |records: &[Value]| {
        records
            .iter()
            .map(|r| r["seq"].as_i64().unwrap())
            .collect::<Vec<_>>()
    };
    // Oldest first, consecutive.
    let s = seqs(&all);
    assert_eq!(s, (1..=s.len() as i64).collect::<Vec<_>>());

    let expect = |filter: &dyn Fn(&Value) -> bool| {
        seqs(
            &all.iter()
                .filter(|r| filter(r))
                .cloned()
                .collect::<Vec<_>>(),
        )
    };
    for (query, filter) in [
        (
            "rule=other",
            &(|r: &Value| r["rule"] == "other") as &dyn Fn(&Value) -> bool,
        ),
        ("image=app", &|r: &Value| r["image"] == "app"),
        ("tag=2", &|r: &Value| r["tag"] == "2"),
        ("kind=job.succeeded", &|r: &Value| {
            r["kind"] == "job.succeeded"
        }),
        ("kind=event.rejected", &|r: &Value| {
            r["kind"] == "event.rejected"
        }),
    ] {
        let got = seqs(&app.audit(&format!("{query}&limit=1000")).await);
        assert_eq!(got, expect(filter), "{query}");
        assert!(!got.is_empty(), "{query} matched nothing");
    }
    let job = all.iter().find(|r| r["kind"] == "job.created").unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let got = seqs(&app.audit(&format!("job={job}")).await);
    assert_eq!(got, expect(&|r: &Value| r["job_id"] == job.as_str()));
    assert_eq!(got.len(), 3, "created, attempt, succeeded");

    // Time range: RFC 3339 bounds, inclusive since, exclusive until.
    let middle = &all[all.len() / 2];
    let at = middle["at"].as_str().unwrap();
    let since = seqs(
        &app.audit(&format!("since={}&limit=1000", at.replace('+', "%2B")))
            .await,
    );
    assert!(
        since
            .iter()
            .all(|&s| all[(s - 1) as usize]["at"].as_str().unwrap() >= at)
    );
    assert!(since.contains(&middle["seq"].as_i64().unwrap()));
    let until = seqs(
        &app.audit(&format!("until={}&limit=1000", at.replace('+', "%2B")))
            .await,
    );
    assert!(
        until
            .iter()
            .all(|&s| all[(s - 1) as usize]["at"].as_str().unwrap() < at)
    );
    assert_eq!(since.len() + until.len(), all.len());
    assert_eq!(app.audit("since=1h&limit=1000").await.len(), all.len());
    assert!(app.audit("until=1h").await.is_empty());

    // Paging by sequence: pages of 5 put together are the whole trail.
    let mut paged = Vec::new();
    let mut after = String::new();
    loop {
        let page: Value = app
            .get(&format!("/api/v1/audit?limit=5{after}"), Some(VIEWER_TOKEN))
            .await
            .json()
            .await
            .unwrap();
        let records = page["records"].as_array().unwrap();
        assert!(records.len() <= 5);
        paged.extend(seqs(records));
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    assert_eq!(paged, s);

    for bad in [
        "kind=nope",
        "since=yesterday",
        "limit=x",
        "after=x",
        "color=red",
    ] {
        let r = app
            .get(&format!("/api/v1/audit?{bad}"), Some(VIEWER_TOKEN))
            .await;
        assert_eq!(r.status(), 400, "{bad}");
    }
    app.stop().await;
}

#[tokio::test]
async fn audit_list_and_export_commands() {
    let app = app_with_trail().await;
    let run = |args: Vec<String>| {
        let base = app.base.clone();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
                .args(&args)
                .args(["--url", &base, "--token", VIEWER_TOKEN])
                .env_clear()
                .output()
                .await
                .unwrap();
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        }
    };
    let table = run(vec![
        "audit".into(),
        "list".into(),
        "--kind".into(),
        "job.succeeded".into(),
    ])
    .await;
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("   SEQ  AT"), "{table}");
    assert_eq!(lines.len(), 4, "a header and three promotions:\n{table}");
    assert!(
        lines[1].contains("job.succeeded") && lines[1].contains("dev/app:1 → staging/app:1"),
        "{table}"
    );
    let json = run(vec![
        "audit".into(),
        "list".into(),
        "--rule".into(),
        "other".into(),
        "--output".into(),
        "json".into(),
    ])
    .await;
    let records: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!records.is_empty() && records.iter().all(|r| r["rule"] == "other"));
    let export = run(vec!["audit".into(), "export".into()]).await;
    let exported: Vec<Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(exported.len(), app.audit("limit=1000").await.len());
    assert!(
        exported
            .iter()
            .all(|r| r["hash"].as_str().is_some_and(|h| h.len() == 64))
    );
    app.stop().await;
}
