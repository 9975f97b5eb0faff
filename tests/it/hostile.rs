//! Hostile requests, table-driven: each gets its exact status and error code, the
//! server stays healthy, and nothing but an audit record is stored for a rejection.

use std::time::Duration;

use futures_util::stream;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{
    CI_SECRET, MAX_BODY, MORE_SOURCES, REGISTRY_TOKEN, TestApp, VIEWER_TOKEN, cli_sign, hmac_hex,
    spawn_app,
};

enum Body {
    Bytes(Vec<u8>),
    /// Sent in chunks with no Content-Length.
    Chunked(Vec<u8>),
}

struct Case {
    name: &'static str,
    method: reqwest::Method,
    path: String,
    content_type: Option<&'static str>,
    headers: Vec<(String, String)>,
    body: Body,
    status: u16,
    code: &'static str,
}

fn sig(body: &[u8]) -> String {
    format!("sha256={}", hmac_hex(CI_SECRET, body))
}

fn case(
    name: &'static str,
    body: &[u8],
    headers: Vec<(&str, String)>,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        name,
        method: reqwest::Method::POST,
        path: "/hooks/ci".into(),
        content_type: Some("application/json"),
        headers: headers
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        body: Body::Bytes(body.to_vec()),
        status,
        code,
    }
}

/// A body signed correctly, so that only the named flaw is under test.
fn signed(name: &'static str, body: &[u8], status: u16, code: &'static str) -> Case {
    case(name, body, vec![("X-Signature", sig(body))], status, code)
}

