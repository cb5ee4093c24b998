//! `steward validate`: checks workflow files and lists every problem.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use steward_workers::Registry;

pub(crate) fn run(files: &[PathBuf]) -> Result<ExitCode> {
    let registry = Registry::builtin();
    let checked = steward_engine::planner::validate_paths(files, &registry);
    let bad = checked.iter().filter(|c| c.result.is_err()).count();
    for c in &checked {
        match &c.result {
            Ok(plan) => println!("{}: ok ({} steps)", c.file.display(), plan.steps().len()),
            Err(e) => eprintln!("{e:#}"),
        }
    }
    if bad > 0 {
        eprintln!("{bad} of {} files have problems", checked.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
