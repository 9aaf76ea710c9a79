//! Credentials: signing keys, access tokens, refresh secrets and password hashing.

pub mod access_token;
pub mod client_ip;
pub mod email_token;
pub mod keys;
pub mod password_hasher;
pub mod rate_limit;
pub mod refresh_token;
pub mod secret_token;
