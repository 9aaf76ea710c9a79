//! Published keys, health and metrics.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::AppState;

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
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Check {
    pub status: &'static str,
    pub backend: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Check {
    fn of<E: std::fmt::Display>(backend: &'static str, result: Result<(), E>) -> Self {
        match result {
            Ok(()) => Self {
                status: "up",
                backend,
                error: None,
            },
            Err(e) => Self {
                status: "down",
                backend,
                error: Some(e.to_string()),
            },
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
    })
}

/// The process can serve: every dependency answers. 503 when one does not.
#[utoipa::path(get, path = "/health/ready", tag = "meta",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn ready(State(app): State<AppState>) -> Response {
    let (database, sessions) = tokio::join!(app.db.ping(), app.sessions.ping());
    let mut checks = BTreeMap::new();
    checks.insert("database", Check::of(app.db.dialect().name(), database));
    checks.insert("sessions", Check::of(app.sessions.backend(), sessions));
    let all_up = checks.values().all(|c| c.status == "up");
    let status = if all_up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Health {
        status: if all_up { "ok" } else { "unavailable" },
        checks,
    };
    let mut response = (status, Json(body)).into_response();
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
