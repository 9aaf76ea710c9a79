//! The composition root: builds the parts from the [`Config`], wires the background roles to
//! the use-cases through the narrow traits they declare ([`CommandHandler`], [`Sweeps`]), and
//! serves. Nothing else in the crate knows how the parts fit together.
//!
//! This file builds the use-case layer; `background` starts the roles, `server` serves HTTP.

use std::sync::Arc;

use dt_users_domain::Clock;
use dt_users_store::{Db, MigrationState};

use crate::config::{Config, ConfigError, GITHUB, MfaConfig, OAuthConfig, RedisServers, Settings};
use crate::events::KafkaProbe;
use crate::federation::{FederationError, GitHub, Oidc, Provider, Providers};
use crate::health::Readiness;
use crate::jobs::QueueError;
use crate::runner::OutboxSignal;
use crate::security::access_token::AccessTokens;
use crate::security::email_token::EmailTokens;
use crate::security::keys::SigningKeys;
use crate::security::password_hasher::PasswordHasherPool;
use crate::security::rate_limit::RateLimiter;
use crate::security::sealing::SecretSealer;
use crate::service::{App, Policy};
use crate::sessions::{MemorySessions, RedisSessions, SessionStore};

mod background;
mod server;

pub use background::{Background, Roles};
pub use server::{Application, close_db};

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
    let sealer = SecretSealer::load(
        config.mfa.encryption_keys.as_ref(),
        config
            .database
            .embedded
            .then_some(config.data_dir.as_path()),
    )?;
    let webauthn = relying_party(&config.mfa)?;
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
        mfa_key_id = sealer.current_key_id(),
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
        totp_issuer: config.mfa.totp_issuer.clone(),
        oauth_redirect_uris: config.oauth.redirect_uris.clone(),
        api_url: config.oauth.api_url.clone(),
    };
    let providers = identity_providers(&config.oauth)?;
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
        sealer,
        webauthn,
        providers,
    }))
}

/// The identity providers of `oauth`, by the name each is served under.
fn identity_providers(oauth: &OAuthConfig) -> Result<Providers, StartupError> {
    let mut by_name = std::collections::BTreeMap::new();
    let setup = |e: FederationError| StartupError::Setup(e.to_string());
    if let Some(github) = &oauth.github {
        let provider = GitHub::new(
            github.client_id.clone(),
            github.client_secret.clone(),
            &github.web_url,
            github.api_url.clone(),
        )
        .map_err(setup)?;
        by_name.insert(GITHUB.to_owned(), Provider::GitHub(Box::new(provider)));
    }
    for oidc in &oauth.oidc {
        let provider = Oidc::new(
            &oidc.issuer,
            oidc.client_id.clone(),
            oidc.client_secret.clone(),
            &oidc.scopes,
        )
        .map_err(setup)?;
        by_name.insert(oidc.name.clone(), Provider::Oidc(Box::new(provider)));
    }
    Providers::new(by_name).map_err(setup)
}

/// The WebAuthn relying party of passkeys: its id, the origins allowed, and the name prompts
/// show.
fn relying_party(mfa: &MfaConfig) -> Result<webauthn_rs::Webauthn, StartupError> {
    let refused = |e: webauthn_rs::prelude::WebauthnError| {
        ConfigError::new("webauthn_origins", format!("refused by WebAuthn: {e}"))
    };
    let mut origins = mfa.webauthn_origins.iter();
    let first = origins
        .next()
        .ok_or_else(|| ConfigError::new("webauthn_origins", "no origin is allowed"))?;
    let builder = webauthn_rs::WebauthnBuilder::new(&mfa.webauthn_rp_id, first)
        .map_err(refused)?
        .rp_name(&mfa.totp_issuer);
    let builder = origins.fold(builder, |b, origin| b.append_allowed_origin(origin));
    Ok(builder.build().map_err(refused)?)
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
