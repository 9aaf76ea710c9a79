//! Two local stand-ins for the identity providers of the OAuth sign-in tests, each an HTTP
//! server on `127.0.0.1:0` that stops when its handle drops:
//!
//! - [`GitHubStandIn`]: GitHub's OAuth web flow and the REST endpoints `GET /user` and
//!   `GET /user/emails`, as GitHub documents them, with the web base at the root and the API
//!   base under `/api/v3` (the way GitHub Enterprise Server lays them out).
//! - [`HostileOidc`]: a minimal OpenID Connect provider whose ID tokens can be made wrong on
//!   purpose ([`Fault`]), to prove a relying party refuses them.
//!
//! The tests at the bottom drive both directly over HTTP.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// How long an authorization code stays valid (GitHub documents ten minutes).
const CODE_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// The documentation page GitHub's token-endpoint errors point at.
const GITHUB_TOKEN_ERRORS: &str = "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/";

/// The documentation page GitHub's authorization errors point at.
const GITHUB_AUTHORIZE_ERRORS: &str = "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-authorization-request-errors/";

// ---------------------------------------------------------------------------------------------
// Shared plumbing

/// A server on a spawned task; dropping it shuts the server down.
struct Running {
    addr: SocketAddr,
    _shutdown: oneshot::Sender<()>,
}

impl Running {
    async fn start(router: Router) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    // A dropped sender ends the wait too.
                    let _ = rx.await;
                })
                .await;
        });
        Self {
            addr,
            _shutdown: tx,
        }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// `n` random bytes.
fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0_u8; n];
    rand::fill(bytes.as_mut_slice());
    bytes
}

/// `len` random characters of `[0-9A-Za-z]`.
fn random_alphanumeric(len: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    random_bytes(len)
        .into_iter()
        .map(|b| char::from(ALPHABET[usize::from(b) % ALPHABET.len()]))
        .collect()
}

/// The PKCE S256 challenge of `verifier`: base64url(SHA-256(verifier)), no padding.
pub fn pkce_s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// The parameters of a query string or a form body (the last of a repeated name wins).
fn parse_params(raw: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(raw).into_owned().collect()
}

/// The parameters of a token request: the query string, then the body (form-encoded, or a
/// JSON object of strings), the body winning.
fn request_params(
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> HashMap<String, String> {
    let mut params = query
        .map(|q| parse_params(q.as_bytes()))
        .unwrap_or_default();
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if is_json {
        if let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(body) {
            for (name, value) in object {
                if let Value::String(value) = value {
                    params.insert(name, value);
                }
            }
        }
    } else {
        params.extend(parse_params(body));
    }
    params
}

/// The client id and secret of an `Authorization: Basic` header, if there is one. RFC 6749
/// §2.3.1 has both form-encoded before base64; both the decoded and the raw values are
/// returned, for clients that do not encode.
fn basic_credentials(headers: &HeaderMap) -> Option<[(String, String); 2]> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let form_decode = |s: &str| -> String {
        url::form_urlencoded::parse(format!("v={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some([
        (form_decode(id), form_decode(secret)),
        (id.to_owned(), secret.to_owned()),
    ])
}

/// The token of an `Authorization: <scheme> <token>` header whose scheme is one of `schemes`
/// (case-insensitive).
fn authorization_token(headers: &HeaderMap, schemes: &[&str]) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    schemes
        .iter()
        .any(|s| s.eq_ignore_ascii_case(scheme))
        .then(|| token.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// `base` with `params` appended to its query (kept if it already has one).
fn with_query(base: &str, params: &[(&str, &str)]) -> String {
    match url::Url::parse(base) {
        Ok(mut url) => {
            url.query_pairs_mut().extend_pairs(params);
            url.to_string()
        }
        Err(_) => {
            let query = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(params)
                .finish();
            let separator = if base.contains('?') { '&' } else { '?' };
            format!("{base}{separator}{query}")
        }
    }
}

/// A `302 Found` to `location`.
fn found(location: &str) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, location.to_owned())]).into_response()
}

/// Whether a PKCE exchange is right: no challenge and no verifier, or a verifier hashing
/// (S256) to the challenge. A verifier without a challenge is refused too (OAuth 2.1).
fn pkce_ok(challenge: Option<&str>, verifier: Option<&str>) -> bool {
    match (challenge, verifier) {
        (None, None) => true,
        (Some(challenge), Some(verifier)) => pkce_s256(verifier) == challenge,
        _ => false,
    }
}

/// The non-empty value of `name` in `params`.
fn param<'a>(params: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    params
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

// ---------------------------------------------------------------------------------------------
// GitHub

/// A GitHub account, as the stand-in serves it on `GET /user` and `GET /user/emails`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GitHubUser {
    pub id: u64,
    pub login: String,
    pub name: Option<String>,
    /// Served as is; `None` is served as `null` (GitHub itself always has one).
    pub avatar_url: Option<String>,
    pub emails: Vec<GitHubEmail>,
}

/// One address of a [`GitHubUser`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GitHubEmail {
    pub email: String,
    pub primary: bool,
    pub verified: bool,
}

/// A code handed out by the authorize page, waiting to be exchanged.
struct GitHubGrant {
    user: GitHubUser,
    redirect_uri: Option<String>,
    code_challenge: Option<String>,
    scopes: Vec<String>,
    expires: Instant,
}

/// What an issued access token grants.
struct GitHubToken {
    user: GitHubUser,
    scopes: Vec<String>,
}

struct GitHubState {
    client_id: String,
    client_secret: String,
    api_url: String,
    signed_in: Option<GitHubUser>,
    codes: HashMap<String, GitHubGrant>,
    tokens: HashMap<String, GitHubToken>,
    token_requests: usize,
    last_code_verifier: Option<String>,
}

type GitHubShared = Arc<Mutex<GitHubState>>;

/// GitHub's OAuth web flow (`/login/oauth/authorize`, `/login/oauth/access_token`) and REST
/// API (`/api/v3/user`, `/api/v3/user/emails`) on one local server, stopped when dropped.
pub struct GitHubStandIn {
    server: Running,
    state: GitHubShared,
}

