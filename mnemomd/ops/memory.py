"""The daemon's heap after startup: moved out of the garbage collector's way.

Everything built while the daemon starts (modules, the configuration, the services and
their caches) lives as long as the process. Left in the collected generations, every
full collection walks all of it again, on the reactor thread, while calls wait.
``gc.freeze()`` moves it to the permanent generation once the daemon is up, so a
collection only walks what calls allocate since.
"""

from __future__ import annotations

import gc
from typing import Protocol


class Collector(Protocol):
    """The part of the ``gc`` module used here."""

    def collect(self) -> int: ...

    def freeze(self) -> None: ...

    def get_freeze_count(self) -> int: ...


def freeze_startup_heap(collector: Collector = gc) -> int:
    """Collect the garbage of startup, then freeze what survives; the count frozen."""
    collector.collect()
    collector.freeze()
    return collector.get_freeze_count()
