//! The settings in force: what [`Settings`] read, parsed and checked once, grouped by the part
//! of the service that uses them. Past [`Settings::validate`] a quota is a [`Quota`], a
//! network list is [`TrustedProxies`], a duration is a [`Duration`] and a count that must not
//! be zero is a `NonZero`: no use site parses, clamps or falls back.

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use axum::http::HeaderValue;
use secrecy::SecretString;
use url::Url;

use super::Settings;
use super::mfa::{MfaConfig, mfa_config};
use super::oauth::{OAuthConfig, oauth_config};
use super::redis::{REDIS_SCHEMES, redis_config, url_list};
pub use super::redis::{RedisConfig, RedisServers};
use crate::security::access_token::MAX_LEEWAY_SECS;
use crate::security::client_ip::{ForwardingHeader, TrustedProxies};
use crate::security::rate_limit::{Quota, Rules};

/// A setting that cannot be used, named by its environment variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {reason}")]
pub struct ConfigError {
    /// `DT_USERS_…`.
    pub variable: String,
    pub reason: String,
}

impl ConfigError {
    /// `field` is the settings field (`rate_limit_login_ip`); the error names its variable.
    pub fn new(field: &str, reason: impl Into<String>) -> Self {
        Self {
            variable: super::variable_name(field),
            reason: reason.into(),
        }
    }
}

/// Every setting, typed and grouped.
#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseConfig,
    /// Sessions and the shared rate limiter live in Redis when set; in process otherwise.
    pub redis: Option<RedisConfig>,
    /// Base of links in emails.
    pub public_url: Url,
    /// Where the embedded default keeps its SQLite files, its generated key and its mail.
    pub data_dir: PathBuf,
    pub tokens: TokenConfig,
    pub email: EmailConfig,
    pub jobs: JobsConfig,
    /// `None`: no Kafka; events stay in the outbox and no command is read.
    pub kafka: Option<KafkaSettings>,
    pub commands: CommandsConfig,
    pub deletion: DeletionConfig,
    pub relay_interval: Duration,
    pub run_background_in_serve: bool,
    /// How long a role may take to stop once asked (SIGTERM): what is still running then is
    /// abandoned, to be picked up elsewhere.
    pub shutdown_timeout: Duration,
    pub limits: LimitsConfig,
    pub hashing: HashingConfig,
    pub http: HttpConfig,
    pub mfa: MfaConfig,
    pub oauth: OAuthConfig,
    pub log_format: LogFormat,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// The URL in force: the configured one, or the embedded SQLite file.
    pub url: String,
    /// True when no database is configured and the embedded SQLite file is in use.
    pub embedded: bool,
    pub max_connections: NonZeroU32,
    pub lock_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub access_ttl: Duration,
    pub leeway: Duration,
    pub refresh_ttl: Duration,
    pub refresh_reuse_grace: Duration,
    pub issuer: String,
    pub audience: String,
    pub signing_keys: Option<SecretString>,
    pub signing_keys_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct EmailConfig {
    /// `None`: emails are written under `data_dir/mail`.
    pub smtp_url: Option<String>,
    pub from: String,
    pub token_ttl: Duration,
    pub token_secrets: Option<SecretString>,
}

#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// A Redis URL; `None`: a SQLite file under `data_dir`.
    pub url: Option<String>,
    pub namespace: String,
    pub concurrency: NonZeroUsize,
    pub max_attempts: NonZeroUsize,
    /// The wait before the first retry, doubling up to `backoff_max` (never below it).
    pub backoff: Duration,
    pub backoff_max: Duration,
    pub heartbeat: Duration,
    pub missed_heartbeats: NonZeroUsize,
    pub timeout: Duration,
    pub email_claim_lease: Duration,
}

