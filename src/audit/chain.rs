//! The hash chain: each record's hash covers the previous record's hash, its own
//! sequence and its canonical content, so an edited, deleted, inserted or reordered
//! record breaks every hash after it. Pruning old records keeps the chain checkable
//! through a checkpoint record that carries the last pruned hash.
//!
//! This module alone decides what a record's hash covers (its form); stores persist
//! the form's version with each record. Forms so far:
//! - v0 (before store migration 2): `serde_json` of the entry's fields of the time in
//!   declaration order, absent ones as `null`, `at` in RFC 3339.
//! - v1 (from migration 2): v0 followed by `parent_job_id` and `chain_depth`. Adding
//!   those two changed the bytes of every record, so a trail written before no longer
//!   verified: the reason for v2.
//! - v2 ([`HASH_VERSION`]): RFC 8785 (JCS) canonical JSON of the fields present only
//!   (`at` in milliseconds) and `hash_version: 2` itself. A field added later is absent
//!   from every older record and leaves its hash alone; the version is inside what is
//!   hashed, so relabelling a record's version breaks its hash.
//!
//! Records stored before versions were (v0 or v1; a store cannot tell which) carry
//! [`LEGACY_HASH_VERSION`].

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{AuditEntry, AuditKind, AuditRecord, GENESIS, as_rfc3339};
use crate::domain::Millis;

/// The form of every record written now.
pub const HASH_VERSION: u32 = 2;
/// The version stores give records written before versions were stored: their hash
/// covers the v1 form, or the v0 form when they lack v1's fields.
pub const LEGACY_HASH_VERSION: u32 = 1;

/// The chain hash of a record written now: the [`HASH_VERSION`] form.
pub fn chain_hash(prev_hash: &str, seq: i64, entry: &AuditEntry) -> String {
    digest(prev_hash, seq, &canonical(entry))
}

/// What the hash of a record written now covers after its framing (the previous
/// hash, `"\n"`, the sequence in decimal, `"\n"`): for a store that chains records
/// where the head is — PostgreSQL does it in the statement that takes the head
/// (`store/postgres`), so that no round trip to gantry holds the chain. The same
/// bytes [`chain_hash`] hashes.
pub fn chain_form(entry: &AuditEntry) -> Vec<u8> {
    canonical(entry)
}

/// SHA-256 over the previous hash, the sequence and the record's form; the same
/// framing in every version.
fn digest(prev_hash: &str, seq: i64, form: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(seq.to_string().as_bytes());
    h.update(b"\n");
    h.update(form);
    hex::encode(h.finalize())
}

/// Whether `r.hash` is the hash of `r` in the form its version names; an error for
/// a version this gantry does not know (written by a newer one, or edited).
fn sealed(r: &AuditRecord) -> Result<bool, String> {
    let holds = |form: &[u8]| digest(&r.prev_hash, r.seq, form) == r.hash;
    match r.hash_version {
        HASH_VERSION => Ok(holds(&canonical(&r.entry))),
        LEGACY_HASH_VERSION => Ok(legacy_forms(&r.entry).iter().any(|f| holds(f))),
        v => Err(format!("its hash version {v} is unknown to this gantry")),
    }
}

/// The v2 form: every field present, none absent, keys sorted by JCS.
#[derive(Serialize)]
struct Canonical<'a> {
    hash_version: u32,
    at: Millis,
    kind: AuditKind,
    actor: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    job_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    repo: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_job_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chain_depth: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
}

