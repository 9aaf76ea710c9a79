//! Sessions and their refresh tokens: in Redis, one server or a Redis Cluster (shared by every
//! instance), or in process memory (the embedded default). Both implement the same operations with the same semantics, and
//! every operation that decides something is one atomic step.
//!
//! A session's state is O(1) however often it is refreshed: it keeps the hash of its family
//! secret (the part every refresh token of the session shares), the hash of its current
//! token's secret and a generation counter. A presented token names its generation, so an
//! already-rotated token is recognised — and its reuse detected — without a key per token.
//!
//! Each user also has a revocation epoch, raised by every [`SessionStore::revoke_all`]. A
//! sign-in reads the epoch before it looks at the account, and its session is only created
//! if the epoch is still the same: no sign-in in flight outlives a revocation.

mod memory;
mod redis_connection;
mod redis_store;

use dt_users_domain::{AuthMethods, Timestamp};
use uuid::Uuid;

pub use memory::MemorySessions;
pub(crate) use redis_connection::LuaScript;
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
    /// How the session was signed in; every access token of the session carries them.
    pub methods: AuthMethods,
}

/// The hashes a refresh token is checked against: its session's family secret and the
/// secret of one generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshSecrets {
    pub family_hash: String,
    pub current_hash: String,
}

/// A refresh token as presented, parsed: whose, which session, which generation, and the
/// hashes of its secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedRefresh {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub generation: u64,
    pub secrets: RefreshSecrets,
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The token was current; it is now dead, and `new_hash` is the secret of the session's
    /// next generation.
    Rotated {
        expires_at: Timestamp,
        methods: AuthMethods,
    },
    /// The token was rotated moments ago (within the grace window): refused, session kept.
    WithinGrace,
    /// The token was rotated earlier: the whole session has been revoked.
    Reused,
    /// Unknown token, or its session has ended.
    Invalid,
}

/// A user's revocation epoch, as read before a sign-in looks at the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch(pub u64);

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

    /// The user's revocation epoch now.
    pub async fn epoch(&self, user_id: Uuid) -> Result<Epoch, SessionStoreError> {
        match self {
            Self::Redis(s) => s.epoch(user_id).await,
            Self::Memory(s) => Ok(s.epoch(user_id)),
        }
    }

    /// Stores a new session with its first refresh token (generation 0, by hashes) — only if
    /// the user's sessions were not revoked since `epoch` was read; false if they were.
    pub async fn create(
        &self,
        session: &Session,
        secrets: &RefreshSecrets,
        epoch: Epoch,
    ) -> Result<bool, SessionStoreError> {
        match self {
            Self::Redis(s) => s.create(session, secrets, epoch).await,
            Self::Memory(s) => Ok(s.create(session, secrets, epoch)),
        }
    }

    /// True when `token` belongs to a live session (its family secret matches), whatever
    /// its generation: the token was issued by dt-users, for this session.
    pub async fn owns(
        &self,
        token: &PresentedRefresh,
        now: Timestamp,
    ) -> Result<bool, SessionStoreError> {
        match self {
            Self::Redis(s) => s.owns(token, now).await,
            Self::Memory(s) => Ok(s.owns(token, now)),
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
            Self::Memory(s) => Ok(s.check(user_id, session_id, now)),
        }
    }

    /// Exchanges the presented refresh token for the next generation (secret `new_hash`),
    /// atomically: of several concurrent exchanges of one token, exactly one succeeds.
    pub async fn rotate(
        &self,
        token: &PresentedRefresh,
        new_hash: &str,
        now: Timestamp,
        grace_ms: i64,
    ) -> Result<Rotation, SessionStoreError> {
        match self {
            Self::Redis(s) => s.rotate(token, new_hash, now, grace_ms).await,
            Self::Memory(s) => Ok(s.rotate(token, new_hash, now, grace_ms)),
        }
    }

    /// Ends one session of `user_id`; false when it does not exist (or is someone else's).
    pub async fn revoke(&self, user_id: Uuid, session_id: Uuid) -> Result<bool, SessionStoreError> {
        match self {
            Self::Redis(s) => s.revoke(user_id, session_id).await,
            Self::Memory(s) => Ok(s.revoke(user_id, session_id)),
        }
    }

    /// Ends every session of `user_id` but `except` and raises the user's revocation epoch,
    /// in one step, so that no sign-in that began before it creates a session; returns the
    /// ended sessions.
    pub async fn revoke_all(
        &self,
        user_id: Uuid,
        except: Option<Uuid>,
        now: Timestamp,
    ) -> Result<Vec<Uuid>, SessionStoreError> {
        match self {
            Self::Redis(s) => s.revoke_all(user_id, except).await,
            Self::Memory(s) => Ok(s.revoke_all(user_id, except, now)),
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

    /// Keeps the record of an event that the database could not take (a session ended while
    /// it was down), until [`SessionStore::deferred_events`] hands it to the outbox. Ending a
    /// session needs the session store only; its announcement can wait.
    pub async fn defer_event(&self, record: &str) -> Result<(), SessionStoreError> {
        match self {
            Self::Redis(s) => s.defer_event(record).await,
            Self::Memory(s) => {
                s.defer_event(record);
                Ok(())
            }
        }
    }

    /// The oldest deferred event records, at most `max`, oldest first.
    pub async fn deferred_events(&self, max: usize) -> Result<Vec<String>, SessionStoreError> {
        match self {
            Self::Redis(s) => s.deferred_events(max).await,
            Self::Memory(s) => Ok(s.deferred_events(max)),
        }
    }

    /// Drops one deferred record once the outbox holds its event.
    pub async fn forget_deferred_event(&self, record: &str) -> Result<(), SessionStoreError> {
        match self {
            Self::Redis(s) => s.forget_deferred_event(record).await,
            Self::Memory(s) => {
                s.forget_deferred_event(record);
                Ok(())
            }
        }
    }

    pub async fn ping(&self) -> Result<(), SessionStoreError> {
        match self {
            Self::Redis(s) => s.ping().await,
            Self::Memory(_) => Ok(()),
        }
    }
}
