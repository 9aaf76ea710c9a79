//! The composition root: builds the parts from the [`Config`], wires the background roles to
//! the use-cases through the narrow traits they declare ([`CommandHandler`], [`Sweeps`]), and
//! serves. Nothing else in the crate knows how the parts fit together.

use std::net::SocketAddr;
use std::sync::Arc;

use dt_users_domain::{Clock, SystemClock, Timestamp};
use dt_users_store::{Db, MigrationState};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Config, ConfigError, RedisServers, Settings};
use crate::email::Mailer;
use crate::events::{CommandConsumer, CommandHandler, EventRelay, HandlingError, KafkaProbe};
use crate::health::Readiness;
use crate::http::Edge;
use crate::jobs::{Beat, EmailWorker, JobQueue, MailFiles, OutboxRelay, QueueError, Sweeps};
use crate::runner::{OutboxSignal, RoleError, Schedule};
use crate::security::access_token::AccessTokens;
use crate::security::email_token::EmailTokens;
use crate::security::keys::SigningKeys;
use crate::security::password_hasher::PasswordHasherPool;
use crate::security::rate_limit::RateLimiter;
use crate::service::{App, Command, CommandOutcome, Policy, ServiceError};
use crate::sessions::{MemorySessions, RedisSessions, SessionStore};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// A part refused its settings (the message names the variable).
    #[error("configuration: {0}")]
    Setup(String),
    #[error(
        "the database is behind this release (pending migrations: {0:?}); run `dt-users migrate` first"
    )]
    MigrationsPending(Vec<i64>),
    #[error("the database has migrations this release does not know ({0:?}); run a newer dt-users")]
    DatabaseAhead(Vec<i64>),
    #[error("database: {0}")]
    Database(#[from] dt_users_store::StoreError),
    #[error("job queue: {0}")]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Keys(#[from] crate::security::keys::KeyError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Opens the database a `Settings` names (creating the embedded default's directory).
pub fn open_database(settings: &Settings) -> Result<Db, StartupError> {
    open_db(&settings.validate()?)
}

/// Opens the database of `config` (creating the embedded default's directory).
pub fn open_db(config: &Config) -> Result<Db, StartupError> {
    if config.database.embedded {
        std::fs::create_dir_all(&config.data_dir)?;
    }
    Ok(Db::connect_lazy(
        &config.database.url,
        config.database.max_connections.get(),
        config.database.lock_timeout,
    )?)
}

/// How many stored hashes are read at start-up to choose the dummy hash's parameters.
const DUMMY_SAMPLE: i64 = 10_000;

/// Builds the use-case layer: checks the schema, loads keys, connects the session store.
/// The embedded default migrates its own SQLite file; any other database must be migrated
/// with `dt-users migrate` first.
pub async fn build_app(config: &Config, clock: Arc<dyn Clock>) -> Result<Arc<App>, StartupError> {
    let db = open_db(config)?;
    let state = if config.database.embedded {
        db.migrate().await?
    } else {
        db.migration_state().await?
    };
    match state {
        MigrationState::UpToDate { .. } => {}
        MigrationState::Behind { pending } => return Err(StartupError::MigrationsPending(pending)),
        MigrationState::Ahead { unknown } => return Err(StartupError::DatabaseAhead(unknown)),
    }
    let keys = SigningKeys::load(
        config.tokens.signing_keys.as_ref(),
        config.tokens.signing_keys_file.as_deref(),
        config
            .database
            .embedded
            .then_some(config.data_dir.as_path()),
    )?;
    let tokens = AccessTokens::new(
        keys,
        config.tokens.issuer.clone(),
        config.tokens.audience.clone(),
        config.tokens.access_ttl.as_secs(),
        config.tokens.leeway.as_secs(),
    );
    let sessions = match &config.redis {
        Some(redis) => SessionStore::Redis(
            match &redis.servers {
                RedisServers::Server(url) => RedisSessions::new(url, &redis.key_prefix),
                RedisServers::Cluster(seeds) => RedisSessions::cluster(seeds, &redis.key_prefix),
            }
            .map_err(|e| ConfigError::new("redis_url", e.to_string()))?,
        ),
        None => SessionStore::Memory(MemorySessions::default()),
    };
    let argon2 = &config.hashing.argon2;
    let hasher = PasswordHasherPool::new(
        argon2.m_cost(),
        argon2.t_cost(),
        argon2.p_cost(),
        config.hashing.concurrency.get(),
        config.hashing.queue,
    )
    .map_err(|e| StartupError::Setup(e.to_string()))?;
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
        .map_err(|e| StartupError::Setup(e.to_string()))?;
    tracing::info!(
        database = db.dialect().name(),
        sessions = sessions.backend(),
        signing_kid = tokens.keys().signing_kid(),
        "dt-users ready"
    );
    let email_tokens = match &config.email.token_secrets {
        Some(secrets) => EmailTokens::from_configured(secrets)
            .map_err(|e| ConfigError::new("email_token_secrets", e))?,
        None => EmailTokens::new(tokens.keys().token_secrets())
            .ok_or_else(|| StartupError::Setup("no signing key to derive email tokens".into()))?,
    };
    let limits = &config.limits;
    let limiter = match (&sessions, limits.enabled) {
        (_, false) => RateLimiter::Disabled,
        (SessionStore::Redis(redis), true) => RateLimiter::redis(
            redis.clone(),
            config.redis.as_ref().map_or("", |r| r.key_prefix.as_str()),
        ),
        (SessionStore::Memory(_), true) => RateLimiter::memory(limits.memory_keys.get()),
    };
    let policy = Policy {
        refresh_ttl: config.tokens.refresh_ttl,
        refresh_reuse_grace: config.tokens.refresh_reuse_grace,
        email_token_ttl: config.email.token_ttl,
        deletion_grace: config.deletion.grace_period,
        password_checks_in_flight: limits.password_checks_in_flight,
        purge_batch: config.deletion.purge_batch,
        command_retention: config.commands.retention,
        events_published: config.kafka.is_some(),
    };
    Ok(Arc::new(App {
        policy,
        db,
        outbox: OutboxSignal::default(),
        sessions,
        tokens,
        hasher,
        email_tokens,
        clock,
        limiter,
        limits: limits.rules,
    }))
}

/// What `/health/ready` reports for `app`'s process.
pub fn readiness(config: &Config, app: &App) -> Result<Arc<Readiness>, StartupError> {
    let kafka_probe = match &config.kafka {
        Some(kafka) => Some(KafkaProbe::new(kafka).map_err(StartupError::Setup)?),
        None => None,
    };
    let limits = &config.limits;
    Ok(Arc::new(Readiness::new(
        (app.db.clone(), app.sessions.clone(), app.clock.clone()),
        kafka_probe,
        limits
            .enabled
            .then_some((limits.health_ip, limits.memory_keys.get())),
        config.http.health_token.clone(),
    )))
}

/// The consumer applies commands with the use-cases.
impl CommandHandler for Arc<App> {
    async fn apply(&self, id: &str, command: &Command) -> Result<CommandOutcome, HandlingError> {
        self.apply_command(id, command)
            .await
            .map_err(handling_error)
    }

    async fn record_rejected(
        &self,
        id: &str,
        command_type: &'static str,
    ) -> Result<(), HandlingError> {
        self.record_rejected_command(id, command_type)
            .await
            .map_err(handling_error)
    }
}

fn handling_error(error: ServiceError) -> HandlingError {
    match error {
        ServiceError::Unavailable(_) => HandlingError::Unavailable(Box::new(error)),
        ServiceError::Busy(_) => HandlingError::Busy(Box::new(error)),
        other => HandlingError::Failed(Box::new(other)),
    }
}

/// Beat sweeps with the use-cases.
impl Sweeps for Arc<App> {
    async fn sweep(&self, now: Timestamp) -> Result<Vec<(&'static str, u64)>, RoleError> {
        let report = App::sweep(self, now)
            .await
            .map_err(|e| RoleError::Service(Box::new(e)))?;
        Ok(report.counts().to_vec())
    }
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
    /// Starts `roles` for `app`: the outbox relays, an email worker, the command consumer,
    /// the periodic sweeps. Each gets only what it uses.
    pub async fn start(
        app: &Arc<App>,
        config: &Config,
        roles: Roles,
    ) -> Result<Self, StartupError> {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        let relay_schedule = |lease| Schedule {
            interval: config.relay_interval,
            wake: Some(app.outbox.subscribe()),
            lease,
        };
        if roles.relay || roles.worker {
            let queue = JobQueue::open(&config.jobs, &config.data_dir).await?;
            if roles.relay {
                let relay = OutboxRelay::new(app.db.clone(), queue.clone(), app.clock.clone());
                tasks.push(tokio::spawn(crate::runner::run(
                    relay,
                    relay_schedule(None),
                    stopped.clone(),
                )));
            }
            if roles.worker {
                let mailer = Mailer::new(
                    config.email.smtp_url.as_deref(),
                    config.data_dir.join("mail"),
                    &config.email.from,
                )
                .map_err(StartupError::Setup)?;
                let worker = EmailWorker::new(
                    &config.jobs,
                    &config.public_url,
                    config.email.token_ttl,
                    app.db.clone(),
                    mailer,
                    app.email_tokens.clone(),
                    app.clock.clone(),
                );
                tasks.push(tokio::spawn(worker.run(queue, stopped.clone())));
            }
        }
        if let (true, Some(kafka)) = (roles.relay, &config.kafka) {
            let relay = EventRelay::new(kafka, app.db.clone(), app.clock.clone())
                .map_err(StartupError::Setup)?;
            let schedule = relay_schedule(Some(relay.lease().clone()));
            tasks.push(tokio::spawn(crate::runner::run(
                relay,
                schedule,
                stopped.clone(),
            )));
        }
        if let (true, Some(kafka)) = (roles.consume, &config.kafka) {
            let consumer = CommandConsumer::new(app.clone(), kafka, &config.commands)
                .map_err(StartupError::Setup)?;
            tasks.push(tokio::spawn(consumer.run(stopped.clone())));
        }
        if roles.beat {
            let mail_files = config.email.smtp_url.is_none().then(|| MailFiles {
                dir: config.data_dir.join("mail"),
                link_ttl: config.email.token_ttl,
            });
            let beat = Beat::new(
                app.clone(),
                app.db.clone(),
                app.clock.clone(),
                config.deletion.sweep_interval,
                mail_files,
            );
            tasks.push(tokio::spawn(beat.run(stopped)));
        }
        Ok(Self { stop, tasks })
    }

    /// Asks every role to stop, and waits for in-flight work to finish — until `deadline`,
    /// when what still runs is abandoned (an email job returns to the queue once this worker's
    /// heartbeat lapses, an outbox row not yet marked is handed on by the next relay, a
    /// command not yet committed is read again). True if everything finished in time.
    pub async fn shutdown_by(self, deadline: tokio::time::Instant) -> bool {
        let _ = self.stop.send(true);
        let mut abandoned = 0_usize;
        for mut task in self.tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                abandoned += 1;
            }
        }
        if abandoned > 0 {
            tracing::warn!(
                roles = abandoned,
                "shutdown deadline reached: work still in flight was abandoned, to be picked up again elsewhere"
            );
        }
        abandoned == 0
    }

    /// [`Self::shutdown_by`] with no deadline.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Closes the database pool, waiting at most until `deadline` (and at least a second) for
