//! Refused requests on the record without letting them grow the store: anyone can
//! send a request with a bad signature or to a made-up source, and each audit record
//! is a durable, hash-chained write (an fsync on SQLite, the chain-head lock on
//! PostgreSQL). So refusals are summarised: per source and reason, the first refusal
//! after a quiet period is recorded at once (an operator fixing a sender sees it
//! straight away), and the ones after it within the period are counted and recorded
//! as one `event.rejected` record carrying that count when the period ends.
//!
//! The keys are bounded: configured sources by name, every unknown source under one
//! key, and reasons by their error code. Metrics still count each refusal.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::audit::AuditEntry;
use crate::domain::bounded;
use crate::store::Store;

/// How much of an unknown source's name is kept in logs, answers and records.
pub const MAX_SOURCE_NAME: usize = 64;

/// A source name from a request, cut so that a long path cannot flood a log line or
/// a record.
pub fn cut_source_name(name: &str) -> String {
    bounded(name, MAX_SOURCE_NAME)
}

/// What refusals are summarised by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    /// The configured source, or `None` for every unknown one.
    source: Option<String>,
    /// The error code the sender was answered with.
    code: &'static str,
}

/// The refusals of one key since its last record.
#[derive(Debug)]
struct Window {
    /// When the last record for this key was written.
    recorded_at: Instant,
    /// Refusals not on the record yet.
    pending: u64,
    /// The last refusal's source name (cut) and reason, for the summary record.
    last_source: String,
    last_reason: String,
    /// A summary is due at `recorded_at + every`.
    flush_scheduled: bool,
}

/// The summariser shared by every request of a process.
pub struct Rejections {
    store: Arc<dyn Store>,
    every: Duration,
    windows: Mutex<HashMap<Key, Window>>,
}

/// One record to write: who, why, and how many refusals it stands for.
struct Summary {
    source: String,
    reason: String,
    count: u64,
}

impl Rejections {
    pub fn new(store: Arc<dyn Store>, every: Duration) -> Arc<Self> {
        Arc::new(Rejections {
            store,
            every,
            windows: Mutex::new(HashMap::new()),
        })
    }

    fn windows(&self) -> MutexGuard<'_, HashMap<Key, Window>> {
        // Plain field updates: a panic elsewhere cannot leave a window half-written.
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes one refused request to `source` (`known` when it is configured),
    /// answered with `code` because of `reason`.
    pub async fn note(
        self: &Arc<Self>,
        source: &str,
        known: bool,
        code: &'static str,
        reason: &str,
    ) {
        let key = Key {
            source: known.then(|| source.to_string()),
            code,
        };
        let source = cut_source_name(source);
        let now = Instant::now();
        let write_now = {
            let mut windows = self.windows();
            match windows.get_mut(&key) {
                Some(w) if w.flush_scheduled || now < w.recorded_at + self.every => {
                    w.pending += 1;
                    w.last_source = source;
                    w.last_reason = reason.to_string();
                    if !w.flush_scheduled {
                        w.flush_scheduled = true;
                        let due = w.recorded_at + self.every;
                        let this = self.clone();
                        let key = key.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep_until(due).await;
                            this.flush(&key).await;
                        });
                    }
                    None
                }
                _ => {
                    windows.insert(
                        key,
                        Window {
                            recorded_at: now,
                            pending: 0,
                            last_source: String::new(),
                            last_reason: String::new(),
                            flush_scheduled: false,
                        },
                    );
                    Some(Summary {
                        source,
                        reason: reason.to_string(),
                        count: 1,
                    })
                }
            }
        };
        if let Some(s) = write_now {
            self.record(s).await;
        }
    }

    /// Records what one key counted since its last record.
    async fn flush(&self, key: &Key) {
        let summary = {
            let mut windows = self.windows();
            let Some(w) = windows.get_mut(key) else {
                return;
            };
            w.flush_scheduled = false;
            if w.pending == 0 {
                return;
            }
            w.recorded_at = Instant::now();
            Some(Summary {
                source: std::mem::take(&mut w.last_source),
                reason: std::mem::take(&mut w.last_reason),
                count: std::mem::take(&mut w.pending),
            })
        };
        if let Some(s) = summary {
            self.record(s).await;
        }
    }

    /// Records every count not yet on the record (at shutdown).
    pub async fn flush_all(&self) {
        let keys: Vec<Key> = self
            .windows()
            .iter()
            .filter(|(_, w)| w.pending > 0)
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.flush(&key).await;
        }
    }

    /// A store failure here is logged and changes no answer: the sender still
    /// learns why it was refused.
    async fn record(&self, s: Summary) {
        let entry = AuditEntry::rejections(&s.source, &s.reason, s.count);
        if let Err(e) = self.store.append_audit(entry).await {
            tracing::error!(error = %e, count = s.count, "could not audit refused requests");
        }
    }
}
