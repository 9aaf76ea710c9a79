//! The identities linked to an account: linking one at a flow's callback, listing them, and
//! unlinking one — never the account's last way to sign in.

use dt_users_store::{self as store, IdentityRecord};
use uuid::Uuid;

use super::super::transaction::transact;
use super::super::{App, ServiceError};
use super::FlowError;
use crate::email::{EmailKind, IdentityParams};
use crate::federation::ExternalIdentity;
use crate::security::access_token::TokenSubject;

impl App {
    /// Links `identity` to the account of `subject`, if its session is still alive.
    pub(super) async fn link_identity(
        &self,
        subject: TokenSubject,
        provider: &str,
        identity: &ExternalIdentity,
    ) -> Result<(), Result<FlowError, ServiceError>> {
        let alive = self
            .sessions
            .check(subject.user_id, subject.session_id, self.now())
            .await
            .map_err(|e| Err(e.into()))?;
        if !alive {
            return Err(Ok(FlowError::LinkExpired));
        }
        let now = self.now();
        let linked = transact!(self, |tx| {
            let user = match self.lock_active(tx, subject.user_id).await {
                Ok(user) => Some(user),
                Err(ServiceError::SessionRevoked) => None,
                Err(e) => return Err(e),
            };
            match user {
                None => Some(FlowError::LinkExpired),
                Some(user) => {
                    match store::identity_by_subject(tx, provider, &identity.subject).await? {
                        Some(existing) if existing.user_id != user.id => {
                            Some(FlowError::IdentityTaken)
                        }
                        Some(existing) => {
                            let email = identity.email.as_deref();
                            store::record_identity_use(tx, existing.id, email, now).await?;
                            None
                        }
                        None => {
                            let record = IdentityRecord {
                                id: Uuid::now_v7(),
                                user_id: user.id,
                                provider: provider.to_owned(),
                                subject: identity.subject.clone(),
                                email: identity.email.clone(),
                                created_at: now,
                                last_used_at: None,
                            };
                            if store::insert_identity(tx, &record).await? {
                                let notice = EmailKind::IdentityLinked(IdentityParams {
                                    provider: provider.to_owned(),
                                    at: now.to_rfc3339(),
                                });
                                self.queue_notice(tx, notice, &user).await?;
                                tracing::info!(user_id = %user.id, provider, "identity linked");
                                None
                            } else {
                                Some(FlowError::IdentityTaken)
                            }
                        }
                    }
                }
            }
        });
        match linked {
            Ok(None) => Ok(()),
            Ok(Some(error)) => Err(Ok(error)),
            Err(e) => Err(Err(e)),
        }
    }

    /// The identities linked to the signed-in account.
    pub async fn identities(
        &self,
        subject: TokenSubject,
    ) -> Result<Vec<IdentityRecord>, ServiceError> {
        let user = self.current_user(subject).await?;
        let mut conn = self.db.pool().acquire().await?;
        Ok(store::identities_of(&mut conn, user.id).await?)
    }

    /// Unlinks one of the signed-in account's identities — not the last way it can sign in.
    #[tracing::instrument(skip_all, fields(user_id = %subject.user_id))]
    pub async fn unlink_identity(
        &self,
        subject: TokenSubject,
        id: Uuid,
    ) -> Result<(), ServiceError> {
        transact!(self, |tx| {
            let user = self.lock_active(tx, subject.user_id).await?;
            let linked = store::identities_of(tx, user.id).await?;
            let Some(unlinked) = linked.iter().find(|i| i.id == id) else {
                return Err(ServiceError::NotFound);
            };
            let passkeys = store::passkey_count(tx, user.id).await?;
            if user.password_hash.is_none() && passkeys == 0 && linked.len() <= 1 {
                return Err(ServiceError::LastSignInMethod);
            }
            store::delete_identity(tx, user.id, id).await?;
            let notice = EmailKind::IdentityUnlinked(IdentityParams {
                provider: unlinked.provider.clone(),
                at: self.now().to_rfc3339(),
            });
            self.queue_notice(tx, notice, &user).await?;
        })?;
        tracing::info!(user_id = %subject.user_id, identity_id = %id, "identity unlinked");
        Ok(())
    }
}
