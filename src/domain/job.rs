use serde::{Deserialize, Serialize, Serializer};

use super::approval::{Approval, ApprovalPolicy, JobApproval};
use super::freeze::{FreezeOverride, Frozen};
use super::gate::{GateStart, JobGate, Opening};
use super::{Action, Millis};

/// `queued → running → succeeded`, with `retrying` between attempts and `failed` or
/// `cancelled` as the other ends (SPEC §8); a gated job waits for its evidence in
/// `waiting`, a job that needs people's approval waits in `awaiting_approval`, either
/// may end `expired` and the latter `rejected`, and a job a freeze window holds is
/// `frozen` (§9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Waiting,
    AwaitingApproval,
    Queued,
    Running,
    Retrying,
    Succeeded,
    Failed,
    Cancelled,
    Rejected,
    Expired,
    Frozen,
}

impl JobState {
    pub const ALL: [JobState; 11] = [
        JobState::Waiting,
        JobState::AwaitingApproval,
        JobState::Queued,
        JobState::Running,
        JobState::Retrying,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Rejected,
        JobState::Expired,
        JobState::Frozen,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Waiting => "waiting",
            JobState::AwaitingApproval => "awaiting_approval",
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Retrying => "retrying",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Rejected => "rejected",
            JobState::Expired => "expired",
            JobState::Frozen => "frozen",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The promotion was made by this job.
    Promoted,
    /// The target already held the expected image; nothing was changed.
    Noop,
    /// A dry run: the upstream was asked whether it would work (where it can be),
    /// nothing was changed.
    DryRun,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Promoted => "promoted",
            Outcome::Noop => "noop",
            Outcome::DryRun => "dry_run",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        [Outcome::Promoted, Outcome::Noop, Outcome::DryRun]
            .into_iter()
            .find(|o| o.as_str() == s)
    }
}

/// Why a job or an attempt failed, in the `{code, message}` shape of every answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobError {
    pub code: JobErrorCode,
    pub message: String,
}

impl JobError {
    pub fn new(code: JobErrorCode, message: impl Into<String>) -> Self {
        JobError {
            code,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobErrorCode {
    /// The upstream refused the request (a 4xx other than 408 and 429).
    UpstreamRejected,
    /// The upstream answered 408, 429 or 5xx.
    UpstreamUnavailable,
    /// No answer within the target's timeout; the effect may still happen.
    Timeout,
    /// Connection refused, reset or otherwise broken.
    NetworkError,
    /// An action template referred to a value the event does not have.
    TemplateError,
    /// The rule's target is not configured (any more).
    UnknownTarget,
    /// The worker holding the job stopped renewing its lease (crashed or was killed).
    LeaseExpired,
    /// The source tag no longer points at the digest the event named.
    DigestMismatch,
    /// The attempt was still running when the process shut down.
    Interrupted,
    /// A value that would become part of an upstream URL (repository, tag, digest,
    /// repo key, path, build or bundle name) does not fit the upstream's grammar; no
    /// request was sent.
    InvalidReference,
    /// A move copied and verified its image but could not remove the source tag alone
    /// without removing other tags too; the source tag stays.
    MoveIncomplete,
    /// An upstream answer was larger than gantry reads (SPEC §13 bounds).
    ResponseTooLarge,
    /// Negative evidence (a gate's `block = true` condition) arrived for the
    /// artifact (SPEC §9).
    GateBlocked,
    /// The trigger lacks a field its gate correlates on, so no evidence could ever
    /// be matched to it.
    GateUncorrelated,
    /// The job waited on a gate or for approval when a reload removed its rule.
    RuleRemoved,
    /// No signature by a listed key for the promoted digest came within the gate's
    /// window (SPEC §15); the signatures seen that did not count are on the record.
    SignatureInvalid,
    /// The promotion was made but its attestation could not be signed or pushed;
    /// the next attempt finds the promotion done and attests again.
    AttestationFailed,
}

impl JobErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            JobErrorCode::UpstreamRejected => "upstream_rejected",
            JobErrorCode::UpstreamUnavailable => "upstream_unavailable",
            JobErrorCode::Timeout => "timeout",
            JobErrorCode::NetworkError => "network_error",
            JobErrorCode::TemplateError => "template_error",
            JobErrorCode::UnknownTarget => "unknown_target",
            JobErrorCode::LeaseExpired => "lease_expired",
            JobErrorCode::DigestMismatch => "digest_mismatch",
            JobErrorCode::Interrupted => "interrupted",
            JobErrorCode::InvalidReference => "invalid_reference",
            JobErrorCode::MoveIncomplete => "move_incomplete",
            JobErrorCode::ResponseTooLarge => "response_too_large",
            JobErrorCode::GateBlocked => "gate_blocked",
            JobErrorCode::GateUncorrelated => "gate_uncorrelated",
            JobErrorCode::RuleRemoved => "rule_removed",
            JobErrorCode::SignatureInvalid => "signature_invalid",
            JobErrorCode::AttestationFailed => "attestation_failed",
        }
    }

