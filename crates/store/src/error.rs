/// Which uniqueness rule a write broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    Email,
    Username,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0:?} is already taken")]
    Conflict(Conflict),
    /// The database cannot be reached right now; the caller answers 503.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Self::Unavailable(err),
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                match conflict_of(db.message()) {
                    Some(conflict) => Self::Conflict(conflict),
                    None => Self::Database(err),
                }
            }
            _ => Self::Database(err),
        }
    }
}

/// Names the broken unique key from the driver's message. MySQL/MariaDB say
/// `Duplicate entry '…' for key '[users.]uq_users_email'`; SQLite says
/// `UNIQUE constraint failed: users.email_lower`. Only the key name is inspected, never the
/// duplicated value (which may itself contain "username").
fn conflict_of(message: &str) -> Option<Conflict> {
    let key = message
        .rsplit_once("for key ")
        .map(|(_, key)| key)
        .or_else(|| message.rsplit_once("failed: ").map(|(_, key)| key))?;
    if key.contains("uq_users_email") || key.contains("users.email_lower") {
        Some(Conflict::Email)
    } else if key.contains("uq_users_username") || key.contains("users.username_lower") {
        Some(Conflict::Username)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_are_read_from_the_key_not_the_value() {
        assert_eq!(
            conflict_of("Duplicate entry 'username@x.io' for key 'uq_users_email'"),
            Some(Conflict::Email)
        );
        assert_eq!(
            conflict_of("Duplicate entry 'email' for key 'users.uq_users_username'"),
            Some(Conflict::Username)
        );
        assert_eq!(
            conflict_of("UNIQUE constraint failed: users.email_lower"),
            Some(Conflict::Email)
        );
        assert_eq!(conflict_of("something else"), None);
    }
}
