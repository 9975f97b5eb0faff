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

use super::{Effect, MAX_UPSTREAM_MESSAGE, Target, TargetError, status_error, transport_error};
use crate::config::{TargetAuth, TargetConfig};
use crate::domain::{Action, JobErrorCode, Op, Outcome, bounded};

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

    /// A read: the JSON answer, or `None` for a 404. Reads change nothing, so their
    /// failures are never ambiguous.
    async fn read_json(&self, url: Url) -> Result<Option<Value>, TargetError> {
        let response = self
            .request(Method::GET, url)
            .send()
            .await
            .map_err(|e| transport_error(e, false))?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(status_error(status, &headers, &text));
        }
        Ok(Some(serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// A write: sends it and returns the status and JSON body of a 2xx answer. A
    /// 2xx whose `messages` report an ERROR is a failure (build promotion and item
    /// copies answer 200 when they failed part-way).
    async fn write(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, Value), TargetError> {
        let response = req.send().await.map_err(|e| transport_error(e, true))?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(status_error(status, &headers, &text));
        }
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
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
    Effect {
        outcome,
        upstream_status: status.map(|s| s.as_u16()),
    }
}

#[async_trait]
impl Target for Artifactory {
    async fn perform(&self, action: &Action) -> Result<Effect, TargetError> {
        let dry = action.dry_run;
        match &action.op {
            Op::Promote { from, to, copy, .. } => docker::promote(self, from, to, *copy, dry).await,
            Op::BuildPromote(p) => build::promote(self, p, dry).await,
            Op::Copy { from, to } => items::transfer(self, items::Mode::Copy, from, to, dry).await,
            Op::Move { from, to } => items::transfer(self, items::Mode::Move, from, to, dry).await,
            Op::ReleaseBundlePromote {
                from,
                to,
                signing_key,
            } => bundles::promote(self, from, to, signing_key.as_deref(), dry).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::reported_errors;
    use serde_json::json;

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
}
