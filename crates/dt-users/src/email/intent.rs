//! What a use-case asks to send: an [`EmailIntent`], kept in the outbox as JSON until a worker
//! renders and sends it. Rows outlive releases, so the JSON shape is a contract: a row queued
//! by an earlier release must still be read (see the tests).

use serde::de::{Deserializer, IgnoredAny, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The emails dt-users sends, each with the values its template needs besides the greeting,
/// the address and the link. Stored as `"kind": "<template>", "params": {…}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "params", rename_all = "snake_case")]
pub enum EmailKind {
    /// On registration, with the email-verification link.
    Welcome(NoParams),
    /// A fresh verification link (on request, or for a changed address).
    VerifyEmail(NoParams),
    PasswordReset(NoParams),
    /// Security notice after a password change or reset.
    PasswordChanged(PasswordChangedParams),
    /// To the new address of an email change, with the confirmation link.
    EmailChangeConfirm(NoParams),
    /// To the old address of an email change, with the link that cancels or reverts it.
    EmailChangeNotice(EmailChangeNoticeParams),
    /// After deletion, with the restoration link.
    AccountRestore(AccountRestoreParams),
    /// Security notice after two-factor sign-in is turned on.
    TwoFactorEnabled(TwoFactorParams),
    /// Security notice after two-factor sign-in is turned off.
    TwoFactorDisabled(TwoFactorParams),
    /// Security notice after a recovery code was used, with how many are left.
    RecoveryCodeUsed(RecoveryCodeUsedParams),
    /// Security notice after a passkey was added to the account.
    PasskeyAdded(PasskeyParams),
    /// Security notice after a passkey was removed from the account.
    PasskeyRemoved(PasskeyParams),
    /// Security notice after a provider identity (GitHub, OpenID Connect) was linked.
    IdentityLinked(IdentityParams),
    /// Security notice after a provider identity was unlinked.
    IdentityUnlinked(IdentityParams),
}

impl EmailKind {
    /// The template's name (and the `kind` of the stored intent).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Welcome(_) => "welcome",
            Self::VerifyEmail(_) => "verify_email",
            Self::PasswordReset(_) => "password_reset",
            Self::PasswordChanged(_) => "password_changed",
            Self::EmailChangeConfirm(_) => "email_change_confirm",
            Self::EmailChangeNotice(_) => "email_change_notice",
            Self::AccountRestore(_) => "account_restore",
            Self::TwoFactorEnabled(_) => "two_factor_enabled",
            Self::TwoFactorDisabled(_) => "two_factor_disabled",
            Self::RecoveryCodeUsed(_) => "recovery_code_used",
            Self::PasskeyAdded(_) => "passkey_added",
            Self::PasskeyRemoved(_) => "passkey_removed",
            Self::IdentityLinked(_) => "identity_linked",
            Self::IdentityUnlinked(_) => "identity_unlinked",
        }
    }

    /// The page of the Dev Talk web app that takes this email's token, if it carries one.
    pub fn token_path(&self) -> Option<&'static str> {
        match self {
            Self::Welcome(_) | Self::VerifyEmail(_) => Some("/verify-email"),
            Self::PasswordReset(_) => Some("/reset-password"),
            Self::AccountRestore(_) => Some("/restore-account"),
            Self::EmailChangeConfirm(_) => Some("/confirm-email-change"),
            Self::EmailChangeNotice(_) => Some("/cancel-email-change"),
            Self::PasswordChanged(_)
            | Self::TwoFactorEnabled(_)
            | Self::TwoFactorDisabled(_)
            | Self::RecoveryCodeUsed(_)
            | Self::PasskeyAdded(_)
            | Self::PasskeyRemoved(_)
            | Self::IdentityLinked(_)
            | Self::IdentityUnlinked(_) => None,
        }
    }
}

/// The parameters of a template that needs none: stored as `{}`, and read from anything
/// (an intent of an early release may have no `params` at all).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoParams;

impl Serialize for NoParams {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_map(Some(0))?.end()
    }
}

