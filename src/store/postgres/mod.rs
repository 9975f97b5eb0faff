//! The shared store: one PostgreSQL database behind any number of `gantry serve`
//! replicas (SPEC §7).
//!
//! tokio-postgres is the maintained native async client (no C library; it pipelines
//! queries and delivers LISTEN/NOTIFY through its connection), and deadpool-postgres
//! a small pool over it that keeps each connection's prepared statements. TLS is
//! rustls with libpq's `sslmode` meanings (`config::pg_tls`), on the pooled and the
//! listening connections alike.
//!
//! What keeps several replicas correct:
//! - Jobs are leased with `FOR UPDATE SKIP LOCKED` and a lease expiry: two workers
//!   never take the same job, a dead replica's jobs are taken over once their leases
//!   expire, and every later write about an attempt is fenced by its lease.
//! - A delivery is deduplicated by the primary key of `deliveries`: two requests for
//!   one delivery meet in one index entry, and the second waits for the first to
//!   commit and then sees it.
//! - Audit records are appended under the lock of the one-row `audit_head` table,
//!   taken last in every write transaction and held to its commit: sequence numbers
//!   stay contiguous and each hash follows the one before, whichever replica writes.
//! - A commit that queues work sends `NOTIFY gantry_work`, delivered on commit; every
//!   store instance listens on a connection of its own and wakes its idle workers.
//!   Polling (`next_wakeup`, at most `worker.poll_interval`) remains the fallback.
//!
//! Tables live in the connection's current schema (the first of its `search_path`
//! that exists), so one database can hold several independent installations.

mod attempts;
mod group;
mod ingest;

