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

/// The configuration broker pod `pod` of cluster `main` starts with: the
/// rendered ConfigMap read by the broker's own loader, with the pod's host
/// name and its container arguments as the kubelet expands them.
fn pod_config(env: &TestEnv, pod: &str) -> strata_broker::Config {
    let cm = env.fake.get(&path_of("v1", "ConfigMap", CLUSTER_NS, "main-config")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("strata.toml");
    std::fs::write(&file, cm["data"]["strata.toml"].as_str().unwrap()).unwrap();
    let sts = env.fake.get(&sts_path()).unwrap();
    let container = &sts["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> =
        container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().replace("$(POD_NAME)", pod)).collect();
    assert_eq!(args[..2], ["--config".to_owned(), "/etc/strata/strata.toml".to_owned()]);
    let mut vars = std::collections::HashMap::from([("HOSTNAME".to_owned(), pod.to_owned())]);
    match &args[2..] {
        [] => {}
        [flag, address] if flag == "--advertised-address" => {
            let pod_name = container["env"].as_array().unwrap().iter().find(|e| e["name"] == "POD_NAME").unwrap();
            assert_eq!(pod_name["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
            vars.insert("STRATA_CLUSTER_ADVERTISED_ADDRESS".into(), address.clone());
        }
        other => panic!("unexpected broker arguments {other:?}"),
    }
    strata_broker::Config::load(Some(&file), &vars).unwrap()
}

/// One reconcile of BrokerCluster `main`.
pub(crate) async fn reconcile(env: &TestEnv) {
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
    let config = pod_config(&env, "main-1");
    assert_eq!(config.server.listen.to_string(), "0.0.0.0:7070");
    // Three replicas form one cluster: the same seeds for every pod, the id
    // and the advertised address from the pod's name.
    let seeds: Vec<String> = (0..3).map(|i| format!("main-{i}.main-headless.{CLUSTER_NS}.svc:7070")).collect();
    assert_eq!(config.cluster.peers, seeds);
    assert_eq!(config.cluster.broker_id, Some(1));
    assert_eq!(config.cluster.advertised_address, seeds[1]);
    assert_eq!(pod_config(&env, "main-2").cluster.broker_id, Some(2));
    let sts = env.fake.get(&sts_path()).unwrap();
    assert_eq!(sts["spec"]["podManagementPolicy"], "Parallel", "pods must start together to form a majority");
    let headless = env.fake.get(&path_of("v1", "Service", CLUSTER_NS, "main-headless")).unwrap();
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);
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
    // No broker answers here: what the brokers would report stays unset.
    for field in ["brokers", "metadataLeader", "unownedPartitions"] {
        assert!(obj["status"].get(field).is_none(), "{field} without a broker: {}", obj["status"]);
    }
}

/// Once pods are ready, the status shows what the brokers themselves
/// report: members, the metadata leader, partitions left without an owner.
#[tokio::test]
async fn the_status_shows_the_brokers_view_of_the_cluster() {
    let env = TestEnv::with_broker().await;
    env.fake.insert(json!({
        "apiVersion": "strata.dev/v1alpha1", "kind": "BrokerCluster",
        "metadata": {"name": "main", "namespace": CLUSTER_NS},
        "spec": {"replicas": 1, "storage": {"size": "5Gi"}}
    }));
    reconcile(&env).await;
    let obj = env.fake.get(&cluster_path("main")).unwrap();
    assert!(obj["status"].get("metadataLeader").is_none(), "no pod ready yet: {}", obj["status"]);
    let mut sts = env.fake.get(&sts_path()).unwrap();
    sts["status"] = json!({"replicas": 1, "readyReplicas": 1});
    env.fake.insert(sts);
    reconcile(&env).await;
    let status = &env.fake.get(&cluster_path("main")).unwrap()["status"];
    let described = env.client().await.describe_cluster().await.unwrap();
    assert_eq!(status["brokers"], 1, "{status}");
    assert_eq!(status["metadataLeader"], described.leader_id.unwrap(), "{status}");
    assert_eq!(status["unownedPartitions"], 0, "{status}");
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

    // A Ready event with other words is a new event, not a repeat of the old one.
    let obj: BrokerCluster = serde_json::from_value(env.fake.get(&cluster_path("main")).unwrap()).unwrap();
    env.ctx.event(&obj, false, "Ready", "Reconcile", "3 brokers ready".into()).await;
    assert_eq!(
        events_with_reason(&env, "Ready"),
        vec![("1 brokers ready".to_owned(), 1), ("3 brokers ready".to_owned(), 1)],
        "a Ready event with new text is a new event, not a repeat of the old one"
    );

    // The same text again is a repeat: one event, counted twice.
    for _ in 0..2 {
        env.ctx.event(&obj, true, "Checked", "Reconcile", "same words".into()).await;
    }
    assert_eq!(events_with_reason(&env, "Checked"), vec![("same words".to_owned(), 2)]);
}

fn tiered_cluster(extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({
        "replicas": 1,
        "tier": {
            "coldStore": "s3://strata-cold/prod",
            "s3": {"endpoint": "http://minio.storage:9000", "region": "eu-west-1"},
            "credentialsSecret": {"name": "cold-store"},
            "maxPendingBytes": "2GiB",
            "uploadConcurrency": 8
        },
        "telemetry": {"otlpEndpoint": "http://otel.observability:4317", "sampler": "parentbased_traceidratio", "samplerArg": "0.05"},
        "metrics": {"monitor": "PodMonitor", "labels": {"release": "prom"}},
        "pod": {
            "nodeSelector": {"disk": "nvme"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "strata", "effect": "NoSchedule"}],
            "priorityClassName": "strata-critical",
            "labels": {"team": "platform", "app.kubernetes.io/instance": "hijack"},
            "annotations": {"example.com/owner": "platform"}
        }
    });
    crate::fake_api::merge(&mut spec, &extra);
    json!({"apiVersion": "strata.dev/v1alpha1", "kind": "BrokerCluster",
           "metadata": {"name": "main", "namespace": CLUSTER_NS}, "spec": spec})
}

fn secret(keys: &[&str]) -> serde_json::Value {
    let data: serde_json::Map<String, serde_json::Value> =
        keys.iter().map(|k| ((*k).to_owned(), json!("eA=="))).collect();
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cold-store", "namespace": CLUSTER_NS}, "data": data})
}

#[tokio::test]
async fn tier_telemetry_and_placement_reach_the_pods_and_the_brokers_own_config_parser() {
    let env = TestEnv::without_broker().await;
    env.fake.insert(tiered_cluster(json!({})));
    env.fake.insert(secret(&["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]));
    reconcile(&env).await;

    // The rendered file, read back by the broker's real config parser.
    let config = pod_config(&env, "main-0");
    // One replica is a cluster of one (so it can grow), seeded by itself.
    assert!(config.cluster.is_clustered());
    assert_eq!(config.cluster.peers, std::slice::from_ref(&config.cluster.advertised_address));
    assert_eq!(config.tier.cold_store, "s3://strata-cold/prod");
    assert_eq!(config.tier.s3.endpoint, "http://minio.storage:9000");
    assert_eq!(config.tier.s3.region, "eu-west-1");
    assert!(config.tier.s3.allow_http, "an http:// endpoint is allowed");
    assert!(!config.tier.s3.virtual_hosted_style, "path style by default");
    assert_eq!(config.tier.max_pending_bytes.0, 2 << 30);
    assert_eq!(config.tier.upload_concurrency, 8);
    assert!(config.tier.s3.access_key_id.is_empty(), "no credentials in the ConfigMap");

    let sts = env.fake.get(&sts_path()).unwrap();
    let pod = &sts["spec"]["template"];
    let env_vars = pod["spec"]["containers"][0]["env"].as_array().unwrap();
    let var = |name: &str| env_vars.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("{name}")).clone();
    assert_eq!(var("OTEL_EXPORTER_OTLP_ENDPOINT")["value"], "http://otel.observability:4317");
    assert_eq!(var("OTEL_TRACES_SAMPLER")["value"], "parentbased_traceidratio");
    assert_eq!(var("OTEL_TRACES_SAMPLER_ARG")["value"], "0.05");
    assert_eq!(var("OTEL_SERVICE_NAME")["value"], "strata-broker");
    assert_eq!(
        var("AWS_SECRET_ACCESS_KEY")["valueFrom"]["secretKeyRef"],
        json!({"name": "cold-store", "key": "AWS_SECRET_ACCESS_KEY", "optional": false})
    );
    assert_eq!(pod["spec"]["nodeSelector"], json!({"disk": "nvme"}));
    assert_eq!(pod["spec"]["tolerations"][0]["key"], "dedicated");
    assert_eq!(pod["spec"]["priorityClassName"], "strata-critical");
    assert_eq!(pod["metadata"]["labels"]["team"], "platform");
    assert_eq!(pod["metadata"]["labels"]["app.kubernetes.io/instance"], "main", "selector labels win");
    assert_eq!(pod["metadata"]["annotations"]["example.com/owner"], "platform");

    // The PodMonitor scrapes the pods' http port.
    let pm = env.fake.get(&path_of("monitoring.coreos.com/v1", "PodMonitor", CLUSTER_NS, "main")).unwrap();
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], "http");
    assert_eq!(pm["metadata"]["labels"]["release"], "prom");
    assert_eq!(pm["spec"]["selector"]["matchLabels"], json!(broker_cluster::selector_labels("main")));
    let obj = env.fake.get(&cluster_path("main")).unwrap();
    assert_eq!(obj["status"]["readyText"], "0/1");
    assert!(obj["status"].get("monitorProblem").is_none());
}

#[tokio::test]
async fn a_missing_secret_or_a_bad_url_is_a_condition_not_crash_looping_pods() {
    let env = TestEnv::without_broker().await;
    env.fake.insert(tiered_cluster(json!({})));
    reconcile(&env).await;
    let (status, reason, message) = env.ready(&cluster_path("main"));
    assert_eq!((status.as_str(), reason.as_str()), ("False", "SecretNotFound"));
    assert_eq!(message, "spec.tier.credentialsSecret: Secret strata/cold-store not found; waiting for it");
    assert!(env.fake.get(&sts_path()).is_none(), "no StatefulSet whose pods could not start");
    assert!(env.fake.event_reasons().contains(&"SecretNotFound".to_owned()));

    env.fake.insert(secret(&["AWS_ACCESS_KEY_ID"]));
    reconcile(&env).await;
    let (_, reason, message) = env.ready(&cluster_path("main"));
    assert_eq!(reason, "SecretKeyNotFound");
    assert!(message.ends_with("has no key AWS_SECRET_ACCESS_KEY"), "{message}");
    assert!(env.fake.get(&sts_path()).is_none());

    env.fake.insert(secret(&["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]));
    reconcile(&env).await;
    assert_eq!(env.ready(&cluster_path("main")).1, "Progressing");
    assert!(env.fake.get(&sts_path()).is_some());

    for (url, want) in [
        ("s3:///no-bucket", "names no valid bucket"),
        ("ftp://host/x", "unsupported scheme \"ftp\""),
        ("memory://", "memory:// keeps data in the pod's memory only"),
        ("cold", "is not a URL"),
    ] {
        env.fake.update_spec(&cluster_path("main"), json!({"tier": {"coldStore": url}}));
        reconcile(&env).await;
        let (status, reason, message) = env.ready(&cluster_path("main"));
        assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidSpec"), "{url}");
        assert!(message.starts_with("spec.tier.coldStore: ") && message.contains(want), "{url}: {message}");
        assert!(env.fake.events().iter().any(|e| e["note"] == message.as_str()), "an event for {url}");
    }
}

#[tokio::test]
async fn a_monitor_without_the_prometheus_operator_is_reported_not_fatal() {
    let env = TestEnv::without_broker().await;
    env.fake.unserve("monitoring.coreos.com");
    env.fake.insert(tiered_cluster(json!({"tier": null, "metrics": {"monitor": "ServiceMonitor"}})));
    reconcile(&env).await;
    assert!(env.fake.get(&sts_path()).is_some());
    let obj = env.fake.get(&cluster_path("main")).unwrap();
    let problem = obj["status"]["monitorProblem"].as_str().unwrap();
    assert!(
        problem.contains("ServiceMonitor not applied") && problem.contains("monitoring.coreos.com/v1"),
        "{problem}"
    );
    assert_eq!(env.ready(&cluster_path("main")).1, "Progressing", "the brokers themselves are fine");
    reconcile(&env).await;
    assert_eq!(env.fake.event_reasons().iter().filter(|r| *r == "MonitorUnavailable").count(), 1);
}

#[tokio::test]
async fn a_cluster_grows_by_new_brokers_joining_and_a_shrink_is_refused() {
    let env = TestEnv::without_broker().await;
    env.fake.insert(json!({
        "apiVersion": "strata.dev/v1alpha1", "kind": "BrokerCluster",
        "metadata": {"name": "main", "namespace": CLUSTER_NS},
        "spec": {"replicas": 3}
    }));
    reconcile(&env).await;
    let mut sts = env.fake.get(&sts_path()).unwrap();
    sts["status"] = json!({"replicas": 3, "readyReplicas": 3});
    env.fake.insert(sts);
    reconcile(&env).await;
    assert_eq!(pod_config(&env, "main-0").cluster.peers.len(), 3);

    // Growing: five pods, every one with the five seeds (the new ones ask
    // the formed cluster to admit them).
    env.fake.update_spec(&cluster_path("main"), json!({"replicas": 5}));
    reconcile(&env).await;
    assert_eq!(env.fake.get(&sts_path()).unwrap()["spec"]["replicas"], 5);
    let grown = pod_config(&env, "main-4").cluster.peers;
    assert_eq!(grown.len(), 5, "{grown:?}");
    assert_eq!(pod_config(&env, "main-0").cluster.peers, grown);
    let obj = env.fake.get(&cluster_path("main")).unwrap();
    assert!(obj["status"]["conditions"].as_array().unwrap().iter().all(|c| c["type"] != "ScalingBlocked"));
    let mut sts = env.fake.get(&sts_path()).unwrap();
    sts["status"] = json!({"replicas": 5, "readyReplicas": 5});
    env.fake.insert(sts);
    reconcile(&env).await;

    // Shrinking would lose the partitions the removed brokers own: refused,
    // the cluster kept at five.
    env.fake.update_spec(&cluster_path("main"), json!({"replicas": 2}));
    reconcile(&env).await;
    assert_eq!(env.fake.get(&sts_path()).unwrap()["spec"]["replicas"], 5, "the StatefulSet keeps its size");
    assert_eq!(pod_config(&env, "main-0").cluster.peers, grown, "the seeds do not change");
    let obj = env.fake.get(&cluster_path("main")).unwrap();
    let conditions = obj["status"]["conditions"].as_array().unwrap();
    let blocked = conditions.iter().find(|c| c["type"] == "ScalingBlocked").expect("a ScalingBlocked condition");
    assert_eq!((blocked["status"].as_str(), blocked["reason"].as_str()), (Some("True"), Some("Unsupported")));
    assert!(blocked["message"].as_str().unwrap().contains("has 5 brokers"), "{blocked}");
    assert_eq!(env.ready(&cluster_path("main")).0, "True", "the brokers themselves are fine");
    assert_eq!(events_with_reason(&env, "ScalingBlocked").len(), 1);

    // Back to its size: the condition goes away.
    env.fake.update_spec(&cluster_path("main"), json!({"replicas": 5}));
    reconcile(&env).await;
    let obj = env.fake.get(&cluster_path("main")).unwrap();
    assert!(obj["status"]["conditions"].as_array().unwrap().iter().all(|c| c["type"] != "ScalingBlocked"));
}

#[tokio::test]
async fn auth_and_tls_reach_the_brokers_own_config_parser() {
    let env = TestEnv::without_broker().await;
    env.fake.insert(crate::secret_json(
        CLUSTER_NS,
        "main-tls",
        &[("tls.crt", "c"), ("tls.key", "k"), ("ca.crt", "ca")],
    ));
    env.fake.insert(json!({
        "apiVersion": "strata.dev/v1alpha1", "kind": "BrokerCluster",
        "metadata": {"name": "main", "namespace": CLUSTER_NS},
        "spec": {"replicas": 3, "tls": {"secretName": "main-tls", "clientAuth": "require"}}
    }));
    reconcile(&env).await;
    let config = pod_config(&env, "main-1");
    assert_eq!(config.auth.mode, strata_broker::config::AuthMode::Required);
    assert_eq!(config.auth.admin_token_file, std::path::Path::new("/etc/strata-auth/token"));
    assert_eq!(config.tls.cert, std::path::Path::new("/etc/strata-tls/tls.crt"));
    assert_eq!(config.tls.key, std::path::Path::new("/etc/strata-tls/tls.key"));
    assert_eq!(config.tls.client_ca, std::path::Path::new("/etc/strata-tls/ca.crt"));
    assert!(config.tls.require_client_cert);
    let sts = env.fake.get(&sts_path()).unwrap();
    let container = &sts["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
    let mounts: Vec<&str> =
        container["volumeMounts"].as_array().unwrap().iter().map(|m| m["mountPath"].as_str().unwrap()).collect();
    assert!(mounts.contains(&"/etc/strata-auth") && mounts.contains(&"/etc/strata-tls"), "{mounts:?}");
}

/// Each broker pod gets its node's zone as the `strata.dev/zone` annotation
/// (the broker reads it through the downward-API file its config names);
/// a pod on a node without a zone label, or of another cluster, is left
/// alone, and a node moved to another zone moves the annotation with it.
#[tokio::test]
async fn broker_pods_are_annotated_with_their_nodes_zone() {
    let env = TestEnv::without_broker().await;
    env.fake.insert(json!({
        "apiVersion": "strata.dev/v1alpha1", "kind": "BrokerCluster",
        "metadata": {"name": "main", "namespace": CLUSTER_NS},
        "spec": {"replicas": 3, "storage": {"size": "1Gi"}}
    }));
    let node = |name: &str, labels: serde_json::Value| json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}});
    env.fake.insert(node("n1", json!({"topology.kubernetes.io/zone": "eu-1a"})));
    env.fake.insert(node("n2", json!({"failure-domain.beta.kubernetes.io/zone": "eu-1b"})));
    env.fake.insert(node("n3", json!({"kubernetes.io/hostname": "n3"})));
    let pod = |name: &str, instance: &str, node: Option<&str>| {
        let mut labels = broker_cluster::selector_labels(instance);
        labels.insert("apps.kubernetes.io/pod-index".into(), name.rsplit('-').next().unwrap().into());
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": CLUSTER_NS, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "broker"}]}
        })
    };
    env.fake.insert(pod("main-0", "main", Some("n1")));
    env.fake.insert(pod("main-1", "main", Some("n2")));
    env.fake.insert(pod("main-2", "main", Some("n3")));
    env.fake.insert(pod("main-3", "main", None));
    env.fake.insert(pod("other-0", "other", Some("n1")));
    reconcile(&env).await;

    let zone = |pod: &str| {
        let p = env.fake.get(&path_of("v1", "Pod", CLUSTER_NS, pod)).unwrap();
        p["metadata"]["annotations"][broker_cluster::ZONE_ANNOTATION].as_str().map(str::to_owned)
    };
    assert_eq!(zone("main-0").as_deref(), Some("eu-1a"));
    assert_eq!(zone("main-1").as_deref(), Some("eu-1b"), "the deprecated label is read too");
    assert_eq!(zone("main-2"), None, "a node without a zone label");
    assert_eq!(zone("main-3"), None, "not scheduled yet");
    assert_eq!(zone("other-0"), None, "another cluster's pod");

    // The broker reads the annotation from the file its config names, which
    // the pod template mounts from the downward API.
    let config = pod_config(&env, "main-0");
    let file = config.cluster.zone_file.display().to_string();
    let sts = env.fake.get(&sts_path()).unwrap();
    let spec = &sts["spec"]["template"]["spec"];
    let mount = spec["containers"][0]["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "zone").unwrap();
    let volume = spec["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "zone").unwrap();
    let item = &volume["downwardAPI"]["items"][0];
    assert_eq!(format!("{}/{}", mount["mountPath"].as_str().unwrap(), item["path"].as_str().unwrap()), file);
    assert_eq!(item["fieldRef"]["fieldPath"], "metadata.annotations['strata.dev/zone']");

    // The node is relabelled: the next reconcile follows it.
    env.fake.insert(node("n1", json!({"topology.kubernetes.io/zone": "eu-1c"})));
    reconcile(&env).await;
    assert_eq!(zone("main-0").as_deref(), Some("eu-1c"));
}
