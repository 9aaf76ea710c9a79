//! Deleting, restoring and exporting an account.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::AppState;
use super::email::{EmailRequest, TokenRequest, accepted};
use super::extract::{ApiJson, Client, CurrentSession};
use super::problem::{ApiError, Problem};
use super::views::{SessionView, UserView};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteAccountRequest {
    /// The current password, to confirm. Not needed from a session that signed in in the last
    /// 5 minutes with a passkey (or, for an account without a password, with a provider).
    #[schema(value_type = Option<String>)]
    pub password: Option<SecretString>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Deleted {
    /// Always `deleted`.
    pub status: &'static str,
    /// Until when the account can be restored; it is erased afterwards.
    #[schema(value_type = String, format = DateTime)]
    pub restore_until: String,
}

/// Delete the signed-in user's account. Every session ends at once; the account can be
/// restored with the emailed link until `restore_until`, and is erased after it.
#[utoipa::path(delete, path = "/api/v1/users/current", tag = "users",
    security(("bearer" = [])),
    request_body = DeleteAccountRequest,
    responses(
        (status = 202, description = "Deleted, restorable", body = Deleted),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`invalid_credentials`: wrong password", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`: too many password checks for this account", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete(
    State(app): State<AppState>,
    CurrentSession(subject): CurrentSession,
    ApiJson(body): ApiJson<DeleteAccountRequest>,
) -> Result<Response, ApiError> {
    let restore_until = app
        .delete_account(subject, body.password.as_ref().map(|p| p.expose_secret()))
        .await?;
    let body = Deleted {
        status: "deleted",
        restore_until: restore_until.to_rfc3339(),
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// Restore a deleted account with the token from the restoration email. Does not sign in.
#[utoipa::path(post, path = "/api/v1/users/restore", tag = "users",
    request_body = TokenRequest,
    responses(
        (status = 200, description = "Active again", body = UserView),
        (status = 400, description = "`invalid_token`: unknown, used or expired", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn restore(
    State(app): State<AppState>,
    ApiJson(body): ApiJson<TokenRequest>,
) -> Result<Json<UserView>, ApiError> {
    let user = app.restore_account(body.token.expose_secret()).await?;
    Ok(Json(UserView::from(&user)))
}

/// Ask for a fresh restoration email. Always 202, whatever the address.
#[utoipa::path(post, path = "/api/v1/users/restore/request", tag = "users",
    request_body = EmailRequest,
    responses((status = 202, description = "Accepted", body = super::email::Accepted)))]
pub async fn request_restore(
    State(app): State<AppState>,
    client: Client,
    ApiJson(body): ApiJson<EmailRequest>,
) -> Result<Response, ApiError> {
    super::email::limit_email_request(&app, &client, &body.email).await?;
    app.app.request_restore(&body.email);
    Ok(accepted())
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenRecordView {
    /// `verify_email`, `reset_password` or `restore`.
    pub purpose: String,
    pub email: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: String,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: String,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub used_at: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EmailRecordView {
    /// The email's template (`welcome`, `password_reset`, …).
    pub kind: String,
    /// The recorded intent: recipient, greeting and template values (never a token).
    #[schema(value_type = Object)]
    pub intent: Value,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: String,
    /// When it was handed to the mail queue.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub queued_at: Option<String>,
}

/// Everything dt-users holds about one user.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AccountExportView {
    #[schema(value_type = String, format = DateTime)]
    pub exported_at: String,
    pub user: UserView,
    pub sessions: Vec<SessionView>,
    /// Links sent by email (verification, reset, restoration) and what became of them.
    pub email_tokens: Vec<TokenRecordView>,
    /// Emails sent, or about to be.
    pub emails: Vec<EmailRecordView>,
    pub second_factors: SecondFactorsView,
    /// The provider identities (GitHub, OpenID Connect) linked to the account.
    pub identities: Vec<super::oauth::IdentityView>,
}

/// The second factors set up, without their secrets.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SecondFactorsView {
    /// When the authenticator app was set up; null when none is.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub totp_created_at: Option<String>,
    /// When it was confirmed; null while it waits for its first code.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub totp_confirmed_at: Option<String>,
    /// Unused recovery codes (their values are only ever shown once).
    pub recovery_codes_left: u64,
    /// Names and dates; never a key.
    pub passkeys: Vec<super::passkeys::PasskeyView>,
}

/// Export everything dt-users holds about the signed-in user (right of access).
#[utoipa::path(get, path = "/api/v1/users/current/export", tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, body = AccountExportView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn export(
    State(app): State<AppState>,
    CurrentSession(subject): CurrentSession,
) -> Result<Response, ApiError> {
    let export = app.export_account(subject).await?;
    let view = AccountExportView {
        exported_at: app.now().to_rfc3339(),
        user: UserView::from(&export.user),
        sessions: export
            .sessions
            .iter()
            .map(|s| SessionView::new(s, subject.session_id))
            .collect(),
        email_tokens: export
            .email_tokens
            .into_iter()
            .map(|t| TokenRecordView {
                purpose: t.purpose,
                email: t.email,
                created_at: t.created_at.to_rfc3339(),
                expires_at: t.expires_at.to_rfc3339(),
                used_at: t.used_at.map(|u| u.to_rfc3339()),
            })
            .collect(),
        emails: export
            .emails
            .into_iter()
            .map(|e| EmailRecordView {
                kind: e.kind,
                intent: serde_json::from_str(&e.payload).unwrap_or(Value::Null),
                created_at: e.created_at.to_rfc3339(),
                queued_at: e.dispatched_at.map(|d| d.to_rfc3339()),
            })
            .collect(),
        second_factors: SecondFactorsView {
            totp_created_at: export.totp.as_ref().map(|t| t.created_at.to_rfc3339()),
            totp_confirmed_at: export
                .totp
                .as_ref()
                .and_then(|t| t.confirmed_at.map(|c| c.to_rfc3339())),
            recovery_codes_left: export.recovery_codes_left,
            passkeys: export
                .passkeys
                .iter()
                .map(super::passkeys::PasskeyView::from)
                .collect(),
        },
        identities: export
            .identities
            .into_iter()
            .map(super::oauth::IdentityView::from)
            .collect(),
    };
    let mut response = Json(view).into_response();
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}
