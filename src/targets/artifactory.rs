//! JFrog Artifactory: docker promote through its REST API.

use async_trait::async_trait;
use reqwest::{Client, Url};
use serde_json::json;

use super::{Effect, Target, TargetError, status_error, transport_error};
use crate::config::{TargetAuth, TargetConfig};
use crate::domain::{Action, Outcome};

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

    /// `{base}/{segments...}`, each segment escaped, so repository names cannot
    /// change the path.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn authorize(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            TargetAuth::Anonymous => req,
            TargetAuth::Bearer(t) => req.bearer_auth(t.expose()),
            TargetAuth::ApiKey(k) => req.header("X-JFrog-Art-Api", k.expose()),
            TargetAuth::Basic { username, password } => {
                req.basic_auth(username, Some(password.expose()))
            }
        }
    }
}

#[async_trait]
impl Target for Artifactory {
    async fn perform(&self, action: &Action) -> Result<Effect, TargetError> {
        match action {
            Action::Promote { from, to, copy } => {
                let url = self.url(&["artifactory", "api", "docker", &from.repo, "v2", "promote"]);
                let body = json!({
                    "targetRepo": to.repo,
                    "dockerRepository": from.image,
                    "targetDockerRepository": to.image,
                    "tag": from.tag,
                    "targetTag": to.tag,
                    "copy": copy,
                });
                let response = self
                    .authorize(self.client.post(url).json(&body))
                    .send()
                    .await
                    .map_err(transport_error)?;
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
    }
}
