"""The HTTP front door: request objects, the connection factory, and the router.

``twisted.web.http`` is used directly rather than ``twisted.web.server``: the proxy needs
raw request targets, no resource traversal and no form parsing, and every byte of
overhead counts on the hot path. Request bodies stay in memory (never a temporary file:
prompts must not touch disk) and are bounded by ``MAX_REQUEST_BODY_BYTES``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Protocol

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocolNegotiationFactory,
    IReactorTime,
)
from twisted.internet.protocol import Protocol as WireProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from zope.interface import implementer

from mnemomd.http.paths import RouteError, check_path, split_target
from mnemomd.ops.health import HealthState
from mnemomd.ops.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from mnemomd.ops.metrics import GatewayMetrics

log = Logger()

#: Seconds an idle keep-alive client connection is kept open.
CLIENT_IDLE_TIMEOUT = 300
#: A body this many times over the limit is cut off instead of drained.
OVERSIZE_DRAIN_FACTOR = 2
EXTRA_REASON_PHRASES = {431: b"Request Header Fields Too Large"}
#: Seconds a client that does not read its 408 may keep the socket before it is aborted.
ABORT_AFTER_TIMEOUT = 15.0


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a client may take to send a request, and how many connections it may hold.

    ``request_timeout`` is a deadline, not an idle timer: a client trickling one byte a
    minute would reset an idle timer forever (slowloris). It runs from the connection's
    first moment for its first request, and from the first byte of each later request
    on a kept-alive connection, and ends once the whole body has arrived, so the time a
    response takes (a long stream) is never counted. ``max_per_client`` caps the open
    connections from one IP address (0: no cap), so one client cannot hold them all.
    """

    request_timeout: float = 60.0
    max_per_client: int = 256


def client_host(address: IAddress | None) -> str | None:
    """The IP address a connection comes from; None for UNIX sockets and the like, which
    all share one peer and are never capped."""
    if isinstance(address, IPv4Address | IPv6Address):
        return address.host
    return None


def raw_response(status: int, payload: dict[str, Any]) -> bytes:
    """A whole HTTP/1.1 response that closes its connection, for answers given outside any
    request object (the request could not be parsed, or never arrived in time)."""
    data = json.dumps(payload, separators=(",", ":")).encode()
    phrase = http.RESPONSES.get(status) or EXTRA_REASON_PHRASES.get(status, b"Error")
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % (status, phrase, len(data))) + data


class BoundedBody(BytesIO):
    """Request body buffer that stops storing past its limit and remembers it did."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.received = 0

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.received += len(data)
        if self.received <= self.limit:
            return super().write(data)
        return len(data)

    @property
    def too_large(self) -> bool:
        return self.received > self.limit


def json_body(status: int, payload: dict[str, Any]) -> tuple[int, bytes]:
    return status, json.dumps(payload, separators=(",", ":")).encode()


def error_payload(message: str, error_type: str, **extra: Any) -> dict[str, Any]:
    return {"error": message, "type": error_type, **extra}


def send_json(request: http.Request, status: int, payload: dict[str, Any],
              headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer with a JSON body; a request whose client has gone is left alone."""
    if request._disconnected or request.finished:
        return
    data = json.dumps(payload, separators=(",", ":")).encode()
    request.setResponseCode(status)
    request.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
    request.responseHeaders.setRawHeaders(b"content-length", [str(len(data)).encode()])
    for name, value in headers or ():
        request.responseHeaders.setRawHeaders(name, [value])
    if request.method != b"HEAD":
        request.write(data)
    request.finish()


def send_empty(request: http.Request, status: int,
               headers: list[tuple[bytes, bytes]]) -> None:
    if request._disconnected or request.finished:
        return
    request.setResponseCode(status)
    for name, value in headers:
        request.responseHeaders.setRawHeaders(name, [value])
    request.finish()


