use dt_users_domain::{AccountStatus, AuthMethods, Email, Timestamp, User, normalize_password};
use dt_users_store as store;
use secrecy::SecretString;
use serde::Serialize;
use uuid::Uuid;

use super::{App, ServiceError};
use crate::security::access_token::{AccessTokenError, TokenSubject};
use crate::security::password_hasher::Verified;
use crate::security::refresh_token::RefreshToken;
use crate::sessions::{Epoch, Rotation, Session};

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

/// Whole seconds left, rounded up: a session with 86,399.9 s to live "expires in 86,400 s".
fn remaining_secs(until: Timestamp, now: Timestamp) -> u64 {
    let millis = (until.as_millis() - now.as_millis()).max(0);
    u64::try_from((millis + 999) / 1000).unwrap_or(0)
}

/// Why a correct password does not sign in.
pub(super) fn refuse_unless_active(user: &User) -> Result<(), ServiceError> {
    match user.status {
        AccountStatus::Active => Ok(()),
        AccountStatus::Deleted => Err(ServiceError::AccountDeleted {
            restore_until: user.purge_after.unwrap_or(user.updated_at),
        }),
        AccountStatus::Banned => Err(ServiceError::AccountBanned),
    }
}

impl App {
    fn token_pair(
        &self,
        subject: TokenSubject,
        methods: AuthMethods,
        refresh_token: String,
        expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<TokenPair, ServiceError> {
        let access_token = self
            .tokens
            .issue(subject, methods, now)
            .map_err(ServiceError::internal)?;
        Ok(TokenPair {
            access_token,
            refresh_token,
            token_type: "bearer",
            expires_in: self.tokens.ttl_secs(),
            refresh_expires_in: remaining_secs(expires_at, now),
        })
    }

    /// Signs in with email and password. An unknown email costs one (dummy) verification,
    /// as a wrong password does, and gets the same answer; both are counted against the
    /// address before the check (the soft lockout). With two-factor sign-in on, a correct
    /// password only opens the second step ([`ServiceError::MfaRequired`]).
    #[tracing::instrument(skip_all)]
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        client: ClientInfo,
    ) -> Result<TokenPair, ServiceError> {
        let password = normalize_password(password);
        let email_key = Email::lookup_key_of(email);
        let mut conn = self.db.pool().acquire().await?;
        let user = store::user_by_email(&mut conn, &email_key).await?;
        drop(conn);
        // An account without a password gets the dummy check too, and the same answer.
        let stored = user.as_ref().and_then(|u| u.password_hash.clone());
        let verified = self
            .check_password(&email_key, password.clone(), stored)
            .await?;
        let Some(user) = user.filter(|_| verified != Verified::No) else {
            return Err(ServiceError::InvalidCredentials);
        };
        // Only a correct password learns why the account cannot sign in.
        refuse_unless_active(&user)?;
        if verified == Verified::YesRehash {
            self.rehash(&user, password.clone()).await?;
        }

        // The revocation epoch first, then the account as it is now: a password change, a
        // ban or a deletion that committed since the check above shows in the account, and
        // one that commits from now on raises the epoch, so the session is refused either way.
        let epoch = self.sessions.epoch(user.id).await?;
        let mut conn = self.db.pool().acquire().await?;
        let current = store::user_by_id(&mut conn, user.id)
            .await?
            .ok_or(ServiceError::InvalidCredentials)?;
        drop(conn);
        refuse_unless_active(&current)?;
        if current.password_hash != user.password_hash {
            // Changed meanwhile: by a new password, or by a concurrent sign-in's rehash.
            let Some(hash) = current.password_hash.clone() else {
                return Err(ServiceError::InvalidCredentials);
            };
            if self.hasher.verify(password, hash).await? == Verified::No {
                return Err(ServiceError::InvalidCredentials);
            }
        }

        if current.mfa_enabled {
            return Err(self
                .require_second_step(&current, epoch, AuthMethods::PASSWORD)
                .await?);
        }
        self.open_session(user.id, epoch, AuthMethods::PASSWORD, client)
            .await?
            .ok_or(ServiceError::InvalidCredentials)
    }

    /// Starts a session of `user_id` signed in by `methods` — unless the user's sessions were
    /// revoked since `epoch` was read (`None`): the sign-in was overtaken by a password change,
    /// a ban or a deletion, and must not outlive it.
    pub(super) async fn open_session(
        &self,
        user_id: Uuid,
        epoch: Epoch,
        methods: AuthMethods,
        client: ClientInfo,
    ) -> Result<Option<TokenPair>, ServiceError> {
        let now = self.now();
        let session = Session {
            id: Uuid::now_v7(),
            user_id,
            created_at: now,
            last_used_at: now,
            expires_at: now.plus_secs(self.policy.refresh_ttl.as_secs()),
            user_agent: client.user_agent,
            ip: client.ip,
            methods,
        };
        let refresh_token = RefreshToken::first(user_id, session.id);
        if !self
            .sessions
            .create(&session, &refresh_token.secrets(), epoch)
            .await?
        {
            tracing::info!(%user_id, "sign-in overtaken by a revocation: refused");
            return Ok(None);
        }
        tracing::info!(%user_id, session_id = %session.id, amr = %methods.encode(), "signed in");
        let subject = TokenSubject {
            user_id,
            session_id: session.id,
        };
        self.token_pair(
            subject,
            methods,
            refresh_token.encode(),
            session.expires_at,
            now,
        )
        .map(Some)
    }

