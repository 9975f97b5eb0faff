//! What the stores share below their SQL: the column lists of their tables (the
//! same names in both), the conversion of stored strings and integers back into
//! domain values, and what a verb writes between its reads and its writes (where a
//! job goes is asked of `domain::lifecycle`, never decided here). Each store only moves values between its driver's rows and these plain structs,
//! so the two cannot drift apart in what a stored row means.

use std::borrow::Cow;
use std::time::Duration;

use super::outbox::NOTIFICATION_COLUMNS;
use super::{
    AttemptReport, AuditFilter, EventFilter, IngestPolicy, JobFilter, NewEvent, NotificationFilter,
    OperatorAction, Page, StoreError, StoredEvent, Transition,
};
use crate::audit::{AuditEntry, AuditKind, AuditRecord};
use crate::domain::approval::{
    self, Approval, ApprovalPolicy, Awaiting, Ballot, JobApproval, Refusal, Verdict,
};
use crate::domain::freeze::{
    self, FreezeOverride, Frozen, OverrideRefusal, OverrideRequest, RuntimeFreeze,
};
use crate::domain::gate::{self, Arrival, Evidence, GateStart, JobGate, Opening, Seen};
use crate::domain::lifecycle::Requires;
use crate::domain::{
    Action, AttemptRecord, Event, Job, JobError, JobErrorCode, JobEvent, JobState, Millis, NewJob,
    Outcome, Step, Subject, lifecycle, subject_key,
};

pub(super) const EVENT_COLUMNS: &str = "id, source, type, delivery_id, received_at, repo, image,
    tag, digest, path, build_name, build_number, payload, parent_job_id, chain_depth, claims";

pub(super) const JOB_COLUMNS: &str = "id, rule, state, outcome, event_id, target, action,
    last_error_code, last_error_message, parent_job_id, chain_depth, created_at, updated_at,
    approval, approval_expires_at, initiator, gate, soak_until, frozen_by, frozen_until,
    freeze_override, trace_parent";

/// How many columns [`JOB_COLUMNS`] selects: what a query selecting more reads after.
pub(super) const JOB_COLUMN_COUNT: usize = 22;

/// SPEC §12: the W3C `traceparent` of the request that made a job (null when traces
/// are off), so its attempts join that trace on any replica.
pub(super) const TRACE_MIGRATION: &str = "ALTER TABLE jobs ADD COLUMN trace_parent TEXT;";

/// SPEC §16: the claims an `oidc` source verified, kept with their event (JSON,
/// null for every other scheme). The same statement serves both stores.
pub(super) const CLAIMS_MIGRATION: &str = "ALTER TABLE events ADD COLUMN claims TEXT;";

/// SPEC §9 gates: a job's gate (its conditions, which are met and by which events),
/// the key its evidence is filed under and when its wait ends, the end of its soak;
/// and the evidence, kept until it can count for no trigger any more. The same
/// statements serve both stores.
pub(super) const GATES_MIGRATION: &str = r#"
ALTER TABLE jobs ADD COLUMN gate TEXT;
ALTER TABLE jobs ADD COLUMN gate_key TEXT;
ALTER TABLE jobs ADD COLUMN gate_expires_at BIGINT;
ALTER TABLE jobs ADD COLUMN soak_until BIGINT;
CREATE INDEX jobs_gate_wait ON jobs(rule, gate_key) WHERE state = 'waiting';
CREATE INDEX jobs_gate_expiry ON jobs(gate_expires_at) WHERE state = 'waiting';
CREATE TABLE evidence (
    rule TEXT NOT NULL,
    gate_key TEXT NOT NULL,
    condition TEXT NOT NULL,
    event_id TEXT NOT NULL,
    block BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX evidence_key ON evidence(rule, gate_key, received_at);
CREATE INDEX evidence_expiry ON evidence(expires_at);
"#;

/// The columns of an `evidence` row as [`read_seen`] reads them.
pub(super) const SEEN_COLUMNS: &str = "condition, event_id, block";

pub(super) const APPROVAL_COLUMNS: &str = "by_name, at, verdict, comment, as_group";

pub(super) const ATTEMPT_COLUMNS: &str =
    "n, started_at, duration_ms, upstream_status, error_code, error_message";

pub(super) const AUDIT_COLUMNS: &str = "seq, at, kind, actor, event_id, job_id, rule, target,
    repo, image, tag, digest, from_ref, to_ref, outcome, upstream_status, message, prev_hash,
    hash, parent_job_id, chain_depth, count, hash_version";

/// Audit records after the sequence number bound first, oldest first, at most the
/// second: the chain as verification reads it.
pub(super) fn chain_sql(param: fn(usize) -> String) -> String {
    format!(
        "SELECT {AUDIT_COLUMNS} FROM audit WHERE seq > {} ORDER BY seq LIMIT {}",
        param(1),
        param(2)
    )
}

/// Pruning checkpoints before the sequence number bound first, newest first, at most
/// the second. The kind is written out (not bound) so that both engines use the
/// partial index `audit_checkpoints`: walking back from the head costs one index
/// step per checkpoint, however many thousands a long retention leaves.
pub(super) fn checkpoints_sql(param: fn(usize) -> String) -> String {
    format!(
        "SELECT {AUDIT_COLUMNS} FROM audit WHERE kind = 'audit.pruned' AND seq < {}
         ORDER BY seq DESC LIMIT {}",
        param(1),
        param(2)
    )
}

pub(super) fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} `{value}`"))
}

pub(super) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A listing's `limit` as SQL takes it.
pub(super) fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// How a store ingests the event a promotion emits: its delivery id names the job,
/// which succeeds only once, so it needs no window; it already has its parent, so it
/// is never linked as an echo.
pub(super) const EMITTED: IngestPolicy = IngestPolicy {
    dedupe_window: Duration::ZERO,
    max_chain_depth: u32::MAX,
};

