//! Sessions, refresh rotation and rate limits on a Redis Cluster (`DT_USERS_REDIS_CLUSTER`):
//! two instances share them through a cluster each test starts (three primaries, each with a
//! replica); users' keys spread over every primary; and when a primary dies, the requests that
//! need it answer 503 until its replica has taken over — never a wrong answer — and then the
//! truth again.

mod failover;
mod nodes;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Instance, PASSWORD, TestApp, Tokens, assert_problem};
use nodes::RedisCluster;

/// The HTTP API of one instance.
#[derive(Clone)]
struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    fn of(base: &str) -> Self {
        Self {
            base: base.to_owned(),
            // A request that hangs fails the test instead of stalling it.
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn login(&self, email: &str, password: &str, ip: &str) -> reqwest::Response {
        self.client
            .post(self.url("/api/v1/auth/login"))
            .header("x-forwarded-for", ip)
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap()
    }

    async fn sign_in(&self, email: &str) -> Tokens {
        let response = self.login(email, PASSWORD, "198.51.100.200").await;
        assert_eq!(response.status(), StatusCode::OK);
        Tokens::from(response.json::<Value>().await.unwrap())
    }

    async fn register(&self, email: &str, username: &str, ip: &str) -> reqwest::Response {
        self.client
            .post(self.url("/api/v1/auth/register"))
            .header("x-forwarded-for", ip)
            .json(&json!({"email": email, "username": username, "password": PASSWORD}))
            .send()
            .await
            .unwrap()
    }

    async fn current(&self, access: &str) -> reqwest::Response {
        self.client
            .get(self.url("/api/v1/users/current"))
            .bearer_auth(access)
            .send()
            .await
            .unwrap()
    }

    async fn current_status(&self, access: &str) -> StatusCode {
        self.current(access).await.status()
    }

    async fn refresh(&self, refresh: &str) -> reqwest::Response {
        self.client
            .post(self.url("/api/v1/auth/refresh"))
            .json(&json!({"refresh_token": refresh}))
            .send()
            .await
            .unwrap()
    }

    async fn logout(&self, access: &str, scope: &str) -> StatusCode {
        self.client
            .post(self.url(&format!("/api/v1/auth/logout?scope={scope}")))
            .bearer_auth(access)
            .send()
            .await
            .unwrap()
            .status()
    }

    async fn sessions(&self, access: &str) -> Vec<Value> {
        let response = self
            .client
            .get(self.url("/api/v1/users/current/sessions"))
            .bearer_auth(access)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }
}

/// Two instances on one database, their sessions and limits on `cluster`; the job queue
/// stays on the standalone test Redis (it cannot run on a cluster).
async fn two_instances(
    cluster: &RedisCluster,
    adjust: impl Fn(&mut dt_users::config::Settings),
) -> (TestApp, Instance) {
    let seeds = cluster.seeds();
    let app = TestApp::spawn_with(|s| {
        s.redis_url = Some(seeds);
        s.redis_cluster = true;
        adjust(s);
    })
    .await;
    let other = app.another_instance(|_| {}).await;
    (app, other)
}

#[tokio::test]
async fn a_session_and_its_rotation_are_shared_by_instances_on_a_cluster() {
    let cluster = RedisCluster::start().await;
    let (app, other) = two_instances(&cluster, |_| {}).await;
    let (one, two) = (Api::of(&app.base), Api::of(&other.base));
    app.register("ada@example.com", "ada").await;

    // Signed in through one, used through the other.
    let first = one.sign_in("ada@example.com").await;
    assert_eq!(two.current_status(&first.access).await, StatusCode::OK);
    assert_eq!(two.sessions(&first.access).await.len(), 1);

    // Rotated through two; the new pair works through one.
    let response = two.refresh(&first.refresh).await;
    assert_eq!(response.status(), StatusCode::OK);
    let second = Tokens::from(response.json::<Value>().await.unwrap());
    assert_eq!(one.current_status(&second.access).await, StatusCode::OK);
    let response = one.refresh(&second.refresh).await;
    assert_eq!(response.status(), StatusCode::OK);
    let third = Tokens::from(response.json::<Value>().await.unwrap());

    // The first token again, after the grace window, through one: reuse, the session ends
    // everywhere at once.
    app.clock.advance_secs(11);
    assert_problem(
        one.refresh(&first.refresh).await,
        StatusCode::UNAUTHORIZED,
        "refresh_token_reused",
    )
    .await;
    assert_problem(
        two.current(&third.access).await,
        StatusCode::UNAUTHORIZED,
        "session_revoked",
    )
    .await;
    assert_problem(
        two.refresh(&third.refresh).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;

    // Signed in through one, signed out through two: refused through one at once.
    let session = one.sign_in("ada@example.com").await;
    let kept = two.sign_in("ada@example.com").await;
    assert_eq!(
        two.logout(&session.access, "local").await,
        StatusCode::NO_CONTENT
    );
    assert_problem(
        one.current(&session.access).await,
        StatusCode::UNAUTHORIZED,
        "session_revoked",
    )
    .await;
    assert_problem(
        one.refresh(&session.refresh).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    assert_eq!(one.current_status(&kept.access).await, StatusCode::OK);

    // Signing out everywhere through one ends the session made through two.
    let last = one.sign_in("ada@example.com").await;
    assert_eq!(
        one.logout(&last.access, "global").await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        two.current_status(&kept.access).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        two.refresh(&kept.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn rate_limits_are_counted_across_instances_on_a_cluster() {
    let cluster = RedisCluster::start().await;
    let (app, other) = two_instances(&cluster, |s| {
        s.rate_limit_enabled = true;
        s.trusted_proxies = "127.0.0.1".into();
    })
    .await;
    let instances = [Api::of(&app.base), Api::of(&other.base)];

    // Ten sign-ins per address at once (`…_LOGIN_IP` 10/1/1), five through each instance.
    for i in 0..10 {
        let response = instances[i % 2]
            .login(&format!("nobody{i}@example.com"), "wrong", "198.51.100.1")
            .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    for api in &instances {
        let response = api
            .login("nobody@example.com", "wrong", "198.51.100.1")
            .await;
        assert_problem(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    }
    let elsewhere = instances[1]
        .login("nobody@example.com", "wrong", "198.51.100.2")
        .await;
    assert_eq!(elsewhere.status(), StatusCode::UNAUTHORIZED);

    // Ten registrations per address an hour (`…_REGISTER_IP` 10/10/3600).
    for i in 0..10 {
        let response = instances[i % 2]
            .register(
                &format!("u{i}@example.com"),
                &format!("user{i}"),
                "198.51.100.7",
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "registration {i}");
    }
    for api in &instances {
        let response = api
            .register("u10@example.com", "user10", "198.51.100.7")
            .await;
        assert_problem(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    }
}

#[tokio::test]
async fn sessions_of_many_users_spread_over_every_primary_and_all_work() {
    let cluster = RedisCluster::start().await;
    let (app, other) = two_instances(&cluster, |_| {}).await;
    let instances = [Api::of(&app.base), Api::of(&other.base)];
    let mut sessions = Vec::new();
    for i in 0..50 {
        let email = format!("user{i}@example.com");
        app.register(&email, &format!("user{i}")).await;
        sessions.push(instances[i % 2].sign_in(&email).await);
    }

    let pattern = format!("{}:*:session:*", app.redis_prefix);
    let primaries = cluster.primaries().await;
    let mut per_primary = Vec::new();
    for node in &primaries {
        per_primary.push(cluster.keys_on(node.port, &pattern).await);
    }
    eprintln!("session keys per primary: {per_primary:?}");
    assert_eq!(per_primary.len(), 3);
    assert!(per_primary.iter().all(|n| *n > 0), "{per_primary:?}");
    assert_eq!(per_primary.iter().sum::<usize>(), 50);

    for (i, tokens) in sessions.iter().enumerate() {
        let other = &instances[(i + 1) % 2];
        assert_eq!(other.current_status(&tokens.access).await, StatusCode::OK);
        assert_eq!(other.sessions(&tokens.access).await.len(), 1, "user {i}");
    }
    // Every user signs out everywhere through the other instance; every token is refused.
    for (i, tokens) in sessions.iter().enumerate() {
        let other = &instances[(i + 1) % 2];
        assert_eq!(
            other.logout(&tokens.access, "global").await,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            instances[i % 2].current_status(&tokens.access).await,
            StatusCode::UNAUTHORIZED
        );
    }
}
