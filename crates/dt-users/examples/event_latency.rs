//! End-to-end event latency: profile updates through the HTTP API at a steady rate, and the
//! time from each update's commit to its `devtalk.user.updated` event being readable in Kafka.
//!
//! Run by `bench/event_latency.sh`, which starts the service (release build) with Kafka. Takes
//! the service URL, the Kafka bootstrap servers, the rate (writes/s) and the duration (s).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use serde_json::{Value, json};

fn now_ms() -> i64 {
    #[allow(clippy::disallowed_methods)]
    let now = SystemTime::now();
    i64::try_from(now.duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

fn parse_time_ms(time: &str) -> Option<i64> {
    let t =
        time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base = args[1].clone();
    let bootstrap = args[2].clone();
    let rate: u64 = args[3].parse().unwrap();
    let seconds: u64 = args[4].parse().unwrap();
    let client = reqwest::Client::new();
    let email = format!("latency-{}@example.com", std::process::id());
    let register = client
        .post(format!("{base}/api/v1/auth/register"))
        .json(&json!({"email": email, "username": format!("lat{}", std::process::id()), "password": "latency benchmark pass"}))
        .send()
        .await
        .unwrap();
    assert!(
        register.status().is_success(),
        "{}",
        register.text().await.unwrap()
    );
    let tokens: Value = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"email": email, "password": "latency benchmark pass"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = tokens["access_token"].as_str().unwrap().to_owned();

    // The reader: every `updated` event, and when it became readable.
    let total = rate * seconds;
    let reader = std::thread::spawn(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", format!("latency-{}", std::process::id()))
            .set("auto.offset.reset", "latest")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "3000")
            .set("heartbeat.interval.ms", "300")
            .set("fetch.wait.max.ms", "10")
            .create()
            .unwrap();
        consumer.subscribe(&["devtalk.users.events"]).unwrap();
        let started = Instant::now();
        let mut latencies = Vec::new();
        while (latencies.len() as u64) < total
            && started.elapsed() < Duration::from_secs(seconds + 60)
        {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                let received = now_ms();
                let Ok(event) =
                    serde_json::from_slice::<Value>(message.payload().unwrap_or_default())
                else {
                    continue;
                };
                if event["type"] != "devtalk.user.updated" {
                    continue;
                }
                if let Some(sent) = event["time"].as_str().and_then(parse_time_ms) {
                    latencies.push(received - sent);
                }
            }
        }
        latencies
    });
    // Let the reader join its group before writing.
    tokio::time::sleep(Duration::from_secs(6)).await;

    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut pending = Vec::new();
    let mut failures = 0;
    for n in 0..total {
        ticker.tick().await;
        let request = client
            .patch(format!("{base}/api/v1/users/current"))
            .bearer_auth(&access)
            .json(&json!({"bio": format!("update {n}")}))
            .send();
        pending.push(tokio::spawn(request));
    }
    for request in pending {
        if !request
            .await
            .unwrap()
            .map(|r| r.status().is_success())
            .unwrap_or(false)
        {
            failures += 1;
        }
    }
    let mut latencies = reader.join().unwrap();
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{total} updates at {rate}/s ({failures} failed); {} events read; commit→readable latency p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
        latencies.len(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        latencies.last().unwrap()
    );
}
