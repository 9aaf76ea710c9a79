use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::backends::on_both_backends;
use crate::helpers::{PASSWORD, TestApp, assert_problem};

on_both_backends! {
    async fn register_returns_the_private_user_and_its_location(backend) {
        let app = TestApp::spawn_on(backend).await;
        let response = app
            .post_json(
                "/api/v1/auth/register",
                &json!({"email": "Ada@Example.com", "username": "Ada_L", "password": PASSWORD, "display_name": "Ada Lovelace"}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(response.headers()["location"], "/api/v1/users/Ada_L");
        let user: Value = response.json().await.unwrap();
        assert_eq!(user["email"], "Ada@Example.com");
        assert_eq!(user["username"], "Ada_L");
        assert_eq!(user["display_name"], "Ada Lovelace");
        assert_eq!(user["email_verified"], false);
        assert!(user["bio"].is_null() && user["avatar_url"].is_null());
        assert!(user.get("password").is_none() && user.get("password_hash").is_none());
        let id = uuid::Uuid::parse_str(user["id"].as_str().unwrap()).unwrap();
        assert_eq!(id.get_version_num(), 7);
        let created = user["created_at"].as_str().unwrap();
        assert!(created.ends_with('Z') && created.len() == 20, "{created}");
    }

    async fn register_refuses_a_taken_email_or_username_in_any_case(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.register("ada@example.com", "ada").await;
        let email = app
            .post_json(
                "/api/v1/auth/register",
                &json!({"email": "ADA@example.COM", "username": "other", "password": PASSWORD}),
            )
            .await;
        assert_problem(email, StatusCode::CONFLICT, "email_taken").await;
        let username = app
            .post_json(
                "/api/v1/auth/register",
                &json!({"email": "b@example.com", "username": "ADA", "password": PASSWORD}),
            )
            .await;
        assert_problem(username, StatusCode::CONFLICT, "username_taken").await;
    }

    async fn twenty_concurrent_registrations_of_one_email_yield_one_account(backend) {
        let app = TestApp::spawn_on(backend).await;
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let client = app.client.clone();
                let url = app.url("/api/v1/auth/register");
                let body = json!({"email": "race@example.com", "username": format!("racer{i}"), "password": PASSWORD});
                tokio::spawn(async move {
                    client.post(url).json(&body).send().await.unwrap().status()
                })
            })
            .collect();
        let mut statuses = Vec::new();
        for handle in handles {
            statuses.push(handle.await.unwrap());
        }
        assert_eq!(
            statuses
                .iter()
                .filter(|s| **s == StatusCode::CREATED)
                .count(),
            1,
            "{statuses:?}"
        );
        assert_eq!(
            statuses
                .iter()
                .filter(|s| **s == StatusCode::CONFLICT)
                .count(),
            19,
            "{statuses:?}"
        );
    }

    async fn weak_passwords_are_refused_with_weak_password(backend) {
        let app = TestApp::spawn_on(backend).await;
        for (password, why) in [
            ("short1!", "too short"),
            ("password123", "common"),
            ("iloveyou", "common"),
            ("ada@example.com", "the email"),
            ("ada_lovelace", "the username"),
            (&"x".repeat(129) as &str, "too long"),
        ] {
            let response = app
                .post_json(
                    "/api/v1/auth/register",
                    &json!({"email": "ada@example.com", "username": "ada_lovelace", "password": password}),
                )
                .await;
            let body =
                assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "weak_password").await;
            assert_eq!(body["errors"][0]["field"], "password", "{why}");
        }
    }

    async fn invalid_fields_are_all_reported(backend) {
        let app = TestApp::spawn_on(backend).await;
        let response = app
            .post_json(
                "/api/v1/auth/register",
                &json!({"email": "not-an-email", "username": "x", "password": PASSWORD, "display_name": "é".repeat(65)}),
            )
            .await;
        let fields = crate::helpers::invalid_fields(response).await;
        assert_eq!(fields, ["email", "username", "display_name"]);
    }

    async fn reserved_usernames_are_refused(backend) {
        let app = TestApp::spawn_on(backend).await;
        for name in [
            "current", "restore", "me", "admin", "root", "api", "system", "support", "devtalk",
            "Admin",
        ] {
            let response = app
                .post_json(
                    "/api/v1/auth/register",
                    &json!({"email": "r@example.com", "username": name, "password": PASSWORD}),
                )
                .await;
            let body = assert_problem(
                response,
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_error",
            )
            .await;
            assert_eq!(body["errors"][0]["field"], "username", "{name}");
        }
    }

    async fn login_returns_a_token_pair(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.register("ada@example.com", "ada").await;
        let response = app.login("ADA@example.com", PASSWORD).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["cache-control"], "no-store");
        let pair: Value = response.json().await.unwrap();
        assert_eq!(pair["token_type"], "bearer");
        assert_eq!(pair["expires_in"], 900);
        assert_eq!(pair["refresh_expires_in"], 2_592_000);
        assert!(pair["refresh_token"].as_str().unwrap().len() > 40);
        let access = pair["access_token"].as_str().unwrap();
        assert_eq!(app.current_status(access).await, StatusCode::OK);
    }

    async fn login_accepts_the_oauth2_password_form(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.register("ada@example.com", "ada").await;
        let response = app
            .client
            .post(app.url("/api/v1/auth/login"))
            .form(&[
                ("grant_type", "password"),
                ("username", "ada@example.com"),
                ("password", PASSWORD),
                ("scope", ""),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let pair: Value = response.json().await.unwrap();
        assert!(pair["access_token"].is_string());
    }

    async fn unknown_email_and_wrong_password_look_the_same(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.register("ada@example.com", "ada").await;
        let wrong = app.login("ada@example.com", "wrong password here").await;
        let unknown = app.login("nobody@example.com", "wrong password here").await;
        assert_eq!(wrong.status(), unknown.status());
        let header_names = |r: &reqwest::Response| {
            let mut names: Vec<String> = r
                .headers()
                .iter()
                .filter(|(n, _)| !matches!(n.as_str(), "x-request-id" | "date"))
                .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
                .collect();
            names.sort();
            names
        };
        assert_eq!(header_names(&wrong), header_names(&unknown));
        let wrong = assert_problem(wrong, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
        let unknown =
            assert_problem(unknown, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
        assert_eq!(wrong, unknown);
    }

    async fn login_rehashes_when_the_parameters_changed(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.register("ada@example.com", "ada").await;
        let before = stored_hash(&app).await;
        assert!(before.contains("m=1024"), "{before}");
        // The same database, served with stronger parameters.
        let stronger = TestApp::spawn_with_on(backend, |s| {
            s.database_url = Some(app.database_url.clone());
            s.argon2_memory_kib = 2048;
        })
        .await;
        stronger.sign_in("ada@example.com").await;
        let after = stored_hash(&app).await;
        assert!(after.contains("m=2048"), "{after}");
        stronger.sign_in("ada@example.com").await;
    }
}

async fn stored_hash(app: &TestApp) -> String {
    use sqlx::Row;
    let mut conn = app.db().await;
    sqlx::query("SELECT password_hash FROM users")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get::<String, _>(0)
}

on_both_backends! {
    async fn passwords_are_normalized_nfkc(backend) {
        let app = TestApp::spawn_on(backend).await;
        // "ﬁ" (U+FB01) normalizes to "fi".
        let response = app
            .post_json(
                "/api/v1/auth/register",
                &json!({"email": "n@example.com", "username": "nfkc", "password": "ﬁne ﬁsh swim fast"}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(
            app.login("n@example.com", "fine fish swim fast")
                .await
                .status(),
            StatusCode::OK
        );
    }

    /// While every hashing thread is busy and the queue is full, a request that would hash is
    /// shed before anything else runs: it spends none of the client's rate-limit quota, and
    /// its body is not even read.
    async fn saturated_hashing_sheds_before_the_rate_limiter_and_the_body(backend) {
        let app = TestApp::spawn_with_on(backend, |s| {
            s.rate_limit_enabled = true;
            s.rate_limit_global_ip = "4/4/3600".into();
            s.password_hash_concurrency = 1;
            s.password_hash_queue = 1;
            // Each hash takes a second or more, so the two below hold the hasher full.
            s.argon2_memory_kib = 64 * 1024;
            s.argon2_iterations = 40;
            // On a loaded machine the two holders' hashes can take longer than the default
            // request timeout, which would answer them 503.
            s.request_timeout = 300;
        })
        .await;
        let holders: Vec<_> = (0..2)
            .map(|n| {
                let request = app
                    .client
                    .post(app.url("/api/v1/auth/login"))
                    .json(&json!({"email": format!("nobody{n}@example.com"), "password": PASSWORD}));
                tokio::spawn(async move { request.send().await.unwrap() })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        for (path, body) in [
            ("/api/v1/auth/login", json!({"email": "ada@example.com", "password": PASSWORD})),
            ("/api/v1/auth/register", json!({"email": "ada@example.com", "username": "ada", "password": PASSWORD})),
            ("/api/v1/auth/password/reset", json!({"token": "x", "new_password": PASSWORD})),
            ("/api/v1/auth/login", json!("not an object")),
        ]
        .into_iter()
        .cycle()
        .take(12)
        {
            let response = app.post_json(path, &body).await;
            assert!(response.headers().contains_key("retry-after"), "{path}");
            assert_problem(response, StatusCode::SERVICE_UNAVAILABLE, "overloaded").await;
        }
        // None of the twelve spent quota: two requests of the four remain, then 429.
        for expected in [StatusCode::NOT_FOUND, StatusCode::NOT_FOUND, StatusCode::TOO_MANY_REQUESTS] {
            let response = app.client.get(app.url("/api/v1/users/nobody")).send().await.unwrap();
            assert_eq!(response.status(), expected);
        }
        for holder in holders {
            assert_eq!(holder.await.unwrap().status(), StatusCode::UNAUTHORIZED);
        }
    }

    async fn saturated_hashing_is_shed_at_once_with_503_overloaded(backend) {
        let app = TestApp::spawn_with_on(backend, |s| {
            s.password_hash_concurrency = 1;
            s.password_hash_queue = 1;
            s.argon2_memory_kib = 8 * 1024;
        })
        .await;
        app.register("ada@example.com", "ada").await;
        let sign_ins: Vec<_> = (0..40)
            .map(|_| {
                let request = app
                    .client
                    .post(app.url("/api/v1/auth/login"))
                    .json(&json!({"email": "ada@example.com", "password": PASSWORD}));
                tokio::spawn(async move { request.send().await.unwrap() })
            })
            .collect();
        let (mut ok, mut shed) = (0, 0);
        for sign_in in sign_ins {
            let response = sign_in.await.unwrap();
            if response.status() == StatusCode::OK {
                ok += 1;
                continue;
            }
            assert!(response.headers().contains_key("retry-after"));
            assert_problem(response, StatusCode::SERVICE_UNAVAILABLE, "overloaded").await;
            shed += 1;
        }
        assert!(ok >= 1 && shed >= 1, "{ok} signed in, {shed} shed");
        let metrics = app.metrics().await;
        assert!(metrics.contains("password_hash_shed_total"), "{metrics}");
    }
}
