//! The embedded store: one SQLite file in WAL mode.
//!
//! rusqlite rather than an async driver, because SQLite has one writer anyway: every
//! write goes to a single writer thread that drains its queue into one transaction
//! per batch (group commit), so a burst of webhooks costs one fsync, not one each.
//! An operation that fails rolls its batch back and the others run again without
//! it. Reads run on a separate connection and thread; WAL lets
//! them proceed while the writer commits.

use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use rusqlite::config::DbConfig;
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};
use tokio::sync::{Notify, oneshot};

use super::OverrideOutcome;
use super::outbox::{
    DISABLE_SINK, DISABLED_SINKS, DROP_SINK, ENABLE_SINK, INSERT_LETTER, NEXT_DUE,
    NOTIFICATION_STATE, OUTBOX_MIGRATION, PENDING_BY_SINK, PRUNE_SENT, RECORD_TRY, REVIVE,
    dropped_record, enabled_record, notification_lease_sql, notification_sql, read_leased,
    read_notification, retried_record, row_after, sqlite_params, verdict_record,
};
use super::rows::{
    APPROVAL_COLUMNS, ATTEMPT_COLUMNS, AUDIT_COLUMNS, Arg, BallotLanding, CHILDREN_MIGRATION,
    CLAIMS_MIGRATION, Columns, EMITTED, EVENT_COLUMNS, EVENTS_PAGE_BYTES_COLUMN, EchoProbe,
    FREEZE_COLUMNS, FROZEN_DUE_NOW, GATES_MIGRATION, GateLanding, JOB_COLUMNS, JobInsert, Landing,
    Opened, SEEN_COLUMNS, SYSTEM_ACTOR, TRACE_MIGRATION, attempt_values, audit_listing, chain_sql,
    checkpoints_sql, claims_text, events_listing, events_page, expiry, freeze_scope, gate_revival,
    gate_text, job_state, jobs_listing, lease_expired, leased_move, millis, notifications_listing,
    operator_move, page, payload_text, read_approval, read_attempt, read_audit, read_event,
    read_freeze, read_job, read_seen, revival, rule_removed, sql_limit, start_freeze_sql,
    stored_count,
};
use super::rows::{
    OverrideLanding, SET_FREEZE_OVERRIDE, SET_FROZEN, SET_PROTECTED, frozen_names, policy_text,
};
use super::sessions::{
    DROP_EXPIRED, END_SESSION, INSERT_SESSION, SESSION, SESSIONS_MIGRATION, groups_text,
    read_session, role_text,
};
use super::{
    ApprovalOutcome, AttemptReport, AuditFilter, ChainLink, ChainRow, EventFilter, IngestOutcome,
    IngestPolicy, JobFilter, JobRef, JobSummary, LeasedJob, NewEvent, OperatorAction,
    OperatorOutcome, Page, Pruned, QueueStats, Release, Store, StoreError, StoredEvent, Transition,
};
use super::{ConsoleSession, DisabledSink, NotificationFilter, NotificationRetry, SinksSettled};
use crate::audit::{Anchor, AuditEntry, AuditRecord, GENESIS, HASH_VERSION, chain_hash};
use crate::domain::approval::{Approval, Ballot};
use crate::domain::freeze::{OverrideRequest, RuntimeFreeze};
use crate::domain::gate::{Evidence, Seen};
use crate::domain::{AttemptRecord, Event, Job, JobState, Millis, now_millis};
use crate::notify::{
    DeliveryReport, Leased, Letter, Notification, NotificationState, Routes, Verdict,
};

/// Most operations committed in one transaction.
const MAX_BATCH: usize = 512;

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE events (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    type TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    repo TEXT, image TEXT, tag TEXT, digest TEXT, path TEXT,
    build_name TEXT, build_number TEXT,
    payload TEXT NOT NULL,
    parent_job_id TEXT,
    chain_depth INTEGER NOT NULL
);
CREATE INDEX events_received ON events(received_at);

CREATE TABLE deliveries (
    source TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (source, delivery_id)
) WITHOUT ROWID;

CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL REFERENCES events(id),
    rule TEXT NOT NULL,
    target TEXT NOT NULL,
    action TEXT,
    state TEXT NOT NULL,
    outcome TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    retry_base INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_owner TEXT,
    lease_expires_at INTEGER,
    attempt_started_at INTEGER,
    last_error_code TEXT,
    last_error_message TEXT,
    parent_job_id TEXT,
    chain_depth INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX jobs_due ON jobs(next_attempt_at) WHERE state IN ('queued', 'retrying');
CREATE INDEX jobs_leased ON jobs(lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_state ON jobs(state, id);
CREATE INDEX jobs_rule ON jobs(rule, id);
CREATE INDEX jobs_event ON jobs(event_id);

CREATE TABLE attempts (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    n INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    upstream_status INTEGER,
    error_code TEXT,
    error_message TEXT,
    PRIMARY KEY (job_id, n)
) WITHOUT ROWID;

CREATE TABLE audit (
    seq INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    event_id TEXT, job_id TEXT, rule TEXT, target TEXT,
    repo TEXT, image TEXT, tag TEXT, digest TEXT,
    from_ref TEXT, to_ref TEXT, outcome TEXT,
    upstream_status INTEGER,
    message TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_at ON audit(at);
CREATE INDEX audit_job ON audit(job_id);
CREATE INDEX audit_rule ON audit(rule);
CREATE INDEX audit_image ON audit(image);
"#,
    r#"
ALTER TABLE jobs ADD COLUMN target_ref TEXT;
ALTER TABLE jobs ADD COLUMN target_digest TEXT;
CREATE INDEX jobs_target_ref ON jobs(target_ref, created_at) WHERE target_ref IS NOT NULL;
CREATE UNIQUE INDEX jobs_rule_parent ON jobs(rule, parent_job_id) WHERE parent_job_id IS NOT NULL;
ALTER TABLE audit ADD COLUMN parent_job_id TEXT;
ALTER TABLE audit ADD COLUMN chain_depth INTEGER;
"#,
    r#"
CREATE INDEX audit_checkpoints ON audit(seq) WHERE kind = 'audit.pruned';
ALTER TABLE audit ADD COLUMN count INTEGER;
-- The records already here were hashed in the legacy form (audit::chain).
ALTER TABLE audit ADD COLUMN hash_version INTEGER NOT NULL DEFAULT 1;
"#,
    r#"
-- SPEC §9 approvals: the policy a job was created under, the current wait's deadline
-- and round, who set it off; and every verdict given, by round.
ALTER TABLE jobs ADD COLUMN approval TEXT;
ALTER TABLE jobs ADD COLUMN approval_expires_at INTEGER;
ALTER TABLE jobs ADD COLUMN initiator TEXT;
ALTER TABLE jobs ADD COLUMN approval_round INTEGER NOT NULL DEFAULT 0;
CREATE INDEX jobs_awaiting ON jobs(approval_expires_at) WHERE state = 'awaiting_approval';
CREATE TABLE approvals (
    seq INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs(id),
    round INTEGER NOT NULL,
    by_name TEXT NOT NULL,
    at INTEGER NOT NULL,
    verdict TEXT NOT NULL,
    comment TEXT,
    as_group TEXT
);
CREATE INDEX approvals_job ON approvals(job_id, round);
"#,
    // Frozen jobs are due when their freezes end, and then run in creation order.
    r#"
DROP INDEX jobs_due;
CREATE INDEX jobs_due ON jobs(next_attempt_at, id) WHERE state IN ('queued', 'retrying', 'frozen');
"#,
    r#"
CREATE TABLE freezes (
    name TEXT PRIMARY KEY,
    to_repos TEXT,
    targets TEXT,
    from_at BIGINT NOT NULL,
    until_at BIGINT NOT NULL,
    reason TEXT NOT NULL,
    started_by TEXT NOT NULL
);
"#,
    GATES_MIGRATION,
    // SPEC §9 freeze overrides: what holds a frozen job (the freezes' names as JSON,
    // and when the last ends), and the override that let it run.
    r#"
ALTER TABLE jobs ADD COLUMN frozen_by TEXT;
ALTER TABLE jobs ADD COLUMN frozen_until INTEGER;
ALTER TABLE jobs ADD COLUMN freeze_override TEXT;
"#,
    CLAIMS_MIGRATION,
    OUTBOX_MIGRATION,
    SESSIONS_MIGRATION,
    CHILDREN_MIGRATION,
    TRACE_MIGRATION,
];

/// Per-batch facts the writer acts on after the commit, and the notification
/// routes the batch's operations write their outbox by.
#[derive(Default)]
struct Batch {
    wake_workers: bool,
    routes: Arc<Routes>,
}

/// A write queued for the writer thread. It may run twice: once in its batch's
/// transaction and, if another operation fails that batch, again alone.
trait WriteOp: Send {
    /// Runs the operation in the open transaction; false when it failed.
    fn run(&mut self, conn: &Connection, batch: &mut Batch) -> bool;
    /// Delivers the last run's result, or the commit's failure.
    fn finish(self: Box<Self>, commit: Result<(), StoreError>);
}

struct Op<T, F> {
    f: F,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> WriteOp for Op<T, F>
where
    T: Send + 'static,
    F: FnMut(&Connection, &mut Batch) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &Connection, batch: &mut Batch) -> bool {
        let result = if batch.routes.is_empty() {
            (self.f)(conn, batch)
        } else {
            // Whatever audit records the operation appends, their notifications
            // join them in its transaction (SPEC §10).
            OUTBOX.with_borrow_mut(|o| {
                o.routes = Some(batch.routes.clone());
                o.letters.clear();
            });
            let result = (self.f)(conn, batch);
            let letters = OUTBOX.with_borrow_mut(|o| {
                o.routes = None;
                std::mem::take(&mut o.letters)
            });
            result.and_then(|value| {
                if !letters.is_empty() {
                    post_letters(conn, &letters)?;
                    batch.wake_workers = true;
                }
                Ok(value)
            })
        };
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, commit: Result<(), StoreError>) {
        let Op { result, reply, .. } = *self;
        let result = commit.and_then(|()| {
            result.unwrap_or_else(|| Err(StoreError::Unavailable("the write did not run".into())))
        });
        // The caller may have gone away (client disconnected); nothing to do then.
        let _ = reply.send(result);
    }
}

