//! The store contract: what every `Store` must do, run against SQLite and
//! PostgreSQL alike through `gantry::store::open`. On PostgreSQL a second store
//! instance on the same schema plays another replica.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use gantry::audit::{AuditEntry, AuditKind, AuditRecord};
use gantry::config::{PostgresUrl, StoreUrl};
use gantry::domain::approval::{ApprovalPolicy, Ballot, Verdict};
use gantry::domain::freeze::{OverrideRefusal, OverrideRequest, RuntimeFreeze};
use gantry::domain::{
    Action, AttemptRecord, Event, ImageRef, JobError, JobErrorCode, JobState, NewJob, Op, Outcome,
    Subject, new_id, now_millis,
};
use gantry::store::{
    ApprovalOutcome, AttemptReport, AuditFilter, EventFilter, IngestPolicy, JobFilter, LeasedJob,
    NewEvent, NotificationFilter, OperatorAction, OperatorOutcome, OverrideOutcome, Release, Store,
    Transition,
};
use serde_json::json;

use crate::stores::{Open, PgSchema};

const DAY: i64 = 86_400_000;
const POLICY: IngestPolicy = IngestPolicy {
    dedupe_window: Duration::from_secs(86_400),
    max_chain_depth: 5,
};
const LEASE: Duration = Duration::from_secs(30);

/// A store under test, and a second instance on the same database: another replica
/// on PostgreSQL, the same store on SQLite (which serves one process).
struct Backend {
    store: Arc<dyn Store>,
    replica: Arc<dyn Store>,
    /// Dropped last: the SQLite directory or the PostgreSQL schema.
    db: Box<dyn std::any::Any + Send>,
}

impl Backend {
    /// The instance the `k`-th of several concurrent tasks uses: every other one
    /// goes to the other replica.
    fn instance(&self, k: usize) -> Arc<dyn Store> {
        if k.is_multiple_of(2) {
            self.store.clone()
        } else {
            self.replica.clone()
        }
    }

    /// Runs `sql` on the database behind the store's back, as an intruder would.
    async fn tamper(&self, sql: &str) {
        if let Some(dir) = self.db.downcast_ref::<tempfile::TempDir>() {
            let conn = rusqlite::Connection::open(dir.path().join("g.db")).unwrap();
            conn.execute_batch(sql).unwrap();
        } else if let Some(schema) = self.db.downcast_ref::<PgSchema>() {
            let sql = format!("SET search_path = {}; {sql}", schema.name());
            schema.connect().await.batch_execute(&sql).await.unwrap();
        }
    }
}

impl Open for Backend {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = gantry::store::open(&StoreUrl::Sqlite(dir.path().join("g.db")))
            .await
            .unwrap();
        Backend {
            replica: store.clone(),
            store,
            db: Box::new(dir),
        }
    }

    async fn postgres() -> Option<Self> {
        Some(Backend::on(PgSchema::create().await?).await)
    }
}

impl Backend {
    /// Two replicas of a store in `schema`.
    async fn on(schema: PgSchema) -> Self {
        let url = StoreUrl::Postgres(PostgresUrl::parse(&schema.url()).unwrap());
        // Two replicas migrating at once: one waits for the other's migration.
        let (store, replica) = tokio::join!(gantry::store::open(&url), gantry::store::open(&url));
        Backend {
            store: store.unwrap(),
            replica: replica.unwrap(),
            db: Box::new(schema),
        }
    }
}

/// Declares each contract check on each store, and [`on_server`] to run them all on
/// another PostgreSQL server (the TLS tests' private cluster).
macro_rules! contract {
    ($($name:ident),+ $(,)?) => {
        on_each_store!(Backend: $($name),+);

        /// How many contract checks there are.
        pub(crate) const CHECKS: usize = [$(stringify!($name)),+].len();

        /// Every contract check in turn, each on a schema of its own on the server
        /// at `admin` (plain, for the checks' own connections), whose stores connect
        /// by `store_base`; how many ran.
        pub(crate) async fn on_server(admin: &str, store_base: &str) -> usize {
            let mut ran = 0;
            $(
                let schema = PgSchema::create_on(admin, store_base).await.unwrap();
                $name(Backend::on(schema).await).await;
                ran += 1;
            )+
            ran
        }
    };
}

contract!(
    ingest_commits_the_event_its_jobs_and_their_audit,
    a_delivery_seen_within_the_window_is_the_same_event_and_no_second_job,
    leases_renewals_attempts_and_releases_hold_only_under_the_lease,
    attempts_reported_together_are_each_fenced_by_their_own_lease,
    an_expired_lease_is_taken_over_and_the_lost_attempt_recorded,
    concurrent_leasers_never_share_a_job,
    operator_actions_move_only_the_states_that_allow_them,
    an_echo_joins_the_chain_of_the_promotion_it_echoes,
    a_rule_acts_once_per_parent_promotion,
    listings_filter_and_page_with_cursors,
    the_audit_chain_stays_linear_under_concurrent_appends,
    pruning_cuts_the_chain_at_a_checkpoint_that_verifies,
    verify_finds_the_audit_checkpoint_by_sequence_among_thousands,
    the_work_signal_fires_after_a_commit_that_queues_work,
    approvals_racing_at_two_replicas_queue_the_job_exactly_once,
    an_awaiting_job_is_not_leased_and_expires_past_its_deadline,
    frozen_jobs_spend_no_attempt_and_run_in_creation_order_after_the_end,
    runtime_freezes_start_once_end_once_and_are_seen_by_every_replica,
    a_freeze_override_queues_only_a_frozen_job_and_is_kept_with_it,
    notifications_are_written_with_their_change_leased_once_fenced_and_pruned,
);

fn promote(tag: &str) -> Action {
    let digest = Some(format!("sha256:{:0>64}", tag.replace('.', "")));
    Action {
        op: Op::Promote {
            from: ImageRef {
                repo: "dev".into(),
                image: "app".into(),
                tag: tag.into(),
                digest: digest.clone(),
            },
            to: ImageRef {
                repo: "staging".into(),
                image: "app".into(),
                tag: tag.into(),
                digest,
            },
            copy: true,
            to_target: None,
        },
        dry_run: false,
    }
}

fn event(source: &str, delivery: &str, tag: &str) -> Event {
    Event {
        id: new_id(),
        source: source.into(),
        kind: "test-passed".into(),
        delivery_id: delivery.into(),
        received_at: now_millis(),
        subject: Subject {
            repo: Some("dev".into()),
            image: Some("app".into()),
            tag: Some(tag.into()),
            ..Subject::default()
        },
        payload: json!({"event": "test-passed", "tag": tag, "nested": {"n": [1, 2]}}),
        parent_job_id: None,
        chain_depth: 0,
        claims: None,
    }
}

/// The request trace a planned job keeps (SPEC §12).
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn job(rule: &str, tag: &str) -> NewJob {
    NewJob {
        id: new_id(),
        rule: rule.into(),
        target: "jfrog".into(),
        action: Ok(promote(tag)),
        approval: None,
        initiator: None,
        gate: None,
        soak_until: None,
        trace_parent: Some(TRACEPARENT.into()),
    }
}

/// An event from `ci` for `tag` with one job per rule.
fn planned(delivery: &str, tag: &str, rules: &[&str]) -> NewEvent {
    NewEvent {
        event: event("ci", delivery, tag),
        jobs: rules.iter().map(|r| job(r, tag)).collect(),
        evidence: Vec::new(),
        notes: Vec::new(),
    }
}

/// Ingests one event with one job and returns the job's id.
async fn one_job(store: &dyn Store, tag: &str) -> String {
    let out = store
        .ingest(vec![planned(&new_id(), tag, &["r"])], POLICY)
        .await
        .unwrap();
    out[0].jobs[0].id.clone()
}

