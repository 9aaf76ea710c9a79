//! Rows that coordinate processes: email delivery claims (so a job delivered twice sends
//! once) and named leases (so one of several `beat` processes runs the sweeps).

use dt_users_domain::Timestamp;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use crate::StoreError;

/// The outcome of an insert guarded by a unique key: true when the row went in, false when
/// the key was taken (someone else got there first).
pub(crate) fn inserted_once(
    result: Result<sqlx::any::AnyQueryResult, sqlx::Error>,
) -> Result<bool, StoreError> {
    match result {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The answer to "may I send this email?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryClaim {
    /// Yes: send it, then [`mark_sent`].
    Claimed,
    /// It was sent already: do nothing.
    AlreadySent,
    /// Another worker is sending it now; ask again later.
    InProgress,
}

/// Claims the sending of one email intent for `worker`. A claim older than `lease_ms` whose
/// email was never marked sent belonged to a worker that died mid-send; it is taken over
/// (which is the one way an email can go out twice).
pub async fn claim_delivery(
    conn: &mut AnyConnection,
    intent_id: Uuid,
    worker: &str,
    now: Timestamp,
    lease_ms: i64,
) -> Result<DeliveryClaim, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO email_deliveries (intent_id, state, claimed_by, claimed_at) VALUES (?, 'sending', ?, ?)",
    )
    .bind(intent_id.to_string())
    .bind(worker.to_owned())
    .bind(now.as_millis())
    .execute(&mut *conn)
    .await;
    if inserted_once(inserted)? {
        return Ok(DeliveryClaim::Claimed);
    }
    let row = sqlx::query("SELECT state, claimed_at FROM email_deliveries WHERE intent_id = ?")
        .bind(intent_id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else {
        return Ok(DeliveryClaim::InProgress);
    };
    let state: String = row.try_get("state")?;
    let claimed_at: i64 = row.try_get("claimed_at")?;
    if state == "sent" {
        return Ok(DeliveryClaim::AlreadySent);
    }
    if claimed_at.saturating_add(lease_ms) > now.as_millis() {
        return Ok(DeliveryClaim::InProgress);
    }
    let taken = sqlx::query(
        "UPDATE email_deliveries SET claimed_by = ?, claimed_at = ? \
         WHERE intent_id = ? AND state = 'sending' AND claimed_at = ?",
    )
    .bind(worker.to_owned())
    .bind(now.as_millis())
    .bind(intent_id.to_string())
    .bind(claimed_at)
    .execute(conn)
    .await?;
    Ok(if taken.rows_affected() == 1 {
        DeliveryClaim::Claimed
    } else {
        DeliveryClaim::InProgress
    })
}

pub async fn mark_sent(
    conn: &mut AnyConnection,
    intent_id: Uuid,
    now: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE email_deliveries SET state = 'sent', sent_at = ? WHERE intent_id = ?")
        .bind(now.as_millis())
        .bind(intent_id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// Gives a claim back after a failed attempt, so the retry can claim it at once.
pub async fn release_delivery(
    conn: &mut AnyConnection,
    intent_id: Uuid,
    worker: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "DELETE FROM email_deliveries WHERE intent_id = ? AND state = 'sending' AND claimed_by = ?",
    )
    .bind(intent_id.to_string())
    .bind(worker.to_owned())
    .execute(conn)
    .await?;
    Ok(())
}

/// Removes delivery records older than `before`.
pub async fn delete_old_deliveries(
    conn: &mut AnyConnection,
    before: Timestamp,
) -> Result<u64, StoreError> {
    let done = sqlx::query("DELETE FROM email_deliveries WHERE claimed_at < ?")
        .bind(before.as_millis())
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

/// Takes or renews the lease `name` for `holder` until `now + ttl_ms`. True when `holder`
/// holds it afterwards.
pub async fn acquire_lease(
    conn: &mut AnyConnection,
    name: &str,
    holder: &str,
    now: Timestamp,
    ttl_ms: i64,
) -> Result<bool, StoreError> {
    let until = now.as_millis().saturating_add(ttl_ms);
    let renewed = sqlx::query(
        "UPDATE leases SET holder = ?, expires_at = ? WHERE name = ? AND (holder = ? OR expires_at < ?)",
    )
    .bind(holder.to_owned())
    .bind(until)
    .bind(name.to_owned())
    .bind(holder.to_owned())
    .bind(now.as_millis())
    .execute(&mut *conn)
    .await?;
    if renewed.rows_affected() == 1 {
        return Ok(true);
    }
    let inserted = sqlx::query("INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?)")
        .bind(name.to_owned())
        .bind(holder.to_owned())
        .bind(until)
        .execute(conn)
        .await;
    inserted_once(inserted)
}

/// Gives the lease `name` up if `holder` has it, so another process can take over at once.
pub async fn release_lease(
    conn: &mut AnyConnection,
    name: &str,
    holder: &str,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM leases WHERE name = ? AND holder = ?")
        .bind(name.to_owned())
        .bind(holder.to_owned())
        .execute(conn)
        .await?;
    Ok(())
}

/// Records that the command `id` was handled (`applied` or `rejected`), in the caller's
/// transaction. False when it was recorded before: the command must not take effect again.
pub async fn record_command(
    conn: &mut AnyConnection,
    id: &str,
    command_type: &str,
    outcome: &str,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO processed_commands (id, type, outcome, processed_at) VALUES (?, ?, ?, ?)",
    )
    .bind(id.to_owned())
    .bind(command_type.to_owned())
    .bind(outcome.to_owned())
    .bind(now.as_millis())
    .execute(conn)
    .await;
    inserted_once(inserted)
}

/// True when the command `id` was recorded as handled.
pub async fn command_recorded(conn: &mut AnyConnection, id: &str) -> Result<bool, StoreError> {
    let row = sqlx::query("SELECT 1 AS recorded FROM processed_commands WHERE id = ?")
        .bind(id.to_owned())
        .fetch_optional(conn)
        .await?;
    Ok(row.is_some())
}

/// Removes the records of commands handled before `before`; returns how many.
pub async fn delete_old_commands(
    conn: &mut AnyConnection,
    before: Timestamp,
) -> Result<u64, StoreError> {
    let done = sqlx::query("DELETE FROM processed_commands WHERE processed_at < ?")
        .bind(before.as_millis())
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}
