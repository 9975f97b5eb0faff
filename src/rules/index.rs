//! An index over the rules by source, event type and repo, so that matching an
//! event looks at the few rules that can match it instead of all of them.
//!
//! A rule is filed under every literal value it accepts on a dimension (a source
//! name, an event type or repo without glob characters), or under "any" when its
//! pattern there is a glob, a regex, a semver range or a negation. Candidates for an
//! event are the rules filed under its values or under "any" on each of the three
//! dimensions, in rule order; the full matchers then decide.

use std::collections::HashMap;

use crate::domain::Event;

/// One dimension: rules by literal value, and rules that accept any value.
#[derive(Debug)]
struct Level<T> {
    by: HashMap<String, T>,
    any: Option<T>,
}

impl<T: Default> Default for Level<T> {
    fn default() -> Self {
        Level {
            by: HashMap::new(),
            any: None,
        }
    }
}

impl<T: Default> Level<T> {
    /// The slots a rule with these literals (or `None`: any value) is filed in.
    fn slots(&mut self, literals: Option<&[String]>) -> Vec<&mut T> {
        match literals {
            None => vec![self.any.get_or_insert_with(T::default)],
            Some(values) => {
                // Distinct values only; a map gives out one &mut per key.
                let mut keys: Vec<&String> = values.iter().collect();
                keys.sort();
                keys.dedup();
                for k in &keys {
                    self.by.entry((*k).clone()).or_default();
                }
                self.by
                    .iter_mut()
                    .filter(|(k, _)| keys.binary_search(k).is_ok())
                    .map(|(_, v)| v)
                    .collect()
            }
        }
    }

    fn lookup<'a>(&'a self, value: Option<&str>) -> impl Iterator<Item = &'a T> {
        value
            .and_then(|v| self.by.get(v))
            .into_iter()
            .chain(self.any.as_ref())
    }
}

/// The literal values a rule accepts on each dimension (`None`: any).
#[derive(Debug, Clone, Default)]
pub struct Literals {
    pub sources: Option<Vec<String>>,
    pub kinds: Option<Vec<String>>,
    pub repos: Option<Vec<String>>,
}

#[derive(Debug, Default)]
pub struct RuleIndex {
    root: Level<Level<Level<Vec<usize>>>>,
}

impl RuleIndex {
    pub fn build(rules: impl Iterator<Item = Literals>) -> RuleIndex {
        let mut index = RuleIndex::default();
        for (i, lit) in rules.enumerate() {
            for kinds in index.root.slots(lit.sources.as_deref()) {
                for repos in kinds.slots(lit.kinds.as_deref()) {
                    for list in repos.slots(lit.repos.as_deref()) {
                        list.push(i);
                    }
                }
            }
        }
        index
    }

    /// The rules that may match `event`, in rule order, into `out` (cleared first).
    pub fn candidates(&self, event: &Event, out: &mut Vec<usize>) {
        out.clear();
        for kinds in self.root.lookup(Some(&event.source)) {
            for repos in kinds.lookup(Some(&event.kind)) {
                for list in repos.lookup(event.subject.repo.as_deref()) {
                    out.extend_from_slice(list);
                }
            }
        }
        out.sort_unstable();
        out.dedup();
    }
}

/// Whether a pattern list is made of plain literals only (no glob, regex, semver
/// or negation), and if so the literals.
pub fn literals(patterns: &[String]) -> Option<Vec<String>> {
    let plain = |p: &String| {
        !p.starts_with('!')
            && !p.starts_with("re:")
            && !p.starts_with("semver:")
            && !p.contains(['*', '?', '[', ']', '{', '}', '\\'])
    };
    patterns.iter().all(plain).then(|| patterns.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Subject;

    fn event(source: &str, kind: &str, repo: Option<&str>) -> Event {
        Event {
            id: String::new(),
            source: source.into(),
            kind: kind.into(),
            delivery_id: String::new(),
            received_at: 0,
            subject: Subject {
                repo: repo.map(str::to_string),
                ..Subject::default()
            },
            payload: serde_json::Value::Null,
            parent_job_id: None,
            chain_depth: 0,
        }
    }

    fn lit(values: &[&str]) -> Option<Vec<String>> {
        Some(values.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn files_rules_by_literals_and_falls_back_to_any() {
        let index = RuleIndex::build(
            [
                Literals {
                    sources: lit(&["ci"]),
                    kinds: lit(&["test-passed"]),
                    repos: lit(&["dev"]),
                },
                Literals {
                    sources: lit(&["ci", "gh"]),
                    kinds: None,
                    repos: None,
                },
                Literals {
                    sources: None,
                    kinds: lit(&["docker.pushed"]),
                    repos: None,
                },
                Literals {
                    sources: lit(&["ci"]),
                    kinds: lit(&["test-passed"]),
                    repos: lit(&["prod"]),
                },
            ]
            .into_iter(),
        );
        let mut out = Vec::new();
        index.candidates(&event("ci", "test-passed", Some("dev")), &mut out);
        assert_eq!(out, [0, 1]);
        index.candidates(&event("gh", "docker.pushed", None), &mut out);
        assert_eq!(out, [1, 2]);
        index.candidates(&event("other", "x", Some("dev")), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn only_plain_patterns_are_literals() {
        assert_eq!(literals(&["a".into(), "b.c".into()]), lit(&["a", "b.c"]));
        for p in ["a*", "re:^a$", "semver:1", "!a", "{a,b}", "a?"] {
            assert_eq!(literals(&[p.to_string()]), None, "{p}");
        }
    }
}
