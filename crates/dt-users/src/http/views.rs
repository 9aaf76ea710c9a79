//! What the API sends and receives: wire shapes, kept apart from the domain types.

use dt_users_domain::User;
use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

use crate::sessions::Session;

/// The account as its owner sees it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UserView {
    pub id: Uuid,
    pub email: String,
    pub email_verified: bool,
    /// The address an email change waits to have confirmed; null when none waits.
    pub pending_email: Option<String>,
    pub username: String,
    pub display_name: Option<String>,
    pub bio: Option<String>,
    pub avatar_url: Option<String>,
    /// A second factor is on: a correct password alone does not sign in.
    pub mfa_enabled: bool,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: String,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: String,
}

impl From<&User> for UserView {
    fn from(user: &User) -> Self {
        Self {
            id: user.id,
            email: user.email.as_str().to_owned(),
            email_verified: user.email_verified,
            pending_email: user.pending_email.as_ref().map(|e| e.as_str().to_owned()),
            username: user.username.as_str().to_owned(),
            display_name: user.display_name.clone(),
            bio: user.bio.clone(),
            avatar_url: user.avatar_url.clone(),
            mfa_enabled: user.mfa_enabled,
            created_at: user.created_at.to_rfc3339(),
            updated_at: user.updated_at.to_rfc3339(),
        }
    }
}

/// The account as anyone sees it: never the email.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PublicUserView {
    pub id: Uuid,
    pub username: String,
    pub display_name: Option<String>,
    pub bio: Option<String>,
    pub avatar_url: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: String,
}

impl From<&User> for PublicUserView {
    fn from(user: &User) -> Self {
        Self {
            id: user.id,
            username: user.username.as_str().to_owned(),
            display_name: user.display_name.clone(),
            bio: user.bio.clone(),
            avatar_url: user.avatar_url.clone(),
            created_at: user.created_at.to_rfc3339(),
        }
    }
}

/// One signed-in device or browser.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionView {
    pub id: Uuid,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: String,
    #[schema(value_type = String, format = DateTime)]
    pub last_used_at: String,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    /// True for the session of the token that made this request.
    pub current: bool,
}

impl SessionView {
    pub fn new(session: &Session, current: Uuid) -> Self {
        Self {
            id: session.id,
            created_at: session.created_at.to_rfc3339(),
            last_used_at: session.last_used_at.to_rfc3339(),
            user_agent: session.user_agent.clone(),
            ip: session.ip.clone(),
            current: session.id == current,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub email: String,
    pub username: String,
    /// 8–128 characters; not a common password, the email or the username.
    #[schema(value_type = String)]
    pub password: SecretString,
    pub display_name: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    #[schema(value_type = String)]
    pub password: SecretString,
}

/// The OAuth2 password grant form (`username` carries the email), for the docs page.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct LoginForm {
    pub username: String,
    #[schema(value_type = String)]
    pub password: SecretString,
    pub grant_type: Option<String>,
    pub scope: Option<String>,
    pub client_id: Option<String>,
    #[schema(value_type = Option<String>)]
    pub client_secret: Option<SecretString>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    #[schema(value_type = String)]
    pub refresh_token: SecretString,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogoutQuery {
    /// `local` (default): this session; `others`: every other session; `global`: all.
    pub scope: Option<crate::service::LogoutScope>,
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
fn nullable<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

/// A partial update; absent fields stay as they are, `null` clears a profile field.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    pub username: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub display_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub bio: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub avatar_url: Option<Option<String>>,
    /// Needs `current_password`; starts an email change: the address takes effect once
    /// confirmed from its mailbox, and shows as `pending_email` until then.
    pub email: Option<String>,
    /// Needs `current_password`; ends every other session.
    #[schema(value_type = Option<String>)]
    pub new_password: Option<SecretString>,
    #[schema(value_type = Option<String>)]
    pub current_password: Option<SecretString>,
}

impl From<UpdateUserRequest> for crate::service::ProfilePatch {
    fn from(r: UpdateUserRequest) -> Self {
        Self {
            username: r.username,
            display_name: r.display_name,
            bio: r.bio,
            avatar_url: r.avatar_url,
            email: r.email,
            new_password: r.new_password,
            current_password: r.current_password,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::deletion::DeleteAccountRequest;
    use crate::http::email::{ResetRequest, TokenRequest};

    const SECRET: &str = "correct horse battery staple";

    fn debug_of<T: for<'de> Deserialize<'de> + std::fmt::Debug>(json: &str) -> String {
        format!("{:?}", serde_json::from_str::<T>(json).unwrap())
    }

    #[test]
    fn request_bodies_never_show_a_password_or_token() {
        let shown = [
            debug_of::<RegisterRequest>(&format!(
                r#"{{"email":"ada@example.com","username":"ada","password":"{SECRET}"}}"#
            )),
            debug_of::<LoginRequest>(&format!(
                r#"{{"email":"ada@example.com","password":"{SECRET}"}}"#
            )),
            debug_of::<RefreshRequest>(&format!(r#"{{"refresh_token":"{SECRET}"}}"#)),
            debug_of::<UpdateUserRequest>(&format!(
                r#"{{"new_password":"{SECRET}","current_password":"{SECRET}"}}"#
            )),
            debug_of::<DeleteAccountRequest>(&format!(r#"{{"password":"{SECRET}"}}"#)),
            debug_of::<TokenRequest>(&format!(r#"{{"token":"{SECRET}"}}"#)),
            debug_of::<ResetRequest>(&format!(
                r#"{{"token":"{SECRET}","new_password":"{SECRET}"}}"#
            )),
            format!(
                "{:?}",
                serde_urlencoded::from_str::<LoginForm>(&format!(
                    "username=ada%40example.com&password={SECRET}&client_secret={SECRET}"
                ))
                .unwrap()
            ),
        ];
        for debug in shown {
            assert!(!debug.contains(SECRET), "{debug}");
            assert!(debug.contains("[REDACTED]"), "{debug}");
        }
    }
}
