use std::sync::Arc;
use std::time::Duration;

use dt_users_store as store;
use tokio::sync::watch;

use crate::service::{App, ServiceError};

/// Periodic sweeps. Several `beat` processes may run; a lease in the database makes exactly
/// one of them do the work, and another takes over within three intervals if it dies.
#[derive(Debug, Clone)]
pub struct Beat {
    app: Arc<App>,
    interval: Duration,
    holder: String,
}

/// How long finished records are kept before the sweep removes them.
const RETENTION_SECS: u64 = 7 * 86_400;

impl Beat {
    pub fn new(app: Arc<App>, interval: Duration) -> Self {
        let holder = super::worker_name().replacen("email@", "beat@", 1);
        Self {
            app,
            interval,
            holder,
        }
    }

    /// One tick: takes (or renews) the lease, and sweeps if it holds it. True when it swept.
    pub async fn tick(&self) -> Result<bool, ServiceError> {
        let started = std::time::Instant::now();
        let now = self.app.now();
        let ttl_ms = i64::try_from(self.interval.as_millis().saturating_mul(3)).unwrap_or(i64::MAX);
        let mut conn = self.app.db.pool().acquire().await?;
        if !store::acquire_lease(&mut conn, "beat", &self.holder, now, ttl_ms).await? {
            return Ok(false);
        }
        let cutoff = now.minus_secs(RETENTION_SECS);
        let tokens = store::delete_stale_email_tokens(&mut conn, cutoff).await?;
        let outbox = store::delete_dispatched(&mut conn, cutoff).await?;
        let deliveries = store::delete_old_deliveries(&mut conn, cutoff).await?;
        let commands = store::delete_old_commands(
            &mut conn,
            now.minus_secs(self.app.settings.command_retention),
        )
        .await?;
        drop(conn);
        let deferred = self.app.move_deferred_events().await?;
        let mail_files = self.sweep_mail_files(now).await;
        let purged = self
            .app
            .purge_due_accounts(now, self.app.settings.purge_batch)
            .await?;
        metrics::counter!("beat_sweeps_total").increment(1);
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        metrics::histogram!("beat_sweep_duration_seconds").record(elapsed_ms / 1000.0);
        tracing::info!(holder = %self.holder, tokens, outbox, deliveries, commands, deferred, mail_files, purged, elapsed_ms, "sweep done");
        Ok(true)
    }

    /// Removes the embedded mailer's `.eml` files once their links have expired: each holds an
    /// address and, while it lives, a working link. Returns how many were removed.
    async fn sweep_mail_files(&self, now: dt_users_domain::Timestamp) -> usize {
        let settings = &self.app.settings;
        if settings.smtp_url().is_some() {
            return 0;
        }
        let dir = settings.data_dir.join("mail");
        let ttl = Duration::from_secs(settings.email_token_ttl);
        let Ok(mut entries) = tokio::fs::read_dir(&dir).await else {
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

    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(holder = %self.holder, interval_s = self.interval.as_secs(), "beat started");
        loop {
            if let Err(e) = self.tick().await {
                tracing::warn!(error = %e, "sweep failed; will retry at the next tick");
            }
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                () = tokio::time::sleep(self.interval) => {}
            }
        }
        // Stopping cleanly hands the lease on at once instead of after it runs out.
        if let Ok(mut conn) = self.app.db.pool().acquire().await {
            let _ = store::release_lease(&mut conn, "beat", &self.holder).await;
        }
    }
}