/// What an event's echo lookup looks for (see `Store::ingest`): the reference its
/// subject names, its digest when known, and the window's start.
pub(super) struct EchoProbe<'a> {
    pub key: String,
    pub digest: Option<&'a str>,
    pub since: Millis,
}

impl<'a> EchoProbe<'a> {
    /// None for an event already in a chain, or naming nothing a promotion produces.
    pub(super) fn of(event: &'a Event, window: Duration) -> Option<Self> {
        if event.parent_job_id.is_some() {
            return None;
        }
        Some(EchoProbe {
            key: subject_key(&event.subject)?,
            digest: event.subject.digest.as_deref(),
            since: event.received_at.saturating_sub(millis(window)),
        })
    }
}

/// The typed columns of a result row, as a store's driver reads them; the row
/// structs below read themselves through it, so both stores read a row one way.
pub(super) trait Columns {
    fn text(&self, i: usize) -> Result<String, StoreError>;
    fn text_opt(&self, i: usize) -> Result<Option<String>, StoreError>;
    fn int(&self, i: usize) -> Result<i64, StoreError>;
    fn int_opt(&self, i: usize) -> Result<Option<i64>, StoreError>;
}

/// A stored integer that must fit a narrower domain type.
pub(super) fn narrow<T: TryFrom<i64>>(what: &str, v: i64) -> Result<T, StoreError> {
    T::try_from(v).map_err(|_| corrupt(what, &v.to_string()))
}

fn narrow_opt<T: TryFrom<i64>>(what: &str, v: Option<i64>) -> Result<Option<T>, StoreError> {
    v.map(|v| narrow(what, v)).transpose()
}

/// An `events` row, in [`EVENT_COLUMNS`] order.
pub(super) fn read_event(r: &impl Columns) -> Result<Event, StoreError> {
    let payload = r.text(12)?;
    Ok(Event {
        id: r.text(0)?,
        source: r.text(1)?,
        kind: r.text(2)?,
        delivery_id: r.text(3)?,
        received_at: r.int(4)?,
        subject: Subject {
            repo: r.text_opt(5)?,
            image: r.text_opt(6)?,
            tag: r.text_opt(7)?,
            digest: r.text_opt(8)?,
            path: r.text_opt(9)?,
            build_name: r.text_opt(10)?,
            build_number: r.text_opt(11)?,
        },
        payload: serde_json::from_str(&payload).map_err(|_| corrupt("event payload", &payload))?,
        parent_job_id: r.text_opt(13)?,
        chain_depth: narrow("event chain depth", r.int(14)?)?,
        claims: match r.text_opt(15)? {
            Some(c) => Some(serde_json::from_str(&c).map_err(|_| corrupt("event claims", &c))?),
            None => None,
        },
    })
}

/// An event's payload as stored.
pub(super) fn payload_text(event: &Event) -> String {
    // Serializing a JSON value cannot fail.
    serde_json::to_string(&event.payload).unwrap_or_default()
}

/// An event's verified claims as stored, when it has any.
pub(super) fn claims_text(event: &Event) -> Option<String> {
    event
        .claims
        .as_ref()
        .map(|c| serde_json::to_string(c).unwrap_or_default())
}

/// A `jobs` row, in [`JOB_COLUMNS`] order: the job without its attempt history.
pub(super) fn read_job(r: &impl Columns) -> Result<Job, StoreError> {
    let state = job_state(&r.text(2)?)?;
    Ok(Job {
        id: r.text(0)?,
        rule: r.text(1)?,
        state,
        outcome: match r.text_opt(3)? {
            Some(o) => Some(Outcome::parse(&o).ok_or_else(|| corrupt("outcome", &o))?),
            None => None,
        },
        event_id: r.text(4)?,
        target: r.text(5)?,
        action: match r.text_opt(6)? {
            Some(a) => {
                Some(serde_json::from_str::<Action>(&a).map_err(|_| corrupt("job action", &a))?)
            }
            None => None,
        },
        attempts: Vec::new(),
        last_error: job_error(r.text_opt(7)?, r.text_opt(8)?)?,
        parent_job_id: r.text_opt(9)?,
        chain_depth: narrow("job chain depth", r.int(10)?)?,
        approval: match r.text_opt(13)? {
            Some(p) => Some(JobApproval {
                policy: serde_json::from_str(&p).map_err(|_| corrupt("job approval", &p))?,
                expires_at: r.int_opt(14)?,
                initiator: r.text_opt(15)?,
            }),
            None => None,
        },
        approvals: Vec::new(),
        gate: match r.text_opt(16)? {
            Some(g) => Some(serde_json::from_str(&g).map_err(|_| corrupt("job gate", &g))?),
            None => None,
        },
        soak_until: r.int_opt(17)?,
        frozen: read_frozen(state, r.text_opt(18)?, r.int_opt(19)?)?,
        freeze_override: r.text_opt(20)?.as_deref().map(read_override).transpose()?,
        trace_parent: r.text_opt(21)?,
        created_at: r.int(11)?,
        updated_at: r.int(12)?,
    })
}

/// An `evidence` row, in [`SEEN_COLUMNS`] order.
pub(super) fn read_seen(r: &impl Columns) -> Result<Seen, StoreError> {
    Ok(Seen {
        condition: r.text(0)?,
        event_id: r.text(1)?,
        block: r.int(2)? != 0,
    })
}

/// A gate as stored.
pub(super) fn gate_text(gate: &JobGate) -> String {
    // A gate is strings and integers: serializing it cannot fail.
    serde_json::to_string(gate).unwrap_or_default()
}

