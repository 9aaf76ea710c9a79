//! The one way a use-case writes: begin, its writes, commit, wake the relay — and, when the
//! database refused for a passing reason, all of it once more.

/// `transact!(app, |tx| { … })` runs the block in one write transaction (`tx` is the
/// `&mut AnyConnection` of it; `?` inside rolls back and returns the error), commits, and wakes
/// the outbox relay. When the database refuses for a passing reason — a deadlock, a lock wait
/// that timed out, a failover ([`ServiceError::Busy`](super::ServiceError::Busy)) — the
/// transaction has rolled back whole and the block runs once more; a second refusal is the
/// caller's 503. So the block must be safe to run twice: each step in it is a write of this
/// transaction or repeats harmlessly (ending sessions), and it only borrows what it uses (the
/// compiler refuses a block that moves a value out, since the loop would use it again).
///
/// A loop around an `async` block rather than a function taking a closure: a closure that
/// lends its argument to the future it returns cannot be shown `Send` for every lifetime, so
/// handlers built on it could not be served.
macro_rules! transact {
    ($app:expr, |$tx:ident| $body:block) => {{
        let app: &$crate::service::App = &$app;
        let mut retried = false;
        loop {
            let outcome: Result<_, $crate::service::ServiceError> = async {
                let mut transaction = app.db.begin_write().await?;
                let value = {
                    let $tx: &mut ::dt_users_store::AnyConnection = &mut transaction;
                    $body
                };
                transaction.commit().await?;
                Ok(value)
            }
            .await;
            match outcome {
                Err(e) if e.is_busy() && !retried => {
                    retried = true;
                    ::metrics::counter!("database_retries_total").increment(1);
                    ::tracing::warn!(error = %e, "database busy: the transaction runs once more");
                }
                outcome => {
                    if outcome.is_ok() {
                        app.outbox.committed();
                    }
                    break outcome;
                }
            }
        }
    }};
}

pub(super) use transact;
