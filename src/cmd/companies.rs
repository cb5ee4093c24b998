//! `steward companies …`: the MSP's client companies, through the API.

use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::client::{ApiArgs, Client, s, urlencode};

/// `steward companies …`.
#[derive(Subcommand, Debug)]
pub(crate) enum CompaniesCmd {
    /// List the companies you may act on.
    List,
    /// Show a company.
    Show {
        /// Its id.
        id: String,
    },
    /// Add a company from a JSON file (see schemas/json/company.schema.json).
    Add {
        /// The file.
        file: std::path::PathBuf,
    },
    /// Replace a company's settings from a JSON file.
    Update {
        /// The file.
        file: std::path::PathBuf,
        /// Only if it is still at this version.
        #[arg(long)]
        if_version: Option<u64>,
    },
    /// Delete a company. Refused while it has runs in flight or gates open, unless --force.
    Delete {
        /// Its id.
        id: String,
        /// Delete even with runs in flight or gates open (recorded: who, when, what was in flight).
        #[arg(long)]
        force: bool,
    },
    /// Import companies from a CSV file: all rows are checked first; nothing is written unless
    /// every row is valid. Columns: id, name, tenant_id, identity_provider, mailbox_provider,
    /// ad_runner, entra_connect_server, exchange_server, exchange_runner, rmm_provider, rmm_site,
    /// psa_provider, psa_company_id, upn_domain, usage_location, ou, username_format,
    /// approvers (separated by ;), permission_profile, custom_instructions.
    Import {
        /// The file.
        file: std::path::PathBuf,
    },
}

pub(crate) async fn run(api: &ApiArgs, cmd: CompaniesCmd) -> Result<ExitCode> {
    let c = Client::new(api)?;
    let read_json = |file: &std::path::Path| -> Result<Value> {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("{}: cannot read", file.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", file.display()))
    };
    let show = |v: &Value| {
        let co = &v["company"];
        println!(
            "{:<20} v{:<3} {:<30} {} / {}  approvers: {}",
            s(&co["id"]),
            v["version"],
            s(&co["name"]),
            s(&co["identity_provider"]),
            s(&co["mailbox_provider"]),
            co["approvers"]
                .as_array()
                .map(|a| a.iter().map(s).collect::<Vec<_>>().join(", "))
                .unwrap_or_default()
        );
    };
    match cmd {
        CompaniesCmd::List => {
            let list = c.get("/v1/companies").await?;
            c.print(&list, |l| l.as_array().into_iter().flatten().for_each(show));
        }
        CompaniesCmd::Show { id } => {
            let v = c.get(&format!("/v1/companies/{}", urlencode(&id))).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        CompaniesCmd::Add { file } => {
            let v = c.post("/v1/companies", read_json(&file)?).await?;
            c.print(&v, show);
        }
        CompaniesCmd::Update { file, if_version } => {
            let body = read_json(&file)?;
            let id = body["id"]
                .as_str()
                .ok_or_else(|| anyhow!("{}: the company has no `id`", file.display()))?
                .to_owned();
            let q = if_version
                .map(|v| format!("?if_version={v}"))
                .unwrap_or_default();
            let v = c
                .put(&format!("/v1/companies/{}{q}", urlencode(&id)), body)
                .await?;
            c.print(&v, show);
        }
        CompaniesCmd::Delete { id, force } => {
            let q = if force { "?force=true" } else { "" };
            c.delete(&format!("/v1/companies/{}{q}", urlencode(&id)))
                .await?;
            c.print(&json!({ "deleted": id }), |_| println!("deleted {id}"));
        }
        CompaniesCmd::Import { file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("{}: cannot read", file.display()))?;
            let report = c.post_csv("/v1/companies/import", bytes).await?;
            c.print(&report, |r| {
                let n = |k: &str| r[k].as_array().map_or(0, Vec::len);
                println!(
                    "{} created, {} updated, {} unchanged",
                    n("created"),
                    n("updated"),
                    n("unchanged")
                );
                for c in r["changes"].as_array().into_iter().flatten() {
                    println!("{}:", s(&c["id"]));
                    for f in c["fields"].as_array().into_iter().flatten() {
                        let v = |k: &str| match &f[k] {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        println!("  {}: {} → {}", v("field"), v("old"), v("new"));
                    }
                }
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
