//! Sign-in with identity providers (GitHub, OpenID Connect), and linking them to accounts.
//!
//! A browser flow starts here: a `state` (stored as a hash, taken once, 10 minutes), a PKCE
//! verifier and a `nonce` are kept in the database, and a secret binding goes to the browser as
//! a cookie, so that the callback is finished only in the browser that started the flow. The
//! callback hands the web app a single-use, 60-second `login_code`, never a token, and the web
//! app exchanges it for tokens. An identity is linked to an account only by that account's
//! owner, signed in; a provider's email that matches an account never links by itself.

use dt_users_domain::{
    AccountStatus, AuthMethods, AvatarUrl, DisplayName, Email, Event, User, Username,
    is_reserved_username,
};
use dt_users_store::{
    self as store, AnyConnection, IdentityRecord, LoginCode, OAuthFlow, TokenPurpose,
};
use secrecy::SecretString;
use url::Url;
use uuid::Uuid;

use super::auth::{ClientInfo, TokenPair, refuse_unless_active};
use super::transaction::transact;
use super::{App, ServiceError};
use crate::email::{EmailKind, IdentityParams, NoParams};
use crate::federation::{ExternalIdentity, FederationError, Provider};
use crate::security::access_token::TokenSubject;
use crate::security::secret_token::{hash_secret, random_urlsafe};

/// How long a browser has between the authorize redirect and the callback.
const FLOW_TTL_SECS: u64 = 600;
/// How long a `login_code` lives.
pub const LOGIN_CODE_TTL_SECS: u64 = 60;
/// Prefix that makes a leaked `login_code` easy to spot for secret scanners.
const LOGIN_CODE_PREFIX: &str = "dtl_";
/// New accounts whose derived username is taken try this many others.
const USERNAME_ATTEMPTS: usize = 8;

/// The start of a browser flow: where the browser goes, and the value of the cookie that binds
/// the flow to it.
#[derive(Debug)]
pub struct FlowStart {
    pub authorize_url: Url,
    pub binding: SecretString,
}

/// What a provider's callback brought back.
#[derive(Debug, Default)]
pub struct Callback<'a> {
    pub code: Option<&'a str>,
    pub state: Option<&'a str>,
    pub error: Option<&'a str>,
}

/// Tokens of a provider sign-in, and whether the account was made by it.
#[derive(Debug)]
pub struct Exchanged {
    pub tokens: TokenPair,
    pub created: bool,
}

/// Why a callback sends the browser back with `?error=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlowError {
    /// The user said no at the provider.
    AccessDenied,
    /// The provider answered the authorization with another error.
    ProviderError,
    /// The callback has no code.
    InvalidRequest,
    /// The provider could not be reached.
    ProviderUnavailable,
    /// The provider's answer did not prove an identity (a bad code, an invalid ID token).
    ProviderRefused,
    /// A new account needs an email address, and the provider gave none (GitHub: no verified
    /// primary address).
    EmailRequired,
    /// The identity is linked to another account.
    IdentityTaken,
    /// The account or the session that started a link has ended since.
    LinkExpired,
}

impl FlowError {
    fn code(self) -> &'static str {
        match self {
            Self::AccessDenied => "access_denied",
            Self::ProviderError => "provider_error",
            Self::InvalidRequest => "invalid_request",
            Self::ProviderUnavailable => "provider_unavailable",
            Self::ProviderRefused => "provider_refused",
            Self::EmailRequired => "email_required",
            Self::IdentityTaken => "identity_taken",
            Self::LinkExpired => "link_expired",
        }
    }
}

