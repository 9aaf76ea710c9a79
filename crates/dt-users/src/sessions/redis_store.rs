//! Sessions in Redis, one server or a Redis Cluster. Every key of one user carries the hash
//! tag `{user id}`, so all of a user's keys live in one slot: each Lua script below is given
//! keys of one user only, and builds no key of another (`REVOKE_ALL` and `LIST` reach the
//! session hashes they find through the user's prefix, in the same slot). The deferred-events
//! list is one key of its own, touched by single-key commands. A user has a set of session
//! ids, one hash per session and a revocation epoch; nothing per token.

use std::sync::Arc;

use dt_users_domain::{AuthMethods, Timestamp};
use uuid::Uuid;

use super::redis_connection::{LuaScript, RedisConnection, RedisEndpoint};
use super::{Epoch, PresentedRefresh, RefreshSecrets, Rotation, Session, SessionStoreError};

/// A revocation epoch matters only to sign-ins in flight; it lives a day past its last raise
/// (a sign-in that read it before it expired is refused, never wrongly let through).
const EPOCH_TTL_MS: i64 = 86_400_000;

const CREATE: &str = r"
if (redis.call('GET', KEYS[3]) or '0') ~= ARGV[10] then return 0 end
redis.call('HSET', KEYS[1], 'uid', ARGV[2], 'created_at', ARGV[3], 'last_used_at', ARGV[3],
           'expires_at', ARGV[4], 'ua', ARGV[5], 'ip', ARGV[6], 'fam', ARGV[8], 'cur', ARGV[9],
           'gen', '0', 'rotated_at', ARGV[3], 'amr', ARGV[11])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('SADD', KEYS[2], ARGV[1])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[7]) then redis.call('PEXPIRE', KEYS[2], ARGV[7]) end
return 1
";

const CHECK: &str = r"
local s = redis.call('HMGET', KEYS[1], 'uid', 'expires_at')
if not s[1] or s[1] ~= ARGV[1] or tonumber(s[2]) <= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'last_used_at', ARGV[2])
return 1
";

const OWNS: &str = r"
local s = redis.call('HMGET', KEYS[1], 'uid', 'expires_at', 'fam')
if not s[1] or s[1] ~= ARGV[1] or tonumber(s[2]) <= tonumber(ARGV[2]) or s[3] ~= ARGV[3] then
  return 0
end
return 1
";

const ROTATE: &str = r"
local s = redis.call('HMGET', KEYS[1], 'uid', 'expires_at', 'fam', 'cur', 'gen', 'rotated_at', 'amr')
local now = tonumber(ARGV[6])
if not s[1] or s[1] ~= ARGV[1] or tonumber(s[2]) <= now or s[3] ~= ARGV[2] then
  return {'invalid'}
end
local gen = tonumber(s[5])
local presented = tonumber(ARGV[3])
if presented > gen or (presented == gen and s[4] ~= ARGV[4]) then return {'invalid'} end
if presented == gen then
  redis.call('HSET', KEYS[1], 'cur', ARGV[5], 'gen', tostring(gen + 1), 'rotated_at', ARGV[6],
             'last_used_at', ARGV[6])
  return {'rotated', s[2], s[7] or ''}
end
if presented == gen - 1 and now - tonumber(s[6]) <= tonumber(ARGV[7]) then return {'grace'} end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[8])
return {'reused'}
";

const REVOKE: &str = r"
if redis.call('HGET', KEYS[1], 'uid') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
return 1
";

const REVOKE_ALL: &str = r"
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local ended = {}
for _, sid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if sid ~= ARGV[2] then
    redis.call('DEL', ARGV[1] .. ':session:' .. sid)
    redis.call('SREM', KEYS[1], sid)
    table.insert(ended, sid)
  end
end
return ended
";

const LIST: &str = r"
local out = {}
local now = tonumber(ARGV[2])
for _, sid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local s = redis.call('HMGET', ARGV[1] .. ':session:' .. sid,
                       'created_at', 'last_used_at', 'expires_at', 'ua', 'ip', 'amr')
  if not s[1] or tonumber(s[3]) <= now then
    redis.call('SREM', KEYS[1], sid)
  else
    for _, v in ipairs({sid, s[1], s[2], s[3], s[4] or '', s[5] or '', s[6] or ''}) do
      table.insert(out, v)
    end
  end
end
return out
";

#[derive(Debug)]
struct Scripts {
    create: LuaScript,
    check: LuaScript,
    owns: LuaScript,
    rotate: LuaScript,
    revoke: LuaScript,
    revoke_all: LuaScript,
    list: LuaScript,
}

/// Sessions shared by every instance through Redis.
#[derive(Clone)]
pub struct RedisSessions {
    redis: RedisEndpoint,
    prefix: String,
    scripts: Arc<Scripts>,
}

