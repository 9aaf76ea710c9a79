//! Tokens carried by emails. A token is the HMAC of its email intent's id under a secret: the
//! worker that sends the email recomputes it, so the token is never stored in clear anywhere
//! (outbox, job queue, database) — only its SHA-256 is.
//!
//! There may be several secrets: the first makes the tokens of new emails, and each intent
//! records which secret made its token, so an email queued before a rotation still carries a
//! link that works. Secrets come from `DT_USERS_EMAIL_TOKEN_SECRETS`, or are derived from the
//! signing keys (one per key, named by the key's `kid`); either way a secret named by a queued
//! intent must stay configured until that email is sent.

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The shortest secret accepted from configuration.
const MIN_SECRET_LEN: usize = 32;

#[derive(Clone)]
struct TokenKey {
    id: String,
    key: hmac::Key,
}

#[derive(Clone)]
pub struct EmailTokens {
    /// The first makes new tokens; all remake the tokens of emails queued under them.
    keys: Vec<TokenKey>,
    /// Keyed hashes of personal data used as keys elsewhere (the rate limiter's).
    pseudonyms: hmac::Key,
}

impl std::fmt::Debug for EmailTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailTokens")
            .field("keys", &self.keys.iter().map(|k| &k.id).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn hex_prefix(digest: &[u8], len: usize) -> String {
    digest
        .iter()
        .take(len)
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl EmailTokens {
    /// Named secrets, the first making new tokens. `None` if there is none.
    pub fn new(secrets: Vec<(String, Vec<u8>)>) -> Option<Self> {
        let (_, first) = secrets.first()?;
        let mut derivation = Sha256::new();
        derivation.update(b"dt-users/pseudonym/v1\0");
        derivation.update(first);
        let pseudonyms = hmac::Key::new(hmac::HMAC_SHA256, &derivation.finalize());
        let keys = secrets
            .iter()
            .map(|(id, secret)| TokenKey {
                id: id.clone(),
                key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            })
            .collect();
        Some(Self { keys, pseudonyms })
    }

    /// The secrets of `DT_USERS_EMAIL_TOKEN_SECRETS` (comma-separated), each named by a
    /// digest of itself, so that every instance names it alike.
    pub fn from_configured(secrets: &SecretString) -> Result<Self, String> {
        let mut named = Vec::new();
        for secret in secrets.expose_secret().split(',').map(str::trim) {
            if secret.len() < MIN_SECRET_LEN {
                return Err(format!(
                    "DT_USERS_EMAIL_TOKEN_SECRETS: each secret needs at least {MIN_SECRET_LEN} characters"
                ));
            }
            let mut id = Sha256::new();
            id.update(b"dt-users/email-token-key-id/v1\0");
            id.update(secret.as_bytes());
            named.push((
                format!("s-{}", hex_prefix(&id.finalize(), 8)),
                secret.as_bytes().to_vec(),
            ));
        }
        Self::new(named).ok_or_else(|| "DT_USERS_EMAIL_TOKEN_SECRETS is empty".to_owned())
    }

    /// The name of the secret that makes new tokens, recorded with each intent.
    pub fn current_key_id(&self) -> &str {
        self.keys.first().map_or("", |k| k.id.as_str())
    }

    /// The token of the email intent `intent_id`, made with the current secret: 256 bits,
    /// base64url (43 characters).
    pub fn token_for(&self, intent_id: Uuid) -> String {
        self.token_with(None, intent_id).unwrap_or_default()
    }

    /// The token of `intent_id` made with the secret `key_id` (the current one for `None`, as
    /// intents recorded before secrets were named); `None` when that secret is no longer
    /// configured.
    pub fn token_with(&self, key_id: Option<&str>, intent_id: Uuid) -> Option<String> {
        let key = match key_id {
            None => self.keys.first()?,
            Some(id) => self.keys.iter().find(|k| k.id == id)?,
        };
        Some(URL_SAFE_NO_PAD.encode(hmac::sign(&key.key, intent_id.as_bytes()).as_ref()))
    }

    /// A stand-in for personal data used as a key where it is stored (the rate limiter keys
    /// sign-in attempts by address): an HMAC, so the stored key reveals nothing to anyone who
    /// does not hold the secret — unlike a plain hash, which a list of addresses reverses.
    pub fn pseudonym(&self, value: &str) -> String {
        let tag = hmac::sign(&self.pseudonyms, value.as_bytes());
        URL_SAFE_NO_PAD.encode(tag.as_ref().get(..16).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(secrets: &[&str]) -> EmailTokens {
        EmailTokens::from_configured(&SecretString::from(secrets.join(","))).unwrap()
    }

    #[test]
    fn tokens_are_stable_per_intent_and_secret() {
        let a = tokens(&["a".repeat(32).as_str()]);
        let id = Uuid::now_v7();
        assert_eq!(a.token_for(id), a.token_for(id));
        assert_eq!(a.token_for(id).len(), 43);
        assert_ne!(a.token_for(id), a.token_for(Uuid::now_v7()));
        assert_ne!(
            a.token_for(id),
            tokens(&["b".repeat(32).as_str()]).token_for(id)
        );
    }

    #[test]
    fn an_older_secret_still_makes_the_tokens_of_its_emails() {
        let (old, new) = ("o".repeat(40), "n".repeat(40));
        let before = tokens(&[old.as_str()]);
        let after = tokens(&[new.as_str(), old.as_str()]);
        let id = Uuid::now_v7();
        let queued_under = before.current_key_id().to_owned();
        assert_eq!(
            after.token_with(Some(&queued_under), id),
            Some(before.token_for(id))
        );
        assert_ne!(after.current_key_id(), queued_under);
        let removed = tokens(&[new.as_str()]);
        assert_eq!(removed.token_with(Some(&queued_under), id), None);
    }

    #[test]
    fn short_or_missing_secrets_are_refused() {
        assert!(EmailTokens::from_configured(&SecretString::from("short")).is_err());
        assert!(EmailTokens::from_configured(&SecretString::from("")).is_err());
        assert!(EmailTokens::new(Vec::new()).is_none());
    }

    #[test]
    fn pseudonyms_are_stable_and_keyed() {
        let a = tokens(&["a".repeat(32).as_str()]);
        let b = tokens(&["b".repeat(32).as_str()]);
        assert_eq!(
            a.pseudonym("ada@example.com"),
            a.pseudonym("ada@example.com")
        );
        assert_ne!(
            a.pseudonym("ada@example.com"),
            a.pseudonym("bob@example.com")
        );
        assert_ne!(
            a.pseudonym("ada@example.com"),
            b.pseudonym("ada@example.com")
        );
        assert!(!a.pseudonym("ada@example.com").contains("ada"));
    }
}
