//! The admin API under `/api/v1`: jobs and the audit trail, behind admin tokens.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::auth::{OperateAccess, ReadAccess};
use super::{ApiError, AppState};
use crate::audit::AuditKind;
use crate::domain::{JobState, Millis, now_millis};
use crate::store::{AuditFilter, JobFilter, OperatorAction, OperatorOutcome};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

fn limit(requested: Option<usize>) -> usize {
    requested.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsQuery {
    state: Option<String>,
    rule: Option<String>,
    limit: Option<usize>,
    /// The `next` cursor of the previous page.
    after: Option<String>,
}

pub async fn list_jobs(
    _caller: ReadAccess,
    query: web::Query<JobsQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let job_state = match q.state.as_deref() {
        None => None,
        Some(s) => Some(JobState::parse(s).ok_or_else(|| {
            ApiError::bad_request("invalid_query", format!("unknown job state `{s}`"))
        })?),
    };
    let page = state
        .store
        .jobs(JobFilter {
            state: job_state,
            rule: q.rule,
            before: q.after,
            limit: limit(q.limit),
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({"jobs": page.items, "next": page.next})))
}

pub async fn get_job(
    _caller: ReadAccess,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    match state.store.job(&id).await? {
        Some(job) => Ok(HttpResponse::Ok().json(job)),
        None => Err(ApiError::not_found(
            "job_not_found",
            format!("no job `{id}`"),
        )),
    }
}

pub async fn retry_job(
    caller: OperateAccess,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    operate(caller, &id, OperatorAction::Retry, &state).await
}

pub async fn cancel_job(
    caller: OperateAccess,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    operate(caller, &id, OperatorAction::Cancel, &state).await
}

async fn operate(
    caller: OperateAccess,
    id: &str,
    action: OperatorAction,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    match state.store.operate(id, action, &caller.0.name).await? {
        OperatorOutcome::Done(job) => Ok(HttpResponse::Ok().json(job)),
        OperatorOutcome::NotFound => Err(ApiError::not_found(
            "job_not_found",
            format!("no job `{id}`"),
        )),
        OperatorOutcome::Conflict(current) => Err(ApiError::new(
            actix_web::http::StatusCode::CONFLICT,
            "invalid_state",
            format!(
                "a {} job cannot be {}",
                current.as_str(),
                match action {
                    OperatorAction::Retry => "retried",
                    OperatorAction::Cancel => "cancelled",
                }
            ),
        )),
    }
}

pub async fn verify_audit(
    _caller: ReadAccess,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.store.verify_audit().await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    since: Option<String>,
    until: Option<String>,
    rule: Option<String>,
    image: Option<String>,
    tag: Option<String>,
    kind: Option<String>,
    job: Option<String>,
    limit: Option<usize>,
    after: Option<i64>,
}

/// An instant as RFC 3339, or a duration meaning that long ago (`24h`).
fn instant(name: &str, value: &str) -> Result<Millis, ApiError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(value) {
        return Ok(t.timestamp_millis());
    }
    if let Ok(d) = humantime::parse_duration(value) {
        let ago = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        return Ok(now_millis().saturating_sub(ago));
    }
    Err(ApiError::bad_request(
        "invalid_query",
        format!("`{name}` must be an RFC 3339 time or a duration such as 24h"),
    ))
}

pub async fn list_audit(
    _caller: ReadAccess,
    query: web::Query<AuditQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let kind = match q.kind.as_deref() {
        None => None,
        Some(k) => Some(AuditKind::parse(k).ok_or_else(|| {
            ApiError::bad_request("invalid_query", format!("unknown audit kind `{k}`"))
        })?),
    };
    let page = state
        .store
        .audit(AuditFilter {
            since: q
                .since
                .as_deref()
                .map(|v| instant("since", v))
                .transpose()?,
            until: q
                .until
                .as_deref()
                .map(|v| instant("until", v))
                .transpose()?,
            rule: q.rule,
            image: q.image,
            tag: q.tag,
            kind,
            job: q.job,
            after: q.after,
            limit: limit(q.limit),
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({"records": page.items, "next": page.next})))
}
