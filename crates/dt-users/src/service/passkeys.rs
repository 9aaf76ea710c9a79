//! Passkeys (WebAuthn): adding one to an account, listing and removing them, and the two ways
//! they sign in — as the second factor after a password, and alone (a discoverable credential
//! with user verification). `webauthn-rs` runs the ceremonies; each ceremony's state is kept in
//! the database until its one use, so any instance can finish what another started.
//!
//! Every assertion is checked through the account's gate, like a password, and a credential
//! whose counter does not move forward is refused: the conditional update that records the
//! counter is what stops a cloned authenticator, even when two uses race.

use dt_users_domain::{AuthMethods, User};
use dt_users_store::{self as store, AnyConnection, PasskeyRecord};
use serde_json::Value;
use uuid::Uuid;
use webauthn_rs::prelude::{
    AuthenticationResult, DiscoverableAuthentication, Passkey, PasskeyAuthentication,
    PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential,
};

use super::auth::{ClientInfo, TokenPair, refuse_unless_active};
use super::transaction::transact;
use super::two_factor::RecoveryCodes;
use super::{App, ServiceError};
use crate::email::{EmailKind, PasskeyParams};
use crate::security::access_token::TokenSubject;
use crate::security::secret_token::{hash_secret, random_urlsafe};

/// How long a ceremony waits for the authenticator's answer.
const CEREMONY_TTL_SECS: u64 = 300;
/// The longest name of a passkey, in characters.
const NAME_MAX: usize = 64;

/// The kinds of ceremony, as stored.
const REGISTER: &str = "register";
const SECOND_STEP: &str = "mfa";
const PASSWORDLESS: &str = "passkey";

/// A passkey sign-in's challenge: its id, and the options for `navigator.credentials.get`.
#[derive(Debug)]
pub struct PasskeyChallenge {
    pub challenge_id: String,
    pub options: Value,
}

