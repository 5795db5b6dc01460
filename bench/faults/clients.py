"""Hostile and slow clients against the daemon process, with normal calls meanwhile."""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.faults.common import (
    Result,
    call,
    daemons,
    error_lines,
    fakes,
    metric,
    readiness,
    tracebacks,
    wait_for,
)
from tests.e2e.daemon import Daemon
from tests.fakes.hostile import hostile_requests, send_hostile, slow_heads


class NormalCalls:
    """Calls with thinking, one after the other on a thread, while a probe runs."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> NormalCalls:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.statuses.append(call(self.daemon.base_url, "sk-normal-client"))
            self._stop.wait(0.1)

    def record(self, result: Result) -> None:
        ok = sum(1 for s in self.statuses if s == 200)
        result.check("normal calls meanwhile: 200 / made", f"{ok} / {len(self.statuses)}",
                     "all succeed", ok == len(self.statuses) and ok > 0)


def hostile(quick: bool, workdir: Path, requests: int = 10_000) -> Result:
    result = Result(f"hostile ({requests:,} hostile requests)")
    with fakes() as fake, daemons() as start:
        # A short deadline answers soon the requests that stop half-way (a chunk cut short).
        daemon = start(workdir / "d", fake.env() | {"MAX_REQUEST_BODY_BYTES": "65536",
                                                    "REQUEST_TIMEOUT": "2",
                                                    "MAX_CONNECTIONS_PER_CLIENT": "1000"})
        wait_for(lambda: readiness(daemon)[0] == 200, 30)
        stream = hostile_requests(random.Random(15))
        batch = [next(stream) for _ in range(requests)]
        statuses: dict[str, dict[int, int]] = {}
        unanswered: dict[str, int] = {}
        started = time.monotonic()
        with NormalCalls(daemon) as normal, ThreadPoolExecutor(8) as pool:
            for name, reply in pool.map(lambda item: send_hostile(daemon.port, *item), batch):
                if not reply.startswith(b"HTTP/1.1 "):
                    unanswered[name] = unanswered.get(name, 0) + 1
                    continue
                codes = statuses.setdefault(name, {})
                code = int(reply[9:12])
                codes[code] = codes.get(code, 0) + 1
        took = time.monotonic() - started
        alive = daemon.proc.poll() is None
        server_errors = {name: {c: n for c, n in codes.items() if c >= 500}
                         for name, codes in statuses.items() if any(c >= 500 for c in codes)}
        result.figure("requests / kinds / time", f"{requests:,} / {len(statuses)} / {took:.0f} s")
        result.check("crashes", 0 if alive else 1, "0", alive)
        result.check("daemon 5xx", sum(sum(c.values()) for c in server_errors.values()) or 0,
                     "0", not server_errors)
        result.check("requests without an answer", sum(unanswered.values()), "0",
                     not unanswered)
        if unanswered:
            result.figure("unanswered kinds", json.dumps(unanswered))
        traced = tracebacks(daemon)
        result.check("tracebacks in the log", traced, "0", traced == 0)
        errors = error_lines(daemon)
        result.check("error/critical log lines", len(errors), "0", not errors)
        normal.record(result)
        result.figure("answers by kind", "; ".join(
            f"{name}: {','.join(str(c) for c in sorted(codes))}"
            for name, codes in sorted(statuses.items())))
    return result


def slowloris(quick: bool, workdir: Path, sockets: int = 100, deadline: float = 3.0,
              slack: float = 5.0) -> Result:
    """``sockets`` connections that send their head one byte at a time: each is closed
    with a 408 once ``REQUEST_TIMEOUT`` (``deadline``) has passed since its accept, and
    no later than ``deadline + slack``, while normal calls succeed."""
    result = Result(f"slowloris ({sockets} slow connections, REQUEST_TIMEOUT={deadline:g} s)")
    with fakes() as fake, daemons() as start:
        daemon = start(workdir / "d", fake.env() | {"REQUEST_TIMEOUT": f"{deadline:g}",
                                                    "MAX_CONNECTIONS_PER_CLIENT": "1000"})
        wait_for(lambda: readiness(daemon)[0] == 200, 30)
        with NormalCalls(daemon) as normal:
            answers = slow_heads(daemon.port, sockets, deadline + slack + 10)
        replies = [reply for reply, _ in answers]
        closed_after = [after for _, after in answers if after is not None]
        with_408 = sum(1 for r in replies if r.startswith(b"HTTP/1.1 408 "))
        in_time = [t for t in closed_after if t <= deadline + slack]
        result.check("closed with 408", f"{with_408} / {sockets}", "all", with_408 == sockets)
        result.check(f"closed within REQUEST_TIMEOUT + {slack:g} s", f"{len(in_time)} / {sockets}",
                     "all", len(in_time) == sockets)
        if closed_after:
            result.figure("time to close: min / max",
                          f"{min(closed_after):.2f} s / {max(closed_after):.2f} s")
        normal.record(result)
        shed = metric(daemon, "gateway_client_connections_closed_total",
                      'reason="request_timeout"')
        result.figure("gateway_client_connections_closed_total{reason=request_timeout}",
                      f"{shed:g}")
        result.check("tracebacks in the log", tracebacks(daemon), "0", tracebacks(daemon) == 0)
    return result
