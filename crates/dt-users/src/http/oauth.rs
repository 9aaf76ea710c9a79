//! Sign-in with GitHub and OpenID Connect providers, and the identities linked to an account.
//!
//! The browser flow's two navigations (`authorize`, `callback`) answer with redirects; the
//! cookie `dt_oauth` binds a flow to the browser that started it (HttpOnly, `SameSite=Lax` so
//! that it comes back with the provider's redirect, scoped to the OAuth paths, 10 minutes).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::auth::no_store;
use super::extract::{ApiJson, Client, CurrentSession};
use super::problem::{ApiError, Problem};
use crate::service::{Callback, FlowStart, ServiceError, TokenPair};

/// The cookie that binds a flow to its browser.
const COOKIE: &str = "dt_oauth";
/// How long the cookie lives: as long as a flow.
const COOKIE_MAX_AGE_SECS: u64 = 600;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AuthorizeQuery {
    /// Where the browser goes once the sign-in is done; must be on the allow-list
    /// (`DT_USERS_OAUTH_REDIRECT_URIS`), written exactly as there.
    pub redirect_uri: Option<String>,
}

/// What a provider sends back (other parameters it adds are ignored).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct CallbackQuery {
    pub code: Option<String>,
    pub state: Option<String>,
    /// The provider's error (`access_denied` when the user said no).
    pub error: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkRequest {
    /// Where the browser goes once the identity is linked; on the allow-list.
    pub redirect_uri: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LinkStart {
    /// Send the browser here (a navigation); the provider's callback links the identity.
    pub authorize_url: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExchangeRequest {
    /// The `login_code` the callback added to `redirect_uri`.
    #[schema(value_type = String)]
    pub login_code: SecretString,
}

/// The tokens of a provider sign-in.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExchangeView {
    #[serde(flatten)]
    pub tokens: TokenPair,
    /// True when this sign-in made the account (the answer is then 201).
    pub created: bool,
}

/// An identity at a provider, linked to the account.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IdentityView {
    pub id: Uuid,
    /// `github`, or the name of an OpenID Connect provider.
    pub provider: String,
    /// The provider's id of the user.
    pub subject: String,
    /// The address the provider gave at the last sign-in.
    pub email: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: String,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<String>,
}

impl From<dt_users_store::IdentityRecord> for IdentityView {
    fn from(record: dt_users_store::IdentityRecord) -> Self {
        Self {
            id: record.id,
            provider: record.provider,
            subject: record.subject,
            email: record.email,
            created_at: record.created_at.to_rfc3339(),
            last_used_at: record.last_used_at.map(|t| t.to_rfc3339()),
        }
    }
}

/// The `Set-Cookie` value of a flow's binding (or, with `None`, of its removal). The cookie is
/// scoped to this service's OAuth paths, and `Secure` when the service is served over https.
fn binding_cookie(app: &AppState, binding: Option<&SecretString>) -> Option<HeaderValue> {
    let api = &app.policy.api_url;
    let path = format!("{}/api/v1/auth/oauth", api.path().trim_end_matches('/'));
    let secure = if api.scheme() == "https" {
        "; Secure"
    } else {
        ""
    };
    let (value, max_age) = match binding {
        Some(binding) => (binding.expose_secret(), COOKIE_MAX_AGE_SECS),
        None => ("", 0),
    };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"
    ))
    .ok()
}

/// The flow binding the browser sent, if any.
fn cookie_binding(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// A redirect to `location` that is never cached and leaks no referrer.
fn redirect(location: &str, cookie: Option<HeaderValue>) -> Result<Response, ServiceError> {
    let location = HeaderValue::from_str(location).map_err(ServiceError::internal)?;
    let mut response = StatusCode::FOUND.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, location);
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if let Some(cookie) = cookie {
        headers.insert(header::SET_COOKIE, cookie);
    }
    Ok(no_store(response))
}

