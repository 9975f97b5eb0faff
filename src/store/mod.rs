//! Durable state behind one trait of domain verbs, so the rest of gantry never sees
//! SQL and a second engine is a second implementation, not a rewrite.

mod outbox;
mod postgres;
mod rows;
mod sessions;
mod sqlite;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::Notify;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use crate::audit::{Anchor, AuditEntry, AuditKind, AuditRecord, ChainCheck, Verdict};
use crate::config::StoreUrl;
use crate::domain::approval::{ApprovalPolicy, Ballot, Refusal};
use crate::domain::freeze::{OverrideRefusal, OverrideRequest, RuntimeFreeze};
use crate::domain::gate::Evidence;
use crate::domain::lifecycle::Requires;
use crate::domain::{
    AttemptRecord, Event, Forbidden, Job, JobError, JobEvent, JobState, Millis, NewJob, Outcome,
};
use crate::notify::{DeliveryReport, Leased, Notification, NotificationState, Routes};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or written now; callers answer 503 or retry.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The database holds something gantry did not write; a bug or a hand edit.
    #[error("store data is invalid: {0}")]
    Corrupt(String),
}

/// A move the life cycle forbids on a job the store has fenced (a leased job is
/// `running`) can only come from a bug, as a corrupt row would.
impl From<Forbidden> for StoreError {
    fn from(f: Forbidden) -> Self {
        StoreError::Corrupt(f.to_string())
    }
}

/// An event and the jobs the rules planned for it, to be committed together.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event: Event,
    pub jobs: Vec<NewJob>,
    /// What the event is evidence for, in the gates of the rules (SPEC §9); kept
    /// whether or not jobs are refused.
    pub evidence: Vec<Evidence>,
    /// Decisions made while planning (a chain refused) to record with the event.
    pub notes: Vec<AuditEntry>,
}

impl NewEvent {
    /// This event as stored. When it echoes a promotion (Artifactory's
    /// `docker.promoted`, a registry push of the promoted tag) it joins that
    /// promotion's chain: the job becomes its parent and it goes one level deeper, so
    /// rules acting on it neither start a second copy of the next stage nor escape
    /// `max_chain_depth`. `self` stays as planned (a batch may be run again).
    pub fn joined(&self, link: Option<ChainLink>, max_chain_depth: u32) -> Cow<'_, NewEvent> {
        let Some(link) = link else {
            return Cow::Borrowed(self);
        };
        let mut echo = self.clone();
        echo.event.parent_job_id = Some(link.job_id);
        echo.event.chain_depth = link.chain_depth + 1;
        echo.refuse_past(max_chain_depth);
        Cow::Owned(echo)
    }

    /// Past `max_chain_depth` the event's jobs are not started; a note on the record
    /// says which promotions were refused.
    pub fn refuse_past(&mut self, max_chain_depth: u32) {
        if self.event.chain_depth > max_chain_depth && !self.jobs.is_empty() {
            let refused: Vec<String> = self.jobs.iter().map(|j| j.rule.clone()).collect();
            let note = AuditEntry::chain_refused(&self.event, &refused, max_chain_depth);
            self.notes.push(note);
            self.jobs.clear();
        }
    }
}

/// The job whose promotion an event echoes, and how deep its chain is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainLink {
    pub job_id: String,
    pub chain_depth: u32,
}

/// How [`Store::ingest`] treats each event of a batch.
#[derive(Debug, Clone, Copy)]
pub struct IngestPolicy {
    /// A delivery seen again within this window is a duplicate; an echo is looked for
    /// among the promotions made within it.
    pub dedupe_window: Duration,
    pub max_chain_depth: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct JobRef {
    pub id: String,
    pub rule: String,
}

/// What became of one event offered to [`Store::ingest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct IngestOutcome {
    /// The stored event, or for a duplicate the event first stored for that delivery.
    pub event_id: String,
    pub jobs: Vec<JobRef>,
    pub duplicate: bool,
}

/// A job a worker holds under lease, about to make attempt number `attempt`.
#[derive(Debug, Clone)]
pub struct LeasedJob {
    pub job: Job,
    pub attempt: u32,
    /// Attempts made since the job was queued or last retried by an operator: what
    /// counts against `max_attempts`.
    pub attempts_in_budget: u32,
    pub started_at: Millis,
}

/// An operator's action on a job; which states allow it is the life cycle's table
/// (`domain::lifecycle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorAction {
    /// Start the job over, history kept, attempt budget renewed.
    Retry,
    /// Stop the job; a retry can revive it.
    Cancel,
}

