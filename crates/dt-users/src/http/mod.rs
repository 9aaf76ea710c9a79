//! The HTTP API: routes, layers and the OpenAPI document.

mod auth;
mod deletion;
mod email;
pub mod extract;
mod meta;
mod middleware;
mod oauth;
mod passkeys;
pub mod problem;
mod two_factor;
mod users;
pub mod views;

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use utoipa::openapi::security::{
    Flow, HttpAuthScheme, HttpBuilder, OAuth2, Password, Scopes, SecurityScheme,
};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::health::Readiness;
use crate::security::client_ip::TrustedProxies;
use crate::service::App;

/// Bodies larger than this are refused with 413.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The state every handler receives: the use-cases, and what only the HTTP edge needs. It
/// dereferences to the use-cases.
#[derive(Debug, Clone)]
pub struct AppState {
    pub app: Arc<App>,
    pub edge: Arc<Edge>,
}

impl Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.app
    }
}

/// What only the HTTP edge needs.
#[derive(Debug)]
pub struct Edge {
    /// Whose forwarding header names the client.
    pub trusted_proxies: TrustedProxies,
    /// What `/health/ready` reports, measured at most every few seconds.
    pub readiness: Arc<Readiness>,
    /// Empty: CORS off.
    pub cors_allowed_origins: Vec<HeaderValue>,
    /// Longer requests are answered 503.
    pub request_timeout: Duration,
}

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "password",
            SecurityScheme::OAuth2(OAuth2::new([Flow::Password(Password::new(
                "/api/v1/auth/login",
                Scopes::new(),
            ))])),
        );
    }
}

/// Documents the answers every operation can give besides its own: the framework's and the
/// service's problem documents (malformed or oversized bodies, rate limits, outages).
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    problem::PROBLEM_JSON,
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                item.get.as_mut(),
                item.post.as_mut(),
                item.patch.as_mut(),
                item.delete.as_mut(),
                item.put.as_mut(),
            ];
            for operation in operations.into_iter().flatten() {
                let has_body = operation.request_body.is_some();
                let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
                let responses = &mut operation.responses.responses;
                let mut add = |status: &str, description: &str| {
                    responses
                        .entry(status.to_owned())
                        .or_insert_with(|| problem(description).into());
                };
                add(
                    "400",
                    "`bad_request`: malformed request (e.g. a body that is not JSON)",
                );
                add("405", "`method_not_allowed`");
                add(
                    "429",
                    "`rate_limited`, with `Retry-After`, `RateLimit` and `RateLimit-Policy`",
                );
                add(
                    "503",
                    "`unavailable`: a dependency is down; retry after `Retry-After`",
                );
                if has_body {
                    add("413", "`payload_too_large`: bodies are limited to 64 KiB");
                    add(
                        "415",
                        "`unsupported_media_type`: send `Content-Type: application/json`",
                    );
                    add(
                        "422",
                        "`validation_error`: the body has the wrong shape or invalid fields",
                    );
                }
                if secured {
                    add(
                        "401",
                        "`not_authenticated`, `invalid_token`, `token_expired` or `session_revoked`",
                    );
                }
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "dt-users", description = "The user service of Dev Talk: accounts, sign-in, sessions and profiles."),
    modifiers(&SecuritySchemes),
    components(schemas(problem::Problem, problem::FieldErrorView)),
    tags(
        (name = "auth", description = "Registration, sign-in and tokens"),
        (name = "users", description = "Accounts, profiles and sessions"),
        (name = "two-factor", description = "Authenticator apps, passkeys and recovery codes"),
        (name = "meta", description = "Keys, health and metrics"),
    )
)]
struct ApiDoc;

