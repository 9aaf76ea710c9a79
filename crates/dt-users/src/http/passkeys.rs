//! Passkeys: adding, listing and removing them, and signing in with one — alone, or as the
//! second step after a password.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::AppState;
use super::auth::no_store;
use super::extract::{ApiJson, Client, CurrentSession};
use super::problem::{ApiError, Problem};
use crate::service::{ServiceError, TokenPair};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddPasskeyRequest {
    /// What `navigator.credentials.create` returned (`PublicKeyCredential` JSON).
    #[schema(value_type = Object)]
    pub credential: Value,
    /// A name its owner recognises it by (1–64 characters); `Passkey` when none.
    pub name: Option<String>,
}

/// A passkey as listed: never its key.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PasskeyView {
    pub id: Uuid,
    pub name: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: String,
    /// Null until it first signs in.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<String>,
}

impl From<&dt_users_store::PasskeyRecord> for PasskeyView {
    fn from(record: &dt_users_store::PasskeyRecord) -> Self {
        Self {
            id: record.id,
            name: record.name.clone(),
            created_at: record.created_at.to_rfc3339(),
            last_used_at: record.last_used_at.map(|t| t.to_rfc3339()),
        }
    }
}

/// A passkey just added.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AddedPasskeyView {
    #[serde(flatten)]
    pub passkey: PasskeyView,
    /// Ten recovery codes, shown this once, when this passkey turned two-factor sign-in on;
    /// absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_codes: Option<Vec<String>>,
}

