use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::backends::on_both_backends;
use crate::helpers::{PASSWORD, TestApp, assert_problem};

async fn patch(app: &TestApp, token: &str, body: &Value) -> reqwest::Response {
    app.patch_current(token, body).await
}

on_both_backends! {
    async fn current_user_is_the_private_view(backend) {
        let app = TestApp::spawn_on(backend).await;
        let tokens = app.signed_in().await;
        let user: Value = app
            .get_auth("/api/v1/users/current", &tokens.access)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(user["email"], "ada@example.com");
        for field in [
            "id",
            "email",
            "email_verified",
            "username",
            "display_name",
            "bio",
            "avatar_url",
            "created_at",
            "updated_at",
        ] {
            assert!(user.get(field).is_some(), "missing {field}");
        }
    }

    async fn profile_fields_change_and_clear(backend) {
        let app = TestApp::spawn_on(backend).await;
        let tokens = app.signed_in().await;
        app.clock.advance_secs(5);
        let response = patch(
            &app,
            &tokens.access,
            &json!({"display_name": "Ada L.", "bio": "Poet of science\nand engines", "avatar_url": "https://cdn.example.com/ada.png", "username": "countess"}),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        let user: Value = response.json().await.unwrap();
        assert_eq!(user["display_name"], "Ada L.");
        assert_eq!(user["bio"], "Poet of science\nand engines");
        assert_eq!(user["avatar_url"], "https://cdn.example.com/ada.png");
        assert_eq!(user["username"], "countess");
        assert_ne!(user["updated_at"], user["created_at"]);
        let cleared: Value = patch(
            &app,
            &tokens.access,
            &json!({"bio": null, "avatar_url": ""}),
        )
        .await
        .json()
        .await
        .unwrap();
        assert!(cleared["bio"].is_null() && cleared["avatar_url"].is_null());
        assert_eq!(cleared["display_name"], "Ada L.");
        let public = app
            .client
            .get(app.url("/api/v1/users/countess"))
            .send()
            .await
            .unwrap();
        assert_eq!(public.status(), StatusCode::OK);
    }

    async fn invalid_profile_fields_are_422_and_change_nothing(backend) {
        let app = TestApp::spawn_on(backend).await;
        let tokens = app.signed_in().await;
        for body in [
            json!({"avatar_url": "http://insecure.example.com/a.png"}),
            json!({"display_name": "x".repeat(65)}),
            json!({"bio": "b".repeat(501)}),
            json!({"username": "no spaces"}),
            json!({"username": "current"}),
        ] {
            assert_problem(
                patch(&app, &tokens.access, &body).await,
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_error",
            )
            .await;
        }
        let user: Value = app
            .get_auth("/api/v1/users/current", &tokens.access)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(user["username"], "ada");
        assert!(user["display_name"].is_null());
    }

    async fn a_taken_username_is_409_and_a_taken_email_tells_nothing(backend) {
        let app = TestApp::spawn_on(backend).await;
        let tokens = app.signed_in().await;
        app.register("bob@example.com", "bob").await;
        assert_problem(
            patch(&app, &tokens.access, &json!({"username": "BOB"})).await,
            StatusCode::CONFLICT,
            "username_taken",
        )
        .await;
        // An email change answers the same whether or not the address is registered: the
        // endpoint enumerates nobody. (No confirmation goes out: see `email_change.rs`.)
        for address in ["Bob@example.com", "nobody@example.com"] {
            let response = patch(
                &app,
                &tokens.access,
                &json!({"email": address, "current_password": PASSWORD}),
            )
            .await;
            assert_eq!(response.status(), StatusCode::OK);
            let user: Value = response.json().await.unwrap();
            assert_eq!(user["email"], "ada@example.com");
            assert_eq!(user["pending_email"], address);
        }
    }

    async fn changing_the_email_needs_the_current_password_and_waits_for_confirmation(backend) {
        let app = TestApp::spawn_on(backend).await;
        let tokens = app.signed_in().await;
        let missing = patch(&app, &tokens.access, &json!({"email": "new@example.com"})).await;
        let body = assert_problem(
            missing,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
        )
        .await;
        assert_eq!(body["errors"][0]["field"], "current_password");
        let wrong = patch(
            &app,
            &tokens.access,
            &json!({"email": "new@example.com", "current_password": "not it at all"}),
        )
        .await;
        assert_problem(wrong, StatusCode::FORBIDDEN, "invalid_credentials").await;
        let ok = patch(
            &app,
            &tokens.access,
            &json!({"email": "new@example.com", "current_password": PASSWORD}),
        )
        .await;
        assert_eq!(ok.status(), StatusCode::OK);
        let user: Value = ok.json().await.unwrap();
        // Nothing changes until the new mailbox confirms (see `email_change.rs`).
        assert_eq!(user["email"], "ada@example.com");
        assert_eq!(user["pending_email"], "new@example.com");
        assert_eq!(
            app.login("ada@example.com", PASSWORD).await.status(),
            StatusCode::OK
        );
        assert_eq!(
            app.login("new@example.com", PASSWORD).await.status(),
            StatusCode::UNAUTHORIZED
        );
        // A change of capitalisation is the same mailbox: applied at once, still verified, and
        // it drops the waiting change.
        let recased: Value = patch(
            &app,
            &tokens.access,
            &json!({"email": "Ada@Example.com", "current_password": PASSWORD}),
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(recased["email"], "Ada@Example.com");
        assert_eq!(recased["pending_email"], Value::Null);
    }

    async fn changing_the_password_ends_every_other_session_at_once(backend) {
        let app = TestApp::spawn_on(backend).await;
        let this = app.signed_in().await;
        let other = app.sign_in("ada@example.com").await;
        let new_password = "a brand new passphrase";
        let response = patch(
            &app,
            &this.access,
            &json!({"new_password": new_password, "current_password": PASSWORD}),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_problem(
            app.get_auth("/api/v1/users/current", &other.access).await,
            StatusCode::UNAUTHORIZED,
            "session_revoked",
        )
        .await;
        assert_eq!(
            app.refresh(&other.refresh).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(app.current_status(&this.access).await, StatusCode::OK);
        assert_eq!(
            app.login("ada@example.com", PASSWORD).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            app.login("ada@example.com", new_password).await.status(),
            StatusCode::OK
        );
    }

    async fn a_wrong_current_password_changes_nothing(backend) {
        let app = TestApp::spawn_on(backend).await;
        let this = app.signed_in().await;
        let other = app.sign_in("ada@example.com").await;
        let response = patch(
            &app,
            &this.access,
            &json!({"new_password": "a brand new passphrase", "current_password": "wrong"}),
        )
        .await;
        assert_problem(response, StatusCode::FORBIDDEN, "invalid_credentials").await;
        assert_eq!(app.current_status(&other.access).await, StatusCode::OK);
        assert_eq!(
            app.login("ada@example.com", PASSWORD).await.status(),
            StatusCode::OK
        );
    }

    async fn a_weak_new_password_is_weak_password(backend) {
        let app = TestApp::spawn_on(backend).await;
        let tokens = app.signed_in().await;
        let response = patch(
            &app,
            &tokens.access,
            &json!({"new_password": "password1", "current_password": PASSWORD}),
        )
        .await;
        let body =
            assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "weak_password").await;
        assert_eq!(body["errors"][0]["field"], "new_password");
    }

    async fn the_public_profile_never_shows_the_email(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.signed_in().await;
        let response = app
            .client
            .get(app.url("/api/v1/users/ADA"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let public: Value = response.json().await.unwrap();
        let mut keys: Vec<&str> = public
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "avatar_url",
                "bio",
                "created_at",
                "display_name",
                "id",
                "username"
            ]
        );
        let missing = app
            .client
            .get(app.url("/api/v1/users/nobody"))
            .send()
            .await
            .unwrap();
        assert_problem(missing, StatusCode::NOT_FOUND, "not_found").await;
    }

    async fn concurrent_changes_of_different_fields_both_stick(backend) {
        let app = TestApp::spawn_on(backend).await;
        let tokens = app.signed_in().await;
        for i in 0..8 {
            let name = json!({"display_name": format!("Name {i}")});
            let bio = json!({"bio": format!("Bio {i}")});
            let a = patch(&app, &tokens.access, &name);
            let b = patch(&app, &tokens.access, &bio);
            let (a, b) = tokio::join!(a, b);
            assert_eq!(a.status(), StatusCode::OK);
            assert_eq!(b.status(), StatusCode::OK);
            let user: Value = app
                .get_auth("/api/v1/users/current", &tokens.access)
                .await
                .json()
                .await
                .unwrap();
            assert_eq!(user["display_name"], format!("Name {i}"), "round {i}");
            assert_eq!(user["bio"], format!("Bio {i}"), "round {i}");
        }
    }
}
