//! Traces (SPEC §12) from the real binary to an in-test OTLP/HTTP receiver, decoded
//! with the protocol's own types (`opentelemetry-proto`): the webhook's span and the
//! attempt's span in the trace of the sender's `traceparent`, the promote call to the
//! fake Artifactory carrying that trace, and an unsigned request's `traceparent`
//! never believed.

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::Value;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::harness::{CI_SECRET, ChildApp, free_port, hmac_hex, write_config};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SENDER_SPAN: &str = "00f067aa0ba902b7";
const FORGED_TRACE: &str = "11111111111111111111111111111111";

/// Every span the receiver got so far.
async fn spans(receiver: &MockServer) -> Vec<Span> {
    let mut all = Vec::new();
    for r in receiver.received_requests().await.unwrap_or_default() {
        let export = ExportTraceServiceRequest::decode(r.body.as_slice()).unwrap();
        for rs in export.resource_spans {
            for ss in rs.scope_spans {
                all.extend(ss.spans);
            }
        }
    }
    all
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            Any::StringValue(s) => s.clone(),
            Any::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_webhook_and_its_attempt_join_the_senders_trace_and_artifactory_sees_it() {
    let receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/traces"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&receiver)
        .await;
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&upstream)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &upstream.uri(),
        r#"
[[rules]]
name = "to-staging"
source = "ci"
event = "test-passed"
action = { type = "promote", target = "jfrog", to_repo = "staging" }
"#,
        "30s",
    );
    let app = ChildApp::start_with_env(
        &config,
        free_port(),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.uri().as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    )
    .await;
    let body = br#"{"event":"test-passed","repo":"dev","image":"app","tag":"1.0"}"#;
    let signature = format!("sha256={}", hmac_hex(CI_SECRET, body));
    let traceparent = format!("00-{TRACE}-{SENDER_SPAN}-01");
    let r = app
        .client
        .post_hook(
            "ci",
            body,
            &[
                ("X-Signature", &signature),
                ("traceparent", &traceparent),
                ("tracestate", "vendor=secret-ish"),
            ],
        )
        .await;
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    let job = v["jobs"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(app.client.wait_final(&job).await["state"], "succeeded");
    // A forged traceparent on a request whose signature fails is not believed.
    let forged = format!("00-{FORGED_TRACE}-{SENDER_SPAN}-01");
    let r = app
        .client
        .post_hook(
            "ci",
            b"{}",
            &[("X-Signature", "sha256=00"), ("traceparent", &forged)],
        )
        .await;
    assert_eq!(r.status(), 401);

    let deadline = Instant::now() + Duration::from_secs(20);
    let (hook, attempt, client, refused) = loop {
        let all = spans(&receiver).await;
        let find = |pred: &dyn Fn(&Span) -> bool| all.iter().find(|s| pred(s)).cloned();
        let hook = find(&|s| {
            s.name == "POST /hooks/{source}"
                && attribute(s, "http.response.status_code").as_deref() == Some("202")
        });
        let attempt = find(&|s| s.name == "job.attempt");
        let client =
            find(&|s| attribute(s, "url.template").is_some() && s.name.starts_with("POST "));
        let refused = find(&|s| {
            s.name == "POST /hooks/{source}"
                && attribute(s, "http.response.status_code").as_deref() == Some("401")
        });
        if let (Some(h), Some(a), Some(c), Some(f)) = (hook, attempt, client, refused) {
            break (h, a, c, f);
        }
        assert!(
            Instant::now() < deadline,
            "spans so far: {:?}",
            all.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let trace = hex::decode(TRACE).unwrap();
    // The webhook's span continues the sender's span.
    assert_eq!(hook.trace_id, trace);
    assert_eq!(hook.parent_span_id, hex::decode(SENDER_SPAN).unwrap());
    assert_eq!(
        attribute(&hook, "http.route").as_deref(),
        Some("/hooks/{source}")
    );
    // The attempt, run by a worker later, is in the same trace, under the webhook.
    assert_eq!(attempt.trace_id, trace);
    assert_eq!(attempt.parent_span_id, hook.span_id);
    // The promote call's client span is the attempt's child, named by its URL
    // template: the repo key's place, not the repo key.
    assert_eq!(client.trace_id, trace);
    assert_eq!(client.parent_span_id, attempt.span_id);
    assert_eq!(
        client.name,
        "POST /artifactory/api/docker/{repoKey}/v2/promote"
    );
    assert!(client.attributes.iter().all(|a| a.key != "url.full"));
    // The unsigned request's forged trace was not continued.
    assert_ne!(refused.trace_id, hex::decode(FORGED_TRACE).unwrap());

    // Artifactory saw the trace: the client span's traceparent, and no tracestate.
    let promote = upstream
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.method.as_str() == "POST")
        .unwrap();
    let sent = promote
        .headers
        .get("traceparent")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(
        sent,
        format!("00-{TRACE}-{}-01", hex::encode(&client.span_id)),
        "the promote call's traceparent"
    );
    assert!(promote.headers.get("tracestate").is_none());
}
