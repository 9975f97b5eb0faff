//! TLS to PostgreSQL (SPEC §12) against private clusters started by the test, with
//! certificates made in the test: libpq's `sslmode` meanings, the store contract over
//! `verify-full`, and errors that name the mode.

use std::path::Path;

use gantry::config::{PostgresUrl, StoreUrl};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use crate::pg_cluster::{Cluster, ServerTls};

/// A certificate authority and, when asked, a server certificate it signed for
/// `localhost` only (not `127.0.0.1`, so `verify-full` by address fails on the name).
struct Pki {
    ca_pem: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Pki {
            ca_pem: issuer.pem(),
            issuer,
        }
    }

    /// A certificate for `names` (subject alternative names) and common name `cn`.
    fn leaf(&self, names: &[&str], cn: &str) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn server(&self) -> ServerTls {
        let (cert_pem, key_pem) = self.leaf(&["localhost"], "localhost");
        ServerTls {
            cert_pem,
            key_pem,
            client_ca_pem: None,
        }
    }
}

fn file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

async fn open(url: &str) -> Result<(), String> {
    let url = StoreUrl::Postgres(PostgresUrl::parse(url)?);
    gantry::store::open(&url)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Whether every connection named `application_name` is encrypted, and how many.
async fn encrypted(cluster: &Cluster, application_name: &str) -> (bool, i64) {
    let (client, connection) = tokio_postgres::connect(&cluster.admin_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT coalesce(bool_and(s.ssl), false), count(*) FROM pg_stat_activity a
             JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = $1",
            &[&application_name],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_the_right_ca_passes_the_store_contract_over_tls() {
    let pki = Pki::new("gantry test CA");
    let Some(cluster) = Cluster::start(Some(&pki.server())) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = file(dir.path(), "ca.pem", &pki.ca_pem);
    let base = format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={ca}",
        cluster.port
    );
    // The store's connections are encrypted.
    let url = format!("{base}&application_name=tls_probe");
    let store = gantry::store::open(&StoreUrl::Postgres(PostgresUrl::parse(&url).unwrap()))
        .await
        .unwrap();
    let (all, n) = encrypted(&cluster, "tls_probe").await;
    assert!(
        all && n >= 2,
        "pooled and listening connections over TLS: {all} {n}"
    );
    drop(store);
    let ran = crate::store_contract::on_server(&cluster.admin_url(), &base).await;
    assert_eq!(
        ran,
        crate::store_contract::CHECKS,
        "every contract check ran over TLS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_does_not_verify_is_refused_naming_the_mode() {
    let pki = Pki::new("gantry test CA");
    let Some(cluster) = Cluster::start(Some(&pki.server())) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = file(dir.path(), "ca.pem", &pki.ca_pem);
    let other = file(dir.path(), "other.pem", &Pki::new("another CA").ca_pem);
    let port = cluster.port;
    let url = |host: &str, mode: &str, root: &str| {
        format!("postgres://postgres@{host}:{port}/postgres?sslmode={mode}&sslrootcert={root}")
    };
    // Another CA's root: refused by every mode that checks, whatever the name.
    for mode in ["verify-full", "verify-ca", "require"] {
        let err = open(&url("localhost", mode, &other)).await.unwrap_err();
        assert!(
            err.contains(&format!(
                "sslmode={mode}: the server's certificate does not verify"
            )) && err.contains("UnknownIssuer"),
            "{mode}: {err}"
        );
    }
    // The right CA by address: the certificate names `localhost` only, so
    // `verify-full` refuses it and `verify-ca` (the chain alone) accepts it.
    let err = open(&url("127.0.0.1", "verify-full", &ca))
        .await
        .unwrap_err();
    assert!(
        err.contains("sslmode=verify-full: the server's certificate does not verify")
            && err.contains("NotValidForName"),
        "{err}"
    );
    open(&url("127.0.0.1", "verify-ca", &ca)).await.unwrap();
    // Encrypted without checks, as libpq's `require` and `prefer` without a root.
    let plain =
        |mode: &str| format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode={mode}");
    open(&plain("require")).await.unwrap();
    open(&plain("prefer")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_against_a_server_without_tls_is_refused_and_disable_works() {
    let Some(cluster) = Cluster::start(None) else {
        return;
    };
    let url = |mode: &str| {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode={mode}",
            cluster.port
        )
    };
    for mode in ["require", "verify-ca", "verify-full"] {
        let err = open(&format!("{}&sslrootcert=system", url(mode)))
            .await
            .map(|()| "opened".to_string())
            .unwrap_or_else(|e| e);
        // A machine without system roots refuses before connecting, naming that.
        if err.contains("system has no root") {
            continue;
        }
        assert!(
            err.contains(&format!(
                "sslmode={mode} requires TLS, and the server does not offer it"
            )),
            "{mode}: {err}"
        );
    }
    let err = open(&url("require")).await.unwrap_err();
    assert!(err.contains("sslmode=require requires TLS"), "{err}");
    open(&url("disable")).await.unwrap();
    open(&url("prefer")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_asks_for_a_client_certificate_gets_the_configured_one() {
    let pki = Pki::new("gantry test CA");
    let clients = Pki::new("client CA");
    let mut server = pki.server();
    server.client_ca_pem = Some(clients.ca_pem.clone());
    let Some(cluster) = Cluster::start(Some(&server)) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = file(dir.path(), "ca.pem", &pki.ca_pem);
    let (cert, key) = clients.leaf(&[], "postgres");
    let cert = file(dir.path(), "client.pem", &cert);
    let key = file(dir.path(), "client.key", &key);
    let url = format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={ca}",
        cluster.port
    );
    // Without a certificate the server refuses (`cert` authentication).
    let err = open(&url).await.unwrap_err();
    assert!(err.contains("certificate"), "{err}");
    // With the one its CA signed, for the user, it connects.
    open(&format!("{url}&sslcert={cert}&sslkey={key}"))
        .await
        .unwrap();
    // One signed by another CA is refused.
    let (other_cert, other_key) = pki.leaf(&[], "postgres");
    let other_cert = file(dir.path(), "other.pem", &other_cert);
    let other_key = file(dir.path(), "other.key", &other_key);
    assert!(
        open(&format!("{url}&sslcert={other_cert}&sslkey={other_key}"))
            .await
            .is_err()
    );
}

#[test]
fn check_reads_the_certificate_files_without_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let junk = file(dir.path(), "junk.pem", "-----BEGIN NOTHING-----");
    for (query, says) in [
        (
            "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem".to_string(),
            "sslrootcert `/nonexistent/ca.pem` cannot be read",
        ),
        (
            format!("sslmode=verify-ca&sslrootcert={junk}"),
            "is not PEM",
        ),
        (
            "sslmode=require&sslkey=/k.pem".to_string(),
            "sslcert and sslkey go together",
        ),
        ("sslmode=sometimes".to_string(), "sslmode `sometimes`"),
    ] {
        let (code, stderr) = crate::cli::check(&format!(
            "[store]\nurl = \"postgres://gantry@db.invalid:5432/gantry?{query}\"\n"
        ));
        assert_eq!(code, 2, "{query}: {stderr}");
        assert!(stderr.contains(says), "{query}: {stderr}");
    }
}
