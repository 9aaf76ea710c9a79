//! Two-factor sign-in with an authenticator app (TOTP) and recovery codes: set-up, removal,
//! new recovery codes, and the check of a code, which every use shares. The TOTP secret is
//! stored sealed (see `SecretSealer`); recovery codes only as hashes.

use dt_users_domain::{AccountStatus, User};
use dt_users_store::{self as store, AnyConnection, TotpRecord};
use uuid::Uuid;

use super::transaction::transact;
use super::{App, ServiceError};
use crate::email::{EmailKind, RecoveryCodeUsedParams, TwoFactorParams};
use crate::security::access_token::TokenSubject;
use crate::security::recovery_codes;
use crate::security::totp::TotpSecret;

/// A pending authenticator, to be confirmed with its first code.
pub struct TotpEnrolment {
    /// The secret, base32, for typing into an app.
    pub secret: String,
    /// `otpauth://totp/…`, for a QR code.
    pub otpauth_uri: String,
}

impl std::fmt::Debug for TotpEnrolment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpEnrolment(..)")
    }
}

/// Recovery codes as shown, once.
pub struct RecoveryCodes(pub Vec<String>);

impl std::fmt::Debug for RecoveryCodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecoveryCodes({} codes)", self.0.len())
    }
}

/// A code given as a second factor.
#[derive(Clone, Copy)]
pub enum SecondFactor<'a> {
    /// From the authenticator app.
    Totp(&'a str),
    /// One of the recovery codes.
    RecoveryCode(&'a str),
    /// A passkey's assertion (`PublicKeyCredential` JSON), at the second step of a sign-in.
    Passkey(&'a serde_json::Value),
}

impl std::fmt::Debug for SecondFactor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Totp(_) => "Totp(..)",
            Self::RecoveryCode(_) => "RecoveryCode(..)",
            Self::Passkey(_) => "Passkey(..)",
        })
    }
}

/// The context a TOTP secret is sealed in: a sealed secret opens for its own account only.
fn totp_context(user_id: Uuid) -> String {
    format!("totp:{user_id}")
}

impl App {
    /// Starts setting up an authenticator app: a new secret, pending until its first code
    /// confirms it (a pending one started earlier is replaced). Needs the password.
    #[tracing::instrument(skip_all, fields(user_id = %subject.user_id))]
    pub async fn start_totp(
        &self,
        subject: TokenSubject,
        current_password: Option<&str>,
    ) -> Result<TotpEnrolment, ServiceError> {
        let user = self.current_user(subject).await?;
        if self.confirmed_totp(user.id).await?.is_some() {
            return Err(ServiceError::MfaAlreadyEnabled);
        }
        self.confirm_owner(&user, subject, current_password, "current_password")
            .await?;
        let secret = TotpSecret::generate();
        let sealed = self
            .sealer
            .seal(secret.as_bytes(), &totp_context(user.id))
            .map_err(ServiceError::internal)?;
        let now = self.now();
        transact!(self, |tx| {
            let user = self.lock_active(tx, user.id).await?;
            if !store::put_pending_totp(tx, user.id, &sealed, now).await? {
                return Err(ServiceError::MfaAlreadyEnabled);
            }
        })?;
        let otpauth_uri = secret
            .uri(
                &self.policy.totp_issuer,
                user.email.as_str(),
                user.username.as_str(),
            )
            .ok_or_else(|| ServiceError::internal("the otpauth URI could not be made"))?;
        tracing::info!(user_id = %user.id, "authenticator set-up started");
        Ok(TotpEnrolment {
            secret: secret.base32(),
            otpauth_uri,
        })
    }

