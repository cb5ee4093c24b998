//! `steward tenants …`: Microsoft 365 tenant connections, through the API.

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::client::{ApiArgs, Client, s, urlencode};

/// The environment variable the secret of a company's own app registration is read from
/// (`connect --client-id`); never a flag.
const APP_SECRET_VAR: &str = "STEWARD_TENANT_CLIENT_SECRET";

/// `steward tenants …`.
#[derive(Subcommand, Debug)]
pub(crate) enum TenantsCmd {
    /// The tenant connections of the companies you may act on, with their status.
    List,
    /// A company's tenant connection: status, last refresh, when the 90-day window closes.
    Show {
        /// The company.
        company: String,
    },
    /// Start connecting a company's tenant: prints the consent URL an administrator of the
    /// tenant opens (once, before it expires). Microsoft sends them back to Steward, which
    /// stores the connection.
    Connect {
        /// The company.
        company: String,
        /// The tenant's id or a verified domain (default: the company's tenant_id).
        #[arg(long)]
        tenant: Option<String>,
        /// The client id of the company's own app registration (its secret from
        /// STEWARD_TENANT_CLIENT_SECRET); default: Steward's app.
        #[arg(long)]
        client_id: Option<String>,
    },
    /// Refresh a company's delegated token now, and show the status after it.
    Refresh {
        /// The company.
        company: String,
    },
    /// Use a certificate instead of the client secret for a company's app-only calls (admins):
    /// the certificate uploaded to the app registration and its private key, both PEM files.
    /// The key is stored sealed and never shown again. `--remove` goes back to the secret.
    Certificate {
        /// The company.
        company: String,
        /// The certificate (PEM).
        #[arg(long, required_unless_present = "remove")]
        cert: Option<std::path::PathBuf>,
        /// Its private key (unencrypted PEM, PKCS#8 or PKCS#1).
        #[arg(long, required_unless_present = "remove")]
        key: Option<std::path::PathBuf>,
        /// RS256 (default) or PS256.
        #[arg(long)]
        algorithm: Option<String>,
        /// Remove the certificate: back to the client secret.
        #[arg(long, conflicts_with_all = ["cert", "key", "algorithm"])]
        remove: bool,
    },
    /// Forget a company's tenant connection (admins).
    Disconnect {
        /// The company.
        company: String,
    },
}

fn line(v: &Value) {
    println!(
        "{:<20} {:<38} {:<17} last refresh {:<28} window closes {}",
        s(&v["company"]),
        s(&v["tenant"]),
        s(&v["status"]),
        v["last_refresh"].as_str().unwrap_or("never"),
        v["window_closes"].as_str().unwrap_or("-"),
    );
}

fn detail(v: &Value) {
    println!("company        {}", s(&v["company"]));
    println!("tenant         {}", s(&v["tenant"]));
    println!("app            {}", s(&v["client_id"]));
    println!("status         {}", s(&v["status_text"]));
    if let Some(e) = v["last_error"].as_object() {
        println!(
            "last error     {} at {}: {}",
            e.get("code").and_then(Value::as_str).unwrap_or(""),
            e.get("at").and_then(Value::as_str).unwrap_or(""),
            e.get("message").and_then(Value::as_str).unwrap_or("")
        );
    }
    for (label, key) in [
        ("last refresh", "last_refresh"),
        ("window closes", "window_closes"),
        ("next refresh", "next_refresh"),
        ("next try", "next_try"),
        ("connected", "connected_at"),
    ] {
        if let Some(t) = v[key].as_str() {
            println!("{label:<14} {t}");
        }
    }
    println!("connected by   {}", s(&v["connected_by"]));
    if let Some(who) = v["consented_by"].as_str() {
        println!("consented by   {who}");
    }
    if let Some(c) = v["certificate"].as_object() {
        let f = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("");
        println!(
            "certificate    {} ({}), expires {}",
            f("thumbprint"),
            f("algorithm"),
            f("not_after")
        );
    }
}

pub(crate) async fn run(api: &ApiArgs, cmd: TenantsCmd) -> Result<ExitCode> {
    let c = Client::new(api)?;
    match cmd {
        TenantsCmd::List => {
            let list = c.get("/v1/tenants").await?;
            c.print(&list, |l| l.as_array().into_iter().flatten().for_each(line));
        }
        TenantsCmd::Show { company } => {
            let v = c
                .get(&format!("/v1/tenants/{}", urlencode(&company)))
                .await?;
            c.print(&v, detail);
        }
        TenantsCmd::Connect {
            company,
            tenant,
            client_id,
        } => {
            let mut body = json!({});
            if let Some(t) = tenant {
                body["tenant"] = json!(t);
            }
            if let Some(id) = client_id {
                let Some(secret) = std::env::var(APP_SECRET_VAR).ok().filter(|s| !s.is_empty())
                else {
                    bail!(
                        "--client-id needs the app's client secret in {APP_SECRET_VAR} (never a flag: flags show in `ps` and shell history)"
                    );
                };
                body["client_id"] = json!(id);
                body["client_secret"] = json!(secret);
            }
            let v = c
                .post(
                    &format!("/v1/tenants/{}/connect", urlencode(&company)),
                    body,
                )
                .await?;
            c.print(&v, |v| {
                println!(
                    "Have an administrator of tenant {} open this URL and consent (it works once, until {}):\n\n{}\n\nThen check: steward tenants show {}",
                    s(&v["tenant"]),
                    s(&v["expires_at"]),
                    s(&v["consent_url"]),
                    s(&v["company"])
                );
            });
        }
        TenantsCmd::Refresh { company } => {
            let v = c
                .post(
                    &format!("/v1/tenants/{}/refresh", urlencode(&company)),
                    json!(null),
                )
                .await?;
            c.print(&v, detail);
            if v["status"] != "healthy" {
                return Ok(ExitCode::from(super::exit::ERROR));
            }
        }
        TenantsCmd::Certificate {
            company,
            cert,
            key,
            algorithm,
            remove,
        } => {
            let path = format!("/v1/tenants/{}/certificate", urlencode(&company));
            if remove {
                c.delete(&path).await?;
                c.print(&json!({ "certificate_removed": company }), |_| {
                    println!("{company}'s app-only calls use the client secret again");
                });
                return Ok(ExitCode::SUCCESS);
            }
            let read = |p: Option<std::path::PathBuf>, what: &str| -> Result<String> {
                let Some(p) = p else {
                    bail!("--{what} FILE is required (or --remove)");
                };
                std::fs::read_to_string(&p)
                    .map_err(|e| anyhow::anyhow!("cannot read --{what} {}: {e}", p.display()))
            };
            let mut body = json!({
                "certificate": read(cert, "cert")?,
                "private_key": read(key, "key")?,
            });
            if let Some(a) = algorithm {
                body["algorithm"] = json!(a);
            }
            let v = c.put(&path, body).await?;
            c.print(&v, detail);
        }
        TenantsCmd::Disconnect { company } => {
            c.delete(&format!("/v1/tenants/{}", urlencode(&company)))
                .await?;
            c.print(&json!({ "disconnected": company }), |_| {
                println!("disconnected {company}");
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
