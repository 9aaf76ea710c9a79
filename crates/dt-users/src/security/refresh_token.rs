//! Refresh tokens: `dtr_<user id>.<session id>.<generation>.<family secret>.<secret>`.
//!
//! The family secret is drawn once per session and carried by every refresh token of it; the
//! secret is drawn anew at each rotation. The session store keeps only the hashes of both and
//! the generation, so a token rotated long ago is still recognised as this session's (its
//! reuse ends the session) while the session's state stays the same size however often it is
//! refreshed. The user id keeps all of a user's keys together (one Redis slot).

use uuid::Uuid;

use super::secret_token::{REFRESH_PREFIX, hash_secret, random_urlsafe};
use crate::sessions::{PresentedRefresh, RefreshSecrets};

/// Bytes of each secret (256 bits; 43 characters of base64url).
const SECRET_BYTES: usize = 32;
const SECRET_CHARS: usize = 43;

#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub generation: u64,
    family: String,
    secret: String,
}

impl std::fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshToken")
            .field("user_id", &self.user_id)
            .field("session_id", &self.session_id)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

fn plausible_secret(s: &str) -> bool {
    s.len() == SECRET_CHARS
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl RefreshToken {
    /// The first token of a new session.
    pub fn first(user_id: Uuid, session_id: Uuid) -> Self {
        Self {
            user_id,
            session_id,
            generation: 0,
            family: random_urlsafe(SECRET_BYTES),
            secret: random_urlsafe(SECRET_BYTES),
        }
    }

    /// The token that replaces this one, as generation `generation` of the same session.
    pub fn next(&self, generation: u64) -> Self {
        Self {
            generation,
            secret: random_urlsafe(SECRET_BYTES),
            ..self.clone()
        }
    }

    pub fn parse(token: &str) -> Option<Self> {
        let mut parts = token.strip_prefix(REFRESH_PREFIX)?.split('.');
        let user_id = Uuid::try_parse(parts.next()?).ok()?;
        let session_id = Uuid::try_parse(parts.next()?).ok()?;
        let generation = parts.next()?;
        // Canonical decimal only: one token, one spelling.
        if generation.is_empty()
            || generation.len() > 19
            || !generation.bytes().all(|b| b.is_ascii_digit())
            || (generation.len() > 1 && generation.starts_with('0'))
        {
            return None;
        }
        let generation = generation.parse().ok()?;
        let family = parts.next().filter(|s| plausible_secret(s))?.to_owned();
        let secret = parts.next().filter(|s| plausible_secret(s))?.to_owned();
        if parts.next().is_some() {
            return None;
        }
        Some(Self {
            user_id,
            session_id,
            generation,
            family,
            secret,
        })
    }

    pub fn encode(&self) -> String {
        format!(
            "{REFRESH_PREFIX}{}.{}.{}.{}.{}",
            self.user_id.simple(),
            self.session_id.simple(),
            self.generation,
            self.family,
            self.secret
        )
    }

    /// What the session store keeps of this token.
    pub fn secrets(&self) -> RefreshSecrets {
        RefreshSecrets {
            family_hash: hash_secret(&self.family),
            current_hash: hash_secret(&self.secret),
        }
    }

    /// This token as the session store checks it.
    pub fn presented(&self) -> PresentedRefresh {
        PresentedRefresh {
            user_id: self.user_id,
            session_id: self.session_id,
            generation: self.generation,
            secrets: self.secrets(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_rotate_within_their_family() {
        let first = RefreshToken::first(Uuid::now_v7(), Uuid::now_v7());
        let text = first.encode();
        assert_eq!(RefreshToken::parse(&text), Some(first.clone()));
        let next = first.next(1);
        assert_eq!(next.secrets().family_hash, first.secrets().family_hash);
        assert_ne!(next.secrets().current_hash, first.secrets().current_hash);
        assert_eq!(RefreshToken::parse(&next.encode()), Some(next));
        assert!(!format!("{first:?}").contains(&first.secret));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let text = RefreshToken::first(Uuid::now_v7(), Uuid::now_v7()).encode();
        let gen_at = text.find(".0.").unwrap();
        for bad in [
            String::new(),
            "dtr_".into(),
            text[..text.len() - 1].to_owned(),
            format!("{text}.x"),
            format!("{}.00.{}", &text[..gen_at], &text[gen_at + 3..]),
            format!("{}.-1.{}", &text[..gen_at], &text[gen_at + 3..]),
            text.replacen("dtr_", "dtx_", 1),
        ] {
            assert_eq!(RefreshToken::parse(&bad), None, "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(s in "\\PC*") {
            let _ = RefreshToken::parse(&s);
        }
    }
}
