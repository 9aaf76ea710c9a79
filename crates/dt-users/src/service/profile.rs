//! Changes of the caller's own account: profile fields, and the start of an email or
//! password change.

use dt_users_domain::{
    AvatarUrl, Bio, DisplayName, Email, Event, FieldErrors, NewPassword, PasswordRules, User,
    Username,
};
use dt_users_store::{self as store, AnyConnection};
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use super::accounts::into_field_error;
use super::transaction::transact;
use super::{App, ServiceError};
use crate::security::access_token::TokenSubject;

/// A partial update of the caller's account. For the nullable profile fields, `None` leaves
/// the field alone and `Some(None)` clears it.
#[derive(Debug, Default)]
pub struct ProfilePatch {
    pub username: Option<String>,
    pub display_name: Option<Option<String>>,
    pub bio: Option<Option<String>>,
    pub avatar_url: Option<Option<String>>,
    pub email: Option<String>,
    pub new_password: Option<SecretString>,
    pub current_password: Option<SecretString>,
}

fn parse_optional<T>(
    errors: &mut FieldErrors,
    field: &str,
    value: Option<Option<String>>,
    parse: fn(&str) -> Result<Option<T>, String>,
    as_str: fn(&T) -> &str,
) -> Option<Option<String>> {
    match value {
        None => None,
        Some(None) => Some(None),
        Some(Some(raw)) => errors
            .check(field, parse(&raw))
            .map(|parsed| parsed.as_ref().map(|v| as_str(v).to_owned())),
    }
}

/// A patch whose every value is valid.
struct ParsedPatch {
    username: Option<Username>,
    email: Option<Email>,
    display_name: Option<Option<String>>,
    bio: Option<Option<String>>,
    avatar_url: Option<Option<String>>,
    new_password: Option<NewPassword>,
    /// Given with a patch that changes the email or the password.
    current_password: Option<SecretString>,
    /// The patch changes the email or the password: the owner confirms it, by
    /// `current_password` or by a fresh sign-in.
    needs_owner: bool,
}

impl ParsedPatch {
    /// Parses every field of `patch` for `user`, reporting every invalid field at once.
    fn parse(user: &User, patch: ProfilePatch) -> Result<Self, ServiceError> {
        let mut errors = FieldErrors::new();
        let username = patch
            .username
            .as_deref()
            .and_then(|u| errors.check("username", Username::parse(u)));
        let email = patch
            .email
            .as_deref()
            .and_then(|e| errors.check("email", Email::parse(e)));
        let display_name = parse_optional(
            &mut errors,
            "display_name",
            patch.display_name,
            DisplayName::parse,
            DisplayName::as_str,
        );
        let bio = parse_optional(&mut errors, "bio", patch.bio, Bio::parse, Bio::as_str);
        let avatar_url = parse_optional(
            &mut errors,
            "avatar_url",
            patch.avatar_url,
            AvatarUrl::parse,
            AvatarUrl::as_str,
        );
        let new_password = patch
            .new_password
            .as_ref()
            .map(ExposeSecret::expose_secret)
            .and_then(|p| {
                let rules = PasswordRules {
                    email: email.as_ref().unwrap_or(&user.email).as_str(),
                    username: username.as_ref().unwrap_or(&user.username).as_str(),
                };
                errors.check("new_password", NewPassword::parse(p, rules))
            });
        let needs_password = patch.email.is_some() || patch.new_password.is_some();
        if !errors.is_empty() {
            return Err(into_field_error(errors));
        }
        Ok(Self {
            username,
            email,
            display_name,
            bio,
            avatar_url,
            new_password,
            current_password: patch.current_password.filter(|_| needs_password),
            needs_owner: needs_password,
        })
    }

    /// Sets the patched fields of `user` (the row as locked now). Returns what needs more than
    /// the row: an address in another mailbox, which only an email change can make the
    /// account's.
    fn apply(&self, user: &mut User, new_password_hash: Option<&String>) -> AppliedPatch {
        let mut applied = AppliedPatch::default();
        if let Some(username) = &self.username {
            user.username = username.clone();
        }
        if let Some(email) = &self.email {
            if email.lookup_key() == user.email.lookup_key() {
                // The same mailbox (another spelling, or the address itself): no consent is
                // needed, and a change waiting for confirmation is dropped.
                user.email = email.clone();
                applied.pending_change_dropped = user.pending_email.take().is_some();
            } else {
                applied.requested_address = Some(email.clone());
            }
        }
        if let Some(display_name) = &self.display_name {
            user.display_name = display_name.clone();
        }
        if let Some(bio) = &self.bio {
            user.bio = bio.clone();
        }
        if let Some(avatar_url) = &self.avatar_url {
            user.avatar_url = avatar_url.clone();
        }
        if let Some(hash) = new_password_hash {
            user.password_hash = Some(hash.clone());
        }
        applied
    }
}