fn canonical(entry: &AuditEntry) -> Vec<u8> {
    use canon_json::CanonJsonSerialize;
    // Taken apart without `..`: a field added to `AuditEntry` does not compile until
    // it is placed here, so no field escapes the hash.
    let AuditEntry {
        at,
        kind,
        actor,
        event_id,
        job_id,
        rule,
        target,
        repo,
        image,
        tag,
        digest,
        from,
        to,
        outcome,
        upstream_status,
        message,
        parent_job_id,
        chain_depth,
        count,
    } = entry;
    let form = Canonical {
        hash_version: HASH_VERSION,
        at: *at,
        kind: *kind,
        actor,
        event_id: event_id.as_deref(),
        job_id: job_id.as_deref(),
        rule: rule.as_deref(),
        target: target.as_deref(),
        repo: repo.as_deref(),
        image: image.as_deref(),
        tag: tag.as_deref(),
        digest: digest.as_deref(),
        from: from.as_deref(),
        to: to.as_deref(),
        outcome: outcome.as_deref(),
        upstream_status: *upstream_status,
        message: message.as_deref(),
        parent_job_id: parent_job_id.as_deref(),
        chain_depth: *chain_depth,
        count: *count,
    };
    // Strings and integers: JCS cannot fail on them (it refuses only odd floats).
    form.to_canon_json_vec().unwrap_or_default()
}

/// The v0 form, and with `chain` the v1 form (its two fields follow v0's).
#[derive(Serialize)]
struct Legacy<'a> {
    #[serde(serialize_with = "as_rfc3339")]
    at: Millis,
    kind: AuditKind,
    actor: &'a str,
    event_id: &'a Option<String>,
    job_id: &'a Option<String>,
    rule: &'a Option<String>,
    target: &'a Option<String>,
    repo: &'a Option<String>,
    image: &'a Option<String>,
    tag: &'a Option<String>,
    digest: &'a Option<String>,
    from: &'a Option<String>,
    to: &'a Option<String>,
    outcome: &'a Option<String>,
    upstream_status: Option<u16>,
    message: &'a Option<String>,
    #[serde(flatten)]
    chain: Option<LegacyChain<'a>>,
}

#[derive(Serialize)]
struct LegacyChain<'a> {
    parent_job_id: &'a Option<String>,
    chain_depth: Option<u32>,
}

/// The forms a legacy record's hash may cover: v1, and v0 only when the fields v0
/// lacked are absent. A field neither covers (`count`) must be absent too, or it
/// could be added to an old record unnoticed: then no form fits.
fn legacy_forms(entry: &AuditEntry) -> Vec<Vec<u8>> {
    let AuditEntry {
        at,
        kind,
        actor,
        event_id,
        job_id,
        rule,
        target,
        repo,
        image,
        tag,
        digest,
        from,
        to,
        outcome,
        upstream_status,
        message,
        parent_job_id,
        chain_depth,
        count,
    } = entry;
    if count.is_some() {
        return Vec::new();
    }
    let v0 = Legacy {
        at: *at,
        kind: *kind,
        actor,
        event_id,
        job_id,
        rule,
        target,
        repo,
        image,
        tag,
        digest,
        from,
        to,
        outcome,
        upstream_status: *upstream_status,
        message,
        chain: None,
    };
    let v1 = Legacy {
        chain: Some(LegacyChain {
            parent_job_id,
            chain_depth: *chain_depth,
        }),
        ..v0
    };
    // Serializing strings and integers to JSON cannot fail.
    let mut forms = vec![serde_json::to_vec(&v1).unwrap_or_default()];
    if parent_job_id.is_none() && chain_depth.is_none() {
        forms.push(serde_json::to_vec(&v0).unwrap_or_default());
    }
    forms
}

/// Where a (possibly pruned) chain starts: the last sequence before it and its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub seq: i64,
    pub hash: String,
}

impl Anchor {
    /// The start of an unpruned chain.
    pub fn genesis() -> Self {
        Anchor {
            seq: 0,
            hash: GENESIS.to_string(),
        }
    }

    const PREFIX: &str = "pruned records through seq ";

    /// The message of the `audit.pruned` checkpoint record.
    pub fn checkpoint_message(&self) -> String {
        format!(
            "{}{}; the next record follows hash {}",
            Anchor::PREFIX,
            self.seq,
            self.hash
        )
    }

