//! Promotion rules: compiled once from the config into matchers and templates, then
//! asked, per event, which promotions to plan.

mod action;
mod graph;
mod index;
mod matcher;
mod template;

use std::collections::HashSet;
use std::sync::Arc;

use crate::config::{Config, Field, GateConfig, OneOrMany, Problem, RawMatch, RetryPolicy};
use crate::domain::approval::ApprovalPolicy;
use crate::domain::destinations::Destinations;
use crate::domain::gate::{self, Evidence, GateStart};
use crate::domain::protection::{self, Guarded, Protection};
use crate::domain::{Action, Event, JobError, JobErrorCode, Millis};
use crate::supply::{SignatureCondition, SigningKey};
use action::{ActionTemplate, Output};
use index::{Key, Literals, RuleIndex};
pub use matcher::{Captures, Matcher};

/// All rules, in config order, and the index that finds the few an event can match;
/// likewise every gate condition of every rule.
#[derive(Debug)]
pub struct RuleSet {
    rules: Vec<Rule>,
    index: RuleIndex,
    conditions: Vec<Condition>,
    condition_index: RuleIndex,
    /// The protections every planned job is checked against (SPEC §9).
    protections: Vec<Protection>,
}

/// Whether a rule's jobs promote where a protection covers (`gantry check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// Its destination is written out and covered.
    Covered,
    /// Its destination is a template: the jobs whose rendered destination is covered
    /// are protected.
    Templated,
}

/// What an event must be for a rule's trigger, or a gate's condition, to match it:
/// one kind of matcher for both (SPEC §9: "the same matchers").
#[derive(Debug)]
struct EventMatch {
    /// Exact source names; `None` means any source.
    sources: Option<Vec<String>>,
    event: Option<Matcher>,
    fields: Vec<(Field, Matcher)>,
    when: Vec<(String, Matcher)>,
    /// JSON pointer into the claims an `oidc` source verified → matcher.
    claims: Vec<(String, Matcher)>,
    /// Subject fields an event must carry (for a rule's action to apply, for a
    /// condition to be correlated).
    needs: Vec<Field>,
    literals: Literals,
}

/// One condition of a rule's gate, compiled.
#[derive(Debug)]
struct Condition {
    /// The rule's position in [`RuleSet::rules`].
    rule: usize,
    name: String,
    block: bool,
    matcher: EventMatch,
}

/// A rule's gate, compiled: what its jobs correlate on and wait for.
#[derive(Debug)]
struct Gate {
    correlate: Vec<Field>,
    within_ms: Millis,
    soak_ms: Option<Millis>,
    /// The names of the conditions a job waits for (not the blocking ones).
    required: Vec<String>,
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
    trigger: EventMatch,
    action: ActionTemplate,
    gate: Option<Gate>,
    /// The gate's signature conditions, checked by the worker before each attempt's
    /// effect (SPEC §15).
    pub signatures: Vec<SignatureCondition>,
    /// The rule's own attestation key (protections may add theirs).
    pub attest: Option<Arc<SigningKey>>,
    dry_run: bool,
    /// The rule as loaded, for `GET /api/v1/rules`.
    pub spec: serde_json::Value,
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

    /// The gate a job of this rule for `event` opens, or why it cannot: the event
    /// lacks a field the gate correlates on (the job fails at once, on the record).
    pub fn gate_for(&self, event: &Event) -> Result<Option<GateStart>, JobError> {
        let Some(g) = &self.gate else {
            return Ok(None);
        };
        let mut correlate = Vec::with_capacity(g.correlate.len());
        for f in &g.correlate {
            match event.subject.get(*f).filter(|v| !v.is_empty()) {
                Some(v) => correlate.push((f.name(), v)),
                None => {
                    return Err(JobError::new(
                        JobErrorCode::GateUncorrelated,
                        format!(
                            "the event has no `{}`, which the rule's gate correlates on",
                            f.name()
                        ),
                    ));
                }
            }
        }
        let required: Vec<&str> = g.required.iter().map(String::as_str).collect();
        Ok(Some(GateStart::new(
            &correlate,
            &required,
            g.within_ms,
            event.received_at,
        )))
    }

    /// How long the rule's jobs soak after their trigger, when its gate says.
    pub fn soak_ms(&self) -> Option<Millis> {
        self.gate.as_ref().and_then(|g| g.soak_ms)
    }
}

