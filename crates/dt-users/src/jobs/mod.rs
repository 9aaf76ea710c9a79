//! Background work: the job queue (apalis, on Redis or on a SQLite file), the outbox relay that
//! feeds it, the worker that sends emails, and the periodic sweeps.

mod beat;
mod queue;
mod relay;
mod worker;

use serde::{Deserialize, Serialize};

use crate::email::EmailIntent;

pub use beat::Beat;
pub use queue::JobQueue;
pub use relay::OutboxRelay;
pub use worker::{EmailWorker, worker_name};

/// Send one email. Delivered at least once; the worker makes that "exactly once" but for a
/// worker dying between the SMTP server's acceptance and recording it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendEmailJob {
    pub intent: EmailIntent,
}

impl SendEmailJob {
    /// The job's stable name: its queue, and its label in logs and metrics.
    pub const NAME: &'static str = "send_email";
}
