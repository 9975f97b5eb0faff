//! Chained promotions: dev → staging → prod driven by gantry's own events, an
//! upstream echo that joins the chain instead of doubling it, the depth limit, and
//! `check` refusing loops.

use serde_json::Value;

use crate::fake_artifactory::FakeArtifactory;
use crate::harness::{JFROG_SECRET, TestApp, VIEWER_TOKEN, hmac_hex, spawn_app};

const DIGEST: &str = "sha256:5e1ec7ed";

fn chain_rules(fake: &FakeArtifactory, extra: &str) -> String {
    format!(
        r#"
[defaults]
max_chain_depth = 1

[[targets]]
name = "fake"
kind = "artifactory"
url = "{}"

[[rules]]
name = "tested-to-staging"
source = "ci"
event = "test-passed"
match = {{ repo = "docker-dev" }}
action = {{ type = "promote", target = "fake", to_repo = "docker-staging" }}

[[rules]]
name = "staging-to-prod"
source = ["gantry", "artifactory"]
event = ["gantry.promoted", "docker.promoted"]
match = {{ repo = "docker-staging" }}
action = {{ type = "promote", target = "fake", to_repo = "docker-prod" }}
{extra}
"#,
        fake.uri()
    )
}

async fn jobs_of(app: &TestApp, rule: &str) -> Vec<Value> {
    let r: Value = app
        .get(&format!("/api/v1/jobs?rule={rule}"), Some(VIEWER_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    r["jobs"].as_array().unwrap().clone()
}

/// Waits for the rule's first job to exist and finish.
async fn stage(app: &TestApp, rule: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(job) = jobs_of(app, rule).await.first() {
            return app.wait_final(job["id"].as_str().unwrap()).await;
        }
        assert!(std::time::Instant::now() < deadline, "no job for {rule}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn test_passed(app: &TestApp) {
    let body = format!(
        r#"{{"event":"test-passed","repo":"docker-dev","image":"app","tag":"1.0.0","digest":"{DIGEST}"}}"#
    );
    assert_eq!(app.send("ci", body.as_bytes()).await.status(), 202);
}

#[tokio::test]
async fn a_tested_image_goes_to_staging_then_prod_and_an_echo_adds_nothing() {
    let fake = FakeArtifactory::start().await;
    fake.put("docker-dev", "app", "1.0.0", DIGEST);
    let app = spawn_app(&chain_rules(&fake, "")).await;
    test_passed(&app).await;

    let first = stage(&app, "tested-to-staging").await;
    let second = stage(&app, "staging-to-prod").await;
    assert_eq!(first["state"], "succeeded");
    assert_eq!(second["state"], "succeeded");
    assert_eq!(
        (
            first["chain_depth"].as_u64(),
            first["parent_job_id"].as_str()
        ),
        (Some(0), None)
    );
    assert_eq!(second["chain_depth"], 1);
    assert_eq!(second["parent_job_id"], first["id"]);
    assert_eq!(second["action"]["from"]["repo"], "docker-staging");
    assert_eq!(
        second["action"]["from"]["digest"], DIGEST,
        "the tested digest travels down the chain"
    );
    assert_eq!(
        fake.digest("docker-prod", "app", "1.0.0").as_deref(),
        Some(DIGEST)
    );

    // Artifactory's own webhook for the first promotion arrives: it joins the chain
    // at depth 1 under the first job, and the second stage is not started again.
    let echo = format!(
        r#"{{"domain":"docker","event_type":"promoted","data":{{"repo_key":"docker-staging","path":"app/1.0.0/manifest.json","name":"manifest.json","sha256":"{}","tag":"1.0.0","image_name":"app"}}}}"#,
        DIGEST.trim_start_matches("sha256:")
    );
    let answer: Value = app
        .post_hook(
            "artifactory",
            echo.as_bytes(),
            &[(
                "X-JFrog-Event-Auth",
                &hmac_hex(JFROG_SECRET, echo.as_bytes()),
            )],
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["jobs"], serde_json::json!([]), "{answer}");
    assert_eq!(jobs_of(&app, "staging-to-prod").await.len(), 1);
    assert_eq!(fake.effects_on("docker-staging", "app", "1.0.0"), 1);
    assert_eq!(fake.effects_on("docker-prod", "app", "1.0.0"), 1);

    // The trail links the stages: parent → child, depth 0 then 1.
    let created = app.audit("kind=job.created").await;
    assert_eq!(created.len(), 2);
    assert_eq!(
        (
            created[0]["job_id"].as_str(),
            created[0]["chain_depth"].as_u64()
        ),
        (first["id"].as_str(), Some(0))
    );
    assert_eq!(created[0]["parent_job_id"], Value::Null);
    assert_eq!(
        (
            created[1]["job_id"].as_str(),
            created[1]["chain_depth"].as_u64()
        ),
        (second["id"].as_str(), Some(1))
    );
    assert_eq!(created[1]["parent_job_id"], first["id"]);
    assert_eq!(
        created[1]["actor"], "gantry",
        "started by gantry's own event"
    );
    let duplicate = app.audit("kind=job.duplicate").await;
    assert_eq!(duplicate.len(), 1);
    assert_eq!(duplicate[0]["rule"], "staging-to-prod");
    assert_eq!(duplicate[0]["job_id"], second["id"]);
    assert_eq!(duplicate[0]["parent_job_id"], first["id"]);
    assert_eq!(duplicate[0]["chain_depth"], 1);
    app.stop().await;
}

#[tokio::test]
async fn a_chain_deeper_than_max_chain_depth_is_refused_and_audited() {
    let fake = FakeArtifactory::start().await;
    fake.put("docker-dev", "app", "1.0.0", DIGEST);
    let third = r#"
[[rules]]
name = "prod-to-dr"
source = "gantry"
match = { repo = "docker-prod" }
action = { type = "promote", target = "fake", to_repo = "docker-dr" }
"#;
    let app = spawn_app(&chain_rules(&fake, third)).await;
    test_passed(&app).await;
    assert_eq!(stage(&app, "staging-to-prod").await["state"], "succeeded");
    // The third stage would be depth 2 with max_chain_depth = 1.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let refused = loop {
        let refused = app.audit("kind=chain.refused").await;
        if !refused.is_empty() {
            break refused;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no chain.refused record"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["chain_depth"], 2);
    let message = refused[0]["message"].as_str().unwrap();
    assert!(
        message.contains("prod-to-dr") && message.contains("max_chain_depth 1"),
        "{message}"
    );
    assert!(jobs_of(&app, "prod-to-dr").await.is_empty());
    assert_eq!(fake.digest("docker-dr", "app", "1.0.0"), None);
    app.stop().await;
}

fn check(rules: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[[sources]]
name = "artifactory"
format = "artifactory"
verify = {{ scheme = "hmac-sha256", header = "X-JFrog-Event-Auth", secrets = ["s"] }}

[[targets]]
name = "jfrog"
kind = "artifactory"
url = "http://127.0.0.1:1"
{rules}"#
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_refuses_a_two_rule_cycle_and_a_self_loop() {
    let (code, stderr) = check(
        r#"
[[rules]]
name = "staging-to-prod"
source = "artifactory"
event = "docker.promoted"
match = { repo = "docker-staging" }
action = { type = "promote", target = "jfrog", to_repo = "docker-prod" }

[[rules]]
name = "prod-to-staging"
source = "artifactory"
event = "docker.promoted"
match = { repo = "docker-prod" }
action = { type = "promote", target = "jfrog", to_repo = "docker-staging" }
"#,
    );
    assert_eq!(code, 2);
    assert!(
        stderr.contains("error: rules[staging-to-prod]: promotions can loop: staging-to-prod → prod-to-staging → staging-to-prod"),
        "{stderr}"
    );

    let (code, stderr) = check(
        r#"
[[rules]]
name = "retag"
source = "gantry"
event = "gantry.promoted"
match = { tag = "re:^\\d+$" }
action = { type = "promote", target = "jfrog", to_repo = "docker-prod", to_tag = "{{tag}}0" }
"#,
    );
    assert_eq!(code, 2);
    assert!(
        stderr.contains("promotions can loop: retag → retag"),
        "{stderr}"
    );

    // Literal targets that cannot match break the loop.
    let (code, stderr) = check(
        r#"
[[rules]]
name = "staging-to-prod"
source = "artifactory"
event = "docker.promoted"
match = { repo = "docker-staging" }
action = { type = "promote", target = "jfrog", to_repo = "docker-prod" }
"#,
    );
    assert_eq!(code, 0, "{stderr}");
}
