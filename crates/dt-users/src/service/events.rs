//! The domain events use-cases record in the outbox, in their own transaction — and the
//! announcements of ended sessions, which must not wait for the database.

use dt_users_domain::{Event, Timestamp};
use dt_users_store::{self as store, AnyConnection, NewOutboxRow, OutboxKind};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::transaction::transact;
use super::{App, ServiceError};

fn event_row(event: &Event) -> Result<NewOutboxRow, ServiceError> {
    Ok(NewOutboxRow {
        id: Uuid::now_v7(),
        kind: OutboxKind::Event,
        name: event.type_name().to_owned(),
        user_id: event.user_id(),
        payload: event.payload().map_err(ServiceError::internal)?,
    })
}

/// An event the database could not take, kept in the session store until it can.
#[derive(Debug, Serialize, Deserialize)]
struct DeferredEvent {
    id: Uuid,
    name: String,
    user_id: Uuid,
    payload: String,
    recorded_at: i64,
}

impl DeferredEvent {
    fn row(&self) -> NewOutboxRow {
        NewOutboxRow {
            id: self.id,
            kind: OutboxKind::Event,
            name: self.name.clone(),
            user_id: self.user_id,
            payload: self.payload.clone(),
        }
    }
}

/// How long an announcement waits for the database before it is deferred.
const ANNOUNCE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Deferred records moved into the outbox per call.
const DEFERRED_BATCH: usize = 500;

impl App {
    /// Records a domain event in the outbox, in the caller's transaction: it is published if
    /// and only if that transaction commits.
    pub(super) async fn record(
        &self,
        conn: &mut AnyConnection,
        event: &Event,
    ) -> Result<(), ServiceError> {
        let row = event_row(event)?;
        store::insert_outbox(conn, &row, self.now()).await?;
        if !self.policy.events_published {
            tracing::info!(event = event.type_name(), user_id = %row.user_id, event_id = %row.id, "event recorded; no Kafka configured, it stays in the outbox");
        }
        Ok(())
    }

    /// Announces ended sessions, so services that cache token checks can drop them.
    pub(super) async fn record_sessions_revoked(
        &self,
        conn: &mut AnyConnection,
        user_id: Uuid,
        ended: &[Uuid],
    ) -> Result<(), ServiceError> {
        match Event::sessions_revoked(user_id, ended) {
            Some(event) => self.record(conn, &event).await,
            None => Ok(()),
        }
    }

    /// Announces sessions ended outside a transaction of their cause (a sign-out, a session
    /// ended from the list, a reused refresh token, the second revocation after a commit).
    /// They are dead in the session store already, so the database being down must not fail
    /// the request: the event then waits in the session store, and beat moves it into the
    /// outbox once the database is back ([`App::move_deferred_events`]).
    pub(super) async fn announce_sessions_revoked(&self, user_id: Uuid, ended: &[Uuid]) {
        let Some(event) = Event::sessions_revoked(user_id, ended) else {
            return;
        };
        let row = match event_row(&event) {
            Ok(row) => row,
            Err(e) => {
                tracing::error!(%user_id, error = %e, "a sessions_revoked event is lost: it could not be written");
                return;
            }
        };
        let now = self.now();
        // A database that does not answer must not hold the answer to a sign-out for long.
        // Should the row commit after all, the deferred copy has its id and is not added twice.
        let recorded = tokio::time::timeout(ANNOUNCE_TIMEOUT, async {
            transact!(self, |tx| {
                store::insert_outbox(tx, &row, now).await?;
            })
        })
        .await
        .unwrap_or_else(|_| {
            Err(ServiceError::Unavailable(
                "database: no answer in time".into(),
            ))
        });
        let Err(error) = recorded else {
            return;
        };
        tracing::warn!(%user_id, error = %error, "the database did not take a sessions_revoked event; it waits in the session store");
        let deferred = DeferredEvent {
            id: row.id,
            name: row.name,
            user_id,
            payload: row.payload,
            recorded_at: now.as_millis(),
        };
        let stored = match serde_json::to_string(&deferred) {
            Ok(record) => self.sessions.defer_event(&record).await.map_err(Into::into),
            Err(e) => Err(ServiceError::internal(e)),
        };
        match stored {
            Ok(()) => metrics::counter!("events_deferred_total").increment(1),
            Err(e) => {
                tracing::error!(%user_id, error = %e, "a sessions_revoked event is lost: neither the database nor the session store took it");
            }
        }
    }

    /// Moves the events deferred while the database was down into the outbox, oldest first;
    /// returns how many records were handled. Each goes in at most once (by its id), and an
    /// account erased meanwhile gets none: its `purged` event said all there is to say.
    pub async fn move_deferred_events(&self) -> Result<usize, ServiceError> {
        let records = self.sessions.deferred_events(DEFERRED_BATCH).await?;
        for record in &records {
            match serde_json::from_str::<DeferredEvent>(record) {
                Ok(event) => {
                    let recorded_at = Timestamp::from_millis(event.recorded_at);
                    transact!(self, |tx| {
                        if store::user_by_id(tx, event.user_id).await?.is_some() {
                            store::insert_outbox_once(tx, &event.row(), recorded_at).await?;
                        }
                    })?;
                }
                Err(e) => {
                    tracing::error!(error = %e, "an unreadable deferred event record is dropped");
                }
            }
            self.sessions.forget_deferred_event(record).await?;
        }
        Ok(records.len())
    }
}
