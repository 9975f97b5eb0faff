//! What the fuzz targets share: an arbitrary request and the source it is offered to.
// Each target uses one half of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gantry::config::{
    Encoding, Field, Format, OidcConfig, OneOrMany, SchemeKind, Secret, SourceConfig, VerifyConfig,
};
use gantry::ingest::{Headers, Normalizer, Verified, Verifier};
use libfuzzer_sys::arbitrary::{self, Arbitrary};

/// Headers named by the schemes and formats, so the fuzzer reaches past "missing".
const NAMES: [&str; 15] = [
    "X-Signature",
    "X-Hub-Signature-256",
    "X-GitHub-Delivery",
    "X-GitHub-Event",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "svix-signature",
    "Authorization",
    "X-Event",
    "Content-Type",
    "ce-specversion",
    "ce-id",
    "ce-source",
    "ce-type",
];

#[derive(Debug, Arbitrary)]
pub struct Request<'a> {
    headers: Vec<(u8, &'a str)>,
    /// The URL's query string (read by `url-token` only).
    query: &'a str,
    body: &'a [u8],
    now: i64,
}

impl Request<'_> {
    fn headers(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .map(|(n, v)| (NAMES[*n as usize % NAMES.len()].to_string(), v.to_string()))
            .collect()
    }
}

/// What a verifier reads of a request: its headers and its query string.
struct Presented<'a> {
    headers: Vec<(String, String)>,
    query: &'a str,
}

impl Headers for Presented<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    fn query(&self) -> &str {
        self.query
    }
}

fn source(scheme: SchemeKind, format: Format) -> SourceConfig {
    let secret = match scheme {
        SchemeKind::StandardWebhooks => "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        _ => "fuzz-secret",
    };
    SourceConfig {
        name: "fuzz".into(),
        format,
        verify: VerifyConfig {
            scheme,
            header: match scheme {
                SchemeKind::Token => "Authorization".into(),
                _ => "X-Signature".into(),
            },
            prefix: "sha256=".into(),
            encoding: Encoding::Hex,
            secrets: vec![Secret::new(secret), Secret::new("rotated")],
            tolerance: Duration::from_secs(300),
            param: "token".into(),
            oidc: None,
        },
        fields: BTreeMap::from([(Field::Tag, "/release/tag_name".to_string())]),
        type_header: (format == Format::Generic).then(|| "X-Event".to_string()),
        delivery_header: None,
    }
}

pub fn verify(scheme: SchemeKind, input: &Request<'_>) {
    let Ok(verifier) = Verifier::new(&source(scheme, Format::Generic).verify) else {
        return;
    };
    let presented = Presented {
        headers: input.headers(),
        query: input.query,
    };
    let _ = verifier.verify_at(&presented, input.body, input.now);
}

/// Public keys of each kind the `oidc` scheme trusts (RS256, ES256, EdDSA), so that
/// fuzzed tokens reach signature verification whatever `kid` and `alg` they name.
const JWKS: &str = r#"{"keys": [
  {"kty": "RSA", "kid": "rsa", "alg": "RS256", "use": "sig", "e": "AQAB", "n": "sv3nxN03OQRJ9yG19AX0EYl0x7L7lcFgR_6RUYKTSD38lOgcQzU70wNYWVUeb4E7cHOGfSmHdy241mym1Yon_oAjQ3bBm2PswGB9VSfk6ILCHCWvJlKF3W8jjsMfb5bkafJd2n37k_72UTuz2rVg0yRzVGo7SCg0SB6891UZDK5VyJInbBq_nUesH5oHjpNEfPfHZfmNNrZHHwr5B21Tb3J_OBNcUvsGqb56yuf1W-9B607PhHVqHOVunHDJhctFDLqWpd4yOnpNvI-9-h7dJPpNYtzvX7gSrZExImr7YmfyTsyVdHpRDskiREu19pvsCWxuDbaCIjlhN06R2tN_kw"},
  {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "lIjJOVQVBkECUmc7erdXbFMHsANoJxVcwhpZl87N1GE", "y": "Xh3UpUyrTiBxE48BGrjBvOPreyLl9agzTJtXPRozoxY"},
  {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "qp82de2fdOu-hLTutjsaxam3JRoSeiX5uBPDI7zSMls"}
]}"#;

/// A bearer token as its three parts (each base64url-encoded here, so the fuzzer
/// works on the JSON inside), or as raw text.
#[derive(Debug, Arbitrary)]
pub struct Jwt<'a> {
    header: &'a [u8],
    claims: &'a [u8],
    signature: &'a [u8],
    raw: Option<&'a str>,
    body: &'a [u8],
    now: i64,
}

/// One `oidc` verifier for the whole run, its keys installed as if fetched.
fn oidc_verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let mut source = source(SchemeKind::Oidc, Format::Generic);
        source.verify.secrets.clear();
        source.verify.oidc = Some(OidcConfig {
            issuer: "https://issuer.example.com".into(),
            audience: "gantry".into(),
            jwks_url: None,
            leeway: Duration::from_secs(60),
            claims: BTreeMap::from([("/repository".to_string(), OneOrMany::One("acme/*".into()))]),
        });
        let verifier = Verifier::new(&source.verify).expect("the oidc fuzz source is valid");
        assert_eq!(verifier.install_jwks(JWKS.as_bytes()), Ok(3));
        verifier
    })
}

pub fn verify_oidc(input: &Jwt<'_>) {
    let token = match input.raw {
        Some(raw) => raw.to_string(),
        None => [input.header, input.claims, input.signature]
            .map(|part| URL_SAFE_NO_PAD.encode(part))
            .join("."),
    };
    let headers = vec![("Authorization".to_string(), format!("Bearer {token}"))];
    // A token nobody signed with these keys' private halves can only be refused.
    assert!(oidc_verifier().verify_at(&headers, input.body, input.now).is_err());
}

pub fn normalize(format: Format, input: &Request<'_>) {
    let normalizer = Normalizer::new(&source(SchemeKind::None, format));
    let headers = input.headers();
    if let Ok(events) = normalizer.normalize(
        "fuzz",
        Verified::trusted_local_file(input.body),
        &headers,
        input.now,
    ) {
        assert!(
            !events.is_empty(),
            "a body that normalizes yields at least one event"
        );
    }
}
