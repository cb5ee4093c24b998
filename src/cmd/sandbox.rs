//! `steward sandbox`: the simulated MSP world (see sandbox/README.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::shutdown_signal;
use crate::client::{ApiArgs, Client, s, urlencode};

/// What `steward sandbox` does besides serving the world.
#[derive(Subcommand, Debug)]
pub(crate) enum SandboxCmd {
    /// Register the sandbox world's companies in Steward and connect their tenants, through the
    /// API and the same consent flow a technician uses (STEWARD_TOKEN: an admin's token).
    Seed {
        /// The sandbox's URL.
        #[arg(long, env = "STEWARD_SANDBOX__URL")]
        sandbox: String,
        /// The workflow the rule for onboarding tickets ("new starter", "onboard") starts.
        #[arg(long, default_value = "onboarding")]
        onboarding_workflow: String,
        /// The workflow the rule for offboarding tickets ("leaver", "offboard") starts.
        #[arg(long, default_value = "offboarding")]
        offboarding_workflow: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct SandboxArgs {
    #[command(subcommand)]
    cmd: Option<SandboxCmd>,
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

/// The environment variable the sandbox's webhook signing key is read from (by `steward
/// sandbox` to sign, by `steward sandbox seed` to register the same key with Steward).
pub(crate) const WEBHOOK_SECRET_VAR: &str = "STEWARD_SANDBOX_WEBHOOK_SECRET";

/// The sandbox's Autotask API user's secret and integration code: the built-in fixture's
/// (sandbox/fixtures/msp.yaml), which mean nothing anywhere else. The sandbox never serves them
/// back (its world snapshot redacts them), so a technician types them, as here.
pub(crate) const SANDBOX_AUTOTASK_SECRET: &str = "sandbox-autotask-secret";
const SANDBOX_AUTOTASK_CODE: &str = "SANDBOXINTEGRATIONCODE";

/// The Steward PSA account ids `steward sandbox seed` registers.
pub(crate) const AUTOTASK_ACCOUNT: &str = "sandbox-autotask";
pub(crate) const CONNECTWISE_ACCOUNT: &str = "sandbox-connectwise";
pub(crate) const HALO_ACCOUNT: &str = "sandbox-halo";

/// The workflows the seeded rules start.
pub(crate) struct Lifecycles<'a> {
    pub(crate) onboarding: &'a str,
    pub(crate) offboarding: &'a str,
}

pub(crate) async fn run(args: SandboxArgs) -> Result<ExitCode> {
    if let Some(SandboxCmd::Seed {
        sandbox,
        onboarding_workflow,
        offboarding_workflow,
        api,
    }) = args.cmd
    {
        let c = Client::new(&api)?;
        let secret = std::env::var(WEBHOOK_SECRET_VAR)
            .ok()
            .filter(|s| !s.is_empty());
        let flows = Lifecycles {
            onboarding: &onboarding_workflow,
            offboarding: &offboarding_workflow,
        };
        let mut out = Vec::new();
        let failed = seed(&c, &sandbox, secret.as_deref(), &flows, &mut out).await?;
        for line in out {
            println!("{line}");
        }
        return Ok(if failed > 0 {
            ExitCode::from(super::exit::ERROR)
        } else {
            ExitCode::SUCCESS
        });
    }
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
    let services = "(/graph /login /outlook /datto /autotask /connectwise /halo /admin)";
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

/// The Steward company for a company of the sandbox world.
fn company_of(c: &Value, approver: &str) -> Value {
    let tenant = &c["tenant"];
    let domain = tenant["domains"][0]
        .as_str()
        .or_else(|| tenant["initial_domain"].as_str())
        .unwrap_or("example.com");
    let mut company = json!({
        "id": c["id"],
        "name": c["name"],
        "tenant_id": tenant["id"],
        "identity_provider": "entra_id",
        "mailbox_provider": "exchange_online",
        "approvers": [approver],
        "permissions": {"profile": "full_automation"},
        "defaults": {"usage_location": "GB", "upn_domain": domain},
    });
    if let Some(id) = c["autotask_company_id"].as_i64() {
        company["psa"] = json!({"provider": "autotask", "company_id": id.to_string()});
    }
    if c["ad"].is_object() {
        // AD with Entra Connect: hybrid. AD without it: on-premises when Exchange Server holds
        // the mailboxes, else AD and Entra ID side by side (hybrid without sync).
        company["identity_provider"] = json!(if c["entra_connect"].is_object() {
            "hybrid"
        } else if c["exchange_server"].is_object() {
            "on_prem_ad"
        } else {
            "hybrid_no_sync"
        });
        // The runner is the site's device described as Steward's runner; other servers are
        // named as the RMM shows them (FAB-AADC01 for the forest's AADC01).
        let devices: Vec<&Value> = c["rmm_site"]["devices"]
            .as_array()
            .into_iter()
            .flatten()
            .collect();
        let device = |name: &str| -> String {
            devices
                .iter()
                .filter_map(|d| d["hostname"].as_str())
                .find(|h| {
                    h.eq_ignore_ascii_case(name)
                        || h.to_uppercase()
                            .ends_with(&format!("-{}", name.to_uppercase()))
                })
                .unwrap_or(name)
                .to_owned()
        };
        let runner = devices
            .iter()
            .find(|d| {
                d["description"]
                    .as_str()
                    .is_some_and(|t| t.to_lowercase().contains("steward runner"))
            })
            .and_then(|d| d["hostname"].as_str())
            .map(str::to_owned)
            .or_else(|| c["ad"]["domain_controller"].as_str().map(&device));
        company["ad_runner"] = json!(runner);
        // New users go to the forest's first OU (the fixture lists the staff OU first).
        if let Some(ou) = c["ad"]["ous"][0].as_str() {
            company["defaults"]["ou"] = json!(ou);
        }
        if let Some(site) = c["rmm_site"]["uid"].as_str() {
            company["rmm"] = json!({"provider": "datto", "site": site});
        }
        if let Some(server) = c["entra_connect"]["server"].as_str() {
            company["entra_connect_server"] = json!(device(server));
        }
        // The world's snapshot names the server `server` (the fixture's key).
        if let Some(server) = c["exchange_server"]["server"]
            .as_str()
            .or_else(|| c["exchange_server"]["name"].as_str())
        {
            company["exchange_server"] = json!(device(server));
            // An Exchange server with no RMM agent is reached from the runner by remoting.
            let has_agent = devices
                .iter()
                .filter_map(|d| d["hostname"].as_str())
                .any(|h| {
                    h.eq_ignore_ascii_case(server)
                        || h.to_uppercase()
                            .ends_with(&format!("-{}", server.to_uppercase()))
                });
            if !has_agent {
                company["exchange_runner"] = json!(runner);
            }
            company["mailbox_provider"] = json!(if c["entra_connect"].is_object() {
                "exchange_hybrid"
            } else {
                "exchange_server"
            });
        }
    }
    company
}

/// `steward sandbox seed`: every company of the sandbox's world becomes a Steward company (if it
/// is not one yet), and every tenant is connected through the consent flow: Steward's consent
/// URL, the sandbox's consent page accepted, Microsoft's redirect to Steward's callback. Then the
/// sandbox's PSA accounts (Autotask with the webhook key the sandbox signs with; ConnectWise, with
/// a ticket callback to Steward; HaloPSA, with a webhook to Steward) and the rules mapping onboarding and offboarding tickets to
/// `flows`. Says what it did in `out`; returns how many things failed (each said on stderr).
pub(crate) async fn seed(
    c: &Client,
    sandbox: &str,
    webhook_secret: Option<&str>,
    flows: &Lifecycles<'_>,
    out: &mut Vec<String>,
) -> Result<usize> {
    macro_rules! say {
        ($($t:tt)*) => { out.push(format!($($t)*)) };
    }
    let sandbox = sandbox.trim_end_matches('/');
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    let world: Value = http
        .get(format!("{sandbox}/admin/world"))
        .send()
        .await
        .with_context(|| format!("cannot reach the sandbox at {sandbox}"))?
        .error_for_status()?
        .json()
        .await?;
    let me = c.get("/v1/technicians/me").await?;
    let approver = s(&me["email"]).to_owned();
    let companies = world["companies"]
        .as_object()
        .ok_or_else(|| anyhow!("the sandbox's /admin/world lists no companies"))?;
    let mut failed = 0;
    for (id, snapshot) in companies {
        let exists = c
            .get(&format!("/v1/companies/{}", urlencode(id)))
            .await
            .is_ok();
        if !exists {
            if let Err(e) = c
                .post("/v1/companies", company_of(snapshot, &approver))
                .await
            {
                eprintln!("{id}: not registered: {e}");
                failed += 1;
                continue;
            }
            say!("{id}: registered");
        }
        match connect(c, &http, id, snapshot).await {
            Ok(()) => say!("{id}: tenant connected through the consent flow"),
            Err(e) => {
                eprintln!("{id}: tenant not connected: {e}");
                failed += 1;
            }
        }
    }
    if let Some(at) = world["autotask"].as_object() {
        match webhook_secret {
            Some(secret) => {
                let account = json!({
                    "provider": "autotask",
                    "webhook_secret": secret,
                    "api_url": format!("{sandbox}/autotask/atservicesrest/v1.0"),
                    "api_username": at.get("username").cloned().unwrap_or_default(),
                    "api_secret": SANDBOX_AUTOTASK_SECRET,
                    "api_integration_code": SANDBOX_AUTOTASK_CODE,
                });
                match c
                    .put(&format!("/v1/psa/accounts/{AUTOTASK_ACCOUNT}"), account)
                    .await
                {
                    Ok(_) => say!(
                        "PSA account {AUTOTASK_ACCOUNT}: registered (webhooks checked with the key the sandbox signs with)"
                    ),
                    Err(e) => {
                        eprintln!("PSA account {AUTOTASK_ACCOUNT}: not registered: {e}");
                        failed += 1;
                    }
                }
            }
            None => eprintln!(
                "PSA account {AUTOTASK_ACCOUNT}: skipped: {WEBHOOK_SECRET_VAR} is not set (set it to the key `steward sandbox` signs its Autotask webhooks with)"
            ),
        }
    }
    match connectwise(c, &http, sandbox).await {
        Ok(()) => say!(
            "PSA account {CONNECTWISE_ACCOUNT}: registered, with a ticket callback to {}/v1/hooks/connectwise",
            c.base()
        ),
        Err(e) => {
            eprintln!("PSA account {CONNECTWISE_ACCOUNT}: not registered: {e}");
            failed += 1;
        }
    }
    match halo(c, &http, sandbox).await {
        Ok(true) => say!(
            "PSA account {HALO_ACCOUNT}: registered, with a webhook to {}/v1/hooks/halo (Basic authentication)",
            c.base()
        ),
        Ok(false) => say!("PSA account {HALO_ACCOUNT}: already registered"),
        Err(e) => {
            eprintln!("PSA account {HALO_ACCOUNT}: not registered: {e}");
            failed += 1;
        }
    }
    let offered = c.get("/v1/workflows").await?;
    let offered: Vec<&str> = offered
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w["name"].as_str())
        .collect();
    let missing: Vec<&str> = [flows.onboarding, flows.offboarding]
        .into_iter()
        .filter(|w| !offered.contains(w))
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "PSA rules: skipped: the API offers no workflow {} (it offers: {}); fix: add the workflow files, or name others with --onboarding-workflow/--offboarding-workflow",
            missing.join(", "),
            offered.join(", ")
        );
        return Ok(failed);
    }
    let rules = json!({"rules": [
        {"workflow": flows.offboarding, "title_keywords": ["leaver", "offboard"], "lifecycle": "offboarding"},
        {"workflow": flows.onboarding, "title_keywords": ["new starter", "onboard"], "lifecycle": "onboarding"},
    ]});
    match c.put("/v1/psa/rules", rules).await {
        Ok(_) => say!(
            "PSA rules: tickets titled \"leaver\"/\"offboard\" start `{}`, \"new starter\"/\"onboard\" start `{}`",
            flows.offboarding,
            flows.onboarding
        ),
        Err(e) => {
            eprintln!("PSA rules: not set: {e}");
            failed += 1;
        }
    }
    Ok(failed)
}

