//! Readiness: whether each dependency answers, measured at most once per [`REPORT_TTL`]
//! however often it is asked, so that probes — or anyone else calling `/health/ready` — cost
//! the dependencies nothing more. Kafka is asked by a thread of its own every
//! [`KAFKA_PROBE_INTERVAL`]: its client blocks, and must not take a thread of the pool that
//! password hashing needs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use dt_users_domain::Clock;
use dt_users_store::{Db, OutboxKind};
use secrecy::{ExposeSecret, SecretString};

use crate::events::KafkaProbe;
use crate::security::rate_limit::{Quota, RateLimiter};
use crate::sessions::SessionStore;

/// How long one measurement answers every readiness request.
pub const REPORT_TTL: Duration = Duration::from_secs(2);
/// How long one dependency may take to answer before it counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the Kafka thread asks the cluster for its metadata.
pub const KAFKA_PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// One dependency's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub backend: &'static str,
    /// Why it is down; `None` when it is up.
    pub error: Option<String>,
}

/// Rows of one kind waiting in the outbox, and the age of the oldest, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backlog {
    pub pending: i64,
    pub oldest_age_seconds: f64,
}

/// One measurement of every dependency.
#[derive(Debug, Clone)]
pub struct Report {
    pub checks: BTreeMap<&'static str, CheckResult>,
    /// Informational: side effects waiting (they never make the check fail).
    pub outbox: Option<BTreeMap<&'static str, Backlog>>,
}

impl Report {
    pub fn all_up(&self) -> bool {
        self.checks.values().all(|c| c.error.is_none())
    }
}

/// The latest answer of the Kafka thread.
type KafkaStatus = Arc<Mutex<Option<Result<(), String>>>>;

/// Readiness state of one process: the cached report, the Kafka thread's latest answer, and
/// the limit on callers that do not present the health token.
pub struct Readiness {
    db: Db,
    sessions: SessionStore,
    clock: Arc<dyn Clock>,
    kafka: Option<KafkaStatus>,
    cached: tokio::sync::Mutex<Option<(Instant, Arc<Report>)>>,
    limit: Option<(RateLimiter, Quota)>,
    token: Option<SecretString>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("kafka", &self.kafka.is_some())
            .finish_non_exhaustive()
    }
}

impl Readiness {
    /// `kafka`: a probe when Kafka is configured, handed to a thread that asks it until this
    /// value is dropped. `limit`: the quota of callers without `token` and the keys the
    /// limiter may hold (in process memory: it must keep answering while Redis is down);
    /// `None` when rate limits are off.
    pub fn new(
        (db, sessions, clock): (Db, SessionStore, Arc<dyn Clock>),
        kafka: Option<KafkaProbe>,
        limit: Option<(Quota, usize)>,
        token: Option<SecretString>,
    ) -> Self {
        Self {
            db,
            sessions,
            clock,
            kafka: kafka.map(watch_kafka),
            cached: tokio::sync::Mutex::new(None),
            limit: limit.map(|(quota, max_keys)| (RateLimiter::memory(max_keys), quota)),
            token,
        }
    }

    /// True when `presented` (a bearer token) is the configured health token.
    pub fn authorizes(&self, presented: Option<&str>) -> bool {
        match (&self.token, presented) {
            (Some(token), Some(presented)) => aws_lc_rs::constant_time::verify_slices_are_equal(
                token.expose_secret().as_bytes(),
                presented.as_bytes(),
            )
            .is_ok(),
            _ => false,
        }
    }

    /// Counts one readiness request of a caller without the token, under its address key.
    pub async fn admit(&self, client_key: &str, now: dt_users_domain::Timestamp) -> bool {
        let Some((limiter, quota)) = &self.limit else {
            return true;
        };
        limiter
            .check(client_key, *quota, now, true)
            .await
            .is_ok_and(|d| d.allowed)
    }

    /// The latest measurement, taken now if the cached one is older than [`REPORT_TTL`].
    /// Concurrent callers wait for one measurement rather than each taking their own.
    pub async fn report(&self) -> Arc<Report> {
        let mut cached = self.cached.lock().await;
        if let Some((at, report)) = cached.as_ref()
            && at.elapsed() < REPORT_TTL
        {
            return report.clone();
        }
        let report = Arc::new(self.measure().await);
        *cached = Some((Instant::now(), report.clone()));
        report
    }

    async fn measure(&self) -> Report {
        let (database, sessions) =
            tokio::join!(within(self.db.ping()), within(self.sessions.ping()));
        let mut checks = BTreeMap::new();
        checks.insert(
            "database",
            CheckResult {
                backend: self.db.dialect().name(),
                error: database.err(),
            },
        );
        checks.insert(
            "sessions",
            CheckResult {
                backend: self.sessions.backend(),
                error: sessions.err(),
            },
        );
        if let Some(kafka) = &self.kafka {
            let status = kafka
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
                .unwrap_or_else(|| Err("not checked yet".to_owned()));
            checks.insert(
                "kafka",
                CheckResult {
                    backend: "kafka",
                    error: status.err(),
                },
            );
        }
        let outbox =
            tokio::time::timeout(CHECK_TIMEOUT, outbox_backlog(&self.db, self.clock.now()))
                .await
                .ok()
                .flatten();
        Report { checks, outbox }
    }
}

/// The outcome of one check, or "down" if it takes longer than [`CHECK_TIMEOUT`].
async fn within<E: std::fmt::Display>(
    check: impl Future<Output = Result<(), E>>,
) -> Result<(), String> {
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(outcome) => outcome.map_err(|e| e.to_string()),
        Err(_) => Err("no answer in time".to_owned()),
    }
}

async fn outbox_backlog(
    db: &Db,
    now: dt_users_domain::Timestamp,
) -> Option<BTreeMap<&'static str, Backlog>> {
    let mut conn = db.pool().acquire().await.ok()?;
    let mut backlog = BTreeMap::new();
    for (name, kind) in [("emails", OutboxKind::Email), ("events", OutboxKind::Event)] {
        let (pending, oldest) = dt_users_store::backlog(&mut conn, kind).await.ok()?;
        let oldest_age_seconds = oldest.map_or(0.0, |t| {
            (now.as_millis() - t.as_millis()).max(0) as f64 / 1000.0
        });
        backlog.insert(
            name,
            Backlog {
                pending,
                oldest_age_seconds,
            },
        );
    }
    Some(backlog)
}

/// Starts the thread that asks Kafka for its metadata every [`KAFKA_PROBE_INTERVAL`]; it ends
/// once the returned status is dropped.
fn watch_kafka(probe: KafkaProbe) -> KafkaStatus {
    let status: KafkaStatus = Arc::new(Mutex::new(None));
    let weak: Weak<Mutex<Option<Result<(), String>>>> = Arc::downgrade(&status);
    let started = std::thread::Builder::new()
        .name("kafka-probe".into())
        .spawn(move || {
            loop {
                let answer = probe.check(CHECK_TIMEOUT);
                let Some(status) = weak.upgrade() else { break };
                *status
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(answer);
                drop(status);
                std::thread::sleep(KAFKA_PROBE_INTERVAL);
            }
        });
    if let Err(e) = started {
        tracing::error!(error = %e, "the Kafka readiness thread did not start");
        *status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(Err("not checked: the probe thread did not start".to_owned()));
    }
    status
}
