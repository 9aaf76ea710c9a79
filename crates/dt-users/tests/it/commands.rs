//! Commands from other services: applied once however often delivered; garbage goes to the
//! DLQ and the consumer carries on; a consumer dying before its commit does not apply twice.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::{Connection, Row};

use crate::events::assert_valid_event;
use crate::helpers::{
    MFA_KEY, PASSWORD, SIGNING_KEY, TestApp, assert_problem, mysql_server_url, redis_url,
};
use crate::kafka::{Broker, create_topics, produce, read_until, with_kafka};

const COMMANDS: &str = "devtalk.users.commands";

fn command(id: &str, kind: &str, user_id: &str) -> Vec<u8> {
    json!({
        "specversion": "1.0", "id": id, "source": "moderation", "type": kind,
        "datacontenttype": "application/json", "data": {"user_id": user_id, "reason": "spam"}
    })
    .to_string()
    .into_bytes()
}

async fn wait_until(limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let started = std::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "timed out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn outbox_count(app: &TestApp, name: &str) -> i64 {
    let mut conn = sqlx::AnyConnection::connect(&format!("{}/{}", mysql_server_url(), app.db_name))
        .await
        .unwrap();
    sqlx::query("SELECT COUNT(*) FROM outbox WHERE name = ?")
        .bind(name.to_owned())
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn the_same_ban_delivered_three_times_has_one_effect_and_one_event() {
    let broker = Broker::start().await;
    let bootstrap = broker.bootstrap();
    let app = TestApp::spawn_with(|s| with_kafka(s, &bootstrap)).await;
    let user = app.register("ada@example.com", "ada").await;
    let user_id = user["id"].as_str().unwrap().to_owned();
    let tokens = app.sign_in("ada@example.com").await;

    let ban = command("ban-1", "devtalk.user.ban", &user_id);
    for _ in 0..3 {
        produce(&bootstrap, COMMANDS, &user_id, &ban).await;
    }
    wait_until(Duration::from_secs(60), async || {
        app.login("ada@example.com", PASSWORD).await.status() == StatusCode::FORBIDDEN
    })
    .await;
    assert_problem(
        app.login("ada@example.com", PASSWORD).await,
        StatusCode::FORBIDDEN,
        "account_banned",
    )
    .await;
    assert_problem(
        app.login("ada@example.com", "a wrong password").await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    assert_problem(
        app.get_auth("/api/v1/users/current", &tokens.access).await,
        StatusCode::UNAUTHORIZED,
        "session_revoked",
    )
    .await;

    let key = user_id.clone();
    let bootstrap_read = bootstrap.clone();
    let records = tokio::task::spawn_blocking(move || {
        read_until(
            &bootstrap_read,
            "devtalk.users.events",
            Duration::from_secs(8),
            |_| false,
        )
    })
    .await
    .unwrap();
    let banned: Vec<&Value> = records
        .iter()
        .filter(|r| r.key == key && r.value["type"] == "devtalk.user.banned")
        .map(|r| &r.value)
        .collect();
    assert_eq!(banned.len(), 1, "one banned event");
    assert_eq!(banned[0]["data"]["reason"], "spam");
    assert_valid_event(banned[0]);
    assert_eq!(outbox_count(&app, "devtalk.user.banned").await, 1);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"commands_total{type="devtalk.user.ban",outcome="applied"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"commands_total{type="devtalk.user.ban",outcome="duplicate"} 2"#),
        "{metrics}"
    );

    // Unban: the account can sign in again.
    produce(
        &bootstrap,
        COMMANDS,
        &user_id,
        &command("unban-1", "devtalk.user.unban", &user_id),
    )
    .await;
    wait_until(Duration::from_secs(30), async || {
        app.login("ada@example.com", PASSWORD).await.status() == StatusCode::OK
    })
    .await;
    assert_eq!(outbox_count(&app, "devtalk.user.unbanned").await, 1);
}

#[tokio::test]
async fn garbage_goes_to_the_dlq_with_its_reason_and_the_next_command_is_applied() {
    let broker = Broker::start().await;
    let bootstrap = broker.bootstrap();
    let app = TestApp::spawn_with(|s| with_kafka(s, &bootstrap)).await;
    let user = app.register("ada@example.com", "ada").await;
    let user_id = user["id"].as_str().unwrap().to_owned();
    let tokens = app.sign_in("ada@example.com").await;

    produce(&bootstrap, COMMANDS, "x", b"this is not a command").await;
    produce(
        &bootstrap,
        COMMANDS,
        &user_id,
        &command(
            "unknown-user",
            "devtalk.user.ban",
            "00000000-0000-7000-8000-000000000000",
        ),
    )
    .await;
    produce(
        &bootstrap,
        COMMANDS,
        &user_id,
        &command("revoke-1", "devtalk.user.revoke_sessions", &user_id),
    )
    .await;

    wait_until(Duration::from_secs(60), async || {
        app.current_status(&tokens.access).await == StatusCode::UNAUTHORIZED
    })
    .await;
    let read_from = bootstrap.clone();
    let dlq = tokio::task::spawn_blocking(move || {
        read_until(
            &read_from,
            "devtalk.users.commands.dlq",
            Duration::from_secs(30),
            |r| r.len() >= 2,
        )
    })
    .await
    .unwrap();
    assert_eq!(dlq.len(), 2);
    assert_eq!(dlq[0].raw, b"this is not a command");
    assert!(
        dlq[0].headers["dlq-reason"].contains("not JSON"),
        "{:?}",
        dlq[0].headers
    );
    assert_eq!(dlq[0].headers["dlq-original-topic"], COMMANDS);
    assert_eq!(dlq[1].headers["dlq-reason"], "no such account");
    assert_eq!(outbox_count(&app, "devtalk.user.sessions_revoked").await, 1);
}

#[tokio::test]
async fn a_consumer_killed_before_its_commit_does_not_apply_a_command_twice() {
    let broker = Broker::start().await;
    let bootstrap = broker.bootstrap();
    let app = TestApp::spawn().await;
    let user = app.register("ada@example.com", "ada").await;
    let user_id = user["id"].as_str().unwrap().to_owned();
    let consumer = |group: &str, log: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_dt-users"))
            .arg("consume")
            .env(
                "DT_USERS_DATABASE_URL",
                format!("{}/{}", mysql_server_url(), app.db_name),
            )
            .env("DT_USERS_REDIS_URL", redis_url())
            .env("DT_USERS_REDIS_KEY_PREFIX", &app.redis_prefix)
            .env("DT_USERS_SIGNING_KEYS", SIGNING_KEY.as_str())
            .env("DT_USERS_MFA_ENCRYPTION_KEY", MFA_KEY.as_str())
            .env("DT_USERS_KAFKA_BOOTSTRAP_SERVERS", &bootstrap)
            .env("DT_USERS_KAFKA_IDEMPOTENCE", "false")
            .env("DT_USERS_KAFKA_GROUP_ID", group)
            .env("DT_USERS_KAFKA_SESSION_TIMEOUT_MS", "3000")
            .env("DT_USERS_KAFKA_HEARTBEAT_INTERVAL_MS", "300")
            .env("DT_USERS_KAFKA_FETCH_WAIT_MAX_MS", "50")
            .env("RUST_LOG", "info")
            .stdout(std::fs::File::create(log).unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let dir = std::env::temp_dir().join(format!(
        "dt-users-consume-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    produce(
        &bootstrap,
        COMMANDS,
        &user_id,
        &command("ban-once", "devtalk.user.ban", &user_id),
    )
    .await;
    let mut first = consumer("group-a", &dir.join("a.log"));
    wait_until(Duration::from_secs(60), async || {
        outbox_count(&app, "devtalk.user.banned").await == 1
    })
    .await;
    let _ = first.kill();
    let _ = first.wait();

    // A consumer that never saw a commit (a fresh group reads from the start, as after a crash
    // before the commit) is handed the same command again.
    let log = dir.join("b.log");
    let mut second = consumer("group-b", &log);
    wait_until(Duration::from_secs(60), async || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("command already handled")
    })
    .await;
    let _ = second.kill();
    let _ = second.wait();
    assert_eq!(outbox_count(&app, "devtalk.user.banned").await, 1);
    assert_problem(
        app.login("ada@example.com", PASSWORD).await,
        StatusCode::FORBIDDEN,
        "account_banned",
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_consumer_started_before_its_topic_exists_warns_and_then_applies_commands() {
    let broker = Broker::start_without_topics().await;
    let bootstrap = broker.bootstrap();
    let app = TestApp::spawn().await;
    let user = app.register("ada@example.com", "ada").await;
    let user_id = user["id"].as_str().unwrap().to_owned();
    let log = std::env::temp_dir().join(format!(
        "dt-users-consume-{}.log",
        uuid::Uuid::new_v4().simple()
    ));
    let mut consumer = std::process::Command::new(env!("CARGO_BIN_EXE_dt-users"))
        .arg("consume")
        .env(
            "DT_USERS_DATABASE_URL",
            format!("{}/{}", mysql_server_url(), app.db_name),
        )
        .env("DT_USERS_REDIS_URL", redis_url())
        .env("DT_USERS_REDIS_KEY_PREFIX", &app.redis_prefix)
        .env("DT_USERS_SIGNING_KEYS", SIGNING_KEY.as_str())
        .env("DT_USERS_MFA_ENCRYPTION_KEY", MFA_KEY.as_str())
        .env("DT_USERS_KAFKA_BOOTSTRAP_SERVERS", &bootstrap)
        .env("DT_USERS_KAFKA_IDEMPOTENCE", "false")
        .env("DT_USERS_KAFKA_GROUP_ID", "group-late-topic")
        .env("DT_USERS_KAFKA_SESSION_TIMEOUT_MS", "3000")
        .env("DT_USERS_KAFKA_HEARTBEAT_INTERVAL_MS", "300")
        .env("DT_USERS_KAFKA_FETCH_WAIT_MAX_MS", "50")
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(30), async || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("the commands topic does not exist")
    })
    .await;

    create_topics(&bootstrap).await;
    produce(
        &bootstrap,
        COMMANDS,
        &user_id,
        &command("ban-late", "devtalk.user.ban", &user_id),
    )
    .await;
    wait_until(Duration::from_secs(60), async || {
        outbox_count(&app, "devtalk.user.banned").await == 1
    })
    .await;
    let _ = consumer.kill();
    let _ = consumer.wait();
    let _ = std::fs::remove_file(&log);
}

/// Sends the ban command `id` for `user_id`.
async fn ban(bootstrap: &str, id: &str, user_id: &str) {
    produce(
        bootstrap,
        COMMANDS,
        user_id,
        &command(id, "devtalk.user.ban", user_id),
    )
    .await;
}

/// The DLQ's records, once there are at least `n`.
async fn dead_letters(bootstrap: &str, n: usize) -> Vec<crate::kafka::Record> {
    let read_from = bootstrap.to_owned();
    tokio::task::spawn_blocking(move || {
        read_until(
            &read_from,
            "devtalk.users.commands.dlq",
            Duration::from_secs(60),
            |r| r.len() >= n,
        )
    })
    .await
    .unwrap()
}

/// Registers an account; its id.
async fn registered(app: &TestApp, email: &str, username: &str) -> String {
    app.register(email, username).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn account_status(app: &TestApp, user_id: &str) -> String {
    sqlx::query("SELECT status FROM users WHERE id = ?")
        .bind(user_id.to_owned())
        .fetch_one(&mut app.db().await)
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_command_that_keeps_failing_goes_to_the_dlq_after_its_attempts_and_the_next_is_applied() {
    let broker = Broker::start().await;
    let bootstrap = broker.bootstrap();
    let app = TestApp::spawn_with(|s| {
        with_kafka(s, &bootstrap);
        s.command_max_attempts = 3;
        s.database_lock_timeout = 1;
    })
    .await;
    let stuck = registered(&app, "ada@example.com", "ada").await;
    let next = registered(&app, "bob@example.com", "bob").await;

    // Another transaction holds Ada's row for as long as the command is tried: every attempt
    // waits out its lock and fails, though the database itself answers.
    let mut holder = app.db().await;
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("SELECT id FROM users WHERE id = ? FOR UPDATE")
        .bind(stuck.clone())
        .fetch_one(&mut holder)
        .await
        .unwrap();
    ban(&bootstrap, "poison-1", &stuck).await;
    ban(&bootstrap, "after-1", &next).await;

    let dlq = dead_letters(&bootstrap, 1).await;
    assert_eq!(dlq.len(), 1);
    let reason = &dlq[0].headers["dlq-reason"];
    assert!(
        reason.starts_with("not applied after 3 attempts:"),
        "{reason}"
    );
    assert_eq!(dlq[0].value["id"], "poison-1");
    wait_until(Duration::from_secs(30), async || {
        account_status(&app, &next).await == "banned"
    })
    .await;
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    assert_eq!(account_status(&app, &stuck).await, "active");

    // A failure is not final for its id: the same command sent again, once its cause is gone,
    // is applied.
    ban(&bootstrap, "poison-1", &stuck).await;
    wait_until(Duration::from_secs(30), async || {
        account_status(&app, &stuck).await == "banned"
    })
    .await;
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"commands_total{type="devtalk.user.ban",outcome="rejected"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_command_that_cannot_be_applied_goes_to_the_dlq_at_once() {
    let broker = Broker::start().await;
    let bootstrap = broker.bootstrap();
    let app = TestApp::spawn_with(|s| {
        with_kafka(s, &bootstrap);
        // Were the failure retried, the DLQ would be reached only after these attempts.
        s.command_max_attempts = 1_000;
    })
    .await;
    let broken = registered(&app, "ada@example.com", "ada").await;
    let next = registered(&app, "bob@example.com", "bob").await;
    // A row no release of dt-users writes: reading it fails however often it is tried.
    sqlx::query("UPDATE users SET status = 'unheard-of' WHERE id = ?")
        .bind(broken.clone())
        .execute(&mut app.db().await)
        .await
        .unwrap();
    ban(&bootstrap, "broken-1", &broken).await;
    ban(&bootstrap, "after-2", &next).await;
    let dlq = dead_letters(&bootstrap, 1).await;
    let reason = &dlq[0].headers["dlq-reason"];
    assert!(reason.starts_with("cannot be applied:"), "{reason}");
    wait_until(Duration::from_secs(30), async || {
        account_status(&app, &next).await == "banned"
    })
    .await;
}

#[tokio::test]
async fn while_the_database_is_down_a_command_waits_instead_of_going_to_the_dlq() {
    let broker = Broker::start().await;
    let bootstrap = broker.bootstrap();
    let mut proxy = crate::helpers::CuttableProxy::start("127.0.0.1:3306").await;
    let port = proxy.port;
    let app = TestApp::spawn_with(|s| {
        with_kafka(s, &bootstrap);
        s.command_max_attempts = 2;
        let url = s.database_url.clone().unwrap();
        let name = url.rsplit('/').next().unwrap().to_owned();
        let server = mysql_server_url().replace("127.0.0.1:3306", &format!("127.0.0.1:{port}"));
        s.database_url = Some(format!("{server}/{name}"));
    })
    .await;
    let user_id = registered(&app, "ada@example.com", "ada").await;
    proxy.cut().await;
    ban(&bootstrap, "during-outage", &user_id).await;
    // Long enough for both attempts and more: the command must still be waiting.
    tokio::time::sleep(Duration::from_secs(12)).await;
    proxy.restore().await;
    wait_until(Duration::from_secs(60), async || {
        account_status(&app, &user_id).await == "banned"
    })
    .await;
    let dlq = {
        let read_from = bootstrap.clone();
        tokio::task::spawn_blocking(move || {
            read_until(
                &read_from,
                "devtalk.users.commands.dlq",
                Duration::from_secs(3),
                |_| false,
            )
        })
        .await
        .unwrap()
    };
    assert!(dlq.is_empty(), "dead-lettered during an outage: {dlq:?}");
}
