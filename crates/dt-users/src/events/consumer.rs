use std::sync::Arc;
use std::time::Duration;

use dt_users_domain::CommandEnvelope;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::watch;

use super::client::base_config;
use super::relay::producer_config;
use crate::config::{CommandsConfig, KafkaSettings};
use crate::runner::BoxError;
use dt_users_domain::{Command, CommandOutcome};

/// What the consumer applies commands with: given to it, so that it knows nothing of how.
pub trait CommandHandler: Send + Sync {
    /// Applies `command` once for its `id` (a redelivery is recognised).
    fn apply(
        &self,
        id: &str,
        command: &Command,
    ) -> impl Future<Output = Result<CommandOutcome, HandlingError>> + Send;

    /// Records that the command `id` was rejected for good, so a redelivery is recognised.
    fn record_rejected(
        &self,
        id: &str,
        command_type: &'static str,
    ) -> impl Future<Output = Result<(), HandlingError>> + Send;
}

/// Why a command could not be applied now, as the consumer must treat it.
#[derive(Debug, thiserror::Error)]
pub enum HandlingError {
    /// A dependency is down: the command waits for it, however long, without spending its
    /// attempts.
    #[error("{0}")]
    Unavailable(#[source] BoxError),
    /// Refused for a passing reason (a deadlock, a lock wait): tried again, a bounded number
    /// of times.
    #[error("{0}")]
    Busy(#[source] BoxError),
    /// Anything else: the command goes to the DLQ.
    #[error("{0}")]
    Failed(#[source] BoxError),
}

/// How often a consumer whose commands topic does not exist yet looks again.
const TOPIC_RECHECK: Duration = Duration::from_secs(2);

/// Reads `devtalk.users.commands` in a consumer group and applies each command once. An
/// offset is committed only after the command's effect is durable; a message that cannot be
/// parsed or applied goes to the DLQ with the reason in its headers, and the next one follows.
pub struct CommandConsumer<H> {
    handler: H,
    kafka: KafkaSettings,
    max_attempts: u32,
    consumer: ClosedApart,
    dlq: FutureProducer,
}

/// How long a consumer that stops waits for its client to leave the group cleanly.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// The consumer client, closed on a thread of its own once its last handle goes. Closing a
/// consumer blocks until its assignment is revoked, and librdkafka can leave it blocked for
/// ever when the group is gone by then (the broker down while it stops: librdkafka #4041,
/// #4884). On its own thread such a close holds up nothing: not a runtime worker, not the
/// process, which exits when it is done whatever the thread is doing.
struct ClosedApart {
    client: Arc<StreamConsumer>,
    closed: Option<tokio::sync::oneshot::Sender<()>>,
}

impl std::ops::Deref for ClosedApart {
    type Target = Arc<StreamConsumer>;
    fn deref(&self) -> &Arc<StreamConsumer> {
        &self.client
    }
}

impl ClosedApart {
    /// Fires once the client is closed (or its thread could not start).
    fn on_closed(&mut self) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.closed = Some(tx);
        rx
    }
}

impl Drop for ClosedApart {
    fn drop(&mut self) {
        let client = self.client.clone();
        let closed = self.closed.take();
        let started = std::thread::Builder::new()
            .name("kafka-close".into())
            .spawn(move || {
                // The handle being dropped still holds its reference for a moment, and a lag
                // report may hold one: the close is the last reference's to do.
                while Arc::strong_count(&client) > 1 {
                    std::thread::sleep(Duration::from_millis(10));
                }
                drop(client);
                if let Some(closed) = closed {
                    let _ = closed.send(());
                }
            });
        if let Err(e) = started {
            tracing::warn!(error = %e, "the Kafka consumer is closed where it is dropped");
        }
    }
}

impl<H> std::fmt::Debug for CommandConsumer<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandConsumer")
            .field("topic", &self.kafka.commands_topic)
            .finish_non_exhaustive()
    }
}

