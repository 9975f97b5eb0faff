//! The configuration in force (SPEC §12, live reload): one [`Generation`] — the
//! validated config and what was compiled from it — that requests read once per
//! request and workers once per attempt, swapped whole by a reload. A request or an
//! attempt in flight keeps the generation it started with; the next one sees the new.
//!
//! A reload (SIGHUP, `POST /api/v1/config/reload`) re-reads the file and the
//! environment and validates everything as `gantry check` does. Invalid: nothing
//! changes. Valid: sources, targets, rules, freezes, notifications and tokens change
//! at once; settings a running process cannot change keep their running values and
//! are named as ignored until a restart.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::audit::{AuditEntry, AuditKind};
use crate::config::{self, Config, ConfigError, ConfigPath, Problem};
use crate::domain::{Millis, now_millis};
use crate::ingest::Sources;
use crate::metrics::Metrics;
use crate::notify;
use crate::rules::RuleSet;
use crate::store::Store;
use crate::targets::Targets;

/// A validated configuration compiled into what runs: rules and sources. Building
/// one is all `gantry check` does; `serve` starts it, and a reload swaps in another.
pub struct Service {
    pub config: Config,
    pub rules: RuleSet,
    pub sources: Sources,
    /// Where the config was read from, for reloads to read it again (`None`: built
    /// in memory, which cannot be reloaded).
    pub path: Option<ConfigPath>,
}

impl Service {
    /// Compiles every rule and source; the problems of both, each named.
    pub fn compile(config: Config) -> Result<Service, Vec<Problem>> {
        match (RuleSet::compile(&config), Sources::from_config(&config)) {
            (Ok(rules), Ok(sources)) => {
                let loops: Vec<Problem> = rules
                    .cycles(&config.sources)
                    .into_iter()
                    .map(|names| {
                        Problem::error(
                            format!("rules[{}]", names[0]),
                            format!(
                                "promotions can loop: {} (each promotion's result matches the next rule)",
                                names.join(" → ")
                            ),
                        )
                    })
                    .collect();
                if !loops.is_empty() {
                    return Err(loops);
                }
                Ok(Service {
                    config,
                    rules,
                    sources,
                    path: None,
                })
            }
            (rules, sources) => Err(rules
                .err()
                .into_iter()
                .chain(sources.err())
                .flatten()
                .collect()),
        }
    }

    /// Reads and compiles the config at `path` with the environment `env`, as
    /// `gantry check` does; every problem when it is not valid.
    pub fn load(
        path: &ConfigPath,
        env: &HashMap<String, String>,
    ) -> Result<(Service, Vec<Problem>), Vec<Problem>> {
        let loaded = config::load(path, env).map_err(|e| match e {
            ConfigError::Missing(file) => vec![Problem::error(
                file.display().to_string(),
                "the config file does not exist",
            )],
            ConfigError::Invalid(problems) => problems.0,
        })?;
        let warnings = loaded.warnings;
        let mut service = Service::compile(loaded.config)
            .map_err(|problems| warnings.iter().cloned().chain(problems).collect::<Vec<_>>())?;
        service.path = Some(path.clone());
        Ok((service, warnings))
    }
}

/// One configuration in force and what was built from it.
pub struct Generation {
    /// 1 at start, one more per successful reload.
    pub number: u64,
    /// `sha256:` of the effective config, secrets left out (they show redacted).
    pub hash: String,
    pub loaded_at: Millis,
    pub config: Config,
    pub rules: Arc<RuleSet>,
    pub sources: Sources,
    /// This process's targets, with their HTTP clients and circuit breakers (absent
    /// with `--no-workers`).
    pub targets: Option<Targets>,
    /// Settings the reload that made this generation could not change: they keep
    /// their running values until a restart.
    pub ignored: Vec<&'static str>,
}

impl Generation {
    fn new(
        number: u64,
        service: Service,
        targets: Option<Targets>,
        ignored: Vec<&'static str>,
    ) -> Generation {
        let hash = hash(&service.config);
        Generation {
            number,
            hash,
            loaded_at: now_millis(),
            config: service.config,
            rules: Arc::new(service.rules),
            sources: service.sources,
            targets,
            ignored,
        }
    }
}

/// The SHA-256 of the config as `Debug` shows it: every setting, with each secret
/// redacted (`Secret` prints none) and no map of unstable order.
fn hash(config: &Config) -> String {
    let digest = Sha256::digest(format!("{config:?}").as_bytes());
    format!("sha256:{}", hex::encode(digest))
}

/// What a successful reload did.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Reloaded {
    pub generation: u64,
    pub hash: String,
    /// Settings changed in the file that keep their running values until a restart.
    pub ignored_until_restart: Vec<&'static str>,
}

/// The configuration in force, and how to replace it.
pub struct Live {
    current: ArcSwap<Generation>,
    path: Option<ConfigPath>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    /// Whether this process runs workers (and so builds targets and deliverers).
    workers: bool,
    /// The notification deliverers of the generation in force; one reload at a time.
    deliveries: Mutex<Option<notify::Deliveries>>,
}

impl Live {
    /// The first generation; `deliveries` run its notification sinks.
    pub fn new(
        service: Service,
        targets: Option<Targets>,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        deliveries: Option<notify::Deliveries>,
    ) -> Live {
        let path = service.path.clone();
        let workers = targets.is_some();
        metrics.config_generation(1);
        Live {
            current: ArcSwap::from_pointee(Generation::new(1, service, targets, Vec::new())),
            path,
            store,
            metrics,
            workers,
            deliveries: Mutex::new(deliveries),
        }
    }