impl fmt::Debug for GitHubStandIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitHubStandIn")
            .field("web_url", &self.web_url())
            .finish_non_exhaustive()
    }
}

impl GitHubStandIn {
    /// Starts a stand-in that knows one OAuth app, `client_id` with `client_secret`. No one
    /// is signed in until [`Self::sign_in_as`].
    pub async fn start(client_id: &str, client_secret: &str) -> Self {
        let state: GitHubShared = Arc::new(Mutex::new(GitHubState {
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            api_url: String::new(),
            signed_in: None,
            codes: HashMap::new(),
            tokens: HashMap::new(),
            token_requests: 0,
            last_code_verifier: None,
        }));
        let router = Router::new()
            .route("/login/oauth/authorize", get(github_authorize))
            .route("/login/oauth/access_token", post(github_access_token))
            .route("/api/v3/user", get(github_user))
            .route("/api/v3/user/emails", get(github_user_emails))
            .with_state(state.clone());
        let server = Running::start(router).await;
        state.lock().unwrap().api_url = format!("{}/api/v3", server.base());
        Self { server, state }
    }

    /// The web base, `http://127.0.0.1:P` (authorize and access-token URLs are under it).
    pub fn web_url(&self) -> String {
        self.server.base()
    }

    /// The REST API base, `http://127.0.0.1:P/api/v3`.
    pub fn api_url(&self) -> String {
        format!("{}/api/v3", self.server.base())
    }

    /// The user who is "signed in at GitHub" in the browser and approves the app; the
    /// authorize page redirects at once as them.
    pub fn sign_in_as(&self, user: GitHubUser) {
        self.state.lock().unwrap().signed_in = Some(user);
    }

    /// Signs the browser out of GitHub: the authorize page then answers as if the user had
    /// cancelled (`error=access_denied`).
    pub fn sign_out(&self) {
        self.state.lock().unwrap().signed_in = None;
    }

    /// How many token requests were made (see [`Self::last_code_verifier`] for the last
    /// code_verifier seen, for asserting PKCE).
    pub fn token_requests(&self) -> usize {
        self.state.lock().unwrap().token_requests
    }

    /// The `code_verifier` of the last token request that sent one.
    pub fn last_code_verifier(&self) -> Option<String> {
        self.state.lock().unwrap().last_code_verifier.clone()
    }
}

/// `GET /login/oauth/authorize`.
async fn github_authorize(
    State(state): State<GitHubShared>,
    RawQuery(query): RawQuery,
) -> Response {
    let params = parse_params(query.unwrap_or_default().as_bytes());
    let mut state = state.lock().unwrap();
    if param(&params, "client_id") != Some(state.client_id.as_str()) {
        return (StatusCode::NOT_FOUND, "Not Found").into_response();
    }
    // GitHub falls back to the app's registered callback URL; the stand-in has none.
    let Some(redirect_uri) = param(&params, "redirect_uri") else {
        return (
            StatusCode::BAD_REQUEST,
            "this stand-in has no registered callback URL: send redirect_uri",
        )
            .into_response();
    };
    let code_challenge = param(&params, "code_challenge").map(str::to_owned);
    // GitHub supports S256 only ("the plain mode is not supported").
    if code_challenge.is_some() && param(&params, "code_challenge_method") != Some("S256") {
        return (
            StatusCode::BAD_REQUEST,
            "code_challenge_method must be S256",
        )
            .into_response();
    }
    let state_param = params.get("state").cloned();
    let mut reply: Vec<(&str, &str)> = Vec::new();
    let Some(user) = state.signed_in.clone() else {
        let error_uri = format!("{GITHUB_AUTHORIZE_ERRORS}#access-denied");
        reply.extend([
            ("error", "access_denied"),
            (
                "error_description",
                "The user has denied your application access.",
            ),
            ("error_uri", error_uri.as_str()),
        ]);
        if let Some(s) = state_param.as_deref() {
            reply.push(("state", s));
        }
        return found(&with_query(redirect_uri, &reply));
    };
    let scopes: Vec<String> = params
        .get("scope")
        .map(|s| {
            s.split([' ', ','])
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let code = hex(&random_bytes(10));
    state.codes.insert(
        code.clone(),
        GitHubGrant {
            user,
            redirect_uri: Some(redirect_uri.to_owned()),
            code_challenge,
            scopes,
            expires: Instant::now() + CODE_LIFETIME,
        },
    );
    reply.push(("code", code.as_str()));
    if let Some(s) = state_param.as_deref() {
        reply.push(("state", s));
    }
    found(&with_query(redirect_uri, &reply))
}

/// Lower-case hex of `bytes` (GitHub's codes are 20 hex characters).
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An answer of the access-token endpoint, JSON or form-encoded as the request's `Accept`
/// asks; always status 200, errors included (as GitHub does).
fn github_token_reply(wants_json: bool, fields: &[(&str, &str)]) -> Response {
    if wants_json {
        let body: Map<String, Value> = fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
            .collect();
        (StatusCode::OK, axum::Json(Value::Object(body))).into_response()
    } else {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/x-www-form-urlencoded; charset=utf-8",
            )],
            body,
        )
            .into_response()
    }
}

/// A token-endpoint error the way GitHub words it.
fn github_token_error(wants_json: bool, error: &str) -> Response {
    let (description, anchor) = match error {
        "incorrect_client_credentials" => (
            "The client_id and/or client_secret passed are incorrect.",
            format!("{GITHUB_TOKEN_ERRORS}#incorrect-client-credentials"),
        ),
        "redirect_uri_mismatch" => (
            "The redirect_uri MUST match the registered callback URL for this application.",
            format!("{GITHUB_AUTHORIZE_ERRORS}#redirect-uri-mismatch2"),
        ),
        _ => (
            "The code passed is incorrect or expired.",
            format!("{GITHUB_TOKEN_ERRORS}#bad-verification-code"),
        ),
    };
    github_token_reply(
        wants_json,
        &[
            ("error", error),
            ("error_description", description),
            ("error_uri", anchor.as_str()),
        ],
    )
}

