//! The one gate every check of an account's secrets passes: a password at sign-in,
//! `current_password` on a change or a deletion, and the codes of two-factor sign-in. Each
//! check is counted against the account *before* it is verified, and only a few run at once
//! per account, so guesses sent all at once get no further than guesses sent one after
//! another. A check that passes gives its count back.

use std::future::Future;

use dt_users_domain::{AuthMethods, FieldError, User, normalize_password};
use secrecy::SecretString;

use super::{App, ServiceError, limiter_key};
use crate::security::access_token::TokenSubject;
use crate::security::password_hasher::Verified;
use crate::security::rate_limit::{Decision, Quota, RateLimiter, Slot};

/// How recent a sign-in stands in for the password, in milliseconds.
const FRESH_SIGN_IN_MS: i64 = 300_000;

/// The rule under which checks running at once are refused.
const IN_FLIGHT_RULE: &str = "password_checks_in_flight";

impl App {
    /// Checks `password` against `stored` (a dummy hash when the account does not exist, at
    /// the same cost), counted against `account_key` — the account's email lookup key, so a
    /// sign-in and a `current_password` check share one budget.
    pub(super) async fn check_password(
        &self,
        account_key: &str,
        password: SecretString,
        stored: Option<String>,
    ) -> Result<Verified, ServiceError> {
        let verify = async {
            Ok(match stored {
                Some(hash) => self.hasher.verify(password, hash).await?,
                None => self.hasher.verify_dummy(password).await?,
            })
        };
        self.through_gate(account_key, verify, |v| *v != Verified::No)
            .await
    }

    /// Runs `check` through the gate of the account `account_key` names: it waits for none
    /// but a free in-flight slot, is counted before it runs, and its count is given back when
    /// `passed` says it passed.
    pub(super) async fn through_gate<T>(
        &self,
        account_key: &str,
        check: impl Future<Output = Result<T, ServiceError>>,
        passed: impl FnOnce(&T) -> bool,
    ) -> Result<T, ServiceError> {
        let now = self.now();
        let in_flight = self.policy.password_checks_in_flight.get();
        let slot = self
            .limiter
            .acquire(
                &limiter_key(&self.email_tokens, "pw_slot", account_key),
                in_flight,
                now,
            )
            .await?
            .ok_or_else(|| in_flight_refusal(in_flight))
            .inspect_err(|_| {
                metrics::counter!("rate_limited_total", "rule" => IN_FLIGHT_RULE).increment(1);
            })?;
        let mut held = HeldSlot {
            limiter: self.limiter.clone(),
            slot: Some(slot),
        };
        let outcome = self.counted_check(account_key, check, passed).await;
        held.release().await;
        outcome
    }

    /// Checks the signed-in user's `current_password` (a change of email or password, a
    /// deletion) through the same gate as a sign-in. An account without a password gets the
    /// dummy check and the answer of a wrong password.
    pub(super) async fn check_current_password(
        &self,
        user: &User,
        password: &str,
    ) -> Result<(), ServiceError> {
        let verified = self
            .check_password(
                &user.email.lookup_key(),
                normalize_password(password),
                user.password_hash.clone(),
            )
            .await?;
        if verified == Verified::No {
            return Err(ServiceError::WrongCurrentPassword);
        }
        Ok(())
    }

    /// Confirms that the owner of `user` asks for a sensitive change (a new password or email,
    /// a deletion, a change of two-factor sign-in): by `current_password`, or, without one, by
    /// a fresh sign-in of this session ([`App::require_fresh_sign_in`]). `field` names the
    /// password in the request, for the validation error.
    pub(super) async fn confirm_owner(
        &self,
        user: &User,
        subject: TokenSubject,
        current_password: Option<&str>,
        field: &'static str,
    ) -> Result<(), ServiceError> {
        match current_password {
            Some(password) => self.check_current_password(user, password).await,
            None => self.require_fresh_sign_in(user, subject, field).await,
        }
    }

    /// Refuses unless the caller's session signed in less than 5 minutes ago with a passkey,
    /// or — for an account without a password — with any way it has (a provider): a fresh
    /// sign-in in place of the password.
    async fn require_fresh_sign_in(
        &self,
        user: &User,
        subject: TokenSubject,
        field: &'static str,
    ) -> Result<(), ServiceError> {
        let now = self.now();
        let fresh = self
            .sessions
            .list(subject.user_id, now)
            .await?
            .into_iter()
            .find(|s| s.id == subject.session_id)
            .is_some_and(|s| {
                let shown = s.methods.has_passkey()
                    || (user.password_hash.is_none() && s.methods.contains(AuthMethods::FEDERATED));
                shown && now.as_millis() - s.created_at.as_millis() <= FRESH_SIGN_IN_MS
            });
        if fresh {
            return Ok(());
        }
        let message = if user.password_hash.is_some() {
            "needed, unless this session signed in with a passkey in the last 5 minutes"
        } else {
            "this account has no password: sign in again (with a passkey or a provider) and retry within 5 minutes, or set a password by a reset"
        };
        Err(ServiceError::Validation(vec![FieldError::new(
            field, message,
        )]))
    }

    async fn counted_check<T>(
        &self,
        account_key: &str,
        check: impl Future<Output = Result<T, ServiceError>>,
        passed: impl FnOnce(&T) -> bool,
    ) -> Result<T, ServiceError> {
        let quota = self.limits.login_account;
        self.limit("login_account", quota, account_key).await?;
        let outcome = check.await?;
        if passed(&outcome)
            && let Err(e) = self.limit_refund("login_account", quota, account_key).await
        {
            tracing::warn!(error = %e, "check count not given back");
        }
        Ok(outcome)
    }
}

/// An in-flight slot that is given back when the check ends — also when the request is
/// dropped midway (its client went away), so that no slot waits for its expiry.
struct HeldSlot {
    limiter: RateLimiter,
    slot: Option<Slot>,
}

impl HeldSlot {
    async fn release(&mut self) {
        if let Some(slot) = self.slot.take()
            && let Err(e) = self.limiter.release(slot).await
        {
            // The slot expires by itself shortly; the check's own answer stands.
            tracing::warn!(error = %e, "password-check slot not released");
        }
    }
}

impl Drop for HeldSlot {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        let limiter = self.limiter.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = limiter.release(slot).await {
                    tracing::warn!(error = %e, "password-check slot not released");
                }
            });
        }
    }
}

fn in_flight_refusal(max: u32) -> ServiceError {
    ServiceError::RateLimited {
        rule: IN_FLIGHT_RULE,
        quota: Quota {
            burst: max,
            per_period: max,
            period_secs: 1,
        },
        decision: Decision {
            allowed: false,
            remaining: 0,
            retry_after_ms: 1_000,
            reset_ms: 1_000,
        },
    }
}
