//! WebAuthn passkeys, and the state of WebAuthn ceremonies between their two requests. A
//! passkey holds a public key only; a credential is found by the SHA-256 of its id, which may
//! be too long to index.
//!
//! What refuses a cloned credential, and what makes a ceremony count once, is a conditional
//! write, not a read before a write: of two concurrent uses, exactly one changes the row.

use dt_users_domain::Timestamp;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use crate::StoreError;

const COLUMNS: &str = "id, user_id, name, credential, sign_count, backup_eligible, created_at, \
     last_used_at";

/// A passkey as stored.
#[derive(Debug, Clone)]
pub struct PasskeyRecord {
    pub id: Uuid,
    pub user_id: Uuid,
    /// What the owner calls it, to tell their passkeys apart.
    pub name: String,
    /// The webauthn-rs `Passkey` as JSON: the public key and the counter, nothing secret.
    pub credential: String,
    /// The authenticator's counter as last seen; a use must move it forward.
    pub sign_count: u32,
    /// The credential may be synced to other devices (a backup of it may exist).
    pub backup_eligible: bool,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
}

/// A ceremony's state as taken for its one use.
#[derive(Debug, Clone)]
pub struct Ceremony {
    /// Whose ceremony it is; `None` for a sign-in that does not know the account yet.
    pub user_id: Option<Uuid>,
    /// The webauthn-rs ceremony state as JSON.
    pub state: String,
}

/// Stores a new passkey; false, and nothing written, when a passkey with this credential hash
/// exists already, of any account. The insert reads the current rows (not a transaction's
/// snapshot), and the unique index refuses a concurrent duplicate that got past it too.
pub async fn insert_passkey(
    conn: &mut AnyConnection,
    record: &PasskeyRecord,
    credential_hash: &str,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO passkeys (id, user_id, credential_hash, name, credential, sign_count, \
         backup_eligible, created_at, last_used_at) \
         SELECT ?, ?, ?, ?, ?, ?, ?, ?, ? FROM (SELECT 1 AS one) AS fresh \
         WHERE NOT EXISTS (SELECT 1 FROM passkeys WHERE credential_hash = ?)",
    )
    .bind(record.id.to_string())
    .bind(record.user_id.to_string())
    .bind(credential_hash.to_owned())
    .bind(record.name.clone())
    .bind(record.credential.clone())
    .bind(i64::from(record.sign_count))
    .bind(i16::from(record.backup_eligible))
    .bind(record.created_at.as_millis())
    .bind(record.last_used_at.map(Timestamp::as_millis))
    .bind(credential_hash.to_owned())
    .execute(conn)
    .await;
    match done {
        Ok(done) => Ok(done.rows_affected() == 1),
        // The id is fresh, so the one unique key a new row can break is the credential's.
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The account's passkeys, oldest first.
pub async fn passkeys_of(
    conn: &mut AnyConnection,
    user_id: Uuid,
) -> Result<Vec<PasskeyRecord>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM passkeys WHERE user_id = ? ORDER BY created_at, id");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(user_id.to_string())
        .fetch_all(conn)
        .await?;
    rows.iter().map(passkey_from_row).collect()
}

/// The passkey whose credential id has the SHA-256 `credential_hash`, whoever's it is.
pub async fn passkey_by_credential(
    conn: &mut AnyConnection,
    credential_hash: &str,
) -> Result<Option<PasskeyRecord>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM passkeys WHERE credential_hash = ?");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(credential_hash.to_owned())
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(passkey_from_row).transpose()
}

/// Records a use: the credential as webauthn-rs updated it, its new counter, and when. Only
/// if the counter moved forward, or stays at 0 (an authenticator without a counter): a
/// counter that did not move means a copy of the credential was used, and the condition in
/// the UPDATE refuses it even when two uses race. False when refused or the passkey is gone.
pub async fn record_passkey_use(
    conn: &mut AnyConnection,
    id: Uuid,
    credential: &str,
    new_count: u32,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE passkeys SET credential = ?, sign_count = ?, last_used_at = ? \
         WHERE id = ? AND (sign_count < ? OR (sign_count = 0 AND ? = 0))",
    )
    .bind(credential.to_owned())
    .bind(i64::from(new_count))
    .bind(now.as_millis())
    .bind(id.to_string())
    .bind(i64::from(new_count))
    .bind(i64::from(new_count))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Removes one of the account's passkeys; false when it has none with this id (another
