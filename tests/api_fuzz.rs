//! A fuzz pass over the OpenAPI document with schemathesis (from PyPI; `scripts/setup` installs
//! it into `.venv-fuzz`): every operation through all four phases (examples, coverage, fuzzing
//! with up to 30 cases each, stateful), about two thousand generated test cases (checked: at
//! least a thousand); not one may get a 5xx or drop the connection.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use steward_tests::api::ApiEnv;

fn schemathesis() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("STEWARD_SCHEMATHESIS") {
        return Ok(p.into());
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-fuzz/bin/st");
    if venv.is_file() {
        return Ok(venv);
    }
    anyhow::bail!(
        "schemathesis is not installed: run scripts/setup (it installs it into .venv-fuzz), or set STEWARD_SCHEMATHESIS"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_generated_request_gets_a_server_error() -> Result<()> {
    let st = schemathesis()?;
    let api = ApiEnv::start(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/workflows"
    )))
    .await?;
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/openapi.json");
    let token = api.tokens["admin"].clone();
    let base = api.base.clone();
    let home = tempfile::tempdir()?;
    let out = tokio::task::spawn_blocking(move || {
        Command::new(st)
            .current_dir(home.path())
            .env("HOME", home.path())
            .arg("run")
            .arg(&schema)
            .args(["--url", &base])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .args(["--generation-with-security-parameters", "false"])
            .args(["--checks", "not_a_server_error"])
            .args(["-n", "30", "--seed", "1", "--request-timeout", "10"])
            .output()
    })
    .await?
    .context("schemathesis did not start")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis found failures:\n{text}");
    assert!(
        text.contains("passed") && !text.contains("Connection failed"),
        "{text}"
    );
    // "Test cases:\n  1941 generated, 1941 passed"
    let generated: u64 = text
        .lines()
        .find_map(|l| l.trim().split_once(" generated, ")?.0.parse().ok())
        .with_context(|| format!("no count of generated test cases in:\n{text}"))?;
    assert!(generated >= 1_000, "only {generated} test cases:\n{text}");
    Ok(())
}