/// A command as received: its CloudEvents `id` and what it asks for, or why it is unusable.
pub fn parse_command(payload: Option<&[u8]>) -> Result<(String, Command), String> {
    let payload = payload.ok_or("empty message")?;
    let envelope: CommandEnvelope = serde_json::from_slice(payload).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            format!("not JSON: {e}")
        } else {
            format!("not a command: {e}")
        }
    })?;
    Ok((envelope.id, envelope.command))
}

impl<H: CommandHandler> CommandConsumer<H> {
    pub fn new(
        handler: H,
        kafka: &KafkaSettings,
        commands: &CommandsConfig,
    ) -> Result<Self, String> {
        let mut config = base_config(kafka)?;
        config
            .set_from("group.id", &kafka.group_id, "DT_USERS_KAFKA_GROUP_ID")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set_from(
                "session.timeout.ms",
                kafka.session_timeout_ms.to_string(),
                "DT_USERS_KAFKA_SESSION_TIMEOUT_MS",
            )
            .set_from(
                "heartbeat.interval.ms",
                kafka.heartbeat_interval_ms.to_string(),
                "DT_USERS_KAFKA_HEARTBEAT_INTERVAL_MS",
            )
            .set_from(
                "fetch.wait.max.ms",
                kafka.fetch_wait_max_ms.to_string(),
                "DT_USERS_KAFKA_FETCH_WAIT_MAX_MS",
            );
        let consumer: StreamConsumer = config.create()?;
        let dlq: FutureProducer = producer_config(kafka)?.create()?;
        Ok(Self {
            handler,
            kafka: kafka.clone(),
            max_attempts: commands.max_attempts.get(),
            consumer: ClosedApart {
                client: Arc::new(consumer),
                closed: None,
            },
            dlq,
        })
    }

    /// Applies commands until `shutdown` turns true, then leaves the group (waiting at most
    /// [`CLOSE_WAIT`] for that).
    pub async fn run(mut self, shutdown: watch::Receiver<bool>) {
        let closed = self.consumer.on_closed();
        self.consume(shutdown).await;
        drop(self);
        if tokio::time::timeout(CLOSE_WAIT, closed).await.is_err() {
            tracing::warn!("the command consumer did not leave its group in time");
        }
        tracing::info!("command consumer stopped");
    }

