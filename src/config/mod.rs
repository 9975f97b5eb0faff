//! Configuration: layered loading (embedded defaults → file → `GANTRY__SECTION__KEY`
//! environment) and validation into typed values before anything runs.
//!
//! Loading never stops at the first problem it can survive: `gantry check` wants every
//! problem in one run, each named by the source/target/rule and key it concerns.

mod console;
mod notifications;
pub mod pg_tls;
mod raw;
pub mod secret;
mod store_url;
mod supply;
mod traces;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::approval::{ApprovalPolicy, Quorum};
use crate::domain::destinations::Destinations;
use crate::domain::freeze::{self, Freeze};
use crate::domain::protection::Protection;

pub use console::{ConsoleConfig, ProxyConfig};
pub use notifications::{NotificationConfig, NotificationFormat, SigningKey, SinkUrl};
pub use raw::{OneOrMany, RawAction, RawCondition, RawMatch, RawRule};
pub use secret::Secret;
pub use store_url::{PostgresUrl, StoreUrl};
pub use traces::TracingConfig;

const EMBEDDED_DEFAULTS: &str = include_str!("defaults.toml");

/// The default config file, used when it exists and no other was named.
pub const DEFAULT_PATH: &str = "config/gantry.toml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Operate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Generic,
    Artifactory,
    Registry,
    Github,
    Harbor,
    Quay,
    Dockerhub,
    Acr,
    Cloudevents,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SchemeKind {
    HmacSha256,
    Github,
    StandardWebhooks,
    Token,
    None,
    /// The secret travels in the URL's query (SPEC §16), for senders that can set
    /// nothing but the URL.
    UrlToken,
    /// A bearer JWT from a trusted identity provider (SPEC §16): no shared secret.
    Oidc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Hex,
    Base64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Artifactory,
    Oci,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActionKind {
    Promote,
    BuildPromote,
    Copy,
    Move,
    ReleaseBundlePromote,
}

/// The subject fields every normalized event carries (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    Repo,
    Image,
    Tag,
    Digest,
    Path,
    BuildName,
    BuildNumber,
}

impl Format {
    /// Whether events of this format can carry `field` (a gate correlating on a
    /// field its events never carry could never be met).
    pub fn carries(self, field: Field) -> bool {
        match self {
            // A registry notification names an image by repository, tag and digest.
            Format::Registry | Format::Acr | Format::Harbor => matches!(
                field,
                Field::Repo | Field::Image | Field::Tag | Field::Digest
            ),
            // Quay and Docker Hub name the tags pushed, never a digest.
            Format::Quay | Format::Dockerhub => {
                matches!(field, Field::Repo | Field::Image | Field::Tag)
            }
            Format::Generic | Format::Artifactory | Format::Github | Format::Cloudevents => true,
        }
    }

    /// Whether its subject fields are read through `fields` JSON pointers.
    pub fn maps_fields(self) -> bool {
        matches!(self, Format::Generic | Format::Github | Format::Cloudevents)
    }

    /// Whether the sender also reports what gantry itself writes there: a promotion
    /// into Artifactory or a registry comes back as a push or promote event, so rules
    /// on these sources can feed each other (`check` looks for loops through them).
    pub fn echoes_promotions(self) -> bool {
        matches!(
            self,
            Format::Artifactory
                | Format::Registry
                | Format::Harbor
                | Format::Quay
                | Format::Dockerhub
                | Format::Acr
        )
    }
}

impl Field {
    pub const ALL: [Field; 7] = [
        Field::Repo,
        Field::Image,
        Field::Tag,
        Field::Digest,
        Field::Path,
        Field::BuildName,
        Field::BuildNumber,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Field::Repo => "repo",
            Field::Image => "image",
            Field::Tag => "tag",
            Field::Digest => "digest",
            Field::Path => "path",
            Field::BuildName => "build_name",
            Field::BuildNumber => "build_number",
        }
    }

    pub fn from_name(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name() == name)
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreUrl,
    pub defaults: Defaults,
    pub worker: WorkerConfig,
    pub admin_tokens: Vec<AdminToken>,
    /// How long audit records are kept (`[audit] retain`); `None` keeps them all.
    pub audit_retain: Option<Duration>,
    /// How often refused requests are summarised on the record, per source and
    /// reason (`[audit] rejections_every`).
    pub audit_rejections_every: Duration,
    pub sources: Vec<SourceConfig>,
    pub targets: Vec<TargetConfig>,
    pub rules: Vec<RuleConfig>,
    /// `[[freezes]]`, checked and ready to ask (`domain::freeze`).
    pub freezes: Vec<Freeze>,
    /// `[[protections]]`, checked (`domain::protection`).
    pub protections: Vec<Protection>,
    /// `[[notifications]]` (SPEC §10).
    pub notifications: Vec<NotificationConfig>,
    /// `server.console`, `server.session_ttl`, `[auth]` (SPEC §11).
    pub console: ConsoleConfig,
    /// `[tracing]` (SPEC §12).
    pub tracing: TracingConfig,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    /// How long running attempts may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// Where people reach this gantry (links in notifications), without a trailing `/`.
    pub public_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Defaults {
    pub max_chain_depth: u32,
    pub dedupe_window: Duration,
    pub retry: RetryPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub lease: Duration,
    pub concurrency: usize,
    /// Fallback wake-up for due retries and expired leases; new jobs wake workers at once.
    pub poll_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct AdminToken {
    pub name: String,
    pub token: Secret,
    pub role: Role,
    pub groups: Vec<String>,
}

impl AdminToken {
    /// The token among `tokens` whose value is `presented`. Every token is compared,
    /// in constant time, so the time taken does not say which one matched.
    pub fn presented<'t>(tokens: &'t [AdminToken], presented: &str) -> Option<&'t AdminToken> {
        let mut found = None;
        for token in tokens {
            if crate::signing::same_secret(token.token.expose().as_bytes(), presented.as_bytes()) {
                found = Some(token);
            }
        }
        found
    }
}

#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub name: String,
    pub format: Format,
    pub verify: VerifyConfig,
    /// Subject field → JSON pointer overrides for `generic`.
    pub fields: BTreeMap<Field, String>,
    pub type_header: Option<String>,
    pub delivery_header: Option<String>,
}

#[derive(Debug, Clone)]
pub struct VerifyConfig {
    pub scheme: SchemeKind,
    pub header: String,
    pub prefix: String,
    pub encoding: Encoding,
    pub secrets: Vec<Secret>,
    /// How far a signed timestamp may be from now (`standard-webhooks`).
    pub tolerance: Duration,
    /// The query parameter carrying the secret (`url-token`).
    pub param: String,
    /// The issuer trusted and what its tokens must say (`oidc`).
    pub oidc: Option<OidcConfig>,
}

/// An `oidc` source's trust: whose tokens, for whom, and what they must claim.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// As the tokens write `iss`; the discovery document is under it.
    pub issuer: String,
    pub audience: String,
    /// Overrides the discovery document's `jwks_uri`.
    pub jwks_url: Option<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// JSON pointer into the claims → matcher (compiled with the verifier).
    pub claims: BTreeMap<String, OneOrMany>,
}

