//! `cargo xtask <task>`: the project's one front door for checks, so a fresh
//! machine needs nothing but cargo. Tasks:
//!
//! - `ci`    format check, clippy with warnings denied, every test, then
//!   the generated-CRD check and the Helm chart checks
//! - `test`  every test of the workspace
//! - `chart` lint, render and validate `charts/strata-operator` (Python:
//!   helm-python-sdk and kubernetes-validate; `skipped: ...` without them
//!   unless `CI` is set)
//! - `crds`  regenerate `crds/` and the chart's copy from the operator's types
//! - `lint`  format check and clippy
//! - `bench` the criterion benchmarks
//! - `fuzz [SECONDS]` run the batch decoder fuzz target (needs cargo-fuzz)
//! - `cycles` fail on any module-level import cycle in a crate (see `cycles.rs`)

mod cycles;

use std::process::{Command, ExitCode};

fn cargo(args: &[&str]) -> Result<(), String> {
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("`cargo {}` failed ({status})", args.join(" "))) }
}

fn lint() -> Result<(), String> {
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&["clippy", "--workspace", "--all-targets", "--locked", "--", "-D", "warnings"])
}

fn test() -> Result<(), String> {
    cargo(&["test", "--workspace", "--locked"])
}

/// The chart checks: `python3 charts/strata-operator/tests/check_chart.py`.
/// The script itself decides between `skipped:` and failing when its
/// packages are missing (it fails when `CI` is set).
fn chart() -> Result<(), String> {
    let script = "charts/strata-operator/tests/check_chart.py";
    eprintln!("xtask: python3 {script}");
    match Command::new("python3").arg(script).status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("chart checks failed ({s})")),
        Err(e) if std::env::var_os("CI").is_some() => Err(format!("cannot run python3: {e}")),
        Err(e) => {
            println!("skipped: chart checks need python3 ({e})");
            Ok(())
        }
    }
}

fn cycles() -> Result<(), String> {
    eprintln!("xtask: module import cycles");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().ok_or("xtask has no parent folder")?;
    cycles::check(root)
}

fn crds() -> Result<(), String> {
    cargo(&["run", "-q", "-p", "strata-operator", "--", "crds", "--out", "crds"])?;
    cargo(&["run", "-q", "-p", "strata-operator", "--", "crds", "--out", "charts/strata-operator/crds"])
}

fn fuzz(seconds: &str) -> Result<(), String> {
    let have = Command::new("cargo").args(["fuzz", "--version"]).output().is_ok_and(|o| o.status.success());
    if !have {
        println!("skipped: cargo-fuzz is not installed (cargo install cargo-fuzz)");
        return Ok(());
    }
    let status = Command::new("cargo")
        .current_dir("fuzz")
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", "run", "batch_decode", "--", &format!("-max_total_time={seconds}")])
        .status()
        .map_err(|e| format!("cannot run cargo fuzz: {e}"))?;
    if status.success() { Ok(()) } else { Err("fuzzing found a failure".into()) }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        // The CRD files are compared with the generator by a test of
        // strata-operator (`crds_dirs_match_the_generator`).
        Some("ci") => lint().and_then(|()| test()).and_then(|()| chart()),
        Some("cycles") => cycles(),
        Some("chart") => chart(),
        Some("crds") => crds(),
        Some("test") => test(),
        Some("lint") => lint(),
        Some("bench") => cargo(&["bench", "--workspace"]),
        Some("fuzz") => fuzz(args.get(1).map_or("60", String::as_str)),
        _ => Err("usage: cargo xtask ci|test|lint|cycles|chart|crds|bench|fuzz [SECONDS]".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
