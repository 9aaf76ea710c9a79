use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dt_users_domain::{Clock, Timestamp};
use tokio::sync::watch;

use crate::runner::{Lease, Progress, Role, RoleError, Schedule};

/// What beat sweeps: given to it, so that it knows nothing of how (the service's sweep).
pub trait Sweeps: Send + Sync {
    /// One sweep as of `now`; each count by name, for the log.
    fn sweep(
        &self,
        now: Timestamp,
    ) -> impl Future<Output = Result<Vec<(&'static str, u64)>, RoleError>> + Send;
}

/// The embedded mailer's files, removed once their links have expired.
#[derive(Debug, Clone)]
pub struct MailFiles {
    pub dir: PathBuf,
    pub link_ttl: Duration,
}

/// Periodic sweeps. Several `beat` processes may run; a lease in the database makes exactly
/// one of them do the work, and another takes over within three intervals if it dies.
#[derive(Debug, Clone)]
pub struct Beat<S> {
    sweeps: S,
    clock: Arc<dyn Clock>,
    lease: Lease,
    interval: Duration,
    mail_files: Option<MailFiles>,
}

impl<S: Sweeps> Beat<S> {
    pub fn new(
        sweeps: S,
        db: dt_users_store::Db,
        clock: Arc<dyn Clock>,
        interval: Duration,
        mail_files: Option<MailFiles>,
    ) -> Self {
        let lease = Lease::new(
            db,
            clock.clone(),
            "beat",
            "beat",
            interval.saturating_mul(3),
        );
        Self {
            sweeps,
            clock,
            lease,
            interval,
            mail_files,
        }
    }

    /// One tick: takes (or renews) the lease, and sweeps if it holds it. True when it swept.
    pub async fn tick(&self) -> Result<bool, RoleError> {
        if !self.lease.take().await? {
            return Ok(false);
        }
        self.sweep().await?;
        Ok(true)
    }

    async fn sweep(&self) -> Result<(), RoleError> {
        let started = std::time::Instant::now();
        let now = self.clock.now();
        let counts = self.sweeps.sweep(now).await?;
        let mail_files = self.sweep_mail_files(now).await;
        metrics::counter!("beat_sweeps_total").increment(1);
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        metrics::histogram!("beat_sweep_duration_seconds").record(elapsed_ms / 1000.0);
        let counts = counts
            .iter()
            .map(|(name, n)| format!("{name}={n}"))
            .collect::<Vec<_>>()
            .join(" ");
        tracing::info!(holder = %self.lease.holder(), %counts, mail_files, elapsed_ms, "sweep done");
        Ok(())
    }

    /// Removes the embedded mailer's `.eml` files once their links have expired: each holds an
    /// address and, while it lives, a working link. Returns how many were removed.
    async fn sweep_mail_files(&self, now: dt_users_domain::Timestamp) -> u64 {
        let Some(MailFiles { dir, link_ttl: ttl }) = &self.mail_files else {
            return 0;
        };
        let ttl = *ttl;
        let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
            return 0;
        };
        let now = std::time::UNIX_EPOCH
            + Duration::from_millis(u64::try_from(now.as_millis()).unwrap_or(0));
        let mut removed = 0;
        while let Ok(Some(entry)) = entries.next_entry().await {
            let path = entry.path();
            if path.extension().is_none_or(|ext| ext != "eml") {
                continue;
            }
            let expired = entry
                .metadata()
                .await
                .and_then(|m| m.modified())
                .is_ok_and(|written| written + ttl < now);
            if expired {
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => removed += 1,
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "expired mail file not removed");
                    }
                }
            }
        }
        removed
    }

    /// Sweeps every interval until `shutdown` turns true, then hands the lease on.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        tracing::info!(holder = %self.lease.holder(), interval_s = self.interval.as_secs(), "beat started");
        let schedule = Schedule {
            interval: self.interval,
            wake: None,
            lease: Some(self.lease.clone()),
        };
        crate::runner::run(self, schedule, shutdown).await;
    }
}

impl<S: Sweeps> Role for Beat<S> {
    const NAME: &'static str = "beat";

    async fn round(&self) -> Result<Progress, RoleError> {
        self.sweep().await?;
        Ok(Progress::Done)
    }
}
