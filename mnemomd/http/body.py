"""The one reader of response bodies: bounded in size, optionally bounded in silence.

Like treq's ``collect()``, one small protocol reads every body the daemon asks for, but a
server can never make it hold more than ``limit`` bytes: past the limit (or past a
``Content-Length`` announcing more) the connection is closed and the read fails with
:class:`BodyTooLarge`. With ``stall_timeout`` set, a body that goes silent that long
between bytes fails with :class:`BodyStalled`. Cancelling the read closes the connection
rather than leaving a server streaming into nothing.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse


class BodyTooLarge(Exception):
    """A response body longer than the reader's limit; the connection was closed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"response body larger than {limit} bytes")
        self.limit = limit


class BodyStalled(Exception):
    """A response body that sent nothing for ``seconds``; the connection was closed."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"response body silent for {seconds:g} s")
        self.seconds = seconds


class _Collector(Protocol):
    """Reads one body into memory (or into nothing, with ``keep=False``)."""

    def __init__(self, limit: int, keep: bool, clock: IReactorTime | None,
                 stall_timeout: float | None) -> None:
        if stall_timeout is not None and clock is None:
            raise ValueError("a stall timeout needs a clock")
        self._limit = limit
        self._keep = keep
        self._clock = clock
        self._stall_timeout = stall_timeout
        self._stall_call: IDelayedCall | None = None
        self._chunks: list[bytes] = []
        self._size = 0
        self.done: Deferred[bytes] = Deferred(lambda _: self._abort())

    def connectionMade(self) -> None:  # noqa: N802
        self._arm()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.done.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._chunks.clear()
            self._fail(BodyTooLarge(self._limit))
            return
        self._arm()
        if self._keep:
            self._chunks.append(data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]  # noqa: N802
        self._disarm()
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            # A close-delimited body may be complete: its parser tells if it is not.
            self.done.callback(b"".join(self._chunks))
        else:
            self.done.errback(reason)

    def _fail(self, error: Exception) -> None:
        self._disarm()
        self.done.errback(error)
        self._abort()

    def _abort(self) -> None:
        self._disarm()
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def _arm(self) -> None:
        if self._stall_timeout is None or self._clock is None or self.done.called:
            return
        if self._stall_call is not None and self._stall_call.active():
            self._stall_call.reset(self._stall_timeout)
        else:
            self._stall_call = self._clock.callLater(self._stall_timeout, self._stalled)

    def _disarm(self) -> None:
        if self._stall_call is not None and self._stall_call.active():
            self._stall_call.cancel()
        self._stall_call = None

    def _stalled(self) -> None:
        self._stall_call = None
        if not self.done.called and self._stall_timeout is not None:
            self._fail(BodyStalled(self._stall_timeout))


class _Refuse(Protocol):
    """Takes a body known to be too large only to close its connection at once."""

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.stopProducing()  # type: ignore[union-attr]


def read_body(response: IResponse, limit: int, clock: IReactorTime | None = None,
              stall_timeout: float | None = None) -> Deferred[bytes]:
    """The whole body of ``response``, at most ``limit`` bytes.

    Fails with :class:`BodyTooLarge` past the limit, :class:`BodyStalled` after
    ``stall_timeout`` seconds of silence (on ``clock``), or with how the connection broke
    (``ResponseFailed``) when the body ends unclean.
    """
    if response.length is not UNKNOWN_LENGTH and response.length > limit:
        response.deliverBody(_Refuse())
        return fail(BodyTooLarge(limit))
    collector = _Collector(limit, True, clock, stall_timeout)
    response.deliverBody(collector)
    return collector.done


def discard_body(response: IResponse, limit: int, clock: IReactorTime | None = None,
                 stall_timeout: float | None = None) -> Deferred[None]:
    """Read ``response``'s body and throw it away, so the exchange completes.

    For callers that learnt all they need from the status line: the body is dropped as it
    comes, and one that is too long, stalls or breaks only closes the connection; the
    result is None however it ended. Only a cancellation (a deadline) fails it.
    """
    collector = _Collector(limit, False, clock, stall_timeout)
    response.deliverBody(collector)

    def ended(result: bytes | Failure) -> None | Failure:
        if isinstance(result, Failure) and result.check(CancelledError):
            return result
        return None

    return collector.done.addBoth(ended)

