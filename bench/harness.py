"""Child processes, /proc readings, nginx configurations and wrk runs for ``bench/run.py``.

Everything here is bounded: every wait has a timeout and every child started through
:class:`Children` is stopped when the benchmark ends, however it ends.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- child processes ----------------------------------------------------------------------


class Children:
    """Every process the benchmark starts, stopped in reverse order by :meth:`stop_all`."""

    def __init__(self) -> None:
        self._procs: list[tuple[str, subprocess.Popen[bytes], int]] = []

    def start(self, name: str, argv: Sequence[str], *, cpus: str | None = None,
              stop_signal: int = signal.SIGTERM, **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` in its own session (a Ctrl-C reaches only the benchmark,
        which then stops its children in order), pinned to ``cpus`` if given."""
        command = [*pin_prefix(cpus), *argv]
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(command, start_new_session=True, **kwargs)
        self._procs.append((name, proc, stop_signal))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int | None:
        for entry in self._procs:
            if entry[1] is proc:
                self._procs.remove(entry)
                return _stop(proc, entry[2], timeout)
        return proc.poll()

    def stop_all(self) -> None:
        while self._procs:
            _name, proc, sig = self._procs.pop()
            _stop(proc, sig, 30.0)


def _stop(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> int | None:
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
        except ProcessLookupError:
            pass
    try:
        return proc.wait(5)
    except subprocess.TimeoutExpired:
        return None


def pin_prefix(cpus: str | None) -> list[str]:
    """``taskset -c CPUS`` when pinning is asked for and taskset exists, else nothing."""
    if cpus is None or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", cpus]


def read_json_line(stream: IO[bytes], timeout: float) -> dict[str, Any]:
    """The first line a child prints, as JSON, without blocking past ``timeout``."""
    deadline = time.monotonic() + timeout
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                if remaining <= 0:
                    raise TimeoutError(f"no line within {timeout}s")
                continue
            data = os.read(stream.fileno(), 4096)
            if not data:
                raise RuntimeError(f"child exited before printing a line: {buffer!r}")
            buffer += data
    return dict(json.loads(buffer.split(b"\n", 1)[0]))


def wait_for_health(url: str, proc: subprocess.Popen[bytes], timeout: float,
                    log_path: Path) -> None:
    """Wait until ``url`` answers 200; raise with the child's log if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            http_get(url, timeout=1.0)
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} never answered:\n{log_path.read_text()[-4000:]}")


def free_port() -> int:
    """A port free right now (for nginx, which cannot pick its own and report it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def http_get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return bytes(response.read())


def http_post(url: str, body: bytes, headers: dict[str, str],
              timeout: float = 10.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return int(response.status), bytes(response.read())


# -- /proc --------------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """``pid`` and its direct children (nginx: the master and its workers)."""
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            pids.append(int(entry.name))
    return pids


def cmdline(pid: int) -> bytes:
    """The raw command line of ``pid`` (empty once it has gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def cpu_seconds(pids: Sequence[int]) -> float:
    """User plus system CPU time used so far by ``pids`` (utime+stime of /proc/PID/stat)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLOCK_TICKS


def memory_kib(pids: Sequence[int], field: str) -> int:
    """Sum of a /proc/PID/status field (``VmRSS``, ``VmHWM``) over ``pids``, in KiB."""
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith(field + ":"):
                total += int(line.split()[1])
    return total


def cpu_busy_snapshot() -> dict[str, tuple[int, int, int]]:
    """Per-CPU (busy, steal, total) jiffies from /proc/stat.

    Busy is user and system time: processes. Interrupt time is left out, since here it
    is mostly the loopback traffic of the benchmark itself. Steal is time the hypervisor
    gave this virtual CPU's turn to another guest, which slows the process under test
    just as much as a local competitor would.
    """
    snapshot: dict[str, tuple[int, int, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        # user nice system idle iowait irq softirq steal (guest time is inside user)
        numbers = [int(v) for v in values[:8]] + [0] * (8 - len(values[:8]))
        total = sum(numbers)
        steal = numbers[7]
        snapshot[name] = (numbers[0] + numbers[1] + numbers[2], steal, total)
    return snapshot


def cpu_busy_percent(before: dict[str, tuple[int, int, int]],
                     after: dict[str, tuple[int, int, int]]) -> dict[str, float]:
    """``{"cpu0": busy %, "cpu0_steal": steal %, ...}`` between two snapshots."""
    busy: dict[str, float] = {}
    for name, (b1, s1, t1) in after.items():
        b0, s0, t0 = before.get(name, (b1, s1, t1))
        span = t1 - t0
        busy[name] = round(100 * (b1 - b0) / span, 1) if span > 0 else 0.0
        busy[f"{name}_steal"] = round(100 * (s1 - s0) / span, 1) if span > 0 else 0.0
    return busy


# -- nginx ----------------------------------------------------------------------------------

_NGINX_COMMON = """\
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
{body}
}}
"""


def _nginx_string(text: str) -> str:
    """A single-quoted nginx string; ``$`` would start a variable, so it is refused."""
    if "$" in text or "'" in text or "\\" in text:
        raise ValueError("canned body cannot be written as a literal nginx string")
    return f"'{text}'"


def nginx_mock_config(directory: Path, port: int, body: bytes) -> str:
    """nginx answering every request with the canned JSON: a mock that costs next to nothing."""
    server = f"""\
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type application/json;
            add_header request-id req_bench;
            return 200 {_nginx_string(body.decode("utf-8"))};
        }}
    }}"""
    return _NGINX_COMMON.format(dir=directory, body=server)


def nginx_proxy_config(directory: Path, port: int, json_port: int, stream_port: int) -> str:
    """nginx as the reference reverse proxy: the same routes as mnemomd, same upstreams.

    HTTP/1.1 with pooled upstream connections, and no buffering in either direction so
    that streamed events pass straight through, as a gateway must forward them.
    """
    proxy = """\
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;"""
    body = f"""\
    upstream json_mock {{
        server 127.0.0.1:{json_port};
        keepalive 512;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}
    upstream stream_mock {{
        server 127.0.0.1:{stream_port};
        keepalive 512;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location /anthropic/ {{
            proxy_pass http://json_mock/;
{proxy}
        }}
        location /openai/ {{
            proxy_pass http://stream_mock/;
{proxy}
        }}
    }}"""
    return _NGINX_COMMON.format(dir=directory, body=body)


def start_nginx(children: Children, name: str, directory: Path, config: str, port: int,
                cpus: str | None) -> subprocess.Popen[bytes]:
    """Write ``config`` into ``directory`` and run nginx in the foreground as a child."""
    directory.mkdir(parents=True, exist_ok=True)
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (directory / sub).mkdir(exist_ok=True)
        (directory / sub).chmod(0o777)  # workers may run as another user when root
    conf = directory / "nginx.conf"
    conf.write_text(config)
    nginx = shutil.which("nginx") or "nginx"
    proc = children.start(name, [nginx, "-e", str(directory / "error.log"), "-p",
                                 str(directory), "-c", str(conf)], cpus=cpus,
                          stop_signal=signal.SIGQUIT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
    except OSError as exc:
        raise RuntimeError(f"{name} did not start:\n{(directory / 'error.log').read_text()}") \
            from exc
    return proc


# -- wrk ------------------------------------------------------------------------------------

_WRK_SCRIPT = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
{headers}
local pace_ms = {pace_ms}
local sessions = {sessions}
local sent = 0
if sessions > 0 then
  -- Calls take turns over this many sessions (x-mnemom-session), as concurrent agents'
  -- calls would, instead of all sharing one session's state.
  request = function()
    sent = sent + 1
    wrk.headers["x-mnemom-session"] = "bench-" .. (sent % sessions)
    return wrk.format()
  end
end
if pace_ms > 0 then
  -- Random gaps (mean pace_ms) keep the connections out of step: equal gaps would
  -- make them all fire at once, a burst every pace_ms instead of a steady rate.
  delay = function() return math.random(0, 2 * pace_ms) end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
    '"mean_us":%.1f,"max_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency.mean, latency.max, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end
"""


def wrk_script(path: Path, body: bytes, headers: dict[str, str], pace_ms: int = 0,
               sessions: int = 0) -> Path:
    """A wrk Lua script for one POST; ``pace_ms`` > 0 waits that long on average before
    each request on each connection, so the load stays below what the proxy can take;
    ``sessions`` > 0 spreads the calls over that many ``x-mnemom-session`` values."""
    lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    path.write_text(_WRK_SCRIPT.format(body=body.decode("utf-8"), headers=lines,
                                       pace_ms=pace_ms, sessions=sessions))
    return path


@dataclass
class WrkResult:
    """wrk's summary: counts, and latency percentiles in microseconds."""

    requests: int
    seconds: float
    rps: float
    errors: int
    p50_us: int
    p90_us: int
    p99_us: int
    p999_us: int
    max_us: int
    mean_us: float


def run_wrk(url: str, script: Path, connections: int, seconds: int) -> WrkResult:
    """One wrk run with a single thread (one core is all the load side has)."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
               "-s", str(script), url]
    out = subprocess.run(command, capture_output=True, timeout=seconds + 60, check=False)
    for line in out.stdout.decode(errors="replace").splitlines():
        if line.startswith("WRKJSON "):
            data = json.loads(line[len("WRKJSON "):])
            elapsed = data["duration_us"] / 1e6
            errors = sum(data[k] for k in ("connect_errors", "read_errors", "write_errors",
                                           "status_errors", "timeouts"))
            return WrkResult(requests=data["requests"], seconds=elapsed,
                             rps=data["requests"] / elapsed if elapsed else 0.0,
                             errors=errors, p50_us=data["p50_us"], p90_us=data["p90_us"],
                             p99_us=data["p99_us"], p999_us=data["p999_us"],
                             max_us=data["max_us"], mean_us=data["mean_us"])
    raise RuntimeError(f"wrk printed no summary (exit {out.returncode}):\n"
                       f"{out.stdout.decode(errors='replace')}\n"
                       f"{out.stderr.decode(errors='replace')}")

