//! The rate limiter: GCRA (generic cell rate algorithm) per key, in Redis — shared by every
//! instance, each decision one Lua script — or in process memory for the embedded default
//! (see [`MemoryLimits`]).
//! When Redis cannot be reached the limiter fails closed: the request is answered 503.
//! Each step touches one key, so it runs on a Redis Cluster as on one server.

use std::sync::{Arc, Mutex};

use dt_users_domain::Timestamp;

use crate::sessions::{LuaScript, SessionStoreError};

mod memory;
mod quota;

fn unavailable(err: redis::RedisError) -> SessionStoreError {
    SessionStoreError::Unavailable(err.to_string())
}

pub use memory::MemoryLimits;
pub use quota::{Decision, Quota, Rules, gcra};

/// The same algorithm as [`gcra`], as one atomic Redis step.
const GCRA: &str = r"
local now = tonumber(ARGV[1])
local emission = tonumber(ARGV[2])
local tolerance = tonumber(ARGV[3])
local consume = ARGV[4] == '1'
local stored = redis.call('GET', KEYS[1])
local tat = now
if stored then tat = math.max(tonumber(stored), now) end
if tat - now > tolerance then
  return {0, 0, tat - now - tolerance, tat - now}
end
local new_tat = tat
if consume then
  new_tat = tat + emission
  redis.call('SET', KEYS[1], new_tat, 'PX', math.max(1, new_tat - now))
end
local remaining = math.floor((tolerance + emission - (new_tat - now)) / emission)
return {1, math.max(remaining, 0), 0, new_tat - now}
";

/// Gives one request back (a password check that succeeded): the stored time moves back by
/// one emission, never before now.
const REFUND: &str = r"
local stored = redis.call('GET', KEYS[1])
if not stored then return 0 end
local now = tonumber(ARGV[1])
local tat = math.max(tonumber(stored) - tonumber(ARGV[2]), now)
if tat <= now then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], tat, 'PX', tat - now) end
return 1
";

/// Takes one of `ARGV[2]` slots under a key, each held until released or for `ARGV[3]` ms at
/// most (a process that dies holding one does not keep it).
const ACQUIRE_SLOT: &str = r"
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

/// How long an in-flight slot is held at most, should its holder never release it.
const SLOT_TTL_MS: i64 = 30_000;

/// One in-flight slot, released with [`RateLimiter::release`].
#[derive(Debug)]
pub struct Slot {
    key: String,
    id: String,
}

/// The limiter's steps in Redis.
#[derive(Debug)]
pub struct LimiterScripts {
    gcra: LuaScript,
    refund: LuaScript,
    acquire_slot: LuaScript,
}

#[derive(Clone)]
pub enum RateLimiter {
    Redis {
        sessions: Box<crate::sessions::RedisSessions>,
        prefix: String,
        scripts: Arc<LimiterScripts>,
    },
    Memory(Arc<Mutex<MemoryLimits>>),
    Disabled,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Redis { .. } => "RateLimiter::Redis",
            Self::Memory(_) => "RateLimiter::Memory",
            Self::Disabled => "RateLimiter::Disabled",
        })
    }
}

impl RateLimiter {
    pub fn redis(sessions: crate::sessions::RedisSessions, prefix: &str) -> Self {
        Self::Redis {
            sessions: Box::new(sessions),
            prefix: format!("{prefix}:rl"),
            scripts: Arc::new(LimiterScripts {
                gcra: LuaScript::new(GCRA),
                refund: LuaScript::new(REFUND),
                acquire_slot: LuaScript::new(ACQUIRE_SLOT),
            }),
        }
    }

    /// The in-process limiter, holding at most `max_keys` keys (see [`MemoryLimits`]).
    pub fn memory(max_keys: usize) -> Self {
        Self::Memory(Arc::new(Mutex::new(MemoryLimits::new(max_keys))))
    }

