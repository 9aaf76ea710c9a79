use dt_users_domain::{AccountStatus, Email, Timestamp, normalize_password};
use dt_users_store as store;
use serde::Serialize;
use uuid::Uuid;

use super::{App, ServiceError};
use crate::security::access_token::{AccessTokenError, TokenSubject};
use crate::security::password_hasher::Verified;
use crate::security::secret_token::{REFRESH_PREFIX, hash_secret, random_urlsafe};
use crate::sessions::{Rotation, Session};

/// What is recorded about the client that signs in, for the sessions list.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub user_agent: Option<String>,
    pub ip: Option<String>,
}

/// An access token and a refresh token, with their lifetimes in seconds.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    /// Always `bearer`.
    pub token_type: &'static str,
    pub expires_in: u64,
    pub refresh_expires_in: u64,
}

/// Which sessions a logout ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogoutScope {
    /// This session only.
    #[default]
    Local,
    /// Every session but this one.
    Others,
    /// Every session, this one included.
    Global,
}

/// A refresh token names its user (`dtr_<user id>.<secret>`) so that all of a user's session
/// keys can live together (one Redis slot); only its hash is stored.
fn new_refresh_token(user_id: Uuid) -> String {
    format!(
        "{REFRESH_PREFIX}{}.{}",
        user_id.simple(),
        random_urlsafe(32)
    )
}

fn refresh_token_user(token: &str) -> Option<Uuid> {
    let (user, secret) = token.strip_prefix(REFRESH_PREFIX)?.split_once('.')?;
    (secret.len() == 43).then_some(())?;
    Uuid::try_parse(user).ok()
}

/// Whole seconds left, rounded up: a session with 86,399.9 s to live "expires in 86,400 s".
fn remaining_secs(until: Timestamp, now: Timestamp) -> u64 {
    let millis = (until.as_millis() - now.as_millis()).max(0);
    u64::try_from((millis + 999) / 1000).unwrap_or(0)
}

impl App {
    fn token_pair(
        &self,
        subject: TokenSubject,
        refresh_token: String,
        expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<TokenPair, ServiceError> {
        let access_token = self
            .tokens
            .issue(subject, now)
            .map_err(|e| ServiceError::Internal(format!("signing an access token: {e}")))?;
        Ok(TokenPair {
            access_token,
            refresh_token,
            token_type: "bearer",
            expires_in: self.tokens.ttl_secs(),
            refresh_expires_in: remaining_secs(expires_at, now),
        })
    }

    /// Signs in with email and password. An unknown email costs one (dummy) verification,
    /// as a wrong password does, and gets the same answer.
    #[tracing::instrument(skip_all)]
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        client: ClientInfo,
    ) -> Result<TokenPair, ServiceError> {
        let password = normalize_password(password);
        let email_key = Email::lookup_key_of(email);
        // The soft lockout: too many failures for this account (from anywhere) and even the
        // right password waits. Known and unknown addresses are counted alike.
        self.limit_peek("login_account", self.limits.login_account, &email_key)
            .await?;
        let mut conn = self.db.pool().acquire().await?;
        let user = store::user_by_email(&mut conn, &email_key).await?;
        drop(conn);
        let verified = match &user {
            Some(user) => {
                self.hasher
                    .verify(password.clone(), user.password_hash.clone())
                    .await?
            }
            None => self.hasher.verify_dummy(password.clone()).await?,
        };
        let Some(mut user) = user.filter(|_| verified != Verified::No) else {
            // Counted; this answer stays `invalid_credentials` even when the failure spends
            // the quota — the next attempt is the one refused.
            let _ = self
                .limit("login_account", self.limits.login_account, &email_key)
                .await;
            return Err(ServiceError::InvalidCredentials);
        };
        // Only a correct password learns why the account cannot sign in.
        match user.status {
            AccountStatus::Active => {}
            AccountStatus::Deleted => {
                return Err(ServiceError::AccountDeleted {
                    restore_until: user.purge_after.unwrap_or(user.updated_at),
                });
            }
            AccountStatus::Banned => return Err(ServiceError::AccountBanned),
        }
        if verified == Verified::YesRehash {
            user.password_hash = self.hasher.hash(password).await?;
            let mut conn = self.db.pool().acquire().await?;
            store::update_user(&mut conn, &user).await?;
            tracing::info!(user_id = %user.id, "password rehashed with the current parameters");
        }

        let now = self.now();
        let session = Session {
            id: Uuid::now_v7(),
            user_id: user.id,
            created_at: now,
            last_used_at: now,
            expires_at: now.plus_secs(self.settings.refresh_token_ttl),
            user_agent: client.user_agent,
            ip: client.ip,
        };
        let refresh_token = new_refresh_token(user.id);
        self.sessions
            .create(&session, &hash_secret(&refresh_token))
            .await?;
        tracing::info!(user_id = %user.id, session_id = %session.id, "signed in");
        let subject = TokenSubject {
            user_id: user.id,
            session_id: session.id,
        };
        self.token_pair(subject, refresh_token, session.expires_at, now)
    }

