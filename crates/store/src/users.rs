use dt_users_domain::{AccountStatus, Email, Timestamp, User, Username};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use crate::StoreError;

/// An account without a password (made by signing in with a provider) stores an empty
/// `password_hash`, read as `None`: the column stays NOT NULL on every dialect.
///
/// `second_factors` is derived, not a column: an account has a second factor exactly when a
/// confirmed authenticator or a passkey exists, so the flag cannot drift from the rows that
/// decide it.
const COLUMNS: &str = "id, email, email_verified, pending_email, username, display_name, bio, \
     avatar_url, password_hash, status, banned, created_at, updated_at, deleted_at, purge_after, \
     (SELECT COUNT(*) FROM mfa_totp t WHERE t.user_id = users.id AND t.confirmed_at IS NOT NULL) \
     + (SELECT COUNT(*) FROM passkeys p WHERE p.user_id = users.id) AS second_factors";

const INSERT: &str = "INSERT INTO users (id, email, email_lower, email_verified, pending_email, \
     username, username_lower, display_name, bio, avatar_url, password_hash, status, banned, \
     created_at, updated_at, deleted_at, purge_after) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

const UPDATE: &str = "UPDATE users SET email = ?, email_lower = ?, email_verified = ?, \
     pending_email = ?, username = ?, username_lower = ?, display_name = ?, bio = ?, \
     avatar_url = ?, password_hash = ?, status = ?, banned = ?, updated_at = ?, deleted_at = ?, \
     purge_after = ? WHERE id = ?";

fn select_where(condition: &str) -> String {
    format!("SELECT {COLUMNS} FROM users WHERE {condition}")
}

fn user_from_row(row: &AnyRow) -> Result<User, StoreError> {
    let id: String = row.try_get("id")?;
    let status: String = row.try_get("status")?;
    let verified: i64 = row.try_get("email_verified")?;
    let banned: i64 = row.try_get("banned")?;
    let second_factors: i64 = row.try_get("second_factors")?;
    Ok(User {
        id: Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(format!("user id {id}: {e}")))?,
        email: Email::from_trusted(row.try_get("email")?),
        email_verified: verified != 0,
        pending_email: row
            .try_get::<Option<String>, _>("pending_email")?
            .map(Email::from_trusted),
        username: Username::from_trusted(row.try_get("username")?),
        display_name: row.try_get("display_name")?,
        bio: row.try_get("bio")?,
        avatar_url: row.try_get("avatar_url")?,
        password_hash: Some(row.try_get::<String, _>("password_hash")?)
            .filter(|hash| !hash.is_empty()),
        status: AccountStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("user {id}: status {status}")))?,
        banned: banned != 0,
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
        updated_at: Timestamp::from_millis(row.try_get("updated_at")?),
        deleted_at: row
            .try_get::<Option<i64>, _>("deleted_at")?
            .map(Timestamp::from_millis),
        purge_after: row
            .try_get::<Option<i64>, _>("purge_after")?
            .map(Timestamp::from_millis),
        mfa_enabled: second_factors > 0,
    })
}

async fn fetch_one_user(
    conn: &mut AnyConnection,
    condition: &str,
    value: String,
) -> Result<Option<User>, StoreError> {
    let sql = select_where(condition);
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(value)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(user_from_row).transpose()
}

/// Inserts a new account; a taken email or username is [`StoreError::Conflict`].
pub async fn insert_user(conn: &mut AnyConnection, user: &User) -> Result<(), StoreError> {
    sqlx::query(INSERT)
        .bind(user.id.to_string())
        .bind(user.email.as_str().to_owned())
        .bind(user.email.lookup_key())
        .bind(i16::from(user.email_verified))
        .bind(user.pending_email.as_ref().map(|e| e.as_str().to_owned()))
        .bind(user.username.as_str().to_owned())
        .bind(user.username.lookup_key())
        .bind(user.display_name.clone())
        .bind(user.bio.clone())
        .bind(user.avatar_url.clone())
        .bind(user.password_hash.clone().unwrap_or_default())
        .bind(user.status.as_str())
        .bind(i16::from(user.banned))
        .bind(user.created_at.as_millis())
        .bind(user.updated_at.as_millis())
        .bind(user.deleted_at.map(Timestamp::as_millis))
        .bind(user.purge_after.map(Timestamp::as_millis))
        .execute(conn)
        .await?;
    Ok(())
}

