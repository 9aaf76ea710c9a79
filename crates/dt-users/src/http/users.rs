//! The caller's account and sessions, and public profiles.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use uuid::Uuid;

use super::AppState;
use super::extract::{ApiJson, CurrentSession};
use super::problem::{ApiError, Problem};
use super::views::{PublicUserView, SessionView, UpdateUserRequest, UserView};
use crate::service::ServiceError;

/// The signed-in user's account.
#[utoipa::path(get, path = "/api/v1/users/current", tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, body = UserView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn current(
    State(app): State<AppState>,
    CurrentSession(subject): CurrentSession,
) -> Result<Json<UserView>, ApiError> {
    let user = app.current_user(subject).await?;
    Ok(Json(UserView::from(&user)))
}

/// Change the signed-in user's profile, email or password.
#[utoipa::path(patch, path = "/api/v1/users/current", tag = "users",
    security(("bearer" = [])),
    request_body = UpdateUserRequest,
    responses(
        (status = 200, body = UserView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`invalid_credentials`: wrong `current_password`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`username_taken` (an email change never answers `email_taken`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_error` or `weak_password`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`: too many password checks or email changes for this account", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn update(
    State(app): State<AppState>,
    CurrentSession(subject): CurrentSession,
    ApiJson(body): ApiJson<UpdateUserRequest>,
) -> Result<Json<UserView>, ApiError> {
    let user = app.update_profile(subject, body.into()).await?;
    Ok(Json(UserView::from(&user)))
}

/// The signed-in user's live sessions, newest first.
#[utoipa::path(get, path = "/api/v1/users/current/sessions", tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<SessionView>),
        (status = 401, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn sessions(
    State(app): State<AppState>,
    CurrentSession(subject): CurrentSession,
) -> Result<Json<Vec<SessionView>>, ApiError> {
    let sessions = app.list_sessions(subject).await?;
    Ok(Json(
        sessions
            .iter()
            .map(|s| SessionView::new(s, subject.session_id))
            .collect(),
    ))
}

/// End one of the signed-in user's sessions; its tokens are refused at once.
#[utoipa::path(delete, path = "/api/v1/users/current/sessions/{id}", tag = "users",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Session id")),
    responses(
        (status = 204, description = "Ended"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such session of this user", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn end_session(
    State(app): State<AppState>,
    CurrentSession(subject): CurrentSession,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = Uuid::try_parse(&id).map_err(|_| ServiceError::NotFound)?;
    app.end_session(subject, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A user's public profile.
#[utoipa::path(get, path = "/api/v1/users/{username}", tag = "users",
    params(("username" = String, Path)),
    responses(
        (status = 200, body = PublicUserView),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn public_profile(
    State(app): State<AppState>,
    Path(username): Path<String>,
) -> Result<Json<PublicUserView>, ApiError> {
    let user = app.public_profile(&username).await?;
    Ok(Json(PublicUserView::from(&user)))
}