/// An `approvals` row, in [`APPROVAL_COLUMNS`] order.
pub(super) fn read_approval(r: &impl Columns) -> Result<Approval, StoreError> {
    let verdict = r.text(2)?;
    Ok(Approval {
        by: r.text(0)?,
        at: r.int(1)?,
        verdict: Verdict::parse(&verdict).ok_or_else(|| corrupt("verdict", &verdict))?,
        comment: r.text_opt(3)?,
        as_group: r.text_opt(4)?,
    })
}

pub(super) fn job_state(state: &str) -> Result<JobState, StoreError> {
    JobState::parse(state).ok_or_else(|| corrupt("job state", state))
}

fn job_error(
    code: Option<String>,
    message: Option<String>,
) -> Result<Option<JobError>, StoreError> {
    match code {
        None => Ok(None),
        Some(c) => Ok(Some(JobError {
            code: JobErrorCode::parse(&c).ok_or_else(|| corrupt("error code", &c))?,
            message: message.unwrap_or_default(),
        })),
    }
}

/// An `attempts` row, in [`ATTEMPT_COLUMNS`] order.
pub(super) fn read_attempt(r: &impl Columns) -> Result<AttemptRecord, StoreError> {
    Ok(AttemptRecord {
        n: narrow("attempt number", r.int(0)?)?,
        started_at: r.int(1)?,
        duration_ms: u64::try_from(r.int(2)?).unwrap_or(0),
        upstream_status: narrow_opt("upstream status", r.int_opt(3)?)?,
        error: job_error(r.text_opt(4)?, r.text_opt(5)?)?,
    })
}

/// An attempt's values as stored: duration, upstream status and error.
pub(super) fn attempt_values(a: &AttemptRecord) -> (i64, Option<i64>, Option<&str>, Option<&str>) {
    (
        i64::try_from(a.duration_ms).unwrap_or(i64::MAX),
        a.upstream_status.map(i64::from),
        a.error.as_ref().map(|e| e.code.as_str()),
        a.error.as_ref().map(|e| e.message.as_str()),
    )
}

/// An `audit` row, in [`AUDIT_COLUMNS`] order, or why it cannot be read: for
/// verification that is a broken record, not an error.
pub(super) fn read_audit(r: &impl Columns) -> Result<AuditRecord, String> {
    let kind = r.text(2).map_err(|e| e.to_string())?;
    let kind = AuditKind::parse(&kind).ok_or_else(|| format!("unknown kind `{kind}`"))?;
    let read = || -> Result<AuditRecord, StoreError> {
        Ok(AuditRecord {
            seq: r.int(0)?,
            entry: AuditEntry {
                at: r.int(1)?,
                kind,
                actor: r.text(3)?,
                event_id: r.text_opt(4)?,
                job_id: r.text_opt(5)?,
                rule: r.text_opt(6)?,
                target: r.text_opt(7)?,
                repo: r.text_opt(8)?,
                image: r.text_opt(9)?,
                tag: r.text_opt(10)?,
                digest: r.text_opt(11)?,
                from: r.text_opt(12)?,
                to: r.text_opt(13)?,
                outcome: r.text_opt(14)?,
                upstream_status: narrow_opt("upstream status", r.int_opt(15)?)?,
                message: r.text_opt(16)?,
                parent_job_id: r.text_opt(19)?,
                chain_depth: narrow_opt("chain depth", r.int_opt(20)?)?,
                count: narrow_opt("audit count", r.int_opt(21)?)?,
            },
            prev_hash: r.text(17)?,
            hash: r.text(18)?,
            hash_version: narrow("hash version", r.int(22)?)?,
        })
    };
    read().map_err(|e| e.to_string())
}

/// An audit record's count as stored. One past `i64::MAX` is refused, not cut: the
/// stored value would no longer be the one hashed.
pub(super) fn stored_count(entry: &AuditEntry) -> Result<Option<i64>, StoreError> {
    entry
        .count
        .map(|c| i64::try_from(c).map_err(|_| corrupt("audit count", &c.to_string())))
        .transpose()
}

