//! `store.url`: which store gantry keeps its state in. Validated without connecting,
//! so `gantry check` works offline.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use tokio_postgres::config::{Host, SslMode};

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
    url: Secret,
    shown: String,
}

impl PostgresUrl {
    /// Checks the URL's syntax and settings, without connecting.
    pub fn parse(url: &str) -> Result<PostgresUrl, String> {
        let config = tokio_postgres::Config::from_str(url)
            .map_err(|e| format!("not a valid PostgreSQL URL: {e}"))?;
        if config.get_ssl_mode() == SslMode::Require {
            return Err(
                "sslmode=require is not supported yet: gantry connects to PostgreSQL \
                 without TLS (keep the database on a private network)"
                    .into(),
            );
        }
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
            url: Secret::new(url),
            shown,
        })
    }

    /// The full URL, password included: only for connecting.
    pub fn expose(&self) -> &str {
        self.url.expose()
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
                Ok(StoreUrl::Postgres(p)) => assert_eq!(p.expose(), url),
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
    fn tls_required_is_refused_until_it_is_supported() {
        let err = parse_store_url("postgres://gantry@db/gantry?sslmode=require").unwrap_err();
        assert!(err.contains("sslmode=require"), "{err}");
    }
}
