//! Throw-away databases for tests: an SQLite file, or a fresh database on the real
//! PostgreSQL server (127.0.0.1:5432, or KEFU_TEST_POSTGRES_URL), dropped afterwards.
//! Only tests depend on this crate, so none of it reaches a production build.
use sqlx::{Connection as _, PgConnection};

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A fresh database, removed again when dropped.
pub enum TestDb {
    Sqlite(tempfile::TempDir),
    Postgres { admin: String, name: String },
}

impl TestDb {
    /// An SQLite file in a temporary directory, and its URL.
    pub fn sqlite() -> (Self, String) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite://{}/kefu.db?mode=rwc", dir.path().display());
        (Self::Sqlite(dir), url)
    }

    /// Creates an empty PostgreSQL database and returns its URL. A missing server fails
    /// the test: nothing here skips silently.
    pub async fn postgres() -> (Self, String) {
        let admin =
            std::env::var("KEFU_TEST_POSTGRES_URL").unwrap_or_else(|_| ADMIN_URL.to_owned());
        let name = format!("kefu_test_{}", uuid::Uuid::new_v4().simple());
        let mut server = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!("PostgreSQL must be running for these tests ({admin}): {e:#}")
        });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut server)
            .await
            .expect("CREATE DATABASE");
        let url = format!(
            "{}/{name}",
            admin.rsplit_once('/').expect("a database URL").0
        );
        (Self::Postgres { admin, name }, url)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Self::Postgres { admin, name } = self {
            let (admin, name) = (admin.clone(), name.clone());
            // A runtime of its own: the test's may be gone or be the one calling drop.
            let dropped = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                runtime.block_on(async {
                    if let Ok(mut server) = PgConnection::connect(&admin).await {
                        let _ =
                            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                                .execute(&mut server)
                                .await;
                    }
                });
            });
            let _ = dropped.join();
        }
    }
}
