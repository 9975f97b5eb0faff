//! Delivery: one loop per sink leases its due notifications (at most its
//! `concurrency` at once, across the loop's tries), posts each, and records what
//! `policy` makes of the answer. Leases make each notification one replica's at a
//! time; a deliverer that dies leaves its notifications to the next once the lease
//! runs out, with the same id, so receivers dedupe.
//!
//! Idle loops wait on the store's work signal, which fires on every commit that
//! wrote the outbox, and otherwise until the sink's next notification is due (at
//! most `poll`, for what other replicas wrote).
//!
//! A sink's URL is a credential: no log line, error or record here names it, and a
//! transport error is reported without it (`reqwest::Error::without_url`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::format::body;
use super::policy::{Answer, Verdict, judge};
use super::{DeliveryReport, Leased};
use crate::config::{Config, NotificationConfig, NotificationFormat};
use crate::domain::now_millis;
use crate::metrics::Metrics;
use crate::signing::standard_webhooks_signature;
use crate::store::Store;

/// What is read of a receiver's answer (for the record); the rest is dropped unread.
const ANSWER_LIMIT: usize = 1024;
/// The shortest wait between two looks at an idle sink.
const MIN_WAIT: Duration = Duration::from_millis(5);

/// The running delivery loops and the switch that stops them.
pub struct Deliveries {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// One sink as a loop delivers to it.
struct Sink {
    config: NotificationConfig,
    client: reqwest::Client,
    /// Signing keys as the signature helper takes them.
    keys: Vec<Vec<u8>>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    worker: String,
    /// Where Slack lines link to (`server.public_url`).
    public_url: Option<String>,
}

impl Deliveries {
    /// Starts a loop per sink of `config`; its `worker.poll_interval` bounds how long
    /// an idle loop waits before looking again for what other replicas wrote.
    pub fn start(
        store: Arc<dyn Store>,
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> Result<Deliveries, reqwest::Error> {
        let poll = config.worker.poll_interval;
        let public_url = config.server.public_url.clone();
        let (stop, stopped) = watch::channel(false);
        let worker = format!("{}-{}-notify", std::process::id(), ulid::Ulid::generate());
        let mut tasks = JoinSet::new();
        for config in &config.notifications {
            let client = reqwest::Client::builder()
                .user_agent(concat!("gantry/", env!("CARGO_PKG_VERSION")))
                .timeout(config.timeout)
                .connect_timeout(config.timeout)
                // A redirect is an answer like any other failure: retried, never
                // followed (the body and its signature go only where configured).
                .redirect(reqwest::redirect::Policy::none())
                .build()?;
            let sink = Arc::new(Sink {
                keys: config.keys.iter().map(|k| k.bytes().to_vec()).collect(),
                config: config.clone(),
                client,
                store: store.clone(),
                metrics: metrics.clone(),
                worker: worker.clone(),
                public_url: public_url.clone(),
            });
            tasks.spawn(sink.run(stopped.clone(), poll));
        }
        Ok(Deliveries { stop, tasks })
    }

    /// Stops leasing and lets the tries under way finish within `grace`; those that
    /// do not are abandoned to their leases (and sent again after them).
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        let drained = tokio::time::timeout(grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
    }
}

impl Sink {
    /// A lease outlives the try it covers: twice the timeout.
    fn lease(&self) -> Duration {
        self.config.timeout.saturating_mul(2)
    }