use std::collections::HashMap;
use std::pin::pin;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use deadpool_postgres::{
    Client, GenericClient, Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime,
    Transaction,
};
use futures_util::StreamExt;
use tokio::sync::{Notify, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::OverrideOutcome;
use super::outbox::{
    DISABLE_SINK, DISABLED_SINKS, DROP_SINK, ENABLE_SINK, NEXT_DUE, NOTIFICATION_STATE,
    OUTBOX_MIGRATION, PENDING_BY_SINK, PRUNE_SENT, RECORD_TRY, REVIVE, dropped_record,
    enabled_record, notification_lease_sql, notification_sql, read_leased, read_notification,
    retried_record, row_after, verdict_record,
};
use super::rows::{
    APPROVAL_COLUMNS, ATTEMPT_COLUMNS, AUDIT_COLUMNS, Arg, BallotLanding, CHILDREN_MIGRATION,
    CLAIMS_MIGRATION, Columns, EVENT_COLUMNS, EVENTS_PAGE_BYTES_COLUMN, FREEZE_COLUMNS,
    FROZEN_DUE_NOW, GATES_MIGRATION, JOB_COLUMN_COUNT, JOB_COLUMNS, Listing, SYSTEM_ACTOR,
    TRACE_MIGRATION, attempt_values, audit_listing, chain_sql, checkpoints_sql, events_listing,
    events_page, expiry, freeze_scope, gate_locks, gate_revival, gate_text, job_state,
    jobs_listing, lease_expired, leased_move, millis, narrow, notifications_listing, operator_move,
    page, read_approval, read_attempt, read_audit, read_event, read_freeze, read_job, revival,
    rule_removed, sql_limit, start_freeze_sql, stored_count,
};
use super::rows::{
    OverrideLanding, SET_FREEZE_OVERRIDE, SET_FROZEN, SET_PROTECTED, frozen_names, policy_text,
};
use super::sessions::{
    DROP_EXPIRED, END_SESSION, INSERT_SESSION, SESSION, SESSIONS_MIGRATION, groups_text,
    read_session, role_text,
};
use super::{
    ApprovalOutcome, AttemptReport, AuditFilter, ChainRow, EventFilter, IngestOutcome,
    IngestPolicy, JobFilter, JobSummary, LeasedJob, NewEvent, OperatorAction, OperatorOutcome,
    Page, Pruned, QueueStats, Release, Store, StoreError, StoredEvent,
};
use super::{ConsoleSession, DisabledSink, NotificationFilter, NotificationRetry, SinksSettled};
use crate::audit::{Anchor, AuditEntry, AuditRecord, GENESIS, HASH_VERSION, chain_form};
use crate::config::PostgresUrl;
use crate::domain::approval::{Approval, Ballot};
use crate::domain::freeze::{OverrideRequest, RuntimeFreeze};
use crate::domain::{AttemptRecord, Event, Job, JobState, Millis, now_millis};
use crate::notify::{
    DeliveryReport, Leased, Letter, Notification, NotificationState, Routes, Verdict,
};

/// Connections per store instance (per replica). Each operation holds one only for
/// its own statements, so a dozen serves the HTTP handlers and eight workers, and
/// three replicas stay well under PostgreSQL's default `max_connections` of 100.
const POOL_SIZE: usize = 12;
/// How long to wait for a connection, new or from the pool, before answering 503.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const POOL_WAIT: Duration = Duration::from_secs(10);
/// Backoff of the listening connection after it dropped.
const LISTEN_RETRY_MIN: Duration = Duration::from_millis(100);
const LISTEN_RETRY_MAX: Duration = Duration::from_secs(5);
/// The notification channel of queued work. Its payload names the schema (so
/// installations sharing a database ignore each other) and the sending instance.
const CHANNEL: &str = "gantry_work";
/// First key of the advisory lock that serialises migrations (the second is the
/// schema's hash): "gant".
const MIGRATION_LOCK: i32 = 0x6761_6e74;

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE events (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    type TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    repo TEXT, image TEXT, tag TEXT, digest TEXT, path TEXT,
    build_name TEXT, build_number TEXT,
    payload TEXT NOT NULL,
    parent_job_id TEXT,
    chain_depth BIGINT NOT NULL
);
CREATE INDEX events_received ON events(received_at);

-- The primary key is the dedupe: an insert of a delivery already seen conflicts.
CREATE TABLE deliveries (
    source TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (source, delivery_id)
);
CREATE INDEX deliveries_received ON deliveries(received_at);

CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL REFERENCES events(id),
    rule TEXT NOT NULL,
    target TEXT NOT NULL,
    action TEXT,
    state TEXT NOT NULL,
    outcome TEXT,
    attempts BIGINT NOT NULL DEFAULT 0,
    retry_base BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_owner TEXT,
    lease_expires_at BIGINT,
    attempt_started_at BIGINT,
    last_error_code TEXT,
    last_error_message TEXT,
    parent_job_id TEXT,
    chain_depth BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    target_ref TEXT,
    target_digest TEXT
);
CREATE INDEX jobs_due ON jobs(next_attempt_at) WHERE state IN ('queued', 'retrying');
CREATE INDEX jobs_leased ON jobs(lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_state ON jobs(state, id);
CREATE INDEX jobs_rule ON jobs(rule, id);
CREATE INDEX jobs_event ON jobs(event_id);
CREATE INDEX jobs_target_ref ON jobs(target_ref, created_at) WHERE target_ref IS NOT NULL;
CREATE UNIQUE INDEX jobs_rule_parent ON jobs(rule, parent_job_id) WHERE parent_job_id IS NOT NULL;

CREATE TABLE attempts (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    n BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    upstream_status BIGINT,
    error_code TEXT,
    error_message TEXT,
    PRIMARY KEY (job_id, n)
);

CREATE TABLE audit (
    seq BIGINT PRIMARY KEY,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    event_id TEXT, job_id TEXT, rule TEXT, target TEXT,
    repo TEXT, image TEXT, tag TEXT, digest TEXT,
    from_ref TEXT, to_ref TEXT, outcome TEXT,
    upstream_status BIGINT,
    message TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    parent_job_id TEXT,
    chain_depth BIGINT
);
CREATE INDEX audit_at ON audit(at);
CREATE INDEX audit_job ON audit(job_id);
CREATE INDEX audit_rule ON audit(rule);
CREATE INDEX audit_image ON audit(image);

-- The head of the hash chain, locked by every append until its commit.
CREATE TABLE audit_head (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);
"#,
    r#"
CREATE INDEX audit_checkpoints ON audit(seq) WHERE kind = 'audit.pruned';
ALTER TABLE audit ADD COLUMN count BIGINT;
-- The records already here were hashed in the legacy form (audit::chain).
ALTER TABLE audit ADD COLUMN hash_version BIGINT NOT NULL DEFAULT 1;
"#,
    r#"
-- SPEC §9 approvals: the policy a job was created under, the current wait's deadline
-- and round, who set it off; and every verdict given, by round.
ALTER TABLE jobs ADD COLUMN approval TEXT;
ALTER TABLE jobs ADD COLUMN approval_expires_at BIGINT;
ALTER TABLE jobs ADD COLUMN initiator TEXT;
ALTER TABLE jobs ADD COLUMN approval_round BIGINT NOT NULL DEFAULT 0;
CREATE INDEX jobs_awaiting ON jobs(approval_expires_at) WHERE state = 'awaiting_approval';
CREATE TABLE approvals (
    seq BIGSERIAL PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs(id),
    round BIGINT NOT NULL,
    by_name TEXT NOT NULL,
    at BIGINT NOT NULL,
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
ALTER TABLE jobs ADD COLUMN frozen_until BIGINT;
ALTER TABLE jobs ADD COLUMN freeze_override TEXT;
"#,
    CLAIMS_MIGRATION,
    OUTBOX_MIGRATION,
    SESSIONS_MIGRATION,
    CHILDREN_MIGRATION,
    TRACE_MIGRATION,
];

/// The store on a PostgreSQL database that several replicas share.
pub struct PostgresStore {
    pool: Pool,
    /// What every commit of this instance does besides committing.
    committing: Arc<Committing>,
    _listener: Listener,
    /// Concurrent ingests, committed together (SPEC §14).
    groups: group::Committer,
}

/// What every write transaction of one store instance does at its commit: its
/// wake-up and its notifications.
struct Committing {
    signal: Arc<Notify>,
    /// The payload of this instance's notifications: `{schema} {instance id}`.
    notice: String,
    /// Where audit records are notified (SPEC §10), read at each commit.
    routes: ArcSwap<Routes>,
}

/// What a write transaction does at its commit: the audit records to chain, and
/// whether it queued work for idle workers.
#[derive(Default)]
struct Writes {
    audit: Vec<AuditEntry>,
    wake: bool,
}

fn unavailable(e: tokio_postgres::Error) -> StoreError {
    StoreError::Unavailable(described(&e))
}

/// The server's own words when it answered with an error (its `Display` says only
/// "db error"), else the client's.
fn described(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

fn pool_error(e: PoolError) -> StoreError {
    StoreError::Unavailable(match &e {
        // A refused connection (authentication, a missing certificate) in the
        // server's words.
        PoolError::Backend(cause) => format!("no database connection: {}", described(cause)),
        _ => format!("no database connection: {e}"),
    })
}

impl Columns for Row {
    fn text(&self, i: usize) -> Result<String, StoreError> {
        self.try_get(i).map_err(|e| column(i, &e))
    }
    fn text_opt(&self, i: usize) -> Result<Option<String>, StoreError> {
        self.try_get(i).map_err(|e| column(i, &e))
    }
    fn int(&self, i: usize) -> Result<i64, StoreError> {
        self.try_get(i).map_err(|e| column(i, &e))
    }
    fn int_opt(&self, i: usize) -> Result<Option<i64>, StoreError> {
        self.try_get(i).map_err(|e| column(i, &e))
    }
}

fn column(i: usize, e: &tokio_postgres::Error) -> StoreError {
    StoreError::Corrupt(format!("column {i}: {e}"))
}

type Params<'a> = [&'a (dyn ToSql + Sync)];

async fn query<C: GenericClient>(c: &C, sql: &str, p: &Params<'_>) -> Result<Vec<Row>, StoreError> {
    let stmt = c.prepare_cached(sql).await.map_err(unavailable)?;
    c.query(&stmt, p).await.map_err(unavailable)
}

async fn query_opt<C: GenericClient>(
    c: &C,
    sql: &str,
    p: &Params<'_>,
) -> Result<Option<Row>, StoreError> {
    let stmt = c.prepare_cached(sql).await.map_err(unavailable)?;
    c.query_opt(&stmt, p).await.map_err(unavailable)
}

async fn execute<C: GenericClient>(c: &C, sql: &str, p: &Params<'_>) -> Result<u64, StoreError> {
    let stmt = c.prepare_cached(sql).await.map_err(unavailable)?;
    c.execute(&stmt, p).await.map_err(unavailable)
}

/// PostgreSQL's n-th parameter.
fn param(n: usize) -> String {
    format!("${n}")
}

/// A listing's rows, each read with `read`.
async fn listed<T>(
    c: &Client,
    q: &Listing,
    read: impl Fn(&Row) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let args: Vec<&(dyn ToSql + Sync)> = q
        .args
        .iter()
        .map(|a| match a {
            Arg::Text(v) => v as &(dyn ToSql + Sync),
            Arg::Int(v) => v as &(dyn ToSql + Sync),
        })
        .collect();
    query(c, &q.sql, &args).await?.iter().map(read).collect()
}

impl PostgresStore {
    /// Connects, migrates the current schema (replicas starting together take turns)
    /// and listens for other replicas' work before returning.
    pub async fn open(url: &PostgresUrl) -> Result<PostgresStore, StoreError> {
        let mut pg: tokio_postgres::Config = url
            .expose()
            .parse()
            .map_err(|e| StoreError::Unavailable(format!("invalid store URL: {e}")))?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(CONNECT_TIMEOUT);
        }
        if pg.get_application_name().is_none() {
            pg.application_name("gantry");
        }
        let tls = MakeRustlsConnect::new((*url.tls().client).clone());
        let manager = Manager::from_config(
            pg.clone(),
            tls.clone(),
            // Verified: a pooled connection is checked with an empty query before it
            // is handed out, so one the server closed (a restart, a failover, an
            // idle timeout) is replaced instead of failing the request it was given
            // to. One round trip per checkout is the price.
            ManagerConfig {
                recycling_method: RecyclingMethod::Verified,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let schema = {
            let mut client = pool.get().await.map_err(|e| match &e {
                PoolError::Backend(cause) => match url.tls().explain(cause) {
                    Some(why) => StoreError::Unavailable(format!("{url}: {why}")),
                    None => pool_error(e),
                },
                _ => pool_error(e),
            })?;
            migrate(&mut client).await?
        };
        let signal = Arc::new(Notify::new());
        let notice = format!("{schema} {}", ulid::Ulid::generate());
        let listener = Listener::start(pg, tls, notice.clone(), signal.clone()).await?;
        let committing = Arc::new(Committing {
            signal,
            notice,
            routes: ArcSwap::from_pointee(Routes::default()),
        });
        Ok(PostgresStore {
            groups: group::Committer::start(pool.clone(), committing.clone()),
            pool,
            committing,
            _listener: listener,
        })
    }

    async fn client(&self) -> Result<Client, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Audit records as verification reads them, by `sql` with a sequence number and
    /// a limit bound.
    async fn chain_rows(
        &self,
        sql: &str,
        seq: i64,
        limit: usize,
    ) -> Result<Vec<ChainRow>, StoreError> {
        let client = self.client().await?;
        query(&client, sql, &[&seq, &sql_limit(limit)])
            .await?
            .iter()
            .map(|r| {
                Ok(ChainRow {
                    seq: r.int(0)?,
                    record: read_audit(r),
                })
            })
            .collect()
    }

    async fn commit(&self, tx: Transaction<'_>, w: Writes) -> Result<(), StoreError> {
        self.committing.commit(tx, w).await
    }
}

impl Committing {
    /// Chains the transaction's audit records, adds the notifications they make to
    /// the outbox (SPEC §10), sends the wake-up, commits, and wakes this instance's
    /// own workers and deliverers at once.
    async fn commit(&self, tx: Transaction<'_>, w: Writes) -> Result<(), StoreError> {
        let wake = self.seal(&tx, &w).await?;
        self.finish(tx, wake).await
    }

    /// What a commit writes before COMMIT: the audit records chained (the head is
    /// held from here to the commit), their notifications, the wake-up. Whether it
    /// wakes workers.
    async fn seal(&self, tx: &Transaction<'_>, w: &Writes) -> Result<bool, StoreError> {
        let routes = self.routes.load();
        let posting = !routes.is_empty() && w.audit.iter().any(|e| routes.wants(e));
        let wake = w.wake || posting;
        let notify = async {
            if wake {
                let sql = "SELECT pg_notify($1, $2)";
                execute(tx, sql, &[&CHANNEL, &self.notice]).await?;
            }
            Ok(())
        };
        let ((), first) = tokio::try_join!(notify, append(tx, &w.audit))?;
        if posting {
            post_letters(tx, &routes, first, &w.audit).await?;
        }
        Ok(wake)
    }

    /// Commits a sealed transaction and wakes this instance's own workers and
    /// deliverers at once when it queued work.
    async fn finish(&self, tx: Transaction<'_>, wake: bool) -> Result<(), StoreError> {
        tx.commit().await.map_err(unavailable)?;
        if wake {
            self.signal.notify_waiters();
        }
        Ok(())
    }
}

async fn migrate(client: &mut Client) -> Result<String, StoreError> {
    let tx = client.transaction().await.map_err(unavailable)?;
    let schema = query_opt(&tx, "SELECT current_schema()", &[])
        .await?
        .map(|r| r.text_opt(0))
        .transpose()?
        .flatten()
        .ok_or_else(|| {
            StoreError::Unavailable(
                "no schema to create gantry's tables in: none of the search_path exists".into(),
            )
        })?;
    // Replicas starting together: one migrates, the others wait and find it done.
    execute(
        &tx,
        "SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))",
        &[&MIGRATION_LOCK],
    )
    .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
        .await
        .map_err(unavailable)?;
    let version = query_opt(
        &tx,
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        &[],
    )
    .await?
    .map_or(Ok(0), |r| r.int(0))?;
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    if version > known {
        tracing::warn!(
            version,
            known,
            "the database schema is newer than this gantry; running on it unchanged"
        );
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(version).unwrap_or(0))
    {
        tx.batch_execute(sql).await.map_err(unavailable)?;
        let v = i64::try_from(i + 1).unwrap_or(i64::MAX);
        execute(
            &tx,
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&v],
        )
        .await?;
    }
    execute(
        &tx,
        "INSERT INTO audit_head (seq, hash) VALUES (0, $1) ON CONFLICT DO NOTHING",
        &[&GENESIS],
    )
    .await?;
    tx.commit().await.map_err(unavailable)?;
    Ok(schema)
}

/// Locks the head of the audit chain until the transaction ends and reads it: no
/// other transaction can append, or take the same sequence numbers, meanwhile.
async fn lock_head(tx: &Transaction<'_>) -> Result<(i64, String), StoreError> {
    let head = query_opt(tx, "SELECT seq, hash FROM audit_head FOR UPDATE", &[])
        .await?
        .ok_or_else(|| StoreError::Corrupt("the audit chain head is missing".into()))?;
    Ok((head.int(0)?, head.text(1)?))
}

/// Appends `entries` to the audit chain, in order, under the head's lock; the first
/// one's sequence number.
///
/// One statement takes the head, chains the records (each hash as
/// [`crate::audit::chain_hash`] frames it, over the form gantry computed) and moves the head: no
/// round trip to gantry happens while the head is held by this statement, which
/// is what lets the commits of several replicas follow each other closely
/// (SPEC §14, BENCHMARKS.md).
async fn append<C: GenericClient>(c: &C, entries: &[AuditEntry]) -> Result<i64, StoreError> {
    if entries.is_empty() {
        return Ok(0);
    }
    let mut a = AuditColumns::default();
    for e in entries {
        a.form.push(chain_form(e));
        a.at.push(e.at);
        a.kind.push(e.kind.as_str());
        a.actor.push(&e.actor);
        a.event_id.push(e.event_id.as_deref());
        a.job_id.push(e.job_id.as_deref());
        a.rule.push(e.rule.as_deref());
        a.target.push(e.target.as_deref());
        a.repo.push(e.repo.as_deref());
        a.image.push(e.image.as_deref());
        a.tag.push(e.tag.as_deref());
        a.digest.push(e.digest.as_deref());
        a.from.push(e.from.as_deref());
        a.to.push(e.to.as_deref());
        a.outcome.push(e.outcome.as_deref());
        a.upstream_status.push(e.upstream_status.map(i64::from));
        a.message.push(e.message.as_deref());
        a.parent_job_id.push(e.parent_job_id.as_deref());
        a.chain_depth.push(e.chain_depth.map(i64::from));
        a.count.push(stored_count(e)?);
        a.hash_version.push(i64::from(HASH_VERSION));
    }
    // `chain` numbers the records from 1 (row 0 is the head): record n's hash covers
    // record n - 1's. Recursive, as the chain is; each step reads its form by
    // position.
    let sql = format!(
        "WITH RECURSIVE
            head AS (SELECT seq, hash FROM audit_head FOR UPDATE),
            chain (n, seq, hash) AS (
                SELECT 0::bigint, seq, hash FROM head
                UNION ALL
                SELECT c.n + 1, c.seq + 1, encode(sha256(
                    convert_to(c.hash || E'\\n' || (c.seq + 1)::text || E'\\n', 'UTF8')
                    || ($1::bytea[])[c.n + 1]), 'hex')
                FROM chain c WHERE c.n < cardinality($1::bytea[])),
            appended AS (
                INSERT INTO audit ({AUDIT_COLUMNS})
                SELECT c.seq, r.at, r.kind, r.actor, r.event_id, r.job_id, r.rule, r.target,
                    r.repo, r.image, r.tag, r.digest, r.from_ref, r.to_ref, r.outcome,
                    r.upstream_status, r.message, p.hash, c.hash, r.parent_job_id,
                    r.chain_depth, r.count, r.hash_version
                FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
                    $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
                    $12::text[], $13::text[], $14::text[], $15::text[], $16::bigint[],
                    $17::text[], $18::text[], $19::bigint[], $20::bigint[], $21::bigint[])
                    WITH ORDINALITY AS r(at, kind, actor, event_id, job_id, rule, target,
                        repo, image, tag, digest, from_ref, to_ref, outcome, upstream_status,
                        message, parent_job_id, chain_depth, count, hash_version, n)
                JOIN chain c ON c.n = r.n JOIN chain p ON p.n = r.n - 1)
         UPDATE audit_head SET seq = last.seq, hash = last.hash
         FROM (SELECT seq, hash FROM chain ORDER BY n DESC LIMIT 1) AS last
         RETURNING last.seq"
    );
    let last = query_opt(
        c,
        &sql,
        &[
            &a.form,
            &a.at,
            &a.kind,
            &a.actor,
            &a.event_id,
            &a.job_id,
            &a.rule,
            &a.target,
            &a.repo,
            &a.image,
            &a.tag,
            &a.digest,
            &a.from,
            &a.to,
            &a.outcome,
            &a.upstream_status,
            &a.message,
            &a.parent_job_id,
            &a.chain_depth,
            &a.count,
            &a.hash_version,
        ],
    )
    .await?
    .ok_or_else(|| StoreError::Corrupt("the audit chain head is missing".into()))?
    .int(0)?;
    let n = i64::try_from(entries.len()).unwrap_or(i64::MAX);
    Ok(last - n + 1)
}