/// The query parameter a `url-token` sender puts its secret in, unless `param` says.
pub const DEFAULT_TOKEN_PARAM: &str = "token";
/// `oidc` clock skew allowed unless `leeway` says.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
/// The most `leeway` may be: more keeps expired bearer tokens good for longer than any
/// clock is wrong.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct TargetConfig {
    pub name: String,
    pub kind: TargetKind,
    pub url: reqwest::Url,
    pub auth: TargetAuth,
    pub timeout: Duration,
    pub max_concurrency: usize,
    pub breaker: BreakerConfig,
    /// Every job against this target is a dry run.
    pub dry_run: bool,
}

impl TargetConfig {
    /// A target reached without credentials, with default limits: for reading what
    /// is public on a registry no config names (`gantry verify-promotion`).
    pub fn anonymous(kind: TargetKind, url: reqwest::Url) -> TargetConfig {
        TargetConfig {
            name: url.host_str().unwrap_or("registry").to_string(),
            kind,
            url,
            auth: TargetAuth::Anonymous,
            timeout: Duration::from_secs(30),
            max_concurrency: 1,
            breaker: BreakerConfig {
                failures: 0,
                cool_down: Duration::ZERO,
            },
            dry_run: false,
        }
    }
}

/// When a target's circuit opens (after `failures` consecutive retryable failures)
/// and how long its jobs are then held before one probe is let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// 0 disables the breaker.
    pub failures: u32,
    pub cool_down: Duration,
}

#[derive(Debug, Clone)]
pub enum TargetAuth {
    Anonymous,
    Bearer(Secret),
    ApiKey(Secret),
    Basic { username: String, password: Secret },
}

/// A rule whose references (sources, target) are known to exist; its patterns and
/// templates are compiled by `rules::RuleSet::compile`.
#[derive(Debug, Clone)]
pub struct RuleConfig {
    pub raw: RawRule,
    pub retry: RetryPolicy,
    /// The approval each of the rule's jobs is created under.
    pub approval: Option<ApprovalPolicy>,
    /// The rule's gate, checked; its conditions' patterns are compiled with the rules.
    pub gate: Option<GateConfig>,
    /// The gate's signature conditions (SPEC §15), their keys read.
    pub signatures: Vec<crate::supply::SignatureCondition>,
    /// The key each promotion of the rule is attested with (SPEC §15).
    pub attest: Option<Arc<crate::supply::SigningKey>>,
}

/// A rule's gate (SPEC §9), its values checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateConfig {
    /// The subject fields the trigger and every condition must agree on.
    pub correlate: Vec<Field>,
    pub within: Duration,
    pub soak: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Warning,
    Error,
}

/// One finding of validation, located by the named item and key it concerns.
#[derive(Debug, Clone)]
pub struct Problem {
    pub severity: Severity,
    pub location: String,
    pub message: String,
}

impl Problem {
    pub fn error(location: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            severity: Severity::Error,
            location: location.into(),
            message: message.into(),
        }
    }

    pub fn warning(location: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            severity: Severity::Warning,
            location: location.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(f, "{level}: {}: {}", self.location, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file `{0}` does not exist")]
    Missing(PathBuf),
    #[error("{0}")]
    Invalid(Problems),
}

/// Every problem found, errors and warnings, in the order found.
#[derive(Debug, Clone, Default)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(|p| p.severity == Severity::Error)
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Where the config file comes from: named explicitly (it must exist) or the default
/// path (used only when present).
#[derive(Debug, Clone)]
pub enum ConfigPath {
    Explicit(PathBuf),
    Default,
}

/// A loaded, valid configuration and the warnings found on the way.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Problem>,
}

/// Loads and validates the configuration. `env` is the process environment snapshot:
/// it feeds both the `GANTRY__…` layer and `env:` secret references.
pub fn load(path: &ConfigPath, env: &HashMap<String, String>) -> Result<Loaded, ConfigError> {
    let file = match path {
        ConfigPath::Explicit(p) if !p.exists() => return Err(ConfigError::Missing(p.clone())),
        ConfigPath::Explicit(p) => Some(p.as_path()),
        ConfigPath::Default => Some(Path::new(DEFAULT_PATH)).filter(|p| p.exists()),
    };
    let raw = read_layers(file, env).map_err(|p| ConfigError::Invalid(Problems(vec![p])))?;
    let mut problems = Vec::new();
    let config = validate(raw, env, &mut problems);
    let problems = Problems(problems);
    match config {
        Some(config) if !problems.has_errors() => Ok(Loaded {
            config,
            warnings: problems.0,
        }),
        _ => Err(ConfigError::Invalid(problems)),
    }
}

fn read_layers(
    file: Option<&Path>,
    env: &HashMap<String, String>,
) -> Result<raw::RawConfig, Problem> {
    let mut builder = config::Config::builder().add_source(config::File::from_str(
        EMBEDDED_DEFAULTS,
        config::FileFormat::Toml,
    ));
    if let Some(path) = file {
        builder = builder.add_source(config::File::from(path));
    }
    let env_layer = config::Environment::with_prefix("GANTRY")
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .source(Some(env.clone().into_iter().collect()));
    let merged = builder
        .add_source(env_layer)
        .build()
        .map_err(|e| Problem::error("config", e.to_string()))?;
    // Through serde_json so that serde_path_to_error can name the offending key.
    let value: serde_json::Value = merged
        .try_deserialize()
        .map_err(|e| Problem::error("config", e.to_string()))?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let location = if path == "." { "config".into() } else { path };
        Problem::error(location, e.into_inner().to_string())
    })
}

