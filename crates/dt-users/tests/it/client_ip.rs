//! The client address behind a trusted proxy: every `X-Forwarded-For` line, hops with ports,
//! RFC 7239 `Forwarded` when configured (and only then), and IPv6 clients counted per /64.
//! Each test spends a sign-in budget of two (`login_ip`): who shares a bucket shows who the
//! service took for the same client.

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, assert_problem};

async fn behind_a_proxy(adjust: impl FnOnce(&mut dt_users::config::Settings)) -> TestApp {
    TestApp::spawn_with(|s| {
        s.rate_limit_enabled = true;
        s.trusted_proxies = "127.0.0.1".into();
        s.rate_limit_login_ip = "2/1/3600".into();
        adjust(s);
    })
    .await
}

/// A failed sign-in carrying `headers` (each name may come several times, in order).
async fn sign_in_with(app: &TestApp, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    app.client
        .post(app.url("/api/v1/auth/login"))
        .headers(map)
        .json(&json!({
            "email": format!("nobody-{}@example.com", uuid::Uuid::new_v4().simple()),
            "password": "wrong password",
        }))
        .send()
        .await
        .unwrap()
}

async fn assert_counted(response: reqwest::Response) {
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

async fn assert_limited(response: reqwest::Response) {
    assert_problem(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
}

#[tokio::test]
async fn ipv6_clients_of_one_network_share_a_budget() {
    let app = behind_a_proxy(|_| {}).await;
    let xff = "x-forwarded-for";
    assert_counted(sign_in_with(&app, &[(xff, "2001:db8:1:2::1")]).await).await;
    assert_counted(sign_in_with(&app, &[(xff, "2001:db8:1:2:aaaa::2")]).await).await;
    assert_limited(sign_in_with(&app, &[(xff, "2001:db8:1:2:ffff:ffff:ffff:ffff")]).await).await;
    // Another /64 is another subscriber.
    assert_counted(sign_in_with(&app, &[(xff, "2001:db8:1:3::1")]).await).await;
}

#[tokio::test]
async fn the_line_a_proxy_appends_decides_not_the_forged_first_line() {
    let app = behind_a_proxy(|_| {}).await;
    let xff = "x-forwarded-for";
    // A new forged address each time; the address the proxy saw stays the same.
    for forged in ["198.51.100.1", "198.51.100.2"] {
        let response = sign_in_with(&app, &[(xff, forged), (xff, "203.0.113.5")]).await;
        assert_counted(response).await;
    }
    assert_limited(sign_in_with(&app, &[(xff, "198.51.100.3"), (xff, "203.0.113.5")]).await).await;
    // The forged addresses were never counted.
    assert_counted(sign_in_with(&app, &[(xff, "198.51.100.1")]).await).await;
}

#[tokio::test]
async fn hops_with_ports_name_the_client() {
    let app = behind_a_proxy(|_| {}).await;
    let xff = "x-forwarded-for";
    assert_counted(sign_in_with(&app, &[(xff, "[2001:db8:7::1]:443")]).await).await;
    assert_counted(sign_in_with(&app, &[(xff, "[2001:db8:7::2]")]).await).await;
    assert_limited(sign_in_with(&app, &[(xff, "2001:db8:7::3")]).await).await;
    // Not the proxy's own budget, which the two above would have spent.
    assert_counted(sign_in_with(&app, &[(xff, "203.0.113.8:1234")]).await).await;
    assert_counted(sign_in_with(&app, &[(xff, "203.0.113.8:80")]).await).await;
    assert_limited(sign_in_with(&app, &[(xff, "203.0.113.8")]).await).await;
}

#[tokio::test]
async fn forwarded_names_the_client_when_configured() {
    let app = behind_a_proxy(|s| s.forwarded_header = "forwarded".into()).await;
    let fwd = "forwarded";
    assert_counted(sign_in_with(&app, &[(fwd, "for=\"[2001:db8:9::1]:443\";proto=https")]).await)
        .await;
    assert_counted(
        sign_in_with(
            &app,
            &[(fwd, "for=198.51.100.66"), (fwd, "For=\"[2001:db8:9::2]\"")],
        )
        .await,
    )
    .await;
    assert_limited(sign_in_with(&app, &[(fwd, "for=192.0.2.1, FOR=\"2001:db8:9::3\"")]).await)
        .await;
    assert_counted(sign_in_with(&app, &[(fwd, "for=192.0.2.1")]).await).await;
}

#[tokio::test]
async fn x_forwarded_for_is_ignored_when_forwarded_is_configured() {
    let app = behind_a_proxy(|s| s.forwarded_header = "forwarded".into()).await;
    // All three come from the proxy itself, whatever X-Forwarded-For claims.
    for claimed in ["198.51.100.1", "198.51.100.2"] {
        assert_counted(sign_in_with(&app, &[("x-forwarded-for", claimed)]).await).await;
    }
    assert_limited(sign_in_with(&app, &[("x-forwarded-for", "198.51.100.3")]).await).await;
}

#[tokio::test]
async fn forwarded_is_ignored_by_default() {
    let app = behind_a_proxy(|_| {}).await;
    for claimed in ["for=198.51.100.1", "for=198.51.100.2"] {
        assert_counted(sign_in_with(&app, &[("forwarded", claimed)]).await).await;
    }
    assert_limited(sign_in_with(&app, &[("forwarded", "for=198.51.100.3")]).await).await;
}

#[tokio::test]
async fn the_sessions_list_shows_the_full_ipv6_address() {
    let app = behind_a_proxy(|_| {}).await;
    app.register("ada@example.com", "ada").await;
    let response = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .header("x-forwarded-for", "2001:db8:1:2:3:4:5:6")
        .json(&json!({"email": "ada@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let tokens = crate::helpers::Tokens::from(response.json::<Value>().await.unwrap());
    let response = app
        .get_auth("/api/v1/users/current/sessions", &tokens.access)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let sessions: Vec<Value> = response.json().await.unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["ip"], "2001:db8:1:2:3:4:5:6");
}

/// Start-up with `adjust`ed settings fails, naming `variable`.
async fn assert_refused_at_start_up(
    adjust: impl FnOnce(&mut dt_users::config::Settings),
    variable: &str,
) {
    let data_dir =
        std::env::temp_dir().join(format!("dt-users-test-{}", uuid::Uuid::new_v4().simple()));
    let mut settings = dt_users::config::Settings {
        data_dir: data_dir.clone(),
        ..dt_users::config::Settings::default()
    };
    adjust(&mut settings);
    let built = dt_users::startup::Application::build_with_clock(
        settings,
        "127.0.0.1",
        0,
        std::sync::Arc::new(dt_users::domain::ManualClock::starting_now()),
    )
    .await;
    let _ = std::fs::remove_dir_all(&data_dir);
    let Err(error) = built else {
        panic!("started although {variable} is wrong");
    };
    assert!(error.to_string().contains(variable), "{error}");
}

#[tokio::test]
async fn a_forwarding_header_other_than_the_two_is_refused_at_start_up() {
    assert_refused_at_start_up(
        |s| s.forwarded_header = "x-real-ip".into(),
        "DT_USERS_FORWARDED_HEADER",
    )
    .await;
}

#[tokio::test]
async fn an_ipv6_prefix_outside_1_to_128_is_refused_at_start_up() {
    for bits in [0, 129] {
        assert_refused_at_start_up(
            |s| s.rate_limit_ipv6_prefix = bits,
            "DT_USERS_RATE_LIMIT_IPV6_PREFIX",
        )
        .await;
    }
}

#[tokio::test]
async fn a_limiter_of_no_keys_is_refused_at_start_up() {
    assert_refused_at_start_up(
        |s| s.rate_limit_memory_keys = 0,
        "DT_USERS_RATE_LIMIT_MEMORY_KEYS",
    )
    .await;
}

#[tokio::test]
async fn many_addresses_of_one_network_at_once_spend_one_budget() {
    let app = behind_a_proxy(|_| {}).await;
    for round in 0..10u16 {
        // A network of its own each round: a fresh budget of two.
        let requests = (0..20u16).map(|host| {
            app.client
                .post(app.url("/api/v1/auth/login"))
                .header("x-forwarded-for", format!("2001:db8:{round:x}:1:{host:x}::1"))
                .json(&json!({"email": format!("nobody-{round}-{host}@example.com"), "password": "wrong password"}))
        });
        let statuses = crate::helpers::send_together(requests).await;
        let counted = statuses
            .iter()
            .filter(|s| **s == StatusCode::UNAUTHORIZED)
            .count();
        let limited = statuses
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count();
        assert_eq!((counted, limited), (2, 18), "round {round}: {statuses:?}");
    }
}
