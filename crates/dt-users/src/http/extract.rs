//! Extractors whose rejections are problem documents.

use std::net::{IpAddr, SocketAddr};

use axum::extract::rejection::{FormRejection, JsonRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
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

/// The field a deserialization error is about, as a client shows it: the bare name of a
/// top-level field (`password`), a JSON pointer for a nested one (`/credential/response`),
/// `body` for the body as a whole.
fn field_error<E: std::fmt::Display>(err: &serde_path_to_error::Error<E>) -> (String, String) {
    // Every body is an object: one read as a sequence (an array) is wrong as a whole (form
    // bodies reach here; JSON ones are refused before).
    if let Some(serde_path_to_error::Segment::Seq { .. }) = err.path().iter().next() {
        return ("body".to_owned(), "must be a JSON object".to_owned());
    }
    let mut segments: Vec<String> = err
        .path()
        .iter()
        .filter_map(|segment| match segment {
            serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
            serde_path_to_error::Segment::Map { key } => Some(key.clone()),
            serde_path_to_error::Segment::Enum { variant } => Some(variant.clone()),
            serde_path_to_error::Segment::Unknown => None,
        })
        .collect();
    let message = err.inner().to_string();
    // serde_json ends its messages with the position; the field says where.
    let message = match message.rsplit_once(" at line ") {
        Some((text, _)) => text.to_owned(),
        None => message,
    };
    // A missing field is reported at its parent: name the field itself. (An unknown field's
    // path already ends with its name.)
    if let Some((name, _)) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split_once('`'))
    {
        segments.push(name.to_owned());
    }
    let field = match segments.as_slice() {
        [] => "body".to_owned(),
        [name] => name.clone(),
        nested => nested
            .iter()
            .map(|s| format!("/{}", s.replace('~', "~0").replace('/', "~1")))
            .collect(),
    };
    (field, message)
}

/// Whether the inner error of a rejection is a deserialization error with a path.
fn path_error<E: std::error::Error + 'static>(
    rejection: &(dyn std::error::Error + 'static),
) -> Option<(String, String)> {
    let mut source = Some(rejection);
    while let Some(err) = source {
        if let Some(err) = err.downcast_ref::<serde_path_to_error::Error<E>>() {
            return Some(field_error(err));
        }
        source = err.source();
    }
    None
}

pub fn json_rejection(rejection: JsonRejection) -> ApiError {
    if let JsonRejection::JsonDataError(e) = &rejection
        && let Some((field, message)) = path_error::<serde_json::Error>(e)
    {
        return ApiError::validation(&field, message);
    }
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
        let axum::Json(body) = axum::Json::<serde_json::Value>::from_request(req, state)
            .await
            .map_err(json_rejection)?;
        // Every body is an object. serde also reads a struct from an array of its fields in
        // order (`["ada@example.com"]`), which no client means: refuse it before that.
        if !body.is_object() {
            return Err(ApiError::validation("body", "must be a JSON object"));
        }
        serde_path_to_error::deserialize(body)
            .map(Self)
            .map_err(|e| {
                let (field, message) = field_error(&e);
                ApiError::validation(&field, message)
            })
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
                        match path_error::<serde_urlencoded::de::Error>(&e) {
                            Some((field, message)) => ApiError::validation(&field, message),
                            None => ApiError::validation("body", e.body_text()),
                        }
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
/// peer's, or from the forwarding header when the peer is a trusted proxy), with the key its
/// per-client limits count under.
#[derive(Debug, Clone)]
pub struct Client(pub ClientInfo, String);

impl Client {
    /// The client address as a rate-limit key: for IPv6, its network (see
    /// [`Rules::client_key`](crate::security::rate_limit::Rules::client_key)).
    pub fn ip_key(&self) -> &str {
        &self.1
    }
}

/// The client address of a request.
pub fn client_ip(parts: &Parts, app: &AppState) -> Option<IpAddr> {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())?;
    let lines = parts
        .headers
        .get_all(app.edge.trusted_proxies.header_name())
        .iter()
        .map(HeaderValue::as_bytes);
    Some(app.edge.trusted_proxies.client_ip(peer, lines))
}

/// The key the per-client limits count a request from `ip` under.
pub fn ip_key(ip: Option<IpAddr>, app: &AppState) -> String {
    ip.map_or_else(|| "unknown".to_owned(), |ip| app.limits.client_key(ip))
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
        let key = ip_key(ip, state);
        Ok(Self(
            ClientInfo {
                user_agent,
                ip: ip.map(|ip| ip.to_string()),
            },
            key,
        ))
    }
}
