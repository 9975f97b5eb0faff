//! Rule matching throughput: events per second planned against 10 000 rules on one
//! core (benchmark 3 of bench/README.md).
//!
//! The rules are what a platform with 2 500 teams would write: per team a glob
//! `team-N/*` dev → staging rule, a literal-image hotfix rule with a regex tag, a
//! staging → prod chain rule on `team-N/**`, and a registry push rule; every
//! hundredth team matches its images by regex, which the index cannot narrow. The
//! events are a mix that matches one rule, several, or none. Two sets of 10 000
//! regex rules follow: anchored ones (`re:^team-N/…`, indexed by their literal
//! prefixes) and unanchored ones, which no index can narrow: the worst case.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gantry::config::{self, ConfigPath};
use gantry::domain::{Event, Subject};
use gantry::rules::RuleSet;

const TEAMS: usize = 2_500;

const HEAD: &str = r#"
[store]
url = "sqlite://unused.db"
[[sources]]
name = "ci"
format = "generic"
verify = { scheme = "hmac-sha256", header = "X-Signature", secrets = ["bench-secret-000000000000"] }
[[sources]]
name = "artifactory"
format = "artifactory"
verify = { scheme = "hmac-sha256", header = "X-JFrog-Event-Auth", secrets = ["bench-secret-000000000000"] }
[[sources]]
name = "registry"
format = "registry"
verify = { scheme = "token", header = "X-Token", secrets = ["bench-secret-000000000000"] }
[[targets]]
name = "jfrog"
kind = "artifactory"
url = "http://127.0.0.1:1"
token = "bench-token"
"#;

fn indexable_rules() -> String {
    let mut toml = HEAD.to_string();
    for t in 0..TEAMS {
        let image = if t % 100 == 0 {
            format!("re:^(legacy|team)-{t}/[^/]+$")
        } else {
            format!("team-{t}/*")
        };
        // Writing to a String cannot fail.
        let _ = write!(
            toml,
            r#"
[[rules]]
name = "t{t}-tested-to-staging"
source = "ci"
event = "test-passed"
match = {{ repo = "docker-dev", image = "{image}", tag = "semver:>=1.0.0" }}
action = {{ type = "promote", target = "jfrog", to_repo = "docker-staging", copy = true }}
[[rules]]
name = "t{t}-api-hotfix"
source = "ci"
event = "test-passed"
match = {{ repo = "docker-dev", image = "team-{t}/api", tag = "re:^hotfix-(?P<n>\\d+)$" }}
action = {{ type = "promote", target = "jfrog", to_repo = "docker-staging", to_tag = "hotfix-{{{{n}}}}" }}
[[rules]]
name = "t{t}-staging-to-prod"
source = ["gantry", "artifactory"]
event = ["gantry.promoted", "docker.promoted"]
match = {{ repo = "docker-staging", image = "team-{t}/**", tag = "re:^\\d+\\.\\d+\\.\\d+$" }}
action = {{ type = "promote", target = "jfrog", to_repo = "docker-prod", copy = false }}
[[rules]]
name = "t{t}-pushed"
source = "registry"
event = "docker.pushed"
match = {{ image = "team-{t}/*", tag = "re:^\\d+\\.\\d+\\.\\d+$" }}
action = {{ type = "promote", target = "jfrog", to_repo = "docker-dev", copy = true }}
"#
        );
    }
    toml
}

fn regex_rules(anchor: &str) -> String {
    let mut toml = HEAD.to_string();
    for t in 0..TEAMS * 4 {
        let _ = write!(
            toml,
            r#"
[[rules]]
name = "r{t}"
event = "re:^test-"
match = {{ image = "re:{anchor}team-{t}/(?P<app>[^/]+)$" }}
action = {{ type = "promote", target = "jfrog", to_repo = "docker-staging", to_image = "team-{t}/{{{{app}}}}" }}
"#
        );
    }
    toml
}

fn compile(toml: &str) -> RuleSet {
    let dir = std::env::temp_dir().join(format!("gantry-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("rules.toml");
    std::fs::write(&path, toml).expect("write rules");
    // Literal secrets only warn; the bench never starts a server.
    let loaded = config::load(&ConfigPath::Explicit(path), &HashMap::new()).expect("valid config");
    let rules = RuleSet::compile(&loaded.config).expect("rules compile");
    assert_eq!(rules.rules().len(), TEAMS * 4);
    rules
}

fn event(source: &str, kind: &str, repo: &str, image: &str, tag: &str) -> Event {
    Event {
        id: String::new(),
        source: source.into(),
        kind: kind.into(),
        delivery_id: String::new(),
        received_at: 0,
        subject: Subject {
            repo: Some(repo.into()),
            image: Some(image.into()),
            tag: Some(tag.into()),
            ..Subject::default()
        },
        payload: serde_json::Value::Null,
        parent_job_id: None,
        chain_depth: 0,
        claims: None,
    }
}

/// 1 024 events spread over the teams: a tested release, a hotfix, a staging
/// promotion echo, a registry push, and an event no rule wants.
fn events() -> Vec<Event> {
    (0..1024)
        .map(|i| {
            let t = (i * 7919) % TEAMS;
            match i % 5 {
                0 => event(
                    "ci",
                    "test-passed",
                    "docker-dev",
                    &format!("team-{t}/web"),
                    "1.4.2",
                ),
                1 => event(
                    "ci",
                    "test-passed",
                    "docker-dev",
                    &format!("team-{t}/api"),
                    "hotfix-7",
                ),
                2 => event(
                    "gantry",
                    "gantry.promoted",
                    "docker-staging",
                    &format!("team-{t}/x/api"),
                    "2.0.0",
                ),
                3 => event(
                    "registry",
                    "docker.pushed",
                    "",
                    &format!("team-{t}/api"),
                    "3.1.0",
                ),
                _ => event(
                    "ci",
                    "build-started",
                    "docker-dev",
                    &format!("team-{t}/api"),
                    "1.0.0",
                ),
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let events = events();
    let mut group = c.benchmark_group("plan");
    group.throughput(Throughput::Elements(events.len() as u64));

    let indexable = compile(&indexable_rules());
    let matched: usize = events.iter().map(|e| indexable.plan(e).len()).sum();
    // Every event but the unwanted ones matches exactly one rule.
    let unwanted = events.iter().filter(|e| e.kind == "build-started").count();
    assert_eq!(matched, events.len() - unwanted);
    group.bench_function("10k_rules_indexed", |b| {
        b.iter(|| {
            for e in &events {
                black_box(indexable.plan(black_box(e)));
            }
        })
    });

    let anchored = compile(&regex_rules("^"));
    group.bench_function("10k_anchored_regex_rules", |b| {
        b.iter(|| {
            for e in &events {
                black_box(anchored.plan(black_box(e)));
            }
        })
    });

    let unanchored = compile(&regex_rules(""));
    let few = &events[..16];
    group.throughput(Throughput::Elements(few.len() as u64));
    group.sample_size(10);
    group.bench_function("10k_unanchored_regex_rules_unindexable", |b| {
        b.iter(|| {
            for e in few {
                black_box(unanchored.plan(black_box(e)));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
