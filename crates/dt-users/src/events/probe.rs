use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};

/// A Kafka client used only to ask the cluster for its metadata: "is Kafka reachable?".
pub struct KafkaProbe(Arc<BaseProducer>);

impl std::fmt::Debug for KafkaProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KafkaProbe")
    }
}

impl KafkaProbe {
    pub fn new(bootstrap: &str) -> Result<Self, String> {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()
            .map_err(|e| e.to_string())?;
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
