"""What a worker process knows of its place under the supervisor, and the supervisor's
restart rule (``MNEMOM_WORKERS``).

The supervisor (``mnemomd/cli/workers.py``) starts each worker with ``MNEMOM_WORKER`` set
to a :class:`WorkerSlot`; a process without it is not a worker. Both pieces here are pure,
so they are tested without processes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

#: The environment variable the supervisor passes a worker its slot in.
WORKER_ENV = "MNEMOM_WORKER"
#: prometheus-client's multiprocess directory, read by it at import time.
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass(frozen=True)
class WorkerSlot:
    """One worker's place: its index among ``count``, the port every worker shares, the
    supervisor's pid (a worker stops when its supervisor is gone) and the directory its
    metrics are written to for the supervisor's aggregation."""

    index: int
    count: int
    port: int
    supervisor_pid: int
    metrics_dir: str

    def encode(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> WorkerSlot:
        try:
            fields = json.loads(text)
            slot = cls(**fields)
        except (ValueError, TypeError):
            raise ValueError(f"{WORKER_ENV} is not a worker slot") from None
        numbers = (slot.index, slot.count, slot.port, slot.supervisor_pid)
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers) \
                or not 0 <= slot.index < slot.count or not 0 < slot.port <= 65535 \
                or not isinstance(slot.metrics_dir, str) or not slot.metrics_dir:
            raise ValueError(f"{WORKER_ENV} is not a worker slot")
        return slot

    def role(self, configured: str) -> str:
        """This worker's role: the scheduler's jobs run in worker 0 only, so with role
        ``all`` the others are gateways."""
        if configured == "all" and self.index > 0:
            return "gateway"
        return configured

    def identity(self, pid: int) -> dict[str, int]:
        """What ``/health/live`` says of the worker that answered."""
        return {"worker": self.index, "pid": pid}


def worker_slot(environ: Mapping[str, str]) -> WorkerSlot | None:
    """The slot the supervisor gave this process, or None when it is not a worker."""
    text = environ.get(WORKER_ENV, "")
    return WorkerSlot.decode(text) if text else None


@dataclass
class RestartPolicy:
    """When a dead worker is started again: after ``base`` seconds, doubling with each
    death within ``window`` seconds up to ``cap``; the ``max_deaths``-th death within
    the window means the worker cannot run, and the supervisor gives up."""

    base: float = 1.0
    cap: float = 30.0
    window: float = 120.0
    max_deaths: int = 5
    _deaths: dict[int, list[float]] = field(default_factory=dict)

    def died(self, index: int, now: float) -> float | None:
        """Seconds to wait before restarting worker ``index``, or None to give up."""
        recent = [t for t in self._deaths.get(index, []) if now - t < self.window]
        recent.append(now)
        self._deaths[index] = recent
        if len(recent) >= self.max_deaths:
            return None
        return min(self.cap, self.base * 2 ** (len(recent) - 1))