/// The advisory locks a batch takes on the gates it touches (the rules and keys of
/// its evidence and of its gated triggers), sorted and without repeats: one lock
/// order for every batch. A key is the first 8 bytes of the SHA-256 of the rule and
/// key, stable across processes and versions (every replica must compute the same).
pub(super) fn gate_locks(batch: &[NewEvent]) -> Vec<i64> {
    use sha2::{Digest, Sha256};
    let lock = |rule: &str, key: &str| {
        let digest = Sha256::new()
            .chain_update(rule.as_bytes())
            .chain_update([0])
            .chain_update(key.as_bytes())
            .finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        i64::from_be_bytes(first)
    };
    let mut keys: Vec<i64> = batch
        .iter()
        .flat_map(|new| {
            let evidence = new.evidence.iter().map(|e| lock(&e.rule, &e.key));
            let triggers = new
                .jobs
                .iter()
                .filter_map(|j| Some(lock(&j.rule, &j.gate.as_ref()?.key)));
            evidence.chain(triggers)
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// A new job's gate opened on the evidence the store holds for its key (read in
/// the ingest's transaction, under the key's lock where the store has several
/// writers): the gate with what is met, and where the job starts.
pub(super) struct Opened {
    pub gate: JobGate,
    pub opening: Opening,
}

impl Opened {
    pub fn of(start: &GateStart, seen: &[Seen]) -> Opened {
        let mut gate = start.gate.clone();
        let opening = gate::open(&mut gate, seen);
        Opened { gate, opening }
    }
}

/// How a job the rules planned is stored: in the state it starts in (its rendered
/// action, or the template error or negative evidence that failed it), and the key
/// its promotion's result is known by.
pub(super) struct JobInsert<'a> {
    pub action: Option<String>,
    pub state: JobState,
    pub error_code: Option<&'static str>,
    pub error_message: Option<Cow<'a, str>>,
    /// When it is first due: its trigger's time, or the end of its soak.
    pub next_attempt_at: Millis,
    pub target_ref: Option<String>,
    pub target_digest: Option<String>,
    /// The approval policy as stored (JSON), and when the wait for it ends.
    pub approval: Option<String>,
    pub approval_expires_at: Option<Millis>,
    /// The gate as stored, the key its evidence is filed under, and when a waiting
    /// job's wait ends.
    pub gate: Option<String>,
    pub gate_key: Option<&'a str>,
    pub gate_expires_at: Option<Millis>,
}

impl<'a> JobInsert<'a> {
    /// `job` for an event received `now`, its gate opened as `opened` says.
    pub fn of(job: &'a NewJob, now: Millis, opened: Option<&Opened>) -> Self {
        let opening = opened.map(|o| &o.opening);
        let (state, _) = job.start(opening);
        let (action, error) = match &job.action {
            Ok(a) => (serde_json::to_string(a).ok(), None),
            Err(e) => (None, Some(e)),
        };
        let (error_code, error_message) = match (error, opening) {
            (Some(e), _) => (
                Some(e.code.as_str()),
                Some(Cow::Borrowed(e.message.as_str())),
            ),
            (None, Some(Opening::Blocked(seen))) => (
                Some(JobErrorCode::GateBlocked.as_str()),
                Some(Cow::Owned(gate::blocked_by(seen))),
            ),
            (None, _) => (None, None),
        };
        let output = job.action.as_ref().ok().map(Action::output_subject);
        JobInsert {
            action,
            state,
            error_code,
            error_message,
            next_attempt_at: job.soak_until.map_or(now, |s| s.max(now)),
            target_ref: output.as_ref().and_then(subject_key),
            target_digest: output.and_then(|o| o.digest),
            approval: job.approval.as_ref().map(policy_text),
            approval_expires_at: match state {
                JobState::AwaitingApproval => job.approval.as_ref().and_then(|p| p.expires_at(now)),
                _ => None,
            },
            gate: opened.map(|o| gate_text(&o.gate)),
            gate_key: job.gate.as_ref().map(|g| g.key.as_str()),
            gate_expires_at: match (state, opened) {
                (JobState::Waiting, Some(o)) => Some(o.gate.expires_at),
                _ => None,
            },
        }
    }
}

/// What a piece of evidence that arrived writes on the job waiting on it
/// (`domain::gate` decides, the life cycle moves): the gate as it now is, the state
/// the job goes to, a deadline when it goes to await approval, the error when
/// negative evidence failed it, and the records.
pub(super) struct GateLanding {
    pub gate: String,
    pub state: JobState,
    pub approval_expires_at: Option<Millis>,
    pub error: Option<JobError>,
    pub audit: Vec<AuditEntry>,
}

impl GateLanding {
    /// What `evidence`, carried by `event`, does to `job`; `None` when it changes
    /// nothing (its condition was met already, or the job no longer waits). The
    /// records' actor is the event's source.
    pub fn arrival(
        job: &Job,
        evidence: &Evidence,
        event: &Event,
    ) -> Result<Option<GateLanding>, StoreError> {
        let seen = &Seen {
            condition: evidence.condition.clone(),
            event_id: event.id.clone(),
            block: evidence.block,
        };
        let (actor, now) = (event.source.as_str(), event.received_at);
        // A job that moved on meanwhile (cancelled, expired) is not moved by evidence.
        let (JobState::Waiting, Some(mut gate)) = (job.state, job.gate.clone()) else {
            return Ok(None);
        };
        let arrival = gate::arrive(&mut gate, seen, now);
        let mut audit = Vec::new();
        let mut state = job.state;
        let mut error = None;
        let mut approval_expires_at = None;
        match arrival {
            Arrival::Nothing => return Ok(None),
            Arrival::Blocked => {
                let step = lifecycle::next(state, JobEvent::Blocked)?;
                state = step.to;
                error = Some(JobError::new(
                    JobErrorCode::GateBlocked,
                    gate::blocked_by(seen),
                ));
                audit.push(AuditEntry::gate_blocked(job, seen, actor));
            }
            Arrival::Met { last } => {
                let step = lifecycle::next(state, JobEvent::ConditionMet)?;
                state = step.to;
                audit.push(AuditEntry::condition_met(
                    job,
                    &gate,
                    &seen.condition,
                    &seen.event_id,
                    actor,
                ));
                if last {
                    let needs_approval = job.approval.is_some();
                    let step = lifecycle::next(state, JobEvent::GateMet { needs_approval })?;
                    state = step.to;
                    if let Some(kind) = step.audit {
                        audit.push(AuditEntry::operator(kind, SYSTEM_ACTOR, job));
                    }
                    approval_expires_at = match (state, &job.approval) {
                        (JobState::AwaitingApproval, Some(a)) => a.policy.expires_at(now),
                        _ => None,
                    };
                }
            }
        }
        Ok(Some(GateLanding {
            gate: gate_text(&gate),
            state,
            approval_expires_at,
            error,
            audit,
        }))
    }
}

/// The attempt of a worker whose lease expired, as its successor records it.
pub(super) fn lease_expired(n: u32, started_at: Option<Millis>, now: Millis) -> AttemptRecord {
    let started_at = started_at.unwrap_or(now);
    AttemptRecord {
        n,
        started_at,
        duration_ms: u64::try_from(now - started_at).unwrap_or(0),
        upstream_status: None,
        error: Some(JobError::new(
            JobErrorCode::LeaseExpired,
            "the worker holding this job stopped renewing its lease",
        )),
    }
}

/// The life cycle's move for an operator's action on `job`, or the state that
/// forbids it. A job whose templates never rendered has no action to retry,
/// whatever its state.
pub(super) fn operator_move(job: &Job, action: OperatorAction) -> Result<&'static Step, JobState> {
    if action == OperatorAction::Retry && job.action.is_none() {
        return Err(job.state);
    }
    let requires = Requires::of(job.gate.as_ref().map(JobGate::met), job.approval.is_some());
    lifecycle::next(job.state, action.event(requires)).map_err(|refused| refused.from)
}

/// What a move back into `waiting` (an operator's retry of a job whose gate was never
/// met) writes on the job: its gate, with what was met kept, waits `within` from
/// `now` again.
pub(super) fn gate_revival(job: &Job, step: &Step, now: Millis) -> Option<JobGate> {
    let gate = job.gate.as_ref()?;
    (step.to == JobState::Waiting).then(|| JobGate {
        expires_at: now.saturating_add(gate.within_ms),
        ..gate.clone()
    })
}

/// What a move into `awaiting_approval` (an operator's retry) writes on the job: a new
/// round of verdicts, its deadline from `now`, and the operator as its initiator.
pub(super) fn revival(job: &Job, step: &Step, actor: &str, now: Millis) -> Option<JobApproval> {
    let approval = job.approval.as_ref()?;
    (step.to == JobState::AwaitingApproval).then(|| JobApproval {
        policy: approval.policy.clone(),
        expires_at: approval.policy.expires_at(now),
        initiator: Some(actor.to_string()),
    })
}

/// What a ballot the domain accepted writes: the verdict (unless it counted
/// already) and, when it decides the job, the move and its record (actor: the
/// approver, message: the comment).
pub(super) struct BallotLanding {
    pub approval: Option<Approval>,
    pub step: Option<&'static Step>,
    pub audit: Option<AuditEntry>,
}

impl BallotLanding {
    /// Asks `domain::approval` about `ballot` on `job` (whose current round's
    /// verdicts are `given`) and the life cycle where an accepted one takes it.
    pub fn of(
        job: &Job,
        given: &[Approval],
        ballot: &Ballot,
        now: Millis,
    ) -> Result<Result<Self, Refusal>, StoreError> {
        let Some(approval) = &job.approval else {
            return Ok(Err(Refusal::InvalidState(job.state)));
        };
        let awaiting = Awaiting {
            state: job.state,
            approval,
            given,
        };
        let decision = match approval::decide(awaiting, ballot, now) {
            Ok(d) => d,
            Err(refused) => return Ok(Err(refused)),
        };
        let step = decision
            .event
            .map(|e| lifecycle::next(job.state, e))
            .transpose()?;
        let audit = step.and_then(|s| s.audit).map(|kind| {
            let entry = AuditEntry::operator(kind, &ballot.by, job);
            match &ballot.comment {
                Some(c) => entry.saying(c),
                None => entry,
            }
        });
        Ok(Ok(BallotLanding {
            approval: decision.record.then(|| Approval {
                by: ballot.by.clone(),
                at: now,
                verdict: ballot.verdict,
                comment: ballot.comment.clone(),
                as_group: decision.as_group.clone(),
            }),
            step,
            audit,
        }))
    }
}

/// What cancelling a job whose rule was removed writes: the move and its error.
pub(super) fn rule_removed(job: &Job) -> Result<(&'static Step, JobError), StoreError> {
    let step = lifecycle::next(job.state, JobEvent::RuleRemoved)?;
    let error = JobError::new(
        JobErrorCode::RuleRemoved,
        format!("rule {} is no longer configured", job.rule),
    );
    Ok((step, error))
}

/// Who moves a job that no person moved (an approval that timed out).
pub(super) const SYSTEM_ACTOR: &str = "gantry";

/// The life cycle's move for a job whose wait (`from`: for its gate's evidence or
/// for approval) timed out.
pub(super) fn expiry(from: JobState) -> Result<&'static Step, StoreError> {
    Ok(lifecycle::next(from, JobEvent::Expired)?)
}

