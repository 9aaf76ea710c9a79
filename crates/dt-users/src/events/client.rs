//! The one place Kafka clients get their connection and security settings, so that the relay,
//! the command consumer, the DLQ producer, the readiness probe and the admin client cannot
//! drift apart (a probe without TLS would call a healthy cluster down).

use rdkafka::ClientConfig;
use rdkafka::config::FromClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaConfRes;
use secrecy::{ExposeSecret, SecretString};

use crate::config::KafkaSettings;

/// librdkafka properties that have a variable of their own: the passthrough may not set them,
/// so that one setting has one place and a value cannot silently lose to another.
const OWNED: &[(&str, &str)] = &[
    ("bootstrap.servers", "DT_USERS_KAFKA_BOOTSTRAP_SERVERS"),
    ("metadata.broker.list", "DT_USERS_KAFKA_BOOTSTRAP_SERVERS"),
    ("security.protocol", "DT_USERS_KAFKA_SECURITY_PROTOCOL"),
    ("sasl.mechanism", "DT_USERS_KAFKA_SASL_MECHANISM"),
    ("sasl.mechanisms", "DT_USERS_KAFKA_SASL_MECHANISM"),
    ("sasl.username", "DT_USERS_KAFKA_SASL_USERNAME"),
    ("sasl.password", "DT_USERS_KAFKA_SASL_PASSWORD"),
    ("ssl.ca.location", "DT_USERS_KAFKA_SSL_CA_LOCATION"),
    (
        "ssl.certificate.location",
        "DT_USERS_KAFKA_SSL_CERTIFICATE_LOCATION",
    ),
    ("ssl.key.location", "DT_USERS_KAFKA_SSL_KEY_LOCATION"),
    ("ssl.key.password", "DT_USERS_KAFKA_SSL_KEY_PASSWORD"),
    ("group.id", "DT_USERS_KAFKA_GROUP_ID"),
    ("enable.idempotence", "DT_USERS_KAFKA_IDEMPOTENCE"),
    ("message.timeout.ms", "DT_USERS_KAFKA_MESSAGE_TIMEOUT_MS"),
    ("delivery.timeout.ms", "DT_USERS_KAFKA_MESSAGE_TIMEOUT_MS"),
    ("session.timeout.ms", "DT_USERS_KAFKA_SESSION_TIMEOUT_MS"),
    (
        "heartbeat.interval.ms",
        "DT_USERS_KAFKA_HEARTBEAT_INTERVAL_MS",
    ),
    ("fetch.wait.max.ms", "DT_USERS_KAFKA_FETCH_WAIT_MAX_MS"),
];

/// Properties dt-users sets itself because a guarantee rests on their value (acknowledgement
/// by every replica, ordering without idempotence, the relay lease's bound, commits after the
/// effect, no topic created behind the operator's back).
const GUARDED: &[&str] = &[
    "acks",
    "request.required.acks",
    "request.timeout.ms",
    "max.in.flight",
    "max.in.flight.requests.per.connection",
    "enable.auto.commit",
    "auto.offset.reset",
    "allow.auto.create.topics",
    "transactional.id",
];

/// How librdkafka's start-up errors refer to a property without naming it.
const PHRASES: &[(&str, &str)] = &[
    ("sasl.mechanisms", "SASL mechanism"),
    // "Unsupported hash function: SCRAM-SHA-1024"
    ("sasl.mechanisms", "hash function"),
];

/// Where a property came from, so that an error can name what the operator should fix.
#[derive(Debug, Clone)]
enum Origin {
    /// A `DT_USERS_` variable.
    Variable(String),
    /// Chosen by dt-users.
    Internal,
}

