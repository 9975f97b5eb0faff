//! TLS to PostgreSQL (SPEC §12): libpq's `sslmode` values with libpq's meanings, over
//! rustls. The certificate files are read and checked when the config loads, so
//! `gantry check` finds a missing or malformed file without connecting.
//!
//! | `sslmode`     | TLS                       | certificate checked                 |
//! |---------------|---------------------------|-------------------------------------|
//! | `disable`     | never                     | —                                   |
//! | `prefer`      | when the server offers it | no                                  |
//! | `require`     | always                    | no; as `verify-ca` when `sslrootcert` is given (libpq does the same) |
//! | `verify-ca`   | always                    | chains to `sslrootcert` (or the system's roots) |
//! | `verify-full` | always                    | as `verify-ca`, and names the host connected to |

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// libpq's `sslmode` values (`allow` is refused: it falls back to plain text where
/// `prefer` would not, and no managed service needs it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(value: &str) -> Result<SslMode, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode `{other}` is not one of disable, prefer, require, verify-ca, \
                     verify-full"
                ));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// The mode the PostgreSQL client negotiates with: whether TLS is tried, and
    /// whether its absence fails the connection.
    pub fn wire(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }

    /// Whether the connection fails without TLS.
    pub fn requires_tls(self) -> bool {
        !matches!(self, SslMode::Disable | SslMode::Prefer)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The files of the URL's `sslrootcert`, `sslcert` and `sslkey`.
#[derive(Debug, Default)]
pub struct TlsFiles<'a> {
    pub root_cert: Option<&'a str>,
    pub cert: Option<&'a str>,
    pub key: Option<&'a str>,
}

/// How gantry speaks TLS to PostgreSQL: the mode and the rustls settings it implies,
/// built once from files already read.
#[derive(Clone)]
pub struct PgTls {
    pub mode: SslMode,
    pub client: Arc<ClientConfig>,
}

impl fmt::Debug for PgTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgTls({})", self.mode)
    }
}

impl PgTls {
    /// Reads and checks the files and builds the TLS settings `mode` means. Errors
    /// name the parameter and file, never a key's content.
    pub fn load(mode: SslMode, files: &TlsFiles<'_>) -> Result<PgTls, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        // libpq: `require` with a root certificate verifies the chain, as `verify-ca`.
        let checks = match (mode, files.root_cert) {
            (SslMode::VerifyFull, _) => Checks::Full,
            (SslMode::VerifyCa, _) | (SslMode::Require, Some(_)) => Checks::Chain,
            _ => Checks::None,
        };
        let chain = match checks {
            Checks::None => None,
            Checks::Chain | Checks::Full => Some(
                WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots(files.root_cert)?),
                    provider.clone(),
                )
                .build()
                .map_err(|e| format!("sslrootcert: {e}"))?,
            ),
        };
        let verifier = Arc::new(ModeVerifier {
            chain,
            name: checks == Checks::Full,
            provider: provider.clone(),
        });
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS settings: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let client = match (files.cert, files.key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let chain = certificates("sslcert", cert)?;
                let key = PrivateKeyDer::from_pem_file(Path::new(key)).map_err(|e| {
                    format!("sslkey `{key}` holds no readable PEM private key ({e})")
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("sslcert and sslkey do not make a client identity: {e}"))?
            }
            _ => return Err("sslcert and sslkey go together: give both or neither".into()),
        };
        Ok(PgTls {
            mode,
            client: Arc::new(client),
        })
    }

    /// Why a connection failed, in the operator's terms when TLS was the cause: the
    /// mode required TLS and the server offered none, or the server's certificate did
    /// not verify. `None` when the cause lies elsewhere.
    pub fn explain(&self, error: &(dyn std::error::Error + 'static)) -> Option<String> {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(e) = cause {
            // An I/O error's `source` skips the error it wraps: look inside it too.
            let wrapped = e
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref::<rustls::Error>());
            if let Some(rustls::Error::InvalidCertificate(why)) =
                wrapped.or_else(|| e.downcast_ref::<rustls::Error>())
            {
                return Some(format!(
                    "sslmode={}: the server's certificate does not verify ({why:?})",
                    self.mode
                ));
            }
            if e.to_string() == "server does not support TLS" {
                return Some(format!(
                    "sslmode={} requires TLS, and the server does not offer it",
                    self.mode
                ));
            }
            cause = e.source();
        }
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checks {
    None,
    Chain,
    Full,
}

/// `sslrootcert`'s certificates, or the system's roots when it is absent or `system`.
fn roots(root_cert: Option<&str>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match root_cert {
        Some(path) if path != "system" => {
            for cert in certificates("sslrootcert", path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("sslrootcert `{path}`: {e}"))?;
            }
        }
        _ => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err("no sslrootcert given and the system has no root certificates".into());
            }
        }
    }
    Ok(roots)
}

/// Every certificate of a PEM file; at least one.
fn certificates(param: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(Path::new(path))
        .map_err(|e| format!("{param} `{path}` cannot be read ({e})"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{param} `{path}` is not PEM ({e})"))?;
    if certs.is_empty() {
        return Err(format!("{param} `{path}` holds no certificate"));
    }
    Ok(certs)
}

/// The server's certificate checked as the mode says. `prefer` and `require` without
/// a root (`chain` none): encrypted, the certificate not checked (libpq's meaning).
/// `verify-ca`: the chain must lead to a trusted root, the name need not be the
/// host's — the WebPKI verifier checks the name last, after the chain, so a name
/// error alone means the chain verified. `verify-full`: both. In every mode the
/// handshake's signatures are verified, so the session is with whoever holds the
/// certificate's key.
#[derive(Debug)]
struct ModeVerifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ModeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