impl std::fmt::Debug for RedisSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSessions")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(err: redis::RedisError) -> SessionStoreError {
    SessionStoreError::Unavailable(err.to_string())
}

fn ms(t: Timestamp) -> String {
    t.as_millis().to_string()
}

impl RedisSessions {
    /// Sessions on the Redis server at `url`. Checks the URL now; connects on first use, so
    /// Redis being down at start-up makes authenticated requests answer 503 until it is back
    /// instead of stopping the service.
    pub fn new(url: &str, prefix: &str) -> Result<Self, SessionStoreError> {
        Ok(Self::on(
            RedisEndpoint::server(url).map_err(unavailable)?,
            prefix,
        ))
    }

    /// Sessions on the Redis Cluster that any of `seeds` belongs to; connected on first use,
    /// as [`RedisSessions::new`].
    pub fn cluster(seeds: &[String], prefix: &str) -> Result<Self, SessionStoreError> {
        Ok(Self::on(
            RedisEndpoint::cluster(seeds).map_err(unavailable)?,
            prefix,
        ))
    }

    fn on(redis: RedisEndpoint, prefix: &str) -> Self {
        Self {
            redis,
            prefix: prefix.to_owned(),
            scripts: Arc::new(Scripts {
                create: LuaScript::new(CREATE),
                check: LuaScript::new(CHECK),
                owns: LuaScript::new(OWNS),
                rotate: LuaScript::new(ROTATE),
                revoke: LuaScript::new(REVOKE),
                revoke_all: LuaScript::new(REVOKE_ALL),
                list: LuaScript::new(LIST),
            }),
        }
    }

    /// The shared connection, for other atomic steps on the same Redis (the rate limiter).
    pub(crate) async fn connection(&self) -> Result<RedisConnection, SessionStoreError> {
        self.conn().await
    }

    async fn conn(&self) -> Result<RedisConnection, SessionStoreError> {
        self.redis.connection().await.map_err(unavailable)
    }

    /// `{prefix}:{user id}`: the hash tag that keeps one user's keys in one slot.
    fn tag(&self, user_id: Uuid) -> String {
        format!("{}:{{{user_id}}}", self.prefix)
    }

    fn session_key(&self, user_id: Uuid, session_id: Uuid) -> String {
        format!("{}:session:{session_id}", self.tag(user_id))
    }

    fn user_key(&self, user_id: Uuid) -> String {
        format!("{}:sessions", self.tag(user_id))
    }

    fn epoch_key(&self, user_id: Uuid) -> String {
        format!("{}:epoch", self.tag(user_id))
    }

    pub async fn epoch(&self, user_id: Uuid) -> Result<Epoch, SessionStoreError> {
        let mut conn = self.conn().await?;
        let epoch: Option<u64> = redis::cmd("GET")
            .arg(self.epoch_key(user_id))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(Epoch(epoch.unwrap_or(0)))
    }

    pub async fn create(
        &self,
        session: &Session,
        secrets: &RefreshSecrets,
        epoch: Epoch,
    ) -> Result<bool, SessionStoreError> {
        let ttl = (session.expires_at.as_millis() - session.created_at.as_millis()).max(1);
        let mut conn = self.conn().await?;
        let created: i64 = self
            .scripts
            .create
            .key(self.session_key(session.user_id, session.id))
            .key(self.user_key(session.user_id))
            .key(self.epoch_key(session.user_id))
            .arg(session.id.to_string())
            .arg(session.user_id.to_string())
            .arg(ms(session.created_at))
            .arg(ms(session.expires_at))
            .arg(session.user_agent.as_deref().unwrap_or(""))
            .arg(session.ip.as_deref().unwrap_or(""))
            .arg(ttl)
            .arg(&secrets.family_hash)
            .arg(&secrets.current_hash)
            .arg(epoch.0.to_string())
            .arg(session.methods.encode())
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(created == 1)
    }

    pub async fn owns(
        &self,
        token: &PresentedRefresh,
        now: Timestamp,
    ) -> Result<bool, SessionStoreError> {
        let mut conn = self.conn().await?;
        let owned: i64 = self
            .scripts
            .owns
            .key(self.session_key(token.user_id, token.session_id))
            .arg(token.user_id.to_string())
            .arg(ms(now))
            .arg(&token.secrets.family_hash)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(owned == 1)
    }

    pub async fn check(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        now: Timestamp,
    ) -> Result<bool, SessionStoreError> {
        let mut conn = self.conn().await?;
        let live: i64 = self
            .scripts
            .check
            .key(self.session_key(user_id, session_id))
            .arg(user_id.to_string())
            .arg(ms(now))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(live == 1)
    }

