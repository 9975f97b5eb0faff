//! Release Bundle v2 promotion (`POST /lifecycle/api/v2/promotion/records/{name}/{version}`),
//! asynchronous by default: an accepted promotion is polled on its status endpoint
//! until it completes or fails.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{Artifactory, Endpoint, Part, done};
use crate::domain::{BundleRef, Environment, JobErrorCode, Outcome, bounded};
use crate::targets::{Effect, Fence, InvalidReference, MAX_UPSTREAM_MESSAGE, TargetError};

/// Polling starts quickly and slows to this; Xray scans can take minutes.
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Give up (retryably) on a promotion still running after this long.
const MAX_POLL: Duration = Duration::from_secs(30 * 60);

/// A promotion in flight or done, as the records list it.
enum Record {
    Completed,
    Running(i64),
    None,
}

/// The promotion records of a bundle version: read to find earlier promotions,
/// posted to to start one. Checked (SPEC §13) before the first request.
fn records_url(a: &Artifactory, from: &BundleRef) -> Result<Endpoint, InvalidReference> {
    a.url(&[
        Part::Fixed("lifecycle"),
        Part::Fixed("api"),
        Part::Fixed("v2"),
        Part::Fixed("promotion"),
        Part::Fixed("records"),
        Part::Name("the release bundle name", &from.bundle),
        Part::Name("the release bundle version", &from.version),
    ])
}

/// The latest promotion of this version to this environment.
async fn existing(a: &Artifactory, url: Endpoint, env: &str) -> Result<Record, TargetError> {
    let Some(records) = a.read_json(url, "the promotion records").await? else {
        return Ok(Record::None);
    };
    let promotions = records
        .get("promotions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let latest = promotions
        .iter()
        .filter(|p| p.get("environment").and_then(Value::as_str) == Some(env))
        .max_by_key(|p| p.get("created_millis").and_then(Value::as_i64).unwrap_or(0));
    Ok(match latest {
        Some(p) => match p.get("status").and_then(Value::as_str) {
            Some("COMPLETED") => Record::Completed,
            Some("FAILED") | None => Record::None,
            Some(_) => {
                Record::Running(p.get("created_millis").and_then(Value::as_i64).unwrap_or(0))
            }
        },
        None => Record::None,
    })
}

/// Polls the status endpoint until the promotion completes or fails.
async fn wait(a: &Artifactory, from: &BundleRef, created: i64) -> Result<(), TargetError> {
    let created = created.to_string();
    let url = a.url(&[
        Part::Fixed("lifecycle"),
        Part::Fixed("api"),
        Part::Fixed("v2"),
        Part::Fixed("promotion"),
        Part::Fixed("statuses"),
        Part::Name("the release bundle name", &from.bundle),
        Part::Name("the release bundle version", &from.version),
        Part::Name("the promotion's created_millis", &created),
    ])?;
    let started = tokio::time::Instant::now();
    let mut interval = Duration::from_millis(100);
    loop {
        let status = a
            .read_json(url.clone(), "the promotion status")
            .await?
            .unwrap_or(Value::Null);
        match status.get("status").and_then(Value::as_str) {
            Some("COMPLETED") => return Ok(()),
            Some("FAILED") => {
                let texts: Vec<&str> = status
                    .get("messages")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m.get("text").and_then(Value::as_str))
                    .collect();
                return Err(TargetError::permanent(
                    JobErrorCode::UpstreamRejected,
                    format!(
                        "release bundle promotion failed: {}",
                        bounded(&texts.join("; "), MAX_UPSTREAM_MESSAGE)
                    ),
                ));
            }
            _ if started.elapsed() > MAX_POLL => {
                return Err(TargetError {
                    retryable: true,
                    ..TargetError::permanent(
                        JobErrorCode::Timeout,
                        "the release bundle promotion is still running after 30 minutes",
                    )
                });
            }
            _ => {}
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(MAX_POLL_INTERVAL);
    }
}

pub async fn promote(
    a: &Artifactory,
    fence: &dyn Fence,
    from: &BundleRef,
    to: &Environment,
    signing_key: Option<&str>,
    dry_run: bool,
) -> Result<Effect, TargetError> {
    let mut url = records_url(a, from)?;
    match existing(a, url.clone(), &to.environment).await? {
        Record::Completed => return Ok(done(Outcome::Noop, None)),
        // An earlier attempt's promotion is still running: wait for it, do not start
        // a second one.
        Record::Running(created) => {
            wait(a, from, created).await?;
            return Ok(done(Outcome::Promoted, None));
        }
        Record::None => {}
    }
    // The promotion API has no dry-run switch: a rehearsal stops here.
    if dry_run {
        return Ok(done(Outcome::DryRun, None));
    }
    url.query_pairs_mut().append_pair("async", "true");
    let mut body = json!({ "environment": to.environment });
    if !to.included_repositories.is_empty() {
        body["included_repository_keys"] = json!(to.included_repositories);
    }
    let mut req = a.request(Method::POST, url).json(&body);
    if let Some(key) = signing_key {
        req = req.header("X-JFrog-Signing-Key-Name", key);
    }
    let (status, answer) = a.write(fence, req).await?;
    if status == StatusCode::CREATED {
        // Created synchronously: done.
        return Ok(done(Outcome::Promoted, Some(status)));
    }
    let created = answer
        .get("created_millis")
        .and_then(Value::as_i64)
        .ok_or_else(|| TargetError {
            upstream_status: Some(status.as_u16()),
            ..TargetError::permanent(
                JobErrorCode::UpstreamRejected,
                "the promotion was accepted but its answer names no `created_millis` to follow",
            )
        })?;
    wait(a, from, created).await?;
    Ok(done(Outcome::Promoted, Some(status)))
}
