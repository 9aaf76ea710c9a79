//! SQL storage of dt-users. One code path over sqlx's `Any` driver serves MySQL/MariaDB in
//! production and SQLite as the embedded default; only the migrations differ per dialect.
//!
//! Store functions take a connection (or a transaction, which derefs to one) and hold SQL
//! and nothing else; the use-cases decide what runs in one transaction.

mod coordination;
mod db;
mod email_tokens;
mod error;
mod identities;
mod mfa;
mod migrations;
mod outbox;
mod passkeys;
mod users;

pub use coordination::{
    DeliveryClaim, acquire_lease, claim_delivery, command_recorded, delete_old_commands,
    delete_old_deliveries, mark_sent, record_command, release_delivery, release_lease,
};
pub use db::{Db, Dialect};
pub use email_tokens::{
    LiveToken, TokenPurpose, TokenRecord, address_reserved, delete_stale_email_tokens,
    email_tokens_of, insert_email_token, peek_email_token, revoke_email_tokens,
    revoke_email_tokens_except, revoke_email_tokens_sent_to, use_email_token,
};
pub use error::{Conflict, StoreError};
pub use identities::{
    IdentityRecord, LoginCode, OAuthFlow, delete_identity, delete_stale_oauth, identities_of,
    identity_by_subject, identity_count, insert_identity, insert_login_code, insert_oauth_flow,
    record_identity_use, take_login_code, take_oauth_flow,
};
pub use mfa::{
    MfaChallenge, TotpRecord, accept_totp_step, confirm_totp, delete_recovery_codes,
    delete_stale_mfa_challenges, delete_totp, insert_mfa_challenge, live_mfa_challenge,
    put_pending_totp, recovery_codes_left, replace_recovery_codes, totp_of, use_mfa_challenge,
    use_recovery_code,
};
pub use migrations::MigrationState;
pub use outbox::{
    EmailRecord, NewOutboxRow, OutboxKind, OutboxRow, backlog, delete_dispatched, emails_of,
    insert_outbox, insert_outbox_once, mark_dispatched, mark_dispatched_many, outbox_payload,
    pending_outbox, postpone,
};
pub use passkeys::{
    Ceremony, PasskeyRecord, delete_passkey, delete_stale_ceremonies, insert_passkey,
    passkey_by_credential, passkey_count, passkeys_of, put_ceremony, record_passkey_use,
    take_ceremony,
};
pub use sqlx::AnyConnection;
pub use users::{
    due_for_purge, erase_user, insert_user, lock_user, replace_password_hash,
    sample_password_hashes, update_user, user_by_email, user_by_id, user_by_username,
};
