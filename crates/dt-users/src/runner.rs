//! The one loop of every polling background role (the outbox relays, beat): a round, then a
//! pause — none after a full batch, the interval after a quiet round, a doubling backoff after
//! failures — cut short by a commit that wrote outbox rows, and ended by shutdown. A role that
//! must run alone holds a [`Lease`] in the database: the runner takes it before each round
//! and hands it on when the role stops.

use std::sync::Arc;
use std::time::Duration;

use dt_users_domain::Clock;
use dt_users_store::{self as store, Db, StoreError};
use tokio::sync::watch;

/// A boxed error with its chain of sources.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a round of a background role failed.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error("database: {0}")]
    Database(#[from] StoreError),
    #[error("job queue: {0}")]
    Queue(#[source] BoxError),
    #[error("kafka: {0}")]
    Kafka(String),
    #[error(transparent)]
    Service(BoxError),
}

impl From<sqlx::Error> for RoleError {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(error.into())
    }
}

/// What a round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// It filled its batch: more is waiting, the next round starts at once.
    More,
    /// It did what there was (perhaps nothing).
    Done,
    /// Another process holds the lease; this one stands by.
    Standby,
}

/// A background role the runner drives.
pub trait Role: Send + Sync {
    /// The role's name in logs.
    const NAME: &'static str;

    /// One round of work.
    fn round(&self) -> impl Future<Output = Result<Progress, RoleError>> + Send;

    /// Called after every round, whatever its outcome (reporting gauges).
    fn after_round(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Called once when the role stops, before its lease is handed on.
    fn stopping(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// How a role is driven.
#[derive(Debug)]
pub struct Schedule {
    /// The pause after a quiet round.
    pub interval: Duration,
    /// Ends the pause early when a commit wrote outbox rows.
    pub wake: Option<OutboxWatch>,
    /// Taken before each round; a round runs only while it is held.
    pub lease: Option<Lease>,
}

/// Runs `role` until `shutdown` turns true.
pub async fn run<R: Role>(role: R, mut schedule: Schedule, mut shutdown: watch::Receiver<bool>) {
    let mut pause = Backoff::default();
    loop {
        let outcome = match &schedule.lease {
            Some(lease) => match lease.take().await {
                Ok(true) => role.round().await,
                Ok(false) => Ok(Progress::Standby),
                Err(e) => Err(e.into()),
            },
            None => role.round().await,
        };
        if let Err(e) = &outcome {
            tracing::warn!(role = R::NAME, error = %e, "round failed; will retry");
        }
        role.after_round().await;
        let wait = pause.after(
            outcome.as_ref().map(|p| *p == Progress::More),
            schedule.interval,
        );
        let failing = pause.failing();
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            () = wake(&mut schedule.wake), if !failing => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
    role.stopping().await;
    if let Some(lease) = &schedule.lease {
        lease.release().await;
    }
    tracing::info!(role = R::NAME, "stopped");
}

async fn wake(watch: &mut Option<OutboxWatch>) {
    match watch {
        Some(watch) => watch.committed().await,
        None => std::future::pending().await,
    }
}

/// How long a polling loop waits after a round: not at all after a full batch (more is
/// waiting), the interval after a good round, and after failures a pause that doubles from
/// 500 ms up to 30 s.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// `outcome`: whether the round filled its batch, or that it failed.
    pub fn after<E>(&mut self, outcome: Result<bool, E>, interval: Duration) -> Duration {
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
    pub fn failing(&self) -> bool {
        self.failures > 0
    }
}

/// Tells the relays that a commit wrote outbox rows, so they hand them on at once instead of
/// at their next poll. Every subscriber sees every signal (several may come as one).
#[derive(Debug, Clone)]
pub struct OutboxSignal(Arc<watch::Sender<u64>>);

impl Default for OutboxSignal {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(0)))
    }
}

impl OutboxSignal {
    pub fn committed(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn subscribe(&self) -> OutboxWatch {
        OutboxWatch(self.0.subscribe())
    }
}

/// One subscriber's view of an [`OutboxSignal`].
#[derive(Debug)]
pub struct OutboxWatch(watch::Receiver<u64>);

impl OutboxWatch {
    /// Resolves at the next commit after the last one seen.
    pub async fn committed(&mut self) {
        if self.0.changed().await.is_err() {
            // No committer is left in this process: only the poll interval wakes the role.
            std::future::pending::<()>().await;
        }
    }
}

/// A name unique to this process (`role@host-pid-random`): a lease's holder, a worker's name
/// in the job queue.
pub fn process_name(role: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let suffix = suffix.get(..8).unwrap_or(&suffix);
    format!("{role}@{host}-{}-{suffix}", std::process::id())
}

/// A lease in the database that lets one process of many do a role's work at a time; another
/// takes over once the holder stops renewing it for `ttl`.
#[derive(Debug, Clone)]
pub struct Lease {
    db: Db,
    clock: Arc<dyn Clock>,
    name: &'static str,
    holder: String,
    ttl: Duration,
}

impl Lease {
    /// A lease named `name`, held under this process's name for `role`.
    pub fn new(
        db: Db,
        clock: Arc<dyn Clock>,
        name: &'static str,
        role: &str,
        ttl: Duration,
    ) -> Self {
        Self {
            db,
            clock,
            name,
            holder: process_name(role),
            ttl,
        }
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Takes or renews the lease; true while this process holds it.
    pub async fn take(&self) -> Result<bool, StoreError> {
        let mut conn = self.db.pool().acquire().await?;
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        store::acquire_lease(&mut conn, self.name, &self.holder, self.clock.now(), ttl_ms).await
    }

    /// Hands the lease on at once instead of after it runs out.
    pub async fn release(&self) {
        let released = match self.db.pool().acquire().await {
            Ok(mut conn) => store::release_lease(&mut conn, self.name, &self.holder).await,
            Err(e) => Err(e.into()),
        };
        if let Err(e) = released {
            tracing::warn!(lease = self.name, error = %e, "lease not given up; it runs out instead");
        }
    }
}