/// The sandbox's ConnectWise: a Steward account for its API member, and (once) a ticket
/// callback to Steward's hook, made through ConnectWise's own API as an administrator would.
async fn connectwise(c: &Client, http: &reqwest::Client, sandbox: &str) -> Result<()> {
    use steward_sandbox::connectwise::{COMPANY, PRIVATE_KEY, PUBLIC_KEY};
    let api_url = format!("{sandbox}/connectwise/v4_6_release/apis/3.0");
    let client_id = "steward";
    c.put(
        &format!("/v1/psa/accounts/{CONNECTWISE_ACCOUNT}"),
        json!({
            "provider": "connectwise",
            "api_url": api_url,
            "api_username": format!("{COMPANY}+{PUBLIC_KEY}"),
            "api_secret": PRIVATE_KEY,
            "api_integration_code": client_id,
        }),
    )
    .await?;
    let hook = format!(
        "{}/v1/hooks/connectwise?account={CONNECTWISE_ACCOUNT}",
        c.base()
    );
    let cw = |req: reqwest::RequestBuilder| {
        req.basic_auth(format!("{COMPANY}+{PUBLIC_KEY}"), Some(PRIVATE_KEY))
            .header("clientId", client_id)
    };
    let existing: Value = cw(http.get(format!("{api_url}/system/callbacks")))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    if existing
        .as_array()
        .into_iter()
        .flatten()
        .any(|cb| cb["url"] == hook.as_str())
    {
        return Ok(());
    }
    cw(http.post(format!("{api_url}/system/callbacks")))
        .json(&json!({
            "url": hook, "objectId": 0, "type": "Ticket", "level": "Owner",
            "description": "Steward", "inactiveFlag": false,
        }))
        .send()
        .await?
        .error_for_status()
        .context("ConnectWise refused the callback")?;
    Ok(())
}

