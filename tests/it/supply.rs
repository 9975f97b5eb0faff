//! Signature conditions' verdict (SPEC §15) on signatures made by another
//! implementation: `openssl` signs simple-signing payloads with ECDSA P-256 (DER over
//! SHA-256, as cosign) and Ed25519; gantry must accept exactly the right ones.

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use gantry::supply::{KeyError, PublicKey, Rejected, verify};

const DIGEST: &str = "sha256:5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270";
const OTHER: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A simple-signing payload as cosign writes it, for `digest`.
fn payload(digest: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "critical": {
            "identity": {"docker-reference": "registry.example/team-a/api"},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature"
        },
        "optional": null
    }))
    .unwrap()
}

/// A key pair made by openssl: (private key file, public key PEM).
fn key(dir: &Path, name: &str, ed25519: bool) -> (String, String) {
    let private = format!("{name}.key");
    if ed25519 {
        openssl(dir, &["genpkey", "-algorithm", "ed25519", "-out", &private]);
    } else {
        openssl(
            dir,
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                &private,
            ],
        );
    }
    let public = format!("{name}.pub");
    openssl(dir, &["pkey", "-in", &private, "-pubout", "-out", &public]);
    (private, std::fs::read_to_string(dir.join(public)).unwrap())
}

/// openssl's signature of `message` with `private`, base64 as cosign's annotation.
fn sign(dir: &Path, private: &str, message: &[u8], ed25519: bool) -> String {
    std::fs::write(dir.join("message"), message).unwrap();
    if ed25519 {
        openssl(
            dir,
            &[
                "pkeyutl", "-sign", "-inkey", private, "-rawin", "-in", "message", "-out", "sig",
            ],
        );
    } else {
        openssl(
            dir,
            &[
                "dgst", "-sha256", "-sign", private, "-out", "sig", "message",
            ],
        );
    }
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(dir.join("sig")).unwrap())
}

#[test]
fn only_a_listed_keys_signature_over_a_payload_naming_the_digest_counts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ci_key, ci_pub) = key(d, "ci", false);
    let (ed_key, ed_pub) = key(d, "release", true);
    let (stranger_key, _) = key(d, "stranger", false);
    let keys = [
        PublicKey::from_pem(&ci_pub).unwrap(),
        PublicKey::from_pem(&ed_pub).unwrap(),
    ];
    let signed = payload(DIGEST);

    // Signed by a listed key, for this digest: counts, naming which key.
    let sig = sign(d, &ci_key, &signed, false);
    assert_eq!(verify(&signed, &sig, DIGEST, &keys), Ok(0));
    let sig = sign(d, &ed_key, &signed, true);
    assert_eq!(verify(&signed, &sig, DIGEST, &keys), Ok(1));

    // A key not listed.
    let sig = sign(d, &stranger_key, &signed, false);
    assert_eq!(verify(&signed, &sig, DIGEST, &keys), Err(Rejected::NoKey));
    // A valid signature of another image never counts for this one.
    let elsewhere = payload(OTHER);
    let sig = sign(d, &ci_key, &elsewhere, false);
    assert_eq!(
        verify(&elsewhere, &sig, DIGEST, &keys),
        Err(Rejected::OtherDigest {
            signed: OTHER.into(),
            promoted: DIGEST.into()
        })
    );
    // A payload changed after signing (here: retargeted at the promoted digest).
    let sig = sign(d, &ci_key, &elsewhere, false);
    let tampered = String::from_utf8(elsewhere.clone())
        .unwrap()
        .replace(OTHER, DIGEST)
        .into_bytes();
    assert_eq!(verify(&tampered, &sig, DIGEST, &keys), Err(Rejected::NoKey));
    // Not base64; a signature of the wrong kind for the key.
    assert_eq!(
        verify(&signed, "%%%", DIGEST, &keys),
        Err(Rejected::NotBase64)
    );
    let ed_sig = sign(d, &ed_key, &signed, true);
    assert_eq!(
        verify(&signed, &ed_sig, DIGEST, &keys[..1]),
        Err(Rejected::NoKey)
    );
    // Signed, but not a simple-signing payload.
    let sig = sign(d, &ci_key, b"{}", false);
    assert!(matches!(
        verify(b"{}", &sig, DIGEST, &keys),
        Err(Rejected::Payload(_))
    ));
}

