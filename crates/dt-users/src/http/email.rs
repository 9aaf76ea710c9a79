//! Email verification and password reset.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::extract::{ApiJson, Client, CurrentSession};
use super::problem::{ApiError, Problem};
use super::views::UserView;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The token from the email.
    #[schema(value_type = String)]
    pub token: SecretString,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailRequest {
    pub email: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    #[schema(value_type = String)]
    pub token: SecretString,
    #[schema(value_type = String)]
    pub new_password: SecretString,
}

/// The body of a 202: the request was taken; what follows happens by email.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Accepted {
    /// Always `accepted`.
    pub status: &'static str,
}

pub fn accepted() -> Response {
    (StatusCode::ACCEPTED, Json(Accepted { status: "accepted" })).into_response()
}

/// Confirm an email address with the token from the verification email.
#[utoipa::path(post, path = "/api/v1/auth/email/verify", tag = "auth",
    request_body = TokenRequest,
    responses(
        (status = 200, description = "Verified", body = UserView),
        (status = 400, description = "`invalid_token`: unknown, used, expired, or for an address the account no longer has", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn verify(
    State(app): State<AppState>,
    ApiJson(body): ApiJson<TokenRequest>,
) -> Result<Json<UserView>, ApiError> {
    let user = app.verify_email(body.token.expose_secret()).await?;
    Ok(Json(UserView::from(&user)))
}

/// Send a fresh verification email to the signed-in user's address (nothing if verified).
#[utoipa::path(post, path = "/api/v1/auth/email/verify/request", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted", body = Accepted),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`: too many emails for this client or account", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn request_verification(
    State(app): State<AppState>,
    client: Client,
    CurrentSession(subject): CurrentSession,
) -> Result<Response, ApiError> {
    app.request_email_verification(subject, client.ip_key())
        .await?;
    Ok(accepted())
}

/// Confirm an email change with the token sent to the new address; the new address takes
/// effect, verified.
#[utoipa::path(post, path = "/api/v1/auth/email/change/confirm", tag = "auth",
    request_body = TokenRequest,
    responses(
        (status = 200, description = "The account with its new address", body = UserView),
        (status = 400, description = "`invalid_token`: unknown, used, expired, or for a change that was replaced or cancelled", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`email_taken`: another account took the address meanwhile", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn confirm_change(
    State(app): State<AppState>,
    ApiJson(body): ApiJson<TokenRequest>,
) -> Result<Json<UserView>, ApiError> {
    let user = app.confirm_email_change(body.token.expose_secret()).await?;
    Ok(Json(UserView::from(&user)))
}

/// What a cancel link did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CancelledChange {
    /// `cancelled` (the change was pending) or `reverted` (it had been confirmed: the old
    /// address is back and every session ended).
    pub status: &'static str,
}

/// Cancel an email change with the token from the notice sent to the old address; if the
/// change was already confirmed, revert it and end every session.
#[utoipa::path(post, path = "/api/v1/auth/email/change/cancel", tag = "auth",
    request_body = TokenRequest,
    responses(
        (status = 200, description = "Cancelled or reverted", body = CancelledChange),
        (status = 400, description = "`invalid_token`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`email_taken`: the old address belongs to another account now", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn cancel_change(
    State(app): State<AppState>,
    ApiJson(body): ApiJson<TokenRequest>,
) -> Result<Json<CancelledChange>, ApiError> {
    let outcome = app.cancel_email_change(body.token.expose_secret()).await?;
    Ok(Json(CancelledChange {
        status: outcome.as_str(),
    }))
}

/// Ask for a password-reset email. Always 202, whether or not the address has an account.
#[utoipa::path(post, path = "/api/v1/auth/password/forgot", tag = "auth",
    request_body = EmailRequest,
    responses((status = 202, description = "Accepted", body = Accepted)))]
pub async fn forgot(
    State(app): State<AppState>,
    client: Client,
    ApiJson(body): ApiJson<EmailRequest>,
) -> Result<Response, ApiError> {
    limit_email_request(&app, &client, &body.email).await?;
    app.app.forgot_password(&body.email);
    Ok(accepted())
}

/// The limits of requests that make dt-users send an email to an address: per client and per
/// target address (whether or not it has an account, so a 429 tells nothing about it).
pub async fn limit_email_request(
    app: &AppState,
    client: &Client,
    email: &str,
) -> Result<(), ApiError> {
    app.limit("email_ip", app.limits.email_ip, client.ip_key())
        .await?;
    let target = dt_users_domain::Email::lookup_key_of(email);
    app.limit("email_target", app.limits.email_target, &target)
        .await?;
    Ok(())
}

/// Choose a new password with the token from the reset email; every session ends.
#[utoipa::path(post, path = "/api/v1/auth/password/reset", tag = "auth",
    request_body = ResetRequest,
    responses(
        (status = 204, description = "Password changed; every session ended"),
        (status = 400, description = "`invalid_token`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`weak_password`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn reset(
    State(app): State<AppState>,
    ApiJson(body): ApiJson<ResetRequest>,
) -> Result<StatusCode, ApiError> {
    app.reset_password(
        body.token.expose_secret(),
        body.new_password.expose_secret(),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
