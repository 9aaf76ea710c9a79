//! The rate limiter: GCRA (generic cell rate algorithm) per key, in Redis — shared by every
//! instance, each decision one Lua script — or in process memory for the embedded default.
//! When Redis cannot be reached the limiter fails closed: the request is answered 503.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dt_users_domain::Timestamp;
use redis::Script;

use crate::sessions::SessionStoreError;

/// A limit: `burst` requests at once, refilled at `per_period` requests per `period_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub burst: u32,
    pub per_period: u32,
    pub period_secs: u64,
}

impl Quota {
    /// Milliseconds between two requests at the steady rate.
    fn emission_ms(self) -> i64 {
        let per = i64::from(self.per_period.max(1));
        (i64::try_from(self.period_secs)
            .unwrap_or(i64::MAX / 1000)
            .saturating_mul(1000)
            / per)
            .max(1)
    }

    fn tolerance_ms(self) -> i64 {
        self.emission_ms()
            .saturating_mul(i64::from(self.burst.max(1)) - 1)
    }
}

/// What the limiter decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests left in the burst after this one.
    pub remaining: u32,
    /// Milliseconds until a request would be allowed (0 when allowed).
    pub retry_after_ms: i64,
    /// Milliseconds until the burst is full again.
    pub reset_ms: i64,
}

/// GCRA on a stored theoretical arrival time; returns the decision and the new time to store.
/// `consume = false` only asks.
pub fn gcra(
    stored_tat: Option<i64>,
    now: i64,
    quota: Quota,
    consume: bool,
) -> (Decision, Option<i64>) {
    let emission = quota.emission_ms();
    let tolerance = quota.tolerance_ms();
    let tat = stored_tat.unwrap_or(now).max(now);
    if tat - now > tolerance {
        let decision = Decision {
            allowed: false,
            remaining: 0,
            retry_after_ms: tat - now - tolerance,
            reset_ms: tat - now,
        };
        return (decision, None);
    }
    let new_tat = if consume { tat + emission } else { tat };
    let remaining = (tolerance + emission - (new_tat - now)) / emission;
    let decision = Decision {
        allowed: true,
        remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
        retry_after_ms: 0,
        reset_ms: new_tat - now,
    };
    (decision, consume.then_some(new_tat))
}

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

#[derive(Clone)]
pub enum RateLimiter {
    Redis {
        sessions: Box<crate::sessions::RedisSessions>,
        prefix: String,
        script: Arc<Script>,
    },
    Memory(Arc<Mutex<HashMap<String, i64>>>),
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
            script: Arc::new(Script::new(GCRA)),
        }
    }

    pub fn memory() -> Self {
        Self::Memory(Arc::new(Mutex::new(HashMap::new())))
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
                let mut map = map
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let now = now.as_millis();
                if map.len() > 100_000 {
                    map.retain(|_, tat| *tat > now);
                }
                let (decision, new_tat) = gcra(map.get(key).copied(), now, quota, consume);
                if let Some(tat) = new_tat {
                    map.insert(key.to_owned(), tat);
                }
                Ok(decision)
            }
            Self::Redis {
                sessions,
                prefix,
                script,
            } => {
                let mut conn = sessions.connection().await?;
                let reply: Vec<i64> = script
                    .key(format!("{prefix}:{key}"))
                    .arg(now.as_millis())
                    .arg(quota.emission_ms())
                    .arg(quota.tolerance_ms())
                    .arg(if consume { "1" } else { "0" })
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| SessionStoreError::Unavailable(e.to_string()))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LOGIN: Quota = Quota {
        burst: 10,
        per_period: 1,
        period_secs: 1,
    };

    #[test]
    fn a_burst_then_the_steady_rate() {
        let mut tat = None;
        let now = 1_000_000;
        for i in 0..10 {
            let (d, new) = gcra(tat, now, LOGIN, true);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 9 - i);
            tat = new;
        }
        let (d, _) = gcra(tat, now, LOGIN, true);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ms, 1_000);
        let (d, _) = gcra(tat, now + 1_000, LOGIN, true);
        assert!(d.allowed);
    }

    #[test]
    fn asking_does_not_count() {
        let (d, new) = gcra(None, 0, LOGIN, false);
        assert!(d.allowed && new.is_none());
        assert_eq!(d.remaining, 10);
    }

    #[test]
    fn quotas_parse() {
        assert_eq!(
            Quota::parse("10/1/1"),
            Ok(Quota {
                burst: 10,
                per_period: 1,
                period_secs: 1
            })
        );
        for bad in ["", "10", "10/1", "0/1/1", "a/b/c", "10/1/1/1", "-1/1/1"] {
            assert!(Quota::parse(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn quota_parsing_never_panics(s in "\\PC*") {
            let _ = Quota::parse(&s);
        }

        #[test]
        fn never_more_than_burst_plus_rate(times in proptest::collection::vec(0_i64..100_000, 1..300)) {
            let mut times = times;
            times.sort_unstable();
            let mut tat = None;
            let mut allowed = 0_i64;
            for now in &times {
                let (d, new) = gcra(tat, *now, LOGIN, true);
                if d.allowed { allowed += 1; tat = new; }
            }
            let span = times.last().unwrap() - times.first().unwrap();
            prop_assert!(allowed <= 10 + span / 1_000 + 1);
        }
    }
}

impl Quota {
    /// `burst/requests/seconds`, e.g. `10/1/1`: a burst of 10, then 1 request a second.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split('/').map(str::trim).collect();
        let [burst, per, secs] = parts.as_slice() else {
            return Err(format!("{text:?}: expected burst/requests/seconds"));
        };
        let number = |s: &str| s.parse::<u64>().ok().filter(|n| *n > 0);
        match (number(burst), number(per), number(secs)) {
            (Some(burst), Some(per), Some(secs)) => Ok(Self {
                burst: u32::try_from(burst).map_err(|e| e.to_string())?,
                per_period: u32::try_from(per).map_err(|e| e.to_string())?,
                period_secs: secs,
            }),
            _ => Err(format!(
                "{text:?}: expected three positive numbers burst/requests/seconds"
            )),
        }
    }
}

/// The limits in force, by rule.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub login_ip: Quota,
    pub login_account: Quota,
    pub login_ip_account: Quota,
    pub register_ip: Quota,
    pub email_target: Quota,
    pub email_ip: Quota,
    pub refresh: Quota,
    pub global_ip: Quota,
}

impl Rules {
    pub fn from_settings(s: &crate::config::Settings) -> Result<Self, String> {
        let q = |name: &str, text: &str| {
            Quota::parse(text).map_err(|e| format!("DT_USERS_RATE_LIMIT_{name}: {e}"))
        };
        Ok(Self {
            login_ip: q("LOGIN_IP", &s.rate_limit_login_ip)?,
            login_account: q("LOGIN_ACCOUNT", &s.rate_limit_login_account)?,
            login_ip_account: q("LOGIN_IP_ACCOUNT", &s.rate_limit_login_ip_account)?,
            register_ip: q("REGISTER_IP", &s.rate_limit_register_ip)?,
            email_target: q("EMAIL_TARGET", &s.rate_limit_email_target)?,
            email_ip: q("EMAIL_IP", &s.rate_limit_email_ip)?,
            refresh: q("REFRESH", &s.rate_limit_refresh)?,
            global_ip: q("GLOBAL_IP", &s.rate_limit_global_ip)?,
        })
    }
}
