"""A metric's labelled children, each resolved once.

``metric.labels(...)`` checks and joins its values and takes a lock on every call; on
the request path that is per call work for an answer that never changes. The label
values used here come from small fixed sets (providers, statuses, verdicts, kinds), so
the cache is as bounded as the metric itself.
"""

from __future__ import annotations

from typing import Any, Generic, Protocol, TypeVar

ChildT = TypeVar("ChildT", covariant=True)


class Labelled(Protocol[ChildT]):
    """A prometheus-client metric with labels."""

    def labels(self, *values: Any) -> ChildT: ...


class LabelCache(Generic[ChildT]):
    """``cache(*values)`` is ``metric.labels(*values)``, looked up once per values."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Labelled[ChildT]) -> None:
        self._metric = metric
        self._children: dict[tuple[Any, ...], ChildT] = {}

    def __call__(self, *values: Any) -> ChildT:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child
