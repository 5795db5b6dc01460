"""Whether a dependency (the database, the KV store) is up, told by the operations on it.

Every operation on the dependency reports here: ``failed`` with its failure, ``succeeded``
when it worked. A failure of a kind that means "cannot be reached" (the ``outage_errors``
given, such as a refused connection) is an outage: the first one logs one line, the
outage is then summarised periodically, and the first success after it logs one line
with how long it lasted and how many operations failed. Callers leave known outage
errors to this tracker instead of logging a traceback per call (see ``log_failure``);
anything else is theirs to log. Readiness reads ``down`` and ``describe``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import FirstError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

#: Seconds between two summary lines while an outage lasts.
SUMMARY_INTERVAL = 60.0


def root_cause(error: Failure | BaseException) -> BaseException:
    """The exception behind ``error``, through ``Failure`` and ``gatherResults``' wrapper."""
    value = error.value if isinstance(error, Failure) else error
    while isinstance(value, FirstError):
        value = value.subFailure.value
    return value


class DependencyState:
    """Up or down, for one dependency, from what its operations report."""

    def __init__(self, name: str, clock: IReactorTime,
                 outage_errors: tuple[type[BaseException], ...], *,
                 summary_interval: float = SUMMARY_INTERVAL) -> None:
        """``name`` as the log lines say it (``database``, ``redis``); ``outage_errors``
        the exception types that mean the dependency cannot be reached."""
        self.name = name
        self._clock = clock
        self._outage_errors = outage_errors
        self._summary_interval = summary_interval
        self._summary: IDelayedCall | None = None
        #: When the current outage began (clock seconds), None while up.
        self.down_since: float | None = None
        #: Operations failed in the current outage (the last one once it is over).
        self.failures = 0
        self._reported_failures = 0
        self.reason = ""

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def is_outage(self, error: Failure | BaseException) -> bool:
        """Whether ``error`` says the dependency cannot be reached (not a bug, not bad
        input): a known outage error, counted and logged here, not by the caller."""
        return isinstance(root_cause(error), self._outage_errors)

    def failed(self, error: Failure | BaseException) -> bool:
        """An operation failed; True when that is an outage (then it is counted, and the
        first one of an outage is logged)."""
        if not self.is_outage(error):
            return False
        cause = root_cause(error)
        self.reason = (str(cause) or type(cause).__name__).strip()[:300]
        if self.down_since is None:
            self.down_since = self._clock.seconds()
            self.failures = 0
            self._reported_failures = 0
            log.warn("{dependency} unavailable: {reason}; failed operations are counted "
                     "and summarised every {interval:g} s until it is back",
                     dependency=self.name, reason=self.reason,
                     interval=self._summary_interval)
            self._summary = self._clock.callLater(self._summary_interval, self._summarise)
        self.failures += 1
        return True

    def succeeded(self) -> None:
        """An operation worked: the end of an outage, if there was one."""
        if self.down_since is None:
            return
        down_seconds = round(self._clock.seconds() - self.down_since, 3)
        self.down_since = None
        if self._summary is not None and self._summary.active():
            self._summary.cancel()
        self._summary = None
        log.info("{dependency} available again after {down_seconds} s; {failures} "
                 "operation(s) failed during the outage", dependency=self.name,
                 down_seconds=down_seconds, failures=self.failures)

    def _summarise(self) -> None:
        if self.down_since is None:
            return
        down_seconds = round(self._clock.seconds() - self.down_since, 3)
        recent = self.failures - self._reported_failures
        self._reported_failures = self.failures
        log.warn("{dependency} still unavailable after {down_seconds} s: {failures} "
                 "operation(s) failed so far, {recent} since the last summary ({reason})",
                 dependency=self.name, down_seconds=down_seconds, failures=self.failures,
                 recent=recent, reason=self.reason)
        self._summary = self._clock.callLater(self._summary_interval, self._summarise)

    def describe(self) -> dict[str, Any]:
        """For readiness: how long the current outage has lasted and what it cost."""
        if self.down_since is None:
            return {}
        return {"down_seconds": round(self._clock.seconds() - self.down_since, 3),
                "failed_operations": self.failures}

    def stop(self) -> None:
        """Cancel the pending summary (the process is stopping)."""
        if self._summary is not None and self._summary.active():
            self._summary.cancel()
        self._summary = None


def is_known_outage(error: Failure | BaseException,
                    states: Iterable[DependencyState]) -> bool:
    """Whether any of ``states`` counts ``error`` as its outage."""
    return any(state.is_outage(error) for state in states)


def log_failure(logger: Logger, message: str, failure: Failure,
                states: Iterable[DependencyState], **fields: Any) -> None:
    """Log ``failure`` with its traceback, unless it is a known outage of one of
    ``states``: that is counted and logged once per outage by its tracker, so a call that
    meets it adds a debug line, not a traceback."""
    if is_known_outage(failure, states):
        logger.debug(message + " ({reason})", reason=failure.getErrorMessage(), **fields)
        return
    logger.failure(message, failure, **fields)