/// The stored key of a credential id: its SHA-256, hex.
fn credential_key(credential_id: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(credential_id)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn passkey_of(record: &PasskeyRecord) -> Result<Passkey, ServiceError> {
    serde_json::from_str(&record.credential).map_err(ServiceError::internal)
}

fn state_json(state: &impl serde::Serialize) -> Result<String, ServiceError> {
    serde_json::to_string(state).map_err(ServiceError::internal)
}

fn options_json(options: &impl serde::Serialize) -> Result<Value, ServiceError> {
    serde_json::to_value(options).map_err(ServiceError::internal)
}

/// A name as given: trimmed, 1–64 characters, no control characters; none gives "Passkey".
fn passkey_name(name: Option<&str>) -> Result<String, ServiceError> {
    let name = name
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .unwrap_or("Passkey");
    if name.chars().count() > NAME_MAX || name.chars().any(char::is_control) {
        return Err(ServiceError::Validation(vec![
            dt_users_domain::FieldError::new(
                "name",
                format!("at most {NAME_MAX} characters, without control characters"),
            ),
        ]));
    }
    Ok(name.to_owned())
}

impl App {
    /// The options of `navigator.credentials.create` for a new passkey of the caller; the
    /// ceremony waits 5 minutes for its answer (a newer one replaces it).
    #[tracing::instrument(skip_all, fields(user_id = %subject.user_id))]
    pub async fn passkey_registration_options(
        &self,
        subject: TokenSubject,
    ) -> Result<Value, ServiceError> {
        let user = self.current_user(subject).await?;
        let existing = {
            let mut conn = self.db.pool().acquire().await?;
            store::passkeys_of(&mut conn, user.id).await?
        };
        let exclude = existing
            .iter()
            .map(|r| passkey_of(r).map(|p| p.cred_id().clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let display = user
            .display_name
            .clone()
            .unwrap_or_else(|| user.username.as_str().to_owned());
        let (options, state) = self
            .webauthn
            .start_passkey_registration(user.id, user.email.as_str(), &display, Some(exclude))
            .map_err(ServiceError::internal)?;
        let mut options = options_json(&options)?;
        // Ask for a discoverable credential where the authenticator can make one, so that the
        // passkey can also sign in without the email (a security key without room makes a
        // non-discoverable one, which still serves as a second factor).
        if let Some(selection) = options
            .pointer_mut("/publicKey/authenticatorSelection")
            .and_then(Value::as_object_mut)
        {
            selection.insert("residentKey".into(), Value::from("preferred"));
        }
        let now = self.now();
        let state = state_json(&state)?;
        let mut conn = self.db.pool().acquire().await?;
        store::put_ceremony(
            &mut conn,
            &format!("{REGISTER}:{}", user.id),
            REGISTER,
            Some(user.id),
            &state,
            now,
            now.plus_secs(CEREMONY_TTL_SECS),
        )
        .await?;
        Ok(options)
    }

    /// Adds the passkey the authenticator made for the pending registration. Two-factor
    /// sign-in is on from now; when it was off, the recovery codes are made and returned.
    #[tracing::instrument(skip_all, fields(user_id = %subject.user_id))]
    pub async fn register_passkey(
        &self,
        subject: TokenSubject,
        credential: &Value,
        name: Option<&str>,
    ) -> Result<(PasskeyRecord, Option<RecoveryCodes>), ServiceError> {
        let name = passkey_name(name)?;
        let credential: RegisterPublicKeyCredential = serde_json::from_value(credential.clone())
            .map_err(|_| ServiceError::InvalidCredential)?;
        let user = self.current_user(subject).await?;
        let added = transact!(self, |tx| {
            let user = self.lock_active(tx, user.id).await?;
            self.finish_registration(tx, &user, &credential, &name)
                .await?
        })?;
        let (record, codes) = added.ok_or(ServiceError::InvalidCredential)?;
        tracing::info!(user_id = %user.id, passkey_id = %record.id, "passkey added");
        Ok((record, codes))
    }

    /// Finishes the pending registration of `user` with `credential`, in `tx`: the ceremony is
    /// used up whatever the outcome. `None` when the credential is refused (or registered
    /// already, to any account).
    async fn finish_registration(
        &self,
        tx: &mut AnyConnection,
        user: &User,
        credential: &RegisterPublicKeyCredential,
        name: &str,
    ) -> Result<Option<(PasskeyRecord, Option<RecoveryCodes>)>, ServiceError> {
        let now = self.now();
        let Some(ceremony) =
            store::take_ceremony(tx, &format!("{REGISTER}:{}", user.id), REGISTER, now).await?
        else {
            return Ok(None);
        };
        let state: PasskeyRegistration =
            serde_json::from_str(&ceremony.state).map_err(ServiceError::internal)?;
        let passkey = match self
            .webauthn
            .finish_passkey_registration(credential, &state)
        {
            Ok(passkey) => passkey,
            Err(e) => {
                tracing::info!(user_id = %user.id, error = %e, "passkey registration refused");
                return Ok(None);
            }
        };
        let stored = serde_json::to_value(&passkey).map_err(ServiceError::internal)?;
        let record = PasskeyRecord {
            id: Uuid::now_v7(),
            user_id: user.id,
            name: name.to_owned(),
            credential: stored.to_string(),
            sign_count: 0,
            backup_eligible: stored
                .pointer("/cred/backup_eligible")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            created_at: now,
            last_used_at: None,
        };
        if !store::insert_passkey(tx, &record, &credential_key(passkey.cred_id())).await? {
            tracing::info!(user_id = %user.id, "passkey registered already: refused");
            return Ok(None);
        }
        let codes = if user.mfa_enabled {
            None
        } else {
            Some(self.new_recovery_codes(tx, user.id).await?)
        };
        let notice = EmailKind::PasskeyAdded(PasskeyParams {
            passkey_name: record.name.clone(),
            at: now.to_rfc3339(),
        });
        self.queue_notice(tx, notice, user).await?;
        Ok(Some((record, codes)))
    }

    /// The caller's passkeys, oldest first.
    pub async fn list_passkeys(
        &self,
        subject: TokenSubject,
    ) -> Result<Vec<PasskeyRecord>, ServiceError> {
        let user = self.current_user(subject).await?;
        let mut conn = self.db.pool().acquire().await?;
        Ok(store::passkeys_of(&mut conn, user.id).await?)
    }

    /// Removes one of the caller's passkeys, with the password — or without it, from a session
    /// that signed in with a passkey in the last 5 minutes. With no second factor left, the
    /// recovery codes go too. An account's last way to sign in stays.
    #[tracing::instrument(skip_all, fields(user_id = %subject.user_id))]
    pub async fn remove_passkey(
        &self,
        subject: TokenSubject,
        passkey_id: Uuid,
        current_password: Option<&str>,
    ) -> Result<(), ServiceError> {
        let user = self.current_user(subject).await?;
        let owned = {
            let mut conn = self.db.pool().acquire().await?;
            store::passkeys_of(&mut conn, user.id).await?
        };
        let Some(passkey) = owned.into_iter().find(|p| p.id == passkey_id) else {
            return Err(ServiceError::NotFound);
        };
        self.confirm_owner(&user, subject, current_password, "current_password")
            .await?;
        let now = self.now();
        transact!(self, |tx| {
            let user = self.lock_active(tx, user.id).await?;
            // The account row is locked: a concurrent removal of another way in waits here
            // and counts after this one.
            let passkeys = store::passkey_count(tx, user.id).await?;
            if user.password_hash.is_none()
                && passkeys <= 1
                && store::identity_count(tx, user.id).await? == 0
            {
                return Err(ServiceError::LastSignInMethod);
            }
            if !store::delete_passkey(tx, user.id, passkey_id).await? {
                return Err(ServiceError::NotFound);
            }
            let totp_on = store::totp_of(tx, user.id)
                .await?
                .is_some_and(|t| t.confirmed_at.is_some());
            if !totp_on && store::passkey_count(tx, user.id).await? == 0 {
                store::delete_recovery_codes(tx, user.id).await?;
            }
            let notice = EmailKind::PasskeyRemoved(PasskeyParams {
                passkey_name: passkey.name.clone(),
                at: now.to_rfc3339(),
            });
            self.queue_notice(tx, notice, &user).await?;
        })?;
        tracing::info!(user_id = %user.id, %passkey_id, "passkey removed");
        Ok(())
    }

    /// The options of `navigator.credentials.get` for the second step of a sign-in whose
    /// password was right: the account's passkeys. A newer request replaces the pending one.
    pub async fn second_step_passkey_options(
        &self,
        mfa_token: &str,
    ) -> Result<Value, ServiceError> {
        let token_hash = hash_secret(mfa_token);
        let now = self.now();
        let mut conn = self.db.pool().acquire().await?;
        let challenge = store::live_mfa_challenge(&mut conn, &token_hash, now)
            .await?
            .ok_or(ServiceError::InvalidMfaToken)?;
        let passkeys = store::passkeys_of(&mut conn, challenge.user_id)
            .await?
            .iter()
            .map(passkey_of)
            .collect::<Result<Vec<_>, _>>()?;
        if passkeys.is_empty() {
            return Err(ServiceError::NotFound);
        }
        let (options, state) = self
            .webauthn
            .start_passkey_authentication(&passkeys)
            .map_err(ServiceError::internal)?;
        store::put_ceremony(
            &mut conn,
            &format!("{SECOND_STEP}:{token_hash}"),
            SECOND_STEP,
            Some(challenge.user_id),
            &state_json(&state)?,
            now,
            now.plus_secs(CEREMONY_TTL_SECS),
        )
        .await?;
        options_json(&options)
    }

    /// Checks a passkey assertion as the second factor of `user`, in `tx`: the ceremony of
    /// `mfa_token_hash` is used up, and the passkey's counter must move forward. The methods it
    /// adds, or `None` when it fails.
    pub(super) async fn use_second_step_passkey(
        &self,
        tx: &mut AnyConnection,
        user: &User,
        mfa_token_hash: &str,
        assertion: &Value,
    ) -> Result<Option<AuthMethods>, ServiceError> {
        let Ok(credential) = serde_json::from_value::<PublicKeyCredential>(assertion.clone())
        else {
            return Ok(None);
        };
        let now = self.now();
        let Some(ceremony) = store::take_ceremony(
            tx,
            &format!("{SECOND_STEP}:{mfa_token_hash}"),
            SECOND_STEP,
            now,
        )
        .await?
        .filter(|c| c.user_id == Some(user.id)) else {
            return Ok(None);
        };
        let state: PasskeyAuthentication =
            serde_json::from_str(&ceremony.state).map_err(ServiceError::internal)?;
        let result = match self
            .webauthn
            .finish_passkey_authentication(&credential, &state)
        {
            Ok(result) => result,
            Err(e) => {
                tracing::info!(user_id = %user.id, error = %e, "passkey assertion refused");
                return Ok(None);
            }
        };
        self.record_use(tx, user.id, &result).await
    }

    /// Starts a sign-in with a passkey alone: a discoverable-credential challenge.
    pub async fn passkey_sign_in_options(&self) -> Result<PasskeyChallenge, ServiceError> {
        let (mut options, state) = self
            .webauthn
            .start_discoverable_authentication()
            .map_err(ServiceError::internal)?;
        // A modal prompt on request, not only the browser's autofill.
        options.mediation = None;
        let challenge_id = random_urlsafe(24);
        let now = self.now();
        let mut conn = self.db.pool().acquire().await?;
        store::put_ceremony(
            &mut conn,
            &challenge_id,
            PASSWORDLESS,
            None,
            &state_json(&state)?,
            now,
            now.plus_secs(CEREMONY_TTL_SECS),
        )
        .await?;
        Ok(PasskeyChallenge {
            challenge_id,
            options: options_json(&options)?,
        })
    }

    /// Signs in with a passkey alone (user verification is required, so it is two factors by
    /// itself). Anything wrong — the challenge, the credential, the signature, the counter — is
    /// the same 401 `invalid_credentials`.
    #[tracing::instrument(skip_all)]
    pub async fn passkey_sign_in(
        &self,
        challenge_id: &str,
        assertion: &Value,
        client: ClientInfo,
    ) -> Result<TokenPair, ServiceError> {
        let credential: PublicKeyCredential = serde_json::from_value(assertion.clone())
            .map_err(|_| ServiceError::InvalidCredentials)?;
        let (user_handle, credential_id) = self
            .webauthn
            .identify_discoverable_authentication(&credential)
            .map_err(|_| ServiceError::InvalidCredentials)?;
        let (record, user) = {
            let mut conn = self.db.pool().acquire().await?;
            let record = store::passkey_by_credential(&mut conn, &credential_key(credential_id))
                .await?
                .filter(|r| r.user_id == user_handle)
                .ok_or(ServiceError::InvalidCredentials)?;
            let user = store::user_by_id(&mut conn, record.user_id)
                .await?
                .ok_or(ServiceError::InvalidCredentials)?;
            (record, user)
        };
        let passkey = passkey_of(&record)?;
        // As a password sign-in: the epoch before the account is looked at again below.
        let epoch = self.sessions.epoch(user.id).await?;
        let check = async {
            transact!(self, |tx| {
                self.finish_discoverable(tx, user.id, challenge_id, &credential, &passkey)
                    .await?
            })
        };
        let methods = self
            .through_gate(&user.email.lookup_key(), check, Option::is_some)
            .await?
            .ok_or(ServiceError::InvalidCredentials)?;
        let current = {
            let mut conn = self.db.pool().acquire().await?;
            store::user_by_id(&mut conn, user.id).await?
        }
        .ok_or(ServiceError::InvalidCredentials)?;
        refuse_unless_active(&current)?;
        self.open_session(user.id, epoch, methods, client)
            .await?
            .ok_or(ServiceError::InvalidCredentials)
    }

    /// Finishes the discoverable sign-in `challenge_id` with `credential`, a credential of
    /// `user_id`, in `tx`: the challenge is used up whatever the outcome. The methods it
    /// proves, or `None` when it is refused.
    async fn finish_discoverable(
        &self,
        tx: &mut AnyConnection,
        user_id: Uuid,
        challenge_id: &str,
        credential: &PublicKeyCredential,
        passkey: &Passkey,
    ) -> Result<Option<AuthMethods>, ServiceError> {
        let Some(ceremony) =
            store::take_ceremony(tx, challenge_id, PASSWORDLESS, self.now()).await?
        else {
            return Ok(None);
        };
        let state: DiscoverableAuthentication =
            serde_json::from_str(&ceremony.state).map_err(ServiceError::internal)?;
        match self
            .webauthn
            .finish_discoverable_authentication_v2(credential, state, passkey)
        {
            Ok(result) => self.record_use(tx, user_id, &result).await,
            Err(e) => {
                tracing::info!(%user_id, error = %e, "passkey sign-in refused");
                Ok(None)
            }
        }
    }

    /// Records a successful assertion: the passkey as updated, its counter and when — only if
    /// its counter moved forward (or it keeps none). The methods it proves, or `None` when the
    /// counter says the credential was cloned.
    async fn record_use(
        &self,
        tx: &mut AnyConnection,
        user_id: Uuid,
        result: &AuthenticationResult,
    ) -> Result<Option<AuthMethods>, ServiceError> {
        let key = credential_key(result.cred_id());
        let Some(record) = store::passkey_by_credential(tx, &key)
            .await?
            .filter(|r| r.user_id == user_id)
        else {
            return Ok(None);
        };
        if !result.user_verified() {
            return Ok(None);
        }
        let mut passkey = passkey_of(&record)?;
        passkey.update_credential(result);
        let stored = serde_json::to_string(&passkey).map_err(ServiceError::internal)?;
        if !store::record_passkey_use(tx, record.id, &stored, result.counter(), self.now()).await? {
            tracing::warn!(%user_id, passkey_id = %record.id, "passkey counter did not move forward: refused as a possible clone");
            return Ok(None);
        }
        Ok(Some(AuthMethods::passkey(result.backup_eligible())))
    }
}
