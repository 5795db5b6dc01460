"""A fake LLM provider upstream served by ``twisted.web`` over a real socket.

It answers the Anthropic, OpenAI and Gemini routes with the canned responses
of :mod:`tests.fakes.canned`, records every request, and misbehaves on demand
(tiny writes, gated or aborted streams, errors, silence, floods) as selected by
the ``x-fake-scenario`` request header, so the proxy can be tested against the
failure modes of a real upstream.

Run it with ``python -m tests.fakes.upstream --port 0``: it prints one line
``{"port": N}`` and serves until SIGTERM.  In-process, use
:func:`listen_fake_upstream` on any reactor.

Provider routes (POST): ``/v1/messages``, ``/v1/chat/completions``,
``/v1/responses``, ``/v1beta|v1|v1alpha/models/{model}:generateContent`` and
``:streamGenerateContent`` (SSE with ``?alt=sse``, else a JSON array).

Scenarios (``x-fake-scenario``):

* absent / ``ok`` -- the canned JSON, or SSE when the request streams.
* ``split`` / ``split:<ms>`` -- the same bytes in 1..7-byte writes, one per
  reactor turn (or every ``ms`` milliseconds), cutting UTF-8 characters and
  blank-line separators.
* ``gated:<id>`` -- SSE; event 0 at once, then one event per
  ``POST /_fake/release/<id>`` (early releases are queued).
* ``abort_after:<n>`` -- SSE; n events, then a TCP reset (no final chunk).
* ``status:<code>`` -- provider-shaped JSON error, ``retry-after: 7``.
* ``silent`` -- never answers (any path).
* ``flood:<id>:<bytes>`` -- an Anthropic-format SSE stream of exactly
  ``bytes`` bytes, produced only while the transport wants data.
* ``flood_after_thinking:<id>:<bytes>`` -- the same flood after a thinking
  block (about 120 tokens), so an enforce-mode gateway holds the flood.
* ``echo`` -- ``200 application/octet-stream`` with the request body (any path).
* ``realistic_reasoning`` / ``redacted_reasoning`` -- reasoning only when the request
  asks for it, or only in a form nobody can read (see :mod:`tests.fakes.plain`).

Control routes: ``GET|DELETE /_fake/requests``, ``POST /_fake/release/<id>``,
``GET /_fake/streams/<id>``.  Every provider-side response carries
``request-id``/``x-request-id`` and ``x-fake-upstream: yes``.
"""

from __future__ import annotations

import argparse
import base64
import json
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IPushProducer,
    IReactorTCP,
    IReactorTime,
)
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from tests.fakes import canned, plain

try:  # Linux/BSD only: lets an abort wait until the kernel has sent everything.
    import fcntl
    import termios

    _TIOCOUTQ: int | None = termios.TIOCOUTQ
except (ImportError, AttributeError):  # pragma: no cover - non-POSIX platforms
    _TIOCOUTQ = None

__all__ = [
    "SCENARIO_HEADER",
    "FakeUpstreamResource",
    "FakeUpstreamSite",
    "FakeUpstreamState",
    "Scenario",
    "StreamStatus",
    "UnknownScenario",
    "listen_fake_upstream",
    "main",
    "make_site",
    "parse_scenario",
]

SCENARIO_HEADER = b"x-fake-scenario"
CONTROL_PREFIX = "/_fake/"
SERVER_NAME = b"fake-llm-upstream"
ABORT_DRAIN_TIMEOUT = 2.0
FLOOD_BATCH_BYTES = 64 * 1024


# --------------------------------------------------------------------------
# Scenarios.


class UnknownScenario(ValueError):
    """The ``x-fake-scenario`` header names nothing the fake knows."""


@dataclass(frozen=True)
class Scenario:
    """One parsed ``x-fake-scenario`` value.

    ``kind`` is one of ``ok``, ``split``, ``gated``, ``abort_after``,
    ``status``, ``silent``, ``flood`` and ``echo``; the other fields hold the
    arguments of the kinds that take some.
    """

    kind: str = "ok"
    stream_id: str | None = None
    events: int = 0
    status: int = 0
    total_bytes: int = 0
    delay: float = 0.0


