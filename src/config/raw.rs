//! The configuration exactly as written: what serde reads from the merged layers.
//!
//! Every struct denies unknown fields, so a misspelt key is an error that names it
//! instead of a setting silently ignored. Nothing here is trusted yet: `validate`
//! turns these into the typed values the rest of gantry runs on.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub server: RawServer,
    pub store: RawStore,
    pub defaults: RawDefaults,
    pub worker: RawWorker,
    #[serde(default)]
    pub admin: RawAdmin,
    pub audit: RawAudit,
    #[serde(default)]
    pub sources: Vec<RawSource>,
    #[serde(default)]
    pub targets: Vec<RawTarget>,
    #[serde(default)]
    pub rules: Vec<RawRule>,
    #[serde(default)]
    pub freezes: Vec<RawFreeze>,
    #[serde(default)]
    pub protections: Vec<RawProtection>,
    #[serde(default)]
    pub notifications: Vec<super::notifications::RawNotification>,
    #[serde(default)]
    pub auth: super::console::RawAuth,
    #[serde(default)]
    pub tracing: super::traces::RawTracing,
}

/// `[[protections]]` (SPEC §9): approval and soak every job promoting to the
/// destinations it names needs, whatever rule made it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProtection {
    pub name: String,
    pub targets: Option<Vec<String>>,
    pub to_repos: Option<Vec<String>>,
    pub approval: Option<RawApproval>,
    #[serde(default, with = "humantime_serde")]
    pub soak: Option<Duration>,
    /// Sign an attestation of each promotion it covers (SPEC §15).
    pub attest: Option<RawAttest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: String,
    pub max_body_bytes: u64,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Where people reach this gantry; links in notifications point there.
    pub public_url: Option<String>,
    /// The console at `/ui/` (SPEC §11).
    pub console: bool,
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub url: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    pub max_chain_depth: u32,
    #[serde(with = "humantime_serde")]
    pub dedupe_window: Duration,
    pub retry: RawRetry,
}

/// Retry settings; every field optional so that a rule can override only some.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub max_attempts: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub initial_backoff: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub max_backoff: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorker {
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    pub concurrency: usize,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// Records older than this are pruned (the chain stays verifiable); unset keeps
    /// everything.
    #[serde(default, with = "humantime_serde")]
    pub retain: Option<Duration>,
    /// Refused requests are recorded at most once per this period per source and
    /// reason, with their count.
    #[serde(with = "humantime_serde")]
    pub rejections_every: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    #[serde(default)]
    pub tokens: Vec<RawToken>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    pub name: String,
    pub token: String,
    pub role: super::Role,
    /// The groups a rule's `approval.groups` names its approvers by.
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub name: String,
    pub format: super::Format,
    pub verify: RawVerify,
    /// Subject field → JSON pointer, for `generic` and `github` payloads.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    pub type_header: Option<String>,
    pub delivery_header: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVerify {
    pub scheme: super::SchemeKind,
    pub header: Option<String>,
    pub prefix: Option<String>,
    pub encoding: Option<super::Encoding>,
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default, with = "humantime_serde")]
    pub tolerance: Option<Duration>,
    /// `url-token`: the query parameter that carries the secret (`token` when absent).
    pub param: Option<String>,
    /// `oidc`: the identity provider whose tokens are trusted, exactly as its tokens
    /// write `iss`.
    pub issuer: Option<String>,
    /// `oidc`: what the tokens' `aud` must hold.
    pub audience: Option<String>,
    /// `oidc`: where the issuer's keys are, when not where its discovery document says.
    pub jwks_url: Option<String>,
    /// `oidc`: clock skew allowed on `exp`, `nbf` and `iat` (60s when absent).
    #[serde(default, with = "humantime_serde")]
    pub leeway: Option<Duration>,
    /// `oidc`: JSON pointer into the token's claims → matcher, all of which must match.
    #[serde(default)]
    pub claims: BTreeMap<String, OneOrMany>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub name: String,
    pub kind: super::TargetKind,
    pub url: String,
    pub token: Option<String>,
    pub api_key: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    pub max_concurrency: Option<usize>,
    pub circuit_breaker: Option<RawBreaker>,
    /// Every job against this target is a dry run.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    /// Consecutive retryable failures that open the circuit; 0 disables it.
    pub failures: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub cool_down: Option<Duration>,
}

/// A matcher as written: one pattern, or a list meaning "any of these".
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn patterns(&self) -> &[String] {
        match self {
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(v) => v,
        }
    }
}