/// The routes and the OpenAPI document they describe.
pub fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(auth::register))
        .routes(routes!(auth::login))
        .routes(routes!(auth::refresh))
        .routes(routes!(auth::logout))
        .routes(routes!(two_factor::complete))
        .routes(routes!(two_factor::start_totp, two_factor::disable_totp))
        .routes(routes!(two_factor::confirm_totp))
        .routes(routes!(two_factor::regenerate_recovery_codes))
        .routes(routes!(passkeys::second_step_options))
        .routes(routes!(passkeys::sign_in_options))
        .routes(routes!(passkeys::sign_in))
        .routes(routes!(passkeys::registration_options))
        .routes(routes!(passkeys::add, passkeys::list))
        .routes(routes!(passkeys::remove))
        .routes(routes!(oauth::authorize))
        .routes(routes!(oauth::callback))
        .routes(routes!(oauth::exchange))
        .routes(routes!(oauth::list))
        .routes(routes!(oauth::link))
        .routes(routes!(oauth::unlink))
        .routes(routes!(email::verify))
        .routes(routes!(email::request_verification))
        .routes(routes!(email::forgot))
        .routes(routes!(email::reset))
        .routes(routes!(email::confirm_change))
        .routes(routes!(email::cancel_change))
        .routes(routes!(users::current, users::update, deletion::delete))
        .routes(routes!(deletion::restore))
        .routes(routes!(deletion::request_restore))
        .routes(routes!(deletion::export))
        .routes(routes!(users::sessions))
        .routes(routes!(users::end_session))
        .routes(routes!(users::public_profile))
        .routes(routes!(meta::jwks))
        .routes(routes!(meta::live))
        .routes(routes!(meta::ready))
        .routes(routes!(meta::metrics))
        .split_for_parts();
    // The operations exist only now that the routes are registered.
    CommonResponses.modify(&mut openapi);
    (router, openapi)
}

/// The OpenAPI document alone (for `/openapi.json` and the snapshot test).
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().1
}

/// CORS for the configured origins (comma-separated); none: CORS stays off.
fn cors_layer(origins: &[HeaderValue]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderName, Method, header};
    let origins = origins.to_vec();
    if origins.is_empty() {
        return None;
    }
    Some(
        tower_http::cors::CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([
                header::RETRY_AFTER,
                header::LOCATION,
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("ratelimit"),
                HeaderName::from_static("ratelimit-policy"),
            ])
            .max_age(Duration::from_secs(600))
            // Linking a provider sets the cookie that binds its flow to the browser.
            .allow_credentials(true),
    )
}

/// Health and metrics alone, for the background roles (`worker`, `relay`, `beat`, `consume`)
/// when they are given a port.
pub fn ops_router(readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/health/live", axum::routing::get(meta::live))
        .route(
            "/health/ready",
            axum::routing::get(meta::ready_with_details),
        )
        .route("/metrics", axum::routing::get(meta::metrics))
        .with_state(readiness)
        .fallback(middleware::not_found)
        .layer(
            ServiceBuilder::new()
                .layer(axum::middleware::from_fn(middleware::observe))
                .layer(axum::middleware::from_fn(middleware::problem_documents))
                .layer(CatchPanicLayer::custom(middleware::panic_response)),
        )
}

/// The complete application: routes, docs, and the layers every request passes.
pub fn router(app: Arc<App>, edge: Edge) -> Router {
    let (api, openapi) = routes();
    let docs = SwaggerUi::new("/docs").url("/openapi.json", openapi);
    let cors = cors_layer(&edge.cors_allowed_origins);
    let request_timeout = edge.request_timeout;
    let state = AppState {
        app,
        edge: Arc::new(edge),
    };
    api.with_state(state.clone())
        .merge(docs)
        .fallback(middleware::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::global_rate_limit,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state,
            middleware::shed_password_work,
        ))
        .layer(
            ServiceBuilder::new()
                .layer(axum::middleware::from_fn(middleware::observe))
                .layer(axum::middleware::from_fn(middleware::security_headers))
                .option_layer(cors)
                .layer(axum::middleware::from_fn(middleware::problem_documents))
                .layer(CatchPanicLayer::custom(middleware::panic_response))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::SERVICE_UNAVAILABLE,
                    request_timeout,
                ))
                .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
                .layer(DefaultBodyLimit::max(BODY_LIMIT)),
        )
}