    pub async fn rotate(
        &self,
        token: &PresentedRefresh,
        new_hash: &str,
        now: Timestamp,
        grace_ms: i64,
    ) -> Result<Rotation, SessionStoreError> {
        let mut conn = self.conn().await?;
        let reply: Vec<String> = self
            .scripts
            .rotate
            .key(self.session_key(token.user_id, token.session_id))
            .key(self.user_key(token.user_id))
            .arg(token.user_id.to_string())
            .arg(&token.secrets.family_hash)
            .arg(token.generation.to_string())
            .arg(&token.secrets.current_hash)
            .arg(new_hash)
            .arg(ms(now))
            .arg(grace_ms)
            .arg(token.session_id.to_string())
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let corrupt = || SessionStoreError::Corrupt(format!("rotate replied {reply:?}"));
        match reply.first().map(String::as_str) {
            Some("rotated") => {
                let expires_at = reply
                    .get(1)
                    .and_then(|s| s.parse().ok())
                    .map(Timestamp::from_millis)
                    .ok_or_else(corrupt)?;
                let methods = AuthMethods::decode(reply.get(2).map_or("", String::as_str));
                Ok(Rotation::Rotated {
                    expires_at,
                    methods,
                })
            }
            Some("grace") => Ok(Rotation::WithinGrace),
            Some("reused") => Ok(Rotation::Reused),
            Some("invalid") => Ok(Rotation::Invalid),
            _ => Err(corrupt()),
        }
    }

    pub async fn revoke(&self, user_id: Uuid, session_id: Uuid) -> Result<bool, SessionStoreError> {
        let mut conn = self.conn().await?;
        let ended: i64 = self
            .scripts
            .revoke
            .key(self.session_key(user_id, session_id))
            .key(self.user_key(user_id))
            .arg(user_id.to_string())
            .arg(session_id.to_string())
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(ended == 1)
    }

    pub async fn revoke_all(
        &self,
        user_id: Uuid,
        except: Option<Uuid>,
    ) -> Result<Vec<Uuid>, SessionStoreError> {
        let mut conn = self.conn().await?;
        let ended: Vec<String> = self
            .scripts
            .revoke_all
            .key(self.user_key(user_id))
            .key(self.epoch_key(user_id))
            .arg(self.tag(user_id))
            .arg(except.map(|id| id.to_string()).unwrap_or_default())
            .arg(EPOCH_TTL_MS)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(ended
            .iter()
            .filter_map(|s| Uuid::parse_str(s).ok())
            .collect())
    }

    pub async fn list(
        &self,
        user_id: Uuid,
        now: Timestamp,
    ) -> Result<Vec<Session>, SessionStoreError> {
        let mut conn = self.conn().await?;
        let flat: Vec<String> = self
            .scripts
            .list
            .key(self.user_key(user_id))
            .arg(self.tag(user_id))
            .arg(ms(now))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let time = |s: &str| s.parse().map(Timestamp::from_millis).ok();
        let text = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        flat.chunks(7)
            .map(|row| match row {
                [id, created, used, expires, ua, ip, amr] => Some(Session {
                    id: Uuid::parse_str(id).ok()?,
                    user_id,
                    created_at: time(created)?,
                    last_used_at: time(used)?,
                    expires_at: time(expires)?,
                    user_agent: text(ua),
                    ip: text(ip),
                    methods: AuthMethods::decode(amr),
                }),
                _ => None,
            })
            .map(|s| s.ok_or_else(|| SessionStoreError::Corrupt("malformed session list".into())))
            .collect()
    }

    /// `{prefix}:deferred-events`: events of session ends the database could not take.
    fn deferred_key(&self) -> String {
        format!("{}:deferred-events", self.prefix)
    }

    pub async fn defer_event(&self, record: &str) -> Result<(), SessionStoreError> {
        let mut conn = self.conn().await?;
        let _: i64 = redis::cmd("RPUSH")
            .arg(self.deferred_key())
            .arg(record)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    pub async fn deferred_events(&self, max: usize) -> Result<Vec<String>, SessionStoreError> {
        let mut conn = self.conn().await?;
        let last = i64::try_from(max).unwrap_or(i64::MAX).saturating_sub(1);
        redis::cmd("LRANGE")
            .arg(self.deferred_key())
            .arg(0)
            .arg(last)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)
    }

    pub async fn forget_deferred_event(&self, record: &str) -> Result<(), SessionStoreError> {
        let mut conn = self.conn().await?;
        let _: i64 = redis::cmd("LREM")
            .arg(self.deferred_key())
            .arg(1)
            .arg(record)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), SessionStoreError> {
        self.conn().await?.ping().await.map_err(unavailable)
    }
}
