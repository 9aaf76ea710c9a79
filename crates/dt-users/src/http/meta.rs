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
    /// Side effects waiting in the outbox (informational; they never make the check fail).
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
        outbox: None,
    })
}

/// The process can serve: every dependency answers. 503 when one does not.
#[utoipa::path(get, path = "/health/ready", tag = "meta",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn ready(State(app): State<AppState>) -> Response {
    let (database, sessions, kafka) =
        tokio::join!(app.db.ping(), app.sessions.ping(), kafka_ping(&app));
    let mut checks = BTreeMap::new();
    checks.insert("database", Check::of(app.db.dialect().name(), database));
    checks.insert("sessions", Check::of(app.sessions.backend(), sessions));
    if let Some(kafka) = kafka {
        checks.insert("kafka", Check::of("kafka", kafka));
    }
    let all_up = checks.values().all(|c| c.status == "up");
    let status = if all_up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Health {
        status: if all_up { "ok" } else { "unavailable" },
        checks,
        outbox: outbox_backlog(&app).await,
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

/// Whether the configured Kafka answers a metadata request (None: Kafka is not configured).
async fn kafka_ping(app: &AppState) -> Option<Result<(), String>> {
    let probe = app.kafka_probe.clone()?;
    Some(probe.ping().await)
}

async fn outbox_backlog(app: &AppState) -> Option<BTreeMap<&'static str, OutboxBacklog>> {
    use dt_users_store::OutboxKind;
    let mut conn = app.db.pool().acquire().await.ok()?;
    let now = app.now();
    let mut backlog = BTreeMap::new();
    for (name, kind) in [("emails", OutboxKind::Email), ("events", OutboxKind::Event)] {
        let (pending, oldest) = dt_users_store::backlog(&mut conn, kind).await.ok()?;
        let oldest_age_seconds = oldest.map_or(0.0, |t| {
            (now.as_millis() - t.as_millis()).max(0) as f64 / 1000.0
        });
        backlog.insert(
            name,
            OutboxBacklog {
                pending,
                oldest_age_seconds,
            },
        );
    }
    Some(backlog)
}
