//! The console (SPEC §11): a web view for operators, served by gantry at `/ui/`,
//! rendered on the server (maud: HTML written in Rust, escaped by default, checked
//! at compile time, so the build stays one `cargo build` and no page can print event
//! text unescaped), with one small script of its own for confirmations and live
//! regions. It adds sessions, not rules: what an action may do is decided where the
//! admin API's is.
//!
//! A request travels: security headers on every answer → `session` finds the viewer
//! (a session cookie, or a trusted SSO proxy's headers) or sends them to sign in →
//! `pages` reads the store and renders.

mod jobs;
mod pages;
mod records;
mod session;

use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::DefaultHeaders;
use actix_web::{HttpResponse, web};
use maud::{DOCTYPE, Markup, html};

pub use session::Viewer;

/// No script but the console's own, no inline script or style, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const CSS: &str = include_str!("assets/app.css");
const JS: &str = include_str!("assets/app.js");

/// Mounts `/ui` (call before the API's routes, whose default answers 404).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/ui", web::get().to(to_overview)).service(
        web::scope("/ui")
            .wrap(
                DefaultHeaders::new()
                    .add((header::CONTENT_SECURITY_POLICY, CSP))
                    .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                    .add((header::REFERRER_POLICY, "same-origin"))
                    .add((header::X_FRAME_OPTIONS, "DENY")),
            )
            .route("/assets/app.css", web::get().to(css))
            .route("/assets/app.js", web::get().to(js))
            .route("/sign-in", web::get().to(session::sign_in_form))
            .route("/sign-in", web::post().to(session::sign_in))
            .route("/sign-out", web::post().to(session::sign_out))
            .route("/", web::get().to(pages::overview))
            .route("/jobs", web::get().to(jobs::list))
            .route("/jobs/{id}", web::get().to(jobs::show))
            .route("/jobs/{id}/{action}", web::post().to(jobs::act))
            .route("/approvals", web::get().to(jobs::approvals))
            .route("/freezes", web::get().to(records::freezes))
            .route("/freezes", web::post().to(records::start))
            .route("/freezes/{name}/end", web::post().to(records::end))
            .route("/audit", web::get().to(records::audit))
            .route("/rules", web::get().to(pages::rules))
            .route("/rules", web::post().to(pages::try_rules)),
    );
}

async fn to_overview() -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/ui/"))
        .finish()
}

async fn css() -> HttpResponse {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> HttpResponse {
    asset("text/javascript; charset=utf-8", JS)
}

fn asset(kind: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, kind))
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(body)
}

/// `path` with the given query pairs that have a value: a filtered page's address
/// for its next page.
fn address(path: &str, pairs: &[(&str, Option<String>)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        if let Some(v) = value {
            query.append_pair(name, v);
        }
    }
    format!("{path}?{}", query.finish())
}

/// A page of the console as an answer: never cached (it shows state and may hold a
/// CSRF token).
fn page(markup: Markup) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .content_type("text/html; charset=utf-8")
        .body(markup.into_string())
}

/// Every page's `<head>`: its title, the stylesheet and the console's one script.
fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · gantry" }
            link rel="stylesheet" href="/ui/assets/app.css";
            script src="/ui/assets/app.js" defer {}
        }
    }
}

/// The frame of every page for a signed-in viewer: navigation, who is signed in,
/// and `Sign out`.
fn layout(viewer: &Viewer, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header {
                    span.brand { "gantry" }
                    nav {
                        a href="/ui/" { "Overview" }
                        a href="/ui/jobs" { "Jobs" }
                        a href="/ui/approvals" { "Approvals" }
                        a href="/ui/audit" { "Audit" }
                        a href="/ui/rules" { "Rules" }
                        a href="/ui/freezes" { "Freezes" }
                    }
                    span.who {
                        span { (viewer.who) " (" (viewer.role_name()) ")" }
                        @if viewer.can_sign_out() {
                            form.inline method="post" action="/ui/sign-out" {
                                input type="hidden" name="csrf" value=(viewer.csrf);
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}
