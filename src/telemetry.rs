//! OpenTelemetry traces (SPEC §12). Off unless an OTLP endpoint is configured; then
//! `tracing` spans become OpenTelemetry spans (tracing-opentelemetry) exported over
//! OTLP/HTTP, and:
//! - a webhook's span continues the sender's `traceparent`, but only once its
//!   signature verified ([`continue_trace`]): an unsigned request cannot join a trace;
//! - a job keeps the `traceparent` of the request that made it ([`traceparent`]), so
//!   its attempts (`job.attempt`, [`attempt_span`]) join that trace on any replica;
//! - every upstream request gets a client span named by its URL template and
//!   carries that span's `traceparent`, never a `tracestate` ([`send`]).
//!
//! Off, every helper returns at its first line: no context is made, stored or sent,
//! and the spans' `otel.*` fields stay empty (unprinted by the log formatter).

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

use crate::config::TracingConfig;
use crate::ingest::Headers;

static ENABLED: AtomicBool = AtomicBool::new(false);
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The W3C header, the only one continued and sent.
const TRACEPARENT: &str = "traceparent";

/// Whether traces are exported.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The subscriber layer that exports spans, when `config` names an endpoint.
pub fn layer<S>(config: &TracingConfig) -> anyhow::Result<Option<impl Layer<S>>>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let Some(url) = &config.traces_url else {
        return Ok(None);
    };
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url.clone())
        .with_headers(HashMap::new())
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        // A continued trace keeps its sender's choice; a new one is kept at the ratio.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("gantry")
                .build(),
        )
        .build();
    let tracer = provider.tracer("gantry");
    let _ = PROVIDER.set(provider);
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Some(
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            // A span's parent is set after it is entered (a webhook's, once its
            // signature verified): entering must not fix its context first.
            .with_context_activation(false)
            .with_threads(false)
            .with_location(false),
    ))
}

/// Sends the spans not yet exported (at shutdown).
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get()
        && let Err(e) = provider.shutdown()
    {
        tracing::warn!(error = %e, "cannot flush the last spans");
    }
}

fn extract(traceparent: &str) -> opentelemetry::Context {
    let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
    TraceContextPropagator::new().extract(&carrier)
}

/// The `traceparent` of `span`'s context, when it has a valid one.
fn traceparent_of(span: &Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Continues the sender's trace in the current (request) span: called once the
/// request's signature verified, never before.
pub fn continue_trace(headers: &dyn Headers) {
    if !enabled() {
        return;
    }
    if let Some(tp) = headers.get(TRACEPARENT) {
        let parent = extract(tp);
        if parent.span().span_context().is_valid() {
            let _ = Span::current().set_parent(parent);
        }
    }
}

/// The current span's `traceparent`, for a job to keep; `None` when traces are off.
pub fn traceparent() -> Option<String> {
    if !enabled() {
        return None;
    }
    traceparent_of(&Span::current())
}

/// The span of one attempt at a job, in the trace of the request that made it.
pub fn attempt_span(
    job_id: &str,
    rule: &str,
    target: &str,
    n: u32,
    traceparent: Option<&str>,
) -> Span {
    let span = tracing::info_span!(
        "attempt",
        job_id,
        rule,
        target,
        n,
        otel.name = tracing::field::Empty
    );
    if enabled() {
        span.record("otel.name", "job.attempt");
        if let Some(tp) = traceparent {
            let _ = span.set_parent(extract(tp));
        }
    }
    span
}

/// Sends an upstream request in a client span of its own, carrying that span's
/// `traceparent`. The span is named `{method} {template}` — the URL template, with a
/// place name for every value, never the raw path — and has OpenTelemetry's HTTP
/// client attributes but no URL, so no value (which may be a credential in a query)
/// leaves gantry in a span.
pub async fn send(
    request: reqwest::RequestBuilder,
    template: &str,
) -> reqwest::Result<reqwest::Response> {
    if !enabled() {
        return request.send().await;
    }
    let (client, request) = request.build_split();
    let mut request = request?;
    let url = request.url();
    let span = tracing::info_span!("upstream",
        otel.name = %format_args!("{} {template}", request.method()),
        otel.kind = "client",
        http.request.method = %request.method(),
        url.template = template,
        server.address = url.host_str().unwrap_or(""),
        server.port = url.port_or_known_default().unwrap_or(0),
        http.response.status_code = tracing::field::Empty,
    );
    if let Some(tp) = traceparent_of(&span)
        && let Ok(value) = reqwest::header::HeaderValue::from_str(&tp)
    {
        request.headers_mut().insert(TRACEPARENT, value);
    }
    request.headers_mut().remove("tracestate");
    let answer = client.execute(request).instrument(span.clone()).await;
    if let Ok(response) = &answer {
        span.record("http.response.status_code", response.status().as_u16());
    }
    answer
}
