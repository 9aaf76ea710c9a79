//! Two-factor sign-in: the second step of a sign-in, and setting up and removing an
//! authenticator app and recovery codes.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::no_store;
use super::extract::{ApiJson, Client, CurrentSession};
use super::problem::{ApiError, Problem};
use crate::service::{RecoveryCodes, SecondFactor, TokenPair};

/// The second step of a sign-in: the `mfa_token` of the `mfa_required` answer and exactly one
/// code.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteSignInRequest {
    #[schema(value_type = String)]
    pub mfa_token: SecretString,
    /// A code of the authenticator app.
    #[schema(value_type = Option<String>, example = "123456")]
    pub totp_code: Option<SecretString>,
    /// One of the recovery codes (each works once).
    #[schema(value_type = Option<String>, example = "k3m9-2qwx-7pzr-c4vd")]
    pub recovery_code: Option<SecretString>,
    /// A passkey's assertion (`PublicKeyCredential` JSON) answering
    /// `POST /api/v1/auth/mfa/webauthn/options`.
    #[schema(value_type = Option<Object>)]
    pub webauthn: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CurrentPasswordRequest {
    /// Needed unless this session signed in in the last 5 minutes with a passkey (or, for an
    /// account without a password, with a provider).
    #[schema(value_type = Option<String>)]
    pub current_password: Option<SecretString>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmTotpRequest {
    /// The code the authenticator app shows now.
    #[schema(value_type = String, example = "123456")]
    pub code: SecretString,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisableTotpRequest {
    /// Needed unless this session signed in in the last 5 minutes with a passkey (or, for an
    /// account without a password, with a provider).
    #[schema(value_type = Option<String>)]
    pub current_password: Option<SecretString>,
    /// A code of the authenticator app, or a recovery code.
    #[schema(value_type = String)]
    pub code: SecretString,
}

/// A pending authenticator: show `otpauth_uri` as a QR code, or `secret` to type in.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TotpEnrolmentView {
    /// The shared secret, base32.
    pub secret: String,
    /// `otpauth://totp/{issuer}:{account}?secret=…&issuer=…`.
    pub otpauth_uri: String,
}

impl std::fmt::Debug for TotpEnrolmentView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpEnrolmentView(..)")
    }
}

/// Recovery codes, shown this once.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RecoveryCodesView {
    /// Ten codes, each usable once; empty when confirming an authenticator did not make new
    /// ones (two-factor sign-in was already on).
    pub recovery_codes: Vec<String>,
}

impl std::fmt::Debug for RecoveryCodesView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecoveryCodesView({} codes)", self.recovery_codes.len())
    }
}

impl From<Option<RecoveryCodes>> for RecoveryCodesView {
    fn from(codes: Option<RecoveryCodes>) -> Self {
        Self {
            recovery_codes: codes.map(|c| c.0).unwrap_or_default(),
        }
    }
}

/// A code as typed: six digits are the authenticator's, anything else is a recovery code.
fn second_factor(code: &str) -> SecondFactor<'_> {
    let digits = code.chars().filter(|c| !c.is_whitespace()).count();
    if digits == 6
        && code
            .chars()
            .all(|c| c.is_ascii_digit() || c.is_whitespace())
    {
        SecondFactor::Totp(code)
    } else {
        SecondFactor::RecoveryCode(code)
    }
}

