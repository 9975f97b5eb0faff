//! The console's pages: each reads the store (the same reads the admin API makes)
//! and renders; every value from events and upstreams is escaped by maud.

use actix_web::{HttpRequest, HttpResponse, web};
use maud::html;

use super::session::viewer;
use super::{layout, page};
use crate::api::{ApiError, AppState};
use crate::audit::AuditKind;
use crate::domain::{JobState, now_millis, rfc3339};
use crate::store::AuditFilter;

/// Overview: jobs by state, the queue and its oldest job, approvals waiting, open
/// circuits and active freezes. Its figures refresh without a reload.
pub async fn overview(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let viewer = match viewer(&req, &state).await? {
        Ok(v) => v,
        Err(answer) => return Ok(answer),
    };
    let stats = state.store.queue_stats().await?;
    let count = |s: JobState| stats.by_state.get(&s).copied().unwrap_or(0);
    let waiting = count(JobState::Queued) + count(JobState::Retrying);
    let oldest = stats
        .oldest_waiting_since
        .map(|t| format!("{} s", (now_millis() - t).max(0) / 1000));
    let open: Vec<String> = state
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

/// The rules as loaded, each as the admin API lists it.
pub async fn rules(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let viewer = match viewer(&req, &state).await? {
        Ok(v) => v,
        Err(answer) => return Ok(answer),
    };
    let body = html! {
        @for r in state.ingest.rules.rules() {
            div.card {
                h2 { (r.name) }
                pre.mono { (serde_json::to_string_pretty(&r.spec).unwrap_or_default()) }
            }
        }
    };
    Ok(page(layout(&viewer, "Rules", body)))
}