fn cases(app: &TestApp) -> Vec<Case> {
    let ok = br#"{"event":"test-passed","tag":"1.0.0"}"#.to_vec();
    let over = {
        let mut b = br#"{"event":"x","pad":""#.to_vec();
        b.resize(MAX_BODY - 2, b' ');
        b.extend_from_slice(b"\"}");
        b.push(b' ');
        b
    };
    assert_eq!(over.len(), MAX_BODY + 1);
    let nested_arrays = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let nested_objects = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
    let sw_body = br#"{"event":"deployed"}"#;
    let sw_headers = cli_sign(&app.config, "sw", sw_body);
    let sw_id = sw_headers[0].1.clone();
    let sw_sig = sw_headers[2].1.clone();
    let stale = (chrono::Utc::now().timestamp() - 301).to_string();
    let sw = |name, ts: &str, status, code| Case {
        path: "/hooks/sw".into(),
        ..case(
            name,
            sw_body,
            vec![
                ("webhook-id", sw_id.clone()),
                ("webhook-timestamp", ts.to_string()),
                ("webhook-signature", sw_sig.clone()),
            ],
            status,
            code,
        )
    };

    let mut all = vec![
        case("no signature header", &ok, vec![], 401, "invalid_signature"),
        case(
            "empty body, no signature",
            b"",
            vec![],
            401,
            "invalid_signature",
        ),
        signed("empty body, signed", b"", 400, "malformed_json"),
        case(
            "wrong secret",
            &ok,
            vec![("X-Signature", format!("sha256={}", hmac_hex("guess", &ok)))],
            401,
            "invalid_signature",
        ),
        case(
            "signature without its prefix",
            &ok,
            vec![("X-Signature", sig(&ok)[7..].to_string())],
            401,
            "invalid_signature",
        ),
        case(
            "upper-case prefix",
            &ok,
            vec![("X-Signature", sig(&ok).replace("sha256=", "SHA256="))],
            401,
            "invalid_signature",
        ),
        case(
            "sha1 prefix",
            &ok,
            vec![("X-Signature", sig(&ok).replace("sha256=", "sha1="))],
            401,
            "invalid_signature",
        ),
        case(
            "truncated signature",
            &ok,
            vec![("X-Signature", sig(&ok)[..70].to_string())],
            401,
            "invalid_signature",
        ),
        case(
            "base64 where hex is expected",
            &ok,
            vec![("X-Signature", "sha256=q83vEjRWeJA=".into())],
            401,
            "invalid_signature",
        ),
        case(
            "signature of the empty body",
            &ok,
            vec![("X-Signature", sig(b""))],
            401,
            "invalid_signature",
        ),
        case(
            "signature over the re-serialized body",
            br#"{"event": "test-passed", "tag": "1.0.0"}"#,
            vec![("X-Signature", sig(&ok))],
            401,
            "invalid_signature",
        ),
        case(
            "an 8 KB signature header",
            &ok,
            vec![("X-Signature", format!("sha256={}", "a".repeat(8000)))],
            401,
            "invalid_signature",
        ),
        case(
            "wrong signature in the first of two headers",
            &ok,
            vec![("X-Signature", sig(b"other")), ("X-Signature", sig(&ok))],
            401,
            "invalid_signature",
        ),
        Case {
            content_type: Some("text/plain"),
            ..signed("text/plain", &ok, 415, "unsupported_media_type")
        },
        Case {
            content_type: None,
            ..signed("no content type", &ok, 415, "unsupported_media_type")
        },
        Case {
            content_type: Some("application/xml"),
            ..signed("application/xml", &ok, 415, "unsupported_media_type")
        },
        Case {
            content_type: Some("application/jsonp"),
            ..signed("application/jsonp", &ok, 415, "unsupported_media_type")
        },
        signed(
            "one byte over the limit, with Content-Length",
            &over,
            413,
            "payload_too_large",
        ),
        Case {
            body: Body::Chunked(over.clone()),
            ..signed(
                "one byte over the limit, chunked",
                &over,
                413,
                "payload_too_large",
            )
        },
        Case {
            body: Body::Chunked(vec![b' '; 200_000]),
            ..case(
                "200 KB chunked",
                b"",
                vec![("X-Signature", "sha256=00".into())],
                413,
                "payload_too_large",
            )
        },
        signed(
            "invalid UTF-8",
            b"{\"event\":\"\xff\xfe\"}",
            400,
            "malformed_json",
        ),
        signed(
            "a byte-order mark",
            b"\xef\xbb\xbf{\"event\":\"x\"}",
            400,
            "malformed_json",
        ),
        signed(
            "10 000 nested arrays",
            nested_arrays.as_bytes(),
            400,
            "malformed_json",
        ),
        signed(
            "10 000 nested objects",
            nested_objects.as_bytes(),
            400,
            "malformed_json",
        ),
        signed(
            "duplicate keys",
            br#"{"event":"test-passed","tag":"1.0.0","tag":"9.9.9"}"#,
            400,
            "malformed_json",
        ),
        signed(
            "trailing garbage",
            br#"{"event":"x"} {"event":"y"}"#,
            400,
            "malformed_json",
        ),
        signed("no event type", br#"{"tag":"1.0.0"}"#, 400, "invalid_event"),
        signed(
            "a null event type",
            br#"{"event":null}"#,
            400,
            "invalid_event",
        ),
        signed(
            "a top-level array",
            br#"[{"event":"x"}]"#,
            400,
            "invalid_event",
        ),
        Case {
            path: "/hooks/nope".into(),
            ..signed("unknown source", &ok, 404, "unknown_source")
        },
        Case {
            path: "/hooks/..%2Fci".into(),
            ..signed("encoded traversal", &ok, 404, "unknown_source")
        },
        Case {
            method: reqwest::Method::GET,
            ..signed("GET", b"", 405, "method_not_allowed")
        },
        Case {
            method: reqwest::Method::PUT,
            ..signed("PUT", &ok, 405, "method_not_allowed")
        },
        Case {
            path: "/hooks/registry".into(),
            ..case(
                "registry: empty events",
                br#"{"events":[]}"#,
                vec![("Authorization", format!("Bearer {REGISTRY_TOKEN}"))],
                400,
                "invalid_event",
            )
        },
        Case {
            path: "/hooks/registry".into(),
            ..case(
                "registry: wrong token",
                br#"{"events":[]}"#,
                vec![("Authorization", "Bearer registry-notify-tokeN".into())],
                401,
                "invalid_signature",
            )
        },
        Case {
            path: "/hooks/artifactory".into(),
            ..case(
                "artifactory: no data",
                br#"{"domain":"docker","event_type":"pushed"}"#,
                vec![(
                    "X-JFrog-Event-Auth",
                    hmac_hex(
                        crate::harness::JFROG_SECRET,
                        br#"{"domain":"docker","event_type":"pushed"}"#,
                    ),
                )],
                400,
                "invalid_event",
            )
        },
        sw(
            "standard-webhooks: 5m01s old",
            &stale,
            401,
            "invalid_signature",
        ),
        sw(
            "standard-webhooks: i64::MIN timestamp",
            "-9223372036854775808",
            401,
            "invalid_signature",
        ),
        sw(
            "standard-webhooks: malformed timestamp",
            "soon",
            401,
            "invalid_signature",
        ),
    ];
    // The body exactly at the limit is fine: the limit is inclusive.
    let mut at_limit = over.clone();
    at_limit.pop();
    all.push(Case {
        path: "/hooks/nope".into(),
        ..signed(
            "at the limit, unknown source",
            &at_limit,
            404,
            "unknown_source",
        )
    });
    all
}

async fn send(app: &TestApp, c: &Case) -> reqwest::Response {
    let mut req =
        reqwest::Client::new().request(c.method.clone(), format!("{}{}", app.base, c.path));
    if let Some(ct) = c.content_type {
        req = req.header("Content-Type", ct);
    }
    for (k, v) in &c.headers {
        req = req.header(k, v);
    }
    req = match &c.body {
        Body::Bytes(b) => req.body(b.clone()),
        Body::Chunked(b) => {
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                b.chunks(1000).map(|c| Ok(c.to_vec())).collect();
            req.body(reqwest::Body::wrap_stream(stream::iter(chunks)))
        }
    };
    req.send().await.unwrap()
}

#[tokio::test]
async fn hostile_requests_get_exact_answers_and_leave_only_audit_records() {
    let app = spawn_app(&format!(
        "{MORE_SOURCES}\n[audit]\nrejections_every = \"300ms\"\n"
    ))
    .await;
    let cases = cases(&app);
    assert!(cases.len() >= 25);
    let mut audited: u64 = 0;
    for c in &cases {
        let resp = send(&app, c).await;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (c.status, Some(c.code)),
            "{}: {body}",
            c.name
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}",
            c.name
        );
        if c.status != 405 {
            audited += 1;
        }
    }
    // A lying Content-Length is refused before a byte of the body is read.
    let mut tcp = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    tcp.write_all(b"POST /hooks/ci HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000000000\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 413");
    audited += 1;

    assert_eq!(app.get("/healthz", None).await.status(), 200);
    assert_eq!(app.get("/readyz", None).await.status(), 200);
    // Summarised per source and reason: fewer records than refusals, whose counts
    // add up to every refusal once the last period has ended.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let rejected = loop {
        let rejected = app.audit("kind=event.rejected&limit=1000").await;
        let counted: u64 = rejected.iter().map(|r| r["count"].as_u64().unwrap()).sum();
        if counted == audited || std::time::Instant::now() > deadline {
            assert_eq!(counted, audited, "{rejected:#?}");
            break rejected;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        rejected.len() < audited as usize,
        "{} records",
        rejected.len()
    );
    assert!(app.audit("kind=event.received").await.is_empty());
    let jobs: Value = app
        .get("/api/v1/jobs", Some(VIEWER_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(jobs["jobs"], serde_json::json!([]));
    // A clean request still goes through afterwards, even one exactly at the limit.
    let mut at_limit = br#"{"event":"x","pad":""#.to_vec();
    at_limit.resize(MAX_BODY - 2, b' ');
    at_limit.extend_from_slice(b"\"}");
    assert_eq!(app.send("ci", &at_limit).await.status(), 202);
    app.stop().await;
}