impl OperatorAction {
    /// The life cycle's event for this action on a job whose policy still
    /// `requires` something (a retried job then waits for it again).
    pub fn event(self, requires: Requires) -> JobEvent {
        match self {
            OperatorAction::Retry => JobEvent::OperatorRetry { requires },
            OperatorAction::Cancel => JobEvent::OperatorCancel,
        }
    }

    /// Whether `job` as it stands allows this action: the decision the stores make
    /// when it is asked, for a page to offer only the buttons that apply.
    pub fn allowed_on(self, job: &Job) -> bool {
        rows::operator_move(job, self).is_ok()
    }
}

/// What became of an operator's action.
#[derive(Debug, Clone)]
pub enum OperatorOutcome {
    Done(Box<Job>),
    NotFound,
    /// The job's state does not allow the action.
    Conflict(JobState),
}

/// What became of a verdict on a job ([`Store::decide_approval`]).
#[derive(Debug, Clone)]
pub enum ApprovalOutcome {
    /// Recorded (or counted already); the job as it now is.
    Done(Box<Job>),
    NotFound,
    /// `domain::approval` refused the verdict.
    Refused(Refusal),
}

/// How an attempt ended, with what the job keeps of it; the state it leads to is
/// the life cycle's ([`Transition::event`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Succeeded(Outcome),
    Retry { at: Millis },
    Failed(JobError),
}

impl Transition {
    /// The life cycle's event for this end of an attempt.
    pub fn event(&self) -> JobEvent {
        match self {
            Transition::Succeeded(_) => JobEvent::Succeeded,
            Transition::Retry { .. } => JobEvent::Retry,
            Transition::Failed(_) => JobEvent::Failed,
        }
    }
}

/// The result of one attempt, with the audit records that describe it; committed
/// together, and only while the reporting worker still holds the lease.
#[derive(Debug, Clone)]
pub struct AttemptReport {
    pub job_id: String,
    pub worker: String,
    pub attempt: AttemptRecord,
    pub transition: Transition,
    pub audit: Vec<AuditEntry>,
    /// The `gantry.promoted` event a success emits, stored with it atomically.
    pub emit: Option<NewEvent>,
}

/// A leased job given back: not attempted (held by a circuit breaker or a
/// shutdown), or interrupted mid-attempt (recorded, attempt spent).
#[derive(Debug, Clone)]
pub struct Release {
    pub job_id: String,
    pub worker: String,
    pub attempt: u32,
    /// When the job becomes due again.
    pub at: Millis,
    pub interrupted: Option<AttemptRecord>,
    /// The freezes holding the job back (SPEC §9), `at` being when the last ends;
    /// empty when it was not a freeze.
    pub frozen_by: Vec<String>,
    /// The approval the job must await first, with a protection's that was not in
    /// force when it was planned (SPEC §9); `None` when it was not a protection.
    pub protected: Option<ApprovalPolicy>,
}

impl Release {
    /// The life cycle's event for this release. `attempt` is the lease's attempt
    /// number, so a number above 1 means the job had attempts before this one.
    pub fn event(&self) -> JobEvent {
        match self.interrupted {
            Some(_) => JobEvent::Interrupted,
            None if self.protected.is_some() => JobEvent::Protected,
            None if !self.frozen_by.is_empty() => JobEvent::Frozen,
            None => JobEvent::Released {
                after_attempts: self.attempt > 1,
            },
        }
    }
}

/// What became of a freeze override ([`Store::override_freeze`]).
#[derive(Debug, Clone)]
pub enum OverrideOutcome {
    /// The job as it now is: queued, due at once.
    Done(Box<Job>),
    NotFound,
    /// `domain::freeze::decide_override` refused it.
    Refused(OverrideRefusal),
}

/// A stored event with the jobs it produced, as `GET /api/v1/events` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StoredEvent {
    #[serde(flatten)]
    pub event: Event,
    pub jobs: Vec<JobSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct JobSummary {
    pub id: String,
    pub rule: String,
    pub state: JobState,
}

#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub source: Option<String>,
    pub kind: Option<String>,
    /// Cursor: only events received before this event id (ids sort by time).
    pub before: Option<String>,
    pub limit: usize,
}