#[test]
fn a_key_of_another_kind_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    openssl(
        dir.path(),
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "rsa.key",
        ],
    );
    openssl(
        dir.path(),
        &["pkey", "-in", "rsa.key", "-pubout", "-out", "rsa.pub"],
    );
    let pem = std::fs::read_to_string(dir.path().join("rsa.pub")).unwrap();
    assert_eq!(
        PublicKey::from_pem(&pem).unwrap_err(),
        KeyError::Unsupported
    );
    assert_eq!(
        PublicKey::from_pem("not a key").unwrap_err(),
        KeyError::Unsupported
    );
}

// ---------------------------------------------------------------------------
// Signature gates, evidence and attestations against real registries.

use serde_json::{Value, json};

use crate::harness::{TestApp, spawn_app};
use crate::registry::{IMAGE, RegistryOptions, RegistryProc, digest_of, ulid_like};

/// Keys made by openssl in one directory: `ci` signs images (P-256, cosign's
/// kind), `stranger` is nobody's, `attest` is gantry's attestation key (P-256,
/// PKCS#8 as `openssl genpkey` writes it).
struct Keys {
    dir: tempfile::TempDir,
    ci: String,
    stranger: String,
}

impl Keys {
    fn new() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let (ci, _) = key(dir.path(), "ci", false);
        let (stranger, _) = key(dir.path(), "stranger", false);
        openssl(
            dir.path(),
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                "attest.key",
            ],
        );
        openssl(
            dir.path(),
            &["pkey", "-in", "attest.key", "-pubout", "-out", "attest.pub"],
        );
        // The protection's own attestation key: Ed25519.
        openssl(
            dir.path(),
            &["genpkey", "-algorithm", "ed25519", "-out", "guard.key"],
        );
        openssl(
            dir.path(),
            &["pkey", "-in", "guard.key", "-pubout", "-out", "guard.pub"],
        );
        Keys { dir, ci, stranger }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// openssl's signature (base64) of `message` by the key `private`.
    fn sign(&self, private: &str, message: &[u8]) -> String {
        sign(self.dir.path(), private, message, false)
    }
}

/// Pushes a signature manifest in cosign's layout for `digest` in `repo`: one layer
/// per (payload, base64 signature), annotated as cosign annotates them.
async fn push_signatures(reg: &RegistryProc, repo: &str, digest: &str, sigs: &[(Vec<u8>, String)]) {
    let config = br#"{"architecture":"","os":"","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = reg.push_blob(repo, config.to_vec(), None).await;
    let mut layers = Vec::new();
    for (payload, signature) in sigs {
        let layer = reg.push_blob(repo, payload.clone(), None).await;
        layers.push(json!({
            "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
            "size": payload.len(), "digest": layer,
            "annotations": {"dev.cosignproject.cosign/signature": signature}
        }));
    }
    push_evidence(
        reg,
        repo,
        digest,
        "sig",
        &config_digest,
        config.len(),
        layers,
    )
    .await;
}

async fn push_evidence(
    reg: &RegistryProc,
    repo: &str,
    digest: &str,
    suffix: &str,
    config_digest: &str,
    config_size: usize,
    layers: Vec<Value>,
) {
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": IMAGE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": config_size, "digest": config_digest},
        "layers": layers
    }))
    .unwrap();
    let tag = format!("{}.{suffix}", digest.replace(':', "-"));
    reg.push_manifest(repo, &tag, IMAGE, &manifest, None).await;
}

/// A manifest's JSON (`None` when there is none).
async fn manifest(reg: &RegistryProc, repo: &str, reference: &str) -> Option<Value> {
    let r = reqwest::Client::new()
        .get(format!("{}/v2/{repo}/manifests/{reference}", reg.base))
        .header("Accept", IMAGE)
        .send()
        .await
        .unwrap();
    if r.status() == 404 {
        return None;
    }
    Some(r.json().await.unwrap())
}

async fn blob(reg: &RegistryProc, repo: &str, digest: &str) -> Vec<u8> {
    let r = reqwest::get(format!("{}/v2/{repo}/blobs/{digest}", reg.base))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap().to_vec()
}

fn evidence_tag(digest: &str, suffix: &str) -> String {
    format!("{}.{suffix}", digest.replace(':', "-"))
}

fn config(reg: &str, other: &str, keys: &Keys, within: &str) -> String {
    format!(
        r#"
[[targets]]
name = "dev-registry"
kind = "oci"
url = "{reg}"

[[targets]]
name = "prod-registry"
kind = "oci"
url = "{other}"

[[rules]]
name = "ship-signed"
source = "ci"
event = "ship"
action = {{ type = "promote", target = "dev-registry", to_target = "prod-registry", to_repo = "prod" }}
gate = {{ within = "{within}", require = [
  {{ name = "signed-by-ci", signature = {{ keys = ["file:{ci}"] }} }},
] }}
attest = {{ key = "file:{attest}" }}

[[protections]]
name = "prod"
to_repos = ["prod"]
attest = {{ key = "file:{guard}" }}
"#,
        ci = keys.path("ci.pub"),
        attest = keys.path("attest.key"),
        guard = keys.path("guard.key"),
    )
}