fn report(leased: &LeasedJob, worker: &str, transition: Transition) -> AttemptReport {
    let error = match &transition {
        Transition::Succeeded(_) => None,
        Transition::Retry { .. } => Some(JobError::new(
            JobErrorCode::UpstreamUnavailable,
            "upstream answered 503",
        )),
        Transition::Failed(e) => Some(e.clone()),
    };
    AttemptReport {
        job_id: leased.job.id.clone(),
        worker: worker.into(),
        attempt: AttemptRecord {
            n: leased.attempt,
            started_at: leased.started_at,
            duration_ms: 7,
            upstream_status: Some(if error.is_some() { 503 } else { 200 }),
            error,
        },
        transition,
        audit: vec![AuditEntry::rejections("test", "an attempt's record", 1)],
        emit: None,
    }
}

/// The audit records of `kind` (any when `None`) about `job` (any when `None`).
async fn records(
    store: &dyn Store,
    kind: Option<AuditKind>,
    job: Option<&str>,
) -> Vec<AuditRecord> {
    let filter = AuditFilter {
        kind,
        job: job.map(str::to_string),
        limit: 1000,
        ..AuditFilter::default()
    };
    store.audit(filter).await.unwrap().items
}

/// Reports an attempt of `leased` by `worker`; whether the store took it.
async fn record(
    store: &dyn Store,
    leased: &LeasedJob,
    worker: &str,
    transition: Transition,
) -> bool {
    let report = report(leased, worker, transition);
    store.record_attempt(report).await.unwrap()
}

async fn kinds(store: &dyn Store) -> Vec<AuditKind> {
    let all = records(store, None, None).await;
    all.iter().map(|r| r.entry.kind).collect()
}

async fn verified(store: &dyn Store) -> u64 {
    let verdict = store.verify_audit().await.unwrap();
    assert!(verdict.ok, "{verdict:?}");
    verdict.records
}

async fn ingest_commits_the_event_its_jobs_and_their_audit(b: Backend) {
    let store = &*b.store;
    let mut new = planned("d-1", "1.0.0", &["promote"]);
    new.jobs.push(NewJob {
        id: new_id(),
        rule: "broken".into(),
        target: "jfrog".into(),
        action: Err(JobError::new(
            JobErrorCode::TemplateError,
            "no value for {{x}}",
        )),
        approval: None,
        initiator: None,
        gate: None,
        soak_until: None,
        trace_parent: None,
    });
    new.notes
        .push(AuditEntry::chain_refused(&new.event, &["deep".into()], 5));
    let event_id = new.event.id.clone();
    let out = store.ingest(vec![new.clone()], POLICY).await.unwrap();
    assert_eq!(out.len(), 1);
    assert!(!out[0].duplicate);
    assert_eq!(out[0].event_id, event_id);
    let rules: Vec<&str> = out[0].jobs.iter().map(|j| j.rule.as_str()).collect();
    assert_eq!(rules, ["promote", "broken"]);

    // Read back through the other instance: it is committed, not cached.
    let stored = b.replica.event(&event_id).await.unwrap().unwrap();
    assert_eq!(stored.event.payload, new.event.payload);
    assert_eq!(stored.event.subject, new.event.subject);
    assert_eq!(stored.event.received_at, new.event.received_at);
    let states: HashMap<&str, JobState> = stored
        .jobs
        .iter()
        .map(|j| (j.rule.as_str(), j.state))
        .collect();
    assert_eq!(states["promote"], JobState::Queued);
    assert_eq!(states["broken"], JobState::Failed);

    let queued = b.replica.job(&out[0].jobs[0].id).await.unwrap().unwrap();
    assert_eq!(queued.action, Some(promote("1.0.0")));
    assert_eq!(
        (queued.event_id.as_str(), queued.chain_depth),
        (event_id.as_str(), 0)
    );
    assert!(queued.attempts.is_empty() && queued.last_error.is_none());
    assert_eq!(queued.trace_parent.as_deref(), Some(TRACEPARENT));
    let failed = b.replica.job(&out[0].jobs[1].id).await.unwrap().unwrap();
    assert_eq!(failed.action, None);
    assert_eq!(
        failed.last_error.map(|e| e.code),
        Some(JobErrorCode::TemplateError)
    );

    assert_eq!(
        kinds(store).await,
        [
            AuditKind::EventReceived,
            AuditKind::ChainRefused,
            AuditKind::JobCreated,
            AuditKind::JobFailed
        ]
    );
    assert_eq!(verified(&*b.replica).await, 4);
    let stats = store.queue_stats().await.unwrap();
    assert_eq!(stats.by_state.get(&JobState::Queued), Some(&1));
    assert_eq!(stats.by_state.get(&JobState::Failed), Some(&1));
    assert_eq!(stats.oldest_waiting_since, Some(queued.created_at));
    let wakeup = store.next_wakeup().await.unwrap().unwrap();
    assert!(wakeup <= now_millis());
    store.ping().await.unwrap();
}

