//! Kafka over TLS: the relay publishes and the consumer applies a command through it; a client
//! without TLS, or trusting another CA, gets nowhere; SASL/SCRAM credentials reach the broker;
//! settings librdkafka refuses stop start-up with the variable to fix.
//!
//! The broker is tansu 0.6.0. Its TLS options cannot be used (`--cert` and `--key` are
//! declared mutually exclusive, and it needs both), so TLS ends in a terminator in front of
//! it, here, with a throwaway certificate; tansu advertises the terminator's address, so every
//! client connection goes through TLS. With `--authentication` tansu checks SCRAM itself, but
//! no user can be created on such a broker (`tansu user create` does not authenticate, the
//! broker refuses it, and it offers no other mechanism), so SCRAM is tested up to the broker
//! refusing an unknown user, and the terminator records the handshake that reached it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dt_users::config::Settings;
use reqwest::StatusCode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{
    MFA_KEY, PASSWORD, SIGNING_KEY, TestApp, assert_problem, mysql_server_url, redis_url,
};
use crate::kafka::{Broker, Record, Sidecar, produce_with, read_until_with, with_kafka};

const USER: &str = "dt-users";
const SECRET: &str = "scram-Secret-7f3a9c";
const SASL_HANDSHAKE: i16 = 17;
const SASL_AUTHENTICATE: i16 = 36;

type Frames = Arc<std::sync::Mutex<Vec<Vec<u8>>>>;

/// A tansu broker behind TLS.
struct SecureKafka {
    _broker: Broker,
    _tls: Sidecar,
    dir: PathBuf,
    /// Where clients connect (the TLS side).
    bootstrap: String,
    /// The SASL requests that came through the terminator.
    sasl: Frames,
}

impl Drop for SecureKafka {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A self-signed certificate for 127.0.0.1 and localhost, made with the openssl command.
fn throwaway_certificate(dir: &Path) {
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("the openssl command");
    assert!(status.success(), "openssl could not make a certificate");
}

/// Reads one size-prefixed Kafka frame.
async fn read_frame(reader: &mut (impl AsyncReadExt + Unpin)) -> Option<Vec<u8>> {
    let size = reader.read_i32().await.ok()?;
    let mut frame = vec![0; usize::try_from(size).ok()?];
    reader.read_exact(&mut frame).await.ok()?;
    Some(frame)
}

/// Ends TLS from clients and passes the bytes on to the broker at `upstream`, keeping a copy
/// of the SASL requests.
fn terminate_tls(
    listener: std::net::TcpListener,
    dir: &Path,
    upstream: u16,
    sasl: Frames,
) -> Sidecar {
    let certs = CertificateDer::pem_file_iter(dir.join("cert.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("key.pem")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    Sidecar::spawn(listener, move |listener| async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let sasl = sasl.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(inbound).await else {
                    return;
                };
                let Ok(broker) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    return;
                };
                let (mut client_in, mut client_out) = tokio::io::split(tls);
                let (mut broker_in, mut broker_out) = broker.into_split();
                let requests = async move {
                    while let Some(frame) = read_frame(&mut client_in).await {
                        let api_key = i16::from_be_bytes([frame[0], frame[1]]);
                        if api_key == SASL_HANDSHAKE || api_key == SASL_AUTHENTICATE {
                            sasl.lock().unwrap().push(frame.clone());
                        }
                        let size = i32::try_from(frame.len()).unwrap();
                        if broker_out.write_i32(size).await.is_err()
                            || broker_out.write_all(&frame).await.is_err()
                        {
                            return;
                        }
                    }
                };
                let responses = async move {
                    let _ = tokio::io::copy(&mut broker_in, &mut client_out).await;
                    let _ = client_out.shutdown().await;
                };
                tokio::join!(requests, responses);
            });
        }
    })
}

