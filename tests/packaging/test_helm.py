"""The Helm chart in deploy/helm/mnemomd, rendered and linted offline with Helm's own engine
(``helm-python-sdk``: Helm's Go SDK behind a bundled shared library, no binary, no
cluster), and its manifests validated (strict) against the Kubernetes 1.27 and 1.30 APIs.

The prometheus-operator resources (ServiceMonitor, PrometheusRule) have no schema in
``kubernetes-validate``; their fields are asserted here, and the rules they carry are
checked with ``promtool`` in tests/inprocess/test_monitoring.py.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import mnemomd
from tests.fakes.process import REPO_ROOT
from tests.support import unavailable

CHART = REPO_ROOT / "deploy" / "helm" / "mnemomd"
RULES = REPO_ROOT / "deploy" / "monitoring" / "mnemomd-rules.yaml"
KUBERNETES_VERSIONS = ("1.27.0", "1.30.0")
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}

#: The secret settings: none may be a key of a rendered ConfigMap.
SECRET_SETTINGS = {"DATABASE_URL", "REDIS_URL", "REDIS_PASSWORD", "MNEMOM_LICENSE_JWT",
                   "ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY",
                   "ANALYSIS_API_KEY", "MNEMOM_API_KEY", "INTERNAL_API_KEY",
                   "MNEMOM_JWT_SECRET", "SUPABASE_JWT_SECRET"}

ALL_OPTIONS: dict[str, Any] = {
    "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12},
    "ingress": {"enabled": True, "className": "nginx",
                "hosts": [{"host": "gateway.example.com",
                           "paths": [{"path": "/", "pathType": "Prefix"}]}],
                "tls": [{"secretName": "gateway-tls", "hosts": ["gateway.example.com"]}]},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
                "prometheusRule": {"enabled": True}},
}
SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "hpa-ingress-tls-monitoring": ALL_OPTIONS,
    "networkpolicy-off": {"networkPolicy": {"enabled": False}},
    "existing-secret": {"existingSecret": "prod-mnemomd", "config": {"LOG_LEVEL": "debug"}},
}


def helm() -> Any:
    if importlib.util.find_spec("helm_python") is None:
        unavailable("helm-python-sdk is not installed (it is in the test extra)")
    import helm_python
    return helm_python


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    with helm().Chart.load(CHART) as loaded:
        yield loaded


def render(chart: Any, values: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifests a ``helm install mnemomd -n mnemomd`` would apply (hooks included)."""
    rendered = chart.render(values, name="mnemomd", namespace="mnemomd", is_install=True)
    return [document for path, text in sorted(rendered.items()) if not path.endswith(".txt")
            for document in yaml.safe_load_all(text) if document]


def by_kind(documents: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in documents}


