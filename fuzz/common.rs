//! What the fuzz targets share: an arbitrary request and the source it is offered to.
// Each target uses one half of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use gantry::config::{Encoding, Field, Format, SchemeKind, Secret, SourceConfig, VerifyConfig};
use gantry::ingest::{Normalizer, Verified, Verifier};
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
    let headers = input.headers();
    let _ = verifier.verify_at(&headers, input.body, input.now);
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