class GatewayRequest(http.Request):
    """An incoming request whose body is bounded, kept in memory and never form-parsed."""

    defaultContentType = None  # relayed responses keep exactly the upstream's headers
    content: BoundedBody

    def __init__(self, channel: GatewayChannel, queued: object = None) -> None:
        # Bodies are relayed, never interpreted as form posts (multipart uploads to the
        # providers' file APIs must pass through untouched and unparsed).
        super().__init__(channel, parsePOSTFormSubmission=False)
        self.request_id = os.urandom(8).hex()
        self.received_at = 0.0

    def gotLength(self, length: int | None) -> None:  # noqa: N802
        self.content = BoundedBody(self.channel.gateway.max_body_bytes)
        if length is not None and length > self.content.limit * OVERSIZE_DRAIN_FACTOR:
            self._refuse_oversized()

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802
        self.content.write(data)
        if self.content.received > self.content.limit * OVERSIZE_DRAIN_FACTOR:
            self._refuse_oversized()

    def _refuse_oversized(self) -> None:
        """Far too large to drain politely: answer 413 now and close the connection."""
        channel = self.channel
        if channel is None or getattr(self, "_refused", False):
            return
        self._refused = True
        channel.respond_raw(413, error_payload(
            f"Request body exceeds {self.content.limit} bytes", "request_too_large"))

    def process(self) -> None:
        if getattr(self, "_refused", False):
            return
        gateway = self.channel.gateway
        self.received_at = gateway.clock.seconds()
        gateway.handle(self)

    def __repr__(self) -> str:
        # The query string can carry a Gemini API key: never let it reach a log line.
        path = split_target(getattr(self, "uri", b"") or b"")[0]
        return f"<GatewayRequest {self.request_id} {getattr(self, 'method', b'?')!r} {path!r}>"


class GatewayChannel(http.HTTPChannel):
    """HTTP/1.1 connection that answers protocol errors in JSON, like everything else, and
    gives each request a deadline to arrive in (``ConnectionLimits``)."""

    totalHeadersSize = 65536
    MAX_LENGTH = 65536
    gateway: Gateway
    limits: ConnectionLimits = ConnectionLimits()
    #: The peer's IP address, counted against ``max_per_client`` while the connection lives.
    client_host: str | None = None
    on_lost: Callable[[GatewayChannel], None] | None = None
    _deadline: IDelayedCall | None = None
    _abort_call: IDelayedCall | None = None
    #: Set once the connection has been answered outside a request: input is ignored.
    _answered_raw = False

    def connectionMade(self) -> None:  # noqa: N802
        super().connectionMade()
        self._start_deadline()  # a connection that never sends a byte is a slow client too

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._answered_raw:
            return  # what a refused client still sends must not start another request
        if self._deadline is None and not self._handlingRequest and data:
            self._start_deadline()  # the first byte of the next request on this connection
        super().dataReceived(data)

    def allContentReceived(self) -> None:  # noqa: N802
        """The whole request is in: its deadline is met, the response takes its own time."""
        self._cancel_deadline()
        super().allContentReceived()

    def timeoutConnection(self) -> None:  # noqa: N802
        """The idle timer is for kept-alive connections between requests; while a request
        is arriving its deadline decides, so a long ``REQUEST_TIMEOUT`` is not cut short
        by silence, nor a 408 replaced by a close without an answer."""
        if self._deadline is None:
            super().timeoutConnection()

    def _start_deadline(self) -> None:
        self._deadline = self.callLater(self.limits.request_timeout, self._request_timed_out)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _request_timed_out(self) -> None:
        self._deadline = None
        self.gateway.metrics.client_connections_closed.labels("request_timeout").inc()
        # A client that does not read its answer either must not keep the socket.
        self._abort_call = self.callLater(ABORT_AFTER_TIMEOUT, self._abort)
        self.respond_raw(408, error_payload(
            f"Request not received within {self.limits.request_timeout:g} seconds",
            "request_timeout"))

    def _abort(self) -> None:
        self._abort_call = None
        if self.transport is not None:
            self.transport.abortConnection()

    def _respondToBadRequestAndDisconnect(self) -> None:  # noqa: N802
        if getattr(self, "_receivedHeaderSize", 0) > self.totalHeadersSize:
            self.lineLengthExceeded(b"")
            return
        self.respond_raw(400, error_payload("Malformed HTTP request", "invalid_request_error"))

    def lineLengthExceeded(self, line: bytes) -> None:  # noqa: N802
        self.respond_raw(431, error_payload(
            f"Request line or headers exceed {self.totalHeadersSize} bytes",
            "invalid_request_error"))

    def respond_raw(self, status: int, payload: dict[str, Any]) -> None:
        """Answer outside any request object (it could not even be parsed) and close."""
        if self._answered_raw:
            return
        self._answered_raw = True
        self._cancel_deadline()
        log.info("Refused a request at the HTTP layer: {status} {reason}", status=status,
                 reason=payload["error"])
        if self.transport is not None:
            self.transport.write(raw_response(status, payload))
        self.loseConnection()

    _host_address: IAddress | None = None

    def getHost(self) -> IAddress:  # noqa: N802
        # Asked by every request object; one getsockname() per connection is enough.
        if self._host_address is None:
            self._host_address = super().getHost()
        return self._host_address

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        self._cancel_deadline()
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self.gateway.channels.discard(self)
        if self.on_lost is not None:
            self.on_lost, on_lost = None, self.on_lost
            on_lost(self)
        super().connectionLost(reason)

    def checkPersistence(self, request: http.Request, version: bytes) -> bool:  # noqa: N802
        """While shutting down, every response closes its connection."""
        if self.gateway.health.shutting_down:
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            return False
        return super().checkPersistence(request, version)


