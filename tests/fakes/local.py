"""Scripted HTTP servers on 127.0.0.1 in the test's own reactor, and a port nothing uses.

``LocalServer`` is the shared part of the in-process fakes: it listens on an ephemeral
port, passes every POST to ``handle``, lets a test wait for the next request with
``arrived()``, and ``stop()`` drops every connection and waits until they are gone.
A subclass decides what to record (``record``) and how to answer; ``Receiver`` is the one
receiver of POSTs (webhooks, heartbeats) every in-reactor test uses.
"""

from __future__ import annotations

import socket
from typing import Any, Self

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Resource(Resource):
    isLeaf = True

    def __init__(self, server: LocalServer) -> None:
        super().__init__()
        self.server = server

    def render_POST(self, request: Request) -> bytes | int:  # noqa: N802
        return self.server.handle(request)


class LocalServer:
    """An HTTP server on 127.0.0.1:<ephemeral> answering every POST with ``handle``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self._arrivals: list[Deferred[None]] = []
        self._factory = WrappingFactory(Site(_Resource(self)))
        self._port: Any = None

    def start(self) -> Self:
        self._port = reactor.listenTCP(0, self._factory, interface="127.0.0.1")
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port.getHost().port}"

    def arrived(self) -> Deferred[None]:
        """Fires when the next request has been received."""
        d: Deferred[None] = Deferred()
        self._arrivals.append(d)
        return d

    def record(self, entry: dict[str, Any]) -> None:
        """Keep ``entry`` in ``requests`` and fire every pending ``arrived()``."""
        self.requests.append(entry)
        arrivals, self._arrivals = self._arrivals, []
        for d in arrivals:
            d.callback(None)

    def handle(self, request: Request) -> bytes | int:
        """Answer one POST: a body, or ``NOT_DONE_YET``."""
        raise NotImplementedError

    @inlineCallbacks
    def stop(self) -> Any:
        """Stop listening and drop every connection, waiting until they are gone."""
        if self._port is not None:
            yield self._port.stopListening()
        for protocol in list(self._factory.protocols):
            protocol.transport.abortConnection()
        for _ in range(200):
            if not self._factory.protocols:
                break
            yield deferLater(reactor, 0.005, lambda: None)


class Receiver(LocalServer):
    """A receiver of POSTs (webhooks, heartbeats) on 127.0.0.1, listening at once.

    Each request is recorded as ``method`` (bytes), ``path``, ``headers`` (lower-case
    name: first value), ``header_values`` (name: every value), ``raw`` (the body) and the
    ``status`` answered. It answers the next of ``statuses``, else ``status``, with
    ``answer``; with ``hang`` it never answers (``hanging`` holds a Deferred per hung
    request that fires when its connection goes), with ``stall_body`` it sends the head
    and a little of the body and then nothing.
    """

    def __init__(self, path: str = "/", status: int = 200,
                 answer: bytes = b'{"accepted": true}') -> None:
        super().__init__()
        self.path = path
        self.status = status
        self.statuses: list[int] = []
        self.answer = answer
        self.hang = False
        self.stall_body = False
        self.hanging: list[Deferred[None]] = []
        self.start()

    @property
    def url(self) -> str:
        return super().url + self.path

    def handle(self, request: Request) -> bytes | int:
        status = self.statuses.pop(0) if self.statuses else self.status
        values: dict[str, list[str]] = {
            name.decode().lower(): [v.decode() for v in vs]
            for name, vs in request.requestHeaders.getAllRawHeaders()}
        entry = {"method": request.method, "path": request.path.decode(),
                 "headers": {name: vs[0] for name, vs in values.items()},
                 "header_values": values, "raw": request.content.read(), "status": status}
        if self.hang or self.stall_body:
            self.hanging.append(request.notifyFinish().addErrback(lambda _: None))
        request.setResponseCode(status)
        if self.stall_body:  # the head and a little of the body, then nothing
            request.setHeader(b"content-length", b"1000")
            request.write(b"x" * 10)
        # Last: record() may resume a waiting test, which should find the answer begun.
        self.record(entry)
        if self.hang or self.stall_body:
            return NOT_DONE_YET
        return self.answer
