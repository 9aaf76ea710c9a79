//! The `dt-users` binary run as a process of its own, as in production: started with an
//! environment, stopped with SIGTERM, its log kept for a failing test to show.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

/// A `dt-users` process; killed on drop if it is still running. Its output goes to a file,
/// shown when a test fails.
pub struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    pub fn start(args: &[&str], env: &[(&str, String)]) -> Self {
        let log = std::env::temp_dir().join(format!(
            "dt-users-process-{}.log",
            uuid::Uuid::new_v4().simple()
        ));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_dt-users"))
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("DT_USERS_LOG_FORMAT", "pretty")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Self { child, log }
    }

    /// What the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM, as an orchestrator does.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `limit`.
    pub async fn exit_within(&mut self, limit: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < limit,
                "still running {limit:?} after SIGTERM:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `done` holds, at most `limit`; fails with the process's log.
    pub async fn wait_for(&self, limit: Duration, mut done: impl FnMut() -> bool) {
        let started = Instant::now();
        while !done() {
            assert!(started.elapsed() < limit, "{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `url` answers 200.
    pub async fn wait_until_live(&self, url: &str) {
        assert!(
            answers_within(url, Duration::from_secs(30)).await,
            "{url} never answered:\n{}",
            self.log()
        );
    }
}

/// Whether `url` answers 200 within `limit` (asked every 50 ms).
pub async fn answers_within(url: &str, limit: Duration) -> bool {
    let started = Instant::now();
    while !reqwest::get(url)
        .await
        .is_ok_and(|r| r.status() == StatusCode::OK)
    {
        if started.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Registers ada@example.com (with the test password) with the service at `base`.
pub async fn register_ada(base: &str) -> StatusCode {
    reqwest::Client::new()
        .post(format!("{base}/api/v1/auth/register"))
        .json(&serde_json::json!({
            "email": "ada@example.com",
            "username": "ada",
            "password": crate::helpers::PASSWORD,
        }))
        .send()
        .await
        .unwrap()
        .status()
}
