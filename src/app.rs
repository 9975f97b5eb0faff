//! Wiring: opens the store, then starts the HTTP server and the workers on it, and
//! stops them in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpServer, dev::ServerHandle, web};
use anyhow::Context as _;
use tracing_actix_web::TracingLogger;

use crate::api::{self, AppState};
use crate::ingest::{Ingest, Rejections};
use crate::live::Live;
use crate::metrics::Metrics;
use crate::notify;
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
    /// The config in force: SIGHUP reloads it; its notification deliverers stop
    /// with the rest.
    pub live: Arc<Live>,
    maintenance: Option<tokio::task::JoinHandle<()>>,
    /// Refusals counted but not yet on the record, written at stop.
    rejections: Arc<Rejections>,
    grace: Duration,
}

pub use crate::live::Service;

pub async fn start(service: Service, mode: Mode) -> anyhow::Result<Running> {
    let config = &service.config;
    let store = store::open(&config.store)
        .await
        .with_context(|| format!("cannot open the store {:?}", config.store))?;
    let grace = config.server.shutdown_grace;
    // A waiting or awaiting job whose rule this config no longer has is cancelled
    // (SPEC §9 `rule_removed`); nothing else could ever move it on. (A reload does
    // not: it leaves them visible, and a later start decides.)
    let names: Vec<String> = service
        .rules
        .rules()
        .iter()
        .map(|r| r.name.clone())
        .collect();
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
    notify::install(&*store, config)
        .await
        .context("cannot settle the notification sinks")?;

    let maintenance = (mode != Mode::HttpOnly).then(|| {
        tokio::spawn(maintain(
            store.clone(),
            config.audit_retain,
            config.defaults.dedupe_window,
        ))
    });
    let metrics = Arc::new(Metrics::default());
    let targets = (mode != Mode::HttpOnly)
        .then(|| Targets::from_config(config))
        .transpose()
        .context("cannot build the HTTP clients")?;
    let deliveries = (mode != Mode::HttpOnly)
        .then(|| notify::Deliveries::start(store.clone(), config, metrics.clone()))
        .transpose()
        .context("cannot build the notification clients")?;
    let rejections = Rejections::new(store.clone(), config.audit_rejections_every);
    let (listen, console, worker_config) = (
        config.server.listen,
        config.console.enabled,
        config.worker.clone(),
    );
    let workers_run = targets.is_some();
    let live = Arc::new(Live::new(
        service,
        targets,
        store.clone(),
        metrics.clone(),
        deliveries,
    ));
    let workers = workers_run.then(|| {
        worker::Pool::start(Arc::new(worker::Context {
            store: store.clone(),
            live: live.clone(),
            config: worker_config,
            metrics: metrics.clone(),
        }))
    });

    let (addr, server) = if mode == Mode::WorkersOnly {
        (None, None)
    } else {
        let state = web::Data::new(AppState {
            ingest: Ingest {
                store: store.clone(),
                rejections: rejections.clone(),
            },
            store,
            live: live.clone(),
            metrics,
            last_verdict: crate::audit::LastVerdict::default(),
        });
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
        .bind(listen)
        .with_context(|| format!("cannot listen on {listen}"))?;
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
        live,
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
    /// Runs until SIGTERM or SIGINT, then stops gracefully; SIGHUP reloads the
    /// config meanwhile.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        let mut hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
        loop {
            tokio::select! {
                _ = term.recv() => {
                    tracing::info!("SIGTERM: shutting down");
                    break;
                }
                _ = tokio::signal::ctrl_c() => {
                    tracing::info!("SIGINT: shutting down");
                    break;
                }
                _ = hup.recv() => {
                    // Refusals are logged and audited by the reload itself.
                    let _ = self.live.reload("sighup").await;
                }
            }
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
        let deliveries = self.live.stop_deliveries(self.grace);
        tokio::join!(server, workers, deliveries);
        self.rejections.flush_all().await;
        tracing::info!("gantry stopped");
    }
}
