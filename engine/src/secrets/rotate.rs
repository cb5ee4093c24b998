//! Key rotation: what is stored sealed under which key ([`census`]), and sealing it again under
//! the active key ([`rotate`]) while Steward runs.
//!
//! Everything that holds sealed values is visited in batches (`SCAN`, `XRANGE`), and each one is
//! rewritten by a compare-and-set script that changes it only if it is still what was read: a
//! transition committed in between wins, and the next pass picks the document up again. A run's
//! document is rewritten without bumping its version — it means the same — so jobs that carry
//! the old copy still commit in one round trip; what they write may carry values under the old
//! key again, which still open (the old key stays in the keyring until the census shows nothing
//! under it) and which the next pass reseals. Queued jobs are not rewritten (a stream entry
//! cannot be changed in place under a consumer group); they leave the queue as workers run them,
//! and the census counts them until then. Dead letters are rewritten as new entries.
//!
//! Tenant connections (their client secret and refresh token, sealed for the tenant) and the
//! passwords ops keep for one-time delivery are visited too. Not covered: values that expire
//! within the hour on their own (the shared token cache, consents in progress). On a Redis
//! Cluster `SCAN` visits every master.

use std::collections::BTreeMap;

use redis::Script;
use serde::Serialize;
use steward_schemas::RunId;

use super::links::{SecretLinks, id_in_key};
use super::{Context, Error, Keyring, find_sealed};
use crate::store::Store;

/// The compare-and-set script for a hash field (a run's document).
const RESEAL_FIELD: &str = include_str!("../../lua/reseal_field.lua");

/// The compare-and-set script for a dead letter (a stream entry, rewritten as a new entry).
const RESEAL_ENTRY: &str = include_str!("../../lua/reseal_entry.lua");

/// How many sealed values sit where, under one key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Run documents holding a value sealed under this key.
    pub runs: u64,
    /// Queued jobs (step-stream entries) holding one; they leave as workers run them.
    pub queued_jobs: u64,
    /// Dead letters holding one.
    pub dead_letters: u64,
    /// One-time secret links sealed under it.
    pub links: u64,
    /// Tenant connections holding a credential sealed under it.
    #[serde(skip_serializing_if = "is_zero")]
    pub tenants: u64,
    /// Passwords kept for one-time delivery sealed under it.
    #[serde(skip_serializing_if = "is_zero")]
    pub kept: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Counts {
    fn total(&self) -> u64 {
        self.runs + self.queued_jobs + self.dead_letters + self.links + self.tenants + self.kept
    }
}

/// What is stored sealed under which key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Census {
    /// The key new secrets are sealed with.
    pub active: String,
    /// The keys this process has.
    pub keyring: Vec<String>,
    /// Per key id (including ids this process does not have).
    pub by_key: BTreeMap<String, Counts>,
}

impl Census {
    /// What is left under keys other than the active one.
    pub fn left(&self) -> u64 {
        self.by_key
            .iter()
            .filter(|(k, _)| **k != self.active)
            .map(|(_, c)| c.total())
            .sum()
    }

    /// The census in sentences.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "New secrets are sealed with key `{}`; this process has {}.\n",
            self.active,
            self.keyring
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if self.by_key.is_empty() {
            out.push_str("Nothing is stored sealed.\n");
        }
        for (key, c) in &self.by_key {
            let mut parts = Vec::new();
            for (n, what) in [
                (c.runs, "run"),
                (c.queued_jobs, "queued job"),
                (c.dead_letters, "dead letter"),
                (c.links, "secret link"),
                (c.tenants, "tenant connection"),
                (c.kept, "kept password"),
            ] {
                if n > 0 {
                    parts.push(format!("{n} {what}{}", if n == 1 { "" } else { "s" }));
                }
            }
            let note = if *key == self.active {
                " (the active key)"
            } else if self.keyring.contains(key) {
                " (to rotate)"
            } else {
                " (a key this process does not have: add it back to rotate these)"
            };
            out.push_str(&format!("Key `{key}`{note}: {}.\n", parts.join(", ")));
        }
        if self.left() == 0 {
            out.push_str(
                "Nothing is left under older keys: they can be removed from the keyring.\n",
            );
        } else {
            out.push_str("Run `steward secrets rotate` to seal what is under older keys again under the active key (queued jobs leave the queue as workers run them).\n");
        }
        out
    }
}

