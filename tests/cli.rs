//! The `steward` command as a technician uses it.

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{Context, Result};
use steward_engine::embedded::Persistence;
use steward_tests::procs::{self, Installation, Servers};
use steward_tests::{Env, Proc};

const BIN: &str = env!("CARGO_BIN_EXE_steward");

fn steward(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("steward runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn shipped_workflows_validate_and_point_editors_at_the_schema() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root.join("workflows")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let head = std::fs::read_to_string(&path).unwrap();
            let comment = head.lines().next().unwrap_or_default();
            assert_eq!(
                comment,
                "# yaml-language-server: $schema=../schemas/json/workflow.schema.json",
                "{} must start with the schema comment",
                path.display()
            );
            files.push(path.display().to_string());
        }
    }
    assert!(!files.is_empty());
    let refs: Vec<&str> = std::iter::once("validate")
        .chain(files.iter().map(String::as_str))
        .collect();
    let out = steward(&refs);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn validate_names_the_file_the_step_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "cycle.yaml",
            "name: c\nsteps:\n  - {id: a, op: noop, needs: [b]}\n  - {id: b, op: noop, needs: [a]}\n",
            "a cycle: ",
        ),
        (
            "need.yaml",
            "name: n\nsteps:\n  - id: a\n    op: noop\n    needs: [nope]\n",
            "cycle.yaml",
        ),
        (
            "op.yaml",
            "name: o\nsteps:\n  - id: a\n    op: ledgr\n",
            "unknown op `ledgr`; did you mean `ledger`?",
        ),
        (
            "ref.yaml",
            "name: r\nsteps:\n  - id: a\n    op: ledger\n    with: {key: \"${{ inputs.who }}\"}\n",
            "refers to an input the workflow does not declare",
        ),
        (
            "dup.yaml",
            "name: d\nsteps:\n  - {id: a, op: noop}\n  - {id: a, op: noop}\n",
            "duplicate id",
        ),
        (
            "dur.yaml",
            "name: t\nsteps:\n  - id: a\n    op: noop\n    timeout: 10 minutes\n",
            "is not a duration",
        ),
        (
            "out.yaml",
            "name: o\nsteps:\n  - {id: a, op: sleep, with: {ms: 1}}\n  - {id: b, op: noop, needs: [a], with: {output: \"${{ steps.a.output.slept }}\"}}\n",
            "has no output `slept`; did you mean `slept_ms`?",
        ),
    ];
    let mut paths = Vec::new();
    for (name, yaml, _) in &cases {
        let path = dir.path().join(name);
        std::fs::write(&path, yaml).unwrap();
        paths.push(path.display().to_string());
    }
    for ((name, _, expect), path) in cases.iter().zip(&paths) {
        let out = steward(&["validate", path]);
        assert!(!out.status.success(), "{name} passed");
        let t = text(&out);
        let expect = if *name == "need.yaml" {
            "unknown step `nope`"
        } else {
            expect
        };
        assert!(t.contains(expect), "{name}: {t}");
        assert!(t.contains(name) && t.contains("fix:"), "{name}: {t}");
    }
    let out = steward(&["validate", &paths[2], "workflows/demo.yaml"]);
    assert!(
        text(&out).contains("1 of 2 files have problems"),
        "{}",
        text(&out)
    );
    let out = steward(&["validate", "/no/such/file.yaml"]);
    assert!(
        !out.status.success() && text(&out).contains("cannot read"),
        "{}",
        text(&out)
    );
}

const DEMO: &str = include_str!("../workflows/demo.yaml");
const GATED: &str = include_str!("fixtures/workflows/gated.yaml");

/// A Redis URL where nothing listens: technicians' commands get it in STEWARD_REDIS__URL, so a
/// command that touched Redis would fail.
const NO_REDIS: &str = "redis://127.0.0.1:9/";

/// An installation as a technician meets it (see [`Installation`]), offering the workflows given.
struct Stack(Installation);

impl std::ops::Deref for Stack {
    type Target = Installation;

    fn deref(&self) -> &Installation {
        &self.0
    }
}

impl Stack {
    async fn start(workflows: &[(&str, &str)]) -> Result<Self> {
        let env = Env::start(Persistence::None).await?;
        Ok(Self(Installation::start(env, BIN, workflows).await?))
    }

    /// `steward ARGS` as `who` (a key of `tokens`; anything else: no token), with the API's URL
    /// in STEWARD_API_URL and no Redis reachable.
    fn command(&self, who: &str, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("STEWARD_API_URL", &self.api)
            .env("STEWARD_REDIS__URL", NO_REDIS)
            .env_remove("STEWARD_LOG")
            .env_remove("STEWARD_TOKEN");
        if let Some(t) = self.tokens.get(who) {
            c.env("STEWARD_TOKEN", t);
        }
        c
    }

    fn cli(&self, who: &str, args: &[&str]) -> Output {
        self.command(who, args).output().expect("steward runs")
    }

    /// Like [`Stack::cli`], failing with the output and the servers' logs unless it succeeded.
    fn ok(&self, who: &str, args: &[&str]) -> String {
        let out = self.cli(who, args);
        let t = text(&out);
        assert!(
            out.status.success(),
            "steward {args:?} as {who}: {t}\n{}",
            self.logs()
        );
        t
    }

    /// Starts `workflow` for `company` as `who` (without waiting); the run's id.
    fn start_run(&self, who: &str, workflow: &str, company: &str, inputs: &[&str]) -> String {
        let mut args = vec!["run", workflow, "--company", company];
        for i in inputs {
            args.extend(["--input", i]);
        }
        let out = self.ok(who, &args);
        let run = out.trim().to_owned();
        assert!(run.starts_with("run_"), "{out}");
        run
    }

