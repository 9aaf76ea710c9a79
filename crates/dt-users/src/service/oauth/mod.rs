//! Sign-in with identity providers (GitHub, OpenID Connect), and linking them to accounts.
//!
//! A browser flow starts here: a `state` (stored as a hash, taken once, 10 minutes), a PKCE
//! verifier and a `nonce` are kept in the database, and a secret binding goes to the browser as
//! a cookie, so that the callback is finished only in the browser that started the flow. The
//! callback hands the web app a single-use, 60-second `login_code`, never a token, and the web
//! app exchanges it for tokens. An identity is linked to an account only by that account's
//! owner, signed in; a provider's email that matches an account never links by itself.

use dt_users_domain::Email;
use dt_users_store::{self as store, LoginCode, OAuthFlow};
use secrecy::SecretString;
use url::Url;

use super::{App, ServiceError};
use crate::federation::{ExternalIdentity, FederationError, Provider};
use crate::security::access_token::TokenSubject;
use crate::security::secret_token::{hash_secret, random_urlsafe};

mod accounts;
mod identities;

pub use accounts::Exchanged;

/// How long a browser has between the authorize redirect and the callback.
const FLOW_TTL_SECS: u64 = 600;
/// How long a `login_code` lives.
pub const LOGIN_CODE_TTL_SECS: u64 = 60;
/// Prefix that makes a leaked `login_code` easy to spot for secret scanners.
const LOGIN_CODE_PREFIX: &str = "dtl_";

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
}

/// A provider that cannot start a flow is a dependency that is down.
fn provider_unavailable(e: FederationError) -> ServiceError {
    tracing::warn!(error = %e, "identity provider unavailable");
    ServiceError::Unavailable(Box::new(e))
}
