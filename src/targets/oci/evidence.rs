//! Evidence about an image as cosign stores it beside the image (SPEC §15): for the
//! digest `sha256:<hex>`, the tags `sha256-<hex>.sig` (signatures: each layer a
//! simple-signing payload, its annotation the signature), `.att` (attestations: each
//! layer a DSSE envelope) and `.sbom`, in the image's repository. Read within
//! bounds (a registry decides what it serves), carried along with a promotion, and
//! appended to for gantry's own attestations.

use serde_json::{Value, json};

use super::reference::{Digest, Reference, RepositoryName, Tag};
use super::registry::{Manifest, Registry};
use super::{Copy, Descriptor, descriptors, rejected};
use crate::domain::JobErrorCode;
use crate::supply::{DSSE_MEDIA_TYPE, PREDICATE_TYPE, Signed};
use crate::targets::TargetError;

/// The kinds of evidence carried with a promotion, by tag suffix.
pub const SUFFIXES: [&str; 3] = ["sig", "att", "sbom"];
/// Signature or attestation layers read for one digest at most: an image has a few;
/// a manifest listing thousands is refused rather than read.
pub const MAX_LAYERS: usize = 64;
/// The largest signature payload read: cosign's are under 1 KiB.
pub const MAX_SIGNATURE_BYTES: usize = 64 << 10;
/// The largest attestation envelope read (gantry's are a few KiB; a provenance
/// attestation can be larger).
pub const MAX_ENVELOPE_BYTES: usize = 1 << 20;
const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The artifact type of a cosign signature stored as an OCI 1.1 referrer.
const SIGNATURE_ARTIFACT: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
/// Names the job whose attestation a layer is, so a retried attestation is found.
const JOB_ANNOTATION: &str = "dev.gantry.job";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// `sha256-<hex>.<suffix>`, the tag cosign files evidence of `digest` under.
fn tag(digest: &Digest, suffix: &str) -> Result<Tag, TargetError> {
    Ok(Tag::parse(&tag_for(digest.as_str(), suffix))?)
}

/// The evidence tag of a digest (`sha256:<hex>`) as text, for targets that check
/// names their own way.
pub fn tag_for(digest: &str, suffix: &str) -> String {
    format!("{}.{suffix}", digest.replacen(':', "-", 1))
}

fn too_large(message: String) -> TargetError {
    TargetError::permanent(JobErrorCode::ResponseTooLarge, message)
}

/// The evidence manifest `tag` (a tag, or a referrer's digest) with at most
/// [`MAX_LAYERS`] layers; `None` when there is no such manifest.
async fn layers(
    registry: &Registry,
    repo: &RepositoryName,
    tag: impl Into<Reference>,
) -> Result<Option<(Manifest, Value)>, TargetError> {
    let tag = tag.into();
    let Some(manifest) = registry.manifest(repo, &tag).await? else {
        return Ok(None);
    };
    let parsed: Value = serde_json::from_slice(&manifest.bytes)
        .map_err(|e| rejected(format!("the manifest {repo}:{tag} is not JSON: {e}")))?;
    let count = parsed
        .get("layers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if count > MAX_LAYERS {
        return Err(too_large(format!(
            "{repo}:{tag} lists {count} layers; gantry reads at most {MAX_LAYERS}"
        )));
    }
    Ok(Some((manifest, parsed)))
}

/// The layers of an evidence manifest.
fn layers_of(parsed: &Value) -> Result<Vec<Descriptor<'_>>, TargetError> {
    descriptors(parsed.get("layers"))
}

/// Reads a layer no larger than `limit`, refusing by its declared size first.
async fn small_blob(
    registry: &Registry,
    repo: &RepositoryName,
    layer: &Descriptor<'_>,
    limit: usize,
    what: &str,
) -> Result<Vec<u8>, TargetError> {
    let (digest, size) = (&layer.digest, layer.size.unwrap_or(0));
    if size > limit as u64 {
        return Err(too_large(format!(
            "{what} {digest} in {repo} is {size} bytes; gantry reads at most {limit}"
        )));
    }
    registry
        .blob(repo, digest, limit, &format!("{what} {digest}"))
        .await
}

