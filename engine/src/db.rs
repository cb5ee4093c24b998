//! The Redis connection, with a count of round trips (the benchmark reports them per step).
//!
//! `redis.url` names one server (`redis://`, `rediss://`, `unix://`) or a Redis Cluster
//! (`redis+cluster://host:port,host:port/`, `rediss+cluster://…` for TLS: seed nodes, from which
//! the rest of the cluster is found). On a cluster every request goes to the master that owns its
//! keys' slot, a pipeline over several slots is split per slot (see
//! [`steward_workers::RedisConn`]), and a blocking read has its own connection to the master
//! owning the slot it reads, following the cluster when the slot moves.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, FromRedisValue, IntoConnectionInfo, Pipeline, RedisResult,
    ScriptInvocation,
};
pub use steward_workers::RedisConn;

/// A multiplexed, self-reconnecting Redis connection shared by every task of a process;
/// concurrent requests are pipelined on it.
#[derive(Clone)]
pub struct Db {
    conn: RedisConn,
    target: Arc<Target>,
    round_trips: Arc<AtomicU64>,
}

/// What `redis.url` names.
enum Target {
    Single(redis::Client),
    Cluster {
        /// The seed nodes' connection settings (credentials, TLS): a template for connections
        /// to single nodes.
        seeds: Vec<ConnectionInfo>,
    },
}

/// The cluster URL schemes.
const CLUSTER_SCHEMES: [(&str, &str); 2] = [
    ("redis+cluster://", "redis://"),
    ("rediss+cluster://", "rediss://"),
];

/// The seed URLs of a cluster URL (`redis+cluster://[user:pass@]host:port[,host:port…][/…]`), or
/// `None` if `url` does not name a cluster.
pub fn cluster_seeds(url: &str) -> Option<Result<Vec<String>, String>> {
    let (rest, scheme) = CLUSTER_SCHEMES
        .iter()
        .find_map(|(cluster, single)| url.strip_prefix(cluster).map(|rest| (rest, *single)))?;
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let seeds: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("{scheme}{userinfo}{h}{tail}"))
        .collect();
    if seeds.is_empty() {
        return Some(Err(
            "a cluster URL names at least one node: redis+cluster://HOST:PORT[,HOST:PORT…]/"
                .to_owned(),
        ));
    }
    for seed in &seeds {
        let ok = url::Url::parse(seed)
            .ok()
            .is_some_and(|u| u.host_str().is_some_and(|h| !h.is_empty()));
        if !ok {
            return Some(Err(
                "each node of a cluster URL is HOST:PORT, separated by commas: redis+cluster://10.0.0.1:6379,10.0.0.2:6379/".to_owned(),
            ));
        }
    }
    Some(Ok(seeds))
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("cluster", &self.is_cluster())
            .field("round_trips", &self.round_trips())
            .finish()
    }
}

fn manager_config(response_timeout: Option<Duration>) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(response_timeout)
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500))
}

/// Why a connection to Redis failed, said once (the innermost cause, not each layer's wrapping
/// of it), and in words when the server at the URL is not a Redis server at all (it answered
/// something that is not the Redis protocol, e.g. an HTTP server).
pub fn connect_failure(e: &redis::RedisError) -> String {
    match e.kind() {
        redis::ErrorKind::Parse | redis::ErrorKind::UnexpectedReturnType => {
            "that is not a Redis server (it did not answer in the Redis protocol); check the URL (redis.url, STEWARD_REDIS__URL or --redis)".to_owned()
        }
        redis::ErrorKind::AuthenticationFailed => {
            "Redis refused the credentials; check the user and password in the URL".to_owned()
        }
        _ => {
            let mut inner: &dyn std::error::Error = e;
            while let Some(next) = inner.source() {
                inner = next;
            }
            inner.to_string()
        }
    }
}

