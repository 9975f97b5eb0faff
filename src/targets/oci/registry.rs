//! A small OCI Distribution client: just what promotion needs, written on reqwest
//! rather than taken from `oci-client`, because promotion needs three things that
//! crate does not give together: blob uploads streamed from another registry (its
//! blob push takes the bytes in memory), cross-repository mounts as the first
//! choice, and manifests kept byte for byte (so their digest cannot change).
//!
//! Auth: anonymous, basic, a static bearer token, or the bearer challenge flow
//! (`WWW-Authenticate: Bearer realm=…,service=…,scope=…`), whose tokens are cached
//! per scope until they expire. Credentials and tokens go only to the configured
//! registry's origin (SPEC §13): an upload location elsewhere (an S3-style redirect,
//! signed in its query) gets none, a token realm gets the Basic credentials only over
//! https or on the registry's own host, and reqwest drops Authorization on a redirect
//! to another origin (checked by the tests).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LINK, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Client, RequestBuilder, Response, StatusCode, Url};

use super::reference::{Digest, Reference, RepositoryName, Tag};
use crate::config::{TargetAuth, TargetConfig};
use crate::domain::JobErrorCode;
use crate::targets::body::{self, JSON_LIMIT, MANIFEST_LIMIT};
use crate::targets::{TargetError, transport_error};

/// Every manifest type a tag can point at.
pub const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Tags asked for per page of a tag list.
const TAGS_PER_PAGE: usize = 1000;
/// Pages of a tag list followed at most: a move's safety check must end.
const MAX_TAG_PAGES: usize = 20;

/// A manifest exactly as stored: its bytes, media type and digest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: Digest,
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
    /// Set when the registry answered that it has no referrers API: asked once, not
    /// on every promotion (a reload, which makes new registries, asks again).
    no_referrers: AtomicBool,
}

/// A bearer challenge: where to get a token and for what.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Challenge {
    realm: String,
    service: Option<String>,
    scope: Option<String>,
}

/// The first Bearer challenge with a realm in a `WWW-Authenticate` value (RFC 7235:
/// several challenges, case-insensitive scheme, quoted strings with escapes and
/// commas). Challenges after a syntax error are not read.
fn parse_challenge(header: &str) -> Option<Challenge> {
    http_auth::parser::ChallengeParser::new(header)
        .map_while(Result::ok)
        .filter(|c| c.scheme.eq_ignore_ascii_case("bearer"))
        .find_map(|c| {
            let param = |name: &str| {
                c.params
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.to_unescaped())
            };
            Some(Challenge {
                realm: param("realm")?,
                service: param("service"),
                scope: param("scope"),
            })
        })
}

/// The `rel="next"` target of a `Link` header (`<url>; rel="next"`), as the
/// distribution spec paginates tag lists.
fn next_link(header: &str) -> Option<&str> {
    header.split(',').find_map(|link| {
        let (target, params) = link.trim().split_once(';')?;
        let next = params.split(';').any(|p| {
            p.trim()
                .strip_prefix("rel=")
                .is_some_and(|r| r.trim_matches('"').eq_ignore_ascii_case("next"))
        });
        next.then(|| target.trim().strip_prefix('<')?.strip_suffix('>'))
            .flatten()
    })
}

/// `repository:tag` or `repository@digest`, for messages.
fn named(repository: &RepositoryName, reference: &Reference) -> String {
    match reference {
        Reference::Tag(t) => format!("{repository}:{t}"),
        Reference::Digest(d) => format!("{repository}@{d}"),
    }
}

/// The scope key a request is cached under: its repository and whether it writes.
fn scope_for(repository: &RepositoryName, write: bool) -> String {
    let actions = if write { "pull,push" } else { "pull" };
    format!("repository:{repository}:{actions}")
}

