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
        let cutoff = dt_users_domain::Timestamp::from_millis(
            now.as_millis() - i64::try_from(RETENTION_SECS * 1000).unwrap_or(0),
        );
        let tokens = store::delete_stale_email_tokens(&mut conn, cutoff).await?;
        let outbox = store::delete_dispatched(&mut conn, cutoff).await?;
        let deliveries = store::delete_old_deliveries(&mut conn, cutoff).await?;
        drop(conn);
        let purged = self
            .app
            .purge_due_accounts(now, self.app.settings.purge_batch)
            .await?;
        metrics::counter!("beat_sweeps_total").increment(1);
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        metrics::histogram!("beat_sweep_duration_seconds").record(elapsed_ms / 1000.0);
        tracing::info!(holder = %self.holder, tokens, outbox, deliveries, purged, elapsed_ms, "sweep done");
        Ok(true)
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
