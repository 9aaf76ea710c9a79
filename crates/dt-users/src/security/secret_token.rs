//! Opaque secrets handed to clients (refresh tokens): 256 random bits, kept only as hashes.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// Prefix that makes leaked refresh tokens easy to spot for secret scanners.
pub const REFRESH_PREFIX: &str = "dtr_";

/// `len` random bytes, base64url without padding.
pub fn random_urlsafe(len: usize) -> String {
    // The thread-local generator is a CSPRNG seeded from the operating system.
    let mut bytes = vec![0_u8; len];
    rand::fill(bytes.as_mut_slice());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The stored form of a secret: SHA-256, hex. A fast hash is right here: the secret has
/// 256 bits of entropy, so there is nothing to brute-force.
pub fn hash_secret(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_long() {
        let a = random_urlsafe(32);
        let b = random_urlsafe(32);
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(hash_secret(&a).len(), 64);
        assert_ne!(hash_secret(&a), hash_secret(&b));
    }
}