    /// Stores a hash of `password` with the current parameters in place of `user`'s — only
    /// if the stored hash is still the one that was verified, so that a password change,
    /// ban or deletion committed meanwhile is never written over.
    async fn rehash(&self, user: &User, password: SecretString) -> Result<(), ServiceError> {
        let Some(old_hash) = &user.password_hash else {
            return Ok(());
        };
        let new_hash = self.hasher.hash(password).await?;
        let mut conn = self.db.pool().acquire().await?;
        if store::replace_password_hash(&mut conn, user.id, old_hash, &new_hash).await? {
            tracing::info!(user_id = %user.id, "password rehashed with the current parameters");
        }
        Ok(())
    }

    /// Exchanges a refresh token for a new pair. The old token dies; presenting it again
    /// after the grace window ends the whole session.
    #[tracing::instrument(skip_all)]
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, ServiceError> {
        let token = RefreshToken::parse(refresh_token).ok_or(ServiceError::InvalidRefreshToken)?;
        let presented = token.presented();
        let now = self.now();
        // Charged to the session, and only once the token is known to be its: nobody can
        // spend another's budget with made-up tokens.
        if !self.sessions.owns(&presented, now).await? {
            return Err(ServiceError::InvalidRefreshToken);
        }
        self.limit(
            "refresh",
            self.limits.refresh,
            &token.session_id.to_string(),
        )
        .await?;
        let next = token.next(token.generation.saturating_add(1));
        let grace_ms =
            i64::try_from(self.policy.refresh_reuse_grace.as_millis()).unwrap_or(i64::MAX);
        let rotation = self
            .sessions
            .rotate(&presented, &next.secrets().current_hash, now, grace_ms)
            .await?;
        let (user_id, session_id) = (token.user_id, token.session_id);
        match rotation {
            Rotation::Rotated {
                expires_at,
                methods,
            } => {
                let subject = TokenSubject {
                    user_id,
                    session_id,
                };
                self.token_pair(subject, methods, next.encode(), expires_at, now)
            }
            Rotation::WithinGrace | Rotation::Invalid => Err(ServiceError::InvalidRefreshToken),
            Rotation::Reused => {
                tracing::warn!(%user_id, %session_id, "refresh token reused: session revoked");
                self.announce_sessions_revoked(user_id, &[session_id]).await;
                Err(ServiceError::RefreshTokenReused)
            }
        }
    }

    /// Ends every session but `keep` once more, after the commit of a change that ended
    /// them before it: a sign-in that read the account between the first revocation and the
    /// commit saw the old state, and its session ends here. Sessions ended here are announced.
    pub(super) async fn revoke_after_commit(&self, user_id: Uuid, keep: Option<Uuid>) {
        let ended = match self.sessions.revoke_all(user_id, keep, self.now()).await {
            Ok(ended) => ended,
            Err(e) => {
                tracing::error!(%user_id, error = %e, "sessions not ended again after the commit");
                return;
            }
        };
        self.announce_sessions_revoked(user_id, &ended).await;
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

    /// Ends this session, the others, or all. Needs the session store only: with the database
    /// down the sessions still end at once, and their event follows when it is back.
    #[tracing::instrument(skip_all, fields(scope = ?scope))]
    pub async fn logout(
        &self,
        subject: TokenSubject,
        scope: LogoutScope,
    ) -> Result<(), ServiceError> {
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
                    .revoke_all(subject.user_id, Some(subject.session_id), self.now())
                    .await?
            }
            LogoutScope::Global => {
                self.sessions
                    .revoke_all(subject.user_id, None, self.now())
                    .await?
            }
        };
        self.announce_sessions_revoked(subject.user_id, &ended)
            .await;
        tracing::info!(user_id = %subject.user_id, sessions = ended.len(), "signed out");
        Ok(())
    }

    pub async fn list_sessions(&self, subject: TokenSubject) -> Result<Vec<Session>, ServiceError> {
        Ok(self.sessions.list(subject.user_id, self.now()).await?)
    }

    /// Ends one of the caller's sessions; like [`App::logout`], without needing the database.
    pub async fn end_session(
        &self,
        subject: TokenSubject,
        session_id: Uuid,
    ) -> Result<(), ServiceError> {
        if !self.sessions.revoke(subject.user_id, session_id).await? {
            return Err(ServiceError::NotFound);
        }
        self.announce_sessions_revoked(subject.user_id, &[session_id])
            .await;
        tracing::info!(user_id = %subject.user_id, %session_id, "session ended");
        Ok(())
    }
}