    /// Waits until `run`'s status (as the admin sees it) is `want`; its view.
    async fn wait_status(&self, run: &str, want: &str) -> Result<serde_json::Value> {
        steward_tests::wait_for(
            &format!("{run} to be {want}"),
            std::time::Duration::from_secs(30),
            || async {
                let out = self.cli("admin", &["status", run, "--json"]);
                let view: serde_json::Value =
                    serde_json::from_slice(&out.stdout).unwrap_or_default();
                Ok((view["summary"]["status"] == want).then_some(view))
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", self.logs()))
    }

    /// Waits until gate `gate` of `run` waits for its approvers.
    async fn wait_gate(&self, run: &str, gate: &str) -> Result<()> {
        steward_tests::wait_for(
            &format!("{run}/{gate} to open"),
            std::time::Duration::from_secs(30),
            || async {
                let out = self.cli("admin", &["status", run, "--json"]);
                let view: serde_json::Value =
                    serde_json::from_slice(&out.stdout).unwrap_or_default();
                Ok(view["steps"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|s| s["step"] == gate && s["state"] == "awaiting_approval")
                    .then_some(()))
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", self.logs()))
    }
}

/// The run id in `steward status`'s first line (`run run_… demo v1 …`).
fn run_of(t: &str) -> String {
    t.lines()
        .find_map(|l| l.strip_prefix("run "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no run line in {t}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_wait_and_status_work_through_the_api() -> Result<()> {
    let secretive = "name: secretive\ninputs:\n  user: {type: string}\n  password: {type: string, secret: true}\nsteps:\n  - {id: a, op: noop, with: {output: {token: \"${{ inputs.password }}\", user: \"${{ inputs.user }}\"}}}\n";
    let stack = Stack::start(&[("demo", DEMO), ("secretive", secretive)]).await?;
    // By file (its `name:` is the server's workflow) and by name; who asks is the token's
    // technician.
    let out = stack.cli(
        "tech",
        &[
            "run",
            "workflows/demo.yaml",
            "--company",
            "contoso",
            "--input",
            "user=jane",
            "--wait",
        ],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}\n{}", stack.logs());
    assert!(
        t.contains("status:  completed at ")
            && t.contains("by tech@msp.example")
            && t.contains("timeline:")
            && t.contains("run created")
            && t.contains("step `create_account` succeeded"),
        "{t}"
    );
    assert!(
        !t.contains("what you can do now"),
        "an ended run offers nothing: {t}"
    );
    let run = run_of(&t);
    let out = stack.cli("tech", &["status", &run, "--json"]);
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| anyhow::anyhow!("{e}: {}", text(&out)))?;
    assert_eq!(json["run"]["state"]["status"]["status"], "completed");
    assert_eq!(
        json["history"][0]["text"],
        "run created; the run is now running"
    );
    assert!(json["history"].as_array().is_some_and(|h| h.len() > 5));

    // Secret inputs, and values under secret-looking keys in outputs, are never printed.
    let out = stack.cli(
        "tech",
        &[
            "run",
            "secretive",
            "--company",
            "contoso",
            "--input",
            "user=jane",
            "--input",
            "password=Sesame-7731",
            "--wait",
        ],
    );
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("[secret]") && !t.contains("Sesame-7731"), "{t}");
    let out = stack.cli("tech", &["status", &run_of(&t), "--json"]);
    let t = text(&out);
    assert!(t.contains("jane") && !t.contains("Sesame-7731"), "{t}");

    // A local copy that differs from the server's: the server's runs, and the CLI says so.
    let copy = stack.dir.path().join("secretive.yaml");
    std::fs::write(
        &copy,
        secretive.replace("name: secretive", "name: secretive\ndescription: mine"),
    )?;
    let out = stack.cli(
        "tech",
        &[
            "run",
            copy.to_str().unwrap_or_default(),
            "--company",
            "contoso",
            "--input",
            "user=x",
            "--input",
            "password=y",
        ],
    );
    assert!(
        out.status.success() && text(&out).contains("differs from the server's workflow `secretive` (v1); the server's copy is the one that runs"),
        "{}",
        text(&out)
    );

    // A run that rolls back exits 5 and says why, in words.
    let out = stack.cli(
        "tech",
        &[
            "run",
            "demo",
            "--company",
            "contoso",
            "--input",
            "user=x",
            "--input",
            "fail_at_end=true",
            "--wait",
        ],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(5), "{t}");
    assert!(
        t.contains("status:  rolled back: step `final_check` failed: the final check failed (as the demo asked); NOT undone (irreversible): reset_password"),
        "{t}"
    );

    // Bad input is refused with its name; nothing is started.
    let out = stack.cli(
        "tech",
        &["run", "demo", "--company", "contoso", "--input", "usr=x"],
    );
    let t = text(&out);
    assert!(
        !out.status.success()
            && t.contains("inputs.usr: workflow `demo` has no such input")
            && t.contains("inputs.user: is required"),
        "{t}"
    );
    let out = stack.cli(
        "tech",
        &[
            "run",
            "demo",
            "--company",
            "Contoso Ltd",
            "--input",
            "user=x",
        ],
    );
    assert!(
        text(&out).contains("--company: `Contoso Ltd` is not a valid company id"),
        "{}",
        text(&out)
    );
    let out = stack.cli("tech", &["run", "onboard", "--company", "contoso"]);
    assert!(
        text(&out).contains("offers no workflow `onboard`; it offers: demo, secretive")
            || text(&out).contains("offers no workflow `onboard`; it offers: secretive, demo"),
        "{}",
        text(&out)
    );
    Ok(())
}

/// Who may do what, driven through the `steward` command a technician uses: a technician of
/// contoso cannot start, list, read or control fabrikam's runs, nobody approves their own run,
/// and a missing or revoked token is refused in words that say what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorization_matrix_holds_through_the_cli() -> Result<()> {
    let one = GATED
        .replace("name: gated", "name: one")
        .replace("quorum: 2", "quorum: 1");
    let stack = Stack::start(&[("gated", GATED), ("one", &one)]).await?;
    // A fabrikam run, parked at its gate; and one of contoso's.
    let theirs = stack.start_run("outsider", "gated", "fabrikam", &["user=ann"]);
    let ours = stack.start_run("tech", "gated", "contoso", &["user=jane"]);
    stack.wait_gate(&theirs, "approval").await?;
    stack.wait_gate(&ours, "approval").await?;
    let forbidden = |out: &Output| {
        let t = text(out);
        assert!(
            !out.status.success()
                && t.contains("403 (forbidden): tech@msp.example ")
                && (t.contains("may not act on this company")
                    || t.contains("may not see or decide this gate"))
                && !t
                    .split_once("403 (forbidden):")
                    .is_some_and(|(_, m)| m.contains("fabrikam"))
                && !t.contains("lead@msp.example"),
            "{t}"
        );
    };
    forbidden(&stack.cli(
        "tech",
        &["run", "gated", "--company", "fabrikam", "--input", "user=x"],
    ));
    forbidden(&stack.cli("tech", &["runs", "--company", "fabrikam"]));
    let listed = stack.ok("tech", &["runs"]);
    assert!(
        listed.contains(&ours) && !listed.contains(&theirs),
        "{listed}"
    );
    let gate = format!("{theirs}/approval");
    for args in [
        vec!["status", &theirs],
        vec!["cancel", &theirs, "--rollback", "--reason", "mine now"],
        vec!["pause", &theirs],
        vec!["resume", &theirs],
        vec!["retry-step", &theirs, "prepare"],
        vec!["skip-step", &theirs, "approval"],
        vec!["approve", &gate],
        vec!["reject", &gate],
    ] {
        let args: Vec<&str> = args.iter().map(|a| a.as_ref()).collect();
        forbidden(&stack.cli("tech", &args));
    }
    // Nothing of theirs changed.
    let view = stack.wait_status(&theirs, "running").await?;
    assert_eq!(
        (
            view["version"].as_u64(),
            view["history"].as_array().map(Vec::len)
        ),
        (Some(3), Some(3)),
        "created, prepared, gate opened: {view}"
    );

    // The same requests on their own company's run work.
    stack.ok("tech", &["status", &ours]);
    let t = stack.ok("tech", &["pause", &ours, "--reason", "checking"]);
    assert!(
        t.contains(&format!(
            "{ours}: paused: paused by tech@msp.example \u{2014} \u{201c}checking\u{201d}"
        )),
        "{t}"
    );
    let t = stack.ok("tech", &["resume", &ours]);
    assert!(t.contains(&format!("{ours}: running")), "{t}");

    // Nobody approves their own run: alice asks, alice may not approve; `--requested-by` is gone.
    let hers = stack.start_run("alice", "one", "contoso", &["user=joe"]);
    stack.wait_gate(&hers, "approval").await?;
    let out = stack.cli("alice", &["approve", &format!("{hers}/approval")]);
    assert!(
        !out.status.success()
            && text(&out).contains("alice@msp.example asked for this run and cannot approve it"),
        "{}",
        text(&out)
    );
    let out = stack.cli(
        "alice",
        &[
            "run",
            "gated",
            "--company",
            "contoso",
            "--input",
            "user=x",
            "--requested-by",
            "bob@msp.example",
        ],
    );
    assert!(
        !out.status.success() && text(&out).contains("unexpected argument '--requested-by'"),
        "{}",
        text(&out)
    );
    let view = stack.wait_status(&hers, "running").await?;
    assert_eq!(view["run"]["ctx"]["requested_by"], "alice@msp.example");

    // No token, a revoked token: refused, saying what to do.
    let out = stack.cli("nobody", &["status", &ours]);
    assert!(
        !out.status.success() && text(&out).contains("no API token: set STEWARD_TOKEN"),
        "{}",
        text(&out)
    );
    let tokens = stack.ok("admin", &["technicians", "list", "--json"]);
    let techs: serde_json::Value = serde_json::from_str(tokens.trim())?;
    let tech_id = techs
        .as_array()
        .and_then(|l| l.iter().find(|t| t["email"] == "tech@msp.example"))
        .and_then(|t| t["id"].as_str())
        .context("tech's id")?
        .to_owned();
    let auth = steward_engine::auth::Auth::for_store(&stack.env.store);
    for token in auth.tokens(tech_id.parse()?).await? {
        stack.ok("admin", &["technicians", "revoke", &token.id.to_string()]);
    }
    let out = stack.cli("tech", &["runs"]);
    let t = text(&out);
    assert!(
        !out.status.success()
            && t.contains("401 (unauthorized): this token was revoked")
            && t.contains("fix: set STEWARD_TOKEN to a token of yours that works"),
        "{t}"
    );
    // Technicians' commands never use Redis: flags that point at it are refused, not ignored.
    let out = stack.cli(
        "admin",
        &["--redis", &stack.env.redis.url(), "status", &ours],
    );
    assert!(
        !out.status.success()
            && text(&out).contains("`steward status` goes through the HTTP API")
            && text(&out).contains("--redis would not be used"),
        "{}",
        text(&out)
    );
    let out = stack.cli("admin", &["--namespace", "other", "technicians", "list"]);
    assert!(
        !out.status.success() && text(&out).contains("--namespace would not be used"),
        "{}",
        text(&out)
    );
    Ok(())
}

/// `run --wait` says what the run waits for (a gate and its approvers, a retry's time, a poll)
/// and exits with a code that says how the run stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_wait_says_what_it_waits_for_and_exits_by_how_the_run_stands() -> Result<()> {
    let waits = "name: waits\nsteps:\n  - {id: flaky, op: flaky, with: {times: 1}, retry: {attempts: 3, initial: 400ms}}\n  - {id: sync, op: poll, needs: [flaky], with: {times: 2, check_after_ms: 400}}\n";
    let stuck = "name: stuck\nsteps:\n  - {id: check, op: fail, on_failure: pause, with: {message: the manager is unknown}}\n";
    let undo = "name: undo\ndefaults: {on_failure: rollback, retry: {attempts: 1}}\nsteps:\n  - {id: create, op: ledger, with: {key: k, undo_fails: true}}\n  - {id: boom, op: fail, needs: [create], with: {message: boom}}\n";
    let stack = Stack::start(&[
        ("gated", GATED),
        ("waits", waits),
        ("stuck", stuck),
        ("undo", undo),
    ])
    .await?;
    let wait = |workflow: &str, inputs: &[&str]| -> Output {
        let mut args = vec!["run", workflow, "--company", "contoso", "--wait"];
        for i in inputs {
            args.extend(["--input", i]);
        }
        stack.cli("tech", &args)
    };

    // A gate: exit 3, naming the gate, its approvers and how many approvals it needs.
    let out = wait("gated", &["user=jane"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(3), "{t}\n{}", stack.logs());
    assert!(
        t.contains("waiting for gate `approval`: waiting since ")
            && t.contains(
                " for 2 approvals from alice@msp.example or bob@msp.example; expires at "
            )
            && t.contains("waits at approval gate `approval` (exit 3)")
            && t.contains("steward approve ")
            && t.contains("steward reject "),
        "{t}"
    );

    // A retry's time and a poll: said while waiting; then the run completes (exit 0).
    let out = wait("waits", &[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}\n{}", stack.logs());
    assert!(
        t.contains("waiting for step `flaky`: attempt 2 at ")
            && t.contains("the last one failed: ")
            && t.contains("waiting for step `sync`: waiting for check 1 of 3; checked again at "),
        "{t}"
    );

    // Paused for a technician: exit 4, with only the fixes the run can take.
    let out = wait("stuck", &[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(4), "{t}\n{}", stack.logs());
    assert!(
        t.contains("status:  paused: step `check` failed and its workflow says to pause")
            && t.contains("what you can do now:")
            && t.contains("steward retry-step ")
            && t.contains("steward skip-step ")
            && !t.contains("steward resume "),
        "{t}"
    );

    // The undo fails: exit 6, and a technician is offered the fixes of a failed undo (retry it,
    // or resolve it by hand), never to retry the step itself.
    let out = wait("undo", &[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(6), "{t}\n{}", stack.logs());
    assert!(
        t.contains("ROLLBACK FAILED: step `boom` failed: boom; could not undo: create")
            && t.contains("what you can do now:")
            && t.contains("steward retry-undo ")
            && t.contains("steward resolve-undo ")
            && !t.contains("retry-step"),
        "{t}"
    );

    // Cancelled while waiting for its start: exit 7, with the reason.
    let waiting = stack
        .command(
            "tech",
            &[
                "run",
                "gated",
                "--company",
                "contoso",
                "--input",
                "user=x",
                "--at",
                "2999-01-01T00:00:00Z",
                "--wait",
            ],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let run = steward_tests::wait_for(
        "the scheduled run",
        std::time::Duration::from_secs(30),
        || async {
            let list = text(&stack.cli("tech", &["runs", "--status", "scheduled", "--json"]));
            let page: serde_json::Value = serde_json::from_str(list.trim()).unwrap_or_default();
            Ok(page["runs"][0]["run"].as_str().map(str::to_owned))
        },
    )
    .await?;
    stack.ok(
        "tech",
        &["cancel", &run, "--reason", "the start date moved"],
    );
    let out = tokio::task::spawn_blocking(move || waiting.wait_with_output()).await??;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(7), "{t}");
    assert!(
        t.contains("waiting for the run: scheduled to start at 2999-01-01 00:00:00 UTC")
            && t.contains("status:  cancelled by tech@msp.example at ")
            && t.contains("\u{201c}the start date moved\u{201d}"),
        "{t}"
    );
    Ok(())
}

#[test]
fn the_demo_runs() {
    let out = steward(&["demo"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    // Seeded through the API: four companies, the PSA account and the rules.
    for company in ["contoso", "fabrikam", "northwind", "adatum"] {
        assert!(t.contains(&format!("{company}: registered")), "{t}");
        assert!(t.contains(&format!("== {company}, ticket ")), "{t}");
    }
    assert!(
        t.contains("PSA account sandbox-autotask: registered")
            && t.contains("PSA account sandbox-halo: registered, with a webhook to")
            && t.contains("start `onboarding`"),
        "{t}"
    );
    // Four onboardings from tickets and one offboarding, all completed.
    assert_eq!(t.matches("by psa:autotask").count(), 5, "{t}");
    assert_eq!(t.matches("status:  completed").count(), 5, "{t}");
    // Every run waited at its gate: northwind's was approved through its ticket's link, the
    // others in the inbox.
    assert!(
        t.contains("approving through the link: HTTP 200")
            && t.contains("using it again: HTTP 410")
            && t.contains("approved at gate `approval` by lead@msp.example (via link"),
        "{t}"
    );
    // Three onboardings, and the offboarding's two gates (its own and the one the policy adds
    // before retiring devices).
    assert_eq!(t.matches("(via api)").count(), 5, "{t}");
    assert!(
        t.contains("approved at gate `policy_approval` by lead@msp.example (via api)"),
        "{t}"
    );
    assert!(
        t.lines()
            .any(|l| l.trim_start().starts_with("retire_devices") && l.contains("succeeded")),
        "{t}"
    );
    assert!(
        t.contains("Leaver: Jane Doe") && t.contains("offboarding v1"),
        "{t}"
    );
    // What changed, from the sandbox's ledger: each directory and the tickets.
    for line in [
        "user.create ",
        "user.assign_license ",
        "user.revoke_sessions ",
        "ad.new_user ",
        "adsync.start_delta ",
        "exchange_server.enable_remote_mailbox ",
        "exchange_server.enable_mailbox ",
        "exo.set_mailbox ",
        "Steward: waiting for approval",
        "Steward: done",
    ] {
        assert!(t.contains(line), "no `{line}` in:\n{t}");
    }

    // Debug logs on: the process's own logs are scanned for every secret below.
    let out = Command::new(BIN)
        .args(["demo", "--json"])
        .env("STEWARD_LOG", "debug")
        .output()
        .expect("steward runs");
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    // The secrets check: the demo revealed the new starters' initial passwords through their
    // one-time links and found no password or token in Redis, the ticket notes or its report;
    // here the process's logs (stderr, debug) and output are searched for each by its length
    // and SHA-256, so the test never holds them.
    let check = &v["secrets_check"];
    assert_eq!(check["found"], serde_json::json!([]), "{check}");
    // All four new starters: cloud, hybrid, on premises and hybrid without sync.
    assert_eq!(check["passwords"].as_u64(), Some(4), "{check}");
    assert!(check["redis_keys"].as_u64() > Some(50), "{check}");
    assert!(check["notes"].as_u64() >= Some(10), "{check}");
    let digests = check["digests"].as_array().expect("digests");
    assert_eq!(
        digests.len() as u64,
        check["passwords"].as_u64().unwrap() + check["tokens"].as_u64().unwrap(),
        "{check}"
    );
    let logs = [out.stderr.as_slice(), out.stdout.as_slice()].concat();
    assert!(logs.len() > 10_000, "debug logs: {} bytes", logs.len());
    let mut by_len: std::collections::BTreeMap<usize, Vec<(String, String)>> = Default::default();
    for d in digests {
        by_len
            .entry(d["len"].as_u64().expect("len") as usize)
            .or_default()
            .push((
                d["sha256"].as_str().expect("sha256").to_owned(),
                d["secret"].to_string(),
            ));
    }
    // A control: a piece of the logs themselves must be found by the same search.
    let hex = |bytes: &[u8]| -> String {
        use sha2::Digest as _;
        sha2::Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    by_len
        .entry(24)
        .or_default()
        .push((hex(&logs[500..524]), "control".to_owned()));
    let mut hits = std::collections::BTreeSet::new();
    for (len, wanted) in &by_len {
        for w in logs.windows(*len) {
            let h = hex(w);
            if let Some((_, label)) = wanted.iter().find(|(d, _)| *d == h) {
                hits.insert(label.clone());
            }
        }
    }
    assert_eq!(
        hits.into_iter().collect::<Vec<_>>(),
        vec!["control".to_owned()],
        "secrets in the demo's logs or output"
    );
    let runs = v["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 5, "{v}");
    assert!(runs.iter().all(|r| r["completed"] == true), "{v}");
    assert_eq!(
        runs.iter()
            .filter(|r| r["workflow"] == "offboarding")
            .count(),
        1,
        "{v}"
    );
    assert_eq!(v["approval"]["first_use"], 200, "{v}");
    assert_eq!(v["approval"]["second_use"], 410, "{v}");
    assert!(
        v["changes"]["contoso"]["Entra ID (Microsoft Graph)"]
            .as_array()
            .is_some_and(|l| l.iter().any(|x| x
                .as_str()
                .is_some_and(|x| x.starts_with("user.revoke_sessions")))),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_command_serves_a_fixture() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = procs::free_port()?;
    let args: Vec<String> = [
        "sandbox",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--fixture",
        "sandbox/fixtures/hybrid.yaml",
    ]
    .map(str::to_owned)
    .to_vec();
    let sandbox = Proc::spawn(Path::new(BIN), dir.path(), "sandbox", &args)?;
    let base = format!("http://127.0.0.1:{port}");
    procs::wait_answers(
        "the sandbox to answer",
        &format!("{base}/admin/health"),
        std::time::Duration::from_secs(20),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", sandbox.log_text()))?;
    let client = reqwest::Client::new();
    // The hybrid fixture's tenant refuses a wrong secret with the real AADSTS code.
    let refused = client
        .post(format!(
            "{base}/login/2c9d8e7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f/oauth2/v2.0/token"
        ))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "5e7a9f3c-1b2d-4c8e-9f00-a1b2c3d4e5f6"),
            ("client_secret", "wrong"),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await?;
    assert_eq!(refused.status(), 401);
    let body: serde_json::Value = refused.json().await?;
    assert_eq!(body["error"], "invalid_client");
    assert!(
        body["error_codes"]
            .as_array()
            .is_some_and(|c| c.contains(&serde_json::json!(7_000_215))),
        "{body}"
    );
    let world: serde_json::Value = client
        .get(format!("{base}/admin/world/fabrikam"))
        .send()
        .await?
        .json()
        .await?;
    assert!(world.to_string().contains("fabrikam.com"));
    sandbox.signal("TERM")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn technicians_companies_runs_and_approvals_from_the_command_line() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let dir = tempfile::tempdir()?;
    let common: Vec<String> = env.cli_args();
    let run_cli = |extra: &[&str]| -> Output {
        let args: Vec<String> = common
            .iter()
            .cloned()
            .chain(extra.iter().map(|s| (*s).to_owned()))
            .collect();
        Command::new(BIN)
            .args(&args)
            .output()
            .expect("steward runs")
    };
    // The first admin and their token, made on the server.
    let out = run_cli(&[
        "technicians",
        "add",
        "--admin",
        "--email",
        "Admin@MSP.example",
        "--name",
        "Admin",
        "--token-name",
        "cli",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let admin = text(&out).lines().last().unwrap().trim().to_owned();
    assert!(admin.starts_with("stw_"), "{}", text(&out));

    let servers = Servers::start(
        &env,
        BIN,
        dir.path(),
        &["--workflows", "tests/fixtures/workflows"],
        std::time::Duration::from_secs(20),
    )
    .await?;
    let api = servers.api.clone();
    let http = reqwest::Client::new();

    let as_user = |token: &str, extra: &[&str]| -> Output {
        Command::new(BIN)
            .args(extra)
            .env("STEWARD_API_URL", &api)
            .env("STEWARD_TOKEN", token)
            .output()
            .expect("steward runs")
    };
    // Technicians through the API, with tokens printed once.
    for who in ["alice", "bob", "tech"] {
        let out = as_user(
            &admin,
            &[
                "technicians",
                "add",
                "--email",
                &format!("{who}@msp.example"),
                "--name",
                who,
                "--companies",
                "contoso",
                "--token-name",
                "cli",
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
    }
    let token_of = |who: &str| -> String {
        let out = as_user(
            &admin,
            &[
                "technicians",
                "token",
                "--email",
                &format!("{who}@msp.example"),
                "--name",
                "again",
            ],
        );
        text(&out).lines().last().unwrap().trim().to_owned()
    };
    let (alice, bob, tech) = (token_of("alice"), token_of("bob"), token_of("tech"));

    // Companies from CSV: bad rows are listed and nothing is written; the good file imports once.
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "id,name,identity_provider,mailbox_provider\nfab,Fab,entra_cloud,exchange_online\n",
    )?;
    let out = as_user(&admin, &["companies", "import", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("row 2, column identity_provider: "),
        "{}",
        text(&out)
    );
    let good = dir.path().join("good.csv");
    std::fs::write(
        &good,
        "id,name,tenant_id,identity_provider,mailbox_provider,approvers,permission_profile\n\
         fabrikam,Fabrikam,2c9d8e7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f,entra_id,exchange_online,alice@msp.example;bob@msp.example,full_automation\n",
    )?;
    let out = as_user(&admin, &["companies", "import", good.to_str().unwrap()]);
    assert!(
        text(&out).contains("1 created, 0 updated, 0 unchanged"),
        "{}",
        text(&out)
    );
    let out = as_user(&admin, &["companies", "import", good.to_str().unwrap()]);
    assert!(
        text(&out).contains("0 created, 0 updated, 1 unchanged"),
        "{}",
        text(&out)
    );
    let out = as_user(&tech, &["companies", "import", good.to_str().unwrap()]);
    assert!(
        !out.status.success() && text(&out).contains("403"),
        "{}",
        text(&out)
    );
    let out = as_user(&admin, &["companies", "list"]);
    assert!(
        text(&out).contains("fabrikam") && text(&out).contains("contoso"),
        "{}",
        text(&out)
    );

    // A gated run: the inbox, a refused self-approval, two approvals.
    let (s, body) = steward_tests::api::send(
        http.post(format!("{api}/v1/runs"))
            .bearer_auth(&tech)
            .json(&serde_json::json!({"workflow": "gated", "company": "contoso", "inputs": {"user": "jane"}})),
    )
    .await?;
    assert_eq!(s, 201, "{body}");
    let run = body["run"].as_str().unwrap().to_owned();
    let gate = format!("{run}/approval");
    steward_tests::wait_for(
        "the gate in alice's inbox",
        std::time::Duration::from_secs(30),
        || {
            let alice = alice.clone();
            let gate = gate.clone();
            let as_user = &as_user;
            async move {
                Ok(text(&as_user(&alice, &["approvals"]))
                    .contains(&gate)
                    .then_some(()))
            }
        },
    )
    .await?;
    let inbox = text(&as_user(&alice, &["approvals"]));
    assert!(
        inbox.contains("unlocks apply") && inbox.contains("0 of 2 approvals"),
        "{inbox}"
    );
    let out = as_user(&tech, &["approve", &gate]);
    assert!(
        !out.status.success() && text(&out).contains("403"),
        "tech is not an approver: {}",
        text(&out)
    );
    let out = as_user(&alice, &["approve", &gate, "--comment", "looks right"]);
    assert!(
        out.status.success()
            && text(&out).contains(&format!(
                "{gate}: your approval is recorded (1 of 2); the gate waits for more; the run is running"
            )),
        "{}",
        text(&out)
    );
    let out = as_user(&bob, &["approve", &gate]);
    assert!(
        out.status.success()
            && text(&out).contains(&format!(
                "{gate}: approved; the gate is passed; the run is "
            )),
        "{}",
        text(&out)
    );
    steward_tests::wait_for(
        "the run to complete",
        std::time::Duration::from_secs(30),
        || {
            let tech = tech.clone();
            let as_user = &as_user;
            let run = run.clone();
            async move {
                let out = text(&as_user(&tech, &["runs", "--status", "completed"]));
                Ok(out.contains(&run).then_some(()))
            }
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", servers.worker.log_text()))?;
    // Time filters and bad input through the CLI.
    let later = text(&as_user(
        &tech,
        &["runs", "--since", "2999-01-01T00:00:00Z"],
    ));
    assert!(!later.contains(&run), "{later}");
    let earlier = text(&as_user(
        &tech,
        &["runs", "--until", "2999-01-01T00:00:00Z"],
    ));
    assert!(earlier.contains(&run), "{earlier}");
    let out = as_user(&tech, &["runs", "--since", "yesterday"]);
    assert!(
        !out.status.success() && text(&out).contains("since"),
        "{}",
        text(&out)
    );
    let out = as_user(&tech, &["reject", "not-a-gate"]);
    assert!(
        !out.status.success() && text(&out).contains("RUN/STEP"),
        "{}",
        text(&out)
    );
    let out = Command::new(BIN)
        .args(["runs"])
        .env("STEWARD_API_URL", &api)
        .env_remove("STEWARD_TOKEN")
        .output()?;
    assert!(
        !out.status.success() && text(&out).contains("no API token"),
        "{}",
        text(&out)
    );
    // --json where it is accepted: technicians and company deletion through the API.
    let out = as_user(&admin, &["technicians", "list", "--json"]);
    let list: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| anyhow::anyhow!("{e}: {}", text(&out)))?;
    assert_eq!(list.as_array().map(Vec::len), Some(4), "{list}");
    let out = as_user(
        &admin,
        &[
            "technicians",
            "token",
            "--email",
            "tech@msp.example",
            "--name",
            "json",
            "--json",
        ],
    );
    let made: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| anyhow::anyhow!("{e}: {}", text(&out)))?;
    let id = made["info"]["id"].as_str().unwrap_or_default().to_owned();
    assert!(
        made["token"]
            .as_str()
            .is_some_and(|t| t.starts_with("stw_")),
        "{made}"
    );
    let out = as_user(&admin, &["technicians", "revoke", &id, "--json"]);
    let revoked: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| anyhow::anyhow!("{e}: {}", text(&out)))?;
    assert_eq!(revoked["revoked"], id.as_str());
    let out = as_user(&admin, &["companies", "delete", "fabrikam", "--json"]);
    let deleted: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| anyhow::anyhow!("{e}: {}", text(&out)))?;
    assert_eq!(deleted["deleted"], "fabrikam");
    // The token is never a flag (flags show in `ps` and shell history).
    let out = Command::new(BIN)
        .args(["runs", "--token", &tech])
        .env("STEWARD_API_URL", &api)
        .env_remove("STEWARD_TOKEN")
        .output()?;
    assert!(
        !out.status.success() && text(&out).contains("unexpected argument '--token'"),
        "{}",
        text(&out)
    );
    Ok(())
}

/// A Redis URL's password never reaches an error message.
#[test]
fn a_redis_password_stays_out_of_errors() {
    let port = dead_port();
    // Nothing listens there now.
    let url = format!("redis://:hunter2@127.0.0.1:{port}/");
    let out = Command::new(BIN)
        .args(["--redis", &url, "technicians", "list"])
        .env_remove("STEWARD_TOKEN")
        .output()
        .expect("steward runs");
    let t = text(&out);
    assert!(
        !out.status.success()
            && t.contains(&format!(
                "cannot connect to Redis at redis://127.0.0.1:{port}/"
            ))
            && !t.contains("hunter2"),
        "{t}"
    );
    let out = Command::new(BIN)
        .args(["worker"])
        .env("STEWARD_REDIS__URL", "http://:hunter2@db.example/")
        .output()
        .expect("steward runs");
    let t = text(&out);
    assert!(
        !out.status.success() && t.contains("redis.url") && !t.contains("hunter2"),
        "{t}"
    );
}

/// All keys of `ns` in `env`'s Redis.
async fn keys_of(env: &Env, pattern: &str) -> Result<Vec<String>> {
    Ok(env
        .store
        .db()
        .query(redis::cmd("KEYS").arg(pattern))
        .await?)
}

/// `steward bench --parked N` parks N runs at an approval gate (its approver a technician, as a
/// gate needs) and reports Redis's memory per parked run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_parked_measures_runs_waiting_at_a_gate() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let url = env.redis.url();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["bench", "--redis", &url, "--parked", "50", "--json"])
            .output()
            .expect("steward runs")
    })
    .await?;
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| anyhow::anyhow!("{e}: {t}"))?;
    assert_eq!(json["runs"], 50, "{t}");
    let per_run = json["bytes_per_run"].as_f64().unwrap_or(-1.0);
    assert!(per_run > 0.0 && per_run < 20_000.0, "{t}");
    Ok(())
}

/// `steward bench --rate R --duration D` is an open loop: it starts R×D workflows at their own
/// times and reports their end-to-end percentiles with Redis's CPU and bytes per step; a rate or
/// a duration it cannot use is refused with the form to write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_open_loop_reports_percentiles_and_redis_cost() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let url = env.redis.url();
    let run = |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || {
            Command::new(BIN)
                .arg("bench")
                .args(args)
                .output()
                .expect("steward runs")
        })
        .await
        .expect("joined")
    };
    let owned = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let out = run(owned(&[
        "--redis",
        &url,
        "--rate",
        "40",
        "--duration",
        "1s",
        "--steps",
        "2",
        "--json",
    ]))
    .await;
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| anyhow::anyhow!("{e}: {t}"))?;
    assert_eq!(json["mode"], "open loop", "{t}");
    assert_eq!(json["workflows"], 40, "{t}");
    assert_eq!(json["target_rate"], 40.0, "{t}");
    let f = |k: &str| json[k].as_f64().unwrap_or(-1.0);
    assert!(f("p50_ms") > 0.0 && f("p50_ms") <= f("p90_ms"), "{t}");
    assert!(
        f("p90_ms") <= f("p99_ms") && f("p99_ms") <= f("max_ms"),
        "{t}"
    );
    assert!(f("redis_cpu_us_per_step") > 0.0, "{t}");
    assert!(
        f("redis_bytes_in_per_step") > 0.0 && f("redis_bytes_out_per_step") > 0.0,
        "{t}"
    );
    // Redis read and wrote sockets for the steps; the process's own CPU time is reported.
    assert!(
        f("redis_reads_per_step") > 0.0 && f("redis_writes_per_step") > 0.0,
        "{t}"
    );
    // (Counted in ticks of 10 ms, so a short run may count none: present, not negative.)
    if cfg!(target_os = "linux") {
        assert!(f("process_cpu_us_per_step") >= 0.0, "{t}");
    }
    // The arrivals were spread over the second, not sent at once.
    assert!(f("elapsed_s") >= 0.9, "{t}");

    for (flag, value, says) in [
        ("--rate", "0", "workflows per second"),
        ("--rate", "fast", "workflows per second"),
        // Nothing is measured over none (`--parked 0` printed "inf bytes" per run).
        ("--parked", "0", "at least 1"),
        ("--workflows", "0", "at least 1"),
        ("--steps", "0", "at least 1"),
        ("--concurrency", "0", "at least 1"),
    ] {
        let out = run(owned(&["--redis", &url, flag, value])).await;
        let t = text(&out);
        assert!(!out.status.success(), "{t}");
        assert!(t.contains(says), "{flag} {value}: {t}");
    }
    let out = run(owned(&[
        "--redis",
        &url,
        "--rate",
        "5",
        "--duration",
        "forever",
    ]))
    .await;
    let t = text(&out);
    assert!(
        !out.status.success() && t.contains("write it like 10s"),
        "{t}"
    );

    // The configured durability is measured against the server --redis names (this one has no
    // AOF: refused, naming the setting); the private server measures everysec whatever it says.
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("steward.toml");
    std::fs::write(&config, "[redis]\ndurability = \"always\"\n")?;
    let config = config.display().to_string();
    let out = run(owned(&[
        "--config",
        &config,
        "--redis",
        &url,
        "--workflows",
        "2",
    ]))
    .await;
    let t = text(&out);
    assert!(
        !out.status.success() && t.contains("appendfsync always"),
        "{t}"
    );
    let out = run(owned(&[
        "--config",
        &config,
        "--workflows",
        "2",
        "--steps",
        "1",
    ]))
    .await;
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    Ok(())
}

/// `steward bench` touches an installation's Redis only when --redis names it, cleans up what it
/// made there, and leaves no usable bench token behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_uses_a_named_redis_only_and_cleans_up() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let url = env.redis.url();
    let bench = move |args: Vec<String>, env_url: Option<String>| async move {
        tokio::task::spawn_blocking(move || {
            let mut c = Command::new(BIN);
            c.arg("bench").args(args);
            if let Some(u) = env_url {
                c.env("STEWARD_REDIS__URL", u);
            }
            c.output().expect("steward runs")
        })
        .await
        .expect("joined")
    };
    let owned = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

    // STEWARD_REDIS__URL (exported for the installation) is not where the bench writes.
    let out = bench(
        owned(&["--workflows", "3", "--steps", "1", "--concurrency", "2"]),
        Some(url.clone()),
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(keys_of(&env, "bench-*").await?.is_empty());

    // Named with --redis: the bench namespace is removed at the end.
    let out = bench(owned(&["--redis", &url, "--gates", "2", "--json"]), None).await;
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| anyhow::anyhow!("{e}: {t}"))?;
    assert_eq!(json["gates"], 2, "{t}");
    assert!(
        t.contains("removed the") && t.contains("keys of namespace `bench-"),
        "{t}"
    );
    assert!(keys_of(&env, "bench-*").await?.is_empty(), "{t}");

    // With --namespace too, the runs stay, but the approver is disabled and its token revoked.
    let out = bench(
        owned(&["--redis", &url, "--namespace", "benchkept", "--gates", "2"]),
        None,
    )
    .await;
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("left in namespace `benchkept`"), "{t}");
    let auth = steward_engine::auth::Auth::new(
        env.store.db().clone(),
        "benchkept",
        std::sync::Arc::new(steward_engine::SystemClock),
    );
    let approver = auth
        .technician_by_email("approver@bench.example")
        .await?
        .expect("the bench approver");
    assert!(approver.disabled);
    let tokens = auth.tokens(approver.id).await?;
    assert!(
        !tokens.is_empty() && tokens.iter().all(|t| t.revoked_at.is_some()),
        "{tokens:?}"
    );
    Ok(())
}

/// `serve` checks its flags like the config file, and refuses links that would lead nowhere.
#[test]
fn serve_refuses_a_zero_tick_and_links_to_every_interface() {
    let out = Command::new(BIN)
        .args(["serve", "--tick", "0ms"])
        .output()
        .expect("steward runs");
    let t = text(&out);
    assert!(!out.status.success() && t.contains("scheduler.tick"), "{t}");
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let out = Command::new(BIN)
            .args(["serve", "--listen", listen])
            .env_remove("STEWARD_HTTP__PUBLIC_URL")
            .output()
            .expect("steward runs");
        let t = text(&out);
        assert!(
            !out.status.success()
                && t.contains("http.public-url is not set")
                && t.contains("STEWARD_HTTP__PUBLIC_URL="),
            "{t}"
        );
    }
}

/// Technicians on the server print JSON with --json.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn technicians_on_the_server_print_json() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let cli = |extra: &[&str]| -> Output {
        Command::new(BIN)
            .args(env.cli_args())
            .args(extra)
            .env_remove("STEWARD_TOKEN")
            .output()
            .expect("steward runs")
    };
    let out = cli(&[
        "technicians",
        "add",
        "--email",
        "Lead@MSP.example",
        "--name",
        "Lead",
        "--admin",
        "--token-name",
        "laptop",
        "--json",
    ]);
    let added: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| anyhow::anyhow!("{e}: {}", text(&out)))?;
    assert_eq!(added["technician"]["email"], "lead@msp.example", "{added}");
    assert_eq!(added["technician"]["role"], "admin", "{added}");
    assert!(
        added["token"]["token"]
            .as_str()
            .is_some_and(|t| t.starts_with("stw_")),
        "{added}"
    );
    let out = cli(&["technicians", "list", "--json"]);
    let list: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| anyhow::anyhow!("{e}: {}", text(&out)))?;
    assert_eq!(list[0]["email"], "lead@msp.example", "{list}");
    let id = added["token"]["info"]["id"].as_str().unwrap_or_default();
    let out = cli(&["technicians", "revoke", id, "--json"]);
    let revoked: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| anyhow::anyhow!("{e}: {}", text(&out)))?;
    assert_eq!(revoked["revoked"], id);
    // A token id is checked by clap, which names the argument.
    let out = cli(&["technicians", "revoke", "nope"]);
    let t = text(&out);
    assert!(
        !out.status.success() && t.contains("<ID>") && t.contains("tok_"),
        "{t}"
    );
    Ok(())
}

