"""Storage outages under steady traffic with thinking: the database (SQLite made unwritable,
PostgreSQL cut at a TCP gate) and Redis (killed and restarted). Nothing may fail and
nothing may be lost: every call answered gets its checkpoint and its trace once the
dependency returns.

How SQLite is made unwritable: the database file lives on a small tmpfs of the probe's own
and the probe fills that file system (``ENOSPC``): every write that needs a new block fails
with ``database or disk is full``, as on a host whose disk filled up. Deleting the filler
ends the outage. (As root, ``chmod`` does not stop writes, and it would not reach the
connection the daemon already holds open in any case.) Mounting needs ``CAP_SYS_ADMIN``.
"""

from __future__ import annotations

import errno
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.faults.common import (
    Counts,
    Result,
    Traffic,
    daemons,
    fakes,
    metric,
    readiness,
    record_checks,
    samples,
    settle,
    tracebacks,
    wait_for,
)
from tests.e2e.daemon import Daemon
from tests.e2e.tcpgate import TcpGate


class Unavailable(RuntimeError):
    """What a probe needs is missing here (no mount rights, no redis-server)."""


@dataclass(frozen=True)
class Shape:
    rate: float
    warmup: float
    outage: float
    after: float


QUICK = Shape(rate=10, warmup=2, outage=5, after=2)
LONG = Shape(rate=20, warmup=5, outage=60, after=5)


# -- SQLite on a file system that fills up ------------------------------------------------------


class FullDisk:
    """A tmpfs of ``size_mb`` at ``mountpoint``; ``fill()`` takes every free block,
    ``free()`` gives them back."""

    def __init__(self, mountpoint: Path, size_mb: int = 128) -> None:
        self.mountpoint = mountpoint
        self.size_mb = size_mb
        self.filler = mountpoint / "filler"

    def __enter__(self) -> FullDisk:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m,mode=0700",
                               "tmpfs", str(self.mountpoint)], capture_output=True, text=True)
        if done.returncode != 0:
            raise Unavailable(f"cannot mount a tmpfs (needs CAP_SYS_ADMIN): {done.stderr.strip()}")
        return self

    def __exit__(self, *_exc: object) -> None:
        subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True)

    def fill(self) -> int:
        """Write zeros until the file system is full; the bytes written."""
        written = 0
        block = b"\0" * (1 << 20)
        with open(self.filler, "wb", buffering=0) as out:
            for size in (1 << 20, 4096, 1):
                chunk = block[:size]
                while True:
                    try:
                        written += out.write(chunk)
                    except OSError as error:
                        if error.errno != errno.ENOSPC:
                            raise
                        break
        return written

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


# -- the probe ---------------------------------------------------------------------------------


@dataclass
class Outage:
    """The fault a probe injects: ``cut()`` and ``heal()``."""
    name: str
    cut: Callable[[], object]
    heal: Callable[[], object]


def run_outage(result: Result, daemon: Daemon, counts: Counts, outage: Outage,
               shape: Shape) -> None:
    """Steady traffic; the outage in the middle; then count what was stored."""
    seen_ready: dict[str, int] = {}
    with Traffic(daemon.base_url, shape.rate) as traffic:
        time.sleep(shape.warmup)  # traffic flows before the fault: the probe's schedule
        outage.cut()
        cut_at = time.monotonic()
        while time.monotonic() - cut_at < shape.outage:
            code, status = readiness(daemon)
            seen_ready[f"{code} {status}"] = seen_ready.get(f"{code} {status}", 0) + 1
            time.sleep(1)
        outage.heal()
        time.sleep(shape.after)
    statuses = traffic.statuses()
    calls = len(traffic.calls)
    succeeded = statuses.get(200, 0)
    result.figure("traffic", f"{calls} calls with thinking at {shape.rate:g}/s, "
                             f"{outage.name} for {shape.outage:g} s")
    result.check("calls failed", calls - succeeded, "0", succeeded == calls)
    stored = settle(counts, succeeded, timeout=60 + shape.outage)
    record_checks(result, succeeded, stored)
    spooled = metric(daemon, "gateway_bookkeeping_writes_total", 'outcome="spooled"')
    replayed = metric(daemon, "gateway_bookkeeping_writes_total", 'outcome="replayed"')
    result.check("writes spooled during the outage / replayed", f"{spooled:g} / {replayed:g}",
                 "> 0 (the fault bit) and all replayed", spooled > 0 and replayed >= spooled)
    outcomes = samples(daemon, "gateway_bookkeeping_writes_total")
    result.figure("bookkeeping writes by kind and outcome", "; ".join(
        f"{labels.strip('{}')}: {value:g}" for labels, value in sorted(outcomes.items())
        if value))
    result.check("readiness during the outage (polls)",
                 ", ".join(f"{k}: {v}" for k, v in sorted(seen_ready.items())),
                 "200 throughout (the proxy can serve)",
                 set(seen_ready) <= {"200 ok", "200 degraded"})
    traced = tracebacks(daemon)
    result.check("tracebacks in the log", traced, "0", traced == 0)
    result.check("daemon still running", daemon.proc.poll() is None, "yes",
                 daemon.proc.poll() is None)


