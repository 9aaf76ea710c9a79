//! Single-use tokens sent by email (verification, password reset, restoration). Only the
//! SHA-256 of a token is stored.

use dt_users_domain::Timestamp;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use crate::StoreError;

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPurpose {
    VerifyEmail,
    ResetPassword,
    RestoreAccount,
    /// Confirms an email change; sent to the new address.
    ConfirmEmailChange,
    /// Cancels (or reverts) an email change; sent to the old address.
    CancelEmailChange,
}

impl TokenPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VerifyEmail => "verify_email",
            Self::ResetPassword => "reset_password",
            Self::RestoreAccount => "restore",
            Self::ConfirmEmailChange => "change_email",
            Self::CancelEmailChange => "cancel_change",
        }
    }
}

/// A token that is known, unused and unexpired.
#[derive(Debug, Clone)]
pub struct LiveToken {
    pub user_id: Uuid,
    /// The address the token was sent to.
    pub email: String,
}

pub async fn insert_email_token(
    conn: &mut AnyConnection,
    token_hash: &str,
    user_id: Uuid,
    purpose: TokenPurpose,
    email: &str,
    now: Timestamp,
    expires_at: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO email_tokens \
         (token_hash, user_id, purpose, email, email_lower, created_at, expires_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(token_hash.to_owned())
    .bind(user_id.to_string())
    .bind(purpose.as_str())
    .bind(email.to_owned())
    .bind(dt_users_domain::Email::lookup_key_of(email))
    .bind(now.as_millis())
    .bind(expires_at.as_millis())
    .execute(conn)
    .await?;
    Ok(())
}

/// Uses a token: marks it used if it is live for `purpose`, atomically, so that of two
/// concurrent uses exactly one succeeds. Returns whom it was for.
pub async fn use_email_token(
    conn: &mut AnyConnection,
    token_hash: &str,
    purpose: TokenPurpose,
    now: Timestamp,
) -> Result<Option<LiveToken>, StoreError> {
    let used = sqlx::query(
        "UPDATE email_tokens SET used_at = ? \
         WHERE token_hash = ? AND purpose = ? AND used_at IS NULL AND expires_at > ?",
    )
    .bind(now.as_millis())
    .bind(token_hash.to_owned())
    .bind(purpose.as_str())
    .bind(now.as_millis())
    .execute(&mut *conn)
    .await?;
    if used.rows_affected() != 1 {
        return Ok(None);
    }
    let row = sqlx::query("SELECT user_id, email FROM email_tokens WHERE token_hash = ?")
        .bind(token_hash.to_owned())
        .fetch_one(conn)
        .await?;
    let user_id: String = row.try_get("user_id")?;
    Ok(Some(LiveToken {
        user_id: Uuid::parse_str(&user_id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        email: row.try_get("email")?,
    }))
}

/// Ends every live token of `user_id` for `purpose` (a newer one was issued, or what it was
/// for happened another way).
pub async fn revoke_email_tokens(
    conn: &mut AnyConnection,
    user_id: Uuid,
    purpose: TokenPurpose,
    now: Timestamp,
) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE email_tokens SET used_at = ? WHERE user_id = ? AND purpose = ? AND used_at IS NULL",
    )
    .bind(now.as_millis())
    .bind(user_id.to_string())
    .bind(purpose.as_str())
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Ends every live token of `user_id` but those for `keep` (the account's address changed:
/// what was sent to the old one must not work any more).
pub async fn revoke_email_tokens_except(
    conn: &mut AnyConnection,
    user_id: Uuid,
    keep: Option<TokenPurpose>,
    now: Timestamp,
) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE email_tokens SET used_at = ? WHERE user_id = ? AND purpose <> ? AND used_at IS NULL",
    )
    .bind(now.as_millis())
    .bind(user_id.to_string())
    .bind(keep.map_or("", TokenPurpose::as_str))
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Ends the live tokens of `user_id` for `purpose` that were sent to `email_key`.
pub async fn revoke_email_tokens_sent_to(
    conn: &mut AnyConnection,
    user_id: Uuid,
    purpose: TokenPurpose,
    email_key: &str,
    now: Timestamp,
) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE email_tokens SET used_at = ? \
         WHERE user_id = ? AND purpose = ? AND email_lower = ? AND used_at IS NULL",
    )
    .bind(now.as_millis())
    .bind(user_id.to_string())
    .bind(purpose.as_str())
    .bind(email_key.to_owned())
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// True when a live cancel link of an email change was sent to `email_key` (lower-cased) for
/// an account other than `owner`: the address may go back to that account, so nobody else may
/// take it meanwhile.
pub async fn address_reserved(
    conn: &mut AnyConnection,
    email_key: &str,
    owner: Option<Uuid>,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let row = sqlx::query(
        "SELECT 1 AS reserved FROM email_tokens WHERE email_lower = ? AND user_id <> ? \
         AND purpose = ? AND used_at IS NULL AND expires_at > ? LIMIT 1",
    )
    .bind(email_key.to_owned())
    .bind(owner.map(|id| id.to_string()).unwrap_or_default())
    .bind(TokenPurpose::CancelEmailChange.as_str())
    .bind(now.as_millis())
    .fetch_optional(conn)
    .await?;
    Ok(row.is_some())
}