    /// Exchanges a refresh token for a new pair. The old token dies; presenting it again
    /// after the grace window ends the whole session.
    #[tracing::instrument(skip_all)]
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, ServiceError> {
        let user_id = refresh_token_user(refresh_token).ok_or(ServiceError::InvalidRefreshToken)?;
        self.limit("refresh", self.limits.refresh, &user_id.to_string())
            .await?;
        let now = self.now();
        let new_token = new_refresh_token(user_id);
        let grace_ms = i64::try_from(self.settings.refresh_reuse_grace.saturating_mul(1000))
            .unwrap_or(i64::MAX);
        let rotation = self
            .sessions
            .rotate(
                user_id,
                &hash_secret(refresh_token),
                &hash_secret(&new_token),
                now,
                grace_ms,
            )
            .await?;
        match rotation {
            Rotation::Rotated {
                session_id,
                expires_at,
            } => {
                let subject = TokenSubject {
                    user_id,
                    session_id,
                };
                self.token_pair(subject, new_token, expires_at, now)
            }
            Rotation::WithinGrace | Rotation::Invalid => Err(ServiceError::InvalidRefreshToken),
            Rotation::Reused { session_id } => {
                tracing::warn!(%user_id, %session_id, "refresh token reused: session revoked");
                // The session already ended in the store; announcing it is best effort here.
                if let Err(e) = self.announce_sessions_revoked(user_id, &[session_id]).await {
                    tracing::warn!(error = %e, "sessions_revoked event not recorded");
                }
                Err(ServiceError::RefreshTokenReused)
            }
        }
    }

    async fn announce_sessions_revoked(
        &self,
        user_id: Uuid,
        ended: &[Uuid],
    ) -> Result<(), ServiceError> {
        let mut tx = self.db.begin_write().await?;
        self.record_sessions_revoked(&mut tx, user_id, ended)
            .await?;
        tx.commit().await?;
        self.outbox_committed();
        Ok(())
    }

    /// Verifies an access token and that its session is still alive.
    pub async fn authenticate(&self, bearer: &str) -> Result<TokenSubject, ServiceError> {
        let now = self.now();
        let subject = self.tokens.verify(bearer, now).map_err(|e| match e {
            AccessTokenError::Invalid => ServiceError::InvalidAccessToken,
            AccessTokenError::Expired => ServiceError::AccessTokenExpired,
        })?;
        if self
            .sessions
            .check(subject.user_id, subject.session_id, now)
            .await?
        {
            Ok(subject)
        } else {
            Err(ServiceError::SessionRevoked)
        }
    }

    #[tracing::instrument(skip_all, fields(scope = ?scope))]
    pub async fn logout(
        &self,
        subject: TokenSubject,
        scope: LogoutScope,
    ) -> Result<(), ServiceError> {
        let mut tx = self.db.begin_write().await?;
        let ended = match scope {
            LogoutScope::Local => {
                let ended = self
                    .sessions
                    .revoke(subject.user_id, subject.session_id)
                    .await?;
                if ended {
                    vec![subject.session_id]
                } else {
                    Vec::new()
                }
            }
            LogoutScope::Others => {
                self.sessions
                    .revoke_all(subject.user_id, Some(subject.session_id))
                    .await?
            }
            LogoutScope::Global => self.sessions.revoke_all(subject.user_id, None).await?,
        };
        self.record_sessions_revoked(&mut tx, subject.user_id, &ended)
            .await?;
        tx.commit().await?;
        self.outbox_committed();
        tracing::info!(user_id = %subject.user_id, sessions = ended.len(), "signed out");
        Ok(())
    }

    pub async fn list_sessions(&self, subject: TokenSubject) -> Result<Vec<Session>, ServiceError> {
        Ok(self.sessions.list(subject.user_id, self.now()).await?)
    }

    pub async fn end_session(
        &self,
        subject: TokenSubject,
        session_id: Uuid,
    ) -> Result<(), ServiceError> {
        let mut tx = self.db.begin_write().await?;
        if !self.sessions.revoke(subject.user_id, session_id).await? {
            return Err(ServiceError::NotFound);
        }
        self.record_sessions_revoked(&mut tx, subject.user_id, &[session_id])
            .await?;
        tx.commit().await?;
        self.outbox_committed();
        tracing::info!(user_id = %subject.user_id, %session_id, "session ended");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_name_their_user() {
        let user = Uuid::now_v7();
        let token = new_refresh_token(user);
        assert_eq!(refresh_token_user(&token), Some(user));
        assert_eq!(refresh_token_user("dtr_nope.x"), None);
        assert_eq!(refresh_token_user(&token[..token.len() - 1]), None);
        assert_eq!(refresh_token_user(""), None);
    }

    proptest::proptest! {
        #[test]
        fn refresh_token_parsing_never_panics(s in "\\PC*") {
            let _ = refresh_token_user(&s);
        }
    }
}
