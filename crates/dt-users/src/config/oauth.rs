//! Sign-in with identity providers: GitHub (`DT_USERS_GITHUB_*`), any number of OpenID
//! Connect providers (`DT_USERS_OIDC_PROVIDERS` and `DT_USERS_OIDC_<NAME>_*`), the web apps'
//! `redirect_uri` allow-list and this service's own external URL, checked once at start-up.

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::Settings;
use super::typed::{ConfigError, present, url};

/// The settings of one OpenID Connect provider, as read from `DT_USERS_OIDC_<NAME>_*`.
#[derive(Debug, Clone, Default)]
pub struct OidcSettings {
    /// The provider's name, as listed in `DT_USERS_OIDC_PROVIDERS` (lower case).
    pub name: String,
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<SecretString>,
    /// Space- or comma-separated; unset: `openid email profile`.
    pub scopes: Option<String>,
}

/// Sign-in with identity providers.
#[derive(Debug, Clone)]
pub struct OAuthConfig {
    /// The `redirect_uri` values web apps may ask for, compared exactly; empty: no provider
    /// sign-in starts.
    pub redirect_uris: Vec<Url>,
    /// This service's external base URL; provider callbacks come to
    /// `{api_url}/api/v1/auth/oauth/{provider}/callback`.
    pub api_url: Url,
    pub github: Option<GitHubConfig>,
    pub oidc: Vec<OidcConfig>,
}

/// The GitHub OAuth app.
#[derive(Debug, Clone)]
pub struct GitHubConfig {
    pub client_id: String,
    pub client_secret: SecretString,
    /// GitHub's web base (`https://github.com`, or a GitHub Enterprise server).
    pub web_url: Url,
    /// GitHub's REST API base (`https://api.github.com`, or `https://HOST/api/v3`).
    pub api_url: Url,
}

/// One OpenID Connect provider.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// Its `{provider}` in the paths.
    pub name: String,
    /// Discovery is at `{issuer}/.well-known/openid-configuration`.
    pub issuer: Url,
    pub client_id: String,
    pub client_secret: SecretString,
    /// Always includes `openid`.
    pub scopes: Vec<String>,
}

/// The name the provider `github` is served under.
pub const GITHUB: &str = "github";

/// The environment variable of one provider's setting: `DT_USERS_OIDC_<NAME>_<SETTING>`, the
/// name upper-cased with `-` read as `_`.
pub fn oidc_variable(name: &str, setting: &str) -> String {
    format!(
        "DT_USERS_OIDC_{}_{setting}",
        name.to_ascii_uppercase().replace('-', "_")
    )
}

/// The settings field naming `oidc_variable(name, setting)`, for [`ConfigError`].
fn oidc_field(name: &str, setting: &str) -> String {
    format!(
        "oidc_{}_{}",
        name.replace('-', "_"),
        setting.to_ascii_lowercase()
    )
}

/// The provider names of a `DT_USERS_OIDC_PROVIDERS` value: lower-cased, trimmed, empty
/// entries dropped.
pub(super) fn provider_names(list: &str) -> Vec<String> {
    list.split(',')
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect()
}

/// The settings of each provider named in `list`, from the variables among `vars`.
pub(super) fn oidc_settings(
    list: &str,
    vars: impl Iterator<Item = (String, String)>,
) -> Vec<OidcSettings> {
    let vars: Vec<(String, String)> = vars.collect();
    let read = |name: &str, setting: &str| {
        let variable = oidc_variable(name, setting);
        vars.iter()
            .find(|(k, _)| *k == variable)
            .map(|(_, v)| v.clone())
    };
    provider_names(list)
        .into_iter()
        .map(|name| OidcSettings {
            issuer: read(&name, "ISSUER"),
            client_id: read(&name, "CLIENT_ID"),
            client_secret: read(&name, "CLIENT_SECRET").map(SecretString::from),
            scopes: read(&name, "SCOPES"),
            name,
        })
        .collect()
}

