use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{TestApp, assert_problem, create_database, drop_database, test_settings};

#[tokio::test]
async fn health_live_and_ready_report_each_dependency() {
    let app = TestApp::spawn().await;
    let live = app
        .client
        .get(app.url("/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    let ready = app
        .client
        .get(app.url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["checks"]["database"]["status"], "up");
    assert_eq!(body["checks"]["database"]["backend"], "mysql");
    assert_eq!(body["checks"]["sessions"]["status"], "up");
    assert_eq!(body["checks"]["sessions"]["backend"], "redis");
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_echoes_the_callers() {
    let app = TestApp::spawn().await;
    let generated = app
        .client
        .get(app.url("/health/live"))
        .send()
        .await
        .unwrap();
    let id = generated.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok());
    let echoed = app
        .client
        .get(app.url("/nope"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "abc-123");
    let hostile = app
        .client
        .get(app.url("/health/live"))
        .header("x-request-id", "a b\"<script>")
        .send()
        .await
        .unwrap();
    assert_ne!(hostile.headers()["x-request-id"], "a b\"<script>");
}

#[tokio::test]
async fn metrics_count_requests_per_route_and_status() {
    let app = TestApp::spawn().await;
    app.client
        .get(app.url("/api/v1/users/nobody-here"))
        .send()
        .await
        .unwrap();
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("http_requests_total")
            && l.contains(r#"route="/api/v1/users/{username}""#)
            && l.contains(r#"status="404""#)),
        "{text}"
    );
    assert!(text.contains("http_request_duration_seconds_bucket"));
}

#[tokio::test]
async fn docs_and_openapi_are_served() {
    let app = TestApp::spawn().await;
    let docs = app.client.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs.text().await.unwrap().contains("swagger"));
    let spec: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/api/v1/auth/register",
        "/api/v1/auth/login",
        "/api/v1/users/current",
        "/.well-known/jwks.json",
    ] {
        assert!(spec["paths"].get(path).is_some(), "{path} undocumented");
    }
    assert_eq!(
        spec["components"]["securitySchemes"]["password"]["flows"]["password"]["tokenUrl"],
        "/api/v1/auth/login"
    );
}

#[test]
fn openapi_document_snapshot() {
    let spec = serde_json::to_value(dt_users::http::openapi()).unwrap();
    insta::assert_json_snapshot!("openapi", spec);
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problem_documents() {
    let app = TestApp::spawn().await;
    assert_problem(
        app.client
            .get(app.url("/api/v1/nothing"))
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let wrong_method = app
        .client
        .delete(app.url("/api/v1/auth/register"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.headers()["allow"], "POST");
    assert_problem(
        wrong_method,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
}

#[tokio::test]
async fn serve_refuses_a_database_behind_the_migrations() {
    let (name, url) = create_database().await;
    let settings = test_settings(&url, "dtu-test:unused");
    let error =
        dt_users::startup::build_app(settings, std::sync::Arc::new(dt_users::domain::SystemClock))
            .await
            .unwrap_err();
    let message = error.to_string();
    drop_database(&name).await;
    assert!(message.contains("dt-users migrate"), "{message}");
}
