//! `strata-broker`: parses flags, loads the configuration, sets up logging,
//! starts the broker and stops it gracefully on SIGTERM or Ctrl-C.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use strata_broker::Config;
use strata_broker::config::LogFormat;

/// Strata message broker. With no flags it serves gRPC on 127.0.0.1:7070 and
/// HTTP probes on 127.0.0.1:7071, keeping data in ./strata-data.
///
/// Configuration precedence: built-in defaults < --config file <
/// STRATA_<SECTION>_<FIELD> environment variables < flags.
#[derive(Debug, Parser)]
#[command(name = "strata-broker", version)]
struct Args {
    /// TOML configuration file (unknown keys are errors).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory for the log segments and the catalog.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Object store for tiered storage: s3://bucket/prefix, gs://..., az://...,
    /// file:///path, memory:// or none (default: file://<data-dir>/cold).
    #[arg(long, value_name = "URL")]
    cold_store: Option<String>,
    /// gRPC listen address.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// HTTP listen address for /healthz and /readyz.
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<SocketAddr>,
    /// Log output format.
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
    /// Log filter, e.g. `info` or `strata_broker=debug`.
    #[arg(long)]
    log_level: Option<String>,
    /// This broker's stable cluster id (0-65535; the StatefulSet ordinal).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    broker_id: Option<i64>,
    /// HOST:PORT other brokers and clients reach this broker's gRPC port at.
    #[arg(long, value_name = "HOST:PORT")]
    advertised_address: Option<String>,
    /// The brokers' advertised gRPC addresses, comma-separated (this broker's
    /// own may be included). Without it the broker runs standalone.
    #[arg(long, value_name = "HOST:PORT,...")]
    peers: Option<String>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

fn load(args: &Args) -> Result<Config, String> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let mut config = Config::load(args.config.as_deref(), &env).map_err(|e| e.to_string())?;
    if let Some(d) = &args.data_dir {
        config.storage.data_dir = d.clone();
    }
    if let Some(u) = &args.cold_store {
        config.tier.cold_store = u.clone();
    }
    if let Some(a) = args.listen {
        config.server.listen = a;
    }
    if let Some(a) = args.http_listen {
        config.server.http_listen = a;
    }
    if let Some(f) = &args.log_format {
        config.log.format = if f == "json" { LogFormat::Json } else { LogFormat::Text };
    }
    if let Some(l) = &args.log_level {
        config.log.level = l.clone();
    }
    if let Some(id) = args.broker_id {
        config.cluster.broker_id = Some(id);
    }
    if let Some(a) = &args.advertised_address {
        config.cluster.advertised_address = a.trim().to_owned();
    }
    if let Some(p) = &args.peers {
        config.cluster.peers = strata_broker::config::split_peers(p);
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

fn init_logging(config: &Config) -> Result<(), String> {
    let mut filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .map_err(|e| format!("invalid log level {:?}: {e}", config.log.level))?;
    // object_store reports each retry at INFO; the broker logs the outcome
    // itself (and a refused start must stay one line), so keep it quieter
    // unless the filter names it.
    if !config.log.level.contains("object_store")
        && let Ok(d) = "object_store=warn".parse()
    {
        filter = filter.add_directive(d);
    }
    // openraft reports every failed RPC to a down peer (each heartbeat);
    // the broker logs leader changes itself.
    if !config.log.level.contains("openraft")
        && let Ok(d) = "openraft=off".parse()
    {
        filter = filter.add_directive(d);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    if let Err(e) = init_logging(&config) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        // OTLP tracing when OTEL_EXPORTER_OTLP_ENDPOINT is set; off otherwise.
        let telemetry = strata_telemetry::TelemetryConfig::from_env(std::env::vars());
        let _telemetry = match strata_telemetry::init(&telemetry, "strata-broker") {
            Ok(g) => g,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let running = match strata_broker::start(config).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        // A stable line for scripts and tests that start the broker on port 0.
        println!("strata-broker listening grpc={} http={}", running.grpc_addr(), running.http_addr());
        terminated().await;
        tracing::info!("shutdown requested; draining");
        running.shutdown().await;
        ExitCode::SUCCESS
    })
}
