//! Passkeys (WebAuthn): adding, listing and removing them, the second step of a password
//! sign-in with one, signing in with one alone, what each puts in the access token, the
//! one-use rules of ceremonies (also when requests race), the counter that refuses a cloned
//! authenticator, relying-party and origin checks, the export and erasure, and hostile input
//! on the new endpoints.
//!
//! Two authenticators play the user's device. `SoftToken` (webauthn-authenticator-rs) is a
//! device-bound key with user verification; it makes no discoverable credential, so for a
//! sign-in with a passkey alone the tests do what a resident key does: they put the
//! credential in the options' `allowCredentials` (which the discoverable ceremony neither
//! signs nor checks) and give the assertion its `userHandle` (which the authenticator does not
//! sign). `HandKey` is an authenticator made here, with a P-256 key and "none" attestation,
//! whose flags, counter and credential id the test chooses: a synced key, one that does not
//! verify the user, one without a counter, a credential id registered twice.
//!
//! The service's relying party is the test app's default: `DT_USERS_PUBLIC_URL` is
//! `http://localhost:8000`, so the rp id is `localhost` and that is the one allowed origin.

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dt_users::security::totp::TotpSecret;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use webauthn_authenticator_rs::softtoken::SoftToken;
use webauthn_authenticator_rs::{AuthenticatorBackend, WebauthnAuthenticator};
use webauthn_rs::prelude::{CreationChallengeResponse, RequestChallengeResponse, Url};

use crate::backends::on_both_backends;
use crate::helpers::{PASSWORD, TestApp, Tokens, assert_problem, invalid_fields};
use crate::in_flight::{all_at_once, signed_in_once};
use crate::two_factor::{amr, current_user, next_code, outbox, post_auth, send_json};

/// The origin the test app allows (its public URL), and its relying-party id.
const ORIGIN: &str = "http://localhost:8000";
const RP_ID: &str = "localhost";
/// A name under the rp id: a browser would let it use the rp id, the service allows it not.
const SUBDOMAIN_ORIGIN: &str = "http://evil.localhost:8000";
/// How long a ceremony (and an `mfa_token`) waits for its answer.
const CEREMONY_TTL: i64 = 300;
/// The deletion grace period (the default).
const GRACE: i64 = 30 * 86_400;

const CREATION_OPTIONS: &str = "/api/v1/users/current/passkeys/options";
const PASSKEYS: &str = "/api/v1/users/current/passkeys";
const SECOND_STEP_OPTIONS: &str = "/api/v1/auth/mfa/webauthn/options";
const SIGN_IN_OPTIONS: &str = "/api/v1/auth/passkey/options";
const SIGN_IN: &str = "/api/v1/auth/passkey";

// ---------------------------------------------------------------------------------------------
// The authenticators
// ---------------------------------------------------------------------------------------------

fn url(origin: &str) -> Url {
    Url::parse(origin).unwrap()
}

/// A new device-bound authenticator that verifies its user.
fn soft_token() -> SoftToken {
    SoftToken::new(true).unwrap().0
}

/// The soft token's new credential for the service's creation options, made as a browser at
/// `origin` would ask for it.
fn make_credential(token: &mut SoftToken, origin: &str, options: &Value) -> Value {
    let options: CreationChallengeResponse = serde_json::from_value(options.clone()).unwrap();
    let credential = token.do_registration(url(origin), options).unwrap();
    serde_json::to_value(credential).unwrap()
}

/// As [`make_credential`], without the browser's checks of the origin against the rp id: what
/// a hostile client can send.
fn make_credential_unchecked(token: &mut SoftToken, origin: &str, options: &Value) -> Value {
    let options: CreationChallengeResponse = serde_json::from_value(options.clone()).unwrap();
    let credential =
        AuthenticatorBackend::perform_register(token, url(origin), options.public_key, 60_000)
            .unwrap();
    serde_json::to_value(credential).unwrap()
}

/// The soft token's assertion for the service's request options, from `origin`.
fn get_assertion(token: &mut SoftToken, origin: &str, options: &Value) -> Value {
    let options: RequestChallengeResponse = serde_json::from_value(options.clone()).unwrap();
    let assertion = token.do_authentication(url(origin), options).unwrap();
    serde_json::to_value(assertion).unwrap()
}

/// As [`get_assertion`], without the browser's checks of the origin against the rp id.
fn get_assertion_unchecked(token: &mut SoftToken, origin: &str, options: &Value) -> Value {
    let options: RequestChallengeResponse = serde_json::from_value(options.clone()).unwrap();
    let assertion =
        AuthenticatorBackend::perform_auth(token, url(origin), options.public_key, 60_000).unwrap();
    serde_json::to_value(assertion).unwrap()
}

/// The options of a discoverable sign-in as a resident key sees them: it knows its own
/// credential, which the service's options do not list.
fn as_resident_key(options: &Value, credential_id: &str) -> Value {
    let mut options = options.clone();
    options["publicKey"]["allowCredentials"] = json!([{"type": "public-key", "id": credential_id}]);
    options
}

/// The user handle of `user_id`, as a resident key returns it: base64url of the UUID's 16
/// bytes (what the registration options give as `user.id`).
fn user_handle(user_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(uuid::Uuid::parse_str(user_id).unwrap().as_bytes())
}

/// A soft token's assertion for a discoverable sign-in, with the user handle a resident key
/// would add (unsigned, as the authenticator returns it).
fn discoverable_assertion(key: &mut Key, options: &Value, handle: Option<&str>) -> Value {
    let options = as_resident_key(options, &key.credential_id);
    let mut assertion = get_assertion(&mut key.token, ORIGIN, &options);
    if let Some(handle) = handle {
        assertion["response"]["userHandle"] = json!(handle);
    }
    assertion
}

/// A soft token's answer to the service's options, made some way.
type Answer = fn(&mut SoftToken, &Value) -> Value;

/// A passkey as a test holds it: the authenticator, and the ids it goes by.
struct Key {
    token: SoftToken,
    /// The credential id, base64url (`rawId`).
    credential_id: String,
    /// Its id at the service (`/passkeys/{id}`).
    id: String,
}

// Authenticator data flags.
const UP: u8 = 0x01;
const UV: u8 = 0x04;
const BE: u8 = 0x08;
const BS: u8 = 0x10;
const AT: u8 = 0x40;

fn sha256(data: &[u8]) -> Vec<u8> {
    digest(&SHA256, data).as_ref().to_vec()
}

fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

fn unb64(text: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(text).unwrap()
}

/// A CBOR head: major type and length.
fn cbor_head(major: u8, len: usize) -> Vec<u8> {
    let major = major << 5;
    if let Ok(small) = u8::try_from(len) {
        if small < 24 {
            return vec![major | small];
        }
        return vec![major | 24, small];
    }
    let mut head = vec![major | 25];
    head.extend(u16::try_from(len).unwrap().to_be_bytes());
    head
}

fn cbor_text(text: &str) -> Vec<u8> {
    let mut out = cbor_head(3, text.len());
    out.extend(text.as_bytes());
    out
}

fn cbor_bytes(bytes: &[u8]) -> Vec<u8> {
    let mut out = cbor_head(2, bytes.len());
    out.extend(bytes);
    out
}

/// An authenticator made by hand: a P-256 key, "none" attestation, and the flags, counter
/// and credential id the test chooses.
struct HandKey {
    credential_id: Vec<u8>,
    key: EcdsaKeyPair,
    counter: u32,
}

impl HandKey {
    fn new() -> Self {
        let mut credential_id = vec![0_u8; 32];
        rand::fill(&mut credential_id[..]);
        Self {
            credential_id,
            key: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap(),
            counter: 0,
        }
    }

    /// The public key, COSE (EC2, ES256, P-256).
    fn cose_key(&self) -> Vec<u8> {
        let point = self.key.public_key().as_ref();
        assert_eq!((point.len(), point[0]), (65, 4), "an uncompressed point");
        let mut out = vec![0xa5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01, 0x21];
        out.extend(cbor_bytes(&point[1..33]));
        out.push(0x22);
        out.extend(cbor_bytes(&point[33..65]));
        out
    }

    /// Its credential for the creation options, with `flags` (attested data is added), from
    /// `origin`.
    fn register(&self, options: &Value, origin: &str, flags: u8) -> Value {
        let public_key = &options["publicKey"];
        let client_data = json!({
            "type": "webauthn.create",
            "challenge": public_key["challenge"],
            "origin": origin,
            "crossOrigin": false,
        })
        .to_string();
        let mut auth_data = sha256(public_key["rp"]["id"].as_str().unwrap().as_bytes());
        auth_data.push(flags | AT);
        auth_data.extend(self.counter.to_be_bytes());
        auth_data.extend([0_u8; 16]);
        auth_data.extend(
            u16::try_from(self.credential_id.len())
                .unwrap()
                .to_be_bytes(),
        );
        auth_data.extend(&self.credential_id);
        auth_data.extend(self.cose_key());
        let mut attestation = vec![0xa3];
        attestation.extend(cbor_text("fmt"));
        attestation.extend(cbor_text("none"));
        attestation.extend(cbor_text("attStmt"));
        attestation.push(0xa0);
        attestation.extend(cbor_text("authData"));
        attestation.extend(cbor_bytes(&auth_data));
        json!({
            "id": b64(&self.credential_id),
            "rawId": b64(&self.credential_id),
            "type": "public-key",
            "response": {
                "attestationObject": b64(&attestation),
                "clientDataJSON": b64(client_data.as_bytes()),
                "transports": ["internal"],
            },
            "extensions": {},
        })
    }

    /// Its assertion for the request options with `flags` and its counter moved to `counter`,
    /// from `origin`, with `handle` as the user handle.
    fn assert_with(
        &mut self,
        options: &Value,
        origin: &str,
        flags: u8,
        counter: u32,
        handle: Option<&str>,
    ) -> Value {
        self.counter = counter;
        let public_key = &options["publicKey"];
        let client_data = json!({
            "type": "webauthn.get",
            "challenge": public_key["challenge"],
            "origin": origin,
            "crossOrigin": false,
        })
        .to_string();
        let mut auth_data = sha256(public_key["rpId"].as_str().unwrap().as_bytes());
        auth_data.push(flags);
        auth_data.extend(counter.to_be_bytes());
        let mut signed = auth_data.clone();
        signed.extend(sha256(client_data.as_bytes()));
        let signature = self.key.sign(&SystemRandom::new(), &signed).unwrap();
        json!({
            "id": b64(&self.credential_id),
            "rawId": b64(&self.credential_id),
            "type": "public-key",
            "response": {
                "authenticatorData": b64(&auth_data),
                "clientDataJSON": b64(client_data.as_bytes()),
                "signature": b64(signature.as_ref()),
                "userHandle": handle,
            },
            "extensions": {},
        })
    }