/// Adds to the outbox the notifications `entries` make (the first numbered
/// `first`), in one insert.
async fn post_letters(
    tx: &Transaction<'_>,
    routes: &Routes,
    first: i64,
    entries: &[AuditEntry],
) -> Result<(), StoreError> {
    let letters: Vec<Letter> = (first..)
        .zip(entries)
        .flat_map(|(seq, e)| routes.letters(seq, e))
        .collect();
    let ids: Vec<&str> = letters.iter().map(|l| l.id.as_str()).collect();
    let sinks: Vec<&str> = letters.iter().map(|l| l.sink.as_str()).collect();
    let kinds: Vec<&str> = letters.iter().map(|l| l.kind.as_str()).collect();
    let job_ids: Vec<Option<&str>> = letters.iter().map(|l| l.job_id.as_deref()).collect();
    let seqs: Vec<i64> = letters.iter().map(|l| l.sequence).collect();
    let at: Vec<i64> = letters.iter().map(|l| l.created_at).collect();
    let sql = "INSERT INTO notifications (id, sink, kind, job_id, sequence, state, tries,
            next_at, created_at, updated_at)
        SELECT id, sink, kind, job_id, seq, 'pending', 0, at, at, at
        FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[],
            $6::bigint[]) AS l(id, sink, kind, job_id, seq, at)";
    execute(tx, sql, &[&ids, &sinks, &kinds, &job_ids, &seqs, &at]).await?;
    Ok(())
}

