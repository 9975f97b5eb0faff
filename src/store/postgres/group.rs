//! Group commit on PostgreSQL (SPEC §14): the ingests and the workers' attempt
//! reports one store instance receives at the same time share a transaction, so a
//! burst of webhooks or of finished promotions costs one commit (one WAL flush) and
//! takes the audit chain's head once, instead of once each while the others queue
//! behind its lock.
//!
//! Two lanes, each with a connection of its own, take turns: a lane collects whatever
//! writes are waiting into a group and keeps the turn while it writes the group's
//! rows and takes the chain's head; it hands the turn on once it holds the head, so
//! the next lane collects everything that arrived meanwhile and writes it while the
//! first commits. Handing the turn on earlier made groups of one or two, queued at
//! the chain head behind each other and behind other replicas (BENCHMARKS.md). Gate locks are taken for the whole group at its start, in one order, as
//! a single ingest's were. A group that touches no gate (and no two of whose events
//! are one delivery) is written one statement per step for all of it. A write that
//! fails rolls its group back, and the group's writes run again one by one, so each
//! answers for itself alone: the SQLite
//! writer's rule, without a savepoint per ingest (each would be a subtransaction,
//! and more than 64 of them in one transaction slow every other session's snapshots).

use std::collections::HashSet;
use std::sync::Arc;

use deadpool_postgres::{Client, Pool, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard, mpsc, oneshot};

use super::attempts::record;
use super::ingest::{Item, ingest};
use super::{Committing, Writes, execute, gate_locks, pool_error, unavailable};
use crate::store::rows::EMITTED;
use crate::store::{AttemptReport, IngestOutcome, IngestPolicy, NewEvent, StoreError, Transition};

/// Lanes of one store instance: each holds a connection while it runs a group. Two
/// measured best on 2 cores (bench/pg.sh, BENCHMARKS.md): one lane leaves the
/// database idle while it commits; more make smaller groups, more commits, and more
/// turns at the chain's head between replicas.
const LANES: usize = 2;
/// Most writes in one group.
const MAX_GROUP: usize = 256;
/// Writes waiting for a lane, at most; more wait to be queued.
const QUEUE: usize = 4096;

/// A write a group commits.
enum Work {
    /// A request's events, with its policy.
    Ingest(Vec<NewEvent>, IngestPolicy),
    /// A worker's report of an attempt, written only while its lease holds.
    Attempt(Box<AttemptReport>),
}

/// What a write came to.
enum Done {
    Ingested(Vec<IngestOutcome>),
    /// Whether the lease still held (else nothing was written).
    Recorded(bool),
}

/// One write, waiting for its group's commit.
struct Pending {
    work: Work,
    answer: oneshot::Sender<Answer>,
}

type Answer = Result<Done, StoreError>;

/// The queue of writes and the lanes that commit them.
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
    pub(super) async fn ingest(
        &self,
        batch: Vec<NewEvent>,
        policy: IngestPolicy,
    ) -> Result<Vec<IngestOutcome>, StoreError> {
        match self.submit(Work::Ingest(batch, policy)).await? {
            Done::Ingested(outcomes) => Ok(outcomes),
            Done::Recorded(_) => Err(mismatched()),
        }
    }

    /// Records an attempt in the next group: whether its lease still held.
    pub(super) async fn record(&self, report: AttemptReport) -> Result<bool, StoreError> {
        match self.submit(Work::Attempt(Box::new(report))).await? {
            Done::Recorded(held) => Ok(held),
            Done::Ingested(_) => Err(mismatched()),
        }
    }

    async fn submit(&self, work: Work) -> Answer {
        let (answer, answered) = oneshot::channel();
        let stopped = || StoreError::Unavailable("the store is shutting down".into());
        let pending = Pending { work, answer };
        self.queue.send(pending).await.map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

fn mismatched() -> StoreError {
    StoreError::Corrupt("a group answered a write with another's outcome".into())
}

/// The turn to collect and write a group: the lock on the queue of waiting writes.
type Turn = Option<OwnedMutexGuard<mpsc::Receiver<Pending>>>;

/// Takes the next group when it is this lane's turn (the lock on `waiting` is the
/// turn), and runs it.
async fn lane(
    pool: Pool,
    committing: Arc<Committing>,
    waiting: Arc<Mutex<mpsc::Receiver<Pending>>>,
) {
    // The lane keeps its connection from group to group (checking one out of the
    // pool costs a verifying round trip); one that failed is given up.
    let mut conn = Connection {
        pool: &pool,
        held: None,
    };
    loop {
        let mut turn = waiting.clone().lock_owned().await;
        let Some(first) = turn.recv().await else {
            return;
        };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match turn.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        run(&mut conn, &committing, group, &mut Some(turn)).await;
    }
}

/// Why a group was rolled back.
enum Unwound {
    /// One of its writes failed: each is run again alone.
    Write(StoreError),
    /// The transaction itself (connection, locks, commit) failed.
    Tx(StoreError),
    /// The transaction could not begin: nothing was sent.
    Begin(StoreError),
}

/// A lane's connection: the one it holds, else a new one from the pool.
struct Connection<'a> {
    pool: &'a Pool,
    held: Option<Client>,
}