    async fn consume(&self, mut shutdown: watch::Receiver<bool>) {
        let kafka = &self.kafka;
        // Topics are created by `dt-users kafka create-topics` only. Waiting for the commands
        // topic before subscribing turns a missing topic into one clear warning, instead of a
        // stream of subscription errors, and the consumer starts within seconds of its creation.
        let mut warned = false;
        loop {
            match self.missing_topics().await {
                Ok(missing) if !missing.contains(&kafka.commands_topic) => {
                    if missing.contains(&kafka.dlq_topic) {
                        tracing::warn!(topic = %kafka.dlq_topic, "the DLQ topic does not exist: a command that cannot be applied will wait until it is created (`dt-users kafka create-topics`)");
                    }
                    break;
                }
                Ok(_) if !warned => {
                    warned = true;
                    tracing::warn!(topic = %kafka.commands_topic, "the commands topic does not exist; waiting for it (create it with `dt-users kafka create-topics`)");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read the cluster's topics; retrying"),
            }
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                () = tokio::time::sleep(TOPIC_RECHECK) => {}
            }
        }
        if let Err(e) = self.consumer.subscribe(&[&kafka.commands_topic]) {
            tracing::error!(error = %e, "cannot subscribe to the commands topic");
            return;
        }
        tracing::info!(topic = %kafka.commands_topic, group = %kafka.group_id, "command consumer started");
        let mut next_lag_report = tokio::time::Instant::now();
        loop {
            let message = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                () = tokio::time::sleep_until(next_lag_report) => None,
                message = self.consumer.recv() => Some(message),
            };
            let Some(message) = message else {
                self.report_lag().await;
                next_lag_report = tokio::time::Instant::now() + Duration::from_secs(5);
                continue;
            };
            match message {
                Ok(message) => {
                    if self.handle(&message, &mut shutdown).await {
                        if let Err(e) = self.consumer.commit_message(&message, CommitMode::Sync) {
                            tracing::warn!(error = %e, "offset not committed; the command may be delivered again");
                        }
                    } else {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading commands failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Which of the commands and DLQ topics the cluster does not have (a metadata request,
    /// off the async workers: the client call blocks).
    async fn missing_topics(&self) -> Result<Vec<String>, String> {
        let consumer = self.consumer.clone();
        let kafka = &self.kafka;
        let wanted = [kafka.commands_topic.clone(), kafka.dlq_topic.clone()];
        tokio::task::spawn_blocking(move || {
            let metadata = consumer
                .fetch_metadata(None, Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            Ok(wanted
                .into_iter()
                .filter(|name| {
                    !metadata
                        .topics()
                        .iter()
                        .any(|t| t.name() == name && t.error().is_none())
                })
                .collect())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Sets `kafka_consumer_lag`: messages of the assigned partitions not yet consumed.
    async fn report_lag(&self) {
        let consumer = self.consumer.clone();
        let lag = tokio::task::spawn_blocking(move || {
            let positions = consumer.position().ok()?;
            let mut lag = 0_i64;
            for element in positions.elements() {
                let (low, high) = consumer
                    .fetch_watermarks(element.topic(), element.partition(), Duration::from_secs(1))
                    .ok()?;
                let position = match element.offset() {
                    rdkafka::Offset::Offset(offset) => offset,
                    _ => low,
                };
                lag += (high - position).max(0);
            }
            Some(lag)
        })
        .await
        .ok()
        .flatten();
        if let Some(lag) = lag {
            metrics::gauge!("kafka_consumer_lag").set(lag as f64);
        }
    }

    /// Handles one message until its outcome is durable; false if shutdown came first.
    ///
    /// A command the database refuses for a passing reason (a deadlock, a lock wait: it
    /// answered, but not yet) is tried up to `DT_USERS_COMMAND_MAX_ATTEMPTS` times with a
    /// growing pause; one that still fails goes to the DLQ with the reason, and the partition
    /// moves on — a poison command must not hold up every command behind it. An outage is not
    /// the command's fault, though: while the database or the session store cannot be reached
    /// the command waits for it, however long, without spending its attempts. Any other failure
    /// goes to the DLQ at once.
    async fn handle(
        &self,
        message: &BorrowedMessage<'_>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let (id, command) = match parse_command(message.payload()) {
            Ok(parsed) => parsed,
            Err(reason) => return self.dead_letter(message, &reason, shutdown).await,
        };
        let max_attempts = self.max_attempts;
        let mut refusals: u32 = 0;
        let mut pauses: u32 = 0;
        // Why the command goes to the DLQ, and whether that is final for its id: an unknown
        // account is (a redelivery is recognised and not dead-lettered twice); a failure is
        // not, so that the command can be sent again, with its id, once the cause is fixed.
        let (rejection, final_for_id) = loop {
            let error = match self.handler.apply(&id, &command).await {
                Ok(CommandOutcome::Applied) => {
                    metrics::counter!("commands_total", "type" => command.type_name(), "outcome" => "applied").increment(1);
                    return true;
                }
                Ok(CommandOutcome::AlreadyHandled) => {
                    metrics::counter!("commands_total", "type" => command.type_name(), "outcome" => "duplicate").increment(1);
                    tracing::info!(command_id = %id, "command already handled; delivery ignored");
                    return true;
                }
                Ok(CommandOutcome::Rejected(reason)) => break (reason, true),
                Err(error) => error,
            };
            match error {
                HandlingError::Unavailable(_) => {
                    tracing::warn!(command_id = %id, error = %error, "a dependency is down; the command waits for it");
                }
                HandlingError::Busy(_) => {
                    refusals = refusals.saturating_add(1);
                    if refusals >= max_attempts {
                        break (
                            format!("not applied after {refusals} attempts: {error}"),
                            false,
                        );
                    }
                    tracing::warn!(command_id = %id, error = %error, attempts = refusals, "command not applied yet; retrying");
                }
                HandlingError::Failed(e) => break (format!("cannot be applied: {e}"), false),
            }
            pauses = pauses.saturating_add(1);
            let wait =
                Duration::from_millis(200 * (1_u64 << pauses.min(7))).min(Duration::from_secs(15));
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return false,
                () = tokio::time::sleep(wait) => {}
            }
        };
        metrics::counter!("commands_total", "type" => command.type_name(), "outcome" => "rejected")
            .increment(1);
        if !self.dead_letter(message, &rejection, shutdown).await {
            return false;
        }
        if final_for_id && let Err(e) = self.handler.record_rejected(&id, command.type_name()).await
        {
            tracing::warn!(error = %e, "rejected command not recorded");
        }
        true
    }

    /// Sends the message to the DLQ with the reason in headers; retried until it is stored.
    async fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        reason: &str,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let topic = &self.kafka.dlq_topic;
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        loop {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "dlq-reason",
                    value: Some(reason),
                })
                .insert(Header {
                    key: "dlq-original-topic",
                    value: Some(message.topic()),
                })
                .insert(Header {
                    key: "dlq-original-partition",
                    value: Some(partition.as_str()),
                })
                .insert(Header {
                    key: "dlq-original-offset",
                    value: Some(offset.as_str()),
                });
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            if let Some(payload) = message.payload() {
                record = record.payload(payload);
            }
            match self.dlq.send(record, Duration::from_secs(5)).await {
                Ok(_) => {
                    metrics::counter!("commands_dlq_total").increment(1);
                    tracing::warn!(%reason, partition = %partition, offset = %offset, "command sent to the DLQ");
                    return true;
                }
                Err((e, _)) => {
                    tracing::warn!(error = %e, "DLQ unreachable; retrying");
                    tokio::select! {
                        _ = shutdown.wait_for(|stop| *stop) => return false,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use uuid::Uuid;

    #[test]
    fn commands_parse() {
        let id = Uuid::now_v7();
        let ban = format!(
            r#"{{"specversion":"1.0","id":"c1","type":"devtalk.user.ban","data":{{"user_id":"{id}","reason":"spam"}}}}"#
        );
        assert_eq!(
            parse_command(Some(ban.as_bytes())),
            Ok((
                "c1".into(),
                Command::Ban {
                    user_id: id,
                    reason: Some("spam".into())
                }
            ))
        );
        for bad in [
            "",
            "not json",
            "[]",
            r#"{"specversion":"0.3","id":"x","type":"devtalk.user.ban","data":{}}"#,
            r#"{"specversion":"1.0","id":"","type":"devtalk.user.ban","data":{"user_id":"x"}}"#,
            r#"{"specversion":"1.0","id":"x","type":"devtalk.user.delete","data":{"user_id":"00000000-0000-7000-8000-000000000000"}}"#,
            r#"{"specversion":"1.0","id":"x","type":"devtalk.user.ban","data":{"user_id":"nope"}}"#,
            r#"{"specversion":"1.0","id":"x","type":"devtalk.user.ban","data":"00000000-0000-7000-8000-000000000000"}"#,
        ] {
            assert!(parse_command(Some(bad.as_bytes())).is_err(), "{bad}");
        }
        assert!(parse_command(None).is_err());
    }

    #[test]
    fn the_reason_says_what_is_wrong() {
        let reason = |payload: &str| parse_command(Some(payload.as_bytes())).unwrap_err();
        assert!(reason("this is not a command").starts_with("not JSON: "));
        assert!(reason(r#"{"specversion":"1.0""#).starts_with("not JSON: "));
        assert!(reason("[]").starts_with("not a command: "));
        assert!(
            reason(r#"{"specversion":"1.1","id":"x","type":"devtalk.user.unban","data":{}}"#)
                .contains(r#"specversion must be "1.0""#)
        );
        let unknown = reason(
            r#"{"specversion":"1.0","id":"x","type":"devtalk.user.delete","data":{"user_id":"00000000-0000-7000-8000-000000000000"}}"#,
        );
        assert!(unknown.contains("devtalk.user.delete"), "{unknown}");
        assert_eq!(parse_command(None), Err("empty message".into()));
    }

    proptest! {
        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_command(Some(&bytes));
        }
    }
}
