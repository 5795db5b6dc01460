"""How many traces a second the ``traces`` job builds, on SQLite and on PostgreSQL.

Why: at 20 calls/s and more the gateway writes outbox rows faster than a job bounded to
a few hundred rows a run can turn them into traces, and the TTL purge then deletes the
backlog (SPEC §8.1). This fills the outbox with ``--rows`` rows shaped like the gateway's
(tool names and argument keys, 2,000-character thinking and response excerpts, a
checkpoint to link), spread over ``--agents`` agents, then times one run of the real
``TraceBuilder`` on the real reactor draining it, once per engine, in one command:

    python -m bench.traces [--rows 20000] [--engines sqlite,postgresql]

PostgreSQL is the server at ``--postgres-url`` (a throw-away database is created and
dropped). The report gives traces/s and where the run's time went: claiming, building
and verifying (on worker threads), and finishing the batches; ``--profile`` also writes
a cProfile of one batch's building to show which part of it is the cost.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from twisted.internet import defer, reactor, task, threads  # noqa: E402

from mnemomd.agents.store import AgentStore  # noqa: E402
from mnemomd.kv import MemoryKeyValueStore  # noqa: E402
from mnemomd.kv.keyring import OutboxKeyring  # noqa: E402
from mnemomd.observer import traces as job  # noqa: E402
from mnemomd.storage.database import Database  # noqa: E402
from mnemomd.storage.migrations import migrate  # noqa: E402
from mnemomd.storage.traces import OUTBOX_FIELDS, OutboxStore  # noqa: E402
from tests.storage.engines import create_postgres_database, drop_postgres_database  # noqa: E402

TOOLS = ("search", "read_file", "write_file", "run_tests", "delete_file", "send_email")
TTL_MS = 3_600_000
FILL_CHUNK = 1000


def payload(n: int) -> dict[str, Any]:
    """An outbox payload as the gateway writes one (``integrity.pipeline``): most calls
    use a tool or two, some answer in text only; excerpts at their 2,000-char cap."""
    tools = [{"name": TOOLS[(n + k) % len(TOOLS)], "argument_keys": ["path", "query"]}
             for k in range(n % 3)]
    return {"api": "messages", "tools": tools, "thinking_visible": True,
            "redacted_thinking": False,
            "thinking_excerpt": ("The user wants a summary; I will search first. " * 50)[:2000],
            "response_excerpt": ("Here is the summary you asked for, point by point. " * 50
                                 )[:2000],
            "verdict": "clear", "complete": True}


def fill(cursor: Any, agents: list[str], sealed: list[str], now_ms: int) -> None:
    """The outbox rows (``sealed``: each row's payload as the gateway stores it) and
    their checkpoints."""
    rows = len(sealed)
    checkpoints, outbox = [], []
    for n in range(rows):
        agent = agents[n % len(agents)]
        checkpoints.append((f"ic-{n}", agent, "s1", "anthropic", "clear", now_ms))
        outbox.append((f"ob-{n:06d}", agent, "s1", "anthropic", "claude-bench", f"ic-{n}",
                       sealed[n], 0, now_ms + n,
                       now_ms + n + TTL_MS))
    for start in range(0, rows, FILL_CHUNK):
        cursor.executemany(
            "INSERT INTO integrity_checkpoints (id, agent_id, session_id, provider, verdict, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?)", checkpoints[start:start + FILL_CHUNK])
        cursor.executemany(
            f"INSERT INTO trace_outbox ({', '.join(OUTBOX_FIELDS)}) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", outbox[start:start + FILL_CHUNK])


class Timed:
    """Wall time spent inside each kind of call (overlapping calls add up, so a phase can
    exceed the run's wall time when batches run concurrently)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, name: str, func: Callable[..., defer.Deferred[Any]]
             ) -> Callable[..., defer.Deferred[Any]]:
        def timed(*args: Any, **kwargs: Any) -> defer.Deferred[Any]:
            started = time.perf_counter()

            def done(result: Any) -> Any:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
                return result

            return func(*args, **kwargs).addBoth(done)

        return timed


class LagProbe:
    """The worst lateness of a 10 ms timer while the job runs: whether draining a
    backlog blocks the reactor the proxy shares in the ``all`` role."""

    INTERVAL = 0.01

    def __init__(self) -> None:
        self.worst = 0.0
        self._expected = 0.0
        self._loop = task.LoopingCall(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._expected:
            self.worst = max(self.worst, now - self._expected)
        self._expected = now + self.INTERVAL

    def start(self) -> None:
        self._loop.start(self.INTERVAL, now=True)

    def stop(self) -> None:
        self._loop.stop()


@defer.inlineCallbacks
def measure(engine: str, url: str, rows: int, agents: int, batch: int,
            concurrency: int) -> Any:
    db = Database(reactor, url)
    db.start()
    try:
        now_ms = int(reactor.seconds() * 1000)
        yield migrate(db, now_ms)
        store = AgentStore(db)
        agent_ids = []
        for n in range(agents):
            agent = yield store.get_or_create(f"{n:016x}", None, "observe", now_ms)
            agent_ids.append(agent.agent_id)
        keyring = OutboxKeyring(MemoryKeyValueStore(reactor), reactor, TTL_MS / 1000,
                                TTL_MS / 10_000, shared=False)
        started = time.perf_counter()
        sealed = []
        for n in range(rows):
            text = yield keyring.seal(f"ob-{n:06d}", json.dumps(payload(n)).encode())
            sealed.append(text)
        yield db.run_interaction("bench_fill", fill, agent_ids, sealed, now_ms)
        fill_seconds = time.perf_counter() - started
        outbox = OutboxStore(db)
        timed = Timed()
        outbox.claim = timed.wrap("claim", outbox.claim)  # type: ignore[method-assign]
        outbox.finish = timed.wrap("finish", outbox.finish)  # type: ignore[method-assign]
        builder = job.TraceBuilder(reactor, outbox, store, "bench", keyring,
                                   to_thread=timed.wrap("build", threads.deferToThread),
                                   batch_size=batch, concurrency=concurrency)
        lag = LagProbe()
        lag.start()
        cpu = time.process_time()
        started = time.perf_counter()
        counts = yield builder.run()
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
        lag.stop()
        left = yield outbox.counts()
        traced = yield db.fetchone("bench_count", "SELECT COUNT(*) FROM ap_traces")
        linked = yield db.fetchone("bench_linked", "SELECT COUNT(*) FROM integrity_checkpoints "
                                                   "WHERE trace_id IS NOT NULL")
        return {"engine": engine, "rows": rows, "agents": agents, "batch": batch,
                "concurrency": concurrency, "fill_seconds": round(fill_seconds, 2),
                "seconds": round(seconds, 2), "traces_per_second": round(rows / seconds),
                "cpu_seconds": round(cpu, 2), "built": counts["built"],
                "failed": counts["failed"], "left": left, "traces": int(traced[0]),
                "linked": int(linked[0]), "max_reactor_lag_ms": round(lag.worst * 1000, 1),
                "phases": {k: round(v, 2) for k, v in sorted(timed.seconds.items())}}
    finally:
        db.close()


def profile_build(batch: int) -> str:
    """cProfile of building and verifying one batch (the CPU-bound phase), top 12."""
    from mnemomd.agents.store import default_alignment_card
    from mnemomd.storage.traces import OutboxRow

    card = default_alignment_card("bench", 0)
    items = [(job.OpenedRow(OutboxRow(f"ob-{n}", "bench", "s1", "anthropic", "m", f"ic-{n}",
                                      "sealed", 1, n, n + TTL_MS), payload(n)),
              card, None, "heuristic", f"tr-{n}", n)
             for n in range(batch)]
    profiler = cProfile.Profile()
    profiler.enable()
    job.build_batch(items)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(12)
    return out.getvalue()


def report(results: list[dict[str, Any]]) -> str:
    lines = ["| engine | rows | batch × concurrency | seconds | traces/s | CPU s | "
             "claim / build / finish s (summed) | max reactor lag ms | left | traces | linked |",
             "|---|---:|---|---:|---:|---:|---|---:|---|---:|---:|"]
    for r in results:
        p = r["phases"]
        lines.append(
            f"| {r['engine']} | {r['rows']:,} | {r['batch']} × {r['concurrency']} | "
            f"{r['seconds']} | {r['traces_per_second']:,} | {r['cpu_seconds']} | "
            f"{p.get('claim', 0)} / {p.get('build', 0)} / {p.get('finish', 0)} | "
            f"{r['max_reactor_lag_ms']} | "
            f"{r['left']['ready']} ready, {r['left']['parked']} parked | {r['traces']:,} | "
            f"{r['linked']:,} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--engines", default="sqlite,postgresql")
    parser.add_argument("--batch", type=int, default=job.BATCH)
    parser.add_argument("--concurrency", type=int, default=job.CONCURRENCY)
    parser.add_argument("--postgres-url", default=None,
                        help="server for the throw-away database (default: the tests' one)")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    if args.postgres_url:
        import tests.storage.engines as engines
        engines.POSTGRES_URL = args.postgres_url

    results: list[dict[str, Any]] = []

    @defer.inlineCallbacks
    def run_all() -> Any:
        for engine in args.engines.split(","):
            tmp = tempfile.TemporaryDirectory()
            url = f"sqlite://{tmp.name}/bench.db" if engine == "sqlite" \
                else create_postgres_database()
            try:
                result = yield measure(engine, url, args.rows, args.agents, args.batch,
                                       args.concurrency)
                results.append(result)
            finally:
                if engine != "sqlite":
                    drop_postgres_database(url)
                tmp.cleanup()

    failures: list[Any] = []
    d = run_all()
    d.addErrback(failures.append).addBoth(lambda _: reactor.stop())
    reactor.run()
    if failures:
        failures[0].printTraceback()
        return 1
    print(report(results))
    print(json.dumps(results, indent=1))
    if args.profile:
        print(profile_build(args.batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