impl Db {
    /// Connects. `response_timeout` bounds every request (blocking reads use their own
    /// connection, see [`Db::blocking`]).
    pub async fn connect(url: &str, response_timeout: Duration) -> RedisResult<Self> {
        if let Some(seeds) = cluster_seeds(url) {
            let seeds = seeds.map_err(|e| {
                redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "redis.url", e))
            })?;
            let infos = seeds
                .iter()
                .map(|s| s.as_str().into_connection_info())
                .collect::<RedisResult<Vec<_>>>()?;
            let client = ClusterClient::builder(infos.clone())
                .connection_timeout(Duration::from_secs(2))
                .response_timeout(response_timeout)
                .build()?;
            let conn = client.get_async_connection().await?;
            return Ok(Self {
                conn: RedisConn::Cluster(conn),
                target: Arc::new(Target::Cluster { seeds: infos }),
                round_trips: Arc::new(AtomicU64::new(0)),
            });
        }
        let client = redis::Client::open(url)?;
        let conn = client
            .get_connection_manager_with_config(manager_config(Some(response_timeout)))
            .await?;
        Ok(Self {
            conn: RedisConn::Single(conn),
            target: Arc::new(Target::Single(client)),
            round_trips: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Whether `redis.url` names a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(*self.target, Target::Cluster { .. })
    }

    /// A separate connection for blocking reads (`XREADGROUP … BLOCK`), which would otherwise
    /// hold up every request pipelined behind them. On a cluster a blocking read names keys of
    /// one slot only: `key` is one of them (the connection goes to the master owning its slot);
    /// on one server it is not needed.
    pub async fn blocking(&self, block: Duration, key: Option<&str>) -> RedisResult<Blocking> {
        let timeout = block + Duration::from_secs(5);
        let inner = match &*self.target {
            Target::Single(client) => BlockingConn::Single(
                client
                    .get_connection_manager_with_config(manager_config(Some(timeout)))
                    .await?,
            ),
            Target::Cluster { seeds } => {
                let key = key.ok_or_else(|| {
                    redis::RedisError::from((
                        redis::ErrorKind::InvalidClientConfig,
                        "a blocking read on a cluster names the slot it reads",
                    ))
                })?;
                let mut node = NodeConn {
                    cluster: self.conn.clone(),
                    template: seeds[0].clone(),
                    slot: steward_workers::conn::slot_of(key.as_bytes()),
                    timeout,
                    node: None,
                    conn: None,
                };
                node.connect().await?;
                BlockingConn::Node(Box::new(node))
            }
        };
        Ok(Blocking {
            inner,
            round_trips: self.round_trips.clone(),
        })
    }

    /// Sends one command.
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        cmd.query_async(&mut self.conn.clone()).await
    }

    /// Sends a pipeline (one round trip; on a cluster, one per slot, all at once).
    pub async fn pipe<T: FromRedisValue>(&self, pipe: &Pipeline) -> RedisResult<T> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        pipe.query_async(&mut self.conn.clone()).await
    }

    /// Runs a script (`EVALSHA`, loading it first if the server lost it).
    pub async fn script<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> RedisResult<T> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        invocation.invoke_async(&mut self.conn.clone()).await
    }

    /// Round trips made so far through this connection and its blocking siblings.
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// The raw connection, for clients that do their own round trips (ops).
    pub fn manager(&self) -> RedisConn {
        self.conn.clone()
    }

    /// Where a keyspace-wide command (`SCAN`) must run: the server, or every master of the
    /// cluster. Use with [`Db::query_on`].
    pub async fn masters(&self) -> RedisResult<Vec<Node>> {
        match &*self.target {
            Target::Single(_) => Ok(vec![Node::Any]),
            Target::Cluster { .. } => {
                let mut masters: Vec<Node> = self
                    .slots()
                    .await?
                    .into_iter()
                    .map(|(_, _, host, port)| Node::Addr(host, port))
                    .collect();
                masters.sort();
                masters.dedup();
                Ok(masters)
            }
        }
    }

    /// Sends one command to `node` (see [`Db::masters`]).
    pub async fn query_on<T: FromRedisValue>(&self, node: &Node, cmd: &Cmd) -> RedisResult<T> {
        match (node, &self.conn) {
            (Node::Addr(host, port), RedisConn::Cluster(conn)) => {
                self.round_trips.fetch_add(1, Ordering::Relaxed);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                let value = conn.clone().route_command(cmd.clone(), routing).await?;
                T::from_redis_value(value).map_err(Into::into)
            }
            _ => self.query(cmd).await,
        }
    }

    /// Sends a keyless command (`WAITAOF`) to the node that holds `key`: the server, or the
    /// master owning `key`'s slot on a cluster (where the write it waits for went).
    pub async fn query_beside<T: FromRedisValue>(&self, key: &str, cmd: &Cmd) -> RedisResult<T> {
        match &self.conn {
            RedisConn::Cluster(conn) => {
                self.round_trips.fetch_add(1, Ordering::Relaxed);
                let slot = steward_workers::conn::slot_of(key.as_bytes());
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    redis::cluster_routing::Route::new(
                        slot,
                        redis::cluster_routing::SlotAddr::Master,
                    ),
                ));
                let value = conn.clone().route_command(cmd.clone(), routing).await?;
                T::from_redis_value(value).map_err(Into::into)
            }
            RedisConn::Single(_) => self.query(cmd).await,
        }
    }

    /// Wakes a blocked read (`CLIENT UNBLOCK` on the node that holds it).
    pub async fn unblock(&self, blocked: &Blocked) -> RedisResult<i64> {
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("UNBLOCK").arg(blocked.id);
        self.query_on(&blocked.node, &cmd).await
    }

    /// The cluster's slot ranges and their masters (`CLUSTER SLOTS`).
    pub async fn slots(&self) -> RedisResult<Vec<(u16, u16, String, u16)>> {
        cluster_slots(&mut self.conn.clone()).await
    }
}

