//! Email change with the consent of both mailboxes. The new address takes effect only when it
//! is confirmed from the new mailbox; the old one is told, with a link that cancels the change
//! — or reverts it, ending every session, if it was already confirmed.

use dt_users_domain::{AccountStatus, Email, User};
use dt_users_store::{self as store, AnyConnection, TokenPurpose};

use super::transaction::transact;
use super::{App, ServiceError};
use crate::email::{EmailChangeNoticeParams, EmailKind, NoParams};

/// What a cancel link did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The change was still waiting for confirmation: it is dropped.
    Cancelled,
    /// The change had been confirmed: the old address is back and every session has ended.
    Reverted,
}

impl CancelOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cancelled => "cancelled",
            Self::Reverted => "reverted",
        }
    }
}

impl App {
    /// Records `address` as the account's pending email (replacing any earlier request) and
    /// queues the confirmation to it and the notice to the current address, in `conn`'s
    /// transaction. An address that another account has (or may take back) gets no
    /// confirmation, but the answer is the same: the request tells nobody who is registered.
    pub(super) async fn start_email_change(
        &self,
        conn: &mut AnyConnection,
        user: &mut User,
        address: Email,
    ) -> Result<(), ServiceError> {
        let now = self.now();
        self.drop_pending_email_change(conn, user).await?;
        let key = address.lookup_key();
        let taken = store::user_by_email(conn, &key).await?.is_some()
            || store::address_reserved(conn, &key, Some(user.id), now).await?;
        user.pending_email = Some(address.clone());
        if taken {
            tracing::info!(user_id = %user.id, "email change to a registered address: no confirmation sent");
        } else {
            self.queue_email(
                conn,
                EmailKind::EmailChangeConfirm(NoParams),
                user,
                address.as_str(),
                Some(TokenPurpose::ConfirmEmailChange.into()),
            )
            .await?;
        }
        let notice = EmailKind::EmailChangeNotice(EmailChangeNoticeParams {
            new_email_masked: address.masked(),
            requested_at: now.to_rfc3339(),
        });
        let to = user.email.as_str().to_owned();
        self.queue_email(
            conn,
            notice,
            user,
            &to,
            Some(TokenPurpose::CancelEmailChange.into()),
        )
        .await?;
        tracing::info!(user_id = %user.id, "email change requested");
        Ok(())
    }

    /// Ends the links of the change waiting for confirmation, if any: its confirmation, and the
    /// cancel link sent to the current address. Cancel links of changes already confirmed were
    /// sent to earlier addresses and stay valid.
    pub(super) async fn drop_pending_email_change(
        &self,
        conn: &mut AnyConnection,
        user: &User,
    ) -> Result<(), ServiceError> {
        let now = self.now();
        store::revoke_email_tokens(conn, user.id, TokenPurpose::ConfirmEmailChange, now).await?;
        store::revoke_email_tokens_sent_to(
            conn,
            user.id,
            TokenPurpose::CancelEmailChange,
            &user.email.lookup_key(),
            now,
        )
        .await?;
        Ok(())
    }

    /// Confirms an email change with the token sent to the new address.
    #[tracing::instrument(skip_all)]
    pub async fn confirm_email_change(&self, token: &str) -> Result<User, ServiceError> {
        let now = self.now();
        let user = transact!(self, |tx| {
            let live = self
                .lock_token_owner(tx, token, TokenPurpose::ConfirmEmailChange)
                .await?;
            let mut user = live
                .user
                .filter(|u| u.status == AccountStatus::Active)
                .ok_or(ServiceError::InvalidEmailToken)?;
            let address = user
                .pending_email
                .take()
                .filter(|p| p.lookup_key() == Email::lookup_key_of(&live.sent_to))
                .ok_or(ServiceError::InvalidEmailToken)?;
            // Someone registered the address meanwhile, or it may go back to its former owner.
            if store::address_reserved(tx, &address.lookup_key(), Some(user.id), now).await? {
                return Err(ServiceError::EmailTaken);
            }
            let verified = user.confirm_email_change(address, now);
            store::update_user(tx, &user).await?;
            // Everything sent to the old address dies with the change — but the cancel links,
            // which exist to undo it.
            store::revoke_email_tokens_except(
                tx,
                user.id,
                Some(TokenPurpose::CancelEmailChange),
                now,
            )
            .await?;
            self.record(tx, &verified).await?;
            user
        })?;
        tracing::info!(user_id = %user.id, "email change confirmed");
        Ok(user)
    }

    /// Cancels an email change with the link sent to the old address, or reverts it if it
    /// was confirmed already: the old address comes back, every other emailed link dies and
    /// every session ends.
    #[tracing::instrument(skip_all)]
    pub async fn cancel_email_change(&self, token: &str) -> Result<CancelOutcome, ServiceError> {
        let now = self.now();
        let (user_id, outcome) = transact!(self, |tx| {
            let live = self
                .lock_token_owner(tx, token, TokenPurpose::CancelEmailChange)
                .await?;
            // A deleted account is reverted too: its old owner can then ask for the
            // restoration email at the address that is theirs again.
            let mut user = live.user.ok_or(ServiceError::InvalidEmailToken)?;
            let old_key = Email::lookup_key_of(&live.sent_to);
            if user.email.lookup_key() == old_key {
                // Not confirmed (yet): drop the change.
                self.drop_pending_email_change(tx, &user).await?;
                if user.pending_email.take().is_some() {
                    user.updated_at = now;
                    store::update_user(tx, &user).await?;
                }
                (user.id, CancelOutcome::Cancelled)
            } else {
                // Confirmed already: whoever confirmed it may hold the account. The old
                // address comes back (its owner has just shown they read it), and everything
                // else ends.
                if store::user_by_email(tx, &old_key)
                    .await?
                    .is_some_and(|other| other.id != user.id)
                {
                    return Err(ServiceError::EmailTaken);
                }
                user.email = Email::from_trusted(live.sent_to);
                user.email_verified = true;
                user.pending_email = None;
                user.updated_at = now;
                store::update_user(tx, &user).await?;
                store::revoke_email_tokens_except(tx, user.id, None, now).await?;
                let ended = self.sessions.revoke_all(user.id, None, now).await?;
                self.record_sessions_revoked(tx, user.id, &ended).await?;
                (user.id, CancelOutcome::Reverted)
            }
        })?;
        if outcome == CancelOutcome::Reverted {
            self.revoke_after_commit(user_id, None).await;
        }
        tracing::info!(%user_id, outcome = outcome.as_str(), "email change cancelled");
        Ok(outcome)
    }
}
