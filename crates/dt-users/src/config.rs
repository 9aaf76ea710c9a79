//! One typed settings struct, loaded once: defaults, then `DT_USERS_*` environment variables.

use std::path::PathBuf;

use figment::Figment;
use figment::providers::{Env, Serialized};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// Every setting of the service. Each field is the environment variable `DT_USERS_<FIELD>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// `mysql://user:pass@host:3306/db` or `sqlite://path?mode=rwc`; unset: SQLite under `data_dir`.
    pub database_url: Option<String>,
    /// Maximum database connections per process.
    pub database_max_connections: u32,
    /// Sessions live in Redis when set, in process memory otherwise.
    pub redis_url: Option<String>,
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
    /// The job queue (a Redis URL); unset: a SQLite file under `data_dir`.
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
    pub purge_batch: i64,
    /// Seconds between two sweeps of `beat` (expired tokens, old records, and accounts due for
    /// erasure).
    pub purge_interval: u64,
    /// Milliseconds between two polls of the outbox by the relay.
    pub relay_interval_ms: u64,
    /// Run the relay and a worker inside `serve` (single-node deployments, the embedded default).
    pub run_background_in_serve: bool,
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
    /// Comma-separated addresses or networks whose `X-Forwarded-For` is believed.
    pub trusted_proxies: String,
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
            redis_url: None,
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
        base.merge(Env::prefixed("DT_USERS_"))
            .extract()
            .map_err(Box::new)
    }

    /// The database URL in force: the configured one, or the embedded SQLite file.
    pub fn effective_database_url(&self) -> String {
        match &self.database_url {
            Some(url) if !url.trim().is_empty() => url.trim().to_owned(),
            _ => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("dt-users.db").display()
            ),
        }
    }

    /// True when no database is configured and the embedded SQLite file is in use.
    pub fn is_embedded_database(&self) -> bool {
        self.database_url
            .as_deref()
            .is_none_or(|url| url.trim().is_empty())
    }

    pub fn redis_url(&self) -> Option<&str> {
        self.redis_url.as_deref().filter(|u| !u.trim().is_empty())
    }

    pub fn smtp_url(&self) -> Option<&str> {
        self.smtp_url.as_deref().filter(|u| !u.trim().is_empty())
    }

    pub fn kafka_bootstrap_servers(&self) -> Option<&str> {
        self.kafka_bootstrap_servers
            .as_deref()
            .filter(|u| !u.trim().is_empty())
    }

    pub fn jobs_url(&self) -> Option<&str> {
        self.jobs_url.as_deref().filter(|u| !u.trim().is_empty())
    }
}
