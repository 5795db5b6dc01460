"""The test's HTTP client: Twisted's own ``Agent`` on the memory reactor.

A real HTTP/1.1 client parses what the front door sends (status line, headers, chunked
framing), so a test reads what an SDK would read. Each body chunk is kept as it arrives:
a test that holds the upstream can see exactly which chunks got through.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from tests.harness.network import HarnessReactor


@implementer(IBodyProducer)
class _Body:
    """A request body already in memory, its length known."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:  # noqa: N802
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:  # noqa: N802
        pass

    def resumeProducing(self) -> None:  # noqa: N802
        pass

    def stopProducing(self) -> None:  # noqa: N802
        pass


@dataclass
class Exchange:
    """One request and what has come back of it so far.

    ``status`` stays None until the response head arrives; ``complete`` says the body
    ended cleanly; ``failure`` is set when the response broke off or never came.
    """

    method: bytes
    path: bytes
    status: int | None = None
    headers: Headers = field(default_factory=Headers)
    chunks: list[bytes] = field(default_factory=list)
    complete: bool = False
    failure: Failure | None = None

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def answered(self) -> bool:
        """The head has arrived or the request failed."""
        return self.status is not None or self.failure is not None

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    def json(self) -> Any:
        assert self.complete, f"{self.method!r} {self.path!r}: the body is not complete"
        return json.loads(self.body)

    def _response(self, response: IResponse) -> None:
        self.status = response.code
        self.headers = response.headers
        response.deliverBody(_Collector(self))

    def _failed(self, failure: Failure) -> None:
        self.failure = failure


class _Collector(Protocol):
    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self._exchange.chunks.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: N802,B008
        if reason.check(ResponseDone, PotentialDataLoss):
            self._exchange.complete = True
        else:
            self._exchange.failure = reason


class HttpClient:
    """Issues requests to ``base_url`` over the memory network, one connection each."""

    def __init__(self, reactor: HarnessReactor, base_url: str) -> None:
        self._base = base_url.encode("ascii")
        self._agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))

    def request(self, method: bytes | str, path: bytes | str,
                headers: Mapping[str, str] | None = None,
                body: bytes | None = None) -> Exchange:
        method = method.encode("ascii") if isinstance(method, str) else method
        path = path.encode("ascii") if isinstance(path, str) else path
        exchange = Exchange(method, path)
        request_headers = Headers({name: [value] for name, value in (headers or {}).items()})
        d = self._agent.request(method, self._base + path, request_headers,
                                _Body(body) if body is not None else None)
        d.addCallbacks(exchange._response, exchange._failed)
        return exchange


class RawClient(Protocol):
    """A client that writes exactly the bytes a test gives it, when it gives them: a slow
    client, a half-sent request, a connection that never sends at all."""

    def __init__(self) -> None:
        self.received = b""
        self.connected = False
        self.closed = False

    def connectionMade(self) -> None:  # noqa: N802
        self.connected = True

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:  # noqa: N802
        self.closed = True

    def send(self, data: bytes) -> None:
        assert self.transport is not None and not self.closed
        self.transport.write(data)

    def close(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()

    @property
    def status(self) -> int | None:
        """The status of the first response received, if one has arrived."""
        if not self.received.startswith(b"HTTP/1.1 "):
            return None
        return int(self.received[9:12])

    def json(self) -> Any:
        """The body of the (single) response received."""
        return json.loads(self.received.partition(b"\r\n\r\n")[2])

