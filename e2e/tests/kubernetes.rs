//! Strata on a real Kubernetes control plane: the CRDs, the operator
//! running in the cluster from the rendered Helm chart (two replicas with
//! leader election, its RBAC exercised for real), `examples/` converging,
//! messages through a broker pod, a crashed broker pod keeping its data,
//! leader hand-over, and a deletion that no finalizer holds up.
//!
//! Prints `skipped: <reason>` when a piece is missing (see the harness in
//! `src/lib.rs`), and fails instead when `CI` is set.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use serde_json::{Value, json};
use strata_e2e::{Cluster, NODE, Prerequisites, Steps, condition, skip_or_fail, wait_for};

/// The operator's namespace and Helm release name.
const OPERATOR_NS: &str = "strata-system";
const RELEASE: &str = "strata";
/// Messages produced through the broker pod.
const MESSAGES: usize = 1000;

#[test]
fn strata_on_a_real_control_plane() -> anyhow::Result<()> {
    let prereq = match Prerequisites::find() {
        Ok(p) => p,
        Err(reason) => {
            skip_or_fail(&reason);
            return Ok(());
        }
    };
    let mut steps = Steps::default();
    let cluster = Cluster::start(&prereq)?;
    steps.pass(&format!(
        "control plane (etcd, kube-apiserver, kube-controller-manager) and kubesim node up; moto on port {}",
        cluster.moto_port
    ));
    let result = scenario(&cluster, &mut steps);
    if let Err(e) = &result {
        eprintln!("e2e failed: {e:#}\n{}", cluster.diagnostics());
    }
    let dir = cluster.tempdir().to_owned();
    cluster.stop()?;
    ensure!(!dir.exists(), "the temporary folder {} is left behind", dir.display());
    result?;
    steps.pass("cleaned up: kubesim stopped its pods and removed its bridge, control plane stopped, temp dir removed");
    Ok(())
}