/// What applying a patch to the row left to do.
#[derive(Default)]
struct AppliedPatch {
    /// The address to start an email change to.
    requested_address: Option<Email>,
    /// A waiting email change was dropped: its links must die.
    pending_change_dropped: bool,
}

/// Whether `after` differs from `before` in a stored field a patch can change.
fn fields_changed(before: &User, after: &User) -> bool {
    after.username != before.username
        || after.email != before.email
        || after.pending_email != before.pending_email
        || after.display_name != before.display_name
        || after.bio != before.bio
        || after.avatar_url != before.avatar_url
}

impl App {
    /// Changes the caller's profile. A new email or password needs the current password; a
    /// new password ends every other session; a new email starts an email change, which takes
    /// effect once confirmed from the new mailbox.
    #[tracing::instrument(skip_all, fields(user_id = %subject.user_id))]
    pub async fn update_profile(
        &self,
        subject: TokenSubject,
        patch: ProfilePatch,
    ) -> Result<User, ServiceError> {
        let user = self.current_user(subject).await?;
        let patch = ParsedPatch::parse(&user, patch)?;
        self.authorize_patch(&user, subject, &patch).await?;
        let new_password_hash = match &patch.new_password {
            Some(password) => Some(self.hasher.hash(password.secret().clone()).await?),
            None => None,
        };

        // Apply the patch to the row as it is now, under its lock: two concurrent changes of
        // one account never overwrite each other's fields.
        let password_changed = new_password_hash.is_some();
        let user = transact!(self, |tx| {
            let mut user = self.lock_active(tx, user.id).await?;
            let before = user.clone();
            let applied = patch.apply(&mut user, new_password_hash.as_ref());
            if applied.pending_change_dropped {
                self.drop_pending_email_change(tx, &user).await?;
            }
            let email_change_started = applied.requested_address.is_some();
            if let Some(address) = applied.requested_address {
                self.start_email_change(tx, &mut user, address).await?;
            }
            if fields_changed(&before, &user) || password_changed || email_change_started {
                let keep = password_changed.then_some(subject.session_id);
                self.save_profile(tx, &before, &mut user, keep).await?;
            }
            user
        })?;
        if password_changed {
            self.revoke_after_commit(user.id, Some(subject.session_id))
                .await;
        }
        Ok(user)
    }

    /// Checks what a patch needs besides valid values: the current password for a new email
    /// or password, and room in the limits of email changes. A new address is asked for by
    /// email; each request sends two emails, so each is counted per account and per target
    /// address.
    async fn authorize_patch(
        &self,
        user: &User,
        subject: TokenSubject,
        patch: &ParsedPatch,
    ) -> Result<(), ServiceError> {
        if patch.needs_owner {
            let current = patch
                .current_password
                .as_ref()
                .map(ExposeSecret::expose_secret);
            self.confirm_owner(user, subject, current, "current_password")
                .await?;
        }
        let new_address = patch
            .email
            .as_ref()
            .filter(|e| e.lookup_key() != user.email.lookup_key());
        if let Some(address) = new_address {
            self.limit(
                "email_change",
                self.limits.email_change,
                &user.id.to_string(),
            )
            .await?;
            self.limit(
                "email_target",
                self.limits.email_target,
                &address.lookup_key(),
            )
            .await?;
        }
        Ok(())
    }

    /// Stores a changed account, announces changed public fields, and — for a new password
    /// (`password_changed_in` names the session that changed it) — ends the other sessions
    /// before the change commits.
    async fn save_profile(
        &self,
        tx: &mut AnyConnection,
        before: &User,
        user: &mut User,
        password_changed_in: Option<Uuid>,
    ) -> Result<(), ServiceError> {
        user.updated_at = self.now();
        store::update_user(tx, user).await?;
        if let Some(updated) = Event::updated(before, user) {
            self.record(tx, &updated).await?;
        }
        if let Some(session_id) = password_changed_in {
            self.after_password_change(tx, user, Some(session_id))
                .await?;
        }
        Ok(())
    }
}