/// A librdkafka configuration that remembers, for each property, the variable it came from,
/// and which values are secret. Its `Debug` shows property names only.
#[derive(Clone)]
pub struct KafkaConfig {
    config: ClientConfig,
    origins: Vec<(String, Origin)>,
    /// Values that must never appear in a message: passwords and every passthrough value.
    secrets: Vec<SecretString>,
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field(
                "properties",
                &self.origins.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// The variable that carries librdkafka property `key` through the passthrough.
fn passthrough_variable(key: &str) -> String {
    format!(
        "DT_USERS_KAFKA_PROPERTIES_{}",
        key.to_uppercase().replace('.', "_")
    )
}

/// A setting that is set and not blank (an empty variable reads as "not set").
fn present(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

impl KafkaConfig {
    fn empty() -> Self {
        Self {
            config: ClientConfig::new(),
            origins: Vec::new(),
            secrets: Vec::new(),
        }
    }

    fn put(&mut self, key: &str, value: &str, origin: Origin) {
        self.config.set(key, value);
        self.origins.retain(|(k, _)| k != key);
        self.origins.push((key.to_owned(), origin));
    }

    /// Sets a property dt-users chooses for a client role, after the passthrough (which may
    /// not name the properties a guarantee rests on).
    pub fn set(&mut self, key: &str, value: impl AsRef<str>) -> &mut Self {
        self.put(key, value.as_ref(), Origin::Internal);
        self
    }

    /// Sets a property from the setting `variable`.
    pub fn set_from(&mut self, key: &str, value: impl AsRef<str>, variable: &str) -> &mut Self {
        self.put(key, value.as_ref(), Origin::Variable(variable.to_owned()));
        self
    }

    /// Sets a tuning default unless the passthrough set it (or one of its `aliases`).
    pub fn set_default(&mut self, key: &str, aliases: &[&str], value: &str) -> &mut Self {
        let taken = std::iter::once(key)
            .chain(aliases.iter().copied())
            .any(|k| self.config.get(k).is_some());
        if !taken {
            self.put(key, value, Origin::Internal);
        }
        self
    }

    /// The value of `key`, if set (never call it for a secret).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.config.get(key)
    }

    /// Creates a client, turning librdkafka's refusal into a message that names the variable
    /// to fix and carries no secret.
    pub fn create<T: FromClientConfig>(&self) -> Result<T, String> {
        self.config.create().map_err(|e| self.explain(&e))
    }

    fn variable_of(&self, key: &str) -> Option<&str> {
        self.origins
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, origin)| match origin {
                Origin::Variable(v) => Some(v.as_str()),
                Origin::Internal => None,
            })
    }

    /// `text` with every secret value replaced.
    fn redact(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in &self.secrets {
            let secret = secret.expose_secret();
            if !secret.is_empty() {
                text = text.replace(secret, "[redacted]");
            }
        }
        text
    }

    fn explain(&self, error: &KafkaError) -> String {
        match error {
            KafkaError::ClientConfig(code, description, key, _) => {
                let subject = self
                    .variable_of(key)
                    .map_or_else(|| format!("Kafka property {key}"), str::to_owned);
                match code {
                    RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN => {
                        format!("{subject}: librdkafka has no property {key:?}")
                    }
                    _ => format!(
                        "{subject}: librdkafka refused the value: {}",
                        self.redact(description)
                    ),
                }
            }
            KafkaError::ClientCreation(reason) => {
                // librdkafka names the property at fault in its message ("ssl.ca.location
                // failed: …"); translate it to the variable.
                let mentioned = |key: &str| {
                    reason.contains(key)
                        || PHRASES
                            .iter()
                            .any(|(k, phrase)| *k == key && reason.contains(phrase))
                };
                // Properties set (from their variables or the passthrough), then those with a
                // variable of their own that were left unset ("sasl.username … must be set").
                let set = self
                    .origins
                    .iter()
                    .filter(|(key, _)| mentioned(key))
                    .filter_map(|(key, _)| self.variable_of(key));
                let unset = OWNED
                    .iter()
                    .filter(|(key, _)| mentioned(key))
                    .map(|(_, variable)| *variable);
                let mut variables: Vec<&str> = Vec::new();
                for variable in set.chain(unset) {
                    if !variables.contains(&variable) {
                        variables.push(variable);
                    }
                }
                let reason = self.redact(reason);
                if variables.is_empty() {
                    format!("Kafka client: {reason}")
                } else {
                    format!("{}: {reason}", variables.join(", "))
                }
            }
            other => format!("Kafka client: {}", self.redact(&other.to_string())),
        }
    }
}

/// The configuration every Kafka client starts from: the bootstrap servers, then the security
/// settings, then the `DT_USERS_KAFKA_PROPERTIES_*` passthrough. Fails, naming the variable,
/// on a combination that cannot be what the operator meant (TLS files with a plaintext
/// protocol would connect without TLS).
pub fn base_config(kafka: &KafkaSettings) -> Result<KafkaConfig, String> {
    let mut config = KafkaConfig::empty();
    let bootstrap = &kafka.bootstrap_servers;
    config.set_from(
        "bootstrap.servers",
        bootstrap.trim(),
        "DT_USERS_KAFKA_BOOTSTRAP_SERVERS",
    );
    config.set("client.id", "dt-users");
    security(kafka, &mut config)?;
    for (key, value) in &kafka.properties {
        let variable = passthrough_variable(key);
        if let Some((_, owner)) = OWNED.iter().find(|(k, _)| k == key) {
            return Err(format!("{variable}: use {owner} instead"));
        }
        if GUARDED.contains(&key.as_str()) {
            return Err(format!(
                "{variable}: dt-users sets {key} itself (a delivery or ordering guarantee depends on it)"
            ));
        }
        config.set_from(key, value.expose_secret(), &variable);
        config.secrets.push(value.clone());
    }
    Ok(config)
}

