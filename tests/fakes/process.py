"""Run the fake upstream as a subprocess and talk to its control routes.

Blocking helpers (stdlib only) for synchronous tests: the fake runs in its own
process with its own reactor, so tests can drive real SDKs against it.
"""

from __future__ import annotations

import base64
import json
import os
import selectors
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

__all__ = [
    "REPO_ROOT",
    "FakeUpstreamError",
    "clear_requests",
    "control",
    "fetch_requests",
    "record_body",
    "record_headers",
    "release",
    "run_fake_upstream",
    "stream_status",
    "wait_until",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


class FakeUpstreamError(RuntimeError):
    """The fake upstream did not start or a control call failed."""


def _read_port_line(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Read the ``{"port": N}`` line without blocking past ``timeout``."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FakeUpstreamError(f"fake upstream printed no port within {timeout}s")
            if not selector.select(remaining):
                continue
            data = os.read(proc.stdout.fileno(), 4096)
            if not data:
                raise FakeUpstreamError(f"fake upstream exited early (code {proc.wait()})")
            buffer += data
    line = buffer.split(b"\n", 1)[0]
    try:
        return int(json.loads(line)["port"])
    except (ValueError, KeyError, TypeError) as exc:
        raise FakeUpstreamError(f"unexpected first line from fake upstream: {line!r}") from exc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    if proc.stdout is not None:
        proc.stdout.close()


@contextmanager
def run_fake_upstream(
    host: str = "127.0.0.1",
    startup_timeout: float = 15.0,
    stderr_path: Path | None = None,
) -> Iterator[str]:
    """Start ``python -m tests.fakes.upstream --port 0`` and yield its base URL.

    The URL looks like ``http://127.0.0.1:N``; the process is terminated
    (SIGTERM, then SIGKILL if needed) when the block exits.  The fake's
    stderr (warnings and tracebacks only) goes to ``stderr_path`` if given,
    else to this process's stderr.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    with ExitStack() as stack:
        stderr = stack.enter_context(open(stderr_path, "wb")) if stderr_path else None
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.upstream", "--port", "0", "--host", host],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        try:
            port = _read_port_line(proc, startup_timeout)
            shown_host = f"[{host}]" if ":" in host else host
            yield f"http://{shown_host}:{port}"
        finally:
            _stop(proc)


def control(base_url: str, method: str, route: str, timeout: float = 5.0) -> tuple[int, Any]:
    """Call a ``/_fake/<route>`` control route; return ``(status, json)``."""
    request = urllib.request.Request(
        f"{base_url}/_fake/{route}", method=method, data=b"" if method == "POST" else None
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def fetch_requests(base_url: str) -> list[dict[str, Any]]:
    """Every provider-side request the fake recorded, oldest first.

    Each record has ``seq``, ``method``, ``path`` (raw), ``query`` (raw),
    ``headers`` (``[name, value]`` pairs, names lower-cased), ``body_base64``
    and ``client_port``.
    """
    status, data = control(base_url, "GET", "requests")
    if status != 200:
        raise FakeUpstreamError(f"GET /_fake/requests answered {status}")
    return list(data)


def clear_requests(base_url: str) -> int:
    """Forget recorded requests; return how many there were."""
    status, data = control(base_url, "DELETE", "requests")
    if status != 200:
        raise FakeUpstreamError(f"DELETE /_fake/requests answered {status}")
    return int(data["cleared"])


def release(base_url: str, stream_id: str) -> dict[str, Any]:
    """Release one more event of gated stream ``stream_id``.

    Returns the fake's answer: ``{"released": True, ...stream status}`` when the
    stream is live, ``{"released": False, "pending": n}`` when queued early.
    """
    status, data = control(base_url, "POST", f"release/{quote(stream_id, safe='')}")
    if status not in (200, 202):
        raise FakeUpstreamError(f"release of {stream_id!r} answered {status}: {data}")
    return dict(data)


def stream_status(base_url: str, stream_id: str) -> dict[str, Any] | None:
    """``GET /_fake/streams/<id>``, or ``None`` while the stream is unknown."""
    status, data = control(base_url, "GET", f"streams/{quote(stream_id, safe='')}")
    if status == 404:
        return None
    if status != 200:
        raise FakeUpstreamError(f"stream status of {stream_id!r} answered {status}")
    return dict(data)


def record_body(record: dict[str, Any]) -> bytes:
    """The exact body bytes of a recorded request."""
    return base64.b64decode(record["body_base64"])


def record_headers(record: dict[str, Any], name: str) -> list[str]:
    """All values of header ``name`` in a recorded request."""
    wanted = name.lower()
    return [value for key, value in record["headers"] if key == wanted]


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float = 5.0,
    interval: float = 0.005,
    what: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy; return that.

    Raises ``TimeoutError`` naming ``what`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@contextmanager
def run_fake_analysis(startup_timeout: float = 15.0) -> Iterator[str]:
    """Start ``python -m tests.fakes.analysis --port 0`` and yield its base URL."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.analysis", "--port", "0"],
                            cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE)
    try:
        yield f"http://127.0.0.1:{_read_port_line(proc, startup_timeout)}"
    finally:
        _stop(proc)


def analysis_control(base_url: str, method: str, route: str, payload: Any = None) -> Any:
    """Call a control route of the fake analysis model; returns the decoded JSON."""
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(f"{base_url}/_fake/{route}", data=data, method=method)
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read() or b"null")
