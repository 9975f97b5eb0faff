//! Action templates: `{{tag}}`, `{{app}}` (a named regex group), `{{payload./a/b}}`.
//!
//! Parsed once at load, where an unknown variable is a config error; rendering fails
//! only when the event lacks a value the template needs, which fails that job.

use std::collections::HashSet;
use std::sync::Arc;

use super::matcher::Captures;
use crate::config::Field;
use crate::domain::Event;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Field(Field),
    Type,
    Source,
    Group(Arc<str>),
    Payload(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses `text`; `groups` are the named groups the rule's regexes can capture.
    pub fn parse(text: &str, groups: &HashSet<Arc<str>>) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Literal(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| format!("unclosed `{{{{` in `{text}`"))?;
            parts.push(variable(after[..end].trim(), groups)?);
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// The subject fields the template reads.
    pub fn fields(&self) -> impl Iterator<Item = Field> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(f) => Some(*f),
            _ => None,
        })
    }

    /// The text, when the template has no variable at all.
    pub fn literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Literal(s)] => Some(s),
            _ => None,
        }
    }

    /// A template that renders one subject field, used for omitted action fields.
    pub fn field(field: Field) -> Template {
        Template {
            parts: vec![Part::Field(field)],
        }
    }

    pub fn render(&self, event: &Event, captures: &Captures) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Type => out.push_str(&event.kind),
                Part::Source => out.push_str(&event.source),
                Part::Field(f) => out.push_str(field_value(event, *f)?),
                Part::Group(name) => out.push_str(
                    captures
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, v)| v.as_str())
                        .ok_or_else(|| format!("the group `{name}` captured nothing"))?,
                ),
                Part::Payload(pointer) => match event.payload.pointer(pointer) {
                    Some(serde_json::Value::String(s)) => out.push_str(s),
                    Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                        out.push_str(&v.to_string())
                    }
                    _ => return Err(format!("the payload has no text at `{pointer}`")),
                },
            }
        }
        Ok(out)
    }
}

/// A subject field's value, or why the event cannot be used.
pub fn field_value(event: &Event, field: Field) -> Result<&str, String> {
    event
        .subject
        .get(field)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("the event has no {}", field.name()))
}

fn variable(name: &str, groups: &HashSet<Arc<str>>) -> Result<Part, String> {
    if let Some(pointer) = name.strip_prefix("payload.") {
        if !pointer.starts_with('/') {
            return Err(format!(
                "`{{{{{name}}}}}`: a payload variable is `payload./json/pointer`"
            ));
        }
        return Ok(Part::Payload(pointer.to_string()));
    }
    if let Some(field) = Field::from_name(name) {
        return Ok(Part::Field(field));
    }
    match name {
        "type" => Ok(Part::Type),
        "source" => Ok(Part::Source),
        _ => groups
            .get(name)
            .map(|g| Part::Group(g.clone()))
            .ok_or_else(|| format!("unknown variable `{{{{{name}}}}}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Subject;

    fn event() -> Event {
        Event {
            id: "e".into(),
            source: "ci".into(),
            kind: "test-passed".into(),
            delivery_id: "d".into(),
            received_at: 0,
            subject: Subject {
                tag: Some("1.4.2".into()),
                ..Subject::default()
            },
            payload: serde_json::json!({"build": {"n": 7}}),
            parent_job_id: None,
            chain_depth: 0,
            claims: None,
        }
    }

    #[test]
    fn renders_fields_groups_and_payload() {
        let groups: HashSet<Arc<str>> = [Arc::from("app")].into();
        let t =
            Template::parse("{{ app }}-{{tag}}+{{payload./build/n}}.{{type}}", &groups).unwrap();
        let caps = vec![(Arc::from("app"), "api".to_string())];
        assert_eq!(
            t.render(&event(), &caps).unwrap(),
            "api-1.4.2+7.test-passed"
        );
    }

    #[test]
    fn unknown_variables_fail_at_parse_and_missing_values_at_render() {
        let e = Template::parse("{{nope}}", &HashSet::new()).unwrap_err();
        assert_eq!(e, "unknown variable `{{nope}}`");
        assert!(Template::parse("{{tag", &HashSet::new()).is_err());
        let t = Template::parse("{{digest}}", &HashSet::new()).unwrap();
        assert_eq!(
            t.render(&event(), &Vec::new()).unwrap_err(),
            "the event has no digest"
        );
    }
}
