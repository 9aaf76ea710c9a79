use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{SIGNING_KEY, TestApp, assert_problem};

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn header_of(token: &str) -> Value {
    let header = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap()
}

fn sign(header: &Header, claims: &Value, pem: &str) -> String {
    jsonwebtoken::encode(
        header,
        claims,
        &EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn eddsa_header(kid: &str) -> Header {
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some("at+jwt".into());
    header.kid = Some(kid.into());
    header
}

async fn assert_refused(app: &TestApp, token: &str, code: &str) {
    let response = app.get_auth("/api/v1/users/current", token).await;
    let www = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_problem(response, StatusCode::UNAUTHORIZED, code).await;
    assert!(www.unwrap().starts_with("Bearer"));
}

#[tokio::test]
async fn access_tokens_verify_with_the_published_jwks_key() {
    let app = TestApp::spawn().await;
    let tokens = app.signed_in().await;
    let jwks: Value = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let header = header_of(&tokens.access);
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["typ"], "at+jwt");
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .unwrap();
    assert_eq!(jwk["kty"], "OKP");
    assert_eq!(jwk["crv"], "Ed25519");
    assert!(
        jwk.get("d").is_none(),
        "the private part must never be published"
    );
    let key = DecodingKey::from_ed_components(jwk["x"].as_str().unwrap()).unwrap();
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&["devtalk"]);
    validation.set_issuer(&["dt-users"]);
    let data = jsonwebtoken::decode::<Value>(&tokens.access, &key, &validation).unwrap();
    let claims = data.claims;
    for claim in ["iss", "aud", "sub", "sid", "jti", "iat", "exp"] {
        assert!(claims.get(claim).is_some(), "missing {claim}");
    }
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
}

#[tokio::test]
async fn a_missing_or_non_bearer_authorization_is_not_authenticated() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .get(app.url("/api/v1/users/current"))
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::UNAUTHORIZED, "not_authenticated").await;
    let response = app
        .client
        .get(app.url("/api/v1/users/current"))
        .header("authorization", "Basic YWRhOnB3")
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::UNAUTHORIZED, "not_authenticated").await;
}

#[tokio::test]
async fn garbage_and_refresh_tokens_are_not_access_tokens() {
    let app = TestApp::spawn().await;
    let tokens = app.signed_in().await;
    assert_refused(&app, &tokens.refresh, "invalid_token").await;
    assert_refused(&app, "not.a.jwt", "invalid_token").await;
    assert_refused(&app, "' OR 1=1 --", "invalid_token").await;
}

#[tokio::test]
async fn alg_none_is_refused() {
    let app = TestApp::spawn().await;
    let tokens = app.signed_in().await;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"at+jwt"}"#);
    let payload = tokens.access.split('.').nth(1).unwrap();
    assert_refused(&app, &format!("{header}.{payload}."), "invalid_token").await;
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_refused() {
    let app = TestApp::spawn().await;
    let tokens = app.signed_in().await;
    let kid = header_of(&tokens.access)["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let jwk = app.app.tokens.keys().jwk(&kid).unwrap().clone();
    let mut header = Header::new(Algorithm::HS256);
    header.typ = Some("at+jwt".into());
    header.kid = Some(kid);
    let claims = claims_of(&tokens.access);
    for secret in [
        jwk["x"].as_str().unwrap().as_bytes().to_vec(),
        URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap(),
    ] {
        let forged =
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&secret)).unwrap();
        assert_refused(&app, &forged, "invalid_token").await;
    }
}

