//! The supply chain (SPEC §15): signatures as evidence for promotion gates, and
//! attestations of what gantry promoted. This module decides — which signatures
//! count for which condition, what a promotion's statement says and how it is
//! signed; the targets read and write the registries' layouts, and the worker asks
//! here before and after each promotion.

mod cosign;
mod dsse;
mod keys;
mod statement;

use std::sync::Arc;

use crate::domain::Millis;

pub use cosign::{Rejected, verify};
pub use dsse::{Envelope, IN_TOTO, SigningKey, SigningKeyError, pae};
pub use keys::{KeyError, PublicKey};
pub use statement::{Approved, AuditRef, EventRef, PREDICATE_TYPE, Promotion, Statement, Subject};

/// The first and the longest wait between two checks of a missing signature.
const FIRST_RECHECK: Millis = 1_000;
const LONGEST_RECHECK: Millis = 300_000;

/// When a job created at `created_at` whose signatures do not count yet is checked
/// again: after half the time it has waited so far (1 s at first, at most 5 min),
/// never past its gate's `deadline`; `None` once the deadline has passed (the job
/// fails `signature_invalid`).
pub fn next_check(created_at: Millis, deadline: Millis, now: Millis) -> Option<Millis> {
    if now >= deadline {
        return None;
    }
    let wait = ((now - created_at) / 2).clamp(FIRST_RECHECK, LONGEST_RECHECK);
    Some(now.saturating_add(wait).min(deadline))
}

/// The media type of an attestation layer (cosign's `.att` layout).
pub const DSSE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";

/// One signature as a registry stores it: the signed payload's bytes, the base64
/// signature over them, and where it was found (for the record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub payload: Vec<u8>,
    pub signature: String,
    /// The layer (or referrer) digest that held it.
    pub layer: String,
}

/// A gate's signature condition (`signature = { keys = [...] }`), its keys read at
/// load time.
#[derive(Debug, Clone)]
pub struct SignatureCondition {
    pub name: String,
    pub keys: Arc<[PublicKey]>,
}

/// What the signatures found say of a gate's signature conditions.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Judgement {
    /// Each condition met: its name, the layer whose signature met it, and which of
    /// its keys (by position in `keys`) verified it.
    pub met: Vec<(String, String, usize)>,
    /// The conditions no signature met.
    pub missing: Vec<String>,
    /// Signatures that count for no condition, and why (each once).
    pub invalid: Vec<(String, Rejected)>,
}

impl Judgement {
    pub fn all_met(&self) -> bool {
        self.missing.is_empty()
    }
}

/// Judges `found` (signatures of `digest`) against `conditions`: a condition is met
/// by the first signature one of its keys verifies for exactly this digest. A
/// signature that meets no condition is invalid, with the reason it gave the first
/// condition that refused it.
pub fn judge(conditions: &[SignatureCondition], found: &[Signed], digest: &str) -> Judgement {
    let mut out = Judgement::default();
    let mut counted = vec![false; found.len()];
    let mut refusals: Vec<Option<Rejected>> = vec![None; found.len()];
    for c in conditions {
        let mut met = None;
        for (i, s) in found.iter().enumerate() {
            match verify(&s.payload, &s.signature, digest, &c.keys) {
                Ok(key) => {
                    counted[i] = true;
                    met.get_or_insert((s.layer.clone(), key));
                }
                Err(e) => {
                    refusals[i].get_or_insert(e);
                }
            }
        }
        match met {
            Some((layer, key)) => out.met.push((c.name.clone(), layer, key)),
            None => out.missing.push(c.name.clone()),
        }
    }
    for ((s, counted), refusal) in found.iter().zip(counted).zip(refusals) {
        if let (false, Some(why)) = (counted, refusal) {
            out.invalid.push((s.layer.clone(), why));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::next_check;

    #[test]
    fn a_missing_signature_is_checked_again_ever_later_until_the_deadline() {
        assert_eq!(next_check(0, 60_000, 0), Some(1_000));
        assert_eq!(next_check(0, 60_000, 10_000), Some(15_000));
        assert_eq!(next_check(0, 10_000_000, 5_000_000), Some(5_300_000));
        assert_eq!(next_check(0, 60_000, 59_500), Some(60_000));
        assert_eq!(next_check(0, 60_000, 60_000), None);
    }
}