async fn a_delivery_seen_within_the_window_is_the_same_event_and_no_second_job(b: Backend) {
    let first = planned("same", "1.0.0", &["r"]);
    let out = b.store.ingest(vec![first.clone()], POLICY).await.unwrap();
    let (original, jobs) = (out[0].event_id.clone(), out[0].jobs.clone());

    // Again, through the other replica: the first event and its job, nothing new.
    let again = planned("same", "1.0.0", &["r"]);
    let dup = b.replica.ingest(vec![again.clone()], POLICY).await.unwrap();
    assert!(dup[0].duplicate);
    assert_eq!(
        (dup[0].event_id.clone(), dup[0].jobs.clone()),
        (original.clone(), jobs)
    );
    assert!(b.store.event(&again.event.id).await.unwrap().is_none());
    let all = b
        .store
        .jobs(JobFilter {
            limit: 100,
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(all.items.len(), 1);
    let last = records(&*b.store, Some(AuditKind::EventDuplicate), None).await;
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].entry.event_id.as_deref(), Some(original.as_str()));

    // Twice in one batch: the second is a duplicate of the first.
    let (x, y) = (
        planned("pair", "2.0.0", &["r"]),
        planned("pair", "2.0.0", &["r"]),
    );
    let out = b.store.ingest(vec![x.clone(), y], POLICY).await.unwrap();
    assert!(!out[0].duplicate && out[1].duplicate);
    assert_eq!(out[1].event_id, x.event.id);
    assert_eq!(out[1].jobs, out[0].jobs);

    // The same delivery racing through both instances: stored once.
    let racers: Vec<_> = (0..8)
        .map(|k| {
            let store = b.instance(k);
            tokio::spawn(async move {
                let new = planned("race", "3.0.0", &["r"]);
                store.ingest(vec![new], POLICY).await.unwrap().remove(0)
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for r in racers {
        outcomes.push(r.await.unwrap());
    }
    assert_eq!(outcomes.iter().filter(|o| !o.duplicate).count(), 1);
    let ids: HashSet<&str> = outcomes.iter().map(|o| o.event_id.as_str()).collect();
    assert_eq!(ids.len(), 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|o| o.jobs.len() == 1 && o.jobs == outcomes[0].jobs)
    );

    // Past the window the same delivery is new again.
    let mut late = planned("same", "1.0.0", &["r"]);
    late.event.received_at = first.event.received_at + 2_000;
    let out = b
        .replica
        .ingest(
            vec![late.clone()],
            IngestPolicy {
                dedupe_window: Duration::from_secs(1),
                ..POLICY
            },
        )
        .await
        .unwrap();
    assert!(!out[0].duplicate);
    assert_eq!(out[0].event_id, late.event.id);
    // And the delivery now names the new event.
    let out = b
        .store
        .ingest(vec![planned("same", "1.0.0", &["r"])], POLICY)
        .await
        .unwrap();
    assert_eq!(
        (out[0].duplicate, out[0].event_id.as_str()),
        (true, late.event.id.as_str())
    );
    verified(&*b.store).await;
}

async fn leases_renewals_attempts_and_releases_hold_only_under_the_lease(b: Backend) {
    let (store, replica) = (&*b.store, &*b.replica);
    let id = one_job(store, "1.0.0").await;

    let leased = store.lease_job("w1", LEASE).await.unwrap().unwrap();
    assert_eq!(leased.job.id, id);
    assert_eq!((leased.attempt, leased.attempts_in_budget), (1, 1));
    assert_eq!(leased.job.state, JobState::Running);
    assert!(replica.lease_job("w2", LEASE).await.unwrap().is_none());
    assert!(store.renew_lease(&id, "w1", LEASE).await.unwrap());
    assert!(!replica.renew_lease(&id, "w2", LEASE).await.unwrap());
    // Another worker cannot report on it.
    assert!(
        !record(
            replica,
            &leased,
            "w2",
            Transition::Succeeded(Outcome::Promoted)
        )
        .await
    );

    // Given back untried: queued again, no attempt spent.
    let back = Release {
        job_id: id.clone(),
        worker: "w1".into(),
        attempt: 1,
        at: now_millis(),
        interrupted: None,
        frozen_by: Vec::new(),
        protected: None,
    };
    assert!(store.release_job(back.clone()).await.unwrap());
    assert!(!store.release_job(back).await.unwrap());
    let job = replica.job(&id).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempts.len()), (JobState::Queued, 0));

    // A retryable failure.
    let leased = replica.lease_job("w2", LEASE).await.unwrap().unwrap();
    assert_eq!(leased.attempt, 1);
    let retry = Transition::Retry { at: now_millis() };
    assert!(record(replica, &leased, "w2", retry.clone()).await);
    assert!(!record(replica, &leased, "w2", retry).await);
    let job = store.job(&id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Retrying);
    assert_eq!(job.attempts.len(), 1);
    assert_eq!(job.attempts[0].upstream_status, Some(503));
    assert_eq!(
        job.last_error.map(|e| e.code),
        Some(JobErrorCode::UpstreamUnavailable)
    );

    // Interrupted by a shutdown: the attempt is recorded and the job released.
    let leased = store.lease_job("w1", LEASE).await.unwrap().unwrap();
    assert_eq!((leased.attempt, leased.job.attempts.len()), (2, 1));
    let interrupted = AttemptRecord {
        n: 2,
        started_at: leased.started_at,
        duration_ms: 3,
        upstream_status: None,
        error: Some(JobError::new(JobErrorCode::Interrupted, "shut down")),
    };
    assert!(
        store
            .release_job(Release {
                job_id: id.clone(),
                worker: "w1".into(),
                attempt: 2,
                at: now_millis(),
                interrupted: Some(interrupted),
                frozen_by: Vec::new(),
                protected: None,
            })
            .await
            .unwrap()
    );
    let job = replica.job(&id).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempts.len()), (JobState::Retrying, 2));
    assert_eq!(
        job.last_error.map(|e| e.code),
        Some(JobErrorCode::Interrupted)
    );

    // Success.
    let leased = replica.lease_job("w2", LEASE).await.unwrap().unwrap();
    assert_eq!((leased.attempt, leased.attempts_in_budget), (3, 3));
    assert!(
        record(
            replica,
            &leased,
            "w2",
            Transition::Succeeded(Outcome::Promoted)
        )
        .await
    );
    let job = store.job(&id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.outcome, Some(Outcome::Promoted));
    assert_eq!(
        job.attempts.iter().map(|a| a.n).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(store.lease_job("w1", LEASE).await.unwrap().is_none());
    assert!(store.next_wakeup().await.unwrap().is_none());
    assert!(kinds(store).await.contains(&AuditKind::JobInterrupted));
    verified(store).await;
}

/// Reports arriving together share a commit on PostgreSQL (SPEC §14): each is
/// still written only under its own lease, with the event its success emits.
async fn attempts_reported_together_are_each_fenced_by_their_own_lease(b: Backend) {
    let store = &*b.store;
    for i in 0..20 {
        one_job(store, &format!("2.0.{i}")).await;
    }
    let mut leased = Vec::new();
    for _ in 0..20 {
        leased.push(store.lease_job("w1", LEASE).await.unwrap().unwrap());
    }
    // Every third is reported by a worker that holds no lease on it.
    let reports: Vec<(AttemptReport, String, bool)> = leased
        .iter()
        .enumerate()
        .map(|(k, l)| {
            let holder = k % 3 != 0;
            let worker = if holder { "w1" } else { "w9" };
            let mut r = report(l, worker, Transition::Succeeded(Outcome::Promoted));
            let mut emitted = planned(&format!("job:{}", l.job.id), &format!("3.0.{k}"), &["next"]);
            emitted.event.parent_job_id = Some(l.job.id.clone());
            emitted.event.chain_depth = 1;
            let event_id = emitted.event.id.clone();
            r.emit = Some(emitted);
            (r, event_id, holder)
        })
        .collect();
    let answers = futures_util::future::join_all(reports.iter().enumerate().map(|(k, (r, ..))| {
        let (instance, r) = (b.instance(k), r.clone());
        async move { instance.record_attempt(r).await.unwrap() }
    }))
    .await;
    for (((_, event_id, holder), held), l) in reports.iter().zip(&answers).zip(&leased) {
        assert_eq!(held, holder, "job {}", l.job.id);
        let job = store.job(&l.job.id).await.unwrap().unwrap();
        let emitted = store.event(event_id).await.unwrap();
        if *holder {
            assert_eq!((job.state, job.attempts.len()), (JobState::Succeeded, 1));
            assert!(emitted.is_some(), "the success's event is stored");
        } else {
            assert_eq!((job.state, job.attempts.len()), (JobState::Running, 0));
            assert!(
                emitted.is_none(),
                "nothing of a lost lease's report is stored"
            );
        }
    }
    let attempt_records = records(store, Some(AuditKind::EventRejected), None).await;
    let reported = attempt_records
        .iter()
        .filter(|r| r.entry.message.as_deref() == Some("an attempt's record"))
        .count();
    assert_eq!(reported, 13, "one record per held report");
    verified(store).await;
}

