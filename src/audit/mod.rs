//! The audit trail: one record per decision (request received or refused, job
//! planned, attempt made, job finished), each hash-chained to the one before it so
//! that an edit, deletion or reordering is detectable.

mod chain;

use serde::Serialize;

pub use chain::{Anchor, ChainCheck, HASH_VERSION, Verdict, chain_form, chain_hash};

use crate::domain::gate::{self, JobGate, Opening, Seen};
use crate::domain::{
    Action, AttemptRecord, Event, Job, JobError, Millis, NewJob, Op, Outcome, as_rfc3339, bounded,
    now_millis,
};

/// The last verdict on the chain and when it was reached: the console's Overview
/// shows the chain's status on every refresh without re-reading the whole trail
/// each time. Every verification (API, console) records its verdict here.
#[derive(Debug, Default)]
pub struct LastVerdict(std::sync::Mutex<Option<(Millis, Verdict)>>);

impl LastVerdict {
    /// The last verdict, when it is no older than `max_age_ms`.
    pub fn fresh(&self, max_age_ms: Millis) -> Option<(Millis, Verdict)> {
        let last = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        last.clone()
            .filter(|(at, _)| now_millis().saturating_sub(*at) <= max_age_ms)
    }

    pub fn record(&self, verdict: &Verdict) {
        let mut last = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *last = Some((now_millis(), verdict.clone()));
    }
}

/// Upstream messages and reasons are kept, but bounded.
pub const MAX_MESSAGE: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, utoipa::ToSchema)]
pub enum AuditKind {
    #[serde(rename = "event.received")]
    EventReceived,
    #[serde(rename = "event.duplicate")]
    EventDuplicate,
    #[serde(rename = "event.rejected")]
    EventRejected,
    #[serde(rename = "job.created")]
    JobCreated,
    #[serde(rename = "job.attempt")]
    JobAttempt,
    #[serde(rename = "job.succeeded")]
    JobSucceeded,
    #[serde(rename = "job.retrying")]
    JobRetrying,
    #[serde(rename = "job.failed")]
    JobFailed,
    #[serde(rename = "job.retried")]
    JobRetried,
    #[serde(rename = "job.cancelled")]
    JobCancelled,
    #[serde(rename = "job.interrupted")]
    JobInterrupted,
    #[serde(rename = "job.duplicate")]
    JobDuplicate,
    #[serde(rename = "job.awaiting_approval")]
    JobAwaitingApproval,
    #[serde(rename = "job.approved")]
    JobApproved,
    #[serde(rename = "job.rejected")]
    JobRejected,
    #[serde(rename = "job.expired")]
    JobExpired,
    #[serde(rename = "chain.refused")]
    ChainRefused,
    #[serde(rename = "audit.pruned")]
    AuditPruned,
    #[serde(rename = "target.circuit_opened")]
    TargetCircuitOpened,
    #[serde(rename = "target.circuit_closed")]
    TargetCircuitClosed,
    #[serde(rename = "job.frozen")]
    JobFrozen,
    #[serde(rename = "job.unfrozen")]
    JobUnfrozen,
    #[serde(rename = "freeze.started")]
    FreezeStarted,
    #[serde(rename = "freeze.ended")]
    FreezeEnded,
    #[serde(rename = "job.waiting")]
    JobWaiting,
    #[serde(rename = "gate.condition_met")]
    GateConditionMet,
    #[serde(rename = "gate.blocked")]
    GateBlocked,
    #[serde(rename = "job.freeze_overridden")]
    JobFreezeOverridden,
    #[serde(rename = "notification.failed")]
    NotificationFailed,
    #[serde(rename = "notification.sink_disabled")]
    NotificationSinkDisabled,
    #[serde(rename = "notification.sink_enabled")]
    NotificationSinkEnabled,
    #[serde(rename = "notification.retried")]
    NotificationRetried,
    #[serde(rename = "notification.dropped")]
    NotificationDropped,
    #[serde(rename = "config.reloaded")]
    ConfigReloaded,
    #[serde(rename = "config.reload_failed")]
    ConfigReloadFailed,
    #[serde(rename = "signature.verified")]
    SignatureVerified,
    #[serde(rename = "signature.invalid")]
    SignatureInvalid,
    #[serde(rename = "evidence.copied")]
    EvidenceCopied,
    #[serde(rename = "promotion.attested")]
    PromotionAttested,
}

