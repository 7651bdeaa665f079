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
    let (status, reason, message) = env.ready(&path);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "DeletionBlocked"));
    assert!(message.contains("still owns resources"), "{message}");
    assert!(env.fake.get(&path).is_some());

    client.with_tenant("team-a").delete_topic("t").await.unwrap();
    env.reconcile::<Tenant>(&path).await;
    assert!(env.fake.get(&path).is_none());
    assert!(!client.list_tenants().await.unwrap().iter().any(|t| t.name == "team-a"));
}
