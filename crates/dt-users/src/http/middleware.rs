//! Request ids, the access log, HTTP metrics, and problem documents for responses the
//! framework built on its own.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::problem::{ApiError, PROBLEM_JSON, ProblemLog};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A client's own id is kept when it is short and plain; anything else is replaced.
fn acceptable_request_id(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    let ok = (1..=128).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    ok.then(|| text.to_owned())
}

/// Echoes `X-Request-ID` (or makes one), logs one line per request and counts it.
pub async fn observe(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(acceptable_request_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    if let Ok(value) = HeaderValue::from_str(&id) {
        request.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());

    let mut response = next.run(request).await;

    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
    let status = response.status();
    let latency = started.elapsed();
    let problem = response.extensions().get::<ProblemLog>();
    let code = problem.map_or("", |p| p.code);
    if let Some(cause) = problem.and_then(|p| p.cause.as_deref()) {
        tracing::error!(request_id = %id, method = %method, route = %route, status = status.as_u16(), code, cause, "request failed");
    }
    tracing::info!(
        request_id = %id,
        method = %method,
        route = %route,
        status = status.as_u16(),
        latency_ms = latency.as_secs_f64() * 1000.0,
        code,
        "request"
    );
    let labels = [
        ("method", method.to_string()),
        ("route", route),
        ("status", status.as_u16().to_string()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels).record(latency.as_secs_f64());
    response
}

/// Turns every error response that is not already a problem document (a 404 or 405 from the
/// router, a 413 from the body limit, a timeout, a caught panic) into one.
pub async fn problem_documents(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    // A JSON body was written on purpose (a problem document, or a health report).
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| {
            v.as_bytes().starts_with(PROBLEM_JSON.as_bytes())
                || v.as_bytes().starts_with(b"application/json")
        });
    if is_json {
        return response;
    }
    let (parts, _body) = response.into_parts();
    let mut rebuilt = ApiError::for_status(status).into_response();
    for name in [header::ALLOW, header::RETRY_AFTER] {
        if let Some(value) = parts.headers.get(&name) {
            rebuilt.headers_mut().insert(name, value.clone());
        }
    }
    if status.is_server_error()
        && status != axum::http::StatusCode::SERVICE_UNAVAILABLE
        && let Some(log) = rebuilt.extensions_mut().get_mut::<ProblemLog>()
    {
        log.cause = Some(format!("the framework answered {status}"));
    }
    rebuilt
}

/// Fallback for unknown routes.
pub async fn not_found() -> Response {
    ApiError::for_status(axum::http::StatusCode::NOT_FOUND)
        .detail("There is no such resource.")
        .into_response()
}

/// The body of a caught panic: a generic 500, the cause logged.
pub fn panic_response(_err: Box<dyn std::any::Any + Send + 'static>) -> Response<Body> {
    let mut response =
        ApiError::for_status(axum::http::StatusCode::INTERNAL_SERVER_ERROR).into_response();
    if let Some(log) = response.extensions_mut().get_mut::<ProblemLog>() {
        log.cause = Some("a handler panicked".into());
    }
    response
}

/// The routes every request of which hashes a password.
const HASHING_ROUTES: [&str; 3] = [
    "/api/v1/auth/login",
    "/api/v1/auth/register",
    "/api/v1/auth/password/reset",
];

/// Sheds a request that would hash a password while every hashing thread is busy and the
/// queue is full: before the rate limiter's round trip, before its body is read, so that a
/// storm of sign-ins costs the other routes as little as possible. Such a request would be
/// shed later anyway; one let through here is still admitted or shed by the hasher itself.
pub async fn shed_password_work(
    axum::extract::State(state): axum::extract::State<super::AppState>,
    request: Request,
    next: Next,
) -> Response {
    let shed = request.method() == axum::http::Method::POST
        && request
            .extensions()
            .get::<MatchedPath>()
            .is_some_and(|route| HASHING_ROUTES.contains(&route.as_str()))
        && state.app.hasher.shed_if_saturated();
    if shed {
        return ApiError::from(crate::service::ServiceError::Overloaded).into_response();
    }
    next.run(request).await
}

/// The generous per-client ceiling on every request.
pub async fn global_rate_limit(
    axum::extract::State(app): axum::extract::State<super::AppState>,
    request: Request,
    next: Next,
) -> Response {
    // Probes and scrapes must keep answering while Redis is down: a failing liveness probe
    // would restart healthy instances.
    let path = request.uri().path();
    if path.starts_with("/health/") || path == "/metrics" {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let key = super::extract::ip_key(super::extract::client_ip(&parts, &app), &app);
    if let Err(error) = app.limit("global_ip", app.limits.global_ip, &key).await {
        return ApiError::from(error).into_response();
    }
    next.run(Request::from_parts(parts, body)).await
}

/// Headers that make browsers handle API answers safely. The docs page, which runs scripts,
/// gets no content security policy.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let is_docs = request.uri().path().starts_with("/docs");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-site"),
    );
    if !is_docs {
        headers.insert(
            "content-security-policy",
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    /// Every route named as hashing is a route, and takes a POST.
    #[test]
    fn the_hashing_routes_are_routes_that_take_posts() {
        let openapi = super::super::openapi();
        for route in super::HASHING_ROUTES {
            let item = openapi.paths.paths.get(route);
            assert!(item.is_some_and(|item| item.post.is_some()), "{route}");
        }
    }
}
