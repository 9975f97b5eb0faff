//! How events and their jobs are written on PostgreSQL: the claim of each delivery,
//! the promotion each echoes, their gates, and the rows themselves. Each step but the
//! gates (which come one event per call) is one statement for any number of events,
//! so the ingests a group commit gathers cost a fixed number of statements, not a few
//! each (SPEC §14, BENCHMARKS.md).

use std::borrow::Cow;
use std::collections::HashSet;

use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;

use super::{Columns, Writes, execute, load_job, query, query_opt, unavailable};
use crate::audit::AuditEntry;
use crate::domain::gate::Evidence;
use crate::domain::{Event, JobState, Millis, NewJob};
use crate::store::rows::{
    EVENT_COLUMNS, EchoProbe, GateLanding, JobInsert, Opened, SEEN_COLUMNS, claims_text, millis,
    narrow, payload_text, read_seen,
};
use crate::store::{ChainLink, IngestOutcome, IngestPolicy, JobRef, NewEvent, StoreError};

/// One event to ingest and the policy of the request it came with.
pub(super) type Item<'a> = (&'a NewEvent, IngestPolicy);

/// Stores each event of `items` with its jobs, unless its delivery was seen within
/// its window; their outcomes in `items`' order. What one item writes is not seen by
/// the others of the same call: items that depend on each other (a gate, one
/// delivery twice) must come one call each.
pub(super) async fn ingest(
    tx: &Transaction<'_>,
    items: &[Item<'_>],
    w: &mut Writes,
) -> Result<Vec<IngestOutcome>, StoreError> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    // The probes go out with the claims; a duplicate's are not used.
    let (claimed, links) = tokio::try_join!(claim(tx, items), promotions_of(tx, items))?;
    let mut outcomes: Vec<Option<IngestOutcome>> = vec![None; items.len()];
    let mut stored: Vec<(usize, Cow<'_, NewEvent>)> = Vec::with_capacity(items.len());
    for (i, ((new, policy), link)) in items.iter().zip(links).enumerate() {
        if claimed.contains(new.event.id.as_str()) {
            stored.push((i, new.joined(link, policy.max_chain_depth)));
        } else {
            outcomes[i] = Some(duplicate(tx, &new.event, w).await?);
        }
    }
    // Gates: the group holds the locks on every rule and key involved
    // (`group::run_together`), so what is read here about them is not changing
    // underneath.
    let mut opened = Vec::with_capacity(stored.len());
    for (_, new) in &stored {
        opened.push(open_gates(tx, new, w).await?);
    }
    let planned: Vec<Vec<JobInsert<'_>>> = stored
        .iter()
        .zip(&opened)
        .map(|((_, new), gated)| {
            gated
                .iter()
                .map(|(job, o)| JobInsert::of(job, new.event.received_at, o.as_ref()))
                .collect()
        })
        .collect();
    let mut events = EventRows::default();
    let mut jobs = JobRows::default();
    for (((_, new), gated), plans) in stored.iter().zip(&opened).zip(&planned) {
        events.push(&new.event);
        for ((job, _), plan) in gated.iter().zip(plans) {
            jobs.push(&new.event, job, plan);
        }
    }
    let inserted = insert(tx, &events, &jobs).await?;
    for (((i, new), gated), plans) in stored.iter().zip(&opened).zip(&planned) {
        outcomes[*i] =
            Some(recorded(tx, &new.event, &new.notes, gated, plans, &inserted, w).await?);
    }
    outcomes
        .into_iter()
        .map(|o| o.ok_or_else(|| StoreError::Corrupt("an ingest was left unanswered".into())))
        .collect()
}

/// Claims each item's delivery, or takes it over when the one seen is older than the
/// item's window: the ids of the events whose delivery was claimed. Claimed in
/// (source, delivery) order, so two groups claiming the same deliveries take their
/// index entries in one order and never wait on each other.
async fn claim(tx: &Transaction<'_>, items: &[Item<'_>]) -> Result<HashSet<String>, StoreError> {
    let mut order: Vec<&Item<'_>> = items.iter().collect();
    order.sort_by(|(a, _), (b, _)| {
        (&a.event.source, &a.event.delivery_id).cmp(&(&b.event.source, &b.event.delivery_id))
    });
    let sources: Vec<&str> = order.iter().map(|(n, _)| n.event.source.as_str()).collect();
    let deliveries: Vec<&str> = order
        .iter()
        .map(|(n, _)| n.event.delivery_id.as_str())
        .collect();
    let ids: Vec<&str> = order.iter().map(|(n, _)| n.event.id.as_str()).collect();
    let at: Vec<Millis> = order.iter().map(|(n, _)| n.event.received_at).collect();
    let windows: Vec<Millis> = order.iter().map(|(_, p)| millis(p.dedupe_window)).collect();
    let rows = query(
        tx,
        "WITH c AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[],
                $5::bigint[]) AS c(source, delivery_id, event_id, received_at, window_ms))
         INSERT INTO deliveries (source, delivery_id, event_id, received_at)
         SELECT source, delivery_id, event_id, received_at FROM c
         ON CONFLICT (source, delivery_id) DO UPDATE
         SET event_id = EXCLUDED.event_id, received_at = EXCLUDED.received_at
         WHERE deliveries.received_at < EXCLUDED.received_at
            - (SELECT window_ms FROM c WHERE c.event_id = EXCLUDED.event_id)
         RETURNING event_id",
        &[&sources, &deliveries, &ids, &at, &windows],
    )
    .await?;
    rows.iter().map(|r| r.text(0)).collect()
}