impl SecureKafka {
    /// tansu behind TLS; with `authentication`, it wants SASL/SCRAM from every client.
    async fn start(authentication: bool) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "dt-users-kafka-tls-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        throwaway_certificate(&dir);
        let tls_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let bootstrap = tls_listener.local_addr().unwrap().to_string();
        let mut broker = Broker::reserved();
        let listen = format!("tcp://{}", broker.bootstrap());
        let advertise = format!("tcp://{bootstrap}");
        let mut args = vec![
            "--listener-url",
            &listen,
            "--advertised-listener-url",
            &advertise,
        ];
        if authentication {
            args.push("--authentication");
        }
        broker.spawn(&args).await;
        let sasl = Frames::default();
        let tls = terminate_tls(tls_listener, &dir, broker.port, sasl.clone());
        let kafka = Self {
            _broker: broker,
            _tls: tls,
            dir,
            bootstrap,
            sasl,
        };
        if !authentication {
            let mut settings = Settings::default();
            kafka.configure(&mut settings, None);
            let kafka = settings.validate().unwrap().kafka.unwrap();
            dt_users::events::create_topics(&kafka, 1, 1).await.unwrap();
        }
        kafka
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    /// dt-users settings for this broker: TLS, and SCRAM-SHA-256 with `password` if given.
    fn configure(&self, settings: &mut Settings, password: Option<&str>) {
        with_kafka(settings, &self.bootstrap);
        settings.kafka_ssl_ca_location = Some(self.ca());
        settings.kafka_security_protocol = Some("ssl".into());
        if let Some(password) = password {
            settings.kafka_security_protocol = Some("sasl_ssl".into());
            settings.kafka_sasl_mechanism = Some("SCRAM-SHA-256".into());
            settings.kafka_sasl_username = Some(USER.into());
            settings.kafka_sasl_password = Some(password.into());
        }
    }

    /// The same (without SASL), as librdkafka properties for the test's own clients.
    fn properties(&self) -> Vec<(&'static str, String)> {
        vec![
            ("bootstrap.servers", self.bootstrap.clone()),
            ("security.protocol", "ssl".into()),
            ("ssl.ca.location", self.ca().to_string_lossy().into_owned()),
        ]
    }

    /// Reads `topic` over TLS until `done` or `limit`.
    async fn read(
        &self,
        topic: &'static str,
        limit: Duration,
        done: impl Fn(&[Record]) -> bool + Send + 'static,
    ) -> Vec<Record> {
        let properties = self.properties();
        tokio::task::spawn_blocking(move || {
            let properties: Vec<(&str, &str)> =
                properties.iter().map(|(k, v)| (*k, v.as_str())).collect();
            read_until_with(&properties, topic, limit, done)
        })
        .await
        .unwrap()
    }
}

async fn wait_for(limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let started = std::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "timed out");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn events_and_commands_flow_over_tls() {
    let kafka = SecureKafka::start(false).await;
    let app = TestApp::spawn_with(|s| kafka.configure(s, None)).await;
    let user = app.register("ada@example.com", "ada").await;
    let user_id = user["id"].as_str().unwrap().to_owned();

    let key = user_id.clone();
    let events = kafka
        .read("devtalk.users.events", Duration::from_secs(30), move |r| {
            r.iter().any(|r| r.key == key)
        })
        .await;
    assert!(
        events
            .iter()
            .any(|r| r.key == user_id && r.value["type"] == "devtalk.user.registered"),
        "the registration was published over TLS"
    );

    let properties = kafka.properties();
    let properties: Vec<(&str, &str)> = properties.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let ban = json!({
        "specversion": "1.0", "id": "ban-tls", "source": "moderation", "type": "devtalk.user.ban",
        "data": {"user_id": user_id, "reason": "spam"}
    })
    .to_string();
    produce_with(
        &properties,
        "devtalk.users.commands",
        &user_id,
        ban.as_bytes(),
    )
    .await;
    wait_for(Duration::from_secs(60), async || {
        app.login("ada@example.com", PASSWORD).await.status() == StatusCode::FORBIDDEN
    })
    .await;
    assert_problem(
        app.login("ada@example.com", PASSWORD).await,
        StatusCode::FORBIDDEN,
        "account_banned",
    )
    .await;
    let ready = app.readiness().await.1;
    assert_eq!(ready["checks"]["kafka"]["status"], "up", "{ready}");
}

