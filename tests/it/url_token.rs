//! The `url-token` scheme (SPEC §16): the secret travels in the URL's query, so the
//! query must reach no log line, audit record, API answer or metric, whatever the
//! request came to. The attacks first; then the real binary's logs, read whole.

use std::process::Command;
use std::time::Duration;

use crate::harness::{ChildApp, Client, VIEWER_TOKEN, free_port, spawn_app, write_config};
use crate::oidc::{AUDIENCE, BODY, Issuer, TestKey};

/// Characters a query must encode, so that decoding is tested too.
const HUB_SECRET: &str = "hub-s3cret+/=&?x";
const HUB_SECRET_OLD: &str = "hub-previous-secret";

fn hub_sources() -> String {
    format!(
        r#"
[[sources]]
name = "hub"
format = "generic"
verify = {{ scheme = "url-token", secrets = ["{HUB_SECRET}", "{HUB_SECRET_OLD}"] }}

[[sources]]
name = "hub-key"
format = "generic"
verify = {{ scheme = "url-token", param = "key", secrets = ["{HUB_SECRET}"] }}
"#
    )
}

/// `?param=value`, the value encoded as a form would.
fn query(param: &str, value: &str) -> String {
    let mut url = reqwest::Url::parse("http://x/").unwrap();
    url.query_pairs_mut().append_pair(param, value);
    format!("?{}", url.query().unwrap())
}

