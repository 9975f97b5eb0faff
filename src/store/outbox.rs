//! The notification outbox (SPEC §10) as both stores keep it: its tables, columns
//! and statements, written once with `$n` parameters (SQLite reads them as `?n`,
//! see [`sqlite_params`]). What a verdict means is `notify::policy`'s; what each
//! row becomes is decided here, once, for both engines.

use super::StoreError;
use super::rows::{Columns, corrupt, narrow};
use crate::audit::{AuditEntry, AuditKind};
use crate::domain::Millis;
use crate::notify::{DeliveryReport, Leased, Notification, NotificationState, Verdict};

/// The outbox and the sinks a 410 disabled. The same statements serve both stores.
pub(super) const OUTBOX_MIGRATION: &str = r#"
CREATE TABLE notifications (
    id TEXT PRIMARY KEY,
    sink TEXT NOT NULL,
    kind TEXT NOT NULL,
    job_id TEXT,
    sequence BIGINT NOT NULL,
    state TEXT NOT NULL,
    tries BIGINT NOT NULL,
    next_at BIGINT NOT NULL,
    lease_owner TEXT,
    last_status BIGINT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX notifications_due ON notifications(sink, next_at) WHERE state = 'pending';
CREATE INDEX notifications_listed ON notifications(state, id);
CREATE TABLE notification_sinks (
    name TEXT PRIMARY KEY,
    disabled_at BIGINT NOT NULL
);
"#;

/// A statement written with `$n` parameters as SQLite's `?n`.
pub(super) fn sqlite_params(sql: &str) -> String {
    sql.replace('$', "?")
}

/// The columns [`read_notification`] reads.
pub(super) const NOTIFICATION_COLUMNS: &str = "id, sink, kind, job_id, sequence, state, tries,
    next_at, last_status, last_error, created_at, updated_at";

pub(super) fn read_notification(r: &impl Columns) -> Result<Notification, StoreError> {
    let kind = r.text(2)?;
    let state = r.text(5)?;
    let state = NotificationState::parse(&state).ok_or_else(|| corrupt("state", &state))?;
    Ok(Notification {
        id: r.text(0)?,
        sink: r.text(1)?,
        kind: AuditKind::parse(&kind).ok_or_else(|| corrupt("kind", &kind))?,
        job_id: r.text_opt(3)?,
        sequence: r.int(4)?,
        tries: narrow("tries", r.int(6)?)?,
        next_try_at: (state == NotificationState::Pending)
            .then(|| r.int(7))
            .transpose()?,
        state,
        last_status: r.int_opt(8)?.map(|s| narrow("status", s)).transpose()?,
        last_error: r.text_opt(9)?,
        created_at: r.int(10)?,
        updated_at: r.int(11)?,
    })
}

pub(super) const INSERT_LETTER: &str = "INSERT INTO notifications (id, sink, kind, job_id,
    sequence, state, tries, next_at, created_at, updated_at)
    VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6, $6)";

/// Leases up to `$5` due notifications of sink `$4` to `$1` until `$2` (`$3` is
/// now): each becomes due again only when its lease runs out, so a deliverer that
/// dies leaves its notifications to the next one. Nothing of a disabled sink.
/// `{lock}` is where PostgreSQL skips rows another replica is leasing.
pub(super) fn notification_lease_sql(lock: &str) -> String {
    format!(
        "UPDATE notifications SET lease_owner = $1, next_at = $2, tries = tries + 1,
            updated_at = $3
         WHERE id IN (SELECT id FROM notifications
                      WHERE sink = $4 AND state = 'pending' AND next_at <= $3
                      ORDER BY next_at, id LIMIT $5{lock})
           AND NOT EXISTS (SELECT 1 FROM notification_sinks WHERE name = $4)
         RETURNING id, kind, job_id, sequence, tries"
    )
}

pub(super) fn read_leased(r: &impl Columns) -> Result<Leased, StoreError> {
    let kind = r.text(1)?;
    Ok(Leased {
        id: r.text(0)?,
        kind: AuditKind::parse(&kind).ok_or_else(|| corrupt("kind", &kind))?,
        job_id: r.text_opt(2)?,
        sequence: r.int(3)?,
        try_n: narrow("tries", r.int(4)?)?,
    })
}

/// When sink `$1`'s next notification is due; none while it is disabled.
pub(super) const NEXT_DUE: &str = "SELECT MIN(next_at) FROM notifications
    WHERE sink = $1 AND state = 'pending'
      AND NOT EXISTS (SELECT 1 FROM notification_sinks WHERE name = $1)";

