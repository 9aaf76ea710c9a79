//! The HTTP server of a process and its graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use dt_users_domain::{Clock, SystemClock};
use dt_users_store::Db;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{Background, Roles, StartupError, build_app, readiness};
use crate::config::{Config, Settings};
use crate::health::Readiness;
use crate::http::Edge;
use crate::service::App;

/// Closes the database pool, waiting at most until `deadline` (and at least a second) for
/// connections still in use.
pub async fn close_db(db: &Db, deadline: tokio::time::Instant) {
    let deadline = deadline.max(tokio::time::Instant::now() + std::time::Duration::from_secs(1));
    if tokio::time::timeout_at(deadline, db.close()).await.is_err() {
        tracing::warn!("database connections still in use at the shutdown deadline");
    }
}

/// A bound, not yet running HTTP server.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    config: Config,
    app: Arc<App>,
    readiness: Arc<Readiness>,
}

impl Application {
    /// Binds `host:port` (port 0 picks a free one) with the wall clock.
    pub async fn build(settings: Settings, host: &str, port: u16) -> Result<Self, StartupError> {
        Self::build_with_clock(settings, host, port, Arc::new(SystemClock)).await
    }

    pub async fn build_with_clock(
        settings: Settings,
        host: &str,
        port: u16,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StartupError> {
        Self::from_config(settings.validate()?, host, port, clock).await
    }

    pub async fn from_config(
        config: Config,
        host: &str,
        port: u16,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StartupError> {
        crate::telemetry::install_metrics();
        let app = build_app(&config, clock).await?;
        let readiness = readiness(&config, &app)?;
        let listener = TcpListener::bind((host, port)).await?;
        Ok(Self {
            listener,
            config,
            app,
            readiness,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, std::io::Error> {
        self.listener.local_addr()
    }

    pub fn app(&self) -> Arc<App> {
        self.app.clone()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Serves until `shutdown` completes, then stops taking connections, lets the requests in
    /// flight finish and the background roles stop — all within `DT_USERS_SHUTDOWN_TIMEOUT_SECS`
    /// of the signal; what still runs then is cut off.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), std::io::Error> {
        let background = if self.config.run_background_in_serve {
            Some(
                Background::start(&self.app, &self.config, Roles::ALL)
                    .await
                    .map_err(std::io::Error::other)?,
            )
        } else {
            None
        };
        let edge = Edge {
            trusted_proxies: self.config.http.trusted_proxies.clone(),
            readiness: self.readiness.clone(),
            cors_allowed_origins: self.config.http.cors_allowed_origins.clone(),
            request_timeout: self.config.http.request_timeout,
        };
        let router = crate::http::router(self.app.clone(), edge);
        tracing::info!(address = %self.listener.local_addr()?, "listening");
        let timeout = self.config.shutdown_timeout;
        let (asked, mut deadline) = watch::channel(None::<tokio::time::Instant>);
        let signal = async move {
            shutdown.await;
            tracing::info!(
                deadline_secs = timeout.as_secs(),
                "stopping: no new connections; finishing the requests in flight"
            );
            asked.send_replace(Some(tokio::time::Instant::now() + timeout));
        };
        let serving = axum::serve(
            self.listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(signal)
        .into_future();
        let cut_off = {
            let mut deadline = deadline.clone();
            async move {
                let at = match deadline.wait_for(Option::is_some).await {
                    Ok(at) => *at,
                    // Serving ended without a signal.
                    Err(_) => None,
                };
                match at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            }
        };
        let result = tokio::select! {
            result = serving => result,
            () = cut_off => {
                tracing::warn!("shutdown deadline reached: requests still in flight were cut off");
                Ok(())
            }
        };
        let at = deadline
            .borrow_and_update()
            .unwrap_or_else(|| tokio::time::Instant::now() + timeout);
        if let Some(background) = background {
            background.shutdown_by(at).await;
        }
        close_db(&self.app.db, at).await;
        result
    }
}