#[tokio::test]
async fn a_client_without_tls_or_trusting_another_ca_gets_nowhere() {
    let kafka = SecureKafka::start(false).await;
    let without_tls = TestApp::spawn_with(|s| {
        kafka.configure(s, None);
        s.kafka_security_protocol = None;
        s.kafka_ssl_ca_location = None;
        s.kafka_message_timeout_ms = 2_000;
    })
    .await;
    // The system's CAs do not include the throwaway certificate.
    let other_ca = TestApp::spawn_with(|s| {
        kafka.configure(s, None);
        s.kafka_ssl_ca_location = Some("/etc/ssl/certs/ca-certificates.crt".into());
        s.kafka_message_timeout_ms = 2_000;
    })
    .await;
    let mut users = Vec::new();
    for (app, email) in [
        (&without_tls, "plain@example.com"),
        (&other_ca, "untrusting@example.com"),
    ] {
        let user = app.register(email, email.split('@').next().unwrap()).await;
        users.push(user["id"].as_str().unwrap().to_owned());
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    for app in [&without_tls, &other_ca] {
        let ready = app.readiness().await.1;
        assert_eq!(ready["checks"]["kafka"]["status"], "down", "{ready}");
        assert!(
            ready["outbox"]["events"]["pending"].as_i64().unwrap() >= 1,
            "{ready}"
        );
    }
    let events = kafka
        .read("devtalk.users.events", Duration::from_secs(5), |_| false)
        .await;
    assert!(
        events.iter().all(|r| !users.contains(&r.key)),
        "nothing was published"
    );
}

#[tokio::test]
async fn scram_credentials_reach_the_broker_and_a_refused_login_publishes_nothing() {
    let kafka = SecureKafka::start(true).await;
    let app = TestApp::spawn_with(|s| {
        kafka.configure(s, Some(SECRET));
        s.kafka_message_timeout_ms = 2_000;
    })
    .await;
    app.register("ada@example.com", "ada").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    // The broker knows no user (see the module's comment), so it refuses the login.
    let ready = app.readiness().await.1;
    assert_eq!(ready["checks"]["kafka"]["status"], "down", "{ready}");
    assert!(
        ready["outbox"]["events"]["pending"].as_i64().unwrap() >= 1,
        "{ready}"
    );
    let sasl = kafka.sasl.lock().unwrap().clone();
    let seen = |needle: &[u8]| {
        sasl.iter()
            .any(|f| f.windows(needle.len()).any(|w| w == needle))
    };
    assert!(
        seen(b"SCRAM-SHA-256"),
        "the SCRAM handshake reached the broker"
    );
    assert!(
        seen(format!("n={USER},r=").as_bytes()),
        "the SCRAM login of the configured user reached the broker"
    );
    assert!(!seen(SECRET.as_bytes()), "SCRAM never sends the password");
}

#[tokio::test]
async fn refused_kafka_settings_stop_start_up_naming_their_variable() {
    let app = TestApp::spawn().await;
    let start = |env: &[(&str, &str)]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_dt-users"));
        command
            .arg("relay")
            .env(
                "DT_USERS_DATABASE_URL",
                format!("{}/{}", mysql_server_url(), app.db_name),
            )
            .env("DT_USERS_REDIS_URL", redis_url())
            .env("DT_USERS_REDIS_KEY_PREFIX", &app.redis_prefix)
            .env("DT_USERS_JOBS_URL", redis_url())
            .env(
                "DT_USERS_JOBS_NAMESPACE",
                format!("{}:jobs", app.redis_prefix),
            )
            .env("DT_USERS_SIGNING_KEYS", SIGNING_KEY.as_str())
            .env("DT_USERS_MFA_ENCRYPTION_KEY", MFA_KEY.as_str())
            .env("DT_USERS_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
            .env("DT_USERS_KAFKA_SASL_PASSWORD", SECRET);
        for (name, value) in env {
            command.env(name, value);
        }
        let output = command.output().unwrap();
        assert!(!output.status.success(), "start-up refused");
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    };
    let cases: [(&[(&str, &str)], &str); 3] = [
        (
            &[
                ("DT_USERS_KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
                ("DT_USERS_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256"),
                ("DT_USERS_KAFKA_SASL_USERNAME", USER),
                ("DT_USERS_KAFKA_SSL_CA_LOCATION", "/nonexistent/ca.pem"),
            ],
            "DT_USERS_KAFKA_SSL_CA_LOCATION: ssl.ca.location failed",
        ),
        (
            &[
                ("DT_USERS_KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
                ("DT_USERS_KAFKA_SASL_MECHANISM", "SCRAM-SHA-1024"),
                ("DT_USERS_KAFKA_SASL_USERNAME", USER),
            ],
            "DT_USERS_KAFKA_SASL_MECHANISM: ",
        ),
        (
            &[
                ("DT_USERS_KAFKA_SECURITY_PROTOCOL", "sasl_plaintext"),
                ("DT_USERS_KAFKA_SASL_MECHANISM", "PLAIN"),
                ("DT_USERS_KAFKA_SASL_USERNAME", USER),
                ("DT_USERS_KAFKA_PROPERTIES_SOCKET_TIMEOUT_MS", "soon"),
            ],
            "DT_USERS_KAFKA_PROPERTIES_SOCKET_TIMEOUT_MS: librdkafka refused the value",
        ),
    ];
    for (env, expected) in cases {
        let output = start(env);
        assert!(output.contains(expected), "{expected:?} in {output}");
        assert!(!output.contains(SECRET), "no secret in {output}");
    }
}
