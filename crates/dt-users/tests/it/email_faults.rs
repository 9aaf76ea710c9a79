//! Emails are never lost: not when the mail server or the job queue is down as the user acts,
//! not when a worker dies mid-send (at most one duplicate then), and a job that keeps failing
//! ends dead without blocking the others.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{
    CuttableProxy, MFA_KEY, PASSWORD, SIGNING_KEY, TestApp, mysql_server_url, redis_url,
};
use crate::mail::{SmtpSink, spawn_with_mail, token_in};

#[tokio::test]
async fn smtp_down_at_registration_the_email_arrives_when_it_is_back() {
    let mut sink = SmtpSink::reserved();
    let app = spawn_with_mail(&sink.url(), |_| {}).await;
    let response = app
        .post_json(
            "/api/v1/auth/register",
            &json!({"email": "ada@example.com", "username": "ada", "password": PASSWORD}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    tokio::time::sleep(Duration::from_secs(2)).await;
    sink.launch().await;
    let welcome = sink.wait_for("ada@example.com", "Welcome").await;
    token_in(&welcome);
    assert_eq!(sink.messages_to("ada@example.com").len(), 1);
}

#[tokio::test]
async fn job_queue_down_at_registration_the_email_arrives_when_it_is_back() {
    let sink = SmtpSink::start().await;
    let mut proxy = CuttableProxy::start("127.0.0.1:6379").await;
    let jobs_url = format!("redis://127.0.0.1:{}", proxy.port);
    proxy.cut().await;
    let app = spawn_with_mail(&sink.url(), |s| s.jobs_url = Some(jobs_url)).await;
    let response = app
        .post_json(
            "/api/v1/auth/register",
            &json!({"email": "ada@example.com", "username": "ada", "password": PASSWORD}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(sink.messages().is_empty());
    proxy.restore().await;
    sink.wait_for_within("ada@example.com", "Welcome", Duration::from_secs(45))
        .await;
    assert_eq!(sink.messages_to("ada@example.com").len(), 1);
}

#[tokio::test]
async fn a_job_that_always_fails_ends_dead_and_the_next_job_still_runs() {
    let sink = SmtpSink::start().await;
    let app = spawn_with_mail(&sink.url(), |s| {
        s.job_max_attempts = 3;
        s.job_backoff_ms = 50;
        s.job_backoff_max_ms = 100;
    })
    .await;
    app.register("transient-fail@example.com", "doomed").await;
    let dead = async {
        loop {
            let text = app.metrics().await;
            if text
                .lines()
                .any(|l| l.starts_with("jobs_dead_total") && !l.ends_with(" 0"))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), dead)
        .await
        .expect("the failing job never ended dead");
    app.register("bob@example.com", "bob").await;
    sink.wait_for("bob@example.com", "Welcome").await;
    // The dead job is not retried behind the scenes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(sink.messages_to("transient-fail@example.com").is_empty());
}

struct WorkerProcess(Child);

impl WorkerProcess {
    fn start(app: &TestApp, smtp_url: &str, jobs_namespace: &str) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_dt-users"))
            .arg("worker")
            .env(
                "DT_USERS_DATABASE_URL",
                format!("{}/{}", mysql_server_url(), app.db_name),
            )
            .env("DT_USERS_REDIS_URL", redis_url())
            .env("DT_USERS_REDIS_KEY_PREFIX", &app.redis_prefix)
            .env("DT_USERS_JOBS_URL", redis_url())
            .env("DT_USERS_JOBS_NAMESPACE", jobs_namespace)
            .env("DT_USERS_SMTP_URL", smtp_url)
            .env("DT_USERS_SIGNING_KEYS", SIGNING_KEY.as_str())
            .env("DT_USERS_MFA_ENCRYPTION_KEY", MFA_KEY.as_str())
            .env("DT_USERS_PUBLIC_URL", "https://devtalk.example")
            .env("DT_USERS_JOBS_HEARTBEAT_SECS", "1")
            .env("DT_USERS_JOBS_MISSED_HEARTBEATS", "2")
            .env("DT_USERS_EMAIL_CLAIM_LEASE_MS", "2000")
            .env("DT_USERS_JOB_BACKOFF_MS", "200")
            .env("DT_USERS_JOB_BACKOFF_MAX_MS", "1000")
            .env("DT_USERS_JOB_MAX_ATTEMPTS", "40")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self(child)
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn a_worker_killed_while_sending_is_replaced_and_the_email_arrives_at_most_twice() {
    let sink = SmtpSink::start().await;
    std::fs::write(sink.dir.join("delay_ms"), "4000").unwrap();
    let namespace = format!("dtu-test:{}:jobs", uuid::Uuid::new_v4().simple());
    let ns = namespace.clone();
    let smtp = sink.url();
    // The service runs only the relay; the worker is a separate process.
    let app = spawn_with_mail(&smtp, move |s| {
        s.run_background_in_serve = false;
        s.jobs_namespace = ns;
    })
    .await;
    let relay = app.start_relay().await;
    let mut first = WorkerProcess::start(&app, &smtp, &namespace);
    app.register("ada@example.com", "ada").await;

    let receiving = sink.dir.join("receiving");
    let started = std::time::Instant::now();
    while !receiving.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the worker never started sending"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill();
    std::fs::remove_file(sink.dir.join("delay_ms")).unwrap();

    let _second = WorkerProcess::start(&app, &smtp, &namespace);
    let welcome = sink
        .wait_for_within("ada@example.com", "Welcome", Duration::from_secs(60))
        .await;
    // Give a possible second copy time to arrive, then count.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let copies = sink.messages_to("ada@example.com");
    assert!((1..=2).contains(&copies.len()), "{} copies", copies.len());
    assert!(
        copies
            .iter()
            .all(|m| m["message_id"] == welcome["message_id"]),
        "a duplicate must be the same message"
    );
    let token = token_in(&welcome);
    let verified = app
        .post_json("/api/v1/auth/email/verify", &json!({"token": token}))
        .await;
    assert_eq!(verified.status(), StatusCode::OK);
    relay.shutdown().await;
}
