//! Two event relays on one database: the one holding the lease keeps it through a broker stall
//! longer than the old fixed 10 s lease, so the other never publishes the same rows next to it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dt_users::domain::SystemClock;
use dt_users::events::EventRelay;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::json;
use sqlx::Row;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;

use crate::helpers::{TestApp, mysql_server_url, test_settings};
use crate::kafka::{Broker, Sidecar, read_until, with_kafka};

const TOPIC: &str = "devtalk.users.events";
const METADATA: i16 = 3;
const PRODUCE: i16 = 0;

/// A TCP proxy in front of a tansu broker that a test can stall. It rewrites the broker's
/// port in Metadata responses to its own, so a client that bootstraps through it keeps
/// talking through it (Kafka clients otherwise connect to the advertised address directly).
struct StallingProxy {
    port: u16,
    stalled: watch::Sender<bool>,
    produce_requests: Arc<AtomicUsize>,
    _server: Sidecar,
}

type InFlight = Arc<std::sync::Mutex<HashMap<i32, (i16, i16)>>>;

async fn read_frame(reader: &mut OwnedReadHalf) -> Option<Vec<u8>> {
    let size = reader.read_i32().await.ok()?;
    let mut frame = vec![0; usize::try_from(size).ok()?];
    reader.read_exact(&mut frame).await.ok()?;
    Some(frame)
}

async fn write_frame(writer: &mut OwnedWriteHalf, frame: &[u8]) -> Option<()> {
    writer
        .write_i32(i32::try_from(frame.len()).unwrap())
        .await
        .ok()?;
    writer.write_all(frame).await.ok()
}

fn uvarint(frame: &[u8], mut at: usize) -> (usize, usize) {
    let (mut value, mut shift) = (0_usize, 0);
    loop {
        let byte = frame[at];
        at += 1;
        value |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return (value, at);
        }
        shift += 7;
    }
}

fn skip_tagged_fields(frame: &[u8], at: usize) -> usize {
    let (count, mut at) = uvarint(frame, at);
    for _ in 0..count {
        let (_, next) = uvarint(frame, at);
        let (size, next) = uvarint(frame, next);
        at = next + size;
    }
    at
}

/// Points every broker of a Metadata response (`version`) at port `from` to port `to`.
fn rewrite_metadata(frame: &mut [u8], version: i16, from: u16, to: u16) {
    let flexible = version >= 9;
    let mut at = 4; // correlation id
    if flexible {
        at = skip_tagged_fields(frame, at);
    }
    if version >= 3 {
        at += 4; // throttle_time_ms
    }
    let brokers = if flexible {
        let (n, next) = uvarint(frame, at);
        at = next;
        n.saturating_sub(1)
    } else {
        let n = i32::from_be_bytes(frame[at..at + 4].try_into().unwrap());
        at += 4;
        usize::try_from(n).unwrap_or(0)
    };
    for _ in 0..brokers {
        at += 4; // node_id
        at = if flexible {
            let (n, next) = uvarint(frame, at);
            next + n - 1
        } else {
            let n = i16::from_be_bytes(frame[at..at + 2].try_into().unwrap());
            at + 2 + usize::try_from(n).unwrap()
        };
        if frame[at..at + 4] == i32::from(from).to_be_bytes() {
            frame[at..at + 4].copy_from_slice(&i32::from(to).to_be_bytes());
        }
        at += 4;
        if version >= 1 {
            at = if flexible {
                let (n, next) = uvarint(frame, at);
                next + n.saturating_sub(1)
            } else {
                let n = i16::from_be_bytes(frame[at..at + 2].try_into().unwrap());
                at + 2 + usize::try_from(n).unwrap_or(0)
            };
        }
        if flexible {
            at = skip_tagged_fields(frame, at);
        }
    }
}