fn validate(
    raw: raw::RawConfig,
    env: &HashMap<String, String>,
    problems: &mut Vec<Problem>,
) -> Option<Config> {
    let lookup = |name: &str| env.get(name).cloned();
    let resolve =
        |problems: &mut Vec<Problem>, location: String, reference: &str| -> Option<Secret> {
            match secret::resolve(reference, &lookup) {
                Ok((secret, origin)) => {
                    if origin == secret::Origin::Literal {
                        problems.push(Problem::warning(
                            location,
                            "literal secret in the config; prefer `env:NAME` or `file:/path`",
                        ));
                    }
                    Some(secret)
                }
                Err(e) => {
                    problems.push(Problem::error(location, e.to_string()));
                    None
                }
            }
        };

    let admin_tokens: Vec<AdminToken> = raw
        .admin
        .tokens
        .iter()
        .filter_map(|t| {
            let token = resolve(
                problems,
                format!("admin.tokens[{}].token", t.name),
                &t.token,
            )?;
            Some(AdminToken {
                name: t.name.clone(),
                token,
                role: t.role,
                groups: t.groups.clone(),
            })
        })
        .collect();

    let sources: Vec<SourceConfig> = raw
        .sources
        .iter()
        .map(|s| {
            let loc = format!("sources[{}]", s.name);
            let secrets: Vec<Secret> = s
                .verify
                .secrets
                .iter()
                .enumerate()
                .filter_map(|(i, r)| resolve(problems, format!("{loc}.verify.secrets[{i}]"), r))
                .collect();
            SourceConfig {
                name: s.name.clone(),
                format: s.format,
                verify: VerifyConfig {
                    scheme: s.verify.scheme,
                    header: s.verify.header.clone().unwrap_or_default(),
                    prefix: s.verify.prefix.clone().unwrap_or_default(),
                    encoding: s.verify.encoding.unwrap_or_default(),
                    secrets,
                    tolerance: s.verify.tolerance.unwrap_or(Duration::from_secs(300)),
                    param: s
                        .verify
                        .param
                        .clone()
                        .unwrap_or_else(|| DEFAULT_TOKEN_PARAM.into()),
                    oidc: (s.verify.scheme == SchemeKind::Oidc).then(|| OidcConfig {
                        issuer: s.verify.issuer.clone().unwrap_or_default(),
                        audience: s.verify.audience.clone().unwrap_or_default(),
                        jwks_url: s.verify.jwks_url.clone(),
                        leeway: s.verify.leeway.unwrap_or(DEFAULT_LEEWAY),
                        claims: s.verify.claims.clone(),
                    }),
                },
                fields: s
                    .fields
                    .iter()
                    .filter_map(|(k, v)| Some((Field::from_name(k)?, v.clone())))
                    .collect(),
                type_header: s.type_header.clone(),
                delivery_header: s.delivery_header.clone(),
            }
        })
        .collect();

    let targets: Vec<TargetConfig> = raw
        .targets
        .iter()
        .filter_map(|t| {
            let loc = format!("targets[{}]", t.name);
            let auth = match (&t.token, &t.api_key, &t.username, &t.password) {
                (None, None, None, None) => TargetAuth::Anonymous,
                (Some(tok), None, None, None) => {
                    TargetAuth::Bearer(resolve(problems, format!("{loc}.token"), tok)?)
                }
                (None, Some(key), None, None) => {
                    TargetAuth::ApiKey(resolve(problems, format!("{loc}.api_key"), key)?)
                }
                (None, None, Some(user), Some(pw)) => TargetAuth::Basic {
                    username: user.clone(),
                    password: resolve(problems, format!("{loc}.password"), pw)?,
                },
                _ => {
                    problems.push(Problem::error(
                        loc,
                        "set exactly one of `token`, `api_key`, or `username` with `password`",
                    ));
                    return None;
                }
            };
            Some(TargetConfig {
                name: t.name.clone(),
                kind: t.kind,
                url: reqwest::Url::parse(&t.url).ok()?,
                auth,
                timeout: t.timeout.unwrap_or(Duration::from_secs(30)),
                max_concurrency: t.max_concurrency.unwrap_or(8),
                breaker: BreakerConfig {
                    failures: t
                        .circuit_breaker
                        .as_ref()
                        .and_then(|b| b.failures)
                        .unwrap_or(5),
                    cool_down: t
                        .circuit_breaker
                        .as_ref()
                        .and_then(|b| b.cool_down)
                        .unwrap_or(Duration::from_secs(30)),
                },
                dry_run: t.dry_run,
            })
        })
        .collect();

    let listen = match raw.server.listen.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(e) => {
            problems.push(Problem::error(
                "server.listen",
                format!("`{}` is not an address:port ({e})", raw.server.listen),
            ));
            None
        }
    };
    let store = store_url::parse_store_url(&raw.store.url)
        .map_err(|why| problems.push(Problem::error("store.url", why)))
        .ok();
    let retry = RetryPolicy {
        max_attempts: raw.defaults.retry.max_attempts.unwrap_or(10),
        initial_backoff: raw
            .defaults
            .retry
            .initial_backoff
            .unwrap_or(Duration::from_secs(1)),
        max_backoff: raw
            .defaults
            .retry
            .max_backoff
            .unwrap_or(Duration::from_secs(300)),
    };
    check_retry("defaults.retry", &retry, problems);
    if raw
        .audit
        .retain
        .is_some_and(|r| r < Duration::from_secs(3600))
    {
        problems.push(Problem::error(
            "audit.retain",
            "keeps less than an hour of records; the trail is the record of what happened",
        ));
    }
    if raw.audit.rejections_every.is_zero() {
        problems.push(Problem::error(
            "audit.rejections_every",
            "must be longer than zero: refused requests would each be a durable write",
        ));
    }
    check_worker(&raw.worker, problems);
    check_names(
        "admin.tokens",
        raw.admin.tokens.iter().map(|t| t.name.as_str()),
        problems,
    );
    check_sources(&raw.sources, listen, problems);
    check_targets(&raw.targets, problems);

    let rules = check_rules(&raw, &retry, env, problems);
    check_approvers(&raw.rules, &raw.admin.tokens, problems);
    let freezes = check_freezes(&raw.freezes, &raw.targets, problems);
    let protections = check_protections(&raw.protections, &raw.targets, env, problems);
    check_names(
        "notifications",
        raw.notifications.iter().map(|n| n.name.as_str()),
        problems,
    );
    let rule_names = raw.rules.iter().map(|r| r.name.as_str()).collect();
    let notifications =
        notifications::check_notifications(&raw.notifications, &rule_names, &resolve, problems);
    let public_url = raw
        .server
        .public_url
        .as_deref()
        .and_then(|u| match reqwest::Url::parse(u) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                Some(url.as_str().trim_end_matches('/').to_string())
            }
            _ => {
                problems.push(Problem::error(
                    "server.public_url",
                    format!("`{u}` is not an absolute http(s) URL"),
                ));
                None
            }
        });

    let console = console::check_console(
        raw.server.console,
        raw.server.session_ttl,
        public_url.as_deref(),
        &raw.auth,
        problems,
    );

    let tracing = traces::check_tracing(&raw.tracing, env, problems);

    Some(Config {
        server: ServerConfig {
            listen: listen?,
            max_body_bytes: usize::try_from(raw.server.max_body_bytes).unwrap_or(usize::MAX),
            shutdown_grace: raw.server.shutdown_grace,
            public_url,
        },
        store: store?,
        defaults: Defaults {
            max_chain_depth: raw.defaults.max_chain_depth,
            dedupe_window: raw.defaults.dedupe_window,
            retry,
        },
        worker: WorkerConfig {
            lease: raw.worker.lease,
            concurrency: raw.worker.concurrency,
            poll_interval: raw.worker.poll_interval,
        },
        admin_tokens,
        audit_retain: raw.audit.retain,
        audit_rejections_every: raw.audit.rejections_every,
        sources,
        targets,
        rules,
        freezes,
        protections,
        notifications,
        console,
        tracing,
    })
}

/// A rule's approval as its jobs keep it; a count of zero would approve nothing, and
/// a quorum of no group is the plain `count` written another way.
fn approval_policy(loc: &str, a: &raw::RawApproval, problems: &mut Vec<Problem>) -> ApprovalPolicy {
    let loc = format!("{loc}.approval");
    if !a.all_of.is_empty() && (a.count.is_some() || !a.groups.is_empty()) {
        problems.push(Problem::error(
            &loc,
            "set either `count` and `groups`, or `all_of`, not both",
        ));
    }
    let count = a.count.unwrap_or(1);
    let counts = std::iter::once((format!("{loc}.count"), count)).chain(
        a.all_of
            .iter()
            .enumerate()
            .map(|(i, q)| (format!("{loc}.all_of[{i}].count"), q.count)),
    );
    for (at, n) in counts {
        if n == 0 {
            problems.push(Problem::error(at, "must be at least 1"));
        }
    }
    for (i, q) in a.all_of.iter().enumerate() {
        if q.groups.is_empty() {
            problems.push(Problem::error(
                format!("{loc}.all_of[{i}].groups"),
                "names no group",
            ));
        }
    }
    ApprovalPolicy {
        count,
        groups: a.groups.clone(),
        timeout_ms: a.timeout.map(millis),
        allow_self: a.allow_self,
        all_of: a
            .all_of
            .iter()
            .map(|q| Quorum {
                groups: q.groups.clone(),
                count: q.count,
            })
            .collect(),
        protections: Vec::new(),
    }
}

