use std::sync::Arc;
use std::time::Duration;

use dt_users_domain::Clock;
use dt_users_store::{self as store, Db, OutboxKind};
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use super::client::{KafkaConfig, base_config};
use crate::config::KafkaSettings;
use crate::runner::{Lease, Progress, Role, RoleError};

/// Publishes the outbox's events to Kafka, at least once and in `seq` (commit) order.
///
/// Several relays may run: a lease in the database (`event-relay`) lets exactly one publish at
/// a time, which keeps the order without coordinating row by row; the others stand by and take
/// over when it stops, fails a batch, or lets its lease run out. Driven by
/// [`crate::runner::run`] with [`EventRelay::lease`].
#[derive(Clone)]
pub struct EventRelay {
    db: Db,
    clock: Arc<dyn Clock>,
    producer: FutureProducer,
    topic: String,
    lease: Lease,
}

impl std::fmt::Debug for EventRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRelay")
            .field("topic", &self.topic)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

const BATCH: usize = 500;
const LEASE: &str = "event-relay";
/// What librdkafka's own bounds leave open: it looks for timed-out messages and requests once
/// a second, and still gives a request whose first message has already expired 100 ms.
const LEASE_SLACK_MS: u64 = 2_000;
/// librdkafka's upper limit for `request.timeout.ms`.
const MAX_REQUEST_TIMEOUT_MS: u64 = 900_000;

/// How long the broker may keep working on a produce request it received.
///
/// librdkafka bounds the client side by itself: an in-flight produce request times out with
/// the remaining `message.timeout.ms` of its first message (`socket.timeout.ms` is only a
/// further cap), so every delivery report arrives within `message.timeout.ms` of the send.
/// But a request that reached the broker is not withdrawn when the client gives up on it: the
/// leader appends the records and then waits up to `request.timeout.ms` (librdkafka's default
/// 30 s, three times our default message timeout) for the replicas before it answers. A batch
/// the relay has written off can therefore still become visible that long afterwards. Bounding
/// it by the message timeout keeps the whole life of a send within a known horizon, from which
/// the lease is derived.
fn request_timeout_ms(message_timeout_ms: u64) -> u64 {
    message_timeout_ms.min(MAX_REQUEST_TIMEOUT_MS)
}

/// The relay lease: longer than anything a batch sent under it can still do — every delivery
/// report within `message.timeout.ms` of the send (the lease is renewed just before it), a
/// request sent at the last moment kept by the broker for up to `request.timeout.ms`, plus
/// librdkafka's timer slack. A relay that stops renewing (hung, cut off from the database)
/// therefore cannot have anything in flight any more when another relay takes the lease over.
pub fn relay_lease(kafka: &KafkaSettings) -> Duration {
    let message_timeout = message_timeout_ms(kafka);
    Duration::from_millis(
        message_timeout
            .saturating_add(request_timeout_ms(message_timeout))
            .saturating_add(LEASE_SLACK_MS),
    )
}

fn message_timeout_ms(kafka: &KafkaSettings) -> u64 {
    u64::try_from(kafka.message_timeout.as_millis()).unwrap_or(u64::MAX)
}

/// The producer settings: `acks=all`; idempotence as configured; without idempotence, one
/// request in flight per connection so that retries cannot reorder; a bounded broker-side
/// request timeout (see [`request_timeout_ms`]); no topic created by producing to it.
pub fn producer_config(kafka: &KafkaSettings) -> Result<KafkaConfig, String> {
    let message_timeout = message_timeout_ms(kafka);
    let mut config = base_config(kafka)?;
    config
        .set("acks", "all")
        .set_from(
            "enable.idempotence",
            if kafka.idempotence { "true" } else { "false" },
            "DT_USERS_KAFKA_IDEMPOTENCE",
        )
        .set_from(
            "message.timeout.ms",
            message_timeout.to_string(),
            "DT_USERS_KAFKA_MESSAGE_TIMEOUT_MS",
        )
        .set(
            "request.timeout.ms",
            request_timeout_ms(message_timeout).to_string(),
        )
        .set("allow.auto.create.topics", "false")
        .set_default("linger.ms", &["queue.buffering.max.ms"], "5");
    if !kafka.idempotence {
        config.set("max.in.flight.requests.per.connection", "1");
    }
    Ok(config)
}

/// A failed delivery as the operator should read it.
fn delivery_error(error: &KafkaError) -> String {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition) => {
            format!("{error} (create the topics with `dt-users kafka create-topics`)")
        }
        _ => error.to_string(),
    }
}

impl EventRelay {
    pub fn new(kafka: &KafkaSettings, db: Db, clock: Arc<dyn Clock>) -> Result<Self, String> {
        let producer: FutureProducer = producer_config(kafka)?.create()?;
        let lease = Lease::new(
            db.clone(),
            clock.clone(),
            LEASE,
            "relay",
            relay_lease(kafka),
        );
        Ok(Self {
            topic: kafka.events_topic.clone(),
            db,
            clock,
            producer,
            lease,
        })
    }