/// Records a try's verdict, fenced: only the deliverer that holds the lease, for
/// the try it made, writes (`$6` id, `$7` worker, `$8` try).
pub(super) const RECORD_TRY: &str = "UPDATE notifications SET state = $1, next_at = $2,
        lease_owner = NULL, last_status = $3, last_error = $4, updated_at = $5
    WHERE id = $6 AND state = 'pending' AND lease_owner = $7 AND tries = $8";

pub(super) const DISABLE_SINK: &str =
    "INSERT INTO notification_sinks (name, disabled_at) VALUES ($1, $2) ON CONFLICT DO NOTHING";

pub(super) const ENABLE_SINK: &str = "DELETE FROM notification_sinks WHERE name = $1";

pub(super) const DISABLED_SINKS: &str =
    "SELECT name, disabled_at FROM notification_sinks ORDER BY name";

pub(super) const PENDING_BY_SINK: &str =
    "SELECT sink, COUNT(*) FROM notifications WHERE state = 'pending' GROUP BY sink";

pub(super) const DROP_SINK: &str = "UPDATE notifications SET state = 'dropped',
    lease_owner = NULL, updated_at = $2 WHERE sink = $1 AND state = 'pending'";

/// Sent and dropped notifications older than `$1` (the dedupe window): what their
/// listing is for has passed, and the outbox would otherwise grow with every event.
pub(super) const PRUNE_SENT: &str = "DELETE FROM notifications
    WHERE state IN ('delivered', 'dropped') AND updated_at < $1";

pub(super) const NOTIFICATION_STATE: &str = "SELECT state FROM notifications WHERE id = $1";

/// An operator's retry of a failed notification: due now, its schedule from the start.
pub(super) const REVIVE: &str = "UPDATE notifications SET state = 'pending', tries = 0,
    next_at = $2, lease_owner = NULL, updated_at = $2 WHERE id = $1 AND state = 'failed'";

/// One row as the API shows it.
pub(super) fn notification_sql() -> String {
    format!("SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE id = $1")
}

/// What a try's verdict writes: the row's new state and when it is next due.
pub(super) fn row_after(verdict: Verdict, now: Millis) -> (NotificationState, Millis) {
    match verdict {
        Verdict::Delivered => (NotificationState::Delivered, now),
        Verdict::Retry { at } => (NotificationState::Pending, at),
        Verdict::Failed => (NotificationState::Failed, now),
        // Due at once when the sink is enabled again.
        Verdict::Gone => (NotificationState::Pending, now),
    }
}

/// The record a verdict leaves, if any: `notification.failed` past the schedule,
/// `notification.sink_disabled` when this 410 is the one that disabled the sink.
pub(super) fn verdict_record(report: &DeliveryReport, newly_disabled: bool) -> Option<AuditEntry> {
    let why = report.judged.error.as_deref().unwrap_or("no answer");
    match report.judged.verdict {
        Verdict::Failed => Some(AuditEntry::notification(
            AuditKind::NotificationFailed,
            "worker",
            report.job_id.as_deref(),
            &format!(
                "notification {} ({}) to sink {} given up after {} tries; the last: {why}",
                report.id,
                report.kind.as_str(),
                report.sink,
                report.try_n
            ),
        )),
        Verdict::Gone if newly_disabled => Some(AuditEntry::notification(
            AuditKind::NotificationSinkDisabled,
            "worker",
            None,
            &format!(
                "sink {} answered 410 Gone to notification {}: nothing more is sent to it \
                 until it is enabled",
                report.sink, report.id
            ),
        )),
        _ => None,
    }
}

/// `notification.dropped` for the pending notifications of a sink no longer
/// configured.
pub(super) fn dropped_record(sink: &str, count: i64) -> AuditEntry {
    AuditEntry::notification(
        AuditKind::NotificationDropped,
        "config",
        None,
        &format!("{count} pending notifications to sink {sink} dropped: the sink was removed"),
    )
}

/// `notification.sink_enabled`, by an operator or by loading the config (`config`).
pub(super) fn enabled_record(sink: &str, actor: &str) -> AuditEntry {
    AuditEntry::notification(
        AuditKind::NotificationSinkEnabled,
        actor,
        None,
        &format!("sink {sink} enabled: its pending notifications are sent again"),
    )
}

/// `notification.retried` by an operator.
pub(super) fn retried_record(n: &Notification, actor: &str) -> AuditEntry {
    AuditEntry::notification(
        AuditKind::NotificationRetried,
        actor,
        n.job_id.as_deref(),
        &format!(
            "notification {} ({}) to sink {} retried",
            n.id,
            n.kind.as_str(),
            n.sink
        ),
    )
}