fn scenario(cluster: &Cluster, steps: &mut Steps) -> anyhow::Result<()> {
    let repo = &cluster.prereq.repo;

    // CRDs, as `helm install` would put them first.
    cluster.kubectl(&["apply", "--server-side", "-f", &repo.join("crds").display().to_string()])?;
    cluster.kubectl(&["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"])?;
    steps.pass("CRDs installed and Established (CEL rules accepted by kube-apiserver)");

    // The operator from the rendered chart: two replicas, leader election.
    let operator = render_chart(
        &repo.join("charts/strata-operator"),
        &json!({"replicas": 2, "leaderElection": {"enabled": true}, "resync": "30s"}),
    )?;
    let deployment = operator
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .and_then(|d| d["metadata"]["name"].as_str())
        .context("the chart renders a Deployment")?
        .to_owned();
    cluster.kubectl(&["create", "namespace", OPERATOR_NS])?;
    let operator_list = json!({"apiVersion": "v1", "kind": "List", "items": operator}).to_string();
    cluster.kubectl_in(&["apply", "-f", "-"], Some(&operator_list))?;
    cluster.kubectl(&[
        "-n",
        OPERATOR_NS,
        "rollout",
        "status",
        &format!("deployment/{deployment}"),
        "--timeout=120s",
    ])?;
    let leader = lease_holder(cluster, None)?;
    steps.pass(&format!(
        "operator running in the cluster from the rendered chart: 2 replicas Ready under its ServiceAccount, leader {leader}"
    ));

    // The examples, in one apply (they converge in any order).
    for ns in ["strata", "team-a"] {
        cluster.kubectl(&["create", "namespace", ns])?;
    }
    let examples = examples(&repo.join("examples"))?;
    let list = json!({"apiVersion": "v1", "kind": "List", "items": examples}).to_string();
    cluster.kubectl_in(&["apply", "-f", "-"], Some(&list))?;
    cluster.kubectl(&["-n", "strata", "wait", "--for=condition=Ready", "brokercluster/main", "--timeout=180s"])?;
    cluster.kubectl(&["-n", "strata", "wait", "--for=condition=Ready", "pod/main-0", "--timeout=60s"])?;
    let pod = cluster.get(&["-n", "strata", "pod", "main-0"])?;
    ensure!(pod["status"]["phase"] == "Running", "broker pod main-0 is {}", pod["status"]["phase"]);
    steps.pass("BrokerCluster main Ready; pod main-0 Running and Ready (readiness probe /readyz)");
    for obj in &examples {
        let kind = obj["kind"].as_str().unwrap_or_default().to_ascii_lowercase();
        if kind == "brokercluster" {
            continue;
        }
        let (ns, name) = (
            obj["metadata"]["namespace"].as_str().unwrap_or("default"),
            obj["metadata"]["name"].as_str().unwrap_or_default(),
        );
        cluster.kubectl(&["-n", ns, "wait", "--for=condition=Ready", &format!("{kind}/{name}"), "--timeout=180s"])?;
    }
    steps.pass("Tenant team-a, Topic orders, Queues order-emails(-dlq), ConsumerGroup billing: kubectl wait --for=condition=Ready");

    // The brokers require authentication (a BrokerCluster's default): the
    // CLI calls below use the admin token the operator generated.
    let token = admin_token(cluster, "main")?;
    ensure!(token.starts_with("strata_"), "the generated admin token is not in the broker's format");
    let anonymous = format!("http://{}:7070", pod_ip(cluster, "strata", "main-0")?);
    let refused = cluster.strata(&["--server", &anonymous, "tenant", "list"], None, Duration::from_secs(30));
    ensure!(refused.is_err(), "an anonymous call was accepted: {refused:?}");
    steps.pass(
        "auth required by default: Secret main-admin-token generated by the operator; an anonymous CLI call is refused",
    );

    // Messages through the broker pod's own address.
    let server = format!("http://{}:7070", pod_ip(cluster, "strata", "main-0")?);
    let sent: BTreeSet<String> = (0..MESSAGES).map(|i| format!("e2e-{i}")).collect();
    let input = sent.iter().map(|m| format!("{m}\n")).collect::<String>();
    cluster.strata(
        &["--server", &server, "--token", &token, "--tenant", "team-a", "produce", "orders"],
        Some(&input),
        Duration::from_secs(60),
    )?;
    let got = consume_all(cluster, &server, &token)?;
    ensure!(
        got == sent,
        "consumed {} distinct messages, {} differ from those produced",
        got.len(),
        got.symmetric_difference(&sent).count()
    );
    steps.pass(&format!("{MESSAGES} messages produced and consumed through {server} (strata CLI, tenant team-a)"));

    // A crash: SIGKILL the broker; kubesim restarts it on the same volume.
    let restarts = restart_count(cluster, "strata", "main-0")?;
    cluster.kubesim(&["kill", "main-0", "-n", "strata"])?;
    wait_for("main-0 to restart after SIGKILL and be Ready", Duration::from_secs(120), || {
        let pod = cluster.get(&["-n", "strata", "pod", "main-0"])?;
        let n = pod["status"]["containerStatuses"][0]["restartCount"].as_i64().unwrap_or(0);
        Ok((n > restarts && condition(&pod, "Ready").as_deref() == Some("True")).then_some(()))
    })?;
    let server = format!("http://{}:7070", pod_ip(cluster, "strata", "main-0")?);
    let again = consume_all(cluster, &server, &token)?;
    ensure!(again == sent, "after the crash {} of {MESSAGES} messages read back", again.intersection(&sent).count());
    cluster.kubectl(&["-n", "team-a", "wait", "--for=condition=Ready", "topic/orders", "--timeout=60s"])?;
    steps.pass(&format!("kubesim kill main-0 (SIGKILL): restarted, Ready, all {MESSAGES} messages read back"));

    principal_secret(cluster, steps, &server, &token)?;

    // Leader hand-over: delete the leader's pod; another replica takes the lease.
    cluster.kubectl(&["-n", OPERATOR_NS, "delete", "pod", &leader, "--timeout=60s"])?;
    let new_leader = lease_holder(cluster, Some(&leader))?;
    // The new leader reconciles: a new Topic becomes Ready.
    let topic = json!({
        "apiVersion": "strata.dev/v1alpha1", "kind": "Topic",
        "metadata": {"name": "audit", "namespace": "team-a"},
        "spec": {"clusterRef": {"name": "main", "namespace": "strata"}, "tenant": "team-a", "partitions": 2}
    });
    cluster.kubectl_in(&["apply", "-f", "-"], Some(&topic.to_string()))?;
    cluster.kubectl(&["-n", "team-a", "wait", "--for=condition=Ready", "topic/audit", "--timeout=120s"])?;
    steps.pass(&format!(
        "leader pod {leader} deleted: lease handed over to {new_leader}, which reconciles (Topic audit Ready)"
    ));

    tiered_storage(cluster, steps, &token)?;
    three_brokers(cluster, steps)?;
    growing_cluster(cluster, steps)?;

    // RBAC exercised for real: nothing the operator did was forbidden.
    let logs = cluster.container_logs(OPERATOR_NS)?;
    let lines: usize = logs.iter().map(|(_, t)| t.lines().count()).sum();
    ensure!(lines > 0, "the operator pods logged nothing");
    for (file, text) in &logs {
        if let Some(line) = text.lines().find(|l| l.to_ascii_lowercase().contains("forbidden")) {
            bail!("the operator was refused by RBAC ({file}): {line}");
        }
    }
    steps.pass(&format!("no `forbidden` in {} operator container logs ({lines} lines)", logs.len()));

    delete_everything(cluster, &examples, &operator_list)?;
    steps.pass("deleted the examples, their namespaces, the operator and the CRDs: no finalizer held anything up, no volume left");
    Ok(())
}