def _int_arg(value: str, raw: str, low: int, high: int | None = None) -> int:
    try:
        number = int(value)
    except ValueError:
        raise UnknownScenario(raw) from None
    if number < low or (high is not None and number > high):
        raise UnknownScenario(raw)
    return number


def parse_scenario(value: str | None) -> Scenario:
    """Parse an ``x-fake-scenario`` header value (``None`` means ``ok``).

    Raises :class:`UnknownScenario` for anything unrecognised or malformed.
    """
    raw = (value or "").strip()
    if raw in ("", "ok"):
        return Scenario()
    name, sep, arg = raw.partition(":")
    if name in ("silent", "echo", "refuse_reasoning", *plain.SCENARIOS) and not sep:
        return Scenario(kind=name)
    if name == "split":
        if not sep:
            return Scenario(kind="split")
        try:
            delay_ms = float(arg)
        except ValueError:
            raise UnknownScenario(raw) from None
        if not 0 <= delay_ms <= 1000:
            raise UnknownScenario(raw)
        return Scenario(kind="split", delay=delay_ms / 1000)
    if name == "gated" and arg:
        return Scenario(kind="gated", stream_id=arg)
    if name == "abort_after" and sep:
        return Scenario(kind="abort_after", events=_int_arg(arg, raw, 0))
    if name == "status" and sep:
        return Scenario(kind="status", status=_int_arg(arg, raw, 200, 599))
    if name in ("flood", "flood_after_thinking"):
        stream_id, sep2, total = arg.rpartition(":")
        if stream_id and sep2:
            return Scenario(kind=name, stream_id=stream_id, total_bytes=_int_arg(total, raw, 1))
    raise UnknownScenario(raw)


# --------------------------------------------------------------------------
# State.


@dataclass
class StreamStatus:
    """Progress of one named stream, as ``GET /_fake/streams/<id>`` reports it."""

    stream_id: str
    flood: bool = False
    events_sent: int = 0
    bytes_sent: int = 0
    finished: bool = False
    client_gone: bool = False
    paused: bool = False

    def to_json(self) -> dict[str, Any]:
        """The control-route view; ``paused`` only exists for flood streams."""
        data: dict[str, Any] = {
            "events_sent": self.events_sent,
            "bytes_sent": self.bytes_sent,
            "finished": self.finished,
            "client_gone": self.client_gone,
        }
        if self.flood:
            data["paused"] = self.paused
        return data


