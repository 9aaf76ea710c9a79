//! The transactional outbox: side effects recorded with the change that causes them, and
//! handed on (to the job queue, to Kafka) by a relay, at least once, in `seq` order.

use dt_users_domain::Timestamp;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use crate::StoreError;

/// What an outbox row asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxKind {
    /// An email to send (through a job).
    Email,
    /// An event to publish.
    Event,
}

impl OutboxKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Event => "event",
        }
    }
}

/// A row to insert.
#[derive(Debug, Clone)]
pub struct NewOutboxRow {
    pub id: Uuid,
    pub kind: OutboxKind,
    /// The email template or the event type.
    pub name: String,
    pub user_id: Uuid,
    /// JSON.
    pub payload: String,
}

/// A row waiting to be dispatched.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub seq: i64,
    pub id: Uuid,
    pub name: String,
    pub user_id: Uuid,
    pub payload: String,
    pub attempts: i64,
    pub created_at: Timestamp,
}

const INSERT: &str = "INSERT INTO outbox (id, kind, name, user_id, payload, created_at, next_attempt_at) \
                      VALUES (?, ?, ?, ?, ?, ?, ?)";

const PENDING: &str = "SELECT seq, id, name, user_id, payload, attempts, created_at FROM outbox \
                       WHERE kind = ? AND dispatched_at IS NULL AND next_attempt_at <= ? \
                       ORDER BY seq LIMIT ?";

const MARK_DISPATCHED: &str =
    "UPDATE outbox SET dispatched_at = ? WHERE seq = ? AND dispatched_at IS NULL";

const POSTPONE: &str = "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? \
                        WHERE seq = ? AND dispatched_at IS NULL";

const BACKLOG: &str =
    "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE kind = ? AND dispatched_at IS NULL";

const DELETE_DISPATCHED: &str =
    "DELETE FROM outbox WHERE dispatched_at IS NOT NULL AND dispatched_at < ?";

/// The insert of `row`, recorded (and due) at `at`.
fn insert(
    row: &NewOutboxRow,
    at: Timestamp,
) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(INSERT)
        .bind(row.id.to_string())
        .bind(row.kind.as_str())
        .bind(row.name.clone())
        .bind(row.user_id.to_string())
        .bind(row.payload.clone())
        .bind(at.as_millis())
        .bind(at.as_millis())
}

pub async fn insert_outbox(
    conn: &mut AnyConnection,
    row: &NewOutboxRow,
    now: Timestamp,
) -> Result<(), StoreError> {
    insert(row, now).execute(conn).await?;
    Ok(())
}

/// Inserts a row unless one with its id exists (a record handed over twice); false then.
pub async fn insert_outbox_once(
    conn: &mut AnyConnection,
    row: &NewOutboxRow,
    recorded_at: Timestamp,
) -> Result<bool, StoreError> {
    crate::coordination::inserted_once(insert(row, recorded_at).execute(conn).await)
}

fn row_of(row: &AnyRow) -> Result<OutboxRow, StoreError> {
    let id: String = row.try_get("id")?;
    let user_id: String = row.try_get("user_id")?;
    let parse = |s: &str| {
        Uuid::parse_str(s).map_err(|e| StoreError::Corrupt(format!("outbox id {s}: {e}")))
    };
    Ok(OutboxRow {
        seq: row.try_get("seq")?,
        id: parse(&id)?,
        name: row.try_get("name")?,
        user_id: parse(&user_id)?,
        payload: row.try_get("payload")?,
        attempts: row.try_get("attempts")?,
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
    })
}

/// The oldest rows of `kind` that are due, in `seq` order.
pub async fn pending_outbox(
    conn: &mut AnyConnection,
    kind: OutboxKind,
    now: Timestamp,
    limit: i64,
) -> Result<Vec<OutboxRow>, StoreError> {
    let rows = sqlx::query(PENDING)
        .bind(kind.as_str())
        .bind(now.as_millis())
        .bind(limit)
        .fetch_all(conn)
        .await?;
    rows.iter().map(row_of).collect()
}

pub async fn mark_dispatched(
    conn: &mut AnyConnection,
    seq: i64,
    now: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query(MARK_DISPATCHED)
        .bind(now.as_millis())
        .bind(seq)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records a failed hand-over; the row is retried at `retry_at`.
pub async fn postpone(
    conn: &mut AnyConnection,
    seq: i64,
    retry_at: Timestamp,
    error: &str,
) -> Result<(), StoreError> {
    let error: String = error.chars().take(500).collect();
    sqlx::query(POSTPONE)
        .bind(retry_at.as_millis())
        .bind(error)
        .bind(seq)
        .execute(conn)
        .await?;
    Ok(())
}

/// How many rows of `kind` wait, and since when the oldest.
pub async fn backlog(
    conn: &mut AnyConnection,
    kind: OutboxKind,
) -> Result<(i64, Option<Timestamp>), StoreError> {
    let row = sqlx::query(BACKLOG)
        .bind(kind.as_str())
        .fetch_one(conn)
        .await?;
    let count: i64 = row.try_get(0)?;
    let oldest: Option<i64> = row.try_get(1)?;
    Ok((count, oldest.map(Timestamp::from_millis)))
}

/// Removes rows dispatched before `before`; returns how many.
pub async fn delete_dispatched(
    conn: &mut AnyConnection,
    before: Timestamp,
) -> Result<u64, StoreError> {
    let done = sqlx::query(DELETE_DISPATCHED)
        .bind(before.as_millis())
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

/// The payload of the outbox row `id`, if it still exists (erasure removes a user's rows).
pub async fn outbox_payload(
    conn: &mut AnyConnection,
    id: Uuid,
) -> Result<Option<String>, StoreError> {
    let row = sqlx::query("SELECT payload FROM outbox WHERE id = ?")
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    Ok(row.map(|r| r.try_get("payload")).transpose()?)
}

/// An email intent as the owner's data export shows it.
#[derive(Debug, Clone)]
pub struct EmailRecord {
    pub kind: String,
    /// The intent as recorded (recipient, greeting, template values).
    pub payload: String,
    pub created_at: Timestamp,
    pub dispatched_at: Option<Timestamp>,
}

pub async fn emails_of(
    conn: &mut AnyConnection,
    user_id: Uuid,
) -> Result<Vec<EmailRecord>, StoreError> {
    let rows = sqlx::query(
        "SELECT name, payload, created_at, dispatched_at FROM outbox \
         WHERE user_id = ? AND kind = 'email' ORDER BY seq",
    )
    .bind(user_id.to_string())
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(EmailRecord {
                kind: row.try_get("name")?,
                payload: row.try_get("payload")?,
                created_at: Timestamp::from_millis(row.try_get("created_at")?),
                dispatched_at: row
                    .try_get::<Option<i64>, _>("dispatched_at")?
                    .map(Timestamp::from_millis),
            })
        })
        .collect()
}

/// Marks many rows dispatched in one statement.
pub async fn mark_dispatched_many(
    conn: &mut AnyConnection,
    seqs: &[i64],
    now: Timestamp,
) -> Result<(), StoreError> {
    for chunk in seqs.chunks(500) {
        let placeholders = vec!["?"; chunk.len()].join(", ");
        let sql = format!(
            "UPDATE outbox SET dispatched_at = ? WHERE dispatched_at IS NULL AND seq IN ({placeholders})"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now.as_millis());
        for seq in chunk {
            query = query.bind(*seq);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}
