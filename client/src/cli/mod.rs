//! The `strata` command line: argument definitions (clap derive), dispatch
//! to one module per command group, and one-line error reporting.

mod acl;
mod cluster;
mod consume;
mod group;
mod principal;
mod produce;
mod queue;
mod receive;
mod send;
mod tenant;
mod topic;

pub(crate) use crate::parse::{self, DurabilityArg};

use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use strata_client::{Client, StartFrom};

use crate::bench::BenchCommand;
pub(crate) use queue::QueueCommand;
pub(crate) use receive::ReceiveArgs;
pub(crate) use send::SendArgs;

/// Command-line tool for the Strata message broker.
#[derive(Debug, Parser)]
#[command(name = "strata", version, about, max_term_width = 100)]
pub(crate) struct Cli {
    /// Broker URL; in a cluster any broker, or several separated by commas
    /// (the first that answers bootstraps; requests go to each owner).
    #[arg(
        long,
        global = true,
        env = "STRATA_SERVER",
        default_value = "http://127.0.0.1:7070",
        help_heading = "Global options"
    )]
    pub(crate) server: String,

    /// Tenant to act in (default: the caller's own tenant; `default` with
    /// anonymous access).
    #[arg(long, global = true, env = "STRATA_TENANT", help_heading = "Global options")]
    pub(crate) tenant: Option<String>,

    /// Bearer token sent on every call (`authorization: Bearer …`).
    #[arg(long, global = true, env = "STRATA_TOKEN", hide_env_values = true, help_heading = "Global options")]
    pub(crate) token: Option<String>,

    /// PEM CA certificates the broker's certificate must chain to (https://
    /// URLs; default: the system's roots).
    #[arg(long, global = true, env = "STRATA_TLS_CA", value_name = "FILE", help_heading = "Global options")]
    pub(crate) tls_ca: Option<std::path::PathBuf>,

    /// PEM client certificate for mTLS (with --tls-key).
    #[arg(long, global = true, env = "STRATA_TLS_CERT", value_name = "FILE", help_heading = "Global options")]
    pub(crate) tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, global = true, env = "STRATA_TLS_KEY", value_name = "FILE", help_heading = "Global options")]
    pub(crate) tls_key: Option<std::path::PathBuf>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Produce one message per line of standard input.
    Produce(ProduceArgs),
    /// Print the values of a topic's messages, one per line.
    Consume(ConsumeArgs),
    /// List, describe, reset and delete consumer groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Create, list, describe, delete, purge and redrive queues; bind them
    /// to topics.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Send one message per line of standard input to a queue.
    Send(SendArgs),
    /// Receive messages from a queue and print their bodies, one per line
    /// (acknowledged once printed, unless --no-ack).
    Receive(ReceiveArgs),
    /// Create, list and delete tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Show the brokers of the cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Create, list and delete principals (cluster admins).
    #[command(subcommand)]
    Principal(PrincipalCommand),
    /// Issue and revoke bearer tokens of principals (cluster admins).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Grant, list and remove ACL bindings: what a principal may do with
    /// which topics, queues and groups of its tenant (cluster admins).
    #[command(subcommand)]
    Acl(AclCommand),
    /// Measure throughput and latency.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// One row per broker: id, address, zone, state (the metadata leader is
    /// marked with `*`) and partitions owned (`-` until placement exists).
    Describe {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a broker that is gone for good from the cluster (cluster
    /// admins). The partitions and queues it owned are reported unowned.
    RemoveBroker {
        /// The broker's id.
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TopicCommand {
    /// Create a topic.
    Create(CreateTopicArgs),
    /// List topics: name, partitions, durability.
    List,
    /// Show a topic's settings and partitions.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Grow a topic to a larger number of partitions.
    AddPartitions {
        /// Topic name.
        name: String,
        /// The new total number of partitions.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        partitions: u32,
    },
    /// Delete a topic and its data.
    Delete {
        /// Topic name.
        name: String,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct CreateTopicArgs {
    /// Topic name.
    pub(crate) name: String,
    /// Number of partitions.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) partitions: u32,
    /// Delete data older than this (e.g. 7d, 12h), or `infinite`
    /// [default: the broker's].
    #[arg(long, value_parser = parse::retention)]
    pub(crate) retention: Option<strata_client::Retention>,
    /// Keep at most this much data per partition (e.g. 10GiB), or `infinite`
    /// [default: the broker's].
    #[arg(long, value_parser = parse::retention_bytes)]
    pub(crate) retention_bytes: Option<i64>,
    /// Roll log segments at this size (e.g. 64MiB) [default: the broker's].
    #[arg(long, value_parser = parse::positive_size)]
    pub(crate) segment_bytes: Option<u64>,
    /// When a write is acknowledged [default: fsync].
    #[arg(long, value_enum)]
    pub(crate) durability: Option<DurabilityArg>,
    /// Tiered storage: keep data on the broker's disk this long (e.g. 1h);
    /// older data is served from the cold store. Makes the topic tiered.
    #[arg(long, value_parser = parse::retention)]
    pub(crate) local_retention: Option<strata_client::Retention>,
    /// Tiered storage: keep at most this much data per partition on the
    /// broker's disk (e.g. 1GiB). Makes the topic tiered.
    #[arg(long, value_parser = parse::retention_bytes)]
    pub(crate) local_retention_bytes: Option<i64>,
    /// Copies of each partition, on distinct brokers; a produce is
    /// acknowledged once a majority of them has it durable [default: 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) replication_factor: Option<u32>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ProduceArgs {
    /// Topic to produce to.
    pub(crate) topic: String,
    /// Key of every message (messages with a key go to the partition of the
    /// key's hash).
    #[arg(long)]
    pub(crate) key: Option<String>,
    /// A header `key=value` added to every message; repeatable.
    #[arg(long = "header", value_parser = parse::header)]
    pub(crate) headers: Vec<(String, bytes::Bytes)>,
    /// Send every message to this partition.
    #[arg(long)]
    pub(crate) partition: Option<u32>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ConsumeArgs {
    /// Topic to read.
    pub(crate) topic: String,
    /// Where to start: `earliest`, `latest`, an offset (e.g. 1200), an RFC 3339
    /// time (e.g. 2026-11-21T10:00:00Z) or Unix milliseconds (@1700000000000).
    /// Like Kafka's console consumer, the default is `latest`: only messages
    /// produced from now on.
    #[arg(long, default_value = "latest", value_parser = parse::start_from)]
    pub(crate) from: StartFrom,
    /// Exit after this many messages (default: run until Ctrl-C).
    #[arg(long)]
    pub(crate) count: Option<u64>,
    /// Read only this partition; repeatable (default: all partitions).
    #[arg(long = "partition", conflicts_with = "group")]
    pub(crate) partitions: Vec<u32>,
    /// Consume as a member of this consumer group: read the partitions the
    /// group assigns, starting at its committed offsets (--from applies to
    /// partitions without one), and commit what was printed (at least every
    /// second, on rebalances and at exit). At-least-once: lines printed but
    /// not yet committed when the process dies are printed again by the
    /// member that takes the partition over.
    #[arg(long)]
    pub(crate) group: Option<String>,
    /// How long the broker holds a fetch at the end of the log.
    #[arg(long, default_value = "500ms", value_parser = parse::duration, hide = true)]
    pub(crate) max_wait: Duration,
}

#[derive(Debug, Subcommand)]
pub(crate) enum GroupCommand {
    /// List consumer groups: name, members, state.
    List,
    /// Show a group's members and, per partition, committed offset, end
    /// offset, lag and owner.
    Describe {
        /// Group name.
        group: String,
    },
    /// Move a group's committed offsets. Refused while the group has
    /// members, unless --force (which removes them; they rejoin and read
    /// from the new offsets).
    Reset(ResetGroupArgs),
    /// Delete a group's committed offsets (refused while it has members).
    Delete {
        /// Group name.
        group: String,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct ResetGroupArgs {
    /// Group name.
    pub(crate) group: String,
    /// The topic whose offsets move.
    #[arg(long)]
    pub(crate) topic: String,
    /// The new position: `earliest`, `latest`, an offset (e.g. 1200), an RFC
    /// 3339 time (e.g. 2026-11-21T10:00:00Z) or Unix milliseconds
    /// (@1700000000000).
    #[arg(long, value_parser = parse::start_from)]
    pub(crate) to: StartFrom,
    /// Reset only this partition; repeatable (default: all partitions).
    #[arg(long = "partition")]
    pub(crate) partitions: Vec<u32>,
    /// Reset even while the group has members (they are removed first).
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TenantCommand {
    /// Create a tenant, optionally with quotas (unset ones are unlimited).
    Create {
        /// Tenant name.
        name: String,
        #[command(flatten)]
        quotas: QuotaArgs,
    },
    /// Change a tenant's quotas: the flags given replace those quotas,
    /// `--clear-quota` makes one unlimited, the others stay.
    Update {
        /// Tenant name.
        name: String,
        #[command(flatten)]
        quotas: QuotaArgs,
        /// Remove a quota (unlimited again), by its name: max_topics,
        /// max_queues, max_partitions, max_stored_bytes,
        /// produce_bytes_per_second, consume_bytes_per_second,
        /// requests_per_second, max_connections. Repeatable.
        #[arg(long = "clear-quota", value_parser = tenant::quota_name)]
        clear: Vec<String>,
    },
    /// Show a tenant's quotas and usage.
    Describe {
        /// Tenant name.
        name: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List tenants: name, usage (topics, queues, partitions, stored bytes,
    /// connections), creation time.
    List,
    /// Delete an empty tenant.
    Delete {
        /// Tenant name.
        name: String,
    },
}

/// Tenant quotas (`strata tenant create|update`).
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct QuotaArgs {
    /// Most topics the tenant may have.
    #[arg(long)]
    pub(crate) max_topics: Option<u32>,
    /// Most queues the tenant may have.
    #[arg(long)]
    pub(crate) max_queues: Option<u32>,
    /// Most partitions over all the tenant's topics.
    #[arg(long)]
    pub(crate) max_partitions: Option<u32>,
    /// Most bytes stored (hot + cold) by the tenant's topics and queues,
    /// e.g. 10GiB.
    #[arg(long, value_parser = parse::size)]
    pub(crate) max_stored_bytes: Option<u64>,
    /// Produce (and queue send) bytes per second, e.g. 10MiB or 10MiB/s;
    /// enforced per broker.
    #[arg(long, value_parser = parse::rate)]
    pub(crate) produce_rate: Option<u64>,
    /// Consume (fetch and queue receive) bytes per second; per broker.
    #[arg(long, value_parser = parse::rate)]
    pub(crate) consume_rate: Option<u64>,
    /// Requests per second; per broker.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) requests_per_second: Option<u32>,
    /// Most open connections of the tenant's principals; per broker.
    #[arg(long)]
    pub(crate) max_connections: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum PrincipalCommand {
    /// Create a principal in a tenant (--tenant; default: `default`).
    Create {
        /// Principal name (a client certificate's CN names it).
        name: String,
    },
    /// List principals (of --tenant, or all) with their token ids.
    List,
    /// Delete a principal and revoke its tokens.
    Delete {
        /// Principal name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Issue a new token for a principal and print it (only the token, on
    /// standard output; it cannot be shown again).
    Issue {
        /// The principal's name.
        #[arg(long)]
        principal: String,
    },
    /// Revoke a token of a principal, named by its id or by the token.
    Revoke {
        /// The principal's name.
        #[arg(long)]
        principal: String,
        /// Token id (from `strata principal list`) or the token itself.
        /// (Not `token`: that is the global `--token` the call authenticates with.)
        #[arg(value_name = "TOKEN")]
        token_or_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AclCommand {
    /// Grant a principal of --tenant an operation on a resource pattern.
    Add(AclArgs),
    /// List the bindings of --tenant (all tenants without it): a table, or --json.
    List {
        /// Only this principal's bindings (with those of `*`).
        #[arg(long)]
        principal: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove exactly one binding (the same flags as `add`).
    Remove(AclArgs),
}

/// One ACL binding on the command line.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("resource").required(true).args(["topic", "queue", "group"])))]
pub(crate) struct AclArgs {
    /// The principal (of --tenant), or `*` for every principal of the tenant.
    #[arg(long)]
    pub(crate) principal: String,
    /// A topic name (or prefix with --prefix; `*` alone: every topic).
    #[arg(long)]
    pub(crate) topic: Option<String>,
    /// A queue name (or prefix with --prefix; `*` alone: every queue).
    #[arg(long)]
    pub(crate) queue: Option<String>,
    /// A consumer group name (or prefix with --prefix; `*` alone: every group).
    #[arg(long)]
    pub(crate) group: Option<String>,
    /// The name is a prefix: every resource whose name starts with it.
    #[arg(long)]
    pub(crate) prefix: bool,
    /// produce, consume, admin, describe or all (produce, consume and admin
    /// imply describe).
    #[arg(long, value_parser = ["produce", "consume", "admin", "describe", "all"])]
    pub(crate) operation: String,
}

/// The TLS files and token of the command line.
fn connect_options(cli: &Cli) -> anyhow::Result<strata_client::ConnectOptions> {
    let read = |what: &str, p: &std::path::Path| {
        std::fs::read(p).with_context(|| format!("cannot read {what} {}", p.display()))
    };
    let mut options = strata_client::ConnectOptions::new();
    if let Some(ca) = &cli.tls_ca {
        options = options.ca_pem(read("--tls-ca", ca)?);
    }
    match (&cli.tls_cert, &cli.tls_key) {
        (Some(c), Some(k)) => options = options.identity_pem(read("--tls-cert", c)?, read("--tls-key", k)?),
        (None, None) => {}
        _ => anyhow::bail!("--tls-cert and --tls-key go together"),
    }
    if let Some(t) = &cli.token {
        options = options.token(t.clone());
    }
    Ok(options)
}

/// Runs a parsed command line.
pub(crate) async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = Client::connect_with(&cli.server, connect_options(&cli)?).await?;
    let client = match cli.tenant {
        Some(t) => client.with_tenant(t),
        None => client,
    };
    match cli.command {
        Command::Topic(cmd) => topic::run(&client, cmd).await,
        Command::Produce(args) => produce::run(&client, args).await,
        Command::Consume(args) => consume::run(&client, args).await,
        Command::Group(cmd) => group::run(&client, cmd).await,
        Command::Queue(cmd) => queue::run(&client, cmd).await,
        Command::Send(args) => send::run(&client, args).await,
        Command::Receive(args) => receive::run(&client, args).await,
        Command::Tenant(cmd) => tenant::run(&client, cmd).await,
        Command::Cluster(cmd) => cluster::run(&client, cmd).await,
        Command::Principal(cmd) => principal::run_principal(&client, cmd).await,
        Command::Token(cmd) => principal::run_token(&client, cmd).await,
        Command::Acl(cmd) => acl::run(&client, cmd).await,
        Command::Bench(cmd) => crate::bench::run(&client, cmd).await.context("benchmark failed"),
    }
}

/// Prints a clap error: help and version as clap renders them (exit 0),
/// usage errors as one `error: ...` line (exit 2).
pub(crate) fn report_parse_error(err: clap::Error) -> std::process::ExitCode {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                std::process::ExitCode::from(2)
            } else {
                std::process::ExitCode::SUCCESS
            }
        }
        _ => {
            eprintln!("error: {}", one_line_parse_error(&err));
            std::process::ExitCode::from(2)
        }
    }
}

/// clap's message without its usage and tip paragraphs, on one line.
pub(crate) fn one_line_parse_error(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let first_paragraph = rendered.split("\n\n").next().unwrap_or_default();
    let text = first_paragraph.trim().strip_prefix("error:").unwrap_or(first_paragraph).trim();
    one_line(text)
}

/// Prints a rendered table or description (it ends with its own newline).
pub(crate) fn show(text: impl std::fmt::Display) -> anyhow::Result<()> {
    print!("{text}");
    Ok(())
}

/// Collapses whitespace (newlines included) into single spaces.
pub(crate) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("strata").chain(args.iter().copied()))
    }

    fn parse_err(args: &[&str]) -> String {
        one_line_parse_error(&parse(args).unwrap_err())
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn topic_create_parses_sizes_and_durations() {
        let cli = parse(&[
            "topic",
            "create",
            "orders",
            "--partitions",
            "3",
            "--retention",
            "7d",
            "--retention-bytes",
            "10GiB",
            "--segment-bytes",
            "64MiB",
            "--durability",
            "none",
        ])
        .unwrap();
        let Command::Topic(TopicCommand::Create(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.name, "orders");
        assert_eq!(args.partitions, 3);
        assert_eq!(args.retention, Some(strata_client::Retention::Time(Duration::from_secs(7 * 86400))));
        assert_eq!(args.retention_bytes, Some(10 << 30));
        assert_eq!(args.segment_bytes, Some(64 << 20));
        assert_eq!(args.durability, Some(DurabilityArg::None));

        let cli = parse(&["topic", "create", "o", "--retention", "infinite"]).unwrap();
        let Command::Topic(TopicCommand::Create(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.retention, Some(strata_client::Retention::Infinite));
        assert_eq!(args.partitions, 1);
    }

    #[test]
    fn invalid_values_are_one_line_errors() {
        for (args, needle) in [
            (&["topic", "create", "o", "--retention", "7x"][..], "--retention"),
            (&["topic", "create", "o", "--retention-bytes", "lots"], "--retention-bytes"),
            (&["topic", "create", "o", "--segment-bytes", "0"], "--segment-bytes"),
            (&["topic", "create", "o", "--partitions", "0"], "--partitions"),
            (&["topic", "create", "o", "--durability", "maybe"], "--durability"),
            (&["consume", "t", "--from", "yesterday"], "--from"),
            (&["produce", "t", "--header", "novalue"], "--header"),
            (&["bench", "produce", "--size", "big"], "--size"),
            (&["topic", "explode"], "explode"),
            (&["group", "reset", "g", "--topic", "t", "--to", "soon"], "--to"),
            (&["group", "reset", "g", "--to", "earliest"], "--topic"),
            (&["consume", "t", "--group", "g", "--partition", "1"], "--partition"),
        ] {
            let msg = parse_err(args);
            assert!(msg.contains(needle), "{args:?}: {msg}");
            assert!(!msg.contains('\n'), "{msg}");
            assert!(!msg.starts_with("error"), "{msg}");
        }
        let msg = parse_err(&["produce"]);
        assert!(msg.contains("<TOPIC>"), "{msg}");
    }

    #[test]
    fn consume_defaults_to_latest_and_parses_from() {
        let cli = parse(&["consume", "t"]).unwrap();
        let Command::Consume(args) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.from, StartFrom::Latest);
        assert_eq!(args.count, None);
        assert!(args.partitions.is_empty());

        let cli = parse(&[
            "consume",
            "t",
            "--from",
            "2023-11-14T22:13:20Z",
            "--count",
            "5",
            "--partition",
            "1",
            "--partition",
            "3",
        ])
        .unwrap();
        let Command::Consume(args) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.from, StartFrom::Timestamp(1_700_000_000_000));
        assert_eq!(args.count, Some(5));
        assert_eq!(args.partitions, vec![1, 3]);

        for (from, expected) in
            [("earliest", StartFrom::Earliest), ("17", StartFrom::Offset(17)), ("@5", StartFrom::Timestamp(5))]
        {
            let cli = parse(&["consume", "t", "--from", from]).unwrap();
            let Command::Consume(args) = cli.command else {
                panic!("wrong command");
            };
            assert_eq!(args.from, expected);
        }
    }

    #[test]
    fn group_commands_parse() {
        let cli = parse(&["consume", "t", "--group", "g", "--from", "earliest", "--count", "3"]).unwrap();
        let Command::Consume(args) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.group.as_deref(), Some("g"));
        assert_eq!(args.from, StartFrom::Earliest);

        let cli = parse(&[
            "group",
            "reset",
            "g",
            "--topic",
            "t",
            "--to",
            "@5",
            "--partition",
            "0",
            "--partition",
            "2",
            "--force",
        ])
        .unwrap();
        let Command::Group(GroupCommand::Reset(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!((args.group.as_str(), args.topic.as_str()), ("g", "t"));
        assert_eq!(args.to, StartFrom::Timestamp(5));
        assert_eq!(args.partitions, vec![0, 2]);
        assert!(args.force);

        assert!(matches!(parse(&["group", "list"]).unwrap().command, Command::Group(GroupCommand::List)));
        assert!(matches!(
            parse(&["group", "describe", "g"]).unwrap().command,
            Command::Group(GroupCommand::Describe { .. })
        ));
        assert!(matches!(
            parse(&["group", "delete", "g"]).unwrap().command,
            Command::Group(GroupCommand::Delete { .. })
        ));
    }

    #[test]
    fn produce_collects_headers_and_global_flags_go_anywhere() {
        let cli = parse(&[
            "produce",
            "orders",
            "--key",
            "k",
            "--header",
            "a=1",
            "--header",
            "b=2",
            "--server",
            "http://example:1",
            "--tenant",
            "acme",
        ])
        .unwrap();
        assert_eq!(cli.server, "http://example:1");
        assert_eq!(cli.tenant.as_deref(), Some("acme"));
        let Command::Produce(args) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.key.as_deref(), Some("k"));
        assert_eq!(args.headers.len(), 2);
        assert_eq!(args.headers[1].0, "b");
    }

    #[test]
    fn queue_create_parses_every_setting() {
        let cli = parse(&[
            "queue",
            "create",
            "jobs",
            "--visibility-timeout",
            "45s",
            "--max-deliveries",
            "5",
            "--dead-letter",
            "jobs-dlq",
            "--retry-backoff",
            "1s..60s",
            "--delay",
            "0s",
            "--ttl",
            "1d",
            "--ttl-action",
            "dead-letter",
            "--fifo",
            "--dedup-window",
            "5m",
            "--priorities",
            "10",
            "--durability",
            "none",
        ])
        .unwrap();
        let Command::Queue(QueueCommand::Create(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.name, "jobs");
        assert!(args.fifo);
        let s = &args.settings;
        assert_eq!(s.visibility_timeout, Some(Duration::from_secs(45)));
        assert_eq!(s.max_deliveries, Some(5));
        assert_eq!(s.dead_letter.as_deref(), Some("jobs-dlq"));
        assert_eq!(s.retry_backoff, Some((Duration::from_secs(1), Duration::from_secs(60))));
        assert_eq!(s.delay, Some(Duration::ZERO));
        assert_eq!(s.ttl, Some(Duration::from_secs(86_400)));
        assert_eq!(s.ttl_action, Some(queue::TtlActionArg::DeadLetter));
        assert_eq!(s.dedup_window, Some(Duration::from_secs(300)));
        assert_eq!(s.priorities, Some(10));
        assert_eq!(s.durability, Some(DurabilityArg::None));

        let cli = parse(&["queue", "create", "plain"]).unwrap();
        let Command::Queue(QueueCommand::Create(args)) = cli.command else {
            panic!("wrong command");
        };
        assert!(!args.fifo);
        assert_eq!(args.settings.visibility_timeout, None);
        assert_eq!(args.settings.retry_backoff, None);
    }

    #[test]
    fn queue_subcommands_parse() {
        for args in [
            &["queue", "list"][..],
            &["queue", "describe", "q"],
            &["queue", "delete", "q", "--if-empty"],
            &["queue", "purge", "q"],
            &["queue", "redrive", "dlq", "--max", "10"],
            &["queue", "update", "q", "--visibility-timeout", "1m"],
        ] {
            assert!(matches!(parse(args).unwrap().command, Command::Queue(_)), "{args:?}");
        }
        let cli = parse(&["queue", "bind", "q", "--topic", "t", "--pattern", "a.*.#", "--header", "k=v"]).unwrap();
        let Command::Queue(QueueCommand::Bind(args)) = cli.command else {
            panic!("wrong command");
        };
        let filter = args.filter();
        assert_eq!(filter.pattern.as_deref(), Some("a.*.#"));
        assert_eq!(filter.headers.get("k").map(String::as_str), Some("v"));
        let cli = parse(&["queue", "unbind", "q", "--topic", "t"]).unwrap();
        let Command::Queue(QueueCommand::Unbind(args)) = cli.command else {
            panic!("wrong command");
        };
        assert!(args.filter().is_fan_out());
        let cli = parse(&["queue", "bind", "q", "--topic", "t", "--key", "eu"]).unwrap();
        let Command::Queue(QueueCommand::Bind(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.filter(), strata_client::BindingFilter::key("eu"));
    }

    #[test]
    fn send_and_receive_flags() {
        let cli = parse(&[
            "send",
            "q",
            "--priority",
            "9",
            "--delay",
            "2s",
            "--group",
            "g",
            "--dedup-id",
            "id-{n}",
            "--header",
            "a=1",
            "--header",
            "b=x=y",
        ])
        .unwrap();
        let Command::Send(args) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.priority, 9);
        assert_eq!(args.delay, Some(Duration::from_secs(2)));
        assert_eq!(args.group.as_deref(), Some("g"));
        assert_eq!(args.dedup_id.as_deref(), Some("id-{n}"));
        assert_eq!(args.headers[1], ("b".to_owned(), bytes::Bytes::from_static(b"x=y")));

        let cli = parse(&["receive", "q"]).unwrap();
        let Command::Receive(args) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!((args.count, args.wait, args.no_ack), (None, Duration::from_secs(10), false));
        assert_eq!(args.visibility_timeout, None);
        let cli =
            parse(&["receive", "q", "--count", "5", "--wait", "0s", "--visibility-timeout", "1s", "--no-ack"]).unwrap();
        let Command::Receive(args) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!((args.count, args.wait, args.no_ack), (Some(5), Duration::ZERO, true));
        assert_eq!(args.visibility_timeout, Some(Duration::from_secs(1)));
    }

    #[test]
    fn bad_queue_flags_are_one_line_errors() {
        for (args, needle) in [
            (&["queue", "create", "q", "--retry-backoff", "60s..1s"][..], "--retry-backoff"),
            (&["queue", "create", "q", "--retry-backoff", "1s"], "MIN..MAX"),
            (&["queue", "create", "q", "--visibility-timeout", "0s"], "--visibility-timeout"),
            (&["queue", "create", "q", "--visibility-timeout", "soon"], "--visibility-timeout"),
            (&["queue", "create", "q", "--priorities", "0"], "--priorities"),
            (&["queue", "create", "q", "--priorities", "256"], "--priorities"),
            (&["queue", "create", "q", "--ttl-action", "keep"], "--ttl-action"),
            (&["queue", "create", "q", "--max-deliveries", "-1"], "-1"),
            (&["queue", "bind", "q", "--topic", "t", "--key", "a", "--pattern", "b"], "--pattern"),
            (&["queue", "bind", "q", "--topic", "t", "--header", "novalue"], "--header"),
            (&["queue", "bind", "q"], "--topic"),
            (&["send", "q", "--priority", "high"], "--priority"),
            (&["send", "q", "--header", "=v"], "--header"),
            (&["send", "q", "--delay", "1x"], "--delay"),
            (&["receive", "q", "--count", "0"], "--count"),
            (&["receive", "q", "--wait", "forever"], "--wait"),
            (&["receive", "q", "--batch", "1001"], "--batch"),
            (&["bench", "queue", "--consumers", "0"], "--consumers"),
            (&["bench", "queue", "--count", "5", "--duration", "1s"], "--duration"),
        ] {
            let msg = parse_err(args);
            assert!(msg.contains(needle), "{args:?}: {msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }
    }

    #[test]
    fn bench_flags() {
        let cli = parse(&["bench", "produce", "--size", "4KiB", "--duration", "10s", "--json"]).unwrap();
        let Command::Bench(BenchCommand::Produce(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.size, 4096);
        assert_eq!(args.duration, Some(Duration::from_secs(10)));
        assert!(args.json);
        assert!(parse(&["bench", "produce", "--count", "5", "--duration", "1s"]).is_err());
        assert!(parse(&["bench", "produce", "--producers", "0"]).is_err());
        let cli = parse(&["bench", "consume", "--count", "1000"]).unwrap();
        let Command::Bench(BenchCommand::Consume(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.count, 1000);

        let cli = parse(&[
            "bench",
            "queue",
            "--size",
            "1KiB",
            "--duration",
            "5s",
            "--producers",
            "3",
            "--consumers",
            "4",
            "--batch",
            "50",
            "--json",
        ])
        .unwrap();
        let Command::Bench(BenchCommand::Queue(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!((args.size, args.producers, args.consumers, args.batch), (1024, 3, 4, 50));
        assert_eq!(args.duration, Some(Duration::from_secs(5)));
        assert!(args.json);
    }
}
