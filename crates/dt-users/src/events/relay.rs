use std::sync::Arc;
use std::time::Duration;

use dt_users_store::{self as store, OutboxKind};
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::watch;

use super::client::{KafkaConfig, base_config};
use crate::config::Settings;
use crate::jobs::PollPause;
use crate::service::{App, ServiceError};

/// Publishes the outbox's events to Kafka, at least once and in `seq` (commit) order.
///
/// Several relays may run: a lease in the database (`event-relay`) lets exactly one publish at
/// a time, which keeps the order without coordinating row by row; the others stand by and take
/// over when it stops, fails a batch, or lets its lease run out.
#[derive(Clone)]
pub struct EventRelay {
    app: Arc<App>,
    producer: FutureProducer,
    topic: String,
    holder: String,
    interval: Duration,
    lease: Duration,
}

impl std::fmt::Debug for EventRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRelay")
            .field("topic", &self.topic)
            .field("holder", &self.holder)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

const BATCH: i64 = 500;
const LEASE: &str = "event-relay";
/// What librdkafka's own bounds leave open: it looks for timed-out messages and requests once
/// a second, and still gives a request whose first message has already expired 100 ms.
const LEASE_SLACK_MS: u64 = 2_000;
/// librdkafka's upper limit for `request.timeout.ms`.
const MAX_REQUEST_TIMEOUT_MS: u64 = 900_000;

fn message_timeout_ms(settings: &Settings) -> Result<u64, String> {
    match settings.kafka_message_timeout_ms {
        0 => Err(
            "DT_USERS_KAFKA_MESSAGE_TIMEOUT_MS: must be at least 1 (librdkafka reads 0 as \
                  \"for ever\", and a batch that never ends would hold the relay lease for ever)"
                .into(),
        ),
        ms => Ok(ms),
    }
}

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
pub fn relay_lease(settings: &Settings) -> Result<Duration, String> {
    let message_timeout = message_timeout_ms(settings)?;
    Ok(Duration::from_millis(
        message_timeout
            .saturating_add(request_timeout_ms(message_timeout))
            .saturating_add(LEASE_SLACK_MS),
    ))
}

/// The producer settings: `acks=all`; idempotence as configured; without idempotence, one
/// request in flight per connection so that retries cannot reorder; a bounded broker-side
/// request timeout (see [`request_timeout_ms`]); no topic created by producing to it.
pub fn producer_config(settings: &Settings) -> Result<KafkaConfig, String> {
    let message_timeout = message_timeout_ms(settings)?;
    let mut config = base_config(settings)?;
    config
        .set("acks", "all")
        .set_from(
            "enable.idempotence",
            if settings.kafka_idempotence {
                "true"
            } else {
                "false"
            },
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
    if !settings.kafka_idempotence {
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
    pub fn new(app: Arc<App>) -> Result<Self, String> {
        let producer: FutureProducer = producer_config(&app.settings)?.create()?;
        let holder = crate::jobs::worker_name().replacen("email@", "relay@", 1);
        Ok(Self {
            topic: app.settings.kafka_events_topic.clone(),
            interval: Duration::from_millis(app.settings.relay_interval_ms.max(10)),
            lease: relay_lease(&app.settings)?,
            app,
            producer,
            holder,
        })
    }

    /// The name this relay holds the lease under.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX)
    }

    async fn take_lease(&self, conn: &mut sqlx::AnyConnection) -> Result<bool, ServiceError> {
        Ok(
            store::acquire_lease(conn, LEASE, &self.holder, self.app.now(), self.lease_ms())
                .await?,
        )
    }

    /// Publishes what is due if this relay holds the lease; returns how many events.
    pub async fn run_once(&self) -> Result<usize, ServiceError> {
        let mut conn = self.app.db.pool().acquire().await?;
        if !self.take_lease(&mut conn).await? {
            return Ok(0);
        }
        let rows =
            store::pending_outbox(&mut conn, OutboxKind::Event, self.app.now(), BATCH).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        // Renewed just before the batch is handed over, so the lease covers its deliveries from
        // their start however long reading the rows took.
        if !self.take_lease(&mut conn).await? {
            return Ok(0);
        }
        drop(conn);
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
        let mut conn = self.app.db.pool().acquire().await?;
        store::mark_dispatched_many(&mut conn, &published, self.app.now()).await?;
        metrics::counter!("outbox_dispatched_total", "kind" => "event")
            .increment(published.len() as u64);
        if let Some(error) = failure {
            metrics::counter!("outbox_dispatch_failures_total", "kind" => "event").increment(1);
            // Every delivery of the batch has resolved (each was awaited above): nothing of
            // this relay is in flight any more, so a healthier relay may take over at once
            // without publishing next to it.
            if let Err(e) = store::release_lease(&mut conn, LEASE, &self.holder).await {
                tracing::warn!(error = %e, "event relay could not give its lease up after a failed batch");
            }
            return Err(ServiceError::Unavailable(format!("kafka: {error}")));
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
        let every = (self.lease / 3).max(Duration::from_millis(10));
        let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                outcomes = &mut all => return outcomes,
                _ = renew.tick() => self.renew_during_batch().await,
            }
        }
    }

    async fn renew_during_batch(&self) {
        let held = match self.app.db.pool().acquire().await {
            Ok(mut conn) => self.take_lease(&mut conn).await,
            Err(e) => Err(e.into()),
        };
        match held {
            Ok(true) => {}
            Ok(false) => tracing::error!(
                holder = %self.holder,
                "event relay lost its lease while a batch was in flight; another relay may publish the same events"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                "event relay could not renew its lease mid-batch; the lease still outlasts the batch's deliveries"
            ),
        }
    }

    /// Runs until `shutdown` turns true; backs off while Kafka is unreachable.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(holder = %self.holder, topic = %self.topic, lease_ms = self.lease_ms(), "event relay started");
        let mut pause = PollPause::default();
        loop {
            let outcome = self.run_once().await;
            if let Err(e) = &outcome {
                tracing::warn!(error = %e, "event relay could not publish; will retry");
            }
            let wait = pause.after(outcome.map(|n| n as i64 == BATCH), self.interval);
            self.report_backlog().await;
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                () = self.app.outbox_notify.notified(), if !pause.failing() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        let _ = self.producer.flush(Duration::from_secs(5));
        if let Ok(mut conn) = self.app.db.pool().acquire().await {
            let _ = store::release_lease(&mut conn, LEASE, &self.holder).await;
        }
        tracing::info!(holder = %self.holder, "event relay stopped");
    }

    /// Outbox backlog and the age of its oldest event, as gauges.
    async fn report_backlog(&self) {
        let Ok(mut conn) = self.app.db.pool().acquire().await else {
            return;
        };
        if let Ok((count, oldest)) = store::backlog(&mut conn, OutboxKind::Event).await {
            metrics::gauge!("outbox_backlog", "kind" => "event").set(count as f64);
            let age = oldest.map_or(0.0, |t| {
                (self.app.now().as_millis() - t.as_millis()).max(0) as f64 / 1000.0
            });
            metrics::gauge!("outbox_oldest_age_seconds", "kind" => "event").set(age);
        }
    }
}
