//! Group commit on PostgreSQL (SPEC §14): the ingests one store instance receives
//! at the same time share a transaction, so a burst of webhooks costs one commit
//! (one WAL flush) and takes the audit chain's head once, instead of once each while
//! the other requests queue behind its lock.
//!
//! A few lanes, each with a connection of its own, take turns collecting whatever
//! ingests are waiting into a group and running it: while one lane commits (holding
//! the chain head until its commit), the next is already writing its group's events
//! and jobs. Gate locks are taken for the whole group at its start, in one order, as
//! a single ingest's were. Ingests that touch no gate (and no two of which are one
//! delivery) are pipelined on the lane's connection. An ingest that fails rolls its group back, and the group's
//! ingests run again one by one, so each answers for itself alone: the SQLite
//! writer's rule, without a savepoint per ingest (each would be a subtransaction,
//! and more than 64 of them in one transaction slow every other session's snapshots).

use std::collections::HashSet;
use std::sync::Arc;

use deadpool_postgres::{Client, Pool};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::ingest::{Item, ingest};
use super::{Committing, Writes, execute, gate_locks, pool_error, unavailable};
use crate::store::{IngestOutcome, IngestPolicy, NewEvent, StoreError};

/// Lanes of one store instance: each holds a connection while it runs a group. Two
/// measured best on 2 cores (bench/pg.sh, BENCHMARKS.md): one lane leaves the
/// database idle while it commits; more make smaller groups, more commits, and more
/// turns at the chain's head between replicas.
const LANES: usize = 2;
/// Most ingests in one group.
const MAX_GROUP: usize = 256;
/// Ingests waiting for a lane, at most; more wait to be queued.
const QUEUE: usize = 4096;

/// One request's ingest, waiting for its group's commit.
struct Pending {
    batch: Vec<NewEvent>,
    policy: IngestPolicy,
    answer: oneshot::Sender<Result<Vec<IngestOutcome>, StoreError>>,
}

type Answer = Result<Vec<IngestOutcome>, StoreError>;

/// The queue of ingests and the lanes that commit them.
pub(super) struct Committer {
    queue: mpsc::Sender<Pending>,
}

impl Committer {
    /// Starts the lanes, on the current runtime; they end when the committer (the
    /// store) is dropped.
    pub(super) fn start(pool: Pool, committing: Arc<Committing>) -> Committer {
        let (queue, waiting) = mpsc::channel(QUEUE);
        let waiting = Arc::new(Mutex::new(waiting));
        for _ in 0..LANES {
            tokio::spawn(lane(pool.clone(), committing.clone(), waiting.clone()));
        }
        Committer { queue }
    }

    /// Ingests `batch` in the next group; its outcomes once the group committed.
    pub(super) async fn ingest(&self, batch: Vec<NewEvent>, policy: IngestPolicy) -> Answer {
        let (answer, answered) = oneshot::channel();
        let pending = Pending {
            batch,
            policy,
            answer,
        };
        let stopped = || StoreError::Unavailable("the store is shutting down".into());
        self.queue.send(pending).await.map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

/// Takes the next group when it is this lane's turn (the lock on `waiting` is the
/// turn), and runs it.
async fn lane(
    pool: Pool,
    committing: Arc<Committing>,
    waiting: Arc<Mutex<mpsc::Receiver<Pending>>>,
) {
    // The lane keeps its connection from group to group (checking one out of the
    // pool costs a verifying round trip); one that failed is given up.
    let mut held: Option<Client> = None;
    loop {
        let group = {
            let mut waiting = waiting.lock().await;
            let Some(first) = waiting.recv().await else {
                return;
            };
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match waiting.try_recv() {
                    Ok(p) => group.push(p),
                    Err(_) => break,
                }
            }
            group
        };
        run(&mut Connection::of(&pool, &mut held), &committing, group).await;
    }
}

/// Why a group was rolled back.
enum Unwound {
    /// One of its ingests failed: each is run again alone.
    Ingest(StoreError),
    /// The transaction itself (connection, locks, commit) failed.
    Tx(StoreError),
    /// The transaction could not begin: nothing was sent.
    Begin(StoreError),
}

/// A lane's connection: the one it holds, else a new one from the pool.
struct Connection<'a> {
    pool: &'a Pool,
    held: &'a mut Option<Client>,
}

impl<'a> Connection<'a> {
    fn of(pool: &'a Pool, held: &'a mut Option<Client>) -> Self {
        Connection { pool, held }
    }

    /// The held connection, unless the server closed it meanwhile (a restart, a
    /// failover): then a new one, as the pool's own check would give.
    async fn get(&mut self) -> Result<&mut Client, StoreError> {
        if self.held.as_ref().is_none_or(|c| c.is_closed()) {
            *self.held = Some(self.pool.get().await.map_err(pool_error)?);
        }
        self.held
            .as_mut()
            .ok_or_else(|| StoreError::Unavailable("no connection".into()))
    }

