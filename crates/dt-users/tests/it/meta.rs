use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{
    HEALTH_TOKEN, TestApp, assert_problem, create_database, drop_database, test_settings,
};

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
    let text = app.metrics().await;
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
    let config = test_settings(&url, "dtu-test:unused").validate().unwrap();
    let error =
        dt_users::startup::build_app(&config, std::sync::Arc::new(dt_users::domain::SystemClock))
            .await
            .unwrap_err();
    let message = error.to_string();
    drop_database(&name).await;
    assert!(message.contains("dt-users migrate"), "{message}");
}

/// An app whose Redis is reached through a proxy the test can cut.
async fn app_with_cuttable_redis(
    adjust: impl FnOnce(&mut dt_users::config::Settings),
) -> (TestApp, crate::helpers::CuttableProxy) {
    let proxy = crate::helpers::CuttableProxy::start("127.0.0.1:6379").await;
    let port = proxy.port;
    let app = TestApp::spawn_with(move |s| {
        s.redis_url = Some(format!("redis://127.0.0.1:{port}"));
        adjust(s);
    })
    .await;
    (app, proxy)
}

async fn ready(app: &TestApp, token: Option<&str>) -> (StatusCode, Value) {
    let mut request = app.client.get(app.url("/health/ready"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn readiness_shows_errors_and_the_backlog_only_to_the_health_token() {
    let (app, mut proxy) = app_with_cuttable_redis(|_| {}).await;
    let (status, public) = ready(&app, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(public.get("outbox").is_none(), "{public}");
    let (_, operator) = ready(&app, Some(HEALTH_TOKEN)).await;
    assert!(
        operator["outbox"]["emails"]["pending"].is_i64(),
        "{operator}"
    );

    proxy.cut().await;
    tokio::time::sleep(dt_users::health::REPORT_TTL).await;
    let (status, public) = ready(&app, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(public["checks"]["sessions"]["status"], "down");
    assert!(
        public["checks"]["sessions"].get("error").is_none(),
        "{public}"
    );
    for wrong in ["", "the operators", "THE OPERATORS' READINESS TOKEN"] {
        let (_, guessed) = ready(&app, Some(wrong)).await;
        assert!(
            guessed["checks"]["sessions"].get("error").is_none(),
            "{guessed}"
        );
    }
    let (status, operator) = ready(&app, Some(HEALTH_TOKEN)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        operator["checks"]["sessions"]["error"].is_string(),
        "{operator}"
    );
    assert!(public.get("outbox").is_none());
}

#[tokio::test]
async fn readiness_is_measured_at_most_every_two_seconds() {
    let (app, mut proxy) = app_with_cuttable_redis(|_| {}).await;
    let measured = std::time::Instant::now();
    assert_eq!(ready(&app, None).await.0, StatusCode::OK);
    proxy.cut().await;
    // Many calls within the window, one after another and all at once, are answered from the
    // one measurement: Redis, now gone, is not asked again.
    for _ in 0..20 {
        let (status, body) = ready(&app, Some(HEALTH_TOKEN)).await;
        if measured.elapsed() < dt_users::health::REPORT_TTL - std::time::Duration::from_millis(500)
        {
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    }
    let together = crate::helpers::send_together((0..30).map(|_| {
        app.client
            .get(app.url("/health/ready"))
            .bearer_auth(HEALTH_TOKEN)
    }))
    .await;
    if measured.elapsed() < dt_users::health::REPORT_TTL - std::time::Duration::from_millis(500) {
        assert!(
            together.iter().all(|s| *s == StatusCode::OK),
            "{together:?}"
        );
    }
    tokio::time::sleep(dt_users::health::REPORT_TTL).await;
    let (status, body) = ready(&app, Some(HEALTH_TOKEN)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["checks"]["sessions"]["status"], "down");
}

#[tokio::test]
async fn readiness_calls_without_the_token_are_limited_per_client() {
    let (app, _proxy) = app_with_cuttable_redis(|s| {
        s.rate_limit_enabled = true;
        s.rate_limit_health_ip = "3/1/3600".into();
    })
    .await;
    for _ in 0..3 {
        assert_eq!(ready(&app, None).await.0, StatusCode::OK);
    }
    let refused = app
        .client
        .get(app.url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert!(refused.headers().contains_key("retry-after"));
    assert_problem(refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // The operators' probe is never refused.
    for _ in 0..10 {
        assert_eq!(ready(&app, Some(HEALTH_TOKEN)).await.0, StatusCode::OK);
    }
    // Liveness is not limited.
    for _ in 0..10 {
        let live = app
            .client
            .get(app.url("/health/live"))
            .send()
            .await
            .unwrap();
        assert_eq!(live.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn the_ops_port_of_a_background_role_answers_with_request_ids_and_problem_documents() {
    let (app, mut proxy) = app_with_cuttable_redis(|_| {}).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops = format!("http://{}", listener.local_addr().unwrap());
    let router =
        dt_users::http::ops_router(dt_users::startup::readiness(app.config(), &app.app).unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });

    let missing = app
        .client
        .get(format!("{ops}/nothing"))
        .send()
        .await
        .unwrap();
    assert!(missing.headers()["x-request-id"].to_str().unwrap().len() >= 8);
    assert_problem(missing, StatusCode::NOT_FOUND, "not_found").await;
    let echoed = app
        .client
        .get(format!("{ops}/health/live"))
        .header("x-request-id", "probe-42")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "probe-42");
    let wrong_method = app
        .client
        .post(format!("{ops}/metrics"))
        .send()
        .await
        .unwrap();
    assert_problem(
        wrong_method,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;

    // The ops port is the operators': its readiness report has the details, without a token.
    proxy.cut().await;
    let report: Value = app
        .client
        .get(format!("{ops}/health/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        report["checks"]["sessions"]["error"].is_string(),
        "{report}"
    );
    assert!(report["outbox"]["events"]["pending"].is_i64(), "{report}");
}
