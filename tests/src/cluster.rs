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
