use serde::Serialize;

use super::Millis;
use crate::config::Field;

/// What an event is about, in the normalized vocabulary rules match on (SPEC §5).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Subject {
    pub repo: Option<String>,
    pub image: Option<String>,
    pub tag: Option<String>,
    pub digest: Option<String>,
    pub path: Option<String>,
    pub build_name: Option<String>,
    pub build_number: Option<String>,
}

impl Subject {
    pub fn get(&self, field: Field) -> Option<&str> {
        match field {
            Field::Repo => self.repo.as_deref(),
            Field::Image => self.image.as_deref(),
            Field::Tag => self.tag.as_deref(),
            Field::Digest => self.digest.as_deref(),
            Field::Path => self.path.as_deref(),
            Field::BuildName => self.build_name.as_deref(),
            Field::BuildNumber => self.build_number.as_deref(),
        }
    }

    pub fn set(&mut self, field: Field, value: Option<String>) {
        let slot = match field {
            Field::Repo => &mut self.repo,
            Field::Image => &mut self.image,
            Field::Tag => &mut self.tag,
            Field::Digest => &mut self.digest,
            Field::Path => &mut self.path,
            Field::BuildName => &mut self.build_name,
            Field::BuildNumber => &mut self.build_number,
        };
        *slot = value;
    }
}

/// One normalized event, as stored and as matched against the rules.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Event {
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub delivery_id: String,
    #[serde(serialize_with = "super::job::as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub received_at: Millis,
    #[serde(flatten)]
    pub subject: Subject,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    pub parent_job_id: Option<String>,
    pub chain_depth: u32,
    /// The claims of the token an `oidc` source verified (SPEC §16): who sent it,
    /// as its identity provider vouches. Absent for every other scheme.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub claims: Option<serde_json::Value>,
}
