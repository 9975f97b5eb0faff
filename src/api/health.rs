//! Liveness, readiness, metrics and the API's own description.

use actix_web::{HttpResponse, web};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use super::{ApiDoc, AppState, ErrorBody};

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `ready`.
    status: String,
}

/// 200 while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, body = Health)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok".into(),
    })
}

/// 200 when the store answers (the config was validated before the server started).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    match state.store.ping().await {
        Ok(()) => HttpResponse::Ok().json(Health {
            status: "ready".into(),
        }),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            HttpResponse::ServiceUnavailable().json(ErrorBody::new(
                "store_unavailable",
                "the store does not answer",
            ))
        }
    }
}

/// Prometheus metrics in the OpenMetrics text format. Bind it privately.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, body = String,
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8")))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let stats = state.store.queue_stats().await;
    if let Err(e) = &stats {
        tracing::warn!(error = %e, "cannot read the queue for metrics");
    }
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(
            state
                .metrics
                .render(stats, state.live.load().targets.as_ref()),
        )
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, body = Object, description = "OpenAPI 3.1 document")))]
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
