//! `POST /hooks/{source}`: the HTTP side of ingest. Checks what HTTP alone can tell
//! (source known, size, media type) before reading the body, then hands the raw
//! bytes to the ingest pipeline.

use actix_web::http::StatusCode;
use actix_web::http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap};
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, AppState, ErrorBody};
use crate::ingest::{Headers, IngestError, Receipt};
use crate::live::Generation;
use crate::metrics::EventResult;
use crate::store::{IngestOutcome, JobRef};

impl Headers for HeaderMap {
    fn get(&self, name: &str) -> Option<&str> {
        HeaderMap::get(self, name).and_then(|v| v.to_str().ok())
    }
}

/// A webhook request as its source's scheme reads it: the headers, and the query
/// string that `url-token` senders put their secret in.
struct Presented<'a>(&'a HttpRequest);

impl Headers for Presented<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        Headers::get(self.0.headers(), name)
    }

    fn query(&self) -> &str {
        self.0.query_string()
    }
}

/// What a sender is told about its webhook.
#[derive(Serialize, ToSchema)]
pub struct HookReceipt {
    /// The (first) event stored, or the event first stored for a duplicate delivery.
    event_id: Option<String>,
    /// Every job the body's events produced.
    jobs: Vec<JobRef>,
    /// True when every event in the body had been delivered before.
    duplicate: bool,
    /// Per event, when the body held several (registry notifications).
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<Vec<IngestOutcome>>,
}

/// Receives a signed webhook. 202 once its events and jobs are committed; 200 for a
/// delivery already seen.
#[utoipa::path(post, path = "/hooks/{source}", tag = "webhooks",
    params(("source" = String, Path, description = "A configured source name")),
    request_body(content = Object, description = "The sender's JSON body, verified byte for byte",
        content_type = "application/json"),
    responses(
        (status = 202, description = "Stored, with the jobs it produced", body = HookReceipt),
        (status = 200, description = "A delivery already stored", body = HookReceipt),
        (status = 400, description = "Malformed JSON or not an event of the source's format", body = ErrorBody),
        (status = 401, description = "Bad, missing or stale signature", body = ErrorBody),
        (status = 404, description = "Unknown source", body = ErrorBody),
        (status = 413, description = "Body over server.max_body_bytes (payload_too_large), or naming more events than one body may become (too_many_events)", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 503, description = "Store unavailable: send again", body = ErrorBody)))]
pub async fn receive(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let source = path.into_inner();
    // The config in force for this whole request.
    let live = state.live.load();
    let result = accept(&req, &source, payload, &state, &live).await;
    // Only configured names become labels: request paths cannot grow the label set.
    let label = if live.sources.get(&source).is_some() {
        source.as_str()
    } else {
        "unknown"
    };
    match &result {
        Ok(receipt) => {
            for e in &receipt.events {
                let r = if e.duplicate {
                    EventResult::Duplicate
                } else {
                    EventResult::Accepted
                };
                state.metrics.event(label, r);
            }
        }
        Err(e) => {
            state.metrics.event(label, EventResult::Rejected);
            if e.code == super::error::KEYS_UNAVAILABLE {
                state.metrics.keys_unavailable(label);
            }
        }
    }
    let receipt = result?;
    tracing::info!(
        source,
        events = receipt.events.len(),
        jobs = receipt.events.iter().map(|e| e.jobs.len()).sum::<usize>(),
        duplicate = receipt.all_duplicates(),
        "webhook accepted"
    );
    let status = if receipt.all_duplicates() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let answer = HookReceipt {
        event_id: receipt.events.first().map(|e| e.event_id.clone()),
        jobs: receipt
            .events
            .iter()
            .flat_map(|e| e.jobs.iter().cloned())
            .collect(),
        duplicate: receipt.all_duplicates(),
        events: (receipt.events.len() > 1).then_some(receipt.events),
    };
    Ok(HttpResponse::build(status).json(answer))
}

/// The checks HTTP alone can make, then the ingest pipeline. A refusal goes on the
/// record (summarised, see `ingest::rejections`); a store failure does not, as it is
/// not the sender's doing and the sender will send again.
async fn accept(
    req: &HttpRequest,
    source: &str,
    payload: web::Payload,
    state: &AppState,
    live: &Generation,
) -> Result<Receipt, ApiError> {
    let result: Result<Receipt, ApiError> = async {
        precheck(req, source, live)?;
        let body = read_body(payload, live.config.server.max_body_bytes).await?;
        Ok(state
            .ingest
            .receive(live, source, &Presented(req), &body)
            .await?)
    }
    .await;
    if let Err(e) = &result
        && !e.status.is_server_error()
    {
        let known = live.sources.get(source).is_some();
        state
            .ingest
            .rejections
            .note(source, known, e.code, &e.message)
            .await;
    }
    result
}

fn precheck(req: &HttpRequest, source: &str, live: &Generation) -> Result<(), ApiError> {
    if live.sources.get(source).is_none() {
        return Err(IngestError::unknown_source(source).into());
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = live.config.server.max_body_bytes;
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !is_json(content_type) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON (application/json or application/*+json)",
        ));
    }
    Ok(())
}

/// `application/json` and any `application/*+json`, parameters ignored.
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the body exceeds {limit} bytes"),
    )
}

/// Reads the body, refusing as soon as it passes the limit (chunked bodies declare
/// no length up front).
async fn read_body(mut payload: web::Payload, limit: usize) -> Result<web::Bytes, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request("unreadable_body", format!("cannot read the body: {e}"))
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn json_media_types() {
        assert!(is_json("application/json"));
        assert!(is_json("application/json; charset=utf-8"));
        assert!(is_json(
            "application/vnd.docker.distribution.events.v1+json"
        ));
        assert!(!is_json("text/plain"));
        assert!(!is_json(""));
        assert!(!is_json("application/jsonx"));
    }
}
