//! JFrog Artifactory and its Release Lifecycle API. One client per target; each
//! action family in its own file. Every action reads the target first, so a retry
//! after a lost answer finds the work done (`noop`) instead of doing it twice.

mod build;
mod bundles;
mod docker;
mod items;

use async_trait::async_trait;
use reqwest::{Client, Method, StatusCode, Url};
use serde_json::Value;

use super::body::{self, JSON_LIMIT};
use super::{
    Effect, Fence, InvalidReference, MAX_UPSTREAM_MESSAGE, Target, TargetError, oci,
    transport_error,
};
use crate::config::{TargetAuth, TargetConfig};
use crate::domain::{Action, ImageRef, JobErrorCode, Op, Outcome, bounded};
use crate::supply::Signed;

/// One piece of an Artifactory URL path.
#[derive(Debug, Clone, Copy)]
enum Part<'a> {
    /// A literal of gantry's own (`api`, `promote`).
    Fixed(&'static str),
    /// A value that is one segment whatever it holds (a repo key, a build name): a
    /// `/` in it is escaped. Says what it is, for the error.
    Name(&'static str, &'a str),
    /// A value that is a path of segments (an item path, an image name).
    Path(&'static str, &'a str),
}

/// `value` as one segment of `whole`, unless it is empty, `.` or `..`, which URL
/// parsers and servers resolve instead of passing on.
fn segment<'a>(
    what: &'static str,
    value: &'a str,
    whole: &str,
) -> Result<&'a str, InvalidReference> {
    match value {
        "" => Err(InvalidReference::new(what, whole, "has an empty segment")),
        "." | ".." => Err(InvalidReference::new(
            what,
            whole,
            "has a `.` or `..` segment",
        )),
        _ => Ok(value),
    }
}

/// The segments of a path; one leading and one trailing `/` are allowed (`/a/b/` is a
/// folder's usual spelling), any other empty segment is not.
fn path_segments<'a>(what: &'static str, path: &'a str) -> Result<Vec<&'a str>, InvalidReference> {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    trimmed.split('/').map(|s| segment(what, s, path)).collect()
}

/// A checked Artifactory URL and its template: its path with each value replaced by
/// the name of its place (`/artifactory/api/storage/{repoKey}/{path}`), which names
/// the request's span (SPEC §12) with no value in it.
#[derive(Debug, Clone)]
pub(super) struct Endpoint {
    url: Url,
    template: String,
}

impl std::ops::Deref for Endpoint {
    type Target = Url;
    fn deref(&self) -> &Url {
        &self.url
    }
}

impl std::ops::DerefMut for Endpoint {
    fn deref_mut(&mut self) -> &mut Url {
        &mut self.url
    }
}

/// A request on its way, with the template of its URL.
pub(super) struct Call {
    builder: reqwest::RequestBuilder,
    template: String,
}

impl Call {
    fn json(self, body: &impl serde::Serialize) -> Call {
        Call {
            builder: self.builder.json(body),
            ..self
        }
    }

    fn header(self, name: &'static str, value: &str) -> Call {
        Call {
            builder: self.builder.header(name, value),
            ..self
        }
    }

    async fn send(self) -> reqwest::Result<reqwest::Response> {
        crate::telemetry::send(self.builder, &self.template).await
    }
}

/// The name a value's place has in a URL template.
fn placeholder(what: &str) -> &'static str {
    match what {
        "the repo key" => "{repoKey}",
        "the build name" => "{buildName}",
        "the build number" => "{buildNumber}",
        "the release bundle name" => "{bundleName}",
        "the release bundle version" => "{bundleVersion}",
        "the promotion's created_millis" => "{createdMillis}",
        "the image" => "{image}",
        "the tag" => "{tag}",
        "the path" => "{path}",
        _ => "{value}",
    }
}

pub struct Artifactory {
    client: Client,
    /// The target as configured: its URL and credentials (a Docker repository's v2
    /// API is reached with them too).
    config: TargetConfig,
}

impl Artifactory {
    pub fn new(config: &TargetConfig) -> Result<Self, reqwest::Error> {
        let client = Client::builder()
            .timeout(config.timeout)
            .user_agent(concat!("gantry/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Artifactory {
            client,
            config: config.clone(),
        })
    }

