//! Sessions in Redis. Every key of one user carries the hash tag `{user id}`, so all of a
//! user's keys live in one slot and each Lua script below touches one slot only.

use std::sync::Arc;
use std::time::Duration;

use dt_users_domain::Timestamp;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};
use tokio::sync::OnceCell;
use uuid::Uuid;

use super::{Rotation, Session, SessionStoreError};

const CREATE: &str = r"
redis.call('HSET', KEYS[1], 'uid', ARGV[2], 'created_at', ARGV[3], 'last_used_at', ARGV[3],
           'expires_at', ARGV[4], 'ua', ARGV[5], 'ip', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('SADD', KEYS[2], ARGV[1])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[7]) then redis.call('PEXPIRE', KEYS[2], ARGV[7]) end
redis.call('HSET', KEYS[3], 'sid', ARGV[1], 'uid', ARGV[2], 'state', 'current')
redis.call('PEXPIRE', KEYS[3], ARGV[7])
return 1
";

const CHECK: &str = r"
local s = redis.call('HMGET', KEYS[1], 'uid', 'expires_at')
if not s[1] or s[1] ~= ARGV[1] or tonumber(s[2]) <= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'last_used_at', ARGV[2])
return 1
";

const ROTATE: &str = r"
local r = redis.call('HMGET', KEYS[1], 'sid', 'uid', 'state', 'rotated_at')
if not r[1] then return {'invalid'} end
local skey = ARGV[3] .. ':session:' .. r[1]
local s = redis.call('HMGET', skey, 'uid', 'expires_at')
local now = tonumber(ARGV[1])
if not s[1] or s[1] ~= r[2] or tonumber(s[2]) <= now then return {'invalid'} end
if r[3] == 'current' then
  redis.call('HSET', KEYS[1], 'state', 'rotated', 'rotated_at', ARGV[1])
  redis.call('HSET', KEYS[2], 'sid', r[1], 'uid', r[2], 'state', 'current')
  redis.call('PEXPIRE', KEYS[2], math.max(1, tonumber(s[2]) - now))
  redis.call('HSET', skey, 'last_used_at', ARGV[1])
  return {'rotated', r[1], s[2]}
end
if now - tonumber(r[4]) <= tonumber(ARGV[2]) then return {'grace'} end
redis.call('DEL', skey)
redis.call('SREM', KEYS[3], r[1])
return {'reused', r[1]}
";

const REVOKE: &str = r"
if redis.call('HGET', KEYS[1], 'uid') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
return 1
";

const REVOKE_ALL: &str = r"
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
                       'created_at', 'last_used_at', 'expires_at', 'ua', 'ip')
  if not s[1] or tonumber(s[3]) <= now then
    redis.call('SREM', KEYS[1], sid)
  else
    for _, v in ipairs({sid, s[1], s[2], s[3], s[4] or '', s[5] or ''}) do table.insert(out, v) end
  end
end
return out
";

#[derive(Debug)]
struct Scripts {
    create: Script,
    check: Script,
    rotate: Script,
    revoke: Script,
    revoke_all: Script,
    list: Script,
}

/// Sessions shared by every instance through Redis.
#[derive(Clone)]
pub struct RedisSessions {
    client: Client,
    connection: Arc<OnceCell<ConnectionManager>>,
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
    /// Checks the URL now; connects on first use, so Redis being down at start-up makes
    /// authenticated requests answer 503 until it is back instead of stopping the service.
    pub fn new(url: &str, prefix: &str) -> Result<Self, SessionStoreError> {
        let client = Client::open(url).map_err(unavailable)?;
        Ok(Self {
            client,
            connection: Arc::new(OnceCell::new()),
            prefix: prefix.to_owned(),
            scripts: Arc::new(Scripts {
                create: Script::new(CREATE),
                check: Script::new(CHECK),
                rotate: Script::new(ROTATE),
                revoke: Script::new(REVOKE),
                revoke_all: Script::new(REVOKE_ALL),
                list: Script::new(LIST),
            }),
        })
    }

    /// The shared connection, for other atomic steps on the same Redis (the rate limiter).
    pub(crate) async fn connection(&self) -> Result<ConnectionManager, SessionStoreError> {
        self.conn().await
    }

    async fn conn(&self) -> Result<ConnectionManager, SessionStoreError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        self.connection
            .get_or_try_init(|| ConnectionManager::new_with_config(self.client.clone(), config))
            .await
            .cloned()
            .map_err(unavailable)
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

    fn refresh_key(&self, user_id: Uuid, hash: &str) -> String {
        format!("{}:refresh:{hash}", self.tag(user_id))
    }

    pub async fn create(
        &self,
        session: &Session,
        refresh_hash: &str,
    ) -> Result<(), SessionStoreError> {
        let ttl = (session.expires_at.as_millis() - session.created_at.as_millis()).max(1);
        let mut conn = self.conn().await?;
        let _: i64 = self
            .scripts
            .create
            .key(self.session_key(session.user_id, session.id))
            .key(self.user_key(session.user_id))
            .key(self.refresh_key(session.user_id, refresh_hash))
            .arg(session.id.to_string())
            .arg(session.user_id.to_string())
            .arg(ms(session.created_at))
            .arg(ms(session.expires_at))
            .arg(session.user_agent.as_deref().unwrap_or(""))
            .arg(session.ip.as_deref().unwrap_or(""))
            .arg(ttl)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
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
        user_id: Uuid,
        old_hash: &str,
        new_hash: &str,
        now: Timestamp,
        grace_ms: i64,
    ) -> Result<Rotation, SessionStoreError> {
        let mut conn = self.conn().await?;
        let reply: Vec<String> = self
            .scripts
            .rotate
            .key(self.refresh_key(user_id, old_hash))
            .key(self.refresh_key(user_id, new_hash))
            .key(self.user_key(user_id))
            .arg(ms(now))
            .arg(grace_ms)
            .arg(self.tag(user_id))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let corrupt = || SessionStoreError::Corrupt(format!("rotate replied {reply:?}"));
        let session_id = |s: Option<&String>| s.and_then(|s| Uuid::parse_str(s).ok());
        match reply.first().map(String::as_str) {
            Some("rotated") => {
                let session_id = session_id(reply.get(1)).ok_or_else(corrupt)?;
                let expires_at = reply
                    .get(2)
                    .and_then(|s| s.parse().ok())
                    .map(Timestamp::from_millis)
                    .ok_or_else(corrupt)?;
                Ok(Rotation::Rotated {
                    session_id,
                    expires_at,
                })
            }
            Some("grace") => Ok(Rotation::WithinGrace),
            Some("reused") => Ok(Rotation::Reused {
                session_id: session_id(reply.get(1)).ok_or_else(corrupt)?,
            }),
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
            .arg(self.tag(user_id))
            .arg(except.map(|id| id.to_string()).unwrap_or_default())
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
        flat.chunks(6)
            .map(|row| match row {
                [id, created, used, expires, ua, ip] => Some(Session {
                    id: Uuid::parse_str(id).ok()?,
                    user_id,
                    created_at: time(created)?,
                    last_used_at: time(used)?,
                    expires_at: time(expires)?,
                    user_agent: text(ua),
                    ip: text(ip),
                }),
                _ => None,
            })
            .map(|s| s.ok_or_else(|| SessionStoreError::Corrupt("malformed session list".into())))
            .collect()
    }

    pub async fn ping(&self) -> Result<(), SessionStoreError> {
        let mut conn = self.conn().await?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
