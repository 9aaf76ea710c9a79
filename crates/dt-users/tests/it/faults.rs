//! Dependencies going away: answers are 503 `unavailable`, never a guess, and the service
//! recovers by itself when they return.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{CuttableProxy, PASSWORD, TestApp, assert_problem, mysql_server_url};

#[tokio::test]
async fn redis_down_means_503_for_authenticated_requests_never_acceptance() {
    let mut proxy = CuttableProxy::start("127.0.0.1:6379").await;
    let port = proxy.port;
    let app =
        TestApp::spawn_with(|s| s.redis_url = Some(format!("redis://127.0.0.1:{port}"))).await;
    let tokens = app.signed_in().await;
    assert_eq!(app.current_status(&tokens.access).await, StatusCode::OK);

    proxy.cut().await;
    let response = app.get_auth("/api/v1/users/current", &tokens.access).await;
    assert_eq!(response.headers()["retry-after"], "1");
    assert_problem(response, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    assert_problem(
        app.refresh(&tokens.refresh).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    )
    .await;
    assert_problem(
        app.login("ada@example.com", PASSWORD).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    )
    .await;
    let ready = app
        .client
        .get(app.url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["sessions"]["status"], "down");
    assert_eq!(body["checks"]["database"]["status"], "up");

    proxy.restore().await;
    let mut recovered = false;
    for _ in 0..50 {
        if app.current_status(&tokens.access).await == StatusCode::OK {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(recovered, "the session store did not come back");
}

#[tokio::test]
async fn database_down_means_503_and_recovery_after() {
    let mut proxy = CuttableProxy::start("127.0.0.1:3306").await;
    let port = proxy.port;
    let app = TestApp::spawn_with(|s| {
        let url = s.database_url.clone().unwrap();
        let name = url.rsplit('/').next().unwrap().to_owned();
        let server = mysql_server_url().replace("127.0.0.1:3306", &format!("127.0.0.1:{port}"));
        s.database_url = Some(format!("{server}/{name}"));
    })
    .await;
    let tokens = app.signed_in().await;

    proxy.cut().await;
    let response = app.get_auth("/api/v1/users/current", &tokens.access).await;
    assert_problem(response, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    let register = app
        .post_json(
            "/api/v1/auth/register",
            &json!({"email": "b@example.com", "username": "bob", "password": PASSWORD}),
        )
        .await;
    assert_problem(register, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    let ready = app
        .client
        .get(app.url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);

    proxy.restore().await;
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..50 {
        status = app.current_status(&tokens.access).await;
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, StatusCode::OK);
}
