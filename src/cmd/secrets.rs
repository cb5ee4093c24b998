//! `steward secrets`: what is stored sealed under which key, and key rotation. Server-side
//! commands: they read Redis directly, with the servers' keys (see deploy/steward.toml).

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use steward_engine::Config;
use steward_engine::secrets::rotate;

/// `steward secrets …`.
#[derive(Subcommand, Debug)]
pub(crate) enum SecretsCmd {
    /// What is stored sealed under which key, and what is left under older keys.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Seal everything stored under an older key again under the active key
    /// (secrets.active-key), while Steward runs. Every process must already have the active key
    /// in its keyring; remove an old key only once `steward secrets status` shows nothing left
    /// under it.
    Rotate {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn run(config: &Config, cmd: SecretsCmd) -> Result<ExitCode> {
    let what = match cmd {
        SecretsCmd::Status { .. } => "secrets status",
        SecretsCmd::Rotate { .. } => "secrets rotate",
    };
    steward_engine::secrets::require(&config.secrets, what)?;
    let store = super::connect(config).await?;
    match cmd {
        SecretsCmd::Status { json } => {
            let census = rotate::census(&store).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&census)?);
            } else {
                print!("{}", census.describe());
            }
        }
        SecretsCmd::Rotate { json } => {
            let done = rotate::rotate(&store, |line| {
                if !json {
                    println!("{line}");
                }
            })
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&done)?);
            } else {
                println!(
                    "Sealed again under `{}`: {} runs, {} dead letters, {} secret links.",
                    done.census.active, done.runs, done.dead_letters, done.links
                );
                if done.skipped > 0 {
                    println!(
                        "{} could not be opened (sealed under a key this process does not have, or altered) and were left as they are.",
                        done.skipped
                    );
                }
                print!("{}", done.census.describe());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
