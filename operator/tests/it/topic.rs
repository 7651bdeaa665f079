//! Topic reconciles: fake Kubernetes API, real broker on loopback.

use std::time::Duration;

use kube::runtime::controller::Action;
use serde_json::{Value, json};
use strata_client::{Message, Retention, TopicOptions};
use strata_operator::topic::Topic;

use crate::{CLUSTER_NS, NS, TestEnv, cluster_path, path_of};

fn topic_json(name: &str, partitions: u32, extra: Value) -> Value {
    let mut spec = json!({"clusterRef": {"name": "main", "namespace": CLUSTER_NS}, "tenant": "default", "partitions": partitions, "retention": "7d"});
    crate::fake_api::merge(&mut spec, &extra);
    json!({"apiVersion": "strata.dev/v1alpha1", "kind": "Topic", "metadata": {"name": name, "namespace": NS}, "spec": spec})
}

fn topic_path(name: &str) -> String {
    path_of("strata.dev/v1alpha1", "Topic", NS, name)
}

const WEEK_MS: i64 = 7 * 24 * 3600 * 1000;

#[tokio::test]
async fn a_topic_applied_before_its_cluster_waits_then_converges() {
    let env = TestEnv::with_broker().await;
    let path = topic_path("orders");
    env.fake.insert(topic_json("orders", 3, json!({})));

    // No cluster yet: a clear condition, an event, a requeue, no finalizer.
    let action = env.reconcile::<Topic>(&path).await;
    env.assert_not_ready(&path, "ClusterNotFound", "strata/main");
    assert!(env.fake.event_reasons().contains(&"ClusterNotFound".to_owned()));
    assert!(format!("{action:?}").contains("requeue_after: Some"), "{action:?}");
    assert!(env.finalizers(&path).is_empty());

    // The cluster arrives, the tenant not yet.
    env.fake.insert(crate::cluster_json("main"));
    env.reconcile::<Topic>(&path).await;
    assert_eq!(env.ready(&path).1, "TenantNotFound");

    env.fake.insert(crate::tenant_json("default", &[NS]));
    env.reconcile::<Topic>(&path).await;
    let (status, reason, _) = env.ready(&path);
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Reconciled"));
    assert_eq!(env.finalizers(&path), vec!["strata.dev/cleanup".to_owned()]);

    let desc = env.client().await.describe_topic("orders").await.unwrap();
    assert_eq!(desc.partitions, 3);
    assert_eq!(desc.config.unwrap().retention_ms, Some(WEEK_MS));
    let obj = env.fake.get(&path).unwrap();
    assert_eq!(obj["status"]["partitions"], 3);
    assert_eq!(obj["status"]["observedGeneration"], 1);
    assert_eq!(obj["status"]["partitionOffsets"].as_array().unwrap().len(), 3);
    assert!(env.fake.event_reasons().contains(&"Ready".to_owned()));

    // Status went through server-side apply with our field manager.
    let status_write = env.fake.requests().into_iter().rfind(|r| r.path.ends_with("/status")).unwrap();
    assert!(status_write.content_type.starts_with("application/apply-patch"), "{}", status_write.content_type);
    assert!(status_write.query.contains("fieldManager=strata-operator"), "{}", status_write.query);
}

