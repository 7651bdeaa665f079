//! Changing a cluster's members, with real broker processes on loopback: a
//! standalone broker grows into a cluster keeping every topic, record and
//! queued message; a new broker joins a formed cluster and placement uses
//! it; a broker gone for good is removed by a cluster admin and what it
//! owned is reported unowned.

use std::collections::BTreeSet;
use std::time::Duration;

use strata_proto::v1::{ErrorCode, QueueConfig, RemoveBrokerRequest};
use strata_testkit::{eventually, wait_until};

use crate::cluster::{Member, admin, agreed, create_topic, describe, members, owners, topic_partitions};
use crate::harness::{BrokerProcess, batch_of, log_client, produce_req, read_partition, value};
use crate::queue;

fn seeds(ms: &[Member]) -> String {
    ms.iter().map(|m| m.addr().to_string()).collect::<Vec<_>>().join(",")
}

/// The set of owners of `topic`'s partitions as broker `at` reports them.
async fn owner_ids(at: std::net::SocketAddr, topic: &str) -> Option<BTreeSet<u64>> {
    owners(at, topic).await?.into_iter().map(|(o, _)| o).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_broker_grows_into_a_cluster_keeping_its_data() {
    let mut ms = members(3, "5s");
    // Broker 1's data directory first serves a standalone broker: a topic of
    // three partitions with 50 records each, and a queue of five messages.
    let written: Vec<Vec<String>> = (0..3).map(|p| (0..50).map(|i| format!("p{p}-{i}")).collect()).collect();
    {
        let mut standalone = BrokerProcess::start(ms[0].dir.path(), &[]);
        let addr = standalone.addr;
        create_topic(addr, "orders", 3).await.unwrap();
        let mut log = log_client(addr).await;
        for (p, values) in written.iter().enumerate() {
            log.produce(produce_req("orders", p as u32, batch_of(values))).await.unwrap();
        }
        let mut q = queue::queues(addr).await;
        queue::create(&mut q, "jobs", QueueConfig::default()).await;
        queue::send(&mut q, "jobs", (0..5).map(|i| queue::text(&format!("job-{i}"))).collect()).await;
        // A standalone broker has no members to remove.
        let e = admin(addr).await.unwrap().remove_broker(RemoveBrokerRequest { broker_id: 1 }).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        standalone.kill9();
    }

    // The same directory starts as broker 1 of three; brokers 2 and 3 are new.
    let peers = seeds(&ms);
    for m in ms.iter_mut() {
        m.start(&peers);
    }
    let all: Vec<&Member> = ms.iter().collect();
    let (leader, brokers) = agreed(&all, 3, Duration::from_secs(60)).await;
    assert_eq!(brokers.iter().map(|b| b.0).collect::<Vec<_>>(), [1, 2, 3]);
    println!("grew into one cluster of three; metadata leader is broker {leader}");

    // The standalone partitions are broker 1's (its disk holds them), as
    // every broker reports, and every record reads back from it.
    let adopted = vec![(Some(1), ms[0].addr().to_string()); 3];
    for m in &ms {
        let (addr, adopted) = (m.addr(), adopted.clone());
        wait_until("every broker to report broker 1 as the owner", Duration::from_secs(15), || {
            let adopted = adopted.clone();
            async move { owners(addr, "orders").await == Some(adopted) }
        })
        .await;
    }
    let mut log = log_client(ms[0].addr()).await;
    for (p, values) in written.iter().enumerate() {
        let got: Vec<String> = read_partition(&mut log, "orders", p as u32, 0).await.iter().map(value).collect();
        assert_eq!(&got, values, "partition {p}");
    }
    // The queued messages are all there, served by broker 1.
    let mut q = queue::queues(ms[0].addr()).await;
    let got = queue::receive(&mut q, "jobs", 10, 2_000, None).await;
    let mut bodies: Vec<String> = got.iter().map(queue::body).collect();
    bodies.sort();
    assert_eq!(bodies, (0..5).map(|i| format!("job-{i}")).collect::<Vec<_>>());
    queue::ack(&mut q, "jobs", &got).await;

    // New partitions go to the least-loaded brokers: the new ones (broker 1
    // holds three partitions and a queue).
    create_topic(ms[1].addr(), "fresh", 4).await.unwrap();
    let at = ms[2].addr();
    wait_until("the new topic placed on the new brokers", Duration::from_secs(15), || async move {
        owner_ids(at, "fresh").await == Some(BTreeSet::from([2, 3]))
    })
    .await;
    assert_eq!(describe(ms[1].addr()).await.unwrap().unowned_partitions, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_joins_a_formed_cluster_and_one_gone_for_good_is_removed() {
    let mut ms = members(4, "5s");
    let founding = seeds(&ms[..3]);
    let grown = seeds(&ms);
    let (founders, rest) = ms.split_at_mut(3);
    let newcomer = &mut rest[0];
    for m in founders.iter_mut() {
        m.start(&founding);
    }
    let three: Vec<&Member> = founders.iter().collect();
    agreed(&three, 3, Duration::from_secs(30)).await;
    create_topic(founders[0].addr(), "before", 3).await.unwrap();

    // Broker 4 starts with the grown seed list and is admitted as a voter.
    newcomer.start(&grown);
    let all: Vec<&Member> = founders.iter().chain([&*newcomer]).collect();
    let (_, brokers) = agreed(&all, 4, Duration::from_secs(60)).await;
    assert_eq!(brokers.iter().map(|b| b.0).collect::<Vec<_>>(), [1, 2, 3, 4]);
    let at = newcomer.addr();
    wait_until("the catalog on the new broker", Duration::from_secs(15), || async move {
        topic_partitions(at, "before").await == Some(3)
    })
    .await;
    let http = newcomer.http.unwrap();
    wait_until("/readyz 200 on the new broker", Duration::from_secs(15), || async move {
        strata_testkit::http(http, "GET /readyz HTTP/1.1").is_some_and(|l| l.contains(" 200"))
    })
    .await;
    // Placement counts it: a four-partition topic gives it one.
    create_topic(newcomer.addr(), "after", 4).await.unwrap();
    assert_eq!(owner_ids(founders[0].addr(), "after").await, Some(BTreeSet::from([1, 2, 3, 4])));

    // Broker 4 is gone for good: a cluster admin removes it; the three
    // agree, its one partition is reported unowned, and writes go on.
    newcomer.kill9();
    let mut a = admin(founders[1].addr()).await.unwrap();
    a.remove_broker(RemoveBrokerRequest { broker_id: 4 }).await.unwrap();
    let three: Vec<&Member> = founders.iter().collect();
    let (_, brokers) = agreed(&three, 3, Duration::from_secs(30)).await;
    assert_eq!(brokers.iter().map(|b| b.0).collect::<Vec<_>>(), [1, 2, 3]);
    let at = founders[2].addr();
    let unowned =
        eventually("the removed broker's partition reported unowned", Duration::from_secs(15), || async move {
            describe(at).await.map(|d| d.unowned_partitions).filter(|n| *n > 0)
        })
        .await;
    assert_eq!(unowned, 1);
    create_topic(founders[2].addr(), "later", 1).await.unwrap();

    // Removing a broker that is not a member: NOT_FOUND, UNKNOWN_BROKER.
    let e = a.remove_broker(RemoveBrokerRequest { broker_id: 9 }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert_eq!(strata_proto::error_code(&e), ErrorCode::UnknownBroker, "{e:?}");
}

/// A broker's zone comes from its zone file (where the operator mounts the
/// pod's zone annotation, copied from its node's topology label) and follows
/// it: a file that appears or changes is registered in the catalog, and
/// every broker reports the new zone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brokers_zone_follows_its_zone_file() {
    let zones = tempfile::tempdir().unwrap();
    let file = zones.path().join("zone");
    let mut ms = members(2, "5s");
    ms[1].zone_file = Some(file.clone());
    let peers = seeds(&ms);
    for m in ms.iter_mut() {
        m.start(&peers);
    }
    let all: Vec<&Member> = ms.iter().collect();
    agreed(&all, 2, Duration::from_secs(30)).await;
    let at = ms[0].addr();
    let zone_of_2 = || async move {
        let d = describe(at).await?;
        d.brokers.iter().find(|b| b.id == 2).map(|b| b.zone.clone())
    };
    // No file yet: the zone is not known.
    assert_eq!(zone_of_2().await.as_deref(), Some(""));
    for zone in ["zone-a", "zone-b"] {
        std::fs::write(&file, format!("{zone}\n")).unwrap();
        wait_until(&format!("broker 1 to report broker 2 in {zone}"), Duration::from_secs(20), || async {
            zone_of_2().await.as_deref() == Some(zone)
        })
        .await;
    }
    // The other broker has no zone file and no zone.
    let d = describe(ms[1].addr()).await.unwrap();
    let zones: Vec<(u64, String)> = d.brokers.iter().map(|b| (b.id, b.zone.clone())).collect();
    assert_eq!(zones, [(1, String::new()), (2, "zone-b".to_owned())]);
}