/// An API answer that is not Steward's JSON error still says what was asked and what came back.
#[test]
fn a_non_json_api_error_names_the_request_and_shows_the_body() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = conn.read(&mut buf);
        let body = format!("<html><body>Bad gateway{}</body></html>", "!".repeat(300));
        let _ = write!(
            conn,
            "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    });
    let out = Command::new(BIN)
        .args(["approvals"])
        .env("STEWARD_API_URL", format!("http://{addr}"))
        .env("STEWARD_TOKEN", "stw_whatever")
        .output()
        .expect("steward runs");
    server.join().unwrap();
    let t = text(&out);
    assert!(
        !out.status.success()
            && t.contains(&format!("GET http://{addr}/v1/approvals"))
            && t.contains("502")
            && t.contains("<html><body>Bad gateway!")
            && !t.contains(&"!".repeat(250)),
        "{t}"
    );
}

#[test]
fn a_bad_log_filter_is_an_error_naming_the_flag() {
    let out = Command::new(BIN)
        .args(["--log", "info,steward=loud", "ops"])
        .output()
        .expect("steward runs");
    let t = text(&out);
    assert!(!out.status.success() && t.contains("--log"), "{t}");
    let out = Command::new(BIN)
        .args(["ops"])
        .env("STEWARD_LOG", "[")
        .output()
        .expect("steward runs");
    let t = text(&out);
    assert!(!out.status.success() && t.contains("STEWARD_LOG"), "{t}");
}