    /// The lease this relay publishes under: the runner takes it before each round.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The name this relay holds the lease under.
    pub fn holder(&self) -> &str {
        self.lease.holder()
    }

    /// Publishes what is due, under a lease already taken.
    async fn publish_due(&self) -> Result<usize, RoleError> {
        let mut conn = self.db.pool().acquire().await?;
        let rows =
            store::pending_outbox(&mut conn, OutboxKind::Event, self.clock.now(), BATCH as i64)
                .await?;
        drop(conn);
        if rows.is_empty() {
            return Ok(0);
        }
        // Renewed just before the batch is handed over, so the lease covers its deliveries from
        // their start however long reading the rows took.
        if !self.lease.take().await? {
            return Ok(0);
        }
        // Hand the whole batch to the producer in order, then wait for each delivery in order:
        // only an unbroken prefix of delivered events is marked, so an event is never marked
        // while an earlier one of the batch may still be missing.
        let mut deliveries = Vec::with_capacity(rows.len());
        for row in &rows {
            let key = row.user_id.to_string();
            let payload = super::cloud_event(row).to_string();
            let record = FutureRecord::to(&self.topic).key(&key).payload(&payload);
            deliveries.push(
                self.producer
                    .send_result(record)
                    .map_err(|(e, _)| delivery_error(&e)),
            );
        }
        let outcomes = self.await_deliveries(deliveries).await;
        let mut published = Vec::new();
        let mut failure = None;
        for (row, outcome) in rows.iter().zip(outcomes) {
            match outcome {
                Ok(()) if failure.is_none() => published.push(row.seq),
                Ok(()) => {}
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        let mut conn = self.db.pool().acquire().await?;
        store::mark_dispatched_many(&mut conn, &published, self.clock.now()).await?;
        drop(conn);
        metrics::counter!("outbox_dispatched_total", "kind" => "event")
            .increment(published.len() as u64);
        if let Some(error) = failure {
            metrics::counter!("outbox_dispatch_failures_total", "kind" => "event").increment(1);
            // Every delivery of the batch has resolved (each was awaited above): nothing of
            // this relay is in flight any more, so a healthier relay may take over at once
            // without publishing next to it.
            self.lease.release().await;
            return Err(RoleError::Kafka(error));
        }
        Ok(published.len())
    }

    /// Waits for every delivery of a batch, in order, renewing the lease every third of its
    /// length meanwhile: a broker that is slow but not failing keeps the batch going past
    /// one lease length without another relay starting to publish the same rows.
    async fn await_deliveries(
        &self,
        deliveries: Vec<Result<DeliveryFuture, String>>,
    ) -> Vec<Result<(), String>> {
        let all = async move {
            let mut outcomes = Vec::with_capacity(deliveries.len());
            for delivery in deliveries {
                outcomes.push(match delivery {
                    Ok(future) => match future.await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err((e, _))) => Err(delivery_error(&e)),
                        Err(_) => Err("the producer was dropped".to_owned()),
                    },
                    Err(e) => Err(e),
                });
            }
            outcomes
        };
        let mut all = std::pin::pin!(all);
        let every = (self.lease.ttl() / 3).max(Duration::from_millis(10));
        let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                outcomes = &mut all => return outcomes,
                _ = renew.tick() => self.renew_during_batch().await,
            }
        }
    }

    async fn renew_during_batch(&self) {
        match self.lease.take().await {
            Ok(true) => {}
            Ok(false) => tracing::error!(
                holder = %self.lease.holder(),
                "event relay lost its lease while a batch was in flight; another relay may publish the same events"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                "event relay could not renew its lease mid-batch; the lease still outlasts the batch's deliveries"
            ),
        }
    }

    /// Outbox backlog and the age of its oldest event, as gauges.
    async fn report_backlog(&self) {
        let Ok(mut conn) = self.db.pool().acquire().await else {
            return;
        };
        if let Ok((count, oldest)) = store::backlog(&mut conn, OutboxKind::Event).await {
            metrics::gauge!("outbox_backlog", "kind" => "event").set(count as f64);
            let age = oldest.map_or(0.0, |t| {
                (self.clock.now().as_millis() - t.as_millis()).max(0) as f64 / 1000.0
            });
            metrics::gauge!("outbox_oldest_age_seconds", "kind" => "event").set(age);
        }
    }
}

impl Role for EventRelay {
    const NAME: &'static str = "event relay";

    async fn round(&self) -> Result<Progress, RoleError> {
        let published = self.publish_due().await?;
        Ok(if published == BATCH {
            Progress::More
        } else {
            Progress::Done
        })
    }

    async fn after_round(&self) {
        self.report_backlog().await;
    }

    async fn stopping(&self) {
        let _ = self.producer.flush(Duration::from_secs(5));
        tracing::info!(holder = %self.lease.holder(), "event relay stopped");
    }
}
