//! Two-factor sign-in: setting up an authenticator app (TOTP) and recovery codes, the second
//! step of a sign-in and what it puts in the access token, the one-use rules of codes and
//! `mfa_token`s (also when requests race), the lockout, removal, sealing at rest, the export
//! and erasure, and hostile input on the new endpoints.
//!
//! The app's clock is a wall clock with an offset the test moves, so a test computes codes
//! itself at the app's time, and moves to the start of a fresh 30-second step before each
//! code it needs: a step is accepted once, and each accepted step must be newer than the last.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use dt_users::security::totp::TotpSecret;
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::backends::on_both_backends;
use crate::helpers::{
    Instance, MFA_KEY, PASSWORD, TestApp, Tokens, assert_problem, invalid_fields,
};
use crate::in_flight::{LOCKOUT_BURST, all_at_once, count_checked, signed_in_once};
use crate::ugly_input::send_raw;

const NEW_PASSWORD: &str = "an entirely new passphrase 7";
const STEP_MS: i64 = 30_000;
/// How long an `mfa_token` lives.
const MFA_TOKEN_TTL: i64 = 300;
/// The deletion grace period (the default).
const GRACE: i64 = 30 * 86_400;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Moves the app's clock to the very start of the next TOTP step, so that at least 29 s of
/// that step are left for the test, and a code of it is newer than any accepted before.
fn fresh_step(app: &TestApp) {
    let into_step = app.app.now().as_millis().rem_euclid(STEP_MS);
    app.clock.advance_secs((STEP_MS - into_step + 999) / 1000);
}

/// The TOTP step the app's clock is in.
fn step_now(app: &TestApp) -> i64 {
    TotpSecret::step_of(app.app.now())
}

fn code_at(secret: &TotpSecret, step: i64) -> String {
    secret.code_at_step(step).unwrap()
}

/// The code an authenticator app shows now (by the app's clock).
fn code_now(app: &TestApp, secret: &TotpSecret) -> String {
    code_at(secret, step_now(app))
}

/// A fresh step's code: newer than any accepted before.
pub(crate) fn next_code(app: &TestApp, secret: &TotpSecret) -> String {
    fresh_step(app);
    code_now(app, secret)
}

/// Six digits that are no code of the window around now.
fn wrong_code(app: &TestApp, secret: &TotpSecret) -> String {
    let step = step_now(app);
    let window: Vec<String> = (-1..=1).map(|d| code_at(secret, step + d)).collect();
    let mut n: u32 = window[1].parse().unwrap();
    loop {
        n = (n + 1) % 1_000_000;
        let candidate = format!("{n:06}");
        if !window.contains(&candidate) {
            return candidate;
        }
    }
}

/// The secret as the app shows it (base32), as bytes a test computes codes with.
fn secret_of(base32: &str) -> TotpSecret {
    let secret = totp_rs::Secret::try_from_base32(base32).unwrap();
    TotpSecret::from_bytes(secret.as_bytes().to_vec())
}

