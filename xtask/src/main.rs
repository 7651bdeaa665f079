//! `cargo xtask <task>`: the project's one front door for checks, so a fresh
//! machine needs nothing but cargo. Tasks:
//!
//! - `ci`    format check, clippy with warnings denied, no import cycles,
//!   every test, then the generated-CRD check and the Helm chart checks;
//!   then the images
//!   (built from a local base and checked) and the end-to-end suite
//! - `test`  every test of the workspace
//! - `chart` lint, render and validate `charts/strata-operator` (Python:
//!   helm-python-sdk and kubernetes-validate; `skipped: ...` without them
//!   unless `CI` is set)
//! - `crds`  regenerate `crds/` and the chart's copy from the operator's types
//! - `image [--base IMAGE] [--local-base] [--check]` build the release
//!   binaries and the container images with buildah (or print the Docker
//!   commands without it); `--local-base` assembles the base image from this
//!   machine's libraries, `--check` runs the unpacked images as their user
//! - `e2e`   the end-to-end suite on a real control plane (`e2e/`), with the
//!   release binaries
//! - `lint`  format check and clippy
//! - `bench` the criterion benchmarks
//! - `fuzz [SECONDS]` run each fuzz target for SECONDS (needs cargo-fuzz):
//!   batch decoding, gRPC request decoding, queue snapshot/journal codecs
//! - `cycles` fail on any module-level import cycle in a crate (see `cycles.rs`)

mod cycles;

mod image;

use std::process::{Command, ExitCode};

/// Whether `name` is an executable on PATH.
pub(crate) fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

pub(crate) fn cargo(args: &[&str]) -> Result<(), String> {
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

/// Every test but the end-to-end suite, which `e2e` runs with release binaries.
fn test() -> Result<(), String> {
    cargo(&["test", "--workspace", "--locked", "--exclude", "strata-e2e"])
}

/// The end-to-end suite (`e2e/tests/kubernetes.rs`) with the release
/// binaries; it prints `skipped: …` when the control plane is missing,
/// unless `CI` is set.
fn e2e() -> Result<(), String> {
    let bins = image::release_binaries()?;
    let bins = bins.canonicalize().map_err(|e| format!("{}: {e}", bins.display()))?;
    eprintln!("xtask: STRATA_E2E_BIN_DIR={}", bins.display());
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["test", "--locked", "-p", "strata-e2e", "--", "--nocapture"])
        .env("STRATA_E2E_BIN_DIR", &bins)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("the end-to-end suite failed ({status})")) }
}

/// `ci`: the cheap checks first (format, clippy, import cycles), then the
/// tests, the chart, the images and the end-to-end suite.
fn ci() -> Result<(), String> {
    lint()?;
    cycles()?;
    test()?;
    chart()?;
    image::run(&image::Options { base: None, local_base: true, check: true })?;
    e2e()
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
    // Every target, each for SECONDS.
    for target in ["batch_decode", "grpc_requests", "queue_codecs"] {
        let status = Command::new("cargo")
            .current_dir("fuzz")
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", target, "--", &format!("-max_total_time={seconds}")])
            .status()
            .map_err(|e| format!("cannot run cargo fuzz: {e}"))?;
        if !status.success() {
            return Err(format!("fuzzing {target} found a failure"));
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Paths (target/, charts/, the Containerfiles) are relative to the workspace.
    if let Err(e) = std::env::set_current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/..")) {
        eprintln!("error: cannot enter the workspace: {e}");
        return ExitCode::FAILURE;
    }
    let result = match args.first().map(String::as_str) {
        // The CRD files are compared with the generator by a test of
        // strata-operator (`crds_dirs_match_the_generator`).
        Some("ci") => ci(),
        Some("cycles") => cycles(),
        Some("image") => image::Options::parse(&args[1..]).and_then(|o| image::run(&o)),
        Some("e2e") => e2e(),
        Some("chart") => chart(),
        Some("crds") => crds(),
        Some("test") => test(),
        Some("lint") => lint(),
        Some("bench") => cargo(&["bench", "--workspace"]),
        Some("fuzz") => fuzz(args.get(1).map_or("60", String::as_str)),
        _ => Err(
            "usage: cargo xtask ci|test|lint|cycles|chart|crds|image [--base IMAGE] [--local-base] [--check]|e2e|bench|fuzz [SECONDS]"
                .into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
