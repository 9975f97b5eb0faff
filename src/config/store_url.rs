//! `store.url`: which store gantry keeps its state in. Validated without connecting,
//! so `gantry check` works offline.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use tokio_postgres::config::Host;

use super::pg_tls::{PgTls, SslMode, TlsFiles};
use super::secret::Secret;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// One SQLite file: one process.
    Sqlite(PathBuf),
    /// A PostgreSQL database shared by any number of replicas.
    Postgres(PostgresUrl),
}

/// A PostgreSQL connection URL (`postgres://` or `postgresql://`). It may carry a
/// password, so it is held as a [`Secret`]: `Debug` and `Display` show only who
/// connects where (`postgres://gantry@db:5432/gantry`), never the password.
#[derive(Clone)]
pub struct PostgresUrl {
    /// The URL as the client library reads it: libpq's TLS parameters taken out
    /// (they live in `tls`) and `sslmode` put back as the client negotiates it.
    url: Secret,
    shown: String,
    tls: PgTls,
}

/// The URL's query parameters gantry reads itself (the client library knows only
/// some of libpq's `sslmode` values and none of the certificate files).
const TLS_PARAMS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

impl PostgresUrl {
    /// Checks the URL's syntax and settings and reads its certificate files, without
    /// connecting.
    pub fn parse(url: &str) -> Result<PostgresUrl, String> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut kept: Vec<&str> = Vec::new();
        let mut tls_params: Vec<(String, String)> = Vec::new();
        for piece in query.split('&').filter(|p| !p.is_empty()) {
            match form_urlencoded::parse(piece.as_bytes()).next() {
                Some((k, v)) if TLS_PARAMS.contains(&k.as_ref()) => {
                    tls_params.push((k.into_owned(), v.into_owned()));
                }
                _ => kept.push(piece),
            }
        }
        let param = |name: &str| {
            tls_params
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let mode = param("sslmode").map_or(Ok(SslMode::Prefer), SslMode::parse)?;
        let tls = PgTls::load(
            mode,
            &TlsFiles {
                root_cert: param("sslrootcert"),
                cert: param("sslcert"),
                key: param("sslkey"),
            },
        )?;
        kept.push(match mode.wire() {
            tokio_postgres::config::SslMode::Disable => "sslmode=disable",
            tokio_postgres::config::SslMode::Require => "sslmode=require",
            _ => "sslmode=prefer",
        });
        let url = format!("{base}?{}", kept.join("&"));
        let config = tokio_postgres::Config::from_str(&url)
            .map_err(|e| format!("not a valid PostgreSQL URL: {e}"))?;
        let ports = config.get_ports();
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let host = match h {
                    Host::Tcp(name) => name.clone(),
                    Host::Unix(path) => path.display().to_string(),
                };
                match ports.get(i).or(ports.first()) {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                }
            })
            .collect();
        let shown = format!(
            "postgres://{}@{}/{}",
            config.get_user().unwrap_or(""),
            hosts.join(","),
            config.get_dbname().unwrap_or("")
        );
        Ok(PostgresUrl {
            url: Secret::new(&url),
            shown,
            tls,
        })
    }

    /// The full URL, password included: only for connecting.
    pub fn expose(&self) -> &str {
        self.url.expose()
    }

    /// How the connection speaks TLS.
    pub fn tls(&self) -> &PgTls {
        &self.tls
    }
}

impl fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl PartialEq for PostgresUrl {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for PostgresUrl {}

/// Reads `store.url`. An error never repeats the value, which may hold a password.
pub(super) fn parse_store_url(url: &str) -> Result<StoreUrl, String> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        return if path.is_empty() {
            Err("sqlite:// needs a file path, e.g. sqlite://data/gantry.db".into())
        } else {
            Ok(StoreUrl::Sqlite(PathBuf::from(path)))
        };
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return PostgresUrl::parse(url).map(StoreUrl::Postgres);
    }
    let scheme = url.split_once(':').map_or("", |(s, _)| s);
    Err(format!(
        "`{}` is not a supported store; use sqlite://PATH or postgres://USER@HOST/DATABASE",
        if scheme.is_empty() { "(none)" } else { scheme }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_and_both_postgres_schemes_parse() {
        assert_eq!(
            parse_store_url("sqlite://data/g.db"),
            Ok(StoreUrl::Sqlite("data/g.db".into()))
        );
        for url in [
            "postgres://gantry@db:5432/gantry",
            "postgresql://gantry@db/gantry?options=-csearch_path%3Dgantry",
        ] {
            match parse_store_url(url) {
                Ok(StoreUrl::Postgres(p)) => {
                    assert_eq!(
                        p.expose(),
                        format!(
                            "{url}{}sslmode=prefer",
                            if url.contains('?') { "&" } else { "?" }
                        )
                    );
                    assert_eq!(p.tls().mode, SslMode::Prefer);
                }
                other => panic!("{url}: {other:?}"),
            }
        }
        assert!(parse_store_url("sqlite://").is_err());
        assert!(
            parse_store_url("mysql://db/x")
                .unwrap_err()
                .contains("`mysql`")
        );
    }

    #[test]
    fn the_password_is_never_shown() {
        let url = "postgres://gantry:hunter2@db.internal:6432/gantry";
        let store = parse_store_url(url).unwrap();
        let shown = format!("{store:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(shown, "Postgres(postgres://gantry@db.internal:6432/gantry)");
        // A mistyped URL is not echoed either.
        let err = parse_store_url("postgres:/gantry:hunter2@db/gantry").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        let err = parse_store_url("postgres://gantry:hunter2@db:port/gantry").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn libpq_tls_parameters_are_read_by_gantry_and_their_files_checked() {
        let url = |q: &str| PostgresUrl::parse(&format!("postgres://gantry@db/gantry?{q}"));
        for (q, mode, wire) in [
            ("sslmode=disable", SslMode::Disable, "sslmode=disable"),
            ("sslmode=require", SslMode::Require, "sslmode=require"),
            (
                "sslmode=verify-full&sslrootcert=system",
                SslMode::VerifyFull,
                "sslmode=require",
            ),
            (
                "options=-c%20x%3Dy&sslmode=verify-ca&sslrootcert=system",
                SslMode::VerifyCa,
                "sslmode=require",
            ),
        ] {
            match url(q) {
                Ok(p) => {
                    assert_eq!(p.tls().mode, mode, "{q}");
                    assert!(p.expose().ends_with(wire), "{q}: {}", p.expose());
                    assert!(!p.expose().contains("sslrootcert"), "{q}");
                }
                // A machine without system roots says so, naming no file.
                Err(e) => assert!(e.contains("system has no root"), "{q}: {e}"),
            }
        }
        assert!(
            url("options=-c%20x%3Dy")
                .unwrap()
                .expose()
                .starts_with("postgres://gantry@db/gantry?options=-c%20x%3Dy&")
        );
        let err = url("sslmode=allow").unwrap_err();
        assert!(err.contains("`allow`"), "{err}");
        let err = url("sslmode=verify-full&sslrootcert=/nonexistent/ca.pem").unwrap_err();
        assert!(
            err.contains("sslrootcert `/nonexistent/ca.pem` cannot be read"),
            "{err}"
        );
        let err = url("sslmode=require&sslcert=/nonexistent/c.pem").unwrap_err();
        assert!(err.contains("go together"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let err = url(&format!("sslmode=verify-ca&sslrootcert={}", junk.display())).unwrap_err();
        assert!(err.contains("holds no certificate"), "{err}");
    }
}
