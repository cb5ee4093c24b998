//! The Redis connection every part of Steward shares: one server (a self-reconnecting
//! [`ConnectionManager`]) or a Redis Cluster ([`ClusterConnection`]).
//!
//! On a cluster a pipeline whose commands live in different slots is split: the commands of
//! each slot go to that slot's master as one pipeline, all slots at once, and the replies are put
//! back in the pipeline's order. A transaction (`MULTI`) and a script must stay within one slot
//! (the hash tags in the key names see to that); the cluster refuses anything else with
//! `CROSSSLOT`. On one server nothing changes: every call goes straight to the manager.

use std::collections::HashMap;

use futures::FutureExt as _;
use futures::future::try_join_all;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A connection to one Redis server or to a Redis Cluster; cheap to clone (clones share it).
#[derive(Clone)]
pub enum RedisConn {
    /// One server.
    Single(ConnectionManager),
    /// A cluster.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "RedisConn::Single",
            Self::Cluster(_) => "RedisConn::Cluster",
        })
    }
}

impl From<ConnectionManager> for RedisConn {
    fn from(conn: ConnectionManager) -> Self {
        Self::Single(conn)
    }
}

impl From<ClusterConnection> for RedisConn {
    fn from(conn: ClusterConnection) -> Self {
        Self::Cluster(conn)
    }
}

impl RedisConn {
    /// Whether this is a cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => {
                if pipeline.is_transaction() {
                    c.req_packed_commands(pipeline, offset, count)
                } else {
                    split_pipeline(c.clone(), pipeline).boxed()
                }
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Runs a (non-transactional) pipeline on a cluster: one sub-pipeline per slot, all at once;
/// a command whose keys are not in one slot (or that has none) goes alone, routed by the
/// cluster connection (which splits `MGET`/`DEL`… over slots itself).
async fn split_pipeline(
    conn: ClusterConnection,
    pipeline: &Pipeline,
) -> redis::RedisResult<Vec<Value>> {
    let cmds: Vec<&Cmd> = pipeline.cmd_iter().collect();
    let mut by_slot: HashMap<u16, Vec<usize>> = HashMap::new();
    let mut alone: Vec<usize> = Vec::new();
    for (i, cmd) in cmds.iter().enumerate() {
        match slot_of_cmd(cmd) {
            Some(slot) => by_slot.entry(slot).or_default().push(i),
            None => alone.push(i),
        }
    }
    if alone.is_empty() && by_slot.len() == 1 {
        let (slot, _) = by_slot.into_iter().next().expect("one slot");
        let mut c = conn;
        return c
            .route_pipeline(pipeline.clone(), 0, cmds.len(), route(slot))
            .await;
    }
    let groups = by_slot.into_iter().map(|(slot, idx)| {
        let mut c = conn.clone();
        let mut sub = redis::pipe();
        for &i in &idx {
            sub.add_command(cmds[i].clone());
        }
        async move {
            let n = idx.len();
            let replies = c.route_pipeline(sub, 0, n, route(slot)).await?;
            Ok::<_, redis::RedisError>(idx.into_iter().zip(replies).collect::<Vec<_>>())
        }
        .boxed()
    });
    let singles = alone.into_iter().map(|i| {
        let mut c = conn.clone();
        let cmd = cmds[i].clone();
        async move {
            let reply = c.req_packed_command(&cmd).await?;
            Ok::<_, redis::RedisError>(vec![(i, reply)])
        }
        .boxed()
    });
    let parts = try_join_all(groups.chain(singles)).await?;
    let mut out: Vec<Option<Value>> = vec![None; cmds.len()];
    for (i, v) in parts.into_iter().flatten() {
        out[i] = Some(v);
    }
    Ok(out.into_iter().map(|v| v.unwrap_or(Value::Nil)).collect())
}

fn route(slot: u16) -> SingleNodeRoutingInfo {
    SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master))
}

