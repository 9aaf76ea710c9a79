//! The events dt-users publishes for the other Dev Talk services: one type per event, whose
//! serialisation is the event's `data` exactly as `docs/schemas/<type>.json` describes it.
//!
//! A use-case records an [`Event`] and nothing else: the type name and the payload come from
//! here, so an event cannot be published under the wrong name or with a field misspelt.

use serde::Serialize;
use uuid::Uuid;

use crate::{Timestamp, User};

/// The public view of a user (`public-user.json`), as events carry it: never an email address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublicUser {
    pub id: Uuid,
    pub username: String,
    pub display_name: Option<String>,
    pub bio: Option<String>,
    pub avatar_url: Option<String>,
    /// Second precision, as the contract renders times.
    pub created_at: Timestamp,
}

impl PublicUser {
    pub fn of(user: &User) -> Self {
        Self {
            id: user.id,
            username: user.username.as_str().to_owned(),
            display_name: user.display_name.clone(),
            bio: user.bio.clone(),
            avatar_url: user.avatar_url.clone(),
            created_at: user.created_at,
        }
    }
}

/// A public profile field, as `devtalk.user.updated` lists the changed ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProfileField {
    Username,
    DisplayName,
    Bio,
    AvatarUrl,
}

/// `devtalk.user.updated`: public profile fields changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserUpdated {
    /// Never empty: a change of private fields only (email, password) is no `updated` event.
    pub changed: Vec<ProfileField>,
    pub user: PublicUser,
}

/// The events that name their account and nothing more (`email_verified`, `purged`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct UserRef {
    pub user_id: Uuid,
}

/// `devtalk.user.deleted`: deleted by its owner, restorable until `restore_until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct UserDeleted {
    pub user_id: Uuid,
    pub restore_until: Timestamp,
}

/// `devtalk.user.banned` and `devtalk.user.unbanned`. The reason is always present, `null`
/// when moderation gave none (an unban never carries one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Moderation {
    pub user_id: Uuid,
    pub reason: Option<String>,
}

/// `devtalk.user.sessions_revoked`: sessions that ended, so that services caching token
/// checks can drop them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionsRevoked {
    pub user_id: Uuid,
    /// Never empty: no sessions ended, no event.
    pub session_ids: Vec<Uuid>,
}

/// An event dt-users publishes. Serialises to its `data`; the name is [`Event::type_name`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Event {
    Registered(PublicUser),
    Updated(UserUpdated),
    EmailVerified(UserRef),
    Deleted(UserDeleted),
    Restored(PublicUser),
    Purged(UserRef),
    Banned(Moderation),
    Unbanned(Moderation),
    SessionsRevoked(SessionsRevoked),
}

impl Event {
    pub const REGISTERED: &'static str = "devtalk.user.registered";
    pub const UPDATED: &'static str = "devtalk.user.updated";
    pub const EMAIL_VERIFIED: &'static str = "devtalk.user.email_verified";
    pub const DELETED: &'static str = "devtalk.user.deleted";
    pub const RESTORED: &'static str = "devtalk.user.restored";
    pub const PURGED: &'static str = "devtalk.user.purged";
    pub const BANNED: &'static str = "devtalk.user.banned";
    pub const UNBANNED: &'static str = "devtalk.user.unbanned";
    pub const SESSIONS_REVOKED: &'static str = "devtalk.user.sessions_revoked";

    /// Every event type, as the CloudEvents envelope schema lists them.
    pub const TYPES: [&'static str; 9] = [
        Self::REGISTERED,
        Self::UPDATED,
        Self::EMAIL_VERIFIED,
        Self::DELETED,
        Self::RESTORED,
        Self::PURGED,
        Self::BANNED,
        Self::UNBANNED,
        Self::SESSIONS_REVOKED,
    ];

