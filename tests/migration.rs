//! Runs stored by an earlier build finish under this one.
//!
//! `tests/fixtures/migration/*.json` are the Redis contents of a namespace recorded by an
//! earlier build (`record_fixture` below, run with that build): runs parked at a gate, a run
//! whose first job is queued, a run waiting for its scheduled start, and an ended run. The test
//! writes them into a fresh Redis under a new namespace, starts this build's worker and
//! scheduler, and drives every run to its end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::json;
use steward_engine::embedded::Persistence;
use steward_schemas::{RunId, RunStatus};
use steward_tests::{Env, WorkerOpts, plan};

const T: Duration = Duration::from_secs(20);

/// The workflow every recorded run follows: a step, a gate, a step after it.
const GATED: &str = "name: migrated\nsteps:\n  - {id: first, op: ledger, with: {key: \"${{ inputs.who }}-first\"}}\n  - id: approval\n    needs: [first]\n    gate: {approvers: company, expires_in: 24h}\n  - {id: after, op: ledger, needs: [approval], with: {key: \"${{ inputs.who }}-after\"}}\ninputs:\n  who: {type: string}\n";

/// One key of a recorded namespace, with the namespace cut off its name.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Recorded {
    Hash {
        key: String,
        fields: BTreeMap<String, String>,
    },
    String {
        key: String,
        value: String,
    },
    Zset {
        key: String,
        members: Vec<(String, f64)>,
    },
    Set {
        key: String,
        members: Vec<String>,
    },
    List {
        key: String,
        items: Vec<String>,
    },
    Stream {
        key: String,
        entries: Vec<(String, Vec<(String, String)>)>,
        /// Consumer groups: (name, last delivered id).
        groups: Vec<(String, String)>,
    },
}

/// What the recording says about its runs.
#[derive(Debug, Serialize, Deserialize)]
struct Fixture {
    /// The build that recorded it (`git describe`).
    recorded_by: String,
    /// The run ids, by what they are waiting for.
    runs: BTreeMap<String, String>,
    keys: Vec<Recorded>,
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/migration")
}

/// Reads every key of `namespace`.
async fn dump(env: &Env) -> Result<Vec<Recorded>> {
    let db = env.store.db();
    let prefix = format!("{}:", env.namespace);
    let mut names: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = db
            .query(
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{prefix}*"))
                    .arg("COUNT")
                    .arg(1000),
            )
            .await?;
        names.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let key = name.strip_prefix(&prefix).context("prefix")?.to_owned();
        let kind: String = db.query(redis::cmd("TYPE").arg(&name)).await?;
        out.push(match kind.as_str() {
            "hash" => Recorded::Hash {
                key,
                fields: db.query(redis::cmd("HGETALL").arg(&name)).await?,
            },
            "string" => Recorded::String {
                key,
                value: db.query(redis::cmd("GET").arg(&name)).await?,
            },
            "zset" => Recorded::Zset {
                key,
                members: db
                    .query(
                        redis::cmd("ZRANGE")
                            .arg(&name)
                            .arg(0)
                            .arg(-1)
                            .arg("WITHSCORES"),
                    )
                    .await?,
            },
            "set" => Recorded::Set {
                key,
                members: db.query(redis::cmd("SMEMBERS").arg(&name)).await?,
            },
            "list" => Recorded::List {
                key,
                items: db
                    .query(redis::cmd("LRANGE").arg(&name).arg(0).arg(-1))
                    .await?,
            },
            "stream" => {
                let range: redis::streams::StreamRangeReply = db
                    .query(redis::cmd("XRANGE").arg(&name).arg("-").arg("+"))
                    .await?;
                let entries = range
                    .ids
                    .into_iter()
                    .map(|e| {
                        let mut fields: Vec<(String, String)> = e
                            .map
                            .iter()
                            .map(|(k, v)| {
                                (
                                    k.clone(),
                                    redis::from_redis_value_ref::<String>(v).unwrap_or_default(),
                                )
                            })
                            .collect();
                        fields.sort();
                        (e.id, fields)
                    })
                    .collect();
                let info: redis::streams::StreamInfoGroupsReply = db
                    .query(redis::cmd("XINFO").arg("GROUPS").arg(&name))
                    .await?;
                let groups = info
                    .groups
                    .into_iter()
                    .map(|g| (g.name, g.last_delivered_id))
                    .collect();
                Recorded::Stream {
                    key,
                    entries,
                    groups,
                }
            }
            other => bail!("key {name} has type {other}, which the recorder does not know"),
        });
    }
    Ok(out)
}

