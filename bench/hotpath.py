"""The path users run, under load: the full integrity path side by side with the bare
proxy, ``enforce``, PostgreSQL + Redis, N workers, nginx, the mock direct and a Python
peer (LiteLLM's pass-through), in one run; then a saturation run and a paced run.

    python -m bench.hotpath [--quick] [--workers N] [--engines sqlite postgres]

Every answer of the mock upstream (nginx ``return 200``) carries a thinking block above
the default minimum evidence, so the default configuration analyses every call: a fake
analysis model (``tests/fakes/analysis.py``) answers after ``--analysis-ms``, and every
call records a checkpoint and a trace-outbox row. Then:

* **matrix**: closed-loop wrk at 1 and 16 connections against every target;
* **saturation**: the full path at 16 connections for ``--saturation-seconds``, as
  back-to-back 10 s wrk windows, RSS sampled every second: p99 per window, RSS trend;
* **overload**: twice the connections for ``--overload-seconds``, the same readings,
  and the daemon's bookkeeping metrics (stored, spooled, shed) at the end;
* **paced**: 16 connections paced to half the measured capacity, direct and through the
  full path: the added p50/p99.

wrk, nginx and LiteLLM are installed when missing (``apt-get`` as root; LiteLLM in its own
venv under ``~/.cache/mnemomd-bench``, outside the repository); without them their rows
are skipped and the report says why. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench import harness, mockup  # noqa: E402
from bench.run import (  # noqa: E402
    API_KEY,
    LOAD_CPU,
    PROXY_CPU,
    REQUEST_BODY,
    REQUEST_HEADERS,
    RESULTS_DIR,
    cleanup_on_signals,
    summarise_profile,
)
from tests.e2e.daemon import daemon_environment, mnemomd_command  # noqa: E402

CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mnemomd-bench"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_DATABASE = "mnemomd_bench"
REDIS_URL = "redis://127.0.0.1:6379/13"
#: About 200 estimated tokens: above the default minimum evidence (100), so analysed.
THINKING = ("The user asks for a short summary of a filler text. I should read the text, "
            "note that it carries no real content, and say so plainly without inventing "
            "facts. Nothing here touches tools, private data or anything outside the task. ") * 4
WINDOW_SECONDS = 10


# -- pure pieces ----------------------------------------------------------------------------


def thinking_answer(base: bytes, thinking: str = THINKING) -> bytes:
    """The canned Anthropic answer with ``thinking`` as its thinking block."""
    message = json.loads(base)
    for block in message["content"]:
        if block.get("type") == "thinking":
            block["thinking"] = thinking
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


def slope(values: Sequence[float]) -> float:
    """Least-squares slope of ``values`` against their index (0 for fewer than 2)."""
    n = len(values)
    if n < 2:
        return 0.0
    mean_x = (n - 1) / 2
    mean_y = sum(values) / n
    num = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values))
    den = sum((i - mean_x) ** 2 for i in range(n))
    return num / den


@dataclass
class Trend:
    """How a series behaves over a run: its range, and whether it grows."""

    first: float
    last: float
    low: float
    high: float
    median: float
    #: Largest distance from the median, in per cent of it.
    spread_percent: float
    #: Fitted change from the first to the last sample, in per cent of the median.
    drift_percent: float


def trend(values: Sequence[float]) -> Trend:
    """The :class:`Trend` of ``values`` (at least one)."""
    if not values:
        raise ValueError("no samples")
    median = statistics.median(values)
    scale = median or 1.0
    spread = max(abs(v - median) for v in values) / scale * 100
    drift = slope(values) * (len(values) - 1) / scale * 100
    return Trend(first=values[0], last=values[-1], low=min(values), high=max(values),
                 median=median, spread_percent=round(spread, 1),
                 drift_percent=round(drift, 1))


def flat(series: Trend, tolerance_percent: float) -> bool:
    """Whether a series stays within ``tolerance_percent`` of its median and does not
    drift by more than that over the run."""
    return (series.spread_percent <= tolerance_percent
            and abs(series.drift_percent) <= tolerance_percent)


def pace_ms(connections: int, rate: float) -> int:
    """The mean gap per connection (wrk ``delay``) that offers about ``rate`` calls/s."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    return max(1, round(connections * 1000 / rate))