/// Audit records column by column, for one multi-row insert; `form` is what each
/// one's hash covers.
#[derive(Default)]
struct AuditColumns<'a> {
    form: Vec<Vec<u8>>,
    at: Vec<i64>,
    kind: Vec<&'static str>,
    actor: Vec<&'a str>,
    event_id: Vec<Option<&'a str>>,
    job_id: Vec<Option<&'a str>>,
    rule: Vec<Option<&'a str>>,
    target: Vec<Option<&'a str>>,
    repo: Vec<Option<&'a str>>,
    image: Vec<Option<&'a str>>,
    tag: Vec<Option<&'a str>>,
    digest: Vec<Option<&'a str>>,
    from: Vec<Option<&'a str>>,
    to: Vec<Option<&'a str>>,
    outcome: Vec<Option<&'a str>>,
    upstream_status: Vec<Option<i64>>,
    message: Vec<Option<&'a str>>,
    parent_job_id: Vec<Option<&'a str>>,
    chain_depth: Vec<Option<i64>>,
    count: Vec<Option<i64>>,
    hash_version: Vec<i64>,
}

async fn insert_attempt<C: GenericClient>(
    c: &C,
    job_id: &str,
    a: &AttemptRecord,
) -> Result<(), StoreError> {
    let (duration_ms, upstream_status, code, message) = attempt_values(a);
    let sql = format!(
        "INSERT INTO attempts (job_id, {ATTEMPT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
    );
    let n = i64::from(a.n);
    let p: [&(dyn ToSql + Sync); 7] = [
        &job_id,
        &n,
        &a.started_at,
        &duration_ms,
        &upstream_status,
        &code,
        &message,
    ];
    execute(c, &sql, &p).await.map(|_| ())
}

/// Fills in the attempt history of each job, in one query.
async fn load_attempts<C: GenericClient>(c: &C, jobs: &mut [Job]) -> Result<(), StoreError> {
    if jobs.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
    let sql = format!(
        "SELECT {ATTEMPT_COLUMNS}, job_id FROM attempts WHERE job_id = ANY($1) ORDER BY job_id, n"
    );
    let mut by_job: HashMap<String, Vec<AttemptRecord>> = HashMap::new();
    for r in query(c, &sql, &[&ids]).await? {
        let attempt = read_attempt(&r)?;
        by_job.entry(r.text(6)?).or_default().push(attempt);
    }
    for job in jobs.iter_mut() {
        job.attempts = by_job.remove(&job.id).unwrap_or_default();
    }
    let ids: Vec<String> = jobs
        .iter()
        .filter(|j| j.approval.is_some())
        .map(|j| j.id.clone())
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "SELECT {APPROVAL_COLUMNS}, job_id FROM approvals WHERE job_id = ANY($1) ORDER BY seq"
    );
    let mut by_job: HashMap<String, Vec<Approval>> = HashMap::new();
    for r in query(c, &sql, &[&ids]).await? {
        let approval = read_approval(&r)?;
        by_job.entry(r.text(5)?).or_default().push(approval);
    }
    for job in jobs {
        job.approvals = by_job.remove(&job.id).unwrap_or_default();
    }
    Ok(())
}

/// The verdicts of a job's current round, oldest first.
async fn this_round<C: GenericClient>(c: &C, job_id: &str) -> Result<Vec<Approval>, StoreError> {
    let sql = format!(
        "SELECT {APPROVAL_COLUMNS} FROM approvals
         WHERE job_id = $1 AND round = (SELECT approval_round FROM jobs WHERE id = $1)
         ORDER BY seq"
    );
    query(c, &sql, &[&job_id])
        .await?
        .iter()
        .map(read_approval)
        .collect()
}

/// Writes a job's new state, due at `now` or at the end of its soak (what an
/// approval's or expiry's move needs).
async fn move_job<C: GenericClient>(
    c: &C,
    job_id: &str,
    to: JobState,
    now: Millis,
) -> Result<(), StoreError> {
    let sql = "UPDATE jobs SET state = $2, next_attempt_at = GREATEST($3, COALESCE(soak_until, 0)),
            updated_at = $3
         WHERE id = $1";
    execute(c, sql, &[&job_id, &to.as_str(), &now]).await?;
    Ok(())
}

async fn load_job<C: GenericClient>(
    c: &C,
    id: &str,
    for_update: bool,
) -> Result<Option<Job>, StoreError> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1{lock}");
    let Some(row) = query_opt(c, &sql, &[&id]).await? else {
        return Ok(None);
    };
    let mut job = [read_job(&row)?];
    load_attempts(c, &mut job).await?;
    let [job] = job;
    Ok(Some(job))
}

/// Adds to each event the jobs it produced, in one query.
async fn with_jobs<C: GenericClient>(
    c: &C,
    events: Vec<Event>,
) -> Result<Vec<StoredEvent>, StoreError> {
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    let mut by_event: HashMap<String, Vec<JobSummary>> = HashMap::new();
    if !ids.is_empty() {
        let sql = "SELECT event_id, id, rule, state FROM jobs WHERE event_id = ANY($1) ORDER BY id";
        for r in query(c, sql, &[&ids]).await? {
            by_event.entry(r.text(0)?).or_default().push(JobSummary {
                id: r.text(1)?,
                rule: r.text(2)?,
                state: job_state(&r.text(3)?)?,
            });
        }
    }
    Ok(events
        .into_iter()
        .map(|event| StoredEvent {
            jobs: by_event.remove(&event.id).unwrap_or_default(),
            event,
        })
        .collect())
}

/// Which jobs a lease query picks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pick {
    /// Queued, or retrying and due.
    Due,
    /// Running under a lease that expired: its worker died.
    Expired,
}

/// The lease statements, built once: every idle worker runs one on each wake-up.
static LEASE_SQL: LazyLock<[String; 2]> =
    LazyLock::new(|| [build_lease_sql(Pick::Due), build_lease_sql(Pick::Expired)]);

fn lease_sql(pick: Pick) -> &'static str {
    &LEASE_SQL[pick as usize]
}

/// Leases one job of `pick` in one statement: `SKIP LOCKED` passes over a job
/// another worker is leasing at this moment instead of waiting for it. Returns the
/// job's columns, then `attempts`, `retry_base`, the previous attempt's start and the
/// state it was leased from.
fn build_lease_sql(pick: Pick) -> String {
    let (condition, order) = match pick {
        Pick::Due => (
            "state IN ('queued', 'retrying', 'frozen') AND next_attempt_at <= $1".to_string(),
            "next_attempt_at, id",
        ),
        Pick::Expired => (
            format!("state = 'running' AND lease_expires_at <= {STORE_NOW}"),
            "lease_expires_at",
        ),
    };
    // A due job's lease is committed without waiting for its WAL flush
    // (`synchronous_commit` off for this statement's own transaction): lost in a
    // server crash, the job is simply due again, and the worker that held it changes
    // nothing, because every change is preceded by the lease's renewal (the fence,
    // SPEC §13), a durable commit, which finds the lease gone — or, had it been
    // kept, flushes it too (the WAL is flushed in order). A takeover records the
    // lost attempt, so it is flushed as any record is.
    let flush = match pick {
        Pick::Due => ", (SELECT set_config('synchronous_commit', 'off', true)) AS unflushed",
        Pick::Expired => "",
    };
    format!(
        "UPDATE jobs SET state = 'running', lease_owner = $2, lease_expires_at = {STORE_NOW} + $3,
            attempts = attempts + 1, attempt_started_at = $1, updated_at = $1
         FROM (SELECT id AS picked, attempt_started_at AS was_started, state AS was_state FROM jobs
               WHERE {condition} ORDER BY {order} LIMIT 1 FOR UPDATE SKIP LOCKED) p{flush}
         WHERE id = p.picked
         RETURNING {JOB_COLUMNS}, attempts, retry_base, p.was_started, p.was_state"
    )
}