impl std::fmt::Debug for AddedPasskeyView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddedPasskeyView")
            .field("passkey", &self.passkey)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RemovePasskeyRequest {
    /// Needed unless this session signed in with a passkey in the last 5 minutes.
    #[schema(value_type = Option<String>)]
    pub current_password: Option<SecretString>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MfaTokenRequest {
    #[schema(value_type = String)]
    pub mfa_token: SecretString,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasskeySignInRequest {
    /// The `challenge_id` of `POST /api/v1/auth/passkey/options`.
    pub challenge_id: String,
    /// What `navigator.credentials.get` returned (`PublicKeyCredential` JSON).
    #[schema(value_type = Object)]
    pub credential: Value,
}

/// The challenge of a sign-in with a passkey alone.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PasskeyChallengeView {
    /// Send it back with the assertion; it works once, within 5 minutes.
    pub challenge_id: String,
    /// The argument of `navigator.credentials.get` (`{"publicKey": …}`), for discoverable
    /// credentials.
    #[schema(value_type = Object)]
    pub options: Value,
}

/// Start adding a passkey: the options of `navigator.credentials.create`.
#[utoipa::path(post, path = "/api/v1/users/current/passkeys/options", tag = "two-factor",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "`{\"publicKey\": PublicKeyCredentialCreationOptions}`; the account's passkeys are excluded. Valid 5 minutes; a newer request replaces it", body = Object),
        (status = 401, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn registration_options(
    State(app): State<AppState>,
    CurrentSession(subject): CurrentSession,
) -> Result<Response, ApiError> {
    let options = app.passkey_registration_options(subject).await?;
    Ok(no_store(Json(options).into_response()))
}

/// Add the passkey the authenticator made for the registration started.
#[utoipa::path(post, path = "/api/v1/users/current/passkeys", tag = "two-factor",
    security(("bearer" = [])),
    request_body = AddPasskeyRequest,
    responses(
        (status = 201, description = "Added; two-factor sign-in is on", body = AddedPasskeyView),
        (status = 400, description = "`invalid_credential`: no registration pending, verification failed, or registered already", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_error`: `name`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn add(
    State(app): State<AppState>,
    CurrentSession(subject): CurrentSession,
    ApiJson(body): ApiJson<AddPasskeyRequest>,
) -> Result<Response, ApiError> {
    let (record, codes) = app
        .register_passkey(subject, &body.credential, body.name.as_deref())
        .await?;
    let view = AddedPasskeyView {
        passkey: PasskeyView::from(&record),
        recovery_codes: codes.map(|c| c.0),
    };
    Ok(no_store((StatusCode::CREATED, Json(view)).into_response()))
}

/// The signed-in user's passkeys, oldest first.
#[utoipa::path(get, path = "/api/v1/users/current/passkeys", tag = "two-factor",
    security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<PasskeyView>),
        (status = 401, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list(
    State(app): State<AppState>,
    CurrentSession(subject): CurrentSession,
) -> Result<Json<Vec<PasskeyView>>, ApiError> {
    let passkeys = app.list_passkeys(subject).await?;
    Ok(Json(passkeys.iter().map(PasskeyView::from).collect()))
}

/// Remove one of the signed-in user's passkeys, with the password (or from a session that
/// signed in with a passkey in the last 5 minutes).
#[utoipa::path(delete, path = "/api/v1/users/current/passkeys/{id}", tag = "two-factor",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Passkey id")),
    request_body = RemovePasskeyRequest,
    responses(
        (status = 204, description = "Removed; with no second factor left, so are the recovery codes"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`invalid_credentials`: wrong `current_password`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such passkey of this user", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_error`: `current_password` is needed (this session did not sign in with a passkey in the last 5 minutes)", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn remove(
    State(app): State<AppState>,
    CurrentSession(subject): CurrentSession,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RemovePasskeyRequest>,
) -> Result<StatusCode, ApiError> {
    let id = Uuid::try_parse(&id).map_err(|_| ServiceError::NotFound)?;
    let password = body
        .current_password
        .as_ref()
        .map(ExposeSecret::expose_secret);
    app.remove_passkey(subject, id, password).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The options of `navigator.credentials.get` for the second step of a sign-in, with the
/// account's passkeys.
#[utoipa::path(post, path = "/api/v1/auth/mfa/webauthn/options", tag = "auth",
    request_body = MfaTokenRequest,
    responses(
        (status = 200, description = "`{\"publicKey\": PublicKeyCredentialRequestOptions}`; send the assertion as `webauthn` to `POST /api/v1/auth/mfa`", body = Object),
        (status = 401, description = "`invalid_token`: the `mfa_token` is unknown, used or expired", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The account has no passkey", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn second_step_options(
    State(app): State<AppState>,
    client: Client,
    ApiJson(body): ApiJson<MfaTokenRequest>,
) -> Result<Response, ApiError> {
    app.limit("login_ip", app.limits.login_ip, client.ip_key())
        .await?;
    let options = app
        .second_step_passkey_options(body.mfa_token.expose_secret())
        .await?;
    Ok(no_store(Json(options).into_response()))
}

/// Start a sign-in with a passkey alone: a challenge for discoverable credentials.
#[utoipa::path(post, path = "/api/v1/auth/passkey/options", tag = "auth",
    responses(
        (status = 200, body = PasskeyChallengeView),
        (status = 429, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn sign_in_options(
    State(app): State<AppState>,
    client: Client,
) -> Result<Response, ApiError> {
    app.limit("login_ip", app.limits.login_ip, client.ip_key())
        .await?;
    let challenge = app.passkey_sign_in_options().await?;
    let view = PasskeyChallengeView {
        challenge_id: challenge.challenge_id,
        options: challenge.options,
    };
    Ok(no_store(Json(view).into_response()))
}

/// Sign in with a passkey alone (user verification required).
#[utoipa::path(post, path = "/api/v1/auth/passkey", tag = "auth",
    request_body = PasskeySignInRequest,
    responses(
        (status = 200, description = "Signed in; the access token's `amr` has `hwk` or `swk`, `user` and `mfa`", body = TokenPair),
        (status = 401, description = "`invalid_credentials`: unknown or used challenge, unknown credential, failed verification, or a counter that did not move forward", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`account_deleted` or `account_banned`", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn sign_in(
    State(app): State<AppState>,
    client: Client,
    ApiJson(body): ApiJson<PasskeySignInRequest>,
) -> Result<Response, ApiError> {
    app.limit("login_ip", app.limits.login_ip, client.ip_key())
        .await?;
    let pair = app
        .passkey_sign_in(&body.challenge_id, &body.credential, client.0)
        .await?;
    Ok(no_store(Json(pair).into_response()))
}