/// gantry promoting from one real registry (`dev`) to another (`prod`) under
/// [`config`], with its keys.
struct World {
    keys: Keys,
    dev: RegistryProc,
    prod: RegistryProc,
    app: TestApp,
}

impl World {
    async fn start(within: &str) -> World {
        let keys = Keys::new();
        let dev = RegistryProc::start(RegistryOptions::default()).await;
        let prod = RegistryProc::start(RegistryOptions::default()).await;
        let app = spawn_app(&config(&dev.base, &prod.base, &keys, within)).await;
        World {
            keys,
            dev,
            prod,
            app,
        }
    }
}

/// A new image (a layer no other test has) at `dev/app:tag`; its digest.
async fn fresh_image(dev: &RegistryProc, tag: &str) -> String {
    let layer = format!("layer {tag} {}", ulid_like()).into_bytes();
    dev.push_image("dev/app", tag, &[layer], None).await
}

async fn ship(app: &TestApp, tag: &str, digest: &str) -> String {
    ship_from(app, "dev", tag, digest).await
}

async fn ship_from(app: &TestApp, repo: &str, tag: &str, digest: &str) -> String {
    let body = format!(
        r#"{{"event":"ship","repo":"{repo}","image":"app","tag":"{tag}","digest":"{digest}","run":"{}"}}"#,
        ulid_like()
    );
    let answer: Value = app.send("ci", body.as_bytes()).await.json().await.unwrap();
    answer["jobs"][0]["id"].as_str().expect("a job").to_string()
}

async fn records(app: &TestApp, job: &str, kind: &str) -> Vec<Value> {
    app.audit(&format!("job={job}&kind={kind}")).await
}

/// openssl's verdict on `signature` (DER, base64) of `message` by `public`.
fn openssl_verifies(keys: &Keys, public: &str, message: &[u8], signature_b64: &str) -> bool {
    let dir = keys.dir.path();
    std::fs::write(dir.join("checked"), message).unwrap();
    let sig = base64::engine::general_purpose::STANDARD
        .decode(signature_b64)
        .unwrap();
    std::fs::write(dir.join("checked.sig"), sig).unwrap();
    Command::new("openssl")
        .args([
            "dgst",
            "-sha256",
            "-verify",
            public,
            "-signature",
            "checked.sig",
            "checked",
        ])
        .current_dir(dir)
        .output()
        .unwrap()
        .status
        .success()
}

