//! Freezes (active and upcoming; start and end one) and the audit trail (filtered,
//! with `Verify`). Starting a freeze is checked by the function the API uses.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use maud::html;
use serde::Deserialize;

use super::session::{Viewer, poster};
use super::{address, layout, page};
use crate::api::{ApiError, AppState, StartFreeze, requested_freeze};
use crate::audit::AuditKind;
use crate::domain::{freeze, now_millis, rfc3339};
use crate::store::AuditFilter;

pub async fn freezes(viewer: Viewer, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let live = state.live.load();
    let configured = freeze::windows(&live.config.freezes, chrono::Utc::now());
    let runtime = state.store.freezes().await?;
    let body = html! {
        h2 { "From the config" }
        @if configured.is_empty() { p.muted { "none" } }
        ul { @for (f, w, active) in &configured {
            li { (f.name) ": " @if *active { "in force until " } @else { "next from " (rfc3339(w.start.timestamp_millis())) " until " }
                (rfc3339(w.end.timestamp_millis())) }
        } }
        h2 { "Started at run time" }
        @if runtime.is_empty() { p.muted { "none" } }
        ul { @for f in &runtime {
            li {
                (f.name) " until " (rfc3339(f.until)) ", by " (f.started_by) ": " (f.reason)
                @if viewer.can_operate() {
                    " "
                    form.inline method="post" action={"/ui/freezes/" (f.name) "/end"} {
                        input type="hidden" name="csrf" value=(viewer.csrf);
                        button type="submit" data-confirm="End this freeze now?" { "End freeze" }
                    }
                }
            }
        } }
        @if viewer.can_operate() {
            h2 { "Start a freeze" }
            form method="post" action="/ui/freezes" {
                input type="hidden" name="csrf" value=(viewer.csrf);
                p { label { "Name " input type="text" name="name" required; } }
                p { label { "Destination repos (globs, comma-separated; every repo when empty) " input type="text" name="to_repos"; } }
                p { label { "For " input type="text" name="length" value="2h" required; } }
                p { label { "Reason " input type="text" name="reason" required; } }
                button type="submit" { "Start freeze" }
            }
        }
    };
    Ok(page(layout(&viewer, "Freezes", body)))
}

#[derive(Debug, Deserialize)]
pub struct StartForm {
    csrf: Option<String>,
    name: String,
    to_repos: Option<String>,
    length: String,
    reason: Option<String>,
}

pub async fn start(
    req: HttpRequest,
    form: web::Form<StartForm>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let form = form.into_inner();
    let viewer = match poster(&req, &state, form.csrf.as_deref(), true).await? {
        Ok(v) => v,
        Err(answer) => return Ok(answer),
    };
    let refuse = |status: StatusCode, why: String| {
        let mut answer = page(layout(&viewer, "Not done", html! { p { (why) } }));
        *answer.status_mut() = status;
        answer
    };
    let Ok(length) = humantime::parse_duration(form.length.trim()) else {
        return Ok(refuse(
            StatusCode::BAD_REQUEST,
            format!("`{}` is not a duration (2h, 30m).", form.length),
        ));
    };
    let until = now_millis().saturating_add(i64::try_from(length.as_millis()).unwrap_or(i64::MAX));
    let to_repos: Vec<String> = form
        .to_repos
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let asked = StartFreeze {
        name: form.name.trim().to_string(),
        to_repos: (!to_repos.is_empty()).then_some(to_repos),
        targets: None,
        until: Some(rfc3339(until)),
        reason: form.reason,
    };
    let f = match requested_freeze(asked, viewer.who.clone(), &state) {
        Ok(f) => f,
        Err(e) => return Ok(refuse(e.status, e.message)),
    };
    if !state.store.start_freeze(f).await? {
        return Ok(refuse(
            StatusCode::CONFLICT,
            "A freeze of that name is in force.".into(),
        ));
    }
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/ui/freezes"))
        .finish())
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    csrf: Option<String>,
}

pub async fn end(
    req: HttpRequest,
    name: web::Path<String>,
    form: web::Form<CsrfForm>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let viewer = match poster(&req, &state, form.csrf.as_deref(), true).await? {
        Ok(v) => v,
        Err(answer) => return Ok(answer),
    };
    state.store.end_freeze(&name, &viewer.who).await?;
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/ui/freezes"))
        .finish())
}