impl StallingProxy {
    fn start(broker_port: u16) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stalled, watching) = watch::channel(false);
        let produce_requests = Arc::new(AtomicUsize::new(0));
        let produced = produce_requests.clone();
        let server = Sidecar::spawn(listener, move |listener| async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let watching = watching.clone();
                let produced = produced.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(("127.0.0.1", broker_port)).await else {
                        return;
                    };
                    let (mut client_in, mut client_out) = inbound.into_split();
                    let (mut broker_in, mut broker_out) = outbound.into_split();
                    let in_flight = InFlight::default();
                    let requests = {
                        let in_flight = in_flight.clone();
                        let mut watching = watching.clone();
                        async move {
                            while let Some(frame) = read_frame(&mut client_in).await {
                                let api_key = i16::from_be_bytes([frame[0], frame[1]]);
                                let version = i16::from_be_bytes([frame[2], frame[3]]);
                                let correlation =
                                    i32::from_be_bytes(frame[4..8].try_into().unwrap());
                                in_flight
                                    .lock()
                                    .unwrap()
                                    .insert(correlation, (api_key, version));
                                if watching.wait_for(|stalled| !stalled).await.is_err() {
                                    return;
                                }
                                if api_key == PRODUCE {
                                    produced.fetch_add(1, Ordering::SeqCst);
                                }
                                if write_frame(&mut broker_out, &frame).await.is_none() {
                                    return;
                                }
                            }
                        }
                    };
                    let responses = {
                        let mut watching = watching.clone();
                        async move {
                            while let Some(mut frame) = read_frame(&mut broker_in).await {
                                let correlation =
                                    i32::from_be_bytes(frame[0..4].try_into().unwrap());
                                let request = in_flight.lock().unwrap().remove(&correlation);
                                if let Some((METADATA, version)) = request {
                                    rewrite_metadata(&mut frame, version, broker_port, port);
                                }
                                if watching.wait_for(|stalled| !stalled).await.is_err() {
                                    return;
                                }
                                if write_frame(&mut client_out, &frame).await.is_none() {
                                    return;
                                }
                            }
                        }
                    };
                    tokio::join!(requests, responses);
                });
            }
        });
        Self {
            port,
            stalled,
            produce_requests,
            _server: server,
        }
    }

    fn stall(&self, stalled: bool) {
        self.stalled.send_replace(stalled);
    }
}

/// A relay of its own (its own connections, on the wall clock) on `app`'s database, reaching
/// Kafka at `bootstrap`.
async fn relay(app: &TestApp, bootstrap: &str, message_timeout_ms: u64) -> EventRelay {
    let url = format!("{}/{}", mysql_server_url(), app.db_name);
    let mut settings = test_settings(&url, &app.redis_prefix);
    with_kafka(&mut settings, bootstrap);
    settings.kafka_message_timeout_ms = message_timeout_ms;
    let config = settings.validate().unwrap();
    let db = dt_users::startup::open_db(&config).unwrap();
    EventRelay::new(config.kafka.as_ref().unwrap(), db, Arc::new(SystemClock)).unwrap()
}

/// Runs `relay` as the `relay` role does (every 100 ms, under its lease) until `stopped`.
async fn run(relay: EventRelay, stopped: watch::Receiver<bool>) {
    let schedule = dt_users::runner::Schedule {
        interval: Duration::from_millis(100),
        wake: None,
        lease: Some(relay.lease().clone()),
    };
    dt_users::runner::run(relay, schedule, stopped).await;
}

async fn insert_event(conn: &mut sqlx::AnyConnection, user: uuid::Uuid, n: i64) -> String {
    let id = uuid::Uuid::now_v7().to_string();
    sqlx::query("INSERT INTO outbox (id, kind, name, user_id, payload, created_at, next_attempt_at) VALUES (?, 'event', 'devtalk.user.purged', ?, ?, ?, 0)")
        .bind(id.clone())
        .bind(user.to_string())
        .bind(json!({"user_id": user}).to_string())
        .bind(n)
        .execute(conn)
        .await
        .unwrap();
    id
}

async fn dispatched(conn: &mut sqlx::AnyConnection) -> i64 {
    sqlx::query("SELECT COUNT(*) FROM outbox WHERE dispatched_at IS NOT NULL")
        .fetch_one(conn)
        .await
        .unwrap()
        .get::<i64, _>(0)
}

async fn lease_holder(conn: &mut sqlx::AnyConnection) -> Option<String> {
    sqlx::query("SELECT holder FROM leases WHERE name = 'event-relay'")
        .fetch_optional(conn)
        .await
        .unwrap()
        .map(|row| row.get::<String, _>(0))
}

