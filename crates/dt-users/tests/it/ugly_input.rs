//! Hostile and malformed input on every endpoint: always a 4xx problem document (or a normal
//! success where the input is merely unusual), never a 5xx.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem};

/// Every endpoint that takes a JSON body, with a valid-shaped example.
fn json_endpoints() -> Vec<(Method, &'static str, Value)> {
    vec![
        (
            Method::POST,
            "/api/v1/auth/register",
            json!({"email": "u@example.com", "username": "ugly", "password": "a fine passphrase"}),
        ),
        (
            Method::POST,
            "/api/v1/auth/login",
            json!({"email": "u@example.com", "password": "a fine passphrase"}),
        ),
        (
            Method::POST,
            "/api/v1/auth/refresh",
            json!({"refresh_token": "x"}),
        ),
        (Method::PATCH, "/api/v1/users/current", json!({"bio": "hi"})),
        (
            Method::POST,
            "/api/v1/auth/email/change/confirm",
            json!({"token": "x"}),
        ),
        (
            Method::POST,
            "/api/v1/auth/email/change/cancel",
            json!({"token": "x"}),
        ),
        (
            Method::POST,
            "/api/v1/auth/oauth/exchange",
            json!({"login_code": "dtl_x"}),
        ),
        (
            Method::POST,
            "/api/v1/users/current/identities/github",
            json!({"redirect_uri": "https://app.example.com/done"}),
        ),
    ]
}

