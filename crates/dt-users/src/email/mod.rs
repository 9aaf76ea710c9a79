//! Emails: what a use-case asks to send (an [`EmailIntent`], stored in the outbox), how it is
//! rendered (minijinja templates), and how it leaves (SMTP, or files for the embedded default).

mod mailer;
mod render;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use mailer::{Mailer, SendError};
pub use render::{RenderedEmail, render};

/// The emails dt-users sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmailKind {
    /// On registration, with the email-verification link.
    Welcome,
    /// A fresh verification link (on request, or for a changed address).
    VerifyEmail,
    PasswordReset,
    /// Security notice after a password change or reset.
    PasswordChanged,
    /// To the new address of an email change, with the confirmation link.
    EmailChangeConfirm,
    /// To the old address of an email change, with the link that cancels or reverts it.
    EmailChangeNotice,
    /// After deletion, with the restoration link.
    AccountRestore,
}

impl EmailKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Welcome => "welcome",
            Self::VerifyEmail => "verify_email",
            Self::PasswordReset => "password_reset",
            Self::PasswordChanged => "password_changed",
            Self::EmailChangeConfirm => "email_change_confirm",
            Self::EmailChangeNotice => "email_change_notice",
            Self::AccountRestore => "account_restore",
        }
    }

    /// The page of the Dev Talk web app that takes this email's token, if it carries one.
    pub fn token_path(self) -> Option<&'static str> {
        match self {
            Self::Welcome | Self::VerifyEmail => Some("/verify-email"),
            Self::PasswordReset => Some("/reset-password"),
            Self::AccountRestore => Some("/restore-account"),
            Self::EmailChangeConfirm => Some("/confirm-email-change"),
            Self::EmailChangeNotice => Some("/cancel-email-change"),
            Self::PasswordChanged => None,
        }
    }
}

/// One email to send, as recorded in the outbox in the transaction of its cause. Its `id`
/// names the intent end to end: the job, the delivery claim, the `Message-ID`, and (through
/// an HMAC) the token the email carries, which is therefore never stored in clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailIntent {
    pub id: Uuid,
    pub kind: EmailKind,
    pub user_id: Uuid,
    pub to: String,
    /// How the email greets the user.
    pub name: String,
    /// Template values besides the link and token (`old_email`, `changed_at`, …).
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Which secret made the token of this email's link (see `EmailTokens`); absent for
    /// emails without a link, and for intents recorded before secrets were named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_key: Option<String>,
}