/// The signatures stored for `digest` in `repo`, in cosign's tag layout; empty when
/// it has none. Layers without a signature annotation are not signatures and are
/// skipped.
pub async fn signatures(
    registry: &Registry,
    repo: &RepositoryName,
    digest: &Digest,
) -> Result<Vec<Signed>, TargetError> {
    let mut manifests = Vec::new();
    if let Some((_, parsed)) = layers(registry, repo, tag(digest, "sig")?).await? {
        manifests.push(parsed);
    }
    for (referrer, _) in referrers(registry, repo, digest, Some(SIGNATURE_ARTIFACT)).await? {
        if let Some((_, parsed)) = layers(registry, repo, referrer).await? {
            manifests.push(parsed);
        }
    }
    let mut found = Vec::new();
    for parsed in &manifests {
        for layer in layers_of(parsed)? {
            let Some(signature) = layer
                .raw
                .pointer(&format!(
                    "/annotations/{}",
                    SIGNATURE_ANNOTATION.replace('/', "~1")
                ))
                .and_then(Value::as_str)
            else {
                continue;
            };
            let payload = small_blob(
                registry,
                repo,
                &layer,
                MAX_SIGNATURE_BYTES,
                "signature layer",
            )
            .await?;
            found.push(Signed {
                payload,
                signature: signature.to_string(),
                layer: layer.digest.to_string(),
            });
        }
    }
    Ok(found)
}

/// The referrers of `digest` (of `artifact_type`, when given) where the registry has
/// the referrers API; none where it has not. At most [`MAX_LAYERS`].
async fn referrers(
    registry: &Registry,
    repo: &RepositoryName,
    digest: &Digest,
    artifact_type: Option<&str>,
) -> Result<Vec<(Digest, String)>, TargetError> {
    let mut listed = registry.referrers(repo, digest).await?.unwrap_or_default();
    listed.retain(|(_, kind)| artifact_type.is_none_or(|t| t == kind));
    if listed.len() > MAX_LAYERS {
        return Err(too_large(format!(
            "{repo}@{digest} has {} referrers; gantry reads at most {MAX_LAYERS}",
            listed.len()
        )));
    }
    Ok(listed)
}

/// The DSSE envelopes attached to `digest` in `repo` (its `.att` layers), bounded.
pub async fn envelopes(
    registry: &Registry,
    repo: &RepositoryName,
    digest: &Digest,
) -> Result<Vec<Vec<u8>>, TargetError> {
    let Some((_, parsed)) = layers(registry, repo, tag(digest, "att")?).await? else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    for layer in layers_of(&parsed)? {
        if layer.raw.get("mediaType").and_then(Value::as_str) != Some(DSSE_MEDIA_TYPE) {
            continue;
        }
        found.push(
            small_blob(
                registry,
                repo,
                &layer,
                MAX_ENVELOPE_BYTES,
                "attestation layer",
            )
            .await?,
        );
    }
    Ok(found)
}

/// The evidence of a digest its source holds, looked up before it is carried.
pub(super) struct Found {
    tags: Vec<(Tag, Option<(Manifest, Value)>)>,
    referrers: Vec<(Digest, String)>,
}

impl Found {
    /// Whether the source has no evidence at all (nothing to carry, no change).
    pub(super) fn is_empty(&self) -> bool {
        self.referrers.is_empty() && self.tags.iter().all(|(_, found)| found.is_none())
    }
}

/// Looks up what evidence of `digest` the copy's source has: its three tags and its
/// referrers, side by side (most images have none, and four lookups one after another
/// would add four round trips to every promotion; `promote` runs this beside the
/// image's copy, so it adds none).
pub(super) async fn lookup(op: &Copy<'_>, digest: &Digest) -> Result<Found, TargetError> {
    let tags = SUFFIXES
        .iter()
        .map(|suffix| tag(digest, suffix))
        .collect::<Result<Vec<Tag>, _>>()?;
    let (found, referrers) = tokio::try_join!(
        futures_util::future::try_join_all(tags.iter().map(|t| layers(
            op.src,
            &op.src_repo,
            t.clone()
        ))),
        referrers(op.src, &op.src_repo, digest, None),
    )?;
    Ok(Found {
        tags: tags.into_iter().zip(found).collect(),
        referrers,
    })
}

