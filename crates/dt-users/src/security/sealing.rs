//! Sealing of the secrets dt-users must read back (TOTP secrets): AES-256-GCM with a key from
//! configuration. Several keys may be configured: the first seals, every one opens, so a key
//! is replaced by putting the new one first and dropping the old one once nothing sealed
//! under it is left (each secret is sealed again under the first key when it is next used).
//!
//! A sealed value is `v1.<key id>.<nonce, ciphertext and tag, base64url>`. It is bound to its
//! context (`totp:<user id>`), so a sealed secret copied to another account's row does not open.

use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::keys::{KeyError, read, write_private};

/// The bytes of one key.
const KEY_LEN: usize = 32;
const FORMAT: &str = "v1";

struct SealingKey {
    id: String,
    key: RandomizedNonceKey,
}

/// Seals and opens secrets with the configured keys.
pub struct SecretSealer {
    /// The first seals; all open.
    keys: Vec<SealingKey>,
}

impl std::fmt::Debug for SecretSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSealer")
            .field(
                "key_ids",
                &self.keys.iter().map(|k| &k.id).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Why a sealed value did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("the sealed value is malformed")]
    Malformed,
    #[error("the key it was sealed with is not configured")]
    UnknownKey,
    #[error("the sealed value was altered, or belongs to another context")]
    Forged,
}

/// A secret opened, and whether it should be sealed again under the current key.
#[derive(Debug)]
pub struct Opened {
    pub secret: Vec<u8>,
    /// Sealed under a key that no longer seals.
    pub stale_key: bool,
}

impl SecretSealer {
    /// The configured keys (comma-separated, base64, 32 bytes each). With none configured, the
    /// embedded default keeps one in `embedded_dir` (generated on first start); any other
    /// setup (`embedded_dir` is `None`) must configure its key.
    pub fn load(
        configured: Option<&SecretString>,
        embedded_dir: Option<&Path>,
    ) -> Result<Self, KeyError> {
        if let Some(keys) = configured {
            return Self::from_keys(keys.expose_secret());
        }
        let Some(dir) = embedded_dir else {
            return Err(KeyError::MissingMfaKey);
        };
        let path = dir.join("mfa-key");
        if path.exists() {
            let text = read(&path)?;
            let text = String::from_utf8(text)
                .map_err(|_| KeyError::InvalidMfaKey(format!("{} is not text", path.display())))?;
            return Self::from_keys(text.trim());
        }
        let mut key = [0_u8; KEY_LEN];
        rand::fill(&mut key);
        let encoded = STANDARD.encode(key);
        write_private(&path, &format!("{encoded}\n"))?;
        tracing::info!(path = %path.display(), "generated a new two-factor sealing key for the embedded default");
        Self::from_keys(&encoded)
    }

    /// Keys as configured: base64 (standard or URL-safe, padded or not), comma-separated.
    pub fn from_keys(text: &str) -> Result<Self, KeyError> {
        let mut keys: Vec<SealingKey> = Vec::new();
        for (n, part) in text.split(',').map(str::trim).enumerate() {
            let bytes = decode_key(part).ok_or_else(|| {
                KeyError::InvalidMfaKey(format!(
                    "key {} is not 32 bytes in base64 (make one with `openssl rand -base64 32`)",
                    n + 1
                ))
            })?;
            let id = key_id(&bytes);
            if keys.iter().any(|k| k.id == id) {
                continue;
            }
            let key = RandomizedNonceKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| KeyError::InvalidMfaKey(format!("key {} is unusable", n + 1)))?;
            keys.push(SealingKey { id, key });
        }
        if keys.is_empty() {
            return Err(KeyError::InvalidMfaKey("no key is given".into()));
        }
        Ok(Self { keys })
    }

    /// The id of the key that seals: a digest of it, safe to log.
    pub fn current_key_id(&self) -> &str {
        self.keys.first().map_or("", |k| k.id.as_str())
    }

    /// Seals `secret` under the current key, bound to `context`.
    pub fn seal(&self, secret: &[u8], context: &str) -> Result<String, SealError> {
        let current = self.keys.first().ok_or(SealError)?;
        let mut in_out = secret.to_vec();
        let nonce = current
            .key
            .seal_in_place_append_tag(Aad::from(context.as_bytes()), &mut in_out)
            .map_err(|_| SealError)?;
        let mut sealed = nonce.as_ref().to_vec();
        sealed.extend_from_slice(&in_out);
        Ok(format!(
            "{FORMAT}.{}.{}",
            current.id,
            URL_SAFE_NO_PAD.encode(sealed)
        ))
    }

    /// Opens a value sealed by [`SecretSealer::seal`] with the same `context`.
    pub fn open(&self, sealed: &str, context: &str) -> Result<Opened, OpenError> {
        let mut parts = sealed.splitn(3, '.');
        let (Some(FORMAT), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(OpenError::Malformed);
        };
        let position = self
            .keys
            .iter()
            .position(|k| k.id == id)
            .ok_or(OpenError::UnknownKey)?;
        let key = self.keys.get(position).ok_or(OpenError::UnknownKey)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| OpenError::Malformed)?;
        if bytes.len() < NONCE_LEN {
            return Err(OpenError::Malformed);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError::Malformed)?;
        let mut in_out = ciphertext.to_vec();
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut in_out)
            .map_err(|_| OpenError::Forged)?;
        Ok(Opened {
            secret: plain.to_vec(),
            stale_key: position != 0,
        })
    }
}