pub(crate) async fn send_raw(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    content_type: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    app.client
        .request(method, app.url(path))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn malformed_json_is_400() {
    let app = TestApp::spawn().await;
    let token = app.signed_in().await.access;
    for (method, path, _) in json_endpoints() {
        for body in [
            &b"{"[..],
            b"{,}",
            b"not json",
            b"\xff\xfe",
            b"{\"unterminated",
        ] {
            let response = send_raw(
                &app,
                method.clone(),
                path,
                &token,
                "application/json",
                body.to_vec(),
            )
            .await;
            assert_eq!(
                response.status(),
                StatusCode::BAD_REQUEST,
                "{path} {:?}",
                String::from_utf8_lossy(body)
            );
            assert_problem(response, StatusCode::BAD_REQUEST, "bad_request").await;
        }
    }
}

#[tokio::test]
async fn a_wrong_content_type_is_415() {
    let app = TestApp::spawn().await;
    let token = app.signed_in().await.access;
    for (method, path, example) in json_endpoints() {
        if path.ends_with("/login") {
            continue; // login also takes a form; see below
        }
        let body = serde_json::to_vec(&example).unwrap();
        for content_type in [
            "text/plain",
            "application/xml",
            "application/x-www-form-urlencoded",
        ] {
            let response = send_raw(
                &app,
                method.clone(),
                path,
                &token,
                content_type,
                body.clone(),
            )
            .await;
            assert_problem(
                response,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
            )
            .await;
        }
    }
    let response = send_raw(
        &app,
        Method::POST,
        "/api/v1/auth/login",
        &token,
        "text/plain",
        b"{}".to_vec(),
    )
    .await;
    assert_problem(
        response,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
}

#[tokio::test]
async fn wrong_types_missing_and_unknown_fields_are_422_naming_the_field() {
    let app = TestApp::spawn().await;
    let token = app.signed_in().await.access;
    for (method, path, example) in json_endpoints() {
        let keys: Vec<String> = example.as_object().unwrap().keys().cloned().collect();
        let first_key = keys[0].clone();
        let mut wrong_type = example.clone();
        wrong_type[&first_key] = json!(12345);
        let mut unknown = example.clone();
        unknown["is_admin"] = json!(true);
        // Each body with the fields a client should show the message next to.
        let mut bodies = vec![
            (wrong_type, vec![first_key.clone()]),
            (unknown, vec!["is_admin".to_owned()]),
            (json!([1, 2, 3]), vec!["body".to_owned()]),
            // An array of the fields' values in order, which serde would read as the struct.
            (
                Value::Array(example.as_object().unwrap().values().cloned().collect()),
                vec!["body".to_owned()],
            ),
            (json!("a string"), vec!["body".to_owned()]),
            (json!(null), vec!["body".to_owned()]),
        ];
        if !path.ends_with("/current") {
            bodies.push((json!({}), keys.clone()));
            // Without its last field: that field is named.
            let mut missing = example.clone();
            let last = keys.last().unwrap().clone();
            missing.as_object_mut().unwrap().remove(&last);
            bodies.push((missing, vec![last]));
        }
        for (body, fields) in bodies {
            let response = send_raw(
                &app,
                method.clone(),
                path,
                &token,
                "application/json",
                serde_json::to_vec(&body).unwrap(),
            )
            .await;
            let problem = assert_problem(
                response,
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_error",
            )
            .await;
            let field = problem["errors"][0]["field"].as_str().unwrap().to_owned();
            assert!(
                fields.contains(&field),
                "{path} {body}: field {field:?}, expected one of {fields:?}"
            );
            let message = problem["errors"][0]["message"].as_str().unwrap();
            assert!(
                !message.is_empty() && !message.contains(" at line "),
                "{message}"
            );
        }
    }
}

#[tokio::test]
async fn bodies_over_64_kib_are_413() {
    let app = TestApp::spawn().await;
    let token = app.signed_in().await.access;
    let huge = "x".repeat(1024 * 1024);
    for (method, path, _) in json_endpoints() {
        let body = serde_json::to_vec(&json!({"email": huge, "password": huge})).unwrap();
        let response = send_raw(&app, method, path, &token, "application/json", body).await;
        assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    }
}

#[tokio::test]
async fn odd_unicode_control_characters_and_injection_strings_never_cause_a_5xx() {
    let app = TestApp::spawn().await;
    let token = app.signed_in().await.access;
    let nasty = [
        "' OR '1'='1",
        "admin'--",
        "\"; DROP TABLE users; --",
        "Robert'); DROP TABLE users;--@example.com",
        "\u{0}\u{1}\u{7f}",
        "\u{202e}gnp.exe",
        "👩‍💻🚀",
        "ＡＢＣ＠ｅｘａｍｐｌｅ．ｃｏｍ",
        "e\u{301}",
        "\u{feff}bom",
        "<script>alert(1)</script>",
        "%00%27",
        "a\nb\rc\td",
        "\u{d7ff}\u{e000}\u{10ffff}",
    ];
    for value in nasty {
        let bodies = [
            (
                "/api/v1/auth/register",
                Method::POST,
                json!({"email": value, "username": value, "password": value, "display_name": value}),
            ),
            (
                "/api/v1/auth/register",
                Method::POST,
                json!({"email": format!("x{}@example.com", value.len()), "username": format!("u{}", value.len()), "password": format!("{value} long enough pass"), "display_name": value}),
            ),
            (
                "/api/v1/auth/login",
                Method::POST,
                json!({"email": value, "password": value}),
            ),
            (
                "/api/v1/auth/refresh",
                Method::POST,
                json!({"refresh_token": value}),
            ),
            (
                "/api/v1/users/current",
                Method::PATCH,
                json!({"display_name": value, "bio": value}),
            ),
            (
                "/api/v1/users/current",
                Method::PATCH,
                json!({"username": value, "avatar_url": value}),
            ),
            (
                "/api/v1/auth/oauth/exchange",
                Method::POST,
                json!({"login_code": value}),
            ),
        ];
        for (path, method, body) in bodies {
            let response = send_raw(
                &app,
                method,
                path,
                &token,
                "application/json",
                serde_json::to_vec(&body).unwrap(),
            )
            .await;
            let status = response.status();
            assert!(!status.is_server_error(), "{path} {value:?}: {status}");
            if status.is_client_error() {
                assert_eq!(
                    response.headers()["content-type"],
                    "application/problem+json",
                    "{path} {value:?}"
                );
            }
        }
        let encoded: String = url_escape(value);
        for path in [
            format!("/api/v1/users/{encoded}"),
            format!("/api/v1/users/current/sessions/{encoded}"),
            format!("/api/v1/users/current/identities/{encoded}"),
            format!("/api/v1/auth/oauth/{encoded}/authorize?redirect_uri={encoded}"),
            format!("/api/v1/auth/oauth/{encoded}/callback?code={encoded}&state={encoded}"),
        ] {
            let response = app
                .client
                .request(
                    if path.contains("sessions") || path.contains("identities") {
                        Method::DELETE
                    } else {
                        Method::GET
                    },
                    app.url(&path),
                )
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert!(
                response.status().is_client_error(),
                "{path}: {}",
                response.status()
            );
        }
        let response = app
            .client
            .post(app.url(&format!("/api/v1/auth/logout?scope={encoded}")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_client_error(), "logout {value:?}");
        if value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            let response = app.get_auth("/api/v1/users/current", value).await;
            assert_problem(response, StatusCode::UNAUTHORIZED, "invalid_token").await;
        }
    }
    // After all that, the account is intact and the table still exists.
    assert_eq!(app.current_status(&token).await, StatusCode::OK);
    assert_eq!(
        app.login("ada@example.com", crate::helpers::PASSWORD)
            .await
            .status(),
        StatusCode::OK
    );
}

fn url_escape(value: &str) -> String {
    value.bytes().map(|b| format!("%{b:02X}")).collect()
}

#[tokio::test]
async fn endpoints_without_a_body_need_none() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .post(app.url("/api/v1/auth/register"))
        .send()
        .await
        .unwrap();
    assert_problem(
        response,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    let response = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .send()
        .await
        .unwrap();
    assert_problem(
        response,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
}

#[tokio::test]
async fn a_login_form_without_its_password_names_the_field() {
    let app = TestApp::spawn().await;
    let response = send_raw(
        &app,
        Method::POST,
        "/api/v1/auth/login",
        "",
        "application/x-www-form-urlencoded",
        b"username=ada%40example.com&grant_type=password".to_vec(),
    )
    .await;
    let problem = assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "password", "{problem}");
}
