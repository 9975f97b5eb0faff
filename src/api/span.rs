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
        tracing::info_span!(
            "request",
            method = %request.method(),
            path = prefix(request.path(), MAX_LOGGED_PATH),
            request_id = id.map(tracing::field::display),
        )
    }

    fn on_request_end<B: MessageBody>(_: Span, _: &Result<ServiceResponse<B>, Error>) {}
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
