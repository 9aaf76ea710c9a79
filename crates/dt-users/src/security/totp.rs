//! TOTP (RFC 6238) as authenticator apps know it: SHA-1, six digits, 30-second steps, and a
//! code of the step before or after the current one accepted for clock drift. The matched
//! step is returned, so that the caller can accept each step once.

use dt_users_domain::Timestamp;
use totp_rs::{Algorithm, Secret, Totp};

/// 160 bits, as RFC 4226 recommends.
const SECRET_LEN: usize = 20;
const DIGITS: u8 = 6;
const STEP_SECS: u64 = 30;
/// Steps either side of the current one whose code is accepted.
const SKEW: u16 = 1;

/// A TOTP shared secret. Its `Debug` shows nothing of it.
pub struct TotpSecret(Vec<u8>);

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpSecret(..)")
    }
}

impl TotpSecret {
    /// A fresh random secret.
    pub fn generate() -> Self {
        let mut bytes = vec![0_u8; SECRET_LEN];
        rand::fill(bytes.as_mut_slice());
        Self(bytes)
    }

    /// A secret read back (opened from its sealed form).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// A secret as apps show it (base32); `None` when it is not base32.
    pub fn from_base32(encoded: &str) -> Option<Self> {
        let secret = Secret::try_from_base32(encoded).ok()?;
        Some(Self(secret.as_ref().to_vec()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The secret as authenticator apps take it typed in: base32, unpadded.
    pub fn base32(&self) -> String {
        Secret::new(self.0.clone().into_boxed_slice()).to_base32()
    }

    fn totp(&self, issuer: Option<&str>, account: &str) -> Result<Totp, totp_rs::TotpError> {
        totp_rs::Builder::new()
            .with_algorithm(Algorithm::SHA1)
            .with_digits(DIGITS)
            .with_skew(SKEW)
            .with_step_duration(STEP_SECS)
            .with_secret(Secret::new(self.0.clone().into_boxed_slice()))
            .with_issuer(issuer)
            .with_account_name(account)
            .build()
    }

    /// The `otpauth://totp/…` URI an authenticator app reads from a QR code. Neither `issuer`
    /// nor `account` may hold a colon; the account falls back to `fallback_account` if it does.
    pub fn uri(&self, issuer: &str, account: &str, fallback_account: &str) -> Option<String> {
        let account = if account.contains(':') {
            fallback_account
        } else {
            account
        };
        self.totp(Some(issuer), account).ok()?.to_url().ok()
    }

    /// The step whose code `code` is, among the steps within the skew of `now`; `None` when it
    /// is none of them. Spaces in the code (as apps show it, `123 456`) are ignored.
    pub fn matching_step(&self, code: &str, now: Timestamp) -> Option<i64> {
        let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        let time = u64::try_from(now.as_secs()).ok()?;
        let totp = self.totp(None, "account").ok()?;
        totp.check(&code, time)
            .and_then(|step| i64::try_from(step).ok())
    }

    /// The code of `step` (what an authenticator app shows during it).
    pub fn code_at_step(&self, step: i64) -> Option<String> {
        let time = u64::try_from(step).ok()?.checked_mul(STEP_SECS)?;
        Some(self.totp(None, "account").ok()?.generate(time).to_string())
    }

    /// The step `now` falls in.
    pub fn step_of(now: Timestamp) -> i64 {
        now.as_secs().div_euclid(STEP_SECS.cast_signed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_6238_sha1_vectors() {
        // RFC 6238 appendix B, SHA-1, truncated to six digits.
        let secret = TotpSecret::from_bytes(b"12345678901234567890".to_vec());
        for (time, code) in [
            (59, "287082"),
            (1_111_111_109, "081804"),
            (2_000_000_000, "279037"),
        ] {
            let now = Timestamp::from_millis(time * 1000);
            assert_eq!(secret.code_at_step(TotpSecret::step_of(now)).unwrap(), code);
            assert_eq!(
                secret.matching_step(code, now),
                Some(TotpSecret::step_of(now))
            );
        }
    }

    #[test]
    fn one_step_either_side_is_accepted_two_are_not() {
        let secret = TotpSecret::generate();
        let now = Timestamp::from_millis(1_800_000_000_000);
        let step = TotpSecret::step_of(now);
        for offset in [-1, 0, 1] {
            let code = secret.code_at_step(step + offset).unwrap();
            assert_eq!(secret.matching_step(&code, now), Some(step + offset));
        }
        for offset in [-2, 2] {
            let code = secret.code_at_step(step + offset).unwrap();
            assert_eq!(secret.matching_step(&code, now), None, "{offset}");
        }
    }

    #[test]
    fn malformed_codes_match_nothing() {
        let secret = TotpSecret::generate();
        let now = Timestamp::from_millis(1_800_000_000_000);
        for code in [
            "",
            "12345",
            "1234567",
            "abcdef",
            "+12345",
            "١٢٣٤٥٦",
            "12345\u{0}",
        ] {
            assert_eq!(secret.matching_step(code, now), None, "{code:?}");
        }
        let spaced = secret.code_at_step(TotpSecret::step_of(now)).unwrap();
        let spaced = format!("{} {}", &spaced[..3], &spaced[3..]);
        assert!(secret.matching_step(&spaced, now).is_some());
    }

    #[test]
    fn the_uri_names_issuer_and_account() {
        let secret = TotpSecret::generate();
        let uri = secret.uri("Dev Talk", "ada@example.com", "ada").unwrap();
        assert!(
            uri.starts_with("otpauth://totp/Dev%20Talk:ada%40example.com?"),
            "{uri}"
        );
        assert!(uri.contains(&format!("secret={}", secret.base32())));
        let read = TotpSecret::from_base32(&secret.base32()).unwrap();
        assert_eq!(read.as_bytes(), secret.as_bytes());
        assert!(TotpSecret::from_base32("not base32!").is_none());
        let odd = secret
            .uri("Dev Talk", "\"a:b\"@example.com", "ada")
            .unwrap();
        assert!(odd.contains(":ada?"), "{odd}");
    }
}
