//! Secrets at rest: a run with a secret input, through real `steward serve` and `steward worker`
//! processes on a Redis with AOF, leaves the secret nowhere in plaintext (nor in base64): not in
//! any Redis key, not in the AOF, not in the processes' logs, not in any API answer or CLI
//! output about the run — while the op really received it, and a later step could use what an
//! earlier one copied out of it under an innocent key.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use serde_json::{Value, json};
use steward_engine::embedded::Persistence;
use steward_engine::secrets::Context;
use steward_schemas::{RunId, StepState};
use steward_tests::{Env, Proc, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_steward");
const T: Duration = Duration::from_secs(30);

const SECRETIVE: &str = r#"name: secretive
inputs:
  user: {type: string}
  password: {type: string, secret: true}
steps:
  - id: copy
    op: noop
    with:
      output:
        innocent: "${{ inputs.password }}"
        sentence: "the password is ${{ inputs.password }}!"
        user: "${{ inputs.user }}"
  - id: relay
    op: noop
    needs: [copy]
    with:
      output: {again: "${{ steps.copy.output.innocent }}"}
"#;

const FAILING: &str = r#"name: failing
inputs:
  password: {type: string, secret: true}
defaults: {on_failure: rollback}
steps:
  - id: copy
    op: noop
    with:
      output: {kept: "${{ inputs.password }}"}
  - id: boom
    op: fail
    needs: [copy]
    with: {message: "the service refused ${{ inputs.password }}"}
"#;

/// The forms of `secret` a scan looks for: as is, and its base64 (standard and URL-safe) at
/// each of the three alignments it can take inside a longer base64 text.
fn needles(secret: &str) -> Vec<String> {
    let mut out = vec![secret.to_owned()];
    for engine in [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::URL_SAFE,
    ] {
        for shift in 0..3 {
            let mut bytes = vec![0u8; shift];
            bytes.extend_from_slice(secret.as_bytes());
            let enc = engine.encode(&bytes);
            // Skip the characters the leading bytes touch and the last group (padding).
            let from = (shift * 4).div_ceil(3) + 1;
            out.push(enc[from..enc.len() - 4].to_owned());
        }
    }
    out
}

fn find_in(what: &str, haystack: &[u8], needles: &[String]) -> Option<String> {
    needles
        .iter()
        .find(|n| haystack.windows(n.len()).any(|w| w == n.as_bytes()))
        .map(|n| format!("{what} holds `{n}`"))
}

/// Every key of the Redis: its DUMP (raw, deleted stream entries included) and its contents by
/// type.
async fn redis_contents(env: &Env) -> Result<Vec<(String, Vec<u8>)>> {
    let db = env.store.db();
    let mut out = Vec::new();
    let mut cursor = 0_u64;
    loop {
        let (next, keys): (u64, Vec<String>) = db
            .query(redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(500))
            .await?;
        for key in keys {
            let dump: Vec<u8> = db.query(redis::cmd("DUMP").arg(&key)).await?;
            out.push((format!("DUMP {key}"), dump));
            let kind: String = db.query(redis::cmd("TYPE").arg(&key)).await?;
            let value: redis::Value = match kind.as_str() {
                "string" => db.query(redis::cmd("GET").arg(&key)).await?,
                "hash" => db.query(redis::cmd("HGETALL").arg(&key)).await?,
                "stream" => {
                    db.query(redis::cmd("XRANGE").arg(&key).arg("-").arg("+"))
                        .await?
                }
                "zset" => {
                    db.query(redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1))
                        .await?
                }
                "set" => db.query(redis::cmd("SMEMBERS").arg(&key)).await?,
                "list" => {
                    db.query(redis::cmd("LRANGE").arg(&key).arg(0).arg(-1))
                        .await?
                }
                other => bail!("key {key} has type {other}, which the scan does not read"),
            };
            out.push((format!("{kind} {key}"), format!("{value:?}").into_bytes()));
        }
        if next == 0 {
            return Ok(out);
        }
        cursor = next;
    }
}

fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(files_under(&path)?);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}

