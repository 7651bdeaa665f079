//! Integration tests of the operator: reconciles against a fake Kubernetes
//! API (tower-test) and a real `strata-broker` on loopback, generated CRDs,
//! RBAC, leader election and the HTTP endpoints.

mod cluster;
mod consumer_group;
mod crds;
mod fake_api;
mod leader;
mod queue;
mod security;
mod tenant;
mod topic;

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use serde_json::{Value, json};
use strata_operator::context::{Context, FixedAddress, Settings};
use strata_operator::lifecycle;
use strata_operator::metrics::Metrics;
use strata_operator::resource::BrokerResource;

pub use fake_api::{FakeApi, path_of};

pub const NS: &str = "apps";
pub const CLUSTER_NS: &str = "strata";

/// A fake API server, a context pointing at it, and (optionally) a real
/// broker on loopback that every BrokerCluster resolves to.
pub struct TestEnv {
    pub fake: FakeApi,
    pub ctx: Arc<Context>,
    pub broker: Option<strata_broker::RunningBroker>,
    /// The cluster-admin token: the broker's `--admin-token-file`, and the
    /// Secret `main-admin-token` the operator authenticates with.
    pub admin_token: String,
    _dir: tempfile::TempDir,
}

pub fn settings() -> Settings {
    Settings {
        resync: Duration::from_secs(300),
        status_refresh: Duration::from_secs(30),
        backoff_base: Duration::from_secs(1),
        backoff_max: Duration::from_secs(60),
    }
}

impl TestEnv {
    /// Without a broker: the address points at a closed port.
    pub async fn without_broker() -> TestEnv {
        let dir = tempfile::tempdir().unwrap();
        // Bind and drop to get a port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let token = strata_operator::broker_cluster::generate_token().unwrap();
        Self::build(format!("http://127.0.0.1:{port}"), None, dir, token)
    }

    /// With a real broker on loopback that requires authentication (as a
    /// BrokerCluster's brokers do by default); its admin token is in the
    /// Secret `main-admin-token`.
    pub async fn with_broker() -> TestEnv {
        let dir = tempfile::tempdir().unwrap();
        let token = strata_operator::broker_cluster::generate_token().unwrap();
        let token_file = dir.path().join("admin.token");
        std::fs::write(&token_file, &token).unwrap();
        let mut config = strata_broker::Config::default();
        config.storage.data_dir = dir.path().join("data");
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.server.http_listen = "127.0.0.1:0".parse().unwrap();
        config.auth.mode = strata_broker::config::AuthMode::Required;
        config.auth.admin_token_file = token_file;
        let broker = strata_broker::start(config).await.unwrap();
        let url = format!("http://{}", broker.grpc_addr());
        Self::build(url, Some(broker), dir, token)
    }

    fn build(
        url: String,
        broker: Option<strata_broker::RunningBroker>,
        dir: tempfile::TempDir,
        token: String,
    ) -> TestEnv {
        let (client, fake) = FakeApi::start();
        let ctx = Arc::new(Context::new(client, Arc::new(FixedAddress(url)), Arc::new(Metrics::new()), settings()));
        fake.insert(secret_json(CLUSTER_NS, "main-admin-token", &[("token", &token)]));
        TestEnv { fake, ctx, broker, admin_token: token, _dir: dir }
    }