def pod(resources: dict[tuple[str, str], dict[str, Any]], kind: str, name: str) -> dict:
    return resources[kind, name]["spec"]["template"]["spec"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_chart_renders_manifests_kubernetes_accepts(chart, scenario, version):
    if importlib.util.find_spec("kubernetes_validate") is None:
        unavailable("kubernetes-validate is not installed (it is in the test extra)")
    import kubernetes_validate
    documents = render(chart, SCENARIOS[scenario])
    assert documents
    for document in documents:
        if document["kind"] in OPERATOR_KINDS:
            assert document["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        kubernetes_validate.validate(document, version, strict=True)


def test_lint_reports_no_errors():
    for values in SCENARIOS.values():
        report = helm().lint(CHART, values, strict=True, kube_version="v1.27.0")
        assert report["errors"] == [], report
        assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


def test_chart_version_follows_the_daemon(chart):
    assert chart.metadata["appVersion"] == mnemomd.__version__
    assert chart.metadata["kubeVersion"] == ">=1.27.0-0"


def test_defaults_give_the_gateway_scheduler_migration_hook_service_and_budget(chart):
    resources = by_kind(render(chart, {}))
    assert set(resources) == {
        ("ConfigMap", "mnemomd-config"), ("ServiceAccount", "mnemomd"),
        ("Job", "mnemomd-migrate"), ("Deployment", "mnemomd-gateway"),
        ("Deployment", "mnemomd-scheduler"), ("Service", "mnemomd"),
        ("Service", "mnemomd-scheduler"), ("PodDisruptionBudget", "mnemomd-gateway"),
        ("NetworkPolicy", "mnemomd")}
    assert resources["Deployment", "mnemomd-gateway"]["spec"]["replicas"] == 2
    assert resources["Deployment", "mnemomd-scheduler"]["spec"]["replicas"] == 1
    assert resources["PodDisruptionBudget", "mnemomd-gateway"]["spec"]["minAvailable"] == 1
    service = resources["Service", "mnemomd"]["spec"]
    assert service["type"] == "ClusterIP"
    assert service["ports"] == [{"name": "http", "port": 8787, "targetPort": "http",
                                 "protocol": "TCP"}]
    assert service["selector"]["app.kubernetes.io/component"] == "gateway"


def test_gateway_has_three_probes_on_the_daemons_paths(chart):
    resources = by_kind(render(chart, {}))
    (gateway,) = pod(resources, "Deployment", "mnemomd-gateway")["containers"]
    assert gateway["args"] == ["run", "--role", "gateway"]
    assert gateway["ports"][0]["containerPort"] == 8787
    assert {probe: (gateway[probe]["httpGet"]["path"], gateway[probe]["httpGet"]["port"])
            for probe in ("startupProbe", "livenessProbe", "readinessProbe")} == {
        "startupProbe": ("/health/startup", "http"), "livenessProbe": ("/health/live", "http"),
        "readinessProbe": ("/health/ready", "http")}
    (scheduler,) = pod(resources, "Deployment", "mnemomd-scheduler")["containers"]
    assert scheduler["args"] == ["run", "--role", "scheduler"]
    assert scheduler["startupProbe"]["httpGet"]["path"] == "/health/startup"
    assert scheduler["livenessProbe"]["httpGet"]["path"] == "/health/live"


def test_migration_is_a_pre_install_and_pre_upgrade_hook_and_pods_do_not_migrate(chart):
    resources = by_kind(render(chart, {}))
    job = resources["Job", "mnemomd-migrate"]
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"]
    # The hook runs before the chart's ConfigMap exists: its settings are inline.
    assert "configMapRef" not in str(container["envFrom"])
    assert {e["name"]: e["value"] for e in container["env"]}["MNEMOM_DATA_DIR"] == "/data"
    assert resources["ConfigMap", "mnemomd-config"]["data"]["MIGRATE_ON_START"] == "false"


def test_every_pod_is_non_root_read_only_and_unprivileged(chart):
    resources = by_kind(render(chart, ALL_OPTIONS))
    pods = [pod(resources, kind, name) for kind, name in resources
            if kind in ("Deployment", "Job")]
    assert len(pods) == 3
    for spec in pods:
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 10001
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts["/data"] == "data"
        assert {v["name"]: "emptyDir" in v for v in spec["volumes"]}["data"] is True


def test_pods_drain_after_their_endpoint_is_removed(chart):
    resources = by_kind(render(chart, {"shutdownGraceSeconds": 40, "preStopSleepSeconds": 7}))
    spec = pod(resources, "Deployment", "mnemomd-gateway")
    (gateway,) = spec["containers"]
    assert gateway["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "7"]
    assert spec["terminationGracePeriodSeconds"] > 40 + 7
    assert resources["ConfigMap", "mnemomd-config"]["data"]["SHUTDOWN_GRACE_SECONDS"] == "40"
    assert pod(resources, "Deployment", "mnemomd-scheduler")[
        "terminationGracePeriodSeconds"] > 40


def test_resources_requests_and_limits_are_set(chart):
    resources = by_kind(render(chart, {}))
    for kind, name in (("Deployment", "mnemomd-gateway"), ("Deployment", "mnemomd-scheduler"),
                       ("Job", "mnemomd-migrate")):
        (container,) = pod(resources, kind, name)["containers"]
        assert set(container["resources"]) == {"requests", "limits"}
        assert container["resources"]["limits"]["memory"]


def test_network_policy_denies_all_but_the_gateway_port_dns_databases_and_https(chart):
    policy = by_kind(render(chart, {}))["NetworkPolicy", "mnemomd"]["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "mnemomd"
    assert [p["port"] for rule in policy["ingress"] for p in rule["ports"]] == [8787]
    allowed = sorted((p["port"], p["protocol"]) for rule in policy["egress"]
                     for p in rule["ports"])
    assert allowed == [(53, "TCP"), (53, "UDP"), (443, "TCP"), (5432, "TCP"), (6379, "TCP")]
    narrowed = by_kind(render(chart, {"networkPolicy": {
        "ingressFrom": [{"namespaceSelector": {"matchLabels": {"name": "ingress"}}}],
        "postgresql": {"port": 5432, "to": [{"ipBlock": {"cidr": "10.0.5.0/24"}}]}}}))
    spec = narrowed["NetworkPolicy", "mnemomd"]["spec"]
    assert spec["ingress"][0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"name": "ingress"}}}]
    assert {"ipBlock": {"cidr": "10.0.5.0/24"}} in [
        peer for rule in spec["egress"] for peer in rule.get("to", [])]
    off = by_kind(render(chart, SCENARIOS["networkpolicy-off"]))
    assert not [key for key in off if key[0] == "NetworkPolicy"]


def test_options_add_autoscaler_ingress_with_tls_and_monitoring(chart):
    resources = by_kind(render(chart, ALL_OPTIONS))
    assert "replicas" not in resources["Deployment", "mnemomd-gateway"]["spec"]
    hpa = resources["HorizontalPodAutoscaler", "mnemomd-gateway"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 12)
    assert hpa["scaleTargetRef"]["name"] == "mnemomd-gateway"
    ingress = resources["Ingress", "mnemomd"]["spec"]
    assert ingress["tls"] == [{"secretName": "gateway-tls", "hosts": ["gateway.example.com"]}]
    backend = ingress["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "mnemomd", "port": {"name": "http"}}
    monitor = resources["ServiceMonitor", "mnemomd"]
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True
    rule = resources["PrometheusRule", "mnemomd"]
    assert rule["spec"] == yaml.safe_load(RULES.read_text())


def test_the_chart_ships_the_rules_file_unchanged():
    assert (CHART / "files" / "mnemomd-rules.yaml").read_bytes() == RULES.read_bytes()


def test_secrets_come_from_the_existing_secret_and_never_from_a_config_map(chart):
    for scenario, values in SCENARIOS.items():
        documents = render(chart, values)
        secret = values.get("existingSecret", "mnemomd-secrets")
        assert not [d for d in documents if d["kind"] == "Secret"], scenario
        for document in documents:
            if document["kind"] == "ConfigMap":
                assert not SECRET_SETTINGS & set(document["data"]), scenario
            if document["kind"] in ("Deployment", "Job"):
                for container in document["spec"]["template"]["spec"]["containers"]:
                    assert {"secretRef": {"name": secret}} in container["envFrom"], scenario
                    assert not SECRET_SETTINGS & {e["name"] for e in container.get("env", [])}


@pytest.mark.parametrize(("values", "message"), [
    ({"replicaCount": "two"}, "at '/replicaCount': got string, want integer"),
    ({"config": {"DATABASE_URL": "postgresql://u:p@db/mnemomd"}},
     "at '/config/DATABASE_URL': value must be 'a secret: put it in the Secret named by "
     "existingSecret, not under config'"),
    ({"config": {"MIGRATE_ON_START": "true"}},
     "at '/config/MIGRATE_ON_START': value must be 'set by the chart, not under config'"),
    ({"existingSecret": ""}, "/existingSecret"),
    ({"replicas": 3}, "'replicas' not allowed"),
    ({"podSecurityContext": {"runAsNonRoot": False}}, "/podSecurityContext/runAsNonRoot"),
    ({"ingress": {"enabled": True, "hosts": [{"host": "a.example", "paths": [
        {"path": "/", "pathType": "Sometimes"}]}]}}, "pathType"),
])
def test_a_wrong_value_fails_with_the_schemas_message(chart, values, message):
    errors = helm()
    with pytest.raises(errors.HelmValuesError) as raised:
        chart.render(values, name="mnemomd", namespace="mnemomd")
    assert message in str(raised.value)
    assert "values don't meet the specifications of the schema" in str(raised.value)


def test_notes_say_how_to_reach_the_gateway_and_check_readiness(chart):
    notes = chart.render(ALL_OPTIONS, name="mnemomd", namespace="team-a")[
        "mnemomd/templates/NOTES.txt"]
    assert "http://mnemomd.team-a.svc:8787" in notes
    assert "/health/ready" in notes
    assert "https://gateway.example.com" in notes
    assert "/anthropic" in notes and "/openai/v1" in notes


def test_kustomize_base_is_retired():
    """One source of manifests: the chart."""
    assert not (REPO_ROOT / "deploy" / "kubernetes").exists()
    assert Path(CHART / "Chart.yaml").is_file()
