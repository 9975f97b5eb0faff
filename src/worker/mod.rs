//! Workers: lease a due job, carry out its action against its target while renewing
//! the lease, then record the attempt and where the job goes next.
//!
//! Idle workers wait on the store's work signal, which fires on every commit that
//! queued a job, so a new job starts at once; the timer (next retry due, next lease
//! to expire, at most `poll_interval`) is only the fallback.
//!
//! Before an attempt reaches its upstream it passes the target's concurrency limit
//! and circuit breaker; a job held back by either is released without spending an
//! attempt; so is a job that a freeze window covers (SPEC §9), which waits `frozen`
//! for the freezes to end without reaching its target at all. On shutdown, running attempts may finish within the grace period; those
//! that do not are recorded as interrupted and released for the next process.

mod retry;
mod supply;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

pub use retry::backoff;

use crate::audit::{AuditEntry, AuditKind};
use crate::config::{RetryPolicy, WorkerConfig};
use crate::domain::approval::ApprovalPolicy;
use crate::domain::freeze::{self, Freeze};
use crate::domain::protection;
use crate::domain::{
    Action, AttemptRecord, Event, Job, JobError, JobErrorCode, Millis, Outcome, now_millis,
};
use crate::rules::RuleSet;
use crate::store::{AttemptReport, LeasedJob, Release, Store, StoreError, Transition};
use crate::targets::{Admission, Change, Effect, Fence, Handle, TargetError};

/// Everything a worker needs, shared by all of them.
pub struct Context {
    pub store: Arc<dyn Store>,
    /// The config in force (targets, rules, freezes, retry defaults, chain depth):
    /// read once per attempt, so an attempt runs wholly under one generation.
    pub live: Arc<crate::live::Live>,
    /// Worker settings, fixed until a restart.
    pub config: WorkerConfig,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// An attempt on its way to or at the upstream, for shutdown to account for.
#[derive(Debug, Clone)]
struct InFlight {
    job_id: String,
    attempt: u32,
    started_at: Millis,
    timeout: Duration,
}

type InFlightMap = Arc<Mutex<HashMap<String, InFlight>>>;

/// The running workers and the switch that stops them.
pub struct Pool {
    ctx: Arc<Context>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    in_flight: InFlightMap,
}

impl Pool {
    pub fn start(ctx: Arc<Context>) -> Pool {
        let (stop, stopped) = watch::channel(false);
        let process = ulid::Ulid::generate();
        let in_flight = InFlightMap::default();
        let mut tasks = JoinSet::new();
        for k in 0..ctx.config.concurrency {
            let worker = Worker {
                ctx: ctx.clone(),
                id: format!("{}-{process}-{k}", std::process::id()),
                stop: stopped.clone(),
                in_flight: in_flight.clone(),
            };
            tasks.spawn(worker.run());
        }
        Pool {
            ctx,
            stop,
            tasks,
            in_flight,
        }
    }

    /// Stops leasing, lets running attempts finish within `grace`, then records the
    /// ones still running as interrupted and releases their jobs: after a restart
    /// they are retried (once the target's timeout has passed, in case the upstream
    /// is still carrying them out) instead of waiting for their leases to expire.
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        let drained = tokio::time::timeout(grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_ok() {
            return;
        }
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        let left: Vec<(String, InFlight)> = lock(&self.in_flight).drain().collect();
        tracing::warn!(
            attempts = left.len(),
            "attempts still running after the shutdown grace period; releasing them"
        );
        for (worker, f) in left {
            let now = now_millis();
            let interrupted = AttemptRecord {
                n: f.attempt,
                started_at: f.started_at,
                duration_ms: u64::try_from(now - f.started_at).unwrap_or(0),
                upstream_status: None,
                error: Some(JobError::new(
                    JobErrorCode::Interrupted,
                    "the process shut down before the upstream answered",
                )),
            };
            let release = Release {
                job_id: f.job_id.clone(),
                worker,
                attempt: f.attempt,
                at: now.saturating_add(millis(f.timeout)),
                interrupted: Some(interrupted),
                frozen_by: Vec::new(),
                protected: None,
            };
            if let Err(e) = self.ctx.store.release_job(release).await {
                tracing::error!(job_id = %f.job_id, error = %e, "cannot release an interrupted job; its lease will expire");
            }
        }
    }
}

fn lock(map: &InFlightMap) -> std::sync::MutexGuard<'_, HashMap<String, InFlight>> {
    // Plain inserts and removes: a panic elsewhere cannot leave the map half-written.
    map.lock().unwrap_or_else(|p| p.into_inner())
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

struct Worker {
    ctx: Arc<Context>,
    id: String,
    stop: watch::Receiver<bool>,
    in_flight: InFlightMap,
}

/// How far an attempt got before it ended.
enum Step {
    /// It reached the upstream; this is the answer.
    Done(Result<Effect, TargetError>),
    /// Held back until `until` (circuit open, shutting down, or the freezes named in
    /// `frozen_by`); no attempt spent.
    Held {
        until: Millis,
        frozen_by: Vec<String>,
    },
    /// A protection requires this approval first; no attempt spent.
    Protected(ApprovalPolicy),
    /// The lease was lost (another worker took the job over): the attempt stopped
    /// where it was, and nothing is written (the store fences this worker out).
    Lost,
}

impl Step {
    /// Held back by the worker itself (circuit, shutdown), not by a freeze.
    fn held(until: Millis) -> Step {
        Step::Held {
            until,
            frozen_by: Vec::new(),
        }
    }
}

impl Worker {
    /// With nothing to lease, says when to look again; when that moment has passed
    /// already, what is due is an approval that timed out (a due job would have been
    /// leased), so the jobs past their deadline move to `expired` first. The expiry
    /// pass thus costs nothing until a deadline passes: no polling on the hot path.
    async fn expire_then_wake_at(&self) -> Result<Option<Millis>, StoreError> {
        let store = &self.ctx.store;
        let at = store.next_wakeup().await?;
        if at.is_none_or(|at| at > now_millis()) {
            return Ok(at);
        }
        if let Err(e) = store.expire_approvals().await {
            tracing::warn!(error = %e, "cannot expire timed-out approvals");
        }
        store.next_wakeup().await
    }