/// `match = { ... }`: subject fields only, so a typo such as `imgae` is an error.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub repo: Option<OneOrMany>,
    pub image: Option<OneOrMany>,
    pub tag: Option<OneOrMany>,
    pub digest: Option<OneOrMany>,
    pub path: Option<OneOrMany>,
    pub build_name: Option<OneOrMany>,
    pub build_number: Option<OneOrMany>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: String,
    pub source: Option<OneOrMany>,
    pub event: Option<OneOrMany>,
    #[serde(default, rename = "match")]
    pub matches: RawMatch,
    /// JSON pointer into the payload → matcher.
    #[serde(default)]
    pub when: BTreeMap<String, OneOrMany>,
    /// JSON pointer into the claims an `oidc` source verified → matcher.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, OneOrMany>,
    pub action: RawAction,
    pub retry: Option<RawRetry>,
    /// Plan and audit, ask the upstream to rehearse, change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// People must approve each job before it runs (SPEC §9).
    pub approval: Option<RawApproval>,
    /// A JSON pointer into the trigger event's payload naming who set the promotion
    /// off, refused as its approver unless `approval.allow_self`.
    pub initiator: Option<String>,
    /// More evidence about the same artifact, from other events (SPEC §9).
    pub gate: Option<RawGate>,
    /// Sign an attestation of each promotion (SPEC §15).
    pub attest: Option<RawAttest>,
}

/// `gate = { correlate, within, require = [...], soak }` on a rule.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawGate {
    /// Subject fields the trigger and every condition must agree on; `["digest"]`
    /// when absent.
    pub correlate: Option<Vec<String>>,
    /// How long evidence counts before the trigger, and the job waits after it.
    #[serde(default, with = "humantime_serde")]
    pub within: Option<Duration>,
    #[serde(default)]
    pub require: Vec<RawCondition>,
    /// The job does not run before its trigger is this old.
    #[serde(default, with = "humantime_serde")]
    pub soak: Option<Duration>,
}

/// One condition of a gate: an event matched as a rule's trigger is.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawCondition {
    pub name: String,
    pub source: Option<OneOrMany>,
    pub event: Option<OneOrMany>,
    #[serde(default, rename = "match")]
    pub matches: RawMatch,
    #[serde(default)]
    pub when: BTreeMap<String, OneOrMany>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, OneOrMany>,
    /// Negative evidence: a matching event fails the waiting job.
    #[serde(default)]
    pub block: bool,
    /// A signature condition (SPEC §15): met by a signature of the promoted digest,
    /// read from the source registry, instead of by an event.
    pub signature: Option<RawSignature>,
}

/// `signature = { keys = [...] }`: public keys (secret references to PEM).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSignature {
    pub keys: Vec<String>,
}

/// `attest = { key }` on a rule or protection: the private key (a secret reference
/// to PEM) gantry signs its promotion attestations with (SPEC §15).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAttest {
    #[serde(serialize_with = "super::supply::shown_reference")]
    pub key: String,
}

/// `approval = { count, groups, timeout, allow_self }` on a rule, or with per-group
/// quorums `all_of = [{ groups, count }, ...]` instead of `count` and `groups`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawApproval {
    /// 1 when absent.
    pub count: Option<u32>,
    /// Any `operate` token may approve when absent.
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub all_of: Vec<RawQuorum>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub allow_self: bool,
}

/// One entry of `approval.all_of`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuorum {
    pub groups: Vec<String>,
    #[serde(default = "one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}

/// An action as written. Which fields apply depends on `type`; the rules compiler
/// refuses the ones that do not.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAction {
    #[serde(rename = "type")]
    pub kind: super::ActionKind,
    pub target: String,
    /// The repository to promote from, when the event does not name it.
    pub from_repo: Option<String>,
    pub to_repo: Option<String>,
    pub to_image: Option<String>,
    pub to_tag: Option<String>,
    pub to_path: Option<String>,
    /// promote between two oci targets: the destination target's name.
    pub to_target: Option<String>,
    pub copy: Option<bool>,
    /// build-promote
    pub status: Option<String>,
    pub comment: Option<String>,
    pub dependencies: Option<bool>,
    pub properties: Option<BTreeMap<String, OneOrMany>>,
    /// release-bundle-promote
    pub bundle: Option<String>,
    pub version: Option<String>,
    pub environment: Option<String>,
    pub signing_key: Option<String>,
    pub included_repositories: Option<Vec<String>>,
}

/// `[[freezes]]` (SPEC §9): a recurring window (`cron` + `duration` or `end_cron`) or
/// a one-off one (`from` + `until`), read in `timezone`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFreeze {
    pub name: String,
    pub to_repos: Option<Vec<String>>,
    pub targets: Option<Vec<String>>,
    pub cron: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub duration: Option<Duration>,
    pub end_cron: Option<String>,
    pub timezone: Option<String>,
    pub from: Option<String>,
    pub until: Option<String>,
    /// The token groups that may override the freeze for a job; any `operate` token
    /// when absent (docs/policy.md, "Freeze windows").
    pub override_groups: Option<Vec<String>>,
}
