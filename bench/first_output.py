"""Time to the first output byte of a streamed response: direct, observe, enforce.

Why: in ``enforce`` mode a stream is held at the end of its reasoning until the verdict
(SPEC §6.2), so the first byte of output (the first text event) reaches the client only
after the analysis. This measures what that costs, side by side in one run: the same
Anthropic thinking-then-text stream from the project's fake upstream, straight from it,
through a daemon in ``observe`` mode and through one in ``enforce`` mode, whose analysis
model (the fake one) answers after a fixed delay. ``observe`` should add nothing
measurable over a plain relay; ``enforce`` should add the analysis delay plus a few
milliseconds (framing, one extraction of the reasoning, the checkpoint write).

    python bench/first_output.py [--calls N] [--analysis-ms D] [--today REV]

``--today REV`` adds a daemon exported from git at ``REV`` in ``observe`` mode, to show
that ``observe`` costs what it cost before.

Prints a Markdown table and writes it, with every sample as JSON, to
``bench/results/first-output-<UTC time>.{md,json}``.
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.e2e.daemon import Daemon, start_daemon  # noqa: E402
from tests.fakes.process import (  # noqa: E402
    analysis_control,
    run_fake_analysis,
    run_fake_upstream,
)

#: The first byte of output: the start of the text block, after the thinking block.
OUTPUT_MARKER = b'"content_block":{"type":"text"'
BODY = json.dumps({"model": "claude-bench", "max_tokens": 2048, "stream": True,
                   "messages": [{"role": "user", "content": "hi"}]}).encode()


@dataclass
class Measured:
    name: str
    #: Milliseconds from the request's first byte sent to the first output byte read.
    first_output_ms: list[float] = field(default_factory=list)
    #: Milliseconds to the first body byte (the response head and message_start).
    first_byte_ms: list[float] = field(default_factory=list)

    def row(self, base: Measured | None) -> str:
        p50 = statistics.median(self.first_output_ms)
        p95 = sorted(self.first_output_ms)[int(0.95 * (len(self.first_output_ms) - 1))]
        head = statistics.median(self.first_byte_ms)
        added = f"{p50 - statistics.median(base.first_output_ms):+.2f}" if base else "—"
        return f"| {self.name} | {head:.2f} | {p50:.2f} | {p95:.2f} | {added} |"


def first_output(base_url: str, path: str) -> tuple[float, float]:
    """(ms to the first body byte, ms to the first output byte) of one streamed call,
    on a fresh connection with a minimal HTTP/1.1 client (no library in the way)."""
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request = (f"POST {path} HTTP/1.1\r\nhost: {parts.netloc}\r\n"
                   f"x-api-key: sk-bench\r\ncontent-type: application/json\r\n"
                   f"content-length: {len(BODY)}\r\n\r\n").encode() + BODY
        started = time.perf_counter()
        sock.sendall(request)
        received = b""
        first_byte = None
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed before the first output byte")
            received += data
            head_end = received.find(b"\r\n\r\n")
            if first_byte is None and head_end >= 0 and len(received) > head_end + 4:
                first_byte = time.perf_counter()
            if OUTPUT_MARKER in received:
                now = time.perf_counter()
                return (first_byte or now) - started, now - started


def measure(path: Measured, call: Callable[[], tuple[float, float]], calls: int) -> None:
    for _ in range(calls):
        head, output = call()
        path.first_byte_ms.append(head * 1000)
        path.first_output_ms.append(output * 1000)


def daemon(tmp: Path, name: str, upstream: str, analysis: str, mode: str,
           source: Path | None = None) -> Daemon:
    """A daemon of this checkout, or of the ``source`` tree exported from git."""
    command = None
    if source is not None:
        command = [sys.executable, "-c", f"import sys, runpy; sys.path.insert(0, {str(source)!r}); "
                   "sys.argv[0] = 'mnemomd'; runpy.run_module('mnemomd', run_name='__main__')"]
    return start_daemon(tmp / name, {
        "ANTHROPIC_BASE_URL": upstream, "ANALYSIS_BASE_URL": analysis,
        "ANTHROPIC_API_KEY": "sk-analysis", "AIP_MIN_EVIDENCE_TOKENS": "1",
        "AIP_DEFAULT_ENFORCEMENT": mode, "MNEMOM_OFFLINE": "true"}, command=command)


def export(rev: str, into: Path) -> Path:
    """The ``mnemomd`` package (and migrations) as committed at ``rev``."""
    git = ["git", "-C", str(REPO_ROOT)]
    top = subprocess.run([*git, "ls-tree", "--name-only", rev], capture_output=True,
                         text=True, check=True).stdout.split()
    wanted = [name for name in ("mnemomd", "migrations") if name in top]
    archive = subprocess.run([*git, "archive", "--format=tar", rev, *wanted],
                             capture_output=True, check=True).stdout
    into.mkdir()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per path (default 200)")
    parser.add_argument("--analysis-ms", type=float, default=100.0,
                        help="how long the fake analysis model takes to answer (default 100)")
    parser.add_argument("--today", metavar="REV", default=None,
                        help="also measure observe mode as committed at this git revision")
    args = parser.parse_args(argv)
    paths = [Measured("direct"), Measured("mnemomd observe"), Measured("mnemomd enforce")]
    if args.today:
        paths.append(Measured(f"mnemomd observe at {args.today}"))
    with tempfile.TemporaryDirectory() as scratch, run_fake_upstream() as upstream, \
            run_fake_analysis() as analysis:
        analysis_control(analysis, "POST", "script",
                         {"actions": [], "default": f"delay:{args.analysis_ms:g}"})
        daemons = [daemon(Path(scratch), "observe", upstream, analysis, "observe"),
                   daemon(Path(scratch), "enforce", upstream, analysis, "enforce")]
        if args.today:
            source = export(args.today, Path(scratch) / "today")
            daemons.append(daemon(Path(scratch), "today", upstream, analysis, "observe", source))
        try:
            targets = [(upstream, "/v1/messages")] + [
                (d.base_url, "/anthropic/v1/messages") for d in daemons]
            for base, route in targets:  # warm up connections, caches and the agent rows
                for _ in range(5):
                    first_output(base, route)
            # Interleaved, so a burst of noise on the machine hits every path alike.
            for _ in range(args.calls):
                for path, (base, route) in zip(paths, targets, strict=True):
                    measure(path, lambda b=base, r=route: first_output(b, r), 1)
        finally:
            for started in daemons:
                started.stop(10)
    gap = statistics.median(paths[2].first_output_ms) - statistics.median(
        paths[1].first_output_ms)
    report = "\n".join([
        f"Time to the first output byte of a streamed Anthropic response (thinking, then "
        f"text), {args.calls} calls per path, analysis answering in {args.analysis_ms:g} ms:",
        "",
        "| path | first byte p50 (ms) | first output p50 (ms) | first output p95 (ms) "
        "| added p50 vs direct (ms) |",
        "|---|---|---|---|---|",
        paths[0].row(None), *(path.row(paths[0]) for path in paths[1:]),
        "",
        f"enforce minus observe, p50: {gap:.2f} ms (the analysis takes "
        f"{args.analysis_ms:g} ms)",
    ])
    print(report)
    out = REPO_ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (out / f"first-output-{stamp}.md").write_text(report + "\n")
    (out / f"first-output-{stamp}.json").write_text(json.dumps(
        {"calls": args.calls, "analysis_ms": args.analysis_ms,
         "paths": [asdict(p) for p in paths]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
