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

Missing Python packages print `skipped: <reason>` and exit 0, unless the
environment variable CI is set, in which case they are an error.
"""

import json
import os
import sys
from pathlib import Path

CHART = Path(__file__).resolve().parent.parent
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


def validate(doc: dict) -> None:
    kind = doc.get("kind")
    if kind == "ServiceMonitor":
        print("  ServiceMonitor: validated against a minimal schema (a CRD kind; kubernetes-validate has no schema for it)")
        validate_service_monitor(doc)
        return
    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except Exception as e:  # ValidationError, SchemaNotFoundError
        FAILURES.append(f"{kind} {doc.get('metadata', {}).get('name')}: {e}")


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
