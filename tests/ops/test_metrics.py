"""Metrics registry, the reactor lag monitor, and the metrics table of docs/operations.md."""

from __future__ import annotations

import re
from pathlib import Path

from twisted.internet.task import Clock

from mnemomd.ops.metrics import GatewayMetrics, ReactorLagMonitor

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def test_metric_names_exposed():
    metrics = GatewayMetrics()
    metrics.requests.labels("anthropic", "200").inc()
    metrics.request_duration.labels("anthropic").observe(0.1)
    metrics.upstream_ttfb.labels("anthropic").observe(0.05)
    text = metrics.render().decode()
    for name in ("gateway_requests_total{provider=\"anthropic\",status=\"200\"} 1.0",
                 "gateway_request_duration_seconds_bucket", "gateway_upstream_ttfb_seconds",
                 "gateway_reactor_lag_seconds", "process_resident_memory_bytes",
                 "python_info"):
        assert name in text


def test_registries_are_independent():
    a, b = GatewayMetrics(process_collectors=False), GatewayMetrics(process_collectors=False)
    a.requests.labels("openai", "200").inc()
    assert "openai" not in b.render().decode()


def test_lag_measures_how_late_the_timer_fired():
    clock = Clock()
    metrics = GatewayMetrics(process_collectors=False)
    monitor = ReactorLagMonitor(clock, metrics.reactor_lag, interval=0.5)
    monitor.start()
    clock.advance(0.5)
    assert monitor.last_lag == 0.0
    clock.advance(0.8)  # the reactor was blocked: the 0.5 s timer ran 0.3 s late
    assert abs(monitor.last_lag - 0.3) < 1e-9
    monitor.stop()
    assert metrics.registry.get_sample_value("gateway_reactor_lag_seconds_count") == 2


def test_the_operations_page_documents_exactly_the_registered_metrics():
    documented = re.findall(r"^\| `(gateway_[a-z_]+)` \|", OPERATIONS.read_text("utf-8"),
                            re.MULTILINE)
    registry = GatewayMetrics(process_collectors=False).registry
    registered = [family.name + ("_total" if family.type == "counter" else "")
                  for family in registry.collect()]
    assert sorted(documented) == sorted(registered)
