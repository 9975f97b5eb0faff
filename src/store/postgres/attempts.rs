//! How workers' reports of their attempts are written on PostgreSQL: one statement
//! for any number of them, each fenced by its lease, so the reports a group commit
//! gathers cost what one costs (SPEC §14).

use std::collections::HashSet;

use deadpool_postgres::Transaction;

use super::{Columns, query};
use crate::domain::{Millis, now_millis};
use crate::store::rows::{Landing, attempt_values};
use crate::store::{AttemptReport, StoreError};

/// Moves each reported job to where its attempt landed and keeps the attempt, only
/// where the reporting worker still holds the lease (the job running under it, on
/// that attempt): whether each did. Nothing is written for one that lost its lease.
pub(super) async fn record(
    tx: &Transaction<'_>,
    reports: &[&AttemptReport],
) -> Result<Vec<bool>, StoreError> {
    if reports.is_empty() {
        return Ok(Vec::new());
    }
    let now = now_millis();
    let mut c = Reports::default();
    for r in reports {
        let to = Landing::of(r, now)?;
        let (duration_ms, upstream_status, code, message) = attempt_values(&r.attempt);
        c.id.push(&r.job_id);
        c.worker.push(&r.worker);
        c.n.push(i64::from(r.attempt.n));
        c.state.push(to.state.as_str());
        c.outcome.push(to.outcome);
        c.next_attempt_at.push(to.next_attempt_at);
        c.error_code.push(to.error_code);
        c.error_message.push(to.error_message);
        c.started_at.push(r.attempt.started_at);
        c.duration_ms.push(duration_ms);
        c.upstream_status.push(upstream_status);
        c.attempt_code.push(code);
        c.attempt_message.push(message);
    }
    let rows = query(
        tx,
        "WITH r AS (
            SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                $6::bigint[], $7::text[], $8::text[], $9::bigint[], $10::bigint[], $11::bigint[],
                $12::text[], $13::text[])
            AS r(id, worker, n, state, outcome, next_attempt_at, error_code, error_message,
                started_at, duration_ms, upstream_status, attempt_code, attempt_message)),
         moved AS (
            UPDATE jobs SET state = r.state, outcome = r.outcome,
                next_attempt_at = r.next_attempt_at, lease_owner = NULL,
                lease_expires_at = NULL, attempt_started_at = NULL,
                last_error_code = COALESCE(r.error_code, jobs.last_error_code),
                last_error_message = CASE WHEN r.error_code IS NULL
                    THEN jobs.last_error_message ELSE r.error_message END,
                updated_at = $14
            FROM r
            WHERE jobs.id = r.id AND jobs.state = 'running' AND jobs.lease_owner = r.worker
              AND jobs.attempts = r.n
            RETURNING jobs.id)
         INSERT INTO attempts (job_id, n, started_at, duration_ms, upstream_status,
            error_code, error_message)
         SELECT r.id, r.n, r.started_at, r.duration_ms, r.upstream_status, r.attempt_code,
            r.attempt_message
         FROM r JOIN moved ON moved.id = r.id
         RETURNING job_id",
        &[
            &c.id,
            &c.worker,
            &c.n,
            &c.state,
            &c.outcome,
            &c.next_attempt_at,
            &c.error_code,
            &c.error_message,
            &c.started_at,
            &c.duration_ms,
            &c.upstream_status,
            &c.attempt_code,
            &c.attempt_message,
            &now,
        ],
    )
    .await?;
    let held: HashSet<String> = rows.iter().map(|r| r.text(0)).collect::<Result<_, _>>()?;
    Ok(reports.iter().map(|r| held.contains(&r.job_id)).collect())
}

/// The reports, column by column, for the one statement.
#[derive(Default)]
struct Reports<'a> {
    id: Vec<&'a str>,
    worker: Vec<&'a str>,
    n: Vec<i64>,
    state: Vec<&'static str>,
    outcome: Vec<Option<&'static str>>,
    next_attempt_at: Vec<Millis>,
    error_code: Vec<Option<&'static str>>,
    error_message: Vec<Option<&'a str>>,
    started_at: Vec<Millis>,
    duration_ms: Vec<i64>,
    upstream_status: Vec<Option<i64>>,
    attempt_code: Vec<Option<&'a str>>,
    attempt_message: Vec<Option<&'a str>>,
}
