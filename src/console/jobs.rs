//! Jobs, one job, approvals waiting, and the operator's actions on a job. An action
//! builds the same request the admin API builds (`OperatorAction`, `Ballot`,
//! `OverrideRequest`) and the store, through `domain`, decides it: the console adds
//! sessions, not rules.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use maud::{Markup, html};
use serde::Deserialize;

use super::session::{Viewer, poster};
use super::{address, layout, page};
use crate::api::{ApiError, AppState};
use crate::domain::approval::{Ballot, Verdict};
use crate::domain::freeze::OverrideRequest;
use crate::domain::{Job, JobState, rfc3339};
use crate::store::{
    ApprovalOutcome, AuditFilter, JobFilter, OperatorAction, OperatorOutcome, OverrideOutcome,
};

const PAGE: usize = 50;

#[derive(Debug, Deserialize)]
pub struct JobsQuery {
    state: Option<String>,
    rule: Option<String>,
    image: Option<String>,
    after: Option<String>,
}

fn from_to(job: &Job) -> (String, String) {
    job.action
        .as_ref()
        .map(crate::domain::Action::describe)
        .unwrap_or_else(|| ("-".into(), "-".into()))
}

fn state_cell(state: JobState) -> Markup {
    html! { span class={"state-" (state.as_str())} { (state.as_str()) } }
}

fn jobs_table(jobs: &[Job]) -> Markup {
    html! {
        div.scroll { table {
            thead { tr { th { "Job" } th { "State" } th { "Rule" } th { "From → to" } th { "Updated" } th { "Last error" } } }
            tbody { @for j in jobs {
                @let (from, to) = from_to(j);
                tr {
                    td.mono { a href={"/ui/jobs/" (j.id)} { (j.id) } }
                    td { (state_cell(j.state)) }
                    td { (j.rule) }
                    td.mono { (from) " → " (to) }
                    td { (rfc3339(j.updated_at)) }
                    td { @if let Some(e) = &j.last_error { (e.code.as_str()) ": " (e.message) } }
                }
            } }
        } }
    }
}

/// Jobs, newest first, filtered by state, rule and image, paged; live.
pub async fn list(
    viewer: Viewer,
    query: web::Query<JobsQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let wanted = q.state.as_deref().and_then(JobState::parse);
    let given = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
    let (rule, image) = (given(&q.rule), given(&q.image));
    let jobs = state
        .store
        .jobs(JobFilter {
            state: wanted,
            rule: rule.clone(),
            image: image.clone(),
            before: q.after,
            limit: PAGE,
            ..JobFilter::default()
        })
        .await?;
    let next = jobs.next.map(|n| {
        address(
            "/ui/jobs",
            &[
                ("state", wanted.map(|s| s.as_str().to_string())),
                ("rule", rule.clone()),
                ("image", image.clone()),
                ("after", Some(n)),
            ],
        )
    });
    let body = html! {
        form method="get" action="/ui/jobs" {
            label { "State " select name="state" {
                option value="" { "any" }
                @for s in JobState::ALL {
                    option value=(s.as_str()) selected[wanted == Some(s)] { (s.as_str()) }
                }
            } }
            " "
            label { "Rule " input type="text" name="rule" value=(rule.as_deref().unwrap_or("")); }
            " "
            label { "Image " input type="text" name="image" placeholder="team/api" value=(image.as_deref().unwrap_or("")); }
            " " button type="submit" { "Filter" }
        }
        div data-live { (jobs_table(&jobs.items)) }
        @if let Some(next) = next { p { a href=(next) { "Older →" } } }
    };
    Ok(page(layout(&viewer, "Jobs", body)))
}

/// The jobs awaiting approval, each with `Approve` and `Reject` for an `operate`
/// viewer.
pub async fn approvals(
    viewer: Viewer,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let jobs = state
        .store
        .jobs(JobFilter {
            state: Some(JobState::AwaitingApproval),
            limit: 200,
            ..JobFilter::default()
        })
        .await?;
    let body = html! {
        @if jobs.items.is_empty() { p.muted { "No job awaits approval." } }
        @for j in &jobs.items {
            @let (from, to) = from_to(j);
            div.card {
                p { a.mono href={"/ui/jobs/" (j.id)} { (j.id) } " · rule " (j.rule) }
                p.mono { (from) " → " (to) }
                @if viewer.can_operate() { (verdict_forms(&viewer, j)) }
            }
        }
    };
    Ok(page(layout(&viewer, "Approvals", body)))
}

