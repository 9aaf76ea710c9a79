//! The connection to Redis that the session store and the rate limiter share: one server
//! through a `ConnectionManager`, or a Redis Cluster through the `redis` crate's cluster
//! client, which routes each command by the slot of its first key, follows redirections and
//! finds a promoted replica after a failover. Both are `ConnectionLike`, so every command and
//! Lua script runs unchanged on either.
//!
//! Both fail fast: a node that does not answer is an error within seconds (the requests that
//! need it answer 503), never a request that hangs. A cluster node that stops answering but
//! keeps its connections open (a frozen process, a network partition) is one thing the cluster
//! client does not get over by itself: it keeps sending that node the commands of its slots,
//! and learns of no failover. So a timeout has a fresh cluster connection made in the
//! background, which reads the cluster's map anew and replaces the current one when it is
//! ready; requests keep the current one meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Client, Cmd, ErrorKind, RedisError, RedisFuture, RedisResult, ServerErrorKind, Value};

/// How long connecting to one node, and one reply, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// A cluster request as a whole, with its redirections and retries: a slot whose primary has
/// failed answers an error after this, not after the failover.
const CLUSTER_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Attempts of one cluster request beyond the first (redirections after a failover or a
/// resharding, a node reconnected), each after a wait of 50 to 500 ms.
const CLUSTER_RETRIES: u32 = 3;

/// One Redis server, or the seed nodes of a Redis Cluster; connected on first use and then
/// shared by every clone.
#[derive(Clone)]
pub(crate) struct RedisEndpoint(Arc<Shared>);

struct Shared {
    target: Target,
    /// The connection in use; `None` until the first one is made.
    current: Mutex<Option<RedisConnection>>,
    /// One first connection at a time.
    connecting: tokio::sync::Mutex<()>,
    /// A fresh cluster connection is being made in the background.
    renewing: AtomicBool,
}

enum Target {
    Server(Client),
    Cluster(Box<ClusterClient>),
}

impl std::fmt::Debug for RedisEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0.target {
            Target::Server(_) => "RedisEndpoint::Server",
            Target::Cluster(_) => "RedisEndpoint::Cluster",
        })
    }
}

impl RedisEndpoint {
    /// One server at `url`. Checks the URL only.
    pub(crate) fn server(url: &str) -> RedisResult<Self> {
        Ok(Self::with(Target::Server(Client::open(url)?)))
    }

    /// A Redis Cluster, discovered from any of `seeds`. Checks the URLs only (they must agree
    /// on credentials and TLS).
    pub(crate) fn cluster(seeds: &[String]) -> RedisResult<Self> {
        let client = ClusterClientBuilder::new(seeds.iter().map(String::as_str))
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .overall_response_timeout(Some(CLUSTER_REQUEST_TIMEOUT))
            .retries(CLUSTER_RETRIES)
            .min_retry_wait(50)
            .max_retry_wait(500)
            .build()?;
        Ok(Self::with(Target::Cluster(Box::new(client))))
    }

    fn with(target: Target) -> Self {
        Self(Arc::new(Shared {
            target,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            renewing: AtomicBool::new(false),
        }))
    }

    /// The shared connection; made now if there is none yet (a failure is tried again by the
    /// next call).
    pub(crate) async fn connection(&self) -> RedisResult<RedisConnection> {
        if let Some(conn) = self.0.current() {
            return Ok(conn);
        }
        let _one_at_a_time = self.0.connecting.lock().await;
        if let Some(conn) = self.0.current() {
            return Ok(conn);
        }
        let conn = Shared::connect(&self.0).await?;
        self.0.replace(conn.clone());
        Ok(conn)
    }
}

impl Shared {
    fn current(&self) -> Option<RedisConnection> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn replace(&self, conn: RedisConnection) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(conn);
    }

    async fn connect(this: &Arc<Self>) -> RedisResult<RedisConnection> {
        match &this.target {
            Target::Server(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                ConnectionManager::new_with_config(client.clone(), config)
                    .await
                    .map(RedisConnection::Server)
            }
            Target::Cluster(client) => {
                let conn = client.get_async_connection().await?;
                Ok(RedisConnection::Cluster(
                    conn,
                    Renewal(Arc::downgrade(this)),
                ))
            }
        }
    }
}

/// Has a fresh cluster connection made in the background, unless one is being made already.
#[derive(Clone)]
pub(crate) struct Renewal(Weak<Shared>);

impl Renewal {
    /// Called with the outcome of each cluster request: a timeout asks for a fresh connection.
    fn after<T>(&self, reply: &RedisResult<T>) {
        if reply.as_ref().is_err_and(RedisError::is_timeout) {
            self.request();
        }
    }

