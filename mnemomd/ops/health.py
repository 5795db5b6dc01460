"""Health state behind ``/health/*``: startup, readiness checks and shutdown.

Checks are pluggable so storage, KV and license can each add theirs; each returns a
Deferred of (ok, detail) and is timed, so readiness says what failed and how slow it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

CheckResult = tuple[bool, "str | dict[str, Any] | None"]
Check = Callable[[], "Deferred[CheckResult] | CheckResult"]


class HealthState:
    def __init__(self, clock: IReactorTime, version: str, aip_enabled: bool) -> None:
        self._clock = clock
        self.version = version
        self.aip_enabled = aip_enabled
        self.shutting_down = False
        self._checks: dict[str, Check] = {}
        #: Components that must report in before /health/startup says ok.
        self._starting: set[str] = {"listener"}
        self._on_started: list[Callable[[], object]] = []
        #: Said by ``/health/live`` under ``MNEMOM_WORKERS``: which worker answered.
        self.identity: dict[str, Any] = {}

    def expect(self, component: str) -> None:
        self._starting.add(component)

    def component_ready(self, component: str) -> None:
        was_starting = bool(self._starting)
        self._starting.discard(component)
        if was_starting and not self._starting:
            callbacks, self._on_started = self._on_started, []
            for callback in callbacks:
                callback()

    def when_started(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` once every component has reported in (now, if they have)."""
        if self.started:
            callback()
        else:
            self._on_started.append(callback)

    @property
    def started(self) -> bool:
        return not self._starting

    @started.setter
    def started(self, value: bool) -> None:
        if value:
            self._starting.clear()

    def add_check(self, name: str, check: Check) -> None:
        self._checks[name] = check

    def _run_check(self, check: Check) -> Deferred[dict[str, Any]]:
        start = self._clock.seconds()

        def done(result: CheckResult | Failure) -> dict[str, Any]:
            if isinstance(result, Failure):
                ok, detail = False, result.getErrorMessage() or result.type.__name__
            else:
                ok, detail = result
            entry: dict[str, Any] = {
                "status": "ok" if ok else "fail",
                "latency_ms": round((self._clock.seconds() - start) * 1000, 3),
            }
            if isinstance(detail, dict):
                entry.update(detail)  # a check may name its own status (license state)
                entry["ok"] = ok
            elif detail:
                entry["detail"] = detail
            return entry

        return maybeDeferred(check).addBoth(done)

    def readiness(self) -> Deferred[tuple[int, dict[str, Any]]]:
        """(HTTP status, body) for ``/health/ready``."""
        names = list(self._checks)
        checks = [self._run_check(self._checks[n]) for n in names]

        def assemble(results: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
            by_name = dict(zip(names, results, strict=True))
            failing = [n for n, r in by_name.items() if not r.get("ok", r["status"] == "ok")]
            if self.shutting_down:
                status = "shutting_down"
            elif not self.started:
                status = "starting"
            elif failing:
                status = "degraded"
            else:
                status = "ok"
            return (200 if status == "ok" else 503), {"status": status, "checks": by_name}

        return gatherResults(checks).addCallback(assemble)

    def startup(self) -> tuple[int, dict[str, Any]]:
        if self.started:
            return 200, {"status": "ok"}
        return 503, {"status": "starting", "waiting_for": sorted(self._starting)}

    def liveness(self) -> tuple[int, dict[str, Any]]:
        return 200, {"status": "ok", **self.identity}

    def legacy(self) -> tuple[int, dict[str, Any]]:
        return 200, {"status": "ok", "version": self.version, "aip_enabled": self.aip_enabled}