#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub rule: Option<String>,
    /// Jobs of events about this image (repository path without the tag).
    pub image: Option<String>,
    /// The jobs a chain made from this job's success (SPEC §11: a job's children).
    pub parent: Option<String>,
    /// Cursor: only jobs created before this job id (ids sort by creation).
    pub before: Option<String>,
    pub limit: usize,
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub since: Option<Millis>,
    pub until: Option<Millis>,
    pub rule: Option<String>,
    pub image: Option<String>,
    pub tag: Option<String>,
    pub kind: Option<AuditKind>,
    pub job: Option<String>,
    /// Cursor: only records after this sequence number.
    pub after: Option<i64>,
    pub limit: usize,
}

/// One stored audit record, or why it cannot be read (for verification, where an
/// unreadable record is a broken one, not an error).
#[derive(Debug, Clone)]
pub struct ChainRow {
    pub seq: i64,
    pub record: Result<AuditRecord, String>,
}

/// What a pruning pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    pub audit_records: u64,
    pub deliveries: u64,
    /// Delivered and dropped notifications.
    pub notifications: u64,
}

#[derive(Debug, Clone, Default)]
pub struct NotificationFilter {
    pub state: Option<NotificationState>,
    pub sink: Option<String>,
    /// Cursor: only notifications made before this one (ids sort by time).
    pub before: Option<String>,
    pub limit: usize,
}

/// What became of an operator's retry of a notification.
#[derive(Debug, Clone)]
pub enum NotificationRetry {
    /// Pending again, due now, its schedule from the start.
    Done(Box<Notification>),
    NotFound,
    /// Only a failed notification is retried; it is in this state.
    Conflict(NotificationState),
}

/// A sink a 410 Gone disabled, and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisabledSink {
    pub name: String,
    pub since: Millis,
}

/// What loading a config did to the outbox ([`Store::settle_sinks`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinksSettled {
    /// Pending notifications of sinks the config no longer has, dropped.
    pub dropped: u64,
    /// Sinks a 410 had disabled, enabled again.
    pub enabled: u64,
}

/// A console session (SPEC §11), kept in the store so that every replica knows it
/// and signing out ends it everywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    /// SHA-256 of the session id the cookie carries, hex.
    pub id_hash: String,
    /// The token's name, or the person the SSO proxy named.
    pub who: String,
    /// A person the SSO proxy named, not an admin token.
    pub person: bool,
    pub role: crate::config::Role,
    /// The token's groups, or the person's: whom they may approve for.
    pub groups: Vec<String>,
    /// What every state-changing form of the session must carry.
    pub csrf: String,
    pub expires_at: Millis,
}

/// What `/metrics` shows of the queue.
#[derive(Debug, Clone, Default)]
pub struct QueueStats {
    pub by_state: std::collections::HashMap<JobState, u64>,
    /// When the longest-waiting queued or retrying job was created.
    pub oldest_waiting_since: Option<Millis>,
}

