//! Events reach Kafka exactly as committed: in order per user, each with a unique id, each
//! valid against its documented schema — and none is lost when Kafka or the relay is down.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::{Connection, Row};

use crate::helpers::{MFA_KEY, PASSWORD, SIGNING_KEY, TestApp, mysql_server_url, redis_url};
use crate::kafka::{Broker, Record, read_until, with_kafka};
use crate::mail::{SmtpSink, spawn_with_mail, token_in};

const TOPIC: &str = "devtalk.users.events";
const SCHEMAS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/schemas");

fn load_schema(name: &str) -> Value {
    let path = format!("{SCHEMAS}/{name}.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
        .unwrap()
}

/// The schema with its references to `public-user.json` inlined and its `$id` dropped.
fn schema(name: &str) -> Value {
    fn inline(value: &mut Value) {
        match value {
            Value::Object(map) => {
                if map.get("$ref") == Some(&json!("public-user.json")) {
                    let mut public = load_schema("public-user");
                    if let Value::Object(p) = &mut public {
                        p.remove("$id");
                        p.remove("$schema");
                    }
                    *value = public;
                    return;
                }
                map.remove("$id");
                map.values_mut().for_each(inline);
            }
            Value::Array(items) => items.iter_mut().for_each(inline),
            _ => {}
        }
    }
    let mut schema = load_schema(name);
    inline(&mut schema);
    schema
}

/// Checks an event against the envelope schema and the schema of its `data`.
pub fn assert_valid_event(event: &Value) {
    let envelope = jsonschema::validator_for(&schema("cloudevent")).unwrap();
    let errors: Vec<String> = envelope.iter_errors(event).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{event}: {errors:?}");
    let kind = event["type"].as_str().unwrap();
    let data = jsonschema::validator_for(&schema(kind)).unwrap();
    let errors: Vec<String> = data
        .iter_errors(&event["data"])
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{kind}: {}: {errors:?}", event["data"]);
    assert!(
        !event.to_string().contains('@'),
        "an event carries no email address: {event}"
    );
}

async fn read_events(
    bootstrap: String,
    done: impl Fn(&[Record]) -> bool + Send + 'static,
) -> Vec<Record> {
    tokio::task::spawn_blocking(move || {
        read_until(&bootstrap, TOPIC, Duration::from_secs(60), done)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_user_lifecycle_produces_exactly_its_events_in_order() {
    let broker = Broker::start().await;
    let sink = SmtpSink::start().await;
    let bootstrap = broker.bootstrap();
    let app = spawn_with_mail(&sink.url(), |s| with_kafka(s, &bootstrap)).await;

    let tokens = app.signed_in().await;
    let user_id = app.current_user_id(&tokens.access).await;
    let response = app
        .patch_current(
            &tokens.access,
            &json!({"display_name": "Ada Lovelace", "bio": "Analyst"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let verify = token_in(&sink.wait_for("ada@example.com", "Welcome").await);
    assert_eq!(
        app.post_json("/api/v1/auth/email/verify", &json!({"token": verify}))
            .await
            .status(),
        StatusCode::OK
    );
    let deleted = app.delete_account(&tokens.access, PASSWORD).await;
    assert_eq!(deleted.status(), StatusCode::ACCEPTED);
    let restore = token_in(&sink.wait_for("ada@example.com", "restore it").await);
    assert_eq!(
        app.post_json("/api/v1/users/restore", &json!({"token": restore}))
            .await
            .status(),
        StatusCode::OK
    );

    let expected = [
        "devtalk.user.registered",
        "devtalk.user.updated",
        "devtalk.user.email_verified",
        "devtalk.user.deleted",
        "devtalk.user.restored",
    ];
    let key = user_id.clone();
    let records = read_events(bootstrap, move |r| {
        r.iter().filter(|r| r.key == key).count() >= expected.len()
    })
    .await;
    // Allow a moment for anything unexpected to show up too.
    let records: Vec<Record> = records.into_iter().filter(|r| r.key == user_id).collect();
    let types: Vec<&str> = records
        .iter()
        .map(|r| r.value["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, expected);
    let ids: HashSet<&str> = records
        .iter()
        .map(|r| r.value["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), expected.len(), "ids are unique");
    for record in &records {
        assert_eq!(record.value["subject"], user_id.as_str());
        assert_valid_event(&record.value);
    }
    assert_eq!(
        records[1].value["data"]["changed"],
        json!(["display_name", "bio"])
    );
    assert_eq!(
        records[1].value["data"]["user"]["display_name"],
        "Ada Lovelace"
    );
}

#[tokio::test]
async fn events_written_while_kafka_is_down_arrive_when_it_is_back() {
    let mut broker = Broker::reserved();
    let bootstrap = broker.bootstrap();
    let app = TestApp::spawn_with(|s| {
        with_kafka(s, &bootstrap);
        s.kafka_message_timeout_ms = 2_000;
    })
    .await;
    let mut users = HashSet::new();
    for i in 0..50 {
        let user = app
            .register(&format!("user{i}@example.com"), &format!("user{i}"))
            .await;
        users.insert(user["id"].as_str().unwrap().to_owned());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, report) = app.readiness().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(report["checks"]["kafka"]["status"], "down");
    assert!(
        report["outbox"]["events"]["pending"].as_i64().unwrap() >= 50,
        "{report}"
    );
    broker.launch().await;
    let records = read_events(bootstrap, |r| r.len() >= 50).await;
    let registered: HashSet<String> = records
        .iter()
        .filter(|r| r.value["type"] == "devtalk.user.registered")
        .map(|r| r.key.clone())
        .collect();
    assert_eq!(registered, users);
    for record in &records {
        assert_valid_event(&record.value);
    }
}

async fn dispatched(conn: &mut sqlx::AnyConnection) -> i64 {
    sqlx::query("SELECT COUNT(*) FROM outbox WHERE dispatched_at IS NOT NULL")
        .fetch_one(conn)
        .await
        .unwrap()
        .get::<i64, _>(0)
}

struct RelayProcess(std::process::Child);

impl RelayProcess {
    fn start(app: &TestApp, bootstrap: &str, port: u16) -> Self {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_dt-users"))
            .args(["relay", "--port", &port.to_string()])
            .env(
                "DT_USERS_DATABASE_URL",
                format!("{}/{}", mysql_server_url(), app.db_name),
            )
            .env("DT_USERS_REDIS_URL", redis_url())
            .env("DT_USERS_REDIS_KEY_PREFIX", &app.redis_prefix)
            .env("DT_USERS_JOBS_URL", redis_url())
            .env(
                "DT_USERS_JOBS_NAMESPACE",
                format!("{}:jobs", app.redis_prefix),
            )
            .env("DT_USERS_SIGNING_KEYS", SIGNING_KEY.as_str())
            .env("DT_USERS_MFA_ENCRYPTION_KEY", MFA_KEY.as_str())
            .env("DT_USERS_KAFKA_BOOTSTRAP_SERVERS", bootstrap)
            .env("DT_USERS_KAFKA_IDEMPOTENCE", "false")
            // The lease is twice this plus 2 s: a killed relay's is taken over in 10 s.
            .env("DT_USERS_KAFKA_MESSAGE_TIMEOUT_MS", "4000")
            .env("DT_USERS_RELAY_INTERVAL_MS", "50")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Self(child)
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_relay_killed_mid_batch_loses_nothing_and_duplicates_keep_their_id() {
    let broker = Broker::start().await;
    let bootstrap = broker.bootstrap();
    let app = TestApp::spawn().await;
    // A backlog of events straight into the outbox.
    let url = format!("{}/{}", mysql_server_url(), app.db_name);
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    let mut expected = HashSet::new();
    for n in 0..3_000 {
        let id = uuid::Uuid::now_v7();
        let user = uuid::Uuid::now_v7();
        expected.insert(id.to_string());
        sqlx::query("INSERT INTO outbox (id, kind, name, user_id, payload, created_at, next_attempt_at) VALUES (?, 'event', 'devtalk.user.purged', ?, ?, ?, 0)")
            .bind(id.to_string())
            .bind(user.to_string())
            .bind(json!({"user_id": user}).to_string())
            .bind(n)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let mut first = RelayProcess::start(&app, &bootstrap, crate::mail::free_port());
    let started = std::time::Instant::now();
    while dispatched(&mut conn).await == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the relay never published"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = first.0.kill();
    let _ = first.0.wait();
    let at_kill = dispatched(&mut conn).await;
    assert!(
        at_kill < 3_000,
        "killed too late to matter ({at_kill} done)"
    );

    let ops_port = crate::mail::free_port();
    let _second = RelayProcess::start(&app, &bootstrap, ops_port);
    let started = std::time::Instant::now();
    while dispatched(&mut conn).await < 3_000 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the second relay did not finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The relay process reports through its own health and metrics port.
    let ops = format!("http://127.0.0.1:{ops_port}");
    let ready: Value = app
        .client
        .get(format!("{ops}/health/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["checks"]["kafka"]["status"], "up", "{ready}");
    let metrics = app
        .client
        .get(format!("{ops}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"outbox_dispatched_total{kind="event"}"#),
        "{metrics}"
    );
    let records = read_events(bootstrap, |r| {
        r.iter()
            .map(|r| r.value["id"].as_str().unwrap_or_default())
            .collect::<HashSet<_>>()
            .len()
            >= 3_000
    })
    .await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for record in records.iter().step_by(97) {
        assert_valid_event(&record.value);
    }
    for record in &records {
        *seen
            .entry(record.value["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let ids: HashSet<String> = seen.keys().cloned().collect();
    assert_eq!(ids, expected, "every event arrived");
    let duplicates = seen.values().filter(|n| **n > 1).count();
    eprintln!("{at_kill} marked when the relay was killed; {duplicates} events published twice");
    // Per key (user), events keep their outbox order.
    let mut last_seq: HashMap<String, String> = HashMap::new();
    for record in &records {
        let time = record.value["time"].as_str().unwrap().to_owned();
        if let Some(previous) = last_seq.insert(record.key.clone(), time.clone()) {
            assert!(previous <= time, "out of order for {}", record.key);
        }
    }
}

/// Runs `dt-users kafka create-topics` against `bootstrap`; what it printed.
fn create_topics_command(bootstrap: &str) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_dt-users"))
        .args([
            "kafka",
            "create-topics",
            "--partitions",
            "1",
            "--replication",
            "1",
        ])
        .env("DT_USERS_KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        .env("DT_USERS_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn topic_exists(bootstrap: &str, topic: &str) -> bool {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    consumer
        .fetch_metadata(None, Duration::from_secs(5))
        .unwrap()
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none())
}

#[tokio::test]
async fn events_wait_in_the_outbox_until_their_topic_is_created() {
    let broker = Broker::start_without_topics().await;
    let bootstrap = broker.bootstrap();
    let app = TestApp::spawn_with(|s| {
        with_kafka(s, &bootstrap);
        s.kafka_message_timeout_ms = 2_000;
    })
    .await;
    let mut users = HashSet::new();
    for i in 0..3 {
        let user = app
            .register(&format!("user{i}@example.com"), &format!("user{i}"))
            .await;
        users.insert(user["id"].as_str().unwrap().to_owned());
    }
    // Longer than a delivery may take: the relay's first batch has failed by now.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, report) = app.readiness().await;
    assert_eq!(report["checks"]["kafka"]["status"], "up", "{report}");
    assert_eq!(report["outbox"]["events"]["pending"], 3, "{report}");
    let probe = bootstrap.clone();
    let exists = tokio::task::spawn_blocking(move || topic_exists(&probe, TOPIC))
        .await
        .unwrap();
    assert!(!exists, "publishing did not create the topic");

    let created = create_topics_command(&bootstrap);
    for topic in [
        TOPIC,
        "devtalk.users.commands",
        "devtalk.users.commands.dlq",
    ] {
        assert!(
            created.contains(&format!("created topic {topic}\n")),
            "{created}"
        );
    }
    let again = create_topics_command(&bootstrap);
    assert!(
        again.contains(&format!("topic {TOPIC} exists already")),
        "{again}"
    );

    let records = read_events(bootstrap, |r| r.len() >= 3).await;
    let registered: HashSet<String> = records
        .iter()
        .filter(|r| r.value["type"] == "devtalk.user.registered")
        .map(|r| r.key.clone())
        .collect();
    assert_eq!(registered, users);
}

/// One commit wakes every relay of the process: with a poll interval of a minute, both the
/// welcome email and the `registered` event leave within seconds. (With one wake-up shared by
/// the two relays, one of them waited for its next poll.)
#[tokio::test]
async fn one_commit_wakes_the_email_relay_and_the_event_relay() {
    let broker = Broker::start().await;
    let sink = SmtpSink::start().await;
    let bootstrap = broker.bootstrap();
    let app = spawn_with_mail(&sink.url(), |s| {
        with_kafka(s, &bootstrap);
        s.relay_interval_ms = 60_000;
    })
    .await;
    // Both relays have done their first round at start and now wait for a minute.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for round in 0..3 {
        let email = format!("ada{round}@example.com");
        let registered = app.register(&email, &format!("ada{round}")).await;
        let id = registered["id"].as_str().unwrap().to_owned();
        let started = std::time::Instant::now();
        sink.wait_for_within(&email, "Welcome", Duration::from_secs(15))
            .await;
        let wanted = id.clone();
        let records = read_events(bootstrap.clone(), move |r| {
            r.iter().any(|r| r.key == wanted)
        })
        .await;
        assert!(
            records.iter().any(|r| r.key == id),
            "round {round}: the registered event waited for the relay's next poll"
        );
        assert!(started.elapsed() < Duration::from_secs(30), "round {round}");
    }
}
