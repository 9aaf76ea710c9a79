use dt_users_domain::{
    AccountStatus, DisplayName, Email, Event, FieldErrors, NewPassword, PasswordRules, User,
    Username,
};

use dt_users_store::{self as store, TokenPurpose};
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use super::transaction::transact;
use super::{App, ServiceError};
use crate::email::{EmailKind, NoParams};
use crate::security::access_token::TokenSubject;

/// A registration as received; parsed into domain types by [`App::register`].
#[derive(Debug)]
pub struct RegisterInput {
    pub email: String,
    pub username: String,
    pub password: SecretString,
    pub display_name: Option<String>,
}

/// Splits password-policy failures (422 `weak_password`) from other field errors (422
/// `validation_error`): a request with only a weak password says so specifically.
pub(super) fn into_field_error(errors: FieldErrors) -> ServiceError {
    let only_password = errors
        .fields()
        .all(|f| f == "password" || f == "new_password");
    if only_password {
        ServiceError::WeakPassword(errors.into_vec())
    } else {
        ServiceError::Validation(errors.into_vec())
    }
}

impl App {
    #[tracing::instrument(skip_all)]
    pub async fn register(&self, input: RegisterInput) -> Result<User, ServiceError> {
        let mut errors = FieldErrors::new();
        let email = errors.check("email", Email::parse(&input.email));
        let username = errors.check("username", Username::parse(&input.username));
        let display_name = input
            .display_name
            .as_deref()
            .and_then(|d| errors.check("display_name", DisplayName::parse(d)))
            .flatten();
        let password = errors.check(
            "password",
            NewPassword::parse(
                input.password.expose_secret(),
                PasswordRules {
                    email: &input.email,
                    username: &input.username,
                },
            ),
        );
        let (Some(email), Some(username), Some(password), true) =
            (email, username, password, errors.is_empty())
        else {
            return Err(into_field_error(errors));
        };

        // Refuse known duplicates before spending a password hash on them; the unique keys
        // still decide races.
        let mut conn = self.db.pool().acquire().await?;
        if store::user_by_email(&mut conn, &email.lookup_key())
            .await?
            .is_some()
            || store::address_reserved(&mut conn, &email.lookup_key(), None, self.now()).await?
        {
            return Err(ServiceError::EmailTaken);
        }
        if store::user_by_username(&mut conn, &username.lookup_key())
            .await?
            .is_some()
        {
            return Err(ServiceError::UsernameTaken);
        }
        drop(conn);

        let password_hash = self.hasher.hash(password.secret().clone()).await?;
        let now = self.now();
        let user = User {
            id: Uuid::now_v7(),
            email,
            email_verified: false,
            pending_email: None,
            username,
            display_name: display_name.map(|d| d.as_str().to_owned()),
            bio: None,
            avatar_url: None,
            password_hash: Some(password_hash),
            status: AccountStatus::Active,
            banned: false,
            created_at: now,
            updated_at: now,
            deleted_at: None,
            purge_after: None,
            mfa_enabled: false,
        };
        transact!(self, |tx| {
            store::insert_user(tx, &user).await?;
            self.record(tx, &Event::registered(&user)).await?;
            self.queue_email(
                tx,
                EmailKind::Welcome(NoParams),
                &user,
                user.email.as_str(),
                Some(TokenPurpose::VerifyEmail.into()),
            )
            .await?;
        })?;
        tracing::info!(user_id = %user.id, "account registered");
        Ok(user)
    }

    /// The signed-in user's own account.
    pub async fn current_user(&self, subject: TokenSubject) -> Result<User, ServiceError> {
        let mut conn = self.db.pool().acquire().await?;
        store::user_by_id(&mut conn, subject.user_id)
            .await?
            .filter(|u| u.status == AccountStatus::Active)
            .ok_or(ServiceError::SessionRevoked)
    }

    /// An active account's public profile.
    pub async fn public_profile(&self, username: &str) -> Result<User, ServiceError> {
        if Username::parse(username).is_err() {
            return Err(ServiceError::NotFound);
        }
        let mut conn = self.db.pool().acquire().await?;
        store::user_by_username(&mut conn, &username.to_ascii_lowercase())
            .await?
            .filter(|u| u.status == AccountStatus::Active)
            .ok_or(ServiceError::NotFound)
    }
}
