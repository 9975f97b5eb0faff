//! The span each request's log lines carry.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::{Error, HttpMessage};
use tracing::Span;
use tracing_actix_web::{RequestId, RootSpanBuilder};

/// Paths are logged cut to this many bytes: every route of gantry's is shorter, and
/// a made-up source name in a 4 KB path must not flood each line of its request.
const MAX_LOGGED_PATH: usize = 7 + crate::ingest::MAX_SOURCE_NAME; // "/hooks/" + a name

/// The fields an operator looks a request up by: method, path and request id. The
/// path only, never the query: a `url-token` sender's secret is in it (SPEC §16).
/// tracing-actix-web's default span carries a dozen OpenTelemetry fields and records
/// the status into it at the end, where no log line reads it; formatting those
/// fields took half of the HTTP workers' time under ingest load.
pub struct RequestSpan;

impl RootSpanBuilder for RequestSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let id = request.extensions().get::<RequestId>().copied();
        let span = tracing::info_span!(
            "request",
            method = %request.method(),
            path = prefix(request.path(), MAX_LOGGED_PATH),
            request_id = id.map(tracing::field::display),
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
            http.request.method = tracing::field::Empty,
            http.route = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
        );
        // Only with traces on: the span's name is the route's template (never the
        // raw path), with OpenTelemetry's HTTP server attributes.
        if crate::telemetry::enabled() {
            let route = request
                .match_pattern()
                .unwrap_or_else(|| "unmatched".to_string());
            span.record(
                "otel.name",
                tracing::field::display(format_args!("{} {route}", request.method())),
            );
            span.record("otel.kind", "server");
            span.record(
                "http.request.method",
                tracing::field::display(request.method()),
            );
            span.record("http.route", route.as_str());
        }
        span
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        if crate::telemetry::enabled()
            && let Ok(response) = outcome
        {
            span.record(
                "http.response.status_code",
                response.response().status().as_u16(),
            );
        }
    }
}

/// The longest prefix of `s` within `max` bytes, cut on a char boundary (no
/// allocation: this runs for every request).
fn prefix(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
