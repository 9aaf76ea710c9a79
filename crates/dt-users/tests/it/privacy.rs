//! Personal data stays where it belongs: an SMTP refusal that quotes the recipient loses the
//! address before it reaches the logs or the job queue; the rate limiter stores keyed
//! pseudonyms, never an address or an IP; the embedded mailer's files are removed once their
//! links have expired.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dt_users::startup::{Background, Roles};
use reqwest::StatusCode;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::helpers::{
    MFA_KEY, PASSWORD, SIGNING_KEY, TestApp, create_database, delete_redis_prefix, drop_database,
    redis_contents, redis_url, test_settings,
};
use crate::mail::{SmtpSink, free_port};

/// The real binary serving on a free port, its JSON logs in a file; stopped, and its
/// database, keys and directory removed, when dropped.
struct Service {
    child: Child,
    base: String,
    log: PathBuf,
    dir: PathBuf,
    db_name: String,
    prefix: String,
}

impl Service {
    async fn start(smtp_url: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "dt-users-privacy-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (db_name, db_url) = create_database().await;
        let prefix = format!("dtu-test:{}", uuid::Uuid::new_v4().simple());
        dt_users::startup::open_database(&test_settings(&db_url, &prefix))
            .unwrap()
            .migrate()
            .await
            .unwrap();
        let port = free_port();
        let log = dir.join("service.log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_dt-users"));
        for (key, _) in std::env::vars() {
            if key.starts_with("DT_USERS_") {
                command.env_remove(key);
            }
        }
        command
            .args(["serve", "--port", &port.to_string()])
            .current_dir(&dir)
            .env("RUST_LOG", "debug")
            .env("DT_USERS_LOG_FORMAT", "json")
            .env("DT_USERS_DATABASE_URL", &db_url)
            .env("DT_USERS_REDIS_URL", redis_url())
            .env("DT_USERS_REDIS_KEY_PREFIX", &prefix)
            .env("DT_USERS_JOBS_URL", redis_url())
            .env("DT_USERS_JOBS_NAMESPACE", format!("{prefix}:jobs"))
            .env("DT_USERS_SMTP_URL", smtp_url)
            .env("DT_USERS_SIGNING_KEYS", SIGNING_KEY.as_str())
            .env("DT_USERS_MFA_ENCRYPTION_KEY", MFA_KEY.as_str())
            .env("DT_USERS_RELAY_INTERVAL_MS", "100")
            .env("DT_USERS_ARGON2_MEMORY_KIB", "1024")
            .env("DT_USERS_ARGON2_ITERATIONS", "1")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null());
        let child = command.spawn().unwrap();
        let service = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            dir,
            db_name,
            prefix,
        };
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(response) = client
                .get(format!("{}/health/ready", service.base))
                .send()
                .await
                && response.status() == StatusCode::OK
            {
                return service;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the service did not become ready: {}", service.logs());
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_for_log(&self, text: &str) {
        let started = std::time::Instant::now();
        while !self.logs().contains(text) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no log line with {text:?}: {}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (db, prefix) = (self.db_name.clone(), self.prefix.clone());
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
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn an_smtp_refusal_quoting_the_recipient_leaves_no_address_in_logs_or_the_job_queue() {
    let address = "permanent-fail-ada@example.com";
    let sink = SmtpSink::start().await;
    let service = Service::start(&sink.url()).await;
    let registered = reqwest::Client::new()
        .post(format!("{}/api/v1/auth/register", service.base))
        .json(&json!({"email": address, "username": "ada", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), StatusCode::CREATED);
    service.wait_for_log("job dead").await;

    let logs = service.logs();
    // The refusal itself is logged (so an address in it would be too), without the address.
    let failure = logs.lines().find(|line| line.contains("job dead")).unwrap();
    assert!(
        failure.contains("(550)") && failure.contains("No such user"),
        "{failure}"
    );

    // The queue records the job's outcome just after the worker logs it.
    let jobs = format!("{}:jobs:", service.prefix);
    let started = std::time::Instant::now();
    let stored = loop {
        let stored = redis_contents(&format!("{}:*", service.prefix)).await;
        let recorded = stored
            .iter()
            .filter(|(key, _)| key.starts_with(&jobs))
            .flat_map(|(_, values)| values)
            .any(|value| value.contains("(550)") && value.contains("No such user"));
        if recorded {
            break stored;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the job queue kept no record of the refusal: {stored:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for line in service.logs().lines() {
        assert!(
            !line.to_lowercase().contains(address),
            "a log line holds the address: {line}"
        );
    }
    for (key, values) in &stored {
        assert!(!key.to_lowercase().contains(address), "{key}");
        for value in values {
            assert!(
                !value.to_lowercase().contains(address),
                "{key} holds the address: {value}"
            );
        }
    }
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn rate_limit_keys_hold_no_email_address_or_ip() {
    let app = TestApp::spawn_with(|s| s.rate_limit_enabled = true).await;
    app.register("ada@example.com", "ada").await;
    for email in ["ada@example.com", "ADA@Example.COM"] {
        let response = app.login(email, "not the password at all").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let forgot = app
        .post_json(
            "/api/v1/auth/password/forgot",
            &json!({"email": "ada@example.com"}),
        )
        .await;
    assert_eq!(forgot.status(), StatusCode::ACCEPTED);

    let stored = redis_contents(&format!("{}:*", app.redis_prefix)).await;
    let limiter = format!("{}:rl:", app.redis_prefix);
    for rule in [
        "global_ip",
        "register_ip",
        "login_ip",
        "login_ip_account",
        "login_account",
        "email_ip",
        "email_target",
    ] {
        assert!(
            stored
                .iter()
                .any(|(key, _)| key.starts_with(&format!("{limiter}{rule}:"))),
            "no limiter key for {rule}: {stored:?}"
        );
    }
    let forbidden = [
        "ada@example.com".to_owned(),
        sha256_hex("ada@example.com"),
        "127.0.0.1".to_owned(),
        sha256_hex("127.0.0.1"),
    ];
    for (key, values) in &stored {
        let key_text = key.to_lowercase();
        for needle in &forbidden {
            assert!(!key_text.contains(needle.as_str()), "key {key}");
            if key.starts_with(&limiter) {
                for value in values {
                    assert!(
                        !value.to_lowercase().contains(needle.as_str()),
                        "{key} holds {value}"
                    );
                }
            }
        }
    }
}

/// The embedded mailer's files under `dir`.
fn mail_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect()
}

#[tokio::test]
async fn the_embedded_mailers_files_are_removed_once_their_links_have_expired() {
    let app = TestApp::spawn_with(|s| {
        s.smtp_url = None;
        s.relay_interval_ms = 100;
    })
    .await;
    let background = Background::start(
        &app.app,
        app.config(),
        Roles {
            relay: true,
            worker: true,
            beat: false,
            consume: false,
        },
    )
    .await
    .unwrap();
    let beat = app.beat(Duration::from_secs(60));
    let dir = app.config().data_dir.join("mail");
    let ttl = i64::try_from(app.config().email.token_ttl.as_secs()).unwrap();

    app.register("ada@example.com", "ada").await;
    let started = std::time::Instant::now();
    while mail_files(&dir).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no email file was written"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let files = mail_files(&dir);
    assert_eq!(files.len(), 1);

    assert!(beat.tick().await.unwrap());
    assert_eq!(mail_files(&dir), files, "removed before its link expired");
    app.clock.advance_secs(ttl - 60);
    assert!(beat.tick().await.unwrap());
    assert_eq!(mail_files(&dir), files, "removed before its link expired");

    app.clock.advance_secs(61);
    assert!(beat.tick().await.unwrap());
    assert!(mail_files(&dir).is_empty(), "kept after its link expired");

    background.shutdown().await;
    let _ = std::fs::remove_dir_all(&app.config().data_dir);
}