#[tokio::test]
async fn spec_updates_are_applied_and_out_of_band_changes_are_reverted_and_reported() {
    let env = TestEnv::with_broker().await;
    env.insert_cluster_and_tenant();
    let path = topic_path("orders");
    env.fake.insert(topic_json("orders", 3, json!({})));
    env.reconcile::<Topic>(&path).await;
    assert_eq!(env.ready(&path).0, "True");
    let client = env.client().await;

    // Update: more partitions and another retention.
    env.fake.update_spec(&path, json!({"partitions": 5, "retention": "1d"}));
    env.reconcile::<Topic>(&path).await;
    let desc = client.describe_topic("orders").await.unwrap();
    assert_eq!(desc.partitions, 5);
    assert_eq!(desc.config.unwrap().retention_ms, Some(24 * 3600 * 1000));
    assert_eq!(env.condition(&path, "Drifted").unwrap().0, "False", "a spec change is not drift");
    assert!(env.fake.event_reasons().contains(&"Updated".to_owned()));

    // Out of band: someone changes the retention with the CLI.
    client
        .update_topic("orders", TopicOptions { retention: Some(Retention::Infinite), ..Default::default() })
        .await
        .unwrap();
    env.fake.clear_requests();
    env.reconcile::<Topic>(&path).await;
    assert_eq!(client.describe_topic("orders").await.unwrap().config.unwrap().retention_ms, Some(24 * 3600 * 1000));
    let (status, reason, message) = env.condition(&path, "Drifted").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Drifted"));
    assert!(message.contains("retention_ms -1 -> 86400000"), "{message}");
    let events = env.fake.events();
    let drifted = events.iter().find(|e| e["reason"] == "Drifted").expect("a Drifted event");
    assert_eq!(drifted["type"], "Warning");
    assert_eq!(env.ready(&path).0, "True");

    // The reconciles that follow at once (the one our own status write
    // triggers, a status refresh) find nothing to correct: the drift stays
    // reported, as the README promises.
    env.reconcile::<Topic>(&path).await;
    let (status, reason, message) = env.condition(&path, "Drifted").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Drifted"), "{message}");
    assert!(message.contains("retention_ms -1 -> 86400000"), "{message}");

    // Out of band: the topic is deleted; it comes back and that is drift too.
    client.delete_topic("orders").await.unwrap();
    env.reconcile::<Topic>(&path).await;
    assert_eq!(client.describe_topic("orders").await.unwrap().partitions, 5);
    assert!(env.condition(&path, "Drifted").unwrap().2.contains("created again"));

    // The resync a period later finds nothing to correct: in sync again.
    crate::time_passes(Duration::from_secs(301)).await;
    env.reconcile::<Topic>(&path).await;
    let (status, reason, _) = env.condition(&path, "Drifted").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("False", "InSync"));
}

#[tokio::test]
async fn counts_refresh_well_before_the_resync_and_unchanged_status_is_not_rewritten() {
    let env = TestEnv::with_broker().await;
    env.insert_cluster_and_tenant();
    let path = topic_path("orders");
    env.fake.insert(topic_json("orders", 1, json!({})));
    let action = env.reconcile::<Topic>(&path).await;
    assert_eq!(format!("{action:?}"), format!("{:?}", Action::requeue(Duration::from_secs(30))));
    assert_eq!(env.fake.get(&path).unwrap()["status"]["messages"], 0);

    let producer = env.client().await.producer("orders").await.unwrap();
    for i in 0..3 {
        producer.send(Message::new(format!("m{i}"))).await.unwrap();
    }
    producer.close().await.unwrap();
    env.reconcile::<Topic>(&path).await;
    assert_eq!(env.fake.get(&path).unwrap()["status"]["messages"], 3);

    // Nothing moved: no status write (each write is a watch event).
    env.fake.clear_requests();
    env.reconcile::<Topic>(&path).await;
    assert!(env.fake.requests().iter().all(|r| !r.path.ends_with("/status")), "{:?}", env.fake.requests());
}

#[tokio::test]
async fn a_partition_decrease_is_refused_with_a_clear_condition() {
    let (env, client) = TestEnv::with_topic("orders", 4).await;
    let path = topic_path("orders");
    env.fake.insert(topic_json("orders", 2, json!({})));
    let action = env.reconcile::<Topic>(&path).await;
    env.assert_not_ready(&path, "PartitionDecreaseRefused", "spec.partitions is 2 but topic orders has 4 partitions");
    assert!(env.fake.event_reasons().contains(&"PartitionDecreaseRefused".to_owned()));
    assert!(format!("{action:?}").contains("requeue_after: Some"));
    assert_eq!(client.describe_topic("orders").await.unwrap().partitions, 4);
}

