//! Verification schemes (SPEC §6). A body becomes [`Verified`] only here, by passing
//! its source's scheme over the raw bytes, before anything parses it.

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Headers;
use crate::config::{Encoding, SchemeKind, Secret, VerifyConfig};

type HmacSha256 = hmac::Hmac<Sha256>;

/// A request body that passed its source's verification. The private field means no
/// other module can make one, so every parser downstream only ever sees verified bytes.
#[derive(Debug, Clone, Copy)]
pub struct Verified<'a> {
    body: &'a [u8],
}

impl<'a> Verified<'a> {
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// For `gantry simulate`, which runs offline on a file the operator chose and has
    /// no request to verify.
    pub fn trusted_local_file(body: &'a [u8]) -> Self {
        Verified { body }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("the `{0}` header is missing")]
    MissingHeader(String),
    #[error("the `{0}` header is not a well-formed signature")]
    Malformed(String),
    #[error("the signature does not match any active secret")]
    Mismatch,
}

/// One source's scheme with its active secrets (several, for rotation).
#[derive(Debug, Clone)]
pub struct Verifier {
    config: VerifyConfig,
}

impl Verifier {
    pub fn new(config: VerifyConfig) -> Self {
        Verifier { config }
    }

    pub fn verify<'a>(
        &self,
        headers: &dyn Headers,
        body: &'a [u8],
    ) -> Result<Verified<'a>, VerifyError> {
        let c = &self.config;
        match c.scheme {
            SchemeKind::None => {}
            SchemeKind::HmacSha256 => {
                let value = header(headers, &c.header)?;
                let encoded = value
                    .strip_prefix(c.prefix.as_str())
                    .ok_or_else(|| VerifyError::Malformed(c.header.clone()))?;
                let signature = decode(encoded.trim(), c.encoding)
                    .ok_or_else(|| VerifyError::Malformed(c.header.clone()))?;
                if !c.secrets.iter().any(|s| hmac_matches(s, body, &signature)) {
                    return Err(VerifyError::Mismatch);
                }
            }
            SchemeKind::Token => {
                let value = header(headers, &c.header)?;
                let token = value.strip_prefix("Bearer ").unwrap_or(value).trim();
                if !c.secrets.iter().any(|s| same_secret(s.expose(), token)) {
                    return Err(VerifyError::Mismatch);
                }
            }
        }
        Ok(Verified { body })
    }

    /// The header value a sender would send for `body`, signed with the first secret.
    pub fn sign(&self, body: &[u8]) -> Option<(String, String)> {
        let c = &self.config;
        let secret = c.secrets.first()?;
        let value = match c.scheme {
            SchemeKind::None => return None,
            SchemeKind::Token => secret.expose().to_string(),
            SchemeKind::HmacSha256 => {
                let tag = hmac_sha256(secret.expose().as_bytes(), body);
                let encoded = match c.encoding {
                    Encoding::Hex => hex::encode(tag),
                    Encoding::Base64 => {
                        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, tag)
                    }
                };
                format!("{}{encoded}", c.prefix)
            }
        };
        Some((c.header.clone(), value))
    }
}

fn header<'h>(headers: &'h dyn Headers, name: &str) -> Result<&'h str, VerifyError> {
    headers
        .get(name)
        .ok_or_else(|| VerifyError::MissingHeader(name.to_string()))
}

fn decode(encoded: &str, encoding: Encoding) -> Option<Vec<u8>> {
    match encoding {
        // `hex` accepts both cases: signatures are compared as bytes.
        Encoding::Hex => hex::decode(encoded).ok(),
        Encoding::Base64 => {
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded).ok()
        }
    }
}

pub(crate) fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

fn hmac_matches(secret: &Secret, body: &[u8], signature: &[u8]) -> bool {
    let Ok(mut mac) = <HmacSha256 as KeyInit>::new_from_slice(secret.expose().as_bytes()) else {
        return false;
    };
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(signature).is_ok()
}

/// Constant-time equality that also hides the length of the secret: both sides are
/// hashed to 32 bytes first.
pub fn same_secret(secret: &str, presented: &str) -> bool {
    let a = Sha256::digest(secret.as_bytes());
    let b = Sha256::digest(presented.as_bytes());
    a.ct_eq(&b).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn verifier(
        scheme: SchemeKind,
        prefix: &str,
        encoding: Encoding,
        secrets: &[&str],
    ) -> Verifier {
        Verifier::new(VerifyConfig {
            scheme,
            header: "X-Sig".into(),
            prefix: prefix.into(),
            encoding,
            secrets: secrets.iter().map(|s| Secret::new(*s)).collect(),
        })
    }

    fn one(name: &str, value: &str) -> Vec<(String, String)> {
        vec![(name.to_string(), value.to_string())]
    }

    #[test]
    fn hmac_hex_any_case_and_prefix() {
        // GitHub's published vector, as a plain hmac-sha256 source with a prefix.
        let v = verifier(
            SchemeKind::HmacSha256,
            "sha256=",
            Encoding::Hex,
            &["It's a Secret to Everybody"],
        );
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(v.verify(&one("x-sig", sig), b"Hello, World!").is_ok());
        assert!(
            v.verify(
                &one("X-Sig", &sig.to_uppercase().replace("SHA256=", "sha256=")),
                b"Hello, World!"
            )
            .is_ok()
        );
        assert_eq!(
            v.verify(&one("X-Sig", sig), b"Hello, World?").unwrap_err(),
            VerifyError::Mismatch
        );
        assert_eq!(
            v.verify(&one("X-Sig", &sig[7..]), b"Hello, World!")
                .unwrap_err(),
            VerifyError::Malformed("X-Sig".into())
        );
        assert_eq!(
            v.verify(&Vec::new(), b"x").unwrap_err(),
            VerifyError::MissingHeader("X-Sig".into())
        );
    }

    #[test]
    fn any_listed_secret_verifies() {
        let old = verifier(SchemeKind::HmacSha256, "", Encoding::Base64, &["old"]);
        let both = verifier(
            SchemeKind::HmacSha256,
            "",
            Encoding::Base64,
            &["new", "old"],
        );
        let (_, sig) = old.sign(b"body").unwrap();
        assert!(both.verify(&one("X-Sig", &sig), b"body").is_ok());
        let retired = verifier(SchemeKind::HmacSha256, "", Encoding::Base64, &["new"]);
        assert!(retired.verify(&one("X-Sig", &sig), b"body").is_err());
    }

    #[test]
    fn token_with_or_without_bearer() {
        let v = verifier(SchemeKind::Token, "", Encoding::Hex, &["s3cret", "next"]);
        assert!(v.verify(&one("X-Sig", "s3cret"), b"").is_ok());
        assert!(v.verify(&one("X-Sig", "Bearer next"), b"").is_ok());
        assert_eq!(
            v.verify(&one("X-Sig", "s3cre"), b"").unwrap_err(),
            VerifyError::Mismatch
        );
    }

    proptest! {
        #[test]
        fn sign_then_verify_round_trips(body in proptest::collection::vec(any::<u8>(), 0..256),
                                        secret in "[ -~]{1,40}", base64 in any::<bool>()) {
            let enc = if base64 { Encoding::Base64 } else { Encoding::Hex };
            let v = verifier(SchemeKind::HmacSha256, "sha256=", enc, &[&secret]);
            let (name, value) = v.sign(&body).unwrap();
            prop_assert!(v.verify(&one(&name, &value), &body).is_ok());
            let mut tampered = body.clone();
            tampered.push(0);
            prop_assert!(v.verify(&one(&name, &value), &tampered).is_err());
        }
    }
}