/// The sandbox's HaloPSA: a Steward account for its API application, and a webhook to Steward's
/// hook made through Halo's own API, authenticated with a Basic credential made here (Halo signs
/// nothing; the credential is the webhook's proof). Once: an account already registered is left
/// as it is (its credential cannot be read back), and `false` is returned.
async fn halo(c: &Client, http: &reqwest::Client, sandbox: &str) -> Result<bool> {
    use steward_sandbox::halo::{CLIENT_ID, CLIENT_SECRET};
    let accounts = c.get("/v1/psa/accounts").await?;
    if accounts
        .as_array()
        .into_iter()
        .flatten()
        .any(|a| a["id"] == HALO_ACCOUNT)
    {
        return Ok(false);
    }
    let api_url = format!("{sandbox}/halo");
    let username = "steward";
    let password = steward_engine::links::LinkSigner::generate_key();
    c.put(
        &format!("/v1/psa/accounts/{HALO_ACCOUNT}"),
        json!({
            "provider": "halopsa",
            "webhook_username": username,
            "webhook_secret": password,
            "api_url": api_url,
            "api_username": CLIENT_ID,
            "api_secret": CLIENT_SECRET,
        }),
    )
    .await?;
    let token: Value = http
        .post(format!("{api_url}/auth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
            ("scope", "all"),
        ])
        .send()
        .await?
        .error_for_status()
        .context("Halo refused the API application's token request")?
        .json()
        .await?;
    let bearer = token["access_token"]
        .as_str()
        .ok_or_else(|| anyhow!("Halo's token answer has no access_token"))?;
    http.post(format!("{api_url}/api/Webhook"))
        .bearer_auth(bearer)
        .json(&json!([{
            "name": "Steward",
            "url": format!("{}/v1/hooks/halo?account={HALO_ACCOUNT}", c.base()),
            "authentication_type": 1,
            "basic_username": username,
            "basic_password": password,
        }]))
        .send()
        .await?
        .error_for_status()
        .context("Halo refused the webhook")?;
    Ok(true)
}