    fn request(&self) {
        let Some(shared) = self.0.upgrade() else {
            return;
        };
        if shared.renewing.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(async move {
            match Shared::connect(&shared).await {
                Ok(fresh) => {
                    tracing::info!("Redis Cluster: a request timed out; connected afresh");
                    shared.replace(fresh);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Redis Cluster: a request timed out; no fresh connection yet");
                }
            }
            shared.renewing.store(false, Ordering::Release);
        });
    }
}

/// A connection to one Redis server or to a Redis Cluster.
#[derive(Clone)]
pub(crate) enum RedisConnection {
    Server(ConnectionManager),
    Cluster(ClusterConnection, Renewal),
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Server(_) => "RedisConnection::Server",
            Self::Cluster(..) => "RedisConnection::Cluster",
        })
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Server(c) => c.req_packed_command(cmd),
            Self::Cluster(c, renewal) => Box::pin(async move {
                let reply = c.req_packed_command(cmd).await;
                renewal.after(&reply);
                reply
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Server(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c, renewal) => Box::pin(async move {
                let reply = c.req_packed_commands(pipeline, offset, count).await;
                renewal.after(&reply);
                reply
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Server(c) => c.get_db(),
            Self::Cluster(c, _) => c.get_db(),
        }
    }
}

impl RedisConnection {
    /// Whether Redis can serve: the server answers `PING`; a cluster node answers that the
    /// cluster is `ok` (every slot has a reachable primary). One node is asked, not every one:
    /// a node that left the cluster must not keep the check failing.
    pub(crate) async fn ping(&mut self) -> RedisResult<()> {
        match self {
            Self::Server(c) => redis::cmd("PING").query_async::<String>(c).await.map(drop),
            Self::Cluster(c, renewal) => {
                let mut info = redis::cmd("CLUSTER");
                info.arg("INFO");
                let reply = c
                    .route_command(info, RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random))
                    .await;
                renewal.after(&reply);
                let text: String = redis::from_redis_value(reply?)?;
                if text.lines().any(|l| l.trim() == "cluster_state:ok") {
                    Ok(())
                } else {
                    Err(RedisError::from((
                        ErrorKind::Io,
                        "the Redis Cluster is not ok (a slot has no reachable primary)",
                    )))
                }
            }
        }
    }
}

/// A Lua script, run by its hash, or by its text where the node does not hold it yet.
///
/// The `redis` crate's own `Script` loads a missing script with `SCRIPT LOAD`, which a cluster
/// client sends to every node it knows: the load then fails while any of them is down,
/// including a failed primary the client has not dropped yet. And a load is needed right after
/// a failover, since Redis does not replicate scripts: the promoted replica holds none. `EVAL`
/// goes only where the script's keys live, and leaves the script there for the next `EVALSHA`.
#[derive(Debug)]
pub(crate) struct LuaScript {
    code: &'static str,
    hash: String,
}

impl LuaScript {
    pub(crate) fn new(code: &'static str) -> Self {
        Self {
            code,
            hash: redis::Script::new(code).get_hash().to_owned(),
        }
    }

    /// A call of the script with its first key.
    pub(crate) fn key(&self, key: impl redis::ToRedisArgs) -> LuaCall<'_> {
        LuaCall {
            script: self,
            keys: key.to_redis_args(),
            args: Vec::new(),
        }
    }
}

/// One call of a [`LuaScript`]: its keys (all in one slot of a cluster) and arguments.
#[derive(Debug)]
pub(crate) struct LuaCall<'a> {
    script: &'a LuaScript,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl LuaCall<'_> {
    pub(crate) fn key(&mut self, key: impl redis::ToRedisArgs) -> &mut Self {
        key.write_redis_args(&mut self.keys);
        self
    }

    pub(crate) fn arg(&mut self, arg: impl redis::ToRedisArgs) -> &mut Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    fn command(&self, verb: &str, script: &str) -> Cmd {
        let mut cmd = redis::cmd(verb);
        cmd.arg(script)
            .arg(self.keys.len())
            .arg(self.keys.as_slice())
            .arg(self.args.as_slice());
        cmd
    }

    pub(crate) async fn invoke_async<T: redis::FromRedisValue>(
        &self,
        conn: &mut RedisConnection,
    ) -> RedisResult<T> {
        match self
            .command("EVALSHA", &self.script.hash)
            .query_async(conn)
            .await
        {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.command("EVAL", self.script.code)
                    .query_async(conn)
                    .await
            }
            reply => reply,
        }
    }
}
