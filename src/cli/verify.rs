//! `gantry verify-promotion REF@DIGEST --key PUB [--target NAME]`: whether gantry
//! attested the promotion of that digest (SPEC §15) with one of the keys, read from
//! the registry as an admission check would; prints the predicate that verifies.

use anyhow::{Context as _, anyhow};

use super::Failure;
use crate::config::{ConfigPath, secret};
use crate::domain::ImageRef;
use crate::supply::{Envelope, IN_TOTO, PublicKey, Statement};
use crate::targets::{Target, Targets};

/// Reads `keys` (PEM files, or `env:`/`file:` references).
fn public_keys(keys: &[String]) -> Result<Vec<PublicKey>, Failure> {
    keys.iter()
        .map(|k| {
            let reference = if k.starts_with("env:") || k.starts_with("file:") {
                k.clone()
            } else {
                format!("file:{k}")
            };
            let pem = secret::resolve(&reference, &|n| std::env::var(n).ok())
                .map_err(|e| Failure::Config(format!("--key {k}: {e}")))?
                .0;
            PublicKey::from_pem(pem.expose())
                .map_err(|e| Failure::Config(format!("--key {k}: {e}")))
        })
        .collect()
}

/// `REF@DIGEST` split into the image and the repository path it is read from: with
/// a target, `repo/image` in it; without, `[http://]host[:port]/repo/image`, read
/// anonymously (https unless `http://` is written).
fn reference(written: &str, on_target: bool) -> Result<(Option<reqwest::Url>, ImageRef), Failure> {
    let usage = |why: &str| Failure::Config(format!("`{written}`: {why}"));
    let (name, digest) = written
        .rsplit_once('@')
        .ok_or_else(|| usage("write the image as REF@sha256:<hex>"))?;
    let (base, path) = if on_target {
        (None, name)
    } else {
        let (scheme, rest) = match name.split_once("://") {
            Some((scheme, rest)) => (scheme, rest),
            None => ("https", name),
        };
        let (host, path) = rest
            .split_once('/')
            .ok_or_else(|| usage("name the registry: host[:port]/repository"))?;
        let url = reqwest::Url::parse(&format!("{scheme}://{host}/"))
            .map_err(|e| usage(&format!("the registry is not a URL: {e}")))?;
        (Some(url), path)
    };
    let (repo, image) = path.split_once('/').unwrap_or(("", path));
    Ok((
        base,
        ImageRef {
            repo: repo.to_string(),
            image: image.to_string(),
            tag: String::new(),
            digest: Some(digest.to_string()),
        },
    ))
}

pub(super) fn verify_promotion(
    path: &ConfigPath,
    written: &str,
    keys: &[String],
    target: Option<&str>,
) -> Result<(), Failure> {
    let keys = public_keys(keys)?;
    let (base, image) = reference(written, target.is_some())?;
    let digest = image.digest.clone().unwrap_or_default();
    let target: std::sync::Arc<dyn Target> = match (target, base) {
        (Some(name), _) => {
            let (service, _) = super::load(path)?;
            let targets =
                Targets::from_config(&service.config).context("cannot set up the targets")?;
            targets
                .get(name)
                .map(|h| h.target.clone())
                .ok_or_else(|| Failure::Config(format!("--target {name}: no such target")))?
        }
        (None, Some(url)) => {
            Targets::anonymous_registry(url).context("cannot set up the registry client")?
        }
        (None, None) => return Err(Failure::Config("name the registry or a --target".into())),
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let envelopes = runtime
        .block_on(target.attestations(&image))
        .map_err(|e| anyhow!("{}: {}", e.error.code.as_str(), e.error.message))?;
    let verified = envelopes.iter().find_map(|bytes| {
        let envelope: Envelope = serde_json::from_slice(bytes).ok()?;
        if envelope.payload_type != IN_TOTO {
            return None;
        }
        let payload = envelope.verified_payload(&keys)?;
        let statement: Statement = serde_json::from_slice(&payload).ok()?;
        statement.is_about(&digest).then_some(statement)
    });
    match verified {
        Some(statement) => {
            let shown = serde_json::to_string_pretty(&statement.predicate)
                .context("cannot show the predicate")?;
            println!("{shown}");
            Ok(())
        }
        None => Err(Failure::Other(anyhow!(
            "no gantry attestation of {written} verifies with the given key(s) ({} attestation(s) read)",
            envelopes.len()
        ))),
    }
}
