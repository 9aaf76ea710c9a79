//! The settings: read once from `DT_USERS_*` environment variables over the defaults
//! ([`Settings`], one field per variable), then parsed and checked into the grouped, typed
//! [`Config`] the service runs on. A value that cannot be used stops the process with a
//! message naming its variable.

mod mfa;
mod oauth;
mod redis;
mod typed;

pub use mfa::MfaConfig;
pub use oauth::{GITHUB, GitHubConfig, OAuthConfig, OidcConfig, OidcSettings, oidc_variable};
pub use typed::{
    CommandsConfig, Config, ConfigError, DatabaseConfig, DeletionConfig, EmailConfig,
    HashingConfig, HttpConfig, JobsConfig, KafkaSettings, LimitsConfig, LogFormat, RedisConfig,
    RedisServers, TokenConfig,
};

use std::path::PathBuf;

use figment::Figment;
use figment::providers::{Env, Serialized};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// Every setting of the service as read: each field is the environment variable
/// `DT_USERS_<FIELD>`. Nothing reads these fields but [`Settings::validate`], which turns them
/// into the [`Config`] in force.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// `mysql://user:pass@host:3306/db` or `sqlite://path?mode=rwc`; unset: SQLite under `data_dir`.
    pub database_url: Option<String>,
    /// Maximum database connections per process.
    pub database_max_connections: u32,
    /// Seconds a statement waits for a row lock (MySQL's `innodb_lock_wait_timeout`) or for
    /// SQLite's write lock before it gives up; the request is then retried once or answered 503.
    pub database_lock_timeout: u64,
    /// Sessions live in Redis when set, in process memory otherwise. With `redis_cluster`, a
    /// comma-separated list of seed nodes of a Redis Cluster.
    pub redis_url: Option<String>,
    /// `redis_url` names the nodes of a Redis Cluster rather than one server.
    pub redis_cluster: bool,
    /// Prefix of every Redis key, so several deployments (or test runs) can share one Redis.
    pub redis_key_prefix: String,
    /// Base of links in emails, and the default token issuer.
    pub public_url: String,
    /// Where the embedded default keeps its SQLite file, its generated key and its mail.
    pub data_dir: PathBuf,
    /// Seconds an access token lives.
    pub access_token_ttl: u64,
    /// Seconds of clock skew tolerated on an access token's `exp` (at most 5).
    pub access_token_leeway: u64,
    /// Seconds a session (and so its refresh tokens) lives, counted from sign-in.
    pub refresh_token_ttl: u64,
    /// Seconds after a rotation during which the old refresh token is refused without
    /// revoking the session.
    pub refresh_reuse_grace: u64,
    /// The `iss` claim of access tokens.
    pub token_issuer: String,
    /// The `aud` claim of access tokens.
    pub token_audience: String,
    /// One or more PKCS#8 PEM Ed25519 private keys; the first signs, all verify.
    #[serde(skip_serializing)]
    pub signing_keys: Option<SecretString>,
    /// A file holding PEM keys, as `signing_keys`.
    pub signing_keys_file: Option<PathBuf>,
    /// `smtp://[user:pass@]host:port` (`smtps://` for implicit TLS, `?starttls=true`); unset:
    /// emails are written under `data_dir/mail`.
    pub smtp_url: Option<String>,
    /// The `From` of every email.
    pub email_from: String,
    /// Seconds an emailed token lives.
    pub email_token_ttl: u64,
    /// Comma-separated secrets (at least 32 characters each) of the tokens emails carry: the
    /// first makes new tokens, every one listed still serves emails queued under it. Unset:
    /// derived from the signing keys.
    #[serde(skip_serializing)]
    pub email_token_secrets: Option<SecretString>,
    /// Comma-separated keys (32 random bytes, base64) that seal TOTP secrets at rest: the first
    /// seals, every one opens. Unset: the embedded default generates one under `data_dir`; any
    /// other setup must set it.
    #[serde(skip_serializing)]
    pub mfa_encryption_key: Option<SecretString>,
    /// The issuer authenticator apps show next to a TOTP code, and the name passkey prompts show.
    pub totp_issuer: String,
    /// The WebAuthn relying-party id passkeys are bound to (a domain); unset: the host of
    /// `public_url`.
    pub webauthn_rp_id: Option<String>,
    /// Comma-separated origins (`https://devtalk.example`) passkey ceremonies may come from;
    /// empty: the origin of `public_url`.
    pub webauthn_origins: String,
    /// Comma-separated `redirect_uri` values the web apps may send users back to after a
    /// provider sign-in, compared exactly; empty: provider sign-in refused.
    pub oauth_redirect_uris: String,
    /// This service's own external base URL: provider callbacks come to
    /// `{api_url}/api/v1/auth/oauth/{provider}/callback`.
    pub api_url: String,
    /// The GitHub OAuth app's client id; with the secret, provider `github` is on.
    pub github_client_id: Option<String>,
    #[serde(skip_serializing)]
    pub github_client_secret: Option<SecretString>,
    /// GitHub's web base URL (GitHub Enterprise: the server's).
    pub github_url: String,
    /// GitHub's REST API base URL (GitHub Enterprise: `https://HOST/api/v3`).
    pub github_api_url: String,
    /// Comma-separated names of OpenID Connect providers, each set up by
    /// `DT_USERS_OIDC_<NAME>_ISSUER`, `_CLIENT_ID`, `_CLIENT_SECRET` and `_SCOPES`.
    pub oidc_providers: String,
    /// The providers `oidc_providers` names, read from their own variables.
    #[serde(skip)]
    pub oidc: Vec<OidcSettings>,
    /// The job queue (the URL of one Redis server, not a cluster); unset: a SQLite file under
    /// `data_dir`.
    pub jobs_url: Option<String>,
    /// Prefix (namespace) of the job queue's Redis keys.
    pub jobs_namespace: String,
    /// Jobs one worker runs at once.
    pub worker_concurrency: usize,
    /// Attempts of a job before it is dead.
    pub job_max_attempts: usize,
    /// Milliseconds before the first retry of a failed job; each retry waits twice as long.
    pub job_backoff_ms: u64,
    /// The longest wait between two attempts of a job, milliseconds.
    pub job_backoff_max_ms: u64,
    /// Kafka bootstrap servers (`host:port,…`); unset: events stay in the outbox.
    pub kafka_bootstrap_servers: Option<String>,
    /// The topic events are published to.
    pub kafka_events_topic: String,
    /// The topic commands are read from.
    pub kafka_commands_topic: String,
    /// Where unreadable or inapplicable commands go, with the reason in headers.
    pub kafka_dlq_topic: String,
    /// The consumer group of `consume`.
    pub kafka_group_id: String,
    /// Idempotent producer (the `tansu` test broker needs `false`).
    pub kafka_idempotence: bool,
    /// Milliseconds the producer keeps trying to deliver one event.
    pub kafka_message_timeout_ms: u64,
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl` (librdkafka's `security.protocol`).
    pub kafka_security_protocol: Option<String>,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub kafka_sasl_mechanism: Option<String>,
    pub kafka_sasl_username: Option<String>,
    #[serde(skip_serializing)]
    pub kafka_sasl_password: Option<SecretString>,
    /// PEM file of the CA certificates that sign the brokers' certificates.
    pub kafka_ssl_ca_location: Option<PathBuf>,
    /// PEM files of the client certificate and its key (mutual TLS).
    pub kafka_ssl_certificate_location: Option<PathBuf>,
    pub kafka_ssl_key_location: Option<PathBuf>,
    #[serde(skip_serializing)]
    pub kafka_ssl_key_password: Option<SecretString>,
    /// Further librdkafka properties, from `DT_USERS_KAFKA_PROPERTIES_<NAME>` variables (the
    /// name lower-cased, `_` read as `.`), applied to every Kafka client after the above.
    #[serde(skip)]
    pub kafka_properties: Vec<(String, SecretString)>,
    /// Attempts of a command the database refuses for a passing reason (a deadlock, a lock
    /// wait) before it goes to the DLQ; while a dependency is down, commands wait instead.
    pub command_max_attempts: u32,
    /// Seconds the ids of handled commands are kept, so that a redelivery is recognised; keep it
    /// longer than the commands topic's retention.
    pub command_retention: u64,
    /// Consumer group session timeout, milliseconds.
    pub kafka_session_timeout_ms: u64,
    /// Consumer heartbeat interval, milliseconds.
    pub kafka_heartbeat_interval_ms: u64,
    /// Longest wait of a fetch for new commands, milliseconds.
    pub kafka_fetch_wait_max_ms: u64,
    /// Seconds between job-queue heartbeats of a worker.
    pub jobs_heartbeat_secs: u64,
    /// Heartbeats a worker may miss before its in-flight jobs are handed to another worker.
    pub jobs_missed_heartbeats: usize,
    /// Seconds one attempt of a job may take.
    pub job_timeout_secs: u64,
    /// Milliseconds a worker's claim on an email it is sending is honoured by other workers.
    pub email_claim_lease_ms: u64,
    /// Seconds a deleted account can be restored before it is erased.
    pub deletion_grace_period: u64,
    /// Accounts erased at most per sweep, so one sweep's work stays bounded.
    pub purge_batch: u32,
    /// Seconds between two sweeps of `beat` (expired tokens, old records, and accounts due for
    /// erasure).
    pub purge_interval: u64,
    /// Milliseconds between two polls of the outbox by the relay.
    pub relay_interval_ms: u64,
    /// Run the relay and a worker inside `serve` (single-node deployments, the embedded default).
    pub run_background_in_serve: bool,
    /// Seconds a role is given on SIGTERM to finish what it started before it exits anyway.
    pub shutdown_timeout_secs: u64,
    /// `false` turns every rate limit off.
    pub rate_limit_enabled: bool,
    /// Sign-in attempts per client IP (`burst/requests/seconds`).
    pub rate_limit_login_ip: String,
    /// Password checks per account, counted before each check and given back when it
    /// succeeds: the soft lockout (about 100 wrong passwords an hour by default).
    pub rate_limit_login_account: String,
    /// Sign-in attempts per client IP and account.
    pub rate_limit_login_ip_account: String,
    /// Registrations per client IP.
    pub rate_limit_register_ip: String,
    /// Password-reset, restoration and verification emails per target address or account.
    pub rate_limit_email_target: String,
    /// The same requests per client IP.
    pub rate_limit_email_ip: String,
    /// Token refreshes per session.
    pub rate_limit_refresh: String,
    /// Email changes started per account.
    pub rate_limit_email_change: String,
    /// Password checks of one account running at once (sign-in, `current_password`); more
    /// are refused with 429 before any hashing.
    pub password_checks_in_flight: u32,
    /// Every request per client IP: a generous ceiling.
    pub rate_limit_global_ip: String,
    /// Comma-separated addresses or networks whose forwarding header is believed.
    pub trusted_proxies: String,
    /// The header trusted proxies name the client in: `x-forwarded-for` or `forwarded`
    /// (RFC 7239).
    pub forwarded_header: String,
    /// IPv6 clients are counted per network of this prefix length (a `/64` is one subscriber).
    pub rate_limit_ipv6_prefix: u8,
    /// Keys the in-process limiter holds at most; beyond, the least recently used are evicted.
    pub rate_limit_memory_keys: usize,
    /// Readiness checks per client IP, for callers without the health token.
    pub rate_limit_health_ip: String,
    /// A bearer token that makes `/health/ready` show each dependency's error and the outbox
    /// backlog; without it only the statuses are shown.
    #[serde(skip_serializing)]
    pub health_token: Option<SecretString>,
    /// Comma-separated origins allowed by CORS; empty: CORS off.
    pub cors_allowed_origins: String,
    /// Argon2id memory cost in KiB.
    pub argon2_memory_kib: u32,
    /// Argon2id iterations.
    pub argon2_iterations: u32,
    /// Argon2id parallelism.
    pub argon2_parallelism: u32,
    /// Password hashes computed at once; further requests wait, up to `password_hash_queue`.
    pub password_hash_concurrency: usize,
    /// Requests allowed to wait for a hashing slot before new ones are shed with 503.
    pub password_hash_queue: usize,
    /// Seconds a request may take before it is answered 503.
    pub request_timeout: u64,
    /// `json` (default) or `pretty`.
    pub log_format: String,
}

impl Default for Settings {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        Self {
            database_url: None,
            database_max_connections: 20,
            database_lock_timeout: 5,
            redis_url: None,
            redis_cluster: false,
            redis_key_prefix: "dt-users".into(),
            public_url: "http://localhost:8000".into(),
            data_dir: PathBuf::from("./var"),
            access_token_ttl: 900,
            access_token_leeway: 3,
            refresh_token_ttl: 2_592_000,
            refresh_reuse_grace: 10,
            token_issuer: "dt-users".into(),
            token_audience: "devtalk".into(),
            signing_keys: None,
            signing_keys_file: None,
            smtp_url: None,
            email_from: "Dev Talk <no-reply@devtalk.localhost>".into(),
            email_token_ttl: 86_400,
            email_token_secrets: None,
            mfa_encryption_key: None,
            totp_issuer: "Dev Talk".into(),
            webauthn_rp_id: None,
            webauthn_origins: String::new(),
            oauth_redirect_uris: String::new(),
            api_url: "http://localhost:8000".into(),
            github_client_id: None,
            github_client_secret: None,
            github_url: "https://github.com".into(),
            github_api_url: "https://api.github.com".into(),
            oidc_providers: String::new(),
            oidc: Vec::new(),
            jobs_url: None,
            jobs_namespace: "dt-users:jobs".into(),
            worker_concurrency: 16,
            job_max_attempts: 8,
            job_backoff_ms: 2_000,
            job_backoff_max_ms: 600_000,
            kafka_bootstrap_servers: None,
            kafka_events_topic: "devtalk.users.events".into(),
            kafka_commands_topic: "devtalk.users.commands".into(),
            kafka_dlq_topic: "devtalk.users.commands.dlq".into(),
            kafka_group_id: "dt-users".into(),
            kafka_idempotence: true,
            kafka_message_timeout_ms: 10_000,
            kafka_security_protocol: None,
            kafka_sasl_mechanism: None,
            kafka_sasl_username: None,
            kafka_sasl_password: None,
            kafka_ssl_ca_location: None,
            kafka_ssl_certificate_location: None,
            kafka_ssl_key_location: None,
            kafka_ssl_key_password: None,
            kafka_properties: Vec::new(),
            command_max_attempts: 5,
            command_retention: 2_592_000,
            kafka_session_timeout_ms: 6_000,
            kafka_heartbeat_interval_ms: 1_000,
            kafka_fetch_wait_max_ms: 100,
            jobs_heartbeat_secs: 5,
            jobs_missed_heartbeats: 6,
            job_timeout_secs: 60,
            email_claim_lease_ms: 120_000,
            purge_interval: 60,
            deletion_grace_period: 2_592_000,
            purge_batch: 500,
            relay_interval_ms: 1_000,
            run_background_in_serve: true,
            shutdown_timeout_secs: 25,
            rate_limit_enabled: true,
            rate_limit_login_ip: "10/1/1".into(),
            rate_limit_login_account: "10/90/3600".into(),
            rate_limit_login_ip_account: "5/1/10".into(),
            rate_limit_register_ip: "10/10/3600".into(),
            rate_limit_email_target: "5/5/3600".into(),
            rate_limit_email_ip: "20/20/3600".into(),
            rate_limit_refresh: "60/60/60".into(),
            rate_limit_email_change: "5/5/3600".into(),
            password_checks_in_flight: 2,
            rate_limit_global_ip: "300/1200/60".into(),
            trusted_proxies: String::new(),
            forwarded_header: "x-forwarded-for".into(),
            rate_limit_ipv6_prefix: 64,
            rate_limit_memory_keys: 100_000,
            rate_limit_health_ip: "20/10/1".into(),
            health_token: None,
            cors_allowed_origins: String::new(),
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            password_hash_concurrency: cores,
            password_hash_queue: cores * 32,
            request_timeout: 30,
            log_format: "json".into(),
        }
    }
}

impl Settings {
    /// Reads the environment over the defaults.
    pub fn load() -> Result<Self, Box<figment::Error>> {
        Self::from_figment(Figment::from(Serialized::defaults(Settings::default())))
    }

    fn from_figment(base: Figment) -> Result<Self, Box<figment::Error>> {
        let mut settings: Self = base
            .merge(Env::prefixed("DT_USERS_"))
            .extract()
            .map_err(Box::new)?;
        settings.kafka_properties = kafka_properties(std::env::vars());
        settings.oidc = oauth::oidc_settings(&settings.oidc_providers, std::env::vars());
        Ok(settings)
    }
}

/// The environment variable of a settings field.
pub fn variable_name(field: &str) -> String {
    format!("DT_USERS_{}", field.to_ascii_uppercase())
}

/// The librdkafka properties of `DT_USERS_KAFKA_PROPERTIES_<NAME>` variables among `vars`:
/// `DT_USERS_KAFKA_PROPERTIES_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM` is
/// `ssl.endpoint.identification.algorithm`. Values may be secrets (`sasl.password`).
fn kafka_properties(vars: impl Iterator<Item = (String, String)>) -> Vec<(String, SecretString)> {
    let mut properties: Vec<(String, SecretString)> = vars
        .filter_map(|(name, value)| {
            let property = name.strip_prefix("DT_USERS_KAFKA_PROPERTIES_")?;
            (!property.is_empty())
                .then(|| (property.to_lowercase().replace('_', "."), value.into()))
        })
        .collect();
    properties.sort_by(|a, b| a.0.cmp(&b.0));
    properties
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn kafka_properties_are_read_from_their_prefix() {
        let vars = [
            (
                "DT_USERS_KAFKA_PROPERTIES_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM",
                "none",
            ),
            ("DT_USERS_KAFKA_PROPERTIES_", "ignored"),
            ("DT_USERS_KAFKA_BOOTSTRAP_SERVERS", "not a property"),
            ("DT_USERS_KAFKA_PROPERTIES_CLIENT_RACK", "eu-1a"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let read: Vec<(String, String)> = kafka_properties(vars)
            .into_iter()
            .map(|(k, v)| (k, v.expose_secret().to_owned()))
            .collect();
        assert_eq!(
            read,
            [
                ("client.rack".to_owned(), "eu-1a".to_owned()),
                (
                    "ssl.endpoint.identification.algorithm".to_owned(),
                    "none".to_owned()
                ),
            ]
        );
    }
}

/// The README documents every setting: each variable of [`Settings`] has its row in the
/// configuration table, each variable there is a setting, and the default it gives is the
/// one in force. Values that cannot be used are refused, naming their variable.
#[cfg(test)]
mod documented;
