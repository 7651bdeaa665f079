//! The Kubernetes permissions the operator's code uses, verb by verb. The
//! chart's ClusterRole and Role must grant exactly these (least privilege):
//! a test compares this list with `charts/strata-operator/tests/expected-rbac.json`,
//! and the chart check compares the rendered RBAC with the same file.

use serde_json::{Value, json};

/// Where a rule is granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// ClusterRole: resources the controllers watch in every namespace.
    Cluster,
    /// Role in the operator's namespace: the leader-election Lease.
    OperatorNamespace,
}

/// One RBAC rule.
#[derive(Debug, Clone, Copy)]
pub struct Permission {
    pub scope: Scope,
    pub api_group: &'static str,
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
}

/// Every permission, with the call that needs it.
pub const PERMISSIONS: &[Permission] = &[
    // Controllers list+watch every kind; get_opt reads clusters and tenants;
    // finalizers are merge patches; the Queue reconcile lists Queues.
    Permission {
        scope: Scope::Cluster,
        api_group: "strata.dev",
        resources: &["brokerclusters", "tenants", "topics", "queues", "consumergroups"],
        verbs: &["get", "list", "watch", "patch"],
    },
    // Status is written with server-side apply (a patch).
    Permission {
        scope: Scope::Cluster,
        api_group: "strata.dev",
        resources: &[
            "brokerclusters/status",
            "tenants/status",
            "topics/status",
            "queues/status",
            "consumergroups/status",
        ],
        verbs: &["patch"],
    },
    // Owned objects: `.owns()` lists and watches them; server-side apply
    // writes them. The API server authorises an apply as `patch` when the
    // object exists and as `create` when it does not (the first reconcile of
    // every BrokerCluster), so both verbs are needed. The StatefulSet is read
    // for its ready replicas.
    Permission {
        scope: Scope::Cluster,
        api_group: "apps",
        resources: &["statefulsets"],
        verbs: &["get", "list", "watch", "create", "patch"],
    },
    Permission {
        scope: Scope::Cluster,
        api_group: "",
        resources: &["configmaps", "serviceaccounts", "services"],
        verbs: &["list", "watch", "create", "patch"],
    },
    Permission {
        scope: Scope::Cluster,
        api_group: "policy",
        resources: &["poddisruptionbudgets"],
        verbs: &["list", "watch", "create", "patch"],
    },
    // A BrokerCluster's Secrets (cold-store credentials, admin token, TLS)
    // are read before its pods are made, so a missing Secret or key is a
    // condition, not pods failing to start; the operator authenticates with
    // the admin token and creates it when none is named. A Tenant's
    // principals get token Secrets in their namespaces (written, deleted).
    Permission {
        scope: Scope::Cluster,
        api_group: "",
        resources: &["secrets"],
        verbs: &["get", "create", "patch", "delete"],
    },
    // A broker pod's zone: the operator reads its node's zone label and
    // copies it into an annotation of the pod (merge patch), which the
    // kubelet mounts as the broker's zone file.
    Permission { scope: Scope::Cluster, api_group: "", resources: &["pods"], verbs: &["list", "patch"] },
    Permission { scope: Scope::Cluster, api_group: "", resources: &["nodes"], verbs: &["get"] },
    // `spec.metrics.monitor`: a PodMonitor or ServiceMonitor, server-side applied.
    Permission {
        scope: Scope::Cluster,
        api_group: "monitoring.coreos.com",
        resources: &["podmonitors", "servicemonitors"],
        verbs: &["create", "patch"],
    },
    // The event publisher creates events and patches repeated ones.
    Permission {
        scope: Scope::Cluster,
        api_group: "events.k8s.io",
        resources: &["events"],
        verbs: &["create", "patch"],
    },
    // Leader election.
    Permission {
        scope: Scope::OperatorNamespace,
        api_group: "coordination.k8s.io",
        resources: &["leases"],
        verbs: &["get", "create", "update"],
    },
];

/// Whether `PERMISSIONS` grants `verb` on `group`/`resource` in `scope`.
pub fn allows(scope: Scope, group: &str, resource: &str, verb: &str) -> bool {
    PERMISSIONS
        .iter()
        .any(|p| p.scope == scope && p.api_group == group && p.resources.contains(&resource) && p.verbs.contains(&verb))
}

/// The permissions as `{"clusterRole": [rules], "role": [rules]}`, each rule
/// `{apiGroups, resources, verbs}` with sorted lists (the format of
/// `expected-rbac.json`).
pub fn expected_json() -> Value {
    let rules = |scope: Scope| -> Vec<Value> {
        PERMISSIONS
            .iter()
            .filter(|p| p.scope == scope)
            .map(|p| {
                let mut resources: Vec<&str> = p.resources.to_vec();
                resources.sort_unstable();
                let mut verbs: Vec<&str> = p.verbs.to_vec();
                verbs.sort_unstable();
                json!({ "apiGroups": [p.api_group], "resources": resources, "verbs": verbs })
            })
            .collect()
    };
    json!({ "clusterRole": rules(Scope::Cluster), "role": rules(Scope::OperatorNamespace) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::Resource;

    fn group_and_plural<K: Resource<DynamicType = ()>>(_: &K) -> (String, String) {
        (K::group(&()).into_owned(), K::plural(&()).into_owned())
    }

    /// Server-side apply of an object that does not exist yet is authorised
    /// as `create`: every child the BrokerCluster reconcile applies must be
    /// creatable, or the first reconcile of every cluster is forbidden.
    #[test]
    fn every_child_the_broker_cluster_applies_may_be_created_and_patched() {
        let c = crate::broker_cluster::build(&crate::broker_cluster::tests::cluster(), false).unwrap();
        let kinds = [
            group_and_plural(&c.service_account),
            group_and_plural(&c.config_map),
            group_and_plural(&c.headless_service),
            group_and_plural(&c.client_service),
            group_and_plural(&c.stateful_set),
            group_and_plural(&c.pod_disruption_budget),
        ];
        for (group, plural) in kinds {
            for verb in ["create", "patch", "list", "watch"] {
                assert!(
                    allows(Scope::Cluster, &group, &plural, verb),
                    "the ClusterRole lacks {verb} on {group}/{plural}"
                );
            }
        }
    }
}
