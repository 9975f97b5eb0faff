//! The `check` and `simulate` commands of the real binary.

use std::path::Path;
use std::process::{Command, Output};

fn gantry(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("SET_SECRET", "s3cret")
        .output()
        .unwrap()
}

pub(crate) fn check(toml: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("g.toml"), toml).unwrap();
    let out = gantry(dir.path(), &["--config", "g.toml", "check"]);
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const VALID: &str = r#"
[[sources]]
name = "ci"
format = "generic"
verify = { scheme = "hmac-sha256", header = "X-Signature", secrets = ["env:SET_SECRET"] }

[[targets]]
name = "jfrog"
kind = "artifactory"
url = "http://127.0.0.1:1"
token = "env:SET_SECRET"
"#;

fn with_rule(rule: &str) -> String {
    format!("{VALID}\n[[rules]]\nname = \"r\"\n{rule}\n")
}

#[test]
fn check_accepts_a_valid_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("g.toml"),
        with_rule(
            r#"source = "ci"
action = { type = "promote", target = "jfrog", to_repo = "x" }"#,
        ),
    )
    .unwrap();
    let out = gantry(dir.path(), &["--config", "g.toml", "check"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok: 1 sources, 1 targets, 1 rules\n"
    );
}

#[test]
fn check_names_each_kind_of_error_and_exits_2() {
    let cases = [
        (
            "[server]\nlisen = \"127.0.0.1:1\"\n".to_string(),
            "error: server.lisen: unknown field `lisen`",
        ),
        (
            with_rule(
                r#"match = { image = "re:^(unclosed" }
action = { type = "promote", target = "jfrog", to_repo = "x" }"#,
            ),
            "error: rules[r].match.image: invalid regex `^(unclosed`",
        ),
        (
            VALID.replace("env:SET_SECRET\"] }", "env:MISSING_SECRET\"] }"),
            "error: sources[ci].verify.secrets[0]: environment variable `MISSING_SECRET` is not set",
        ),
        (
            with_rule(r#"action = { type = "promote", target = "nope", to_repo = "x" }"#),
            "error: rules[r].action.target: unknown target `nope`",
        ),
        (
            with_rule(
                r#"source = "cd"
action = { type = "promote", target = "jfrog", to_repo = "x" }"#,
            ),
            "error: rules[r].source: unknown source `cd`",
        ),
        (
            with_rule(r#"action = { type = "promote", target = "jfrog", to_repo = "{{nope}}" }"#),
            "error: rules[r].action.to_repo: unknown variable `{{nope}}`",
        ),
    ];
    for (toml, expected) in cases {
        let (code, stderr) = check(&toml);
        assert_eq!(code, 2, "{stderr}");
        assert!(
            stderr.contains(expected),
            "expected `{expected}` in:\n{stderr}"
        );
    }
}

#[test]
fn a_missing_config_file_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = gantry(dir.path(), &["--config", "absent.toml", "check"]);
    assert_eq!(out.status.code(), Some(2));
    let out = gantry(dir.path(), &["--config", "absent.toml", "serve"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_shipped_config_checks_with_only_literal_secret_warnings() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = gantry(root, &["check"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.ends_with("ok: 2 sources, 1 targets, 2 rules\n"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .filter(|l| l.starts_with("warning:"))
            .all(|l| l.contains("literal secret"))
    );
}

#[test]
fn simulate_prints_the_promotions_that_would_be_queued() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let event = dir.path().join("event.json");
    std::fs::write(
        &event,
        r#"{"event":"test-passed","repo":"docker-dev","image":"team-a/api","tag":"1.4.2","digest":"sha256:abc"}"#,
    )
    .unwrap();
    let out = gantry(
        root,
        &[
            "simulate",
            "--source",
            "ci",
            "--event",
            event.to_str().unwrap(),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "rule tested-to-staging → promote on jfrog: docker-dev/team-a/api:1.4.2@sha256:abc → docker-staging/team-a/api:1.4.2@sha256:abc (copy)"
        ),
        "{stdout}"
    );

    let out = gantry(
        root,
        &[
            "simulate",
            "--source",
            "ci",
            "--output",
            "json",
            "--event",
            event.to_str().unwrap(),
        ],
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["promotions"][0]["rule"], "tested-to-staging");
    assert_eq!(
        line["promotions"][0]["action"]["to"]["repo"],
        "docker-staging"
    );

    std::fs::write(
        &event,
        r#"{"event":"test-passed","repo":"docker-dev","image":"team-b/api","tag":"1.4.2"}"#,
    )
    .unwrap();
    let out = gantry(
        root,
        &[
            "simulate",
            "--source",
            "ci",
            "--event",
            event.to_str().unwrap(),
        ],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("no rule matches"));

    let out = gantry(
        root,
        &[
            "simulate",
            "--source",
            "nope",
            "--event",
            event.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
}

/// Runs an admin command of the real binary against a running server.
pub async fn admin(base: &str, token: &str, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .args(["--url", base])
        .env_clear()
        .env("GANTRY_TOKEN", token)
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn jobs_retry_revives_a_failed_job_and_keeps_its_attempts() {
    use crate::harness::{OPS_TOKEN, VIEWER_TOKEN, spawn_app};
    use wiremock::matchers::method;
    use wiremock::{Mock, ResponseTemplate};

    let app = spawn_app(
        r#"
[[rules]]
name = "r"
source = "ci"
event = "test-passed"
action = { type = "promote", target = "jfrog", to_repo = "staging" }
"#,
    )
    .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(403).set_body_string("no permission"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&app.upstream)
        .await;
    app.upstream_answers(200).await;
    let body = br#"{"event":"test-passed","repo":"dev","image":"app","tag":"1.0.0"}"#;
    let answer: serde_json::Value = app.send("ci", body).await.json().await.unwrap();
    let id = answer["jobs"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(app.wait_final(&id).await["state"], "failed");

    let (code, stdout, _) = admin(
        &app.base,
        VIEWER_TOKEN,
        &["jobs", "list", "--state", "failed"],
    )
    .await;
    assert_eq!(code, 0);
    assert!(
        stdout
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with(&id) && l.contains("upstream_rejected")),
        "{stdout}"
    );

    let (code, _, stderr) = admin(&app.base, VIEWER_TOKEN, &["jobs", "retry", &id]).await;
    assert_eq!(code, 1, "a read token cannot retry");
    assert!(
        stderr.contains("403") && stderr.contains("forbidden"),
        "{stderr}"
    );

    let (code, stdout, stderr) = admin(&app.base, OPS_TOKEN, &["jobs", "retry", &id]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, format!("job {id} is queued\n"));
    assert_eq!(app.wait_final(&id).await["state"], "succeeded");

    let (code, stdout, _) = admin(
        &app.base,
        VIEWER_TOKEN,
        &["jobs", "show", &id, "--output", "json"],
    )
    .await;
    assert_eq!(code, 0);
    let job: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "the failed attempt is kept");
    assert_eq!(attempts[0]["upstream_status"], 403);
    assert_eq!(attempts[1]["upstream_status"], 200);

    let (code, stdout, _) = admin(&app.base, VIEWER_TOKEN, &["jobs", "show", &id]).await;
    assert_eq!(code, 0);
    assert!(
        stdout.contains("attempt  1") && stdout.contains("upstream_rejected"),
        "{stdout}"
    );

    let (code, _, stderr) = admin(&app.base, OPS_TOKEN, &["jobs", "cancel", &id]).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("invalid_state"), "{stderr}");
    app.stop().await;
}

/// A gate condition that can never be met is refused before anything runs (SPEC §9).
#[test]
fn check_refuses_gate_conditions_that_can_never_match() {
    let registry = r#"
[[sources]]
name = "registry"
format = "registry"
verify = { scheme = "token", header = "Authorization", secrets = ["env:SET_SECRET"] }
"#;
    let rule = r#"source = "ci"
action = { type = "promote", target = "jfrog", to_repo = "x" }
gate = { correlate = ["build_name", "colour"], require = [
  { name = "scan", source = "nope" },
  { name = "pushed", source = "registry" },
  { name = "pushed", source = "ci" },
] }"#;
    let (code, err) = check(&format!("{registry}{}", with_rule(rule)));
    assert_eq!(code, 2, "{err}");
    for expected in [
        "error: rules[r].gate.correlate: `colour` is not a subject field",
        "error: rules[r].gate.within: must be set",
        "error: rules[r].gate.require[scan].source: unknown source `nope`: the condition can never be met",
        "error: rules[r].gate.require[pushed].source: source `registry` sends events that never carry `build_name`",
        "error: rules[r].gate.require[pushed].name: is defined more than once",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

/// `check` lists, for each protection, the rules whose jobs it covers (SPEC §9).
#[test]
fn check_lists_the_rules_each_protection_covers() {
    let toml = format!(
        r#"{VALID}
[[rules]]
name = "to-prod"
source = "ci"
action = {{ type = "promote", target = "jfrog", to_repo = "docker-prod" }}

[[rules]]
name = "to-staging"
source = "ci"
action = {{ type = "promote", target = "jfrog", to_repo = "docker-staging" }}

[[rules]]
name = "anywhere"
source = "ci"
action = {{ type = "promote", target = "jfrog", to_repo = "{{{{repo}}}}-next" }}

[[protections]]
name = "prod"
to_repos = ["docker-prod"]
soak = "30m"

[[protections]]
name = "elsewhere"
targets = ["jfrog"]
to_repos = ["nowhere"]
approval = {{ count = 1 }}
"#
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("g.toml"), toml).unwrap();
    let out = gantry(dir.path(), &["--config", "g.toml", "check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(
            "protection prod covers: to-prod, anywhere (templated destination: when rendered there)\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "protection elsewhere covers: anywhere (templated destination: when rendered there)\n"
        ),
        "{stdout}"
    );
}