/// What a rotation did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Rotated {
    /// Run documents sealed again.
    pub runs: u64,
    /// Dead letters sealed again.
    pub dead_letters: u64,
    /// Secret links sealed again.
    pub links: u64,
    /// Tenant credentials sealed again.
    #[serde(skip_serializing_if = "is_zero")]
    pub tenants: u64,
    /// Kept passwords sealed again.
    #[serde(skip_serializing_if = "is_zero")]
    pub kept: u64,
    /// Items changed by someone else between the read and the write (visited again).
    pub retried: u64,
    /// Items that could not be opened (sealed under a key this process does not have, or
    /// altered); left as they are, and counted by the census under their key.
    pub skipped: u64,
    /// What is left afterwards.
    pub census: Census,
}

fn count_into(census: &mut Census, text: &str, add: impl Fn(&mut Counts)) {
    let mut seen: Vec<&str> = find_sealed(text).iter().map(|f| f.kid).collect();
    seen.sort_unstable();
    seen.dedup();
    for kid in seen {
        add(census.by_key.entry(kid.to_owned()).or_default());
    }
}

fn has_old(ring: &Keyring, text: &str) -> bool {
    find_sealed(text).iter().any(|f| f.kid != ring.active())
}

fn ring(store: &Store) -> Result<&Keyring, Error> {
    store.secrets().ok_or_else(|| {
        Error::Config(
            "this process has no secrets key; configure secrets.key-dir and secrets.active-key as the servers have them".to_owned(),
        )
    })
}

/// Every key matching `pattern` of type `kind`: `SCAN` on the server, or on every master of a
/// cluster (each holds only its own slots' keys).
async fn scan(store: &Store, pattern: &str, kind: &str) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    for node in store.db().masters().await? {
        let mut cursor = 0_u64;
        loop {
            let (next, keys): (u64, Vec<String>) = store
                .db()
                .query_on(
                    &node,
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(500)
                        .arg("TYPE")
                        .arg(kind),
                )
                .await?;
            out.extend(keys);
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(out)
}

/// Every entry of a stream, in batches.
async fn entries(store: &Store, stream: &str) -> Result<Vec<redis::streams::StreamId>, Error> {
    let mut out = Vec::new();
    let mut from = "-".to_owned();
    loop {
        let reply: redis::streams::StreamRangeReply = store
            .db()
            .query(
                redis::cmd("XRANGE")
                    .arg(stream)
                    .arg(&from)
                    .arg("+")
                    .arg("COUNT")
                    .arg(500),
            )
            .await?;
        let done = reply.ids.len() < 500;
        if let Some(last) = reply.ids.last() {
            from = format!("({}", last.id);
        }
        out.extend(reply.ids);
        if done {
            return Ok(out);
        }
    }
}

fn fields_of(entry: &redis::streams::StreamId) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = entry
        .map
        .iter()
        .filter_map(|(k, v)| {
            redis::from_redis_value::<String>(v.clone())
                .ok()
                .map(|v| (k.clone(), v))
        })
        .collect();
    fields.sort();
    fields
}

fn run_of_key(key: &str) -> Option<RunId> {
    key.rsplit_once(":run:")?.1.parse().ok()
}

/// The run a dead letter belongs to (`run` for a parked job, `r` for an entry moved as it was).
fn run_of_entry(fields: &[(String, String)]) -> Option<RunId> {
    fields
        .iter()
        .find(|(k, _)| k == "run" || k == "r")
        .and_then(|(_, v)| v.parse().ok())
}

