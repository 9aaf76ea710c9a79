//! Sign-in with GitHub and OpenID Connect providers: the whole browser flow against a real
//! OpenID provider (`oidc-provider`, run by the tests) and a GitHub stand-in, new accounts and
//! second sign-ins, linking and unlinking, two-factor, bans and deletion — and the attacks: a
//! wrong, reused or foreign `state`, a callback in another browser, forged ID tokens, open
//! redirects, replayed or late login codes, and silent linking by email.

use dt_users::config::{OidcSettings, Settings};
use dt_users::security::totp::TotpSecret;
use dt_users::service::Command;
use reqwest::header::{LOCATION, SET_COOKIE};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use url::Url;

use crate::backends::{Backend, on_both_backends};
use crate::helpers::{TestApp, Tokens, assert_problem, free_port, invalid_fields};
use crate::in_flight::all_at_once;
use crate::oauth_standins::{Fault, GitHubEmail, GitHubStandIn, GitHubUser, HostileOidc};
use crate::oidc_provider::{OidcProvider, browser, sign_in_at_provider};
use crate::two_factor::{amr, current_user, next_code, outbox, post_auth};

/// The page of the web app the flows come back to (the only one on the allow-list).
const WEB_APP: &str = "https://app.devtalk.test/signed-in";
/// The real OpenID provider's name in the paths.
const CORP: &str = "corp";
const HOSTILE: &str = "hostile";
const GITHUB: &str = "github";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Which providers an app is configured with.
#[derive(Default)]
struct With<'a> {
    /// The real OpenID provider, as `corp`.
    corp: bool,
    github: Option<&'a GitHubStandIn>,
    hostile: Option<&'a HostileOidc>,
}

/// An app on `backend` serving on a port known before it starts, so that its callback URLs
/// can be registered at the providers.
async fn spawn(backend: Backend, with: With<'_>, adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    let mut oidc = Vec::new();
    let mut names = Vec::new();
    if with.corp {
        let provider = OidcProvider::shared().await;
        let (id, secret) = provider
            .register_client(&format!("{api}/api/v1/auth/oauth/{CORP}/callback"))
            .await;
        oidc.push(OidcSettings {
            name: CORP.into(),
            issuer: Some(provider.issuer.clone()),
            client_id: Some(id),
            client_secret: Some(secret.into()),
            scopes: None,
        });
        names.push(CORP);
    }
    if let Some(hostile) = with.hostile {
        oidc.push(OidcSettings {
            name: HOSTILE.into(),
            issuer: Some(hostile.issuer()),
            client_id: Some("hostile-client".into()),
            client_secret: Some("hostile-secret".into()),
            scopes: None,
        });
        names.push(HOSTILE);
    }
    TestApp::spawn_on_port(backend, port, |s| {
        s.api_url = api;
        s.oauth_redirect_uris = format!("{WEB_APP},https://other.devtalk.test/done?x=1");
        s.oidc_providers = names.join(",");
        s.oidc = oidc;
        if let Some(github) = with.github {
            s.github_client_id = Some("gh-client".into());
            s.github_client_secret = Some("gh-secret".into());
            s.github_url = github.web_url();
            s.github_api_url = github.api_url();
        }
        adjust(s);
    })
    .await
}

async fn corp_app(backend: Backend) -> TestApp {
    let with = With {
        corp: true,
        ..With::default()
    };
    spawn(backend, with, |_| {}).await
}

/// A new account at the real provider with these claims; returns the login typed there.
async fn provider_account(email: &str, verified: bool) -> String {
    let login = format!("u{}", uuid::Uuid::new_v4().simple());
    OidcProvider::shared()
        .await
        .set_account(
            &login,
            json!({
                "email": email,
                "email_verified": verified,
                "name": "Ada Lovelace",
                "preferred_username": "ada",
            }),
        )
        .await;
    login
}