impl AuditKind {
    pub const ALL: [AuditKind; 39] = [
        AuditKind::EventReceived,
        AuditKind::EventDuplicate,
        AuditKind::EventRejected,
        AuditKind::JobCreated,
        AuditKind::JobAttempt,
        AuditKind::JobSucceeded,
        AuditKind::JobRetrying,
        AuditKind::JobFailed,
        AuditKind::JobRetried,
        AuditKind::JobCancelled,
        AuditKind::JobInterrupted,
        AuditKind::JobDuplicate,
        AuditKind::JobAwaitingApproval,
        AuditKind::JobApproved,
        AuditKind::JobRejected,
        AuditKind::JobExpired,
        AuditKind::ChainRefused,
        AuditKind::AuditPruned,
        AuditKind::TargetCircuitOpened,
        AuditKind::TargetCircuitClosed,
        AuditKind::JobFrozen,
        AuditKind::JobUnfrozen,
        AuditKind::FreezeStarted,
        AuditKind::FreezeEnded,
        AuditKind::JobWaiting,
        AuditKind::GateConditionMet,
        AuditKind::GateBlocked,
        AuditKind::JobFreezeOverridden,
        AuditKind::NotificationFailed,
        AuditKind::NotificationSinkDisabled,
        AuditKind::NotificationSinkEnabled,
        AuditKind::NotificationRetried,
        AuditKind::NotificationDropped,
        AuditKind::ConfigReloaded,
        AuditKind::ConfigReloadFailed,
        AuditKind::SignatureVerified,
        AuditKind::SignatureInvalid,
        AuditKind::EvidenceCopied,
        AuditKind::PromotionAttested,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::EventReceived => "event.received",
            AuditKind::EventDuplicate => "event.duplicate",
            AuditKind::EventRejected => "event.rejected",
            AuditKind::JobCreated => "job.created",
            AuditKind::JobAttempt => "job.attempt",
            AuditKind::JobSucceeded => "job.succeeded",
            AuditKind::JobRetrying => "job.retrying",
            AuditKind::JobFailed => "job.failed",
            AuditKind::JobRetried => "job.retried",
            AuditKind::JobCancelled => "job.cancelled",
            AuditKind::JobInterrupted => "job.interrupted",
            AuditKind::JobDuplicate => "job.duplicate",
            AuditKind::JobAwaitingApproval => "job.awaiting_approval",
            AuditKind::JobApproved => "job.approved",
            AuditKind::JobRejected => "job.rejected",
            AuditKind::JobExpired => "job.expired",
            AuditKind::ChainRefused => "chain.refused",
            AuditKind::AuditPruned => "audit.pruned",
            AuditKind::TargetCircuitOpened => "target.circuit_opened",
            AuditKind::TargetCircuitClosed => "target.circuit_closed",
            AuditKind::JobFrozen => "job.frozen",
            AuditKind::JobUnfrozen => "job.unfrozen",
            AuditKind::FreezeStarted => "freeze.started",
            AuditKind::FreezeEnded => "freeze.ended",
            AuditKind::JobWaiting => "job.waiting",
            AuditKind::GateConditionMet => "gate.condition_met",
            AuditKind::GateBlocked => "gate.blocked",
            AuditKind::JobFreezeOverridden => "job.freeze_overridden",
            AuditKind::NotificationFailed => "notification.failed",
            AuditKind::NotificationSinkDisabled => "notification.sink_disabled",
            AuditKind::NotificationSinkEnabled => "notification.sink_enabled",
            AuditKind::NotificationRetried => "notification.retried",
            AuditKind::NotificationDropped => "notification.dropped",
            AuditKind::ConfigReloaded => "config.reloaded",
            AuditKind::ConfigReloadFailed => "config.reload_failed",
            AuditKind::SignatureVerified => "signature.verified",
            AuditKind::SignatureInvalid => "signature.invalid",
            AuditKind::EvidenceCopied => "evidence.copied",
            AuditKind::PromotionAttested => "promotion.attested",
        }
    }

    pub fn parse(s: &str) -> Option<AuditKind> {
        AuditKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether a record of this kind can be notified (SPEC §10): records about
    /// notifications themselves cannot, so a sink that fails cannot feed itself.
    pub fn notifiable(self) -> bool {
        !self.as_str().starts_with("notification.")
    }
}

