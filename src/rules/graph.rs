//! The promotion graph: rule A → rule B when what A promotes can come back as an
//! event that B matches (gantry's own `gantry.promoted`, or an upstream's echo such
//! as Artifactory's `docker.promoted` or a registry push). A cycle would promote
//! forever, so `check` refuses it.
//!
//! This is an over-approximation: a value that depends on the event (a template)
//! is assumed to match anything, so an edge is only left out when a literal shows
//! it cannot exist. It errs towards reporting.

use std::collections::HashMap;

use super::action::Output;
use super::{Rule, RuleSet};
use crate::config::{INTERNAL_SOURCE, SourceConfig};

/// Event types through which a promotion can come back.
const ECHO_TYPES: [&str; 13] = [
    "gantry.promoted",
    "docker.promoted",
    "docker.pushed",
    "artifact.deployed",
    "artifact.copied",
    "artifact.moved",
    "build.promoted",
    "registry.push",
    "acr.push",
    "harbor.push_artifact",
    "harbor.artifact.pushed",
    "quay.repo_push",
    "dockerhub.push",
];

/// Whether `consumer` can match an event produced by `producer`'s promotions.
fn feeds(producer: &Rule, consumer: &Rule, echo_sources: &[&str]) -> bool {
    let consumer = &consumer.trigger;
    let source_ok = match &consumer.sources {
        None => true,
        Some(names) => names
            .iter()
            .any(|n| n == INTERNAL_SOURCE || echo_sources.contains(&n.as_str())),
    };
    let type_ok = match &consumer.event {
        None => true,
        Some(m) => ECHO_TYPES.iter().any(|t| m.matches(t, &mut Vec::new())),
    };
    let needs_ok = consumer
        .needs
        .iter()
        .all(|f| producer.action.output(*f) != Output::Absent);
    let fields_ok = consumer
        .fields
        .iter()
        .all(|(f, m)| match producer.action.output(*f) {
            Output::Literal(v) => m.matches(v, &mut Vec::new()),
            Output::Unknown => true,
            Output::Absent => false,
        });
    source_ok && type_ok && needs_ok && fields_ok
}

impl RuleSet {
    /// Every promotion cycle, each as the rule names along it (first name repeated
    /// at the end). `sources` tells which configured sources can echo promotions.
    pub fn cycles(&self, sources: &[SourceConfig]) -> Vec<Vec<String>> {
        let echo_sources: Vec<&str> = sources
            .iter()
            .filter(|s| s.format.echoes_promotions())
            .map(|s| s.name.as_str())
            .collect();
        let n = self.rules.len();
        let edges: Vec<Vec<usize>> = (0..n)
            .map(|a| {
                (0..n)
                    .filter(|&b| feeds(&self.rules[a], &self.rules[b], &echo_sources))
                    .collect()
            })
            .collect();
        strongly_connected(&edges)
            .into_iter()
            .filter(|scc| scc.len() > 1 || edges[scc[0]].contains(&scc[0]))
            .map(|scc| {
                let mut names: Vec<String> =
                    scc.iter().map(|&i| self.rules[i].name.clone()).collect();
                names.push(names[0].clone());
                names
            })
            .collect()
    }
}

/// Tarjan's strongly connected components; each component's members in config order.
fn strongly_connected(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    struct State<'a> {
        edges: &'a [Vec<usize>],
        index: HashMap<usize, usize>,
        low: HashMap<usize, usize>,
        stack: Vec<usize>,
        on_stack: Vec<bool>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(s: &mut State<'_>, v: usize) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for &w in &s.edges[v] {
            if !s.index.contains_key(&w) {
                visit(s, w);
                let lw = s.low[&w];
                let lv = s.low[&v];
                s.low.insert(v, lv.min(lw));
            } else if s.on_stack[w] {
                let iw = s.index[&w];
                let lv = s.low[&v];
                s.low.insert(v, lv.min(iw));
            }
        }
        if s.low[&v] == s.index[&v] {
            let mut scc = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                scc.push(w);
                if w == v {
                    break;
                }
            }
            scc.sort_unstable();
            s.out.push(scc);
        }
    }
    let mut s = State {
        edges,
        index: HashMap::new(),
        low: HashMap::new(),
        stack: Vec::new(),
        on_stack: vec![false; edges.len()],
        next: 0,
        out: Vec::new(),
    };
    for v in 0..edges.len() {
        if !s.index.contains_key(&v) {
            visit(&mut s, v);
        }
    }
    s.out.sort();
    s.out
}

#[cfg(test)]
mod tests {
    use super::strongly_connected;

    #[test]
    fn finds_loops_and_self_loops() {
        // 0 → 1 → 2 → 1, 3 → 3, 4 alone
        let edges = vec![vec![1], vec![2], vec![1], vec![3], vec![]];
        assert_eq!(
            strongly_connected(&edges),
            vec![vec![0], vec![1, 2], vec![3], vec![4]]
        );
    }
}
