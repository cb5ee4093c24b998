//! `steward technicians …`: technicians and their tokens. With STEWARD_TOKEN, through the API;
//! without, on Redis directly (on the server): that is how the first admin and their token are
//! made.

use std::process::ExitCode;

use anyhow::{Result, anyhow};
use clap::Subcommand;
use serde_json::Value;
use steward_engine::config::Config;

use super::{connect, output};
use crate::client;

#[derive(Subcommand, Debug)]
pub(crate) enum TechniciansCmd {
    /// List technicians.
    List,
    /// Add a technician.
    Add {
        /// Their email.
        #[arg(long)]
        email: String,
        /// Their name.
        #[arg(long)]
        name: String,
        /// Make them an admin.
        #[arg(long)]
        admin: bool,
        /// `all`, or company ids separated by commas.
        #[arg(long, default_value = "all")]
        companies: String,
        /// Also make a token for them, named this (printed once).
        #[arg(long)]
        token_name: Option<String>,
    },
    /// Make a token for a technician (printed once).
    Token {
        /// Their email.
        #[arg(long)]
        email: String,
        /// What the token is for.
        #[arg(long, default_value = "cli")]
        name: String,
    },
    /// Revoke a token.
    Revoke {
        /// The token's id (`tok_…`).
        id: steward_schemas::TokenId,
    },
    /// Make a one-time link that signs a technician in to the dashboard (valid 15 minutes;
    /// give it to them only).
    LoginLink {
        /// Their email.
        email: String,
    },
}

/// With a token, through the API; without, on the server's Redis.
pub(crate) async fn run(
    api: &client::ApiArgs,
    config: impl FnOnce() -> Result<Config>,
    cmd: TechniciansCmd,
) -> Result<ExitCode> {
    if client::token().is_some() {
        through_api(api, cmd).await
    } else {
        local(&config()?, api.json, cmd).await
    }
}

fn scope(companies: &str) -> Result<steward_schemas::CompanyScope> {
    if companies.trim() == "all" {
        return Ok(steward_schemas::CompanyScope::ALL);
    }
    let ids = companies
        .split(',')
        .map(|c| c.trim().parse().map_err(|e| anyhow!("--companies: {e}")))
        .collect::<Result<Vec<_>>>()?;
    Ok(steward_schemas::CompanyScope::Only(ids))
}

/// One technician, one line.
fn technician_line(t: &Value) {
    println!(
        "{}  {:<30} {:<10} {}{}",
        t["id"].as_str().unwrap_or(""),
        t["email"].as_str().unwrap_or(""),
        t["role"].as_str().unwrap_or(""),
        match &t["companies"] {
            Value::Array(list) => list
                .iter()
                .map(|c| c.as_str().unwrap_or_default())
                .collect::<Vec<_>>()
                .join(", "),
            _ => "all companies".to_owned(),
        },
        if t["disabled"].as_bool() == Some(true) {
            "  (disabled)"
        } else {
            ""
        }
    );
}

/// A new token (`{"info": …, "token": …}`), shown once.
fn token_lines(t: &Value, whose: &str) {
    println!(
        "token {}{whose} (shown once, keep it safe):\n{}",
        t["info"]["id"].as_str().unwrap_or(""),
        t["token"].as_str().unwrap_or("")
    );
}

