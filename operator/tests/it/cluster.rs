//! BrokerCluster reconciles against the fake API: children applied with
//! server-side apply and owner references, drift taken back, status from the
//! StatefulSet, pause; the rendered config parsed by the broker's loader.

use std::sync::Arc;

use serde_json::json;
use strata_operator::broker_cluster::{self, BrokerCluster};

use crate::{CLUSTER_NS, TestEnv, cluster_path, path_of};

fn sts_path() -> String {
    path_of("apps/v1", "StatefulSet", CLUSTER_NS, "main")
}

async fn reconcile(env: &TestEnv) {
    let obj: BrokerCluster = serde_json::from_value(env.fake.get(&cluster_path("main")).unwrap()).unwrap();
    broker_cluster::reconcile(Arc::new(obj), env.ctx.clone()).await.unwrap();
}

#[tokio::test]
async fn children_are_applied_owned_and_drift_is_taken_back() {
    let env = TestEnv::without_broker().await;
    env.fake.insert(json!({
        "apiVersion": "strata.dev/v1alpha1", "kind": "BrokerCluster",
        "metadata": {"name": "main", "namespace": CLUSTER_NS},
        "spec": {"replicas": 3, "storage": {"size": "5Gi"}, "config": {"defaultRetention": "3d", "logLevel": "debug"}}
    }));
    reconcile(&env).await;

    for (api_version, kind, name) in [
        ("v1", "ServiceAccount", "main"),
        ("v1", "ConfigMap", "main-config"),
        ("v1", "Service", "main-headless"),
        ("v1", "Service", "main"),
        ("apps/v1", "StatefulSet", "main"),
        ("policy/v1", "PodDisruptionBudget", "main"),
    ] {
        let obj =
            env.fake.get(&path_of(api_version, kind, CLUSTER_NS, name)).unwrap_or_else(|| panic!("{kind} {name}"));
        let owner = &obj["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].as_str(), owner["name"].as_str(), owner["controller"].as_bool()),
            (Some("BrokerCluster"), Some("main"), Some(true))
        );
    }
    let applies: Vec<_> =
        env.fake.requests().into_iter().filter(|r| r.content_type.starts_with("application/apply-patch")).collect();
    assert!(applies.iter().all(|r| r.query.contains("fieldManager=strata-operator") && r.query.contains("force=true")));

    let (status, reason, message) = env.ready(&cluster_path("main"));
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Progressing"));
    assert_eq!(message, "0/3 brokers ready");

    // The ConfigMap holds a file the broker's own loader accepts.
    let cm = env.fake.get(&path_of("v1", "ConfigMap", CLUSTER_NS, "main-config")).unwrap();
    let text = cm["data"]["strata.toml"].as_str().unwrap();
    let config = strata_broker::Config::from_toml_str(text).unwrap();
    assert_eq!(config.server.listen.to_string(), "0.0.0.0:7070");
    assert_eq!(config.server.http_listen.to_string(), "0.0.0.0:7071");
    assert_eq!(config.storage.data_dir, std::path::PathBuf::from("/var/lib/strata"));
    assert_eq!(config.log.level, "debug");
    assert_eq!(
        config.topic_defaults.retention,
        strata_broker::config::Limit::Max(strata_broker::config::HumanDuration(std::time::Duration::from_secs(
            3 * 24 * 3600
        )))
    );

    // Someone scales the StatefulSet by hand: the next resync takes it back.
    env.fake.update_spec(&sts_path(), json!({"replicas": 1}));
    reconcile(&env).await;
    assert_eq!(env.fake.get(&sts_path()).unwrap()["spec"]["replicas"], 3);

    // The pods become ready.
    let mut sts = env.fake.get(&sts_path()).unwrap();
    sts["status"] = json!({"replicas": 3, "readyReplicas": 3});
    env.fake.insert(sts);
    reconcile(&env).await;
    let (status, reason, _) = env.ready(&cluster_path("main"));
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Reconciled"));
    let obj = env.fake.get(&cluster_path("main")).unwrap();
    assert_eq!(obj["status"]["readyReplicas"], 3);
    assert_eq!(obj["status"]["clientUrl"], "http://main.strata.svc:7070");
    assert!(env.fake.event_reasons().contains(&"Ready".to_owned()));
}