/// The life cycle's move for `event` on a job a worker holds: the lease fence has
/// checked that it is `running`.
pub(super) fn leased_move(event: JobEvent) -> Result<&'static Step, StoreError> {
    Ok(lifecycle::next(JobState::Running, event)?)
}

/// What an attempt's report writes on its job.
pub(super) struct Landing<'a> {
    pub state: JobState,
    pub outcome: Option<&'static str>,
    pub next_attempt_at: Millis,
    /// The new last error; `None` keeps the previous one.
    pub error_code: Option<&'static str>,
    pub error_message: Option<&'a str>,
}

impl<'a> Landing<'a> {
    pub fn of(report: &'a AttemptReport, now: Millis) -> Result<Self, StoreError> {
        let state = leased_move(report.transition.event())?.to;
        let (outcome, next_attempt_at, error) = match &report.transition {
            Transition::Succeeded(o) => (Some(o.as_str()), now, None),
            Transition::Retry { at } => (None, *at, report.attempt.error.as_ref()),
            Transition::Failed(e) => (None, now, Some(e)),
        };
        Ok(Landing {
            state,
            outcome,
            next_attempt_at,
            error_code: error.map(|e| e.code.as_str()),
            error_message: error.map(|e| e.message.as_str()),
        })
    }
}

/// One page of a newest-first or oldest-first listing: a full page may have a next.
pub(super) fn page<T>(items: Vec<T>, limit: usize, cursor: impl Fn(&T) -> String) -> Page<T> {
    let next = (items.len() == limit)
        .then(|| items.last().map(cursor))
        .flatten();
    Page { items, next }
}

/// A value bound to a listing's query.
pub(super) enum Arg {
    Text(String),
    Int(i64),
}

/// A listing's SQL and the values bound to it, built the same way for every store;
/// only the way a driver writes the n-th parameter (`?n`, `$n`) differs.
pub(super) struct Listing {
    pub sql: String,
    pub args: Vec<Arg>,
    param: fn(usize) -> String,
}

