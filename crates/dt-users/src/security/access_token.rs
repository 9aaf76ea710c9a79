//! Access tokens: RFC 9068 JWTs signed with Ed25519, verified with one pinned algorithm.

use dt_users_domain::{AuthMethods, Timestamp};
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::keys::SigningKeys;

/// The `typ` header of access tokens (RFC 9068).
pub const TOKEN_TYPE: &str = "at+jwt";
/// The most clock skew `exp` may be given: a token is never accepted much past the lifetime
/// its `expires_in` announced.
pub const MAX_LEEWAY_SECS: u64 = 5;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub sid: String,
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
    /// How the session was signed in (RFC 8176), `mfa` included when two factors were shown.
    #[serde(default)]
    pub amr: Vec<String>,
}

/// Who a verified access token speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenSubject {
    pub user_id: Uuid,
    pub session_id: Uuid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AccessTokenError {
    #[error("the access token is malformed, forged or not for this service")]
    Invalid,
    #[error("the access token has expired")]
    Expired,
}

/// Issues and verifies access tokens for one issuer and audience.
#[derive(Debug)]
pub struct AccessTokens {
    keys: SigningKeys,
    issuer: String,
    audience: String,
    ttl_secs: u64,
    leeway_secs: i64,
    validation: Validation,
}

impl AccessTokens {
    pub fn new(
        keys: SigningKeys,
        issuer: String,
        audience: String,
        ttl_secs: u64,
        leeway_secs: u64,
    ) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&issuer]);
        validation.set_audience(&[&audience]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        // Expiry is checked against the injected clock below, not the wall clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        Self {
            keys,
            issuer,
            audience,
            ttl_secs,
            leeway_secs: i64::try_from(leeway_secs.min(MAX_LEEWAY_SECS)).unwrap_or(0),
            validation,
        }
    }

    pub fn keys(&self) -> &SigningKeys {
        &self.keys
    }

    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    pub fn issue(
        &self,
        subject: TokenSubject,
        methods: AuthMethods,
        now: Timestamp,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(TOKEN_TYPE.to_owned());
        header.kid = Some(self.keys.signing_kid().to_owned());
        let iat = now.as_secs();
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: subject.user_id.to_string(),
            sid: subject.session_id.to_string(),
            jti: Uuid::now_v7().to_string(),
            iat,
            exp: now.plus_secs(self.ttl_secs).as_secs(),
            amr: methods.values().into_iter().map(str::to_owned).collect(),
        };
        jsonwebtoken::encode(&header, &claims, self.keys.encoding_key())
    }

    /// Checks signature, algorithm, `typ`, `kid`, issuer, audience and expiry. Keys are only
    /// ever taken from the configured set: `jku`, `jwk` and `x5u` headers are refused.
    pub fn verify(&self, token: &str, now: Timestamp) -> Result<TokenSubject, AccessTokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AccessTokenError::Invalid)?;
        let typ_ok = header.typ.as_deref().is_some_and(|t| {
            t.eq_ignore_ascii_case(TOKEN_TYPE) || t.eq_ignore_ascii_case("application/at+jwt")
        });
        if header.alg != Algorithm::EdDSA
            || !typ_ok
            || header.jku.is_some()
            || header.jwk.is_some()
            || header.x5u.is_some()
            || header.x5c.is_some()
        {
            return Err(AccessTokenError::Invalid);
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.keys.decoding_key(kid))
            .ok_or(AccessTokenError::Invalid)?;
        let data = jsonwebtoken::decode::<AccessClaims>(token, key, &self.validation)
            .map_err(|_| AccessTokenError::Invalid)?;
        let claims = data.claims;
        if claims.exp.saturating_add(self.leeway_secs) <= now.as_secs() {
            return Err(AccessTokenError::Expired);
        }
        let user_id = Uuid::parse_str(&claims.sub).map_err(|_| AccessTokenError::Invalid)?;
        let session_id = Uuid::parse_str(&claims.sid).map_err(|_| AccessTokenError::Invalid)?;
        Ok(TokenSubject {
            user_id,
            session_id,
        })
    }
}
