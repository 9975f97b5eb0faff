//! Who is looking: a session started by signing in with an admin token (its cookie
//! `HttpOnly`, `SameSite=Lax` so a link from a chat message keeps it, `Secure`
//! under an https `public_url`), or a person a trusted SSO proxy names. Sessions
//! live in the store: every replica knows them, and signing out ends one everywhere.

use std::time::Duration;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::api::{ApiError, AppState};
use crate::config::{AdminToken, ConsoleConfig, Role};
use crate::domain::now_millis;
use crate::store::ConsoleSession;

const COOKIE: &str = "gantry_session";
/// A failed sign-in answers no sooner than this: guessing tokens is slow.
const FAILED_SIGN_IN_DELAY: Duration = Duration::from_secs(1);

/// The person or token looking at the console.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub who: String,
    pub role: Role,
    pub groups: Vec<String>,
    /// What the viewer's state-changing forms carry.
    pub csrf: String,
    /// The session's id hash; none for a person the proxy names on each request.
    session: Option<String>,
}

impl Viewer {
    pub fn role_name(&self) -> &'static str {
        match self.role {
            Role::Read => "read",
            Role::Operate => "operate",
        }
    }

    pub fn can_operate(&self) -> bool {
        self.role >= Role::Operate
    }

    pub fn can_sign_out(&self) -> bool {
        self.session.is_some()
    }
}

/// A fresh random value (256 bits), URL-safe.
fn random() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn hash(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

/// A read page's viewer, as a handler argument: when there is none, the request is
/// answered with what [`viewer`] says instead (the sign-in page, or the proxy's first
/// redirect with its cookie), unchanged.
impl actix_web::FromRequest for Viewer {
    type Error = actix_web::Error;
    type Future = futures_util::future::LocalBoxFuture<'static, Result<Viewer, actix_web::Error>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
                tracing::error!("the console is mounted without the application state");
                return Err(ApiError::new(
                    actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
                .into());
            };
            match viewer(&req, &state).await? {
                Ok(v) => Ok(v),
                Err(answer) => {
                    Err(actix_web::error::InternalError::from_response("no viewer", answer).into())
                }
            }
        })
    }
}

/// The viewer of `req`: its session's, or the person a trusted SSO proxy names.
/// Otherwise the answer to give instead: the sign-in page, or, the first time the
/// proxy names someone, the same address again with the session cookie that now
/// holds their CSRF token. `Err` only when the store cannot answer.
pub async fn viewer(
    req: &HttpRequest,
    state: &AppState,
) -> Result<Result<Viewer, HttpResponse>, ApiError> {
    let session = match req.cookie(COOKIE) {
        Some(c) => {
            let id_hash = hash(c.value());
            state
                .store
                .session(&id_hash)
                .await?
                .and_then(|s| current(s, id_hash, state))
        }
        None => None,
    };
    let live = state.live.load();
    let Some((person, groups)) = proxied(req, &live.config.console) else {
        return Ok(session.ok_or_else(|| to_sign_in(req)));
    };
    if let Some(v) = session.filter(|v| v.who == person) {
        return Ok(Ok(v));
    }
    let Some(role) = live.config.console.role_of(&groups) else {
        return Ok(Err(HttpResponse::Forbidden()
            .content_type("text/plain; charset=utf-8")
            .body("None of your groups has a role in gantry's console.")));
    };
    let cookie = start(state, person, true, role, groups).await?;
    let here = req
        .uri()
        .path_and_query()
        .map_or("/ui/", |p| p.as_str())
        .to_string();
    Ok(Err(HttpResponse::SeeOther()
        .cookie(cookie)
        .insert_header((header::LOCATION, safe_next(Some(&here))))
        .finish()))
}

/// A stored session as it stands under the config now: a token's session ends when
/// its token leaves the config, and takes the token's role and groups as they are
/// now; a person's keeps what the proxy said at sign-in.
fn current(s: ConsoleSession, id_hash: String, state: &AppState) -> Option<Viewer> {
    let (role, groups) = if s.person {
        (s.role, s.groups)
    } else {
        let live = state.live.load();
        let token = live.config.admin_tokens.iter().find(|t| t.name == s.who)?;
        (token.role, token.groups.clone())
    };
    Some(Viewer {
        who: s.who,
        role,
        groups,
        csrf: s.csrf,
        session: Some(id_hash),
    })
}

/// The person and groups the SSO proxy names, when the request comes from one of
/// its trusted addresses (the connection's own, never a forwarded one); from
/// anywhere else the headers are not believed.
fn proxied(req: &HttpRequest, console: &ConsoleConfig) -> Option<(String, Vec<String>)> {
    let proxy = console.proxy.as_ref()?;
    let peer = req.peer_addr()?.ip();
    if !proxy.trusts(peer) {
        return None;
    }
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let person = header(&proxy.user_header)?.trim();
    if person.is_empty() {
        return None;
    }
    let groups = proxy
        .groups_header
        .as_deref()
        .and_then(header)
        .map(|g| {
            g.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    Some((person.to_string(), groups))
}

/// Starts a session for `who`; the cookie that carries it.
async fn start(
    state: &AppState,
    who: String,
    person: bool,
    role: Role,
    groups: Vec<String>,
) -> Result<Cookie<'static>, ApiError> {
    let id = random();
    let live = state.live.load();
    let ttl = live.config.console.session_ttl;
    state
        .store
        .start_session(ConsoleSession {
            id_hash: hash(&id),
            who,
            person,
            role,
            groups,
            csrf: random(),
            expires_at: now_millis()
                .saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)),
        })
        .await?;
    Ok(Cookie::build(COOKIE, id)
        .path("/ui")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(live.config.console.secure_cookies)
        .max_age(actix_web::cookie::time::Duration::seconds(
            i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
        ))
        .finish())
}

