"""The one outbound HTTP layer: every client of the daemon builds on this module.

The proxy's upstream client, the analysis backends, the license check, the heartbeat and
webhook delivery each get their own :class:`HTTPClient` (their own pool, so a slow webhook
receiver can never take a connection slot from an LLM call), but all of them are made
here, the same way:

- one connection pool class (:class:`QuietConnectionPool`), persistent and without a
  log line per connection;
- one place that turns a URL into a connection (:class:`Endpoints`): TCP with a connect
  timeout, TLS verified with Twisted's browser-like policy (:func:`tls_policy`). An egress
  proxy, when one is needed, is another ``IAgentEndpointFactory`` handed to the client;
- one deadline for a whole exchange, connect to last byte (``HTTPClient.exchange``);
- one bounded body reader (:mod:`mnemomd.http.body`) and one failure-to-reason mapping
  (:mod:`mnemomd.http.errors`).

Written on ``twisted.web.client`` rather than treq: treq's ``collect()`` has no byte cap
and its request helpers add cookies, redirects and form encoding the daemon never uses,
while the parts that matter here (the pool, the reuse rule of the proxy, the capped and
cancellable body read, the injected clock for deadlines) would have to be ours anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IConsumer,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from mnemomd.http.body import discard_body, read_body
from mnemomd.http.errors import OutboundError, as_outbound


class BytesProducer:
    """A request body already in memory, written in one go with its length known."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:  # noqa: N802
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:  # noqa: N802
        pass

    def resumeProducing(self) -> None:  # noqa: N802
        pass

    def stopProducing(self) -> None:  # noqa: N802
        pass


# -- connections ----------------------------------------------------------------------


def tls_policy() -> IPolicyForHTTPS:
    """How every outbound TLS connection is checked: the system's trust store and the
    server's host name, as a browser would. Changing it here changes it for every client."""
    return BrowserLikePolicyForHTTPS()


@implementer(IAgentEndpointFactory)
class Endpoints:
    """Where each outbound connection goes: TCP to the URL's host, TLS for ``https``.

    The one place that turns a URL into a connection, so the TLS policy and the connect
    timeout are the same for every client. An egress proxy would be another endpoint
    factory in its place (connecting to the proxy and tunnelling), nothing else changes.
    """

    def __init__(self, reactor: IReactorTCP, connect_timeout: float,
                 tls: IPolicyForHTTPS | None = None) -> None:
        self._reactor = reactor
        self._connect_timeout = connect_timeout
        self._tls = tls if tls is not None else tls_policy()

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:  # noqa: N802
        host = uri.host.decode("ascii")  # a non-ASCII host is a bad URL: the caller says so
        endpoint = HostnameEndpoint(self._reactor, host, uri.port,
                                    timeout=self._connect_timeout)
        if uri.scheme == b"http":
            return endpoint
        if uri.scheme == b"https":
            return wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), endpoint)
        raise SchemeNotSupported(f"unsupported scheme: {uri.scheme!r}")


class _QuietClientFactory(_HTTP11ClientFactory):
    noisy = False  # no "Starting factory" log line per outbound connection


class PooledConnection(Protocol):
    """What a pool hands the agent: a connection that can carry a request."""

    def request(self, request: object) -> Deferred[IResponse]: ...


#: Wraps a kept-alive connection taken from the pool for reuse, given a way to open a
#: fresh one: the hook for a client's own retry rule (the proxy's replay rule).
ReuseWrapper = Callable[[HTTP11ClientProtocol, Callable[[], Deferred[HTTP11ClientProtocol]]],
                        PooledConnection]


class QuietConnectionPool(HTTPConnectionPool):
    """The one connection pool: persistent, sized per client, quiet in the logs.

    ``on_reuse`` replaces Twisted's own retry of reused connections (idempotent requests
    without a body only) with a client's rule; without it Twisted's rule applies.
    """

    _factory = _QuietClientFactory

    def __init__(self, reactor: IReactorTime, max_per_host: int, idle_seconds: float,
                 on_reuse: ReuseWrapper | None = None) -> None:
        super().__init__(reactor, persistent=True)
        self.maxPersistentPerHost = max_per_host
        self.cachedConnectionTimeout = idle_seconds
        self._on_reuse = on_reuse

    def getConnection(self, key: Hashable,  # noqa: N802
                      endpoint: IStreamClientEndpoint) -> Deferred[PooledConnection]:
        if self._on_reuse is None:
            return super().getConnection(key, endpoint)
        connections = self._connections.get(key)
        while connections:
            connection = connections.pop(0)
            self._timeouts.pop(connection).cancel()
            if connection.state == "QUIESCENT":
                return succeed(self._on_reuse(
                    connection, lambda: self._newConnection(key, endpoint)))
        return self._newConnection(key, endpoint)