#[test]
fn ops_lists_group_access_and_approval() {
    let out = steward(&["ops"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let line = |name: &str| -> Vec<String> {
        t.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no line for {name}: {t}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        line("conditional_access.exclude_user")[1..4],
        ["conditional_access", "write", "always"]
    );
    assert_eq!(line("user.get")[1..4], ["users", "read", "policy"]);
    // Each input with its type and bounds.
    assert!(
        t.contains("times                    required  a whole number from 0 to 100: how many attempts fail"),
        "{t}"
    );
    assert!(
        t.contains(
            "rights                   required  one of full_access, send_as, send_on_behalf"
        ),
        "{t}"
    );
    assert_eq!(line("device.delete")[1..4], ["devices", "write", "blocked"]);
    // The longest name still leaves a space before its group.
    assert_eq!(
        line("exchange_server.enable_remote_mailbox")[1],
        "on_prem_exchange"
    );
}

#[test]
fn the_sandbox_takes_its_webhook_secret_from_the_environment_only() {
    let out = steward(&["sandbox", "--webhook-secret", "s3cret"]);
    let t = text(&out);
    assert!(
        !out.status.success() && t.contains("unexpected argument '--webhook-secret'"),
        "{t}"
    );
    let help = text(&steward(&["sandbox", "--help"]));
    assert!(help.contains("STEWARD_SANDBOX_WEBHOOK_SECRET"), "{help}");
}

/// Logs and messages written to a file or a pipe carry no ANSI colour codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_that_is_not_a_terminal_has_no_colours() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let dir = tempfile::tempdir()?;
    let mut args = env.cli_args();
    args.push("worker".to_owned());
    let worker = Proc::spawn(Path::new(BIN), dir.path(), "worker", &args)?;
    let log = steward_tests::wait_for(
        "the worker's first log lines",
        std::time::Duration::from_secs(20),
        || async {
            let log = std::fs::read_to_string(&worker.log).unwrap_or_default();
            Ok(log.contains("worker starting").then_some(log))
        },
    )
    .await?;
    assert!(!log.contains('\u{1b}'), "{log:?}");
    let out = steward(&["--shards", "0", "worker"]);
    assert!(!text(&out).contains('\u{1b}'), "{:?}", text(&out));
    Ok(())
}

/// A port where nothing listens.
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A refused connection is said once, not once per layer that passed it on.
#[test]
fn a_connection_error_is_said_once() {
    let port = dead_port();
    let out = Command::new(BIN)
        .args(["--redis", &format!("redis://127.0.0.1:{port}/"), "worker"])
        // A key configured, so that what fails is the connection.
        .env("STEWARD_SECRETS__DEV_KEY", "true")
        .output()
        .expect("steward runs");
    let t = text(&out);
    assert!(
        !out.status.success()
            && t.contains(&format!(
                "cannot connect to Redis at redis://127.0.0.1:{port}/: "
            ))
            && t.matches("refused").count() == 1,
        "{t}"
    );
    let out = Command::new(BIN)
        .args(["runs"])
        .env("STEWARD_API_URL", format!("http://127.0.0.1:{port}"))
        .env("STEWARD_TOKEN", "stw_whatever")
        .output()
        .expect("steward runs");
    let t = text(&out);
    assert!(
        !out.status.success()
            && t.contains(&format!("cannot reach the API at http://127.0.0.1:{port} "))
            && t.matches("refused").count() == 1
            && t.lines().count() == 1,
        "{t}"
    );
}

/// A Redis URL that points at something else (here an HTTP server) is named as not a Redis
/// server, not reported as a protocol parse error.
#[test]
fn a_url_that_is_not_a_redis_server_says_so() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let addr = listener.local_addr().expect("an address");
    // Answers every connection as a web server would, until the test process ends.
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
    });
    let out = Command::new(BIN)
        .args([
            "--redis",
            &format!("redis://{addr}/"),
            "technicians",
            "list",
        ])
        .env_remove("STEWARD_TOKEN")
        .output()
        .expect("steward runs");
    let t = text(&out);
    assert!(
        !out.status.success()
            && t.contains(&format!(
                "cannot connect to Redis at redis://{addr}/: that is not a Redis server"
            ))
            && !t.contains("Parse error")
            && !t.contains("Incompatible type"),
        "{t}"
    );
}

