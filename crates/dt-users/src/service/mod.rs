//! Use-cases. Each owns its transaction and its session-store steps; handlers only call them.

mod accounts;
mod auth;
mod deletion;
mod email_change;
mod email_flows;
mod error;
mod events;
mod moderation;
mod password_check;
mod profile;
#[macro_use]
mod transaction;

use std::sync::Arc;

use dt_users_domain::{Clock, Timestamp};
use dt_users_store::Db;

use crate::config::Settings;
use crate::security::access_token::AccessTokens;
use crate::security::email_token::EmailTokens;
use crate::security::password_hasher::PasswordHasherPool;
use crate::security::rate_limit::Quota;
use crate::sessions::SessionStore;

pub use accounts::RegisterInput;
pub use auth::{ClientInfo, LogoutScope, TokenPair};
pub use deletion::AccountExport;
pub use email_change::CancelOutcome;
pub use error::ServiceError;
pub use moderation::{Command, CommandOutcome};
pub use profile::ProfilePatch;

/// Everything the use-cases need, built once per process.
#[derive(Debug)]
pub struct App {
    pub settings: Settings,
    pub db: Db,
    pub sessions: SessionStore,
    pub tokens: AccessTokens,
    pub hasher: PasswordHasherPool,
    pub email_tokens: EmailTokens,
    pub clock: Arc<dyn Clock>,
    /// Woken after a commit that wrote outbox rows, so the in-process relay picks them up
    /// at once instead of at its next poll.
    pub outbox_notify: Arc<tokio::sync::Notify>,
    pub limiter: crate::security::rate_limit::RateLimiter,
    pub limits: crate::security::rate_limit::Rules,
    pub trusted_proxies: crate::security::client_ip::TrustedProxies,
    /// What `/health/ready` reports, measured at most every few seconds.
    pub readiness: crate::health::Readiness,
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