fn verify_promotion(reference: &str, key: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["verify-promotion", reference, "--key", key])
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_signed_digest_is_promoted_with_its_evidence_and_an_attestation_anyone_can_verify() {
    let world = World::start("30s").await;
    let (keys, dev, prod, app) = (&world.keys, &world.dev, &world.prod, &world.app);

    let digest = fresh_image(dev, "1.4.2").await;
    let signed = payload(&digest);
    let signature = keys.sign(&keys.ci, &signed);
    push_signatures(
        dev,
        "dev/app",
        &digest,
        &[(signed.clone(), signature.clone())],
    )
    .await;
    // An attestation someone else made (its content does not matter to gantry).
    let config_digest = dev.push_blob("dev/app", b"{}".to_vec(), None).await;
    let theirs =
        br#"{"payloadType":"application/vnd.in-toto+json","payload":"e30=","signatures":[]}"#;
    let theirs_digest = dev.push_blob("dev/app", theirs.to_vec(), None).await;
    let layer = json!({"mediaType": "application/vnd.dsse.envelope.v1+json", "size": theirs.len(), "digest": theirs_digest});
    push_evidence(
        dev,
        "dev/app",
        &digest,
        "att",
        &config_digest,
        2,
        vec![layer],
    )
    .await;

    let job = ship(app, "1.4.2", &digest).await;
    let done = app.wait_final(&job).await;
    assert_eq!(
        (done["state"].as_str(), done["outcome"].as_str()),
        (Some("succeeded"), Some("promoted")),
        "{done:#}"
    );
    assert_eq!(
        prod.manifest_digest("prod/app", "1.4.2", None).await,
        Some(digest.clone())
    );
    let verified = records(app, &job, "signature.verified").await;
    assert_eq!(verified.len(), 1, "{verified:#?}");
    assert_eq!(verified[0]["digest"], digest.as_str());
    assert!(
        verified[0]["message"]
            .as_str()
            .unwrap()
            .contains("condition signed-by-ci met")
    );
    let carried = records(app, &job, "evidence.copied").await;
    assert_eq!(carried.len(), 1);
    let message = carried[0]["message"].as_str().unwrap();
    assert!(message.contains(&evidence_tag(&digest, "sig")), "{message}");
    assert!(message.contains(&evidence_tag(&digest, "att")), "{message}");
    let attested = records(app, &job, "promotion.attested").await;
    assert_eq!(attested.len(), 1);
    let message = attested[0]["message"].as_str().unwrap();
    assert!(message.contains("signed by 2 key(s)"), "{message}");

    // The signature travelled byte for byte, and a verifier at the destination
    // (openssl, not gantry) finds it valid for the promoted digest.
    let sig_tag = evidence_tag(&digest, "sig");
    assert_eq!(
        prod.manifest_digest("prod/app", &sig_tag, None).await,
        dev.manifest_digest("dev/app", &sig_tag, None).await
    );
    let there = manifest(prod, "prod/app", &sig_tag).await.unwrap();
    let layer = &there["layers"][0];
    let carried_payload = blob(prod, "prod/app", layer["digest"].as_str().unwrap()).await;
    assert_eq!(carried_payload, signed);
    let annotation = layer["annotations"]["dev.cosignproject.cosign/signature"]
        .as_str()
        .unwrap();
    assert!(openssl_verifies(
        keys,
        "ci.pub",
        &carried_payload,
        annotation
    ));

    // The destination's attestations: theirs, carried, and gantry's, appended.
    let att = manifest(prod, "prod/app", &evidence_tag(&digest, "att"))
        .await
        .unwrap();
    let layers = att["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2, "{att:#}");
    assert_eq!(layers[0]["digest"], theirs_digest.as_str());
    assert_eq!(
        layers[1]["mediaType"],
        "application/vnd.dsse.envelope.v1+json"
    );
    assert_eq!(layers[1]["annotations"]["dev.gantry.job"], job.as_str());
    assert_eq!(
        layers[1]["annotations"]["predicateType"],
        "urn:gantry:promotion:v1"
    );

    // The envelope checked independently: the DSSE pre-authentication encoding
    // built here, the signature checked by openssl.
    let envelope: Value = serde_json::from_slice(
        &blob(prod, "prod/app", layers[1]["digest"].as_str().unwrap()).await,
    )
    .unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let statement = b64.decode(envelope["payload"].as_str().unwrap()).unwrap();
    let payload_type = envelope["payloadType"].as_str().unwrap();
    assert_eq!(payload_type, "application/vnd.in-toto+json");
    let mut pae = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        statement.len()
    )
    .into_bytes();
    pae.extend_from_slice(&statement);
    // Signed by the rule's key and by the protection's, one signature each.
    assert_eq!(envelope["signatures"].as_array().unwrap().len(), 2);
    let sig = envelope["signatures"][0]["sig"].as_str().unwrap();
    assert!(openssl_verifies(keys, "attest.pub", &pae, sig));
    assert!(!openssl_verifies(keys, "ci.pub", &pae, sig));
    let statement: Value = serde_json::from_slice(&statement).unwrap();
    assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(statement["predicateType"], "urn:gantry:promotion:v1");
    assert_eq!(statement["subject"][0]["name"], "prod/app");
    assert_eq!(
        statement["subject"][0]["digest"]["sha256"],
        digest.trim_start_matches("sha256:")
    );
    let predicate = &statement["predicate"];
    assert_eq!(predicate["job_id"], job.as_str());
    assert_eq!(predicate["rule"], "ship-signed");
    assert_eq!(predicate["events"][0]["role"], "trigger");
    assert_eq!(predicate["events"][0]["id"], done["event_id"]);
    // The trail record the statement extends is on the trail, with that hash.
    let seq = predicate["audit"]["seq"].as_i64().unwrap();
    let trail = app.audit(&format!("job={job}")).await;
    let extended = trail.iter().find(|r| r["seq"] == seq).expect("the record");
    assert_eq!(extended["hash"], predicate["audit"]["hash"]);

    // gantry verify-promotion reads the same from the registry.
    let host = prod.base.trim_start_matches("http://");
    let reference = format!("http://{host}/prod/app@{digest}");
    let out = verify_promotion(&reference, &keys.path("attest.pub"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(&shown, predicate);
    let out = verify_promotion(&reference, &keys.path("guard.pub"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = verify_promotion(&reference, &keys.path("ci.pub"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no gantry attestation"));
    let unpromoted = format!("http://{host}/prod/app@{}", digest_of(b"other"));
    assert_eq!(
        verify_promotion(&unpromoted, &keys.path("attest.pub"))
            .status
            .code(),
        Some(1)
    );

    // Promoted again (another job): the evidence is there, nothing is carried;
    // the new job's attestation joins the others.
    let again = ship(app, "1.4.2", &digest).await;
    let done = app.wait_final(&again).await;
    assert_eq!(done["outcome"], "noop", "{done:#}");
    assert!(records(app, &again, "evidence.copied").await.is_empty());
    let att = manifest(prod, "prod/app", &evidence_tag(&digest, "att"))
        .await
        .unwrap();
    assert_eq!(att["layers"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn unsigned_foreign_or_tampered_signatures_never_count_and_the_job_fails_when_the_window_ends()
 {
    let world = World::start("3s").await;
    let (keys, dev, prod, app) = (&world.keys, &world.dev, &world.prod, &world.app);
    let image = |tag: &'static str| fresh_image(dev, tag);
    let unsigned = image("unsigned").await;
    let foreign = image("foreign").await;
    let tampered = image("tampered").await;
    // By a key nobody listed; and by the right key, but for another image.
    let other = digest_of(b"another image");
    push_signatures(
        dev,
        "dev/app",
        &foreign,
        &[
            (
                payload(&foreign),
                keys.sign(&keys.stranger, &payload(&foreign)),
            ),
            (payload(&other), keys.sign(&keys.ci, &payload(&other))),
        ],
    )
    .await;
    // The right key's signature of another payload, the payload then rewritten.
    let original = payload(&other);
    let signature = keys.sign(&keys.ci, &original);
    push_signatures(
        dev,
        "dev/app",
        &tampered,
        &[(payload(&tampered), signature)],
    )
    .await;

    let jobs = [
        ship(app, "unsigned", &unsigned).await,
        ship(app, "foreign", &foreign).await,
        ship(app, "tampered", &tampered).await,
    ];
    for (job, invalid) in jobs.iter().zip([0, 2, 1]) {
        let done = app.wait_final(job).await;
        assert_eq!(done["state"], "failed", "{done:#}");
        assert_eq!(done["last_error"]["code"], "signature_invalid", "{done:#}");
        let message = done["last_error"]["message"].as_str().unwrap();
        assert!(message.contains("signed-by-ci"), "{message}");
        let recorded = records(app, job, "signature.invalid").await;
        assert_eq!(recorded.len(), invalid, "{recorded:#?}");
        assert!(records(app, job, "signature.verified").await.is_empty());
        // Checked again while waiting, without spending attempts.
        assert_eq!(done["attempts"].as_array().unwrap().len(), 1, "{done:#}");
    }
    let foreign_reasons: Vec<String> = records(app, &jobs[1], "signature.invalid")
        .await
        .iter()
        .map(|r| r["message"].as_str().unwrap().to_string())
        .collect();
    assert!(
        foreign_reasons.iter().any(|m| m.contains("no listed key")),
        "{foreign_reasons:?}"
    );
    assert!(
        foreign_reasons
            .iter()
            .any(|m| m.contains(&format!("is for {other}, not {foreign}"))),
        "{foreign_reasons:?}"
    );
    for tag in ["unsigned", "foreign", "tampered"] {
        assert_eq!(prod.manifest_digest("prod/app", tag, None).await, None);
    }
}

#[tokio::test]
async fn a_job_waits_for_a_signature_that_comes_later() {
    let world = World::start("60s").await;
    let (keys, dev, prod, app) = (&world.keys, &world.dev, &world.prod, &world.app);
    let digest = fresh_image(dev, "late").await;
    let job = ship(app, "late", &digest).await;
    // Checked once and given back: queued again, not promoted.
    let waiting = app
        .wait_for(&job, |j| {
            j["state"] == "queued" && j["updated_at"] != j["created_at"]
        })
        .await;
    assert!(
        waiting["attempts"].as_array().unwrap().is_empty(),
        "{waiting:#}"
    );
    assert_eq!(prod.manifest_digest("prod/app", "late", None).await, None);
    let signed = payload(&digest);
    let signature = keys.sign(&keys.ci, &signed);
    push_signatures(dev, "dev/app", &digest, &[(signed, signature)]).await;
    let done = app.wait_final(&job).await;
    assert_eq!(done["outcome"], "promoted", "{done:#}");
    assert_eq!(
        prod.manifest_digest("prod/app", "late", None).await,
        Some(digest)
    );
}

#[tokio::test]
async fn signature_manifests_past_the_bounds_are_refused_unread() {
    let world = World::start("30s").await;
    let (keys, dev, prod, app) = (&world.keys, &world.dev, &world.prod, &world.app);
    let image = |tag: &'static str| fresh_image(dev, tag);
    let config_digest = dev.push_blob("dev/app", b"{}".to_vec(), None).await;

    // Thousands of signature layers.
    let many = image("many").await;
    let signed = payload(&many);
    let signature = keys.sign(&keys.ci, &signed);
    let layer = dev.push_blob("dev/app", signed.clone(), None).await;
    let layers: Vec<Value> = (0..3000)
        .map(|_| {
            json!({"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
            "size": signed.len(), "digest": layer,
            "annotations": {"dev.cosignproject.cosign/signature": signature}})
        })
        .collect();
    push_evidence(dev, "dev/app", &many, "sig", &config_digest, 2, layers).await;

    // A 50 MB "signature".
    let huge = image("huge").await;
    let big = vec![b'{'; 50 << 20];
    let big_digest = dev.push_blob("dev/app", big, None).await;
    let layers = vec![
        json!({"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
        "size": 50 << 20, "digest": big_digest,
        "annotations": {"dev.cosignproject.cosign/signature": signature}}),
    ];
    push_evidence(dev, "dev/app", &huge, "sig", &config_digest, 2, layers).await;

    let job = ship(app, "many", &many).await;
    let done = app.wait_final(&job).await;
    assert_eq!(done["last_error"]["code"], "response_too_large", "{done:#}");
    let message = done["last_error"]["message"].as_str().unwrap();
    assert!(
        message.contains("lists 3000 layers; gantry reads at most 64"),
        "{message}"
    );
    let job = ship(app, "huge", &huge).await;
    let done = app.wait_final(&job).await;
    assert_eq!(done["last_error"]["code"], "response_too_large", "{done:#}");
    let message = done["last_error"]["message"].as_str().unwrap();
    assert!(
        message.contains("is 52428800 bytes; gantry reads at most 65536"),
        "{message}"
    );
    for tag in ["many", "huge"] {
        assert_eq!(prod.manifest_digest("prod/app", tag, None).await, None);
    }
}

/// Artifactory (faked: it cannot run here) is read through its Docker v2 API, with
/// the target's credentials, and carries the signature tag by promoting it too.
#[tokio::test]
async fn artifactory_signatures_are_read_through_its_docker_api_and_promoted_along() {
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, ResponseTemplate};

    let keys = Keys::new();
    let rules = format!(
        r#"
[[rules]]
name = "jfrog-signed"
source = "ci"
event = "ship"
action = {{ type = "promote", target = "jfrog", to_repo = "docker-prod" }}
gate = {{ within = "2s", require = [
  {{ name = "signed-by-ci", signature = {{ keys = ["file:{ci}"] }} }},
] }}
"#,
        ci = keys.path("ci.pub")
    );
    let app = spawn_app(&rules).await;
    let server = &app.upstream;
    let api = "/artifactory/api/docker";
    let digest = digest_of(format!("image {}", ulid_like()).as_bytes());
    let unsigned = digest_of(format!("unsigned {}", ulid_like()).as_bytes());
    let signed = payload(&digest);
    let layer = digest_of(&signed);
    let sig_manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": IMAGE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 2, "digest": digest_of(b"{}")},
        "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
            "size": signed.len(), "digest": layer,
            "annotations": {"dev.cosignproject.cosign/signature": keys.sign(&keys.ci, &signed)}}]
    }))
    .unwrap();
    let sig_tag = evidence_tag(&digest, "sig");
    let bearer = format!("Bearer {}", crate::harness::JFROG_TOKEN);
    let authorized = || header("Authorization", bearer.as_str());
    Mock::given(method("GET"))
        .and(path(format!("{api}/docker-dev/v2/app/manifests/{sig_tag}")))
        .and(authorized())
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("Content-Type", IMAGE)
                .set_body_bytes(sig_manifest),
        )
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{api}/docker-dev/v2/app/blobs/{layer}")))
        .and(authorized())
        .respond_with(ResponseTemplate::new(200).set_body_bytes(signed.clone()))
        .mount(server)
        .await;
    for (tag, d) in [
        ("1.4.2", &digest),
        ("0.9.0", &unsigned),
        (sig_tag.as_str(), &digest_of(b"sig")),
    ] {
        Mock::given(method("HEAD"))
            .and(path(format!("{api}/docker-dev/v2/app/manifests/{tag}")))
            .respond_with(
                ResponseTemplate::new(200).insert_header("Docker-Content-Digest", d.as_str()),
            )
            .mount(server)
            .await;
    }
    Mock::given(method("POST"))
        .and(path(format!("{api}/docker-dev/v2/promote")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"messages": []})))
        .mount(server)
        .await;
    // Everything else (the destination's tags, the .att and .sbom): not found.
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(404))
        .mount(server)
        .await;

    let job = ship_from(&app, "docker-dev", "1.4.2", &digest).await;
    let done = app.wait_final(&job).await;
    assert_eq!(done["outcome"], "promoted", "{done:#}");
    assert_eq!(records(&app, &job, "signature.verified").await.len(), 1);
    let promotes: Vec<Value> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path().ends_with("/v2/promote"))
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(promotes.len(), 2, "{promotes:#?}");
    assert_eq!(promotes[0]["tag"], "1.4.2");
    assert_eq!(
        (
            &promotes[1]["tag"],
            &promotes[1]["targetTag"],
            &promotes[1]["copy"]
        ),
        (&json!(sig_tag), &json!(sig_tag), &json!(true))
    );

    // Unsigned: nothing is promoted, and the job fails when the window ends.
    let job = ship_from(&app, "docker-dev", "0.9.0", &unsigned).await;
    let done = app.wait_final(&job).await;
    assert_eq!(done["last_error"]["code"], "signature_invalid", "{done:#}");
    let promote_calls = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path().ends_with("/v2/promote"))
        .count();
    assert_eq!(promote_calls, 2);
}

