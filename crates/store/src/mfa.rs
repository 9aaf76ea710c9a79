//! Second factors of sign-in: an account's TOTP authenticator, its recovery codes, and the
//! challenges that stand between a correct password and a session. Secrets are stored sealed
//! by the service, codes and challenge tokens as their SHA-256 only.
//!
//! What makes a code count once is a conditional UPDATE, not a read before a write: of two
//! concurrent uses, exactly one changes the row.

use dt_users_domain::Timestamp;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use crate::StoreError;

/// An account's TOTP authenticator as stored.
#[derive(Debug, Clone)]
pub struct TotpRecord {
    /// The secret as the service sealed it; useless without the service's key.
    pub secret_sealed: String,
    pub created_at: Timestamp,
    /// `None` while the enrolment waits for its first code: the authenticator does not guard
    /// sign-in until then.
    pub confirmed_at: Option<Timestamp>,
    /// The last time step a code was accepted for; a code of that step or an earlier one is
    /// refused.
    pub last_step: Option<i64>,
}

/// A live challenge: the second step of a sign-in whose first step (a password, or a
/// provider) succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MfaChallenge {
    pub user_id: Uuid,
    /// The user's revocation epoch as read before the first step was checked; the session is
    /// only created if it has not moved since.
    pub epoch: u64,
    /// The `amr` methods of the first step, space-separated (`pwd` after a password).
    pub first_methods: String,
}

pub async fn totp_of(
    conn: &mut AnyConnection,
    user_id: Uuid,
) -> Result<Option<TotpRecord>, StoreError> {
    let row = sqlx::query(
        "SELECT secret_sealed, created_at, confirmed_at, last_step FROM mfa_totp \
         WHERE user_id = ?",
    )
    .bind(user_id.to_string())
    .fetch_optional(conn)
    .await?;
    row.map(|row| {
        Ok(TotpRecord {
            secret_sealed: row.try_get("secret_sealed")?,
            created_at: Timestamp::from_millis(row.try_get("created_at")?),
            confirmed_at: row
                .try_get::<Option<i64>, _>("confirmed_at")?
                .map(Timestamp::from_millis),
            last_step: row.try_get("last_step")?,
        })
    })
    .transpose()
}