def metric_values(text: str, name: str) -> dict[str, float]:
    """Samples of one metric in Prometheus text: ``{labels text: value}``."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(rf"{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if match:
            values[match.group(1) or ""] = float(match.group(2))
    return values


# -- results --------------------------------------------------------------------------------


@dataclass
class Row:
    target: str
    connections: int
    mode: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_ms_per_call: float | None = None
    added_p50_ms: float | None = None
    added_p99_ms: float | None = None
    #: The target's own CPU use (% of one CPU), and each CPU's busy % (everything on it).
    server_cpu_percent: float = 0.0
    cpu_busy: dict[str, float] = field(default_factory=dict)


@dataclass
class LongRun:
    name: str
    connections: int
    windows: list[dict[str, float]] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    p99_trend: dict[str, float] = field(default_factory=dict)
    rss_trend: dict[str, float] = field(default_factory=dict)
    errors: int = 0
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class Report:
    started: str
    command: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    long_runs: list[LongRun] = field(default_factory=list)
    paced: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# -- tools ------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ensure_debian_tools(packages: dict[str, str], notes: list[str]) -> None:
    """Install missing Debian packages (tool -> package) with apt-get when root."""
    missing = [pkg for tool, pkg in packages.items() if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        notes.append(f"not installed and cannot install: {', '.join(missing)}")
        return
    log(f"installing {' '.join(missing)} (apt-get)")
    command = ["apt-get", "install", "-y", "-q", *missing]
    if subprocess.run(command, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, check=False)
        subprocess.run(command, capture_output=True, check=False)


def ensure_litellm(notes: list[str]) -> Path | None:
    """LiteLLM's proxy in its own venv in the cache directory; None if it cannot be had."""
    venv = CACHE_DIR / "litellm-venv"
    exe = venv / "bin" / "litellm"
    if exe.exists():
        return exe
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    log(f"installing litellm[proxy] into {venv} (once)")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "litellm[proxy]"],
                       check=True, timeout=1800, capture_output=True)
    except (subprocess.SubprocessError, OSError) as exc:
        notes.append(f"LiteLLM could not be installed ({exc}): its rows are skipped")
        return None
    return exe if exe.exists() else None


def reset_postgres(notes: list[str]) -> str | None:
    """A fresh ``mnemomd_bench`` database; its URL, or None without PostgreSQL."""
    try:
        import psycopg2
    except ImportError:
        notes.append("psycopg2 missing: PostgreSQL rows skipped")
        return None
    try:
        conn = psycopg2.connect(PG_ADMIN_URL, connect_timeout=5)
    except psycopg2.Error as exc:
        notes.append(f"PostgreSQL unavailable ({str(exc).strip()}): its rows skipped")
        return None
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)")
        cur.execute(f"CREATE DATABASE {PG_DATABASE}")
    conn.close()
    return f"postgresql://postgres@127.0.0.1:5432/{PG_DATABASE}"


def reset_redis(notes: list[str]) -> str | None:
    """Redis database 13, emptied; its URL, or None without Redis."""
    if shutil.which("redis-cli") is None:
        notes.append("redis-cli missing: Redis rows skipped")
        return None
    out = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-n", "13", "flushdb"],
                         capture_output=True, text=True, timeout=10, check=False)
    if out.stdout.strip() != "OK":
        notes.append(f"Redis unavailable ({out.stderr.strip() or out.stdout.strip()})")
        return None
    return REDIS_URL


# -- the benchmark ------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    url: str
    pids: Callable[[], list[int]]
    env: dict[str, str] = field(default_factory=dict)
    workers: int = 1
    proc: subprocess.Popen[bytes] | None = None