    /// Confirms the pending authenticator with a code from it: two-factor sign-in is on. The
    /// recovery codes are made and returned when two-factor sign-in was off before.
    #[tracing::instrument(skip_all, fields(user_id = %subject.user_id))]
    pub async fn confirm_totp(
        &self,
        subject: TokenSubject,
        code: &str,
    ) -> Result<Option<RecoveryCodes>, ServiceError> {
        let user = self.current_user(subject).await?;
        let pending = {
            let mut conn = self.db.pool().acquire().await?;
            store::totp_of(&mut conn, user.id).await?
        };
        let pending = match pending {
            Some(t) if t.confirmed_at.is_some() => return Err(ServiceError::MfaAlreadyEnabled),
            Some(t) => t,
            None => return Err(ServiceError::InvalidCode),
        };
        let (secret, _) = self.open_totp(user.id, &pending)?;
        let now = self.now();
        let check = async { Ok(secret.matching_step(code, now)) };
        let step = self
            .through_gate(&user.email.lookup_key(), check, Option::is_some)
            .await?
            .ok_or(ServiceError::InvalidCode)?;
        let codes = transact!(self, |tx| {
            let user = self.lock_active(tx, user.id).await?;
            let was_on = user.mfa_enabled;
            if !store::confirm_totp(tx, user.id, &pending.secret_sealed, step, now).await? {
                // Confirmed or replaced by a concurrent request meanwhile.
                return Err(ServiceError::InvalidCode);
            }
            let codes = if was_on {
                None
            } else {
                Some(self.new_recovery_codes(tx, user.id).await?)
            };
            let notice = EmailKind::TwoFactorEnabled(TwoFactorParams {
                method: "totp".into(),
                at: now.to_rfc3339(),
            });
            self.queue_notice(tx, notice, &user).await?;
            codes
        })?;
        tracing::info!(user_id = %user.id, "two-factor sign-in turned on");
        Ok(codes)
    }

    /// Removes the authenticator app, with the password and a code (from the app, or a
    /// recovery code). With no second factor left, the recovery codes go too.
    #[tracing::instrument(skip_all, fields(user_id = %subject.user_id))]
    pub async fn disable_totp(
        &self,
        subject: TokenSubject,
        current_password: Option<&str>,
        code: SecondFactor<'_>,
    ) -> Result<(), ServiceError> {
        let user = self.current_user(subject).await?;
        let Some(totp) = self.confirmed_totp(user.id).await? else {
            return Err(ServiceError::NotFound);
        };
        self.confirm_owner(&user, subject, current_password, "current_password")
            .await?;
        let now = self.now();
        let check = async {
            transact!(self, |tx| {
                let user = self.lock_active(tx, user.id).await?;
                if !self.use_code(tx, &user, Some(&totp), code).await? {
                    return Ok(false);
                }
                store::delete_totp(tx, user.id).await?;
                if store::passkey_count(tx, user.id).await? == 0 {
                    store::delete_recovery_codes(tx, user.id).await?;
                }
                let notice = EmailKind::TwoFactorDisabled(TwoFactorParams {
                    method: "totp".into(),
                    at: now.to_rfc3339(),
                });
                self.queue_notice(tx, notice, &user).await?;
                true
            })
        };
        if !self
            .through_gate(&user.email.lookup_key(), check, |removed| *removed)
            .await?
        {
            return Err(ServiceError::WrongCurrentCode);
        }
        tracing::info!(user_id = %user.id, "two-factor sign-in turned off");
        Ok(())
    }

    /// New recovery codes in place of the old ones, which die. Needs the password.
    #[tracing::instrument(skip_all, fields(user_id = %subject.user_id))]
    pub async fn regenerate_recovery_codes(
        &self,
        subject: TokenSubject,
        current_password: Option<&str>,
    ) -> Result<RecoveryCodes, ServiceError> {
        let user = self.current_user(subject).await?;
        if !user.mfa_enabled {
            return Err(ServiceError::MfaNotEnabled);
        }
        self.confirm_owner(&user, subject, current_password, "current_password")
            .await?;
        let codes = transact!(self, |tx| {
            let user = self.lock_active(tx, user.id).await?;
            if !user.mfa_enabled {
                return Err(ServiceError::MfaNotEnabled);
            }
            self.new_recovery_codes(tx, user.id).await?
        })?;
        tracing::info!(user_id = %user.id, "recovery codes replaced");
        Ok(codes)
    }

