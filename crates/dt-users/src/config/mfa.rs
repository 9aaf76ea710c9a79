//! Two-factor sign-in: the keys that seal TOTP secrets, the issuer authenticator apps show, and
//! the relying party of passkeys (`DT_USERS_MFA_ENCRYPTION_KEY`, `DT_USERS_TOTP_ISSUER`,
//! `DT_USERS_WEBAUTHN_RP_ID`, `DT_USERS_WEBAUTHN_ORIGINS`), checked once at start-up.

use secrecy::SecretString;
use url::Url;

use super::Settings;
use super::typed::{ConfigError, present, url};

/// Two-factor sign-in.
#[derive(Debug, Clone)]
pub struct MfaConfig {
    /// The keys that seal TOTP secrets; `None`: the embedded default's generated key.
    pub encryption_keys: Option<SecretString>,
    /// The issuer authenticator apps show, and the name passkey prompts show.
    pub totp_issuer: String,
    /// The relying-party id passkeys are bound to.
    pub webauthn_rp_id: String,
    /// The origins passkey ceremonies may come from; each is the relying-party id or below it.
    pub webauthn_origins: Vec<Url>,
}

/// The two-factor settings of `s`; passkeys' relying party defaults to `public_url`.
pub(super) fn mfa_config(s: &Settings, public_url: &Url) -> Result<MfaConfig, ConfigError> {
    let issuer = s.totp_issuer.trim();
    if issuer.is_empty() || issuer.contains(':') {
        return Err(ConfigError::new(
            "totp_issuer",
            "must be a name without a colon (authenticator apps split on it)",
        ));
    }
    let (webauthn_rp_id, webauthn_origins) = webauthn_config(s, public_url)?;
    Ok(MfaConfig {
        encryption_keys: s.mfa_encryption_key.clone(),
        totp_issuer: issuer.to_owned(),
        webauthn_rp_id,
        webauthn_origins,
    })
}

/// The relying-party id and the origins of passkeys: as configured, or from the public URL. The
/// id must be a domain (browsers refuse IP addresses), and every origin the id or a name below it.
fn webauthn_config(s: &Settings, public_url: &Url) -> Result<(String, Vec<Url>), ConfigError> {
    let rp_id = match present(s.webauthn_rp_id.as_deref()) {
        Some(id) => id.to_ascii_lowercase(),
        None => public_url.domain().map(str::to_ascii_lowercase).ok_or_else(|| {
            ConfigError::new(
                "webauthn_rp_id",
                "DT_USERS_PUBLIC_URL has no domain name (an IP address cannot be a relying-party id): set DT_USERS_WEBAUTHN_RP_ID",
            )
        })?,
    };
    if rp_id.parse::<std::net::IpAddr>().is_ok() || rp_id.contains(['/', ':']) {
        return Err(ConfigError::new(
            "webauthn_rp_id",
            "must be a domain name, e.g. devtalk.example",
        ));
    }
    let origins = if s.webauthn_origins.trim().is_empty() {
        vec![public_url.clone()]
    } else {
        s.webauthn_origins
            .split(',')
            .map(|o| url("webauthn_origins", o))
            .collect::<Result<Vec<_>, _>>()?
    };
    let mut allowed = Vec::with_capacity(origins.len());
    for origin in origins {
        let host = origin
            .domain()
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        if host != rp_id && !host.ends_with(&format!(".{rp_id}")) {
            return Err(ConfigError::new(
                "webauthn_origins",
                format!("{origin} is not on {rp_id} or a name below it"),
            ));
        }
        // An origin is scheme, host and port: a path would never match a browser's.
        let mut bare = origin;
        bare.set_path("");
        bare.set_query(None);
        bare.set_fragment(None);
        allowed.push(bare);
    }
    Ok((rp_id, allowed))
}
