//! SQL storage of dt-users. One code path over sqlx's `Any` driver serves MySQL/MariaDB in
//! production and SQLite as the embedded default; only the migrations differ per dialect.
//!
//! Store functions take a connection (or a transaction, which derefs to one) and hold SQL
//! and nothing else; the use-cases decide what runs in one transaction.

mod db;
mod error;
mod migrations;
mod users;

pub use db::{Db, Dialect};
pub use error::{Conflict, StoreError};
pub use migrations::MigrationState;
pub use sqlx::AnyConnection;
pub use users::{insert_user, update_user, user_by_email, user_by_id, user_by_username};