fn verdict_forms(viewer: &Viewer, job: &Job) -> Markup {
    html! {
        form.inline method="post" action={"/ui/jobs/" (job.id) "/approve"} {
            input type="hidden" name="csrf" value=(viewer.csrf);
            input type="text" name="comment" placeholder="comment";
            button type="submit" { "Approve" }
        }
        " "
        form.inline method="post" action={"/ui/jobs/" (job.id) "/reject"} {
            input type="hidden" name="csrf" value=(viewer.csrf);
            input type="text" name="comment" placeholder="why (required)" required;
            button type="submit" data-confirm="Reject this promotion?" { "Reject" }
        }
    }
}

/// One job: what moved from where to where, which digest, why (its event, rule,
/// gate, approvals), every attempt, and its record; the actions its state allows.
pub async fn show(
    viewer: Viewer,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let Some(job) = state.store.job(&id).await? else {
        return Ok(message(
            &viewer,
            StatusCode::NOT_FOUND,
            "No such job",
            "There is no job with that id.",
        ));
    };
    let event = state.store.event(&job.event_id).await?;
    let records = state
        .store
        .audit(AuditFilter {
            job: Some(job.id.clone()),
            limit: 200,
            ..AuditFilter::default()
        })
        .await?;
    let children = state
        .store
        .jobs(JobFilter {
            parent: Some(job.id.clone()),
            limit: 100,
            ..JobFilter::default()
        })
        .await?
        .items;
    let (from, to) = from_to(&job);
    let payload = event
        .as_ref()
        .and_then(|e| serde_json::to_string_pretty(&e.event.payload).ok())
        .unwrap_or_default();
    let body = html! {
        div data-live {
            p { (state_cell(job.state))
                @if let Some(o) = job.outcome { " · " (o.as_str()) }
                " · rule " (job.rule) " · target " (job.target) }
            p.mono { (from) " → " (to) }
            @if let Some(e) = &job.last_error { p.error { (e.code.as_str()) ": " (e.message) } }
            @if let Some(parent) = &job.parent_job_id {
                p { "Follows " a.mono href={"/ui/jobs/" (parent)} { (parent) } " (chain depth " (job.chain_depth) ")" }
            }
            @if !children.is_empty() {
                p { "Then " @for (i, c) in children.iter().enumerate() {
                    @if i > 0 { ", " }
                    a.mono href={"/ui/jobs/" (c.id)} { (c.id) } " (" (c.rule) ", " (c.state.as_str()) ")"
                } }
            }
            @if viewer.can_operate() { (actions(&viewer, &job)) }
            @if let Some(gate) = &job.gate {
                h2 { "Gate" }
                ul { @for c in &gate.conditions {
                    li { (c.name) ": " @if c.met { "met" @if let Some(e) = &c.event_id { " by event " span.mono { (e) } } } @else { "missing" } }
                } }
                p.muted { "The wait ends " (rfc3339(gate.expires_at)) }
            }
            @if !job.approvals.is_empty() {
                h2 { "Approvals" }
                ul { @for a in &job.approvals {
                    li { (a.verdict.as_str()) " by " (a.by) " at " (rfc3339(a.at))
                        @if let Some(c) = &a.comment { ": " (c) } }
                } }
            }
            h2 { "Attempts" }
            @if job.attempts.is_empty() { p.muted { "none yet" } }
            @else {
                div.scroll { table {
                    thead { tr { th { "#" } th { "Started" } th { "Took" } th { "Upstream" } th { "Error" } } }
                    tbody { @for a in &job.attempts { tr {
                        td { (a.n) } td { (rfc3339(a.started_at)) } td { (a.duration_ms) " ms" }
                        td { @if let Some(s) = a.upstream_status { (s) } }
                        td { @if let Some(e) = &a.error { (e.code.as_str()) ": " (e.message) } }
                    } } }
                } }
            }
            h2 { "Record" }
            div.scroll { table {
                tbody { @for r in &records.items { tr {
                    td { (r.seq) } td { (rfc3339(r.entry.at)) } td { (r.entry.kind.as_str()) }
                    td { (r.entry.actor) } td { (r.entry.message.as_deref().unwrap_or("")) }
                } } }
            } }
        }
        h2 { "Event" }
        @if let Some(e) = &event {
            p { (e.event.kind) " from " (e.event.source) " at " (rfc3339(e.event.received_at)) }
            pre.mono { (payload) }
        }
    };
    Ok(page(layout(&viewer, &format!("Job {}", job.id), body)))
}