fn cli(env: &Env, extra: &[&str]) -> Result<String> {
    let out = Command::new(BIN)
        .args(env.cli_args())
        .args(extra)
        .env_remove("STEWARD_TOKEN")
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("steward {extra:?} failed: {text}");
    }
    Ok(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_input_is_found_nowhere_in_plaintext() -> Result<()> {
    let env = Env::start(Persistence::AofEverySec).await?;
    let secret = format!("Pw-{}-zq", ulid::Ulid::new());
    let dir = tempfile::tempdir()?;
    let flows = dir.path().join("workflows");
    std::fs::create_dir(&flows)?;
    std::fs::write(flows.join("secretive.yaml"), SECRETIVE)?;
    std::fs::write(flows.join("failing.yaml"), FAILING)?;

    let out = cli(
        &env,
        &[
            "technicians",
            "add",
            "--admin",
            "--email",
            "admin@msp.example",
            "--name",
            "Admin",
            "--token-name",
            "cli",
        ],
    )?;
    let token = out.lines().last().context("a token")?.trim().to_owned();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let api = format!("http://127.0.0.1:{port}");
    let mut serve_args = env.cli_args();
    serve_args.extend([
        "serve".to_owned(),
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--workflows".to_owned(),
        flows.display().to_string(),
    ]);
    let serve = Proc::spawn(Path::new(BIN), dir.path(), "serve", &serve_args)?;
    let mut worker_args = env.cli_args();
    worker_args.push("worker".to_owned());
    let worker = Proc::spawn(Path::new(BIN), dir.path(), "worker", &worker_args)?;
    let http = reqwest::Client::new();
    wait_for("the API", T, || {
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

    let get = |path: String| {
        let (http, token, api) = (http.clone(), token.clone(), api.clone());
        async move {
            let res = http
                .get(format!("{api}{path}"))
                .bearer_auth(token)
                .send()
                .await?;
            let status = res.status();
            let body = res.text().await?;
            if !status.is_success() {
                bail!("GET {path}: {status} {body}");
            }
            Ok::<String, anyhow::Error>(body)
        }
    };
    let mut runs = Vec::new();
    for (workflow, inputs) in [
        ("secretive", json!({"user": "jane", "password": secret})),
        ("failing", json!({"password": secret})),
    ] {
        let res = http
            .post(format!("{api}/v1/runs"))
            .bearer_auth(&token)
            .json(&json!({"workflow": workflow, "company": "contoso", "inputs": inputs}))
            .send()
            .await?;
        let status = res.status();
        let body: Value = res.json().await?;
        if !status.is_success() {
            bail!("starting {workflow}: {status} {body}");
        }
        let run: RunId = body["run"]
            .as_str()
            .or_else(|| body["id"].as_str())
            .with_context(|| format!("a run id in {body}"))?
            .parse()?;
        runs.push(run);
    }
    for run in &runs {
        env.wait_end(*run, T)
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}\n{}", serve.log_text(), worker.log_text()))?;
    }

    // The op got the secret itself: what the steps copied out of it opens back to it — even
    // after a second step relayed it under another innocent key.
    let ring = env
        .store
        .secrets()
        .context("the test store has a keyring")?;
    let snap = env.store.load(runs[0]).await?.context("the run")?;
    assert_eq!(snap.doc.state.status.name(), "completed");
    let output = |step: &str| match &snap.doc.state.steps[step].state {
        StepState::Succeeded { output, .. } => output.clone(),
        other => panic!("{step} is {other:?}"),
    };
    let cx = Context::run_secret(&runs[0].to_string());
    let open = |v: &Value| -> Result<String> {
        Ok(ring
            .open(v.as_str().context("a sealed string")?, &cx)?
            .expose()
            .to_owned())
    };
    assert_eq!(open(&output("relay")["again"])?, secret);
    assert_eq!(open(&output("copy")["innocent"])?, secret);
    assert_eq!(output("copy")["user"], "jane");
    let mut opened = Vec::new();
    let sentence = ring
        .open_within(
            output("copy")["sentence"].as_str().context("text")?,
            &cx,
            &mut opened,
        )?
        .context("a sealed value in the sentence")?;
    assert_eq!(sentence.expose(), format!("the password is {secret}!"));
    let failed = env.store.load(runs[1]).await?.context("the run")?;
    assert!(
        failed.doc.state.status.is_terminal() && failed.doc.state.status.name() != "completed",
        "{:?}",
        failed.doc.state.status
    );

    // Every answer about the runs.
    let mut answers: Vec<(String, String)> = Vec::new();
    for run in &runs {
        answers.push((
            format!("GET /v1/runs/{run}"),
            get(format!("/v1/runs/{run}")).await?,
        ));
        answers.push((
            format!("steward status {run} --json"),
            cli(&env, &["status", &run.to_string(), "--json"])?,
        ));
        answers.push((
            format!("steward status {run}"),
            cli(&env, &["status", &run.to_string()])?,
        ));
    }
    answers.push(("GET /v1/runs".to_owned(), get("/v1/runs".to_owned()).await?));
    answers.push((
        "GET /v1/approvals".to_owned(),
        get("/v1/approvals".to_owned()).await?,
    ));
    let shown: Value = serde_json::from_str(&answers[0].1)?;
    assert!(
        shown.to_string().contains("[secret]"),
        "the copied secret is shown as [secret]: {shown}"
    );
    let boom = serde_json::from_str::<Value>(&answers[3].1)?.to_string();
    assert!(
        boom.contains("the service refused [secret]"),
        "the failure says a secret was there: {boom}"
    );

    let needles = needles(&secret);
    let mut found = Vec::new();
    for (what, body) in &answers {
        found.extend(find_in(what, body.as_bytes(), &needles));
    }
    for (what, bytes) in redis_contents(&env).await? {
        found.extend(find_in(&what, &bytes, &needles));
    }
    let (_, dir_value): (String, String) = env
        .store
        .db()
        .query(redis::cmd("CONFIG").arg("GET").arg("dir"))
        .await?;
    let aof = files_under(Path::new(&dir_value))?;
    assert!(
        aof.iter().any(|p| p.to_string_lossy().contains(".aof")),
        "the Redis writes an AOF: {aof:?}"
    );
    for file in aof {
        found.extend(find_in(
            &file.display().to_string(),
            &std::fs::read(&file)?,
            &needles,
        ));
    }
    for log in [&serve.log, &worker.log] {
        found.extend(find_in(
            &log.display().to_string(),
            &std::fs::read(log)?,
            &needles,
        ));
    }
    assert!(found.is_empty(), "the secret leaked: {found:#?}");
    Ok(())
}

/// Runs `steward` with `args` and `vars`; its output, once it has exited (within 20 s, else it
/// is killed and the test fails: these processes must refuse to start).
fn refused(args: &[String], vars: &[(&str, &str)]) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("out.log");
    let out = std::fs::File::create(&log)?;
    let mut child = Command::new(BIN)
        .args(args)
        .envs(vars.iter().copied())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(&log)?;
            if status.success() {
                bail!("steward {args:?} succeeded: {text}");
            }
            return Ok(text);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "steward {args:?} started instead of refusing: {}",
                std::fs::read_to_string(&log)?
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_worker_refuse_to_start_without_the_right_key() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    // The Redis and namespace, without the test's config file (and so without a key).
    let bare: Vec<String> = env.cli_args()[..6].to_vec();
    for command in ["worker", "serve"] {
        let mut args = bare.clone();
        args.push(command.to_owned());
        let text = refused(&args, &[])?;
        assert!(
            text.contains(&format!("`steward {command}` needs a secrets key"))
                && text.contains("secrets.key-dir")
                && text.contains("STEWARD_SECRETS__DEV_KEY=true"),
            "{text}"
        );
    }
    // An active key that is not in the keyring: named, with the keys that are.
    let mut worker = env.cli_args();
    worker.push("worker".to_owned());
    let text = refused(&worker, &[("STEWARD_SECRETS__ACTIVE_KEY", "k9")])?;
    assert!(
        text.contains("secrets.active-key = `k9`, but no key `k9` was found (keys found: t1)"),
        "{text}"
    );
    // Other key material under an id the installation already used: refused, not used to seal
    // secrets that nothing could open later.
    let other = steward_engine::secrets::generate_key();
    let mut bare_worker = bare.clone();
    bare_worker.push("worker".to_owned());
    let text = refused(
        &bare_worker,
        &[
            ("STEWARD_SECRETS__KEYS", &format!("t1:{}", other.as_str())),
            ("STEWARD_SECRETS__ACTIVE_KEY", "t1"),
        ],
    )?;
    assert!(
        text.contains("secrets key `t1` (STEWARD_SECRETS__KEYS) is not the key this installation")
            && !text.contains(other.as_str()),
        "{text}"
    );
    // A malformed key: named with where it came from, never shown.
    let text = refused(
        &bare_worker,
        &[
            ("STEWARD_SECRETS__KEYS", "t1:aHVudGVyMg"),
            ("STEWARD_SECRETS__ACTIVE_KEY", "t1"),
        ],
    )?;
    assert!(
        text.contains("key `t1` (STEWARD_SECRETS__KEYS): it has 7 bytes")
            && !text.contains("aHVudGVyMg"),
        "{text}"
    );

    // The development key is made once per namespace and shared by every process that asks.
    let dev = steward_engine::config::SecretsConfig {
        dev_key: true,
        ..Default::default()
    };
    let db = env.store.db();
    let keys = env.store.keys();
    let a = steward_engine::secrets::keyring(&dev, db, keys)
        .await?
        .context("a dev keyring")?;
    let b = steward_engine::secrets::keyring(&dev, db, keys)
        .await?
        .context("a dev keyring")?;
    assert_eq!(a.active(), "dev");
    let cx = Context::run_secret("r");
    assert_eq!(b.open(&a.seal_str("x", &cx), &cx)?.expose(), "x");
    Ok(())
}
