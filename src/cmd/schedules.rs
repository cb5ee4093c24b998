//! `steward schedules …`: durable cron schedules (admins), through the API.

use std::process::ExitCode;

use anyhow::{Result, anyhow, bail};
use clap::Subcommand;
use serde_json::{Map, Value, json};

use crate::client::{ApiArgs, Client, s, urlencode};

/// `steward schedules …`.
#[derive(Subcommand, Debug)]
pub(crate) enum SchedulesCmd {
    /// Every schedule, with its next tick and the last one fired.
    List,
    /// A schedule.
    Show {
        /// Its id.
        id: String,
    },
    /// Add a schedule: the token refresh, or a workflow started for each --company.
    Add {
        /// Its id (lowercase letters, digits, `-`).
        id: String,
        /// Five fields (`minute hour day month weekday`, e.g. `0 3 * * SUN`), or six with
        /// seconds first.
        #[arg(long)]
        cron: String,
        /// The IANA time zone the expression is read in.
        #[arg(long, default_value = "UTC")]
        time_zone: String,
        /// Refresh every connected tenant whose refresh is due.
        #[arg(long, conflicts_with = "workflow")]
        token_refresh: bool,
        /// The workflow to start.
        #[arg(long, requires = "company")]
        workflow: Option<String>,
        /// A company to start it for (repeat for several).
        #[arg(long)]
        company: Vec<String>,
        /// An input, `name=value` (a value that parses as JSON is taken as JSON).
        #[arg(long = "input")]
        inputs: Vec<String>,
    },
    /// Remove a schedule.
    Remove {
        /// Its id.
        id: String,
    },
    /// Fire a schedule now (its cadence is unchanged).
    RunNow {
        /// Its id.
        id: String,
    },
}

fn line(v: &Value) {
    let target = match v["target"]["kind"].as_str() {
        Some("workflow") => format!(
            "workflow {} for {} companies",
            s(&v["target"]["workflow"]),
            v["target"]["runs"].as_array().map_or(0, Vec::len)
        ),
        Some(k) => k.to_owned(),
        None => String::new(),
    };
    println!(
        "{:<20} {:<16} {:<16} next {:<28} last {:<28} {target}",
        s(&v["id"]),
        s(&v["cron"]),
        s(&v["time_zone"]),
        v["next_tick"].as_str().unwrap_or("-"),
        v["last_fired"].as_str().unwrap_or("never"),
    );
}

pub(crate) async fn run(api: &ApiArgs, cmd: SchedulesCmd) -> Result<ExitCode> {
    let c = Client::new(api)?;
    match cmd {
        SchedulesCmd::List => {
            let list = c.get("/v1/schedules").await?;
            c.print(&list, |l| l.as_array().into_iter().flatten().for_each(line));
        }
        SchedulesCmd::Show { id } => {
            let v = c.get(&format!("/v1/schedules/{}", urlencode(&id))).await?;
            c.print(&v, line);
        }
        SchedulesCmd::Add {
            id,
            cron,
            time_zone,
            token_refresh,
            workflow,
            company,
            inputs,
        } => {
            let target = match (token_refresh, workflow) {
                (true, None) => json!({"kind": "token_refresh"}),
                (false, Some(w)) => {
                    let mut map = Map::new();
                    for i in &inputs {
                        let (k, v) = i
                            .split_once('=')
                            .ok_or_else(|| anyhow!("--input `{i}`: write name=value"))?;
                        let value =
                            serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()));
                        map.insert(k.to_owned(), value);
                    }
                    let runs: Vec<Value> = company
                        .iter()
                        .map(|c| json!({"company": c, "inputs": map}))
                        .collect();
                    json!({"kind": "workflow", "workflow": w, "runs": runs})
                }
                _ => bail!(
                    "say what the schedule does: --token-refresh, or --workflow NAME --company ID"
                ),
            };
            let v = c
                .post(
                    "/v1/schedules",
                    json!({"id": id, "cron": cron, "time_zone": time_zone, "target": target}),
                )
                .await?;
            c.print(&v, line);
        }
        SchedulesCmd::Remove { id } => {
            c.delete(&format!("/v1/schedules/{}", urlencode(&id)))
                .await?;
            c.print(&json!({ "removed": id }), |_| println!("removed {id}"));
        }
        SchedulesCmd::RunNow { id } => {
            let v = c
                .post(
                    &format!("/v1/schedules/{}/run", urlencode(&id)),
                    json!(null),
                )
                .await?;
            c.print(&v, |v| {
                println!("fired {} ({})", s(&v["schedule"]), s(&v["firing"]))
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
