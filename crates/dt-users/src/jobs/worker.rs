use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use apalis::layers::retry::backoff::{ExponentialBackoffMaker, MakeBackoff};
use apalis::layers::retry::{HasherRng, RetryPolicy};
use apalis::prelude::*;
use dt_users_domain::Clock;
use dt_users_store::{self as store, Db, DeliveryClaim};
use tokio::sync::watch;

use super::{JobQueue, SendEmailJob};
use crate::config::JobsConfig;
use crate::email::{EmailIntent, Mailer, SendError, render};
use crate::security::email_token::EmailTokens;

/// A name unique to this process (`email@host-pid-random`), so that the queue can tell a
/// dead worker's orphaned jobs from a live one's.
pub fn worker_name() -> String {
    crate::runner::process_name("email")
}

/// Sends the emails of [`SendEmailJob`]s.
#[derive(Clone)]
pub struct EmailWorker {
    state: Arc<WorkerState>,
}

struct WorkerState {
    name: String,
    db: Db,
    mailer: Mailer,
    tokens: EmailTokens,
    public_url: String,
    valid_hours: u64,
    claim_lease_ms: i64,
    clock: Arc<dyn Clock>,
    run: RunConfig,
    /// Attempts running now (a job waiting out its retry pause is not running).
    attempts: AtomicUsize,
}

/// Counts one running attempt while it lives.
struct Attempt<'a>(&'a AtomicUsize);

