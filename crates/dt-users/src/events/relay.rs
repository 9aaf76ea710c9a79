use std::sync::Arc;
use std::time::Duration;

use dt_users_store::{self as store, OutboxKind};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::watch;

use crate::config::Settings;
use crate::jobs::PollPause;
use crate::service::{App, ServiceError};

/// Publishes the outbox's events to Kafka, at least once and in `seq` (commit) order.
///
/// Several relays may run: a lease in the database (`event-relay`) lets exactly one publish at
/// a time, which keeps the order without coordinating row by row; the others stand by and take
/// over within a few seconds if it stops.
#[derive(Clone)]
pub struct EventRelay {
    app: Arc<App>,
    bootstrap: String,
    producer: FutureProducer,
    topic: String,
    holder: String,
    interval: Duration,
}

impl std::fmt::Debug for EventRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRelay")
            .field("topic", &self.topic)
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

const BATCH: i64 = 500;
const LEASE_MS: i64 = 10_000;

/// The producer settings: `acks=all`; idempotence as configured; without idempotence, one
/// request in flight per connection so that retries cannot reorder.
pub fn producer_config(settings: &Settings, bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "dt-users")
        .set("acks", "all")
        .set(
            "enable.idempotence",
            if settings.kafka_idempotence {
                "true"
            } else {
                "false"
            },
        )
        .set(
            "message.timeout.ms",
            settings.kafka_message_timeout_ms.to_string(),
        )
        .set("linger.ms", "5");
    if !settings.kafka_idempotence {
        config.set("max.in.flight.requests.per.connection", "1");
    }
    config
}

/// Creates `topics` if they do not exist (a broker may also create them itself).
pub async fn ensure_topics(bootstrap: &str, topics: &[&str]) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(|e| e.to_string())?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(5)));
    let results = admin
        .create_topics(new.iter(), &options)
        .await
        .map_err(|e| e.to_string())?;
    for result in results {
        match result {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(format!("creating topic {topic}: {code}")),
        }
    }
    Ok(())
}

impl EventRelay {
    pub fn new(app: Arc<App>, bootstrap: &str) -> Result<Self, String> {
        let producer: FutureProducer = producer_config(&app.settings, bootstrap)
            .create()
            .map_err(|e| e.to_string())?;
        let holder = crate::jobs::worker_name().replacen("email@", "relay@", 1);
        Ok(Self {
            bootstrap: bootstrap.to_owned(),
            topic: app.settings.kafka_events_topic.clone(),
            interval: Duration::from_millis(app.settings.relay_interval_ms.max(10)),
            app,
            producer,
            holder,
        })
    }

    /// Publishes what is due if this relay holds the lease; returns how many events.
    pub async fn run_once(&self) -> Result<usize, ServiceError> {
        let now = self.app.now();
        let mut conn = self.app.db.pool().acquire().await?;
        if !store::acquire_lease(&mut conn, "event-relay", &self.holder, now, LEASE_MS).await? {
            return Ok(0);
        }
        let rows = store::pending_outbox(&mut conn, OutboxKind::Event, now, BATCH).await?;
        drop(conn);
        if rows.is_empty() {
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
                    .map_err(|(e, _)| e.to_string()),
            );
        }
        let mut published = Vec::new();
        let mut failure = None;
        for (row, delivery) in rows.iter().zip(deliveries) {
            let outcome = match delivery {
                Ok(future) => match future.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(e.to_string()),
                    Err(_) => Err("the producer was dropped".to_owned()),
                },
                Err(e) => Err(e),
            };
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
            return Err(ServiceError::Unavailable(format!("kafka: {error}")));
        }
        Ok(published.len())
    }

    /// Runs until `shutdown` turns true; backs off while Kafka is unreachable.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(holder = %self.holder, topic = %self.topic, "event relay started");
        let mut pause = PollPause::default();
        let mut topic_ready = false;
        loop {
            if !topic_ready {
                match ensure_topics(&self.bootstrap, &[&self.topic]).await {
                    Ok(()) => topic_ready = true,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not make sure the events topic exists")
                    }
                }
            }
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
            let _ = store::release_lease(&mut conn, "event-relay", &self.holder).await;
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