fn security(kafka: &KafkaSettings, config: &mut KafkaConfig) -> Result<(), String> {
    let protocol = present(kafka.security_protocol.as_deref());
    let normalized = protocol.map(str::to_ascii_lowercase);
    let tls = matches!(normalized.as_deref(), Some("ssl" | "sasl_ssl"));
    let sasl = matches!(normalized.as_deref(), Some("sasl_plaintext" | "sasl_ssl"));
    let shown = protocol.unwrap_or("unset, so plaintext");
    if let Some(protocol) = protocol {
        config.set_from(
            "security.protocol",
            protocol,
            "DT_USERS_KAFKA_SECURITY_PROTOCOL",
        );
    }

    let paths = [
        (
            "ssl.ca.location",
            kafka.ssl_ca_location.as_deref(),
            "DT_USERS_KAFKA_SSL_CA_LOCATION",
        ),
        (
            "ssl.certificate.location",
            kafka.ssl_certificate_location.as_deref(),
            "DT_USERS_KAFKA_SSL_CERTIFICATE_LOCATION",
        ),
        (
            "ssl.key.location",
            kafka.ssl_key_location.as_deref(),
            "DT_USERS_KAFKA_SSL_KEY_LOCATION",
        ),
    ];
    for (key, path, variable) in paths {
        let Some(path) = path.filter(|p| !p.as_os_str().is_empty()) else {
            continue;
        };
        if !tls {
            return Err(format!(
                "{variable}: set, but DT_USERS_KAFKA_SECURITY_PROTOCOL ({shown}) does not use TLS; set it to ssl or sasl_ssl"
            ));
        }
        let path = path
            .to_str()
            .ok_or_else(|| format!("{variable}: the path is not valid UTF-8"))?;
        config.set_from(key, path, variable);
    }
    if let Some(password) = &kafka.ssl_key_password {
        if !tls {
            return Err(format!(
                "DT_USERS_KAFKA_SSL_KEY_PASSWORD: set, but DT_USERS_KAFKA_SECURITY_PROTOCOL ({shown}) does not use TLS"
            ));
        }
        config.set_from(
            "ssl.key.password",
            password.expose_secret(),
            "DT_USERS_KAFKA_SSL_KEY_PASSWORD",
        );
        config.secrets.push(password.clone());
    }

    let mechanism = present(kafka.sasl_mechanism.as_deref());
    let username = present(kafka.sasl_username.as_deref());
    for (variable, given) in [
        ("DT_USERS_KAFKA_SASL_MECHANISM", mechanism.is_some()),
        ("DT_USERS_KAFKA_SASL_USERNAME", username.is_some()),
        (
            "DT_USERS_KAFKA_SASL_PASSWORD",
            kafka.sasl_password.is_some(),
        ),
    ] {
        if given && !sasl {
            return Err(format!(
                "{variable}: set, but DT_USERS_KAFKA_SECURITY_PROTOCOL ({shown}) does not authenticate; set it to sasl_ssl or sasl_plaintext"
            ));
        }
    }
    if sasl {
        // librdkafka would default to GSSAPI, which this build does not carry.
        let mechanism = mechanism.ok_or(
            "DT_USERS_KAFKA_SASL_MECHANISM: required with a sasl_* security protocol (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)",
        )?;
        config.set_from(
            "sasl.mechanisms",
            mechanism,
            "DT_USERS_KAFKA_SASL_MECHANISM",
        );
        if let Some(username) = username {
            config.set_from("sasl.username", username, "DT_USERS_KAFKA_SASL_USERNAME");
        }
        if let Some(password) = &kafka.sasl_password {
            config.set_from(
                "sasl.password",
                password.expose_secret(),
                "DT_USERS_KAFKA_SASL_PASSWORD",
            );
            config.secrets.push(password.clone());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use rdkafka::producer::BaseProducer;

    fn settings() -> Settings {
        Settings {
            kafka_bootstrap_servers: Some("127.0.0.1:9".into()),
            ..Settings::default()
        }
    }

    fn refusal(settings: &Settings) -> String {
        let kafka = match settings.validate() {
            Ok(config) => config.kafka.unwrap(),
            Err(e) => return e.to_string(),
        };
        match base_config(&kafka).and_then(|c| c.create::<BaseProducer>().map(|_| ())) {
            Ok(()) => String::from("accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_bad_protocol_names_its_variable() {
        let mut s = settings();
        s.kafka_security_protocol = Some("tls-please".into());
        let error = refusal(&s);
        assert!(
            error.starts_with("DT_USERS_KAFKA_SECURITY_PROTOCOL: "),
            "{error}"
        );
    }

    #[test]
    fn a_missing_ca_file_names_its_variable() {
        let mut s = settings();
        s.kafka_security_protocol = Some("ssl".into());
        s.kafka_ssl_ca_location = Some("/nonexistent/dt-users-ca.pem".into());
        let error = refusal(&s);
        assert!(
            error.starts_with("DT_USERS_KAFKA_SSL_CA_LOCATION: "),
            "{error}"
        );
    }

    #[test]
    fn tls_files_without_a_tls_protocol_are_refused() {
        let mut s = settings();
        s.kafka_ssl_ca_location = Some("/etc/ssl/certs/ca-certificates.crt".into());
        let error = refusal(&s);
        assert!(
            error.starts_with("DT_USERS_KAFKA_SSL_CA_LOCATION: set, but"),
            "{error}"
        );
        let mut s = settings();
        s.kafka_security_protocol = Some("ssl".into());
        s.kafka_sasl_username = Some("ada".into());
        assert!(refusal(&s).starts_with("DT_USERS_KAFKA_SASL_USERNAME: set, but"));
        let mut s = settings();
        s.kafka_security_protocol = Some("SASL_SSL".into());
        assert!(refusal(&s).starts_with("DT_USERS_KAFKA_SASL_MECHANISM: required"));
        s.kafka_sasl_mechanism = Some("SCRAM-SHA-256".into());
        let error = refusal(&s);
        assert_eq!(
            error,
            "DT_USERS_KAFKA_SASL_USERNAME, DT_USERS_KAFKA_SASL_PASSWORD: sasl.username and sasl.password must be set"
        );
        s.kafka_sasl_username = Some("ada".into());
        s.kafka_sasl_password = Some("pw".into());
        s.kafka_sasl_mechanism = Some("SCRAM-SHA-1024".into());
        let error = refusal(&s);
        assert!(
            error.starts_with("DT_USERS_KAFKA_SASL_MECHANISM: "),
            "{error}"
        );
    }

    #[test]
    fn the_passthrough_names_its_variable_and_may_not_override() {
        let mut s = settings();
        s.kafka_properties = vec![("no.such.property".into(), "1".into())];
        assert_eq!(
            refusal(&s),
            "DT_USERS_KAFKA_PROPERTIES_NO_SUCH_PROPERTY: librdkafka has no property \"no.such.property\""
        );
        s.kafka_properties = vec![("sasl.password".into(), "x".into())];
        assert_eq!(
            refusal(&s),
            "DT_USERS_KAFKA_PROPERTIES_SASL_PASSWORD: use DT_USERS_KAFKA_SASL_PASSWORD instead"
        );
        s.kafka_properties = vec![("acks".into(), "1".into())];
        assert!(refusal(&s).starts_with("DT_USERS_KAFKA_PROPERTIES_ACKS: dt-users sets acks"));
        s.kafka_properties = vec![("client.id".into(), "relay-7".into())];
        assert_eq!(refusal(&s), "accepted");
        assert_eq!(
            base_config(&s.validate().unwrap().kafka.unwrap())
                .unwrap()
                .get("client.id"),
            Some("relay-7")
        );
    }

    #[test]
    fn secrets_reach_no_message_and_no_debug() {
        let secret = "s3cret-Value-4242";
        let mut s = settings();
        s.kafka_security_protocol = Some("sasl_ssl".into());
        s.kafka_sasl_mechanism = Some("SCRAM-SHA-256".into());
        s.kafka_sasl_username = Some("ada".into());
        s.kafka_sasl_password = Some(secret.into());
        s.kafka_ssl_key_password = Some(secret.into());
        s.kafka_properties = vec![("linger.ms".into(), secret.into())];
        let config = base_config(&s.validate().unwrap().kafka.unwrap()).unwrap();
        let error = refusal(&s);
        assert!(
            error.starts_with("DT_USERS_KAFKA_PROPERTIES_LINGER_MS: "),
            "{error}"
        );
        assert!(!error.contains(secret), "{error}");
        assert!(!format!("{config:?}").contains(secret));
        assert!(!format!("{s:?}").contains(secret));
    }
}