/// `POST /login/oauth/access_token`.
async fn github_access_token(
    State(state): State<GitHubShared>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let wants_json = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/json"));
    let params = request_params(query.as_deref(), &headers, &body);
    let mut state = state.lock().unwrap();
    state.token_requests += 1;
    if let Some(verifier) = param(&params, "code_verifier") {
        state.last_code_verifier = Some(verifier.to_owned());
    }

    let is_ours = |id: &str, secret: &str| id == state.client_id && secret == state.client_secret;
    let client_ok = match basic_credentials(&headers) {
        Some(pairs) => pairs.iter().any(|(id, secret)| is_ours(id, secret)),
        None => match (param(&params, "client_id"), param(&params, "client_secret")) {
            (Some(id), Some(secret)) => is_ours(id, secret),
            _ => false,
        },
    };
    if !client_ok {
        return github_token_error(wants_json, "incorrect_client_credentials");
    }

    // Single use: whatever comes of this request, the code is spent.
    let Some(grant) = param(&params, "code").and_then(|code| state.codes.remove(code)) else {
        return github_token_error(wants_json, "bad_verification_code");
    };
    if Instant::now() >= grant.expires {
        return github_token_error(wants_json, "bad_verification_code");
    }
    if let Some(redirect_uri) = param(&params, "redirect_uri")
        && grant.redirect_uri.as_deref() != Some(redirect_uri)
    {
        return github_token_error(wants_json, "redirect_uri_mismatch");
    }
    if !pkce_ok(
        grant.code_challenge.as_deref(),
        param(&params, "code_verifier"),
    ) {
        return github_token_error(wants_json, "bad_verification_code");
    }

    let access_token = format!("gho_{}", random_alphanumeric(36));
    let scope = grant.scopes.join(",");
    state.tokens.insert(
        access_token.clone(),
        GitHubToken {
            user: grant.user,
            scopes: grant.scopes,
        },
    );
    github_token_reply(
        wants_json,
        &[
            ("access_token", access_token.as_str()),
            ("scope", scope.as_str()),
            ("token_type", "bearer"),
        ],
    )
}

/// A JSON answer of the REST API, with the headers GitHub adds.
fn github_api_json(status: StatusCode, body: &Value, scopes: Option<&[String]>) -> Response {
    let mut response = (
        status,
        [
            (header::CONTENT_TYPE, "application/json; charset=utf-8"),
            (
                header::HeaderName::from_static("x-github-media-type"),
                "github.v3; format=json",
            ),
        ],
        body.to_string(),
    )
        .into_response();
    if let Some(scopes) = scopes
        && let Ok(value) = HeaderValue::from_str(&scopes.join(", "))
    {
        response.headers_mut().insert("x-oauth-scopes", value);
    }
    response
}

/// The token of an API request, or the answer refusing it: 403 without a `User-Agent`
/// (GitHub refuses those before anything else), 401 without a valid token.
fn github_api_caller(
    state: &GitHubState,
    headers: &HeaderMap,
    documentation_url: &str,
) -> Result<(GitHubUser, Vec<String>), Box<Response>> {
    let has_user_agent = headers
        .get(header::USER_AGENT)
        .is_some_and(|v| !v.as_bytes().is_empty());
    if !has_user_agent {
        return Err((
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "Request forbidden by administrative rules. Please make sure your request has a \
             User-Agent header (https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required). \
             Check https://developer.github.com for other possible causes.\n",
        )
            .into_response()
            .into());
    }
    if headers.get(header::AUTHORIZATION).is_none() {
        return Err(github_api_json(
            StatusCode::UNAUTHORIZED,
            &json!({
                "message": "Requires authentication",
                "documentation_url": documentation_url,
                "status": "401",
            }),
            None,
        )
        .into());
    }
    let token = authorization_token(headers, &["bearer", "token"]);
    match token.and_then(|t| state.tokens.get(&t)) {
        Some(granted) => Ok((granted.user.clone(), granted.scopes.clone())),
        None => Err(github_api_json(
            StatusCode::UNAUTHORIZED,
            &json!({
                "message": "Bad credentials",
                "documentation_url": "https://docs.github.com/rest",
                "status": "401",
            }),
            None,
        )
        .into()),
    }
}

/// `GET /api/v3/user`: the authenticated user, in the documented shape (a private user's
/// fields included). `email` is the public email: none is public here, so it is null.
async fn github_user(State(state): State<GitHubShared>, headers: HeaderMap) -> Response {
    let state = state.lock().unwrap();
    let (user, scopes) = match github_api_caller(
        &state,
        &headers,
        "https://docs.github.com/rest/users/users#get-the-authenticated-user",
    ) {
        Ok(caller) => caller,
        Err(response) => return *response,
    };
    let api = &state.api_url;
    let web = api.trim_end_matches("/api/v3");
    let login = &user.login;
    // Two halves: one `json!` of all of it is past the macro recursion limit.
    let mut body = json!({
        "login": login,
        "id": user.id,
        "node_id": STANDARD.encode(format!("04:User{}", user.id)),
        "avatar_url": user.avatar_url,
        "gravatar_id": "",
        "url": format!("{api}/users/{login}"),
        "html_url": format!("{web}/{login}"),
        "followers_url": format!("{api}/users/{login}/followers"),
        "following_url": format!("{api}/users/{login}/following{{/other_user}}"),
        "gists_url": format!("{api}/users/{login}/gists{{/gist_id}}"),
        "starred_url": format!("{api}/users/{login}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{api}/users/{login}/subscriptions"),
        "organizations_url": format!("{api}/users/{login}/orgs"),
        "repos_url": format!("{api}/users/{login}/repos"),
        "events_url": format!("{api}/users/{login}/events{{/privacy}}"),
        "received_events_url": format!("{api}/users/{login}/received_events"),
        "type": "User",
    });
    let profile = json!({
        "user_view_type": "private",
        "site_admin": false,
        "name": user.name,
        "company": null,
        "blog": "",
        "location": null,
        "email": null,
        "hireable": null,
        "bio": null,
        "twitter_username": null,
        "notification_email": null,
        "public_repos": 0,
        "public_gists": 0,
        "followers": 0,
        "following": 0,
        "created_at": "2011-01-25T18:44:36Z",
        "updated_at": "2011-01-25T18:44:36Z",
        "private_gists": 0,
        "total_private_repos": 0,
        "owned_private_repos": 0,
        "disk_usage": 0,
        "collaborators": 0,
        "two_factor_authentication": false,
        "plan": {"name": "free", "space": 976_562_499, "collaborators": 0, "private_repos": 10_000},
    });
    if let (Value::Object(body), Value::Object(profile)) = (&mut body, profile) {
        body.extend(profile);
    }
    github_api_json(StatusCode::OK, &body, Some(&scopes))
}