/// `--shards`, STEWARD_REDIS__SHARDS and the config file take the same shard counts and refuse
/// the others in the same words.
#[test]
fn shard_counts_are_bounded_alike_by_flag_environment_and_file() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("steward.toml");
    for bad in ["0", "1001", "70000", "-1"] {
        let want = format!("redis.shards = {bad}: use 1 to 1000");
        let flag = Command::new(BIN)
            .args(["--shards", bad, "worker"])
            .output()
            .expect("steward runs");
        let env = Command::new(BIN)
            .args(["worker"])
            .env("STEWARD_REDIS__SHARDS", bad)
            .output()
            .expect("steward runs");
        std::fs::write(&file, format!("[redis]\nshards = {bad}\n")).expect("written");
        let config = Command::new(BIN)
            .args(["--config", file.to_str().unwrap_or_default(), "worker"])
            .output()
            .expect("steward runs");
        for (how, out) in [("flag", flag), ("environment", env), ("file", config)] {
            let t = text(&out);
            assert!(
                !out.status.success() && t.contains(&want),
                "{how} {bad}: {t}"
            );
        }
    }
    let out = steward(&["--shards", "four", "worker"]);
    assert!(
        text(&out).contains("redis.shards = `four`: use a whole number from 1 to 1000"),
        "{}",
        text(&out)
    );
}

