//! Verification schemes (SPEC §6, §16). A body becomes [`Verified`] only here, by
//! passing its source's scheme over the raw bytes, before anything parses it.

use std::borrow::Cow;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use secrecy::{ExposeSecret, SecretSlice};

use super::Headers;
use super::oidc::Oidc;
use crate::config::{Encoding, SchemeKind, VerifyConfig};
use crate::signing::{
    hmac_matches, hmac_sha256, same_secret, standard_webhooks_content, standard_webhooks_key,
    standard_webhooks_tag,
};

/// GitHub's signature and delivery headers.
const GITHUB_SIGNATURE: &str = "X-Hub-Signature-256";
const GITHUB_DELIVERY: &str = "X-GitHub-Delivery";

/// Standard Webhooks header names; Svix sends the same values under `svix-…`.
const SW_ID: [&str; 2] = ["webhook-id", "svix-id"];
const SW_TIMESTAMP: [&str; 2] = ["webhook-timestamp", "svix-timestamp"];
const SW_SIGNATURE: [&str; 2] = ["webhook-signature", "svix-signature"];

/// The `Authorization` header an `oidc` sender's token travels in.
const AUTHORIZATION: &str = "Authorization";

/// A request body that passed its source's verification. The private fields mean no
/// other module can make one, so every parser downstream only ever sees verified bytes.
#[derive(Debug, Clone)]
pub struct Verified<'a> {
    body: &'a [u8],
    delivery_id: Option<Cow<'a, str>>,
    claims: Option<serde_json::Value>,
}

impl<'a> Verified<'a> {
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// The delivery id the scheme vouches for (`webhook-id`, `X-GitHub-Delivery`, an
    /// `oidc` token's `jti` hashed with the body).
    pub fn delivery_id(&self) -> Option<&str> {
        self.delivery_id.as_deref()
    }

    /// The claims of the token an `oidc` source verified.
    pub fn claims(&self) -> Option<&serde_json::Value> {
        self.claims.as_ref()
    }

