use uuid::Uuid;

use crate::{Email, Timestamp, Username};

/// Where an account stands. Only `Active` accounts may sign in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountStatus {
    Active,
}

impl AccountStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
        }
    }

    pub fn parse(stored: &str) -> Option<Self> {
        match stored {
            "active" => Some(Self::Active),
            _ => None,
        }
    }
}

/// An account as stored.
#[derive(Debug, Clone)]
pub struct User {
    pub id: Uuid,
    pub email: Email,
    pub email_verified: bool,
    pub username: Username,
    pub display_name: Option<String>,
    pub bio: Option<String>,
    pub avatar_url: Option<String>,
    pub password_hash: String,
    pub status: AccountStatus,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}