/// account's passkey is left alone).
pub async fn delete_passkey(
    conn: &mut AnyConnection,
    user_id: Uuid,
    id: Uuid,
) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM passkeys WHERE id = ? AND user_id = ?")
        .bind(id.to_string())
        .bind(user_id.to_string())
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn passkey_count(conn: &mut AnyConnection, user_id: Uuid) -> Result<u64, StoreError> {
    let row = sqlx::query("SELECT COUNT(*) AS passkeys FROM passkeys WHERE user_id = ?")
        .bind(user_id.to_string())
        .fetch_one(conn)
        .await?;
    let passkeys: i64 = row.try_get("passkeys")?;
    u64::try_from(passkeys).map_err(|e| StoreError::Corrupt(format!("passkeys {passkeys}: {e}")))
}

/// Stores a ceremony's state under `id`, replacing one stored under the same id: a new
/// registration, or a new second step of a sign-in, supersedes the pending one.
pub async fn put_ceremony(
    conn: &mut AnyConnection,
    id: &str,
    kind: &str,
    user_id: Option<Uuid>,
    state: &str,
    now: Timestamp,
    expires_at: Timestamp,
) -> Result<(), StoreError> {
    // REPLACE means the same in MySQL and SQLite, and swaps the row in one statement.
    sqlx::query(
        "REPLACE INTO webauthn_ceremonies (id, kind, user_id, state, created_at, expires_at) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(id.to_owned())
    .bind(kind.to_owned())
    .bind(user_id.map(|id| id.to_string()))
    .bind(state.to_owned())
    .bind(now.as_millis())
    .bind(expires_at.as_millis())
    .execute(conn)
    .await?;
    Ok(())
}

/// Takes a ceremony of `kind` for its one use: reads it and deletes it, and returns it only if
/// this call deleted it (of two concurrent takes, one does) and it has not expired at `now`.
/// A ceremony of another kind is left alone, so an id sent to the wrong step cannot end it.
pub async fn take_ceremony(
    conn: &mut AnyConnection,
    id: &str,
    kind: &str,
    now: Timestamp,
) -> Result<Option<Ceremony>, StoreError> {
    let row = sqlx::query(
        "SELECT user_id, state, expires_at FROM webauthn_ceremonies WHERE id = ? AND kind = ?",
    )
    .bind(id.to_owned())
    .bind(kind.to_owned())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let state: String = row.try_get("state")?;
    // The state read is part of the condition: a ceremony that replaced this one meanwhile
    // is not taken in its place.
    let taken =
        sqlx::query("DELETE FROM webauthn_ceremonies WHERE id = ? AND kind = ? AND state = ?")
            .bind(id.to_owned())
            .bind(kind.to_owned())
            .bind(state.clone())
            .execute(conn)
            .await?;
    let expires_at = Timestamp::from_millis(row.try_get("expires_at")?);
    if taken.rows_affected() != 1 || expires_at <= now {
        return Ok(None);
    }
    let user_id = row
        .try_get::<Option<String>, _>("user_id")?
        .map(|id| {
            Uuid::parse_str(&id)
                .map_err(|e| StoreError::Corrupt(format!("ceremony user id {id}: {e}")))
        })
        .transpose()?;
    Ok(Some(Ceremony { user_id, state }))
}

/// Removes ceremonies that expired before `before` (abandoned ones; a finished one is gone).
pub async fn delete_stale_ceremonies(
    conn: &mut AnyConnection,
    before: Timestamp,
) -> Result<u64, StoreError> {
    let done = sqlx::query("DELETE FROM webauthn_ceremonies WHERE expires_at < ?")
        .bind(before.as_millis())
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

fn passkey_from_row(row: &AnyRow) -> Result<PasskeyRecord, StoreError> {
    let id: String = row.try_get("id")?;
    let user_id: String = row.try_get("user_id")?;
    let sign_count: i64 = row.try_get("sign_count")?;
    let backup_eligible: i64 = row.try_get("backup_eligible")?;
    Ok(PasskeyRecord {
        id: Uuid::parse_str(&id)
            .map_err(|e| StoreError::Corrupt(format!("passkey id {id}: {e}")))?,
        user_id: Uuid::parse_str(&user_id)
            .map_err(|e| StoreError::Corrupt(format!("passkey {id}: user id {user_id}: {e}")))?,
        name: row.try_get("name")?,
        credential: row.try_get("credential")?,
        sign_count: u32::try_from(sign_count).map_err(|e| {
            StoreError::Corrupt(format!("passkey {id}: sign count {sign_count}: {e}"))
        })?,
        backup_eligible: backup_eligible != 0,
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
        last_used_at: row
            .try_get::<Option<i64>, _>("last_used_at")?
            .map(Timestamp::from_millis),
    })
}
