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
            refresh_token_ttl: 2_592_000,
            refresh_reuse_grace: 10,
            token_issuer: "dt-users".into(),
            token_audience: "devtalk".into(),
            signing_keys: None,
            signing_keys_file: None,
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
}
