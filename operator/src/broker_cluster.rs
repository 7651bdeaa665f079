//! `BrokerCluster`: the broker pods. Pure builders turn the spec into a
//! StatefulSet, headless and client Services, a ConfigMap holding the
//! broker's own TOML config, a PodDisruptionBudget and a ServiceAccount; the
//! reconcile server-side-applies them with owner references.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, HTTPGetAction, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, Service, ServiceAccount,
    ServicePort, ServiceSpec, TopologySpreadConstraint, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{CustomResource, KubeSchema, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::context::{Context, MANAGER};
use crate::error::Error;
use crate::lifecycle::{apply_status, is_paused};
use crate::status::{self, Condition, Reason};

/// The broker's gRPC port (client Service and container).
pub const GRPC_PORT: u16 = 7070;
/// The broker's HTTP port: `/healthz`, `/readyz`, metrics.
pub const HTTP_PORT: u16 = 7071;
const DATA_DIR: &str = "/var/lib/strata";
const CONFIG_DIR: &str = "/etc/strata";
const CONFIG_FILE: &str = "strata.toml";

/// A Strata broker cluster: a StatefulSet of broker pods with their storage,
/// Services and configuration.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "strata.dev",
    version = "v1alpha1",
    kind = "BrokerCluster",
    namespaced,
    status = "BrokerClusterStatus",
    shortname = "sbc",
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    validation = Rule::new("self.metadata.name.size() <= 52").message("BrokerCluster names are at most 52 characters (StatefulSet pod names)")
)]
#[serde(rename_all = "camelCase")]
pub struct BrokerClusterSpec {
    /// Number of broker pods.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,
    /// Container image of `strata-broker`.
    #[serde(default = "default_image")]
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// The hot tier: one PersistentVolumeClaim per pod.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("storage is immutable (StatefulSet volume claim templates cannot change)"))]
    pub storage: StorageSpec,
    /// CPU and memory of each broker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Broker settings rendered into its TOML config file.
    #[serde(default)]
    pub config: BrokerConfigSpec,
}

fn default_replicas() -> i32 {
    1
}

fn default_image() -> String {
    "strata/strata-broker:0.1.0".into()
}

/// Persistent storage of each broker pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Volume size, a Kubernetes quantity such as `10Gi`.
    #[serde(default = "default_size")]
    pub size: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

fn default_size() -> String {
    "10Gi".into()
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec { size: default_size(), storage_class_name: None }
    }
}

/// Durability of acknowledged writes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    Fsync,
    None,
}

/// The subset of the broker configuration the operator manages.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct BrokerConfigSpec {
    /// Log filter, e.g. `info` or `strata_broker=debug,info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// Default retention of new topics: a duration (`7d`) or `infinite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_retention: Option<String>,
    /// Default durability of new topics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_durability: Option<Durability>,
    /// Largest record accepted, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_record_bytes: Option<u64>,
    /// Largest number of partitions of one topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_partitions_per_topic: Option<u32>,
}

/// Observed state of a `BrokerCluster`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct BrokerClusterStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    /// The gRPC address clients use inside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_url: Option<String>,
}

/// The objects a `BrokerCluster` owns.
#[derive(Debug, Clone)]
pub struct Children {
    pub service_account: ServiceAccount,
    pub config_map: ConfigMap,
    pub headless_service: Service,
    pub client_service: Service,
    pub stateful_set: StatefulSet,
    pub pod_disruption_budget: PodDisruptionBudget,
}

/// A spec the builders cannot turn into objects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidSpec {
    pub field: &'static str,
    pub message: String,
}

/// Labels selecting the pods of cluster `name`.
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "strata-broker".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), name.to_owned()),
    ])
}

fn labels(name: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(name);
    l.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
    l
}