class FakeUpstreamState:
    """Everything one fake upstream remembers; owned by its site, never global."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.streams: dict[str, StreamStatus] = {}
        self.gates: dict[str, _GatedStream] = {}
        self.early_releases: dict[str, int] = {}
        self._request_counter = 0

    def next_request_id(self) -> str:
        """A deterministic provider-style request id."""
        self._request_counter += 1
        return f"req_fake_{self._request_counter:06d}"

    def record(self, request: Request, path: str, query: str, body: bytes) -> None:
        """Remember a provider-side request exactly as it arrived."""
        headers = [
            [name.decode("latin-1").lower(), value.decode("latin-1")]
            for name, values in request.requestHeaders.getAllRawHeaders()
            for value in values
        ]
        peer = request.getClientAddress()
        self.requests.append(
            {
                "seq": len(self.requests) + 1,
                "method": request.method.decode("latin-1"),
                "path": path,
                "query": query,
                "headers": headers,
                "body_base64": base64.b64encode(body).decode("ascii"),
                "client_port": getattr(peer, "port", None),
            }
        )


# --------------------------------------------------------------------------
# Response writers.


class _Response:
    """Writes one response body and goes quiet once the client has gone.

    Every timer goes through :meth:`later` so a disconnect cancels it.
    """

    def __init__(
        self, request: Request, reactor: IReactorTime, status: StreamStatus | None = None
    ) -> None:
        self.request = request
        self.reactor = reactor
        self.status = status
        self.gone = False
        self.done = False
        self._call: IDelayedCall | None = None
        request.notifyFinish().addErrback(self._lost)

    def _lost(self, _reason: Failure) -> None:
        self.gone = True
        self.cancel()
        if self.status is not None:
            self.status.client_gone = True
        self.on_lost()

    def on_lost(self) -> None:
        """Hook for subclasses that hold resources beyond a timer."""

    def later(self, delay: float, action: Callable[[], None]) -> None:
        """Run ``action`` after ``delay`` unless the client goes first."""
        self.cancel()
        self._call = self.reactor.callLater(delay, self._run, action)

    def _run(self, action: Callable[[], None]) -> None:
        self._call = None
        if not self.gone and not self.done:
            action()

    def cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    @property
    def active(self) -> bool:
        return not self.gone and not self.done

    def write(self, data: bytes, *, event_end: bool = False) -> bool:
        """Write and count body bytes; False (nothing written) once over."""
        if not self.active:
            return False
        self.request.write(data)
        if self.status is not None:
            self.status.bytes_sent += len(data)
            if event_end:
                self.status.events_sent += 1
        return True

    def finish(self) -> None:
        """End the body normally (Twisted refuses finish() after a disconnect)."""
        if not self.active:
            return
        self.done = True
        self.cancel()
        self.request.finish()
        if self.status is not None:
            self.status.finished = True


def _set_no_delay(request: Request) -> None:
    """Make each write leave as its own TCP segment."""
    setter = getattr(request.transport, "setTcpNoDelay", None)
    if setter is not None:
        setter(True)


def _start_split(response: _Response, pieces: list[tuple[bytes, bool]], delay: float) -> None:
    """Write ``pieces`` one per reactor turn (or per ``delay`` seconds)."""
    _set_no_delay(response.request)
    remaining = iter(pieces)

    def step() -> None:
        try:
            piece, event_end = next(remaining)
        except StopIteration:
            response.finish()
            return
        response.write(piece, event_end=event_end)
        response.later(delay, step)

    step()


def _split_pieces(chunks: list[bytes]) -> list[tuple[bytes, bool]]:
    pieces: list[tuple[bytes, bool]] = []
    for index, chunk in enumerate(chunks):
        parts = canned.tiny_pieces(chunk, seed=index)
        pieces.extend((part, i == len(parts) - 1) for i, part in enumerate(parts))
    return pieces


class _GatedStream(_Response):
    """Sends event 0 at once, then one more event per release."""

    def __init__(
        self,
        request: Request,
        reactor: IReactorTime,
        state: FakeUpstreamState,
        stream_id: str,
        events: list[bytes],
    ) -> None:
        self.state = state
        self.stream_id = stream_id
        self.events = events
        status = StreamStatus(stream_id)
        state.streams[stream_id] = status
        super().__init__(request, reactor, status)

    def start(self) -> None:
        self.state.gates[self.stream_id] = self
        self._send_next()
        for _ in range(self.state.early_releases.pop(self.stream_id, 0)):
            self.release()

    def release(self) -> None:
        self._send_next()

    def _send_next(self) -> None:
        assert self.status is not None
        index = self.status.events_sent
        if index < len(self.events):
            self.write(self.events[index], event_end=True)
        if self.status.events_sent >= len(self.events):
            self.finish()
            self._forget()

    def on_lost(self) -> None:
        self._forget()

    def _forget(self) -> None:
        if self.state.gates.get(self.stream_id) is self:
            del self.state.gates[self.stream_id]


def _unsent_bytes(transport: Any) -> int:
    """Bytes still queued in the transport or the kernel's send queue."""
    pending = len(getattr(transport, "dataBuffer", b"")) - getattr(transport, "offset", 0)
    pending += getattr(transport, "_tempDataLen", 0)
    if pending > 0 or _TIOCOUTQ is None:
        return pending
    try:
        handle = transport.getHandle()
        raw = fcntl.ioctl(handle.fileno(), _TIOCOUTQ, struct.pack("i", 0))
    except (AttributeError, OSError, ValueError):
        return 0
    return int(struct.unpack("i", raw)[0])