#[tokio::test]
async fn bad_specs_give_precise_reasons_and_events_never_errors() {
    let env = TestEnv::with_broker().await;
    env.insert_cluster_and_tenant();

    // Invalid retention.
    let bad = topic_path("bad-retention");
    env.fake.insert(topic_json("bad-retention", 1, json!({"retention": "a fortnight"})));
    env.reconcile::<Topic>(&bad).await;
    let (status, reason, message) = env.ready(&bad);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidSpec"));
    assert!(message.contains("spec.retention") && message.contains("a fortnight"), "{message}");
    let event = env.fake.events().into_iter().find(|e| e["reason"] == "InvalidSpec").unwrap();
    assert_eq!(event["type"], "Warning");

    // A Tenant resource that is not on the broker yet: the broker's answer.
    env.fake.insert(crate::tenant_json("team-b", &[NS]));
    let path = topic_path("payments");
    env.fake.insert(topic_json("payments", 1, json!({"tenant": "team-b"})));
    env.reconcile::<Topic>(&path).await;
    let (_, reason, message) = env.ready(&path);
    assert_eq!(reason, "TenantNotFound");
    assert!(message.contains("team-b"), "{message}");

    // An unknown tenant altogether.
    let path = topic_path("nowhere");
    env.fake.insert(topic_json("nowhere", 1, json!({"tenant": "nope"})));
    env.reconcile::<Topic>(&path).await;
    assert_eq!(env.ready(&path).1, "TenantNotFound");

    // A namespace the tenant does not allow.
    env.fake.insert(crate::tenant_json("closed", &[]));
    let path = topic_path("sneaky");
    env.fake.insert(topic_json("sneaky", 1, json!({"tenant": "closed"})));
    env.reconcile::<Topic>(&path).await;
    let (_, reason, message) = env.ready(&path);
    assert_eq!(reason, "NamespaceNotAllowed");
    assert!(message.contains("does not allow namespace apps"), "{message}");

    // Repeating a failing reconcile does not repeat the event, and backs
    // off: doubling once per retry that was due, not once per reconcile (our
    // own status write triggers one at once, which must not count again).
    let before = env.fake.events().len();
    let sneaky = path;
    let path = topic_path("late");
    env.fake.insert(topic_json("late", 1, json!({"tenant": "closed"})));
    let first = env.reconcile::<Topic>(&path).await;
    assert_eq!(format!("{first:?}"), format!("{:?}", Action::requeue(Duration::from_secs(1))));
    let at_once = env.reconcile::<Topic>(&path).await;
    assert!(requeue_secs(&at_once) <= 1.0, "{at_once:?}");
    crate::time_passes(Duration::from_millis(1100)).await;
    let due = env.reconcile::<Topic>(&path).await;
    assert_eq!(format!("{due:?}"), format!("{:?}", Action::requeue(Duration::from_secs(2))));
    env.reconcile::<Topic>(&sneaky).await;
    assert_eq!(env.fake.events().len(), before + 1, "one event for the new Topic, none for repeats");
}

fn requeue_secs(action: &Action) -> f64 {
    let text = format!("{action:?}");
    let d = text.split("Some(").nth(1).and_then(|t| t.split(')').next()).unwrap_or_default();
    humantime::parse_duration(d).map(|d| d.as_secs_f64()).unwrap_or_else(|_| {
        d.strip_suffix("ms")
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v / 1000.0)
            .or_else(|| d.strip_suffix('s').and_then(|v| v.parse().ok()))
            .unwrap_or(f64::MAX)
    })
}

#[tokio::test]
async fn pause_stops_broker_calls_until_removed() {
    let env = TestEnv::with_broker().await;
    env.insert_cluster_and_tenant();
    let path = topic_path("orders");
    env.fake.insert(topic_json("orders", 1, json!({})));
    env.reconcile::<Topic>(&path).await;
    let client = env.client().await;

    env.fake.update_meta(&path, json!({"annotations": {"strata.dev/paused": "true"}}));
    env.fake.update_spec(&path, json!({"partitions": 2}));
    env.reconcile::<Topic>(&path).await;
    assert_eq!(client.describe_topic("orders").await.unwrap().partitions, 1);
    assert_eq!(env.condition(&path, "Paused").unwrap().0, "True");
    assert_eq!(env.ready(&path).1, "Paused");
    assert!(env.fake.event_reasons().contains(&"Paused".to_owned()));

    env.fake.update_meta(&path, json!({"annotations": {"strata.dev/paused": null}}));
    env.reconcile::<Topic>(&path).await;
    assert_eq!(client.describe_topic("orders").await.unwrap().partitions, 2);
    assert!(env.condition(&path, "Paused").is_none());
    assert!(env.fake.event_reasons().contains(&"Resumed".to_owned()));
}