type ReadOp = Box<dyn FnOnce(&Connection) + Send>;

pub struct SqliteStore {
    writer: mpsc::Sender<Box<dyn WriteOp>>,
    reader: mpsc::Sender<ReadOp>,
    signal: Arc<Notify>,
    routes: Arc<ArcSwap<Routes>>,
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and migrates it.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || SqliteStore::open_blocking(&path))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }

    fn open_blocking(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let mut write_conn = connect(path)?;
        migrate(&mut write_conn)?;
        let read_conn = connect(path)?;
        read_conn
            .execute_batch("PRAGMA query_only = ON")
            .map_err(unavailable)?;

        let signal = Arc::new(Notify::new());
        let (writer, write_rx) = mpsc::channel::<Box<dyn WriteOp>>();
        let (reader, read_rx) = mpsc::channel::<ReadOp>();
        let wake = signal.clone();
        let routes = Arc::new(ArcSwap::from_pointee(Routes::default()));
        let writer_routes = routes.clone();
        spawn_thread("gantry-sqlite-writer", move || {
            writer_loop(&write_conn, &write_rx, &wake, &writer_routes)
        })?;
        spawn_thread("gantry-sqlite-reader", move || {
            while let Ok(op) = read_rx.recv() {
                op(&read_conn);
            }
        })?;
        Ok(SqliteStore {
            writer,
            reader,
            signal,
            routes,
        })
    }

    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&Connection, &mut Batch) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Box::new(Op {
                f,
                result: None,
                reply,
            }))
            .map_err(|_| StoreError::Unavailable("the writer thread has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the writer thread has stopped".into()))?
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        self.reader
            .send(Box::new(move |conn| {
                let _ = reply.send(f(conn));
            }))
            .map_err(|_| StoreError::Unavailable("the reader thread has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the reader thread has stopped".into()))?
    }

    /// Audit records as verification reads them, by `sql` with a sequence number and
    /// a limit bound.
    async fn chain_rows(
        &self,
        sql: String,
        seq: i64,
        limit: usize,
    ) -> Result<Vec<ChainRow>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&sql).map_err(unavailable)?;
            let mut rows = stmt
                .query(params![seq, sql_limit(limit)])
                .map_err(unavailable)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(unavailable)? {
                let seq: i64 = row.get(0).map_err(unavailable)?;
                out.push(ChainRow {
                    seq,
                    record: read_audit(row),
                });
            }
            Ok(out)
        })
        .await
    }
}

fn spawn_thread(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), StoreError> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map(|_| ())
        .map_err(|e| StoreError::Unavailable(format!("cannot start {name}: {e}")))
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(unavailable)?;
    // FULL: a commit is on disk before the 202, even across a power cut; group commit
    // keeps that affordable. A 16 MiB page cache (the default is 2 MiB) keeps the
    // index pages ingest touches in memory instead of reading them back; statement
    // journals stay in memory too, instead of a temporary file each.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 5000;
         PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -16384;",
    )
    .map_err(unavailable)?;
    // Plans that never depend on the values bound: otherwise SQLite re-prepares a
    // statement whenever a value its plan looked at changes, which for the echo and
    // lease lookups meant parsing their SQL again on every call.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(unavailable)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(unavailable)?;
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(version).unwrap_or(0))
    {
        let tx = conn.transaction().map_err(unavailable)?;
        tx.execute_batch(sql).map_err(unavailable)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
            .map_err(unavailable)?;
        tx.commit().map_err(unavailable)?;
    }
    Ok(())
}

fn writer_loop(
    conn: &Connection,
    rx: &mpsc::Receiver<Box<dyn WriteOp>>,
    signal: &Notify,
    routes: &ArcSwap<Routes>,
) {
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while ops.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let routes = routes.load_full();
        match commit_together(conn, &mut ops, signal, &routes) {
            Ok(()) => {
                for op in ops {
                    op.finish(Ok(()));
                }
            }
            // One operation failed: the batch was rolled back and each runs again alone,
            // so its failure is its own (the commit that did not happen is not).
            Err(Unwound::OpFailed) => {
                for mut op in ops {
                    let commit =
                        match commit_together(conn, std::slice::from_mut(&mut op), signal, &routes)
                        {
                            Err(Unwound::Tx(e)) => Err(e),
                            Ok(()) | Err(Unwound::OpFailed) => Ok(()),
                        };
                    op.finish(commit);
                }
            }
            Err(Unwound::Tx(e)) => {
                for op in ops {
                    op.finish(Err(e.clone()));
                }
            }
        }
    }
}

/// Why a batch's transaction was rolled back.
enum Unwound {
    /// An operation failed; its result says how.
    OpFailed,
    /// Beginning or committing the transaction failed.
    Tx(StoreError),
}

/// Runs `ops` in one transaction and commits it if every one succeeded. No savepoint
/// per operation: SQLite would copy every page an operation touches into a
/// sub-journal, which cost a quarter of the writer's time; a failed operation is rare
/// and costs the batch a rerun instead. Idle workers are woken once the commit queued
/// work for them.
fn commit_together(
    conn: &Connection,
    ops: &mut [Box<dyn WriteOp>],
    signal: &Notify,
    routes: &Arc<Routes>,
) -> Result<(), Unwound> {
    let sql = |sql: &str| {
        conn.execute_batch(sql)
            .map_err(|e| Unwound::Tx(unavailable(e)))
    };
    sql("BEGIN IMMEDIATE")?;
    let mut batch = Batch {
        wake_workers: false,
        routes: routes.clone(),
    };
    let mut all_ok = true;
    for op in ops.iter_mut() {
        all_ok &= op.run(conn, &mut batch);
    }
    if !all_ok {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(Unwound::OpFailed);
    }
    if let Err(e) = sql("COMMIT") {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(e);
    }
    if batch.wake_workers {
        signal.notify_waiters();
    }
    Ok(())
}

fn append_audit(conn: &Connection, entry: &AuditEntry) -> Result<i64, StoreError> {
    let head: Option<(i64, String)> = conn
        .prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(unavailable)?;
    let (prev_seq, prev_hash) = head.unwrap_or((0, GENESIS.to_string()));
    let seq = prev_seq + 1;
    let hash = chain_hash(&prev_hash, seq, entry);
    let count = stored_count(entry)?;
    conn.prepare_cached(&format!(
        "INSERT INTO audit ({AUDIT_COLUMNS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19,
            ?20, ?21, ?22, ?23)"
    ))
    .and_then(|mut s| {
        s.execute(params![
            seq,
            entry.at,
            entry.kind.as_str(),
            entry.actor,
            entry.event_id,
            entry.job_id,
            entry.rule,
            entry.target,
            entry.repo,
            entry.image,
            entry.tag,
            entry.digest,
            entry.from,
            entry.to,
            entry.outcome,
            entry.upstream_status,
            entry.message,
            prev_hash,
            hash,
            entry.parent_job_id,
            entry.chain_depth,
            count,
            HASH_VERSION,
        ])
    })
    .map_err(unavailable)?;
    OUTBOX.with_borrow_mut(|o| {
        if let Some(routes) = &o.routes {
            let made = routes.letters(seq, entry);
            o.letters.extend(made);
        }
    });
    Ok(seq)
}