/// Start signing in with a provider: a redirect to it (a browser navigation).
#[utoipa::path(get, path = "/api/v1/auth/oauth/{provider}/authorize", tag = "auth",
    params(("provider" = String, Path, description = "`github`, or a configured OpenID Connect provider"), AuthorizeQuery),
    responses(
        (status = 302, description = "To the provider, with `state`, PKCE (S256) and, for OpenID Connect, `nonce`; sets the cookie `dt_oauth` that binds the flow to this browser",
            headers(("Location" = String), ("Set-Cookie" = String))),
        (status = 400, description = "`invalid_redirect_uri`: not on the allow-list", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such provider", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`: the provider cannot be reached", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn authorize(
    State(app): State<AppState>,
    client: Client,
    Path(provider): Path<String>,
    query: Result<Query<AuthorizeQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    app.limit("oauth_ip", app.limits.login_ip, client.ip_key())
        .await?;
    let redirect_uri = query
        .ok()
        .and_then(|Query(q)| q.redirect_uri)
        .unwrap_or_default();
    let FlowStart {
        authorize_url,
        binding,
    } = app.start_provider_sign_in(&provider, &redirect_uri).await?;
    Ok(redirect(
        authorize_url.as_str(),
        binding_cookie(&app, Some(&binding)),
    )?)
}

/// The provider's callback: finishes the flow and sends the browser back to the web app, with
/// `login_code` (exchange it at `POST /api/v1/auth/oauth/exchange`), `linked` or `error`.
#[utoipa::path(get, path = "/api/v1/auth/oauth/{provider}/callback", tag = "auth",
    params(("provider" = String, Path), CallbackQuery),
    responses(
        (status = 302, description = "To the flow's `redirect_uri` with `login_code` (single-use, 60 s), `linked={provider}`, or `error` (`access_denied`, `provider_error`, `invalid_request`, `provider_unavailable`, `provider_refused`, `email_required`, `identity_taken`, `link_expired`)",
            headers(("Location" = String))),
        (status = 400, description = "`invalid_state`: the flow is unknown, used, expired or was started in another browser", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such provider", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn callback(
    State(app): State<AppState>,
    client: Client,
    Path(provider): Path<String>,
    headers: HeaderMap,
    query: Result<Query<CallbackQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    app.limit("oauth_ip", app.limits.login_ip, client.ip_key())
        .await?;
    let Query(query) = query.map_err(|_| ServiceError::InvalidState)?;
    let binding = cookie_binding(&headers);
    let location = app
        .finish_provider_flow(
            &provider,
            Callback {
                code: query.code.as_deref(),
                state: query.state.as_deref(),
                error: query.error.as_deref(),
            },
            binding.as_deref(),
        )
        .await?;
    Ok(redirect(location.as_str(), binding_cookie(&app, None))?)
}

/// Exchange a `login_code` for tokens.
#[utoipa::path(post, path = "/api/v1/auth/oauth/exchange", tag = "auth",
    request_body = ExchangeRequest,
    responses(
        (status = 200, description = "Signed in", body = ExchangeView),
        (status = 201, description = "Signed in to an account this sign-in made (`created: true`)", body = ExchangeView),
        (status = 400, description = "`invalid_token`: the login code is unknown, used or expired", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`mfa_required` (two-factor sign-in is on: complete at `POST /api/v1/auth/mfa`), `account_deleted` or `account_banned`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`account_exists`: an account has this email; sign in to it and link the provider from there", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn exchange(
    State(app): State<AppState>,
    client: Client,
    ApiJson(body): ApiJson<ExchangeRequest>,
) -> Result<Response, ApiError> {
    app.limit("oauth_ip", app.limits.login_ip, client.ip_key())
        .await?;
    let exchanged = app
        .exchange_login_code(body.login_code.expose_secret(), client.0)
        .await?;
    let status = if exchanged.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let view = ExchangeView {
        tokens: exchanged.tokens,
        created: exchanged.created,
    };
    Ok(no_store((status, Json(view)).into_response()))
}

/// Start linking a provider's identity to the signed-in account. Call it with the browser's
/// credentials (`fetch(…, {credentials: "include"})`): the answer sets the cookie that binds
/// the flow to this browser, and the browser then navigates to `authorize_url`.
///
/// The path's last segment is the provider's name (`github`, or an OpenID Connect provider);
/// it is named `{id}` because it shares its route with `DELETE …/identities/{id}`.
#[utoipa::path(post, path = "/api/v1/users/current/identities/{id}", tag = "users",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The provider: `github`, or a configured OpenID Connect provider")),
    request_body = LinkRequest,
    responses(
        (status = 200, description = "Navigate to `authorize_url`; the callback links the identity and sends the browser to `redirect_uri?linked={provider}` (or `?error=identity_taken` when it is another account's)", body = LinkStart,
            headers(("Set-Cookie" = String))),
        (status = 400, description = "`invalid_redirect_uri`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such provider", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn link(
    State(app): State<AppState>,
    CurrentSession(subject): CurrentSession,
    Path(provider): Path<String>,
    ApiJson(body): ApiJson<LinkRequest>,
) -> Result<Response, ApiError> {
    let FlowStart {
        authorize_url,
        binding,
    } = app
        .start_identity_link(subject, &provider, &body.redirect_uri)
        .await?;
    let mut response = Json(LinkStart {
        authorize_url: authorize_url.into(),
    })
    .into_response();
    if let Some(cookie) = binding_cookie(&app, Some(&binding)) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    Ok(no_store(response))
}

/// The provider identities linked to the signed-in account.
#[utoipa::path(get, path = "/api/v1/users/current/identities", tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Oldest first", body = Vec<IdentityView>),
    ))]
pub async fn list(
    State(app): State<AppState>,
    CurrentSession(subject): CurrentSession,
) -> Result<Json<Vec<IdentityView>>, ApiError> {
    let identities = app.identities(subject).await?;
    Ok(Json(
        identities.into_iter().map(IdentityView::from).collect(),
    ))
}

/// Unlink a provider identity from the signed-in account.
#[utoipa::path(delete, path = "/api/v1/users/current/identities/{id}", tag = "users",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Identity id")),
    responses(
        (status = 204, description = "Unlinked"),
        (status = 404, description = "No such identity of this user", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`last_sign_in_method`: the account has no password, passkey or other identity to sign in with", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn unlink(
    State(app): State<AppState>,
    CurrentSession(subject): CurrentSession,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = Uuid::try_parse(&id).map_err(|_| ServiceError::NotFound)?;
    app.unlink_identity(subject, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