async fn cluster_slots(conn: &mut RedisConn) -> RedisResult<Vec<(u16, u16, String, u16)>> {
    let reply: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
    let mut out = Vec::new();
    for range in reply {
        let parts: Vec<redis::Value> = redis::from_redis_value(range)?;
        let (Some(start), Some(end), Some(master)) = (parts.first(), parts.get(1), parts.get(2))
        else {
            continue;
        };
        let start: u16 = redis::from_redis_value_ref(start)?;
        let end: u16 = redis::from_redis_value_ref(end)?;
        let master: Vec<redis::Value> = redis::from_redis_value_ref(master)?;
        let (Some(host), Some(port)) = (master.first(), master.get(1)) else {
            continue;
        };
        out.push((
            start,
            end,
            redis::from_redis_value_ref::<String>(host)?,
            redis::from_redis_value_ref::<u16>(port)?,
        ));
    }
    Ok(out)
}

/// A node to send a command to: any (one server) or the cluster node at an address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Node {
    /// The one server.
    Any,
    /// A cluster node.
    Addr(String, u16),
}

/// A blocked read's connection, to wake it ([`Db::unblock`]).
#[derive(Debug, Clone)]
pub struct Blocked {
    id: i64,
    node: Node,
}

/// A connection for blocking reads.
pub struct Blocking {
    inner: BlockingConn,
    round_trips: Arc<AtomicU64>,
}

enum BlockingConn {
    Single(ConnectionManager),
    Node(Box<NodeConn>),
}

impl std::fmt::Debug for Blocking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blocking").finish()
    }
}

impl Blocking {
    /// The server's id for this connection and where it is (for `CLIENT UNBLOCK`, see
    /// [`Db::unblock`]); it changes when the connection is re-established.
    pub async fn blocked(&mut self) -> RedisResult<Blocked> {
        let id = self.query(&redis::cmd("CLIENT").arg("ID").clone()).await?;
        let node = match &self.inner {
            BlockingConn::Single(_) => Node::Any,
            BlockingConn::Node(n) => n
                .node
                .clone()
                .map_or(Node::Any, |(host, port)| Node::Addr(host, port)),
        };
        Ok(Blocked { id, node })
    }