/// A rule's gate, checked: its correlation fields exist and every event it names can
/// carry them, its window is set when it requires evidence, and every condition has
/// a distinct name and a source that exists. Anything else would be a condition that
/// can never be met, found only when a promotion waits for it forever.
fn check_gate(
    loc: &str,
    rule: &RawRule,
    g: &raw::RawGate,
    sources: &[raw::RawSource],
    problems: &mut Vec<Problem>,
) -> GateConfig {
    let loc = format!("{loc}.gate");
    let mut correlate = Vec::new();
    for name in g.correlate.clone().unwrap_or_else(|| vec!["digest".into()]) {
        match Field::from_name(&name) {
            Some(f) if !correlate.contains(&f) => correlate.push(f),
            Some(_) => problems.push(Problem::error(
                format!("{loc}.correlate"),
                format!("`{name}` is listed twice"),
            )),
            None => problems.push(Problem::error(
                format!("{loc}.correlate"),
                format!("`{name}` is not a subject field ({})", field_names()),
            )),
        }
    }
    if g.correlate.as_ref().is_some_and(Vec::is_empty) {
        problems.push(Problem::error(
            format!("{loc}.correlate"),
            "names no field: every event would be about the same artifact",
        ));
    }
    // What format an event of these sources has; `None` for gantry's own events,
    // which carry every field of the promotion's result.
    let formats = |names: Option<&raw::OneOrMany>| -> Vec<(String, Option<Format>)> {
        match names {
            Some(n) => n
                .patterns()
                .iter()
                .map(|n| {
                    let format = sources.iter().find(|s| &s.name == n).map(|s| s.format);
                    (n.clone(), format)
                })
                .collect(),
            None => sources
                .iter()
                .map(|s| (s.name.clone(), Some(s.format)))
                .collect(),
        }
    };
    let carried = |at: String, names: Option<&raw::OneOrMany>, problems: &mut Vec<Problem>| {
        for (source, format) in formats(names) {
            for f in &correlate {
                if format.is_some_and(|fmt| !fmt.carries(*f)) {
                    problems.push(Problem::error(
                        at.clone(),
                        format!(
                            "source `{source}` sends events that never carry `{}`, which the gate correlates on",
                            f.name()
                        ),
                    ));
                }
            }
        }
    };
    if rule.source.is_some() {
        carried(format!("{loc}.correlate"), rule.source.as_ref(), problems);
    }
    if !g.require.is_empty() && g.within.is_none_or(|w| w.is_zero()) {
        problems.push(Problem::error(
            format!("{loc}.within"),
            "must be set (and not zero) when the gate requires evidence",
        ));
    }
    check_names(
        &format!("{loc}.require"),
        g.require.iter().map(|c| c.name.as_str()),
        problems,
    );
    for c in g.require.iter().filter(|c| c.signature.is_none()) {
        let at = format!("{loc}.require[{}]", c.name);
        for name in c.source.iter().flat_map(|s| s.patterns()) {
            if name != INTERNAL_SOURCE && !sources.iter().any(|s| &s.name == name) {
                problems.push(Problem::error(
                    format!("{at}.source"),
                    format!("unknown source `{name}`: the condition can never be met"),
                ));
            }
        }
        carried(format!("{at}.source"), c.source.as_ref(), problems);
    }
    GateConfig {
        correlate,
        within: g.within.unwrap_or_default(),
        soak: g.soak.filter(|d| !d.is_zero()),
    }
}

fn field_names() -> String {
    Field::ALL.map(Field::name).join(", ")
}

/// An approval group no `operate` token is in can never be satisfied by it: worth
/// saying, though a token may join the group at the next reload.
fn check_approvers(rules: &[RawRule], tokens: &[raw::RawToken], problems: &mut Vec<Problem>) {
    for r in rules {
        let quorum_groups = r
            .approval
            .iter()
            .flat_map(|a| &a.all_of)
            .flat_map(|q| &q.groups);
        for group in r
            .approval
            .iter()
            .flat_map(|a| &a.groups)
            .chain(quorum_groups)
        {
            let held = tokens
                .iter()
                .any(|t| t.role >= Role::Operate && t.groups.contains(group));
            if !held {
                problems.push(Problem::warning(
                    format!("rules[{}].approval.groups", r.name),
                    format!("no `operate` token is in group `{group}`"),
                ));
            }
        }
    }
}

/// A duration as the store keeps it, in milliseconds.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn check_retry(loc: &str, retry: &RetryPolicy, problems: &mut Vec<Problem>) {
    if retry.max_attempts == 0 {
        problems.push(Problem::error(
            format!("{loc}.max_attempts"),
            "must be at least 1",
        ));
    }
    if retry.initial_backoff > retry.max_backoff {
        problems.push(Problem::error(
            format!("{loc}.initial_backoff"),
            "is longer than max_backoff",
        ));
    }
}

fn check_worker(w: &raw::RawWorker, problems: &mut Vec<Problem>) {
    if w.concurrency == 0 {
        problems.push(Problem::error("worker.concurrency", "must be at least 1"));
    }
    if w.lease < Duration::from_millis(100) {
        problems.push(Problem::error("worker.lease", "must be at least 100ms"));
    }
    if w.poll_interval.is_zero() {
        problems.push(Problem::error("worker.poll_interval", "must not be zero"));
    }
}

/// Names appear in URLs, CLI flags and audit records: keep them plain and unique.
fn check_names<'a>(
    section: &str,
    names: impl Iterator<Item = &'a str>,
    problems: &mut Vec<Problem>,
) {
    let mut seen = HashSet::new();
    for name in names {
        let plain = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if !plain {
            problems.push(Problem::error(
                format!("{section}[{name}].name"),
                "must be non-empty and use only letters, digits, `-`, `_` and `.`",
            ));
        }
        if !seen.insert(name) {
            problems.push(Problem::error(
                format!("{section}[{name}].name"),
                "is defined more than once",
            ));
        }
    }
}

/// The built-in source of internal `gantry.promoted` events.
pub const INTERNAL_SOURCE: &str = "gantry";

