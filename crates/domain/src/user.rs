use uuid::Uuid;

use crate::events::{Moderation, UserDeleted};
use crate::{Email, Event, Timestamp, Username};

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
    /// `None`: the account was made by signing in with a provider and has no password until
    /// its owner sets one by a reset.
    pub password_hash: Option<String>,
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
    /// A second factor is confirmed: a correct password alone does not sign in. Derived from
    /// the second-factor tables, never written through `update_user`.
    pub mfa_enabled: bool,
}

/// Why an account refuses a change of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the account is not active")]
    NotActive,
    /// Not deleted, or past its grace period: there is nothing to restore.
    #[error("the account cannot be restored")]
    NotRestorable,
    /// Not deleted, or still within its grace period.
    #[error("the account is not due for erasure")]
    NotDue,
}

/// The changes of an account's state. Each changes the value and returns the event it
/// causes; storing both, in one transaction, is the caller's part.
impl User {
    /// What the account becomes when it is no longer deleted (restored) or banned (unbanned).
    pub fn status_when_not_deleted(&self) -> AccountStatus {
        if self.banned {
            AccountStatus::Banned
        } else {
            AccountStatus::Active
        }
    }

    /// Bans the account; nothing (and no event) if it is banned already. A deleted account
    /// stays deleted, and is banned again if it is restored.
    pub fn ban(&mut self, reason: Option<String>, now: Timestamp) -> Option<Event> {
        if self.banned {
            return None;
        }
        self.banned = true;
        if self.status == AccountStatus::Active {
            self.status = AccountStatus::Banned;
        }
        self.updated_at = now;
        Some(Event::Banned(Moderation {
            user_id: self.id,
            reason,
        }))
    }

    /// Lifts a ban; nothing (and no event) if the account is not banned. A deleted account
    /// stays deleted.
    pub fn unban(&mut self, now: Timestamp) -> Option<Event> {
        if !self.banned {
            return None;
        }
        self.banned = false;
        if self.status == AccountStatus::Banned {
            self.status = AccountStatus::Active;
        }
        self.updated_at = now;
        Some(Event::Unbanned(Moderation {
            user_id: self.id,
            reason: None,
        }))
    }

    /// Deletes an active account, restorable until `restore_until`.
    pub fn delete(&mut self, restore_until: Timestamp, now: Timestamp) -> Result<Event, Refusal> {
        if self.status != AccountStatus::Active {
            return Err(Refusal::NotActive);
        }
        self.status = AccountStatus::Deleted;
        self.deleted_at = Some(now);
        self.purge_after = Some(restore_until);
        self.updated_at = now;
        Ok(Event::Deleted(UserDeleted {
            user_id: self.id,
            restore_until,
        }))
    }

    /// Whether the account is deleted and its grace period still runs at `now`.
    pub fn is_restorable(&self, now: Timestamp) -> bool {
        self.status == AccountStatus::Deleted && self.purge_after.is_some_and(|p| p > now)
    }

    /// Undoes a deletion within its grace period; a banned account comes back banned.
    pub fn restore(&mut self, now: Timestamp) -> Result<Event, Refusal> {
        if !self.is_restorable(now) {
            return Err(Refusal::NotRestorable);
        }
        self.status = self.status_when_not_deleted();
        self.deleted_at = None;
        self.purge_after = None;
        self.updated_at = now;
        Ok(Event::restored(self))
    }

    /// The erasure of a deleted account whose grace period is over at `now`. The account
    /// goes: what is left is the event that says so.
    pub fn purge(self, now: Timestamp) -> Result<Event, Refusal> {
        let due =
            self.status == AccountStatus::Deleted && self.purge_after.is_some_and(|p| p <= now);
        if due {
            Ok(Event::purged(self.id))
        } else {
            Err(Refusal::NotDue)
        }
    }

    /// Marks the address confirmed; nothing (and no event) if it was already.
    pub fn verify_email(&mut self, now: Timestamp) -> Option<Event> {
        if self.email_verified {
            return None;
        }
        self.email_verified = true;
        self.updated_at = now;
        Some(Event::email_verified(self.id))
    }

