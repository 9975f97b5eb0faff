//! One cosign signature, as its tag layout stores it: a layer holding a simple-signing
//! payload (JSON), and the annotation `dev.cosignproject.cosign/signature` holding the
//! base64 signature over exactly those bytes. It counts for a digest only when a listed
//! key signed it and the payload's `critical.image.docker-manifest-digest` is that
//! digest: a valid signature of another image never counts.

use base64::Engine as _;
use serde::Deserialize;

use super::PublicKey;

/// A signature that does not count, and why (recorded as `signature.invalid`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("the signature annotation is not base64")]
    NotBase64,
    #[error("no listed key verifies the signature")]
    NoKey,
    #[error("the signed payload is not a simple-signing payload: {0}")]
    Payload(String),
    #[error("the signature is for {signed}, not {promoted}")]
    OtherDigest { signed: String, promoted: String },
}

/// The parts of a simple-signing payload that decide what it vouches for.
#[derive(Debug, Deserialize)]
struct SignedPayload {
    critical: Critical,
}

#[derive(Debug, Deserialize)]
struct Critical {
    image: Image,
}

#[derive(Debug, Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    digest: String,
}

/// Which of `keys` (by index) verifies `signature_b64` over `payload`, a payload that
/// names `digest`; or why the signature does not count. The signature is checked
/// before the payload is read: an unsigned payload's contents are not looked at.
pub fn verify(
    payload: &[u8],
    signature_b64: &str,
    digest: &str,
    keys: &[PublicKey],
) -> Result<usize, Rejected> {
    let signature = base64::engine::general_purpose::STANDARD
        .decode(signature_b64.trim())
        .map_err(|_| Rejected::NotBase64)?;
    let key = keys
        .iter()
        .position(|k| k.verifies(payload, &signature))
        .ok_or(Rejected::NoKey)?;
    let signed: SignedPayload =
        serde_json::from_slice(payload).map_err(|e| Rejected::Payload(e.to_string()))?;
    if signed.critical.image.digest != digest {
        return Err(Rejected::OtherDigest {
            signed: signed.critical.image.digest,
            promoted: digest.to_string(),
        });
    }
    Ok(key)
}