/// Writes recorded keys into `env`'s namespace (its own keys of the same names are replaced).
async fn restore(env: &Env, keys: &[Recorded]) -> Result<()> {
    let db = env.store.db();
    let ns = &env.namespace;
    for k in keys {
        // The namespace's own settings (its shard count, the check of its secrets key) stay
        // the replaying environment's: its key is not the recording's.
        if matches!(k, Recorded::Hash { key, .. } if key == "meta") {
            continue;
        }
        let mut pipe = redis::pipe();
        match k {
            Recorded::Hash { key, fields } => {
                let name = format!("{ns}:{key}");
                pipe.del(&name).ignore();
                for (f, v) in fields {
                    pipe.hset(&name, f, v).ignore();
                }
            }
            Recorded::String { key, value } => {
                pipe.set(format!("{ns}:{key}"), value).ignore();
            }
            Recorded::Zset { key, members } => {
                let name = format!("{ns}:{key}");
                pipe.del(&name).ignore();
                for (m, s) in members {
                    pipe.zadd(&name, m, *s).ignore();
                }
            }
            Recorded::Set { key, members } => {
                let name = format!("{ns}:{key}");
                pipe.del(&name).ignore();
                for m in members {
                    pipe.sadd(&name, m).ignore();
                }
            }
            Recorded::List { key, items } => {
                let name = format!("{ns}:{key}");
                pipe.del(&name).ignore();
                for i in items {
                    pipe.rpush(&name, i).ignore();
                }
            }
            Recorded::Stream {
                key,
                entries,
                groups,
            } => {
                let name = format!("{ns}:{key}");
                pipe.del(&name).ignore();
                for (id, fields) in entries {
                    let mut cmd = redis::cmd("XADD");
                    cmd.arg(&name).arg(id);
                    for (f, v) in fields {
                        cmd.arg(f).arg(v);
                    }
                    pipe.add_command(cmd).ignore();
                }
                for (group, last) in groups {
                    pipe.cmd("XGROUP")
                        .arg("CREATE")
                        .arg(&name)
                        .arg(group)
                        .arg(last)
                        .arg("MKSTREAM")
                        .ignore();
                }
            }
        }
        db.pipe::<()>(&pipe).await?;
    }
    Ok(())
}

/// Waits until `run`'s gate `approval` is open.
async fn gate_open(env: &Env, run: RunId) -> Result<()> {
    steward_tests::wait_for("the gate to open", T, || async {
        let snap = env.store.load(run).await?.context("run")?;
        Ok((snap.doc.state.steps["approval"].state.name() == "awaiting_approval").then_some(()))
    })
    .await
}

