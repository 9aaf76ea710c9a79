//! A real OpenID Connect provider for the tests: panva's certified `oidc-provider` on Node.js
//! (`tests/oidc-provider/server.mjs`, installed by `scripts/setup-test-env`), with dynamic
//! client registration, its development login and consent pages, and accounts whose claims the
//! tests set; and a browser that signs in on those pages over HTTP.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::LOCATION;
use serde_json::{Value, json};
use tokio::sync::OnceCell;
use url::Url;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc-provider");

/// The password typed on the provider's login page: it takes any.
const PASSWORD: &str = "any password";

/// One provider process for the test binary, started on first use. It keeps the standard input
/// of the process open; the process exits when that closes, that is when the test binary exits,
/// however it ends (a static is never dropped, so killing on drop would not do).
#[derive(Debug)]
pub struct OidcProvider {
    /// `http://127.0.0.1:PORT`, as the provider's discovery document and ID tokens name it.
    pub issuer: String,
    client: reqwest::Client,
    /// Holds the pipe to the process's standard input open for the life of the test binary.
    _process: Child,
}

static SHARED: OnceCell<OidcProvider> = OnceCell::const_new();

impl OidcProvider {
    /// The provider of this test binary, started on the first call.
    pub async fn shared() -> &'static Self {
        SHARED.get_or_init(Self::start).await
    }

    async fn start() -> Self {
        assert!(
            Path::new(DIR).join("node_modules/oidc-provider").is_dir(),
            "the test OpenID provider is not installed in {DIR}: run scripts/setup-test-env"
        );
        let starting = tokio::task::spawn_blocking(|| {
            let mut process = Command::new("node")
                .arg("server.mjs")
                .current_dir(DIR)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                // Quiet unless the provider itself fails.
                .stderr(Stdio::inherit())
                .spawn()
                .expect(
                    "node (Node.js) to run the test OpenID provider: run scripts/setup-test-env",
                );
            // `READY <issuer>` once it serves; nothing else is expected there.
            let mut stdout = BufReader::new(process.stdout.take().unwrap());
            let mut issuer = None;
            let mut line = String::new();
            while issuer.is_none() && stdout.read_line(&mut line).unwrap() > 0 {
                match line.trim().strip_prefix("READY ") {
                    Some(ready) => issuer = Some(ready.to_owned()),
                    None => eprint!("oidc-provider: {line}"),
                }
                line.clear();
            }
            // Read on so that a write of the provider's never blocks.
            std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
            (process, issuer)
        });
        let (process, issuer) = tokio::time::timeout(Duration::from_secs(30), starting)
            .await
            .expect("the test OpenID provider did not start within 30 s")
            .unwrap();
        let issuer =
            issuer.expect("the test OpenID provider exited before serving (see its output)");
        Self {
            issuer,
            // Without idle connections: each request is made on the runtime of the test that
            // makes it (`cargo test` runs each test on a runtime of its own).
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
            _process: process,
        }
    }

    /// The provider's discovery document (`/.well-known/openid-configuration`).
    pub async fn discovery(&self) -> Value {
        let response = self
            .client
            .get(format!("{}/.well-known/openid-configuration", self.issuer))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    /// Registers a confidential client (authenticating with `client_secret_basic`) that may
    /// use the authorization code flow back to `redirect_uri`; its `(client_id, client_secret)`.
    pub async fn register_client(&self, redirect_uri: &str) -> (String, String) {
        let response = self
            .client
            .post(format!("{}/reg", self.issuer))
            .json(&json!({
                "redirect_uris": [redirect_uri],
                "response_types": ["code"],
                "grant_types": ["authorization_code"],
                "token_endpoint_auth_method": "client_secret_basic",
            }))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let client: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "registration: {client}");
        (
            client["client_id"].as_str().unwrap().to_owned(),
            client["client_secret"].as_str().unwrap().to_owned(),
        )
    }

    /// Sets the claims of the account `id` (the login typed on the provider's login page), e.g.
    /// `{"email": …, "email_verified": true, "name": …, "preferred_username": …}`. An account
    /// whose claims were never set has only `sub`; `sub` is always `id`.
    pub async fn set_account(&self, id: &str, claims: Value) {
        let mut url = Url::parse(&self.issuer).unwrap();
        url.path_segments_mut()
            .unwrap()
            .extend(["test", "accounts", id]);
        let response = self.client.put(url).json(&claims).send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::NO_CONTENT,
            "set_account({id})"
        );
    }
}

