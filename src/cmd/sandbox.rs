//! `steward sandbox`: the simulated MSP world (see sandbox/README.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use super::shutdown_signal;

#[derive(Args, Debug)]
pub(crate) struct SandboxArgs {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: String,
    /// A YAML fixture of companies (default: the built-in sandbox/fixtures/msp.yaml).
    #[arg(long)]
    fixture: Option<PathBuf>,
    /// Seeds object ids and fault injection.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where Autotask ticket webhooks are sent. The key that signs them (X-Hook-Signature) is
    /// read from STEWARD_SANDBOX_WEBHOOK_SECRET (never a flag: flags show in `ps` and shell
    /// history).
    #[arg(long)]
    webhook_url: Option<String>,
}

/// The environment variable the sandbox's webhook signing key is read from.
const WEBHOOK_SECRET_VAR: &str = "STEWARD_SANDBOX_WEBHOOK_SECRET";

pub(crate) async fn run(args: SandboxArgs) -> Result<ExitCode> {
    let sandbox = steward_sandbox::Sandbox::new(steward_sandbox::Options {
        fixture: args.fixture,
        seed: args.seed,
        webhook_url: args.webhook_url,
        webhook_secret: std::env::var(WEBHOOK_SECRET_VAR)
            .ok()
            .filter(|s| !s.is_empty()),
    })?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("sandbox listening on http://{addr} (/graph /login /outlook /datto /autotask /admin)");
    sandbox.serve(listener, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
