//! The domain events use-cases record in the outbox, in their own transaction.

use dt_users_domain::User;
use dt_users_store::{self as store, AnyConnection, NewOutboxRow, OutboxKind};
use serde_json::json;
use uuid::Uuid;

use super::{App, ServiceError};
use crate::events::types;

/// The public view of a user (`PublicUser`), as events carry it: never an email address.
pub(super) fn public_user_json(user: &User) -> serde_json::Value {
    json!({
        "id": user.id,
        "username": user.username.as_str(),
        "display_name": user.display_name,
        "bio": user.bio,
        "avatar_url": user.avatar_url,
        "created_at": user.created_at.to_rfc3339(),
    })
}

impl App {
    /// Records a domain event in the outbox, in the caller's transaction: it is published if
    /// and only if that transaction commits.
    pub(super) async fn record_event(
        &self,
        conn: &mut AnyConnection,
        user_id: Uuid,
        event_type: &str,
        data: serde_json::Value,
    ) -> Result<(), ServiceError> {
        let row = NewOutboxRow {
            id: Uuid::now_v7(),
            kind: OutboxKind::Event,
            name: event_type.to_owned(),
            user_id,
            payload: data.to_string(),
        };
        store::insert_outbox(conn, &row, self.now()).await?;
        if self.settings.kafka_bootstrap_servers().is_none() {
            tracing::info!(event = event_type, %user_id, event_id = %row.id, "event recorded; no Kafka configured, it stays in the outbox");
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
        if ended.is_empty() {
            return Ok(());
        }
        self.record_event(
            conn,
            user_id,
            types::SESSIONS_REVOKED,
            json!({"user_id": user_id, "session_ids": ended}),
        )
        .await
    }
}
