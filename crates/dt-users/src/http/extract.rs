//! Extractors whose rejections are problem documents.

use std::net::SocketAddr;

use axum::extract::rejection::{FormRejection, JsonRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use super::AppState;
use super::problem::ApiError;
use crate::security::access_token::TokenSubject;
use crate::service::{ClientInfo, ServiceError};

/// `axum::Json` with problem-document rejections: 415 for a wrong content type, 400 for
/// malformed JSON, 422 for a body of the wrong shape (wrong types, unknown or missing
/// fields), 413 for a body over the limit.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

pub fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::for_status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
                .detail("Send the body as JSON with `Content-Type: application/json`.")
        }
        JsonRejection::JsonSyntaxError(e) => ApiError::for_status(StatusCode::BAD_REQUEST)
            .detail(format!("The body is not valid JSON: {}", e.body_text())),
        JsonRejection::JsonDataError(e) => ApiError::validation("body", e.body_text()),
        JsonRejection::BytesRejection(e) => ApiError::for_status(e.status())
            .detail("The request body could not be read (bodies are limited to 64 KiB)."),
        other => ApiError::for_status(other.status()).detail(other.body_text()),
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        axum::Json::<T>::from_request(req, state)
            .await
            .map(|axum::Json(value)| Self(value))
            .map_err(json_rejection)
    }
}

/// A body that is either JSON (`T`) or an HTML/OAuth2 form (`F`), chosen by content type.
#[derive(Debug)]
pub enum JsonOrForm<T, F> {
    Json(T),
    Form(F),
}

impl<T: DeserializeOwned, F: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonOrForm<T, F> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if content_type.starts_with("application/x-www-form-urlencoded") {
            axum::Form::<F>::from_request(req, state)
                .await
                .map(|axum::Form(form)| Self::Form(form))
                .map_err(|rejection| match rejection {
                    FormRejection::FailedToDeserializeFormBody(e) => {
                        ApiError::validation("body", e.body_text())
                    }
                    other => ApiError::for_status(other.status()).detail(other.body_text()),
                })
        } else {
            ApiJson::<T>::from_request(req, state)
                .await
                .map(|ApiJson(v)| Self::Json(v))
        }
    }
}

/// The caller of an authenticated endpoint: a valid access token whose session is alive.
#[derive(Debug, Clone, Copy)]
pub struct CurrentSession(pub TokenSubject);

fn bearer_token(headers: &HeaderMap) -> Result<&str, ServiceError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(ServiceError::NotAuthenticated)?
        .to_str()
        .map_err(|_| ServiceError::InvalidAccessToken)?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or(ServiceError::NotAuthenticated)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ServiceError::NotAuthenticated);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(ServiceError::NotAuthenticated);
    }
    Ok(token)
}

impl FromRequestParts<AppState> for CurrentSession {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers)?;
        let subject = state.authenticate(token).await?;
        Ok(Self(subject))
    }
}

/// Who is calling: user agent (cleaned, cut to 256 characters) and client address (the
/// peer's, or from `X-Forwarded-For` when the peer is a trusted proxy).
#[derive(Debug, Clone)]
pub struct Client(pub ClientInfo);

impl Client {
    /// The client address as a rate-limit key.
    pub fn ip_key(&self) -> &str {
        self.0.ip.as_deref().unwrap_or("unknown")
    }
}

/// The client address of a request.
pub fn client_ip(parts: &Parts, app: &AppState) -> Option<String> {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())?;
    let forwarded = parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    Some(app.trusted_proxies.client_ip(peer, forwarded).to_string())
}

impl FromRequestParts<AppState> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(256)
                    .collect::<String>()
            })
            .filter(|ua| !ua.trim().is_empty());
        let ip = client_ip(parts, state);
        Ok(Self(ClientInfo { user_agent, ip }))
    }
}
