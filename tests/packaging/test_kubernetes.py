"""The Kubernetes manifests render offline with ``kubectl kustomize`` and pass
``kubernetes-validate`` (strict) for the oldest Kubernetes we support."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fakes.process import REPO_ROOT
from tests.packaging.conftest import require_tool, unavailable

KUSTOMIZE = REPO_ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"


def render(path: Path) -> str:
    kubectl = require_tool("kubectl", "kubectl")
    result = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def by_kind(rendered: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(rendered) if d}


@pytest.mark.parametrize("target", ["base", "overlays/example"])
def test_manifests_render_and_validate(target, tmp_path):
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(render(KUSTOMIZE / target))
    if importlib.util.find_spec("kubernetes_validate") is None:
        unavailable("kubernetes-validate is not installed (it is in the test extra)")
    result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict",
                             "--quiet", "-k", KUBERNETES_VERSION, str(rendered)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_has_the_gateway_scheduler_migration_and_disruption_budget():
    resources = by_kind(render(KUSTOMIZE / "base"))
    assert set(resources) == {
        ("ConfigMap", "mnemomd-config"), ("ServiceAccount", "mnemomd"),
        ("Job", "mnemomd-migrate"), ("Deployment", "mnemomd-gateway"),
        ("Deployment", "mnemomd-scheduler"), ("Service", "mnemomd"),
        ("PodDisruptionBudget", "mnemomd-gateway")}
    gateway = resources["Deployment", "mnemomd-gateway"]["spec"]["template"]["spec"]
    (container,) = gateway["containers"]
    assert container["args"] == ["run", "--role", "gateway"]
    assert {probe: container[probe]["httpGet"]["path"]
            for probe in ("startupProbe", "livenessProbe", "readinessProbe")} == {
        "startupProbe": "/health/startup", "livenessProbe": "/health/live",
        "readinessProbe": "/health/ready"}
    assert gateway["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    scheduler = resources["Deployment", "mnemomd-scheduler"]["spec"]["template"]["spec"]
    assert scheduler["containers"][0]["args"] == ["run", "--role", "scheduler"]
    job = resources["Job", "mnemomd-migrate"]["spec"]["template"]["spec"]
    assert job["containers"][0]["args"] == ["migrate"]
    assert resources["ConfigMap", "mnemomd-config"]["data"]["MIGRATE_ON_START"] == "false"
    service = resources["Service", "mnemomd"]["spec"]
    assert service["selector"]["app.kubernetes.io/component"] == "gateway"


def test_example_overlay_adds_the_optional_autoscaler_and_network_policy():
    resources = by_kind(render(KUSTOMIZE / "overlays" / "example"))
    assert ("HorizontalPodAutoscaler", "mnemomd-gateway") in resources
    assert ("NetworkPolicy", "mnemomd") in resources
    assert all(r["metadata"].get("namespace") == "mnemomd"
               for (kind, _), r in resources.items() if kind != "Namespace")