/// Renders the chart with the real Helm engine (helm-python-sdk); the
/// manifests as JSON objects.
fn render_chart(chart: &Path, values: &Value) -> anyhow::Result<Vec<Value>> {
    const SCRIPT: &str = r#"
import json, sys, yaml, helm_python as helm
chart, ns, release, values = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
with helm.Chart.load(chart) as c:
    out = c.render(values, name=release, namespace=ns, is_install=True)
docs = [d for path, text in sorted(out.items()) if path.endswith((".yaml", ".yml")) for d in yaml.safe_load_all(text) if d]
print(json.dumps(docs))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(chart)
        .args([OPERATOR_NS, RELEASE, &values.to_string()])
        .output()?;
    ensure!(out.status.success(), "rendering the chart failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `examples/*.yaml` as objects. The BrokerCluster runs one broker, to keep
/// the suite light (steps `three_brokers` and `growing_cluster` run clusters of their own).
fn examples(dir: &Path) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    files.sort_by_key(std::fs::DirEntry::path);
    // The top-level examples (examples/gitops/ is for Argo CD and Flux).
    for f in files.into_iter().filter(|f| f.path().extension().is_some_and(|e| e == "yaml")) {
        let text = std::fs::read_to_string(f.path())?;
        let mut obj: Value = serde_yaml::from_str(&text).with_context(|| f.path().display().to_string())?;
        if obj["kind"] == "BrokerCluster" {
            obj["spec"]["replicas"] = json!(1);
        }
        out.push(obj);
    }
    ensure!(out.len() >= 6, "examples/ has {} objects", out.len());
    Ok(out)
}

/// The operator Lease's holder once it is held (by someone other than `not`).
fn lease_holder(cluster: &Cluster, not: Option<&str>) -> anyhow::Result<String> {
    let holder = wait_for("the operator's Lease to be held by a replica", Duration::from_secs(90), || {
        let lease = cluster.kubectl(&[
            "-n",
            OPERATOR_NS,
            "get",
            "lease",
            "strata-operator",
            "--ignore-not-found",
            "-o",
            "json",
        ])?;
        if lease.trim().is_empty() {
            return Ok(None);
        }
        let lease: Value = serde_json::from_str(&lease)?;
        let holder = lease["spec"]["holderIdentity"].as_str().unwrap_or_default().to_owned();
        Ok((!holder.is_empty() && Some(holder.as_str()) != not).then_some(holder))
    })?;
    // The holder is a live operator pod (its name, or its name and a suffix).
    let pods = cluster.get(&["-n", OPERATOR_NS, "pods"])?;
    let pod = pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["metadata"]["name"].as_str())
        .find(|name| holder == *name || holder.starts_with(&format!("{name}_")))
        .with_context(|| format!("the Lease holder {holder} is no operator pod"))?;
    Ok(pod.to_owned())
}

fn pod_ip(cluster: &Cluster, ns: &str, pod: &str) -> anyhow::Result<String> {
    let ip = cluster.kubectl(&["-n", ns, "get", "pod", pod, "-o", "jsonpath={.status.podIP}"])?;
    ensure!(!ip.is_empty(), "pod {pod} has no IP");
    Ok(ip)
}

fn restart_count(cluster: &Cluster, ns: &str, pod: &str) -> anyhow::Result<i64> {
    let pod = cluster.get(&["-n", ns, "pod", pod])?;
    Ok(pod["status"]["containerStatuses"][0]["restartCount"].as_i64().unwrap_or(0))
}

fn consume_all(cluster: &Cluster, server: &str, token: &str) -> anyhow::Result<BTreeSet<String>> {
    consume(cluster, server, token, "orders", MESSAGES)
}

/// `strata cluster describe --json` answered by `server`.
fn cluster_view(cluster: &Cluster, server: &str, token: &str) -> anyhow::Result<Value> {
    let text = cluster.strata(
        &["--server", server, "--token", token, "cluster", "describe", "--json"],
        None,
        Duration::from_secs(30),
    )?;
    serde_json::from_str(&text).with_context(|| text.clone())
}

/// Applies a BrokerCluster `name` in namespace strata (`replicas` brokers
/// with 1Gi volumes) and waits until it is Ready.
fn apply_broker_cluster(cluster: &Cluster, name: &str, replicas: u32) -> anyhow::Result<()> {
    let spec = json!({
        "apiVersion": "strata.dev/v1alpha1", "kind": "BrokerCluster",
        "metadata": {"name": name, "namespace": "strata"},
        "spec": {"replicas": replicas, "storage": {"size": "1Gi"}}
    });
    cluster.kubectl_in(&["apply", "-f", "-"], Some(&spec.to_string()))?;
    let resource = format!("brokercluster/{name}");
    cluster.kubectl(&["-n", "strata", "wait", "--for=condition=Ready", &resource, "--timeout=240s"])?;
    Ok(())
}

/// The cluster-admin token of BrokerCluster `name` (the Secret the operator
/// generated, key `token`).
fn admin_token(cluster: &Cluster, name: &str) -> anyhow::Result<String> {
    secret_key(cluster, "strata", &format!("{name}-admin-token"), "token")
}

/// A Secret's key, decoded.
fn secret_key(cluster: &Cluster, ns: &str, secret: &str, key: &str) -> anyhow::Result<String> {
    let template = format!("go-template={{{{index .data \"{key}\" | base64decode}}}}");
    let value = cluster.kubectl(&["-n", ns, "get", "secret", secret, "-o", &template])?;
    ensure!(!value.trim().is_empty(), "Secret {ns}/{secret} has no {key}");
    Ok(value.trim().to_owned())
}