/// The slot of a key (CRC16/XMODEM of the key, or of its `{hash tag}`, modulo 16384).
pub fn slot_of(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16_xmodem(tagged) % 16384
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The one slot every key of `cmd` is in, for the commands Steward pipelines; `None` for a
/// command without keys, with keys in several slots, or of a shape not known here (sent alone).
fn slot_of_cmd(cmd: &Cmd) -> Option<u16> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .map(|a| match a {
            redis::Arg::Simple(d) => d,
            _ => b"0".as_slice(),
        })
        .collect();
    let name = args.first()?.to_ascii_uppercase();
    let keys: Vec<&[u8]> = match name.as_slice() {
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
            let n = count(args.get(2)?)?;
            args.get(3..3 + n)?.to_vec()
        }
        b"ZINTER" | b"ZUNION" | b"ZDIFF" | b"ZINTERCARD" | b"SINTERCARD" | b"LMPOP" | b"ZMPOP" => {
            let n = count(args.get(1)?)?;
            args.get(2..2 + n)?.to_vec()
        }
        b"ZINTERSTORE" | b"ZUNIONSTORE" | b"ZDIFFSTORE" => {
            let n = count(args.get(2)?)?;
            let mut keys = vec![*args.get(1)?];
            keys.extend(args.get(3..3 + n)?);
            keys
        }
        b"DEL" | b"UNLINK" | b"EXISTS" | b"TOUCH" | b"MGET" | b"SINTER" | b"SUNION" | b"SDIFF"
        | b"SINTERSTORE" | b"SUNIONSTORE" | b"SDIFFSTORE" => args.get(1..)?.to_vec(),
        b"XREAD" | b"XREADGROUP" => {
            let at = args
                .iter()
                .position(|a| a.eq_ignore_ascii_case(b"STREAMS"))?;
            let rest = args.get(at + 1..)?;
            rest.get(..rest.len() / 2)?.to_vec()
        }
        b"XINFO" | b"XGROUP" | b"OBJECT" | b"MEMORY" => vec![*args.get(2)?],
        b"PING" | b"INFO" | b"CONFIG" | b"CLIENT" | b"SCRIPT" | b"TIME" | b"DBSIZE" | b"WAIT"
        | b"WAITAOF" | b"CLUSTER" | b"MULTI" | b"EXEC" | b"KEYS" | b"SCAN" | b"FLUSHDB"
        | b"FLUSHALL" | b"FUNCTION" | b"PUBLISH" | b"SELECT" | b"RANDOMKEY" => return None,
        _ => vec![*args.get(1)?],
    };
    let mut slots = keys.iter().map(|k| slot_of(k));
    let first = slots.next()?;
    slots.all(|s| s == first).then_some(first)
}

fn count(arg: &[u8]) -> Option<usize> {
    std::str::from_utf8(arg).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_agree_with_redis() {
        // `CLUSTER KEYSLOT` answers of a real server.
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"123456789"), 12739);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        // An empty tag is no tag: the whole key is hashed.
        assert_ne!(slot_of(b"{}foo"), slot_of(b"foo"));
    }

    #[test]
    fn commands_are_grouped_by_the_slot_of_all_their_keys() {
        let mut c = redis::cmd("HGET");
        c.arg("a:{s001}:run").arg("v");
        assert_eq!(slot_of_cmd(&c), Some(slot_of(b"s001")));
        let mut e = redis::cmd("EVALSHA");
        e.arg("abc")
            .arg(2)
            .arg("x:{s002}:a")
            .arg("x:{s002}:b")
            .arg("argv");
        assert_eq!(slot_of_cmd(&e), Some(slot_of(b"s002")));
        let mut cross = redis::cmd("DEL");
        cross.arg("x:{s001}:a").arg("x:{s002}:a");
        assert_eq!(slot_of_cmd(&cross), None);
        let mut info = redis::cmd("XINFO");
        info.arg("CONSUMERS").arg("x:{s003}:steps").arg("workers");
        assert_eq!(slot_of_cmd(&info), Some(slot_of(b"s003")));
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg("g")
            .arg("c")
            .arg("STREAMS")
            .arg("{a}1")
            .arg("{b}2")
            .arg(">")
            .arg(">");
        assert_eq!(slot_of_cmd(&read), None);
        assert_eq!(slot_of_cmd(&redis::cmd("PING")), None);
    }
}