# -- clients --------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientSettings:
    """How one client uses the network: its pool's size and keep-alive, its connect timeout."""

    max_per_host: int = 2
    idle_seconds: float = 30.0
    connect_timeout: float = 10.0


@dataclass(frozen=True)
class Reply:
    """A finished exchange: the status and the body (empty when it was discarded)."""

    code: int
    body: bytes


def is_success(code: int) -> bool:
    """A 2xx status."""
    return 200 <= code < 300


def _timed_out(result: object, timeout: float) -> None:
    # Cancelling the agent surfaces as ResponseNeverReceived; name the real cause.
    raise OutboundError("timeout", "TimeoutError")


class HTTPClient:
    """A pool and an agent, and the two ways the daemon talks through them.

    :meth:`request` hands back the response as soon as its head arrives (the proxy streams
    the body itself); :meth:`exchange` does a whole call under one deadline and reads the
    body with a cap. ``reactor`` makes connections; ``clock`` measures deadlines and body
    stalls (a ``task.Clock`` in tests).
    """

    def __init__(self, reactor: IReactorTCP, clock: IReactorTime | None = None,
                 settings: ClientSettings = ClientSettings(), *,
                 endpoints: IAgentEndpointFactory | None = None,
                 on_reuse: ReuseWrapper | None = None) -> None:
        self._clock: IReactorTime = clock if clock is not None else reactor
        self.settings = settings
        self.pool = QuietConnectionPool(reactor, settings.max_per_host,
                                        settings.idle_seconds, on_reuse)
        if endpoints is None:
            endpoints = Endpoints(reactor, settings.connect_timeout)
        self.agent = Agent.usingEndpointFactory(reactor, endpoints, pool=self.pool)

    def request(self, method: bytes, url: str | bytes, headers: Headers,
                body: bytes | None) -> Deferred[IResponse]:
        """Send one request; fires with the response once its head has arrived.

        A URL that cannot even be sent fails with ``OutboundError("bad_url")``; network
        failures are left as Twisted reports them (see :func:`as_outbound`).
        """
        try:
            raw_url = url.encode("ascii") if isinstance(url, str) else url
            producer = BytesProducer(body) if body is not None else None
            return self.agent.request(method, raw_url, headers, producer)
        except Exception as error:
            return fail(OutboundError("bad_url", type(error).__name__))

    def exchange(self, method: bytes, url: str | bytes, headers: Headers, body: bytes | None,
                 *, timeout: float, max_body: int,
                 keep_body: bool | Callable[[int], bool] = True,
                 stall_timeout: float | None = None) -> Deferred[Reply]:
        """One whole call: the request, then the body read, within ``timeout`` seconds.

        The body is kept (at most ``max_body`` bytes) when ``keep_body`` (or
        ``keep_body(status)``) says so, and otherwise read and dropped. Every failure is
        an :class:`OutboundError`; a status of any kind is a :class:`Reply`, for the caller
        to judge. Past the deadline the request is cancelled, which closes its connection.
        """
        d = self.request(method, url, headers, body)
        d.addCallback(self._read, max_body, keep_body, stall_timeout)
        d.addTimeout(timeout, self._clock, onTimeoutCancel=_timed_out)
        d.addErrback(as_outbound)
        return d

    def _read(self, response: IResponse, max_body: int,
              keep_body: bool | Callable[[int], bool],
              stall_timeout: float | None) -> Deferred[Reply]:
        code = response.code
        if keep_body(code) if callable(keep_body) else keep_body:
            return read_body(response, max_body, self._clock, stall_timeout).addCallback(
                lambda content: Reply(code, content))
        return discard_body(response, max_body, self._clock, stall_timeout).addCallback(
            lambda _: Reply(code, b""))

    def close(self) -> Deferred[None]:
        """Close the pooled connections (at shutdown, and in tests)."""
        return self.pool.closeCachedConnections()

