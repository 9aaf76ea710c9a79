use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use dt_users_domain::Timestamp;
use uuid::Uuid;

use super::{Rotation, Session};

#[derive(Debug)]
struct RefreshRecord {
    session_id: Uuid,
    user_id: Uuid,
    rotated_at: Option<Timestamp>,
}

#[derive(Debug, Default)]
struct State {
    sessions: HashMap<Uuid, Session>,
    by_user: HashMap<Uuid, HashSet<Uuid>>,
    refresh: HashMap<String, RefreshRecord>,
}

impl State {
    fn live(&self, user_id: Uuid, session_id: Uuid, now: Timestamp) -> bool {
        self.sessions
            .get(&session_id)
            .is_some_and(|s| s.user_id == user_id && s.expires_at > now)
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
            .filter(|s| s.expires_at <= now)
            .map(|s| (s.user_id, s.id))
            .collect();
        for (user_id, session_id) in expired {
            self.remove(user_id, session_id);
        }
        let sessions = &self.sessions;
        self.refresh
            .retain(|_, r| sessions.contains_key(&r.session_id));
        self.by_user.retain(|_, set| !set.is_empty());
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

    pub fn create(
        &self,
        session: &Session,
        refresh_hash: &str,
    ) -> Result<(), super::SessionStoreError> {
        let mut state = self.state();
        state.sweep(session.created_at);
        state.sessions.insert(session.id, session.clone());
        state
            .by_user
            .entry(session.user_id)
            .or_default()
            .insert(session.id);
        state.refresh.insert(
            refresh_hash.to_owned(),
            RefreshRecord {
                session_id: session.id,
                user_id: session.user_id,
                rotated_at: None,
            },
        );
        Ok(())
    }

    pub fn check(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        now: Timestamp,
    ) -> Result<bool, super::SessionStoreError> {
        let mut state = self.state();
        if !state.live(user_id, session_id, now) {
            return Ok(false);
        }
        if let Some(session) = state.sessions.get_mut(&session_id) {
            session.last_used_at = now;
        }
        Ok(true)
    }

    pub fn rotate(
        &self,
        user_id: Uuid,
        old_hash: &str,
        new_hash: &str,
        now: Timestamp,
        grace_ms: i64,
    ) -> Result<Rotation, super::SessionStoreError> {
        let mut state = self.state();
        let Some(record) = state.refresh.get(old_hash) else {
            return Ok(Rotation::Invalid);
        };
        let (session_id, rotated_at) = (record.session_id, record.rotated_at);
        if record.user_id != user_id || !state.live(user_id, session_id, now) {
            return Ok(Rotation::Invalid);
        }
        match rotated_at {
            None => {
                if let Some(record) = state.refresh.get_mut(old_hash) {
                    record.rotated_at = Some(now);
                }
                state.refresh.insert(
                    new_hash.to_owned(),
                    RefreshRecord {
                        session_id,
                        user_id,
                        rotated_at: None,
                    },
                );
                let session = state.sessions.get_mut(&session_id);
                let expires_at = session.map_or(now, |s| {
                    s.last_used_at = now;
                    s.expires_at
                });
                Ok(Rotation::Rotated {
                    session_id,
                    expires_at,
                })
            }
            Some(at) if now.as_millis() - at.as_millis() <= grace_ms => Ok(Rotation::WithinGrace),
            Some(_) => {
                state.remove(user_id, session_id);
                Ok(Rotation::Reused { session_id })
            }
        }
    }

    pub fn revoke(
        &self,
        user_id: Uuid,
        session_id: Uuid,
    ) -> Result<bool, super::SessionStoreError> {
        let mut state = self.state();
        let owned = state
            .sessions
            .get(&session_id)
            .is_some_and(|s| s.user_id == user_id);
        Ok(owned && state.remove(user_id, session_id))
    }

    pub fn revoke_all(
        &self,
        user_id: Uuid,
        except: Option<Uuid>,
    ) -> Result<Vec<Uuid>, super::SessionStoreError> {
        let mut state = self.state();
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
        Ok(ids)
    }

    pub fn list(&self, user_id: Uuid, now: Timestamp) -> Vec<Session> {
        let state = self.state();
        state
            .by_user
            .get(&user_id)
            .into_iter()
            .flatten()
            .filter_map(|id| state.sessions.get(id))
            .filter(|s| s.expires_at > now)
            .cloned()
            .collect()
    }
}
