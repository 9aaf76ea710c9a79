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
    /// The database refused for a passing reason — a deadlock, a lock wait that timed out, too
    /// many connections, read-only during a failover, SQLite busy: the transaction rolled back
    /// and may succeed if run again.
    #[error("database busy: {0}")]
    Busy(#[source] sqlx::Error),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

impl StoreError {
    /// True for [`StoreError::Busy`]: the failed transaction may succeed if run again.
    pub fn is_busy(&self) -> bool {
        matches!(self, Self::Busy(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Self::Unavailable(err),
            sqlx::Error::Database(db) if is_passing(db.as_ref()) => Self::Busy(err),
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

/// MySQL/MariaDB error numbers that say "not now" rather than "never".
const PASSING_MYSQL_ERRORS: &[u16] = &[
    1040, // too many connections
    1053, // server shutdown in progress
    1203, // the user has too many connections
    1205, // lock wait timeout exceeded
    1213, // deadlock found when trying to get lock
    1290, // the server runs with --read-only (a replica during a failover)
    1792, // cannot execute statement in a READ ONLY transaction
    1836, // running in read-only mode
    1927, // connection killed (MariaDB)
];

/// SQLite's primary result codes for "the database is locked by another writer".
const SQLITE_BUSY: i64 = 5;
const SQLITE_LOCKED: i64 = 6;

/// True when a database error is worth retrying: see [`StoreError::Busy`].
fn is_passing(db: &(dyn sqlx::error::DatabaseError + 'static)) -> bool {
    if let Some(mysql) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return PASSING_MYSQL_ERRORS.contains(&mysql.number());
    }
    if let Some(sqlite) = db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
        // Extended result codes keep the primary code in their low byte.
        let primary = sqlx::error::DatabaseError::code(sqlite)
            .and_then(|code| code.parse::<i64>().ok())
            .map(|code| code & 0xff);
        return matches!(primary, Some(SQLITE_BUSY | SQLITE_LOCKED));
    }
    false
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
