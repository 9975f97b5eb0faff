//! Docker tag promotion (`POST /artifactory/api/docker/{repo}/v2/promote`), made
//! idempotent by reading both tags through Artifactory's Docker v2 API first.

use reqwest::{Method, StatusCode};
use serde_json::json;

use super::{Artifactory, Endpoint, Part, done};
use crate::domain::{ImageRef, Outcome};
use crate::targets::oci::{self, Registry};
use crate::targets::{Effect, Fence, InvalidReference, TargetError, status_error, transport_error};

/// The Docker v2 API of the repository `repo_key`, as a registry: signatures are
/// read and attestations written through it (SPEC §15).
pub fn registry(a: &Artifactory, repo_key: &str) -> Result<Registry, TargetError> {
    let base = a.url(&[
        Part::Fixed("artifactory"),
        Part::Fixed("api"),
        Part::Fixed("docker"),
        Part::Name("the repo key", repo_key),
    ])?;
    Ok(Registry::at(&a.config, base.url.clone(), a.client.clone()))
}

/// Every manifest type a tag can point at, so the digest read is the one stored.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// The Docker v2 manifest URL of an image's tag (every part checked, SPEC §13).
fn manifest_url(a: &Artifactory, image: &ImageRef) -> Result<Endpoint, InvalidReference> {
    a.url(&[
        Part::Fixed("artifactory"),
        Part::Fixed("api"),
        Part::Fixed("docker"),
        Part::Name("the repo key", &image.repo),
        Part::Fixed("v2"),
        Part::Path("the image", &image.image),
        Part::Fixed("manifests"),
        Part::Name("the tag", &image.tag),
    ])
}

/// The digest a tag points at, or `None` when there is no such tag.
async fn digest_of(a: &Artifactory, url: &Endpoint) -> Result<Option<String>, TargetError> {
    let response = a
        .request(Method::HEAD, url.clone())
        .header("Accept", MANIFEST_TYPES)
        .send()
        .await
        .map_err(|e| transport_error(e, false))?;
    match response.status() {
        StatusCode::NOT_FOUND => Ok(None),
        s if s.is_success() => Ok(response
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)),
        s => Err(status_error(s, response.headers(), "")),
    }
}

/// Whether the target already shows the promotion done: it holds the expected
/// digest, and for a move the source tag no longer does.
fn already_done(
    expected: Option<&str>,
    source: Option<&str>,
    target: Option<&str>,
    copy: bool,
) -> bool {
    match expected {
        Some(exp) => target == Some(exp) && (copy || source != Some(exp)),
        None => false,
    }
}

pub async fn promote(
    a: &Artifactory,
    fence: &dyn Fence,
    from: &ImageRef,
    to: &ImageRef,
    copy: bool,
    dry_run: bool,
) -> Result<Effect, TargetError> {
    // Every URL before any request. The promote body names the same repo keys,
    // images and tags, so they are checked too.
    let from_url = manifest_url(a, from)?;
    let to_url = manifest_url(a, to)?;
    let promote_url = a.url(&[
        Part::Fixed("artifactory"),
        Part::Fixed("api"),
        Part::Fixed("docker"),
        Part::Name("the repo key", &from.repo),
        Part::Fixed("v2"),
        Part::Fixed("promote"),
    ])?;
    let source = digest_of(a, &from_url).await?;
    TargetError::unless_pinned(from, from.digest.as_deref(), source.as_deref(), "points at")?;
    let expected = from.digest.as_deref().or(source.as_deref());
    let target = digest_of(a, &to_url).await?;
    let done_already = already_done(expected, source.as_deref(), target.as_deref(), copy);
    // The docker promote API has no dry-run switch: a rehearsal stops here.
    if dry_run {
        let outcome = if done_already {
            Outcome::Noop
        } else {
            Outcome::DryRun
        };
        return Ok(done(outcome, None));
    }
    if done_already {
        let evidence = carry(a, fence, &promote_url, from, to, expected).await?;
        return Ok(Effect {
            evidence,
            ..done(Outcome::Noop, None)
        });
    }
    let body = promote_body(from, to, &from.tag, &to.tag, copy);
    match a
        .write(
            fence,
            a.request(Method::POST, promote_url.clone()).json(&body),
        )
        .await
    {
        Ok((status, _)) => {
            let evidence = carry(a, fence, &promote_url, from, to, expected).await?;
            Ok(Effect {
                evidence,
                ..done(Outcome::Promoted, Some(status))
            })
        }
        // A retried move whose source is gone: an earlier attempt may have moved it
        // after all. Look before calling it a failure.
        Err(e) if !copy && e.upstream_status == Some(404) => {
            let target = digest_of(a, &to_url).await?;
            let source = digest_of(a, &from_url).await?;
            if already_done(expected, source.as_deref(), target.as_deref(), false) {
                Ok(done(Outcome::Noop, Some(StatusCode::NOT_FOUND)))
            } else {
                Err(e)
            }
        }
        Err(e) => Err(e),
    }
}

fn promote_body(
    from: &ImageRef,
    to: &ImageRef,
    tag: &str,
    target_tag: &str,
    copy: bool,
) -> serde_json::Value {
    json!({
        "targetRepo": to.repo,
        "dockerRepository": from.image,
        "targetDockerRepository": to.image,
        "tag": tag,
        "targetTag": target_tag,
        "copy": copy,
    })
}

/// Promotes (copies) the evidence tags of the promoted `digest` that the source
/// has and the destination lacks (SPEC §15); a tag the destination has already is
/// left as it is. The tags promoted.
async fn carry(
    a: &Artifactory,
    fence: &dyn Fence,
    promote_url: &Endpoint,
    from: &ImageRef,
    to: &ImageRef,
    digest: Option<&str>,
) -> Result<Vec<String>, TargetError> {
    let Some(digest) = digest else {
        return Ok(Vec::new());
    };
    let mut carried = Vec::new();
    for suffix in oci::SUFFIXES {
        let tag = oci::tag_for(digest, suffix);
        let at = |image: &ImageRef| ImageRef {
            tag: tag.clone(),
            digest: None,
            ..image.clone()
        };
        let source = digest_of(a, &manifest_url(a, &at(from))?).await?;
        if source.is_none() || digest_of(a, &manifest_url(a, &at(to))?).await?.is_some() {
            continue;
        }
        let body = promote_body(from, to, &tag, &tag, true);
        a.write(
            fence,
            a.request(Method::POST, promote_url.clone()).json(&body),
        )
        .await?;
        carried.push(tag);
    }
    Ok(carried)
}

#[cfg(test)]
mod tests {
    use super::already_done;

    #[test]
    fn done_means_the_target_holds_the_digest_and_a_move_left_the_source() {
        assert!(already_done(Some("d"), Some("d"), Some("d"), true));
        assert!(!already_done(Some("d"), Some("d"), Some("d"), false));
        assert!(already_done(Some("d"), None, Some("d"), false));
        assert!(!already_done(Some("d"), Some("d"), Some("e"), true));
        assert!(!already_done(Some("d"), Some("d"), None, true));
        assert!(!already_done(None, None, Some("d"), true));
    }
}