/// The Tenant's principal (examples/tenant.yaml): the operator made its
/// token Secret in namespace team-a; that token produces to the tenant's
/// topic and is refused on another tenant's topic of the same name.
fn principal_secret(cluster: &Cluster, steps: &mut Steps, server: &str, admin: &str) -> anyhow::Result<()> {
    let secret = "strata-team-a-orders-writer";
    wait_for("the principal's token Secret in namespace team-a", Duration::from_secs(60), || {
        let out = cluster.kubectl(&["-n", "team-a", "get", "secret", secret, "--ignore-not-found", "-o", "name"])?;
        Ok((!out.trim().is_empty()).then_some(()))
    })?;
    let token = secret_key(cluster, "team-a", secret, "token")?;
    let url = secret_key(cluster, "team-a", secret, "server")?;
    ensure!(url == "http://main.strata.svc:7070", "the Secret's server is {url}");
    ensure!(secret_key(cluster, "team-a", secret, "tenant")? == "team-a", "the Secret names its tenant");
    // The principal's own tenant is implied: no --tenant.
    cluster.strata(
        &["--server", server, "--token", &token, "produce", "orders"],
        Some("from-the-secret\n"),
        Duration::from_secs(30),
    )?;
    let t = Duration::from_secs(30);
    cluster.strata(&["--server", server, "--token", admin, "tenant", "create", "team-b"], None, t)?;
    cluster.strata(
        &["--server", server, "--token", admin, "--tenant", "team-b", "topic", "create", "orders"],
        None,
        t,
    )?;
    let refused = cluster.strata(
        &["--server", server, "--token", &token, "--tenant", "team-b", "produce", "orders"],
        Some("must-not-land\n"),
        t,
    );
    let error = match refused {
        Ok(out) => bail!("the principal of team-a produced to team-b's topic: {out}"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        error.contains("may not access tenant \"team-b\"") || error.contains("not found"),
        "refused, but not for the tenant boundary: {error}"
    );
    let described = cluster.strata(
        &["--server", server, "--token", admin, "--tenant", "team-b", "topic", "describe", "orders"],
        None,
        t,
    )?;
    ensure!(!described.contains("must-not-land"), "{described}");
    cluster.strata(
        &["--server", server, "--token", admin, "--tenant", "team-b", "topic", "delete", "orders"],
        None,
        t,
    )?;
    cluster.strata(&["--server", server, "--token", admin, "tenant", "delete", "team-b"], None, t)?;
    steps.pass(&format!(
        "Tenant team-a principal orders-writer: Secret team-a/{secret} (token, tenant, server {url}); its token produces to team-a's orders and is refused on team-b's orders"
    ));
    Ok(())
}

/// Reads `count` messages of a topic of tenant team-a from the earliest offset.
fn consume(
    cluster: &Cluster,
    server: &str,
    token: &str,
    topic: &str,
    count: usize,
) -> anyhow::Result<BTreeSet<String>> {
    let out = cluster.strata(
        &[
            "--server",
            server,
            "--token",
            token,
            "--tenant",
            "team-a",
            "consume",
            topic,
            "--from",
            "earliest",
            "--count",
            &count.to_string(),
        ],
        None,
        Duration::from_secs(60),
    )?;
    Ok(out.lines().map(str::to_owned).collect())
}

/// The cold tier on S3 (moto on the host): a missing credentials Secret is
/// reported on the BrokerCluster (not a crash-looping pod); with the Secret
/// the broker rolls onto the tier; a topic with a small local retention
/// uploads its sealed segments, drops the local copies, shows both ranges in
/// its status and reads back whole from the cold tier.
fn tiered_storage(cluster: &Cluster, steps: &mut Steps, token: &str) -> anyhow::Result<()> {
    const BUCKET: &str = "strata-e2e";
    const TIERED: usize = 3000;
    let moto = std::net::SocketAddr::from(([127, 0, 0, 1], cluster.moto_port));
    let created = strata_testkit::http(moto, &format!("PUT /{BUCKET} HTTP/1.1")).context("moto answers")?;
    ensure!(created.contains(" 200"), "create bucket {BUCKET}: {created}");
    let tier = json!({"spec": {"tier": {
        "coldStore": format!("s3://{BUCKET}/main"),
        "s3": {"endpoint": format!("http://host.kubesim.internal:{}", cluster.moto_port), "region": "us-east-1"},
        "credentialsSecret": {"name": "cold-store"}
    }}});
    cluster.kubectl(&["-n", "strata", "patch", "brokercluster", "main", "--type=merge", "-p", &tier.to_string()])?;
    let reason = wait_for("BrokerCluster main to report the missing Secret", Duration::from_secs(60), || {
        let bc = cluster.get(&["-n", "strata", "brokercluster", "main"])?;
        let ready =
            bc["status"]["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == "Ready")).cloned();
        Ok(ready.filter(|c| c["status"] == "False").and_then(|c| c["reason"].as_str().map(str::to_owned)))
    })?;
    ensure!(reason == "SecretNotFound", "Ready=False because {reason}, expected SecretNotFound");
    let events = cluster.kubectl(&["-n", "strata", "get", "events", "--field-selector", "involvedObject.name=main"])?;
    ensure!(events.contains("SecretNotFound"), "no SecretNotFound event for main: {events}");
    cluster.kubectl(&[
        "-n",
        "strata",
        "create",
        "secret",
        "generic",
        "cold-store",
        "--from-literal=AWS_ACCESS_KEY_ID=e2e",
        "--from-literal=AWS_SECRET_ACCESS_KEY=e2e-secret",
    ])?;
    // The operator updates the StatefulSet only once it sees the Secret, so
    // `rollout status` right now may still report the old revision: wait for
    // main-0 of the revision that names the Secret (the pod may be gone for
    // a moment while the StatefulSet replaces it).
    wait_for("main-0 Ready on the StatefulSet revision with the cold store", Duration::from_secs(240), || {
        let sts = cluster.get(&["-n", "strata", "statefulset", "main"])?;
        let applied = sts["spec"]["template"].to_string().contains("cold-store")
            && sts["status"]["observedGeneration"] == sts["metadata"]["generation"];
        let revision = sts["status"]["updateRevision"].clone();
        let pods = cluster.get(&["-n", "strata", "pods", "--field-selector", "metadata.name=main-0"])?;
        let ready = pods["items"].as_array().and_then(|i| i.first()).is_some_and(|pod| {
            pod["metadata"]["labels"]["controller-revision-hash"] == revision
                && pod["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        });
        Ok((applied && ready).then_some(()))
    })?;
    cluster.kubectl(&["-n", "strata", "wait", "--for=condition=Ready", "brokercluster/main", "--timeout=180s"])?;
    steps.pass("cold store Secret missing: BrokerCluster Ready=False (SecretNotFound) with an Event; Secret created: pods rolled onto the S3 tier");

    let topic = json!({
        "apiVersion": "strata.dev/v1alpha1", "kind": "Topic",
        "metadata": {"name": "archive", "namespace": "team-a"},
        "spec": {"clusterRef": {"name": "main", "namespace": "strata"}, "tenant": "team-a", "partitions": 1,
                 "segmentBytes": 16384, "localRetentionBytes": 32768}
    });
    cluster.kubectl_in(&["apply", "-f", "-"], Some(&topic.to_string()))?;
    cluster.kubectl(&["-n", "team-a", "wait", "--for=condition=Ready", "topic/archive", "--timeout=120s"])?;
    let server = format!("http://{}:7070", pod_ip(cluster, "strata", "main-0")?);
    let sent: BTreeSet<String> = (0..TIERED).map(|i| format!("cold-{i:05}-{}", "x".repeat(200))).collect();
    let input = sent.iter().map(|m| format!("{m}\n")).collect::<String>();
    cluster.strata(
        &["--server", &server, "--token", token, "--tenant", "team-a", "produce", "archive"],
        Some(&input),
        Duration::from_secs(60),
    )?;
    let ranges = wait_for(
        "Topic archive's status to show an uploaded, locally trimmed range",
        Duration::from_secs(180),
        || {
            let t = cluster.get(&["-n", "team-a", "topic", "archive"])?;
            let p = &t["status"]["partitionOffsets"][0];
            let n = |k: &str| p[k].as_u64().unwrap_or(0);
            Ok((n("remoteEndOffset") > 0
                && n("localStartOffset") > 0
                && n("remoteStartOffset") < n("localStartOffset"))
            .then(|| (n("remoteStartOffset"), n("remoteEndOffset"), n("localStartOffset"), n("endOffset"))))
        },
    )?;
    let got = consume(cluster, &server, token, "archive", TIERED)?;
    ensure!(got == sent, "read back {} of {TIERED} tiered messages", got.intersection(&sent).count());
    steps.pass(&format!(
        "Topic archive: remote [{}, {}), local [{}, {}) in kubectl get topic; all {TIERED} messages read back, the first {} from S3",
        ranges.0, ranges.1, ranges.2, ranges.3, ranges.2
    ));
    Ok(())
}

/// A `replicas: 3` BrokerCluster forms one cluster: every broker reports
/// the same three members and one metadata leader, and a topic created
/// through one pod is there on the others, spread 2/2/2.
fn three_brokers(cluster: &Cluster, steps: &mut Steps) -> anyhow::Result<()> {
    // The node is in a zone: the operator copies it into each broker pod's
    // annotation, which the broker reads as its zone file.
    cluster.kubectl(&["label", "node", NODE, &format!("topology.kubernetes.io/zone={ZONE}"), "--overwrite"])?;
    apply_broker_cluster(cluster, "trio", 3)?;
    // Auth required: the brokers authenticate to each other with the admin token too.
    let token = admin_token(cluster, "trio")?;
    let servers: Vec<String> = (0..3)
        .map(|i| pod_ip(cluster, "strata", &format!("trio-{i}")).map(|ip| format!("http://{ip}:7070")))
        .collect::<anyhow::Result<_>>()?;
    let mut leaders = BTreeSet::new();
    for server in &servers {
        let view = cluster_view(cluster, server, &token)?;
        let mut ids: Vec<u64> =
            view["brokers"].as_array().into_iter().flatten().filter_map(|b| b["id"].as_u64()).collect();
        ids.sort_unstable();
        ensure!(ids == [0, 1, 2], "{server} knows brokers {ids:?}: {view}");
        leaders.insert(view["leader_id"].as_u64().with_context(|| format!("{server} has no metadata leader: {view}"))?);
    }
    ensure!(leaders.len() == 1, "the brokers disagree on the metadata leader: {leaders:?}");
    let leader = leaders.into_iter().next().unwrap_or_default();
    cluster.strata(
        &["--server", &servers[0], "--token", &token, "topic", "create", "spread", "--partitions", "6"],
        None,
        Duration::from_secs(30),
    )?;
    let mut owners = Vec::new();
    for server in &servers[1..] {
        let text = cluster.strata(
            &["--server", server, "--token", &token, "topic", "describe", "spread"],
            None,
            Duration::from_secs(30),
        )?;
        let mut rows: Vec<String> = partition_columns(&text, "OWNER").into_iter().map(|(_, owner)| owner).collect();
        rows.sort();
        ensure!(rows.len() == 6, "topic spread through {server}: {text}");
        ensure!(
            partition_columns(&text, "REPLICAS").iter().all(|(_, r)| r.split(',').count() == 3),
            "topic spread is not replicated 3 times by default in a cluster of 3: {text}"
        );
        owners.push(rows);
    }
    ensure!(owners[0] == owners[1], "trio-1 and trio-2 disagree on the owners: {owners:?}");
    ensure!(owners[0] == ["0", "0", "1", "1", "2", "2"], "partitions not spread 2/2/2: {:?}", owners[0]);
    // Every partition's Raft group elects a leader.
    let leaders = wait_for("a leader for every partition of spread", Duration::from_secs(90), || {
        let text = cluster.strata(
            &["--server", &servers[2], "--token", &token, "topic", "describe", "spread"],
            None,
            Duration::from_secs(30),
        )?;
        let leaders: Vec<String> = partition_columns(&text, "LEADER").into_iter().map(|(_, l)| l).collect();
        Ok((leaders.len() == 6 && leaders.iter().all(|l| l != "-")).then_some(leaders))
    })?;
    let reported = three_brokers_reported(cluster, "trio")?;
    steps.pass(&format!(
        "BrokerCluster trio (replicas 3) formed one cluster: brokers 0, 1, 2 on every pod, metadata leader {leader}; a 6-partition topic created through trio-0 is replicated on all three (the default factor) with owners 2/2/2, as trio-1 and trio-2 both report, and partition leaders {leaders:?}; status (brokers, metadataLeader, unownedPartitions) = {reported:?}"
    ));
    wait_for(&format!("every broker of trio to report zone {ZONE}"), Duration::from_secs(90), || {
        let view = cluster_view(cluster, &servers[2], &token)?;
        let zones: Vec<&str> =
            view["brokers"].as_array().into_iter().flatten().filter_map(|b| b["zone"].as_str()).collect();
        Ok((zones == [ZONE; 3]).then_some(()))
    })?;
    steps.pass(&format!(
        "node label topology.kubernetes.io/zone={ZONE} reaches the brokers: each pod annotated strata.dev/zone by the operator, read by its broker (downward API), all three reported in {ZONE}"
    ));

    survives_a_killed_pod(cluster, steps, &servers, &token)?;
    // The Topic and the Tenant first: their finalizers need the brokers.
    cluster.kubectl(&["-n", "strata", "delete", "topic", "events", "--timeout=60s"])?;
    cluster.kubectl(&["-n", "strata", "delete", "tenant", "trio-apps", "--timeout=60s"])?;
    cluster.kubectl(&["-n", "strata", "delete", "brokercluster", "trio", "--timeout=90s"])?;
    Ok(())
}

/// The zone kubesim's node is labelled with.
const ZONE: &str = "e2e-zone-a";

/// A Topic the operator manages on trio, as every broker reports it:
/// (partition, owner) rows of `strata topic describe`.
fn topic_rows(cluster: &Cluster, server: &str, token: &str) -> anyhow::Result<Vec<(String, String)>> {
    let text = cluster.strata(
        &["--server", server, "--token", token, "--tenant", "trio-apps", "topic", "describe", "events"],
        None,
        Duration::from_secs(30),
    )?;
    Ok(partition_columns(&text, "OWNER"))
}

/// (partition, the `column` named) of each row of `strata topic describe`'s
/// partition table.
fn partition_columns(text: &str, column: &str) -> Vec<(String, String)> {
    let mut lines = text.lines().skip_while(|l| !l.starts_with("PARTITION"));
    let Some(index) = lines.next().and_then(|h| h.split_whitespace().position(|c| c == column)) else {
        return Vec::new();
    };
    lines
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            Some((cols.first()?.to_string(), cols.get(index)?.to_string()))
        })
        .collect()
}

/// The changes and drift the operator reported on Topic `events` (reason,
/// message, how many times), from its Events.
fn topic_changes(cluster: &Cluster) -> anyhow::Result<Vec<(String, String, i64)>> {
    let events = cluster.get(&["-n", "strata", "events"])?;
    let mut changes: Vec<(String, String, i64)> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["involvedObject"]["kind"] == "Topic" && e["involvedObject"]["name"] == "events")
        .filter(|e| matches!(e["reason"].as_str(), Some("Updated" | "Drifted")))
        .map(|e| {
            let count = e["series"]["count"].as_i64().or(e["count"].as_i64()).unwrap_or(1);
            (
                e["reason"].as_str().unwrap_or_default().to_owned(),
                e["message"].as_str().unwrap_or_default().to_owned(),
                count,
            )
        })
        .collect();
    changes.sort();
    Ok(changes)
}

/// The operator manages a Topic on trio; a trio pod is SIGKILLed. While it
/// is down and after it is back, the operator's reconciles (forced by
/// touching the Topic) go through the other brokers to the one catalog: the
/// topic is never created again elsewhere, nothing is reported as drift,
/// and its partitions keep their owners.
fn survives_a_killed_pod(cluster: &Cluster, steps: &mut Steps, servers: &[String], token: &str) -> anyhow::Result<()> {
    let objects = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "strata.dev/v1alpha1", "kind": "Tenant",
         "metadata": {"name": "trio-apps", "namespace": "strata"},
         "spec": {"clusterRef": {"name": "trio"}, "allowedNamespaces": ["strata"]}},
        {"apiVersion": "strata.dev/v1alpha1", "kind": "Topic",
         "metadata": {"name": "events", "namespace": "strata"},
         "spec": {"clusterRef": {"name": "trio", "namespace": "strata"}, "tenant": "trio-apps", "partitions": 3}}
    ]});
    cluster.kubectl_in(&["apply", "-f", "-"], Some(&objects.to_string()))?;
    cluster.kubectl(&["-n", "strata", "wait", "--for=condition=Ready", "topic/events", "--timeout=120s"])?;
    let before = topic_rows(cluster, &servers[0], token)?;
    ensure!(before.len() == 3, "topic events before the kill: {before:?}");

    let changes_before = topic_changes(cluster)?;
    ensure!(
        changes_before.iter().any(|(_, m, _)| m == "created topic events with 3 partitions"),
        "no creation event for topic events: {changes_before:?}"
    );
    let restarts = restart_count(cluster, "strata", "trio-1")?;
    cluster.kubesim(&["kill", "trio-1", "-n", "strata"])?;
    // A reconcile while trio-1 is down (a changed object is a watch event).
    cluster.kubectl(&["-n", "strata", "annotate", "topic", "events", "e2e.strata.dev/poke=down", "--overwrite"])?;
    wait_for("trio-1 to restart after SIGKILL and be Ready", Duration::from_secs(120), || {
        let pod = cluster.get(&["-n", "strata", "pod", "trio-1"])?;
        let n = pod["status"]["containerStatuses"][0]["restartCount"].as_i64().unwrap_or(0);
        Ok((n > restarts && condition(&pod, "Ready").as_deref() == Some("True")).then_some(()))
    })?;
    cluster.kubectl(&["-n", "strata", "annotate", "topic", "events", "e2e.strata.dev/poke=after", "--overwrite"])?;
    cluster.kubectl(&["-n", "strata", "wait", "--for=condition=Ready", "topic/events", "--timeout=120s"])?;
    for server in servers {
        let rows = topic_rows(cluster, server, token)?;
        ensure!(rows == before, "after the kill {server} reports topic events as {rows:?}, before {before:?}");
    }
    let topic = cluster.get(&["-n", "strata", "topic", "events"])?;
    ensure!(
        condition(&topic, "Drifted").as_deref() != Some("True"),
        "the operator reported drift after the kill: {}",
        topic["status"]
    );
    let changes = topic_changes(cluster)?;
    ensure!(
        changes == changes_before,
        "the operator changed topic events after the kill: {changes:?} (before the kill: {changes_before:?})"
    );
    steps.pass(&format!(
        "trio-1 SIGKILLed with Topic events (3 partitions) managed on trio: reconciles during and after go to the one catalog; every broker reports the same partitions and owners {before:?}, no drift, no change beyond its creation {changes:?}"
    ));
    Ok(())
}

