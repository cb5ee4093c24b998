//! Microsoft's own clients against the sandbox, unmodified: MSAL Python, azure-identity and the
//! Graph Python SDK (msgraph-sdk); MSAL Node and the Graph JS client. Each test starts an HTTPS
//! sandbox with a certificate it makes, points one language's clients at it (authority and Graph
//! base URL, and trust in the sandbox's CA, nothing else) and runs the driver script in
//! `tests/msclients/`, which prints a JSON line per check. Every expected check must be there and
//! pass, and the changes the SDKs made must be in the sandbox's ledger.
//!
//! The clients come from PyPI and npm at the versions locked in `tests/msclients/`
//! (`requirements.txt` with hashes, `package-lock.json`); `scripts/setup` installs them into
//! `tests/msclients/.venv` and `tests/msclients/node_modules`. Without them these tests fail,
//! saying so.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use common::*;
use serde_json::Value;
use steward_sandbox::{Options, RunningSandbox, Sandbox};

/// How long one language's driver may take (imports, every check, and the sandbox's answers).
const DRIVER_TIMEOUT: Duration = Duration::from_secs(120);

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/msclients")
}

fn missing(what: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{what} is not installed: run scripts/setup (it installs Microsoft's clients from PyPI and npm into tests/msclients/.venv and tests/msclients/node_modules)"
    )
}

/// Fails unless `scripts/setup` installed from `lockfile` as it is now: it leaves the lockfile's
/// SHA-256 in `marker`.
fn installed_from(lockfile: &str, marker: &str, what: &str) -> Result<()> {
    use sha2::Digest as _;
    let lock = std::fs::read(clients_dir().join(lockfile))
        .with_context(|| format!("tests/msclients/{lockfile} is missing"))?;
    let want = hex::encode(sha2::Sha256::digest(&lock));
    match std::fs::read_to_string(clients_dir().join(marker)) {
        Ok(have) if have.trim() == want => Ok(()),
        Ok(_) => Err(anyhow::anyhow!(
            "{what} was installed from an older tests/msclients/{lockfile}: run scripts/setup again"
        )),
        Err(_) => Err(missing(what)),
    }
}

fn python() -> Result<PathBuf> {
    installed_from(
        "requirements.txt",
        ".venv/.steward-installed",
        "the Python client venv (msal, azure-identity, msgraph-sdk)",
    )?;
    Ok(clients_dir().join(".venv/bin/python"))
}

