"""A metric's children are resolved once per label values, and count as ``labels`` does."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from mnemomd.ops.labels import LabelCache


def test_the_cache_returns_the_metrics_own_child_resolved_once():
    registry = CollectorRegistry()
    counter = Counter("things", "things", ["kind", "status"], registry=registry)
    asked: list[tuple[object, ...]] = []

    class Spy:
        def labels(self, *values: object) -> object:
            asked.append(values)
            return counter.labels(*values)

    cache = LabelCache(Spy())
    for _ in range(3):
        cache("a", 200).inc()
    cache("b", 404).inc()
    assert asked == [("a", 200), ("b", 404)]
    assert cache("a", 200) is counter.labels("a", "200")
    assert registry.get_sample_value("things_total", {"kind": "a", "status": "200"}) == 3
    assert registry.get_sample_value("things_total", {"kind": "b", "status": "404"}) == 1
