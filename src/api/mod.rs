//! HTTP routes. Handlers translate between HTTP and the pipeline; they hold no
//! promotion logic of their own.
//!
//! Every route is declared once, in [`endpoints!`]: that one list mounts the routes
//! and is what the tests check the OpenAPI document against, so the document cannot
//! silently miss a route.

mod admin;
mod auth;
mod config;
mod error;
mod freezes;
mod health;
mod hooks;
mod notifications;
mod span;

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::Serialize;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

pub use admin::instant;
pub use error::ApiError;
pub use freezes::{StartFreeze, requested_freeze};
pub use span::RequestSpan;

use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::store::Store;

/// What every handler can reach.
pub struct AppState {
    pub ingest: Ingest,
    pub store: Arc<dyn Store>,
    /// The config in force (sources, rules, tokens, freezes, sinks, targets, the
    /// console's settings): read once per request.
    pub live: Arc<crate::live::Live>,
    pub metrics: Arc<Metrics>,
    /// The chain's last verdict, which the console's Overview shows.
    pub last_verdict: crate::audit::LastVerdict,
}

impl AppState {
    /// Verifies the audit chain and keeps the verdict for the Overview.
    pub async fn verify_chain(&self) -> Result<crate::audit::Verdict, crate::store::StoreError> {
        let verdict = self.store.verify_audit().await?;
        self.last_verdict.record(&verdict);
        Ok(verdict)
    }
}

/// The shape of every error answer: `{"error":{"code","message"}}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable snake_case code.
    code: String,
    /// A human sentence.
    message: String,
}

impl ErrorBody {
    pub fn new(code: &str, message: &str) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: code.to_string(),
                message: message.to_string(),
            },
        }
    }
}

macro_rules! endpoints {
    ($($method:ident $path:literal => $handler:path),* $(,)?) => {
        /// Every route as (method, path), in the OpenAPI document's spelling.
        pub const ENDPOINTS: &[(&str, &str)] = &[$((stringify!($method), $path)),*];

        /// One resource per path, with a route for each of its methods: a path served
        /// by two resources would answer the second one's method with 405.
        fn mount(cfg: &mut web::ServiceConfig) {
            let mut resources: Vec<(&str, actix_web::Resource)> = Vec::new();
            $(
                let route = web::$method().to($handler);
                match resources.iter().position(|(p, _)| *p == $path) {
                    Some(i) => {
                        let (p, r) = resources.remove(i);
                        resources.insert(i, (p, r.route(route)));
                    }
                    None => resources.push(($path, web::resource($path).route(route))),
                }
            )*
            for (_, r) in resources {
                cfg.service(r.default_service(web::to(method_not_allowed)));
            }
        }

        /// The OpenAPI document, generated from the handlers' annotations and types.
        #[derive(OpenApi)]
        #[openapi(
            info(title = "gantry", description = "Signed webhooks in, promotions out."),
            paths($($handler),*),
            modifiers(&TokenAuth)
        )]
        pub struct ApiDoc;
    };
}

endpoints! {
    post "/hooks/{source}" => hooks::receive,
    get "/healthz" => health::healthz,
    get "/readyz" => health::readyz,
    get "/metrics" => health::metrics,
    get "/openapi.json" => health::openapi,
    get "/api/v1/events" => admin::list_events,
    get "/api/v1/events/{id}" => admin::get_event,
    get "/api/v1/jobs" => admin::list_jobs,
    get "/api/v1/jobs/{id}" => admin::get_job,
    post "/api/v1/jobs/{id}/retry" => admin::retry_job,
    post "/api/v1/jobs/{id}/cancel" => admin::cancel_job,
    post "/api/v1/jobs/{id}/approve" => admin::approve_job,
    post "/api/v1/jobs/{id}/reject" => admin::reject_job,
    post "/api/v1/jobs/{id}/override-freeze" => admin::override_freeze,
    get "/api/v1/audit" => admin::list_audit,
    get "/api/v1/audit/verify" => admin::verify_audit,
    get "/api/v1/rules" => admin::list_rules,
    post "/api/v1/simulate" => admin::simulate_event,
    post "/api/v1/freezes" => freezes::start_freeze,
    get "/api/v1/freezes" => freezes::list_freezes,
    delete "/api/v1/freezes/{name}" => freezes::end_freeze,
    get "/api/v1/notifications" => notifications::list_notifications,
    post "/api/v1/notifications/{id}/retry" => notifications::retry_notification,
    get "/api/v1/notifications/sinks" => notifications::list_sinks,
    post "/api/v1/notifications/sinks/{name}/enable" => notifications::enable_sink,
    get "/api/v1/config" => config::current,
    post "/api/v1/config/reload" => config::reload,
}

/// Admin routes take `Authorization: Bearer <token>`.
struct TokenAuth;

impl Modify for TokenAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "token",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
        }
    }
}

/// Mounts every route on an actix `App`, with error answers in the SPEC shape for
/// extractor failures, wrong methods and unknown paths.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::QueryConfig::default()
            .error_handler(|e, _| ApiError::bad_request("invalid_query", e.to_string()).into()),
    )
    .app_data(
        web::PathConfig::default()
            .error_handler(|e, _| ApiError::bad_request("invalid_path", e.to_string()).into()),
    )
    .app_data(web::JsonConfig::default().error_handler(|e, _| {
        use actix_web::error::JsonPayloadError;
        match e {
            JsonPayloadError::ContentType => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be JSON",
            ),
            other => ApiError::bad_request("invalid_body", other.to_string()),
        }
        .into()
    }));
    mount(cfg);
    cfg.default_service(web::to(not_found));
}

async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    ))
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found("not_found", "no such route"))
}
