"""Periodic background jobs (SPEC §8.2): a ``LoopingCall`` that never overlaps itself.

Every scheduler job — heartbeat, license check, and the observer's traces, drift, nudges,
webhooks and retention — has the same needs: run every N seconds on the reactor, never
start a second run while the first is still going (a slow database must not pile up
runs), count each tick in ``gateway_cron_runs_total{job,result}`` with its duration, keep
going after a failure, and stop cleanly at shutdown without cutting a run in half.
:class:`PeriodicJob` is that, once, so each job is only its function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from mnemomd.ops.metrics import GatewayMetrics

log = Logger()

#: The values of the ``result`` label of ``gateway_cron_runs_total``.
RESULTS = ("ok", "error", "skipped")

JobFunction = Callable[[], "Deferred[Any] | None"]


def failure_summary(failure: Failure) -> tuple[str, str]:
    """(exception type, ``file:line in function`` of the innermost frame) of a failure.

    Exception messages are left out on purpose: they can quote the data a job was
    handling (a row, a response body, a URL with a token), and logs must never carry
    that. The type and the place are enough to find the bug.
    """
    error = failure.type.__name__ if failure.type is not None else "unknown"
    frames = failure.frames or []
    if not frames:
        return error, "unknown"
    function, filename, line = frames[-1][:3]
    return error, f"{filename}:{line} in {function}"


class PeriodicJob:
    """Runs ``func`` every ``interval`` seconds on ``clock``; a run never overlaps another.

    The loop ticks on a fixed schedule whatever the runs do. A tick that finds the
    previous run still going (``func`` returned a Deferred that has not fired) does not
    start another one: it is counted ``result="skipped"``, so a job that cannot keep up
    with its interval shows in metrics instead of silently queueing work. A run that
    raises or whose Deferred fails is counted ``result="error"``, logged without its data,
    and the loop carries on; ``LoopingCall`` alone would stop for good at the first error.
    """

    def __init__(self, name: str, interval: float, func: JobFunction, clock: IReactorTime,
                 metrics: GatewayMetrics, *, at_start: bool = False) -> None:
        if not interval > 0:
            raise ValueError(f"job {name!r}: interval must be positive, got {interval!r}")
        self.name = name
        self.interval = float(interval)
        #: Whether the scheduler runs it once as it starts, not one interval in.
        self.at_start = at_start
        self._func = func
        self._clock = clock
        self._runs = {result: metrics.cron_runs.labels(name, result) for result in RESULTS}
        self._duration = metrics.cron_duration.labels(name)
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock
        self._current: Deferred[None] | None = None
        self._idle_waiters: list[Deferred[None]] = []

    def __repr__(self) -> str:
        return f"<PeriodicJob {self.name} every {self.interval:g}s>"

    @property
    def running(self) -> bool:
        """Whether the loop is started (a run may still be finishing after ``stop``)."""
        return bool(self._loop.running)

    @property
    def busy(self) -> bool:
        """Whether a run is in progress right now."""
        return self._current is not None

    def start(self, now: bool = False) -> None:
        """Start ticking; with ``now`` the first run is at once rather than one interval in.

        The default waits an interval so that a daemon starting does not fire every job
        at the same moment as it opens its pools.
        """
        if self._loop.running:
            raise RuntimeError(f"job {self.name!r} is already running")
        self._loop.start(self.interval, now=now).addErrback(self._loop_died)

    def stop(self) -> Deferred[None]:
        """Stop ticking; the Deferred fires once a run in progress (if any) has finished.

        Nothing is cancelled: a run is left to complete so that, for instance, a batch
        of rows is never half written at shutdown. Callers that cannot wait forever add
        their own timeout to the returned Deferred.
        """
        if self._loop.running:
            self._loop.stop()
        if self._current is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def _tick(self) -> None:
        # Returns None on purpose: returning the run's Deferred would make LoopingCall
        # wait for it and silently drop the ticks it missed; here they are counted.
        if self._current is not None:
            self._runs["skipped"].inc()
            log.debug("Job {job} still running at its next tick; tick skipped", job=self.name)
            return
        started = self._clock.seconds()
        run: Deferred[Any] = maybeDeferred(self._func)
        self._current = run.addCallbacks(self._succeeded, self._failed,
                                         callbackArgs=(started,), errbackArgs=(started,))
        self._current.addBoth(self._finished)

    def _succeeded(self, _: Any, started: float) -> None:
        self._duration.observe(self._elapsed(started))
        self._runs["ok"].inc()

    def _failed(self, failure: Failure, started: float) -> None:
        self._duration.observe(self._elapsed(started))
        self._runs["error"].inc()
        error, where = failure_summary(failure)
        log.warn("Job {job} failed: {error} at {where}; next run in {interval:g}s",
                 job=self.name, error=error, where=where, interval=self.interval)

    def _finished(self, result: Any) -> None:
        self._current = None
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        if isinstance(result, Failure):  # only a bug in the bookkeeping above gets here
            error, where = failure_summary(result)
            log.error("Job {job}: internal error {error} at {where}", job=self.name,
                      error=error, where=where)

    def _elapsed(self, started: float) -> float:
        return max(0.0, self._clock.seconds() - started)

    def _loop_died(self, failure: Failure) -> None:
        # _tick never raises, so this is a bug; say so rather than go quiet for good.
        error, where = failure_summary(failure)
        log.error("Job {job} loop stopped: {error} at {where}", job=self.name, error=error,
                  where=where)
