//! The console's pages: each reads the store (the same reads the admin API makes)
//! and renders; every value from events and upstreams is escaped by maud.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use maud::{Markup, html};
use serde::Deserialize;

use super::session::{Viewer, poster};
use super::{layout, page};
use crate::api::{ApiError, AppState};
use crate::audit::{AuditKind, Verdict};
use crate::domain::{JobState, Millis, now_millis, rfc3339};
use crate::ingest::{IngestError, Simulation, simulate};
use crate::store::AuditFilter;

/// How old a verdict on the audit chain the Overview shows before verifying again:
/// the page refreshes every few seconds, and a verification reads the whole trail.
const CHAIN_STATUS_MAX_AGE_MS: Millis = 5 * 60 * 1000;

/// Overview: jobs by state, the queue and its oldest job, approvals waiting, open
/// circuits and active freezes. Its figures refresh without a reload.
pub async fn overview(
    viewer: Viewer,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let stats = state.store.queue_stats().await?;
    let count = |s: JobState| stats.by_state.get(&s).copied().unwrap_or(0);
    let waiting = count(JobState::Queued) + count(JobState::Retrying);
    let oldest = stats
        .oldest_waiting_since
        .map(|t| format!("{} s", (now_millis() - t).max(0) / 1000));
    let open: Vec<String> = state
        .live
        .load()
        .targets
        .iter()
        .flat_map(|t| t.iter())
        .filter(|(_, h)| h.breaker.is_open())
        .map(|(name, _)| name.to_string())
        .collect();
    let freezes = state.store.freezes().await?;
    let day_ago = now_millis() - 24 * 3600 * 1000;
    let failures = state
        .store
        .audit(AuditFilter {
            kind: Some(AuditKind::JobFailed),
            since: Some(day_ago),
            limit: 1000,
            ..AuditFilter::default()
        })
        .await?
        .items
        .len();
    let chain = match state.last_verdict.fresh(CHAIN_STATUS_MAX_AGE_MS) {
        Some(last) => last,
        None => (now_millis(), state.verify_chain().await?),
    };
    let body = html! {
        div data-live {
            div.cards {
                @for s in JobState::ALL {
                    div.card {
                        div class={"n state-" (s.as_str())} { (count(s)) }
                        a href={"/ui/jobs?state=" (s.as_str())} { (s.as_str()) }
                    }
                }
            }
            h2 { "Queue" }
            p { (waiting) " waiting to run"
                @if let Some(age) = &oldest { ", the oldest for " (age) } }
            h2 { "Failures in the last 24 h" }
            p { a href="/ui/audit?kind=job.failed" {
                (failures) @if failures == 1000 { "+" } " failed promotions" } }
            h2 { "Approvals waiting" }
            p { a href="/ui/approvals" { (count(JobState::AwaitingApproval)) " awaiting approval" } }
            h2 { "Open circuits" }
            @if open.is_empty() { p.muted { "none" } }
            @else { ul { @for name in &open { li { (name) } } } }
            h2 { "Audit chain" }
            (chain_status(&chain))
            h2 { "Run-time freezes in force" }
            @if freezes.is_empty() { p.muted { "none" } }
            @else {
                ul { @for f in &freezes {
                    li { (f.name) " until " (rfc3339(f.until)) ": " (f.reason) }
                } }
            }
        }
    };
    Ok(page(layout(&viewer, "Overview", body)))
}

fn chain_status((at, verdict): &(Millis, Verdict)) -> Markup {
    html! {
        p #chain {
            @if verdict.ok { span.state-succeeded { "verifies" } ": " (verdict.records) " records" }
            @else {
                span.state-failed { "broken" } " at record " (verdict.first_broken.unwrap_or_default())
                @if let Some(r) = &verdict.reason { ": " (r) }
            }
            " (checked " (rfc3339(*at)) ") · " a href="/ui/audit?verify=1" { "verify now" }
        }
    }
}

