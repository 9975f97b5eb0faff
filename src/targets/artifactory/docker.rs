//! Docker tag promotion (`POST /artifactory/api/docker/{repo}/v2/promote`), made
//! idempotent by reading both tags through Artifactory's Docker v2 API first.

use reqwest::{Method, StatusCode};
use serde_json::json;

use super::{Artifactory, Endpoint, Part, done};
use crate::domain::{ImageRef, Outcome};
use crate::targets::{Effect, Fence, InvalidReference, TargetError, status_error, transport_error};

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
    if already_done(expected, source.as_deref(), target.as_deref(), copy) {
        return Ok(done(Outcome::Noop, None));
    }
    // The docker promote API has no dry-run switch: a rehearsal stops here.
    if dry_run {
        return Ok(done(Outcome::DryRun, None));
    }
    let body = json!({
        "targetRepo": to.repo,
        "dockerRepository": from.image,
        "targetDockerRepository": to.image,
        "tag": from.tag,
        "targetTag": to.tag,
        "copy": copy,
    });
    match a
        .write(fence, a.request(Method::POST, promote_url).json(&body))
        .await
    {
        Ok((status, _)) => Ok(done(Outcome::Promoted, Some(status))),
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