/// Removes tokens that expired before `before`.
pub async fn delete_stale_email_tokens(
    conn: &mut AnyConnection,
    before: Timestamp,
) -> Result<u64, StoreError> {
    // A used token is also past its expiry within `DT_USERS_EMAIL_TOKEN_TTL`, so the indexed
    // expiry alone finds every stale token.
    let done = sqlx::query("DELETE FROM email_tokens WHERE expires_at < ?")
        .bind(before.as_millis())
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

/// Looks a live token up without using it (to check a request before doing costly work).
pub async fn peek_email_token(
    conn: &mut AnyConnection,
    token_hash: &str,
    purpose: TokenPurpose,
    now: Timestamp,
) -> Result<Option<LiveToken>, StoreError> {
    let row = sqlx::query(
        "SELECT user_id, email FROM email_tokens \
         WHERE token_hash = ? AND purpose = ? AND used_at IS NULL AND expires_at > ?",
    )
    .bind(token_hash.to_owned())
    .bind(purpose.as_str())
    .bind(now.as_millis())
    .fetch_optional(conn)
    .await?;
    row.map(|row| {
        let user_id: String = row.try_get("user_id")?;
        Ok(LiveToken {
            user_id: Uuid::parse_str(&user_id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            email: row.try_get("email")?,
        })
    })
    .transpose()
}

/// An emailed token as the owner's data export shows it (never the token or its hash).
#[derive(Debug, Clone)]
pub struct TokenRecord {
    pub purpose: String,
    pub email: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub used_at: Option<Timestamp>,
}

pub async fn email_tokens_of(
    conn: &mut AnyConnection,
    user_id: Uuid,
) -> Result<Vec<TokenRecord>, StoreError> {
    let rows = sqlx::query(
        "SELECT purpose, email, created_at, expires_at, used_at FROM email_tokens \
         WHERE user_id = ? ORDER BY created_at",
    )
    .bind(user_id.to_string())
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(TokenRecord {
                purpose: row.try_get("purpose")?,
                email: row.try_get("email")?,
                created_at: Timestamp::from_millis(row.try_get("created_at")?),
                expires_at: Timestamp::from_millis(row.try_get("expires_at")?),
                used_at: row
                    .try_get::<Option<i64>, _>("used_at")?
                    .map(Timestamp::from_millis),
            })
        })
        .collect()
}

/// Recomputes the address keys of emailed links outside ASCII with the current rule (see
/// [`crate::normalize_email_keys`]); returns how many changed.
pub async fn normalize_token_email_keys(
    conn: &mut AnyConnection,
    dialect: crate::Dialect,
) -> Result<u64, StoreError> {
    let sql = format!(
        "SELECT token_hash, email, email_lower FROM email_tokens WHERE {}",
        crate::users::non_ascii("email", dialect)
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(&mut *conn)
        .await?;
    let mut changed = 0;
    for row in &rows {
        let hash: String = row.try_get("token_hash")?;
        let email: String = row.try_get("email")?;
        let stored: Option<String> = row.try_get("email_lower")?;
        let key = dt_users_domain::Email::lookup_key_of(&email);
        if stored.as_deref() == Some(key.as_str()) {
            continue;
        }
        sqlx::query("UPDATE email_tokens SET email_lower = ? WHERE token_hash = ?")
            .bind(key)
            .bind(hash)
            .execute(&mut *conn)
            .await?;
        changed += 1;
    }
    Ok(changed)
}
