//! The exchange of a `login_code`: a sign-in to the account the identity is linked to, or a
//! new account made for it — never one linked by its email address.

use dt_users_domain::{
    AccountStatus, AuthMethods, AvatarUrl, DisplayName, Email, Event, User, Username,
    is_reserved_username,
};
use dt_users_store::{self as store, AnyConnection, IdentityRecord, TokenPurpose};
use uuid::Uuid;

use super::super::auth::{ClientInfo, TokenPair, refuse_unless_active};
use super::super::transaction::transact;
use super::super::{App, ServiceError};
use crate::email::{EmailKind, NoParams};
use crate::federation::ExternalIdentity;
use crate::security::secret_token::hash_secret;

/// Tokens of a provider sign-in, and whether the account was made by it.
#[derive(Debug)]
pub struct Exchanged {
    pub tokens: TokenPair,
    pub created: bool,
}

/// New accounts whose derived username is taken try this many others.
const USERNAME_ATTEMPTS: usize = 8;

/// A username derived from what the provider knows of the user: their login there, else the
/// email's local part; only `[A-Za-z0-9_-]`, 3–32 characters, not reserved.
fn username_base(identity: &ExternalIdentity) -> String {
    let source = identity
        .login
        .clone()
        .filter(|l| !l.trim().is_empty())
        .or_else(|| {
            identity
                .email
                .as_deref()
                .and_then(|e| e.split('@').next())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let mut base = String::new();
    for c in source.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            c
        } else {
            '-'
        };
        if !(c == '-' && base.ends_with('-')) {
            base.push(c);
        }
    }
    let mut base: String = base.trim_matches('-').chars().take(24).collect();
    if base.chars().count() < 3 {
        base = format!("user{base}");
    }
    if is_reserved_username(&base) {
        base.push_str("-user");
    }
    base
}

/// The `n`th username to try for `base`: itself, then with a random suffix.
fn username_candidate(base: &str, n: usize) -> Option<Username> {
    let candidate = if n == 0 {
        base.to_owned()
    } else {
        let suffix: u32 = rand::random_range(1000..100_000);
        format!("{base}-{suffix}")
    };
    Username::parse(&candidate).ok()
}

impl App {
    /// Exchanges a `login_code` for tokens: signs in to the account the identity is linked
    /// to, or makes a new account for it. An identity whose email is an account's already is
    /// never linked here ([`ServiceError::AccountExists`]); with two-factor on, the second step
    /// follows ([`ServiceError::MfaRequired`]).
    #[tracing::instrument(skip_all)]
    pub async fn exchange_login_code(
        &self,
        login_code: &str,
        client: ClientInfo,
    ) -> Result<Exchanged, ServiceError> {
        let now = self.now();
        let code = {
            let mut conn = self.db.pool().acquire().await?;
            store::take_login_code(&mut conn, &hash_secret(login_code), now).await?
        }
        .ok_or(ServiceError::InvalidLoginCode)?;
        let identity = ExternalIdentity {
            subject: code.subject,
            email: code.email,
            email_verified: code.email_verified,
            login: code.login,
            name: code.name,
            avatar_url: code.avatar_url,
        };
        // Twice at most: a new account that lost a race for its identity signs in to the one
        // that won it.
        for _ in 0..2 {
            let linked = {
                let mut conn = self.db.pool().acquire().await?;
                store::identity_by_subject(&mut conn, &code.provider, &identity.subject).await?
            };
            if let Some(linked) = linked {
                let tokens = self.sign_in_linked(&linked, &identity, client).await?;
                return Ok(Exchanged {
                    tokens,
                    created: false,
                });
            }
            if let Some(user) = self.create_from_identity(&code.provider, &identity).await? {
                let epoch = self.sessions.epoch(user.id).await?;
                let tokens = self
                    .open_session(user.id, epoch, AuthMethods::FEDERATED, client)
                    .await?
                    .ok_or(ServiceError::InvalidLoginCode)?;
                return Ok(Exchanged {
                    tokens,
                    created: true,
                });
            }
        }
        Err(ServiceError::InvalidLoginCode)
    }

    /// Signs in to the account `linked` belongs to.
    async fn sign_in_linked(
        &self,
        linked: &IdentityRecord,
        identity: &ExternalIdentity,
        client: ClientInfo,
    ) -> Result<TokenPair, ServiceError> {
        // The epoch first, then the account as it is now (as a password sign-in does).
        let epoch = self.sessions.epoch(linked.user_id).await?;
        let user = {
            let mut conn = self.db.pool().acquire().await?;
            store::record_identity_use(&mut conn, linked.id, identity.email.as_deref(), self.now())
                .await?;
            store::user_by_id(&mut conn, linked.user_id).await?
        }
        .ok_or(ServiceError::InvalidLoginCode)?;
        refuse_unless_active(&user)?;
        if user.mfa_enabled {
            return Err(self
                .require_second_step(&user, epoch, AuthMethods::FEDERATED)
                .await?);
        }
        self.open_session(user.id, epoch, AuthMethods::FEDERATED, client)
            .await?
            .ok_or(ServiceError::InvalidLoginCode)
    }