fn check_sources(
    sources: &[raw::RawSource],
    listen: Option<SocketAddr>,
    problems: &mut Vec<Problem>,
) {
    check_names("sources", sources.iter().map(|s| s.name.as_str()), problems);
    for s in sources {
        let loc = format!("sources[{}]", s.name);
        if s.name == INTERNAL_SOURCE {
            problems.push(Problem::error(
                format!("{loc}.name"),
                "`gantry` is the built-in source of internal events",
            ));
        }
        let v = &s.verify;
        let has_header = v.header.as_deref().is_some_and(|h| !h.is_empty());
        match v.scheme {
            SchemeKind::None => {
                let loopback = listen.is_some_and(|a| a.ip().is_loopback());
                if loopback {
                    problems.push(Problem::warning(
                        format!("{loc}.verify.scheme"),
                        "`none` accepts unsigned requests; use it only for loopback experiments",
                    ));
                } else {
                    problems.push(Problem::error(
                        format!("{loc}.verify.scheme"),
                        "`none` is refused unless server.listen is a loopback address",
                    ));
                }
            }
            SchemeKind::HmacSha256 | SchemeKind::Token if !has_header => {
                problems.push(Problem::error(
                    format!("{loc}.verify.header"),
                    "names no header to read the signature from",
                ));
            }
            SchemeKind::Github | SchemeKind::StandardWebhooks if v.header.is_some() => {
                problems.push(Problem::error(
                    format!("{loc}.verify.header"),
                    "this scheme's headers are fixed by the sender; remove `header`",
                ));
            }
            _ => {}
        }
        check_keyless(&loc, v, problems);
        if !matches!(v.scheme, SchemeKind::None | SchemeKind::Oidc) && v.secrets.is_empty() {
            problems.push(Problem::error(
                format!("{loc}.verify.secrets"),
                "lists no secret: every request would be rejected",
            ));
        }
        if v.scheme != SchemeKind::HmacSha256 && (v.prefix.is_some() || v.encoding.is_some()) {
            problems.push(Problem::error(
                format!("{loc}.verify"),
                "`prefix` and `encoding` apply only to the hmac-sha256 scheme",
            ));
        }
        if v.scheme != SchemeKind::StandardWebhooks && v.tolerance.is_some() {
            problems.push(Problem::error(
                format!("{loc}.verify.tolerance"),
                "applies only to the standard-webhooks scheme",
            ));
        }
        for (key, pointer) in &s.fields {
            if Field::from_name(key).is_none() {
                problems.push(Problem::error(
                    format!("{loc}.fields.{key}"),
                    "is not a subject field (repo, image, tag, digest, path, build_name, build_number)",
                ));
            }
            if !(pointer.is_empty() || pointer.starts_with('/')) {
                problems.push(Problem::error(
                    format!("{loc}.fields.{key}"),
                    format!("`{pointer}` is not a JSON pointer (it must start with `/`)"),
                ));
            }
        }
        if !s.format.maps_fields() && !s.fields.is_empty() {
            problems.push(Problem::error(
                format!("{loc}.fields"),
                "applies only to the generic, github and cloudevents formats",
            ));
        }
        if !matches!(s.format, Format::Generic | Format::Github) && s.delivery_header.is_some() {
            problems.push(Problem::error(
                format!("{loc}.delivery_header"),
                "applies only to the generic and github formats",
            ));
        }
        if s.format != Format::Generic && s.type_header.is_some() {
            problems.push(Problem::error(
                format!("{loc}.type_header"),
                "applies only to the generic format",
            ));
        }
    }
}

/// The options of the schemes for senders without a way to sign (SPEC §16), each set
/// only where it applies, and an `oidc` source's trust spelled out in full.
fn check_keyless(loc: &str, v: &raw::RawVerify, problems: &mut Vec<Problem>) {
    let at = |key: &str| format!("{loc}.verify.{key}");
    match (&v.param, v.scheme) {
        (Some(p), SchemeKind::UrlToken) if !is_plain_param(p) => problems.push(Problem::error(
            at("param"),
            "must be non-empty and use only letters, digits, `-`, `_` and `.`",
        )),
        (Some(_), scheme) if scheme != SchemeKind::UrlToken => problems.push(Problem::error(
            at("param"),
            "applies only to the url-token scheme",
        )),
        _ => {}
    }
    if matches!(v.scheme, SchemeKind::UrlToken | SchemeKind::Oidc) && v.header.is_some() {
        problems.push(Problem::error(
            at("header"),
            "this scheme reads no header you can name (url-token: the query; oidc: Authorization); remove `header`",
        ));
    }
    let oidc_only = [
        ("issuer", v.issuer.is_some()),
        ("audience", v.audience.is_some()),
        ("jwks_url", v.jwks_url.is_some()),
        ("leeway", v.leeway.is_some()),
        ("claims", !v.claims.is_empty()),
    ];
    if v.scheme != SchemeKind::Oidc {
        for (key, _) in oidc_only.iter().filter(|(_, set)| *set) {
            problems.push(Problem::error(at(key), "applies only to the oidc scheme"));
        }
        return;
    }
    if !v.secrets.is_empty() {
        problems.push(Problem::error(
            at("secrets"),
            "an oidc source trusts its issuer's published keys and holds no secret; remove `secrets`",
        ));
    }
    match v.issuer.as_deref() {
        None | Some("") => problems.push(Problem::error(
            at("issuer"),
            "is required: the identity provider whose tokens are trusted",
        )),
        Some(issuer) => check_key_url(&at("issuer"), issuer, problems),
    }
    if v.audience.as_deref().is_none_or(str::is_empty) {
        problems.push(Problem::error(
            at("audience"),
            "is required: without it a token the issuer minted for any other service would do",
        ));
    }
    if let Some(url) = &v.jwks_url {
        check_key_url(&at("jwks_url"), url, problems);
    }
    if v.leeway.is_some_and(|l| l > MAX_LEEWAY) {
        problems.push(Problem::error(
            at("leeway"),
            format!(
                "is more than {}: expired tokens would stay good that much longer",
                humantime::format_duration(MAX_LEEWAY)
            ),
        ));
    }
    for pointer in v.claims.keys().filter(|p| !p.starts_with('/')) {
        problems.push(Problem::error(
            format!("{loc}.verify.claims.{pointer}"),
            "is not a JSON pointer (it must start with `/`)",
        ));
    }
}

/// Only `oidc` sources' events carry claims: `claims` on a trigger or a condition
/// none of whose sources verifies tokens can never match.
fn check_claims_reachable(
    loc: &str,
    source: Option<&OneOrMany>,
    claims: &BTreeMap<String, OneOrMany>,
    sources: &[raw::RawSource],
    problems: &mut Vec<Problem>,
) {
    if claims.is_empty() {
        return;
    }
    let oidc = |s: &&raw::RawSource| s.verify.scheme == SchemeKind::Oidc;
    let reachable = match source {
        Some(names) => sources
            .iter()
            .filter(oidc)
            .any(|s| names.patterns().contains(&s.name)),
        None => sources.iter().any(|s| oidc(&s)),
    };
    if !reachable {
        problems.push(Problem::warning(
            format!("{loc}.claims"),
            "no source it listens to uses the oidc scheme, so no event carries claims to match",
        ));
    }
}

fn is_plain_param(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// An issuer, or where its keys are: `https`, or plain `http` to this machine only
/// (an issuer a test or a local setup runs), which is worth a warning.
fn check_key_url(location: &str, url: &str, problems: &mut Vec<Problem>) {
    match reqwest::Url::parse(url) {
        Ok(u) => match key_url_allowed(&u) {
            Ok(KeyUrl::Https) => {}
            Ok(KeyUrl::LoopbackHttp) => problems.push(Problem::warning(
                location,
                "plain http: keys fetched so are trusted only because the issuer is on this machine",
            )),
            Err(why) => problems.push(Problem::error(location, why)),
        },
        Err(e) => problems.push(Problem::error(
            location,
            format!("`{url}` is not a URL ({e})"),
        )),
    }
}

/// How an OIDC issuer's documents may be fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUrl {
    Https,
    /// Plain http to a loopback address or `localhost`.
    LoopbackHttp,
}

