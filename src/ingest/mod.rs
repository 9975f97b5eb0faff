//! The way in: verify a request's raw bytes with its source's scheme, normalize the
//! body into events, ask the rules for promotions, and commit events and jobs together
//! before answering. Rejections are audited too.

mod formats;
mod oidc;
mod rejections;
mod verify;

use std::collections::HashMap;
use std::sync::Arc;

pub use formats::{MAX_DEPTH, NormalizeError, Normalizer};
pub use rejections::{MAX_SOURCE_NAME, Rejections, cut_source_name};
pub use verify::{Verified, Verifier, VerifyError};

use crate::config::{Config, Problem};
use serde::Serialize;

use crate::domain::approval::ApprovalPolicy;
use crate::domain::freeze::Freeze;
use crate::domain::gate::JobGate;
use crate::domain::{Action, Event, JobError, NewJob, now_millis};
use crate::rules::RuleSet;
use crate::store::{IngestOutcome, IngestPolicy, NewEvent, Store, StoreError};

/// What a request carries besides its body, whatever carried it: headers by
/// case-insensitive name, and the URL's query string.
pub trait Headers {
    fn get(&self, name: &str) -> Option<&str>;

    /// The query string, undecoded; only the `url-token` scheme reads it, and
    /// nothing logs it (it holds that scheme's secret). None by default.
    fn query(&self) -> &str {
        ""
    }
}