/// Splits a README command line into arguments: words, and "double-quoted" phrases.
fn words_of(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any {
                    out.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(word);
    }
    out
}

/// The README's "Using it", as written, with the sample data in `deploy/examples/`: every
/// command below is in the README word for word (`run_01J…` stands for the run), and does what
/// the README says, run as a new technician would (a server-side first admin, then tokens).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_s_walkthrough_works_with_the_sample_data() -> Result<()> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))?;
    let using = readme
        .split("## Using it")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .context("the README has a `Using it` section")?
        .to_owned();
    let env = Env::start(Persistence::None).await?;
    // A namespace of its own: the harness's sample companies are not the README's.
    let namespace = format!("{}readme", env.namespace);
    let dir = tempfile::tempdir()?;
    let port = dead_port();
    let api = format!("http://127.0.0.1:{port}");
    // The key, made as the README says (`openssl rand -base64 32` into `<dir>/k1.key`).
    for line in [
        "mkdir -p ~/.steward/keys && (umask 077; openssl rand -base64 32 > ~/.steward/keys/k1.key)",
        "export STEWARD_SECRETS__KEY_DIR=~/.steward/keys STEWARD_SECRETS__ACTIVE_KEY=k1",
    ] {
        assert!(using.contains(line), "the README no longer says `{line}`");
    }
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys)?;
    let made = Command::new("sh")
        .arg("-c")
        .arg("umask 077; openssl rand -base64 32 > k1.key")
        .current_dir(&keys)
        .status()?;
    assert!(made.success(), "openssl rand failed");
    let server_env = [
        ("STEWARD_REDIS__URL", env.redis.url()),
        ("STEWARD_REDIS__NAMESPACE", namespace),
        ("STEWARD_SECRETS__KEY_DIR", keys.display().to_string()),
        ("STEWARD_SECRETS__ACTIVE_KEY", "k1".to_owned()),
    ];
    // `steward worker &` and `steward serve --listen 127.0.0.1:8080 &`, on a free port.
    for line in [
        "steward worker &",
        "steward serve --listen 127.0.0.1:8080 &",
    ] {
        assert!(using.contains(line), "the README no longer says `{line}`");
    }
    let mut procs = Vec::new();
    for (name, args) in [
        ("worker", vec!["worker".to_owned()]),
        (
            "serve",
            vec![
                "serve".to_owned(),
                "--listen".to_owned(),
                format!("127.0.0.1:{port}"),
            ],
        ),
    ] {
        let log = std::fs::File::create(dir.path().join(format!("{name}.log")))?;
        let child = Command::new(BIN)
            .args(&args)
            .envs(server_env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        procs.push(KillOnDrop(child));
    }
    procs::wait_ready(&api, std::time::Duration::from_secs(30)).await?;

    // Runs `line` (as the README writes it; `run_01J…` replaced by `run`) with `token`.
    let sh = |line: &str, token: Option<&str>, run: &str| -> Output {
        assert!(using.contains(line), "the README no longer says `{line}`");
        let line = line.replace("run_01J…", run);
        let mut c = Command::new(BIN);
        c.args(&words_of(&line)[1..])
            .envs(server_env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("STEWARD_API_URL", &api)
            .env_remove("STEWARD_TOKEN");
        if let Some(t) = token {
            c.env("STEWARD_TOKEN", t);
        }
        c.output().expect("steward runs")
    };
    let token_in = |out: &Output| -> String {
        let t = text(out);
        assert!(out.status.success(), "{t}");
        t.lines()
            .find(|l| l.starts_with("stw_"))
            .unwrap_or_else(|| panic!("no token in {t}"))
            .trim()
            .to_owned()
    };
    let lead = token_in(&sh(
        "steward technicians add --admin --email lead@msp.example --name \"Team lead\" --token-name laptop",
        None,
        "",
    ));
    let ok = |line: &str, token: &str, run: &str| -> String {
        let out = sh(line, Some(token), run);
        let t = text(&out);
        assert!(out.status.success(), "`{line}`: {t}");
        t
    };
    let t = ok(
        "steward companies import deploy/examples/companies.csv",
        &lead,
        "",
    );
    assert!(t.contains("2 created, 0 updated, 0 unchanged"), "{t}");
    ok(
        "steward companies add deploy/examples/fabrikam.json",
        &lead,
        "",
    );
    let t = ok("steward companies list", &lead, "");
    for company in ["contoso", "northwind", "fabrikam"] {
        assert!(t.contains(company), "{t}");
    }
    let tech = token_in(&sh(
        "steward technicians add --email tech@msp.example --name Tech --companies contoso,fabrikam --token-name cli",
        Some(&lead),
        "",
    ));
    let out = sh(
        "steward run demo --company contoso --input user=jane.doe --wait",
        Some(&tech),
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = sh(
        "steward run demo --company fabrikam --input user=ann.lee --wait",
        Some(&tech),
        "",
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(3), "{t}");
    let run = run_of(&t);
    let t = ok(
        "steward plan demo --company fabrikam --input user=ann.lee",
        &tech,
        "",
    );
    assert!(t.contains("demo v") && t.contains("identity hybrid"), "{t}");
    let t = ok(
        "steward script ad.unlock --company fabrikam --input identity=ann.lee",
        &tech,
        "",
    );
    assert!(
        t.contains("# steward-op: ad.unlock@") && !t.contains("ann.lee"),
        "the value travels only in the payload: {t}"
    );
    assert!(ok("steward runs --company fabrikam", &tech, "").contains(&run));
    let t = ok("steward status run_01J…", &tech, &run);
    assert!(t.contains("what you can do now:"), "{t}");
    let t = ok("steward approvals", &lead, "");
    assert!(t.contains(&format!("{run}/policy_approval")), "{t}");
    ok(
        "steward approve run_01J…/policy_approval --comment \"start date confirmed\"",
        &lead,
        &run,
    );
    steward_tests::wait_for(
        "the approved run to complete",
        std::time::Duration::from_secs(30),
        || async {
            let t = ok("steward status run_01J…", &lead, &run);
            Ok((t.contains("status:  completed")
                && t.contains("approved at gate `policy_approval` by lead@msp.example (via api) \u{2014} \u{201c}start date confirmed\u{201d}"))
            .then_some(()))
        },
    )
    .await?;
    drop(procs);
    Ok(())
}

/// A child process killed when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `validate` takes folders, and lists every problem of every file with its line and fix.
#[test]
fn validate_checks_folders_and_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("more");
    std::fs::create_dir(&nested).unwrap();
    std::fs::write(
        dir.path().join("good.yaml"),
        "name: good\nsteps:\n  - {id: a, op: noop}\n",
    )
    .unwrap();
    std::fs::write(
        nested.join("bad.yml"),
        "name: bad\nsteps:\n  - id: a\n    op: flaky\n    with: {times: \"three\"}\n  - id: b\n    op: sleep\n    max_wait: 999999999d\n    with:\n      ms: -5\n      speed: 2\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a workflow").unwrap();
    let out = steward(&["validate", dir.path().to_str().unwrap()]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("good.yaml: ok (1 steps)"), "{t}");
    for want in [
        "bad.yml:5: step `a`: with.times: `times`: expected a whole number from 0 to 100, got text `three`",
        "bad.yml:8: step `b`: max_wait: a max_wait of 999999999d is longer than the most allowed, 30d",
        "bad.yml:10: step `b`: with.ms: `ms`: -5 is below the smallest allowed, 0",
        "bad.yml:11: step `b`: with.speed: `sleep` has no input `speed`",
        "1 of 2 files have problems",
    ] {
        assert!(t.contains(want), "missing {want:?} in\n{t}");
    }
    assert!(!t.contains("notes.txt"), "{t}");
}

/// A new starter for a hybrid company: an identity op, a licence and a group, with a secret input.
const NEW_STARTER: &str = r#"name: new_starter
version: 1
inputs:
  upn: { type: string, required: true }
  name: { type: string, required: true }
  password: { type: string, required: true, secret: true }
steps:
  - id: create
    op: user.create
    with:
      user_principal_name: ${{ inputs.upn }}
      display_name: ${{ inputs.name }}
      password_ref: ${{ inputs.password }}
  - id: licence
    op: license.assign
    needs: [create]
    with:
      user: ${{ steps.create.output.id }}
      sku: SPE_E3
"#;

#[tokio::test]
async fn plan_and_script_show_the_routed_work_through_the_api() -> Result<()> {
    let stack = Stack::start(&[("new_starter", NEW_STARTER)]).await?;
    let mut hybrid: steward_schemas::Company =
        serde_json::from_str(include_str!("../deploy/examples/fabrikam.json"))?;
    hybrid.id = "hybridco".parse()?;
    hybrid.approvers = vec!["lead@msp.example".to_owned()];
    steward_engine::companies::ensure(&stack.env.companies(), hybrid).await?;

    // The plan: the identity change on the AD runner, then the sync and the wait, then the
    // licence in the cloud; the password never shown.
    let args = [
        "plan",
        "new_starter",
        "--company",
        "hybridco",
        "--input",
        "upn=jane@fabrikam.com",
        "--input",
        "name=Jane Doe",
        "--input",
        "password=Sup3r-Secret-Value!",
    ];
    let t = stack.ok("admin", &args);
    assert!(!t.contains("Sup3r-Secret-Value!"), "{t}");
    assert!(
        t.contains("identity hybrid, mailbox exchange_hybrid"),
        "{t}"
    );
    assert!(t.contains("ad.") && t.contains("FAB-RUNNER01"), "{t}");
    assert!(t.contains("jane@fabrikam.com"), "{t}");
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let plan: serde_json::Value = serde_json::from_str(&stack.ok("admin", &json_args))?;
    assert_eq!(plan["routable"], true, "{plan}");
    // The plan a run would have: the gate the company's policy adds comes first.
    assert_eq!(plan["steps"][0]["step"], "policy_approval", "{plan}");
    let step = |id: &str| {
        plan["steps"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["step"] == id))
            .cloned()
            .unwrap_or_default()
    };
    let create = &step("create");
    assert_eq!(create["params"]["password_ref"], "[secret]", "{plan}");
    let systems: Vec<&str> = create["actions"]
        .as_array()
        .context("actions")?
        .iter()
        .filter_map(|a| a["system"].as_str())
        .collect();
    assert_eq!(systems.first(), Some(&"rmm"), "on-prem first: {plan}");
    let licence = &step("licence");
    assert!(
        licence["actions"]
            .as_array()
            .is_some_and(|a| a.iter().all(|a| a["system"] == "graph")),
        "the licence is a cloud change: {plan}"
    );

    // The same company is refused to someone who may not act on it, and names no host.
    let out = stack.cli("tech", &args);
    let t = text(&out);
    assert!(
        !out.status.success() && t.contains("403") && !t.contains("FAB-RUNNER01"),
        "{t}"
    );
    // A missing input is named, with the fix.
    let out = stack.cli(
        "admin",
        &[
            "plan",
            "new_starter",
            "--company",
            "hybridco",
            "--input",
            "upn=x@y",
        ],
    );
    let t = text(&out);
    assert!(!out.status.success() && t.contains("inputs.name"), "{t}");

    // The script: fixed text, the values only in the encoded payload, the password redacted,
    // sent to the runner that reaches the DC.
    let hostile = "Jane'; Remove-ADUser -Identity Administrator #";
    let script = |name: &str| {
        stack.ok(
            "admin",
            &[
                "script",
                "ad.new_user",
                "--company",
                "hybridco",
                "--input",
                "sam_account_name=jdoe",
                "--input",
                "user_principal_name=jane@fabrikam.com",
                "--input",
                "path=OU=Staff,DC=fabrikam,DC=local",
                "--input",
                "password=Sup3r-Secret-Value!",
                "--input",
                &format!("name={name}"),
            ],
        )
    };
    let plain = script("Jane Doe");
    let evil = script(hostile);
    assert!(
        !plain.contains("Sup3r-Secret-Value!")
            && !evil.contains("Remove-ADUser -Identity Administrator"),
        "{evil}"
    );
    // The AD runner (a machine with RSAT) runs AD cmdlets itself.
    assert!(
        plain.contains("# ad.new_user on FAB-RUNNER01, direct")
            && plain.contains("# Runs directly on the target machine."),
        "{plain}"
    );
    // Byte for byte the same text but for the payload literal.
    let strip = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.starts_with("$StewardPayload = '"))
            .map(str::to_owned)
            .collect()
    };
    assert_ne!(plain, evil);
    assert_eq!(strip(&plain), strip(&evil));
    // An abstract op is pointed at its actions; an unknown input is named.
    let out = stack.cli("admin", &["script", "user.create", "--company", "hybridco"]);
    let t = text(&out);
    assert!(
        !out.status.success() && t.contains("workflow op") && t.contains("ad.new_user"),
        "{t}"
    );
    let out = stack.cli(
        "admin",
        &[
            "script",
            "ad.unlock",
            "--company",
            "hybridco",
            "--input",
            "colour=blue",
        ],
    );
    let t = text(&out);
    assert!(!out.status.success() && t.contains("inputs.colour"), "{t}");
    Ok(())
}

