//! The `oidc` scheme (SPEC §16): senders without a shared secret present a JWT that
//! an identity provider gantry trusts signed for them (GitHub Actions, GitLab CI
//! `id_tokens`, Google Pub/Sub push, any OIDC issuer).
//!
//! The signature checks are `jsonwebtoken`'s: it is the most used JWT crate in Rust,
//! its verifier refuses a key of another family than the algorithm (so an HMAC
//! "signature" made with a public key cannot pass), it has no `none` algorithm at
//! all, it reads JWKs into keys, and its `aws_lc_rs` backend is the aws-lc that
//! rustls already brings into gantry, so it adds no second crypto library. Around it,
//! this module decides what the library cannot: which algorithms and keys are
//! trusted (RS256, ES256 on P-256, EdDSA on Ed25519, from the issuer's JWKS only,
//! never from the token's own `jwk`, `jku` or `x5u`), where the keys come from, how
//! long they are kept, and what the claims must say.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::Url;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::VerifyError;
use crate::config::{OidcConfig, key_url_allowed};
use crate::rules::Matcher;
use crate::targets::body::{JSON_LIMIT, read_within};

/// The only algorithms a token may be signed with.
const ACCEPTED: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// Keys are fetched again at most this often, whatever tokens arrive: a token naming
/// an unknown key cannot make gantry hammer the issuer.
const MIN_REFRESH: Duration = Duration::from_secs(60);
/// Keys older than this are fetched again at the next token, so that a key the issuer
/// withdrew stops being trusted.
const MAX_KEY_AGE: Duration = Duration::from_secs(3600);
/// The most keys kept from one JWKS: a token without `kid` is tried against every key
/// of its algorithm, and that work must stay small.
const MAX_KEYS: usize = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_REDIRECTS: usize = 3;

/// One trusted public key and the one algorithm it verifies.
struct PublicKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The issuer's keys as last fetched.
#[derive(Default)]
struct KeySet {
    keys: Vec<PublicKey>,
    fetched_at: Option<Instant>,
}

impl KeySet {
    fn fresh(&self) -> bool {
        !self.keys.is_empty() && self.fetched_at.is_some_and(|t| t.elapsed() < MAX_KEY_AGE)
    }
}

/// When keys were last fetched (or tried), and why that failed.
#[derive(Default)]
struct Refresh {
    tried_at: Option<Instant>,
    error: Option<String>,
}

/// What a token that passed vouches for.
#[derive(Debug)]
pub(super) struct Checked {
    /// Every claim of the token (a JSON object).
    pub claims: Value,
    /// The hash of `jti` with the body, when the token has a `jti`.
    pub delivery_id: Option<String>,
}

/// One `oidc` source's trust: the issuer, the audience, the claims required, and
/// the issuer's keys, fetched when first needed and shared by every request.
pub(super) struct Oidc {
    issuer: String,
    audience: String,
    discovery_url: Url,
    jwks_url: Option<Url>,
    leeway: i64,
    claims: Vec<(String, Matcher)>,
    http: reqwest::Client,
    keys: RwLock<Arc<KeySet>>,
    refresh: tokio::sync::Mutex<Refresh>,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("keys", &self.current().keys.len())
            .finish_non_exhaustive()
    }
}

