//! The operator on a real cluster: install the CRDs, run the operator (in
//! this process, against `KUBECONFIG`), apply `examples/`, wait for the
//! result, delete everything and check the clean-up.
//!
//! Without `KUBECONFIG` it prints `skipped: no KUBECONFIG`. The broker image
//! of `examples/broker-cluster.yaml` is replaced by `STRATA_E2E_BROKER_IMAGE`
//! when set (load it into kind/k3d first); only then are the brokers expected
//! to become Ready and the Topic and ConsumerGroup with them. The operator
//! reaches the brokers through `STRATA_E2E_BROKER_URL` (e.g. a
//! `kubectl port-forward svc/main 7070`) when it runs outside the cluster.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use serde_json::json;

const MANAGER: &str = "strata-e2e";

async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn examples() -> anyhow::Result<Vec<DynamicObject>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut out = Vec::new();
    for file in
        ["broker-cluster.yaml", "tenant.yaml", "topic.yaml", "queue-dlq.yaml", "queue.yaml", "consumer-group.yaml"]
    {
        let text = std::fs::read_to_string(dir.join(file))?;
        let mut obj: DynamicObject = serde_yaml::from_str(&text).with_context(|| file.to_owned())?;
        if let (Ok(image), Some(t)) = (std::env::var("STRATA_E2E_BROKER_IMAGE"), obj.types.as_ref())
            && t.kind == "BrokerCluster"
        {
            obj.data["spec"]["image"] = json!(image);
        }
        out.push(obj);
    }
    Ok(out)
}

fn api_for(client: &kube::Client, obj: &DynamicObject) -> Api<DynamicObject> {
    let t = obj.types.as_ref().expect("examples have apiVersion and kind");
    let (group, version) = t.api_version.split_once('/').unwrap_or(("", &t.api_version));
    let gvk = GroupVersionKind::gvk(group, version, &t.kind);
    let plural = format!("{}s", t.kind.to_ascii_lowercase());
    let ar = ApiResource::from_gvk_with_plural(&gvk, &plural);
    Api::namespaced_with(client.clone(), obj.metadata.namespace.as_deref().unwrap_or("default"), &ar)
}

fn ready(obj: &DynamicObject) -> Option<(String, String)> {
    let c = obj.data["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")?;
    Some((c["status"].as_str()?.to_owned(), c["reason"].as_str()?.to_owned()))
}

#[tokio::test]
async fn operator_on_a_real_cluster() -> anyhow::Result<()> {
    if std::env::var_os("KUBECONFIG").is_none() {
        println!("skipped: no KUBECONFIG");
        return Ok(());
    }
    let client = kube::Client::try_default().await?;
    let apply = PatchParams::apply(MANAGER).force();

    // 1. CRDs, established.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in strata_operator::crdgen::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(&name, &apply, &Patch::Apply(&crd)).await?;
        poll(&format!("CRD {name} established"), Duration::from_secs(60), || {
            let crds = crds.clone();
            let name = name.clone();
            async move {
                let c = crds.get(&name).await?;
                let ok = c
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                Ok(ok.then_some(()))
            }
        })
        .await?;
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in ["strata", "team-a"] {
        namespaces
            .patch(
                ns,
                &apply,
                &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})),
            )
            .await?;
    }

    // 2. The operator, in this process.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let config = strata_operator::Config {
        settings: strata_operator::context::Settings { resync: Duration::from_secs(10), ..Default::default() },
        leader_election: None,
        broker_url: std::env::var("STRATA_E2E_BROKER_URL").ok(),
    };
    let operator = tokio::spawn(strata_operator::run(config, client.clone(), listener, async {
        let _ = stop_rx.await;
    }));

    // 3. The examples.
    let objects = examples()?;
    for obj in &objects {
        let api = api_for(&client, obj);
        api.patch(&obj.metadata.name.clone().unwrap_or_default(), &apply, &Patch::Apply(obj)).await?;
    }
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), "strata");
    poll("the StatefulSet of BrokerCluster main", Duration::from_secs(60), || {
        let sts = sts.clone();
        async move { Ok(sts.get_opt("main").await?.map(|_| ())) }
    })
    .await?;
    let brokers_expected = std::env::var_os("STRATA_E2E_BROKER_IMAGE").is_some();
    for obj in &objects {
        let kind = obj.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default();
        let name = obj.metadata.name.clone().unwrap_or_default();
        let api = api_for(&client, obj);
        let want_ready = brokers_expected;
        let (status, reason) = poll(&format!("{kind} {name} to report Ready"), Duration::from_secs(300), || {
            let api = api.clone();
            let name = name.clone();
            async move {
                let o = api.get(&name).await?;
                Ok(ready(&o).filter(|(s, _)| !want_ready || s == "True"))
            }
        })
        .await?;
        println!("{kind} {name}: Ready={status} ({reason})");
    }

    // 4. Delete everything, leaves first; check nothing is left behind.
    for obj in objects.iter().rev() {
        let api = api_for(&client, obj);
        let name = obj.metadata.name.clone().unwrap_or_default();
        if obj.types.as_ref().is_some_and(|t| t.kind == "Queue") {
            // Queues are Retain in the example; their broker API is not wired yet.
            api.patch(&name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"deletionPolicy": "Retain"}})))
                .await?;
        }
        if obj.types.as_ref().is_some_and(|t| t.kind == "Topic") {
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"strata.dev/force-delete": "true"}}})),
            )
            .await?;
        }
        api.delete(&name, &DeleteParams::default()).await?;
    }
    for obj in &objects {
        let api = api_for(&client, obj);
        let name = obj.metadata.name.clone().unwrap_or_default();
        poll(&format!("{name} to be gone"), Duration::from_secs(120), || {
            let api = api.clone();
            let name = name.clone();
            async move { Ok(api.get_opt(&name).await?.is_none().then_some(())) }
        })
        .await?;
    }
    poll("the StatefulSet to be garbage-collected", Duration::from_secs(120), || {
        let sts = sts.clone();
        async move { Ok(sts.get_opt("main").await?.is_none().then_some(())) }
    })
    .await?;
    let _ = stop_tx.send(());
    operator.await??;
    Ok(())
}
