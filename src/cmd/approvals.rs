//! `steward approvals`, `approve` and `reject`: the approval inbox and decisions, through the API.

use std::process::ExitCode;

use anyhow::{Result, anyhow};
use serde_json::json;

use crate::client::{ApiArgs, Client, s};

pub(crate) async fn inbox(api: &ApiArgs) -> Result<ExitCode> {
    let c = Client::new(api)?;
    let inbox = c.get("/v1/approvals").await?;
    c.print(&inbox, |i| {
        let list = i["approvals"].as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            println!("nothing waits for your decision");
        }
        for g in list {
            println!(
                "{}  {} for {} (asked by {})",
                s(&g["reference"]),
                s(&g["workflow"]),
                s(&g["company_name"]),
                s(&g["requested_by"])
            );
            if !s(&g["message"]).is_empty() {
                println!("    {}", s(&g["message"]));
            }
            println!(
                "    {} of {} approvals{}",
                g["approvals"].as_array().map_or(0, Vec::len),
                g["quorum"],
                g["expires_at"]
                    .as_str()
                    .and_then(|e| e.parse::<steward_schemas::Timestamp>().ok())
                    .map(|e| format!("; expires at {}", steward_core::words::time(e)))
                    .unwrap_or_default()
            );
            if !s(&g["custom_instructions"]).is_empty() {
                println!("    company instructions: {}", s(&g["custom_instructions"]));
            }
            for u in g["unlocks"].as_array().into_iter().flatten() {
                println!(
                    "    unlocks {:<20} {:<24} {}  {}",
                    s(&u["step"]),
                    s(&u["op"]),
                    s(&u["route"]),
                    u["params"]
                );
            }
        }
    });
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn decide(
    api: &ApiArgs,
    gate: &str,
    approve: bool,
    comment: Option<String>,
) -> Result<ExitCode> {
    let (run, step) = gate
        .split_once('/')
        .filter(|(r, s)| r.starts_with("run_") && !s.is_empty())
        .ok_or_else(|| anyhow!("`{gate}`: name the gate as RUN/STEP, e.g. run_01JD…/manager_approval (see steward approvals)"))?;
    let c = Client::new(api)?;
    let body = json!({"decision": if approve { "approve" } else { "reject" }, "comment": comment});
    let res = c.post(&format!("/v1/approvals/{run}/{step}"), body).await?;
    c.print(&res, |r| {
        let g = &r["gate"];
        let approvals = g["approvals"].as_array().map_or(0, Vec::len);
        let gate_now = match (approve, s(&g["state"])) {
            (false, _) => "rejected".to_owned(),
            (true, "awaiting_approval") => format!(
                "your approval is recorded ({approvals} of {}); the gate waits for more",
                g["quorum"]
            ),
            (true, "succeeded") => "approved; the gate is passed".to_owned(),
            (true, other) => format!("approved; the gate is {}", other.replace('_', " ")),
        };
        println!(
            "{gate}: {gate_now}; the run is {}",
            s(&r["run"]["status_text"])
        );
    });
    Ok(ExitCode::SUCCESS)
}
