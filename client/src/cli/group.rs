//! `strata group ...`: list, describe, reset and delete consumer groups.

use std::fmt::Write as _;

use strata_client::{Client, CommittedOffset, ErrorCode, GroupDescription, TopicPartitions};

use super::topic::table;
use super::{GroupCommand, ResetGroupArgs};

pub(crate) async fn run(client: &Client, cmd: GroupCommand) -> anyhow::Result<()> {
    match cmd {
        GroupCommand::List => {
            let mut groups = client.list_groups().await?;
            groups.sort_by(|a, b| a.group.cmp(&b.group));
            let rows: Vec<Vec<String>> =
                groups.iter().map(|g| vec![g.group.clone(), g.members.to_string(), g.state.clone()]).collect();
            super::show(table(&rows))
        }
        GroupCommand::Describe { group } => super::show(describe(&client.describe_group(&group).await?)),
        GroupCommand::Reset(args) => reset(client, args).await,
        GroupCommand::Delete { group } => {
            client.delete_group(&group).await.map_err(|e| with_hint(e, "stop its consumers first"))?;
            println!("deleted group {group}");
            Ok(())
        }
    }
}

async fn reset(client: &Client, args: ResetGroupArgs) -> anyhow::Result<()> {
    let offsets = client
        .reset_group_offsets(&args.group, &args.topic, args.to, &args.partitions, args.force)
        .await
        .map_err(|e| with_hint(e, "stop its consumers or pass --force"))?;
    super::show(offsets_table(&offsets))
}

/// Adds what to do to a "group has members" refusal.
fn with_hint(e: strata_client::Error, hint: &str) -> anyhow::Error {
    if e.error_code() == ErrorCode::GroupNotEmpty { anyhow::anyhow!("{e}; {hint}") } else { e.into() }
}

fn offsets_table(offsets: &[CommittedOffset]) -> String {
    let mut sorted = offsets.to_vec();
    sorted.sort();
    let mut rows = vec![vec!["TOPIC".to_owned(), "PARTITION".to_owned(), "OFFSET".to_owned()]];
    rows.extend(sorted.iter().map(|o| vec![o.topic.clone(), o.partition.to_string(), o.offset.to_string()]));
    table(&rows)
}

/// `topic:0,1,2 other:3`, or `-` when empty.
fn partitions_text(list: &[TopicPartitions]) -> String {
    let parts: Vec<String> = list
        .iter()
        .filter(|tp| !tp.partitions.is_empty())
        .map(|tp| {
            let mut ps = tp.partitions.clone();
            ps.sort_unstable();
            let ps: Vec<String> = ps.iter().map(u32::to_string).collect();
            format!("{}:{}", tp.topic, ps.join(","))
        })
        .collect();
    if parts.is_empty() { "-".to_owned() } else { parts.join(" ") }
}

/// The text of `group describe`: summary, members, then a partition table.
pub(crate) fn describe(d: &GroupDescription) -> String {
    let mut out = String::new();
    for (k, v) in [
        ("group", d.group.clone()),
        ("tenant", d.tenant.clone()),
        ("state", d.state.clone()),
        ("members", d.members.len().to_string()),
    ] {
        let _ = writeln!(out, "{:<9} {v}", format!("{k}:"));
    }
    if !d.members.is_empty() {
        out.push('\n');
        let mut rows = vec![vec![
            "MEMBER".to_owned(),
            "CLIENT".to_owned(),
            "GENERATION".to_owned(),
            "ASSIGNED".to_owned(),
            "REVOKING".to_owned(),
        ]];
        let mut members = d.members.clone();
        members.sort_by(|a, b| a.member_id.cmp(&b.member_id));
        for m in members {
            rows.push(vec![
                m.member_id.clone(),
                if m.client_id.is_empty() { "-".to_owned() } else { m.client_id.clone() },
                m.generation.to_string(),
                partitions_text(&m.assigned),
                partitions_text(&m.revoking),
            ]);
        }
        out.push_str(&table(&rows));
    }
    out.push('\n');
    let mut rows = vec![vec![
        "TOPIC".to_owned(),
        "PARTITION".to_owned(),
        "COMMITTED".to_owned(),
        "END".to_owned(),
        "LAG".to_owned(),
        "OWNER".to_owned(),
    ]];
    let mut partitions = d.partitions.clone();
    partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    for p in partitions {
        rows.push(vec![
            p.topic.clone(),
            p.partition.to_string(),
            if p.committed_offset < 0 { "-".to_owned() } else { p.committed_offset.to_string() },
            p.end_offset.to_string(),
            p.lag.to_string(),
            if p.member_id.is_empty() { "-".to_owned() } else { p.member_id.clone() },
        ]);
    }
    out.push_str(&table(&rows));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_client::{GroupMember, PartitionLag};

    #[test]
    fn describe_shows_members_and_lag() {
        let d = GroupDescription {
            tenant: "default".into(),
            group: "billing".into(),
            state: "Stable".into(),
            members: vec![GroupMember {
                member_id: "m-1".into(),
                client_id: "host/42".into(),
                generation: 3,
                assigned: vec![TopicPartitions { topic: "orders".into(), partitions: vec![1, 0] }],
                revoking: vec![],
            }],
            partitions: vec![
                PartitionLag {
                    topic: "orders".into(),
                    partition: 1,
                    committed_offset: -1,
                    end_offset: 7,
                    lag: 7,
                    member_id: "m-1".into(),
                },
                PartitionLag {
                    topic: "orders".into(),
                    partition: 0,
                    committed_offset: 5,
                    end_offset: 5,
                    lag: 0,
                    member_id: String::new(),
                },
            ],
        };
        let text = describe(&d);
        assert!(text.contains("state:    Stable"), "{text}");
        assert!(text.contains("m-1     host/42  3           orders:0,1  -"), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        let header = lines.iter().position(|l| l.starts_with("TOPIC")).unwrap();
        assert_eq!(lines[header + 1].split_whitespace().collect::<Vec<_>>(), ["orders", "0", "5", "5", "0", "-"]);
        assert_eq!(lines[header + 2].split_whitespace().collect::<Vec<_>>(), ["orders", "1", "-", "7", "7", "m-1"]);
    }

    #[test]
    fn offsets_are_printed_in_order() {
        let text = offsets_table(&[
            CommittedOffset { topic: "t".into(), partition: 1, offset: 9 },
            CommittedOffset { topic: "t".into(), partition: 0, offset: 4 },
        ]);
        assert_eq!(text, "TOPIC  PARTITION  OFFSET\nt      0          4\nt      1          9\n");
    }
}