fn query_param(url: &Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn location(response: &Response) -> Url {
    let location = response
        .headers()
        .get(LOCATION)
        .unwrap_or_else(|| panic!("no Location in a {}", response.status()))
        .to_str()
        .unwrap();
    Url::parse(location).unwrap()
}

/// `GET …/{provider}/authorize?redirect_uri=…` in `browser`.
async fn request_authorize(
    app: &TestApp,
    browser: &reqwest::Client,
    provider: &str,
    redirect_uri: &str,
) -> Response {
    browser
        .get(app.url(&format!("/api/v1/auth/oauth/{provider}/authorize")))
        .query(&[("redirect_uri", redirect_uri)])
        .send()
        .await
        .unwrap()
}

/// `DELETE /users/current` with `body`.
async fn delete_account(app: &TestApp, access_token: &str, body: &Value) -> Response {
    app.client
        .delete(app.url("/api/v1/users/current"))
        .bearer_auth(access_token)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Starts a sign-in flow in `browser`; returns the provider's URL it redirects to.
async fn authorize(app: &TestApp, browser: &reqwest::Client, provider: &str) -> Url {
    let response = request_authorize(app, browser, provider, WEB_APP).await;
    assert_eq!(response.status(), StatusCode::FOUND);
    let cookie = response
        .headers()
        .get(SET_COOKIE)
        .unwrap()
        .to_str()
        .unwrap();
    assert!(
        cookie.starts_with("dt_oauth=")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    assert_eq!(
        response.headers()["cache-control"].to_str().unwrap(),
        "no-store"
    );
    location(&response)
}

/// Requests the provider's callback in `browser`.
async fn callback(browser: &reqwest::Client, callback: &Url) -> Response {
    browser.get(callback.clone()).send().await.unwrap()
}

/// The web app's URL a finished callback sends the browser to.
async fn landed(browser: &reqwest::Client, callback_url: &Url) -> Url {
    let response = callback(browser, callback_url).await;
    assert_eq!(response.status(), StatusCode::FOUND, "{callback_url}");
    let landed = location(&response);
    assert!(landed.as_str().starts_with(WEB_APP), "{landed}");
    landed
}

/// The whole browser flow at the real provider as `login`; the web app URL it ends on.
async fn flow_at_corp(app: &TestApp, browser: &reqwest::Client, login: &str) -> Url {
    let at_provider = authorize(app, browser, CORP).await;
    assert!(
        at_provider
            .as_str()
            .starts_with(&OidcProvider::shared().await.issuer)
    );
    for name in ["state", "nonce", "code_challenge"] {
        assert!(query_param(&at_provider, name).is_some(), "{at_provider}");
    }
    assert_eq!(
        query_param(&at_provider, "code_challenge_method").as_deref(),
        Some("S256")
    );
    let callback_url = sign_in_at_provider(browser, at_provider.as_str(), login).await;
    assert!(
        callback_url.as_str().starts_with(&app.base),
        "{callback_url}"
    );
    landed(browser, &callback_url).await
}

async fn exchange(app: &TestApp, login_code: &str) -> Response {
    app.post_json(
        "/api/v1/auth/oauth/exchange",
        &json!({"login_code": login_code}),
    )
    .await
}

/// Signs in at the real provider as `login` in a fresh browser; the login code it ends with.
async fn corp_login_code(app: &TestApp, login: &str) -> String {
    let landed = flow_at_corp(app, &browser(), login).await;
    query_param(&landed, "login_code").unwrap_or_else(|| panic!("{landed}"))
}

/// Signs in at the real provider as `login` and exchanges the code.
async fn corp_sign_in(app: &TestApp, login: &str) -> Response {
    let code = corp_login_code(app, login).await;
    exchange(app, &code).await
}

/// A provider sign-in that made an account: its tokens.
async fn created(response: Response) -> Tokens {
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["created"], true, "{body}");
    Tokens::from(body)
}

async fn signed_in(response: Response) -> Tokens {
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["created"], false, "{body}");
    Tokens::from(body)
}

async fn identities(app: &TestApp, access_token: &str) -> Vec<Value> {
    let response = app
        .get_auth("/api/v1/users/current/identities", access_token)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json::<Vec<Value>>().await.unwrap()
}

async fn unlink(app: &TestApp, access_token: &str, id: &str) -> Response {
    app.client
        .delete(app.url(&format!("/api/v1/users/current/identities/{id}")))
        .bearer_auth(access_token)
        .send()
        .await
        .unwrap()
}

/// Starts linking `provider` to the account of `access_token` in `browser` (the call that sets
/// the flow's cookie); returns the provider's URL.
async fn start_link(
    app: &TestApp,
    browser: &reqwest::Client,
    access_token: &str,
    provider: &str,
) -> Url {
    let response = browser
        .post(app.url(&format!("/api/v1/users/current/identities/{provider}")))
        .bearer_auth(access_token)
        .json(&json!({"redirect_uri": WEB_APP}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get(SET_COOKIE).is_some());
    let body: Value = response.json().await.unwrap();
    Url::parse(body["authorize_url"].as_str().unwrap()).unwrap()
}

/// Links the real provider's `login` to the account of `access_token`; where it lands.
async fn link_corp(app: &TestApp, access_token: &str, login: &str) -> Url {
    let browser = browser();
    let at_provider = start_link(app, &browser, access_token, CORP).await;
    let callback_url = sign_in_at_provider(&browser, at_provider.as_str(), login).await;
    landed(&browser, &callback_url).await
}

/// Rows of `table` (`identities`, `users`).
async fn rows(app: &TestApp, table: &str) -> i64 {
    let mut conn = app.db().await;
    let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
        .fetch_one(&mut conn)
        .await
        .unwrap();
    n
}

// ---------------------------------------------------------------------------------------------
// The real OpenID provider
// ---------------------------------------------------------------------------------------------

on_both_backends! {
    async fn a_new_identity_makes_an_account_and_signs_in_to_it_again(backend) {
        let app = corp_app(backend).await;
        let login = provider_account("ada@corp.test", true).await;

        let tokens = created(corp_sign_in(&app, &login).await).await;
        assert_eq!(amr(&tokens.access), ["fed"]);
        let user = current_user(&app, &tokens.access).await;
        assert_eq!(user["email"], "ada@corp.test");
        assert_eq!(user["email_verified"], true);
        assert_eq!(user["username"], "ada");
        assert_eq!(user["display_name"], "Ada Lovelace");
        let user_id = user["id"].as_str().unwrap().to_owned();

        // The event of a new account carries the public profile only.
        let registered = outbox(&app, &user_id, "devtalk.user.registered").await;
        assert_eq!(registered.len(), 1, "{registered:?}");
        assert!(!registered[0].to_string().contains("ada@corp.test"), "{}", registered[0]);
        // The provider vouched for the address: no verification email.
        assert!(outbox(&app, &user_id, "welcome").await.is_empty());

        let linked = identities(&app, &tokens.access).await;
        assert_eq!(linked.len(), 1);
        assert_eq!(linked[0]["provider"], CORP);
        assert_eq!(linked[0]["subject"], login.as_str());
        assert_eq!(linked[0]["email"], "ada@corp.test");

        // A second sign-in, in another browser, is the same account.
        let again = signed_in(corp_sign_in(&app, &login).await).await;
        assert_eq!(app.current_user_id(&again.access).await, user_id);
        // Sessions work as any other: refresh, and sign-out.
        let refreshed = app.refresh(&again.refresh).await;
        assert_eq!(refreshed.status(), StatusCode::OK);
        let refreshed: Value = refreshed.json().await.unwrap();
        assert_eq!(amr(refreshed["access_token"].as_str().unwrap()), ["fed"]);

        // The account has no password: signing in with one fails as a wrong one does.
        let response = app.login("ada@corp.test", "any password at all 1").await;
        assert_problem(response, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    }

    async fn an_unverified_provider_email_never_verifies_the_account(backend) {
        let app = corp_app(backend).await;
        let login = provider_account("grace@corp.test", false).await;
        let tokens = created(corp_sign_in(&app, &login).await).await;
        let user = current_user(&app, &tokens.access).await;
        assert_eq!(user["email"], "grace@corp.test");
        assert_eq!(user["email_verified"], false);
        // The address is verified the usual way: the welcome email has the link.
        let user_id = user["id"].as_str().unwrap();
        assert_eq!(outbox(&app, user_id, "welcome").await.len(), 1);
        // Signing in again does not verify it either.
        let again = signed_in(corp_sign_in(&app, &login).await).await;
        assert_eq!(current_user(&app, &again.access).await["email_verified"], false);
    }

    async fn an_email_of_an_existing_account_is_never_linked_by_itself(backend) {
        let app = corp_app(backend).await;
        let owner = app.register("victim@corp.test", "victim").await;
        let owner_id = owner["id"].as_str().unwrap().to_owned();
        for verified in [true, false] {
            let login = provider_account("Victim@Corp.test", verified).await;
            let response = corp_sign_in(&app, &login).await;
            assert_problem(response, StatusCode::CONFLICT, "account_exists").await;
        }
        // Nothing was linked, and no account was made.
        assert_eq!(rows(&app, "identities").await, 0);
        assert_eq!(rows(&app, "users").await, 1);
        let tokens = app.sign_in("victim@corp.test").await;
        assert!(identities(&app, &tokens.access).await.is_empty());
        assert_eq!(app.current_user_id(&tokens.access).await, owner_id);
    }

    async fn the_owner_links_and_unlinks_an_identity(backend) {
        let app = corp_app(backend).await;
        app.register("linus@devtalk.test", "linus").await;
        let tokens = app.sign_in("linus@devtalk.test").await;
        let login = provider_account("linus@corp.test", true).await;

        let landed = link_corp(&app, &tokens.access, &login).await;
        assert_eq!(query_param(&landed, "linked").as_deref(), Some(CORP), "{landed}");
        assert!(query_param(&landed, "login_code").is_none());
        let linked = identities(&app, &tokens.access).await;
        assert_eq!(linked.len(), 1);
        // The owner is told: a new way into the account is a security event.
        let user_id = app.current_user_id(&tokens.access).await;
        let notices = outbox(&app, &user_id, "identity_linked").await;
        assert_eq!(notices.len(), 1, "{notices:?}");
        assert_eq!(notices[0]["params"]["provider"], CORP);

        // The identity now signs in to this account.
        let via_provider = signed_in(corp_sign_in(&app, &login).await).await;
        assert_eq!(
            app.current_user_id(&via_provider.access).await,
            app.current_user_id(&tokens.access).await
        );

        // Unlinked (the account has a password), it no longer does: a new sign-in would make
        // a new account, with an address that is free.
        let id = linked[0]["id"].as_str().unwrap();
        assert_eq!(unlink(&app, &tokens.access, id).await.status(), StatusCode::NO_CONTENT);
        assert!(identities(&app, &tokens.access).await.is_empty());
        assert_eq!(outbox(&app, &user_id, "identity_unlinked").await.len(), 1);
        assert_problem(unlink(&app, &tokens.access, id).await, StatusCode::NOT_FOUND, "not_found").await;
        let fresh = created(corp_sign_in(&app, &login).await).await;
        assert_ne!(
            app.current_user_id(&fresh.access).await,
            app.current_user_id(&tokens.access).await
        );
    }

    async fn an_identity_of_another_account_is_not_linked(backend) {
        let app = corp_app(backend).await;
        let login = provider_account("taken@corp.test", true).await;
        let first = created(corp_sign_in(&app, &login).await).await;
        app.register("second@devtalk.test", "second").await;
        let second = app.sign_in("second@devtalk.test").await;

        let landed = link_corp(&app, &second.access, &login).await;
        assert_eq!(query_param(&landed, "error").as_deref(), Some("identity_taken"));
        assert!(identities(&app, &second.access).await.is_empty());
        assert_eq!(identities(&app, &first.access).await.len(), 1);
    }

    async fn the_last_way_to_sign_in_stays(backend) {
        let app = corp_app(backend).await;
        let login = provider_account("solo@corp.test", true).await;
        let tokens = created(corp_sign_in(&app, &login).await).await;
        let linked = identities(&app, &tokens.access).await;
        let id = linked[0]["id"].as_str().unwrap();
        assert_problem(unlink(&app, &tokens.access, id).await, StatusCode::CONFLICT, "last_sign_in_method").await;
        assert_eq!(identities(&app, &tokens.access).await.len(), 1);

        // Once a password is set (by a reset, as for any forgotten password), it can go.
        let user_id = app.current_user_id(&tokens.access).await;
        let response = app
            .post_json("/api/v1/auth/password/forgot", &json!({"email": "solo@corp.test"}))
            .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let token = app.awaited_token(&user_id, "password_reset").await;
        let response = app
            .post_json(
                "/api/v1/auth/password/reset",
                &json!({"token": token, "new_password": "a brand new passphrase 9"}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let tokens = Tokens::from(
            app.login("solo@corp.test", "a brand new passphrase 9")
                .await
                .json::<Value>()
                .await
                .unwrap(),
        );
        assert_eq!(unlink(&app, &tokens.access, id).await.status(), StatusCode::NO_CONTENT);
    }

    async fn a_login_code_works_once_and_for_a_minute(backend) {
        let app = corp_app(backend).await;
        let login = provider_account("once@corp.test", true).await;
        let code = corp_login_code(&app, &login).await;
        assert!(code.starts_with("dtl_"));
        created(exchange(&app, &code).await).await;
        assert_problem(exchange(&app, &code).await, StatusCode::BAD_REQUEST, "invalid_token").await;

        let late = corp_login_code(&app, &login).await;
        app.clock.advance_secs(61);
        assert_problem(exchange(&app, &late).await, StatusCode::BAD_REQUEST, "invalid_token").await;
        for garbage in ["", "dtl_", "dtl_nope", "'; DROP TABLE users; --", "\u{202e}dtl_x"] {
            let response = exchange(&app, garbage).await;
            assert_problem(response, StatusCode::BAD_REQUEST, "invalid_token").await;
        }
    }
}

#[tokio::test]
async fn a_callback_in_another_browser_or_twice_is_refused() {
    let app = corp_app(Backend::MariaDbRedis).await;
    let login = provider_account("csrf@corp.test", true).await;

    // The victim's callback URL, requested by another browser (no cookie): refused, and the
    // flow is used up, so it can serve nobody.
    let victim = browser();
    let at_provider = authorize(&app, &victim, CORP).await;
    let callback_url = sign_in_at_provider(&victim, at_provider.as_str(), &login).await;
    let attacker = browser();
    assert_problem(
        callback(&attacker, &callback_url).await,
        StatusCode::BAD_REQUEST,
        "invalid_state",
    )
    .await;
    assert_problem(
        callback(&victim, &callback_url).await,
        StatusCode::BAD_REQUEST,
        "invalid_state",
    )
    .await;

    // A callback carries a binding cookie of another flow: refused too.
    let other = authorize(&app, &attacker, CORP).await;
    assert!(other.as_str().contains("state="));
    let at_provider = authorize(&app, &victim, CORP).await;
    let callback_url = sign_in_at_provider(&victim, at_provider.as_str(), &login).await;
    assert_problem(
        callback(&attacker, &callback_url).await,
        StatusCode::BAD_REQUEST,
        "invalid_state",
    )
    .await;

    // A good flow, then its callback once more (a reused state): refused.
    let browser = browser();
    let at_provider = authorize(&app, &browser, CORP).await;
    let callback_url = sign_in_at_provider(&browser, at_provider.as_str(), &login).await;
    let first = landed(&browser, &callback_url).await;
    assert!(query_param(&first, "login_code").is_some());
    assert_problem(
        callback(&browser, &callback_url).await,
        StatusCode::BAD_REQUEST,
        "invalid_state",
    )
    .await;

    // A made-up, missing or expired state.
    let mut forged = callback_url.clone();
    forged.set_query(Some("code=abc&state=not-a-state"));
    assert_problem(
        callback(&browser, &forged).await,
        StatusCode::BAD_REQUEST,
        "invalid_state",
    )
    .await;
    forged.set_query(Some("code=abc"));
    assert_problem(
        callback(&browser, &forged).await,
        StatusCode::BAD_REQUEST,
        "invalid_state",
    )
    .await;
    let at_provider = authorize(&app, &browser, CORP).await;
    let callback_url = sign_in_at_provider(&browser, at_provider.as_str(), &login).await;
    app.clock.advance_secs(601);
    assert_problem(
        callback(&browser, &callback_url).await,
        StatusCode::BAD_REQUEST,
        "invalid_state",
    )
    .await;
}

#[tokio::test]
async fn only_allow_listed_redirect_uris_are_accepted() {
    let app = corp_app(Backend::Embedded).await;
    let client = browser();
    let refused = [
        "https://evil.test/signed-in",
        "https://app.devtalk.test/signed-in/../../evil",
        "https://app.devtalk.test/signed-in?next=https://evil.test",
        "https://app.devtalk.test/signed-in#frag",
        "https://app.devtalk.test@evil.test/signed-in",
        "https://app.devtalk.test.evil.test/signed-in",
        "http://app.devtalk.test/signed-in",
        "https://APP.devtalk.test/signed-in",
        "//evil.test",
        "javascript:alert(1)",
        "",
        "https://other.devtalk.test/done",
    ];
    for redirect_uri in refused {
        let response = request_authorize(&app, &client, "corp", redirect_uri).await;
        assert_problem(response, StatusCode::BAD_REQUEST, "invalid_redirect_uri").await;
    }
    // Without any redirect_uri, or to an unknown provider.
    let response = client
        .get(app.url("/api/v1/auth/oauth/corp/authorize"))
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::BAD_REQUEST, "invalid_redirect_uri").await;
    for provider in ["nope", "github", "CORP", "%00"] {
        let response = request_authorize(&app, &client, provider, WEB_APP).await;
        assert_problem(response, StatusCode::NOT_FOUND, "not_found").await;
    }
    // An allow-listed URI with its own query keeps it, and gets the code added.
    let response =
        request_authorize(&app, &client, "corp", "https://other.devtalk.test/done?x=1").await;
    assert_eq!(response.status(), StatusCode::FOUND);
    let login = provider_account("query@corp.test", true).await;
    let callback_url = sign_in_at_provider(&client, location(&response).as_str(), &login).await;
    let response = callback(&client, &callback_url).await;
    let landed = location(&response);
    assert!(
        landed
            .as_str()
            .starts_with("https://other.devtalk.test/done?x=1&login_code=dtl_"),
        "{landed}"
    );
    // Linking checks the list too.
    app.register("lister@devtalk.test", "lister").await;
    let tokens = app.sign_in("lister@devtalk.test").await;
    let response = post_auth(
        &app,
        "/api/v1/users/current/identities/corp",
        &tokens.access,
        &json!({"redirect_uri": "https://evil.test/"}),
    )
    .await;
    assert_problem(response, StatusCode::BAD_REQUEST, "invalid_redirect_uri").await;
    let response = post_auth(
        &app,
        "/api/v1/users/current/identities/nope",
        &tokens.access,
        &json!({"redirect_uri": WEB_APP}),
    )
    .await;
    assert_problem(response, StatusCode::NOT_FOUND, "not_found").await;
    let response = post_auth(
        &app,
        "/api/v1/users/current/identities/corp",
        &tokens.access,
        &json!({"redirect_uri": WEB_APP, "extra": 1}),
    )
    .await;
    assert_eq!(invalid_fields(response).await, ["extra"]);
}

#[tokio::test]
async fn with_no_allow_list_provider_sign_in_is_refused() {
    let with = With {
        corp: true,
        ..With::default()
    };
    let app = spawn(Backend::Embedded, with, |s| {
        s.oauth_redirect_uris = String::new()
    })
    .await;
    let response = request_authorize(&app, &browser(), "corp", WEB_APP).await;
    assert_problem(response, StatusCode::BAD_REQUEST, "invalid_redirect_uri").await;
}

#[tokio::test]
async fn the_provider_saying_no_comes_back_as_an_error() {
    let app = corp_app(Backend::Embedded).await;
    let browser = browser();
    let at_provider = authorize(&app, &browser, CORP).await;
    let state = query_param(&at_provider, "state").unwrap();
    let mut denied = Url::parse(&app.url("/api/v1/auth/oauth/corp/callback")).unwrap();
    denied
        .query_pairs_mut()
        .append_pair("error", "access_denied")
        .append_pair("state", &state);
    let landed = landed(&browser, &denied).await;
    assert_eq!(
        query_param(&landed, "error").as_deref(),
        Some("access_denied")
    );
    assert!(query_param(&landed, "login_code").is_none());
}

#[tokio::test]
async fn two_factor_still_asks_for_the_second_step() {
    let app = corp_app(Backend::MariaDbRedis).await;
    let login = provider_account("mfa@corp.test", true).await;
    let tokens = created(corp_sign_in(&app, &login).await).await;

    // The account has no password: its fresh provider sign-in stands in for one.
    let response = post_auth(
        &app,
        "/api/v1/users/current/mfa/totp",
        &tokens.access,
        &json!({}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let secret: Value = response.json().await.unwrap();
    let secret = totp_rs::Secret::try_from_base32(secret["secret"].as_str().unwrap()).unwrap();
    let secret = TotpSecret::from_bytes(secret.as_bytes().to_vec());
    let response = post_auth(
        &app,
        "/api/v1/users/current/mfa/totp/confirm",
        &tokens.access,
        &json!({"code": next_code(&app, &secret)}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);

    let response = corp_sign_in(&app, &login).await;
    let problem = assert_problem(response, StatusCode::FORBIDDEN, "mfa_required").await;
    let response = app
        .post_json(
            "/api/v1/auth/mfa",
            &json!({"mfa_token": problem["mfa_token"], "totp_code": next_code(&app, &secret)}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        amr(body["access_token"].as_str().unwrap()),
        ["fed", "otp", "mfa"]
    );
}

#[tokio::test]
async fn a_banned_account_cannot_sign_in_with_its_provider() {
    let app = corp_app(Backend::MariaDbRedis).await;
    let login = provider_account("banned@corp.test", true).await;
    let tokens = created(corp_sign_in(&app, &login).await).await;
    let user_id = uuid::Uuid::parse_str(&app.current_user_id(&tokens.access).await).unwrap();
    let ban = Command::Ban {
        user_id,
        reason: Some("spam".into()),
    };
    app.app.apply_command("ban-provider", &ban).await.unwrap();
    assert_problem(
        corp_sign_in(&app, &login).await,
        StatusCode::FORBIDDEN,
        "account_banned",
    )
    .await;
}

#[tokio::test]
async fn an_account_without_a_password_confirms_changes_with_a_fresh_sign_in() {
    let app = corp_app(Backend::MariaDbRedis).await;
    let login = provider_account("fresh@corp.test", true).await;
    let tokens = created(corp_sign_in(&app, &login).await).await;

    // Within 5 minutes of the sign-in, no password is asked for.
    let response = app
        .patch_current(
            &tokens.access,
            &json!({"display_name": "Fresh", "new_password": "my first passphrase 42"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let with_password = Tokens::from(
        app.login("fresh@corp.test", "my first passphrase 42")
            .await
            .json::<Value>()
            .await
            .unwrap(),
    );
    // Later, it is: the account has one now.
    app.clock.advance_secs(301);
    let refreshed: Value = app
        .refresh(&with_password.refresh)
        .await
        .json()
        .await
        .unwrap();
    let access = refreshed["access_token"].as_str().unwrap();
    let response = delete_account(&app, access, &json!({})).await;
    assert_eq!(invalid_fields(response).await, ["password"]);

    // A provider-only account past its 5 minutes: told to sign in again.
    let other = provider_account("stale@corp.test", true).await;
    let stale = created(corp_sign_in(&app, &other).await).await;
    app.clock.advance_secs(301);
    let refreshed: Value = app.refresh(&stale.refresh).await.json().await.unwrap();
    let access = refreshed["access_token"].as_str().unwrap();
    let response = delete_account(&app, access, &json!({})).await;
    assert_eq!(invalid_fields(response).await, ["password"]);
    // Signed in again, it may delete itself; its identity goes with the account.
    let again = signed_in(corp_sign_in(&app, &other).await).await;
    let response = delete_account(&app, &again.access, &json!({})).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_problem(
        corp_sign_in(&app, &other).await,
        StatusCode::FORBIDDEN,
        "account_deleted",
    )
    .await;
    app.clock.advance_secs(31 * 86_400);
    app.app.sweep(app.app.now()).await.unwrap();
    assert_eq!(
        rows(&app, "identities").await,
        1,
        "only the first account's identity is left"
    );
    // Erased, the identity makes a new account.
    created(corp_sign_in(&app, &other).await).await;
}

// ---------------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn one_login_code_exchanged_at_once_signs_in_once() {
    let app = corp_app(Backend::MariaDbRedis).await;
    let login = provider_account("race@corp.test", true).await;
    for round in 0..8 {
        let code = corp_login_code(&app, &login).await;
        let requests = (0..10)
            .map(|_| {
                app.client
                    .post(app.url("/api/v1/auth/oauth/exchange"))
                    .json(&json!({"login_code": code}))
            })
            .collect();
        let answers = all_at_once(requests).await;
        let won = answers.iter().filter(|(s, _)| s.is_success()).count();
        assert_eq!(won, 1, "round {round}: {answers:?}");
        assert!(
            answers
                .iter()
                .all(|(s, _)| s.is_success() || *s == StatusCode::BAD_REQUEST),
            "{answers:?}"
        );
    }
    assert_eq!(rows(&app, "users").await, 1);
}

#[tokio::test]
async fn one_new_identity_signing_in_twice_at_once_makes_one_account() {
    let app = corp_app(Backend::MariaDbRedis).await;
    for round in 0..6 {
        let login = provider_account(&format!("twin{round}@corp.test"), true).await;
        let codes = [
            corp_login_code(&app, &login).await,
            corp_login_code(&app, &login).await,
        ];
        let requests = codes
            .iter()
            .map(|code| {
                app.client
                    .post(app.url("/api/v1/auth/oauth/exchange"))
                    .json(&json!({"login_code": code}))
            })
            .collect();
        let answers = all_at_once(requests).await;
        let statuses: Vec<StatusCode> = answers.iter().map(|(s, _)| *s).collect();
        assert!(
            statuses.contains(&StatusCode::CREATED),
            "round {round}: {answers:?}"
        );
        assert!(
            statuses.iter().all(|s| s.is_success()),
            "round {round}: {answers:?}"
        );
    }
    assert_eq!(rows(&app, "users").await, 6);
    assert_eq!(rows(&app, "identities").await, 6);
}

#[tokio::test]
async fn removing_the_last_two_ways_in_at_once_keeps_one() {
    let with = With {
        corp: true,
        ..With::default()
    };
    let hostile = HostileOidc::start("hostile-client", "hostile-secret").await;
    let with = With {
        hostile: Some(&hostile),
        ..with
    };
    let app = spawn(Backend::MariaDbRedis, with, |_| {}).await;
    for round in 0..8 {
        let login = provider_account(&format!("two{round}@corp.test"), true).await;
        let tokens = created(corp_sign_in(&app, &login).await).await;
        hostile.set_fault(Fault::None);
        hostile.sign_in_as(
            &format!("h{round}"),
            json!({"email": format!("two{round}@corp.test"), "email_verified": true}),
        );
        let browser = browser();
        let at_provider = start_link(&app, &browser, &tokens.access, HOSTILE).await;
        let response = browser.get(at_provider).send().await.unwrap();
        let landed = landed(&browser, &location(&response)).await;
        assert_eq!(
            query_param(&landed, "linked").as_deref(),
            Some(HOSTILE),
            "{landed}"
        );
        let linked = identities(&app, &tokens.access).await;
        assert_eq!(linked.len(), 2);
        let requests = linked
            .iter()
            .map(|identity| {
                let id = identity["id"].as_str().unwrap();
                app.client
                    .delete(app.url(&format!("/api/v1/users/current/identities/{id}")))
                    .bearer_auth(&tokens.access)
            })
            .collect();
        let answers = all_at_once(requests).await;
        let mut statuses: Vec<StatusCode> = answers.iter().map(|(s, _)| *s).collect();
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::NO_CONTENT, StatusCode::CONFLICT],
            "round {round}: {answers:?}"
        );
        assert_eq!(identities(&app, &tokens.access).await.len(), 1);
    }
}

// ---------------------------------------------------------------------------------------------
// Forged ID tokens (a provider that misbehaves on purpose)
// ---------------------------------------------------------------------------------------------

/// Runs a flow at the hostile provider as `subject`; where the browser lands.
async fn hostile_flow(app: &TestApp, hostile: &HostileOidc, subject: &str) -> Url {
    hostile.sign_in_as(subject, json!({"email": format!("{subject}@hostile.test"), "email_verified": true, "preferred_username": subject}));
    let browser = browser();
    let at_provider = authorize(app, &browser, HOSTILE).await;
    let response = browser.get(at_provider).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    landed(&browser, &location(&response)).await
}

#[tokio::test]
async fn forged_id_tokens_are_refused() {
    let hostile = HostileOidc::start("hostile-client", "hostile-secret").await;
    let with = With {
        hostile: Some(&hostile),
        ..With::default()
    };
    let app = spawn(Backend::Embedded, with, |_| {}).await;
    for fault in [
        Fault::WrongNonce,
        Fault::NoNonce,
        Fault::WrongAudience,
        Fault::Expired,
        Fault::ForeignKey,
        Fault::WrongIssuer,
        Fault::BadAtHash,
    ] {
        hostile.set_fault(fault);
        let landed = hostile_flow(&app, &hostile, "mallory").await;
        assert_eq!(
            query_param(&landed, "error").as_deref(),
            Some("provider_refused"),
            "{fault:?}: {landed}"
        );
        assert!(query_param(&landed, "login_code").is_none(), "{fault:?}");
    }
    assert_eq!(rows(&app, "users").await, 0);
    // The same provider, behaving: the flow works (so the refusals above are the faults').
    hostile.set_fault(Fault::None);
    let landed = hostile_flow(&app, &hostile, "mallory").await;
    let code = query_param(&landed, "login_code").unwrap_or_else(|| panic!("{landed}"));
    let tokens = created(exchange(&app, &code).await).await;
    assert_eq!(
        current_user(&app, &tokens.access).await["username"],
        "mallory"
    );
}

#[tokio::test]
async fn a_provider_that_is_down_is_unavailable() {
    let hostile = HostileOidc::start("hostile-client", "hostile-secret").await;
    let issuer = format!("http://127.0.0.1:{}", free_port());
    let with = With {
        hostile: Some(&hostile),
        ..With::default()
    };
    let app = spawn(Backend::Embedded, with, |s| {
        s.oidc[0].issuer = Some(issuer);
    })
    .await;
    let response = request_authorize(&app, &browser(), "hostile", WEB_APP).await;
    assert_problem(response, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
}

// ---------------------------------------------------------------------------------------------
// GitHub
// ---------------------------------------------------------------------------------------------

fn octocat(emails: Vec<GitHubEmail>) -> GitHubUser {
    GitHubUser {
        id: 583_231,
        login: "octocat".into(),
        name: Some("The Octocat".into()),
        avatar_url: Some("https://avatars.githubusercontent.com/u/583231?v=4".into()),
        emails,
    }
}

fn email(address: &str, primary: bool, verified: bool) -> GitHubEmail {
    GitHubEmail {
        email: address.into(),
        primary,
        verified,
    }
}

/// A flow at the GitHub stand-in; where the browser lands.
async fn github_flow(app: &TestApp) -> Url {
    let browser = browser();
    let at_github = authorize(app, &browser, GITHUB).await;
    assert_eq!(
        query_param(&at_github, "client_id").as_deref(),
        Some("gh-client")
    );
    assert_eq!(
        query_param(&at_github, "scope").as_deref(),
        Some("read:user user:email")
    );
    let response = browser.get(at_github).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    landed(&browser, &location(&response)).await
}

on_both_backends! {
    async fn github_signs_in_with_the_primary_verified_address(backend) {
        let github = GitHubStandIn::start("gh-client", "gh-secret").await;
        let with = With { github: Some(&github), ..With::default() };
        let app = spawn(backend, with, |_| {}).await;
        github.sign_in_as(octocat(vec![
            email("octo@old.test", false, true),
            email("octocat@github.test", true, true),
        ]));
        let landed = github_flow(&app).await;
        let code = query_param(&landed, "login_code").unwrap_or_else(|| panic!("{landed}"));
        let tokens = created(exchange(&app, &code).await).await;
        // The code was exchanged with the PKCE verifier.
        assert_eq!(github.token_requests(), 1);
        assert!(github.last_code_verifier().is_some_and(|v| v.len() >= 43));
        let user = current_user(&app, &tokens.access).await;
        assert_eq!(user["email"], "octocat@github.test");
        assert_eq!(user["email_verified"], true);
        assert_eq!(user["username"], "octocat");
        assert_eq!(user["avatar_url"], "https://avatars.githubusercontent.com/u/583231?v=4");
        let linked = identities(&app, &tokens.access).await;
        assert_eq!(linked[0]["provider"], GITHUB);
        assert_eq!(linked[0]["subject"], "583231");

        // A second sign-in is the same account, even after a rename at GitHub; the username
        // stays the account's.
        let mut renamed = octocat(vec![email("octocat@github.test", true, true)]);
        renamed.login = "octo-renamed".into();
        github.sign_in_as(renamed);
        let landed = github_flow(&app).await;
        let again = signed_in(exchange(&app, &query_param(&landed, "login_code").unwrap()).await).await;
        assert_eq!(
            app.current_user_id(&again.access).await,
            app.current_user_id(&tokens.access).await
        );
    }
}

#[tokio::test]
async fn github_without_a_verified_primary_address_makes_no_account() {
    let github = GitHubStandIn::start("gh-client", "gh-secret").await;
    let with = With {
        github: Some(&github),
        ..With::default()
    };
    let app = spawn(Backend::Embedded, with, |_| {}).await;
    github.sign_in_as(octocat(vec![
        email("unverified@github.test", true, false),
        email("secondary@github.test", false, true),
    ]));
    let landed = github_flow(&app).await;
    assert_eq!(
        query_param(&landed, "error").as_deref(),
        Some("email_required"),
        "{landed}"
    );
    assert_eq!(rows(&app, "users").await, 0);

    // A taken username gets another one, still derived from the login.
    app.register("someone@devtalk.test", "octocat").await;
    github.sign_in_as(octocat(vec![email("octocat@github.test", true, true)]));
    let landed = github_flow(&app).await;
    let tokens = created(exchange(&app, &query_param(&landed, "login_code").unwrap()).await).await;
    let username = current_user(&app, &tokens.access).await["username"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        username.starts_with("octocat-") && username != "octocat",
        "{username}"
    );

    // The user cancels at GitHub.
    github.sign_out();
    let landed = github_flow(&app).await;
    assert_eq!(
        query_param(&landed, "error").as_deref(),
        Some("access_denied")
    );
}

#[tokio::test]
async fn provider_sign_in_is_rate_limited_per_client() {
    let with = With {
        corp: true,
        ..With::default()
    };
    let app = spawn(Backend::MariaDbRedis, with, |s| {
        s.rate_limit_enabled = true;
        s.rate_limit_login_ip = "3/1/60".into();
    })
    .await;
    // Authorize, callback and exchange draw on one budget per client address.
    let browser = browser();
    authorize(&app, &browser, CORP).await;
    let response = callback(
        &browser,
        &Url::parse(&app.url("/api/v1/auth/oauth/corp/callback?state=x")).unwrap(),
    )
    .await;
    assert_problem(response, StatusCode::BAD_REQUEST, "invalid_state").await;
    assert_problem(
        exchange(&app, "dtl_nope").await,
        StatusCode::BAD_REQUEST,
        "invalid_token",
    )
    .await;
    let response = exchange(&app, "dtl_nope").await;
    assert!(response.headers().contains_key("retry-after"));
    assert_problem(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    let response = request_authorize(&app, &browser, CORP, WEB_APP).await;
    assert_problem(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
}

#[tokio::test]
async fn one_identity_linked_to_two_accounts_at_once_goes_to_one() {
    let hostile = HostileOidc::start("hostile-client", "hostile-secret").await;
    let with = With {
        hostile: Some(&hostile),
        ..With::default()
    };
    let app = spawn(Backend::MariaDbRedis, with, |_| {}).await;
    let mut accounts = Vec::new();
    for name in ["ann", "ben"] {
        app.register(&format!("{name}@devtalk.test"), name).await;
        accounts.push(app.sign_in(&format!("{name}@devtalk.test")).await);
    }
    for round in 0..8 {
        hostile.sign_in_as(
            &format!("shared-{round}"),
            json!({"email": "shared@hostile.test"}),
        );
        // Both owners are at the provider's callback, each in their own browser; then both
        // callbacks arrive together.
        let mut callbacks = Vec::new();
        for tokens in &accounts {
            let browser = browser();
            let at_provider = start_link(&app, &browser, &tokens.access, HOSTILE).await;
            let response = browser.get(at_provider).send().await.unwrap();
            callbacks.push((browser, location(&response)));
        }
        let handles: Vec<_> = callbacks
            .into_iter()
            .map(|(browser, url)| {
                tokio::spawn(async move { location(&browser.get(url).send().await.unwrap()) })
            })
            .collect();
        let mut outcomes = Vec::new();
        for handle in handles {
            let landed = handle.await.unwrap();
            outcomes.push(
                query_param(&landed, "linked")
                    .or_else(|| query_param(&landed, "error"))
                    .unwrap(),
            );
        }
        outcomes.sort();
        assert_eq!(outcomes, ["hostile", "identity_taken"], "round {round}");
    }
    let mut linked = 0;
    for tokens in &accounts {
        linked += identities(&app, &tokens.access).await.len();
    }
    assert_eq!(linked, 8);
}

#[tokio::test]
async fn a_link_outlived_by_its_session_is_not_made() {
    let hostile = HostileOidc::start("hostile-client", "hostile-secret").await;
    let with = With {
        hostile: Some(&hostile),
        ..With::default()
    };
    let app = spawn(Backend::Embedded, with, |_| {}).await;
    app.register("leaver@devtalk.test", "leaver").await;
    let tokens = app.sign_in("leaver@devtalk.test").await;
    hostile.sign_in_as("leaver-sub", json!({"email": "leaver@hostile.test"}));
    let browser = browser();
    let at_provider = start_link(&app, &browser, &tokens.access, HOSTILE).await;
    let response = browser.get(at_provider).send().await.unwrap();
    let callback_url = location(&response);
    // Signed out while at the provider: the link it started is not made.
    let response = post_auth(&app, "/api/v1/auth/logout", &tokens.access, &json!({})).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let landed = landed(&browser, &callback_url).await;
    assert_eq!(
        query_param(&landed, "error").as_deref(),
        Some("link_expired")
    );
    assert_eq!(rows(&app, "identities").await, 0);
}

on_both_backends! {
    async fn the_export_lists_identities_and_erasure_removes_them_and_flows(backend) {
        let hostile = HostileOidc::start("hostile-client", "hostile-secret").await;
        let with = With { hostile: Some(&hostile), ..With::default() };
        let app = spawn(backend, with, |_| {}).await;
        app.register("gone@devtalk.test", "gone").await;
        let tokens = app.sign_in("gone@devtalk.test").await;
        let user_id = app.current_user_id(&tokens.access).await;
        hostile.sign_in_as("gone-sub", json!({"email": "gone@hostile.test"}));
        let browser = browser();
        let at_provider = start_link(&app, &browser, &tokens.access, HOSTILE).await;
        let response = browser.get(at_provider).send().await.unwrap();
        landed(&browser, &location(&response)).await;
        // A second link left pending at the provider.
        start_link(&app, &browser, &tokens.access, HOSTILE).await;

        let export: Value = app
            .get_auth("/api/v1/users/current/export", &tokens.access)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(export["identities"][0]["provider"], HOSTILE, "{export}");
        assert_eq!(export["identities"][0]["subject"], "gone-sub");

        let response = delete_account(&app, &tokens.access, &json!({"password": crate::helpers::PASSWORD})).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        app.clock.advance_secs(31 * 86_400);
        assert_eq!(app.app.purge_due_accounts(app.app.now(), 100).await.unwrap(), 1);
        let mut conn = app.db().await;
        for table in ["identities", "oauth_flows"] {
            let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT COUNT(*) FROM {table} WHERE user_id = ?"
            )))
            .bind(user_id.clone())
            .fetch_one(&mut conn)
            .await
            .unwrap();
            assert_eq!(n, 0, "{table}");
        }
    }
}

#[tokio::test]
async fn a_provider_that_goes_down_before_the_callback_sends_the_browser_back_with_an_error() {
    let hostile = HostileOidc::start("hostile-client", "hostile-secret").await;
    let with = With {
        hostile: Some(&hostile),
        ..With::default()
    };
    let app = spawn(Backend::Embedded, with, |_| {}).await;
    hostile.sign_in_as("late", json!({"email": "late@hostile.test"}));
    let browser = browser();
    let at_provider = authorize(&app, &browser, HOSTILE).await;
    let response = browser.get(at_provider).send().await.unwrap();
    let callback_url = location(&response);
    // The code cannot be exchanged: the provider is gone.
    drop(hostile);
    let landed = landed(&browser, &callback_url).await;
    assert_eq!(
        query_param(&landed, "error").as_deref(),
        Some("provider_unavailable")
    );
    assert_eq!(rows(&app, "users").await, 0);
}
