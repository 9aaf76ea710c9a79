//! An email change waits for the new mailbox's consent; the old mailbox can cancel or revert it.

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use crate::backends::on_both_backends;
use crate::helpers::{PASSWORD, TestApp, Tokens, assert_problem};
use crate::mail::{SmtpSink, spawn_with_mail_on, token_in};

const OLD: &str = "ada@example.com";
const NEW: &str = "countess@example.com";
const CONFIRM_SUBJECT: &str = "Confirm your new Dev Talk email address";
const NOTICE_SUBJECT: &str = "A change of your Dev Talk email address was requested";
const CONFIRM: &str = "/api/v1/auth/email/change/confirm";
const CANCEL: &str = "/api/v1/auth/email/change/cancel";

/// Asks for `address` with the right password; asserts the 200.
async fn change_email(app: &TestApp, access: &str, address: &str) -> Value {
    let response = app
        .patch_current(
            access,
            &json!({"email": address, "current_password": PASSWORD}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK, "PATCH email {address}");
    response.json().await.unwrap()
}

async fn confirm(app: &TestApp, token: &str) -> Response {
    app.post_json(CONFIRM, &json!({"token": token})).await
}

async fn cancel(app: &TestApp, token: &str) -> Response {
    app.post_json(CANCEL, &json!({"token": token})).await
}

/// The confirmation token of the `n`th change to `address`.
async fn confirmation_token(sink: &SmtpSink, address: &str, n: usize) -> String {
    token_in(&sink.wait_for_nth(address, CONFIRM_SUBJECT, n).await)
}

/// The cancel token of the `n`th notice to `address`.
async fn cancel_token(sink: &SmtpSink, address: &str, n: usize) -> String {
    token_in(&sink.wait_for_nth(address, NOTICE_SUBJECT, n).await)
}

async fn me(app: &TestApp, access: &str) -> Value {
    let response = app.get_auth("/api/v1/users/current", access).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

async fn login_status(app: &TestApp, email: &str) -> StatusCode {
    app.login(email, PASSWORD).await.status()
}

/// Starts a change of ada's address to `NEW` and confirms it from the new mailbox.
async fn change_and_confirm(app: &TestApp, sink: &SmtpSink, tokens: &Tokens) {
    change_email(app, &tokens.access, NEW).await;
    let token = confirmation_token(sink, NEW, 1).await;
    let response = confirm(app, &token).await;
    assert_eq!(response.status(), StatusCode::OK);
}

on_both_backends! {
    async fn a_change_takes_effect_only_when_confirmed_from_the_new_mailbox(backend) {
        let sink = SmtpSink::start().await;
        let app = spawn_with_mail_on(backend, &sink.url(), |_| {}).await;
        let tokens = app.signed_in().await;

        let user = change_email(&app, &tokens.access, NEW).await;
        assert_eq!(user["email"], OLD);
        assert_eq!(user["pending_email"], NEW);
        let current = me(&app, &tokens.access).await;
        assert_eq!(current["email"], OLD);
        assert_eq!(current["pending_email"], NEW);
        assert_eq!(login_status(&app, OLD).await, StatusCode::OK);
        assert_eq!(login_status(&app, NEW).await, StatusCode::UNAUTHORIZED);

        let token = confirmation_token(&sink, NEW, 1).await;
        let response = confirm(&app, &token).await;
        assert_eq!(response.status(), StatusCode::OK);
        let user: Value = response.json().await.unwrap();
        assert_eq!(user["email"], NEW);
        assert_eq!(user["email_verified"], true);
        assert_eq!(user["pending_email"], Value::Null);
        assert_eq!(login_status(&app, NEW).await, StatusCode::OK);
        assert_eq!(login_status(&app, OLD).await, StatusCode::UNAUTHORIZED);

        assert_problem(
            confirm(&app, &token).await,
            StatusCode::BAD_REQUEST,
            "invalid_token",
        )
        .await;
    }

    async fn the_notice_to_the_old_address_names_the_new_one_only_masked_and_offers_no_reset(backend) {
        let sink = SmtpSink::start().await;
        let app = spawn_with_mail_on(backend, &sink.url(), |_| {}).await;
        let tokens = app.signed_in().await;
        change_email(&app, &tokens.access, NEW).await;

        let notice = sink.wait_for(OLD, NOTICE_SUBJECT).await;
        // It carries a cancel link.
        token_in(&notice);
        for part in ["text", "html"] {
            let body = notice[part].as_str().unwrap();
            assert!(body.contains("c***@example.com"), "{part}: {body}");
            assert!(!body.contains(NEW), "{part} names the new address: {body}");
            assert!(!body.contains("countess"), "{part}: {body}");
            // A reset would go to the address the account is about to have.
            for path in ["/reset-password", "/forgot-password"] {
                assert!(!body.contains(path), "{part} links to {path}: {body}");
            }
        }
    }

    async fn a_cancel_before_confirmation_drops_the_change_and_keeps_the_session(backend) {
        let sink = SmtpSink::start().await;
        let app = spawn_with_mail_on(backend, &sink.url(), |_| {}).await;
        let tokens = app.signed_in().await;
        change_email(&app, &tokens.access, NEW).await;
        let confirmation = confirmation_token(&sink, NEW, 1).await;
        let cancellation = cancel_token(&sink, OLD, 1).await;

        let response = cancel(&app, &cancellation).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            json!({"status": "cancelled"})
        );
        let current = me(&app, &tokens.access).await;
        assert_eq!(current["email"], OLD);
        assert_eq!(current["pending_email"], Value::Null);

        assert_problem(
            confirm(&app, &confirmation).await,
            StatusCode::BAD_REQUEST,
            "invalid_token",
        )
        .await;
        assert_eq!(app.current_status(&tokens.access).await, StatusCode::OK);
        assert_eq!(login_status(&app, NEW).await, StatusCode::UNAUTHORIZED);
        assert_problem(
            cancel(&app, &cancellation).await,
            StatusCode::BAD_REQUEST,
            "invalid_token",
        )
        .await;
    }

    async fn a_cancel_after_confirmation_reverts_the_change_and_ends_every_session(backend) {
        let sink = SmtpSink::start().await;
        let app = spawn_with_mail_on(backend, &sink.url(), |_| {}).await;
        let first = app.signed_in().await;
        let second = app.sign_in(OLD).await;
        change_and_confirm(&app, &sink, &first).await;
        // Whoever confirmed may have signed in with the new address: that session ends too.
        let third = app.sign_in(NEW).await;
        let cancellation = cancel_token(&sink, OLD, 1).await;

        let response = cancel(&app, &cancellation).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            json!({"status": "reverted"})
        );
        for (which, tokens) in [("first", &first), ("second", &second), ("third", &third)] {
            let response = app.get_auth("/api/v1/users/current", &tokens.access).await;
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{which} session"
            );
            assert_problem(response, StatusCode::UNAUTHORIZED, "session_revoked").await;
            assert_eq!(
                app.refresh(&tokens.refresh).await.status(),
                StatusCode::UNAUTHORIZED,
                "refresh of the {which} session"
            );
        }
        assert_eq!(login_status(&app, NEW).await, StatusCode::UNAUTHORIZED);
        let fresh = app.sign_in(OLD).await;
        let current = me(&app, &fresh.access).await;
        assert_eq!(current["email"], OLD);
        assert_eq!(current["email_verified"], true);
        assert_eq!(current["pending_email"], Value::Null);
    }

    async fn a_reset_link_sent_before_the_change_is_refused_after_it(backend) {
        let sink = SmtpSink::start().await;
        let app = spawn_with_mail_on(backend, &sink.url(), |_| {}).await;
        let tokens = app.signed_in().await;
        let response = app
            .post_json("/api/v1/auth/password/forgot", &json!({"email": OLD}))
            .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let reset_token = token_in(&sink.wait_for(OLD, "Reset your Dev Talk password").await);
        change_and_confirm(&app, &sink, &tokens).await;

        let response = app
            .post_json(
                "/api/v1/auth/password/reset",
                &json!({"token": reset_token, "new_password": "a brand new passphrase 42"}),
            )
            .await;
        assert_problem(response, StatusCode::BAD_REQUEST, "invalid_token").await;
        assert_eq!(login_status(&app, NEW).await, StatusCode::OK);
        assert_eq!(
            app.login(NEW, "a brand new passphrase 42").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }

    async fn a_verification_link_sent_before_the_change_is_refused_after_it(backend) {
        let sink = SmtpSink::start().await;
        let app = spawn_with_mail_on(backend, &sink.url(), |_| {}).await;
        let tokens = app.signed_in().await;
        let verify_token = token_in(&sink.wait_for(OLD, "Welcome").await);
        change_and_confirm(&app, &sink, &tokens).await;

        let response = app
            .post_json("/api/v1/auth/email/verify", &json!({"token": verify_token}))
            .await;
        assert_problem(response, StatusCode::BAD_REQUEST, "invalid_token").await;
        let current = me(&app, &tokens.access).await;
        assert_eq!(current["email"], NEW);
    }

    async fn a_second_change_replaces_the_first(backend) {
        let sink = SmtpSink::start().await;
        let app = spawn_with_mail_on(backend, &sink.url(), |_| {}).await;
        let tokens = app.signed_in().await;
        change_email(&app, &tokens.access, "first@example.com").await;
        let first_confirmation = confirmation_token(&sink, "first@example.com", 1).await;
        let first_cancellation = cancel_token(&sink, OLD, 1).await;
        let user = change_email(&app, &tokens.access, "second@example.com").await;
        assert_eq!(user["pending_email"], "second@example.com");
        let second_confirmation = confirmation_token(&sink, "second@example.com", 1).await;
        cancel_token(&sink, OLD, 2).await;

        assert_problem(
            confirm(&app, &first_confirmation).await,
            StatusCode::BAD_REQUEST,
            "invalid_token",
        )
        .await;
        assert_problem(
            cancel(&app, &first_cancellation).await,
            StatusCode::BAD_REQUEST,
            "invalid_token",
        )
        .await;
        let response = confirm(&app, &second_confirmation).await;
        assert_eq!(response.status(), StatusCode::OK);
        let user: Value = response.json().await.unwrap();
        assert_eq!(user["email"], "second@example.com");
        assert_eq!(user["pending_email"], Value::Null);
        assert_eq!(
            login_status(&app, "first@example.com").await,
            StatusCode::UNAUTHORIZED
        );
    }

    async fn a_change_to_a_registered_address_answers_the_same_and_sends_it_nothing(backend) {
        let sink = SmtpSink::start().await;
        // One email at a time, in the order they were queued: the confirmation is queued before
        // the notice, so once the notice is in, a confirmation would be too.
        let app = spawn_with_mail_on(backend, &sink.url(), |s| s.worker_concurrency = 1).await;
        let tokens = app.signed_in().await;
        app.register("bob@example.com", "bob").await;
        sink.wait_for("bob@example.com", "Welcome").await;

        for address in ["bob@example.com", "BOB@example.com"] {
            let response = app
                .patch_current(
                    &tokens.access,
                    &json!({"email": address, "current_password": PASSWORD}),
                )
                .await;
            assert_eq!(response.status(), StatusCode::OK, "PATCH email {address}");
            let user: Value = response.json().await.unwrap();
            assert_eq!(user["email"], OLD);
            assert_eq!(user["pending_email"], address);
        }
        sink.wait_for_nth(OLD, NOTICE_SUBJECT, 2).await;
        let to_bob = sink.messages_to("bob@example.com");
        assert_eq!(to_bob.len(), 1, "{to_bob:?}");
        assert!(
            to_bob[0]["subject"].as_str().unwrap().contains("Welcome"),
            "{to_bob:?}"
        );
        assert!(sink.messages_to("BOB@example.com").is_empty());
    }

    async fn a_confirmation_of_an_address_taken_meanwhile_is_409_and_changes_nothing(backend) {
        let sink = SmtpSink::start().await;
        let app = spawn_with_mail_on(backend, &sink.url(), |_| {}).await;
        let tokens = app.signed_in().await;
        change_email(&app, &tokens.access, NEW).await;
        let token = confirmation_token(&sink, NEW, 1).await;
        // A pending address is not reserved: someone registers it before the confirmation.
        app.register(NEW, "countess").await;
        assert_problem(
            confirm(&app, &token).await,
            StatusCode::CONFLICT,
            "email_taken",
        )
        .await;
        let user = me(&app, &tokens.access).await;
        assert_eq!(user["email"], OLD);
        assert_eq!(login_status(&app, OLD).await, StatusCode::OK);
    }

    async fn a_live_cancel_link_keeps_the_old_address_reserved(backend) {
        let sink = SmtpSink::start().await;
        let app = spawn_with_mail_on(backend, &sink.url(), |_| {}).await;
        let tokens = app.signed_in().await;
        change_and_confirm(&app, &sink, &tokens).await;

        let response = app
            .post_json(
                "/api/v1/auth/register",
                &json!({"email": OLD, "username": "squatter", "password": PASSWORD}),
            )
            .await;
        assert_problem(response, StatusCode::CONFLICT, "email_taken").await;
    }

    async fn an_intruder_who_changes_the_address_then_deletes_the_account_is_still_undone(backend) {
        let sink = SmtpSink::start().await;
        let app = spawn_with_mail_on(backend, &sink.url(), |_| {}).await;
        let tokens = app.signed_in().await;
        change_and_confirm(&app, &sink, &tokens).await;
        let deleted = app.delete_account(&tokens.access, PASSWORD).await;
        assert_eq!(deleted.status(), StatusCode::ACCEPTED);
        // The restoration email went to the intruder's address; the old owner's link still works.
        sink.wait_for(NEW, "you can restore it").await;
        let reverted = cancel(&app, &cancel_token(&sink, OLD, 1).await).await;
        assert_eq!(reverted.status(), StatusCode::OK);
        assert_eq!(
            reverted.json::<Value>().await.unwrap()["status"],
            "reverted"
        );
        // The address is the owner's again, and so is the restoration.
        let requested = app
            .post_json("/api/v1/users/restore/request", &json!({"email": OLD}))
            .await;
        assert_eq!(requested.status(), StatusCode::ACCEPTED);
        let token = token_in(&sink.wait_for(OLD, "you can restore it").await);
        let restored = app
            .post_json("/api/v1/users/restore", &json!({"token": token}))
            .await;
        assert_eq!(restored.status(), StatusCode::OK);
        assert_eq!(restored.json::<Value>().await.unwrap()["email"], OLD);
    }

    async fn confirm_and_cancel_at_the_same_moment_leave_the_old_address(backend) {
        let sink = SmtpSink::start().await;
        let app = spawn_with_mail_on(backend, &sink.url(), |_| {}).await;
        let (mut confirm_first, mut cancel_first) = (0, 0);
        let mut failures = Vec::new();
        for i in 0..8 {
            let old = format!("user{i}@example.com");
            let new = format!("new{i}@example.com");
            app.register(&old, &format!("user{i}")).await;
            let tokens = app.sign_in(&old).await;
            change_email(&app, &tokens.access, &new).await;
            let confirmation = confirmation_token(&sink, &new, 1).await;
            let cancellation = cancel_token(&sink, &old, 1).await;

            let (confirmed, cancelled) =
                tokio::join!(confirm(&app, &confirmation), cancel(&app, &cancellation));
            let confirmed_status = confirmed.status();
            let confirmed_body: Value = confirmed.json().await.unwrap();
            let cancelled_status = cancelled.status();
            let cancelled_body: Value = cancelled.json().await.unwrap();

            // The account first: whichever ran first, the old address is back and nothing waits.
            let new_signs_in = login_status(&app, &new).await;
            let signed_in = app.login(&old, PASSWORD).await;
            let old_signs_in = signed_in.status();
            let current = if old_signs_in == StatusCode::OK {
                let fresh = Tokens::from(signed_in.json::<Value>().await.unwrap());
                me(&app, &fresh.access).await
            } else {
                Value::Null
            };
            let state_ok = old_signs_in == StatusCode::OK
                && new_signs_in == StatusCode::UNAUTHORIZED
                && current["email"] == old.as_str()
                && current["pending_email"] == Value::Null;
            // Then the answers: a cancel that dropped the pending change leaves the confirm
            // nothing to confirm; a cancel after the confirm reverts it.
            let order = match (
                cancelled_status,
                cancelled_body["status"].as_str(),
                confirmed_status,
            ) {
                (StatusCode::OK, Some("cancelled"), StatusCode::BAD_REQUEST)
                    if confirmed_body["code"] == "invalid_token" =>
                {
                    cancel_first += 1;
                    Some("cancel first")
                }
                (StatusCode::OK, Some("reverted"), StatusCode::OK) => {
                    confirm_first += 1;
                    Some("confirm first")
                }
                _ => None,
            };
            if !state_ok || order.is_none() {
                // What the owner would get by opening the cancel link again.
                let retried = cancel(&app, &cancellation).await;
                let retried = format!(
                    "{} {}",
                    retried.status(),
                    retried.json::<Value>().await.unwrap()
                );
                failures.push(format!(
                    "round {i}: confirm {confirmed_status} {confirmed_body}, cancel \
                     {cancelled_status} {cancelled_body}; then sign-in with the old address \
                     {old_signs_in}, with the new {new_signs_in}; email {}, pending_email {}; the \
                     cancel link again: {retried}",
                    current["email"], current["pending_email"]
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "{confirm_first} rounds confirm-then-cancel, {cancel_first} cancel-then-confirm, {} \
             wrong:\n{}",
            failures.len(),
            failures.join("\n")
        );
        assert_eq!(confirm_first + cancel_first, 8);
    }

    async fn the_change_endpoints_refuse_ugly_bodies(backend) {
        let app = TestApp::spawn_on(backend).await;
        for path in [CONFIRM, CANCEL] {
            let response = app
                .client
                .post(app.url(path))
                .header("content-type", "application/json")
                .body("{")
                .send()
                .await
                .unwrap();
            assert_problem(response, StatusCode::BAD_REQUEST, "bad_request").await;

            for body in [json!({"token": 1}), json!({})] {
                let problem = assert_problem(
                    app.post_json(path, &body).await,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "validation_error",
                )
                .await;
                assert_eq!(problem["errors"][0]["field"], "token", "{path} {body}");
            }

            let extra = json!({"token": "A".repeat(43), "extra": true});
            assert_problem(
                app.post_json(path, &extra).await,
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_error",
            )
            .await;
        }
    }

    async fn the_change_endpoints_refuse_tokens_never_issued_or_of_the_other_kind(backend) {
        let sink = SmtpSink::start().await;
        let app = spawn_with_mail_on(backend, &sink.url(), |_| {}).await;
        let tokens = app.signed_in().await;
        change_email(&app, &tokens.access, NEW).await;
        let confirmation = confirmation_token(&sink, NEW, 1).await;
        let cancellation = cancel_token(&sink, OLD, 1).await;

        let never_issued = "Q".repeat(43);
        for path in [CONFIRM, CANCEL] {
            assert_problem(
                app.post_json(path, &json!({"token": never_issued})).await,
                StatusCode::BAD_REQUEST,
                "invalid_token",
            )
            .await;
        }
        assert_problem(
            confirm(&app, &cancellation).await,
            StatusCode::BAD_REQUEST,
            "invalid_token",
        )
        .await;
        assert_problem(
            cancel(&app, &confirmation).await,
            StatusCode::BAD_REQUEST,
            "invalid_token",
        )
        .await;
        // Nothing changed: the change still waits, and each token still works where it belongs.
        let current = me(&app, &tokens.access).await;
        assert_eq!(current["email"], OLD);
        assert_eq!(current["pending_email"], NEW);
        assert_eq!(confirm(&app, &confirmation).await.status(), StatusCode::OK);
        let response = cancel(&app, &cancellation).await;
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            json!({"status": "reverted"})
        );
    }
}
