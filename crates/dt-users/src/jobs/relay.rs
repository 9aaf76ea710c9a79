use std::sync::Arc;
use std::time::Duration;

use dt_users_domain::Clock;
use dt_users_store::{self as store, Db, OutboxKind};
use tokio::sync::Notify;

use super::{JobQueue, SendEmailJob};

/// Hands committed email intents from the outbox to the job queue, in outbox order, at least
/// once: a row is marked dispatched only after its job is safely queued.
#[derive(Debug, Clone)]
pub struct OutboxRelay {
    db: Db,
    queue: JobQueue,
    clock: Arc<dyn Clock>,
    notify: Arc<Notify>,
    interval: Duration,
}

const BATCH: i64 = 100;

impl OutboxRelay {
    pub fn new(
        db: Db,
        queue: JobQueue,
        clock: Arc<dyn Clock>,
        notify: Arc<Notify>,
        interval: Duration,
    ) -> Self {
        Self {
            db,
            queue,
            clock,
            notify,
            interval,
        }
    }

    /// Dispatches what is due; returns how many rows were handed on.
    pub async fn run_once(&self) -> Result<usize, String> {
        let mut conn = self.db.pool().acquire().await.map_err(|e| e.to_string())?;
        let now = self.clock.now();
        let rows = store::pending_outbox(&mut conn, OutboxKind::Email, now, BATCH)
            .await
            .map_err(|e| e.to_string())?;
        let mut dispatched = 0;
        for row in rows {
            tracing::debug!(outbox_id = %row.id, attempts = row.attempts, "queueing email job");
            if let Err(e) = self.queue.push(SendEmailJob { intent_id: row.id }).await {
                let wait = 1_u64 << row.attempts.clamp(0, 6);
                store::postpone(&mut conn, row.seq, self.clock.now().plus_secs(wait), &e)
                    .await
                    .map_err(|e| e.to_string())?;
                metrics::counter!("outbox_dispatch_failures_total", "kind" => "email").increment(1);
                return Err(format!("job queue: {e}"));
            }
            store::mark_dispatched(&mut conn, row.seq, self.clock.now())
                .await
                .map_err(|e| e.to_string())?;
            tracing::debug!(outbox_id = %row.id, "email job queued");
            dispatched += 1;
        }
        if dispatched > 0 {
            metrics::counter!("outbox_dispatched_total", "kind" => "email")
                .increment(dispatched as u64);
        }
        Ok(dispatched)
    }

    /// Runs until `shutdown` resolves: right after each commit that wrote outbox rows, and at
    /// least every `interval`; after a failure it backs off up to 30 s.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut pause = PollPause::default();
        loop {
            let outcome = self.run_once().await;
            if let Err(e) = &outcome {
                tracing::warn!(error = %e, "outbox relay could not dispatch; will retry");
            }
            let wait = pause.after(outcome.map(|n| n as i64 == BATCH), self.interval);
            tokio::select! {
                () = &mut shutdown => return,
                () = self.notify.notified(), if !pause.failing() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// How long a polling loop waits after a round: not at all after a full batch (more is
/// waiting), the interval after a good round, and after failures a pause that doubles from
/// 500 ms up to 30 s.
#[derive(Debug, Default)]
pub(crate) struct PollPause {
    failures: u32,
}

impl PollPause {
    /// `outcome`: whether the round filled its batch, or that it failed.
    pub(crate) fn after<E>(&mut self, outcome: Result<bool, E>, interval: Duration) -> Duration {
        match outcome {
            Ok(true) => Duration::ZERO,
            Ok(false) => {
                self.failures = 0;
                interval
            }
            Err(_) => {
                self.failures = self.failures.saturating_add(1);
                Duration::from_millis(250 * (1_u64 << self.failures.min(7)))
                    .min(Duration::from_secs(30))
            }
        }
    }

    /// True while the last rounds failed (the loop then waits out its pause).
    pub(crate) fn failing(&self) -> bool {
        self.failures > 0
    }
}