/// One page of a listing and the cursor of the next, if there may be one.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Stores each event with its jobs and audit records in one transaction, unless
    /// its delivery was already seen within the dedupe window. An event without a
    /// parent that echoes a promotion joins its chain ([`NewEvent::joined`]): the
    /// most recent job within the window, not failed or cancelled, whose promotion
    /// produced the event's subject (see `domain::subject_key`) and, when both are
    /// known, the same digest. The lookup runs in the same transaction, so it costs no
    /// extra round trip. Returns only once durable.
    async fn ingest(
        &self,
        batch: Vec<NewEvent>,
        policy: IngestPolicy,
    ) -> Result<Vec<IngestOutcome>, StoreError>;

    /// Appends one audit record on its own.
    async fn append_audit(&self, entry: AuditEntry) -> Result<(), StoreError>;

    /// Leases the next due job (queued, retrying and due, or running under an expired
    /// lease) to `worker` for `lease`. Taking over an expired lease records the lost
    /// attempt as `lease_expired`.
    async fn lease_job(
        &self,
        worker: &str,
        lease: Duration,
    ) -> Result<Option<LeasedJob>, StoreError>;

    /// Extends a held lease; `false` when the worker no longer holds it.
    async fn renew_lease(
        &self,
        job_id: &str,
        worker: &str,
        lease: Duration,
    ) -> Result<bool, StoreError>;

    /// Records an attempt and moves the job on; `false` (and nothing written) when the
    /// worker lost the lease meanwhile.
    async fn record_attempt(&self, report: AttemptReport) -> Result<bool, StoreError>;

    /// Gives a leased job back; `false` when the worker no longer held it.
    async fn release_job(&self, release: Release) -> Result<bool, StoreError>;

    /// Applies an operator's action, audited with the operator's token name.
    async fn operate(
        &self,
        job_id: &str,
        action: OperatorAction,
        actor: &str,
    ) -> Result<OperatorOutcome, StoreError>;

    /// Starts a run-time freeze and records `freeze.started`; false when a freeze of
    /// that name is still active (one that ended is replaced).
    async fn start_freeze(&self, freeze: RuntimeFreeze) -> Result<bool, StoreError>;
    /// Ends the active run-time freeze `name` now and records `freeze.ended`; false
    /// when there is none.
    async fn end_freeze(&self, name: &str, actor: &str) -> Result<bool, StoreError>;
    /// The run-time freezes that have not ended, by name.
    async fn freezes(&self) -> Result<Vec<RuntimeFreeze>, StoreError>;
    /// Lets a frozen job run despite the freezes holding it: decided by
    /// `domain::freeze::decide_override` on the job as it is in the transaction (locked),
    /// then the job is queued due now, keeps the override, and `job.freeze_overridden`
    /// is recorded, all in that transaction.
    async fn override_freeze(
        &self,
        job_id: &str,
        request: OverrideRequest,
    ) -> Result<OverrideOutcome, StoreError>;

    /// Gives a verdict on a job awaiting approval, in one transaction with the job
    /// locked, so that verdicts given at once (at two replicas) count correctly; what
    /// it means is `domain::approval`'s decision.
    async fn decide_approval(
        &self,
        job_id: &str,
        ballot: Ballot,
    ) -> Result<ApprovalOutcome, StoreError>;

    /// Cancels the jobs waiting on a gate or awaiting approval whose rule is not in
    /// `rules` any more (`rule_removed`), each on the record; how many it cancelled.
    async fn cancel_removed(&self, rules: &[String]) -> Result<u64, StoreError>;

    /// Moves the jobs whose approval timed out to `expired`; how many it moved.
    async fn expire_approvals(&self) -> Result<u64, StoreError>;

    /// The earliest instant a retrying job becomes due, a lease expires or an
    /// approval times out.
    async fn next_wakeup(&self) -> Result<Option<Millis>, StoreError>;

    async fn event(&self, id: &str) -> Result<Option<StoredEvent>, StoreError>;
    async fn events(&self, filter: EventFilter) -> Result<Page<StoredEvent>, StoreError>;
    async fn job(&self, id: &str) -> Result<Option<Job>, StoreError>;
    async fn jobs(&self, filter: JobFilter) -> Result<Page<Job>, StoreError>;
    async fn audit(&self, filter: AuditFilter) -> Result<Page<AuditRecord>, StoreError>;

    /// Audit records after `after`, in sequence order, for verification.
    async fn audit_chain(&self, after: i64, limit: usize) -> Result<Vec<ChainRow>, StoreError>;

    /// Removes audit records older than `audit_before` (cutting the chain at a
    /// checkpoint record that carries the last pruned hash), and delivery ids and
    /// sent or dropped notifications older than `deliveries_before` (past the dedupe
    /// window).
    async fn prune(
        &self,
        audit_before: Option<Millis>,
        deliveries_before: Millis,
    ) -> Result<Pruned, StoreError>;

    /// Pruning checkpoints (`audit.pruned`) before `before`, newest first.
    async fn audit_checkpoints(
        &self,
        before: i64,
        limit: usize,
    ) -> Result<Vec<ChainRow>, StoreError>;

    /// Re-computes the audit hash chain from its start (or its pruning checkpoint)
    /// and names the first broken record. Shared by every store.
    async fn verify_audit(&self) -> Result<Verdict, StoreError> {
        const PAGE: usize = 1000;
        let first = self.audit_chain(0, 1).await?;
        let anchor = match first.first() {
            None => return Ok(ChainCheck::new(Anchor::genesis()).verdict()),
            Some(row) if row.seq == 1 => Anchor::genesis(),
            Some(row) => match checkpoint_naming(self, row.seq - 1).await? {
                Some(anchor) => anchor,
                None => {
                    let mut check = ChainCheck::new(Anchor::genesis());
                    check.unreadable(
                        1,
                        &format!(
                            "records before {} are gone and no checkpoint names them",
                            row.seq
                        ),
                    );
                    return Ok(check.verdict());
                }
            },
        };
        let mut check = ChainCheck::new(anchor);
        let mut after = 0;
        loop {
            let page = self.audit_chain(after, PAGE).await?;
            for row in &page {
                let ok = match &row.record {
                    Ok(r) => check.push(r),
                    Err(why) => {
                        check.unreadable(row.seq, why);
                        false
                    }
                };
                if !ok {
                    return Ok(check.verdict());
                }
            }
            match page.last() {
                Some(last) if page.len() == PAGE => after = last.seq,
                _ => return Ok(check.verdict()),
            }
        }
    }

    /// Jobs by state and the oldest one waiting, for the metrics scrape.
    async fn queue_stats(&self) -> Result<QueueStats, StoreError>;

    /// Installs where audit records are notified (SPEC §10): from then on, every
    /// write that appends audit records adds the notifications they make to the
    /// outbox in its own transaction.
    fn set_routes(&self, routes: Arc<Routes>);

    /// Leases up to `max` due notifications of `sink` to `worker` for `lease` (none
    /// while the sink is disabled); each lease counts a try.
    async fn lease_notifications(
        &self,
        sink: &str,
        worker: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Leased>, StoreError>;

    /// When `sink`'s next pending notification is due (none while it is disabled).
    async fn next_notification(&self, sink: &str) -> Result<Option<Millis>, StoreError>;

    /// Records a try's verdict (and `notification.failed` or
    /// `notification.sink_disabled` with it); `false`, nothing written, when the
    /// deliverer no longer held the lease.
    async fn record_delivery(&self, report: DeliveryReport) -> Result<bool, StoreError>;

    async fn notifications(
        &self,
        filter: NotificationFilter,
    ) -> Result<Page<Notification>, StoreError>;

    /// An operator's retry of a failed notification, on the record.
    async fn retry_notification(
        &self,
        id: &str,
        actor: &str,
    ) -> Result<NotificationRetry, StoreError>;

    /// Enables a sink a 410 disabled, on the record; `false` when it was not disabled.
    async fn enable_sink(&self, name: &str, actor: &str) -> Result<bool, StoreError>;

    async fn disabled_sinks(&self) -> Result<Vec<DisabledSink>, StoreError>;

    /// On loading a config whose sinks are `configured`: drops the pending
    /// notifications of every other sink and enables the disabled ones, each on the
    /// record.
    async fn settle_sinks(&self, configured: &[String]) -> Result<SinksSettled, StoreError>;

    /// Starts a console session (and forgets those that ended).
    async fn start_session(&self, session: ConsoleSession) -> Result<(), StoreError>;
    /// The session whose id hashes to `id_hash`, if it is in force.
    async fn session(&self, id_hash: &str) -> Result<Option<ConsoleSession>, StoreError>;
    /// Ends a session (signing out); `false` when there was none.
    async fn end_session(&self, id_hash: &str) -> Result<bool, StoreError>;

    /// Answers when the store can serve requests (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Notified after a commit that queued jobs, so idle workers wake at once.
    fn work_signal(&self) -> Arc<Notify>;
}