/// A browser: a cookie store, and redirects left to the caller (see [`sign_in_at_provider`]).
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs `login` in at the provider as a person in `browser` would: from a GET of
/// `authorize_url` (at the provider), follows the provider's redirects and submits its login
/// form (with `login` and any password) and its consent form, until the provider redirects to
/// a URL that is not at the provider. Returns that URL, the callback at the relying party,
/// without requesting it. A later sign-in in the same browser finds the provider's session and
/// skips the login form, and the consent form too when the client was granted the scopes.
///
/// `browser` must keep cookies and not follow redirects itself (see [`browser`]).
pub async fn sign_in_at_provider(
    browser: &reqwest::Client,
    authorize_url: &str,
    login: &str,
) -> Url {
    let mut url = Url::parse(authorize_url).unwrap();
    let provider = url.origin();
    let mut response = browser.get(url.clone()).send().await.unwrap();
    for _ in 0..20 {
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(LOCATION)
                .unwrap_or_else(|| panic!("a {status} without a Location from {url}"))
                .to_str()
                .unwrap();
            let next = url.join(location).unwrap();
            if next.origin() != provider {
                return next;
            }
            url = next;
            response = browser.get(url.clone()).send().await.unwrap();
            continue;
        }
        let page = response.text().await.unwrap();
        assert_eq!(status, StatusCode::OK, "at {url}: {page}");
        let form = Form::first_in(&page).unwrap_or_else(|| panic!("no form at {url}: {page}"));
        let fields: Vec<(String, String)> = form
            .inputs
            .into_iter()
            .filter_map(|input| {
                let value = match (input.name.as_str(), input.kind.as_str()) {
                    ("login", _) => login.to_owned(),
                    (_, "password") => PASSWORD.to_owned(),
                    (_, "submit" | "button" | "checkbox" | "radio") => return None,
                    _ => input.value,
                };
                Some((input.name, value))
            })
            .collect();
        url = url.join(&form.action).unwrap();
        response = browser
            .post(url.clone())
            .form(&fields)
            .send()
            .await
            .unwrap();
    }
    panic!("the provider did not send the browser back to the relying party; last at {url}");
}

/// An HTML form as the provider's pages write it: its action and its named inputs.
#[derive(Debug)]
struct Form {
    action: String,
    inputs: Vec<Input>,
}

#[derive(Debug)]
struct Input {
    name: String,
    /// The `type` attribute, lowercased; `text` when absent.
    kind: String,
    value: String,
}

impl Form {
    /// The first `<form>` of `page`.
    fn first_in(page: &str) -> Option<Self> {
        let lower = page.to_ascii_lowercase();
        let start = lower.find("<form")?;
        let end = lower[start..]
            .find("</form")
            .map_or(page.len(), |end| start + end);
        let (form_tag, _) = tag_at(page, start)?;
        let action = attribute(form_tag, "action").unwrap_or_default();
        let mut inputs = Vec::new();
        let mut at = start;
        while let Some(found) = lower[at..end].find("<input") {
            let (tag, after) = tag_at(page, at + found)?;
            at = after;
            if let Some(name) = attribute(tag, "name") {
                inputs.push(Input {
                    name,
                    kind: attribute(tag, "type")
                        .unwrap_or_else(|| "text".into())
                        .to_ascii_lowercase(),
                    value: attribute(tag, "value").unwrap_or_default(),
                });
            }
        }
        Some(Self { action, inputs })
    }
}