/// The buttons the job's state allows.
fn actions(viewer: &Viewer, job: &Job) -> Markup {
    // Which buttons apply is what the store would decide, as for the API's actions.
    let (retry, cancel) = (
        OperatorAction::Retry.allowed_on(job),
        OperatorAction::Cancel.allowed_on(job),
    );
    html! {
        p {
            @if retry { (button(viewer, job, "retry", "Retry", None)) " " }
            @if cancel { (button(viewer, job, "cancel", "Cancel", Some("Cancel this promotion?"))) " " }
        }
        @if job.state == JobState::AwaitingApproval { p { (verdict_forms(viewer, job)) } }
        @if job.state == JobState::Frozen {
            form method="post" action={"/ui/jobs/" (job.id) "/override-freeze"} {
                input type="hidden" name="csrf" value=(viewer.csrf);
                input type="text" name="comment" placeholder="why it must run now" required;
                button type="submit" data-confirm="Run this promotion despite the freeze?" { "Override freeze" }
            }
        }
    }
}

fn button(viewer: &Viewer, job: &Job, action: &str, text: &str, confirm: Option<&str>) -> Markup {
    html! {
        form.inline method="post" action={"/ui/jobs/" (job.id) "/" (action)} {
            input type="hidden" name="csrf" value=(viewer.csrf);
            button type="submit" data-confirm=[confirm] { (text) }
        }
    }
}

/// A page that says why an action did not happen.
fn message(viewer: &Viewer, status: StatusCode, title: &str, text: &str) -> HttpResponse {
    let mut answer = page(layout(viewer, title, html! { p { (text) } }));
    *answer.status_mut() = status;
    answer
}

#[derive(Debug, Deserialize)]
pub struct ActionForm {
    csrf: Option<String>,
    comment: Option<String>,
}

/// `POST /ui/jobs/{id}/{action}`: the action, then back to the job.
pub async fn act(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    form: web::Form<ActionForm>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let viewer = match poster(&req, &state, form.csrf.as_deref(), true).await? {
        Ok(v) => v,
        Err(answer) => return Ok(answer),
    };
    let (id, action) = path.into_inner();
    let form = form.into_inner();
    let comment = form.comment.filter(|c| !c.trim().is_empty());
    let refused: Option<(StatusCode, String)> = match action.as_str() {
        "retry" | "cancel" => {
            let op = if action == "retry" {
                OperatorAction::Retry
            } else {
                OperatorAction::Cancel
            };
            match state.store.operate(&id, op, &viewer.who).await? {
                OperatorOutcome::Done(_) => None,
                OperatorOutcome::NotFound => Some((
                    StatusCode::NOT_FOUND,
                    "There is no job with that id.".into(),
                )),
                OperatorOutcome::Conflict(s) => Some((
                    StatusCode::CONFLICT,
                    format!(
                        "A {} job cannot be {}.",
                        s.as_str(),
                        if action == "retry" {
                            "retried"
                        } else {
                            "cancelled"
                        }
                    ),
                )),
            }
        }
        "approve" | "reject" => {
            let verdict = if action == "approve" {
                Verdict::Approved
            } else {
                Verdict::Rejected
            };
            let ballot = Ballot {
                by: viewer.who.clone(),
                groups: viewer.groups.clone(),
                verdict,
                comment,
                as_group: None,
            };
            match state.store.decide_approval(&id, ballot).await? {
                ApprovalOutcome::Done(_) => None,
                ApprovalOutcome::NotFound => Some((
                    StatusCode::NOT_FOUND,
                    "There is no job with that id.".into(),
                )),
                ApprovalOutcome::Refused(r) => Some((StatusCode::CONFLICT, r.to_string())),
            }
        }
        "override-freeze" => {
            let request = OverrideRequest::new(
                viewer.who.clone(),
                &viewer.groups,
                comment,
                &state.live.load().config.freezes,
            );
            match state.store.override_freeze(&id, request).await? {
                OverrideOutcome::Done(_) => None,
                OverrideOutcome::NotFound => Some((
                    StatusCode::NOT_FOUND,
                    "There is no job with that id.".into(),
                )),
                OverrideOutcome::Refused(r) => Some((StatusCode::CONFLICT, r.to_string())),
            }
        }
        _ => Some((StatusCode::NOT_FOUND, "No such action.".into())),
    };
    Ok(match refused {
        None => HttpResponse::SeeOther()
            .insert_header((header::LOCATION, format!("/ui/jobs/{id}")))
            .finish(),
        Some((status, why)) => message(&viewer, status, "Not done", &why),
    })
}
