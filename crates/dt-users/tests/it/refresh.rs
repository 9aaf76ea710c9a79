use reqwest::StatusCode;
use serde_json::Value;

use crate::backends::on_both_backends;
use crate::helpers::{TestApp, Tokens, assert_problem};

on_both_backends! {
    async fn refresh_rotates_the_refresh_token(backend) {
        let app = TestApp::spawn_on(backend).await;
        let first = app.signed_in().await;
        let response = app.refresh(&first.refresh).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["cache-control"], "no-store");
        let second = Tokens::from(response.json::<Value>().await.unwrap());
        assert_ne!(second.refresh, first.refresh);
        assert_eq!(app.current_status(&second.access).await, StatusCode::OK);
        // The new refresh token works in turn.
        assert_eq!(app.refresh(&second.refresh).await.status(), StatusCode::OK);
    }

    async fn reuse_within_the_grace_window_is_refused_without_revoking(backend) {
        let app = TestApp::spawn_on(backend).await;
        let first = app.signed_in().await;
        let second = Tokens::from(
            app.refresh(&first.refresh)
                .await
                .json::<Value>()
                .await
                .unwrap(),
        );
        app.clock.advance_secs(5);
        assert_problem(
            app.refresh(&first.refresh).await,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        )
        .await;
        // The session lives on: the newest tokens still work.
        assert_eq!(app.current_status(&second.access).await, StatusCode::OK);
        assert_eq!(app.refresh(&second.refresh).await.status(), StatusCode::OK);
    }

    async fn reuse_after_the_grace_window_revokes_the_session(backend) {
        let app = TestApp::spawn_on(backend).await;
        let first = app.signed_in().await;
        let second = Tokens::from(
            app.refresh(&first.refresh)
                .await
                .json::<Value>()
                .await
                .unwrap(),
        );
        app.clock.advance_secs(11);
        assert_problem(
            app.refresh(&first.refresh).await,
            StatusCode::UNAUTHORIZED,
            "refresh_token_reused",
        )
        .await;
        // The newest tokens of that session die too.
        assert_problem(
            app.get_auth("/api/v1/users/current", &second.access).await,
            StatusCode::UNAUTHORIZED,
            "session_revoked",
        )
        .await;
        assert_problem(
            app.refresh(&second.refresh).await,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        )
        .await;
    }

    async fn reuse_of_an_old_generation_revokes_too(backend) {
        let app = TestApp::spawn_on(backend).await;
        let first = app.signed_in().await;
        let second = Tokens::from(
            app.refresh(&first.refresh)
                .await
                .json::<Value>()
                .await
                .unwrap(),
        );
        let third = Tokens::from(
            app.refresh(&second.refresh)
                .await
                .json::<Value>()
                .await
                .unwrap(),
        );
        app.clock.advance_secs(60);
        assert_problem(
            app.refresh(&first.refresh).await,
            StatusCode::UNAUTHORIZED,
            "refresh_token_reused",
        )
        .await;
        assert_eq!(
            app.current_status(&third.access).await,
            StatusCode::UNAUTHORIZED
        );
    }

    async fn reuse_revokes_only_that_session(backend) {
        let app = TestApp::spawn_on(backend).await;
        let laptop = app.signed_in().await;
        let phone = app.sign_in("ada@example.com").await;
        app.refresh(&laptop.refresh).await;
        app.clock.advance_secs(11);
        assert_eq!(
            app.refresh(&laptop.refresh).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(app.current_status(&phone.access).await, StatusCode::OK);
    }

    async fn ten_concurrent_refreshes_of_one_token_yield_one_success(backend) {
        let app = TestApp::spawn_on(backend).await;
        let tokens = app.signed_in().await;
        let handles: Vec<_> = (0..10)
            .map(|_| {
                let client = app.client.clone();
                let url = app.url("/api/v1/auth/refresh");
                let body = serde_json::json!({"refresh_token": tokens.refresh});
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
            statuses.iter().filter(|s| **s == StatusCode::OK).count(),
            1,
            "{statuses:?}"
        );
        assert_eq!(
            statuses
                .iter()
                .filter(|s| **s == StatusCode::UNAUTHORIZED)
                .count(),
            9,
            "{statuses:?}"
        );
    }

    async fn unknown_or_malformed_refresh_tokens_are_invalid(backend) {
        let app = TestApp::spawn_on(backend).await;
        let tokens = app.signed_in().await;
        // Change the last character (to one it is not, or the "altered" token would be the same).
        let mut altered = tokens.refresh.clone();
        let last = altered.pop().unwrap();
        altered.push(if last == 'A' { 'B' } else { 'A' });
        for bad in [altered.as_str(), "", "dtr_", "garbage", &tokens.access] {
            assert_problem(
                app.refresh(bad).await,
                StatusCode::UNAUTHORIZED,
                "invalid_token",
            )
            .await;
        }
        // None of that harmed the real session.
        assert_eq!(app.refresh(&tokens.refresh).await.status(), StatusCode::OK);
    }

    async fn refreshing_never_extends_the_session_past_its_lifetime(backend) {
        let app = TestApp::spawn_on(backend).await;
        let tokens = app.signed_in().await;
        app.clock.advance_secs(29 * 86_400);
        let response = app.refresh(&tokens.refresh).await;
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["refresh_expires_in"], 86_400);
        let next = Tokens::from(body);
        app.clock.advance_secs(86_400);
        assert_problem(
            app.refresh(&next.refresh).await,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        )
        .await;
        assert_eq!(
            app.current_status(&next.access).await,
            StatusCode::UNAUTHORIZED
        );
    }
}