class _AbortingStream(_Response):
    """Sends some events, waits until they are on the wire, then resets.

    ``abortConnection`` drops buffered data, so the reset must wait for the
    events to leave (and be acknowledged) or the client would never see them.
    """

    _deadline: float = 0.0

    def start(self, events: list[bytes]) -> None:
        _set_no_delay(self.request)
        if not events:
            # Force the status line and headers out before cutting the line.
            self.request.write(b"")
        for event in events:
            self.write(event, event_end=True)
        self._deadline = self.reactor.seconds() + ABORT_DRAIN_TIMEOUT
        self.later(0, self._abort_when_drained)

    def _abort_when_drained(self) -> None:
        transport = self.request.transport
        if _unsent_bytes(transport) > 0 and self.reactor.seconds() < self._deadline:
            self.later(0.001, self._abort_when_drained)
            return
        self.done = True
        transport.abortConnection()


@implementer(IPushProducer)
class _FloodStream(_Response):
    """Streams a huge canned stream, producing only while the consumer wants data."""

    def __init__(
        self,
        request: Request,
        reactor: IReactorTime,
        state: FakeUpstreamState,
        stream_id: str,
        events: Iterator[bytes],
    ) -> None:
        status = StreamStatus(stream_id, flood=True)
        state.streams[stream_id] = status
        super().__init__(request, reactor, status)
        self.events = events
        self.paused = False
        self.registered = False

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self.registered = True
        self.later(0, self._produce)

    def _produce(self) -> None:
        assert self.status is not None
        written = 0
        while self.active and not self.paused and written < FLOOD_BATCH_BYTES:
            try:
                event = next(self.events)
            except StopIteration:
                self._unregister()
                self.finish()
                return
            self.write(event, event_end=True)
            written += len(event)
        if self.active and not self.paused:
            # Yield to the reactor so the transport can flush (and push back).
            self.later(0, self._produce)

    def pauseProducing(self) -> None:
        self.paused = True
        if self.status is not None:
            self.status.paused = True
        self.cancel()

    def resumeProducing(self) -> None:
        self.paused = False
        if self.status is not None:
            self.status.paused = False
        if self.active and self._call is None:
            self.later(0, self._produce)

    def stopProducing(self) -> None:
        self.cancel()

    def on_lost(self) -> None:
        # The channel is gone and has already dropped (and stopped) its producer.
        self.registered = False

    def _unregister(self) -> None:
        if self.registered:
            self.registered = False
            self.request.unregisterProducer()


# --------------------------------------------------------------------------
# The resource.


def _json(request: Request, code: int, obj: Any) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return canned.encode_json(obj)


def _fake_error(request: Request, code: int, message: str) -> bytes:
    return _json(request, code, {"error": {"type": "fake_upstream_error", "message": message}})


