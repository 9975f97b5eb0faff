//! Build promotion (`POST /artifactory/api/build/promote/{name}/{number}`): a new
//! status and/or the build's artifacts copied or moved to a repository.

use reqwest::Method;
use serde_json::{Map, Value, json};

use super::{Artifactory, Part, done, segment};
use crate::domain::{BuildPromotion, BuildRef, BuildTarget, Outcome};
use crate::targets::{Effect, Fence, TargetError};

/// Whether the build already carries this promotion: a status entry with the same
/// status (and repository, when one is named).
async fn already_promoted(
    a: &Artifactory,
    from: &BuildRef,
    to: &BuildTarget,
) -> Result<bool, TargetError> {
    let Some(status) = &to.status else {
        // Without a status there is no trace of an earlier promotion to look for.
        return Ok(false);
    };
    let url = a.url(&[
        Part::Fixed("artifactory"),
        Part::Fixed("api"),
        Part::Fixed("build"),
        Part::Name("the build name", &from.build_name),
        Part::Name("the build number", &from.build_number),
    ])?;
    let Some(info) = a.read_json(url, "the build info").await? else {
        return Ok(false);
    };
    let statuses = info
        .pointer("/buildInfo/statuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    Ok(statuses.iter().any(|s| {
        s.get("status").and_then(Value::as_str) == Some(status)
            && to
                .repo
                .as_deref()
                .is_none_or(|r| s.get("repository").and_then(Value::as_str) == Some(r))
    }))
}

pub async fn promote(
    a: &Artifactory,
    fence: &dyn Fence,
    p: &BuildPromotion,
    dry_run: bool,
) -> Result<Effect, TargetError> {
    let BuildPromotion {
        from,
        to,
        source_repo,
        copy,
        comment,
        dependencies,
        properties,
    } = p;
    // The URL before any request (SPEC §13).
    let url = a.url(&[
        Part::Fixed("artifactory"),
        Part::Fixed("api"),
        Part::Fixed("build"),
        Part::Fixed("promote"),
        Part::Name("the build name", &from.build_name),
        Part::Name("the build number", &from.build_number),
    ])?;
    // The body names repo keys: as sane as those in URLs.
    for repo in to.repo.iter().chain(source_repo) {
        segment("the repo key", repo, repo)?;
    }
    if already_promoted(a, from, to).await? {
        return Ok(done(Outcome::Noop, None));
    }
    let mut body = Map::new();
    let mut set = |k: &str, v: Value| {
        body.insert(k.to_string(), v);
    };
    if let Some(s) = &to.status {
        set("status", json!(s));
    }
    if let Some(c) = comment {
        set("comment", json!(c));
    }
    set("ciUser", json!("gantry"));
    set(
        "timestamp",
        json!(
            chrono::Utc::now()
                .format("%Y-%m-%dT%H:%M:%S%.3f%z")
                .to_string()
        ),
    );
    set("dryRun", json!(dry_run));
    if let Some(r) = source_repo {
        set("sourceRepo", json!(r));
    }
    if let Some(r) = &to.repo {
        set("targetRepo", json!(r));
    }
    set("copy", json!(copy));
    set("artifacts", json!(true));
    set("dependencies", json!(dependencies));
    if !properties.is_empty() {
        set("properties", json!(properties));
    }
    set("failFast", json!(true));
    let (status, _) = a
        .write(fence, a.request(Method::POST, url).json(&body))
        .await?;
    let outcome = if dry_run {
        Outcome::DryRun
    } else {
        Outcome::Promoted
    };
    Ok(done(outcome, Some(status)))
}
