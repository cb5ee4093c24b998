//! Real `steward` processes over a test's [`Env`] (the test passes the binary, its
//! `CARGO_BIN_EXE_steward`): workers and schedulers, many runs started and waited on, the jobs a
//! process holds and the ledger's count of changes; an API and a worker, ready; a whole
//! installation with two companies and their technicians' tokens.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;
use steward_core::Plan;
use steward_engine::keys::{GROUP, Lane};
use steward_schemas::{CompanyScope, Role, RunId, RunStatus};

use crate::{Env, Ledger, Proc, only, wait_for};

/// `steward worker` of `env` (64 steps at once, taking over jobs idle for `claim_idle`), logging
/// to `dir/<name>.log`.
pub fn worker(env: &Env, bin: &str, dir: &Path, name: &str, claim_idle: &str) -> Result<Proc> {
    let mut args = env.cli_args();
    args.extend(["worker", "--concurrency", "64", "--claim-idle", claim_idle].map(str::to_owned));
    Proc::spawn(Path::new(bin), dir, name, &args)
}

/// `steward serve` of `env` as a scheduler (timers looked at every 50 ms), logging to
/// `dir/<name>.log`.
pub fn scheduler(env: &Env, bin: &str, dir: &Path, name: &str) -> Result<Proc> {
    let mut args = env.cli_args();
    // Any free port: the default (127.0.0.1:8080) is shared by every test and anything else on
    // the machine.
    args.extend(["serve", "--listen", "127.0.0.1:0", "--tick", "50ms"].map(str::to_owned));
    Proc::spawn(Path::new(bin), dir, name, &args)
}

/// Starts `n` runs of `plan`, the `i`th with inputs `{"n": i}`.
pub async fn start_runs(env: &Env, plan: &Arc<Plan>, n: usize) -> Result<Vec<RunId>> {
    let mut runs = Vec::with_capacity(n);
    for i in 0..n {
        runs.push(env.start_run(plan, json!({"n": i})).await?);
    }
    Ok(runs)
}

/// What [`wait_all`] does when loading a run fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadErrors {
    /// The wait fails at once.
    Fail,
    /// The run is looked at again (a Redis that is restarting answers with errors for a moment).
    Retry,
}

/// Waits until every run of `runs` has ended; their final statuses. On timeout the error says
/// how many had not ended, with `context()` (the processes' logs, say).
pub async fn wait_all(
    env: &Env,
    runs: &[RunId],
    timeout: Duration,
    load_errors: LoadErrors,
    context: impl FnOnce() -> String,
) -> Result<HashMap<RunId, RunStatus>> {
    let done = Mutex::new(HashMap::new());
    let done = &done;
    wait_for(
        &format!("{} runs to end", runs.len()),
        timeout,
        || async move {
            for run in runs {
                if done.lock().expect("not poisoned").contains_key(run) {
                    continue;
                }
                let loaded = match env.store.load(*run).await {
                    Ok(loaded) => loaded,
                    Err(e) if load_errors == LoadErrors::Fail => return Err(e.into()),
                    Err(_) => None,
                };
                if let Some(snap) = loaded
                    && snap.doc.state.status.is_terminal()
                {
                    done.lock()
                        .expect("not poisoned")
                        .insert(*run, snap.doc.state.status);
                }
            }
            let done = done.lock().expect("not poisoned");
            Ok((done.len() == runs.len()).then(|| done.clone()))
        },
    )
    .await
    .with_context(|| {
        let ended = done.lock().map_or(0, |d| d.len());
        format!(
            "{} of {} runs had not ended\n{}",
            runs.len() - ended,
            runs.len(),
            context()
        )
    })
}

/// The processes' logs, for failure messages: each one's warnings and errors, then its tail; and
/// the nodes' logs of a cluster.
pub fn logs(env: &Env, procs: &[&Proc]) -> String {
    let mut out: Vec<String> = procs
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let bad: Vec<&str> = text
                .lines()
                .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                .take(20)
                .collect();
            format!("{}\n{}", bad.join("\n"), p.log_text())
        })
        .collect();
    if let Some(c) = env.redis.cluster() {
        out.push(c.logs());
    }
    out.join("\n")
}

