//! Account and profile fields, each parsed once at the edge.

use std::fmt;

use email_address::{EmailAddress, Options};
use unicode_normalization::UnicodeNormalization;

fn has_control_chars(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// An email address: valid syntax, a dotted domain, at most 254 characters, in Unicode
/// normalization form C (an `é` typed as one code point or as `e` and a combining accent is
/// one address). Uniqueness is case-insensitive, through [`Email::lookup_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub const MAX_LEN: usize = 254;

    pub fn parse(raw: &str) -> Result<Self, String> {
        let normalized: String = raw.trim().nfc().collect();
        let raw = normalized.as_str();
        if raw.is_empty() {
            return Err("must not be empty".into());
        }
        if raw.chars().count() > Self::MAX_LEN {
            return Err(format!("must be at most {} characters", Self::MAX_LEN));
        }
        // The stored key is bounded too: lower-casing can lengthen an address (`İ` becomes
        // `i` and a combining dot), and the key must fit where it is kept.
        if Self::lookup_key_of(raw).chars().count() > Self::MAX_LEN {
            return Err(format!(
                "must be at most {} characters once lower-cased",
                Self::MAX_LEN
            ));
        }
        if has_control_chars(raw) || raw.contains(char::is_whitespace) {
            return Err("must not contain whitespace or control characters".into());
        }
        let options = Options {
            minimum_sub_domains: 2,
            allow_domain_literal: false,
            allow_display_text: false,
            ..Options::default()
        };
        EmailAddress::parse_with_options(raw, options)
            .map(|_| Self(raw.to_owned()))
            .map_err(|_| "must be a valid email address".into())
    }

    /// The key under which the address is unique: normalized (NFC) and lower-cased.
    pub fn lookup_key(&self) -> String {
        Self::lookup_key_of(&self.0)
    }

    /// The address as a notice to another mailbox may name it: the first character of the
    /// local part, then `***` (`n***@example.org`).
    pub fn masked(&self) -> String {
        let (local, domain) = self.0.rsplit_once('@').unwrap_or((self.0.as_str(), ""));
        let first: String = local.chars().take(1).collect();
        format!("{first}***@{domain}")
    }

    /// The lookup key of an address that was not (yet) parsed, as sign-in uses it. NFC
    /// again after lower-casing, which can leave a letter and a combining mark that compose.
    pub fn lookup_key_of(raw: &str) -> String {
        raw.trim()
            .nfc()
            .collect::<String>()
            .to_lowercase()
            .nfc()
            .collect()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Rebuilds a value that was valid when it was stored.
    pub fn from_trusted(stored: String) -> Self {
        Self(stored)
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Words a username may not be, so no username shadows a route or impersonates staff.
const RESERVED_USERNAMES: &[&str] = &[
    "current",
    "restore",
    "me",
    "admin",
    "administrator",
    "root",
    "api",
    "system",
    "support",
    "devtalk",
    "dev-talk",
    "dt-users",
    "help",
    "security",
    "staff",
    "moderator",
    "mod",
    "null",
    "undefined",
    "anonymous",
    "login",
    "logout",
    "register",
    "settings",
    "sessions",
    "health",
    "metrics",
    "docs",
];

pub fn is_reserved_username(candidate: &str) -> bool {
    let lower = candidate.to_ascii_lowercase();
    RESERVED_USERNAMES.contains(&lower.as_str())
}

/// A username: 3–32 of `[A-Za-z0-9_-]`, not a reserved word. Unique case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let len = raw.chars().count();
        if !(3..=32).contains(&len) {
            return Err("must be 3 to 32 characters".into());
        }
        if !raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err("may contain only letters A-Z, digits, '_' and '-'".into());
        }
        if is_reserved_username(raw) {
            return Err("is reserved".into());
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn lookup_key(&self) -> String {
        self.0.to_ascii_lowercase()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn from_trusted(stored: String) -> Self {
        Self(stored)
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Bidirectional embeddings, overrides and isolates: they reorder what follows them on
/// screen, so a name could show one thing and be another (the "Trojan Source" trick).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Characters that take no space and show nothing: a name with them looks like another.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200B}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}' | '\u{180E}' | '\u{00AD}'
    )
}

/// The zero-width joiner and non-joiner, which some scripts (Persian, the Indic scripts) and
/// emoji sequences need between two visible characters, and nowhere else.
fn is_joiner(c: char) -> bool {
    matches!(c, '\u{200C}' | '\u{200D}')
}

/// Why `text` may not be shown as a name or a bio, if it may not.
fn hidden_characters(text: &str) -> Option<&'static str> {
    let chars: Vec<char> = text.chars().collect();
    if chars.iter().any(|c| is_bidi_control(*c)) {
        return Some("must not contain bidirectional override or isolate characters");
    }
    if chars.iter().any(|c| is_invisible(*c)) {
        return Some("must not contain invisible characters");
    }
    let visible = |c: Option<&char>| {
        c.is_some_and(|c| !c.is_whitespace() && !c.is_control() && !is_joiner(*c))
    };
    let stray_joiner = chars.iter().enumerate().any(|(i, c)| {
        is_joiner(*c) && !(i > 0 && visible(chars.get(i - 1)) && visible(chars.get(i + 1)))
    });
    stray_joiner.then_some("must not contain a zero-width joiner outside a word or an emoji")
}

/// Free text limited in length, without control characters (newlines allowed where
/// `multiline`) or characters that hide or reorder text, normalized by trimming.
fn parse_text(raw: &str, max: usize, multiline: bool) -> Result<String, String> {
    let text = raw.trim();
    if text.chars().count() > max {
        return Err(format!("must be at most {max} characters"));
    }
    let bad = text
        .chars()
        .any(|c| c.is_control() && !(multiline && (c == '\n' || c == '\r' || c == '\t')));
    if bad {
        return Err("must not contain control characters".into());
    }
    if let Some(reason) = hidden_characters(text) {
        return Err(reason.into());
    }
    Ok(text.to_owned())
}

/// A display name: at most 64 characters, no control characters. Empty means "none".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    pub const MAX_LEN: usize = 64;

    pub fn parse(raw: &str) -> Result<Option<Self>, String> {
        let text = parse_text(raw, Self::MAX_LEN, false)?;
        Ok((!text.is_empty()).then_some(Self(text)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A bio: at most 500 characters; line breaks allowed. Empty means "none".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bio(String);

impl Bio {
    pub const MAX_LEN: usize = 500;

    pub fn parse(raw: &str) -> Result<Option<Self>, String> {
        let text = parse_text(raw, Self::MAX_LEN, true)?;
        Ok((!text.is_empty()).then_some(Self(text)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An avatar URL: absolute `https`, with a host, at most 2048 characters. Empty means "none".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvatarUrl(String);

impl AvatarUrl {
    pub const MAX_LEN: usize = 2048;

    pub fn parse(raw: &str) -> Result<Option<Self>, String> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Ok(None);
        }
        if raw.len() > Self::MAX_LEN {
            return Err(format!("must be at most {} characters", Self::MAX_LEN));
        }
        if has_control_chars(raw) {
            return Err("must not contain control characters".into());
        }
        let url = url::Url::parse(raw).map_err(|_| "must be an absolute URL".to_owned())?;
        if url.scheme() != "https" || url.host_str().is_none_or(str::is_empty) {
            return Err("must be an https URL".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry credentials".into());
        }
        Ok(Some(Self(raw.to_owned())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn email_accepts_ordinary_addresses_and_lowercases_the_key() {
        let email = Email::parse("  Ada.Lovelace+dt@Example.COM ").unwrap();
        assert_eq!(email.as_str(), "Ada.Lovelace+dt@Example.COM");
        assert_eq!(email.lookup_key(), "ada.lovelace+dt@example.com");
    }

    #[test]
    fn an_address_typed_composed_or_decomposed_is_one_address() {
        let composed = Email::parse("jos\u{e9}@example.com").unwrap();
        let decomposed = Email::parse("jose\u{301}@example.com").unwrap();
        assert_eq!(composed, decomposed);
        assert_eq!(composed.lookup_key(), decomposed.lookup_key());
        assert_eq!(
            Email::lookup_key_of("JOSE\u{301}@Example.com"),
            composed.lookup_key()
        );
    }

    #[test]
    fn the_lower_cased_key_is_bounded_not_only_the_address() {
        // `İ` lower-cases to two code points. The longest İ address the syntax allows (a
        // 64-byte local part, three 62-byte labels) has 132 characters and a 257-character key.
        let label = "\u{130}".repeat(31);
        let longest = format!("{}@{label}.{label}.{label}.com", "\u{130}".repeat(32));
        assert_eq!(longest.chars().count(), 132);
        assert_eq!(Email::lookup_key_of(&longest).chars().count(), 257);
        assert_eq!(
            Email::parse(&longest).unwrap_err(),
            "must be at most 254 characters once lower-cased"
        );
        for local in 0..40 {
            for labels in 1..5 {
                let domain = vec![label.as_str(); labels].join(".");
                let address = format!("{}@{domain}.com", "\u{130}".repeat(local));
                if let Ok(email) = Email::parse(&address) {
                    assert!(email.lookup_key().chars().count() <= Email::MAX_LEN);
                }
            }
        }
    }

    #[test]
    fn names_refuse_characters_that_hide_or_reorder_text() {
        for bad in [
            "\u{202E}gnp.exe",
            "ada\u{2066}x\u{2069}",
            "ad\u{200B}min",
            "\u{FEFF}ada",
            "ada\u{2060}",
            "ada\u{00AD}",
            "\u{200D}ada",
            "ada \u{200C} lovelace",
            "ada\u{200D}",
        ] {
            assert!(DisplayName::parse(bad).is_err(), "{bad:?} accepted");
            assert!(Bio::parse(bad).is_err(), "{bad:?} accepted in a bio");
        }
        // Joiners inside a word or an emoji sequence are writing, not hiding.
        for good in [
            "\u{645}\u{6CC}\u{200C}\u{62E}\u{648}\u{627}\u{647}\u{645}",
            "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}",
            "\u{5E9}\u{5DC}\u{5D5}\u{5DD} Ada",
        ] {
            assert!(
                DisplayName::parse(good).unwrap().is_some(),
                "{good:?} refused"
            );
        }
    }

    #[test]
    fn a_masked_email_shows_only_its_first_character_and_domain() {
        let email = Email::parse("nora.newmail@example.org").unwrap();
        assert_eq!(email.masked(), "n***@example.org");
        assert_eq!(Email::parse("ü@例え.jp").unwrap().masked(), "ü***@例え.jp");
    }

    #[test]
    fn email_refuses_malformed_addresses() {
        for bad in [
            "",
            "plain",
            "a@b",
            "@example.com",
            "a@@example.com",
            "a b@example.com",
            "a@exa mple.com",
            "a\u{0}@example.com",
            "Ada <ada@example.com>",
            "a@[127.0.0.1]",
            "' OR 1=1 --@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(Email::parse(&long).is_err());
    }

    #[test]
    fn username_rules() {
        assert!(Username::parse("ada_l-1").is_ok());
        for bad in [
            "ab",
            &"a".repeat(33),
            "ada lovelace",
            "adä",
            "a.b",
            "Current",
            "ADMIN",
            "me",
        ] {
            assert!(Username::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(Username::parse("AdaL").unwrap().lookup_key(), "adal");
    }

    #[test]
    fn profile_text_limits() {
        assert!(DisplayName::parse(&"é".repeat(64)).unwrap().is_some());
        assert!(DisplayName::parse(&"é".repeat(65)).is_err());
        assert!(DisplayName::parse("a\u{7}b").is_err());
        assert!(DisplayName::parse("   ").unwrap().is_none());
        assert!(Bio::parse("line one\nline two").unwrap().is_some());
        assert!(Bio::parse(&"x".repeat(501)).is_err());
    }

    #[test]
    fn avatar_must_be_https() {
        assert!(
            AvatarUrl::parse("https://cdn.example.com/a.png")
                .unwrap()
                .is_some()
        );
        for bad in [
            "http://cdn.example.com/a.png",
            "javascript:alert(1)",
            "data:image/png;base64,AAAA",
            "https://user:pw@example.com/a.png",
            "not a url",
        ] {
            assert!(AvatarUrl::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("https://example.com/{}", "a".repeat(2048));
        assert!(AvatarUrl::parse(&long).is_err());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC*") {
            if let Ok(email) = Email::parse(&s) {
                let masked = email.masked();
                prop_assert!(masked.contains("***@"));
            }
            let _ = Username::parse(&s);
            let _ = DisplayName::parse(&s);
            let _ = Bio::parse(&s);
            let _ = AvatarUrl::parse(&s);
        }

        #[test]
        fn valid_usernames_round_trip(s in "[A-Za-z0-9_-]{3,32}") {
            prop_assume!(!is_reserved_username(&s));
            let parsed = Username::parse(&s).unwrap();
            prop_assert_eq!(parsed.as_str(), s.as_str());
        }

        #[test]
        fn accepted_emails_have_no_whitespace(s in "[a-z0-9.+ ]{1,20}@[a-z0-9. ]{1,20}") {
            if let Ok(email) = Email::parse(&s) {
                prop_assert!(!email.as_str().contains(' '));
                prop_assert!(email.as_str().chars().count() <= Email::MAX_LEN);
            }
        }
    }
}
