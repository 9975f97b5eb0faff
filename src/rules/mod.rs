//! Promotion rules: compiled once from the config into matchers and templates, then
//! asked, per event, which promotions to plan.

mod action;
mod graph;
mod index;
mod matcher;
mod template;

use std::collections::HashSet;
use std::sync::Arc;

use crate::config::{Config, Field, Problem, RetryPolicy};
use crate::domain::approval::ApprovalPolicy;
use crate::domain::{Action, Event, JobError};
use action::ActionTemplate;
use index::{Key, Literals, RuleIndex};
pub use matcher::{Captures, Matcher};

/// All rules, in config order, and the index that finds the few an event can match.
#[derive(Debug)]
pub struct RuleSet {
    rules: Vec<Rule>,
    index: RuleIndex,
}

#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub target: String,
    pub retry: RetryPolicy,
    /// The approval each job of the rule needs before it runs.
    pub approval: Option<ApprovalPolicy>,
    /// JSON pointer to who set a trigger event off (its jobs' initiator).
    initiator: Option<String>,
    /// Exact source names; `None` means any source.
    sources: Option<Vec<String>>,
    event: Option<Matcher>,
    fields: Vec<(Field, Matcher)>,
    when: Vec<(String, Matcher)>,
    action: ActionTemplate,
    /// Subject fields an event must carry for the action to apply.
    needs: Vec<Field>,
    dry_run: bool,
    /// The rule as loaded, for `GET /api/v1/rules`.
    pub spec: serde_json::Value,
    literals: Literals,
}

/// A promotion one rule asks for one event. `action` is an error when the templates
/// could not be rendered for this event: the job is recorded as failed.
#[derive(Debug)]
pub struct Planned<'a> {
    pub rule: &'a Rule,
    pub action: Result<Action, JobError>,
}

