//! A small OCI Distribution client: just what promotion needs, written on reqwest
//! rather than taken from `oci-client`, because promotion needs three things that
//! crate does not give together: blob uploads streamed from another registry (its
//! blob push takes the bytes in memory), cross-repository mounts as the first
//! choice, and manifests kept byte for byte (so their digest cannot change).
//!
//! Auth: anonymous, basic, a static bearer token, or the bearer challenge flow
//! (`WWW-Authenticate: Bearer realm=…,service=…,scope=…`), whose tokens are cached
//! per scope until they expire.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE,
};
use reqwest::{Client, RequestBuilder, Response, StatusCode, Url};
use sha2::{Digest, Sha256};

use crate::config::{TargetAuth, TargetConfig};
use crate::targets::{TargetError, status_error, transport_error};

/// Every manifest type a tag can point at.
pub const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// A manifest exactly as stored: its bytes, media type and digest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: String,
}

#[derive(Debug, Clone)]
struct Token {
    value: String,
    expires: Instant,
}

pub struct Registry {
    pub name: String,
    base: Url,
    client: Client,
    auth: TargetAuth,
    /// Bearer tokens from the challenge flow, by scope.
    tokens: Mutex<HashMap<String, Token>>,
}

/// A bearer challenge: where to get a token and for what.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Challenge {
    realm: String,
    service: Option<String>,
    scope: Option<String>,
}

fn parse_challenge(header: &str) -> Option<Challenge> {
    let rest = header.trim().strip_prefix("Bearer ")?;
    let mut fields: HashMap<String, String> = HashMap::new();
    // key="value" pairs separated by commas; values may contain commas inside quotes.
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let value: String = if chars.peek() == Some(&'"') {
            chars.next();
            chars.by_ref().take_while(|c| *c != '"').collect()
        } else {
            chars.by_ref().take_while(|c| *c != ',').collect()
        };
        fields.insert(key.trim().to_ascii_lowercase(), value);
    }
    Some(Challenge {
        realm: fields.remove("realm")?,
        service: fields.remove("service"),
        scope: fields.remove("scope"),
    })
}

/// The scope key a request is cached under: its repository and whether it writes.
fn scope_for(repository: &str, write: bool) -> String {
    let actions = if write { "pull,push" } else { "pull" };
    format!("repository:{repository}:{actions}")
}

impl Registry {
    pub fn new(config: &TargetConfig) -> Result<Self, reqwest::Error> {
        Ok(Registry {
            name: config.name.clone(),
            base: config.url.clone(),
            client: Client::builder()
                .timeout(config.timeout)
                .user_agent(concat!("gantry/", env!("CARGO_PKG_VERSION")))
                .build()?,
            auth: config.auth.clone(),
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `other` is the same registry (blobs can be mounted across its
    /// repositories instead of copied).
    pub fn same_registry(&self, other: &Registry) -> bool {
        self.base.origin() == other.base.origin()
    }

    fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        url.set_path(&format!(
            "{}{}",
            self.base.path().trim_end_matches('/'),
            path
        ));
        url
    }

    fn cached_token(&self, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens
            .get(scope)
            .filter(|t| t.expires > Instant::now())
            .map(|t| t.value.clone())
    }

    fn authorize(&self, req: RequestBuilder, scope: &str) -> RequestBuilder {
        if let Some(token) = self.cached_token(scope) {
            return req.bearer_auth(token);
        }
        match &self.auth {
            TargetAuth::Anonymous => req,
            TargetAuth::Bearer(t) => req.bearer_auth(t.expose()),
            // `check` refuses api_key on oci targets; a token is the same thing here.
            TargetAuth::ApiKey(k) => req.header(AUTHORIZATION, format!("Bearer {}", k.expose())),
            TargetAuth::Basic { username, password } => {
                req.basic_auth(username, Some(password.expose()))
            }
        }
    }

    /// Fetches a token for a challenge (with the configured credentials, if any)
    /// and caches it under `scope`.
    async fn fetch_token(&self, challenge: &Challenge, scope: &str) -> Result<(), TargetError> {
        let mut url = Url::parse(&challenge.realm).map_err(|e| {
            TargetError::permanent(
                crate::domain::JobErrorCode::UpstreamRejected,
                format!(
                    "the registry's token realm `{}` is not a URL: {e}",
                    challenge.realm
                ),
            )
        })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = &challenge.service {
                q.append_pair("service", s);
            }
            // The challenge's scope may name several repositories (a mount needs
            // pull on the source too); ask for each.
            for s in challenge.scope.as_deref().unwrap_or(scope).split(' ') {
                q.append_pair("scope", s);
            }
        }
        let mut req = self.client.get(url);
        if let TargetAuth::Basic { username, password } = &self.auth {
            req = req.basic_auth(username, Some(password.expose()));
        }
        let response = req.send().await.map_err(|e| transport_error(e, false))?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(status_error(status, &headers, &text));
        }
        let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let value = body
            .get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|v| v.as_str())
            .ok_or_else(|| {
                TargetError::permanent(
                    crate::domain::JobErrorCode::UpstreamRejected,
                    "the token server answered without a token",
                )
            })?;
        // Tokens without an expiry are good for 60 s (the spec's default).
        let lifetime = body
            .get("expires_in")
            .and_then(|v| v.as_u64())
            .unwrap_or(60);
        let token = Token {
            value: value.to_string(),
            // Renew a little early rather than fail a request on the edge.
            expires: Instant::now() + Duration::from_secs(lifetime.saturating_sub(5).max(1)),
        };
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(scope.to_string(), token);
        Ok(())
    }

