//! The periodic sweep: records past their use, events deferred while the database was down,
//! and accounts whose grace period is over.

use dt_users_domain::Timestamp;
use dt_users_store as store;

use super::{App, ServiceError};

/// How long finished records are kept before the sweep removes them.
const RETENTION_SECS: u64 = 7 * 86_400;

/// What one sweep removed or moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub email_tokens: u64,
    pub mfa_challenges: u64,
    pub webauthn_ceremonies: u64,
    /// Provider sign-in flows and login codes, unfinished.
    pub oauth_flows: u64,
    pub outbox_rows: u64,
    pub deliveries: u64,
    pub commands: u64,
    pub deferred_events: u64,
    pub purged_accounts: u64,
}

impl SweepReport {
    /// Each count by name, for logs.
    pub fn counts(&self) -> [(&'static str, u64); 9] {
        [
            ("email_tokens", self.email_tokens),
            ("mfa_challenges", self.mfa_challenges),
            ("webauthn_ceremonies", self.webauthn_ceremonies),
            ("oauth_flows", self.oauth_flows),
            ("outbox_rows", self.outbox_rows),
            ("deliveries", self.deliveries),
            ("commands", self.commands),
            ("deferred_events", self.deferred_events),
            ("purged_accounts", self.purged_accounts),
        ]
    }
}

impl App {
    /// One sweep as of `now`. Each step is bounded (the purge by its batch), so one sweep's
    /// work stays bounded too; what is left waits for the next.
    pub async fn sweep(&self, now: Timestamp) -> Result<SweepReport, ServiceError> {
        let cutoff = now.minus_secs(RETENTION_SECS);
        let mut conn = self.db.pool().acquire().await?;
        let email_tokens = store::delete_stale_email_tokens(&mut conn, cutoff).await?;
        // A second step lives minutes; past its expiry it is of no use, not even to show.
        let mfa_challenges = store::delete_stale_mfa_challenges(&mut conn, now).await?;
        let webauthn_ceremonies = store::delete_stale_ceremonies(&mut conn, now).await?;
        let oauth_flows = store::delete_stale_oauth(&mut conn, now).await?;
        let outbox_rows = store::delete_dispatched(&mut conn, cutoff).await?;
        let deliveries = store::delete_old_deliveries(&mut conn, cutoff).await?;
        let commands = store::delete_old_commands(
            &mut conn,
            now.minus_secs(self.policy.command_retention.as_secs()),
        )
        .await?;
        drop(conn);
        let deferred_events = self.move_deferred_events().await?;
        let purged_accounts = self
            .purge_due_accounts(now, i64::from(self.policy.purge_batch.get()))
            .await?;
        Ok(SweepReport {
            email_tokens: count(email_tokens),
            mfa_challenges: count(mfa_challenges),
            webauthn_ceremonies: count(webauthn_ceremonies),
            oauth_flows: count(oauth_flows),
            outbox_rows: count(outbox_rows),
            deliveries: count(deliveries),
            commands: count(commands),
            deferred_events: count(deferred_events),
            purged_accounts: count(purged_accounts),
        })
    }
}

fn count<N: TryInto<u64>>(n: N) -> u64 {
    n.try_into().unwrap_or(u64::MAX)
}