/// Jobs held (delivered, not acknowledged) by consumers whose names start with `prefix`, over
/// every shard and lane.
pub async fn pending_for(env: &Env, prefix: &str) -> Result<u64> {
    let keys = env.store.keys();
    let mut total = 0;
    for (shard, lane) in keys.all_shards().flat_map(|s| Lane::ALL.map(|l| (s, l))) {
        let consumers: Vec<redis::Value> = env
            .store
            .db()
            .query(
                redis::cmd("XINFO")
                    .arg("CONSUMERS")
                    .arg(keys.stream(shard, lane))
                    .arg(GROUP),
            )
            .await?;
        for c in consumers {
            let map: HashMap<String, redis::Value> = redis::from_redis_value(c)?;
            let name: String = map
                .get("name")
                .map(redis::from_redis_value_ref)
                .transpose()?
                .unwrap_or_default();
            let pending: u64 = map
                .get("pending")
                .map(redis::from_redis_value_ref)
                .transpose()?
                .unwrap_or(0);
            if name.starts_with(prefix) {
                total += pending;
            }
        }
    }
    Ok(total)
}

/// Jobs held by the `steward` process `p`.
pub async fn held_by(env: &Env, p: &Proc) -> Result<u64> {
    pending_for(env, &consumer_prefix(p.pid())).await
}

/// The start of the consumer names of the process `pid` (see
/// [`steward_engine::worker::consumer_name`], whose format this copies; checked by
/// `consumer_names_start_with_the_host_and_pid_the_tests_look_for` in `tests/crash.rs`).
pub fn consumer_prefix(pid: u32) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    format!("{}-{pid}-", if host.is_empty() { "host" } else { &host },)
}

/// Asserts that the ledger holds `expected` changes (`what` they are), each applied once; the
/// ledger.
pub async fn assert_applied_once(env: &Env, expected: usize, what: &str) -> Result<Ledger> {
    let ledger = env.ledger().await?;
    let mut applied: HashMap<&str, usize> = HashMap::new();
    for a in &ledger.applied {
        *applied.entry(a.as_str()).or_default() += 1;
    }
    assert_eq!(
        ledger.applied.len(),
        expected,
        "{what}: {:?}",
        ledger.applied
    );
    assert!(
        applied.values().all(|&n| n == 1),
        "every change applied once: {applied:?}"
    );
    Ok(ledger)
}

/// A workflow whose `b` makes its change, then holds it 5 s before reporting: a worker killed
/// in that time leaves a change made and not reported, for another to take over.
pub const HOLDING: &str = r#"
name: holding
inputs: {n: {type: number}}
steps:
  - {id: a, op: ledger, with: {key: a}}
  - {id: b, op: ledger, needs: [a], with: {key: b, hold_ms: 5000}}
  - {id: c, op: ledger, needs: [b], with: {key: c}}
"#;

/// Waits (30 s at most) until `worker` has applied `applied_b` changes `b` (of [`HOLDING`]) and
/// holds at least `held` jobs: it is in the middle of them, and killing it now interrupts each.
pub async fn wait_in_the_middle(
    env: &Env,
    worker: &Proc,
    applied_b: usize,
    held: u64,
) -> Result<()> {
    wait_for(
        &format!("the worker to be in the middle of {held} steps"),
        Duration::from_secs(30),
        || async {
            let ledger = env.ledger().await?;
            let done = ledger.applied.iter().filter(|a| a.ends_with("/b")).count();
            let holds = held_by(env, worker).await?;
            Ok((done == applied_b && holds >= held).then_some(()))
        },
    )
    .await
    .with_context(|| logs(env, &[worker]))
}

/// After a worker was killed in the middle of `interrupted` steps `b`: each of them ran again on
/// the survivor (executed twice, applied once), and no step of `runs` was enqueued twice.
pub async fn assert_taken_over_once(
    env: &Env,
    ledger: &Ledger,
    runs: &[RunId],
    interrupted: usize,
) -> Result<()> {
    let b_executions = ledger
        .executions
        .iter()
        .filter(|e| e.contains("/b/"))
        .count();
    assert_eq!(
        b_executions,
        2 * interrupted,
        "each interrupted `b` ran again on the survivor (executed twice, applied once)"
    );
    for run in runs {
        let snap = env.store.load(*run).await?.context("run")?;
        for (id, rec) in &snap.doc.state.steps {
            assert_eq!(
                rec.seq, 1,
                "{run} {id}: dispatched once, never enqueued twice"
            );
        }
    }
    Ok(())
}

/// A free port on 127.0.0.1 (free when asked: the server the test starts binds it a moment
/// later).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until a GET of `url` succeeds (`what`: what answers then), for at most `timeout`.
pub async fn wait_answers(what: &str, url: &str, timeout: Duration) -> Result<()> {
    let http = reqwest::Client::new();
    wait_for(what, timeout, || {
        let (http, url) = (http.clone(), url.to_owned());
        async move {
            Ok(http
                .get(url)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ()))
        }
    })
    .await
}