impl EventMatch {
    /// Compiles the matchers of a trigger or a condition at `loc`; `None` (and the
    /// problems named) when one does not compile.
    fn compile(
        loc: &str,
        source: Option<&OneOrMany>,
        event: Option<&OneOrMany>,
        m: &RawMatch,
        when_spec: &std::collections::BTreeMap<String, OneOrMany>,
        claims_spec: &std::collections::BTreeMap<String, OneOrMany>,
        problems: &mut Vec<Problem>,
    ) -> Option<EventMatch> {
        let errors_before = problems.len();
        let mut pattern = |key: String, patterns: &[String]| {
            Matcher::compile(patterns)
                .map_err(|e| problems.push(Problem::error(format!("{loc}.{key}"), e)))
                .ok()
        };
        let event_matcher = event.and_then(|e| pattern("event".into(), e.patterns()));
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
        let when = pointer_matchers(&format!("{loc}.when"), when_spec, problems);
        let claims = pointer_matchers(&format!("{loc}.claims"), claims_spec, problems);
        if problems.len() > errors_before {
            return None;
        }
        let key = |spec: &Option<OneOrMany>| {
            spec.as_ref()
                .map_or(Key::Any, |p| Key::of_patterns(p.patterns()))
        };
        let literals = Literals {
            sources: source.map_or(Key::Any, |s| Key::exact(s.patterns())),
            kinds: event.map_or(Key::Any, |p| Key::of_patterns(p.patterns())),
            repos: key(&m.repo),
            images: key(&m.image),
        };
        Some(EventMatch {
            sources: source.map(|s| s.patterns().to_vec()),
            event: event_matcher,
            fields,
            when,
            claims,
            needs: Vec::new(),
            literals,
        })
    }

    /// The capture group names its patterns define, for the action's templates.
    fn group_names(&self) -> HashSet<Arc<str>> {
        self.fields
            .iter()
            .map(|(_, m)| m)
            .chain(self.when.iter().map(|(_, m)| m))
            .chain(self.claims.iter().map(|(_, m)| m))
            .flat_map(Matcher::group_names)
            .collect()
    }
}

impl RuleSet {
    /// Compiles every rule; the problems name the rule and the key at fault.
    pub fn compile(config: &Config) -> Result<RuleSet, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut conditions = Vec::new();
        let mut rules = Vec::new();
        for rc in &config.rules {
            let loc = format!("rules[{}]", rc.raw.name);
            let r = &rc.raw;
            let errors_before = problems.len();
            let trigger = EventMatch::compile(
                &loc,
                r.source.as_ref(),
                r.event.as_ref(),
                &r.matches,
                &r.when,
                &r.claims,
                &mut problems,
            );
            let groups = trigger
                .as_ref()
                .map(EventMatch::group_names)
                .unwrap_or_default();
            let action = ActionTemplate::compile(&loc, &r.action, &groups, &mut problems);
            let gate_conditions = match (&r.gate, &rc.gate) {
                (Some(raw), Some(checked)) => {
                    compile_conditions(&loc, rules.len(), &raw.require, checked, &mut problems)
                }
                _ => Vec::new(),
            };
            let (Some(mut trigger), Some(action)) = (trigger, action) else {
                continue;
            };
            if problems.len() > errors_before {
                continue;
            }
            let target_dry_run = config
                .targets
                .iter()
                .any(|t| t.name == r.action.target && t.dry_run);
            trigger.needs = action.needs();
            let dry_run = r.dry_run || target_dry_run;
            let spec = describe(r, &rc.retry, dry_run, &trigger.needs);
            let gate = rc.gate.as_ref().map(|g| Gate {
                correlate: g.correlate.clone(),
                within_ms: millis(g.within),
                soak_ms: g.soak.map(millis),
                required: gate_conditions
                    .iter()
                    .filter(|c| !c.block)
                    .map(|c| c.name.clone())
                    .collect(),
            });
            conditions.extend(gate_conditions);
            rules.push(Rule {
                spec,
                name: r.name.clone(),
                target: r.action.target.clone(),
                retry: rc.retry,
                approval: rc.approval.clone(),
                initiator: r.initiator.clone(),
                trigger,
                action,
                gate,
                signatures: rc.signatures.clone(),
                attest: rc.attest.clone(),
                dry_run,
            });
        }
        if problems.is_empty() {
            let index = RuleIndex::build(rules.iter().map(|r| r.trigger.literals.clone()));
            let condition_index =
                RuleIndex::build(conditions.iter().map(|c| c.matcher.literals.clone()));
            Ok(RuleSet {
                rules,
                index,
                conditions,
                condition_index,
                protections: config.protections.clone(),
            })
        } else {
            Err(problems)
        }
    }

    /// The config's protections, for the worker's check before each attempt.
    pub fn protections(&self) -> &[Protection] {
        &self.protections
    }

    /// Whether a promotion by `rule` to `target`'s `repo` is attested (asked before
    /// every promotion attempt: no keys are collected for it).
    pub fn attests(&self, rule: &str, target: &str, repo: Option<&str>) -> bool {
        self.get(rule).is_some_and(|r| r.attest.is_some())
            || protection::attestors(&self.protections, target, repo)
                .next()
                .is_some()
    }

    /// Every key a promotion by `rule` to `target`'s `repo` is attested with: the
    /// rule's, then the covering protections' (each key once).
    pub fn attestors<'a>(
        &'a self,
        rule: &str,
        target: &'a str,
        repo: Option<&'a str>,
    ) -> Vec<&'a Arc<SigningKey>> {
        let own = self.get(rule).and_then(|r| r.attest.as_ref());
        let mut keys: Vec<&Arc<SigningKey>> = Vec::new();
        for k in own
            .into_iter()
            .chain(protection::attestors(&self.protections, target, repo))
        {
            if !keys.iter().any(|have| Arc::ptr_eq(have, k)) {
                keys.push(k);
            }
        }
        keys
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn get(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// The approval and soak a job of `rule` with `action` needs: its rule's, and
    /// those of every protection covering its destination.
    pub fn guard(&self, rule: &Rule, action: Option<&Action>) -> Guarded {
        let repo = action.and_then(|a| a.output_subject().repo);
        protection::guard(
            &self.protections,
            &rule.target,
            repo.as_deref(),
            rule.approval.clone(),
            rule.soak_ms(),
        )
    }

    /// For each protection, the rules whose jobs it covers, in rule order.
    pub fn coverage(&self) -> Vec<(&str, Vec<(&str, Coverage)>)> {
        self.protections
            .iter()
            .map(|p| {
                let covered = self
                    .rules
                    .iter()
                    .filter_map(|r| {
                        let how = match r.action.output(Field::Repo) {
                            Output::Literal(repo) => p
                                .scope
                                .covers(&r.target, Some(repo))
                                .then_some(Coverage::Covered),
                            Output::Absent => {
                                p.scope.covers(&r.target, None).then_some(Coverage::Covered)
                            }
                            Output::Unknown => {
                                let anywhere = Destinations {
                                    to_repos: None,
                                    targets: p.scope.targets.clone(),
                                };
                                anywhere
                                    .covers(&r.target, None)
                                    .then_some(Coverage::Templated)
                            }
                        }?;
                        Some((r.name.as_str(), how))
                    })
                    .collect();
                (p.name.as_str(), covered)
            })
            .collect()
    }

    /// The evidence `event` is for the gates of the rules: one piece per condition it
    /// matches and carries the correlated fields of.
    pub fn evidence(&self, event: &Event) -> Vec<Evidence> {
        if self.conditions.is_empty() {
            return Vec::new();
        }
        let mut candidates = Vec::new();
        self.condition_index.candidates(event, &mut candidates);
        let mut captures = Captures::new();
        candidates
            .into_iter()
            .filter_map(|i| {
                let c = &self.conditions[i];
                captures.clear();
                if !c.matcher.matches(event, &mut captures) {
                    return None;
                }
                let rule = &self.rules[c.rule];
                let g = rule.gate.as_ref()?;
                // `needs` holds the correlated fields: all there, as `matches` checked.
                let values = g.correlate.iter().filter_map(|f| event.subject.get(*f));
                Some(Evidence {
                    rule: rule.name.clone(),
                    condition: c.name.clone(),
                    key: gate::key(values),
                    block: c.block,
                    within_ms: g.within_ms,
                })
            })
            .collect()
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
                rule.trigger.matches(event, &mut captures).then(|| Planned {
                    rule,
                    action: rule.action.render(event, &captures, rule.dry_run),
                })
            })
            .collect()
    }
}

