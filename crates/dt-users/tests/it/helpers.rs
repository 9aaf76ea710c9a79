//! A running dt-users per test, on either [`Backend`]: its own MariaDB database and Redis key
//! prefix, or its own SQLite files in a data directory of its own; a clock the test moves, and
//! an HTTP client. Everything is removed when the `TestApp` drops.

use std::sync::{Arc, LazyLock};

pub use crate::backends::Backend;
use dt_users::config::{Config, Settings};
use dt_users::domain::ManualClock;
use dt_users::security::keys::generate_pem;
use dt_users::service::App;
use dt_users::startup::Application;
use reqwest::{Response, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::Connection;
use tokio::sync::oneshot;

pub const PASSWORD: &str = "correct horse battery staple";

/// The health token of every test app: `/health/ready` shows its details to it.
pub const HEALTH_TOKEN: &str = "the operators' readiness token";

pub fn mysql_server_url() -> String {
    std::env::var("DT_USERS_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

pub fn redis_url() -> String {
    std::env::var("DT_USERS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// One signing key for the whole test binary.
pub static SIGNING_KEY: LazyLock<String> = LazyLock::new(|| generate_pem().unwrap());

/// One two-factor sealing key for the whole test binary (32 random bytes, base64).
pub static MFA_KEY: LazyLock<String> = LazyLock::new(|| {
    use base64::Engine;
    let mut key = [0_u8; 32];
    rand::fill(&mut key);
    base64::engine::general_purpose::STANDARD.encode(key)
});

/// A fresh, empty database; dropped by [`drop_database`].
pub async fn create_database() -> (String, String) {
    sqlx::any::install_default_drivers();
    let name = format!("dtu_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::AnyConnection::connect(&mysql_server_url())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE `{name}` CHARACTER SET utf8mb4"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let url = format!("{}/{name}", mysql_server_url());
    (name, url)
}

pub async fn drop_database(name: &str) {
    let Ok(mut conn) = sqlx::AnyConnection::connect(&mysql_server_url()).await else {
        return;
    };
    // The app's connections first: the test's runtime is blocked in `TestApp::drop`, so a
    // transaction one of its tasks holds open (work done after a response, say) would never
    // end, and `DROP DATABASE` would wait for its lock for ever.
    let holders: Vec<(i64,)> = sqlx::query_as(
        "SELECT CAST(ID AS SIGNED) FROM information_schema.PROCESSLIST \
         WHERE DB = ? AND ID <> CONNECTION_ID()",
    )
    .bind(name.to_owned())
    .fetch_all(&mut conn)
    .await
    .unwrap_or_default();
    for (id,) in holders {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("KILL {id}")))
            .execute(&mut conn)
            .await;
    }
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS `{name}`"
    )))
    .execute(&mut conn)
    .await;
}

pub async fn delete_redis_prefix(prefix: &str) {
    let Ok(client) = redis::Client::open(redis_url()) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
    }
}

/// Settings for a test app against real MariaDB and Redis. Argon2 is made cheap: the code
/// path is the same, the suite is faster.
pub fn test_settings(database_url: &str, prefix: &str) -> Settings {
    Settings {
        database_url: Some(database_url.to_owned()),
        redis_url: Some(redis_url()),
        redis_key_prefix: prefix.to_owned(),
        // Jobs go through Redis under the test's prefix; nothing is written in the source tree.
        jobs_url: Some(redis_url()),
        jobs_namespace: format!("{prefix}:jobs"),
        ..shared_settings(fresh_data_dir())
    }
}

/// Settings for an embedded test app: no database, Redis or job queue configured, so the
/// database and the job queue are SQLite files under `data_dir`, and sessions and the rate
/// limiter live in the process.
pub fn embedded_test_settings(data_dir: std::path::PathBuf) -> Settings {
    Settings {
        database_url: None,
        redis_url: None,
        jobs_url: None,
        ..shared_settings(data_dir)
    }
}

