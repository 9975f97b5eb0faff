//! HTTP routes. Handlers translate between HTTP and the pipeline; they hold no
//! promotion logic of their own.

mod admin;
mod auth;
mod error;
mod health;
mod hooks;

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};

pub use error::ApiError;

use crate::config::AdminToken;
use crate::ingest::Ingest;
use crate::store::Store;

/// What every handler can reach.
pub struct AppState {
    pub ingest: Ingest,
    pub store: Arc<dyn Store>,
    pub admin_tokens: Vec<AdminToken>,
    pub max_body_bytes: usize,
}

/// Mounts every route on an actix `App`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::QueryConfig::default()
            .error_handler(|e, _| ApiError::bad_request("invalid_query", e.to_string()).into()),
    )
    .app_data(
        web::PathConfig::default()
            .error_handler(|e, _| ApiError::bad_request("invalid_path", e.to_string()).into()),
    )
    .service(
        web::resource("/hooks/{source}")
            .route(web::post().to(hooks::receive))
            .default_service(web::to(method_not_allowed)),
    )
    .route("/healthz", web::get().to(health::healthz))
    .route("/readyz", web::get().to(health::readyz))
    .service(
        web::scope("/api/v1")
            .route("/jobs", web::get().to(admin::list_jobs))
            .route("/jobs/{id}", web::get().to(admin::get_job))
            .route("/jobs/{id}/retry", web::post().to(admin::retry_job))
            .route("/jobs/{id}/cancel", web::post().to(admin::cancel_job))
            .route("/audit", web::get().to(admin::list_audit))
            .route("/audit/verify", web::get().to(admin::verify_audit)),
    )
    .default_service(web::to(not_found));
}

async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "webhooks are delivered with POST",
    ))
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found("not_found", "no such route"))
}