    /// The loopback broker's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.broker.as_ref().expect("a broker").grpc_addr())
    }

    /// A `strata-client` for the loopback broker, as the cluster admin.
    pub async fn client(&self) -> strata_client::Client {
        let options = strata_client::ConnectOptions::new().token(self.admin_token.clone());
        strata_client::Client::connect_with(&self.url(), options).await.unwrap()
    }

    /// Reads the object at `path` from the fake API and reconciles it once.
    pub async fn reconcile<K: BrokerResource>(&self, path: &str) -> Action {
        let obj: K = serde_json::from_value(self.fake.get(path).expect("object exists")).unwrap();
        lifecycle::reconcile(Arc::new(obj), self.ctx.clone()).await.expect("reconcile never fails on bad specs")
    }

    /// The `Ready` condition: (status, reason, message).
    pub fn ready(&self, path: &str) -> (String, String, String) {
        self.condition(path, "Ready").unwrap_or_default()
    }

    /// Asserts that the Ready condition is `False` for `reason`, with a
    /// message that contains `text`.
    #[track_caller]
    pub fn assert_not_ready(&self, path: &str, reason: &str, text: &str) {
        let (status, actual, message) = self.ready(path);
        assert_eq!((status.as_str(), actual.as_str()), ("False", reason));
        assert!(message.contains(text), "{message}");
    }

    pub fn condition(&self, path: &str, type_: &str) -> Option<(String, String, String)> {
        let obj = self.fake.get(path)?;
        obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_).map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_owned(),
                c["reason"].as_str().unwrap_or_default().to_owned(),
                c["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
    }

    pub fn finalizers(&self, path: &str) -> Vec<String> {
        self.fake
            .get(path)
            .and_then(|o| o["metadata"]["finalizers"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|f| f.as_str().map(str::to_owned))
            .collect()
    }

    /// Inserts the BrokerCluster `main` and the Tenant `default` allowing `NS`.
    pub fn insert_cluster_and_tenant(&self) {
        self.fake.insert(cluster_json("main"));
        self.fake.insert(tenant_json("default", &[NS]));
    }

    /// A broker with its cluster and tenant in the API and topic `name` of
    /// `partitions`; the environment and a client of the broker.
    pub async fn with_topic(name: &str, partitions: u32) -> (TestEnv, strata_client::Client) {
        let env = TestEnv::with_broker().await;
        env.insert_cluster_and_tenant();
        let client = env.client().await;
        client.create_topic(name, partitions, strata_client::TopicOptions::default()).await.unwrap();
        (env, client)
    }
}

pub fn cluster_json(name: &str) -> Value {
    json!({
        "apiVersion": "strata.dev/v1alpha1", "kind": "BrokerCluster",
        "metadata": {"name": name, "namespace": CLUSTER_NS},
        "spec": {"replicas": 3}
    })
}

pub fn tenant_json(name: &str, allowed: &[&str]) -> Value {
    json!({
        "apiVersion": "strata.dev/v1alpha1", "kind": "Tenant",
        "metadata": {"name": name, "namespace": CLUSTER_NS},
        "spec": {"clusterRef": {"name": "main"}, "allowedNamespaces": allowed, "deletionPolicy": "Retain"}
    })
}

/// A Secret as the API server would hold it (`data` base64).
pub fn secret_json(ns: &str, name: &str, data: &[(&str, &str)]) -> Value {
    use base64::Engine as _;
    let b64 = |v: &str| base64::engine::general_purpose::STANDARD.encode(v);
    let data: serde_json::Map<String, Value> = data.iter().map(|(k, v)| ((*k).to_owned(), json!(b64(v)))).collect();
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns}, "type": "Opaque", "data": data})
}

/// A Secret's `data` key, decoded.
pub fn secret_value(secret: &Value, key: &str) -> Option<String> {
    use base64::Engine as _;
    let v = secret["data"][key].as_str()?;
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v).ok()?).ok()
}

pub fn cluster_path(name: &str) -> String {
    path_of("strata.dev/v1alpha1", "BrokerCluster", CLUSTER_NS, name)
}

pub fn requeue_after(action: &Action) -> String {
    format!("{action:?}")
}

/// Moves tokio's clock (what the backoff and the drift memory read) forward
/// by `by`, then lets it run on in real time again.
pub async fn time_passes(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

#[tokio::test]
async fn healthz_and_metrics_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let metrics = Arc::new(Metrics::new());
    metrics.observe("Topic", Duration::from_millis(3), None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(strata_operator::http::serve(listener, metrics, async {
        let _ = rx.await;
    }));
    for (path, want) in [("/healthz", "ok"), ("/metrics", "strata_operator_reconciles_total{kind=\"Topic\"} 1")] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.contains(want), "{path}: {out}");
    }
    tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}
