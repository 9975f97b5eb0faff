//! JFrog Artifactory: docker promote through its REST API, made idempotent by reading
//! both tags through Artifactory's Docker v2 API before promoting.

use async_trait::async_trait;
use reqwest::{Client, Method, StatusCode, Url};
use serde_json::json;

use super::{Effect, Target, TargetError, status_error, transport_error};
use crate::config::{TargetAuth, TargetConfig};
use crate::domain::{Action, ImageRef, JobErrorCode, Outcome};

/// Every manifest type a tag can point at, so the digest read is the one stored.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

pub struct Artifactory {
    client: Client,
    base: Url,
    auth: TargetAuth,
}

impl Artifactory {
    pub fn new(config: &TargetConfig) -> Result<Self, reqwest::Error> {
        let client = Client::builder()
            .timeout(config.timeout)
            .user_agent(concat!("gantry/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Artifactory {
            client,
            base: config.url.clone(),
            auth: config.auth.clone(),
        })
    }

    /// `{base}/{segments...}`, each segment escaped, so names cannot change the path.
    fn url<'a>(&self, segments: impl IntoIterator<Item = &'a str>) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        let req = self.client.request(method, url);
        match &self.auth {
            TargetAuth::Anonymous => req,
            TargetAuth::Bearer(t) => req.bearer_auth(t.expose()),
            TargetAuth::ApiKey(k) => req.header("X-JFrog-Art-Api", k.expose()),
            TargetAuth::Basic { username, password } => {
                req.basic_auth(username, Some(password.expose()))
            }
        }
    }

    /// The digest a tag points at, or `None` when there is no such tag.
    async fn digest_of(
        &self,
        repo: &str,
        image: &str,
        tag: &str,
    ) -> Result<Option<String>, TargetError> {
        let url = self.url(
            ["artifactory", "api", "docker", repo, "v2"]
                .into_iter()
                .chain(image.split('/'))
                .chain(["manifests", tag]),
        );
        let response = self
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

    async fn promote(
        &self,
        from: &ImageRef,
        to: &ImageRef,
        copy: bool,
    ) -> Result<Effect, TargetError> {
        let url = self.url(["artifactory", "api", "docker", &from.repo, "v2", "promote"]);
        let body = json!({
            "targetRepo": to.repo,
            "dockerRepository": from.image,
            "targetDockerRepository": to.image,
            "tag": from.tag,
            "targetTag": to.tag,
            "copy": copy,
        });
        let response = self
            .request(Method::POST, url)
            .json(&body)
            .send()
            .await
            .map_err(|e| transport_error(e, true))?;
        let status = response.status();
        if status.is_success() {
            return Ok(Effect {
                outcome: Outcome::Promoted,
                upstream_status: Some(status.as_u16()),
            });
        }
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        Err(status_error(status, &headers, &text))
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

#[async_trait]
impl Target for Artifactory {
    async fn perform(&self, action: &Action) -> Result<Effect, TargetError> {
        let Action::Promote { from, to, copy } = action;
        let source = self.digest_of(&from.repo, &from.image, &from.tag).await?;
        if let (Some(named), Some(current)) = (&from.digest, &source)
            && named != current
        {
            return Err(TargetError::permanent(
                JobErrorCode::DigestMismatch,
                format!(
                    "{}/{}:{} now points at {current}, not at {named} named by the event",
                    from.repo, from.image, from.tag
                ),
            ));
        }
        let expected = from.digest.as_deref().or(source.as_deref());
        let target = self.digest_of(&to.repo, &to.image, &to.tag).await?;
        if already_done(expected, source.as_deref(), target.as_deref(), *copy) {
            return Ok(Effect {
                outcome: Outcome::Noop,
                upstream_status: None,
            });
        }
        match self.promote(from, to, *copy).await {
            // A retried move whose source is gone: an earlier attempt may have moved
            // it after all. Look before calling it a failure.
            Err(e) if !*copy && e.upstream_status == Some(404) => {
                let target = self.digest_of(&to.repo, &to.image, &to.tag).await?;
                let source = self.digest_of(&from.repo, &from.image, &from.tag).await?;
                if already_done(expected, source.as_deref(), target.as_deref(), false) {
                    Ok(Effect {
                        outcome: Outcome::Noop,
                        upstream_status: Some(404),
                    })
                } else {
                    Err(e)
                }
            }
            other => other,
        }
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
