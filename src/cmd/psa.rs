//! `steward psa …`: PSA accounts, the ticket-to-workflow rules, ignored events, intakes waiting
//! for inputs, and ticket notes — all through the API. Secrets are read from the environment
//! only (never flags, so they stay out of `ps` and shell history).

use std::process::ExitCode;

use anyhow::{Context as _, Result, anyhow};
use clap::Subcommand;
use serde_json::{Map, Value, json};

use crate::client::{ApiArgs, Client, s};

/// The environment variable holding the webhook secret for `steward psa account`.
const WEBHOOK_SECRET_VAR: &str = "STEWARD_PSA_WEBHOOK_SECRET";
/// The environment variable holding the API secret.
const API_SECRET_VAR: &str = "STEWARD_PSA_API_SECRET";
/// The environment variable holding the API integration code / client id.
const API_CODE_VAR: &str = "STEWARD_PSA_API_CODE";

#[derive(Subcommand, Debug)]
pub(crate) enum PsaCmd {
    /// List the PSA accounts (no secrets).
    Accounts,
    /// Add or replace a PSA account. Secrets come from STEWARD_PSA_WEBHOOK_SECRET,
    /// STEWARD_PSA_API_SECRET and STEWARD_PSA_API_CODE.
    Account {
        /// The account's id (a-z, 0-9, - and _).
        id: String,
        /// autotask, connectwise or halopsa.
        #[arg(long)]
        provider: String,
        /// Halo: the Basic username configured on the webhook.
        #[arg(long)]
        webhook_username: Option<String>,
        /// The PSA's REST base URL.
        #[arg(long)]
        api_url: Option<String>,
        /// Autotask UserName; ConnectWise company+publicKey; Halo client id.
        #[arg(long)]
        api_username: Option<String>,
        /// Notes seen by `internal` (technicians) or `customer`.
        #[arg(long, default_value = "internal")]
        notes: String,
    },
    /// Show the rules, or replace them with a JSON file (`{"rules": [...]}`).
    Rules {
        /// A JSON file with the new rules.
        #[arg(long)]
        file: Option<std::path::PathBuf>,
    },
    /// Events recorded and ignored (unknown company, no rule, not a ticket), newest first.
    Ignored,
    /// Tickets on their way to a run; those waiting say what they need.
    Intakes,
    /// Supply inputs an intake waits for: `steward psa supply autotask:at:1042 --input start_date=2027-02-01`.
    Supply {
        /// The intake's id.
        intake: String,
        /// NAME=VALUE (repeatable).
        #[arg(long = "input", value_name = "NAME=VALUE", required = true)]
        inputs: Vec<String>,
    },
    /// Ticket notes: written, waiting (the PSA was down) or failed.
    Notes,
}

