//! Secrets stay secret: no log line or audit record carries a secret, a signature or
//! an Authorization value, even at debug level.

use std::time::Duration;

use serde_json::Value;
use wiremock::matchers::{header, method};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::harness::{
    CI_SECRET, CI_SECRET_OLD, ChildApp, GH_SECRET, GITLAB_TOKEN, JFROG_SECRET, JFROG_TOKEN,
    MORE_SOURCES, OPS_TOKEN, REGISTRY_TOKEN, SW_SECRET, VIEWER_TOKEN, cli_sign, fixture, free_port,
    hmac_hex, write_config,
};

#[tokio::test]
async fn no_secret_signature_or_token_reaches_the_logs_or_the_audit_trail() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header(
            "Authorization",
            format!("Bearer {JFROG_TOKEN}").as_str(),
        ))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&upstream)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &upstream.uri(),
        &format!(
            r#"{MORE_SOURCES}
[[rules]]
name = "r"
source = "ci"
event = "test-passed"
action = {{ type = "promote", target = "jfrog", to_repo = "staging" }}
"#
        ),
        "30s",
    );
    let log_path = dir.path().join("gantry.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let app = ChildApp::start_logged(&config, free_port(), log).await;
    let c = &app.client;

    let mut sent_signatures = Vec::new();
    let body = br#"{"event":"test-passed","repo":"dev","image":"app","tag":"1.0.0"}"#;
    let answer: Value = c.send("ci", body).await.json().await.unwrap();
    sent_signatures.push(hmac_hex(CI_SECRET, body));
    let job_id = answer["jobs"][0]["id"].as_str().unwrap().to_string();

    let forged = hmac_hex("attacker-guess", body);
    let r = c
        .post_hook("ci", body, &[("X-Signature", &format!("sha256={forged}"))])
        .await;
    assert_eq!(r.status(), 401);
    sent_signatures.push(forged);
    let r = c
        .post_hook(
            "registry",
            &fixture("registry-manifest-push.json"),
            &[("Authorization", &format!("Bearer {REGISTRY_TOKEN}"))],
        )
        .await;
    assert_eq!(r.status(), 202);
    let r = c
        .post_hook(
            "registry",
            b"{}",
            &[("Authorization", "Bearer registry-notify-tokeX")],
        )
        .await;
    assert_eq!(r.status(), 401);
    let bodies = [
        ("sw", br#"{"event":"deployed"}"#.to_vec()),
        ("artifactory", fixture("artifactory-docker-pushed.json")),
    ];
    for (source, body) in bodies {
        let headers = cli_sign(&config, source, &body);
        sent_signatures.extend(
            headers
                .iter()
                .filter(|(k, _)| k.ends_with("signature") || k.ends_with("Auth"))
                .map(|(_, v)| v.clone()),
        );
        let refs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            c.post_hook(source, &body, &refs).await.status(),
            202,
            "{source}"
        );
    }
    assert_eq!(c.get("/api/v1/jobs", Some(OPS_TOKEN)).await.status(), 200);
    assert_eq!(
        c.get("/api/v1/jobs", Some("Bearer-guess-token"))
            .await
            .status(),
        401
    );
    assert_eq!(c.job(&job_id).await["id"], job_id.as_str());
    assert_eq!(c.wait_final(&job_id).await["state"], "succeeded");
    let audit: Value = c
        .get("/api/v1/audit?limit=1000", Some(VIEWER_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    let audit = audit.to_string();
    // Let the last log lines be written, then stop the process.
    tokio::time::sleep(Duration::from_millis(100)).await;
    app.kill();

    assert_eq!(sent_signatures.len(), 4);
    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        logs.contains("webhook accepted"),
        "the logs were not captured:\n{logs}"
    );
    // A request's lines name it by method, path and request id.
    let accepted = logs.lines().find(|l| l.contains("webhook accepted"));
    let accepted: Value = serde_json::from_str(accepted.unwrap()).unwrap();
    let span = &accepted["span"];
    assert_eq!(
        (span["method"].as_str(), span["path"].as_str()),
        (Some("POST"), Some("/hooks/ci"))
    );
    assert_eq!(
        span["request_id"].as_str().map(str::len),
        Some(36),
        "{span}"
    );
    // The rejection and the attempt that handled the secrets were logged.
    assert!(
        logs.contains("invalid_signature") && logs.contains(&job_id),
        "{logs}"
    );
    let sw_key = SW_SECRET.trim_start_matches("whsec_");
    let secrets = [
        CI_SECRET,
        CI_SECRET_OLD,
        JFROG_SECRET,
        JFROG_TOKEN,
        OPS_TOKEN,
        VIEWER_TOKEN,
        GH_SECRET,
        SW_SECRET,
        sw_key,
        REGISTRY_TOKEN,
        GITLAB_TOKEN,
        "registry-notify-tokeX",
        "Bearer-guess-token",
    ];
    for (what, text) in [("logs", &logs), ("audit", &audit)] {
        for secret in secrets {
            assert!(!text.contains(secret), "{what} contain the secret {secret}");
        }
        for s in &sent_signatures {
            let s = s.trim_start_matches("v1,");
            assert!(!text.contains(s), "{what} contain the signature {s}");
        }
        assert!(
            !text.to_lowercase().contains("bearer "),
            "{what} contain an Authorization value"
        );
    }
}
