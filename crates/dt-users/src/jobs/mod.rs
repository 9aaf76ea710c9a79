//! Background work: the job queue (apalis, on Redis or on a SQLite file), the outbox relay that
//! feeds it, the worker that sends emails, and the periodic sweeps.

mod beat;
mod queue;
mod relay;
mod worker;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use beat::{Beat, MailFiles, Sweeps};
pub use queue::{JobQueue, QueueError};
pub use relay::OutboxRelay;
pub use worker::{EmailWorker, worker_name};

/// Send the email of one outbox intent. Delivered at least once; the worker makes that
/// "exactly once" but for a worker dying between the SMTP server's acceptance and recording
/// it. The job names the intent only: the queue holds no personal data (the address and name
/// stay in the outbox row, which erasure removes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendEmailJob {
    pub intent_id: Uuid,
}

impl SendEmailJob {
    /// The job's stable name: its queue, and its label in logs and metrics.
    pub const NAME: &'static str = "send_email";
}