/// For each item, the most recent job whose promotion produced what the item names
/// (the promotion it echoes), if any.
async fn promotions_of(
    tx: &Transaction<'_>,
    items: &[Item<'_>],
) -> Result<Vec<Option<ChainLink>>, StoreError> {
    let mut links = vec![None; items.len()];
    let probes: Vec<(usize, EchoProbe<'_>)> = items
        .iter()
        .enumerate()
        .filter_map(|(i, (n, p))| Some((i, EchoProbe::of(&n.event, p.dedupe_window)?)))
        .collect();
    if probes.is_empty() {
        return Ok(links);
    }
    let at: Vec<i64> = (0..).take(probes.len()).collect();
    let keys: Vec<&str> = probes.iter().map(|(_, p)| p.key.as_str()).collect();
    let since: Vec<Millis> = probes.iter().map(|(_, p)| p.since).collect();
    let digests: Vec<Option<&str>> = probes.iter().map(|(_, p)| p.digest).collect();
    let rows = query(
        tx,
        "SELECT p.at, j.id, j.chain_depth
         FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[]) AS p(at, key, since, digest)
         CROSS JOIN LATERAL (
            SELECT id, chain_depth FROM jobs
            WHERE target_ref = p.key AND created_at >= p.since
              AND state NOT IN ('failed', 'cancelled')
              AND (p.digest IS NULL OR target_digest IS NULL OR target_digest = p.digest)
            ORDER BY created_at DESC LIMIT 1) j",
        &[&at, &keys, &since, &digests],
    )
    .await?;
    for r in &rows {
        let probe = usize::try_from(r.int(0)?).ok();
        let Some(&(i, _)) = probe.and_then(|p| probes.get(p)) else {
            return Err(StoreError::Corrupt(
                "an echo probe came back unasked".into(),
            ));
        };
        links[i] = Some(ChainLink {
            job_id: r.text(1)?,
            chain_depth: narrow("job chain depth", r.int(2)?)?,
        });
    }
    Ok(links)
}

/// Files the evidence `new` carries and opens the gates of its jobs: each job with
/// its gate as opened, without those that are a second trigger of a job already
/// waiting (recorded as such).
async fn open_gates<'n>(
    tx: &Transaction<'_>,
    new: &'n NewEvent,
    w: &mut Writes,
) -> Result<Vec<(&'n NewJob, Option<Opened>)>, StoreError> {
    let ev = &new.event;
    for evidence in &new.evidence {
        arrive_on(tx, ev, evidence, w).await?;
    }
    let mut gated = Vec::with_capacity(new.jobs.len());
    for job in &new.jobs {
        let Some(start) = &job.gate else {
            gated.push((job, None));
            continue;
        };
        if let Some(existing) = waiting_on(tx, &job.rule, &start.key).await? {
            w.audit.push(AuditEntry::duplicate_wait(ev, job, &existing));
            continue;
        }
        let since = start.evidence_since();
        let sql = format!(
            "SELECT {SEEN_COLUMNS} FROM evidence
             WHERE rule = $1 AND gate_key = $2 AND received_at >= $3 ORDER BY received_at"
        );
        let seen = query(tx, &sql, &[&job.rule, &start.key, &since])
            .await?
            .iter()
            .map(read_seen)
            .collect::<Result<Vec<_>, _>>()?;
        gated.push((job, Some(Opened::of(start, &seen))));
    }
    Ok(gated)
}

