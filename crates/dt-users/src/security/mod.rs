//! Credentials: signing keys, access tokens, refresh secrets, password hashing, and the
//! second factors (TOTP secrets sealed at rest, recovery codes).

pub mod access_token;
pub mod client_ip;
pub mod email_token;
pub mod keys;
pub mod password_hasher;
pub mod rate_limit;
pub mod recovery_codes;
pub mod refresh_token;
pub mod sealing;
pub mod secret_token;
pub mod totp;