/// Renders the broker's TOML configuration file (the format its `--config`
/// loader reads; unknown keys would be errors there).
pub fn render_config(spec: &BrokerClusterSpec) -> Result<String, InvalidSpec> {
    let mut root = toml::Table::new();
    let mut server = toml::Table::new();
    server.insert("listen".into(), format!("0.0.0.0:{GRPC_PORT}").into());
    server.insert("http_listen".into(), format!("0.0.0.0:{HTTP_PORT}").into());
    root.insert("server".into(), server.into());
    let mut storage = toml::Table::new();
    storage.insert("data_dir".into(), DATA_DIR.into());
    root.insert("storage".into(), storage.into());

    let c = &spec.config;
    let mut topic_defaults = toml::Table::new();
    if let Some(r) = &c.default_retention {
        let r = r.trim();
        if r != "infinite" && humantime::parse_duration(r).is_err() {
            return Err(InvalidSpec {
                field: "spec.config.defaultRetention",
                message: format!("{r:?} is not a duration (e.g. 7d, 12h) or \"infinite\""),
            });
        }
        topic_defaults.insert("retention".into(), r.into());
    }
    if let Some(d) = c.default_durability {
        topic_defaults.insert("durability".into(), if d == Durability::Fsync { "fsync" } else { "none" }.into());
    }
    if !topic_defaults.is_empty() {
        root.insert("topic_defaults".into(), topic_defaults.into());
    }
    let mut limits = toml::Table::new();
    if let Some(b) = c.max_record_bytes {
        let b = i64::try_from(b)
            .map_err(|_| InvalidSpec { field: "spec.config.maxRecordBytes", message: "too large".into() })?;
        limits.insert("max_record_bytes".into(), b.into());
    }
    if let Some(p) = c.max_partitions_per_topic {
        limits.insert("max_partitions_per_topic".into(), i64::from(p).into());
    }
    if !limits.is_empty() {
        root.insert("limits".into(), limits.into());
    }
    let mut log = toml::Table::new();
    log.insert("format".into(), "json".into());
    log.insert("level".into(), c.log_level.clone().unwrap_or_else(|| "info".into()).into());
    root.insert("log".into(), log.into());
    Ok(toml::to_string(&root).unwrap_or_default())
}

fn meta(name: String, ns: &str, cluster: &str, owner: &OwnerReference) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(ns.to_owned()),
        labels: Some(labels(cluster)),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    }
}

fn port(name: &str, port: u16) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: i32::from(port),
        target_port: Some(IntOrString::String(name.into())),
        ..ServicePort::default()
    }
}