/// The job a lease query returned, with its history and, for a takeover, the
/// record of the attempt that was lost.
async fn leased<C: GenericClient>(
    c: &C,
    row: &Row,
    pick: Pick,
    now: Millis,
    w: &mut Writes,
) -> Result<(LeasedJob, Option<AttemptRecord>), StoreError> {
    let mut job = [read_job(row)?];
    let attempt: u32 = narrow("job attempts", row.int(JOB_COLUMN_COUNT)?)?;
    let retry_base: u32 = narrow("job retry base", row.int(JOB_COLUMN_COUNT + 1)?)?;
    if attempt > 1 {
        load_attempts(c, &mut job).await?;
    }
    let [mut job] = job;
    let was_started = row.int_opt(JOB_COLUMN_COUNT + 2)?;
    let lost = (pick == Pick::Expired).then(|| {
        // The previous holder stopped renewing: its attempt is on the record as lost.
        let lost = lease_expired(attempt - 1, was_started, now);
        w.audit.push(AuditEntry::attempt(&job, &lost));
        job.attempts.push(lost.clone());
        lost
    });
    if job_state(&row.text(JOB_COLUMN_COUNT + 3)?)? == JobState::Frozen {
        w.audit.push(AuditEntry::unfrozen(&job));
    }
    let leased = LeasedJob {
        job,
        attempt,
        attempts_in_budget: attempt.saturating_sub(retry_base),
        started_at: now,
    };
    Ok((leased, lost))
}

/// The store's clock in milliseconds. Leases are set and judged by it alone, so a
/// replica whose clock runs ahead cannot take over a job another replica still
/// holds, and one whose clock lags cannot keep a job past its lease.
const STORE_NOW: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// The lease fence: `worker` still holds attempt `$3` of job `$1`.
const HELD: &str = "id = $1 AND state = 'running' AND lease_owner = $2 AND attempts = $3";

#[async_trait]
impl Store for PostgresStore {
    async fn ingest(
        &self,
        batch: Vec<NewEvent>,
        policy: IngestPolicy,
    ) -> Result<Vec<IngestOutcome>, StoreError> {
        self.groups.ingest(batch, policy).await
    }

