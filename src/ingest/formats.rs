//! Event formats (SPEC §5, §16): a verified body becomes one or more normalized events.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{Headers, Verified};
use crate::config::{Field, Format, SourceConfig};
use crate::domain::{Event, Millis, Subject, new_id};

/// JSON nested deeper than this is refused before parsing (SPEC §3).
pub const MAX_DEPTH: usize = 64;

/// The most events one body becomes. Every event of a body is committed in one
/// transaction with its jobs and audit records, and the sender gets one answer listing
/// them all; a real push names a handful of tags or resources, so a body naming
/// thousands is refused whole (413) instead of holding the store for one request.
pub const MAX_EVENTS: usize = 1000;

/// The most bytes a body's events may repeat between them. Each of the events a
/// Harbor or Quay body becomes stores the body's shared part (everything but its list
/// of resources or tags), so without a bound a body within `server.max_body_bytes`
/// could make the store write a thousand copies of itself.
pub const MAX_REPEATED_BYTES: usize = 8 << 20;

/// A delivery id longer than this is stored as its hash: ids come from senders
/// (headers, CloudEvents `source`, tags), and the store indexes them.
const MAX_DELIVERY_ID: usize = 256;

/// GitHub's event and delivery headers.
const GITHUB_EVENT: &str = "X-GitHub-Event";
const GITHUB_DELIVERY: &str = "X-GitHub-Delivery";

/// CloudEvents binary mode: the attributes gantry keeps, each sent as `ce-{name}`
/// (`datacontenttype` travels as `Content-Type`).
const CE_ATTRIBUTES: [&str; 7] = [
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "dataschema",
];

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
    #[error(
        "the body lists {count} entries in `{list}`; one body becomes at most {MAX_EVENTS} events"
    )]
    TooManyEvents { count: usize, list: &'static str },
    #[error(
        "the body's {count} events would repeat {bytes} bytes of it between them, more than {MAX_REPEATED_BYTES}"
    )]
    TooMuchRepeated { count: usize, bytes: usize },
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
    Harbor,
    Quay,
    Dockerhub,
    Acr,
    /// `fields` point into the event's `data`.
    Cloudevents {
        fields: Vec<(Field, String)>,
    },
}

