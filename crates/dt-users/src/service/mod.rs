//! Use-cases. Each owns its transaction and its session-store steps; handlers only call them.

mod accounts;
mod auth;
mod error;
mod profile;

use std::sync::Arc;

use dt_users_domain::{Clock, Timestamp};
use dt_users_store::Db;

use crate::config::Settings;
use crate::security::access_token::AccessTokens;
use crate::security::password_hasher::PasswordHasherPool;
use crate::sessions::SessionStore;

pub use accounts::RegisterInput;
pub use auth::{ClientInfo, LogoutScope, TokenPair};
pub use error::ServiceError;
pub use profile::ProfilePatch;

/// Everything the use-cases need, built once per process.
#[derive(Debug)]
pub struct App {
    pub settings: Settings,
    pub db: Db,
    pub sessions: SessionStore,
    pub tokens: AccessTokens,
    pub hasher: PasswordHasherPool,
    pub clock: Arc<dyn Clock>,
}

impl App {
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }
}
