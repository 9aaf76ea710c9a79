//! Argon2id hashing off the async workers, with bounded concurrency and load shedding.
//!
//! Hashes run on a fixed set of threads, each of which keeps its argon2 memory (19 MiB at the
//! default parameters) from one hash to the next. Allocating that memory for every hash on
//! whichever thread ran it made resident memory grow with every burst of sign-ins (the
//! allocator keeps freed blocks in per-thread arenas) and cost about a fifth of each hash in
//! page faults.
//!
//! On Linux the hashing threads run at a lower scheduling priority (nice +10) than the
//! request workers, so that a burst of sign-ins uses the cores the cheap requests leave idle
//! instead of slowing them: every request that is not a sign-in keeps its latency, and the
//! sign-ins that do not fit are shed (see [`PasswordHasherPool`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use argon2::password_hash::phc::{Output, ParamsString, Salt};
use argon2::{ARGON2ID_IDENT, Algorithm, Argon2, Params, PasswordHash, Version};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

use threads::{HashingThreads, Memory};

mod threads;

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Too many hashes are queued; the request is shed rather than queued without limit.
    #[error("password hashing is overloaded")]
    Overloaded,
    #[error("password hashing failed: {0}")]
    Failed(String),
}

/// The outcome of checking a password against a stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    No,
    Yes,
    /// Correct, but hashed with other parameters than those configured now.
    YesRehash,
}

#[derive(Debug)]
pub struct PasswordHasherPool {
    params: Params,
    threads: HashingThreads,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
    /// A hash of a random password, verified when an email is unknown so that an unknown
    /// email costs the same as a wrong password: made with the parameters most stored hashes
    /// have (see [`PasswordHasherPool::match_stored`]).
    dummy_hash: String,
}

/// The cost parameters of a stored hash, if it is an argon2 hash.
fn stored_params(stored: &str) -> Option<(String, u32, u32, u32)> {
    let parsed = PasswordHash::new(stored).ok()?;
    let params = Params::try_from(&parsed).ok()?;
    Some((
        parsed.algorithm.as_str().to_owned(),
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
    ))
}

impl PasswordHasherPool {
    /// Starts `concurrency` hashing threads; up to `max_waiting` more requests may wait for
    /// one before the rest are shed.
    pub fn new(
        memory_kib: u32,
        iterations: u32,
        parallelism: u32,
        concurrency: usize,
        max_waiting: usize,
    ) -> Result<Self, HashError> {
        let params = Params::new(memory_kib, iterations, parallelism, None)
            .map_err(|e| HashError::Failed(format!("invalid argon2 parameters: {e}")))?;
        let concurrency = concurrency.max(1);
        let dummy = SecretString::from(super::secret_token::random_urlsafe(24));
        let dummy_hash = hash_with(&params, &dummy, &mut Memory::new(&params))?;
        Ok(Self {
            threads: HashingThreads::start(concurrency, &params)?,
            params,
            permits: Arc::new(Semaphore::new(concurrency)),
            waiting: AtomicUsize::new(0),
            max_waiting,
            dummy_hash,
        })
    }