@implementer(IProtocolNegotiationFactory)
class GatewayFactory(http.HTTPFactory):
    """Builds gateway connections; Twisted's own access log is off (ours has no secrets).

    It names HTTP/1.1 for ALPN so that native TLS (``LISTEN=ssl:…``) completes the
    handshake with clients that offer ALPN, which is all modern ones.
    """

    protocol = GatewayChannel  # type: ignore[assignment]
    noisy = False

    def __init__(self, gateway: Gateway, clock: IReactorTime,
                 limits: ConnectionLimits | None = None) -> None:
        super().__init__(timeout=CLIENT_IDLE_TIMEOUT, reactor=clock)
        self.gateway = gateway
        self.limits = limits or ConnectionLimits()
        #: Open connections by client IP address (only addresses with one open).
        self.per_client: Counter[str] = Counter()

    def buildProtocol(self, addr: IAddress | None) -> WireProtocol:  # noqa: N802
        host = client_host(addr)
        cap = self.limits.max_per_client
        if host is not None and cap and self.per_client[host] >= cap:
            self.gateway.metrics.client_connections_closed.labels("per_client_limit").inc()
            return RefusedConnection(cap)
        channel: GatewayChannel = super().buildProtocol(addr)  # type: ignore[assignment]
        channel.requestFactory = GatewayRequest
        channel.gateway = self.gateway
        channel.limits = self.limits
        if host is not None:
            channel.client_host = host
            self.per_client[host] += 1
            channel.on_lost = self._release
        self.gateway.channels.add(channel)
        return channel

    def _release(self, channel: GatewayChannel) -> None:
        host = channel.client_host
        if host is None:
            return
        self.per_client[host] -= 1
        if self.per_client[host] <= 0:
            del self.per_client[host]

    def log(self, request: http.Request) -> None:
        pass

    def acceptableProtocols(self) -> list[bytes]:  # noqa: N802
        return [b"http/1.1"]


class RefusedConnection(WireProtocol):
    """A connection over its address's cap: told why in one 429 response, then closed.

    It is answered at once, before its request is read: holding it open to read the
    request would give the client the very connection the cap denies it.
    """

    def __init__(self, cap: int) -> None:
        self._cap = cap

    def connectionMade(self) -> None:  # noqa: N802
        log.info("Refused a connection: {cap} already open from its address", cap=self._cap)
        assert self.transport is not None
        self.transport.write(raw_response(429, error_payload(
            f"Too many open connections from this address (limit {self._cap})",
            "too_many_connections")))
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        pass


class InFlight:
    """Counts requests still being worked on so shutdown can wait for them."""

    def __init__(self) -> None:
        self.count = 0
        self._waiters: list[Deferred[None]] = []

    def track(self, work: Deferred[Any]) -> None:
        self.count += 1

        def release(result: object) -> None:
            self.count -= 1
            if self.count == 0:
                waiters, self._waiters = self._waiters, []
                for waiter in waiters:
                    waiter.callback(None)
            if isinstance(result, Failure):
                log.failure("Request handling failed", result)

        work.addBoth(release)

    def wait_idle(self) -> Deferred[None]:
        if self.count == 0:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        return waiter


#: Serves one routed request; the Deferred fires when all work for it is over.
RequestHandler = Callable[[GatewayRequest], Deferred[None]]


class ProxyRoutes(Protocol):
    """What the front door hands provider paths to (``mnemomd.proxy``), without knowing it."""

    def route(self, path: bytes, query: bytes) -> RequestHandler | None:
        """The handler for a checked path that is the proxy's, or None when it is not.

        May raise ``RouteError`` for a path that is the proxy's but malformed.
        """