impl Connection<'_> {
    /// The held connection, unless the server closed it meanwhile (a restart, a
    /// failover): then a new one, as the pool's own check would give.
    async fn get(&mut self) -> Result<&mut Client, StoreError> {
        if self.held.as_ref().is_none_or(|c| c.is_closed()) {
            self.held = Some(self.pool.get().await.map_err(pool_error)?);
        }
        self.held
            .as_mut()
            .ok_or_else(|| StoreError::Unavailable("no connection".into()))
    }

    /// Gives the connection up when its transaction failed or the server closed it.
    fn settle(&mut self, failed: bool) {
        if failed || self.held.as_ref().is_some_and(|c| c.is_closed()) {
            self.held = None;
        }
    }
}

async fn run(
    conn: &mut Connection<'_>,
    committing: &Committing,
    group: Vec<Pending>,
    turn: &mut Turn,
) {
    let works: Vec<&Work> = group.iter().map(|p| &p.work).collect();
    let answers: Vec<Answer> = match together(conn, committing, &works, turn).await {
        Ok(done) => {
            tracing::debug!(writes = group.len(), "group committed");
            done.into_iter().map(Ok).collect()
        }
        Err(Unwound::Write(e)) if group.len() == 1 => vec![Err(e)],
        Err(Unwound::Write(e)) => {
            tracing::warn!(writes = group.len(), error = %e, "a write failed its group; each runs again alone");
            let mut answers = Vec::with_capacity(group.len());
            for one in &works {
                answers.push(
                    match together(conn, committing, std::slice::from_ref(one), turn).await {
                        Ok(mut done) => done.pop().ok_or_else(mismatched),
                        Err(Unwound::Write(e) | Unwound::Tx(e) | Unwound::Begin(e)) => Err(e),
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

/// Runs `works` in one transaction and commits it, handing `turn` on as it
/// commits: what each came to, or why it was rolled back.
async fn together(
    conn: &mut Connection<'_>,
    committing: &Committing,
    works: &[&Work],
    turn: &mut Turn,
) -> Result<Vec<Done>, Unwound> {
    let mut result = run_together(conn, committing, works, turn).await;
    if let Err(Unwound::Begin(_)) = &result {
        // Nothing was sent on a connection that could not even begin (the server
        // closed it before the lane noticed): once more on a new one.
        conn.settle(true);
        result = run_together(conn, committing, works, turn).await;
    }
    conn.settle(matches!(result, Err(Unwound::Tx(_) | Unwound::Begin(_))));
    result
}

async fn run_together(
    conn: &mut Connection<'_>,
    committing: &Committing,
    works: &[&Work],
    turn: &mut Turn,
) -> Result<Vec<Done>, Unwound> {
    let client = conn.get().await.map_err(Unwound::Tx)?;
    let tx = client
        .transaction()
        .await
        .map_err(|e| Unwound::Begin(unavailable(e)))?;
    let mut items: Vec<Item<'_>> = Vec::new();
    let mut reports: Vec<&AttemptReport> = Vec::new();
    for work in works {
        match work {
            Work::Ingest(batch, policy) => items.extend(batch.iter().map(|new| (new, *policy))),
            Work::Attempt(report) => reports.push(report),
        }
    }
    let emitted = reports.iter().filter_map(|r| r.emit.as_ref());
    // Every gate the group touches is decided by one replica at a time: its rule and
    // key are locked until the commit, always in the same order, so that two groups
    // never wait on each other's locks.
    let mut keys: Vec<i64> = items
        .iter()
        .map(|(new, _)| *new)
        .chain(emitted.clone())
        .flat_map(|new| gate_locks(std::slice::from_ref(new)))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    // All together only when no gate is involved, no two events of the group are
    // one delivery (a duplicate's answer reads its original's jobs, which must be
    // written first) and no job is reported twice.
    let mut deliveries = HashSet::new();
    let mut jobs = HashSet::new();
    let together = keys.is_empty()
        && items
            .iter()
            .map(|(new, _)| *new)
            .chain(emitted)
            .all(|n| deliveries.insert((&n.event.source, &n.event.delivery_id)))
        && reports.iter().all(|r| jobs.insert(&r.job_id));
    for key in keys {
        execute(&tx, "SELECT pg_advisory_xact_lock($1)", &[&key])
            .await
            .map_err(Unwound::Tx)?;
    }
    let mut w = Writes::default();
    let done = if together {
        all_at_once(&tx, works, items, &reports, &mut w).await
    } else {
        one_by_one(&tx, works, &mut w).await
    }
    .map_err(Unwound::Write)?;
    let wake = committing.seal(&tx, &w).await.map_err(Unwound::Tx)?;
    // This lane holds the chain's head now: the next one collects what arrived
    // meanwhile, and writes it while this commits.
    turn.take();
    committing.finish(tx, wake).await.map_err(Unwound::Tx)?;
    Ok(done)
}

/// The group's writes one statement per step for all of them: the attempts (each
/// written only while its lease holds), then the events, including those the held
/// attempts emit.
async fn all_at_once(
    tx: &Transaction<'_>,
    works: &[&Work],
    mut items: Vec<Item<'_>>,
    reports: &[&AttemptReport],
    w: &mut Writes,
) -> Result<Vec<Done>, StoreError> {
    let held = record(tx, reports).await?;
    let ingests = items.len();
    items.extend(
        reports
            .iter()
            .zip(&held)
            .filter(|(_, held)| **held)
            .filter_map(|(r, _)| Some((r.emit.as_ref()?, EMITTED))),
    );
    let mut stored = ingest(tx, &items, w).await?.into_iter().take(ingests);
    for (report, held) in reports.iter().zip(&held) {
        if *held {
            recorded(report, w);
        }
    }
    let mut held = held.into_iter();
    Ok(works
        .iter()
        .map(|work| match work {
            Work::Ingest(batch, _) => Done::Ingested(stored.by_ref().take(batch.len()).collect()),
            Work::Attempt(_) => Done::Recorded(held.next().unwrap_or(false)),
        })
        .collect())
}

/// The group's writes in order, each seeing what the ones before it wrote.
async fn one_by_one(
    tx: &Transaction<'_>,
    works: &[&Work],
    w: &mut Writes,
) -> Result<Vec<Done>, StoreError> {
    let mut done = Vec::with_capacity(works.len());
    for work in works {
        done.push(match work {
            Work::Ingest(batch, policy) => {
                let mut outcomes = Vec::with_capacity(batch.len());
                for new in batch {
                    outcomes.extend(ingest(tx, &[(new, *policy)], w).await?);
                }
                Done::Ingested(outcomes)
            }
            Work::Attempt(report) => {
                let held = record(tx, &[report])
                    .await?
                    .first()
                    .copied()
                    .unwrap_or(false);
                if held {
                    if let Some(emitted) = &report.emit {
                        ingest(tx, &[(emitted, EMITTED)], w).await?;
                    }
                    recorded(report, w);
                }
                Done::Recorded(held)
            }
        });
    }
    Ok(done)
}

/// What a held attempt adds to its commit: its records, and a wake-up when the job
/// is due again.
fn recorded(report: &AttemptReport, w: &mut Writes) {
    w.audit.extend(report.audit.iter().cloned());
    w.wake |= matches!(report.transition, Transition::Retry { .. });
}
