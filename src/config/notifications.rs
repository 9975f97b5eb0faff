//! `[[notifications]]` (SPEC §10): where gantry tells people what happened, checked
//! into typed sinks before anything runs. A sink's URL is a credential (a Slack
//! incoming-webhook URL is its own secret), so no problem found here ever quotes it.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::{Problem, Secret};
use crate::audit::AuditKind;
use crate::signing::standard_webhooks_key;

/// The body and headers a sink is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum NotificationFormat {
    /// Slack's incoming-webhook body: `text` and `blocks`.
    Slack,
    /// The Standard Webhooks body, signed with every listed secret.
    StandardWebhooks,
    /// The Standard Webhooks body, unsigned.
    Generic,
}

/// `[[notifications]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotification {
    pub name: String,
    pub format: NotificationFormat,
    /// A secret reference.
    pub url: String,
    #[serde(default)]
    pub secrets: Vec<String>,
    pub on: Vec<String>,
    pub rules: Option<Vec<String>>,
    pub retry: Option<RawNotificationRetry>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    pub concurrency: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotificationRetry {
    /// Delays after each failed try (`"5s"`, `"2h"`).
    pub schedule: Vec<String>,
}

/// The default schedule: about 28 hours, since receivers are often down for longer
/// than minutes.
pub const DEFAULT_SCHEDULE: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];
/// A delay in a schedule is at most this long.
const MAX_DELAY: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_CONCURRENCY: usize = 4;

/// A sink's URL: a credential, so `Debug` never shows it.
#[derive(Clone)]
pub struct SinkUrl(reqwest::Url);

impl SinkUrl {
    pub fn expose(&self) -> &reqwest::Url {
        &self.0
    }
}

impl fmt::Debug for SinkUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A Standard Webhooks signing key, from a `whsec_` secret.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl SigningKey {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// One sink, ready to route to and deliver to.
#[derive(Debug, Clone)]
pub struct NotificationConfig {
    pub name: String,
    pub format: NotificationFormat,
    pub url: SinkUrl,
    /// Every key signs each delivery (`standard-webhooks` only).
    pub keys: Vec<SigningKey>,
    /// The audit kinds `on` names, its globs expanded.
    pub on: BTreeSet<AuditKind>,
    /// Only records about these rules; every rule when absent.
    pub rules: Option<Vec<String>>,
    /// Delays after each failed try; past the last, the notification has failed.
    pub schedule: Vec<Duration>,
    pub timeout: Duration,
    /// Deliveries to this sink at once, per process.
    pub concurrency: usize,
}

/// Resolves a secret reference at a location, recording what is wrong with it.
pub(super) type Resolve<'a> = &'a dyn Fn(&mut Vec<Problem>, String, &str) -> Option<Secret>;

/// Checks every sink; those without errors come back typed.
pub(super) fn check_notifications(
    raw: &[RawNotification],
    rule_names: &BTreeSet<&str>,
    resolve: Resolve<'_>,
    problems: &mut Vec<Problem>,
) -> Vec<NotificationConfig> {
    raw.iter()
        .filter_map(|n| check_one(n, rule_names, resolve, problems))
        .collect()
}

fn check_one(
    n: &RawNotification,
    rule_names: &BTreeSet<&str>,
    resolve: Resolve<'_>,
    problems: &mut Vec<Problem>,
) -> Option<NotificationConfig> {
    let loc = format!("notifications[{}]", n.name);
    let before = problems.len();
    let errors = |problems: &Vec<Problem>| {
        problems[before..]
            .iter()
            .any(|p| p.severity == super::Severity::Error)
    };

    let url = resolve(problems, format!("{loc}.url"), &n.url).and_then(|s| {
        match reqwest::Url::parse(s.expose()) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                Some(SinkUrl(u))
            }
            // The value is a credential: say what is wrong without quoting it.
            _ => {
                problems.push(Problem::error(
                    format!("{loc}.url"),
                    "is not an absolute http(s) URL (its value is a secret and is not shown)",
                ));
                None
            }
        }
    });

    let keys: Vec<SigningKey> = n
        .secrets
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let at = format!("{loc}.secrets[{i}]");
            let secret = resolve(problems, at.clone(), r)?;
            if !secret.expose().starts_with("whsec_") {
                problems.push(Problem::error(
                    at,
                    "is not a `whsec_` Standard Webhooks secret",
                ));
                return None;
            }
            match standard_webhooks_key(secret.expose()) {
                Ok(k) => Some(SigningKey(k)),
                Err(why) => {
                    problems.push(Problem::error(at, why));
                    None
                }
            }
        })
        .collect();
    match n.format {
        NotificationFormat::StandardWebhooks if n.secrets.is_empty() => {
            problems.push(Problem::error(
                format!("{loc}.secrets"),
                "a standard-webhooks sink signs every delivery: list at least one `whsec_` secret",
            ));
        }
        NotificationFormat::Slack | NotificationFormat::Generic if !n.secrets.is_empty() => {
            problems.push(Problem::error(
                format!("{loc}.secrets"),
                "only standard-webhooks sinks are signed; this format would send them nowhere",
            ));
        }
        _ => {}
    }

    let on = kinds(&loc, &n.on, problems);
    if let Some(rules) = &n.rules {
        for r in rules.iter().filter(|r| !rule_names.contains(r.as_str())) {
            problems.push(Problem::error(
                format!("{loc}.rules"),
                format!("no rule is named `{r}`"),
            ));
        }
    }

    let schedule = match &n.retry {
        None => DEFAULT_SCHEDULE.to_vec(),
        Some(r) => r
            .schedule
            .iter()
            .enumerate()
            .filter_map(|(i, d)| {
                let at = format!("{loc}.retry.schedule[{i}]");
                match humantime::parse_duration(d) {
                    Ok(d) if d.is_zero() => {
                        problems.push(Problem::error(at, "a delay must be longer than zero"));
                        None
                    }
                    Ok(d) if d > MAX_DELAY => {
                        problems.push(Problem::error(at, "a delay is at most 24h"));
                        None
                    }
                    Ok(d) => Some(d),
                    Err(e) => {
                        problems.push(Problem::error(at, format!("`{d}` is not a duration: {e}")));
                        None
                    }
                }
            })
            .collect(),
    };
    let timeout = n.timeout.unwrap_or(DEFAULT_TIMEOUT);
    if timeout.is_zero() {
        problems.push(Problem::error(
            format!("{loc}.timeout"),
            "must be longer than zero",
        ));
    }
    let concurrency = n.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
    if concurrency == 0 {
        problems.push(Problem::error(
            format!("{loc}.concurrency"),
            "must be at least 1",
        ));
    }
    if errors(problems) {
        return None;
    }
    Some(NotificationConfig {
        name: n.name.clone(),
        format: n.format,
        url: url?,
        keys,
        on,
        rules: n.rules.clone(),
        schedule,
        timeout,
        concurrency,
    })
}