impl EventMatch {
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
            && self
                .when
                .iter()
                .all(|(pointer, m)| m.matches_json(event.payload.pointer(pointer), captures))
            // An event without verified claims matches no `claims` matcher.
            && self.claims.iter().all(|(pointer, m)| {
                m.matches_json(
                    event.claims.as_ref().and_then(|c| c.pointer(pointer)),
                    captures,
                )
            })
    }
}

/// `when` and `claims`: JSON pointer → matcher, each compiled, the problems named at
/// `loc.{pointer}`.
fn pointer_matchers(
    loc: &str,
    specs: &std::collections::BTreeMap<String, OneOrMany>,
    problems: &mut Vec<Problem>,
) -> Vec<(String, Matcher)> {
    let mut compiled = Vec::new();
    for (pointer, spec) in specs {
        if !pointer.starts_with('/') {
            problems.push(Problem::error(
                format!("{loc}.{pointer}"),
                "is not a JSON pointer (it must start with `/`)",
            ));
            continue;
        }
        match Matcher::compile(spec.patterns()) {
            Ok(matcher) => compiled.push((pointer.clone(), matcher)),
            Err(e) => problems.push(Problem::error(format!("{loc}.{pointer}"), e)),
        }
    }
    compiled
}

/// Compiles the conditions of the gate of rule number `rule`; a condition whose
/// matchers do not compile is left out (and the problem named).
fn compile_conditions(
    loc: &str,
    rule: usize,
    require: &[crate::config::RawCondition],
    gate: &GateConfig,
    problems: &mut Vec<Problem>,
) -> Vec<Condition> {
    require
        .iter()
        // Signature conditions are met by signatures the worker reads (SPEC §15).
        .filter(|c| c.signature.is_none())
        .filter_map(|c| {
            let at = format!("{loc}.gate.require[{}]", c.name);
            let mut matcher = EventMatch::compile(
                &at,
                c.source.as_ref(),
                c.event.as_ref(),
                &c.matches,
                &c.when,
                &c.claims,
                problems,
            )?;
            matcher.needs = gate.correlate.clone();
            Some(Condition {
                rule,
                name: c.name.clone(),
                block: c.block,
                matcher,
            })
        })
        .collect()
}

fn millis(d: std::time::Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
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
