//! `strata`, the command-line tool: parses flags, runs the command on a Tokio
//! runtime, and reports failure as one `error: ...` line and a non-zero exit.

mod bench;
mod cli;
mod parse;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(e) => return cli::report_parse_error(e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        // OTLP tracing when OTEL_EXPORTER_OTLP_ENDPOINT is set; the guard
        // flushes spans before the process exits.
        let config = strata_telemetry::TelemetryConfig::from_env(std::env::vars());
        let _telemetry = strata_telemetry::init(&config, "strata-cli").map_err(anyhow::Error::msg)?;
        cli::run(args).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", cli::one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}
