//! The generated CRDs: `crds/` and the chart's copy match the generator, the
//! CEL rules are in the YAML, and the RBAC list matches the chart's file.

use std::path::PathBuf;

use serde_yaml::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

#[test]
fn crds_dirs_match_the_generator() {
    for dir in ["crds", "charts/strata-operator/crds"] {
        let dir = root().join(dir);
        let generated = strata_operator::crdgen::files();
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        on_disk.sort();
        let mut names: Vec<String> = generated.iter().map(|(n, _)| n.clone()).collect();
        names.sort();
        assert_eq!(
            on_disk,
            names,
            "{} holds other files; run `cargo run -p strata-operator -- crds --out {}`",
            dir.display(),
            dir.display()
        );
        for (name, text) in generated {
            let disk = std::fs::read_to_string(dir.join(&name)).unwrap();
            assert!(
                disk == text,
                "{}/{name} is stale; run `cargo run -p strata-operator -- crds --out {}`",
                dir.display(),
                dir.display()
            );
        }
    }
}

fn rules(file: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("crds").join(file)).unwrap();
    let doc: Value = serde_yaml::from_str(&text).unwrap();
    let mut out = Vec::new();
    fn walk(v: &Value, path: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Mapping(m) => {
                if let Some(Value::Sequence(rules)) = m.get("x-kubernetes-validations") {
                    for r in rules {
                        out.push((path.to_owned(), r["rule"].as_str().unwrap_or_default().to_owned()));
                    }
                }
                for (k, v) in m {
                    walk(v, &format!("{path}.{}", k.as_str().unwrap_or_default()), out);
                }
            }
            Value::Sequence(s) => s.iter().for_each(|v| walk(v, path, out)),
            _ => {}
        }
    }
    walk(&doc, "", &mut out);
    out
}

fn has(rules: &[(String, String)], field: &str, rule: &str) -> bool {
    rules.iter().any(|(p, r)| p.ends_with(&format!("properties.{field}")) && r == rule)
}

#[test]
fn the_crd_yaml_carries_the_cel_rules() {
    let topic = rules("topics.strata.dev.yaml");
    assert!(has(&topic, "partitions", "self >= oldSelf"), "{topic:?}");
    assert!(has(&topic, "tenant", "self == oldSelf"), "{topic:?}");
    assert!(has(&topic, "clusterRef", "self == oldSelf"), "{topic:?}");
    assert!(has(&topic, "topicName", "self == oldSelf"), "{topic:?}");

    let queue = rules("queues.strata.dev.yaml");
    assert!(has(&queue, "fifo", "self == oldSelf"), "{queue:?}");
    assert!(has(&queue, "tenant", "self == oldSelf"), "{queue:?}");
    assert!(queue.iter().any(|(_, r)| r.contains("deadLetterQueue")), "{queue:?}");
    assert!(queue.iter().any(|(_, r)| r.contains("self.fifo && has(self.priorities)")), "{queue:?}");

    let group = rules("consumergroups.strata.dev.yaml");
    assert!(group.iter().any(|(_, r)| r.contains("has(self.timestampMs)")), "{group:?}");
    let cluster = rules("brokerclusters.strata.dev.yaml");
    assert!(has(&cluster, "storage", "self == oldSelf"), "{cluster:?}");
    let tenant = rules("tenants.strata.dev.yaml");
    assert!(tenant.iter().any(|(_, r)| r.contains("self.metadata.name.matches")), "{tenant:?}");
}

#[test]
fn every_crd_has_a_status_subresource_and_the_right_group() {
    for crd in strata_operator::crdgen::crds() {
        assert_eq!(crd.spec.group, "strata.dev");
        assert_eq!(crd.spec.scope, "Namespaced");
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(v.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(), "{:?}", crd.metadata.name);
    }
}

#[test]
fn rbac_matches_the_charts_expected_rules() {
    let path = root().join("charts/strata-operator/tests/expected-rbac.json");
    let file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        file,
        strata_operator::rbac::expected_json(),
        "update {} together with operator/src/rbac.rs",
        path.display()
    );
}

#[test]
fn every_example_parses_into_its_crd_type() {
    use strata_operator::{
        broker_cluster::BrokerCluster, consumer_group::ConsumerGroup, queue::Queue, tenant::Tenant, topic::Topic,
    };
    let dir = root().join("examples");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let c: BrokerCluster = serde_yaml::from_str(&read("broker-cluster.yaml")).unwrap();
    assert!(strata_operator::broker_cluster::render_config("main", "default", &c.spec, false).is_ok());
    let _: Tenant = serde_yaml::from_str(&read("tenant.yaml")).unwrap();
    let t: Topic = serde_yaml::from_str(&read("topic.yaml")).unwrap();
    assert!(strata_operator::topic::desired_options(&t.spec).is_ok());
    let q: Queue = serde_yaml::from_str(&read("queue.yaml")).unwrap();
    assert!(strata_operator::queue::desired_settings(&q.spec).is_ok());
    let g: ConsumerGroup = serde_yaml::from_str(&read("consumer-group.yaml")).unwrap();
    let reset = g.spec.offset_reset.clone().unwrap();
    assert!(strata_operator::consumer_group::reset_plan(&g.spec, &reset).is_ok());
}

#[test]
fn the_dead_letter_example_parses() {
    let text = std::fs::read_to_string(root().join("examples/queue-dlq.yaml")).unwrap();
    let q: strata_operator::queue::Queue = serde_yaml::from_str(&text).unwrap();
    assert!(strata_operator::queue::desired_options(&q.spec).is_ok());
}
