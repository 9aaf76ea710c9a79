//! Emailed tokens across a rotation of their secret: an email queued before the rotation is
//! sent with a link made by the secret it was queued under, which still works; an email whose
//! secret is gone is not sent at all (its link could not work) and its job ends dead.

use std::time::Duration;

use dt_users::security::keys::generate_pem;
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};

use dt_users::config::Settings;

use crate::helpers::{Instance, TestApp, redis_contents};
use crate::mail::{SmtpSink, token_in, with_mail};

/// The secret an email to `to` was queued under, as its outbox intent records it.
async fn queued_under(app: &TestApp, to: &str) -> String {
    let mut conn = app.db().await;
    let rows = sqlx::query("SELECT payload FROM outbox WHERE name = 'welcome'")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let intent = rows
        .iter()
        .map(|row| serde_json::from_str::<Value>(&sqlx::Row::get::<String, _>(row, 0)).unwrap())
        .find(|intent| intent["to"] == to)
        .unwrap_or_else(|| panic!("no welcome email to {to} in the outbox"));
    intent["token_key"].as_str().unwrap().to_owned()
}

async fn verify(instance: &Instance, token: &str) -> StatusCode {
    reqwest::Client::new()
        .post(instance.url("/api/v1/auth/email/verify"))
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap()
        .status()
}

/// The jobs of `app`'s queue that ended dead.
async fn dead_jobs(app: &TestApp) -> Vec<String> {
    let key = format!("{}:jobs:send_email:dead", app.redis_prefix);
    redis_contents(&key)
        .await
        .into_iter()
        .flat_map(|(_, members)| members)
        .collect()
}

/// Queues Ada's welcome email under the secrets `before` sets, sends it from an instance whose
/// secrets `after` rotates, and returns what verifying with its link answers.
async fn welcome_sent_after_a_rotation(
    before: impl FnOnce(&mut Settings),
    after: impl FnOnce(&mut Settings),
) -> StatusCode {
    let app = TestApp::spawn_with(before).await;
    app.register("ada@example.com", "ada").await;
    let key_id = queued_under(&app, "ada@example.com").await;
    assert_eq!(key_id, app.app.email_tokens.current_key_id());

    let sink = SmtpSink::start().await;
    let rotated = app
        .another_instance(|s| {
            with_mail(s, &sink.url());
            after(s);
        })
        .await;
    assert_ne!(rotated.app.email_tokens.current_key_id(), key_id);

    let welcome = sink.wait_for("ada@example.com", "Welcome").await;
    verify(&rotated, &token_in(&welcome)).await
}

#[tokio::test]
async fn an_email_queued_before_a_signing_key_rotation_carries_a_working_link() {
    let (k1, k2) = (generate_pem().unwrap(), generate_pem().unwrap());
    let before = k1.clone();
    let status = welcome_sent_after_a_rotation(
        |s| s.signing_keys = Some(SecretString::from(before)),
        |s| s.signing_keys = Some(SecretString::from(format!("{k2}\n{k1}"))),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn an_email_queued_before_an_email_token_secret_rotation_carries_a_working_link() {
    let old = "the old secret of the emailed tokens and long enough".to_owned();
    let new = "the new secret of the emailed tokens and long enough too".to_owned();
    let before = old.clone();
    let status = welcome_sent_after_a_rotation(
        |s| s.email_token_secrets = Some(SecretString::from(before)),
        |s| s.email_token_secrets = Some(SecretString::from(format!("{new},{old}"))),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn an_email_whose_secret_is_no_longer_configured_is_not_sent_and_its_job_ends_dead() {
    let old = "the old secret of the emailed tokens and long enough".to_owned();
    let new = "the new secret of the emailed tokens and long enough too".to_owned();
    let before = old.clone();
    let app = TestApp::spawn_with(move |s| {
        s.email_token_secrets = Some(SecretString::from(before));
    })
    .await;
    app.register("gone@example.com", "gone").await;
    let key_id = queued_under(&app, "gone@example.com").await;

    let sink = SmtpSink::start().await;
    let rotated = app
        .another_instance(|s| {
            with_mail(s, &sink.url());
            s.email_token_secrets = Some(SecretString::from(new));
        })
        .await;
    assert_ne!(rotated.app.email_tokens.current_key_id(), key_id);
    let registered = reqwest::Client::new()
        .post(rotated.url("/api/v1/auth/register"))
        .json(&json!({
            "email": "kept@example.com",
            "username": "kept",
            "password": crate::helpers::PASSWORD,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), StatusCode::CREATED);

    let welcome = sink.wait_for("kept@example.com", "Welcome").await;
    assert_eq!(verify(&rotated, &token_in(&welcome)).await, StatusCode::OK);
    let started = std::time::Instant::now();
    while dead_jobs(&app).await.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the job of the email whose secret is gone did not end dead"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dead = dead_jobs(&app).await;
    assert_eq!(dead.len(), 1);
    let record = redis_contents(&format!(
        "{}:jobs:send_email:meta:{}",
        app.redis_prefix, dead[0]
    ))
    .await;
    let record = format!("{record:?}");
    assert!(
        record.contains("no longer configured"),
        "the dead job is not the one whose secret is gone: {record}"
    );
    // Whatever could still be on its way has had time to arrive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(sink.messages_to("gone@example.com").is_empty());
    assert_eq!(sink.messages().len(), 1);
}