/// Records in the events topic (its high watermark), read straight from the broker.
async fn records_in_topic(bootstrap: &str) -> i64 {
    let bootstrap = bootstrap.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .unwrap();
        consumer
            .fetch_watermarks(TOPIC, 0, Duration::from_secs(5))
            .unwrap()
            .1
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_relay_stalled_past_the_old_lease_keeps_it_and_no_event_is_published_twice() {
    let broker = Broker::start().await;
    let proxy = StallingProxy::start(broker.port);
    let app = TestApp::spawn().await;
    let mut conn = app.db().await;
    // The message timeout outlasts the stall, so A's batch goes through once the broker
    // answers again; the stall outlasts the old fixed 10 s lease.
    let message_timeout_ms = 20_000;
    let stall = Duration::from_secs(13);
    let a = relay(
        &app,
        &format!("127.0.0.1:{}", proxy.port),
        message_timeout_ms,
    )
    .await;
    let b = relay(&app, &broker.bootstrap(), message_timeout_ms).await;
    let (stop, stopped) = watch::channel(false);

    // A starts alone, takes the lease and publishes a first event through the proxy.
    let a_holder = a.holder().to_owned();
    let a_task = tokio::spawn(run(a, stopped.clone()));
    let users: Vec<uuid::Uuid> = (0..5).map(|_| uuid::Uuid::now_v7()).collect();
    let mut expected = vec![insert_event(&mut conn, users[0], 0).await];
    let started = Instant::now();
    while dispatched(&mut conn).await < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "A never published"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lease_holder(&mut conn).await.as_deref(), Some(&*a_holder));
    assert!(
        proxy.produce_requests.load(Ordering::SeqCst) > 0,
        "A publishes through the proxy"
    );
    let b_task = tokio::spawn(run(b, stopped.clone()));

    // The broker stalls for A (B still reaches it); A picks a batch up and waits on it.
    proxy.stall(true);
    for n in 1..300 {
        expected.push(insert_event(&mut conn, users[n % users.len()], n as i64).await);
    }
    let stalled_at = Instant::now();
    let mut published_during_stall = Vec::new();
    let mut holders = HashSet::new();
    while stalled_at.elapsed() < stall {
        let in_topic = records_in_topic(&broker.bootstrap()).await;
        if in_topic != 1 {
            published_during_stall.push((stalled_at.elapsed(), in_topic));
        }
        holders.insert(lease_holder(&mut conn).await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    proxy.stall(false);
    eprintln!(
        "records in the topic while A was stalled (after, count): {published_during_stall:?}; lease holders seen: {holders:?}"
    );

    let started = Instant::now();
    while dispatched(&mut conn).await < expected.len() as i64 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not every event was published"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send_replace(true);
    a_task.await.unwrap();
    b_task.await.unwrap();

    // Whatever was sent at all is in the topic by now; read it all.
    let bootstrap = broker.bootstrap();
    let records = tokio::task::spawn_blocking(move || {
        read_until(&bootstrap, TOPIC, Duration::from_secs(8), |_| false)
    })
    .await
    .unwrap();
    let ids: Vec<&str> = records
        .iter()
        .map(|r| r.value["id"].as_str().unwrap())
        .collect();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for id in &ids {
        *seen.entry(id).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    eprintln!(
        "{} records read, {} distinct events, {} published more than once",
        ids.len(),
        seen.len(),
        twice.len()
    );
    assert!(
        published_during_stall.is_empty(),
        "B published while A was stalled: {published_during_stall:?}"
    );
    assert_eq!(
        holders,
        HashSet::from([Some(a_holder)]),
        "A held the lease throughout"
    );
    assert!(
        twice.is_empty(),
        "{} events published more than once",
        twice.len()
    );
    assert_eq!(
        seen.keys().copied().collect::<HashSet<_>>(),
        expected.iter().map(String::as_str).collect::<HashSet<_>>(),
        "every event arrived"
    );
    // Commit order, per user and overall (one partition).
    assert_eq!(ids, expected, "events arrive in commit order");
}