/// The notifiable kinds `on` names: each entry a kind or a glob (`job.*`) that must
/// match at least one, so a misspelt kind is an error instead of silence.
fn kinds(loc: &str, on: &[String], problems: &mut Vec<Problem>) -> BTreeSet<AuditKind> {
    let mut kinds = BTreeSet::new();
    if on.is_empty() {
        problems.push(Problem::error(
            format!("{loc}.on"),
            "lists no audit kind: the sink would never be sent anything",
        ));
    }
    for pattern in on {
        let at = format!("{loc}.on");
        let glob = match globset::Glob::new(pattern) {
            Ok(g) => g.compile_matcher(),
            Err(e) => {
                problems.push(Problem::error(
                    at,
                    format!("`{pattern}` is not a glob: {e}"),
                ));
                continue;
            }
        };
        let named: Vec<AuditKind> = AuditKind::ALL
            .into_iter()
            .filter(|k| glob.is_match(k.as_str()))
            .collect();
        if named.iter().any(|k| !k.notifiable()) && !pattern.contains(['*', '?', '[']) {
            problems.push(Problem::error(
                at,
                format!("`{pattern}` records a notification's own fate and is never notified"),
            ));
            continue;
        }
        let before = kinds.len();
        kinds.extend(named.into_iter().filter(|k| k.notifiable()));
        if kinds.len() == before && !named_any(pattern, &kinds) {
            problems.push(Problem::error(
                at,
                format!("`{pattern}` matches no audit kind that can be notified"),
            ));
        }
    }
    kinds
}

/// Whether `pattern` names a kind already in `kinds` (listed twice is not an error).
fn named_any(pattern: &str, kinds: &BTreeSet<AuditKind>) -> bool {
    globset::Glob::new(pattern)
        .map(|g| g.compile_matcher())
        .is_ok_and(|m| kinds.iter().any(|k| m.is_match(k.as_str())))
}