/// The database `settings` name: the configured URL, or the embedded default's SQLite file
/// (`dt-users.db` in the data directory, as documented for the embedded default). Worked out
/// from the plain settings, so that it does not depend on how the service parses them.
fn database_url_of(settings: &Settings) -> String {
    match settings.database_url.as_deref().map(str::trim) {
        Some(url) if !url.is_empty() => url.to_owned(),
        _ => format!(
            "sqlite://{}?mode=rwc",
            settings.data_dir.join("dt-users.db").display()
        ),
    }
}

/// A port of 127.0.0.1 that was free a moment ago (the system's next ephemeral port is not
/// handed out again at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A directory in the temporary directory no other test uses (not created here).
pub fn fresh_data_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("dt-users-test-{}", uuid::Uuid::new_v4().simple()))
}

/// What every test app has, whatever its backend.
fn shared_settings(data_dir: std::path::PathBuf) -> Settings {
    Settings {
        signing_keys: Some(SecretString::from(SIGNING_KEY.clone())),
        mfa_encryption_key: Some(SecretString::from(MFA_KEY.clone())),
        argon2_memory_kib: 1024,
        argon2_iterations: 1,
        // Tests that need the relay and a worker turn them on (see `mail::spawn_with_mail`).
        run_background_in_serve: false,
        // Rate limits are tested on their own (`rate_limits.rs`); elsewhere one client sends
        // far more than a person would.
        rate_limit_enabled: false,
        data_dir,
        health_token: Some(HEALTH_TOKEN.into()),
        ..Settings::default()
    }
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub clock: ManualClock,
    pub app: Arc<App>,
    pub backend: Backend,
    /// The URL of the database the app serves (after the test's adjustments), for [`Self::db`]
    /// and for another app on the same data.
    pub database_url: String,
    /// The MariaDB database made for this app; empty on [`Backend::Embedded`].
    pub db_name: String,
    /// The Redis key prefix of this app; nothing is stored under it on [`Backend::Embedded`].
    pub redis_prefix: String,
    /// The app's data directory, removed on drop.
    pub data_dir: std::path::PathBuf,
    /// Stops the server when the `TestApp` drops.
    instance: Instance,
}

