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
use steward_tests::procs::Servers;
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

/// Runs `steward EXTRA…` as `command` sets it up; its output, failing unless it succeeded.
fn succeeds(mut command: Command, extra: &[&str]) -> Result<String> {
    let out = command.args(extra).output()?;
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

/// Runs an administrator's command on `env`'s Redis.
fn cli(env: &Env, extra: &[&str]) -> Result<String> {
    let mut command = Command::new(BIN);
    command.args(env.cli_args()).env_remove("STEWARD_TOKEN");
    succeeds(command, extra)
}

/// Runs a technician's command: through the HTTP API at `api`, as the technician of `token`.
fn api_cli(api: &str, token: &str, extra: &[&str]) -> Result<String> {
    let mut command = Command::new(BIN);
    command
        .env("STEWARD_API_URL", api)
        .env("STEWARD_TOKEN", token);
    succeeds(command, extra)
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
    let servers = Servers::start(
        &env,
        BIN,
        dir.path(),
        &["--workflows", &flows.display().to_string()],
        T,
    )
    .await?;
    let api = servers.api.clone();
    let http = reqwest::Client::new();

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
            .map_err(|e| anyhow::anyhow!("{e}\n{}", servers.logs()))?;
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
            api_cli(&api, &token, &["status", &run.to_string(), "--json"])?,
        ));
        answers.push((
            format!("steward status {run}"),
            api_cli(&api, &token, &["status", &run.to_string()])?,
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
    for log in [&servers.serve.log, &servers.worker.log] {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_time_secret_links_show_once_then_burn() -> Result<()> {
    use steward_engine::secrets::Secret;
    use steward_engine::secrets::links::SecretLinks;
    let api = steward_tests::api::ApiEnv::start(Path::new("tests/fixtures/workflows")).await?;
    let links = SecretLinks::for_store(&api.env.store).context("the store has a keyring")?;
    let value = format!("Init-{}-<b>&'\"", ulid::Ulid::new());
    let label = "Initial password for jane@contoso.com";
    let link = links
        .create(
            &Secret::from(value.as_str()),
            label,
            Duration::from_secs(600),
        )
        .await?;
    let url = link.url(&api.base);
    let http = &api.http;
    let escaped = value
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;");

    // A mail scanner or a link preview opens it, any number of times: nothing is used up.
    for _ in 0..3 {
        let res = http.get(url.expose()).send().await?;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["cache-control"], "no-store");
        assert_eq!(res.headers()["referrer-policy"], "no-referrer");
        let page = res.text().await?;
        assert!(
            page.contains(label)
                && page.contains("Show the secret")
                && page.contains("<form method=\"post\">"),
            "{page}"
        );
        assert!(!page.contains(&value) && !page.contains(&escaped), "{page}");
    }
    assert_eq!(http.head(url.expose()).send().await?.status(), 200);
    // Stored sealed: the value is in no key.
    for (what, bytes) in redis_contents(&api.env).await? {
        assert!(find_in(&what, &bytes, &needles(&value)).is_none(), "{what}");
    }

    // The button reveals it, escaped, once.
    let res = http.post(url.expose()).send().await?;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let page = res.text().await?;
    assert!(
        page.contains(&escaped) && page.contains("only time it is shown"),
        "{page}"
    );
    for res in [
        http.post(url.expose()).send().await?,
        http.get(url.expose()).send().await?,
    ] {
        assert_eq!(res.status(), 410);
        let page = res.text().await?;
        assert!(
            page.contains("This secret was already shown")
                && page.contains("tell whoever sent you the link")
                && !page.contains(&escaped),
            "{page}"
        );
    }

    // Two reveals racing: one shows it.
    let link = links
        .create(
            &Secret::from("race-value-1234"),
            "race",
            Duration::from_secs(600),
        )
        .await?;
    let url = link.url(&api.base);
    let tries = (0..8).map(|_| {
        let (http, url) = (http.clone(), url.expose().to_owned());
        tokio::spawn(async move { http.post(url).send().await.map(|r| r.status().as_u16()) })
    });
    let mut statuses = Vec::new();
    for t in tries {
        statuses.push(t.await??);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 410, 410, 410, 410, 410, 410, 410]);

    // Unread until it expires: burnt, with a page that says so.
    let link = links
        .create(
            &Secret::from("expiring-value-99"),
            "short-lived",
            Duration::from_millis(300),
        )
        .await?;
    let url = link.url(&api.base);
    let page = wait_for("the link to expire", T, || {
        let (http, url) = (http.clone(), url.expose().to_owned());
        async move {
            let res = http.get(url).send().await?;
            Ok((res.status() == 410).then_some(res.text().await?))
        }
    })
    .await?;
    assert!(
        page.contains("This link has expired") && page.contains("short-lived"),
        "{page}"
    );
    assert_eq!(http.post(url.expose()).send().await?.status(), 410);
    let db = api.env.store.db();
    let (_, values): (u64, Vec<String>) = db
        .query(
            redis::cmd("SCAN")
                .arg(0)
                .arg("MATCH")
                .arg(api.env.store.keys().secret_link_pattern())
                .arg("COUNT")
                .arg(1000),
        )
        .await?;
    assert!(values.is_empty(), "no value is left: {values:?}");

    // Not a link at all, or one never made: 404, and the page says what to do.
    for token in ["nonsense", "sl_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"] {
        let res = http.get(format!("{}/s/{token}", api.base)).send().await?;
        assert_eq!(res.status(), 404);
        assert!(res.text().await?.contains("This link is not valid"));
        assert_eq!(
            http.post(format!("{}/s/{token}", api.base))
                .send()
                .await?
                .status(),
            404
        );
    }
    // Ops issue links through the seam the workers crate sees.
    let issuer: std::sync::Arc<dyn steward_engine::secrets::LinkIssuer> =
        std::sync::Arc::new(links.issuer(&api.base, Duration::from_secs(60)));
    let issued = issuer
        .issue(&Secret::from("issued-value-77"), "issued")
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    assert!(
        issued
            .url
            .expose()
            .starts_with(&format!("{}/s/sl_", api.base))
    );
    let res = http.post(issued.url.expose()).send().await?;
    assert!(res.text().await?.contains("issued-value-77"));
    // A label that is not one line is refused, without storing anything.
    let err = links
        .create(&Secret::from("x"), "two\nlines", Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("one line"), "{err}");
    Ok(())
}

const GATED: &str = r#"name: gated-secret
inputs:
  password: {type: string, secret: true}
steps:
  - id: copy
    op: noop
    with: {output: {kept: "${{ inputs.password }}"}}
  - id: approval
    needs: [copy]
    gate: {approvers: company, expires_in: 24h}
  - id: after
    op: noop
    needs: [approval]
    with: {output: {again: "${{ steps.copy.output.kept }}", direct: "${{ inputs.password }}"}}
"#;

fn json_cli(env: &Env, vars: &[(&str, &str)], extra: &[&str]) -> Result<Value> {
    let out = Command::new(BIN)
        .args(env.cli_args())
        .args(extra)
        .envs(vars.iter().copied())
        .output()?;
    if !out.status.success() {
        bail!(
            "steward {extra:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_reseals_every_stored_secret_under_the_new_key_while_workers_run() -> Result<()> {
    use steward_engine::secrets::links::{Revealed, SecretLinks};
    use steward_engine::secrets::{Keyring, Secret};
    let env = Env::start(Persistence::None).await?;
    let secret = format!("Rot-{}-pw", ulid::Ulid::new());
    // Phase 1 of the procedure: every process gets the new key `k2`… (t1 still seals).
    let key_dir = env.secrets_dir.path().join("keys");
    let t2 = steward_engine::secrets::generate_key();
    std::fs::write(key_dir.join("t2.key"), t2.as_str())?;
    let dir = tempfile::tempdir()?;
    let mut worker_args = env.cli_args();
    worker_args.push("worker".to_owned());
    let worker = Proc::spawn(Path::new(BIN), dir.path(), "worker-t1", &worker_args)?;

    // The company's approvers are enabled technicians, so the gate opens for them.
    env.add_approvers().await?;
    // Secrets stored under t1: a finished run, a run parked at a gate, a link, a dead letter.
    let done = env
        .start_run(
            &steward_tests::plan(SECRETIVE),
            json!({"user": "jane", "password": secret}),
        )
        .await?;
    let parked = env
        .start_run(&steward_tests::plan(GATED), json!({"password": secret}))
        .await?;
    let links = SecretLinks::for_store(&env.store).context("a keyring")?;
    let link = links
        .create(
            &Secret::from(secret.as_str()),
            "rotated link",
            Duration::from_secs(600),
        )
        .await?;
    let ring = env.store.secrets().context("a keyring")?;
    let keys = env.store.keys();
    let dead_job = json!({"step": "copy", "input": {"pw": ring.seal_str(&secret, &Context::run_secret(&done.to_string()))}});
    env.store
        .db()
        .query::<String>(
            redis::cmd("XADD")
                .arg(keys.dead(keys.shard_of(done)))
                .arg("*")
                .arg("run")
                .arg(done.to_string())
                .arg("job")
                .arg(dead_job.to_string()),
        )
        .await?;
    env.wait_end(done, T)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", worker.log_text()))?;
    wait_for("the gate to open", T, || async {
        let snap = env.store.load(parked).await?.context("run")?;
        Ok(matches!(
            snap.doc.state.steps["approval"].state,
            StepState::AwaitingApproval { .. }
        )
        .then_some(()))
    })
    .await?;

    // Phase 2: t2 becomes the active key everywhere (the worker restarts with it).
    drop(worker);
    let active_t2 = [("STEWARD_SECRETS__ACTIVE_KEY", "t2")];
    let mut worker = Command::new(BIN);
    worker
        .args(&worker_args)
        .envs(active_t2)
        .stdout(std::fs::File::create(dir.path().join("worker-t2.log"))?)
        .stderr(std::fs::File::create(dir.path().join("worker-t2.err"))?);
    let mut worker = KillOnDrop(worker.spawn()?);

    let before = json_cli(&env, &active_t2, &["secrets", "status", "--json"])?;
    assert_eq!(before["active"], "t2");
    assert_eq!(
        before["by_key"]["t1"],
        json!({"runs": 2, "queued_jobs": 0, "dead_letters": 1, "links": 1}),
        "{before}"
    );
    // Phase 3: rotate while the worker runs.
    let rotated = json_cli(&env, &active_t2, &["secrets", "rotate", "--json"])?;
    assert_eq!(
        (
            &rotated["runs"],
            &rotated["dead_letters"],
            &rotated["links"]
        ),
        (&json!(2), &json!(1), &json!(1)),
        "{rotated}"
    );
    assert!(rotated["census"]["by_key"].get("t1").is_none(), "{rotated}");
    let text = String::from_utf8(
        Command::new(BIN)
            .args(env.cli_args())
            .args(["secrets", "status"])
            .envs(active_t2)
            .output()?
            .stdout,
    )?;
    assert!(
        text.contains("Nothing is left under older keys: they can be removed from the keyring."),
        "{text}"
    );

    // The parked run goes on: its step after the gate gets the secret, sealed under t2 now.
    env.approve(parked, "approval", "alice@msp.example").await?;
    env.wait_end(parked, T).await?;
    assert!(worker.0.try_wait()?.is_none(), "the worker ran throughout");

    // Phase 4: t1 is removed. Everything opens with t2 alone.
    std::fs::remove_file(key_dir.join("t1.key"))?;
    let only_t2 = Keyring::new("t2", vec![steward_secrets_key("t2", t2.as_str())?])?;
    for (run, step, field) in [
        (done, "relay", "again"),
        (parked, "after", "again"),
        (parked, "after", "direct"),
        (parked, "copy", "kept"),
    ] {
        let snap = env.store.load(run).await?.context("run")?;
        let StepState::Succeeded { output, .. } = &snap.doc.state.steps[step].state else {
            bail!("{step} did not succeed");
        };
        let sealed = output[field].as_str().context("sealed")?;
        assert!(
            sealed.starts_with("stw1:t2:"),
            "{run} {step}.{field}: {sealed}"
        );
        assert_eq!(
            only_t2
                .open(sealed, &Context::run_secret(&run.to_string()))?
                .expose(),
            secret
        );
    }
    let t2_store = env
        .store
        .clone()
        .with_secrets(Some(std::sync::Arc::new(only_t2)));
    let t2_links = SecretLinks::for_store(&t2_store).context("a keyring")?;
    match t2_links.reveal(link.token.expose()).await? {
        Revealed::Value { secret: s, .. } => assert_eq!(s.expose(), secret),
        Revealed::Gone(state) => bail!("the link is gone: {state:?}"),
    }
    let after = json_cli(&env, &active_t2, &["secrets", "status", "--json"])?;
    assert!(after["by_key"].get("t1").is_none(), "{after}");
    let _ = worker.0.kill();
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

fn steward_secrets_key(id: &str, text: &str) -> Result<steward_engine::secrets::NamedKey> {
    Ok(steward_engine::secrets::parse_key(id, text, "test")?)
}
