//! A database that refuses for a passing reason — a row lock held past the lock timeout, a
//! deadlock, SQLite's write lock taken elsewhere: the transaction runs once more, and a second
//! refusal is 503 `unavailable` with `Retry-After`, never a 500.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::{Connection, Row};

use crate::helpers::{PASSWORD, SqliteFile, TestApp, assert_problem, mysql_server_url};

const RETRIES: &str = "database_retries_total";

/// The MySQL/MariaDB error number of a failed statement, if the database refused it.
fn mysql_error_number(e: &sqlx::Error) -> Option<u16> {
    e.as_database_error()?
        .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .map(sqlx::mysql::MySqlDatabaseError::number)
}

/// Waits until a connection of the app to the test's database runs `statement` (the start of
/// its text); fails if `request` finished first.
///
/// The live process list, not `INNODB_TRX`: InnoDB refreshes that table only once it has been
/// left unread for 100 ms, so a poll can be shown a lock wait that is long over.
async fn wait_until_running(
    app: &TestApp,
    request: &tokio::task::JoinHandle<reqwest::Response>,
    statement: &str,
) {
    let mut monitor = sqlx::AnyConnection::connect(&mysql_server_url())
        .await
        .unwrap();
    for _ in 0..1000 {
        assert!(
            !request.is_finished(),
            "the request ended without running {statement:?}"
        );
        let running: i64 = sqlx::query(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
             WHERE DB = ? AND ID <> CONNECTION_ID() AND INFO LIKE CONCAT(?, '%')",
        )
        .bind(app.db_name.clone())
        .bind(statement.to_owned())
        .fetch_one(&mut monitor)
        .await
        .unwrap()
        .get(0);
        if running > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the app never ran {statement:?}");
}

fn spawn_patch(
    app: &TestApp,
    access_token: &str,
    body: Value,
) -> tokio::task::JoinHandle<reqwest::Response> {
    let request = app
        .client
        .patch(app.url("/api/v1/users/current"))
        .bearer_auth(access_token)
        .json(&body);
    tokio::spawn(async move { request.send().await.unwrap() })
}

#[tokio::test]
async fn a_row_lock_outlasting_both_attempts_is_503_unavailable_then_the_change_succeeds() {
    let app = TestApp::spawn_with(|s| s.database_lock_timeout = 1).await;
    let tokens = app.signed_in().await;
    let user_id = app.current_user_id(&tokens.access).await;

    let mut conn = app.db().await;
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("SELECT id FROM users WHERE id = ? FOR UPDATE")
        .bind(user_id.clone())
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let retries_before = app.counter(RETRIES).await;
    let response = app
        .patch_current(&tokens.access, &json!({"display_name": "Ada L."}))
        .await;
    assert_eq!(response.headers()["retry-after"], "1");
    assert_problem(response, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    // The first lock wait timed out and was retried; the retry timed out too.
    assert!(app.counter(RETRIES).await >= retries_before + 1.0);
    let stored: Option<String> = sqlx::query("SELECT display_name FROM users WHERE id = ?")
        .bind(user_id.clone())
        .fetch_one(&mut *tx)
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, None, "a refused change left no trace");
    tx.rollback().await.unwrap();

    let response = app
        .patch_current(&tokens.access, &json!({"display_name": "Ada L."}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["display_name"], "Ada L.");
}

#[tokio::test]
async fn a_row_lock_released_while_the_change_is_retried_lets_the_retry_succeed() {
    let app = TestApp::spawn_with(|s| s.database_lock_timeout = 1).await;
    let tokens = app.signed_in().await;
    let user_id = app.current_user_id(&tokens.access).await;

    let mut conn = app.db().await;
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("SELECT id FROM users WHERE id = ? FOR UPDATE")
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let retries_before = app.counter(RETRIES).await;
    let request = spawn_patch(&app, &tokens.access, json!({"display_name": "Ada L."}));
    // The lock goes once the first attempt has timed out and the retry has begun (rather than
    // after a fixed delay, which a slow machine could make too short or too long).
    let mut retried = false;
    for _ in 0..1500 {
        if app.counter(RETRIES).await > retries_before {
            retried = true;
            break;
        }
        assert!(
            !request.is_finished(),
            "the request did not wait for the lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(retried, "the lock wait was never retried");
    tx.rollback().await.unwrap();

    let response = request.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["display_name"], "Ada L.");
    assert!(app.counter(RETRIES).await >= 1.0);
}

/// Who a forced deadlock rolled back.
#[derive(Debug, Default)]
struct Victims {
    app: u32,
    test: u32,
    answered_503: u32,
}

#[tokio::test]
async fn a_deadlock_is_retried_or_503_never_500_and_verifies_the_account_exactly_once() {
    const ROUNDS: usize = 5;
    // Lock waits far longer than a round: a retry can only come from the deadlock.
    let app = TestApp::spawn_with(|s| s.database_lock_timeout = 30).await;
    // Rows the test's transaction inserts so that it weighs more than the app's, which InnoDB
    // then prefers to roll back.
    let mut setup = app.db().await;
    sqlx::query("CREATE TABLE ballast (n INT NOT NULL PRIMARY KEY) ENGINE = InnoDB")
        .execute(&mut setup)
        .await
        .unwrap();
    let values: Vec<String> = (0..200).map(|n| format!("({n})")).collect();
    let ballast = format!("INSERT INTO ballast (n) VALUES {}", values.join(","));

    let mut victims = Victims::default();
    for round in 0..ROUNDS {
        let email = format!("round{round}@example.com");
        let user = app.register(&email, &format!("round{round}")).await;
        let user_id = user["id"].as_str().unwrap().to_owned();
        let token = app.emailed_token(&user_id, "welcome").await;
        let token_hash: String = Sha256::digest(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();

        let mut conn = app.db().await;
        let mut tx = conn.begin().await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(ballast.clone()))
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query("SELECT token_hash FROM email_tokens WHERE token_hash = ? FOR UPDATE")
            .bind(token_hash)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        let retries_before = app.counter(RETRIES).await;
        // The app locks the account, then marks the token used: it waits for the test there.
        let request = app
            .client
            .post(app.url("/api/v1/auth/email/verify"))
            .json(&json!({"token": token}));
        let request = tokio::spawn(async move { request.send().await.unwrap() });
        wait_until_running(&app, &request, "UPDATE email_tokens SET used_at").await;
        // The test now waits for the account the app holds: a cycle.
        let ours = sqlx::query("SELECT id FROM users WHERE id = ? FOR UPDATE")
            .bind(user_id.clone())
            .fetch_one(&mut *tx)
            .await;
        let test_was_victim = match &ours {
            Ok(_) => false,
            Err(e) => {
                assert_eq!(mysql_error_number(e), Some(1213), "round {round}: {e}");
                true
            }
        };
        tx.rollback().await.unwrap();

        let response = request.await.unwrap();
        let retried = app.counter(RETRIES).await - retries_before;
        // Had no deadlock happened, the test could not have had the account's row while the
        // app held it (nor been refused with 1213): so one of the two was rolled back.
        assert!(
            test_was_victim || retried >= 1.0,
            "round {round}: the test got the lock but the app never retried"
        );
        if test_was_victim {
            victims.test += 1;
        } else {
            victims.app += 1;
        }
        match response.status() {
            StatusCode::OK => {
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["email_verified"], true, "round {round}");
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                victims.answered_503 += 1;
                assert_problem(response, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
                // Nothing was used up: the link still works.
                let again = app
                    .post_json("/api/v1/auth/email/verify", &json!({"token": token}))
                    .await;
                assert_eq!(again.status(), StatusCode::OK, "round {round}");
            }
            other => panic!("round {round}: {other} {}", response.text().await.unwrap()),
        }

        // Verified, once: the link is spent and one event tells of it.
        assert_problem(
            app.post_json("/api/v1/auth/email/verify", &json!({"token": token}))
                .await,
            StatusCode::BAD_REQUEST,
            "invalid_token",
        )
        .await;
        let tokens = app.sign_in(&email).await;
        let me: Value = app
            .get_auth("/api/v1/users/current", &tokens.access)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(me["email_verified"], true, "round {round}");
        let events: i64 = sqlx::query("SELECT COUNT(*) FROM outbox WHERE user_id = ? AND name = ?")
            .bind(user_id)
            .bind("devtalk.user.email_verified")
            .fetch_one(&mut setup)
            .await
            .unwrap()
            .get(0);
        assert_eq!(events, 1, "round {round}");
    }
    println!("deadlock victims over {ROUNDS} rounds: {victims:?}");
    // Without the ballast InnoDB rolls back the test's transaction every time; with it, the
    // app's: its handling of a deadlock must have been exercised.
    assert!(victims.app > 0, "the app was never the victim: {victims:?}");
}

#[tokio::test]
async fn sqlite_write_lock_held_elsewhere_is_503_unavailable_then_writes_succeed() {
    let file = SqliteFile::fresh();
    let url = file.url();
    let app = TestApp::spawn_with(|s| {
        s.database_url = Some(url);
        s.database_lock_timeout = 1;
    })
    .await;
    let tokens = app.signed_in().await;

    let mut conn = file.connect().await;
    let tx = conn.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let retries_before = app.counter(RETRIES).await;
    let response = app
        .patch_current(&tokens.access, &json!({"display_name": "Ada L."}))
        .await;
    assert_eq!(response.headers()["retry-after"], "1");
    assert_problem(response, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    assert!(app.counter(RETRIES).await >= retries_before + 1.0);
    let register = app
        .post_json(
            "/api/v1/auth/register",
            &json!({"email": "bob@example.com", "username": "bob", "password": PASSWORD}),
        )
        .await;
    assert_problem(register, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    tx.rollback().await.unwrap();

    let response = app
        .patch_current(&tokens.access, &json!({"display_name": "Ada L."}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["display_name"], "Ada L.");
    app.register("bob@example.com", "bob").await;
    app.sign_in("bob@example.com").await;
}