    /// `{base}/{parts...}`, every value checked and escaped segment by segment, so a
    /// value can neither climb out of its place (`..`) nor change the path (`/`, `%`).
    /// The only way to a URL here: nothing unchecked reaches one.
    fn url(&self, parts: &[Part<'_>]) -> Result<Endpoint, InvalidReference> {
        let mut segments = Vec::new();
        let mut template = self.config.url.path().trim_end_matches('/').to_string();
        for part in parts {
            let place = match *part {
                Part::Fixed(s) => {
                    segments.push(s);
                    s
                }
                Part::Name(what, value) => {
                    segments.push(segment(what, value, value)?);
                    placeholder(what)
                }
                Part::Path(what, value) => {
                    segments.extend(path_segments(what, value)?);
                    placeholder(what)
                }
            };
            template.push('/');
            template.push_str(place);
        }
        let mut url = self.config.url.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        Ok(Endpoint { url, template })
    }

    fn request(&self, method: Method, at: Endpoint) -> Call {
        let req = self.client.request(method, at.url);
        let builder = match &self.config.auth {
            TargetAuth::Anonymous => req,
            TargetAuth::Bearer(t) => req.bearer_auth(t.expose()),
            TargetAuth::ApiKey(k) => req.header("X-JFrog-Art-Api", k.expose()),
            TargetAuth::Basic { username, password } => {
                req.basic_auth(username, Some(password.expose()))
            }
        };
        Call {
            builder,
            template: at.template,
        }
    }

    /// A read: the JSON answer, or `None` for a 404. Reads change nothing, so their
    /// failures are never ambiguous. `what` names the answer if it is too large.
    async fn read_json(&self, url: Endpoint, what: &str) -> Result<Option<Value>, TargetError> {
        let response = self
            .request(Method::GET, url)
            .send()
            .await
            .map_err(|e| transport_error(e, false))?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(body::refusal(response).await.0);
        }
        let bytes = body::read_within(response, JSON_LIMIT, what)
            .await
            .map_err(|e| e.into_target_error(false))?;
        Ok(Some(serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    }

    /// A write: once `fence` still holds, sends it and returns the status and JSON body of a 2xx answer. A
    /// 2xx whose `messages` report an ERROR is a failure (build promotion and item
    /// copies answer 200 when they failed part-way).
    async fn write(
        &self,
        fence: &dyn Fence,
        req: Call,
    ) -> Result<(StatusCode, Value), TargetError> {
        fence.check().await?;
        let response = req.send().await.map_err(|e| transport_error(e, true))?;
        let status = response.status();
        if !status.is_success() {
            return Err(body::refusal(response).await.0);
        }
        let bytes = body::read_within(response, JSON_LIMIT, "the answer to the promotion")
            .await
            .map_err(|e| TargetError {
                upstream_status: Some(status.as_u16()),
                ..e.into_target_error(true)
            })?;
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if let Some(errors) = reported_errors(&body) {
            return Err(TargetError {
                upstream_status: Some(status.as_u16()),
                ..TargetError::permanent(
                    JobErrorCode::UpstreamRejected,
                    format!("upstream answered {status} but reported: {errors}"),
                )
            });
        }
        Ok((status, body))
    }
}

/// The `messages[]` of level ERROR, joined and bounded.
fn reported_errors(body: &Value) -> Option<String> {
    let errors: Vec<&str> = body
        .get("messages")?
        .as_array()?
        .iter()
        .filter(|m| m.get("level").and_then(Value::as_str) == Some("ERROR"))
        .filter_map(|m| m.get("message").and_then(Value::as_str))
        .collect();
    (!errors.is_empty()).then(|| bounded(&errors.join("; "), MAX_UPSTREAM_MESSAGE))
}

fn done(outcome: Outcome, status: Option<StatusCode>) -> Effect {
    Effect::new(outcome, status.map(|s| s.as_u16()))
}

#[async_trait]
impl Target for Artifactory {
    async fn perform(&self, action: &Action, fence: &dyn Fence) -> Result<Effect, TargetError> {
        let dry = action.dry_run;
        let (a, f) = (self, fence);
        match &action.op {
            Op::Promote { from, to, copy, .. } => docker::promote(a, f, from, to, *copy, dry).await,
            Op::BuildPromote(p) => build::promote(a, f, p, dry).await,
            Op::Copy { from, to } => items::transfer(a, f, items::Mode::Copy, from, to, dry).await,
            Op::Move { from, to } => items::transfer(a, f, items::Mode::Move, from, to, dry).await,
            Op::ReleaseBundlePromote {
                from,
                to,
                signing_key,
            } => bundles::promote(a, f, from, to, signing_key.as_deref(), dry).await,
        }
    }

    async fn signatures(&self, image: &ImageRef) -> Result<(String, Vec<Signed>), TargetError> {
        oci::signatures_in(&docker::registry(self, &image.repo)?, &image.image, image).await
    }

    async fn attach(
        &self,
        image: &ImageRef,
        _to_target: Option<&str>,
        envelope: Vec<u8>,
        job_id: &str,
    ) -> Result<bool, TargetError> {
        let registry = docker::registry(self, &image.repo)?;
        oci::attach_in(&registry, &image.image, image, envelope, job_id).await
    }

    async fn attestations(&self, image: &ImageRef) -> Result<Vec<Vec<u8>>, TargetError> {
        oci::attestations_in(&docker::registry(self, &image.repo)?, &image.image, image).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn artifactory() -> Artifactory {
        let url = Url::parse("https://jfrog.example/base/").expect("a URL");
        Artifactory {
            client: Client::new(),
            config: TargetConfig::anonymous(crate::config::TargetKind::Artifactory, url),
        }
    }

    #[test]
    fn urls_escape_names_and_refuse_dot_segments() {
        let a = artifactory();
        let url = a.url(&[
            Part::Fixed("api"),
            Part::Name("the build name", "team/app ci"),
            Part::Path("the path", "/a/%2e%2e/b.tgz"),
        ]);
        let url = url.expect("a valid URL");
        assert_eq!(
            url.as_str(),
            "https://jfrog.example/base/api/team%2Fapp%20ci/a/%252e%252e/b.tgz"
        );
        // Its template names the places, never the values.
        assert_eq!(url.template, "/base/api/{buildName}/{path}");
        for (part, reason) in [
            (Part::Name("the repo key", ".."), "`..`"),
            (Part::Name("the repo key", "."), "`..`"),
            (Part::Name("the repo key", ""), "empty"),
            (Part::Path("the path", "a/../../b"), "`..`"),
            (Part::Path("the path", "a//b"), "empty"),
            (Part::Path("the path", "//a"), "empty"),
            (Part::Path("the path", ""), "empty"),
        ] {
            let e = a.url(&[Part::Fixed("api"), part]).map(|u| u.to_string());
            let message = e.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(message.contains(reason), "{part:?}: {message}");
        }
        assert!(a.url(&[Part::Path("the path", "/a/b/")]).is_ok());
    }

    #[test]
    fn only_error_messages_count() {
        assert_eq!(
            reported_errors(&json!({"messages": [{"level": "INFO", "message": "ok"}]})),
            None
        );
        assert_eq!(
            reported_errors(&json!({"messages": [
                {"level": "WARNING", "message": "w"},
                {"level": "ERROR", "message": "a"},
                {"level": "ERROR", "message": "b"}]})),
            Some("a; b".into())
        );
        assert_eq!(reported_errors(&json!(null)), None);
    }

    /// A fence that answers as told.
    struct Fixed(bool);

    #[async_trait]
    impl Fence for Fixed {
        async fn holds(&self) -> bool {
            self.0
        }
    }

    /// Each kind of change is made only while the fence holds: with a lost lease the
    /// reads happen, the write does not, and the attempt says why.
    #[tokio::test]
    async fn no_change_is_sent_once_the_fence_says_the_lease_is_lost() {
        use crate::domain::{ImageRef, ItemRef};
        use wiremock::{Mock, MockServer, ResponseTemplate, matchers::method};

        let upstream = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({})))
            .mount(&upstream)
            .await;
        let url = Url::parse(&upstream.uri()).expect("a URL");
        let a = Artifactory {
            client: Client::new(),
            config: TargetConfig::anonymous(crate::config::TargetKind::Artifactory, url),
        };
        let image = |repo: &str| ImageRef {
            repo: repo.into(),
            image: "app".into(),
            tag: "1.0.0".into(),
            digest: None,
        };
        let item = |repo: &str| ItemRef {
            repo: repo.into(),
            path: "libs/app-1.0.0.jar".into(),
            digest: None,
        };
        let ops = [
            Op::Promote {
                from: image("dev"),
                to: image("prod"),
                copy: true,
                to_target: None,
            },
            Op::Copy {
                from: item("dev"),
                to: item("prod"),
            },
        ];
        for op in ops {
            let action = Action { op, dry_run: false };
            let posts = || async {
                upstream
                    .received_requests()
                    .await
                    .unwrap_or_default()
                    .iter()
                    .filter(|r| r.method.as_str() == "POST")
                    .count()
            };
            let before = posts().await;
            let lost = a.perform(&action, &Fixed(false)).await;
            let e = lost.expect_err("a change without the lease");
            assert_eq!(e.error.code, JobErrorCode::LeaseExpired);
            assert_eq!(
                posts().await,
                before,
                "{} sent without the lease",
                action.kind()
            );
            a.perform(&action, &Fixed(true))
                .await
                .expect("made while held");
            assert_eq!(posts().await, before + 1, "{}", action.kind());
        }
    }
}
