//! Public keys a signature condition lists: ECDSA P-256 (cosign's default, signatures
//! over SHA-256 in ASN.1 DER) or Ed25519, each a PEM `PUBLIC KEY` (SubjectPublicKeyInfo)
//! as `cosign generate-key-pair` and `openssl pkey -pubout` write them.

use ed25519_dalek::pkcs8::DecodePublicKey as _;
use p256::ecdsa::signature::Verifier as _;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("not a PEM public key of a supported kind (ECDSA P-256 or Ed25519)")]
    Unsupported,
}

/// A key a signature may be verified with.
#[derive(Debug, Clone)]
pub enum PublicKey {
    P256(p256::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl PublicKey {
    /// Reads a PEM `PUBLIC KEY`: P-256, else Ed25519.
    pub fn from_pem(pem: &str) -> Result<PublicKey, KeyError> {
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            return Ok(PublicKey::P256(k));
        }
        ed25519_dalek::VerifyingKey::from_public_key_pem(pem)
            .map(PublicKey::Ed25519)
            .map_err(|_| KeyError::Unsupported)
    }

    /// Whether `signature` is this key's over `message`: for P-256, an ASN.1 DER
    /// ECDSA signature over the message's SHA-256 (what cosign writes); for Ed25519,
    /// the 64 bytes, verified strictly (no malleable encodings).
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            PublicKey::P256(key) => p256::ecdsa::Signature::from_der(signature)
                .is_ok_and(|sig| key.verify(message, &sig).is_ok()),
            PublicKey::Ed25519(key) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verify_strict(message, &sig).is_ok()),
        }
    }
}