/// The tag that opens at byte `start` of `page` (up to its `>`, quotes respected), and the
/// offset just after it.
fn tag_at(page: &str, start: usize) -> Option<(&str, usize)> {
    let mut quote = None;
    for (offset, c) in page[start..].char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '>') => return Some((&page[start..start + offset], start + offset + 1)),
            _ => {}
        }
    }
    None
}

/// The value of the attribute `name` in `tag` (`<input type="hidden" name=x value='y'`),
/// unescaped; `Some("")` for an attribute without a value.
fn attribute(tag: &str, name: &str) -> Option<String> {
    // Skip the element's name.
    let mut rest = tag.trim_start_matches('<');
    rest = rest.trim_start_matches(|c: char| !c.is_whitespace() && c != '/');
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '/');
        if rest.is_empty() {
            return None;
        }
        let name_end = rest
            .find(|c: char| c.is_whitespace() || c == '=' || c == '/')
            .unwrap_or(rest.len());
        let attr = &rest[..name_end];
        rest = rest[name_end..].trim_start();
        let mut value = "";
        if let Some(after) = rest.strip_prefix('=') {
            let after = after.trim_start();
            let (found, remaining) = match after.chars().next() {
                Some(q @ ('"' | '\'')) => {
                    let inner = &after[1..];
                    let close = inner.find(q).unwrap_or(inner.len());
                    (&inner[..close], inner.get(close + 1..).unwrap_or(""))
                }
                _ => {
                    let close = after
                        .find(|c: char| c.is_whitespace())
                        .unwrap_or(after.len());
                    (&after[..close], &after[close..])
                }
            };
            value = found;
            rest = remaining;
        }
        if attr.eq_ignore_ascii_case(name) {
            return Some(unescape(value));
        }
    }
}