    /// The generation in force: read once per request or attempt.
    pub fn load(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Re-reads the file and the environment; swaps the new generation in when it
    /// is valid, else changes nothing. Either way it is on the record, as `actor`.
    pub async fn reload(&self, actor: &str) -> Result<Reloaded, Vec<Problem>> {
        let mut deliveries = self.deliveries.lock().await;
        let Some(path) = &self.path else {
            return Err(vec![Problem::error(
                "config",
                "this gantry was not started from a config file; nothing to re-read",
            )]);
        };
        // Files are read (the config, `file:` secrets, certificates): off the runtime.
        let path = path.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let env: HashMap<String, String> = std::env::vars().collect();
            Service::load(&path, &env)
        })
        .await
        .unwrap_or_else(|e| {
            Err(vec![Problem::error(
                "config",
                format!("the reload stopped: {e}"),
            )])
        });
        let mut service = match loaded {
            Ok((service, warnings)) => {
                for w in &warnings {
                    tracing::warn!(location = %w.location, "{}", w.message);
                }
                service
            }
            Err(problems) => {
                self.refused(actor, &problems).await;
                return Err(problems);
            }
        };
        let old = self.load();
        let ignored = keep_running_values(&old.config, &mut service.config);
        let targets = match self
            .workers
            .then(|| Targets::from_config(&service.config))
            .transpose()
        {
            Ok(t) => t,
            Err(e) => {
                let problems = vec![Problem::error("targets", format!("cannot build: {e}"))];
                self.refused(actor, &problems).await;
                return Err(problems);
            }
        };
        let next = Arc::new(Generation::new(old.number + 1, service, targets, ignored));
        let reloaded = Reloaded {
            generation: next.number,
            hash: next.hash.clone(),
            ignored_until_restart: next.ignored.clone(),
        };
        // The sinks first, so every write from the swap on routes by the new ones;
        // then the generation everything else reads; then the deliverers.
        if let Err(e) = notify::install(&*self.store, &next.config).await {
            tracing::error!(error = %e, "cannot settle the notification sinks after the reload");
        }
        self.current.store(next.clone());
        self.metrics.config_generation(reloaded.generation);
        self.metrics.reload("ok");
        self.restart_deliveries(&next.config, &mut deliveries).await;
        let message = format!(
            "generation {} ({}){}",
            reloaded.generation,
            reloaded.hash,
            if reloaded.ignored_until_restart.is_empty() {
                String::new()
            } else {
                format!(
                    "; ignored until restart: {}",
                    reloaded.ignored_until_restart.join(", ")
                )
            }
        );
        tracing::info!(generation = reloaded.generation, hash = %reloaded.hash,
            ignored = ?reloaded.ignored_until_restart, "config reloaded");
        self.audit(AuditKind::ConfigReloaded, actor, &message).await;
        Ok(reloaded)
    }

    /// The deliverers restarted on the new sinks (leases keep a notification with one
    /// sender while the old ones finish).
    async fn restart_deliveries(
        &self,
        config: &Config,
        deliveries: &mut Option<notify::Deliveries>,
    ) {
        if !self.workers {
            return;
        }
        let next = match notify::Deliveries::start(self.store.clone(), config, self.metrics.clone())
        {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the notification deliverers");
                None
            }
        };
        if let Some(old) = std::mem::replace(deliveries, next) {
            old.shutdown(config.server.shutdown_grace).await;
        }
    }

    async fn refused(&self, actor: &str, problems: &[Problem]) {
        self.metrics.reload("invalid");
        for p in problems {
            tracing::error!(location = %p.location, "config reload refused: {}", p.message);
        }
        let listed: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let message = format!("nothing changed: {}", listed.join("; "));
        self.audit(AuditKind::ConfigReloadFailed, actor, &message)
            .await;
    }

    async fn audit(&self, kind: AuditKind, actor: &str, message: &str) {
        if let Err(e) = self
            .store
            .append_audit(AuditEntry::config(kind, actor, message))
            .await
        {
            tracing::error!(error = %e, "cannot put the reload on the record");
        }
    }

    /// Stops the notification deliverers (at shutdown).
    pub async fn stop_deliveries(&self, grace: std::time::Duration) {
        if let Some(d) = self.deliveries.lock().await.take() {
            d.shutdown(grace).await;
        }
    }
}

/// Puts the running values of the settings a running process cannot change back into
/// `next`, and names those that differed.
fn keep_running_values(running: &Config, next: &mut Config) -> Vec<&'static str> {
    let mut ignored = Vec::new();
    let mut keep = |name: &'static str, differs: bool| {
        if differs {
            ignored.push(name);
        }
    };
    keep("server.listen", running.server.listen != next.server.listen);
    keep(
        "server.shutdown_grace",
        running.server.shutdown_grace != next.server.shutdown_grace,
    );
    keep(
        "server.console",
        running.console.enabled != next.console.enabled,
    );
    keep("store.url", running.store != next.store);
    keep(
        "worker.concurrency",
        running.worker.concurrency != next.worker.concurrency,
    );
    keep("worker.lease", running.worker.lease != next.worker.lease);
    keep(
        "worker.poll_interval",
        running.worker.poll_interval != next.worker.poll_interval,
    );
    keep("audit.retain", running.audit_retain != next.audit_retain);
    keep(
        "audit.rejections_every",
        running.audit_rejections_every != next.audit_rejections_every,
    );
    keep("tracing", running.tracing != next.tracing);
    next.server.listen = running.server.listen;
    next.server.shutdown_grace = running.server.shutdown_grace;
    next.console.enabled = running.console.enabled;
    next.store = running.store.clone();
    next.worker = running.worker.clone();
    next.audit_retain = running.audit_retain;
    next.audit_rejections_every = running.audit_rejections_every;
    next.tracing = running.tracing.clone();
    ignored
}
