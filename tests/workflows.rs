//! `steward serve` keeps serving when a workflow file is bad, and reads its workflow files again
//! when they change (or on SIGHUP): new runs get the new version, runs in flight finish on the
//! version they started with.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use steward_engine::embedded::Persistence;
use steward_schemas::{CompanyScope, Role};
use steward_tests::api::send;
use steward_tests::{Env, Proc, WorkerOpts, only, procs, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_steward");
const T: Duration = Duration::from_secs(30);

/// The workflow `rel` at `version`; version 2 has one more step.
fn rel(version: u32) -> String {
    let mut y = format!(
        "name: rel\nversion: {version}\nsteps:\n  - {{id: prepare, op: ledger, with: {{key: prepare}}}}\n  - id: approval\n    needs: [prepare]\n    gate: {{approvers: [alice@msp.example], message: \"version {version}\"}}\n  - {{id: apply, op: noop, needs: [approval]}}\n"
    );
    if version > 1 {
        y.push_str("  - {id: tidy_up, op: noop, needs: [apply]}\n");
    }
    y
}

const BAD: &str =
    "name: other\nsteps:\n  - id: a\n    op: flaky\n    with:\n      times: \"three\"\n";
const FIXED: &str = "name: other\nsteps:\n  - id: a\n    op: flaky\n    with:\n      times: 0\n";

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn get(&self, token: &str, path: &str) -> Result<Value> {
        let (s, body) = send(
            self.http
                .get(format!("{}{path}", self.base))
                .bearer_auth(token),
        )
        .await?;
        ensure!(s == 200, "GET {path}: {s} {body}");
        Ok(body)
    }

    async fn post(&self, token: &str, path: &str, body: Value) -> Result<Value> {
        let (s, reply) = send(
            self.http
                .post(format!("{}{path}", self.base))
                .bearer_auth(token)
                .json(&body),
        )
        .await?;
        ensure!(s == 200 || s == 201, "POST {path}: {s} {reply}");
        Ok(reply)
    }

    async fn offered(&self, token: &str) -> Result<Vec<String>> {
        let all = self.get(token, "/v1/workflows").await?;
        Ok(all
            .as_array()
            .context("a list")?
            .iter()
            .filter_map(|w| w["name"].as_str().map(str::to_owned))
            .collect())
    }

    async fn file(&self, token: &str, name: &str) -> Result<Value> {
        let files = self.get(token, "/v1/workflows/files").await?;
        files
            .as_array()
            .context("a list")?
            .iter()
            .find(|f| f["file"].as_str().is_some_and(|p| p.ends_with(name)))
            .cloned()
            .with_context(|| format!("no file {name} in {files}"))
    }

    async fn start(&self, token: &str) -> Result<String> {
        let body = self
            .post(
                token,
                "/v1/runs",
                json!({"workflow": "rel", "company": "contoso"}),
            )
            .await?;
        Ok(body["run"].as_str().context("run id")?.to_owned())
    }

    async fn wait_status(&self, token: &str, run: &str, want: &str) -> Result<Value> {
        wait_for(&format!("run {run} to be {want}"), T, || async {
            let body = self.get(token, &format!("/v1/runs/{run}")).await?;
            Ok((body["summary"]["status"] == want).then_some(body))
        })
        .await
    }

    async fn wait_gate(&self, token: &str, run: &str) -> Result<Value> {
        wait_for("the gate to open", T, || async {
            let body = self
                .get(token, &format!("/v1/approvals/{run}/approval"))
                .await?;
            Ok((body["state"] == "awaiting_approval").then_some(body))
        })
        .await
    }
}

