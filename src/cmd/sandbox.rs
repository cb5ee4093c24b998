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
    /// Serve HTTPS with a certificate made on start (a private CA signs it for localhost,
    /// 127.0.0.1, ::1 and the --public-url host); the CA's PEM is written to --tls-ca-out.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    tls: bool,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Where --tls writes the CA certificate clients must trust (default: a file in the temp
    /// directory named after the port; the path is printed).
    #[arg(long, requires = "tls")]
    tls_ca_out: Option<PathBuf>,
    /// The URL clients reach the sandbox at (behind a proxy, say): the origin of every link it
    /// writes (@odata.nextLink, @odata.context, OpenID endpoints).
    #[arg(long)]
    public_url: Option<String>,
}

/// The environment variable the sandbox's webhook signing key is read from.
const WEBHOOK_SECRET_VAR: &str = "STEWARD_SANDBOX_WEBHOOK_SECRET";

pub(crate) async fn run(args: SandboxArgs) -> Result<ExitCode> {
    let public_host = args
        .public_url
        .as_deref()
        .and_then(|u| url::Url::parse(u).ok())
        .and_then(|u| u.host_str().map(str::to_owned));
    let sandbox = steward_sandbox::Sandbox::new(steward_sandbox::Options {
        fixture: args.fixture,
        seed: args.seed,
        webhook_url: args.webhook_url,
        webhook_secret: std::env::var(WEBHOOK_SECRET_VAR)
            .ok()
            .filter(|s| !s.is_empty()),
        public_url: args.public_url,
    })?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(steward_sandbox::Tls::from_pem_files(cert, key)?),
        _ if args.tls => Some(steward_sandbox::Tls::self_signed(
            &public_host.into_iter().collect::<Vec<_>>(),
        )?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let services = "(/graph /login /outlook /datto /autotask /admin)";
    match tls {
        Some(tls) => {
            if args.tls {
                let path = args.tls_ca_out.unwrap_or_else(|| {
                    std::env::temp_dir().join(format!("steward-sandbox-{}-ca.pem", addr.port()))
                });
                tls.write_trust_pem(&path)?;
                println!(
                    "sandbox CA certificate (trust it in clients): {}",
                    path.display()
                );
            }
            println!("sandbox listening on https://{addr} {services}");
            sandbox.serve_tls(listener, &tls, shutdown_signal()).await?;
        }
        None => {
            println!("sandbox listening on http://{addr} {services}");
            sandbox.serve(listener, shutdown_signal()).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
