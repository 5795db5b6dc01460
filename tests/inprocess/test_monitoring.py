"""The alert rules and the Grafana dashboard of deploy/monitoring reference only metrics a
running daemon exports, and the rules pass ``promtool check rules``.

A labelled metric has no sample until a label set is used, so the exported names are
taken from the ``# TYPE`` lines of a live ``/metrics`` (present for every family) and
expanded the way Prometheus stores them: a counter as ``_total`` (and ``_created``), a
histogram as ``_bucket``, ``_sum`` and ``_count``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.fakes.process import REPO_ROOT
from tests.support import unavailable

MONITORING = REPO_ROOT / "deploy" / "monitoring"
RULES = MONITORING / "mnemomd-rules.yaml"
DASHBOARD = MONITORING / "mnemomd-dashboard.json"
#: Recorded by Prometheus itself for every scrape target, not by the daemon.
PROMETHEUS_OWN = {"up"}

_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count",
                                                                "_created"),
             "gauge": ("",), "summary": ("", "_sum", "_count", "_created"),
             "info": ("_info",), "untyped": ("",)}
_METRIC_NAME = re.compile(r"\b(gateway_[a-z0-9_]+|process_[a-z0-9_]+|python_[a-z0-9_]+"
                          r"|up)\b")


def exported_names(exposition: str) -> set[str]:
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()
            base = family.removesuffix("_total") if kind == "counter" else family
            names.update(base + suffix for suffix in _SUFFIXES[kind])
    return names


def referenced(expressions: list[str]) -> set[str]:
    return {name for expression in expressions for name in _METRIC_NAME.findall(expression)}


def rule_expressions() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"]
            for target in panel.get("targets", [])]


def test_exported_names_expand_families_as_prometheus_stores_them():
    exposition = ("# TYPE gateway_a_total counter\n# TYPE gateway_b histogram\n"
                  "# TYPE gateway_c gauge\ngateway_c 1.0\n")
    assert exported_names(exposition) == {
        "gateway_a_total", "gateway_a_created", "gateway_b_bucket", "gateway_b_sum",
        "gateway_b_count", "gateway_b_created", "gateway_c"}
    assert referenced(['sum(rate(gateway_a_total{x="y"}[5m])) / up']) == {
        "gateway_a_total", "up"}


def test_rules_and_dashboard_reference_only_metrics_a_running_daemon_exports(daemon):
    response = daemon.request("GET", "/metrics")
    assert response.status == 200
    exported = exported_names(response.body.decode())
    assert "gateway_webhook_deliveries_total" in exported  # labelled, no sample yet
    rules, panels = referenced(rule_expressions()), referenced(dashboard_expressions())
    assert len(rules) >= 10 and len(panels) >= 15
    assert rules - exported - PROMETHEUS_OWN == set()
    assert panels - exported == set()


def test_rules_cover_what_an_operator_must_hear_about():
    text = "\n".join(rule_expressions())
    for metric in ("gateway_license_state", "gateway_license_seconds_to_expiry",
                   "gateway_aip_analysis_failures_total", 'reason="circuit_open"',
                   "gateway_webhook_deliveries_total", "gateway_outbox_depth",
                   "gateway_outbox_oldest_ready_age_seconds", "gateway_reactor_lag_seconds",
                   'status=~"5.."', "gateway_bookkeeping_shed_total", "gateway_spool_depth",
                   "gateway_cron_runs_total"):
        assert metric in text, metric


def test_dashboard_shows_traffic_latency_verdicts_containment_jobs_and_lag():
    titles = " | ".join(panel["title"] for panel in json.loads(DASHBOARD.read_text())["panels"])
    for words in ("provider and status", "TTFB", "Added latency", "Verdicts",
                  "Containment", "Job runs", "Reactor lag"):
        assert words in titles, words


def test_rules_pass_promtool(tmp_path: Path):
    promtool = shutil.which("promtool")
    if promtool is None:
        unavailable("promtool is not installed (Debian package prometheus)")
    assert promtool is not None
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    broken = tmp_path / "broken.yaml"
    broken.write_text(RULES.read_text().replace("> 0.05", "> > 0.05", 1))
    refused = subprocess.run([promtool, "check", "rules", str(broken)], capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode != 0
