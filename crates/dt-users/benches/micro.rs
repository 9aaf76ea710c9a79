//! Micro-benchmarks of the steps every request repeats, each measured alone.
//!
//! - `access_token/sign`: issues one access token (header and claims to JSON, Ed25519
//!   signature), with a key generated in process.
//! - `access_token/verify`: verifies that token (header checks, signature, claims).
//! - `password/verify`: one correct password checked against its argon2id hash at the default
//!   parameters (m=19456 KiB, t=2, p=1) through `PasswordHasherPool::verify`, one at a time:
//!   the hash itself plus the pool's hand-off to the blocking threads.
//! - `rate_limit/gcra`: the pure GCRA decision, no store.
//! - `rate_limit/step/memory` and `rate_limit/step/redis`: one `RateLimiter::check` that counts
//!   and allows (the quota never refuses), in process and in Redis (one Lua script).
//! - `session/check/memory` and `session/check/redis`: `SessionStore::check` of a live session
//!   (found, owned, not expired; its last use recorded).
//!
//! Run with `cargo bench -p dt-users --bench micro` (a filter narrows it:
//! `cargo bench -p dt-users --bench micro -- rate_limit`). The Redis variants use
//! `DT_USERS_BENCH_REDIS_URL`, or else `redis://127.0.0.1:6379`, and are skipped with a note
//! when it does not answer. Their keys live under a prefix of their own, `dtu-crit-<random>`,
//! and are deleted when the run ends (they all expire besides).

// Benchmark code, not server code: a step that fails in the middle of a measurement stops the
// run loudly (setup errors are reported and end the run without a panic).
#![allow(clippy::expect_used)]

use std::error::Error;
use std::hint::black_box;
use std::process::ExitCode;
use std::time::Duration;

use criterion::{Criterion, SamplingMode};
use dt_users::domain::{AuthMethods, Clock, SystemClock, Timestamp};
use dt_users::security::access_token::{AccessTokens, TokenSubject};
use dt_users::security::keys::{SigningKeys, generate_pem};
use dt_users::security::password_hasher::{PasswordHasherPool, Verified};
use dt_users::security::rate_limit::{Quota, RateLimiter, gcra};
use dt_users::sessions::{MemorySessions, RedisSessions, RefreshSecrets, Session, SessionStore};
use secrecy::SecretString;
use tokio::runtime::Runtime;
use uuid::Uuid;

type BenchResult<T = ()> = Result<T, Box<dyn Error>>;

/// A quota no benchmark run comes near: a burst of a billion, a billion more a second.
const NEVER_REFUSES: Quota = Quota {
    burst: 1_000_000_000,
    per_period: 1_000_000_000,
    period_secs: 1,
};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("micro benchmarks: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> BenchResult {
    let mut c = Criterion::default().configure_from_args();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let redis = rt.block_on(BenchRedis::connect());

    access_token(&mut c)?;
    password(&mut c, &rt)?;
    rate_limit(&mut c, &rt, redis.as_ref())?;
    session(&mut c, &rt, redis.as_ref())?;

    // Dropping `redis` deletes its keys; an early return, or a panic, drops it as well.
    drop(redis);
    c.final_summary();
    Ok(())
}

/// The Redis the `…/redis` variants use, under a key prefix of this run's own.
struct BenchRedis {
    url: String,
    prefix: String,
    sessions: RedisSessions,
}