#[tokio::test]
async fn a_paused_cluster_is_left_alone_and_a_bad_spec_is_reported() {
    let env = TestEnv::without_broker().await;
    env.fake.insert(json!({
        "apiVersion": "strata.dev/v1alpha1", "kind": "BrokerCluster",
        "metadata": {"name": "main", "namespace": CLUSTER_NS, "annotations": {"strata.dev/paused": "true"}},
        "spec": {"replicas": 1}
    }));
    reconcile(&env).await;
    assert!(env.fake.get(&sts_path()).is_none());
    assert_eq!(env.ready(&cluster_path("main")).1, "Paused");

    env.fake.update_meta(&cluster_path("main"), json!({"annotations": {"strata.dev/paused": "false"}}));
    env.fake.update_spec(&cluster_path("main"), json!({"config": {"defaultRetention": "someday"}}));
    reconcile(&env).await;
    let (status, reason, message) = env.ready(&cluster_path("main"));
    assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidSpec"));
    assert!(message.contains("spec.config.defaultRetention"), "{message}");
    assert!(env.fake.event_reasons().contains(&"InvalidSpec".to_owned()));
    assert!(env.fake.get(&sts_path()).is_none());
}

/// The notes of the stored events with this reason, with their counts.
fn events_with_reason(env: &TestEnv, reason: &str) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = env
        .fake
        .events()
        .iter()
        .filter(|e| e["reason"] == reason)
        .filter_map(|e| {
            let path = path_of("events.k8s.io/v1", "Event", CLUSTER_NS, e["metadata"]["name"].as_str()?);
            let stored = env.fake.get(&path)?;
            Some((
                stored["note"].as_str().unwrap_or_default().to_owned(),
                stored["series"]["count"].as_u64().unwrap_or(1),
            ))
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn events_are_grouped_only_when_their_text_is_equal() {
    let env = TestEnv::without_broker().await;
    env.fake.insert(json!({
        "apiVersion": "strata.dev/v1alpha1", "kind": "BrokerCluster",
        "metadata": {"name": "main", "namespace": CLUSTER_NS},
        "spec": {"replicas": 1}
    }));
    let set_ready = |n: u32| {
        let mut sts = env.fake.get(&sts_path()).unwrap();
        sts["status"] = json!({"replicas": n, "readyReplicas": n});
        env.fake.insert(sts);
    };
    reconcile(&env).await;
    set_ready(1);
    reconcile(&env).await;
    assert_eq!(events_with_reason(&env, "Ready"), vec![("1 brokers ready".to_owned(), 1)]);

    // Scaled to 3: progressing, then ready again with the new count.
    env.fake.update_spec(&cluster_path("main"), json!({"replicas": 3}));
    reconcile(&env).await;
    assert_eq!(env.ready(&cluster_path("main")).2, "1/3 brokers ready");
    set_ready(3);
    reconcile(&env).await;
    assert_eq!(env.ready(&cluster_path("main")).2, "3/3 brokers ready");
    assert_eq!(
        events_with_reason(&env, "Ready"),
        vec![("1 brokers ready".to_owned(), 1), ("3 brokers ready".to_owned(), 1)],
        "a Ready event with new text is a new event, not a repeat of the old one"
    );

    // The same text again is a repeat: one event, counted twice.
    let obj: BrokerCluster = serde_json::from_value(env.fake.get(&cluster_path("main")).unwrap()).unwrap();
    for _ in 0..2 {
        env.ctx.event(&obj, true, "Checked", "Reconcile", "same words".into()).await;
    }
    assert_eq!(events_with_reason(&env, "Checked"), vec![("same words".to_owned(), 2)]);
}