    /// Gives the connection up when its transaction failed or the server closed it.
    fn settle(&mut self, failed: bool) {
        if failed || self.held.as_ref().is_some_and(|c| c.is_closed()) {
            *self.held = None;
        }
    }
}

async fn run(conn: &mut Connection<'_>, committing: &Committing, group: Vec<Pending>) {
    let batches: Vec<(&[NewEvent], IngestPolicy)> = group
        .iter()
        .map(|p| (p.batch.as_slice(), p.policy))
        .collect();
    let answers: Vec<Answer> = match together(conn, committing, &batches).await {
        Ok(outcomes) => {
            tracing::debug!(ingests = group.len(), "group committed");
            outcomes.into_iter().map(Ok).collect()
        }
        Err(Unwound::Ingest(e)) if group.len() == 1 => vec![Err(e)],
        Err(Unwound::Ingest(e)) => {
            tracing::warn!(ingests = group.len(), error = %e, "an ingest failed its group; each runs again alone");
            let mut answers = Vec::with_capacity(group.len());
            for one in &batches {
                answers.push(
                    match together(conn, committing, std::slice::from_ref(one)).await {
                        Ok(mut outcomes) => Ok(outcomes.pop().unwrap_or_default()),
                        Err(Unwound::Ingest(e) | Unwound::Tx(e) | Unwound::Begin(e)) => Err(e),
                    },
                );
            }
            answers
        }
        Err(Unwound::Tx(e) | Unwound::Begin(e)) => group.iter().map(|_| Err(e.clone())).collect(),
    };
    for (pending, answer) in group.into_iter().zip(answers) {
        // A request that stopped waiting (its client went away) needs no answer.
        let _ = pending.answer.send(answer);
    }
}

/// Runs `batches` in one transaction and commits it: each batch's outcomes, or why
/// it was rolled back.
async fn together(
    conn: &mut Connection<'_>,
    committing: &Committing,
    batches: &[(&[NewEvent], IngestPolicy)],
) -> Result<Vec<Vec<IngestOutcome>>, Unwound> {
    let mut result = run_together(conn, committing, batches).await;
    if let Err(Unwound::Begin(_)) = &result {
        // Nothing was sent on a connection that could not even begin (the server
        // closed it before the lane noticed): once more on a new one.
        conn.settle(true);
        result = run_together(conn, committing, batches).await;
    }
    conn.settle(matches!(result, Err(Unwound::Tx(_) | Unwound::Begin(_))));
    result
}

async fn run_together(
    conn: &mut Connection<'_>,
    committing: &Committing,
    batches: &[(&[NewEvent], IngestPolicy)],
) -> Result<Vec<Vec<IngestOutcome>>, Unwound> {
    let client = conn.get().await.map_err(Unwound::Tx)?;
    let tx = client
        .transaction()
        .await
        .map_err(|e| Unwound::Begin(unavailable(e)))?;
    // Every gate the group touches is decided by one replica at a time: its rule and
    // key are locked until the commit, always in the same order, so that two groups
    // never wait on each other's locks.
    let mut keys: Vec<i64> = batches.iter().flat_map(|(b, _)| gate_locks(b)).collect();
    keys.sort_unstable();
    keys.dedup();
    // Side by side only when no gate is involved and no two events of the group are
    // one delivery: a duplicate's answer reads its original's jobs, which must be
    // written first.
    let mut deliveries = HashSet::new();
    let sequential = !keys.is_empty()
        || !batches
            .iter()
            .flat_map(|(batch, _)| batch.iter())
            .all(|n| deliveries.insert((&n.event.source, &n.event.delivery_id)));
    for key in keys {
        execute(&tx, "SELECT pg_advisory_xact_lock($1)", &[&key])
            .await
            .map_err(Unwound::Tx)?;
    }
    let mut w = Writes::default();
    let items: Vec<Item<'_>> = batches
        .iter()
        .flat_map(|(batch, policy)| batch.iter().map(move |new| (new, *policy)))
        .collect();
    let mut stored = Vec::with_capacity(items.len());
    if sequential {
        // One by one: each sees what the ones before it wrote.
        for item in &items {
            stored.extend(
                ingest(&tx, std::slice::from_ref(item), &mut w)
                    .await
                    .map_err(Unwound::Ingest)?,
            );
        }
    } else {
        // All together: one statement per step for the whole group.
        stored = ingest(&tx, &items, &mut w).await.map_err(Unwound::Ingest)?;
    }
    let mut stored = stored.into_iter();
    let outcomes = batches
        .iter()
        .map(|(batch, _)| stored.by_ref().take(batch.len()).collect())
        .collect();
    committing.commit(tx, w).await.map_err(Unwound::Tx)?;
    Ok(outcomes)
}