/// What is stored sealed under which key.
pub async fn census(store: &Store) -> Result<Census, Error> {
    let ring = ring(store)?;
    let keys = store.keys();
    let mut census = Census {
        active: ring.active().to_owned(),
        keyring: ring.ids().map(str::to_owned).collect(),
        by_key: BTreeMap::new(),
    };
    let pattern = format!("{}:{{s*}}:run:*", keys.namespace());
    for key in scan(store, &pattern, "hash").await? {
        // The run's parts (or, stored by an earlier build, its whole document).
        let fields: Vec<(String, String)> =
            store.db().query(redis::cmd("HGETALL").arg(&key)).await?;
        if !fields.is_empty() {
            let text: String = fields.into_iter().map(|(_, v)| v).collect();
            count_into(&mut census, &text, |c| c.runs += 1);
        }
    }
    for shard in keys.all_shards() {
        for lane in crate::keys::Lane::ALL {
            for entry in entries(store, &keys.stream(shard, lane)).await? {
                let text: String = fields_of(&entry).into_iter().map(|(_, v)| v).collect();
                count_into(&mut census, &text, |c| c.queued_jobs += 1);
            }
        }
        for entry in entries(store, &keys.dead(shard)).await? {
            let text: String = fields_of(&entry).into_iter().map(|(_, v)| v).collect();
            count_into(&mut census, &text, |c| c.dead_letters += 1);
        }
    }
    for key in scan(store, &keys.secret_link_pattern(), "string").await? {
        let sealed: Option<String> = store.db().query(redis::cmd("GET").arg(&key)).await?;
        if let Some(sealed) = sealed {
            count_into(&mut census, &sealed, |c| c.links += 1);
        }
    }
    for key in scan(store, &tenant_pattern(store), "hash").await? {
        let (a, b): (Option<String>, Option<String>) = store
            .db()
            .query(
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg("client_secret")
                    .arg("refresh"),
            )
            .await?;
        let text = format!("{} {}", a.unwrap_or_default(), b.unwrap_or_default());
        count_into(&mut census, &text, |c| c.tenants += 1);
    }
    for key in scan(store, &kept_pattern(store), "string").await? {
        let text: Option<String> = store.db().query(redis::cmd("GET").arg(&key)).await?;
        if let Some(text) = text {
            count_into(&mut census, &text, |c| c.kept += 1);
        }
    }
    Ok(census)
}

fn tenant_pattern(store: &Store) -> String {
    format!("{}:{{tn}}:c:*", store.keys().namespace())
}

fn kept_pattern(store: &Store) -> String {
    format!("{}:m365:kept:*", store.keys().namespace())
}

/// The key a kept secret's key names (`<ns>:m365:kept:{<key>}`).
fn kept_key_of(key: &str) -> Option<&str> {
    let start = key.find(":m365:kept:{")? + ":m365:kept:{".len();
    key[start..].strip_suffix('}')
}

