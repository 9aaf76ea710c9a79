use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::TaskSink;
use apalis_redis::RedisStorage;
use apalis_sqlite::{SqliteConnectOptions, SqlitePool, SqliteStorage};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use super::SendEmailJob;
use crate::config::JobsConfig;
use crate::runner::BoxError;

/// Why the job queue failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("DT_USERS_JOBS_URL: {0}")]
    Url(#[source] redis::RedisError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("{path}: {source}")]
    File {
        path: String,
        #[source]
        source: BoxError,
    },
    #[error("pushing a job: {0}")]
    Push(#[source] BoxError),
}

/// Where jobs wait: Redis (`DT_USERS_JOBS_URL`), or a SQLite file under the data directory.
#[derive(Clone)]
pub enum JobQueue {
    Redis {
        client: redis::Client,
        config: apalis_redis::Config,
        connection: Arc<OnceCell<ConnectionManager>>,
    },
    Sqlite(SqliteStorage<SendEmailJob>),
}

impl std::fmt::Debug for JobQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.backend())
    }
}

impl JobQueue {
    /// Opens the queue. Redis is connected on first use, so a queue that is down at start-up
    /// delays jobs instead of stopping the process.
    pub async fn open(jobs: &JobsConfig, data_dir: &std::path::Path) -> Result<Self, QueueError> {
        if let Some(url) = &jobs.url {
            let client = redis::Client::open(url.as_str()).map_err(QueueError::Url)?;
            let config = apalis_redis::Config::default()
                .queue(format!("{}:{}", jobs.namespace, SendEmailJob::NAME))
                .heartbeat_interval(jobs.heartbeat)
                .missed_heartbeats(jobs.missed_heartbeats.get());
            return Ok(Self::Redis {
                client,
                config,
                connection: Arc::new(OnceCell::new()),
            });
        }
        let path = data_dir.join("jobs.db");
        let file = |source: BoxError| QueueError::File {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(|e| file(e.into()))?;
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(|e| file(e.into()))?
            .create_if_missing(true);
        let pool = SqlitePool::connect_with(options)
            .await
            .map_err(|e| file(e.into()))?;
        SqliteStorage::setup(&pool)
            .await
            .map_err(|e| file(e.into()))?;
        let config = apalis_sqlite::Config::default()
            .queue(SendEmailJob::NAME)
            .heartbeat_interval(jobs.heartbeat)
            .missed_heartbeats(jobs.missed_heartbeats.get());
        Ok(Self::Sqlite(SqliteStorage::new(&pool).with_config(config)))
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Self::Redis { .. } => "redis",
            Self::Sqlite(_) => "sqlite",
        }
    }

    pub(super) async fn redis_storage(
        client: &redis::Client,
        config: &apalis_redis::Config,
        connection: &OnceCell<ConnectionManager>,
    ) -> Result<RedisStorage<SendEmailJob>, QueueError> {
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let manager = connection
            .get_or_try_init(|| ConnectionManager::new_with_config(client.clone(), manager_config))
            .await?;
        Ok(RedisStorage::new(manager.clone()).with_config(config.clone()))
    }

    /// Queues one job.
    pub async fn push(&self, job: SendEmailJob) -> Result<(), QueueError> {
        match self {
            Self::Redis {
                client,
                config,
                connection,
            } => {
                let mut storage = Self::redis_storage(client, config, connection).await?;
                storage
                    .push(job)
                    .await
                    .map_err(|e| QueueError::Push(e.into()))
            }
            Self::Sqlite(storage) => storage
                .clone()
                .push(job)
                .await
                .map_err(|e| QueueError::Push(e.into())),
        }
    }
}