def slug(name: str) -> str:
    return re.sub(r"\W+", "-", name).strip("-")


class HotPath:
    def __init__(self, args: argparse.Namespace, workdir: Path, children: harness.Children,
                 report: Report) -> None:
        self.args = args
        self.workdir = workdir
        self.children = children
        self.report = report
        self.script = harness.wrk_script(workdir / "post.lua", REQUEST_BODY, REQUEST_HEADERS,
                                         sessions=args.sessions)
        self.body = thinking_answer(mockup.anthropic_json())
        self.mock_port = 0
        self.mock_pids: list[int] = []
        self.analysis_url = ""
        self.daemon: subprocess.Popen[bytes] | None = None
        self.daemon_port = 0

    def cpus(self, which: str) -> str | None:
        return which if self.args.pin else None

    # -- parties -------------------------------------------------------------------------

    def start_mock(self) -> None:
        port = harness.free_port()
        directory = self.workdir / "nginx-mock"
        proc = harness.start_nginx(self.children, "nginx mock", directory,
                                   harness.nginx_mock_config(directory, port, self.body),
                                   port, self.cpus(LOAD_CPU))
        self.mock_port, self.mock_pids = port, harness.process_tree(proc.pid)

    def start_analysis(self) -> None:
        proc = self.children.start(
            "fake analysis", [sys.executable, "-m", "tests.fakes.analysis", "--port", "0",
                              "--no-record"],
            cpus=self.cpus(LOAD_CPU), cwd=REPO_ROOT, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        port = int(harness.read_json_line(proc.stdout, 15)["port"])
        self.analysis_url = f"http://127.0.0.1:{port}"
        request_body = json.dumps({"actions": [],
                                   "default": f"delay:{self.args.analysis_ms:g}"}).encode()
        harness.http_post(f"{self.analysis_url}/_fake/script", request_body,
                          {"content-type": "application/json"})

    def start_nginx_proxy(self) -> Target:
        port = harness.free_port()
        directory = self.workdir / "nginx-proxy"
        proc = harness.start_nginx(
            self.children, "nginx proxy", directory,
            harness.nginx_proxy_config(directory, port, self.mock_port, self.mock_port), port,
            self.cpus(PROXY_CPU))
        pids = harness.process_tree(proc.pid)
        return Target("nginx proxy_pass", f"http://127.0.0.1:{port}/anthropic/v1/messages",
                      lambda: pids, proc=proc)

    def start_litellm(self, exe: Path) -> Target | None:
        port = harness.free_port()
        config = self.workdir / "litellm.yaml"
        config.write_text(
            "general_settings:\n"
            "  pass_through_endpoints:\n"
            "    - path: /bench/v1/messages\n"
            f"      target: http://127.0.0.1:{self.mock_port}/v1/messages\n"
            "      forward_headers: true\n"
            "litellm_settings:\n"
            "  telemetry: false\n")
        # The benchmark's API key is the proxy's master key: a pass-through call is
        # authenticated by LiteLLM (x-api-key), and any other key is looked up in a
        # database the benchmark does not give it ("No connected db").
        env = {**os.environ, "LITELLM_MASTER_KEY": API_KEY,
               "LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
               "LITELLM_TELEMETRY": "False", "DISABLE_SCHEMA_UPDATE": "true"}
        env.pop("DATABASE_URL", None)
        log_path = self.workdir / "litellm.log"
        with open(log_path, "wb") as out:
            proc = self.children.start(
                "litellm", [str(exe), "--config", str(config), "--host", "127.0.0.1",
                            "--port", str(port), "--num_workers", "1"],
                cpus=self.cpus(PROXY_CPU), env=env, stdout=out, stderr=subprocess.STDOUT)
        # Not /anthropic/…: that is LiteLLM's own Anthropic route, which wants a
        # provider credential configured on the proxy.
        url = f"http://127.0.0.1:{port}/bench/v1/messages"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status, body = harness.http_post(url, REQUEST_BODY, REQUEST_HEADERS)
                if status == 200 and json.loads(body).get("content"):
                    return Target("LiteLLM pass-through", url,
                                  lambda: harness.process_tree(proc.pid), proc=proc)
            except (OSError, ValueError):
                time.sleep(0.5)
        self.report.notes.append("LiteLLM did not answer through its pass-through route: "
                                 + log_path.read_text(errors="replace")[-300:])
        self.children.stop(proc)
        return None

    def start_daemon(self, target: Target) -> None:
        env = daemon_environment(self.workdir / slug(target.name), {
            "LOG_LEVEL": "warn", "MNEMOM_OFFLINE": "true",
            "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{self.mock_port}",
            "ANALYSIS_BASE_URL": self.analysis_url, "ANTHROPIC_API_KEY": "sk-analysis",
            **({"MNEMOM_WORKERS": str(target.workers)} if target.workers > 1 else {}),
            **target.env})
        port = harness.free_port()
        log_path = self.workdir / f"{slug(target.name)}.log"
        with open(log_path, "wb") as out:
            self.daemon = self.children.start(
                "mnemomd", [*mnemomd_command(), "run", "--host", "127.0.0.1", "--port",
                            str(port)],
                cpus=self.cpus(PROXY_CPU) if target.workers == 1 else None,
                cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        harness.wait_for_health(f"http://127.0.0.1:{port}/health/live", self.daemon, 60,
                                log_path)
        self.daemon_port = port
        target.url = f"http://127.0.0.1:{port}/anthropic/v1/messages"
        status, body = harness.http_post(target.url, REQUEST_BODY, REQUEST_HEADERS)
        if status != 200 or body != self.body:
            raise RuntimeError(f"{target.name}: unexpected answer {status} {body[:200]!r}")

    def daemon_pids(self) -> list[int]:
        return harness.process_tree(self.daemon.pid) if self.daemon is not None else []

    def stop_daemon(self) -> None:
        if self.daemon is not None:
            self.children.stop(self.daemon)
            self.daemon = None

    def scrape(self) -> str:
        return harness.http_get(f"http://127.0.0.1:{self.daemon_port}/metrics").decode()

    # -- measurements ----------------------------------------------------------------------

    def wait_quiet(self) -> None:
        deadline = time.monotonic() + self.args.quiet_wait
        while time.monotonic() < deadline:
            before = harness.cpu_busy_snapshot()
            time.sleep(0.5)
            busy = harness.cpu_busy_percent(before, harness.cpu_busy_snapshot())
            if max((v for k, v in busy.items() if "steal" not in k), default=0) <= 10:
                return

    def wrk(self, target: Target, connections: int, seconds: int, mode: str = "closed",
            pace: int = 0) -> Row:
        script = self.script
        if pace:
            script = harness.wrk_script(self.workdir / f"post-{pace}.lua", REQUEST_BODY,
                                        REQUEST_HEADERS, pace, self.args.sessions)
        pids = target.pids()
        busy_before = harness.cpu_busy_snapshot()
        cpu_before = harness.cpu_seconds(pids)
        began = time.monotonic()
        result = harness.run_wrk(target.url, script, connections, seconds)
        span = time.monotonic() - began
        used = harness.cpu_seconds(target.pids()) - cpu_before
        busy = harness.cpu_busy_percent(busy_before, harness.cpu_busy_snapshot())
        row = Row(target=target.name, connections=connections, mode=mode,
                  rps=round(result.rps, 1), p50_ms=result.p50_us / 1000,
                  p99_ms=result.p99_us / 1000, errors=result.errors,
                  cpu_ms_per_call=(round(1000 * used / result.requests, 3)
                                   if result.requests and pids else None),
                  server_cpu_percent=round(100 * used / span, 1),
                  cpu_busy={k: v for k, v in busy.items() if "steal" not in k})
        log(f"  {target.name:<34} c={connections:<3} {mode:<7} {row.rps:>8.0f}/s "
            f"p50 {row.p50_ms:7.3f} p99 {row.p99_ms:8.3f} ms errors {row.errors}")
        return row

    def matrix(self, target: Target, direct: list[Row]) -> None:
        for index, connections in enumerate(self.args.concurrency):
            harness.run_wrk(target.url, self.script, connections, self.args.warmup)
            self.wait_quiet()
            row = self.wrk(target, connections, self.args.duration)
            if index < len(direct) and direct[index] is not row:
                row.added_p50_ms = round(row.p50_ms - direct[index].p50_ms, 3)
                row.added_p99_ms = round(row.p99_ms - direct[index].p99_ms, 3)
            self.report.rows.append(row)

    def long_run(self, name: str, target: Target, connections: int, seconds: int) -> LongRun:
        """Back-to-back 10 s wrk windows with RSS sampled every second."""
        run = LongRun(name=name, connections=connections)
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(1.0):
                run.rss_mib.append(round(harness.memory_kib(target.pids(), "VmRSS") / 1024, 1))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            for _ in range(max(1, seconds // WINDOW_SECONDS)):
                row = self.wrk(target, connections, WINDOW_SECONDS, mode=name)
                run.errors += row.errors
                run.windows.append({"rps": row.rps, "p50_ms": row.p50_ms,
                                    "p99_ms": row.p99_ms, "errors": row.errors})
        finally:
            stop.set()
            sampler.join(5)
        run.p99_trend = asdict(trend([w["p99_ms"] for w in run.windows]))
        if run.rss_mib:
            run.rss_trend = asdict(trend(run.rss_mib))
        text = self.scrape()
        for metric in ("gateway_bookkeeping_writes_total", "gateway_bookkeeping_shed_total",
                       "gateway_write_queue_depth", "gateway_spool_depth"):
            run.metrics[metric] = metric_values(text, metric)
        self.report.long_runs.append(run)
        return run

    # -- the whole run -------------------------------------------------------------------------

    def run(self) -> None:
        args, notes = self.args, self.report.notes
        self.start_mock()
        self.start_analysis()
        direct = Target("mock direct", f"http://127.0.0.1:{self.mock_port}/v1/messages",
                        lambda: self.mock_pids)
        log("references:")
        direct_rows_start = len(self.report.rows)
        self.matrix(direct, [])
        direct_rows = self.report.rows[direct_rows_start:]
        references = [self.start_nginx_proxy()]
        if args.litellm:
            exe = ensure_litellm(notes)
            peer = self.start_litellm(exe) if exe is not None else None
            if peer is not None:
                references.append(peer)
        for target in references:
            self.matrix(target, direct_rows)
        for target in references:  # out of the way of the daemon's CPU
            if target.proc is not None:
                self.children.stop(target.proc)

        configs = self.configs()
        for target in configs:
            log(f"{target.name}:")
            self.start_daemon(target)
            target.pids = self.daemon_pids
            try:
                self.matrix(target, direct_rows)
            finally:
                self.stop_daemon()

        full = configs[0]
        capacity = next((r.rps for r in self.report.rows
                         if r.target == full.name and r.connections == 16), 0.0)
        log(f"saturation: {full.name}, 16 connections, {args.saturation_seconds} s")
        self.start_daemon(full)
        try:
            if args.profile:
                self.profile(full)
            self.long_run("saturation", full, 16, args.saturation_seconds)
        finally:
            self.stop_daemon()
        if args.overload_seconds:
            log(f"overload: {full.name}, 32 connections, {args.overload_seconds} s")
            self.start_daemon(full)
            try:
                self.long_run("overload", full, 32, args.overload_seconds)
            finally:
                self.stop_daemon()
        if capacity:
            rate = capacity / 2
            gap = pace_ms(16, rate)
            log(f"paced: 16 connections at about {rate:.0f} calls/s")
            self.report.settings["paced_rate"] = rate
            self.wait_quiet()
            base = self.wrk(direct, 16, args.duration, mode="paced", pace=gap)
            self.start_daemon(full)
            try:
                harness.run_wrk(full.url, self.script, 16, args.warmup)
                self.wait_quiet()
                row = self.wrk(full, 16, args.duration, mode="paced", pace=gap)
            finally:
                self.stop_daemon()
            row.added_p50_ms = round(row.p50_ms - base.p50_ms, 3)
            row.added_p99_ms = round(row.p99_ms - base.p99_ms, 3)
            self.report.paced += [base, row]

    def profile(self, target: Target) -> None:
        """py-spy (in the benchmark's environment only) on the daemon for 10 s at c=16."""
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(py_spy).exists() or self.daemon is None:
            self.report.notes.append("profile skipped: py-spy not installed")
            return
        out = RESULTS_DIR / f"profile-hotpath-{self.report.started}.txt"
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        spy = self.children.start(
            "py-spy", [py_spy, "record", "--pid", str(self.daemon.pid), "--duration", "10",
                       "--rate", "200", "--format", "raw", "--output", str(out)],
            cpus=self.cpus(LOAD_CPU), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        harness.run_wrk(target.url, self.script, 16, 12)
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            pass
        self.children.stop(spy)
        if out.exists():
            summary = summarise_profile(out.read_text(), top=25)
            self.report.settings["profile"] = summary
            log("profile (inclusive %): " + "; ".join(
                f"{name} {pct}" for name, pct in summary["inclusive_percent"][:25]))

    def configs(self) -> list[Target]:
        none: Callable[[], list[int]] = list
        configs = [
            Target("mnemomd full path (default, SQLite)", "", none),
            Target("mnemomd bare (AIP and AAP off)", "", none,
                   {"AIP_ENABLED": "false", "AAP_ENABLED": "false"}),
            Target("mnemomd enforce (held answers)", "", none,
                   {"AIP_DEFAULT_ENFORCEMENT": "enforce"}),
            Target("mnemomd full path, below min evidence", "", none,
                   {"AIP_MIN_EVIDENCE_TOKENS": "100000"}),
        ]
        if "postgres" in self.args.engines:
            db, kv = reset_postgres(self.report.notes), reset_redis(self.report.notes)
            if db and kv:
                env = {"DATABASE_URL": db, "REDIS_URL": kv}
                configs.append(Target("mnemomd full path, PostgreSQL + Redis", "", none, env))
                if self.args.workers > 1:
                    configs.append(Target(
                        f"mnemomd full path, PostgreSQL + Redis, {self.args.workers} workers",
                        "", none, env, workers=self.args.workers))
        return configs


# -- the report ---------------------------------------------------------------------------------


def signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.2f}"


def markdown(report: Report) -> str:
    lines = ["| target | connections | calls/s | p50 ms | p99 ms | added p50 | added p99 | "
             "CPU ms / call | errors | CPU0 / CPU1 busy % |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in report.rows + report.paced:
        conns = f"{r.connections}" + (" paced" if r.mode == "paced" else "")
        cpu = "–" if r.cpu_ms_per_call is None else f"{r.cpu_ms_per_call:.3f}"
        lines.append(f"| {r.target} | {conns} | {r.rps:,.0f} | {r.p50_ms:.2f} | "
                     f"{r.p99_ms:.2f} | {signed(r.added_p50_ms)} | {signed(r.added_p99_ms)} | "
                     f"{cpu} | {r.errors} | {r.cpu_busy.get('cpu0', 0):.0f} / "
                     f"{r.cpu_busy.get('cpu1', 0):.0f} |")
    for run in report.long_runs:
        lines += ["", f"### {run.name}: {run.connections} connections, "
                      f"{len(run.windows)} windows of {WINDOW_SECONDS} s", "",
                  "| window | calls/s | p50 ms | p99 ms |", "|---:|---:|---:|---:|"]
        lines += [f"| {i + 1} | {w['rps']:,.0f} | {w['p50_ms']:.2f} | {w['p99_ms']:.2f} |"
                  for i, w in enumerate(run.windows)]
        p99, rss = run.p99_trend, run.rss_trend
        lines.append("")
        lines.append(f"- p99 per window: {p99['low']:.1f}–{p99['high']:.1f} ms, median "
                     f"{p99['median']:.1f}, fitted drift {p99['drift_percent']:+.1f} %")
        if rss:
            lines.append(f"- RSS: {rss['first']:.1f} → {rss['last']:.1f} MiB (low "
                         f"{rss['low']:.1f}, high {rss['high']:.1f}, spread "
                         f"±{rss['spread_percent']:.1f} % of the median, fitted drift "
                         f"{rss['drift_percent']:+.1f} %)")
        lines.append(f"- failed calls: {run.errors}")
        for metric, values in run.metrics.items():
            shown = ", ".join(f"{k or 'value'} {v:g}" for k, v in values.items()) or "none"
            lines.append(f"- `{metric}`: {shown}")
    lines += [""] + [f"- note: {n}" for n in report.notes]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="3 s runs, 30 s saturation, no overload: a smoke test")
    parser.add_argument("--duration", type=int, default=None, help="seconds per matrix run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--analysis-ms", type=float, default=20.0,
                        help="how long the fake analysis model takes to answer")
    parser.add_argument("--saturation-seconds", type=int, default=None)
    parser.add_argument("--overload-seconds", type=int, default=None)
    parser.add_argument("--engines", nargs="+", default=["sqlite", "postgres"],
                        choices=["sqlite", "postgres"])
    parser.add_argument("--workers", type=int, default=1,
                        help="also run PostgreSQL + Redis with MNEMOM_WORKERS=N (N > 1)")
    parser.add_argument("--sessions", type=int, default=16,
                        help="sessions the calls take turns over (x-mnemom-session; 0: one "
                             "session per minute, as a client sending no session header)")
    parser.add_argument("--no-litellm", dest="litellm", action="store_false")
    parser.add_argument("--profile", action="store_true",
                        help="sample the full path with py-spy before the saturation run")
    parser.add_argument("--no-pin", dest="pin", action="store_false")
    parser.add_argument("--quiet-wait", type=float, default=10.0,
                        help="seconds to wait for quiet CPUs before each measurement")
    args = parser.parse_args(argv)
    args.duration = args.duration or (3 if args.quick else 10)
    args.warmup = 1 if args.quick else 2
    if args.saturation_seconds is None:
        args.saturation_seconds = 30 if args.quick else 120
    if args.overload_seconds is None:
        args.overload_seconds = 0 if args.quick else 120
    if (os.cpu_count() or 1) < 2 or shutil.which("taskset") is None:
        args.pin = False
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    notes: list[str] = []
    ensure_debian_tools({"wrk": "wrk", "nginx": "nginx"}, notes)
    if shutil.which("wrk") is None or shutil.which("nginx") is None:
        log("wrk and nginx are needed: " + "; ".join(notes))
        return 2
    if args.pin:
        os.sched_setaffinity(0, {int(LOAD_CPU)})
    load = os.getloadavg()
    report = Report(started=started,
                    command=" ".join(["python -m bench.hotpath",
                                      *(sys.argv[1:] if argv is None else argv)]),
                    machine={"cpus": os.cpu_count(), "loadavg_before": load},
                    settings={k: v for k, v in vars(args).items()}, notes=notes)
    workdir = Path(tempfile.mkdtemp(prefix="mnemomd-hotpath-"))
    children = harness.Children()
    with cleanup_on_signals():
        try:
            HotPath(args, workdir, children, report).run()
        finally:
            children.stop_all()
            shutil.rmtree(workdir, ignore_errors=True)
    report.machine["loadavg_after"] = os.getloadavg()
    text = markdown(report)
    print(text)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"hotpath-{started}.json").write_text(
        json.dumps(asdict(report), indent=2) + "\n")
    (RESULTS_DIR / f"hotpath-{started}.md").write_text(text)
    log(f"results: bench/results/hotpath-{started}.json and .md")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; child processes stopped")
        sys.exit(130)