/// `steward run … --dry-run`: what the real offboarding would change, system by system, with the
/// values a run would use (the company's own input defaults applied) and the gates it waits at;
/// nothing is created or changed; a bad input is a clear error naming it.
#[tokio::test]
async fn a_dry_run_shows_what_would_change_and_changes_nothing() -> Result<()> {
    use serde_json::{Value, json};
    let stack = Stack::start(&[
        ("offboarding", include_str!("../workflows/offboarding.yaml")),
        ("onboarding", include_str!("../workflows/onboarding.yaml")),
    ])
    .await?;
    let base = [
        "run",
        "offboarding",
        "--company",
        "contoso",
        "--input",
        "user=jane.doe@contoso.com",
        "--input",
        "license_sku=SPB",
        "--dry-run",
    ];
    let t = stack.ok("tech", &base);
    assert!(
        t.contains("Dry run of offboarding v1") && t.contains("Nothing was changed"),
        "{t}"
    );
    // The workflow's defaults: devices retired, not wiped, the account kept.
    assert!(
        t.contains("retire_devices=true")
            && t.contains("wipe_devices=false")
            && t.contains("delete_after_days=0"),
        "{t}"
    );
    assert!(
        t.contains("retire_devices: graph.retire_managed_devices with user=jane.doe@contoso.com"),
        "{t}"
    );
    assert!(
        t.contains("remove_license: graph.remove_license with user=jane.doe@contoso.com, sku=SPB"),
        "{t}"
    );
    // Gates first; steps the inputs leave out are listed apart.
    let gates = t.find("waits for approval:").expect("the gates");
    // The workflow's gate, its message filled in with the options chosen; and the gate the
    // company's policy adds before the steps that always need approval.
    assert!(
        t[gates..].contains("approval: Offboard jane.doe@contoso.com")
            && t[gates..].contains("devices: retire true, wipe false")
            && t[gates..].contains("policy_approval: Company policy asks for approval before:"),
        "{t}"
    );
    let not_run = t
        .find("not run for these inputs")
        .expect("the steps left out");
    for step in [
        "wipe_devices (device.wipe_all)",
        "wait_before_delete (timer.wait)",
        "delete_user (user.delete)",
    ] {
        assert!(t[not_run..].contains(step), "{step} in:\n{t}");
    }

    // The company's defaults decide when the ticket does not: wipe, and delete after 14 days.
    let http = reqwest::Client::new();
    let mut contoso: Value = http
        .get(format!("{}/v1/companies/contoso", stack.api))
        .bearer_auth(&stack.tokens["admin"])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let mut company = contoso["company"].take();
    company["defaults"]["inputs"] = json!({"wipe_devices": true, "delete_after_days": 14});
    let res = http
        .put(format!("{}/v1/companies/contoso", stack.api))
        .bearer_auth(&stack.tokens["admin"])
        .json(&company)
        .send()
        .await?;
    assert!(res.status().is_success(), "{}", res.text().await?);
    let t = stack.ok("tech", &base);
    assert!(
        t.contains("wipe_devices=true") && t.contains("delete_after_days=14"),
        "{t}"
    );
    assert!(
        t.contains("wipe_devices: graph.wipe_managed_devices with user=jane.doe@contoso.com")
            && t.contains("wait_before_delete: ")
            && t.contains("days=14")
            && t.contains("delete_user: "),
        "{t}"
    );
    let not_run = t.find("not run for these inputs").map_or("", |i| &t[i..]);
    assert!(
        !not_run.contains("wipe_devices (") && not_run.contains("retire_devices ("),
        "{t}"
    );
    // The ticket's own value beats the company's default.
    let mut keep = base.to_vec();
    keep.extend(["--input", "delete_after_days=0"]);
    let t = stack.ok("tech", &keep);
    assert!(t.contains("delete_after_days=0"), "{t}");

    // --json: the routed plan as the API gives it.
    let mut json_args = base.to_vec();
    json_args.push("--json");
    let v: Value = serde_json::from_str(stack.ok("tech", &json_args).trim())?;
    assert_eq!(v["workflow"], "offboarding", "{v}");
    assert_eq!(v["inputs"]["user"], "jane.doe@contoso.com", "{v}");

    // A bad value: a clear error naming the input, and no run.
    let mut bad = base.to_vec();
    bad.extend(["--input", "delete_after_days=soon"]);
    let out = stack.cli("tech", &bad);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("delete_after_days") && t.contains("number"),
        "{t}"
    );
    // The PSA webhooks are in the API's OpenAPI document, with their authentication and answers.
    let doc: Value = http
        .get(format!("{}/v1/openapi.json", stack.api))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    for (path, auth) in [
        ("/v1/hooks/autotask", "X-Hook-Signature"),
        ("/v1/hooks/connectwise", "x-content-signature"),
        ("/v1/hooks/halo", "Authorization"),
    ] {
        let post = &doc["paths"][path]["post"];
        assert!(
            post["description"]
                .as_str()
                .is_some_and(|d| d.contains(auth))
                && post["responses"]["200"].is_object()
                && post["responses"]["202"].is_object()
                && post["responses"]["401"].is_object(),
            "{path}: {post}"
        );
    }
    // Nothing was started by any of it.
    let runs: Value = serde_json::from_str(stack.ok("tech", &["runs", "--json"]).trim())?;
    assert_eq!(runs["runs"].as_array().map(Vec::len), Some(0), "{runs}");
    Ok(())
}
