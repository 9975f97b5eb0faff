//! Workers: lease a due job, carry out its action against its target while renewing
//! the lease, then record the attempt and where the job goes next.
//!
//! Idle workers wait on the store's work signal, which fires on every commit that
//! queued a job, so a new job starts at once; the timer (next retry due, next lease
//! to expire, at most `poll_interval`) is only the fallback.

mod retry;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

pub use retry::backoff;

use crate::audit::AuditEntry;
use crate::config::{RetryPolicy, WorkerConfig};
use crate::domain::{AttemptRecord, JobError, JobErrorCode, now_millis};
use crate::rules::RuleSet;
use crate::store::{AttemptReport, LeasedJob, Store, Transition};
use crate::targets::{Effect, TargetError, Targets};

/// Everything a worker needs, shared by all of them.
pub struct Context {
    pub store: Arc<dyn Store>,
    pub targets: Targets,
    pub rules: Arc<RuleSet>,
    pub config: WorkerConfig,
    /// For jobs whose rule is no longer configured.
    pub default_retry: RetryPolicy,
}

/// The running workers and the switch that stops them.
pub struct Pool {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Pool {
    pub fn start(ctx: Arc<Context>) -> Pool {
        let (stop, stopped) = watch::channel(false);
        let process = ulid::Ulid::generate();
        let mut tasks = JoinSet::new();
        for k in 0..ctx.config.concurrency {
            let id = format!("{}-{process}-{k}", std::process::id());
            tasks.spawn(run(ctx.clone(), id, stopped.clone()));
        }
        Pool { stop, tasks }
    }

    /// Stops leasing, lets running attempts finish within `grace`, then abandons the
    /// rest: their leases expire and another process takes them over.
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        let drained = tokio::time::timeout(grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                "attempts still running after the shutdown grace period; abandoning them"
            );
            self.tasks.abort_all();
        }
    }
}

async fn run(ctx: Arc<Context>, id: String, mut stop: watch::Receiver<bool>) {
    let signal = ctx.store.work_signal();
    let min_wait = Duration::from_millis(5);
    while !*stop.borrow() {
        // Registered before looking for work, so a commit in between is not missed.
        let notified = signal.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();

        let wait = match ctx.store.lease_job(&id, ctx.config.lease).await {
            Ok(Some(job)) => {
                attempt(&ctx, &id, job).await;
                continue;
            }
            Ok(None) => match ctx.store.next_wakeup().await {
                Ok(Some(at)) => {
                    Duration::from_millis(u64::try_from(at - now_millis()).unwrap_or(0))
                        .clamp(min_wait, ctx.config.poll_interval)
                }
                Ok(None) => ctx.config.poll_interval,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the next wake-up");
                    ctx.config.poll_interval
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot lease a job");
                ctx.config.poll_interval
            }
        };
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
    }
}

async fn attempt(ctx: &Context, worker: &str, leased: LeasedJob) {
    let job = &leased.job;
    let span = tracing::info_span!("attempt", job_id = %job.id, rule = %job.rule,
        target = %job.target, n = leased.attempt);
    async {
        let started = Instant::now();
        let result = perform(ctx, worker, &leased).await;
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let policy = ctx
            .rules
            .get(&job.rule)
            .map_or(ctx.default_retry, |r| r.retry);
        let report = decide(worker, &leased, duration_ms, &policy, result);
        match &report.transition {
            Transition::Succeeded(o) => {
                tracing::info!(outcome = o.as_str(), duration_ms, "promoted")
            }
            Transition::Retry { at } => {
                let (code, message) = report
                    .attempt
                    .error
                    .as_ref()
                    .map_or(("", ""), |e| (e.code.as_str(), e.message.as_str()));
                tracing::warn!(code, message, next_attempt_at = %crate::domain::rfc3339(*at),
                    "attempt failed; will retry")
            }
            Transition::Failed(e) => {
                tracing::error!(code = e.code.as_str(), message = %e.message, "job failed")
            }
        }
        match ctx.store.record_attempt(report).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                "lease lost before the attempt was recorded; another worker owns the job"
            ),
            // The lease will expire and the job be retried: at least once, never lost.
            Err(e) => tracing::error!(error = %e, "cannot record the attempt"),
        }
    }
    .instrument(span)
    .await
}

/// Runs the action within the target's concurrency limit, renewing the lease until
/// the upstream has answered.
async fn perform(ctx: &Context, worker: &str, leased: &LeasedJob) -> Result<Effect, TargetError> {
    let job = &leased.job;
    let permanent = |code, message: String| TargetError {
        error: JobError::new(code, message),
        retryable: false,
        upstream_status: None,
        retry_after: None,
    };
    let Some(action) = &job.action else {
        return Err(permanent(
            JobErrorCode::TemplateError,
            "the job has no rendered action".into(),
        ));
    };
    let Some(target) = ctx.targets.get(&job.target) else {
        return Err(permanent(
            JobErrorCode::UnknownTarget,
            format!("target `{}` is not configured", job.target),
        ));
    };
    let work = async {
        // A closed semaphore is never closed here; treat it as no limit rather than fail.
        let _permit = target.permits.acquire().await.ok();
        target.target.perform(action).await
    };
    tokio::pin!(work);
    let mut renew = tokio::time::interval(ctx.config.lease / 3);
    renew.tick().await;
    loop {
        tokio::select! {
            result = &mut work => return result,
            _ = renew.tick() => {
                match ctx.store.renew_lease(&job.id, worker, ctx.config.lease).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!("lease lost while the attempt runs"),
                    Err(e) => tracing::warn!(error = %e, "cannot renew the lease"),
                }
            }
        }
    }
}

/// Where the job goes after this attempt, and what goes on the record (SPEC §8).
fn decide(
    worker: &str,
    leased: &LeasedJob,
    duration_ms: u64,
    policy: &RetryPolicy,
    result: Result<Effect, TargetError>,
) -> AttemptReport {
    let (job, n) = (&leased.job, leased.attempt);
    let mut attempt = AttemptRecord {
        n,
        started_at: leased.started_at,
        duration_ms,
        upstream_status: None,
        error: None,
    };
    let transition = match result {
        Ok(effect) => {
            attempt.upstream_status = effect.upstream_status;
            Transition::Succeeded(effect.outcome)
        }
        Err(e) => {
            attempt.upstream_status = e.upstream_status;
            attempt.error = Some(e.error.clone());
            if e.retryable && leased.attempts_in_budget < policy.max_attempts {
                let delay = backoff(policy, n, e.retry_after);
                let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
                Transition::Retry {
                    at: now_millis().saturating_add(delay_ms),
                }
            } else if e.retryable {
                Transition::Failed(JobError::new(
                    e.error.code,
                    format!(
                        "gave up after {} attempts; last: {}",
                        leased.attempts_in_budget, e.error.message
                    ),
                ))
            } else {
                Transition::Failed(e.error)
            }
        }
    };
    let outcome_record = match &transition {
        Transition::Succeeded(o) => AuditEntry::succeeded(job, *o),
        Transition::Retry { at } => AuditEntry::retrying(job, *at),
        Transition::Failed(e) => AuditEntry::failed(job, e),
    };
    AttemptReport {
        job_id: job.id.clone(),
        worker: worker.to_string(),
        audit: vec![AuditEntry::attempt(job, &attempt), outcome_record],
        attempt,
        transition,
    }
}