pub(crate) async fn run(api: &ApiArgs, cmd: PsaCmd) -> Result<ExitCode> {
    let c = Client::new(api)?;
    match cmd {
        PsaCmd::Accounts => {
            let v = c.get("/v1/psa/accounts").await?;
            c.print(&v, |v| {
                for a in v.as_array().into_iter().flatten() {
                    println!(
                        "{:<12} {:<12} webhook secret {}  api {}  notes {}  deliver to {}",
                        s(&a["id"]),
                        s(&a["provider"]),
                        if a["webhook_secret_set"] == true {
                            "set"
                        } else {
                            "not set"
                        },
                        a["api_url"].as_str().unwrap_or("(none: no notes)"),
                        s(&a["note_visibility"]),
                        s(&a["webhook_path"])
                    );
                }
            });
        }
        PsaCmd::Account {
            id,
            provider,
            webhook_username,
            api_url,
            api_username,
            notes,
        } => {
            let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
            let body = json!({
                "provider": provider,
                "webhook_secret": env(WEBHOOK_SECRET_VAR),
                "webhook_username": webhook_username,
                "api_url": api_url,
                "api_username": api_username,
                "api_secret": env(API_SECRET_VAR),
                "api_integration_code": env(API_CODE_VAR),
                "note_visibility": notes,
            });
            let v = c.put(&format!("/v1/psa/accounts/{id}"), body).await?;
            c.print(&v, |v| {
                println!(
                    "PSA account {} saved; point the PSA's webhook at {}{}",
                    s(&v["id"]),
                    c.base(),
                    s(&v["webhook_path"])
                );
            });
        }
        PsaCmd::Rules { file } => {
            let v = match file {
                Some(f) => {
                    let text = std::fs::read_to_string(&f)
                        .with_context(|| format!("cannot read {}", f.display()))?;
                    let body: Value = serde_json::from_str(&text).with_context(|| {
                        format!("{} is not JSON (write {{\"rules\": [...]}})", f.display())
                    })?;
                    c.put("/v1/psa/rules", body).await?
                }
                None => c.get("/v1/psa/rules").await?,
            };
            c.print(&v, |v| {
                for (i, r) in v["rules"].as_array().into_iter().flatten().enumerate() {
                    let mut r = r.clone();
                    let w = r["workflow"].take();
                    println!("{}. {} when {}", i + 1, s(&w), r);
                }
            });
        }
        PsaCmd::Ignored => {
            let v = c.get("/v1/psa/ignored").await?;
            c.print(&v, |v| {
                for i in v.as_array().into_iter().flatten() {
                    println!(
                        "{}  {} {} ticket {}: {}",
                        s(&i["at"]),
                        s(&i["provider"]),
                        s(&i["account"]),
                        i["ticket_id"].as_str().unwrap_or("-"),
                        s(&i["reason"])
                    );
                }
            });
        }
        PsaCmd::Intakes => {
            let v = c.get("/v1/psa/intakes").await?;
            c.print(&v, |v| {
                for i in v.as_array().into_iter().flatten() {
                    println!(
                        "{:<28} {:<12} {:<18} {}{}",
                        s(&i["id"]),
                        s(&i["status"]),
                        s(&i["workflow"]),
                        i["run"].as_str().unwrap_or(""),
                        i["problem"]
                            .as_str()
                            .map(|p| format!("  {p}"))
                            .unwrap_or_default()
                    );
                    for m in i["missing"].as_array().into_iter().flatten() {
                        println!(
                            "    needs {} ({}): {}",
                            s(&m["label"]),
                            s(&m["input"]),
                            s(&m["reason"])
                        );
                    }
                }
            });
        }
        PsaCmd::Supply { intake, inputs } => {
            let mut map = Map::new();
            for pair in inputs {
                let (k, v) = pair.split_once('=').ok_or_else(|| {
                    anyhow!(
                        "--input `{pair}`: write NAME=VALUE, e.g. --input start_date=2027-02-01"
                    )
                })?;
                map.insert(k.trim().to_owned(), Value::String(v.to_owned()));
            }
            let v = c
                .post(
                    &format!("/v1/psa/intakes/{intake}/inputs"),
                    json!({"inputs": map}),
                )
                .await?;
            c.print(&v, |v| println!("{}: {}", s(&v["outcome"]), s(&v["text"])));
        }
        PsaCmd::Notes => {
            let v = c.get("/v1/psa/notes").await?;
            c.print(&v, |v| {
                for n in v.as_array().into_iter().flatten() {
                    println!(
                        "{:<8} ticket {:<8} {} (tries {}){}",
                        s(&n["status"]),
                        s(&n["ticket_id"]),
                        s(&n["title"]),
                        n["attempts"],
                        n["last_error"]
                            .as_str()
                            .map(|e| format!("  last error: {e}"))
                            .unwrap_or_default()
                    );
                }
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand, Debug)]
pub(crate) enum GuardCmd {
    /// Protected accounts, the brake's limit, and companies whose brake is engaged.
    Show,
    /// Replace the protected accounts: `--global a@x.com,breakglass --company contoso=admin,svc-backup`.
    Protect {
        /// Accounts protected in every company (UPN or sAMAccountName), comma-separated.
        #[arg(long, default_value = "")]
        global: String,
        /// COMPANY=ACCOUNT,ACCOUNT (repeatable).
        #[arg(long = "company", value_name = "COMPANY=ACCOUNTS")]
        companies: Vec<String>,
    },
    /// Set the blast-radius brake: at most MAX destructive runs per company per WINDOW seconds (0: off).
    Brake {
        /// Destructive runs allowed per window.
        #[arg(long)]
        max: u32,
        /// The window, in seconds.
        #[arg(long, default_value_t = 3600)]
        window: u32,
    },
    /// Release a company's engaged brake.
    Release {
        /// The company.
        company: String,
    },
}

fn list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

pub(crate) async fn guard(api: &ApiArgs, cmd: GuardCmd) -> Result<ExitCode> {
    let c = Client::new(api)?;
    let v = match cmd {
        GuardCmd::Show => c.get("/v1/guard").await?,
        GuardCmd::Protect { global, companies } => {
            let mut per = Map::new();
            for pair in companies {
                let (company, accounts) = pair.split_once('=').ok_or_else(|| {
                    anyhow!("--company `{pair}`: write COMPANY=ACCOUNT,ACCOUNT, e.g. --company contoso=breakglass@contoso.com")
                })?;
                per.insert(company.trim().to_owned(), json!(list(accounts)));
            }
            c.put(
                "/v1/guard/protected",
                json!({"global": list(&global), "companies": per}),
            )
            .await?
        }
        GuardCmd::Brake { max, window } => {
            c.put(
                "/v1/guard/brake",
                json!({"max_runs": max, "window_seconds": window}),
            )
            .await?
        }
        GuardCmd::Release { company } => {
            c.post(&format!("/v1/guard/brakes/{company}/release"), json!({}))
                .await?
        }
    };
    c.print(&v, |v| {
        let global: Vec<&str> = v["protected"]["global"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        println!(
            "protected everywhere: {}",
            if global.is_empty() {
                "(none)".to_owned()
            } else {
                global.join(", ")
            }
        );
        for (company, accounts) in v["protected"]["companies"]
            .as_object()
            .into_iter()
            .flatten()
        {
            println!(
                "protected in {company}: {}",
                accounts
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if v["brake"]["max_runs"] == 0 {
            println!("brake: off");
        } else {
            println!(
                "brake: at most {} destructive runs per company in {} s",
                v["brake"]["max_runs"], v["brake"]["window_seconds"]
            );
        }
        for e in v["engaged"].as_array().into_iter().flatten() {
            println!(
                "ENGAGED for {} since {} (release: steward guard release {})",
                s(&e["company"]),
                s(&e["since"]),
                s(&e["company"])
            );
        }
    });
    Ok(ExitCode::SUCCESS)
}