/// Sealing failed (the cipher refused; it does not for a valid key).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the secret could not be sealed")]
pub struct SealError;

fn decode_key(text: &str) -> Option<[u8; KEY_LEN]> {
    let trimmed = text.trim_end_matches('=');
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(trimmed)
        .or_else(|_| URL_SAFE_NO_PAD.decode(trimmed))
        .ok()?;
    bytes.try_into().ok()
}

/// A short digest naming a key in sealed values and logs; it tells nothing of the key.
fn key_id(key: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"dt-users/mfa-key-id/v1\0");
    hasher.update(key);
    hasher
        .finalize()
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> String {
        let mut bytes = [0_u8; KEY_LEN];
        rand::fill(&mut bytes);
        STANDARD.encode(bytes)
    }

    #[test]
    fn a_sealed_secret_opens_in_its_context_only() {
        let sealer = SecretSealer::from_keys(&key()).unwrap();
        let sealed = sealer.seal(b"twenty bytes secret!", "totp:a").unwrap();
        assert!(!sealed.contains("twenty"));
        let opened = sealer.open(&sealed, "totp:a").unwrap();
        assert_eq!(opened.secret, b"twenty bytes secret!");
        assert!(!opened.stale_key);
        assert_eq!(
            sealer.open(&sealed, "totp:b").unwrap_err(),
            OpenError::Forged
        );
    }

    #[test]
    fn each_seal_uses_a_fresh_nonce() {
        let sealer = SecretSealer::from_keys(&key()).unwrap();
        assert_ne!(
            sealer.seal(b"same", "c").unwrap(),
            sealer.seal(b"same", "c").unwrap()
        );
    }

    #[test]
    fn an_old_key_still_opens_and_is_reported_stale() {
        let (old, new) = (key(), key());
        let before = SecretSealer::from_keys(&old).unwrap();
        let sealed = before.seal(b"secret", "c").unwrap();
        let after = SecretSealer::from_keys(&format!("{new}, {old}")).unwrap();
        let opened = after.open(&sealed, "c").unwrap();
        assert_eq!(opened.secret, b"secret");
        assert!(opened.stale_key);
        let only_new = SecretSealer::from_keys(&new).unwrap();
        assert_eq!(
            only_new.open(&sealed, "c").unwrap_err(),
            OpenError::UnknownKey
        );
    }

    #[test]
    fn tampering_and_garbage_are_refused() {
        let sealer = SecretSealer::from_keys(&key()).unwrap();
        let sealed = sealer.seal(b"secret", "c").unwrap();
        let mut tampered = sealed.clone().into_bytes();
        if let Some(last) = tampered.last_mut() {
            *last = if *last == b'A' { b'B' } else { b'A' };
        }
        let tampered = String::from_utf8(tampered).unwrap();
        assert!(sealer.open(&tampered, "c").is_err());
        for garbage in ["", "v1", "v1.x", "v2.a.b", "v1..", "v1.00000000.!!"] {
            assert!(sealer.open(garbage, "c").is_err(), "{garbage}");
        }
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64() {
        assert!(SecretSealer::from_keys("").is_err());
        assert!(SecretSealer::from_keys("short").is_err());
        assert!(SecretSealer::from_keys(&STANDARD.encode([1_u8; 16])).is_err());
        assert!(SecretSealer::from_keys(&URL_SAFE_NO_PAD.encode([1_u8; 32])).is_ok());
        assert!(SecretSealer::from_keys(&format!("{},", key())).is_err());
    }
}
