//! A private Redis Cluster: three (or more) `redis-server --cluster-enabled yes` processes on free
//! ports, each in its own directory, joined with `redis-cli --cluster create`; every process is
//! killed when it is dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::wait_for;

/// A running private cluster of masters without replicas.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
    _temp: tempfile::TempDir,
}

#[derive(Debug)]
struct ClusterNode {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// A port that is free, and whose cluster bus port (port + 10000) is free too.
fn free_cluster_port(taken: &[u16]) -> Result<u16> {
    for _ in 0..200 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        // The bus port must fit too: stay well below 65535 - 10000.
        let port = 20_000 + port % 30_000;
        if taken.contains(&port) || taken.contains(&(port + 10_000)) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
        {
            return Ok(port);
        }
    }
    bail!("no free port pair (port, port + 10000) found")
}

impl RedisCluster {
    /// Starts `masters` nodes, creates the cluster (slots spread evenly) and waits until every
    /// node reports `cluster_state:ok` and knows every other.
    pub async fn start(masters: usize) -> Result<Self> {
        let temp = tempfile::Builder::new()
            .prefix("steward-cluster-")
            .tempdir()?;
        let mut cluster = Self {
            nodes: Vec::new(),
            _temp: temp,
        };
        let mut taken = Vec::new();
        for i in 0..masters {
            let dir = cluster._temp.path().join(format!("node{i}"));
            std::fs::create_dir(&dir)?;
            let port = free_cluster_port(&taken)?;
            taken.push(port);
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", "5000"])
                .arg("--dir")
                .arg(&dir)
                .arg("--logfile")
                .arg(dir.join("redis.log"))
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .args(["--stream-node-max-bytes", "1024"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start redis-server (is it installed?)")?;
            cluster.nodes.push(ClusterNode {
                port,
                dir,
                child: Some(child),
            });
        }
        for node in &cluster.nodes {
            let url = format!("redis://127.0.0.1:{}/", node.port);
            wait_for(
                &format!("redis-server on port {} to answer", node.port),
                Duration::from_secs(10),
                || {
                    let url = url.clone();
                    async move { Ok(ping(&url).await.then_some(())) }
                },
            )
            .await
            .with_context(|| node.log())?;
        }
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = tokio::task::spawn_blocking(move || {
            Command::new("redis-cli")
                .arg("--cluster")
                .arg("create")
                .args(&addrs)
                .args(["--cluster-replicas", "0", "--cluster-yes"])
                .stdin(Stdio::null())
                .output()
        })
        .await??;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let n = cluster.nodes.len();
        for node in &cluster.nodes {
            let url = format!("redis://127.0.0.1:{}/", node.port);
            wait_for(
                &format!("node {} to report cluster_state:ok", node.port),
                Duration::from_secs(30),
                || {
                    let url = url.clone();
                    async move {
                        let Ok(info) = cluster_info(&url).await else {
                            return Ok(None);
                        };
                        Ok((info.contains("cluster_state:ok")
                            && info.contains("cluster_slots_assigned:16384")
                            && info.contains(&format!("cluster_known_nodes:{n}")))
                        .then_some(()))
                    }
                },
            )
            .await
            .with_context(|| node.log())?;
        }
        Ok(cluster)
    }

    /// The URL Steward connects with: every node as a seed.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}/", nodes.join(","))
    }

    /// The nodes' ports.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Moves `slot` (with its keys) to the master on `to`, the way `redis-cli --cluster reshard`
    /// does: `IMPORTING`/`MIGRATING`, `MIGRATE` of its keys in batches, then `SETSLOT … NODE`
    /// on every node.
    pub async fn move_slot(&self, slot: u16, to: u16) -> Result<()> {
        let mut conns = Vec::new();
        let mut ids = Vec::new();
        for node in &self.nodes {
            let client = redis::Client::open(format!("redis://127.0.0.1:{}/", node.port))?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            let id: String = redis::cmd("CLUSTER")
                .arg("MYID")
                .query_async(&mut conn)
                .await?;
            conns.push((node.port, conn));
            ids.push(id);
        }
        let index = |port: u16| self.nodes.iter().position(|n| n.port == port);
        let target = index(to).context("no node on that port")?;
        let mut source = None;
        let slots: Vec<redis::Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut conns[0].1)
            .await?;
        for range in slots {
            let parts: Vec<redis::Value> = redis::from_redis_value(range)?;
            let start: u16 = redis::from_redis_value_ref(&parts[0])?;
            let end: u16 = redis::from_redis_value_ref(&parts[1])?;
            let master: Vec<redis::Value> = redis::from_redis_value_ref(&parts[2])?;
            let port: u16 = redis::from_redis_value_ref(&master[1])?;
            if (start..=end).contains(&slot) {
                source = index(port);
            }
        }
        let source = source.context("nobody owns the slot")?;
        if source == target {
            return Ok(());
        }
        let setslot = |state: &str, id: &str| {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("SETSLOT").arg(slot).arg(state).arg(id);
            cmd
        };
        let () = setslot("IMPORTING", &ids[source])
            .query_async(&mut conns[target].1)
            .await?;
        let () = setslot("MIGRATING", &ids[target])
            .query_async(&mut conns[source].1)
            .await?;
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(100)
                .query_async(&mut conns[source].1)
                .await?;
            if keys.is_empty() {
                break;
            }
            let () = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .query_async(&mut conns[source].1)
                .await?;
        }
        for i in [target, source]
            .into_iter()
            .chain((0..conns.len()).filter(|&i| i != target && i != source))
        {
            let () = setslot("NODE", &ids[target])
                .query_async(&mut conns[i].1)
                .await?;
        }
        Ok(())
    }

    /// Kills every node (SIGKILL).
    pub fn kill_all(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// The nodes' logs' tails, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(ClusterNode::log)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl ClusterNode {
    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        format!(
            "--- redis node {} ---\n{}",
            self.port,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

async fn ping(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return false;
    };
    redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .is_ok()
}

async fn cluster_info(url: &str) -> Result<String> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    Ok(redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async::<String>(&mut conn)
        .await?)
}
