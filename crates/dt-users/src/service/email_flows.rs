//! Email verification and password reset, and the email intents every use-case records.

use std::sync::Arc;

use tokio::task::JoinHandle;

use dt_users_domain::{AccountStatus, Email, NewPassword, PasswordRules, Timestamp, User};
use dt_users_store::{self as store, AnyConnection, NewOutboxRow, OutboxKind, TokenPurpose};
use uuid::Uuid;

use super::accounts::into_field_error;
use super::transaction::transact;
use super::{App, ServiceError};
use crate::email::{EmailIntent, EmailKind, NoParams, PasswordChangedParams};
use crate::security::access_token::TokenSubject;
use crate::security::secret_token::hash_secret;

/// The token an email carries: what it is for, and an end of life earlier than the TTL, if
/// any (a restoration link never outlives the grace period).
#[derive(Debug, Clone, Copy)]
pub(super) struct EmailToken {
    pub purpose: TokenPurpose,
    pub not_after: Option<Timestamp>,
}

impl From<TokenPurpose> for EmailToken {
    fn from(purpose: TokenPurpose) -> Self {
        Self {
            purpose,
            not_after: None,
        }
    }
}

/// How an email greets its user.
pub(super) fn greeting(user: &User) -> String {
    user.display_name
        .clone()
        .unwrap_or_else(|| user.username.as_str().to_owned())
}

