//! The in-process rate limiter's cost per request as the number of keys grows: a flood of new
//! keys (made-up addresses, many client networks) must not make each request dearer.
//!
//! `cargo run --release --example limiter_keys [keys]`: fills the limiter with `keys` distinct
//! keys (default 400,000), timing each block of 50,000 requests, each for a new key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use dt_users::domain::Timestamp;
use dt_users::security::rate_limit::{Quota, RateLimiter};

const BLOCK: usize = 50_000;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let keys: usize = std::env::args()
        .nth(1)
        .map_or(400_000, |n| n.parse().expect("a number of keys"));
    let limiter = RateLimiter::memory(100_000);
    let quota = Quota {
        burst: 10,
        per_period: 1,
        period_secs: 1,
    };
    let now = Timestamp::from_millis(1_000_000);
    println!("keys so far | µs per request (mean over {BLOCK})");
    let mut started = Instant::now();
    for i in 0..keys {
        let key = format!("login_ip:client-{i}");
        limiter.check(&key, quota, now, true).await.unwrap();
        if (i + 1) % BLOCK == 0 {
            let micros = started.elapsed().as_secs_f64() * 1e6 / BLOCK as f64;
            println!("{:>11} | {micros:.2}", i + 1);
            started = Instant::now();
        }
    }
}