/// Waits until the API at `base` answers `/readyz` with a success, for at most `timeout`.
pub async fn wait_ready(base: &str, timeout: Duration) -> Result<()> {
    wait_answers("the API", &format!("{base}/readyz"), timeout).await
}

/// `steward serve` on a free port and `steward worker`, both of an [`Env`], logging into a
/// folder; killed when dropped.
#[derive(Debug)]
pub struct Servers {
    /// The API's `http://127.0.0.1:port`.
    pub api: String,
    /// `steward serve` (`serve.log`).
    pub serve: Proc,
    /// `steward worker` (`worker.log`).
    pub worker: Proc,
}

impl Servers {
    /// Starts `steward serve --listen 127.0.0.1:<port> SERVE_ARGS…` and `steward worker` of `env`
    /// from `bin`, logging into `dir`, and waits at most `ready_within` for the API to be ready
    /// (failing with `serve`'s log).
    pub async fn start(
        env: &Env,
        bin: &str,
        dir: &Path,
        serve_args: &[&str],
        ready_within: Duration,
    ) -> Result<Self> {
        let port = free_port()?;
        let api = format!("http://127.0.0.1:{port}");
        let mut args = env.cli_args();
        args.extend([
            "serve".to_owned(),
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
        ]);
        args.extend(serve_args.iter().map(|a| (*a).to_owned()));
        let serve = Proc::spawn(Path::new(bin), dir, "serve", &args)?;
        let mut args = env.cli_args();
        args.push("worker".to_owned());
        let worker = Proc::spawn(Path::new(bin), dir, "worker", &args)?;
        wait_ready(&api, ready_within)
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", serve.log_text()))?;
        Ok(Self { api, serve, worker })
    }

    /// Both processes' logs, for failure messages.
    pub fn logs(&self) -> String {
        format!("{}\n{}", self.serve.log_text(), self.worker.log_text())
    }
}

/// An installation as a technician meets it: a private Redis, `steward serve` (the API and the
/// timers, every 20 ms) and `steward worker` as processes, offering the workflows given;
/// companies `contoso` (approvers alice and bob) and `fabrikam` (approvers lead and carol);
/// technicians and their tokens.
#[derive(Debug)]
pub struct Installation {
    /// The Redis, namespace and stores.
    pub env: Env,
    /// The API's `http://127.0.0.1:port`.
    pub api: String,
    /// The folder of the logs and of the workflows (`workflows/<name>.yaml`).
    pub dir: tempfile::TempDir,
    /// `steward serve`.
    pub serve: Proc,
    /// `steward worker`.
    pub worker: Proc,
    /// Tokens by name: `admin` (every company), `tech`, `alice`, `bob` (contoso), `outsider`,
    /// `lead`, `carol` (fabrikam).
    pub tokens: HashMap<&'static str, String>,
}

impl Installation {
    /// Adds `fabrikam` to `env`, starts the processes of `bin` offering `workflows` (name, YAML)
    /// and waits at most 30 s for the API, and adds the technicians.
    pub async fn start(env: Env, bin: &str, workflows: &[(&str, &str)]) -> Result<Self> {
        steward_engine::companies::ensure(
            &env.companies(),
            steward_engine::companies::sample(
                "fabrikam",
                &["lead@msp.example", "carol@msp.example"],
            ),
        )
        .await?;
        let dir = tempfile::tempdir()?;
        let flows = dir.path().join("workflows");
        std::fs::create_dir(&flows)?;
        for (name, yaml) in workflows {
            std::fs::write(flows.join(format!("{name}.yaml")), yaml)?;
        }
        let Servers { api, serve, worker } = Servers::start(
            &env,
            bin,
            dir.path(),
            &[
                "--tick",
                "20ms",
                "--workflows",
                &flows.display().to_string(),
            ],
            Duration::from_secs(30),
        )
        .await?;
        let tokens = env
            .add_technicians(vec![
                ("admin", Role::Admin, CompanyScope::ALL),
                ("tech", Role::Technician, only("contoso")?),
                ("alice", Role::Technician, only("contoso")?),
                ("bob", Role::Technician, only("contoso")?),
                ("outsider", Role::Technician, only("fabrikam")?),
                // fabrikam's approvers must be enabled technicians for its gates to open.
                ("lead", Role::Technician, only("fabrikam")?),
                ("carol", Role::Technician, only("fabrikam")?),
            ])
            .await?;
        Ok(Self {
            env,
            api,
            dir,
            serve,
            worker,
            tokens,
        })
    }

    /// Both processes' logs, for failure messages.
    pub fn logs(&self) -> String {
        format!("{}\n{}", self.serve.log_text(), self.worker.log_text())
    }
}
