//! An index over the rules by source, event type, repo and image, so that matching
//! an event looks at the few rules that can match it instead of all of them.
//!
//! On each dimension a rule is filed under every literal value it accepts (a
//! pattern without glob characters), under the literal prefix of each glob it
//! accepts (`team-a/*` under `team-a/`), or under "any" when a pattern there has no
//! such prefix: a semver range, a negation, a glob starting with a wildcard, a
//! regex not anchored at the start or without literal prefixes, or no pattern at
//! all. An anchored regex is filed under its literal prefixes (`re:^team-a/` under
//! `team-a/`). Candidates for an event are the rules filed under
//! its value, under a prefix of its value, or under "any", on every dimension; the
//! full matchers then decide. The index only narrows: it never decides a match.

use foldhash::HashMap;
use regex_syntax::hir::Look;
use regex_syntax::hir::literal::{ExtractKind, Extractor};

use crate::domain::Event;

/// How a rule constrains one dimension, as far as the index can tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Key {
    /// Any value may match.
    #[default]
    Any,
    /// Only these values, or values starting with these prefixes, may match.
    Values {
        exact: Vec<String>,
        prefixes: Vec<String>,
    },
}

impl Key {
    /// What a list of patterns (`match`, `event`) lets the index file the rule under.
    pub fn of_patterns(patterns: &[String]) -> Key {
        const META: [char; 7] = ['*', '?', '[', ']', '{', '}', '\\'];
        let mut exact = Vec::new();
        let mut prefixes = Vec::new();
        for p in patterns {
            if let Some(re) = p.strip_prefix("re:") {
                match regex_prefixes(re) {
                    Some(found) => prefixes.extend(found),
                    None => return Key::Any,
                }
                continue;
            }
            if p.starts_with('!') || p.starts_with("semver:") {
                return Key::Any;
            }
            match p.find(META) {
                None => exact.push(p.clone()),
                Some(0) => return Key::Any,
                Some(at) => prefixes.push(p[..at].to_string()),
            }
        }
        Key::Values { exact, prefixes }
    }

    /// Exact names only (a rule's `source`).
    pub fn exact(values: &[String]) -> Key {
        Key::Values {
            exact: values.to_vec(),
            prefixes: Vec::new(),
        }
    }
}

/// Non-empty prefixes one of which starts every value `re` matches, when it is
/// anchored at the start and they are few enough to list.
fn regex_prefixes(re: &str) -> Option<Vec<String>> {
    let hir = regex_syntax::Parser::new().parse(re).ok()?;
    if !hir.properties().look_set_prefix().contains(Look::Start) {
        return None;
    }
    let seq = Extractor::new().kind(ExtractKind::Prefix).extract(&hir);
    seq.literals()?
        .iter()
        .map(|lit| {
            std::str::from_utf8(lit.as_bytes())
                .ok()
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        })
        .collect()
}

/// One dimension: rules by literal value, by literal prefix, and rules that accept
/// any value.
#[derive(Debug)]
struct Level<T> {
    exact: HashMap<String, T>,
    prefixed: HashMap<String, T>,
    /// The distinct prefix lengths in `prefixed`, ascending: a lookup tries only these.
    prefix_lens: Vec<usize>,
    any: Option<T>,
}

impl<T: Default> Default for Level<T> {
    fn default() -> Self {
        Level {
            exact: HashMap::default(),
            prefixed: HashMap::default(),
            prefix_lens: Vec::new(),
            any: None,
        }
    }
}

/// The distinct entries of `map` named by `keys`, created when missing.
fn entries<'a, T: Default>(map: &'a mut HashMap<String, T>, keys: &[String]) -> Vec<&'a mut T> {
    let mut keys: Vec<&String> = keys.iter().collect();
    keys.sort();
    keys.dedup();
    for k in &keys {
        map.entry((*k).clone()).or_default();
    }
    // A map gives out one &mut per key, so walk it once and pick.
    map.iter_mut()
        .filter(|(k, _)| keys.binary_search(k).is_ok())
        .map(|(_, v)| v)
        .collect()
}

impl<T: Default> Level<T> {
    /// The slots a rule constrained by `key` is filed in.
    fn slots(&mut self, key: &Key) -> Vec<&mut T> {
        match key {
            Key::Any => vec![self.any.get_or_insert_with(T::default)],
            Key::Values { exact, prefixes } => {
                for p in prefixes {
                    if let Err(at) = self.prefix_lens.binary_search(&p.len()) {
                        self.prefix_lens.insert(at, p.len());
                    }
                }
                let mut slots = entries(&mut self.exact, exact);
                slots.extend(entries(&mut self.prefixed, prefixes));
                slots
            }
        }
    }

    fn lookup<'a>(&'a self, value: Option<&'a str>) -> impl Iterator<Item = &'a T> + 'a {
        let exact = value.and_then(|v| self.exact.get(v));
        let prefixed = value.into_iter().flat_map(move |v| {
            self.prefix_lens
                .iter()
                .take_while(move |&&n| n <= v.len())
                .filter_map(move |&n| v.get(..n).and_then(|p| self.prefixed.get(p)))
        });
        exact.into_iter().chain(prefixed).chain(self.any.as_ref())
    }
}

