//! Account deletion that can be undone: soft delete, restoration within the grace period,
//! erasure after it, and the export of everything held about a user.

use dt_users_domain::{Email, Timestamp, User};
use dt_users_store::{self as store, TokenPurpose};
use uuid::Uuid;

use super::email_flows::EmailToken;
use super::transaction::transact;
use super::{App, ServiceError};
use crate::email::{AccountRestoreParams, EmailKind};
use crate::security::access_token::TokenSubject;
use crate::sessions::Session;

/// Everything dt-users holds about one user (GDPR right of access).
#[derive(Debug)]
pub struct AccountExport {
    pub user: User,
    pub sessions: Vec<Session>,
    pub email_tokens: Vec<store::TokenRecord>,
    pub emails: Vec<store::EmailRecord>,
    /// The authenticator app set up, if any (its secret is not exported).
    pub totp: Option<store::TotpRecord>,
    pub recovery_codes_left: u64,
    /// The passkeys (their names and dates are shown; their keys are not).
    pub passkeys: Vec<store::PasskeyRecord>,
    /// The provider identities linked.
    pub identities: Vec<store::IdentityRecord>,
}

impl App {
    /// Deletes the caller's account, reversibly: every session ends, a restoration email goes
    /// out, and the account is erased once the grace period is over.
    #[tracing::instrument(skip_all, fields(user_id = %subject.user_id))]
    pub async fn delete_account(
        &self,
        subject: TokenSubject,
        password: Option<&str>,
    ) -> Result<Timestamp, ServiceError> {
        let user = self.current_user(subject).await?;
        self.confirm_owner(&user, subject, password, "password")
            .await?;
        let now = self.now();
        let restore_until = now.plus_secs(self.policy.deletion_grace.as_secs());
        let ended = transact!(self, |tx| {
            let mut user = store::lock_user(tx, user.id, self.db.dialect())
                .await?
                .ok_or(ServiceError::SessionRevoked)?;
            let deleted = user
                .delete(restore_until, now)
                .map_err(|_| ServiceError::SessionRevoked)?;
            store::update_user(tx, &user).await?;
            // Cancel links stay: an intruder who changed the address and then deleted the
            // account is undone by the old mailbox — the address comes back, and with it the
            // restoration.
            store::revoke_email_tokens_except(
                tx,
                user.id,
                Some(TokenPurpose::CancelEmailChange),
                now,
            )
            .await?;
            self.queue_restore_email(tx, &user, restore_until).await?;
            self.record(tx, &deleted).await?;
            // Sessions end before the deletion commits: no token outlives it. (`deleted`
            // tells other services that every session ended; no `sessions_revoked`.)
            self.sessions.revoke_all(user.id, None, now).await?
        })?;
        self.revoke_after_commit(user.id, None).await;
        tracing::info!(sessions = ended.len(), restore_until = %restore_until.to_rfc3339(), "account deleted");
        Ok(restore_until)
    }

    async fn queue_restore_email(
        &self,
        conn: &mut store::AnyConnection,
        user: &User,
        restore_until: Timestamp,
    ) -> Result<(), ServiceError> {
        let email = EmailKind::AccountRestore(AccountRestoreParams {
            restore_until: restore_until.to_rfc3339(),
        });
        self.queue_email(
            conn,
            email,
            user,
            user.email.as_str(),
            Some(EmailToken {
                purpose: TokenPurpose::RestoreAccount,
                not_after: Some(restore_until),
            }),
        )
        .await
    }

    /// Restores a deleted account with the token from the restoration email. Does not sign
    /// the user in. Serialized with erasure by the account's row lock: of a restore and an
    /// erasure racing, exactly one happens.
    #[tracing::instrument(skip_all)]
    pub async fn restore_account(&self, token: &str) -> Result<User, ServiceError> {
        let now = self.now();
        let user = transact!(self, |tx| {
            // The account first (as erasure does), then the token.
            let live = self
                .lock_token_owner(tx, token, TokenPurpose::RestoreAccount)
                .await?;
            let mut user = live.user.ok_or(ServiceError::InvalidEmailToken)?;
            let restored = user
                .restore(now)
                .map_err(|_| ServiceError::InvalidEmailToken)?;
            store::update_user(tx, &user).await?;
            self.record(tx, &restored).await?;
            user
        })?;
        tracing::info!(user_id = %user.id, "account restored");
        Ok(user)
    }

