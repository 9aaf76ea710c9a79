//! Where Redis is for sessions and rate limits — none, one server, or a Redis Cluster's seed
//! nodes (`DT_USERS_REDIS_URL`, `DT_USERS_REDIS_CLUSTER`) — checked once at start-up.

use url::Url;

use super::Settings;
use super::typed::{ConfigError, present, service_url};

#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub servers: RedisServers,
    pub key_prefix: String,
}

/// Where Redis is: one server, or a Redis Cluster found through some of its nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisServers {
    /// The URL of one server.
    Server(String),
    /// The URLs of seed nodes of a cluster (`DT_USERS_REDIS_CLUSTER=true`); the client learns
    /// the rest of the cluster from them.
    Cluster(Vec<String>),
}

pub(super) const REDIS_SCHEMES: &[&str] = &["redis", "rediss", "redis+unix", "unix"];

/// Sessions' Redis: none, one server, or a cluster's seed nodes.
pub(super) fn redis_config(s: &Settings) -> Result<Option<RedisConfig>, ConfigError> {
    let Some(text) = present(s.redis_url.as_deref()) else {
        return match s.redis_cluster {
            true => Err(ConfigError::new(
                "redis_cluster",
                "a cluster needs its seed nodes in DT_USERS_REDIS_URL",
            )),
            false => Ok(None),
        };
    };
    let urls = url_list(&text);
    let servers = if s.redis_cluster {
        // A tag in the prefix would be the hash tag of every key: one slot, one node.
        if s.redis_key_prefix.contains(['{', '}']) {
            return Err(ConfigError::new(
                "redis_key_prefix",
                "no { or } on a Redis Cluster: they would put every key in one slot",
            ));
        }
        let mut seeds = Vec::with_capacity(urls.len());
        for url in urls {
            let Some(seed) = service_url("redis_url", Some(&url), &["redis", "rediss"])? else {
                continue;
            };
            let database = Url::parse(&seed).map(|u| u.path().trim_matches('/').to_owned());
            if !matches!(database.as_deref(), Ok("" | "0")) {
                return Err(ConfigError::new(
                    "redis_url",
                    "a Redis Cluster has database 0 only: no /<db> in its URLs",
                ));
            }
            seeds.push(seed);
        }
        RedisServers::Cluster(seeds)
    } else {
        if urls.len() > 1 {
            return Err(ConfigError::new(
                "redis_url",
                format!(
                    "{} URLs: a list of nodes is a Redis Cluster, which needs \
                     DT_USERS_REDIS_CLUSTER=true; one server takes one URL",
                    urls.len()
                ),
            ));
        }
        match service_url("redis_url", Some(&text), REDIS_SCHEMES)? {
            Some(url) => RedisServers::Server(url),
            None => return Ok(None),
        }
    };
    Ok(Some(RedisConfig {
        servers,
        key_prefix: s.redis_key_prefix.clone(),
    }))
}

/// The URLs of a comma-separated list. A URL begins with `scheme://`; a part without one
/// belongs to the URL before it (a comma in a password).
pub(super) fn url_list(text: &str) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    for part in text.trim().trim_end_matches(',').split(',') {
        match urls.last_mut() {
            Some(url) if !part.contains("://") => {
                url.push(',');
                url.push_str(part);
            }
            _ => urls.push(part.to_owned()),
        }
    }
    urls.into_iter()
        .map(|url| url.trim().to_owned())
        .filter(|url| !url.is_empty())
        .collect()
}
