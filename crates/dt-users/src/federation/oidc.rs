//! OpenID Connect providers: discovery from the issuer, the authorization-code flow with PKCE
//! and a `nonce`, and the ID token checked by `openidconnect` — signed with one of the
//! provider's published keys (asymmetric algorithms only), issued by the configured issuer, for
//! this client, not expired, carrying the flow's `nonce`, and matching the access token's
//! `at_hash` when it has one. Claims the ID token leaves out are read from the userinfo
//! endpoint.

use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreIdTokenClaims, CoreJwsSigningAlgorithm,
    CoreProviderMetadata, CoreTokenResponse, CoreUserInfoClaims,
};
use openidconnect::{
    AccessTokenHash, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl, Nonce, OAuth2TokenResponse,
    PkceCodeVerifier, RedirectUrl, Scope, SignatureVerificationError, TokenResponse,
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::RwLock;
use url::Url;

use super::{
    Authorization, ExternalIdentity, FederationError, HttpClient, pkce, token_error, unavailable,
};

/// How long discovery (the endpoints and the keys) is trusted before it is read again. A key
/// the cache does not know makes it read again at once (the provider rotated its keys).
const METADATA_TTL: Duration = Duration::from_secs(600);

/// The signature algorithms an ID token may use: the provider's keys, never the client secret.
const ALGORITHMS: [CoreJwsSigningAlgorithm; 10] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EcdsaP521Sha512,
    CoreJwsSigningAlgorithm::EdDsa,
];

type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// One OpenID Connect provider.
#[derive(Debug)]
pub struct Oidc {
    issuer: IssuerUrl,
    client_id: String,
    client_secret: SecretString,
    /// Asked for besides `openid`.
    scopes: Vec<String>,
    metadata: RwLock<Option<(Instant, CoreProviderMetadata)>>,
}

impl Oidc {
    pub fn new(
        issuer: &Url,
        client_id: String,
        client_secret: SecretString,
        scopes: &[String],
    ) -> Result<Self, FederationError> {
        // The issuer exactly as configured, without the slash `Url` adds to a bare host: it
        // must equal the `iss` the provider writes.
        let issuer = issuer.as_str();
        let issuer = if issuer.ends_with('/') && Url::parse(issuer).is_ok_and(|u| u.path() == "/") {
            issuer.trim_end_matches('/')
        } else {
            issuer
        };
        Ok(Self {
            issuer: IssuerUrl::new(issuer.to_owned())
                .map_err(|e| FederationError::Refused(e.to_string()))?,
            client_id,
            client_secret,
            scopes: scopes
                .iter()
                .filter(|s| s.as_str() != "openid")
                .cloned()
                .collect(),
            metadata: RwLock::new(None),
        })
    }

    /// The provider's endpoints and keys: from the cache while it is fresh, unless `reload`.
    async fn metadata(
        &self,
        http: &HttpClient,
        reload: bool,
    ) -> Result<CoreProviderMetadata, FederationError> {
        if !reload
            && let Some((read_at, metadata)) = &*self.metadata.read().await
            && read_at.elapsed() < METADATA_TTL
        {
            return Ok(metadata.clone());
        }
        let metadata = CoreProviderMetadata::discover_async(self.issuer.clone(), &http.as_oauth())
            .await
            .map_err(unavailable)?;
        *self.metadata.write().await = Some((Instant::now(), metadata.clone()));
        Ok(metadata)
    }

