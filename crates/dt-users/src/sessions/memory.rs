use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use dt_users_domain::Timestamp;
use uuid::Uuid;

use super::{Epoch, PresentedRefresh, RefreshSecrets, Rotation, Session};

#[derive(Debug)]
struct Record {
    session: Session,
    family_hash: String,
    current_hash: String,
    generation: u64,
    rotated_at: Timestamp,
}

#[derive(Debug, Default)]
struct State {
    sessions: HashMap<Uuid, Record>,
    by_user: HashMap<Uuid, HashSet<Uuid>>,
    /// Revocation epochs, with when each was last raised.
    epochs: HashMap<Uuid, (u64, Timestamp)>,
    /// Events of session ends the database could not take (see `SessionStore::defer_event`).
    deferred: VecDeque<String>,
}

/// An epoch matters only to sign-ins in flight; one untouched for a day is dropped (a
/// sign-in that read it before then is refused, never wrongly let through).
const EPOCH_KEEP_MS: i64 = 86_400_000;

impl State {
    fn live(&self, user_id: Uuid, session_id: Uuid, now: Timestamp) -> Option<&Record> {
        self.sessions
            .get(&session_id)
            .filter(|r| r.session.user_id == user_id && r.session.expires_at > now)
    }

    fn remove(&mut self, user_id: Uuid, session_id: Uuid) -> bool {
        if let Some(set) = self.by_user.get_mut(&user_id) {
            set.remove(&session_id);
        }
        self.sessions.remove(&session_id).is_some()
    }

    /// Drops what has expired, so a long-running embedded instance does not grow forever.
    fn sweep(&mut self, now: Timestamp) {
        let expired: Vec<(Uuid, Uuid)> = self
            .sessions
            .values()
            .filter(|r| r.session.expires_at <= now)
            .map(|r| (r.session.user_id, r.session.id))
            .collect();
        for (user_id, session_id) in expired {
            self.remove(user_id, session_id);
        }
        self.by_user.retain(|_, set| !set.is_empty());
        self.epochs
            .retain(|_, (_, at)| now.as_millis() - at.as_millis() < EPOCH_KEEP_MS);
    }

    fn epoch(&self, user_id: Uuid) -> Epoch {
        Epoch(self.epochs.get(&user_id).map_or(0, |(n, _)| *n))
    }
}

/// Sessions in process memory, for the embedded default (one instance only).
#[derive(Debug, Clone, Default)]
pub struct MemorySessions(Arc<Mutex<State>>);

impl MemorySessions {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than losing the process, so a poisoned lock is simply taken over.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn epoch(&self, user_id: Uuid) -> Epoch {
        self.state().epoch(user_id)
    }

    pub fn create(&self, session: &Session, secrets: &RefreshSecrets, epoch: Epoch) -> bool {
        let mut state = self.state();
        state.sweep(session.created_at);
        if state.epoch(session.user_id) != epoch {
            return false;
        }
        state.sessions.insert(
            session.id,
            Record {
                session: session.clone(),
                family_hash: secrets.family_hash.clone(),
                current_hash: secrets.current_hash.clone(),
                generation: 0,
                rotated_at: session.created_at,
            },
        );
        state
            .by_user
            .entry(session.user_id)
            .or_default()
            .insert(session.id);
        true
    }

    pub fn check(&self, user_id: Uuid, session_id: Uuid, now: Timestamp) -> bool {
        let mut state = self.state();
        if state.live(user_id, session_id, now).is_none() {
            return false;
        }
        if let Some(record) = state.sessions.get_mut(&session_id) {
            record.session.last_used_at = now;
        }
        true
    }

    pub fn owns(&self, token: &PresentedRefresh, now: Timestamp) -> bool {
        self.state()
            .live(token.user_id, token.session_id, now)
            .is_some_and(|r| r.family_hash == token.secrets.family_hash)
    }

    pub fn rotate(
        &self,
        token: &PresentedRefresh,
        new_hash: &str,
        now: Timestamp,
        grace_ms: i64,
    ) -> Rotation {
        let mut state = self.state();
        let Some(record) = state
            .live(token.user_id, token.session_id, now)
            .filter(|r| r.family_hash == token.secrets.family_hash)
        else {
            return Rotation::Invalid;
        };
        let (generation, current, rotated_at) = (
            record.generation,
            record.current_hash == token.secrets.current_hash,
            record.rotated_at,
        );
        if token.generation > generation || (token.generation == generation && !current) {
            return Rotation::Invalid;
        }
        if token.generation == generation {
            let Some(record) = state.sessions.get_mut(&token.session_id) else {
                return Rotation::Invalid;
            };
            record.current_hash = new_hash.to_owned();
            record.generation += 1;
            record.rotated_at = now;
            record.session.last_used_at = now;
            return Rotation::Rotated {
                expires_at: record.session.expires_at,
                methods: record.session.methods,
            };
        }
        if token.generation + 1 == generation
            && now.as_millis() - rotated_at.as_millis() <= grace_ms
        {
            return Rotation::WithinGrace;
        }
        state.remove(token.user_id, token.session_id);
        Rotation::Reused
    }

    pub fn revoke(&self, user_id: Uuid, session_id: Uuid) -> bool {
        let mut state = self.state();
        let owned = state
            .sessions
            .get(&session_id)
            .is_some_and(|r| r.session.user_id == user_id);
        owned && state.remove(user_id, session_id)
    }

    pub fn revoke_all(&self, user_id: Uuid, except: Option<Uuid>, now: Timestamp) -> Vec<Uuid> {
        let mut state = self.state();
        let next = state.epoch(user_id).0 + 1;
        state.epochs.insert(user_id, (next, now));
        let ids: Vec<Uuid> = state
            .by_user
            .get(&user_id)
            .map(|set| {
                set.iter()
                    .copied()
                    .filter(|id| Some(*id) != except)
                    .collect()
            })
            .unwrap_or_default();
        for id in &ids {
            state.remove(user_id, *id);
        }
        ids
    }

    pub fn list(&self, user_id: Uuid, now: Timestamp) -> Vec<Session> {
        let state = self.state();
        state
            .by_user
            .get(&user_id)
            .into_iter()
            .flatten()
            .filter_map(|id| state.sessions.get(id))
            .filter(|r| r.session.expires_at > now)
            .map(|r| r.session.clone())
            .collect()
    }

    pub fn defer_event(&self, record: &str) {
        self.state().deferred.push_back(record.to_owned());
    }

    pub fn deferred_events(&self, max: usize) -> Vec<String> {
        self.state().deferred.iter().take(max).cloned().collect()
    }

    pub fn forget_deferred_event(&self, record: &str) {
        let mut state = self.state();
        if let Some(at) = state.deferred.iter().position(|r| r == record) {
            state.deferred.remove(at);
        }
    }

    /// How many sessions (and epochs) are held, for tests of boundedness.
    pub fn held(&self) -> (usize, usize) {
        let state = self.state();
        (state.sessions.len(), state.epochs.len())
    }
}
