//! Loads synthetic accounts straight into dt-users' database for the load benchmark.
//!
//!     load-users <database-url> <from> <to> <password>
//!
//! Inserts the accounts `user<n>@bench.example` / `user<n>` for `from <= n < to`, active and
//! verified, all with one argon2id hash of `<password>` made with the parameters in
//! `DT_USERS_ARGON2_MEMORY_KIB`, `DT_USERS_ARGON2_ITERATIONS` and `DT_USERS_ARGON2_PARALLELISM`
//! (dt-users' defaults when unset), so that any of them can sign in with it. Works on MariaDB /
//! MySQL and on the embedded SQLite file (`sqlite://…`) after `dt-users migrate`.

use std::fmt::Write as _;
use std::time::Instant;

use dt_users_domain::{Clock, SystemClock};

use argon2::{Algorithm, Argon2, PasswordHasher, Version};
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use uuid::Uuid;

use dt_users_bench::{BoxError, argon2_params};

const BATCH: u64 = 2_000;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, from, to, password] = args.as_slice() else {
        return Err("usage: load-users <database-url> <from> <to> <password>".into());
    };
    let (from, to): (u64, u64) = (from.parse()?, to.parse()?);
    let params = argon2_params()?;
    let hash = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes())
        .map_err(|e| format!("hashing: {e}"))?
        .to_string();
    let now = SystemClock.now().as_millis();

    install_default_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await?;
    let started = Instant::now();
    let mut tx = pool.begin().await?;
    let mut n = from;
    while n < to {
        let end = (n + BATCH).min(to);
        let mut sql = String::from(
            "INSERT INTO users (id, email, email_lower, email_verified, username, \
             username_lower, password_hash, status, banned, created_at, updated_at) VALUES ",
        );
        for i in n..end {
            if i > n {
                sql.push(',');
            }
            write!(
                sql,
                "('{id}','user{i}@bench.example','user{i}@bench.example',1,'user{i}','user{i}',\
                 '{hash}','active',0,{now},{now})",
                id = Uuid::now_v7(),
            )?;
        }
        // Every value in the statement is made here (numbers, a UUID, the hash), none is read.
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await?;
        n = end;
        if n % 100_000 == 0 || n == to {
            tx.commit().await?;
            tx = pool.begin().await?;
            eprintln!("{n} accounts ({:.1} s)", started.elapsed().as_secs_f64());
        }
    }
    tx.commit().await?;
    println!(
        "{{\"accounts\":{},\"seconds\":{:.1}}}",
        to - from,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