#[tokio::test]
async fn wrong_audience_issuer_or_type_is_refused() {
    let app = TestApp::spawn().await;
    let tokens = app.signed_in().await;
    let kid = header_of(&tokens.access)["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let claims = claims_of(&tokens.access);
    // Sanity: the same claims re-signed as they are pass, so each refusal below is the change.
    assert_eq!(
        app.current_status(&sign(&eddsa_header(&kid), &claims, &SIGNING_KEY))
            .await,
        StatusCode::OK
    );
    for (field, value) in [("aud", "another-service"), ("iss", "someone-else")] {
        let mut changed = claims.clone();
        changed[field] = json!(value);
        assert_refused(
            &app,
            &sign(&eddsa_header(&kid), &changed, &SIGNING_KEY),
            "invalid_token",
        )
        .await;
    }
    let mut jwt_typ = eddsa_header(&kid);
    jwt_typ.typ = Some("JWT".into());
    assert_refused(
        &app,
        &sign(&jwt_typ, &claims, &SIGNING_KEY),
        "invalid_token",
    )
    .await;
    let mut with_jku = eddsa_header(&kid);
    with_jku.jku = Some("https://attacker.example/jwks.json".into());
    assert_refused(
        &app,
        &sign(&with_jku, &claims, &SIGNING_KEY),
        "invalid_token",
    )
    .await;
}

#[tokio::test]
async fn a_token_signed_by_an_unknown_key_is_refused() {
    let app = TestApp::spawn().await;
    let tokens = app.signed_in().await;
    let kid = header_of(&tokens.access)["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = dt_users::security::keys::generate_pem().unwrap();
    let forged = sign(&eddsa_header(&kid), &claims_of(&tokens.access), &other);
    assert_refused(&app, &forged, "invalid_token").await;
}

#[tokio::test]
async fn an_expired_token_is_refused_as_expired() {
    let app = TestApp::spawn().await;
    let tokens = app.signed_in().await;
    app.clock.advance_secs(900 + 31);
    assert_refused(&app, &tokens.access, "token_expired").await;
    // The refresh token still works and gives a fresh access token.
    let response = app.refresh(&tokens.refresh).await;
    assert_eq!(response.status(), StatusCode::OK);
    let fresh: Value = response.json().await.unwrap();
    assert_eq!(
        app.current_status(fresh["access_token"].as_str().unwrap())
            .await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn tokens_signed_by_an_older_configured_key_stay_valid() {
    let old_key = dt_users::security::keys::generate_pem().unwrap();
    let old = TestApp::spawn_with(|s| s.signing_keys = Some(old_key.clone().into())).await;
    let tokens = old.signed_in().await;
    // A new key is introduced in front; the old one still verifies.
    let rotated = TestApp::spawn_with(|s| {
        s.database_url = Some(format!(
            "{}/{}",
            crate::helpers::mysql_server_url(),
            old.db_name
        ));
        s.redis_key_prefix = old.redis_prefix.clone();
        s.signing_keys = Some(
            format!(
                "{}\n{old_key}",
                dt_users::security::keys::generate_pem().unwrap()
            )
            .into(),
        );
    })
    .await;
    assert_eq!(rotated.current_status(&tokens.access).await, StatusCode::OK);
    let jwks: Value = rotated
        .client
        .get(rotated.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    let fresh = rotated.sign_in("ada@example.com").await;
    assert_ne!(
        header_of(&fresh.access)["kid"],
        header_of(&tokens.access)["kid"]
    );
}

#[tokio::test]
async fn expiry_is_tolerated_for_the_configured_leeway_and_no_longer() {
    let app = TestApp::spawn_with(|s| s.access_token_leeway = 4).await;
    let tokens = app.signed_in().await;
    app.clock.advance_secs(900 + 3);
    assert_eq!(app.current_status(&tokens.access).await, StatusCode::OK);
    app.clock.advance_secs(1);
    assert_refused(&app, &tokens.access, "token_expired").await;
}

#[tokio::test]
async fn a_leeway_over_five_seconds_is_refused_at_start_up() {
    let data_dir =
        std::env::temp_dir().join(format!("dt-users-test-{}", uuid::Uuid::new_v4().simple()));
    let settings = dt_users::config::Settings {
        data_dir: data_dir.clone(),
        access_token_leeway: 6,
        ..dt_users::config::Settings::default()
    };
    let built = dt_users::startup::Application::build_with_clock(
        settings,
        "127.0.0.1",
        0,
        std::sync::Arc::new(dt_users::domain::ManualClock::starting_now()),
    )
    .await;
    let _ = std::fs::remove_dir_all(&data_dir);
    let Err(error) = built else {
        panic!("a leeway of 6 s was accepted");
    };
    assert!(
        error.to_string().contains("DT_USERS_ACCESS_TOKEN_LEEWAY"),
        "{error}"
    );
}