impl Oidc {
    /// Prepares the scheme: URLs parsed, claim matchers compiled, an HTTP client
    /// bounded in time and redirects. Nothing is fetched yet (`gantry check` makes
    /// no request).
    pub(super) fn new(config: &OidcConfig) -> Result<Self, String> {
        // The crate picks its crypto backend from its features; say which, so that
        // another crate turning on the other backend cannot leave it undecided.
        if jsonwebtoken::crypto::CryptoProvider::try_get_default().is_none() {
            let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
        }
        let issuer_url = parse_key_url("issuer", &config.issuer)?;
        let discovery_url = Url::parse(&format!(
            "{}/.well-known/openid-configuration",
            issuer_url.as_str().trim_end_matches('/')
        ))
        .map_err(|e| format!("issuer: no discovery document URL under it ({e})"))?;
        let jwks_url = config
            .jwks_url
            .as_deref()
            .map(|u| parse_key_url("jwks_url", u))
            .transpose()?;
        let claims = config
            .claims
            .iter()
            .map(|(pointer, spec)| {
                Matcher::compile(spec.patterns())
                    .map(|m| (pointer.clone(), m))
                    .map_err(|e| format!("claims.{pointer}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                if attempt.previous().len() >= MAX_REDIRECTS {
                    attempt.error("too many redirects")
                } else if key_url_allowed(attempt.url()).is_err() {
                    attempt.error("a redirect away from https")
                } else {
                    attempt.follow()
                }
            }))
            .build()
            .map_err(|e| format!("cannot build the HTTP client for the issuer: {e}"))?;
        Ok(Oidc {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            discovery_url,
            jwks_url,
            leeway: i64::try_from(config.leeway.as_secs()).unwrap_or(i64::MAX),
            claims,
            http,
            keys: RwLock::new(Arc::new(KeySet::default())),
            refresh: tokio::sync::Mutex::new(Refresh::default()),
        })
    }

    fn current(&self) -> Arc<KeySet> {
        // Replaced whole, never written in place: a poisoned lock still holds a set.
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Verifies `token` for a request with `body`, fetching the issuer's keys when
    /// none are known yet, when they are old, or when the token names a key not
    /// among them (at most once a minute).
    pub(super) async fn verify(
        &self,
        token: &str,
        body: &[u8],
        now: i64,
    ) -> Result<Checked, VerifyError> {
        // A token that is not even a well-formed JWT of an accepted algorithm costs
        // no fetch.
        let header = token_header(token)?;
        let mut keys = self.current();
        if !keys.fresh() {
            keys = self.refresh(&keys).await?;
        }
        match self.check_with(token, &header, &keys, body, now) {
            Err(VerifyError::UnknownKey) => {
                let newer = self.refresh(&keys).await?;
                self.check_with(token, &header, &newer, body, now)
            }
            other => other,
        }
    }

    /// Verifies `token` against the keys already fetched, without any request (the
    /// fuzz targets, and `verify_at`).
    pub(super) fn check(&self, token: &str, body: &[u8], now: i64) -> Result<Checked, VerifyError> {
        let header = token_header(token)?;
        self.check_with(token, &header, &self.current(), body, now)
    }

    /// Installs a JWKS as if fetched: for the fuzz targets and tests, which have no
    /// issuer to fetch from. Returns how many keys it holds that gantry trusts.
    pub(super) fn install_jwks(&self, jwks: &[u8]) -> Result<usize, VerifyError> {
        let keys = parse_jwks(jwks).map_err(VerifyError::KeysUnavailable)?;
        let n = keys.len();
        self.install(keys);
        Ok(n)
    }

    fn install(&self, keys: Vec<PublicKey>) -> Arc<KeySet> {
        let set = Arc::new(KeySet {
            keys,
            fetched_at: Some(Instant::now()),
        });
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = set.clone();
        set
    }

    fn check_with(
        &self,
        token: &str,
        header: &jsonwebtoken::Header,
        keys: &KeySet,
        body: &[u8],
        now: i64,
    ) -> Result<Checked, VerifyError> {
        let candidates: Vec<&PublicKey> = keys
            .keys
            .iter()
            .filter(|k| k.alg == header.alg)
            .filter(|k| header.kid.is_none() || k.kid == header.kid)
            .collect();
        if candidates.is_empty() {
            return Err(VerifyError::UnknownKey);
        }
        let mut validation = Validation::new(header.alg);
        // `exp`, `nbf` and `iat` are checked below against `now`, with the leeway.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims = HashSet::from(["iss".to_string(), "aud".to_string()]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        let mut outcome = Err(VerifyError::BadSignature);
        for key in candidates {
            outcome = jsonwebtoken::decode::<Value>(token, &key.key, &validation)
                .map(|data| data.claims)
                .map_err(|e| refusal(e.kind()));
            if !matches!(outcome, Err(VerifyError::BadSignature)) {
                break;
            }
        }
        let claims = outcome?;
        if !claims.is_object() {
            return Err(VerifyError::Token("its claims are not a JSON object"));
        }
        self.check_times(&claims, now)?;
        for (pointer, matcher) in &self.claims {
            if !matcher.matches_json(claims.pointer(pointer), &mut Vec::new()) {
                return Err(VerifyError::Claim(pointer.clone()));
            }
        }
        let delivery_id = claims
            .get("jti")
            .and_then(Value::as_str)
            .map(|jti| delivery_id(jti, body));
        Ok(Checked {
            claims,
            delivery_id,
        })
    }

    /// `exp` is required and not past; `nbf` and `iat`, when present, not ahead; each
    /// with the leeway, in whole seconds (NumericDate may carry a fraction).
    fn check_times(&self, claims: &Value, now: i64) -> Result<(), VerifyError> {
        let time = |name: &'static str| -> Result<Option<i64>, VerifyError> {
            match claims.get(name) {
                None => Ok(None),
                Some(v) => v
                    .as_i64()
                    .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
                    .map(Some)
                    .ok_or(VerifyError::ClaimFormat(name)),
            }
        };
        let exp = time("exp")?.ok_or(VerifyError::MissingClaim("exp"))?;
        if now > exp.saturating_add(self.leeway) {
            return Err(VerifyError::Expired);
        }
        for name in ["nbf", "iat"] {
            if time(name)?.is_some_and(|t| t > now.saturating_add(self.leeway)) {
                return Err(VerifyError::NotYetValid(name));
            }
        }
        Ok(())
    }

