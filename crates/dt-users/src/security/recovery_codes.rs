//! Recovery codes: ten single-use codes shown once when two-factor sign-in is turned on, for
//! the day the authenticator is lost. Each has 80 random bits, so a fast hash stores it safely
//! (there is nothing to brute-force). People type them, so they are written in Crockford's
//! base32, grouped by four; case and separators are ignored, and the look-alikes `o`, `i` and
//! `l` are read as `0` and `1`.

use super::secret_token::hash_secret;

/// Codes made at a time.
pub const COUNT: usize = 10;
/// Symbols of a code, separators aside: 16 of 32, 80 bits.
const LEN: usize = 16;
/// Crockford's base32, lower-case.
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// Ten fresh codes, as shown: `xxxx-xxxx-xxxx-xxxx`.
pub fn generate() -> Vec<String> {
    (0..COUNT).map(|_| one()).collect()
}

fn one() -> String {
    let mut raw = [0_u8; LEN];
    rand::fill(&mut raw);
    // Five bits of each byte: every symbol equally likely.
    let symbols: Vec<char> = raw
        .iter()
        .filter_map(|b| ALPHABET.get(usize::from(b & 31)).copied().map(char::from))
        .collect();
    symbols
        .chunks(4)
        .map(|group| group.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// The code as people may type it, read as shown: lower case, no separators, look-alikes
/// mapped. `None` when it cannot be a recovery code (so no database lookup is made for it).
fn normalize(code: &str) -> Option<String> {
    let normal: String = code
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| match c.to_ascii_lowercase() {
            'o' => '0',
            'i' | 'l' => '1',
            other => other,
        })
        .collect();
    (normal.len() == LEN && normal.bytes().all(|b| ALPHABET.contains(&b))).then_some(normal)
}

/// The stored form of a code: SHA-256 of its normal form, hex; `None` for what cannot be a
/// code.
pub fn hash(code: &str) -> Option<String> {
    let normal = normalize(code)?;
    Some(hash_secret(&normal))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_distinct_codes_of_the_shown_shape() {
        let codes = generate();
        assert_eq!(codes.len(), COUNT);
        let distinct: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(distinct.len(), COUNT);
        for code in &codes {
            assert_eq!(code.len(), 19, "{code}");
            assert_eq!(code.matches('-').count(), 3, "{code}");
            assert!(hash(code).is_some(), "{code}");
        }
    }

    #[test]
    fn typing_variants_hash_alike() {
        let code = "0a1b-2c3d-4e5f-6g7h";
        let stored = hash(code);
        for typed in [
            "0A1B2C3D4E5F6G7H",
            "oa1b 2c3d 4e5f 6g7h",
            "0alb-2c3d-4e5f-6g7h",
            "0aIb2c3d4e5f6g7h",
        ] {
            assert_eq!(hash(typed), stored, "{typed}");
        }
        assert_ne!(hash("0a1b-2c3d-4e5f-6g7j"), stored);
    }

    #[test]
    fn what_cannot_be_a_code_is_refused() {
        for typed in [
            "",
            "123456",
            "0a1b-2c3d-4e5f-6g7",
            "0a1b-2c3d-4e5f-6g7h8",
            "0a1b-2c3d-4e5f-6g7u",
            "ｏａ１ｂ２ｃ３ｄ４ｅ５ｆ６ｇ７ｈ",
            "' OR 1=1 --",
        ] {
            assert_eq!(hash(typed), None, "{typed}");
        }
    }
}
