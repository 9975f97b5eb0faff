//! Admin tokens: `Authorization: Bearer <token>`, compared in constant time against
//! every configured token; the caller is known by the token's name, never its value.

use std::future::{Ready, ready};

use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, dev::Payload, web};

use super::{ApiError, AppState};
use crate::config::{AdminToken, Role};

/// An authenticated admin caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    /// The token's groups, which decide whom it may approve for (SPEC §9).
    pub groups: Vec<String>,
}

/// A caller whose role is at least `read` (`OPERATE = false`) or `operate`.
pub struct Access<const OPERATE: bool>(pub Caller);

pub type ReadAccess = Access<false>;
pub type OperateAccess = Access<true>;

fn authenticate(req: &HttpRequest, needed: Role) -> Result<Caller, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| unauthorized("no admin tokens are configured"))?;
    let presented = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized("an admin token is required (Authorization: Bearer …)"))?;
    let live = state.live.load();
    let token = AdminToken::presented(&live.config.admin_tokens, presented.trim())
        .ok_or_else(|| unauthorized("the admin token is not valid"))?;
    if token.role < needed {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("token `{}` lacks the `operate` role", token.name),
        ));
    }
    Ok(Caller {
        name: token.name.clone(),
        groups: token.groups.clone(),
    })
}

impl<const OPERATE: bool> FromRequest for Access<OPERATE> {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let needed = if OPERATE { Role::Operate } else { Role::Read };
        ready(authenticate(req, needed).map(Access))
    }
}
