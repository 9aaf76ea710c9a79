use uuid::Uuid;

use crate::{Email, Timestamp, Username};

/// Where an account stands. Only `Active` accounts may sign in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountStatus {
    Active,
    /// Deleted by its owner: restorable until `purge_after`, then erased.
    Deleted,
    /// Banned by moderation (a `devtalk.user.ban` command) until unbanned.
    Banned,
}

impl AccountStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Deleted => "deleted",
            Self::Banned => "banned",
        }
    }

    pub fn parse(stored: &str) -> Option<Self> {
        match stored {
            "active" => Some(Self::Active),
            "deleted" => Some(Self::Deleted),
            "banned" => Some(Self::Banned),
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
    /// The address an email change waits to have confirmed from its mailbox.
    pub pending_email: Option<Email>,
    pub username: Username,
    pub display_name: Option<String>,
    pub bio: Option<String>,
    pub avatar_url: Option<String>,
    pub password_hash: String,
    pub status: AccountStatus,
    /// Banned by moderation. Kept through a deletion: a banned account that is deleted and
    /// restored is banned again (`status` is `Banned` exactly when banned and not deleted).
    pub banned: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// When the owner deleted the account (deleted accounts only).
    pub deleted_at: Option<Timestamp>,
    /// When a deleted account is erased; it can be restored until then.
    pub purge_after: Option<Timestamp>,
}

impl User {
    /// What the account becomes when it is no longer deleted (restored) or banned (unbanned).
    pub fn status_when_not_deleted(&self) -> AccountStatus {
        if self.banned {
            AccountStatus::Banned
        } else {
            AccountStatus::Active
        }
    }
}
