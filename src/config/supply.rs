//! The supply-chain settings (SPEC §15) read into typed values at load: a signature
//! condition's public keys and an attestation's private key, each a secret
//! reference to a PEM. A key that does not read is a config error, found by
//! `gantry check` rather than by the first promotion that needs it; the error never
//! quotes what was read.

use std::collections::HashMap;
use std::sync::Arc;

use super::raw::{RawAttest, RawCondition, RawSignature};
use super::secret::{self, Origin};
use super::{Problem, RawRule};
use crate::config::ActionKind;
use crate::supply::{PublicKey, SignatureCondition, SigningKey};

/// The environment secret references are resolved in.
pub type Env<'a> = &'a HashMap<String, String>;

/// The public keys of a signature condition at `loc`, all of which must read.
fn public_keys(
    loc: &str,
    raw: &RawSignature,
    env: Env<'_>,
    problems: &mut Vec<Problem>,
) -> Option<Arc<[PublicKey]>> {
    if raw.keys.is_empty() {
        problems.push(Problem::error(
            format!("{loc}.keys"),
            "lists no key: no signature could ever count",
        ));
        return None;
    }
    let before = problems.len();
    let keys: Vec<PublicKey> = raw
        .keys
        .iter()
        .enumerate()
        .filter_map(|(i, reference)| {
            let at = format!("{loc}.keys[{i}]");
            // A public key may well be written into the config: no literal warning.
            let pem = secret::resolve(reference, &|n| env.get(n).cloned())
                .map_err(|e| problems.push(Problem::error(at.clone(), e.to_string())))
                .ok()?
                .0;
            PublicKey::from_pem(pem.expose())
                .map_err(|e| problems.push(Problem::error(at, e.to_string())))
                .ok()
        })
        .collect();
    (problems.len() == before).then(|| keys.into())
}

/// The signature conditions of `rule`'s gate, checked: one is met by a signature,
/// so it names no event, and only a `promote` (an image) has signatures.
pub fn signature_conditions(
    loc: &str,
    rule: &RawRule,
    env: Env<'_>,
    problems: &mut Vec<Problem>,
) -> Vec<SignatureCondition> {
    let conditions = rule.gate.iter().flat_map(|g| &g.require);
    conditions
        .filter_map(|c: &RawCondition| {
            let raw = c.signature.as_ref()?;
            let at = format!("{loc}.gate.require[{}]", c.name);
            if c.source.is_some()
                || c.event.is_some()
                || c.block
                || !c.when.is_empty()
                || !c.claims.is_empty()
            {
                problems.push(Problem::error(
                    at.clone(),
                    "a signature condition is met by a signature read from the registry, not by an event: it takes no `source`, `event`, `when`, `claims` or `block`",
                ));
            }
            if rule.action.kind != ActionKind::Promote {
                problems.push(Problem::error(
                    format!("{at}.signature"),
                    "only images have signatures: the rule's action must be `promote`",
                ));
            }
            let keys = public_keys(&format!("{at}.signature"), raw, env, problems)?;
            Some(SignatureCondition {
                name: c.name.clone(),
                keys,
            })
        })
        .collect()
}

/// The signing key of an `attest` at `loc`.
pub fn attest_key(
    loc: &str,
    raw: &RawAttest,
    env: Env<'_>,
    problems: &mut Vec<Problem>,
) -> Option<Arc<SigningKey>> {
    let at = format!("{loc}.attest.key");
    let (pem, origin) = secret::resolve(&raw.key, &|n| env.get(n).cloned())
        .map_err(|e| problems.push(Problem::error(at.clone(), e.to_string())))
        .ok()?;
    if origin == Origin::Literal {
        problems.push(Problem::warning(
            at.clone(),
            "literal private key in the config; prefer `env:NAME` or `file:/path`",
        ));
    }
    SigningKey::from_pem(pem.expose())
        .map(Arc::new)
        .map_err(|e| problems.push(Problem::error(at, e.to_string())))
        .ok()
}

/// The signing key of `rule`'s `attest`, checked: only a `promote` (an image) is
/// attested.
pub fn rule_attest_key(
    loc: &str,
    rule: &RawRule,
    env: Env<'_>,
    problems: &mut Vec<Problem>,
) -> Option<Arc<SigningKey>> {
    let attest = rule.attest.as_ref()?;
    if rule.action.kind != ActionKind::Promote {
        problems.push(Problem::error(
            format!("{loc}.attest"),
            "only promoted images are attested: the rule's action must be `promote`",
        ));
    }
    attest_key(loc, attest, env, problems)
}

/// How `attest.key` shows in `GET /api/v1/rules`: the reference, unless it is the
/// key itself.
pub fn shown_reference<S: serde::Serializer>(key: &str, s: S) -> Result<S::Ok, S::Error> {
    if key.starts_with("env:") || key.starts_with("file:") {
        s.serialize_str(key)
    } else {
        s.serialize_str("[redacted]")
    }
}
