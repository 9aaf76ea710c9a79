//! Signing out needs the session store only: with the database down, sessions still end at
//! once, and the `devtalk.user.sessions_revoked` events wait in Redis until the database is
//! back, then reach the outbox exactly once. With Redis down as well nothing can be promised,
//! and the answer is 503.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::{Response, StatusCode};
use serde_json::Value;

use crate::helpers::{CuttableProxy, TestApp, Tokens, assert_problem, mysql_server_url};

const SESSIONS_REVOKED: &str = "devtalk.user.sessions_revoked";

/// A test app whose database is reached through `proxy`.
async fn spawn_with_database_behind(proxy: &CuttableProxy) -> TestApp {
    let port = proxy.port;
    TestApp::spawn_with(|s| {
        let url = s.database_url.clone().unwrap();
        let name = url.rsplit('/').next().unwrap().to_owned();
        let server = mysql_server_url().replace("127.0.0.1:3306", &format!("127.0.0.1:{port}"));
        s.database_url = Some(format!("{server}/{name}"));
    })
    .await
}

async fn logout(app: &TestApp, token: &str, scope: &str) -> Response {
    app.client
        .post(app.url(&format!("/api/v1/auth/logout?scope={scope}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// The id of the session `tokens` belong to.
async fn session_id(app: &TestApp, tokens: &Tokens) -> String {
    let sessions: Vec<Value> = app
        .get_auth("/api/v1/users/current/sessions", &tokens.access)
        .await
        .json()
        .await
        .unwrap();
    let current = sessions.iter().find(|s| s["current"] == true).unwrap();
    current["id"].as_str().unwrap().to_owned()
}

async fn assert_dead(app: &TestApp, tokens: &Tokens) {
    assert_problem(
        app.get_auth("/api/v1/users/current", &tokens.access).await,
        StatusCode::UNAUTHORIZED,
        "session_revoked",
    )
    .await;
}

async fn deferred_events(app: &TestApp) -> usize {
    let client = redis::Client::open(crate::helpers::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("LLEN")
        .arg(format!("{}:deferred-events", app.redis_prefix))
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// The session ids of every `sessions_revoked` event in the outbox, one set per event.
async fn revoked_in_outbox(app: &TestApp, user_id: &str) -> Vec<BTreeSet<String>> {
    let mut conn = app.db().await;
    let rows = sqlx::query("SELECT user_id, payload FROM outbox WHERE name = ? ORDER BY seq")
        .bind(SESSIONS_REVOKED)
        .fetch_all(&mut conn)
        .await
        .unwrap();
    rows.iter()
        .map(|row| {
            assert_eq!(sqlx::Row::get::<String, _>(row, 0), user_id);
            let payload: Value =
                serde_json::from_str(&sqlx::Row::get::<String, _>(row, 1)).unwrap();
            assert_eq!(payload["user_id"], user_id);
            payload["session_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|id| id.as_str().unwrap().to_owned())
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn sign_outs_with_the_database_down_end_sessions_at_once_and_are_announced_once_it_is_back() {
    let mut proxy = CuttableProxy::start("127.0.0.1:3306").await;
    let app = spawn_with_database_behind(&proxy).await;
    let a = app.signed_in().await;
    let b = app.sign_in("ada@example.com").await;
    let c = app.sign_in("ada@example.com").await;
    let user_id = app.current_user_id(&a.access).await;
    let (id_a, id_b, id_c) = (
        session_id(&app, &a).await,
        session_id(&app, &b).await,
        session_id(&app, &c).await,
    );
    assert!(revoked_in_outbox(&app, &user_id).await.is_empty());

    proxy.cut().await;
    assert_problem(
        app.get_auth("/api/v1/users/current", &c.access).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    )
    .await;

    assert_eq!(
        logout(&app, &a.access, "local").await.status(),
        StatusCode::NO_CONTENT
    );
    assert_dead(&app, &a).await;

    let ended = app
        .client
        .delete(app.url(&format!("/api/v1/users/current/sessions/{id_b}")))
        .bearer_auth(&c.access)
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), StatusCode::NO_CONTENT);
    assert_dead(&app, &b).await;

    assert_eq!(
        logout(&app, &c.access, "global").await.status(),
        StatusCode::NO_CONTENT
    );
    for tokens in [&a, &b, &c] {
        assert_dead(&app, tokens).await;
    }
    assert_eq!(deferred_events(&app).await, 3);

    proxy.restore().await;
    let started = std::time::Instant::now();
    let moved = loop {
        match app.app.move_deferred_events().await {
            Ok(moved) => break moved,
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(30),
                "the database did not come back: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(moved, 3);
    let expected: Vec<BTreeSet<String>> = [id_a, id_b, id_c]
        .into_iter()
        .map(|id| BTreeSet::from([id]))
        .collect();
    assert_eq!(revoked_in_outbox(&app, &user_id).await, expected);
    assert_eq!(deferred_events(&app).await, 0);

    assert_eq!(app.app.move_deferred_events().await.unwrap(), 0);
    assert_eq!(revoked_in_outbox(&app, &user_id).await, expected);
}

#[tokio::test]
async fn sign_out_with_the_database_and_redis_down_is_503() {
    let mut database = CuttableProxy::start("127.0.0.1:3306").await;
    let mut sessions = CuttableProxy::start("127.0.0.1:6379").await;
    let redis_port = sessions.port;
    let database_port = database.port;
    let app = TestApp::spawn_with(|s| {
        let url = s.database_url.clone().unwrap();
        let name = url.rsplit('/').next().unwrap().to_owned();
        let server =
            mysql_server_url().replace("127.0.0.1:3306", &format!("127.0.0.1:{database_port}"));
        s.database_url = Some(format!("{server}/{name}"));
        s.redis_url = Some(format!("redis://127.0.0.1:{redis_port}"));
    })
    .await;
    let tokens = app.signed_in().await;

    database.cut().await;
    sessions.cut().await;
    for scope in ["local", "global"] {
        assert_problem(
            logout(&app, &tokens.access, scope).await,
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
        )
        .await;
    }

    // Nothing was done: once both are back, the session is alive.
    database.restore().await;
    sessions.restore().await;
    let started = std::time::Instant::now();
    let mut status = app.current_status(&tokens.access).await;
    while status == StatusCode::SERVICE_UNAVAILABLE {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the service did not recover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = app.current_status(&tokens.access).await;
    }
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn deferred_events_moved_by_several_sweeps_at_once_reach_the_outbox_once_each() {
    let mut proxy = CuttableProxy::start("127.0.0.1:3306").await;
    let app = spawn_with_database_behind(&proxy).await;
    app.register("ada@example.com", "ada").await;
    let user_id = app
        .current_user_id(&app.sign_in("ada@example.com").await.access)
        .await;
    let mut sessions = Vec::new();
    for _ in 0..12 {
        sessions.push(app.sign_in("ada@example.com").await);
    }
    proxy.cut().await;
    for tokens in &sessions {
        assert_eq!(
            logout(&app, &tokens.access, "local").await.status(),
            StatusCode::NO_CONTENT
        );
    }
    assert_eq!(deferred_events(&app).await, 12);
    proxy.restore().await;
    // Several sweeps at once (two `beat`s whose leases overlapped, say): each event once.
    let sweeps: Vec<_> = (0..5)
        .map(|_| {
            let app = app.app.clone();
            tokio::spawn(async move { app.move_deferred_events().await })
        })
        .collect();
    for sweep in sweeps {
        // A sweep that meets the database still reconnecting may fail; another does the work.
        let _ = sweep.await.unwrap();
    }
    while deferred_events(&app).await > 0 {
        app.app.move_deferred_events().await.unwrap();
    }
    let announced = revoked_in_outbox(&app, &user_id).await;
    assert_eq!(announced.len(), 12, "{announced:?}");
    let distinct: BTreeSet<&BTreeSet<String>> = announced.iter().collect();
    assert_eq!(distinct.len(), 12);
}