def db_outage_sqlite(quick: bool, workdir: Path) -> Result:
    shape = QUICK if quick else LONG
    result = Result(f"db-outage (SQLite, disk full for {shape.outage:g} s)")
    with FullDisk(workdir / "dbfs") as disk, fakes() as fake, daemons() as start:
        database = disk.mountpoint / "mnemomd.db"
        daemon = start(workdir / "d", fake.env() | {
            "DATABASE_URL": f"sqlite://{database}", "MNEMOM_DATA_DIR": str(workdir / "data")})
        wait_for(lambda: readiness(daemon)[0] == 200, 30)
        run_outage(result, daemon, Counts(sqlite_path=database),
                   Outage("database file system full", disk.fill, disk.free), shape)
        daemon.stop(30)
    return result


def db_outage_postgresql(quick: bool, workdir: Path) -> Result:
    from tests.storage.engines import create_postgres_database, drop_postgres_database

    shape = QUICK if quick else LONG
    result = Result(f"db-outage (PostgreSQL, cut at a TCP gate for {shape.outage:g} s)")
    url = create_postgres_database()
    gate = TcpGate("127.0.0.1", 5432)
    try:
        with fakes() as fake, daemons() as start:
            gated = url.replace("127.0.0.1:5432", f"127.0.0.1:{gate.port}")
            daemon = start(workdir / "d", fake.env() | {"DATABASE_URL": gated})
            wait_for(lambda: readiness(daemon)[0] == 200, 30)
            run_outage(result, daemon, Counts(postgres_url=url),
                       Outage("PostgreSQL cut", gate.close, gate.open), shape)
            daemon.stop(30)
    finally:
        gate.close()
        drop_postgres_database(url)
    return result


def db_outage(quick: bool, workdir: Path) -> list[Result]:
    return [db_outage_sqlite(quick, workdir / "sqlite"),
            db_outage_postgresql(quick, workdir / "postgresql")]


@contextmanager
def own_redis() -> Iterator[object]:
    from tests.fakes.redisserver import RedisServer

    try:
        server = RedisServer()
    except BaseException as error:  # unavailable() skips or fails the test
        raise Unavailable(f"redis-server: {error}") from error
    server.start()
    try:
        wait_for(server.listening, 20, interval=0.05)
        yield server
    finally:
        server.cleanup()


def redis_outage(quick: bool, workdir: Path) -> Result:
    shape = QUICK if quick else Shape(rate=20, warmup=5, outage=30, after=5)
    result = Result(f"redis-outage (redis-server killed for {shape.outage:g} s)")
    with own_redis() as server, fakes() as fake, daemons() as start:
        data = workdir / "data"
        daemon = start(workdir / "d", fake.env() | {"REDIS_URL": server.url,  # type: ignore[attr-defined]
                                                   "MNEMOM_DATA_DIR": str(data)})
        wait_for(lambda: readiness(daemon)[0] == 200, 30)

        def kill() -> None:
            server.proc.send_signal(signal.SIGKILL)  # type: ignore[attr-defined]
            server.proc.wait(20)  # type: ignore[attr-defined]

        def restart() -> None:
            server.start()  # type: ignore[attr-defined]
            wait_for(server.listening, 20, interval=0.05)  # type: ignore[attr-defined]

        run_outage(result, daemon, Counts(sqlite_path=data / "mnemomd.db"),
                   Outage("redis-server killed", kill, restart), shape)
        result.rows = [r for r in result.rows if not r.figure.startswith("writes spooled")]
        daemon.stop(30)
    return result

