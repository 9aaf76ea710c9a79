//! Tokens carried by emails. A token is the HMAC of its email intent's id under a secret
//! derived from the signing key: the worker that sends the email recomputes it, so the token
//! is never stored in clear anywhere (outbox, job queue, database) — only its SHA-256 is.

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct EmailTokens {
    key: hmac::Key,
}

impl EmailTokens {
    pub fn new(secret: &[u8; 32]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// The token of the email intent `intent_id`: 256 bits, base64url (43 characters).
    pub fn token_for(&self, intent_id: Uuid) -> String {
        URL_SAFE_NO_PAD.encode(hmac::sign(&self.key, intent_id.as_bytes()).as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stable_per_intent_and_secret() {
        let a = EmailTokens::new(&[1; 32]);
        let id = Uuid::now_v7();
        assert_eq!(a.token_for(id), a.token_for(id));
        assert_eq!(a.token_for(id).len(), 43);
        assert_ne!(a.token_for(id), a.token_for(Uuid::now_v7()));
        assert_ne!(a.token_for(id), EmailTokens::new(&[2; 32]).token_for(id));
    }
}
