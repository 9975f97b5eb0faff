//! The config in force over HTTP (SPEC §12): which generation, its hash and load
//! time (`read`), and a reload (`operate`) that validates the file and environment as
//! `gantry check` does and swaps them in, or changes nothing and lists every problem.

use actix_web::{HttpResponse, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::{OperateAccess, ReadAccess};
use super::{ApiError, AppState, ErrorBody};
use crate::domain::rfc3339;
use crate::live::Reloaded;

/// The config in force; never a secret.
#[derive(Serialize, ToSchema)]
pub struct ConfigState {
    /// 1 at start, one more per successful reload.
    generation: u64,
    /// `sha256:` of the effective config, secrets left out.
    hash: String,
    /// When it was loaded (RFC 3339).
    loaded_at: String,
    /// Settings changed by the last reload that keep their running values until a
    /// restart (`server.listen`, `store.url`, worker settings, …).
    ignored_until_restart: Vec<&'static str>,
}

/// Which config is in force.
#[utoipa::path(get, path = "/api/v1/config", tag = "config",
    security(("token" = [])),
    responses((status = 200, body = ConfigState), (status = 401, body = ErrorBody)))]
pub async fn current(_caller: ReadAccess, state: web::Data<AppState>) -> HttpResponse {
    let live = state.live.load();
    HttpResponse::Ok().json(ConfigState {
        generation: live.number,
        hash: live.hash.clone(),
        loaded_at: rfc3339(live.loaded_at),
        ignored_until_restart: live.ignored.clone(),
    })
}

/// Re-reads the config file and environment; swaps them in when valid (400
/// `invalid_config` listing every problem otherwise, and nothing changes).
#[utoipa::path(post, path = "/api/v1/config/reload", tag = "config",
    security(("token" = [])),
    responses(
        (status = 200, body = Reloaded),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn reload(
    caller: OperateAccess,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    match state.live.reload(&caller.0.name).await {
        Ok(reloaded) => Ok(HttpResponse::Ok().json(reloaded)),
        Err(problems) => {
            let listed: Vec<String> = problems.iter().map(ToString::to_string).collect();
            Err(ApiError::bad_request(
                "invalid_config",
                format!(
                    "the config is not valid; nothing changed: {}",
                    listed.join("; ")
                ),
            ))
        }
    }
}
