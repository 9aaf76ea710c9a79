//! Integration tests: the running service over HTTP, against real MariaDB and Redis, and (the
//! suites of the contract) against the embedded backend too (see `backends.rs`).

// Test code: a failed step should fail the test loudly.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod backends;
mod helpers;
mod kafka;
mod log_secrets;
mod mail;
mod oauth_standins;
mod oidc_provider;
mod process;

mod auth_tokens;
mod beat;
mod client_ip;
mod command_records;
mod commands;
mod database_busy;
mod deletion;
mod email_change;
mod email_faults;
mod email_flows;
mod email_normalization;
mod embedded;
mod event_contract;
mod events;
mod faults;
mod in_flight;
mod kafka_security;
mod logout_sessions;
mod meta;
mod passkeys;
mod profile;
mod rate_limits;
mod redis_cluster;
mod refresh;
mod register_login;
mod relay_lease;
mod schemathesis;
mod shutdown;
mod social_sign_in;
mod topology;
mod two_factor;
mod ugly_input;

// Rotation of emailed-token secrets, sign-outs without the database, personal data.
mod email_token_rotation;
mod image;
mod privacy;
mod sign_out_offline;
