//! `strata topic ...`: create, list, describe, grow and delete topics.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use strata_client::{Client, Durability, TopicDescription, TopicOptions};

use super::{CreateTopicArgs, TopicCommand};

pub(crate) async fn run(client: &Client, cmd: TopicCommand) -> anyhow::Result<()> {
    match cmd {
        TopicCommand::Create(args) => create(client, args).await,
        TopicCommand::List => {
            let mut topics = client.list_topics().await?;
            topics.sort_by(|a, b| a.name.cmp(&b.name));
            let rows: Vec<Vec<String>> = topics
                .iter()
                .map(|t| vec![t.name.clone(), t.partitions.to_string(), durability_name(t.durability).to_owned()])
                .collect();
            super::show(table(&rows))
        }
        TopicCommand::Describe { name } => super::show(describe(&client.describe_topic(&name).await?)),
        TopicCommand::AddPartitions { name, partitions } => {
            let d = client.add_partitions(&name, partitions).await?;
            println!("topic {} now has {} partitions", d.name, d.partitions);
            Ok(())
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(&name).await?;
            println!("deleted topic {name}");
            Ok(())
        }
    }
}

async fn create(client: &Client, args: CreateTopicArgs) -> anyhow::Result<()> {
    let options = TopicOptions {
        retention: args.retention,
        retention_bytes: args.retention_bytes,
        segment_bytes: args.segment_bytes,
        durability: args.durability.map(Durability::from),
        local_retention: args.local_retention,
        local_retention_bytes: args.local_retention_bytes,
        replication_factor: args.replication_factor,
    };
    let d = client.create_topic(&args.name, args.partitions, options).await?;
    println!("created topic {} with {} partitions", d.name, d.partitions);
    Ok(())
}

/// The name of a wire durability (topics and queues).
pub(crate) fn durability_name(d: i32) -> &'static str {
    match Durability::try_from(d) {
        Ok(Durability::Fsync) => "fsync",
        Ok(Durability::None) => "none",
        Ok(Durability::Unspecified) => "default",
        Err(_) => "unknown",
    }
}

fn ms_setting(ms: Option<i64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms < 0 => "infinite".into(),
        Some(ms) => humantime::format_duration(Duration::from_millis(ms as u64)).to_string(),
    }
}

fn bytes_setting(bytes: Option<i64>) -> String {
    match bytes {
        None => "-".into(),
        Some(b) if b < 0 => "infinite".into(),
        Some(b) => human_bytes(b as u64),
    }
}

/// Local retention -1 means "as long as the total retention".
fn local_ms_setting(ms: Option<i64>) -> String {
    if ms == Some(-1) { "same as retention".into() } else { ms_setting(ms) }
}

fn local_bytes_setting(bytes: Option<i64>) -> String {
    if bytes == Some(-1) { "same as retention bytes".into() } else { bytes_setting(bytes) }
}

fn human_bytes(b: u64) -> String {
    if b < 1024 { format!("{b} B") } else { format!("{} ({b} B)", bytesize::ByteSize(b).display().iec()) }
}

/// The text of `topic describe`: settings, then a partition table.
pub(crate) fn describe(d: &TopicDescription) -> String {
    let config = d.config.unwrap_or_default();
    let created = UNIX_EPOCH + Duration::from_millis(d.created_at_ms.max(0) as u64);
    let settings = [
        ("topic", d.name.clone()),
        ("tenant", d.tenant.clone()),
        ("id", d.topic_id.clone()),
        ("partitions", d.partitions.to_string()),
        ("replication", d.replication_factor.max(1).to_string()),
        ("durability", durability_name(config.durability).to_owned()),
        ("retention", ms_setting(config.retention_ms)),
        ("retention bytes", bytes_setting(config.retention_bytes)),
        ("local retention", local_ms_setting(config.local_retention_ms)),
        ("local bytes", local_bytes_setting(config.local_retention_bytes)),
        ("segment bytes", config.segment_bytes.map_or("-".into(), human_bytes)),
        ("segment age", ms_setting(config.segment_ms)),
        ("created", humantime::format_rfc3339_seconds(created).to_string()),
    ];
    let mut out = String::new();
    for (k, v) in settings {
        let _ = writeln!(out, "{:<16} {v}", format!("{k}:"));
    }
    out.push('\n');
    let mut rows = vec![vec![
        "PARTITION".to_owned(),
        "START".to_owned(),
        "END".to_owned(),
        "BYTES".to_owned(),
        "SEGMENTS".to_owned(),
        "LOCAL".to_owned(),
        "LOCAL_BYTES".to_owned(),
        "REMOTE".to_owned(),
        "REMOTE_BYTES".to_owned(),
        // Last, so scripts reading the earlier columns by position keep working.
        "OWNER".to_owned(),
        "LEADER".to_owned(),
        "REPLICAS".to_owned(),
        "ISR".to_owned(),
    ]];
    let mut parts = d.partition_details.clone();
    parts.sort_by_key(|p| p.partition);
    for p in parts {
        rows.push(vec![
            p.partition.to_string(),
            p.start_offset.to_string(),
            p.end_offset.to_string(),
            p.size_bytes.to_string(),
            p.segment_count.to_string(),
            range(p.local_start_offset, p.end_offset),
            p.local_size_bytes.to_string(),
            range(p.remote_start_offset, p.remote_end_offset),
            p.remote_size_bytes.to_string(),
            p.owner.map_or_else(|| "unowned".to_owned(), |o| o.to_string()),
            p.leader.map_or_else(|| "-".to_owned(), |l| l.to_string()),
            ids(&p.replicas),
            ids(&p.isr),
        ]);
    }
    out.push_str(&table(&rows));
    out
}