fn steps_of(run: &Value) -> Vec<String> {
    run["plan"]
        .as_array()
        .map(|p| {
            p.iter()
                .filter_map(|s| s["step"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_skips_bad_files_and_reloads_changed_ones_for_new_runs_only() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let _worker = env.worker(WorkerOpts::default()).await?;
    let tokens = env
        .add_technicians(vec![
            ("admin", Role::Admin, CompanyScope::ALL),
            ("alice", Role::Technician, only("contoso")?),
        ])
        .await?;
    let (admin, alice) = (tokens["admin"].clone(), tokens["alice"].clone());

    let dir = tempfile::tempdir()?;
    let flows = dir.path().join("workflows");
    std::fs::create_dir(&flows)?;
    std::fs::write(flows.join("rel.yaml"), rel(1))?;
    std::fs::write(flows.join("other.yaml"), BAD)?;

    let port = procs::free_port()?;
    let mut args = env.cli_args();
    args.extend([
        "serve".to_owned(),
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--workflows".to_owned(),
        flows.display().to_string(),
    ]);
    let mut serve = Proc::spawn(Path::new(BIN), dir.path(), "serve", &args)?;
    let api = Client {
        http: reqwest::Client::new(),
        base: format!("http://127.0.0.1:{port}"),
    };
    procs::wait_ready(&api.base, T)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", serve.log_text()))?;

    // The bad file is skipped and reported with its line and fix; the good one is served.
    assert_eq!(api.offered(&admin).await?, ["rel"]);
    let bad = api.file(&admin, "other.yaml").await?;
    assert_eq!(bad["status"], "invalid", "{bad}");
    let problem = &bad["problems"][0];
    assert_eq!(
        (&problem["line"], &problem["step"], &problem["field"]),
        (&json!(6), &json!("a"), &json!("with.times")),
        "{bad}"
    );
    assert!(
        problem["message"]
            .as_str()
            .unwrap_or_default()
            .contains("expected a whole number from 0 to 100, got text `three`"),
        "{bad}"
    );
    assert!(problem["fix"].as_str().is_some_and(|f| !f.is_empty()));
    let good = api.file(&admin, "rel.yaml").await?;
    assert_eq!(
        (&good["status"], &good["version"]),
        (&json!("ok"), &json!(1))
    );
    let v1 = good["serving"].as_str().context("a hash")?.to_owned();
    let log = std::fs::read_to_string(&serve.log)?;
    assert!(
        log.contains("other.yaml") && log.contains("with.times"),
        "the log names the bad file and its problem:\n{log}"
    );

    // A run on version 1 waits at its gate.
    let first = api.start(&admin).await?;
    let gate = api.wait_gate(&admin, &first).await?;
    assert_eq!(gate["message"], "version 1");

    // The file changes (no signal: its modification is noticed); new runs get version 2.
    std::fs::write(flows.join("rel.yaml"), rel(2))?;
    let v2 = wait_for("version 2 on offer", T, || async {
        let f = api.file(&admin, "rel.yaml").await?;
        Ok((f["version"] == 2).then(|| f["serving"].as_str().unwrap_or_default().to_owned()))
    })
    .await?;
    assert_ne!(v1, v2);
    let second = api.start(&admin).await?;
    let view = api.get(&admin, &format!("/v1/runs/{second}")).await?;
    assert_eq!(view["run"]["ctx"]["workflow"]["hash"], json!(v2));
    assert_eq!(steps_of(&view), ["prepare", "approval", "apply", "tidy_up"]);

    // The first run finishes on the version it started with.
    api.post(
        &alice,
        &format!("/v1/approvals/{first}/approval"),
        json!({"decision": "approve"}),
    )
    .await?;
    let done = api.wait_status(&admin, &first, "completed").await?;
    assert_eq!(done["run"]["ctx"]["workflow"]["hash"], json!(v1));
    assert_eq!(steps_of(&done), ["prepare", "approval", "apply"]);
    assert!(
        done["run"]["state"]["steps"].get("tidy_up").is_none(),
        "{done}"
    );
    api.wait_gate(&admin, &second).await?;
    api.post(
        &alice,
        &format!("/v1/approvals/{second}/approval"),
        json!({"decision": "approve"}),
    )
    .await?;
    let done = api.wait_status(&admin, &second, "completed").await?;
    assert_eq!(
        done["run"]["state"]["steps"]["tidy_up"]["state"],
        "succeeded"
    );

    // The bad file is fixed; SIGHUP reads it at once.
    std::fs::write(flows.join("other.yaml"), FIXED)?;
    serve.signal("HUP")?;
    wait_for("the fixed workflow on offer", T, || async {
        Ok((api.offered(&admin).await? == ["other", "rel"]).then_some(()))
    })
    .await?;
    let fixed = api.file(&admin, "other.yaml").await?;
    assert_eq!(fixed["status"], "ok", "{fixed}");
    assert!(serve.alive(), "serve kept serving");

    // A good file turned bad keeps its last good version on offer, and says so.
    std::fs::write(flows.join("rel.yaml"), "name: rel\nsteps:\n\t- id: x\n")?;
    serve.signal("HUP")?;
    let broken = wait_for("the broken file reported", T, || async {
        let f = api.file(&admin, "rel.yaml").await?;
        Ok((f["status"] == "invalid").then_some(f))
    })
    .await?;
    assert_eq!(broken["serving"], json!(v2), "{broken}");
    assert!(
        broken["problems"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("tab")),
        "{broken}"
    );
    assert_eq!(api.offered(&admin).await?, ["other", "rel"]);
    serve.signal("TERM")?;
    Ok(())
}
