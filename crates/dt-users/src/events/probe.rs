use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::{BaseProducer, Producer};

use super::client::base_config;
use crate::config::KafkaSettings;

/// A Kafka client used only to ask the cluster for its metadata: "is Kafka reachable?".
pub struct KafkaProbe(Arc<BaseProducer>);

impl std::fmt::Debug for KafkaProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KafkaProbe")
    }
}

impl KafkaProbe {
    /// With the same connection and security settings as every other client, so that "up"
    /// means the relay and the consumer can get through too.
    pub fn new(kafka: &KafkaSettings) -> Result<Self, String> {
        let producer: BaseProducer = base_config(kafka)?.create()?;
        Ok(Self(Arc::new(producer)))
    }

    /// A metadata round trip. It blocks the calling thread for up to `timeout`: call it from a
    /// thread of its own (see `health`), never from the async workers or the blocking pool.
    pub fn check(&self, timeout: Duration) -> Result<(), String> {
        self.0
            .client()
            .fetch_metadata(None, timeout)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
