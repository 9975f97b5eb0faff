//! The command line: `serve`, `check`, `simulate`, `sign` work on the config;
//! `jobs …` talks to a running server's admin API. Exit codes: 0 ok, 1 failure,
//! 2 usage or config error.

mod admin;
mod verify;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

use crate::app::{self, Mode, Service};
use crate::config::TracingConfig;
use crate::config::{self, ConfigPath, Problem};
use crate::ingest::simulate;
use crate::rules::Coverage;
use crate::telemetry;

#[derive(Debug, Parser)]
#[command(
    name = "gantry",
    version,
    about = "Signed webhooks in, promotions out."
)]
struct Cli {
    /// Config file [default: config/gantry.toml, else the embedded defaults]
    #[arg(long, global = true, env = "GANTRY_CONFIG")]
    config: Option<PathBuf>,

    /// The running server, for the admin commands.
    #[arg(
        long,
        global = true,
        env = "GANTRY_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,

    /// An admin token, for the admin commands.
    #[arg(long, global = true, env = "GANTRY_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// How long an admin command waits for the server's answer (each request).
    #[arg(long, global = true, env = "GANTRY_TIMEOUT", default_value = "30s",
        value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP server and the workers.
    Serve {
        /// Serve HTTP only; leave the jobs to workers-only processes.
        #[arg(long, conflicts_with = "workers_only")]
        no_workers: bool,
        /// Run the workers only, without the HTTP server.
        #[arg(long)]
        workers_only: bool,
    },
    /// Validate the config: parse it, resolve secrets, compile every rule.
    Check,
    /// Show, offline, which promotions an event would queue.
    Simulate {
        /// The source the event would arrive on.
        #[arg(long)]
        source: String,
        /// A file holding the request body.
        #[arg(long)]
        event: PathBuf,
        /// A request header as `Name: value`; repeatable.
        #[arg(long = "header", value_name = "K:V")]
        headers: Vec<String>,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Operate on jobs through the admin API of a running server.
    #[command(subcommand)]
    Jobs(admin::JobsCommand),
    /// Query, verify and export the audit trail of a running server.
    #[command(subcommand)]
    Audit(admin::AuditCommand),
    /// Start, end and list freeze windows on a running server.
    #[command(subcommand)]
    Freeze(admin::FreezeCommand),
    /// List and retry notifications, and enable sinks, on a running server.
    #[command(subcommand)]
    Notifications(admin::NotificationsCommand),
    /// Check that gantry attested the promotion of an image digest: read its
    /// attestations from the registry, print the predicate of the one a key
    /// verifies (exit 1 when none does).
    VerifyPromotion {
        /// `host[:port]/repository@sha256:<hex>` (https unless written `http://…`),
        /// or with `--target`, the repository in that target.
        reference: String,
        /// A PEM public key file (or `env:NAME`); repeatable, any one may verify.
        #[arg(long = "key", required = true)]
        keys: Vec<String>,
        /// Read through this configured target (its URL and credentials).
        #[arg(long)]
        target: Option<String>,
    },
    /// Print the headers a source's scheme expects for a body, one `Name: value` per
    /// line, signed with the source's first secret (for curl and for testing senders);
    /// for a `url-token` source, the `URL:` to post to, under `--url`.
    Sign {
        #[arg(long)]
        source: String,
        /// A file holding the exact body to send.
        #[arg(long)]
        event: PathBuf,
    },
}

/// Why a command failed, which decides its exit code.
pub(crate) enum Failure {
    /// Exit 2: the config or the usage is wrong.
    Config(String),
    /// Exit 1: anything else.
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = match &cli.config {
        Some(p) => ConfigPath::Explicit(p.clone()),
        None => ConfigPath::Default,
    };
    let result = match cli.command {
        Command::Serve {
            no_workers,
            workers_only,
        } => {
            let mode = match (no_workers, workers_only) {
                (true, _) => Mode::HttpOnly,
                (_, true) => Mode::WorkersOnly,
                _ => Mode::All,
            };
            serve(&path, mode)
        }
        Command::Check => check(&path),
        Command::Simulate {
            source,
            event,
            headers,
            output,
        } => simulate_command(&path, &source, &event, &headers, output),
        Command::Sign { source, event } => sign(&path, &source, &event, &cli.url),
        Command::VerifyPromotion {
            reference,
            keys,
            target,
        } => verify::verify_promotion(&path, &reference, &keys, target.as_deref()),
        Command::Jobs(command) => admin::Client::new(&cli.url, cli.token.as_deref(), cli.timeout)
            .and_then(|c| c.jobs(command)),
        Command::Audit(command) => admin::Client::new(&cli.url, cli.token.as_deref(), cli.timeout)
            .and_then(|c| c.audit(command)),
        Command::Freeze(command) => admin::Client::new(&cli.url, cli.token.as_deref(), cli.timeout)
            .and_then(|c| c.freeze(command)),
        Command::Notifications(command) => {
            admin::Client::new(&cli.url, cli.token.as_deref(), cli.timeout)
                .and_then(|c| c.notifications(command))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(message)) => {
            eprintln!("{message}");
            ExitCode::from(2)
        }
        Err(Failure::Other(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Loads the config and compiles rules and sources; the warnings come back for the
/// caller to show.
fn load(path: &ConfigPath) -> Result<(Service, Vec<Problem>), Failure> {
    let env: HashMap<String, String> = std::env::vars().collect();
    Service::load(path, &env)
        .map_err(|problems| Failure::Config(config::Problems(problems).to_string()))
}

/// Logs to stderr (JSON for log collectors, plain lines for a person at a
/// terminal) and, when `traces` names an endpoint, spans to OpenTelemetry.
fn init_logging(traces: &TracingConfig) -> anyhow::Result<()> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let otel = telemetry::layer(traces).context("cannot set up the trace exporter")?;
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        registry.with(fmt).init();
    } else {
        registry
            .with(
                fmt.json()
                    .flatten_event(true)
                    .with_current_span(true)
                    // The request span is the only one; listing it again adds nothing.
                    .with_span_list(false),
            )
            .init();
    }
    Ok(())
}

fn serve(path: &ConfigPath, mode: Mode) -> Result<(), Failure> {
    let (service, warnings) = load(path)?;
    init_logging(&service.config.tracing)?;
    for w in &warnings {
        tracing::warn!(location = %w.location, "{}", w.message);
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let served = runtime.block_on(async {
        let running = app::start(service, mode).await?;
        running.run_until_signal().await
    });
    // The last spans go out whether or not the service stopped cleanly.
    telemetry::shutdown();
    served?;
    Ok(())
}

fn check(path: &ConfigPath) -> Result<(), Failure> {
    let (service, warnings) = load(path)?;
    for w in &warnings {
        println!("{w}");
    }
    println!(
        "ok: {} sources, {} targets, {} rules",
        service.config.sources.len(),
        service.config.targets.len(),
        service.rules.rules().len()
    );
    for (protection, rules) in service.rules.coverage() {
        let listed: Vec<String> = rules
            .iter()
            .map(|(rule, how)| match how {
                Coverage::Covered => rule.to_string(),
                Coverage::Templated => {
                    format!("{rule} (templated destination: when rendered there)")
                }
            })
            .collect();
        if listed.is_empty() {
            println!("protection {protection} covers no rule");
        } else {
            println!("protection {protection} covers: {}", listed.join(", "));
        }
    }
    Ok(())
}

fn sign(
    path: &ConfigPath,
    source_name: &str,
    event_file: &PathBuf,
    base_url: &str,
) -> Result<(), Failure> {
    let (service, _) = load(path)?;
    let source = service
        .sources
        .get(source_name)
        .ok_or_else(|| Failure::Config(format!("error: unknown source `{source_name}`")))?;
    let body = std::fs::read(event_file)
        .with_context(|| format!("cannot read {}", event_file.display()))?;
    let id = format!("msg_{}", crate::domain::new_id());
    let headers = source
        .verifier
        .sign(&body, &id, chrono::Utc::now().timestamp());
    if let Some((param, secret)) = source.verifier.query_token() {
        println!("URL: {}", hook_url(base_url, source_name, param, &secret)?);
    }
    match source.verifier.kind() {
        config::SchemeKind::None => {
            eprintln!("source `{source_name}` uses scheme `none`: no header is needed");
        }
        config::SchemeKind::Oidc => eprintln!(
            "source `{source_name}` uses scheme `oidc`: the sender presents a token from its identity provider as `Authorization: Bearer <token>`; gantry holds no key to sign with"
        ),
        _ => {}
    }
    for (name, value) in headers {
        println!("{name}: {value}");
    }
    Ok(())
}

/// Where a `url-token` sender posts: the hook under `base`, the secret in the query,
/// encoded as a URL needs it.
fn hook_url(base: &str, source: &str, param: &str, secret: &str) -> Result<String, Failure> {
    let mut url = reqwest::Url::parse(base)
        .map_err(|e| Failure::Config(format!("error: --url `{base}` is not a URL ({e})")))?;
    url.path_segments_mut()
        .map_err(|()| Failure::Config(format!("error: --url `{base}` cannot have a path")))?
        .pop_if_empty()
        .extend(["hooks", source]);
    url.query_pairs_mut().append_pair(param, secret);
    Ok(url.into())
}

fn print_simulation(sim: &crate::ingest::Simulation) {
    let event = &sim.event;
    println!(
        "event {} from {} (delivery {})",
        event.kind, event.source, event.delivery_id
    );
    let subject: Vec<String> = config::Field::ALL
        .iter()
        .filter_map(|f| Some(format!("{}={}", f.name(), event.subject.get(*f)?)))
        .collect();
    println!("  {}", subject.join(" "));
    if sim.promotions.is_empty() {
        println!("  no rule matches: nothing would be queued");
    }
    for p in &sim.promotions {
        match (&p.action, &p.error) {
            (Some(action), _) => {
                let (from, to) = action.describe();
                let dry = if action.dry_run { ", dry run" } else { "" };
                println!(
                    "  rule {} → {} on {}: {from} → {to} ({}{dry})",
                    p.rule,
                    action.kind(),
                    p.target,
                    action.mode()
                );
            }
            (None, Some(e)) => println!(
                "  rule {} → would fail: {}: {}",
                p.rule,
                e.code.as_str(),
                e.message
            ),
            (None, None) => {}
        }
    }
}

fn simulate_command(
    path: &ConfigPath,
    source_name: &str,
    event_file: &PathBuf,
    raw_headers: &[String],
    output: Output,
) -> Result<(), Failure> {
    let (service, warnings) = load(path)?;
    for w in &warnings {
        eprintln!("{w}");
    }
    if service.sources.get(source_name).is_none() {
        return Err(Failure::Config(format!(
            "error: unknown source `{source_name}`"
        )));
    }
    let headers = raw_headers
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| Failure::Config(format!("error: `{h}` is not `Name: value`")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let body = std::fs::read(event_file)
        .with_context(|| format!("cannot read {}", event_file.display()))?;
    let simulations = simulate(
        &service.sources,
        &service.rules,
        &service.config.freezes,
        source_name,
        &body,
        &headers,
    )
    .map_err(|e| Failure::Other(anyhow::anyhow!("{}: {e}", event_file.display())))?;
    for sim in &simulations {
        match output {
            Output::Json => println!("{}", json!(sim)),
            Output::Table => print_simulation(sim),
        }
    }
    Ok(())
}
