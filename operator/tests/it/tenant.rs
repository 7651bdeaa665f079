//! Tenant reconciles: created on the broker, re-created when deleted out of
//! band, deletion refused while the tenant still owns topics.

use serde_json::json;
use strata_client::TopicOptions;
use strata_operator::tenant::Tenant;

use crate::{CLUSTER_NS, TestEnv, path_of};

#[tokio::test]
async fn tenants_are_created_kept_and_deleted_by_policy() {
    let env = TestEnv::with_broker().await;
    env.fake.insert(crate::cluster_json("main"));
    let mut t = crate::tenant_json("team-a", &["apps"]);
    t["spec"]["deletionPolicy"] = json!("Delete");
    env.fake.insert(t);
    let path = path_of("strata.dev/v1alpha1", "Tenant", CLUSTER_NS, "team-a");
    env.reconcile::<Tenant>(&path).await;
    assert_eq!(env.ready(&path).0, "True");
    let client = env.client().await;
    assert!(client.list_tenants().await.unwrap().iter().any(|t| t.name == "team-a"));

    // Deleted out of band: created again and reported.
    client.delete_tenant("team-a").await.unwrap();
    env.reconcile::<Tenant>(&path).await;
    assert!(client.list_tenants().await.unwrap().iter().any(|t| t.name == "team-a"));
    assert_eq!(env.condition(&path, "Drifted").unwrap().0, "True");

    // Deletion waits while the tenant owns a topic.
    client.with_tenant("team-a").create_topic("t", 1, TopicOptions::default()).await.unwrap();
    env.fake.delete(&path);
    env.reconcile::<Tenant>(&path).await;
    env.assert_not_ready(&path, "DeletionBlocked", "still owns resources");
    assert!(env.fake.get(&path).is_some());

    client.with_tenant("team-a").delete_topic("t").await.unwrap();
    env.reconcile::<Tenant>(&path).await;
    assert!(env.fake.get(&path).is_none());
    assert!(!client.list_tenants().await.unwrap().iter().any(|t| t.name == "team-a"));
}

#[tokio::test]
async fn a_tenants_quotas_reach_the_broker_and_follow_the_spec() {
    let env = TestEnv::with_broker().await;
    env.fake.insert(crate::cluster_json("main"));
    let mut t = crate::tenant_json("team-q", &["apps"]);
    t["spec"]["quotas"] = json!({"maxTopics": 2, "produceBytesPerSecond": "1MiB", "maxStoredBytes": "2GiB"});
    env.fake.insert(t);
    let path = path_of("strata.dev/v1alpha1", "Tenant", CLUSTER_NS, "team-q");
    env.reconcile::<Tenant>(&path).await;
    assert_eq!(env.ready(&path).0, "True");
    let client = env.client().await;
    let q = client.describe_tenant("team-q").await.unwrap().quotas.unwrap();
    assert_eq!((q.max_topics, q.produce_bytes_per_second, q.max_stored_bytes), (Some(2), Some(1 << 20), Some(2 << 30)));
    assert_eq!((q.max_queues, q.requests_per_second), (None, None), "unset means unlimited");
    // The broker enforces them: a third topic is refused.
    let tenant = client.with_tenant("team-q");
    for name in ["one", "two"] {
        tenant.create_topic(name, 1, TopicOptions::default()).await.unwrap();
    }
    let e = tenant.create_topic("three", 1, TopicOptions::default()).await.unwrap_err();
    assert!(e.to_string().contains("max_topics"), "{e}");

    // A changed spec replaces the set; a quota left out is lifted.
    env.fake
        .update_spec(&path, json!({"quotas": {"maxTopics": 3, "produceBytesPerSecond": null, "maxStoredBytes": null}}));
    env.reconcile::<Tenant>(&path).await;
    let q = client.describe_tenant("team-q").await.unwrap().quotas.unwrap();
    assert_eq!((q.max_topics, q.produce_bytes_per_second, q.max_stored_bytes), (Some(3), None, None));
    tenant.create_topic("three", 1, TopicOptions::default()).await.unwrap();

    // A size that is no size: InvalidSpec naming the field; the broker keeps the last good set.
    env.fake.update_spec(&path, json!({"quotas": {"maxTopics": 3, "maxStoredBytes": "lots"}}));
    env.reconcile::<Tenant>(&path).await;
    env.assert_not_ready(&path, "InvalidSpec", "spec.quotas.maxStoredBytes");
    assert_eq!(client.describe_tenant("team-q").await.unwrap().quotas.unwrap().max_topics, Some(3));
}
