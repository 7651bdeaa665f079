//! `strata queue ...`: create, update, list, describe, delete, purge and
//! redrive queues, and bind them to topics.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use clap::{Subcommand, ValueEnum};
use strata_client::{BindingFilter, Client, Durability, ErrorCode, QueueDescription, QueueOptions, TtlAction};

use super::DurabilityArg;
use super::parse;
use super::topic::{durability_name, table};

#[derive(Debug, Subcommand)]
pub(crate) enum QueueCommand {
    /// Create a queue.
    Create(CreateQueueArgs),
    /// Change settings of a queue (the others stay as they are).
    Update(UpdateQueueArgs),
    /// List queues: name, visible, in-flight, delayed and dead-lettered
    /// message counts.
    List,
    /// Show a queue's message counts, oldest message age, settings and
    /// bindings.
    Describe {
        /// Queue name.
        name: String,
    },
    /// Delete a queue and its messages.
    Delete {
        /// Queue name.
        name: String,
        /// Refuse when the queue still holds messages.
        #[arg(long)]
        if_empty: bool,
    },
    /// Delete every message of a queue (visible, delayed and in flight).
    Purge {
        /// Queue name.
        name: String,
    },
    /// Move messages of a dead-letter queue back to the queues they came from.
    Redrive {
        /// The dead-letter queue to drain.
        dead_letter_queue: String,
        /// Move at most this many messages (default: all).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        max: Option<u64>,
    },
    /// Route messages produced to a topic into a queue. Without --key,
    /// --pattern or --header every message of the topic is routed (fan-out).
    Bind(BindArgs),
    /// Remove the binding with exactly this topic and filter.
    Unbind(BindArgs),
}

/// Settings shared by `queue create` and `queue update`.
#[derive(Debug, clap::Args)]
pub(crate) struct QueueSettingsArgs {
    /// How long a received message stays invisible to other consumers
    /// (e.g. 30s) [default: 30s].
    #[arg(long, value_parser = parse::duration)]
    pub(crate) visibility_timeout: Option<Duration>,
    /// Deliveries after which a message is moved to the dead-letter queue
    /// (or dropped without one); 0 = unlimited [default: 5 with a
    /// dead-letter queue, else unlimited].
    #[arg(long)]
    pub(crate) max_deliveries: Option<u32>,
    /// Queue receiving messages that exhausted their deliveries (and, with
    /// --ttl-action dead-letter, expired ones). It must exist.
    #[arg(long = "dead-letter", value_name = "QUEUE")]
    pub(crate) dead_letter: Option<String>,
    /// Retry backoff MIN..MAX for nacks without a delay: MIN, doubling per
    /// delivery, capped at MAX (e.g. 1s..60s; 0s..0s = at once).
    #[arg(long, value_name = "MIN..MAX", value_parser = parse::retry_backoff)]
    pub(crate) retry_backoff: Option<(Duration, Duration)>,
    /// Delay before a new message becomes visible (e.g. 5s, 0s).
    #[arg(long, value_parser = parse::duration_or_zero)]
    pub(crate) delay: Option<Duration>,
    /// Time to live of a message (e.g. 1h), or `forever`.
    #[arg(long, value_parser = parse::ttl)]
    pub(crate) ttl: Option<Duration>,
    /// What happens to expired messages [default: drop].
    #[arg(long, value_enum)]
    pub(crate) ttl_action: Option<TtlActionArg>,
    /// Do not enqueue a message whose dedup id was seen within this window
    /// (e.g. 5m; 0s = off).
    #[arg(long, value_parser = parse::duration_or_zero)]
    pub(crate) dedup_window: Option<Duration>,
    /// Number of priority levels, 1 to 255 (higher priorities are received
    /// first) [default: 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=255))]
    pub(crate) priorities: Option<u32>,
    /// When a send or ack is acknowledged [default: fsync].
    #[arg(long, value_enum)]
    pub(crate) durability: Option<DurabilityArg>,
}

