//! Each email arrives at a real SMTP server with the right recipient, subject and both parts,
//! and its token works — once.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::backends::on_both_backends;
use crate::helpers::{PASSWORD, TestApp, assert_problem};
use crate::mail::{SmtpSink, spawn_with_mail_on, token_in};

async fn verify(app: &TestApp, token: &str) -> reqwest::Response {
    app.post_json("/api/v1/auth/email/verify", &json!({"token": token}))
        .await
}

async fn reset(app: &TestApp, token: &str, password: &str) -> reqwest::Response {
    app.post_json(
        "/api/v1/auth/password/reset",
        &json!({"token": token, "new_password": password}),
    )
    .await
}

async fn forgot(app: &TestApp, email: &str) -> reqwest::Response {
    app.post_json("/api/v1/auth/password/forgot", &json!({"email": email}))
        .await
}

on_both_backends! {
    async fn the_welcome_email_carries_a_working_single_use_verification_token(backend) {
        let sink = SmtpSink::start().await;
        let app = spawn_with_mail_on(backend, &sink.url(), |_| {}).await;
        let tokens = app.signed_in().await;
        let welcome = sink
            .wait_for("ada@example.com", "Welcome to Dev Talk")
            .await;
        assert_eq!(welcome["mail_from"], "no-reply@devtalk.localhost");
        assert!(
            welcome["text"]
                .as_str()
                .unwrap()
                .contains("https://devtalk.example/verify-email?token=")
        );
        let token = token_in(&welcome);

        let response = verify(&app, &token).await;
        assert_eq!(response.status(), StatusCode::OK);
        let user: Value = response.json().await.unwrap();
        assert_eq!(user["email_verified"], true);
        let me: Value = app
            .get_auth("/api/v1/users/current", &tokens.access)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(me["email_verified"], true);
        assert_problem(
            verify(&app, &token).await,
            StatusCode::BAD_REQUEST,
            "invalid_token",
        )
        .await;
    }

    async fn a_display_name_with_markup_is_escaped_in_html(backend) {
        let sink = SmtpSink::start().await;
        let app = spawn_with_mail_on(backend, &sink.url(), |_| {}).await;
        let response = app
            .post_json(
                "/api/v1/auth/register",
                &json!({"email": "x@example.com", "username": "xss", "password": PASSWORD, "display_name": "<script>alert(1)</script>"}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let welcome = sink.wait_for("x@example.com", "Welcome").await;
        let html = welcome["html"].as_str().unwrap();
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"));
    }

    async fn verification_can_be_requested_again_and_the_newest_link_works(backend) {
        let sink = SmtpSink::start().await;
        let app = spawn_with_mail_on(backend, &sink.url(), |_| {}).await;
        let tokens = app.signed_in().await;
        let first = token_in(&sink.wait_for("ada@example.com", "Welcome").await);
        let response = app
            .client
            .post(app.url("/api/v1/auth/email/verify/request"))
            .bearer_auth(&tokens.access)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let again = sink
            .wait_for("ada@example.com", "Confirm your email address")
            .await;
        let second = token_in(&again);
        assert_ne!(first, second);
        // A newer link makes the older one useless.
        assert_problem(
            verify(&app, &first).await,
            StatusCode::BAD_REQUEST,
            "invalid_token",
        )
        .await;
        assert_eq!(verify(&app, &second).await.status(), StatusCode::OK);

        // Verified: asking again sends nothing.
        let before = sink.messages().len();
        let response = app
            .client
            .post(app.url("/api/v1/auth/email/verify/request"))
            .bearer_auth(&tokens.access)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(sink.messages().len(), before);
    }

    async fn verification_request_needs_a_token(backend) {
        let app = TestApp::spawn_on(backend).await;
        let response = app
            .client
            .post(app.url("/api/v1/auth/email/verify/request"))
            .send()
            .await
            .unwrap();
        assert_problem(response, StatusCode::UNAUTHORIZED, "not_authenticated").await;
    }

    async fn password_reset_end_to_end_ends_every_session(backend) {
        let sink = SmtpSink::start().await;
        let app = spawn_with_mail_on(backend, &sink.url(), |_| {}).await;
        let a = app.signed_in().await;
        let b = app.sign_in("ada@example.com").await;
        assert_eq!(
            forgot(&app, "ADA@example.com").await.status(),
            StatusCode::ACCEPTED
        );
        let email = sink
            .wait_for("ada@example.com", "Reset your Dev Talk password")
            .await;
        assert!(
            email["text"]
                .as_str()
                .unwrap()
                .contains("https://devtalk.example/reset-password?token=")
        );
        let token = token_in(&email);

        // A weak password is refused and does not use the token up.
        let weak = reset(&app, &token, "password1").await;
        assert_problem(weak, StatusCode::UNPROCESSABLE_ENTITY, "weak_password").await;
        assert_eq!(
            reset(&app, &token, "a completely new passphrase")
                .await
                .status(),
            StatusCode::NO_CONTENT
        );

        for tokens in [&a, &b] {
            assert_problem(
                app.get_auth("/api/v1/users/current", &tokens.access).await,
                StatusCode::UNAUTHORIZED,
                "session_revoked",
            )
            .await;
            assert_eq!(
                app.refresh(&tokens.refresh).await.status(),
                StatusCode::UNAUTHORIZED
            );
        }
        assert_eq!(
            app.login("ada@example.com", PASSWORD).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            app.login("ada@example.com", "a completely new passphrase")
                .await
                .status(),
            StatusCode::OK
        );
        assert_problem(
            reset(&app, &token, "yet another passphrase").await,
            StatusCode::BAD_REQUEST,
            "invalid_token",
        )
        .await;
        let notice = sink
            .wait_for("ada@example.com", "password was changed")
            .await;
        assert!(notice["html"].as_str().unwrap().contains("forgot-password"));
    }

    async fn forgot_answers_the_same_for_unknown_addresses_and_sends_nothing(backend) {
        let sink = SmtpSink::start().await;
        let app = spawn_with_mail_on(backend, &sink.url(), |_| {}).await;
        app.signed_in().await;
        sink.wait_for("ada@example.com", "Welcome").await;
        let known = forgot(&app, "ada@example.com").await;
        let unknown = forgot(&app, "nobody@example.com").await;
        let malformed = forgot(&app, "not an email").await;
        assert_eq!(known.status(), StatusCode::ACCEPTED);
        assert_eq!(unknown.status(), StatusCode::ACCEPTED);
        assert_eq!(malformed.status(), StatusCode::ACCEPTED);
        let known: Value = known.json().await.unwrap();
        assert_eq!(known, unknown.json::<Value>().await.unwrap());
        sink.wait_for("ada@example.com", "Reset").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(sink.messages_to("nobody@example.com").is_empty());
    }

    async fn a_newer_reset_link_or_a_password_change_kills_the_older_link(backend) {
        let sink = SmtpSink::start().await;
        let app = spawn_with_mail_on(backend, &sink.url(), |_| {}).await;
        let tokens = app.signed_in().await;
        forgot(&app, "ada@example.com").await;
        let first = token_in(&sink.wait_for("ada@example.com", "Reset").await);
        forgot(&app, "ada@example.com").await;
        let second = token_in(&sink.wait_for_nth("ada@example.com", "Reset", 2).await);
        assert_problem(
            reset(&app, &first, "a completely new passphrase").await,
            StatusCode::BAD_REQUEST,
            "invalid_token",
        )
        .await;
        // A password change through the profile kills the outstanding link too.
        let response = app
            .client
            .patch(app.url("/api/v1/users/current"))
            .bearer_auth(&tokens.access)
            .json(&json!({"new_password": "changed by the owner", "current_password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_problem(
            reset(&app, &second, "a completely new passphrase").await,
            StatusCode::BAD_REQUEST,
            "invalid_token",
        )
        .await;
        assert_eq!(
            app.login("ada@example.com", "changed by the owner")
                .await
                .status(),
            StatusCode::OK
        );
    }

    async fn misused_tokens_are_invalid_and_change_nothing(backend) {
        let sink = SmtpSink::start().await;
        let app = spawn_with_mail_on(backend, &sink.url(), |_| {}).await;
        app.signed_in().await;
        app.register("bob@example.com", "bob").await;
        let ada_verify = token_in(&sink.wait_for("ada@example.com", "Welcome").await);
        let bob_verify = token_in(&sink.wait_for("bob@example.com", "Welcome").await);
        forgot(&app, "ada@example.com").await;
        let ada_reset = token_in(&sink.wait_for("ada@example.com", "Reset").await);

        // Altered, of another purpose, garbage.
        let mut altered = ada_reset.clone();
        altered.replace_range(0..1, if altered.starts_with('A') { "B" } else { "A" });
        for bad in [
            altered.as_str(),
            ada_verify.as_str(),
            "",
            "short",
            &"x".repeat(43),
            "' OR 1=1 --",
        ] {
            assert_problem(
                reset(&app, bad, "a completely new passphrase").await,
                StatusCode::BAD_REQUEST,
                "invalid_token",
            )
            .await;
        }
        assert_problem(
            verify(&app, &ada_reset).await,
            StatusCode::BAD_REQUEST,
            "invalid_token",
        )
        .await;
        // Another user's token verifies that user only.
        let bob: Value = verify(&app, &bob_verify).await.json().await.unwrap();
        assert_eq!(bob["username"], "bob");
        let ada = app.sign_in("ada@example.com").await;
        let me: Value = app
            .get_auth("/api/v1/users/current", &ada.access)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(me["email_verified"], false);

        // Expired: a day and a second later.
        app.clock.advance_secs(86_401);
        assert_problem(
            verify(&app, &ada_verify).await,
            StatusCode::BAD_REQUEST,
            "invalid_token",
        )
        .await;
        assert_problem(
            reset(&app, &ada_reset, "a completely new passphrase").await,
            StatusCode::BAD_REQUEST,
            "invalid_token",
        )
        .await;
        assert_eq!(
            app.login("ada@example.com", PASSWORD).await.status(),
            StatusCode::OK
        );
    }

    async fn the_email_endpoints_refuse_ugly_bodies(backend) {
        let app = TestApp::spawn_on(backend).await;
        for path in [
            "/api/v1/auth/email/verify",
            "/api/v1/auth/password/forgot",
            "/api/v1/auth/password/reset",
        ] {
            let response = app
                .client
                .post(app.url(path))
                .header("content-type", "application/json")
                .body("{")
                .send()
                .await
                .unwrap();
            assert_problem(response, StatusCode::BAD_REQUEST, "bad_request").await;
            let response = app
                .post_json(path, &json!({"token": 1, "email": 2, "extra": true}))
                .await;
            assert_problem(
                response,
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_error",
            )
            .await;
            let response = app
                .client
                .post(app.url(path))
                .body("x".repeat(70_000))
                .header("content-type", "application/json")
                .send()
                .await
                .unwrap();
            assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
        }
    }
}
