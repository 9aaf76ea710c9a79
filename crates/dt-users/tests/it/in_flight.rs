//! Promises under concurrency: sign-ins running while sessions are revoked never outlive the
//! revocation; guesses sent all at once get no further than guesses sent one by one; a rehash
//! on sign-in never undoes a ban; a session's state stays the same size however often it is
//! refreshed; a ban outlives a deletion. Each race runs for several rounds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use dt_users::service::{Command, CommandOutcome};
use dt_users::sessions::SessionStore;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, Tokens, assert_problem};

/// Sign-in loops running at once against one account.
const CLIENTS: usize = 8;

/// Clients signing in to one account in a loop, collecting every session they get.
struct SignInLoops {
    stop: Arc<AtomicBool>,
    obtained: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Tokens>>>,
}

impl SignInLoops {
    fn start(app: &TestApp, email: &str, password: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let obtained = Arc::new(AtomicUsize::new(0));
        let tasks = (0..CLIENTS)
            .map(|_| {
                let (client, url) = (app.client.clone(), app.url("/api/v1/auth/login"));
                let body = json!({"email": email, "password": password});
                let (stop, obtained) = (stop.clone(), obtained.clone());
                tokio::spawn(async move {
                    let mut sessions = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let response = client.post(&url).json(&body).send().await.unwrap();
                        if response.status() == StatusCode::OK {
                            sessions.push(Tokens::from(response.json::<Value>().await.unwrap()));
                            obtained.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    sessions
                })
            })
            .collect();
        Self {
            stop,
            obtained,
            tasks,
        }
    }

    /// Waits until the loops have signed in a few times, so that more are surely in flight.
    async fn running(&self) {
        while self.obtained.load(Ordering::SeqCst) < CLIENTS {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Lets the loops run on a little past the revocation, then stops them.
    async fn finish(self) -> Vec<Tokens> {
        tokio::time::sleep(Duration::from_millis(30)).await;
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Vec::new();
        for task in self.tasks {
            all.extend(task.await.unwrap());
        }
        all
    }
}

/// Every session in `sessions` is dead: its access token and its refresh token are refused.
async fn assert_all_dead(app: &TestApp, sessions: &[Tokens], what: &str) {
    let mut alive = 0;
    for tokens in sessions {
        let access = app.current_status(&tokens.access).await;
        let refresh = app.refresh(&tokens.refresh).await.status();
        if access != StatusCode::UNAUTHORIZED || refresh != StatusCode::UNAUTHORIZED {
            alive += 1;
        }
    }
    assert_eq!(
        alive,
        0,
        "{what}: {alive} of {} sessions signed in with the old credentials are alive",
        sessions.len()
    );
}

/// Registers `user{round}` and signs the owner in; returns the email and the owner's tokens.
async fn account(app: &TestApp, round: usize) -> (String, Tokens) {
    let email = format!("user{round}@example.com");
    app.register(&email, &format!("user{round}")).await;
    let owner = app.sign_in(&email).await;
    (email, owner)
}

const NEW_PASSWORD: &str = "an entirely new passphrase 7";

#[tokio::test]
async fn sign_ins_in_flight_do_not_outlive_a_password_change() {
    let app = TestApp::spawn().await;
    for round in 0..10 {
        let (email, owner) = account(&app, round).await;
        let loops = SignInLoops::start(&app, &email, PASSWORD);
        loops.running().await;
        let changed = app
            .patch_current(
                &owner.access,
                &json!({"new_password": NEW_PASSWORD, "current_password": PASSWORD}),
            )
            .await;
        assert_eq!(changed.status(), StatusCode::OK);
        let sessions = loops.finish().await;
        assert_all_dead(&app, &sessions, &format!("round {round}")).await;
        // The session that changed the password stays.
        assert_eq!(app.current_status(&owner.access).await, StatusCode::OK);
    }
}

#[tokio::test]
async fn sign_ins_in_flight_do_not_outlive_a_password_reset() {
    let app = TestApp::spawn().await;
    for round in 0..8 {
        let (email, owner) = account(&app, round).await;
        let user_id = app.current_user_id(&owner.access).await;
        let forgot = app
            .post_json("/api/v1/auth/password/forgot", &json!({"email": email}))
            .await;
        assert_eq!(forgot.status(), StatusCode::ACCEPTED);
        let token = app.awaited_token(&user_id, "password_reset").await;
        let loops = SignInLoops::start(&app, &email, PASSWORD);
        loops.running().await;
        let reset = app
            .post_json(
                "/api/v1/auth/password/reset",
                &json!({"token": token, "new_password": NEW_PASSWORD}),
            )
            .await;
        assert_eq!(reset.status(), StatusCode::NO_CONTENT);
        let mut sessions = loops.finish().await;
        sessions.push(owner);
        assert_all_dead(&app, &sessions, &format!("round {round}")).await;
    }
}

#[tokio::test]
async fn sign_ins_in_flight_do_not_outlive_a_ban() {
    let app = TestApp::spawn().await;
    for round in 0..10 {
        let (email, owner) = account(&app, round).await;
        let user_id = app.current_user_id(&owner.access).await;
        let loops = SignInLoops::start(&app, &email, PASSWORD);
        loops.running().await;
        let ban = Command::Ban {
            user_id: user_id.parse().unwrap(),
            reason: Some("spam".into()),
        };
        let outcome = app
            .app
            .apply_command(&format!("ban-{round}"), &ban)
            .await
            .unwrap();
        assert_eq!(outcome, CommandOutcome::Applied);
        let mut sessions = loops.finish().await;
        sessions.push(owner);
        assert_all_dead(&app, &sessions, &format!("round {round}")).await;
        assert_problem(
            app.login(&email, PASSWORD).await,
            StatusCode::FORBIDDEN,
            "account_banned",
        )
        .await;
    }
}

#[tokio::test]
async fn sign_ins_in_flight_do_not_outlive_a_deletion() {
    let app = TestApp::spawn().await;
    for round in 0..10 {
        let (email, owner) = account(&app, round).await;
        let loops = SignInLoops::start(&app, &email, PASSWORD);
        loops.running().await;
        let deleted = app.delete_account(&owner.access, PASSWORD).await;
        assert_eq!(deleted.status(), StatusCode::ACCEPTED);
        let mut sessions = loops.finish().await;
        sessions.push(owner);
        assert_all_dead(&app, &sessions, &format!("round {round}")).await;
    }
}

/// Sends the requests at once and returns their statuses and problem codes.
pub(crate) async fn all_at_once(
    requests: Vec<reqwest::RequestBuilder>,
) -> Vec<(StatusCode, Option<String>)> {
    // Every request is on its way before the first answer is read.
    let handles: Vec<_> = requests
        .into_iter()
        .map(|request| {
            tokio::spawn(async move {
                let response = request.send().await.unwrap();
                let status = response.status();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                (status, body["code"].as_str().map(str::to_owned))
            })
        })
        .collect();
    let mut answers = Vec::new();
    for handle in handles {
        answers.push(handle.await.unwrap());
    }
    answers
}

/// Exactly one of `answers` is a 200; the rest are 401s.
pub(crate) fn signed_in_once(answers: &[(StatusCode, Option<String>)], what: &str) {
    let signed_in = answers.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    assert_eq!(signed_in, 1, "{what}: {answers:?}");
    assert!(
        answers
            .iter()
            .all(|(s, _)| *s == StatusCode::OK || *s == StatusCode::UNAUTHORIZED),
        "{what}: {answers:?}"
    );
}

/// The lockout's burst (`DT_USERS_RATE_LIMIT_LOGIN_ACCOUNT`, default `10/90/3600`).
pub(crate) const LOCKOUT_BURST: usize = 10;

/// Of `statuses`, how many were checked (`checked`) — the rest must be refusals before any
/// check: 429, or 503 `overloaded`.
pub(crate) fn count_checked(
    statuses: &[(StatusCode, Option<String>)],
    checked: StatusCode,
) -> usize {
    for (status, code) in statuses {
        let refused = *status == StatusCode::TOO_MANY_REQUESTS
            || (*status == StatusCode::SERVICE_UNAVAILABLE
                && code.as_deref() == Some("overloaded"));
        assert!(
            *status == checked || refused,
            "unexpected answer {status} {code:?}"
        );
    }
    statuses.iter().filter(|(s, _)| *s == checked).count()
}

async fn parallel_wrong_passwords_are_bounded(in_flight: u32) {
    let app = TestApp::spawn_with(|s| {
        s.rate_limit_enabled = true;
        s.trusted_proxies = "127.0.0.1".into();
        s.password_checks_in_flight = in_flight;
    })
    .await;
    for round in 0..5 {
        let email = format!("user{round}@example.com");
        app.register(&email, &format!("user{round}")).await;
        let requests = (0..80)
            .map(|i| {
                app.client
                    .post(app.url("/api/v1/auth/login"))
                    .header("x-forwarded-for", format!("10.{round}.0.{i}"))
                    .json(&json!({"email": email, "password": format!("wrong guess {i}")}))
            })
            .collect();
        let statuses = all_at_once(requests).await;
        let checked = count_checked(&statuses, StatusCode::UNAUTHORIZED);
        assert!(
            (1..=LOCKOUT_BURST).contains(&checked),
            "round {round}: {checked} of 80 wrong passwords were checked"
        );
        // The lockout is soft: after its window the owner signs in.
        app.clock.advance_secs(3_600);
        let owner = app
            .client
            .post(app.url("/api/v1/auth/login"))
            .header("x-forwarded-for", "192.0.2.1")
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(owner.status(), StatusCode::OK, "round {round}");
    }
}

#[tokio::test]
async fn eighty_wrong_passwords_at_once_are_no_more_than_the_lockout_burst() {
    parallel_wrong_passwords_are_bounded(2).await;
}

#[tokio::test]
async fn without_the_in_flight_cap_the_count_before_the_check_still_bounds_guesses() {
    parallel_wrong_passwords_are_bounded(1_000).await;
}

#[tokio::test]
async fn eighty_wrong_current_passwords_at_once_are_no_more_than_the_lockout_burst() {
    let app = TestApp::spawn_with(|s| s.rate_limit_enabled = true).await;
    for round in 0..5 {
        let (email, owner) = account(&app, round).await;
        let requests = (0..80)
            .map(|i| {
                app.client
                    .patch(app.url("/api/v1/users/current"))
                    .bearer_auth(&owner.access)
                    .json(&json!({
                        "new_password": NEW_PASSWORD,
                        "current_password": format!("wrong guess {i}"),
                    }))
            })
            .collect();
        let statuses = all_at_once(requests).await;
        let checked = count_checked(&statuses, StatusCode::FORBIDDEN);
        assert!(
            (1..=LOCKOUT_BURST).contains(&checked),
            "round {round}: {checked} of 80 wrong current passwords were checked"
        );
        // After the window the owner's password is checked again (a fresh sign-in: the old
        // access token has expired meanwhile).
        app.clock.advance_secs(3_600);
        let owner = app.sign_in(&email).await;
        let right = app
            .patch_current(
                &owner.access,
                &json!({"new_password": NEW_PASSWORD, "current_password": PASSWORD}),
            )
            .await;
        assert_eq!(right.status(), StatusCode::OK, "round {round}");
    }
}

#[tokio::test]
async fn a_ban_during_a_rehashing_sign_in_stays_a_ban() {
    // Accounts are hashed with cheaper parameters than those configured, so every first
    // sign-in rehashes.
    let app = TestApp::spawn_with(|s| s.argon2_memory_kib = 2048).await;
    let old =
        dt_users::security::password_hasher::PasswordHasherPool::new(1024, 1, 1, 1, 8).unwrap();
    let mut conn = app.db().await;
    for round in 0..20 {
        let email = format!("user{round}@example.com");
        let user: Value = app.register(&email, &format!("user{round}")).await;
        let user_id = user["id"].as_str().unwrap().to_owned();
        let old_hash = old
            .hash(dt_users::domain::normalize_password(PASSWORD))
            .await
            .unwrap();
        sqlx::query("UPDATE users SET password_hash = ? WHERE id = ?")
            .bind(old_hash.clone())
            .bind(user_id.clone())
            .execute(&mut conn)
            .await
            .unwrap();
        let ban = Command::Ban {
            user_id: user_id.parse().unwrap(),
            reason: None,
        };
        let command_id = format!("ban-{round}");
        let (signed_in, banned) = tokio::join!(
            app.login(&email, PASSWORD),
            app.app.apply_command(&command_id, &ban)
        );
        assert_eq!(banned.unwrap(), CommandOutcome::Applied);
        if signed_in.status() == StatusCode::OK {
            let tokens = Tokens::from(signed_in.json::<Value>().await.unwrap());
            assert_all_dead(&app, &[tokens], &format!("round {round}")).await;
        }
        let (status, banned_flag): (String, i64) =
            sqlx::query_as("SELECT status, banned FROM users WHERE id = ?")
                .bind(user_id.clone())
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert_eq!(
            (status.as_str(), banned_flag),
            ("banned", 1),
            "round {round}"
        );
        assert_problem(
            app.login(&email, PASSWORD).await,
            StatusCode::FORBIDDEN,
            "account_banned",
        )
        .await;
    }
}

/// Rotates one session `n` times; returns the first and the last token pair.
async fn rotate(app: &TestApp, n: usize) -> (Tokens, Tokens) {
    let first = app.signed_in().await;
    let mut tokens = first.clone();
    for _ in 0..n {
        let response = app.refresh(&tokens.refresh).await;
        assert_eq!(response.status(), StatusCode::OK);
        tokens = Tokens::from(response.json::<Value>().await.unwrap());
    }
    (first, tokens)
}

#[tokio::test]
async fn a_session_rotated_a_thousand_times_holds_a_constant_number_of_redis_keys() {
    let app = TestApp::spawn().await;
    let (first, last) = rotate(&app, 1_000).await;
    let client = redis::Client::open(crate::helpers::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let session_keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:{{*", app.redis_prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    // One hash for the session, one set of the user's sessions.
    assert!(session_keys.len() <= 2, "{session_keys:?}");
    assert_eq!(app.current_status(&last.access).await, StatusCode::OK);
    // The very first token is still known as this session's: its reuse ends the session.
    assert_problem(
        app.refresh(&first.refresh).await,
        StatusCode::UNAUTHORIZED,
        "refresh_token_reused",
    )
    .await;
    assert_eq!(
        app.current_status(&last.access).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_session_rotated_a_thousand_times_holds_constant_memory_in_process() {
    let app = TestApp::spawn_with(|s| s.redis_url = None).await;
    let SessionStore::Memory(store) = &app.app.sessions else {
        panic!("expected the in-process session store");
    };
    let (first, _) = rotate(&app, 1_000).await;
    assert_eq!(store.held(), (1, 0));
    assert_problem(
        app.refresh(&first.refresh).await,
        StatusCode::UNAUTHORIZED,
        "refresh_token_reused",
    )
    .await;
    assert_eq!(store.held(), (0, 0));
}

#[tokio::test]
async fn a_ban_of_a_deleted_account_is_applied_and_restoring_it_gives_a_banned_account() {
    let app = TestApp::spawn().await;
    let tokens = app.signed_in().await;
    let user_id = app.current_user_id(&tokens.access).await;
    let deleted = app.delete_account(&tokens.access, PASSWORD).await;
    assert_eq!(deleted.status(), StatusCode::ACCEPTED);
    let uid = user_id.parse().unwrap();
    let ban = Command::Ban {
        user_id: uid,
        reason: Some("spam".into()),
    };
    assert_eq!(
        app.app.apply_command("ban-1", &ban).await.unwrap(),
        CommandOutcome::Applied
    );
    // Still deleted, and so still restorable.
    assert_problem(
        app.login("ada@example.com", PASSWORD).await,
        StatusCode::FORBIDDEN,
        "account_deleted",
    )
    .await;
    let token = app.emailed_token(&user_id, "account_restore").await;
    let restored = app
        .post_json("/api/v1/users/restore", &json!({"token": token}))
        .await;
    assert_eq!(restored.status(), StatusCode::OK);
    assert_problem(
        app.login("ada@example.com", PASSWORD).await,
        StatusCode::FORBIDDEN,
        "account_banned",
    )
    .await;
    // An unban of the banned account lets its owner back in.
    assert_eq!(
        app.app
            .apply_command("unban-1", &Command::Unban { user_id: uid })
            .await
            .unwrap(),
        CommandOutcome::Applied
    );
    assert_eq!(
        app.login("ada@example.com", PASSWORD).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn an_unban_of_a_deleted_account_is_applied_and_it_stays_deleted() {
    let app = TestApp::spawn().await;
    let tokens = app.signed_in().await;
    let user_id = app.current_user_id(&tokens.access).await;
    let uid = user_id.parse().unwrap();
    let ban = Command::Ban {
        user_id: uid,
        reason: None,
    };
    app.app.apply_command("ban-1", &ban).await.unwrap();
    // A banned account cannot delete itself (its sessions ended); mark it deleted as its
    // owner's earlier request would have, through the store.
    let mut conn = app.db().await;
    sqlx::query(
        "UPDATE users SET status = 'deleted', deleted_at = 1, purge_after = ? WHERE id = ?",
    )
    .bind(i64::MAX / 2)
    .bind(user_id.clone())
    .execute(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        app.app
            .apply_command("unban-1", &Command::Unban { user_id: uid })
            .await
            .unwrap(),
        CommandOutcome::Applied
    );
    let (status, banned): (String, i64) =
        sqlx::query_as("SELECT status, banned FROM users WHERE id = ?")
            .bind(user_id)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!((status.as_str(), banned), ("deleted", 0));
}
