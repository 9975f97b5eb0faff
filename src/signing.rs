//! The HMAC signatures gantry both checks (on webhooks in, `ingest`) and makes (on
//! notifications out, `notify`): one definition of each scheme's signed content, so
//! what gantry sends verifies by the same rules it holds senders to.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = hmac::Hmac<Sha256>;

/// HMAC-SHA256 over the concatenated parts. HMAC accepts keys of any length, so
/// `None` never happens in practice; it keeps this total without a panic path.
fn mac(key: &[u8], parts: &[&[u8]]) -> Option<HmacSha256> {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).ok()?;
    for p in parts {
        mac.update(p);
    }
    Some(mac)
}

pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    mac(key, parts)
        .map(|m| m.finalize().into_bytes().to_vec())
        .unwrap_or_default()
}

/// Whether `signature` is the HMAC of the parts, compared in constant time.
pub fn hmac_matches(key: &[u8], parts: &[&[u8]], signature: &[u8]) -> bool {
    mac(key, parts).is_some_and(|m| m.verify_slice(signature).is_ok())
}

/// A Standard Webhooks secret, `whsec_<base64>`, as its key bytes. The prefix is
/// optional, as in the reference libraries.
pub fn standard_webhooks_key(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    match BASE64.decode(encoded) {
        Ok(key) if !key.is_empty() => Ok(key),
        _ => Err("a Standard Webhooks secret is `whsec_` followed by base64".into()),
    }
}

/// What a Standard Webhooks signature covers: `{webhook-id}.{webhook-timestamp}.{body}`.
pub fn standard_webhooks_content<'a>(
    id: &'a str,
    timestamp: &'a str,
    body: &'a [u8],
) -> [&'a [u8]; 5] {
    [id.as_bytes(), b".", timestamp.as_bytes(), b".", body]
}

/// The Standard Webhooks tag of one message (HMAC-SHA256 of its content).
pub fn standard_webhooks_tag(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    hmac_sha256(key, &standard_webhooks_content(id, timestamp, body))
}

/// The `webhook-signature` header for one message: a `v1,<base64>` signature per
/// key, space-separated, so a receiver holding any one of the keys verifies it
/// (rotation without a gap).
pub fn standard_webhooks_signature(
    keys: &[Vec<u8>],
    id: &str,
    timestamp: &str,
    body: &[u8],
) -> String {
    keys.iter()
        .map(|k| {
            format!(
                "v1,{}",
                BASE64.encode(standard_webhooks_tag(k, id, timestamp, body))
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Constant-time equality that also hides the length of the secret: both sides are
/// hashed to 32 bytes first.
pub fn same_secret(secret: &[u8], presented: &[u8]) -> bool {
    Sha256::digest(secret)
        .ct_eq(&Sha256::digest(presented))
        .into()
}