/// Whether gantry may fetch an issuer's discovery document or keys from `url`: over
/// https, or over plain http only from this machine. The keys decide whom gantry
/// trusts, so anything else could be swapped on the way. Used for the configured URLs
/// and again for the `jwks_uri` a discovery document names and every redirect.
pub fn key_url_allowed(url: &reqwest::Url) -> Result<KeyUrl, String> {
    let host = url.host_str().unwrap_or_default();
    // An IPv6 host is written in brackets.
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || ip
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" if !host.is_empty() => Ok(KeyUrl::Https),
        "http" if loopback => Ok(KeyUrl::LoopbackHttp),
        "http" => Err("must be https (plain http only to a loopback address)".into()),
        _ => Err("must be an https URL".into()),
    }
}

fn check_targets(targets: &[raw::RawTarget], problems: &mut Vec<Problem>) {
    check_names("targets", targets.iter().map(|t| t.name.as_str()), problems);
    for t in targets {
        let loc = format!("targets[{}]", t.name);
        match reqwest::Url::parse(&t.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            Ok(_) => problems.push(Problem::error(
                format!("{loc}.url"),
                "must be an http or https URL",
            )),
            Err(e) => problems.push(Problem::error(
                format!("{loc}.url"),
                format!("`{}` is not a URL ({e})", t.url),
            )),
        }
        if t.kind == TargetKind::Oci && t.api_key.is_some() {
            problems.push(Problem::error(
                format!("{loc}.api_key"),
                "oci targets take `token`, or `username` and `password`",
            ));
        }
        if t.max_concurrency == Some(0) {
            problems.push(Problem::error(
                format!("{loc}.max_concurrency"),
                "must be at least 1",
            ));
        }
        if t.timeout.is_some_and(|d| d.is_zero()) {
            problems.push(Problem::error(format!("{loc}.timeout"), "must not be zero"));
        }
    }
}

fn check_rules(
    raw: &raw::RawConfig,
    defaults: &RetryPolicy,
    env: supply::Env<'_>,
    problems: &mut Vec<Problem>,
) -> Vec<RuleConfig> {
    let (rules, sources, targets) = (&raw.rules, &raw.sources, &raw.targets);
    check_names("rules", rules.iter().map(|r| r.name.as_str()), problems);
    rules
        .iter()
        .map(|r| {
            let loc = format!("rules[{}]", r.name);
            for name in r.source.iter().flat_map(|s| s.patterns()) {
                if name != INTERNAL_SOURCE && !sources.iter().any(|s| &s.name == name) {
                    problems.push(Problem::error(
                        format!("{loc}.source"),
                        format!("unknown source `{name}`"),
                    ));
                }
            }
            match targets.iter().find(|t| t.name == r.action.target) {
                None => problems.push(Problem::error(
                    format!("{loc}.action.target"),
                    format!("unknown target `{}`", r.action.target),
                )),
                Some(t) if t.kind == TargetKind::Oci && r.action.kind != ActionKind::Promote => {
                    problems.push(Problem::error(
                        format!("{loc}.action.type"),
                        format!("oci target `{}` only takes `promote`", t.name),
                    ))
                }
                Some(t) => {
                    if let Some(to) = &r.action.to_target {
                        let oci = |n: &str| {
                            targets
                                .iter()
                                .any(|t| t.name == n && t.kind == TargetKind::Oci)
                        };
                        if t.kind != TargetKind::Oci || !oci(to) {
                            problems.push(Problem::error(
                                format!("{loc}.action.to_target"),
                                format!(
                                    "`to_target` promotes from one oci target to another; `{to}` and `{}` must both be oci targets",
                                    t.name
                                ),
                            ));
                        }
                    }
                }
            }
            let o = r.retry.clone().unwrap_or_default();
            let retry = RetryPolicy {
                max_attempts: o.max_attempts.unwrap_or(defaults.max_attempts),
                initial_backoff: o.initial_backoff.unwrap_or(defaults.initial_backoff),
                max_backoff: o.max_backoff.unwrap_or(defaults.max_backoff),
            };
            check_retry(&format!("{loc}.retry"), &retry, problems);
            let approval = r.approval.as_ref().map(|a| approval_policy(&loc, a, problems));
            if let Some(pointer) = &r.initiator
                && !(pointer.is_empty() || pointer.starts_with('/'))
            {
                problems.push(Problem::error(
                    format!("{loc}.initiator"),
                    format!("`{pointer}` is not a JSON pointer (it starts with `/`)"),
                ));
            }
            check_claims_reachable(&loc, r.source.as_ref(), &r.claims, sources, problems);
            for c in r.gate.iter().flat_map(|g| &g.require) {
                let at = format!("{loc}.gate.require[{}]", c.name);
                check_claims_reachable(&at, c.source.as_ref(), &c.claims, sources, problems);
            }
            let gate = r.gate.as_ref().map(|g| check_gate(&loc, r, g, sources, problems));
            let signatures = supply::signature_conditions(&loc, r, env, problems);
            let attest = supply::rule_attest_key(&loc, r, env, problems);
            RuleConfig {
                raw: r.clone(),
                retry,
                approval,
                gate,
                signatures,
                attest,
            }
        })
        .collect()
}

/// The destinations a freeze or protection at `loc` names, its targets known and its
/// globs compiled (each problem named; all destinations when one is wrong, the config
/// being refused anyway).
fn destinations(
    loc: &str,
    to_repos: Option<&[String]>,
    names: Option<&[String]>,
    targets: &[raw::RawTarget],
    problems: &mut Vec<Problem>,
) -> Destinations {
    for t in names.into_iter().flatten() {
        if !targets.iter().any(|known| &known.name == t) {
            problems.push(Problem::error(
                format!("{loc}.targets"),
                format!("unknown target `{t}`"),
            ));
        }
    }
    Destinations::new(to_repos, names)
        .map_err(|e| problems.push(Problem::error(format!("{loc}.to_repos"), e.to_string())))
        .unwrap_or_default()
}

/// Builds the config's protections; one with a problem is left out (and the problem
/// named, so the config is refused).
fn check_protections(
    protections: &[raw::RawProtection],
    targets: &[raw::RawTarget],
    env: supply::Env<'_>,
    problems: &mut Vec<Problem>,
) -> Vec<Protection> {
    check_names(
        "protections",
        protections.iter().map(|p| p.name.as_str()),
        problems,
    );
    protections
        .iter()
        .filter_map(|p| {
            let loc = format!("protections[{}]", p.name);
            let before = problems.len();
            let scope = destinations(
                &loc,
                p.to_repos.as_deref(),
                p.targets.as_deref(),
                targets,
                problems,
            );
            let approval = p
                .approval
                .as_ref()
                .map(|a| approval_policy(&loc, a, problems));
            let soak_ms = p.soak.filter(|d| !d.is_zero()).map(millis);
            let attest = p
                .attest
                .as_ref()
                .and_then(|a| supply::attest_key(&loc, a, env, problems));
            let checked = problems.len() == before;
            if approval.is_none() && soak_ms.is_none() && attest.is_none() {
                problems.push(Problem::warning(
                    loc,
                    "has neither `approval`, `soak` nor `attest`: it protects nothing",
                ));
            }
            checked.then(|| Protection {
                name: p.name.clone(),
                scope,
                approval,
                soak_ms,
                attest,
            })
        })
        .collect()
}