impl Rule {
    /// Who set `event` off, by the rule's `initiator` pointer: the name an approver
    /// must not have (SPEC §9 separation of duties). Only a string or a number names
    /// someone.
    pub fn initiator_of(&self, event: &Event) -> Option<String> {
        match event.payload.pointer(self.initiator.as_deref()?)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

impl RuleSet {
    /// Compiles every rule; the problems name the rule and the key at fault.
    pub fn compile(config: &Config) -> Result<RuleSet, Vec<Problem>> {
        let mut problems = Vec::new();
        let rules: Vec<Rule> = config
            .rules
            .iter()
            .filter_map(|rc| {
                let loc = format!("rules[{}]", rc.raw.name);
                let errors_before = problems.len();
                let mut pattern = |key: String, patterns: &[String]| {
                    Matcher::compile(patterns)
                        .map_err(|e| problems.push(Problem::error(format!("{loc}.{key}"), e)))
                        .ok()
                };
                let r = &rc.raw;
                let event = r
                    .event
                    .as_ref()
                    .and_then(|e| pattern("event".into(), e.patterns()));
                let m = &r.matches;
                let fields: Vec<(Field, Matcher)> = [
                    (Field::Repo, &m.repo),
                    (Field::Image, &m.image),
                    (Field::Tag, &m.tag),
                    (Field::Digest, &m.digest),
                    (Field::Path, &m.path),
                    (Field::BuildName, &m.build_name),
                    (Field::BuildNumber, &m.build_number),
                ]
                .into_iter()
                .filter_map(|(f, spec)| {
                    let spec = spec.as_ref()?;
                    Some((f, pattern(format!("match.{}", f.name()), spec.patterns())?))
                })
                .collect();
                let mut when = Vec::new();
                for (pointer, spec) in &r.when {
                    if !pointer.starts_with('/') {
                        problems.push(Problem::error(
                            format!("{loc}.when.{pointer}"),
                            "is not a JSON pointer (it must start with `/`)",
                        ));
                        continue;
                    }
                    match Matcher::compile(spec.patterns()) {
                        Ok(matcher) => when.push((pointer.clone(), matcher)),
                        Err(e) => problems.push(Problem::error(format!("{loc}.when.{pointer}"), e)),
                    }
                }
                let groups: HashSet<Arc<str>> = fields
                    .iter()
                    .map(|(_, m)| m)
                    .chain(when.iter().map(|(_, m)| m))
                    .flat_map(Matcher::group_names)
                    .collect();
                let action = ActionTemplate::compile(&loc, &r.action, &groups, &mut problems);
                if problems.len() > errors_before {
                    return None;
                }
                let action = action?;
                let target_dry_run = config
                    .targets
                    .iter()
                    .any(|t| t.name == r.action.target && t.dry_run);
                let needs = action.needs();
                let dry_run = r.dry_run || target_dry_run;
                let spec = describe(r, &rc.retry, dry_run, &needs);
                let key = |spec: &Option<crate::config::OneOrMany>| {
                    spec.as_ref()
                        .map_or(Key::Any, |p| Key::of_patterns(p.patterns()))
                };
                let literals = Literals {
                    sources: r
                        .source
                        .as_ref()
                        .map_or(Key::Any, |s| Key::exact(s.patterns())),
                    kinds: key(&r.event),
                    repos: key(&r.matches.repo),
                    images: key(&r.matches.image),
                };
                Some(Rule {
                    spec,
                    literals,
                    name: r.name.clone(),
                    target: r.action.target.clone(),
                    retry: rc.retry,
                    approval: rc.approval.clone(),
                    initiator: r.initiator.clone(),
                    sources: r.source.as_ref().map(|s| s.patterns().to_vec()),
                    event,
                    fields,
                    when,
                    needs,
                    action,
                    dry_run,
                })
            })
            .collect();
        if problems.is_empty() {
            let index = RuleIndex::build(rules.iter().map(|r| r.literals.clone()));
            Ok(RuleSet { rules, index })
        } else {
            Err(problems)
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn get(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// The promotions the rules ask for this event, in rule order.
    pub fn plan<'a>(&'a self, event: &Event) -> Vec<Planned<'a>> {
        let mut candidates = Vec::new();
        self.index.candidates(event, &mut candidates);
        let mut captures = Captures::new();
        candidates
            .into_iter()
            .filter_map(|i| {
                let rule = &self.rules[i];
                captures.clear();
                rule.matches(event, &mut captures).then(|| Planned {
                    rule,
                    action: rule.action.render(event, &captures, rule.dry_run),
                })
            })
            .collect()
    }
}

impl Rule {
    fn matches(&self, event: &Event, captures: &mut Captures) -> bool {
        let applies = self
            .needs
            .iter()
            .all(|f| event.subject.get(*f).is_some_and(|v| !v.is_empty()));
        if !applies {
            return false;
        }
        if let Some(sources) = &self.sources
            && !sources.contains(&event.source)
        {
            return false;
        }
        if let Some(m) = &self.event
            && !m.matches(&event.kind, captures)
        {
            return false;
        }
        let fields_match = self.fields.iter().all(|(field, m)| {
            event
                .subject
                .get(*field)
                .is_some_and(|v| m.matches(v, captures))
        });
        fields_match
            && self.when.iter().all(|(pointer, m)| {
                match event.payload.pointer(pointer) {
                    Some(serde_json::Value::String(s)) => m.matches(s, captures),
                    Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                        m.matches(&v.to_string(), captures)
                    }
                    // Missing field, null, objects and arrays: no match.
                    _ => false,
                }
            })
    }
}

/// The rule as written, with its retry policy and dry-run flag resolved and unset
/// keys left out.
fn describe(
    raw: &crate::config::RawRule,
    retry: &RetryPolicy,
    dry_run: bool,
    needs: &[Field],
) -> serde_json::Value {
    fn without_nulls(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(map) => map
                .into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
            other => other,
        }
    }
    let mut spec = without_nulls(serde_json::to_value(raw).unwrap_or_default());
    spec["retry"] = serde_json::json!({
        "max_attempts": retry.max_attempts,
        "initial_backoff": humantime::format_duration(retry.initial_backoff).to_string(),
        "max_backoff": humantime::format_duration(retry.max_backoff).to_string(),
    });
    spec["dry_run"] = dry_run.into();
    spec["needs"] = needs.iter().map(|f| f.name()).collect();
    spec
}
