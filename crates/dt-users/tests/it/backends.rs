//! The two shapes the service runs in, and a macro that runs one test body on each.
//!
//! `MariaDbRedis` is production's: MariaDB, sessions and the rate limiter in Redis, jobs in
//! Redis. `Embedded` is what runs with nothing configured: a SQLite file, sessions and the rate
//! limiter in process memory, jobs in a SQLite file, all under the app's data directory. The
//! contract is the same on both, so the tests of the contract run on both.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    MariaDbRedis,
    Embedded,
}

/// Turns each `async fn name(backend) { … }` into a module `name` holding one `#[tokio::test]`
/// per backend, `name::mariadb_redis` and `name::embedded`, each running the body with
/// `backend` bound to its [`Backend`]. The module sees everything its parent file does.
///
/// ```ignore
/// on_both_backends! {
///     async fn login_returns_a_token_pair(backend) {
///         let app = TestApp::spawn_on(backend).await;
///         …
///     }
/// }
/// ```
macro_rules! on_both_backends {
    ($(
        $(#[$attr:meta])*
        async fn $name:ident($backend:ident) $body:block
    )+) => {$(
        $(#[$attr])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run($backend: $crate::backends::Backend) $body

            #[tokio::test]
            async fn mariadb_redis() {
                run($crate::backends::Backend::MariaDbRedis).await;
            }

            #[tokio::test]
            async fn embedded() {
                run($crate::backends::Backend::Embedded).await;
            }
        }
    )+};
}

pub(crate) use on_both_backends;

mod each_backend_is_the_one_it_names {
    use reqwest::StatusCode;

    use super::Backend;
    use crate::helpers::redis_contents;
    use crate::mail::{SmtpSink, spawn_with_mail_on};

    on_both_backends! {
        /// A run on the embedded backend that quietly used MariaDB or Redis would prove nothing
        /// of it: the database, the sessions and the job queue are the backend's.
        async fn sessions_and_jobs_are_stored_where_the_backend_says(backend) {
            let sink = SmtpSink::start().await;
            let app = spawn_with_mail_on(backend, &sink.url(), |_| {}).await;
            app.signed_in().await;
            sink.wait_for("ada@example.com", "Welcome").await;

            let (status, report) = app.readiness().await;
            assert_eq!(status, StatusCode::OK, "{report}");
            let database = report["checks"]["database"]["backend"].clone();
            let sessions = report["checks"]["sessions"]["backend"].clone();
            let in_redis = redis_contents(&format!("{}:*", app.redis_prefix)).await;
            let jobs_file = app.data_dir.join("jobs.db").exists();
            match backend {
                Backend::MariaDbRedis => {
                    assert_eq!((database, sessions), ("mysql".into(), "redis".into()));
                    assert!(app.database_url.starts_with("mysql:"), "{}", app.database_url);
                    assert!(in_redis.iter().any(|(key, _)| key.contains(":jobs")), "{in_redis:?}");
                    assert!(!jobs_file);
                }
                Backend::Embedded => {
                    assert_eq!((database, sessions), ("sqlite".into(), "memory".into()));
                    assert!(app.database_url.starts_with("sqlite:"), "{}", app.database_url);
                    assert!(in_redis.is_empty(), "{in_redis:?}");
                    assert!(jobs_file);
                }
            }
        }
    }
}
