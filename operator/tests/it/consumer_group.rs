//! ConsumerGroup reconciles against a real broker: lag in status, the
//! declarative offset reset applied once per change, deletion by policy.

use serde_json::{Value, json};
use strata_client::{CommittedOffset, Message};
use strata_operator::consumer_group::ConsumerGroup;

use crate::{CLUSTER_NS, NS, TestEnv, path_of};

fn group_json(extra: Value) -> Value {
    let mut spec =
        json!({"clusterRef": {"name": "main", "namespace": CLUSTER_NS}, "tenant": "default", "topics": ["orders"]});
    crate::fake_api::merge(&mut spec, &extra);
    json!({"apiVersion": "strata.dev/v1alpha1", "kind": "ConsumerGroup", "metadata": {"name": "billing", "namespace": NS}, "spec": spec})
}

async fn committed(client: &strata_client::Client) -> u64 {
    client.group_offsets("billing", &[("orders", 0)]).await.unwrap()[0].offset
}

#[tokio::test]
async fn lag_is_reported_and_a_reset_is_applied_once_per_change() {
    let (env, client) = TestEnv::with_topic("orders", 1).await;
    let producer = client.producer("orders").await.unwrap();
    for i in 0..10 {
        producer.send(Message::new(format!("m{i}"))).await.unwrap();
    }
    producer.close().await.unwrap();
    let offset = |o| CommittedOffset { topic: "orders".into(), partition: 0, offset: o };
    client.commit_group_offsets("billing", &[offset(8)]).await.unwrap();

    let path = path_of("strata.dev/v1alpha1", "ConsumerGroup", NS, "billing");
    env.fake.insert(group_json(json!({})));
    env.reconcile::<ConsumerGroup>(&path).await;
    assert_eq!(env.ready(&path).0, "True");
    let obj = env.fake.get(&path).unwrap();
    assert_eq!(obj["status"]["totalLag"], 2);
    assert_eq!(obj["status"]["lag"][0]["committedOffset"], 8);

    // A reset to earliest is applied...
    env.fake.update_spec(&path, json!({"offsetReset": {"to": "Earliest"}}));
    env.reconcile::<ConsumerGroup>(&path).await;
    assert_eq!(committed(&client).await, 0);
    let obj = env.fake.get(&path).unwrap();
    assert_eq!(obj["status"]["totalLag"], 10);
    assert_eq!(obj["status"]["appliedResetGeneration"], 2);
    let hash = obj["status"]["appliedResetHash"].clone();
    assert!(hash.is_string());

    // ...once: consumers move on and a resync does not reset again.
    client.commit_group_offsets("billing", &[offset(5)]).await.unwrap();
    env.reconcile::<ConsumerGroup>(&path).await;
    assert_eq!(committed(&client).await, 5);
    assert_eq!(env.fake.get(&path).unwrap()["status"]["appliedResetHash"], hash);

    // A changed reset (here: a new target) is applied again.
    env.fake.update_spec(&path, json!({"offsetReset": {"to": "Offset", "offset": 7}}));
    env.reconcile::<ConsumerGroup>(&path).await;
    assert_eq!(committed(&client).await, 7);
    assert_eq!(env.fake.event_count("Updated"), 2, "one event per applied reset");

    // deletionPolicy Delete removes the committed offsets.
    env.fake.delete(&path);
    env.reconcile::<ConsumerGroup>(&path).await;
    assert!(env.fake.get(&path).is_none());
    assert!(client.group_offsets("billing", &[("orders", 0)]).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_reset_without_the_fields_it_needs_is_invalid() {
    let env = TestEnv::with_broker().await;
    env.insert_cluster_and_tenant();
    let path = path_of("strata.dev/v1alpha1", "ConsumerGroup", NS, "billing");
    env.fake.insert(group_json(json!({"offsetReset": {"to": "Timestamp"}})));
    env.reconcile::<ConsumerGroup>(&path).await;
    env.assert_not_ready(&path, "InvalidSpec", "timestampMs");
}