    async fn append_audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let w = Writes {
            audit: vec![entry],
            wake: false,
        };
        self.commit(tx, w).await
    }

    async fn lease_job(
        &self,
        worker: &str,
        lease: Duration,
    ) -> Result<Option<LeasedJob>, StoreError> {
        let now = now_millis();
        let lease = millis(lease);
        let mut client = self.client().await?;
        // A due job: one statement, committed on its own.
        let p: [&(dyn ToSql + Sync); 3] = [&now, &worker, &lease];
        if let Some(row) = query_opt(&client, lease_sql(Pick::Due), &p).await? {
            let mut w = Writes::default();
            let (job, _) = leased(&client, &row, Pick::Due, now, &mut w).await?;
            if !w.audit.is_empty() {
                // A job leaving a freeze: its record follows the lease in its own commit.
                let tx = client.transaction().await.map_err(unavailable)?;
                self.commit(tx, w).await?;
            }
            return Ok(Some(job));
        }
        // A job whose worker died: taken over together with the record of the attempt
        // it lost.
        let tx = client.transaction().await.map_err(unavailable)?;
        let Some(row) = query_opt(&tx, lease_sql(Pick::Expired), &p).await? else {
            return Ok(None);
        };
        let mut w = Writes::default();
        let (job, lost) = leased(&tx, &row, Pick::Expired, now, &mut w).await?;
        if let Some(lost) = &lost {
            insert_attempt(&tx, &job.job.id, lost).await?;
        }
        self.commit(tx, w).await?;
        Ok(Some(job))
    }

    async fn renew_lease(
        &self,
        job_id: &str,
        worker: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        static RENEW: LazyLock<String> = LazyLock::new(|| {
            format!(
                "UPDATE jobs SET lease_expires_at = {STORE_NOW} + $3
                 WHERE id = $1 AND lease_owner = $2 AND state = 'running'"
            )
        });
        let n = execute(&client, &RENEW, &[&job_id, &worker, &millis(lease)]).await?;
        Ok(n == 1)
    }

    async fn record_attempt(&self, report: AttemptReport) -> Result<bool, StoreError> {
        self.groups.record(report).await
    }

    async fn release_job(&self, r: Release) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let now = now_millis();
        let n = i64::from(r.attempt);
        let to = leased_move(r.event())?.to.as_str();
        let mut w = Writes {
            audit: Vec::new(),
            wake: true,
        };
        match &r.interrupted {
            None => {
                let sql = format!(
                    "UPDATE jobs SET state = $6, attempts = attempts - 1, next_attempt_at = $4,
                        lease_owner = NULL, lease_expires_at = NULL, attempt_started_at = NULL,
                        updated_at = $5
                     WHERE {HELD}
                     RETURNING {JOB_COLUMNS}"
                );
                let p: [&(dyn ToSql + Sync); 6] = [&r.job_id, &r.worker, &n, &r.at, &now, &to];
                let Some(row) = query_opt(&tx, &sql, &p).await? else {
                    return Ok(false);
                };
                if !r.frozen_by.is_empty() {
                    let names = frozen_names(&r.frozen_by);
                    execute(&tx, SET_FROZEN, &[&names, &r.at, &r.job_id]).await?;
                    w.audit
                        .push(AuditEntry::frozen(&read_job(&row)?, &r.frozen_by, r.at));
                }
                if let Some(policy) = &r.protected {
                    let expires_at = policy.expires_at(now);
                    let text = policy_text(policy);
                    execute(&tx, SET_PROTECTED, &[&text, &expires_at, &r.job_id]).await?;
                    w.audit
                        .push(AuditEntry::protected(&read_job(&row)?, policy));
                }
            }
            Some(attempt) => {
                let error = attempt.error.as_ref();
                let (code, message) = (
                    error.map(|e| e.code.as_str()),
                    error.map(|e| e.message.as_str()),
                );
                let sql = format!(
                    "UPDATE jobs SET state = $8, next_attempt_at = $4, lease_owner = NULL,
                        lease_expires_at = NULL, attempt_started_at = NULL,
                        last_error_code = $5, last_error_message = $6, updated_at = $7
                     WHERE {HELD}
                     RETURNING {JOB_COLUMNS}"
                );
                let p: [&(dyn ToSql + Sync); 8] =
                    [&r.job_id, &r.worker, &n, &r.at, &code, &message, &now, &to];
                let Some(row) = query_opt(&tx, &sql, &p).await? else {
                    return Ok(false);
                };
                let job = read_job(&row)?;
                insert_attempt(&tx, &r.job_id, attempt).await?;
                w.audit.push(AuditEntry::interrupted(&job, attempt));
            }
        }
        self.commit(tx, w).await?;
        Ok(true)
    }

    async fn operate(
        &self,
        job_id: &str,
        action: OperatorAction,
        actor: &str,
    ) -> Result<OperatorOutcome, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let Some(mut job) = load_job(&tx, job_id, true).await? else {
            return Ok(OperatorOutcome::NotFound);
        };
        let step = match operator_move(&job, action) {
            Ok(step) => step,
            Err(state) => return Ok(OperatorOutcome::Conflict(state)),
        };
        let now = now_millis();
        // The row is locked (`load_job` above): the state just read is still the job's.
        execute(
            &tx,
            "UPDATE jobs SET state = $2, next_attempt_at = GREATEST($3, COALESCE(soak_until, 0)),
                updated_at = $3, retry_base = CASE WHEN $4 THEN attempts ELSE retry_base END
             WHERE id = $1",
            &[
                &job_id,
                &step.to.as_str(),
                &now,
                &step.event.renews_budget(),
            ],
        )
        .await?;
        if let Some(approval) = revival(&job, step, actor, now) {
            execute(
                &tx,
                "UPDATE jobs SET approval_round = approval_round + 1, approval_expires_at = $2,
                    initiator = $3
                 WHERE id = $1",
                &[&job_id, &approval.expires_at, &approval.initiator],
            )
            .await?;
            job.approval = Some(approval);
        }
        if let Some(gate) = gate_revival(&job, step, now) {
            execute(
                &tx,
                "UPDATE jobs SET gate = $2, gate_expires_at = $3 WHERE id = $1",
                &[&job_id, &gate_text(&gate), &gate.expires_at],
            )
            .await?;
            job.gate = Some(gate);
        }
        job.state = step.to;
        job.updated_at = now;
        let w = Writes {
            audit: step
                .audit
                .map(|kind| AuditEntry::operator(kind, actor, &job))
                .into_iter()
                .collect(),
            wake: action == OperatorAction::Retry && step.to == JobState::Queued,
        };
        self.commit(tx, w).await?;
        Ok(OperatorOutcome::Done(Box::new(job)))
    }

    async fn decide_approval(
        &self,
        job_id: &str,
        ballot: Ballot,
    ) -> Result<ApprovalOutcome, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        // Locked: a verdict given at once at another replica waits for this one, and
        // then counts it.
        let Some(mut job) = load_job(&tx, job_id, true).await? else {
            return Ok(ApprovalOutcome::NotFound);
        };
        let now = now_millis();
        let given = this_round(&tx, job_id).await?;
        let landing = match BallotLanding::of(&job, &given, &ballot, now)? {
            Ok(landing) => landing,
            Err(refused) => return Ok(ApprovalOutcome::Refused(refused)),
        };
        if let Some(a) = &landing.approval {
            let sql = format!(
                "INSERT INTO approvals (job_id, round, {APPROVAL_COLUMNS})
                 SELECT $1, approval_round, $2, $3, $4, $5, $6 FROM jobs WHERE id = $1"
            );
            let params: [&(dyn ToSql + Sync); 6] = [
                &job_id,
                &a.by,
                &a.at,
                &a.verdict.as_str(),
                &a.comment,
                &a.as_group,
            ];
            execute(&tx, &sql, &params).await?;
            job.approvals.push(a.clone());
        }
        if let Some(step) = landing.step {
            move_job(&tx, job_id, step.to, now).await?;
            job.state = step.to;
            job.updated_at = now;
        }
        let w = Writes {
            wake: job.state == JobState::Queued,
            audit: landing.audit.into_iter().collect(),
        };
        self.commit(tx, w).await?;
        Ok(ApprovalOutcome::Done(Box::new(job)))
    }

    async fn cancel_removed(&self, rules: &[String]) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        // Locked and skipped when another replica is moving them at this moment.
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs
             WHERE state IN ('waiting', 'awaiting_approval') AND rule <> ALL($1::text[])
             FOR UPDATE SKIP LOCKED"
        );
        let mut jobs = Vec::new();
        for row in query(&tx, &sql, &[&rules]).await? {
            jobs.push(read_job(&row)?);
        }
        let now = now_millis();
        let mut w = Writes::default();
        for job in &mut jobs {
            let (step, error) = rule_removed(job)?;
            execute(
                &tx,
                "UPDATE jobs SET state = $2, last_error_code = $3, last_error_message = $4,
                    updated_at = $5
                 WHERE id = $1",
                &[
                    &job.id,
                    &step.to.as_str(),
                    &error.code.as_str(),
                    &error.message,
                    &now,
                ],
            )
            .await?;
            job.state = step.to;
            if let Some(kind) = step.audit {
                w.audit.push(
                    AuditEntry::operator(kind, SYSTEM_ACTOR, job).saying(&format!(
                        "{}: {}",
                        error.code.as_str(),
                        error.message
                    )),
                );
            }
        }
        self.commit(tx, w).await?;
        Ok(u64::try_from(jobs.len()).unwrap_or(u64::MAX))
    }

    async fn expire_approvals(&self) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let now = now_millis();
        // Locked and skipped when another replica is expiring them, or evidence is
        // arriving for them, at this moment.
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs
             WHERE (state = 'awaiting_approval' AND approval_expires_at <= $1)
                OR (state = 'waiting' AND gate_expires_at <= $1)
             FOR UPDATE SKIP LOCKED"
        );
        let mut jobs = Vec::new();
        for row in query(&tx, &sql, &[&now]).await? {
            jobs.push(read_job(&row)?);
        }
        let mut w = Writes::default();
        for job in &mut jobs {
            let step = expiry(job.state)?;
            move_job(&tx, &job.id, step.to, now).await?;
            job.state = step.to;
            if let Some(kind) = step.audit {
                w.audit.push(AuditEntry::operator(kind, SYSTEM_ACTOR, job));
            }
        }
        self.commit(tx, w).await?;
        Ok(u64::try_from(jobs.len()).unwrap_or(u64::MAX))
    }

    async fn start_freeze(&self, freeze: RuntimeFreeze) -> Result<bool, StoreError> {
        static START: LazyLock<String> = LazyLock::new(|| start_freeze_sql(param));
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let (to_repos, targets) = freeze_scope(&freeze);
        let f = &freeze;
        let now = now_millis();
        let p: [&(dyn ToSql + Sync); 8] = [
            &f.name,
            &to_repos,
            &targets,
            &f.from,
            &f.until,
            &f.reason,
            &f.started_by,
            &now,
        ];
        if execute(&tx, &START, &p).await? == 0 {
            return Ok(false);
        }
        let w = Writes {
            audit: vec![AuditEntry::freeze_started(f)],
            wake: false,
        };
        self.commit(tx, w).await?;
        Ok(true)
    }

    async fn end_freeze(&self, name: &str, actor: &str) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let now = now_millis();
        let sql = "DELETE FROM freezes WHERE name = $1 AND until_at > $2";
        if execute(&tx, sql, &[&name, &now]).await? == 0 {
            return Ok(false);
        }
        // Every frozen job is looked at again; those another freeze still covers are
        // frozen again by the worker that leases them.
        execute(&tx, FROZEN_DUE_NOW, &[&now]).await?;
        let w = Writes {
            audit: vec![AuditEntry::freeze_ended(name, actor)],
            wake: true,
        };
        self.commit(tx, w).await?;
        Ok(true)
    }

    async fn override_freeze(
        &self,
        job_id: &str,
        request: OverrideRequest,
    ) -> Result<OverrideOutcome, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        // Locked: a worker cannot lease the job meanwhile, nor freeze it anew, so the
        // freezes decided on are the ones holding it as it moves.
        let Some(mut job) = load_job(&tx, job_id, true).await? else {
            return Ok(OverrideOutcome::NotFound);
        };
        let now = now_millis();
        let landing = match OverrideLanding::of(&job, &request, now)? {
            Ok(landing) => landing,
            Err(refused) => return Ok(OverrideOutcome::Refused(refused)),
        };
        move_job(&tx, job_id, landing.step.to, now).await?;
        execute(&tx, SET_FREEZE_OVERRIDE, &[&landing.stored, &job_id]).await?;
        let w = Writes {
            audit: vec![landing.land(&mut job, now)],
            wake: true,
        };
        self.commit(tx, w).await?;
        Ok(OverrideOutcome::Done(Box::new(job)))
    }

    async fn freezes(&self) -> Result<Vec<RuntimeFreeze>, StoreError> {
        static LIST: LazyLock<String> = LazyLock::new(|| {
            format!("SELECT {FREEZE_COLUMNS} FROM freezes WHERE until_at > $1 ORDER BY name")
        });
        let client = self.client().await?;
        let rows = query(&client, &LIST, &[&now_millis()]).await?;
        rows.iter().map(read_freeze).collect()
    }

    async fn next_wakeup(&self) -> Result<Option<Millis>, StoreError> {
        let client = self.client().await?;
        let row = query_opt(
            &client,
            "SELECT LEAST(
                (SELECT MIN(next_attempt_at) FROM jobs WHERE state IN ('queued', 'retrying', 'frozen')),
                (SELECT MIN(lease_expires_at) FROM jobs WHERE state = 'running'),
                (SELECT MIN(approval_expires_at) FROM jobs WHERE state = 'awaiting_approval'),
                (SELECT MIN(gate_expires_at) FROM jobs WHERE state = 'waiting'))",
            &[],
        )
        .await?;
        Ok(row.map(|r| r.int_opt(0)).transpose()?.flatten())
    }

    async fn event(&self, id: &str) -> Result<Option<StoredEvent>, StoreError> {
        let client = self.client().await?;
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = $1");
        let Some(row) = query_opt(&client, &sql, &[&id]).await? else {
            return Ok(None);
        };
        let event = read_event(&row)?;
        Ok(with_jobs(&client, vec![event]).await?.pop())
    }

    async fn events(&self, filter: EventFilter) -> Result<Page<StoredEvent>, StoreError> {
        let client = self.client().await?;
        let q = events_listing(&filter, param);
        let rows = listed(&client, &q, |r| {
            Ok((read_event(r)?, r.int(EVENTS_PAGE_BYTES_COLUMN)?))
        })
        .await?;
        let bytes = rows.last().map(|(_, b)| *b);
        let events = rows.into_iter().map(|(e, _)| e).collect();
        let items = with_jobs(&client, events).await?;
        Ok(events_page(items, filter.limit, bytes))
    }

    async fn job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let client = self.client().await?;
        load_job(&client, id, false).await
    }

    async fn jobs(&self, filter: JobFilter) -> Result<Page<Job>, StoreError> {
        let client = self.client().await?;
        let q = jobs_listing(&filter, param);
        let mut jobs = listed(&client, &q, read_job).await?;
        load_attempts(&client, &mut jobs).await?;
        Ok(page(jobs, filter.limit, |j| j.id.clone()))
    }

    async fn audit(&self, filter: AuditFilter) -> Result<Page<AuditRecord>, StoreError> {
        let client = self.client().await?;
        let q = audit_listing(&filter, param);
        let records = listed(&client, &q, |r| read_audit(r).map_err(StoreError::Corrupt)).await?;
        Ok(page(records, filter.limit, |r| r.seq.to_string()))
    }

    async fn audit_chain(&self, after: i64, limit: usize) -> Result<Vec<ChainRow>, StoreError> {
        self.chain_rows(&chain_sql(param), after, limit).await
    }

    async fn audit_checkpoints(
        &self,
        before: i64,
        limit: usize,
    ) -> Result<Vec<ChainRow>, StoreError> {
        self.chain_rows(&checkpoints_sql(param), before, limit)
            .await
    }

    async fn prune(
        &self,
        audit_before: Option<Millis>,
        deliveries_before: Millis,
    ) -> Result<Pruned, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let deliveries = execute(
            &tx,
            "DELETE FROM deliveries WHERE received_at < $1",
            &[&deliveries_before],
        )
        .await?;
        let notifications = execute(&tx, PRUNE_SENT, &[&deliveries_before]).await?;
        // Evidence past its window can count for no trigger any more.
        let now = now_millis();
        execute(&tx, "DELETE FROM evidence WHERE expires_at < $1", &[&now]).await?;
        let mut w = Writes::default();
        let mut audit_records = 0;
        if let Some(before) = audit_before {
            // The head first: replicas pruning at once take turns, and the second
            // finds the first's cut.
            lock_head(&tx).await?;
            let last = query_opt(
                &tx,
                "SELECT seq, hash FROM audit WHERE at < $1 ORDER BY seq DESC LIMIT 1",
                &[&before],
            )
            .await?;
            if let Some(last) = last {
                let anchor = Anchor {
                    seq: last.int(0)?,
                    hash: last.text(1)?,
                };
                let removed =
                    execute(&tx, "DELETE FROM audit WHERE seq <= $1", &[&anchor.seq]).await?;
                // The checkpoint goes at the end of the chain, so it survives the cut.
                w.audit.push(AuditEntry::pruned(&anchor, removed));
                audit_records = removed;
            }
        }
        self.commit(tx, w).await?;
        Ok(Pruned {
            audit_records,
            deliveries,
            notifications,
        })
    }

    async fn queue_stats(&self) -> Result<QueueStats, StoreError> {
        let client = self.client().await?;
        let mut stats = QueueStats::default();
        let counts = query(
            &client,
            "SELECT state, COUNT(*) FROM jobs GROUP BY state",
            &[],
        );
        let oldest = query_opt(
            &client,
            "SELECT MIN(created_at) FROM jobs WHERE state IN ('queued', 'retrying')",
            &[],
        );
        let (counts, oldest) = tokio::try_join!(counts, oldest)?;
        for r in counts {
            if let Some(state) = JobState::parse(&r.text(0)?) {
                stats
                    .by_state
                    .insert(state, u64::try_from(r.int(1)?).unwrap_or(0));
            }
        }
        stats.oldest_waiting_since = oldest.map(|r| r.int_opt(0)).transpose()?.flatten();
        Ok(stats)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.simple_query("SELECT 1").await.map_err(unavailable)?;
        Ok(())
    }

    fn work_signal(&self) -> Arc<Notify> {
        self.committing.signal.clone()
    }

    fn set_routes(&self, routes: Arc<Routes>) {
        self.committing.routes.store(routes);
    }

    async fn start_session(&self, session: ConsoleSession) -> Result<(), StoreError> {
        let client = self.client().await?;
        execute(&client, DROP_EXPIRED, &[&now_millis()]).await?;
        execute(
            &client,
            INSERT_SESSION,
            &[
                &session.id_hash,
                &session.who,
                &i64::from(session.person),
                &role_text(session.role),
                &groups_text(&session.groups),
                &session.csrf,
                &session.expires_at,
            ],
        )
        .await?;
        Ok(())
    }

    async fn session(&self, id_hash: &str) -> Result<Option<ConsoleSession>, StoreError> {
        let client = self.client().await?;
        query_opt(&client, SESSION, &[&id_hash, &now_millis()])
            .await?
            .map(|r| read_session(id_hash, &r))
            .transpose()
    }

    async fn end_session(&self, id_hash: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        Ok(execute(&client, END_SESSION, &[&id_hash]).await? > 0)
    }

    async fn lease_notifications(
        &self,
        sink: &str,
        worker: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Leased>, StoreError> {
        static LEASE: LazyLock<String> =
            LazyLock::new(|| notification_lease_sql(" FOR UPDATE SKIP LOCKED"));
        let client = self.client().await?;
        let now = now_millis();
        let until = now.saturating_add(millis(lease));
        let rows = query(
            &client,
            &LEASE,
            &[&worker, &until, &now, &sink, &sql_limit(max)],
        )
        .await?;
        rows.iter().map(read_leased).collect()
    }

    async fn next_notification(&self, sink: &str) -> Result<Option<Millis>, StoreError> {
        let client = self.client().await?;
        let row = query_opt(&client, NEXT_DUE, &[&sink]).await?;
        Ok(row.map(|r| r.int_opt(0)).transpose()?.flatten())
    }

    async fn record_delivery(&self, report: DeliveryReport) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let now = now_millis();
        let (state, next_at) = row_after(report.judged.verdict, now);
        let status = report.judged.status.map(i64::from);
        let try_n = i64::from(report.try_n);
        let written = execute(
            &tx,
            RECORD_TRY,
            &[
                &state.as_str(),
                &next_at,
                &status,
                &report.judged.error,
                &now,
                &report.id,
                &report.worker,
                &try_n,
            ],
        )
        .await?;
        if written == 0 {
            return Ok(false);
        }
        let newly_disabled = report.judged.verdict == Verdict::Gone
            && execute(&tx, DISABLE_SINK, &[&report.sink, &now]).await? == 1;
        let w = Writes {
            audit: verdict_record(&report, newly_disabled)
                .into_iter()
                .collect(),
            wake: false,
        };
        self.commit(tx, w).await?;
        Ok(true)
    }

    async fn notifications(
        &self,
        filter: NotificationFilter,
    ) -> Result<Page<Notification>, StoreError> {
        let client = self.client().await?;
        let q = notifications_listing(&filter, param);
        let items = listed(&client, &q, read_notification).await?;
        Ok(page(items, filter.limit, |n| n.id.clone()))
    }

    async fn retry_notification(
        &self,
        id: &str,
        actor: &str,
    ) -> Result<NotificationRetry, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let locked = format!("{NOTIFICATION_STATE} FOR UPDATE");
        let Some(row) = query_opt(&tx, &locked, &[&id]).await? else {
            return Ok(NotificationRetry::NotFound);
        };
        let state = row.text(0)?;
        match NotificationState::parse(&state) {
            Some(NotificationState::Failed) => {}
            Some(other) => return Ok(NotificationRetry::Conflict(other)),
            None => {
                return Err(StoreError::Corrupt(format!(
                    "notification {id} state {state}"
                )));
            }
        }
        execute(&tx, REVIVE, &[&id, &now_millis()]).await?;
        let n = query_opt(&tx, &notification_sql(), &[&id])
            .await?
            .map(|r| read_notification(&r))
            .transpose()?
            .ok_or_else(|| StoreError::Corrupt(format!("notification {id} vanished")))?;
        let w = Writes {
            audit: vec![retried_record(&n, actor)],
            wake: true,
        };
        self.commit(tx, w).await?;
        Ok(NotificationRetry::Done(Box::new(n)))
    }

    async fn enable_sink(&self, name: &str, actor: &str) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        if execute(&tx, ENABLE_SINK, &[&name]).await? == 0 {
            return Ok(false);
        }
        let w = Writes {
            audit: vec![enabled_record(name, actor)],
            wake: true,
        };
        self.commit(tx, w).await?;
        Ok(true)
    }

    async fn disabled_sinks(&self) -> Result<Vec<DisabledSink>, StoreError> {
        let client = self.client().await?;
        query(&client, DISABLED_SINKS, &[])
            .await?
            .iter()
            .map(|r| {
                Ok(DisabledSink {
                    name: r.text(0)?,
                    since: r.int(1)?,
                })
            })
            .collect()
    }

    async fn settle_sinks(&self, configured: &[String]) -> Result<SinksSettled, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        // Replicas starting together settle one after the other.
        execute(&tx, "LOCK TABLE notification_sinks IN EXCLUSIVE MODE", &[]).await?;
        let now = now_millis();
        let mut settled = SinksSettled::default();
        let mut w = Writes::default();
        for r in query(&tx, PENDING_BY_SINK, &[]).await? {
            let (sink, count) = (r.text(0)?, r.int(1)?);
            if configured.contains(&sink) {
                continue;
            }
            execute(&tx, DROP_SINK, &[&sink, &now]).await?;
            w.audit.push(dropped_record(&sink, count));
            settled.dropped += u64::try_from(count).unwrap_or(0);
        }
        for r in query(&tx, DISABLED_SINKS, &[]).await? {
            let sink = r.text(0)?;
            execute(&tx, ENABLE_SINK, &[&sink]).await?;
            if configured.contains(&sink) {
                w.audit.push(enabled_record(&sink, "config"));
                settled.enabled += 1;
                w.wake = true;
            }
        }
        self.commit(tx, w).await?;
        Ok(settled)
    }
}