#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    image: Option<String>,
    rule: Option<String>,
    kind: Option<String>,
    since: Option<String>,
    until: Option<String>,
    after: Option<i64>,
    verify: Option<String>,
}

const AUDIT_PAGE: usize = 200;

/// The trail, oldest records first and paged forward, filtered by image, rule, kind
/// and time (as the API reads `since` and `until`: RFC 3339 or `24h` ago);
/// `Verify` re-computes the hash chain.
pub async fn audit(
    viewer: Viewer,
    query: web::Query<AuditQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
    let (image, rule) = (nonempty(&q.image), nonempty(&q.rule));
    let (since, until) = (nonempty(&q.since), nonempty(&q.until));
    let kind = nonempty(&q.kind).and_then(|k| AuditKind::parse(&k));
    let when = |name: &str, v: &Option<String>| {
        v.as_deref()
            .map(|v| crate::api::instant(name, v.trim()))
            .transpose()
    };
    let (from, to) = match (when("since", &since), when("until", &until)) {
        (Ok(from), Ok(to)) => (from, to),
        (Err(e), _) | (_, Err(e)) => {
            let mut answer = page(layout(&viewer, "Audit", html! { p.error { (e.message) } }));
            *answer.status_mut() = StatusCode::BAD_REQUEST;
            return Ok(answer);
        }
    };
    let records = state
        .store
        .audit(AuditFilter {
            image: image.clone(),
            rule: rule.clone(),
            kind,
            since: from,
            until: to,
            after: q.after,
            limit: AUDIT_PAGE,
            ..AuditFilter::default()
        })
        .await?;
    let newer = records.next.as_ref().map(|after| {
        address(
            "/ui/audit",
            &[
                ("image", image.clone()),
                ("rule", rule.clone()),
                ("kind", kind.map(|k| k.as_str().to_string())),
                ("since", since.clone()),
                ("until", until.clone()),
                ("after", Some(after.clone())),
            ],
        )
    });
    let verdict = match q.verify {
        Some(_) => Some(state.verify_chain().await?),
        None => None,
    };
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let body = html! {
        form method="get" action="/ui/audit" {
            label { "Image " input type="text" name="image" value=(text(&image)); } " "
            label { "Rule " input type="text" name="rule" value=(text(&rule)); } " "
            label { "Kind " select name="kind" {
                option value="" { "any" }
                @for k in AuditKind::ALL {
                    option value=(k.as_str()) selected[kind == Some(k)] { (k.as_str()) }
                }
            } } " "
            label { "Since " input type="text" name="since" placeholder="24h or 2026-11-30T08:00:00Z" value=(text(&since)); } " "
            label { "Until " input type="text" name="until" placeholder="RFC 3339" value=(text(&until)); } " "
            button type="submit" { "Filter" }
        }
        form method="get" action="/ui/audit" {
            input type="hidden" name="verify" value="1";
            button type="submit" { "Verify" }
        }
        @if let Some(v) = &verdict {
            @if v.ok { p.state-succeeded #verdict { "The chain verifies: " (v.records) " records." } }
            @else { p.error #verdict { "The chain is broken at record " (v.first_broken.unwrap_or_default()) "." } }
        }
        div.scroll { table {
            thead { tr { th { "#" } th { "At" } th { "Kind" } th { "Actor" } th { "Rule" } th { "What / why" } } }
            tbody { @for r in &records.items { tr {
                td { (r.seq) } td { (rfc3339(r.entry.at)) } td { (r.entry.kind.as_str()) }
                td { (r.entry.actor) } td { (r.entry.rule.as_deref().unwrap_or("")) }
                td {
                    @if let Some(j) = &r.entry.job_id { a.mono href={"/ui/jobs/" (j)} { (j) } " " }
                    (r.entry.message.as_deref().unwrap_or(""))
                }
            } } }
        } }
        @if let Some(newer) = newer { p { a href=(newer) { "Newer →" } } }
    };
    Ok(page(layout(&viewer, "Audit", body)))
}
