"""What every fault probe shares: the daemon process and its fakes, steady traffic, counts
of what was stored, and the result table.

A probe is a function ``run(quick: bool, workdir: Path) -> Result``. It starts the real
daemon process (``tests/e2e/daemon.py``) against the fake provider upstream (whose answers
carry thinking) and the fake analysis model, injects its fault, and returns figures, each
with the promise it checks. ``Result.ok`` is False when a promise failed.
"""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.daemon import Daemon, start_daemon
from tests.fakes.process import analysis_control, run_fake_analysis, run_fake_upstream
from tests.fakes.rawhttp import raw_request

#: A call with thinking: the fake upstream's canned Anthropic answer carries a thinking
#: block, so each call makes one checkpoint and one trace-outbox row.
CALL_BODY = json.dumps({"model": "claude-x", "max_tokens": 2048,
                        "messages": [{"role": "user", "content": "hello"}]}).encode()
#: Fast observer jobs, so the traces of a probe's calls are built while it waits.
FAST_JOBS = {"OBSERVER_TRACES_INTERVAL_SECONDS": "0.5",
             "OBSERVER_WEBHOOKS_INTERVAL_SECONDS": "1", "OBSERVER_DRIFT_INTERVAL_SECONDS": "3600"}


@dataclass
class Row:
    figure: str
    measured: str
    promise: str = ""
    ok: bool | None = None  # None: a figure reported, no promise attached


@dataclass
class Result:
    probe: str
    rows: list[Row] = field(default_factory=list)

    def figure(self, figure: str, measured: object) -> None:
        self.rows.append(Row(figure, str(measured)))

    def check(self, figure: str, measured: object, promise: str, ok: bool) -> None:
        self.rows.append(Row(figure, str(measured), promise, bool(ok)))

    @property
    def ok(self) -> bool:
        return all(row.ok is not False for row in self.rows)

    def table(self) -> str:
        lines = [f"### {self.probe}: {'ok' if self.ok else 'FAILED'}", "",
                 "| figure | measured | promise | |", "|---|---|---|---|"]
        for row in self.rows:
            mark = "" if row.ok is None else ("ok" if row.ok else "**FAILED**")
            lines.append(f"| {row.figure} | {row.measured} | {row.promise} | {mark} |")
        return "\n".join(lines)


@dataclass
class Fakes:
    upstream: str
    analysis: str

    def env(self) -> dict[str, str]:
        """The daemon settings that point it at the fakes and analyse every call."""
        return {"ANTHROPIC_BASE_URL": self.upstream, "OPENAI_BASE_URL": self.upstream,
                "GEMINI_BASE_URL": self.upstream, "ANALYSIS_BASE_URL": self.analysis,
                "ANTHROPIC_API_KEY": "sk-analysis-key", "AIP_MIN_EVIDENCE_TOKENS": "1",
                "LOG_LEVEL": "info", **FAST_JOBS}


@contextmanager
def fakes() -> Iterator[Fakes]:
    with run_fake_upstream() as upstream, run_fake_analysis() as analysis:
        analysis_control(analysis, "POST", "script", {"actions": [], "default": "valid"})
        yield Fakes(upstream, analysis)


@contextmanager
def daemons() -> Iterator[Callable[..., Daemon]]:
    """Start daemons with ``start(tmp, env)``; every one is stopped at the end."""
    with ExitStack() as stack:
        def start(tmp: Path, env: dict[str, str], **kwargs: Any) -> Daemon:
            daemon = start_daemon(tmp, env, **kwargs)
            stack.callback(lambda: daemon.proc.poll() is None and daemon.stop(20))
            return daemon
        yield start


# -- traffic -----------------------------------------------------------------------------------


def call(base_url: str, key: str, timeout: float = 30.0) -> int:
    """One non-streaming call with thinking; its status (0 when no answer came)."""
    try:
        with raw_request(base_url, "POST", "/anthropic/v1/messages", CALL_BODY,
                         {"x-api-key": key, "content-type": "application/json"},
                         timeout=timeout) as response:
            response.read_body()
            return response.status
    except OSError:
        return 0