impl Listing {
    fn new(select: String, param: fn(usize) -> String) -> Self {
        Listing {
            sql: format!("{select} WHERE 1 = 1"),
            args: Vec::new(),
            param,
        }
    }

    /// Adds ` AND {condition} <param>`, e.g. `condition` = `"rule ="`.
    fn and(&mut self, condition: &str, arg: Arg) {
        self.and_closed(condition, arg, "");
    }

    /// Adds ` AND {condition} <param>{close}`, for a condition in a sub-select.
    fn and_closed(&mut self, condition: &str, arg: Arg, close: &str) {
        self.args.push(arg);
        let p = (self.param)(self.args.len());
        self.sql.push_str(&format!(" AND {condition} {p}{close}"));
    }

    fn and_text(&mut self, condition: &str, value: Option<String>) {
        self.and_text_closed(condition, value, "");
    }

    fn and_text_closed(&mut self, condition: &str, value: Option<String>, close: &str) {
        if let Some(v) = value {
            self.and_closed(condition, Arg::Text(v), close);
        }
    }

    fn and_int(&mut self, condition: &str, value: Option<i64>) {
        if let Some(v) = value {
            self.and(condition, Arg::Int(v));
        }
    }

    fn order_limit(mut self, order: &str, limit: usize) -> Self {
        self.args.push(Arg::Int(sql_limit(limit)));
        let p = (self.param)(self.args.len());
        self.sql.push_str(&format!(" ORDER BY {order} LIMIT {p}"));
        self
    }
}

/// Notifications, newest first (SPEC §10).
pub(super) fn notifications_listing(f: &NotificationFilter, param: fn(usize) -> String) -> Listing {
    let mut q = Listing::new(
        format!("SELECT {NOTIFICATION_COLUMNS} FROM notifications"),
        param,
    );
    q.and_text("state =", f.state.map(|s| s.as_str().to_string()));
    q.and_text("sink =", f.sink.clone());
    q.and_text("id <", f.before.clone());
    q.order_limit("id DESC", f.limit)
}

/// A page of events holds at most about this many bytes of payloads: a thousand
/// events of a megabyte each would otherwise be read into memory for one answer.
/// The first event of a page is always in it, whatever its size.
pub(super) const MAX_EVENTS_PAGE_BYTES: i64 = 8 << 20;

/// Received events, newest first, cut once their payloads pass
/// [`MAX_EVENTS_PAGE_BYTES`]. Each row ends with the payload bytes up to and
/// including it (column [`EVENTS_PAGE_BYTES_COLUMN`]), which tells a page that was
/// cut from one that ran out of events. The count limit applies first, so the sum
/// never reads more than one page's rows.
pub(super) fn events_listing(f: &EventFilter, param: fn(usize) -> String) -> Listing {
    let mut q = Listing::new(format!("SELECT {EVENT_COLUMNS} FROM events"), param);
    q.and_text("source =", f.source.clone());
    q.and_text("type =", f.kind.clone());
    q.and_text("id <", f.before.clone());
    let mut q = q.order_limit("id DESC", f.limit);
    q.sql = format!(
        "SELECT {EVENT_COLUMNS}, upto FROM (
            SELECT {EVENT_COLUMNS},
                SUM(octet_length(payload)) OVER (ORDER BY id DESC) AS upto
            FROM ({}) latest) counted
         WHERE upto - octet_length(payload) < {MAX_EVENTS_PAGE_BYTES}
         ORDER BY id DESC",
        q.sql
    );
    q
}

/// Where [`events_listing`] puts the running sum of payload bytes.
pub(super) const EVENTS_PAGE_BYTES_COLUMN: usize = 16;

/// A page of events: there may be more after it when it is full by count, or when
/// its payloads reached the byte bound (`bytes`, the running sum of its last row).
pub(super) fn events_page(
    items: Vec<StoredEvent>,
    limit: usize,
    bytes: Option<i64>,
) -> Page<StoredEvent> {
    let mut p = page(items, limit, |e| e.event.id.clone());
    if p.next.is_none() && bytes.is_some_and(|b| b >= MAX_EVENTS_PAGE_BYTES) {
        p.next = p.items.last().map(|e| e.event.id.clone());
    }
    p
}

/// Jobs without their attempts, newest first.
pub(super) fn jobs_listing(f: &JobFilter, param: fn(usize) -> String) -> Listing {
    let mut q = Listing::new(format!("SELECT {JOB_COLUMNS} FROM jobs"), param);
    q.and_text("state =", f.state.map(|s| s.as_str().to_string()));
    q.and_text("rule =", f.rule.clone());
    // Events have no index on the image: the newest-first scan of jobs stops at a page.
    q.and_text_closed(
        "event_id IN (SELECT id FROM events WHERE image =",
        f.image.clone(),
        ")",
    );
    q.and_text("parent_job_id =", f.parent.clone());
    q.and_text("id <", f.before.clone());
    q.order_limit("id DESC", f.limit)
}

/// A job's chain children are found by their parent (a job's page shows them); only
/// chained jobs carry a parent, so only they pay for the index.
pub(super) const CHILDREN_MIGRATION: &str =
    "CREATE INDEX jobs_parent ON jobs(parent_job_id, id) WHERE parent_job_id IS NOT NULL;";

/// Audit records, oldest first.
pub(super) fn audit_listing(f: &AuditFilter, param: fn(usize) -> String) -> Listing {
    let mut q = Listing::new(format!("SELECT {AUDIT_COLUMNS} FROM audit"), param);
    q.and_int("at >=", f.since);
    q.and_int("at <", f.until);
    q.and_text("rule =", f.rule.clone());
    q.and_text("image =", f.image.clone());
    q.and_text("tag =", f.tag.clone());
    q.and_text("kind =", f.kind.map(|k| k.as_str().to_string()));
    q.and_text("job_id =", f.job.clone());
    q.and_int("seq >", f.after);
    q.order_limit("seq ASC", f.limit)
}

