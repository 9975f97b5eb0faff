//! Wiring: opens the store, then starts the HTTP server and the workers on it, and
//! stops them in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpServer, dev::ServerHandle, web};
use anyhow::Context as _;
use tracing_actix_web::TracingLogger;

use crate::api::{self, AppState};
use crate::config::{Config, Problem};
use crate::ingest::{Ingest, Rejections, Sources};
use crate::metrics::Metrics;
use crate::notify;
use crate::rules::RuleSet;
use crate::store;
use crate::targets::Targets;
use crate::worker;

/// Which halves of the service this process runs (`serve --no-workers`,
/// `--workers-only` for split deployments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    All,
    HttpOnly,
    WorkersOnly,
}

/// A started service.
pub struct Running {
    /// The bound address (useful when the config asked for port 0).
    pub addr: Option<SocketAddr>,
    server: Option<(ServerHandle, tokio::task::JoinHandle<std::io::Result<()>>)>,
    workers: Option<worker::Pool>,
    deliveries: Option<notify::Deliveries>,
    maintenance: Option<tokio::task::JoinHandle<()>>,
    /// Refusals counted but not yet on the record, written at stop.
    rejections: Arc<Rejections>,
    grace: Duration,
}

/// A validated configuration compiled into what runs: rules and sources. Building
/// one is all `gantry check` does; `serve` starts it.
pub struct Service {
    pub config: Config,
    pub rules: RuleSet,
    pub sources: Sources,
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
}

pub async fn start(service: Service, mode: Mode) -> anyhow::Result<Running> {
    let Service {
        config,
        rules,
        sources,
    } = service;
    let store = store::open(&config.store)
        .await
        .with_context(|| format!("cannot open the store {:?}", config.store))?;
    let rules = Arc::new(rules);
    let grace = config.server.shutdown_grace;
    // A waiting or awaiting job whose rule this config no longer has is cancelled
    // (SPEC §9 `rule_removed`); nothing else could ever move it on.
    let names: Vec<String> = rules.rules().iter().map(|r| r.name.clone()).collect();
    let removed = store
        .cancel_removed(&names)
        .await
        .context("cannot cancel the jobs of removed rules")?;
    if removed > 0 {
        tracing::warn!(
            jobs = removed,
            "cancelled waiting jobs whose rule was removed"
        );
    }
    // Every write from here on adds the notifications its records make (SPEC §10).
    store.set_routes(Arc::new(notify::Routes::from_config(&config)));
    let sinks: Vec<String> = config
        .notifications
        .iter()
        .map(|n| n.name.clone())
        .collect();
    let settled = store
        .settle_sinks(&sinks)
        .await
        .context("cannot settle the notification sinks")?;
    if settled.dropped > 0 || settled.enabled > 0 {
        tracing::warn!(
            dropped = settled.dropped,
            enabled = settled.enabled,
            "notifications of removed sinks dropped, disabled sinks enabled"
        );
    }

    let maintenance = (mode != Mode::HttpOnly).then(|| {
        tokio::spawn(maintain(
            store.clone(),
            config.audit_retain,
            config.defaults.dedupe_window,
        ))
    });
    let metrics = Arc::new(Metrics::default());
    let targets = (mode != Mode::HttpOnly)
        .then(|| Targets::from_config(&config))
        .transpose()
        .context("cannot build the HTTP clients")?;
    let workers = match &targets {
        None => None,
        Some(targets) => Some(worker::Pool::start(Arc::new(worker::Context {
            store: store.clone(),
            targets: targets.clone(),
            rules: rules.clone(),
            config: config.worker.clone(),
            default_retry: config.defaults.retry,
            max_chain_depth: config.defaults.max_chain_depth,
            metrics: metrics.clone(),
            freezes: config.freezes.clone(),
        }))),
    };

    let deliveries = (mode != Mode::HttpOnly)
        .then(|| notify::Deliveries::start(store.clone(), &config, metrics.clone()))
        .transpose()
        .context("cannot build the notification clients")?;

    let rejections = Rejections::new(store.clone(), config.audit_rejections_every);
    let (addr, server) = if mode == Mode::WorkersOnly {
        (None, None)
    } else {
        let state = web::Data::new(AppState {
            ingest: Ingest {
                sources,
                rules,
                store: store.clone(),
                policy: store::IngestPolicy {
                    dedupe_window: config.defaults.dedupe_window,
                    max_chain_depth: config.defaults.max_chain_depth,
                },
                rejections: rejections.clone(),
            },
            store,
            admin_tokens: config.admin_tokens.clone(),
            max_body_bytes: config.server.max_body_bytes,
            metrics,
            targets,
            freezes: config.freezes.clone(),
            sinks: config
                .notifications
                .iter()
                .map(|n| (n.name.clone(), n.format))
                .collect(),
            console: config.console.clone(),
            last_verdict: crate::audit::LastVerdict::default(),
        });
        let console = config.console.enabled;
        let server = HttpServer::new(move || {
            App::new()
                .wrap(TracingLogger::<api::RequestSpan>::new())
                .app_data(state.clone())
                // Before the API's routes, whose default answers everything else 404.
                .configure(|cfg| {
                    if console {
                        crate::console::routes(cfg);
                    }
                })
                .configure(api::routes)
        })
        // Signals are handled by `run_until_signal`, which also stops the workers.
        .disable_signals()
        .shutdown_timeout(grace.as_secs())
        .bind(config.server.listen)
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        let addr = server.addrs().first().copied();
        let server = server.run();
        let handle = server.handle();
        (addr, Some((handle, tokio::spawn(server))))
    };
    if let Some(a) = addr {
        tracing::info!(listen = %a, ?mode, "gantry is serving");
    }
    Ok(Running {
        addr,
        server,
        workers,
        deliveries,
        maintenance,
        rejections,
        grace,
    })
}

/// How often old audit records and delivery ids are pruned.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(3600);

/// Prunes, at start and then hourly: audit records past `[audit] retain` (behind a
/// checkpoint, so the trail still verifies) and delivery ids past the dedupe window.
async fn maintain(store: Arc<dyn store::Store>, retain: Option<Duration>, dedupe: Duration) {
    let mut tick = tokio::time::interval(MAINTENANCE_EVERY);
    loop {
        tick.tick().await;
        let now = crate::domain::now_millis();
        let ago =
            |d: Duration| now.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        match store.prune(retain.map(ago), ago(dedupe)).await {
            Ok(p) if p.audit_records > 0 || p.deliveries > 0 || p.notifications > 0 => {
                tracing::info!(
                    audit_records = p.audit_records,
                    deliveries = p.deliveries,
                    notifications = p.notifications,
                    "pruned"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning failed; will try again"),
        }
    }
}

impl Running {
    /// Runs until SIGTERM or SIGINT, then stops gracefully.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot listen for SIGTERM")?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        }
        self.stop().await;
        Ok(())
    }

    /// Stops accepting requests and leasing jobs; lets running requests and attempts
    /// finish within the grace period.
    pub async fn stop(self) {
        if let Some(m) = &self.maintenance {
            m.abort();
        }
        let server = async {
            if let Some((handle, task)) = self.server {
                handle.stop(true).await;
                let _ = task.await;
            }
        };
        let workers = async {
            if let Some(pool) = self.workers {
                pool.shutdown(self.grace).await;
            }
        };
        let deliveries = async {
            if let Some(d) = self.deliveries {
                d.shutdown(self.grace).await;
            }
        };
        tokio::join!(server, workers, deliveries);
        self.rejections.flush_all().await;
        tracing::info!("gantry stopped");
    }
}
