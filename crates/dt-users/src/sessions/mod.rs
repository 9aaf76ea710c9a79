//! Sessions and their refresh tokens: in Redis (shared by every instance) or in process memory
//! (the embedded default). Both implement the same operations with the same semantics, and
//! every operation that decides something is one atomic step.

mod memory;
mod redis_store;

use dt_users_domain::Timestamp;
use uuid::Uuid;

pub use memory::MemorySessions;
pub use redis_store::RedisSessions;

/// A session as listed to its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: Uuid,
    pub user_id: Uuid,
    pub created_at: Timestamp,
    pub last_used_at: Timestamp,
    pub expires_at: Timestamp,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The token was current; it is now dead and `new_hash` is the session's refresh token.
    Rotated {
        session_id: Uuid,
        expires_at: Timestamp,
    },
    /// The token was rotated moments ago (within the grace window): refused, session kept.
    WithinGrace,
    /// The token was rotated earlier: the whole session has been revoked.
    Reused { session_id: Uuid },
    /// Unknown token, or its session has ended.
    Invalid,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionStoreError {
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    #[error("session store returned unexpected data: {0}")]
    Corrupt(String),
}

/// The session store in use.
#[derive(Debug, Clone)]
pub enum SessionStore {
    Redis(RedisSessions),
    Memory(MemorySessions),
}

impl SessionStore {
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Redis(_) => "redis",
            Self::Memory(_) => "memory",
        }
    }

    /// Stores a new session with its first refresh token (by hash).
    pub async fn create(
        &self,
        session: &Session,
        refresh_hash: &str,
    ) -> Result<(), SessionStoreError> {
        match self {
            Self::Redis(s) => s.create(session, refresh_hash).await,
            Self::Memory(s) => s.create(session, refresh_hash),
        }
    }

    /// True when the session exists, belongs to `user_id` and has not expired; records use.
    pub async fn check(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        now: Timestamp,
    ) -> Result<bool, SessionStoreError> {
        match self {
            Self::Redis(s) => s.check(user_id, session_id, now).await,
            Self::Memory(s) => s.check(user_id, session_id, now),
        }
    }

    /// Exchanges the refresh token `old_hash` for `new_hash`, atomically: of several
    /// concurrent exchanges of one token, exactly one succeeds.
    pub async fn rotate(
        &self,
        user_id: Uuid,
        old_hash: &str,
        new_hash: &str,
        now: Timestamp,
        grace_ms: i64,
    ) -> Result<Rotation, SessionStoreError> {
        match self {
            Self::Redis(s) => s.rotate(user_id, old_hash, new_hash, now, grace_ms).await,
            Self::Memory(s) => s.rotate(user_id, old_hash, new_hash, now, grace_ms),
        }
    }

    /// Ends one session of `user_id`; false when it does not exist (or is someone else's).
    pub async fn revoke(&self, user_id: Uuid, session_id: Uuid) -> Result<bool, SessionStoreError> {
        match self {
            Self::Redis(s) => s.revoke(user_id, session_id).await,
            Self::Memory(s) => s.revoke(user_id, session_id),
        }
    }

    /// Ends every session of `user_id` but `except`; returns the ended sessions.
    pub async fn revoke_all(
        &self,
        user_id: Uuid,
        except: Option<Uuid>,
    ) -> Result<Vec<Uuid>, SessionStoreError> {
        match self {
            Self::Redis(s) => s.revoke_all(user_id, except).await,
            Self::Memory(s) => s.revoke_all(user_id, except),
        }
    }

    /// The live sessions of `user_id`, newest first.
    pub async fn list(
        &self,
        user_id: Uuid,
        now: Timestamp,
    ) -> Result<Vec<Session>, SessionStoreError> {
        let mut sessions = match self {
            Self::Redis(s) => s.list(user_id, now).await?,
            Self::Memory(s) => s.list(user_id, now),
        };
        sessions.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        Ok(sessions)
    }

    pub async fn ping(&self) -> Result<(), SessionStoreError> {
        match self {
            Self::Redis(s) => s.ping().await,
            Self::Memory(_) => Ok(()),
        }
    }
}
