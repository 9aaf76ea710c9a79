//! The identity providers users sign in with: GitHub (OAuth 2.0 and its REST API) and OpenID
//! Connect providers (discovery, ID tokens). This module only speaks to the providers: it
//! builds the authorization URL of a flow and, given the code the browser brought back, returns
//! the identity the provider vouches for. What a flow is bound to, and what an identity may do,
//! the use-cases decide.

mod github;
mod oidc;

use std::collections::BTreeMap;
use std::time::Duration;

use oauth2::{HttpRequest, HttpResponse};
use url::Url;

pub use github::GitHub;
pub use oidc::Oidc;

/// How long one request to a provider may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read from a provider; a larger one is refused.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// What a provider vouches for about the user who signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalIdentity {
    /// The provider's stable id of the user (GitHub's numeric id, an OIDC `sub`).
    pub subject: String,
    pub email: Option<String>,
    /// The provider says the user controls `email`.
    pub email_verified: bool,
    /// The user's handle there (GitHub's login, OIDC `preferred_username`).
    pub login: Option<String>,
    pub name: Option<String>,
    pub avatar_url: Option<String>,
}

/// The start of a flow: where the browser goes, and what the callback needs to finish it.
#[derive(Debug)]
pub struct Authorization {
    pub url: Url,
    /// The PKCE verifier, kept until the callback.
    pub pkce_verifier: String,
    /// The OpenID Connect `nonce` the ID token must carry; `None` for GitHub.
    pub nonce: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// The provider could not be reached, or answered with a server error: try again later.
    #[error("the identity provider is unavailable: {0}")]
    Unavailable(String),
    /// The provider's answer does not prove an identity (a bad code, an invalid ID token).
    #[error("the identity provider's answer was refused: {0}")]
    Refused(String),
}

/// One configured provider.
#[derive(Debug)]
pub enum Provider {
    GitHub(Box<GitHub>),
    Oidc(Box<Oidc>),
}

impl Provider {
    /// Where to send the browser to sign in, with `state` and a fresh PKCE challenge (and
    /// `nonce`, for OpenID Connect); the provider sends it back to `callback`.
    pub async fn authorize(
        &self,
        http: &HttpClient,
        callback: &Url,
        state: &str,
    ) -> Result<Authorization, FederationError> {
        match self {
            Self::GitHub(github) => github.authorize(callback, state),
            Self::Oidc(oidc) => oidc.authorize(http, callback, state).await,
        }
    }

    /// The identity behind `code`, checked: the code is exchanged with the PKCE verifier, and
    /// an OpenID Connect ID token must be signed by the provider's key, for this client, not
    /// expired, and carry `nonce`.
    pub async fn identity(
        &self,
        http: &HttpClient,
        callback: &Url,
        code: &str,
        pkce_verifier: &str,
        nonce: Option<&str>,
    ) -> Result<ExternalIdentity, FederationError> {
        match self {
            Self::GitHub(github) => github.identity(http, callback, code, pkce_verifier).await,
            Self::Oidc(oidc) => {
                let nonce = nonce
                    .ok_or_else(|| FederationError::Refused("the flow has no nonce".to_owned()))?;
                oidc.identity(http, callback, code, pkce_verifier, nonce)
                    .await
            }
        }
    }
}

/// The configured providers, by name.
#[derive(Debug, Default)]
pub struct Providers {
    by_name: BTreeMap<String, Provider>,
    http: HttpClient,
}

impl Providers {
    pub fn new(by_name: BTreeMap<String, Provider>) -> Result<Self, FederationError> {
        Ok(Self {
            by_name,
            http: HttpClient::new()?,
        })
    }

    pub fn get(&self, name: &str) -> Option<&Provider> {
        self.by_name.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    pub fn http(&self) -> &HttpClient {
        &self.http
    }
}

/// The HTTP client of provider requests: no redirects followed (a provider endpoint that
/// redirects is refused, so no answer comes from elsewhere), a timeout, a cap on answers.
#[derive(Debug, Clone, Default)]
pub struct HttpClient(reqwest::Client);

impl HttpClient {
    pub fn new() -> Result<Self, FederationError> {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("dt-users/", env!("CARGO_PKG_VERSION")))
            .build()
            .map(Self)
            .map_err(|e| FederationError::Unavailable(e.to_string()))
    }

    /// Sends `request` as the `oauth2` and `openidconnect` crates build it.
    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let (parts, body) = request.into_parts();
        let response = self
            .0
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body)
            .send()
            .await?;
        let mut answer = oauth2::http::Response::builder().status(response.status());
        if let Some(headers) = answer.headers_mut() {
            headers.extend(
                response
                    .headers()
                    .iter()
                    .map(|(name, value)| (name.clone(), value.clone())),
            );
        }
        let body = read_capped(response).await?;
        answer
            .body(body)
            .map_err(|e| HttpError::Other(e.to_string()))
    }

    /// The client as the `oauth2` and `openidconnect` crates take it.
    fn as_oauth(
        &self,
    ) -> impl Fn(
        HttpRequest,
    )
        -> std::pin::Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send>>
    + '_ {
        move |request| {
            let client = self.clone();
            Box::pin(async move { client.send(request).await })
        }
    }

    /// A GET of a provider's JSON API with a bearer token.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        bearer: &str,
        accept: &str,
        extra_headers: &[(&str, &str)],
    ) -> Result<T, FederationError> {
        let mut request = self
            .0
            .get(url)
            .bearer_auth(bearer)
            .header(reqwest::header::ACCEPT, accept);
        for (name, value) in extra_headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.map_err(unavailable)?;
        let status = response.status();
        let body = read_capped(response).await.map_err(unavailable)?;
        if status.is_server_error() {
            return Err(FederationError::Unavailable(format!("{url}: {status}")));
        }
        if !status.is_success() {
            return Err(FederationError::Refused(format!("{url}: {status}")));
        }
        serde_json::from_slice(&body)
            .map_err(|e| FederationError::Refused(format!("{url}: unexpected answer: {e}")))
    }
}

/// Why a request to a provider failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    Request(#[from] reqwest::Error),
    #[error("the answer is larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    #[error("{0}")]
    Other(String),
}

fn unavailable(e: impl std::fmt::Display) -> FederationError {
    FederationError::Unavailable(e.to_string())
}

/// The body of `response`, refused beyond [`MAX_RESPONSE_BYTES`].
async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(HttpError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A fresh PKCE verifier and its S256 challenge.
fn pkce() -> (oauth2::PkceCodeChallenge, oauth2::PkceCodeVerifier) {
    oauth2::PkceCodeChallenge::new_random_sha256()
}

/// A token-endpoint failure: a server error or no answer is the provider being unavailable;
/// anything else (a refused code, an answer that is not a token) refuses the sign-in.
fn token_error<RE: std::error::Error + 'static, T: oauth2::ErrorResponse + 'static>(
    e: oauth2::RequestTokenError<RE, T>,
) -> FederationError {
    match e {
        oauth2::RequestTokenError::Request(e) => FederationError::Unavailable(e.to_string()),
        oauth2::RequestTokenError::Parse(e, body) if body.is_empty() => {
            FederationError::Unavailable(e.to_string())
        }
        other => FederationError::Refused(other.to_string()),
    }
}
