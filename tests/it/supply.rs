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
