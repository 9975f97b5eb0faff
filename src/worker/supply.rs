//! The supply chain around an attempt's effect (SPEC §15): just before a promotion,
//! its gate's signature conditions are checked on the signatures the source registry
//! holds for the exact digest (which the promotion is then pinned to); just after, the
//! evidence it carried goes on the record and, where a rule or protection asks, a
//! signed attestation of it is pushed beside the promoted digest.
//!
//! What counts is decided in `supply`; the target reads and writes the registry; this
//! stage puts the two together and says where the attempt goes.

use std::borrow::Cow;

use crate::audit::{AuditEntry, AuditKind};
use crate::domain::approval::Verdict;
use crate::domain::{Action, Job, JobErrorCode, Millis, Op, Outcome, now_millis, rfc3339};
use crate::live::Generation;
use crate::store::{AuditFilter, Store};
use crate::supply::{self, Envelope, IN_TOTO, Statement};
use crate::targets::{Effect, Fence, Handle, TargetError};

/// Signatures that did not count, recorded per check at most: a registry holding
/// hundreds fills no trail.
const MAX_INVALID_RECORDS: usize = 8;

/// Where the check before the effect sends the attempt.
pub enum Before<'a> {
    /// Go on with this action: pinned to the digest whose signatures were checked.
    Proceed(Cow<'a, Action>),
    /// No signature counts yet: look again at this time, no attempt spent.
    RecheckAt(Millis),
    /// The attempt ends here with this error.
    Fail(TargetError),
}

/// The promotion `action` of `job` pinned to the digest its source holds now, when
/// its gate has signature conditions (met, or the job waits) or it will be attested.
pub async fn before<'a>(
    store: &dyn Store,
    live: &Generation,
    handle: &Handle,
    job: &Job,
    action: &'a Action,
) -> Before<'a> {
    let Op::Promote { from, to, .. } = &action.op else {
        return Before::Proceed(Cow::Borrowed(action));
    };
    let conditions = live
        .rules
        .get(&job.rule)
        .map_or(&[][..], |r| r.signatures.as_slice());
    let attested = live.rules.attests(&job.rule, &job.target, Some(&to.repo));
    if conditions.is_empty() && (!attested || from.digest.is_some()) {
        return Before::Proceed(Cow::Borrowed(action));
    }
    let (digest, found) = match handle.target.signatures(from).await {
        Ok(read) => read,
        Err(e) => return Before::Fail(e),
    };
    let mut pinned = action.clone();
    if let Op::Promote { from, .. } = &mut pinned.op {
        from.digest = Some(digest.clone());
    }
    if conditions.is_empty() {
        return Before::Proceed(Cow::Owned(pinned));
    }
    let judgement = supply::judge(conditions, &found, &digest);
    record_invalid(store, job, &digest, &judgement.invalid).await;
    if judgement.all_met() {
        for (condition, layer, key) in &judgement.met {
            let message = format!(
                "condition {condition} met: the signature in layer {layer} is by key {} of the condition and names {digest}",
                key + 1
            );
            append(
                store,
                AuditEntry::supply(AuditKind::SignatureVerified, job, &digest, &message),
            )
            .await;
        }
        return Before::Proceed(Cow::Owned(pinned));
    }
    let deadline = job.gate.as_ref().map_or(job.created_at, |g| g.expires_at);
    let Some(next) = supply::next_check(job.created_at, deadline, now_millis()) else {
        let mut message = format!(
            "no signature of {digest} by a key of {} came within the gate's window",
            judgement.missing.join(", ")
        );
        if !found.is_empty() {
            message.push_str(&format!(
                "; {} signature(s) seen did not count (signature.invalid on the record)",
                judgement.invalid.len()
            ));
        }
        return Before::Fail(TargetError::permanent(
            JobErrorCode::SignatureInvalid,
            message,
        ));
    };
    tracing::info!(missing = ?judgement.missing, %digest, "no valid signature yet; checking again later");
    Before::RecheckAt(next)
}

/// Records the signatures that did not count, each layer once per job (a check
/// repeated every few minutes for a day would otherwise repeat them).
async fn record_invalid(
    store: &dyn Store,
    job: &Job,
    digest: &str,
    invalid: &[(String, supply::Rejected)],
) {
    if invalid.is_empty() {
        return;
    }
    let recorded = match job_records(store, job, Some(AuditKind::SignatureInvalid)).await {
        Ok(records) => records,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the signatures recorded invalid");
            return;
        }
    };
    let seen = |layer: &str| {
        recorded.iter().any(|r| {
            r.entry
                .message
                .as_deref()
                .is_some_and(|m| m.contains(layer))
        })
    };
    for (layer, why) in invalid
        .iter()
        .filter(|(layer, _)| !seen(layer))
        .take(MAX_INVALID_RECORDS)
    {
        let message = format!("the signature in layer {layer} does not count: {why}");
        tracing::warn!(%layer, %why, "signature does not count");
        append(
            store,
            AuditEntry::supply(AuditKind::SignatureInvalid, job, digest, &message),
        )
        .await;
    }
}

