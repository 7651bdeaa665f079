#!/usr/bin/env python3
"""Chart checks for charts/strata-operator, with the real Helm engine from
PyPI (helm-python-sdk: lint and render without a helm binary) and
kubernetes-validate:

1. `helm lint` reports no errors (default values and the full set).
2. The chart renders with default values, and with the ServiceMonitor and
   leader election enabled (and 2 replicas). The ServiceMonitor is rendered
   only where the cluster serves monitoring.coreos.com/v1 (the API versions
   are passed to the engine as `helm install` would learn them by discovery):
   without the Prometheus Operator's CRDs it would fail the whole apply.
   Leader election brings a release-owned Lease (deleted on uninstall).
3. Every rendered manifest and every CRD validates against the Kubernetes
   schemas (strict). The ServiceMonitor is a Prometheus Operator CRD kind,
   which kubernetes-validate has no schema for: it is checked against a
   minimal schema here instead.
4. RBAC grants exactly the rules in tests/expected-rbac.json (which a Rust
   test keeps equal to operator/src/rbac.rs, the verbs the code uses), and
   the leader-election Role exists only when leader election is enabled.
5. replicas > 1 without leader election fails to render.
6. `brokerCluster.enabled` renders a BrokerCluster that validates against
   its CRD's schema (unknown fields refused), with the one image tag; the
   operator's own OTLP settings become OTEL_* variables.
7. With `brokerCluster.tls.certManager.enabled`, a cert-manager Certificate
   writes the Secret the BrokerCluster's spec.tls names (cert-manager's CRD
   schema is not in kubernetes-validate: its required fields and enums are
   checked by hand); without an issuer name the chart refuses to render.
8. The GitOps examples (examples/gitops/): the team's manifests validate
   against the CRDs; the Argo CD Application and Flux Kustomization have
   their required fields.

Missing Python packages print `skipped: <reason>` and exit 0, unless the
environment variable CI is set, in which case they are an error.
"""

import json
import os
import sys
from pathlib import Path

CHART = Path(__file__).resolve().parent.parent
REPO = CHART.parent.parent
KUBE_VERSION = "1.35.0"


def skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        print(f"error: {reason}", file=sys.stderr)
        sys.exit(1)
    print(f"skipped: {reason}")
    sys.exit(0)


try:
    import helm_python as helm
except ImportError:
    skip_or_fail("helm-python-sdk is not installed (pip install helm-python-sdk)")
try:
    import kubernetes_validate
    import jsonschema  # a dependency of kubernetes-validate
    import yaml
except ImportError:
    skip_or_fail("kubernetes-validate is not installed (pip install kubernetes-validate)")

FAILURES: list[str] = []


def check(cond: bool, message: str) -> None:
    if not cond:
        FAILURES.append(message)


def lint(values: dict) -> None:
    report = helm.lint(str(CHART), values)
    errors = [m for m in report.get("messages", []) if m.get("severity") == 3] + list(report.get("errors") or [])
    check(not errors, f"helm lint with {values}: {errors}")


PROMETHEUS_OPERATOR = ["monitoring.coreos.com/v1", "monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PodMonitor"]