class ApiRoutes(Protocol):
    """What the front door hands ``/v1`` paths to (``mnemomd.api``)."""

    def handle(self, request: GatewayRequest, path: bytes, query: bytes) -> Deferred[None]:
        """Answer one management API request; fires when it is answered."""


class ConsoleRoutes(Protocol):
    """What the front door hands ``/console`` paths to (``mnemomd.console``)."""

    def handle(self, request: GatewayRequest, path: bytes) -> int:
        """Answer one request for the console's files; the status sent."""

    def refuse(self, request: GatewayRequest, status: int, message: str) -> None:
        """Answer a console path the front door refused, with the console's headers."""


def is_console_path(path: bytes) -> bool:
    return path == b"/console" or path.startswith(b"/console/")


class Gateway:
    """Routes each request to the proxy, the management API, the console, health or
    metrics."""

    def __init__(self, clock: IReactorTime, max_body_bytes: int,
                 health: HealthState, metrics: GatewayMetrics, proxy: ProxyRoutes | None,
                 api: ApiRoutes | None = None, console: ConsoleRoutes | None = None) -> None:
        self.clock = clock
        self.max_body_bytes = max_body_bytes
        self.health = health
        self.metrics = metrics
        self.proxy = proxy
        #: The management API (``/v1/…``); None where it is not served (scheduler role).
        self.api = api
        #: The web console (``/console/``); served only where the API is.
        self.console = console if api is not None else None
        self.in_flight = InFlight()
        #: Open client connections, so shutdown can close the idle ones.
        self.channels: set[GatewayChannel] = set()

    def close_connections(self) -> int:
        """Close every client connection: kept-alive ones would otherwise linger.

        Until then, a kept-alive connection still gets answers (readiness says 503, and
        each answer closes its connection), so a load balancer's checks see the drain.
        """
        closing = list(self.channels)
        for channel in closing:
            if channel.transport is not None:
                channel.transport.loseConnection()
        return len(closing)

    def handle(self, request: GatewayRequest) -> None:
        path, query = split_target(request.uri)
        try:
            check_path(path)
            if path.startswith(b"/health") or path == b"/metrics":
                self._ops(request, path)
                return
            if self.api is not None and (path == b"/v1" or path.startswith(b"/v1/")):
                self.in_flight.track(self.api.handle(request, path, query))
                return
            if self.console is not None and is_console_path(path):
                status = self.console.handle(request, path)
                self.metrics.requests.labels("console", str(status)).inc()
                return
            handler = self.proxy.route(path, query) if self.proxy is not None else None
        except RouteError as e:
            if self.console is not None and is_console_path(path):
                self.console.refuse(request, e.status, e.message)
                self.metrics.requests.labels("console", str(e.status)).inc()
                return
            self._refuse(request, path, e.status, error_payload(e.message, e.error_type))
            return
        if handler is None:
            self._refuse(request, path, 404, error_payload("Not found", "not_found"))
            return
        self.in_flight.track(handler(request))

    def _refuse(self, request: GatewayRequest, path: bytes, status: int,
                payload: dict[str, Any]) -> None:
        """Answer a request that names no route, and account for it."""
        send_json(request, status, payload)
        self.metrics.requests.labels("none", str(status)).inc()
        log.info("{method} {path} {status}", method=request.method.decode("latin-1"),
                 path=path.decode("latin-1")[:256], status=status,
                 request_id=request.request_id, reason=payload["error"])

    @staticmethod
    def _send_metrics(data: bytes, request: GatewayRequest) -> None:
        if request.channel is None:  # the client left while the workers' files were read
            return
        request.setResponseCode(200)
        request.responseHeaders.setRawHeaders(b"content-type", [METRICS_CONTENT_TYPE])
        request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(data)])
        request.write(data)
        request.finish()

    def _ops(self, request: GatewayRequest, path: bytes) -> None:
        if path == b"/metrics":
            self.in_flight.track(self.metrics.render_later().addCallback(
                self._send_metrics, request))
            return
        if path == b"/health/ready":
            d = self.health.readiness()
            d.addCallback(lambda result: send_json(request, *result))
            self.in_flight.track(d)
            return
        handlers = {b"/health": self.health.legacy, b"/health/live": self.health.liveness,
                    b"/health/startup": self.health.startup}
        handler = handlers.get(path)
        if handler is None:
            self._refuse(request, path, 404, error_payload("Not found", "not_found"))
            return
        send_json(request, *handler())
