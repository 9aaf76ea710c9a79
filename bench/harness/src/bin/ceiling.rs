//! The minimal-work ceiling of `GET /api/v1/users/current`: the least work an authenticated
//! read can do, for the load benchmark to measure dt-users against. Never deployed.
//!
//! Per request: verify the Ed25519 access token (the algorithm, issuer and audience dt-users
//! pins), one Redis round trip (the session's `uid` field), one read of the account by primary
//! key through sqlx's native MySQL driver; it answers the same JSON as dt-users.
//!
//! Configured by environment: `CEILING_PORT`, `CEILING_DATABASE_URL` (mysql://…),
//! `CEILING_REDIS_URL`, `CEILING_REDIS_KEY_PREFIX` (dt-users' `DT_USERS_REDIS_KEY_PREFIX`),
//! `CEILING_PUBLIC_KEY_FILE` (PEM of the public half of dt-users' signing key),
//! `CEILING_DATABASE_MAX_CONNECTIONS` (default 20, as dt-users).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use dt_users_domain::Timestamp;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use sqlx::Row as _;
use sqlx::mysql::{MySqlPool, MySqlPoolOptions, MySqlRow};
use uuid::Uuid;

use dt_users_bench::BoxError;

#[derive(Deserialize)]
struct Claims {
    sub: Uuid,
    sid: Uuid,
}

#[derive(Serialize)]
struct UserView {
    id: String,
    email: String,
    email_verified: bool,
    pending_email: Option<String>,
    username: String,
    display_name: Option<String>,
    bio: Option<String>,
    avatar_url: Option<String>,
    created_at: String,
    updated_at: String,
}

struct Ceiling {
    key: DecodingKey,
    validation: Validation,
    redis: ConnectionManager,
    prefix: String,
    db: MySqlPool,
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "application/problem+json")],
        r#"{"type":"about:blank","title":"Unauthorized","status":401,"code":"unauthorized"}"#,
    )
        .into_response()
}

fn unavailable() -> Response {
    StatusCode::SERVICE_UNAVAILABLE.into_response()
}

async fn current(State(ceiling): State<Arc<Ceiling>>, headers: HeaderMap) -> Response {
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return unauthorized();
    };
    let Ok(claims) = jsonwebtoken::decode::<Claims>(token, &ceiling.key, &ceiling.validation)
    else {
        return unauthorized();
    };
    let session_key = format!(
        "{}:{{{}}}:session:{}",
        ceiling.prefix, claims.claims.sub, claims.claims.sid
    );
    let owner: Option<String> = match redis::cmd("HGET")
        .arg(&session_key)
        .arg("uid")
        .query_async(&mut ceiling.redis.clone())
        .await
    {
        Ok(owner) => owner,
        Err(_) => return unavailable(),
    };
    if owner.as_deref() != Some(claims.claims.sub.to_string().as_str()) {
        return unauthorized();
    }
    let row = sqlx::query(
        "SELECT id, email, email_verified, pending_email, username, display_name, bio, \
         avatar_url, created_at, updated_at FROM users WHERE id = ?",
    )
    .bind(claims.claims.sub.to_string())
    .fetch_optional(&ceiling.db)
    .await;
    match row {
        Ok(Some(row)) => match view(&row) {
            Ok(view) => Json(view).into_response(),
            Err(_) => unavailable(),
        },
        Ok(None) => unauthorized(),
        Err(_) => unavailable(),
    }
}

fn view(row: &MySqlRow) -> Result<UserView, sqlx::Error> {
    Ok(UserView {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        email_verified: row.try_get::<i16, _>("email_verified")? != 0,
        pending_email: row.try_get("pending_email")?,
        username: row.try_get("username")?,
        display_name: row.try_get("display_name")?,
        bio: row.try_get("bio")?,
        avatar_url: row.try_get("avatar_url")?,
        created_at: Timestamp::from_millis(row.try_get("created_at")?).to_rfc3339(),
        updated_at: Timestamp::from_millis(row.try_get("updated_at")?).to_rfc3339(),
    })
}

fn var(name: &str) -> Result<String, BoxError> {
    std::env::var(name).map_err(|_| format!("{name} is not set").into())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let port: u16 = var("CEILING_PORT")?.parse()?;
    let max_connections: u32 = std::env::var("CEILING_DATABASE_MAX_CONNECTIONS")
        .unwrap_or_else(|_| "20".into())
        .parse()?;
    let key = DecodingKey::from_ed_pem(&std::fs::read(var("CEILING_PUBLIC_KEY_FILE")?)?)?;
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_issuer(&["dt-users"]);
    validation.set_audience(&["devtalk"]);
    let redis = ConnectionManager::new(redis::Client::open(var("CEILING_REDIS_URL")?)?).await?;
    let db = MySqlPoolOptions::new()
        .max_connections(max_connections)
        .connect(&var("CEILING_DATABASE_URL")?)
        .await?;
    let ceiling = Arc::new(Ceiling {
        key,
        validation,
        redis,
        prefix: var("CEILING_REDIS_KEY_PREFIX")?,
        db,
    });
    let app = axum::Router::new()
        .route("/api/v1/users/current", get(current))
        .with_state(ceiling);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