    /// For `gantry simulate` and the fuzz targets, which run offline on bytes the
    /// operator chose and have no request to verify.
    pub fn trusted_local_file(body: &'a [u8]) -> Self {
        Verified {
            body,
            delivery_id: None,
            claims: None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("the `{0}` header is missing")]
    MissingHeader(String),
    #[error("the `{0}` header is malformed")]
    Malformed(String),
    #[error("the signature timestamp is outside the accepted window")]
    Stale,
    #[error("the signature does not match any active secret")]
    Mismatch,
    /// `url-token`: the query names no token (the query itself is never repeated).
    #[error("the URL's query has no `{0}` parameter")]
    MissingParam(String),
    #[error("the URL's query has the `{0}` parameter more than once")]
    RepeatedParam(String),
    // `oidc`: what is wrong with the bearer token, never quoting it.
    #[error("the bearer token is refused: {0}")]
    Token(&'static str),
    #[error("the bearer token is signed with {0}; only RS256, ES256 and EdDSA are accepted")]
    Algorithm(String),
    #[error("the bearer token is signed by a key the issuer does not publish")]
    UnknownKey,
    #[error("the bearer token's signature does not verify with the issuer's key")]
    BadSignature,
    #[error("the bearer token was issued by another issuer")]
    Issuer,
    #[error("the bearer token is meant for another audience")]
    Audience,
    #[error("the bearer token has expired")]
    Expired,
    #[error("the bearer token's `{0}` is in the future")]
    NotYetValid(&'static str),
    #[error("the bearer token has no `{0}` claim")]
    MissingClaim(&'static str),
    #[error("the bearer token's `{0}` claim is malformed")]
    ClaimFormat(&'static str),
    /// The pointer of the configured matcher, not the claim's value.
    #[error("the bearer token's claim `{0}` does not match what the source requires")]
    Claim(String),
    /// The issuer's keys cannot be had (SPEC §16): nothing can be verified.
    #[error("the OIDC issuer's signing keys are unavailable: {0}")]
    KeysUnavailable(String),
}

/// A secret as key bytes, redacted in `Debug`.
struct Key(SecretSlice<u8>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Key {
    fn bytes(&self) -> &[u8] {
        self.0.expose_secret()
    }
}

#[derive(Debug)]
enum Scheme {
    None,
    Hmac {
        header: String,
        prefix: String,
        encoding: Encoding,
        delivery_header: Option<&'static str>,
    },
    StandardWebhooks {
        tolerance: Duration,
    },
    Token {
        header: String,
    },
    UrlToken {
        param: String,
    },
    Oidc(Box<Oidc>),
}

/// One source's scheme with its active keys (several, for rotation).
#[derive(Debug)]
pub struct Verifier {
    kind: SchemeKind,
    scheme: Scheme,
    keys: Vec<Key>,
}

impl Verifier {
    /// Prepares a scheme; an error names the secret that cannot be used.
    pub fn new(config: &VerifyConfig) -> Result<Self, String> {
        let keys = config
            .secrets
            .iter()
            .enumerate()
            .map(|(i, s)| match config.scheme {
                SchemeKind::StandardWebhooks => {
                    standard_webhooks_key(s.expose()).map_err(|e| format!("secrets[{i}]: {e}"))
                }
                _ => Ok(s.expose().as_bytes().to_vec()),
            })
            .map(|k| k.map(|bytes| Key(SecretSlice::from(bytes))))
            .collect::<Result<Vec<_>, _>>()?;
        let scheme = match config.scheme {
            SchemeKind::None => Scheme::None,
            SchemeKind::HmacSha256 => Scheme::Hmac {
                header: config.header.clone(),
                prefix: config.prefix.clone(),
                encoding: config.encoding,
                delivery_header: None,
            },
            SchemeKind::Github => Scheme::Hmac {
                header: GITHUB_SIGNATURE.into(),
                prefix: "sha256=".into(),
                encoding: Encoding::Hex,
                delivery_header: Some(GITHUB_DELIVERY),
            },
            SchemeKind::StandardWebhooks => Scheme::StandardWebhooks {
                tolerance: config.tolerance,
            },
            SchemeKind::Token => Scheme::Token {
                header: config.header.clone(),
            },
            SchemeKind::UrlToken => Scheme::UrlToken {
                param: config.param.clone(),
            },
            SchemeKind::Oidc => {
                let oidc = config
                    .oidc
                    .as_ref()
                    .ok_or("the oidc scheme needs `issuer` and `audience`")?;
                Scheme::Oidc(Box::new(Oidc::new(oidc)?))
            }
        };
        Ok(Verifier {
            kind: config.scheme,
            scheme,
            keys,
        })
    }

    /// Which scheme this is.
    pub fn kind(&self) -> SchemeKind {
        self.kind
    }

    /// Verifies a request. Only `oidc` may wait here: on the issuer, for its keys.
    pub async fn verify<'a>(
        &self,
        headers: &'a dyn Headers,
        body: &'a [u8],
    ) -> Result<Verified<'a>, VerifyError> {
        match &self.scheme {
            Scheme::Oidc(oidc) => {
                let token = bearer_token(headers)?;
                let checked = oidc.verify(token, body, unix_now()).await?;
                Ok(Verified {
                    body,
                    delivery_id: checked.delivery_id.map(Cow::Owned),
                    claims: Some(checked.claims),
                })
            }
            _ => self.verify_at(headers, body, unix_now()),
        }
    }

    /// Verifies as if the clock read `now` (Unix seconds), without waiting on
    /// anything: an `oidc` token is checked against the keys already fetched.
    pub fn verify_at<'a>(
        &self,
        headers: &'a dyn Headers,
        body: &'a [u8],
        now: i64,
    ) -> Result<Verified<'a>, VerifyError> {
        let delivery_id = match &self.scheme {
            Scheme::None => None,
            Scheme::Hmac {
                header,
                prefix,
                encoding,
                delivery_header,
            } => {
                let value = required(headers, &[header])?;
                let signature = value
                    .trim()
                    .strip_prefix(prefix.as_str())
                    .and_then(|encoded| decode(encoded.trim(), *encoding))
                    .ok_or_else(|| VerifyError::Malformed(header.clone()))?;
                if !self
                    .keys
                    .iter()
                    .any(|k| hmac_matches(k.bytes(), &[body], &signature))
                {
                    return Err(VerifyError::Mismatch);
                }
                delivery_header.and_then(|h| headers.get(h))
            }
            Scheme::StandardWebhooks { tolerance } => {
                let id = required(headers, &SW_ID)?;
                let timestamp = required(headers, &SW_TIMESTAMP)?;
                let signatures = required(headers, &SW_SIGNATURE)?;
                let ts: i64 = timestamp
                    .trim()
                    .parse()
                    .map_err(|_| VerifyError::Malformed(SW_TIMESTAMP[0].into()))?;
                // abs_diff cannot overflow, whatever the sender put in the header.
                if now.abs_diff(ts) > tolerance.as_secs() {
                    return Err(VerifyError::Stale);
                }
                let signed = standard_webhooks_content(id, timestamp.trim(), body);
                let candidates: Vec<Vec<u8>> = signatures
                    .split_whitespace()
                    .filter_map(|s| s.strip_prefix("v1,"))
                    .filter_map(|b64| BASE64.decode(b64).ok())
                    .collect();
                if candidates.is_empty() {
                    return Err(VerifyError::Malformed(SW_SIGNATURE[0].into()));
                }
                let ok = self.keys.iter().any(|k| {
                    candidates
                        .iter()
                        .any(|sig| hmac_matches(k.bytes(), &signed, sig))
                });
                if !ok {
                    return Err(VerifyError::Mismatch);
                }
                Some(id)
            }
            Scheme::Token { header } => {
                let value = required(headers, &[header])?.trim();
                let token = value.strip_prefix("Bearer ").unwrap_or(value).trim();
                self.known_secret(token.as_bytes())?;
                None
            }
            Scheme::UrlToken { param } => {
                let token = query_param(headers.query(), param)?;
                self.known_secret(token.as_bytes())?;
                None
            }
            Scheme::Oidc(oidc) => {
                let checked = oidc.check(bearer_token(headers)?, body, now)?;
                return Ok(Verified {
                    body,
                    delivery_id: checked.delivery_id.map(Cow::Owned),
                    claims: Some(checked.claims),
                });
            }
        };
        Ok(Verified {
            body,
            delivery_id: delivery_id.map(Cow::Borrowed),
            claims: None,
        })
    }

    /// Whether a presented token is one of the active secrets, in constant time
    /// (`token`, `url-token`).
    fn known_secret(&self, presented: &[u8]) -> Result<(), VerifyError> {
        if self.keys.iter().any(|k| same_secret(k.bytes(), presented)) {
            Ok(())
        } else {
            Err(VerifyError::Mismatch)
        }
    }

    /// For an `oidc` source without an issuer to fetch from (the fuzz targets, tests):
    /// trusts the keys of `jwks` as if fetched. Returns how many it trusts; other
    /// schemes have none.
    pub fn install_jwks(&self, jwks: &[u8]) -> Result<usize, VerifyError> {
        match &self.scheme {
            Scheme::Oidc(oidc) => oidc.install_jwks(jwks),
            _ => Ok(0),
        }
    }

    /// The query parameter and value a `url-token` sender appends to its URL, with
    /// the first secret (for `gantry sign`).
    pub fn query_token(&self) -> Option<(&str, String)> {
        match (&self.scheme, self.keys.first()) {
            (Scheme::UrlToken { param }, Some(key)) => Some((
                param.as_str(),
                String::from_utf8_lossy(key.bytes()).into_owned(),
            )),
            _ => None,
        }
    }

    /// The headers a sender would send with `body`, made with the first secret (for
    /// `gantry sign`). Standard Webhooks also need a message id and a timestamp.
    pub fn sign(&self, body: &[u8], id: &str, now: i64) -> Vec<(String, String)> {
        let Some(key) = self.keys.first() else {
            return Vec::new();
        };
        match &self.scheme {
            // No header: the secret goes in the URL (`query_token`), or the sender's
            // identity provider signs (`oidc`).
            Scheme::None | Scheme::UrlToken { .. } | Scheme::Oidc(_) => Vec::new(),
            Scheme::Hmac {
                header,
                prefix,
                encoding,
                delivery_header,
            } => {
                let tag = hmac_sha256(key.bytes(), &[body]);
                let encoded = match encoding {
                    Encoding::Hex => hex::encode(tag),
                    Encoding::Base64 => BASE64.encode(tag),
                };
                let mut out = vec![(header.clone(), format!("{prefix}{encoded}"))];
                if let Some(h) = delivery_header {
                    out.push((h.to_string(), id.to_string()));
                }
                out
            }
            Scheme::StandardWebhooks { .. } => {
                let ts = now.to_string();
                let tag = standard_webhooks_tag(key.bytes(), id, &ts, body);
                vec![
                    (SW_ID[0].into(), id.to_string()),
                    (SW_TIMESTAMP[0].into(), ts),
                    (SW_SIGNATURE[0].into(), format!("v1,{}", BASE64.encode(tag))),
                ]
            }
            Scheme::Token { header } => vec![(
                header.clone(),
                String::from_utf8_lossy(key.bytes()).into_owned(),
            )],
        }
    }
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The first of `names` present, or which one is missing.
fn required<'h>(headers: &'h dyn Headers, names: &[&str]) -> Result<&'h str, VerifyError> {
    names
        .iter()
        .find_map(|n| headers.get(n))
        .ok_or_else(|| VerifyError::MissingHeader(names[0].to_string()))
}

/// The token of `Authorization: Bearer <token>` (the scheme name in any case).
fn bearer_token(headers: &dyn Headers) -> Result<&str, VerifyError> {
    let value = required(headers, &[AUTHORIZATION])?.trim();
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(VerifyError::Malformed(AUTHORIZATION.into())),
    }
}

