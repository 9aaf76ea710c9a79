//! The test's side of the topology: the API instances over HTTP, the emails at the SMTP sink,
//! the events on Kafka and the commands to it, and patient waiting for each.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{EMAIL, EVENTS, WAIT};
use crate::helpers::PASSWORD;
use crate::kafka::read_until;
use crate::mail::SmtpSink;

/// One running `serve`, over HTTP.
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
}

impl Api {
    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn login(&self) -> reqwest::Response {
        self.post(
            "/api/v1/auth/login",
            &json!({"email": EMAIL, "password": PASSWORD}),
        )
        .await
    }

    /// Signs in; the access and refresh tokens.
    pub async fn sign_in(&self) -> (String, String) {
        let response = self.login().await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "sign-in on {}",
            self.base
        );
        tokens(response).await
    }

    pub async fn refresh(&self, refresh_token: &str) -> reqwest::Response {
        self.post(
            "/api/v1/auth/refresh",
            &json!({"refresh_token": refresh_token}),
        )
        .await
    }

    pub async fn current(&self, access_token: &str) -> reqwest::Response {
        self.client
            .get(format!("{}/api/v1/users/current", self.base))
            .bearer_auth(access_token)
            .send()
            .await
            .unwrap()
    }

    pub async fn patch_current(&self, access_token: &str, body: &Value) -> reqwest::Response {
        self.client
            .patch(format!("{}/api/v1/users/current", self.base))
            .bearer_auth(access_token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn delete_account(&self, access_token: &str) -> reqwest::Response {
        self.client
            .delete(format!("{}/api/v1/users/current", self.base))
            .bearer_auth(access_token)
            .json(&json!({"password": PASSWORD}))
            .send()
            .await
            .unwrap()
    }
}

pub async fn tokens(response: reqwest::Response) -> (String, String) {
    let body: Value = response.json().await.unwrap();
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["refresh_token"].as_str().unwrap().to_owned(),
    )
}

/// The status and the problem `code` of a response.
pub async fn outcome(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body["code"].as_str().unwrap_or_default().to_owned())
}

/// Polls `probe` until it gives a value, for at most `limit`.
pub async fn eventually<T>(
    what: &str,
    limit: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `nth` (1-based) email to [`EMAIL`] whose subject contains `subject`, once it has come.
pub async fn email(sink: &SmtpSink, subject: &str, nth: usize) -> Value {
    eventually(
        &format!("email #{nth} to {EMAIL} about {subject:?} over SMTP"),
        WAIT,
        async || {
            sink.messages_to(EMAIL)
                .into_iter()
                .filter(|m| m["subject"].as_str().unwrap().contains(subject))
                .nth(nth - 1)
        },
    )
    .await
}

/// The events of `user_id` on the events topic, each once (by id), until one of `kind`.
pub async fn events_until(bootstrap: &str, user_id: &str, kind: &str) -> Vec<Value> {
    let (bootstrap, key, wanted) = (bootstrap.to_owned(), user_id.to_owned(), kind.to_owned());
    let records = tokio::task::spawn_blocking(move || {
        read_until(&bootstrap, EVENTS, WAIT, |records| {
            records
                .iter()
                .any(|r| r.key == key && r.value["type"] == wanted.as_str())
        })
    })
    .await
    .unwrap();
    let mut seen = HashSet::new();
    let events: Vec<Value> = records
        .into_iter()
        .filter(|r| r.key == user_id)
        .map(|r| r.value)
        .filter(|v| seen.insert(v["id"].to_string()))
        .collect();
    assert!(
        events.iter().any(|e| e["type"] == kind),
        "no {kind} event of the user on {EVENTS} within {WAIT:?}; there are {:?}",
        types(&events)
    );
    events
}

pub fn types(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("?"))
        .collect()
}

pub fn command(kind: &str, user_id: &str) -> Vec<u8> {
    json!({
        "specversion": "1.0", "id": uuid::Uuid::new_v4().to_string(), "source": "moderation",
        "type": kind, "datacontenttype": "application/json",
        "data": {"user_id": user_id, "reason": "spam"}
    })
    .to_string()
    .into_bytes()
}
