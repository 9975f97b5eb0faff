//! Freeze windows over HTTP (SPEC §9): operators start and end run-time freezes,
//! and anyone with `read` lists the active and upcoming ones, from the config and the
//! store alike.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{OperateAccess, ReadAccess};
use super::{ApiError, AppState, ErrorBody};
use crate::domain::destinations;
use crate::domain::freeze::{self, RuntimeFreeze};
use crate::domain::{Millis, now_millis};

/// A run-time freeze to start. `until` is required: freezes always end.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartFreeze {
    pub name: String,
    /// Globs over the destination repo; every repo when absent.
    pub to_repos: Option<Vec<String>>,
    /// Every target when absent.
    pub targets: Option<Vec<String>>,
    /// RFC 3339, in the future.
    pub until: Option<String>,
    pub reason: Option<String>,
}

/// One freeze window, active now or the next one to come.
#[derive(Serialize, ToSchema)]
pub struct FreezeWindow {
    name: String,
    /// `config` or `runtime`.
    source: &'static str,
    active: bool,
    to_repos: Option<Vec<String>>,
    targets: Option<Vec<String>>,
    #[schema(value_type = String, format = DateTime)]
    starts_at: String,
    #[schema(value_type = String, format = DateTime)]
    ends_at: String,
    /// Run-time freezes: why, and who started it.
    reason: Option<String>,
    started_by: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct FreezesAnswer {
    freezes: Vec<FreezeWindow>,
}

fn invalid(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, message)
}

/// Starts a run-time freeze, honoured by every replica until `until` or its end.
#[utoipa::path(post, path = "/api/v1/freezes", tag = "freezes", request_body = StartFreeze,
    security(("token" = [])),
    responses(
        (status = 201, body = RuntimeFreeze),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn start_freeze(
    caller: OperateAccess,
    request: web::Json<StartFreeze>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let f = requested_freeze(request.into_inner(), caller.0.name, &state)?;
    if !state.store.start_freeze(f.clone()).await? {
        return Err(exists(&f.name));
    }
    Ok(HttpResponse::Created().json(f))
}

/// A run-time freeze as asked for, checked: what the API and the console both start.
pub fn requested_freeze(
    r: StartFreeze,
    by: String,
    state: &AppState,
) -> Result<RuntimeFreeze, ApiError> {
    let plain = !r.name.is_empty()
        && r.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !plain {
        return Err(invalid(
            "invalid_name",
            "a freeze name is non-empty and uses only letters, digits, `-`, `_` and `.`",
        ));
    }
    let Some(until) = r.until else {
        return Err(invalid(
            "until_required",
            "a freeze needs `until`: freezes always end",
        ));
    };
    let until: Millis = chrono::DateTime::parse_from_rfc3339(&until)
        .map_err(|e| invalid("invalid_until", format!("`until` is not RFC 3339: {e}")))?
        .timestamp_millis();
    let now = now_millis();
    if until <= now {
        return Err(invalid("until_past", "`until` is in the past"));
    }
    if let Some(globs) = &r.to_repos {
        destinations::parse_globs(globs).map_err(|e| invalid("invalid_to_repos", e.to_string()))?;
    }
    if state
        .live
        .load()
        .config
        .freezes
        .iter()
        .any(|f| f.name == r.name)
    {
        return Err(exists(&r.name));
    }
    Ok(RuntimeFreeze {
        name: r.name,
        to_repos: r.to_repos,
        targets: r.targets,
        from: now,
        until,
        reason: r.reason.unwrap_or_default(),
        started_by: by,
    })
}

fn exists(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "freeze_exists",
        format!("a freeze named `{name}` is already in force"),
    )
}

/// Ends a run-time freeze now; the jobs it held are looked at again at once.
#[utoipa::path(delete, path = "/api/v1/freezes/{name}", tag = "freezes",
    params(("name" = String, Path, description = "Freeze name")),
    security(("token" = [])),
    responses(
        (status = 204),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn end_freeze(
    caller: OperateAccess,
    name: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if state.store.end_freeze(&name, &caller.0.name).await? {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::not_found(
            "freeze_not_found",
            format!("no run-time freeze `{name}` in force (config freezes end with the config)"),
        ))
    }
}

/// Active and upcoming freezes, from the config and run time.
#[utoipa::path(get, path = "/api/v1/freezes", tag = "freezes",
    security(("token" = [])),
    responses(
        (status = 200, body = FreezesAnswer),
        (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn list_freezes(
    _caller: ReadAccess,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let now = chrono::Utc::now();
    let runtime = state.store.freezes().await?;
    let live = state.live.load();
    let mut freezes: Vec<FreezeWindow> = freeze::windows(&live.config.freezes, now)
        .into_iter()
        .map(|(f, w, active)| FreezeWindow {
            name: f.name.clone(),
            source: "config",
            active,
            to_repos: f.scope.to_repo_globs(),
            targets: f.scope.targets.clone(),
            starts_at: crate::domain::rfc3339(w.start.timestamp_millis()),
            ends_at: crate::domain::rfc3339(w.end.timestamp_millis()),
            reason: None,
            started_by: None,
        })
        .collect();
    freezes.extend(runtime.into_iter().map(|f| FreezeWindow {
        active: true,
        source: "runtime",
        starts_at: crate::domain::rfc3339(f.from),
        ends_at: crate::domain::rfc3339(f.until),
        name: f.name,
        to_repos: f.to_repos,
        targets: f.targets,
        reason: Some(f.reason),
        started_by: Some(f.started_by),
    }));
    Ok(HttpResponse::Ok().json(FreezesAnswer { freezes }))
}
