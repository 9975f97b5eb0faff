//! Docker tag promotion (`POST /artifactory/api/docker/{repo}/v2/promote`), made
//! idempotent by reading both tags through Artifactory's Docker v2 API first.

use reqwest::{Method, StatusCode};
use serde_json::json;

use super::{Artifactory, done};
use crate::domain::{ImageRef, Outcome};
use crate::targets::{Effect, TargetError, status_error, transport_error};

/// Every manifest type a tag can point at, so the digest read is the one stored.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// The digest a tag points at, or `None` when there is no such tag.
async fn digest_of(a: &Artifactory, image: &ImageRef) -> Result<Option<String>, TargetError> {
    let url = a.url(
        ["artifactory", "api", "docker", &image.repo, "v2"]
            .into_iter()
            .chain(image.image.split('/'))
            .chain(["manifests", &image.tag]),
    );
    let response = a
        .request(Method::HEAD, url)
        .header(reqwest::header::ACCEPT, MANIFEST_TYPES)
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
    from: &ImageRef,
    to: &ImageRef,
    copy: bool,
    dry_run: bool,
) -> Result<Effect, TargetError> {
    let source = digest_of(a, from).await?;
    TargetError::unless_pinned(from, from.digest.as_deref(), source.as_deref(), "points at")?;
    let expected = from.digest.as_deref().or(source.as_deref());
    let target = digest_of(a, to).await?;
    if already_done(expected, source.as_deref(), target.as_deref(), copy) {
        return Ok(done(Outcome::Noop, None));
    }
    // The docker promote API has no dry-run switch: a rehearsal stops here.
    if dry_run {
        return Ok(done(Outcome::DryRun, None));
    }
    let url = a.url(["artifactory", "api", "docker", &from.repo, "v2", "promote"]);
    let body = json!({
        "targetRepo": to.repo,
        "dockerRepository": from.image,
        "targetDockerRepository": to.image,
        "tag": from.tag,
        "targetTag": to.tag,
        "copy": copy,
    });
    match a.write(a.request(Method::POST, url).json(&body)).await {
        Ok((status, _)) => Ok(done(Outcome::Promoted, Some(status))),
        // A retried move whose source is gone: an earlier attempt may have moved it
        // after all. Look before calling it a failure.
        Err(e) if !copy && e.upstream_status == Some(404) => {
            let target = digest_of(a, to).await?;
            let source = digest_of(a, from).await?;
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
