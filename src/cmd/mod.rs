//! One module per command group. The clap tree in `main.rs` lists the commands; each module holds
//! its group's arguments and what the commands do, and this one what they share.

pub(crate) mod approvals;
pub(crate) mod bench;
pub(crate) mod companies;
pub(crate) mod demo;
pub(crate) mod inbox;
pub(crate) mod plan;
pub(crate) mod psa;
pub(crate) mod runs;
pub(crate) mod sandbox;
pub(crate) mod schedules;
pub(crate) mod schema;
pub(crate) mod secrets;
pub(crate) mod serve;
pub(crate) mod technicians;
pub(crate) mod tenants;
pub(crate) mod validate;
pub(crate) mod worker;

use std::sync::Arc;

use anyhow::{Result, anyhow, bail};
use serde_json::Value;
use steward_engine::config::{Config, redacted_url};
use steward_engine::store::Store;
use steward_engine::{Db, Keys, SystemClock};

use crate::Global;

/// What `steward` exits with. Every command: 0 done, 1 failed (2: clap's usage error).
/// `run --wait` says how the run stands, so scripts can tell.
pub(crate) mod exit {
    /// The run completed.
    pub(crate) const COMPLETED: u8 = 0;
    /// The command failed (bad input, refused, the API unreachable).
    pub(crate) const ERROR: u8 = 1;
    /// The run waits at an approval gate for its approvers.
    pub(crate) const AT_GATE: u8 = 3;
    /// The run is paused and waits for a technician.
    pub(crate) const PAUSED: u8 = 4;
    /// The run was rolled back (a step failed, a gate was rejected or expired, or it was
    /// cancelled with rollback).
    pub(crate) const ROLLED_BACK: u8 = 5;
    /// The rollback failed: a technician must finish it.
    pub(crate) const ROLLBACK_FAILED: u8 = 6;
    /// The run was cancelled.
    pub(crate) const CANCELLED: u8 = 7;
}

/// The configuration: defaults, the file, STEWARD_ variables, then the global flags; validated.
pub(crate) fn load_config(global: &Global) -> Result<Config> {
    let mut config = Config::load(global.config.as_deref(), std::env::vars())?;
    if let Some(url) = &global.redis {
        config.redis.url.clone_from(url);
    }
    if let Some(ns) = &global.namespace {
        config.redis.namespace.clone_from(ns);
    }
    if let Some(shards) = global.shards {
        config.redis.shards = shards;
    }
    config.validate()?;
    Ok(config)
}

/// A store on the configured Redis and namespace, prepared (scripts loaded).
pub(crate) async fn connect(config: &Config) -> Result<Store> {
    connect_with_clock(config, Arc::new(SystemClock)).await
}

/// [`connect`] with the time taken from `clock` (`steward demo` follows the sandbox's clock).
pub(crate) async fn connect_with_clock(
    config: &Config,
    clock: Arc<dyn steward_engine::clock::Clock>,
) -> Result<Store> {
    let keys = Keys::new(&config.redis.namespace, config.redis.shards)?;
    let db = Db::connect(&config.redis.url, config.redis.response_timeout.get())
        .await
        .map_err(|e| {
            anyhow!(
                "cannot connect to Redis at {}: {}",
                redacted_url(&config.redis.url),
                steward_engine::db::connect_failure(&e)
            )
        })?;
    let ring = steward_engine::secrets::keyring(&config.secrets, &db, &keys).await?;
    let store = Store::new(db, keys, clock).with_secrets(ring);
    store.prepare().await?;
    Ok(store)
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = ctrl_c.await;
            return;
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Prints `v` as JSON, or else runs `human`.
pub(crate) fn output(json: bool, v: &Value, human: impl FnOnce()) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        human();
    }
    Ok(())
}

/// An error and its causes on one line, each said once: a layer whose message already contains
/// its cause's (`redis: Connection refused` over `Connection refused`) does not repeat it.
pub(crate) fn said_once(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if msg.is_empty() || out.contains(&msg) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&msg);
    }
    out
}

/// Commands that go through the HTTP API refuse the flags that point at Redis: they would be
/// ignored, and a technician who passes them expects them to count.
pub(crate) fn through_api(global: &Global, command: &str) -> Result<()> {
    let given: Vec<&str> = [
        ("--redis", global.redis.is_some()),
        ("--namespace", global.namespace.is_some()),
        ("--shards", global.shards.is_some()),
    ]
    .into_iter()
    .filter_map(|(flag, set)| set.then_some(flag))
    .collect();
    if given.is_empty() {
        return Ok(());
    }
    bail!(
        "`steward {command}` goes through the HTTP API (STEWARD_API_URL, as the technician of STEWARD_TOKEN), so {} would not be used; drop {}. Only server-side commands (serve, worker, bench, technicians without a token) use Redis",
        given.join(", "),
        if given.len() == 1 { "it" } else { "them" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer that repeats its cause in its message, as `redis: {0}` errors do.
    #[derive(Debug)]
    struct Wrapper(std::io::Error);

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "redis: {}", self.0)
        }
    }

    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn an_error_chain_says_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let e = anyhow::Error::new(Wrapper(io)).context("cannot list technicians");
        assert_eq!(
            said_once(&e),
            "cannot list technicians: redis: Connection refused"
        );
        assert_eq!(format!("{e:#}").matches("Connection refused").count(), 2);
    }
}