/// Records the fixture with the build under test:
/// `STEWARD_RECORD=tests/fixtures/migration/<name>.json cargo nextest run --test migration
/// --run-ignored only record_fixture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "records a fixture; run by hand with STEWARD_RECORD=<file>"]
async fn record_fixture() -> Result<()> {
    let out = std::env::var("STEWARD_RECORD").context("STEWARD_RECORD=<file>")?;
    let env = Env::start(Persistence::None).await?;
    let gated = plan(GATED);
    let mut runs = BTreeMap::new();
    // The company's approvers are enabled technicians, so its gates open.
    env.add_approvers().await?;
    // Two runs parked at their gate, one of them with its step before the gate done.
    let worker = env.worker(WorkerOpts::default()).await?;
    for who in ["parked1", "parked2"] {
        let run = env.start_run(&gated, json!({"who": who})).await?;
        gate_open(&env, run).await?;
        runs.insert(format!("gate:{who}"), run.to_string());
    }
    // An ended run.
    let ended = plan("name: ended\nsteps:\n  - {id: only, op: noop}\n");
    let run = env.start_run(&ended, json!({})).await?;
    env.wait_end(run, T).await?;
    runs.insert("ended".to_owned(), run.to_string());
    worker.stop().await;
    // With no worker running: a run whose first job is queued, and one scheduled to start in a
    // second (long past when the fixture is replayed).
    let run = env.start_run(&gated, json!({"who": "queued"})).await?;
    runs.insert("queued".to_owned(), run.to_string());
    let run = env
        .store
        .create_run(steward_engine::store::NewRun {
            plan: gated.clone(),
            company: "contoso".parse()?,
            company_settings: serde_json::Map::new(),
            inputs: json!({"who": "scheduled"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            requested_by: "test".to_owned(),
            start_at: Some(steward_schemas::Timestamp::from_micros(
                env.store.clock().now().as_micros() + 1_000_000,
            )),
            ticket: None,
        })
        .await?;
    runs.insert("scheduled".to_owned(), run.to_string());
    let describe = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let fixture = Fixture {
        recorded_by: describe,
        runs,
        keys: dump(&env).await?,
    };
    std::fs::write(&out, serde_json::to_string_pretty(&fixture)? + "\n")?;
    Ok(())
}

/// Every run of every recorded fixture finishes under this build, its history kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_recorded_by_earlier_builds_finish() -> Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixture_dir())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {:?}", fixture_dir());
    for file in files {
        let fixture: Fixture = serde_json::from_str(&std::fs::read_to_string(&file)?)
            .with_context(|| format!("{file:?}"))?;
        replay(&fixture)
            .await
            .with_context(|| format!("{file:?}, recorded by {}", fixture.recorded_by))?;
    }
    Ok(())
}

async fn replay(fixture: &Fixture) -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    restore(&env, &fixture.keys).await?;
    let run = |what: &str| -> Result<RunId> {
        Ok(fixture
            .runs
            .get(what)
            .with_context(|| format!("the fixture has no `{what}` run"))?
            .parse()?)
    };
    let before: BTreeMap<String, usize> = {
        let mut m = BTreeMap::new();
        for (what, id) in &fixture.runs {
            m.insert(what.clone(), env.store.history(id.parse()?).await?.len());
        }
        m
    };
    // The ended run reads as it was.
    let ended = env.store.load(run("ended")?).await?.context("ended run")?;
    assert!(
        matches!(ended.doc.state.status, RunStatus::Completed { .. }),
        "{:?}",
        ended.doc.state.status
    );
    let worker = env
        .worker(WorkerOpts {
            scheduler: true,
            ..WorkerOpts::default()
        })
        .await?;
    for who in ["parked1", "parked2"] {
        env.approve(
            run(&format!("gate:{who}"))?,
            "approval",
            "alice@msp.example",
        )
        .await?;
    }
    for what in ["queued", "scheduled"] {
        let id = run(what)?;
        gate_open(&env, id).await?;
        env.approve(id, "approval", "bob@msp.example").await?;
    }
    for (what, id) in &fixture.runs {
        let id: RunId = id.parse()?;
        let status = env.wait_end(id, T).await?;
        assert!(
            matches!(status, RunStatus::Completed { ref failed, .. } if failed.is_empty()),
            "{what}: {status:?}"
        );
        // The history recorded by the earlier build is still there, and went on.
        let history = env.store.history(id).await?;
        assert!(history.len() >= before[what], "{what}: history lost");
        if what != "ended" {
            assert!(history.len() > before[what], "{what}: no new history");
        }
    }
    // Every ledger step of every run ran exactly once, across both builds (the recording's
    // executions are in the fixture's ledger).
    let ledger = env.ledger().await?;
    let mut done: Vec<String> = ledger
        .executions
        .iter()
        .map(|e| e.splitn(3, '/').take(2).collect::<Vec<_>>().join("/"))
        .collect();
    done.sort();
    let mut want: Vec<String> = Vec::new();
    for who in ["parked1", "parked2", "queued", "scheduled"] {
        let name = if who.starts_with("parked") {
            format!("gate:{who}")
        } else {
            who.to_owned()
        };
        let id = run(&name)?;
        want.push(format!("{id}/first"));
        want.push(format!("{id}/after"));
    }
    want.sort();
    assert_eq!(done, want, "{ledger:?}");
    worker.stop().await;
    Ok(())
}
