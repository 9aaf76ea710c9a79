//! Sign-in with an outside provider (GitHub, an OpenID Connect issuer): the provider identities
//! linked to accounts, the browser flows between the redirect to the provider and its callback,
//! and the single-use codes the callback hands the web app. A flow's `state` and a login code
//! are stored as their SHA-256 only.
//!
//! What makes an identity belong to one account, and a flow or a code count once, is a
//! conditional write, not a read before a write: of two concurrent uses, exactly one changes
//! the row.

use dt_users_domain::Timestamp;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use crate::StoreError;

// `subject` is a binary string in MySQL, which sqlx's `Any` driver reads as bytes; cast, it is
// read as text on both dialects (SQLite's CHAR is its TEXT).
const IDENTITY_COLUMNS: &str = "id, user_id, provider, CAST(subject AS CHAR) AS subject, email, \
     created_at, last_used_at";

const FLOW_COLUMNS: &str = "binding_hash, provider, user_id, session_id, redirect_uri, \
     pkce_verifier, nonce, created_at, expires_at";

const CODE_COLUMNS: &str = "provider, CAST(subject AS CHAR) AS subject, email, email_verified, \
     login, name, avatar_url, created_at, expires_at";

/// An identity at a provider, linked to an account, as stored.
#[derive(Debug, Clone)]
pub struct IdentityRecord {
    pub id: Uuid,
    pub user_id: Uuid,
    /// The provider's name in the service's configuration (`github`, or an OIDC provider's).
    pub provider: String,
    /// The provider's stable id of the user, compared byte for byte.
    pub subject: String,
    /// The address the provider gave at the last sign-in, verified or not.
    pub email: Option<String>,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
}