/// Builds the config's freezes; a freeze with a problem is left out (and the problem
/// named, so the config is refused).
fn check_freezes(
    freezes: &[raw::RawFreeze],
    targets: &[raw::RawTarget],
    problems: &mut Vec<Problem>,
) -> Vec<Freeze> {
    check_names("freezes", freezes.iter().map(|f| f.name.as_str()), problems);
    freezes
        .iter()
        .filter_map(|f| {
            let loc = format!("freezes[{}]", f.name);
            let before = problems.len();
            let scope = destinations(&loc, f.to_repos.as_deref(), f.targets.as_deref(), targets, problems);
            let mut fail = |key: &str, why: String| {
                problems.push(Problem::error(format!("{loc}.{key}"), why));
            };
            let tz_name = f.timezone.as_deref().unwrap_or("UTC");
            let tz = freeze::parse_tz(tz_name)
                .map_err(|e| fail("timezone", e.to_string()))
                .ok();
            let schedule = match (&f.cron, &f.from, &f.until) {
                (Some(cron), None, None) => {
                    let start = freeze::parse_cron(cron)
                        .map_err(|e| fail("cron", e.to_string()))
                        .ok();
                    let end = match (f.duration, &f.end_cron) {
                        (Some(d), None) if d.is_zero() => {
                            fail("duration", "must not be zero".into());
                            None
                        }
                        (Some(d), None) => chrono::Duration::from_std(d)
                            .map(freeze::End::After)
                            .map_err(|e| fail("duration", e.to_string()))
                            .ok(),
                        (None, Some(end)) => freeze::parse_cron(end)
                            .map(|c| freeze::End::Cron(Box::new(c)))
                            .map_err(|e| fail("end_cron", e.to_string()))
                            .ok(),
                        _ => {
                            fail("cron", "needs exactly one of `duration` and `end_cron`".into());
                            None
                        }
                    };
                    match (start, end, tz) {
                        (Some(start), Some(end), Some(tz)) => Some(freeze::Schedule::Recurring {
                            start: Box::new(start),
                            end,
                            tz,
                        }),
                        _ => None,
                    }
                }
                (None, Some(from), Some(until)) => {
                    if f.duration.is_some() || f.end_cron.is_some() {
                        fail("from", "a one-off window takes no `duration` or `end_cron`".into());
                    }
                    let at = |key: &str, s: &str, fail: &mut dyn FnMut(&str, String)| {
                        tz.and_then(|tz| {
                            freeze::parse_instant(s, tz)
                                .map_err(|e| fail(key, e.to_string()))
                                .ok()
                        })
                    };
                    match (at("from", from, &mut fail), at("until", until, &mut fail)) {
                        (Some(start), Some(end)) if start >= end => {
                            fail("from", format!("`from` ({from}) is not before `until` ({until})"));
                            None
                        }
                        (Some(start), Some(end)) => Some(freeze::Schedule::Once(freeze::Window { start, end })),
                        _ => None,
                    }
                }
                _ => {
                    fail(
                        "cron",
                        "needs either `cron` (with `duration` or `end_cron`) or both `from` and `until`"
                            .into(),
                    );
                    None
                }
            };
            let schedule = schedule.filter(|_| problems.len() == before)?;
            Some(Freeze {
                name: f.name.clone(),
                scope,
                schedule,
                override_groups: f.override_groups.clone().unwrap_or_default(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(toml: &str, env: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gantry.toml");
        std::fs::write(&path, toml).unwrap();
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        load(&ConfigPath::Explicit(path), &env)
    }

    fn errors(r: Result<Loaded, ConfigError>) -> String {
        match r {
            Err(ConfigError::Invalid(p)) => p.to_string(),
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn embedded_defaults_alone_are_valid() {
        let loaded = load_str("", &[]).unwrap();
        let c = loaded.config;
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.server.max_body_bytes, 1_048_576);
        assert_eq!(c.store, StoreUrl::Sqlite("data/gantry.db".into()));
        assert_eq!(c.defaults.dedupe_window, Duration::from_secs(86_400));
        assert_eq!(c.defaults.retry.max_attempts, 10);
        assert_eq!(c.worker.lease, Duration::from_secs(30));
    }

    #[test]
    fn environment_overrides_the_file() {
        let loaded = load_str(
            "[server]\nlisten = \"127.0.0.1:9000\"\n",
            &[
                ("GANTRY__SERVER__LISTEN", "127.0.0.1:9100"),
                ("GANTRY__WORKER__LEASE", "45s"),
            ],
        )
        .unwrap();
        assert_eq!(loaded.config.server.listen.to_string(), "127.0.0.1:9100");
        assert_eq!(loaded.config.worker.lease, Duration::from_secs(45));
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = errors(load_str("[server]\nlisen = \"x\"\n", &[]));
        assert!(e.contains("server") && e.contains("lisen"), "{e}");
        let e = errors(load_str("", &[("GANTRY__STORE__URLL", "x")]));
        assert!(e.contains("urll"), "{e}");
    }

    #[test]
    fn rule_references_and_secrets_are_checked() {
        let e = errors(load_str(
            r#"
            [[sources]]
            name = "ci"
            format = "generic"
            verify = { scheme = "hmac-sha256", header = "X-Sig", secrets = ["env:NOPE"] }

            [[rules]]
            name = "r1"
            source = "cd"
            event = "x"
            action = { type = "promote", target = "jfrog", to_repo = "b" }
            "#,
            &[],
        ));
        assert!(
            e.contains("sources[ci].verify.secrets[0]: environment variable `NOPE` is not set"),
            "{e}"
        );
        assert!(e.contains("rules[r1].source: unknown source `cd`"), "{e}");
        assert!(
            e.contains("rules[r1].action.target: unknown target `jfrog`"),
            "{e}"
        );
    }

    #[test]
    fn literal_secrets_warn() {
        let loaded = load_str(
            r#"
            [[sources]]
            name = "ci"
            format = "generic"
            verify = { scheme = "token", header = "X-Token", secrets = ["abc"] }
            "#,
            &[],
        )
        .unwrap();
        assert_eq!(loaded.warnings.len(), 1);
        assert_eq!(loaded.warnings[0].location, "sources[ci].verify.secrets[0]");
    }

    #[test]
    fn keyless_schemes_take_their_own_options_only() {
        let e = errors(load_str(
            r#"
            [[sources]]
            name = "hub"
            format = "generic"
            verify = { scheme = "url-token", param = "to ken", secrets = ["env:HUB"] }

            [[sources]]
            name = "ci"
            format = "generic"
            verify = { scheme = "token", header = "X-Token", param = "t", issuer = "https://x", secrets = ["env:HUB"] }

            [[sources]]
            name = "gha"
            format = "generic"
            verify = { scheme = "oidc", issuer = "https://token.actions.githubusercontent.com", audience = "gantry", jwks_url = "http://keys.example.com/jwks" }
            "#,
            &[("HUB", "s")],
        ));
        for expected in [
            "sources[hub].verify.param: must be non-empty",
            "sources[ci].verify.param: applies only to the url-token scheme",
            "sources[ci].verify.issuer: applies only to the oidc scheme",
            "sources[gha].verify.jwks_url: must be https",
        ] {
            assert!(e.contains(expected), "missing `{expected}` in:\n{e}");
        }
        assert!(!e.contains("sources[gha].verify.secrets"), "{e}");

        let loaded = load_str(
            r#"
            [[sources]]
            name = "hub"
            format = "generic"
            verify = { scheme = "url-token", secrets = ["env:HUB"] }

            [[sources]]
            name = "gha"
            format = "generic"
            verify = { scheme = "oidc", issuer = "http://127.0.0.1:9", audience = "gantry" }

            [[targets]]
            name = "jfrog"
            kind = "artifactory"
            url = "http://127.0.0.1:1"

            [[rules]]
            name = "from-hub"
            source = "hub"
            claims = { "/repository" = "acme/api" }
            action = { type = "promote", target = "jfrog", to_repo = "b" }
            "#,
            &[("HUB", "s")],
        )
        .unwrap();
        let warned: Vec<&str> = loaded
            .warnings
            .iter()
            .map(|w| w.location.as_str())
            .collect();
        assert_eq!(
            warned,
            ["sources[gha].verify.issuer", "rules[from-hub].claims"]
        );
        let hub = &loaded.config.sources[0].verify;
        assert_eq!((hub.param.as_str(), hub.oidc.is_none()), ("token", true));
        let gha = loaded.config.sources[1].verify.oidc.as_ref().unwrap();
        assert_eq!(gha.leeway, DEFAULT_LEEWAY);
    }

    const APPROVAL_BASE: &str = r#"
        [[sources]]
        name = "ci"
        format = "generic"
        verify = { scheme = "token", header = "X-Token", secrets = ["env:CI"] }

        [[targets]]
        name = "jfrog"
        kind = "artifactory"
        url = "http://127.0.0.1:1"

        [[admin.tokens]]
        name = "alice"
        token = "env:ALICE"
        role = "operate"
        groups = ["release-managers"]
    "#;

    fn approval_rule(extra: &str) -> String {
        format!(
            r#"{APPROVAL_BASE}
            [[rules]]
            name = "r"
            source = "ci"
            action = {{ type = "promote", target = "jfrog", to_repo = "prod" }}
            {extra}
            "#
        )
    }

    const ENV: &[(&str, &str)] = &[("CI", "x"), ("ALICE", "y")];

    #[test]
    fn an_approval_is_kept_with_its_defaults() {
        let loaded = load_str(
            &approval_rule(r#"approval = { groups = ["release-managers"], timeout = "72h" }"#),
            ENV,
        )
        .unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let policy = loaded.config.rules[0].approval.clone().unwrap();
        assert_eq!(policy.count, 1);
        assert_eq!(policy.timeout_ms, Some(72 * 3_600_000));
        assert!(!policy.allow_self);
        assert_eq!(loaded.config.admin_tokens[0].groups, ["release-managers"]);
    }

    #[test]
    fn approval_problems_are_named() {
        let e = errors(load_str(&approval_rule("approval = { count = 0 }"), ENV));
        assert!(e.contains("rules[r].approval.count"), "{e}");
        let e = errors(load_str(&approval_rule("approval = { quorum = 2 }"), ENV));
        assert!(e.contains("quorum"), "{e}");
        let both = r#"approval = { count = 2, all_of = [{ groups = ["release-managers"] }] }"#;
        let e = errors(load_str(&approval_rule(both), ENV));
        assert!(
            e.contains("rules[r].approval") && e.contains("all_of"),
            "{e}"
        );
        let empty = r#"approval = { all_of = [{ groups = [], count = 0 }] }"#;
        let e = errors(load_str(&approval_rule(empty), ENV));
        assert!(e.contains("rules[r].approval.all_of[0].count"), "{e}");
        assert!(e.contains("rules[r].approval.all_of[0].groups"), "{e}");
        let quorum = r#"approval = { all_of = [{ groups = ["security"] }] }"#;
        let loaded = load_str(&approval_rule(quorum), ENV).unwrap();
        assert_eq!(loaded.warnings.len(), 1);
        assert_eq!(
            loaded.config.rules[0]
                .approval
                .clone()
                .unwrap()
                .all_of
                .len(),
            1
        );
        let e = errors(load_str(&approval_rule(r#"initiator = "sender""#), ENV));
        assert!(e.contains("rules[r].initiator"), "{e}");
        let loaded = load_str(
            &approval_rule(r#"approval = { groups = ["security"] }"#),
            ENV,
        )
        .unwrap();
        assert_eq!(loaded.warnings.len(), 1);
        assert_eq!(loaded.warnings[0].location, "rules[r].approval.groups");
        assert!(loaded.warnings[0].message.contains("security"));
    }

    #[test]
    fn freezes_are_checked_and_each_problem_names_its_freeze() {
        let e = errors(load_str(
            r#"
            [[freezes]]
            name = "bad-cron"
            cron = "0 25 * * FRI"
            duration = "62h"

            [[freezes]]
            name = "bad-tz"
            cron = "0 18 * * FRI"
            end_cron = "0 8 * * MON"
            timezone = "Europe/Pariss"

            [[freezes]]
            name = "both"
            cron = "0 18 * * FRI"
            duration = "1h"
            end_cron = "0 8 * * MON"

            [[freezes]]
            name = "neither"
            cron = "0 18 * * FRI"

            [[freezes]]
            name = "backwards"
            from = "2027-01-04T00:00:00Z"
            until = "2026-12-20T00:00:00Z"

            [[freezes]]
            name = "nowhere"
            targets = ["jfrog"]
            from = "2026-12-20T00:00:00Z"
            until = "2027-01-04T00:00:00Z"
            "#,
            &[],
        ));
        for expected in [
            "freezes[bad-cron].cron: invalid cron `0 25 * * FRI`",
            "freezes[bad-tz].timezone: unknown time zone `Europe/Pariss`",
            "freezes[both].cron: needs exactly one of `duration` and `end_cron`",
            "freezes[neither].cron: needs exactly one of `duration` and `end_cron`",
            "freezes[backwards].from: `from` (2027-01-04T00:00:00Z) is not before `until`",
            "freezes[nowhere].targets: unknown target `jfrog`",
        ] {
            assert!(e.contains(expected), "{expected} in {e}");
        }
    }

    #[test]
    fn a_valid_freeze_is_loaded() {
        let loaded = load_str(
            r#"
            [[freezes]]
            name = "weekend"
            to_repos = ["docker-prod"]
            cron = "0 18 * * FRI"
            end_cron = "0 8 * * MON"
            timezone = "Europe/Paris"
            override_groups = ["release-managers"]

            [[freezes]]
            name = "year-end"
            from = "2026-12-20T00:00"
            until = "2027-01-04T00:00"
            timezone = "Europe/Paris"
            "#,
            &[],
        )
        .unwrap();
        let f = &loaded.config.freezes;
        assert_eq!(f.len(), 2);
        assert!(f[0].covers("any", Some("docker-prod")));
        assert_eq!(f[0].override_groups, ["release-managers"]);
        let start = chrono::DateTime::parse_from_rfc3339("2026-12-19T23:00:00Z").unwrap();
        assert_eq!(
            f[1].active_at(start.to_utc()).map(|w| w.start),
            Some(start.to_utc())
        );
    }
}