    /// The CloudEvents `type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Registered(_) => Self::REGISTERED,
            Self::Updated(_) => Self::UPDATED,
            Self::EmailVerified(_) => Self::EMAIL_VERIFIED,
            Self::Deleted(_) => Self::DELETED,
            Self::Restored(_) => Self::RESTORED,
            Self::Purged(_) => Self::PURGED,
            Self::Banned(_) => Self::BANNED,
            Self::Unbanned(_) => Self::UNBANNED,
            Self::SessionsRevoked(_) => Self::SESSIONS_REVOKED,
        }
    }

    /// The account the event is about (the CloudEvents `subject`, and the Kafka key that
    /// keeps one account's events in order).
    pub fn user_id(&self) -> Uuid {
        match self {
            Self::Registered(user) | Self::Restored(user) => user.id,
            Self::Updated(updated) => updated.user.id,
            Self::EmailVerified(r) | Self::Purged(r) => r.user_id,
            Self::Deleted(deleted) => deleted.user_id,
            Self::Banned(m) | Self::Unbanned(m) => m.user_id,
            Self::SessionsRevoked(revoked) => revoked.user_id,
        }
    }

    /// The event's `data` as JSON, as the outbox keeps it.
    pub fn payload(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }

    pub fn registered(user: &User) -> Self {
        Self::Registered(PublicUser::of(user))
    }

    pub fn restored(user: &User) -> Self {
        Self::Restored(PublicUser::of(user))
    }

    pub fn email_verified(user_id: Uuid) -> Self {
        Self::EmailVerified(UserRef { user_id })
    }

    pub fn purged(user_id: Uuid) -> Self {
        Self::Purged(UserRef { user_id })
    }

    /// The public fields `after` changed compared with `before`, as an `updated` event; none
    /// if no public field differs.
    pub fn updated(before: &User, after: &User) -> Option<Self> {
        let changed: Vec<ProfileField> = [
            (ProfileField::Username, before.username != after.username),
            (
                ProfileField::DisplayName,
                before.display_name != after.display_name,
            ),
            (ProfileField::Bio, before.bio != after.bio),
            (
                ProfileField::AvatarUrl,
                before.avatar_url != after.avatar_url,
            ),
        ]
        .into_iter()
        .filter_map(|(field, differs)| differs.then_some(field))
        .collect();
        (!changed.is_empty()).then(|| {
            Self::Updated(UserUpdated {
                changed,
                user: PublicUser::of(after),
            })
        })
    }

    /// The announcement of ended sessions; none if no session ended.
    pub fn sessions_revoked(user_id: Uuid, ended: &[Uuid]) -> Option<Self> {
        (!ended.is_empty()).then(|| {
            Self::SessionsRevoked(SessionsRevoked {
                user_id,
                session_ids: ended.to_vec(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::user::tests::sample as user;
    use crate::{Email, Username};

    fn data(event: &Event) -> serde_json::Value {
        serde_json::from_str(&event.payload().unwrap()).unwrap()
    }

    #[test]
    fn public_user_has_the_contract_fields_and_no_email() {
        let user = user();
        assert_eq!(
            data(&Event::registered(&user)),
            json!({
                "id": user.id,
                "username": "ada",
                "display_name": "Ada",
                "bio": null,
                "avatar_url": null,
                "created_at": "2026-11-26T13:10:37Z",
            })
        );
    }

    #[test]
    fn updated_lists_the_changed_public_fields_in_contract_order() {
        let before = user();
        let mut after = before.clone();
        after.bio = Some("Analyst".into());
        after.username = Username::from_trusted("ada2".into());
        after.email = Email::from_trusted("new@example.com".into());
        let event = Event::updated(&before, &after).unwrap();
        assert_eq!(event.type_name(), Event::UPDATED);
        let data = data(&event);
        assert_eq!(data["changed"], json!(["username", "bio"]));
        assert_eq!(data["user"]["username"], "ada2");

        let mut private_only = before.clone();
        private_only.email = Email::from_trusted("new@example.com".into());
        assert_eq!(Event::updated(&before, &private_only), None);
    }

    #[test]
    fn no_sessions_no_announcement() {
        let id = Uuid::now_v7();
        assert_eq!(Event::sessions_revoked(id, &[]), None);
        let session = Uuid::now_v7();
        let event = Event::sessions_revoked(id, &[session]).unwrap();
        assert_eq!(
            data(&event),
            json!({"user_id": id, "session_ids": [session]})
        );
        assert_eq!(event.user_id(), id);
    }

    #[test]
    fn every_type_name_is_listed() {
        let user = user();
        let id = user.id;
        let events = [
            Event::registered(&user),
            Event::Updated(UserUpdated {
                changed: vec![ProfileField::Bio],
                user: PublicUser::of(&user),
            }),
            Event::email_verified(id),
            Event::Deleted(UserDeleted {
                user_id: id,
                restore_until: user.created_at,
            }),
            Event::restored(&user),
            Event::purged(id),
            Event::Banned(Moderation {
                user_id: id,
                reason: None,
            }),
            Event::Unbanned(Moderation {
                user_id: id,
                reason: None,
            }),
            Event::sessions_revoked(id, &[id]).unwrap(),
        ];
        let names: Vec<&str> = events.iter().map(Event::type_name).collect();
        assert_eq!(names, Event::TYPES);
        assert!(events.iter().all(|e| e.user_id() == id));
    }
}
