//! The `strata-operator` binary: `run` the controllers, or print/write the
//! CRDs with `crds`. Only flags, telemetry and listeners live here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use strata_operator::context::Settings;
use strata_operator::leader::LeaseConfig;

#[derive(Debug, Parser)]
#[command(name = "strata-operator", version, about = "Kubernetes operator for Strata")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controllers.
    Run {
        /// Address of /metrics and /healthz.
        #[arg(long, env = "STRATA_OPERATOR_HTTP_LISTEN", default_value = "0.0.0.0:8080")]
        http_listen: SocketAddr,
        /// Elect a leader through a Lease (needed with more than one replica).
        #[arg(long, env = "STRATA_OPERATOR_LEADER_ELECTION")]
        leader_election: bool,
        #[arg(long, env = "STRATA_OPERATOR_LEASE_NAME", default_value = "strata-operator")]
        lease_name: String,
        /// Namespace of the Lease (the operator's own namespace).
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        lease_namespace: String,
        /// This replica's identity in the Lease; default: the hostname (the
        /// pod name), `_`, and a random id (client-go's convention).
        #[arg(long, env = "STRATA_OPERATOR_LEASE_IDENTITY")]
        identity: Option<String>,
        /// How often healthy resources are reconciled again to catch drift.
        #[arg(long, env = "STRATA_OPERATOR_RESYNC", default_value = "5m", value_parser = humantime::parse_duration)]
        resync: Duration,
        /// How often ready resources' counters (messages, lag, depth) are refreshed.
        #[arg(long, env = "STRATA_OPERATOR_STATUS_REFRESH", default_value = "30s", value_parser = humantime::parse_duration)]
        status_refresh: Duration,
        /// Reach every BrokerCluster at this URL instead of its Service (running outside the cluster).
        #[arg(long, env = "STRATA_OPERATOR_BROKER_URL")]
        broker_url: Option<String>,
        /// Log filter, e.g. `info` or `strata_operator=debug`.
        #[arg(long, env = "STRATA_OPERATOR_LOG_LEVEL", default_value = "info")]
        log_level: String,
        /// Log as JSON lines.
        #[arg(long, env = "STRATA_OPERATOR_LOG_JSON")]
        log_json: bool,
    },
    /// Print the CRDs as YAML, or write one file per CRD into --out.
    Crds {
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

/// The pod name in Kubernetes (`POD_NAME` from the downward API, else the
/// kernel's hostname, which Kubernetes sets to the pod name).
fn hostname() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "strata-operator".to_owned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Crds { out: None } => print!("{}", strata_operator::crdgen::all_yaml()),
        Command::Crds { out: Some(dir) } => {
            strata_operator::crdgen::write_dir(&dir).with_context(|| format!("writing {}", dir.display()))?;
        }
        Command::Run {
            http_listen,
            leader_election,
            lease_name,
            lease_namespace,
            identity,
            resync,
            status_refresh,
            broker_url,
            log_level,
            log_json,
        } => {
            let filter = tracing_subscriber::EnvFilter::try_new(&log_level).context("--log-level")?;
            let builder = tracing_subscriber::fmt().with_env_filter(filter);
            if log_json {
                builder.json().init()
            } else {
                builder.init()
            }
            // OTLP traces when OTEL_EXPORTER_OTLP_ENDPOINT is set; off otherwise.
            let telemetry = strata_telemetry::TelemetryConfig::from_env(std::env::vars());
            let _telemetry = strata_telemetry::init(&telemetry, "strata-operator").map_err(anyhow::Error::msg)?;
            let client = kube::Client::try_default().await.context("cannot configure the Kubernetes client")?;
            let listener =
                tokio::net::TcpListener::bind(http_listen).await.with_context(|| format!("binding {http_listen}"))?;
            let config = strata_operator::Config {
                settings: Settings { resync, status_refresh, ..Settings::default() },
                leader_election: leader_election.then(|| LeaseConfig {
                    name: lease_name,
                    namespace: lease_namespace,
                    identity: identity.unwrap_or_else(|| strata_operator::leader::identity(&hostname())),
                    duration: Duration::from_secs(15),
                    renew_every: Duration::from_secs(5),
                }),
                broker_url,
            };
            let shutdown = async {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
                }
            };
            strata_operator::run(config, client, listener, shutdown).await?;
        }
    }
    Ok(())
}