/// Events, column by column, for one multi-row insert.
#[derive(Default)]
struct EventRows<'a> {
    id: Vec<&'a str>,
    source: Vec<&'a str>,
    kind: Vec<&'a str>,
    delivery_id: Vec<&'a str>,
    received_at: Vec<Millis>,
    repo: Vec<Option<&'a str>>,
    image: Vec<Option<&'a str>>,
    tag: Vec<Option<&'a str>>,
    digest: Vec<Option<&'a str>>,
    path: Vec<Option<&'a str>>,
    build_name: Vec<Option<&'a str>>,
    build_number: Vec<Option<&'a str>>,
    payload: Vec<String>,
    parent_job_id: Vec<Option<&'a str>>,
    chain_depth: Vec<i64>,
    claims: Vec<Option<String>>,
}

impl<'a> EventRows<'a> {
    fn push(&mut self, ev: &'a Event) {
        let s = &ev.subject;
        self.id.push(&ev.id);
        self.source.push(&ev.source);
        self.kind.push(&ev.kind);
        self.delivery_id.push(&ev.delivery_id);
        self.received_at.push(ev.received_at);
        self.repo.push(s.repo.as_deref());
        self.image.push(s.image.as_deref());
        self.tag.push(s.tag.as_deref());
        self.digest.push(s.digest.as_deref());
        self.path.push(s.path.as_deref());
        self.build_name.push(s.build_name.as_deref());
        self.build_number.push(s.build_number.as_deref());
        self.payload.push(payload_text(ev));
        self.parent_job_id.push(ev.parent_job_id.as_deref());
        self.chain_depth.push(i64::from(ev.chain_depth));
        self.claims.push(claims_text(ev));
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 16] {
        [
            &self.id,
            &self.source,
            &self.kind,
            &self.delivery_id,
            &self.received_at,
            &self.repo,
            &self.image,
            &self.tag,
            &self.digest,
            &self.path,
            &self.build_name,
            &self.build_number,
            &self.payload,
            &self.parent_job_id,
            &self.chain_depth,
            &self.claims,
        ]
    }
}

/// Jobs, column by column, for one multi-row insert.
#[derive(Default)]
struct JobRows<'a> {
    id: Vec<&'a str>,
    event_id: Vec<&'a str>,
    rule: Vec<&'a str>,
    target: Vec<&'a str>,
    action: Vec<Option<&'a str>>,
    state: Vec<&'static str>,
    due: Vec<Millis>,
    code: Vec<Option<&'static str>>,
    message: Vec<Option<&'a str>>,
    parent_job_id: Vec<Option<&'a str>>,
    chain_depth: Vec<i64>,
    created_at: Vec<Millis>,
    target_ref: Vec<Option<&'a str>>,
    target_digest: Vec<Option<&'a str>>,
    approval: Vec<Option<&'a str>>,
    approval_expires_at: Vec<Option<Millis>>,
    initiator: Vec<Option<&'a str>>,
    gate: Vec<Option<&'a str>>,
    gate_key: Vec<Option<&'a str>>,
    gate_expires_at: Vec<Option<Millis>>,
    soak_until: Vec<Option<Millis>>,
    trace_parent: Vec<Option<&'a str>>,
}