    async fn run(mut self) {
        let ctx = self.ctx.clone();
        let signal = ctx.store.work_signal();
        let min_wait = Duration::from_millis(5);
        while !*self.stop.borrow() {
            // Registered before looking for work, so a commit in between is not missed.
            let notified = signal.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let wait = match ctx.store.lease_job(&self.id, ctx.config.lease).await {
                Ok(Some(job)) => {
                    self.attempt(job).await;
                    continue;
                }
                Ok(None) => match self.expire_then_wake_at().await {
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
                _ = self.stop.changed() => {}
            }
        }
    }

    async fn attempt(&self, leased: LeasedJob) {
        let job = &leased.job;
        let span = crate::telemetry::attempt_span(
            &job.id,
            &job.rule,
            &job.target,
            leased.attempt,
            job.trace_parent.as_deref(),
        );
        async {
            let started = Instant::now();
            let live = self.ctx.live.load();
            let handle = live
                .targets
                .as_ref()
                .and_then(|t| t.get(&job.target))
                .cloned();
            // Decided before the target is involved: a protected or frozen job takes no
            // permit and sends nothing upstream.
            let hold = match &job.action {
                Some(a) => match self.protected(&live.rules, job, a) {
                    Some(step) => Some(step),
                    None => self
                        .frozen(&live.config.freezes, job, a)
                        .await
                        .map(|h| Step::Held {
                            until: h.until.timestamp_millis(),
                            frozen_by: h.names,
                        }),
                },
                None => None,
            };
            let step = match (hold, &job.action, &handle) {
                (Some(step), ..) => step,
                (None, None, _) => Step::Done(Err(TargetError::permanent(
                    JobErrorCode::TemplateError,
                    "the job has no rendered action",
                ))),
                (None, _, None) => Step::Done(Err(TargetError::permanent(
                    JobErrorCode::UnknownTarget,
                    format!("target `{}` is not configured", job.target),
                ))),
                (None, Some(action), Some(handle)) => {
                    let work = self.guarded(&live, &leased, handle, action);
                    self.renewing(&job.id, work).await.unwrap_or(Step::Lost)
                }
            };
            match step {
                Step::Lost => {
                    tracing::warn!("lease lost: attempt abandoned; another worker owns the job")
                }
                Step::Held { until, frozen_by } => {
                    self.release(&leased, until, frozen_by, None).await
                }
                Step::Protected(policy) => {
                    self.release(&leased, now_millis(), Vec::new(), Some(policy))
                        .await
                }
                Step::Done(result) => {
                    let duration_ms =
                        u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    self.finish(&live, &leased, handle.as_deref(), duration_ms, result)
                        .await;
                }
            }
            lock(&self.in_flight).remove(&self.id);
        }
        .instrument(span)
        .await
    }

    /// What the protections in force say of `job` (with its `action`) about to run:
    /// await an approval first, when one covering it now was not in force when it
    /// was planned (a reload added it); or wait out a soak not over yet.
    fn protected(&self, rules: &RuleSet, job: &Job, action: &Action) -> Option<Step> {
        let protections = rules.protections();
        let repo = action.output_subject().repo;
        let repo = repo.as_deref();
        if let Some(policy) =
            protection::missing_approval(protections, &job.target, repo, job.approval_policy())
        {
            return Some(Step::Protected(policy));
        }
        let soak = protection::guard(protections, &job.target, repo, None, None).soak_ms?;
        let until = job.created_at.saturating_add(soak);
        (until > now_millis()).then(|| Step::held(until))
    }

    /// Whether freezes hold `job` (with its `action`) now: the config's and the
    /// run-time ones in the store, except those an operator overrode for this job.
    /// Run-time freezes that cannot be read (store down) leave the config's to decide;
    /// the attempt would find the store down anyway.
    async fn frozen(
        &self,
        configured: &[Freeze],
        job: &Job,
        action: &Action,
    ) -> Option<freeze::Hold> {
        // The config's freezes are only borrowed: this runs before every attempt.
        let mut runtime = Vec::new();
        match self.ctx.store.freezes().await {
            Ok(stored) => {
                for f in stored {
                    match f.to_freeze() {
                        Ok(f) => runtime.push(f),
                        Err(e) => {
                            tracing::error!(freeze = %f.name, error = %e, "stored freeze unreadable; ignored")
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read run-time freezes"),
        }
        let repo = action.output_subject().repo;
        let all = configured.iter().chain(&runtime);
        let overridden = job.freeze_override.as_ref().map_or(&[][..], |o| &o.freezes);
        freeze::hold(
            all,
            &job.target,
            repo.as_deref(),
            overridden,
            chrono::Utc::now(),
        )
    }

    /// Passes the target's concurrency limit and circuit breaker, then performs.
    async fn guarded(
        &self,
        live: &crate::live::Generation,
        leased: &LeasedJob,
        handle: &Handle,
        action: &crate::domain::Action,
    ) -> Step {
        let mut stop = self.stop.clone();
        let _permit = tokio::select! {
            // The semaphore is never closed; no permit would mean no limit.
            permit = handle.permits.acquire() => permit.ok(),
            _ = stop.wait_for(|stopping| *stopping) => return Step::held(now_millis()),
        };
        if let Admission::Wait(d) = handle.breaker.admit() {
            return Step::held(now_millis().saturating_add(millis(d)));
        }
        lock(&self.in_flight).insert(
            self.id.clone(),
            InFlight {
                job_id: leased.job.id.clone(),
                attempt: leased.attempt,
                started_at: leased.started_at,
                timeout: handle.timeout,
            },
        );
        let fence = LeaseFence {
            store: self.ctx.store.as_ref(),
            job_id: &leased.job.id,
            worker: &self.id,
            lease: self.ctx.config.lease,
        };
        let store = self.ctx.store.as_ref();
        let job = &leased.job;
        let action = match supply::before(store, live, handle, job, action).await {
            supply::Before::Proceed(pinned) => pinned,
            supply::Before::RecheckAt(at) => return Step::held(at),
            supply::Before::Fail(e) => return Step::Done(Err(e)),
        };
        let result = match handle.target.perform(&action, &fence).await {
            Ok(effect) => supply::after(store, live, handle, &fence, job, &action, effect).await,
            Err(e) => Err(e),
        };
        Step::Done(result)
    }

    /// Runs `work` while renewing the job's lease every third of its length; `None`
    /// when the lease is lost first. `work` is then dropped where it stands, so no
    /// further upstream call is made: the job is someone else's. A lease that could
    /// not be renewed for its whole length (the store unreachable) counts as lost
    /// too, as another worker may hold it by now.
    async fn renewing<T>(&self, job_id: &str, work: impl Future<Output = T>) -> Option<T> {
        let lease = self.ctx.config.lease;
        tokio::pin!(work);
        let mut renew = tokio::time::interval(lease / 3);
        renew.tick().await;
        let mut renewed = Instant::now();
        loop {
            tokio::select! {
                // Checked first: an answer that is already there is not thrown away.
                biased;
                result = &mut work => return Some(result),
                _ = renew.tick() => {
                    match self.ctx.store.renew_lease(job_id, &self.id, lease).await {
                        Ok(true) => renewed = Instant::now(),
                        Ok(false) => return None,
                        Err(e) if renewed.elapsed() >= lease => {
                            tracing::warn!(error = %e, "cannot renew the lease for its whole length");
                            return None;
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot renew the lease"),
                    }
                }
            }
        }
    }

    /// Gives a job back without spending an attempt, due at `at`: `frozen` when
    /// freezes hold it, awaiting approval when a protection does (`protected`).
    async fn release(
        &self,
        leased: &LeasedJob,
        at: Millis,
        frozen_by: Vec<String>,
        protected: Option<ApprovalPolicy>,
    ) {
        tracing::info!(until = %crate::domain::rfc3339(at), frozen_by = ?frozen_by,
            protected = protected.is_some(), "held back; released");
        let release = Release {
            job_id: leased.job.id.clone(),
            worker: self.id.clone(),
            attempt: leased.attempt,
            at,
            interrupted: None,
            frozen_by,
            protected,
        };
        if let Err(e) = self.ctx.store.release_job(release).await {
            tracing::error!(error = %e, "cannot release the job; its lease will expire");
        }
    }

    async fn finish(
        &self,
        live: &crate::live::Generation,
        leased: &LeasedJob,
        handle: Option<&Handle>,
        duration_ms: u64,
        result: Result<Effect, TargetError>,
    ) {
        let job = &leased.job;
        let outcome = match &result {
            Ok(effect) => effect.outcome.as_str(),
            Err(e) => e.error.code.as_str(),
        };
        self.ctx
            .metrics
            .attempt(&job.target, outcome, duration_ms as f64 / 1000.0);
        if let Some(h) = handle {
            let healthy = result.as_ref().map_or_else(|e| !e.retryable, |_| true);
            if let Some(change) = h.breaker.record(healthy) {
                let (kind, what) = match change {
                    Change::Opened => (AuditKind::TargetCircuitOpened, "opened: its jobs are held"),
                    Change::Closed => (
                        AuditKind::TargetCircuitClosed,
                        "closed: the upstream answers again",
                    ),
                };
                tracing::warn!(target_name = %job.target, "circuit {what}");
                let entry = AuditEntry::circuit(kind, &job.target, &format!("circuit {what}"));
                if let Err(e) = self.ctx.store.append_audit(entry).await {
                    tracing::error!(error = %e, "cannot audit the circuit change");
                }
            }
        }
        let policy = live
            .rules
            .get(&job.rule)
            .map_or(live.config.defaults.retry, |r| r.retry);
        let min_delay = handle.map_or(Duration::ZERO, |h| h.timeout);
        let mut report = decide(&self.id, leased, duration_ms, &policy, min_delay, result);
        if let (Transition::Succeeded(outcome), Some(action)) = (&report.transition, &job.action)
            && *outcome != Outcome::DryRun
        {
            report.emit = Some(crate::ingest::plan(
                &live.rules,
                promoted_event(job, action, *outcome),
                live.config.defaults.max_chain_depth,
            ));
        }
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
        match self.ctx.store.record_attempt(report).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                "lease lost before the attempt was recorded; another worker owns the job"
            ),
            // The lease will expire and the job be retried: at least once, never lost.
            Err(e) => tracing::error!(error = %e, "cannot record the attempt"),
        }
    }
}

/// The lease as the fence of an attempt's changes: asked just before each one, it
/// renews the lease (so the change has a whole lease to finish in) and says whether
/// this worker still holds the job. A store that cannot be asked is a no: the
/// change waits for the next attempt rather than risk being made twice.
struct LeaseFence<'a> {
    store: &'a dyn Store,
    job_id: &'a str,
    worker: &'a str,
    lease: Duration,
}

#[async_trait::async_trait]
impl Fence for LeaseFence<'_> {
    async fn holds(&self) -> bool {
        match self
            .store
            .renew_lease(self.job_id, self.worker, self.lease)
            .await
        {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(error = %e, "cannot confirm the lease before a change");
                false
            }
        }
    }
}

/// How this attempt ends by the retry policy (SPEC §8), and what goes on the record.
/// Only the event is chosen here; the state it leads to is the life cycle's
/// (`domain::lifecycle`), which the store asks when it records the attempt.
///
/// After an ambiguous failure the next attempt waits at least `min_delay` (the
/// target's timeout), so an effect the upstream is still carrying out is seen by the
/// next attempt's check instead of repeated.
fn decide(
    worker: &str,
    leased: &LeasedJob,
    duration_ms: u64,
    policy: &RetryPolicy,
    min_delay: Duration,
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
                // Counted within the budget, so that after an operator's retry the
                // backoff starts small again.
                let mut delay = backoff(policy, leased.attempts_in_budget, e.retry_after);
                if e.ambiguous {
                    delay = delay.max(min_delay);
                }
                let delay_ms = millis(delay);
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
        emit: None,
    }
}

/// The internal event a successful promotion emits: source `gantry`, type
/// `gantry.promoted`, the target side as subject, one level deeper in the chain.
/// Rules match it like any other event, so chains work even where the upstream
/// sends no webhook.
fn promoted_event(job: &Job, action: &Action, outcome: Outcome) -> Event {
    Event {
        id: crate::domain::new_id(),
        source: crate::config::INTERNAL_SOURCE.to_string(),
        kind: "gantry.promoted".to_string(),
        delivery_id: format!("job:{}", job.id),
        received_at: now_millis(),
        subject: action.output_subject(),
        payload: serde_json::json!({
            "job_id": job.id,
            "rule": job.rule,
            "target": job.target,
            "outcome": outcome.as_str(),
            "action": action,
        }),
        parent_job_id: Some(job.id.clone()),
        chain_depth: job.chain_depth + 1,
        claims: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::JobState;

    fn leased(attempt: u32, attempts_in_budget: u32) -> LeasedJob {
        LeasedJob {
            job: Job {
                id: "job".into(),
                rule: "rule".into(),
                state: JobState::Running,
                outcome: None,
                event_id: "event".into(),
                target: "target".into(),
                action: None,
                attempts: Vec::new(),
                last_error: None,
                parent_job_id: None,
                chain_depth: 0,
                gate: None,
                soak_until: None,
                approval: None,
                approvals: Vec::new(),
                frozen: None,
                freeze_override: None,
                trace_parent: None,
                created_at: 0,
                updated_at: 0,
            },
            attempt,
            attempts_in_budget,
            started_at: now_millis(),
        }
    }

    fn unavailable() -> TargetError {
        TargetError {
            retryable: true,
            ..TargetError::permanent(JobErrorCode::UpstreamUnavailable, "503")
        }
    }

    #[test]
    fn after_an_operator_retry_the_backoff_starts_small_again() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
        };
        // Attempt 12 of the job, the first since an operator's retry.
        for _ in 0..20 {
            let before = now_millis();
            let report = decide(
                "w",
                &leased(12, 1),
                5,
                &policy,
                Duration::ZERO,
                Err(unavailable()),
            );
            let Transition::Retry { at } = report.transition else {
                panic!("expected a retry, got {:?}", report.transition);
            };
            assert!(
                at - before <= 1_000 + 50,
                "first retry after an operator's retry waits {} ms",
                at - before
            );
        }
    }

