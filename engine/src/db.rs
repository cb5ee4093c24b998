//! The Redis connection, with a count of round trips (the benchmark reports them per step).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, Pipeline, RedisResult, ScriptInvocation};

/// A multiplexed, self-reconnecting Redis connection shared by every task of a process;
/// concurrent requests are pipelined on it.
#[derive(Clone)]
pub struct Db {
    conn: ConnectionManager,
    client: redis::Client,
    round_trips: Arc<AtomicU64>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
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
        let client = redis::Client::open(url)?;
        let conn = client
            .get_connection_manager_with_config(manager_config(Some(response_timeout)))
            .await?;
        Ok(Self {
            conn,
            client,
            round_trips: Arc::new(AtomicU64::new(0)),
        })
    }

    /// A separate connection for blocking reads (`XREADGROUP … BLOCK`), which would otherwise
    /// hold up every request pipelined behind them.
    pub async fn blocking(&self, block: Duration) -> RedisResult<Blocking> {
        let conn = self
            .client
            .get_connection_manager_with_config(manager_config(Some(
                block + Duration::from_secs(5),
            )))
            .await?;
        Ok(Blocking {
            conn,
            round_trips: self.round_trips.clone(),
        })
    }

    /// Sends one command.
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        cmd.query_async(&mut self.conn.clone()).await
    }

    /// Sends a pipeline (one round trip).
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
    pub fn manager(&self) -> ConnectionManager {
        self.conn.clone()
    }
}

/// A connection for blocking reads.
#[derive(Clone)]
pub struct Blocking {
    conn: ConnectionManager,
    round_trips: Arc<AtomicU64>,
}

impl std::fmt::Debug for Blocking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blocking").finish()
    }
}

impl Blocking {
    /// The server's id for this connection (for `CLIENT UNBLOCK`); it changes when the
    /// connection is re-established.
    pub async fn client_id(&mut self) -> RedisResult<i64> {
        self.query(&redis::cmd("CLIENT").arg("ID").clone()).await
    }

    /// Sends one (blocking) command.
    pub async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        cmd.query_async(&mut self.conn).await
    }

    /// Sends a pipeline that may end in a blocking command.
    pub async fn pipe<T: FromRedisValue>(&mut self, pipe: &Pipeline) -> RedisResult<T> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        pipe.query_async(&mut self.conn).await
    }
}
