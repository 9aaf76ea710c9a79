//! Registration, sign-in, token refresh and sign-out.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;

use super::AppState;
use super::extract::{ApiJson, Client, CurrentSession, JsonOrForm};
use super::problem::{ApiError, Problem};
use super::views::{
    LoginForm, LoginRequest, LogoutQuery, RefreshRequest, RegisterRequest, UserView,
};
use crate::service::{RegisterInput, TokenPair};

/// Tokens must never be cached by a browser or proxy.
pub(super) fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Register a new account.
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Registered", body = UserView,
            headers(("Location" = String, description = "The public profile"))),
        (status = 409, description = "`email_taken` or `username_taken`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_error` or `weak_password`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn register(
    State(app): State<AppState>,
    client: Client,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> Result<Response, ApiError> {
    app.limit("register_ip", app.limits.register_ip, client.ip_key())
        .await?;
    let user = app
        .register(RegisterInput {
            email: body.email,
            username: body.username,
            password: body.password,
            display_name: body.display_name,
        })
        .await?;
    let location = format!("/api/v1/users/{}", user.username);
    let mut response = (StatusCode::CREATED, Json(UserView::from(&user))).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// Sign in with email and password (JSON, or the OAuth2 password form with the email as
/// `username`).
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth",
    request_body(content(
        (LoginRequest = "application/json"),
        (LoginForm = "application/x-www-form-urlencoded"),
    )),
    responses(
        (status = 200, description = "Signed in", body = TokenPair),
        (status = 401, description = "`invalid_credentials`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`mfa_required` (the password is right and two-factor sign-in is on: complete at `POST /api/v1/auth/mfa` with the `mfa_token` member and one of `methods`), `account_deleted` or `account_banned`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_error`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn login(
    State(app): State<AppState>,
    client: Client,
    body: JsonOrForm<LoginRequest, LoginForm>,
) -> Result<Response, ApiError> {
    let (email, password) = match body {
        JsonOrForm::Json(b) => (b.email, b.password),
        JsonOrForm::Form(f) => {
            if f.grant_type.as_deref().is_some_and(|g| g != "password") {
                return Err(ApiError::validation("grant_type", "must be `password`"));
            }
            (f.username, f.password)
        }
    };
    app.limit("login_ip", app.limits.login_ip, client.ip_key())
        .await?;
    let email_key = dt_users_domain::Email::lookup_key_of(&email);
    app.limit(
        "login_ip_account",
        app.limits.login_ip_account,
        &format!("{}|{email_key}", client.ip_key()),
    )
    .await?;
    let pair = app
        .login(&email, password.expose_secret(), client.0)
        .await?;
    Ok(no_store(Json(pair).into_response()))
}

/// Exchange a refresh token for a new token pair; the old refresh token dies.
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "New tokens", body = TokenPair),
        (status = 401, description = "`invalid_token` or `refresh_token_reused`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn refresh(
    State(app): State<AppState>,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> Result<Response, ApiError> {
    let pair = app.refresh(body.refresh_token.expose_secret()).await?;
    Ok(no_store(Json(pair).into_response()))
}

/// Sign out: this session (`local`), every other session (`others`) or all (`global`).
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    params(LogoutQuery),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Signed out; the ended sessions' tokens are refused at once"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown `scope`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn logout(
    State(app): State<AppState>,
    CurrentSession(subject): CurrentSession,
    query: Result<Query<LogoutQuery>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let Query(query) = query
        .map_err(|_| ApiError::validation("scope", "must be one of `local`, `others`, `global`"))?;
    app.logout(subject, query.scope.unwrap_or_default()).await?;
    Ok(StatusCode::NO_CONTENT)
}