    /// The records an attempt's end and a shutdown's release write are the ones the
    /// life cycle's table names for those moves.
    #[test]
    fn the_records_are_the_ones_the_life_cycle_names() {
        use crate::domain::{JobEvent, lifecycle};
        let policy = RetryPolicy {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
        };
        let rejected = TargetError::permanent(JobErrorCode::UpstreamRejected, "403");
        let promoted = Effect::new(Outcome::Promoted, Some(200));
        let ends = [Ok(promoted), Err(unavailable()), Err(rejected)];
        for result in ends {
            let report = decide("w", &leased(1, 1), 5, &policy, Duration::ZERO, result);
            let step = lifecycle::next(JobState::Running, report.transition.event()).unwrap();
            let kinds: Vec<AuditKind> = report.audit.iter().map(|e| e.kind).collect();
            assert_eq!(kinds, [AuditKind::JobAttempt, step.audit.unwrap()]);
        }
        let job = leased(1, 1).job;
        let attempt = AttemptRecord {
            n: 1,
            started_at: 0,
            duration_ms: 0,
            upstream_status: None,
            error: None,
        };
        for (event, entry) in [
            (
                JobEvent::Interrupted,
                AuditEntry::interrupted(&job, &attempt),
            ),
            (
                JobEvent::LeaseTakenOver,
                AuditEntry::attempt(&job, &attempt),
            ),
        ] {
            let step = lifecycle::next(JobState::Running, event).unwrap();
            assert_eq!(Some(entry.kind), step.audit, "{event:?}");
        }
    }

    #[test]
    fn the_budget_not_the_attempt_number_decides_when_to_give_up() {
        let policy = RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
        };
        let go_on = decide(
            "w",
            &leased(7, 2),
            5,
            &policy,
            Duration::ZERO,
            Err(unavailable()),
        );
        assert!(matches!(go_on.transition, Transition::Retry { .. }));
        let stop = decide(
            "w",
            &leased(8, 3),
            5,
            &policy,
            Duration::ZERO,
            Err(unavailable()),
        );
        let Transition::Failed(e) = stop.transition else {
            panic!("expected failed, got {:?}", stop.transition);
        };
        assert_eq!(e.code, JobErrorCode::UpstreamUnavailable);
        assert!(
            e.message.starts_with("gave up after 3 attempts"),
            "{}",
            e.message
        );
    }
}