/// `base` with `pairs` added to its query.
fn with_query(base: &Url, pairs: &[(&str, &str)]) -> Url {
    let mut url = base.clone();
    url.query_pairs_mut().extend_pairs(pairs);
    url
}

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
    /// The callback URL registered at the provider `name`.
    fn callback_url(&self, name: &str) -> Result<Url, ServiceError> {
        let base = self.policy.api_url.as_str().trim_end_matches('/');
        Url::parse(&format!("{base}/api/v1/auth/oauth/{name}/callback"))
            .map_err(ServiceError::internal)
    }

    fn provider(&self, name: &str) -> Result<&Provider, ServiceError> {
        self.providers.get(name).ok_or(ServiceError::NotFound)
    }

    /// `redirect_uri` if it is on the allow-list, compared exactly.
    fn allowed_redirect(&self, redirect_uri: &str) -> Result<Url, ServiceError> {
        let parsed = Url::parse(redirect_uri).map_err(|_| ServiceError::InvalidRedirectUri)?;
        if parsed.as_str() != redirect_uri && parsed.as_str() != format!("{redirect_uri}/") {
            // Only the URL as written on the list: no other spelling of it.
            return Err(ServiceError::InvalidRedirectUri);
        }
        self.policy
            .oauth_redirect_uris
            .iter()
            .find(|allowed| **allowed == parsed)
            .cloned()
            .ok_or(ServiceError::InvalidRedirectUri)
    }

    /// Starts a browser flow at `provider` that comes back to `redirect`; a link when `link`
    /// names the account (and session) it links to.
    async fn start_flow(
        &self,
        name: &str,
        provider: &Provider,
        redirect: &Url,
        link: Option<TokenSubject>,
    ) -> Result<FlowStart, ServiceError> {
        let state = random_urlsafe(32);
        let binding = random_urlsafe(32);
        let authorization = provider
            .authorize(self.providers.http(), &self.callback_url(name)?, &state)
            .await
            .map_err(provider_unavailable)?;
        let now = self.now();
        let flow = OAuthFlow {
            state_hash: hash_secret(&state),
            binding_hash: hash_secret(&binding),
            provider: name.to_owned(),
            user_id: link.map(|s| s.user_id),
            session_id: link.map(|s| s.session_id),
            redirect_uri: redirect.as_str().to_owned(),
            pkce_verifier: authorization.pkce_verifier,
            nonce: authorization.nonce,
            created_at: now,
            expires_at: now.plus_secs(FLOW_TTL_SECS),
        };
        let mut conn = self.db.pool().acquire().await?;
        store::insert_oauth_flow(&mut conn, &flow).await?;
        Ok(FlowStart {
            authorize_url: authorization.url,
            binding: SecretString::from(binding),
        })
    }

    /// Starts a sign-in with `provider` that comes back to `redirect_uri`.
    #[tracing::instrument(skip_all, fields(provider = %provider))]
    pub async fn start_provider_sign_in(
        &self,
        provider: &str,
        redirect_uri: &str,
    ) -> Result<FlowStart, ServiceError> {
        let found = self.provider(provider)?;
        let redirect = self.allowed_redirect(redirect_uri)?;
        self.start_flow(provider, found, &redirect, None).await
    }

    /// Starts linking an identity at `provider` to the signed-in account.
    #[tracing::instrument(skip_all, fields(provider = %provider, user_id = %subject.user_id))]
    pub async fn start_identity_link(
        &self,
        subject: TokenSubject,
        provider: &str,
        redirect_uri: &str,
    ) -> Result<FlowStart, ServiceError> {
        let found = self.provider(provider)?;
        let redirect = self.allowed_redirect(redirect_uri)?;
        self.current_user(subject).await?;
        self.start_flow(provider, found, &redirect, Some(subject))
            .await
    }

    /// Finishes a flow at its callback: where the browser goes next — the web app's
    /// `redirect_uri` with `login_code`, `linked` or `error`. Refused without a redirect when
    /// the flow cannot be trusted: an unknown, used or expired `state`, or a browser without
    /// the flow's cookie (the flow is used up either way).
    #[tracing::instrument(skip_all, fields(provider = %provider))]
    pub async fn finish_provider_flow(
        &self,
        provider: &str,
        callback: Callback<'_>,
        binding: Option<&str>,
    ) -> Result<Url, ServiceError> {
        let found = self.provider(provider)?;
        let state = callback.state.ok_or(ServiceError::InvalidState)?;
        let now = self.now();
        let flow = {
            let mut conn = self.db.pool().acquire().await?;
            store::take_oauth_flow(&mut conn, &hash_secret(state), now).await?
        }
        .filter(|flow| flow.provider == provider)
        .ok_or(ServiceError::InvalidState)?;
        let bound = binding.is_some_and(|b| hash_secret(b) == flow.binding_hash);
        if !bound {
            tracing::warn!("provider callback from a browser that did not start the flow");
            return Err(ServiceError::InvalidState);
        }
        let redirect = Url::parse(&flow.redirect_uri).map_err(ServiceError::internal)?;
        let outcome = self.flow_outcome(provider, found, &flow, &callback).await;
        Ok(match outcome {
            Ok(pairs) => with_query(
                &redirect,
                &pairs
                    .iter()
                    .map(|(k, v)| (*k, v.as_str()))
                    .collect::<Vec<_>>(),
            ),
            Err(Ok(error)) => {
                tracing::info!(error = error.code(), "provider flow ended with an error");
                with_query(&redirect, &[("error", error.code())])
            }
            Err(Err(e)) => return Err(e),
        })
    }

    /// The query a finished flow sends the browser back with; `Err(Ok(_))` for an error the
    /// web app is told, `Err(Err(_))` for a failure of this service.
    async fn flow_outcome(
        &self,
        name: &str,
        provider: &Provider,
        flow: &OAuthFlow,
        callback: &Callback<'_>,
    ) -> Result<Vec<(&'static str, String)>, Result<FlowError, ServiceError>> {
        if let Some(error) = callback.error {
            return Err(Ok(if error == "access_denied" {
                FlowError::AccessDenied
            } else {
                FlowError::ProviderError
            }));
        }
        let code = callback.code.ok_or(Ok(FlowError::InvalidRequest))?;
        let callback_url = self.callback_url(name).map_err(Err)?;
        let identity = provider
            .identity(
                self.providers.http(),
                &callback_url,
                code,
                &flow.pkce_verifier,
                flow.nonce.as_deref(),
            )
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "provider sign-in refused");
                Ok(match e {
                    FederationError::Unavailable(_) => FlowError::ProviderUnavailable,
                    FederationError::Refused(_) => FlowError::ProviderRefused,
                })
            })?;
        match (flow.user_id, flow.session_id) {
            (Some(user_id), Some(session_id)) => {
                let subject = TokenSubject {
                    user_id,
                    session_id,
                };
                self.link_identity(subject, name, &identity).await?;
                Ok(vec![("linked", name.to_owned())])
            }
            _ => {
                let code = self
                    .issue_login_code(name, &identity)
                    .await
                    .map_err(|e| e.map(|()| FlowError::EmailRequired))?;
                Ok(vec![("login_code", code)])
            }
        }
    }

    /// Links `identity` to the account of `subject`, if its session is still alive.
    async fn link_identity(
        &self,
        subject: TokenSubject,
        provider: &str,
        identity: &ExternalIdentity,
    ) -> Result<(), Result<FlowError, ServiceError>> {
        let alive = self
            .sessions
            .check(subject.user_id, subject.session_id, self.now())
            .await
            .map_err(|e| Err(e.into()))?;
        if !alive {
            return Err(Ok(FlowError::LinkExpired));
        }
        let now = self.now();
        let linked = transact!(self, |tx| {
            let user = match self.lock_active(tx, subject.user_id).await {
                Ok(user) => Some(user),
                Err(ServiceError::SessionRevoked) => None,
                Err(e) => return Err(e),
            };
            match user {
                None => Some(FlowError::LinkExpired),
                Some(user) => {
                    match store::identity_by_subject(tx, provider, &identity.subject).await? {
                        Some(existing) if existing.user_id != user.id => {
                            Some(FlowError::IdentityTaken)
                        }
                        Some(existing) => {
                            let email = identity.email.as_deref();
                            store::record_identity_use(tx, existing.id, email, now).await?;
                            None
                        }
                        None => {
                            let record = IdentityRecord {
                                id: Uuid::now_v7(),
                                user_id: user.id,
                                provider: provider.to_owned(),
                                subject: identity.subject.clone(),
                                email: identity.email.clone(),
                                created_at: now,
                                last_used_at: None,
                            };
                            if store::insert_identity(tx, &record).await? {
                                let notice = EmailKind::IdentityLinked(IdentityParams {
                                    provider: provider.to_owned(),
                                    at: now.to_rfc3339(),
                                });
                                self.queue_notice(tx, notice, &user).await?;
                                tracing::info!(user_id = %user.id, provider, "identity linked");
                                None
                            } else {
                                Some(FlowError::IdentityTaken)
                            }
                        }
                    }
                }
            }
        });
        match linked {
            Ok(None) => Ok(()),
            Ok(Some(error)) => Err(Ok(error)),
            Err(e) => Err(Err(e)),
        }
    }

    /// A `login_code` for `identity`; `Err(Ok(()))` when it could not make an account (not
    /// linked yet, and no email address).
    async fn issue_login_code(
        &self,
        provider: &str,
        identity: &ExternalIdentity,
    ) -> Result<String, Result<(), ServiceError>> {
        let mut conn = self.db.pool().acquire().await.map_err(|e| Err(e.into()))?;
        let linked = store::identity_by_subject(&mut conn, provider, &identity.subject)
            .await
            .map_err(|e| Err(e.into()))?
            .is_some();
        let usable_email = identity
            .email
            .as_deref()
            .is_some_and(|e| Email::parse(e).is_ok());
        if !linked && !usable_email {
            return Err(Ok(()));
        }
        let code = format!("{LOGIN_CODE_PREFIX}{}", random_urlsafe(32));
        let now = self.now();
        let record = LoginCode {
            code_hash: hash_secret(&code),
            provider: provider.to_owned(),
            subject: identity.subject.clone(),
            email: identity.email.clone(),
            email_verified: identity.email_verified,
            login: identity.login.clone(),
            name: identity.name.clone(),
            avatar_url: identity.avatar_url.clone(),
            created_at: now,
            expires_at: now.plus_secs(LOGIN_CODE_TTL_SECS),
        };
        store::insert_login_code(&mut conn, &record)
            .await
            .map_err(|e| Err(e.into()))?;
        Ok(code)
    }

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

    /// The identities linked to the signed-in account.
    pub async fn identities(
        &self,
        subject: TokenSubject,
    ) -> Result<Vec<IdentityRecord>, ServiceError> {
        let user = self.current_user(subject).await?;
        let mut conn = self.db.pool().acquire().await?;
        Ok(store::identities_of(&mut conn, user.id).await?)
    }

    /// Unlinks one of the signed-in account's identities — not the last way it can sign in.
    #[tracing::instrument(skip_all, fields(user_id = %subject.user_id))]
    pub async fn unlink_identity(
        &self,
        subject: TokenSubject,
        id: Uuid,
    ) -> Result<(), ServiceError> {
        transact!(self, |tx| {
            let user = self.lock_active(tx, subject.user_id).await?;
            let linked = store::identities_of(tx, user.id).await?;
            let Some(unlinked) = linked.iter().find(|i| i.id == id) else {
                return Err(ServiceError::NotFound);
            };
            let passkeys = store::passkey_count(tx, user.id).await?;
            if user.password_hash.is_none() && passkeys == 0 && linked.len() <= 1 {
                return Err(ServiceError::LastSignInMethod);
            }
            store::delete_identity(tx, user.id, id).await?;
            let notice = EmailKind::IdentityUnlinked(IdentityParams {
                provider: unlinked.provider.clone(),
                at: self.now().to_rfc3339(),
            });
            self.queue_notice(tx, notice, &user).await?;
        })?;
        tracing::info!(user_id = %subject.user_id, identity_id = %id, "identity unlinked");
        Ok(())
    }
}

/// A provider that cannot start a flow is a dependency that is down.
fn provider_unavailable(e: FederationError) -> ServiceError {
    tracing::warn!(error = %e, "identity provider unavailable");
    ServiceError::Unavailable(Box::new(e))
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