    /// Sends one (blocking) command.
    pub async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        match &mut self.inner {
            BlockingConn::Single(conn) => cmd.query_async(conn).await,
            BlockingConn::Node(node) => node.query(cmd).await,
        }
    }

    /// Sends a pipeline that may end in a blocking command (on a cluster, of keys in this
    /// connection's slot).
    pub async fn pipe<T: FromRedisValue>(&mut self, pipe: &Pipeline) -> RedisResult<T> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        match &mut self.inner {
            BlockingConn::Single(conn) => pipe.query_async(conn).await,
            BlockingConn::Node(node) => node.pipe(pipe).await,
        }
    }
}

/// A connection to the master that owns one slot, which follows the slot when it moves
/// (`MOVED`, after a resharding or a failover) and finds its owner again after a lost
/// connection.
struct NodeConn {
    cluster: RedisConn,
    template: ConnectionInfo,
    slot: u16,
    timeout: Duration,
    node: Option<(String, u16)>,
    conn: Option<MultiplexedConnection>,
}

impl NodeConn {
    /// Connects to the slot's owner (asking the cluster who that is, unless a redirection
    /// said so).
    async fn connect(&mut self) -> RedisResult<&mut MultiplexedConnection> {
        if self.conn.is_none() {
            let (host, port) = match self.node.clone() {
                Some(node) => node,
                None => {
                    let slots = cluster_slots(&mut self.cluster).await?;
                    let (_, _, host, port) = slots
                        .into_iter()
                        .find(|(start, end, _, _)| (*start..=*end).contains(&self.slot))
                        .ok_or_else(|| {
                            redis::RedisError::from((
                                redis::ErrorKind::Server(redis::ServerErrorKind::ClusterDown),
                                "no master owns the slot",
                                self.slot.to_string(),
                            ))
                        })?;
                    (host, port)
                }
            };
            let addr = match self.template.addr() {
                ConnectionAddr::TcpTls {
                    insecure,
                    tls_params,
                    ..
                } => ConnectionAddr::TcpTls {
                    host: host.clone(),
                    port,
                    insecure: *insecure,
                    tls_params: tls_params.clone(),
                },
                _ => ConnectionAddr::Tcp(host.clone(), port),
            };
            let info = self.template.clone().set_addr(addr);
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(self.timeout));
            let conn = redis::Client::open(info)?
                .get_multiplexed_async_connection_with_config(&config)
                .await;
            match conn {
                Ok(conn) => {
                    self.node = Some((host, port));
                    self.conn = Some(conn);
                }
                Err(e) => {
                    self.node = None;
                    return Err(e);
                }
            }
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        let mut redirects = 0;
        loop {
            let conn = self.connect().await?;
            match cmd.query_async(conn).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    if let Some((addr, _)) = e.redirect_node()
                        && redirects < 3
                        && let Some((host, port)) = addr
                            .rsplit_once(':')
                            .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
                    {
                        // The slot moved: follow it.
                        redirects += 1;
                        self.node = Some((host, port));
                        self.conn = None;
                        continue;
                    }
                    if e.is_io_error()
                        || e.is_connection_dropped()
                        || e.is_timeout()
                        || e.is_unrecoverable_error()
                        || e.redirect_node().is_some()
                    {
                        // Find the owner again on the next read (a failover, a lost node).
                        self.node = None;
                        self.conn = None;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Sends a pipeline of keys in this slot (one that may end in a blocking command).
    async fn pipe<T: FromRedisValue>(&mut self, pipe: &Pipeline) -> RedisResult<T> {
        let conn = self.connect().await?;
        let result = pipe.query_async(conn).await;
        if let Err(e) = &result
            && (e.is_io_error()
                || e.is_connection_dropped()
                || e.is_timeout()
                || e.redirect_node().is_some())
        {
            // Find the slot's owner again next time (moved, failed over, lost).
            self.node = None;
            self.conn = None;
        }
        result
    }
}
