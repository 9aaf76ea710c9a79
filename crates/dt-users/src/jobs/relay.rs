use std::sync::Arc;

use dt_users_domain::Clock;
use dt_users_store::{self as store, Db, OutboxKind};

use super::{JobQueue, SendEmailJob};
use crate::runner::{Progress, Role, RoleError};

/// Hands committed email intents from the outbox to the job queue, in outbox order, at least
/// once: a row is marked dispatched only after its job is safely queued. Driven by
/// [`crate::runner::run`]; several may run side by side (a job queued twice is sent once).
#[derive(Debug, Clone)]
pub struct OutboxRelay {
    db: Db,
    queue: JobQueue,
    clock: Arc<dyn Clock>,
}

const BATCH: usize = 100;

impl OutboxRelay {
    pub fn new(db: Db, queue: JobQueue, clock: Arc<dyn Clock>) -> Self {
        Self { db, queue, clock }
    }

    /// Dispatches what is due; returns how many rows were handed on.
    pub async fn run_once(&self) -> Result<usize, RoleError> {
        let mut conn = self.db.pool().acquire().await?;
        let now = self.clock.now();
        let rows = store::pending_outbox(&mut conn, OutboxKind::Email, now, BATCH as i64).await?;
        let mut dispatched = 0;
        for row in rows {
            tracing::debug!(outbox_id = %row.id, attempts = row.attempts, "queueing email job");
            if let Err(e) = self.queue.push(SendEmailJob { intent_id: row.id }).await {
                let wait = 1_u64 << row.attempts.clamp(0, 6);
                store::postpone(
                    &mut conn,
                    row.seq,
                    self.clock.now().plus_secs(wait),
                    &e.to_string(),
                )
                .await?;
                metrics::counter!("outbox_dispatch_failures_total", "kind" => "email").increment(1);
                return Err(RoleError::Queue(Box::new(e)));
            }
            store::mark_dispatched(&mut conn, row.seq, self.clock.now()).await?;
            tracing::debug!(outbox_id = %row.id, "email job queued");
            dispatched += 1;
        }
        if dispatched > 0 {
            metrics::counter!("outbox_dispatched_total", "kind" => "email")
                .increment(dispatched as u64);
        }
        Ok(dispatched)
    }
}

impl Role for OutboxRelay {
    const NAME: &'static str = "email relay";

    async fn round(&self) -> Result<Progress, RoleError> {
        let dispatched = self.run_once().await?;
        Ok(if dispatched == BATCH {
            Progress::More
        } else {
            Progress::Done
        })
    }
}