/// `GET /api/v3/user/emails`: needs the `user:email` (or `user`) scope; without it GitHub
/// answers 404.
async fn github_user_emails(State(state): State<GitHubShared>, headers: HeaderMap) -> Response {
    let state = state.lock().unwrap();
    let documentation_url =
        "https://docs.github.com/rest/users/emails#list-email-addresses-for-the-authenticated-user";
    let (user, scopes) = match github_api_caller(&state, &headers, documentation_url) {
        Ok(caller) => caller,
        Err(response) => return *response,
    };
    if !scopes.iter().any(|s| s == "user:email" || s == "user") {
        return github_api_json(
            StatusCode::NOT_FOUND,
            &json!({
                "message": "Not Found",
                "documentation_url": documentation_url,
                "status": "404",
            }),
            Some(&scopes),
        );
    }
    let emails: Vec<Value> = user
        .emails
        .iter()
        .map(|e| {
            json!({
                "email": e.email,
                "primary": e.primary,
                "verified": e.verified,
                // Only the primary address has a visibility; no address is public here.
                "visibility": if e.primary { json!("private") } else { Value::Null },
            })
        })
        .collect();
    github_api_json(StatusCode::OK, &Value::Array(emails), Some(&scopes))
}

// ---------------------------------------------------------------------------------------------
// A hostile OpenID Connect provider

/// How [`HostileOidc`] spoils the ID tokens it issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A correct ID token.
    None,
    /// A `nonce` other than the one sent at authorize.
    WrongNonce,
    /// `aud` is `someone-else`.
    WrongAudience,
    /// `exp` and `iat` an hour in the past.
    Expired,
    /// Signed by a key that is not in the JWKS, under the `kid` of the one that is.
    ForeignKey,
    /// `iss` is `http://evil.example`.
    WrongIssuer,
    /// `at_hash` of another value than the access token.
    BadAtHash,
    /// No `nonce` claim at all.
    NoNonce,
    /// Not a fault: a correct ID token without the profile claims, which only `/userinfo`
    /// answers (as many providers do).
    ClaimsInUserinfoOnly,
}

/// A code handed out by `/authorize`, waiting to be exchanged.
struct OidcGrant {
    subject: String,
    claims: Value,
    nonce: Option<String>,
    redirect_uri: String,
    code_challenge: Option<String>,
    expires: Instant,
}

struct OidcState {
    client_id: String,
    client_secret: String,
    issuer: String,
    kid: String,
    key: EncodingKey,
    foreign_key: EncodingKey,
    jwk: Value,
    fault: Fault,
    identity: Option<(String, Value)>,
    codes: HashMap<String, OidcGrant>,
    /// Access token → subject and claims, for `/userinfo`.
    tokens: HashMap<String, (String, Value)>,
}

type OidcShared = Arc<Mutex<OidcState>>;

/// A minimal OpenID Connect provider (discovery, JWKS, authorize, token, userinfo) signing
/// ES256 ID tokens that a [`Fault`] makes wrong on purpose. Stopped when dropped.
pub struct HostileOidc {
    server: Running,
    state: OidcShared,
}

impl fmt::Debug for HostileOidc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostileOidc")
            .field("issuer", &self.issuer())
            .finish_non_exhaustive()
    }
}

/// A fresh P-256 key: its PKCS#8 document (for signing) and its public point's `x` and `y`.
fn generate_p256() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    // Uncompressed: 0x04 || x || y.
    let point = pair.public_key().as_ref();
    assert_eq!(point.len(), 65);
    assert_eq!(point[0], 0x04);
    (
        pkcs8.as_ref().to_vec(),
        point[1..33].to_vec(),
        point[33..65].to_vec(),
    )
}

impl HostileOidc {
    /// Starts a provider that knows one client, `client_id` with `client_secret`, issuing
    /// correct tokens ([`Fault::None`]) until told otherwise. No one is signed in until
    /// [`Self::sign_in_as`].
    pub async fn start(client_id: &str, client_secret: &str) -> Self {
        let (pkcs8, x, y) = generate_p256();
        let (foreign_pkcs8, _, _) = generate_p256();
        let kid = format!("standin-{}", hex(&random_bytes(8)));
        let jwk = json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&x),
            "y": URL_SAFE_NO_PAD.encode(&y),
            "kid": kid,
            "alg": "ES256",
            "use": "sig",
        });
        let state: OidcShared = Arc::new(Mutex::new(OidcState {
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            issuer: String::new(),
            kid,
            key: EncodingKey::from_ec_der(&pkcs8),
            foreign_key: EncodingKey::from_ec_der(&foreign_pkcs8),
            jwk,
            fault: Fault::None,
            identity: None,
            codes: HashMap::new(),
            tokens: HashMap::new(),
        }));
        let router = Router::new()
            .route("/.well-known/openid-configuration", get(oidc_discovery))
            .route("/jwks", get(oidc_jwks))
            .route("/authorize", get(oidc_authorize))
            .route("/token", post(oidc_token))
            .route("/userinfo", get(oidc_userinfo).post(oidc_userinfo))
            .with_state(state.clone());
        let server = Running::start(router).await;
        state.lock().unwrap().issuer = server.base();
        Self { server, state }
    }

    /// The issuer, `http://127.0.0.1:P` (no trailing slash); discovery is under it.
    pub fn issuer(&self) -> String {
        self.server.base()
    }

    /// How the ID tokens of the token requests from now on are spoiled.
    pub fn set_fault(&self, fault: Fault) {
        self.state.lock().unwrap().fault = fault;
    }

    /// The identity the next authorization signs in: subject and claims (email,
    /// email_verified, name, preferred_username…), merged into the ID token. It stays
    /// signed in for the authorizations after it too.
    pub fn sign_in_as(&self, subject: &str, claims: Value) {
        self.state.lock().unwrap().identity = Some((subject.to_owned(), claims));
    }
}

