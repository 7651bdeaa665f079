//! Queue reconciles: fake Kubernetes API, real broker on loopback. Spec
//! validation, dead-letter loops, creation in any order, drift of settings
//! and bindings reverted and reported, deletion by policy with the guard.

use serde_json::{Value, json};
use strata_client::{BindingFilter, QueueMessage, QueueOptions};
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

    env.fake.insert(queue_json("ordered", json!({"fifo": true, "priorities": 10})));
    env.reconcile::<Queue>(&queue_path("ordered")).await;
    let (_, reason, message) = env.ready(&queue_path("ordered"));
    assert_eq!(reason, "InvalidSpec");
    assert!(message.contains("cannot also have priorities"), "{message}");

    env.fake.insert(queue_json("slow", json!({"visibilityTimeout": "whenever"})));
    env.reconcile::<Queue>(&queue_path("slow")).await;
    let (_, reason, message) = env.ready(&queue_path("slow"));
    assert_eq!(reason, "InvalidSpec");
    assert!(message.contains("spec.visibilityTimeout"), "{message}");
}

#[tokio::test]
async fn queues_converge_drift_is_reverted_and_deletion_is_guarded() {
    let (env, client) = TestEnv::with_topic("orders", 1).await;
    let mail = queue_path("mail");
    env.fake.insert(queue_json(
        "mail",
        json!({"deadLetterQueue": "mail-dlq", "maxDeliveries": 3, "fifo": true,
               "bindings": [{"topic": "orders", "pattern": "eu.*.#"}]}),
    ));

    // Applied before its dead-letter queue: waits with a clear message.
    env.reconcile::<Queue>(&mail).await;
    let (status, reason, message) = env.ready(&mail);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "DeadLetterQueueNotReady"), "waiting, not invalid");
    assert_eq!(message, "dead-letter queue mail-dlq does not exist yet; waiting for it");
    assert!(client.describe_queue("mail").await.is_err(), "nothing half made");

    env.fake.insert(queue_json("mail-dlq", json!({})));
    env.reconcile::<Queue>(&queue_path("mail-dlq")).await;
    env.reconcile::<Queue>(&mail).await;
    assert_eq!(env.ready(&mail).0, "True", "{:?}", env.ready(&mail));
    let desc = client.describe_queue("mail").await.unwrap();
    let config = desc.config.clone().unwrap();
    assert_eq!(config.visibility_timeout_ms, Some(30_000));
    assert_eq!(config.dead_letter_queue.as_deref(), Some("mail-dlq"));
    assert_eq!(config.max_deliveries, Some(3));
    assert_eq!(config.fifo, Some(true));
    assert_eq!(desc.bindings.len(), 1);

    // Out of band: a setting and a binding change.
    client
        .update_queue("mail", QueueOptions::new().visibility_timeout(std::time::Duration::from_secs(5)))
        .await
        .unwrap();
    client.unbind("mail", "orders", BindingFilter::pattern("eu.*.#")).await.unwrap();
    client.bind("mail", "orders", BindingFilter::all()).await.unwrap();
    env.reconcile::<Queue>(&mail).await;
    let desc = client.describe_queue("mail").await.unwrap();
    assert_eq!(desc.config.unwrap().visibility_timeout_ms, Some(30_000));
    assert_eq!(desc.bindings.len(), 1, "{:?} {:?}", desc.bindings, env.condition(&mail, "Drifted"));
    assert_eq!(desc.bindings[0].filter.clone().unwrap().pattern.as_deref(), Some("eu.*.#"));
    let (status, reason, message) = env.condition(&mail, "Drifted").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Drifted"));
    assert!(message.contains("visibility_timeout_ms 5000 -> 30000") && message.contains("binding"), "{message}");
    assert!(env.fake.event_reasons().contains(&"Drifted".to_owned()));

    // Depth in status; deletion refused while messages remain, unless forced.
    client.send_batch("mail", [QueueMessage::new("hello")]).await.unwrap();
    env.reconcile::<Queue>(&mail).await;
    assert_eq!(env.fake.get(&mail).unwrap()["status"]["visible"], 1);
    env.fake.delete(&mail);
    env.reconcile::<Queue>(&mail).await;
    let (_, reason, message) = env.ready(&mail);
    assert_eq!(reason, "DeletionBlocked");
    assert!(message.contains("still holds messages"), "{message}");
    assert!(client.describe_queue("mail").await.is_ok());
    env.fake.update_meta(&mail, json!({"annotations": {"strata.dev/force-delete": "true"}}));
    env.reconcile::<Queue>(&mail).await;
    assert!(env.fake.get(&mail).is_none());
    assert!(client.describe_queue("mail").await.is_err());

    // Retain keeps the broker queue.
    let dlq = queue_path("mail-dlq");
    env.fake.update_spec(&dlq, json!({"deletionPolicy": "Retain"}));
    env.reconcile::<Queue>(&dlq).await;
    env.fake.delete(&dlq);
    env.reconcile::<Queue>(&dlq).await;
    assert!(env.fake.get(&dlq).is_none());
    assert!(client.describe_queue("mail-dlq").await.is_ok());
}
