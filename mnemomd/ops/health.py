"""Health state behind ``/health/*``: startup, readiness checks and shutdown.

Checks are pluggable so storage, KV and license can each add theirs; each returns a
Deferred of (ok, detail) and is timed, so readiness says what failed and how slow it was.

Readiness means "can serve proxied traffic as configured". A check is *required* when the
process cannot serve without it (the license; the database when the configuration has
no fallback for it): its failure answers 503 (``unavailable``). Any other failing check
leaves the gateway serving through its fallback: 200, ``degraded``, the check named in
``failing`` with its fallback and how long its dependency has been down.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from mnemomd.ops.dependency import DependencyState

CheckResult = tuple[bool, "str | dict[str, Any] | None"]
Check = Callable[[], "Deferred[CheckResult] | CheckResult"]
#: Readiness statuses that answer 200: the process serves proxied traffic.
SERVING = ("ok", "degraded")


@dataclass(frozen=True)
class CheckSpec:
    """One readiness check and what its failure means.

    ``required`` (asked after the check ran) says whether the process can serve without
    it; ``fallback`` says what serves meanwhile, ``state`` the tracker of the dependency
    checked (its outage's length and failed operations are shown).
    """

    check: Check
    required: Callable[[], bool]
    fallback: Callable[[], str | None] | None = None
    state: DependencyState | None = None


class HealthState:
    def __init__(self, clock: IReactorTime, version: str, aip_enabled: bool) -> None:
        self._clock = clock
        self.version = version
        self.aip_enabled = aip_enabled
        self.shutting_down = False
        self._checks: dict[str, CheckSpec] = {}
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

    def add_check(self, name: str, check: Check, *,
                  required: bool | Callable[[], bool] = True,
                  fallback: Callable[[], str | None] | None = None,
                  state: DependencyState | None = None) -> None:
        """Add a readiness check. ``required`` (a value, or asked each time after the
        check ran): whether its failure means the process cannot serve (503). Otherwise
        a failure is ``degraded`` (200) and the entry carries ``fallback()`` and, with
        ``state``, how long the dependency has been down."""
        needed = required if callable(required) else (lambda: bool(required))
        self._checks[name] = CheckSpec(check, needed, fallback, state)

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
        checks = [self._run_check(self._checks[n].check) for n in names]

        def assemble(results: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
            by_name = dict(zip(names, results, strict=True))
            failing = [n for n, r in by_name.items() if not r.get("ok", r["status"] == "ok")]
            blocking = [n for n in failing if self._checks[n].required()]
            for name in failing:
                self._describe_failure(name, by_name[name], name in blocking)
            if self.shutting_down:
                status = "shutting_down"
            elif not self.started:
                status = "starting"
            elif blocking:
                status = "unavailable"
            elif failing:
                status = "degraded"
            else:
                status = "ok"
            body: dict[str, Any] = {"status": status, "checks": by_name}
            if failing:
                body["failing"] = failing
            return (200 if status in SERVING else 503), body

        return gatherResults(checks).addCallback(assemble)

    def _describe_failure(self, name: str, entry: dict[str, Any], blocking: bool) -> None:
        spec = self._checks[name]
        entry["required"] = blocking
        if spec.state is not None:
            entry.update(spec.state.describe())
        if not blocking and spec.fallback is not None:
            fallback = spec.fallback()
            if fallback:
                entry["fallback"] = fallback

    def startup(self) -> tuple[int, dict[str, Any]]:
        if self.started:
            return 200, {"status": "ok"}
        return 503, {"status": "starting", "waiting_for": sorted(self._starting)}

    def liveness(self) -> tuple[int, dict[str, Any]]:
        return 200, {"status": "ok", **self.identity}

    def legacy(self) -> tuple[int, dict[str, Any]]:
        return 200, {"status": "ok", "version": self.version, "aip_enabled": self.aip_enabled}