/// How a rule constrains each indexed dimension.
#[derive(Debug, Clone, Default)]
pub struct Literals {
    pub sources: Key,
    pub kinds: Key,
    pub repos: Key,
    pub images: Key,
}

#[derive(Debug, Default)]
pub struct RuleIndex {
    root: Level<Level<Level<Level<Vec<usize>>>>>,
}

impl RuleIndex {
    pub fn build(rules: impl Iterator<Item = Literals>) -> RuleIndex {
        let mut index = RuleIndex::default();
        for (i, lit) in rules.enumerate() {
            for kinds in index.root.slots(&lit.sources) {
                for repos in kinds.slots(&lit.kinds) {
                    for images in repos.slots(&lit.repos) {
                        for list in images.slots(&lit.images) {
                            list.push(i);
                        }
                    }
                }
            }
        }
        index
    }

    /// The rules that may match `event`, in rule order, into `out` (cleared first).
    pub fn candidates(&self, event: &Event, out: &mut Vec<usize>) {
        out.clear();
        let subject = &event.subject;
        for kinds in self.root.lookup(Some(&event.source)) {
            for repos in kinds.lookup(Some(&event.kind)) {
                for images in repos.lookup(subject.repo.as_deref()) {
                    for list in images.lookup(subject.image.as_deref()) {
                        out.extend_from_slice(list);
                    }
                }
            }
        }
        out.sort_unstable();
        out.dedup();
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::domain::Subject;
    use crate::rules::Matcher;

    fn event(source: &str, kind: &str, repo: Option<&str>, image: Option<&str>) -> Event {
        Event {
            id: String::new(),
            source: source.into(),
            kind: kind.into(),
            delivery_id: String::new(),
            received_at: 0,
            subject: Subject {
                repo: repo.map(str::to_string),
                image: image.map(str::to_string),
                ..Subject::default()
            },
            payload: serde_json::Value::Null,
            parent_job_id: None,
            chain_depth: 0,
            claims: None,
        }
    }

    fn key(patterns: &[&str]) -> Key {
        Key::of_patterns(&patterns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn files_rules_by_literals_and_prefixes_and_falls_back_to_any() {
        let index = RuleIndex::build(
            [
                Literals {
                    sources: key(&["ci"]),
                    kinds: key(&["test-passed"]),
                    repos: key(&["dev"]),
                    images: key(&["team-a/api"]),
                },
                Literals {
                    sources: key(&["ci", "gh"]),
                    ..Literals::default()
                },
                Literals {
                    kinds: key(&["docker.{pushed,promoted}"]),
                    ..Literals::default()
                },
                Literals {
                    sources: key(&["ci"]),
                    kinds: key(&["test-passed"]),
                    repos: key(&["prod"]),
                    ..Literals::default()
                },
                Literals {
                    images: key(&["team-a/*", "team-b/**"]),
                    ..Literals::default()
                },
            ]
            .into_iter(),
        );
        let mut out = Vec::new();
        index.candidates(
            &event("ci", "test-passed", Some("dev"), Some("team-a/api")),
            &mut out,
        );
        assert_eq!(out, [0, 1, 4]);
        index.candidates(&event("gh", "docker.pushed", None, None), &mut out);
        assert_eq!(out, [1, 2]);
        index.candidates(&event("x", "y", Some("dev"), Some("team-b/x/y")), &mut out);
        assert_eq!(out, [4]);
        index.candidates(
            &event("other", "x", Some("dev"), Some("team-c/a")),
            &mut out,
        );
        assert!(out.is_empty());
    }

    #[test]
    fn only_glob_prefixes_and_literals_narrow() {
        let values = |exact: &[&str], prefixes: &[&str]| Key::Values {
            exact: exact.iter().map(|s| s.to_string()).collect(),
            prefixes: prefixes.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(key(&["a", "b.c"]), values(&["a", "b.c"], &[]));
        assert_eq!(key(&["a*", "b{c,d}", "x"]), values(&["x"], &["a", "b"]));
        assert_eq!(
            key(&["re:^(legacy|team)-1/[^/]+$", "re:^x"]),
            values(&[], &["legacy-1/", "team-1/", "x"])
        );
        for p in [
            "*a",
            "re:a$",
            "re:^.*a",
            "re:(?m)^a",
            "semver:1",
            "!a",
            "{a,b}",
            "?a",
        ] {
            assert_eq!(key(&["z", p]), Key::Any, "{p}");
        }
    }

    proptest! {
        /// Whatever a rule's matcher accepts, the index offers the rule for.
        #[test]
        fn never_hides_a_match(
            patterns in prop::collection::vec("(!|re:\\^?)?[ab/]{0,3}[*?]?[ab/]{0,2}", 1..4),
            value in "[ab/]{0,6}",
        ) {
            let Ok(matcher) = Matcher::compile(&patterns) else { return Ok(()) };
            let index = RuleIndex::build(std::iter::once(Literals {
                images: Key::of_patterns(&patterns),
                ..Literals::default()
            }));
            let mut out = Vec::new();
            index.candidates(&event("s", "k", None, Some(&value)), &mut out);
            if matcher.matches(&value, &mut Vec::new()) {
                prop_assert_eq!(out, vec![0]);
            }
        }
    }
}