    fn client(&self, metadata: CoreProviderMetadata, callback: &Url) -> Client {
        CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.client_id.clone()),
            Some(ClientSecret::new(
                self.client_secret.expose_secret().to_owned(),
            )),
        )
        .set_redirect_uri(RedirectUrl::from_url(callback.clone()))
    }

    pub(super) async fn authorize(
        &self,
        http: &HttpClient,
        callback: &Url,
        state: &str,
    ) -> Result<Authorization, FederationError> {
        let client = self.client(self.metadata(http, false).await?, callback);
        let (challenge, verifier) = pkce();
        let nonce = Nonce::new_random();
        let (state, flow_nonce) = (state.to_owned(), nonce.clone());
        let (url, _, _) = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || CsrfToken::new(state.clone()),
                move || flow_nonce.clone(),
            )
            .add_scopes(self.scopes.iter().map(|s| Scope::new(s.clone())))
            .set_pkce_challenge(challenge)
            .url();
        Ok(Authorization {
            url,
            pkce_verifier: verifier.secret().clone(),
            nonce: Some(nonce.secret().clone()),
        })
    }

    pub(super) async fn identity(
        &self,
        http: &HttpClient,
        callback: &Url,
        code: &str,
        pkce_verifier: &str,
        nonce: &str,
    ) -> Result<ExternalIdentity, FederationError> {
        let client = self.client(self.metadata(http, false).await?, callback);
        let token = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| FederationError::Unavailable(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_owned()))
            .request_async(&http.as_oauth())
            .await
            .map_err(token_error)?;
        let nonce = Nonce::new(nonce.to_owned());
        let claims = match checked_claims(&client, &token, &nonce) {
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) => {
                // Signed with a key published since the keys were read: read them again, once.
                let client = self.client(self.metadata(http, true).await?, callback);
                checked_claims(&client, &token, &nonce)
            }
            checked => checked,
        }
        .map_err(|e| FederationError::Refused(e.to_string()))?;
        let mut identity = ExternalIdentity {
            subject: claims.subject().as_str().to_owned(),
            email: claims.email().map(|e| e.as_str().to_owned()),
            email_verified: claims.email_verified().unwrap_or(false),
            login: claims.preferred_username().map(|u| u.as_str().to_owned()),
            name: claims
                .name()
                .and_then(|n| n.get(None))
                .map(|n| n.as_str().to_owned()),
            avatar_url: claims
                .picture()
                .and_then(|p| p.get(None))
                .map(|p| p.as_str().to_owned()),
        };
        if identity.email.is_none()
            && let Ok(request) =
                client.user_info(token.access_token().clone(), Some(claims.subject().clone()))
        {
            // The provider keeps the profile claims for its userinfo endpoint.
            let info: CoreUserInfoClaims = request
                .request_async(&http.as_oauth())
                .await
                .map_err(|e| FederationError::Refused(format!("userinfo: {e}")))?;
            identity.email = info.email().map(|e| e.as_str().to_owned());
            identity.email_verified = info.email_verified().unwrap_or(false);
            identity.login = identity
                .login
                .or_else(|| info.preferred_username().map(|u| u.as_str().to_owned()));
            identity.name = identity.name.or_else(|| {
                info.name()
                    .and_then(|n| n.get(None))
                    .map(|n| n.as_str().to_owned())
            });
            identity.avatar_url = identity.avatar_url.or_else(|| {
                info.picture()
                    .and_then(|p| p.get(None))
                    .map(|p| p.as_str().to_owned())
            });
        }
        Ok(identity)
    }
}

/// The ID token's claims, once every check has passed.
fn checked_claims(
    client: &Client,
    token: &CoreTokenResponse,
    nonce: &Nonce,
) -> Result<CoreIdTokenClaims, ClaimsVerificationError> {
    let id_token = token
        .id_token()
        .ok_or_else(|| ClaimsVerificationError::Other("the answer has no ID token".into()))?;
    // Its expiry is checked against the wall clock: the provider's clock, not this
    // service's own notion of time.
    let verifier = client.id_token_verifier().set_allowed_algs(ALGORITHMS);
    let claims = id_token.claims(&verifier, nonce)?;
    if let Some(expected) = claims.access_token_hash() {
        let signature =
            |e: SignatureVerificationError| ClaimsVerificationError::SignatureVerification(e);
        let algorithm = id_token.signing_alg().map_err(signature)?;
        let key = id_token.signing_key(&verifier).map_err(signature)?;
        let actual = AccessTokenHash::from_token(token.access_token(), algorithm, key)
            .map_err(|e| ClaimsVerificationError::Other(format!("at_hash: {e}")))?;
        if actual != *expected {
            return Err(ClaimsVerificationError::Other(
                "at_hash does not match the access token".into(),
            ));
        }
    }
    Ok(claims.clone())
}
