//! The background roles of a process, wired to the use-cases through the traits they declare.

use std::sync::Arc;

use dt_users_domain::Timestamp;
use tokio::sync::watch;

use super::StartupError;
use crate::config::Config;
use crate::email::Mailer;
use crate::events::{CommandConsumer, CommandHandler, EventRelay, HandlingError};
use crate::jobs::{Beat, EmailWorker, JobQueue, MailFiles, OutboxRelay, Sweeps};
use crate::runner::{RoleError, Schedule};
use crate::service::{App, Command, CommandOutcome, ServiceError};

/// The consumer applies commands with the use-cases.
impl CommandHandler for Arc<App> {
    async fn apply(&self, id: &str, command: &Command) -> Result<CommandOutcome, HandlingError> {
        self.apply_command(id, command)
            .await
            .map_err(handling_error)
    }

    async fn record_rejected(
        &self,
        id: &str,
        command_type: &'static str,
    ) -> Result<(), HandlingError> {
        self.record_rejected_command(id, command_type)
            .await
            .map_err(handling_error)
    }
}

fn handling_error(error: ServiceError) -> HandlingError {
    match error {
        ServiceError::Unavailable(_) => HandlingError::Unavailable(Box::new(error)),
        ServiceError::Busy(_) => HandlingError::Busy(Box::new(error)),
        other => HandlingError::Failed(Box::new(other)),
    }
}

/// Beat sweeps with the use-cases.
impl Sweeps for Arc<App> {
    async fn sweep(&self, now: Timestamp) -> Result<Vec<(&'static str, u64)>, RoleError> {
        let report = App::sweep(self, now)
            .await
            .map_err(|e| RoleError::Service(Box::new(e)))?;
        Ok(report.counts().to_vec())
    }
}

/// Which background roles a process runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Roles {
    pub relay: bool,
    pub worker: bool,
    pub beat: bool,
    pub consume: bool,
}

impl Roles {
    /// What `serve` runs in-process for a single node.
    pub const ALL: Self = Self {
        relay: true,
        worker: true,
        beat: true,
        consume: true,
    };
}

/// Running background roles, stopped together.
#[derive(Debug)]
pub struct Background {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Background {
    /// Starts `roles` for `app`: the outbox relays, an email worker, the command consumer,
    /// the periodic sweeps. Each gets only what it uses.
    pub async fn start(
        app: &Arc<App>,
        config: &Config,
        roles: Roles,
    ) -> Result<Self, StartupError> {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        let relay_schedule = |lease| Schedule {
            interval: config.relay_interval,
            wake: Some(app.outbox.subscribe()),
            lease,
        };
        if roles.relay || roles.worker {
            let queue = JobQueue::open(&config.jobs, &config.data_dir).await?;
            if roles.relay {
                let relay = OutboxRelay::new(app.db.clone(), queue.clone(), app.clock.clone());
                tasks.push(tokio::spawn(crate::runner::run(
                    relay,
                    relay_schedule(None),
                    stopped.clone(),
                )));
            }
            if roles.worker {
                let mailer = Mailer::new(
                    config.email.smtp_url.as_deref(),
                    config.data_dir.join("mail"),
                    &config.email.from,
                )
                .map_err(StartupError::Setup)?;
                let worker = EmailWorker::new(
                    &config.jobs,
                    &config.public_url,
                    config.email.token_ttl,
                    app.db.clone(),
                    mailer,
                    app.email_tokens.clone(),
                    app.clock.clone(),
                );
                tasks.push(tokio::spawn(worker.run(queue, stopped.clone())));
            }
        }
        if let (true, Some(kafka)) = (roles.relay, &config.kafka) {
            let relay = EventRelay::new(kafka, app.db.clone(), app.clock.clone())
                .map_err(StartupError::Setup)?;
            let schedule = relay_schedule(Some(relay.lease().clone()));
            tasks.push(tokio::spawn(crate::runner::run(
                relay,
                schedule,
                stopped.clone(),
            )));
        }
        if let (true, Some(kafka)) = (roles.consume, &config.kafka) {
            let consumer = CommandConsumer::new(app.clone(), kafka, &config.commands)
                .map_err(StartupError::Setup)?;
            tasks.push(tokio::spawn(consumer.run(stopped.clone())));
        }
        if roles.beat {
            let mail_files = config.email.smtp_url.is_none().then(|| MailFiles {
                dir: config.data_dir.join("mail"),
                link_ttl: config.email.token_ttl,
            });
            let beat = Beat::new(
                app.clone(),
                app.db.clone(),
                app.clock.clone(),
                config.deletion.sweep_interval,
                mail_files,
            );
            tasks.push(tokio::spawn(beat.run(stopped)));
        }
        Ok(Self { stop, tasks })
    }

    /// Asks every role to stop, and waits for in-flight work to finish — until `deadline`,
    /// when what still runs is abandoned (an email job returns to the queue once this worker's
    /// heartbeat lapses, an outbox row not yet marked is handed on by the next relay, a
    /// command not yet committed is read again). True if everything finished in time.
    pub async fn shutdown_by(self, deadline: tokio::time::Instant) -> bool {
        let _ = self.stop.send(true);
        let mut abandoned = 0_usize;
        for mut task in self.tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                abandoned += 1;
            }
        }
        if abandoned > 0 {
            tracing::warn!(
                roles = abandoned,
                "shutdown deadline reached: work still in flight was abandoned, to be picked up again elsewhere"
            );
        }
        abandoned == 0
    }

    /// [`Self::shutdown_by`] with no deadline.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