thread_local! {
    /// The notifications of the records the writer thread's current operation has
    /// appended (SPEC §10), made as each is appended and written to the outbox when
    /// the operation ends, in its transaction. A thread-local because every write
    /// helper takes only the connection, and SQLite has one writer thread, on which
    /// alone `append_audit` runs; `Op::run` sets the routes and takes the letters.
    static OUTBOX: RefCell<Outbox> = RefCell::new(Outbox::default());
}

#[derive(Default)]
struct Outbox {
    /// Set while an operation runs with notifications configured.
    routes: Option<Arc<Routes>>,
    letters: Vec<Letter>,
}

fn post_letters(conn: &Connection, letters: &[Letter]) -> Result<(), StoreError> {
    let mut insert = conn
        .prepare_cached(&sqlite_params(INSERT_LETTER))
        .map_err(unavailable)?;
    for l in letters {
        insert
            .execute(params![
                l.id,
                l.sink,
                l.kind.as_str(),
                l.job_id,
                l.sequence,
                l.created_at
            ])
            .map_err(unavailable)?;
    }
    Ok(())
}

/// Records a try's verdict while `report.worker` holds the lease.
fn record_try(conn: &Connection, report: &DeliveryReport) -> Result<bool, StoreError> {
    let now = now_millis();
    let (state, next_at) = row_after(report.judged.verdict, now);
    let written = conn
        .prepare_cached(&sqlite_params(RECORD_TRY))
        .and_then(|mut s| {
            s.execute(params![
                state.as_str(),
                next_at,
                report.judged.status,
                report.judged.error,
                now,
                report.id,
                report.worker,
                report.try_n
            ])
        })
        .map_err(unavailable)?;
    if written == 0 {
        return Ok(false);
    }
    let newly_disabled = report.judged.verdict == Verdict::Gone
        && conn
            .execute(&sqlite_params(DISABLE_SINK), params![report.sink, now])
            .map_err(unavailable)?
            == 1;
    if let Some(entry) = verdict_record(report, newly_disabled) {
        append_audit(conn, &entry)?;
    }
    Ok(true)
}

fn load_notification(conn: &Connection, id: &str) -> Result<Option<Notification>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&sqlite_params(&notification_sql()))
        .map_err(unavailable)?;
    let mut rows = stmt.query([id]).map_err(unavailable)?;
    rows.next()
        .map_err(unavailable)?
        .map(read_notification)
        .transpose()
}

/// The most recent job whose promotion produced what `probe` names.
fn promotion_of(conn: &Connection, probe: &EchoProbe<'_>) -> Result<Option<ChainLink>, StoreError> {
    conn.prepare_cached(
        "SELECT id, chain_depth FROM jobs
         WHERE target_ref = ?1 AND created_at >= ?2
           AND state NOT IN ('failed', 'cancelled')
           AND (?3 IS NULL OR target_digest IS NULL OR target_digest = ?3)
         ORDER BY created_at DESC LIMIT 1",
    )
    .and_then(|mut s| {
        s.query_row(params![probe.key, probe.since, probe.digest], |r| {
            Ok(ChainLink {
                job_id: r.get(0)?,
                chain_depth: r.get(1)?,
            })
        })
        .optional()
    })
    .map_err(unavailable)
}

fn ingest_one(
    conn: &Connection,
    new: &NewEvent,
    policy: IngestPolicy,
    batch: &mut Batch,
) -> Result<IngestOutcome, StoreError> {
    let window = policy.dedupe_window;
    let ev = &new.event;
    let seen: Option<(String, i64)> = conn
        .prepare_cached(
            "SELECT event_id, received_at FROM deliveries WHERE source = ?1 AND delivery_id = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![ev.source, ev.delivery_id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
        })
        .map_err(unavailable)?;
    if let Some((original, at)) = seen
        && at >= ev.received_at - millis(window)
    {
        let jobs = conn
            .prepare_cached("SELECT id, rule FROM jobs WHERE event_id = ?1 ORDER BY id")
            .and_then(|mut s| {
                s.query_map([&original], |r| {
                    Ok(JobRef {
                        id: r.get(0)?,
                        rule: r.get(1)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()
            })
            .map_err(unavailable)?;
        append_audit(conn, &AuditEntry::duplicate(ev, &original))?;
        return Ok(IngestOutcome {
            event_id: original,
            jobs,
            duplicate: true,
        });
    }
    let link = match EchoProbe::of(ev, window) {
        Some(probe) => promotion_of(conn, &probe)?,
        None => None,
    };
    let new = new.joined(link, policy.max_chain_depth);
    let ev = &new.event;

    conn.prepare_cached(
        "INSERT INTO deliveries (source, delivery_id, event_id, received_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (source, delivery_id) DO UPDATE
         SET event_id = excluded.event_id, received_at = excluded.received_at",
    )
    .and_then(|mut s| s.execute(params![ev.source, ev.delivery_id, ev.id, ev.received_at]))
    .map_err(unavailable)?;
    let payload = payload_text(ev);
    let s = &ev.subject;
    conn.prepare_cached(&format!(
        "INSERT INTO events ({EVENT_COLUMNS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
    ))
    .and_then(|mut st| {
        st.execute(params![
            ev.id,
            ev.source,
            ev.kind,
            ev.delivery_id,
            ev.received_at,
            s.repo,
            s.image,
            s.tag,
            s.digest,
            s.path,
            s.build_name,
            s.build_number,
            payload,
            ev.parent_job_id,
            ev.chain_depth,
            claims_text(ev),
        ])
    })
    .map_err(unavailable)?;
    append_audit(conn, &AuditEntry::received(ev))?;
    for note in &new.notes {
        append_audit(conn, note)?;
    }
    for evidence in &new.evidence {
        arrive_on(conn, ev, evidence, batch)?;
    }

    let mut jobs = Vec::with_capacity(new.jobs.len());
    for job in &new.jobs {
        if let Some(parent) = &ev.parent_job_id {
            let existing: Option<String> = conn
                .prepare_cached("SELECT id FROM jobs WHERE rule = ?1 AND parent_job_id = ?2")
                .and_then(|mut s| {
                    s.query_row(params![job.rule, parent], |r| r.get(0))
                        .optional()
                })
                .map_err(unavailable)?;
            if let Some(existing) = existing {
                append_audit(conn, &AuditEntry::duplicate_job(ev, job, &existing))?;
                continue;
            }
        }
        let opened = match &job.gate {
            Some(start) => {
                if let Some(existing) = waiting_on(conn, &job.rule, &start.key)? {
                    append_audit(conn, &AuditEntry::duplicate_wait(ev, job, &existing))?;
                    continue;
                }
                let seen = evidence_since(conn, &job.rule, &start.key, start.evidence_since())?;
                Some(Opened::of(start, &seen))
            }
            None => None,
        };
        let row = JobInsert::of(job, ev.received_at, opened.as_ref());
        conn.prepare_cached(
            "INSERT INTO jobs (id, event_id, rule, target, action, state, next_attempt_at,
                last_error_code, last_error_message, parent_job_id, chain_depth, created_at,
                updated_at, target_ref, target_digest, approval, approval_expires_at, initiator,
                gate, gate_key, gate_expires_at, soak_until, trace_parent)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?17, ?8, ?9, ?10, ?11, ?7, ?7, ?12, ?13, ?14, ?15,
                ?16, ?18, ?19, ?20, ?21, ?22)",
        )
        .and_then(|mut st| {
            st.execute(params![
                job.id,
                ev.id,
                job.rule,
                job.target,
                row.action,
                row.state.as_str(),
                ev.received_at,
                row.error_code,
                row.error_message,
                ev.parent_job_id,
                ev.chain_depth,
                row.target_ref,
                row.target_digest,
                row.approval,
                row.approval_expires_at,
                job.initiator,
                row.next_attempt_at,
                row.gate,
                row.gate_key,
                row.gate_expires_at,
                job.soak_until,
                job.trace_parent,
            ])
        })
        .map_err(unavailable)?;
        let opening = opened.as_ref().map(|o| &o.opening);
        append_audit(conn, &AuditEntry::job_created(ev, job, opening))?;
        // Negative evidence marks nothing met, so a blocked job has none of these.
        if let Some(o) = &opened {
            for entry in AuditEntry::met_at_start(ev, job, &o.gate) {
                append_audit(conn, &entry)?;
            }
        }
        batch.wake_workers |= row.state == JobState::Queued;
        jobs.push(JobRef {
            id: job.id.clone(),
            rule: job.rule.clone(),
        });
    }
    Ok(IngestOutcome {
        event_id: ev.id.clone(),
        jobs,
        duplicate: false,
    })
}

/// The job of `rule` waiting on the artifact `key` names, if there is one (at most
/// one is: a second trigger is a duplicate).
fn waiting_on(conn: &Connection, rule: &str, key: &str) -> Result<Option<String>, StoreError> {
    conn.prepare_cached(
        "SELECT id FROM jobs INDEXED BY jobs_gate_wait
         WHERE rule = ?1 AND gate_key = ?2 AND state = 'waiting' LIMIT 1",
    )
    .and_then(|mut s| s.query_row(params![rule, key], |r| r.get(0)).optional())
    .map_err(unavailable)
}

/// The evidence for `rule`'s gate about the artifact `key` names received since
/// `since`, oldest first.
fn evidence_since(
    conn: &Connection,
    rule: &str,
    key: &str,
    since: Millis,
) -> Result<Vec<Seen>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {SEEN_COLUMNS} FROM evidence
             WHERE rule = ?1 AND gate_key = ?2 AND received_at >= ?3 ORDER BY received_at"
        ))
        .map_err(unavailable)?;
    let mut rows = stmt.query(params![rule, key, since]).map_err(unavailable)?;
    let mut seen = Vec::new();
    while let Some(row) = rows.next().map_err(unavailable)? {
        seen.push(read_seen(row)?);
    }
    Ok(seen)
}

