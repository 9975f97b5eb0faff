//! Event formats (SPEC §5): a verified body becomes one or more normalized events.

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Headers, Verified};
use crate::config::{Field, Format, SourceConfig};
use crate::domain::{Event, Millis, Subject};

/// JSON nested deeper than this is refused before parsing (SPEC §3).
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NormalizeError {
    #[error("the body is not valid JSON: {0}")]
    Json(String),
    #[error("the body nests JSON deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("the body has no event type at `{0}`")]
    MissingType(String),
    #[error("the body is not an {0} event: {1}")]
    Shape(&'static str, String),
}

/// How one source reads its bodies, prepared once from its config.
#[derive(Debug, Clone)]
pub enum Normalizer {
    Generic {
        fields: Vec<(Field, String)>,
        type_header: Option<String>,
        delivery_header: Option<String>,
    },
    Artifactory,
}

impl Normalizer {
    pub fn new(source: &SourceConfig) -> Self {
        match source.format {
            Format::Generic => Normalizer::Generic {
                fields: Field::ALL
                    .into_iter()
                    .map(|f| {
                        let pointer = source
                            .fields
                            .get(&f)
                            .cloned()
                            .unwrap_or_else(|| default_pointer(f).to_string());
                        (f, pointer)
                    })
                    .collect(),
                type_header: source.type_header.clone(),
                delivery_header: source.delivery_header.clone(),
            },
            Format::Artifactory => Normalizer::Artifactory,
        }
    }

    /// Parses and normalizes a verified body. Ids and `received_at` are assigned here,
    /// so that one request's events share one instant.
    pub fn normalize(
        &self,
        source: &str,
        body: Verified<'_>,
        headers: &dyn Headers,
        received_at: Millis,
    ) -> Result<Vec<Event>, NormalizeError> {
        let bytes = body.body();
        check_depth(bytes)?;
        let payload: Value =
            serde_json::from_slice(bytes).map_err(|e| NormalizeError::Json(e.to_string()))?;
        let (kind, subject, delivery_id) = match self {
            Normalizer::Generic {
                fields,
                type_header,
                delivery_header,
            } => {
                let kind = match type_header {
                    Some(h) => headers
                        .get(h)
                        .map(str::to_string)
                        .ok_or_else(|| NormalizeError::MissingType(format!("header {h}")))?,
                    None => text_at(&payload, "/event")
                        .ok_or_else(|| NormalizeError::MissingType("/event".into()))?,
                };
                let mut subject = Subject::default();
                for (field, pointer) in fields {
                    subject.set(*field, text_at(&payload, pointer));
                }
                let delivery = delivery_header
                    .as_deref()
                    .and_then(|h| headers.get(h))
                    .map(str::to_string);
                (kind, subject, delivery)
            }
            Normalizer::Artifactory => {
                let (kind, subject) = artifactory(&payload)?;
                (kind, subject, None)
            }
        };
        Ok(vec![Event {
            id: crate::domain::new_id(),
            source: source.to_string(),
            kind,
            delivery_id: delivery_id.unwrap_or_else(|| body_hash(bytes)),
            received_at,
            subject,
            payload,
            parent_job_id: None,
            chain_depth: 0,
        }])
    }
}

fn default_pointer(field: Field) -> &'static str {
    match field {
        Field::Repo => "/repo",
        Field::Image => "/image",
        Field::Tag => "/tag",
        Field::Digest => "/digest",
        Field::Path => "/path",
        Field::BuildName => "/build/name",
        Field::BuildNumber => "/build/number",
    }
}

/// Senders that give no delivery id are deduplicated by the hash of their body.
fn body_hash(body: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(body)))
}

/// The text at a JSON pointer: strings as they are, numbers and booleans printed.
fn text_at(payload: &Value, pointer: &str) -> Option<String> {
    match payload.pointer(pointer)? {
        Value::String(s) => Some(s.clone()),
        v @ (Value::Number(_) | Value::Bool(_)) => Some(v.to_string()),
        _ => None,
    }
}

/// Artifactory webhooks: `{domain, event_type, data: {...}}`.
fn artifactory(payload: &Value) -> Result<(String, Subject), NormalizeError> {
    let shape = |m: &str| NormalizeError::Shape("Artifactory", m.to_string());
    let domain = payload
        .get("domain")
        .and_then(Value::as_str)
        .ok_or_else(|| shape("no `domain`"))?;
    let event_type = payload
        .get("event_type")
        .and_then(Value::as_str)
        .ok_or_else(|| shape("no `event_type`"))?;
    let data = payload
        .get("data")
        .filter(|d| d.is_object())
        .ok_or_else(|| shape("no `data` object"))?;
    let get = |k: &str| text_at(data, &format!("/{k}")).filter(|v| !v.is_empty());
    let tag = get("tag");
    let path = get("path");
    let image = if domain == "docker" {
        path.as_deref()
            .zip(tag.as_deref())
            .and_then(|(p, t)| docker_image_from_path(p, t))
            .or_else(|| get("image_name"))
    } else {
        None
    };
    let subject = Subject {
        repo: get("repo_key"),
        image,
        tag,
        digest: get("sha256").map(|s| format!("sha256:{s}")),
        path,
        build_name: get("build_name"),
        build_number: get("build_number"),
    };
    Ok((format!("{domain}.{event_type}"), subject))
}

/// `myorg/app/1.2.9/manifest.json` with tag `1.2.9` → `myorg/app` (namespace kept).
fn docker_image_from_path(path: &str, tag: &str) -> Option<String> {
    ["manifest.json", "list.manifest.json"]
        .iter()
        .find_map(|file| path.strip_suffix(&format!("/{tag}/{file}")))
        .filter(|image| !image.is_empty())
        .map(str::to_string)
}

/// Refuses nesting beyond [`MAX_DEPTH`] in one pass over the bytes, so a hostile body
/// cannot drive the parser's recursion.
fn check_depth(bytes: &[u8]) -> Result<(), NormalizeError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(NormalizeError::TooDeep);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_only_structure() {
        let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(check_depth(ok.as_bytes()).is_ok());
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert_eq!(check_depth(deep.as_bytes()), Err(NormalizeError::TooDeep));
        let in_string = format!("\"{}\\\"\"", "[".repeat(100));
        assert!(check_depth(in_string.as_bytes()).is_ok());
    }

    #[test]
    fn docker_paths() {
        assert_eq!(
            docker_image_from_path("myorg-tcd/myorg-tcd-frontend/1.2.9/manifest.json", "1.2.9"),
            Some("myorg-tcd/myorg-tcd-frontend".into())
        );
        assert_eq!(
            docker_image_from_path("app/2.0/list.manifest.json", "2.0"),
            Some("app".into())
        );
        assert_eq!(docker_image_from_path("sample_dir/sample.txt", "x"), None);
    }
}