    /// Fetches the keys again unless another request just did (then its keys are
    /// used) or the last try was less than [`MIN_REFRESH`] ago. A failed fetch
    /// keeps the keys already held; with none, the request is refused, saying why.
    async fn refresh(&self, seen: &Arc<KeySet>) -> Result<Arc<KeySet>, VerifyError> {
        let mut refresh = self.refresh.lock().await;
        let current = self.current();
        if !Arc::ptr_eq(&current, seen) {
            return Ok(current);
        }
        if refresh.tried_at.is_some_and(|t| t.elapsed() < MIN_REFRESH) {
            return match &refresh.error {
                Some(why) if current.keys.is_empty() => Err(VerifyError::KeysUnavailable(format!(
                    "{why} (tried again at most once a minute)"
                ))),
                _ => Ok(current),
            };
        }
        refresh.tried_at = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                refresh.error = None;
                Ok(self.install(keys))
            }
            Err(why) => {
                tracing::warn!(issuer = %self.issuer, error = %why, "cannot fetch the OIDC issuer's keys");
                refresh.error = Some(why.clone());
                if current.keys.is_empty() {
                    Err(VerifyError::KeysUnavailable(why))
                } else {
                    Ok(current)
                }
            }
        }
    }

    /// The JWKS, from `jwks_url` or from where the discovery document says.
    async fn fetch(&self) -> Result<Vec<PublicKey>, String> {
        let jwks_url = match &self.jwks_url {
            Some(url) => url.clone(),
            None => self.discover().await?,
        };
        parse_jwks(&self.get(&jwks_url, "the JWKS").await?)
    }

    /// The `jwks_uri` of the issuer's discovery document, whose `issuer` must be the
    /// one configured (OpenID Connect Discovery §4.3).
    async fn discover(&self) -> Result<Url, String> {
        #[derive(Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let bytes = self
            .get(&self.discovery_url, "the discovery document")
            .await?;
        let doc: Discovery = serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "the discovery document at {} is not one: {e}",
                self.discovery_url
            )
        })?;
        if doc.issuer != self.issuer {
            return Err(format!(
                "the discovery document at {} names another issuer",
                self.discovery_url
            ));
        }
        parse_key_url("the discovery document's jwks_uri", &doc.jwks_uri)
    }

    /// A document, read within [`JSON_LIMIT`] whatever its `Content-Length` says.
    async fn get(&self, url: &Url, what: &str) -> Result<Vec<u8>, String> {
        let what = format!("{what} at {url}");
        let response = self
            .http
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("{what} could not be fetched ({})", root_cause(&e)))?;
        if !response.status().is_success() {
            return Err(format!("{what} answered {}", response.status()));
        }
        read_within(response, JSON_LIMIT, &what)
            .await
            .map_err(|e| e.to_string())
    }
}