/// Starts an enrolment, replacing one that was never confirmed (the owner scanned a new QR
/// code). False, and nothing written, when a confirmed authenticator exists: the insert reads
/// the current rows (not a transaction's snapshot), so one confirmed concurrently is seen.
pub async fn put_pending_totp(
    conn: &mut AnyConnection,
    user_id: Uuid,
    secret_sealed: &str,
    now: Timestamp,
) -> Result<bool, StoreError> {
    sqlx::query("DELETE FROM mfa_totp WHERE user_id = ? AND confirmed_at IS NULL")
        .bind(user_id.to_string())
        .execute(&mut *conn)
        .await?;
    let done = sqlx::query(
        "INSERT INTO mfa_totp (user_id, secret_sealed, created_at) \
         SELECT ?, ?, ? FROM (SELECT 1 AS one) AS pending \
         WHERE NOT EXISTS (SELECT 1 FROM mfa_totp WHERE user_id = ?)",
    )
    .bind(user_id.to_string())
    .bind(secret_sealed.to_owned())
    .bind(now.as_millis())
    .bind(user_id.to_string())
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Confirms the pending enrolment whose sealed secret is `secret_sealed` (the one the code
/// was checked against) with the code of time step `step`, which is thereby used. False when
/// it is not pending any more: confirmed already, or replaced by a new enrolment meanwhile.
pub async fn confirm_totp(
    conn: &mut AnyConnection,
    user_id: Uuid,
    secret_sealed: &str,
    step: i64,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE mfa_totp SET confirmed_at = ?, last_step = ? \
         WHERE user_id = ? AND secret_sealed = ? AND confirmed_at IS NULL",
    )
    .bind(now.as_millis())
    .bind(step)
    .bind(user_id.to_string())
    .bind(secret_sealed.to_owned())
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Accepts a code of time step `step` of the authenticator whose sealed secret is
/// `secret_sealed` (the one the code was checked against), if no code of that step or a later
/// one was accepted before; false otherwise — also when a concurrent sign-in took the step
/// first, or the authenticator was replaced meanwhile. `resealed` replaces the stored secret in
/// the same write, so that a secret sealed anew (under the service's current key) is only kept
/// by the use that won.
pub async fn accept_totp_step(
    conn: &mut AnyConnection,
    user_id: Uuid,
    secret_sealed: &str,
    step: i64,
    resealed: Option<&str>,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE mfa_totp SET last_step = ?, secret_sealed = COALESCE(?, secret_sealed) \
         WHERE user_id = ? AND secret_sealed = ? AND confirmed_at IS NOT NULL \
         AND (last_step IS NULL OR last_step < ?)",
    )
    .bind(step)
    .bind(resealed.map(str::to_owned))
    .bind(user_id.to_string())
    .bind(secret_sealed.to_owned())
    .bind(step)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Removes the authenticator, pending or confirmed; false when there was none.
pub async fn delete_totp(conn: &mut AnyConnection, user_id: Uuid) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM mfa_totp WHERE user_id = ?")
        .bind(user_id.to_string())
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives the account a new set of recovery codes; the old ones, used or not, stop working.
pub async fn replace_recovery_codes(
    conn: &mut AnyConnection,
    user_id: Uuid,
    code_hashes: &[String],
    now: Timestamp,
) -> Result<(), StoreError> {
    let id = user_id.to_string();
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = ?")
        .bind(id.clone())
        .execute(&mut *conn)
        .await?;
    for hash in code_hashes {
        sqlx::query("INSERT INTO recovery_codes (user_id, code_hash, created_at) VALUES (?, ?, ?)")
            .bind(id.clone())
            .bind(hash.clone())
            .bind(now.as_millis())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

pub async fn delete_recovery_codes(
    conn: &mut AnyConnection,
    user_id: Uuid,
) -> Result<u64, StoreError> {
    let done = sqlx::query("DELETE FROM recovery_codes WHERE user_id = ?")
        .bind(user_id.to_string())
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

/// Uses a recovery code if it is the account's and unused, atomically, so that of two
/// concurrent uses exactly one succeeds.
pub async fn use_recovery_code(
    conn: &mut AnyConnection,
    user_id: Uuid,
    code_hash: &str,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE recovery_codes SET used_at = ? \
         WHERE user_id = ? AND code_hash = ? AND used_at IS NULL",
    )
    .bind(now.as_millis())
    .bind(user_id.to_string())
    .bind(code_hash.to_owned())
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// How many unused recovery codes the account has (the owner is told when few are left).
pub async fn recovery_codes_left(
    conn: &mut AnyConnection,
    user_id: Uuid,
) -> Result<u64, StoreError> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS codes FROM recovery_codes WHERE user_id = ? AND used_at IS NULL",
    )
    .bind(user_id.to_string())
    .fetch_one(conn)
    .await?;
    let codes: i64 = row.try_get("codes")?;
    u64::try_from(codes).map_err(|e| StoreError::Corrupt(format!("recovery codes {codes}: {e}")))
}

/// Stores a challenge for the second step of a sign-in, under the SHA-256 of its token:
/// `epoch` is the user's revocation epoch as read before the first step was checked, and
/// `first_methods` the `amr` methods of that step, space-separated (`pwd` after a password).
pub async fn insert_mfa_challenge(
    conn: &mut AnyConnection,
    token_hash: &str,
    user_id: Uuid,
    epoch: u64,
    first_methods: &str,
    now: Timestamp,
    expires_at: Timestamp,
) -> Result<(), StoreError> {
    // The column is signed; an epoch beyond it is never reached by counting revocations.
    let epoch = i64::try_from(epoch)
        .map_err(|e| StoreError::Corrupt(format!("revocation epoch {epoch}: {e}")))?;
    sqlx::query(
        "INSERT INTO mfa_challenges (token_hash, user_id, epoch, first_methods, created_at, \
         expires_at) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(token_hash.to_owned())
    .bind(user_id.to_string())
    .bind(epoch)
    .bind(first_methods.to_owned())
    .bind(now.as_millis())
    .bind(expires_at.as_millis())
    .execute(conn)
    .await?;
    Ok(())
}

/// Looks a live challenge up without using it (to check a request before doing costly work).
pub async fn live_mfa_challenge(
    conn: &mut AnyConnection,
    token_hash: &str,
    now: Timestamp,
) -> Result<Option<MfaChallenge>, StoreError> {
    let row = sqlx::query(
        "SELECT user_id, epoch, first_methods FROM mfa_challenges \
         WHERE token_hash = ? AND used_at IS NULL AND expires_at > ?",
    )
    .bind(token_hash.to_owned())
    .bind(now.as_millis())
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(challenge_from_row).transpose()
}

/// Uses a challenge: marks it used if it is live, atomically, so that of two concurrent uses
/// exactly one succeeds. Returns whose sign-in it was.
pub async fn use_mfa_challenge(
    conn: &mut AnyConnection,
    token_hash: &str,
    now: Timestamp,
) -> Result<Option<MfaChallenge>, StoreError> {
    let used = sqlx::query(
        "UPDATE mfa_challenges SET used_at = ? \
         WHERE token_hash = ? AND used_at IS NULL AND expires_at > ?",
    )
    .bind(now.as_millis())
    .bind(token_hash.to_owned())
    .bind(now.as_millis())
    .execute(&mut *conn)
    .await?;
    if used.rows_affected() != 1 {
        return Ok(None);
    }
    let row = sqlx::query(
        "SELECT user_id, epoch, first_methods FROM mfa_challenges WHERE token_hash = ?",
    )
    .bind(token_hash.to_owned())
    .fetch_one(conn)
    .await?;
    challenge_from_row(&row).map(Some)
}

/// Removes challenges that expired before `before`.
pub async fn delete_stale_mfa_challenges(
    conn: &mut AnyConnection,
    before: Timestamp,
) -> Result<u64, StoreError> {
    // A used challenge is also past its expiry soon after, so the indexed expiry alone finds
    // every stale challenge.
    let done = sqlx::query("DELETE FROM mfa_challenges WHERE expires_at < ?")
        .bind(before.as_millis())
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

fn challenge_from_row(row: &AnyRow) -> Result<MfaChallenge, StoreError> {
    let user_id: String = row.try_get("user_id")?;
    let epoch: i64 = row.try_get("epoch")?;
    Ok(MfaChallenge {
        user_id: Uuid::parse_str(&user_id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        epoch: u64::try_from(epoch)
            .map_err(|e| StoreError::Corrupt(format!("challenge epoch {epoch}: {e}")))?,
        first_methods: row.try_get("first_methods")?,
    })
}