class FakeUpstreamResource(Resource):
    """Routes every path itself: provider routes plus ``/_fake/*`` controls."""

    isLeaf = True

    def __init__(self, state: FakeUpstreamState, reactor: IReactorTime) -> None:
        super().__init__()
        self.state = state
        self.reactor = reactor

    def render(self, request: Request) -> bytes | int:
        path_bytes, _, query_bytes = request.uri.partition(b"?")
        path = path_bytes.decode("latin-1")
        query = query_bytes.decode("latin-1")
        method = request.method.decode("latin-1").upper()
        request.setHeader(b"server", SERVER_NAME)
        if path.startswith(CONTROL_PREFIX):
            return self._control(request, method, unquote(path[len(CONTROL_PREFIX) :]))
        request.content.seek(0)
        body = request.content.read()
        self.state.record(request, path, query, body)
        return self._provider(request, method, path, query, body)

    # -- control routes ----------------------------------------------------

    def _control(self, request: Request, method: str, rest: str) -> bytes:
        if rest == "requests":
            if method == "GET":
                return _json(request, 200, self.state.requests)
            if method == "DELETE":
                cleared = len(self.state.requests)
                self.state.requests.clear()
                return _json(request, 200, {"cleared": cleared})
            return _fake_error(request, 405, f"{method} not allowed on /_fake/requests")
        kind, _, stream_id = rest.partition("/")
        if kind == "release" and stream_id:
            if method != "POST":
                return _fake_error(request, 405, "use POST to release a gated stream")
            return self._release(request, stream_id)
        if kind == "streams" and stream_id:
            if method != "GET":
                return _fake_error(request, 405, "use GET to read a stream's status")
            status = self.state.streams.get(stream_id)
            if status is None:
                return _fake_error(request, 404, f"no stream {stream_id!r} yet")
            return _json(request, 200, status.to_json())
        return _fake_error(request, 404, f"unknown control route /_fake/{rest}")

    def _release(self, request: Request, stream_id: str) -> bytes:
        gate = self.state.gates.get(stream_id)
        if gate is not None:
            gate.release()
            assert gate.status is not None
            return _json(request, 200, {"released": True, "pending": 0, **gate.status.to_json()})
        status = self.state.streams.get(stream_id)
        if status is not None and (status.finished or status.client_gone):
            return _fake_error(request, 409, f"gated stream {stream_id!r} is already over")
        pending = self.state.early_releases.get(stream_id, 0) + 1
        self.state.early_releases[stream_id] = pending
        return _json(request, 202, {"released": False, "pending": pending})

    # -- provider routes ---------------------------------------------------

    def _provider(
        self, request: Request, method: str, path: str, query: str, body: bytes
    ) -> bytes | int:
        header = request.getHeader(SCENARIO_HEADER)
        try:
            scenario = parse_scenario(
                header.decode("latin-1") if isinstance(header, bytes) else header
            )
        except UnknownScenario as exc:
            return _fake_error(request, 400, f"unknown x-fake-scenario {str(exc)!r}")
        self._identify(request)
        if scenario.kind == "echo":
            request.setHeader(b"content-type", b"application/octet-stream")
            return body
        if scenario.kind == "refuse_reasoning" and b'"reasoning"' in body:
            # What OpenAI answers organisations not verified for reasoning summaries.
            request.setResponseCode(400)
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"error": {
                "message": "Your organization must be verified to generate reasoning "
                           "summaries.", "type": "invalid_request_error",
                "param": "reasoning.summary", "code": "unsupported_value"}}).encode()
        if scenario.kind == "silent":
            # Never answer; just swallow the eventual disconnect.
            request.notifyFinish().addErrback(lambda _reason: None)
            return NOT_DONE_YET
        route = canned.match_route(path)
        if route is None:
            return _fake_error(request, 404, f"no provider route {path}")
        api = route[0]
        if method != "POST":
            return _fake_error(request, 405, f"{method} not allowed on {path}")
        if scenario.kind == "status":
            request.setResponseCode(scenario.status)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"retry-after", b"7")
            return canned.error_body(api, scenario.status)
        try:
            req = canned.parse_request(path, query, body)
        except canned.InvalidRequest as exc:
            request.setResponseCode(400)
            request.setHeader(b"content-type", b"application/json")
            return canned.error_body(api, 400, str(exc))
        assert req is not None
        if scenario.kind in plain.SCENARIOS:
            answer = plain.answer(req, body, scenario.kind)
            if answer is not None:
                return self._plain(request, req, answer)
        return self._respond(request, scenario, req)

    def _plain(self, request: Request, req: canned.CannedRequest,
               answer: bytes | list[bytes]) -> bytes | int:
        if isinstance(answer, bytes):
            request.setHeader(b"content-type", canned.content_type(req).encode("ascii"))
            return answer
        self._sse_headers(request, req)
        response = _Response(request, self.reactor)
        for event in answer:
            response.write(event, event_end=True)
        response.finish()
        return NOT_DONE_YET

    def _identify(self, request: Request) -> None:
        request_id = self.state.next_request_id().encode("ascii")
        request.setHeader(b"request-id", request_id)
        request.setHeader(b"x-request-id", request_id)
        request.setHeader(b"x-fake-upstream", b"yes")

    def _respond(
        self, request: Request, scenario: Scenario, req: canned.CannedRequest
    ) -> bytes | int:
        kind = scenario.kind
        if kind in ("flood", "flood_after_thinking"):
            assert scenario.stream_id is not None
            self._sse_headers(
                request, canned.CannedRequest(api=canned.Api.ANTHROPIC_MESSAGES, stream=True)
            )
            events = (canned.flood_events if kind == "flood"
                      else canned.flood_after_thinking_events)
            flood = _FloodStream(
                request,
                self.reactor,
                self.state,
                scenario.stream_id,
                events(req.model, scenario.total_bytes),
            )
            flood.start()
            return NOT_DONE_YET
        if kind in ("gated", "abort_after") or canned.is_sse(req):
            events = canned.stream_events(req)
            self._sse_headers(request, req)
            if kind == "gated":
                assert scenario.stream_id is not None
                _GatedStream(request, self.reactor, self.state, scenario.stream_id, events).start()
            elif kind == "abort_after":
                _AbortingStream(request, self.reactor).start(events[: scenario.events])
            elif kind == "split":
                _start_split(
                    _Response(request, self.reactor), _split_pieces(events), scenario.delay
                )
            else:
                response = _Response(request, self.reactor)
                for event in events:
                    response.write(event, event_end=True)
                response.finish()
            return NOT_DONE_YET
        body = canned.response_body(req)
        request.setHeader(b"content-type", canned.content_type(req).encode("ascii"))
        if kind == "split":
            request.setHeader(b"content-length", str(len(body)).encode("ascii"))
            _start_split(_Response(request, self.reactor), _split_pieces([body]), scenario.delay)
            return NOT_DONE_YET
        return body

    def _sse_headers(self, request: Request, req: canned.CannedRequest) -> None:
        sse_req = canned.CannedRequest(api=req.api, stream=True)
        request.setHeader(b"content-type", canned.content_type(sse_req).encode("ascii"))
        request.setHeader(b"cache-control", b"no-cache")
        _set_no_delay(request)