/// The innermost cause of a failed fetch ("Connection refused", "operation timed
/// out"): what an operator can act on, where reqwest's own message only says that
/// sending failed.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// A URL gantry may fetch an issuer's documents from, or why not.
fn parse_key_url(what: &str, url: &str) -> Result<Url, String> {
    let parsed = Url::parse(url).map_err(|e| format!("{what}: `{url}` is not a URL ({e})"))?;
    key_url_allowed(&parsed).map_err(|why| format!("{what}: {why}"))?;
    Ok(parsed)
}

/// The token's header, if the token is a JWT signed with an accepted algorithm
/// and asks for no extension gantry does not know (`crit`).
fn token_header(token: &str) -> Result<jsonwebtoken::Header, VerifyError> {
    // An unknown `alg`, `none` among them, does not parse into the crate's
    // `Algorithm`: such a token is refused here.
    let header = jsonwebtoken::decode_header(token)
        .map_err(|_| VerifyError::Token("it is not a JWT signed with RS256, ES256 or EdDSA"))?;
    if !ACCEPTED.contains(&header.alg) {
        return Err(VerifyError::Algorithm(format!("{:?}", header.alg)));
    }
    if header.crit.is_some() {
        return Err(VerifyError::Token(
            "it requires extensions (`crit`) gantry does not understand",
        ));
    }
    Ok(header)
}

/// What the crate's refusal means for the sender, in words of gantry's own: its
/// messages can quote the token.
fn refusal(kind: &ErrorKind) -> VerifyError {
    match kind {
        ErrorKind::InvalidSignature => VerifyError::BadSignature,
        ErrorKind::InvalidIssuer => VerifyError::Issuer,
        ErrorKind::InvalidAudience => VerifyError::Audience,
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => VerifyError::MissingClaim("iss"),
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => VerifyError::MissingClaim("aud"),
        ErrorKind::InvalidClaimFormat(c) if c == "iss" => VerifyError::ClaimFormat("iss"),
        ErrorKind::InvalidClaimFormat(c) if c == "aud" => VerifyError::ClaimFormat("aud"),
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            VerifyError::Token("its algorithm does not fit the issuer's key")
        }
        _ => VerifyError::Token("it is not a well-formed JWT"),
    }
}

/// The keys of a JWKS that gantry trusts, the rest left out: symmetric keys (a
/// published "secret" is no secret), other curves, keys not for signatures. A key
/// that names its algorithm serves only that one.
fn parse_jwks(bytes: &[u8]) -> Result<Vec<PublicKey>, String> {
    #[derive(Deserialize)]
    struct Jwks {
        keys: Vec<Value>,
    }
    let jwks: Jwks = serde_json::from_slice(bytes)
        .map_err(|e| format!("the JWKS is not a JSON Web Key Set: {e}"))?;
    let keys: Vec<PublicKey> = jwks
        .keys
        .into_iter()
        .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
        .filter_map(|jwk| public_key(&jwk))
        .take(MAX_KEYS)
        .collect();
    if keys.is_empty() {
        return Err("the JWKS holds no RS256, ES256 (P-256) or EdDSA (Ed25519) signing key".into());
    }
    Ok(keys)
}