/// One event's share of a body, before ids and time are assigned.
struct Parsed {
    kind: String,
    subject: Subject,
    /// The id the body gives this event; else the scheme's, else the body's hash.
    delivery_id: Option<String>,
    /// Set when one delivery holds several events (Harbor resources, Quay tags):
    /// appended to the delivery id as `#{entry}` so that each event has its own.
    entry: Option<String>,
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
            Format::Harbor => Normalizer::Harbor,
            Format::Quay => Normalizer::Quay,
            Format::Dockerhub => Normalizer::Dockerhub,
            Format::Acr => Normalizer::Acr,
            Format::Cloudevents => Normalizer::Cloudevents { fields: fields() },
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
                vec![Parsed::new(
                    kind,
                    mapped(&payload, fields),
                    delivery_id,
                    payload,
                )]
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
                let subject = mapped(&payload, fields);
                vec![Parsed::new(kind, subject, header(delivery_header), payload)]
            }
            Normalizer::Artifactory => vec![artifactory(payload)?],
            Normalizer::Registry => registry(payload)?,
            Normalizer::Harbor => harbor(payload, headers)?,
            Normalizer::Quay => quay(payload)?,
            Normalizer::Dockerhub => vec![dockerhub(payload)?],
            Normalizer::Acr => vec![distribution_event(payload, "acr", "an ACR event", "it")?],
            Normalizer::Cloudevents { fields } => vec![cloudevent(payload, headers, fields)?],
        };
        Ok(parsed
            .into_iter()
            .map(|p| Event {
                id: new_id(),
                source: source.to_string(),
                kind: p.kind,
                delivery_id: delivery_id(p.delivery_id, p.entry, &body),
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

impl Parsed {
    fn new(kind: String, subject: Subject, delivery_id: Option<String>, payload: Value) -> Self {
        Parsed {
            kind,
            subject,
            delivery_id,
            entry: None,
            payload,
        }
    }
}

/// The body's own id, else the one the scheme vouches for, else the body's hash; with
/// the event's entry when the body holds several; hashed when too long to index.
fn delivery_id(own: Option<String>, entry: Option<String>, body: &Verified<'_>) -> String {
    let base = own
        .or_else(|| body.delivery_id().map(str::to_string))
        .unwrap_or_else(|| body_hash(body.body()));
    let id = match entry {
        Some(entry) => format!("{base}#{entry}"),
        None => base,
    };
    if id.len() > MAX_DELIVERY_ID {
        body_hash(id.as_bytes())
    } else {
        id
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

/// Like [`text_at`], an empty string counting as missing (registries send `""` for
/// what they do not know).
fn given(payload: &Value, pointer: &str) -> Option<String> {
    text_at(payload, pointer).filter(|v| !v.is_empty())
}

/// Artifactory webhooks: `{domain, event_type, data: {...}}`.
fn artifactory(mut payload: Value) -> Result<Parsed, NormalizeError> {
    let shape = |m: String| NormalizeError::Shape("an Artifactory event", m);
    // Some of JFrog's examples send `data` as a string holding the JSON object. It is
    // read, and stored, as that object, so that a rule's `/data/...` pointers read
    // both forms alike.
    if let Some(Value::String(text)) = payload.get("data") {
        let data = parse_strict(text.as_bytes())
            .map_err(|e| shape(format!("`data` is a string that does not hold JSON ({e})")))?;
        if let Some(object) = payload.as_object_mut() {
            object.insert("data".into(), data);
        }
    }
    let domain = given(&payload, "/domain").ok_or_else(|| shape("no `domain`".into()))?;
    let event_type =
        given(&payload, "/event_type").ok_or_else(|| shape("no `event_type`".into()))?;
    let data = payload
        .get("data")
        .filter(|d| d.is_object())
        .ok_or_else(|| shape("no `data` object".into()))?;
    let get = |k: &str| given(data, &format!("/{k}"));
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
    Ok(Parsed::new(
        format!("{domain}.{event_type}"),
        subject,
        None,
        payload,
    ))
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
    const WHAT: &str = "a registry notification";
    let shape = |m: &str| NormalizeError::Shape(WHAT, m.to_string());
    let Value::Object(mut envelope) = envelope else {
        return Err(shape("not a JSON object"));
    };
    let Some(Value::Array(events)) = envelope.remove("events") else {
        return Err(shape("no `events` list"));
    };
    if events.is_empty() {
        return Err(shape("the `events` list is empty"));
    }
    within_limit(events.len(), "events")?;
    events
        .into_iter()
        .enumerate()
        .map(|(i, event)| distribution_event(event, "registry", WHAT, &format!("events[{i}]")))
        .collect()
}

/// One Docker Distribution event, `{id, action, target: {repository, tag, digest}}`,
/// as a registry's envelope lists them and as Azure Container Registry sends one
/// alone. Its type is `{prefix}.{action}`; `at` names it in errors.
fn distribution_event(
    event: Value,
    prefix: &str,
    what: &'static str,
    at: &str,
) -> Result<Parsed, NormalizeError> {
    let action = given(&event, "/action")
        .ok_or_else(|| NormalizeError::Shape(what, format!("{at} has no `action`")))?;
    let target = event
        .get("target")
        .filter(|t| t.is_object())
        .ok_or_else(|| NormalizeError::Shape(what, format!("{at} has no `target` object")))?;
    let (repo, image) = match given(target, "/repository") {
        Some(r) => match r.split_once('/') {
            Some((repo, image)) => (Some(repo.to_string()), Some(image.to_string())),
            None => (Some(String::new()), Some(r)),
        },
        None => (None, None),
    };
    let subject = Subject {
        repo,
        image,
        tag: given(target, "/tag"),
        digest: given(target, "/digest"),
        ..Subject::default()
    };
    let id = given(&event, "/id");
    Ok(Parsed::new(
        format!("{prefix}.{action}"),
        subject,
        id,
        event,
    ))
}

/// Harbor webhooks, in either payload format its policies offer: "Default"
/// (`{type: "PUSH_ARTIFACT", event_data: {resources, repository}}`, typed
/// `harbor.push_artifact`) or "CloudEvents" (typed as sent, `harbor.artifact.pushed`,
/// the same `resources` and `repository` under `data`). One event per resource; an
/// event without resources (replication, quota, retention) is stored as one event
/// naming no artifact.
fn harbor(body: Value, headers: &dyn Headers) -> Result<Vec<Parsed>, NormalizeError> {
    const WHAT: &str = "a Harbor event";
    let (kind, own_id, data_at, body) = match read_cloud_event(body, headers)? {
        Envelope::Cloud(ce) => (ce.kind, Some(ce.id), "/data", ce.event),
        Envelope::Plain(body) => {
            let kind = given(&body, "/type")
                .ok_or_else(|| NormalizeError::Shape(WHAT, "no `type`".into()))?;
            if !body.get("event_data").is_some_and(Value::is_object) {
                return Err(NormalizeError::Shape(WHAT, "no `event_data` object".into()));
            }
            let kind = format!("harbor.{}", kind.to_ascii_lowercase());
            (kind, None, "/event_data", body)
        }
    };
    let subject = Subject {
        repo: given(&body, &format!("{data_at}/repository/namespace")),
        image: given(&body, &format!("{data_at}/repository/name")),
        ..Subject::default()
    };
    let resources = match fan_out(body, data_at, "resources", WHAT)? {
        Fanned::Entries(resources) => resources,
        Fanned::Whole(body) => return Ok(vec![Parsed::new(kind, subject, own_id, body)]),
    };
    // A CloudEvent's id names the delivery; only when it holds several resources do
    // they need the index to stay apart. Without an id, the index always tells them.
    let indexed = own_id.is_none() || resources.len() > 1;
    Ok(resources
        .into_iter()
        .enumerate()
        .map(|(i, (payload, resource))| Parsed {
            kind: kind.clone(),
            subject: Subject {
                tag: given(&resource, "/tag"),
                digest: given(&resource, "/digest"),
                ..subject.clone()
            },
            delivery_id: own_id.clone(),
            entry: indexed.then(|| i.to_string()),
            payload,
        })
        .collect())
}

/// Quay "Repository Push" notifications: `{namespace, name, updated_tags}`, one event
/// per tag, `updated_tags` a list of tags or (older Quay) a map tag → image id.
fn quay(body: Value) -> Result<Vec<Parsed>, NormalizeError> {
    const WHAT: &str = "a Quay repository push";
    let shape = |m: String| NormalizeError::Shape(WHAT, m);
    let subject = Subject {
        repo: given(&body, "/namespace"),
        image: given(&body, "/name"),
        ..Subject::default()
    };
    let Fanned::Entries(tags) = fan_out(body, "", "updated_tags", WHAT)? else {
        return Err(shape("`updated_tags` is missing or empty".into()));
    };
    tags.into_iter()
        .enumerate()
        .map(|(i, (payload, tag))| {
            let tag = given(&tag, "")
                .ok_or_else(|| shape(format!("`updated_tags` entry {i} is not a tag")))?;
            Ok(Parsed {
                kind: "quay.repo_push".into(),
                subject: Subject {
                    tag: Some(tag.clone()),
                    ..subject.clone()
                },
                delivery_id: None,
                entry: Some(tag),
                payload,
            })
        })
        .collect()
}

/// Docker Hub repository webhooks: `{push_data: {tag}, repository: {namespace,
/// name}}`. They carry no digest, no type and no delivery id.
fn dockerhub(body: Value) -> Result<Parsed, NormalizeError> {
    for key in ["push_data", "repository"] {
        if !body.get(key).is_some_and(Value::is_object) {
            return Err(NormalizeError::Shape(
                "a Docker Hub push",
                format!("no `{key}` object"),
            ));
        }
    }
    let subject = Subject {
        repo: given(&body, "/repository/namespace"),
        image: given(&body, "/repository/name"),
        tag: given(&body, "/push_data/tag"),
        ..Subject::default()
    };
    Ok(Parsed::new("dockerhub.push".into(), subject, None, body))
}

/// Any CloudEvents 1.0 sender: typed by the event's `type`, the subject read by the
/// source's `fields` pointers from its `data`, the delivery its `source` and `id`
/// (which the specification makes unique together; a URI reference has no space).
fn cloudevent(
    body: Value,
    headers: &dyn Headers,
    fields: &[(Field, String)],
) -> Result<Parsed, NormalizeError> {
    let Envelope::Cloud(ce) = read_cloud_event(body, headers)? else {
        return Err(NormalizeError::Shape(
            "a CloudEvent",
            "the body has no `specversion` and the request no `ce-specversion` header".into(),
        ));
    };
    let subject = mapped(ce.event.get("data").unwrap_or(&Value::Null), fields);
    let delivery = format!("{} {}", ce.source, ce.id);
    Ok(Parsed::new(ce.kind, subject, Some(delivery), ce.event))
}

/// A CloudEvent in its structured form, `{specversion, id, source, type, data, …}`,
/// whichever mode it came in.
struct CloudEvent {
    id: String,
    source: String,
    kind: String,
    event: Value,
}

enum Envelope {
    Cloud(CloudEvent),
    /// Not a CloudEvent: the body as it came.
    Plain(Value),
}

/// Reads a CloudEvents 1.0 request. Binary mode (attributes in `ce-*` headers, the
/// body the event's `data`) is made into the structured form, so that the stored
/// payload and a rule's pointers (`/data/...`, `/source`) are the same in both modes.
/// A `Content-Type` of `application/cloudevents+json` means structured mode whatever
/// the headers (CloudEvents HTTP binding, 3.1).
fn read_cloud_event(body: Value, headers: &dyn Headers) -> Result<Envelope, NormalizeError> {
    const WHAT: &str = "a CloudEvents 1.0 event";
    let content_type = headers.get("content-type");
    let structured = content_type.is_some_and(|ct| {
        ct.split(';').next().is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/cloudevents+json")
        })
    });
    let event = if !structured && headers.get("ce-specversion").is_some() {
        let mut event: Map<String, Value> = CE_ATTRIBUTES
            .iter()
            .filter_map(|name| {
                let value = headers.get(&format!("ce-{name}"))?;
                Some((name.to_string(), Value::String(value.to_string())))
            })
            .collect();
        if let Some(ct) = content_type {
            event.insert("datacontenttype".into(), Value::String(ct.to_string()));
        }
        event.insert("data".into(), body);
        Value::Object(event)
    } else if body.get("specversion").is_some() {
        body
    } else {
        return Ok(Envelope::Plain(body));
    };
    let attribute = |name: &str| {
        given(&event, &format!("/{name}"))
            .ok_or_else(|| NormalizeError::Shape(WHAT, format!("no `{name}` attribute")))
    };
    let version = attribute("specversion")?;
    if version != "1.0" {
        return Err(NormalizeError::Shape(
            WHAT,
            format!("`specversion` is `{version}`, not `1.0`"),
        ));
    }
    Ok(Envelope::Cloud(CloudEvent {
        id: attribute("id")?,
        source: attribute("source")?,
        kind: attribute("type")?,
        event,
    }))
}

/// A body split at its list of artifacts.
enum Fanned {
    /// There is no list where it was looked for: the body as it came.
    Whole(Value),
    /// Per entry, its payload and the entry (an array's item, or a map's key).
    Entries(Vec<(Value, Value)>),
}

/// Splits a body that names several artifacts in one list (Harbor's `resources`,
/// Quay's `updated_tags`) into one payload per entry of the list at `parent`/`key`:
/// the body with the list narrowed to that entry (an array of one, or a map of one),
/// so that a rule's JSON pointers find the event's own entry at the same place
/// whatever the number of entries. The number of entries and the bytes repeated
/// between them are bounded ([`MAX_EVENTS`], [`MAX_REPEATED_BYTES`]) before the body
/// is copied. No list there, or an empty one: the body whole.
fn fan_out(
    mut body: Value,
    parent: &str,
    key: &'static str,
    what: &'static str,
) -> Result<Fanned, NormalizeError> {
    let Some(list) = body
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .and_then(|object| object.remove(key))
    else {
        return Ok(Fanned::Whole(body));
    };
    let entries: Vec<(Value, Value)> = match list {
        Value::Array(items) if !items.is_empty() => items
            .into_iter()
            .map(|item| (Value::Array(vec![item.clone()]), item))
            .collect(),
        Value::Object(map) if !map.is_empty() => map
            .into_iter()
            .map(|(k, v)| {
                (
                    Value::Object(Map::from_iter([(k.clone(), v)])),
                    Value::String(k),
                )
            })
            .collect(),
        empty @ (Value::Array(_) | Value::Object(_)) => {
            put(&mut body, parent, key, empty);
            return Ok(Fanned::Whole(body));
        }
        _ => {
            return Err(NormalizeError::Shape(
                what,
                format!("`{key}` is neither a list nor a map"),
            ));
        }
    };
    within_limit(entries.len(), key)?;
    // What every payload repeats: the body without its list.
    let shared = serde_json::to_vec(&body).map_or(usize::MAX, |b| b.len());
    let repeated = shared.saturating_mul(entries.len());
    if entries.len() > 1 && repeated > MAX_REPEATED_BYTES {
        return Err(NormalizeError::TooMuchRepeated {
            count: entries.len(),
            bytes: repeated,
        });
    }
    Ok(Fanned::Entries(
        entries
            .into_iter()
            .map(|(list, entry)| {
                let mut payload = body.clone();
                put(&mut payload, parent, key, list);
                (payload, entry)
            })
            .collect(),
    ))
}

/// Sets `key` in the object at `parent`, where [`fan_out`] took the list from.
fn put(body: &mut Value, parent: &str, key: &str, list: Value) {
    if let Some(object) = body.pointer_mut(parent).and_then(Value::as_object_mut) {
        object.insert(key.to_string(), list);
    }
}

/// Refuses a body whose list would become more than [`MAX_EVENTS`] events.
fn within_limit(count: usize, list: &'static str) -> Result<(), NormalizeError> {
    if count > MAX_EVENTS {
        return Err(NormalizeError::TooManyEvents { count, list });
    }
    Ok(())
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
    use proptest::prelude::*;
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

    fn hash(bytes: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    }

    /// The harbor fixtures' one resource.
    const HARBOR_DIGEST: &str =
        "sha256:6a1f1b3b2c5d7e9f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6071";

    #[test]
    fn harbor_default_push_artifact() {
        let body = fixture("harbor-push-artifact.json");
        let e = one(Format::Harbor, &body);
        assert_eq!(e.kind, "harbor.push_artifact");
        assert_eq!(e.delivery_id, format!("{}#0", hash(&body)));
        assert_eq!(
            e.subject,
            subject([
                Some("team-a"),
                Some("api"),
                Some("1.4.2"),
                Some(HARBOR_DIGEST),
                None,
                None,
                None
            ])
        );
        assert_eq!(e.payload["operator"], "robot$ci");
        assert_eq!(e.payload["event_data"]["resources"][0]["tag"], "1.4.2");
    }

    #[test]
    fn harbor_cloudevents_push_artifact() {
        let e = one(
            Format::Harbor,
            &fixture("harbor-push-artifact-cloudevents.json"),
        );
        assert_eq!(e.kind, "harbor.artifact.pushed");
        assert_eq!(e.delivery_id, "4b1f7c0e-2f2d-4c43-9f3e-7d2a0c5e9b11");
        assert_eq!(
            e.subject,
            subject([
                Some("team-a"),
                Some("api"),
                Some("1.4.3"),
                Some(HARBOR_DIGEST),
                None,
                None,
                None
            ])
        );
        assert_eq!(e.payload["source"], "/projects/3/webhook/policies/7");
    }

    #[test]
    fn harbor_makes_one_event_per_resource_each_with_its_own_delivery() {
        let resources = r#"[{"tag":"1","digest":"sha256:1"},{"digest":"sha256:2"}]"#;
        let repository = r#"{"name":"sub/api","namespace":"team-a"}"#;
        let default = format!(
            r#"{{"type":"DELETE_ARTIFACT","event_data":{{"resources":{resources},"repository":{repository}}}}}"#
        );
        let cloud = format!(
            r#"{{"specversion":"1.0","id":"x","source":"/p","type":"harbor.artifact.deleted","data":{{"resources":{resources},"repository":{repository}}}}}"#
        );
        for (body, list, ids) in [
            (
                &default,
                "/event_data/resources",
                [0, 1].map(|i| format!("{}#{i}", hash(default.as_bytes()))),
            ),
            (
                &cloud,
                "/data/resources",
                ["x#0".to_string(), "x#1".to_string()],
            ),
        ] {
            let events = normalize(Format::Harbor, body.as_bytes(), &[]);
            let seen: Vec<_> = events
                .iter()
                .map(|e| {
                    (
                        e.delivery_id.as_str(),
                        e.subject.repo.as_deref(),
                        e.subject.image.as_deref(),
                        e.subject.tag.as_deref(),
                        e.subject.digest.as_deref(),
                    )
                })
                .collect();
            assert_eq!(
                seen,
                [
                    (
                        ids[0].as_str(),
                        Some("team-a"),
                        Some("sub/api"),
                        Some("1"),
                        Some("sha256:1")
                    ),
                    (
                        ids[1].as_str(),
                        Some("team-a"),
                        Some("sub/api"),
                        None,
                        Some("sha256:2")
                    ),
                ]
            );
            // Each payload holds its own resource only, at index 0.
            for (e, digest) in events.iter().zip(["sha256:1", "sha256:2"]) {
                let list = e.payload.pointer(list).and_then(Value::as_array).unwrap();
                assert_eq!(list.len(), 1);
                assert_eq!(list[0]["digest"], digest);
            }
        }
        assert_eq!(
            normalize(Format::Harbor, default.as_bytes(), &[])[0].kind,
            "harbor.delete_artifact"
        );
    }

    #[test]
    fn harbor_events_without_resources_name_no_artifact_and_bad_ones_are_refused() {
        let body =
            br#"{"type":"REPLICATION","event_data":{"replication":{"policy_creator":"admin"}}}"#;
        let e = one(Format::Harbor, body);
        assert_eq!(e.kind, "harbor.replication");
        assert_eq!(e.delivery_id, hash(body));
        assert_eq!(e.subject, Subject::default());
        let empty = br#"{"type":"PUSH_ARTIFACT","event_data":{"resources":[],"repository":{"name":"a","namespace":"p"}}}"#;
        let e = one(Format::Harbor, empty);
        assert_eq!(
            (e.subject.image.as_deref(), e.subject.tag.as_deref()),
            (Some("a"), None)
        );
        assert_eq!(e.payload["event_data"]["resources"], serde_json::json!([]));
        for bad in [
            &br#"{"event_data":{}}"#[..],
            br#"{"type":"PUSH_ARTIFACT"}"#,
            br#"{"type":"PUSH_ARTIFACT","event_data":{"resources":"x"}}"#,
            br#"{"specversion":"1.0","source":"/p","type":"t"}"#,
            b"[]",
        ] {
            let err = Normalizer::Harbor
                .normalize("h", Verified::trusted_local_file(bad), &Vec::new(), 0)
                .unwrap_err();
            assert!(matches!(err, NormalizeError::Shape(..)), "{err}");
        }
    }

    #[test]
    fn quay_repo_push_makes_one_event_per_tag() {
        let body = fixture("quay-repo-push.json");
        let events = normalize(Format::Quay, &body, &[]);
        assert_eq!(events.len(), 2);
        for (e, tag) in events.iter().zip(["2.0.0", "latest"]) {
            assert_eq!(e.kind, "quay.repo_push");
            assert_eq!(e.delivery_id, format!("{}#{tag}", hash(&body)));
            assert_eq!(
                e.subject,
                subject([
                    Some("team-a"),
                    Some("web"),
                    Some(tag),
                    None,
                    None,
                    None,
                    None
                ])
            );
            assert_eq!(e.payload["updated_tags"], serde_json::json!([tag]));
            assert_eq!(e.payload["docker_url"], "quay.example.com/team-a/web");
        }
    }

    #[test]
    fn quay_updated_tags_may_be_a_map_of_tag_to_image_id() {
        let body = br#"{"name":"web","namespace":"team-a","updated_tags":{"2.0.0":"b1c2","latest":"b1c2"}}"#;
        let events = normalize(Format::Quay, body, &[]);
        let seen: Vec<_> = events
            .iter()
            .map(|e| {
                (
                    e.subject.tag.as_deref(),
                    e.delivery_id.clone(),
                    e.payload["updated_tags"].clone(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (
                    Some("2.0.0"),
                    format!("{}#2.0.0", hash(body)),
                    serde_json::json!({"2.0.0": "b1c2"})
                ),
                (
                    Some("latest"),
                    format!("{}#latest", hash(body)),
                    serde_json::json!({"latest": "b1c2"})
                ),
            ]
        );
        for bad in [
            &br#"{"name":"web","namespace":"team-a"}"#[..],
            br#"{"name":"web","updated_tags":[]}"#,
            br#"{"name":"web","updated_tags":{}}"#,
            br#"{"name":"web","updated_tags":"latest"}"#,
            br#"{"name":"web","updated_tags":["1",{"x":1}]}"#,
        ] {
            let err = Normalizer::Quay
                .normalize("q", Verified::trusted_local_file(bad), &Vec::new(), 0)
                .unwrap_err();
            assert!(matches!(err, NormalizeError::Shape(..)), "{err}");
        }
    }

    #[test]
    fn dockerhub_push() {
        let body = fixture("dockerhub-push.json");
        let e = one(Format::Dockerhub, &body);
        assert_eq!(e.kind, "dockerhub.push");
        assert_eq!(e.delivery_id, hash(&body));
        assert_eq!(
            e.subject,
            subject([
                Some("acme"),
                Some("worker"),
                Some("3.1.0"),
                None,
                None,
                None,
                None
            ])
        );
        for bad in [
            &br#"{"repository":{"name":"w"}}"#[..],
            br#"{"push_data":{"tag":"1"}}"#,
        ] {
            let err = Normalizer::Dockerhub
                .normalize("d", Verified::trusted_local_file(bad), &Vec::new(), 0)
                .unwrap_err();
            assert!(
                matches!(err, NormalizeError::Shape("a Docker Hub push", _)),
                "{err}"
            );
        }
    }

    #[test]
    fn acr_push_is_read_like_a_registry_event() {
        let e = one(Format::Acr, &fixture("acr-push.json"));
        assert_eq!(e.kind, "acr.push");
        assert_eq!(e.delivery_id, "cb8c3971-9adc-488b-a1b2-43cbb4974ff5");
        assert_eq!(
            e.subject,
            subject([
                Some("team-a"),
                Some("cache"),
                Some("5.0.0"),
                Some("sha256:80f0d5c8786bb9e621a45ece0db56d11cdc624ad20da9fe62e9d25490f331d7d"),
                None,
                None,
                None
            ])
        );
        assert_eq!(e.payload["request"]["host"], "myregistry.azurecr.io");
        let e = one(
            Format::Acr,
            br#"{"id":"p","action":"delete","target":{"repository":"cache","digest":"sha256:1"}}"#,
        );
        assert_eq!(
            (
                e.kind.as_str(),
                e.subject.repo.as_deref(),
                e.subject.image.as_deref()
            ),
            ("acr.delete", Some(""), Some("cache"))
        );
        let err = Normalizer::Acr
            .normalize(
                "a",
                Verified::trusted_local_file(br#"{"events":[]}"#),
                &Vec::new(),
                0,
            )
            .unwrap_err();
        assert_eq!(
            err,
            NormalizeError::Shape("an ACR event", "it has no `action`".into())
        );
    }

    fn cloudevents(body: &[u8], headers: &[(&str, &str)]) -> Result<Vec<Event>, NormalizeError> {
        let src = source(
            Format::Cloudevents,
            &[
                (Field::Repo, "/repository/namespace"),
                (Field::Image, "/repository/name"),
                (Field::Tag, "/resources/0/tag"),
                (Field::Digest, "/resources/0/digest"),
            ],
        );
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Normalizer::new(&src).normalize("ce", Verified::trusted_local_file(body), &headers, 0)
    }

    #[test]
    fn cloudevents_structured_mode() {
        let body = fixture("harbor-push-artifact-cloudevents.json");
        let events =
            cloudevents(&body, &[("Content-Type", "application/cloudevents+json")]).unwrap();
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(e.kind, "harbor.artifact.pushed");
        assert_eq!(
            e.delivery_id,
            "/projects/3/webhook/policies/7 4b1f7c0e-2f2d-4c43-9f3e-7d2a0c5e9b11"
        );
        assert_eq!(
            e.subject,
            subject([
                Some("team-a"),
                Some("api"),
                Some("1.4.3"),
                Some(HARBOR_DIGEST),
                None,
                None,
                None
            ])
        );
        assert_eq!(e.payload["operator"], "robot$ci");
    }

    #[test]
    fn cloudevents_binary_mode_becomes_the_structured_form() {
        let data = br#"{"repository":{"name":"api","namespace":"team-a"},"resources":[{"tag":"2.0.0","digest":"sha256:2"}]}"#;
        let headers = [
            ("Content-Type", "application/json"),
            ("ce-specversion", "1.0"),
            ("ce-id", "42"),
            ("ce-source", "https://ci.example/pipelines/7"),
            ("ce-type", "dev.ci.tests.passed"),
            ("ce-time", "2026-11-29T08:00:00Z"),
        ];
        let e = cloudevents(data, &headers).unwrap().remove(0);
        assert_eq!(e.kind, "dev.ci.tests.passed");
        assert_eq!(e.delivery_id, "https://ci.example/pipelines/7 42");
        assert_eq!(
            e.subject,
            subject([
                Some("team-a"),
                Some("api"),
                Some("2.0.0"),
                Some("sha256:2"),
                None,
                None,
                None
            ])
        );
        assert_eq!(
            e.payload,
            serde_json::json!({
                "specversion": "1.0", "id": "42", "source": "https://ci.example/pipelines/7",
                "type": "dev.ci.tests.passed", "time": "2026-11-29T08:00:00Z",
                "datacontenttype": "application/json",
                "data": serde_json::from_slice::<Value>(data).unwrap(),
            })
        );
        // A structured content type wins over stray `ce-` headers.
        let structured =
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"tag":"x"}}"#;
        let e = cloudevents(
            structured,
            &[
                (
                    "content-type",
                    "application/cloudevents+json; charset=utf-8",
                ),
                ("ce-specversion", "1.0"),
            ],
        )
        .unwrap()
        .remove(0);
        assert_eq!((e.kind.as_str(), e.delivery_id.as_str()), ("t", "/s 1"));
    }

    #[test]
    fn cloudevents_need_version_1_0_and_their_required_attributes() {
        for (body, headers, why) in [
            (&br#"{"event":"x"}"#[..], &[][..], "no `specversion`"),
            (
                br#"{"specversion":"0.3","id":"1","source":"/s","type":"t"}"#,
                &[],
                "not `1.0`",
            ),
            (
                br#"{"specversion":"1.0","source":"/s","type":"t"}"#,
                &[],
                "no `id` attribute",
            ),
            (
                br#"{"specversion":"1.0","id":"1","type":"t"}"#,
                &[],
                "no `source` attribute",
            ),
            (
                br#"{"tag":"1"}"#,
                &[
                    ("ce-specversion", "1.0"),
                    ("ce-id", "1"),
                    ("ce-source", "/s"),
                ],
                "no `type` attribute",
            ),
        ] {
            let err = cloudevents(body, headers).unwrap_err();
            assert!(
                matches!(&err, NormalizeError::Shape(_, m) if m.contains(why)),
                "{err}"
            );
        }
    }

    #[test]
    fn long_delivery_ids_are_stored_as_their_hash() {
        let source = format!("/{}", "s".repeat(300));
        let body = format!(r#"{{"specversion":"1.0","id":"1","source":"{source}","type":"t"}}"#);
        let e = cloudevents(body.as_bytes(), &[]).unwrap().remove(0);
        assert_eq!(e.delivery_id, hash(format!("{source} 1").as_bytes()));
    }

    #[test]
    fn artifactory_data_may_be_a_json_string() {
        let object = fixture("artifactory-docker-pushed.json");
        let parsed: Value = serde_json::from_slice(&object).unwrap();
        let mut stringly = parsed.clone();
        stringly["data"] = Value::String(parsed["data"].to_string());
        let body = serde_json::to_vec(&stringly).unwrap();
        let (a, b) = (
            one(Format::Artifactory, &object),
            one(Format::Artifactory, &body),
        );
        assert_eq!((a.kind, a.subject), (b.kind, b.subject));
        assert_eq!(b.payload, parsed);
        assert_eq!(b.delivery_id, hash(&body));
        let bad = br#"{"domain":"docker","event_type":"pushed","data":"{not json"}"#;
        let err = Normalizer::Artifactory
            .normalize("a", Verified::trusted_local_file(bad), &Vec::new(), 0)
            .unwrap_err();
        assert!(
            matches!(&err, NormalizeError::Shape(_, m) if m.contains("does not hold JSON")),
            "{err}"
        );
    }

    #[test]
    fn a_body_becomes_at_most_max_events_and_repeats_itself_within_bounds() {
        let tags = |n: usize| {
            (0..n)
                .map(|i| format!("\"{i}\""))
                .collect::<Vec<_>>()
                .join(",")
        };
        let at_limit = format!(
            r#"{{"name":"w","namespace":"n","updated_tags":[{}]}}"#,
            tags(MAX_EVENTS)
        );
        assert_eq!(
            normalize(Format::Quay, at_limit.as_bytes(), &[]).len(),
            MAX_EVENTS
        );
        let over = format!(
            r#"{{"name":"w","updated_tags":[{}]}}"#,
            tags(MAX_EVENTS + 1)
        );
        let err = Normalizer::Quay
            .normalize(
                "q",
                Verified::trusted_local_file(over.as_bytes()),
                &Vec::new(),
                0,
            )
            .unwrap_err();
        assert_eq!(
            err,
            NormalizeError::TooManyEvents {
                count: MAX_EVENTS + 1,
                list: "updated_tags"
            }
        );
        let envelope = format!(
            r#"{{"events":[{}]}}"#,
            vec![r#"{"action":"pull","target":{}}"#; MAX_EVENTS + 1].join(",")
        );
        let err = Normalizer::Registry
            .normalize(
                "r",
                Verified::trusted_local_file(envelope.as_bytes()),
                &Vec::new(),
                0,
            )
            .unwrap_err();
        assert!(
            matches!(err, NormalizeError::TooManyEvents { list: "events", .. }),
            "{err}"
        );
        // Two resources sharing a 5 MB description would store 10 MB.
        let padding = "x".repeat(5 << 20);
        let big = format!(
            r#"{{"type":"PUSH_ARTIFACT","event_data":{{"resources":[{{"tag":"1"}},{{"tag":"2"}}],"repository":{{"description":"{padding}"}}}}}}"#
        );
        let err = Normalizer::Harbor
            .normalize(
                "h",
                Verified::trusted_local_file(big.as_bytes()),
                &Vec::new(),
                0,
            )
            .unwrap_err();
        assert!(
            matches!(err, NormalizeError::TooMuchRepeated { count: 2, .. }),
            "{err}"
        );
    }

    /// JSON built from the keys and values the formats look for, so that most bodies
    /// get past "not an event of this format" and into the reading itself.
    fn near_events() -> impl Strategy<Value = Value> {
        let keys = prop::sample::select(vec![
            "type",
            "event_data",
            "resources",
            "repository",
            "name",
            "namespace",
            "tag",
            "digest",
            "specversion",
            "id",
            "source",
            "data",
            "updated_tags",
            "push_data",
            "action",
            "target",
            "events",
            "domain",
            "event_type",
            "path",
            "1.0",
        ]);
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-1i64..3).prop_map(Value::from),
            prop::sample::select(vec![
                "1.0",
                "PUSH_ARTIFACT",
                "push",
                "a/b",
                "",
                "sha256:1",
                "x"
            ])
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(5, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(keys.clone(), inner, 0..6).prop_map(|m| {
                    Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
                }),
            ]
        })
    }

    proptest! {
        #[test]
        fn every_format_reads_near_events_without_panicking(
            body in near_events(),
            headers in prop::collection::vec((
                prop::sample::select(vec!["ce-specversion", "ce-id", "ce-source", "ce-type", "Content-Type"]),
                prop::sample::select(vec!["1.0", "x", "application/cloudevents+json", "application/json"]),
            ), 0..5),
        ) {
            let bytes = serde_json::to_vec(&body).unwrap();
            let headers: Vec<(String, String)> =
                headers.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            for format in [
                Format::Generic, Format::Github, Format::Artifactory, Format::Registry,
                Format::Harbor, Format::Quay, Format::Dockerhub, Format::Acr, Format::Cloudevents,
            ] {
                let read = Normalizer::new(&source(format, &[]))
                    .normalize("p", Verified::trusted_local_file(&bytes), &headers, 0);
                if let Ok(events) = read {
                    prop_assert!(!events.is_empty(), "{format:?}");
                    prop_assert!(events.iter().all(|e| e.delivery_id.len() <= MAX_DELIVERY_ID));
                }
            }
        }
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