    /// Sends a request built by `build`; on a bearer challenge, fetches a token for
    /// the scope and sends it once more. `build` is called again for that, so a
    /// request with a streamed body must not be sent through here before a token
    /// is cached (see [`Registry::upload_stream`]).
    async fn send(
        &self,
        scope: &str,
        changes: bool,
        build: &(dyn Fn() -> RequestBuilder + Sync),
    ) -> Result<Response, TargetError> {
        let response = self
            .authorize(build(), scope)
            .send()
            .await
            .map_err(|e| transport_error(e, changes))?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let challenge = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge);
        let Some(challenge) = challenge else {
            return Ok(response);
        };
        self.fetch_token(&challenge, scope).await?;
        self.authorize(build(), scope)
            .send()
            .await
            .map_err(|e| transport_error(e, changes))
    }

    async fn check(response: Response) -> Result<Response, TargetError> {
        if response.status().is_success() {
            return Ok(response);
        }
        Err(Registry::refusal(response).await.0)
    }

    /// A failed answer classified, with its body for a closer look.
    async fn refusal(response: Response) -> (TargetError, String) {
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        (status_error(status, &headers, &text), text)
    }

    /// A manifest by tag or digest, byte for byte; `None` when there is none.
    pub async fn manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<Manifest>, TargetError> {
        let url = self.url(&format!("/v2/{repository}/manifests/{reference}"));
        let scope = scope_for(repository, false);
        let response = self
            .send(&scope, false, &|| {
                self.client.get(url.clone()).header(ACCEPT, MANIFEST_TYPES)
            })
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = Registry::check(response).await?;
        let media_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/vnd.oci.image.manifest.v1+json")
            .to_string();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| transport_error(e, false))?
            .to_vec();
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        Ok(Some(Manifest {
            bytes,
            media_type,
            digest,
        }))
    }

    /// The digest a tag points at (HEAD), or `None`.
    pub async fn digest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<String>, TargetError> {
        let url = self.url(&format!("/v2/{repository}/manifests/{reference}"));
        let scope = scope_for(repository, false);
        let response = self
            .send(&scope, false, &|| {
                self.client.head(url.clone()).header(ACCEPT, MANIFEST_TYPES)
            })
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = Registry::check(response).await?;
        match content_digest(&response) {
            Some(d) => Ok(Some(d)),
            // Not every registry sends the header on HEAD: read the manifest then.
            None => Ok(self
                .manifest(repository, reference)
                .await?
                .map(|m| m.digest)),
        }
    }

    pub async fn has_blob(&self, repository: &str, digest: &str) -> Result<bool, TargetError> {
        let url = self.url(&format!("/v2/{repository}/blobs/{digest}"));
        let scope = scope_for(repository, false);
        let response = self
            .send(&scope, false, &|| self.client.head(url.clone()))
            .await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(false),
            s if s.is_success() => Ok(true),
            _ => Registry::check(response).await.map(|_| false),
        }
    }

    /// Starts an upload; with `mount_from`, asks the registry to mount the blob from
    /// that repository instead. `Ok(None)` means it was mounted; otherwise the
    /// upload location to send the bytes to.
    pub async fn start_upload(
        &self,
        repository: &str,
        mount: Option<(&str, &str)>,
    ) -> Result<Option<Url>, TargetError> {
        let mut url = self.url(&format!("/v2/{repository}/blobs/uploads/"));
        if let Some((digest, from)) = mount {
            url.query_pairs_mut()
                .append_pair("mount", digest)
                .append_pair("from", from);
        }
        let scope = scope_for(repository, true);
        let response = self
            .send(&scope, true, &|| {
                self.client.post(url.clone()).header(CONTENT_LENGTH, "0")
            })
            .await?;
        let response = Registry::check(response).await?;
        if response.status() == StatusCode::CREATED && mount.is_some() {
            return Ok(None);
        }
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| self.base.join(l).ok())
            .ok_or_else(|| {
                TargetError::permanent(
                    crate::domain::JobErrorCode::UpstreamRejected,
                    "the registry started an upload without a Location",
                )
            })?;
        Ok(Some(location))
    }

    /// The blob's bytes as a stream, and its length.
    pub async fn blob_stream(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<(Response, Option<u64>), TargetError> {
        let url = self.url(&format!("/v2/{repository}/blobs/{digest}"));
        let scope = scope_for(repository, false);
        let response = self
            .send(&scope, false, &|| self.client.get(url.clone()))
            .await?;
        let response = Registry::check(response).await?;
        let length = response.content_length();
        Ok((response, length))
    }

    /// Finishes an upload with the bytes of `source`, streamed through without
    /// being held: memory stays bounded whatever the layer's size. The upload's
    /// token was cached by `start_upload`, so the streamed request is sent once.
    pub async fn upload_stream(
        &self,
        repository: &str,
        mut location: Url,
        digest: &str,
        source: Response,
        length: Option<u64>,
    ) -> Result<(), TargetError> {
        location.query_pairs_mut().append_pair("digest", digest);
        let mut req = self
            .client
            .put(location)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(source.bytes_stream()));
        if let Some(n) = length {
            req = req.header(CONTENT_LENGTH, n);
        }
        let response = self
            .authorize(req, &scope_for(repository, true))
            .send()
            .await
            .map_err(|e| transport_error(e, true))?;
        Registry::check(response).await.map(|_| ())
    }

    /// Puts a manifest; returns the `Docker-Content-Digest` the registry answered
    /// with, the digest it stored, when it sent one.
    pub async fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        manifest: &Manifest,
    ) -> Result<Option<String>, TargetError> {
        let url = self.url(&format!("/v2/{repository}/manifests/{reference}"));
        let scope = scope_for(repository, true);
        let response = self
            .send(&scope, true, &|| {
                self.client
                    .put(url.clone())
                    .header(CONTENT_TYPE, manifest.media_type.as_str())
                    .body(manifest.bytes.clone())
            })
            .await?;
        if response.status().is_success() {
            return Ok(content_digest(&response));
        }
        // Blobs just mounted or uploaded by concurrent promotions can be invisible
        // for a moment (Docker Distribution writes their links without locking):
        // the manifest is refused with BLOB_UNKNOWN, and the next attempt, which
        // checks every blob again, succeeds.
        let (mut e, body) = Registry::refusal(response).await;
        e.retryable |= e.upstream_status == Some(400)
            && error_codes(&body)
                .iter()
                .any(|c| c == "BLOB_UNKNOWN" || c == "MANIFEST_BLOB_UNKNOWN");
        Err(e)
    }

    /// Deletes a manifest reference (a tag where the registry allows it, else the
    /// digest, which removes every tag on it in that repository).
    pub async fn delete_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<StatusCode, TargetError> {
        let url = self.url(&format!("/v2/{repository}/manifests/{reference}"));
        let scope = scope_for(repository, true);
        let response = self
            .send(&scope, true, &|| self.client.delete(url.clone()))
            .await?;
        let status = response.status();
        if status.is_success() {
            return Ok(status);
        }
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        Err(status_error(status, &headers, &text))
    }
}

/// The digest a registry names for the manifest it answered about.
fn content_digest(response: &Response) -> Option<String> {
    response
        .headers()
        .get("Docker-Content-Digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The `errors[].code` of a registry's error body (OCI distribution spec).
fn error_codes(body: &str) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Body {
        errors: Vec<Code>,
    }
    #[derive(serde::Deserialize)]
    struct Code {
        code: String,
    }
    serde_json::from_str::<Body>(body)
        .map(|b| b.errors.into_iter().map(|e| e.code).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:dev/app:pull,push repository:prod/app:pull""#,
        )
        .unwrap();
        assert_eq!(c.realm, "https://auth.example.com/token");
        assert_eq!(c.service.as_deref(), Some("registry.example.com"));
        assert_eq!(
            c.scope.as_deref(),
            Some("repository:dev/app:pull,push repository:prod/app:pull")
        );
        assert_eq!(parse_challenge(r#"Basic realm="x""#), None);
        assert!(
            parse_challenge(r#"Bearer service="s""#).is_none(),
            "no realm"
        );
    }
}