impl Registry {
    pub fn new(config: &TargetConfig) -> Result<Self, reqwest::Error> {
        let client = Client::builder()
            .timeout(config.timeout)
            .user_agent(concat!("gantry/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Registry::at(config, config.url.clone(), client))
    }

    /// The registry API under `base`, with `config`'s name and credentials, over
    /// `client`: Artifactory serves each Docker repository's v2 API under its own
    /// path, reached with the Artifactory target's own client.
    pub fn at(config: &TargetConfig, base: Url, client: Client) -> Self {
        Registry {
            name: config.name.clone(),
            base,
            client,
            auth: config.auth.clone(),
            tokens: Mutex::new(HashMap::new()),
            no_referrers: AtomicBool::new(false),
        }
    }

    /// Whether `other` is the same registry (blobs can be mounted across its
    /// repositories instead of copied).
    pub fn same_registry(&self, other: &Registry) -> bool {
        self.base.origin() == other.base.origin()
    }

    /// `{base}/v2/{repository}/{tail...}`, one path segment per repository
    /// component: with checked names, the URL is the one meant.
    fn url(&self, repository: &RepositoryName, tail: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty()
                .push("v2")
                .extend(repository.components())
                .extend(tail);
        }
        url
    }

    /// Whether `url` is the configured registry's origin, the only one its
    /// credentials and tokens go to.
    fn own_origin(&self, url: &Url) -> bool {
        url.origin() == self.base.origin()
    }

    fn cached_token(&self, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens
            .get(scope)
            .filter(|t| t.expires > Instant::now())
            .map(|t| t.value.clone())
    }

    /// The request to `url` with the registry's credentials, or as it is when `url`
    /// is another origin.
    fn authorize(&self, req: RequestBuilder, url: &Url, scope: &str) -> RequestBuilder {
        if !self.own_origin(url) {
            return req;
        }
        if let Some(token) = self.cached_token(scope) {
            return req.bearer_auth(token);
        }
        match &self.auth {
            TargetAuth::Anonymous => req,
            TargetAuth::Bearer(t) => req.bearer_auth(t.expose()),
            // `check` refuses api_key on oci targets: only Artifactory's Docker v2 API
            // is reached with one, in its own header.
            TargetAuth::ApiKey(k) => req.header("X-JFrog-Art-Api", k.expose()),
            TargetAuth::Basic { username, password } => {
                req.basic_auth(username, Some(password.expose()))
            }
        }
    }

    /// Fetches a token for a challenge and caches it under `scope`. The configured
    /// Basic credentials go along only over https or to the registry's own host:
    /// the realm is the registry's say, and a plain-http realm elsewhere would read
    /// them off the wire or keep them. Without them a token server still answers
    /// for what anonymous users may do.
    async fn fetch_token(&self, challenge: &Challenge, scope: &str) -> Result<(), TargetError> {
        let mut url = Url::parse(&challenge.realm).map_err(|e| {
            TargetError::permanent(
                JobErrorCode::UpstreamRejected,
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
        let trusted = url.scheme() == "https" || url.host_str() == self.base.host_str();
        let mut req = self.client.get(url);
        match &self.auth {
            TargetAuth::Basic { username, password } if trusted => {
                req = req.basic_auth(username, Some(password.expose()));
            }
            TargetAuth::Basic { .. } => tracing::warn!(
                registry = %self.name,
                "the token realm is plain http on another host: asking it without credentials"
            ),
            _ => {}
        }
        let response = crate::telemetry::send(req, "{realm}")
            .await
            .map_err(|e| transport_error(e, false))?;
        let response = Registry::check(response).await?;
        let bytes = body::read_within(response, JSON_LIMIT, "the token server's answer")
            .await
            .map_err(|e| e.into_target_error(false))?;
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let value = body
            .get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|v| v.as_str())
            .ok_or_else(|| {
                TargetError::permanent(
                    JobErrorCode::UpstreamRejected,
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

    /// Sends a request to `url` built by `build`; on a bearer challenge, fetches a
    /// token for the scope and sends it once more. `build` is called again for
    /// that, so a request with a streamed body must not be sent through here before
    /// a token is cached (see [`Registry::upload_stream`]).
    async fn send(
        &self,
        scope: &str,
        changes: bool,
        url: &Url,
        build: &(dyn Fn(Url) -> RequestBuilder + Sync),
    ) -> Result<Response, TargetError> {
        let call = self.authorize(build(url.clone()), url, scope);
        let response = crate::telemetry::send(call, template(url))
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
        crate::telemetry::send(
            self.authorize(build(url.clone()), url, scope),
            template(url),
        )
        .await
        .map_err(|e| transport_error(e, changes))
    }

    async fn check(response: Response) -> Result<Response, TargetError> {
        if response.status().is_success() {
            return Ok(response);
        }
        Err(body::refusal(response).await.0)
    }

    /// A manifest by tag or digest, byte for byte; `None` when there is none.
    pub async fn manifest(
        &self,
        repository: &RepositoryName,
        reference: &Reference,
    ) -> Result<Option<Manifest>, TargetError> {
        let url = self.url(repository, &["manifests", reference.as_str()]);
        let scope = scope_for(repository, false);
        let response = self
            .send(&scope, false, &url, &|u| {
                self.client.get(u).header(ACCEPT, MANIFEST_TYPES)
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
        let what = format!("the manifest {}", named(repository, reference));
        let bytes = body::read_within(response, MANIFEST_LIMIT, &what)
            .await
            .map_err(|e| e.into_target_error(false))?;
        let digest = Digest::sha256_of(&bytes);
        Ok(Some(Manifest {
            bytes,
            media_type,
            digest,
        }))
    }

    /// The referrers of `digest` (OCI 1.1: manifests whose `subject` is it) as the
    /// registry lists them, each `(digest, artifactType)`; `None` when the registry
    /// has no referrers API: it answers 404 for a digest it has (the caller read it
    /// just before), remembered from then on.
    pub async fn referrers(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<Vec<(Digest, String)>>, TargetError> {
        if self.no_referrers.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let url = self.url(repository, &["referrers", digest.as_str()]);
        let scope = scope_for(repository, false);
        let response = self
            .send(&scope, false, &url, &|u| {
                self.client
                    .get(u)
                    .header(ACCEPT, "application/vnd.oci.image.index.v1+json")
            })
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            self.no_referrers.store(true, Ordering::Relaxed);
            return Ok(None);
        }
        let response = Registry::check(response).await?;
        let what = format!("the referrers of {repository}@{digest}");
        let bytes = body::read_within(response, MANIFEST_LIMIT, &what)
            .await
            .map_err(|e| e.into_target_error(false))?;
        let index: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            TargetError::permanent(
                JobErrorCode::UpstreamRejected,
                format!("{what} is not JSON: {e}"),
            )
        })?;
        let listed = index
            .get("manifests")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|m| {
                let digest = m.get("digest")?.as_str()?;
                let kind = m.get("artifactType").and_then(serde_json::Value::as_str);
                Some((digest, kind.unwrap_or_default().to_string()))
            })
            // Digests from upstream go into URLs: each is checked like an event's.
            .map(|(d, kind)| Ok((Digest::parse(d)?, kind)))
            .collect::<Result<Vec<_>, super::super::InvalidReference>>()?;
        Ok(Some(listed))
    }

    /// The digest a tag points at (HEAD), or `None`.
    pub async fn digest(
        &self,
        repository: &RepositoryName,
        reference: &Reference,
    ) -> Result<Option<String>, TargetError> {
        let url = self.url(repository, &["manifests", reference.as_str()]);
        let scope = scope_for(repository, false);
        let response = self
            .send(&scope, false, &url, &|u| {
                self.client.head(u).header(ACCEPT, MANIFEST_TYPES)
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
                .map(|m| m.digest.to_string())),
        }
    }

    /// Every tag of a repository (empty when the registry does not know it), page
    /// by page as the registry links them, on its own origin only and at most
    /// [`MAX_TAG_PAGES`] pages.
    pub async fn tags(&self, repository: &RepositoryName) -> Result<Vec<Tag>, TargetError> {
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let mut url = self.url(repository, &["tags", "list"]);
        url.query_pairs_mut()
            .append_pair("n", &TAGS_PER_PAGE.to_string());
        let scope = scope_for(repository, false);
        let mut tags = Vec::new();
        for _ in 0..MAX_TAG_PAGES {
            let response = self
                .send(&scope, false, &url, &|u| self.client.get(u))
                .await?;
            if response.status() == StatusCode::NOT_FOUND {
                return Ok(tags);
            }
            let response = Registry::check(response).await?;
            let next = response
                .headers()
                .get(LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(next_link)
                .and_then(|l| url.join(l).ok());
            let what = format!("the tag list of {repository}");
            let bytes = body::read_within(response, JSON_LIMIT, &what)
                .await
                .map_err(|e| e.into_target_error(false))?;
            let page: Page = serde_json::from_slice(&bytes).map_err(|e| {
                TargetError::permanent(
                    JobErrorCode::UpstreamRejected,
                    format!("{what} is not a tag list: {e}"),
                )
            })?;
            for tag in page.tags.unwrap_or_default() {
                tags.push(Tag::parse(&tag)?);
            }
            match next {
                None => return Ok(tags),
                Some(n) if self.own_origin(&n) => url = n,
                Some(n) => {
                    return Err(TargetError::permanent(
                        JobErrorCode::UpstreamRejected,
                        format!(
                            "{what} links its next page to another origin ({})",
                            n.origin().ascii_serialization()
                        ),
                    ));
                }
            }
        }
        Err(TargetError::permanent(
            JobErrorCode::UpstreamRejected,
            format!(
                "the tag list of {repository} has more than {MAX_TAG_PAGES} pages of {TAGS_PER_PAGE}"
            ),
        ))
    }

    pub async fn has_blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> Result<bool, TargetError> {
        let url = self.url(repository, &["blobs", digest.as_str()]);
        let scope = scope_for(repository, false);
        let response = self
            .send(&scope, false, &url, &|u| self.client.head(u))
            .await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(false),
            s if s.is_success() => Ok(true),
            _ => Registry::check(response).await.map(|_| false),
        }
    }

    /// Starts an upload; with `mount`, asks the registry to mount the blob from
    /// that repository instead. `Ok(None)` means it was mounted; otherwise the
    /// upload location to send the bytes to.
    pub async fn start_upload(
        &self,
        repository: &RepositoryName,
        mount: Option<(&Digest, &RepositoryName)>,
    ) -> Result<Option<Url>, TargetError> {
        // The trailing "" keeps the spec's `/blobs/uploads/`.
        let mut url = self.url(repository, &["blobs", "uploads", ""]);
        if let Some((digest, from)) = mount {
            url.query_pairs_mut()
                .append_pair("mount", digest.as_str())
                .append_pair("from", from.as_str());
        }
        let scope = scope_for(repository, true);
        let response = self
            .send(&scope, true, &url, &|u| {
                self.client.post(u).header(CONTENT_LENGTH, "0")
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
            .and_then(|l| url.join(l).ok())
            .ok_or_else(|| {
                TargetError::permanent(
                    JobErrorCode::UpstreamRejected,
                    "the registry started an upload without a Location",
                )
            })?;
        Ok(Some(location))
    }

    /// The blob's bytes as a stream, and its length.
    pub async fn blob_stream(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> Result<(Response, Option<u64>), TargetError> {
        let url = self.url(repository, &["blobs", digest.as_str()]);
        let scope = scope_for(repository, false);
        let response = self
            .send(&scope, false, &url, &|u| self.client.get(u))
            .await?;
        let response = Registry::check(response).await?;
        let length = response.content_length();
        Ok((response, length))
    }

    /// A small blob's bytes, read only when the registry says it is at most `limit`
    /// bytes and refused past it either way (`response_too_large`): signatures and
    /// attestations are kilobytes, and a registry that says otherwise is refused
    /// before it is read.
    pub async fn blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        limit: usize,
        what: &str,
    ) -> Result<Vec<u8>, TargetError> {
        let (response, length) = self.blob_stream(repository, digest).await?;
        if length.is_some_and(|n| n > limit as u64) {
            return Err(body::BodyError::TooLarge {
                what: what.to_string(),
                limit,
            }
            .into_target_error(false));
        }
        let bytes = body::read_within(response, limit, what)
            .await
            .map_err(|e| e.into_target_error(false))?;
        if Digest::sha256_of(&bytes) != *digest {
            return Err(TargetError::permanent(
                JobErrorCode::UpstreamRejected,
                format!("{what} does not hash to {digest}"),
            ));
        }
        Ok(bytes)
    }

    /// Puts `bytes` as a blob unless the repository has it; its digest.
    pub async fn push_blob(
        &self,
        repository: &RepositoryName,
        bytes: Vec<u8>,
    ) -> Result<Digest, TargetError> {
        let digest = Digest::sha256_of(&bytes);
        if self.has_blob(repository, &digest).await? {
            return Ok(digest);
        }
        if let Some(location) = self.start_upload(repository, None).await? {
            let length = bytes.len() as u64;
            self.finish_upload(repository, location, &digest, bytes.into(), Some(length))
                .await?;
        }
        Ok(digest)
    }

    /// Finishes an upload with the bytes of `source`, streamed through without
    /// being held: memory stays bounded whatever the layer's size. The upload's
    /// token was cached by `start_upload`, so the streamed request is sent once;
    /// a location on another origin gets no credentials at all.
    pub async fn upload_stream(
        &self,
        repository: &RepositoryName,
        location: Url,
        digest: &Digest,
        source: Response,
        length: Option<u64>,
    ) -> Result<(), TargetError> {
        let body = reqwest::Body::wrap_stream(source.bytes_stream());
        self.finish_upload(repository, location, digest, body, length)
            .await
    }

    /// The monolithic PUT that ends an upload, with `body` as the blob.
    async fn finish_upload(
        &self,
        repository: &RepositoryName,
        mut location: Url,
        digest: &Digest,
        body: reqwest::Body,
        length: Option<u64>,
    ) -> Result<(), TargetError> {
        location
            .query_pairs_mut()
            .append_pair("digest", digest.as_str());
        let mut req = self
            .client
            .put(location.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(body);
        if let Some(n) = length {
            req = req.header(CONTENT_LENGTH, n);
        }
        let response = crate::telemetry::send(
            self.authorize(req, &location, &scope_for(repository, true)),
            template(&location),
        )
        .await
        .map_err(|e| transport_error(e, true))?;
        Registry::check(response).await.map(|_| ())
    }

    /// Puts a manifest; returns the `Docker-Content-Digest` the registry answered
    /// with, the digest it stored, when it sent one.
    pub async fn put_manifest(
        &self,
        repository: &RepositoryName,
        reference: &Reference,
        manifest: &Manifest,
    ) -> Result<Option<String>, TargetError> {
        let url = self.url(repository, &["manifests", reference.as_str()]);
        let scope = scope_for(repository, true);
        let response = self
            .send(&scope, true, &url, &|u| {
                self.client
                    .put(u)
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
        let (mut e, body) = body::refusal(response).await;
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
        repository: &RepositoryName,
        reference: &Reference,
    ) -> Result<StatusCode, TargetError> {
        let url = self.url(repository, &["manifests", reference.as_str()]);
        let scope = scope_for(repository, true);
        let response = self
            .send(&scope, true, &url, &|u| self.client.delete(u))
            .await?;
        Registry::check(response).await.map(|r| r.status())
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

/// The distribution spec's template of the endpoint `url` calls (what a span is
/// named by, SPEC §12): the repository, references and upload ids never appear.
fn template(url: &Url) -> &'static str {
    let segments: Vec<&str> = url.path().split('/').collect();
    match segments.as_slice() {
        [.., "v2", ""] | [.., "v2"] => "/v2/",
        [.., "tags", "list"] => "/v2/{name}/tags/list",
        [.., "blobs", "uploads", ""] => "/v2/{name}/blobs/uploads/",
        [.., "blobs", "uploads", _] => "/v2/{name}/blobs/uploads/{reference}",
        [.., "manifests", _] => "/v2/{name}/manifests/{reference}",
        [.., "blobs", _] => "/v2/{name}/blobs/{digest}",
        [.., "referrers", _] => "/v2/{name}/referrers/{digest}",
        _ => "/v2/{path}",
    }
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

    #[test]
    fn challenges_read_as_rfc_7235_writes_them() {
        // An escaped quote and a comma inside a quoted string do not end the value.
        let c =
            parse_challenge(r#"bearer realm="https://auth.example/token?a=\"b\",c", service=reg"#);
        assert_eq!(
            c,
            Some(Challenge {
                realm: r#"https://auth.example/token?a="b",c"#.into(),
                service: Some("reg".into()),
                scope: None,
            })
        );
        // Several challenges: the Bearer one counts, wherever it is.
        let c = parse_challenge(
            r#"Basic realm="registry", BEARER realm="https://auth.example/t", scope="repository:a:pull""#,
        );
        assert_eq!(
            c.map(|c| (c.realm, c.scope)),
            Some((
                "https://auth.example/t".into(),
                Some("repository:a:pull".into())
            ))
        );
        // A realm that would end early under naive splitting.
        let c = parse_challenge(r#"Bearer realm="https://a.example/t,https://evil.example""#);
        assert_eq!(
            c.map(|c| c.realm).as_deref(),
            Some("https://a.example/t,https://evil.example")
        );
        assert_eq!(parse_challenge("Bearer realm=\"unterminated"), None);
        assert_eq!(parse_challenge(""), None);
    }

    #[test]
    fn next_links() {
        assert_eq!(
            next_link(r#"</v2/dev/app/tags/list?last=b&n=2>; rel="next""#),
            Some("/v2/dev/app/tags/list?last=b&n=2")
        );
        assert_eq!(
            next_link(r#"<https://x/prev>; rel="prev", <https://x/next>; rel=next"#),
            Some("https://x/next")
        );
        assert_eq!(next_link(r#"<https://x/prev>; rel="prev""#), None);
        assert_eq!(next_link("garbage"), None);
    }

    #[test]
    fn templates_name_the_endpoint_and_no_value() {
        let at = |p: &str| template(&Url::parse(&format!("https://r.example{p}")).expect("a URL"));
        assert_eq!(at("/v2/"), "/v2/");
        assert_eq!(
            at("/p/v2/team/app/manifests/1.0"),
            "/v2/{name}/manifests/{reference}"
        );
        assert_eq!(
            at("/v2/blobs/app/blobs/sha256:ab"),
            "/v2/{name}/blobs/{digest}"
        );
        assert_eq!(at("/v2/app/blobs/uploads/"), "/v2/{name}/blobs/uploads/");
        assert_eq!(
            at("/v2/app/blobs/uploads/u-1?_state=x"),
            "/v2/{name}/blobs/uploads/{reference}"
        );
        assert_eq!(at("/v2/app/tags/list"), "/v2/{name}/tags/list");
        assert_eq!(
            at("/v2/app/referrers/sha256:ab"),
            "/v2/{name}/referrers/{digest}"
        );
    }

    #[test]
    fn urls_are_built_from_checked_names_only() {
        let url = Url::parse("https://registry.example/prefix/").expect("a URL");
        let config = TargetConfig::anonymous(crate::config::TargetKind::Oci, url);
        let registry = Registry::new(&config).expect("a client");
        let repo = RepositoryName::parse("dev/app").expect("valid");
        let tag = Reference::Tag(Tag::parse("1.0").expect("valid"));
        assert_eq!(
            registry.url(&repo, &["manifests", tag.as_str()]).as_str(),
            "https://registry.example/prefix/v2/dev/app/manifests/1.0"
        );
        assert_eq!(
            registry.url(&repo, &["blobs", "uploads", ""]).as_str(),
            "https://registry.example/prefix/v2/dev/app/blobs/uploads/"
        );
        assert!(registry.own_origin(&Url::parse("https://registry.example:443/x").expect("a URL")));
        assert!(!registry.own_origin(&Url::parse("http://registry.example/x").expect("a URL")));
        assert!(!registry.own_origin(&Url::parse("https://s3.example/x").expect("a URL")));
    }
}
