//! How a session was signed in: the factors shown, as RFC 8176 authentication method
//! references (`amr`). A session keeps them for its whole life, and every access token of the
//! session carries them, so a service can ask for more than a password before acting.

/// A set of authentication methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuthMethods(u8);

impl AuthMethods {
    /// A password (`pwd`).
    pub const PASSWORD: Self = Self(1);
    /// A one-time code: a TOTP code or a recovery code (`otp`).
    pub const ONE_TIME_CODE: Self = Self(1 << 1);
    /// A passkey bound to its device (`hwk`).
    pub const HARDWARE_KEY: Self = Self(1 << 2);
    /// A passkey that may be synced between devices (`swk`).
    pub const SOFTWARE_KEY: Self = Self(1 << 3);
    /// The authenticator verified the user (a PIN or a biometric) as well (`user`).
    pub const USER_VERIFIED: Self = Self(1 << 4);
    /// An identity provider (GitHub, an OpenID Connect provider) vouched for the user (`fed`,
    /// a federated assertion, as Microsoft's identity platform names it; RFC 8176 has no
    /// value for it).
    pub const FEDERATED: Self = Self(1 << 5);

    /// Every method, with its RFC 8176 name, in the order they are listed.
    const NAMES: [(Self, &'static str); 6] = [
        (Self::PASSWORD, "pwd"),
        (Self::FEDERATED, "fed"),
        (Self::ONE_TIME_CODE, "otp"),
        (Self::HARDWARE_KEY, "hwk"),
        (Self::SOFTWARE_KEY, "swk"),
        (Self::USER_VERIFIED, "user"),
    ];

    /// A passkey with user verification: the key held (`hwk` or `swk`) and the user verified.
    pub const fn passkey(synced: bool) -> Self {
        let key = if synced {
            Self::SOFTWARE_KEY
        } else {
            Self::HARDWARE_KEY
        };
        key.with(Self::USER_VERIFIED)
    }

    /// True when a passkey was shown (`hwk` or `swk`).
    pub const fn has_passkey(self) -> bool {
        self.0 & (Self::HARDWARE_KEY.0 | Self::SOFTWARE_KEY.0) != 0
    }

    /// Both sets together.
    #[must_use]
    pub const fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// True when every method of `other` is in this set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The `amr` values: each method's name, then `mfa` when two factors or more were shown.
    pub fn values(self) -> Vec<&'static str> {
        let mut values: Vec<&'static str> = Self::NAMES
            .iter()
            .filter(|(method, _)| self.contains(*method))
            .map(|(_, name)| *name)
            .collect();
        if values.len() >= 2 {
            values.push("mfa");
        }
        values
    }

    /// The stored form: the method names, space-separated (`pwd otp`).
    pub fn encode(self) -> String {
        Self::NAMES
            .iter()
            .filter(|(method, _)| self.contains(*method))
            .map(|(_, name)| *name)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Reads the stored form. Sessions stored before methods were recorded have none, and
    /// were all signed in with a password; unknown names are ignored.
    pub fn decode(stored: &str) -> Self {
        if stored.trim().is_empty() {
            return Self::PASSWORD;
        }
        stored
            .split_whitespace()
            .filter_map(|name| Self::NAMES.iter().find(|(_, n)| *n == name))
            .fold(Self::default(), |set, (method, _)| set.with(*method))
    }
}

#[cfg(test)]
mod tests {
    use super::AuthMethods;

    #[test]
    fn a_password_alone_is_one_factor() {
        assert_eq!(AuthMethods::PASSWORD.values(), ["pwd"]);
    }

    #[test]
    fn a_password_and_a_code_are_mfa() {
        let both = AuthMethods::PASSWORD.with(AuthMethods::ONE_TIME_CODE);
        assert_eq!(both.values(), ["pwd", "otp", "mfa"]);
    }

    #[test]
    fn a_passkey_is_two_factors_alone() {
        assert_eq!(AuthMethods::passkey(true).values(), ["swk", "user", "mfa"]);
        assert_eq!(
            AuthMethods::PASSWORD
                .with(AuthMethods::passkey(false))
                .values(),
            ["pwd", "hwk", "user", "mfa"]
        );
        assert!(AuthMethods::passkey(false).has_passkey());
        assert!(
            !AuthMethods::PASSWORD
                .with(AuthMethods::ONE_TIME_CODE)
                .has_passkey()
        );
    }

    #[test]
    fn a_provider_sign_in_is_one_factor_and_a_code_makes_two() {
        assert_eq!(AuthMethods::FEDERATED.values(), ["fed"]);
        assert_eq!(
            AuthMethods::FEDERATED
                .with(AuthMethods::ONE_TIME_CODE)
                .values(),
            ["fed", "otp", "mfa"]
        );
    }

    #[test]
    fn the_stored_form_reads_back() {
        for set in [
            AuthMethods::PASSWORD,
            AuthMethods::ONE_TIME_CODE,
            AuthMethods::PASSWORD.with(AuthMethods::ONE_TIME_CODE),
            AuthMethods::PASSWORD.with(AuthMethods::passkey(true)),
            AuthMethods::passkey(false),
            AuthMethods::FEDERATED.with(AuthMethods::ONE_TIME_CODE),
        ] {
            assert_eq!(AuthMethods::decode(&set.encode()), set);
        }
        assert_eq!(AuthMethods::decode(""), AuthMethods::PASSWORD);
        assert_eq!(AuthMethods::decode("pwd nonsense"), AuthMethods::PASSWORD);
    }
}