impl<'a> JobRows<'a> {
    fn push(&mut self, ev: &'a Event, job: &'a NewJob, plan: &'a JobInsert<'a>) {
        self.id.push(&job.id);
        self.event_id.push(&ev.id);
        self.rule.push(&job.rule);
        self.target.push(&job.target);
        self.action.push(plan.action.as_deref());
        self.state.push(plan.state.as_str());
        self.due.push(plan.next_attempt_at);
        self.code.push(plan.error_code);
        self.message.push(plan.error_message.as_deref());
        self.parent_job_id.push(ev.parent_job_id.as_deref());
        self.chain_depth.push(i64::from(ev.chain_depth));
        self.created_at.push(ev.received_at);
        self.target_ref.push(plan.target_ref.as_deref());
        self.target_digest.push(plan.target_digest.as_deref());
        self.approval.push(plan.approval.as_deref());
        self.approval_expires_at.push(plan.approval_expires_at);
        self.initiator.push(job.initiator.as_deref());
        self.gate.push(plan.gate.as_deref());
        self.gate_key.push(plan.gate_key);
        self.gate_expires_at.push(plan.gate_expires_at);
        self.soak_until.push(job.soak_until);
        self.trace_parent.push(job.trace_parent.as_deref());
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 22] {
        [
            &self.id,
            &self.event_id,
            &self.rule,
            &self.target,
            &self.action,
            &self.state,
            &self.due,
            &self.code,
            &self.message,
            &self.parent_job_id,
            &self.chain_depth,
            &self.created_at,
            &self.target_ref,
            &self.target_digest,
            &self.approval,
            &self.approval_expires_at,
            &self.initiator,
            &self.gate,
            &self.gate_key,
            &self.gate_expires_at,
            &self.soak_until,
            &self.trace_parent,
        ]
    }
}

/// Inserts the events, then their jobs, in one round trip: the ids of the jobs
/// inserted. A rule acts once per parent promotion: a second job for the same parent
/// is skipped by the unique index, even when another replica inserted the first.
async fn insert(
    tx: &Transaction<'_>,
    events: &EventRows<'_>,
    jobs: &JobRows<'_>,
) -> Result<HashSet<String>, StoreError> {
    if events.id.is_empty() {
        return Ok(HashSet::new());
    }
    let insert_events = format!(
        "INSERT INTO events ({EVENT_COLUMNS})
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[],
            $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
            $12::text[], $13::text[], $14::text[], $15::bigint[], $16::text[])"
    );
    let insert_jobs = "INSERT INTO jobs (id, event_id, rule, target, action, state,
            next_attempt_at, last_error_code, last_error_message, parent_job_id, chain_depth,
            created_at, updated_at, target_ref, target_digest, approval, approval_expires_at,
            initiator, gate, gate_key, gate_expires_at, soak_until, trace_parent)
         SELECT id, event_id, rule, target, action, state, due, code, message, parent,
            depth, created, created, target_ref, target_digest, approval, deadline,
            initiator, gate, gate_key, gate_deadline, soak, trace
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::bigint[], $8::text[], $9::text[], $10::text[], $11::bigint[], $12::bigint[],
            $13::text[], $14::text[], $15::text[], $16::bigint[], $17::text[], $18::text[],
            $19::text[], $20::bigint[], $21::bigint[], $22::text[])
            AS j(id, event_id, rule, target, action, state, due, code, message, parent,
                depth, created, target_ref, target_digest, approval, deadline, initiator,
                gate, gate_key, gate_deadline, soak, trace)
         ON CONFLICT (rule, parent_job_id) WHERE parent_job_id IS NOT NULL DO NOTHING
         RETURNING id";
    // Both prepared first, so that the two inserts go out in order in one round trip.
    let (events_stmt, jobs_stmt) = tokio::try_join!(
        tx.prepare_cached(&insert_events),
        tx.prepare_cached(insert_jobs)
    )
    .map_err(unavailable)?;
    let (event_params, job_params) = (events.params(), jobs.params());
    let jobs = async {
        if jobs.id.is_empty() {
            Ok(Vec::new())
        } else {
            tx.query(&jobs_stmt, &job_params).await
        }
    };
    let (_, inserted) =
        tokio::try_join!(tx.execute(&events_stmt, &event_params), jobs).map_err(unavailable)?;
    inserted.iter().map(|r| r.text(0)).collect()
}

/// The records of a stored event and its jobs, and what the ingest answers for it.
async fn recorded(
    tx: &Transaction<'_>,
    ev: &Event,
    notes: &[AuditEntry],
    gated: &[(&NewJob, Option<Opened>)],
    planned: &[JobInsert<'_>],
    inserted: &HashSet<String>,
    w: &mut Writes,
) -> Result<IngestOutcome, StoreError> {
    w.audit.push(AuditEntry::received(ev));
    w.audit.extend(notes.iter().cloned());
    let mut refs = Vec::with_capacity(gated.len());
    for ((job, opened), plan) in gated.iter().zip(planned) {
        if !inserted.contains(&job.id) {
            let existing = query_opt(
                tx,
                "SELECT id FROM jobs WHERE rule = $1 AND parent_job_id = $2",
                &[&job.rule, &ev.parent_job_id],
            )
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("job {} was not stored", job.id)))?;
            w.audit
                .push(AuditEntry::duplicate_job(ev, job, &existing.text(0)?));
            continue;
        }
        let opening = opened.as_ref().map(|o| &o.opening);
        w.audit.push(AuditEntry::job_created(ev, job, opening));
        // Negative evidence marks nothing met, so a blocked job has none of these.
        if let Some(o) = opened {
            w.audit.extend(AuditEntry::met_at_start(ev, job, &o.gate));
        }
        w.wake |= plan.state == JobState::Queued;
        refs.push(JobRef {
            id: job.id.clone(),
            rule: job.rule.clone(),
        });
    }
    Ok(IngestOutcome {
        event_id: ev.id.clone(),
        jobs: refs,
        duplicate: false,
    })
}

