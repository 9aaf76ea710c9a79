//! The Ed25519 keys that sign access tokens, and the JWKS that publishes them.

use std::collections::HashMap;
use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{DecodingKey, EncodingKey};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "no signing key is configured: set DT_USERS_SIGNING_KEYS or DT_USERS_SIGNING_KEYS_FILE"
    )]
    Missing,
    #[error("signing keys: {0}")]
    Invalid(String),
    #[error(
        "no two-factor sealing key is configured: set DT_USERS_MFA_ENCRYPTION_KEY (32 random bytes, base64)"
    )]
    MissingMfaKey,
    #[error("DT_USERS_MFA_ENCRYPTION_KEY: {0}")]
    InvalidMfaKey(String),
    #[error("key file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// One verification key, named by its `kid` (the RFC 7638 JWK thumbprint).
struct PublicKey {
    jwk: Value,
    decoding: DecodingKey,
}

/// The signing key and every key that verifies. The first configured key signs; the others
/// only verify, so a new key can be introduced while tokens signed by an old one stay valid.
pub struct SigningKeys {
    signing_kid: String,
    /// A secret derived from each key, in the configured order, named by the key's `kid`: the
    /// emailed tokens' secrets when none are configured (see `EmailTokens`).
    token_secrets: Vec<(String, Vec<u8>)>,
    encoding: EncodingKey,
    verifying: HashMap<String, PublicKey>,
    jwks: Value,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeys")
            .field("signing_kid", &self.signing_kid)
            .field("kids", &self.verifying.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl SigningKeys {
    /// Loads the configured keys (`pem`, or else the file `file`). With none configured, the
    /// embedded default keeps one in `embedded_dir` (generated on first start); any other
    /// setup (`embedded_dir` is `None`) must configure its keys.
    pub fn load(
        pem: Option<&SecretString>,
        file: Option<&Path>,
        embedded_dir: Option<&Path>,
    ) -> Result<Self, KeyError> {
        if let Some(pem) = pem {
            return Self::from_pem(pem.expose_secret().as_bytes());
        }
        if let Some(path) = file {
            let pem = read(path)?;
            return Self::from_pem(&pem);
        }
        let Some(dir) = embedded_dir else {
            return Err(KeyError::Missing);
        };
        let path = dir.join("signing-key.pem");
        if path.exists() {
            return Self::from_pem(&read(&path)?);
        }
        let pem = generate_pem()?;
        write_private(&path, &pem)?;
        tracing::info!(path = %path.display(), "generated a new Ed25519 signing key for the embedded default");
        Self::from_pem(pem.as_bytes())
    }

    /// Parses one or more PKCS#8 `PRIVATE KEY` PEM blocks.
    pub fn from_pem(pem_text: &[u8]) -> Result<Self, KeyError> {
        let blocks = pem::parse_many(pem_text).map_err(|e| KeyError::Invalid(e.to_string()))?;
        let mut signing = None;
        let mut token_secrets = Vec::new();
        let mut verifying = HashMap::new();
        let mut jwks = Vec::new();
        for block in blocks.iter().filter(|b| b.tag() == "PRIVATE KEY") {
            let pair = Ed25519KeyPair::from_pkcs8(block.contents()).map_err(|_| {
                KeyError::Invalid("a key is not a PKCS#8 Ed25519 private key".into())
            })?;
            let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
            let kid = thumbprint(&x);
            let decoding = DecodingKey::from_ed_components(&x)
                .map_err(|e| KeyError::Invalid(e.to_string()))?;
            let jwk = json!({
                "kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"
            });
            if signing.is_none() {
                signing = Some((kid.clone(), EncodingKey::from_ed_der(block.contents())));
            }
            if let std::collections::hash_map::Entry::Vacant(slot) = verifying.entry(kid.clone()) {
                let mut hasher = Sha256::new();
                hasher.update(b"dt-users/email-token/v1\0");
                hasher.update(block.contents());
                token_secrets.push((kid, hasher.finalize().to_vec()));
                jwks.push(jwk.clone());
                slot.insert(PublicKey { jwk, decoding });
            }
        }
        let (signing_kid, encoding) = signing.ok_or_else(|| {
            KeyError::Invalid("no `-----BEGIN PRIVATE KEY-----` block was found".into())
        })?;
        Ok(Self {
            signing_kid,
            token_secrets,
            encoding,
            verifying,
            jwks: json!({ "keys": jwks }),
        })
    }

    pub fn signing_kid(&self) -> &str {
        &self.signing_kid
    }

    /// A 256-bit secret derived from each key, the signing key's first, named by `kid`.
    pub fn token_secrets(&self) -> Vec<(String, Vec<u8>)> {
        self.token_secrets.clone()
    }

    pub fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }

    pub fn decoding_key(&self, kid: &str) -> Option<&DecodingKey> {
        self.verifying.get(kid).map(|k| &k.decoding)
    }

    pub fn jwk(&self, kid: &str) -> Option<&Value> {
        self.verifying.get(kid).map(|k| &k.jwk)
    }

    /// `{"keys": [...]}`, every verification key.
    pub fn jwks(&self) -> &Value {
        &self.jwks
    }
}

/// RFC 7638 thumbprint of an Ed25519 JWK: SHA-256 over its required members in order.
fn thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// A fresh Ed25519 key as a PKCS#8 PEM block.
pub fn generate_pem() -> Result<String, KeyError> {
    let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| KeyError::Invalid("could not generate an Ed25519 key".into()))?;
    Ok(pem::encode(&pem::Pem::new(
        "PRIVATE KEY",
        document.as_ref().to_vec(),
    )))
}

pub(super) fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Io {
        path: path.display().to_string(),
        source,
    })
}

pub(super) fn write_private(path: &Path, contents: &str) -> Result<(), KeyError> {
    use std::io::Write;
    let io = |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_keys_all_verify_and_the_first_signs() {
        let first = generate_pem().unwrap();
        let second = generate_pem().unwrap();
        let keys = SigningKeys::from_pem(format!("{first}\n{second}").as_bytes()).unwrap();
        let only_first = SigningKeys::from_pem(first.as_bytes()).unwrap();
        assert_eq!(keys.signing_kid(), only_first.signing_kid());
        assert_eq!(keys.jwks()["keys"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn garbage_is_refused() {
        assert!(SigningKeys::from_pem(b"not a key").is_err());
        let public_only = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        assert!(SigningKeys::from_pem(public_only.as_bytes()).is_err());
    }
}