impl Headers for Vec<(String, String)> {
    fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A configured source: how its requests are verified and read.
#[derive(Debug)]
pub struct Source {
    pub name: String,
    pub verifier: Verifier,
    pub normalizer: Normalizer,
}

/// All configured sources by name.
#[derive(Debug, Clone, Default)]
pub struct Sources(HashMap<String, Arc<Source>>);

impl Sources {
    /// Prepares every source's verifier and reader; the problems name the source.
    pub fn from_config(config: &Config) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut sources = HashMap::new();
        for s in &config.sources {
            match Verifier::new(&s.verify) {
                Ok(verifier) => {
                    let source = Source {
                        name: s.name.clone(),
                        verifier,
                        normalizer: Normalizer::new(s),
                    };
                    sources.insert(s.name.clone(), Arc::new(source));
                }
                Err(e) => problems.push(Problem::error(format!("sources[{}].verify", s.name), e)),
            }
        }
        if problems.is_empty() {
            Ok(Sources(sources))
        } else {
            Err(problems)
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Source>> {
        self.0.get(name)
    }

    /// The sources' names, sorted (a form offers them).
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.0.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The name as the request gave it, cut to [`MAX_SOURCE_NAME`].
    #[error("unknown source `{0}`")]
    UnknownSource(String),
    #[error(transparent)]
    Signature(#[from] VerifyError),
    #[error(transparent)]
    Body(#[from] NormalizeError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the sender is told: the events stored (or recognised as duplicates).
#[derive(Debug)]
pub struct Receipt {
    pub events: Vec<IngestOutcome>,
}

impl IngestError {
    /// An unknown source, its name cut so that a long path cannot flood an answer
    /// or a log line.
    pub fn unknown_source(name: &str) -> Self {
        IngestError::UnknownSource(cut_source_name(name))
    }
}

impl Receipt {
    /// 202 when anything new was stored, 200 when every event was a duplicate.
    pub fn all_duplicates(&self) -> bool {
        self.events.iter().all(|e| e.duplicate)
    }
}

/// Plans an event's jobs for the store. A chain deeper than `max_chain_depth` gets
/// none, and a note on the record says which promotions were refused.
pub fn plan(rules: &RuleSet, event: Event, max_chain_depth: u32) -> NewEvent {
    let jobs = plan_jobs(rules, &event);
    let evidence = rules.evidence(&event);
    let mut new = NewEvent {
        event,
        jobs,
        evidence,
        notes: Vec::new(),
    };
    new.refuse_past(max_chain_depth);
    new
}

/// Plans the jobs the rules ask for an event: a template that cannot be rendered
/// still makes a job, recorded as failed, so the decision is on the record.
pub fn plan_jobs(rules: &RuleSet, event: &Event) -> Vec<NewJob> {
    // The trace the jobs' attempts join: the request's, or for a chain the attempt's.
    let trace_parent = crate::telemetry::traceparent();
    rules
        .plan(event)
        .into_iter()
        .map(|p| {
            // A trigger its gate cannot correlate fails at once, like a template error.
            let (action, gate) = match (p.action, p.rule.gate_for(event)) {
                (Ok(action), Ok(gate)) => (Ok(action), gate),
                (Err(e), _) | (_, Err(e)) => (Err(e), None),
            };
            // Its rule's approval and soak, and the protections' on its destination.
            let guarded = rules.guard(p.rule, action.as_ref().ok());
            NewJob {
                id: crate::domain::new_id(),
                rule: p.rule.name.clone(),
                target: p.rule.target.clone(),
                action,
                approval: guarded.approval,
                initiator: p.rule.initiator_of(event),
                gate,
                soak_until: guarded
                    .soak_ms
                    .map(|soak| event.received_at.saturating_add(soak)),
                trace_parent: trace_parent.clone(),
            }
        })
        .collect()
}

/// What one event would do: the promotions the rules would queue for it, and the
/// gates it would be evidence for.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Simulation {
    pub event: Event,
    pub promotions: Vec<Promotion>,
    pub evidence: Vec<EvidenceFor>,
}

/// A gate condition an event meets (SPEC §9), as `simulate` shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EvidenceFor {
    pub rule: String,
    pub condition: String,
    /// Negative evidence: it would fail the job waiting on it.
    pub block: bool,
    /// The correlation key it is filed under.
    pub key: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Promotion {
    pub rule: String,
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// Why the job would fail at once (a template the event cannot fill).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    /// The approval the job would await before it runs (SPEC §9).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalPolicy>,
    /// The gate the job would open, before any evidence is looked at (SPEC §9).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<JobGate>,
    /// When its soak would end (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soak_until: Option<String>,
    /// The config's freeze windows that cover its destination, active now or not.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub freezes: Vec<String>,
}

/// An offline dry run of a body as `source` would receive it: normalized and
/// matched, nothing verified, stored or sent (`gantry simulate`, `POST
/// /api/v1/simulate`).
pub fn simulate(
    sources: &Sources,
    rules: &RuleSet,
    freezes: &[Freeze],
    source: &str,
    body: &[u8],
    headers: &dyn Headers,
) -> Result<Vec<Simulation>, IngestError> {
    let src = sources
        .get(source)
        .ok_or_else(|| IngestError::unknown_source(source))?;
    let events = src.normalizer.normalize(
        &src.name,
        Verified::trusted_local_file(body),
        headers,
        now_millis(),
    )?;
    Ok(events
        .into_iter()
        .map(|event| {
            let promotions = plan_jobs(rules, &event)
                .into_iter()
                .map(|j| {
                    let repo = j.action.as_ref().ok().and_then(|a| a.output_subject().repo);
                    let freezes = freezes
                        .iter()
                        .filter(|f| f.covers(&j.target, repo.as_deref()))
                        .map(|f| f.name.clone())
                        .collect();
                    let (action, error) = match j.action {
                        Ok(a) => (Some(a), None),
                        Err(e) => (None, Some(e)),
                    };
                    Promotion {
                        rule: j.rule,
                        target: j.target,
                        action,
                        error,
                        approval: j.approval,
                        gate: j.gate.map(|g| g.gate),
                        soak_until: j.soak_until.map(crate::domain::rfc3339),
                        freezes,
                    }
                })
                .collect();
            let evidence = rules
                .evidence(&event)
                .into_iter()
                .map(|e| EvidenceFor {
                    rule: e.rule,
                    condition: e.condition,
                    block: e.block,
                    key: e.key,
                })
                .collect();
            Simulation {
                event,
                promotions,
                evidence,
            }
        })
        .collect())
}

/// The ingest pipeline shared by the HTTP route and tests.
pub struct Ingest {
    pub store: Arc<dyn Store>,
    /// Refused requests, summarised on the record.
    pub rejections: Arc<Rejections>,
}

impl Ingest {
    /// Verifies, normalizes, plans and commits one request body. A refusal is put
    /// on the record by the caller, which knows what the sender was answered.
    /// `live` is the config in force for this request: its sources, rules and
    /// dedupe window.
    pub async fn receive(
        &self,
        live: &crate::live::Generation,
        source_name: &str,
        headers: &dyn Headers,
        body: &[u8],
    ) -> Result<Receipt, IngestError> {
        let source = live
            .sources
            .get(source_name)
            .ok_or_else(|| IngestError::unknown_source(source_name))?;
        let verified = source.verifier.verify(headers, body).await?;
        // Signed: the sender's trace may be continued now, and not before.
        crate::telemetry::continue_trace(headers);
        let events = source
            .normalizer
            .normalize(&source.name, verified, headers, now_millis())?;
        // Planned here, in parallel with other requests; the store links echoes to
        // their chains in its transaction and applies the depth limit then.
        let policy = IngestPolicy {
            dedupe_window: live.config.defaults.dedupe_window,
            max_chain_depth: live.config.defaults.max_chain_depth,
        };
        let batch = events
            .into_iter()
            .map(|event| plan(&live.rules, event, policy.max_chain_depth))
            .collect();
        let events = self.store.ingest(batch, policy).await?;
        Ok(Receipt { events })
    }
}
