"""A minimal asyncio upstream for the benchmark: canned JSON and timestamped SSE ticks.

The project's Twisted fake (``tests/fakes``) is built for fidelity: it records every
request, parses every body and can misbehave in many ways, which makes it too slow to
stand in for a provider when a proxy's throughput is measured (``bench/run.py`` shows
how slow). This upstream does the least an HTTP/1.1 server can do, so its own cost stays
small and constant and what a proxy adds shows:

* ``x-fake-scenario: ticks:<n>:<ms>`` answers an OpenAI-chat SSE stream (chunked) of
  ``n`` events, one every ``ms`` milliseconds on an absolute schedule. Each event's text
  is ``tick <seq> <send_ns>``, ``send_ns`` being ``time.monotonic_ns()`` taken just
  before the write: CLOCK_MONOTONIC is one clock for the whole machine, so a client on
  the same host can subtract it from its own arrival time.
* anything else answers the canned Anthropic Messages JSON of ``tests/fakes/canned.py``.

It also runs the benchmark's stream client for ``bench/run.py`` (``POST /_bench/streams``,
see :func:`bench.streams.measure_via_mock`), so that sending and receiving share one
event loop and the arrival times carry no inter-process scheduling noise.

Run it with ``python -m bench.mockup --port 0``: it prints ``{"port": N}`` and serves
until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time

from bench import streams
from tests.fakes import canned

TICK_SCENARIO = "ticks:"
MAX_TICK_EVENTS = 100_000
MAX_HEAD_BYTES = 64 * 1024

SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"cache-control: no-cache\r\nx-request-id: req_bench\r\n"
            b"transfer-encoding: chunked\r\n\r\n")
#: One OpenAI chat-completion chunk; ``%d`` twice: sequence number and send time (ns).
TICK_EVENT = (b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk",'
              b'"created":1700000000,"model":"gpt-bench","choices":[{"index":0,'
              b'"delta":{"content":"tick %d %d "},"logprobs":null,"finish_reason":null}]}'
              b"\n\n")
DONE_EVENT = b"data: [DONE]\n\n"


def anthropic_json() -> bytes:
    """The canned non-streaming Anthropic Messages answer (the same bytes as the fake's)."""
    request = canned.CannedRequest(api=canned.Api.ANTHROPIC_MESSAGES, model="claude-bench")
    return canned.response_body(request)


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _simple_response(status: str, body: bytes, content_type: bytes) -> bytes:
    return (b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n"
            b"request-id: req_bench\r\n\r\n%s"
            % (status.encode(), content_type, len(body), body))


def parse_ticks(value: str) -> tuple[int, float] | None:
    """``ticks:<n>:<ms>`` as ``(n, seconds)``, or None when it is not a valid ticks value."""
    if not value.startswith(TICK_SCENARIO):
        return None
    count, _, interval = value[len(TICK_SCENARIO):].partition(":")
    try:
        n, ms = int(count), float(interval)
    except ValueError:
        return None
    if not (1 <= n <= MAX_TICK_EVENTS and 0 <= ms <= 10_000):
        return None
    return n, ms / 1000


class MockConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: requests answered in order, streams on a timer."""

    def __init__(self, json_response: bytes) -> None:
        self._json_response = json_response
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._streaming = False
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._serve()

    def _serve(self) -> None:
        assert self._transport is not None
        while not self._streaming and not self._closed:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    self._transport.close()
                return
            head_lines = self._buffer[:end].decode("latin-1").split("\r\n")
            target = head_lines[0].split(" ")[1] if " " in head_lines[0] else ""
            headers: dict[str, str] = {}
            for line in head_lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "transfer-encoding" in headers:
                # Proxies send request bodies with a Content-Length; nothing else is needed.
                self._transport.write(_simple_response(
                    "411 Length Required", b'{"error":"chunked request bodies unsupported"}',
                    b"application/json"))
                self._transport.close()
                return
            total = end + 4 + int(headers.get("content-length", "0") or 0)
            if len(self._buffer) < total:
                return
            body, self._buffer = self._buffer[end + 4:total], self._buffer[total:]
            if target == streams.MEASURE_PATH:
                self._start_measurement(body)
                return
            ticks = parse_ticks(headers.get("x-fake-scenario", ""))
            if ticks is None:
                self._transport.write(self._json_response)
            else:
                self._start_ticks(*ticks)

    def _start_measurement(self, body: bytes) -> None:
        """Run a stream measurement in this loop; answer with its result when it is over."""
        params = json.loads(body)
        self._streaming = True

        async def measure() -> None:
            run = await streams.measure_streams(
                "127.0.0.1", int(params["port"]), str(params["path"]), int(params["streams"]),
                int(params["events"]), float(params["interval_ms"]),
                timeout=int(params["events"]) * float(params["interval_ms"]) / 1000 + 30)
            if self._transport is not None and not self._closed:
                self._transport.write(_simple_response("200 OK", streams.run_json(run),
                                                       b"application/json"))
            self._streaming = False
            self._serve()

        self._measurement = asyncio.ensure_future(measure())

    def _start_ticks(self, count: int, interval: float) -> None:
        assert self._transport is not None
        transport = self._transport
        loop = asyncio.get_running_loop()
        self._streaming = True
        transport.write(SSE_HEAD)
        start = loop.time()

        def send(seq: int) -> None:
            if self._closed:
                return
            data = _chunk(TICK_EVENT % (seq, time.monotonic_ns()))
            if seq + 1 < count:
                transport.write(data)
                loop.call_at(start + (seq + 1) * interval, send, seq + 1)
                return
            transport.write(data + _chunk(DONE_EVENT) + b"0\r\n\r\n")
            self._streaming = False
            self._serve()

        send(0)


async def serve(host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT, after printing the bound port as one JSON line."""
    loop = asyncio.get_running_loop()
    json_response = _simple_response("200 OK", anthropic_json(), b"application/json")
    server = await loop.create_server(lambda: MockConnection(json_response), host, port,
                                      backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    sys.stdout.write(json.dumps({"port": bound}) + "\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Minimal mock LLM upstream for bench/run.py")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