/// Who, what, when, outcome and why of one decision. What its hash covers is decided
/// in `chain`, not by how the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    #[serde(serialize_with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: Millis,
    pub kind: AuditKind,
    /// The source name for events, the token name for operator actions, `worker`.
    pub actor: String,
    pub event_id: Option<String>,
    pub job_id: Option<String>,
    pub rule: Option<String>,
    pub target: Option<String>,
    pub repo: Option<String>,
    pub image: Option<String>,
    pub tag: Option<String>,
    pub digest: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub outcome: Option<String>,
    pub upstream_status: Option<u16>,
    pub message: Option<String>,
    /// For chained promotions: the job whose result led here, and how deep.
    pub parent_job_id: Option<String>,
    pub chain_depth: Option<u32>,
    /// How many decisions of the same kind this one record stands for, where records
    /// are aggregated (refusals a minute); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// A stored record: its place in the chain and the hashes that bind it there.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditRecord {
    pub seq: i64,
    #[serde(flatten)]
    pub entry: AuditEntry,
    pub prev_hash: String,
    pub hash: String,
    /// The form `hash` covers (see `audit::chain`): an exported trail carries what
    /// checking it needs.
    pub hash_version: u32,
}

/// The hash of the record before the first.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

impl AuditEntry {
    fn new(kind: AuditKind, actor: &str) -> Self {
        AuditEntry {
            at: now_millis(),
            kind,
            actor: actor.to_string(),
            event_id: None,
            job_id: None,
            rule: None,
            target: None,
            repo: None,
            image: None,
            tag: None,
            digest: None,
            from: None,
            to: None,
            outcome: None,
            upstream_status: None,
            message: None,
            parent_job_id: None,
            chain_depth: None,
            count: None,
        }
    }

    fn about_event(mut self, event: &Event) -> Self {
        self.event_id = Some(event.id.clone());
        self.parent_job_id = event.parent_job_id.clone();
        self.chain_depth = Some(event.chain_depth);
        self.repo = event.subject.repo.clone();
        self.image = event.subject.image.clone();
        self.tag = event.subject.tag.clone();
        self.digest = event.subject.digest.clone();
        self
    }

    fn about_action(mut self, action: Option<&Action>) -> Self {
        if let Some(a) = action {
            let (from, to) = a.describe();
            self.from = Some(from);
            self.to = Some(to);
        }
        self
    }

    pub fn saying(mut self, message: &str) -> Self {
        self.message = Some(bounded(message, MAX_MESSAGE));
        self
    }

    pub fn received(event: &Event) -> Self {
        AuditEntry::new(AuditKind::EventReceived, &event.source)
            .about_event(event)
            .saying(&format!("{} delivery {}", event.kind, event.delivery_id))
    }

    pub fn duplicate(event: &Event, original_event_id: &str) -> Self {
        let mut e = AuditEntry::new(AuditKind::EventDuplicate, &event.source)
            .about_event(event)
            .saying(&format!(
                "delivery {} already stored as event {original_event_id}",
                event.delivery_id
            ));
        e.event_id = Some(original_event_id.to_string());
        e
    }

