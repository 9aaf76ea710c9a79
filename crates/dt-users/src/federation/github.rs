//! GitHub: its OAuth web flow (with PKCE), then `GET /user` and `GET /user/emails` of its REST
//! API. The subject is the numeric user id, which never changes (a login can be renamed); the
//! email is the primary address, and only when GitHub has verified it.

use oauth2::basic::BasicClient;
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet,
    EndpointSet, PkceCodeVerifier, RedirectUrl, Scope, TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use super::{Authorization, ExternalIdentity, FederationError, HttpClient, pkce, token_error};

/// What the app asks of the user's account: the profile and the email addresses, read-only.
const SCOPES: [&str; 2] = ["read:user", "user:email"];
/// The REST API version the answers are read as.
const API_VERSION: &str = "2022-11-28";
const ACCEPT: &str = "application/vnd.github+json";

type Client = BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// The GitHub OAuth app.
#[derive(Debug)]
pub struct GitHub {
    client_id: String,
    client_secret: SecretString,
    authorize_url: AuthUrl,
    token_url: TokenUrl,
    api_url: Url,
}

#[derive(Deserialize)]
struct User {
    id: u64,
    login: String,
    name: Option<String>,
    avatar_url: Option<String>,
}

#[derive(Deserialize)]
struct Email {
    email: String,
    primary: bool,
    verified: bool,
}

/// `base` with `path` appended to its path.
fn below(base: &Url, path: &str) -> String {
    format!("{}{path}", base.as_str().trim_end_matches('/'))
}

impl GitHub {
    /// The app `client_id`/`client_secret` at GitHub's `web_url` (the OAuth pages) and
    /// `api_url` (the REST API).
    pub fn new(
        client_id: String,
        client_secret: SecretString,
        web_url: &Url,
        api_url: Url,
    ) -> Result<Self, FederationError> {
        let refused = |e: url::ParseError| FederationError::Refused(e.to_string());
        Ok(Self {
            client_id,
            client_secret,
            authorize_url: AuthUrl::new(below(web_url, "/login/oauth/authorize"))
                .map_err(refused)?,
            token_url: TokenUrl::new(below(web_url, "/login/oauth/access_token"))
                .map_err(refused)?,
            api_url,
        })
    }

    fn client(&self, callback: &Url) -> Client {
        BasicClient::new(ClientId::new(self.client_id.clone()))
            .set_client_secret(ClientSecret::new(
                self.client_secret.expose_secret().to_owned(),
            ))
            .set_auth_uri(self.authorize_url.clone())
            .set_token_uri(self.token_url.clone())
            .set_redirect_uri(RedirectUrl::from_url(callback.clone()))
            // GitHub documents the credentials as form fields.
            .set_auth_type(AuthType::RequestBody)
    }

    pub(super) fn authorize(
        &self,
        callback: &Url,
        state: &str,
    ) -> Result<Authorization, FederationError> {
        let (challenge, verifier) = pkce();
        let state = state.to_owned();
        let (url, _) = self
            .client(callback)
            .authorize_url(move || CsrfToken::new(state.clone()))
            .add_scopes(SCOPES.map(|s| Scope::new(s.to_owned())))
            .set_pkce_challenge(challenge)
            .url();
        Ok(Authorization {
            url,
            pkce_verifier: verifier.secret().clone(),
            nonce: None,
        })
    }

    pub(super) async fn identity(
        &self,
        http: &HttpClient,
        callback: &Url,
        code: &str,
        pkce_verifier: &str,
    ) -> Result<ExternalIdentity, FederationError> {
        let token = self
            .client(callback)
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_owned()))
            .request_async(&http.as_oauth())
            .await
            .map_err(token_error)?;
        let bearer = token.access_token().secret();
        let headers = [("X-GitHub-Api-Version", API_VERSION)];
        let user: User = http
            .get_json(&below(&self.api_url, "/user"), bearer, ACCEPT, &headers)
            .await?;
        let emails: Vec<Email> = http
            .get_json(
                &below(&self.api_url, "/user/emails"),
                bearer,
                ACCEPT,
                &headers,
            )
            .await?;
        let email = emails
            .into_iter()
            .find(|e| e.primary && e.verified)
            .map(|e| e.email);
        Ok(ExternalIdentity {
            subject: user.id.to_string(),
            email_verified: email.is_some(),
            email,
            login: Some(user.login),
            name: user.name,
            avatar_url: user.avatar_url,
        })
    }
}
