"""One error type and one mapping from any failure of an outbound call to a short reason.

Every outbound client reports failures in the same words, so a dashboard that graphs
``unreachable`` means the same thing for the analysis backend, the license server, the
heartbeat receiver and a webhook endpoint. The reasons are stable strings fit for a metric
label; the exception class name travels beside them for log lines.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.error import (
    ConnectError,
    ConnectionClosed,
    ConnectionLost,
    DNSLookupError,
    TimeoutError,
)
from twisted.python.failure import Failure
from twisted.web._newclient import (
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.error import SchemeNotSupported

from mnemomd.http.body import BodyStalled, BodyTooLarge

#: Every reason :func:`failure_reason` can give.
REASONS = ("timeout", "unreachable", "tls", "oversize", "stalled", "cancelled", "bad_url",
           "internal")

#: Network failures that mean "could not talk to the server": connection refused, DNS,
#: a connection lost before or while the answer came.
_UNREACHABLE = (ConnectError, DNSLookupError, ConnectionLost, ConnectionClosed,
                ResponseNeverReceived, RequestNotSent, RequestTransmissionFailed,
                ResponseFailed)


class OutboundError(Exception):
    """An outbound call that failed.

    ``reason`` is one of :data:`REASONS`; ``cause`` is the class name of what went wrong
    underneath (``ConnectionRefusedError``, ``DNSLookupError``...), for logs. Neither can
    carry a URL, a header or a body, so the error is safe to log whatever was sent.
    """

    def __init__(self, reason: str, cause: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cause = cause or reason


def _inner(failure: Failure, error: type[BaseException]) -> bool:
    """Whether one of the failures a ``_WrapperException`` carries is ``error``."""
    return any(reason.check(error) for reason in getattr(failure.value, "reasons", None) or ())


def _is_tls_error(failure: Failure) -> bool:
    reasons = getattr(failure.value, "reasons", None) or [failure]
    for reason in reasons:
        module = type(reason.value).__module__
        if module.startswith(("OpenSSL", "ssl")):
            return True
    return False


def failure_reason(failure: Failure) -> str:
    """The reason code for any failure of an outbound call (see :data:`REASONS`)."""
    if failure.check(OutboundError):
        return str(failure.value.reason)
    if failure.check(BodyTooLarge):
        return "oversize"
    if failure.check(BodyStalled):
        return "stalled"
    if failure.check(TimeoutError):
        return "timeout"
    if failure.check(CancelledError) or _inner(failure, CancelledError):
        # Cancelling a request in flight surfaces as ResponseNeverReceived([CancelledError]):
        # the call was abandoned by us, not lost by the server.
        return "cancelled"
    if failure.check(SchemeNotSupported):
        return "bad_url"
    if _is_tls_error(failure):
        return "tls"
    if failure.check(*_UNREACHABLE):
        return "unreachable"
    return "internal"


def as_outbound(failure: Failure) -> Failure:
    """``failure`` as an :class:`OutboundError` (unchanged if it already is one)."""
    if failure.check(OutboundError):
        return failure
    cause = failure.type.__name__ if failure.type is not None else "unknown"
    return Failure(OutboundError(failure_reason(failure), cause))
