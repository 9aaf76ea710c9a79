//! The second step of a sign-in with two-factor on: a correct password gets a short-lived,
//! single-use `mfa_token` instead of tokens, and the sign-in completes with a code. The token
//! carries the revocation epoch read before the password was checked, so a password change, a
//! ban or a deletion between the two steps still refuses the session.

use dt_users_domain::{AuthMethods, User};
use dt_users_store as store;
use secrecy::SecretString;

use super::auth::{ClientInfo, TokenPair, refuse_unless_active};
use super::transaction::transact;
use super::two_factor::SecondFactor;
use super::{App, ServiceError};
use crate::security::secret_token::{hash_secret, random_urlsafe};
use crate::sessions::Epoch;

/// How long an `mfa_token` lives.
pub const MFA_TOKEN_TTL_SECS: u64 = 300;

/// Prefix that makes a leaked `mfa_token` easy to spot for secret scanners.
const MFA_TOKEN_PREFIX: &str = "dtm_";

impl App {
    /// The answer to a correct first step of `user` (with two-factor on) — a password, or a
    /// provider's sign-in, as `first` says: a new second-step challenge, as
    /// [`ServiceError::MfaRequired`].
    pub(super) async fn require_second_step(
        &self,
        user: &User,
        epoch: Epoch,
        first: AuthMethods,
    ) -> Result<ServiceError, ServiceError> {
        let now = self.now();
        let token = format!("{MFA_TOKEN_PREFIX}{}", random_urlsafe(32));
        let mut conn = self.db.pool().acquire().await?;
        let mut methods = Vec::new();
        if store::totp_of(&mut conn, user.id)
            .await?
            .is_some_and(|t| t.confirmed_at.is_some())
        {
            methods.push("totp");
        }
        if store::passkey_count(&mut conn, user.id).await? > 0 {
            methods.push("webauthn");
        }
        if store::recovery_codes_left(&mut conn, user.id).await? > 0 {
            methods.push("recovery_code");
        }
        store::insert_mfa_challenge(
            &mut conn,
            &hash_secret(&token),
            user.id,
            epoch.0,
            &first.encode(),
            now,
            now.plus_secs(MFA_TOKEN_TTL_SECS),
        )
        .await?;
        tracing::info!(user_id = %user.id, "first step accepted: second factor required");
        Ok(ServiceError::MfaRequired {
            mfa_token: SecretString::from(token),
            methods,
        })
    }

    /// Completes a sign-in with the `mfa_token` of its first step and a code. A wrong code
    /// leaves the token usable (within the account's limits); a right one uses both up, in one
    /// transaction, so of requests racing with one token exactly one signs in.
    #[tracing::instrument(skip_all)]
    pub async fn complete_sign_in(
        &self,
        mfa_token: &str,
        code: SecondFactor<'_>,
        client: ClientInfo,
    ) -> Result<TokenPair, ServiceError> {
        let token_hash = hash_secret(mfa_token);
        let now = self.now();
        let user = {
            let mut conn = self.db.pool().acquire().await?;
            match store::live_mfa_challenge(&mut conn, &token_hash, now).await? {
                Some(challenge) => store::user_by_id(&mut conn, challenge.user_id).await?,
                None => None,
            }
        }
        .ok_or(ServiceError::InvalidMfaToken)?;
        let totp = self.confirmed_totp(user.id).await?;
        let check = async {
            transact!(self, |tx| {
                let shown = match code {
                    SecondFactor::Passkey(assertion) => {
                        self.use_second_step_passkey(tx, &user, &token_hash, assertion)
                            .await?
                    }
                    code => self
                        .use_code(tx, &user, totp.as_ref(), code)
                        .await?
                        .then_some(AuthMethods::ONE_TIME_CODE),
                };
                let Some(shown) = shown else {
                    return Ok(None);
                };
                let challenge = store::use_mfa_challenge(tx, &token_hash, now)
                    .await?
                    .filter(|c| c.user_id == user.id)
                    .ok_or(ServiceError::InvalidMfaToken)?;
                Some((challenge, shown))
            })
        };
        let (challenge, shown) = self
            .through_gate(&user.email.lookup_key(), check, Option::is_some)
            .await?
            .ok_or(ServiceError::WrongCode)?;
        // The account as it is now: a ban or a deletion since the first step refuses, as the
        // epoch refuses a revocation.
        let current = {
            let mut conn = self.db.pool().acquire().await?;
            store::user_by_id(&mut conn, user.id).await?
        }
        .ok_or(ServiceError::InvalidMfaToken)?;
        refuse_unless_active(&current)?;
        let methods = AuthMethods::decode(&challenge.first_methods).with(shown);
        self.open_session(user.id, Epoch(challenge.epoch), methods, client)
            .await?
            .ok_or(ServiceError::InvalidMfaToken)
    }
}
