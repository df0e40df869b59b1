use std::path::Path;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::AnyPool;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/postgres");

/// Milliseconds since the Unix epoch: the timestamp format of every table.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Unix seconds, as signed timestamps carry them.
pub fn now_secs() -> i64 {
    now_millis() / 1000
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A connection pool to SQLite or PostgreSQL; the same SQL runs on both.
#[derive(Clone)]
pub struct Database {
    pool: AnyPool,
    backend: Backend,
    url: std::sync::Arc<str>,
}

impl Database {
    /// Connects to `url` and applies pending migrations (PostgreSQL serializes concurrent
    /// migrators with an advisory lock, so replicas may start together).
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let db = Self::connect_without_migrating(url).await?;
        db.migrate().await?;
        Ok(db)
    }

    pub async fn connect_without_migrating(url: &str) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            anyhow::bail!("unsupported DATABASE_URL scheme (expected sqlite:// or postgres://)");
        };
        if backend == Backend::Sqlite {
            create_sqlite_parent_dir(url)?;
        }
        let mut options = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 16 })
            // A database that cannot give a connection within a second is down or
            // overloaded: callers get UNAVAILABLE while they still have time to retry.
            .acquire_timeout(Duration::from_secs(1));
        if backend == Backend::Sqlite {
            options = options.after_connect(|conn, _| {
                Box::pin(async move {
                    // WAL lets readers proceed during writes; writers wait instead of failing.
                    sqlx::query("PRAGMA journal_mode=WAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA busy_timeout=5000")
                        .execute(&mut *conn)
                        .await?;
                    // In WAL mode a commit then survives a crash of kefu without waiting
                    // on the disk (a power cut may lose the last ones, never corrupt the
                    // file); fsync on every commit cost more than the rest of a turn's
                    // storage. Installations that need more durability use PostgreSQL.
                    sqlx::query("PRAGMA synchronous=NORMAL")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            });
        }
        let pool = options
            .connect(url)
            .await
            .map_err(|error| anyhow::anyhow!("connecting to the database: {error}"))?;
        Ok(Self {
            pool,
            backend,
            url: url.into(),
        })
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator
            .run(&self.pool)
            .await
            .map_err(|error| anyhow::anyhow!("applying migrations: {error}"))?;
        Ok(())
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Begins a transaction that will write. On SQLite it takes the write lock first
    /// (BEGIN IMMEDIATE), waiting for it up to the busy timeout: a transaction that read
    /// first and then tried to write while another connection wrote would fail at once
    /// with "database is locked" (in WAL mode the busy handler does not run for that
    /// upgrade), however long the timeout.
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// Begins a transaction for a report's queries: one snapshot for all of them. On
    /// PostgreSQL without JIT compilation, which costs a report's scans of a few hundred
    /// thousand rows about a second more than it saves.
    pub async fn begin_report(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET LOCAL jit = off").execute(&mut *tx).await?;
        }
        Ok(tx)
    }

    /// What a claim's subquery ends with so that claimers skip each other's rows rather
    /// than wait: `FOR UPDATE SKIP LOCKED` on PostgreSQL; nothing on SQLite, where writers
    /// take turns, so the subquery and the update see the same rows.
    pub fn skip_locked(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        }
    }

    /// The PostgreSQL URL when this is PostgreSQL (for LISTEN/NOTIFY), else None.
    pub fn postgres_url(&self) -> Option<&str> {
        (self.backend == Backend::Postgres).then_some(&*self.url)
    }

    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// Readiness probe for the gRPC health service.
    pub fn probe(&self) -> DatabaseProbe {
        DatabaseProbe(self.clone())
    }
}

fn create_sqlite_parent_dir(url: &str) -> anyhow::Result<()> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    if let Some(parent) = Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent)
            .map_err(|error| anyhow::anyhow!("creating {}: {error}", parent.display()))?;
    }
    Ok(())
}

pub struct DatabaseProbe(Database);

impl kefu_runtime::Probe for DatabaseProbe {
    fn name(&self) -> &str {
        "database"
    }

    fn check(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move { Ok(self.0.ping().await?) })
    }
}
