//! Events for the other Dev Talk services: recorded in the outbox by the use-cases (the
//! event types are the domain's [`Event`](dt_users_domain::Event)), published to Kafka as
//! CloudEvents 1.0 by the [`EventRelay`], in commit order per user.

mod client;
mod consumer;
mod probe;
mod relay;
mod topics;

use dt_users_store::OutboxRow;
use serde_json::{Value, json};

pub use client::{KafkaConfig, base_config};
pub use consumer::{CommandConsumer, CommandHandler, HandlingError, parse_command};
pub use probe::KafkaProbe;
pub use relay::{EventRelay, producer_config, relay_lease};
pub use topics::{TopicCreation, create_topics};

/// The CloudEvents 1.0 JSON document of an outbox event row. Its `id` is the row's id, so a
/// row published twice is recognisably the same event.
pub fn cloud_event(row: &OutboxRow) -> Value {
    let data: Value = serde_json::from_str(&row.payload).unwrap_or(Value::Null);
    json!({
        "specversion": "1.0",
        "id": row.id,
        "source": "dt-users",
        "type": row.name,
        "time": row.created_at.to_rfc3339_millis(),
        "subject": row.user_id,
        "datacontenttype": "application/json",
        "data": data,
    })
}
