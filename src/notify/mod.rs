//! Notifications out (SPEC §10): people hear of a failed or waiting promotion where
//! they already are, and no notification is lost to a crash.
//!
//! A notification travels: a store transaction appends audit records → [`Routes`]
//! says which sinks want each record → the store writes one small outbox row per
//! sink **in that transaction** (a rolled-back change sends nothing, a committed one
//! survives a crash) → `deliver` leases them per sink, as workers lease jobs,
//! renders each body from its audit record and its job as it is then (`format`),
//! and posts it → `policy` judges each answer → the store records the verdict.
//! Bodies are made at delivery, not in the change's transaction: the store's writer
//! is what every ingest waits on, and the audit record already holds what changed.

mod deliver;
mod format;
mod policy;

use std::collections::BTreeSet;

use serde::Serialize;

pub use deliver::Deliveries;
pub use policy::{Answer, Judged, Verdict, judge};

use crate::audit::{AuditEntry, AuditKind};
use crate::config::Config;
use crate::domain::{Millis, now_millis};

/// Where each audit record is notified: the sinks of the config, compiled once.
#[derive(Debug, Default)]
pub struct Routes {
    routes: Vec<Route>,
}

#[derive(Debug)]
struct Route {
    sink: String,
    on: BTreeSet<AuditKind>,
    rules: Option<Vec<String>>,
}

impl Route {
    fn wants(&self, entry: &AuditEntry) -> bool {
        self.on.contains(&entry.kind)
            && match &self.rules {
                None => true,
                Some(rules) => entry.rule.as_ref().is_some_and(|r| rules.contains(r)),
            }
    }
}

/// Makes `config`'s sinks the store's (at start and on every reload): every write
/// from now on adds the notifications its records make for them, the pending
/// notifications of sinks no longer configured are dropped, and sinks a 410 disabled
/// are enabled again.
pub async fn install(
    store: &dyn crate::store::Store,
    config: &Config,
) -> Result<crate::store::SinksSettled, crate::store::StoreError> {
    store.set_routes(std::sync::Arc::new(Routes::from_config(config)));
    let sinks: Vec<String> = config
        .notifications
        .iter()
        .map(|n| n.name.clone())
        .collect();
    let settled = store.settle_sinks(&sinks).await?;
    if settled.dropped > 0 || settled.enabled > 0 {
        tracing::warn!(
            dropped = settled.dropped,
            enabled = settled.enabled,
            "notifications of removed sinks dropped, disabled sinks enabled"
        );
    }
    Ok(settled)
}

impl Routes {
    pub fn from_config(config: &Config) -> Routes {
        config
            .notifications
            .iter()
            .fold(Routes::default(), |routes, n| {
                routes.with(&n.name, n.on.iter().copied(), n.rules.clone())
            })
    }

    /// These routes and sink `sink`, sent the records of the kinds `on` (about the
    /// rules `rules`, or every rule).
    pub fn with(
        mut self,
        sink: &str,
        on: impl IntoIterator<Item = AuditKind>,
        rules: Option<Vec<String>>,
    ) -> Routes {
        self.routes.push(Route {
            sink: sink.to_string(),
            on: on.into_iter().filter(|k| k.notifiable()).collect(),
            rules,
        });
        self
    }

    /// No sink at all: the stores then skip the outbox entirely.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Whether any sink wants the record.
    pub fn wants(&self, entry: &AuditEntry) -> bool {
        self.routes.iter().any(|r| r.wants(entry))
    }

    /// The notifications record `seq` makes, one per sink that wants it.
    pub fn letters(&self, seq: i64, entry: &AuditEntry) -> Vec<Letter> {
        let now = now_millis();
        self.routes
            .iter()
            .filter(|r| r.wants(entry))
            .map(|r| Letter {
                id: format!("msg_{}", ulid::Ulid::generate()),
                sink: r.sink.clone(),
                kind: entry.kind,
                job_id: entry.job_id.clone(),
                sequence: seq,
                created_at: now,
            })
            .collect()
    }
}

/// A notification to write to the outbox.
#[derive(Debug, Clone)]
pub struct Letter {
    /// The same on every try (`webhook-id`), so receivers dedupe.
    pub id: String,
    pub sink: String,
    pub kind: AuditKind,
    pub job_id: Option<String>,
    /// The audit record's sequence number: increasing per job (and overall), so a
    /// receiver can order what arrives out of order; the body is rendered from that
    /// record when the notification is sent.
    pub sequence: i64,
    pub created_at: Millis,
}

/// Where a notification is in its life: `pending` until delivered, or `failed` past
/// its schedule (an operator may retry it), or `dropped` with its sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotificationState {
    Pending,
    Delivered,
    Failed,
    Dropped,
}

impl NotificationState {
    pub const ALL: [NotificationState; 4] = [
        NotificationState::Pending,
        NotificationState::Delivered,
        NotificationState::Failed,
        NotificationState::Dropped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotificationState::Pending => "pending",
            NotificationState::Delivered => "delivered",
            NotificationState::Failed => "failed",
            NotificationState::Dropped => "dropped",
        }
    }

    pub fn parse(s: &str) -> Option<NotificationState> {
        NotificationState::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A notification as `GET /api/v1/notifications` shows it (its body stays in the
/// outbox).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Notification {
    pub id: String,
    pub sink: String,
    #[serde(rename = "type")]
    pub kind: AuditKind,
    pub job_id: Option<String>,
    pub sequence: i64,
    pub state: NotificationState,
    /// Tries made so far.
    pub tries: u32,
    /// When the next try is due, while pending.
    #[serde(serialize_with = "crate::domain::opt_rfc3339")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_try_at: Option<Millis>,
    /// The receiver's status on the last try, if it answered.
    pub last_status: Option<u16>,
    /// Why the last try failed.
    pub last_error: Option<String>,
    #[serde(serialize_with = "crate::domain::as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Millis,
    #[serde(serialize_with = "crate::domain::as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Millis,
}

/// A notification leased for one try.
#[derive(Debug, Clone)]
pub struct Leased {
    pub id: String,
    pub kind: AuditKind,
    pub job_id: Option<String>,
    /// The audit record it reports.
    pub sequence: i64,
    /// This try's number, from 1; the lease's fence.
    pub try_n: u32,
}

/// A try's verdict, to record while the deliverer still holds the lease.
#[derive(Debug, Clone)]
pub struct DeliveryReport {
    pub id: String,
    pub sink: String,
    pub worker: String,
    pub try_n: u32,
    pub kind: AuditKind,
    pub job_id: Option<String>,
    pub judged: Judged,
}
