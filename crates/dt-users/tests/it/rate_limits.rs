//! The shared rate limiter: each limit trips at its threshold and recovers after its window;
//! one key never limits another; `X-Forwarded-For` counts only from trusted proxies.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{CuttableProxy, PASSWORD, TestApp, assert_problem};

async fn limited_app(adjust: impl FnOnce(&mut dt_users::config::Settings)) -> TestApp {
    TestApp::spawn_with(|s| {
        s.rate_limit_enabled = true;
        s.trusted_proxies = "127.0.0.1".into();
        adjust(s);
    })
    .await
}

async fn login_from(app: &TestApp, ip: &str, email: &str, password: &str) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/auth/login"))
        .header("x-forwarded-for", ip)
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
}

async fn post_from(
    app: &TestApp,
    ip: &str,
    path: &str,
    body: serde_json::Value,
) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .header("x-forwarded-for", ip)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn assert_limited(response: reqwest::Response, rule: &str) {
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let policy = response.headers()["ratelimit-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(policy.starts_with(&format!("\"{rule}\";q=")), "{policy}");
    let state = response.headers()["ratelimit"].to_str().unwrap().to_owned();
    assert!(state.starts_with(&format!("\"{rule}\";r=0;t=")), "{state}");
    assert_problem(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
}

#[tokio::test]
async fn login_per_ip_allows_a_burst_of_ten_then_about_one_a_second() {
    let app = limited_app(|_| {}).await;
    for i in 0..10 {
        let response = login_from(
            &app,
            "198.51.100.1",
            &format!("nobody{i}@example.com"),
            "wrong password",
        )
        .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    assert_limited(
        login_from(&app, "198.51.100.1", "nobody@example.com", "wrong password").await,
        "login_ip",
    )
    .await;
    // Another client is not affected.
    assert_eq!(
        login_from(&app, "198.51.100.2", "nobody@example.com", "wrong")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    // A second later, one more attempt is allowed.
    app.clock.advance_secs(1);
    assert_eq!(
        login_from(&app, "198.51.100.1", "x@example.com", "wrong password")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login_from(&app, "198.51.100.1", "y@example.com", "wrong password")
            .await
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn a_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let app = limited_app(|s| s.trusted_proxies = String::new()).await;
    for i in 0..10 {
        let ip = format!("203.0.113.{i}");
        assert_eq!(
            login_from(&app, &ip, "a@example.com", "wrong password")
                .await
                .status()
                .as_u16()
                / 100,
            4
        );
    }
    // Each request claimed a new address; all came from 127.0.0.1, which is what counts.
    assert_limited(
        login_from(&app, "203.0.113.99", "b@example.com", "wrong password").await,
        "login_ip",
    )
    .await;
}

#[tokio::test]
async fn failed_logins_on_one_account_from_many_addresses_lock_it_softly() {
    let app = limited_app(|_| {}).await;
    app.register("ada@example.com", "ada").await;
    let mut statuses = Vec::new();
    for i in 0..150 {
        let ip = format!("10.{}.{}.{}", i / 65_536, (i / 256) % 256, i % 256);
        statuses.push(
            login_from(&app, &ip, "ada@example.com", "not the password")
                .await
                .status(),
        );
    }
    // Limited from the threshold on, although no address tried twice.
    assert!(
        statuses[..10]
            .iter()
            .all(|s| *s == StatusCode::UNAUTHORIZED),
        "{statuses:?}"
    );
    assert!(
        statuses[10..]
            .iter()
            .all(|s| *s == StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    // During the lockout even the owner waits; another account is not affected.
    assert_limited(
        login_from(&app, "192.0.2.1", "ada@example.com", PASSWORD).await,
        "login_account",
    )
    .await;
    app.register("bob@example.com", "bob").await;
    assert_eq!(
        login_from(&app, "192.0.2.2", "bob@example.com", PASSWORD)
            .await
            .status(),
        StatusCode::OK
    );
    // After the lockout window, the right password works: a delay, never a permanent lock.
    app.clock.advance_secs(3_600);
    assert_eq!(
        login_from(&app, "192.0.2.1", "ada@example.com", PASSWORD)
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn registration_is_limited_per_address_per_hour() {
    let app = limited_app(|_| {}).await;
    for i in 0..10 {
        let response = post_from(&app, "198.51.100.7", "/api/v1/auth/register", json!({"email": format!("u{i}@example.com"), "username": format!("user{i}"), "password": PASSWORD})).await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let eleventh = post_from(
        &app,
        "198.51.100.7",
        "/api/v1/auth/register",
        json!({"email": "u10@example.com", "username": "user10", "password": PASSWORD}),
    )
    .await;
    assert_limited(eleventh, "register_ip").await;
    let other = post_from(
        &app,
        "198.51.100.8",
        "/api/v1/auth/register",
        json!({"email": "u10@example.com", "username": "user10", "password": PASSWORD}),
    )
    .await;
    assert_eq!(other.status(), StatusCode::CREATED);
    app.clock.advance_secs(360);
    let later = post_from(
        &app,
        "198.51.100.7",
        "/api/v1/auth/register",
        json!({"email": "u11@example.com", "username": "user11", "password": PASSWORD}),
    )
    .await;
    assert_eq!(later.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn email_sending_requests_are_limited_per_target_and_per_address() {
    let app = limited_app(|_| {}).await;
    // Five per target address an hour, whichever endpoint and client.
    for i in 0..5 {
        let path = if i % 2 == 0 {
            "/api/v1/auth/password/forgot"
        } else {
            "/api/v1/users/restore/request"
        };
        let response = post_from(
            &app,
            &format!("198.51.100.{i}"),
            path,
            json!({"email": "target@example.com"}),
        )
        .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    let sixth = post_from(
        &app,
        "198.51.100.50",
        "/api/v1/auth/password/forgot",
        json!({"email": "TARGET@example.com"}),
    )
    .await;
    assert_limited(sixth, "email_target").await;
    // Twenty per client address an hour, whatever the targets.
    for i in 0..20 {
        let response = post_from(
            &app,
            "198.51.100.60",
            "/api/v1/auth/password/forgot",
            json!({"email": format!("t{i}@example.com")}),
        )
        .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{i}");
    }
    let twenty_first = post_from(
        &app,
        "198.51.100.60",
        "/api/v1/auth/password/forgot",
        json!({"email": "t99@example.com"}),
    )
    .await;
    assert_limited(twenty_first, "email_ip").await;
    app.clock.advance_secs(3_600);
    let later = post_from(
        &app,
        "198.51.100.60",
        "/api/v1/auth/password/forgot",
        json!({"email": "target@example.com"}),
    )
    .await;
    assert_eq!(later.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn refresh_is_limited_per_session() {
    let app = limited_app(|s| s.rate_limit_refresh = "3/3/60".into()).await;
    let mut tokens = app.signed_in().await;
    let other_session = app.sign_in("ada@example.com").await;
    for _ in 0..3 {
        let response = app.refresh(&tokens.refresh).await;
        assert_eq!(response.status(), StatusCode::OK);
        tokens = crate::helpers::Tokens::from(response.json::<serde_json::Value>().await.unwrap());
    }
    assert_limited(app.refresh(&tokens.refresh).await, "refresh").await;
    // The same user's other session has a budget of its own.
    assert_eq!(
        app.refresh(&other_session.refresh).await.status(),
        StatusCode::OK
    );
    app.clock.advance_secs(20);
    assert_eq!(app.refresh(&tokens.refresh).await.status(), StatusCode::OK);
}

/// The `sid` claim of an access token.
fn session_of(access_token: &str) -> String {
    use base64::Engine;
    let payload = access_token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims["sid"].as_str().unwrap().replace('-', "")
}

#[tokio::test]
async fn made_up_refresh_tokens_spend_nothing_of_anyone_else() {
    let app = limited_app(|s| s.rate_limit_refresh = "3/3/60".into()).await;
    let tokens = app.signed_in().await;
    let user = app.current_user_id(&tokens.access).await.replace('-', "");
    let sid = session_of(&tokens.access);
    let secret = "A".repeat(43);
    // User ids are public and session ids travel in access tokens; neither is enough to be
    // charged to that session.
    for forged in [
        format!(
            "dtr_{user}.{}.0.{secret}.{secret}",
            uuid::Uuid::now_v7().simple()
        ),
        format!("dtr_{user}.{sid}.0.{secret}.{secret}"),
        format!("dtr_{user}.{sid}.5.{secret}.{secret}"),
    ] {
        for _ in 0..10 {
            assert_problem(
                app.refresh(&forged).await,
                StatusCode::UNAUTHORIZED,
                "invalid_token",
            )
            .await;
        }
    }
    assert_eq!(app.refresh(&tokens.refresh).await.status(), StatusCode::OK);
    // Nor does a made-up old generation end the session.
    assert_eq!(app.current_status(&tokens.access).await, StatusCode::OK);
}

#[tokio::test]
async fn verification_requests_are_limited_per_account_address_and_per_client() {
    let app = limited_app(|s| s.rate_limit_email_ip = "7/7/3600".into()).await;
    let ada = app.signed_in().await;
    let request = |token: String, ip: &'static str| {
        app.client
            .post(app.url("/api/v1/auth/email/verify/request"))
            .header("x-forwarded-for", ip)
            .bearer_auth(token)
            .send()
    };
    // Registration sent no link counted here; five requests per address an hour.
    for _ in 0..5 {
        let response = request(ada.access.clone(), "192.0.2.1").await.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    assert_limited(
        request(ada.access.clone(), "192.0.2.2").await.unwrap(),
        "email_target",
    )
    .await;
    // Another account from the first client: the client's own budget runs out.
    app.register("bob@example.com", "bob").await;
    let bob = app.sign_in("bob@example.com").await;
    for _ in 0..2 {
        let response = request(bob.access.clone(), "192.0.2.1").await.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    assert_limited(
        request(bob.access.clone(), "192.0.2.1").await.unwrap(),
        "email_ip",
    )
    .await;
}

#[tokio::test]
async fn email_changes_are_limited_per_account() {
    let app = limited_app(|s| s.rate_limit_email_change = "2/2/3600".into()).await;
    let ada = app.signed_in().await;
    let change = |n: usize| {
        let body = json!({"email": format!("new{n}@example.com"), "current_password": PASSWORD});
        let access = ada.access.clone();
        let app = &app;
        async move { app.patch_current(&access, &body).await }
    };
    for n in 0..2 {
        assert_eq!(change(n).await.status(), StatusCode::OK);
    }
    assert_limited(change(2).await, "email_change").await;
    // Other profile changes are not limited by it.
    assert_eq!(
        app.patch_current(&ada.access, &json!({"bio": "still here"}))
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn every_limit_is_off_when_disabled() {
    let app = TestApp::spawn_with(|s| s.rate_limit_enabled = false).await;
    for i in 0..30 {
        assert_eq!(
            login_from(
                &app,
                "198.51.100.1",
                &format!("n{i}@example.com"),
                "wrong password"
            )
            .await
            .status(),
            StatusCode::UNAUTHORIZED
        );
    }
}

#[tokio::test]
async fn redis_down_makes_limited_requests_fail_closed() {
    let mut proxy = CuttableProxy::start("127.0.0.1:6379").await;
    let port = proxy.port;
    let app = limited_app(|s| s.redis_url = Some(format!("redis://127.0.0.1:{port}"))).await;
    assert_eq!(
        login_from(&app, "198.51.100.1", "a@example.com", "wrong password")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    proxy.cut().await;
    let register = post_from(
        &app,
        "198.51.100.1",
        "/api/v1/auth/register",
        json!({"email": "a@example.com", "username": "aaa", "password": PASSWORD}),
    )
    .await;
    assert_problem(register, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    let forgot = post_from(
        &app,
        "198.51.100.1",
        "/api/v1/auth/password/forgot",
        json!({"email": "a@example.com"}),
    )
    .await;
    assert_problem(forgot, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    // Liveness keeps answering; readiness says what is down.
    assert_eq!(
        app.client
            .get(app.url("/health/live"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        app.client
            .get(app.url("/health/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn responses_carry_security_headers_and_cors_is_off_by_default() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .get(app.url("/health/live"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    assert_eq!(response.headers()["x-frame-options"], "DENY");
    assert_eq!(
        response.headers()["content-security-policy"],
        "default-src 'none'; frame-ancestors 'none'"
    );
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    let cors =
        TestApp::spawn_with(|s| s.cors_allowed_origins = "https://devtalk.example".into()).await;
    let preflight = cors
        .client
        .request(reqwest::Method::OPTIONS, cors.url("/api/v1/auth/login"))
        .header("origin", "https://devtalk.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://devtalk.example"
    );
    let foreign = cors
        .client
        .get(cors.url("/health/live"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(
        foreign
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}