fn node() -> Result<PathBuf> {
    installed_from(
        "package-lock.json",
        "node_modules/.steward-installed",
        "the Node clients (@azure/msal-node, @microsoft/microsoft-graph-client)",
    )?;
    which("node").ok_or_else(|| missing("node (Node.js)"))
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// One check a driver reported.
#[derive(Debug)]
struct Check {
    name: String,
    ok: bool,
    detail: String,
}

/// Runs `program args` against `sb` (whose CA is trusted through the usual environment
/// variables) and returns its checks, failing with its whole output when it could not run.
async fn drive(
    sb: &RunningSandbox,
    program: &Path,
    args: &[&str],
    prefix: &str,
) -> Result<(Vec<Check>, String)> {
    let ca = tempfile::Builder::new().suffix(".pem").tempfile()?;
    std::fs::write(
        ca.path(),
        sb.trust_pem.as_deref().context("an HTTPS sandbox")?,
    )?;
    let home = tempfile::tempdir()?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .current_dir(clients_dir())
        .env("HOME", home.path())
        .env("SANDBOX_URL", &sb.base_url)
        .env("TENANT_DOMAIN", "contoso.com")
        .env("TENANT_ID", CONTOSO_TENANT)
        .env("CLIENT_ID", CLIENT_ID)
        .env("CLIENT_SECRET", CLIENT_SECRET)
        .env("REFRESH_TOKEN", PARTNER_RT)
        .env("UPN_PREFIX", prefix)
        // Trust the sandbox's CA: requests (MSAL, azure-identity), httpx (msgraph-sdk), Node.
        .env("SSL_CERT_FILE", ca.path())
        .env("REQUESTS_CA_BUNDLE", ca.path())
        .env("NODE_EXTRA_CA_CERTS", ca.path())
        // Only the sandbox: no proxies, and nothing reaches Microsoft.
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("AZURE_AUTHORITY_HOST")
        .env("NO_PROXY", "*")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(DRIVER_TIMEOUT, cmd.output())
        .await
        .with_context(|| {
            format!(
                "{} did not finish within {DRIVER_TIMEOUT:?}",
                program.display()
            )
        })?
        .with_context(|| format!("cannot start {}", program.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let text = format!(
        "exit: {}\n--- stdout\n{stdout}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut checks = Vec::new();
    for line in stdout.lines().filter(|l| l.starts_with('{')) {
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("a check line that is not JSON: {line}\n{text}"))?;
        checks.push(Check {
            name: v["check"].as_str().unwrap_or_default().to_owned(),
            ok: v["ok"].as_bool().unwrap_or(false),
            detail: v["detail"].as_str().unwrap_or_default().to_owned(),
        });
    }
    Ok((checks, text))
}

/// Every name in `expected` reported and passed, and nothing failed.
fn assert_checks(checks: &[Check], expected: &[&str], output: &str) -> Result<()> {
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    let missing: Vec<&&str> = expected
        .iter()
        .filter(|e| !checks.iter().any(|c| c.name == **e))
        .collect();
    if !failed.is_empty() || !missing.is_empty() {
        bail!(
            "failed checks:\n{}\nchecks never reported: {missing:?}\n{output}",
            failed.join("\n")
        );
    }
    Ok(())
}

/// The changes the SDKs made, as the sandbox's ledger recorded them: the user created, patched,
/// licensed, added to a group, given and relieved of a manager, and deleted.
async fn assert_ledger(sb: &RunningSandbox, upn: &str) -> Result<()> {
    let ca = sb.trust_pem.as_deref().context("an HTTPS sandbox")?;
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes())?)
        .build()?;
    let body: Value = http
        .get(format!("{}/admin/ledger", sb.base_url))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let entries = body["entries"].as_array().context("the ledger's entries")?;
    let created = entries
        .iter()
        .find(|e| {
            e["action"] == "user.create" && e["details"]["userPrincipalName"].as_str() == Some(upn)
        })
        .with_context(|| format!("no user.create for {upn} in {entries:#?}"))?;
    let id = created["target"].as_str().context("target")?;
    for action in [
        "user.update",
        "user.assign_license",
        "group.add_member",
        "user.set_manager",
        "user.remove_manager",
        "user.delete",
    ] {
        let found = entries.iter().any(|e| {
            e["action"] == action
                && (e["target"].as_str() == Some(id) || e["details"]["member"].as_str() == Some(id))
        });
        assert!(found, "no {action} for {id} in the ledger: {entries:#?}");
    }
    Ok(())
}

async fn https_sandbox() -> Result<RunningSandbox> {
    Ok(Sandbox::spawn_tls(Options::default(), None).await?)
}

const GRAPH_CHECKS: &[&str] = &[
    "graph_list_users_paged",
    "graph_create_user",
    "graph_patch_user",
    "graph_assign_license",
    "graph_add_group_member_ref",
    "graph_member_of_cast",
    "graph_manager_ref",
    "graph_batch",
    "graph_error_parsed",
    "graph_deleted_items",
];

#[tokio::test]
async fn msal_python_azure_identity_and_the_graph_python_sdk() -> Result<()> {
    let py = python()?;
    let sb = https_sandbox().await?;
    let (checks, output) = drive(&sb, &py, &["py_clients.py"], "py").await?;
    eprintln!("{output}");
    let mut expected = vec![
        "msal_client_credentials",
        "msal_refresh_and_silent",
        "msal_unknown_tenant",
        "azure_identity_client_secret",
    ];
    expected.extend_from_slice(GRAPH_CHECKS);
    assert_checks(&checks, &expected, &output)?;
    assert_ledger(&sb, "py.new.starter@contoso.com").await
}

#[tokio::test]
async fn msal_node_and_the_graph_js_client() -> Result<()> {
    let node = node()?;
    let sb = https_sandbox().await?;
    let (checks, output) = drive(&sb, &node, &["node_clients.mjs"], "js").await?;
    eprintln!("{output}");
    let mut expected = vec![
        "msal_client_credentials",
        "msal_refresh_and_silent",
        "graph_with_delegated_token",
    ];
    expected.extend_from_slice(GRAPH_CHECKS);
    assert_checks(&checks, &expected, &output)?;
    assert_ledger(&sb, "js.new.starter@contoso.com").await
}