    /// The next assertion, from the allowed origin, its counter one on.
    fn assert(&mut self, options: &Value, flags: u8, handle: Option<&str>) -> Value {
        let counter = self.counter + 1;
        self.assert_with(options, ORIGIN, flags, counter, handle)
    }
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// A POST without a body, as a bearer of `access_token` (if any).
async fn post_empty(app: &TestApp, path: &str, access_token: Option<&str>) -> Response {
    let request = app.client.post(app.url(path));
    let request = match access_token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    request.send().await.unwrap()
}

/// The JSON of a 200 that no cache may keep.
async fn ok_no_store(response: Response, what: &str) -> Value {
    assert_eq!(response.status(), StatusCode::OK, "{what}");
    assert_eq!(
        response.headers().get("cache-control").unwrap(),
        "no-store",
        "{what}"
    );
    response.json().await.unwrap()
}

/// The creation options of a new passkey of the account `access_token` signs in.
async fn creation_options(app: &TestApp, access_token: &str) -> Value {
    let response = post_empty(app, CREATION_OPTIONS, Some(access_token)).await;
    ok_no_store(response, "creation options").await
}

async fn add(
    app: &TestApp,
    access_token: &str,
    credential: &Value,
    name: Option<&str>,
) -> Response {
    let mut body = json!({"credential": credential});
    if let Some(name) = name {
        body["name"] = json!(name);
    }
    post_auth(app, PASSKEYS, access_token, &body).await
}

/// Adds a new soft token's passkey to the account; the key and the 201's body.
async fn add_passkey(app: &TestApp, access_token: &str, name: Option<&str>) -> (Key, Value) {
    let mut token = soft_token();
    let options = creation_options(app, access_token).await;
    let credential = make_credential(&mut token, ORIGIN, &options);
    let response = add(app, access_token, &credential, name).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    let key = Key {
        token,
        credential_id: credential["rawId"].as_str().unwrap().to_owned(),
        id: body["id"].as_str().unwrap().to_owned(),
    };
    (key, body)
}

/// Adds a hand-made key's passkey (with `flags`) to the account; its id at the service.
async fn add_hand_key(app: &TestApp, access_token: &str, key: &HandKey, flags: u8) -> String {
    let options = creation_options(app, access_token).await;
    let response = add(
        app,
        access_token,
        &key.register(&options, ORIGIN, flags),
        None,
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

async fn list(app: &TestApp, access_token: &str) -> Vec<Value> {
    let response = app.get_auth(PASSKEYS, access_token).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

async fn remove(app: &TestApp, access_token: &str, id: &str, password: &str) -> Response {
    app.client
        .delete(app.url(&format!("{PASSKEYS}/{id}")))
        .bearer_auth(access_token)
        .json(&json!({"current_password": password}))
        .send()
        .await
        .unwrap()
}

/// The first step of a sign-in with two-factor on: the 403's `mfa_token` and `methods`.
async fn first_step(app: &TestApp, email: &str) -> (String, Value) {
    let response = app.login(email, PASSWORD).await;
    assert_eq!(response.headers().get("cache-control").unwrap(), "no-store");
    let body = assert_problem(response, StatusCode::FORBIDDEN, "mfa_required").await;
    (
        body["mfa_token"].as_str().unwrap().to_owned(),
        body["methods"].clone(),
    )
}

async fn mfa_token(app: &TestApp, email: &str) -> String {
    first_step(app, email).await.0
}

async fn request_second_step_options(app: &TestApp, mfa_token: &str) -> Response {
    app.post_json(SECOND_STEP_OPTIONS, &json!({"mfa_token": mfa_token}))
        .await
}

async fn second_step_options(app: &TestApp, mfa_token: &str) -> Value {
    ok_no_store(
        request_second_step_options(app, mfa_token).await,
        "second-step options",
    )
    .await
}

async fn with_webauthn(app: &TestApp, mfa_token: &str, assertion: &Value) -> Response {
    app.post_json(
        "/api/v1/auth/mfa",
        &json!({"mfa_token": mfa_token, "webauthn": assertion}),
    )
    .await
}

/// The second step with the soft token: options, assertion, answer.
async fn second_step(app: &TestApp, mfa_token: &str, token: &mut SoftToken) -> Response {
    let options = second_step_options(app, mfa_token).await;
    let assertion = get_assertion(token, ORIGIN, &options);
    with_webauthn(app, mfa_token, &assertion).await
}

/// A challenge for a sign-in with a passkey alone: its id and options.
async fn passkey_challenge(app: &TestApp) -> (String, Value) {
    let body = ok_no_store(
        post_empty(app, SIGN_IN_OPTIONS, None).await,
        "sign-in options",
    )
    .await;
    (
        body["challenge_id"].as_str().unwrap().to_owned(),
        body["options"].clone(),
    )
}

async fn passkey_sign_in(app: &TestApp, challenge_id: &str, credential: &Value) -> Response {
    app.post_json(
        SIGN_IN,
        &json!({"challenge_id": challenge_id, "credential": credential}),
    )
    .await
}

/// A whole sign-in with `key` alone, as the user `user_id`'s resident key.
async fn sign_in_alone(app: &TestApp, key: &mut Key, user_id: &str) -> Response {
    let (challenge_id, options) = passkey_challenge(app).await;
    let assertion = discoverable_assertion(key, &options, Some(&user_handle(user_id)));
    passkey_sign_in(app, &challenge_id, &assertion).await
}

/// The token pair of a 200 (which no cache may keep), checked to sign in `user_id`.
async fn signed_in_as(app: &TestApp, response: Response, user_id: &str, what: &str) -> Tokens {
    let pair = ok_no_store(response, what).await;
    assert_eq!(pair["token_type"], "bearer", "{what}");
    let tokens = Tokens::from(pair);
    assert_eq!(app.current_user_id(&tokens.access).await, user_id, "{what}");
    tokens
}

/// Rows of `user_id` in `table`.
async fn rows_of(app: &TestApp, table: &str, user_id: &str) -> i64 {
    let mut conn = app.db().await;
    let sql = format!("SELECT COUNT(*) FROM {table} WHERE user_id = ?");
    let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(user_id.to_owned())
        .fetch_one(&mut conn)
        .await
        .unwrap();
    n
}

fn parse_time(text: &Value) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(
        text.as_str()
            .unwrap_or_else(|| panic!("not a time: {text}")),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
}

/// Registers `user{n}` and signs the owner in (with the password alone).
async fn account(app: &TestApp, n: usize) -> (String, Tokens, String) {
    let email = format!("user{n}@example.com");
    app.register(&email, &format!("user{n}")).await;
    let owner = app.sign_in(&email).await;
    let user_id = app.current_user_id(&owner.access).await;
    (email, owner, user_id)
}

/// A copy of a base64url field with its last byte changed.
fn flip_last_byte(text: &Value) -> Value {
    let mut bytes = unb64(text.as_str().unwrap());
    *bytes.last_mut().unwrap() ^= 0x01;
    json!(b64(&bytes))
}

/// A copy of an assertion whose signed client data names another challenge.
fn with_other_challenge(assertion: &Value) -> Value {
    let mut assertion = assertion.clone();
    let client_data = unb64(assertion["response"]["clientDataJSON"].as_str().unwrap());
    let mut client_data: Value = serde_json::from_slice(&client_data).unwrap();
    let mut challenge = [0_u8; 32];
    rand::fill(&mut challenge);
    client_data["challenge"] = json!(b64(&challenge));
    assertion["response"]["clientDataJSON"] = json!(b64(client_data.to_string().as_bytes()));
    assertion
}

/// Rewrites the relying party the options name (creation: `rp.id`; request: `rpId`).
fn for_rp(options: &Value, rp_id: &str) -> Value {
    let mut options = options.clone();
    if options["publicKey"].get("rp").is_some() {
        options["publicKey"]["rp"]["id"] = json!(rp_id);
    } else {
        options["publicKey"]["rpId"] = json!(rp_id);
    }
    options
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

/// The one answer to a refused sign-in with a passkey alone; its body, to compare.
async fn refused(response: Response, what: &str) -> Value {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    let shown = if status == StatusCode::OK {
        "signed in".to_owned()
    } else {
        body.to_string()
    };
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {shown}");
    assert_eq!(body["code"], "invalid_credentials", "{what}: {body}");
    body
}

// TOTP, for the tests of both second factors together.

/// Sets an authenticator app up for the account; its secret and the confirmation's
/// `recovery_codes`.
async fn enable_totp(app: &TestApp, access_token: &str) -> (TotpSecret, Vec<Value>) {
    let response = post_auth(
        app,
        "/api/v1/users/current/mfa/totp",
        access_token,
        &json!({"current_password": PASSWORD}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let base32 = body["secret"].as_str().unwrap();
    let secret = TotpSecret::from_bytes(
        totp_rs::Secret::try_from_base32(base32)
            .unwrap()
            .as_bytes()
            .to_vec(),
    );
    let code = next_code(app, &secret);
    let response = post_auth(
        app,
        "/api/v1/users/current/mfa/totp/confirm",
        access_token,
        &json!({"code": code}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    (secret, body["recovery_codes"].as_array().unwrap().clone())
}

// ---------------------------------------------------------------------------------------------
// The main flows, on both backends
// ---------------------------------------------------------------------------------------------

on_both_backends! {
    async fn adding_a_passkey_turns_two_factor_on_and_lists_it(backend) {
        let app = TestApp::spawn_on(backend).await;
        let owner = app.signed_in().await;
        let user_id = app.current_user_id(&owner.access).await;
        assert_eq!(current_user(&app, &owner.access).await["mfa_enabled"], false);

        let options = creation_options(&app, &owner.access).await;
        let public_key = &options["publicKey"];
        assert_eq!(public_key["rp"]["id"], RP_ID, "{options}");
        assert_eq!(public_key["user"]["id"], user_handle(&user_id), "{options}");
        let selection = &public_key["authenticatorSelection"];
        assert_eq!(selection["residentKey"], "preferred", "{options}");
        assert_eq!(selection["userVerification"], "required", "{options}");
        let excluded = public_key["excludeCredentials"].as_array().cloned().unwrap_or_default();
        assert!(excluded.is_empty(), "{options}");

        let mut token = soft_token();
        let credential = make_credential(&mut token, ORIGIN, &options);
        let response = add(&app, &owner.access, &credential, Some("Laptop")).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(response.headers()["cache-control"], "no-store");
        let added: Value = response.json().await.unwrap();
        let id = added["id"].as_str().unwrap().to_owned();
        uuid::Uuid::parse_str(&id).unwrap();
        assert_eq!(added["name"], "Laptop");
        parse_time(&added["created_at"]);
        assert!(added["last_used_at"].is_null(), "{added}");
        let codes: Vec<String> = added["recovery_codes"]
            .as_array()
            .unwrap_or_else(|| panic!("no recovery codes: {added}"))
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect();
        let distinct: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!((codes.len(), distinct.len()), (10, 10), "{codes:?}");

        assert_eq!(current_user(&app, &owner.access).await["mfa_enabled"], true);
        let notices = outbox(&app, &user_id, "passkey_added").await;
        assert_eq!(notices.len(), 1, "{notices:?}");
        assert_eq!(notices[0]["params"]["passkey_name"], "Laptop", "{}", notices[0]);
        let listed = list(&app, &owner.access).await;
        assert_eq!(
            listed,
            [json!({
                "id": id,
                "name": "Laptop",
                "created_at": added["created_at"],
                "last_used_at": null,
            })]
        );

        // The next registration excludes it; the second passkey makes no new codes, and is
        // called "Passkey" when given no name.
        let options = creation_options(&app, &owner.access).await;
        let excluded: Vec<&Value> = options["publicKey"]["excludeCredentials"]
            .as_array()
            .unwrap_or_else(|| panic!("nothing excluded: {options}"))
            .iter()
            .map(|c| &c["id"])
            .collect();
        assert_eq!(excluded, [&credential["rawId"]], "{options}");
        let mut second = soft_token();
        let response = add(&app, &owner.access, &make_credential(&mut second, ORIGIN, &options), None).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let added_second: Value = response.json().await.unwrap();
        assert_eq!(added_second["name"], "Passkey");
        assert!(added_second.get("recovery_codes").is_none(), "{added_second}");
        let listed = list(&app, &owner.access).await;
        let names: Vec<&Value> = listed.iter().map(|p| &p["name"]).collect();
        assert_eq!(names, ["Laptop", "Passkey"], "oldest first: {listed:?}");
        assert_eq!(outbox(&app, &user_id, "passkey_added").await.len(), 2);

        // The password alone no longer signs in; a passkey or a recovery code completes it.
        let (token_of_login, methods) = first_step(&app, "ada@example.com").await;
        assert_eq!(methods, json!(["webauthn", "recovery_code"]));
        let response = app
            .post_json(
                "/api/v1/auth/mfa",
                &json!({"mfa_token": token_of_login, "recovery_code": codes[0]}),
            )
            .await;
        let tokens = signed_in_as(&app, response, &user_id, "recovery code").await;
        assert_eq!(amr(&tokens.access), ["pwd", "otp", "mfa"]);
    }

    async fn a_passkey_completes_a_password_sign_in_once(backend) {
        let app = TestApp::spawn_on(backend).await;
        let owner = app.signed_in().await;
        let user_id = app.current_user_id(&owner.access).await;
        let (mut key, _) = add_passkey(&app, &owner.access, Some("Phone")).await;

        let token = mfa_token(&app, "ada@example.com").await;
        let options = second_step_options(&app, &token).await;
        let allowed: Vec<&Value> = options["publicKey"]["allowCredentials"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| &c["id"])
            .collect();
        assert_eq!(allowed, [&json!(key.credential_id)], "{options}");
        assert_eq!(options["publicKey"]["userVerification"], "required", "{options}");
        assert_eq!(options["publicKey"]["rpId"], RP_ID, "{options}");

        let assertion = get_assertion(&mut key.token, ORIGIN, &options);
        let response = with_webauthn(&app, &token, &assertion).await;
        let tokens = signed_in_as(&app, response, &user_id, "second step").await;
        assert_eq!(amr(&tokens.access), ["pwd", "hwk", "user", "mfa"]);
        let refreshed = app.refresh(&tokens.refresh).await;
        assert_eq!(refreshed.status(), StatusCode::OK);
        let refreshed = Tokens::from(refreshed.json::<Value>().await.unwrap());
        assert_eq!(amr(&refreshed.access), ["pwd", "hwk", "user", "mfa"]);
        assert!(list(&app, &owner.access).await[0]["last_used_at"].is_string());

        // Replayed: with its used token, and with a new token's ceremony.
        assert_problem(
            with_webauthn(&app, &token, &assertion).await,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        )
        .await;
        let next = mfa_token(&app, "ada@example.com").await;
        second_step_options(&app, &next).await;
        assert_problem(
            with_webauthn(&app, &next, &assertion).await,
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
        )
        .await;
        // The refusal left the token usable: a fresh assertion signs in with it.
        let response = second_step(&app, &next, &mut key.token).await;
        signed_in_as(&app, response, &user_id, "after the replay").await;
    }

    async fn a_passkey_alone_signs_in_with_the_user_verified(backend) {
        let app = TestApp::spawn_on(backend).await;
        let owner = app.signed_in().await;
        let user_id = app.current_user_id(&owner.access).await;
        let (mut key, added) = add_passkey(&app, &owner.access, None).await;
        app.clock.advance_secs(3_600);

        let (challenge_id, options) = passkey_challenge(&app).await;
        assert!(challenge_id.len() >= 20, "{challenge_id}");
        let public_key = &options["publicKey"];
        let listed = public_key["allowCredentials"].as_array().cloned().unwrap_or_default();
        assert!(listed.is_empty(), "discoverable: {options}");
        assert_eq!(public_key["userVerification"], "required", "{options}");
        assert_eq!(public_key["rpId"], RP_ID, "{options}");

        let assertion = discoverable_assertion(&mut key, &options, Some(&user_handle(&user_id)));
        let response = passkey_sign_in(&app, &challenge_id, &assertion).await;
        let tokens = signed_in_as(&app, response, &user_id, "passkey alone").await;
        assert_eq!(amr(&tokens.access), ["hwk", "user", "mfa"]);
        let refreshed = app.refresh(&tokens.refresh).await;
        assert_eq!(refreshed.status(), StatusCode::OK);
        let refreshed = Tokens::from(refreshed.json::<Value>().await.unwrap());
        assert_eq!(amr(&refreshed.access), ["hwk", "user", "mfa"]);

        // (The owner's access token expired meanwhile: the new session lists.)
        let used = &list(&app, &tokens.access).await[0];
        let last_used = parse_time(&used["last_used_at"]);
        let created = parse_time(&added["created_at"]);
        assert!(last_used - created >= time::Duration::seconds(3_600), "{used}");

        // Replayed: with its used challenge, and with a fresh one.
        refused(passkey_sign_in(&app, &challenge_id, &assertion).await, "replay").await;
        let (fresh, _) = passkey_challenge(&app).await;
        refused(passkey_sign_in(&app, &fresh, &assertion).await, "replay, fresh challenge").await;
        // The passkey still signs in.
        let response = sign_in_alone(&app, &mut key, &user_id).await;
        signed_in_as(&app, response, &user_id, "again").await;
    }

    async fn removing_the_last_passkey_brings_back_password_only_sign_in(backend) {
        let app = TestApp::spawn_on(backend).await;
        let owner = app.signed_in().await;
        let user_id = app.current_user_id(&owner.access).await;
        let (mut key, _) = add_passkey(&app, &owner.access, Some("Old phone")).await;
        let (_, bob, _) = account(&app, 1).await;
        let (bobs, _) = add_passkey(&app, &bob.access, None).await;

        assert_problem(
            remove(&app, &owner.access, &key.id, "not my password at all").await,
            StatusCode::FORBIDDEN,
            "invalid_credentials",
        )
        .await;
        for (id, what) in [
            (bobs.id.as_str(), "another account's"),
            ("0190a4f6-0000-7000-8000-000000000000", "unknown"),
            ("not-a-uuid", "not a uuid"),
        ] {
            let response = remove(&app, &owner.access, id, PASSWORD).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{what}");
            assert_problem(response, StatusCode::NOT_FOUND, "not_found").await;
        }
        assert_eq!(list(&app, &owner.access).await.len(), 1);
        assert_eq!(list(&app, &bob.access).await.len(), 1);
        assert!(outbox(&app, &user_id, "passkey_removed").await.is_empty());

        let response = remove(&app, &owner.access, &key.id, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert!(list(&app, &owner.access).await.is_empty());
        let notices = outbox(&app, &user_id, "passkey_removed").await;
        assert_eq!(notices.len(), 1, "{notices:?}");
        assert_eq!(notices[0]["params"]["passkey_name"], "Old phone", "{}", notices[0]);
        assert_eq!(current_user(&app, &owner.access).await["mfa_enabled"], false);
        assert_eq!(rows_of(&app, "recovery_codes", &user_id).await, 0);

        // The password alone signs in again; the removed passkey signs in no more.
        let response = app.login("ada@example.com", PASSWORD).await;
        assert_eq!(response.status(), StatusCode::OK);
        let tokens = Tokens::from(response.json::<Value>().await.unwrap());
        assert_eq!(amr(&tokens.access), ["pwd"]);
        refused(sign_in_alone(&app, &mut key, &user_id).await, "removed passkey").await;
        assert_problem(
            remove(&app, &owner.access, &key.id, PASSWORD).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
        // Bob's is still his.
        assert_eq!(list(&app, &bob.access).await.len(), 1);
    }

    async fn erasing_the_account_removes_its_passkeys_and_ceremonies(backend) {
        let app = TestApp::spawn_on(backend).await;
        let owner = app.signed_in().await;
        let user_id = app.current_user_id(&owner.access).await;
        add_passkey(&app, &owner.access, None).await;
        // A registration and a second step left pending.
        creation_options(&app, &owner.access).await;
        let token = mfa_token(&app, "ada@example.com").await;
        second_step_options(&app, &token).await;
        assert_eq!(
            app.delete_account(&owner.access, PASSWORD).await.status(),
            StatusCode::ACCEPTED
        );
        app.clock.advance_secs(GRACE + 1);
        assert_eq!(rows_of(&app, "passkeys", &user_id).await, 1);
        assert_eq!(rows_of(&app, "webauthn_ceremonies", &user_id).await, 2);
        assert_eq!(
            app.app.purge_due_accounts(app.app.now(), 100).await.unwrap(),
            1
        );
        assert_eq!(rows_of(&app, "passkeys", &user_id).await, 0);
        assert_eq!(rows_of(&app, "webauthn_ceremonies", &user_id).await, 0);
        assert_eq!(rows_of(&app, "recovery_codes", &user_id).await, 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Adding a passkey
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_passkeys_of_an_account_need_its_session() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let (key, _) = add_passkey(&app, &owner.access, None).await;
    let requests = [
        app.client.post(app.url(CREATION_OPTIONS)),
        app.client
            .post(app.url(PASSKEYS))
            .json(&json!({"credential": {}})),
        app.client.get(app.url(PASSKEYS)),
        app.client
            .delete(app.url(&format!("{PASSKEYS}/{}", key.id)))
            .json(&json!({"current_password": PASSWORD})),
    ];
    for request in requests {
        let response = request.send().await.unwrap();
        let what = response.url().to_string();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert_problem(response, StatusCode::UNAUTHORIZED, "not_authenticated").await;
    }
    assert_eq!(list(&app, &owner.access).await.len(), 1);
}

#[tokio::test]
async fn a_registration_answers_its_own_pending_ceremony_once() {
    let app = TestApp::spawn().await;
    let ada = app.signed_in().await;
    let ada_id = app.current_user_id(&ada.access).await;
    let (_, bob, _) = account(&app, 1).await;

    // Nothing pending for Ada: Bob's credential, answering Bob's ceremony, is refused.
    let mut bobs_token = soft_token();
    let bobs = make_credential(
        &mut bobs_token,
        ORIGIN,
        &creation_options(&app, &bob.access).await,
    );
    assert_problem(
        add(&app, &ada.access, &bobs, None).await,
        StatusCode::BAD_REQUEST,
        "invalid_credential",
    )
    .await;
    // Still Bob's to answer.
    assert_eq!(
        add(&app, &bob.access, &bobs, None).await.status(),
        StatusCode::CREATED
    );

    // A newer ceremony replaces the older: the older's answer is refused (and the refusal
    // uses the newer one up).
    let mut token = soft_token();
    let older = make_credential(
        &mut token,
        ORIGIN,
        &creation_options(&app, &ada.access).await,
    );
    let newer = make_credential(
        &mut token,
        ORIGIN,
        &creation_options(&app, &ada.access).await,
    );
    assert_problem(
        add(&app, &ada.access, &older, None).await,
        StatusCode::BAD_REQUEST,
        "invalid_credential",
    )
    .await;
    assert_problem(
        add(&app, &ada.access, &newer, None).await,
        StatusCode::BAD_REQUEST,
        "invalid_credential",
    )
    .await;

    // Expired after 5 minutes.
    let options = creation_options(&app, &ada.access).await;
    let late = make_credential(&mut token, ORIGIN, &options);
    app.clock.advance_secs(CEREMONY_TTL + 1);
    assert_problem(
        add(&app, &ada.access, &late, None).await,
        StatusCode::BAD_REQUEST,
        "invalid_credential",
    )
    .await;
    assert!(list(&app, &ada.access).await.is_empty());
    assert_eq!(current_user(&app, &ada.access).await["mfa_enabled"], false);
    assert!(outbox(&app, &ada_id, "passkey_added").await.is_empty());

    // A fresh ceremony is answered once.
    let options = creation_options(&app, &ada.access).await;
    let credential = make_credential(&mut token, ORIGIN, &options);
    assert_eq!(
        add(&app, &ada.access, &credential, None).await.status(),
        StatusCode::CREATED
    );
    assert_problem(
        add(&app, &ada.access, &credential, None).await,
        StatusCode::BAD_REQUEST,
        "invalid_credential",
    )
    .await;
    assert_eq!(list(&app, &ada.access).await.len(), 1);
    assert_eq!(outbox(&app, &ada_id, "passkey_added").await.len(), 1);
}

#[tokio::test]
async fn a_passkey_name_is_at_most_64_characters_without_control_characters() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let mut token = soft_token();
    let options = creation_options(&app, &owner.access).await;
    let credential = make_credential(&mut token, ORIGIN, &options);
    for name in [
        "k".repeat(65),
        "é".repeat(65),
        "🔑".repeat(65),
        "x".repeat(10_000),
        "My\nkey".into(),
        "My\tkey".into(),
        "\u{0}".into(),
        "key\u{7}".into(),
        "key\u{7f}".into(),
        "k\u{85}ey".into(),
        "k\u{9b}ey".into(),
    ] {
        let fields = invalid_fields(add(&app, &owner.access, &credential, Some(&name)).await).await;
        assert_eq!(fields, ["name"], "{name:?}");
    }
    assert!(list(&app, &owner.access).await.is_empty());
    // The refusals left the ceremony pending: the same credential is added with a good name,
    // 64 characters of four bytes each.
    let name = "🔑".repeat(64);
    let response = add(&app, &owner.access, &credential, Some(&name)).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["name"], name.as_str());
    assert_eq!(list(&app, &owner.access).await[0]["name"], name.as_str());
    let (_, added) = add_passkey(&app, &owner.access, Some(&"é".repeat(64))).await;
    assert_eq!(added["name"], "é".repeat(64));
}

#[tokio::test]
async fn a_credential_registered_already_is_refused_for_any_account() {
    let app = TestApp::spawn().await;
    let ada = app.signed_in().await;
    let ada_id = app.current_user_id(&ada.access).await;
    let (_, bob, bob_id) = account(&app, 1).await;
    let mut key = HandKey::new();
    add_hand_key(&app, &ada.access, &key, UP | UV).await;

    // The same credential id, answering each account's own ceremony correctly.
    for (access, who) in [(&bob.access, "bob"), (&ada.access, "ada")] {
        let options = creation_options(&app, access).await;
        let response = add(&app, access, &key.register(&options, ORIGIN, UP | UV), None).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{who}");
        assert_problem(response, StatusCode::BAD_REQUEST, "invalid_credential").await;
    }
    // The same id with another public key is no better.
    let mut impostor = HandKey::new();
    impostor.credential_id.clone_from(&key.credential_id);
    let options = creation_options(&app, &bob.access).await;
    assert_problem(
        add(
            &app,
            &bob.access,
            &impostor.register(&options, ORIGIN, UP | UV),
            None,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_credential",
    )
    .await;
    assert!(list(&app, &bob.access).await.is_empty());
    assert_eq!(rows_of(&app, "passkeys", &bob_id).await, 0);
    assert_eq!(list(&app, &ada.access).await.len(), 1);

    // The credential still signs Ada in, alone, and Bob's handle gets nothing from it.
    let (challenge_id, options) = passkey_challenge(&app).await;
    let assertion = impostor.assert(&options, UP | UV, Some(&user_handle(&bob_id)));
    refused(
        passkey_sign_in(&app, &challenge_id, &assertion).await,
        "impostor",
    )
    .await;
    let (challenge_id, options) = passkey_challenge(&app).await;
    let assertion = key.assert(&options, UP | UV, Some(&user_handle(&ada_id)));
    let response = passkey_sign_in(&app, &challenge_id, &assertion).await;
    signed_in_as(&app, response, &ada_id, "ada's key").await;
}

#[tokio::test]
async fn a_registration_from_another_origin_or_for_another_relying_party_is_refused() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let user_id = app.current_user_id(&owner.access).await;
    let mut token = soft_token();
    let cases: [(&str, Answer); 5] = [
        ("a name under the rp id", |t, o| {
            make_credential_unchecked(t, SUBDOMAIN_ORIGIN, o)
        }),
        ("https instead of http", |t, o| {
            make_credential(t, "https://localhost:8000", o)
        }),
        ("another port", |t, o| {
            make_credential(t, "http://localhost:8001", o)
        }),
        ("another rp id, from its origin", |t, o| {
            make_credential(t, "https://evil.example", &for_rp(o, "evil.example"))
        }),
        ("another rp id, from the allowed origin", |t, o| {
            make_credential_unchecked(t, ORIGIN, &for_rp(o, "evil.example"))
        }),
    ];
    for (what, make) in cases {
        let options = creation_options(&app, &owner.access).await;
        let credential = make(&mut token, &options);
        let response = add(&app, &owner.access, &credential, None).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{what}");
        assert_problem(response, StatusCode::BAD_REQUEST, "invalid_credential").await;
    }
    assert!(list(&app, &owner.access).await.is_empty());
    assert_eq!(rows_of(&app, "recovery_codes", &user_id).await, 0);
    assert_eq!(
        app.login("ada@example.com", PASSWORD).await.status(),
        StatusCode::OK
    );
    // The same token, from the right origin, is added.
    add_passkey(&app, &owner.access, None).await;
}

#[tokio::test]
async fn the_configured_relying_party_and_origins_are_the_ones_accepted() {
    let app = TestApp::spawn_with(|s| {
        s.webauthn_rp_id = Some("example.test".into());
        s.webauthn_origins = "https://app.example.test,https://example.test".into();
    })
    .await;
    let owner = app.signed_in().await;
    let user_id = app.current_user_id(&owner.access).await;
    let mut token = soft_token();

    let options = creation_options(&app, &owner.access).await;
    assert_eq!(
        options["publicKey"]["rp"]["id"], "example.test",
        "{options}"
    );
    // The default origin is not allowed any more.
    let credential = make_credential_unchecked(&mut token, ORIGIN, &options);
    assert_problem(
        add(&app, &owner.access, &credential, None).await,
        StatusCode::BAD_REQUEST,
        "invalid_credential",
    )
    .await;
    let options = creation_options(&app, &owner.access).await;
    let credential = make_credential(&mut token, "https://app.example.test", &options);
    let response = add(&app, &owner.access, &credential, None).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let mut key = Key {
        token,
        credential_id: credential["rawId"].as_str().unwrap().to_owned(),
        id: String::new(),
    };

    // Both configured origins sign in; the default one does not.
    let (challenge_id, options) = passkey_challenge(&app).await;
    assert_eq!(options["publicKey"]["rpId"], "example.test", "{options}");
    let mut assertion = get_assertion(
        &mut key.token,
        "https://example.test",
        &as_resident_key(&options, &key.credential_id),
    );
    assertion["response"]["userHandle"] = json!(user_handle(&user_id));
    let response = passkey_sign_in(&app, &challenge_id, &assertion).await;
    signed_in_as(&app, response, &user_id, "https://example.test").await;

    let (challenge_id, options) = passkey_challenge(&app).await;
    let mut assertion = get_assertion_unchecked(
        &mut key.token,
        ORIGIN,
        &as_resident_key(&options, &key.credential_id),
    );
    assertion["response"]["userHandle"] = json!(user_handle(&user_id));
    refused(
        passkey_sign_in(&app, &challenge_id, &assertion).await,
        "default origin",
    )
    .await;

    let token = mfa_token(&app, "ada@example.com").await;
    let options = second_step_options(&app, &token).await;
    let assertion = get_assertion(&mut key.token, "https://app.example.test", &options);
    let response = with_webauthn(&app, &token, &assertion).await;
    signed_in_as(&app, response, &user_id, "second step").await;
}

// ---------------------------------------------------------------------------------------------
// The second step of a password sign-in
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn second_step_options_need_a_live_mfa_token_of_an_account_with_a_passkey() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let (mut key, _) = add_passkey(&app, &owner.access, None).await;
    for bad in ["dtm_not-a-token", "", "' OR '1'='1"] {
        assert_problem(
            request_second_step_options(&app, bad).await,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        )
        .await;
    }
    assert_eq!(
        invalid_fields(app.post_json(SECOND_STEP_OPTIONS, &json!({})).await).await,
        ["mfa_token"]
    );
    // Used.
    let used = mfa_token(&app, "ada@example.com").await;
    assert_eq!(
        second_step(&app, &used, &mut key.token).await.status(),
        StatusCode::OK
    );
    assert_problem(
        request_second_step_options(&app, &used).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    // Expired.
    let expired = mfa_token(&app, "ada@example.com").await;
    app.clock.advance_secs(CEREMONY_TTL + 1);
    assert_problem(
        request_second_step_options(&app, &expired).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;

    // An account with an authenticator app and no passkey has nothing to offer.
    let (email, bob, _) = account(&app, 1).await;
    enable_totp(&app, &bob.access).await;
    let (token, methods) = first_step(&app, &email).await;
    assert_eq!(methods, json!(["totp", "recovery_code"]));
    assert_problem(
        request_second_step_options(&app, &token).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn a_second_step_assertion_answers_its_own_mfa_token_and_latest_options() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let user_id = app.current_user_id(&owner.access).await;
    let (mut key, _) = add_passkey(&app, &owner.access, None).await;

    // Made for one token's ceremony, sent with another's.
    let first = mfa_token(&app, "ada@example.com").await;
    let second = mfa_token(&app, "ada@example.com").await;
    let for_first = get_assertion(
        &mut key.token,
        ORIGIN,
        &second_step_options(&app, &first).await,
    );
    second_step_options(&app, &second).await;
    assert_problem(
        with_webauthn(&app, &second, &for_first).await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    // Without options asked for: no ceremony to answer.
    let third = mfa_token(&app, "ada@example.com").await;
    assert_problem(
        with_webauthn(&app, &third, &for_first).await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;

    // Newer options replace older ones.
    let older = get_assertion(
        &mut key.token,
        ORIGIN,
        &second_step_options(&app, &second).await,
    );
    second_step_options(&app, &second).await;
    assert_problem(
        with_webauthn(&app, &second, &older).await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;

    // Tampered with: the signature, the signed data, the challenge signed.
    let options = second_step_options(&app, &second).await;
    let good = get_assertion(&mut key.token, ORIGIN, &options);
    let mut bad_signature = good.clone();
    bad_signature["response"]["signature"] = flip_last_byte(&good["response"]["signature"]);
    let mut bad_data = good.clone();
    bad_data["response"]["authenticatorData"] =
        flip_last_byte(&good["response"]["authenticatorData"]);
    for (what, bad) in [
        ("signature", bad_signature),
        ("authenticator data", bad_data),
        ("challenge", with_other_challenge(&good)),
    ] {
        second_step_options(&app, &second).await;
        let response = with_webauthn(&app, &second, &bad).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert_problem(response, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    }

    // None of that used the tokens: each signs in with a fresh assertion.
    for token in [&first, &second, &third] {
        let response = second_step(&app, token, &mut key.token).await;
        signed_in_as(&app, response, &user_id, "fresh assertion").await;
    }
}

#[tokio::test]
async fn another_accounts_passkey_does_not_complete_a_sign_in() {
    let app = TestApp::spawn().await;
    let ada = app.signed_in().await;
    let ada_id = app.current_user_id(&ada.access).await;
    let (mut adas, _) = add_passkey(&app, &ada.access, None).await;
    let (_, bob, _) = account(&app, 1).await;
    let (mut bobs, _) = add_passkey(&app, &bob.access, None).await;

    // Bob's authenticator answers Ada's ceremony with his credential.
    let token = mfa_token(&app, "ada@example.com").await;
    let options = second_step_options(&app, &token).await;
    let assertion = get_assertion(
        &mut bobs.token,
        ORIGIN,
        &as_resident_key(&options, &bobs.credential_id),
    );
    assert_problem(
        with_webauthn(&app, &token, &assertion).await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    let response = second_step(&app, &token, &mut adas.token).await;
    signed_in_as(&app, response, &ada_id, "ada's own").await;
}

#[tokio::test]
async fn an_authenticator_app_and_a_passkey_are_both_offered_at_sign_in() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let user_id = app.current_user_id(&owner.access).await;
    let (secret, codes) = enable_totp(&app, &owner.access).await;
    assert_eq!(codes.len(), 10);
    let (mut key, added) = add_passkey(&app, &owner.access, None).await;
    assert!(added.get("recovery_codes").is_none(), "{added}");
    assert_eq!(rows_of(&app, "recovery_codes", &user_id).await, 10);

    let (token, methods) = first_step(&app, "ada@example.com").await;
    assert_eq!(methods, json!(["totp", "webauthn", "recovery_code"]));
    let response = second_step(&app, &token, &mut key.token).await;
    let tokens = signed_in_as(&app, response, &user_id, "passkey").await;
    assert_eq!(amr(&tokens.access), ["pwd", "hwk", "user", "mfa"]);
    let token = mfa_token(&app, "ada@example.com").await;
    let response = app
        .post_json(
            "/api/v1/auth/mfa",
            &json!({"mfa_token": token, "totp_code": next_code(&app, &secret)}),
        )
        .await;
    let tokens = signed_in_as(&app, response, &user_id, "totp").await;
    assert_eq!(amr(&tokens.access), ["pwd", "otp", "mfa"]);

    // Without the passkey, the authenticator app and the codes remain.
    assert_eq!(
        remove(&app, &owner.access, &key.id, PASSWORD)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(rows_of(&app, "recovery_codes", &user_id).await, 10);
    let (_, methods) = first_step(&app, "ada@example.com").await;
    assert_eq!(methods, json!(["totp", "recovery_code"]));
}

#[tokio::test]
async fn a_passkey_keeps_the_recovery_codes_when_the_authenticator_app_goes() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let user_id = app.current_user_id(&owner.access).await;
    let (mut key, added) = add_passkey(&app, &owner.access, None).await;
    let codes = added["recovery_codes"].as_array().unwrap().clone();
    // Two-factor was on already: confirming the app makes no new codes.
    let (secret, new_codes) = enable_totp(&app, &owner.access).await;
    assert!(new_codes.is_empty(), "{new_codes:?}");
    let response = app
        .client
        .delete(app.url("/api/v1/users/current/mfa/totp"))
        .bearer_auth(&owner.access)
        .json(&json!({"current_password": PASSWORD, "code": next_code(&app, &secret)}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(rows_of(&app, "recovery_codes", &user_id).await, 10);
    assert_eq!(current_user(&app, &owner.access).await["mfa_enabled"], true);

    let (token, methods) = first_step(&app, "ada@example.com").await;
    assert_eq!(methods, json!(["webauthn", "recovery_code"]));
    let response = app
        .post_json(
            "/api/v1/auth/mfa",
            &json!({"mfa_token": token, "recovery_code": codes[9]}),
        )
        .await;
    signed_in_as(&app, response, &user_id, "recovery code").await;
    let token = mfa_token(&app, "ada@example.com").await;
    let response = second_step(&app, &token, &mut key.token).await;
    signed_in_as(&app, response, &user_id, "passkey").await;
}

#[tokio::test]
async fn a_passkey_removed_between_the_two_steps_does_not_complete_the_sign_in() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let user_id = app.current_user_id(&owner.access).await;
    let (mut old, _) = add_passkey(&app, &owner.access, Some("Lost phone")).await;
    let (mut new, _) = add_passkey(&app, &owner.access, Some("New phone")).await;

    let token = mfa_token(&app, "ada@example.com").await;
    let options = second_step_options(&app, &token).await;
    let assertion = get_assertion(&mut old.token, ORIGIN, &options);
    let (challenge_id, options) = passkey_challenge(&app).await;
    let alone = discoverable_assertion(&mut old, &options, Some(&user_handle(&user_id)));
    assert_eq!(
        remove(&app, &owner.access, &old.id, PASSWORD)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_problem(
        with_webauthn(&app, &token, &assertion).await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    refused(
        passkey_sign_in(&app, &challenge_id, &alone).await,
        "removed",
    )
    .await;
    // The one left signs in.
    let response = second_step(&app, &token, &mut new.token).await;
    signed_in_as(&app, response, &user_id, "the passkey left").await;
}

// ---------------------------------------------------------------------------------------------
// A passkey alone
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_sign_in_with_a_passkey_alone_refuses_anything_wrong_with_one_answer() {
    let app = TestApp::spawn().await;
    let ada = app.signed_in().await;
    let ada_id = app.current_user_id(&ada.access).await;
    let (mut key, _) = add_passkey(&app, &ada.access, None).await;
    let (_, bob, bob_id) = account(&app, 1).await;
    add_passkey(&app, &bob.access, None).await;
    let handle = user_handle(&ada_id);
    let mut answers = Vec::new();

    let (challenge_id, options) = passkey_challenge(&app).await;
    let good = discoverable_assertion(&mut key, &options, Some(&handle));
    let mut no_handle = good.clone();
    no_handle["response"]["userHandle"] = Value::Null;
    let mut bobs_handle = good.clone();
    bobs_handle["response"]["userHandle"] = json!(user_handle(&bob_id));
    let mut unknown_handle = good.clone();
    unknown_handle["response"]["userHandle"] =
        json!(user_handle(&uuid::Uuid::new_v4().to_string()));
    let mut short_handle = good.clone();
    short_handle["response"]["userHandle"] = json!(b64(b"ada"));
    let mut unknown_credential = good.clone();
    let mut other_id = [0_u8; 32];
    rand::fill(&mut other_id);
    unknown_credential["rawId"] = json!(b64(&other_id));
    unknown_credential["id"] = json!(b64(&other_id));
    // None of these reaches the challenge: it still signs in afterwards.
    for (what, bad) in [
        ("no user handle", &no_handle),
        ("another account's user handle", &bobs_handle),
        ("an unknown user handle", &unknown_handle),
        ("a user handle that is no id", &short_handle),
        ("an unknown credential", &unknown_credential),
    ] {
        answers.push(refused(passkey_sign_in(&app, &challenge_id, bad).await, what).await);
    }
    for unknown in [
        "an-unknown-challenge-id-0123456789",
        &format!("register:{ada_id}"),
        &challenge_id[1..],
        "",
    ] {
        answers.push(refused(passkey_sign_in(&app, unknown, &good).await, unknown).await);
    }
    let response = passkey_sign_in(&app, &challenge_id, &good).await;
    signed_in_as(&app, response, &ada_id, "after the refusals").await;

    // Tampered with: each on a fresh challenge.
    type Tamper = fn(&Value) -> Value;
    let tampering: [(&str, Tamper); 4] = [
        ("signature", |a| {
            let mut a = a.clone();
            a["response"]["signature"] = flip_last_byte(&a["response"]["signature"]);
            a
        }),
        ("authenticator data", |a| {
            let mut a = a.clone();
            a["response"]["authenticatorData"] =
                flip_last_byte(&a["response"]["authenticatorData"]);
            a
        }),
        ("client data", with_other_challenge),
        ("a made-up signature", |a| {
            let mut a = a.clone();
            a["response"]["signature"] =
                json!(b64(&[0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01]));
            a
        }),
    ];
    for (what, tamper) in tampering {
        let (challenge_id, options) = passkey_challenge(&app).await;
        let assertion = discoverable_assertion(&mut key, &options, Some(&handle));
        answers.push(
            refused(
                passkey_sign_in(&app, &challenge_id, &tamper(&assertion)).await,
                what,
            )
            .await,
        );
    }
    // One answer for all: nothing tells what was wrong.
    for answer in &answers {
        assert_eq!(answer, &answers[0]);
    }
    // A registration ceremony is no sign-in's, and was not used up by the attempt above.
    let options = creation_options(&app, &ada.access).await;
    let mut token = soft_token();
    let credential = make_credential(&mut token, ORIGIN, &options);
    refused(
        passkey_sign_in(&app, &format!("register:{ada_id}"), &good).await,
        "a registration's id",
    )
    .await;
    assert_eq!(
        add(&app, &ada.access, &credential, None).await.status(),
        StatusCode::CREATED
    );
    let response = sign_in_alone(&app, &mut key, &ada_id).await;
    signed_in_as(&app, response, &ada_id, "at the end").await;
}

#[tokio::test]
async fn a_challenge_id_is_matched_exactly() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let user_id = app.current_user_id(&owner.access).await;
    let (mut key, _) = add_passkey(&app, &owner.access, None).await;

    let (challenge_id, options) = passkey_challenge(&app).await;
    let assertion = discoverable_assertion(&mut key, &options, Some(&user_handle(&user_id)));
    let flipped: String = challenge_id
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    assert_ne!(flipped, challenge_id);
    for near in [
        flipped,
        format!(" {challenge_id}"),
        format!("{challenge_id}\t"),
        format!("{challenge_id}%"),
        format!("{challenge_id}x"),
        format!("{challenge_id}\u{0}"),
        format!("{challenge_id} "),
        format!("{challenge_id}   "),
    ] {
        refused(
            passkey_sign_in(&app, &near, &assertion).await,
            &format!("{near:?}"),
        )
        .await;
    }
    let response = passkey_sign_in(&app, &challenge_id, &assertion).await;
    signed_in_as(&app, response, &user_id, "the exact id").await;
}

#[tokio::test]
async fn a_challenge_is_answered_within_five_minutes() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let user_id = app.current_user_id(&owner.access).await;
    let (mut key, _) = add_passkey(&app, &owner.access, None).await;
    let handle = user_handle(&user_id);

    let (challenge_id, options) = passkey_challenge(&app).await;
    let assertion = discoverable_assertion(&mut key, &options, Some(&handle));
    app.clock.advance_secs(CEREMONY_TTL + 1);
    refused(
        passkey_sign_in(&app, &challenge_id, &assertion).await,
        "expired",
    )
    .await;
    let (challenge_id, options) = passkey_challenge(&app).await;
    let assertion = discoverable_assertion(&mut key, &options, Some(&handle));
    app.clock.advance_secs(CEREMONY_TTL - 30);
    let response = passkey_sign_in(&app, &challenge_id, &assertion).await;
    signed_in_as(&app, response, &user_id, "within 5 minutes").await;

    // The second step's ceremony too (its token lives as long).
    let token = mfa_token(&app, "ada@example.com").await;
    let options = second_step_options(&app, &token).await;
    let assertion = get_assertion(&mut key.token, ORIGIN, &options);
    app.clock.advance_secs(CEREMONY_TTL + 1);
    let response = with_webauthn(&app, &token, &assertion).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_banned_or_deleted_account_is_told_only_after_a_valid_assertion() {
    let app = TestApp::spawn().await;
    let ada = app.signed_in().await;
    let ada_id = app.current_user_id(&ada.access).await;
    let (mut adas, _) = add_passkey(&app, &ada.access, None).await;
    let (_, bob, bob_id) = account(&app, 1).await;
    let (mut bobs, _) = add_passkey(&app, &bob.access, None).await;

    let ban = dt_users::service::Command::Ban {
        user_id: ada_id.parse().unwrap(),
        reason: None,
    };
    app.app.apply_command("ban-ada", &ban).await.unwrap();
    assert_eq!(
        app.delete_account(&bob.access, PASSWORD).await.status(),
        StatusCode::ACCEPTED
    );

    for (key, user_id, code) in [
        (&mut adas, &ada_id, "account_banned"),
        (&mut bobs, &bob_id, "account_deleted"),
    ] {
        let (challenge_id, options) = passkey_challenge(&app).await;
        let assertion = discoverable_assertion(key, &options, Some(&user_handle(user_id)));
        let mut forged = assertion.clone();
        forged["response"]["signature"] = flip_last_byte(&assertion["response"]["signature"]);
        refused(passkey_sign_in(&app, &challenge_id, &forged).await, code).await;
        let (challenge_id, options) = passkey_challenge(&app).await;
        let assertion = discoverable_assertion(key, &options, Some(&user_handle(user_id)));
        assert_problem(
            passkey_sign_in(&app, &challenge_id, &assertion).await,
            StatusCode::FORBIDDEN,
            code,
        )
        .await;
    }
}

#[tokio::test]
async fn assertions_from_another_origin_or_for_another_relying_party_are_refused() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let user_id = app.current_user_id(&owner.access).await;
    let (mut key, _) = add_passkey(&app, &owner.access, None).await;
    let handle = user_handle(&user_id);
    let cases: [(&str, Answer); 5] = [
        ("a name under the rp id", |t, o| {
            get_assertion_unchecked(t, SUBDOMAIN_ORIGIN, o)
        }),
        ("https instead of http", |t, o| {
            get_assertion(t, "https://localhost:8000", o)
        }),
        ("another port", |t, o| {
            get_assertion(t, "http://localhost:8001", o)
        }),
        ("another rp id, from its origin", |t, o| {
            get_assertion(t, "https://evil.example", &for_rp(o, "evil.example"))
        }),
        ("another rp id, from the allowed origin", |t, o| {
            get_assertion_unchecked(t, ORIGIN, &for_rp(o, "evil.example"))
        }),
    ];
    let token = mfa_token(&app, "ada@example.com").await;
    for (what, sign) in cases {
        // Alone.
        let (challenge_id, options) = passkey_challenge(&app).await;
        let mut assertion = sign(
            &mut key.token,
            &as_resident_key(&options, &key.credential_id),
        );
        assertion["response"]["userHandle"] = json!(handle);
        refused(passkey_sign_in(&app, &challenge_id, &assertion).await, what).await;
        // Second step.
        let options = second_step_options(&app, &token).await;
        let assertion = sign(&mut key.token, &options);
        let response = with_webauthn(&app, &token, &assertion).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert_problem(response, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    }
    // From the right origin both sign in.
    let response = second_step(&app, &token, &mut key.token).await;
    signed_in_as(&app, response, &user_id, "second step").await;
    let response = sign_in_alone(&app, &mut key, &user_id).await;
    signed_in_as(&app, response, &user_id, "alone").await;
}

// ---------------------------------------------------------------------------------------------
// Flags and counters
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_cloned_authenticator_is_refused_once_the_original_moved_on() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let user_id = app.current_user_id(&owner.access).await;
    let (mut key, _) = add_passkey(&app, &owner.access, None).await;
    let snapshot = key.token.to_cbor().unwrap();

    // The original is used twice: the counter stored moves on to 2.
    let response = sign_in_alone(&app, &mut key, &user_id).await;
    signed_in_as(&app, response, &user_id, "original, alone").await;
    let token = mfa_token(&app, "ada@example.com").await;
    let response = second_step(&app, &token, &mut key.token).await;
    signed_in_as(&app, response, &user_id, "original, second step").await;
    let last_used = list(&app, &owner.access).await[0]["last_used_at"].clone();

    // The copy's counter is behind (1, then 2): both refused, in both ways of signing in.
    let mut clone = Key {
        token: SoftToken::from_cbor(&snapshot).unwrap(),
        credential_id: key.credential_id.clone(),
        id: key.id.clone(),
    };
    refused(
        sign_in_alone(&app, &mut clone, &user_id).await,
        "clone, alone",
    )
    .await;
    let token = mfa_token(&app, "ada@example.com").await;
    assert_problem(
        second_step(&app, &token, &mut clone.token).await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    app.clock.advance_secs(60);
    assert_eq!(
        list(&app, &owner.access).await[0]["last_used_at"],
        last_used,
        "a refused use is not recorded"
    );
    // The original goes on.
    let response = second_step(&app, &token, &mut key.token).await;
    signed_in_as(&app, response, &user_id, "original, again").await;
    let response = sign_in_alone(&app, &mut key, &user_id).await;
    signed_in_as(&app, response, &user_id, "original, alone again").await;
}

#[tokio::test]
async fn a_counter_must_move_forward_unless_the_authenticator_keeps_none() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let user_id = app.current_user_id(&owner.access).await;
    let handle = user_handle(&user_id);

    // Without a counter (always 0): every use is accepted.
    let mut counterless = HandKey::new();
    let counterless_id = add_hand_key(&app, &owner.access, &counterless, UP | UV).await;
    for n in 0..3 {
        let (challenge_id, options) = passkey_challenge(&app).await;
        let assertion = counterless.assert_with(&options, ORIGIN, UP | UV, 0, Some(&handle));
        let response = passkey_sign_in(&app, &challenge_id, &assertion).await;
        signed_in_as(&app, response, &user_id, &format!("counterless, use {n}")).await;
        // Its challenge was used: the same assertion again is refused, though its counter
        // (0) would allow it.
        refused(
            passkey_sign_in(&app, &challenge_id, &assertion).await,
            &format!("counterless, replay {n}"),
        )
        .await;
    }
    // Once it counts, it must go on counting.
    for (counter, accepted) in [
        (5, true),
        (5, false),
        (4, false),
        (0, false),
        (6, true),
        (1_000, true),
        (999, false),
    ] {
        let (challenge_id, options) = passkey_challenge(&app).await;
        let assertion = counterless.assert_with(&options, ORIGIN, UP | UV, counter, Some(&handle));
        let response = passkey_sign_in(&app, &challenge_id, &assertion).await;
        let what = format!("counter {counter}");
        if accepted {
            signed_in_as(&app, response, &user_id, &what).await;
        } else {
            refused(response, &what).await;
        }
    }
    // The same at the second step, for another key.
    let mut counting = HandKey::new();
    add_hand_key(&app, &owner.access, &counting, UP | UV).await;
    assert_eq!(
        remove(&app, &owner.access, &counterless_id, PASSWORD)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let mut token = mfa_token(&app, "ada@example.com").await;
    for (counter, accepted) in [(7, true), (7, false), (3, false), (0, false), (8, true)] {
        let options = second_step_options(&app, &token).await;
        let assertion = counting.assert_with(&options, ORIGIN, UP | UV, counter, None);
        let response = with_webauthn(&app, &token, &assertion).await;
        let what = format!("second step, counter {counter}");
        if accepted {
            signed_in_as(&app, response, &user_id, &what).await;
            token = mfa_token(&app, "ada@example.com").await;
        } else {
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
            assert_problem(response, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
        }
    }
}

#[tokio::test]
async fn a_synced_passkey_is_a_software_key_in_the_access_token() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let user_id = app.current_user_id(&owner.access).await;
    let mut synced = HandKey::new();
    add_hand_key(&app, &owner.access, &synced, UP | UV | BE | BS).await;

    let token = mfa_token(&app, "ada@example.com").await;
    let options = second_step_options(&app, &token).await;
    let assertion = synced.assert(&options, UP | UV | BE | BS, None);
    let response = with_webauthn(&app, &token, &assertion).await;
    let tokens = signed_in_as(&app, response, &user_id, "second step").await;
    assert_eq!(amr(&tokens.access), ["pwd", "swk", "user", "mfa"]);

    let (challenge_id, options) = passkey_challenge(&app).await;
    let assertion = synced.assert(&options, UP | UV | BE | BS, Some(&user_handle(&user_id)));
    let response = passkey_sign_in(&app, &challenge_id, &assertion).await;
    let tokens = signed_in_as(&app, response, &user_id, "alone").await;
    assert_eq!(amr(&tokens.access), ["swk", "user", "mfa"]);
}

#[tokio::test]
async fn a_passkey_that_does_not_verify_the_user_is_refused() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let user_id = app.current_user_id(&owner.access).await;
    let mut key = HandKey::new();

    let options = creation_options(&app, &owner.access).await;
    assert_problem(
        add(
            &app,
            &owner.access,
            &key.register(&options, ORIGIN, UP),
            None,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_credential",
    )
    .await;
    assert!(list(&app, &owner.access).await.is_empty());

    add_hand_key(&app, &owner.access, &key, UP | UV).await;
    let (challenge_id, options) = passkey_challenge(&app).await;
    let assertion = key.assert(&options, UP, Some(&user_handle(&user_id)));
    refused(
        passkey_sign_in(&app, &challenge_id, &assertion).await,
        "alone, user not verified",
    )
    .await;
    let token = mfa_token(&app, "ada@example.com").await;
    let options = second_step_options(&app, &token).await;
    let assertion = key.assert(&options, UP, None);
    assert_problem(
        with_webauthn(&app, &token, &assertion).await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    // Verified, it signs in.
    let options = second_step_options(&app, &token).await;
    let assertion = key.assert(&options, UP | UV, None);
    let response = with_webauthn(&app, &token, &assertion).await;
    signed_in_as(&app, response, &user_id, "verified").await;
}

// ---------------------------------------------------------------------------------------------
// Races, each for several rounds
// ---------------------------------------------------------------------------------------------

/// The two kinds of authenticator a race is run with: the soft token, whose counter alone
/// would refuse the copies of its assertion, and a key without a counter, whose copies only
/// the one use of the ceremony can refuse.
const KINDS: [&str; 2] = ["soft token", "no counter"];

#[tokio::test]
async fn ten_sends_of_one_passkey_assertion_at_once_sign_in_once() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let user_id = app.current_user_id(&owner.access).await;
    let handle = user_handle(&user_id);
    let (mut key, _) = add_passkey(&app, &owner.access, None).await;
    let mut counterless = HandKey::new();
    add_hand_key(&app, &owner.access, &counterless, UP | UV).await;
    for round in 0..8 {
        for kind in KINDS {
            let (challenge_id, options) = passkey_challenge(&app).await;
            let assertion = if kind == KINDS[0] {
                discoverable_assertion(&mut key, &options, Some(&handle))
            } else {
                counterless.assert_with(&options, ORIGIN, UP | UV, 0, Some(&handle))
            };
            let body = json!({"challenge_id": challenge_id, "credential": assertion});
            let requests = (0..10)
                .map(|_| app.client.post(app.url(SIGN_IN)).json(&body))
                .collect();
            signed_in_once(
                &all_at_once(requests).await,
                &format!("round {round}, {kind}"),
            );
        }
    }
}

#[tokio::test]
async fn twelve_sends_of_one_second_step_assertion_at_once_sign_in_once() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let (mut key, _) = add_passkey(&app, &owner.access, None).await;
    let mut counterless = HandKey::new();
    add_hand_key(&app, &owner.access, &counterless, UP | UV).await;
    for round in 0..8 {
        for kind in KINDS {
            let token = mfa_token(&app, "ada@example.com").await;
            let options = second_step_options(&app, &token).await;
            let assertion = if kind == KINDS[0] {
                get_assertion(&mut key.token, ORIGIN, &options)
            } else {
                counterless.assert_with(&options, ORIGIN, UP | UV, 0, None)
            };
            let body = json!({"mfa_token": token, "webauthn": assertion});
            let requests = (0..12)
                .map(|_| app.client.post(app.url("/api/v1/auth/mfa")).json(&body))
                .collect();
            signed_in_once(
                &all_at_once(requests).await,
                &format!("round {round}, {kind}"),
            );
        }
    }
}

#[tokio::test]
async fn a_clone_racing_its_original_signs_in_once() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let user_id = app.current_user_id(&owner.access).await;
    let handle = user_handle(&user_id);
    let (mut key, _) = add_passkey(&app, &owner.access, None).await;
    for round in 0..8 {
        // Both have the same counter: each assertion alone would be accepted, on its own
        // challenge; together only one may.
        let mut clone = Key {
            token: SoftToken::from_cbor(&key.token.to_cbor().unwrap()).unwrap(),
            credential_id: key.credential_id.clone(),
            id: key.id.clone(),
        };
        let mut requests = Vec::new();
        for signer in [&mut key, &mut clone] {
            let (challenge_id, options) = passkey_challenge(&app).await;
            let assertion = discoverable_assertion(signer, &options, Some(&handle));
            requests.push(
                app.client
                    .post(app.url(SIGN_IN))
                    .json(&json!({"challenge_id": challenge_id, "credential": assertion})),
            );
        }
        signed_in_once(&all_at_once(requests).await, &format!("round {round}"));
    }
}

#[tokio::test]
async fn a_passkey_added_while_the_last_one_is_removed_keeps_recovery_codes() {
    let app = TestApp::spawn().await;
    for round in 0..12 {
        let (_, owner, user_id) = account(&app, round).await;
        let (old, _) = add_passkey(&app, &owner.access, None).await;
        let mut token = soft_token();
        let options = creation_options(&app, &owner.access).await;
        let credential = make_credential(&mut token, ORIGIN, &options);
        // The addition is sent a little later each round, to meet the removal at each of its
        // stages.
        let delay = std::time::Duration::from_millis(2 * (round as u64 % 6));
        let (removed, added) =
            tokio::join!(remove(&app, &owner.access, &old.id, PASSWORD), async {
                tokio::time::sleep(delay).await;
                add(&app, &owner.access, &credential, None).await
            },);
        assert_eq!(removed.status(), StatusCode::NO_CONTENT, "round {round}");
        assert_eq!(added.status(), StatusCode::CREATED, "round {round}");
        let added: Value = added.json().await.unwrap();
        // Two-factor is on with the new passkey: its recovery codes exist, whether this
        // addition made them or the ones from before were kept.
        assert_eq!(list(&app, &owner.access).await.len(), 1, "round {round}");
        let mut conn = app.db().await;
        let (unused,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM recovery_codes WHERE user_id = ? AND used_at IS NULL",
        )
        .bind(user_id.clone())
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(
            unused,
            10,
            "round {round}: codes in the answer: {}",
            added.get("recovery_codes").is_some()
        );
        let (_, methods) = first_step(&app, &format!("user{round}@example.com")).await;
        assert_eq!(
            methods,
            json!(["webauthn", "recovery_code"]),
            "round {round}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Export
// ---------------------------------------------------------------------------------------------

/// The text of the caller's export.
async fn export_text(app: &TestApp, access_token: &str) -> String {
    let response = app
        .get_auth("/api/v1/users/current/export", access_token)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.unwrap()
}

#[tokio::test]
async fn the_export_lists_passkeys_without_their_keys() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let user_id = app.current_user_id(&owner.access).await;
    let none: Value = serde_json::from_str(&export_text(&app, &owner.access).await).unwrap();
    assert_eq!(none["second_factors"]["passkeys"], json!([]), "{none}");

    let (mut key, _) = add_passkey(&app, &owner.access, Some("Laptop")).await;
    let hand = HandKey::new();
    add_hand_key(&app, &owner.access, &hand, UP | UV).await;
    let response = sign_in_alone(&app, &mut key, &user_id).await;
    assert_eq!(response.status(), StatusCode::OK);

    let text = export_text(&app, &owner.access).await;
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        body["second_factors"]["passkeys"],
        json!(list(&app, &owner.access).await)
    );
    let exported = body["second_factors"]["passkeys"].as_array().unwrap();
    assert_eq!(exported.len(), 2, "{body}");
    assert_eq!(exported[0]["name"], "Laptop");
    assert!(exported[0]["last_used_at"].is_string(), "{body}");
    for passkey in exported {
        let mut fields: Vec<&String> = passkey.as_object().unwrap().keys().collect();
        fields.sort();
        assert_eq!(
            fields,
            ["created_at", "id", "last_used_at", "name"],
            "{passkey}"
        );
    }
    // No key material, in any encoding.
    let point = hand.key.public_key().as_ref().to_vec();
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let credential_ids = [unb64(&key.credential_id), hand.credential_id.clone()];
    let mut leaks = vec![
        b64(&point[1..33]),
        b64(&point[33..65]),
        hex(&point[1..33]),
        base64::engine::general_purpose::STANDARD.encode(&point[1..33]),
    ];
    for id in &credential_ids {
        leaks.push(b64(id));
        leaks.push(hex(id));
        leaks.push(hex(&sha256(id)));
        leaks.push(base64::engine::general_purpose::STANDARD.encode(id));
    }
    for leak in &leaks {
        assert!(!text.contains(leak.as_str()), "{leak} in {text}");
    }
    for field in [
        "cred_id",
        "credential",
        "sign_count",
        "counter",
        "backup_eligible",
    ] {
        assert!(!text.contains(field), "{field} in {text}");
    }
}

// ---------------------------------------------------------------------------------------------
// Ugly input
// ---------------------------------------------------------------------------------------------

fn random_b64(len: usize) -> String {
    let mut bytes = vec![0_u8; len];
    rand::fill(&mut bytes[..]);
    b64(&bytes)
}

/// Credentials of every wrong shape and content, for any endpoint that takes one.
fn ugly_credentials(real: &Value, user_id: &str) -> Vec<Value> {
    let id = real["rawId"].clone();
    let deep_cbor = {
        let mut bytes = vec![0x81_u8; 20_000];
        bytes.push(0x00);
        bytes
    };
    let deep_auth_data = {
        let mut bytes = sha256(RP_ID.as_bytes());
        bytes.push(UP | UV | 0x80);
        bytes.extend([0, 0, 0, 9]);
        bytes.extend(vec![0xa1_u8; 10_000]);
        bytes
    };
    let client_data = |text: &str| json!(b64(text.as_bytes()));
    let mut nested = json!(1);
    for _ in 0..200 {
        nested = json!([nested]);
    }
    vec![
        json!({}),
        json!(null),
        json!("a credential"),
        json!(12),
        json!([real]),
        nested,
        json!({"id": id, "rawId": id, "type": "public-key"}),
        json!({"id": id, "rawId": "!!not base64!!", "type": "public-key", "response": real["response"]}),
        json!({"id": id, "rawId": id, "type": "public-key", "response": "x"}),
        json!({"id": "", "rawId": "", "type": "public-key", "response": real["response"]}),
        json!({"id": id, "rawId": random_b64(40_000), "type": "public-key", "response": real["response"]}),
        json!({
            "id": id, "rawId": id, "type": "public-key",
            "response": {
                "authenticatorData": random_b64(37), "clientDataJSON": random_b64(120),
                "signature": random_b64(72), "userHandle": user_handle(user_id),
                "attestationObject": random_b64(300),
            },
        }),
        json!({
            "id": id, "rawId": id, "type": "public-key",
            "response": {
                "authenticatorData": "", "clientDataJSON": "", "signature": "",
                "userHandle": "", "attestationObject": "",
            },
        }),
        json!({
            "id": id, "rawId": id, "type": "public-key",
            "response": {
                "authenticatorData": b64(&[0x01]), "clientDataJSON": client_data("null"),
                "signature": b64(&[0x30]), "userHandle": user_handle(user_id),
                "attestationObject": b64(&[0xa0]),
            },
        }),
        json!({
            "id": id, "rawId": id, "type": "public-key",
            "response": {
                "authenticatorData": b64(&deep_auth_data),
                "clientDataJSON": client_data(r#"{"type":"webauthn.get","challenge":"","origin":"javascript:alert(1)"}"#),
                "signature": random_b64(72), "userHandle": user_handle(user_id),
                "attestationObject": b64(&deep_cbor),
            },
        }),
        json!({
            "id": id, "rawId": id, "type": "public-key",
            "response": {
                "authenticatorData": random_b64(37),
                "clientDataJSON": client_data(r#"{"type":1,"challenge":[],"origin":{}}"#),
                "signature": random_b64(72), "userHandle": random_b64(5_000),
                "attestationObject": random_b64(300),
            },
        }),
        json!({
            "id": id, "rawId": id, "type": "' OR '1'='1",
            "response": {
                "authenticatorData": random_b64(37),
                "clientDataJSON": client_data(r#"{"type":"webauthn.create","challenge":"AAAA","origin":"http://localhost:8000","crossOrigin":true}"#),
                "signature": random_b64(72),
                "attestationObject": random_b64(300),
            },
        }),
    ]
}

#[tokio::test]
async fn ugly_input_on_the_passkey_endpoints_is_a_client_error() {
    let app = TestApp::spawn().await;
    let ada = app.signed_in().await;
    let ada_id = app.current_user_id(&ada.access).await;
    let (mut key, _) = add_passkey(&app, &ada.access, Some("Laptop")).await;
    let token = mfa_token(&app, "ada@example.com").await;
    let (challenge_id, options) = passkey_challenge(&app).await;
    let assertion = discoverable_assertion(&mut key, &options, Some(&user_handle(&ada_id)));
    let mut stale_token = soft_token();
    let stale_registration = make_credential(
        &mut stale_token,
        ORIGIN,
        &creation_options(&app, &ada.access).await,
    );
    // Replaced: whatever else a body with it holds, it adds nothing.
    creation_options(&app, &ada.access).await;

    let endpoints: Vec<(Method, String, Value)> = vec![
        (
            Method::POST,
            PASSKEYS.into(),
            json!({"credential": stale_registration, "name": "Key"}),
        ),
        (
            Method::DELETE,
            format!("{PASSKEYS}/{}", key.id),
            json!({"current_password": "not my password"}),
        ),
        (
            Method::POST,
            SECOND_STEP_OPTIONS.into(),
            json!({"mfa_token": token}),
        ),
        (
            Method::POST,
            "/api/v1/auth/mfa".into(),
            json!({"mfa_token": token, "webauthn": assertion}),
        ),
        (
            Method::POST,
            SIGN_IN.into(),
            json!({"challenge_id": challenge_id, "credential": assertion}),
        ),
    ];
    for (method, path, example) in &endpoints {
        for body in [
            &b"{"[..],
            b"{,}",
            b"not json",
            b"\xff\xfe",
            b"{\"unterminated",
            b"[]",
            b"null",
        ] {
            let what = format!("{method} {path} {:?}", String::from_utf8_lossy(body));
            let response = send_json(&app, method.clone(), path, &ada.access, body.to_vec()).await;
            assert_client_problem(response, &what).await;
        }
        let fields: Vec<String> = example.as_object().unwrap().keys().cloned().collect();
        for field in &fields {
            for wrong in [
                json!(123_456),
                json!(true),
                json!(["x"]),
                json!({"code": 1}),
                json!(null),
                json!("a string"),
            ] {
                let mut body = example.clone();
                body[field] = wrong;
                let what = format!("{method} {path} {field}: {}", body[field]);
                let response = send_json(
                    &app,
                    method.clone(),
                    path,
                    &ada.access,
                    serde_json::to_vec(&body).unwrap(),
                )
                .await;
                assert_client_problem(response, &what).await;
            }
        }
        let mut unknown = example.clone();
        unknown["is_admin"] = json!(true);
        let response = send_json(
            &app,
            method.clone(),
            path,
            &ada.access,
            serde_json::to_vec(&unknown).unwrap(),
        )
        .await;
        assert_client_problem(response, &format!("{method} {path} unknown field")).await;
        // 70 KB.
        let mut huge = example.clone();
        huge[&fields[0]] = json!("1".repeat(70 * 1024));
        let response = send_json(
            &app,
            method.clone(),
            path,
            &ada.access,
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

    // Every wrong credential, where a credential goes.
    let fresh_token = mfa_token(&app, "ada@example.com").await;
    for credential in ugly_credentials(&assertion, &ada_id) {
        let shown: String = credential.to_string().chars().take(200).collect();
        creation_options(&app, &ada.access).await;
        let response = add(&app, &ada.access, &credential, None).await;
        assert_client_problem(response, &format!("add {shown}")).await;
        let (challenge_id, _) = passkey_challenge(&app).await;
        let response = passkey_sign_in(&app, &challenge_id, &credential).await;
        assert_client_problem(response, &format!("sign in {shown}")).await;
        second_step_options(&app, &fresh_token).await;
        let response = with_webauthn(&app, &fresh_token, &credential).await;
        assert_client_problem(response, &format!("second step {shown}")).await;
    }

    let nasty = [
        "' OR '1'='1",
        "0; DROP TABLE passkeys; --",
        "\"; DELETE FROM webauthn_ceremonies; --",
        "%' OR id LIKE '%",
        "register:%",
        "mfa:*",
        "\u{0}\u{1}\u{7f}",
        "\u{202e}evil",
        "👩‍💻🚀🔐",
        "a\nb\rc\td",
        "",
        " ",
        "../../etc/passwd",
        "%00",
    ];
    let long = "x".repeat(5_000);
    for value in nasty.iter().copied().chain([long.as_str()]) {
        let shown: String = value.chars().take(40).collect();
        refused(
            passkey_sign_in(&app, value, &assertion).await,
            &format!("challenge_id {shown:?}"),
        )
        .await;
        let response = request_second_step_options(&app, value).await;
        assert_client_problem(response, &format!("mfa_token {shown:?}")).await;
        creation_options(&app, &ada.access).await;
        let response = add(&app, &ada.access, &stale_registration, Some(value)).await;
        assert_client_problem(response, &format!("name {shown:?}")).await;
        let response = remove(&app, &ada.access, &key.id, value).await;
        assert_client_problem(response, &format!("password {shown:?}")).await;
        let path_id = utf8_percent_encode(value, NON_ALPHANUMERIC).to_string();
        if !path_id.is_empty() {
            let response = remove(&app, &ada.access, &path_id, PASSWORD).await;
            assert_client_problem(response, &format!("path id {shown:?}")).await;
        }
    }

    // After all that, Ada's passkey is intact and signs her in, both ways.
    let listed = list(&app, &ada.access).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["name"], "Laptop");
    let response = sign_in_alone(&app, &mut key, &ada_id).await;
    signed_in_as(&app, response, &ada_id, "alone").await;
    let response = second_step(&app, &token, &mut key.token).await;
    signed_in_as(&app, response, &ada_id, "second step").await;
}

/// `DELETE /passkeys/{id}` without a password, from the session `access_token` signs in.
async fn remove_without_password(app: &TestApp, access_token: &str, id: &str) -> Response {
    app.client
        .delete(app.url(&format!("{PASSKEYS}/{id}")))
        .bearer_auth(access_token)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_passkey_sign_in_of_the_last_five_minutes_stands_in_for_the_password() {
    let app = TestApp::spawn().await;
    let owner = app.signed_in().await;
    let user_id = app.current_user_id(&owner.access).await;
    let (mut laptop, _) = add_passkey(&app, &owner.access, Some("Laptop")).await;
    let (phone, _) = add_passkey(&app, &owner.access, Some("Phone")).await;
    let (tablet, _) = add_passkey(&app, &owner.access, Some("Tablet")).await;

    // A session signed in with the password must give it.
    let fields =
        invalid_fields(remove_without_password(&app, &owner.access, &phone.id).await).await;
    assert_eq!(fields, ["current_password"]);
    assert_eq!(list(&app, &owner.access).await.len(), 3);

    // A session signed in with a passkey alone, within 5 minutes, need not.
    let fresh = signed_in_as(
        &app,
        sign_in_alone(&app, &mut laptop, &user_id).await,
        &user_id,
        "passkey alone",
    )
    .await;
    app.clock.advance_secs(290);
    let response = remove_without_password(&app, &fresh.access, &phone.id).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(list(&app, &owner.access).await.len(), 2);

    // Past 5 minutes since that sign-in, the password is needed again; it still works.
    app.clock.advance_secs(20);
    let fields =
        invalid_fields(remove_without_password(&app, &fresh.access, &tablet.id).await).await;
    assert_eq!(fields, ["current_password"]);
    let response = remove(&app, &fresh.access, &tablet.id, PASSWORD).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(list(&app, &owner.access).await.len(), 1);
}
