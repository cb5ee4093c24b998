//! `steward schema`: the JSON Schemas generated from the Rust types, and the OpenAPI document.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

pub(crate) fn run(dir: &Path) -> Result<ExitCode> {
    for (name, text) in steward_schemas::json_schemas() {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    let openapi = dir.parent().unwrap_or(dir).join("openapi.json");
    std::fs::write(&openapi, steward_engine::api::openapi_json())
        .with_context(|| format!("cannot write {}", openapi.display()))?;
    println!("wrote {}", openapi.display());
    Ok(ExitCode::SUCCESS)
}