/// The one value of `param` in a query string, percent-decoded. Given twice, it is
/// refused: which of two tokens counts would be up to whoever reads the URL.
fn query_param<'q>(query: &'q str, param: &str) -> Result<Cow<'q, str>, VerifyError> {
    let mut values = form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == param)
        .map(|(_, v)| v);
    match (values.next(), values.next()) {
        (Some(v), None) => Ok(v),
        (None, _) => Err(VerifyError::MissingParam(param.to_string())),
        (Some(_), Some(_)) => Err(VerifyError::RepeatedParam(param.to_string())),
    }
}

fn decode(encoded: &str, encoding: Encoding) -> Option<Vec<u8>> {
    match encoding {
        // `hex` accepts both cases: signatures are compared as bytes.
        Encoding::Hex => hex::decode(encoded).ok(),
        Encoding::Base64 => BASE64.decode(encoded).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use proptest::prelude::*;

    fn verifier(
        scheme: SchemeKind,
        prefix: &str,
        encoding: Encoding,
        secrets: &[&str],
    ) -> Verifier {
        Verifier::new(&VerifyConfig {
            scheme,
            header: "X-Sig".into(),
            prefix: prefix.into(),
            encoding,
            secrets: secrets.iter().map(|s| Secret::new(*s)).collect(),
            tolerance: Duration::from_secs(300),
            param: crate::config::DEFAULT_TOKEN_PARAM.into(),
            oidc: None,
        })
        .unwrap()
    }

    impl Verifier {
        /// The schemes these tests try wait on nothing: verified at once, now.
        fn verify_now<'a>(
            &self,
            headers: &'a dyn Headers,
            body: &'a [u8],
        ) -> Result<Verified<'a>, VerifyError> {
            self.verify_at(headers, body, unix_now())
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// GitHub's published vector ("Validating webhook deliveries").
    const GH_SECRET: &str = "It's a Secret to Everybody";
    const GH_SIG: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn github_vector_verifies_and_carries_the_delivery_id() {
        let v = verifier(SchemeKind::Github, "", Encoding::Hex, &[GH_SECRET]);
        let h = headers(&[
            ("X-Hub-Signature-256", GH_SIG),
            ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ]);
        let ok = v.verify_now(&h, b"Hello, World!").unwrap();
        assert_eq!(
            ok.delivery_id(),
            Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
        );
        assert_eq!(
            v.verify_now(&h, b"Hello, World?").unwrap_err(),
            VerifyError::Mismatch
        );
    }

    #[test]
    fn hmac_hex_any_case_prefix_and_whitespace() {
        let v = verifier(
            SchemeKind::HmacSha256,
            "sha256=",
            Encoding::Hex,
            &[GH_SECRET],
        );
        let upper = format!("sha256={}", GH_SIG[7..].to_uppercase());
        let padded = format!("  {GH_SIG} ");
        for sig in [GH_SIG, upper.as_str(), padded.as_str()] {
            assert!(
                v.verify_now(&headers(&[("x-sig", sig)]), b"Hello, World!")
                    .is_ok(),
                "{sig}"
            );
        }
        assert_eq!(
            v.verify_now(&headers(&[("X-Sig", &GH_SIG[7..])]), b"Hello, World!")
                .unwrap_err(),
            VerifyError::Malformed("X-Sig".into())
        );
        assert_eq!(
            v.verify_now(&headers(&[("X-Sig", "SHA256=00")]), b"x")
                .unwrap_err(),
            VerifyError::Malformed("X-Sig".into())
        );
        assert_eq!(
            v.verify_now(&Vec::new(), b"x").unwrap_err(),
            VerifyError::MissingHeader("X-Sig".into())
        );
    }

    /// Standard Webhooks' published vectors: (secret, id, timestamp, body, signature).
    const SW_VECTORS: [(&str, &str, i64, &str, &str); 2] = [
        (
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ),
        (
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            r#"{"email":"test@example.com","username":"test_user"}"#,
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
        ),
    ];

    fn sw_headers(prefix: &str, id: &str, ts: &str, sig: &str) -> Vec<(String, String)> {
        headers(&[
            (&format!("{prefix}-id"), id),
            (&format!("{prefix}-timestamp"), ts),
            (&format!("{prefix}-signature"), sig),
        ])
    }

    #[test]
    fn standard_webhooks_vectors_verify_within_the_tolerance_only() {
        for (secret, id, ts, body, sig) in SW_VECTORS {
            let v = verifier(SchemeKind::StandardWebhooks, "", Encoding::Hex, &[secret]);
            for prefix in ["webhook", "svix"] {
                let h = sw_headers(prefix, id, &ts.to_string(), sig);
                let ok = v.verify_at(&h, body.as_bytes(), ts).unwrap();
                assert_eq!(ok.delivery_id(), Some(id));
                assert!(v.verify_at(&h, body.as_bytes(), ts + 300).is_ok());
                assert_eq!(
                    v.verify_at(&h, body.as_bytes(), ts + 301).unwrap_err(),
                    VerifyError::Stale
                );
                assert_eq!(
                    v.verify_at(&h, body.as_bytes(), ts - 301).unwrap_err(),
                    VerifyError::Stale
                );
            }
        }
    }

    #[test]
    fn standard_webhooks_accepts_any_of_several_signatures_and_secrets() {
        let (secret, id, ts, body, sig) = SW_VECTORS[0];
        let rotated = verifier(
            SchemeKind::StandardWebhooks,
            "",
            Encoding::Hex,
            &["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD", secret],
        );
        let several = format!("v1,bm90IGl0 v2,xyz {sig}");
        let h = sw_headers("webhook", id, &ts.to_string(), &several);
        assert!(rotated.verify_at(&h, body.as_bytes(), ts).is_ok());
        let retired = verifier(
            SchemeKind::StandardWebhooks,
            "",
            Encoding::Hex,
            &["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"],
        );
        assert_eq!(
            retired.verify_at(&h, body.as_bytes(), ts).unwrap_err(),
            VerifyError::Mismatch
        );
    }

    #[test]
    fn absurd_timestamps_are_refused_not_overflowed() {
        let (secret, id, _, body, sig) = SW_VECTORS[0];
        let v = verifier(SchemeKind::StandardWebhooks, "", Encoding::Hex, &[secret]);
        let now = 1_700_000_000;
        for ts in ["-9223372036854775808", "9223372036854775807", "0", "-1"] {
            let h = sw_headers("webhook", id, ts, sig);
            assert_eq!(
                v.verify_at(&h, body.as_bytes(), now).unwrap_err(),
                VerifyError::Stale,
                "{ts}"
            );
            // Whatever the clock reads, the comparison cannot overflow.
            for clock in [i64::MIN, i64::MAX] {
                assert!(v.verify_at(&h, body.as_bytes(), clock).is_err());
            }
        }
        for ts in ["", "1e9", "99999999999999999999", "12 34", "0x10"] {
            let h = sw_headers("webhook", id, ts, sig);
            assert_eq!(
                v.verify_at(&h, body.as_bytes(), 0).unwrap_err(),
                VerifyError::Malformed("webhook-timestamp".into()),
                "{ts}"
            );
        }
    }

    #[test]
    fn a_bad_standard_webhooks_secret_is_a_config_error() {
        let e = Verifier::new(&VerifyConfig {
            scheme: SchemeKind::StandardWebhooks,
            header: String::new(),
            prefix: String::new(),
            encoding: Encoding::Hex,
            secrets: vec![Secret::new("whsec_***")],
            tolerance: Duration::from_secs(300),
            param: crate::config::DEFAULT_TOKEN_PARAM.into(),
            oidc: None,
        })
        .unwrap_err();
        assert!(e.starts_with("secrets[0]:"), "{e}");
    }

    #[test]
    fn any_listed_secret_verifies_and_a_retired_one_does_not() {
        let old = verifier(SchemeKind::HmacSha256, "", Encoding::Base64, &["old"]);
        let both = verifier(
            SchemeKind::HmacSha256,
            "",
            Encoding::Base64,
            &["new", "old"],
        );
        let signed = old.sign(b"body", "", 0);
        assert!(both.verify_now(&signed, b"body").is_ok());
        let retired = verifier(SchemeKind::HmacSha256, "", Encoding::Base64, &["new"]);
        assert!(retired.verify_now(&signed, b"body").is_err());
    }

    #[test]
    fn token_with_or_without_bearer() {
        let v = verifier(SchemeKind::Token, "", Encoding::Hex, &["s3cret", "next"]);
        assert!(v.verify_now(&headers(&[("X-Sig", "s3cret")]), b"").is_ok());
        assert!(
            v.verify_now(&headers(&[("X-Sig", "Bearer next")]), b"")
                .is_ok()
        );
        assert_eq!(
            v.verify_now(&headers(&[("X-Sig", "s3cre")]), b"")
                .unwrap_err(),
            VerifyError::Mismatch
        );
    }

    /// A request to a `url-token` source: its query string only.
    struct Query(&'static str);

    impl Headers for Query {
        fn get(&self, _: &str) -> Option<&str> {
            None
        }
        fn query(&self) -> &str {
            self.0
        }
    }

    #[test]
    fn url_token_reads_one_decoded_query_parameter() {
        let v = verifier(SchemeKind::UrlToken, "", Encoding::Hex, &["a b+&", "next"]);
        for ok in ["token=a+b%2B%26", "x=1&token=a%20b%2B%26&y", "token=next"] {
            assert!(v.verify_now(&Query(ok), b"").is_ok(), "{ok}");
        }
        let refused = [
            ("", VerifyError::MissingParam("token".into())),
            ("tokens=next", VerifyError::MissingParam("token".into())),
            ("token=a b+&", VerifyError::Mismatch),
            ("token=nex", VerifyError::Mismatch),
            ("token=", VerifyError::Mismatch),
            (
                "token=next&token=next",
                VerifyError::RepeatedParam("token".into()),
            ),
        ];
        for (query, error) in refused {
            assert_eq!(
                v.verify_now(&Query(query), b"").unwrap_err(),
                error,
                "{query}"
            );
        }
        // Headers alone carry no query.
        assert!(v.verify_now(&headers(&[("token", "next")]), b"").is_err());
        assert_eq!(v.query_token(), Some(("token", "a b+&".to_string())));
        assert!(v.sign(b"", "", 0).is_empty());
    }

    proptest! {
        #[test]
        fn hmac_sign_then_verify_round_trips(body in proptest::collection::vec(any::<u8>(), 0..256),
                                             secret in "[ -~]{1,40}", base64 in any::<bool>()) {
            let enc = if base64 { Encoding::Base64 } else { Encoding::Hex };
            let v = verifier(SchemeKind::HmacSha256, "sha256=", enc, &[&secret]);
            let signed = v.sign(&body, "", 0);
            prop_assert!(v.verify_now(&signed, &body).is_ok());
            let mut tampered = body.clone();
            tampered.push(0);
            prop_assert!(v.verify_now(&signed, &tampered).is_err());
        }

        #[test]
        fn standard_webhooks_sign_then_verify_round_trips(body in proptest::collection::vec(any::<u8>(), 0..256),
                                                          key in proptest::collection::vec(any::<u8>(), 1..48),
                                                          id in "[a-zA-Z0-9_]{1,30}",
                                                          now in 0i64..4_000_000_000, skew in -300i64..=300) {
            let secret = format!("whsec_{}", BASE64.encode(&key));
            let v = verifier(SchemeKind::StandardWebhooks, "", Encoding::Hex, &[&secret]);
            let signed = v.sign(&body, &id, now);
            prop_assert!(v.verify_at(&signed, &body, now + skew).is_ok());
            prop_assert_eq!(v.verify_at(&signed, &body, now + 301).unwrap_err(), VerifyError::Stale);
        }
    }
}