impl<'de> Deserialize<'de> for NoParams {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Anything;
        impl<'de> Visitor<'de> for Anything {
            type Value = NoParams;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("template parameters")
            }
            fn visit_none<E>(self) -> Result<NoParams, E> {
                Ok(NoParams)
            }
            fn visit_unit<E>(self) -> Result<NoParams, E> {
                Ok(NoParams)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<NoParams, D::Error> {
                IgnoredAny::deserialize(d).map(|_| NoParams)
            }
        }
        deserializer.deserialize_option(Anything)
    }
}

/// `password_changed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordChangedParams {
    /// RFC 3339 (UTC, seconds), as the email shows it.
    pub changed_at: String,
}

/// `email_change_notice`: the old mailbox learns where the account is moving, but not the
/// whole address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailChangeNoticeParams {
    /// The new address, masked (`n***@example.org`).
    pub new_email_masked: String,
    /// RFC 3339 (UTC, seconds).
    pub requested_at: String,
}

/// `account_restore`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRestoreParams {
    /// When the account is erased, RFC 3339 (UTC, seconds).
    pub restore_until: String,
}

/// `two_factor_enabled` and `two_factor_disabled`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwoFactorParams {
    /// The method turned on or off: `totp` (an authenticator app).
    pub method: String,
    /// RFC 3339 (UTC, seconds).
    pub at: String,
}

/// `recovery_code_used`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryCodeUsedParams {
    /// RFC 3339 (UTC, seconds).
    pub used_at: String,
    /// Unused recovery codes left.
    pub codes_left: u64,
}

/// `passkey_added` and `passkey_removed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasskeyParams {
    /// The name its owner gave the passkey.
    pub passkey_name: String,
    /// RFC 3339 (UTC, seconds).
    pub at: String,
}

/// `identity_linked` and `identity_unlinked`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityParams {
    /// The provider's name (`github`, or an OpenID Connect provider's).
    pub provider: String,
    /// RFC 3339 (UTC, seconds).
    pub at: String,
}

