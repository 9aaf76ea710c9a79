//! A Redis Cluster of a test's own: six `redis-server` processes on free ports, three primaries
//! each with a replica (so that a primary can fail over), their files in a temporary directory.
//! Every process is killed and the directory removed when the cluster drops.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A node as `CLUSTER NODES` describes it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub id: String,
    pub port: u16,
    pub primary: bool,
    pub failed: bool,
    /// The id of its primary, for a replica.
    pub primary_id: Option<String>,
    /// The slot ranges it serves, for a primary.
    pub slots: Vec<(u16, u16)>,
}

pub struct RedisCluster {
    dir: PathBuf,
    nodes: Vec<(u16, Child)>,
}

impl RedisCluster {
    /// Starts the six nodes, creates the cluster and waits until every node finds it `ok` and
    /// every replica has copied its primary.
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "dt-users-cluster-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cluster = Self {
            dir,
            nodes: Vec::new(),
        };
        // A port another process took between the check and the server's bind: try others.
        for _ in 0..5 {
            if cluster.spawn_nodes().await {
                break;
            }
            cluster.kill_all();
        }
        assert_eq!(
            cluster.nodes.len(),
            6,
            "could not start six redis-server nodes"
        );
        let addresses: Vec<String> = cluster
            .ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = tokio::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        cluster.wait_until_healthy(Duration::from_secs(60)).await;
        cluster
    }

    /// Spawns six nodes on ports that were free a moment ago; false if one did not come up.
    async fn spawn_nodes(&mut self) -> bool {
        for port in free_ports(6) {
            let child = Command::new("redis-server")
                .args(["--cluster-enabled", "yes", "--port", &port.to_string()])
                .arg("--cluster-config-file")
                .arg(self.dir.join(format!("nodes-{port}.conf")))
                .args([
                    "--cluster-node-timeout",
                    "1000",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args(["--daemonize", "no", "--repl-diskless-sync-delay", "0"])
                .arg("--dir")
                .arg(&self.dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is installed");
            self.nodes.push((port, child));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in self.ports() {
            while ask(port, &["PING"]).await.is_err() {
                if Instant::now() > deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        true
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|(port, _)| *port).collect()
    }

    /// `redis://…` of every node, comma-separated: the seeds of `DT_USERS_REDIS_URL`.
    pub fn seeds(&self) -> String {
        self.ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every node of the cluster as a live node sees it.
    pub async fn topology(&self) -> Vec<NodeInfo> {
        for (port, _) in &self.nodes {
            if let Ok(text) = ask(*port, &["CLUSTER", "NODES"]).await {
                return text.lines().filter_map(parse_node).collect();
            }
        }
        panic!("no node of the cluster answers");
    }

    pub async fn primaries(&self) -> Vec<NodeInfo> {
        let mut primaries: Vec<NodeInfo> = self
            .topology()
            .await
            .into_iter()
            .filter(|n| n.primary && !n.failed && !n.slots.is_empty())
            .collect();
        primaries.sort_by_key(|n| n.port);
        primaries
    }

    /// The port of the primary that serves `key`.
    pub async fn primary_of(&self, key: &str) -> u16 {
        let slot: u16 = ask(self.ports()[0], &["CLUSTER", "KEYSLOT", key])
            .await
            .unwrap()
            .parse()
            .unwrap();
        self.primaries()
            .await
            .into_iter()
            .find(|n| n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .map(|n| n.port)
            .unwrap()
    }

    /// The port of the replica of the primary on `port`.
    pub async fn replica_of(&self, port: u16) -> u16 {
        let nodes = self.topology().await;
        let primary = nodes.iter().find(|n| n.port == port).unwrap();
        nodes
            .iter()
            .find(|n| n.primary_id.as_deref() == Some(primary.id.as_str()))
            .map(|n| n.port)
            .unwrap()
    }

    /// Keys matching `pattern` held by the node on `port`.
    pub async fn keys_on(&self, port: u16, pattern: &str) -> usize {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut keys = crate::helpers::scan_keys(&mut conn, pattern).await;
        keys.sort();
        keys.dedup();
        keys.len()
    }

    /// Waits until the replica on `replica` holds every write its primary on `primary` has
    /// made so far.
    pub async fn wait_for_replication(&self, primary: u16, replica: u16) {
        let written = info_field(primary, "replication", "master_repl_offset").await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while info_field(replica, "replication", "slave_repl_offset").await < written {
            assert!(Instant::now() < deadline, "the replica on {replica} lags");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the node on `port` (SIGKILL): no goodbye to its clients or to the cluster.
    pub fn kill(&mut self, port: u16) {
        if let Some((_, child)) = self.nodes.iter_mut().find(|(p, _)| *p == port) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the node on `port` (SIGSTOP): its connections stay open and nothing answers, as
    /// behind a network partition. It stays stopped until the cluster drops.
    pub fn freeze(&mut self, port: u16) {
        if let Some((_, child)) = self.nodes.iter().find(|(p, _)| *p == port) {
            let stopped = Command::new("kill")
                .args(["-STOP", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(stopped.success());
        }
    }

    /// Whether the node on `port` is a primary now.
    pub async fn is_primary(&self, port: u16) -> bool {
        ask(port, &["INFO", "replication"])
            .await
            .is_ok_and(|info| info.lines().any(|l| l.trim() == "role:master"))
    }

    /// Waits until every live node sees the cluster `ok` and every replica is in sync.
    pub async fn wait_until_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.healthy().await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not become healthy"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn healthy(&self) -> bool {
        let mut replicas_up = 0;
        for port in self.ports() {
            let Ok(state) = ask(port, &["CLUSTER", "INFO"]).await else {
                return false;
            };
            if !state.lines().any(|l| l.trim() == "cluster_state:ok") {
                return false;
            }
            let Ok(replication) = ask(port, &["INFO", "replication"]).await else {
                return false;
            };
            if replication.lines().any(|l| l.trim() == "role:slave") {
                if !replication
                    .lines()
                    .any(|l| l.trim() == "master_link_status:up")
                {
                    return false;
                }
                replicas_up += 1;
            }
        }
        replicas_up == 3 && self.primaries().await.len() == 3
    }

    fn kill_all(&mut self) {
        for (_, mut child) in self.nodes.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.kill_all();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `count` ports that were free, each with its cluster bus port (+10000) free too.
fn free_ports(count: usize) -> Vec<u16> {
    let mut ports = Vec::new();
    while ports.len() < count {
        let candidate = 20_000 + (uuid::Uuid::new_v4().as_u128() % 20_000) as u16;
        let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        if !ports.contains(&candidate) && free(candidate) && free(candidate + 10_000) {
            ports.push(candidate);
        }
    }
    ports
}

/// One command to the node on `port`, its reply as text.
pub async fn ask(port: u16, command: &[&str]) -> redis::RedisResult<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let attempt = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        let mut cmd = redis::cmd(command[0]);
        for arg in &command[1..] {
            cmd.arg(*arg);
        }
        let reply: redis::Value = cmd.query_async(&mut conn).await?;
        Ok(match reply {
            redis::Value::Int(n) => n.to_string(),
            other => redis::from_redis_value::<String>(other)?,
        })
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .unwrap_or_else(|_| Err((redis::ErrorKind::Io, "timed out").into()))
}

async fn info_field(port: u16, section: &str, field: &str) -> u64 {
    let info = ask(port, &["INFO", section]).await.unwrap();
    info.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{field}:"))?.parse().ok())
        .unwrap()
}

/// `<id> <ip:port@bus> <flags> <primary> <ping> <pong> <epoch> <link> <slot>…`
fn parse_node(line: &str) -> Option<NodeInfo> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let port = fields
        .get(1)?
        .split('@')
        .next()?
        .rsplit(':')
        .next()?
        .parse()
        .ok()?;
    let flags: Vec<&str> = fields.get(2)?.split(',').collect();
    let slots = fields
        .iter()
        .skip(8)
        .filter(|s| !s.starts_with('['))
        .filter_map(|s| match s.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => s.parse().ok().map(|n| (n, n)),
        })
        .collect();
    Some(NodeInfo {
        id: fields[0].to_owned(),
        port,
        primary: flags.contains(&"master"),
        failed: flags.iter().any(|f| f.starts_with("fail")),
        primary_id: (fields.get(3) != Some(&"-")).then(|| fields[3].to_owned()),
        slots,
    })
}