fn probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// A short, stable hash of the config file: a pod-template annotation, so a
/// config change rolls the pods (one at a time, each waiting for readiness).
fn config_hash(text: &str) -> String {
    // FNV-1a: stable across builds and platforms, unlike DefaultHasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Builds every child object of `cluster`. Pure: no I/O.
pub fn build(cluster: &BrokerCluster) -> Result<Children, InvalidSpec> {
    let name = cluster.name_any();
    let ns = cluster.namespace().unwrap_or_else(|| "default".into());
    let owner =
        cluster.controller_owner_ref(&()).ok_or(InvalidSpec { field: "metadata.uid", message: "missing".into() })?;
    let spec = &cluster.spec;
    if spec.replicas < 1 {
        return Err(InvalidSpec {
            field: "spec.replicas",
            message: format!("must be at least 1, got {}", spec.replicas),
        });
    }
    let config = render_config(spec)?;
    let sel = selector_labels(&name);
    let headless = format!("{name}-headless");
    let config_name = format!("{name}-config");

    let service_account = ServiceAccount {
        metadata: meta(name.clone(), &ns, &name, &owner),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    };
    let config_map = ConfigMap {
        metadata: meta(config_name.clone(), &ns, &name, &owner),
        data: Some(BTreeMap::from([(CONFIG_FILE.to_owned(), config.clone())])),
        ..ConfigMap::default()
    };
    let headless_service = Service {
        metadata: meta(headless.clone(), &ns, &name, &owner),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(sel.clone()),
            ports: Some(vec![port("grpc", GRPC_PORT), port("http", HTTP_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let client_service = Service {
        metadata: meta(name.clone(), &ns, &name, &owner),
        spec: Some(ServiceSpec {
            selector: Some(sel.clone()),
            ports: Some(vec![port("grpc", GRPC_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let container = Container {
        name: "broker".into(),
        image: Some(spec.image.clone()),
        image_pull_policy: spec.image_pull_policy.clone(),
        args: Some(vec!["--config".into(), format!("{CONFIG_DIR}/{CONFIG_FILE}")]),
        ports: Some(vec![
            ContainerPort {
                name: Some("grpc".into()),
                container_port: i32::from(GRPC_PORT),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("http".into()),
                container_port: i32::from(HTTP_PORT),
                ..ContainerPort::default()
            },
        ]),
        readiness_probe: Some(probe("/readyz", 5, 3)),
        liveness_probe: Some(probe("/healthz", 10, 6)),
        resources: spec.resources.clone(),
        volume_mounts: Some(vec![
            VolumeMount { name: "data".into(), mount_path: DATA_DIR.into(), ..VolumeMount::default() },
            VolumeMount {
                name: "config".into(),
                mount_path: CONFIG_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };
    let pod_labels = labels(&name);
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(BTreeMap::from([("strata.dev/config-hash".to_owned(), config_hash(&config))])),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(name.clone()),
            // SIGTERM drains and flushes; give it time.
            termination_grace_period_seconds: Some(60),
            containers: vec![container],
            volumes: Some(vec![Volume {
                name: "config".into(),
                config_map: Some(ConfigMapVolumeSource { name: config_name, ..ConfigMapVolumeSource::default() }),
                ..Volume::default()
            }]),
            topology_spread_constraints: Some(vec![
                TopologySpreadConstraint {
                    max_skew: 1,
                    topology_key: "kubernetes.io/hostname".into(),
                    when_unsatisfiable: "ScheduleAnyway".into(),
                    label_selector: Some(LabelSelector { match_labels: Some(sel.clone()), ..LabelSelector::default() }),
                    ..TopologySpreadConstraint::default()
                },
                TopologySpreadConstraint {
                    max_skew: 1,
                    topology_key: "topology.kubernetes.io/zone".into(),
                    when_unsatisfiable: "ScheduleAnyway".into(),
                    label_selector: Some(LabelSelector { match_labels: Some(sel.clone()), ..LabelSelector::default() }),
                    ..TopologySpreadConstraint::default()
                },
            ]),
            ..PodSpec::default()
        }),
    };
    let mut claim_resources = BTreeMap::new();
    claim_resources.insert("storage".to_owned(), Quantity(spec.storage.size.clone()));
    let stateful_set = StatefulSet {
        metadata: meta(name.clone(), &ns, &name, &owner),
        spec: StatefulSetSpec {
            replicas: Some(spec.replicas),
            service_name: Some(headless),
            // Ordered rolling update: one pod at a time, each waiting for readiness.
            pod_management_policy: Some("OrderedReady".into()),
            selector: LabelSelector { match_labels: Some(sel.clone()), ..LabelSelector::default() },
            template,
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta { name: Some("data".into()), ..ObjectMeta::default() },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: spec.storage.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(claim_resources),
                        ..Default::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                ..PersistentVolumeClaim::default()
            }]),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    };
    let pod_disruption_budget = PodDisruptionBudget {
        metadata: meta(name.clone(), &ns, &name, &owner),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(sel), ..LabelSelector::default() }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    };
    Ok(Children { service_account, config_map, headless_service, client_service, stateful_set, pod_disruption_budget })
}

async fn apply<K>(ctx: &Context, ns: &str, obj: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let mut value = serde_json::to_value(obj).map_err(|source| Error::Serialize { what: "child object", source })?;
    // Server-side apply needs apiVersion and kind in the body.
    value["apiVersion"] = K::api_version(&()).into();
    value["kind"] = K::kind(&()).into();
    api.patch(&obj.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&value)).await?;
    Ok(())
}

/// One reconcile of a `BrokerCluster`.
pub async fn reconcile(cluster: Arc<BrokerCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&cluster, &ctx).await;
    ctx.metrics.observe("BrokerCluster", started.elapsed(), result.as_ref().err());
    result
}

/// Requeue with the object's backoff after an error.
pub fn error_policy(cluster: Arc<BrokerCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(name = %cluster.name_any(), %error, "BrokerCluster reconcile failed");
    Action::requeue(ctx.backoff.failure(&format!("BrokerCluster/{}", cluster.name_any())))
}

async fn reconcile_inner(cluster: &BrokerCluster, ctx: &Context) -> Result<Action, Error> {
    let name = cluster.name_any();
    let ns =
        cluster.namespace().ok_or_else(|| Error::MissingNamespace { kind: "BrokerCluster", name: name.clone() })?;
    let api: Api<BrokerCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let generation = cluster.meta().generation;
    let previous = cluster.status.clone().unwrap_or_default();
    let mut st = previous.clone();
    if cluster.meta().deletion_timestamp.is_some() {
        // Children go with their owner (garbage collection); nothing to do.
        return Ok(Action::await_change());
    }
    if is_paused(cluster) {
        status::set(
            &mut st.conditions,
            status::PAUSED,
            true,
            Reason::Paused,
            "strata.dev/paused is \"true\"",
            generation,
        );
        status::set(&mut st.conditions, status::READY, false, Reason::Paused, "reconciliation is paused", generation);
        if !status::is_true(&previous.conditions, status::PAUSED) {
            ctx.event(cluster, false, "Paused", "Reconcile", "reconciliation paused by annotation".into()).await;
        }
        if st != previous {
            apply_status(&api, &name, &st).await?;
        }
        return Ok(Action::requeue(ctx.settings.resync));
    }
    status::remove(&mut st.conditions, status::PAUSED);

    let children = match build(cluster) {
        Ok(c) => c,
        Err(e) => {
            status::set(&mut st.conditions, status::READY, false, Reason::InvalidSpec, e.to_string(), generation);
            if status::find(&previous.conditions, status::READY).is_none_or(|c| c.message != e.to_string()) {
                ctx.event(cluster, true, "InvalidSpec", "Reconcile", e.to_string()).await;
            }
            st.observed_generation = generation;
            apply_status(&api, &name, &st).await?;
            return Ok(Action::requeue(ctx.backoff.failure(&format!("BrokerCluster/{name}"))));
        }
    };
    // Applying every child on each resync is what corrects drift: server-side
    // apply with force takes back the fields this manager owns.
    apply(ctx, &ns, &children.service_account).await?;
    apply(ctx, &ns, &children.config_map).await?;
    apply(ctx, &ns, &children.headless_service).await?;
    apply(ctx, &ns, &children.client_service).await?;
    apply(ctx, &ns, &children.stateful_set).await?;
    apply(ctx, &ns, &children.pod_disruption_budget).await?;

    let sts: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    let ready = sts.get_opt(&name).await?.and_then(|s| s.status).and_then(|s| s.ready_replicas).unwrap_or(0);
    st.replicas = cluster.spec.replicas;
    st.ready_replicas = ready;
    st.client_url = Some(crate::context::ServiceDns.url_for(&ns, &name));
    st.observed_generation = generation;
    let all_ready = ready >= cluster.spec.replicas;
    if all_ready {
        status::set(
            &mut st.conditions,
            status::READY,
            true,
            Reason::Reconciled,
            format!("{ready}/{} brokers ready", cluster.spec.replicas),
            generation,
        );
    } else {
        status::set(
            &mut st.conditions,
            status::READY,
            false,
            Reason::Progressing,
            format!("{ready}/{} brokers ready", cluster.spec.replicas),
            generation,
        );
    }
    if all_ready && !status::is_true(&previous.conditions, status::READY) {
        ctx.event(cluster, false, "Ready", "Reconcile", format!("{ready} brokers ready")).await;
    }
    if st != previous {
        apply_status(&api, &name, &st).await?;
    }
    ctx.backoff.success(&format!("BrokerCluster/{name}"));
    // Until every pod is ready, look again soon; the owned StatefulSet's
    // changes also trigger reconciles through `.owns()`.
    Ok(Action::requeue(if all_ready { ctx.settings.resync } else { Duration::from_secs(15).min(ctx.settings.resync) }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn cluster() -> BrokerCluster {
        let mut c = BrokerCluster::new(
            "main",
            BrokerClusterSpec {
                replicas: 3,
                image: "strata/strata-broker:test".into(),
                image_pull_policy: None,
                storage: StorageSpec { size: "20Gi".into(), storage_class_name: Some("fast".into()) },
                resources: None,
                config: BrokerConfigSpec {
                    log_level: Some("debug".into()),
                    default_retention: Some("3d".into()),
                    default_durability: Some(Durability::Fsync),
                    max_record_bytes: Some(2 << 20),
                    max_partitions_per_topic: Some(64),
                },
            },
        );
        c.metadata.namespace = Some("strata".into());
        c.metadata.uid = Some("uid-1".into());
        c
    }

    #[test]
    fn statefulset_has_storage_probes_spread_and_owner() {
        let ch = build(&cluster()).unwrap();
        let sts = ch.stateful_set;
        let owner = &sts.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.controller), ("BrokerCluster", "main", Some(true)));
        let spec = sts.spec;
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.service_name.as_deref(), Some("main-headless"));
        let claim = &spec.volume_claim_templates.as_ref().unwrap()[0];
        let claim_spec = claim.spec.as_ref().unwrap();
        assert_eq!(claim_spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(claim_spec.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0, "20Gi");
        let pod = spec.template.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(), Some("/readyz"));
        assert_eq!(c.liveness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(), Some("/healthz"));
        assert_eq!(pod.topology_spread_constraints.as_ref().unwrap().len(), 2);
        assert_eq!(pod.service_account_name.as_deref(), Some("main"));
        assert_eq!(spec.selector.match_labels.unwrap(), selector_labels("main"));
    }

    #[test]
    fn services_pdb_and_config_map() {
        let ch = build(&cluster()).unwrap();
        let headless = ch.headless_service.spec.unwrap();
        assert_eq!(headless.cluster_ip.as_deref(), Some("None"));
        assert_eq!(headless.ports.unwrap().len(), 2);
        let client = ch.client_service.spec.unwrap();
        assert_eq!(client.ports.unwrap()[0].port, 7070);
        assert_eq!(ch.client_service.metadata.name.as_deref(), Some("main"));
        assert_eq!(ch.pod_disruption_budget.spec.unwrap().max_unavailable, Some(IntOrString::Int(1)));
        let toml = &ch.config_map.data.unwrap()[CONFIG_FILE];
        assert!(toml.contains("retention = \"3d\""), "{toml}");
    }

    #[test]
    fn config_changes_change_the_pod_template() {
        let a = build(&cluster()).unwrap().stateful_set;
        let mut c = cluster();
        c.spec.config.log_level = Some("info".into());
        let b = build(&c).unwrap().stateful_set;
        let hash = |s: &StatefulSet| s.spec.template.metadata.as_ref().unwrap().annotations.clone();
        assert_ne!(hash(&a), hash(&b));
    }

    #[test]
    fn bad_spec_is_an_error_not_a_panic() {
        let mut c = cluster();
        c.spec.config.default_retention = Some("forever-ish".into());
        let e = build(&c).unwrap_err();
        assert_eq!(e.field, "spec.config.defaultRetention");
        let mut c = cluster();
        c.spec.replicas = 0;
        assert_eq!(build(&c).unwrap_err().field, "spec.replicas");
    }
}