/// connections still in use.
pub async fn close_db(db: &Db, deadline: tokio::time::Instant) {
    let deadline = deadline.max(tokio::time::Instant::now() + std::time::Duration::from_secs(1));
    if tokio::time::timeout_at(deadline, db.close()).await.is_err() {
        tracing::warn!("database connections still in use at the shutdown deadline");
    }
}

/// A bound, not yet running HTTP server.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    config: Config,
    app: Arc<App>,
    readiness: Arc<Readiness>,
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
        Self::from_config(settings.validate()?, host, port, clock).await
    }

    pub async fn from_config(
        config: Config,
        host: &str,
        port: u16,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StartupError> {
        crate::telemetry::install_metrics();
        let app = build_app(&config, clock).await?;
        let readiness = readiness(&config, &app)?;
        let listener = TcpListener::bind((host, port)).await?;
        Ok(Self {
            listener,
            config,
            app,
            readiness,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, std::io::Error> {
        self.listener.local_addr()
    }

    pub fn app(&self) -> Arc<App> {
        self.app.clone()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Serves until `shutdown` completes, then stops taking connections, lets the requests in
    /// flight finish and the background roles stop — all within `DT_USERS_SHUTDOWN_TIMEOUT_SECS`
    /// of the signal; what still runs then is cut off.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), std::io::Error> {
        let background = if self.config.run_background_in_serve {
            Some(
                Background::start(&self.app, &self.config, Roles::ALL)
                    .await
                    .map_err(std::io::Error::other)?,
            )
        } else {
            None
        };
        let edge = Edge {
            trusted_proxies: self.config.http.trusted_proxies.clone(),
            readiness: self.readiness.clone(),
            cors_allowed_origins: self.config.http.cors_allowed_origins.clone(),
            request_timeout: self.config.http.request_timeout,
        };
        let router = crate::http::router(self.app.clone(), edge);
        tracing::info!(address = %self.listener.local_addr()?, "listening");
        let timeout = self.config.shutdown_timeout;
        let (asked, mut deadline) = watch::channel(None::<tokio::time::Instant>);
        let signal = async move {
            shutdown.await;
            tracing::info!(
                deadline_secs = timeout.as_secs(),
                "stopping: no new connections; finishing the requests in flight"
            );
            asked.send_replace(Some(tokio::time::Instant::now() + timeout));
        };
        let serving = axum::serve(
            self.listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(signal)
        .into_future();
        let cut_off = {
            let mut deadline = deadline.clone();
            async move {
                let at = match deadline.wait_for(Option::is_some).await {
                    Ok(at) => *at,
                    // Serving ended without a signal.
                    Err(_) => None,
                };
                match at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            }
        };
        let result = tokio::select! {
            result = serving => result,
            () = cut_off => {
                tracing::warn!("shutdown deadline reached: requests still in flight were cut off");
                Ok(())
            }
        };
        let at = deadline
            .borrow_and_update()
            .unwrap_or_else(|| tokio::time::Instant::now() + timeout);
        if let Some(background) = background {
            background.shutdown_by(at).await;
        }
        close_db(&self.app.db, at).await;
        result
    }
}