    async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>, poll: Duration) {
        let signal = self.store.work_signal();
        let slots = Arc::new(Semaphore::new(self.config.concurrency));
        let mut tries = JoinSet::new();
        while !*stop.borrow() {
            // Registered before looking, so a commit in between is not missed.
            let notified = signal.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let free = slots.available_permits();
            let mut wait = poll;
            if free > 0 {
                match self
                    .store
                    .lease_notifications(&self.config.name, &self.worker, free, self.lease())
                    .await
                {
                    Ok(leased) => {
                        let full = leased.len() == free;
                        for n in leased {
                            let Ok(permit) = slots.clone().try_acquire_owned() else {
                                break;
                            };
                            let sink = self.clone();
                            tries.spawn(async move {
                                sink.deliver(n).await;
                                drop(permit);
                            });
                        }
                        if full {
                            wait = Duration::ZERO;
                        } else {
                            wait = self.until_next(poll).await;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(sink = %self.config.name, error = %e, "cannot lease notifications");
                    }
                }
            }
            // Reap finished tries so the set does not grow.
            while tries.try_join_next().is_some() {}
            if wait.is_zero() && slots.available_permits() > 0 {
                continue;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(wait) => {}
                Some(_) = tries.join_next(), if !tries.is_empty() => {}
                _ = stop.changed() => {}
            }
        }
        while tries.join_next().await.is_some() {}
    }

    /// How long until the sink's next notification is due, within `[MIN_WAIT, poll]`.
    async fn until_next(&self, poll: Duration) -> Duration {
        match self.store.next_notification(&self.config.name).await {
            Ok(Some(at)) => Duration::from_millis(u64::try_from(at - now_millis()).unwrap_or(0))
                .clamp(MIN_WAIT, poll),
            Ok(None) => poll,
            Err(e) => {
                tracing::warn!(sink = %self.config.name, error = %e, "cannot read the next notification due");
                poll
            }
        }
    }

    /// One try: post, judge, record.
    async fn deliver(&self, n: Leased) {
        let answer = self.post(&n).await;
        let judged = judge(answer, n.try_n, &self.config.schedule, now_millis());
        let outcome = match judged.verdict {
            Verdict::Delivered => "delivered",
            Verdict::Retry { .. } => "retry",
            Verdict::Failed => "failed",
            Verdict::Gone => "gone",
        };
        self.metrics.notification(&self.config.name, outcome);
        if judged.verdict != Verdict::Delivered {
            tracing::warn!(sink = %self.config.name, id = %n.id, try_n = n.try_n,
                outcome, error = judged.error.as_deref().unwrap_or(""), "notification not delivered");
        }
        let report = DeliveryReport {
            id: n.id.clone(),
            sink: self.config.name.clone(),
            worker: self.worker.clone(),
            try_n: n.try_n,
            kind: n.kind,
            job_id: n.job_id,
            judged,
        };
        match self.store.record_delivery(report).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(sink = %self.config.name, id = %n.id, "lost the lease on a notification; its next holder sends it again")
            }
            Err(e) => {
                tracing::warn!(sink = %self.config.name, id = %n.id, error = %e, "cannot record a notification's try; it is sent again after its lease")
            }
        }
    }

    /// The body as sent, from the audit record the notification reports and its
    /// job as it is now. A record retention pruned meanwhile, or a read that fails,
    /// leaves its part out rather than hold the notification back.
    async fn body(&self, n: &Leased) -> String {
        let entry = match self.store.audit_chain(n.sequence - 1, 1).await {
            Ok(rows) => rows
                .into_iter()
                .find(|r| r.seq == n.sequence)
                .and_then(|r| r.record.ok())
                .map(|r| r.entry),
            Err(e) => {
                tracing::warn!(sink = %self.config.name, id = %n.id, error = %e,
                    "cannot read the notification's audit record; sent without it");
                None
            }
        };
        let job = match &n.job_id {
            None => None,
            Some(id) => self.store.job(id).await.unwrap_or_else(|e| {
                tracing::warn!(sink = %self.config.name, id = %n.id, error = %e,
                    "cannot read the notification's job; sent without it");
                None
            }),
        };
        body(
            self.config.format,
            n.sequence,
            n.kind,
            entry.as_ref(),
            job.as_ref(),
            self.public_url.as_deref(),
        )
    }

    async fn post(&self, n: &Leased) -> Answer {
        let body = self.body(n).await;
        let mut request = self
            .client
            .post(self.config.url.expose().clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if self.config.format != NotificationFormat::Slack {
            let timestamp = (now_millis() / 1000).to_string();
            if self.config.format == NotificationFormat::StandardWebhooks {
                let signature =
                    standard_webhooks_signature(&self.keys, &n.id, &timestamp, body.as_bytes());
                request = request.header("webhook-signature", signature);
            }
            request = request
                .header("webhook-id", &n.id)
                .header("webhook-timestamp", timestamp);
        }
        match request.body(body).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = crate::net::retry_after(response.headers());
                let said = match crate::net::read_up_to(response, ANSWER_LIMIT).await {
                    Ok((bytes, _)) => String::from_utf8_lossy(&bytes).into_owned(),
                    Err(_) => String::new(),
                };
                Answer::Status {
                    status,
                    retry_after,
                    said,
                }
            }
            Err(e) => Answer::Transport(self.transport(e)),
        }
    }

    /// A transport failure in words, without the URL.
    fn transport(&self, e: reqwest::Error) -> String {
        let e = e.without_url();
        if e.is_timeout() {
            return format!(
                "no answer within {}",
                humantime::format_duration(self.config.timeout)
            );
        }
        let mut cause: &dyn std::error::Error = &e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        let what = if e.is_connect() {
            "cannot connect"
        } else {
            "the request failed"
        };
        format!("{what}: {cause}")
    }
}
