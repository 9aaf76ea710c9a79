//! The settings against the README, and the refusal of unusable values.

use std::collections::BTreeMap;

use super::*;

const README: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"));

/// The fields serde reads into `Settings`, as it declares them.
fn fields() -> Vec<&'static str> {
    struct Fields(Vec<&'static str>);
    #[derive(Debug)]
    struct Done;
    impl std::fmt::Display for Done {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("done")
        }
    }
    impl std::error::Error for Done {}
    impl serde::de::Error for Done {
        fn custom<T: std::fmt::Display>(_: T) -> Self {
            Done
        }
    }
    impl<'de> serde::Deserializer<'de> for &mut Fields {
        type Error = Done;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Done> {
            Err(Done)
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Done> {
            self.0.extend(fields);
            Err(Done)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut fields = Fields(Vec::new());
    let _ = Settings::deserialize(&mut fields);
    fields.0
}

/// Each variable of the README's configuration table, with the default it gives (the
/// backticked values of the last column, in the order of the variables), if any.
fn documented() -> BTreeMap<String, Option<String>> {
    let mut rows = BTreeMap::new();
    for line in README.lines().filter(|l| l.starts_with("| `DT_USERS_")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        let (Some(names), Some(default)) = (cells.first(), cells.last()) else {
            continue;
        };
        let backticked = |cell: &str| -> Vec<String> {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect()
        };
        let defaults = backticked(default);
        let names = backticked(names);
        for (i, name) in names.iter().enumerate() {
            // `…_REFRESH` abbreviates the rate limits' common prefix.
            let name = name.replace('…', "DT_USERS_RATE_LIMIT");
            let default = (defaults.len() == names.len())
                .then(|| defaults.get(i).cloned())
                .flatten();
            rows.insert(name, default);
        }
    }
    rows
}

#[test]
fn every_setting_is_in_the_readme_and_every_variable_there_is_a_setting() {
    let documented = documented();
    let fields = fields();
    assert!(fields.len() > 50, "{fields:?}");
    for field in &fields {
        assert!(
            documented.contains_key(&variable_name(field)),
            "{} is not in the README's configuration table",
            variable_name(field)
        );
    }
    for name in documented.keys() {
        let known = name == "DT_USERS_KAFKA_PROPERTIES_<NAME>"
            || name.starts_with("DT_USERS_OIDC_<NAME>_")
            || name.starts_with('_')
            || fields.iter().any(|f| variable_name(f) == *name);
        assert!(known, "the README documents {name}, which is no setting");
    }
}

#[test]
fn the_defaults_in_the_readme_are_the_defaults_in_force() {
    let defaults = serde_json::to_value(Settings::default()).unwrap_or_default();
    let mut compared = 0;
    for (name, documented) in documented() {
        let field = name.trim_start_matches("DT_USERS_").to_ascii_lowercase();
        let in_force = match defaults.get(&field) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
            Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => v.to_string(),
            _ => continue,
        };
        if let Some(documented) = documented {
            assert_eq!(documented, in_force, "the README's default of {name}");
            compared += 1;
        }
    }
    assert!(compared > 40, "only {compared} defaults compared");
}

#[test]
fn the_defaults_are_a_valid_configuration() {
    let config = Settings::default().validate();
    assert!(config.is_ok(), "{config:?}");
}

#[test]
fn an_unusable_value_is_refused_naming_its_variable() {
    type Adjust = Box<dyn Fn(&mut Settings)>;
    let cases: Vec<(&str, Adjust)> = vec![
        (
            "DT_USERS_RATE_LIMIT_LOGIN_IP",
            Box::new(|s| s.rate_limit_login_ip = "10/0/1".into()),
        ),
        (
            "DT_USERS_RATE_LIMIT_REFRESH",
            Box::new(|s| s.rate_limit_refresh = "lots".into()),
        ),
        (
            "DT_USERS_TRUSTED_PROXIES",
            Box::new(|s| s.trusted_proxies = "10.0.0.0/33".into()),
        ),
        (
            "DT_USERS_FORWARDED_HEADER",
            Box::new(|s| s.forwarded_header = "x-real-ip".into()),
        ),
        (
            "DT_USERS_CORS_ALLOWED_ORIGINS",
            Box::new(|s| s.cors_allowed_origins = "https://a.example, devtalk.example".into()),
        ),
        (
            "DT_USERS_CORS_ALLOWED_ORIGINS",
            Box::new(|s| s.cors_allowed_origins = "https://a.example/".into()),
        ),
        (
            "DT_USERS_PUBLIC_URL",
            Box::new(|s| s.public_url = "devtalk.example".into()),
        ),
        (
            "DT_USERS_REDIS_URL",
            Box::new(|s| s.redis_url = Some("http://127.0.0.1:6379".into())),
        ),
        (
            "DT_USERS_REDIS_URL",
            Box::new(|s| s.redis_url = Some("redis://10.0.0.1:6379,redis://10.0.0.2:6379".into())),
        ),
        (
            "DT_USERS_REDIS_URL",
            Box::new(|s| {
                s.redis_cluster = true;
                s.redis_url = Some("redis://10.0.0.1:6379,unix:///run/redis.sock".into());
            }),
        ),
        (
            "DT_USERS_REDIS_URL",
            Box::new(|s| {
                s.redis_cluster = true;
                s.redis_url = Some("redis://10.0.0.1:6379/2".into());
            }),
        ),
        (
            "DT_USERS_REDIS_CLUSTER",
            Box::new(|s| s.redis_cluster = true),
        ),
        (
            "DT_USERS_REDIS_KEY_PREFIX",
            Box::new(|s| {
                s.redis_cluster = true;
                s.redis_url = Some("redis://10.0.0.1:6379".into());
                s.redis_key_prefix = "{dt-users}".into();
            }),
        ),
        (
            "DT_USERS_JOBS_URL",
            Box::new(|s| s.jobs_url = Some("redis://10.0.0.1:6379, redis://10.0.0.2:6379".into())),
        ),
        (
            "DT_USERS_SMTP_URL",
            Box::new(|s| s.smtp_url = Some("imap://mail.example".into())),
        ),
        (
            "DT_USERS_JOBS_URL",
            Box::new(|s| s.jobs_url = Some("not a url".into())),
        ),
        (
            "DT_USERS_EMAIL_FROM",
            Box::new(|s| s.email_from = "Dev Talk".into()),
        ),
        (
            "DT_USERS_ACCESS_TOKEN_LEEWAY",
            Box::new(|s| s.access_token_leeway = 6),
        ),
        (
            "DT_USERS_ACCESS_TOKEN_TTL",
            Box::new(|s| s.access_token_ttl = 0),
        ),
        (
            "DT_USERS_WORKER_CONCURRENCY",
            Box::new(|s| s.worker_concurrency = 0),
        ),
        (
            "DT_USERS_JOB_MAX_ATTEMPTS",
            Box::new(|s| s.job_max_attempts = 0),
        ),
        (
            "DT_USERS_JOBS_HEARTBEAT_SECS",
            Box::new(|s| s.jobs_heartbeat_secs = 0),
        ),
        (
            "DT_USERS_PURGE_INTERVAL",
            Box::new(|s| s.purge_interval = 0),
        ),
        ("DT_USERS_PURGE_BATCH", Box::new(|s| s.purge_batch = 0)),
        (
            "DT_USERS_SHUTDOWN_TIMEOUT_SECS",
            Box::new(|s| s.shutdown_timeout_secs = 0),
        ),
        (
            "DT_USERS_COMMAND_MAX_ATTEMPTS",
            Box::new(|s| s.command_max_attempts = 0),
        ),
        (
            "DT_USERS_PASSWORD_CHECKS_IN_FLIGHT",
            Box::new(|s| s.password_checks_in_flight = 0),
        ),
        (
            "DT_USERS_RATE_LIMIT_MEMORY_KEYS",
            Box::new(|s| s.rate_limit_memory_keys = 0),
        ),
        (
            "DT_USERS_RATE_LIMIT_IPV6_PREFIX",
            Box::new(|s| s.rate_limit_ipv6_prefix = 0),
        ),
        (
            "DT_USERS_ARGON2_MEMORY_KIB",
            Box::new(|s| s.argon2_memory_kib = 1),
        ),
        (
            "DT_USERS_PASSWORD_HASH_CONCURRENCY",
            Box::new(|s| s.password_hash_concurrency = 0),
        ),
        (
            "DT_USERS_REQUEST_TIMEOUT",
            Box::new(|s| s.request_timeout = 0),
        ),
        (
            "DT_USERS_LOG_FORMAT",
            Box::new(|s| s.log_format = "xml".into()),
        ),
        (
            "DT_USERS_DATABASE_MAX_CONNECTIONS",
            Box::new(|s| s.database_max_connections = 0),
        ),
        (
            "DT_USERS_KAFKA_MESSAGE_TIMEOUT_MS",
            Box::new(|s| {
                s.kafka_bootstrap_servers = Some("127.0.0.1:9092".into());
                s.kafka_message_timeout_ms = 0;
            }),
        ),
    ];
    for (variable, adjust) in cases {
        let mut settings = Settings::default();
        adjust(&mut settings);
        match settings.validate() {
            Ok(_) => panic!("{variable}: an unusable value was accepted"),
            Err(e) => {
                assert_eq!(e.variable, variable, "{e}");
                assert!(e.to_string().starts_with(&format!("{variable}: ")), "{e}");
            }
        }
    }
}

#[test]
fn a_url_with_a_password_is_never_repeated_in_the_error() {
    let settings = Settings {
        redis_url: Some("http://:hunter2-secret@127.0.0.1".into()),
        ..Settings::default()
    };
    let error = settings.validate().map(|_| ()).unwrap_err().to_string();
    assert!(!error.contains("hunter2"), "{error}");
}

#[test]
fn values_are_typed_and_grouped() {
    let config = Settings {
        trusted_proxies: "10.0.0.0/8, ::1".into(),
        cors_allowed_origins: "https://devtalk.example, http://localhost:3000".into(),
        relay_interval_ms: 1,
        job_backoff_ms: 5_000,
        job_backoff_max_ms: 1_000,
        ..Settings::default()
    }
    .validate()
    .unwrap();
    assert!(
        config
            .http
            .trusted_proxies
            .contains("10.1.2.3".parse().unwrap())
    );
    assert!(
        !config
            .http
            .trusted_proxies
            .contains("11.0.0.1".parse().unwrap())
    );
    assert_eq!(config.http.cors_allowed_origins.len(), 2);
    assert_eq!(config.limits.rules.login_ip.burst, 10);
    assert_eq!(config.relay_interval, std::time::Duration::from_millis(10));
    assert_eq!(config.jobs.backoff_max, config.jobs.backoff);
    assert!(config.database.embedded);
    assert!(config.database.url.starts_with("sqlite://"));
    assert!(config.kafka.is_none());
}

#[test]
fn redis_is_one_server_or_the_seed_nodes_of_a_cluster() {
    let servers = |cluster: bool, url: &str| {
        Settings {
            redis_url: Some(url.into()),
            redis_cluster: cluster,
            ..Settings::default()
        }
        .validate()
        .unwrap()
        .redis
        .unwrap()
        .servers
    };
    assert_eq!(
        servers(false, " redis://:pa,ss@10.0.0.1:6379 "),
        RedisServers::Server("redis://:pa,ss@10.0.0.1:6379".into())
    );
    assert_eq!(
        servers(
            true,
            "redis://:pa,ss@10.0.0.1:7000, rediss://10.0.0.2:7000,redis://10.0.0.3:7000,"
        ),
        RedisServers::Cluster(vec![
            "redis://:pa,ss@10.0.0.1:7000".into(),
            "rediss://10.0.0.2:7000".into(),
            "redis://10.0.0.3:7000".into(),
        ])
    );
    assert_eq!(
        servers(true, "redis://10.0.0.1:7000/0"),
        RedisServers::Cluster(vec!["redis://10.0.0.1:7000/0".into()])
    );
    let unset = Settings::default().validate().unwrap();
    assert!(unset.redis.is_none());
}

#[test]
fn a_list_of_redis_urls_is_refused_without_repeating_them() {
    let error = Settings {
        redis_url: Some("redis://:hunter2@10.0.0.1:6379,redis://:hunter2@10.0.0.2:6379".into()),
        ..Settings::default()
    }
    .validate()
    .map(|_| ())
    .unwrap_err()
    .to_string();
    assert!(error.contains("DT_USERS_REDIS_CLUSTER"), "{error}");
    assert!(!error.contains("hunter2"), "{error}");
}
