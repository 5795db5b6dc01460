"""Talking to the providers and relaying their answers, chunk by chunk.

The relay is the heart of the gateway: every chunk the provider sends is written to the
client the moment it arrives, and when the client cannot keep up the provider connection
is paused, so memory per stream stays bounded whatever the size of the stream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IDelayedCall,
    IPushProducer,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._newclient import (
    Request as ClientRequest,
)
from twisted.web._newclient import (
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseNeverReceived,
)
from twisted.web.client import URI, ResponseDone, _RetryingHTTP11ClientProtocol
from twisted.web.http import PotentialDataLoss, Request
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from mnemomd.http.client import BytesProducer, ClientSettings, Endpoints, HTTPClient

log = Logger()

IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"TRACE", b"PUT"})
#: Seconds to wait for a provider to accept a connection.
CONNECT_TIMEOUT = 30.0


class _ReplayingClientProtocol(_RetryingHTTP11ClientProtocol):
    """A reused pooled connection that may be retried once on a fresh one.

    A server may close an idle kept-alive connection just as it is reused. Twisted
    retries only idempotent requests without a body; LLM calls are POSTs with a body held
    in memory, so the rule here is the one HTTP clients commonly follow: retry when the
    request was never sent, or when no response came back and the request is idempotent
    or carries an ``Idempotency-Key``. A POST is never sent twice otherwise.
    """

    def request(self, request: ClientRequest) -> Deferred[IResponse]:
        self._has_idempotency_key = request.headers.hasHeader(b"idempotency-key")
        return super().request(request)

    def _shouldRetry(self, method: bytes, exception: Exception,  # noqa: N802
                     bodyProducer: IBodyProducer | None) -> bool:  # noqa: N803
        if isinstance(exception, RequestNotSent):
            return True
        if not isinstance(exception, RequestTransmissionFailed | ResponseNeverReceived):
            return False
        if any(r.check(CancelledError) for r in getattr(exception, "reasons", ())):
            return False
        if bodyProducer is not None and not isinstance(bodyProducer, BytesProducer):
            return False
        return method in IDEMPOTENT_METHODS or self._has_idempotency_key


@implementer(IAgentEndpointFactory)
class _CachedEndpoints:
    """Builds each upstream's endpoint once, not on every call.

    Upstreams are a handful of fixed base URLs; rebuilding the endpoint (hostname
    parsing, IDNA encoding) per request was a measurable share of the gateway's CPU.
    """

    def __init__(self, endpoints: IAgentEndpointFactory) -> None:
        self._endpoints = endpoints
        self._cache: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:  # noqa: N802
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._cache.get(key)
        if endpoint is None:
            endpoint = self._cache[key] = self._endpoints.endpointForURI(uri)
        return endpoint


class UpstreamClient:
    """HTTP/1.1 client for the providers with a large persistent connection pool.

    Built on the shared outbound layer (TLS verified, quiet pool); what is the proxy's own
    is the retry rule of reused connections (``_ReplayingClientProtocol``) and the
    endpoint cache.
    """

    def __init__(self, reactor: IReactorTCP, max_per_host: int,
                 idle_seconds: float = 55.0) -> None:
        settings = ClientSettings(max_per_host=max_per_host, idle_seconds=idle_seconds,
                                  connect_timeout=CONNECT_TIMEOUT)
        self.http = HTTPClient(
            reactor, settings=settings, on_reuse=_ReplayingClientProtocol,
            endpoints=_CachedEndpoints(Endpoints(reactor, settings.connect_timeout)))

    def request(self, method: bytes, url: bytes, headers: Headers,
                body: bytes | None) -> Deferred[IResponse]:
        return self.http.request(method, url, headers, body)

    def close(self) -> Deferred[None]:
        return self.http.close()


class IdleTimer:
    """A relay's limit on the provider's silence mid-response: every chunk re-arms it, and
    the relay cancels it while the silence is the gateway's own (paused, held, ending)."""

    def __init__(self, clock: IReactorTime, seconds: float,
                 on_expire: Callable[[], None]) -> None:
        self.seconds = seconds
        self._clock = clock
        self._on_expire = on_expire
        self._call: IDelayedCall | None = None

    def arm(self) -> None:
        if self._call is not None and self._call.active():
            self._call.reset(self.seconds)
        else:
            self._call = self._clock.callLater(self.seconds, self._expired)

    def cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _expired(self) -> None:
        self._call = None
        self._on_expire()