/// Seals everything stored under older keys again under the active key, in passes until one
/// changes nothing (at most five); `progress` hears about each pass.
pub async fn rotate(store: &Store, mut progress: impl FnMut(&str)) -> Result<Rotated, Error> {
    let ring = ring(store)?;
    let keys = store.keys();
    let field_script = Script::new(RESEAL_FIELD);
    let entry_script = Script::new(RESEAL_ENTRY);
    let links = SecretLinks::for_store(store).expect("the store has a keyring, checked above");
    let mut done = Rotated::default();
    for pass in 1..=5 {
        let mut changed = 0;
        let mut retried = 0;
        let mut skipped = 0;
        let pattern = format!("{}:{{s*}}:run:*", keys.namespace());
        for key in scan(store, &pattern, "hash").await? {
            let Some(run) = run_of_key(&key) else {
                continue;
            };
            // Every part of the run that holds a secret sealed under an older key (a run an
            // earlier build stored whole has one part, `d`).
            let fields: Vec<(String, String)> =
                store.db().query(redis::cmd("HGETALL").arg(&key)).await?;
            let mut resealed = false;
            for (field, value) in fields {
                if field == "v" || field.starts_with("j:") || !has_old(ring, &value) {
                    continue;
                }
                let fresh = match ring.reseal_within(&value, &Context::run_secret(&run.to_string()))
                {
                    Ok(Some(fresh)) => fresh,
                    Ok(None) => continue,
                    Err(_) => {
                        skipped += 1;
                        continue;
                    }
                };
                let mut inv = field_script.prepare_invoke();
                inv.key(&key).arg(&field).arg(&value).arg(fresh);
                if store.db().script::<i64>(&inv).await? == 1 {
                    resealed = true;
                    changed += 1;
                } else {
                    retried += 1;
                }
            }
            if resealed {
                done.runs += 1;
            }
        }
        for shard in keys.all_shards() {
            let stream = keys.dead(shard);
            for entry in entries(store, &stream).await? {
                let fields = fields_of(&entry);
                if !fields.iter().any(|(_, v)| has_old(ring, v)) {
                    continue;
                }
                let Some(run) = run_of_entry(&fields) else {
                    continue;
                };
                let cx = Context::run_secret(&run.to_string());
                let mut inv = entry_script.prepare_invoke();
                inv.key(&stream).arg(&entry.id).arg(fields.len());
                for (k, v) in &fields {
                    inv.arg(k).arg(v);
                }
                let fresh: Result<Vec<String>, _> = fields
                    .iter()
                    .map(|(_, v)| {
                        ring.reseal_within(v, &cx)
                            .map(|n| n.unwrap_or_else(|| v.clone()))
                    })
                    .collect();
                let Ok(fresh) = fresh else {
                    skipped += 1;
                    continue;
                };
                for ((k, _), v) in fields.iter().zip(fresh) {
                    inv.arg(k).arg(v);
                }
                if store.db().script::<i64>(&inv).await? == 1 {
                    done.dead_letters += 1;
                    changed += 1;
                } else {
                    retried += 1;
                }
            }
        }
        for key in scan(store, &keys.secret_link_pattern(), "string").await? {
            let Some(id) = id_in_key(&key) else {
                continue;
            };
            match links.reseal(id).await {
                Ok(true) => {
                    done.links += 1;
                    changed += 1;
                }
                Ok(false) => {}
                Err(Error::Open(_)) => skipped += 1,
                Err(e) => return Err(e),
            }
        }
        for key in scan(store, &tenant_pattern(store), "hash").await? {
            let tenant: Option<String> = store
                .db()
                .query(redis::cmd("HGET").arg(&key).arg("tenant"))
                .await?;
            let Some(tenant) = tenant else { continue };
            for (field, kind) in [
                ("client_secret", "client_secret"),
                ("refresh", "refresh_token"),
            ] {
                let value: Option<String> = store
                    .db()
                    .query(redis::cmd("HGET").arg(&key).arg(field))
                    .await?;
                let Some(value) = value.filter(|v| has_old(ring, v)) else {
                    continue;
                };
                let cx = Context::tenant_credential(&tenant, kind);
                let fresh = match ring.reseal_within(&value, &cx) {
                    Ok(Some(f)) => f,
                    Ok(None) => continue,
                    Err(_) => {
                        skipped += 1;
                        continue;
                    }
                };
                let mut inv = field_script.prepare_invoke();
                inv.key(&key).arg(field).arg(&value).arg(fresh);
                if store.db().script::<i64>(&inv).await? == 1 {
                    done.tenants += 1;
                    changed += 1;
                } else {
                    retried += 1;
                }
            }
        }
        for key in scan(store, &kept_pattern(store), "string").await? {
            let Some(kept) = kept_key_of(&key) else {
                continue;
            };
            let text: Option<String> = store.db().query(redis::cmd("GET").arg(&key)).await?;
            let Some(text) = text.filter(|t| has_old(ring, t)) else {
                continue;
            };
            let fresh = match ring.reseal_within(&text, &Context::new("kept-secret", &[kept])) {
                Ok(Some(f)) => f,
                Ok(None) => continue,
                Err(_) => {
                    skipped += 1;
                    continue;
                }
            };
            // Compare and set, keeping the key's expiry.
            let done_one: i64 = store
                .db()
                .script(
                    Script::new(
                        "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end \
                         redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL') return 1",
                    )
                    .prepare_invoke()
                    .key(&key)
                    .arg(&text)
                    .arg(fresh),
                )
                .await?;
            if done_one == 1 {
                done.kept += 1;
                changed += 1;
            } else {
                retried += 1;
            }
        }
        done.retried += retried;
        done.skipped = skipped;
        progress(&format!(
            "pass {pass}: sealed {changed} again under `{}`{}",
            ring.active(),
            if retried > 0 {
                format!(", {retried} changed meanwhile (visited again)")
            } else {
                String::new()
            }
        ));
        if changed == 0 && retried == 0 {
            break;
        }
    }
    done.census = census(store).await?;
    Ok(done)
}
