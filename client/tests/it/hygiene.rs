//! Crate hygiene: the library without default features does not compile the
//! CLI's dependencies or the OTLP exporter (issue 17). Reads the dependency
//! graph with `cargo tree --offline`, so it needs no network.

use std::process::Command;

/// Crates only the `cli` and `otlp` features may bring in.
const CLI_ONLY: [&str; 5] = ["clap", "humantime", "bytesize", "hdrhistogram", "opentelemetry-otlp"];

/// The names of the packages `strata-client` depends on (normal edges only,
/// dev-dependencies excluded) with the given feature flags.
fn normal_dependencies(feature_args: &[&str]) -> Vec<String> {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "--manifest-path", manifest, "-p", "strata-client", "-e", "normal"])
        .args(["--prefix", "none", "--format", "{p}"])
        .args(feature_args)
        .output()
        .expect("cargo runs");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn the_library_without_default_features_has_no_cli_or_otlp_dependencies() {
    let lean = normal_dependencies(&["--no-default-features"]);
    assert!(lean.iter().any(|p| p == "tonic"), "the graph was read: {lean:?}");
    let leaked: Vec<&str> = CLI_ONLY.into_iter().filter(|c| lean.iter().any(|p| p == c)).collect();
    assert!(leaked.is_empty(), "the library pulls in {leaked:?} without the `cli`/`otlp` features");

    // The same query sees them once the `cli` feature is on, so the check
    // above can fail.
    let full = normal_dependencies(&[]);
    for c in CLI_ONLY {
        assert!(full.iter().any(|p| p == c), "{c} missing from the default (cli) graph: the check is blind");
    }
}
