//! The hash limit: how many password verifications per second this machine can do at the
//! configured argon2id parameters, the ceiling of sign-in and registration.
//!
//!     hash-limit [seconds]
//!
//! Runs one verification loop per core, each reusing its memory (as dt-users' hashing threads
//! do), for the given time (default 10 s), with the parameters in `DT_USERS_ARGON2_MEMORY_KIB`,
//! `DT_USERS_ARGON2_ITERATIONS` and `DT_USERS_ARGON2_PARALLELISM` (dt-users' defaults when
//! unset). Prints JSON: threads, verifications, seconds per verification with every core busy,
//! and the limit (cores ÷ seconds per verification).

use std::time::{Duration, Instant};

use argon2::{Algorithm, Argon2, Block, Version};

use dt_users_bench::{BoxError, argon2_params};

fn main() -> Result<(), BoxError> {
    let seconds: u64 = match std::env::args().nth(1) {
        Some(s) => s.parse()?,
        None => 10,
    };
    let params = argon2_params()?;
    let threads = std::thread::available_parallelism()?.get();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let params = params.clone();
            std::thread::spawn(move || -> Result<u64, String> {
                let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
                let mut blocks = vec![Block::default(); params.block_count()];
                let mut out = [0u8; 32];
                let mut done = 0;
                while Instant::now() < deadline {
                    argon2
                        .hash_password_into_with_memory(
                            b"benchmark passphrase",
                            b"sixteen byte salt",
                            &mut out,
                            &mut blocks,
                        )
                        .map_err(|e| e.to_string())?;
                    done += 1;
                }
                Ok(done)
            })
        })
        .collect();
    let mut verifications = 0;
    for worker in workers {
        verifications += worker.join().map_err(|_| "a hashing thread panicked")??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let per_verify = elapsed * threads as f64 / verifications as f64;
    println!(
        "{{\"threads\":{threads},\"verifications\":{verifications},\"seconds\":{elapsed:.2},\
         \"ms_per_verification\":{:.2},\"limit_per_s\":{:.1}}}",
        per_verify * 1000.0,
        threads as f64 / per_verify
    );
    Ok(())
}
