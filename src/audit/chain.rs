//! The hash chain: each record's hash covers the previous record's hash, its own
//! sequence and its canonical content, so an edited, deleted, inserted or reordered
//! record breaks every hash after it. Pruning old records keeps the chain checkable
//! through a checkpoint record that carries the last pruned hash.

use sha2::{Digest, Sha256};

use super::{AuditEntry, AuditKind, AuditRecord, GENESIS};

/// The chain hash of a record: SHA-256 over the previous hash, the sequence and the
/// canonical JSON of the entry (fields in declaration order).
pub fn chain_hash(prev_hash: &str, seq: i64, entry: &AuditEntry) -> String {
    // Serializing a struct of strings and numbers cannot fail.
    let canonical = serde_json::to_vec(entry).unwrap_or_default();
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(seq.to_string().as_bytes());
    h.update(b"\n");
    h.update(&canonical);
    hex::encode(h.finalize())
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
        } else if chain_hash(&r.prev_hash, r.seq, &r.entry) != r.hash {
            Some((
                r.seq,
                format!("record {} does not match its hash: it was edited", r.seq),
            ))
        } else {
            None
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

    fn trail(n: i64) -> Vec<AuditRecord> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let entry = AuditEntry::rejected("src", &format!("reason {seq}"));
                let hash = chain_hash(&prev, seq, &entry);
                let r = AuditRecord {
                    seq,
                    entry,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
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
