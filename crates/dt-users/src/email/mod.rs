//! Emails: what a use-case asks to send (an [`EmailIntent`], stored in the outbox), how it is
//! rendered (minijinja templates), and how it leaves (SMTP, or files for the embedded default).

mod intent;
mod mailer;
mod render;

pub use intent::{
    AccountRestoreParams, EmailChangeNoticeParams, EmailIntent, EmailKind, IdentityParams,
    NoParams, PasskeyParams, PasswordChangedParams, RecoveryCodeUsedParams, TwoFactorParams,
};
pub use mailer::{Mailer, SendError};
pub use render::{RenderedEmail, render};