/// Complete a sign-in that answered `mfa_required`, with a code of the authenticator app, a
/// recovery code, or a passkey's assertion.
#[utoipa::path(post, path = "/api/v1/auth/mfa", tag = "auth",
    request_body = CompleteSignInRequest,
    responses(
        (status = 200, description = "Signed in; the access token's `amr` has `mfa`", body = TokenPair),
        (status = 401, description = "`invalid_credentials`: the code is wrong or was used; `invalid_token`: the `mfa_token` is unknown, used or expired", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`account_banned` or `account_deleted` since the first step", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_error`: not exactly one of `totp_code`, `recovery_code` and `webauthn`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`: too many codes tried for this account or from this client", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn complete(
    State(app): State<AppState>,
    client: Client,
    ApiJson(body): ApiJson<CompleteSignInRequest>,
) -> Result<Response, ApiError> {
    let code = match (&body.totp_code, &body.recovery_code, &body.webauthn) {
        (Some(code), None, None) => SecondFactor::Totp(code.expose_secret()),
        (None, Some(code), None) => SecondFactor::RecoveryCode(code.expose_secret()),
        (None, None, Some(assertion)) => SecondFactor::Passkey(assertion),
        (None, None, None) => {
            return Err(ApiError::validation(
                "totp_code",
                "give one of `totp_code`, `recovery_code` and `webauthn`",
            ));
        }
        (_, Some(_), _) => {
            return Err(ApiError::validation(
                "recovery_code",
                "give only one of `totp_code`, `recovery_code` and `webauthn`",
            ));
        }
        (_, _, Some(_)) => {
            return Err(ApiError::validation(
                "webauthn",
                "give only one of `totp_code`, `recovery_code` and `webauthn`",
            ));
        }
    };
    app.limit("login_ip", app.limits.login_ip, client.ip_key())
        .await?;
    let pair = app
        .complete_sign_in(body.mfa_token.expose_secret(), code, client.0)
        .await?;
    Ok(no_store(Json(pair).into_response()))
}

/// Start setting up an authenticator app: a new secret, pending until confirmed with a code.
#[utoipa::path(post, path = "/api/v1/users/current/mfa/totp", tag = "two-factor",
    security(("bearer" = [])),
    request_body = CurrentPasswordRequest,
    responses(
        (status = 200, description = "Pending; confirm it with a code", body = TotpEnrolmentView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`invalid_credentials`: wrong `current_password`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`mfa_already_enabled`: an authenticator app is already set up", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn start_totp(
    State(app): State<AppState>,
    CurrentSession(subject): CurrentSession,
    ApiJson(body): ApiJson<CurrentPasswordRequest>,
) -> Result<Response, ApiError> {
    let enrolment = app
        .start_totp(
            subject,
            body.current_password.as_ref().map(|p| p.expose_secret()),
        )
        .await?;
    let view = TotpEnrolmentView {
        secret: enrolment.secret,
        otpauth_uri: enrolment.otpauth_uri,
    };
    Ok(no_store(Json(view).into_response()))
}

/// Confirm the pending authenticator app with a code from it: two-factor sign-in is on.
#[utoipa::path(post, path = "/api/v1/users/current/mfa/totp/confirm", tag = "two-factor",
    security(("bearer" = [])),
    request_body = ConfirmTotpRequest,
    responses(
        (status = 200, description = "On; the recovery codes are shown this once", body = RecoveryCodesView),
        (status = 400, description = "`invalid_code`: wrong code, or nothing to confirm", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`mfa_already_enabled`", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn confirm_totp(
    State(app): State<AppState>,
    CurrentSession(subject): CurrentSession,
    ApiJson(body): ApiJson<ConfirmTotpRequest>,
) -> Result<Response, ApiError> {
    let codes = app.confirm_totp(subject, body.code.expose_secret()).await?;
    Ok(no_store(
        Json(RecoveryCodesView::from(codes)).into_response(),
    ))
}

/// Remove the authenticator app, with the password and a code (from the app, or a recovery
/// code).
#[utoipa::path(delete, path = "/api/v1/users/current/mfa/totp", tag = "two-factor",
    security(("bearer" = [])),
    request_body = DisableTotpRequest,
    responses(
        (status = 204, description = "Removed; with no second factor left, so are the recovery codes"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`invalid_credentials`: wrong password or code", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No authenticator app is set up", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn disable_totp(
    State(app): State<AppState>,
    CurrentSession(subject): CurrentSession,
    ApiJson(body): ApiJson<DisableTotpRequest>,
) -> Result<StatusCode, ApiError> {
    app.disable_totp(
        subject,
        body.current_password.as_ref().map(|p| p.expose_secret()),
        second_factor(body.code.expose_secret()),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// New recovery codes; the old ones stop working.
#[utoipa::path(post, path = "/api/v1/users/current/mfa/recovery-codes", tag = "two-factor",
    security(("bearer" = [])),
    request_body = CurrentPasswordRequest,
    responses(
        (status = 200, description = "The new codes, shown this once", body = RecoveryCodesView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`invalid_credentials`: wrong `current_password`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`mfa_not_enabled`", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn regenerate_recovery_codes(
    State(app): State<AppState>,
    CurrentSession(subject): CurrentSession,
    ApiJson(body): ApiJson<CurrentPasswordRequest>,
) -> Result<Response, ApiError> {
    let codes = app
        .regenerate_recovery_codes(
            subject,
            body.current_password.as_ref().map(|p| p.expose_secret()),
        )
        .await?;
    Ok(no_store(
        Json(RecoveryCodesView::from(Some(codes))).into_response(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn six_digits_are_a_totp_code_anything_else_a_recovery_code() {
        for code in ["123456", "123 456", " 123456 "] {
            assert!(
                matches!(second_factor(code), SecondFactor::Totp(_)),
                "{code}"
            );
        }
        for code in ["12345", "1234567", "k3m9-2qwx-7pzr-c4vd", "١٢٣٤٥٦", ""] {
            assert!(
                matches!(second_factor(code), SecondFactor::RecoveryCode(_)),
                "{code}"
            );
        }
    }

    #[test]
    fn request_bodies_never_show_a_code_or_password() {
        const SECRET: &str = "k3m9-2qwx-7pzr-c4vd";
        let shown = [
            format!(
                "{:?}",
                serde_json::from_str::<CompleteSignInRequest>(&format!(
                    r#"{{"mfa_token":"{SECRET}","totp_code":"{SECRET}","recovery_code":"{SECRET}"}}"#
                ))
                .unwrap()
            ),
            format!(
                "{:?}",
                serde_json::from_str::<DisableTotpRequest>(&format!(
                    r#"{{"current_password":"{SECRET}","code":"{SECRET}"}}"#
                ))
                .unwrap()
            ),
            format!(
                "{:?}",
                serde_json::from_str::<ConfirmTotpRequest>(&format!(r#"{{"code":"{SECRET}"}}"#))
                    .unwrap()
            ),
            format!(
                "{:?}",
                RecoveryCodesView {
                    recovery_codes: vec![SECRET.into()]
                }
            ),
            format!(
                "{:?}",
                TotpEnrolmentView {
                    secret: SECRET.into(),
                    otpauth_uri: SECRET.into()
                }
            ),
        ];
        for debug in shown {
            assert!(!debug.contains(SECRET), "{debug}");
        }
    }
}
