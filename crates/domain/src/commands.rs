//! The commands other services (moderation) send dt-users, and their CloudEvents 1.0
//! envelope as it arrives on the commands topic.
//!
//! The wire format is these types' `Deserialize`: the CloudEvents `type` names the command
//! and `data` carries its fields, so a command that parses is a command that is valid.

use serde::Deserialize;
use serde::de::{Deserializer, Error as _};
use uuid::Uuid;

/// The longest moderation reason, in characters.
const MAX_REASON_CHARS: usize = 500;

/// The longest command id, in bytes.
const MAX_ID_BYTES: usize = 128;

/// A command, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Command {
    #[serde(rename = "devtalk.user.ban")]
    Ban {
        user_id: Uuid,
        #[serde(default, deserialize_with = "reason")]
        reason: Option<String>,
    },
    #[serde(rename = "devtalk.user.unban")]
    Unban { user_id: Uuid },
    #[serde(rename = "devtalk.user.revoke_sessions")]
    RevokeSessions { user_id: Uuid },
}

impl Command {
    /// The CloudEvents `type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Ban { .. } => "devtalk.user.ban",
            Self::Unban { .. } => "devtalk.user.unban",
            Self::RevokeSessions { .. } => "devtalk.user.revoke_sessions",
        }
    }

    /// The account the command is about.
    pub fn user_id(&self) -> Uuid {
        match self {
            Self::Ban { user_id, .. }
            | Self::Unban { user_id }
            | Self::RevokeSessions { user_id } => *user_id,
        }
    }
}

/// What handling a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandOutcome {
    Applied,
    /// Its id was handled before: nothing happened now.
    AlreadyHandled,
    /// It cannot be applied (an unknown account); it belongs in the DLQ.
    Rejected(String),
}

/// A command message: a CloudEvents 1.0 document whose `id` makes a redelivery recognisable.
/// The other attributes (`source`, `time`, …) are not needed and not checked.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CommandEnvelope {
    #[serde(rename = "specversion")]
    _specversion: SpecVersion,
    #[serde(deserialize_with = "command_id")]
    pub id: String,
    #[serde(flatten)]
    pub command: Command,
}

/// The CloudEvents version dt-users reads: "1.0" only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SpecVersion;

impl<'de> Deserialize<'de> for SpecVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match String::deserialize(deserializer) {
            Ok(version) if version == "1.0" => Ok(Self),
            _ => Err(D::Error::custom(r#"specversion must be "1.0""#)),
        }
    }
}

fn command_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    match String::deserialize(deserializer) {
        Ok(id) if !id.is_empty() && id.len() <= MAX_ID_BYTES => Ok(id),
        _ => Err(D::Error::custom(
            "id must be a string of 1 to 128 characters",
        )),
    }
}