    fn memory_state(map: &Mutex<MemoryLimits>) -> std::sync::MutexGuard<'_, MemoryLimits> {
        map.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Gives back one request counted under `key` (see [`REFUND`]).
    pub async fn refund(
        &self,
        key: &str,
        quota: Quota,
        now: Timestamp,
    ) -> Result<(), SessionStoreError> {
        match self {
            Self::Disabled => Ok(()),
            Self::Memory(map) => {
                Self::memory_state(map).refund(key, quota, now.as_millis());
                Ok(())
            }
            Self::Redis {
                sessions,
                prefix,
                scripts,
            } => {
                let mut conn = sessions.connection().await?;
                let _: i64 = scripts
                    .refund
                    .key(format!("{prefix}:{key}"))
                    .arg(now.as_millis())
                    .arg(quota.emission_ms())
                    .invoke_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                Ok(())
            }
        }
    }

    /// Takes one of `max` in-flight slots under `key`; `None` when all are taken.
    pub async fn acquire(
        &self,
        key: &str,
        max: u32,
        now: Timestamp,
    ) -> Result<Option<Slot>, SessionStoreError> {
        let slot = Slot {
            key: key.to_owned(),
            id: super::secret_token::random_urlsafe(12),
        };
        match self {
            Self::Disabled => Ok(Some(slot)),
            Self::Memory(map) => {
                let now = now.as_millis();
                let taken = Self::memory_state(map).acquire(
                    &slot.key,
                    &slot.id,
                    max,
                    now,
                    now + SLOT_TTL_MS,
                );
                Ok(taken.then_some(slot))
            }
            Self::Redis {
                sessions,
                prefix,
                scripts,
            } => {
                let mut conn = sessions.connection().await?;
                let taken: i64 = scripts
                    .acquire_slot
                    .key(format!("{prefix}:{key}"))
                    .arg(now.as_millis())
                    .arg(max)
                    .arg(SLOT_TTL_MS)
                    .arg(&slot.id)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                Ok((taken == 1).then_some(slot))
            }
        }
    }

    /// Gives a slot back.
    pub async fn release(&self, slot: Slot) -> Result<(), SessionStoreError> {
        match self {
            Self::Disabled => Ok(()),
            Self::Memory(map) => {
                Self::memory_state(map).release(&slot.key, &slot.id);
                Ok(())
            }
            Self::Redis {
                sessions, prefix, ..
            } => {
                let mut conn = sessions.connection().await?;
                let _: i64 = redis::cmd("ZREM")
                    .arg(format!("{prefix}:{}", slot.key))
                    .arg(&slot.id)
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                Ok(())
            }
        }
    }

    /// Checks (and with `consume`, counts) one request against `quota` under `key`.
    pub async fn check(
        &self,
        key: &str,
        quota: Quota,
        now: Timestamp,
        consume: bool,
    ) -> Result<Decision, SessionStoreError> {
        match self {
            Self::Disabled => Ok(Decision {
                allowed: true,
                remaining: quota.burst,
                retry_after_ms: 0,
                reset_ms: 0,
            }),
            Self::Memory(map) => {
                Ok(Self::memory_state(map).check(key, quota, now.as_millis(), consume))
            }
            Self::Redis {
                sessions,
                prefix,
                scripts,
            } => {
                let mut conn = sessions.connection().await?;
                let reply: Vec<i64> = scripts
                    .gcra
                    .key(format!("{prefix}:{key}"))
                    .arg(now.as_millis())
                    .arg(quota.emission_ms())
                    .arg(quota.tolerance_ms())
                    .arg(if consume { "1" } else { "0" })
                    .invoke_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                match reply.as_slice() {
                    [allowed, remaining, retry, reset] => Ok(Decision {
                        allowed: *allowed == 1,
                        remaining: u32::try_from(*remaining).unwrap_or(0),
                        retry_after_ms: *retry,
                        reset_ms: *reset,
                    }),
                    _ => Err(SessionStoreError::Corrupt(format!(
                        "rate limiter replied {reply:?}"
                    ))),
                }
            }
        }
    }
}
