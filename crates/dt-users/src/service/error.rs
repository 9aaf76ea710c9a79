use dt_users_domain::FieldError;
use dt_users_store::{Conflict, StoreError};

use crate::runner::BoxError;
use crate::security::password_hasher::HashError;
use crate::sessions::SessionStoreError;

/// Why a use-case refused or failed. Knows nothing of HTTP; `http::problem` maps it.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid input")]
    Validation(Vec<FieldError>),
    #[error("the password does not meet the policy")]
    WeakPassword(Vec<FieldError>),
    #[error("the email is already registered")]
    EmailTaken,
    #[error("the username is taken")]
    UsernameTaken,
    #[error("wrong email or password")]
    InvalidCredentials,
    #[error("the account was deleted; it can be restored until {restore_until:?}")]
    AccountDeleted {
        restore_until: dt_users_domain::Timestamp,
    },
    #[error("the account is banned")]
    AccountBanned,
    #[error("the current password is wrong")]
    WrongCurrentPassword,
    /// The password was right and a second factor is on: the sign-in goes on at
    /// `POST /auth/mfa` with `mfa_token` and one of `methods`.
    #[error("a second factor is required")]
    MfaRequired {
        mfa_token: secrecy::SecretString,
        methods: Vec<&'static str>,
    },
    /// The `mfa_token` of a second step is unknown, used, expired, or was overtaken by a
    /// revocation.
    #[error("the second-step token is invalid")]
    InvalidMfaToken,
    /// A wrong (or already used) code at the second step of a sign-in.
    #[error("the code is wrong")]
    WrongCode,
    /// A wrong code given to confirm a change of the signed-in account.
    #[error("the code is wrong")]
    WrongCurrentCode,
    /// A wrong code to confirm a TOTP enrolment, or no enrolment to confirm.
    #[error("the code does not confirm the enrolment")]
    InvalidCode,
    /// A passkey registration that does not answer the pending ceremony, fails verification,
    /// or is registered already.
    #[error("the passkey credential is invalid")]
    InvalidCredential,
    #[error("two-factor sign-in with this method is already on")]
    MfaAlreadyEnabled,
    #[error("two-factor sign-in is off")]
    MfaNotEnabled,
    #[error("no access token was presented")]
    NotAuthenticated,
    #[error("the access token is invalid")]
    InvalidAccessToken,
    #[error("the access token has expired")]
    AccessTokenExpired,
    #[error("the session has ended")]
    SessionRevoked,
    #[error("the refresh token is invalid")]
    InvalidRefreshToken,
    #[error("the refresh token was already used; the session has been ended")]
    RefreshTokenReused,
    #[error("the emailed token is unknown, used or expired")]
    InvalidEmailToken,
    #[error("rate limited by {rule}")]
    RateLimited {
        rule: &'static str,
        quota: crate::security::rate_limit::Quota,
        decision: crate::security::rate_limit::Decision,
    },
    #[error("not found")]
    NotFound,
    /// A `redirect_uri` that is not on the allow-list (or not written as it is there).
    #[error("the redirect_uri is not allowed")]
    InvalidRedirectUri,
    /// A provider callback whose `state` is unknown, used or expired, or that comes from a
    /// browser other than the one that started the flow.
    #[error("the sign-in flow is unknown, used, expired or from another browser")]
    InvalidState,
    /// A `login_code` that is unknown, used or expired.
    #[error("the login code is invalid")]
    InvalidLoginCode,
    /// A provider identity whose email is an account's already: never linked by itself.
    #[error("an account with this email exists")]
    AccountExists,
    /// The account's last way to sign in cannot be removed.
    #[error("the last way to sign in cannot be removed")]
    LastSignInMethod,
    /// A new account's identity was linked by a concurrent request (never leaves the
    /// use-cases).
    #[error("the identity was linked meanwhile")]
    IdentityRace,
    /// Password hashing is saturated: shed at once, not queued.
    #[error("password hashing is overloaded")]
    Overloaded,
    /// The database or the session store cannot be reached (the source says which).
    #[error("a dependency is unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// The database refused for a passing reason (deadlock, lock wait, failover); the
    /// transaction rolled back whole and may be run again.
    #[error("the database is busy: {0}")]
    Busy(#[source] StoreError),
    #[error("internal error: {0}")]
    Internal(#[source] BoxError),
}

impl ServiceError {
    /// True when the failed transaction may succeed if run again.
    pub fn is_busy(&self) -> bool {
        matches!(self, Self::Busy(_))
    }

    /// An internal error of `cause` (an error, or a message).
    pub fn internal(cause: impl Into<BoxError>) -> Self {
        Self::Internal(cause.into())
    }
}

impl From<StoreError> for ServiceError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict(Conflict::Email) => Self::EmailTaken,
            StoreError::Conflict(Conflict::Username) => Self::UsernameTaken,
            err @ StoreError::Unavailable(_) => Self::Unavailable(Box::new(err)),
            err @ StoreError::Busy(_) => Self::Busy(err),
            other => Self::Internal(Box::new(other)),
        }
    }
}

impl From<sqlx::Error> for ServiceError {
    fn from(err: sqlx::Error) -> Self {
        StoreError::from(err).into()
    }
}

impl From<SessionStoreError> for ServiceError {
    fn from(err: SessionStoreError) -> Self {
        match err {
            err @ SessionStoreError::Unavailable(_) => Self::Unavailable(Box::new(err)),
            err @ SessionStoreError::Corrupt(_) => Self::Internal(Box::new(err)),
        }
    }
}

impl From<HashError> for ServiceError {
    fn from(err: HashError) -> Self {
        match err {
            HashError::Overloaded => Self::Overloaded,
            err @ HashError::Failed(_) => Self::Internal(Box::new(err)),
        }
    }
}
