//! Domain types of dt-users: values that are valid by construction, and the user model.
//!
//! Nothing here does I/O. Input from the edge becomes these types through their `parse`
//! functions; past that point an invalid email, username or password cannot exist. The
//! contracts with the other Dev Talk services live here too: the events dt-users publishes
//! and the commands it accepts.

mod auth_methods;
mod clock;
mod commands;
mod events;
mod field;
mod password;
mod profile;
mod time_fmt;
mod user;

pub use auth_methods::AuthMethods;
pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use commands::{Command, CommandEnvelope, CommandOutcome};
pub use events::{
    Event, Moderation, ProfileField, PublicUser, SessionsRevoked, UserDeleted, UserRef, UserUpdated,
};
pub use field::{FieldError, FieldErrors};
pub use password::{NewPassword, PasswordRules, is_common_password, normalize_password};
pub use profile::{AvatarUrl, Bio, DisplayName, Email, Username, is_reserved_username};
pub use user::{AccountStatus, Refusal, User};