/// Waits until BrokerCluster `name`'s status shows what its brokers say:
/// three members, a metadata leader among them, no unowned partitions.
fn three_brokers_reported(cluster: &Cluster, name: &str) -> anyhow::Result<(Option<u64>, Option<u64>, Option<u64>)> {
    wait_for(&format!("BrokerCluster {name}'s status to show the brokers' view"), Duration::from_secs(90), || {
        let bc = cluster.get(&["-n", "strata", "brokercluster", name])?;
        let st = &bc["status"];
        let seen = (st["brokers"].as_u64(), st["metadataLeader"].as_u64(), st["unownedPartitions"].as_u64());
        Ok(matches!(seen, (Some(3), Some(l), Some(0)) if l < 3).then_some(seen))
    })
}

/// Sets BrokerCluster `name`'s `spec.replicas`.
fn scale(cluster: &Cluster, name: &str, replicas: u32) -> anyhow::Result<()> {
    let patch = json!({"spec": {"replicas": replicas}}).to_string();
    cluster.kubectl(&["-n", "strata", "patch", "brokercluster", name, "--type=merge", "-p", &patch])?;
    Ok(())
}

/// A BrokerCluster grows: one broker holding a topic with messages is
/// scaled to three; the new pods join its cluster, every broker reports the
/// same three members and one metadata leader, every message reads back,
/// new partitions go to the new brokers, and a smaller replica count is
/// refused (`ScalingBlocked`) while the cluster keeps its size.
fn growing_cluster(cluster: &Cluster, steps: &mut Steps) -> anyhow::Result<()> {
    const KEPT: usize = 300;
    apply_broker_cluster(cluster, "grow", 1)?;
    let first = format!("http://{}:7070", pod_ip(cluster, "strata", "grow-0")?);
    let token = admin_token(cluster, "grow")?;
    cluster.strata(
        &["--server", &first, "--token", &token, "topic", "create", "kept", "--partitions", "3"],
        None,
        Duration::from_secs(30),
    )?;
    let sent: BTreeSet<String> = (0..KEPT).map(|i| format!("kept-{i}")).collect();
    let input = sent.iter().map(|m| format!("{m}\n")).collect::<String>();
    cluster.strata(
        &["--server", &first, "--token", &token, "produce", "kept"],
        Some(&input),
        Duration::from_secs(60),
    )?;

    scale(cluster, "grow", 3)?;
    // Every pod of the new revision and ready (grow-0 restarts last, with
    // the grown seed list).
    wait_for("StatefulSet grow to roll out three ready brokers", Duration::from_secs(240), || {
        let sts = cluster.get(&["-n", "strata", "statefulset", "grow"])?;
        let st = &sts["status"];
        let done = st["readyReplicas"] == 3
            && st["updatedReplicas"] == 3
            && st["currentRevision"] == st["updateRevision"]
            && st["observedGeneration"] == sts["metadata"]["generation"];
        Ok(done.then_some(()))
    })?;
    let servers: Vec<String> = (0..3)
        .map(|i| pod_ip(cluster, "strata", &format!("grow-{i}")).map(|ip| format!("http://{ip}:7070")))
        .collect::<anyhow::Result<_>>()?;
    let leader = wait_for("every broker to report one cluster of three", Duration::from_secs(90), || {
        let mut leaders = BTreeSet::new();
        for server in &servers {
            // A broker still restarting answers on a later round.
            let Ok(text) = cluster.strata(
                &["--server", server, "--token", &token, "cluster", "describe", "--json"],
                None,
                Duration::from_secs(30),
            ) else {
                return Ok(None);
            };
            let view: Value = serde_json::from_str(&text).with_context(|| text.clone())?;
            let mut ids: Vec<u64> =
                view["brokers"].as_array().into_iter().flatten().filter_map(|b| b["id"].as_u64()).collect();
            ids.sort_unstable();
            let voters = view["brokers"].as_array().into_iter().flatten().all(|b| b["state"] != "learner");
            match view["leader_id"].as_u64() {
                Some(l) if ids == [0, 1, 2] && voters => leaders.insert(l),
                _ => return Ok(None),
            };
        }
        Ok((leaders.len() == 1).then(|| leaders.into_iter().next().unwrap_or_default()))
    })?;
    // From outside the pods' network the brokers' advertised names (pod DNS
    // names) do not resolve: the CLI gets every pod's address, and reaches
    // each broker at the one it was given.
    let all = servers.join(",");
    let out = cluster.strata(
        &["--server", &all, "--token", &token, "consume", "kept", "--from", "earliest", "--count", &KEPT.to_string()],
        None,
        Duration::from_secs(60),
    )?;
    let got: BTreeSet<String> = out.lines().map(str::to_owned).collect();
    ensure!(
        got == sent,
        "after growing, {} of {KEPT} messages read back ({} differ)",
        got.len(),
        got.symmetric_difference(&sent).count()
    );
    steps.pass(&format!(
        "BrokerCluster grow grew from 1 to 3 brokers: brokers 0, 1, 2 on every pod, metadata leader {leader}; all {KEPT} messages produced before read back through the three pods"
    ));

    cluster.strata(
        &["--server", &servers[2], "--token", &token, "topic", "create", "spread", "--partitions", "6"],
        None,
        Duration::from_secs(30),
    )?;
    let view = cluster_view(cluster, &servers[0], &token)?;
    let mut owned: Vec<(u64, u64)> = view["brokers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| Some((b["id"].as_u64()?, b["partitions"].as_u64()?)))
        .collect();
    owned.sort_unstable();
    ensure!(owned == [(0, 3), (1, 3), (2, 3)], "partitions per broker after placing 6 more: {owned:?}");
    let reported = three_brokers_reported(cluster, "grow")?;
    steps.pass(&format!(
        "a 6-partition topic went to the new brokers: partitions per broker {owned:?}; status (brokers, metadataLeader, unownedPartitions) = {reported:?}"
    ));

    scale(cluster, "grow", 2)?;
    let message = wait_for("BrokerCluster grow to refuse the smaller size", Duration::from_secs(60), || {
        let bc = cluster.get(&["-n", "strata", "brokercluster", "grow"])?;
        let blocked = bc["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "ScalingBlocked" && c["status"] == "True"))
            .cloned();
        Ok(blocked.and_then(|c| c["message"].as_str().map(str::to_owned)))
    })?;
    let sts = cluster.get(&["-n", "strata", "statefulset", "grow"])?;
    ensure!(sts["spec"]["replicas"] == 3, "the StatefulSet was resized to {}", sts["spec"]["replicas"]);
    cluster.kubectl(&["-n", "strata", "delete", "brokercluster", "grow", "--timeout=90s"])?;
    steps.pass(&format!("replicas 3 -> 2 refused: ScalingBlocked ({message}); StatefulSet kept at 3; grow deleted"));
    Ok(())
}

/// Deletes what a user would, leaves first, each with a deadline: a
/// finalizer that never lets go fails here instead of hanging a namespace.
fn delete_everything(cluster: &Cluster, examples: &[Value], operator: &str) -> anyhow::Result<()> {
    // Topics holding messages are only deleted with the force annotation.
    for topic in ["orders", "audit", "archive"] {
        cluster.kubectl(&["-n", "team-a", "annotate", "topic", topic, "strata.dev/force-delete=true"])?;
    }
    for topic in ["audit", "archive"] {
        cluster.kubectl(&["-n", "team-a", "delete", "topic", topic, "--timeout=60s"])?;
    }
    let order = ["ConsumerGroup", "Queue", "Topic", "Tenant", "BrokerCluster"];
    for kind in order {
        for obj in examples.iter().filter(|o| o["kind"] == kind) {
            let (ns, name) = (
                obj["metadata"]["namespace"].as_str().unwrap_or("default"),
                obj["metadata"]["name"].as_str().unwrap_or_default(),
            );
            cluster.kubectl(&["-n", ns, "delete", &kind.to_ascii_lowercase(), name, "--timeout=90s"])?;
        }
    }
    cluster.kubectl(&["delete", "namespace", "team-a", "strata", "--timeout=120s"])?;
    cluster.kubectl_in(&["delete", "-f", "-", "--timeout=60s"], Some(operator))?;
    cluster.kubectl(&["delete", "namespace", OPERATOR_NS, "--timeout=120s"])?;
    cluster.kubectl(&["delete", "-f", &cluster.prereq.repo.join("crds").display().to_string(), "--timeout=60s"])?;
    let left = cluster.kubectl(&["get", "namespaces", "-o", "jsonpath={.items[*].metadata.name}"])?;
    for ns in ["team-a", "strata", OPERATOR_NS] {
        ensure!(!left.split_whitespace().any(|n| n == ns), "namespace {ns} is still there: {left}");
    }
    // The broker's volume is released and reclaimed (kubesim deletes it).
    wait_for("the broker's PersistentVolume to be reclaimed", Duration::from_secs(60), || {
        let pvs = cluster.get(&["pv"])?;
        Ok(pvs["items"].as_array().is_none_or(Vec::is_empty).then_some(()))
    })?;
    Ok(())
}