    /// Sends a fresh restoration email if `email` belongs to a deleted, not yet erased
    /// account. Answers the same, at once, either way: the work happens off the request path.
    pub fn request_restore(
        self: &std::sync::Arc<Self>,
        email: &str,
    ) -> tokio::task::JoinHandle<()> {
        let key = Email::lookup_key_of(email);
        self.after_response("restoration request", move |app| async move {
            app.send_restore_email(&key).await
        })
    }

    async fn send_restore_email(&self, email_key: &str) -> Result<(), ServiceError> {
        let now = self.now();
        transact!(self, |tx| {
            let user = self
                .lock_user_by_email(tx, email_key)
                .await?
                .filter(|u| u.is_restorable(now));
            let due = user.and_then(|u| u.purge_after.map(|p| (u, p)));
            if let Some((user, restore_until)) = due {
                store::revoke_email_tokens(tx, user.id, TokenPurpose::RestoreAccount, now).await?;
                self.queue_restore_email(tx, &user, restore_until).await?;
                tracing::info!(user_id = %user.id, "restoration email requested");
            }
        })
    }

    /// Erases up to `batch` accounts whose grace period ended by `now`; returns how many.
    pub async fn purge_due_accounts(
        &self,
        now: Timestamp,
        batch: i64,
    ) -> Result<usize, ServiceError> {
        let due = {
            let mut conn = self.db.pool().acquire().await?;
            store::due_for_purge(&mut conn, now, batch).await?
        };
        let mut erased = 0;
        for user_id in due {
            if self.erase_account(user_id, now).await? {
                erased += 1;
            }
        }
        if erased > 0 {
            metrics::counter!("accounts_purged_total").increment(erased as u64);
        }
        Ok(erased)
    }

    /// Erases one account if it is still deleted and due (a restore may have won the race).
    /// Idempotent: an account already erased is simply not found.
    pub async fn erase_account(&self, user_id: Uuid, now: Timestamp) -> Result<bool, ServiceError> {
        let erased = transact!(self, |tx| {
            let purged = store::lock_user(tx, user_id, self.db.dialect())
                .await?
                .and_then(|u| u.purge(now).ok());
            if let Some(purged) = &purged {
                store::erase_user(tx, user_id).await?;
                self.record(tx, purged).await?;
                self.sessions.revoke_all(user_id, None, now).await?;
            }
            purged.is_some()
        })?;
        if erased {
            self.revoke_after_commit(user_id, None).await;
            tracing::info!(%user_id, "account erased");
        }
        Ok(erased)
    }

    /// Everything held about the caller.
    pub async fn export_account(
        &self,
        subject: TokenSubject,
    ) -> Result<AccountExport, ServiceError> {
        let user = self.current_user(subject).await?;
        let sessions = self.sessions.list(user.id, self.now()).await?;
        let mut conn = self.db.pool().acquire().await?;
        let email_tokens = store::email_tokens_of(&mut conn, user.id).await?;
        let emails = store::emails_of(&mut conn, user.id).await?;
        let totp = store::totp_of(&mut conn, user.id).await?;
        let recovery_codes_left = store::recovery_codes_left(&mut conn, user.id).await?;
        let passkeys = store::passkeys_of(&mut conn, user.id).await?;
        let identities = store::identities_of(&mut conn, user.id).await?;
        Ok(AccountExport {
            user,
            sessions,
            email_tokens,
            emails,
            totp,
            recovery_codes_left,
            passkeys,
            identities,
        })
    }
}
