use std::borrow::Cow;

use sqlx::migrate::{Migrate, Migration, MigrationType, Migrator};
use sqlx::{AnyConnection, SqlStr};

use crate::{Dialect, StoreError};

/// The migrations of one dialect, embedded in the binary: `(version, description, sql)`.
type Embedded = &'static [(i64, &'static str, &'static str)];

const MYSQL: Embedded = &[
    (
        1,
        "users",
        include_str!("../migrations/mysql/0001_users.sql"),
    ),
    (
        2,
        "outbox and email tokens",
        include_str!("../migrations/mysql/0002_outbox_and_email_tokens.sql"),
    ),
    (
        3,
        "account deletion",
        include_str!("../migrations/mysql/0003_account_deletion.sql"),
    ),
    (
        4,
        "commands",
        include_str!("../migrations/mysql/0004_commands.sql"),
    ),
    (
        5,
        "email change and bans",
        include_str!("../migrations/mysql/0005_email_change_and_bans.sql"),
    ),
    (
        6,
        "exact command ids",
        include_str!("../migrations/mysql/0006_exact_command_ids.sql"),
    ),
    (
        7,
        "two-factor",
        include_str!("../migrations/mysql/0007_two_factor.sql"),
    ),
    (
        8,
        "passkeys",
        include_str!("../migrations/mysql/0008_passkeys.sql"),
    ),
    (
        9,
        "social sign-in",
        include_str!("../migrations/mysql/0009_social_sign_in.sql"),
    ),
];

const SQLITE: Embedded = &[
    (
        1,
        "users",
        include_str!("../migrations/sqlite/0001_users.sql"),
    ),
    (
        2,
        "outbox and email tokens",
        include_str!("../migrations/sqlite/0002_outbox_and_email_tokens.sql"),
    ),
    (
        3,
        "account deletion",
        include_str!("../migrations/sqlite/0003_account_deletion.sql"),
    ),
    (
        4,
        "commands",
        include_str!("../migrations/sqlite/0004_commands.sql"),
    ),
    (
        5,
        "email change and bans",
        include_str!("../migrations/sqlite/0005_email_change_and_bans.sql"),
    ),
    (
        6,
        "exact command ids",
        include_str!("../migrations/sqlite/0006_exact_command_ids.sql"),
    ),
    (
        7,
        "two-factor",
        include_str!("../migrations/sqlite/0007_two_factor.sql"),
    ),
    (
        8,
        "passkeys",
        include_str!("../migrations/sqlite/0008_passkeys.sql"),
    ),
    (
        9,
        "social sign-in",
        include_str!("../migrations/sqlite/0009_social_sign_in.sql"),
    ),
];

pub(crate) fn migrator(dialect: Dialect) -> Migrator {
    let embedded = match dialect {
        Dialect::MySql => MYSQL,
        Dialect::Sqlite => SQLITE,
    };
    let migrations = embedded
        .iter()
        .map(|&(version, description, sql)| {
            Migration::new(
                version,
                Cow::Borrowed(description),
                MigrationType::Simple,
                SqlStr::from_static(sql),
                false,
            )
        })
        .collect();
    Migrator::with_migrations(migrations)
}

/// How a database stands against the migrations this binary carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationState {
    UpToDate {
        version: i64,
    },
    /// Migrations this binary has that the database has not applied yet.
    Behind {
        pending: Vec<i64>,
    },
    /// The database has migrations this binary does not know (a newer release ran them).
    Ahead {
        unknown: Vec<i64>,
    },
}

pub(crate) async fn state(
    conn: &mut AnyConnection,
    migrator: &Migrator,
) -> Result<MigrationState, StoreError> {
    conn.ensure_migrations_table(&migrator.table_name)
        .await
        .map_err(migrate_error)?;
    let applied: Vec<i64> = conn
        .list_applied_migrations(&migrator.table_name)
        .await
        .map_err(migrate_error)?
        .into_iter()
        .map(|m| m.version)
        .collect();
    let known: Vec<i64> = migrator.iter().map(|m| m.version).collect();
    let unknown: Vec<i64> = applied
        .iter()
        .copied()
        .filter(|v| !known.contains(v))
        .collect();
    if !unknown.is_empty() {
        return Ok(MigrationState::Ahead { unknown });
    }
    let pending: Vec<i64> = known
        .iter()
        .copied()
        .filter(|v| !applied.contains(v))
        .collect();
    if pending.is_empty() {
        Ok(MigrationState::UpToDate {
            version: known.last().copied().unwrap_or(0),
        })
    } else {
        Ok(MigrationState::Behind { pending })
    }
}

pub(crate) fn migrate_error(err: sqlx::migrate::MigrateError) -> StoreError {
    match err {
        sqlx::migrate::MigrateError::Execute(e) => StoreError::from(e),
        other => StoreError::Corrupt(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_dialects_carry_the_same_versions() {
        let versions = |d| migrator(d).iter().map(|m| m.version).collect::<Vec<_>>();
        assert_eq!(versions(Dialect::MySql), versions(Dialect::Sqlite));
        let descriptions = |d| {
            migrator(d)
                .iter()
                .map(|m| m.description.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(descriptions(Dialect::MySql), descriptions(Dialect::Sqlite));
    }
}