/// Carries the evidence [`lookup`] found from the copy's source to its destination:
/// each `.sig`, `.att` and `.sbom` the source has and the destination lacks, and each
/// of its OCI 1.1 referrers where the source lists them. Where the destination has evidence of its own under the tag, the source's layers it lacks
/// are appended (cosign's own way of adding a signature), so nothing there is lost.
/// The tags changed; none when everything was there already (a retry).
pub(super) async fn carry(op: &Copy<'_>, found: Found) -> Result<Vec<String>, TargetError> {
    let mut carried = Vec::new();
    for (tag, found) in found.tags {
        let Some((source, parsed)) = found else {
            continue;
        };
        let reference = Reference::Tag(tag.clone());
        match layers(op.dst, &op.dst_repo, tag.clone()).await? {
            None => {
                op.tree(&source, &reference).await?;
            }
            Some((there, _)) if there.digest == source.digest => continue,
            Some((_, there)) => {
                let have: Vec<Digest> = layers_of(&there)?.into_iter().map(|d| d.digest).collect();
                let mut missing = Vec::new();
                for layer in layers_of(&parsed)? {
                    if !have.contains(&layer.digest) {
                        op.blob(&layer.digest, layer.size).await?;
                        missing.push(layer.raw.clone());
                    }
                }
                if missing.is_empty() {
                    continue;
                }
                put_with_layers(op.dst, &op.dst_repo, &tag, Some(there), missing).await?;
            }
        }
        carried.push(tag.to_string());
    }
    // OCI 1.1 referrers (signatures, attestations, SBOMs pushed with a `subject`),
    // where the source lists them: each is pushed to the destination by digest.
    for (referrer, _) in found.referrers {
        let reference = Reference::Digest(referrer.clone());
        if op.dst.digest(&op.dst_repo, &reference).await?.is_some() {
            continue;
        }
        let Some(manifest) = op.src.manifest(&op.src_repo, &reference).await? else {
            continue;
        };
        op.tree(&manifest, &reference).await?;
        carried.push(format!("referrer {referrer}"));
    }
    Ok(carried)
}

/// Attaches gantry's attestation `envelope` for job `job_id` to `digest` in `repo`
/// (a layer of `sha256-<hex>.att`, beside any attestations there); false when the
/// job's attestation is there already (a retry).
pub async fn attach(
    registry: &Registry,
    repo: &RepositoryName,
    digest: &Digest,
    envelope: Vec<u8>,
    job_id: &str,
) -> Result<bool, TargetError> {
    let tag = tag(digest, "att")?;
    let there = layers(registry, repo, tag.clone())
        .await?
        .map(|(_, parsed)| parsed);
    let ours = |l: &Value| {
        l.pointer(&format!("/annotations/{JOB_ANNOTATION}"))
            .and_then(Value::as_str)
            == Some(job_id)
    };
    if there
        .as_ref()
        .and_then(|p| p.get("layers"))
        .and_then(Value::as_array)
        .is_some_and(|l| l.iter().any(ours))
    {
        return Ok(false);
    }
    let size = envelope.len();
    let layer = registry.push_blob(repo, envelope).await?;
    let descriptor = json!({
        "mediaType": DSSE_MEDIA_TYPE,
        "size": size,
        "digest": layer.as_str(),
        "annotations": {"predicateType": PREDICATE_TYPE, JOB_ANNOTATION: job_id},
    });
    put_with_layers(registry, repo, &tag, there, vec![descriptor]).await?;
    Ok(true)
}

/// Puts under `tag` the manifest `there` (or a new OCI image manifest with an empty
/// config, as cosign writes) with `extra` layers appended. The layers' blobs must be
/// in the repository already.
async fn put_with_layers(
    registry: &Registry,
    repo: &RepositoryName,
    tag: &Tag,
    there: Option<Value>,
    extra: Vec<Value>,
) -> Result<(), TargetError> {
    let mut manifest = match there {
        Some(m) => m,
        None => {
            let config = br#"{"architecture":"","config":{},"os":"","rootfs":{"type":"layers","diff_ids":[]}}"#;
            let digest = registry.push_blob(repo, config.to_vec()).await?;
            json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "size": config.len(),
                    "digest": digest.as_str(),
                },
                "layers": [],
            })
        }
    };
    let media_type = manifest
        .get("mediaType")
        .and_then(Value::as_str)
        .unwrap_or(OCI_MANIFEST)
        .to_string();
    match manifest.get_mut("layers").and_then(Value::as_array_mut) {
        Some(layers) => layers.extend(extra),
        None => return Err(rejected(format!("{repo}:{tag} is not an image manifest"))),
    }
    let bytes = serde_json::to_vec(&manifest)
        .map_err(|e| rejected(format!("cannot write the manifest {repo}:{tag}: {e}")))?;
    let manifest = Manifest {
        digest: Digest::sha256_of(&bytes),
        bytes,
        media_type,
    };
    registry
        .put_manifest(repo, &Reference::Tag(tag.clone()), &manifest)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_tags_are_cosign_s() {
        let d = Digest::sha256_of(b"x");
        let hex = d.as_str().trim_start_matches("sha256:");
        assert_eq!(
            tag(&d, "sig").unwrap().as_str(),
            format!("sha256-{hex}.sig")
        );
        assert_eq!(
            tag(&d, "att").unwrap().as_str(),
            format!("sha256-{hex}.att")
        );
    }
}