/// Keeps `evidence` carried by `ev`, and applies it to the job waiting on it, if any.
fn arrive_on(
    conn: &Connection,
    ev: &Event,
    evidence: &Evidence,
    batch: &mut Batch,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO evidence (rule, gate_key, condition, event_id, block, received_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut s| {
        s.execute(params![
            evidence.rule,
            evidence.key,
            evidence.condition,
            ev.id,
            i64::from(evidence.block),
            ev.received_at,
            ev.received_at.saturating_add(evidence.within_ms),
        ])
    })
    .map_err(unavailable)?;
    let Some(id) = waiting_on(conn, &evidence.rule, &evidence.key)? else {
        return Ok(());
    };
    let Some(job) = load_job(conn, &id)? else {
        return Ok(());
    };
    let Some(landing) = GateLanding::arrival(&job, evidence, ev)? else {
        return Ok(());
    };
    let error = landing.error.as_ref();
    conn.prepare_cached(
        "UPDATE jobs SET state = ?2, gate = ?3,
            approval_expires_at = COALESCE(?4, approval_expires_at),
            last_error_code = COALESCE(?5, last_error_code),
            last_error_message = COALESCE(?6, last_error_message),
            next_attempt_at = MAX(?7, COALESCE(soak_until, 0)), updated_at = ?7
         WHERE id = ?1",
    )
    .and_then(|mut s| {
        s.execute(params![
            id,
            landing.state.as_str(),
            landing.gate,
            landing.approval_expires_at,
            error.map(|e| e.code.as_str()),
            error.map(|e| e.message.as_str()),
            ev.received_at,
        ])
    })
    .map_err(unavailable)?;
    for entry in &landing.audit {
        append_audit(conn, entry)?;
    }
    batch.wake_workers |= landing.state == JobState::Queued;
    Ok(())
}

impl Columns for Row<'_> {
    fn text(&self, i: usize) -> Result<String, StoreError> {
        self.get(i).map_err(unavailable)
    }
    fn text_opt(&self, i: usize) -> Result<Option<String>, StoreError> {
        self.get(i).map_err(unavailable)
    }
    fn int(&self, i: usize) -> Result<i64, StoreError> {
        self.get(i).map_err(unavailable)
    }
    fn int_opt(&self, i: usize) -> Result<Option<i64>, StoreError> {
        self.get(i).map_err(unavailable)
    }
}

fn event_from_row(conn: &Connection, r: &Row<'_>) -> Result<StoredEvent, StoreError> {
    let event = read_event(r)?;
    let mut stmt = conn
        .prepare_cached("SELECT id, rule, state FROM jobs WHERE event_id = ?1 ORDER BY id")
        .map_err(unavailable)?;
    let rows = stmt
        .query_map([&event.id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .map_err(unavailable)?;
    let mut jobs = Vec::new();
    for row in rows {
        let (id, rule, state) = row.map_err(unavailable)?;
        let state = job_state(&state)?;
        jobs.push(JobSummary { id, rule, state });
    }
    Ok(StoredEvent { event, jobs })
}

fn load_attempts(conn: &Connection, job: &mut Job) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE job_id = ?1 ORDER BY n"
        ))
        .map_err(unavailable)?;
    let mut rows = stmt.query([&job.id]).map_err(unavailable)?;
    while let Some(row) = rows.next().map_err(unavailable)? {
        job.attempts.push(read_attempt(row)?);
    }
    if job.approval.is_some() {
        job.approvals = load_approvals(conn, &job.id, false)?;
    }
    Ok(())
}

/// A job's verdicts, oldest first: all of them, or only its current round's.
fn load_approvals(
    conn: &Connection,
    job_id: &str,
    this_round: bool,
) -> Result<Vec<Approval>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals
             WHERE job_id = ?1 AND (NOT ?2
                OR round = (SELECT approval_round FROM jobs WHERE id = ?1))
             ORDER BY seq"
        ))
        .map_err(unavailable)?;
    let mut rows = stmt
        .query(params![job_id, this_round])
        .map_err(unavailable)?;
    let mut approvals = Vec::new();
    while let Some(row) = rows.next().map_err(unavailable)? {
        approvals.push(read_approval(row)?);
    }
    Ok(approvals)
}

/// Gives a verdict: the writer thread is the only writer, so the job and its round
/// read here are still the job's when the verdict is written.
fn decide_on(
    conn: &Connection,
    job_id: &str,
    ballot: &Ballot,
) -> Result<ApprovalOutcome, StoreError> {
    let Some(mut job) = load_job(conn, job_id)? else {
        return Ok(ApprovalOutcome::NotFound);
    };
    let now = now_millis();
    let given = load_approvals(conn, job_id, true)?;
    let landing = match BallotLanding::of(&job, &given, ballot, now)? {
        Ok(landing) => landing,
        Err(refused) => return Ok(ApprovalOutcome::Refused(refused)),
    };
    if let Some(a) = &landing.approval {
        conn.prepare_cached(&format!(
            "INSERT INTO approvals (job_id, round, {APPROVAL_COLUMNS})
             SELECT ?1, approval_round, ?2, ?3, ?4, ?5, ?6 FROM jobs WHERE id = ?1"
        ))
        .and_then(|mut s| {
            s.execute(params![
                job_id,
                a.by,
                a.at,
                a.verdict.as_str(),
                a.comment,
                a.as_group
            ])
        })
        .map_err(unavailable)?;
        job.approvals.push(a.clone());
    }
    if let Some(step) = landing.step {
        move_job(conn, job_id, step.to, now)?;
        job.state = step.to;
        job.updated_at = now;
    }
    if let Some(entry) = &landing.audit {
        append_audit(conn, entry)?;
    }
    Ok(ApprovalOutcome::Done(Box::new(job)))
}

/// Writes a job's new state, due at `now` or at the end of its soak (what an
/// approval's or expiry's move needs).
fn move_job(conn: &Connection, job_id: &str, to: JobState, now: Millis) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE jobs SET state = ?2, next_attempt_at = MAX(?3, COALESCE(soak_until, 0)),
            updated_at = ?3
         WHERE id = ?1",
    )
    .and_then(|mut s| s.execute(params![job_id, to.as_str(), now]))
    .map_err(unavailable)?;
    Ok(())
}

