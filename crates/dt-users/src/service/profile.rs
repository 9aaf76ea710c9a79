use dt_users_domain::{
    AvatarUrl, Bio, DisplayName, Email, Event, FieldError, FieldErrors, NewPassword, PasswordRules,
    User, Username,
};

use dt_users_store as store;

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
    pub new_password: Option<String>,
    pub current_password: Option<String>,
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
        let new_password = patch.new_password.as_deref().and_then(|p| {
            let rules = PasswordRules {
                email: email.as_ref().unwrap_or(&user.email).as_str(),
                username: username.as_ref().unwrap_or(&user.username).as_str(),
            };
            errors.check("new_password", NewPassword::parse(p, rules))
        });
        let needs_password = patch.email.is_some() || patch.new_password.is_some();
        if needs_password && patch.current_password.is_none() {
            errors.push(FieldError::new(
                "current_password",
                "is required to change the email or the password",
            ));
        }
        if !errors.is_empty() {
            return Err(into_field_error(errors));
        }
        if let (true, Some(current)) = (needs_password, patch.current_password.as_deref()) {
            self.check_current_password(&user, current).await?;
        }
        // A new address is asked for by email; each request sends two emails, so each is
        // counted per account and per target address.
        let new_address = email
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

        let new_password_hash = match &new_password {
            Some(password) => Some(self.hasher.hash(password.secret().clone()).await?),
            None => None,
        };

        // Apply the patch to the row as it is now, under its lock: two concurrent changes of
        // one account never overwrite each other's fields.
        let password_changed = new_password_hash.is_some();
        let user = transact!(self, |tx| {
            let mut user = store::lock_user(tx, user.id, self.db.dialect())
                .await?
                .filter(|u| u.status == dt_users_domain::AccountStatus::Active)
                .ok_or(ServiceError::SessionRevoked)?;
            let before = user.clone();
            if let Some(username) = &username {
                user.username = username.clone();
            }
            let mut requested_address = None;
            if let Some(email) = &email {
                if email.lookup_key() == user.email.lookup_key() {
                    // The same mailbox (another spelling, or the address itself): no consent
                    // is needed, and a change waiting for confirmation is dropped.
                    user.email = email.clone();
                    if user.pending_email.take().is_some() {
                        self.drop_pending_email_change(tx, &user).await?;
                    }
                } else {
                    requested_address = Some(email.clone());
                }
            }
            if let Some(display_name) = &display_name {
                user.display_name = display_name.clone();
            }
            if let Some(bio) = &bio {
                user.bio = bio.clone();
            }
            if let Some(avatar_url) = &avatar_url {
                user.avatar_url = avatar_url.clone();
            }
            if let Some(hash) = &new_password_hash {
                user.password_hash = hash.clone();
            }
            let email_change_started = requested_address.is_some();
            if let Some(address) = requested_address {
                self.start_email_change(tx, &mut user, address).await?;
            }
            let changed = user.username != before.username
                || user.email != before.email
                || user.pending_email != before.pending_email
                || user.display_name != before.display_name
                || user.bio != before.bio
                || user.avatar_url != before.avatar_url
                || password_changed
                || email_change_started;
            if changed {
                user.updated_at = self.now();
                store::update_user(tx, &user).await?;
                if let Some(updated) = Event::updated(&before, &user) {
                    self.record(tx, &updated).await?;
                }
                // A new password ends the other sessions before the change commits.
                if password_changed {
                    self.after_password_change(tx, &user, Some(subject.session_id))
                        .await?;
                }
            }
            user
        })?;
        if password_changed {
            self.revoke_after_commit(user.id, Some(subject.session_id))
                .await;
        }
        Ok(user)
    }
}