async fn an_expired_lease_is_taken_over_and_the_lost_attempt_recorded(b: Backend) {
    let id = one_job(&*b.store, "1.0.0").await;
    // A lease that expires at once: its worker "died".
    let dead = b
        .store
        .lease_job("dead", Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    let taken = b.replica.lease_job("alive", LEASE).await.unwrap().unwrap();
    assert_eq!(taken.job.id, id);
    assert_eq!(taken.attempt, 2);
    assert_eq!(taken.job.attempts.len(), 1);
    assert_eq!(
        taken.job.attempts[0].error.as_ref().map(|e| e.code),
        Some(JobErrorCode::LeaseExpired)
    );

    // The dead worker's late report and renewal are refused.
    assert!(
        !record(
            &*b.store,
            &dead,
            "dead",
            Transition::Succeeded(Outcome::Promoted)
        )
        .await
    );
    assert!(!b.store.renew_lease(&id, "dead", LEASE).await.unwrap());
    assert!(
        record(
            &*b.replica,
            &taken,
            "alive",
            Transition::Succeeded(Outcome::Noop)
        )
        .await
    );
    let job = b.store.job(&id).await.unwrap().unwrap();
    assert_eq!(
        (job.state, job.outcome),
        (JobState::Succeeded, Some(Outcome::Noop))
    );
    let codes: Vec<Option<JobErrorCode>> = job
        .attempts
        .iter()
        .map(|a| a.error.as_ref().map(|e| e.code))
        .collect();
    assert_eq!(codes, [Some(JobErrorCode::LeaseExpired), None]);
    let attempts = records(&*b.store, Some(AuditKind::JobAttempt), Some(&id)).await;
    assert!(
        attempts[0]
            .entry
            .message
            .as_deref()
            .unwrap()
            .contains("lease_expired")
    );
    verified(&*b.store).await;
}

async fn concurrent_leasers_never_share_a_job(b: Backend) {
    const JOBS: usize = 200;
    const LEASERS: usize = 8;
    for chunk in 0..JOBS / 50 {
        let batch = (0..50)
            .map(|i| planned(&new_id(), &format!("1.{chunk}.{i}"), &["r"]))
            .collect();
        b.store.ingest(batch, POLICY).await.unwrap();
    }
    let mut tasks = Vec::new();
    for k in 0..LEASERS {
        // Half of them on the other replica.
        let store = b.instance(k);
        tasks.push(tokio::spawn(async move {
            let worker = format!("w{k}");
            let mut mine = Vec::new();
            while let Some(leased) = store.lease_job(&worker, LEASE).await.unwrap() {
                let done = Transition::Succeeded(Outcome::Promoted);
                assert!(record(&*store, &leased, &worker, done).await);
                mine.push(leased.job.id);
            }
            mine
        }));
    }
    let mut leased = Vec::new();
    for t in tasks {
        leased.extend(t.await.unwrap());
    }
    let unique: HashSet<&String> = leased.iter().collect();
    assert_eq!(leased.len(), JOBS, "a job was leased twice or never");
    assert_eq!(unique.len(), JOBS);
    let stats = b.store.queue_stats().await.unwrap();
    assert_eq!(
        stats.by_state.get(&JobState::Succeeded),
        Some(&(JOBS as u64))
    );
    assert_eq!(stats.oldest_waiting_since, None);
    verified(&*b.store).await;
}

/// An operator's action by `ops`: the job's new state, or the state that forbids it.
/// Freezes (SPEC §9): a leased job given back `frozen` keeps its attempts, is not due
/// before the end, then runs in the order the jobs were created (whichever was frozen
/// first); a frozen job can be cancelled.
async fn frozen_jobs_spend_no_attempt_and_run_in_creation_order_after_the_end(b: Backend) {
    let (store, replica) = (&*b.store, &*b.replica);
    let ids = [
        one_job(store, "1.0.0").await,
        one_job(store, "1.0.1").await,
        one_job(store, "1.0.2").await,
    ];
    let end = now_millis() + 1_500;
    // Leased and frozen in reverse order of creation.
    let mut leased = Vec::new();
    for _ in &ids {
        leased.push(store.lease_job("w1", LEASE).await.unwrap().unwrap());
    }
    for l in leased.iter().rev() {
        let frozen = Release {
            job_id: l.job.id.clone(),
            worker: "w1".into(),
            attempt: l.attempt,
            at: end,
            interrupted: None,
            frozen_by: vec!["weekend".into()],
            protected: None,
        };
        assert!(store.release_job(frozen).await.unwrap());
    }
    let job = replica.job(&ids[0]).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempts.len()), (JobState::Frozen, 0));
    let frozen = JobFilter {
        state: Some(JobState::Frozen),
        limit: 10,
        ..JobFilter::default()
    };
    assert_eq!(replica.jobs(frozen).await.unwrap().items.len(), 3);
    assert!(replica.lease_job("w2", LEASE).await.unwrap().is_none());
    assert_eq!(replica.next_wakeup().await.unwrap(), Some(end));
    assert_eq!(
        act(replica, &ids[2], OperatorAction::Cancel).await,
        Ok(JobState::Cancelled)
    );

    while now_millis() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in &ids[..2] {
        let l = replica.lease_job("w2", LEASE).await.unwrap().unwrap();
        assert_eq!((&l.job.id, l.attempt), (id, 1));
    }
    assert!(replica.lease_job("w2", LEASE).await.unwrap().is_none());
    let kinds = kinds(store).await;
    let count = |k| kinds.iter().filter(|x| **x == k).count();
    assert_eq!(
        (count(AuditKind::JobFrozen), count(AuditKind::JobUnfrozen)),
        (3, 2)
    );
    verified(store).await;
}

async fn runtime_freezes_start_once_end_once_and_are_seen_by_every_replica(b: Backend) {
    let (store, replica) = (&*b.store, &*b.replica);
    let now = now_millis();
    let hotfix = RuntimeFreeze {
        name: "hotfix".into(),
        to_repos: Some(vec!["docker-prod*".into()]),
        targets: None,
        from: now,
        until: now + DAY,
        reason: "incident 42".into(),
        started_by: "ops".into(),
    };
    assert!(store.start_freeze(hotfix.clone()).await.unwrap());
    assert!(!replica.start_freeze(hotfix.clone()).await.unwrap());
    assert_eq!(
        replica.freezes().await.unwrap(),
        std::slice::from_ref(&hotfix)
    );
    // A frozen job is due again as soon as the freeze is ended early.
    one_job(store, "1.0.0").await;
    let l = store.lease_job("w1", LEASE).await.unwrap().unwrap();
    let frozen = Release {
        job_id: l.job.id.clone(),
        worker: "w1".into(),
        attempt: 1,
        at: now + DAY,
        interrupted: None,
        frozen_by: vec!["hotfix".into()],
        protected: None,
    };
    assert!(store.release_job(frozen).await.unwrap());
    assert!(replica.end_freeze("hotfix", "ops").await.unwrap());
    assert!(!store.end_freeze("hotfix", "ops").await.unwrap());
    assert!(store.freezes().await.unwrap().is_empty());
    assert_eq!(
        store.lease_job("w1", LEASE).await.unwrap().unwrap().job.id,
        l.job.id
    );
    // An ended freeze's name can be used again.
    assert!(store.start_freeze(hotfix).await.unwrap());
    let kinds = kinds(store).await;
    assert!(kinds.contains(&AuditKind::FreezeStarted) && kinds.contains(&AuditKind::FreezeEnded));
    verified(store).await;
}

/// An override by `alice`, who may not override the freezes named in `barred`.
fn override_by_alice(comment: Option<&str>, barred: &[&str]) -> OverrideRequest {
    OverrideRequest {
        by: "alice".into(),
        comment: comment.map(Into::into),
        barred: barred.iter().map(|n| n.to_string()).collect(),
    }
}