/// Kafka, when `DT_USERS_KAFKA_BOOTSTRAP_SERVERS` is set. The client properties are checked
/// against librdkafka when the clients are made (`events::base_config`), at start-up too.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub bootstrap_servers: String,
    pub events_topic: String,
    pub commands_topic: String,
    pub dlq_topic: String,
    pub group_id: String,
    pub idempotence: bool,
    /// At least 1 ms: librdkafka reads 0 as "for ever", which would hold the relay lease for
    /// ever.
    pub message_timeout: Duration,
    pub security_protocol: Option<String>,
    pub sasl_mechanism: Option<String>,
    pub sasl_username: Option<String>,
    pub sasl_password: Option<SecretString>,
    pub ssl_ca_location: Option<PathBuf>,
    pub ssl_certificate_location: Option<PathBuf>,
    pub ssl_key_location: Option<PathBuf>,
    pub ssl_key_password: Option<SecretString>,
    pub properties: Vec<(String, SecretString)>,
    pub session_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub fetch_wait_max_ms: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct CommandsConfig {
    pub max_attempts: NonZeroU32,
    pub retention: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct DeletionConfig {
    pub grace_period: Duration,
    pub purge_batch: NonZeroU32,
    pub sweep_interval: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct LimitsConfig {
    /// `false`: every rate limit is off.
    pub enabled: bool,
    pub rules: Rules,
    pub password_checks_in_flight: NonZeroU32,
    pub memory_keys: NonZeroUsize,
    pub health_ip: Quota,
}

#[derive(Debug, Clone)]
pub struct HashingConfig {
    pub argon2: argon2::Params,
    pub concurrency: NonZeroUsize,
    pub queue: usize,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub trusted_proxies: TrustedProxies,
    /// Empty: CORS off.
    pub cors_allowed_origins: Vec<HeaderValue>,
    pub request_timeout: Duration,
    pub health_token: Option<SecretString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// A configured optional value: unset and blank are the same.
pub(super) fn present(value: Option<&str>) -> Option<String> {
    value
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

fn seconds(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

fn at_least_one_second(field: &str, secs: u64) -> Result<Duration, ConfigError> {
    match secs {
        0 => Err(ConfigError::new(field, "must be at least 1 second")),
        secs => Ok(Duration::from_secs(secs)),
    }
}

fn non_zero_u32(field: &str, value: u32) -> Result<NonZeroU32, ConfigError> {
    NonZeroU32::new(value).ok_or_else(|| ConfigError::new(field, "must be at least 1"))
}

fn non_zero_usize(field: &str, value: usize) -> Result<NonZeroUsize, ConfigError> {
    NonZeroUsize::new(value).ok_or_else(|| ConfigError::new(field, "must be at least 1"))
}

fn quota(field: &str, text: &str) -> Result<Quota, ConfigError> {
    Quota::parse(text).map_err(|e| ConfigError::new(field, e))
}

pub(super) fn url(field: &str, text: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(text.trim()).map_err(|e| ConfigError::new(field, format!("{e}")))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(ConfigError::new(
            field,
            format!("{other}: expected an http or https URL"),
        )),
    }
}

/// A URL with one of `schemes`; the error never repeats the value, which may hold a password.
pub(super) fn service_url(
    field: &str,
    text: Option<&str>,
    schemes: &[&str],
) -> Result<Option<String>, ConfigError> {
    let Some(text) = present(text) else {
        return Ok(None);
    };
    let parsed =
        Url::parse(&text).map_err(|e| ConfigError::new(field, format!("not a URL ({e})")))?;
    if !schemes.contains(&parsed.scheme()) {
        return Err(ConfigError::new(
            field,
            format!(
                "scheme {:?}: expected one of {}",
                parsed.scheme(),
                schemes.join(", ")
            ),
        ));
    }
    Ok(Some(text))
}

impl Settings {
    /// Parses and checks every setting; the first unusable one is the error, named by its
    /// variable.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let s = self;
        let embedded = present(s.database_url.as_deref()).is_none();
        let database = DatabaseConfig {
            url: match present(s.database_url.as_deref()) {
                Some(url) => url,
                None => format!(
                    "sqlite://{}?mode=rwc",
                    s.data_dir.join("dt-users.db").display()
                ),
            },
            embedded,
            max_connections: non_zero_u32("database_max_connections", s.database_max_connections)?,
            lock_timeout: at_least_one_second("database_lock_timeout", s.database_lock_timeout)?,
        };
        let redis = redis_config(s)?;
        if s.access_token_leeway > MAX_LEEWAY_SECS {
            return Err(ConfigError::new(
                "access_token_leeway",
                format!(
                    "{} s is more than the {MAX_LEEWAY_SECS} s allowed",
                    s.access_token_leeway
                ),
            ));
        }
        let tokens = TokenConfig {
            access_ttl: at_least_one_second("access_token_ttl", s.access_token_ttl)?,
            leeway: seconds(s.access_token_leeway),
            refresh_ttl: at_least_one_second("refresh_token_ttl", s.refresh_token_ttl)?,
            refresh_reuse_grace: seconds(s.refresh_reuse_grace),
            issuer: s.token_issuer.clone(),
            audience: s.token_audience.clone(),
            signing_keys: s.signing_keys.clone(),
            signing_keys_file: s.signing_keys_file.clone(),
        };
        let email = EmailConfig {
            smtp_url: service_url("smtp_url", s.smtp_url.as_deref(), &["smtp", "smtps"])?,
            from: match s.email_from.parse::<lettre::message::Mailbox>() {
                Ok(_) => s.email_from.clone(),
                Err(e) => return Err(ConfigError::new("email_from", e.to_string())),
            },
            token_ttl: at_least_one_second("email_token_ttl", s.email_token_ttl)?,
            token_secrets: s.email_token_secrets.clone(),
        };
        let public_url = url("public_url", &s.public_url)?;
        let mfa = mfa_config(s, &public_url)?;
        let oauth = oauth_config(s)?;
        let backoff = Duration::from_millis(s.job_backoff_ms.max(1));
        if url_list(s.jobs_url.as_deref().unwrap_or_default()).len() > 1 {
            return Err(ConfigError::new(
                "jobs_url",
                "one Redis URL: the job queue runs on one Redis server, not on a Redis Cluster \
                 (its scripts use keys of several slots)",
            ));
        }
        let jobs = JobsConfig {
            url: service_url("jobs_url", s.jobs_url.as_deref(), REDIS_SCHEMES)?,
            namespace: s.jobs_namespace.clone(),
            concurrency: non_zero_usize("worker_concurrency", s.worker_concurrency)?,
            max_attempts: non_zero_usize("job_max_attempts", s.job_max_attempts)?,
            backoff,
            backoff_max: Duration::from_millis(s.job_backoff_max_ms).max(backoff),
            heartbeat: at_least_one_second("jobs_heartbeat_secs", s.jobs_heartbeat_secs)?,
            missed_heartbeats: non_zero_usize("jobs_missed_heartbeats", s.jobs_missed_heartbeats)?,
            timeout: at_least_one_second("job_timeout_secs", s.job_timeout_secs)?,
            email_claim_lease: Duration::from_millis(s.email_claim_lease_ms),
        };
        let kafka = match present(s.kafka_bootstrap_servers.as_deref()) {
            None => None,
            Some(bootstrap_servers) => Some(KafkaSettings {
                bootstrap_servers,
                events_topic: s.kafka_events_topic.clone(),
                commands_topic: s.kafka_commands_topic.clone(),
                dlq_topic: s.kafka_dlq_topic.clone(),
                group_id: s.kafka_group_id.clone(),
                idempotence: s.kafka_idempotence,
                message_timeout: match s.kafka_message_timeout_ms {
                    0 => {
                        return Err(ConfigError::new(
                            "kafka_message_timeout_ms",
                            "must be at least 1 (librdkafka reads 0 as \"for ever\", and a \
                             batch that never ends would hold the relay lease for ever)",
                        ));
                    }
                    ms => Duration::from_millis(ms),
                },
                security_protocol: present(s.kafka_security_protocol.as_deref()),
                sasl_mechanism: present(s.kafka_sasl_mechanism.as_deref()),
                sasl_username: present(s.kafka_sasl_username.as_deref()),
                sasl_password: s.kafka_sasl_password.clone(),
                ssl_ca_location: s.kafka_ssl_ca_location.clone(),
                ssl_certificate_location: s.kafka_ssl_certificate_location.clone(),
                ssl_key_location: s.kafka_ssl_key_location.clone(),
                ssl_key_password: s.kafka_ssl_key_password.clone(),
                properties: s.kafka_properties.clone(),
                session_timeout_ms: s.kafka_session_timeout_ms,
                heartbeat_interval_ms: s.kafka_heartbeat_interval_ms,
                fetch_wait_max_ms: s.kafka_fetch_wait_max_ms,
            }),
        };
        let commands = CommandsConfig {
            max_attempts: non_zero_u32("command_max_attempts", s.command_max_attempts)?,
            retention: seconds(s.command_retention),
        };
        let deletion = DeletionConfig {
            grace_period: seconds(s.deletion_grace_period),
            purge_batch: non_zero_u32("purge_batch", s.purge_batch)?,
            sweep_interval: at_least_one_second("purge_interval", s.purge_interval)?,
        };
        let rules = Rules {
            login_ip: quota("rate_limit_login_ip", &s.rate_limit_login_ip)?,
            login_account: quota("rate_limit_login_account", &s.rate_limit_login_account)?,
            login_ip_account: quota(
                "rate_limit_login_ip_account",
                &s.rate_limit_login_ip_account,
            )?,
            register_ip: quota("rate_limit_register_ip", &s.rate_limit_register_ip)?,
            email_target: quota("rate_limit_email_target", &s.rate_limit_email_target)?,
            email_ip: quota("rate_limit_email_ip", &s.rate_limit_email_ip)?,
            refresh: quota("rate_limit_refresh", &s.rate_limit_refresh)?,
            email_change: quota("rate_limit_email_change", &s.rate_limit_email_change)?,
            global_ip: quota("rate_limit_global_ip", &s.rate_limit_global_ip)?,
            ipv6_prefix: match s.rate_limit_ipv6_prefix {
                bits @ 1..=128 => bits,
                bits => {
                    return Err(ConfigError::new(
                        "rate_limit_ipv6_prefix",
                        format!("{bits} is not a prefix length of 1 to 128"),
                    ));
                }
            },
        };
        let limits = LimitsConfig {
            enabled: s.rate_limit_enabled,
            rules,
            password_checks_in_flight: non_zero_u32(
                "password_checks_in_flight",
                s.password_checks_in_flight,
            )?,
            memory_keys: NonZeroUsize::new(s.rate_limit_memory_keys).ok_or_else(|| {
                ConfigError::new(
                    "rate_limit_memory_keys",
                    "0 keys would remember no request; at least 1",
                )
            })?,
            health_ip: quota("rate_limit_health_ip", &s.rate_limit_health_ip)?,
        };
        let hashing = HashingConfig {
            argon2: argon2::Params::new(
                s.argon2_memory_kib,
                s.argon2_iterations,
                s.argon2_parallelism,
                None,
            )
            .map_err(|e| {
                ConfigError::new(
                    "argon2_memory_kib",
                    format!("argon2 parameters (memory, iterations, parallelism): {e}"),
                )
            })?,
            concurrency: non_zero_usize("password_hash_concurrency", s.password_hash_concurrency)?,
            queue: s.password_hash_queue,
        };
        let header = ForwardingHeader::parse(&s.forwarded_header)
            .map_err(|e| ConfigError::new("forwarded_header", e))?;
        let http = HttpConfig {
            trusted_proxies: TrustedProxies::parse(&s.trusted_proxies)
                .map_err(|e| ConfigError::new("trusted_proxies", e))?
                .reading(header),
            cors_allowed_origins: cors_origins(&s.cors_allowed_origins)?,
            request_timeout: at_least_one_second("request_timeout", s.request_timeout)?,
            health_token: s.health_token.clone(),
        };
        let log_format = match s.log_format.trim() {
            "json" => LogFormat::Json,
            "pretty" => LogFormat::Pretty,
            other => {
                return Err(ConfigError::new(
                    "log_format",
                    format!("{other:?}: expected \"json\" or \"pretty\""),
                ));
            }
        };
        Ok(Config {
            database,
            redis,
            public_url,
            data_dir: s.data_dir.clone(),
            tokens,
            email,
            jobs,
            kafka,
            commands,
            deletion,
            relay_interval: Duration::from_millis(s.relay_interval_ms.max(10)),
            run_background_in_serve: s.run_background_in_serve,
            shutdown_timeout: at_least_one_second(
                "shutdown_timeout_secs",
                s.shutdown_timeout_secs,
            )?,
            limits,
            hashing,
            http,
            mfa,
            oauth,
            log_format,
        })
    }
}

/// The allowed origins: each `scheme://host[:port]` exactly as browsers send it. An entry that
/// is not one is an error rather than dropped: a typo must not turn CORS off unnoticed.
fn cors_origins(list: &str) -> Result<Vec<HeaderValue>, ConfigError> {
    let field = "cors_allowed_origins";
    list.split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(|origin| {
            let parsed = Url::parse(origin).map_err(|e| {
                ConfigError::new(field, format!("{origin:?} is not an origin ({e})"))
            })?;
            let exact = parsed.origin().ascii_serialization();
            if !matches!(parsed.scheme(), "http" | "https") || exact != origin {
                return Err(ConfigError::new(
                    field,
                    format!(
                        "{origin:?} is not an origin: expected scheme://host[:port], e.g. {exact:?}"
                    ),
                ));
            }
            HeaderValue::from_str(origin)
                .map_err(|e| ConfigError::new(field, format!("{origin:?}: {e}")))
        })
        .collect()
}