    /// `count` refused requests of one source for one reason, summarised (see
    /// `ingest::rejections`); `reason` is the last one's.
    pub fn rejections(source: &str, reason: &str, count: u64) -> Self {
        let mut e = AuditEntry::new(AuditKind::EventRejected, source);
        e.count = Some(count);
        if count == 1 {
            e.saying(reason)
        } else {
            e.saying(&format!(
                "{count} requests refused since the last record; the last: {reason}"
            ))
        }
    }

    /// A planned job's first record, of the kind its start in the life cycle names
    /// (its gate opened as `opening` says).
    pub fn job_created(event: &Event, job: &NewJob, opening: Option<&Opening>) -> Self {
        let (_, kind) = job.start(opening);
        let e = AuditEntry::for_new_job(kind, event, job);
        match (&job.action, opening, &job.gate) {
            (Err(err), ..) => e.saying(&format!("{}: {}", err.code.as_str(), err.message)),
            (Ok(_), Some(Opening::Blocked(seen)), _) => e.saying(&gate::blocked_by(seen)),
            (Ok(_), Some(Opening::Waiting), Some(start)) => e.saying(&format!(
                "waiting for {} until {}",
                start.gate.missing().join(", "),
                crate::domain::rfc3339(start.gate.expires_at)
            )),
            // Say why a rule without an approval of its own awaits one.
            _ => match job.approval.as_ref().map(|a| &a.protections) {
                Some(p) if kind == AuditKind::JobAwaitingApproval && !p.is_empty() => e.saying(
                    &format!("awaiting the approval of protection {}", p.join(", ")),
                ),
                _ => e,
            },
        }
    }

    fn for_new_job(kind: AuditKind, event: &Event, job: &NewJob) -> Self {
        let mut e = AuditEntry::new(kind, &event.source)
            .about_event(event)
            .about_action(job.action.as_ref().ok());
        e.job_id = Some(job.id.clone());
        e.rule = Some(job.rule.clone());
        e.target = Some(job.target.clone());
        e
    }

    /// The conditions of a new job's gate that evidence already there met, one
    /// record each, after the job's first.
    pub fn met_at_start(event: &Event, job: &NewJob, gate: &JobGate) -> Vec<Self> {
        gate.conditions
            .iter()
            .filter_map(|c| {
                let by = c.event_id.as_deref()?;
                let e = AuditEntry::for_new_job(AuditKind::GateConditionMet, event, job);
                Some(e.met(gate, &c.name, by))
            })
            .collect()
    }

    /// A condition of a waiting job's gate met by evidence that arrived from `actor`.
    pub fn condition_met(
        job: &Job,
        gate: &JobGate,
        condition: &str,
        event_id: &str,
        actor: &str,
    ) -> Self {
        AuditEntry::for_job(AuditKind::GateConditionMet, actor, job).met(gate, condition, event_id)
    }

    fn met(mut self, gate: &JobGate, condition: &str, event_id: &str) -> Self {
        let missing = gate.missing();
        self.event_id = Some(event_id.to_string());
        self.saying(&if missing.is_empty() {
            format!("condition {condition} met by event {event_id}; the gate is met")
        } else {
            format!(
                "condition {condition} met by event {event_id}; still waiting for {}",
                missing.join(", ")
            )
        })
    }

    /// The record of one attempt of `job` by a worker.
    pub fn attempt(job: &Job, attempt: &AttemptRecord) -> Self {
        let mut e = AuditEntry::for_job(AuditKind::JobAttempt, "worker", job);
        e.upstream_status = attempt.upstream_status;
        match &attempt.error {
            Some(err) => e.saying(&format!(
                "attempt {}: {}: {}",
                attempt.n,
                err.code.as_str(),
                err.message
            )),
            None => e.saying(&format!("attempt {} succeeded", attempt.n)),
        }
    }

    pub fn succeeded(job: &Job, outcome: Outcome) -> Self {
        let mut e = AuditEntry::for_job(AuditKind::JobSucceeded, "worker", job);
        e.outcome = Some(outcome.as_str().to_string());
        e
    }

    pub fn retrying(job: &Job, next_attempt_at: Millis) -> Self {
        AuditEntry::for_job(AuditKind::JobRetrying, "worker", job).saying(&format!(
            "next attempt at {}",
            crate::domain::rfc3339(next_attempt_at)
        ))
    }