/// A browser flow in progress, between the redirect to the provider and its callback.
#[derive(Debug, Clone)]
pub struct OAuthFlow {
    /// The SHA-256 (hex) of the `state` sent to the provider.
    pub state_hash: String,
    /// The SHA-256 (hex) of the cookie that binds the flow to the browser that started it.
    pub binding_hash: String,
    pub provider: String,
    /// The account an identity is being linked to; `None` for a sign-in.
    pub user_id: Option<Uuid>,
    /// The session that started a link; `None` for a sign-in.
    pub session_id: Option<Uuid>,
    /// The callback address sent to the provider, which the code exchange must repeat.
    pub redirect_uri: String,
    /// The PKCE code verifier of the flow.
    pub pkce_verifier: String,
    /// The OpenID Connect nonce the ID token must carry; `None` for a plain OAuth provider.
    pub nonce: Option<String>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// A login code: what the provider vouched for at the callback, kept until the web app
/// exchanges the code, once.
#[derive(Debug, Clone)]
pub struct LoginCode {
    /// The SHA-256 (hex) of the code.
    pub code_hash: String,
    pub provider: String,
    /// The provider's stable id of the user.
    pub subject: String,
    pub email: Option<String>,
    /// The provider vouches that `email` belongs to the user.
    pub email_verified: bool,
    /// The user's login at the provider, a suggestion for a username.
    pub login: Option<String>,
    pub name: Option<String>,
    pub avatar_url: Option<String>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// Links an identity to an account; false, and nothing written, when this provider's subject
/// is linked already, to any account. The insert reads the current rows (not a transaction's
/// snapshot), and the unique index refuses a concurrent duplicate that got past it too.
pub async fn insert_identity(
    conn: &mut AnyConnection,
    record: &IdentityRecord,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO identities (id, user_id, provider, subject, email, created_at, \
         last_used_at) \
         SELECT ?, ?, ?, ?, ?, ?, ? FROM (SELECT 1 AS one) AS fresh \
         WHERE NOT EXISTS (SELECT 1 FROM identities WHERE provider = ? AND subject = ?)",
    )
    .bind(record.id.to_string())
    .bind(record.user_id.to_string())
    .bind(record.provider.clone())
    .bind(record.subject.clone())
    .bind(record.email.clone())
    .bind(record.created_at.as_millis())
    .bind(record.last_used_at.map(Timestamp::as_millis))
    .bind(record.provider.clone())
    .bind(record.subject.clone())
    .execute(conn)
    .await;
    match done {
        Ok(done) => Ok(done.rows_affected() == 1),
        // The id is fresh, so the one unique key a new row can break is the subject's.
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The identity `subject` of `provider`, whoever's it is.
pub async fn identity_by_subject(
    conn: &mut AnyConnection,
    provider: &str,
    subject: &str,
) -> Result<Option<IdentityRecord>, StoreError> {
    let sql =
        format!("SELECT {IDENTITY_COLUMNS} FROM identities WHERE provider = ? AND subject = ?");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(provider.to_owned())
        .bind(subject.to_owned())
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(identity_from_row).transpose()
}

/// The account's identities, oldest first.
pub async fn identities_of(
    conn: &mut AnyConnection,
    user_id: Uuid,
) -> Result<Vec<IdentityRecord>, StoreError> {
    let sql = format!(
        "SELECT {IDENTITY_COLUMNS} FROM identities WHERE user_id = ? ORDER BY created_at, id"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(user_id.to_string())
        .fetch_all(conn)
        .await?;
    rows.iter().map(identity_from_row).collect()
}

/// How many identities the account has linked.
pub async fn identity_count(conn: &mut AnyConnection, user_id: Uuid) -> Result<u64, StoreError> {
    let row = sqlx::query("SELECT COUNT(*) AS identities FROM identities WHERE user_id = ?")
        .bind(user_id.to_string())
        .fetch_one(conn)
        .await?;
    let identities: i64 = row.try_get("identities")?;
    u64::try_from(identities)
        .map_err(|e| StoreError::Corrupt(format!("identities {identities}: {e}")))
}

/// Unlinks one of the account's identities; false when it has none with this id (another
/// account's identity is left alone).
pub async fn delete_identity(
    conn: &mut AnyConnection,
    user_id: Uuid,
    id: Uuid,
) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM identities WHERE id = ? AND user_id = ?")
        .bind(id.to_string())
        .bind(user_id.to_string())
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Records a sign-in with the identity: the address the provider gave this time, and when.
pub async fn record_identity_use(
    conn: &mut AnyConnection,
    id: Uuid,
    email: Option<&str>,
    now: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE identities SET email = ?, last_used_at = ? WHERE id = ?")
        .bind(email.map(str::to_owned))
        .bind(now.as_millis())
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// Stores a flow that is starting.
pub async fn insert_oauth_flow(
    conn: &mut AnyConnection,
    flow: &OAuthFlow,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO oauth_flows (state_hash, binding_hash, provider, user_id, session_id, \
         redirect_uri, pkce_verifier, nonce, created_at, expires_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(flow.state_hash.clone())
    .bind(flow.binding_hash.clone())
    .bind(flow.provider.clone())
    .bind(flow.user_id.map(|id| id.to_string()))
    .bind(flow.session_id.map(|id| id.to_string()))
    .bind(flow.redirect_uri.clone())
    .bind(flow.pkce_verifier.clone())
    .bind(flow.nonce.clone())
    .bind(flow.created_at.as_millis())
    .bind(flow.expires_at.as_millis())
    .execute(conn)
    .await?;
    Ok(())
}

/// Takes a flow for its one use: reads it and deletes it, and returns it only if this call
/// deleted it (of two concurrent takes, one does) and it has not expired at `now`. An expired
/// flow is deleted too, but not returned.
pub async fn take_oauth_flow(
    conn: &mut AnyConnection,
    state_hash: &str,
    now: Timestamp,
) -> Result<Option<OAuthFlow>, StoreError> {
    let sql = format!("SELECT {FLOW_COLUMNS} FROM oauth_flows WHERE state_hash = ?");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(state_hash.to_owned())
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let taken = sqlx::query("DELETE FROM oauth_flows WHERE state_hash = ?")
        .bind(state_hash.to_owned())
        .execute(conn)
        .await?;
    let expires_at = Timestamp::from_millis(row.try_get("expires_at")?);
    if taken.rows_affected() != 1 || expires_at <= now {
        return Ok(None);
    }
    Ok(Some(OAuthFlow {
        state_hash: state_hash.to_owned(),
        binding_hash: row.try_get("binding_hash")?,
        provider: row.try_get("provider")?,
        user_id: optional_uuid(&row, "user_id", "flow user id")?,
        session_id: optional_uuid(&row, "session_id", "flow session id")?,
        redirect_uri: row.try_get("redirect_uri")?,
        pkce_verifier: row.try_get("pkce_verifier")?,
        nonce: row.try_get("nonce")?,
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
        expires_at,
    }))
}

/// Stores a login code the callback is about to hand the web app.
pub async fn insert_login_code(
    conn: &mut AnyConnection,
    code: &LoginCode,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO oauth_login_codes (code_hash, provider, subject, email, email_verified, \
         login, name, avatar_url, created_at, expires_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(code.code_hash.clone())
    .bind(code.provider.clone())
    .bind(code.subject.clone())
    .bind(code.email.clone())
    .bind(i16::from(code.email_verified))
    .bind(code.login.clone())
    .bind(code.name.clone())
    .bind(code.avatar_url.clone())
    .bind(code.created_at.as_millis())
    .bind(code.expires_at.as_millis())
    .execute(conn)
    .await?;
    Ok(())
}

/// Takes a login code for its one use: reads it and deletes it, and returns it only if this
/// call deleted it (of two concurrent takes, one does) and it has not expired at `now`. An
/// expired code is deleted too, but not returned.
pub async fn take_login_code(
    conn: &mut AnyConnection,
    code_hash: &str,
    now: Timestamp,
) -> Result<Option<LoginCode>, StoreError> {
    let sql = format!("SELECT {CODE_COLUMNS} FROM oauth_login_codes WHERE code_hash = ?");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(code_hash.to_owned())
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let taken = sqlx::query("DELETE FROM oauth_login_codes WHERE code_hash = ?")
        .bind(code_hash.to_owned())
        .execute(conn)
        .await?;
    let expires_at = Timestamp::from_millis(row.try_get("expires_at")?);
    if taken.rows_affected() != 1 || expires_at <= now {
        return Ok(None);
    }
    let email_verified: i64 = row.try_get("email_verified")?;
    Ok(Some(LoginCode {
        code_hash: code_hash.to_owned(),
        provider: row.try_get("provider")?,
        subject: row.try_get("subject")?,
        email: row.try_get("email")?,
        email_verified: email_verified != 0,
        login: row.try_get("login")?,
        name: row.try_get("name")?,
        avatar_url: row.try_get("avatar_url")?,
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
        expires_at,
    }))
}

/// Removes flows and login codes that expired before `before` (abandoned ones; a finished one
/// is gone); returns how many rows went.
pub async fn delete_stale_oauth(
    conn: &mut AnyConnection,
    before: Timestamp,
) -> Result<u64, StoreError> {
    let mut removed = 0;
    for sql in [
        "DELETE FROM oauth_flows WHERE expires_at < ?",
        "DELETE FROM oauth_login_codes WHERE expires_at < ?",
    ] {
        let done = sqlx::query(sql)
            .bind(before.as_millis())
            .execute(&mut *conn)
            .await?;
        removed += done.rows_affected();
    }
    Ok(removed)
}

fn identity_from_row(row: &AnyRow) -> Result<IdentityRecord, StoreError> {
    let id: String = row.try_get("id")?;
    let user_id: String = row.try_get("user_id")?;
    Ok(IdentityRecord {
        id: Uuid::parse_str(&id)
            .map_err(|e| StoreError::Corrupt(format!("identity id {id}: {e}")))?,
        user_id: Uuid::parse_str(&user_id)
            .map_err(|e| StoreError::Corrupt(format!("identity {id}: user id {user_id}: {e}")))?,
        provider: row.try_get("provider")?,
        subject: row.try_get("subject")?,
        email: row.try_get("email")?,
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
        last_used_at: row
            .try_get::<Option<i64>, _>("last_used_at")?
            .map(Timestamp::from_millis),
    })
}

fn optional_uuid(row: &AnyRow, column: &str, what: &str) -> Result<Option<Uuid>, StoreError> {
    row.try_get::<Option<String>, _>(column)?
        .map(|id| {
            Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(format!("{what} {id}: {e}")))
        })
        .transpose()
}