/// Moves every job whose wait timed out by `now` (for its gate's evidence, or for
/// approval) to `expired`, each on the record.
fn expire_on(conn: &Connection, now: Millis) -> Result<u64, StoreError> {
    let ids: Vec<String> = conn
        .prepare_cached(
            "SELECT id FROM jobs INDEXED BY jobs_awaiting
             WHERE state = 'awaiting_approval' AND approval_expires_at <= ?1
             UNION ALL
             SELECT id FROM jobs INDEXED BY jobs_gate_expiry
             WHERE state = 'waiting' AND gate_expires_at <= ?1",
        )
        .and_then(|mut s| {
            s.query_map([now], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()
        })
        .map_err(unavailable)?;
    for id in &ids {
        let Some(mut job) = load_job(conn, id)? else {
            continue;
        };
        let step = expiry(job.state)?;
        move_job(conn, id, step.to, now)?;
        job.state = step.to;
        if let Some(kind) = step.audit {
            append_audit(conn, &AuditEntry::operator(kind, SYSTEM_ACTOR, &job))?;
        }
    }
    Ok(u64::try_from(ids.len()).unwrap_or(u64::MAX))
}

fn load_job(conn: &Connection, id: &str) -> Result<Option<Job>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))
        .map_err(unavailable)?;
    let mut rows = stmt.query([id]).map_err(unavailable)?;
    let Some(row) = rows.next().map_err(unavailable)? else {
        return Ok(None);
    };
    let mut job = read_job(row)?;
    load_attempts(conn, &mut job)?;
    Ok(Some(job))
}

fn insert_attempt(conn: &Connection, job_id: &str, a: &AttemptRecord) -> Result<(), StoreError> {
    let (duration_ms, upstream_status, code, message) = attempt_values(a);
    conn.prepare_cached(&format!(
        "INSERT INTO attempts (job_id, {ATTEMPT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    ))
    .and_then(|mut s| {
        s.execute(params![
            job_id,
            a.n,
            a.started_at,
            duration_ms,
            upstream_status,
            code,
            message,
        ])
    })
    .map_err(unavailable)?;
    Ok(())
}

fn lease_next(
    conn: &Connection,
    worker: &str,
    lease: Duration,
) -> Result<Option<LeasedJob>, StoreError> {
    let now = now_millis();
    let pick = |sql: &str| -> Result<Option<String>, StoreError> {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.query_row([now], |r| r.get(0)).optional())
            .map_err(unavailable)
    };
    // INDEXED BY: without statistics SQLite would take `jobs_state` and sort every
    // queued job for each lease; the partial indexes give the next one in a step,
    // however long the backlog.
    let due = pick(
        "SELECT id FROM jobs INDEXED BY jobs_due
         WHERE state IN ('queued', 'retrying', 'frozen') AND next_attempt_at <= ?1
         ORDER BY next_attempt_at, id LIMIT 1",
    )?;
    let id = match due {
        Some(id) => id,
        None => match pick(
            "SELECT id FROM jobs INDEXED BY jobs_leased
             WHERE state = 'running' AND lease_expires_at <= ?1
             ORDER BY lease_expires_at LIMIT 1",
        )? {
            Some(id) => id,
            None => return Ok(None),
        },
    };
    let Some(mut job) = load_job(conn, &id)? else {
        return Ok(None);
    };
    let (attempts, retry_base, started): (u32, u32, Option<i64>) = conn
        .query_row(
            "SELECT attempts, retry_base, attempt_started_at FROM jobs WHERE id = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(unavailable)?;
    if job.state == JobState::Running {
        // The previous holder stopped renewing: its attempt is on the record as lost.
        let lost = lease_expired(attempts, started, now);
        insert_attempt(conn, &id, &lost)?;
        append_audit(conn, &AuditEntry::attempt(&job, &lost))?;
        job.attempts.push(lost);
    }
    if job.state == JobState::Frozen {
        append_audit(conn, &AuditEntry::unfrozen(&job))?;
    }
    let attempt = attempts + 1;
    conn.prepare_cached(
        "UPDATE jobs SET state = 'running', lease_owner = ?2, lease_expires_at = ?3,
            attempts = ?4, attempt_started_at = ?5, updated_at = ?5 WHERE id = ?1",
    )
    .and_then(|mut s| s.execute(params![id, worker, now + millis(lease), attempt, now]))
    .map_err(unavailable)?;
    job.state = JobState::Running;
    job.updated_at = now;
    Ok(Some(LeasedJob {
        job,
        attempt,
        attempts_in_budget: attempt.saturating_sub(retry_base),
        started_at: now,
    }))
}

/// Whether `worker` still holds the lease of attempt `n` of the job: the fence that
/// keeps a worker that lost its lease from writing over its successor.
fn holds_lease(conn: &Connection, job_id: &str, worker: &str, n: u32) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM jobs WHERE id = ?1 AND state = 'running' AND lease_owner = ?2
             AND attempts = ?3",
        )
        .and_then(|mut s| {
            s.query_row(params![job_id, worker, n], |_| Ok(()))
                .optional()
        })
        .map_err(unavailable)?
        .is_some())
}

fn release_leased(conn: &Connection, r: &Release) -> Result<bool, StoreError> {
    if !holds_lease(conn, &r.job_id, &r.worker, r.attempt)? {
        return Ok(false);
    }
    let now = now_millis();
    let to = leased_move(r.event())?.to.as_str();
    match &r.interrupted {
        None => {
            conn.prepare_cached(
                "UPDATE jobs SET state = ?4, attempts = attempts - 1, next_attempt_at = ?2,
                    lease_owner = NULL, lease_expires_at = NULL, attempt_started_at = NULL,
                    updated_at = ?3
                 WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![r.job_id, r.at, now, to]))
            .map_err(unavailable)?;
            if !r.frozen_by.is_empty() {
                conn.prepare_cached(SET_FROZEN)
                    .and_then(|mut s| {
                        s.execute(params![frozen_names(&r.frozen_by), r.at, r.job_id])
                    })
                    .map_err(unavailable)?;
            }
            if let (false, Some(job)) = (r.frozen_by.is_empty(), load_job(conn, &r.job_id)?) {
                append_audit(conn, &AuditEntry::frozen(&job, &r.frozen_by, r.at))?;
            }
            if let Some(policy) = &r.protected {
                let expires_at = policy.expires_at(now);
                conn.prepare_cached(SET_PROTECTED)
                    .and_then(|mut s| s.execute(params![policy_text(policy), expires_at, r.job_id]))
                    .map_err(unavailable)?;
                if let Some(job) = load_job(conn, &r.job_id)? {
                    append_audit(conn, &AuditEntry::protected(&job, policy))?;
                }
            }
        }
        Some(attempt) => {
            insert_attempt(conn, &r.job_id, attempt)?;
            let error = attempt.error.as_ref();
            conn.prepare_cached(
                "UPDATE jobs SET state = ?6, next_attempt_at = ?2, lease_owner = NULL,
                    lease_expires_at = NULL, attempt_started_at = NULL, last_error_code = ?3,
                    last_error_message = ?4, updated_at = ?5
                 WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.execute(params![
                    r.job_id,
                    r.at,
                    error.map(|e| e.code.as_str()),
                    error.map(|e| e.message.as_str()),
                    now,
                    to
                ])
            })
            .map_err(unavailable)?;
            if let Some(job) = load_job(conn, &r.job_id)? {
                append_audit(conn, &AuditEntry::interrupted(&job, attempt))?;
            }
        }
    }
    Ok(true)
}

fn finish_attempt(
    conn: &Connection,
    report: &AttemptReport,
    batch: &mut Batch,
) -> Result<bool, StoreError> {
    if !holds_lease(conn, &report.job_id, &report.worker, report.attempt.n)? {
        return Ok(false);
    }
    if let Some(emitted) = &report.emit {
        ingest_one(conn, emitted, EMITTED, batch)?;
    }
    insert_attempt(conn, &report.job_id, &report.attempt)?;
    let now = now_millis();
    let to = Landing::of(report, now)?;
    conn.prepare_cached(
        "UPDATE jobs SET state = ?2, outcome = ?3, next_attempt_at = ?4, lease_owner = NULL,
            lease_expires_at = NULL, attempt_started_at = NULL,
            last_error_code = COALESCE(?5, last_error_code),
            last_error_message = CASE WHEN ?5 IS NULL THEN last_error_message ELSE ?6 END,
            updated_at = ?7
         WHERE id = ?1",
    )
    .and_then(|mut s| {
        s.execute(params![
            report.job_id,
            to.state.as_str(),
            to.outcome,
            to.next_attempt_at,
            to.error_code,
            to.error_message,
            now,
        ])
    })
    .map_err(unavailable)?;
    for entry in &report.audit {
        append_audit(conn, entry)?;
    }
    Ok(true)
}

