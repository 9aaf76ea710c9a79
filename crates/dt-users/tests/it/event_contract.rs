//! Every event dt-users can publish matches its documented schema: each variant of the
//! domain's `Event`, built with realistic values, becomes the CloudEvents document the relay
//! would send, and both the envelope and the `data` are checked. A field renamed or dropped
//! on either side fails here, without a broker.

use dt_users::domain::{
    AccountStatus, Email, Event, Moderation, ProfileField, PublicUser, Timestamp, User,
    UserDeleted, UserUpdated, Username,
};
use dt_users::events::cloud_event;
use dt_users::store::OutboxRow;
use serde_json::Value;
use uuid::Uuid;

use crate::events::assert_valid_event;

const NOW: Timestamp = Timestamp::from_millis(1_795_698_637_045);

fn user(profile: bool) -> User {
    User {
        id: Uuid::now_v7(),
        email: Email::from_trusted("ada@example.com".into()),
        email_verified: true,
        pending_email: Some(Email::from_trusted("lovelace@example.org".into())),
        username: Username::from_trusted("ada_lovelace-1815".into()),
        display_name: profile.then(|| "Ada Lovelace".into()),
        bio: profile.then(|| "Analyst of the Analytical Engine.".into()),
        avatar_url: profile.then(|| "https://cdn.example.com/ada.png".into()),
        password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
        status: AccountStatus::Active,
        banned: false,
        created_at: NOW.minus_secs(86_400),
        updated_at: NOW,
        deleted_at: None,
        purge_after: None,
        mfa_enabled: false,
    }
}

/// Every event type, in both shapes where a field may be null.
fn every_event() -> Vec<Event> {
    let mut events = Vec::new();
    for profile in [true, false] {
        let user = user(profile);
        let id = user.id;
        events.extend([
            Event::registered(&user),
            Event::Updated(UserUpdated {
                changed: vec![
                    ProfileField::Username,
                    ProfileField::DisplayName,
                    ProfileField::Bio,
                    ProfileField::AvatarUrl,
                ],
                user: PublicUser::of(&user),
            }),
            Event::email_verified(id),
            Event::Deleted(UserDeleted {
                user_id: id,
                restore_until: NOW.plus_secs(30 * 86_400),
            }),
            Event::restored(&user),
            Event::purged(id),
            Event::Banned(Moderation {
                user_id: id,
                reason: profile.then(|| "Spam in ".repeat(62)),
            }),
            Event::Unbanned(Moderation {
                user_id: id,
                reason: None,
            }),
        ]);
        events.extend(Event::sessions_revoked(
            id,
            &[Uuid::now_v7(), Uuid::new_v4()],
        ));
    }
    events
}

/// The document the relay publishes for `event`, recorded at `NOW`.
fn published(event: &Event) -> Value {
    let row = OutboxRow {
        seq: 1,
        id: Uuid::now_v7(),
        name: event.type_name().to_owned(),
        user_id: event.user_id(),
        payload: event.payload().unwrap(),
        attempts: 0,
        created_at: NOW,
    };
    cloud_event(&row)
}

#[test]
fn every_event_matches_its_schema() {
    let events = every_event();
    for event in &events {
        let document = published(event);
        assert_eq!(document["subject"], event.user_id().to_string());
        assert_valid_event(&document);
    }
    let mut covered: Vec<&str> = events.iter().map(Event::type_name).collect();
    covered.sort_unstable();
    covered.dedup();
    let mut types = Event::TYPES.to_vec();
    types.sort_unstable();
    assert_eq!(covered, types, "every event type is checked");
}

#[test]
fn the_envelope_schema_lists_exactly_the_event_types() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/schemas/cloudevent.json"
    );
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let documented: Vec<&str> = schema["properties"]["type"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(documented, Event::TYPES);
}

#[test]
fn optional_profile_fields_are_null_not_absent() {
    let document = published(&Event::registered(&user(false)));
    for field in ["display_name", "bio", "avatar_url"] {
        assert_eq!(document["data"].get(field), Some(&Value::Null), "{field}");
    }
    let document = published(&Event::Unbanned(Moderation {
        user_id: Uuid::now_v7(),
        reason: None,
    }));
    assert_eq!(document["data"].get("reason"), Some(&Value::Null));
}