/// Where a visitor without a session goes: the sign-in page, and back to `req`'s
/// address afterwards.
pub fn to_sign_in(req: &HttpRequest) -> HttpResponse {
    let next = req
        .uri()
        .path_and_query()
        .map_or("/ui/", |p| p.as_str())
        .to_string();
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("next", &next)
        .finish();
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, format!("/ui/sign-in?{query}")))
        .finish()
}

/// Only an address of the console itself is a place to go back to: never another
/// site (`//evil.example`, `https://…`).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/ui/") && !n.starts_with("//") && !n.contains('\\') => {
            n.to_string()
        }
        _ => "/ui/".into(),
    }
}

#[derive(Debug, Deserialize)]
pub struct Next {
    next: Option<String>,
}

fn sign_in_page(next: &str, failed: bool) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (super::head("Sign in"))
            body {
                main {
                    form.signin method="post" action="/ui/sign-in" {
                        h1 { "gantry" }
                        @if failed { p.error { "That token is not valid." } }
                        label for="token" { "Token" }
                        input #token type="password" name="token" autocomplete="current-password" required;
                        input type="hidden" name="next" value=(next);
                        button type="submit" { "Sign in" }
                    }
                }
            }
        }
    }
}

pub async fn sign_in_form(query: web::Query<Next>) -> HttpResponse {
    super::page(sign_in_page(&safe_next(query.next.as_deref()), false))
}

#[derive(Debug, Deserialize)]
pub struct SignIn {
    token: String,
    next: Option<String>,
}

pub async fn sign_in(
    form: web::Form<SignIn>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let next = safe_next(form.next.as_deref());
    let live = state.live.load();
    let Some(token) = AdminToken::presented(&live.config.admin_tokens, form.token.trim()) else {
        state.metrics.sign_in("failed");
        tokio::time::sleep(FAILED_SIGN_IN_DELAY).await;
        let mut answer = super::page(sign_in_page(&next, true));
        *answer.status_mut() = actix_web::http::StatusCode::UNAUTHORIZED;
        return Ok(answer);
    };
    state.metrics.sign_in("ok");
    let cookie = start(
        &state,
        token.name.clone(),
        false,
        token.role,
        token.groups.clone(),
    )
    .await?;
    Ok(HttpResponse::SeeOther()
        .cookie(cookie)
        .insert_header((header::LOCATION, next))
        .finish())
}

#[derive(Debug, Deserialize)]
pub struct Csrf {
    csrf: Option<String>,
}

/// Whether a state-changing form carries its session's CSRF token.
fn csrf_ok(viewer: &Viewer, presented: Option<&str>) -> bool {
    presented.is_some_and(|p| crate::signing::same_secret(viewer.csrf.as_bytes(), p.as_bytes()))
}

/// 403 for a state-changing request without its session's CSRF token.
fn csrf_refused() -> HttpResponse {
    HttpResponse::Forbidden()
        .content_type("text/plain; charset=utf-8")
        .body("This form has expired or did not come from gantry's console; reload the page.")
}

/// Who posts a state-changing form: the viewer, carrying their session's CSRF
/// token and, when `operate`, holding that role. Otherwise the answer to give
/// instead (403 for a missing or wrong token, or a `read` session acting).
pub async fn poster(
    req: &HttpRequest,
    state: &AppState,
    csrf: Option<&str>,
    operate: bool,
) -> Result<Result<Viewer, HttpResponse>, ApiError> {
    let viewer = match viewer(req, state).await? {
        Ok(v) => v,
        Err(answer) => return Ok(Err(answer)),
    };
    if !csrf_ok(&viewer, csrf) {
        return Ok(Err(csrf_refused()));
    }
    if operate && !viewer.can_operate() {
        return Ok(Err(HttpResponse::Forbidden()
            .content_type("text/plain; charset=utf-8")
            .body("This session can look, not act.")));
    }
    Ok(Ok(viewer))
}

pub async fn sign_out(
    req: HttpRequest,
    form: web::Form<Csrf>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let viewer = match poster(&req, &state, form.csrf.as_deref(), false).await? {
        Ok(v) => v,
        Err(answer) => return Ok(answer),
    };
    if let Some(id_hash) = &viewer.session {
        state.store.end_session(id_hash).await?;
    }
    let mut gone = Cookie::build(COOKIE, "").path("/ui").finish();
    gone.make_removal();
    Ok(HttpResponse::SeeOther()
        .cookie(gone)
        .insert_header((header::LOCATION, "/ui/sign-in"))
        .finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_consoles_own_addresses_are_gone_back_to() {
        assert_eq!(
            safe_next(Some("/ui/jobs?state=failed")),
            "/ui/jobs?state=failed"
        );
        for hostile in [
            "//evil.example/ui/",
            "https://evil.example/ui/",
            "/api/v1/jobs",
            "/ui\\..\\x",
            "",
        ] {
            assert_eq!(safe_next(Some(hostile)), "/ui/", "{hostile}");
        }
        assert_eq!(safe_next(None), "/ui/");
    }
}
