//! Where promotions happen: one trait, one implementation per kind of upstream.

mod artifactory;
// Also read by ingest, for an OIDC issuer's documents (SPEC §16).
pub(crate) mod body;
mod breaker;
mod oci;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Semaphore;

pub use breaker::{Admission, Breaker, Change};

use crate::config::{Config, TargetKind};
use crate::domain::{Action, ImageRef, JobError, JobErrorCode, Outcome, bounded};
use crate::supply::Signed;

/// Upstream bodies kept in errors are cut to this many bytes.
pub const MAX_UPSTREAM_MESSAGE: usize = 512;

/// What a successful attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effect {
    pub outcome: Outcome,
    pub upstream_status: Option<u16>,
    /// The evidence tags (signatures, attestations, SBOMs) the promotion carried to
    /// the destination (SPEC §15); empty when they were there already.
    pub evidence: Vec<String>,
}

impl Effect {
    pub fn new(outcome: Outcome, upstream_status: Option<u16>) -> Effect {
        Effect {
            outcome,
            upstream_status,
            evidence: Vec::new(),
        }
    }
}

/// Why an attempt failed, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetError {
    pub error: JobError,
    pub retryable: bool,
    pub upstream_status: Option<u16>,
    /// The upstream's `Retry-After`, when it sent one.
    pub retry_after: Option<Duration>,
    /// The request may still take effect upstream (timeout, reset after sending):
    /// the next attempt waits at least the target's timeout before re-checking.
    pub ambiguous: bool,
}

impl TargetError {
    /// Digest pinning, shared by every target: the source must still hold the digest
    /// the event named (`named`), or the promotion would ship an untested build.
    /// `holds` says how the source holds it ("points at", "has checksum").
    pub fn unless_pinned(
        subject: &dyn std::fmt::Display,
        named: Option<&str>,
        current: Option<&str>,
        holds: &str,
    ) -> Result<(), TargetError> {
        match (named, current) {
            (Some(named), Some(current)) if named != current => Err(TargetError::permanent(
                JobErrorCode::DigestMismatch,
                format!("{subject} now {holds} {current}, not {named} named by the event"),
            )),
            _ => Ok(()),
        }
    }

    /// A failure no retry can fix.
    pub fn permanent(code: JobErrorCode, message: impl Into<String>) -> Self {
        TargetError {
            error: JobError::new(code, message),
            retryable: false,
            upstream_status: None,
            retry_after: None,
            ambiguous: false,
        }
    }
}

/// A value refused before it could become part of an upstream URL (SPEC §13): a
/// signed event is still only as careful as whoever filled it in, and a `..` in a
/// name would make the URL parser name another repository.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} `{value}` {reason}; no request was made with it")]
pub struct InvalidReference {
    what: &'static str,
    value: String,
    reason: &'static str,
}

impl InvalidReference {
    pub fn new(what: &'static str, value: &str, reason: &'static str) -> Self {
        InvalidReference {
            what,
            // The value is the sender's: kept short in the job's error.
            value: bounded(value, 160),
            reason,
        }
    }
}

impl From<InvalidReference> for TargetError {
    fn from(e: InvalidReference) -> Self {
        TargetError::permanent(JobErrorCode::InvalidReference, e.to_string())
    }
}

#[async_trait]
pub trait Target: Send + Sync {
    /// Carries out one rendered action against the upstream, idempotently: it reads
    /// the target first and answers `Noop` when the expected image is already there,
    /// and it refuses (`digest_mismatch`) when the source no longer holds the digest
    /// the event named. `fence` is asked just before each request that changes the
    /// upstream.
    async fn perform(&self, action: &Action, fence: &dyn Fence) -> Result<Effect, TargetError>;

    /// The digest `image` names (its tag's, when it names none) and the signatures
    /// stored for that digest in cosign's layout beside it (SPEC §15).
    async fn signatures(&self, image: &ImageRef) -> Result<(String, Vec<Signed>), TargetError>;

    /// Attaches a signed attestation (a DSSE `envelope`) of job `job_id` to `image`
    /// (its digest set) in the target, or in `to_target` when the promotion went
    /// there; false when the job's attestation is there already.
    async fn attach(
        &self,
        image: &ImageRef,
        to_target: Option<&str>,
        envelope: Vec<u8>,
        job_id: &str,
    ) -> Result<bool, TargetError>;

    /// The DSSE envelopes attached to `image`'s digest (its `.att` layers).
    async fn attestations(&self, image: &ImageRef) -> Result<Vec<Vec<u8>>, TargetError>;
}

/// Whether the attempt may still change the upstream: the worker answers from the
/// store (does it still hold the job's lease?), so a worker that lost its job makes
/// no change after it could know (SPEC §13).
#[async_trait]
pub trait Fence: Send + Sync {
    async fn holds(&self) -> bool;
}

impl dyn Fence + '_ {
    /// Passes while the fence holds; otherwise the attempt stops before its change.
    /// Retryable: when the store could not be asked the job is still this worker's,
    /// and when it is not, the store refuses this worker's record anyway.
    pub async fn check(&self) -> Result<(), TargetError> {
        if self.holds().await {
            return Ok(());
        }
        Err(TargetError {
            retryable: true,
            ..TargetError::permanent(
                JobErrorCode::LeaseExpired,
                "the job's lease was lost before the change was made; nothing was changed",
            )
        })
    }
}

/// A configured target with what guards it: the permits that cap its concurrent
/// attempts and its circuit breaker.
pub struct Handle {
    pub target: Arc<dyn Target>,
    pub permits: Semaphore,
    pub breaker: Breaker,
    pub timeout: Duration,
}