/// Connects one company's tenant as an administrator would: opens the consent URL, accepts.
async fn connect(c: &Client, http: &reqwest::Client, id: &str, snapshot: &Value) -> Result<()> {
    let tenant = snapshot["tenant"]["id"]
        .as_str()
        .ok_or_else(|| anyhow!("the sandbox company has no tenant id"))?;
    let start = c
        .post(
            &format!("/v1/tenants/{}/connect", urlencode(id)),
            json!({ "tenant": tenant }),
        )
        .await?;
    let url = url::Url::parse(s(&start["consent_url"]))?;
    let page = http.get(url.clone()).send().await?;
    if !page.status().is_success() {
        bail!(
            "the consent page answered {}: {}",
            page.status(),
            page.text().await.unwrap_or_default()
        );
    }
    let mut form: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    form.push(("decision".to_owned(), "accept".to_owned()));
    let mut action = url.clone();
    action.set_query(None);
    // The sandbox redirects to Steward's callback; the client follows it.
    let done = http.post(action).form(&form).send().await?;
    let status = done.status();
    let text = done.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!(
            "Steward's consent callback answered {status}: {}",
            strip_tags(&text)
        );
    }
    Ok(())
}

fn strip_tags(html: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for ch in html.chars() {
        match ch {
            '<' => inside = true,
            '>' => {
                inside = false;
                out.push(' ');
            }
            c if !inside => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}
