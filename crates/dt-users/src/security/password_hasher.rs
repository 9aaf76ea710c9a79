//! Argon2id hashing off the async workers, with bounded concurrency and load shedding.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use argon2::{
    ARGON2ID_IDENT, Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier,
    Version,
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

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
    pub fn new(
        memory_kib: u32,
        iterations: u32,
        parallelism: u32,
        concurrency: usize,
        max_waiting: usize,
    ) -> Result<Self, HashError> {
        let params = Params::new(memory_kib, iterations, parallelism, None)
            .map_err(|e| HashError::Failed(format!("invalid argon2 parameters: {e}")))?;
        let dummy = SecretString::from(super::secret_token::random_urlsafe(24));
        let dummy_hash = hash_blocking(&params, &dummy)?;
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
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
        self.dummy_hash = hash_blocking(&params, &dummy)?;
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
        work: impl FnOnce(Params) -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            metrics::counter!("password_hash_shed_total").increment(1);
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
        tokio::task::spawn_blocking(move || {
            let result = work(params);
            drop(permit);
            result
        })
        .await
        .map_err(|e| HashError::Failed(e.to_string()))?
    }

    /// Hashes a (normalized) password with the configured parameters.
    pub async fn hash(&self, password: SecretString) -> Result<String, HashError> {
        self.run(move |params| hash_blocking(&params, &password))
            .await
    }

    /// Verifies a password; a stored hash that cannot be parsed never verifies.
    pub async fn verify(
        &self,
        password: SecretString,
        stored: String,
    ) -> Result<Verified, HashError> {
        self.run(move |params| Ok(verify_blocking(&params, &password, &stored)))
            .await
    }

    /// Spends the time of one verification and always fails, for unknown accounts.
    pub async fn verify_dummy(&self, password: SecretString) -> Result<Verified, HashError> {
        let dummy = self.dummy_hash.clone();
        self.run(move |params| {
            let _ = verify_blocking(&params, &password, &dummy);
            Ok(Verified::No)
        })
        .await
    }
}

fn argon2(params: &Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
}

fn hash_blocking(params: &Params, password: &SecretString) -> Result<String, HashError> {
    argon2(params)
        .hash_password(password.expose_secret().as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|e| HashError::Failed(e.to_string()))
}

fn verify_blocking(params: &Params, password: &SecretString, stored: &str) -> Verified {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return Verified::No;
    };
    // Verification uses the parameters recorded in the hash itself.
    if argon2(params)
        .verify_password(password.expose_secret().as_bytes(), &parsed)
        .is_err()
    {
        return Verified::No;
    }
    let current = parsed.algorithm.as_str() == ARGON2ID_IDENT.as_str()
        && Params::try_from(&parsed).is_ok_and(|p| {
            p.m_cost() == params.m_cost()
                && p.t_cost() == params.t_cost()
                && p.p_cost() == params.p_cost()
        });
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
