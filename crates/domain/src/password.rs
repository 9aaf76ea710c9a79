//! The password policy: 8–128 characters after NFKC normalization, not a well-known
//! common password, not the account's email or username.

use std::collections::HashSet;
use std::sync::LazyLock;

use secrecy::{ExposeSecret, SecretString};
use unicode_normalization::UnicodeNormalization;

/// The 20,000 most common passwords (Royce Williams' list, as shipped by Django).
static COMMON_PASSWORDS: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("../data/common-passwords.txt")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect()
});

/// Normalizes a password (NFKC), as it is both hashed and checked in this form.
pub fn normalize_password(raw: &str) -> SecretString {
    SecretString::from(raw.nfkc().collect::<String>())
}

/// True when `password` (any case) is on the common-password list.
pub fn is_common_password(password: &str) -> bool {
    COMMON_PASSWORDS.contains(password.to_lowercase().as_str())
}

/// What a new password is compared with besides the common list.
#[derive(Debug, Clone, Copy)]
pub struct PasswordRules<'a> {
    pub email: &'a str,
    pub username: &'a str,
}

/// A password that meets the policy, normalized; only its hash is ever stored.
#[derive(Debug)]
pub struct NewPassword(SecretString);

impl NewPassword {
    pub const MIN_LEN: usize = 8;
    pub const MAX_LEN: usize = 128;

    pub fn parse(raw: &str, rules: PasswordRules<'_>) -> Result<Self, String> {
        let normalized = normalize_password(raw);
        let text = normalized.expose_secret();
        let len = text.chars().count();
        if len < Self::MIN_LEN {
            return Err(format!("must be at least {} characters", Self::MIN_LEN));
        }
        if len > Self::MAX_LEN {
            return Err(format!("must be at most {} characters", Self::MAX_LEN));
        }
        if text.chars().any(|c| c.is_control()) {
            return Err("must not contain control characters".into());
        }
        if is_common_password(text) {
            return Err("is too common: it appears in lists of breached passwords".into());
        }
        let lower = text.to_lowercase();
        if lower == rules.email.trim().to_lowercase() || lower == rules.username.to_lowercase() {
            return Err("must not be your email or username".into());
        }
        Ok(Self(normalized))
    }

    pub fn secret(&self) -> &SecretString {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RULES: PasswordRules<'static> = PasswordRules {
        email: "ada@example.com",
        username: "ada_l",
    };

    #[test]
    fn the_list_is_large() {
        assert!(
            COMMON_PASSWORDS.len() >= 10_000,
            "{}",
            COMMON_PASSWORDS.len()
        );
    }

    #[test]
    fn common_passwords_are_refused_in_any_case() {
        for bad in [
            "password",
            "PASSWORD1",
            "12345678",
            "qwertyuiop",
            "iloveyou",
        ] {
            assert!(NewPassword::parse(bad, RULES).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn length_counts_characters_after_nfkc() {
        assert!(NewPassword::parse("short7!", RULES).is_err());
        assert!(NewPassword::parse("ünïcødé pässwörd ✓", RULES).is_ok());
        assert!(NewPassword::parse(&"x7".repeat(64), RULES).is_ok());
        assert!(NewPassword::parse(&"x7".repeat(65), RULES).is_err());
        // "ﬁ" (one code point) becomes "fi" under NFKC.
        assert_eq!(normalize_password("ﬁ").expose_secret(), "fi");
    }

    #[test]
    fn email_and_username_are_refused() {
        assert!(NewPassword::parse("ADA@example.com", RULES).is_err());
        assert!(NewPassword::parse("Ada_L", RULES).is_err());
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC*") {
            let _ = NewPassword::parse(&s, RULES);
        }
    }
}
