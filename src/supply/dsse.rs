//! DSSE envelopes (the Dead Simple Signing Envelope of secure-systems-lab, which
//! in-toto attestations and cosign's `.att` layers use): what is signed is the
//! pre-authentication encoding of the payload type and the payload, never the
//! payload alone, so a signature cannot be replayed as another type of document.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::pkcs8::DecodePrivateKey as _;
use p256::ecdsa::signature::Signer as _;
use serde::{Deserialize, Serialize};

use super::PublicKey;

/// The payload type of an in-toto statement.
pub const IN_TOTO: &str = "application/vnd.in-toto+json";

/// A private key gantry signs attestations with: ECDSA P-256 (PKCS#8 or SEC1 PEM, as
/// `cosign generate-key-pair` after decryption and `openssl ecparam -genkey` write
/// them) or Ed25519 (PKCS#8 PEM). `Debug` shows the kind and the public half only.
pub enum SigningKey {
    P256(p256::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SigningKey::P256(_) => f.write_str("SigningKey::P256([redacted])"),
            SigningKey::Ed25519(_) => f.write_str("SigningKey::Ed25519([redacted])"),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SigningKeyError {
    #[error(
        "not an unencrypted PEM private key of a supported kind (ECDSA P-256 or Ed25519); decrypt a cosign key with `openssl pkcs8` first"
    )]
    Unsupported,
}

impl SigningKey {
    /// Reads a PEM private key: P-256 (PKCS#8 or SEC1), else Ed25519 (PKCS#8). The
    /// error never quotes the text.
    pub fn from_pem(pem: &str) -> Result<SigningKey, SigningKeyError> {
        if let Ok(k) = p256::SecretKey::from_pem(pem) {
            return Ok(SigningKey::P256(k.into()));
        }
        ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
            .map(SigningKey::Ed25519)
            .map_err(|_| SigningKeyError::Unsupported)
    }

    /// The public half, which verifies what this key signs.
    pub fn public(&self) -> PublicKey {
        match self {
            SigningKey::P256(k) => PublicKey::P256(*k.verifying_key()),
            SigningKey::Ed25519(k) => PublicKey::Ed25519(k.verifying_key()),
        }
    }

    /// This key's signature over `message`: ASN.1 DER ECDSA over SHA-256
    /// (deterministic, RFC 6979) or the 64 bytes of Ed25519.
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            SigningKey::P256(k) => {
                let sig: p256::ecdsa::Signature = k.sign(message);
                sig.to_der().as_bytes().to_vec()
            }
            SigningKey::Ed25519(k) => ed25519_dalek::Signer::sign(k, message).to_bytes().to_vec(),
        }
    }
}

/// The bytes a DSSE signature covers: `DSSEv1 <len(type)> <type> <len(body)> <body>`,
/// lengths in ASCII decimal bytes.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// A DSSE envelope as JSON carries it: the payload in base64, one signature per key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    pub payload_type: String,
    pub payload: String,
    pub signatures: Vec<EnvelopeSignature>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    #[serde(default)]
    pub keyid: String,
    pub sig: String,
}

impl Envelope {
    /// `payload` of `payload_type` signed by every key in `keys`.
    pub fn sign(payload_type: &str, payload: &[u8], keys: &[&SigningKey]) -> Envelope {
        let message = pae(payload_type, payload);
        Envelope {
            payload_type: payload_type.to_string(),
            payload: STANDARD.encode(payload),
            signatures: keys
                .iter()
                .map(|k| EnvelopeSignature {
                    keyid: String::new(),
                    sig: STANDARD.encode(k.sign(&message)),
                })
                .collect(),
        }
    }

    /// The payload, when one of its signatures is by one of `keys` over the
    /// envelope's own type and payload; `None` otherwise (nothing unsigned is read).
    pub fn verified_payload(&self, keys: &[PublicKey]) -> Option<Vec<u8>> {
        let payload = STANDARD.decode(&self.payload).ok()?;
        let message = pae(&self.payload_type, &payload);
        let signed = self.signatures.iter().any(|s| {
            STANDARD
                .decode(s.sig.trim())
                .is_ok_and(|sig| keys.iter().any(|k| k.verifies(&message, &sig)))
        });
        signed.then_some(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_is_the_specification_s_example() {
        // The DSSE protocol document's test vector.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
    }

    #[test]
    fn an_envelope_verifies_with_its_key_only_and_not_once_changed() {
        let key = SigningKey::P256(p256::ecdsa::SigningKey::from_slice(&[7; 32]).unwrap());
        let other = SigningKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(&[9; 32]));
        let env = Envelope::sign(IN_TOTO, b"{\"a\":1}", &[&key]);
        assert_eq!(
            env.verified_payload(&[other.public(), key.public()]),
            Some(b"{\"a\":1}".to_vec())
        );
        assert_eq!(env.verified_payload(&[other.public()]), None);
        let mut retyped = env.clone();
        retyped.payload_type = "text/plain".into();
        assert_eq!(retyped.verified_payload(&[key.public()]), None);
        let mut changed = env;
        changed.payload = STANDARD.encode(b"{\"a\":2}");
        assert_eq!(changed.verified_payload(&[key.public()]), None);
        assert!(!format!("{key:?}").contains('7'));
    }
}