/// All configured targets by name.
#[derive(Clone, Default)]
pub struct Targets(HashMap<String, Arc<Handle>>);

impl Targets {
    pub fn from_config(config: &Config) -> Result<Targets, reqwest::Error> {
        // Every oci target's registry, so one can promote into another.
        let mut registries = HashMap::new();
        for t in config.targets.iter().filter(|t| t.kind == TargetKind::Oci) {
            registries.insert(t.name.clone(), Arc::new(oci::Registry::new(t)?));
        }
        let registries = Arc::new(registries);
        let mut map = HashMap::new();
        for t in &config.targets {
            let target: Arc<dyn Target> = match (t.kind, registries.get(&t.name)) {
                (TargetKind::Oci, Some(registry)) => {
                    Arc::new(oci::OciTarget::new(registry.clone(), registries.clone()))
                }
                _ => Arc::new(artifactory::Artifactory::new(t)?),
            };
            let handle = Handle {
                target,
                permits: Semaphore::new(t.max_concurrency),
                breaker: Breaker::new(t.breaker),
                timeout: t.timeout,
            };
            map.insert(t.name.clone(), Arc::new(handle));
        }
        Ok(Targets(map))
    }

    /// An anonymous OCI registry at `url` that is not configured as a target, for
    /// reading what is public there (`gantry verify-promotion` without `--target`).
    pub fn anonymous_registry(url: reqwest::Url) -> Result<Arc<dyn Target>, reqwest::Error> {
        let config = crate::config::TargetConfig::anonymous(TargetKind::Oci, url);
        let registry = Arc::new(oci::Registry::new(&config)?);
        Ok(Arc::new(oci::OciTarget::new(registry, Arc::default())))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<Handle>)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Handle>> {
        self.0.get(name)
    }
}

/// Classifies an upstream answer that was not a success (SPEC §8): 408, 429 and 5xx
/// are worth retrying, any other status is final.
pub fn status_error(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &str,
) -> TargetError {
    let code = status.as_u16();
    let retryable = code == 408 || code == 429 || status.is_server_error();
    let detail = upstream_message(body);
    TargetError {
        error: JobError::new(
            if retryable {
                JobErrorCode::UpstreamUnavailable
            } else {
                JobErrorCode::UpstreamRejected
            },
            format!("upstream answered {status}: {detail}"),
        ),
        retryable,
        upstream_status: Some(code),
        retry_after: crate::net::retry_after(headers),
        ambiguous: false,
    }
}

/// Classifies a request that got no answer: a timeout or a broken connection, both
/// worth retrying. `had_effect` says whether the request could change anything
/// upstream (a promote, not a read): then only a refused connection is unambiguous.
pub fn transport_error(e: reqwest::Error, had_effect: bool) -> TargetError {
    let ambiguous = had_effect && !e.is_connect();
    let (code, what) = if e.is_timeout() {
        (
            JobErrorCode::Timeout,
            "no answer within the target's timeout",
        )
    } else {
        (JobErrorCode::NetworkError, "the connection failed")
    };
    // The whole chain ("client error (Connect): tcp connect error: Connection
    // refused"); reqwest's messages name the URL, never headers, so no credential leaks.
    let e = e.without_url();
    let mut cause = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        cause = format!("{cause}: {s}");
        source = s.source();
    }
    TargetError {
        error: JobError::new(
            code,
            format!("{what}: {}", bounded(&cause, MAX_UPSTREAM_MESSAGE)),
        ),
        retryable: true,
        upstream_status: None,
        retry_after: None,
        ambiguous,
    }
}

/// The useful part of an error body: Artifactory's `errors[].message` or
/// `messages[].message` when present, else the text itself, bounded.
fn upstream_message(body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let from_json = parsed.as_ref().and_then(|v| {
        let list = v.get("errors").or_else(|| v.get("messages"))?.as_array()?;
        let texts: Vec<&str> = list
            .iter()
            .filter_map(|e| e.get("message").and_then(|m| m.as_str()))
            .collect();
        (!texts.is_empty()).then(|| texts.join("; "))
    });
    let text = from_json.unwrap_or_else(|| body.trim().to_string());
    if text.is_empty() {
        "(empty body)".into()
    } else {
        bounded(&text, MAX_UPSTREAM_MESSAGE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderMap;

    #[test]
    fn classifies_statuses() {
        let h = HeaderMap::new();
        for (code, retry) in [
            (500, true),
            (502, true),
            (503, true),
            (429, true),
            (408, true),
        ] {
            let e = status_error(reqwest::StatusCode::from_u16(code).unwrap(), &h, "");
            assert_eq!(e.retryable, retry, "{code}");
        }
        for code in [400, 401, 403, 404, 409] {
            let e = status_error(reqwest::StatusCode::from_u16(code).unwrap(), &h, "");
            assert!(!e.retryable, "{code}");
            assert_eq!(e.error.code, JobErrorCode::UpstreamRejected);
        }
    }

    #[test]
    fn reads_artifactory_error_shapes() {
        assert_eq!(
            upstream_message(r#"{"errors":[{"status":404,"message":"Unable to find tag"}]}"#),
            "Unable to find tag"
        );
        assert_eq!(
            upstream_message(
                r#"{"messages":[{"level":"ERROR","message":"a"},{"level":"ERROR","message":"b"}]}"#
            ),
            "a; b"
        );
        assert_eq!(upstream_message("plain"), "plain");
        assert!(upstream_message(&"x".repeat(5000)).len() <= MAX_UPSTREAM_MESSAGE + 3);
    }
}