/// Writes every mutable field of `user` back; a taken email or username is a conflict.
pub async fn update_user(conn: &mut AnyConnection, user: &User) -> Result<(), StoreError> {
    sqlx::query(UPDATE)
        .bind(user.email.as_str().to_owned())
        .bind(user.email.lookup_key())
        .bind(i16::from(user.email_verified))
        .bind(user.pending_email.as_ref().map(|e| e.as_str().to_owned()))
        .bind(user.username.as_str().to_owned())
        .bind(user.username.lookup_key())
        .bind(user.display_name.clone())
        .bind(user.bio.clone())
        .bind(user.avatar_url.clone())
        .bind(user.password_hash.clone().unwrap_or_default())
        .bind(user.status.as_str())
        .bind(i16::from(user.banned))
        .bind(user.updated_at.as_millis())
        .bind(user.deleted_at.map(Timestamp::as_millis))
        .bind(user.purge_after.map(Timestamp::as_millis))
        .bind(user.id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// Replaces the password hash only if it is still `expected` (a rehash on sign-in); false
/// when the account changed meanwhile, which then stays as it is.
pub async fn replace_password_hash(
    conn: &mut AnyConnection,
    id: Uuid,
    expected: &str,
    new_hash: &str,
) -> Result<bool, StoreError> {
    let done = sqlx::query("UPDATE users SET password_hash = ? WHERE id = ? AND password_hash = ?")
        .bind(new_hash.to_owned())
        .bind(id.to_string())
        .bind(expected.to_owned())
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Up to `limit` stored password hashes, to learn which hashing parameters most accounts have.
pub async fn sample_password_hashes(
    conn: &mut AnyConnection,
    limit: i64,
) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query("SELECT password_hash FROM users WHERE password_hash <> '' LIMIT ?")
        .bind(limit)
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|row| row.try_get("password_hash").map_err(StoreError::from))
        .collect()
}

pub async fn user_by_id(conn: &mut AnyConnection, id: Uuid) -> Result<Option<User>, StoreError> {
    fetch_one_user(conn, "id = ?", id.to_string()).await
}

/// Looks an account up by the lower-cased email ([`Email::lookup_key`]).
pub async fn user_by_email(
    conn: &mut AnyConnection,
    email_key: &str,
) -> Result<Option<User>, StoreError> {
    fetch_one_user(conn, "email_lower = ?", email_key.to_owned()).await
}

/// Looks an account up by the lower-cased username.
pub async fn user_by_username(
    conn: &mut AnyConnection,
    username_key: &str,
) -> Result<Option<User>, StoreError> {
    fetch_one_user(conn, "username_lower = ?", username_key.to_owned()).await
}

/// Reads an account and locks its row until the transaction ends, so that changes to one
/// account (and the outbox rows they write) are serialized.
pub async fn lock_user(
    conn: &mut AnyConnection,
    id: Uuid,
    dialect: crate::Dialect,
) -> Result<Option<User>, StoreError> {
    let condition = match dialect {
        crate::Dialect::MySql => "id = ? FOR UPDATE",
        // SQLite has one writer at a time; a write transaction is already exclusive.
        crate::Dialect::Sqlite => "id = ?",
    };
    fetch_one_user(conn, condition, id.to_string()).await
}

/// Deleted accounts whose grace period ended by `now`, oldest first, at most `limit`. Served
/// by the `(status, purge_after)` index: the cost follows the number of due accounts.
pub async fn due_for_purge(
    conn: &mut AnyConnection,
    now: Timestamp,
    limit: i64,
) -> Result<Vec<Uuid>, StoreError> {
    let rows = sqlx::query(
        "SELECT id FROM users WHERE status = 'deleted' AND purge_after <= ? ORDER BY purge_after LIMIT ?",
    )
    .bind(now.as_millis())
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            let id: String = row.try_get("id")?;
            Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))
        })
        .collect()
}

/// Every row that holds an account's personal data, by the statement that deletes it: its
/// second factors (authenticator, recovery codes, sign-in challenges, passkeys, WebAuthn
/// ceremonies), its linked provider identities and sign-in flows in progress, its email tokens,
/// and all its outbox rows — email intents, and events, which may hold its public profile (an
/// event not yet published is superseded by the `purged` event the caller records next). The
/// account's row goes last. (Provider sign-ins not yet exchanged name no account: they expire
/// within a minute.)
const ERASE: [&str; 10] = [
    "DELETE FROM mfa_totp WHERE user_id = ?",
    "DELETE FROM recovery_codes WHERE user_id = ?",
    "DELETE FROM mfa_challenges WHERE user_id = ?",
    "DELETE FROM passkeys WHERE user_id = ?",
    "DELETE FROM webauthn_ceremonies WHERE user_id = ?",
    "DELETE FROM identities WHERE user_id = ?",
    "DELETE FROM oauth_flows WHERE user_id = ?",
    "DELETE FROM email_tokens WHERE user_id = ?",
    "DELETE FROM outbox WHERE user_id = ?",
    "DELETE FROM users WHERE id = ?",
];

/// Erases an account's row and every row that holds its personal data ([`ERASE`]).
pub async fn erase_user(conn: &mut AnyConnection, id: Uuid) -> Result<(), StoreError> {
    let id = id.to_string();
    for sql in ERASE {
        sqlx::query(sql)
            .bind(id.clone())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// A condition true for rows whose `column` holds a character outside ASCII.
pub(crate) fn non_ascii(column: &str, dialect: crate::Dialect) -> String {
    match dialect {
        crate::Dialect::MySql => format!("LENGTH({column}) <> CHAR_LENGTH({column})"),
        crate::Dialect::Sqlite => format!("length(CAST({column} AS BLOB)) <> length({column})"),
    }
}

/// Recomputes the lookup keys of addresses outside ASCII with the current rule (NFC, then
/// lower-case) where a release that did not normalize stored another; returns how many
/// changed. ASCII addresses, nearly all of them, are not read. An account whose new key is
/// taken by another (the same address registered twice, once composed and once decomposed)
/// keeps its key and is logged: which of the two its owner meant is for an operator to say.
pub async fn normalize_email_keys(
    conn: &mut AnyConnection,
    dialect: crate::Dialect,
) -> Result<u64, StoreError> {
    let sql = format!(
        "SELECT id, email, email_lower FROM users WHERE {}",
        non_ascii("email", dialect)
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(&mut *conn)
        .await?;
    let mut changed = 0;
    for row in &rows {
        let id: String = row.try_get("id")?;
        let email: String = row.try_get("email")?;
        let stored: String = row.try_get("email_lower")?;
        let key = Email::lookup_key_of(&email);
        if key == stored {
            continue;
        }
        let updated = sqlx::query("UPDATE users SET email_lower = ? WHERE id = ?")
            .bind(key)
            .bind(id.clone())
            .execute(&mut *conn)
            .await;
        match updated.map_err(StoreError::from) {
            Ok(_) => changed += 1,
            Err(StoreError::Conflict(_)) => {
                tracing::warn!(user_id = %id, "two accounts have one address once normalized; this one keeps its old lookup key");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(changed)
}
