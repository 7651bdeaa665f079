//! Queue reconciles against the fake API: spec validation, dead-letter
//! loops across Queue resources, and the honest `Unsupported` state while
//! `strata-client` has no queue API.

use serde_json::{Value, json};
use strata_operator::queue::Queue;

use crate::{CLUSTER_NS, NS, TestEnv, path_of};

fn queue_json(name: &str, extra: Value) -> Value {
    let mut spec = json!({"clusterRef": {"name": "main", "namespace": CLUSTER_NS}, "tenant": "default", "visibilityTimeout": "30s"});
    crate::fake_api::merge(&mut spec, &extra);
    json!({"apiVersion": "strata.dev/v1alpha1", "kind": "Queue", "metadata": {"name": name, "namespace": NS}, "spec": spec})
}

fn queue_path(name: &str) -> String {
    path_of("strata.dev/v1alpha1", "Queue", NS, name)
}

#[tokio::test]
async fn dead_letter_loops_and_bad_durations_are_refused_precisely() {
    let env = TestEnv::with_broker().await;
    env.insert_cluster_and_tenant();
    env.fake.insert(queue_json("jobs", json!({"deadLetterQueue": "retry"})));
    env.fake.insert(queue_json("retry", json!({"deadLetterQueue": "jobs"})));
    env.reconcile::<Queue>(&queue_path("jobs")).await;
    let (status, reason, message) = env.ready(&queue_path("jobs"));
    assert_eq!((status.as_str(), reason.as_str()), ("False", "DeadLetterLoop"));
    assert_eq!(message, "dead-letter queues form a loop: jobs -> retry -> jobs");
    let event = env.fake.events().into_iter().find(|e| e["reason"] == "DeadLetterLoop").unwrap();
    assert_eq!(event["type"], "Warning");

    env.fake.insert(queue_json("slow", json!({"visibilityTimeout": "whenever"})));
    env.reconcile::<Queue>(&queue_path("slow")).await;
    let (_, reason, message) = env.ready(&queue_path("slow"));
    assert_eq!(reason, "InvalidSpec");
    assert!(message.contains("spec.visibilityTimeout"), "{message}");

    // A valid queue: the broker side waits for the client's queue API.
    env.fake.insert(queue_json("mail", json!({"fifo": true, "priorities": 10})));
    env.reconcile::<Queue>(&queue_path("mail")).await;
    assert_eq!(env.ready(&queue_path("mail")).1, "Unsupported");

    // Retain releases the resource without broker calls.
    env.fake.update_spec(&queue_path("mail"), json!({"deletionPolicy": "Retain"}));
    env.reconcile::<Queue>(&queue_path("mail")).await;
    env.fake.delete(&queue_path("mail"));
    env.reconcile::<Queue>(&queue_path("mail")).await;
    assert!(env.fake.get(&queue_path("mail")).is_none());
}
