//! Prometheus metrics, with the official `prometheus-client` crate (OpenMetrics text).
//!
//! Counters and the latency histogram are updated where things happen (ingest and
//! the workers); the gauges that describe state (jobs by state, queue depth and age,
//! open circuits) are read at scrape time, so they cannot drift from the store.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::domain::{JobState, now_millis};
use crate::store::{QueueStats, StoreError};
use crate::targets::Targets;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    source: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    target: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotificationLabels {
    name: String,
    outcome: String,
}

type Latency = Family<TargetLabels, Histogram, fn() -> Histogram>;

/// What a webhook came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventResult {
    Accepted,
    Duplicate,
    Rejected,
}

pub struct Metrics {
    registry: Registry,
    events: Family<EventLabels, Counter>,
    keys_unavailable: Family<SourceLabels, Counter>,
    attempts: Family<AttemptLabels, Counter>,
    latency: Latency,
    jobs: Family<StateLabels, Gauge>,
    queue_depth: Gauge,
    oldest_queued: Gauge<f64, AtomicU64>,
    circuit_open: Family<TargetLabels, Gauge>,
    notifications: Family<NotificationLabels, Counter>,
    sign_ins: Family<OutcomeLabels, Counter>,
    config_generation: Gauge,
    reloads: Family<OutcomeLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn latency_histogram() -> Histogram {
    // 5 ms to about 80 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("gantry");
        let events = Family::<EventLabels, Counter>::default();
        registry.register(
            "events_received",
            "Webhook events by source and result (accepted, duplicate, rejected)",
            events.clone(),
        );
        let keys_unavailable = Family::<SourceLabels, Counter>::default();
        registry.register(
            "oidc_keys_unavailable",
            "Webhooks refused because an oidc source's issuer keys could not be fetched",
            keys_unavailable.clone(),
        );
        let attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "attempts",
            "Job attempts by target and outcome (promoted, noop, dry_run, or the error code)",
            attempts.clone(),
        );
        let latency: Latency = Family::new_with_constructor(latency_histogram);
        registry.register(
            "upstream_duration_seconds",
            "How long job attempts took at the upstream, checks included",
            latency.clone(),
        );
        let jobs = Family::<StateLabels, Gauge>::default();
        registry.register("jobs", "Jobs in the store by state", jobs.clone());
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Jobs waiting to run (queued or retrying)",
            queue_depth.clone(),
        );
        let oldest_queued = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "queue_oldest_age_seconds",
            "Age of the oldest job waiting to run",
            oldest_queued.clone(),
        );
        let circuit_open = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "circuit_open",
            "1 while a target's circuit breaker holds its jobs",
            circuit_open.clone(),
        );
        let notifications = Family::<NotificationLabels, Counter>::default();
        registry.register(
            "notifications",
            "Notification tries by sink and outcome (delivered, retry, failed, gone)",
            notifications.clone(),
        );
        let sign_ins = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "console_sign_ins",
            "Console sign-ins by outcome (ok, failed)",
            sign_ins.clone(),
        );
        let config_generation = Gauge::default();
        registry.register(
            "config_generation",
            "The generation of the config in force: 1 at start, one more per reload",
            config_generation.clone(),
        );
        let reloads = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Config reloads by outcome (ok, invalid)",
            reloads.clone(),
        );
        Metrics {
            registry,
            notifications,
            sign_ins,
            config_generation,
            reloads,
            events,
            keys_unavailable,
            attempts,
            latency,
            jobs,
            queue_depth,
            oldest_queued,
            circuit_open,
        }
    }
}

impl Metrics {
    /// One event from `source` (a configured source name, or `unknown`, so that
    /// request paths cannot grow the label set).
    pub fn event(&self, source: &str, result: EventResult) {
        let result = match result {
            EventResult::Accepted => "accepted",
            EventResult::Duplicate => "duplicate",
            EventResult::Rejected => "rejected",
        };
        self.events
            .get_or_create(&EventLabels {
                source: source.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    /// A webhook to `source` (a configured source name) refused because its
    /// issuer's keys could not be fetched: the issuer, or the way to it, is down.
    pub fn keys_unavailable(&self, source: &str) {
        self.keys_unavailable
            .get_or_create(&SourceLabels {
                source: source.to_string(),
            })
            .inc();
    }

    pub fn attempt(&self, target: &str, outcome: &str, seconds: f64) {
        self.attempts
            .get_or_create(&AttemptLabels {
                target: target.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&TargetLabels {
                target: target.to_string(),
            })
            .observe(seconds);
    }

    /// One try of a notification to sink `name` (a configured sink name).
    pub fn notification(&self, name: &str, outcome: &str) {
        self.notifications
            .get_or_create(&NotificationLabels {
                name: name.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// The config generation now in force.
    pub fn config_generation(&self, generation: u64) {
        self.config_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    /// One reload, `ok` or `invalid`.
    pub fn reload(&self, outcome: &str) {
        self.reloads
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// One sign-in to the console, `ok` or `failed`.
    pub fn sign_in(&self, outcome: &str) {
        self.sign_ins
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// The scrape: state gauges refreshed from the store and the breakers, then
    /// everything in OpenMetrics text.
    pub fn render(
        &self,
        stats: Result<QueueStats, StoreError>,
        targets: Option<&Targets>,
    ) -> String {
        if let Ok(stats) = stats {
            for state in JobState::ALL {
                let n = stats.by_state.get(&state).copied().unwrap_or(0);
                self.jobs
                    .get_or_create(&StateLabels {
                        state: state.as_str().to_string(),
                    })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            let waiting = [JobState::Queued, JobState::Retrying]
                .iter()
                .map(|s| stats.by_state.get(s).copied().unwrap_or(0))
                .sum::<u64>();
            self.queue_depth
                .set(i64::try_from(waiting).unwrap_or(i64::MAX));
            let age = stats
                .oldest_waiting_since
                .map_or(0.0, |t| (now_millis() - t).max(0) as f64 / 1000.0);
            self.oldest_queued.set(age);
        }
        for (name, handle) in targets.into_iter().flat_map(Targets::iter) {
            self.circuit_open
                .get_or_create(&TargetLabels {
                    target: name.to_string(),
                })
                .set(i64::from(handle.breaker.is_open()));
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
