//! `cargo xtask <task>`: the project's one front door for checks, so a fresh
//! machine needs nothing but cargo. Tasks:
//!
//! - `ci`    format check, clippy with warnings denied, then every test
//! - `test`  every test of the workspace
//! - `lint`  format check and clippy
//! - `bench` the criterion benchmarks
//! - `fuzz [SECONDS]` run the batch decoder fuzz target (needs cargo-fuzz)

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
        Some("ci") => lint().and_then(|()| test()),
        Some("test") => test(),
        Some("lint") => lint(),
        Some("bench") => cargo(&["bench", "--workspace"]),
        Some("fuzz") => fuzz(args.get(1).map_or("60", String::as_str)),
        _ => Err("usage: cargo xtask ci|test|lint|bench|fuzz [SECONDS]".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
