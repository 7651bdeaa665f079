//! `strata cluster describe [--json]`: the brokers of the cluster;
//! `strata cluster remove-broker ID`.

use strata_client::Client;
use strata_proto::v1::DescribeClusterResponse;

use super::ClusterCommand;
use super::topic::table;

pub(crate) async fn run(client: &Client, cmd: ClusterCommand) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Describe { json } => {
            let view = client.describe_cluster().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&to_json(&view))?);
            } else {
                print!("{}", render(&view));
            }
        }
        ClusterCommand::RemoveBroker { id } => {
            client.remove_broker(id).await?;
            println!("removed broker {id}");
        }
    }
    Ok(())
}

fn partitions(p: Option<u32>) -> String {
    p.map_or_else(|| "-".to_owned(), |n| n.to_string())
}

/// The table: a header, then one row per broker; `*` marks the metadata leader.
fn render(view: &DescribeClusterResponse) -> String {
    let mut rows = vec![["ID", "ADDRESS", "ZONE", "STATE", "LEADER", "PARTITIONS"].map(String::from).to_vec()];
    for b in &view.brokers {
        rows.push(vec![
            b.id.to_string(),
            b.address.clone(),
            if b.zone.is_empty() { "-".into() } else { b.zone.clone() },
            b.state.clone(),
            if b.metadata_leader { "*".into() } else { String::new() },
            partitions(b.partitions),
        ]);
    }
    let mut out = table(&rows);
    if view.leader_id.is_none() {
        out.push_str("no metadata leader");
        if view.formation.starts_with("waiting") {
            out.push_str(&format!(" ({})", view.formation));
        }
        out.push('\n');
    }
    out
}

fn to_json(view: &DescribeClusterResponse) -> serde_json::Value {
    serde_json::json!({
        "clustered": view.clustered,
        "leader_id": view.leader_id,
        "answered_by": view.answered_by,
        "term": view.term,
        "formation": view.formation,
        "brokers": view.brokers.iter().map(|b| serde_json::json!({
            "id": b.id,
            "address": b.address,
            "zone": b.zone,
            "state": b.state,
            "metadata_leader": b.metadata_leader,
            "partitions": b.partitions,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use strata_proto::v1::ClusterBroker;

    use super::*;

    #[test]
    fn table_marks_the_leader_and_json_has_every_field() {
        let broker = |id: u64, leader: bool| ClusterBroker {
            id,
            address: format!("b{id}:7070"),
            zone: String::new(),
            state: if leader { "leader".into() } else { "follower".into() },
            metadata_leader: leader,
            partitions: None,
        };
        let view = DescribeClusterResponse {
            clustered: true,
            brokers: vec![broker(0, false), broker(1, true)],
            leader_id: Some(1),
            answered_by: 0,
            term: 3,
            formation: "formed".into(),
            unowned_partitions: 0,
        };
        let text = render(&view);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("ID") && lines[0].contains("PARTITIONS"), "{text}");
        assert!(lines[2].starts_with("1 ") && lines[2].contains("leader") && lines[2].contains('*'), "{text}");
        assert!(!lines[1].contains('*'), "{text}");
        let json = to_json(&view);
        assert_eq!(json["leader_id"], 1);
        assert_eq!(json["brokers"][1]["metadata_leader"], true);
        assert_eq!(json["brokers"][0]["partitions"], serde_json::Value::Null);
        let none = DescribeClusterResponse { leader_id: None, ..view };
        assert!(render(&none).ends_with("no metadata leader\n"));
    }
}
