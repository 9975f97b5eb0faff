//! The admin API under `/api/v1`: events, jobs, the audit trail, rules and
//! simulation, behind admin tokens (`read`; `operate` for retry, cancel, approve,
//! reject and override-freeze).

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{OperateAccess, ReadAccess};
use super::{ApiError, AppState, ErrorBody};
use crate::audit::{AuditKind, AuditRecord, Verdict};
use crate::domain::approval::{Ballot, Refusal, Verdict as Decision};
use crate::domain::freeze::{OverrideRefusal, OverrideRequest};
use crate::domain::{Job, JobState, Millis, now_millis};
use crate::ingest::{IngestError, Simulation, simulate};
use crate::store::{
    ApprovalOutcome, AuditFilter, EventFilter, JobFilter, OperatorAction, OperatorOutcome,
    OverrideOutcome, StoredEvent,
};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

pub(super) fn limit(requested: Option<usize>) -> usize {
    requested.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)
}

fn not_found(what: &'static str, id: &str) -> ApiError {
    ApiError::not_found(what, format!("no such id `{id}`"))
}

/// A page of jobs, newest first.
#[derive(Serialize, ToSchema)]
pub struct JobsPage {
    jobs: Vec<Job>,
    /// Pass as `after` for the next page; null on the last.
    next: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobsQuery {
    /// `awaiting_approval`, `queued`, `running`, `retrying`, `frozen`, `succeeded`,
    /// `failed`, `cancelled`, `rejected` or `expired`.
    state: Option<String>,
    rule: Option<String>,
    /// The image (repository path without tag) of the job's event.
    image: Option<String>,
    /// Jobs a chain made from this job's success.
    parent: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// The `next` cursor of the previous page.
    after: Option<String>,
}

/// Jobs, newest first.
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(JobsQuery),
    security(("token" = [])),
    responses(
        (status = 200, body = JobsPage),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
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
            image: q.image,
            parent: q.parent,
            before: q.after,
            limit: limit(q.limit),
        })
        .await?;
    Ok(HttpResponse::Ok().json(JobsPage {
        jobs: page.items,
        next: page.next,
    }))
}