/// Posts `body` to `/hooks/{source}{query}` as JSON, with extra headers.
async fn post(client: &Client, source: &str, query: &str, body: &[u8]) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(format!("{}/hooks/{source}{query}", client.base))
        .header("Content-Type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn a_wrong_missing_or_repeated_url_token_is_401_and_never_echoed() {
    let app = spawn_app(&hub_sources()).await;
    let guess = "hub-s3cret+/=&?y";
    let cases = [
        ("hub", String::new(), "no `token` parameter"),
        ("hub", query("token", guess), "does not match"),
        ("hub", query("token", ""), "does not match"),
        ("hub", query("Token", HUB_SECRET), "no `token` parameter"),
        ("hub", query("key", HUB_SECRET), "no `token` parameter"),
        (
            "hub",
            format!(
                "{}&{}",
                query("token", HUB_SECRET),
                &query("token", guess)[1..]
            ),
            "more than once",
        ),
        ("hub-key", query("token", HUB_SECRET), "no `key` parameter"),
        // Unencoded, `+` reads as a space and `&` ends the value.
        ("hub", format!("?token={HUB_SECRET}"), "does not match"),
    ];
    for (source, q, why) in &cases {
        let (status, answer) = post(&app, source, q, BODY).await;
        assert_eq!(status, 401, "{source}{q}: {answer}");
        assert!(answer.contains(why), "{source}{q}: {answer}");
        for secret in [guess, HUB_SECRET, "s3cret"] {
            assert!(!answer.contains(secret), "{source}{q}: {answer}");
        }
    }
    // The secret in a header instead of the query does not count.
    let r = app
        .post_hook(
            "hub",
            BODY,
            &[("Authorization", &format!("Bearer {HUB_SECRET}"))],
        )
        .await;
    assert_eq!(r.status(), 401);

    // Each active secret, encoded, under its source's parameter.
    for (source, q) in [
        ("hub", query("token", HUB_SECRET)),
        ("hub", query("token", HUB_SECRET_OLD)),
        ("hub-key", format!("{}&other=1", query("key", HUB_SECRET))),
    ] {
        let body = format!(r#"{{"event":"pushed","tag":"{source}{}"}}"#, q.len());
        let (status, answer) = post(&app, source, &q, body.as_bytes()).await;
        assert_eq!(status, 202, "{source}{q}: {answer}");
    }
    app.stop().await;
}

#[tokio::test]
async fn gantry_sign_prints_the_url_a_url_token_sender_posts_to() {
    let app = spawn_app(&hub_sources()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.json");
    std::fs::write(&file, BODY).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["sign", "--source", "hub", "--url", &app.base, "--config"])
        .arg(&app.config)
        .arg("--event")
        .arg(&file)
        .envs(crate::harness::env())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let url = stdout
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap_or_else(|| panic!("no URL in {stdout}"));
    assert!(
        url.starts_with(&format!("{}/hooks/hub?token=", app.base)),
        "{url}"
    );
    let r = reqwest::Client::new()
        .post(url)
        .header("Content-Type", "application/json")
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    app.stop().await;
}

/// Every kind of answer a request with a secret in its query can get, and the
/// requests of an `oidc` sender, against the real binary logging at debug: no secret,
/// no query and no token reaches its logs, the audit trail, the events, the metrics
/// or any answer.
#[tokio::test]
async fn query_tokens_and_bearer_tokens_reach_no_log_record_metric_or_answer() {
    let key = TestKey::es256("k1");
    let issuer = Issuer::start(&[&key]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "http://127.0.0.1:1",
        &format!(
            r#"{}
[[sources]]
name = "gha"
format = "generic"
verify = {{ scheme = "oidc", issuer = "{}", audience = "{AUDIENCE}" }}
"#,
            hub_sources(),
            issuer.url()
        ),
        "30s",
    );
    let log_path = dir.path().join("gantry.log");
    let app = ChildApp::start_logged(
        &config,
        free_port(),
        std::fs::File::create(&log_path).unwrap(),
    )
    .await;
    let c = &app.client;
    let guess = "hub-guessed-secret-9f8e7d";
    let good = query("token", HUB_SECRET);
    let wrong = query("token", guess);
    let mut answers = Vec::new();
    // (source, query, method, content type, body, the status expected)
    type Request<'a> = (&'a str, &'a str, &'a str, &'a str, &'a [u8], u16);
    let too_big = vec![b' '; crate::harness::MAX_BODY + 1];
    let requests: [Request; 8] = [
        ("hub", &good, "POST", "application/json", BODY, 202),
        ("hub", &good, "POST", "application/json", BODY, 200),
        ("hub", &wrong, "POST", "application/json", BODY, 401),
        ("hub", &good, "POST", "application/json", b"{not json", 400),
        ("hub", &good, "POST", "text/plain", BODY, 415),
        ("hub", &good, "POST", "application/json", &too_big, 413),
        ("hub", &good, "GET", "application/json", b"", 405),
        (
            "no-such-source",
            &good,
            "POST",
            "application/json",
            BODY,
            404,
        ),
    ];
    let http = reqwest::Client::new();
    for (source, q, method, content_type, body, expected) in requests {
        let r = http
            .request(
                method.parse().unwrap(),
                format!("{}/hooks/{source}{q}", c.base),
            )
            .header("Content-Type", content_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(status, expected, "{method} {source}: {text}");
        answers.push(text);
    }
    // The oidc sender: a token that passes, and one for another audience.
    let token = key.sign(&issuer.claims());
    let mut other = issuer.claims();
    other["aud"] = "someone-else".into();
    let refused_token = key.sign(&other);
    for (t, expected) in [(&token, 202), (&refused_token, 401)] {
        let r = c
            .post_hook("gha", BODY, &[("Authorization", &format!("Bearer {t}"))])
            .await;
        assert_eq!(r.status(), expected);
        answers.push(r.text().await.unwrap());
    }
    let mut seen = answers.join("\n");
    for path in [
        "/api/v1/audit?limit=1000",
        "/api/v1/events?limit=1000",
        "/api/v1/jobs",
    ] {
        let r = c.get(path, Some(VIEWER_TOKEN)).await;
        assert_eq!(r.status(), 200, "{path}");
        seen.push_str(&r.text().await.unwrap());
    }
    let metrics = c.get("/metrics", None).await.text().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(app.terminate(Duration::from_secs(10)).await.success());
    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        logs.contains("/hooks/hub") && logs.contains("/hooks/gha"),
        "the requests are not in the logs:\n{logs}"
    );

    let signature = token.rsplit('.').next().unwrap();
    let secrets = [
        HUB_SECRET,
        HUB_SECRET_OLD,
        guess,
        good.trim_start_matches('?'),
        wrong.trim_start_matches('?'),
        &token,
        signature,
        &refused_token,
    ];
    for (what, text) in [
        ("logs", &logs),
        ("answers and records", &seen),
        ("metrics", &metrics),
    ] {
        for secret in secrets {
            assert!(!text.contains(secret), "the {what} contain `{secret}`");
        }
        assert!(!text.contains("token="), "the {what} contain a query");
    }
}