    /// Makes `address`, confirmed from its mailbox, the account's address.
    pub fn confirm_email_change(&mut self, address: Email, now: Timestamp) -> Event {
        self.email = address;
        self.email_verified = true;
        self.updated_at = now;
        Event::email_verified(self.id)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp::from_millis(1_795_698_637_045);

    /// An active, unverified account created at `NOW`.
    pub(crate) fn sample() -> User {
        User {
            id: Uuid::now_v7(),
            email: Email::from_trusted("ada@example.com".into()),
            email_verified: false,
            pending_email: None,
            username: Username::from_trusted("ada".into()),
            display_name: Some("Ada".into()),
            bio: None,
            avatar_url: None,
            password_hash: Some("$argon2id$hash".into()),
            status: AccountStatus::Active,
            banned: false,
            created_at: NOW,
            updated_at: NOW,
            deleted_at: None,
            purge_after: None,
            mfa_enabled: false,
        }
    }

    fn later(secs: u64) -> Timestamp {
        NOW.plus_secs(secs)
    }

    #[test]
    fn a_ban_happens_once_and_ends_when_lifted() {
        let mut user = sample();
        let event = user.ban(Some("spam".into()), later(1));
        assert_eq!(
            event,
            Some(Event::Banned(Moderation {
                user_id: user.id,
                reason: Some("spam".into())
            }))
        );
        assert_eq!((user.status, user.banned), (AccountStatus::Banned, true));
        assert_eq!(user.updated_at, later(1));
        assert_eq!(user.ban(None, later(2)), None);
        assert_eq!(user.updated_at, later(1));

        let event = user.unban(later(3));
        assert_eq!(
            event,
            Some(Event::Unbanned(Moderation {
                user_id: user.id,
                reason: None
            }))
        );
        assert_eq!((user.status, user.banned), (AccountStatus::Active, false));
        assert_eq!(user.unban(later(4)), None);
    }

    #[test]
    fn a_ban_outlives_a_deletion() {
        let mut user = sample();
        user.delete(later(100), later(1)).unwrap();
        assert!(user.ban(None, later(2)).is_some());
        assert_eq!(user.status, AccountStatus::Deleted);
        let restored = user.restore(later(3)).unwrap();
        assert_eq!(restored.type_name(), Event::RESTORED);
        assert_eq!((user.status, user.banned), (AccountStatus::Banned, true));
    }

    #[test]
    fn an_unban_leaves_a_deleted_account_deleted() {
        let mut user = sample();
        user.ban(None, later(1));
        user.status = AccountStatus::Deleted;
        assert!(user.unban(later(2)).is_some());
        assert_eq!((user.status, user.banned), (AccountStatus::Deleted, false));
    }

    #[test]
    fn only_an_active_account_is_deleted() {
        let mut user = sample();
        let event = user.delete(later(100), later(1)).unwrap();
        assert_eq!(
            event,
            Event::Deleted(UserDeleted {
                user_id: user.id,
                restore_until: later(100)
            })
        );
        assert_eq!(user.status, AccountStatus::Deleted);
        assert_eq!(user.deleted_at, Some(later(1)));
        assert_eq!(user.purge_after, Some(later(100)));
        assert_eq!(user.delete(later(200), later(2)), Err(Refusal::NotActive));
        assert_eq!(user.purge_after, Some(later(100)));

        let mut banned = sample();
        banned.ban(None, later(1));
        assert_eq!(banned.delete(later(100), later(2)), Err(Refusal::NotActive));
    }

    #[test]
    fn a_restoration_needs_a_deleted_account_within_its_grace_period() {
        assert_eq!(sample().restore(later(1)), Err(Refusal::NotRestorable));

        let mut user = sample();
        user.delete(later(100), later(1)).unwrap();
        assert_eq!(
            user.clone().restore(later(100)),
            Err(Refusal::NotRestorable)
        );
        let event = user.restore(later(99)).unwrap();
        assert_eq!(event, Event::restored(&user));
        assert_eq!(user.status, AccountStatus::Active);
        assert_eq!((user.deleted_at, user.purge_after), (None, None));
        assert_eq!(user.updated_at, later(99));
    }

    #[test]
    fn erasure_waits_for_the_end_of_the_grace_period() {
        assert_eq!(sample().purge(later(1)), Err(Refusal::NotDue));
        let mut user = sample();
        user.delete(later(100), later(1)).unwrap();
        assert_eq!(user.clone().purge(later(99)), Err(Refusal::NotDue));
        assert_eq!(user.clone().purge(later(100)), Ok(Event::purged(user.id)));
    }

    #[test]
    fn an_address_is_verified_once() {
        let mut user = sample();
        assert_eq!(
            user.verify_email(later(1)),
            Some(Event::email_verified(user.id))
        );
        assert!(user.email_verified);
        assert_eq!(user.verify_email(later(2)), None);
        assert_eq!(user.updated_at, later(1));
    }

    #[test]
    fn a_confirmed_change_makes_the_new_address_verified() {
        let mut user = sample();
        user.email_verified = true;
        let address = Email::from_trusted("new@example.com".into());
        let event = user.confirm_email_change(address.clone(), later(1));
        assert_eq!(event, Event::email_verified(user.id));
        assert_eq!(user.email, address);
        assert!(user.email_verified);
    }
}