/// The `freezes` table (run-time freezes, SPEC §9), in [`read_freeze`]'s order.
pub(super) const FREEZE_COLUMNS: &str =
    "name, to_repos, targets, from_at, until_at, reason, started_by";

/// Starts a freeze unless one of that name is still active at parameter 8 (one that
/// ended is replaced): one row changed when it started.
pub(super) fn start_freeze_sql(p: fn(usize) -> String) -> String {
    let values: Vec<String> = (1..=7).map(p).collect();
    format!(
        "INSERT INTO freezes ({FREEZE_COLUMNS}) VALUES ({})
         ON CONFLICT (name) DO UPDATE SET to_repos = excluded.to_repos,
            targets = excluded.targets, from_at = excluded.from_at,
            until_at = excluded.until_at, reason = excluded.reason,
            started_by = excluded.started_by
         WHERE freezes.until_at <= {}",
        values.join(", "),
        p(8)
    )
}

/// Makes every frozen job due at parameter 1: a freeze ended early.
pub(super) const FROZEN_DUE_NOW: &str =
    "UPDATE jobs SET next_attempt_at = $1 WHERE state = 'frozen' AND next_attempt_at > $1";

/// A freeze's scope lists as stored: JSON arrays, NULL for "all".
pub(super) fn freeze_scope(f: &RuntimeFreeze) -> (Option<String>, Option<String>) {
    let json = |l: &Option<Vec<String>>| l.as_ref().map(|l| serde_json::json!(l).to_string());
    (json(&f.to_repos), json(&f.targets))
}

/// A `freezes` row, in [`FREEZE_COLUMNS`] order.
pub(super) fn read_freeze(r: &impl Columns) -> Result<RuntimeFreeze, StoreError> {
    let list = |v: Option<String>| -> Result<Option<Vec<String>>, StoreError> {
        v.map(|s| serde_json::from_str(&s).map_err(|_| corrupt("freeze scope", &s)))
            .transpose()
    };
    Ok(RuntimeFreeze {
        name: r.text(0)?,
        to_repos: list(r.text_opt(1)?)?,
        targets: list(r.text_opt(2)?)?,
        from: r.int(3)?,
        until: r.int(4)?,
        reason: r.text(5)?,
        started_by: r.text(6)?,
    })
}

/// Records on a job the worker gave back frozen what holds it: the freezes' names
/// (parameter 1, [`frozen_names`]) and when the last ends (2). The parameters appear in
/// order, so SQLite numbers `$n` as PostgreSQL does. Left on the row afterwards: a job
/// shows it only while it is `frozen` ([`read_job`]).
pub(super) const SET_FROZEN: &str =
    "UPDATE jobs SET frozen_by = $1, frozen_until = $2 WHERE id = $3";

/// Puts on a job a protection now holds the approval it awaits: the policy (1, as
/// [`policy_text`] stores it), its deadline (2), and a new round of verdicts.
pub(super) const SET_PROTECTED: &str =
    "UPDATE jobs SET approval = $1, approval_expires_at = $2, approval_round = approval_round + 1
     WHERE id = $3";

/// An approval policy as stored.
pub(super) fn policy_text(policy: &ApprovalPolicy) -> String {
    // Strings, integers and booleans: serializing cannot fail.
    serde_json::to_string(policy).unwrap_or_default()
}

/// The names of the freezes holding a job, as [`SET_FROZEN`] stores them.
pub(super) fn frozen_names(names: &[String]) -> String {
    serde_json::json!(names).to_string()
}

/// What holds a job in `state`, from its `frozen_by` and `frozen_until` columns:
/// shown only while it is `frozen`, and not for a job frozen before they existed.
fn read_frozen(
    state: JobState,
    by: Option<String>,
    until: Option<Millis>,
) -> Result<Option<Frozen>, StoreError> {
    match (state, by, until) {
        (JobState::Frozen, Some(by), Some(until)) => Ok(Some(Frozen {
            by: serde_json::from_str(&by).map_err(|_| corrupt("frozen_by", &by))?,
            until,
        })),
        _ => Ok(None),
    }
}

/// A freeze override as the `freeze_override` column keeps it (JSON, `at` in
/// milliseconds like every stored instant).
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredOverride {
    by: String,
    at: Millis,
    comment: String,
    freezes: Vec<String>,
}

fn read_override(text: &str) -> Result<FreezeOverride, StoreError> {
    let o: StoredOverride =
        serde_json::from_str(text).map_err(|_| corrupt("freeze override", text))?;
    Ok(FreezeOverride {
        by: o.by,
        at: o.at,
        comment: o.comment,
        freezes: o.freezes,
    })
}

/// Keeps a job's freeze override: the stored override is parameter 1, the job 2.
pub(super) const SET_FREEZE_OVERRIDE: &str = "UPDATE jobs SET freeze_override = $1 WHERE id = $2";

/// What an override the domain accepted writes: the move (`frozen → queued`), the
/// override to keep (and its stored form), and its record (actor: the operator,
/// message: the freezes and the comment).
pub(super) struct OverrideLanding {
    pub step: &'static Step,
    pub stored: String,
    audit: AuditEntry,
    kept: FreezeOverride,
}

