//! The `dt-users` command.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dt_users::config::Settings;
use std::sync::Arc;

use dt_users::domain::SystemClock;
use dt_users::startup::{Application, Background, Roles, build_app, open_database};
use dt_users::telemetry;

#[derive(Debug, Parser)]
#[command(name = "dt-users", version, about = "The user service of Dev Talk")]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    Worker,
    /// Run the periodic sweeps; of several instances, one does the work at a time.
    Beat,
    /// Hand committed outbox rows on: emails to the job queue, events to Kafka.
    Relay,
    /// Apply the commands of other services from Kafka (ban, unban, revoke sessions).
    Consume,
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

async fn run(cli: Cli, settings: Settings) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Serve { host, port } => {
            let application = Application::build(settings, &host, port).await?;
            application.run_until(shutdown_signal()).await?;
        }
        Command::Worker | Command::Beat | Command::Relay | Command::Consume => {
            let roles = Roles {
                relay: matches!(cli.command, Command::Relay),
                worker: matches!(cli.command, Command::Worker),
                beat: matches!(cli.command, Command::Beat),
                consume: matches!(cli.command, Command::Consume),
            };
            let app = build_app(settings, Arc::new(SystemClock)).await?;
            let background = Background::start(&app, roles).await?;
            shutdown_signal().await;
            background.shutdown().await;
            app.db.close().await;
        }
        Command::Migrate => {
            let db = open_database(&settings)?;
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
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("dt-users: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_logging(&settings.log_format);
    match run(cli, settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "dt-users stopped");
            eprintln!("dt-users: {e}");
            ExitCode::FAILURE
        }
    }
}