fn operate_on(
    conn: &Connection,
    job_id: &str,
    action: OperatorAction,
    actor: &str,
) -> Result<OperatorOutcome, StoreError> {
    let Some(mut job) = load_job(conn, job_id)? else {
        return Ok(OperatorOutcome::NotFound);
    };
    let step = match operator_move(&job, action) {
        Ok(step) => step,
        Err(state) => return Ok(OperatorOutcome::Conflict(state)),
    };
    let now = now_millis();
    // The only writer: the state just read is still the job's.
    conn.prepare_cached(
        "UPDATE jobs SET state = ?2, next_attempt_at = MAX(?3, COALESCE(soak_until, 0)),
            updated_at = ?3, retry_base = CASE WHEN ?4 THEN attempts ELSE retry_base END
         WHERE id = ?1",
    )
    .and_then(|mut s| {
        s.execute(params![
            job_id,
            step.to.as_str(),
            now,
            step.event.renews_budget()
        ])
    })
    .map_err(unavailable)?;
    if let Some(approval) = revival(&job, step, actor, now) {
        conn.prepare_cached(
            "UPDATE jobs SET approval_round = approval_round + 1, approval_expires_at = ?2,
                initiator = ?3
             WHERE id = ?1",
        )
        .and_then(|mut s| s.execute(params![job_id, approval.expires_at, approval.initiator]))
        .map_err(unavailable)?;
        job.approval = Some(approval);
    }
    if let Some(gate) = gate_revival(&job, step, now) {
        conn.prepare_cached("UPDATE jobs SET gate = ?2, gate_expires_at = ?3 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![job_id, gate_text(&gate), gate.expires_at]))
            .map_err(unavailable)?;
        job.gate = Some(gate);
    }
    job.state = step.to;
    job.updated_at = now;
    if let Some(kind) = step.audit {
        append_audit(conn, &AuditEntry::operator(kind, actor, &job))?;
    }
    Ok(OperatorOutcome::Done(Box::new(job)))
}

/// Overrides the freezes holding a job: the writer thread is the only writer, so the
/// job read here is still the job when it moves.
fn override_on(
    conn: &Connection,
    job_id: &str,
    request: &OverrideRequest,
) -> Result<OverrideOutcome, StoreError> {
    let Some(mut job) = load_job(conn, job_id)? else {
        return Ok(OverrideOutcome::NotFound);
    };
    let now = now_millis();
    let landing = match OverrideLanding::of(&job, request, now)? {
        Ok(landing) => landing,
        Err(refused) => return Ok(OverrideOutcome::Refused(refused)),
    };
    move_job(conn, job_id, landing.step.to, now)?;
    conn.prepare_cached(SET_FREEZE_OVERRIDE)
        .and_then(|mut s| s.execute(params![landing.stored, job_id]))
        .map_err(unavailable)?;
    append_audit(conn, &landing.land(&mut job, now))?;
    Ok(OverrideOutcome::Done(Box::new(job)))
}

/// SQLite's n-th parameter.
fn param(n: usize) -> String {
    format!("?{n}")
}

fn args(args: Vec<Arg>) -> rusqlite::ParamsFromIter<Vec<SqlValue>> {
    params_from_iter(
        args.into_iter()
            .map(|a| match a {
                Arg::Text(v) => SqlValue::Text(v),
                Arg::Int(v) => SqlValue::Integer(v),
            })
            .collect(),
    )
}

#[async_trait]
impl Store for SqliteStore {
    async fn ingest(
        &self,
        batch: Vec<NewEvent>,
        policy: IngestPolicy,
    ) -> Result<Vec<IngestOutcome>, StoreError> {
        self.write(move |conn, b| {
            batch
                .iter()
                .map(|new| ingest_one(conn, new, policy, b))
                .collect()
        })
        .await
    }

    async fn append_audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        self.write(move |conn, _| append_audit(conn, &entry).map(|_| ()))
            .await
    }

    async fn lease_job(
        &self,
        worker: &str,
        lease: Duration,
    ) -> Result<Option<LeasedJob>, StoreError> {
        let worker = worker.to_string();
        self.write(move |conn, _| lease_next(conn, &worker, lease))
            .await
    }

    async fn renew_lease(
        &self,
        job_id: &str,
        worker: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let (job_id, worker) = (job_id.to_string(), worker.to_string());
        self.write(move |conn, _| {
            let n = conn
                .prepare_cached(
                    "UPDATE jobs SET lease_expires_at = ?3
                     WHERE id = ?1 AND lease_owner = ?2 AND state = 'running'",
                )
                .and_then(|mut s| s.execute(params![job_id, worker, now_millis() + millis(lease)]))
                .map_err(unavailable)?;
            Ok(n == 1)
        })
        .await
    }

    async fn record_attempt(&self, report: AttemptReport) -> Result<bool, StoreError> {
        self.write(move |conn, b| {
            let held = finish_attempt(conn, &report, b)?;
            b.wake_workers |= held && matches!(report.transition, Transition::Retry { .. });
            Ok(held)
        })
        .await
    }

    async fn release_job(&self, release: Release) -> Result<bool, StoreError> {
        self.write(move |conn, b| {
            let released = release_leased(conn, &release)?;
            b.wake_workers |= released;
            Ok(released)
        })
        .await
    }

    async fn operate(
        &self,
        job_id: &str,
        action: OperatorAction,
        actor: &str,
    ) -> Result<OperatorOutcome, StoreError> {
        let (job_id, actor) = (job_id.to_string(), actor.to_string());
        self.write(move |conn, b| {
            let outcome = operate_on(conn, &job_id, action, &actor)?;
            b.wake_workers |=
                action == OperatorAction::Retry && matches!(outcome, OperatorOutcome::Done(_));
            Ok(outcome)
        })
        .await
    }

    async fn decide_approval(
        &self,
        job_id: &str,
        ballot: Ballot,
    ) -> Result<ApprovalOutcome, StoreError> {
        let job_id = job_id.to_string();
        self.write(move |conn, b| {
            let outcome = decide_on(conn, &job_id, &ballot)?;
            b.wake_workers |= matches!(&outcome,
                ApprovalOutcome::Done(job) if job.state == JobState::Queued);
            Ok(outcome)
        })
        .await
    }

    async fn start_freeze(&self, freeze: RuntimeFreeze) -> Result<bool, StoreError> {
        self.write(move |conn, _| {
            let (to_repos, targets) = freeze_scope(&freeze);
            let f = &freeze;
            let n = conn
                .prepare_cached(&start_freeze_sql(param))
                .and_then(|mut s| {
                    s.execute(params![
                        f.name,
                        to_repos,
                        targets,
                        f.from,
                        f.until,
                        f.reason,
                        f.started_by,
                        now_millis()
                    ])
                })
                .map_err(unavailable)?;
            if n == 1 {
                append_audit(conn, &AuditEntry::freeze_started(f))?;
            }
            Ok(n == 1)
        })
        .await
    }

    async fn cancel_removed(&self, rules: &[String]) -> Result<u64, StoreError> {
        // The names as a JSON array: one parameter however many rules there are.
        let names = serde_json::to_string(rules).unwrap_or_default();
        self.write(move |conn, _| {
            let ids: Vec<String> = conn
                .prepare_cached(
                    "SELECT id FROM jobs WHERE state IN ('waiting', 'awaiting_approval')
                        AND rule NOT IN (SELECT value FROM json_each(?1))",
                )
                .and_then(|mut s| {
                    s.query_map([&names], |r| r.get(0))?
                        .collect::<Result<Vec<String>, _>>()
                })
                .map_err(unavailable)?;
            let now = now_millis();
            for id in &ids {
                let Some(mut job) = load_job(conn, id)? else {
                    continue;
                };
                let (step, error) = rule_removed(&job)?;
                conn.prepare_cached(
                    "UPDATE jobs SET state = ?2, last_error_code = ?3, last_error_message = ?4,
                        updated_at = ?5
                     WHERE id = ?1",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        id,
                        step.to.as_str(),
                        error.code.as_str(),
                        error.message,
                        now
                    ])
                })
                .map_err(unavailable)?;
                job.state = step.to;
                if let Some(kind) = step.audit {
                    let entry = AuditEntry::operator(kind, SYSTEM_ACTOR, &job).saying(&format!(
                        "{}: {}",
                        error.code.as_str(),
                        error.message
                    ));
                    append_audit(conn, &entry)?;
                }
            }
            Ok(u64::try_from(ids.len()).unwrap_or(u64::MAX))
        })
        .await
    }

    async fn expire_approvals(&self) -> Result<u64, StoreError> {
        self.write(|conn, _| expire_on(conn, now_millis())).await
    }

    async fn end_freeze(&self, name: &str, actor: &str) -> Result<bool, StoreError> {
        let (name, actor) = (name.to_string(), actor.to_string());
        self.write(move |conn, b| {
            let now = now_millis();
            let n = conn
                .prepare_cached("DELETE FROM freezes WHERE name = ?1 AND until_at > ?2")
                .and_then(|mut s| s.execute(params![name, now]))
                .map_err(unavailable)?;
            if n == 1 {
                append_audit(conn, &AuditEntry::freeze_ended(&name, &actor))?;
                // Every frozen job is looked at again; those another freeze still
                // covers are frozen again by the worker that leases them.
                conn.prepare_cached(FROZEN_DUE_NOW)
                    .and_then(|mut s| s.execute(params![now]))
                    .map_err(unavailable)?;
                b.wake_workers = true;
            }
            Ok(n == 1)
        })
        .await
    }

    async fn override_freeze(
        &self,
        job_id: &str,
        request: OverrideRequest,
    ) -> Result<OverrideOutcome, StoreError> {
        let job_id = job_id.to_string();
        self.write(move |conn, b| {
            let outcome = override_on(conn, &job_id, &request)?;
            b.wake_workers |= matches!(outcome, OverrideOutcome::Done(_));
            Ok(outcome)
        })
        .await
    }

    async fn freezes(&self) -> Result<Vec<RuntimeFreeze>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {FREEZE_COLUMNS} FROM freezes WHERE until_at > ?1 ORDER BY name"
                ))
                .map_err(unavailable)?;
            let mut rows = stmt.query([now_millis()]).map_err(unavailable)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(unavailable)? {
                out.push(read_freeze(row)?);
            }
            Ok(out)
        })
        .await
    }

    async fn next_wakeup(&self) -> Result<Option<Millis>, StoreError> {
        self.read(|conn| {
            conn.query_row(
                "SELECT MIN(t) FROM (
                    SELECT MIN(next_attempt_at) AS t FROM jobs INDEXED BY jobs_due
                    WHERE state IN ('queued', 'retrying', 'frozen')
                    UNION ALL
                    SELECT MIN(lease_expires_at) FROM jobs INDEXED BY jobs_leased
                    WHERE state = 'running'
                    UNION ALL
                    SELECT MIN(approval_expires_at) FROM jobs INDEXED BY jobs_awaiting
                    WHERE state = 'awaiting_approval'
                    UNION ALL
                    SELECT MIN(gate_expires_at) FROM jobs INDEXED BY jobs_gate_expiry
                    WHERE state = 'waiting')",
                [],
                |r| r.get(0),
            )
            .map_err(unavailable)
        })
        .await
    }

    async fn event(&self, id: &str) -> Result<Option<StoredEvent>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ?1"))
                .map_err(unavailable)?;
            let mut rows = stmt.query([&id]).map_err(unavailable)?;
            match rows.next().map_err(unavailable)? {
                Some(row) => Ok(Some(event_from_row(conn, row)?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn events(&self, filter: EventFilter) -> Result<Page<StoredEvent>, StoreError> {
        self.read(move |conn| {
            let q = events_listing(&filter, param);
            let mut stmt = conn.prepare_cached(&q.sql).map_err(unavailable)?;
            let mut rows = stmt.query(args(q.args)).map_err(unavailable)?;
            let (mut items, mut bytes) = (Vec::new(), None);
            while let Some(row) = rows.next().map_err(unavailable)? {
                items.push(event_from_row(conn, row)?);
                bytes = Some(row.int(EVENTS_PAGE_BYTES_COLUMN)?);
            }
            Ok(events_page(items, filter.limit, bytes))
        })
        .await
    }

    async fn job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| load_job(conn, &id)).await
    }

    async fn jobs(&self, filter: JobFilter) -> Result<Page<Job>, StoreError> {
        self.read(move |conn| {
            let q = jobs_listing(&filter, param);
            let mut stmt = conn.prepare_cached(&q.sql).map_err(unavailable)?;
            let mut rows = stmt.query(args(q.args)).map_err(unavailable)?;
            let mut items = Vec::new();
            while let Some(row) = rows.next().map_err(unavailable)? {
                let mut job = read_job(row)?;
                load_attempts(conn, &mut job)?;
                items.push(job);
            }
            Ok(page(items, filter.limit, |j| j.id.clone()))
        })
        .await
    }

    async fn audit(&self, filter: AuditFilter) -> Result<Page<AuditRecord>, StoreError> {
        self.read(move |conn| {
            let q = audit_listing(&filter, param);
            let mut stmt = conn.prepare_cached(&q.sql).map_err(unavailable)?;
            let mut rows = stmt.query(args(q.args)).map_err(unavailable)?;
            let mut items = Vec::new();
            while let Some(row) = rows.next().map_err(unavailable)? {
                items.push(read_audit(row).map_err(StoreError::Corrupt)?);
            }
            Ok(page(items, filter.limit, |r| r.seq.to_string()))
        })
        .await
    }

    async fn audit_chain(&self, after: i64, limit: usize) -> Result<Vec<ChainRow>, StoreError> {
        self.chain_rows(chain_sql(param), after, limit).await
    }

    async fn audit_checkpoints(
        &self,
        before: i64,
        limit: usize,
    ) -> Result<Vec<ChainRow>, StoreError> {
        self.chain_rows(checkpoints_sql(param), before, limit).await
    }

    async fn prune(
        &self,
        audit_before: Option<Millis>,
        deliveries_before: Millis,
    ) -> Result<Pruned, StoreError> {
        self.write(move |conn, _| {
            let deliveries = conn
                .execute(
                    "DELETE FROM deliveries WHERE received_at < ?1",
                    [deliveries_before],
                )
                .map_err(unavailable)?;
            let notifications = conn
                .execute(&sqlite_params(PRUNE_SENT), [deliveries_before])
                .map_err(unavailable)?;
            // Evidence past its window can count for no trigger any more.
            conn.execute("DELETE FROM evidence WHERE expires_at < ?1", [now_millis()])
                .map_err(unavailable)?;
            let mut audit_records = 0;
            if let Some(before) = audit_before {
                let last: Option<(i64, String)> = conn
                    .query_row(
                        "SELECT seq, hash FROM audit WHERE at < ?1 ORDER BY seq DESC LIMIT 1",
                        [before],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()
                    .map_err(unavailable)?;
                if let Some((seq, hash)) = last {
                    let count: i64 = conn
                        .query_row("SELECT COUNT(*) FROM audit WHERE seq <= ?1", [seq], |r| {
                            r.get(0)
                        })
                        .map_err(unavailable)?;
                    let count = u64::try_from(count).unwrap_or(0);
                    // The checkpoint goes at the end of the chain, so it survives the cut.
                    append_audit(conn, &AuditEntry::pruned(&Anchor { seq, hash }, count))?;
                    conn.execute("DELETE FROM audit WHERE seq <= ?1", [seq])
                        .map_err(unavailable)?;
                    audit_records = count;
                }
            }
            Ok(Pruned {
                audit_records,
                deliveries: u64::try_from(deliveries).unwrap_or(0),
                notifications: u64::try_from(notifications).unwrap_or(0),
            })
        })
        .await
    }

    async fn queue_stats(&self) -> Result<QueueStats, StoreError> {
        self.read(|conn| {
            let mut stats = QueueStats::default();
            let mut stmt = conn
                .prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state")
                .map_err(unavailable)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(unavailable)?;
            for row in rows {
                let (state, n) = row.map_err(unavailable)?;
                if let Some(state) = JobState::parse(&state) {
                    stats.by_state.insert(state, u64::try_from(n).unwrap_or(0));
                }
            }
            stats.oldest_waiting_since = conn
                .query_row(
                    "SELECT MIN(created_at) FROM jobs WHERE state IN ('queued', 'retrying')",
                    [],
                    |r| r.get(0),
                )
                .map_err(unavailable)?;
            Ok(stats)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))
                .map_err(unavailable)
        })
        .await
    }

    fn work_signal(&self) -> Arc<Notify> {
        self.signal.clone()
    }

    fn set_routes(&self, routes: Arc<Routes>) {
        self.routes.store(routes);
    }

    async fn start_session(&self, session: ConsoleSession) -> Result<(), StoreError> {
        self.write(move |conn, _| {
            conn.execute(&sqlite_params(DROP_EXPIRED), [now_millis()])
                .map_err(unavailable)?;
            conn.execute(
                &sqlite_params(INSERT_SESSION),
                params![
                    session.id_hash,
                    session.who,
                    i64::from(session.person),
                    role_text(session.role),
                    groups_text(&session.groups),
                    session.csrf,
                    session.expires_at
                ],
            )
            .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn session(&self, id_hash: &str) -> Result<Option<ConsoleSession>, StoreError> {
        let id_hash = id_hash.to_string();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&sqlite_params(SESSION))
                .map_err(unavailable)?;
            let mut rows = stmt
                .query(params![id_hash, now_millis()])
                .map_err(unavailable)?;
            rows.next()
                .map_err(unavailable)?
                .map(|r| read_session(&id_hash, r))
                .transpose()
        })
        .await
    }

    async fn end_session(&self, id_hash: &str) -> Result<bool, StoreError> {
        let id_hash = id_hash.to_string();
        self.write(move |conn, _| {
            conn.execute(&sqlite_params(END_SESSION), [&id_hash])
                .map(|n| n > 0)
                .map_err(unavailable)
        })
        .await
    }

    async fn lease_notifications(
        &self,
        sink: &str,
        worker: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Leased>, StoreError> {
        let (sink, worker) = (sink.to_string(), worker.to_string());
        self.write(move |conn, _| {
            let now = now_millis();
            let mut stmt = conn
                .prepare_cached(&sqlite_params(&notification_lease_sql("")))
                .map_err(unavailable)?;
            let mut rows = stmt
                .query(params![
                    worker,
                    now.saturating_add(millis(lease)),
                    now,
                    sink,
                    sql_limit(max)
                ])
                .map_err(unavailable)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(unavailable)? {
                out.push(read_leased(row)?);
            }
            Ok(out)
        })
        .await
    }

    async fn next_notification(&self, sink: &str) -> Result<Option<Millis>, StoreError> {
        let sink = sink.to_string();
        self.read(move |conn| {
            conn.query_row(&sqlite_params(NEXT_DUE), [sink], |r| r.get(0))
                .map_err(unavailable)
        })
        .await
    }

    async fn record_delivery(&self, report: DeliveryReport) -> Result<bool, StoreError> {
        self.write(move |conn, _| record_try(conn, &report)).await
    }

    async fn notifications(
        &self,
        filter: NotificationFilter,
    ) -> Result<Page<Notification>, StoreError> {
        self.read(move |conn| {
            let q = notifications_listing(&filter, param);
            let mut stmt = conn.prepare_cached(&q.sql).map_err(unavailable)?;
            let mut rows = stmt.query(args(q.args)).map_err(unavailable)?;
            let mut items = Vec::new();
            while let Some(row) = rows.next().map_err(unavailable)? {
                items.push(read_notification(row)?);
            }
            Ok(page(items, filter.limit, |n| n.id.clone()))
        })
        .await
    }

    async fn retry_notification(
        &self,
        id: &str,
        actor: &str,
    ) -> Result<NotificationRetry, StoreError> {
        let (id, actor) = (id.to_string(), actor.to_string());
        self.write(move |conn, batch| {
            let state: Option<String> = conn
                .query_row(&sqlite_params(NOTIFICATION_STATE), [&id], |r| r.get(0))
                .optional()
                .map_err(unavailable)?;
            match state.as_deref().map(NotificationState::parse) {
                None => return Ok(NotificationRetry::NotFound),
                Some(Some(NotificationState::Failed)) => {}
                Some(Some(other)) => return Ok(NotificationRetry::Conflict(other)),
                Some(None) => return Err(StoreError::Corrupt(format!("notification {id} state"))),
            }
            conn.execute(&sqlite_params(REVIVE), params![id, now_millis()])
                .map_err(unavailable)?;
            let n = load_notification(conn, &id)?
                .ok_or_else(|| StoreError::Corrupt(format!("notification {id} vanished")))?;
            append_audit(conn, &retried_record(&n, &actor))?;
            batch.wake_workers = true;
            Ok(NotificationRetry::Done(Box::new(n)))
        })
        .await
    }

    async fn enable_sink(&self, name: &str, actor: &str) -> Result<bool, StoreError> {
        let (name, actor) = (name.to_string(), actor.to_string());
        self.write(move |conn, batch| {
            let enabled = conn
                .execute(&sqlite_params(ENABLE_SINK), [&name])
                .map_err(unavailable)?
                > 0;
            if enabled {
                append_audit(conn, &enabled_record(&name, &actor))?;
                batch.wake_workers = true;
            }
            Ok(enabled)
        })
        .await
    }

    async fn disabled_sinks(&self) -> Result<Vec<DisabledSink>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(DISABLED_SINKS).map_err(unavailable)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(DisabledSink {
                        name: r.get(0)?,
                        since: r.get(1)?,
                    })
                })
                .map_err(unavailable)?;
            rows.collect::<Result<_, _>>().map_err(unavailable)
        })
        .await
    }

    async fn settle_sinks(&self, configured: &[String]) -> Result<SinksSettled, StoreError> {
        let configured = configured.to_vec();
        self.write(move |conn, batch| {
            let now = now_millis();
            let mut settled = SinksSettled::default();
            let pending: Vec<(String, i64)> = {
                let mut stmt = conn.prepare_cached(PENDING_BY_SINK).map_err(unavailable)?;
                let rows = stmt
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(unavailable)?;
                rows.collect::<Result<_, _>>().map_err(unavailable)?
            };
            for (sink, count) in pending.iter().filter(|(s, _)| !configured.contains(s)) {
                conn.execute(&sqlite_params(DROP_SINK), params![sink, now])
                    .map_err(unavailable)?;
                append_audit(conn, &dropped_record(sink, *count))?;
                settled.dropped += u64::try_from(*count).unwrap_or(0);
            }
            let disabled: Vec<String> = {
                let mut stmt = conn.prepare_cached(DISABLED_SINKS).map_err(unavailable)?;
                let rows = stmt.query_map([], |r| r.get(0)).map_err(unavailable)?;
                rows.collect::<Result<_, _>>().map_err(unavailable)?
            };
            for sink in disabled {
                conn.execute(&sqlite_params(ENABLE_SINK), [&sink])
                    .map_err(unavailable)?;
                if configured.contains(&sink) {
                    append_audit(conn, &enabled_record(&sink, "config"))?;
                    settled.enabled += 1;
                    batch.wake_workers = true;
                }
            }
            Ok(settled)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::rows::old_trail::{self, OldRecord};
    use super::*;

    fn insert(conn: &Connection, records: &[OldRecord], v1: bool) {
        let (columns, values) = if v1 {
            (
                old_trail::V1_COLUMNS,
                "?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11",
            )
        } else {
            (old_trail::V0_COLUMNS, "?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9")
        };
        let sql = format!("INSERT INTO audit ({columns}) VALUES ({values})");
        for r in records {
            let common = params![
                r.seq,
                r.at,
                r.kind,
                r.actor,
                r.job_id,
                r.upstream_status,
                r.message,
                r.prev_hash,
                r.hash
            ];
            if v1 {
                let mut all = common.to_vec();
                all.extend(params![r.parent_job_id, r.chain_depth]);
                conn.execute(&sql, all.as_slice()).unwrap();
            } else {
                conn.execute(&sql, common).unwrap();
            }
        }
    }

    /// A trail begun at migration 1 (v0 records), continued after migration 2 (v1
    /// records), then opened by this gantry (migrated) and appended to: it verifies
    /// whole, and an edit of an old record is still found.
    #[tokio::test]
    async fn an_audit_trail_written_before_the_upgrade_still_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.execute_batch("PRAGMA user_version = 1").unwrap();
        let v0 = old_trail::chained((0, GENESIS), 4, false);
        insert(&conn, &v0, false);
        conn.execute_batch(MIGRATIONS[1]).unwrap();
        conn.execute_batch("PRAGMA user_version = 2").unwrap();
        let last = v0.last().unwrap();
        let v1 = old_trail::chained((last.seq, &last.hash), 4, true);
        insert(&conn, &v1, true);

        let store = SqliteStore::open(&path).await.unwrap();
        for i in 0..3 {
            let entry = AuditEntry::rejections("ci", &format!("new record {i}"), 1);
            store.append_audit(entry).await.unwrap();
        }
        let verdict = store.verify_audit().await.unwrap();
        assert!(verdict.ok, "{verdict:?}");
        assert_eq!((verdict.records, verdict.head_seq), (11, Some(11)));

        // A v0 record given a chain depth it never had: v0's form does not cover it.
        conn.execute("UPDATE audit SET chain_depth = 1 WHERE seq = 3", [])
            .unwrap();
        assert_eq!(store.verify_audit().await.unwrap().first_broken, Some(3));
        // An edited v0 record.
        conn.execute("UPDATE audit SET message = 'nothing' WHERE seq = 2", [])
            .unwrap();
        assert_eq!(store.verify_audit().await.unwrap().first_broken, Some(2));
    }
}