    pub fn failed(job: &Job, error: &JobError) -> Self {
        AuditEntry::for_job(AuditKind::JobFailed, "worker", job).saying(&format!(
            "{}: {}",
            error.code.as_str(),
            error.message
        ))
    }

    /// A job not created because its rule already acted on the same parent promotion
    /// (an upstream's echo and gantry's own event both arrived).
    pub fn duplicate_job(event: &Event, job: &NewJob, existing: &str) -> Self {
        AuditEntry::duplicate_of(
            event,
            job,
            existing,
            &format!(
                "rule {} already acts on the result of job {} as job {existing}",
                job.rule,
                event.parent_job_id.as_deref().unwrap_or("-")
            ),
        )
    }

    /// A job not created because its rule already waits on the same artifact (the
    /// same correlation key) for its gate's evidence (SPEC §9).
    pub fn duplicate_wait(event: &Event, job: &NewJob, existing: &str) -> Self {
        AuditEntry::duplicate_of(
            event,
            job,
            existing,
            &format!(
                "rule {} already waits for this artifact's evidence as job {existing}",
                job.rule
            ),
        )
    }

    fn duplicate_of(event: &Event, job: &NewJob, existing: &str, message: &str) -> Self {
        let mut e = AuditEntry::new(AuditKind::JobDuplicate, &event.source)
            .about_event(event)
            .about_action(job.action.as_ref().ok())
            .saying(message);
        e.rule = Some(job.rule.clone());
        e.target = Some(job.target.clone());
        e.job_id = Some(existing.to_string());
        e
    }

    /// Promotions refused because the chain that led to them is too deep.
    pub fn chain_refused(event: &Event, rules: &[String], max_depth: u32) -> Self {
        AuditEntry::new(AuditKind::ChainRefused, &event.source)
            .about_event(event)
            .saying(&format!(
                "chain depth {} exceeds max_chain_depth {max_depth}: not started: {}",
                event.chain_depth,
                rules.join(", ")
            ))
    }

    /// The checkpoint left where old records were pruned.
    pub fn pruned(anchor: &Anchor, count: u64) -> Self {
        AuditEntry::new(AuditKind::AuditPruned, "retention").saying(&format!(
            "{} ({count} records removed by [audit] retain)",
            anchor.checkpoint_message()
        ))
    }

    /// A notification's fate worth the record (SPEC §10), or its sink's (`job_id`
    /// then absent): who, and what happened, in `message`.
    pub fn notification(kind: AuditKind, actor: &str, job_id: Option<&str>, message: &str) -> Self {
        let mut e = AuditEntry::new(kind, actor).saying(message);
        e.job_id = job_id.map(str::to_string);
        e
    }

    /// A target's circuit breaker changed state.
    pub fn circuit(kind: AuditKind, target: &str, message: &str) -> Self {
        let mut e = AuditEntry::new(kind, "worker").saying(message);
        e.target = Some(target.to_string());
        e
    }

    /// A reload of the config (SPEC §12): `kind` says whether it took effect; the
    /// message says which generation and hash, or every problem.
    pub fn config(kind: AuditKind, actor: &str, message: &str) -> Self {
        AuditEntry::new(kind, actor).saying(message)
    }

    /// An attempt cut short by a shutdown; the job is queued again.
    pub fn interrupted(job: &Job, attempt: &AttemptRecord) -> Self {
        let mut e = AuditEntry::for_job(AuditKind::JobInterrupted, "worker", job);
        e.upstream_status = attempt.upstream_status;
        e.saying(&format!(
            "attempt {} interrupted by shutdown; released",
            attempt.n
        ))
    }

    /// A job about to run that a protection added since it was planned holds for
    /// approval (SPEC §9).
    pub fn protected(job: &Job, policy: &crate::domain::approval::ApprovalPolicy) -> Self {
        AuditEntry::for_job(AuditKind::JobAwaitingApproval, "worker", job).saying(&format!(
            "held for the approval of protection {}",
            policy.protections.join(", ")
        ))
    }