    /// Ten new recovery codes of the account, in `tx`, in place of its old ones.
    pub(super) async fn new_recovery_codes(
        &self,
        tx: &mut AnyConnection,
        user_id: Uuid,
    ) -> Result<RecoveryCodes, ServiceError> {
        let codes = recovery_codes::generate();
        let hashes: Vec<String> = codes
            .iter()
            .filter_map(|c| recovery_codes::hash(c))
            .collect();
        store::replace_recovery_codes(tx, user_id, &hashes, self.now()).await?;
        Ok(RecoveryCodes(codes))
    }

    /// The account's confirmed authenticator, if any.
    pub(super) async fn confirmed_totp(
        &self,
        user_id: Uuid,
    ) -> Result<Option<TotpRecord>, ServiceError> {
        let mut conn = self.db.pool().acquire().await?;
        Ok(store::totp_of(&mut conn, user_id)
            .await?
            .filter(|t| t.confirmed_at.is_some()))
    }

    /// Opens a stored TOTP secret; the second value is its form sealed again under the current
    /// key when it was sealed under an older one.
    fn open_totp(
        &self,
        user_id: Uuid,
        record: &TotpRecord,
    ) -> Result<(TotpSecret, Option<String>), ServiceError> {
        let context = totp_context(user_id);
        let opened = self
            .sealer
            .open(&record.secret_sealed, &context)
            .map_err(ServiceError::internal)?;
        let resealed = if opened.stale_key {
            Some(
                self.sealer
                    .seal(&opened.secret, &context)
                    .map_err(ServiceError::internal)?,
            )
        } else {
            None
        };
        Ok((TotpSecret::from_bytes(opened.secret), resealed))
    }

    /// Checks `code` and uses it up, in `tx`: a TOTP code's step is accepted once (the step
    /// recorded, so the same code — or an older one — is refused from then on), a recovery
    /// code is spent and its notice queued. False when the code is wrong or already used.
    pub(super) async fn use_code(
        &self,
        tx: &mut AnyConnection,
        user: &User,
        totp: Option<&TotpRecord>,
        code: SecondFactor<'_>,
    ) -> Result<bool, ServiceError> {
        let now = self.now();
        match code {
            SecondFactor::Totp(code) => {
                let Some(record) = totp else {
                    return Ok(false);
                };
                let (secret, resealed) = self.open_totp(user.id, record)?;
                let Some(step) = secret.matching_step(code, now) else {
                    return Ok(false);
                };
                Ok(store::accept_totp_step(
                    tx,
                    user.id,
                    &record.secret_sealed,
                    step,
                    resealed.as_deref(),
                )
                .await?)
            }
            SecondFactor::RecoveryCode(code) => {
                let Some(hash) = recovery_codes::hash(code) else {
                    return Ok(false);
                };
                if !store::use_recovery_code(tx, user.id, &hash, now).await? {
                    return Ok(false);
                }
                let codes_left = store::recovery_codes_left(tx, user.id).await?;
                let notice = EmailKind::RecoveryCodeUsed(RecoveryCodeUsedParams {
                    used_at: now.to_rfc3339(),
                    codes_left,
                });
                self.queue_notice(tx, notice, user).await?;
                tracing::info!(user_id = %user.id, codes_left, "recovery code used");
                Ok(true)
            }
            // An assertion answers a ceremony of its own (see `use_second_step_passkey`).
            SecondFactor::Passkey(_) => Ok(false),
        }
    }

    /// The account locked for a change in `tx`, if it is active.
    pub(super) async fn lock_active(
        &self,
        tx: &mut AnyConnection,
        user_id: Uuid,
    ) -> Result<User, ServiceError> {
        store::lock_user(tx, user_id, self.db.dialect())
            .await?
            .filter(|u| u.status == AccountStatus::Active)
            .ok_or(ServiceError::SessionRevoked)
    }

    /// Queues a security notice to the account's address.
    pub(super) async fn queue_notice(
        &self,
        tx: &mut AnyConnection,
        notice: EmailKind,
        user: &User,
    ) -> Result<(), ServiceError> {
        let to = user.email.as_str().to_owned();
        self.queue_email(tx, notice, user, &to, None).await
    }
}
