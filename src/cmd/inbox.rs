//! `steward inbox …`: things to do that no run waits on (a tenant that needs consent again),
//! through the API.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use serde_json::json;

use crate::client::{ApiArgs, Client, s, urlencode};

/// `steward inbox …`.
#[derive(Subcommand, Debug)]
pub(crate) enum InboxCmd {
    /// The items you may see, newest first.
    List,
    /// Dismiss an item (admins).
    Dismiss {
        /// The item's id.
        id: String,
    },
}

pub(crate) async fn run(api: &ApiArgs, cmd: Option<InboxCmd>) -> Result<ExitCode> {
    let c = Client::new(api)?;
    match cmd.unwrap_or(InboxCmd::List) {
        InboxCmd::List => {
            let list = c.get("/v1/inbox").await?;
            c.print(&list, |l| {
                let items = l.as_array().cloned().unwrap_or_default();
                if items.is_empty() {
                    println!("nothing to do");
                }
                for i in items {
                    println!("{}  {}  {}", s(&i["at"]), s(&i["id"]), s(&i["message"]));
                    println!("    fix: {}", s(&i["fix"]));
                }
            });
        }
        InboxCmd::Dismiss { id } => {
            c.delete(&format!("/v1/inbox/{}", urlencode(&id))).await?;
            c.print(&json!({ "dismissed": id }), |_| println!("dismissed {id}"));
        }
    }
    Ok(ExitCode::SUCCESS)
}
