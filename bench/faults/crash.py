"""The process stopped the hard way and the soft way: ``kill -9`` under load while writes
are spooling, and SIGTERM with slow streams in flight."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
import uuid
from pathlib import Path

from bench.faults.common import (
    Result,
    Traffic,
    daemons,
    fakes,
    metric,
    readiness,
    settle,
    wait_for,
)
from bench.faults.outage import FullDisk
from tests.fakes import canned
from tests.fakes.process import release, stream_status
from tests.fakes.rawhttp import raw_request


def kill9(quick: bool, workdir: Path) -> Result:
    """Traffic with thinking; the database's disk fills so writes spool; ``kill -9`` while
    they do. After: the SQLite file passes ``PRAGMA integrity_check``, the daemon starts
    cleanly on the same files, and every write acknowledged (stored or spooled) before the
    kill is in the database once the spool is replayed."""
    rate, before = (10, 3) if quick else (20, 20)
    result = Result("kill9 (kill -9 under load while writes spool)")
    with FullDisk(workdir / "dbfs") as disk, fakes() as fake, daemons() as start:
        database = disk.mountpoint / "mnemomd.db"
        env = fake.env() | {"DATABASE_URL": f"sqlite://{database}",
                            "MNEMOM_DATA_DIR": str(workdir / "data")}
        daemon = start(workdir / "d1", env)
        wait_for(lambda: readiness(daemon)[0] == 200, 30)
        traffic = Traffic(daemon.base_url, rate).__enter__()
        time.sleep(before / 2)  # stored normally first
        disk.fill()
        wait_for(lambda: metric(daemon, "gateway_spool_depth") > 0, 30)
        time.sleep(before / 2)  # then spooled
        acknowledged = metric(daemon, "gateway_bookkeeping_writes_total",
                              'kind="checkpoint",outcome="stored"') + metric(
            daemon, "gateway_bookkeeping_writes_total", 'kind="checkpoint",outcome="spooled"')
        daemon.proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        daemon.proc.wait(10)
        traffic.abandon()
        answered = traffic.succeeded
        unanswered = sum(1 for t, status in traffic.calls if status != 200 and t <= killed_at)
        disk.free()
        with sqlite3.connect(database) as connection:
            integrity = connection.execute("PRAGMA integrity_check").fetchone()[0]
        result.figure("traffic", f"{len(traffic.calls)} calls at {rate}/s, kill -9 with "
                                 f"{metric_free(acknowledged)} checkpoints acknowledged")
        result.check("PRAGMA integrity_check", integrity, "ok", integrity == "ok")
        spool_files = sorted(p.name for p in (workdir / "data" / "spool").glob("*"))
        result.figure("spool files left by the kill", len(spool_files))
        restarted = start(workdir / "d2", env)
        ready = wait_for(lambda: readiness(restarted)[0] == 200, 60)
        result.check("restart on the same files", "ready" if ready else "not ready",
                     "clean start", bool(ready) and restarted.proc.poll() is None)
        wait_for(lambda: metric(restarted, "gateway_spool_depth") == 0, 60)
        stored = settle_checkpoints(database, int(acknowledged), 60)
        result.check("checkpoints in the database / acknowledged before the kill",
                     f"{stored} / {acknowledged:g}", "every acknowledged write survives",
                     stored >= acknowledged)
        result.figure("calls answered 200 before the kill / their checkpoints lost",
                      f"{answered} / {max(0, answered - stored)} (in flight: answered, "
                      "not yet analysed)")
        result.figure("calls cut by the kill (no answer)", unanswered)
        replayed = metric(restarted, "gateway_bookkeeping_writes_total", 'outcome="replayed"')
        result.figure("writes replayed from the spool at restart", f"{replayed:g}")
        restarted.stop(30)
    return result


def metric_free(value: float) -> str:
    return f"{value:g}"


def settle_checkpoints(database: Path, expected: int, timeout: float) -> int:
    def count() -> int:
        with sqlite3.connect(database, timeout=30) as connection:
            return int(connection.execute(
                "SELECT COUNT(*) FROM integrity_checkpoints").fetchone()[0])

    wait_for(lambda: count() >= expected, timeout, interval=0.5)
    return count()


def sigterm_streams(quick: bool, workdir: Path, streams: int = 20) -> Result:
    """Twenty streams held open by the upstream; SIGTERM; then the upstream finishes them
    one event at a time. All complete, byte for byte, and the daemon exits 0."""
    result = Result(f"sigterm-streams ({streams} slow streams, SIGTERM)")
    events = canned.canned(canned.Api.ANTHROPIC_MESSAGES, True, "claude-x")
    body = json.dumps({"model": "claude-x", "max_tokens": 64, "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    with fakes() as fake, daemons() as start:
        daemon = start(workdir / "d", fake.env())
        wait_for(lambda: readiness(daemon)[0] == 200, 30)
        ids = [uuid.uuid4().hex for _ in range(streams)]
        opened = [raw_request(daemon.base_url, "POST", "/anthropic/v1/messages", body,
                              {"x-api-key": "sk-term", "content-type": "application/json",
                               "x-fake-scenario": f"gated:{sid}"}, timeout=60) for sid in ids]
        received: list[list[bytes]] = [[] for _ in ids]
        complete = [False] * streams
        try:
            for n, stream in enumerate(opened):
                received[n].append(stream.read_event() or b"")
            signalled = time.monotonic()
            daemon.signal(signal.SIGTERM)
            wait_for(lambda: readiness(daemon)[1] in ("shutting_down", "no answer"), 10, 0.05)

            def finish(n: int) -> None:
                for _ in events[1:]:
                    wait_for(lambda: stream_status(fake.upstream, ids[n]), 10, 0.01)
                    release(fake.upstream, ids[n])
                    received[n].append(opened[n].read_event() or b"")
                complete[n] = opened[n].read_event() is None and opened[n].complete

            workers = [threading.Thread(target=finish, args=(n,)) for n in range(streams)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(60)
            code = daemon.wait(60)
            took = time.monotonic() - signalled
        finally:
            for stream in opened:
                stream.close()
    intact = sum(1 for r, c in zip(received, complete, strict=True) if c and r == events)
    result.check("streams completed intact", f"{intact} / {streams}", "all",
                 intact == streams)
    result.check("exit code", code, "0", code == 0)
    result.figure("SIGTERM to exit", f"{took:.1f} s")
    return result


__all__ = ["kill9", "settle", "sigterm_streams"]