fn reason<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    match Option::<String>::deserialize(deserializer) {
        Ok(reason)
            if reason
                .as_ref()
                .is_none_or(|r| r.chars().count() <= MAX_REASON_CHARS) =>
        {
            Ok(reason)
        }
        _ => Err(D::Error::custom(
            "data.reason must be a string of at most 500 characters",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<CommandEnvelope, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn a_ban_parses_with_or_without_a_reason() {
        let id = Uuid::now_v7();
        let full = format!(
            r#"{{"specversion":"1.0","id":"c1","source":"moderation","type":"devtalk.user.ban","datacontenttype":"application/json","data":{{"user_id":"{id}","reason":"spam"}}}}"#
        );
        let envelope = parse(&full).unwrap();
        assert_eq!(envelope.id, "c1");
        assert_eq!(
            envelope.command,
            Command::Ban {
                user_id: id,
                reason: Some("spam".into())
            }
        );
        for data in [
            format!(r#"{{"user_id":"{id}"}}"#),
            format!(r#"{{"user_id":"{id}","reason":null}}"#),
        ] {
            let json = format!(
                r#"{{"data":{data},"type":"devtalk.user.ban","id":"c2","specversion":"1.0"}}"#
            );
            assert_eq!(
                parse(&json).unwrap().command,
                Command::Ban {
                    user_id: id,
                    reason: None
                }
            );
        }
    }

    #[test]
    fn every_command_type_parses() {
        let id = Uuid::now_v7();
        for (kind, command) in [
            ("devtalk.user.unban", Command::Unban { user_id: id }),
            (
                "devtalk.user.revoke_sessions",
                Command::RevokeSessions { user_id: id },
            ),
        ] {
            let json = format!(
                r#"{{"specversion":"1.0","id":"c","type":"{kind}","data":{{"user_id":"{id}","reason":"ignored"}}}}"#
            );
            let envelope = parse(&json).unwrap();
            assert_eq!(envelope.command, command);
            assert_eq!(envelope.command.type_name(), kind);
            assert_eq!(envelope.command.user_id(), id);
        }
    }

    #[test]
    fn invalid_commands_are_refused_with_their_reason() {
        let id = Uuid::now_v7();
        let long_id = "x".repeat(129);
        let long_reason = "é".repeat(501);
        for (json, reason) in [
            (
                format!(r#"{{"specversion":"0.3","id":"x","type":"devtalk.user.ban","data":{{"user_id":"{id}"}}}}"#),
                "specversion",
            ),
            (
                format!(r#"{{"id":"x","type":"devtalk.user.ban","data":{{"user_id":"{id}"}}}}"#),
                "specversion",
            ),
            (
                format!(r#"{{"specversion":"1.0","id":"","type":"devtalk.user.ban","data":{{"user_id":"{id}"}}}}"#),
                "id must be",
            ),
            (
                format!(r#"{{"specversion":"1.0","id":"{long_id}","type":"devtalk.user.ban","data":{{"user_id":"{id}"}}}}"#),
                "id must be",
            ),
            (
                format!(r#"{{"specversion":"1.0","id":7,"type":"devtalk.user.ban","data":{{"user_id":"{id}"}}}}"#),
                "id must be",
            ),
            (
                format!(r#"{{"specversion":"1.0","id":"x","type":"devtalk.user.delete","data":{{"user_id":"{id}"}}}}"#),
                "unknown variant",
            ),
            (
                format!(r#"{{"specversion":"1.0","id":"x","data":{{"user_id":"{id}"}}}}"#),
                "type",
            ),
            (
                r#"{"specversion":"1.0","id":"x","type":"devtalk.user.ban","data":{"user_id":"nope"}}"#.into(),
                "UUID",
            ),
            (
                r#"{"specversion":"1.0","id":"x","type":"devtalk.user.unban","data":{}}"#.into(),
                "user_id",
            ),
            (
                r#"{"specversion":"1.0","id":"x","type":"devtalk.user.unban"}"#.into(),
                "data",
            ),
            (
                format!(r#"{{"specversion":"1.0","id":"x","type":"devtalk.user.ban","data":{{"user_id":"{id}","reason":"{long_reason}"}}}}"#),
                "data.reason must be",
            ),
            (
                format!(r#"{{"specversion":"1.0","id":"x","type":"devtalk.user.ban","data":{{"user_id":"{id}","reason":5}}}}"#),
                "data.reason must be",
            ),
        ] {
            let error = parse(&json).unwrap_err();
            assert!(error.contains(reason), "{json}: {error}");
        }
    }

    #[test]
    fn a_reason_of_500_characters_is_taken() {
        let id = Uuid::now_v7();
        let reason = "é".repeat(500);
        let json = format!(
            r#"{{"specversion":"1.0","id":"x","type":"devtalk.user.ban","data":{{"user_id":"{id}","reason":"{reason}"}}}}"#
        );
        assert_eq!(
            parse(&json).unwrap().command,
            Command::Ban {
                user_id: id,
                reason: Some(reason)
            }
        );
    }
}