/// Freeze overrides (SPEC §9): a frozen job shows the freezes holding it; an override
/// is decided on the job as the transaction reads it, queues it due now at either
/// replica, is kept with the job, and is on the record; any other state refuses it.
async fn a_freeze_override_queues_only_a_frozen_job_and_is_kept_with_it(b: Backend) {
    let (store, replica) = (&*b.store, &*b.replica);
    let id = one_job(store, "1.0.0").await;
    let queued = one_job(store, "1.0.1").await;
    let l = store.lease_job("w1", LEASE).await.unwrap().unwrap();
    assert_eq!(l.job.id, id);
    let end = now_millis() + DAY;
    let frozen = Release {
        job_id: id.clone(),
        worker: "w1".into(),
        attempt: l.attempt,
        at: end,
        interrupted: None,
        frozen_by: vec!["weekend".into(), "year-end".into()],
        protected: None,
    };
    assert!(store.release_job(frozen).await.unwrap());
    let job = replica.job(&id).await.unwrap().unwrap();
    let held = job.frozen.expect("a frozen job shows what holds it");
    assert_eq!(
        (held.by.as_slice(), held.until),
        (&["weekend".to_string(), "year-end".to_string()][..], end)
    );

    let refused = |o: OverrideOutcome| match o {
        OverrideOutcome::Refused(r) => r,
        other => panic!("not refused: {other:?}"),
    };
    let o = store
        .override_freeze(&id, override_by_alice(Some("hotfix"), &["year-end"]))
        .await
        .unwrap();
    assert_eq!(
        refused(o),
        OverrideRefusal::NotAnOverrider("year-end".into())
    );
    let o = store
        .override_freeze(&id, override_by_alice(None, &[]))
        .await
        .unwrap();
    assert_eq!(refused(o), OverrideRefusal::CommentRequired);
    let o = store
        .override_freeze(&queued, override_by_alice(Some("hotfix"), &[]))
        .await
        .unwrap();
    assert_eq!(refused(o), OverrideRefusal::InvalidState(JobState::Queued));
    let o = store
        .override_freeze("nope", override_by_alice(Some("hotfix"), &[]))
        .await
        .unwrap();
    assert!(matches!(o, OverrideOutcome::NotFound), "{o:?}");
    assert_eq!(
        store.job(&id).await.unwrap().unwrap().state,
        JobState::Frozen
    );

    let OverrideOutcome::Done(job) = replica
        .override_freeze(&id, override_by_alice(Some("hotfix"), &["other"]))
        .await
        .unwrap()
    else {
        panic!("the override was refused");
    };
    assert_eq!((job.state, job.frozen.as_ref()), (JobState::Queued, None));
    let kept = store.job(&id).await.unwrap().unwrap();
    assert_eq!(kept.state, JobState::Queued);
    assert_eq!(kept.frozen, None);
    let o = kept
        .freeze_override
        .expect("the override is kept with the job");
    assert_eq!((o.by.as_str(), o.comment.as_str()), ("alice", "hotfix"));
    assert_eq!(o.freezes, ["weekend", "year-end"]);
    assert_eq!(job.freeze_override.as_ref(), Some(&o));
    // Due now (after the job queued before the override), not at its freezes' end.
    let first = store.lease_job("w1", LEASE).await.unwrap().unwrap();
    assert_eq!(first.job.id, queued);
    let l = store.lease_job("w1", LEASE).await.unwrap().unwrap();
    assert_eq!((&l.job.id, l.attempt), (&id, 1));
    let o = store
        .override_freeze(&id, override_by_alice(Some("again"), &[]))
        .await
        .unwrap();
    assert_eq!(refused(o), OverrideRefusal::InvalidState(JobState::Running));

    let all = records(store, None, None).await;
    let overridden: Vec<_> = all
        .iter()
        .filter(|r| r.entry.kind == AuditKind::JobFreezeOverridden)
        .collect();
    assert_eq!(overridden.len(), 1);
    assert_eq!(overridden[0].entry.actor, "alice");
    assert_eq!(overridden[0].entry.job_id.as_deref(), Some(id.as_str()));
    assert_eq!(
        overridden[0].entry.message.as_deref(),
        Some("overrode weekend, year-end: hotfix")
    );
    verified(store).await;
}

async fn act(store: &dyn Store, id: &str, action: OperatorAction) -> Result<JobState, JobState> {
    match store.operate(id, action, "ops").await.unwrap() {
        OperatorOutcome::Done(job) => Ok(job.state),
        OperatorOutcome::Conflict(state) => Err(state),
        OperatorOutcome::NotFound => panic!("job {id} not found"),
    }
}

async fn operator_actions_move_only_the_states_that_allow_them(b: Backend) {
    let (store, replica) = (&*b.store, &*b.replica);
    let id = one_job(store, "1.0.0").await;
    use OperatorAction::{Cancel, Retry};
    assert_eq!(act(store, &id, Retry).await, Err(JobState::Queued));
    assert_eq!(act(replica, &id, Cancel).await, Ok(JobState::Cancelled));
    assert_eq!(act(store, &id, Cancel).await, Err(JobState::Cancelled));
    // A cancelled job is revived by a retry.
    assert_eq!(act(store, &id, Retry).await, Ok(JobState::Queued));

    // A failed job: retried with its history kept and a fresh attempt budget.
    let leased = store.lease_job("w", LEASE).await.unwrap().unwrap();
    let fail = Transition::Failed(JobError::new(
        JobErrorCode::UpstreamRejected,
        "403 Forbidden",
    ));
    assert!(record(store, &leased, "w", fail).await);
    assert_eq!(act(replica, &id, Retry).await, Ok(JobState::Queued));
    let again = store.lease_job("w", LEASE).await.unwrap().unwrap();
    assert_eq!((again.attempt, again.attempts_in_budget), (2, 1));
    assert_eq!(again.job.attempts.len(), 1);
    // Running: neither action applies.
    assert_eq!(act(store, &id, Cancel).await, Err(JobState::Running));

    let missing = store.operate("nope", Retry, "ops").await.unwrap();
    assert!(matches!(missing, OperatorOutcome::NotFound));
    // A job whose templates failed has nothing to retry.
    let mut broken = planned(&new_id(), "2.0.0", &[]);
    broken.jobs.push(NewJob {
        id: new_id(),
        rule: "broken".into(),
        target: "jfrog".into(),
        action: Err(JobError::new(JobErrorCode::TemplateError, "no tag")),
        approval: None,
        initiator: None,
        gate: None,
        soak_until: None,
        trace_parent: None,
    });
    let out = store.ingest(vec![broken], POLICY).await.unwrap();
    let broken_id = &out[0].jobs[0].id;
    assert_eq!(act(store, broken_id, Retry).await, Err(JobState::Failed));

    let actions = records(store, None, Some(&id)).await;
    let by_ops: Vec<AuditKind> = actions
        .iter()
        .filter(|r| r.entry.actor == "ops")
        .map(|r| r.entry.kind)
        .collect();
    assert_eq!(
        by_ops,
        [
            AuditKind::JobCancelled,
            AuditKind::JobRetried,
            AuditKind::JobRetried
        ]
    );
    verified(store).await;
}

/// An event from `ci` naming what the promotion of `tag` produced, with `digest`,
/// and a job for rule `next` (promoting something else).
fn echo(tag: &str, digest: Option<String>) -> NewEvent {
    let mut echo = planned(&new_id(), tag, &[]);
    echo.jobs.push(job("next", "2.0.0"));
    echo.event.subject = promote(tag).output_subject();
    echo.event.subject.digest = digest;
    echo
}

/// Ingests `new`; returns the stored event's parent and depth, and its job count.
async fn chain_of(
    store: &dyn Store,
    new: NewEvent,
    policy: IngestPolicy,
) -> (Option<String>, u32, usize) {
    let out = store.ingest(vec![new], policy).await.unwrap();
    let stored = store.event(&out[0].event_id).await.unwrap().unwrap();
    let e = stored.event;
    (e.parent_job_id, e.chain_depth, out[0].jobs.len())
}

async fn an_echo_joins_the_chain_of_the_promotion_it_echoes(b: Backend) {
    let id = one_job(&*b.store, "1.0.0").await;
    let output = promote("1.0.0").output_subject();
    let (digest, other) = (output.digest.clone(), Some(format!("sha256:{:0>64}", "f")));
    let store = &*b.replica;
    // Past the depth limit the echo is stored and its jobs refused, on the record.
    let shallow = IngestPolicy {
        max_chain_depth: 0,
        ..POLICY
    };
    let refused = (Some(id.clone()), 1, 0);
    assert_eq!(
        chain_of(store, echo("1.0.0", digest.clone()), shallow).await,
        refused
    );
    let notes = records(&*b.store, Some(AuditKind::ChainRefused), None).await;
    assert_eq!(notes.len(), 1);
    let joined = (Some(id.clone()), 1, 1);
    assert_eq!(chain_of(store, echo("1.0.0", digest), POLICY).await, joined);
    // A second echo joins too, and `next` acts once per parent promotion.
    let again = (Some(id.clone()), 1, 0);
    assert_eq!(chain_of(store, echo("1.0.0", None), POLICY).await, again);
    let alone = (None, 0, 1);
    assert_eq!(chain_of(store, echo("1.0.0", other), POLICY).await, alone);
    assert_eq!(chain_of(store, echo("9.9.9", None), POLICY).await, alone);
    // A promotion older than the window, or cancelled, has no echoes.
    let narrow = IngestPolicy {
        dedupe_window: Duration::from_secs(1),
        ..POLICY
    };
    let mut late = echo("1.0.0", None);
    late.event.received_at += 2_000;
    assert_eq!(chain_of(store, late, narrow).await, alone);
    act(&*b.store, &id, OperatorAction::Cancel).await.unwrap();
    assert_eq!(chain_of(store, echo("1.0.0", None), POLICY).await, alone);
    verified(&*b.store).await;
}

