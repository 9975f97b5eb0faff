//! The span each request's log lines carry.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::{Error, HttpMessage};
use tracing::Span;
use tracing_actix_web::{RequestId, RootSpanBuilder};

/// The fields an operator looks a request up by: method, path and request id.
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
            path = request.path(),
            request_id = id.map(tracing::field::display),
        )
    }

    fn on_request_end<B: MessageBody>(_: Span, _: &Result<ServiceResponse<B>, Error>) {}
}