/// Technicians on Redis directly: for the server, and for the first admin. With `json`, prints
/// what the API would answer.
async fn local(config: &Config, json: bool, cmd: TechniciansCmd) -> Result<ExitCode> {
    let store = connect(config).await?;
    let auth = steward_engine::auth::Auth::for_store(&store);
    match cmd {
        TechniciansCmd::List => {
            let list = serde_json::to_value(auth.technicians().await?)?;
            output(json, &list, || {
                list.as_array()
                    .into_iter()
                    .flatten()
                    .for_each(technician_line);
            })?;
        }
        TechniciansCmd::Add {
            email,
            name,
            admin,
            companies,
            token_name,
        } => {
            let role = if admin {
                steward_schemas::Role::Admin
            } else {
                steward_schemas::Role::Technician
            };
            let tech = auth
                .add_technician(&email, &name, role, scope(&companies)?)
                .await?;
            let token = match token_name {
                Some(n) => {
                    let (info, token) = auth.create_token(tech.id, &n).await?;
                    serde_json::json!({"info": info, "token": token})
                }
                None => Value::Null,
            };
            let v = serde_json::json!({"technician": tech, "token": token});
            output(json, &v, || {
                println!(
                    "added {} ({}, {})",
                    tech.email,
                    tech.id,
                    if admin { "admin" } else { "technician" }
                );
                if !token.is_null() {
                    token_lines(&token, "");
                }
            })?;
        }
        TechniciansCmd::Token { email, name } => {
            let tech = auth
                .technician_by_email(&email)
                .await?
                .ok_or_else(|| anyhow!("no technician with email `{email}`"))?;
            let (info, token) = auth.create_token(tech.id, &name).await?;
            let v = serde_json::json!({"info": info, "token": token});
            output(json, &v, || {
                token_lines(&v, &format!(" for {}", tech.email))
            })?;
        }
        TechniciansCmd::Revoke { id } => {
            let info = auth.revoke_token(id).await?;
            let v = serde_json::json!({"revoked": info.id});
            output(json, &v, || println!("revoked {}", info.id))?;
        }
        TechniciansCmd::LoginLink { email } => {
            let tech = auth
                .technician_by_email(&email)
                .await?
                .filter(|t| !t.disabled)
                .ok_or_else(|| anyhow!("no enabled technician with email `{email}`"))?;
            let (code, expires_at) = steward_engine::api::dashboard::Sessions::for_store(&store)
                .login_code(tech.id)
                .await?;
            let base = config
                .http
                .public_url
                .clone()
                .unwrap_or_else(|| format!("http://{}", config.http.listen));
            let v = serde_json::json!({
                "email": tech.email,
                "url": format!("{}/login/{code}", base.trim_end_matches('/')),
                "expires_at": expires_at,
            });
            output(json, &v, || login_link_lines(&v))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A login link (`{"email", "url", "expires_at"}`), shown once.
fn login_link_lines(v: &Value) {
    println!(
        "login link for {} (one use, until {}; give it to them only):\n{}",
        v["email"].as_str().unwrap_or(""),
        v["expires_at"].as_str().unwrap_or(""),
        v["url"].as_str().unwrap_or("")
    );
}

/// Technicians through the API.
async fn through_api(api: &client::ApiArgs, cmd: TechniciansCmd) -> Result<ExitCode> {
    let c = client::Client::new(api)?;
    let add_token = async |id: &str, name: &str| -> Result<Value> {
        c.post(
            &format!("/v1/technicians/{}/tokens", client::urlencode(id)),
            serde_json::json!({ "name": name }),
        )
        .await
    };
    match cmd {
        TechniciansCmd::List => {
            let list = c.get("/v1/technicians").await?;
            c.print(&list, |l| {
                l.as_array().into_iter().flatten().for_each(technician_line);
            });
        }
        TechniciansCmd::Add {
            email,
            name,
            admin,
            companies,
            token_name,
        } => {
            let body = serde_json::json!({"email": email, "name": name, "role": if admin { "admin" } else { "technician" }, "companies": scope(&companies)?});
            let tech = c.post("/v1/technicians", body).await?;
            let token = match token_name {
                Some(n) => add_token(tech["id"].as_str().unwrap_or(""), &n).await?,
                None => Value::Null,
            };
            let v = serde_json::json!({"technician": tech, "token": token});
            c.print(&v, |v| {
                println!(
                    "added {} ({}, {})",
                    v["technician"]["email"].as_str().unwrap_or(""),
                    v["technician"]["id"].as_str().unwrap_or(""),
                    v["technician"]["role"].as_str().unwrap_or("")
                );
                if !v["token"].is_null() {
                    token_lines(&v["token"], "");
                }
            });
        }
        TechniciansCmd::Token { email, name } => {
            let list = c.get("/v1/technicians").await?;
            let id = list
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| t["email"].as_str() == Some(email.trim().to_lowercase().as_str()))
                .and_then(|t| t["id"].as_str().map(str::to_owned))
                .ok_or_else(|| anyhow!("no technician with email `{email}`"))?;
            let t = add_token(&id, &name).await?;
            c.print(&t, |t| token_lines(t, &format!(" for {}", email.trim())));
        }
        TechniciansCmd::Revoke { id } => {
            c.delete(&format!("/v1/tokens/{id}")).await?;
            c.print(&serde_json::json!({ "revoked": id }), |_| {
                println!("revoked {id}");
            });
        }
        TechniciansCmd::LoginLink { email } => {
            let list = c.get("/v1/technicians").await?;
            let id = list
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| t["email"].as_str() == Some(email.trim().to_lowercase().as_str()))
                .and_then(|t| t["id"].as_str().map(str::to_owned))
                .ok_or_else(|| anyhow!("no technician with email `{email}`"))?;
            let v = c
                .post(
                    &format!("/v1/technicians/{}/login-link", client::urlencode(&id)),
                    serde_json::json!({}),
                )
                .await?;
            c.print(&v, login_link_lines);
        }
    }
    Ok(ExitCode::SUCCESS)
}
