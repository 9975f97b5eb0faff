//! The stores a test can run on: a SQLite file in the test's directory, or a
//! PostgreSQL schema of the test's own on the server at 127.0.0.1:5432 (or the base
//! URL in `GANTRY_TEST_PG`), dropped at the end. Without a server the PostgreSQL
//! variant of a test says so loudly and passes, except under CI (`CI` set), where
//! it fails.

use std::path::Path;
use std::time::Duration;

use tokio_postgres::NoTls;

/// Where the tests find PostgreSQL when `GANTRY_TEST_PG` is not set: trust auth,
/// database `test`.
const DEFAULT_PG: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Declares each test once per store, as `name::sqlite` and `name::postgres`, each
/// calling `name(store)` with a store of type `$kind` ([`Open`]).
macro_rules! on_each_store {
    ($kind:ident: $($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let store = <super::$kind as $crate::stores::Open>::sqlite().await;
                super::$name(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(store) = <super::$kind as $crate::stores::Open>::postgres().await {
                    super::$name(store).await;
                }
            }
        }
    )+};
}

/// A store for a test, opened on either engine.
pub trait Open: Sized {
    async fn sqlite() -> Self;
    /// `None` (after a loud message) when no PostgreSQL server answers.
    async fn postgres() -> Option<Self>;
}

/// A PostgreSQL schema for one test; dropped with everything in it at the end.
pub struct PgSchema {
    /// The test's own (plain) connections.
    base: String,
    /// The store's connections: the same server, perhaps over TLS.
    store_base: String,
    name: String,
}

impl PgSchema {
    pub async fn create() -> Option<PgSchema> {
        let base = std::env::var("GANTRY_TEST_PG").unwrap_or_else(|_| DEFAULT_PG.to_string());
        Self::create_on(&base, &base).await
    }

    /// A schema on the server at `base`, whose store connects by `store_base`.
    pub async fn create_on(base: &str, store_base: &str) -> Option<PgSchema> {
        let base = base.to_string();
        let client = match connect(&base).await {
            Ok(c) => c,
            // In CI a PostgreSQL test that did not run is a failure, not a pass:
            // `.ci/run` makes sure the server is there.
            Err(e) if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) => {
                panic!(
                    "PostgreSQL not reachable at {base} ({e}) and CI is set: the PostgreSQL tests must run"
                )
            }
            Err(e) => {
                eprintln!(
                    "\n!!!!!!!!\nSKIPPED: PostgreSQL not reachable at {base} ({e}); \
                     the PostgreSQL test did not run. Start a server or set GANTRY_TEST_PG.\n!!!!!!!!\n"
                );
                return None;
            }
        };
        let name = format!(
            "gantry_t_{}",
            ulid::Ulid::generate().to_string().to_lowercase()
        );
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .unwrap();
        Some(PgSchema {
            base,
            store_base: store_base.to_string(),
            name,
        })
    }

    /// A store URL whose connections work in this schema (`search_path`) and carry
    /// its name as `application_name`, so a test can find its own sessions.
    pub fn url(&self) -> String {
        let sep = if self.store_base.contains('?') {
            '&'
        } else {
            '?'
        };
        format!(
            "{}{sep}options=-csearch_path%3D{name}&application_name={name}",
            self.store_base,
            name = self.name
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A connection of the test's own to the server, outside any store.
    pub async fn connect(&self) -> tokio_postgres::Client {
        connect(&self.base).await.unwrap()
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        // Drop cannot await inside the test's runtime: a thread with a runtime of
        // its own. A lock timeout keeps a stuck session from hanging the test.
        let (base, name) = (self.base.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(c) = connect(&base).await {
                    let sql = format!("SET lock_timeout = '10s'; DROP SCHEMA {name} CASCADE");
                    if let Err(e) = c.batch_execute(&sql).await {
                        eprintln!("could not drop test schema {name}: {e}");
                    }
                }
            });
        })
        .join();
    }
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.connect_timeout(Duration::from_secs(3));
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// The store a `gantry serve` child process of a test runs on.
pub enum TestStore {
    Sqlite,
    Postgres(PgSchema),
}

impl TestStore {
    /// The `store.url` for a test whose files are in `dir`.
    pub fn url(&self, dir: &Path) -> String {
        match self {
            TestStore::Sqlite => format!("sqlite://{}", dir.join("gantry.db").display()),
            TestStore::Postgres(schema) => schema.url(),
        }
    }
}

impl Open for TestStore {
    async fn sqlite() -> Self {
        TestStore::Sqlite
    }

    async fn postgres() -> Option<Self> {
        PgSchema::create().await.map(TestStore::Postgres)
    }
}
