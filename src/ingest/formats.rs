//! Event formats (SPEC §5): a verified body becomes one or more normalized events.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{Headers, Verified};
use crate::config::{Field, Format, SourceConfig};
use crate::domain::{Event, Millis, Subject, new_id};

/// JSON nested deeper than this is refused before parsing (SPEC §3).
pub const MAX_DEPTH: usize = 64;

/// GitHub's event and delivery headers.
const GITHUB_EVENT: &str = "X-GitHub-Event";
const GITHUB_DELIVERY: &str = "X-GitHub-Delivery";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NormalizeError {
    #[error("the body is not valid JSON: {0}")]
    Json(String),
    #[error("the body nests JSON deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("the event type is missing: {0}")]
    MissingType(String),
    #[error("the body is not {0}: {1}")]
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
    Github {
        fields: Vec<(Field, String)>,
        delivery_header: String,
    },
    Artifactory,
    Registry,
}

/// One event's share of a body, before ids and time are assigned.
struct Parsed {
    kind: String,
    subject: Subject,
    delivery_id: Option<String>,
    payload: Value,
}

impl Normalizer {
    pub fn new(source: &SourceConfig) -> Self {
        let fields = || {
            Field::ALL
                .into_iter()
                .map(|f| {
                    let pointer = source
                        .fields
                        .get(&f)
                        .cloned()
                        .unwrap_or_else(|| default_pointer(f).to_string());
                    (f, pointer)
                })
                .collect()
        };
        match source.format {
            Format::Generic => Normalizer::Generic {
                fields: fields(),
                type_header: source.type_header.clone(),
                delivery_header: source.delivery_header.clone(),
            },
            Format::Github => Normalizer::Github {
                fields: fields(),
                delivery_header: source
                    .delivery_header
                    .clone()
                    .unwrap_or_else(|| GITHUB_DELIVERY.into()),
            },
            Format::Artifactory => Normalizer::Artifactory,
            Format::Registry => Normalizer::Registry,
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
        let payload = parse_strict(bytes)?;
        let header = |name: &str| headers.get(name).map(str::to_string);
        let parsed = match self {
            Normalizer::Generic {
                fields,
                type_header,
                delivery_header,
            } => {
                let kind = match type_header {
                    Some(h) => header(h)
                        .ok_or_else(|| NormalizeError::MissingType(format!("no `{h}` header")))?,
                    None => text_at(&payload, "/event")
                        .ok_or_else(|| NormalizeError::MissingType("no `/event` field".into()))?,
                };
                let delivery_id = delivery_header.as_deref().and_then(header);
                vec![Parsed {
                    kind,
                    subject: mapped(&payload, fields),
                    delivery_id,
                    payload,
                }]
            }
            Normalizer::Github {
                fields,
                delivery_header,
            } => {
                let event = header(GITHUB_EVENT).ok_or_else(|| {
                    NormalizeError::MissingType(format!("no `{GITHUB_EVENT}` header"))
                })?;
                let kind = match payload.get("action").and_then(Value::as_str) {
                    Some(action) => format!("{event}.{action}"),
                    None => event,
                };
                vec![Parsed {
                    kind,
                    subject: mapped(&payload, fields),
                    delivery_id: header(delivery_header),
                    payload,
                }]
            }
            Normalizer::Artifactory => {
                let (kind, subject) = artifactory(&payload)?;
                vec![Parsed {
                    kind,
                    subject,
                    delivery_id: None,
                    payload,
                }]
            }
            Normalizer::Registry => registry(payload)?,
        };
        Ok(parsed
            .into_iter()
            .map(|p| Event {
                id: new_id(),
                source: source.to_string(),
                kind: p.kind,
                delivery_id: p
                    .delivery_id
                    .or_else(|| body.delivery_id().map(str::to_string))
                    .unwrap_or_else(|| body_hash(bytes)),
                received_at,
                subject: p.subject,
                payload: p.payload,
                parent_job_id: None,
                chain_depth: 0,
                claims: body.claims().cloned(),
            })
            .collect())
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

fn mapped(payload: &Value, fields: &[(Field, String)]) -> Subject {
    let mut subject = Subject::default();
    for (field, pointer) in fields {
        subject.set(*field, text_at(payload, pointer));
    }
    subject
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
    let shape = |m: &str| NormalizeError::Shape("an Artifactory event", m.to_string());
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

/// Docker Distribution / OCI registry notifications: `{"events": [...]}`, each event
/// its own delivery (`id`). Blob pushes and pushes by digest carry no tag, so no
/// promote rule matches them; they are still stored and audited.
fn registry(envelope: Value) -> Result<Vec<Parsed>, NormalizeError> {
    let shape = |m: String| NormalizeError::Shape("a registry notification", m);
    let Value::Object(mut envelope) = envelope else {
        return Err(shape("not a JSON object".into()));
    };
    let Some(Value::Array(events)) = envelope.remove("events") else {
        return Err(shape("no `events` list".into()));
    };
    if events.is_empty() {
        return Err(shape("the `events` list is empty".into()));
    }
    events
        .into_iter()
        .enumerate()
        .map(|(i, event)| {
            let action = event
                .get("action")
                .and_then(Value::as_str)
                .ok_or_else(|| shape(format!("events[{i}] has no `action`")))?;
            let target = event
                .get("target")
                .filter(|t| t.is_object())
                .ok_or_else(|| shape(format!("events[{i}] has no `target` object")))?;
            let get = |k: &str| text_at(target, &format!("/{k}")).filter(|v| !v.is_empty());
            let (repo, image) = match get("repository") {
                Some(r) => match r.split_once('/') {
                    Some((repo, image)) => (Some(repo.to_string()), Some(image.to_string())),
                    None => (Some(String::new()), Some(r)),
                },
                None => (None, None),
            };
            Ok(Parsed {
                kind: format!("registry.{action}"),
                subject: Subject {
                    repo,
                    image,
                    tag: get("tag"),
                    digest: get("digest"),
                    ..Subject::default()
                },
                delivery_id: text_at(&event, "/id").filter(|id| !id.is_empty()),
                payload: event,
            })
        })
        .collect()
}

/// Parses JSON, refusing nesting beyond [`MAX_DEPTH`] (checked in one pass over the
/// bytes first, so a hostile body cannot drive the parser's recursion) and duplicate
/// object keys (which parsers disagree about, so they are a way to smuggle a value
/// past whoever reads the payload next).
fn parse_strict(bytes: &[u8]) -> Result<Value, NormalizeError> {
    check_depth(bytes)?;
    serde_json::from_slice::<Strict>(bytes)
        .map(|s| s.0)
        .map_err(|e| NormalizeError::Json(e.to_string()))
}

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

/// A JSON value whose objects have no repeated key.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key `{key}`")));
            }
            let Strict(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Encoding, SchemeKind, Secret, VerifyConfig};
    use std::collections::BTreeMap;

    fn source(format: Format, fields: &[(Field, &str)]) -> SourceConfig {
        SourceConfig {
            name: "src".into(),
            format,
            verify: VerifyConfig {
                scheme: SchemeKind::None,
                header: String::new(),
                prefix: String::new(),
                encoding: Encoding::Hex,
                secrets: Vec::<Secret>::new(),
                tolerance: std::time::Duration::from_secs(300),
                param: String::new(),
                oidc: None,
            },
            fields: fields
                .iter()
                .map(|(f, p)| (*f, p.to_string()))
                .collect::<BTreeMap<_, _>>(),
            type_header: None,
            delivery_header: None,
        }
    }

    fn normalize(format: Format, body: &[u8], headers: &[(&str, &str)]) -> Vec<Event> {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Normalizer::new(&source(format, &[]))
            .normalize("src", Verified::trusted_local_file(body), &headers, 42)
            .unwrap()
    }

    fn one(format: Format, body: &[u8]) -> Event {
        let mut events = normalize(format, body, &[]);
        assert_eq!(events.len(), 1);
        events.remove(0)
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        std::fs::read(path).unwrap()
    }

    fn subject(fields: [Option<&str>; 7]) -> Subject {
        let [repo, image, tag, digest, path, build_name, build_number] =
            fields.map(|f| f.map(str::to_string));
        Subject {
            repo,
            image,
            tag,
            digest,
            path,
            build_name,
            build_number,
        }
    }

    #[test]
    fn artifactory_docker_pushed() {
        let body = fixture("artifactory-docker-pushed.json");
        let e = one(Format::Artifactory, &body);
        assert_eq!(e.kind, "docker.pushed");
        assert_eq!(e.source, "src");
        assert_eq!(e.received_at, 42);
        assert_eq!(
            e.delivery_id,
            format!("sha256:{}", hex::encode(Sha256::digest(&body)))
        );
        assert_eq!(
            e.subject,
            subject([
                Some("docker-myorg-local"),
                Some("myorg-tcd/myorg-tcd-frontend"),
                Some("1.2.9"),
                Some("sha256:b416d974092956b84d9f333ec6efcd579533a0ee07195de6257c315a67a32202"),
                Some("myorg-tcd/myorg-tcd-frontend/1.2.9/manifest.json"),
                None,
                None,
            ])
        );
        assert_eq!(e.payload["subscription_key"], "kargo");
    }

    #[test]
    fn artifactory_docker_promoted_falls_back_to_the_image_name() {
        let e = one(
            Format::Artifactory,
            &fixture("artifactory-docker-promoted.json"),
        );
        assert_eq!(e.kind, "docker.promoted");
        assert_eq!(
            e.subject,
            subject([
                Some("sample_repo"),
                Some("sample_arch"),
                Some("sample_image"),
                Some("sha256:sample_checksum"),
                Some("sample_dir/sample.txt"),
                None,
                None,
            ])
        );
    }

    #[test]
    fn artifactory_artifact_deployed() {
        let e = one(
            Format::Artifactory,
            &fixture("artifactory-artifact-deployed.json"),
        );
        assert_eq!(e.kind, "artifact.deployed");
        assert_eq!(
            e.subject,
            subject([
                Some("sample_repo"),
                None,
                None,
                Some("sha256:sample_checksum"),
                Some("sample_dir/sample.txt"),
                None,
                None,
            ])
        );
    }

    #[test]
    fn artifactory_build_promoted() {
        let e = one(
            Format::Artifactory,
            &fixture("artifactory-build-promoted.json"),
        );
        assert_eq!(e.kind, "build.promoted");
        assert_eq!(
            e.subject,
            subject([
                None,
                None,
                None,
                None,
                None,
                Some("sample_build_name"),
                Some("1")
            ])
        );
    }

    #[test]
    fn registry_manifest_push_from_a_real_registry() {
        let e = one(Format::Registry, &fixture("registry-manifest-push.json"));
        assert_eq!(e.kind, "registry.push");
        assert_eq!(e.delivery_id, "21143e08-e756-4053-b4a7-24a0b0290b9e");
        assert_eq!(
            e.subject,
            subject([
                Some("dev"),
                Some("app"),
                Some("2.0.0"),
                Some("sha256:3514185d63f21c32cec803130a82698afc4d314f232aa5decbe2f24891e3553e"),
                None,
                None,
                None,
            ])
        );
        // The stored payload is the event itself, not the envelope.
        assert_eq!(e.payload["request"]["useragent"], "skopeo/1.9.3");
    }

    #[test]
    fn registry_envelopes_become_one_event_each() {
        let body = br#"{"events":[
            {"id":"a","action":"push","target":{"repository":"team/app","tag":"1","digest":"sha256:1"}},
            {"id":"b","action":"push","target":{"repository":"app","digest":"sha256:2",
             "mediaType":"application/vnd.oci.image.layer.v1.tar+gzip"}},
            {"id":"c","action":"pull","target":{"repository":"a/b/c","tag":"x"}}]}"#;
        let events = normalize(Format::Registry, body, &[]);
        let summary: Vec<_> = events
            .iter()
            .map(|e| {
                (
                    e.kind.as_str(),
                    e.delivery_id.as_str(),
                    e.subject.repo.as_deref(),
                    e.subject.image.as_deref(),
                    e.subject.tag.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("registry.push", "a", Some("team"), Some("app"), Some("1")),
                ("registry.push", "b", Some(""), Some("app"), None),
                ("registry.pull", "c", Some("a"), Some("b/c"), Some("x")),
            ]
        );
        assert!(events[0].id < events[1].id && events[1].id < events[2].id);
        for bad in [
            &br#"{"events":[]}"#[..],
            br#"{"events":[{"id":"a"}]}"#,
            b"[]",
        ] {
            let err = Normalizer::Registry
                .normalize("r", Verified::trusted_local_file(bad), &Vec::new(), 0)
                .unwrap_err();
            assert!(matches!(err, NormalizeError::Shape(..)), "{err}");
        }
    }

    #[test]
    fn github_type_delivery_and_mapped_fields() {
        let src = source(
            Format::Github,
            &[
                (Field::Tag, "/release/tag_name"),
                (Field::Image, "/repository/name"),
            ],
        );
        let headers = vec![
            ("X-GitHub-Event".to_string(), "release".to_string()),
            ("X-GitHub-Delivery".to_string(), "d-1".to_string()),
        ];
        let body = br#"{"action":"published","release":{"tag_name":"v1.2.0"},"repository":{"name":"api"}}"#;
        let events = Normalizer::new(&src)
            .normalize("gh", Verified::trusted_local_file(body), &headers, 0)
            .unwrap();
        assert_eq!(events[0].kind, "release.published");
        assert_eq!(events[0].delivery_id, "d-1");
        assert_eq!(events[0].subject.tag.as_deref(), Some("v1.2.0"));
        assert_eq!(events[0].subject.image.as_deref(), Some("api"));
        let ping = Normalizer::new(&src)
            .normalize(
                "gh",
                Verified::trusted_local_file(b"{}"),
                &headers[..1].to_vec(),
                0,
            )
            .unwrap();
        assert_eq!(ping[0].kind, "release");
        let err = Normalizer::new(&src)
            .normalize("gh", Verified::trusted_local_file(b"{}"), &Vec::new(), 0)
            .unwrap_err();
        assert!(matches!(err, NormalizeError::MissingType(_)));
    }

    #[test]
    fn generic_fields_type_header_and_delivery_header() {
        let mut src = source(
            Format::Generic,
            &[
                (Field::Tag, "/release/version"),
                (Field::BuildNumber, "/run"),
            ],
        );
        src.type_header = Some("X-Event".into());
        src.delivery_header = Some("X-Delivery".into());
        let headers = vec![
            ("x-event".to_string(), "deployed".to_string()),
            ("x-delivery".to_string(), "42".to_string()),
        ];
        let body =
            br#"{"repo":"r","image":"i","release":{"version":"3.1.0"},"run":17,"tag":"ignored"}"#;
        let e = &Normalizer::new(&src)
            .normalize("g", Verified::trusted_local_file(body), &headers, 0)
            .unwrap()[0];
        assert_eq!(
            (e.kind.as_str(), e.delivery_id.as_str()),
            ("deployed", "42")
        );
        assert_eq!(
            e.subject,
            subject([
                Some("r"),
                Some("i"),
                Some("3.1.0"),
                None,
                None,
                None,
                Some("17")
            ])
        );
    }

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
    fn duplicate_keys_are_refused_at_any_depth() {
        assert!(parse_strict(br#"{"a":1,"b":{"c":2}}"#).is_ok());
        for body in [r#"{"a":1,"a":2}"#, r#"{"x":[{"tag":"1","tag":"2"}]}"#] {
            let e = parse_strict(body.as_bytes()).unwrap_err();
            assert!(
                matches!(&e, NormalizeError::Json(m) if m.contains("duplicate key")),
                "{e}"
            );
        }
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