    /// Makes an account for `identity`, linked to it; `None` when the identity was linked by
    /// a concurrent request meanwhile.
    async fn create_from_identity(
        &self,
        provider: &str,
        identity: &ExternalIdentity,
    ) -> Result<Option<User>, ServiceError> {
        let email = identity
            .email
            .as_deref()
            .and_then(|e| Email::parse(e).ok())
            .ok_or(ServiceError::InvalidLoginCode)?;
        let base = username_base(identity);
        for attempt in 0..USERNAME_ATTEMPTS {
            let Some(username) = username_candidate(&base, attempt) else {
                continue;
            };
            {
                let mut conn = self.db.pool().acquire().await?;
                if store::user_by_email(&mut conn, &email.lookup_key())
                    .await?
                    .is_some()
                    || store::address_reserved(&mut conn, &email.lookup_key(), None, self.now())
                        .await?
                {
                    return self.linked_meanwhile(&mut conn, provider, identity).await;
                }
                if store::user_by_username(&mut conn, &username.lookup_key())
                    .await?
                    .is_some()
                {
                    continue;
                }
            }
            let now = self.now();
            let user = User {
                id: Uuid::now_v7(),
                email: email.clone(),
                email_verified: identity.email_verified,
                pending_email: None,
                username,
                display_name: identity
                    .name
                    .as_deref()
                    .and_then(|n| DisplayName::parse(n).ok().flatten())
                    .map(|d| d.as_str().to_owned()),
                bio: None,
                avatar_url: identity
                    .avatar_url
                    .as_deref()
                    .and_then(|a| AvatarUrl::parse(a).ok().flatten())
                    .map(|a| a.as_str().to_owned()),
                password_hash: None,
                status: AccountStatus::Active,
                banned: false,
                created_at: now,
                updated_at: now,
                deleted_at: None,
                purge_after: None,
                mfa_enabled: false,
            };
            let record = IdentityRecord {
                id: Uuid::now_v7(),
                user_id: user.id,
                provider: provider.to_owned(),
                subject: identity.subject.clone(),
                email: identity.email.clone(),
                created_at: now,
                last_used_at: Some(now),
            };
            let created = transact!(self, |tx| {
                store::insert_user(tx, &user).await?;
                if !store::insert_identity(tx, &record).await? {
                    // Linked meanwhile: this account is not made (the rollback undoes it).
                    return Err(ServiceError::IdentityRace);
                }
                self.record(tx, &Event::registered(&user)).await?;
                if !user.email_verified {
                    self.queue_email(
                        tx,
                        EmailKind::Welcome(NoParams),
                        &user,
                        user.email.as_str(),
                        Some(TokenPurpose::VerifyEmail.into()),
                    )
                    .await?;
                }
            });
            match created {
                Ok(()) => {
                    tracing::info!(user_id = %user.id, provider, "account made by a provider sign-in");
                    return Ok(Some(user));
                }
                Err(ServiceError::IdentityRace) => return Ok(None),
                Err(ServiceError::UsernameTaken) => {}
                Err(ServiceError::EmailTaken) => {
                    let mut conn = self.db.pool().acquire().await?;
                    return self.linked_meanwhile(&mut conn, provider, identity).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(ServiceError::UsernameTaken)
    }

    /// The answer to a new identity whose email is an account's: `None` (sign in instead) when
    /// the identity was linked meanwhile — by a concurrent sign-in of the same identity, which
    /// made the account with this email — else [`ServiceError::AccountExists`].
    async fn linked_meanwhile(
        &self,
        conn: &mut AnyConnection,
        provider: &str,
        identity: &ExternalIdentity,
    ) -> Result<Option<User>, ServiceError> {
        match store::identity_by_subject(conn, provider, &identity.subject).await? {
            Some(_) => Ok(None),
            None => Err(ServiceError::AccountExists),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(login: Option<&str>, email: Option<&str>) -> ExternalIdentity {
        ExternalIdentity {
            subject: "1".into(),
            email: email.map(str::to_owned),
            email_verified: true,
            login: login.map(str::to_owned),
            name: None,
            avatar_url: None,
        }
    }

    #[test]
    fn usernames_are_derived_valid() {
        assert_eq!(username_base(&identity(Some("octocat"), None)), "octocat");
        assert_eq!(
            username_base(&identity(None, Some("ada.lovelace+dt@example.com"))),
            "ada-lovelace-dt"
        );
        assert_eq!(
            username_base(&identity(Some("Zoë Ünïcode"), None)),
            "Zo-n-code"
        );
        assert_eq!(username_base(&identity(Some("ab"), None)), "userab");
        assert_eq!(username_base(&identity(None, None)), "user");
        assert_eq!(username_base(&identity(Some("admin"), None)), "admin-user");
        let long = "x".repeat(80);
        for n in 0..4 {
            let name = username_candidate(&username_base(&identity(Some(&long), None)), n);
            assert!(name.is_some(), "{n}");
        }
    }
}