impl BenchRedis {
    /// `None`, with a note, when Redis does not answer.
    async fn connect() -> Option<Self> {
        let url = std::env::var("DT_USERS_BENCH_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let prefix = format!("dtu-crit-{}", Uuid::new_v4().simple());
        let sessions = match RedisSessions::new(&url, &prefix) {
            Ok(sessions) => sessions,
            Err(err) => {
                println!("note: skipping the Redis benchmarks: {url}: {err}");
                return None;
            }
        };
        match tokio::time::timeout(Duration::from_secs(5), sessions.ping()).await {
            Ok(Ok(())) => Some(Self {
                url,
                prefix,
                sessions,
            }),
            Ok(Err(err)) => {
                println!("note: skipping the Redis benchmarks: {url}: {err}");
                None
            }
            Err(_) => {
                println!("note: skipping the Redis benchmarks: {url} did not answer in 5 s");
                None
            }
        }
    }

    /// Deletes every key under the prefix (SCAN + DEL), returning how many there were.
    fn delete_keys(&self) -> redis::RedisResult<usize> {
        let mut conn = redis::Client::open(self.url.as_str())?.get_connection()?;
        let pattern = format!("{}:*", self.prefix);
        let mut cursor = 0_u64;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query(&mut conn)?;
            if !keys.is_empty() {
                let n: usize = redis::cmd("DEL").arg(&keys).query(&mut conn)?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

impl Drop for BenchRedis {
    fn drop(&mut self) {
        match self.delete_keys() {
            Ok(n) => println!("deleted the {n} Redis keys under {}:*", self.prefix),
            Err(err) => eprintln!(
                "could not delete the Redis keys under {}:* (they expire): {err}",
                self.prefix
            ),
        }
    }
}

fn access_token(c: &mut Criterion) -> BenchResult {
    let keys = SigningKeys::from_pem(generate_pem()?.as_bytes())?;
    let tokens = AccessTokens::new(keys, "dt-users".into(), "devtalk".into(), 900, 3);
    let subject = TokenSubject {
        user_id: Uuid::now_v7(),
        session_id: Uuid::now_v7(),
    };
    let now = SystemClock.now();
    let token = tokens.issue(subject, AuthMethods::PASSWORD, now)?;
    if tokens.verify(&token, now) != Ok(subject) {
        return Err("a freshly issued access token does not verify".into());
    }

    let mut group = c.benchmark_group("access_token");
    group.bench_function("sign", |b| {
        b.iter(|| {
            tokens
                .issue(black_box(subject), AuthMethods::PASSWORD, black_box(now))
                .expect("sign")
        });
    });
    group.bench_function("verify", |b| {
        b.iter(|| {
            tokens
                .verify(black_box(&token), black_box(now))
                .expect("verify")
        });
    });
    group.finish();
    Ok(())
}

fn password(c: &mut Criterion, rt: &Runtime) -> BenchResult {
    // The defaults of `DT_USERS_ARGON2_*`; one hash at a time, a short queue.
    let pool = PasswordHasherPool::new(19_456, 2, 1, 1, 8)?;
    let password = "correct horse battery staple";
    let stored = rt.block_on(pool.hash(SecretString::from(password)))?;
    let verified = rt.block_on(pool.verify(SecretString::from(password), stored.clone()))?;
    if verified != Verified::Yes {
        return Err(format!("the password checked as {verified:?}").into());
    }

    let mut group = c.benchmark_group("password");
    // Tens of milliseconds an iteration: few samples, each of a few iterations (~10 s in all).
    group
        .sample_size(20)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8));
    group.bench_function("verify", |b| {
        b.to_async(rt).iter(|| async {
            pool.verify(SecretString::from(password), stored.clone())
                .await
                .expect("password verify")
        });
    });
    group.finish();
    Ok(())
}

fn rate_limit(c: &mut Criterion, rt: &Runtime, redis: Option<&BenchRedis>) -> BenchResult {
    let now = SystemClock.now();
    let key = "login_ip:203.0.113.7";
    let memory = RateLimiter::memory(100_000);
    let redis = redis.map(|r| RateLimiter::redis(r.sessions.clone(), &r.prefix));
    for limiter in std::iter::once(&memory).chain(redis.as_ref()) {
        if !rt
            .block_on(limiter.check(key, NEVER_REFUSES, now, true))?
            .allowed
        {
            return Err(format!("{limiter:?} refused the first request").into());
        }
    }

    let mut group = c.benchmark_group("rate_limit");
    group.bench_function("gcra", |b| {
        let stored = Some(now.as_millis());
        b.iter(|| {
            gcra(
                black_box(stored),
                black_box(now.as_millis()),
                black_box(NEVER_REFUSES),
                true,
            )
        });
    });
    bench_step(&mut group, rt, "step/memory", &memory, key, now);
    match &redis {
        Some(limiter) => bench_step(&mut group, rt, "step/redis", limiter, key, now),
        None => println!("note: rate_limit/step/redis skipped (no Redis)"),
    }
    group.finish();
    Ok(())
}

fn bench_step(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &Runtime,
    id: &str,
    limiter: &RateLimiter,
    key: &str,
    now: Timestamp,
) {
    group.bench_function(id, |b| {
        b.to_async(rt).iter(|| async {
            limiter
                .check(black_box(key), NEVER_REFUSES, now, true)
                .await
                .expect("rate limit step")
        });
    });
}

fn session(c: &mut Criterion, rt: &Runtime, redis: Option<&BenchRedis>) -> BenchResult {
    let now = SystemClock.now();
    let session = Session {
        id: Uuid::now_v7(),
        user_id: Uuid::now_v7(),
        created_at: now,
        last_used_at: now,
        expires_at: now.plus_secs(86_400),
        user_agent: Some("criterion".into()),
        ip: Some("203.0.113.7".into()),
        methods: AuthMethods::PASSWORD,
    };
    let secrets = RefreshSecrets {
        family_hash: "family".into(),
        current_hash: "current".into(),
    };
    let memory = SessionStore::Memory(MemorySessions::default());
    let redis = redis.map(|r| SessionStore::Redis(r.sessions.clone()));
    for store in std::iter::once(&memory).chain(redis.as_ref()) {
        let created = rt.block_on(async {
            let epoch = store.epoch(session.user_id).await?;
            store.create(&session, &secrets, epoch).await
        })?;
        let live = rt.block_on(store.check(session.user_id, session.id, now))?;
        if !created || !live {
            return Err(format!("the {} session store lost the session", store.backend()).into());
        }
    }

    let mut group = c.benchmark_group("session");
    for store in std::iter::once(&memory).chain(redis.as_ref()) {
        group.bench_function(format!("check/{}", store.backend()), |b| {
            b.to_async(rt).iter(|| async {
                store
                    .check(black_box(session.user_id), black_box(session.id), now)
                    .await
                    .expect("session check")
            });
        });
    }
    if redis.is_none() {
        println!("note: session/check/redis skipped (no Redis)");
    }
    group.finish();
    Ok(())
}