#[test]
fn check_names_every_supply_chain_setting_that_cannot_work() {
    let keys = Keys::new();
    let (ci_pub, ci_key, attest_key) = (
        keys.path("ci.pub"),
        keys.path("ci.key"),
        keys.path("attest.key"),
    );
    let config = |action: &str, require: &str, attest: &str| {
        format!(
            r#"
[[sources]]
name = "ci"
format = "generic"
verify = {{ scheme = "hmac-sha256", header = "X-Signature", secrets = ["env:SET_SECRET"] }}

[[targets]]
name = "jfrog"
kind = "artifactory"
url = "http://127.0.0.1:1"
token = "env:SET_SECRET"

[[rules]]
name = "r"
source = "ci"
action = {action}
gate = {{ within = "1h", require = [{require}] }}
{attest}
"#
        )
    };
    let promote = r#"{ type = "promote", target = "jfrog", to_repo = "prod" }"#;
    let signed =
        |keys: &str| format!(r#"{{ name = "signed", signature = {{ keys = [{keys}] }} }}"#);
    let good = signed(&format!(r#""file:{ci_pub}""#));
    let (code, out) = crate::cli::check(&config(
        promote,
        &good,
        &format!(r#"attest = {{ key = "file:{attest_key}" }}"#),
    ));
    assert_eq!(code, 0, "{out}");
    let cases = [
        (
            config(
                promote,
                &format!(
                    r#"{{ name = "signed", source = "ci", signature = {{ keys = ["file:{ci_pub}"] }} }}"#
                ),
                "",
            ),
            "rules[r].gate.require[signed]: a signature condition is met by a signature read from the registry",
        ),
        (
            config(promote, &signed(r#""file:/nonexistent/ci.pub""#), ""),
            "rules[r].gate.require[signed].signature.keys[0]: cannot read secret file",
        ),
        (
            config(promote, &signed(&format!(r#""file:{ci_key}""#)), ""),
            "rules[r].gate.require[signed].signature.keys[0]: not a PEM public key",
        ),
        (
            config(promote, &signed(""), ""),
            "rules[r].gate.require[signed].signature.keys: lists no key",
        ),
        (
            config(
                r#"{ type = "copy", target = "jfrog", to_repo = "release" }"#,
                &good,
                "",
            ),
            "rules[r].gate.require[signed].signature: only images have signatures",
        ),
        (
            config(
                promote,
                &good,
                &format!(r#"attest = {{ key = "file:{ci_pub}" }}"#),
            ),
            "rules[r].attest.key: not an unencrypted PEM private key",
        ),
    ];
    for (toml, expected) in cases {
        let (code, stderr) = crate::cli::check(&toml);
        assert_eq!(code, 2, "{stderr}");
        assert!(
            stderr.contains(expected),
            "expected `{expected}` in:\n{stderr}"
        );
        assert!(!stderr.contains("BEGIN"), "a key was quoted:\n{stderr}");
    }
}

/// A registry with the OCI 1.1 referrers API (faked: Docker Distribution 2.8 has
/// none) holds the signature and an SBOM as referrers: the signature counts, and
/// both are carried to a real registry by digest.
#[tokio::test]
async fn referrers_are_read_for_signatures_and_carried_by_digest() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let keys = Keys::new();
    let source = MockServer::start().await;
    let prod = RegistryProc::start(RegistryOptions::default()).await;
    let app = spawn_app(&config(&source.uri(), &prod.base, &keys, "30s")).await;
    let serve = |at: String, body: Vec<u8>, media_type: &'static str| {
        Mock::given(method("GET")).and(path(at)).respond_with(
            ResponseTemplate::new(200)
                .insert_header("Content-Type", media_type)
                .set_body_bytes(body),
        )
    };
    let blob = |bytes: &[u8]| (digest_of(bytes), bytes.len(), bytes.to_vec());
    let manifest = |config: &(String, usize, Vec<u8>), layers: Vec<Value>, extra: Value| {
        let mut m = json!({
            "schemaVersion": 2, "mediaType": IMAGE,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": config.1, "digest": config.0},
            "layers": layers,
        });
        if let (Some(m), Some(extra)) = (m.as_object_mut(), extra.as_object()) {
            m.extend(extra.clone());
        }
        serde_json::to_vec(&m).unwrap()
    };
    let config_blob = blob(br#"{"architecture":"amd64","os":"linux"}"#);
    let image_layer = blob(format!("layer {}", ulid_like()).as_bytes());
    let image = manifest(
        &config_blob,
        vec![
            json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": image_layer.1, "digest": image_layer.0}),
        ],
        json!({}),
    );
    let digest = digest_of(&image);
    let empty = blob(b"{}");
    let signed = blob(&payload(&digest));
    let signature = keys.sign(&keys.ci, &signed.2);
    let subject = json!({"subject": {"mediaType": IMAGE, "digest": digest, "size": image.len()}});
    let mut sig_extra = subject.clone();
    sig_extra["artifactType"] = json!("application/vnd.dev.cosign.artifact.sig.v1+json");
    let sig = manifest(
        &empty,
        vec![
            json!({"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", "size": signed.1, "digest": signed.0,
            "annotations": {"dev.cosignproject.cosign/signature": signature}}),
        ],
        sig_extra,
    );
    let sbom_blob = blob(br#"{"spdxVersion":"SPDX-2.3"}"#);
    let mut sbom_extra = subject;
    sbom_extra["artifactType"] = json!("application/spdx+json");
    let sbom = manifest(
        &empty,
        vec![
            json!({"mediaType": "application/spdx+json", "size": sbom_blob.1, "digest": sbom_blob.0}),
        ],
        sbom_extra,
    );
    let (sig_digest, sbom_digest) = (digest_of(&sig), digest_of(&sbom));
    let referrers = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": IMAGE, "digest": sig_digest, "size": sig.len(), "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json"},
            {"mediaType": IMAGE, "digest": sbom_digest, "size": sbom.len(), "artifactType": "application/spdx+json"},
        ]
    }))
    .unwrap();
    let v2 = "/v2/dev/app";
    for m in [
        serve(format!("{v2}/manifests/1.0"), image.clone(), IMAGE),
        serve(format!("{v2}/manifests/{digest}"), image.clone(), IMAGE),
        serve(format!("{v2}/manifests/{sig_digest}"), sig, IMAGE),
        serve(format!("{v2}/manifests/{sbom_digest}"), sbom, IMAGE),
        serve(
            format!("{v2}/referrers/{digest}"),
            referrers,
            "application/vnd.oci.image.index.v1+json",
        ),
    ] {
        m.mount(&source).await;
    }
    for b in [&config_blob, &image_layer, &empty, &signed, &sbom_blob] {
        serve(
            format!("{v2}/blobs/{}", b.0),
            b.2.clone(),
            "application/octet-stream",
        )
        .mount(&source)
        .await;
    }
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(404))
        .mount(&source)
        .await;

    let job = ship(&app, "1.0", &digest).await;
    let done = app.wait_final(&job).await;
    assert_eq!(done["outcome"], "promoted", "{done:#}");
    let verified = records(&app, &job, "signature.verified").await;
    assert!(
        verified[0]["message"].as_str().unwrap().contains(&signed.0),
        "{verified:#?}"
    );
    assert_eq!(
        prod.manifest_digest("prod/app", "1.0", None).await,
        Some(digest)
    );
    for referrer in [&sig_digest, &sbom_digest] {
        assert_eq!(
            prod.manifest_digest("prod/app", referrer, None)
                .await
                .as_ref(),
            Some(referrer)
        );
    }
    let carried = records(&app, &job, "evidence.copied").await;
    let message = carried[0]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("referrer {sig_digest}")),
        "{message}"
    );
    assert!(
        message.contains(&format!("referrer {sbom_digest}")),
        "{message}"
    );
}
