//! Commands from other services (moderation): ban, unban, revoke sessions. Each command is
//! applied once however often it is delivered: its id is recorded in the transaction of its
//! effect.

use dt_users_store as store;

use super::transaction::transact;
use super::{App, ServiceError};

/// The commands are part of the domain's contract; the service re-exports them.
pub use dt_users_domain::{Command, CommandOutcome};

impl App {
    #[tracing::instrument(skip_all, fields(command_id = %id, command = command.type_name()))]
    pub async fn apply_command(
        &self,
        id: &str,
        command: &Command,
    ) -> Result<CommandOutcome, ServiceError> {
        let now = self.now();
        let user_id = command.user_id();
        let (outcome, revoke) = transact!(self, |tx| {
            // The account's row first, as every change of an account takes it; a second
            // delivery of the command waits on it, then finds the command's id recorded.
            let user = store::lock_user(tx, user_id, self.db.dialect()).await?;
            let Some(mut user) = user else {
                // Nothing is written: the consumer records the rejection once the command is
                // safely in the DLQ.
                let outcome = if store::command_recorded(tx, id).await? {
                    CommandOutcome::AlreadyHandled
                } else {
                    CommandOutcome::Rejected("no such account".into())
                };
                return Ok((outcome, false));
            };
            if !store::record_command(tx, id, command.type_name(), "applied", now).await? {
                return Ok((CommandOutcome::AlreadyHandled, false));
            }
            // A ban is kept through a deletion: the account stays deleted, and restoring it
            // gives a banned account. Every session ends before the ban commits, and once more
            // after.
            let mut revoke = false;
            match command {
                Command::Ban { reason, .. } => {
                    if let Some(event) = user.ban(reason.clone(), now) {
                        store::update_user(tx, &user).await?;
                        self.record(tx, &event).await?;
                        self.sessions.revoke_all(user_id, None, now).await?;
                        revoke = true;
                    }
                }
                Command::Unban { .. } => {
                    if let Some(event) = user.unban(now) {
                        store::update_user(tx, &user).await?;
                        self.record(tx, &event).await?;
                    }
                }
                Command::RevokeSessions { .. } => {
                    let ended = self.sessions.revoke_all(user_id, None, now).await?;
                    self.record_sessions_revoked(tx, user_id, &ended).await?;
                    revoke = true;
                }
            }
            (CommandOutcome::Applied, revoke)
        })?;
        if revoke {
            self.revoke_after_commit(user_id, None).await;
        }
        if outcome == CommandOutcome::Applied {
            tracing::info!(%user_id, "command applied");
        }
        Ok(outcome)
    }

    /// Records that command `id` was rejected (after it went to the DLQ), so that a redelivery
    /// is recognised.
    pub async fn record_rejected_command(
        &self,
        id: &str,
        command_type: &str,
    ) -> Result<(), ServiceError> {
        let mut conn = self.db.pool().acquire().await?;
        store::record_command(&mut conn, id, command_type, "rejected", self.now()).await?;
        Ok(())
    }
}
