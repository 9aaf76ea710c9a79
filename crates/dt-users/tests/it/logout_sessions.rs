use reqwest::StatusCode;
use serde_json::Value;

use crate::backends::on_both_backends;
use crate::helpers::{TestApp, Tokens, assert_problem};

async fn logout(app: &TestApp, token: &str, scope: Option<&str>) -> reqwest::Response {
    let mut url = app.url("/api/v1/auth/logout");
    if let Some(scope) = scope {
        url.push_str(&format!("?scope={scope}"));
    }
    app.client
        .post(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn three_sessions(app: &TestApp) -> (Tokens, Tokens, Tokens) {
    let a = app.signed_in().await;
    let b = app.sign_in("ada@example.com").await;
    let c = app.sign_in("ada@example.com").await;
    (a, b, c)
}

on_both_backends! {
    async fn logout_revokes_this_sessions_tokens_at_once(backend) {
        let app = TestApp::spawn_on(backend).await;
        let (a, b, _) = three_sessions(&app).await;
        assert_eq!(
            logout(&app, &a.access, None).await.status(),
            StatusCode::NO_CONTENT
        );
        assert_problem(
            app.get_auth("/api/v1/users/current", &a.access).await,
            StatusCode::UNAUTHORIZED,
            "session_revoked",
        )
        .await;
        assert_problem(
            app.refresh(&a.refresh).await,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        )
        .await;
        assert_eq!(app.current_status(&b.access).await, StatusCode::OK);
    }

    async fn logout_local_is_the_default_scope(backend) {
        let app = TestApp::spawn_on(backend).await;
        let (a, b, _) = three_sessions(&app).await;
        assert_eq!(
            logout(&app, &a.access, Some("local")).await.status(),
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            app.current_status(&a.access).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(app.current_status(&b.access).await, StatusCode::OK);
    }

    async fn logout_others_keeps_only_this_session(backend) {
        let app = TestApp::spawn_on(backend).await;
        let (a, b, c) = three_sessions(&app).await;
        assert_eq!(
            logout(&app, &a.access, Some("others")).await.status(),
            StatusCode::NO_CONTENT
        );
        assert_eq!(app.current_status(&a.access).await, StatusCode::OK);
        for other in [&b, &c] {
            assert_eq!(
                app.current_status(&other.access).await,
                StatusCode::UNAUTHORIZED
            );
            assert_eq!(
                app.refresh(&other.refresh).await.status(),
                StatusCode::UNAUTHORIZED
            );
        }
        assert_eq!(app.refresh(&a.refresh).await.status(), StatusCode::OK);
    }

    async fn logout_global_ends_every_session(backend) {
        let app = TestApp::spawn_on(backend).await;
        let (a, b, c) = three_sessions(&app).await;
        assert_eq!(
            logout(&app, &b.access, Some("global")).await.status(),
            StatusCode::NO_CONTENT
        );
        for tokens in [&a, &b, &c] {
            assert_eq!(
                app.current_status(&tokens.access).await,
                StatusCode::UNAUTHORIZED
            );
            assert_eq!(
                app.refresh(&tokens.refresh).await.status(),
                StatusCode::UNAUTHORIZED
            );
        }
    }

    async fn logout_never_touches_another_users_sessions(backend) {
        let app = TestApp::spawn_on(backend).await;
        let ada = app.signed_in().await;
        app.register("bob@example.com", "bob").await;
        let bob = app.sign_in("bob@example.com").await;
        assert_eq!(
            logout(&app, &ada.access, Some("global")).await.status(),
            StatusCode::NO_CONTENT
        );
        assert_eq!(app.current_status(&bob.access).await, StatusCode::OK);
    }

    async fn logout_with_an_unknown_scope_is_422_and_changes_nothing(backend) {
        let app = TestApp::spawn_on(backend).await;
        let a = app.signed_in().await;
        let body = assert_problem(
            logout(&app, &a.access, Some("everything")).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
        )
        .await;
        assert_eq!(body["errors"][0]["field"], "scope");
        assert_eq!(app.current_status(&a.access).await, StatusCode::OK);
    }

    async fn logout_without_a_token_is_401(backend) {
        let app = TestApp::spawn_on(backend).await;
        let response = app
            .client
            .post(app.url("/api/v1/auth/logout"))
            .send()
            .await
            .unwrap();
        assert_problem(response, StatusCode::UNAUTHORIZED, "not_authenticated").await;
    }

    async fn sessions_are_listed_newest_first_with_the_current_one_marked(backend) {
        let app = TestApp::spawn_on(backend).await;
        let a = app.signed_in().await;
        app.clock.advance_secs(2);
        let b = app
            .client
            .post(app.url("/api/v1/auth/login"))
            .header("user-agent", "DevTalkPhone/1.0")
            .json(
                &serde_json::json!({"email": "ada@example.com", "password": crate::helpers::PASSWORD}),
            )
            .send()
            .await
            .unwrap();
        let b = Tokens::from(b.json::<Value>().await.unwrap());
        let response = app
            .get_auth("/api/v1/users/current/sessions", &a.access)
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let sessions: Vec<Value> = response.json().await.unwrap();
        assert_eq!(sessions.len(), 2);
        assert_eq!(sessions[0]["user_agent"], "DevTalkPhone/1.0");
        assert_eq!(sessions[0]["current"], false);
        assert_eq!(sessions[1]["current"], true);
        assert_eq!(sessions[1]["ip"], "127.0.0.1");
        for s in &sessions {
            for field in [
                "id",
                "created_at",
                "last_used_at",
                "user_agent",
                "ip",
                "current",
            ] {
                assert!(s.get(field).is_some(), "missing {field}");
            }
        }
        let _ = b;
    }

    async fn deleting_a_session_kills_its_tokens_at_once(backend) {
        let app = TestApp::spawn_on(backend).await;
        let a = app.signed_in().await;
        let b = app.sign_in("ada@example.com").await;
        let sessions: Vec<Value> = app
            .get_auth("/api/v1/users/current/sessions", &a.access)
            .await
            .json()
            .await
            .unwrap();
        let other = sessions.iter().find(|s| s["current"] == false).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let response = app
            .client
            .delete(app.url(&format!("/api/v1/users/current/sessions/{other}")))
            .bearer_auth(&a.access)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert_problem(
            app.get_auth("/api/v1/users/current", &b.access).await,
            StatusCode::UNAUTHORIZED,
            "session_revoked",
        )
        .await;
        assert_eq!(
            app.refresh(&b.refresh).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(app.current_status(&a.access).await, StatusCode::OK);
    }

    async fn deleting_an_unknown_or_foreign_session_is_404(backend) {
        let app = TestApp::spawn_on(backend).await;
        let ada = app.signed_in().await;
        app.register("bob@example.com", "bob").await;
        let bob = app.sign_in("bob@example.com").await;
        let bobs: Vec<Value> = app
            .get_auth("/api/v1/users/current/sessions", &bob.access)
            .await
            .json()
            .await
            .unwrap();
        let bobs_session = bobs[0]["id"].as_str().unwrap().to_owned();
        for id in [
            bobs_session.as_str(),
            "0190a0b4-0000-7000-8000-000000000000",
            "not-a-uuid",
        ] {
            let response = app
                .client
                .delete(app.url(&format!("/api/v1/users/current/sessions/{id}")))
                .bearer_auth(&ada.access)
                .send()
                .await
                .unwrap();
            assert_problem(response, StatusCode::NOT_FOUND, "not_found").await;
        }
        assert_eq!(app.current_status(&bob.access).await, StatusCode::OK);
    }
}