class ResponseCapture:
    """A bounded in-memory copy of a response, kept for integrity analysis."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._chunks: list[bytes] = []
        self.size = 0
        self.truncated = False

    def feed(self, data: bytes) -> None:
        room = self.limit - self.size
        if room <= 0:
            self.truncated = self.truncated or bool(data)
            return
        if len(data) > room:
            data = data[:room]
            self.truncated = True
        self._chunks.append(data)
        self.size += len(data)

    @property
    def full(self) -> bool:
        return self.size >= self.limit

    def getvalue(self) -> bytes:
        return b"".join(self._chunks)


@dataclass
class RelayOutcome:
    """How a relayed response ended; ``complete`` is the only clean ending."""

    ending: str  # complete | upstream_failed | idle_timeout | client_gone
    bytes_sent: int
    capture: ResponseCapture
    #: The whole body when it was held back (not yet written to the client).
    held_body: bytes | None = None


@implementer(IPushProducer)
class StreamRelay(Protocol):
    """Receives an upstream response body and writes it to the client as it arrives.

    It is the producer registered on the client request: when the client's socket
    buffer fills, Twisted pauses it and it pauses the upstream connection. If the client
    goes away, reading continues until the analysis copy is full, then the upstream
    connection is closed.

    With ``hold_limit`` set, nothing is written: the body is held so the caller can answer
    after the integrity verdict (enforce mode). A body that outgrows the limit is never
    released unanalysed: the upstream is paused and ``on_hold_full`` asks the caller for a
    verdict on what is held, who then calls ``release_hold`` (the head, the held bytes, and
    the rest streams on) or ``abandon`` (the caller answered; the upstream is closed).
    """

    def __init__(self, request: Request, clock: IReactorTime, idle_timeout: float,
                 capture: ResponseCapture, request_id: str, hold_limit: int | None = None,
                 on_hold_full: Callable[[], None] | None = None) -> None:
        self._request = request
        self._clock = clock
        self._idle = IdleTimer(clock, idle_timeout, self._idle_expired)
        self.capture = capture
        self._request_id = request_id
        self._client_connected = not request._disconnected
        self._paused = False
        self._ending: str | None = None
        self.bytes_sent = 0
        self.done: Deferred[RelayOutcome] = Deferred()
        self._hold_limit = hold_limit
        self._held: list[bytes] | None = [] if hold_limit is not None else None
        self._held_size = 0
        self._on_hold_full = on_hold_full
        self._waiting = False  # held at the limit, paused, until release_hold or abandon
        self._answered = False  # the caller answered the client itself
        self._lost: Failure | None = None  # the upstream's end while waiting

    # -- upstream side (IProtocol) ------------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802
        if self._client_connected and self._held is None:
            self._request.registerProducer(self, True)
        elif self.capture.full:
            self._close_upstream("client_gone")
        self._arm_idle()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self._arm_idle()
        self.capture.feed(data)
        if self._held is not None:
            self._held.append(data)
            self._held_size += len(data)
            if self._hold_limit is not None and self._held_size > self._hold_limit \
                    and not self._waiting:
                self._waiting = True
                self._cancel_idle()  # the silence is ours
                self.transport.pauseProducing()
                if self._on_hold_full is not None:
                    self._on_hold_full()
            return
        if self._answered:
            return
        if self._client_connected:
            self._request.write(data)
            self.bytes_sent += len(data)
        elif self.capture.full:
            self._close_upstream("client_gone")

    def release_hold(self, write_head: Callable[[], None]) -> None:
        """The verdict on a body held at the limit allows it: ``write_head``, the held
        bytes, then the rest streams on as a plain relay."""
        if not self._waiting:
            return
        self._waiting = False
        held, self._held = self._held or [], None
        self._client_connected = not self._request._disconnected
        if self._client_connected:
            write_head()
            for chunk in held:
                self._request.write(chunk)
                self.bytes_sent += len(chunk)
            self._request.registerProducer(self, True)
        if self._lost is not None:
            self.connectionLost(self._lost)
            return
        self._arm_idle()
        self.transport.resumeProducing()

    def abandon(self) -> None:
        """The caller answered the client instead (a refusal): drop what is held and
        close the upstream connection."""
        if not self._waiting:
            return
        self._waiting = False
        self._held = None
        self._answered = True
        self._client_connected = False
        if self._lost is not None:
            self.connectionLost(self._lost)
            return
        self.transport.resumeProducing()
        self._close_upstream("refused")

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # noqa: N802
        self._cancel_idle()
        if self._waiting:
            self._lost = reason  # ended while its verdict is pending: finished after it
            return
        clean = isinstance(reason, Failure) and reason.check(ResponseDone, PotentialDataLoss)
        ending = self._ending or ("complete" if clean else "upstream_failed")
        if self._held is not None:
            # Held to the end: the caller answers. A broken body is still a break.
            held, self._held = b"".join(self._held), None
            if ending != "complete" and not self._request._disconnected:
                self._request.loseConnection()
            if ending == "complete" and self._request._disconnected:
                ending = "client_gone"
            self.done.callback(RelayOutcome(ending, 0, self.capture,
                                            held if ending == "complete" else None))
            return
        if self._client_connected:
            self._request.unregisterProducer()
            if ending == "complete":
                self._request.finish()
            else:
                # No clean end of body: the client must see the break, not a short answer.
                self._request.loseConnection()
        if ending == "upstream_failed":
            log.error("Upstream closed the response before it was complete",
                      request_id=self._request_id, bytes_sent=self.bytes_sent)
        elif ending == "refused":
            ending = "complete"
        elif ending == "complete" and not self._client_connected:
            ending = "client_gone"
        self.done.callback(RelayOutcome(ending, self.bytes_sent, self.capture))

    # -- client side (IPushProducer) ----------------------------------------------------

    def pauseProducing(self) -> None:  # noqa: N802
        if self._client_connected and not self._paused:
            self._paused = True
            self._cancel_idle()  # silence while paused is ours, not the provider's
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:  # noqa: N802
        if self._paused:
            self._paused = False
            self._arm_idle()
            self.transport.resumeProducing()

    def stopProducing(self) -> None:  # noqa: N802
        """The client connection is gone."""
        if not self._client_connected:
            return
        self._client_connected = False
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()
            self._arm_idle()
        if self.capture.full:
            self._close_upstream("client_gone")

    # -- helpers ------------------------------------------------------------------------

    def _close_upstream(self, ending: str) -> None:
        if self._ending is None:
            self._ending = ending
            self.transport.stopProducing()

    def _arm_idle(self) -> None:
        if self._ending is not None or self._paused:
            return
        self._idle.arm()

    def _cancel_idle(self) -> None:
        self._idle.cancel()

    def _idle_expired(self) -> None:
        log.warn("Upstream was silent for {seconds}s mid-response; closing both sides",
                 seconds=self._idle.seconds, request_id=self._request_id)
        self._close_upstream("idle_timeout")