    /// Makes the dummy hash with the parameters most of `stored` (a sample of the stored
    /// hashes) have. After a change of parameters, most accounts keep their old hash until
    /// they next sign in; a dummy with the new parameters would make a wrong password for a
    /// known address cost other than one for an unknown address, and tell them apart.
    pub fn match_stored(mut self, stored: &[String]) -> Result<Self, HashError> {
        let mut counts: std::collections::HashMap<(String, u32, u32, u32), usize> =
            std::collections::HashMap::new();
        for hash in stored {
            if let Some(params) = stored_params(hash) {
                *counts.entry(params).or_default() += 1;
            }
        }
        let Some(((algorithm, m, t, p), _)) = counts.into_iter().max_by_key(|(_, n)| *n) else {
            return Ok(self);
        };
        let current = (m, t, p)
            == (
                self.params.m_cost(),
                self.params.t_cost(),
                self.params.p_cost(),
            );
        if algorithm != ARGON2ID_IDENT.as_str() || current {
            return Ok(self);
        }
        let params = Params::new(m, t, p, None)
            .map_err(|e| HashError::Failed(format!("stored argon2 parameters: {e}")))?;
        let dummy = SecretString::from(super::secret_token::random_urlsafe(24));
        self.dummy_hash = hash_with(&params, &dummy, &mut Memory::new(&params))?;
        tracing::info!(
            memory_kib = m,
            iterations = t,
            parallelism = p,
            "unknown-account checks use the parameters most stored hashes have"
        );
        Ok(self)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Params, &mut Memory) -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            count_shed();
            tracing::warn!("password hashing is saturated: request shed");
            return Err(HashError::Overloaded);
        }
        let waiting = Waiting(&self.waiting);
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| HashError::Overloaded)?;
        drop(waiting);
        let params = self.params.clone();
        self.threads
            .run(permit, move |memory| work(&params, memory))
            .await
    }

    /// Whether a hash asked for now would be shed (every thread is busy and the queue is
    /// full), counted as shed if so. Lets a request that would hash be refused before it does
    /// any other work.
    pub fn shed_if_saturated(&self) -> bool {
        let saturated = self.permits.available_permits() == 0
            && self.waiting.load(Ordering::SeqCst) >= self.max_waiting;
        if saturated {
            count_shed();
        }
        saturated
    }

    /// Hashes a (normalized) password with the configured parameters.
    pub async fn hash(&self, password: SecretString) -> Result<String, HashError> {
        self.run(move |params, memory| hash_with(params, &password, memory))
            .await
    }

    /// Verifies a password; a stored hash that cannot be parsed never verifies.
    pub async fn verify(
        &self,
        password: SecretString,
        stored: String,
    ) -> Result<Verified, HashError> {
        self.run(move |params, memory| Ok(verify_with(params, &password, &stored, memory)))
            .await
    }

    /// Spends the time of one verification and always fails, for unknown accounts.
    pub async fn verify_dummy(&self, password: SecretString) -> Result<Verified, HashError> {
        let dummy = self.dummy_hash.clone();
        self.run(move |params, memory| {
            let _ = verify_with(params, &password, &dummy, memory);
            Ok(Verified::No)
        })
        .await
    }
}

fn count_shed() {
    metrics::counter!("password_hash_shed_total").increment(1);
}

fn failed(e: impl std::fmt::Display) -> HashError {
    HashError::Failed(e.to_string())
}

/// A PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`) of `password` with a new random salt.
fn hash_with(
    params: &Params,
    password: &SecretString,
    memory: &mut Memory,
) -> Result<String, HashError> {
    let salt_bytes: [u8; Salt::RECOMMENDED_LENGTH] = rand::random();
    let salt = Salt::new(&salt_bytes).map_err(failed)?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    memory
        .with_blocks(params.block_count(), |blocks| {
            argon2.hash_password_into_with_memory(
                password.expose_secret().as_bytes(),
                &salt,
                &mut out,
                blocks,
            )
        })
        .map_err(failed)?;
    Ok(PasswordHash {
        algorithm: ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(failed)?,
        salt: Some(salt),
        hash: Some(Output::new(&out).map_err(failed)?),
    }
    .to_string())
}

