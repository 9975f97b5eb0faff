//! Notifications over HTTP (SPEC §10): what was sent where and what became of it
//! (`read`); retrying a failed notification and enabling a sink a 410 disabled
//! (`operate`). A sink's URL is never shown.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{OperateAccess, ReadAccess};
use super::{ApiError, AppState, ErrorBody};
use crate::config::NotificationFormat;
use crate::notify::{Notification, NotificationState};
use crate::store::{NotificationFilter, NotificationRetry};

/// A page of notifications, newest first.
#[derive(Serialize, ToSchema)]
pub struct NotificationsPage {
    notifications: Vec<Notification>,
    /// Pass as `after` for the next page; null on the last.
    next: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct NotificationsQuery {
    /// `pending`, `delivered`, `failed` or `dropped`.
    state: Option<String>,
    /// A sink's name.
    sink: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// The `next` cursor of the previous page.
    after: Option<String>,
}

/// One configured sink and whether a 410 disabled it.
#[derive(Serialize, ToSchema)]
pub struct SinkState {
    name: String,
    format: NotificationFormat,
    disabled: bool,
    #[schema(value_type = Option<String>, format = DateTime)]
    disabled_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SinksAnswer {
    sinks: Vec<SinkState>,
}

/// Notifications, newest first.
#[utoipa::path(get, path = "/api/v1/notifications", tag = "notifications",
    params(NotificationsQuery), security(("token" = [])),
    responses(
        (status = 200, body = NotificationsPage),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn list_notifications(
    _caller: ReadAccess,
    query: web::Query<NotificationsQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let wanted = match q.state.as_deref() {
        None => None,
        Some(s) => Some(NotificationState::parse(s).ok_or_else(|| {
            ApiError::bad_request("invalid_query", format!("unknown notification state `{s}`"))
        })?),
    };
    let page = state
        .store
        .notifications(NotificationFilter {
            state: wanted,
            sink: q.sink,
            before: q.after,
            limit: super::admin::limit(q.limit),
        })
        .await?;
    Ok(HttpResponse::Ok().json(NotificationsPage {
        notifications: page.items,
        next: page.next,
    }))
}

/// Sends a failed notification again, due now, its retry schedule from the start
/// (same id, so a receiver that had it dedupes).
#[utoipa::path(post, path = "/api/v1/notifications/{id}/retry", tag = "notifications",
    params(("id" = String, Path, description = "Notification id")),
    security(("token" = [])),
    responses(
        (status = 200, body = Notification),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn retry_notification(
    caller: OperateAccess,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    match state.store.retry_notification(&id, &caller.0.name).await? {
        NotificationRetry::Done(n) => Ok(HttpResponse::Ok().json(n)),
        NotificationRetry::NotFound => Err(ApiError::not_found(
            "notification_not_found",
            format!("no such id `{id}`"),
        )),
        NotificationRetry::Conflict(current) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "invalid_state",
            format!(
                "a {} notification cannot be retried; only a failed one",
                current.as_str()
            ),
        )),
    }
}

/// The configured sinks and which a 410 Gone disabled.
#[utoipa::path(get, path = "/api/v1/notifications/sinks", tag = "notifications",
    security(("token" = [])),
    responses(
        (status = 200, body = SinksAnswer),
        (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn list_sinks(
    _caller: ReadAccess,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let disabled = state.store.disabled_sinks().await?;
    let sinks = state
        .live
        .load()
        .config
        .notifications
        .iter()
        .map(|sink| {
            let off = disabled.iter().find(|d| d.name == sink.name);
            SinkState {
                name: sink.name.clone(),
                format: sink.format,
                disabled: off.is_some(),
                disabled_at: off.map(|d| crate::domain::rfc3339(d.since)),
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(SinksAnswer { sinks }))
}

/// Enables a sink a 410 Gone disabled: its pending notifications go out again.
#[utoipa::path(post, path = "/api/v1/notifications/sinks/{name}/enable", tag = "notifications",
    params(("name" = String, Path, description = "Sink name")),
    security(("token" = [])),
    responses(
        (status = 200, body = SinkState),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn enable_sink(
    caller: OperateAccess,
    name: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let live = state.live.load();
    let Some(sink) = live
        .config
        .notifications
        .iter()
        .find(|n| n.name == name.as_str())
    else {
        return Err(ApiError::not_found(
            "sink_not_found",
            format!("no sink `{name}` is configured"),
        ));
    };
    state.store.enable_sink(&sink.name, &caller.0.name).await?;
    Ok(HttpResponse::Ok().json(SinkState {
        name: sink.name.clone(),
        format: sink.format,
        disabled: false,
        disabled_at: None,
    }))
}