/// The provider settings of `s`.
pub(super) fn oauth_config(s: &Settings) -> Result<OAuthConfig, ConfigError> {
    let api_url = url("api_url", &s.api_url)?;
    if api_url.query().is_some() || api_url.fragment().is_some() {
        return Err(ConfigError::new(
            "api_url",
            "must be a base URL, without a query or a fragment",
        ));
    }
    let redirect_uris = s
        .oauth_redirect_uris
        .split(',')
        .filter(|u| !u.trim().is_empty())
        .map(|u| {
            let parsed = url("oauth_redirect_uris", u)?;
            if parsed.fragment().is_some() {
                return Err(ConfigError::new(
                    "oauth_redirect_uris",
                    format!("{u} has a fragment, which a redirect cannot keep"),
                ));
            }
            Ok(parsed)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let github = github_config(s)?;
    let mut oidc = Vec::with_capacity(s.oidc.len());
    let mut seen = std::collections::BTreeSet::new();
    for provider in &s.oidc {
        let config = oidc_config(provider)?;
        if config.name == GITHUB || !seen.insert(config.name.clone()) {
            return Err(ConfigError::new(
                "oidc_providers",
                format!("{} is listed twice, or is `github`", config.name),
            ));
        }
        oidc.push(config);
    }
    Ok(OAuthConfig {
        redirect_uris,
        api_url,
        github,
        oidc,
    })
}

fn github_config(s: &Settings) -> Result<Option<GitHubConfig>, ConfigError> {
    let id = present(s.github_client_id.as_deref());
    let secret = s
        .github_client_secret
        .as_ref()
        .filter(|secret| !secret.expose_secret().trim().is_empty());
    match (id, secret) {
        (None, None) => Ok(None),
        (Some(client_id), Some(secret)) => Ok(Some(GitHubConfig {
            client_id,
            client_secret: secret.clone(),
            web_url: base_url("github_url", &s.github_url)?,
            api_url: base_url("github_api_url", &s.github_api_url)?,
        })),
        (Some(_), None) => Err(ConfigError::new(
            "github_client_secret",
            "DT_USERS_GITHUB_CLIENT_ID is set: set the secret too",
        )),
        (None, Some(_)) => Err(ConfigError::new(
            "github_client_id",
            "DT_USERS_GITHUB_CLIENT_SECRET is set: set the client id too",
        )),
    }
}

fn oidc_config(p: &OidcSettings) -> Result<OidcConfig, ConfigError> {
    let name = p.name.clone();
    if name.len() > 32
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(ConfigError::new(
            "oidc_providers",
            format!("{name}: a name is at most 32 of a-z, 0-9 and -"),
        ));
    }
    let required = |value: Option<&str>, setting: &str| {
        present(value).ok_or_else(|| {
            ConfigError::new(
                &oidc_field(&name, setting),
                format!("{name} is listed in DT_USERS_OIDC_PROVIDERS: set it"),
            )
        })
    };
    let issuer = required(p.issuer.as_deref(), "ISSUER")?;
    let issuer = base_url(&oidc_field(&name, "ISSUER"), &issuer)?;
    let client_id = required(p.client_id.as_deref(), "CLIENT_ID")?;
    let client_secret = p
        .client_secret
        .clone()
        .filter(|secret| !secret.expose_secret().trim().is_empty())
        .ok_or_else(|| {
            ConfigError::new(
                &oidc_field(&name, "CLIENT_SECRET"),
                format!("{name} is listed in DT_USERS_OIDC_PROVIDERS: set it"),
            )
        })?;
    let mut scopes: Vec<String> = present(p.scopes.as_deref())
        .unwrap_or_else(|| "openid email profile".to_owned())
        .split([' ', ','])
        .filter(|scope| !scope.is_empty())
        .map(str::to_owned)
        .collect();
    if !scopes.iter().any(|scope| scope == "openid") {
        scopes.insert(0, "openid".to_owned());
    }
    Ok(OidcConfig {
        name,
        issuer,
        client_id,
        client_secret,
        scopes,
    })
}

/// A provider's base URL: `https`, or `http` on a loopback host only (a provider run beside the
/// service, as in tests); no query or fragment.
fn base_url(field: &str, text: &str) -> Result<Url, ConfigError> {
    let parsed = url(field, text)?;
    let loopback = match parsed.host() {
        Some(url::Host::Domain(domain)) => domain == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if parsed.scheme() != "https" && !loopback {
        return Err(ConfigError::new(
            field,
            "must be an https URL (http only on a loopback address)",
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(ConfigError::new(
            field,
            "must be a base URL, without a query or a fragment",
        ));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_variables_are_read_by_name() {
        let vars = [
            ("DT_USERS_OIDC_CORP_SSO_ISSUER", "https://sso.example"),
            ("DT_USERS_OIDC_CORP_SSO_CLIENT_ID", "dt"),
            ("DT_USERS_OIDC_CORP_SSO_CLIENT_SECRET", "s3cret"),
            ("DT_USERS_OIDC_OTHER_ISSUER", "https://other.example"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let read = oidc_settings(" Corp-SSO ,,", vars);
        assert_eq!(read.len(), 1);
        let corp = read.first().map(oidc_config).and_then(Result::ok);
        let corp = corp.as_ref();
        assert_eq!(corp.map(|c| c.name.as_str()), Some("corp-sso"));
        assert_eq!(
            corp.map(|c| c.scopes.join(" ")),
            Some("openid email profile".to_owned())
        );
    }

    #[test]
    fn a_missing_provider_setting_names_its_variable() {
        let settings = OidcSettings {
            name: "corp".into(),
            issuer: Some("https://sso.example".into()),
            client_id: None,
            ..OidcSettings::default()
        };
        let error = oidc_config(&settings).err().map(|e| e.variable);
        assert_eq!(error.as_deref(), Some("DT_USERS_OIDC_CORP_CLIENT_ID"));
    }

    #[test]
    fn provider_urls_must_be_https_off_loopback() {
        assert!(base_url("github_url", "http://github.example").is_err());
        assert!(base_url("github_url", "http://127.0.0.1:9000").is_ok());
        assert!(base_url("github_url", "https://github.example/?q=1").is_err());
    }
}
