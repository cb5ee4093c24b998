//! `steward validate`: checks workflow files and lists every problem.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use steward_core::Plan;
use steward_workers::Registry;

pub(crate) fn run(files: &[PathBuf]) -> Result<ExitCode> {
    let registry = Registry::builtin();
    let mut bad = 0;
    for file in files {
        match load_plan(file, &registry) {
            Ok(plan) => println!("{}: ok ({} steps)", file.display(), plan.steps().len()),
            Err(e) => {
                bad += 1;
                eprintln!("{e:#}");
            }
        }
    }
    if bad > 0 {
        eprintln!("{bad} of {} files have problems", files.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn load_plan(file: &Path, registry: &Registry) -> Result<Plan> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("{}: cannot read", file.display()))?;
    Ok(Plan::load(
        &file.display().to_string(),
        &text,
        Some(registry),
    )?)
}