/// The job of `rule` waiting on the artifact `key` names, if there is one (at most
/// one is: a second trigger is a duplicate).
async fn waiting_on(
    tx: &Transaction<'_>,
    rule: &str,
    key: &str,
) -> Result<Option<String>, StoreError> {
    let sql = "SELECT id FROM jobs WHERE rule = $1 AND gate_key = $2 AND state = 'waiting' LIMIT 1";
    query_opt(tx, sql, &[&rule, &key])
        .await?
        .map(|r| r.text(0))
        .transpose()
}

/// Keeps `evidence` carried by `ev`, and applies it to the job waiting on it, if any.
async fn arrive_on(
    tx: &Transaction<'_>,
    ev: &Event,
    evidence: &Evidence,
    w: &mut Writes,
) -> Result<(), StoreError> {
    execute(
        tx,
        "INSERT INTO evidence (rule, gate_key, condition, event_id, block, received_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &evidence.rule,
            &evidence.key,
            &evidence.condition,
            &ev.id,
            &i64::from(evidence.block),
            &ev.received_at,
            &ev.received_at.saturating_add(evidence.within_ms),
        ],
    )
    .await?;
    let Some(id) = waiting_on(tx, &evidence.rule, &evidence.key).await? else {
        return Ok(());
    };
    // Locked: an operator's cancel or the expiry pass at another replica waits for
    // this move, or this one sees theirs (and the job no longer waiting).
    let Some(job) = load_job(tx, &id, true).await? else {
        return Ok(());
    };
    let Some(landing) = GateLanding::arrival(&job, evidence, ev)? else {
        return Ok(());
    };
    let error = landing.error.as_ref();
    execute(
        tx,
        "UPDATE jobs SET state = $2, gate = $3,
            approval_expires_at = COALESCE($4, approval_expires_at),
            last_error_code = COALESCE($5, last_error_code),
            last_error_message = COALESCE($6, last_error_message),
            next_attempt_at = GREATEST($7, COALESCE(soak_until, 0)), updated_at = $7
         WHERE id = $1",
        &[
            &id,
            &landing.state.as_str(),
            &landing.gate,
            &landing.approval_expires_at,
            &error.map(|e| e.code.as_str()),
            &error.map(|e| e.message.as_str()),
            &ev.received_at,
        ],
    )
    .await?;
    w.audit.extend(landing.audit);
    w.wake |= landing.state == JobState::Queued;
    Ok(())
}

/// The answer for a delivery already stored within the window: its first event.
async fn duplicate(
    tx: &Transaction<'_>,
    ev: &Event,
    w: &mut Writes,
) -> Result<IngestOutcome, StoreError> {
    let rows = query(
        tx,
        "SELECT d.event_id, j.id, j.rule FROM deliveries d
         LEFT JOIN jobs j ON j.event_id = d.event_id
         WHERE d.source = $1 AND d.delivery_id = $2 ORDER BY j.id",
        &[&ev.source, &ev.delivery_id],
    )
    .await?;
    let Some(first) = rows.first() else {
        return Err(StoreError::Unavailable(
            "the delivery was removed while being deduplicated; send it again".into(),
        ));
    };
    let original = first.text(0)?;
    let mut jobs = Vec::new();
    for r in &rows {
        if let Some(id) = r.text_opt(1)? {
            jobs.push(JobRef {
                id,
                rule: r.text(2)?,
            });
        }
    }
    w.audit.push(AuditEntry::duplicate(ev, &original));
    Ok(IngestOutcome {
        event_id: original,
        jobs,
        duplicate: true,
    })
}