/// `GET /.well-known/openid-configuration`.
async fn oidc_discovery(State(state): State<OidcShared>) -> Response {
    let issuer = state.lock().unwrap().issuer.clone();
    axum::Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks"),
        "userinfo_endpoint": format!("{issuer}/userinfo"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "scopes_supported": ["openid", "email", "profile"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": [
            "iss", "sub", "aud", "exp", "iat", "nonce", "at_hash",
            "email", "email_verified", "name", "preferred_username", "picture",
        ],
    }))
    .into_response()
}

/// `GET /jwks`.
async fn oidc_jwks(State(state): State<OidcShared>) -> Response {
    let jwk = state.lock().unwrap().jwk.clone();
    axum::Json(json!({ "keys": [jwk] })).into_response()
}

/// `GET /authorize`: signs the identity in at once and redirects back with a code, or with
/// an error (RFC 6749 §4.1.2.1) once the redirect URI is known to be the client's.
async fn oidc_authorize(State(state): State<OidcShared>, RawQuery(query): RawQuery) -> Response {
    let params = parse_params(query.unwrap_or_default().as_bytes());
    let mut state = state.lock().unwrap();
    if param(&params, "client_id") != Some(state.client_id.as_str()) {
        return (StatusCode::BAD_REQUEST, "unknown client_id").into_response();
    }
    let Some(redirect_uri) = param(&params, "redirect_uri") else {
        return (StatusCode::BAD_REQUEST, "redirect_uri is required").into_response();
    };
    let state_param = params.get("state").cloned();
    let redirect = |fields: &[(&str, &str)]| {
        let mut fields = fields.to_vec();
        if let Some(s) = state_param.as_deref() {
            fields.push(("state", s));
        }
        found(&with_query(redirect_uri, &fields))
    };
    if param(&params, "response_type") != Some("code") {
        return redirect(&[("error", "unsupported_response_type")]);
    }
    let has_openid = params
        .get("scope")
        .is_some_and(|s| s.split(' ').any(|s| s == "openid"));
    if !has_openid {
        return redirect(&[
            ("error", "invalid_scope"),
            ("error_description", "the openid scope is required"),
        ]);
    }
    let code_challenge = param(&params, "code_challenge").map(str::to_owned);
    if code_challenge.is_some() && param(&params, "code_challenge_method") != Some("S256") {
        return redirect(&[
            ("error", "invalid_request"),
            ("error_description", "code_challenge_method must be S256"),
        ]);
    }
    let Some((subject, claims)) = state.identity.clone() else {
        return redirect(&[
            ("error", "access_denied"),
            ("error_description", "no one is signed in"),
        ]);
    };
    let code = random_alphanumeric(32);
    state.codes.insert(
        code.clone(),
        OidcGrant {
            subject,
            claims,
            nonce: param(&params, "nonce").map(str::to_owned),
            redirect_uri: redirect_uri.to_owned(),
            code_challenge,
            expires: Instant::now() + CODE_LIFETIME,
        },
    );
    redirect(&[("code", code.as_str())])
}

/// An OAuth error of the token endpoint (RFC 6749 §5.2).
fn oidc_token_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// The `at_hash` of `access_token` for ES256: base64url of the left half of its SHA-256.
fn at_hash(access_token: &str) -> String {
    let digest = Sha256::digest(access_token.as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..16])
}

/// `POST /token`: the authorization-code grant, client_secret_basic or client_secret_post.
async fn oidc_token(State(state): State<OidcShared>, headers: HeaderMap, body: Bytes) -> Response {
    let params = request_params(None, &headers, &body);
    let mut state = state.lock().unwrap();
    let is_ours = |id: &str, secret: &str| id == state.client_id && secret == state.client_secret;
    let client_ok = match basic_credentials(&headers) {
        Some(pairs) => pairs.iter().any(|(id, secret)| is_ours(id, secret)),
        None => match (param(&params, "client_id"), param(&params, "client_secret")) {
            (Some(id), Some(secret)) => is_ours(id, secret),
            _ => false,
        },
    };
    if !client_ok {
        let mut response = oidc_token_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"token\""),
        );
        return response;
    }
    if param(&params, "grant_type") != Some("authorization_code") {
        return oidc_token_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only authorization_code is supported",
        );
    }
    // Single use: whatever comes of this request, the code is spent.
    let Some(grant) = param(&params, "code").and_then(|code| state.codes.remove(code)) else {
        return oidc_token_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "unknown or used code",
        );
    };
    if Instant::now() >= grant.expires {
        return oidc_token_error(StatusCode::BAD_REQUEST, "invalid_grant", "expired code");
    }
    if param(&params, "redirect_uri") != Some(grant.redirect_uri.as_str()) {
        return oidc_token_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "redirect_uri does not match the authorization request",
        );
    }
    if !pkce_ok(
        grant.code_challenge.as_deref(),
        param(&params, "code_verifier"),
    ) {
        return oidc_token_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "PKCE verification failed",
        );
    }

    let access_token = random_alphanumeric(40);
    let fault = state.fault;
    let now = jsonwebtoken::get_current_timestamp();
    let (iat, exp) = if fault == Fault::Expired {
        (now - 3600 - 300, now - 3600)
    } else {
        (now, now + 300)
    };
    let mut claims = match &grant.claims {
        Value::Object(claims) if fault != Fault::ClaimsInUserinfoOnly => claims.clone(),
        _ => Map::new(),
    };
    let issuer = if fault == Fault::WrongIssuer {
        "http://evil.example".to_owned()
    } else {
        state.issuer.clone()
    };
    let audience = if fault == Fault::WrongAudience {
        "someone-else".to_owned()
    } else {
        state.client_id.clone()
    };
    claims.insert("iss".into(), json!(issuer));
    claims.insert("sub".into(), json!(grant.subject));
    claims.insert("aud".into(), json!(audience));
    claims.insert("exp".into(), json!(exp));
    claims.insert("iat".into(), json!(iat));
    claims.insert("auth_time".into(), json!(iat));
    match (fault, &grant.nonce) {
        (Fault::NoNonce, _) => {
            claims.remove("nonce");
        }
        (Fault::WrongNonce, _) => {
            claims.insert(
                "nonce".into(),
                json!(format!("not-{}", random_alphanumeric(16))),
            );
        }
        (_, Some(nonce)) => {
            claims.insert("nonce".into(), json!(nonce));
        }
        (_, None) => {
            claims.remove("nonce");
        }
    }
    let hashed = if fault == Fault::BadAtHash {
        at_hash(&format!("{access_token}-not"))
    } else {
        at_hash(&access_token)
    };
    claims.insert("at_hash".into(), json!(hashed));

    let mut jwt_header = Header::new(Algorithm::ES256);
    jwt_header.kid = Some(state.kid.clone());
    let key = if fault == Fault::ForeignKey {
        &state.foreign_key
    } else {
        &state.key
    };
    let id_token = jsonwebtoken::encode(&jwt_header, &Value::Object(claims), key).unwrap();

    let userinfo = (grant.subject, grant.claims);
    state.tokens.insert(access_token.clone(), userinfo);
    (
        StatusCode::OK,
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        axum::Json(json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": 300,
            "id_token": id_token,
        })),
    )
        .into_response()
}