/// Tokens are URL-safe base64 of 256 bits; anything else is refused before any lookup.
pub(super) fn plausible_token(token: &str) -> bool {
    token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// An emailed token, used, with its account locked.
pub(super) struct UsedToken {
    /// The account, locked until the transaction ends (`None` if it is gone).
    pub user: Option<User>,
    /// The address the token was sent to.
    pub sent_to: String,
}

impl App {
    /// Uses `token` for `purpose` in `tx` and locks its account — the account first, as every
    /// change of an account does, so that two links of one account used at once wait for each
    /// other instead of deadlocking.
    pub(super) async fn lock_token_owner(
        &self,
        tx: &mut AnyConnection,
        token: &str,
        purpose: TokenPurpose,
    ) -> Result<UsedToken, ServiceError> {
        if !plausible_token(token) {
            return Err(ServiceError::InvalidEmailToken);
        }
        let hash = hash_secret(token);
        let now = self.now();
        let peeked = store::peek_email_token(tx, &hash, purpose, now)
            .await?
            .ok_or(ServiceError::InvalidEmailToken)?;
        let user = store::lock_user(tx, peeked.user_id, self.db.dialect()).await?;
        let used = store::use_email_token(tx, &hash, purpose, now)
            .await?
            .ok_or(ServiceError::InvalidEmailToken)?;
        Ok(UsedToken {
            user,
            sent_to: used.email,
        })
    }

    /// Records an email intent in the outbox within the caller's transaction; with `token`,
    /// also the hash of the token the email will carry.
    pub(super) async fn queue_email(
        &self,
        conn: &mut AnyConnection,
        kind: EmailKind,
        user: &User,
        to: &str,
        token: Option<EmailToken>,
    ) -> Result<(), ServiceError> {
        let now = self.now();
        let name = kind.name();
        let intent = EmailIntent {
            id: Uuid::now_v7(),
            kind,
            user_id: user.id,
            to: to.to_owned(),
            name: greeting(user),
            token_key: token.map(|_| self.email_tokens.current_key_id().to_owned()),
        };
        if let Some(EmailToken { purpose, not_after }) = token {
            let token = self.email_tokens.token_for(intent.id);
            let ttl_end = now.plus_secs(self.policy.email_token_ttl.as_secs());
            let expires_at = not_after.map_or(ttl_end, |limit| ttl_end.min(limit));
            store::insert_email_token(
                conn,
                &hash_secret(&token),
                user.id,
                purpose,
                to,
                now,
                expires_at,
            )
            .await?;
        }
        let payload = serde_json::to_string(&intent).map_err(ServiceError::internal)?;
        let row = NewOutboxRow {
            id: intent.id,
            kind: OutboxKind::Email,
            name: name.to_owned(),
            user_id: user.id,
            payload,
        };
        store::insert_outbox(conn, &row, now).await?;
        Ok(())
    }

    /// Sends a fresh verification link to the caller's address (nothing when verified),
    /// counted per client address and per account address like every emailed link.
    #[tracing::instrument(skip_all, fields(user_id = %subject.user_id))]
    pub async fn request_email_verification(
        &self,
        subject: TokenSubject,
        client_ip: &str,
    ) -> Result<(), ServiceError> {
        let user = self.current_user(subject).await?;
        if user.email_verified {
            return Ok(());
        }
        self.limit("email_ip", self.limits.email_ip, client_ip)
            .await?;
        self.limit(
            "email_target",
            self.limits.email_target,
            &user.email.lookup_key(),
        )
        .await?;
        transact!(self, |tx| {
            let user = self.lock_active(tx, subject.user_id).await?;
            if !user.email_verified {
                store::revoke_email_tokens(tx, user.id, TokenPurpose::VerifyEmail, self.now())
                    .await?;
                self.queue_email(
                    tx,
                    EmailKind::VerifyEmail(NoParams),
                    &user,
                    user.email.as_str(),
                    Some(TokenPurpose::VerifyEmail.into()),
                )
                .await?;
            }
        })
    }

    /// Confirms an address with the token emailed to it. The token must have been sent to
    /// the account's current address.
    #[tracing::instrument(skip_all)]
    pub async fn verify_email(&self, token: &str) -> Result<User, ServiceError> {
        let user = transact!(self, |tx| {
            let live = self
                .lock_token_owner(tx, token, TokenPurpose::VerifyEmail)
                .await?;
            let sent_to = Email::lookup_key_of(&live.sent_to);
            let mut user = live
                .user
                .filter(|u| u.status == AccountStatus::Active && u.email.lookup_key() == sent_to)
                .ok_or(ServiceError::InvalidEmailToken)?;
            if let Some(verified) = user.verify_email(self.now()) {
                store::update_user(tx, &user).await?;
                self.record(tx, &verified).await?;
            }
            user
        })?;
        tracing::info!(user_id = %user.id, "email verified");
        Ok(user)
    }

    /// Starts a password reset. Answers the same, at once, whether or not the address has an
    /// account: the lookup and the email happen off the request path.
    pub fn forgot_password(self: &Arc<Self>, email: &str) -> JoinHandle<()> {
        let key = Email::lookup_key_of(email);
        self.after_response("password reset request", move |app| async move {
            app.send_password_reset(&key).await
        })
    }

    /// Runs `work` after the answer has gone, so that whether an address has an account never
    /// shows in the response or its timing.
    pub(super) fn after_response<F, Fut>(
        self: &Arc<Self>,
        what: &'static str,
        work: F,
    ) -> JoinHandle<()>
    where
        F: FnOnce(Arc<App>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), ServiceError>> + Send + 'static,
    {
        let app = self.clone();
        tokio::spawn(async move {
            if let Err(e) = work(app).await {
                tracing::warn!(error = %e, "{what} not recorded");
            }
        })
    }

    /// Locks the account registered under `email_key`, if there is one, in `tx`.
    pub(super) async fn lock_user_by_email(
        &self,
        conn: &mut AnyConnection,
        email_key: &str,
    ) -> Result<Option<User>, ServiceError> {
        let Some(user) = store::user_by_email(conn, email_key).await? else {
            return Ok(None);
        };
        Ok(store::lock_user(conn, user.id, self.db.dialect()).await?)
    }

    async fn send_password_reset(&self, email_key: &str) -> Result<(), ServiceError> {
        transact!(self, |tx| {
            let user = self
                .lock_user_by_email(tx, email_key)
                .await?
                .filter(|u| u.status == AccountStatus::Active);
            if let Some(user) = user {
                store::revoke_email_tokens(tx, user.id, TokenPurpose::ResetPassword, self.now())
                    .await?;
                self.queue_email(
                    tx,
                    EmailKind::PasswordReset(NoParams),
                    &user,
                    user.email.as_str(),
                    Some(TokenPurpose::ResetPassword.into()),
                )
                .await?;
                tracing::info!(user_id = %user.id, "password reset requested");
            }
        })
    }

    /// Sets a new password with a reset token; every session of the user ends.
    #[tracing::instrument(skip_all)]
    pub async fn reset_password(
        &self,
        token: &str,
        new_password: &str,
    ) -> Result<(), ServiceError> {
        if !plausible_token(token) {
            return Err(ServiceError::InvalidEmailToken);
        }
        let token_hash = hash_secret(token);
        let mut conn = self.db.pool().acquire().await?;
        let live = store::peek_email_token(
            &mut conn,
            &token_hash,
            TokenPurpose::ResetPassword,
            self.now(),
        )
        .await?
        .ok_or(ServiceError::InvalidEmailToken)?;
        let sent_to = Email::lookup_key_of(&live.email);
        let user = store::user_by_id(&mut conn, live.user_id)
            .await?
            .filter(|u| u.status == AccountStatus::Active && u.email.lookup_key() == sent_to)
            .ok_or(ServiceError::InvalidEmailToken)?;
        drop(conn);
        let mut errors = dt_users_domain::FieldErrors::new();
        let rules = PasswordRules {
            email: user.email.as_str(),
            username: user.username.as_str(),
        };
        let Some(password) = errors.check("new_password", NewPassword::parse(new_password, rules))
        else {
            return Err(into_field_error(errors));
        };
        let password_hash = self.hasher.hash(password.secret().clone()).await?;

        let user = transact!(self, |tx| {
            // The token is bound to the address it was sent to: an email change since kills it.
            let mut user = self
                .lock_token_owner(tx, token, TokenPurpose::ResetPassword)
                .await?
                .user
                .filter(|u| {
                    u.id == live.user_id
                        && u.status == AccountStatus::Active
                        && u.email.lookup_key() == sent_to
                })
                .ok_or(ServiceError::InvalidEmailToken)?;
            user.password_hash = Some(password_hash.clone());
            user.updated_at = self.now();
            store::update_user(tx, &user).await?;
            self.after_password_change(tx, &user, None).await?;
            user
        })?;
        self.revoke_after_commit(user.id, None).await;
        tracing::info!(user_id = %user.id, "password reset");
        Ok(())
    }

    /// What every password change does inside its transaction: older reset links die, a
    /// security notice goes out, and every session but `keep` ends (before the commit, so a
    /// new password never leaves an old session alive; the caller ends them once more after
    /// the commit, see [`App::revoke_after_commit`]).
    pub(super) async fn after_password_change(
        &self,
        conn: &mut AnyConnection,
        user: &User,
        keep: Option<Uuid>,
    ) -> Result<(), ServiceError> {
        let now = self.now();
        store::revoke_email_tokens(conn, user.id, TokenPurpose::ResetPassword, now).await?;
        let notice = EmailKind::PasswordChanged(PasswordChangedParams {
            changed_at: now.to_rfc3339(),
        });
        self.queue_email(conn, notice, user, user.email.as_str(), None)
            .await?;
        let ended = self.sessions.revoke_all(user.id, keep, now).await?;
        self.record_sessions_revoked(conn, user.id, &ended).await?;
        tracing::info!(user_id = %user.id, sessions = ended.len(), "password changed; sessions ended");
        Ok(())
    }
}
