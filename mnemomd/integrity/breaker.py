"""A circuit breaker per analysis backend (SPEC §5.5).

When a backend is down, every analysis would otherwise wait for its full timeout; the
breaker turns that into an immediate ``circuit_open`` failure until the backend has had
time to recover, then lets a single trial call find out whether it has.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

log = Logger()

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class CircuitBreaker:
    """closed → open after ``failures`` consecutive failures → half-open after ``cooldown``.

    Half-open admits one trial call: its success closes the breaker, its failure opens
    it for another cool-down. Pure logic on ``clock.seconds()``; callers report each
    admitted call's result with :meth:`record_success`, :meth:`record_failure` or, for a
    call abandoned without a verdict on the backend, :meth:`record_abandoned`.
    """

    def __init__(self, clock: IReactorTime, failures: int = 5, cooldown: float = 60.0,
                 name: str = "analysis") -> None:
        if failures < 1:
            raise ValueError("failures must be at least 1")
        self._clock = clock
        self.failures = failures
        self.cooldown = cooldown
        self.name = name
        self._state = CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._trial_in_flight = False

    @property
    def state(self) -> str:
        """The state as of now: an open breaker whose cool-down is over reads half-open."""
        if self._state == OPEN and self._cooldown_over():
            return HALF_OPEN
        return self._state

    def _cooldown_over(self) -> bool:
        return self._clock.seconds() >= self._opened_at + self.cooldown

    def allow(self) -> bool:
        """Whether a call may go to the backend now (claims the trial when half-open)."""
        if self._state == CLOSED:
            return True
        if self._state == OPEN:
            if not self._cooldown_over():
                return False
            self._state = HALF_OPEN
            self._trial_in_flight = False
        if self._trial_in_flight:
            return False
        self._trial_in_flight = True
        return True

    def record_success(self) -> None:
        if self._state != CLOSED:
            log.info("Analysis backend {provider} recovered: circuit closed",
                     provider=self.name)
        self._state = CLOSED
        self._consecutive = 0
        self._trial_in_flight = False

    def record_failure(self) -> None:
        if self._state == HALF_OPEN:
            self._open()
            return
        if self._state == OPEN:
            return  # a call admitted before the breaker opened: already counted as down
        self._consecutive += 1
        if self._consecutive >= self.failures:
            self._open()

    def record_abandoned(self) -> None:
        """A call cancelled by its caller says nothing about the backend: free the trial."""
        if self._state == HALF_OPEN:
            self._trial_in_flight = False

    def _open(self) -> None:
        if self._state != OPEN:
            log.warn("Analysis backend {provider} failing: circuit open for {cooldown}s",
                     provider=self.name, cooldown=self.cooldown)
        self._state = OPEN
        self._opened_at = self._clock.seconds()
        self._consecutive = 0
        self._trial_in_flight = False