/// The rules as loaded, each as the admin API lists it, and a form that tries a
/// body against them.
pub async fn rules(viewer: Viewer, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(rules_page(&viewer, &state, &SimulateForm::default(), None))
}

/// The simulate form as posted: a source, the request headers its format reads
/// (`Name: value` lines) and the body.
#[derive(Debug, Default, Deserialize)]
pub struct SimulateForm {
    csrf: Option<String>,
    source: String,
    headers: String,
    body: String,
}

/// `POST /ui/rules`: which promotions the body would queue, nothing verified,
/// stored or sent (the dry run `POST /api/v1/simulate` makes). Any session may.
pub async fn try_rules(
    req: HttpRequest,
    form: web::Form<SimulateForm>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let viewer = match poster(&req, &state, form.csrf.as_deref(), false).await? {
        Ok(v) => v,
        Err(answer) => return Ok(answer),
    };
    let headers: Vec<(String, String)> = form
        .headers
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect();
    let live = state.live.load();
    let outcome = simulate(
        &live.sources,
        &live.rules,
        &live.config.freezes,
        &form.source,
        form.body.as_bytes(),
        &headers,
    );
    let mut answer = rules_page(&viewer, &state, &form, Some(&outcome));
    if outcome.is_err() {
        *answer.status_mut() = StatusCode::BAD_REQUEST;
    }
    Ok(answer)
}

fn rules_page(
    viewer: &Viewer,
    state: &AppState,
    form: &SimulateForm,
    outcome: Option<&Result<Vec<Simulation>, IngestError>>,
) -> HttpResponse {
    let live = state.live.load();
    let body = html! {
        h2 { "Simulate" }
        form method="post" action="/ui/rules" {
            input type="hidden" name="csrf" value=(viewer.csrf);
            p { label { "Source " select name="source" {
                @for name in live.sources.names() {
                    option value=(name) selected[name == form.source] { (name) }
                }
            } } }
            p { label { "Headers (one `Name: value` per line) " br;
                textarea name="headers" rows="2" cols="60" { (form.headers) } } }
            p { label { "Body " br; textarea name="body" rows="8" cols="60" required { (form.body) } } }
            button type="submit" { "Simulate" }
        }
        @match outcome {
            Some(Ok(events)) => (simulation(events)),
            Some(Err(e)) => p.error #simulation { (e) },
            None => {},
        }
        h2 { "As loaded" }
        @for r in live.rules.rules() {
            div.card {
                h2 { (r.name) }
                pre.mono { (serde_json::to_string_pretty(&r.spec).unwrap_or_default()) }
            }
        }
    };
    page(layout(viewer, "Rules", body))
}

/// What a simulated body would do: per event, the promotions it would queue and the
/// gate conditions it would meet.
fn simulation(events: &[Simulation]) -> Markup {
    html! {
        div #simulation {
            @if events.is_empty() { p.muted { "The body makes no event." } }
            @for s in events {
                p { "Event " b { (s.event.kind) } " from " (s.event.source) }
                @if s.promotions.is_empty() && s.evidence.is_empty() { p.muted { "No rule matches it." } }
                ul {
                    @for p in &s.promotions {
                        li {
                            "rule " (p.rule) " → target " (p.target) ": "
                            @if let Some(a) = &p.action {
                                @let (from, to) = a.describe();
                                span.mono { (from) " → " (to) }
                            }
                            @if let Some(e) = &p.error { span.error { (e.code.as_str()) ": " (e.message) } }
                            @if let Some(g) = &p.gate { "; waits for " (g.conditions.len()) " gate condition(s)" }
                            @if p.approval.is_some() { "; awaits approval" }
                            @if let Some(until) = &p.soak_until { "; soaks until " (until) }
                            @if !p.freezes.is_empty() { "; freezes covering it: " (p.freezes.join(", ")) }
                        }
                    }
                    @for e in &s.evidence {
                        li { "meets condition " (e.condition) " of rule " (e.rule)
                            @if e.block { " (blocks)" } " for " span.mono { (e.key) } }
                    }
                }
            }
        }
    }
}