class Traffic:
    """Steady calls at ``rate`` a second on a pool of threads, until ``stop()``.

    Each call's start time and status are kept; ``statuses()`` counts them."""

    def __init__(self, base_url: str, rate: float, keys: int = 4, workers: int = 32) -> None:
        self.base_url = base_url
        self.rate = rate
        self.keys = [f"sk-fault-{n}" for n in range(keys)]
        self._pool = ThreadPoolExecutor(workers)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.calls: list[tuple[float, int | None]] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _one(self, index: int) -> None:
        status = call(self.base_url, self.keys[index % len(self.keys)])
        with self._lock:
            self.calls[index] = (self.calls[index][0], status)

    def _run(self) -> None:
        started = time.monotonic()
        sent = 0
        while not self._stopping.is_set():
            due = started + sent / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                self._stopping.wait(delay)
                continue
            with self._lock:
                self.calls.append((time.monotonic(), None))
            self._pool.submit(self._one, sent)
            sent += 1

    def stop(self) -> None:
        if not self._stopping.is_set():
            self._stopping.set()
            self._thread.join()
            self._pool.shutdown(wait=True)

    def abandon(self) -> None:
        """Stop sending without waiting for the answers (the daemon is gone)."""
        self._stopping.set()
        self._thread.join()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def statuses(self) -> dict[int | None, int]:
        counts: dict[int | None, int] = {}
        with self._lock:
            for _, status in self.calls:
                counts[status] = counts.get(status, 0) + 1
        return counts

    @property
    def succeeded(self) -> int:
        return self.statuses().get(200, 0)

    @property
    def failed(self) -> int:
        return sum(n for status, n in self.statuses().items() if status not in (200, None))


# -- what the daemon says ----------------------------------------------------------------------


def http_get(base_url: str, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"{base_url}{path}", timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def readiness(daemon: Daemon) -> tuple[int, str]:
    """``/health/ready``: its status code and its ``status`` field."""
    try:
        code, body = http_get(daemon.base_url, "/health/ready")
        return code, str(json.loads(body).get("status", ""))
    except (OSError, ValueError):
        return 0, "no answer"


def metric(daemon: Daemon, name: str, labels: str = "") -> float:
    """The sum of one metric's samples whose labels contain ``labels`` (0 when absent)."""
    _, body = http_get(daemon.base_url, "/metrics")
    total = 0.0
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$")
    for line in body.decode().splitlines():
        match = pattern.match(line)
        if match and labels in (match.group(1) or ""):
            total += float(match.group(2))
    return total


def samples(daemon: Daemon, name: str) -> dict[str, float]:
    """Every sample of one metric: its labels → its value."""
    _, body = http_get(daemon.base_url, "/metrics")
    found: dict[str, float] = {}
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$")
    for line in body.decode().splitlines():
        if match := pattern.match(line):
            found[match.group(1) or ""] = float(match.group(2))
    return found


def tracebacks(daemon: Daemon) -> int:
    return daemon.output().count("Traceback")


def error_lines(daemon: Daemon) -> list[str]:
    found = []
    for line in list(daemon.lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("level") in ("error", "critical"):
            found.append(str(record.get("message", ""))[:160])
    return found


class Counts:
    """Rows stored in the daemon's database: checkpoints, traces, outbox rows."""

    def __init__(self, sqlite_path: Path | None = None, postgres_url: str | None = None) -> None:
        self.sqlite_path = sqlite_path
        self.postgres_url = postgres_url

    def query(self, sql: str) -> int:
        if self.sqlite_path is not None:
            with sqlite3.connect(self.sqlite_path, timeout=30) as connection:
                return int(connection.execute(sql).fetchone()[0])
        import psycopg2

        connection = psycopg2.connect(self.postgres_url)
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql)
                return int(cursor.fetchone()[0])
        finally:
            connection.close()

    def snapshot(self) -> dict[str, int]:
        return {table: self.query(f"SELECT COUNT(*) FROM {table}")
                for table in ("integrity_checkpoints", "ap_traces", "trace_outbox")}


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.25) -> Any:
    """Poll until ``predicate`` returns something truthy or ``timeout`` passes; return its
    last value (falsy on a timeout: the caller reports what it saw)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def settle(counts: Counts, calls: int, timeout: float) -> dict[str, int]:
    """Wait until every call has its checkpoint and its trace (or ``timeout`` passes)."""
    seen: dict[str, int] = {}

    def done() -> bool:
        seen.update(counts.snapshot())
        return (seen["integrity_checkpoints"] >= calls and seen["ap_traces"] >= calls
                and seen["trace_outbox"] == 0)

    wait_for(done, timeout, interval=0.5)
    return seen


def record_checks(result: Result, calls: int, stored: dict[str, int]) -> None:
    """The 'nothing lost' rows: one checkpoint and one trace per call, no outbox left."""
    result.check("checkpoints stored / calls", f"{stored['integrity_checkpoints']} / {calls}",
                 "0 lost", stored["integrity_checkpoints"] == calls)
    result.check("traces built / calls", f"{stored['ap_traces']} / {calls}", "0 lost",
                 stored["ap_traces"] == calls)
    result.check("outbox rows left", stored["trace_outbox"], "0 (all became traces)",
                 stored["trace_outbox"] == 0)


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0