fn public_key(jwk: &Jwk) -> Option<PublicKey> {
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    if let Some(named) = jwk.common.key_algorithm
        && named.to_string() != format!("{alg:?}")
    {
        return None;
    }
    Some(PublicKey {
        kid: jwk.common.key_id.clone(),
        alg,
        key: DecodingKey::from_jwk(jwk).ok()?,
    })
}

/// A replayed request (same token, same body) is the same delivery; another body
/// under the same token is another. The length prefix keeps `jti` and body apart.
fn delivery_id(jti: &str, body: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update((jti.len() as u64).to_be_bytes());
    hash.update(jti.as_bytes());
    hash.update(body);
    format!("jti-sha256:{}", hex::encode(hash.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;
    use std::collections::BTreeMap;

    const ISSUER: &str = "https://issuer.example.com";
    const NOW: i64 = 1_700_000_000;

    fn oidc(claims: &[(&str, &str)]) -> Oidc {
        Oidc::new(&OidcConfig {
            issuer: ISSUER.into(),
            audience: "gantry".into(),
            jwks_url: None,
            leeway: Duration::from_secs(60),
            claims: claims
                .iter()
                .map(|(p, m)| (p.to_string(), crate::config::OneOrMany::One(m.to_string())))
                .collect::<BTreeMap<_, _>>(),
        })
        .unwrap()
    }

    /// A P-256 key: the signing half, and its JWK under `kid`.
    fn es256(kid: &str) -> (EncodingKey, Value) {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let key = EncodingKey::from_ec_der(pair.to_pkcs8v1().unwrap().as_ref());
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
        jwk.common.key_id = Some(kid.into());
        (key, serde_json::to_value(jwk).unwrap())
    }

    fn sign(key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    fn claims() -> Value {
        json!({ "iss": ISSUER, "aud": "gantry", "exp": NOW + 300, "iat": NOW, "repository": "acme/api" })
    }

    #[test]
    fn only_signing_keys_of_the_accepted_kinds_are_kept() {
        let (_, ec) = es256("ec");
        let mut named_other = ec.clone();
        named_other["alg"] = json!("ES384");
        let mut for_encryption = ec.clone();
        for_encryption["use"] = json!("enc");
        let mut p384 = ec.clone();
        p384["crv"] = json!("P-384");
        let jwks = json!({ "keys": [
            { "kty": "oct", "k": "c2VjcmV0", "kid": "hmac" },
            named_other, for_encryption, p384,
            { "kty": "RSA", "kid": "broken" },
            "not a key",
            ec,
        ]});
        let keys = parse_jwks(jwks.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(
            (keys[0].kid.as_deref(), keys[0].alg),
            (Some("ec"), Algorithm::ES256)
        );
        let only_hmac = json!({ "keys": [{ "kty": "oct", "k": "c2VjcmV0" }] });
        assert!(parse_jwks(only_hmac.to_string().as_bytes()).is_err());
        for junk in [&b"[]"[..], b"{}", b"{\"keys\":{}}", b"\xff"] {
            assert!(parse_jwks(junk).is_err());
        }
        let many: Vec<Value> = (0..MAX_KEYS + 10)
            .map(|i| {
                let mut k = keys_jwk(&keys[0]);
                k["kid"] = json!(i.to_string());
                k
            })
            .collect();
        let kept = parse_jwks(json!({ "keys": many }).to_string().as_bytes()).unwrap();
        assert_eq!(kept.len(), MAX_KEYS);
    }

    fn keys_jwk(key: &PublicKey) -> Value {
        serde_json::to_value(Jwk::from_decoding_key(&key.key, Some(key.alg)).unwrap()).unwrap()
    }

    #[test]
    fn headers_of_other_algorithms_or_with_critical_extensions_are_refused() {
        let b64 = |v: &Value| {
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                v.to_string(),
            )
        };
        let token = |header: Value| format!("{}.{}.sig", b64(&header), b64(&claims()));
        for alg in ["none", "HS256", "RS384", "PS256", "ES384", "ES256K"] {
            assert!(
                token_header(&token(json!({ "alg": alg }))).is_err(),
                "{alg}"
            );
        }
        assert_eq!(
            token_header(&token(json!({ "alg": "HS256" }))).unwrap_err(),
            VerifyError::Algorithm("HS256".into())
        );
        assert!(token_header(&token(json!({ "alg": "ES256", "crit": ["b64"] }))).is_err());
        assert!(token_header(&token(json!({ "alg": "ES256" }))).is_ok());
    }

    #[test]
    fn times_are_checked_against_now_with_the_leeway() {
        let o = oidc(&[]);
        let (key, jwk) = es256("k");
        assert_eq!(
            o.install_jwks(json!({ "keys": [jwk] }).to_string().as_bytes()),
            Ok(1)
        );
        let at = |exp: i64, nbf: Option<i64>, now: i64| {
            let mut c = claims();
            c["exp"] = json!(exp);
            if let Some(nbf) = nbf {
                c["nbf"] = json!(nbf);
            }
            o.check(&sign(&key, Some("k"), &c), b"", now).map(|_| ())
        };
        assert_eq!(at(NOW, None, NOW + 60), Ok(()));
        assert_eq!(at(NOW, None, NOW + 61), Err(VerifyError::Expired));
        assert_eq!(at(NOW + 300, Some(NOW + 60), NOW), Ok(()));
        assert_eq!(
            at(NOW + 300, Some(NOW + 61), NOW),
            Err(VerifyError::NotYetValid("nbf"))
        );
        // NumericDate may have a fraction; a string is not one.
        let mut c = claims();
        c["exp"] = json!(NOW as f64 + 0.5);
        assert!(o.check(&sign(&key, Some("k"), &c), b"", NOW).is_ok());
        c["exp"] = json!("soon");
        assert_eq!(
            o.check(&sign(&key, Some("k"), &c), b"", NOW).unwrap_err(),
            VerifyError::ClaimFormat("exp")
        );
        // At an absurd clock nothing overflows.
        for now in [i64::MIN, i64::MAX] {
            assert!(
                o.check(&sign(&key, Some("k"), &claims()), b"", now)
                    .is_err()
            );
        }
    }

    #[test]
    fn a_token_without_kid_is_tried_against_each_key_of_its_algorithm() {
        let o = oidc(&[("/repository", "acme/*")]);
        let (key, jwk) = es256("a");
        let (_, other) = es256("b");
        o.install_jwks(json!({ "keys": [other, jwk] }).to_string().as_bytes())
            .unwrap();
        let checked = o.check(&sign(&key, None, &claims()), b"", NOW).unwrap();
        assert_eq!(checked.claims["repository"], "acme/api");
        assert_eq!(checked.delivery_id, None);
        let mut c = claims();
        c["repository"] = json!("evil/api");
        assert_eq!(
            o.check(&sign(&key, None, &c), b"", NOW).unwrap_err(),
            VerifyError::Claim("/repository".into())
        );
    }

    #[test]
    fn the_delivery_is_the_token_id_with_the_body_unambiguously() {
        assert_eq!(delivery_id("j", b"body"), delivery_id("j", b"body"));
        assert_ne!(delivery_id("j", b"body"), delivery_id("j", b"body2"));
        assert_ne!(delivery_id("ab", b"c"), delivery_id("a", b"bc"));
    }

    #[test]
    fn issuer_urls_must_be_https_or_loopback_http() {
        for ok in [
            "https://token.actions.githubusercontent.com",
            "http://127.0.0.1:8080",
            "http://localhost/x",
            "http://[::1]:1/",
        ] {
            assert!(parse_key_url("issuer", ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://issuer.example.com",
            "http://10.0.0.1",
            "ftp://x",
            "file:///etc/jwks",
            "https://",
            "issuer",
        ] {
            assert!(parse_key_url("issuer", bad).is_err(), "{bad}");
        }
        let o = oidc(&[]);
        assert_eq!(
            o.discovery_url.as_str(),
            "https://issuer.example.com/.well-known/openid-configuration"
        );
    }
}