    pub fn parse(s: &str) -> Option<JobErrorCode> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }
}

/// One attempt as the job history shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AttemptRecord {
    pub n: u32,
    #[serde(serialize_with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: Millis,
    pub duration_ms: u64,
    pub upstream_status: Option<u16>,
    pub error: Option<JobError>,
}

/// A job as every admin answer shows it (SPEC §3).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Job {
    pub id: String,
    pub rule: String,
    pub state: JobState,
    pub outcome: Option<Outcome>,
    pub event_id: String,
    pub target: String,
    /// `None` only when the action's templates could not be rendered.
    pub action: Option<Action>,
    pub attempts: Vec<AttemptRecord>,
    pub last_error: Option<JobError>,
    pub parent_job_id: Option<String>,
    pub chain_depth: u32,
    /// The gate the job was created under, when its rule has one (§9): which
    /// conditions are met, by which events, and when the wait ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<JobGate>,
    /// The job does not run before this (a `soak` timer, §9).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_rfc3339"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub soak_until: Option<Millis>,
    /// The approval the job was created under, when its rule asks for one (§9).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<JobApproval>,
    /// Every verdict given on the job, oldest first.
    pub approvals: Vec<Approval>,
    /// While the job is `frozen`: the freezes holding it and when the last ends (§9).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frozen: Option<Frozen>,
    /// The operator's override of freezes that held the job, which the worker then
    /// lets it through (§9).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freeze_override: Option<FreezeOverride>,
    /// The W3C `traceparent` of the request that made the job, when traces are on:
    /// its attempts join that trace (SPEC §12).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
    #[serde(serialize_with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Millis,
    #[serde(serialize_with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Millis,
}

impl Job {
    /// The approval policy the job is under, if any.
    pub fn approval_policy(&self) -> Option<&ApprovalPolicy> {
        self.approval.as_ref().map(|a| &a.policy)
    }
}

/// A job planned by the rules for a new event: queued, waiting on its gate, awaiting
/// approval, or failed at once when its templates could not be rendered (SPEC §8,
/// template error) or its gate is blocked.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub rule: String,
    pub target: String,
    pub action: Result<Action, JobError>,
    /// The rule's approval, kept with the job.
    pub approval: Option<ApprovalPolicy>,
    /// Who set the trigger event off, by the rule's `initiator` pointer.
    pub initiator: Option<String>,
    /// The rule's gate, opened by the store on the evidence it holds.
    pub gate: Option<GateStart>,
    /// The end of its soak: the trigger's time plus the longest `soak` that applies.
    pub soak_until: Option<Millis>,
    /// The `traceparent` of the request that made it, when traces are on (SPEC §12).
    pub trace_parent: Option<String>,
}

impl NewJob {
    /// Where the job starts and its first record (the life cycle's `start`), its gate
    /// opened as `opening` says.
    pub fn start(&self, opening: Option<&Opening>) -> (JobState, crate::audit::AuditKind) {
        super::lifecycle::start(self.action.is_ok(), opening, self.approval.is_some())
    }
}

/// An optional instant as RFC 3339.
pub fn opt_rfc3339<S: Serializer>(ms: &Option<Millis>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => as_rfc3339(ms, s),
        None => s.serialize_none(),
    }
}

pub fn as_rfc3339<S: Serializer>(ms: &Millis, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&super::rfc3339(*ms))
}