impl TestApp {
    /// An app on MariaDB and Redis.
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Spawns on MariaDB and Redis with settings adjusted by `adjust` (after the test
    /// defaults are set).
    pub async fn spawn_with(adjust: impl FnOnce(&mut Settings)) -> Self {
        Self::spawn_with_on(Backend::MariaDbRedis, adjust).await
    }

    /// An app on `backend`.
    pub async fn spawn_on(backend: Backend) -> Self {
        Self::spawn_with_on(backend, |_| {}).await
    }

    /// Spawns on `backend` with settings adjusted by `adjust` (after the test defaults are
    /// set).
    pub async fn spawn_with_on(backend: Backend, adjust: impl FnOnce(&mut Settings)) -> Self {
        Self::spawn_on_port(backend, 0, adjust).await
    }

    /// Spawns on `backend` serving on `port` (0: a free one), with settings adjusted by
    /// `adjust`: a test that must know the app's URL before it starts (to register it at an
    /// identity provider) takes a [`free_port`] first.
    pub async fn spawn_on_port(
        backend: Backend,
        port: u16,
        adjust: impl FnOnce(&mut Settings),
    ) -> Self {
        // `DT_USERS_TEST_LOG=1` shows the service's logs while debugging a test.
        if std::env::var_os("DT_USERS_TEST_LOG").is_some() {
            dt_users::telemetry::init_logging(dt_users::config::LogFormat::Pretty);
        }
        sqlx::any::install_default_drivers();
        let redis_prefix = format!("dtu-test:{}", uuid::Uuid::new_v4().simple());
        let (db_name, mut settings) = match backend {
            Backend::MariaDbRedis => {
                let (db_name, db_url) = create_database().await;
                (db_name, test_settings(&db_url, &redis_prefix))
            }
            Backend::Embedded => {
                let mut settings = embedded_test_settings(fresh_data_dir());
                // Unused with no Redis; set so that a test can show nothing is stored under it.
                settings.redis_key_prefix.clone_from(&redis_prefix);
                (String::new(), settings)
            }
        };
        adjust(&mut settings);
        dt_users::startup::open_database(&settings)
            .unwrap()
            .migrate()
            .await
            .unwrap();
        let clock = ManualClock::starting_now();
        let database_url = database_url_of(&settings);
        let data_dir = settings.data_dir.clone();
        let instance = Instance::start_on(settings, &clock, port).await;
        Self {
            base: instance.base.clone(),
            client: reqwest::Client::new(),
            clock,
            app: instance.app.clone(),
            backend,
            database_url,
            db_name,
            redis_prefix,
            data_dir,
            instance,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get_auth(&self, path: &str, token: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub async fn register(&self, email: &str, username: &str) -> Value {
        let response = self
            .post_json(
                "/api/v1/auth/register",
                &json!({"email": email, "username": username, "password": PASSWORD}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.unwrap()
    }

    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.post_json(
            "/api/v1/auth/login",
            &json!({"email": email, "password": password}),
        )
        .await
    }

    /// Registers `ada` and signs her in; returns the token pair.
    pub async fn signed_in(&self) -> Tokens {
        self.register("ada@example.com", "ada").await;
        self.sign_in("ada@example.com").await
    }

    pub async fn sign_in(&self, email: &str) -> Tokens {
        let response = self.login(email, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::OK);
        Tokens::from(response.json::<Value>().await.unwrap())
    }

    pub async fn refresh(&self, refresh_token: &str) -> Response {
        self.post_json(
            "/api/v1/auth/refresh",
            &json!({"refresh_token": refresh_token}),
        )
        .await
    }

    pub async fn patch_current(&self, access_token: &str, body: &Value) -> Response {
        self.client
            .patch(self.url("/api/v1/users/current"))
            .bearer_auth(access_token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Deletes the account `access_token` signs in, with `password`.
    pub async fn delete_account(&self, access_token: &str, password: &str) -> Response {
        self.client
            .delete(self.url("/api/v1/users/current"))
            .bearer_auth(access_token)
            .json(&json!({"password": password}))
            .send()
            .await
            .unwrap()
    }

    /// The id of the account `access_token` signs in.
    pub async fn current_user_id(&self, access_token: &str) -> String {
        let me: Value = self
            .get_auth("/api/v1/users/current", access_token)
            .await
            .json()
            .await
            .unwrap();
        me["id"].as_str().unwrap().to_owned()
    }

    /// A connection to the database this app serves: its own MariaDB database, or its SQLite
    /// file. Queries through it must be valid in both dialects.
    pub async fn db(&self) -> sqlx::AnyConnection {
        sqlx::AnyConnection::connect(&self.database_url)
            .await
            .unwrap()
    }

    /// The token of the newest email `name` of `user_id`, once one is recorded: some emails
    /// (a password reset) are recorded after the answer, so that its timing tells nothing.
    pub async fn awaited_token(&self, user_id: &str, name: &str) -> String {
        for _ in 0..500 {
            let mut conn = self.db().await;
            let recorded: Option<(String,)> =
                sqlx::query_as("SELECT id FROM outbox WHERE user_id = ? AND name = ? LIMIT 1")
                    .bind(user_id.to_owned())
                    .bind(name.to_owned())
                    .fetch_optional(&mut conn)
                    .await
                    .unwrap();
            if recorded.is_some() {
                return self.emailed_token(user_id, name).await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("no {name} email was recorded for {user_id}");
    }

    /// The token of the newest email `name` (`account_restore`, `password_reset`, …) recorded
    /// for `user_id`, recomputed the way the worker does (for tests without a mail server).
    pub async fn emailed_token(&self, user_id: &str, name: &str) -> String {
        let mut conn = self.db().await;
        let row = sqlx::query(
            "SELECT id FROM outbox WHERE user_id = ? AND name = ? ORDER BY seq DESC LIMIT 1",
        )
        .bind(user_id.to_owned())
        .bind(name.to_owned())
        .fetch_one(&mut conn)
        .await
        .unwrap();
        let id: String = sqlx::Row::get(&row, 0);
        self.app
            .email_tokens
            .token_for(uuid::Uuid::parse_str(&id).unwrap())
    }

    /// The value of the counter `name` in `/metrics`, summed over its labels; 0 before it
    /// was first counted. The recorder is per process: nextest runs each test in its own.
    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn counter(&self, name: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// `/health/ready` as the operators see it (with the health token): status and report.
    pub async fn readiness(&self) -> (StatusCode, Value) {
        let response = self
            .client
            .get(self.url("/health/ready"))
            .bearer_auth(HEALTH_TOKEN)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    pub async fn current_status(&self, access_token: &str) -> StatusCode {
        self.get_auth("/api/v1/users/current", access_token)
            .await
            .status()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.instance.stop();
        // The directory's files may still be open: removing them is fine on Unix.
        let _ = std::fs::remove_dir_all(&self.data_dir);
        if self.backend == Backend::Embedded {
            return;
        }
        let db = self.db_name.clone();
        let prefix = self.redis_prefix.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                drop_database(&db).await;
                delete_redis_prefix(&prefix).await;
            });
        })
        .join();
    }
}

#[derive(Debug, Clone)]
pub struct Tokens {
    pub access: String,
    pub refresh: String,
}

impl From<Value> for Tokens {
    fn from(v: Value) -> Self {
        Self {
            access: v["access_token"].as_str().unwrap().to_owned(),
            refresh: v["refresh_token"].as_str().unwrap().to_owned(),
        }
    }
}

/// Asserts a 422 `validation_error` and returns the fields its errors name, in order.
pub async fn invalid_fields(response: Response) -> Vec<String> {
    let body = assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
    )
    .await;
    body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect()
}

/// Sends every request at once; their statuses, in the order given.
pub async fn send_together(
    requests: impl IntoIterator<Item = reqwest::RequestBuilder>,
) -> Vec<StatusCode> {
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|request| tokio::spawn(async move { request.send().await.unwrap().status() }))
        .collect();
    let mut statuses = Vec::with_capacity(tasks.len());
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    statuses
}

/// Asserts a problem document with `status` and `code`, and returns it.
pub async fn assert_problem(response: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status, "unexpected status");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "body: {body}");
    assert_eq!(body["status"], status.as_u16());
    assert!(body["type"].is_string() && body["title"].is_string());
    body
}

/// A TCP proxy in front of a real server that a test can cut and restore, to take a
/// dependency away mid-test over a real connection.
pub struct CuttableProxy {
    pub port: u16,
    upstream: String,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl CuttableProxy {
    pub async fn start(upstream: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut proxy = Self {
            port,
            upstream: upstream.to_owned(),
            task: None,
        };
        proxy.task = Some(Self::serve(listener, proxy.upstream.clone()));
        proxy
    }

    fn serve(listener: tokio::net::TcpListener, upstream: String) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        })
    }

    /// Drops every connection and refuses new ones.
    pub async fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Accepts connections again on the same port.
    pub async fn restore(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        self.task = Some(Self::serve(listener, self.upstream.clone()));
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Another instance of the service on a [`TestApp`]'s database and Redis prefix, with
/// settings of its own (a restart with a changed configuration). Stops when dropped; the
/// database and the keys stay the `TestApp`'s to remove.
pub struct Instance {
    pub base: String,
    pub app: Arc<App>,
    /// The settings it was started with, and what they were parsed into.
    pub settings: Settings,
    pub config: Config,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Instance {
    /// Serves `settings` on a free port, on `clock`.
    async fn start(settings: Settings, clock: &ManualClock) -> Self {
        Self::start_on(settings, clock, 0).await
    }

    /// Serves `settings` on `port` of 127.0.0.1 (0: a free one), on `clock`.
    async fn start_on(settings: Settings, clock: &ManualClock, port: u16) -> Self {
        let application = Application::build_with_clock(
            settings.clone(),
            "127.0.0.1",
            port,
            Arc::new(clock.clone()),
        )
        .await
        .unwrap();
        let config = application.config().clone();
        let base = format!("http://{}", application.local_addr().unwrap());
        let app = application.app();
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(application.run_until(async move {
            let _ = rx.await;
        }));
        Self {
            base,
            app,
            settings,
            config,
            shutdown: Some(tx),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.stop();
    }
}

impl TestApp {
    /// Starts another instance with this app's settings changed by `adjust`, on its clock.
    pub async fn another_instance(&self, adjust: impl FnOnce(&mut Settings)) -> Instance {
        let mut settings = self.instance.settings.clone();
        adjust(&mut settings);
        Instance::start(settings, &self.clock).await
    }

    /// What they were parsed into.
    pub fn config(&self) -> &Config {
        &self.instance.config
    }

    /// The outbox relay alone, in-process: it queues this app's emails for workers that run
    /// elsewhere (separate processes).
    pub async fn start_relay(&self) -> dt_users::startup::Background {
        dt_users::startup::Background::start(
            &self.app,
            self.config(),
            dt_users::startup::Roles {
                relay: true,
                worker: false,
                beat: false,
                consume: false,
            },
        )
        .await
        .unwrap()
    }

    /// Beat, sweeping this app's database with its use-cases (and its mail files, if any).
    pub fn beat(&self, interval: std::time::Duration) -> dt_users::jobs::Beat<Arc<App>> {
        let config = self.config();
        let mail_files = config
            .email
            .smtp_url
            .is_none()
            .then(|| dt_users::jobs::MailFiles {
                dir: config.data_dir.join("mail"),
                link_ttl: config.email.token_ttl,
            });
        dt_users::jobs::Beat::new(
            self.app.clone(),
            self.app.db.clone(),
            self.app.clock.clone(),
            interval,
            mail_files,
        )
    }
}

/// The keys matching `pattern` on the server of `conn` (SCAN, so a big key space is read in
/// steps; a key may come twice).
pub async fn scan_keys(conn: &mut redis::aio::MultiplexedConnection, pattern: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

/// Every Redis key matching `pattern` with everything stored under it, whatever its type
/// (string, hash, list, set, sorted set, stream), as text.
pub async fn redis_contents(pattern: &str) -> Vec<(String, Vec<String>)> {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys = scan_keys(&mut conn, pattern).await;
    keys.sort();
    keys.dedup();
    let mut contents = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let values: Vec<String> = match kind.as_str() {
            "string" => {
                let value: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                value
                    .map(|v| String::from_utf8_lossy(&v).into_owned())
                    .into_iter()
                    .collect()
            }
            "hash" => bytes_as_text(
                redis::cmd("HGETALL")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap(),
            ),
            "list" => bytes_as_text(
                redis::cmd("LRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut conn)
                    .await
                    .unwrap(),
            ),
            "set" => bytes_as_text(
                redis::cmd("SMEMBERS")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap(),
            ),
            "zset" => bytes_as_text(
                redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .query_async(&mut conn)
                    .await
                    .unwrap(),
            ),
            "stream" => {
                let reply: redis::Value = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg("-")
                    .arg("+")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                vec![format!("{reply:?}")]
            }
            // Gone between SCAN and TYPE.
            "none" => continue,
            other => panic!("{key}: a Redis type this scan does not read: {other}"),
        };
        contents.push((key, values));
    }
    contents
}

fn bytes_as_text(values: Vec<Vec<u8>>) -> Vec<String> {
    values
        .into_iter()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .collect()
}

/// A SQLite database file of one test (for an app with `database_url = Some(file.url())`),
/// removed with its WAL files when dropped. Declare it before the `TestApp`, so that the app
/// is gone first.
pub struct SqliteFile {
    pub path: std::path::PathBuf,
}

impl SqliteFile {
    /// A name in the temporary directory; the app creates the file on first connection.
    pub fn fresh() -> Self {
        let path = std::env::temp_dir().join(format!(
            "dt-users-test-{}.db",
            uuid::Uuid::new_v4().simple()
        ));
        Self { path }
    }

    pub fn url(&self) -> String {
        format!("sqlite://{}?mode=rwc", self.path.display())
    }

    /// A connection of the test's own to the file.
    pub async fn connect(&self) -> sqlx::AnyConnection {
        sqlx::any::install_default_drivers();
        sqlx::AnyConnection::connect(&self.url()).await.unwrap()
    }
}

impl Drop for SqliteFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut name = self.path.clone().into_os_string();
            name.push(suffix);
            let _ = std::fs::remove_file(name);
        }
    }
}
