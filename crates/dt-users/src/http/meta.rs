//! Published keys, health and metrics.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::AppState;
use super::extract::Client;
use super::problem::ApiError;
use crate::health::{Readiness, Report};

/// The public keys that verify access tokens (RFC 7517).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "meta",
    responses((status = 200, description = "JWK Set", body = Object)))]
pub async fn jwks(State(app): State<AppState>) -> Response {
    let mut response = Json(app.tokens.keys().jwks().clone()).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` or `unavailable`.
    pub status: &'static str,
    /// Each dependency: `up` or `down`, with the backend in use.
    pub checks: BTreeMap<&'static str, Check>,
    /// Side effects waiting in the outbox (informational; they never make the check fail).
    /// Shown to callers with the health token, and on the ops port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbox: Option<BTreeMap<&'static str, OutboxBacklog>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OutboxBacklog {
    /// Rows not yet handed on.
    pub pending: i64,
    /// Age of the oldest of them, seconds.
    pub oldest_age_seconds: f64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Check {
    pub status: &'static str,
    pub backend: &'static str,
    /// Why it is down; shown to callers with the health token, and on the ops port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Health {
    /// The view of `report`; with `details`, the errors and the outbox backlog too. Driver
    /// errors name hosts, users and schemas: not for anyone who asks.
    fn of(report: &Report, details: bool) -> Self {
        let checks = report
            .checks
            .iter()
            .map(|(name, check)| {
                let view = Check {
                    status: if check.error.is_none() { "up" } else { "down" },
                    backend: check.backend,
                    error: check.error.clone().filter(|_| details),
                };
                (*name, view)
            })
            .collect();
        let outbox = report.outbox.as_ref().filter(|_| details).map(|outbox| {
            outbox
                .iter()
                .map(|(name, backlog)| {
                    let view = OutboxBacklog {
                        pending: backlog.pending,
                        oldest_age_seconds: backlog.oldest_age_seconds,
                    };
                    (*name, view)
                })
                .collect()
        });
        Self {
            status: if report.all_up() { "ok" } else { "unavailable" },
            checks,
            outbox,
        }
    }
}

/// The process is alive.
#[utoipa::path(get, path = "/health/live", tag = "meta",
    responses((status = 200, body = Health)))]
pub async fn live() -> Json<Health> {
    Json(Health {
        status: "ok",
        checks: BTreeMap::new(),
        outbox: None,
    })
}

/// The process can serve: every dependency answers. 503 when one does not.
///
/// Measured at most every 2 s. With `Authorization: Bearer <DT_USERS_HEALTH_TOKEN>` the report
/// also gives each error and the outbox backlog; without it, calls are limited per client
/// address.
#[utoipa::path(get, path = "/health/ready", tag = "meta",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn ready(State(app): State<AppState>, client: Client, headers: HeaderMap) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let readiness = &app.edge.readiness;
    let details = readiness.authorizes(presented);
    if !details && !readiness.admit(client.ip_key(), app.now()).await {
        return ApiError::for_status(StatusCode::TOO_MANY_REQUESTS)
            .detail("Too many readiness checks; try again in a second.")
            .retry_after(1)
            .into_response();
    }
    readiness_response(readiness, details).await
}

/// `/health/ready` of the ops port of a background role: always with details, never limited
/// (the port is an operator's, not the public's).
pub async fn ready_with_details(State(readiness): State<Arc<Readiness>>) -> Response {
    readiness_response(&readiness, true).await
}

async fn readiness_response(readiness: &Readiness, details: bool) -> Response {
    let report = readiness.report().await;
    let status = if report.all_up() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = (status, Json(Health::of(&report, details))).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics() -> Response {
    let body = crate::telemetry::render_metrics();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        body,
    )
        .into_response()
}
