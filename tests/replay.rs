//! Replay goldens: recorded histories of real runs, replayed through the state machine on every
//! test run. A change that makes the machine decide differently, or that breaks the stored
//! formats, fails here. `UPDATE_GOLDEN=1 cargo test --test replay` records them again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use steward_core::history::diff;
use steward_core::{Cx, Plan, initial_state, transition};
use steward_engine::embedded::Persistence;
use steward_schemas::{HistoryEntry, RunContext, RunState, WorkflowDef};
use steward_tests::{Env, WorkerOpts, plan};

#[derive(Debug, Serialize, Deserialize)]
struct Golden {
    workflow: WorkflowDef,
    ctx: RunContext,
    history: Vec<HistoryEntry>,
    last: RunState,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/histories")
}

fn replay(golden: &Golden) -> Result<()> {
    let plan =
        Plan::compile(golden.workflow.clone(), None).map_err(|p| anyhow::anyhow!("{p:?}"))?;
    let mut state = initial_state(&plan, golden.ctx.created_at);
    for (i, entry) in golden.history.iter().enumerate() {
        let t = transition(
            &plan,
            &golden.ctx,
            &state,
            &entry.event,
            &Cx { now: entry.at },
        )
        .with_context(|| format!("entry {i} ({}) was refused on replay", entry.event.name()))?;
        anyhow::ensure!(
            t.ignored.is_none(),
            "entry {i} ({}) was ignored on replay",
            entry.event.name()
        );
        anyhow::ensure!(
            diff(&state, &t.next) == entry.changes,
            "nondeterminism at entry {i} ({}): recorded {:?}, replayed {:?}",
            entry.event.name(),
            entry.changes,
            diff(&state, &t.next)
        );
        anyhow::ensure!(
            t.next.status.name() == entry.status,
            "entry {i}: status differs"
        );
        state = t.next;
    }
    anyhow::ensure!(
        state == golden.last,
        "the replayed final state differs from the recorded one"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_histories_replay_to_the_same_states() -> Result<()> {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        record().await?;
    }
    let mut count = 0;
    for entry in std::fs::read_dir(dir()).context("tests/fixtures/histories")? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let golden: Golden =
            serde_json::from_str(&std::fs::read_to_string(&path)?).with_context(|| {
                format!(
                    "{} no longer parses (a stored format changed)",
                    path.display()
                )
            })?;
        replay(&golden).with_context(|| path.display().to_string())?;
        count += 1;
    }
    assert!(count >= 3, "expected the recorded histories, found {count}");
    Ok(())
}

async fn record() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let _worker = env.worker(WorkerOpts::default()).await?;
    let demo = plan(include_str!("../workflows/demo.yaml"));
    let cases = [
        (
            "demo-completed",
            demo.clone(),
            json!({"user": "jane"}),
            None,
            "completed",
        ),
        (
            "demo-rolled-back",
            demo,
            json!({"user": "john", "fail_at_end": true}),
            None,
            "rolled_back",
        ),
        (
            "undo-failed",
            plan(
                "name: u\ndefaults: {on_failure: rollback, retry: {attempts: 2, initial: 10ms}}\nsteps:\n  - {id: a, op: ledger, with: {key: a}}\n  - {id: b, op: ledger, needs: [a], with: {key: b, undo_fails: true}}\n  - {id: c, op: fail, needs: [b]}\n",
            ),
            json!({}),
            None,
            "rollback_failed",
        ),
        (
            "paused-then-skipped",
            plan(
                "name: p\ndefaults: {on_failure: pause, retry: {attempts: 1}}\nsteps:\n  - {id: a, op: fail}\n  - {id: b, op: noop, needs: [a]}\n",
            ),
            json!({}),
            Some("a"),
            "completed",
        ),
    ];
    std::fs::create_dir_all(dir())?;
    for (name, plan, inputs, skip, expected) in cases {
        let run = env.start_run(&plan, inputs).await?;
        if let Some(step) = skip {
            let store = &env.store;
            steward_tests::wait_for("the run to pause", Duration::from_secs(30), || async move {
                let s = store.load(run).await?.context("run")?;
                Ok((s.doc.state.status.name() == "paused").then_some(()))
            })
            .await?;
            let event = steward_schemas::Event::SkipStepRequested {
                step: step.parse()?,
                by: "tech@msp".into(),
                reason: Some("done by hand".into()),
            };
            env.apply_ok(run, &event).await?;
        }
        // A golden of a run that ended otherwise than the case says would record the wrong story.
        let status = env.wait_end(run, Duration::from_secs(30)).await?;
        assert_eq!(status.name(), expected, "{name}: {status:?}");
        let snap = env.store.load(run).await?.context("run")?;
        let golden = Golden {
            workflow: plan.def().clone(),
            ctx: snap.doc.ctx,
            history: env.store.history(run).await?,
            last: snap.doc.state,
        };
        std::fs::write(
            dir().join(format!("{name}.json")),
            serde_json::to_string_pretty(&golden)? + "\n",
        )?;
    }
    Ok(())
}