/// `GET` (or `POST`) `/userinfo` with the bearer access token: `{"sub", ...claims}`.
async fn oidc_userinfo(State(state): State<OidcShared>, headers: HeaderMap) -> Response {
    let state = state.lock().unwrap();
    let identity = authorization_token(&headers, &["bearer"]).and_then(|t| state.tokens.get(&t));
    let Some((subject, claims)) = identity else {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")],
        )
            .into_response();
    };
    let mut body = match claims {
        Value::Object(claims) => claims.clone(),
        _ => Map::new(),
    };
    body.insert("sub".into(), json!(subject));
    axum::Json(Value::Object(body)).into_response()
}

// ---------------------------------------------------------------------------------------------
// The stand-ins, driven directly

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    const CLIENT_ID: &str = "the-client";
    const CLIENT_SECRET: &str = "the-client-secret";
    const REDIRECT_URI: &str = "http://127.0.0.1:9/oauth/callback";
    const VERIFIER: &str = "a-pkce-code-verifier-of-at-least-43-characters-long";

    /// A client that does not follow redirects and says who it is.
    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("dt-users-tests")
            .build()
            .unwrap()
    }

    fn ada() -> GitHubUser {
        GitHubUser {
            id: 583_231,
            login: "ada".into(),
            name: Some("Ada Lovelace".into()),
            avatar_url: Some("https://avatars.example/ada.png".into()),
            emails: vec![
                GitHubEmail {
                    email: "ada@example.com".into(),
                    primary: true,
                    verified: true,
                },
                GitHubEmail {
                    email: "ada@old.example".into(),
                    primary: false,
                    verified: false,
                },
            ],
        }
    }

    /// Follows the authorize URL once; the query of where it redirects.
    async fn authorize(client: &reqwest::Client, url: String) -> HashMap<String, String> {
        let response = client.get(url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::FOUND);
        let location = response.headers()[reqwest::header::LOCATION]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(location.starts_with(REDIRECT_URI), "{location}");
        let location = url::Url::parse(&location).unwrap();
        location.query_pairs().into_owned().collect()
    }

    fn github_authorize_url(github: &GitHubStandIn, state: &str) -> String {
        let challenge = pkce_s256(VERIFIER);
        url::Url::parse_with_params(
            &format!("{}/login/oauth/authorize", github.web_url()),
            [
                ("client_id", CLIENT_ID),
                ("redirect_uri", REDIRECT_URI),
                ("state", state),
                ("scope", "read:user user:email"),
                ("code_challenge", challenge.as_str()),
                ("code_challenge_method", "S256"),
            ],
        )
        .unwrap()
        .to_string()
    }

    async fn github_code(github: &GitHubStandIn, client: &reqwest::Client) -> String {
        let query = authorize(client, github_authorize_url(github, "st-1")).await;
        assert_eq!(query["state"], "st-1");
        query["code"].clone()
    }

    async fn github_token(
        github: &GitHubStandIn,
        client: &reqwest::Client,
        code: &str,
        verifier: &str,
    ) -> serde_json::Value {
        let response = client
            .post(format!("{}/login/oauth/access_token", github.web_url()))
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&[
                ("client_id", CLIENT_ID),
                ("client_secret", CLIENT_SECRET),
                ("code", code),
                ("redirect_uri", REDIRECT_URI),
                ("code_verifier", verifier),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    #[tokio::test]
    async fn github_web_flow_with_pkce_then_user_and_emails() {
        let github = GitHubStandIn::start(CLIENT_ID, CLIENT_SECRET).await;
        github.sign_in_as(ada());
        let client = client();

        let code = github_code(&github, &client).await;
        let token = github_token(&github, &client, &code, VERIFIER).await;
        let access_token = token["access_token"].as_str().unwrap();
        assert!(access_token.starts_with("gho_"), "{token}");
        assert_eq!(token["token_type"], "bearer");
        assert_eq!(token["scope"], "read:user,user:email");
        assert_eq!(github.token_requests(), 1);
        assert_eq!(github.last_code_verifier().as_deref(), Some(VERIFIER));

        let user: serde_json::Value = client
            .get(format!("{}/user", github.api_url()))
            .bearer_auth(access_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(user["login"], "ada");
        assert_eq!(user["id"], 583_231);
        assert_eq!(user["name"], "Ada Lovelace");
        assert_eq!(user["avatar_url"], "https://avatars.example/ada.png");
        assert!(user["node_id"].is_string());
        assert!(user["email"].is_null());

        // The older `token` scheme works too.
        let response = client
            .get(format!("{}/user/emails", github.api_url()))
            .header(
                reqwest::header::AUTHORIZATION,
                format!("token {access_token}"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let emails: serde_json::Value = response.json().await.unwrap();
        assert_eq!(
            emails,
            json!([
                {"email": "ada@example.com", "primary": true, "verified": true, "visibility": "private"},
                {"email": "ada@old.example", "primary": false, "verified": false, "visibility": null},
            ])
        );
    }

    #[tokio::test]
    async fn github_refuses_a_reused_code() {
        let github = GitHubStandIn::start(CLIENT_ID, CLIENT_SECRET).await;
        github.sign_in_as(ada());
        let client = client();
        let code = github_code(&github, &client).await;
        let first = github_token(&github, &client, &code, VERIFIER).await;
        assert!(first["access_token"].is_string(), "{first}");

        let again = github_token(&github, &client, &code, VERIFIER).await;
        assert_eq!(again["error"], "bad_verification_code", "{again}");
        assert!(again["error_description"].is_string() && again["error_uri"].is_string());
        assert!(again.get("access_token").is_none());
        assert_eq!(github.token_requests(), 2);
    }

    #[tokio::test]
    async fn github_refuses_a_wrong_pkce_verifier_and_burns_the_code() {
        let github = GitHubStandIn::start(CLIENT_ID, CLIENT_SECRET).await;
        github.sign_in_as(ada());
        let client = client();
        let code = github_code(&github, &client).await;
        let wrong = github_token(
            &github,
            &client,
            &code,
            "another-verifier-of-43-characters-or-more-xx",
        )
        .await;
        assert_eq!(wrong["error"], "bad_verification_code", "{wrong}");
        let right = github_token(&github, &client, &code, VERIFIER).await;
        assert_eq!(right["error"], "bad_verification_code", "{right}");
    }

    #[tokio::test]
    async fn github_answers_form_encoded_by_default_and_takes_basic_auth() {
        let github = GitHubStandIn::start(CLIENT_ID, CLIENT_SECRET).await;
        github.sign_in_as(ada());
        let client = client();
        let code = github_code(&github, &client).await;
        let response = client
            .post(format!("{}/login/oauth/access_token", github.web_url()))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .form(&[("code", code.as_str()), ("code_verifier", VERIFIER)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(content_type.starts_with("application/x-www-form-urlencoded"));
        let body = response.text().await.unwrap();
        let fields: HashMap<String, String> = parse_params(body.as_bytes());
        assert!(fields["access_token"].starts_with("gho_"), "{body}");
        assert_eq!(fields["token_type"], "bearer");
        assert_eq!(fields["scope"], "read:user,user:email");

        // A wrong secret, in the default format too.
        let code = github_code(&github, &client).await;
        let body = client
            .post(format!("{}/login/oauth/access_token", github.web_url()))
            .form(&[
                ("client_id", CLIENT_ID),
                ("client_secret", "not-the-secret"),
                ("code", code.as_str()),
                ("code_verifier", VERIFIER),
            ])
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(
            parse_params(body.as_bytes())["error"],
            "incorrect_client_credentials"
        );
    }

    #[tokio::test]
    async fn github_sends_a_cancelled_sign_in_back_as_access_denied() {
        let github = GitHubStandIn::start(CLIENT_ID, CLIENT_SECRET).await;
        github.sign_in_as(ada());
        github.sign_out();
        let query = authorize(&client(), github_authorize_url(&github, "st-2")).await;
        assert_eq!(query["error"], "access_denied");
        assert_eq!(query["state"], "st-2");
        assert!(!query.contains_key("code"));
    }

    #[tokio::test]
    async fn github_api_wants_a_user_agent_and_a_token() {
        let github = GitHubStandIn::start(CLIENT_ID, CLIENT_SECRET).await;
        github.sign_in_as(ada());
        let code = github_code(&github, &client()).await;
        let token = github_token(&github, &client(), &code, VERIFIER).await;
        let access_token = token["access_token"].as_str().unwrap();

        // reqwest sends no User-Agent unless told to.
        let bare = reqwest::Client::new();
        let response = bare
            .get(format!("{}/user", github.api_url()))
            .bearer_auth(access_token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);

        let response = client()
            .get(format!("{}/user", github.api_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["message"], "Requires authentication");
        assert!(body["documentation_url"].is_string());
    }

    // -- HostileOidc -----------------------------------------------------------------------

    /// What the relying party sent and got: the ID token and the access token.
    struct Tokens {
        id_token: String,
        access_token: String,
        nonce: String,
    }

    /// Discovery → authorize → token (client_secret_basic, PKCE), as a relying party does.
    async fn oidc_sign_in(oidc: &HostileOidc) -> (serde_json::Value, Tokens) {
        let client = client();
        let discovery: serde_json::Value = client
            .get(format!(
                "{}/.well-known/openid-configuration",
                oidc.issuer()
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(discovery["issuer"], oidc.issuer().as_str());
        let nonce = random_alphanumeric(20);
        let challenge = pkce_s256(VERIFIER);
        let authorize_url = url::Url::parse_with_params(
            discovery["authorization_endpoint"].as_str().unwrap(),
            [
                ("response_type", "code"),
                ("client_id", CLIENT_ID),
                ("redirect_uri", REDIRECT_URI),
                ("scope", "openid email profile"),
                ("state", "st-3"),
                ("nonce", nonce.as_str()),
                ("code_challenge", challenge.as_str()),
                ("code_challenge_method", "S256"),
            ],
        )
        .unwrap();
        let query = authorize(&client, authorize_url.to_string()).await;
        assert_eq!(query["state"], "st-3");
        let response = client
            .post(discovery["token_endpoint"].as_str().unwrap())
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", query["code"].as_str()),
                ("redirect_uri", REDIRECT_URI),
                ("code_verifier", VERIFIER),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let token: serde_json::Value = response.json().await.unwrap();
        assert_eq!(token["token_type"], "Bearer");
        assert_eq!(token["expires_in"], 300);
        let tokens = Tokens {
            id_token: token["id_token"].as_str().unwrap().to_owned(),
            access_token: token["access_token"].as_str().unwrap().to_owned(),
            nonce,
        };
        (discovery, tokens)
    }

    /// Verifies an ID token the way a relying party must (signature by a key of the JWKS,
    /// issuer, audience, expiry, nonce, at_hash); its claims, or why it is refused.
    async fn verify(
        discovery: &serde_json::Value,
        tokens: &Tokens,
    ) -> Result<serde_json::Value, String> {
        let jwks: serde_json::Value = client()
            .get(discovery["jwks_uri"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let header = jsonwebtoken::decode_header(&tokens.id_token).map_err(|e| e.to_string())?;
        let jwk = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"].as_str() == header.kid.as_deref())
            .ok_or("no key of that kid")?;
        assert_eq!(
            (jwk["kty"].as_str(), jwk["crv"].as_str()),
            (Some("EC"), Some("P-256"))
        );
        assert_eq!(
            (jwk["alg"].as_str(), jwk["use"].as_str()),
            (Some("ES256"), Some("sig"))
        );
        let key = jsonwebtoken::DecodingKey::from_ec_components(
            jwk["x"].as_str().unwrap(),
            jwk["y"].as_str().unwrap(),
        )
        .unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
        validation.set_audience(&[CLIENT_ID]);
        validation.set_issuer(&[discovery["issuer"].as_str().unwrap()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<serde_json::Value>(&tokens.id_token, &key, &validation)
            .map_err(|e| format!("{:?}", e.kind()))?
            .claims;
        if claims["nonce"].as_str() != Some(tokens.nonce.as_str()) {
            return Err("nonce".into());
        }
        if claims["at_hash"].as_str() != Some(at_hash(&tokens.access_token).as_str()) {
            return Err("at_hash".into());
        }
        Ok(claims)
    }

    #[tokio::test]
    async fn oidc_issues_a_verifiable_id_token() {
        let oidc = HostileOidc::start(CLIENT_ID, CLIENT_SECRET).await;
        oidc.sign_in_as(
            "subject-42",
            json!({"email": "ada@example.com", "email_verified": true, "name": "Ada"}),
        );
        let (discovery, tokens) = oidc_sign_in(&oidc).await;
        assert_eq!(
            discovery["id_token_signing_alg_values_supported"],
            json!(["ES256"])
        );
        assert_eq!(
            discovery["code_challenge_methods_supported"],
            json!(["S256"])
        );

        let claims = verify(&discovery, &tokens).await.unwrap();
        assert_eq!(claims["sub"], "subject-42");
        assert_eq!(claims["iss"], oidc.issuer().as_str());
        assert_eq!(claims["aud"], CLIENT_ID);
        assert_eq!(claims["email"], "ada@example.com");
        assert_eq!(claims["email_verified"], true);

        let userinfo: serde_json::Value = client()
            .get(discovery["userinfo_endpoint"].as_str().unwrap())
            .bearer_auth(&tokens.access_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            userinfo,
            json!({"sub": "subject-42", "email": "ada@example.com", "email_verified": true, "name": "Ada"})
        );
    }

    #[tokio::test]
    async fn oidc_foreign_key_fails_verification() {
        let oidc = HostileOidc::start(CLIENT_ID, CLIENT_SECRET).await;
        oidc.sign_in_as("subject-42", json!({}));
        oidc.set_fault(Fault::ForeignKey);
        let (discovery, tokens) = oidc_sign_in(&oidc).await;
        // Same kid as the published key, so the key is found, and the signature is wrong.
        let header = jsonwebtoken::decode_header(&tokens.id_token).unwrap();
        let jwks: serde_json::Value = client()
            .get(discovery["jwks_uri"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(header.kid.as_deref(), jwks["keys"][0]["kid"].as_str());
        assert_eq!(
            verify(&discovery, &tokens).await.unwrap_err(),
            "InvalidSignature"
        );
    }

    #[tokio::test]
    async fn oidc_every_fault_is_refused_for_its_own_reason() {
        let oidc = HostileOidc::start(CLIENT_ID, CLIENT_SECRET).await;
        oidc.sign_in_as("subject-42", json!({"email": "ada@example.com"}));
        for (fault, reason) in [
            (Fault::WrongNonce, "nonce"),
            (Fault::NoNonce, "nonce"),
            (Fault::WrongAudience, "InvalidAudience"),
            (Fault::Expired, "ExpiredSignature"),
            (Fault::ForeignKey, "InvalidSignature"),
            (Fault::WrongIssuer, "InvalidIssuer"),
            (Fault::BadAtHash, "at_hash"),
        ] {
            oidc.set_fault(fault);
            let (discovery, tokens) = oidc_sign_in(&oidc).await;
            assert_eq!(
                verify(&discovery, &tokens).await.unwrap_err(),
                reason,
                "{fault:?}"
            );
        }
        oidc.set_fault(Fault::None);
        let (discovery, tokens) = oidc_sign_in(&oidc).await;
        verify(&discovery, &tokens).await.unwrap();
    }

    #[tokio::test]
    async fn oidc_token_endpoint_checks_code_reuse_and_pkce() {
        let oidc = HostileOidc::start(CLIENT_ID, CLIENT_SECRET).await;
        oidc.sign_in_as("subject-42", json!({}));
        let client = client();
        let challenge = pkce_s256(VERIFIER);
        let authorize_url = url::Url::parse_with_params(
            &format!("{}/authorize", oidc.issuer()),
            [
                ("response_type", "code"),
                ("client_id", CLIENT_ID),
                ("redirect_uri", REDIRECT_URI),
                ("scope", "openid"),
                ("code_challenge", challenge.as_str()),
                ("code_challenge_method", "S256"),
            ],
        )
        .unwrap();
        let exchange = |code: String, verifier: &'static str, secret: &'static str| {
            client
                .post(format!("{}/token", oidc.issuer()))
                .form(&[
                    ("grant_type", "authorization_code"),
                    ("code", code.as_str()),
                    ("redirect_uri", REDIRECT_URI),
                    ("code_verifier", verifier),
                    ("client_id", CLIENT_ID),
                    ("client_secret", secret),
                ])
                .send()
        };
        let code = authorize(&client, authorize_url.to_string()).await["code"].clone();
        let response = exchange(code.clone(), VERIFIER, "wrong").await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        // client_secret_post, with the right secret.
        let response = exchange(code.clone(), VERIFIER, CLIENT_SECRET)
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let response = exchange(code, VERIFIER, CLIENT_SECRET).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_grant");

        let code = authorize(&client, authorize_url.to_string()).await["code"].clone();
        let response = exchange(
            code,
            "a-verifier-that-is-not-the-one-sent-at-authorize",
            CLIENT_SECRET,
        )
        .await
        .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
}