#[tokio::test]
async fn delete_policy_delete_guards_data_and_honours_force() {
    let env = TestEnv::with_broker().await;
    env.insert_cluster_and_tenant();
    let path = topic_path("orders");
    env.fake.insert(topic_json("orders", 1, json!({"deletionPolicy": "Delete"})));
    env.reconcile::<Topic>(&path).await;
    let client = env.client().await;
    let producer = client.producer("orders").await.unwrap();
    producer.send(Message::new("keep me")).await.unwrap();
    producer.close().await.unwrap();

    env.fake.delete(&path);
    env.reconcile::<Topic>(&path).await;
    env.assert_not_ready(&path, "DeletionBlocked", "still holds 1 messages");
    assert!(env.fake.get(&path).is_some(), "the finalizer holds the resource");
    assert!(client.describe_topic("orders").await.is_ok());

    env.fake.update_meta(&path, json!({"annotations": {"strata.dev/force-delete": "true"}}));
    env.reconcile::<Topic>(&path).await;
    assert!(env.fake.get(&path).is_none(), "finalizer removed, object gone");
    assert!(client.describe_topic("orders").await.is_err());
    assert!(env.fake.event_reasons().contains(&"Deleted".to_owned()));

    // An empty topic needs no force.
    let path = topic_path("empty");
    env.fake.insert(topic_json("empty", 1, json!({})));
    env.reconcile::<Topic>(&path).await;
    env.fake.delete(&path);
    env.reconcile::<Topic>(&path).await;
    assert!(env.fake.get(&path).is_none());
    assert!(client.describe_topic("empty").await.is_err());
}

#[tokio::test]
async fn delete_policy_retain_keeps_the_topic() {
    let env = TestEnv::with_broker().await;
    env.insert_cluster_and_tenant();
    let path = topic_path("orders");
    env.fake.insert(topic_json("orders", 2, json!({"deletionPolicy": "Retain"})));
    env.reconcile::<Topic>(&path).await;
    env.fake.delete(&path);
    env.reconcile::<Topic>(&path).await;
    assert!(env.fake.get(&path).is_none());
    assert_eq!(env.client().await.describe_topic("orders").await.unwrap().partitions, 2);
    assert!(env.fake.event_reasons().contains(&"Retained".to_owned()));
}

#[tokio::test]
async fn the_finalizer_is_released_when_the_cluster_is_gone() {
    let env = TestEnv::without_broker().await;
    env.insert_cluster_and_tenant();
    let path = topic_path("orders");
    let mut obj = topic_json("orders", 1, json!({}));
    obj["metadata"]["finalizers"] = json!(["strata.dev/cleanup"]);
    env.fake.insert(obj);
    env.fake.remove(&cluster_path("main"));
    env.fake.delete(&path);
    assert!(env.fake.get(&path).is_some());
    env.reconcile::<Topic>(&path).await;
    assert!(env.fake.get(&path).is_none(), "the namespace is not stuck");
    assert!(env.fake.event_reasons().contains(&"FinalizerReleased".to_owned()));
}

#[tokio::test]
async fn local_retention_reaches_the_broker_and_status_shows_local_and_remote_ranges() {
    let env = TestEnv::with_broker().await;
    env.insert_cluster_and_tenant();
    let path = topic_path("orders");
    env.fake.insert(topic_json("orders", 2, json!({"localRetention": "1h", "localRetentionBytes": 1048576})));
    env.reconcile::<Topic>(&path).await;
    assert_eq!(env.ready(&path).0, "True", "{:?}", env.ready(&path));
    let config = env.client().await.describe_topic("orders").await.unwrap().config.unwrap();
    assert_eq!(config.local_retention_ms, Some(3_600_000));
    assert_eq!(config.local_retention_bytes, Some(1_048_576));
    let p = &env.fake.get(&path).unwrap()["status"]["partitionOffsets"][1];
    for field in ["localStartOffset", "localSizeBytes", "remoteStartOffset", "remoteEndOffset", "remoteSizeBytes"] {
        assert!(p[field].is_u64(), "{field} in {p}");
    }

    // Longer than the total retention: refused precisely, nothing changed.
    env.fake.update_spec(&path, json!({"localRetention": "30d"}));
    env.reconcile::<Topic>(&path).await;
    env.assert_not_ready(&path, "InvalidSpec", "spec.localRetention (30d) is longer than spec.retention (7d)");
}
