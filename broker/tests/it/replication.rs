//! Replicated partitions across three broker processes whose peer links
//! run through proxies: an isolated partition leader stops acknowledging,
//! the majority elects a new leader and goes on, and after healing every
//! replica holds the same log, without the isolated leader's unacknowledged
//! batch (the old leader, behind the new leader's purge point, catches up by
//! installing a snapshot).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use strata_proto::v1::{CreateTopicRequest, DescribeTopicRequest, ErrorCode};
use strata_testkit::{eventually, http_get};

use crate::cluster::{Member, admin, agreed, behind_proxies, isolate};
use crate::harness::{batch_of, log_client, produce_req, read_partition, value};

const DEADLINE: Duration = Duration::from_secs(60);

/// The value of the sample `name{...partition 0 of rep...}` in broker
/// `http`'s /metrics, if exported.
async fn sample(http: SocketAddr, name: &str) -> Option<i64> {
    let body = http_get(http, "/metrics").await;
    body.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains("topic=\"rep\"") && l.contains("partition=\"0\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Partition 0's leader as broker `addr` reports it, and its end offset.
async fn leader(addr: SocketAddr, topic: &str) -> Option<(u64, u64)> {
    let mut c = admin(addr).await?;
    let d = c.describe_topic(DescribeTopicRequest { name: topic.into(), ..Default::default() }).await.ok()?;
    let p = d.into_inner().partition_details.into_iter().find(|p| p.partition == 0)?;
    Some((p.leader?, p.end_offset))
}

async fn produce(addr: SocketAddr, topic: &str, values: &[String]) -> Result<u64, tonic::Status> {
    let mut c = log_client(addr).await;
    let r = c.produce(produce_req(topic, 0, batch_of(values))).await?;
    Ok(r.into_inner().base_offset)
}

fn values(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_partition_leader_stops_acknowledging_and_its_tail_is_dropped_on_healing() {
    let (members, proxies) = behind_proxies(3).await;
    let all: Vec<&Member> = members.iter().collect();
    agreed(&all, 3, DEADLINE).await;
    let mut c = admin(members[0].addr()).await.expect("admin");
    let req = CreateTopicRequest { name: "rep".into(), partitions: 1, replication_factor: 3, ..Default::default() };
    let d = c.create_topic(req).await.expect("topic created").into_inner();
    assert_eq!(d.replication_factor, 3);
    let addr0 = members[0].addr();
    let (old, _) = eventually("partition 0 has a leader", DEADLINE, || leader(addr0, "rep")).await;
    let x = members.iter().position(|m| m.id == old).expect("a member");
    let mut acked = Vec::new();
    for round in 0..20 {
        let v = values(&format!("before{round}"), 10);
        assert_eq!(produce(members[x].addr(), "rep", &v).await.expect("acknowledged"), round * 10);
        acked.extend(v);
    }

    // Isolate the leader: it keeps running but reaches no peer.
    isolate(&members, &proxies, x);
    let started = Instant::now();
    let err = produce(members[x].addr(), "rep", &values("lost", 10)).await.expect_err("not acknowledged");
    println!("produce on the isolated leader: {:?} after {:?}", err.code(), started.elapsed());
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert_eq!(strata_proto::error_code(&err), ErrorCode::NoPartitionQuorum, "{err:?}");

    // The majority elects a new leader and acknowledges.
    let other = members[(x + 1) % 3].addr();
    let (new, _) = eventually("a new leader on the majority side", DEADLINE, || async move {
        leader(other, "rep").await.filter(|(l, _)| *l != old)
    })
    .await;
    let y = members.iter().position(|m| m.id == new).expect("a member");
    // More entries than the leader keeps after a snapshot (256 + 64): the
    // old leader comes back behind the purge point and installs a snapshot,
    // fetching the batches it lacks.
    for round in 0..400 {
        let v = values(&format!("after{round}"), 2);
        produce(members[y].addr(), "rep", &v).await.expect("acknowledged by the majority");
        acked.extend(v);
    }

    // The new leader reports the old one out of sync (800 entries behind),
    // and a leader change.
    let http_y = members[y].http.expect("http");
    assert_eq!(sample(http_y, "strata_partition_leader").await, Some(1));
    assert_eq!(sample(http_y, "strata_partition_under_replicated").await, Some(1));
    assert!(sample(http_y, "strata_partition_replication_lag").await.is_some_and(|l| l > 128));
    assert!(sample(http_y, "strata_partition_leader_changes_total").await.is_some_and(|n| n >= 1));

    // Heal: the old leader follows and holds exactly the acknowledged
    // records, in order, like every replica. (Its election attempts while
    // cut off raised its term, so rejoining may move the leadership once
    // more, to either replica of the majority: openraft 0.9 has no pre-vote.)
    for p in &proxies {
        p.restore();
    }
    let n = acked.len() as u64;
    for m in &members {
        let addr = m.addr();
        eventually("every replica caught up", DEADLINE, || async move {
            leader(addr, "rep").await.filter(|(_, end)| *end == n)
        })
        .await;
        let mut client = log_client(addr).await;
        let got: Vec<String> = read_partition(&mut client, "rep", 0, 0).await.iter().map(value).collect();
        assert_eq!(got, acked, "broker {}: the acknowledged records only", m.id);
    }
    // Whoever leads now reports every replica in sync.
    let https: Vec<std::net::SocketAddr> = members.iter().map(|m| m.http.expect("http")).collect();
    eventually("every replica in sync again", DEADLINE, || {
        let https = https.clone();
        async move {
            for h in https {
                if sample(h, "strata_partition_leader").await == Some(1)
                    && sample(h, "strata_partition_under_replicated").await == Some(0)
                    && sample(h, "strata_partition_replication_lag").await == Some(0)
                {
                    return Some(());
                }
            }
            None
        }
    })
    .await;
}
