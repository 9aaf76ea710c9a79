//! Use-cases. Each owns its transaction and its session-store steps; handlers only call them.

mod accounts;
mod auth;
mod deletion;
mod email_change;
mod email_flows;
mod error;
mod events;
mod maintenance;
mod moderation;
mod oauth;
mod passkeys;
mod password_check;
mod profile;
mod second_step;
mod two_factor;
#[macro_use]
mod transaction;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use dt_users_domain::{Clock, Timestamp};
use dt_users_store::Db;

use crate::federation::Providers;
use crate::runner::OutboxSignal;
use crate::security::access_token::AccessTokens;
use crate::security::email_token::EmailTokens;
use crate::security::password_hasher::PasswordHasherPool;
use crate::security::rate_limit::{Quota, RateLimiter, Rules};
use crate::security::sealing::SecretSealer;
use crate::sessions::SessionStore;

pub use accounts::RegisterInput;
pub use auth::{ClientInfo, LogoutScope, TokenPair};
pub use deletion::AccountExport;
pub use email_change::CancelOutcome;
pub use error::ServiceError;
pub use maintenance::SweepReport;
pub use moderation::{Command, CommandOutcome};
pub use oauth::{Callback, Exchanged, FlowStart, LOGIN_CODE_TTL_SECS};
pub use passkeys::PasskeyChallenge;
pub use profile::ProfilePatch;
pub use second_step::MFA_TOKEN_TTL_SECS;
pub use two_factor::{RecoveryCodes, SecondFactor, TotpEnrolment};

/// Everything the use-cases need, built once per process. It knows nothing of HTTP, Kafka or
/// the job queue: the use-cases write to the database and its outbox, and the relays take it
/// from there.
#[derive(Debug)]
pub struct App {
    pub policy: Policy,
    pub db: Db,
    /// Signalled after each commit, so the in-process relays hand the outbox rows on at once.
    pub outbox: OutboxSignal,
    pub sessions: SessionStore,
    pub tokens: AccessTokens,
    pub hasher: PasswordHasherPool,
    pub email_tokens: EmailTokens,
    pub clock: Arc<dyn Clock>,
    pub limiter: RateLimiter,
    pub limits: Rules,
    /// Seals the TOTP secrets stored.
    pub sealer: SecretSealer,
    /// The relying party of passkeys: runs their ceremonies.
    pub webauthn: webauthn_rs::Webauthn,
    /// The identity providers users may sign in with.
    pub providers: Providers,
}

/// The settings the use-cases decide by.
#[derive(Debug, Clone)]
pub struct Policy {
    /// How long a session (and so its refresh tokens) lives, from sign-in.
    pub refresh_ttl: Duration,
    /// How long after a rotation the old refresh token is refused without ending the session.
    pub refresh_reuse_grace: Duration,
    /// How long an emailed token lives.
    pub email_token_ttl: Duration,
    /// How long a deleted account can be restored.
    pub deletion_grace: Duration,
    /// Password checks of one account running at once.
    pub password_checks_in_flight: NonZeroU32,
    /// Accounts erased at most per sweep.
    pub purge_batch: NonZeroU32,
    /// How long the ids of handled commands are kept.
    pub command_retention: Duration,
    /// Whether a relay publishes events (Kafka is configured); only logs differ.
    pub events_published: bool,
    /// The issuer authenticator apps show next to a TOTP code.
    pub totp_issuer: String,
    /// Where provider sign-ins may send the browser back to, compared exactly.
    pub oauth_redirect_uris: Vec<url::Url>,
    /// This service's external base URL (provider callbacks come to it).
    pub api_url: url::Url,
}

impl App {
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Counts one request under `rule`/`key`; refused with 429 once the quota is spent.
    pub async fn limit(
        &self,
        rule: &'static str,
        quota: Quota,
        key: &str,
    ) -> Result<(), ServiceError> {
        let decision = self
            .limiter
            .check(
                &limiter_key(&self.email_tokens, rule, key),
                quota,
                self.now(),
                true,
            )
            .await?;
        if decision.allowed {
            return Ok(());
        }
        metrics::counter!("rate_limited_total", "rule" => rule).increment(1);
        Err(ServiceError::RateLimited {
            rule,
            quota,
            decision,
        })
    }

    /// Gives back one request counted by [`App::limit`] under `rule`/`key`.
    pub async fn limit_refund(
        &self,
        rule: &'static str,
        quota: Quota,
        key: &str,
    ) -> Result<(), ServiceError> {
        Ok(self
            .limiter
            .refund(
                &limiter_key(&self.email_tokens, rule, key),
                quota,
                self.now(),
            )
            .await?)
    }
}

/// The limiter's key of `key` under `rule`. Keys are made of client input — addresses, IPs —
/// so only their pseudonym is stored: nothing in the limiter's store names anyone, and no
/// request can make it store much.
pub(crate) fn limiter_key(pseudonyms: &EmailTokens, rule: &str, key: &str) -> String {
    format!("{rule}:{}", pseudonyms.pseudonym(key))
}
