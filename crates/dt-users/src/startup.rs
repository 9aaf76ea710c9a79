//! Building the application from settings, and serving it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dt_users_domain::{Clock, SystemClock};
use dt_users_store::{Db, MigrationState};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Settings;
use crate::email::Mailer;
use crate::events::{CommandConsumer, EventRelay};
use crate::jobs::{Beat, EmailWorker, JobQueue, OutboxRelay};
use crate::security::access_token::{AccessTokens, MAX_LEEWAY_SECS};
use crate::security::client_ip::{ForwardingHeader, TrustedProxies};
use crate::security::email_token::EmailTokens;
use crate::security::keys::SigningKeys;
use crate::security::password_hasher::PasswordHasherPool;
use crate::security::rate_limit::{RateLimiter, Rules};
use crate::service::App;
use crate::sessions::{MemorySessions, RedisSessions, SessionStore};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("configuration: {0}")]
    Config(String),
    #[error(
        "the database is behind this release (pending migrations: {0:?}); run `dt-users migrate` first"
    )]
    MigrationsPending(Vec<i64>),
    #[error("the database has migrations this release does not know ({0:?}); run a newer dt-users")]
    DatabaseAhead(Vec<i64>),
    #[error("database: {0}")]
    Database(#[from] dt_users_store::StoreError),
    #[error(transparent)]
    Keys(#[from] crate::security::keys::KeyError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Opens the database a `Settings` names (creating the embedded default's directory).
pub fn open_database(settings: &Settings) -> Result<Db, StartupError> {
    if settings.is_embedded_database() {
        std::fs::create_dir_all(&settings.data_dir)?;
    }
    Ok(Db::connect_lazy(
        &settings.effective_database_url(),
        settings.database_max_connections,
        Duration::from_secs(settings.database_lock_timeout),
    )?)
}

/// Builds the use-case layer: checks the schema, loads keys, connects the session store.
/// The embedded default migrates its own SQLite file; any other database must be migrated
/// with `dt-users migrate` first.
/// How many stored hashes are read at start-up to choose the dummy hash's parameters.
const DUMMY_SAMPLE: i64 = 10_000;

pub async fn build_app(
    settings: Settings,
    clock: Arc<dyn Clock>,
) -> Result<Arc<App>, StartupError> {
    let db = open_database(&settings)?;
    let state = if settings.is_embedded_database() {
        db.migrate().await?
    } else {
        db.migration_state().await?
    };
    match state {
        MigrationState::UpToDate { .. } => {}
        MigrationState::Behind { pending } => return Err(StartupError::MigrationsPending(pending)),
        MigrationState::Ahead { unknown } => return Err(StartupError::DatabaseAhead(unknown)),
    }
    let keys = SigningKeys::load(&settings)?;
    if settings.access_token_leeway > MAX_LEEWAY_SECS {
        return Err(StartupError::Config(format!(
            "DT_USERS_ACCESS_TOKEN_LEEWAY: {} s is more than the {MAX_LEEWAY_SECS} s allowed",
            settings.access_token_leeway
        )));
    }
    let tokens = AccessTokens::new(
        keys,
        settings.token_issuer.clone(),
        settings.token_audience.clone(),
        settings.access_token_ttl,
        settings.access_token_leeway,
    );
    let sessions = match settings.redis_url() {
        Some(url) => SessionStore::Redis(
            RedisSessions::new(url, &settings.redis_key_prefix)
                .map_err(|e| StartupError::Config(format!("DT_USERS_REDIS_URL: {e}")))?,
        ),
        None => SessionStore::Memory(MemorySessions::default()),
    };
    let hasher = PasswordHasherPool::new(
        settings.argon2_memory_kib,
        settings.argon2_iterations,
        settings.argon2_parallelism,
        settings.password_hash_concurrency,
        settings.password_hash_queue,
    )
    .map_err(|e| StartupError::Config(e.to_string()))?;
    let stored = {
        let mut conn = db
            .pool()
            .acquire()
            .await
            .map_err(dt_users_store::StoreError::from)?;
        dt_users_store::sample_password_hashes(&mut conn, DUMMY_SAMPLE).await?
    };
    let hasher = hasher
        .match_stored(&stored)
        .map_err(|e| StartupError::Config(e.to_string()))?;
    tracing::info!(
        database = db.dialect().name(),
        sessions = sessions.backend(),
        signing_kid = tokens.keys().signing_kid(),
        "dt-users ready"
    );
    let email_tokens = match &settings.email_token_secrets {
        Some(secrets) => EmailTokens::from_configured(secrets).map_err(StartupError::Config)?,
        None => EmailTokens::new(tokens.keys().token_secrets())
            .ok_or_else(|| StartupError::Config("no signing key to derive email tokens".into()))?,
    };
    let limits = Rules::from_settings(&settings).map_err(StartupError::Config)?;
    let forwarded_header = ForwardingHeader::parse(&settings.forwarded_header)
        .map_err(|e| StartupError::Config(format!("DT_USERS_FORWARDED_HEADER: {e}")))?;
    let trusted_proxies = TrustedProxies::parse(&settings.trusted_proxies)
        .map_err(|e| StartupError::Config(format!("DT_USERS_TRUSTED_PROXIES: {e}")))?
        .reading(forwarded_header);
    if settings.rate_limit_memory_keys == 0 {
        return Err(StartupError::Config(
            "DT_USERS_RATE_LIMIT_MEMORY_KEYS: 0 keys would remember no request; at least 1".into(),
        ));
    }
    let limiter = match (&sessions, settings.rate_limit_enabled) {
        (_, false) => RateLimiter::Disabled,
        (SessionStore::Redis(redis), true) => {
            RateLimiter::redis(redis.clone(), &settings.redis_key_prefix)
        }
        (SessionStore::Memory(_), true) => RateLimiter::memory(settings.rate_limit_memory_keys),
    };
    let kafka_probe = match settings.kafka_bootstrap_servers() {
        Some(_) => Some(crate::events::KafkaProbe::new(&settings).map_err(StartupError::Config)?),
        None => None,
    };
    let health_quota = crate::security::rate_limit::Quota::parse(&settings.rate_limit_health_ip)
        .map_err(|e| StartupError::Config(format!("DT_USERS_RATE_LIMIT_HEALTH_IP: {e}")))?;
    let readiness = crate::health::Readiness::new(
        kafka_probe,
        settings
            .rate_limit_enabled
            .then_some((health_quota, settings.rate_limit_memory_keys)),
        settings.health_token.clone(),
    );
    Ok(Arc::new(App {
        settings,
        db,
        sessions,
        tokens,
        hasher,
        email_tokens,
        clock,
        outbox_notify: Arc::new(tokio::sync::Notify::new()),
        limiter,
        limits,
        trusted_proxies,
        readiness,
    }))
}

/// Which background roles a process runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Roles {
    pub relay: bool,
    pub worker: bool,
    pub beat: bool,
    pub consume: bool,
}

impl Roles {
    /// What `serve` runs in-process for a single node.
    pub const ALL: Self = Self {
        relay: true,
        worker: true,
        beat: true,
        consume: true,
    };
}

/// Running background roles, stopped together.
#[derive(Debug)]
pub struct Background {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Background {
    /// Starts `roles` for `app`: the outbox relay, an email worker, the periodic sweeps.
    pub async fn start(app: &Arc<App>, roles: Roles) -> Result<Self, StartupError> {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        let settings = &app.settings;
        if roles.relay || roles.worker {
            let queue = JobQueue::open(settings)
                .await
                .map_err(StartupError::Config)?;
            if roles.relay {
                let relay = OutboxRelay::new(
                    app.db.clone(),
                    queue.clone(),
                    app.clock.clone(),
                    app.outbox_notify.clone(),
                    Duration::from_millis(settings.relay_interval_ms.max(10)),
                );
                let mut stopped = stopped.clone();
                tasks.push(tokio::spawn(relay.run(async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                })));
            }
            if roles.worker {
                let mailer = Mailer::new(
                    settings.smtp_url(),
                    settings.data_dir.join("mail"),
                    &settings.email_from,
                )
                .map_err(StartupError::Config)?;
                let worker = EmailWorker::new(
                    settings,
                    app.db.clone(),
                    mailer,
                    app.email_tokens.clone(),
                    app.clock.clone(),
                );
                let settings = settings.clone();
                let stopped = stopped.clone();
                tasks.push(tokio::spawn(async move {
                    worker.run(queue, &settings, stopped).await
                }));
            }
        }
        if roles.relay && settings.kafka_bootstrap_servers().is_some() {
            let relay = EventRelay::new(app.clone()).map_err(StartupError::Config)?;
            tasks.push(tokio::spawn(relay.run(stopped.clone())));
        }
        if roles.consume && settings.kafka_bootstrap_servers().is_some() {
            let consumer = CommandConsumer::new(app.clone()).map_err(StartupError::Config)?;
            tasks.push(tokio::spawn(consumer.run(stopped.clone())));
        }
        if roles.beat {
            let beat = Beat::new(
                app.clone(),
                Duration::from_secs(settings.purge_interval.max(1)),
            );
            tasks.push(tokio::spawn(beat.run(stopped)));
        }
        Ok(Self { stop, tasks })
    }

    /// Asks every role to stop, and waits for in-flight work to finish.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// A bound, not yet running HTTP server.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    app: Arc<App>,
}

impl Application {
    /// Binds `host:port` (port 0 picks a free one) with the wall clock.
    pub async fn build(settings: Settings, host: &str, port: u16) -> Result<Self, StartupError> {
        Self::build_with_clock(settings, host, port, Arc::new(SystemClock)).await
    }

    pub async fn build_with_clock(
        settings: Settings,
        host: &str,
        port: u16,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StartupError> {
        crate::telemetry::install_metrics();
        let app = build_app(settings, clock).await?;
        let listener = TcpListener::bind((host, port)).await?;
        Ok(Self { listener, app })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, std::io::Error> {
        self.listener.local_addr()
    }

    pub fn app(&self) -> Arc<App> {
        self.app.clone()
    }

    /// Serves until `shutdown` completes, then drains in-flight requests.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), std::io::Error> {
        let timeout = Duration::from_secs(self.app.settings.request_timeout.max(1));
        let background = if self.app.settings.run_background_in_serve {
            Some(
                Background::start(&self.app, Roles::ALL)
                    .await
                    .map_err(std::io::Error::other)?,
            )
        } else {
            None
        };
        let router = crate::http::router(self.app.clone(), timeout);
        tracing::info!(address = %self.listener.local_addr()?, "listening");
        let result = axum::serve(
            self.listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await;
        if let Some(background) = background {
            background.shutdown().await;
        }
        self.app.db.close().await;
        result
    }
}