/// The task that hears other replicas' work; it ends with its store.
struct Listener(tokio::task::JoinHandle<()>);

impl Drop for Listener {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Listener {
    /// Returns once listening, so nothing committed after `open` goes unheard.
    async fn start(
        pg: tokio_postgres::Config,
        tls: MakeRustlsConnect,
        notice: String,
        signal: Arc<Notify>,
    ) -> Result<Listener, StoreError> {
        let (ready, listening) = oneshot::channel();
        let task = tokio::spawn(listen(pg, tls, notice, signal, ready));
        match listening.await {
            Ok(Ok(())) => Ok(Listener(task)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StoreError::Unavailable(
                "the listening connection stopped".into(),
            )),
        }
    }
}

/// Keeps one connection listening on [`CHANNEL`], reconnecting with backoff when it
/// drops; workers fall back to polling meanwhile.
async fn listen(
    pg: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    notice: String,
    signal: Arc<Notify>,
    ready: oneshot::Sender<Result<(), StoreError>>,
) {
    let mut ready = Some(ready);
    let mut backoff = LISTEN_RETRY_MIN;
    let mut down = false;
    loop {
        let result = session(&pg, &tls, &notice, &signal, || {
            backoff = LISTEN_RETRY_MIN;
            if let Some(ready) = ready.take() {
                let _ = ready.send(Ok(()));
            } else if down {
                tracing::info!("listening for other replicas' work again");
                down = false;
                // Whatever was queued meanwhile went unheard.
                signal.notify_waiters();
            }
        })
        .await;
        if let Some(ready) = ready.take() {
            let error = match result {
                Err(e) => unavailable(e),
                Ok(()) => StoreError::Unavailable("the listening connection closed".into()),
            };
            let _ = ready.send(Err(error));
            return;
        }
        if !down {
            let reason = result.err().map_or("closed".to_string(), |e| e.to_string());
            tracing::warn!(error = %reason,
                "lost the connection that listens for other replicas' work; polling until it is back");
            down = true;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(LISTEN_RETRY_MAX);
    }
}

/// One listening connection, until it ends.
async fn session(
    pg: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
    notice: &str,
    signal: &Notify,
    mut on_listening: impl FnMut(),
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = pg.connect(tls.clone()).await?;
    // The connection delivers notifications only while it is polled, and it must be
    // polled for the LISTEN itself to complete.
    let mut messages = pin!(futures_util::stream::poll_fn(move |cx| {
        connection.poll_message(cx)
    }));
    let sql = format!("LISTEN {CHANNEL}");
    let mut listening = pin!(client.batch_execute(&sql));
    loop {
        tokio::select! {
            done = &mut listening => {
                done?;
                break;
            }
            message = messages.next() => match message {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
        }
    }
    on_listening();
    let schema = notice.rsplit_once(' ').map_or(notice, |(s, _)| s);
    while let Some(message) = messages.next().await {
        if let AsyncMessage::Notification(n) = message? {
            // Its own commits already woke this instance's workers.
            let from_schema = n.payload().rsplit_once(' ').map(|(s, _)| s);
            if n.payload() != notice && from_schema == Some(schema) {
                signal.notify_waiters();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::rows::old_trail;
    use super::*;

    /// Where the tests find PostgreSQL unless `GANTRY_TEST_PG` says otherwise.
    const DEFAULT_PG: &str = "postgres://postgres@127.0.0.1:5432/test";

    /// A trail written at migration 1 (v1 records: PostgreSQL began with the chain
    /// columns), then opened by this gantry (migrated) and appended to: it verifies
    /// whole, and an edit of an old record is still found.
    #[tokio::test]
    async fn an_audit_trail_written_before_the_upgrade_still_verifies() {
        let base = std::env::var("GANTRY_TEST_PG").unwrap_or_else(|_| DEFAULT_PG.to_string());
        let Ok((client, connection)) = tokio_postgres::connect(&base, tokio_postgres::NoTls).await
        else {
            eprintln!("\n!!!!!!!!\nSKIPPED: PostgreSQL not reachable at {base}\n!!!!!!!!\n");
            return;
        };
        tokio::spawn(connection);
        let schema = format!(
            "gantry_u_{}",
            ulid::Ulid::generate().to_string().to_lowercase()
        );
        // The database as gantry left it at migration 1, with a trail of v1 records.
        client
            .batch_execute(&format!(
                "CREATE SCHEMA {schema}; SET search_path = {schema}; {}
                 CREATE TABLE schema_version (version BIGINT NOT NULL);
                 INSERT INTO schema_version (version) VALUES (1);",
                MIGRATIONS[0]
            ))
            .await
            .unwrap();
        let old = old_trail::chained((0, GENESIS), 6, true);
        let sql = format!(
            "INSERT INTO audit ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            old_trail::V1_COLUMNS
        );
        for r in &old {
            client
                .execute(
                    &sql,
                    &[
                        &r.seq,
                        &r.at,
                        &r.kind,
                        &r.actor,
                        &r.job_id,
                        &r.upstream_status,
                        &r.message,
                        &r.prev_hash,
                        &r.hash,
                        &r.parent_job_id,
                        &r.chain_depth,
                    ],
                )
                .await
                .unwrap();
        }
        let last = old.last().unwrap();
        client
            .execute(
                "INSERT INTO audit_head (seq, hash) VALUES ($1, $2)",
                &[&last.seq, &last.hash],
            )
            .await
            .unwrap();

        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-csearch_path%3D{schema}");
        let store = PostgresStore::open(&PostgresUrl::parse(&url).unwrap())
            .await
            .unwrap();
        for i in 0..3 {
            let entry = AuditEntry::rejections("ci", &format!("new record {i}"), 1);
            store.append_audit(entry).await.unwrap();
        }
        let verdict = store.verify_audit().await.unwrap();
        let edited = async {
            client
                .batch_execute("UPDATE audit SET message = 'nothing' WHERE seq = 2")
                .await
                .unwrap();
            store.verify_audit().await.unwrap()
        }
        .await;
        drop(store);
        client
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await
            .unwrap();
        assert!(verdict.ok, "{verdict:?}");
        assert_eq!((verdict.records, verdict.head_seq), (9, Some(9)));
        assert_eq!(edited.first_broken, Some(2), "{edited:?}");
    }
}