impl OverrideLanding {
    /// Asks `domain::freeze` about `request` on `job` as read in the transaction, and
    /// the life cycle where an accepted one takes it.
    pub fn of(
        job: &Job,
        request: &OverrideRequest,
        now: Millis,
    ) -> Result<Result<Self, OverrideRefusal>, StoreError> {
        let kept = match freeze::decide_override(
            job.state,
            job.frozen.as_ref(),
            job.freeze_override.as_ref(),
            request,
            now,
        ) {
            Ok(kept) => kept,
            Err(refused) => return Ok(Err(refused)),
        };
        let step = lifecycle::next(job.state, JobEvent::FreezeOverridden)?;
        let holding = job.frozen.as_ref().map_or(&[][..], |f| &f.by[..]);
        let stored = serde_json::to_string(&StoredOverride {
            by: kept.by.clone(),
            at: kept.at,
            comment: kept.comment.clone(),
            freezes: kept.freezes.clone(),
        })
        .map_err(|e| StoreError::Corrupt(format!("freeze override: {e}")))?;
        Ok(Ok(OverrideLanding {
            step,
            stored,
            audit: AuditEntry::freeze_overridden(job, holding, &kept),
            kept,
        }))
    }

    /// Leaves `job` as the move does (what the verb answers), once [`Self::step`] and
    /// [`Self::stored`] are written; the record to append.
    pub fn land(self, job: &mut Job, now: Millis) -> AuditEntry {
        job.state = self.step.to;
        job.updated_at = now;
        job.frozen = None;
        job.freeze_override = Some(self.kept);
        self.audit
    }
}

/// Audit records as earlier gantry versions wrote them, reproduced here on their own
/// (not through `audit::chain`) so the upgrade tests of both stores check today's
/// verifier against what was really stored then.
#[cfg(test)]
pub(super) mod old_trail {
    use sha2::{Digest, Sha256};

    /// The hash every earlier version computed: SHA-256 over the previous hash, the
    /// sequence and `serde_json` of the record's fields.
    fn old_hash(prev_hash: &str, seq: i64, json: &[u8]) -> String {
        let mut h = Sha256::new();
        h.update(prev_hash.as_bytes());
        h.update(b"\n");
        h.update(seq.to_string().as_bytes());
        h.update(b"\n");
        h.update(json);
        hex::encode(h.finalize())
    }

    /// The record before migration 2 (v0): these fields in this order, absent ones
    /// as `null`, `at` in RFC 3339.
    #[derive(serde::Serialize)]
    struct V0<'a> {
        at: String,
        kind: &'a str,
        actor: &'a str,
        event_id: Option<&'a str>,
        job_id: Option<&'a str>,
        rule: Option<&'a str>,
        target: Option<&'a str>,
        repo: Option<&'a str>,
        image: Option<&'a str>,
        tag: Option<&'a str>,
        digest: Option<&'a str>,
        from: Option<&'a str>,
        to: Option<&'a str>,
        outcome: Option<&'a str>,
        upstream_status: Option<u16>,
        message: Option<&'a str>,
    }

    /// The record from migration 2 on (v1): v0's fields, then the chain's.
    #[derive(serde::Serialize)]
    struct V1<'a> {
        #[serde(flatten)]
        v0: V0<'a>,
        parent_job_id: Option<&'a str>,
        chain_depth: Option<u32>,
    }

    /// One old record with the columns it sets (the others are NULL).
    pub struct OldRecord {
        pub seq: i64,
        pub at: i64,
        pub kind: &'static str,
        pub actor: &'static str,
        pub job_id: Option<String>,
        pub upstream_status: Option<i64>,
        pub message: String,
        pub parent_job_id: Option<String>,
        pub chain_depth: Option<i64>,
        pub prev_hash: String,
        pub hash: String,
    }

    impl OldRecord {
        fn new(seq: i64, prev_hash: &str, v1: bool) -> OldRecord {
            let at = 1_700_000_000_000 + seq * 1000;
            let job_id = (seq % 2 == 0).then(|| format!("job-{seq}"));
            let upstream_status = (seq % 3 == 0).then_some(502);
            let message = format!("old record {seq}");
            let chained = v1 && seq % 2 == 1;
            let parent_job_id = chained.then(|| format!("parent-{seq}"));
            let chain_depth = chained.then_some(1);
            let v0 = V0 {
                at: crate::domain::rfc3339(at),
                kind: "job.attempt",
                actor: "worker",
                event_id: None,
                job_id: job_id.as_deref(),
                rule: None,
                target: None,
                repo: None,
                image: None,
                tag: None,
                digest: None,
                from: None,
                to: None,
                outcome: None,
                upstream_status,
                message: Some(&message),
            };
            let json = if v1 {
                serde_json::to_vec(&V1 {
                    v0,
                    parent_job_id: parent_job_id.as_deref(),
                    chain_depth,
                })
            } else {
                serde_json::to_vec(&v0)
            }
            .unwrap();
            OldRecord {
                seq,
                at,
                kind: "job.attempt",
                actor: "worker",
                upstream_status: upstream_status.map(i64::from),
                hash: old_hash(prev_hash, seq, &json),
                job_id,
                message,
                parent_job_id,
                chain_depth: chain_depth.map(i64::from),
                prev_hash: prev_hash.to_string(),
            }
        }
    }

    /// `n` records chained after `prev` (seq, hash), hashed as v1 or as v0.
    pub fn chained(prev: (i64, &str), n: i64, v1: bool) -> Vec<OldRecord> {
        let mut out: Vec<OldRecord> = Vec::new();
        for seq in prev.0 + 1..=prev.0 + n {
            let prev_hash = out.last().map_or(prev.1, |r| r.hash.as_str());
            let r = OldRecord::new(seq, prev_hash, v1);
            out.push(r);
        }
        out
    }

    /// The columns a v0 record sets, in the order of `OldRecord`'s fields.
    pub const V0_COLUMNS: &str = "seq, at, kind, actor, job_id, upstream_status, message,
        prev_hash, hash";
    /// The columns a v1 record sets: v0's and the chain's.
    pub const V1_COLUMNS: &str = "seq, at, kind, actor, job_id, upstream_status, message,
        prev_hash, hash, parent_job_id, chain_depth";
}
