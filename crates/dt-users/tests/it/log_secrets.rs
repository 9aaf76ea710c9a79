//! The logs of every flow that handles a secret hold none of them: no password, no access or
//! refresh token, no emailed token, no signing key, no two-factor secret, code or token, and
//! nothing of a provider sign-in (state, cookie, code, PKCE verifier, login code).

use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use dt_users::domain::{Clock, SystemClock};
use dt_users::security::totp::TotpSecret;

use crate::helpers::PASSWORD;
use crate::oauth_standins::{GitHubEmail, GitHubStandIn, GitHubUser};

/// The web app page provider sign-ins come back to.
const WEB_APP: &str = "https://app.example.test/done";

fn emailed_tokens(mail_dir: &std::path::Path) -> Vec<String> {
    let mut tokens = Vec::new();
    for entry in std::fs::read_dir(mail_dir).into_iter().flatten().flatten() {
        let raw = std::fs::read_to_string(entry.path()).unwrap_or_default();
        // The plain part is quoted-printable; the token's own line is short enough to stay whole.
        for line in raw.lines().map(str::trim) {
            if line.len() == 43
                && line
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                tokens.push(line.to_owned());
            }
        }
    }
    tokens
}

async fn latest_token(mail_dir: &std::path::Path, seen: &mut Vec<String>) -> String {
    for _ in 0..100 {
        if let Some(token) = emailed_tokens(mail_dir)
            .into_iter()
            .find(|t| !seen.contains(t))
        {
            seen.push(token.clone());
            return token;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no new emailed token");
}

#[tokio::test]
async fn logs_of_every_secret_handling_flow_contain_no_secret() {
    let dir = std::env::temp_dir().join(format!("dt-users-logs-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = crate::mail::free_port();
    let log_path = dir.join("service.log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_dt-users"));
    command
        .args(["serve", "--port", &port.to_string()])
        .current_dir(&dir)
        .env("RUST_LOG", "debug")
        .stdout(std::fs::File::create(&log_path).unwrap())
        .stderr(Stdio::null());
    for (key, _) in std::env::vars() {
        if key.starts_with("DT_USERS_") {
            command.env_remove(key);
        }
    }
    // GitHub sign-in, against the stand-in.
    let github = GitHubStandIn::start("gh-client", "gh-client-secret-4711").await;
    let base = format!("http://127.0.0.1:{port}");
    command
        .env("DT_USERS_GITHUB_CLIENT_ID", "gh-client")
        .env("DT_USERS_GITHUB_CLIENT_SECRET", "gh-client-secret-4711")
        .env("DT_USERS_GITHUB_URL", github.web_url())
        .env("DT_USERS_GITHUB_API_URL", github.api_url())
        .env("DT_USERS_API_URL", &base)
        .env("DT_USERS_OAUTH_REDIRECT_URIS", WEB_APP);
    let mut child = command.spawn().unwrap();
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if client
            .get(format!("{base}/health/ready"))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mail = dir.join("var/mail");
    let mut seen = Vec::new();
    let mut secrets = vec![PASSWORD.to_owned()];
    let post = |path: &str, body: Value| client.post(format!("{base}{path}")).json(&body).send();

    assert_eq!(
        post(
            "/api/v1/auth/register",
            json!({"email": "ada@example.com", "username": "ada", "password": PASSWORD})
        )
        .await
        .unwrap()
        .status(),
        StatusCode::CREATED
    );
    let verify = latest_token(&mail, &mut seen).await;
    assert_eq!(
        post("/api/v1/auth/email/verify", json!({"token": verify}))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        post(
            "/api/v1/auth/login",
            json!({"email": "ada@example.com", "password": "a wrong guess here"})
        )
        .await
        .unwrap()
        .status(),
        StatusCode::UNAUTHORIZED
    );
    secrets.push("a wrong guess here".into());
    let pair: Value = post(
        "/api/v1/auth/login",
        json!({"email": "ada@example.com", "password": PASSWORD}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let refreshed: Value = post(
        "/api/v1/auth/refresh",
        json!({"refresh_token": pair["refresh_token"]}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    for value in [
        &pair["access_token"],
        &pair["refresh_token"],
        &refreshed["access_token"],
        &refreshed["refresh_token"],
    ] {
        secrets.push(value.as_str().unwrap().to_owned());
    }
    let access = refreshed["access_token"].as_str().unwrap().to_owned();
    let changed = client
        .patch(format!("{base}/api/v1/users/current"))
        .bearer_auth(&access)
        .json(&json!({"new_password": "second secret passphrase", "current_password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    secrets.push("second secret passphrase".into());
    assert_eq!(
        post(
            "/api/v1/auth/password/forgot",
            json!({"email": "ada@example.com"})
        )
        .await
        .unwrap()
        .status(),
        StatusCode::ACCEPTED
    );
    let reset = latest_token(&mail, &mut seen).await;
    assert_eq!(
        post(
            "/api/v1/auth/password/reset",
            json!({"token": reset, "new_password": "third secret passphrase"})
        )
        .await
        .unwrap()
        .status(),
        StatusCode::NO_CONTENT
    );
    secrets.push("third secret passphrase".into());
    let pair: Value = post(
        "/api/v1/auth/login",
        json!({"email": "ada@example.com", "password": "third secret passphrase"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    // Two-factor sign-in: the authenticator's secret, its codes, the recovery codes and the
    // second step's token.
    let access = pair["access_token"].as_str().unwrap().to_owned();
    let enrolment: Value = client
        .post(format!("{base}/api/v1/users/current/mfa/totp"))
        .bearer_auth(&access)
        .json(&json!({"current_password": "third secret passphrase"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = enrolment["secret"].as_str().unwrap().to_owned();
    let totp = TotpSecret::from_base32(&secret).unwrap();
    let code = totp
        .code_at_step(TotpSecret::step_of(SystemClock.now()))
        .unwrap();
    let confirmed: Value = client
        .post(format!("{base}/api/v1/users/current/mfa/totp/confirm"))
        .bearer_auth(&access)
        .json(&json!({"code": code}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let recovery: Vec<String> = confirmed["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(recovery.len(), 10);
    let required: Value = post(
        "/api/v1/auth/login",
        json!({"email": "ada@example.com", "password": "third secret passphrase"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(required["code"], "mfa_required");
    let mfa_token = required["mfa_token"].as_str().unwrap().to_owned();
    let second: Value = post(
        "/api/v1/auth/mfa",
        json!({"mfa_token": mfa_token, "recovery_code": recovery[0]}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let second_access = second["access_token"].as_str().unwrap().to_owned();
    secrets.extend([secret, code, mfa_token, second_access]);
    secrets.extend(recovery);

    let deleted = client
        .delete(format!("{base}/api/v1/users/current"))
        .bearer_auth(pair["access_token"].as_str().unwrap())
        .json(&json!({"password": "third secret passphrase"}))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::ACCEPTED);
    let restore = latest_token(&mail, &mut seen).await;
    assert_eq!(
        post("/api/v1/users/restore", json!({"token": restore}))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    secrets.extend(seen.iter().cloned());
    secrets.push(pair["access_token"].as_str().unwrap().to_owned());

    // A GitHub sign-in: its state, the cookie binding it, GitHub's code, the PKCE verifier,
    // the login code and the tokens.
    github.sign_in_as(GitHubUser {
        id: 1,
        login: "grace".into(),
        name: None,
        avatar_url: None,
        emails: vec![GitHubEmail {
            email: "grace@example.com".into(),
            primary: true,
            verified: true,
        }],
    });
    let browser = crate::oidc_provider::browser();
    let authorize = browser
        .get(format!(
            "{base}/api/v1/auth/oauth/github/authorize?redirect_uri={WEB_APP}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(authorize.status(), StatusCode::FOUND);
    let cookie = authorize.headers()["set-cookie"].to_str().unwrap();
    let binding = cookie
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("dt_oauth=")
        .to_owned();
    let at_github = url::Url::parse(authorize.headers()["location"].to_str().unwrap()).unwrap();
    let back = browser.get(at_github.clone()).send().await.unwrap();
    let callback = url::Url::parse(back.headers()["location"].to_str().unwrap()).unwrap();
    let landed = browser.get(callback.clone()).send().await.unwrap();
    let landed = url::Url::parse(landed.headers()["location"].to_str().unwrap()).unwrap();
    let param = |url: &url::Url, name: &str| {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| panic!("no {name} in {url}"))
    };
    let login_code = param(&landed, "login_code");
    let exchanged: Value = post(
        "/api/v1/auth/oauth/exchange",
        json!({"login_code": login_code}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    secrets.extend([
        param(&at_github, "state"),
        binding,
        param(&callback, "code"),
        github.last_code_verifier().unwrap(),
        login_code,
        "gh-client-secret-4711".to_owned(),
        exchanged["access_token"].as_str().unwrap().to_owned(),
        exchanged["refresh_token"].as_str().unwrap().to_owned(),
    ]);

    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap();
    let key = std::fs::read_to_string(dir.join("var/signing-key.pem")).unwrap();
    let key_body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    secrets.push(key_body);
    assert!(
        log.lines().count() > 20,
        "the service logged too little to mean anything"
    );
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "the log holds a secret: {}…",
            &secret[..8.min(secret.len())]
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