pub(crate) async fn post_auth(
    app: &TestApp,
    path: &str,
    access_token: &str,
    body: &Value,
) -> Response {
    app.client
        .post(app.url(path))
        .bearer_auth(access_token)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn start_totp(app: &TestApp, access_token: &str, password: &str) -> Response {
    post_auth(
        app,
        "/api/v1/users/current/mfa/totp",
        access_token,
        &json!({"current_password": password}),
    )
    .await
}

async fn confirm_totp(app: &TestApp, access_token: &str, code: &str) -> Response {
    post_auth(
        app,
        "/api/v1/users/current/mfa/totp/confirm",
        access_token,
        &json!({"code": code}),
    )
    .await
}

async fn delete_totp(app: &TestApp, access_token: &str, password: &str, code: &str) -> Response {
    app.client
        .delete(app.url("/api/v1/users/current/mfa/totp"))
        .bearer_auth(access_token)
        .json(&json!({"current_password": password, "code": code}))
        .send()
        .await
        .unwrap()
}

async fn regenerate_codes(app: &TestApp, access_token: &str, password: &str) -> Response {
    post_auth(
        app,
        "/api/v1/users/current/mfa/recovery-codes",
        access_token,
        &json!({"current_password": password}),
    )
    .await
}

/// Starts the set-up; returns the base32 secret.
async fn started(app: &TestApp, access_token: &str) -> String {
    let response = start_totp(app, access_token, PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["secret"].as_str().unwrap().to_owned()
}

/// The recovery codes of a 200 answer.
async fn codes_of(response: Response) -> Vec<String> {
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect()
}

/// Turns two-factor sign-in on for the account `access_token` signs in; returns the secret
/// and the ten recovery codes. The clock is left at the start of a step no code was used in.
async fn enable_totp(app: &TestApp, access_token: &str) -> (TotpSecret, Vec<String>) {
    let secret = secret_of(&started(app, access_token).await);
    let code = next_code(app, &secret);
    let codes = codes_of(confirm_totp(app, access_token, &code).await).await;
    assert_eq!(codes.len(), 10, "{codes:?}");
    fresh_step(app);
    (secret, codes)
}

/// The first step of a sign-in with two-factor on: the `mfa_token` of the 403, which no cache
/// may keep.
async fn mfa_token(app: &TestApp, email: &str, password: &str) -> String {
    let response = app.login(email, password).await;
    assert_eq!(response.headers().get("cache-control").unwrap(), "no-store");
    let body = assert_problem(response, StatusCode::FORBIDDEN, "mfa_required").await;
    body["mfa_token"].as_str().unwrap().to_owned()
}

async fn with_totp(app: &TestApp, mfa_token: &str, code: &str) -> Response {
    app.post_json(
        "/api/v1/auth/mfa",
        &json!({"mfa_token": mfa_token, "totp_code": code}),
    )
    .await
}

async fn with_recovery_code(app: &TestApp, mfa_token: &str, code: &str) -> Response {
    app.post_json(
        "/api/v1/auth/mfa",
        &json!({"mfa_token": mfa_token, "recovery_code": code}),
    )
    .await
}

/// Both steps of a sign-in with a fresh step's code.
async fn sign_in_with_totp(app: &TestApp, email: &str, secret: &TotpSecret) -> Tokens {
    let token = mfa_token(app, email, PASSWORD).await;
    let response = with_totp(app, &token, &next_code(app, secret)).await;
    assert_eq!(response.status(), StatusCode::OK);
    Tokens::from(response.json::<Value>().await.unwrap())
}

/// Both steps of a sign-in of `ada@example.com`, sent to `instance` (another instance on the
/// app's data), with a fresh step's code; the answer of the second.
async fn two_steps_on(app: &TestApp, instance: &Instance, secret: &TotpSecret) -> Response {
    let login = app
        .client
        .post(instance.url("/api/v1/auth/login"))
        .json(&json!({"email": "ada@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let token = assert_problem(login, StatusCode::FORBIDDEN, "mfa_required").await["mfa_token"]
        .as_str()
        .unwrap()
        .to_owned();
    app.client
        .post(instance.url("/api/v1/auth/mfa"))
        .json(&json!({"mfa_token": token, "totp_code": next_code(app, secret)}))
        .send()
        .await
        .unwrap()
}

/// The `amr` claim of an access token.
pub(crate) fn amr(access_token: &str) -> Vec<String> {
    let payload = access_token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["amr"]
        .as_array()
        .unwrap_or_else(|| panic!("no amr in {claims}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

pub(crate) async fn current_user(app: &TestApp, access_token: &str) -> Value {
    let response = app.get_auth("/api/v1/users/current", access_token).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// The payloads of the outbox rows `name` of `user_id`, oldest first.
pub(crate) async fn outbox(app: &TestApp, user_id: &str, name: &str) -> Vec<Value> {
    let mut conn = app.db().await;
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT payload FROM outbox WHERE user_id = ? AND name = ? ORDER BY seq")
            .bind(user_id.to_owned())
            .bind(name.to_owned())
            .fetch_all(&mut conn)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(payload,)| serde_json::from_str(&payload).unwrap())
        .collect()
}

/// Rows of `user_id` in `mfa_totp`, `recovery_codes` and `mfa_challenges`.
async fn mfa_rows(app: &TestApp, user_id: &str) -> [i64; 3] {
    let mut conn = app.db().await;
    let mut counts = [0; 3];
    for (count, table) in counts
        .iter_mut()
        .zip(["mfa_totp", "recovery_codes", "mfa_challenges"])
    {
        let sql = format!("SELECT COUNT(*) FROM {table} WHERE user_id = ?");
        let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(user_id.to_owned())
            .fetch_one(&mut conn)
            .await
            .unwrap();
        *count = n;
    }
    counts
}

/// The stored (sealed) TOTP secret of `user_id`.
async fn sealed_of(app: &TestApp, user_id: &str) -> String {
    let mut conn = app.db().await;
    let (sealed,): (String,) =
        sqlx::query_as("SELECT secret_sealed FROM mfa_totp WHERE user_id = ?")
            .bind(user_id.to_owned())
            .fetch_one(&mut conn)
            .await
            .unwrap();
    sealed
}

/// The key id of a sealed value: `v1.<key id>.<body>`.
fn key_id_of(sealed: &str) -> String {
    sealed.split('.').nth(1).unwrap().to_owned()
}

/// Registers `user{round}` and signs the owner in (with the password alone).
async fn account(app: &TestApp, round: usize) -> (String, Tokens) {
    let email = format!("user{round}@example.com");
    app.register(&email, &format!("user{round}")).await;
    let owner = app.sign_in(&email).await;
    (email, owner)
}

/// Both tokens of `tokens` are refused.
async fn assert_dead(app: &TestApp, tokens: &Tokens, what: &str) {
    assert_eq!(
        app.current_status(&tokens.access).await,
        StatusCode::UNAUTHORIZED,
        "{what}: access token alive"
    );
    assert_eq!(
        app.refresh(&tokens.refresh).await.status(),
        StatusCode::UNAUTHORIZED,
        "{what}: refresh token alive"
    );
}

/// A fresh sealing key, base64, as configured.
fn another_key() -> String {
    let mut key = [0_u8; 32];
    rand::fill(&mut key);
    STANDARD.encode(key)
}

// ---------------------------------------------------------------------------------------------
// The main flows, on both backends
// ---------------------------------------------------------------------------------------------

on_both_backends! {
    async fn an_authenticator_makes_sign_in_two_steps_ending_with_mfa_in_amr(backend) {
        let app = TestApp::spawn_on(backend).await;
        let owner = app.signed_in().await;
        assert_eq!(amr(&owner.access), ["pwd"]);
        let user_id = app.current_user_id(&owner.access).await;

        let response = start_totp(&app, &owner.access, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["cache-control"], "no-store");
        let body: Value = response.json().await.unwrap();
        let base32 = body["secret"].as_str().unwrap().to_owned();
        let uri = body["otpauth_uri"].as_str().unwrap();
        assert!(uri.starts_with("otpauth://totp/"), "{uri}");
        assert!(uri.contains(&format!("secret={base32}")), "{uri}");
        let secret = secret_of(&base32);
        assert_eq!(secret.base32(), base32);

        // Pending: sign-in is still the password alone.
        assert_eq!(current_user(&app, &owner.access).await["mfa_enabled"], false);
        assert_eq!(app.login("ada@example.com", PASSWORD).await.status(), StatusCode::OK);

        let code = next_code(&app, &secret);
        let response = confirm_totp(&app, &owner.access, &code).await;
        assert_eq!(response.headers()["cache-control"], "no-store");
        let codes = codes_of(response).await;
        assert_eq!(codes.len(), 10);
        let distinct: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(distinct.len(), 10, "{codes:?}");
        assert_eq!(current_user(&app, &owner.access).await["mfa_enabled"], true);
        let notices = outbox(&app, &user_id, "two_factor_enabled").await;
        assert_eq!(notices.len(), 1, "{notices:?}");

        // The password alone no longer signs in.
        let first = assert_problem(
            app.login("ada@example.com", PASSWORD).await,
            StatusCode::FORBIDDEN,
            "mfa_required",
        )
        .await;
        let token = first["mfa_token"].as_str().unwrap().to_owned();
        assert!(token.starts_with("dtm_") && token.len() > 20, "{token}");
        assert_eq!(first["methods"], json!(["totp", "recovery_code"]));

        let response = with_totp(&app, &token, &next_code(&app, &secret)).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["cache-control"], "no-store");
        let pair: Value = response.json().await.unwrap();
        assert_eq!(pair["token_type"], "bearer");
        let tokens = Tokens::from(pair);
        assert_eq!(amr(&tokens.access), ["pwd", "otp", "mfa"]);
        assert_eq!(current_user(&app, &tokens.access).await["id"], user_id.as_str());

        // The session keeps how it was signed in.
        let refreshed = app.refresh(&tokens.refresh).await;
        assert_eq!(refreshed.status(), StatusCode::OK);
        let refreshed = Tokens::from(refreshed.json::<Value>().await.unwrap());
        assert_eq!(amr(&refreshed.access), ["pwd", "otp", "mfa"]);
    }

    async fn a_recovery_code_signs_in_once_whatever_its_case_and_separators(backend) {
        let app = TestApp::spawn_on(backend).await;
        let owner = app.signed_in().await;
        let user_id = app.current_user_id(&owner.access).await;
        let (_, codes) = enable_totp(&app, &owner.access).await;

        // As typed by a person: upper case, no dashes.
        let typed = codes[0].replace('-', "").to_uppercase();
        let token = mfa_token(&app, "ada@example.com", PASSWORD).await;
        let response = with_recovery_code(&app, &token, &typed).await;
        assert_eq!(response.status(), StatusCode::OK);
        let tokens = Tokens::from(response.json::<Value>().await.unwrap());
        assert_eq!(amr(&tokens.access), ["pwd", "otp", "mfa"]);
        let notices = outbox(&app, &user_id, "recovery_code_used").await;
        assert_eq!(notices.len(), 1, "{notices:?}");
        assert_eq!(notices[0]["params"]["codes_left"], 9, "{}", notices[0]);

        // Spent, in whatever form it is given again.
        for again in [codes[0].clone(), codes[0].replace('-', " ")] {
            let token = mfa_token(&app, "ada@example.com", PASSWORD).await;
            assert_problem(
                with_recovery_code(&app, &token, &again).await,
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
            )
            .await;
        }
        assert_eq!(outbox(&app, &user_id, "recovery_code_used").await.len(), 1);

        // Another one works, separated by spaces.
        let token = mfa_token(&app, "ada@example.com", PASSWORD).await;
        let response = with_recovery_code(&app, &token, &codes[1].replace('-', " ")).await;
        assert_eq!(response.status(), StatusCode::OK);
        let notices = outbox(&app, &user_id, "recovery_code_used").await;
        assert_eq!(notices.len(), 2);
        assert_eq!(notices[1]["params"]["codes_left"], 8, "{}", notices[1]);
    }

    async fn new_recovery_codes_replace_the_old_ones(backend) {
        let app = TestApp::spawn_on(backend).await;
        let owner = app.signed_in().await;
        let (_, old) = enable_totp(&app, &owner.access).await;

        assert_problem(
            regenerate_codes(&app, &owner.access, "not my password at all").await,
            StatusCode::FORBIDDEN,
            "invalid_credentials",
        )
        .await;
        let response = regenerate_codes(&app, &owner.access, PASSWORD).await;
        assert_eq!(response.headers()["cache-control"], "no-store");
        let new = codes_of(response).await;
        assert_eq!(new.len(), 10);
        assert!(new.iter().all(|c| !old.contains(c)), "{new:?} {old:?}");

        let token = mfa_token(&app, "ada@example.com", PASSWORD).await;
        for dead in &old {
            assert_problem(
                with_recovery_code(&app, &token, dead).await,
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
            )
            .await;
        }
        // The refusals left the token usable; a new code signs in.
        let response = with_recovery_code(&app, &token, &new[3]).await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    async fn removing_the_authenticator_brings_back_password_only_sign_in(backend) {
        let app = TestApp::spawn_on(backend).await;
        let owner = app.signed_in().await;
        let user_id = app.current_user_id(&owner.access).await;
        let (secret, _) = enable_totp(&app, &owner.access).await;

        let code = next_code(&app, &secret);
        assert_problem(
            delete_totp(&app, &owner.access, "not my password at all", &code).await,
            StatusCode::FORBIDDEN,
            "invalid_credentials",
        )
        .await;
        assert_problem(
            delete_totp(&app, &owner.access, PASSWORD, &wrong_code(&app, &secret)).await,
            StatusCode::FORBIDDEN,
            "invalid_credentials",
        )
        .await;
        assert_problem(
            delete_totp(&app, &owner.access, PASSWORD, "0000-0000-0000-0000").await,
            StatusCode::FORBIDDEN,
            "invalid_credentials",
        )
        .await;
        // Still on after the refusals.
        assert_eq!(current_user(&app, &owner.access).await["mfa_enabled"], true);
        let [totp, recovery, _] = mfa_rows(&app, &user_id).await;
        assert_eq!((totp, recovery), (1, 10));

        let response = delete_totp(&app, &owner.access, PASSWORD, &code).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert_eq!(current_user(&app, &owner.access).await["mfa_enabled"], false);
        let [totp, recovery, _] = mfa_rows(&app, &user_id).await;
        assert_eq!((totp, recovery), (0, 0));
        assert_eq!(outbox(&app, &user_id, "two_factor_disabled").await.len(), 1);

        // The password alone signs in again.
        let response = app.login("ada@example.com", PASSWORD).await;
        assert_eq!(response.status(), StatusCode::OK);
        let tokens = Tokens::from(response.json::<Value>().await.unwrap());
        assert_eq!(amr(&tokens.access), ["pwd"]);

        // Nothing left to remove, no codes to renew.
        assert_problem(
            delete_totp(&app, &owner.access, PASSWORD, &next_code(&app, &secret)).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
        assert_problem(
            regenerate_codes(&app, &owner.access, PASSWORD).await,
            StatusCode::CONFLICT,
            "mfa_not_enabled",
        )
        .await;
    }

    async fn erasing_the_account_removes_its_second_factors(backend) {
        let app = TestApp::spawn_on(backend).await;
        let owner = app.signed_in().await;
        let user_id = app.current_user_id(&owner.access).await;
        let (_, codes) = enable_totp(&app, &owner.access).await;
        // A challenge used, one left pending.
        let used = mfa_token(&app, "ada@example.com", PASSWORD).await;
        assert_eq!(
            with_recovery_code(&app, &used, &codes[0]).await.status(),
            StatusCode::OK
        );
        mfa_token(&app, "ada@example.com", PASSWORD).await;
        assert_eq!(
            app.delete_account(&owner.access, PASSWORD).await.status(),
            StatusCode::ACCEPTED
        );
        app.clock.advance_secs(GRACE + 1);
        // Still there until the sweep.
        assert_eq!(mfa_rows(&app, &user_id).await, [1, 10, 2]);
        assert_eq!(
            app.app.purge_due_accounts(app.app.now(), 100).await.unwrap(),
            1
        );
        assert_eq!(mfa_rows(&app, &user_id).await, [0, 0, 0]);
    }
}

// ---------------------------------------------------------------------------------------------
// Set-up
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn starting_the_set_up_needs_the_current_password() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let user_id = app.current_user_id(&owner.access).await;
    assert_problem(
        start_totp(&app, &owner.access, "not my password at all").await,
        StatusCode::FORBIDDEN,
        "invalid_credentials",
    )
    .await;
    assert_eq!(mfa_rows(&app, &user_id).await[0], 0);
    let anonymous = app
        .post_json(
            "/api/v1/users/current/mfa/totp",
            &json!({"current_password": PASSWORD}),
        )
        .await;
    assert_problem(anonymous, StatusCode::UNAUTHORIZED, "not_authenticated").await;
}

#[tokio::test]
async fn a_second_start_replaces_the_pending_secret() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let user_id = app.current_user_id(&owner.access).await;
    let first = secret_of(&started(&app, &owner.access).await);
    let second = secret_of(&started(&app, &owner.access).await);
    assert_ne!(first.as_bytes(), second.as_bytes());
    assert_eq!(mfa_rows(&app, &user_id).await[0], 1);

    fresh_step(&app);
    assert_problem(
        confirm_totp(&app, &owner.access, &code_now(&app, &first)).await,
        StatusCode::BAD_REQUEST,
        "invalid_code",
    )
    .await;
    let codes = codes_of(confirm_totp(&app, &owner.access, &code_now(&app, &second)).await).await;
    assert_eq!(codes.len(), 10);
    assert_eq!(current_user(&app, &owner.access).await["mfa_enabled"], true);
    // The second secret is the one that signs in.
    sign_in_with_totp(&app, "ada@example.com", &second).await;
}

#[tokio::test]
async fn confirming_needs_a_pending_set_up_and_its_code() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    fresh_step(&app);
    // Nothing pending.
    assert_problem(
        confirm_totp(&app, &owner.access, "123456").await,
        StatusCode::BAD_REQUEST,
        "invalid_code",
    )
    .await;
    let secret = secret_of(&started(&app, &owner.access).await);
    for wrong in [wrong_code(&app, &secret), "abcdef".into(), String::new()] {
        assert_problem(
            confirm_totp(&app, &owner.access, &wrong).await,
            StatusCode::BAD_REQUEST,
            "invalid_code",
        )
        .await;
    }
    assert_eq!(
        current_user(&app, &owner.access).await["mfa_enabled"],
        false
    );
    // A code as apps show it, with a space.
    let code = code_now(&app, &secret);
    let spaced = format!("{} {}", &code[..3], &code[3..]);
    assert_eq!(
        codes_of(confirm_totp(&app, &owner.access, &spaced).await)
            .await
            .len(),
        10
    );

    // Confirmed: neither a second confirmation nor a new set-up.
    assert_problem(
        confirm_totp(&app, &owner.access, &next_code(&app, &secret)).await,
        StatusCode::CONFLICT,
        "mfa_already_enabled",
    )
    .await;
    assert_problem(
        start_totp(&app, &owner.access, PASSWORD).await,
        StatusCode::CONFLICT,
        "mfa_already_enabled",
    )
    .await;
    // And the authenticator in use is still the first.
    sign_in_with_totp(&app, "ada@example.com", &secret).await;
}

// ---------------------------------------------------------------------------------------------
// The second step
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_wrong_password_is_answered_as_for_an_unknown_email_with_two_factor_on() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    enable_totp(&app, &owner.access).await;
    let wrong = app.login("ada@example.com", "not my password at all").await;
    let unknown = app
        .login("nobody@example.com", "not my password at all")
        .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        wrong.headers().get("www-authenticate"),
        unknown.headers().get("www-authenticate")
    );
    let wrong: Value = wrong.json().await.unwrap();
    let unknown: Value = unknown.json().await.unwrap();
    assert_eq!(wrong["code"], "invalid_credentials");
    assert_eq!(wrong, unknown);
    // Only the right password learns that a second step is needed.
    mfa_token(&app, "ada@example.com", PASSWORD).await;
}

#[tokio::test]
async fn a_totp_code_signs_in_once() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let (secret, _) = enable_totp(&app, &owner.access).await;
    let code = next_code(&app, &secret);
    let first = mfa_token(&app, "ada@example.com", PASSWORD).await;
    assert_eq!(
        with_totp(&app, &first, &code).await.status(),
        StatusCode::OK
    );
    let second = mfa_token(&app, "ada@example.com", PASSWORD).await;
    assert_problem(
        with_totp(&app, &second, &code).await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    // The token was not the reason: the next step's code signs in with it.
    let response = with_totp(&app, &second, &next_code(&app, &secret)).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_code_older_than_the_last_accepted_one_is_refused() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let (secret, _) = enable_totp(&app, &owner.access).await;
    fresh_step(&app);
    let step = step_now(&app);
    let token = mfa_token(&app, "ada@example.com", PASSWORD).await;
    assert_eq!(
        with_totp(&app, &token, &code_at(&secret, step + 1))
            .await
            .status(),
        StatusCode::OK
    );
    // The current step's code, and the one before, are within the window but older.
    for older in [step, step - 1] {
        let token = mfa_token(&app, "ada@example.com", PASSWORD).await;
        assert_problem(
            with_totp(&app, &token, &code_at(&secret, older)).await,
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
        )
        .await;
    }
}

#[tokio::test]
async fn the_totp_window_is_one_step_either_side() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let (secret, _) = enable_totp(&app, &owner.access).await;
    // Two steps past the one confirmed: every step of the window, and the one before it, is
    // newer than the last accepted step, so only the window decides.
    fresh_step(&app);
    fresh_step(&app);
    let step = step_now(&app);
    let token = mfa_token(&app, "ada@example.com", PASSWORD).await;
    for offset in [-2, 2, -3, 3] {
        assert_problem(
            with_totp(&app, &token, &code_at(&secret, step + offset)).await,
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
        )
        .await;
    }
    let response = with_totp(&app, &token, &code_at(&secret, step - 1)).await;
    assert_eq!(response.status(), StatusCode::OK, "step - 1");
    let token = mfa_token(&app, "ada@example.com", PASSWORD).await;
    let response = with_totp(&app, &token, &code_at(&secret, step + 1)).await;
    assert_eq!(response.status(), StatusCode::OK, "step + 1");
    assert_eq!(step_now(&app), step, "the test ran over a step boundary");
}

#[tokio::test]
async fn a_wrong_code_leaves_the_mfa_token_usable() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let (secret, codes) = enable_totp(&app, &owner.access).await;
    let token = mfa_token(&app, "ada@example.com", PASSWORD).await;
    fresh_step(&app);
    let problem = assert_problem(
        with_totp(&app, &token, &wrong_code(&app, &secret)).await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    assert!(problem.get("mfa_token").is_none(), "{problem}");
    for not_a_code in ["0000-0000-0000-0000", "abcd"] {
        assert_problem(
            with_recovery_code(&app, &token, not_a_code).await,
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
        )
        .await;
    }
    // A recovery code given as a TOTP code is wrong too, and not spent.
    assert_problem(
        with_totp(&app, &token, &codes[0]).await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    let response = with_totp(&app, &token, &code_now(&app, &secret)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let token = mfa_token(&app, "ada@example.com", PASSWORD).await;
    assert_eq!(
        with_recovery_code(&app, &token, &codes[0]).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn an_mfa_token_signs_in_once() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let user_id = app.current_user_id(&owner.access).await;
    let (secret, codes) = enable_totp(&app, &owner.access).await;
    let token = mfa_token(&app, "ada@example.com", PASSWORD).await;
    assert_eq!(
        with_totp(&app, &token, &next_code(&app, &secret))
            .await
            .status(),
        StatusCode::OK
    );
    // Used: a right code of another kind, or of a later step, does not make it work again.
    assert_problem(
        with_recovery_code(&app, &token, &codes[0]).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    assert_problem(
        with_totp(&app, &token, &next_code(&app, &secret)).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    // The refused attempt spent nothing.
    assert!(
        outbox(&app, &user_id, "recovery_code_used")
            .await
            .is_empty()
    );
    let fresh = mfa_token(&app, "ada@example.com", PASSWORD).await;
    assert_eq!(
        with_recovery_code(&app, &fresh, &codes[0]).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn an_unknown_or_expired_mfa_token_is_invalid_token() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let (secret, _) = enable_totp(&app, &owner.access).await;
    let code = code_now(&app, &secret);
    let made_up = format!("dtm_{}", uuid::Uuid::new_v4().simple());
    for unknown in [made_up.as_str(), "dtm_", "", "not a token"] {
        let problem = assert_problem(
            with_totp(&app, unknown, &code).await,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        )
        .await;
        assert!(problem.get("mfa_token").is_none(), "{problem}");
    }

    let token = mfa_token(&app, "ada@example.com", PASSWORD).await;
    app.clock.advance_secs(MFA_TOKEN_TTL + 1);
    let code = next_code(&app, &secret);
    assert_problem(
        with_totp(&app, &token, &code).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    // The code was right: with a live token it signs in.
    let live = mfa_token(&app, "ada@example.com", PASSWORD).await;
    assert_eq!(with_totp(&app, &live, &code).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn exactly_one_of_totp_code_and_recovery_code_is_needed() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let (secret, codes) = enable_totp(&app, &owner.access).await;
    let token = mfa_token(&app, "ada@example.com", PASSWORD).await;
    let code = code_now(&app, &secret);
    let both = app
        .post_json(
            "/api/v1/auth/mfa",
            &json!({"mfa_token": token, "totp_code": code, "recovery_code": codes[0]}),
        )
        .await;
    let fields = invalid_fields(both).await;
    assert!(
        fields
            .iter()
            .any(|f| f == "totp_code" || f == "recovery_code"),
        "{fields:?}"
    );
    let neither = app
        .post_json("/api/v1/auth/mfa", &json!({"mfa_token": token}))
        .await;
    let fields = invalid_fields(neither).await;
    assert!(
        fields
            .iter()
            .any(|f| f == "totp_code" || f == "recovery_code"),
        "{fields:?}"
    );
    let unknown = app
        .post_json(
            "/api/v1/auth/mfa",
            &json!({"mfa_token": token, "totp_code": code, "webauthn_assertion": {}}),
        )
        .await;
    let status = unknown.status();
    assert!(
        status == StatusCode::UNPROCESSABLE_ENTITY || status == StatusCode::BAD_REQUEST,
        "{status}"
    );
    assert_eq!(
        unknown.headers()["content-type"],
        "application/problem+json"
    );
    let no_token = app
        .post_json("/api/v1/auth/mfa", &json!({"totp_code": code}))
        .await;
    assert_eq!(invalid_fields(no_token).await, ["mfa_token"]);
    // None of that used the token or the code.
    assert_eq!(
        with_totp(&app, &token, &code).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_ban_between_the_two_steps_refuses_the_session() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let user_id = app.current_user_id(&owner.access).await;
    let (secret, _) = enable_totp(&app, &owner.access).await;
    let token = mfa_token(&app, "ada@example.com", PASSWORD).await;
    let ban = dt_users::service::Command::Ban {
        user_id: user_id.parse().unwrap(),
        reason: None,
    };
    app.app.apply_command("ban-1", &ban).await.unwrap();
    assert_problem(
        with_totp(&app, &token, &next_code(&app, &secret)).await,
        StatusCode::FORBIDDEN,
        "account_banned",
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Races, each for several rounds
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn twelve_uses_of_one_mfa_token_and_code_at_once_sign_in_once() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let (secret, _) = enable_totp(&app, &owner.access).await;
    for round in 0..8 {
        let token = mfa_token(&app, "ada@example.com", PASSWORD).await;
        let code = next_code(&app, &secret);
        let requests = (0..12)
            .map(|_| {
                app.client
                    .post(app.url("/api/v1/auth/mfa"))
                    .json(&json!({"mfa_token": token, "totp_code": code}))
            })
            .collect();
        let answers = all_at_once(requests).await;
        signed_in_once(&answers, &format!("round {round}"));
    }
}

#[tokio::test]
async fn one_mfa_token_with_ten_recovery_codes_at_once_signs_in_once() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let user_id = app.current_user_id(&owner.access).await;
    enable_totp(&app, &owner.access).await;
    for round in 0..8 {
        // Ten unused codes, each of which would sign in: only the token can stop nine of them.
        let codes = codes_of(regenerate_codes(&app, &owner.access, PASSWORD).await).await;
        let token = mfa_token(&app, "ada@example.com", PASSWORD).await;
        let requests = codes
            .iter()
            .map(|code| {
                app.client
                    .post(app.url("/api/v1/auth/mfa"))
                    .json(&json!({"mfa_token": token, "recovery_code": code}))
            })
            .collect();
        let answers = all_at_once(requests).await;
        signed_in_once(&answers, &format!("round {round}"));
        // Exactly one code was spent, and one notice queued.
        let mut conn = app.db().await;
        let (unused,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM recovery_codes WHERE user_id = ? AND used_at IS NULL",
        )
        .bind(user_id.clone())
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(unused, 9, "round {round}");
        assert_eq!(
            outbox(&app, &user_id, "recovery_code_used").await.len(),
            round + 1,
            "round {round}"
        );
    }
}

#[tokio::test]
async fn eighty_wrong_codes_at_once_are_no_more_than_the_lockout_burst() {
    let app = TestApp::spawn_with(|s| {
        s.rate_limit_enabled = true;
        s.trusted_proxies = "127.0.0.1".into();
    })
    .await;
    for round in 0..5 {
        // The lockout is per account: one account per round.
        let (email, owner) = account(&app, round).await;
        let (secret, _) = enable_totp(&app, &owner.access).await;
        let login = app
            .client
            .post(app.url("/api/v1/auth/login"))
            .header("x-forwarded-for", format!("192.0.2.{round}"))
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        let token = assert_problem(login, StatusCode::FORBIDDEN, "mfa_required").await["mfa_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let wrong = wrong_code(&app, &secret);
        let requests = (0..80)
            .map(|i| {
                app.client
                    .post(app.url("/api/v1/auth/mfa"))
                    .header("x-forwarded-for", format!("10.{round}.0.{i}"))
                    .json(&json!({"mfa_token": token, "totp_code": wrong}))
            })
            .collect();
        let answers = all_at_once(requests).await;
        let checked = count_checked(&answers, StatusCode::UNAUTHORIZED);
        assert!(
            (1..=LOCKOUT_BURST).contains(&checked),
            "round {round}: {checked} of 80 wrong codes were checked"
        );
        // Wrong codes one by one until the lockout answers: the burst is all there was.
        let mut one_by_one = 0;
        let mut refused = false;
        for i in 0..=LOCKOUT_BURST {
            let answer = app
                .client
                .post(app.url("/api/v1/auth/mfa"))
                .header("x-forwarded-for", format!("10.{round}.1.{i}"))
                .json(&json!({"mfa_token": token, "totp_code": wrong}))
                .send()
                .await
                .unwrap()
                .status();
            if answer == StatusCode::TOO_MANY_REQUESTS {
                refused = true;
                break;
            }
            assert_eq!(answer, StatusCode::UNAUTHORIZED, "round {round}");
            one_by_one += 1;
        }
        assert!(
            refused && checked + one_by_one <= LOCKOUT_BURST,
            "round {round}: {checked} at once and {one_by_one} one by one were checked"
        );
        // Locked out: the right code is not even checked now.
        let locked = app
            .client
            .post(app.url("/api/v1/auth/mfa"))
            .header("x-forwarded-for", "198.51.100.1")
            .json(&json!({"mfa_token": token, "totp_code": code_now(&app, &secret)}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            locked.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "round {round}"
        );
        // The lockout is soft: after its window the owner signs in.
        app.clock.advance_secs(3_600);
        let login = app
            .client
            .post(app.url("/api/v1/auth/login"))
            .header("x-forwarded-for", "198.51.100.2")
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        let token = assert_problem(login, StatusCode::FORBIDDEN, "mfa_required").await["mfa_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let owner_again = app
            .client
            .post(app.url("/api/v1/auth/mfa"))
            .header("x-forwarded-for", "198.51.100.2")
            .json(&json!({"mfa_token": token, "totp_code": next_code(&app, &secret)}))
            .send()
            .await
            .unwrap();
        assert_eq!(owner_again.status(), StatusCode::OK, "round {round}");
    }
}

#[tokio::test]
async fn a_password_change_between_the_two_steps_refuses_the_session() {
    let app = TestApp::spawn().await;
    for round in 0..5 {
        // The owner's session was signed in before two-factor sign-in was turned on.
        let (email, owner) = account(&app, round).await;
        let (secret, _) = enable_totp(&app, &owner.access).await;
        let before = mfa_token(&app, &email, PASSWORD).await;
        let racing = mfa_token(&app, &email, PASSWORD).await;

        // One second step races the change: it may win, but its session must not outlive it.
        let code = code_now(&app, &secret);
        let change = json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD});
        let (changed, raced) = tokio::join!(
            app.patch_current(&owner.access, &change),
            with_totp(&app, &racing, &code),
        );
        assert_eq!(changed.status(), StatusCode::OK, "round {round}");
        if raced.status() == StatusCode::OK {
            let tokens = Tokens::from(raced.json::<Value>().await.unwrap());
            assert_dead(&app, &tokens, &format!("round {round}, raced")).await;
        } else {
            assert_eq!(
                raced.status(),
                StatusCode::UNAUTHORIZED,
                "round {round}, raced"
            );
            let body: Value = raced.json().await.unwrap();
            assert_eq!(
                body["code"], "invalid_token",
                "round {round}, raced: {body}"
            );
        }

        // The other token, obtained before the change, is used after it, with a right code.
        let response = with_totp(&app, &before, &next_code(&app, &secret)).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "round {round}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "invalid_token", "round {round}: {body}");

        // The new password, and its second step, sign in.
        let after = mfa_token(&app, &email, NEW_PASSWORD).await;
        let response = with_totp(&app, &after, &next_code(&app, &secret)).await;
        assert_eq!(response.status(), StatusCode::OK, "round {round}");
        // The session that changed the password stays.
        assert_eq!(
            app.current_status(&owner.access).await,
            StatusCode::OK,
            "round {round}"
        );
    }
}

#[tokio::test]
async fn a_set_up_restarted_while_confirming_never_confirms_a_secret_no_code_was_given_for() {
    let app = TestApp::spawn().await;
    for round in 0..30 {
        let (email, owner) = account(&app, round).await;
        let first = secret_of(&started(&app, &owner.access).await);
        let code = next_code(&app, &first);
        // The confirmation is sent a little later each round, to meet the restart at each
        // of its stages.
        let delay = std::time::Duration::from_micros(500 * (round as u64 % 12));
        let (confirmed, restarted) = tokio::join!(
            async {
                tokio::time::sleep(delay).await;
                confirm_totp(&app, &owner.access, &code).await
            },
            start_totp(&app, &owner.access, PASSWORD),
        );
        let confirmed = confirmed.status();
        let second = if restarted.status() == StatusCode::OK {
            let body: Value = restarted.json().await.unwrap();
            Some(secret_of(body["secret"].as_str().unwrap()))
        } else {
            None
        };
        if confirmed != StatusCode::OK {
            continue;
        }
        // Two-factor sign-in is on with the first secret: its codes sign in.
        let token = mfa_token(&app, &email, PASSWORD).await;
        let step = next_code(&app, &first);
        let first_signs_in = with_totp(&app, &token, &step).await.status() == StatusCode::OK;
        let second_signs_in = match &second {
            Some(second) => {
                with_totp(&app, &token, &code_now(&app, second))
                    .await
                    .status()
                    == StatusCode::OK
            }
            None => false,
        };
        assert!(
            first_signs_in && !second_signs_in,
            "round {round}: confirmed with the first secret's code, restart answered with a \
             new secret: {}; the first secret signs in: {first_signs_in}, the second: \
             {second_signs_in}",
            second.is_some()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// At rest: sealing, export, removal with a recovery code
// ---------------------------------------------------------------------------------------------

/// The sealed value holds the secret in no readable form.
fn assert_sealed(sealed: &str, secret: &TotpSecret) {
    assert!(sealed.starts_with("v1."), "{sealed}");
    assert_eq!(sealed.split('.').count(), 3, "{sealed}");
    let raw = secret.as_bytes();
    let base32 = secret.base32();
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let upper = sealed.to_uppercase();
    let lower = sealed.to_lowercase();
    assert!(
        !upper.contains(&base32.to_uppercase()),
        "base32 in {sealed}"
    );
    assert!(!lower.contains(&hex), "hex in {sealed}");
    assert!(
        !sealed.contains(&STANDARD.encode(raw)),
        "base64 in {sealed}"
    );
    assert!(
        !sealed.contains(&URL_SAFE_NO_PAD.encode(raw)),
        "base64url in {sealed}"
    );
    assert!(
        !sealed.as_bytes().windows(raw.len()).any(|w| w == raw),
        "raw bytes in {sealed}"
    );
}

#[tokio::test]
async fn the_totp_secret_is_sealed_at_rest() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let user_id = app.current_user_id(&owner.access).await;
    let pending = secret_of(&started(&app, &owner.access).await);
    assert_sealed(&sealed_of(&app, &user_id).await, &pending);
    let code = next_code(&app, &pending);
    codes_of(confirm_totp(&app, &owner.access, &code).await).await;
    let sealed = sealed_of(&app, &user_id).await;
    assert_sealed(&sealed, &pending);

    // Bound to its account: copied into another account's row, it does not open there.
    let other = {
        app.register("bob@example.com", "bob").await;
        let bob = app.sign_in("bob@example.com").await;
        let bob_id = app.current_user_id(&bob.access).await;
        enable_totp(&app, &bob.access).await;
        bob_id
    };
    let mut conn = app.db().await;
    sqlx::query("UPDATE mfa_totp SET secret_sealed = ?, last_step = NULL WHERE user_id = ?")
        .bind(sealed.clone())
        .bind(other.clone())
        .execute(&mut conn)
        .await
        .unwrap();
    let token = mfa_token(&app, "bob@example.com", PASSWORD).await;
    let response = with_totp(&app, &token, &next_code(&app, &pending)).await;
    assert_ne!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_new_sealing_key_opens_old_secrets_and_reseals_them_on_use() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let user_id = app.current_user_id(&owner.access).await;
    let (secret, _) = enable_totp(&app, &owner.access).await;
    let old_sealed = sealed_of(&app, &user_id).await;

    let new_key = another_key();
    let rotated = app
        .another_instance(|s| {
            s.mfa_encryption_key = Some(format!("{new_key},{}", *MFA_KEY).into());
        })
        .await;
    let login = app
        .client
        .post(rotated.url("/api/v1/auth/login"))
        .json(&json!({"email": "ada@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let token = assert_problem(login, StatusCode::FORBIDDEN, "mfa_required").await["mfa_token"]
        .as_str()
        .unwrap()
        .to_owned();
    // Not used yet: still under the old key.
    assert_eq!(sealed_of(&app, &user_id).await, old_sealed);

    let response = app
        .client
        .post(rotated.url("/api/v1/auth/mfa"))
        .json(&json!({"mfa_token": token, "totp_code": next_code(&app, &secret)}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let resealed = sealed_of(&app, &user_id).await;
    assert_sealed(&resealed, &secret);
    assert_ne!(
        key_id_of(&resealed),
        key_id_of(&old_sealed),
        "{old_sealed} -> {resealed}"
    );

    // Under the new key alone it opens: the next sign-in with only the new key configured.
    let new_only = app
        .another_instance(|s| s.mfa_encryption_key = Some(new_key.clone().into()))
        .await;
    let response = two_steps_on(&app, &new_only, &secret).await;
    assert_eq!(response.status(), StatusCode::OK);
    // Under the current key already: left as it is.
    assert_eq!(sealed_of(&app, &user_id).await, resealed);
}

#[tokio::test]
async fn without_the_sealing_key_a_code_is_a_server_error_that_leaks_nothing() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let user_id = app.current_user_id(&owner.access).await;
    let (secret, _) = enable_totp(&app, &owner.access).await;
    let sealed = sealed_of(&app, &user_id).await;
    let unrelated = app
        .another_instance(|s| s.mfa_encryption_key = Some(another_key().into()))
        .await;
    let response = two_steps_on(&app, &unrelated, &secret).await;
    let status = response.status();
    assert!(status.is_server_error(), "{status}");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let text = response.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["status"], status.as_u16());
    for leak in [
        sealed.as_str(),
        &key_id_of(&sealed),
        &secret.base32(),
        "totp:",
        &user_id,
    ] {
        assert!(!text.contains(leak), "{leak:?} in {text}");
    }
    // Nothing changed: with the key, the same account signs in.
    sign_in_with_totp(&app, "ada@example.com", &secret).await;
}

/// The text of the caller's export.
async fn export_text(app: &TestApp, access_token: &str) -> String {
    let response = app
        .get_auth("/api/v1/users/current/export", access_token)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.unwrap()
}

#[tokio::test]
async fn the_export_shows_second_factors_without_secrets() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let none: Value = serde_json::from_str(&export_text(&app, &owner.access).await).unwrap();
    assert_eq!(
        none["second_factors"],
        json!({"totp_created_at": null, "totp_confirmed_at": null, "recovery_codes_left": 0, "passkeys": []})
    );

    let base32 = started(&app, &owner.access).await;
    let pending: Value = serde_json::from_str(&export_text(&app, &owner.access).await).unwrap();
    assert!(
        pending["second_factors"]["totp_created_at"].is_string(),
        "{pending}"
    );
    assert!(
        pending["second_factors"]["totp_confirmed_at"].is_null(),
        "{pending}"
    );

    let secret = secret_of(&base32);
    let code = next_code(&app, &secret);
    let codes = codes_of(confirm_totp(&app, &owner.access, &code).await).await;
    let token = mfa_token(&app, "ada@example.com", PASSWORD).await;
    assert_eq!(
        with_recovery_code(&app, &token, &codes[0]).await.status(),
        StatusCode::OK
    );
    let text = export_text(&app, &owner.access).await;
    let body: Value = serde_json::from_str(&text).unwrap();
    let factors = &body["second_factors"];
    assert!(factors["totp_created_at"].is_string(), "{factors}");
    assert!(factors["totp_confirmed_at"].is_string(), "{factors}");
    assert_eq!(factors["recovery_codes_left"], 9, "{factors}");
    let user_id = app.current_user_id(&owner.access).await;
    let sealed = sealed_of(&app, &user_id).await;
    let lower = text.to_lowercase();
    assert!(
        !lower.contains(&base32.to_lowercase()),
        "the secret is exported"
    );
    assert!(!text.contains(&sealed), "the sealed secret is exported");
    for code in &codes {
        assert!(!lower.contains(code), "recovery code {code} is exported");
        assert!(
            !lower.contains(&code.replace('-', "")),
            "recovery code {code} is exported"
        );
    }
    assert!(
        !text.contains("secret_sealed") && !text.contains("code_hash"),
        "{text}"
    );
}

#[tokio::test]
async fn the_authenticator_can_be_removed_with_a_recovery_code() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let user_id = app.current_user_id(&owner.access).await;
    let (_, codes) = enable_totp(&app, &owner.access).await;
    let response = delete_totp(&app, &owner.access, PASSWORD, &codes[4].to_uppercase()).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let [totp, recovery, _] = mfa_rows(&app, &user_id).await;
    assert_eq!((totp, recovery), (0, 0));
    assert_eq!(outbox(&app, &user_id, "two_factor_disabled").await.len(), 1);
    assert_eq!(
        current_user(&app, &owner.access).await["mfa_enabled"],
        false
    );
    assert_eq!(
        app.login("ada@example.com", PASSWORD).await.status(),
        StatusCode::OK
    );
}

// ---------------------------------------------------------------------------------------------
// Ugly input
// ---------------------------------------------------------------------------------------------

/// A JSON body sent as it is, with `access_token`.
pub(crate) async fn send_json(
    app: &TestApp,
    method: Method,
    path: &str,
    access_token: &str,
    body: Vec<u8>,
) -> Response {
    send_raw(app, method, path, access_token, "application/json", body).await
}

/// The new endpoints that take a JSON body, each with a valid-shaped body.
fn two_factor_endpoints(mfa_token: &str) -> Vec<(Method, &'static str, Value)> {
    vec![
        (
            Method::POST,
            "/api/v1/auth/mfa",
            json!({"mfa_token": mfa_token, "totp_code": "123456"}),
        ),
        (
            Method::POST,
            "/api/v1/auth/mfa",
            json!({"mfa_token": mfa_token, "recovery_code": "0000-0000-0000-0000"}),
        ),
        (
            Method::POST,
            "/api/v1/users/current/mfa/totp",
            json!({"current_password": "not my password"}),
        ),
        (
            Method::POST,
            "/api/v1/users/current/mfa/totp/confirm",
            json!({"code": "123456"}),
        ),
        (
            Method::DELETE,
            "/api/v1/users/current/mfa/totp",
            json!({"current_password": PASSWORD, "code": "123456"}),
        ),
        (
            Method::POST,
            "/api/v1/users/current/mfa/recovery-codes",
            json!({"current_password": "not my password"}),
        ),
    ]
}

/// A 4xx problem document, never a 5xx.
async fn assert_client_problem(response: Response, what: &str) -> StatusCode {
    let status = response.status();
    assert!(status.is_client_error(), "{what}: {status}");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "{what}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16(), "{what}: {body}");
    status
}

#[tokio::test]
async fn ugly_input_on_the_two_factor_endpoints_is_a_client_error() {
    let app = TestApp::spawn().await;
    // Ada has two-factor on; Bob's set-up is pending, so that his confirmations check codes.
    let ada = app.signed_in().await;
    let ada_id = app.current_user_id(&ada.access).await;
    let (secret, _) = enable_totp(&app, &ada.access).await;
    app.register("bob@example.com", "bob").await;
    let bob = app.sign_in("bob@example.com").await;
    started(&app, &bob.access).await;
    let token = mfa_token(&app, "ada@example.com", PASSWORD).await;

    for (method, path, example) in two_factor_endpoints(&token) {
        let access = if path.ends_with("/confirm") {
            &bob.access
        } else {
            &ada.access
        };
        for body in [
            &b"{"[..],
            b"{,}",
            b"not json",
            b"\xff\xfe",
            b"{\"unterminated",
        ] {
            let what = format!("{method} {path} {:?}", String::from_utf8_lossy(body));
            let response = send_json(&app, method.clone(), path, access, body.to_vec()).await;
            assert_eq!(
                assert_client_problem(response, &what).await,
                StatusCode::BAD_REQUEST,
                "{what}"
            );
        }
        let fields: Vec<String> = example.as_object().unwrap().keys().cloned().collect();
        for field in &fields {
            for wrong in [
                json!(123_456),
                json!(true),
                json!(["123456"]),
                json!({"code": 1}),
                json!(null),
            ] {
                let mut body = example.clone();
                body[field] = wrong.clone();
                let what = format!("{method} {path} {body}");
                let response = send_json(
                    &app,
                    method.clone(),
                    path,
                    access,
                    serde_json::to_vec(&body).unwrap(),
                )
                .await;
                let status = assert_client_problem(response, &what).await;
                // `null` is an optional field left out (`current_password`, which a fresh
                // sign-in stands in for): then the request's own refusal, still a 4xx.
                if !(wrong.is_null() && field == "current_password") {
                    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}");
                }
            }
        }
        let mut unknown = example.clone();
        unknown["is_admin"] = json!(true);
        let what = format!("{method} {path} {unknown}");
        let response = send_json(
            &app,
            method.clone(),
            path,
            access,
            serde_json::to_vec(&unknown).unwrap(),
        )
        .await;
        let status = assert_client_problem(response, &what).await;
        assert!(
            status == StatusCode::UNPROCESSABLE_ENTITY || status == StatusCode::BAD_REQUEST,
            "{what}: {status}"
        );
        // 70 KB.
        let mut huge = example.clone();
        huge[&fields[0]] = json!("1".repeat(70 * 1024));
        let response = send_json(
            &app,
            method.clone(),
            path,
            access,
            serde_json::to_vec(&huge).unwrap(),
        )
        .await;
        let what = format!("{method} {path} 70 KB");
        assert_eq!(
            assert_client_problem(response, &what).await,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{what}"
        );
    }

    let nasty = [
        "' OR '1'='1",
        "123456' OR '1'='1",
        "0; DROP TABLE mfa_totp; --",
        "\"; DELETE FROM recovery_codes; --",
        "%' OR user_id LIKE '%",
        "\u{0}\u{1}\u{7f}",
        "\u{0}12345",
        "１２３４５６",
        "١٢٣٤٥٦",
        "12\u{200b}3456",
        "\u{a0}123456\u{2003}",
        "\u{202e}654321",
        "e\u{301}e\u{301}e\u{301}",
        "👩‍💻🚀🔐",
        "ｏａ１ｂ-２ｃ３ｄ-４ｅ５ｆ-６ｇ７ｈ",
        "\u{feff}0000-0000-0000-0000",
        "\u{d7ff}\u{e000}\u{10ffff}",
        "a\nb\rc\td",
        "-----",
        "",
        " ",
    ];
    for value in nasty {
        let bodies = [
            (
                Method::POST,
                "/api/v1/auth/mfa",
                json!({"mfa_token": token, "totp_code": value}),
                &ada.access,
            ),
            (
                Method::POST,
                "/api/v1/auth/mfa",
                json!({"mfa_token": token, "recovery_code": value}),
                &ada.access,
            ),
            (
                Method::POST,
                "/api/v1/auth/mfa",
                json!({"mfa_token": value, "totp_code": "123456"}),
                &ada.access,
            ),
            (
                Method::POST,
                "/api/v1/users/current/mfa/totp/confirm",
                json!({"code": value}),
                &bob.access,
            ),
            (
                Method::DELETE,
                "/api/v1/users/current/mfa/totp",
                json!({"current_password": PASSWORD, "code": value}),
                &ada.access,
            ),
            (
                Method::DELETE,
                "/api/v1/users/current/mfa/totp",
                json!({"current_password": value, "code": value}),
                &ada.access,
            ),
            (
                Method::POST,
                "/api/v1/users/current/mfa/recovery-codes",
                json!({"current_password": value}),
                &ada.access,
            ),
            (
                Method::POST,
                "/api/v1/users/current/mfa/totp",
                json!({"current_password": value}),
                &bob.access,
            ),
        ];
        for (method, path, body, access) in bodies {
            let what = format!("{method} {path} {body}");
            let response = send_json(
                &app,
                method,
                path,
                access,
                serde_json::to_vec(&body).unwrap(),
            )
            .await;
            assert_client_problem(response, &what).await;
        }
    }

    // After all that, Ada's second factors are intact and her token still signs her in.
    let [totp, recovery, _] = mfa_rows(&app, &ada_id).await;
    assert_eq!((totp, recovery), (1, 10));
    let response = with_totp(&app, &token, &next_code(&app, &secret)).await;
    assert_eq!(response.status(), StatusCode::OK);
}