    /// Reads a checkpoint record back; the record itself is in the chain, so a
    /// forged or edited checkpoint breaks verification too.
    pub fn from_checkpoint(record: &AuditRecord) -> Option<Anchor> {
        if record.entry.kind != AuditKind::AuditPruned {
            return None;
        }
        let rest = record
            .entry
            .message
            .as_deref()?
            .strip_prefix(Anchor::PREFIX)?;
        let (seq, rest) = rest.split_once("; the next record follows hash ")?;
        let hash = rest.split_whitespace().next()?;
        Some(Anchor {
            seq: seq.parse().ok()?,
            hash: hash.to_string(),
        })
    }
}

/// The result of checking a trail.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Verdict {
    pub ok: bool,
    /// Records checked (up to the first broken one).
    pub records: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_broken: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The last record's sequence and hash: keep them elsewhere to detect a
    /// truncated tail later.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_seq: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_hash: Option<String>,
}

/// Checks records fed in sequence order, stopping at the first broken one.
#[derive(Debug)]
pub struct ChainCheck {
    prev: Anchor,
    records: u64,
    broken: Option<(i64, String)>,
}

impl ChainCheck {
    pub fn new(anchor: Anchor) -> Self {
        ChainCheck {
            prev: anchor,
            records: 0,
            broken: None,
        }
    }

    /// Checks the next record; `false` once the chain is broken.
    pub fn push(&mut self, r: &AuditRecord) -> bool {
        if self.broken.is_some() {
            return false;
        }
        let expected = self.prev.seq + 1;
        let problem = if r.seq != expected {
            Some((
                expected,
                format!("record {expected} is missing (the next one is {})", r.seq),
            ))
        } else if r.prev_hash != self.prev.hash {
            Some((
                r.seq,
                format!(
                    "record {} does not follow record {}: its prev_hash differs",
                    r.seq, self.prev.seq
                ),
            ))
        } else {
            match sealed(r) {
                Ok(true) => None,
                Ok(false) => Some((
                    r.seq,
                    format!("record {} does not match its hash: it was edited", r.seq),
                )),
                Err(why) => Some((r.seq, format!("record {} cannot be read: {why}", r.seq))),
            }
        };
        if let Some(p) = problem {
            self.broken = Some(p);
            return false;
        }
        self.records += 1;
        self.prev = Anchor {
            seq: r.seq,
            hash: r.hash.clone(),
        };
        true
    }

    /// A record that could not even be read (an unknown kind, a wrong type) breaks
    /// the chain where it stands.
    pub fn unreadable(&mut self, seq: i64, why: &str) {
        if self.broken.is_none() {
            self.broken = Some((seq, format!("record {seq} cannot be read: {why}")));
        }
    }

    pub fn verdict(self) -> Verdict {
        match self.broken {
            Some((seq, reason)) => Verdict {
                ok: false,
                records: self.records,
                first_broken: Some(seq),
                reason: Some(reason),
                head_seq: None,
                head_hash: None,
            },
            None => Verdict {
                ok: true,
                records: self.records,
                first_broken: None,
                reason: None,
                head_seq: (self.prev.seq > 0).then_some(self.prev.seq),
                head_hash: (self.prev.seq > 0).then_some(self.prev.hash),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditEntry;

    /// The framing a store that hashes where the head is (PostgreSQL's append)
    /// writes out by hand: this pins it.
    #[test]
    fn a_hash_is_sha256_of_the_previous_hash_the_sequence_and_the_form() {
        let entry = AuditEntry::rejections("src", "reason", 1);
        let mut framed = format!("{GENESIS}\n42\n").into_bytes();
        framed.extend(chain_form(&entry));
        let expected = hex::encode(Sha256::digest(&framed));
        assert_eq!(chain_hash(GENESIS, 42, &entry), expected);
    }

    fn trail(n: i64) -> Vec<AuditRecord> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let mut entry = AuditEntry::rejections("src", &format!("reason {seq}"), 1);
                entry.count = None;
                let hash = chain_hash(&prev, seq, &entry);
                let r = AuditRecord {
                    seq,
                    entry,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                    hash_version: HASH_VERSION,
                };
                prev = hash;
                r
            })
            .collect()
    }

    fn check(records: &[AuditRecord], anchor: Anchor) -> Verdict {
        let mut c = ChainCheck::new(anchor);
        for r in records {
            c.push(r);
        }
        c.verdict()
    }