impl QueueSettingsArgs {
    fn to_options(&self) -> QueueOptions {
        QueueOptions {
            visibility_timeout: self.visibility_timeout,
            max_deliveries: self.max_deliveries,
            dead_letter_queue: self.dead_letter.clone(),
            retry_backoff: self.retry_backoff,
            delay: self.delay,
            ttl: self.ttl,
            ttl_action: self.ttl_action.map(TtlAction::from),
            fifo: None,
            dedup_window: self.dedup_window,
            priorities: self.priorities,
            durability: self.durability.map(Durability::from),
        }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct CreateQueueArgs {
    /// Queue name.
    pub(crate) name: String,
    #[command(flatten)]
    pub(crate) settings: QueueSettingsArgs,
    /// Keep order per message group, with one in-flight message per group
    /// (fixed at creation).
    #[arg(long)]
    pub(crate) fifo: bool,
    /// Succeed without change when the queue exists.
    #[arg(long)]
    pub(crate) if_not_exists: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct UpdateQueueArgs {
    /// Queue name.
    pub(crate) name: String,
    #[command(flatten)]
    pub(crate) settings: QueueSettingsArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum TtlActionArg {
    /// Delete expired messages.
    Drop,
    /// Move expired messages to the dead-letter queue.
    DeadLetter,
}

impl From<TtlActionArg> for TtlAction {
    fn from(a: TtlActionArg) -> Self {
        match a {
            TtlActionArg::Drop => TtlAction::Drop,
            TtlActionArg::DeadLetter => TtlAction::DeadLetter,
        }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct BindArgs {
    /// Queue name.
    pub(crate) queue: String,
    /// The topic whose messages are routed.
    #[arg(long)]
    pub(crate) topic: String,
    /// Route messages whose key is exactly this.
    #[arg(long, conflicts_with = "pattern")]
    pub(crate) key: Option<String>,
    /// Route messages whose key matches this dot-separated pattern (`*` one
    /// word, `#` zero or more), e.g. 'eu.*.#'.
    #[arg(long)]
    pub(crate) pattern: Option<String>,
    /// Route messages that carry this header `key=value`; repeatable (all
    /// must match).
    #[arg(long = "header", value_parser = parse::text_header)]
    pub(crate) headers: Vec<(String, String)>,
}

impl BindArgs {
    pub(crate) fn filter(&self) -> BindingFilter {
        let mut filter = match (&self.key, &self.pattern) {
            (Some(k), _) => BindingFilter::key(k.clone()),
            (None, Some(p)) => BindingFilter::pattern(p.clone()),
            (None, None) => BindingFilter::all(),
        };
        for (k, v) in &self.headers {
            filter = filter.header(k.clone(), v.clone());
        }
        filter
    }
}

pub(crate) async fn run(client: &Client, cmd: QueueCommand) -> anyhow::Result<()> {
    match cmd {
        QueueCommand::Create(args) => {
            let mut options = args.settings.to_options();
            options.fifo = args.fifo.then_some(true);
            let d = if args.if_not_exists {
                client.ensure_queue(&args.name, options).await?
            } else {
                client.create_queue(&args.name, options).await?
            };
            println!("created queue {}", d.name);
            Ok(())
        }
        QueueCommand::Update(args) => {
            let d = client.update_queue(&args.name, args.settings.to_options()).await?;
            println!("updated queue {}", d.name);
            Ok(())
        }
        QueueCommand::List => {
            let mut queues = client.list_queues().await?;
            queues.sort_by(|a, b| a.name.cmp(&b.name));
            super::show(list(&queues))
        }
        QueueCommand::Describe { name } => super::show(describe(&client.describe_queue(&name).await?)),
        QueueCommand::Delete { name, if_empty } => {
            // (A QUEUE_IN_USE refusal already says what to change.)
            client.delete_queue(&name, if_empty).await.map_err(|e| match e.error_code() {
                ErrorCode::QueueNotEmpty => anyhow::anyhow!("{e}; purge it first or delete without --if-empty"),
                _ => e.into(),
            })?;
            println!("deleted queue {name}");
            Ok(())
        }
        QueueCommand::Purge { name } => {
            let n = client.purge_queue(&name).await?;
            println!("purged {n} messages from queue {name}");
            Ok(())
        }
        QueueCommand::Redrive { dead_letter_queue, max } => {
            let n = client.redrive(&dead_letter_queue, max).await?;
            println!("moved {n} messages out of {dead_letter_queue}");
            Ok(())
        }
        QueueCommand::Bind(args) => {
            let filter = args.filter();
            client.bind(&args.queue, &args.topic, filter.clone()).await?;
            println!("bound queue {} to topic {} ({filter})", args.queue, args.topic);
            Ok(())
        }
        QueueCommand::Unbind(args) => {
            let filter = args.filter();
            client.unbind(&args.queue, &args.topic, filter.clone()).await?;
            println!("unbound queue {} from topic {} ({filter})", args.queue, args.topic);
            Ok(())
        }
    }
}

/// The text of `queue list`: one row per queue, no header (like `topic
/// list`): name, visible, in flight, delayed, dead-lettered.
pub(crate) fn list(queues: &[QueueDescription]) -> String {
    let rows: Vec<Vec<String>> = queues
        .iter()
        .map(|q| {
            let s = q.stats.unwrap_or_default();
            let mut name = q.name.clone();
            if q.temporary {
                name.push_str(" (temporary)");
            }
            vec![
                name,
                s.visible.to_string(),
                s.in_flight.to_string(),
                s.delayed.to_string(),
                s.dead_lettered.to_string(),
            ]
        })
        .collect();
    table(&rows)
}

fn ms(ms: i64) -> String {
    humantime::format_duration(Duration::from_millis(u64::try_from(ms).unwrap_or(0))).to_string()
}

fn opt_ms(v: Option<i64>, zero: &str) -> String {
    match v {
        None => "-".into(),
        Some(0) => zero.into(),
        Some(v) => ms(v),
    }
}

fn ttl_action_name(a: i32) -> &'static str {
    match TtlAction::try_from(a) {
        Ok(TtlAction::Unspecified | TtlAction::Drop) => "drop",
        Ok(TtlAction::DeadLetter) => "dead-letter",
        Err(_) => "unknown",
    }
}

/// The text of `queue describe`: counts, settings, then a bindings table.
pub(crate) fn describe(d: &QueueDescription) -> String {
    let c = d.config.clone().unwrap_or_default();
    let s = d.stats.unwrap_or_default();
    let created = UNIX_EPOCH + Duration::from_millis(u64::try_from(d.created_at_ms).unwrap_or(0));
    let backoff = match (c.retry_backoff_min_ms, c.retry_backoff_max_ms) {
        (Some(0) | None, Some(0) | None) => "none (at once)".to_owned(),
        (min, max) => format!("{}..{}", ms(min.unwrap_or(0)), ms(max.unwrap_or(0))),
    };
    let rows = [
        ("queue", d.name.clone()),
        ("tenant", d.tenant.clone()),
        ("id", d.queue_id.clone()),
        ("visible", s.visible.to_string()),
        ("in flight", s.in_flight.to_string()),
        ("delayed", s.delayed.to_string()),
        ("dead-lettered", s.dead_lettered.to_string()),
        ("oldest message", if s.oldest_message_age_ms > 0 { ms(s.oldest_message_age_ms) } else { "-".into() }),
        ("sent", s.sent_total.to_string()),
        ("acked", s.acked_total.to_string()),
        ("expired", s.expired_total.to_string()),
        ("visibility timeout", opt_ms(c.visibility_timeout_ms, "0s")),
        (
            "max deliveries",
            c.max_deliveries.map_or("-".into(), |n| if n == 0 { "unlimited".into() } else { n.to_string() }),
        ),
        ("dead-letter queue", c.dead_letter_queue.clone().filter(|q| !q.is_empty()).unwrap_or_else(|| "-".into())),
        ("retry backoff", backoff),
        ("delay", opt_ms(c.delay_ms, "none")),
        ("ttl", opt_ms(c.ttl_ms, "forever")),
        ("ttl action", ttl_action_name(c.ttl_action).to_owned()),
        ("fifo", if c.fifo.unwrap_or(false) { "yes" } else { "no" }.to_owned()),
        ("dedup window", opt_ms(c.dedup_window_ms, "off")),
        ("priorities", c.priorities.map_or("-".into(), |p| p.to_string())),
        ("durability", durability_name(c.durability).to_owned()),
        ("temporary", if d.temporary { "yes" } else { "no" }.to_owned()),
        ("created", humantime::format_rfc3339_seconds(created).to_string()),
    ];
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "{:<19} {v}", format!("{k}:"));
    }
    out.push('\n');
    if d.bindings.is_empty() {
        out.push_str("no bindings\n");
    } else {
        let mut rows = vec![vec!["TOPIC".to_owned(), "FILTER".to_owned()]];
        let mut bindings = d.bindings.clone();
        bindings.sort_by(|a, b| a.topic.cmp(&b.topic));
        for b in bindings {
            let filter = BindingFilter::from(b.filter.unwrap_or_default());
            rows.push(vec![b.topic, filter.to_string()]);
        }
        out.push_str(&table(&rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_client::{Binding, QueueConfig, QueueStats};

    #[test]
    fn describe_shows_counts_settings_and_bindings() {
        let d = QueueDescription {
            tenant: "default".into(),
            name: "jobs".into(),
            queue_id: "q1".into(),
            config: Some(QueueConfig {
                visibility_timeout_ms: Some(30_000),
                max_deliveries: Some(5),
                dead_letter_queue: Some("jobs-dlq".into()),
                retry_backoff_min_ms: Some(1000),
                retry_backoff_max_ms: Some(60_000),
                delay_ms: Some(0),
                ttl_ms: Some(0),
                ttl_action: TtlAction::DeadLetter as i32,
                fifo: Some(false),
                dedup_window_ms: Some(300_000),
                priorities: Some(10),
                durability: Durability::Fsync as i32,
            }),
            created_at_ms: 1_700_000_000_000,
            stats: Some(QueueStats {
                visible: 3,
                in_flight: 2,
                delayed: 1,
                dead_lettered: 4,
                oldest_message_age_ms: 1500,
                ..Default::default()
            }),
            bindings: vec![Binding {
                topic: "orders".into(),
                filter: Some(strata_proto::v1::BindingFilter { pattern: Some("eu.*.#".into()), ..Default::default() }),
                created_at_ms: 0,
            }],
            temporary: false,
        };
        let text = describe(&d);
        for line in [
            "visible:            3",
            "in flight:          2",
            "delayed:            1",
            "dead-lettered:      4",
            "oldest message:     1s 500ms",
            "visibility timeout: 30s",
            "dead-letter queue:  jobs-dlq",
            "retry backoff:      1s..1m",
            "ttl:                forever",
            "ttl action:         dead-letter",
            "dedup window:       5m",
            "priorities:         10",
            "created:            2023-11-14T22:13:20Z",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains("orders  pattern=eu.*.#"), "{text}");

        let listed = list(&[d]);
        assert_eq!(listed, "jobs  3  2  1  4\n");
    }
}