impl<'a> Attempt<'a> {
    fn start(running: &'a AtomicUsize) -> Self {
        running.fetch_add(1, Ordering::SeqCst);
        Self(running)
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How jobs are run: attempts, their backoff and timeout, how many at once.
#[derive(Debug, Clone, Copy)]
struct RunConfig {
    max_attempts: usize,
    backoff: (Duration, Duration),
    timeout: Duration,
    concurrency: usize,
}

impl std::fmt::Debug for EmailWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailWorker")
            .field("name", &self.state.name)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct JobFailed(String);

impl EmailWorker {
    /// `email_token_ttl`: how long the links it sends live (the emails say so).
    pub fn new(
        jobs: &JobsConfig,
        public_url: &url::Url,
        email_token_ttl: Duration,
        db: Db,
        mailer: Mailer,
        tokens: EmailTokens,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            state: Arc::new(WorkerState {
                name: worker_name(),
                db,
                mailer,
                tokens,
                public_url: public_url.as_str().to_owned(),
                valid_hours: email_token_ttl.as_secs() / 3600,
                claim_lease_ms: i64::try_from(jobs.email_claim_lease.as_millis())
                    .unwrap_or(i64::MAX),
                clock,
                run: RunConfig {
                    max_attempts: jobs.max_attempts.get(),
                    backoff: (jobs.backoff, jobs.backoff_max),
                    timeout: jobs.timeout,
                    concurrency: jobs.concurrency.get(),
                },
                attempts: AtomicUsize::new(0),
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Sends one intent's email unless it was sent already.
    async fn deliver(&self, intent: &EmailIntent) -> Result<(), BoxDynError> {
        let state = &self.state;
        let mut waited = Duration::ZERO;
        loop {
            let mut conn = state.db.pool().acquire().await?;
            let claim = store::claim_delivery(
                &mut conn,
                intent.id,
                &state.name,
                state.clock.now(),
                state.claim_lease_ms,
            )
            .await?;
            match claim {
                DeliveryClaim::Claimed => break,
                DeliveryClaim::AlreadySent => {
                    metrics::counter!("emails_duplicates_suppressed_total").increment(1);
                    tracing::info!(intent_id = %intent.id, "email already sent; duplicate job ignored");
                    return Ok(());
                }
                DeliveryClaim::InProgress => {
                    // Another worker holds the claim; wait for it to finish or its lease to end.
                    if waited.as_millis()
                        > u128::try_from(state.claim_lease_ms).unwrap_or(0) + 5_000
                    {
                        return Err(Box::new(JobFailed(
                            "another worker is still sending this email".into(),
                        )));
                    }
                    drop(conn);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    waited += Duration::from_millis(500);
                }
            }
        }
        let token = match intent.kind.token_path() {
            None => None,
            Some(_) => match state
                .tokens
                .token_with(intent.token_key.as_deref(), intent.id)
            {
                Some(token) => Some(token),
                None => {
                    // Its link could not work: better no email than one with a dead link.
                    self.release(intent).await;
                    return Err(AbortError::new(JobFailed(format!(
                        "the secret {:?} that made this email's link is no longer configured",
                        intent.token_key.as_deref().unwrap_or_default()
                    )))
                    .into());
                }
            },
        };
        let rendered = match render(
            intent,
            &state.public_url,
            token.as_deref(),
            state.valid_hours,
        ) {
            Ok(rendered) => rendered,
            Err(e) => {
                self.release(intent).await;
                return Err(AbortError::new(JobFailed(format!("rendering: {e}"))).into());
            }
        };
        match state.mailer.send(intent, &rendered).await {
            Ok(()) => {
                let mut conn = state.db.pool().acquire().await?;
                if let Err(e) = store::mark_sent(&mut conn, intent.id, state.clock.now()).await {
                    // The email left; a later duplicate job waits out the claim lease and may
                    // send it again — the one duplicate the design allows.
                    tracing::error!(intent_id = %intent.id, error = %e, "email sent but not recorded as sent");
                }
                metrics::counter!("emails_sent_total", "kind" => intent.kind.name()).increment(1);
                tracing::info!(intent_id = %intent.id, kind = intent.kind.name(), "email sent");
                Ok(())
            }
            Err(e) => {
                self.release(intent).await;
                tracing::warn!(intent_id = %intent.id, kind = intent.kind.name(), error = %e, "email not sent");
                metrics::counter!("emails_failed_total", "kind" => intent.kind.name()).increment(1);
                match e {
                    SendError::Transient(_) => Err(Box::new(JobFailed(e.to_string()))),
                    SendError::Permanent(_) => {
                        Err(AbortError::new(JobFailed(e.to_string())).into())
                    }
                }
            }
        }
    }

    async fn release(&self, intent: &EmailIntent) {
        if let Ok(mut conn) = self.state.db.pool().acquire().await {
            let _ = store::release_delivery(&mut conn, intent.id, &self.state.name).await;
        }
    }

    /// Resolves once no attempt has run for `quiet` (checked every 100 ms): the jobs still held
    /// are only waiting out their retry pauses.
    async fn only_pauses_left(&self, quiet: Duration) {
        let mut idle_since = None;
        loop {
            if self.state.attempts.load(Ordering::SeqCst) == 0 {
                let since = *idle_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= quiet {
                    return;
                }
            } else {
                idle_since = None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs the worker on `queue` until `shutdown` turns true: it then takes no new job and lets
    /// the attempts in flight finish. Jobs waiting out a retry pause are not waited for: they
    /// stay in the queue under this worker, which re-queues them for another worker once this
    /// one's heartbeat lapses. A queue that fails (Redis down) is reconnected after a pause.
    pub async fn run(self, queue: JobQueue, mut shutdown: watch::Receiver<bool>) {
        let RunConfig {
            max_attempts,
            backoff,
            timeout,
            concurrency,
        } = self.state.run;
        tracing::info!(
            worker = self.name(),
            queue = queue.backend(),
            "email worker started"
        );
        loop {
            let stop = {
                let mut shutdown = shutdown.clone();
                async move {
                    let _ = shutdown.wait_for(|stop| *stop).await;
                    Ok::<(), std::io::Error>(())
                }
            };
            macro_rules! run_on {
                ($backend:expr) => {
                    WorkerBuilder::new(self.name().to_owned())
                        .backend($backend.poll_with_interval(Duration::from_millis(200)))
                        .concurrency(concurrency)
                        .data(self.clone())
                        .layer(DeadLetterLayer { max_attempts })
                        .retry(retry_policy(max_attempts, backoff))
                        .timeout(timeout)
                        .build(send_email)
                        .run_until(stop)
                        .await
                };
            }
            let work = async {
                match &queue {
                    JobQueue::Redis {
                        client,
                        config,
                        connection,
                    } => match JobQueue::redis_storage(client, config, connection).await {
                        Ok(storage) => run_on!(storage),
                        Err(e) => Err(WorkerError::from(std::io::Error::other(e))),
                    },
                    JobQueue::Sqlite(storage) => run_on!(storage.clone()),
                }
            };
            let mut asked = shutdown.clone();
            let stopped_in_pauses = async {
                let _ = asked.wait_for(|stop| *stop).await;
                self.only_pauses_left(Duration::from_secs(1)).await;
            };
            let result = tokio::select! {
                result = work => result,
                () = stopped_in_pauses => {
                    tracing::info!(
                        worker = self.name(),
                        "stopping with jobs waiting out a retry pause; the queue hands them to another worker"
                    );
                    break;
                }
            };
            if *shutdown.borrow() {
                break;
            }
            if let Err(e) = result {
                tracing::warn!(worker = self.name(), error = %e, "email worker stopped; restarting");
            }
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        tracing::info!(worker = self.name(), "email worker stopped");
    }
}

fn retry_policy(
    max_attempts: usize,
    (initial, max): (Duration, Duration),
) -> apalis::layers::retry::BackoffRetryPolicy<apalis::layers::retry::backoff::ExponentialBackoff> {
    let retries = max_attempts.saturating_sub(1);
    match ExponentialBackoffMaker::new(initial, max, 0.1, HasherRng::default()) {
        Ok(mut maker) => RetryPolicy::retries(retries).with_backoff(maker.make_backoff()),
        Err(_) => {
            let mut maker = ExponentialBackoffMaker::default();
            RetryPolicy::retries(retries).with_backoff(maker.make_backoff())
        }
    }
}

async fn send_email(job: SendEmailJob, worker: Data<EmailWorker>) -> Result<(), BoxDynError> {
    let _attempt = Attempt::start(&worker.state.attempts);
    let payload = {
        let mut conn = worker.state.db.pool().acquire().await?;
        store::outbox_payload(&mut conn, job.intent_id).await?
    };
    let Some(payload) = payload else {
        // The account was erased (or the record expired): there is nothing left to send.
        tracing::info!(intent_id = %job.intent_id, "email intent no longer exists; nothing to send");
        return Ok(());
    };
    let intent: EmailIntent = serde_json::from_str(&payload)
        .map_err(|e| AbortError::new(JobFailed(format!("unreadable email intent: {e}"))))?;
    worker.deliver(&intent).await
}

/// Ends a job that has used its attempts (or failed for good) as dead: logged, counted in
/// `jobs_dead_total`, and kept by the queue, never retried again. Sits outside the retry
/// layer, so it sees each job's final outcome once.
#[derive(Debug, Clone, Copy)]
struct DeadLetterLayer {
    max_attempts: usize,
}

impl<S> Layer<S> for DeadLetterLayer {
    type Service = DeadLetter<S>;
    fn layer(&self, inner: S) -> DeadLetter<S> {
        DeadLetter {
            inner,
            max_attempts: self.max_attempts,
        }
    }
}

#[derive(Debug, Clone)]
struct DeadLetter<S> {
    inner: S,
    max_attempts: usize,
}

impl<S, Args> Service<Task<Args>> for DeadLetter<S>
where
    S: Service<Task<Args>>,
    S::Error: Into<BoxDynError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxDynError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxDynError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxDynError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, task: Task<Args>) -> Self::Future {
        let ctx = task.ctx().clone();
        let max_attempts = self.max_attempts;
        let future = self.inner.call(task);
        Box::pin(async move {
            let result = future.await.map_err(Into::into);
            if let Err(error) = &result {
                if ctx.status() == Status::Running {
                    // A timeout dropped the handler before it could record its outcome.
                    ctx.raw_status().store(Status::Failed);
                }
                if ctx.attempt() >= max_attempts || ctx.status() == Status::Killed {
                    ctx.raw_status().store(Status::Killed);
                    metrics::counter!("jobs_dead_total", "job" => SendEmailJob::NAME).increment(1);
                    tracing::error!(
                        job = SendEmailJob::NAME,
                        task_id = ?ctx.task_id(),
                        attempts = ctx.attempt(),
                        error = %error,
                        "job dead: it will not be retried"
                    );
                }
            }
            result
        })
    }
}