    #[test]
    fn an_untouched_trail_verifies() {
        let t = trail(5);
        let v = check(&t, Anchor::genesis());
        assert!(v.ok);
        assert_eq!((v.records, v.head_seq), (5, Some(5)));
    }

    #[test]
    fn edits_deletions_insertions_and_swaps_are_found_at_the_first_broken_record() {
        let mut edited = trail(5);
        edited[2].entry.message = Some("nothing happened".into());
        assert_eq!(check(&edited, Anchor::genesis()).first_broken, Some(3));

        let mut deleted = trail(5);
        deleted.remove(1);
        assert_eq!(check(&deleted, Anchor::genesis()).first_broken, Some(2));

        let mut swapped = trail(5);
        let (a, b) = (swapped[1].clone(), swapped[2].clone());
        swapped[1] = AuditRecord { seq: 2, ..b };
        swapped[2] = AuditRecord { seq: 3, ..a };
        assert_eq!(check(&swapped, Anchor::genesis()).first_broken, Some(2));

        let mut inserted = trail(5);
        let mut extra = inserted[2].clone();
        extra.entry.actor = "intruder".into();
        inserted.insert(3, extra);
        for (i, r) in inserted.iter_mut().enumerate() {
            r.seq = i as i64 + 1;
        }
        assert_eq!(check(&inserted, Anchor::genesis()).first_broken, Some(4));
    }

    #[test]
    fn the_v2_form_is_jcs_of_the_fields_present_and_its_version() {
        let mut e = AuditEntry::rejections("ci", "bad signature", 1);
        e.count = None;
        e.at = 1_700_000_000_123;
        assert_eq!(
            String::from_utf8(canonical(&e)).unwrap(),
            r#"{"actor":"ci","at":1700000000123,"hash_version":2,"kind":"event.rejected","message":"bad signature"}"#
        );
        e.count = Some(7);
        e.chain_depth = Some(0);
        assert_eq!(
            String::from_utf8(canonical(&e)).unwrap(),
            r#"{"actor":"ci","at":1700000000123,"chain_depth":0,"count":7,"hash_version":2,"kind":"event.rejected","message":"bad signature"}"#
        );
    }

    #[test]
    fn a_relabelled_version_or_a_count_added_to_an_old_record_breaks_the_chain() {
        let mut t = trail(3);
        t[1].entry.count = Some(5);
        assert_eq!(check(&t, Anchor::genesis()).first_broken, Some(2));

        let mut t = trail(3);
        t[1].hash_version = LEGACY_HASH_VERSION;
        assert_eq!(check(&t, Anchor::genesis()).first_broken, Some(2));

        let mut t = trail(3);
        t[1].hash_version = 3;
        let v = check(&t, Anchor::genesis());
        assert_eq!(v.first_broken, Some(2));
        assert!(v.reason.unwrap().contains("hash version 3 is unknown"));

        // A legacy record (v1 form) given a count: no legacy form covers one.
        let mut legacy = trail(1).remove(0);
        legacy.hash_version = LEGACY_HASH_VERSION;
        legacy.hash = digest(GENESIS, 1, &legacy_forms(&legacy.entry)[0]);
        assert!(check(std::slice::from_ref(&legacy), Anchor::genesis()).ok);
        legacy.entry.count = Some(1);
        assert!(!check(&[legacy], Anchor::genesis()).ok);
    }

    #[test]
    fn a_pruned_trail_verifies_from_its_checkpoint() {
        let t = trail(6);
        let anchor = Anchor {
            seq: 3,
            hash: t[2].hash.clone(),
        };
        assert!(check(&t[3..], anchor.clone()).ok);
        assert!(!check(&t[3..], Anchor::genesis()).ok);
        let msg = anchor.checkpoint_message();
        let mut cp = t[0].clone();
        cp.entry.kind = AuditKind::AuditPruned;
        cp.entry.message = Some(msg);
        assert_eq!(Anchor::from_checkpoint(&cp), Some(anchor));
    }
}