def render(values: dict, api_versions: list[str] | None = None) -> list[dict]:
    """Renders with the Helm engine; `api_versions` are the extra API
    versions the (simulated) cluster serves, for `.Capabilities.APIVersions`."""
    from helm_python import _native

    opts = {"name": "strata", "namespace": "strata-system", "is_install": True}
    if api_versions:
        opts["api_versions"] = api_versions
    with helm.Chart.load(str(CHART)) as chart:
        # Chart.render has no api_versions parameter; the engine's render
        # call takes it in its options (the same call Chart.render makes).
        manifests = json.loads(_native.call_string("helm_render", chart._raw(), json.dumps(values), json.dumps(opts)))
    docs = []
    for path, text in sorted(manifests.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    return docs


def validate_service_monitor(doc: dict) -> None:
    """Minimal schema of monitoring.coreos.com/v1 ServiceMonitor."""
    spec = doc.get("spec", {})
    check(doc.get("apiVersion") == "monitoring.coreos.com/v1", "ServiceMonitor apiVersion")
    check(bool(doc.get("metadata", {}).get("name")), "ServiceMonitor needs a name")
    check(isinstance(spec.get("selector", {}).get("matchLabels"), dict), "ServiceMonitor selector.matchLabels")
    endpoints = spec.get("endpoints")
    check(isinstance(endpoints, list) and len(endpoints) > 0, "ServiceMonitor endpoints")
    for e in endpoints or []:
        check(set(e) <= {"port", "path", "interval", "scheme", "scrapeTimeout"}, f"ServiceMonitor endpoint keys {set(e)}")
        check(e.get("port") == "http", "ServiceMonitor scrapes the http port")


CERT_MANAGER_USAGES = {
    "signing", "digital signature", "content commitment", "key encipherment", "key agreement",
    "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
    "server auth", "client auth", "code signing", "email protection", "s/mime", "ipsec end system",
    "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc",
}


def validate_certificate(doc: dict) -> None:
    """cert-manager.io/v1 Certificate: its CRD schema is not in
    kubernetes-validate, so its required fields and enums are checked here
    (spec.secretName and spec.issuerRef.name are required; usages and the
    private key algorithm are enums; durations are Go durations)."""
    import re
    name = doc.get("metadata", {}).get("name")
    spec = doc.get("spec") or {}
    check(doc.get("apiVersion") == "cert-manager.io/v1", f"Certificate {name}: apiVersion cert-manager.io/v1")
    check(bool(name) and bool(doc.get("metadata", {}).get("namespace")), "Certificate needs a name and a namespace")
    known = {"secretName", "issuerRef", "duration", "renewBefore", "commonName", "dnsNames", "ipAddresses",
             "uris", "emailAddresses", "usages", "privateKey", "subject", "isCA", "secretTemplate",
             "revisionHistoryLimit", "keystores", "literalSubject", "nameConstraints", "otherNames",
             "encodeUsagesInRequest", "additionalOutputFormats", "renewBeforePercentage"}
    check(set(spec) <= known, f"Certificate {name}: unknown spec fields {set(spec) - known}")
    check(isinstance(spec.get("secretName"), str) and spec["secretName"] != "", f"Certificate {name}: spec.secretName is required")
    issuer = spec.get("issuerRef") or {}
    check(isinstance(issuer.get("name"), str) and issuer["name"] != "", f"Certificate {name}: spec.issuerRef.name is required")
    check(set(issuer) <= {"name", "kind", "group"}, f"Certificate {name}: issuerRef fields {set(issuer)}")
    check(bool(spec.get("dnsNames") or spec.get("commonName") or spec.get("ipAddresses") or spec.get("uris")),
          f"Certificate {name}: at least one of commonName, dnsNames, ipAddresses, uris")
    check(all(isinstance(d, str) and d for d in spec.get("dnsNames", [])), f"Certificate {name}: dnsNames are strings")
    check(set(spec.get("usages", [])) <= CERT_MANAGER_USAGES, f"Certificate {name}: unknown usages {spec.get('usages')}")
    go_duration = re.compile(r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")
    for field in ("duration", "renewBefore"):
        if field in spec:
            check(bool(go_duration.match(str(spec[field]))), f"Certificate {name}: {field} {spec[field]!r} is no Go duration")
    key = spec.get("privateKey") or {}
    check(key.get("algorithm", "RSA") in {"RSA", "ECDSA", "Ed25519"}, f"Certificate {name}: privateKey.algorithm")
    check(key.get("rotationPolicy", "Never") in {"Never", "Always"}, f"Certificate {name}: privateKey.rotationPolicy")


def crd_schema(kind: str) -> dict | None:
    """The openAPIV3Schema of a Strata kind, from the chart's CRDs."""
    for f in (CHART / "crds").glob("*.yaml"):
        crd = yaml.safe_load(f.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return None


def strict(schema: dict) -> dict:
    """The CRD schema with unknown fields refused, as the API server prunes
    (and `kubectl apply --validate=strict` refuses) them."""
    out = dict(schema)
    if "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
        out["properties"] = {k: strict(v) for k, v in out["properties"].items()}
        out["properties"].setdefault("apiVersion", {"type": "string"})
        out["properties"].setdefault("kind", {"type": "string"})
        out["properties"].setdefault("metadata", {"type": "object"})
    if "items" in out:
        out["items"] = strict(out["items"])
    return {k: v for k, v in out.items() if not k.startswith("x-kubernetes")}


def validate_custom(doc: dict, schema: dict) -> None:
    errors = [e.message for e in jsonschema.Draft7Validator(strict(schema)).iter_errors(doc)]
    check(not errors, f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}: {errors}")


def validate(doc: dict) -> None:
    kind = doc.get("kind")
    if doc.get("apiVersion", "").startswith("strata.dev/"):
        schema = crd_schema(kind)
        check(schema is not None, f"no CRD for {kind}")
        if schema:
            validate_custom(doc, schema)
            print(f"  {kind}: validated against its CRD's openAPIV3Schema (unknown fields refused)")
        return
    if kind == "Certificate":
        print("  Certificate: required fields and enums checked by hand (cert-manager's CRD schema is not in kubernetes-validate)")
        validate_certificate(doc)
        return
    if kind == "ServiceMonitor":
        print("  ServiceMonitor: validated against a minimal schema (a CRD kind; kubernetes-validate has no schema for it)")
        validate_service_monitor(doc)
        return
    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except Exception as e:  # ValidationError, SchemaNotFoundError
        FAILURES.append(f"{kind} {doc.get('metadata', {}).get('name')}: {e}")


def lint_render_validate(values: dict) -> list[dict]:
    """Lints the chart with `values`, renders it and validates every
    manifest: the rendered manifests."""
    lint(values)
    docs = render(values)
    for d in docs:
        validate(d)
    return docs


def normalise(rules: list[dict]) -> list[dict]:
    return [{k: sorted(r[k]) for k in ("apiGroups", "resources", "verbs")} for r in rules]


def check_rbac(docs: list[dict], leader_election: bool) -> None:
    expected = json.loads((CHART / "tests" / "expected-rbac.json").read_text())
    roles = {d["kind"]: d for d in docs if d["kind"] in ("ClusterRole", "Role")}
    check("ClusterRole" in roles, "a ClusterRole is rendered")
    if "ClusterRole" in roles:
        got = normalise(roles["ClusterRole"]["rules"])
        check(got == normalise(expected["clusterRole"]), f"ClusterRole rules differ from expected-rbac.json: {got}")
    if leader_election:
        check("Role" in roles, "leader election renders a Role for leases")
        if "Role" in roles:
            got = normalise(roles["Role"]["rules"])
            check(got == normalise(expected["role"]), f"Role rules differ from expected-rbac.json: {got}")
    else:
        check("Role" not in roles, "no lease Role without leader election")
    for d in docs:
        for rule in d.get("rules", []) if d["kind"] in ("ClusterRole", "Role") else []:
            check("*" not in rule["verbs"] and "*" not in rule["resources"], f"wildcard in {d['kind']}: {rule}")


def main() -> int:
    print(f"helm engine {helm.helm_sdk_version()} (helm-python-sdk), kubernetes-validate schemas {KUBE_VERSION}")
    full = {
        "metrics": {"serviceMonitor": {"enabled": True}},
        "leaderElection": {"enabled": True},
        "replicas": 2,
        "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Strata"}},
    }
    for name, values in [("default values", {}), ("ServiceMonitor + leader election + dashboard", full)]:
        print(f"{name}:")
        lint(values)
        docs = render(values, api_versions=PROMETHEUS_OPERATOR)
        kinds = sorted(d["kind"] for d in docs)
        print(f"  rendered {len(docs)} manifests: {', '.join(kinds)}")
        for d in docs:
            validate(d)
        check_rbac(docs, leader_election=values.get("leaderElection", {}).get("enabled", False))
        check(("ServiceMonitor" in kinds) == bool(values.get("metrics")), f"{name}: ServiceMonitor rendered only when enabled")
        dashboards = [d for d in docs if d["kind"] == "ConfigMap"]
        check(len(dashboards) == int(bool(values.get("grafanaDashboard"))), f"{name}: dashboard ConfigMap only when enabled")
        for cm in dashboards:
            check(cm["metadata"]["labels"].get("grafana_dashboard") == "1", "dashboard ConfigMap has the sidecar label")
            shipped = json.loads((CHART / "dashboards" / "strata-brokers.json").read_text())
            check(json.loads(cm["data"]["strata-brokers.json"]) == shipped, "the ConfigMap holds the shipped dashboard")
        deployment = next(d for d in docs if d["kind"] == "Deployment")
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        check(("--leader-election" in args) == bool(values.get("leaderElection")), f"{name}: --leader-election flag")
        leases = [d for d in docs if d["kind"] == "Lease"]
        check(len(leases) == int(bool(values.get("leaderElection"))), f"{name}: a release-owned Lease with leader election")
        for lease in leases:
            check(f"--lease-name={lease['metadata']['name']}" in args, "the operator uses the chart's Lease")

    # Without the Prometheus Operator's CRDs the flag renders no ServiceMonitor
    # (and so cannot fail the apply).
    kinds = [d["kind"] for d in render(full)]
    check("ServiceMonitor" not in kinds, "no ServiceMonitor where monitoring.coreos.com/v1 is not served")
    print("  serviceMonitor.enabled without the Prometheus Operator CRDs: no ServiceMonitor rendered")

    # The chart's CRDs (installed by Helm from crds/) validate too.
    crds = sorted((CHART / "crds").glob("*.yaml"))
    check(len(crds) == 5, f"5 CRDs in the chart, found {len(crds)}")
    for f in crds:
        validate(yaml.safe_load(f.read_text()))
    print(f"  {len(crds)} CRDs validated")

    # A BrokerCluster from the chart's values, valid for the CRD, with the
    # one image tag; the operator's own OTLP settings as OTEL_* variables.
    with_cluster = {
        "image": {"tag": "1.2.3"},
        "brokerCluster": {
            "enabled": True,
            "replicas": 3,
            "storage": {"size": "50Gi", "storageClassName": "fast"},
            "config": {"logLevel": "info", "defaultRetention": "7d"},
            "tier": {
                "coldStore": "s3://strata/prod",
                "s3": {"endpoint": "http://minio.storage:9000", "region": "us-east-1"},
                "credentialsSecret": {"name": "strata-s3"},
            },
            "telemetry": {"otlpEndpoint": "http://otel-collector.observability:4317"},
            "metrics": {"monitor": "PodMonitor"},
            "pod": {"priorityClassName": "high", "labels": {"team": "platform"}},
        },
        "telemetry": {"otlpEndpoint": "http://otel-collector.observability:4317", "sampler": "parentbased_traceidratio", "samplerArg": "0.1"},
    }
    print("BrokerCluster + operator telemetry:")
    docs = lint_render_validate(with_cluster)
    clusters = [d for d in docs if d["kind"] == "BrokerCluster"]
    check(len(clusters) == 1, "brokerCluster.enabled renders one BrokerCluster")
    for bc in clusters:
        check(bc["spec"]["image"] == "strata/strata-broker:1.2.3", f"broker image follows image.tag: {bc['spec']['image']}")
        check(bc["spec"]["replicas"] == 3 and bc["spec"]["tier"]["coldStore"] == "s3://strata/prod", "spec from values")
        check(bc["metadata"]["namespace"] == "strata-system", "the release namespace by default")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    check(container["image"] == "strata/strata-operator:1.2.3", f"operator image follows image.tag: {container['image']}")
    env = {e["name"]: e.get("value") for e in container["env"]}
    check(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") == "http://otel-collector.observability:4317", f"operator OTLP env: {env}")
    check(env.get("OTEL_TRACES_SAMPLER_ARG") == "0.1", "operator sampler ratio")
    check(not any(d["kind"] == "BrokerCluster" for d in render({})), "no BrokerCluster by default")
    check("OTEL_EXPORTER_OTLP_ENDPOINT" not in str(render({})), "no OTLP env by default")
    bad = dict(with_cluster, brokerCluster=dict(with_cluster["brokerCluster"], config={"logLevl": "info"}))
    before = len(FAILURES)
    for d in render(bad):
        validate(d)
    check(len(FAILURES) == before + 1, "a misspelt BrokerCluster field is caught by the schema check")
    del FAILURES[before:]

    # TLS from a cert-manager Certificate: the Secret it writes is the one
    # the BrokerCluster names, and it names the client Service and the pods.
    with_tls = dict(with_cluster, brokerCluster=dict(
        with_cluster["brokerCluster"],
        auth={"mode": "required", "adminTokenSecret": "strata-admin"},
        tls={"enabled": True, "clientAuth": "require",
             "certManager": {"enabled": True, "issuerRef": {"name": "strata-ca", "kind": "ClusterIssuer"}}},
    ))
    print("BrokerCluster with TLS from cert-manager:")
    docs = lint_render_validate(with_tls)
    certs = [d for d in docs if d["kind"] == "Certificate"]
    bc = next(d for d in docs if d["kind"] == "BrokerCluster")
    check(len(certs) == 1, "tls.certManager.enabled renders one Certificate")
    check(bc["spec"].get("tls") == {"secretName": "main-tls", "clientAuth": "require"}, f"BrokerCluster tls: {bc['spec'].get('tls')}")
    check(bc["spec"].get("auth") == {"mode": "required", "adminTokenSecret": "strata-admin"}, f"BrokerCluster auth: {bc['spec'].get('auth')}")
    for cert in certs:
        check(cert["spec"]["secretName"] == bc["spec"]["tls"]["secretName"], "the Certificate writes the Secret the BrokerCluster uses")
        check(cert["metadata"]["namespace"] == bc["metadata"]["namespace"], "the Certificate is in the cluster's namespace")
        names = cert["spec"]["dnsNames"]
        check("main.strata-system.svc" in names and "*.main-headless.strata-system.svc" in names, f"dnsNames: {names}")
        check({"server auth", "client auth"} <= set(cert["spec"]["usages"]), "server and client usages")
        check(cert["spec"]["issuerRef"] == {"name": "strata-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}, "issuerRef from values")
        print(f"  Certificate {cert['metadata']['name']} -> Secret {cert['spec']['secretName']} ({len(names)} DNS names)")
    check(not any(d["kind"] == "Certificate" for d in render(with_cluster)), "no Certificate without tls.certManager.enabled")
    no_issuer = dict(with_tls, brokerCluster=dict(with_tls["brokerCluster"], tls={"enabled": True, "certManager": {"enabled": True}}))
    try:
        render(no_issuer)
        FAILURES.append("certManager.enabled without issuerRef.name must fail to render")
    except helm.HelmError as e:
        check("issuerRef.name" in str(e), f"a clear render error: {e}")
    broken = dict(certs[0], spec={k: v for k, v in certs[0]["spec"].items() if k != "secretName"}) if certs else {}
    before = len(FAILURES)
    validate_certificate(broken)
    check(len(FAILURES) > before, "a Certificate without secretName is caught")
    del FAILURES[before:]

    # The GitOps examples (README): Argo CD and Flux objects (CRD kinds
    # without published schemas: their required fields are checked here),
    # and the team's manifests they point at, valid for Strata's CRDs.
    gitops = REPO / "examples" / "gitops"
    app = yaml.safe_load((gitops / "argocd-application.yaml").read_text())
    check(app["apiVersion"] == "argoproj.io/v1alpha1" and app["kind"] == "Application", "Argo CD Application")
    check({"repoURL", "path", "targetRevision"} <= set(app["spec"]["source"]), "Application source")
    check({"server", "namespace"} & set(app["spec"]["destination"]) and "project" in app["spec"], "Application destination")
    ks = yaml.safe_load((gitops / "flux-kustomization.yaml").read_text())
    check(ks["apiVersion"] == "kustomize.toolkit.fluxcd.io/v1" and ks["kind"] == "Kustomization", "Flux Kustomization")
    check({"interval", "path", "prune", "sourceRef"} <= set(ks["spec"]), "Kustomization spec")
    check(ks["spec"].get("wait") is True or bool(ks["spec"].get("healthChecks")), "Flux waits for health (kstatus Ready)")
    team = sorted((gitops / "team-a").glob("*.yaml"))
    check(len(team) >= 2, "the team's manifests")
    for f in team:
        for doc in yaml.safe_load_all(f.read_text()):
            validate(doc)
    check(app["spec"]["source"]["path"] == "examples/gitops/team-a" == ks["spec"]["path"].lstrip("./"), "both point at the team's folder")
    print(f"  GitOps: Argo CD Application and Flux Kustomization for {len(team)} team manifests")

    try:
        render({"replicas": 2})
        FAILURES.append("replicas: 2 without leader election must fail to render")
    except helm.HelmError as e:
        check("leaderElection" in str(e), f"a clear render error: {e}")

    if FAILURES:
        for f in FAILURES:
            print(f"FAIL: {f}", file=sys.stderr)
        return 1
    print("chart checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