/// One email to send, as recorded in the outbox in the transaction of its cause. Its `id`
/// names the intent end to end: the job, the delivery claim, the `Message-ID`, and (through
/// an HMAC) the token the email carries, which is therefore never stored in clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailIntent {
    pub id: Uuid,
    /// The template and its values (`kind` and `params` in the stored JSON).
    #[serde(flatten)]
    pub kind: EmailKind,
    pub user_id: Uuid,
    pub to: String,
    /// How the email greets the user.
    pub name: String,
    /// Which secret made the token of this email's link (see `EmailTokens`); absent for
    /// emails without a link, and for intents recorded before secrets were named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_key: Option<String>,
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    const ID: &str = "019a0000-0000-7000-8000-000000000001";
    const USER: &str = "019a0000-0000-7000-8000-000000000002";

    fn stored(kind: &str, params: Value) -> Value {
        json!({
            "id": ID,
            "kind": kind,
            "user_id": USER,
            "to": "ada@example.com",
            "name": "Ada",
            "params": params,
            "token_key": "k1",
        })
    }

    fn every_kind() -> Vec<(EmailKind, Value)> {
        vec![
            (EmailKind::Welcome(NoParams), json!({})),
            (EmailKind::VerifyEmail(NoParams), json!({})),
            (EmailKind::PasswordReset(NoParams), json!({})),
            (
                EmailKind::PasswordChanged(PasswordChangedParams {
                    changed_at: "2026-11-26T13:10:37Z".into(),
                }),
                json!({"changed_at": "2026-11-26T13:10:37Z"}),
            ),
            (EmailKind::EmailChangeConfirm(NoParams), json!({})),
            (
                EmailKind::EmailChangeNotice(EmailChangeNoticeParams {
                    new_email_masked: "n***@example.org".into(),
                    requested_at: "2026-11-26T13:10:37Z".into(),
                }),
                json!({"new_email_masked": "n***@example.org", "requested_at": "2026-11-26T13:10:37Z"}),
            ),
            (
                EmailKind::AccountRestore(AccountRestoreParams {
                    restore_until: "2026-12-26T13:10:37Z".into(),
                }),
                json!({"restore_until": "2026-12-26T13:10:37Z"}),
            ),
            (
                EmailKind::TwoFactorEnabled(TwoFactorParams {
                    method: "totp".into(),
                    at: "2026-11-26T13:10:37Z".into(),
                }),
                json!({"method": "totp", "at": "2026-11-26T13:10:37Z"}),
            ),
            (
                EmailKind::TwoFactorDisabled(TwoFactorParams {
                    method: "totp".into(),
                    at: "2026-11-26T13:10:37Z".into(),
                }),
                json!({"method": "totp", "at": "2026-11-26T13:10:37Z"}),
            ),
            (
                EmailKind::RecoveryCodeUsed(RecoveryCodeUsedParams {
                    used_at: "2026-11-26T13:10:37Z".into(),
                    codes_left: 7,
                }),
                json!({"used_at": "2026-11-26T13:10:37Z", "codes_left": 7}),
            ),
            (
                EmailKind::PasskeyAdded(PasskeyParams {
                    passkey_name: "Work laptop".into(),
                    at: "2026-11-26T13:10:37Z".into(),
                }),
                json!({"passkey_name": "Work laptop", "at": "2026-11-26T13:10:37Z"}),
            ),
            (
                EmailKind::IdentityLinked(IdentityParams {
                    provider: "github".into(),
                    at: "2026-11-26T13:10:37Z".into(),
                }),
                json!({"provider": "github", "at": "2026-11-26T13:10:37Z"}),
            ),
            (
                EmailKind::PasskeyRemoved(PasskeyParams {
                    passkey_name: "Work laptop".into(),
                    at: "2026-11-26T13:10:37Z".into(),
                }),
                json!({"passkey_name": "Work laptop", "at": "2026-11-26T13:10:37Z"}),
            ),
        ]
    }

    fn intent(kind: EmailKind) -> EmailIntent {
        EmailIntent {
            id: ID.parse().unwrap(),
            kind,
            user_id: USER.parse().unwrap(),
            to: "ada@example.com".into(),
            name: "Ada".into(),
            token_key: Some("k1".into()),
        }
    }

    #[test]
    fn an_intent_is_stored_in_the_shape_of_earlier_releases() {
        for (kind, params) in every_kind() {
            let name = kind.name();
            let json = serde_json::to_value(intent(kind)).unwrap();
            assert_eq!(json, stored(name, params));
        }
    }

    #[test]
    fn intents_queued_by_an_earlier_release_are_read() {
        for (kind, params) in every_kind() {
            let row = stored(kind.name(), params).to_string();
            let read: EmailIntent = serde_json::from_str(&row).unwrap();
            assert_eq!(read, intent(kind));
        }
        // Written before secrets were named; keys in another order.
        let old = format!(
            r#"{{"params":{{"restore_until":"2026-12-26T13:10:37Z"}},"name":"Ada","to":"ada@example.com","user_id":"{USER}","kind":"account_restore","id":"{ID}"}}"#
        );
        let read: EmailIntent = serde_json::from_str(&old).unwrap();
        assert_eq!(read.token_key, None);
        assert_eq!(
            read.kind,
            EmailKind::AccountRestore(AccountRestoreParams {
                restore_until: "2026-12-26T13:10:37Z".into()
            })
        );
        // A template without values, with no `params` at all.
        let bare = format!(
            r#"{{"id":"{ID}","kind":"welcome","user_id":"{USER}","to":"ada@example.com","name":"Ada"}}"#
        );
        let read: EmailIntent = serde_json::from_str(&bare).unwrap();
        assert_eq!(read.kind, EmailKind::Welcome(NoParams));
    }

    #[test]
    fn an_intent_missing_a_value_of_its_template_is_unreadable() {
        let row = stored("password_changed", json!({})).to_string();
        assert!(serde_json::from_str::<EmailIntent>(&row).is_err());
        let row = stored("newsletter", json!({})).to_string();
        assert!(serde_json::from_str::<EmailIntent>(&row).is_err());
    }
}