/// Checks `password` against a stored PHC string, with the parameters recorded in it.
fn verify_with(
    params: &Params,
    password: &SecretString,
    stored: &str,
    memory: &mut Memory,
) -> Verified {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return Verified::No;
    };
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return Verified::No;
    };
    let (Ok(algorithm), Ok(stored_params)) = (
        Algorithm::try_from(parsed.algorithm.as_str()),
        Params::try_from(&parsed),
    ) else {
        return Verified::No;
    };
    let version = parsed
        .version
        .map_or(Ok(Version::default()), Version::try_from);
    let Ok(version) = version else {
        return Verified::No;
    };
    let mut buffer = [0u8; Output::MAX_LENGTH];
    let Some(out) = buffer.get_mut(..expected.len()) else {
        return Verified::No;
    };
    let argon2 = Argon2::new(algorithm, version, stored_params.clone());
    let computed = memory.with_blocks(stored_params.block_count(), |blocks| {
        argon2.hash_password_into_with_memory(
            password.expose_secret().as_bytes(),
            salt,
            out,
            blocks,
        )
    });
    // `Output`'s equality is constant-time.
    let matches = computed.is_ok() && Output::new(out).is_ok_and(|computed| computed == *expected);
    if !matches {
        return Verified::No;
    }
    let current = parsed.algorithm == ARGON2ID_IDENT
        && version == Version::V0x13
        && stored_params.m_cost() == params.m_cost()
        && stored_params.t_cost() == params.t_cost()
        && stored_params.p_cost() == params.p_cost();
    if current {
        Verified::Yes
    } else {
        Verified::YesRehash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(memory_kib: u32) -> PasswordHasherPool {
        PasswordHasherPool::new(memory_kib, 1, 1, 2, 8).unwrap()
    }

    #[tokio::test]
    async fn hashes_verify_and_report_outdated_parameters() {
        let old = pool(1024);
        let hash = old.hash(SecretString::from("correct horse")).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert_eq!(
            old.verify(SecretString::from("correct horse"), hash.clone())
                .await
                .unwrap(),
            Verified::Yes
        );
        assert_eq!(
            old.verify(SecretString::from("wrong horse"), hash.clone())
                .await
                .unwrap(),
            Verified::No
        );
        let new = pool(2048);
        assert_eq!(
            new.verify(SecretString::from("correct horse"), hash)
                .await
                .unwrap(),
            Verified::YesRehash
        );
        assert_eq!(
            new.verify(SecretString::from("x"), "garbage".into())
                .await
                .unwrap(),
            Verified::No
        );
        assert_eq!(
            new.verify_dummy(SecretString::from("x")).await.unwrap(),
            Verified::No
        );
    }

    /// Hashes made before the hashing threads (by the argon2 crate's own `PasswordHasher`,
    /// with its default salt and output lengths) keep verifying, and the crate verifies ours.
    #[tokio::test]
    async fn hashes_are_interchangeable_with_the_argon2_crates_own() {
        use argon2::{PasswordHasher as _, PasswordVerifier as _};
        let pool = pool(1024);
        let params = Params::new(1024, 1, 1, None).unwrap();
        let theirs = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(b"correct horse")
            .unwrap()
            .to_string();
        for (password, expected) in [("correct horse", Verified::Yes), ("wrong", Verified::No)] {
            let got = pool
                .verify(SecretString::from(password), theirs.clone())
                .await
                .unwrap();
            assert_eq!(got, expected, "{password}");
        }
        let ours = pool
            .hash(SecretString::from("correct horse"))
            .await
            .unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", &parsed)
                .is_ok()
        );
        assert!(
            Argon2::default()
                .verify_password(b"wrong", &parsed)
                .is_err()
        );
        // An argon2i hash verifies too, and is upgraded.
        let argon2i = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x13,
            Params::new(1024, 1, 1, None).unwrap(),
        )
        .hash_password(b"correct horse")
        .unwrap()
        .to_string();
        assert_eq!(
            pool.verify(SecretString::from("correct horse"), argon2i)
                .await
                .unwrap(),
            Verified::YesRehash
        );
    }

    #[tokio::test]
    async fn the_dummy_takes_the_parameters_most_stored_hashes_have() {
        let old = pool(1024);
        let mut stored = Vec::new();
        for _ in 0..3 {
            stored.push(old.hash(SecretString::from("pw")).await.unwrap());
        }
        let new = pool(2048);
        stored.push(new.hash(SecretString::from("pw")).await.unwrap());
        stored.push("not a hash".into());
        let matched = pool(2048).match_stored(&stored).unwrap();
        assert_eq!(
            stored_params(&matched.dummy_hash),
            stored_params(&stored[0])
        );
        let unchanged = pool(2048).match_stored(&[]).unwrap();
        assert_eq!(
            stored_params(&unchanged.dummy_hash),
            stored_params(&stored[3])
        );
    }
}