/// One job with every attempt.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    security(("token" = [])),
    responses(
        (status = 200, body = Job),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn get_job(
    _caller: ReadAccess,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    match state.store.job(&id).await? {
        Some(job) => Ok(HttpResponse::Ok().json(job)),
        None => Err(not_found("job_not_found", &id)),
    }
}

/// Puts a failed, cancelled, rejected or expired job back in the queue (or back to
/// awaiting approval when its policy needs one), its history kept and its attempt
/// budget renewed.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/retry", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    security(("token" = [])),
    responses(
        (status = 200, body = Job),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn retry_job(
    caller: OperateAccess,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    operate(caller, &id, OperatorAction::Retry, &state).await
}

/// Cancels an awaiting, queued, retrying, frozen or failed job.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    security(("token" = [])),
    responses(
        (status = 200, body = Job),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
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
        OperatorOutcome::NotFound => Err(not_found("job_not_found", id)),
        OperatorOutcome::Conflict(current) => Err(ApiError::new(
            StatusCode::CONFLICT,
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

/// A verdict's optional body: why, and the group the approver approves as.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerdictBody {
    comment: Option<String>,
    #[serde(rename = "as")]
    #[schema(rename = "as")]
    as_group: Option<String>,
}

/// Approves a job awaiting approval; at the policy's count of distinct approvers it
/// is queued. The same approver twice counts once.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/approve", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    request_body(content = Option<VerdictBody>, content_type = "application/json"),
    security(("token" = [])),
    responses(
        (status = 200, body = Job),
        (status = 400, body = ErrorBody, description = "`as_required` or a malformed body"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "`forbidden`, `not_an_approver` or `self_approval`"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn approve_job(
    caller: OperateAccess,
    id: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    give_verdict(caller, &id, Decision::Approved, &body, &state).await
}

/// Rejects a job awaiting approval (a comment is required); it ends `rejected`.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/reject", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    request_body(content = VerdictBody, content_type = "application/json"),
    security(("token" = [])),
    responses(
        (status = 200, body = Job),
        (status = 400, body = ErrorBody, description = "`comment_required`, `as_required` or a malformed body"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "`forbidden`, `not_an_approver` or `self_approval`"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn reject_job(
    caller: OperateAccess,
    id: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    give_verdict(caller, &id, Decision::Rejected, &body, &state).await
}

/// Reads the optional body, asks the store (and through it `domain::approval`), and
/// answers each refusal with its code.
async fn give_verdict(
    caller: OperateAccess,
    id: &str,
    verdict: Decision,
    body: &[u8],
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    let body: VerdictBody = if body.iter().all(u8::is_ascii_whitespace) {
        VerdictBody::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request("invalid_body", format!("the body: {e}")))?
    };
    let caller = caller.0;
    let ballot = Ballot {
        by: caller.name,
        groups: caller.groups,
        verdict,
        comment: body.comment,
        as_group: body.as_group,
    };
    match state.store.decide_approval(id, ballot).await? {
        ApprovalOutcome::Done(job) => Ok(HttpResponse::Ok().json(job)),
        ApprovalOutcome::NotFound => Err(not_found("job_not_found", id)),
        ApprovalOutcome::Refused(refused) => {
            let (status, code) = match refused {
                Refusal::InvalidState(_) => (StatusCode::CONFLICT, "invalid_state"),
                Refusal::CommentRequired => (StatusCode::BAD_REQUEST, "comment_required"),
                Refusal::NotAnApprover => (StatusCode::FORBIDDEN, "not_an_approver"),
                Refusal::SelfApproval => (StatusCode::FORBIDDEN, "self_approval"),
                Refusal::AsRequired => (StatusCode::BAD_REQUEST, "as_required"),
            };
            Err(ApiError::new(status, code, refused.to_string()))
        }
    }
}

/// Why a frozen job must run now; required, for the record.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverrideBody {
    comment: Option<String>,
}

/// Lets a frozen job run despite the freezes holding it (its `frozen.by`): it is
/// queued at once, and those freezes no longer hold it; a freeze that starts later
/// still does. A freeze with `override_groups` needs a token in one of them.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/override-freeze", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    request_body(content = OverrideBody, content_type = "application/json"),
    security(("token" = [])),
    responses(
        (status = 200, body = Job),
        (status = 400, body = ErrorBody, description = "`comment_required` or a malformed body"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "`forbidden` or `not_an_overrider`"),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "`invalid_state`: the job is not frozen"),
        (status = 415, body = ErrorBody, description = "Not JSON"),
        (status = 503, body = ErrorBody)))]
pub async fn override_freeze(
    caller: OperateAccess,
    id: web::Path<String>,
    body: web::Json<OverrideBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = caller.0;
    let request = OverrideRequest::new(
        caller.name,
        &caller.groups,
        body.into_inner().comment,
        &state.live.load().config.freezes,
    );
    match state.store.override_freeze(&id, request).await? {
        OverrideOutcome::Done(job) => Ok(HttpResponse::Ok().json(job)),
        OverrideOutcome::NotFound => Err(not_found("job_not_found", &id)),
        OverrideOutcome::Refused(refused) => {
            let (status, code) = match refused {
                OverrideRefusal::InvalidState(_) => (StatusCode::CONFLICT, "invalid_state"),
                OverrideRefusal::CommentRequired => (StatusCode::BAD_REQUEST, "comment_required"),
                OverrideRefusal::NotAnOverrider(_) => (StatusCode::FORBIDDEN, "not_an_overrider"),
            };
            Err(ApiError::new(status, code, refused.to_string()))
        }
    }
}

/// A page of received events, newest first.
#[derive(Serialize, ToSchema)]
pub struct EventsPage {
    events: Vec<StoredEvent>,
    next: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    source: Option<String>,
    /// The normalized event type, e.g. `docker.pushed`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    kind: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    after: Option<String>,
}

/// Received events, newest first, with the jobs they produced.
#[utoipa::path(get, path = "/api/v1/events", tag = "events", params(EventsQuery),
    security(("token" = [])),
    responses(
        (status = 200, body = EventsPage),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn list_events(
    _caller: ReadAccess,
    query: web::Query<EventsQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let page = state
        .store
        .events(EventFilter {
            source: q.source,
            kind: q.kind,
            before: q.after,
            limit: limit(q.limit),
        })
        .await?;
    Ok(HttpResponse::Ok().json(EventsPage {
        events: page.items,
        next: page.next,
    }))
}

/// One received event, its payload and the jobs it produced.
#[utoipa::path(get, path = "/api/v1/events/{id}", tag = "events",
    params(("id" = String, Path, description = "Event id")),
    security(("token" = [])),
    responses(
        (status = 200, body = StoredEvent),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn get_event(
    _caller: ReadAccess,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    match state.store.event(&id).await? {
        Some(event) => Ok(HttpResponse::Ok().json(event)),
        None => Err(not_found("event_not_found", &id)),
    }
}

/// A page of audit records, oldest first.
#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    records: Vec<AuditRecord>,
    /// Pass as `after` for the next page; null on the last.
    next: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// RFC 3339, or a duration meaning that long ago (`24h`).
    since: Option<String>,
    until: Option<String>,
    rule: Option<String>,
    image: Option<String>,
    tag: Option<String>,
    kind: Option<String>,
    job: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// Only records after this sequence number.
    after: Option<i64>,
}

/// An instant as RFC 3339, or a duration meaning that long ago (`24h`).
pub fn instant(name: &str, value: &str) -> Result<Millis, ApiError> {
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

/// Audit records, oldest first, paged by `after` sequence.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditQuery),
    security(("token" = [])),
    responses(
        (status = 200, body = AuditPage),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
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
    Ok(HttpResponse::Ok().json(AuditPage {
        records: page.items,
        next: page.next,
    }))
}

/// Re-computes the hash chain; `ok: false` names the first broken record.
#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "audit",
    security(("token" = [])),
    responses(
        (status = 200, body = Verdict),
        (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn verify_audit(
    _caller: ReadAccess,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.verify_chain().await?))
}

/// The compiled rules.
#[derive(Serialize, ToSchema)]
pub struct RulesList {
    /// Each rule as written, with its retry policy and dry-run flag resolved and
    /// the subject fields its action needs.
    #[schema(value_type = Vec<Object>)]
    rules: Vec<serde_json::Value>,
}

/// The rules as loaded.
#[utoipa::path(get, path = "/api/v1/rules", tag = "rules",
    security(("token" = [])),
    responses((status = 200, body = RulesList), (status = 401, body = ErrorBody)))]
pub async fn list_rules(_caller: ReadAccess, state: web::Data<AppState>) -> HttpResponse {
    let rules = state
        .live
        .load()
        .rules
        .rules()
        .iter()
        .map(|r| r.spec.clone())
        .collect();
    HttpResponse::Ok().json(RulesList { rules })
}

/// A body to try against the rules, as a source would receive it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulateRequest {
    source: String,
    /// The webhook body (any JSON).
    #[schema(value_type = Object)]
    body: serde_json::Value,
    /// Request headers the source's format reads (`X-GitHub-Event`, a type header).
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Serialize, ToSchema)]
pub struct SimulateAnswer {
    events: Vec<Simulation>,
}

/// Which promotions a body would queue: normalized and matched, nothing verified,
/// stored or sent.
#[utoipa::path(post, path = "/api/v1/simulate", tag = "rules", request_body = SimulateRequest,
    security(("token" = [])),
    responses(
        (status = 200, body = SimulateAnswer),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody)))]
pub async fn simulate_event(
    _caller: ReadAccess,
    request: web::Json<SimulateRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let request = request.into_inner();
    let body = serde_json::to_vec(&request.body).unwrap_or_default();
    let headers: Vec<(String, String)> = request.headers.into_iter().collect();
    let live = state.live.load();
    let events = simulate(
        &live.sources,
        &live.rules,
        &live.config.freezes,
        &request.source,
        &body,
        &headers,
    )
    .map_err(|e| match e {
        IngestError::Store(_) | IngestError::Signature(_) => {
            ApiError::bad_request("invalid_event", e.to_string())
        }
        other => other.into(),
    })?;
    Ok(HttpResponse::Ok().json(SimulateAnswer { events }))
}
