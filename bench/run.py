"""Benchmark mnemomd against a direct call and nginx, side by side, in one run.

Why: SPEC §14 sets the gateway's performance targets (added latency, calls/s per core,
stream forwarding delay, memory, reactor lag) and wants them measured by the project's
own benchmark against a local mock upstream, with nginx as the reference native proxy.
This script starts everything it needs, measures, stops everything, and prints a
Markdown report (also written, with the raw numbers as JSON, to bench/results/).

    python bench/run.py [--quick] [--duration S] [--profile]

Needs ``wrk`` and ``nginx`` on PATH (Debian: ``apt-get install -y wrk nginx``); without
nginx the reference rows are skipped and the mock upstream is the asyncio one. On a
machine with two or more cores, the daemon and nginx-as-proxy are pinned to CPU 0 and
everything else (this script, wrk, the mock upstreams) to CPU 1.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench import harness, mockup  # noqa: E402
from bench.streams import StreamRun, measure_via_mock  # noqa: E402
from tests.e2e.daemon import daemon_environment, mnemomd_command  # noqa: E402
from tests.fakes.process import run_fake_upstream  # noqa: E402

RESULTS_DIR = REPO_ROOT / "bench" / "results"
PROXY_CPU = "0"
LOAD_CPU = "1"
API_KEY = "sk-ant-bench-0000000000000000000000000000"
#: A typical small Messages call: a system prompt and one user turn, about 1 KB.
REQUEST_BODY = json.dumps({
    "model": "claude-bench", "max_tokens": 1024,
    "system": "You are a careful assistant. Answer briefly and cite nothing. " * 4,
    "messages": [{"role": "user", "content": "Summarise the following text: " + "lorem ipsum "
                  * 60}],
}, separators=(",", ":")).encode()
REQUEST_HEADERS = {"content-type": "application/json", "x-api-key": API_KEY,
                   "anthropic-version": "2023-06-01"}
LAG_METRIC = "gateway_reactor_lag_seconds"
RowT = TypeVar("RowT", "LoadRow", "StreamRow")


# -- results --------------------------------------------------------------------------------


@dataclass
class LoadRow:
    """One wrk run against one path at one concurrency."""

    path: str
    concurrency: int
    mode: str  # "closed" (as fast as answers come) or "paced"
    requests: int
    rps: float
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    server_cpu_seconds: float | None = None
    cpu_busy: dict[str, float] = field(default_factory=dict)
    #: CPU time (%) taken by others than the benchmark's processes, on each CPU.
    other_cpu0_percent: float = 0.0
    other_cpu1_percent: float = 0.0
    attempts: int = 1
    added_p50_ms: float | None = None
    added_p99_ms: float | None = None

    @property
    def cpu_ms_per_1000(self) -> float | None:
        if self.server_cpu_seconds is None or not self.requests:
            return None
        return 1000 * self.server_cpu_seconds / self.requests * 1000

    @property
    def calls_per_core_second(self) -> float | None:
        if not self.server_cpu_seconds:
            return None
        return self.requests / self.server_cpu_seconds


@dataclass
class StreamRow:
    """Per-event delays (arrival minus the upstream's send stamp) for one path."""

    path: str
    streams: int
    events_per_stream: int
    interval_ms: float
    events: int
    events_expected: int
    failed_streams: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    ramp_seconds: float = 0.0
    ramp_events: int = 0
    ramp_max_ms: float = 0.0
    server_cpu_seconds: float | None = None
    cpu_busy: dict[str, float] = field(default_factory=dict)
    other_cpu0_percent: float = 0.0
    other_cpu1_percent: float = 0.0
    attempts: int = 1
    added_p50_ms: float | None = None
    added_p99_ms: float | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def cpu_us_per_event(self) -> float | None:
        # CPU time comes in 10 ms ticks: below 0.1 s the figure would be mostly rounding.
        if self.server_cpu_seconds is None or self.server_cpu_seconds < 0.1 or not self.events:
            return None
        return 1e6 * self.server_cpu_seconds / self.events


@dataclass
class Report:
    started: str
    command: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    load: list[LoadRow] = field(default_factory=list)
    streams: list[StreamRow] = field(default_factory=list)
    memory_kib: dict[str, Any] = field(default_factory=dict)
    reactor_lag: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# -- the pieces under test ----------------------------------------------------------------


@dataclass
class Route:
    """One way to reach the mock upstream: directly, through mnemomd, through nginx."""

    name: str
    json_url: str
    stream_port: int
    stream_path: str
    pids: Callable[[], list[int]] = lambda: []
    #: Whether ``pids`` run on the proxy CPU (so their CPU time is no "other" load there).
    on_proxy_cpu: bool = False


class Bench:
    """Starts the mocks, mnemomd and nginx; runs each measurement; keeps the results."""

    def __init__(self, args: argparse.Namespace, workdir: Path, children: harness.Children,
                 report: Report) -> None:
        self.args = args
        self.workdir = workdir
        self.children = children
        self.report = report
        self.pin = args.pin
        self.script = harness.wrk_script(workdir / "post.lua", REQUEST_BODY, REQUEST_HEADERS)
        self.routes: list[Route] = []
        self.daemon: subprocess.Popen[bytes] | None = None
        self.daemon_port = 0
        self.nginx: subprocess.Popen[bytes] | None = None
        self.expected_body = mockup.anthropic_json()
        self.daemon_command, self.daemon_cwd = args.daemon_command, args.daemon_cwd
        self.json_port = self.stream_port = 0
        self.quiet_budget: float = args.quiet_budget
        self.load_pids: list[int] = []
        self.stream_mock_pids: list[int] = []

    def cpus(self, which: str) -> str | None:
        return which if self.pin else None

    # -- starting things ------------------------------------------------------------------

    def start_stream_mock(self) -> int:
        proc = self.children.start(
            "stream mock", [sys.executable, "-m", "bench.mockup", "--port", "0"],
            cpus=self.cpus(LOAD_CPU), cwd=REPO_ROOT, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        self.stream_mock_pids = [proc.pid]
        return int(harness.read_json_line(proc.stdout, 15)["port"])

    def start_json_mock(self, stream_port: int) -> tuple[int, list[int]]:
        """The non-streaming mock: nginx ``return 200`` if there is nginx, else asyncio."""
        if not self.args.nginx:
            return stream_port, []
        port = harness.free_port()
        directory = self.workdir / "nginx-mock"
        proc = harness.start_nginx(
            self.children, "nginx mock", directory,
            harness.nginx_mock_config(directory, port, self.expected_body), port,
            self.cpus(LOAD_CPU))
        return port, harness.process_tree(proc.pid)

    def start_daemon(self, json_port: int, stream_port: int, level: str) -> int:
        """``mnemomd run`` on CPU 0; its log goes to a file, not through this process.

        At LOG_LEVEL=warn the daemon does not print its "listening on" line, so the port
        is chosen here and readiness is ``/health/live`` answering.
        """
        log_path = self.workdir / f"mnemomd-{level}.log"
        workers = {} if self.args.workers == 1 else {
            "MNEMOM_WORKERS": str(self.args.workers), "REDIS_URL": self.args.redis_url}
        env = daemon_environment(self.workdir / f"mnemomd-{level}", {
            **workers,
            **self.args.daemon_env,
            "LOG_LEVEL": level,
            "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{json_port}",
            "OPENAI_BASE_URL": f"http://127.0.0.1:{stream_port}",
        })
        port = harness.free_port()
        with open(log_path, "wb") as log_file:
            self.daemon = self.children.start(
                "mnemomd", [*self.daemon_command, "run", "--host", "127.0.0.1", "--port",
                            str(port)],
                # N workers need N cores: only one worker is pinned to the proxy CPU.
                cpus=self.cpus(PROXY_CPU) if self.args.workers == 1 else None,
                cwd=self.daemon_cwd, env=env, stdout=log_file,
                stderr=subprocess.STDOUT)
        harness.wait_for_health(f"http://127.0.0.1:{port}/health/live", self.daemon, 30,
                                log_path)
        self.daemon_port = port
        return port

    def mnemomd_route(self) -> Route:
        return next(route for route in self.routes if route.name == "mnemomd")

    def stop_daemon(self) -> None:
        if self.daemon is not None:
            self.children.stop(self.daemon)
            self.daemon = None

    def daemon_pids(self) -> list[int]:
        """The daemon, or the supervisor and its workers under ``--workers``."""
        if self.daemon is None:
            return []
        return harness.process_tree(self.daemon.pid) if self.args.workers > 1 \
            else [self.daemon.pid]

    def start_nginx_proxy(self, json_port: int, stream_port: int) -> int:
        port = harness.free_port()
        directory = self.workdir / "nginx-proxy"
        self.nginx = harness.start_nginx(
            self.children, "nginx proxy", directory,
            harness.nginx_proxy_config(directory, port, json_port, stream_port), port,
            self.cpus(PROXY_CPU))
        return port

    def nginx_pids(self) -> list[int]:
        return harness.process_tree(self.nginx.pid) if self.nginx is not None else []

    def setup(self) -> None:
        stream_port = self.start_stream_mock()
        json_port, mock_pids = self.start_json_mock(stream_port)
        self.json_port, self.stream_port = json_port, stream_port
        self.load_pids = [*mock_pids, *self.stream_mock_pids]
        mock_name = "nginx `return 200`" if self.args.nginx else "asyncio (bench/mockup.py)"
        self.report.settings["json_mock"] = mock_name
        self.routes.append(Route("direct", f"http://127.0.0.1:{json_port}/v1/messages",
                                stream_port, "/v1/chat/completions", lambda: mock_pids))
        port = self.start_daemon(json_port, stream_port, "warn")
        self.routes.append(Route("mnemomd", f"http://127.0.0.1:{port}/anthropic/v1/messages",
                                port, "/openai/v1/chat/completions", self.daemon_pids, True))
        if self.args.nginx:
            port = self.start_nginx_proxy(json_port, stream_port)
            self.routes.append(Route("nginx", f"http://127.0.0.1:{port}/anthropic/v1/messages",
                                    port, "/openai/v1/chat/completions", self.nginx_pids,
                                    True))
        self.smoke_test()

    def smoke_test(self) -> None:
        """Every path answers the canned body and streams ticks before anything is timed."""
        for route in self.routes:
            status, body = harness.http_post(route.json_url, REQUEST_BODY, REQUEST_HEADERS)
            if status != 200 or body != self.expected_body:
                raise RuntimeError(f"{route.name}: unexpected answer {status} {body[:200]!r}")
            run = measure_via_mock(self.stream_port, route.stream_port, route.stream_path, 2, 5, 1)
            if run.failed_streams or len(run.delays_us) + len(run.ramp_delays_us) != 10:
                raise RuntimeError(f"{route.name}: stream smoke test failed: {run.errors}")

    # -- measurements -----------------------------------------------------------------------

    def wait_quiet(self) -> None:
        """Wait (within the run's budget) until other processes leave both CPUs alone.

        The benchmark may share its machine; a test suite starting on the proxy's core
        would be measured as the proxy's latency.
        """
        began = time.monotonic()
        while self.quiet_budget > time.monotonic() - began:
            before = harness.cpu_busy_snapshot()
            time.sleep(0.5)
            busy = harness.cpu_busy_percent(before, harness.cpu_busy_snapshot())
            if max(busy.values(), default=0.0) <= self.args.max_other_load:
                break
        self.quiet_budget -= time.monotonic() - began

    def sample(self, route: Route) -> CpuSample:
        """CPU counters for a measurement of ``route``; the server is ``route.pids()``."""
        server = route.pids()
        load = self.load_pids if route.on_proxy_cpu else sorted({*self.load_pids, *server})
        return cpu_sample(server, load)

    def settled(self, measure: Callable[[], RowT]) -> RowT:
        """``measure()`` on a quiet machine, again if other work competed with it."""
        attempt = 0
        while True:
            self.wait_quiet()
            attempt += 1
            began = time.monotonic()
            row = measure()
            row.attempts = attempt
            other = max(row.other_cpu0_percent, row.other_cpu1_percent)
            if (other <= self.args.max_other_load or attempt > self.args.retries
                    or self.quiet_budget <= 0):
                return row
            self.quiet_budget -= time.monotonic() - began
            log(f"  ({row.path}: others took {row.other_cpu0_percent:.0f} % of CPU0, "
                f"{row.other_cpu1_percent:.0f} % of CPU1; measuring again)")

    def load(self, route: Route, connections: int, seconds: int, *,
             pace_ms: int = 0) -> LoadRow:
        row = self.settled(lambda: self._load_once(route, connections, seconds, pace_ms))
        self.report.load.append(row)
        return row

    def _load_once(self, route: Route, connections: int, seconds: int,
                   pace_ms: int) -> LoadRow:
        script = self.script
        if pace_ms:
            script = harness.wrk_script(self.workdir / f"post-{pace_ms}ms.lua", REQUEST_BODY,
                                        REQUEST_HEADERS, pace_ms)
        harness.run_wrk(route.json_url, script, connections, self.args.warmup)
        before = self.sample(route)
        result = harness.run_wrk(route.json_url, script, connections, seconds)
        use = cpu_use(before, self.sample(route), route.on_proxy_cpu)
        row = LoadRow(path=route.name, concurrency=connections,
                      mode="paced" if pace_ms else "closed", requests=result.requests,
                      rps=round(result.rps, 1), errors=result.errors,
                      p50_ms=result.p50_us / 1000, p99_ms=result.p99_us / 1000,
                      max_ms=result.max_us / 1000,
                      server_cpu_seconds=round(use.server_seconds, 2) if route.pids() else None,
                      cpu_busy=use.busy, other_cpu0_percent=use.other_cpu0,
                      other_cpu1_percent=use.other_cpu1)
        log(f"  {row.path:<22} c={connections:<3} {row.mode:<6} {row.rps:>9.0f} req/s  "
            f"p50 {row.p50_ms:7.3f} ms  p99 {row.p99_ms:7.3f} ms  errors {row.errors}  "
            f"CPU0 / CPU1 busy (others) {busy_text(row)}")
        return row

    def load_matrix(self) -> None:
        for connections in self.args.concurrency:
            log(f"non-streaming POST, {connections} connection(s):")
            rows = [self.load(route, connections, self.args.duration) for route in self.routes]
            set_added(rows)
        if self.args.pace_rps:
            connections = 16
            pace_ms = max(1, round(connections * 1000 / self.args.pace_rps))
            log(f"non-streaming POST, {connections} connections paced to "
                f"~{self.args.pace_rps} req/s:")
            rows = [self.load(route, connections, self.args.duration, pace_ms=pace_ms)
                    for route in self.routes]
            set_added(rows)

    def stream(self, route: Route, streams: int, events: int, interval_ms: float) -> StreamRow:
        row = self.settled(lambda: self._stream_once(route, streams, events, interval_ms))
        self.report.streams.append(row)
        return row

    def _stream_once(self, route: Route, streams: int, events: int,
                     interval_ms: float) -> StreamRow:
        before = self.sample(route)
        run: StreamRun = measure_via_mock(self.stream_port, route.stream_port, route.stream_path,
                                          streams, events, interval_ms)
        use = cpu_use(before, self.sample(route), route.on_proxy_cpu)
        delays = run.delays_us
        row = StreamRow(path=route.name, streams=streams, events_per_stream=events,
                        interval_ms=interval_ms, events=len(delays) + len(run.ramp_delays_us),
                        events_expected=run.events_expected, failed_streams=run.failed_streams,
                        p50_ms=percentile(delays, 50) / 1000,
                        p99_ms=percentile(delays, 99) / 1000,
                        max_ms=max(delays, default=0.0) / 1000,
                        ramp_seconds=run.ramp_seconds, ramp_events=len(run.ramp_delays_us),
                        ramp_max_ms=max(run.ramp_delays_us, default=0.0) / 1000,
                        server_cpu_seconds=(round(use.server_seconds, 2)
                                            if route.on_proxy_cpu else None),
                        cpu_busy=use.busy, other_cpu0_percent=use.other_cpu0,
                        other_cpu1_percent=use.other_cpu1, errors=run.errors[:5])
        log(f"  {row.path:<22} {streams:>3} x {events} events every {interval_ms:g} ms: "
            f"p50 {row.p50_ms:.3f} ms  p99 {row.p99_ms:.3f} ms  max {row.max_ms:.3f} ms  "
            f"(max while opening {row.ramp_max_ms:.3f} ms; {row.events}/{row.events_expected}"
            f" events, {row.failed_streams} failed)")
        return row

    def stream_matrix(self) -> None:
        plans = [(1, self.args.events, self.args.interval_ms)]
        if self.args.streams > 1:
            plans += [(self.args.streams, self.args.events, interval)
                      for interval in self.args.many_interval_ms]
        for streams, events, interval in plans:
            log(f"streamed-event delay, {streams} concurrent stream(s):")
            rows = [self.stream(route, streams, events, interval) for route in self.routes]
            set_added(rows)

    def memory(self) -> None:
        for route in self.routes:
            if not route.on_proxy_cpu:
                continue
            pids = route.pids()
            self.report.memory_kib[route.name] = {
                "peak_rss_kib": harness.memory_kib(pids, "VmHWM"),
                "rss_kib": harness.memory_kib(pids, "VmRSS")}

    def scrape_lag(self) -> None:
        text = harness.http_get(f"http://127.0.0.1:{self.daemon_port}/metrics").decode()
        self.report.reactor_lag = parse_lag(text)

    def profile(self) -> None:
        """Sample the daemon with py-spy while 16 connections keep it busy."""
        py_spy = shutil.which("py-spy")
        if py_spy is None or self.daemon is None:
            self.report.notes.append("profile skipped: py-spy not installed (pip install py-spy)")
            return
        seconds = self.args.profile_seconds
        out = RESULTS_DIR / f"profile-{self.report.started}.txt"
        self.wait_quiet()
        log(f"profiling mnemomd with py-spy for {seconds} s under 16 connections")
        spy = self.children.start(
            "py-spy", [py_spy, "record", "--pid", str(self.daemon.pid), "--duration",
                       str(seconds), "--rate", "200", "--format", "raw", "--output", str(out)],
            cpus=self.cpus(LOAD_CPU), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        harness.run_wrk(self.mnemomd_route().json_url, self.script, 16, seconds + 1)
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            pass
        self.children.stop(spy)
        if out.exists():
            self.report.profile = summarise_profile(out.read_text())
            self.report.profile["file"] = out.name

    def info_run(self) -> None:
        """The same c=16 load with access logging on: the price of one log line per call."""
        self.stop_daemon()
        port = self.start_daemon(self.json_port, self.stream_port, "info")
        route = Route("mnemomd (LOG_LEVEL=info)",
                     f"http://127.0.0.1:{port}/anthropic/v1/messages", port, "",
                     self.daemon_pids, True)
        log("non-streaming POST, 16 connections, mnemomd with access logs:")
        self.load(route, 16, self.args.duration)
        self.stop_daemon()

    def twisted_fake_run(self) -> None:
        """The project's Twisted fake, called directly: why it is not the mock here."""
        log("non-streaming POST, 16 connections, directly to the Twisted fake (tests/fakes):")
        with run_fake_upstream(stderr_path=self.workdir / "fake.stderr") as url:
            fake = [p for p in harness.process_tree(os.getpid())
                    if b"tests.fakes.upstream" in harness.cmdline(p)]
            route = Route("direct (Twisted fake)", f"{url}/v1/messages", 0, "", lambda: fake)
            self.load(route, 16, min(self.args.duration, 5))


@dataclass
class CpuSample:
    """CPU counters at one instant: the server's, the load side's, and per CPU."""

    at: float
    server: float
    load_side: float
    cpus: dict[str, tuple[int, int, int]]


def cpu_sample(server_pids: list[int], load_pids: list[int]) -> CpuSample:
    """Take a :class:`CpuSample`; the load side is this script, its reaped children (wrk)
    and the mock upstreams."""
    mine = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_side = (mine.ru_utime + mine.ru_stime + reaped.ru_utime + reaped.ru_stime
                 + harness.cpu_seconds(load_pids))
    return CpuSample(time.monotonic(), harness.cpu_seconds(server_pids), load_side,
                     harness.cpu_busy_snapshot())


@dataclass
class CpuUse:
    """What one measurement cost, and what others took from each CPU meanwhile."""

    busy: dict[str, float]
    server_seconds: float
    other_cpu0: float
    other_cpu1: float


def cpu_use(before: CpuSample, after: CpuSample, server_on_cpu0: bool) -> CpuUse:
    """CPU time (%) taken by others: other processes, the hypervisor giving the core to
    another guest (steal), and the kernel's loopback work accounted as interrupts (a few
    per cent). More than that, and the measurement had competition.
    """
    busy = harness.cpu_busy_percent(before.cpus, after.cpus)
    span = max(after.at - before.at, 1e-6)
    server = after.server - before.server
    own0 = 100 * server / span if server_on_cpu0 else 0.0
    own1 = 100 * (after.load_side - before.load_side) / span
    taken0 = busy.get("cpu0", 0.0) + busy.get("cpu0_steal", 0.0)
    taken1 = busy.get("cpu1", 0.0) + busy.get("cpu1_steal", 0.0)
    return CpuUse(busy, server, round(max(0.0, taken0 - own0), 1),
                  round(max(0.0, taken1 - own1), 1))


def set_added(rows: list[Any]) -> None:
    """Fill the added latency of each proxied row against the direct row (the first)."""
    direct = rows[0]
    for row in rows[1:]:
        row.added_p50_ms = round(row.p50_ms - direct.p50_ms, 3)
        row.added_p99_ms = round(row.p99_ms - direct.p99_ms, 3)


def parse_lag(metrics: str) -> dict[str, Any]:
    """The reactor-lag histogram: sample count and the smallest bucket holding them all."""
    buckets: list[tuple[float, float]] = []
    count = 0.0
    for line in metrics.splitlines():
        match = re.match(rf'{LAG_METRIC}_bucket{{le="([^"]+)"}} (\S+)', line)
        if match:
            buckets.append((float(match.group(1)), float(match.group(2))))
        elif line.startswith(f"{LAG_METRIC}_count"):
            count = float(line.split()[-1])
    buckets.sort()
    reached = next((le for le, n in buckets if n >= count), float("inf"))
    below = max((le for le, _ in buckets if le < reached), default=0.0)
    over_50ms = count - next((n for le, n in buckets if le >= 0.05), count)
    return {"samples": int(count), "max_bucket_le_seconds": reached,
            "max_bucket_above_seconds": below,
            "samples_over_50ms": int(over_50ms),
            "buckets": {f"{le:g}": int(n) for le, n in buckets}}


def summarise_profile(raw: str, top: int = 20) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    self_counts: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        if any(f.startswith("Thread._bootstrap ") for f in frames):
            continue  # an idle pool thread: only the reactor thread does the work
        total += count
        if frames:
            self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count

    def top_of(counts: dict[str, int]) -> list[list[Any]]:
        ranked = sorted(counts.items(), key=lambda item: -item[1])[:top]
        return [[name, round(100 * n / max(total, 1), 1)] for name, n in ranked]

    return {"samples": total, "self_percent": top_of(self_counts),
            "inclusive_percent": top_of(inclusive)}


# -- the report ---------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.3f}"


def busy_text(row: LoadRow | StreamRow) -> str:
    """``CPU0 busy (of it, others) / CPU1 busy (others)``, in per cent, steal included."""
    busy = row.cpu_busy
    cpu0 = busy.get("cpu0", 0) + busy.get("cpu0_steal", 0)
    cpu1 = busy.get("cpu1", 0) + busy.get("cpu1_steal", 0)
    return (f"{cpu0:.0f} ({row.other_cpu0_percent:.0f}) / "
            f"{cpu1:.0f} ({row.other_cpu1_percent:.0f})")


def markdown(report: Report) -> str:
    lines = ["### Non-streaming `POST /v1/messages` (wrk, 1 thread, keep-alive)", "",
             "| connections | path | req/s | p50 ms | p99 ms | added p50 | added p99 | "
             "server CPU ms / 1000 calls | calls/s per core | "
             "CPU0 busy (others) / CPU1 busy (others) % |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in report.load:
        conn = f"{row.concurrency}" + (" paced" if row.mode == "paced" else "")
        busy = busy_text(row)
        errors = f" ({row.errors} errors)" if row.errors else ""
        errors += f" [{row.attempts} tries]" if row.attempts > 1 else ""
        lines.append(
            f"| {conn} | {row.path}{errors} | {row.rps:,.0f} | {row.p50_ms:.3f} | "
            f"{row.p99_ms:.3f} | {signed(row.added_p50_ms)} | {signed(row.added_p99_ms)} | "
            f"{fmt(row.cpu_ms_per_1000, 0)} | {fmt(row.calls_per_core_second, 0)} | {busy} |")
    lines += ["", "### Streamed-event delay (arrival minus the upstream's send time)", "",
              "| streams | events x interval | path | events | p50 ms | p99 ms | max ms | "
              "added p50 | added p99 | max while opening streams, ms | "
              "server CPU µs / event | CPU0 busy (others) / CPU1 busy (others) % |",
              "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for s in report.streams:
        failed = f" ({s.failed_streams} failed)" if s.failed_streams else ""
        failed += f" [{s.attempts} tries]" if s.attempts > 1 else ""
        ramp = (f"{s.ramp_max_ms:.3f} ({s.ramp_events} events, {s.ramp_seconds:g} s)"
                if s.ramp_events else "–")
        lines.append(
            f"| {s.streams} | {s.events_per_stream} x {s.interval_ms:g} ms | {s.path}{failed} | "
            f"{s.events}/{s.events_expected} | {s.p50_ms:.3f} | {s.p99_ms:.3f} | "
            f"{s.max_ms:.3f} | {signed(s.added_p50_ms)} | {signed(s.added_p99_ms)} | "
            f"{ramp} | {fmt(s.cpu_us_per_event, 0)} | "
            f"{busy_text(s)} |")
    lines += ["", "### Memory and reactor", ""]
    for name, mem in report.memory_kib.items():
        lines.append(f"- {name}: peak RSS (VmHWM) {mem['peak_rss_kib'] / 1024:.1f} MiB, "
                     f"RSS at the end {mem['rss_kib'] / 1024:.1f} MiB")
    lag = report.reactor_lag
    if lag:
        lines.append(f"- mnemomd reactor lag (`{LAG_METRIC}`): {lag['samples']} samples, "
                     f"the largest between {lag['max_bucket_above_seconds'] * 1000:g} and "
                     f"{lag['max_bucket_le_seconds'] * 1000:g} ms, "
                     f"{lag['samples_over_50ms']} over 50 ms")
    if report.profile:
        lines += ["", f"### Profile (py-spy, {report.profile['samples']} samples, self time)",
                  ""]
        lines += [f"- {pct:5.1f} %  {name}" for name, pct in report.profile["self_percent"][:12]]
    idle = report.machine.get("idle_cpu_busy_percent", {})
    if idle:
        lines.append("- CPU busy before the run (other processes on the machine): "
                     + ", ".join(f"{cpu} {pct:.0f} %" for cpu, pct in idle.items()
                                 if "steal" not in cpu))
    lines += [f"- note: {note}" for note in report.notes]
    return "\n".join(lines) + "\n"


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    env = {**os.environ, **args.daemon_env}
    version = subprocess.run([*args.daemon_command, "version"], capture_output=True,
                             text=True, timeout=60, check=False, cwd=args.daemon_cwd,
                             env=env).stdout.strip()
    tools = {}
    for tool, flag in (("nginx", "-v"), ("wrk", "--version")):
        if shutil.which(tool):
            out = subprocess.run([tool, flag], capture_output=True, text=True, timeout=10,
                                 check=False)
            tools[tool] = (out.stdout + out.stderr).strip().splitlines()[0]
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "mnemomd": version,
            "mnemomd_source": args.source, **tools}


# -- main -----------------------------------------------------------------------------------


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="short runs (3 s, 50 events per stream): a smoke test, not a result")
    parser.add_argument("--duration", type=int, default=None,
                        help="seconds per load run (default 10, quick 3)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--pace-rps", type=int, default=500,
                        help="also run 16 connections paced to about this many req/s (0: off)")
    parser.add_argument("--streams", type=int, default=256,
                        help="concurrent streams in the many-streams run (1: skip it)")
    parser.add_argument("--events", type=int, default=None,
                        help="events per stream (default 200, quick 50)")
    parser.add_argument("--interval-ms", type=float, default=5.0,
                        help="gap between events of the single stream")
    parser.add_argument("--many-interval-ms", type=float, nargs="+", default=[20.0, 50.0],
                        help="gap between events of each of the many streams (one run each)")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="do not pin processes to CPUs")
    parser.add_argument("--no-info-run", dest="info_run", action="store_false",
                        help="skip the extra run with LOG_LEVEL=info")
    parser.add_argument("--max-other-load", type=float, default=10.0,
                        help="CPU %% other processes may use: wait for less before each "
                             "measurement, measure again if they took more of CPU0")
    parser.add_argument("--retries", type=int, default=2,
                        help="extra attempts for a measurement disturbed by other processes")
    parser.add_argument("--quiet-budget", type=float, default=240.0,
                        help="seconds the whole run may spend waiting and measuring again")
    parser.add_argument("--workers", type=int, default=1,
                        help="run mnemomd with MNEMOM_WORKERS=N (needs Redis, see "
                             "--redis-url; the workers are not pinned to a CPU)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15",
                        help="the KV store of --workers above 1")
    parser.add_argument("--profile", action="store_true",
                        help="sample mnemomd with py-spy under load at the end")
    parser.add_argument("--profile-seconds", type=int, default=10)
    parser.add_argument("--rev", default=None,
                        help="benchmark the daemon as committed at this git revision (exported "
                             "to a temporary directory) instead of the installed one")
    args = parser.parse_args(argv)
    args.duration = args.duration or (3 if args.quick else 10)
    args.events = args.events or (50 if args.quick else 200)
    args.warmup = 1 if args.quick else 2
    args.nginx = shutil.which("nginx") is not None
    if (os.cpu_count() or 1) < 2 or shutil.which("taskset") is None:
        args.pin = False
    return args


def select_daemon(args: argparse.Namespace, workdir: Path) -> None:
    """Decide which daemon runs: the installed one, or ``--rev`` exported from git.

    Exporting a revision lets the benchmark measure committed code while the work tree is
    being edited, and compare revisions.
    """
    git = ["git", "-C", str(REPO_ROOT)]
    if args.rev is None:
        args.daemon_command, args.daemon_cwd, args.daemon_env = mnemomd_command(), REPO_ROOT, {}
        described = subprocess.run([*git, "describe", "--always", "--dirty"],
                                   capture_output=True, text=True, check=False).stdout.strip()
        args.source = f"installed (work tree {described or 'unknown'})"
        return
    commit = subprocess.run([*git, "rev-parse", "--verify", f"{args.rev}^{{commit}}"],
                            capture_output=True, text=True, check=True).stdout.strip()
    top = subprocess.run([*git, "ls-tree", "--name-only", commit], capture_output=True,
                         text=True, check=True).stdout.split()
    wanted = [name for name in ("mnemomd", "migrations") if name in top]
    archive = subprocess.run([*git, "archive", "--format=tar", commit, *wanted],
                             capture_output=True, check=True).stdout
    source = workdir / "src"
    source.mkdir()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(source, filter="data")
    # ``python -m`` puts the working directory first on sys.path: run from the export.
    args.daemon_command, args.daemon_cwd = [sys.executable, "-m", "mnemomd"], source
    args.daemon_env = {"PYTHONPATH": str(source)}
    args.source = f"git {commit[:12]} (exported)"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def cleanup_on_signals() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C: the ``finally`` blocks stop every child."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        log("wrk is needed as the load generator: apt-get install -y wrk")
        return 2
    if args.pin:
        os.sched_setaffinity(0, {int(LOAD_CPU)})
    workdir = Path(tempfile.mkdtemp(prefix="mnemomd-bench-"))
    children = harness.Children()
    with cleanup_on_signals():
        try:
            return run(args, argv, workdir, children)
        finally:
            children.stop_all()
            shutil.rmtree(workdir, ignore_errors=True)


def run(args: argparse.Namespace, argv: list[str] | None, workdir: Path,
        children: harness.Children) -> int:
    """The whole benchmark; the caller stops the children and removes ``workdir``."""
    started = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    shown = ["python", "bench/run.py", *(sys.argv[1:] if argv is None else argv)]
    try:
        select_daemon(args, workdir)
    except (OSError, subprocess.CalledProcessError) as exc:
        log(f"cannot export mnemomd at {args.rev}: {exc}")
        return 2
    report = Report(started=started, command=" ".join(shown), machine=machine_info(args),
                    settings={k: str(v) if isinstance(v, Path) else v
                              for k, v in vars(args).items()})
    if args.pin:
        report.notes.append(f"mnemomd and nginx-as-proxy pinned to CPU {PROXY_CPU}; wrk, "
                            f"the mock upstreams and this script to CPU {LOAD_CPU} (taskset)")
    if not args.nginx:
        report.notes.append("nginx not installed: no reference proxy, asyncio JSON mock")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    before = harness.cpu_busy_snapshot()
    time.sleep(2)
    report.machine["idle_cpu_busy_percent"] = harness.cpu_busy_percent(
        before, harness.cpu_busy_snapshot())
    begun = time.monotonic()
    bench = Bench(args, workdir, children, report)
    bench.setup()
    log(f"json mock: {report.settings['json_mock']}; pinned: {args.pin}")
    bench.load_matrix()
    bench.stream_matrix()
    bench.memory()
    bench.scrape_lag()
    if args.profile:
        bench.profile()
    if args.info_run:
        bench.info_run()
    bench.twisted_fake_run()
    children.stop_all()
    report.settings["wall_seconds"] = round(time.monotonic() - begun, 1)
    text = markdown(report)
    print(text)
    (RESULTS_DIR / f"{started}.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    (RESULTS_DIR / f"{started}.md").write_text(text)
    log(f"results: bench/results/{started}.json and .md")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; child processes stopped")
        sys.exit(130)