/// Broker ids `1,2,3`, or `-` when none.
fn ids(ids: &[u64]) -> String {
    if ids.is_empty() { "-".into() } else { ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",") }
}

/// An offset range `start..end`, or `-` when empty.
fn range(start: u64, end: u64) -> String {
    if start >= end { "-".into() } else { format!("{start}..{end}") }
}

/// Left-aligned columns separated by two spaces.
pub(crate) fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_client::{PartitionDescription, TopicConfig};

    #[test]
    fn describe_shows_settings_and_partitions() {
        let d = TopicDescription {
            tenant: "default".into(),
            name: "orders".into(),
            topic_id: "abc".into(),
            partitions: 2,
            config: Some(TopicConfig {
                retention_ms: Some(-1),
                retention_bytes: Some(10 << 30),
                segment_bytes: Some(64 << 20),
                segment_ms: Some(7 * 86_400_000),
                durability: Durability::Fsync as i32,
                local_retention_ms: Some(3_600_000),
                local_retention_bytes: Some(-1),
            }),
            created_at_ms: 1_700_000_000_000,
            replication_factor: 3,
            partition_details: vec![
                PartitionDescription {
                    partition: 1,
                    start_offset: 0,
                    end_offset: 12345,
                    size_bytes: 999,
                    segment_count: 3,
                    local_start_offset: 10000,
                    local_size_bytes: 300,
                    remote_start_offset: 0,
                    remote_end_offset: 11000,
                    remote_size_bytes: 800,
                    remote_segment_count: 2,
                    owner: Some(2),
                    elsewhere: false,
                    leader: Some(1),
                    replicas: vec![2, 1, 3],
                    isr: vec![1, 2],
                },
                PartitionDescription { partition: 0, ..Default::default() },
            ],
        };
        let text = describe(&d);
        assert!(text.contains("retention:       infinite"), "{text}");
        assert!(text.contains("retention bytes: 10.0 GiB (10737418240 B)"), "{text}");
        assert!(text.contains("durability:      fsync"), "{text}");
        assert!(text.contains("created:         2023-11-14T22:13:20Z"), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        let header = lines.iter().position(|l| l.starts_with("PARTITION")).unwrap();
        assert!(text.contains("local retention: 1h"), "{text}");
        assert!(text.contains("local bytes:     same as retention bytes"), "{text}");
        assert_eq!(
            lines[header + 1].split_whitespace().collect::<Vec<_>>(),
            ["0", "0", "0", "0", "0", "-", "0", "-", "0", "unowned", "-", "-", "-"]
        );
        assert_eq!(
            lines[header + 2].split_whitespace().collect::<Vec<_>>(),
            ["1", "0", "12345", "999", "3", "10000..12345", "300", "0..11000", "800", "2", "1", "2,1,3", "1,2"]
        );
        assert!(text.contains("replication:     3"), "{text}");
    }

    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            vec!["a".to_owned(), "1".to_owned(), "fsync".to_owned()],
            vec!["longer".to_owned(), "12".to_owned(), "none".to_owned()],
        ];
        assert_eq!(table(&rows), "a       1   fsync\nlonger  12  none\n");
    }
}