/// Every audit record of `job` (of `kind`, when given), oldest first.
async fn job_records(
    store: &dyn Store,
    job: &Job,
    kind: Option<AuditKind>,
) -> Result<Vec<crate::audit::AuditRecord>, crate::store::StoreError> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .audit(AuditFilter {
                job: Some(job.id.clone()),
                kind,
                after,
                limit: 500,
                ..AuditFilter::default()
            })
            .await?;
        after = page.items.last().map(|r| r.seq);
        all.extend(page.items);
        if page.next.is_none() {
            return Ok(all);
        }
    }
}

async fn append(store: &dyn Store, entry: AuditEntry) {
    if let Err(e) = store.append_audit(entry).await {
        tracing::error!(error = %e, "cannot write a supply-chain record");
    }
}

/// After a successful promotion: the evidence it carried on the record, then the
/// attestation its rule or protections ask for, signed and pushed beside the
/// promoted digest. A promotion made but not attested fails the attempt
/// (`attestation_failed`, retried): the next finds the promotion done and attests.
pub async fn after(
    store: &dyn Store,
    live: &Generation,
    handle: &Handle,
    fence: &dyn Fence,
    job: &Job,
    action: &Action,
    effect: Effect,
) -> Result<Effect, TargetError> {
    let Op::Promote {
        from,
        to,
        to_target,
        ..
    } = &action.op
    else {
        return Ok(effect);
    };
    let digest = from.digest.as_deref().unwrap_or_default();
    if !effect.evidence.is_empty() {
        let message = format!("carried {} to {to}", effect.evidence.join(", "));
        append(
            store,
            AuditEntry::supply(AuditKind::EvidenceCopied, job, digest, &message),
        )
        .await;
    }
    let keys = live.rules.attestors(&job.rule, &job.target, Some(&to.repo));
    if keys.is_empty() || effect.outcome == Outcome::DryRun || digest.is_empty() {
        return Ok(effect);
    }
    let failed = |message: String| TargetError {
        retryable: true,
        ..TargetError::permanent(JobErrorCode::AttestationFailed, message)
    };
    let trail = job_records(store, job, None)
        .await
        .map_err(|e| failed(format!("cannot read the job's audit trail: {e}")))?;
    let statement = statement(job, action, digest, trail.last());
    let payload = serde_json::to_vec(&statement)
        .map_err(|e| failed(format!("cannot write the statement: {e}")))?;
    let keys: Vec<&supply::SigningKey> = keys.iter().map(|k| k.as_ref()).collect();
    let envelope = serde_json::to_vec(&Envelope::sign(IN_TOTO, &payload, &keys))
        .map_err(|e| failed(format!("cannot write the envelope: {e}")))?;
    fence.check().await?;
    let mut promoted = to.clone();
    promoted.digest = Some(digest.to_string());
    let pushed = handle
        .target
        .attach(&promoted, to_target.as_deref(), envelope, &job.id)
        .await
        .map_err(|e| {
            failed(format!(
                "promoted, but the attestation could not be pushed: {}: {}",
                e.error.code.as_str(),
                e.error.message
            ))
        })?;
    if pushed {
        let message = format!(
            "attested {to}@{digest} ({}, signed by {} key(s)), extending audit record {}",
            supply::PREDICATE_TYPE,
            keys.len(),
            statement.predicate.audit.seq
        );
        append(
            store,
            AuditEntry::supply(AuditKind::PromotionAttested, job, digest, &message),
        )
        .await;
    }
    Ok(effect)
}

/// What job `job` promoted, on what evidence and whose approval, as of the last
/// record on its trail.
fn statement(
    job: &Job,
    action: &Action,
    digest: &str,
    last: Option<&crate::audit::AuditRecord>,
) -> Statement {
    let (from, to) = action.describe();
    let subject = match &action.op {
        Op::Promote { to, .. } => to.repository(),
        _ => to.clone(),
    };
    let mut events = vec![supply::EventRef {
        role: "trigger".into(),
        id: job.event_id.clone(),
    }];
    for c in job.gate.iter().flat_map(|g| &g.conditions) {
        if let Some(id) = &c.event_id {
            events.push(supply::EventRef {
                role: c.name.clone(),
                id: id.clone(),
            });
        }
    }
    let approvals = job
        .approvals
        .iter()
        .filter(|a| a.verdict == Verdict::Approved)
        .map(|a| supply::Approved {
            by: a.by.clone(),
            at: rfc3339(a.at),
            comment: a.comment.clone(),
        })
        .collect();
    let audit = last.map_or(
        supply::AuditRef {
            seq: 0,
            hash: crate::audit::GENESIS.to_string(),
        },
        |r| supply::AuditRef {
            seq: r.seq,
            hash: r.hash.clone(),
        },
    );
    Statement::new(
        &subject,
        digest,
        supply::Promotion {
            job_id: job.id.clone(),
            rule: job.rule.clone(),
            from,
            to,
            promoted_at: rfc3339(now_millis()),
            events,
            approvals,
            audit,
        },
    )
}
