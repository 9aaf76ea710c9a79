//! The `dt-users` command.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dt_users::config::{Config, ConfigError, Settings};
use std::sync::Arc;

use dt_users::domain::SystemClock;
use dt_users::events::{TopicCreation, create_topics};
use dt_users::startup::{Application, Background, Roles, build_app, close_db, open_db, readiness};
use dt_users::telemetry;

#[derive(Debug, Parser)]
#[command(name = "dt-users", version, about = "The user service of Dev Talk")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options of the background roles.
#[derive(Debug, Clone, clap::Args)]
struct Ops {
    /// Serve `/health/live`, `/health/ready` and `/metrics` on this port.
    #[arg(long)]
    port: Option<u16>,
    /// Address for that port.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Port to listen on.
        #[arg(long, default_value_t = 8000)]
        port: u16,
    },
    /// Apply the database migrations this release carries.
    Migrate,
    /// Run background jobs (send emails).
    Worker(Ops),
    /// Run the periodic sweeps; of several instances, one does the work at a time.
    Beat(Ops),
    /// Hand committed outbox rows on: emails to the job queue, events to Kafka.
    Relay(Ops),
    /// Apply the commands of other services from Kafka (ban, unban, revoke sessions).
    Consume(Ops),
    /// Administer the Kafka side (with the same connection and security settings).
    Kafka {
        #[command(subcommand)]
        command: KafkaCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KafkaCommand {
    /// Create the events, commands and DLQ topics; topics that exist already are left alone.
    /// Nothing else creates them.
    CreateTopics {
        /// Partitions of each topic (events of one user stay on one partition, keyed by id).
        #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
        partitions: i32,
        /// Replicas of each partition (the cluster must have at least as many brokers).
        #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
        replication: i32,
    },
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}

async fn run(cli: Cli, config: Config) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Serve { host, port } => {
            let application =
                Application::from_config(config, &host, port, Arc::new(SystemClock)).await?;
            application.run_until(shutdown_signal()).await?;
        }
        Command::Worker(ref ops)
        | Command::Beat(ref ops)
        | Command::Relay(ref ops)
        | Command::Consume(ref ops) => {
            let ops = ops.clone();
            let roles = Roles {
                relay: matches!(cli.command, Command::Relay(_)),
                worker: matches!(cli.command, Command::Worker(_)),
                beat: matches!(cli.command, Command::Beat(_)),
                consume: matches!(cli.command, Command::Consume(_)),
            };
            telemetry::install_metrics();
            let app = build_app(&config, Arc::new(SystemClock)).await?;
            let background = Background::start(&app, &config, roles).await?;
            let ops_server = match ops.port {
                Some(port) => {
                    let listener = tokio::net::TcpListener::bind((ops.host.as_str(), port)).await?;
                    let router = dt_users::http::ops_router(readiness(&config, &app)?);
                    Some(tokio::spawn(
                        async move { axum::serve(listener, router).await },
                    ))
                }
                None => None,
            };
            shutdown_signal().await;
            let deadline = tokio::time::Instant::now() + config.shutdown_timeout;
            // The ops port keeps answering while the role drains.
            background.shutdown_by(deadline).await;
            if let Some(server) = ops_server {
                server.abort();
            }
            close_db(&app.db, deadline).await;
        }
        Command::Kafka {
            command:
                KafkaCommand::CreateTopics {
                    partitions,
                    replication,
                },
        } => {
            let kafka = config
                .kafka
                .ok_or_else(|| ConfigError::new("kafka_bootstrap_servers", "not set"))?;
            let outcomes = create_topics(&kafka, partitions, replication).await?;
            for outcome in outcomes {
                match outcome {
                    TopicCreation::Created(topic) => {
                        tracing::info!(%topic, partitions, replication, "topic created");
                        println!("created topic {topic}");
                    }
                    TopicCreation::AlreadyExists(topic) => {
                        tracing::info!(%topic, "topic exists already; left as it is");
                        println!("topic {topic} exists already; left as it is");
                    }
                }
            }
        }
        Command::Migrate => {
            let db = open_db(&config)?;
            let state = db.migrate().await?;
            tracing::info!(database = db.dialect().name(), state = ?state, "migrations applied");
            db.close().await;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Settings::load() {
        Ok(settings) => settings.validate().map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let config = match config {
        Ok(config) => config,
        Err(e) => {
            eprintln!("dt-users: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_logging(config.log_format);
    match run(cli, config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "dt-users stopped");
            eprintln!("dt-users: {e}");
            ExitCode::FAILURE
        }
    }
}
