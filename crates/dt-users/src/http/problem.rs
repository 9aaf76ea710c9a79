//! RFC 9457 problem documents: the one error format of every response, including the
//! framework's own rejections. Domain errors are mapped to HTTP here and nowhere else.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dt_users_domain::FieldError;
use serde::Serialize;

use crate::service::ServiceError;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// A problem document as sent.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `urn:problem-type:dt-users:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Stable snake_case identifier clients can switch on.
    pub code: String,
    /// Field errors of a 422.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldErrorView>>,
    /// Members particular to a problem (`restore_until` of `account_deleted`).
    #[serde(flatten)]
    #[schema(ignore)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FieldErrorView {
    pub field: String,
    pub message: String,
}

impl From<FieldError> for FieldErrorView {
    fn from(e: FieldError) -> Self {
        Self {
            field: e.field,
            message: e.message,
        }
    }
}

/// What the access log should know of an error response: its code, and for server errors
/// the cause, which is logged once there and never sent to the client.
#[derive(Debug, Clone)]
pub struct ProblemLog {
    pub code: &'static str,
    pub cause: Option<String>,
}

/// A problem about to be sent.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    title: &'static str,
    detail: Option<String>,
    errors: Option<Vec<FieldError>>,
    extensions: serde_json::Map<String, serde_json::Value>,
    headers: Vec<(&'static str, String)>,
    bearer_error: Option<&'static str>,
    cause: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, title: &'static str) -> Self {
        Self {
            status,
            code,
            title,
            detail: None,
            errors: None,
            extensions: serde_json::Map::new(),
            headers: Vec::new(),
            bearer_error: None,
            cause: None,
        }
    }

    /// Adds a member to the problem document.
    pub fn extension(mut self, name: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extensions.insert(name.to_owned(), value.into());
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Adds `Cache-Control: no-store`: the problem carries a secret (a second step's token).
    fn no_store(mut self) -> Self {
        self.headers.push(("cache-control", "no-store".to_owned()));
        self
    }

    /// Adds `Retry-After` (seconds).
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.headers.push(("retry-after", secs.to_string()));
        self
    }

    pub fn field_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.errors = Some(errors);
        self
    }

    /// A 401 carries `WWW-Authenticate: Bearer`, with `error="invalid_token"` when a token
    /// was presented and refused (RFC 6750).
    fn bearer(mut self, error: Option<&'static str>) -> Self {
        self.bearer_error = Some(error.unwrap_or(""));
        self
    }

    fn cause(mut self, cause: String) -> Self {
        self.cause = Some(cause);
        self
    }

    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
            "The request is invalid",
        )
        .detail("One or more fields are invalid.")
        .field_errors(vec![FieldError::new(field, message)])
    }

    /// The generic problem for a status the framework produced on its own.
    pub fn for_status(status: StatusCode) -> Self {
        let (code, title) = match status {
            StatusCode::BAD_REQUEST => ("bad_request", "The request is malformed"),
            StatusCode::UNAUTHORIZED => ("not_authenticated", "Authentication is required"),
            StatusCode::NOT_FOUND => ("not_found", "Not found"),
            StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "Method not allowed"),
            StatusCode::REQUEST_TIMEOUT => ("request_timeout", "The request took too long"),
            StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "The request body is too large"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                ("unsupported_media_type", "Unsupported content type")
            }
            StatusCode::UNPROCESSABLE_ENTITY => ("validation_error", "The request is invalid"),
            StatusCode::TOO_MANY_REQUESTS => ("rate_limited", "Too many requests"),
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => {
                ("unavailable", "The service is temporarily unavailable")
            }
            s if s.is_server_error() => ("internal_error", "Internal server error"),
            _ => ("bad_request", "The request cannot be served"),
        };
        let bearer = status == StatusCode::UNAUTHORIZED;
        let error = Self::new(status, code, title);
        if bearer { error.bearer(None) } else { error }
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        use StatusCode as S;
        const INVALID_TOKEN: Option<&str> = Some("invalid_token");
        match err {
            ServiceError::Validation(errors) => Self::new(
                S::UNPROCESSABLE_ENTITY,
                "validation_error",
                "The request is invalid",
            )
            .detail("One or more fields are invalid.")
            .field_errors(errors),
            ServiceError::WeakPassword(errors) => Self::new(
                S::UNPROCESSABLE_ENTITY,
                "weak_password",
                "The password is too weak",
            )
            .detail("The password does not meet the password policy.")
            .field_errors(errors),
            ServiceError::EmailTaken => {
                Self::new(S::CONFLICT, "email_taken", "Email already registered")
                    .detail("An account with this email already exists.")
            }
            ServiceError::UsernameTaken => {
                Self::new(S::CONFLICT, "username_taken", "Username taken")
                    .detail("This username is already in use.")
            }
            ServiceError::InvalidCredentials => Self::new(
                S::UNAUTHORIZED,
                "invalid_credentials",
                "Invalid credentials",
            )
            .detail("The email or password is wrong.")
            .bearer(None),
            ServiceError::AccountDeleted { restore_until } => Self::new(S::FORBIDDEN, "account_deleted", "Account deleted")
                .detail("This account was deleted. It can be restored with the link sent by email until `restore_until`.")
                .extension("restore_until", restore_until.to_rfc3339()),
            ServiceError::AccountBanned => Self::new(S::FORBIDDEN, "account_banned", "Account banned")
                .detail("This account was banned by the moderators."),
            ServiceError::WrongCurrentPassword => {
                Self::new(S::FORBIDDEN, "invalid_credentials", "Invalid credentials")
                    .detail("The current password is wrong.")
            }
            ServiceError::MfaRequired { mfa_token, methods } => Self::new(
                S::FORBIDDEN,
                "mfa_required",
                "Second factor required",
            )
            .detail("The password is right; complete the sign-in at POST /api/v1/auth/mfa with `mfa_token` and a second factor.")
            .extension("mfa_token", secrecy::ExposeSecret::expose_secret(&mfa_token))
            .extension("methods", methods)
            .no_store(),
            ServiceError::InvalidMfaToken => Self::new(S::UNAUTHORIZED, "invalid_token", "Invalid token")
                .detail("The `mfa_token` is unknown, used or expired; sign in again.")
                .bearer(INVALID_TOKEN),
            ServiceError::WrongCode => Self::new(
                S::UNAUTHORIZED,
                "invalid_credentials",
                "Invalid credentials",
            )
            .detail("The code is wrong or was already used.")
            .bearer(None),
            ServiceError::WrongCurrentCode => {
                Self::new(S::FORBIDDEN, "invalid_credentials", "Invalid credentials")
                    .detail("The code is wrong or was already used.")
            }
            ServiceError::InvalidCode => Self::new(S::BAD_REQUEST, "invalid_code", "Invalid code")
                .detail("The code does not match the pending authenticator; start the set-up again if it keeps failing."),
            ServiceError::InvalidCredential => Self::new(S::BAD_REQUEST, "invalid_credential", "Invalid passkey")
                .detail("The passkey does not answer the registration started (or it expired after 5 minutes), failed verification, or is registered already."),
            ServiceError::MfaAlreadyEnabled => Self::new(
                S::CONFLICT,
                "mfa_already_enabled",
                "Two-factor sign-in already on",
            )
            .detail("An authenticator app is already set up; remove it first to set up another."),
            ServiceError::MfaNotEnabled => Self::new(S::CONFLICT, "mfa_not_enabled", "Two-factor sign-in is off")
                .detail("Turn two-factor sign-in on first."),
            ServiceError::NotAuthenticated => Self::new(
                S::UNAUTHORIZED,
                "not_authenticated",
                "Authentication is required",
            )
            .detail("Send an access token as `Authorization: Bearer <token>`.")
            .bearer(None),
            ServiceError::InvalidAccessToken => {
                Self::new(S::UNAUTHORIZED, "invalid_token", "Invalid token")
                    .detail("The access token is malformed or not valid for this service.")
                    .bearer(INVALID_TOKEN)
            }
            ServiceError::AccessTokenExpired => {
                Self::new(S::UNAUTHORIZED, "token_expired", "Token expired")
                    .detail("The access token has expired; refresh it.")
                    .bearer(INVALID_TOKEN)
            }
            ServiceError::SessionRevoked => {
                Self::new(S::UNAUTHORIZED, "session_revoked", "Session ended")
                    .detail("The session of this token has ended; sign in again.")
                    .bearer(INVALID_TOKEN)
            }
            ServiceError::InvalidRefreshToken => {
                Self::new(S::UNAUTHORIZED, "invalid_token", "Invalid token")
                    .detail("The refresh token is unknown, expired or already used.")
                    .bearer(INVALID_TOKEN)
            }
            ServiceError::RefreshTokenReused => Self::new(
                S::UNAUTHORIZED,
                "refresh_token_reused",
                "Refresh token reused",
            )
            .detail(
                "This refresh token was already used; its session has been ended. Sign in again.",
            )
            .bearer(INVALID_TOKEN),
            ServiceError::InvalidEmailToken => {
                Self::new(S::BAD_REQUEST, "invalid_token", "Invalid token")
                    .detail("The token is unknown, already used or expired.")
            }
            ServiceError::RateLimited { rule, quota, decision } => {
                let ceil_secs = |ms: i64| (ms.max(0) + 999) / 1000;
                let retry_after = ceil_secs(decision.retry_after_ms).max(1);
                let window = quota.period_secs.saturating_mul(u64::from(quota.burst)) / u64::from(quota.per_period.max(1));
                let mut error = Self::new(S::TOO_MANY_REQUESTS, "rate_limited", "Too many requests")
                    .detail(format!("Too many requests; try again in {retry_after} s."));
                error.headers = vec![
                    ("retry-after", retry_after.to_string()),
                    ("ratelimit-policy", format!("\"{rule}\";q={};w={}", quota.burst, window.max(1))),
                    ("ratelimit", format!("\"{rule}\";r=0;t={}", ceil_secs(decision.reset_ms))),
                ];
                error
            }
            ServiceError::NotFound => Self::new(S::NOT_FOUND, "not_found", "Not found"),
            ServiceError::InvalidRedirectUri => {
                Self::new(S::BAD_REQUEST, "invalid_redirect_uri", "Redirect URI not allowed")
                    .detail("redirect_uri must be one of the configured DT_USERS_OAUTH_REDIRECT_URIS, written exactly as there.")
            }
            ServiceError::InvalidState => {
                Self::new(S::BAD_REQUEST, "invalid_state", "Sign-in flow not recognised")
                    .detail("The sign-in flow is unknown, was used already, has expired, or was started in another browser: start again.")
            }
            ServiceError::InvalidLoginCode => {
                Self::new(S::BAD_REQUEST, "invalid_token", "Invalid login code")
                    .detail("The login code is unknown, used or expired: sign in again.")
            }
            ServiceError::AccountExists => {
                Self::new(S::CONFLICT, "account_exists", "An account with this email exists")
                    .detail("Sign in to that account, then link this provider from it.")
            }
            ServiceError::LastSignInMethod => {
                Self::new(S::CONFLICT, "last_sign_in_method", "Last way to sign in")
                    .detail("Set a password or add a passkey or another provider first.")
            }
            ServiceError::Overloaded => {
                Self::new(S::SERVICE_UNAVAILABLE, "overloaded", "Service overloaded")
                    .detail("Too many sign-ins are being checked right now; try again in a moment.")
            }
            ServiceError::Unavailable(_) | ServiceError::Busy(_) => {
                Self::new(S::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable")
                    .detail("A dependency is unavailable; try again shortly.")
                    .cause(err.to_string())
            }
            ServiceError::Internal(_) | ServiceError::IdentityRace => Self::new(
                S::INTERNAL_SERVER_ERROR,
                "internal_error",
                "Internal server error",
            )
            .cause(err.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Problem {
            kind: format!("urn:problem-type:dt-users:{}", self.code),
            title: self.title.to_owned(),
            status: self.status.as_u16(),
            detail: self.detail,
            code: self.code.to_owned(),
            errors: self.errors.map(|e| e.into_iter().map(Into::into).collect()),
            extensions: self.extensions,
        };
        let json = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (self.status, json).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(error) = self.bearer_error {
            let value = if error.is_empty() {
                HeaderValue::from_static("Bearer realm=\"dt-users\"")
            } else {
                HeaderValue::from_static("Bearer realm=\"dt-users\", error=\"invalid_token\"")
            };
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        for (name, value) in &self.headers {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(*name, value);
            }
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response.extensions_mut().insert(ProblemLog {
            code: self.code,
            cause: self.cause,
        });
        response
    }
}

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}
