"""Measure how late each streamed event arrives, through a proxy or directly.

Each event the mock upstream sends carries its send time (``time.monotonic_ns()``,
one clock for the whole machine). The client notes the arrival time of every read and
records ``arrival - send`` per event: measured directly, that is the cost of the upstream,
the kernel and this client; measured through a proxy, the difference is what the proxy
adds. A raw asyncio client (no HTTP library) keeps the client's own cost small and the
same for every path.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from dataclasses import asdict, dataclass, field

#: The mock upstream's control route that runs a measurement from inside its loop.
MEASURE_PATH = "/_bench/streams"
TICK = re.compile(rb"tick (\d+) (\d+) ")


@dataclass
class StreamRun:
    """Per-event delays of one batch of concurrent streams."""

    streams: int
    events_per_stream: int
    interval_ms: float
    ramp_seconds: float = 0.0
    #: Events sent once every stream had been started (all of them with one stream).
    delays_us: list[float] = field(default_factory=list)
    #: Events sent while streams were still being opened: counted apart.
    ramp_delays_us: list[float] = field(default_factory=list)
    failed_streams: int = 0
    errors: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def events_expected(self) -> int:
        return self.streams * self.events_per_stream


class _StreamClient(asyncio.Protocol):
    """Reads one streamed response and stamps every tick event with its arrival time.

    Each upstream event travels as one chunk, and the regular expression wants the
    event's closing space, so chunk framing never yields a wrong number: an event cut by
    a chunk boundary would go missing, and the run would say so (events are counted).
    """

    def __init__(self, request: bytes, run: StreamRun, steady_from_ns: int) -> None:
        self._request = request
        self._run = run
        self._steady_from_ns = steady_from_ns
        self._buffer = b""
        self._head_done = False
        self._chunked = False
        self._seen_done = False
        self.status = 0
        self.events = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"closed early: {exc or 'EOF'}"))

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        buffer = self._buffer + data
        if not self._head_done:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self._buffer = buffer
                return
            head = buffer[:end].decode("latin-1").lower()
            self.status = int(head.split(" ", 2)[1])
            self._chunked = "transfer-encoding: chunked" in head
            buffer = buffer[end + 4:]
            self._head_done = True
        cut = buffer.rfind(b"\n\n") + 2
        if cut > 1:
            for match in TICK.finditer(buffer, 0, cut):
                sent = int(match.group(2))
                delays = (self._run.delays_us if sent >= self._steady_from_ns
                          else self._run.ramp_delays_us)
                delays.append((now - sent) / 1000)
                self.events += 1
            if b"[DONE]" in buffer[:cut]:
                self._seen_done = True
            buffer = buffer[cut:]
        self._buffer = buffer
        if self._seen_done and (not self._chunked or buffer.endswith(b"0\r\n\r\n")):
            if not self.done.done():
                self.done.set_result(None)
            assert self._transport is not None
            self._transport.close()


def _request(host: str, port: int, path: str, events: int, interval_ms: float) -> bytes:
    body = json.dumps({"model": "gpt-bench", "stream": True,
                       "messages": [{"role": "user", "content": "count for me"}]}).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "content-type: application/json\r\nauthorization: Bearer sk-bench-stream\r\n"
            f"x-fake-scenario: ticks:{events}:{interval_ms:g}\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


async def _one(loop: asyncio.AbstractEventLoop, host: str, port: int, request: bytes,
               run: StreamRun, steady_from_ns: int, start_delay: float) -> None:
    await asyncio.sleep(start_delay)
    transport, client = await loop.create_connection(
        lambda: _StreamClient(request, run, steady_from_ns), host, port)
    try:
        await client.done
    finally:
        transport.close()
    if client.status != 200:
        raise RuntimeError(f"status {client.status}")
    if client.events != run.events_per_stream:
        raise RuntimeError(f"{client.events} of {run.events_per_stream} events")


async def measure_streams(host: str, port: int, path: str, streams: int, events: int,
                          interval_ms: float, timeout: float,
                          ramp_seconds: float = 1.0) -> StreamRun:
    """Run ``streams`` concurrent streams, their starts spread over ``ramp_seconds``.

    Spreading the starts keeps the streams out of step, as real ones are, instead of
    every stream's event landing on the proxy in the same instant; and opening hundreds
    of streams in one instant would measure the cost of starting calls, not of
    forwarding events. So delays of events sent during the ramp are kept apart.
    """
    loop = asyncio.get_running_loop()
    ramp = min(ramp_seconds, events * interval_ms / 2000) if streams > 1 else 0.0
    run = StreamRun(streams, events, interval_ms, ramp_seconds=ramp)
    request = _request(host, port, path, events, interval_ms)
    spread = ramp / streams
    started = time.monotonic()
    steady_from_ns = time.monotonic_ns() + int(ramp * 1e9)
    tasks = [asyncio.ensure_future(_one(loop, host, port, request, run, steady_from_ns,
                                        i * spread))
             for i in range(streams)]
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    run.wall_seconds = time.monotonic() - started
    for task in done:
        if task.exception() is not None:
            run.failed_streams += 1
            run.errors.append(str(task.exception())[:200])
    run.failed_streams += len(pending)
    if pending:
        run.errors.append(f"{len(pending)} stream(s) still open after {timeout:g} s")
    return run


def measure_via_mock(mock_port: int, target_port: int, path: str, streams: int,
                     events: int, interval_ms: float) -> StreamRun:
    """Ask the mock upstream (``bench/mockup.py``) to run :func:`measure_streams`.

    The client runs inside the mock's own event loop: in a separate process on the same
    core, the scheduler's hand-offs between the two added milliseconds of noise to
    every arrival time, through a proxy or not.
    """
    timeout = events * interval_ms / 1000 + 60
    body = json.dumps({"port": target_port, "path": path, "streams": streams,
                       "events": events, "interval_ms": interval_ms}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{mock_port}{MEASURE_PATH}", data=body,
                                     method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        data = json.loads(response.read())
    return StreamRun(**data)


def run_json(run: StreamRun) -> bytes:
    """A :class:`StreamRun` as the control route answers it."""
    return json.dumps(asdict(run)).encode()