/// Undoes HTML escaping: the named entities a template escapes with, and numeric ones.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let decoded = rest.find(';').and_then(|semi| {
            let entity = &rest[1..semi];
            let c = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => entity
                    .strip_prefix("#x")
                    .or_else(|| entity.strip_prefix("#X"))
                    .map(|hex| u32::from_str_radix(hex, 16))
                    .or_else(|| entity.strip_prefix('#').map(str::parse))
                    .and_then(Result::ok)
                    .and_then(char::from_u32),
            };
            c.map(|c| (c, semi + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Part `index` of a JWT (0: its header, 1: its payload), decoded; the signature is not checked.
fn jwt_part(jwt: &str, index: usize) -> Value {
    use base64::Engine as _;
    let part = jwt.split('.').nth(index).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// 32 random bytes, base64url: a state, a nonce or a PKCE verifier.
fn random_token() -> String {
    use base64::Engine as _;
    let mut bytes = [0_u8; 32];
    rand::fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[test]
fn forms_are_read_from_the_providers_pages() {
    let page = r#"<html><body><form autocomplete="off" action="http://127.0.0.1:1/interaction/a?x=1&amp;y=2" method="post">
  <input type="hidden" name="prompt" value="login"/>
  <input required type="text" name="login" placeholder="Enter any login"  value="a&#39;b&quot;c" >
  <input required type=password name='password' placeholder="and password > that">
  <button type="submit" class="login login-submit">Sign-in</button>
</form><form action="/other"><input name="other"></form></body></html>"#;
    let form = Form::first_in(page).unwrap();
    assert_eq!(form.action, "http://127.0.0.1:1/interaction/a?x=1&y=2");
    let inputs: Vec<(&str, &str, &str)> = form
        .inputs
        .iter()
        .map(|i| (i.name.as_str(), i.kind.as_str(), i.value.as_str()))
        .collect();
    assert_eq!(
        inputs,
        [
            ("prompt", "hidden", "login"),
            ("login", "text", "a'b\"c"),
            ("password", "password", ""),
        ]
    );
}

#[tokio::test]
async fn the_test_provider_signs_in_over_http() {
    let provider = OidcProvider::shared().await;
    let redirect_uri = "http://127.0.0.1:9/callback";
    let client = provider.register_client(redirect_uri).await;
    let account = format!("ada-{}", uuid::Uuid::new_v4().simple());
    let claims = json!({
        "email": "ada@example.test",
        "email_verified": true,
        "name": "Ada Lovelace",
        "preferred_username": "ada",
    });
    provider.set_account(&account, claims.clone()).await;
    let discovery = provider.discovery().await;
    assert_eq!(discovery["issuer"], provider.issuer.as_str());
    let browser = browser();

    // The login and consent pages.
    sign_in_and_check(
        &discovery,
        &browser,
        &client,
        redirect_uri,
        &account,
        &claims,
    )
    .await;
    // The provider's session and the grant given skip both.
    sign_in_and_check(
        &discovery,
        &browser,
        &client,
        redirect_uri,
        &account,
        &claims,
    )
    .await;
    // Another client: the session skips the login page, not the consent page.
    let other_client = provider.register_client(redirect_uri).await;
    sign_in_and_check(
        &discovery,
        &browser,
        &other_client,
        redirect_uri,
        &account,
        &claims,
    )
    .await;
}

/// Signs `account` in with `client` as a relying party would (state, nonce, PKCE S256), redeems
/// the code, and checks the ID token and the userinfo endpoint carry `claims`.
async fn sign_in_and_check(
    discovery: &Value,
    browser: &reqwest::Client,
    (client_id, client_secret): &(String, String),
    redirect_uri: &str,
    account: &str,
    claims: &Value,
) {
    use base64::Engine as _;
    use sha2::{Digest, Sha256};

    let state = random_token();
    let nonce = random_token();
    let verifier = random_token();
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(verifier.as_bytes()));
    let mut authorize = Url::parse(discovery["authorization_endpoint"].as_str().unwrap()).unwrap();
    authorize
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", "openid email profile")
        .append_pair("state", &state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");

    let callback = sign_in_at_provider(browser, authorize.as_str(), account).await;

    assert_eq!(
        callback.as_str().split('?').next(),
        Some(redirect_uri),
        "{callback}"
    );
    let query = |name: &str| {
        callback
            .query_pairs()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    };
    assert_eq!(query("error"), None, "{callback}");
    assert_eq!(query("state").as_deref(), Some(state.as_str()));
    let code = query("code").unwrap_or_else(|| panic!("no code in {callback}"));

    let response = reqwest::Client::new()
        .post(discovery["token_endpoint"].as_str().unwrap())
        .basic_auth(client_id, Some(client_secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", &verifier),
        ])
        .send()
        .await
        .unwrap();
    let status = response.status();
    let tokens: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let id_token = tokens["id_token"].as_str().unwrap();
    assert_eq!(jwt_part(id_token, 0)["alg"], "RS256");
    let payload = jwt_part(id_token, 1);
    assert_eq!(payload["iss"], discovery["issuer"], "{payload}");
    assert_eq!(payload["nonce"], nonce.as_str(), "{payload}");
    assert_eq!(payload["aud"], client_id.as_str(), "{payload}");
    assert_eq!(payload["sub"], account, "{payload}");
    for (claim, value) in claims.as_object().unwrap() {
        assert_eq!(&payload[claim], value, "{claim} in {payload}");
    }

    // The same claims at the userinfo endpoint.
    let userinfo: Value = reqwest::Client::new()
        .get(discovery["userinfo_endpoint"].as_str().unwrap())
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(userinfo["sub"], account, "{userinfo}");
    for (claim, value) in claims.as_object().unwrap() {
        assert_eq!(&userinfo[claim], value, "{claim} in {userinfo}");
    }
}
