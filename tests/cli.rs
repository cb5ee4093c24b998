//! The `steward` command as a technician uses it.

use std::path::Path;
use std::process::{Command, Output};

use anyhow::Result;
use steward_engine::embedded::Persistence;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_wait_and_status_work_against_a_worker_process() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let dir = tempfile::tempdir()?;
    let mut args = env.cli_args();
    args.extend(["worker", "--with-scheduler"].map(str::to_owned));
    let worker = Proc::spawn(Path::new(BIN), dir.path(), "worker", &args)?;
    let common = env.cli_args();
    let common: Vec<&str> = common.iter().map(String::as_str).collect();

    let owned = |extra: &[&str]| -> Vec<String> {
        common
            .iter()
            .chain(extra)
            .map(|s| (*s).to_owned())
            .collect()
    };
    let run_args = owned(&[
        "run",
        "workflows/demo.yaml",
        "--company",
        "contoso",
        "--input",
        "user=jane",
        "--wait",
    ]);
    let out =
        tokio::task::spawn_blocking(move || Command::new(BIN).args(&run_args).output()).await??;
    let t = text(&out);
    assert!(out.status.success(), "{t}\n{}", worker.log_text());
    assert!(
        t.contains("status:  completed") && t.contains("timeline:"),
        "{t}"
    );
    let run = t
        .lines()
        .find_map(|l| l.strip_prefix("run "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();

    let mut status_args = common.clone();
    status_args.extend(["status", &run, "--json"]);
    let out = steward(&status_args);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(json["run"]["state"]["status"]["status"], "completed");
    assert!(json["history"].as_array().is_some_and(|h| h.len() > 5));

    // Secret inputs, and values under secret-looking keys in outputs, are never printed.
    let secretive = dir.path().join("secretive.yaml");
    std::fs::write(
        &secretive,
        "name: secretive\ninputs:\n  user: {type: string}\n  password: {type: string, secret: true}\nsteps:\n  - {id: a, op: noop, with: {output: {token: \"${{ inputs.password }}\", user: \"${{ inputs.user }}\"}}}\n",
    )?;
    let secret_args = owned(&[
        "run",
        secretive.to_str().unwrap(),
        "--company",
        "contoso",
        "--input",
        "user=jane",
        "--input",
        "password=Sesame-7731",
        "--wait",
    ]);
    let out = tokio::task::spawn_blocking(move || Command::new(BIN).args(&secret_args).output())
        .await??;
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("[secret]") && !t.contains("Sesame-7731"), "{t}");
    let secret_run = t
        .lines()
        .find_map(|l| l.strip_prefix("run "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    let mut args = common.clone();
    args.extend(["status", &secret_run, "--json"]);
    let t = text(&steward(&args));
    assert!(t.contains("jane") && !t.contains("Sesame-7731"), "{t}");

    // A failing run exits non-zero; a bad input is refused with its name.
    let fail_args = owned(&[
        "run",
        "workflows/demo.yaml",
        "--company",
        "contoso",
        "--input",
        "user=x",
        "--input",
        "fail_at_end=true",
        "--wait",
    ]);
    let out =
        tokio::task::spawn_blocking(move || Command::new(BIN).args(&fail_args).output()).await??;
    assert!(!out.status.success());
    assert!(text(&out).contains("rolled back"), "{}", text(&out));
    let mut bad = common.clone();
    bad.extend([
        "run",
        "workflows/demo.yaml",
        "--company",
        "contoso",
        "--input",
        "usr=x",
    ]);
    let out = steward(&bad);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(
        t.contains("input `usr`: workflow `demo` has no such input")
            && t.contains("input `user`: is required"),
        "{t}"
    );
    let mut bad_company = common;
    bad_company.extend([
        "run",
        "workflows/demo.yaml",
        "--company",
        "Contoso Ltd",
        "--input",
        "user=x",
    ]);
    assert!(
        text(&steward(&bad_company)).contains("--company: `Contoso Ltd` is not a valid company id")
    );
    drop(worker);
    Ok(())
}

#[test]
fn the_demo_runs() {
    let out = steward(&["demo"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("status:  completed"), "{t}");
    assert!(
        t.contains("rolled back") && t.contains("NOT undone (irreversible): reset_password"),
        "{t}"
    );
    // The third run waits at the policy's gate until approved through a signed link.
    assert!(
        t.contains("Approving through the link: HTTP 200")
            && t.contains("Using it again: HTTP 410")
            && t.contains("approved by lead@msp.example (via link)"),
        "{t}"
    );
    assert_eq!(t.matches("status:  completed").count(), 2, "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_command_serves_a_fixture() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
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
    let client = reqwest::Client::new();
    steward_tests::wait_for(
        "the sandbox to answer",
        std::time::Duration::from_secs(20),
        || {
            let client = client.clone();
            let url = format!("{base}/admin/health");
            async move {
                Ok(client
                    .get(url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ()))
            }
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", sandbox.log_text()))?;
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

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let api = format!("http://127.0.0.1:{port}");
    let mut serve_args = common.clone();
    serve_args.extend(
        [
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--workflows",
            "tests/fixtures/workflows",
        ]
        .map(str::to_owned),
    );
    let serve = Proc::spawn(Path::new(BIN), dir.path(), "serve", &serve_args)?;
    let mut worker_args = common.clone();
    worker_args.push("worker".to_owned());
    let worker = Proc::spawn(Path::new(BIN), dir.path(), "worker", &worker_args)?;
    let http = reqwest::Client::new();
    steward_tests::wait_for("the API", std::time::Duration::from_secs(20), || {
        let (http, url) = (http.clone(), format!("{api}/readyz"));
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
    .map_err(|e| anyhow::anyhow!("{e}\n{}", serve.log_text()))?;

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
        text(&out).contains("\"row\":2") && text(&out).contains("identity_provider"),
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
    assert!(out.status.success(), "{}", text(&out));
    let out = as_user(&bob, &["approve", &gate]);
    assert!(
        out.status.success() && text(&out).contains("succeeded"),
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
    .map_err(|e| anyhow::anyhow!("{e}\n{}", worker.log_text()))?;
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

/// The README's setup exports STEWARD_TOKEN and STEWARD_API_URL; commands that read the config
/// must still work with them (and other non-config STEWARD_ variables) set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_and_status_work_with_the_api_variables_exported() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let with_env = |extra: &[&str]| -> Output {
        Command::new(BIN)
            .args(env.cli_args())
            .args(extra)
            .env("STEWARD_TOKEN", "stw_not_a_real_token")
            .env("STEWARD_API_URL", "http://127.0.0.1:9")
            .env("STEWARD_TEST_LOG", "debug")
            .env("USER", "tester")
            .output()
            .expect("steward runs")
    };
    let out = with_env(&[
        "run",
        "workflows/demo.yaml",
        "--company",
        "contoso",
        "--input",
        "user=jane",
    ]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let run = t.trim().to_owned();
    assert!(run.starts_with("run_"), "{t}");
    let out = with_env(&["status", &run]);
    let t = text(&out);
    assert!(
        out.status.success() && t.contains(&format!("run {run}")),
        "{t}"
    );
    // Who asked is recorded as the other commands record the caller.
    assert!(t.contains("by cli:tester"), "{t}");
    Ok(())
}

/// A Redis URL's password never reaches an error message.
#[test]
fn a_redis_password_stays_out_of_errors() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
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
        .args(["status", "run_01JD0000000000000000000000"])
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