# --------------------------------------------------------------------------
# Site and entry points.


class FakeUpstreamSite(Site):
    """A quiet Site that owns the fake's state (``site.state``)."""

    noisy = False

    def __init__(self, reactor: Any) -> None:
        self.state = FakeUpstreamState()
        # Bodies are recorded and echoed as sent; a provider does not parse them as forms.
        super().__init__(FakeUpstreamResource(self.state, reactor), reactor=reactor,
                         parsePOSTFormSubmission=False)

    def log(self, request: Request) -> None:
        """No access log: it would only be noise in test output."""


def make_site(reactor: Any = None) -> FakeUpstreamSite:
    """Build a fresh site (with fresh state) bound to ``reactor``.

    Without a reactor the global one is used.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    return FakeUpstreamSite(reactor)


def listen_fake_upstream(
    reactor: IReactorTCP, port: int = 0, host: str = "127.0.0.1"
) -> IListeningPort:
    """Start serving on ``reactor``; return the listening port.

    ``listening.getHost().port`` is the bound port and ``listening.factory``
    the :class:`FakeUpstreamSite` (its ``state`` holds the recorded requests).
    """
    return reactor.listenTCP(port, make_site(reactor), interface=host)


def _start_logging() -> None:
    """Send Twisted warnings and errors to stderr, keeping stdout for the port line."""
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr),
        [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)],
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT after printing ``{"port": N}`` on stdout."""
    parser = argparse.ArgumentParser(description="Fake LLM provider upstream for tests.")
    parser.add_argument("--port", type=int, default=0, help="TCP port (0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind")
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    _start_logging()
    listening = listen_fake_upstream(reactor, args.port, args.host)
    sys.stdout.write(json.dumps({"port": listening.getHost().port}) + "\n")
    sys.stdout.flush()
    reactor.run()  # Twisted's own SIGTERM/SIGINT handlers stop the reactor.
    return 0


if __name__ == "__main__":
    sys.exit(main())
