use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

use crate::StoreError;
use crate::migrations::{self, MigrationState, migrate_error};

/// The SQL dialects dt-users runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    MySql,
    Sqlite,
}

impl Dialect {
    pub fn of_url(url: &str) -> Option<Self> {
        if url.starts_with("mysql:") || url.starts_with("mariadb:") {
            Some(Self::MySql)
        } else if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::MySql => "mysql",
            Self::Sqlite => "sqlite",
        }
    }
}

/// A connection pool and the dialect behind it.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    dialect: Dialect,
}

impl Db {
    /// Opens a pool lazily: a database that is down at start-up makes requests answer 503
    /// until it is back, rather than keeping the service from starting. A statement waits at
    /// most `lock_timeout` for a row lock (MySQL) or the write lock (SQLite): a request must
    /// not hang on a lock for the server's default (50 s on MySQL).
    pub fn connect_lazy(
        url: &str,
        max_connections: u32,
        lock_timeout: Duration,
    ) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::of_url(url).ok_or_else(|| {
            StoreError::Corrupt("the database URL must start with mysql:// or sqlite://".into())
        })?;
        let url = match dialect {
            // sqlx's MySQL driver knows the `mysql` scheme only.
            Dialect::MySql => url.replacen("mariadb:", "mysql:", 1),
            Dialect::Sqlite => url.to_owned(),
        };
        let options = AnyConnectOptions::from_str(&url).map_err(StoreError::from)?;
        let pool = AnyPoolOptions::new()
            .max_connections(match dialect {
                Dialect::MySql => max_connections,
                // SQLite has one writer; a small pool keeps lock waits short.
                Dialect::Sqlite => max_connections.min(4),
            })
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    match dialect {
                        Dialect::Sqlite => {
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            let busy =
                                format!("PRAGMA busy_timeout = {}", lock_timeout.as_millis());
                            conn.execute(sqlx::AssertSqlSafe(busy)).await?;
                            conn.execute("PRAGMA foreign_keys = ON").await?;
                            conn.execute("PRAGMA synchronous = NORMAL").await?;
                        }
                        Dialect::MySql => {
                            // Whole seconds, at least one: the server's unit and minimum.
                            let wait = format!(
                                "SET SESSION innodb_lock_wait_timeout = {}",
                                lock_timeout.as_secs().max(1)
                            );
                            conn.execute(sqlx::AssertSqlSafe(wait)).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect_lazy_with(options);
        Ok(Self { pool, dialect })
    }

    /// Begins a transaction that will write. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`), so two writers queue on the busy timeout instead of one failing
    /// when both upgrade a read lock.
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        let tx = match self.dialect {
            Dialect::MySql => self.pool.begin().await?,
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
        };
        Ok(tx)
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Applies every migration this binary carries that the database lacks, then brings
    /// stored lookup keys to the current normalization (a data step SQL cannot express; it
    /// reads only the rows outside ASCII, so running it again costs little).
    pub async fn migrate(&self) -> Result<MigrationState, StoreError> {
        let migrator = migrations::migrator(self.dialect);
        migrator.run(&self.pool).await.map_err(migrate_error)?;
        let mut conn = self.pool.acquire().await?;
        let users = crate::users::normalize_email_keys(&mut conn, self.dialect).await?;
        let links =
            crate::email_tokens::normalize_token_email_keys(&mut conn, self.dialect).await?;
        if users + links > 0 {
            tracing::info!(users, links, "email lookup keys normalized");
        }
        drop(conn);
        self.migration_state().await
    }

    pub async fn migration_state(&self) -> Result<MigrationState, StoreError> {
        let migrator = migrations::migrator(self.dialect);
        let mut conn = self.pool.acquire().await?;
        migrations::state(&mut conn, &migrator).await
    }

    /// One round trip, for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}