/// The anchor of the checkpoint that names `pruned_through` as the last record
/// pruned. Searched newest first: each pass appends its checkpoint at the head, and
/// only the newest pass's cut is where the trail now starts, so the search normally
/// stops at the first checkpoint, however many a long retention has left. Only a
/// trail cut without a checkpoint makes it read them all. The checkpoint found is
/// itself in the chain that is then verified, so a forged one breaks it.
async fn checkpoint_naming<S: Store + ?Sized>(
    store: &S,
    pruned_through: i64,
) -> Result<Option<Anchor>, StoreError> {
    const PAGE: usize = 100;
    let mut before = i64::MAX;
    loop {
        let page = store.audit_checkpoints(before, PAGE).await?;
        let found = page
            .iter()
            .filter_map(|row| row.record.as_ref().ok())
            .filter_map(Anchor::from_checkpoint)
            .find(|a| a.seq == pruned_through);
        match (found, page.last()) {
            (Some(anchor), _) => return Ok(Some(anchor)),
            (None, Some(last)) if page.len() == PAGE => before = last.seq,
            _ => return Ok(None),
        }
    }
}

/// Opens the store a config names, running its migrations.
pub async fn open(url: &StoreUrl) -> Result<Arc<dyn Store>, StoreError> {
    match url {
        StoreUrl::Sqlite(path) => Ok(Arc::new(SqliteStore::open(path).await?)),
        StoreUrl::Postgres(url) => Ok(Arc::new(PostgresStore::open(url).await?)),
    }
}
