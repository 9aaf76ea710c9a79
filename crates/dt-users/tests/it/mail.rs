//! A real SMTP server for the tests (Python's aiosmtpd, `tests/support/smtp_sink.py`), and a
//! test app wired to it with the relay and an email worker running in-process.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{Backend, TestApp};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/smtp_sink.py");

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct SmtpSink {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl SmtpSink {
    /// A sink on a free port, not yet accepting (to play "the mail server is down").
    pub fn reserved() -> Self {
        let dir =
            std::env::temp_dir().join(format!("dt-users-smtp-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            port: free_port(),
            dir,
            child: None,
        }
    }

    pub async fn start() -> Self {
        let mut sink = Self::reserved();
        sink.launch().await;
        sink
    }

    pub async fn launch(&mut self) {
        let child = Command::new("python3")
            .arg(SCRIPT)
            .arg(self.port.to_string())
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with aiosmtpd (pip install aiosmtpd)");
        self.child = Some(child);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the SMTP sink did not start");
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every message accepted so far, oldest first.
    pub fn messages(&self) -> Vec<Value> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
            .collect()
    }

    pub fn messages_to(&self, to: &str) -> Vec<Value> {
        self.messages()
            .into_iter()
            .filter(|m| m["to"].as_array().unwrap().iter().any(|t| t == to))
            .collect()
    }

    /// Waits for the first message to `to` whose subject contains `subject`.
    pub async fn wait_for(&self, to: &str, subject: &str) -> Value {
        self.wait_for_within(to, subject, Duration::from_secs(20))
            .await
    }

    /// Waits for the `n`th (1-based) message to `to` whose subject contains `subject`.
    pub async fn wait_for_nth(&self, to: &str, subject: &str, n: usize) -> Value {
        let started = std::time::Instant::now();
        loop {
            let matching: Vec<Value> = self
                .messages_to(to)
                .into_iter()
                .filter(|m| m["subject"].as_str().unwrap().contains(subject))
                .collect();
            if let Some(message) = matching.get(n - 1) {
                return message.clone();
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no email #{n} to {to} about {subject:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_for_within(&self, to: &str, subject: &str, limit: Duration) -> Value {
        let started = std::time::Instant::now();
        loop {
            if let Some(m) = self
                .messages_to(to)
                .into_iter()
                .find(|m| m["subject"].as_str().unwrap().contains(subject))
            {
                return m;
            }
            assert!(
                started.elapsed() < limit,
                "no email to {to} about {subject:?}; got {:?}",
                self.messages()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The token an email carries: the line that holds only the token.
pub fn token_in(message: &Value) -> String {
    let text = message["text"].as_str().unwrap();
    let token = text
        .lines()
        .map(str::trim)
        .find(|l| {
            l.len() == 43
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .unwrap_or_else(|| panic!("no token in {text}"))
        .to_owned();
    let html = message["html"].as_str().unwrap();
    assert!(text.contains(&format!("?token={token}")), "{text}");
    assert!(html.contains(&format!("?token={token}")), "{html}");
    token
}

/// A test app on MariaDB and Redis whose emails go to `smtp_url` through the Redis job queue,
/// with the relay, a worker and the sweeps running in-process, and quick retries.
pub async fn spawn_with_mail(
    smtp_url: &str,
    adjust: impl FnOnce(&mut dt_users::config::Settings),
) -> TestApp {
    spawn_with_mail_on(Backend::MariaDbRedis, smtp_url, adjust).await
}

/// A test app on `backend` whose emails go to `smtp_url` through that backend's job queue
/// (Redis, or a SQLite file in the app's data directory), with the relay, a worker and the
/// sweeps running in-process, and quick retries.
pub async fn spawn_with_mail_on(
    backend: Backend,
    smtp_url: &str,
    adjust: impl FnOnce(&mut dt_users::config::Settings),
) -> TestApp {
    let smtp_url = smtp_url.to_owned();
    TestApp::spawn_with_on(backend, move |s| {
        with_mail(s, &smtp_url);
        adjust(s);
    })
    .await
}

/// What [`spawn_with_mail`] sets, for settings built another way (a second instance): emails
/// to `smtp_url` through the job queue the settings name, the background roles in-process,
/// quick retries.
pub fn with_mail(s: &mut dt_users::config::Settings, smtp_url: &str) {
    s.smtp_url = Some(smtp_url.to_owned());
    s.run_background_in_serve = true;
    s.relay_interval_ms = 100;
    s.job_backoff_ms = 200;
    s.job_backoff_max_ms = 1_000;
    s.job_max_attempts = 40;
    s.jobs_heartbeat_secs = 1;
    s.jobs_missed_heartbeats = 2;
    s.public_url = "https://devtalk.example".into();
}
