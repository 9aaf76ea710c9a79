//! Deletion you can undo: soft delete, restoration within the grace period, erasure after it.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Row;

use crate::backends::on_both_backends;
use crate::helpers::{PASSWORD, TestApp, assert_problem};
use crate::mail::{SmtpSink, spawn_with_mail_on, token_in};

const GRACE: i64 = 30 * 86_400;

async fn restore(app: &TestApp, token: &str) -> reqwest::Response {
    app.post_json("/api/v1/users/restore", &json!({"token": token}))
        .await
}

async fn restore_request(app: &TestApp, email: &str) -> reqwest::Response {
    app.post_json("/api/v1/users/restore/request", &json!({"email": email}))
        .await
}

async fn db(app: &TestApp) -> sqlx::AnyConnection {
    app.db().await
}

async fn restore_token_of(app: &TestApp, user_id: &str) -> String {
    app.emailed_token(user_id, "account_restore").await
}

on_both_backends! {
    async fn the_full_cycle_delete_refuse_restore_sign_in(backend) {
        let sink = SmtpSink::start().await;
        let app = spawn_with_mail_on(backend, &sink.url(), |_| {}).await;
        let a = app.signed_in().await;
        let b = app.sign_in("ada@example.com").await;

        let response = app.delete_account(&a.access, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "deleted");
        let restore_until = body["restore_until"].as_str().unwrap().to_owned();

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
        let refused = assert_problem(
            app.login("ada@example.com", PASSWORD).await,
            StatusCode::FORBIDDEN,
            "account_deleted",
        )
        .await;
        assert_eq!(refused["restore_until"], restore_until);
        assert_problem(
            app.login("ada@example.com", "a wrong password").await,
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
        )
        .await;
        assert_problem(
            app.client
                .get(app.url("/api/v1/users/ada"))
                .send()
                .await
                .unwrap(),
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
        // The email and the username stay reserved.
        let again = app
            .post_json(
                "/api/v1/auth/register",
                &json!({"email": "ada@example.com", "username": "ada2", "password": PASSWORD}),
            )
            .await;
        assert_problem(again, StatusCode::CONFLICT, "email_taken").await;
        let again = app
            .post_json(
                "/api/v1/auth/register",
                &json!({"email": "x@example.com", "username": "ada", "password": PASSWORD}),
            )
            .await;
        assert_problem(again, StatusCode::CONFLICT, "username_taken").await;

        let email = sink.wait_for("ada@example.com", "you can restore it").await;
        assert!(email["text"].as_str().unwrap().contains(&restore_until));
        assert!(
            email["text"]
                .as_str()
                .unwrap()
                .contains("https://devtalk.example/restore-account?token=")
        );
        let token = token_in(&email);
        let restored = restore(&app, &token).await;
        assert_eq!(restored.status(), StatusCode::OK);
        let user: Value = restored.json().await.unwrap();
        assert_eq!(user["username"], "ada");
        // Restoring does not sign in, and the token is single-use.
        assert!(user.get("access_token").is_none());
        assert_problem(
            restore(&app, &token).await,
            StatusCode::BAD_REQUEST,
            "invalid_token",
        )
        .await;
        assert_eq!(
            app.login("ada@example.com", PASSWORD).await.status(),
            StatusCode::OK
        );
        assert_eq!(
            app.client
                .get(app.url("/api/v1/users/ada"))
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
        // The old sessions stay dead.
        assert_eq!(
            app.current_status(&b.access).await,
            StatusCode::UNAUTHORIZED
        );
    }

    async fn restore_request_sends_a_fresh_link_only_for_a_deleted_account(backend) {
        let sink = SmtpSink::start().await;
        let app = spawn_with_mail_on(backend, &sink.url(), |_| {}).await;
        let ada = app.signed_in().await;
        app.register("bob@example.com", "bob").await;
        app.delete_account(&ada.access, PASSWORD).await;
        let first = token_in(&sink.wait_for("ada@example.com", "restore it").await);

        for email in [
            "nobody@example.com",
            "bob@example.com",
            "ada@example.com",
            "not an address",
        ] {
            let response = restore_request(&app, email).await;
            assert_eq!(response.status(), StatusCode::ACCEPTED, "{email}");
            assert_eq!(
                response.json::<Value>().await.unwrap(),
                json!({"status": "accepted"})
            );
        }
        let second = token_in(&sink.wait_for_nth("ada@example.com", "restore it", 2).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(sink.messages_to("nobody@example.com").is_empty());
        assert!(
            !sink
                .messages_to("bob@example.com")
                .iter()
                .any(|m| m["subject"].as_str().unwrap().contains("restore"))
        );
        // The fresh link replaces the first.
        assert_problem(
            restore(&app, &first).await,
            StatusCode::BAD_REQUEST,
            "invalid_token",
        )
        .await;
        assert_eq!(restore(&app, &second).await.status(), StatusCode::OK);
    }

    async fn after_the_grace_period_the_account_is_erased_everywhere(backend) {
        let app = TestApp::spawn_on(backend).await;
        let tokens = app.signed_in().await;
        let user_id = app.current_user_id(&tokens.access).await;
        let response = app
            .patch_current(
                &tokens.access,
                &json!({"display_name": "Ada Lovelace", "bio": "Analyst"}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        app.delete_account(&tokens.access, PASSWORD).await;
        let token = restore_token_of(&app, &user_id).await;

        // Not yet due: the sweep leaves it alone.
        assert_eq!(
            app.app
                .purge_due_accounts(app.app.now(), 100)
                .await
                .unwrap(),
            0
        );
        app.clock.advance_secs(GRACE + 1);
        assert_eq!(
            app.app
                .purge_due_accounts(app.app.now(), 100)
                .await
                .unwrap(),
            1
        );
        // Idempotent.
        assert_eq!(
            app.app
                .purge_due_accounts(app.app.now(), 100)
                .await
                .unwrap(),
            0
        );
        assert!(
            !app.app
                .erase_account(uuid::Uuid::parse_str(&user_id).unwrap(), app.app.now())
                .await
                .unwrap()
        );

        assert_problem(
            restore(&app, &token).await,
            StatusCode::BAD_REQUEST,
            "invalid_token",
        )
        .await;
        assert_problem(
            app.login("ada@example.com", PASSWORD).await,
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
        )
        .await;

        // No row anywhere still holds the address or the profile; of the user id, only the event
        // that announces the erasure.
        let mut conn = db(&app).await;
        for (table, column) in [
            ("users", "email"),
            ("users", "username"),
            ("email_tokens", "email"),
            ("outbox", "payload"),
            ("email_deliveries", "intent_id"),
            ("leases", "holder"),
        ] {
            for needle in ["ada@example.com", "Ada Lovelace", "Analyst"] {
                let sql = format!("SELECT COUNT(*) FROM {table} WHERE {column} LIKE ?");
                let count: i64 = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(format!("%{needle}%"))
                    .fetch_one(&mut conn)
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(count, 0, "{table}.{column} still holds {needle}");
            }
        }
        let left: Vec<String> =
            sqlx::query("SELECT name FROM outbox WHERE user_id = ? ORDER BY seq")
                .bind(user_id.clone())
                .fetch_all(&mut conn)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
        assert_eq!(left, ["devtalk.user.purged"]);
        let users: i64 = sqlx::query("SELECT COUNT(*) FROM users")
            .fetch_one(&mut conn)
            .await
            .unwrap()
            .get(0);
        assert_eq!(users, 0);

        // The address and the username are free again.
        app.register("ada@example.com", "ada").await;
    }

    async fn the_sweep_is_batched(backend) {
        let app = TestApp::spawn_on(backend).await;
        for name in ["one", "two", "three"] {
            app.register(&format!("{name}@example.com"), name).await;
            let tokens = app.sign_in(&format!("{name}@example.com")).await;
            assert_eq!(
                app.delete_account(&tokens.access, PASSWORD).await.status(),
                StatusCode::ACCEPTED
            );
        }
        app.clock.advance_secs(GRACE + 1);
        assert_eq!(
            app.app.purge_due_accounts(app.app.now(), 2).await.unwrap(),
            2
        );
        assert_eq!(
            app.app.purge_due_accounts(app.app.now(), 2).await.unwrap(),
            1
        );
        assert_eq!(
            app.app.purge_due_accounts(app.app.now(), 2).await.unwrap(),
            0
        );
    }

    async fn restore_and_erasure_racing_always_have_exactly_one_winner(backend) {
        let app = TestApp::spawn_on(backend).await;
        let later = app.app.now().plus_secs(u64::try_from(GRACE).unwrap() + 1);
        let mut restored_wins = 0;
        for i in 0..12 {
            let email = format!("racer{i}@example.com");
            let user = app.register(&email, &format!("racer{i}")).await;
            let user_id = user["id"].as_str().unwrap().to_owned();
            let tokens = app.sign_in(&email).await;
            app.delete_account(&tokens.access, PASSWORD).await;
            let token = restore_token_of(&app, &user_id).await;

            // The restore sees the grace period running; the erasure sees it over.
            let id = uuid::Uuid::parse_str(&user_id).unwrap();
            let (restore_response, erased) =
                tokio::join!(restore(&app, &token), app.app.erase_account(id, later));
            let restored = restore_response.status() == StatusCode::OK;
            let erased = erased.unwrap();
            assert!(
                restored ^ erased,
                "round {i}: restored={restored} erased={erased}"
            );

            let mut conn = db(&app).await;
            let rows: Vec<(String, Option<i64>)> =
                sqlx::query("SELECT status, purge_after FROM users WHERE id = ?")
                    .bind(user_id.clone())
                    .fetch_all(&mut conn)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect();
            let tokens_left: i64 =
                sqlx::query("SELECT COUNT(*) FROM email_tokens WHERE user_id = ?")
                    .bind(user_id.clone())
                    .fetch_one(&mut conn)
                    .await
                    .unwrap()
                    .get(0);
            if restored {
                restored_wins += 1;
                assert_eq!(rows, [("active".to_owned(), None)], "round {i}");
                assert_eq!(app.login(&email, PASSWORD).await.status(), StatusCode::OK);
            } else {
                assert!(rows.is_empty(), "round {i}: {rows:?}");
                assert_eq!(tokens_left, 0);
                assert_problem(restore_response, StatusCode::BAD_REQUEST, "invalid_token").await;
                assert_eq!(
                    app.login(&email, PASSWORD).await.status(),
                    StatusCode::UNAUTHORIZED
                );
            }
        }
        eprintln!("restore won {restored_wins} of 12 races");
    }

    async fn deletion_errors_change_nothing(backend) {
        let app = TestApp::spawn_on(backend).await;
        let tokens = app.signed_in().await;
        assert_problem(
            app.delete_account(&tokens.access, "not my password").await,
            StatusCode::FORBIDDEN,
            "invalid_credentials",
        )
        .await;
        let no_body = app
            .client
            .delete(app.url("/api/v1/users/current"))
            .bearer_auth(&tokens.access)
            .send()
            .await
            .unwrap();
        assert_problem(
            no_body,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        )
        .await;
        let empty = app
            .client
            .delete(app.url("/api/v1/users/current"))
            .bearer_auth(&tokens.access)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_problem(empty, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
        let anonymous = app
            .client
            .delete(app.url("/api/v1/users/current"))
            .json(&json!({"password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_problem(anonymous, StatusCode::UNAUTHORIZED, "not_authenticated").await;
        assert_eq!(app.current_status(&tokens.access).await, StatusCode::OK);

        // Restoring an account that is active: the request sends nothing, a token of another kind
        // is refused.
        assert_eq!(
            restore_request(&app, "ada@example.com").await.status(),
            StatusCode::ACCEPTED
        );
        assert_problem(
            restore(&app, &"A".repeat(43)).await,
            StatusCode::BAD_REQUEST,
            "invalid_token",
        )
        .await;

        // Deleting twice: the first deletion ended the session the second would use.
        assert_eq!(
            app.delete_account(&tokens.access, PASSWORD).await.status(),
            StatusCode::ACCEPTED
        );
        assert_problem(
            app.delete_account(&tokens.access, PASSWORD).await,
            StatusCode::UNAUTHORIZED,
            "session_revoked",
        )
        .await;
    }

    async fn the_export_holds_everything_about_the_caller_and_no_secret(backend) {
        let app = TestApp::spawn_on(backend).await;
        let tokens = app.signed_in().await;
        app.sign_in("ada@example.com").await;
        let response = app
            .get_auth("/api/v1/users/current/export", &tokens.access)
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["cache-control"], "no-store");
        let export: Value = response.json().await.unwrap();
        assert_eq!(export["user"]["email"], "ada@example.com");
        assert_eq!(export["sessions"].as_array().unwrap().len(), 2);
        let tokens_list = export["email_tokens"].as_array().unwrap();
        assert_eq!(tokens_list.len(), 1);
        assert_eq!(tokens_list[0]["purpose"], "verify_email");
        assert_eq!(export["emails"][0]["kind"], "welcome");
        assert_eq!(export["emails"][0]["intent"]["to"], "ada@example.com");
        let text = export.to_string();
        assert!(!text.contains("argon2"), "no password hash");
        assert!(!text.contains("token_hash"));
        let anonymous = app
            .client
            .get(app.url("/api/v1/users/current/export"))
            .send()
            .await
            .unwrap();
        assert_problem(anonymous, StatusCode::UNAUTHORIZED, "not_authenticated").await;
    }
}