    /// A waiting job failed by negative evidence (SPEC §9).
    pub fn gate_blocked(job: &Job, seen: &Seen, actor: &str) -> Self {
        let mut e =
            AuditEntry::for_job(AuditKind::GateBlocked, actor, job).saying(&gate::blocked_by(seen));
        e.event_id = Some(seen.event_id.clone());
        e
    }

    /// A job held by freeze windows without spending an attempt (SPEC §9).
    pub fn frozen(job: &Job, freezes: &[String], until: Millis) -> Self {
        AuditEntry::for_job(AuditKind::JobFrozen, "worker", job).saying(&format!(
            "frozen by {} until {}",
            freezes.join(", "),
            crate::domain::rfc3339(until)
        ))
    }

    /// A run-time freeze started by an operator, with its scope, end and reason.
    pub fn freeze_started(f: &crate::domain::freeze::RuntimeFreeze) -> Self {
        let list = |l: &Option<Vec<String>>| l.as_ref().map_or("all".to_string(), |l| l.join(", "));
        AuditEntry::new(AuditKind::FreezeStarted, &f.started_by).saying(&format!(
            "freeze {} until {} (repos: {}; targets: {}): {}",
            f.name,
            crate::domain::rfc3339(f.until),
            list(&f.to_repos),
            list(&f.targets),
            f.reason
        ))
    }

    /// A run-time freeze ended by an operator before its end.
    pub fn freeze_ended(name: &str, actor: &str) -> Self {
        AuditEntry::new(AuditKind::FreezeEnded, actor).saying(&format!("freeze {name} ended"))
    }

    /// A frozen job let run by an operator despite the freezes holding it (`holding`):
    /// who, which freezes, and why.
    pub fn freeze_overridden(
        job: &Job,
        holding: &[String],
        o: &crate::domain::freeze::FreezeOverride,
    ) -> Self {
        let names = match holding {
            [] => "the freezes holding it".to_string(),
            names => names.join(", "),
        };
        AuditEntry::operator(AuditKind::JobFreezeOverridden, &o.by, job)
            .saying(&format!("overrode {names}: {}", o.comment))
    }

    /// A frozen job leased again once its freezes ended.
    pub fn unfrozen(job: &Job) -> Self {
        AuditEntry::for_job(AuditKind::JobUnfrozen, "worker", job)
    }

    /// An operator's action, by the name of the token that made it.
    pub fn operator(kind: AuditKind, token_name: &str, job: &Job) -> Self {
        AuditEntry::for_job(kind, token_name, job)
    }

    /// A supply-chain record about `job` (SPEC §15), for the `digest` it concerns
    /// (the promoted one, which the event may not have named).
    pub fn supply(kind: AuditKind, job: &Job, digest: &str, message: &str) -> Self {
        let mut e = AuditEntry::for_job(kind, "worker", job);
        e.digest = Some(digest.to_string());
        e.saying(message)
    }

    fn for_job(kind: AuditKind, actor: &str, job: &Job) -> Self {
        let mut e = AuditEntry::new(kind, actor).about_action(job.action.as_ref());
        e.parent_job_id = job.parent_job_id.clone();
        e.chain_depth = Some(job.chain_depth);
        e.event_id = Some(job.event_id.clone());
        e.job_id = Some(job.id.clone());
        e.rule = Some(job.rule.clone());
        e.target = Some(job.target.clone());
        match job.action.as_ref().map(|a| &a.op) {
            Some(Op::Promote { from, .. }) => {
                e.repo = Some(from.repo.clone());
                e.image = Some(from.image.clone());
                e.tag = Some(from.tag.clone());
                e.digest = from.digest.clone();
            }
            Some(Op::Copy { from, .. } | Op::Move { from, .. }) => {
                e.repo = Some(from.repo.clone());
                e.digest = from.digest.clone();
            }
            _ => {}
        }
        e
    }
}