async fn a_rule_acts_once_per_parent_promotion(b: Backend) {
    let parent = one_job(&*b.store, "1.0.0").await;
    let leased = b.store.lease_job("w", LEASE).await.unwrap().unwrap();
    // The success emits gantry's own event, whose rule `next` makes a child job.
    let mut emitted = planned(&format!("job:{parent}"), "1.0.0", &["next"]);
    emitted.event.source = "gantry".into();
    emitted.event.parent_job_id = Some(parent.clone());
    emitted.event.chain_depth = 1;
    let mut done = report(&leased, "w", Transition::Succeeded(Outcome::Promoted));
    done.emit = Some(emitted.clone());
    assert!(b.store.record_attempt(done).await.unwrap());
    let child = b
        .replica
        .jobs(JobFilter {
            rule: Some("next".into()),
            limit: 10,
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(child.items.len(), 1);
    let child = &child.items[0];
    assert_eq!(child.parent_job_id.as_deref(), Some(parent.as_str()));
    assert_eq!((child.chain_depth, child.state), (1, JobState::Queued));
    assert_eq!(child.event_id, emitted.event.id);
    let children = b
        .replica
        .jobs(JobFilter {
            parent: Some(parent.clone()),
            limit: 10,
            ..JobFilter::default()
        })
        .await
        .unwrap();
    let children: Vec<&str> = children.items.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(children, [child.id.as_str()]);

    // The upstream's echo of the same promotion: stored, but `next` acts only once.
    let mut echo = planned("echo-1", "1.0.0", &["next"]);
    echo.event.source = "artifactory".into();
    echo.event.parent_job_id = Some(parent.clone());
    echo.event.chain_depth = 1;
    let out = b.replica.ingest(vec![echo], POLICY).await.unwrap();
    assert!(!out[0].duplicate);
    assert!(out[0].jobs.is_empty());
    let dups = records(&*b.store, Some(AuditKind::JobDuplicate), None).await;
    assert_eq!(dups.len(), 1);
    assert_eq!(dups[0].entry.job_id.as_deref(), Some(child.id.as_str()));
    verified(&*b.store).await;
}

async fn listings_filter_and_page_with_cursors(b: Backend) {
    let mut ids = Vec::new();
    for i in 0..5 {
        let source = if i < 3 { "ci" } else { "artifactory" };
        let rule = if i % 2 == 0 { "a" } else { "b" };
        let mut new = planned(&new_id(), &format!("1.0.{i}"), &[rule]);
        new.event.source = source.into();
        if i == 4 {
            new.event.subject.image = Some("team/web".into());
        }
        ids.push(new.event.id.clone());
        b.store.ingest(vec![new], POLICY).await.unwrap();
    }
    let s = &*b.replica;
    let page = |before: Option<String>| EventFilter {
        before,
        limit: 2,
        ..EventFilter::default()
    };
    let first = s.events(page(None)).await.unwrap();
    let second = s.events(page(first.next.clone())).await.unwrap();
    let third = s.events(page(second.next.clone())).await.unwrap();
    let seen: Vec<String> = [&first, &second, &third]
        .iter()
        .flat_map(|p| p.items.iter().map(|e| e.event.id.clone()))
        .collect();
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);
    assert!(first.next.is_some() && third.next.is_none());
    assert_eq!(first.items[0].jobs.len(), 1);
    let from = s
        .events(EventFilter {
            source: Some("artifactory".into()),
            kind: Some("test-passed".into()),
            limit: 10,
            ..EventFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(from.items.len(), 2);
    assert!(from.next.is_none());

    let rule_a = s
        .jobs(JobFilter {
            rule: Some("a".into()),
            state: Some(JobState::Queued),
            limit: 2,
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(rule_a.items.len(), 2);
    let rest = s
        .jobs(JobFilter {
            rule: Some("a".into()),
            before: rule_a.next.clone(),
            limit: 2,
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1);
    assert!(rest.items[0].id < rule_a.items[1].id);
    let of_image = |image: &str| JobFilter {
        image: Some(image.into()),
        limit: 10,
        ..JobFilter::default()
    };
    let web = s.jobs(of_image("team/web")).await.unwrap();
    assert_eq!(web.items.len(), 1);
    assert_eq!(web.items[0].event_id, ids[4]);
    assert_eq!(s.jobs(of_image("team")).await.unwrap().items.len(), 0);

    let audit = |after: Option<i64>| AuditFilter {
        after,
        limit: 4,
        ..AuditFilter::default()
    };
    let head = s.audit(audit(None)).await.unwrap();
    let seqs: Vec<i64> = head.items.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    assert_eq!(head.next.as_deref(), Some("4"));
    let tail = s.audit(audit(Some(4))).await.unwrap();
    assert_eq!(tail.items[0].seq, 5);
    let created = s
        .audit(AuditFilter {
            kind: Some(AuditKind::JobCreated),
            tag: Some("1.0.3".into()),
            image: Some("app".into()),
            rule: Some("b".into()),
            since: Some(now_millis() - DAY),
            until: Some(now_millis() + DAY),
            limit: 10,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(created.items.len(), 1);
    assert_eq!(
        created.items[0].entry.event_id.as_deref(),
        Some(ids[3].as_str())
    );
}

async fn the_audit_chain_stays_linear_under_concurrent_appends(b: Backend) {
    const TASKS: usize = 8;
    const EACH: usize = 25;
    let mut tasks = Vec::new();
    for k in 0..TASKS {
        let store = b.instance(k);
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                if i % 5 == 0 {
                    // Ingests chain several records in one transaction.
                    store
                        .ingest(vec![planned(&new_id(), "1.0.0", &["r"])], POLICY)
                        .await
                        .unwrap();
                } else {
                    let entry = AuditEntry::rejections("test", &format!("task {k} record {i}"), 1);
                    store.append_audit(entry).await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Each ingest writes two records: the event received and its job created.
    let ingests = TASKS * EACH / 5;
    let expected = (TASKS * EACH - ingests + ingests * 2) as u64;
    assert_eq!(verified(&*b.store).await, expected);
    let rows = b.replica.audit_chain(0, 10_000).await.unwrap();
    let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=expected as i64).collect::<Vec<_>>());
}

async fn pruning_cuts_the_chain_at_a_checkpoint_that_verifies(b: Backend) {
    let now = now_millis();
    for i in 0..10 {
        let mut e = AuditEntry::rejections("ci", &format!("record {i}"), 1);
        e.at = now - (10 - i) * DAY;
        b.store.append_audit(e).await.unwrap();
    }
    // An old delivery, past the dedupe window.
    let mut old = planned("old-delivery", "1.0.0", &[]);
    old.event.received_at = now - 2 * DAY;
    b.store.ingest(vec![old], POLICY).await.unwrap();

    // Keep the last 4 days: records 1–6 go, and a checkpoint names record 6's hash.
    let pruned = b
        .replica
        .prune(Some(now - 4 * DAY - 1), now - DAY)
        .await
        .unwrap();
    assert_eq!((pruned.audit_records, pruned.deliveries), (6, 1));
    let verdict = b.store.verify_audit().await.unwrap();
    assert!(verdict.ok, "{verdict:?}");
    // Records 7–10, the received event (11) and the checkpoint (12).
    assert_eq!((verdict.records, verdict.head_seq), (6, Some(12)));
    let rows = b.store.audit_chain(0, 100).await.unwrap();
    assert_eq!(rows.first().map(|r| r.seq), Some(7));
    // Nothing older than the cut is left, so a second pass removes nothing.
    let again = b
        .store
        .prune(Some(now - 4 * DAY - 1), now - DAY)
        .await
        .unwrap();
    assert_eq!((again.audit_records, again.deliveries), (0, 0));
    assert!(b.store.verify_audit().await.unwrap().ok);

    // The pruned delivery is new again.
    let out = b
        .store
        .ingest(vec![planned("old-delivery", "1.0.0", &[])], POLICY)
        .await
        .unwrap();
    assert!(!out[0].duplicate);
}

/// Hourly pruning leaves a checkpoint an hour: with `retain = "400d"` that is
/// thousands of them, and `verify` must find the one that names the cut however many
/// came before it; a forged one still breaks the chain.
async fn verify_finds_the_audit_checkpoint_by_sequence_among_thousands(b: Backend) {
    const RECORDS: i64 = 1100;
    const CUTS: i64 = 1050;
    // Record `i` (seq `i`) is `i` ms after the epoch: long past any retention.
    for i in 1..=RECORDS {
        let mut e = AuditEntry::rejections("ci", &format!("record {i}"), 1);
        e.at = i;
        b.store.append_audit(e).await.unwrap();
    }
    // Each pass cuts one more record and appends a checkpoint (stamped now) at the
    // head, so every checkpoint survives the later cuts.
    for i in 1..=CUTS {
        let pruned = b.store.prune(Some(i + 1), 0).await.unwrap();
        assert_eq!(pruned.audit_records, 1);
    }
    let head = RECORDS + CUTS;
    let verdict = b.replica.verify_audit().await.unwrap();
    assert!(verdict.ok, "{verdict:?}");
    assert_eq!(
        (verdict.records, verdict.head_seq),
        ((head - CUTS) as u64, Some(head))
    );

    // An intruder removes five more records and rewrites the newest checkpoint to
    // name the new cut: the anchor fits, the checkpoint's own hash does not.
    let rows = b.store.audit_chain(CUTS + 4, 1).await.unwrap();
    let fifth = rows[0].record.as_ref().unwrap();
    let anchor = gantry::audit::Anchor {
        seq: fifth.seq,
        hash: fifth.hash.clone(),
    };
    let forged = AuditEntry::pruned(&anchor, (CUTS + 5) as u64)
        .message
        .unwrap();
    b.tamper(&format!(
        "DELETE FROM audit WHERE seq > {CUTS} AND seq <= {}; \
         UPDATE audit SET message = '{forged}' WHERE seq = {head};",
        fifth.seq
    ))
    .await;
    let verdict = b.store.verify_audit().await.unwrap();
    assert!(!verdict.ok);
    assert_eq!(verdict.first_broken, Some(head), "{verdict:?}");
}

async fn the_work_signal_fires_after_a_commit_that_queues_work(b: Backend) {
    // On PostgreSQL the replica hears the other instance's commit (LISTEN/NOTIFY).
    let signal = b.replica.work_signal();
    let notified = signal.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    b.store
        .ingest(vec![planned(&new_id(), "1.0.0", &["r"])], POLICY)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), notified)
        .await
        .expect("the work signal did not fire");
}

/// The connection that listens for other replicas' work is re-established when it
/// drops, and wakes workers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_listener_reconnects_after_its_connection_drops() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let url = StoreUrl::Postgres(PostgresUrl::parse(&schema.url()).unwrap());
    let (store, replica) = (
        gantry::store::open(&url).await.unwrap(),
        gantry::store::open(&url).await.unwrap(),
    );
    let admin = schema.connect().await;
    let listeners = "SELECT pid FROM pg_stat_activity
        WHERE application_name = $1 AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()";
    let before = admin.query(listeners, &[&schema.name()]).await.unwrap();
    assert_eq!(before.len(), 2, "one listener per instance");
    let killed = admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = $1 AND query LIKE 'LISTEN%'",
            &[&schema.name()],
        )
        .await
        .unwrap();
    assert_eq!(killed, 2);
    let old: HashSet<i32> = before.iter().map(|r| r.get(0)).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now: HashSet<i32> = admin
            .query(listeners, &[&schema.name()])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        if now.len() == 2 && now.is_disjoint(&old) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the listeners did not come back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Past the wake-up a reconnection gives (work may have been queued meanwhile).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let b = Backend {
        store,
        replica,
        db: Box::new(schema),
    };
    the_work_signal_fires_after_a_commit_that_queues_work(b).await;
}

/// SQLite commits a batch of concurrent writes together; one that fails rolls the
/// batch back and the others run again without it, so only it fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_failing_write_fails_alone_in_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.db");
    let store = gantry::store::open(&StoreUrl::Sqlite(path.clone()))
        .await
        .unwrap();
    let broken = one_job(&*store, "1.0.0").await;
    let conn = rusqlite::Connection::open(&path).unwrap();
    let n = conn
        .execute("UPDATE jobs SET state = 'bogus' WHERE id = ?1", [&broken])
        .unwrap();
    assert_eq!(n, 1);

    // Every write is queued before the writer can take any but the first: polled
    // together, each future sends its write on its first poll.
    let ingests =
        (0..50).map(|i| store.ingest(vec![planned(&format!("d{i}"), "2.0.0", &["r"])], POLICY));
    let (mut ingests, failing) = tokio::join!(
        futures_util::future::join_all(ingests),
        store.operate(&broken, OperatorAction::Retry, "ops"),
    );
    assert!(failing.is_err(), "{failing:?}");
    for out in ingests.drain(..) {
        let out = out.unwrap();
        assert_eq!((out[0].duplicate, out[0].jobs.len()), (false, 1));
    }
    let count = |table: &str| -> i64 {
        let sql = format!("SELECT count(*) FROM {table}");
        conn.query_row(&sql, [], |r| r.get(0)).unwrap()
    };
    assert_eq!((count("events"), count("jobs")), (51, 51));
    verified(&*store).await;
}

/// An event with one job under `approval`.
fn awaiting(tag: &str, approval: ApprovalPolicy) -> NewEvent {
    let mut new = planned(&new_id(), tag, &[]);
    let mut j = job("needs-approval", tag);
    j.approval = Some(approval);
    new.jobs.push(j);
    new
}

fn policy(count: u32, timeout_ms: Option<i64>) -> ApprovalPolicy {
    ApprovalPolicy {
        count,
        groups: Vec::new(),
        timeout_ms,
        allow_self: false,
        all_of: Vec::new(),
        protections: Vec::new(),
    }
}

fn approve(by: &str) -> Ballot {
    Ballot {
        by: by.into(),
        groups: Vec::new(),
        verdict: Verdict::Approved,
        comment: None,
        as_group: None,
    }
}

/// Eight approvers at once, half at each replica, on a job that needs two: it is
/// queued exactly once, every verdict is recorded once, and none is lost.
async fn approvals_racing_at_two_replicas_queue_the_job_exactly_once(b: Backend) {
    let out = b
        .store
        .ingest(vec![awaiting("1.0.0", policy(2, None))], POLICY)
        .await
        .unwrap();
    let id = out[0].jobs[0].id.clone();
    let job = b.replica.job(&id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::AwaitingApproval);

    let tasks: Vec<_> = (0..8)
        .map(|k| {
            let store = b.instance(k);
            let id = id.clone();
            tokio::spawn(async move {
                store
                    .decide_approval(&id, approve(&format!("approver-{k}")))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut done = 0;
    let mut late = 0;
    for t in tasks {
        match t.await.unwrap() {
            ApprovalOutcome::Done(_) => done += 1,
            ApprovalOutcome::Refused(_) => late += 1,
            ApprovalOutcome::NotFound => panic!("the job is gone"),
        }
    }
    // Two made the count; the others found the job queued (or approved with them).
    assert_eq!(done + late, 8);
    assert!(done >= 2, "{done}");
    let job = b.store.job(&id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.approvals.len(), 2, "{:?}", job.approvals);
    let approved = records(&*b.store, Some(AuditKind::JobApproved), Some(&id)).await;
    assert_eq!(approved.len(), 1);
    assert_eq!(verified(&*b.store).await, verified(&*b.replica).await);
}

/// An awaiting job is not due; past its deadline one expiry pass moves it, once.
async fn an_awaiting_job_is_not_leased_and_expires_past_its_deadline(b: Backend) {
    let out = b
        .store
        .ingest(vec![awaiting("2.0.0", policy(1, Some(50)))], POLICY)
        .await
        .unwrap();
    let id = out[0].jobs[0].id.clone();
    assert!(b.store.lease_job("w", LEASE).await.unwrap().is_none());
    let wake = b.store.next_wakeup().await.unwrap().unwrap();
    assert!(wake <= now_millis() + 50, "{wake}");
    tokio::time::sleep(Duration::from_millis(60)).await;
    let (one, other) = tokio::join!(b.store.expire_approvals(), b.replica.expire_approvals());
    assert_eq!(one.unwrap() + other.unwrap(), 1);
    let job = b.replica.job(&id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Expired);
    let expired = records(&*b.store, Some(AuditKind::JobExpired), Some(&id)).await;
    assert_eq!(expired.len(), 1);
    assert!(b.store.next_wakeup().await.unwrap().is_none());
    let refused = b.store.decide_approval(&id, approve("late")).await.unwrap();
    assert!(matches!(refused, ApprovalOutcome::Refused(_)));
}

async fn notifications_are_written_with_their_change_leased_once_fenced_and_pruned(b: Backend) {
    use gantry::notify::{Answer, DeliveryReport, NotificationState, Routes, judge};
    let (a, other) = (b.instance(0), b.instance(1));
    for store in [&a, &other] {
        store.set_routes(Arc::new(
            Routes::default()
                .with("chat", [AuditKind::JobCreated], Some(vec!["r".into()]))
                .with(
                    "sink",
                    [AuditKind::EventReceived, AuditKind::JobCreated],
                    None,
                ),
        ));
    }
    // One event, a job of `r` and one of `s`: `chat` wants the first job's record,
    // `sink` the event's and both jobs'.
    a.ingest(vec![planned("d1", "1.0", &["r", "s"])], POLICY)
        .await
        .unwrap();
    let page = a
        .notifications(NotificationFilter {
            limit: 100,
            ..NotificationFilter::default()
        })
        .await
        .unwrap();
    let mut by_sink: HashMap<String, usize> = HashMap::new();
    for n in &page.items {
        *by_sink.entry(n.sink.clone()).or_default() += 1;
        assert_eq!(n.state, NotificationState::Pending);
        assert_eq!(n.tries, 0);
    }
    assert_eq!(
        by_sink,
        HashMap::from([("chat".into(), 1), ("sink".into(), 3)])
    );
    // Each notification's sequence is its audit record's.
    let created = records(&*a, Some(AuditKind::JobCreated), None).await;
    let chat = page.items.iter().find(|n| n.sink == "chat").unwrap();
    let rule_r = created
        .iter()
        .find(|r| r.entry.rule.as_deref() == Some("r"))
        .unwrap();
    assert_eq!(chat.sequence, rule_r.seq);
    assert_eq!(chat.job_id, rule_r.entry.job_id);

    // Two deliverers at two replicas lease `sink` at once: each notification once.
    let lease = Duration::from_secs(30);
    let (x, y) = tokio::join!(
        a.lease_notifications("sink", "x", 10, lease),
        other.lease_notifications("sink", "y", 10, lease)
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.len() + y.len(), 3, "{x:?} {y:?}");
    let ids: HashSet<&str> = x.iter().chain(&y).map(|n| n.id.as_str()).collect();
    assert_eq!(ids.len(), 3);
    assert!(
        a.lease_notifications("sink", "z", 10, lease)
            .await
            .unwrap()
            .is_empty()
    );

    // Only the holder of the lease, for the try it made, records it.
    let (held, worker) = match x.first() {
        Some(n) => (n.clone(), "x"),
        None => (y[0].clone(), "y"),
    };
    assert_eq!(held.try_n, 1);
    let verdict = |answer, n: u32| judge(answer, n, &[Duration::from_secs(60)], now_millis());
    let report = |worker: &str, try_n: u32, answer| DeliveryReport {
        id: held.id.clone(),
        sink: "sink".into(),
        worker: worker.into(),
        try_n,
        kind: held.kind,
        job_id: held.job_id.clone(),
        judged: verdict(answer, try_n),
    };
    let ok = || Answer::Status {
        status: 204,
        retry_after: None,
        said: String::new(),
    };
    assert!(!other.record_delivery(report("z", 1, ok())).await.unwrap());
    assert!(
        !other
            .record_delivery(report(worker, 2, ok()))
            .await
            .unwrap()
    );
    // A 503: retried a minute on, not leased before.
    let refused = Answer::Status {
        status: 503,
        retry_after: None,
        said: "down".into(),
    };
    assert!(
        other
            .record_delivery(report(worker, 1, refused))
            .await
            .unwrap()
    );
    let all = other
        .notifications(NotificationFilter {
            limit: 100,
            ..NotificationFilter::default()
        })
        .await
        .unwrap();
    let retried = all.items.iter().find(|n| n.id == held.id).unwrap();
    assert_eq!(retried.state, NotificationState::Pending);
    assert_eq!(retried.last_status, Some(503));
    assert_eq!(retried.last_error.as_deref(), Some("HTTP 503: down"));
    assert!(
        retried.next_try_at.unwrap() > now_millis() + 40_000,
        "{retried:?}"
    );
    // The next due is the earliest of the other two leases' ends.
    let next = other.next_notification("sink").await.unwrap().unwrap();
    assert!(next > now_millis() + 20_000, "{next}");

    // A 410 on `chat` disables it, once on the record; nothing of it is leased.
    let chat_lease = a.lease_notifications("chat", "x", 10, lease).await.unwrap();
    let gone = Answer::Status {
        status: 410,
        retry_after: None,
        said: String::new(),
    };
    let chat_report = DeliveryReport {
        id: chat_lease[0].id.clone(),
        sink: "chat".into(),
        worker: "x".into(),
        try_n: 1,
        kind: chat_lease[0].kind,
        job_id: chat_lease[0].job_id.clone(),
        judged: verdict(gone, 1),
    };
    assert!(a.record_delivery(chat_report).await.unwrap());
    assert_eq!(other.disabled_sinks().await.unwrap()[0].name, "chat");
    assert_eq!(other.next_notification("chat").await.unwrap(), None);
    assert!(
        other
            .lease_notifications("chat", "y", 10, lease)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        records(&*a, Some(AuditKind::NotificationSinkDisabled), None)
            .await
            .len(),
        1
    );
    assert!(other.enable_sink("chat", "ops").await.unwrap());
    assert!(!other.enable_sink("chat", "ops").await.unwrap());
    assert_eq!(
        other
            .lease_notifications("chat", "y", 10, lease)
            .await
            .unwrap()
            .len(),
        1
    );

    // Delivered notifications are pruned past the window; pending ones stay.
    let sent = x.iter().chain(&y).find(|n| n.id != held.id).unwrap();
    let holder = if x.iter().any(|n| n.id == sent.id) {
        "x"
    } else {
        "y"
    };
    let delivered = DeliveryReport {
        id: sent.id.clone(),
        sink: "sink".into(),
        worker: holder.into(),
        try_n: 1,
        kind: sent.kind,
        job_id: sent.job_id.clone(),
        judged: verdict(ok(), 1),
    };
    assert!(a.record_delivery(delivered).await.unwrap());
    let pruned = a.prune(None, now_millis() + 1).await.unwrap();
    assert_eq!(pruned.notifications, 1);
    let left = a
        .notifications(NotificationFilter {
            limit: 100,
            ..NotificationFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(left.items.len(), 3);
    assert!(
        left.items
            .iter()
            .all(|n| n.state == NotificationState::Pending)
    );
    assert!(verified(&*a).await > 0);
}
