//! The dt-users processes of one test, each with its log file; all killed when dropped, and
//! their logs shown if the test failed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The binary the image runs as its `ENTRYPOINT`.
const DT_USERS: &str = env!("CARGO_BIN_EXE_dt-users");

/// The image's health probe, `dt-users-probe` on its `PATH`.
pub const PROBE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docker/dt-users-probe");

/// One process as compose would start it: a service's arguments and environment.
pub struct Launch<'a> {
    /// `service` or `service#n` when the service runs more than once.
    pub name: String,
    pub args: &'a [String],
    pub env: &'a BTreeMap<String, String>,
}

pub struct Processes {
    /// The processes' working directory and their logs.
    pub dir: PathBuf,
    children: Vec<(String, Child)>,
    /// What the test was doing, for the report of a failure.
    pub step: String,
}

impl Processes {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "dt-users-topology-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            dir,
            children: Vec::new(),
            step: "setting up".into(),
        }
    }

    /// Starts `dt-users` with exactly the environment given, as in a container: nothing of the
    /// test's own environment reaches it.
    pub fn start(&mut self, launch: &Launch<'_>) {
        let log = std::fs::File::create(self.log_path(&launch.name)).unwrap();
        let child = Command::new(DT_USERS)
            .args(launch.args)
            .env_clear()
            .envs(launch.env)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {DT_USERS} did not start: {e}", launch.name));
        self.children.push((launch.name.clone(), child));
    }

    /// Runs a one-shot service to its end; its exit status.
    pub async fn run_to_end(&mut self, launch: &Launch<'_>, limit: Duration) -> ExitStatus {
        self.start(launch);
        let started = Instant::now();
        loop {
            let (_, child) = self.children.last_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < limit,
                "{} did not finish within {limit:?}:\n{}",
                launch.name,
                self.log_tail(&launch.name)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Panics, with its log, if the process `name` has exited.
    pub fn assert_running(&mut self, name: &str) {
        let exited = self
            .children
            .iter_mut()
            .find(|(n, _)| n == name)
            .and_then(|(_, child)| child.try_wait().unwrap());
        if let Some(status) = exited {
            panic!("{name} exited ({status}):\n{}", self.log_tail(name));
        }
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{}.log", name.replace('#', "-")))
    }

    /// The last lines of the log of `name`.
    pub fn log_tail(&self, name: &str) -> String {
        tail(&self.log_path(name), 40)
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("\nthe topology test failed during: {}", self.step);
            for (name, _) in &self.children {
                eprintln!(
                    "\n--- the end of the log of {name} ---\n{}",
                    self.log_tail(name)
                );
            }
            eprintln!("\nthe logs are kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
